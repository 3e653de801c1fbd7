//! Traces: the `commercex` binary, pointed at an OTLP/HTTP receiver this test runs, exports a checkout as one trace
//! that follows the saga from the request through the order, product, payment and cart actors.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "../common/otlp.rs"]
mod otlp;
use otlp::{attribute, Receiver, Span};

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_is_one_trace_across_the_saga() {
    let collector = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let mut node = Node(
        Command::new(env!("CARGO_BIN_EXE_commercex"))
            .env("COMMERCEX__HTTP__ADDR", format!("127.0.0.1:{port}"))
            .env("COMMERCEX__STORE__DATA_DIR", dir.path())
            .env("COMMERCEX__AUTH__JWT_SECRET", "trace-test-secret-0123456789abcdef0123456789")
            .env("COMMERCEX__AUTH__BOOTSTRAP_ADMIN__EMAIL", "admin@example.com")
            .env("COMMERCEX__AUTH__BOOTSTRAP_ADMIN__PASSWORD", "admin-pass-1")
            .env("COMMERCEX__PAYMENTS__SIMULATED_LATENCY_MS", "5")
            .env("COMMERCEX__TELEMETRY__OTLP_ENDPOINT", &collector.url)
            .env("COMMERCEX__LOG__LEVEL", "warn")
            .env("COMMERCEX__TELEMETRY__METRICS_ADDR", "")
            .stdout(Stdio::null())
            .spawn()
            .expect("starts the commercex binary"),
    );
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the node did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = |method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>| {
        let mut request = client.request(method, format!("{base}{path}")).header("idempotency-key", "trace-1");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let res = request.send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    use reqwest::Method;
    let signin = json!({"email": "admin@example.com", "password": "admin-pass-1"});
    let (_, admin) = call(Method::POST, "/api/users/signin", None, Some(signin)).await;
    let admin = admin["accessToken"].as_str().unwrap().to_string();
    let product = json!({"title": "Traced mug", "description": "d", "price": 900, "currency": "USD",
        "category": "kitchen", "stock": 5});
    let (status, product) = call(Method::POST, "/api/products", Some(&admin), Some(product)).await;
    assert_eq!(status, 201);
    let signup = json!({"email": "traced@example.com", "password": "pass-word-1", "name": "Traced"});
    let (_, user) = call(Method::POST, "/api/users/signup", None, Some(signup)).await;
    let (user_id, token) = (user["user"]["id"].as_str().unwrap(), user["accessToken"].as_str().unwrap());
    let line = json!({"productId": product["id"], "quantity": 1});
    assert_eq!(call(Method::POST, "/api/cart/items", Some(token), Some(line)).await.0, 200);
    let pay = json!({"paymentMethod": "pm_card_visa"});
    let (status, order) = call(Method::POST, "/api/cart/checkout", Some(token), Some(pay)).await;
    assert_eq!(status, 202, "{order}");
    let order_id = order["id"].as_str().unwrap().to_string();
    loop {
        let (_, now) = call(Method::GET, &format!("/api/orders/{order_id}"), Some(token), None).await;
        if now["status"] == "paid" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the order was not paid: {now}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A graceful stop flushes the exporter.
    Command::new("kill").args(["-TERM", &node.0.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the node did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let spans = collector.spans();
    let request = spans
        .iter()
        .find(|s| s.name == "http" && attribute(s, "order_id").as_deref() == Some(order_id.as_str()))
        .unwrap_or_else(|| panic!("no request span for order {order_id} among {} spans", spans.len()));
    assert_eq!(attribute(request, "user_id").as_deref(), Some(user_id));
    assert!(attribute(request, "request_id").is_some_and(|id| id.len() == 36));
    let trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == request.trace_id).collect();
    let entities: BTreeSet<String> =
        trace.iter().filter(|s| s.name == "entity").filter_map(|s| attribute(s, "kind")).collect();
    for kind in ["order", "product", "payment", "cart"] {
        assert!(entities.contains(kind), "no {kind} actor in the checkout's trace: {entities:?}");
    }
    let order_steps =
        trace.iter().filter(|s| s.name == "effect" && attribute(s, "entity_id").as_deref() == Some(&order_id));
    assert!(order_steps.count() >= 3, "the saga's steps are in the trace");
    let paid = trace.iter().any(|s| attribute(s, "kind").as_deref() == Some("payment") && s.name == "effect");
    assert!(paid, "the charge is in the trace");
    // Every span of the trace hangs from another span of it, up to the request.
    let ids: BTreeSet<&Vec<u8>> = trace.iter().map(|s| &s.span_id).collect();
    for span in &trace {
        assert!(
            span.parent_span_id.is_empty() || ids.contains(&span.parent_span_id),
            "{} has a parent elsewhere",
            span.name
        );
    }
}
