//! Domain values and commits for the contract checks.

use chrono::{DateTime, Duration, Utc};
use commercex::domain::coupon::{Coupon, Discount};
use commercex::domain::order::{Order, OrderStatus, SagaProgress};
use commercex::domain::payment::{Payment, PaymentStatus};
use commercex::domain::product::Product;
use commercex::domain::user::{AccountStatus, Role, User};
use commercex::store::{Commit, EventRecord, ReadModel, Snapshot};
use serde_json::json;

/// A fixed point in time plus `ms` milliseconds, so orderings by time are chosen by the test.
pub fn at(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap() + Duration::milliseconds(ms)
}

pub fn event(stream: &str, seq: u64) -> EventRecord {
    EventRecord {
        id: format!("{stream}/{seq}"),
        stream: stream.into(),
        seq,
        event_type: "test.event".into(),
        recorded_at: at(seq as i64),
        // Every kind of JSON value, so a backend that changes a number's type or a key's order is caught.
        payload: json!({
            "n": seq,
            "negative": -7,
            "large": 9_007_199_254_740_993u64,
            "fraction": 0.25,
            "text": "Äpfel & \"mugs\" 🍎",
            "none": null,
            "flag": true,
            "list": [1, "two", {"three": 3.5}],
            "nested": {"b": 1, "a": [[]], "empty": {}},
        }),
    }
}

/// Events `seqs` on `stream`, expected to follow `expected`.
pub fn commit(stream: &str, expected: u64, seqs: std::ops::RangeInclusive<u64>) -> Commit {
    Commit {
        stream: stream.into(),
        expected_seq: expected,
        events: seqs.map(|s| event(stream, s)).collect(),
        snapshot: None,
        read_model: None,
        active: false,
    }
}

pub fn with_snapshot(mut c: Commit, seq: u64) -> Commit {
    c.snapshot = Some(Snapshot { seq, state: json!({"at": seq, "items": {"a": 1.5, "b": [seq]}}) });
    c
}

pub fn with_model(mut c: Commit, model: ReadModel) -> Commit {
    c.read_model = Some(model);
    c
}

pub fn product(id: &str, title: &str, description: &str, price: i64, category: &str, created: i64) -> Product {
    Product {
        id: id.into(),
        title: title.into(),
        description: description.into(),
        price,
        currency: "USD".into(),
        category: category.into(),
        image_url: None,
        stock_on_hand: 5,
        stock_reserved: 1,
        version: 1,
        deleted: false,
        created_at: at(created),
        updated_at: at(created),
    }
}

pub fn order(id: &str, user: &str, status: OrderStatus, created: i64) -> Order {
    Order {
        id: id.into(),
        user_id: user.into(),
        lines: Vec::new(),
        currency: "USD".into(),
        subtotal: 2_000,
        discount: 500,
        total: 1_500,
        coupon_code: Some("SAVE5".into()),
        payment_method: "pm_card_visa".into(),
        shipping_address: None,
        status,
        history: Vec::new(),
        reservation_expires_at: at(created + 900_000),
        progress: SagaProgress::default(),
        created_at: at(created),
        updated_at: at(created),
        request_hash: None,
    }
}

pub fn payment(order_id: &str, status: PaymentStatus, created: i64) -> Payment {
    Payment {
        id: format!("pay-{order_id}"),
        order_id: order_id.into(),
        user_id: "u1".into(),
        amount: 1_500,
        currency: "USD".into(),
        method: "pm_card_visa".into(),
        status,
        attempts: 1,
        charge_id: None,
        failure: None,
        refund_requested: false,
        refund_id: None,
        unknown_outcome: None,
        recheck_at: None,
        rechecking: false,
        created_at: at(created),
        updated_at: at(created),
    }
}

pub fn coupon(code: &str) -> Coupon {
    Coupon {
        code: code.into(),
        discount: Discount::Percent { percent: 10 },
        min_order: Some(1_000),
        min_order_currency: Some("USD".into()),
        expires_at: None,
        usage_limit: Some(3),
        per_user_limit: None,
        active: true,
        redemptions: Default::default(),
        created_at: at(0),
        updated_at: at(0),
    }
}

pub fn user(id: &str, email: &str, created: i64) -> User {
    User {
        id: id.into(),
        email: email.into(),
        name: format!("User {id}"),
        phone: None,
        address: None,
        role: Role::User,
        status: AccountStatus::Active,
        password_hash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA".into(),
        created_at: at(created),
        updated_at: at(created),
        version: 1,
    }
}
