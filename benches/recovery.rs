//! Recovery time of a product with over 10,000 stock movements, with and without snapshots. The snapshotted stream
//! ends 99 events past its last snapshot: the most a recovering actor ever replays with `snapshot_every = 100`.
//! Run: `cargo bench --bench recovery`

use std::time::Instant;

use commercex::actors::entity::recover;
use commercex::domain::product::{ProductCommand, ProductDetails, ProductState};
use commercex::domain::Aggregate;
use commercex::store::embedded::EmbeddedStore;
use commercex::store::{Commit, EventRecord, EventStore, Snapshot};

const MOVEMENTS: u64 = 10_098;
const SNAPSHOT_EVERY: u64 = 100;
const RUNS: usize = 30;

async fn write_stream(store: &EmbeddedStore, stream: &str, snapshots: bool) -> ProductState {
    let mut state = ProductState::default();
    let now = chrono::Utc::now();
    let details = ProductDetails {
        title: Some("Benchmark widget".into()),
        description: Some("A product with a long stock history".into()),
        price: Some(1999),
        currency: Some("USD".into()),
        category: Some("bench".into()),
        image_url: Some(None),
    };
    let mut seq = 0;
    let mut pending = Vec::new();
    for i in 0..=MOVEMENTS {
        let cmd = if i == 0 {
            ProductCommand::Create { details: details.clone(), initial_stock: 1_000_000 }
        } else {
            ProductCommand::AdjustStock { delta: if i % 2 == 0 { 3 } else { -2 }, reason: "movement".into() }
        };
        for event in state.decide("bench", &cmd, now).unwrap() {
            state.apply(&event);
            seq += 1;
            pending.push(EventRecord {
                id: format!("{stream}/{seq}"),
                stream: stream.into(),
                seq,
                event_type: ProductState::event_type(&event).into(),
                recorded_at: now,
                payload: serde_json::to_value(&event).unwrap(),
            });
        }
        if pending.len() as u64 == SNAPSHOT_EVERY || i == MOVEMENTS {
            let events = std::mem::take(&mut pending);
            let expected_seq = seq - events.len() as u64;
            let full = events.len() as u64 == SNAPSHOT_EVERY;
            let snapshot = (snapshots && full).then(|| Snapshot { seq, state: serde_json::to_value(&state).unwrap() });
            store
                .commit(Commit {
                    stream: stream.into(),
                    expected_seq,
                    events,
                    snapshot,
                    read_model: None,
                    active: false,
                })
                .await
                .unwrap();
        }
    }
    state
}

async fn measure(store: &EmbeddedStore, stream: &str, expected: &ProductState) -> (f64, f64) {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        let history = store.history(stream).await.unwrap();
        let (state, _, _) = recover::<ProductState>(history).unwrap();
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(&state, expected);
    }
    times.sort_by(f64::total_cmp);
    (times[RUNS / 2], times[RUNS * 95 / 100])
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let with = write_stream(&store, "product:with-snapshots", true).await;
    let without = write_stream(&store, "product:without-snapshots", false).await;
    for (label, stream, expected) in [
        ("snapshots every 100 events", "product:with-snapshots", &with),
        ("no snapshots", "product:without-snapshots", &without),
    ] {
        let (p50, p95) = measure(&store, stream, expected).await;
        println!("recover product with {MOVEMENTS} stock movements, {label}: p50 {p50:.2} ms, p95 {p95:.2} ms");
    }
}
