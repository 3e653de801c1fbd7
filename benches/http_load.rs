//! Over real HTTP against an in-process server with the embedded store and the simulated payment provider (20 ms
//! per call): add-to-cart throughput and latency, then every client checks out at once and the time from
//! `POST /api/cart/checkout` to the order being paid is measured.
//! Run: `cargo bench --bench http_load` (optional env: REQUESTS, CONCURRENCY).

use std::sync::Arc;
use std::time::{Duration, Instant};

use commercex::app::Application;
use commercex::config::{BootstrapAdmin, Config};
use serde_json::{json, Value};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

#[tokio::main]
async fn main() {
    let requests = env_or("REQUESTS", 4000);
    let concurrency = env_or("CONCURRENCY", 32);
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.store.data_dir = dir.path().to_path_buf();
    config.http.auth_rate_limit_per_minute = 1_000_000;
    config.auth.jwt_secret = "benchmark-secret-0123456789abcdef0123456789".into();
    config.auth.bootstrap_admin =
        Some(BootstrapAdmin { email: "admin@bench.test".into(), password: "admin-pass-1".into() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = Application::with_listener(config, listener).await.unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();

    let base_for_post = base.clone();
    let client_for_post = client.clone();
    let post = move |path: String, token: Option<String>, body: Value| {
        let client = client_for_post.clone();
        let url = format!("{base_for_post}{path}");
        async move {
            let mut req = client.post(url).json(&body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (_, admin) =
        post("/api/users/signin".into(), None, json!({"email": "admin@bench.test", "password": "admin-pass-1"})).await;
    let admin = admin["accessToken"].as_str().unwrap().to_string();
    let product =
        json!({"title": "Bench", "price": 100, "currency": "USD", "category": "bench", "stock": 1_000_000_000});
    let (_, product) = post("/api/products".into(), Some(admin), product).await;
    let pid = product["id"].as_str().unwrap().to_string();
    // One user (and so one cart actor) per client: the load spreads over `concurrency` entities.
    let mut tokens = Vec::new();
    for i in 0..concurrency {
        let body = json!({"email": format!("u{i}@bench.test"), "password": "pass-word-1", "name": "Bench"});
        let (_, s) = post("/api/users/signup".into(), None, body).await;
        tokens.push(s["accessToken"].as_str().unwrap().to_string());
    }

    let tokens_again = tokens.clone();
    let base_again = base.clone();
    let started = Instant::now();
    let per_client = requests / concurrency;
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(requests)));
    let mut tasks = tokio::task::JoinSet::new();
    for token in tokens {
        let (post, pid, latencies) = (post.clone(), pid.clone(), latencies.clone());
        tasks.spawn(async move {
            for _ in 0..per_client {
                let t = Instant::now();
                let (status, _) =
                    post("/api/cart/items".into(), Some(token.clone()), json!({"productId": pid, "quantity": 1})).await;
                assert_eq!(status, 200);
                latencies.lock().unwrap().push(t.elapsed());
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "add-to-cart: {} requests, {concurrency} clients: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, RSS {:.0} MiB",
        l.len(),
        l.len() as f64 / elapsed.as_secs_f64(),
        ms(pct(0.50)),
        ms(pct(0.99)),
        rss_mib()
    );

    // Every client checks out at once; each then polls its order until it is paid.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, token) in tokens_again.into_iter().enumerate() {
        let (client, base) = (client.clone(), base_again.clone());
        tasks.spawn(async move {
            let t = Instant::now();
            let res = client
                .post(format!("{base}/api/cart/checkout"))
                .bearer_auth(&token)
                .header("idempotency-key", format!("bench-{i}"))
                .json(&json!({"paymentMethod": "pm_card_visa"}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
            let accepted = t.elapsed();
            let id = res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
            loop {
                let order: Value = client
                    .get(format!("{base}/api/orders/{id}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if order["status"] == "paid" {
                    return (accepted, t.elapsed());
                }
                let status = order["status"].as_str().unwrap_or_default();
                assert!(["pending", "stock_reserved"].contains(&status), "order {id} ended {status}");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    let mut accepted = Vec::new();
    let mut paid = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (a, p) = r.unwrap();
        accepted.push(a);
        paid.push(p);
    }
    let elapsed = started.elapsed();
    accepted.sort();
    paid.sort();
    let at = |v: &Vec<Duration>, p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    println!(
        "checkout: {} concurrent checkouts paid in {:.0} ms ({:.0} orders/s); accepted p50 {:.1} ms, paid p50 {:.1} ms, paid p99 {:.1} ms",
        paid.len(),
        ms(elapsed),
        paid.len() as f64 / elapsed.as_secs_f64(),
        ms(at(&accepted, 0.5)),
        ms(at(&paid, 0.5)),
        ms(at(&paid, 0.99)),
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
