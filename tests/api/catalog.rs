use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn admins_manage_products_with_optimistic_versions() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let p = app.create_product(&admin, "Kettle", 3999, 7).await;
    let id = p["id"].as_str().unwrap();
    assert_eq!((p["version"].as_u64(), p["stockAvailable"].as_i64()), (Some(1), Some(7)));

    let got = app.get(&format!("/api/products/{id}"), None).await;
    assert_eq!(got.body["title"], "Kettle");

    let patched = app.patch(&format!("/api/products/{id}"), Some(&admin), json!({"version": 1, "price": 3499})).await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!((patched.body["price"].as_i64(), patched.body["version"].as_u64()), (Some(3499), Some(2)));
    // The cached read is invalidated by the write.
    assert_eq!(app.get(&format!("/api/products/{id}"), None).await.body["price"], 3499);

    let stale = app.patch(&format!("/api/products/{id}"), Some(&admin), json!({"version": 1, "price": 1})).await;
    assert_eq!((stale.status, stale.code()), (409, "version_conflict"));
    let missing_version = app.patch(&format!("/api/products/{id}"), Some(&admin), json!({"price": 1})).await;
    assert_eq!((missing_version.status, missing_version.code()), (400, "invalid_body"));

    let replaced = app
        .put(&format!("/api/products/{id}"), Some(&admin),
             json!({"version": 2, "title": "Steel kettle", "description": "1.7 l", "price": 4200, "currency": "USD", "category": "kitchen", "imageUrl": "https://img.example/k.png"}))
        .await;
    assert_eq!(replaced.status, 200, "{:?}", replaced.body);
    assert_eq!((replaced.body["title"].as_str(), replaced.body["version"].as_u64()), (Some("Steel kettle"), Some(3)));
    let partial_put = app.put(&format!("/api/products/{id}"), Some(&admin), json!({"version": 3, "title": "x"})).await;
    assert_eq!(partial_put.status, 400);

    let invalid = app.patch(&format!("/api/products/{id}"), Some(&admin), json!({"version": 3, "price": -5})).await;
    assert_eq!((invalid.status, invalid.code()), (422, "validation_failed"));
    let bad_url = app
        .patch(&format!("/api/products/{id}"), Some(&admin), json!({"version": 3, "imageUrl": "javascript:alert(1)"}))
        .await;
    assert_eq!((bad_url.status, bad_url.code()), (422, "validation_failed"));
    let bad_create = app
        .post("/api/products", Some(&admin), json!({"title": "", "price": 1, "currency": "USD", "category": "c"}))
        .await;
    assert_eq!((bad_create.status, bad_create.code()), (422, "validation_failed"));

    let unknown = app.patch("/api/products/nope", Some(&admin), json!({"version": 1, "price": 1})).await;
    assert_eq!((unknown.status, unknown.code()), (404, "product_not_found"));

    let stale_delete = app.delete(&format!("/api/products/{id}?version=1"), Some(&admin)).await;
    assert_eq!(stale_delete.status, 409);
    assert_eq!(app.delete(&format!("/api/products/{id}?version=3"), Some(&admin)).await.status, 204);
    let gone = app.get(&format!("/api/products/{id}"), None).await;
    assert_eq!((gone.status, gone.code()), (404, "product_not_found"));
    assert_eq!(app.get("/api/products", None).await.body["total"], 0);
    let again = app.delete(&format!("/api/products/{id}"), Some(&admin)).await;
    assert_eq!(again.status, 404);
}

#[tokio::test]
async fn listing_paginates_searches_filters_and_sorts() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let items = [
        ("Red mug", 900, "kitchen"),
        ("Blue mug", 1200, "kitchen"),
        ("Desk lamp", 4500, "office"),
        ("Red pen", 150, "office"),
        ("Teapot", 3000, "kitchen"),
    ];
    let mut ids = std::collections::HashMap::new();
    for (title, price, category) in items {
        let r = app.post("/api/products", Some(&admin), json!({"title": title, "description": format!("A {title}"), "price": price, "currency": "USD", "category": category, "stock": 5})).await;
        assert_eq!(r.status, 201);
        ids.insert(title, r.body["id"].as_str().unwrap().to_string());
    }
    let titles = |r: &crate::helpers::Resp| -> Vec<String> {
        r.body["items"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap().to_string()).collect()
    };

    let page = app.get("/api/products?limit=2&page=3&sort=price", None).await;
    assert_eq!((page.body["total"].as_u64(), page.body["totalPages"].as_u64()), (Some(5), Some(3)));
    assert_eq!(page.body["totalIsExact"], true);
    assert_eq!(titles(&page), ["Desk lamp"]);
    assert_eq!(titles(&app.get("/api/products?q=red", None).await).len(), 2);
    assert_eq!(titles(&app.get("/api/products?q=RED%20mug", None).await), ["Red mug"]);
    assert_eq!(titles(&app.get("/api/products?category=Office&sort=-price", None).await), ["Desk lamp", "Red pen"]);
    assert_eq!(
        titles(&app.get("/api/products?minPrice=1000&maxPrice=3000&sort=title", None).await),
        ["Blue mug", "Teapot"]
    );
    assert_eq!(titles(&app.get("/api/products?sort=-title&limit=1", None).await), ["Teapot"]);

    // A search word of 3 or more characters matches the beginning of a word, never its middle; a shorter one only a
    // whole word.
    assert_eq!(titles(&app.get("/api/products?q=TEA", None).await), ["Teapot"]);
    assert_eq!(titles(&app.get("/api/products?q=mug%20red&sort=title", None).await), ["Red mug"]);
    assert_eq!(titles(&app.get("/api/products?q=A%20pen", None).await), ["Red pen"]);
    assert_eq!(app.get("/api/products?q=m%20re", None).await.body["total"], 0);
    assert_eq!(app.get("/api/products?q=ug", None).await.body["total"], 0);

    // An edited product moves to its new place in every listing.
    let pen = &ids["Red pen"];
    let moved = json!({"version": 1, "title": "Fountain pen", "description": "Black ink", "category": "Kitchen", "price": 5000});
    assert_eq!(app.patch(&format!("/api/products/{pen}"), Some(&admin), moved).await.status, 200);
    assert_eq!(titles(&app.get("/api/products?category=kitchen&sort=-price&limit=1", None).await), ["Fountain pen"]);
    let office = app.get("/api/products?category=office", None).await;
    assert_eq!((titles(&office), office.body["total"].as_u64()), (vec!["Desk lamp".to_string()], Some(1)));
    assert_eq!(titles(&app.get("/api/products?q=red", None).await), ["Red mug"]);
    assert_eq!(titles(&app.get("/api/products?q=fount&maxPrice=5000", None).await), ["Fountain pen"]);

    for bad in ["limit=0", "limit=101", "page=0", "page=abc", "sort=random", "minPrice=10&maxPrice=1", "colour=red"] {
        let r = app.get(&format!("/api/products?{bad}"), None).await;
        assert_eq!((r.status, r.code()), (400, "invalid_query"), "{bad}");
    }
}

#[tokio::test]
async fn listing_queries_past_the_limits_are_refused_with_the_limit_named() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    app.create_product(&admin, "Red mug", 900, 5).await;
    let refused = |r: &crate::helpers::Resp| (r.status, r.code().to_string(), r.body["error"]["message"].to_string());

    let long = "m".repeat(101);
    let (status, code, message) = refused(&app.get(&format!("/api/products?q={long}"), None).await);
    assert_eq!((status, code.as_str()), (400, "invalid_query"));
    assert!(message.contains("`q` must be at most 100 characters"), "{message}");
    let (status, code, message) = refused(&app.get("/api/products?q=a%20e%20i%20o%20s%20t", None).await);
    assert_eq!((status, code.as_str()), (400, "invalid_query"));
    assert!(message.contains("at most 5 words; it has 6"), "{message}");
    for deep in ["page=4000000", "page=501&limit=20", "page=101&limit=100", "page=10001&limit=1"] {
        let (status, code, message) = refused(&app.get(&format!("/api/products?{deep}"), None).await);
        assert_eq!((status, code.as_str()), (400, "invalid_query"), "{deep}");
        assert!(
            message.contains("at most 10000") && message.contains("use filters to narrow the listing"),
            "{message}"
        );
    }

    // At the limits: answered, and a page past the end is empty with the total.
    let q = format!("{} red mug r m", "m".repeat(88));
    assert_eq!(q.chars().count(), 100);
    let r = app.get(&format!("/api/products?q={}&page=100&limit=100", q.replace(' ', "%20")), None).await;
    assert_eq!((r.status, r.body["total"].as_u64()), (200, Some(0)), "{:?}", r.body);
    let r = app.get("/api/products?q=red%20mug&page=500&limit=20", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!((r.body["items"].as_array().map(Vec::len), r.body["total"].as_u64()), (Some(0), Some(1)));
    assert_eq!(r.body["totalIsExact"], true);
}

#[tokio::test]
async fn stock_never_goes_below_zero() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let p = app.create_product(&admin, "Widget", 100, 2).await;
    let id = p["id"].as_str().unwrap();
    let path = format!("/api/products/{id}/stock");

    let up = app.post(&path, Some(&admin), json!({"delta": 3, "reason": "delivery"})).await;
    assert_eq!(up.body["stockOnHand"], 5);
    let down = app.post(&path, Some(&admin), json!({"delta": -6, "reason": "breakage"})).await;
    assert_eq!((down.status, down.code()), (409, "insufficient_stock"));
    let no_reason = app.post(&path, Some(&admin), json!({"delta": 1, "reason": ""})).await;
    assert_eq!((no_reason.status, no_reason.code()), (422, "validation_failed"));
    let zero = app.post(&path, Some(&admin), json!({"delta": 0, "reason": "noop"})).await;
    assert_eq!(zero.status, 422);
    // Stock movements do not bump the catalog version that optimistic updates check.
    assert_eq!(app.get(&format!("/api/products/{id}"), None).await.body["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stock_adjustments_lose_nothing_and_never_oversell() {
    let app = std::sync::Arc::new(spawn_app().await);
    let admin = app.admin().await;
    let p = app.create_product(&admin, "Gadget", 100, 20).await;
    let path = format!("/api/products/{}/stock", p["id"].as_str().unwrap());

    // 30 decrements race for 20 units: exactly 20 win, the rest are refused, stock ends at zero.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let (app, admin, path) = (app.clone(), admin.clone(), path.clone());
        tasks.spawn(async move { app.post(&path, Some(&admin), json!({"delta": -1, "reason": "sale"})).await.status });
    }
    let mut statuses = Vec::new();
    while let Some(s) = tasks.join_next().await {
        statuses.push(s.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 20);
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 10);

    // 40 concurrent increments: every one is counted.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (app, admin, path) = (app.clone(), admin.clone(), path.clone());
        tasks.spawn(async move { app.post(&path, Some(&admin), json!({"delta": 1, "reason": "return"})).await.status });
    }
    while let Some(s) = tasks.join_next().await {
        assert_eq!(s.unwrap(), 200);
    }
    let final_state = app.get(&format!("/api/products/{}", p["id"].as_str().unwrap()), None).await;
    assert_eq!(final_state.body["stockOnHand"], 40);
}

#[tokio::test]
async fn every_committed_change_is_published_once_with_a_unique_id() {
    let app = spawn_app().await;
    let mut events = app.bus.subscribe();
    let admin = app.admin().await;
    let user = app.signup("events@example.com").await;
    let p = app.create_product(&admin, "Observed", 500, 3).await;
    let id = p["id"].as_str().unwrap();
    app.post(&format!("/api/products/{id}/stock"), Some(&admin), json!({"delta": 2, "reason": "delivery"})).await;
    app.post("/api/cart/items", Some(&user.token), json!({"productId": id, "quantity": 1})).await;
    // A refused command publishes nothing.
    let refused =
        app.post(&format!("/api/products/{id}/stock"), Some(&admin), json!({"delta": -99, "reason": "x"})).await;
    assert_eq!(refused.status, 409);
    app.delete(&format!("/api/products/{id}"), Some(&admin)).await;

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
            .await
            .expect("event published")
            .unwrap();
        seen.push(e);
    }
    // Each entity's events arrive in commit order (across entities, a Kafka bus keeps no order).
    let of =
        |stream: &str| seen.iter().filter(|e| e.stream == stream).map(|e| e.event_type.as_str()).collect::<Vec<_>>();
    assert_eq!(of(&format!("product:{id}")), ["product.created", "product.stock_adjusted", "product.deleted"]);
    assert_eq!(of(&format!("cart:{}", user.id)), ["cart.line_set"]);
    let adjusted = seen.iter().find(|e| e.event_type == "product.stock_adjusted").unwrap();
    assert_eq!(adjusted.id, format!("product:{id}/2"));
    assert_eq!(adjusted.payload["onHandAfter"], 5);
    assert!(tokio::time::timeout(std::time::Duration::from_millis(200), events.recv()).await.is_err(), "nothing else");
}
