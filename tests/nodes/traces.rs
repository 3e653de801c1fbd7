//! Traces across nodes: a request answered by forwarding it to the node that hosts the entity is one trace, the
//! second node's spans joining the first's through the `traceparent` header of the forwarded Kafka message.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::harness::{wait_shards_settled, Api, Deployment, Servers};

#[path = "../common/otlp.rs"]
mod otlp;
use otlp::{attribute, Receiver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn a_forwarded_request_is_one_trace_across_nodes() {
    let collector = Receiver::start().await;
    let mut deployment = Deployment::new("traces", Servers::shared()).clustered();
    let otlp = [("TELEMETRY__OTLP_ENDPOINT", collector.url.as_str())];
    let mut nodes = vec![deployment.start_node_with(&otlp).await, deployment.start_node_with(&otlp).await];
    let admin = nodes[0].admin().await;
    let apis: Vec<&Api> = nodes.iter().map(|n| &**n).collect();
    wait_shards_settled(&apis, &admin, Duration::from_secs(60)).await;
    let product = nodes[0].create_product(&admin, "Traced lamp", 4500, 10).await;

    // Each cart lives on one of the two nodes, so reading it through both forwards one of the reads.
    let mut carts = Vec::new();
    for i in 0..4 {
        let (user, token) = nodes[0].signup(&format!("traced{i}@cluster.test")).await;
        let line = json!({"productId": product, "quantity": 1});
        assert_eq!(nodes[0].post("/api/cart/items", Some(&token), line).await.status, 200);
        for node in &nodes {
            assert_eq!(node.get("/api/cart", Some(&token)).await.status, 200);
        }
        carts.push(user);
    }
    for node in &mut nodes {
        node.terminate();
    }

    let spans = collector.spans();
    let forwarded: Vec<_> = spans.iter().filter(|s| s.name == "forwarded").collect();
    let served: BTreeSet<String> = forwarded.iter().filter_map(|s| attribute(s, "entity_id")).collect();
    for cart in &carts {
        assert!(served.contains(cart), "cart {cart} was read through the node that does not host it: {served:?}");
    }
    // Every forwarded call (cart reads, and the product's creation when its actor lives on the other node) hangs
    // from a span of the forwarding node's request and is served by an actor of its kind.
    for span in forwarded {
        let trace: Vec<_> = spans.iter().filter(|s| s.trace_id == span.trace_id).collect();
        let request = trace.iter().find(|s| s.name == "http").expect("the forwarding node's request is in the trace");
        let kind = attribute(span, "kind").unwrap();
        if kind == "cart" {
            assert!(attribute(request, "path").is_some_and(|p| p.starts_with("/api/cart")), "{request:?}");
        }
        let ids: BTreeSet<&Vec<u8>> = trace.iter().map(|s| &s.span_id).collect();
        assert!(ids.contains(&span.parent_span_id), "the forwarded span hangs from the forwarding node's span");
        let entity = trace.iter().find(|s| s.name == "entity" && s.parent_span_id == span.span_id);
        assert_eq!(entity.and_then(|s| attribute(s, "kind")), Some(kind), "served by an actor of its kind");
    }
}
