//! The revocation contract: a revoked token id or family is reported until its expiry, a later revocation never
//! shortens an earlier one; and with Redis down, checks fail (authentication refuses the token) rather than answer
//! "not revoked".

use std::time::Duration;

use chrono::Utc;
use commercex::store::{RevocationStore, StoreError};

use crate::redis_setup::{eventually, within, DOWN_BOUND};

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn in_ms(ms: i64) -> commercex::domain::Timestamp {
    Utc::now() + chrono::Duration::milliseconds(ms)
}

pub async fn revoked_keys_are_found(store: &dyn RevocationStore) {
    assert!(!store.any_revoked(&[]).await.unwrap());
    assert!(!store.any_revoked(&keys(&["jti:a", "fam:f"])).await.unwrap());
    store.revoke("fam:f", in_ms(3_600_000)).await.unwrap();
    assert!(store.any_revoked(&keys(&["jti:a", "fam:f"])).await.unwrap());
    assert!(store.any_revoked(&keys(&["fam:f"])).await.unwrap());
    assert!(!store.any_revoked(&keys(&["jti:a", "fam:g"])).await.unwrap());
    store.revoke("jti:a", in_ms(3_600_000)).await.unwrap();
    assert!(store.any_revoked(&keys(&["jti:a"])).await.unwrap());
}

pub async fn a_revocation_holds_until_its_expiry(store: &dyn RevocationStore) {
    store.revoke("jti:a", in_ms(2_500)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(store.any_revoked(&keys(&["jti:a"])).await.unwrap());
}

/// Security review L3: revocations past their `until` are deleted by a purge (Redis expires them by itself), and a
/// purge never forgets one still in force.
pub async fn expired_revocations_are_purged(store: &dyn RevocationStore) {
    store.revoke("jti:old", in_ms(-60_000)).await.unwrap();
    store.revoke("fam:live", in_ms(3_600_000)).await.unwrap();
    store.purge_expired(Utc::now()).await.unwrap();
    assert!(!store.any_revoked(&keys(&["jti:old"])).await.unwrap());
    assert!(store.any_revoked(&keys(&["fam:live"])).await.unwrap());
    assert_eq!(store.purge_expired(Utc::now()).await.unwrap(), 0, "nothing left to purge");
}

pub async fn a_later_revocation_never_shortens_one(store: &dyn RevocationStore) {
    store.revoke("fam:f", in_ms(3_600_000)).await.unwrap();
    store.revoke("fam:f", in_ms(300)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(store.any_revoked(&keys(&["fam:f"])).await.unwrap());
}

mod embedded {
    use commercex::store::embedded::EmbeddedStore;
    use commercex::store::RevocationStore;
    use tempfile::TempDir;

    fn store() -> (TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn revoked_keys_are_found() {
        let (_dir, store) = store();
        super::revoked_keys_are_found(&store).await;
    }

    #[tokio::test]
    async fn a_revocation_holds_until_its_expiry() {
        let (_dir, store) = store();
        super::a_revocation_holds_until_its_expiry(&store).await;
    }

    #[tokio::test]
    async fn a_later_revocation_never_shortens_one() {
        let (_dir, store) = store();
        super::a_later_revocation_never_shortens_one(&store).await;
    }

    #[tokio::test]
    async fn expired_revocations_are_purged() {
        let (_dir, store) = store();
        super::expired_revocations_are_purged(&store).await;
        // What the purge deleted, it deleted from the file.
        let (dir, store) = (_dir, store);
        drop(store);
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.purge_expired(chrono::Utc::now() + chrono::Duration::hours(2)).await.unwrap(), 1);
    }
}

mod redis {
    use commercex::store::redis::RedisRevocations;

    use super::*;
    use crate::redis_setup::{redis, redis_pair, Outage};

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn revoked_keys_are_found() {
        super::revoked_keys_are_found(&RedisRevocations::new(redis("revocations-found"))).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn a_revocation_holds_until_its_expiry() {
        super::a_revocation_holds_until_its_expiry(&RedisRevocations::new(redis("revocations-hold"))).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn a_later_revocation_never_shortens_one() {
        super::a_later_revocation_never_shortens_one(&RedisRevocations::new(redis("revocations-longest"))).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn expired_revocations_are_purged() {
        super::expired_revocations_are_purged(&RedisRevocations::new(redis("revocations-purge"))).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn revocations_are_forgotten_after_their_expiry() {
        let store = RedisRevocations::new(redis("revocations-expiry"));
        store.revoke("jti:gone", in_ms(-1_000)).await.unwrap();
        assert!(!store.any_revoked(&keys(&["jti:gone"])).await.unwrap());
        store.revoke("jti:a", in_ms(300)).await.unwrap();
        assert!(store.any_revoked(&keys(&["jti:a"])).await.unwrap());
        eventually(Duration::from_secs(3), "the revocation expires", || async {
            !store.any_revoked(&keys(&["jti:a"])).await.unwrap()
        })
        .await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn every_process_sees_a_revocation() {
        let (a, b) = redis_pair("revocations-shared");
        RedisRevocations::new(a).revoke("fam:f", in_ms(60_000)).await.unwrap();
        assert!(RedisRevocations::new(b).any_revoked(&keys(&["fam:f"])).await.unwrap());
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn checks_fail_closed_during_an_outage_and_answer_again_after() {
        let outage = Outage::start().await;
        let store = RedisRevocations::new(outage.client("revocations-outage"));
        store.revoke("fam:f", in_ms(60_000)).await.unwrap();

        outage.cut();
        let checked = within(DOWN_BOUND, "a check while Redis is down", store.any_revoked(&keys(&["fam:f"]))).await;
        assert!(matches!(checked, Err(StoreError::Unavailable(_))), "{checked:?}");
        let revoked = within(DOWN_BOUND, "a revocation while Redis is down", store.revoke("fam:g", in_ms(60_000)));
        assert!(matches!(revoked.await, Err(StoreError::Unavailable(_))));

        outage.restore();
        eventually(Duration::from_secs(5), "checks answer again", || async {
            store.any_revoked(&keys(&["fam:f"])).await.is_ok()
        })
        .await;
        assert!(store.any_revoked(&keys(&["fam:f"])).await.unwrap());
    }
}

mod mongodb {
    use super::*;
    use crate::on_mongodb;

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn revoked_keys_are_found() {
        on_mongodb(|store| async move { super::revoked_keys_are_found(&store).await }).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn a_revocation_holds_until_its_expiry() {
        on_mongodb(|store| async move { super::a_revocation_holds_until_its_expiry(&store).await }).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn a_later_revocation_never_shortens_one() {
        on_mongodb(|store| async move { super::a_later_revocation_never_shortens_one(&store).await }).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn expired_revocations_are_purged() {
        on_mongodb(|store| async move { super::expired_revocations_are_purged(&store).await }).await;
    }

    /// Expired revocations no longer count, whenever the server's TTL monitor gets to removing them.
    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn revocations_are_forgotten_after_their_expiry() {
        on_mongodb(|store| async move {
            store.revoke("jti:gone", in_ms(-1_000)).await.unwrap();
            assert!(!store.any_revoked(&keys(&["jti:gone"])).await.unwrap());
            // Room for a loaded test server between the revocation and the check.
            store.revoke("jti:a", in_ms(1_500)).await.unwrap();
            assert!(store.any_revoked(&keys(&["jti:a"])).await.unwrap());
            eventually(Duration::from_secs(5), "the revocation expires", || async {
                !store.any_revoked(&keys(&["jti:a"])).await.unwrap()
            })
            .await;
        })
        .await;
    }
}

/// Redis on a port where nothing listens, or that never answers: every check fails, within a short bound, so no
/// token is let through unchecked.
mod redis_down {
    use commercex::store::redis::RedisRevocations;

    use super::*;
    use crate::redis_setup::{silent, unreachable};

    /// A server that hangs costs the first call the timeout; the calls after it fail at once.
    #[tokio::test]
    async fn checks_fail_closed_when_redis_hangs() {
        let store = RedisRevocations::new(silent().await);
        let started = std::time::Instant::now();
        let key = keys(&["jti:a"]);
        let checked = within(DOWN_BOUND * 2, "the first check", store.any_revoked(&key)).await;
        assert!(matches!(checked, Err(StoreError::Unavailable(_))), "{checked:?}");
        let first = started.elapsed();
        for _ in 0..3 {
            let checked = within(Duration::from_millis(50), "a later check", store.any_revoked(&key)).await;
            assert!(matches!(checked, Err(StoreError::Unavailable(_))), "{checked:?}");
        }
        assert!(first >= Duration::from_millis(400), "gave up after {first:?}, before the timeout");
    }

    #[tokio::test]
    async fn checks_fail_closed_at_once() {
        let store = RedisRevocations::new(unreachable());
        for _ in 0..3 {
            let checked = within(DOWN_BOUND, "a check", store.any_revoked(&keys(&["jti:a", "fam:f"]))).await;
            assert!(matches!(checked, Err(StoreError::Unavailable(_))), "{checked:?}");
            let revoked = within(DOWN_BOUND, "a revocation", store.revoke("jti:a", in_ms(60_000))).await;
            assert!(matches!(revoked, Err(StoreError::Unavailable(_))), "{revoked:?}");
        }
    }
}
