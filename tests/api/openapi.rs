//! The OpenAPI document: every route the router serves is described and every described operation is served;
//! the docs page loads nothing from elsewhere. `scripts/test.sh` also validates the document with
//! `openapi-spec-validator` (it is written to `$COMMERCEX_OPENAPI_OUT` when that is set).

use reqwest::Method;
use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn every_route_is_described_and_every_described_operation_is_served() {
    let app = spawn_app().await;
    let res = app.client.get(format!("{}/api/openapi.json", app.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    if let Ok(out) = std::env::var("COMMERCEX_OPENAPI_OUT") {
        std::fs::write(out, &text).unwrap();
    }
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    for scheme in ["bearer", "cookie"] {
        assert!(doc["components"]["securitySchemes"][scheme].is_object(), "{scheme}");
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());

    // Every described operation reaches a handler: whatever it answers to a request without credentials or body,
    // it is not the router's own "no such route" or "method not allowed".
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations += 1;
            let concrete: String = path
                .split('/')
                .map(|segment| if segment.starts_with('{') { "x" } else { segment })
                .collect::<Vec<_>>()
                .join("/");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let res = app.client.request(method.clone(), format!("{}{concrete}", app.base)).send().await.unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let routed = !(status == 405 || (status == 404 && body["error"]["message"] == "no such route"));
            assert!(routed, "{method} {path} is described but not served ({status} {body})");
        }
    }

    // And nothing is served that is not described: every route goes through `utoipa_axum::routes!`, which
    // registers the route and its description together; a plain `.route(` would serve an undescribed one. Every
    // handler's description is in the document.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http");
    let mut files = vec![format!("{dir}.rs")];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            files.push(path.display().to_string());
        }
    }
    let mut described = 0;
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        assert!(!source.contains(".route("), "{file} registers a route outside the OpenAPI document");
        described += source.matches("#[utoipa::path(").count();
    }
    assert_eq!(operations, described, "every handler described in src/http is in the document");
}

#[tokio::test]
async fn the_docs_page_loads_only_its_own_files() {
    let app = spawn_app().await;
    let page = app.client.get(format!("{}/docs", app.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"), "{html}");
    for asset in ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"] {
        assert!(html.contains(asset), "{asset}");
        let res = app.client.get(format!("{}{asset}", app.base)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{asset}");
        assert!(res.headers()["cache-control"].to_str().unwrap().contains("max-age"), "{asset}");
        assert!(res.bytes().await.unwrap().len() > 100_000, "{asset}");
    }
    assert!(html.contains("/api/openapi.json"));
}

/// Schemas are named after their types, and two types of one name would share one component (the last one
/// registered wins, silently): every type deriving `ToSchema` has a name of its own, or one given with
/// `#[schema(as = ...)]`.
#[test]
fn no_two_schemas_share_a_name() {
    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    sources(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")), &mut files);
    let mut names: Vec<(String, String)> = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = source.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !(line.trim_start().starts_with("#[derive(") && line.contains("ToSchema")) {
                continue;
            }
            let preamble = |l: &&&str| l.trim_start().starts_with("#[") || l.trim_start().starts_with("//");
            let mut rest = lines[i + 1..].iter().take_while(preamble);
            let renamed = rest.find_map(|l| l.split("schema(as = ").nth(1)?.split(')').next());
            let item = lines[i + 1..].iter().find(|l| !preamble(l)).unwrap();
            let declared = item.split_whitespace().skip_while(|w| !["struct", "enum"].contains(w)).nth(1).unwrap();
            let declared = declared.trim_end_matches(['{', '(', ';']).split('<').next().unwrap();
            names.push((renamed.unwrap_or(declared).to_string(), file.display().to_string()));
        }
    }
    assert!(names.len() > 30, "{names:?}");
    names.sort();
    for pair in names.windows(2) {
        assert_ne!(pair[0].0, pair[1].0, "{} in {} and in {}", pair[0].0, pair[0].1, pair[1].1);
    }
}
