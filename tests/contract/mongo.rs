//! What only the MongoDB store can meet: a commit interrupted between its documents is finished by the store itself
//! without ever taking a read model back, and a server that cannot be reached fails calls fast with
//! `StoreError::Unavailable`, after which the store works again by itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use commercex::domain::product::Product;
use commercex::store::mongo::MongoStore;
use commercex::store::{CatalogStore, Commit, EventStore, OutboxScope, ProductQuery, ReadModel, StoreError};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::fixtures::{commit, product, with_model, with_snapshot};
use crate::{fresh_database, mongodb_uri, on_mongodb};

fn product_commit(p: &Product, expected: u64, active: bool) -> Commit {
    let mut c = with_model(
        commit(&format!("product:{}", p.id), expected, expected + 1..=expected + 1),
        ReadModel::Product(p.clone()),
    );
    c.active = active;
    c
}

fn mug(version: u64, price: i64) -> Product {
    Product { version, ..product("mug", "Red mug", "", price, "kitchen", 1) }
}

#[tokio::test]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn a_commit_interrupted_after_its_journal_write_is_finished_before_its_events_are_published() {
    on_mongodb(|store| async move {
        store.commit(product_commit(&mug(1, 100), 0, false)).await.unwrap();
        // The process dies right after writing the commit document of version 2.
        store.commit_journal_only(with_snapshot(product_commit(&mug(2, 200), 1, true), 2)).await.unwrap();

        // The journal is the truth at once: recovery, conflicts and the outbox see the commit.
        let history = store.history("product:mug").await.unwrap();
        assert_eq!(history.snapshot.map(|s| s.seq), Some(2), "the snapshot is read from its commit document");
        assert!(history.events.is_empty());
        let err = store.commit(product_commit(&mug(2, 999), 1, false)).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { expected: 1, actual: 2, .. }), "{err:?}");
        let pending = store.outbox_pending(10, &OutboxScope::All).await.unwrap();
        assert_eq!(pending.iter().map(|e| e.event.id.as_str()).collect::<Vec<_>>(), ["product:mug/1", "product:mug/2"]);

        // The outbox finished the commit before handing its events out, as the embedded store's one transaction
        // would have: a subscriber reacting to an event (a cache invalidation) finds the read model it produced.
        assert_eq!(store.product("mug").await.unwrap(), Some(mug(2, 200)));
        assert_eq!(store.active_streams().await.unwrap(), ["product:mug"]);
        let listed = store.list_products(&ProductQuery { page: 1, limit: 10, ..Default::default() }).await.unwrap();
        assert_eq!(listed.items, vec![mug(2, 200)]);
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn finishing_an_old_commit_never_takes_a_read_model_back() {
    on_mongodb(|store| async move {
        store.commit_journal_only(product_commit(&mug(1, 100), 0, true)).await.unwrap();
        // A later commit of the same stream completes before the interrupted one is finished.
        store.commit(product_commit(&mug(2, 200), 1, false)).await.unwrap();
        assert!(store.active_streams().await.unwrap().is_empty(), "the later commit's marker stands");
        assert_eq!(store.product("mug").await.unwrap(), Some(mug(2, 200)));
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn a_restart_finishes_interrupted_commits() {
    let uri = mongodb_uri();
    let database = fresh_database();
    let store = MongoStore::connect(&uri, &database).await.unwrap();
    store.commit_journal_only(product_commit(&mug(1, 100), 0, false)).await.unwrap();
    assert_eq!(store.product("mug").await.unwrap(), None);
    let restarted = MongoStore::connect(&uri, &database).await.unwrap();
    let found = restarted.product("mug").await;
    restarted.drop_database().await.unwrap();
    assert_eq!(found.unwrap(), Some(mug(1, 100)));
}

#[tokio::test]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn the_server_refuses_a_second_commit_document_at_the_same_sequence() {
    use mongodb::bson::{doc, Document};
    use mongodb::error::{ErrorKind, WriteFailure};

    let (uri, database) = (mongodb_uri(), fresh_database());
    let store = MongoStore::connect(&uri, &database).await.unwrap();
    store.commit(commit("cart:u", 0, 1..=1)).await.unwrap();
    // Another writer's document for the same first sequence, under another `_id`: only the unique index can refuse it,
    // whatever either writer read before.
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let commits = client.database(&database).collection::<Document>("commits");
    let second = doc! {"_id": "cart:u/1 (second writer)", "stream": "cart:u", "firstSeq": 1_i64, "lastSeq": 1_i64};
    let outcome = commits.insert_one(second).await;
    store.drop_database().await.unwrap();
    let err = outcome.expect_err("a second commit at sequence 1 was stored");
    assert!(matches!(err.kind.as_ref(), ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000), "{err}");
}

/// A closed port: bound and released.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn connecting_to_no_server_fails_fast() {
    let addr = closed_port().await;
    let started = Instant::now();
    let outcome = MongoStore::connect(&format!("mongodb://user:s3cret@{addr}"), "contract_unreachable").await;
    let Err(StoreError::Unavailable(message)) = outcome else { panic!("connected to a closed port") };
    assert!(started.elapsed() < Duration::from_secs(6), "took {:?}", started.elapsed());
    assert!(!message.contains("s3cret"), "{message}");
}

/// A TCP relay to the real server that can be cut off (every connection closed, new ones dropped) and restored.
struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let accept = {
            let (up, connections) = (up.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().unwrap().push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        Self { addr, up, connections, accept }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

fn upstream() -> SocketAddr {
    let uri = mongodb_uri();
    let host = uri.trim_start_matches("mongodb://").split(['/', '?']).next().unwrap().rsplit('@').next().unwrap();
    std::net::ToSocketAddrs::to_socket_addrs(host).unwrap().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn calls_fail_fast_while_the_server_is_away_and_work_again_when_it_is_back() {
    let relay = Relay::start(upstream()).await;
    let database = fresh_database();
    let store = MongoStore::connect(&format!("mongodb://{}", relay.addr), &database).await.unwrap();
    store.commit(product_commit(&mug(1, 100), 0, false)).await.unwrap();

    relay.cut();
    for round in 0..2 {
        let timed = |outcome: Option<StoreError>, started: Instant, call: &str| {
            assert!(matches!(outcome, Some(StoreError::Unavailable(_))), "round {round}, {call}: {outcome:?}");
            assert!(started.elapsed() < Duration::from_secs(5), "round {round}, {call} took {:?}", started.elapsed());
        };
        let started = Instant::now();
        timed(store.commit(product_commit(&mug(2, 200), 1, false)).await.err(), started, "commit");
        let started = Instant::now();
        timed(store.product("mug").await.err(), started, "product");
        let started = Instant::now();
        timed(store.ping().await.err(), started, "ping");
    }

    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.ping().await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the store did not come back: {e}"),
        }
    }
    store.commit(product_commit(&mug(2, 200), 1, false)).await.unwrap();
    assert_eq!(store.product("mug").await.unwrap(), Some(mug(2, 200)));
    assert_eq!(store.history("product:mug").await.unwrap().events.len(), 2, "nothing lost, nothing doubled");
    store.drop_database().await.unwrap();
}
