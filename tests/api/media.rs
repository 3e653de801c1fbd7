//! Product images over HTTP, and the web app's pages: what an admin uploading an image and a browser loading the
//! storefront see.

use reqwest::header;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

/// A PNG's signature followed by `len` more bytes.
fn png(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..len).map(|i| (i % 251) as u8));
    bytes
}

async fn upload(app: &TestApp, token: &str, id: &str, query: &str, body: Vec<u8>) -> reqwest::Response {
    app.client
        .post(format!("{}/api/products/{id}/image{query}", app.base))
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, "image/png")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_uploaded_image_becomes_the_products_image_and_is_served_cacheable() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let product = app.create_product(&admin, "Lamp", 4990, 3).await;
    let id = product["id"].as_str().unwrap();

    // Larger than http.body_limit_bytes (64 KiB): images have their own limit.
    let image = png(200 * 1024);
    let res = upload(&app, &admin, id, "", image.clone()).await;
    assert_eq!(res.status(), 200);
    let updated: serde_json::Value = res.json().await.unwrap();
    let url = updated["imageUrl"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("/media/products/{id}/")) && url.ends_with(".png"), "{url}");
    assert_eq!(updated["version"], 2);
    assert_eq!(app.get(&format!("/api/products/{id}"), None).await.body["imageUrl"], url.as_str());

    let served = app.client.get(format!("{}{url}", app.base)).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()[header::CONTENT_TYPE], "image/png");
    assert_eq!(served.headers()[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
    let etag = served.headers()[header::ETAG].clone();
    assert_eq!(served.bytes().await.unwrap(), image);
    let again = app.client.get(format!("{}{url}", app.base)).header(header::IF_NONE_MATCH, etag).send().await.unwrap();
    assert_eq!(again.status(), 304);

    // A new image gets a new address; the product points at it.
    let res = upload(&app, &admin, id, "?version=2", png(10)).await;
    assert_eq!(res.status(), 200);
    let newer: serde_json::Value = res.json().await.unwrap();
    assert_ne!(newer["imageUrl"], url.as_str());
    assert_eq!(newer["version"], 3);
}

#[tokio::test]
async fn uploads_that_are_not_images_or_not_allowed_change_nothing() {
    let app = spawn_app_with(|c| c.media.max_image_bytes = 100_000).await;
    let admin = app.admin().await;
    let user = app.signup("shopper@example.com").await;
    let product = app.create_product(&admin, "Lamp", 4990, 3).await;
    let id = product["id"].as_str().unwrap();

    // What is sent (who, query, body) and the answer expected (status, code).
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "svg",
            admin.as_str(),
            "",
            b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec(),
            415,
            "unsupported_media_type",
        ),
        ("gif", admin.as_str(), "", b"GIF89a\x01\x00\x01\x00".to_vec(), 415, "unsupported_media_type"),
        ("empty", admin.as_str(), "", Vec::new(), 415, "unsupported_media_type"),
        ("over the limit", admin.as_str(), "", png(100_001), 413, "payload_too_large"),
        ("a shopper", user.token.as_str(), "", png(10), 403, "forbidden"),
        ("a stale version", admin.as_str(), "?version=7", png(10), 409, "version_conflict"),
    ];
    for (what, token, query, body, status, code) in cases {
        let res = upload(&app, token, id, query, body).await;
        assert_eq!(res.status(), status, "{what}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
    }
    let missing = upload(&app, &admin, "no-such-product", "", png(10)).await;
    assert_eq!(missing.status(), 404);
    let unchanged = app.get(&format!("/api/products/{id}"), None).await.body;
    assert_eq!((unchanged["imageUrl"].clone(), unchanged["version"].clone()), (json!(null), json!(1)));

    // An image URL may name an uploaded image, not any path of this server.
    let r = app.patch(&format!("/api/products/{id}"), Some(&admin), json!({"version": 1, "imageUrl": "/admin"})).await;
    assert_eq!((r.status, r.code()), (422, "validation_failed"));
    // Security review L6: nor, through `..` or an escape, another path under /media/.
    for url in ["/media/../api/users/me", "/media/products/../../admin", "/media/%2E%2E/admin", "/media/./x.png?y"] {
        let r = app.patch(&format!("/api/products/{id}"), Some(&admin), json!({"version": 1, "imageUrl": url})).await;
        assert_eq!((r.status, r.code()), (422, "validation_failed"), "{url}");
    }

    for path in [
        format!("/media/products/{id}/{}.png", "0".repeat(32)),
        format!("/media/products/{id}/..%2F..%2Fjwt-secret"),
        "/media/products/..%2F..%2F/jwt-secret".to_string(),
    ] {
        assert_eq!(app.get(&path, None).await.status, 404, "{path}");
    }
}

#[tokio::test]
async fn the_storefront_and_admin_console_are_served_with_their_files() {
    let app = spawn_app().await;
    for (path, kind, marker) in [
        ("/", "text/html", "/app/store.js"),
        ("/admin", "text/html", "/app/admin.js"),
        ("/app/store.js", "text/javascript", "LiveNotifications"),
        ("/app/admin.js", "text/javascript", "/api/admin/orders"),
        ("/app/api.js", "text/javascript", "/api/users/refresh"),
        ("/app/ui.js", "text/javascript", "export function h("),
        ("/app/app.css", "text/css", ".grid"),
        ("/app/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let res = app.client.get(format!("{}{path}", app.base)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let headers = res.headers().clone();
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind), "{path}");
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe"), "{path}: {policy}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}");
        assert!(res.text().await.unwrap().contains(marker), "{path}");
        let etag = headers[header::ETAG].clone();
        let again =
            app.client.get(format!("{}{path}", app.base)).header(header::IF_NONE_MATCH, etag).send().await.unwrap();
        assert_eq!(again.status(), 304, "{path}");
    }
    // Every file a page references is served, and nothing comes from another origin.
    for page in ["/", "/admin"] {
        let html = app.client.get(format!("{}{page}", app.base)).send().await.unwrap().text().await.unwrap();
        for reference in html.split(['"', '\'']).filter(|s| s.starts_with("/app/")) {
            assert_eq!(app.get(reference, None).await.status, 200, "{page} references {reference}");
        }
        assert!(!html.contains("http://") && !html.contains("https://"), "{page} loads nothing from elsewhere");
    }
    for path in ["/app/missing.js", "/app/store.html", "/app/..%2FCargo.toml"] {
        assert_eq!(app.get(path, None).await.status, 404, "{path}");
    }
}

#[tokio::test]
async fn an_unreachable_bucket_degrades_the_node_and_fails_only_images() {
    // Nothing listens on port 9 of the loopback: every call to the bucket is refused.
    let app = spawn_app_with(|c| {
        c.media.backend = commercex::config::MediaBackend::S3;
        c.media.s3.endpoint = "http://127.0.0.1:9".into();
        c.media.s3.bucket = "product-images".into();
        c.media.s3.access_key_id = "key".into();
        c.media.s3.secret_access_key = "secret".into();
    })
    .await;
    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(ready.body["status"], "degraded");
    assert_eq!(
        (ready.body["media"]["backend"].as_str(), ready.body["media"]["status"].as_str()),
        (Some("s3"), Some("down"))
    );
    // Security review L2: states only; why it is down (addresses, statuses) goes to the log.
    assert_eq!(ready.body["media"], serde_json::json!({"backend": "s3", "status": "down"}));
    assert!(!ready.body.to_string().contains("127.0.0.1"), "{:?}", ready.body);

    let admin = app.admin().await;
    let product = app.create_product(&admin, "Lamp", 4990, 3).await;
    let id = product["id"].as_str().unwrap();
    let started = std::time::Instant::now();
    let res = upload(&app, &admin, id, "", png(10)).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key(header::RETRY_AFTER));
    assert!(started.elapsed() < std::time::Duration::from_secs(9), "answered within the request deadline");
    let image = app.get(&format!("/media/products/{id}/{}.png", "0".repeat(32)), None).await;
    assert_eq!((image.status, image.code()), (503, "service_unavailable"));
    // The rest of the shop works: the product, unchanged, and the catalog.
    assert_eq!(app.get(&format!("/api/products/{id}"), None).await.body["version"], 1);
    assert_eq!(app.get("/api/products", None).await.status, 200);
}

/// Security review L6: the web app's pages show images from this origin and the configured image origins only, so a
/// product's `imageUrl` elsewhere cannot turn every product view into a request to a third party.
#[tokio::test]
async fn the_pages_show_images_only_from_here_and_the_configured_origins() {
    let policy = |app: &TestApp| {
        let app = app.base.clone();
        async move {
            let res = reqwest::get(format!("{app}/")).await.unwrap();
            let csp = res.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_string();
            csp.split(';').map(str::trim).find(|d| d.starts_with("img-src")).unwrap().to_string()
        }
    };
    assert_eq!(policy(&spawn_app().await).await, "img-src 'self' data:");
    let cdn = spawn_app_with(|c| c.media.image_origins = vec!["https://cdn.example.com".into()]).await;
    assert_eq!(policy(&cdn).await, "img-src 'self' data: https://cdn.example.com");
}
