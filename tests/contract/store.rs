//! What every store backend must do, as plain async functions over `Arc<dyn Store>`: the journal (commits,
//! conflicts, history, snapshots), the outbox, active streams, read models, accounts, sales listings,
//! notifications and emails. The catalog listing has its own module; revocations are in `revocations.rs`.

pub mod catalog;

use std::collections::BTreeSet;
use std::sync::Arc;

use commercex::domain::order::OrderStatus;
use commercex::domain::payment::PaymentStatus;
use commercex::store::{
    Email, EventRecord, Notification, OrderQuery, OutboxScope, ReadModel, RefreshToken, RefreshUse, Store, StoreError,
};
use serde_json::json;

use crate::fixtures::{at, commit, coupon, event, order, payment, product, user, with_model, with_snapshot};

fn seqs(events: &[EventRecord]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

pub async fn a_commit_is_refused_unless_the_stream_is_where_the_writer_expects(store: Arc<dyn Store>) {
    store.commit(commit("cart:a", 0, 1..=2)).await.unwrap();
    for expected in [0, 1, 3] {
        let err = store.commit(commit("cart:a", expected, expected + 1..=expected + 1)).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict { stream, expected: e, actual: 2 } if stream == "cart:a" && *e == expected),
            "expected {expected}: {err:?}"
        );
    }
    store.commit(commit("cart:a", 2, 3..=3)).await.unwrap();
    let err = store.commit(commit("cart:a", 3, 5..=5)).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");

    let history = store.history("cart:a").await.unwrap();
    assert!(history.snapshot.is_none());
    assert_eq!(history.events, vec![event("cart:a", 1), event("cart:a", 2), event("cart:a", 3)]);
    // Streams are told apart exactly, not by prefix.
    assert!(store.history("cart:ab").await.unwrap().events.is_empty());
    assert!(store.history("cart:").await.unwrap().events.is_empty());
    store.commit(commit("cart:ab", 0, 1..=1)).await.unwrap();
    assert_eq!(seqs(&store.history("cart:a").await.unwrap().events), [1, 2, 3]);
}

pub async fn one_of_several_racing_writers_wins(store: Arc<dyn Store>) {
    for round in 0..3u64 {
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut c = commit("order:race", round, round + 1..=round + 1);
                    c.events[0].payload = json!({ "writer": w });
                    store.commit(c).await.map(|()| w)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for writer in writers {
            match writer.await.unwrap() {
                Ok(w) => winners.push(w),
                Err(StoreError::Conflict { expected, actual, .. }) => {
                    assert_eq!(expected, round);
                    assert!(actual > round, "a refused writer is told the stream moved on: {actual}");
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let history = store.history("order:race").await.unwrap();
        assert_eq!(seqs(&history.events), (1..=round + 1).collect::<Vec<_>>());
        assert_eq!(history.events[round as usize].payload, json!({ "writer": winners[0] }));
    }
}

pub async fn history_starts_after_the_latest_snapshot(store: Arc<dyn Store>) {
    store.commit(commit("product:p", 0, 1..=3)).await.unwrap();
    store.commit(with_snapshot(commit("product:p", 3, 4..=5), 5)).await.unwrap();
    store.commit(commit("product:p", 5, 6..=6)).await.unwrap();
    let h = store.history("product:p").await.unwrap();
    assert_eq!(h.snapshot.as_ref().map(|s| s.seq), Some(5));
    assert_eq!(h.snapshot.unwrap().state, json!({"at": 5, "items": {"a": 1.5, "b": [5]}}));
    assert_eq!(h.events, vec![event("product:p", 6)]);

    store.commit(with_snapshot(commit("product:p", 6, 7..=7), 7)).await.unwrap();
    let h = store.history("product:p").await.unwrap();
    assert_eq!((h.snapshot.map(|s| s.seq), h.events.len()), (Some(7), 0));
    // Snapshots belong to their stream.
    assert!(store.history("product:q").await.unwrap().snapshot.is_none());
}

pub async fn the_outbox_hands_out_events_in_commit_order_until_acknowledged(store: Arc<dyn Store>) {
    assert!(store.outbox_pending(10, &OutboxScope::All).await.unwrap().is_empty());
    store.commit(commit("a:1", 0, 1..=2)).await.unwrap();
    store.commit(commit("b:1", 0, 1..=1)).await.unwrap();
    store.commit(commit("a:1", 2, 3..=5)).await.unwrap();
    store.commit(commit("b:1", 1, 2..=2)).await.unwrap();
    let order = ["a:1/1", "a:1/2", "b:1/1", "a:1/3", "a:1/4", "a:1/5", "b:1/2"];

    let pending = store.outbox_pending(100, &OutboxScope::All).await.unwrap();
    assert_eq!(pending.iter().map(|e| e.event.id.as_str()).collect::<Vec<_>>(), order);
    assert!(pending.windows(2).all(|w| w[0].position < w[1].position), "positions increase");
    assert_eq!(pending[2].event, event("b:1", 1));
    let first_three = store.outbox_pending(3, &OutboxScope::All).await.unwrap();
    assert_eq!(
        first_three.iter().map(|e| e.position).collect::<Vec<_>>(),
        pending[..3].iter().map(|e| e.position).collect::<Vec<_>>()
    );
    assert!(store.outbox_pending(0, &OutboxScope::All).await.unwrap().is_empty());

    // Acknowledging part of a commit leaves the rest of it pending, in order.
    let position = |id: &str| pending.iter().find(|e| e.event.id == id).unwrap().position;
    store.outbox_ack(&[position("a:1/1"), position("a:1/2"), position("a:1/4")]).await.unwrap();
    let left = store.outbox_pending(100, &OutboxScope::All).await.unwrap();
    assert_eq!(left.iter().map(|e| e.event.id.as_str()).collect::<Vec<_>>(), ["b:1/1", "a:1/3", "a:1/5", "b:1/2"]);
    assert_eq!(left[1].position, position("a:1/3"));

    store.outbox_ack(&[]).await.unwrap();
    store.outbox_ack(&[position("a:1/3"), position("a:1/5")]).await.unwrap();
    let left = store.outbox_pending(100, &OutboxScope::All).await.unwrap();
    assert_eq!(left.iter().map(|e| e.event.id.as_str()).collect::<Vec<_>>(), ["b:1/1", "b:1/2"]);

    // A later commit comes after everything committed before it, and acknowledging twice changes nothing.
    store.commit(commit("c:1", 0, 1..=1)).await.unwrap();
    let all: Vec<u64> =
        store.outbox_pending(100, &OutboxScope::All).await.unwrap().iter().map(|e| e.position).collect();
    assert_eq!(all.len(), 3);
    assert!(all[2] > position("b:1/2"));
    store.outbox_ack(&all).await.unwrap();
    store.outbox_ack(&all).await.unwrap();
    assert!(store.outbox_pending(100, &OutboxScope::All).await.unwrap().is_empty());
    assert_eq!(store.history("a:1").await.unwrap().events.len(), 5, "acknowledging keeps the journal");
}

pub async fn a_scoped_outbox_hands_out_only_the_streams_it_covers(store: Arc<dyn Store>) {
    store.commit(commit("a:1", 0, 1..=2)).await.unwrap();
    store.commit(commit("b:1", 0, 1..=1)).await.unwrap();
    store.commit(commit("a:2", 0, 1..=1)).await.unwrap();
    let hosted = OutboxScope::Hosted(Arc::new(|stream: &str| stream.starts_with("a:")));
    let pending = store.outbox_pending(100, &hosted).await.unwrap();
    assert_eq!(pending.iter().map(|e| e.event.id.as_str()).collect::<Vec<_>>(), ["a:1/1", "a:1/2", "a:2/1"]);
    assert_eq!(store.outbox_pending(2, &hosted).await.unwrap().len(), 2, "the limit counts what is handed out");
    store.outbox_ack(&pending.iter().map(|e| e.position).collect::<Vec<_>>()).await.unwrap();
    let left = store.outbox_pending(100, &OutboxScope::All).await.unwrap();
    assert_eq!(
        left.iter().map(|e| e.event.id.as_str()).collect::<Vec<_>>(),
        ["b:1/1"],
        "the others stay for their host"
    );
}

pub async fn active_streams_are_those_whose_last_commit_left_work(store: Arc<dyn Store>) {
    assert!(store.active_streams().await.unwrap().is_empty());
    let active = |mut c: commercex::store::Commit| {
        c.active = true;
        c
    };
    store.commit(active(commit("order:b", 0, 1..=1))).await.unwrap();
    store.commit(active(commit("order:a", 0, 1..=1))).await.unwrap();
    store.commit(commit("order:c", 0, 1..=1)).await.unwrap();
    assert_eq!(store.active_streams().await.unwrap(), ["order:a", "order:b"]);
    store.commit(commit("order:a", 1, 2..=2)).await.unwrap();
    assert_eq!(store.active_streams().await.unwrap(), ["order:b"]);
    store.commit(active(commit("order:a", 2, 3..=3))).await.unwrap();
    store.commit(active(commit("order:c", 1, 2..=2))).await.unwrap();
    assert_eq!(store.active_streams().await.unwrap(), ["order:a", "order:b", "order:c"]);
    // A refused commit changes nothing.
    store.commit(commit("order:c", 1, 2..=2)).await.unwrap_err();
    assert_eq!(store.active_streams().await.unwrap().len(), 3);
}

pub async fn read_models_follow_the_last_commit_of_their_stream(store: Arc<dyn Store>) {
    let mut p = product("p1", "Red mug", "A mug", 900, "Kitchen", 1);
    store.commit(with_model(commit("product:p1", 0, 1..=1), ReadModel::Product(p.clone()))).await.unwrap();
    assert_eq!(store.product("p1").await.unwrap(), Some(p.clone()));
    p.price = 1_200;
    p.version = 2;
    p.image_url = Some("https://img.example/mug.png".into());
    store.commit(with_model(commit("product:p1", 1, 2..=3), ReadModel::Product(p.clone()))).await.unwrap();
    assert_eq!(store.product("p1").await.unwrap(), Some(p.clone()));
    // A refused commit leaves the read model alone.
    let stale = product("p1", "Stale", "", 1, "x", 1);
    store.commit(with_model(commit("product:p1", 1, 2..=2), ReadModel::Product(stale))).await.unwrap_err();
    assert_eq!(store.product("p1").await.unwrap(), Some(p.clone()));
    // Fields that went back to absent are absent.
    p.image_url = None;
    p.deleted = true;
    store.commit(with_model(commit("product:p1", 3, 4..=4), ReadModel::Product(p.clone()))).await.unwrap();
    assert_eq!(store.product("p1").await.unwrap(), Some(p), "a deleted product is still readable by id");
    assert_eq!(store.product("p2").await.unwrap(), None);

    let mut o = order("o1", "u1", OrderStatus::Pending, 10);
    o.request_hash = Some("h".into());
    store.commit(with_model(commit("order:o1", 0, 1..=1), ReadModel::Order(Box::new(o.clone())))).await.unwrap();
    o.status = OrderStatus::Paid;
    o.request_hash = None;
    store.commit(with_model(commit("order:o1", 1, 2..=2), ReadModel::Order(Box::new(o.clone())))).await.unwrap();
    assert_eq!(store.order("o1").await.unwrap(), Some(o));

    let mut pay = payment("o1", PaymentStatus::Pending, 11);
    pay.unknown_outcome = Some("timeout".into());
    store.commit(with_model(commit("payment:pay-o1", 0, 1..=1), ReadModel::Payment(pay.clone()))).await.unwrap();
    assert_eq!(store.payments_for_order("o1").await.unwrap(), vec![pay.clone()]);
    pay.status = PaymentStatus::Captured;
    pay.unknown_outcome = None;
    pay.recheck_at = Some(at(60_000));
    pay.rechecking = true;
    pay.charge_id = Some("ch_1".into());
    store.commit(with_model(commit("payment:pay-o1", 1, 2..=2), ReadModel::Payment(pay.clone()))).await.unwrap();
    assert_eq!(store.payment(&pay.id).await.unwrap(), Some(pay.clone()));
    assert_eq!(store.payment("pay-o9").await.unwrap(), None);
    assert_eq!(store.payments_for_order("o1").await.unwrap(), vec![pay]);

    let mut c = coupon("SAVE10");
    store.commit(with_model(commit("coupon:SAVE10", 0, 1..=1), ReadModel::Coupon(c.clone()))).await.unwrap();
    c.redemptions.insert("o1".into(), "u1".into());
    c.usage_limit = None;
    store.commit(with_model(commit("coupon:SAVE10", 1, 2..=2), ReadModel::Coupon(c.clone()))).await.unwrap();
    assert_eq!(store.coupon("SAVE10").await.unwrap(), Some(c));
    assert_eq!(store.coupon("save10").await.unwrap(), None);
}

pub async fn users_are_unique_by_email_and_updated_by_version(store: Arc<dyn Store>) {
    let ada = user("u-ada", "ada@example.com", 20);
    store.insert_user(&ada).await.unwrap();
    let twin = user("u-twin", "ada@example.com", 21);
    assert!(matches!(store.insert_user(&twin).await, Err(StoreError::Duplicate("email"))));
    assert_eq!(store.user("u-twin").await.unwrap(), None);
    assert_eq!(store.user("u-ada").await.unwrap(), Some(ada.clone()));
    assert_eq!(store.user_by_email("ada@example.com").await.unwrap(), Some(ada.clone()));
    assert_eq!(store.user_by_email("ADA@example.com").await.unwrap(), None);

    let mut next = ada.clone();
    next.version = 2;
    next.name = "Ada L.".into();
    next.phone = Some("+44 20 7946 0000".into());
    store.update_user(&next).await.unwrap();
    assert_eq!(store.user("u-ada").await.unwrap(), Some(next.clone()));
    // A write based on version 1 again is stale.
    let mut stale = ada.clone();
    stale.version = 2;
    stale.name = "Lost update".into();
    let err = store.update_user(&stale).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { expected: 1, actual: 2, .. }), "{err:?}");
    let mut renamed = next.clone();
    renamed.version = 3;
    renamed.email = "other@example.com".into();
    assert!(matches!(store.update_user(&renamed).await, Err(StoreError::Conflict { .. })));
    let mut nobody = user("u-nobody", "nobody@example.com", 0);
    nobody.version = 2;
    assert!(matches!(store.update_user(&nobody).await, Err(StoreError::Conflict { actual: 0, .. })));
    assert_eq!(store.user("u-ada").await.unwrap(), Some(next));

    // Listed oldest first, ties by id.
    for (id, created) in [("u-c", 5), ("u-b", 5), ("u-a", 30)] {
        store.insert_user(&user(id, &format!("{id}@example.com"), created)).await.unwrap();
    }
    let page = store.list_users(1, 2).await.unwrap();
    assert_eq!(page.items.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["u-b", "u-c"]);
    assert_eq!(page.total, 4);
    let page = store.list_users(2, 2).await.unwrap();
    assert_eq!(page.items.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["u-ada", "u-a"]);
    assert!(store.list_users(3, 2).await.unwrap().items.is_empty());
}

pub async fn refresh_tokens_are_used_once(store: Arc<dyn Store>) {
    // Unexpired: a store may delete expired tokens at any time (MongoDB's TTL index does).
    let tomorrow = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + 86_400, 0).unwrap();
    let token = RefreshToken { user_id: "u1".into(), family_id: "f1".into(), expires_at: tomorrow, used: false };
    store.insert_refresh_token("hash-1", &token).await.unwrap();
    assert!(matches!(store.insert_refresh_token("hash-1", &token).await, Err(StoreError::Duplicate(_))));
    assert_eq!(store.refresh_token("hash-1").await.unwrap(), Some(token.clone()), "reading does not use it");
    let used = RefreshToken { used: true, ..token.clone() };
    assert_eq!(store.use_refresh_token("hash-1").await.unwrap(), RefreshUse::Consumed(used.clone()));
    assert_eq!(store.use_refresh_token("hash-1").await.unwrap(), RefreshUse::Reused(used.clone()));
    assert_eq!(store.refresh_token("hash-1").await.unwrap(), Some(used));
    assert_eq!(store.use_refresh_token("nope").await.unwrap(), RefreshUse::Unknown);
    assert_eq!(store.refresh_token("nope").await.unwrap(), None);

    // Presented by several clients at once, a token is consumed exactly once.
    store.insert_refresh_token("hash-2", &token).await.unwrap();
    let uses: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.use_refresh_token("hash-2").await.unwrap() })
        })
        .collect();
    let mut consumed = 0;
    for outcome in uses {
        match outcome.await.unwrap() {
            RefreshUse::Consumed(_) => consumed += 1,
            RefreshUse::Reused(t) => assert!(t.used),
            RefreshUse::Unknown => panic!("the token exists"),
        }
    }
    assert_eq!(consumed, 1);
}

pub async fn sales_are_listed_newest_first(store: Arc<dyn Store>) {
    let orders = [
        ("o1", "u1", OrderStatus::Paid, 10),
        ("o2", "u2", OrderStatus::Pending, 20),
        ("o3", "u1", OrderStatus::Pending, 30),
        ("o5", "u1", OrderStatus::Paid, 30),
        ("o4", "u1", OrderStatus::Cancelled, 40),
    ];
    for (id, user, status, created) in orders {
        let o = order(id, user, status, created);
        store
            .commit(with_model(commit(&format!("order:{id}"), 0, 1..=1), ReadModel::Order(Box::new(o))))
            .await
            .unwrap();
        let p = payment(
            id,
            if status == OrderStatus::Paid { PaymentStatus::Captured } else { PaymentStatus::Pending },
            created,
        );
        store.commit(with_model(commit(&format!("payment:pay-{id}"), 0, 1..=1), ReadModel::Payment(p))).await.unwrap();
    }
    let list = |user: Option<&str>, status: Option<OrderStatus>, page: u32, limit: u32| {
        let store = store.clone();
        let query = OrderQuery { user_id: user.map(String::from), status, page, limit };
        async move {
            let page = store.list_orders(&query).await.unwrap();
            (page.items.iter().map(|o| o.id.clone()).collect::<Vec<_>>(), page.total)
        }
    };
    assert_eq!(
        list(None, None, 1, 10).await,
        (vec!["o4".into(), "o5".into(), "o3".into(), "o2".into(), "o1".into()], 5)
    );
    assert_eq!(list(None, None, 2, 2).await, (vec!["o3".into(), "o2".into()], 5));
    assert_eq!(list(Some("u1"), None, 1, 10).await.1, 4);
    assert_eq!(list(Some("u1"), Some(OrderStatus::Paid), 1, 10).await, (vec!["o5".into(), "o1".into()], 2));
    assert_eq!(list(None, Some(OrderStatus::Pending), 1, 1).await, (vec!["o3".into()], 2));
    assert_eq!(list(Some("u3"), None, 1, 10).await, (vec![], 0));
    assert_eq!(list(None, None, 9, 10).await, (vec![], 5));

    let payments = store.list_payments(Some(PaymentStatus::Captured), 1, 10).await.unwrap();
    assert_eq!(payments.items.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["pay-o5", "pay-o1"]);
    assert_eq!(payments.total, 2);
    let payments = store.list_payments(None, 2, 3).await.unwrap();
    assert_eq!(payments.items.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["pay-o2", "pay-o1"]);
    assert_eq!(payments.total, 5);
    assert!(store.payments_for_order("o9").await.unwrap().is_empty());

    for code in ["WINTER", "AUTUMN", "SPRING"] {
        store
            .commit(with_model(commit(&format!("coupon:{code}"), 0, 1..=1), ReadModel::Coupon(coupon(code))))
            .await
            .unwrap();
    }
    let coupons = store.list_coupons(1, 2).await.unwrap();
    assert_eq!(coupons.items.iter().map(|c| c.code.as_str()).collect::<Vec<_>>(), ["AUTUMN", "SPRING"]);
    assert_eq!(coupons.total, 3);
}

fn notification(user: Option<&str>, event_id: &str, kind: &str) -> Notification {
    Notification {
        id: 0,
        user_id: user.map(String::from),
        kind: kind.into(),
        title: format!("{kind} title"),
        body: "Body with \"quotes\" and ünïcode".into(),
        data: json!({"orderId": "o1", "total": 1500, "ratio": 0.5, "tags": ["a"]}),
        event_id: event_id.into(),
        read: false,
        created_at: at(5),
    }
}

pub async fn notifications_are_numbered_once_per_event_and_user(store: Arc<dyn Store>) {
    let a1 = store.insert_notification(notification(Some("ua"), "order:o1/2", "order.paid")).await.unwrap();
    let public = store.insert_notification(notification(None, "product:p1/1", "product.new")).await.unwrap();
    let b1 = store.insert_notification(notification(Some("ub"), "order:o1/2", "order.paid")).await.unwrap();
    let a2 = store.insert_notification(notification(Some("ua"), "order:o1/3", "order.shipped")).await.unwrap();
    assert!(a1.id > 0 && a1.id < public.id && public.id < b1.id && b1.id < a2.id, "ids increase");
    assert_eq!(a1, Notification { id: a1.id, ..notification(Some("ua"), "order:o1/2", "order.paid") });
    // A replayed event stores nothing, for a user or for everyone: it gets back what was stored the first time,
    // even when the replay derived a different text.
    let mut replay = notification(Some("ua"), "order:o1/2", "order.paid");
    replay.title = "derived again".into();
    assert_eq!(store.insert_notification(replay).await.unwrap(), a1);
    assert_eq!(store.insert_notification(notification(None, "product:p1/1", "product.new")).await.unwrap(), public);
    let a3 = store.insert_notification(notification(Some("ua"), "order:o2/2", "order.paid")).await.unwrap();
    assert!(a3.id > a2.id);

    let (page, unread) = store.list_notifications("ua", 1, 2).await.unwrap();
    assert_eq!(page.items.iter().map(|n| n.id).collect::<Vec<_>>(), [a3.id, a2.id]);
    assert_eq!((page.total, unread), (3, 3));
    assert!(store.mark_read("ua", a2.id).await.unwrap());
    assert!(store.mark_read("ua", a2.id).await.unwrap(), "marking twice is fine");
    assert!(!store.mark_read("ub", a1.id).await.unwrap(), "not someone else's");
    assert!(!store.mark_read("ua", public.id).await.unwrap(), "public notifications are nobody's to mark");
    assert!(!store.mark_read("ua", 999_999).await.unwrap());
    let (page, unread) = store.list_notifications("ua", 2, 2).await.unwrap();
    assert_eq!(page.items.iter().map(|n| (n.id, n.read)).collect::<Vec<_>>(), [(a1.id, false)]);
    assert_eq!(unread, 2);
    let (page, unread) = store.list_notifications("uc", 1, 10).await.unwrap();
    assert_eq!((page.items.len(), page.total, unread), (0, 0, 0));

    let after = |user: &'static str, after: u64, limit: usize| {
        let store = store.clone();
        async move { store.notifications_after(user, after, limit).await.unwrap().iter().map(|n| n.id).collect::<Vec<_>>() }
    };
    assert_eq!(after("ua", 0, 10).await, [a1.id, public.id, a2.id, a3.id]);
    assert_eq!(after("ua", a1.id, 2).await, [public.id, a2.id]);
    assert_eq!(after("ub", 0, 10).await, [public.id, b1.id]);
    assert_eq!(after("uc", 0, 10).await, [public.id]);
    assert!(after("ua", a3.id, 10).await.is_empty());
    let read: Vec<bool> = store.notifications_after("ua", a1.id, 10).await.unwrap().iter().map(|n| n.read).collect();
    assert_eq!(read, [false, true, false]);

    // Processes handling the same event at once all get the one notification stored.
    let racers = (0..4).map(|_| store.insert_notification(notification(Some("ud"), "order:o9/2", "order.paid")));
    let ids: Vec<u64> = futures_util::future::try_join_all(racers).await.unwrap().iter().map(|n| n.id).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let (page, _) = store.list_notifications("ud", 1, 10).await.unwrap();
    assert_eq!(page.total, 1);
}

fn email(event_id: &str, template: &str, to: &str) -> Email {
    Email {
        id: 0,
        to: to.into(),
        template: template.into(),
        subject: format!("{template} subject"),
        body: "Total: 15.00 USD".into(),
        event_id: event_id.into(),
        created_at: at(7),
    }
}

pub async fn emails_are_stored_once_per_event_and_template(store: Arc<dyn Store>) {
    assert!(store.insert_email(email("order:o1/2", "order_confirmation", "a@example.com")).await.unwrap());
    assert!(!store.insert_email(email("order:o1/2", "order_confirmation", "a@example.com")).await.unwrap());
    assert!(store.insert_email(email("order:o1/2", "receipt", "a@example.com")).await.unwrap());
    assert!(store.insert_email(email("order:o2/2", "order_confirmation", "b@example.com")).await.unwrap());
    let page = store.list_emails(1, 10).await.unwrap();
    let listed: Vec<(&str, &str)> = page.items.iter().map(|e| (e.event_id.as_str(), e.template.as_str())).collect();
    assert_eq!(
        listed,
        [("order:o2/2", "order_confirmation"), ("order:o1/2", "receipt"), ("order:o1/2", "order_confirmation")]
    );
    assert_eq!(page.total, 3);
    let ids: BTreeSet<u64> = page.items.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 3);
    assert!(page.items.windows(2).all(|w| w[0].id > w[1].id), "newest first by number");
    assert_eq!(
        page.items[0],
        Email { id: page.items[0].id, ..email("order:o2/2", "order_confirmation", "b@example.com") }
    );
    let second = store.list_emails(2, 2).await.unwrap();
    assert_eq!((second.items.len(), second.total), (1, 3));
    assert_eq!(second.items[0].template, "order_confirmation");
}

fn refresh(user: &str, expires_at: commercex::domain::Timestamp) -> RefreshToken {
    RefreshToken { user_id: user.into(), family_id: format!("fam-{user}"), expires_at, used: false }
}

/// Security review L3: refresh tokens were kept for good. A purge deletes the expired ones, used or not, and keeps
/// the rest.
pub async fn expired_refresh_tokens_are_purged(store: Arc<dyn Store>) {
    let now = chrono::Utc::now();
    let hour = chrono::Duration::hours(1);
    store.insert_refresh_token("h-old", &refresh("u1", now - hour)).await.unwrap();
    store.insert_refresh_token("h-old-used", &refresh("u2", now - hour)).await.unwrap();
    store.use_refresh_token("h-old-used").await.unwrap();
    store.insert_refresh_token("h-live", &refresh("u3", now + hour)).await.unwrap();
    assert_eq!(store.purge_expired_refresh_tokens(now).await.unwrap(), 2);
    assert_eq!(store.refresh_token("h-old").await.unwrap(), None);
    assert_eq!(store.refresh_token("h-old-used").await.unwrap(), None);
    let live = store.refresh_token("h-live").await.unwrap().expect("an unexpired token stays");
    assert_eq!(live.user_id, "u3");
    assert_eq!(store.purge_expired_refresh_tokens(now).await.unwrap(), 0, "nothing twice");
}
