//! Recovery time of a product with over 10,000 stock movements, with and without snapshots. The snapshotted stream
//! ends 99 events past its last snapshot: the most a recovering actor ever replays with `snapshot_every = 100`.
//!
//! Then a best seller that has been through 1,000,000 orders, one a minute: its snapshot size after 10,000, 100,000
//! and 1,000,000 orders, and its recovery from that snapshot plus the 99 events after it. Most orders are paid and
//! ship a day later; some are cancelled after two hours, some fail payment, some are abandoned until their
//! reservation expires. The state is built by running the product's commands in memory; the store gets only what
//! recovery reads.
//!
//! Run: `cargo bench --bench recovery`

use std::collections::VecDeque;
use std::time::Instant;

use chrono::Duration;
use commercex::actors::entity::recover;
use commercex::domain::product::{ProductCommand, ProductDetails, ProductEvent, ProductState};
use commercex::domain::{Aggregate, Timestamp};
use commercex::store::embedded::EmbeddedStore;
use commercex::store::{Commit, EventRecord, EventStore, Snapshot};

const MOVEMENTS: u64 = 10_098;
const SNAPSHOT_EVERY: u64 = 100;
const RUNS: usize = 30;
const ORDERS: u64 = 1_000_000;

fn details() -> ProductDetails {
    ProductDetails {
        title: Some("Benchmark widget".into()),
        description: Some("A product with a long stock history".into()),
        price: Some(1999),
        currency: Some("USD".into()),
        category: Some("bench".into()),
        image_url: Some(None),
    }
}

fn record(stream: &str, seq: u64, event: &ProductEvent, at: Timestamp) -> EventRecord {
    EventRecord {
        id: format!("{stream}/{seq}"),
        stream: stream.into(),
        seq,
        event_type: ProductState::event_type(event).into(),
        recorded_at: at,
        payload: serde_json::to_value(event).unwrap(),
    }
}

async fn write_stream(store: &EmbeddedStore, stream: &str, snapshots: bool) -> ProductState {
    let mut state = ProductState::default();
    let now = chrono::Utc::now();
    let details = details();
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
            pending.push(record(stream, seq, &event, now));
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

/// A product selling one order a minute, run through its commands in simulated time.
struct BestSeller {
    state: ProductState,
    now: Timestamp,
    orders: u64,
    /// Paid orders waiting to ship, and paid orders waiting to be cancelled, each in the order they are due.
    to_ship: VecDeque<(Timestamp, String, Timestamp)>,
    to_cancel: VecDeque<(Timestamp, String, Timestamp)>,
    /// The events with their times, once recording has started.
    recorded: Option<Vec<(ProductEvent, Timestamp)>>,
}

impl BestSeller {
    fn new() -> Self {
        let mut seller = Self {
            state: ProductState::default(),
            now: chrono::Utc::now(),
            orders: 0,
            to_ship: VecDeque::new(),
            to_cancel: VecDeque::new(),
            recorded: None,
        };
        seller.run(ProductCommand::Create { details: details(), initial_stock: 1_000_000_000 });
        seller
    }

    fn run(&mut self, command: ProductCommand) {
        if self.state.expired_reservations(self.now) {
            self.execute(ProductCommand::ExpireReservations { now: self.now });
        }
        self.execute(command);
    }

    fn execute(&mut self, command: ProductCommand) {
        for event in self.state.decide("best-seller", &command, self.now).unwrap() {
            self.state.apply(&event);
            if let Some(recorded) = &mut self.recorded {
                recorded.push((event, self.now));
            }
        }
    }

    /// Runs the steps that fall due before the next order arrives, a minute later, then places it.
    fn next_order(&mut self) {
        let arrives = self.now + Duration::minutes(1);
        loop {
            let ship = self.to_ship.front().filter(|(due, ..)| *due <= arrives).map(|(due, ..)| *due);
            let cancel = self.to_cancel.front().filter(|(due, ..)| *due <= arrives).map(|(due, ..)| *due);
            match (ship, cancel) {
                (Some(s), c) if c.is_none_or(|c| s <= c) => {
                    let (due, order_id, expires_at) = self.to_ship.pop_front().unwrap();
                    self.now = due;
                    self.run(ProductCommand::CloseOrder { order_id, expires_at });
                }
                (_, Some(_)) => {
                    let (due, order_id, expires_at) = self.to_cancel.pop_front().unwrap();
                    self.now = due;
                    self.run(ProductCommand::Restock { order_id: order_id.clone() });
                    self.run(ProductCommand::CloseOrder { order_id, expires_at });
                }
                _ => break,
            }
        }
        self.now = arrives;
        let n = self.orders;
        self.orders += 1;
        let order_id = format!("ord_{:032x}", u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
        let expires_at = self.now + Duration::minutes(15);
        self.run(ProductCommand::Reserve { order_id: order_id.clone(), quantity: 1 + (n % 3) as i64, expires_at });
        match n % 20 {
            // Abandoned: the reservation expires.
            0 => {}
            // Payment failed: released.
            1 => self.run(ProductCommand::ReleaseReservation { order_id, reason: "released".into() }),
            // Paid, then cancelled two hours later.
            2 => {
                self.run(ProductCommand::CommitReservation { order_id: order_id.clone() });
                self.to_cancel.push_back((self.now + Duration::hours(2), order_id, expires_at));
            }
            // Paid, shipped a day later.
            _ => {
                self.run(ProductCommand::CommitReservation { order_id: order_id.clone() });
                self.to_ship.push_back((self.now + Duration::days(1), order_id, expires_at));
            }
        }
    }

    fn snapshot_bytes(&self) -> usize {
        serde_json::to_vec(&self.state).unwrap().len()
    }
}

/// Builds the best seller's state through `ORDERS` orders, printing its size on the way, and writes its snapshot
/// and the 99 events after it.
async fn write_best_seller(store: &EmbeddedStore, stream: &str) -> ProductState {
    let mut seller = BestSeller::new();
    let started = Instant::now();
    for checkpoint in [10_000, 100_000, ORDERS] {
        while seller.orders < checkpoint {
            seller.next_order();
        }
        println!(
            "best seller after {checkpoint} orders: snapshot {} bytes, {} orders remembered, {} reservations",
            seller.snapshot_bytes(),
            seller.state.settled.len(),
            seller.state.reservations.len(),
        );
    }
    println!("  (built in {:.1} s)", started.elapsed().as_secs_f64());
    let mut state = seller.state.clone();
    seller.recorded = Some(Vec::new());
    while seller.recorded.as_ref().is_some_and(|r| r.len() < SNAPSHOT_EVERY as usize) {
        seller.next_order();
    }
    let events = seller.recorded.unwrap_or_default();
    let records: Vec<EventRecord> = events[..SNAPSHOT_EVERY as usize]
        .iter()
        .enumerate()
        .map(|(i, (event, at))| record(stream, i as u64 + 1, event, *at))
        .collect();
    // Snapshot after the first of these events, as an actor does; recovery replays the other 99.
    let (first, rest) = records.split_at(1);
    state.apply(&events[0].0);
    let snapshot = Snapshot { seq: 1, state: serde_json::to_value(&state).unwrap() };
    let commit = |expected_seq, events: &[EventRecord], snapshot| Commit {
        stream: stream.into(),
        expected_seq,
        events: events.to_vec(),
        snapshot,
        read_model: None,
        active: false,
    };
    store.commit(commit(0, first, Some(snapshot))).await.unwrap();
    store.commit(commit(1, rest, None)).await.unwrap();
    for (event, _) in &events[1..SNAPSHOT_EVERY as usize] {
        state.apply(event);
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
    let best_seller = write_best_seller(&store, "product:best-seller").await;
    let (p50, p95) = measure(&store, "product:best-seller", &best_seller).await;
    println!("recover the best seller after {ORDERS} orders (snapshot + 99 events): p50 {p50:.2} ms, p95 {p95:.2} ms");
}
