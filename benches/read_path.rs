//! Reads against the release `commercex` binary, measured with `wrk` (a separate process: `apt-get install wrk`):
//! - the cached `GET /api/products/{id}` beside a bare axum handler (in this process) returning the same JSON,
//!   alternately, several rounds on the same servers, so a decline across runs would show;
//! - listings over a catalog of PRODUCTS products (created through the API, 64 at a time): the first page, and a
//!   category filtered by a price range and sorted by price or newest first, and a text search; each at the
//!   benchmark's connections and at half as many;
//! - the web app's storefront page and script, and a 100 KiB product image (upload latency, then reads).
//!
//! Run: `cargo bench --bench read_path` (optional env: ROUNDS, SECS, CONNECTIONS, PRODUCTS).

#[path = "server/mod.rs"]
mod server;

use std::process::Command;
use std::time::Instant;

use axum::routing::get;
use serde_json::{json, Value};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Wrk {
    rate: f64,
    p50: String,
    p99: String,
}

/// Runs `wrk -t2` against `url` and reads its rate and latency percentiles.
fn wrk(url: &str, connections: usize, secs: usize) -> Wrk {
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{secs}s"), "--latency", url])
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    let errors = text.lines().find(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    assert!(errors.is_none(), "wrk saw errors on {url}: {text}");
    Wrk { rate: field("Requests/sec:").parse().unwrap_or(0.0), p50: field("50%"), p99: field("99%") }
}

#[tokio::main]
async fn main() {
    let rounds = env_or("ROUNDS", 4);
    let secs = env_or("SECS", 8);
    let connections = env_or("CONNECTIONS", 64);
    let products = env_or("PRODUCTS", 100_000);
    let server = server::Server::start(&[
        ("COMMERCEX__AUTH__BOOTSTRAP_ADMIN__EMAIL", "admin@bench.test"),
        ("COMMERCEX__AUTH__BOOTSTRAP_ADMIN__PASSWORD", "admin-pass-1"),
    ])
    .await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let signin = json!({"email": "admin@bench.test", "password": "admin-pass-1"});
    let res = client.post(format!("{}/api/users/signin", server.base)).json(&signin).send().await.unwrap();
    let admin = res.json::<Value>().await.unwrap()["accessToken"].as_str().unwrap().to_string();
    let create = |i: usize| {
        let (client, base, admin) = (client.clone(), server.base.clone(), admin.clone());
        async move {
            let body = json!({"title": format!("Bench item {i}"), "description": "a product to read",
                "price": 100 + (i * 7919) % 100_000, "currency": "USD", "category": format!("cat{}", i % 20),
                "stock": 100});
            let res = client.post(format!("{base}/api/products")).bearer_auth(&admin).json(&body).send().await;
            let res = res.unwrap();
            assert_eq!(res.status(), 201);
            res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
        }
    };
    let id = create(0).await;
    let url = format!("{}/api/products/{id}", server.base);
    let document: Value = client.get(&url).send().await.unwrap().json().await.unwrap();

    // The same document from a handler that does nothing else.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare = format!("http://{}/product", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/product", get(move || async move { axum::Json(document.clone()) }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    println!("cached GET /api/products/{{id}} vs a bare axum JSON handler, wrk -t2 -c{connections} -d{secs}s:");
    let rss = server.status_mib("VmRSS:");
    for round in 1..=rounds {
        let ours = wrk(&url, connections, secs);
        let theirs = wrk(&bare, connections, secs);
        println!(
            "  round {round}: commercex {:.0} req/s (p50 {}, p99 {}); bare axum {:.0} req/s (p50 {}, p99 {}); ratio {:.2}",
            ours.rate,
            ours.p50,
            ours.p99,
            theirs.rate,
            theirs.p50,
            theirs.p99,
            ours.rate / theirs.rate
        );
    }
    println!("  server RSS {rss:.0} MiB before, {:.0} MiB after", server.status_mib("VmRSS:"));

    // A 100 KiB PNG (its signature, then filler: only the first bytes are checked), uploaded 20 times.
    let mut image = b"\x89PNG\r\n\x1a\n".to_vec();
    image.resize(100 * 1024, 7);
    let mut uploads = Vec::new();
    let mut image_url = String::new();
    for i in 0..20u8 {
        image[100] = i; // a new image each time, so each is stored
        let started = Instant::now();
        let res = client
            .post(format!("{url}/image"))
            .bearer_auth(&admin)
            .header("content-type", "image/png")
            .body(image.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        uploads.push(started.elapsed().as_secs_f64() * 1000.0);
        image_url = res.json::<Value>().await.unwrap()["imageUrl"].as_str().unwrap().to_string();
    }
    uploads.sort_by(f64::total_cmp);
    println!("web app and images, wrk -t2 -c{connections} -d{secs}s:");
    println!("  upload of a 100 KiB image (20 in a row): p50 {:.1} ms, max {:.1} ms", uploads[10], uploads[19]);
    for (what, path) in
        [("storefront page /", "/"), ("its script /app/store.js", "/app/store.js"), ("the image", &image_url)]
    {
        let r = wrk(&format!("{}{path}", server.base), connections, secs);
        println!("  GET {what}: {:.0} req/s, p50 {}, p99 {}", r.rate, r.p50, r.p99);
    }

    let started = Instant::now();
    let mut created = 1;
    while created < products {
        let batch = (created..products.min(created + 64)).map(create);
        created += futures_util::future::join_all(batch).await.len();
    }
    println!(
        "{products} products created through the API in {:.1} s; server RSS {:.0} MiB",
        started.elapsed().as_secs_f64(),
        server.status_mib("VmRSS:")
    );
    for (what, query) in [
        ("first page, newest", "limit=20"),
        (
            "a category, price 1,000 to 50,000, by price",
            "category=cat3&minPrice=1000&maxPrice=50000&sort=price&limit=20",
        ),
        ("a category, price 1,000 to 50,000, newest", "category=cat3&minPrice=1000&maxPrice=50000&limit=20"),
        ("text `bench item`, page 3", "q=bench%20item&page=3&limit=20"),
    ] {
        // At the benchmark's connections and at half as many: at 64 a p99 is mostly time spent queued.
        for c in [connections, connections / 2] {
            let r = wrk(&format!("{}/api/products?{query}", server.base), c, secs);
            println!("  list {what}, {c} connections: {:.0} req/s, p50 {}, p99 {}", r.rate, r.p50, r.p99);
        }
    }
    let cpu = server.cpu_secs();
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    println!(
        "idle for 10 s afterwards (the product actors still live): {:.1}% of one core; RSS {:.0} MiB",
        10.0 * (server.cpu_secs() - cpu),
        server.status_mib("VmRSS:")
    );
}
