//! Coupons: admin-managed discounts. A redemption is held per order from the moment the order's stock is reserved
//! (so concurrent checkouts cannot exceed the usage limit) and returned if the order fails, is cancelled or refunded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::text::{self, InvalidText, Lines};
use super::{currency, Aggregate, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Discount {
    /// Percentage off the subtotal, 1 to 100.
    Percent { percent: u32 },
    /// A fixed amount off, in minor units of `currency` (never more than the subtotal).
    Fixed { amount: i64, currency: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Coupon {
    pub code: String,
    pub discount: Discount,
    pub min_order: Option<i64>,
    /// The currency `min_order` is in: orders in another currency do not qualify. Coupons stored before it existed
    /// have none, and compare `min_order` with any order's subtotal as they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_order_currency: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub usage_limit: Option<u32>,
    pub per_user_limit: Option<u32>,
    pub active: bool,
    /// Order id -> user id of every redemption currently counted.
    pub redemptions: BTreeMap<String, String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponState {
    pub coupon: Option<Coupon>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CouponTerms {
    pub discount: Discount,
    pub min_order: Option<i64>,
    /// Required with `min_order` on a percent coupon; a fixed coupon's minimum is in its own currency.
    #[serde(default)]
    pub min_order_currency: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub usage_limit: Option<u32>,
    pub per_user_limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CouponCommand {
    Create(CouponTerms),
    Update {
        active: Option<bool>,
        usage_limit: Option<Option<u32>>,
        expires_at: Option<Option<Timestamp>>,
    },
    /// Counts one use for the order; a repeat for the same order is a no-op.
    Redeem {
        order_id: String,
        user_id: String,
        subtotal: i64,
        currency: String,
    },
    /// Gives the order's use back; a no-op if it holds none.
    Return {
        order_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum CouponEvent {
    Created { coupon: Coupon },
    Updated { active: bool, usage_limit: Option<u32>, expires_at: Option<Timestamp>, at: Timestamp },
    Redeemed { order_id: String, user_id: String, at: Timestamp },
    Returned { order_id: String, at: Timestamp },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CouponError {
    #[error("coupon not found")]
    NotFound,
    #[error("a coupon with this code already exists")]
    AlreadyExists,
    #[error("`{field}` {message}")]
    Invalid { field: crate::domain::Name, message: String },
    #[error(transparent)]
    InvalidText(#[from] InvalidText),
    #[error("this coupon is not active")]
    Inactive,
    #[error("this coupon has expired")]
    Expired,
    #[error("this coupon has reached its usage limit")]
    UsageLimitReached,
    #[error("you have already used this coupon as often as allowed")]
    PerUserLimitReached,
    #[error("this coupon needs an order of at least {minimum}")]
    MinimumNotMet { minimum: i64 },
    #[error("this coupon is for orders in {0}")]
    CurrencyMismatch(String),
}

/// Upper-cases and checks a coupon code: 3 to 32 letters, digits, `-` or `_`.
pub fn normalize_code(raw: &str) -> Result<String, CouponError> {
    text::check("code", raw, Lines::Single)?;
    let code = raw.trim().to_ascii_uppercase();
    let ok = (3..=32).contains(&code.len()) && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(code)
    } else {
        Err(CouponError::Invalid {
            field: "code".into(),
            message: "must be 3 to 32 letters, digits, `-` or `_`".into(),
        })
    }
}

impl Coupon {
    /// The discount this coupon gives `user_id` on `subtotal` now, or why it cannot be used. Holding a
    /// redemption for `order_id` already counts as eligible.
    pub fn discount_for(
        &self,
        order_id: &str,
        user_id: &str,
        subtotal: i64,
        currency: &str,
        now: Timestamp,
    ) -> Result<i64, CouponError> {
        if !self.redemptions.contains_key(order_id) {
            if !self.active {
                return Err(CouponError::Inactive);
            }
            if self.expires_at.is_some_and(|e| e <= now) {
                return Err(CouponError::Expired);
            }
            if self.usage_limit.is_some_and(|l| self.redemptions.len() as u32 >= l) {
                return Err(CouponError::UsageLimitReached);
            }
            let mine = self.redemptions.values().filter(|u| *u == user_id).count() as u32;
            if self.per_user_limit.is_some_and(|l| mine >= l) {
                return Err(CouponError::PerUserLimitReached);
            }
        }
        if let Some(minimum) = self.min_order {
            if let Some(wanted) = self.min_order_currency.as_ref().filter(|c| *c != currency) {
                return Err(CouponError::CurrencyMismatch(wanted.clone()));
            }
            if subtotal < minimum {
                return Err(CouponError::MinimumNotMet { minimum });
            }
        }
        Ok(match &self.discount {
            Discount::Percent { percent } => subtotal * i64::from(*percent) / 100,
            Discount::Fixed { amount, currency: c } if c == currency => (*amount).min(subtotal),
            Discount::Fixed { currency: c, .. } => return Err(CouponError::CurrencyMismatch(c.clone())),
        })
    }
}

fn check_terms(t: &CouponTerms) -> Result<(), CouponError> {
    let invalid = |field, message: &str| Err(CouponError::Invalid { field, message: message.into() });
    match &t.discount {
        Discount::Percent { percent } if !(1..=100).contains(percent) => {
            return invalid("percent".into(), "must be 1 to 100")
        }
        Discount::Fixed { amount, .. } if *amount <= 0 => return invalid("amount".into(), "must be positive"),
        Discount::Fixed { currency, .. } => {
            text::check("currency", currency, Lines::Single)?;
            if !currency::is_active(currency) {
                return invalid("currency".into(), "must be an active ISO 4217 currency code such as USD, EUR or JPY");
            }
        }
        _ => {}
    }
    if t.min_order.is_some_and(|m| m < 0) {
        return invalid("minOrder".into(), "must not be negative");
    }
    match (&t.discount, t.min_order, &t.min_order_currency) {
        (Discount::Percent { .. }, Some(_), None) => {
            return invalid(
                "minOrderCurrency".into(),
                "is required with minOrder on a percent coupon: a minimum is an amount in one currency",
            )
        }
        (Discount::Fixed { currency, .. }, _, Some(c)) if c != currency => {
            return invalid("minOrderCurrency".into(), "must be the currency of the amount off")
        }
        (_, _, Some(c)) => {
            text::check("minOrderCurrency", c, Lines::Single)?;
            if !currency::is_active(c) {
                return invalid("minOrderCurrency".into(), "must be an active ISO 4217 currency code");
            }
        }
        _ => {}
    }
    if t.usage_limit == Some(0) || t.per_user_limit == Some(0) {
        return invalid("usageLimit".into(), "limits must be at least 1 when set");
    }
    Ok(())
}

impl Aggregate for CouponState {
    const KIND: &'static str = "coupon";
    type Command = CouponCommand;
    type Event = CouponEvent;
    type Error = CouponError;

    fn decide(&self, code: &str, command: &CouponCommand, now: Timestamp) -> Result<Vec<CouponEvent>, CouponError> {
        match command {
            CouponCommand::Create(terms) => {
                if self.coupon.is_some() {
                    return Err(CouponError::AlreadyExists);
                }
                check_terms(terms)?;
                let coupon = Coupon {
                    code: code.to_string(),
                    discount: terms.discount.clone(),
                    min_order: terms.min_order,
                    // A fixed coupon's minimum is in the currency of its amount.
                    min_order_currency: terms.min_order.and_then(|_| match &terms.discount {
                        Discount::Fixed { currency, .. } => Some(currency.clone()),
                        Discount::Percent { .. } => terms.min_order_currency.clone(),
                    }),
                    expires_at: terms.expires_at,
                    usage_limit: terms.usage_limit,
                    per_user_limit: terms.per_user_limit,
                    active: true,
                    redemptions: BTreeMap::new(),
                    created_at: now,
                    updated_at: now,
                };
                Ok(vec![CouponEvent::Created { coupon }])
            }
            CouponCommand::Update { active, usage_limit, expires_at } => {
                let c = self.coupon.as_ref().ok_or(CouponError::NotFound)?;
                let usage_limit = usage_limit.unwrap_or(c.usage_limit);
                if usage_limit == Some(0) {
                    return Err(CouponError::Invalid {
                        field: "usageLimit".into(),
                        message: "must be at least 1 when set".into(),
                    });
                }
                Ok(vec![CouponEvent::Updated {
                    active: active.unwrap_or(c.active),
                    usage_limit,
                    expires_at: expires_at.unwrap_or(c.expires_at),
                    at: now,
                }])
            }
            CouponCommand::Redeem { order_id, user_id, subtotal, currency } => {
                let c = self.coupon.as_ref().ok_or(CouponError::NotFound)?;
                if c.redemptions.contains_key(order_id) {
                    return Ok(vec![]);
                }
                c.discount_for(order_id, user_id, *subtotal, currency, now)?;
                Ok(vec![CouponEvent::Redeemed { order_id: order_id.clone(), user_id: user_id.clone(), at: now }])
            }
            CouponCommand::Return { order_id } => {
                let c = self.coupon.as_ref().ok_or(CouponError::NotFound)?;
                Ok(if c.redemptions.contains_key(order_id) {
                    vec![CouponEvent::Returned { order_id: order_id.clone(), at: now }]
                } else {
                    vec![]
                })
            }
        }
    }

    fn apply(&mut self, event: &CouponEvent) {
        if let CouponEvent::Created { coupon } = event {
            self.coupon = Some(coupon.clone());
            return;
        }
        let Some(c) = &mut self.coupon else { return };
        match event {
            CouponEvent::Created { .. } => {}
            CouponEvent::Updated { active, usage_limit, expires_at, at } => {
                c.active = *active;
                c.usage_limit = *usage_limit;
                c.expires_at = *expires_at;
                c.updated_at = *at;
            }
            CouponEvent::Redeemed { order_id, user_id, at } => {
                c.redemptions.insert(order_id.clone(), user_id.clone());
                c.updated_at = *at;
            }
            CouponEvent::Returned { order_id, at } => {
                c.redemptions.remove(order_id);
                c.updated_at = *at;
            }
        }
    }

    fn event_type(event: &CouponEvent) -> &'static str {
        match event {
            CouponEvent::Created { .. } => "coupon.created",
            CouponEvent::Updated { .. } => "coupon.updated",
            CouponEvent::Redeemed { .. } => "coupon.redeemed",
            CouponEvent::Returned { .. } => "coupon.returned",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn coupon(discount: Discount, usage_limit: Option<u32>, per_user_limit: Option<u32>) -> CouponState {
        let mut s = CouponState::default();
        // A percent coupon's minimum is in dollars; a fixed coupon's in the currency of its amount.
        let min_order_currency = matches!(discount, Discount::Percent { .. }).then(|| "USD".to_string());
        let terms = CouponTerms {
            discount,
            min_order: Some(1000),
            min_order_currency,
            expires_at: None,
            usage_limit,
            per_user_limit,
        };
        for e in s.decide("SAVE10", &CouponCommand::Create(terms), chrono::Utc::now()).unwrap() {
            s.apply(&e);
        }
        s
    }

    fn redeem(s: &mut CouponState, order: &str, user: &str) -> Result<(), CouponError> {
        let cmd = CouponCommand::Redeem {
            order_id: order.into(),
            user_id: user.into(),
            subtotal: 2000,
            currency: "USD".into(),
        };
        for e in s.decide("SAVE10", &cmd, chrono::Utc::now())? {
            s.apply(&e);
        }
        Ok(())
    }

    #[test]
    fn discounts_are_computed_by_the_server() {
        let now = chrono::Utc::now();
        let pct = coupon(Discount::Percent { percent: 15 }, None, None).coupon.unwrap();
        assert_eq!(pct.discount_for("o", "u", 2999, "USD", now), Ok(449));
        assert_eq!(pct.discount_for("o", "u", 999, "USD", now), Err(CouponError::MinimumNotMet { minimum: 1000 }));
        let fixed = coupon(Discount::Fixed { amount: 5000, currency: "USD".into() }, None, None).coupon.unwrap();
        assert_eq!(fixed.discount_for("o", "u", 1200, "USD", now), Ok(1200));
        assert_eq!(fixed.discount_for("o", "u", 1200, "EUR", now), Err(CouponError::CurrencyMismatch("USD".into())));
    }

    /// Security review L5: a percent coupon's minimum was compared in raw minor units whatever the order's
    /// currency, so 10,000 (meant as $100) let a ¥10,000 order qualify.
    #[test]
    fn a_minimum_is_an_amount_in_one_currency() {
        let now = chrono::Utc::now();
        let pct = coupon(Discount::Percent { percent: 20 }, None, None).coupon.unwrap();
        assert_eq!(pct.min_order_currency.as_deref(), Some("USD"));
        assert_eq!(pct.discount_for("o", "u", 10_000, "JPY", now), Err(CouponError::CurrencyMismatch("USD".into())));
        assert_eq!(pct.discount_for("o", "u", 10_000, "USD", now), Ok(2_000));
        let fixed = coupon(Discount::Fixed { amount: 500, currency: "EUR".into() }, None, None).coupon.unwrap();
        assert_eq!(fixed.min_order_currency.as_deref(), Some("EUR"), "a fixed coupon's minimum is in its currency");
        let create = |discount, min_order_currency: Option<&str>| {
            let terms = CouponTerms {
                discount,
                min_order: Some(1000),
                min_order_currency: min_order_currency.map(str::to_string),
                expires_at: None,
                usage_limit: None,
                per_user_limit: None,
            };
            CouponState::default().decide("C", &CouponCommand::Create(terms), now)
        };
        let field_of = |r: Result<Vec<CouponEvent>, CouponError>| match r {
            Err(CouponError::Invalid { field, .. }) => field.to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(field_of(create(Discount::Percent { percent: 5 }, None)), "minOrderCurrency");
        assert_eq!(field_of(create(Discount::Percent { percent: 5 }, Some("ZZZ"))), "minOrderCurrency");
        assert_eq!(
            field_of(create(Discount::Fixed { amount: 5, currency: "EUR".into() }, Some("USD"))),
            "minOrderCurrency"
        );
        // Coupons stored before the currency existed keep comparing as they did.
        let old = Coupon { min_order_currency: None, ..pct };
        assert_eq!(old.discount_for("o", "u", 10_000, "JPY", now), Ok(2_000));
    }

    #[test]
    fn fixed_discounts_need_an_active_currency() {
        let create = |discount| {
            let terms = CouponTerms {
                discount,
                min_order: None,
                min_order_currency: None,
                expires_at: None,
                usage_limit: None,
                per_user_limit: None,
            };
            CouponState::default().decide("C", &CouponCommand::Create(terms), chrono::Utc::now())
        };
        assert!(create(Discount::Fixed { amount: 500, currency: "JPY".into() }).is_ok());
        for bad in ["ZZZ", "usd", "XAU"] {
            assert!(
                matches!(
                    create(Discount::Fixed { amount: 500, currency: bad.into() }),
                    Err(CouponError::Invalid { field, .. }) if field == "currency"
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn codes_refuse_control_and_bidi_characters() {
        assert_eq!(normalize_code(" save10 "), Ok("SAVE10".into()));
        assert_eq!(
            normalize_code("SAVE\u{202E}01"),
            Err(CouponError::InvalidText(InvalidText { field: "code".into(), ch: '\u{202E}' }))
        );
        assert!(matches!(normalize_code("SAVE 10"), Err(CouponError::Invalid { .. })));
    }

    #[test]
    fn limits_count_each_order_once_and_returns_free_a_use() {
        let mut s = coupon(Discount::Percent { percent: 10 }, Some(2), Some(1));
        redeem(&mut s, "o1", "alice").unwrap();
        redeem(&mut s, "o1", "alice").unwrap();
        assert_eq!(redeem(&mut s, "o2", "alice"), Err(CouponError::PerUserLimitReached));
        redeem(&mut s, "o3", "bob").unwrap();
        assert_eq!(redeem(&mut s, "o4", "carol"), Err(CouponError::UsageLimitReached));
        for e in s.decide("SAVE10", &CouponCommand::Return { order_id: "o3".into() }, chrono::Utc::now()).unwrap() {
            s.apply(&e);
        }
        redeem(&mut s, "o4", "carol").unwrap();
        assert_eq!(s.coupon.unwrap().redemptions.len(), 2);
    }

    proptest! {
        /// Whatever the interleaving of redemptions and returns, uses never exceed the limit.
        #[test]
        fn usage_never_exceeds_the_limit(limit in 1u32..5, ops in proptest::collection::vec((any::<bool>(), 0u8..8), 0..60)) {
            let mut s = coupon(Discount::Percent { percent: 10 }, Some(limit), None);
            for (redeem_it, order) in ops {
                let order = format!("o{order}");
                if redeem_it {
                    let _ = redeem(&mut s, &order, &format!("u{order}"));
                } else {
                    for e in s.decide("SAVE10", &CouponCommand::Return { order_id: order }, chrono::Utc::now()).unwrap() {
                        s.apply(&e);
                    }
                }
                prop_assert!(s.coupon.as_ref().unwrap().redemptions.len() as u32 <= limit);
            }
        }
    }
}
