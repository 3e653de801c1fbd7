//! Contract suites: backend-independent checks written once as plain async functions over a trait object, run
//! against every implementation of the trait. The in-process side runs with `cargo test`; the side on real servers
//! is `#[ignore]`d and run by `scripts/test.sh` (`cargo test --test contract -- --include-ignored`).
//!
//! The bus contract (`bus.rs`) runs on the in-process bus and on Kafka at `COMMERCEX_TEST_KAFKA_BROKERS`, each Kafka
//! test on topics and consumer groups of its own, its topics deleted afterwards.
//!
//! The store contract (`store.rs`, `store/catalog.rs`; revocations in `revocations.rs`) runs on the embedded store
//! in a temporary directory and on MongoDB at `COMMERCEX_TEST_MONGODB_URI`, each test in a fresh database dropped
//! afterwards; `mongo.rs` adds what only a remote store has: writes interrupted between documents, a server that
//! goes away.
//!
//! The media store contract (`media.rs`) runs on a local directory and on an S3-compatible server at
//! `COMMERCEX_TEST_S3_ENDPOINT`.

mod bus;
mod cache;
mod fixtures;
mod media;
mod mongo;
mod ratelimit;
mod redis_setup;
mod revocations;
mod store;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use commercex::store::embedded::EmbeddedStore;
use commercex::store::mongo::MongoStore;
use commercex::store::Store;
use futures_util::FutureExt;

pub async fn on_embedded<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    check(Arc::new(store)).await;
}

/// The MongoDB URI of the test server; a test that needs it never skips silently.
pub fn mongodb_uri() -> String {
    std::env::var("COMMERCEX_TEST_MONGODB_URI").unwrap_or_else(|_| {
        panic!(
            "COMMERCEX_TEST_MONGODB_URI is not set: run scripts/test.sh, or start the server with \
             `scripts/infra.sh up mongo` and `eval \"$(scripts/infra.sh env)\"`"
        )
    })
}

pub fn fresh_database() -> String {
    format!("contract_{}", uuid::Uuid::new_v4().simple())
}

/// Runs `check` on a store in a fresh database, then drops the database, also when the check failed.
pub async fn on_mongodb<F, Fut>(check: F)
where
    F: FnOnce(MongoStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let store = MongoStore::connect(&mongodb_uri(), &fresh_database()).await.expect("connecting to MongoDB");
    let outcome = AssertUnwindSafe(check(store.clone())).catch_unwind().await;
    store.drop_database().await.expect("dropping the test database");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One test per check and backend.
macro_rules! contract {
    ($($name:ident => $check:path),* $(,)?) => {
        mod embedded {
            $(#[tokio::test]
            async fn $name() {
                crate::on_embedded($check).await;
            })*
        }

        mod mongodb {
            $(#[tokio::test]
            #[ignore = "needs the real servers: scripts/test.sh"]
            async fn $name() {
                crate::on_mongodb(|store| $check(std::sync::Arc::new(store))).await;
            })*
        }
    };
}

contract! {
    commit_refused_unless_at_expected_sequence => crate::store::a_commit_is_refused_unless_the_stream_is_where_the_writer_expects,
    one_racing_writer_wins => crate::store::one_of_several_racing_writers_wins,
    history_after_latest_snapshot => crate::store::history_starts_after_the_latest_snapshot,
    outbox_in_commit_order_until_acknowledged => crate::store::the_outbox_hands_out_events_in_commit_order_until_acknowledged,
    scoped_outbox => crate::store::a_scoped_outbox_hands_out_only_the_streams_it_covers,
    active_streams_follow_last_commit => crate::store::active_streams_are_those_whose_last_commit_left_work,
    read_models_follow_last_commit => crate::store::read_models_follow_the_last_commit_of_their_stream,
    catalog_listing_rules => crate::store::catalog::listing_follows_the_listing_rules,
    catalog_listing_equals_reference => crate::store::catalog::listing_equals_the_reference_on_random_catalogs,
    catalog_broad_listings_bounded => crate::store::catalog::broad_listings_are_cut_by_the_bounds,
    users_unique_email_and_versioned => crate::store::users_are_unique_by_email_and_updated_by_version,
    refresh_tokens_used_once => crate::store::refresh_tokens_are_used_once,
    sales_listed_newest_first => crate::store::sales_are_listed_newest_first,
    notifications_numbered_once => crate::store::notifications_are_numbered_once_per_event_and_user,
    emails_stored_once => crate::store::emails_are_stored_once_per_event_and_template,
    expired_refresh_tokens_purged => crate::store::expired_refresh_tokens_are_purged,
}
