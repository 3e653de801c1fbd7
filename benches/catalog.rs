//! Product listing latency per query shape over a catalog of 10,000 products in the embedded store, each created by
//! its own commit (the `product.created` event and the read model), as a product actor creates it.
//! Run: `cargo bench --bench catalog` (optional env: PRODUCTS, RUNS; DATA_DIR keeps the filled store there, for a
//! server to serve).

use std::time::Instant;

use commercex::domain::product::{ProductCommand, ProductDetails, ProductState};
use commercex::domain::Aggregate;
use commercex::store::embedded::EmbeddedStore;
use commercex::store::{CatalogStore, Commit, EventRecord, EventStore, ProductQuery, ProductSort, ReadModel};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const WORDS: [&str; 16] = [
    "red", "blue", "green", "steel", "oak", "linen", "mug", "lamp", "desk", "chair", "kettle", "pen", "notebook",
    "teapot", "rug", "vase",
];

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn details(i: usize, rng: &mut StdRng) -> ProductDetails {
    let mut word = || *WORDS.choose(rng).unwrap_or(&"mug");
    let title = format!("{} {} {i}", word(), word());
    let mut description: Vec<&str> = (0..8).map(|_| word()).collect();
    if i % 500 == 0 {
        description.push("limited");
    }
    ProductDetails {
        title: Some(title),
        description: Some(description.join(" ")),
        price: Some(rng.gen_range(100..100_000)),
        currency: Some("USD".into()),
        category: Some(format!("cat{}", i % 20)),
        image_url: Some(None),
    }
}

/// The commit a product actor makes when it creates a product.
fn create(i: usize, rng: &mut StdRng) -> Commit {
    let id = uuid::Uuid::now_v7().to_string();
    let stream = format!("product:{id}");
    let now = chrono::Utc::now();
    let mut state = ProductState::default();
    let command = ProductCommand::Create { details: details(i, rng), initial_stock: 10 };
    let events = state.decide(&id, &command, now).unwrap();
    let mut records = Vec::new();
    for (n, event) in events.iter().enumerate() {
        state.apply(event);
        let seq = n as u64 + 1;
        records.push(EventRecord {
            id: format!("{stream}/{seq}"),
            stream: stream.clone(),
            seq,
            event_type: ProductState::event_type(event).into(),
            recorded_at: now,
            payload: serde_json::to_value(event).unwrap(),
        });
    }
    let read_model = state.product.map(ReadModel::Product);
    Commit { stream, expected_seq: 0, events: records, snapshot: None, read_model, active: false }
}

fn query(f: impl FnOnce(&mut ProductQuery)) -> ProductQuery {
    let mut q = ProductQuery { page: 1, limit: 20, ..Default::default() };
    f(&mut q);
    q
}

#[tokio::main]
async fn main() {
    let products = env_or("PRODUCTS", 10_000);
    let runs = env_or("RUNS", 200);
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var_os("DATA_DIR").map_or_else(|| dir.path().to_path_buf(), Into::into);
    let store = EmbeddedStore::open(&path).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let started = Instant::now();
    for i in 0..products {
        store.commit(create(i, &mut rng)).await.unwrap();
    }
    println!("{products} products written in {:.1} s", started.elapsed().as_secs_f64());

    // Shapes a client may send, each with whether its page has items; the last ones are those a hostile client would
    // pick to make the listing read as much as it can.
    let shapes = [
        ("first page, newest", true, query(|_| {})),
        ("category page (1/20 of the catalog)", true, query(|q| q.category = Some("cat3".into()))),
        ("page 250, newest", true, query(|q| q.page = 250)),
        ("price 1,000-5,000 sorted by price, page 2", true, {
            query(|q| (q.min_price, q.max_price, q.sort, q.page) = (Some(1_000), Some(5_000), ProductSort::PriceAsc, 2))
        }),
        ("price 1,000-5,000, newest", true, query(|q| (q.min_price, q.max_price) = (Some(1_000), Some(5_000)))),
        ("price from 10,000, newest", true, query(|q| q.min_price = Some(10_000))),
        ("text `mug`", true, query(|q| q.text = Some("mug".into()))),
        ("text `steel mug`, by title", true, {
            query(|q| (q.text, q.sort) = (Some("steel mug".into()), ProductSort::TitleAsc))
        }),
        ("text `limited`, a rare word", true, query(|q| q.text = Some("limited".into()))),
        ("text `oak` in a category, price to 50,000", true, {
            query(|q| (q.text, q.category, q.max_price) = (Some("oak".into()), Some("cat7".into()), Some(50_000)))
        }),
        ("hostile: text `r s l g o`", false, query(|q| q.text = Some("r s l g o".into()))),
        ("hostile: text `red blu gre ste oak`", false, query(|q| q.text = Some("red blu gre ste oak".into()))),
        ("hostile: the same, price from 0", false, {
            query(|q| (q.text, q.min_price) = (Some("red blu gre ste oak".into()), Some(0)))
        }),
        ("hostile: price from 0, newest, page 500", false, query(|q| (q.min_price, q.page) = (Some(0), 500))),
        (
            "hostile: price from 0 sorted by price",
            true,
            query(|q| (q.min_price, q.sort) = (Some(0), ProductSort::PriceAsc)),
        ),
        ("hostile: page 26 of a category of 500", false, query(|q| (q.category, q.page) = (Some("cat3".into()), 26))),
    ];
    for (label, has_items, q) in shapes {
        let mut times = Vec::with_capacity(runs);
        let mut total = String::new();
        for _ in 0..runs {
            let t = Instant::now();
            let page = store.list_products(&q).await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(!has_items || !page.items.is_empty(), "{label}: empty page");
            total = format!("{}{}", if page.total_is_exact { "" } else { "at least " }, page.total);
        }
        times.sort_by(f64::total_cmp);
        let pct = |p: f64| times[((runs as f64 * p) as usize).min(runs - 1)];
        println!("{label} ({total} matches): p50 {:.3} ms, p99 {:.3} ms", pct(0.50), pct(0.99));
    }
}
