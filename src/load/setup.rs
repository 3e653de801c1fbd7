//! Before the load: the catalog it shops from (products in `load-*` categories, created when missing, reused
//! otherwise) and the users, signed up a few at a time since password hashing is slow on purpose.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::api::{self, Answer, Api, Session};
use super::stats::Histogram;
use super::{LoadError, Progress};

/// The categories the load's products are created in; a product in one of them is the load's to reuse.
pub const CATEGORIES: [&str; 8] = [
    "load-kitchen",
    "load-home",
    "load-garden",
    "load-office",
    "load-outdoor",
    "load-toys",
    "load-books",
    "load-sport",
];
/// Titles are an adjective and a noun, so searches for either (or both) find products.
pub const ADJECTIVES: [&str; 10] = ["red", "blue", "green", "steel", "oak", "linen", "glass", "wool", "cedar", "amber"];
pub const NOUNS: [&str; 10] = ["mug", "lamp", "chair", "desk", "shirt", "teapot", "bowl", "rug", "kettle", "basket"];

/// Enough that a run never sells a product out; a reused product below a tenth of it is topped up.
const STOCK: i64 = 1_000_000;
const PASSWORD: &str = "load-pass-1";
/// Products created at once.
const CREATE_CONCURRENCY: usize = 8;

/// The products users shop for: every one priced in USD, with ample stock.
pub struct Catalog {
    pub products: Vec<String>,
    pub created: usize,
    pub reused: usize,
}

/// A signed-up user, pinned to one node.
pub struct User {
    pub index: usize,
    pub api: Api,
    pub session: Session,
}

pub struct SignedUp {
    pub users: Vec<User>,
    pub elapsed: Duration,
    pub retries: u64,
    pub latency: Histogram,
}

/// Calls an auth route (sign-up, sign-in), waiting and trying again while the server is busy hashing or limiting
/// the rate; any other refusal is an error. Returns the successful answer and how long that attempt took.
async fn authenticate(
    api: &Api,
    path: &str,
    body: &Value,
    what: &str,
    retries: &AtomicU64,
) -> Result<(Answer, Duration), LoadError> {
    static RATE_LIMIT_NOTED: AtomicBool = AtomicBool::new(false);
    let mut transport_failures = 0;
    loop {
        let started = Instant::now();
        let wait = match api.post(path, None, body).await {
            Ok(a) if a.is_success() => return Ok((a, started.elapsed())),
            // Every hashing slot is taken: a short pause, with jitter so the waiting sign-ups spread out.
            Ok(a) if a.status == 503 && a.code() == "auth_busy" => {
                Duration::from_millis(rand::thread_rng().gen_range(100..300))
            }
            Ok(a) if a.status == 429 || a.status == 503 => {
                if a.status == 429 && !RATE_LIMIT_NOTED.swap(true, Ordering::Relaxed) {
                    Progress::note(&format!(
                        "{}: sign-ups are rate limited per client address (`http.auth_rate_limit_per_minute`); \
                         waiting as the server asks",
                        api.base()
                    ));
                }
                a.wait()
            }
            Ok(a) => {
                return Err(LoadError::Refused { what: what.to_string(), status: a.status, body: a.body.to_string() })
            }
            Err(e) if transport_failures < 3 => {
                transport_failures += 1;
                Progress::note(&format!("{what}: {}; trying again", api::chain(&e)));
                Duration::from_secs(1)
            }
            Err(e) => return Err(LoadError::Transport { what: what.to_string(), error: api::chain(&e) }),
        };
        retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
    }
}

pub async fn sign_in(api: &Api, email: &str, password: &str) -> Result<Session, LoadError> {
    let body = json!({"email": email, "password": password});
    let what = format!("sign-in of {email} at {}", api.base());
    let (answer, _) = authenticate(api, "/api/users/signin", &body, &what, &AtomicU64::new(0)).await?;
    Session::from_body(&answer.body).ok_or(LoadError::Unexpected { what, body: answer.body.to_string() })
}

/// Signs up `count` users `load-{run}-{i}@load.test`, user `i` on node `i % apis.len()`, `concurrency` at a time.
pub async fn sign_up(apis: &[Api], count: usize, run: &str, concurrency: usize) -> Result<SignedUp, LoadError> {
    struct Shared {
        next: AtomicUsize,
        done: AtomicUsize,
        retries: AtomicU64,
        latency: Histogram,
        users: Mutex<Vec<User>>,
    }
    let shared = Arc::new(Shared {
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        retries: AtomicU64::new(0),
        latency: Histogram::default(),
        users: Mutex::new(Vec::with_capacity(count)),
    });
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.min(count) {
        let (shared, apis, run) = (shared.clone(), apis.to_vec(), run.to_string());
        workers.spawn(async move {
            loop {
                let index = shared.next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<(), LoadError>(());
                }
                let api = &apis[index % apis.len()];
                let email = format!("load-{run}-{index}@load.test");
                let body = json!({"email": email, "password": PASSWORD, "name": format!("Load user {index}")});
                let what = format!("sign-up of {email} at {}", api.base());
                let (answer, took) = authenticate(api, "/api/users/signup", &body, &what, &shared.retries).await?;
                let session = Session::from_body(&answer.body)
                    .ok_or_else(|| LoadError::Unexpected { what, body: answer.body.to_string() })?;
                shared.latency.record(took);
                let user = User { index, api: api.clone(), session };
                shared.users.lock().unwrap_or_else(|p| p.into_inner()).push(user);
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            finished = workers.join_next() => match finished {
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(LoadError::Unexpected { what: "a sign-up task".into(), body: e.to_string() }),
                None => break,
            },
            _ = tick.tick() => Progress::show(&format!(
                "signing up users: {}/{count} ({} retried)",
                shared.done.load(Ordering::Relaxed),
                shared.retries.load(Ordering::Relaxed),
            )),
        }
    }
    let elapsed = started.elapsed();
    let shared = Arc::into_inner(shared)
        .ok_or(LoadError::Unexpected { what: "sign-up".into(), body: "a worker outlived the sign-ups".into() })?;
    let mut users = shared.users.into_inner().unwrap_or_else(|p| p.into_inner());
    users.sort_by_key(|u| u.index);
    Progress::note(&format!("signed up {count} users in {:.1} s", elapsed.as_secs_f64()));
    Ok(SignedUp { users, elapsed, retries: shared.retries.into_inner(), latency: shared.latency })
}

/// A load product found in the catalog.
#[derive(Default)]
struct Found {
    id: String,
    available: i64,
}

/// Lists the load products, spread over the categories, and creates the ones missing up to `wanted`.
pub async fn catalog(api: &Api, wanted: usize, admin: Option<&(String, String)>) -> Result<Catalog, LoadError> {
    let mut by_category: Vec<Vec<Found>> = Vec::new();
    for category in CATEGORIES {
        by_category.push(list_category(api, category, wanted).await?);
    }
    // Round-robin over the categories, so a smaller run still shops in all of them.
    let mut found = Vec::new();
    let deepest = by_category.iter().map(Vec::len).max().unwrap_or(0);
    for depth in 0..deepest {
        found.extend(by_category.iter_mut().filter_map(|c| c.get_mut(depth).map(std::mem::take)));
    }
    found.truncate(wanted);
    let missing = wanted - found.len();
    let low: Vec<&Found> = found.iter().filter(|p| p.available < STOCK / 10).collect();
    let admin_token = match admin {
        Some((email, password)) if missing > 0 || !low.is_empty() => Some(sign_in(api, email, password).await?),
        None if missing > 0 => return Err(LoadError::AdminRequired { found: found.len(), wanted }),
        _ => None,
    };
    if let Some(token) = &admin_token {
        for product in &low {
            let body = json!({"delta": STOCK - product.available, "reason": "load generator top-up"});
            let path = format!("/api/products/{}/stock", product.id);
            let what = format!("topping up the stock of {}", product.id);
            expect_success(api.post(&path, Some(&token.access), &body).await, &what)?;
        }
    } else if !low.is_empty() {
        Progress::note(&format!("{} load products are low on stock; an admin would top them up", low.len()));
    }
    let reused = found.len();
    let mut products: Vec<String> = found.into_iter().map(|p| p.id).collect();
    if let Some(token) = admin_token.filter(|_| missing > 0) {
        products.extend(create_products(api, &token.access, reused, wanted).await?);
    }
    Ok(Catalog { products, created: missing, reused })
}

async fn list_category(api: &Api, category: &str, wanted: usize) -> Result<Vec<Found>, LoadError> {
    let mut found = Vec::new();
    for page in 1..=100 {
        let path = format!("/api/products?category={category}&sort=oldest&limit=100&page={page}");
        let answer = expect_success(api.get(&path, None).await, &format!("listing {category}"))?;
        let items = answer.body["items"].as_array().cloned().unwrap_or_default();
        for item in &items {
            if let (Some(id), Some("USD")) = (item["id"].as_str(), item["currency"].as_str()) {
                let available = item["stockAvailable"].as_i64().unwrap_or(0);
                found.push(Found { id: id.to_string(), available });
            }
        }
        if items.len() < 100 || found.len() >= wanted {
            break;
        }
    }
    Ok(found)
}

/// Creates products `from..to`: product `k` is in category `k % 8`, titled with a random adjective and noun.
async fn create_products(api: &Api, admin: &str, from: usize, to: usize) -> Result<Vec<String>, LoadError> {
    let next = Arc::new(AtomicUsize::new(from));
    let mut workers = JoinSet::new();
    for _ in 0..CREATE_CONCURRENCY.min(to - from) {
        let (api, admin, next) = (api.clone(), admin.to_string(), next.clone());
        workers.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= to {
                    return Ok::<_, LoadError>(ids);
                }
                let body = {
                    let mut rng = rand::thread_rng();
                    let adjective = ADJECTIVES[rng.gen_range(0..ADJECTIVES.len())];
                    let noun = NOUNS[rng.gen_range(0..NOUNS.len())];
                    json!({
                        "title": format!("{adjective} {noun} {k}"),
                        "description": format!("A {adjective} {noun}, made for load tests."),
                        "price": rng.gen_range(299..=9999),
                        "currency": "USD",
                        "category": CATEGORIES[k % CATEGORIES.len()],
                        "stock": STOCK,
                    })
                };
                let answer =
                    expect_success(api.post("/api/products", Some(&admin), &body).await, "creating a product")?;
                match answer.body["id"].as_str() {
                    Some(id) => ids.push(id.to_string()),
                    None => {
                        let body = answer.body.to_string();
                        return Err(LoadError::Unexpected { what: "creating a product".into(), body });
                    }
                }
            }
        });
    }
    let mut ids = Vec::with_capacity(to - from);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            finished = workers.join_next() => match finished {
                Some(Ok(created)) => ids.extend(created?),
                Some(Err(e)) => return Err(LoadError::Unexpected { what: "a product task".into(), body: e.to_string() }),
                None => break,
            },
            _ = tick.tick() => Progress::show(&format!(
                "creating products: about {}/{}", next.load(Ordering::Relaxed).min(to) - from, to - from
            )),
        }
    }
    Progress::note(&format!("created {} products", ids.len()));
    Ok(ids)
}

fn expect_success(answer: Result<Answer, reqwest::Error>, what: &str) -> Result<Answer, LoadError> {
    match answer {
        Ok(a) if a.is_success() => Ok(a),
        Ok(a) => Err(LoadError::Refused { what: what.to_string(), status: a.status, body: a.body.to_string() }),
        Err(e) => Err(LoadError::Transport { what: what.to_string(), error: api::chain(&e) }),
    }
}
