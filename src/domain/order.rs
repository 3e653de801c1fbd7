//! Orders and the checkout saga as a pure state machine.
//!
//! Lifecycle: `pending -> stock_reserved -> paid -> shipped -> delivered`, plus `rejected` (stock or coupon not
//! available), `payment_failed`, `cancelled` and `refunded` (a cancelled order whose payment was given back).
//! [`Order::next_step`] says which saga step the persisted state calls for next; every step's outcome is a command
//! that is persisted before the next step starts. Failed and cancelled orders compensate: release reservations,
//! restock sold units, return the coupon use, refund the payment. An order that shipped, or was paid, cancelled and
//! restocked, finally tells its products it will send them no further step, so they need not remember it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::user::Address;
use super::{Aggregate, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    StockReserved,
    Paid,
    Shipped,
    Delivered,
    Rejected,
    PaymentFailed,
    Cancelled,
    Refunded,
}

impl OrderStatus {
    /// Placed and not yet paid, failed or cancelled: the saga still runs and holds stock.
    pub fn in_progress(self) -> bool {
        matches!(self, Self::Pending | Self::StockReserved)
    }

    pub const ALL: [OrderStatus; 9] = [
        Self::Pending,
        Self::StockReserved,
        Self::Paid,
        Self::Shipped,
        Self::Delivered,
        Self::Rejected,
        Self::PaymentFailed,
        Self::Cancelled,
        Self::Refunded,
    ];

    /// The only legal transitions.
    pub fn can_become(self, to: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, to),
            (Pending, StockReserved | Rejected | Cancelled)
                | (StockReserved, Paid | PaymentFailed | Rejected | Cancelled)
                | (Paid, Shipped | Cancelled)
                | (Shipped, Delivered)
                | (Cancelled, Refunded)
        )
    }

    /// The order went wrong or was called off: compensation applies.
    pub fn is_failed(self) -> bool {
        matches!(self, Self::Rejected | Self::PaymentFailed | Self::Cancelled | Self::Refunded)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::StockReserved => "stock_reserved",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Rejected => "rejected",
            Self::PaymentFailed => "payment_failed",
            Self::Cancelled => "cancelled",
            Self::Refunded => "refunded",
        }
    }
}

impl std::str::FromStr for OrderStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown order status `{s}`"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    pub product_id: String,
    pub title: String,
    pub unit_price: i64,
    pub quantity: u32,
    pub line_total: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusEntry {
    pub status: OrderStatus,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub reason: Option<String>,
}

/// Which saga steps have completed; persisted so a recovered order resumes where it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaProgress {
    pub reserved: BTreeSet<String>,
    pub coupon_redeemed: bool,
    pub charged: bool,
    pub committed: BTreeSet<String>,
    pub cart_cleared: bool,
    pub released: bool,
    pub restocked: bool,
    pub coupon_returned: bool,
    pub refund_settled: bool,
    /// The products were told this order sends them no further step, so they can forget it.
    #[serde(default)]
    pub stock_closed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub lines: Vec<OrderLine>,
    pub currency: String,
    pub subtotal: i64,
    pub discount: i64,
    pub total: i64,
    pub coupon_code: Option<String>,
    pub payment_method: String,
    pub shipping_address: Option<Address>,
    pub status: OrderStatus,
    pub history: Vec<StatusEntry>,
    /// Stock is held for this order until then; past it the products release it by themselves.
    pub reservation_expires_at: Timestamp,
    pub progress: SagaProgress,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Fingerprint of the checkout request that placed the order, so that the same idempotency key sent with a
    /// different request is recognised (absent on orders placed before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
}

impl Order {
    /// The payment of an order has an id derived from the order's, so it is the same on every retry.
    pub fn payment_id(&self) -> String {
        format!("pay-{}", self.id)
    }

    fn product_ids(&self) -> impl Iterator<Item = &String> {
        self.lines.iter().map(|l| &l.product_id)
    }

    fn reached(&self, status: OrderStatus) -> bool {
        self.history.iter().any(|h| h.status == status)
    }

    fn close_stock(&self) -> OrderEffect {
        OrderEffect::CloseStock {
            product_ids: self.product_ids().cloned().collect(),
            expires_at: self.reservation_expires_at,
        }
    }

    /// The saga step the order needs next, or `None` when it is waiting (for shipping) or finished.
    pub fn next_step(&self) -> Option<OrderEffect> {
        let p = &self.progress;
        if !self.status.is_failed() {
            return match self.status {
                OrderStatus::Pending => Some(OrderEffect::Reserve {
                    lines: self
                        .lines
                        .iter()
                        .filter(|l| !p.reserved.contains(&l.product_id))
                        .map(|l| (l.product_id.clone(), i64::from(l.quantity)))
                        .collect(),
                    expires_at: self.reservation_expires_at,
                }),
                OrderStatus::StockReserved => match &self.coupon_code {
                    Some(code) if !p.coupon_redeemed => Some(OrderEffect::RedeemCoupon {
                        code: code.clone(),
                        user_id: self.user_id.clone(),
                        subtotal: self.subtotal,
                        currency: self.currency.clone(),
                    }),
                    _ => Some(OrderEffect::Charge {
                        payment_id: self.payment_id(),
                        user_id: self.user_id.clone(),
                        amount: self.total,
                        currency: self.currency.clone(),
                        method: self.payment_method.clone(),
                    }),
                },
                OrderStatus::Paid => {
                    let pending: Vec<String> =
                        self.product_ids().filter(|id| !p.committed.contains(*id)).cloned().collect();
                    if !pending.is_empty() {
                        Some(OrderEffect::CommitStock { product_ids: pending })
                    } else if !p.cart_cleared {
                        Some(OrderEffect::ClearCart {
                            user_id: self.user_id.clone(),
                            product_ids: self.product_ids().cloned().collect(),
                            placed_at: self.created_at,
                        })
                    } else {
                        None
                    }
                }
                // Shipped stock can no longer be put back: no product will hear from this order again.
                OrderStatus::Shipped | OrderStatus::Delivered if !p.stock_closed => Some(self.close_stock()),
                _ => None,
            };
        }
        // Compensation, one step at a time. Release covers every line (a reservation may have been made by a step
        // whose outcome was never recorded); releasing what is not reserved is a no-op.
        if !p.released {
            let product_ids = self.product_ids().filter(|id| !p.committed.contains(*id)).cloned().collect();
            return Some(OrderEffect::Release { product_ids });
        }
        // Restock covers every line of an order that was paid: a commit may have been made by a step whose outcome
        // was never recorded (release found no reservation for it). Restocking what was not sold is a no-op.
        if self.reached(OrderStatus::Paid) {
            if !p.restocked {
                return Some(OrderEffect::Restock { product_ids: self.product_ids().cloned().collect() });
            }
            if !p.stock_closed {
                return Some(self.close_stock());
            }
        }
        if let Some(code) = &self.coupon_code {
            if self.reached(OrderStatus::StockReserved) && !p.coupon_returned {
                return Some(OrderEffect::ReturnCoupon { code: code.clone() });
            }
        }
        if self.reached(OrderStatus::StockReserved) && !p.refund_settled {
            return Some(OrderEffect::Refund { payment_id: self.payment_id() });
        }
        None
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub order: Option<Order>,
}

/// What a checkout snapshots into a new order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewOrder {
    pub user_id: String,
    pub lines: Vec<OrderLine>,
    pub currency: String,
    pub discount: i64,
    pub coupon_code: Option<String>,
    pub payment_method: String,
    pub shipping_address: Option<Address>,
    pub reservation_expires_at: Timestamp,
    pub request_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OrderCommand {
    /// Creates the order; a repeat (same checkout) is a no-op.
    Place(Box<NewOrder>),
    Cancel {
        reason: String,
    },
    Ship,
    Deliver,
    /// Saga step outcomes.
    Reserved {
        product_ids: Vec<String>,
    },
    ReservationRefused {
        reserved: Vec<String>,
        product_id: String,
        reason: String,
    },
    CouponRedeemed,
    CouponRefused {
        reason: String,
    },
    PaymentCaptured,
    PaymentFailed {
        reason: String,
    },
    StockCommitted {
        product_ids: Vec<String>,
    },
    CommitRefused {
        committed: Vec<String>,
        product_id: String,
        reason: String,
    },
    CartCleared,
    Released,
    Restocked,
    CouponReturned,
    RefundSettled {
        refunded: bool,
    },
    StockClosed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum OrderEvent {
    Placed { order: Box<Order> },
    StatusChanged { from: OrderStatus, to: OrderStatus, reason: Option<String>, at: Timestamp },
    LinesReserved { product_ids: Vec<String>, at: Timestamp },
    CouponRedeemed { at: Timestamp },
    PaymentCaptured { payment_id: String, at: Timestamp },
    LinesCommitted { product_ids: Vec<String>, at: Timestamp },
    CartCleared { at: Timestamp },
    ReservationsReleased { at: Timestamp },
    Restocked { at: Timestamp },
    CouponReturned { at: Timestamp },
    RefundSettled { refunded: bool, at: Timestamp },
    StockClosed { at: Timestamp },
}

/// A saga step: an idempotent call to another entity, keyed by the order id. `ClearCart` takes the lines added to
/// the cart before the order was placed; `CloseStock` tells the products the order will send them no further step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEffect {
    Reserve { lines: Vec<(String, i64)>, expires_at: Timestamp },
    RedeemCoupon { code: String, user_id: String, subtotal: i64, currency: String },
    Charge { payment_id: String, user_id: String, amount: i64, currency: String, method: String },
    CommitStock { product_ids: Vec<String> },
    ClearCart { user_id: String, product_ids: Vec<String>, placed_at: Timestamp },
    Release { product_ids: Vec<String> },
    Restock { product_ids: Vec<String> },
    ReturnCoupon { code: String },
    Refund { payment_id: String },
    CloseStock { product_ids: Vec<String>, expires_at: Timestamp },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum OrderError {
    #[error("order not found")]
    NotFound,
    #[error("an order needs at least one line")]
    Empty,
    #[error("an order in status {from} cannot become {to}")]
    InvalidTransition { from: crate::domain::Name, to: crate::domain::Name },
    #[error(
        "product {product_id} is now priced in {product_currency} but the cart is in {order_currency}; \
         remove it from the cart to check out"
    )]
    CurrencyMismatch { product_id: String, product_currency: String, order_currency: String },
}

/// One order has one currency: the cart's. Every line's product must still be priced in it; a line whose product
/// changed currency is refused, never charged as if its price were in the cart's currency. A cart with no recorded
/// currency takes its first line's.
pub fn order_currency<'a>(
    cart_currency: Option<&str>,
    lines: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, OrderError> {
    let mut currency = cart_currency.map(str::to_string);
    for (product_id, product_currency) in lines {
        let order_currency = currency.get_or_insert_with(|| product_currency.to_string());
        if order_currency != product_currency {
            return Err(OrderError::CurrencyMismatch {
                product_id: product_id.to_string(),
                product_currency: product_currency.to_string(),
                order_currency: order_currency.clone(),
            });
        }
    }
    currency.ok_or(OrderError::Empty)
}

impl OrderState {
    fn get(&self) -> Result<&Order, OrderError> {
        self.order.as_ref().ok_or(OrderError::NotFound)
    }
}

fn transition(
    order: &Order,
    to: OrderStatus,
    reason: Option<String>,
    now: Timestamp,
) -> Result<OrderEvent, OrderError> {
    if order.status.can_become(to) {
        Ok(OrderEvent::StatusChanged { from: order.status, to, reason, at: now })
    } else {
        Err(OrderError::InvalidTransition { from: order.status.as_str().into(), to: to.as_str().into() })
    }
}

/// A status change only if the order is still where the step expected it (late outcomes change nothing).
fn transition_from(
    order: &Order,
    from: OrderStatus,
    to: OrderStatus,
    reason: Option<String>,
    now: Timestamp,
) -> Option<OrderEvent> {
    (order.status == from).then_some(OrderEvent::StatusChanged { from, to, reason, at: now })
}

impl Aggregate for OrderState {
    const KIND: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn decide(&self, id: &str, command: &OrderCommand, now: Timestamp) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus as S;
        if let OrderCommand::Place(new) = command {
            if self.order.is_some() {
                return Ok(vec![]);
            }
            if new.lines.is_empty() {
                return Err(OrderError::Empty);
            }
            let subtotal: i64 = new.lines.iter().map(|l| l.line_total).sum();
            let discount = new.discount.clamp(0, subtotal);
            let order = Order {
                id: id.to_string(),
                user_id: new.user_id.clone(),
                lines: new.lines.clone(),
                currency: new.currency.clone(),
                subtotal,
                discount,
                total: subtotal - discount,
                coupon_code: new.coupon_code.clone(),
                payment_method: new.payment_method.clone(),
                shipping_address: new.shipping_address.clone(),
                status: S::Pending,
                history: vec![StatusEntry { status: S::Pending, at: now, reason: None }],
                reservation_expires_at: new.reservation_expires_at,
                progress: SagaProgress::default(),
                created_at: now,
                updated_at: now,
                request_hash: new.request_hash.clone(),
            };
            return Ok(vec![OrderEvent::Placed { order: Box::new(order) }]);
        }
        let o = self.get()?;
        let p = &o.progress;
        let mut events = Vec::new();
        match command {
            OrderCommand::Place(_) => {}
            OrderCommand::Cancel { reason } => events.push(transition(o, S::Cancelled, Some(reason.clone()), now)?),
            OrderCommand::Ship => {
                if o.lines.iter().any(|l| !p.committed.contains(&l.product_id)) {
                    return Err(OrderError::InvalidTransition {
                        from: o.status.as_str().into(),
                        to: S::Shipped.as_str().into(),
                    });
                }
                events.push(transition(o, S::Shipped, None, now)?);
            }
            OrderCommand::Deliver => events.push(transition(o, S::Delivered, None, now)?),
            OrderCommand::Reserved { product_ids } => {
                events.push(OrderEvent::LinesReserved { product_ids: product_ids.clone(), at: now });
                let all =
                    o.lines.iter().all(|l| p.reserved.contains(&l.product_id) || product_ids.contains(&l.product_id));
                if all {
                    events.extend(transition_from(o, S::Pending, S::StockReserved, None, now));
                }
            }
            OrderCommand::ReservationRefused { reserved, product_id, reason } => {
                events.push(OrderEvent::LinesReserved { product_ids: reserved.clone(), at: now });
                let why = format!("product {product_id}: {reason}");
                events.extend(transition_from(o, S::Pending, S::Rejected, Some(why), now));
            }
            OrderCommand::CouponRedeemed => events.push(OrderEvent::CouponRedeemed { at: now }),
            OrderCommand::CouponRefused { reason } => {
                events.extend(transition_from(
                    o,
                    S::StockReserved,
                    S::Rejected,
                    Some(format!("coupon: {reason}")),
                    now,
                ));
            }
            OrderCommand::PaymentCaptured => {
                events.push(OrderEvent::PaymentCaptured { payment_id: o.payment_id(), at: now });
                events.extend(transition_from(o, S::StockReserved, S::Paid, None, now));
            }
            OrderCommand::PaymentFailed { reason } => {
                events.extend(transition_from(o, S::StockReserved, S::PaymentFailed, Some(reason.clone()), now));
            }
            OrderCommand::StockCommitted { product_ids } => {
                events.push(OrderEvent::LinesCommitted { product_ids: product_ids.clone(), at: now });
            }
            OrderCommand::CommitRefused { committed, product_id, reason } => {
                events.push(OrderEvent::LinesCommitted { product_ids: committed.clone(), at: now });
                let why = format!("product {product_id}: {reason}");
                events.extend(transition_from(o, S::Paid, S::Cancelled, Some(why), now));
            }
            OrderCommand::CartCleared => events.push(OrderEvent::CartCleared { at: now }),
            OrderCommand::Released => events.push(OrderEvent::ReservationsReleased { at: now }),
            OrderCommand::Restocked => events.push(OrderEvent::Restocked { at: now }),
            OrderCommand::CouponReturned => events.push(OrderEvent::CouponReturned { at: now }),
            OrderCommand::RefundSettled { refunded } => {
                events.push(OrderEvent::RefundSettled { refunded: *refunded, at: now });
                if *refunded {
                    events.extend(transition_from(o, S::Cancelled, S::Refunded, None, now));
                }
            }
            OrderCommand::StockClosed => events.push(OrderEvent::StockClosed { at: now }),
        }
        Ok(events)
    }

    fn apply(&mut self, event: &OrderEvent) {
        if let OrderEvent::Placed { order } = event {
            self.order = Some(order.as_ref().clone());
            return;
        }
        let Some(o) = &mut self.order else { return };
        let p = &mut o.progress;
        let at = match event {
            OrderEvent::Placed { order } => order.created_at,
            OrderEvent::StatusChanged { to, reason, at, .. } => {
                o.status = *to;
                o.history.push(StatusEntry { status: *to, at: *at, reason: reason.clone() });
                *at
            }
            OrderEvent::LinesReserved { product_ids, at } => {
                p.reserved.extend(product_ids.iter().cloned());
                *at
            }
            OrderEvent::CouponRedeemed { at } => {
                p.coupon_redeemed = true;
                *at
            }
            OrderEvent::PaymentCaptured { at, .. } => {
                p.charged = true;
                *at
            }
            OrderEvent::LinesCommitted { product_ids, at } => {
                p.committed.extend(product_ids.iter().cloned());
                *at
            }
            OrderEvent::CartCleared { at } => {
                p.cart_cleared = true;
                *at
            }
            OrderEvent::ReservationsReleased { at } => {
                p.released = true;
                *at
            }
            OrderEvent::Restocked { at } => {
                p.restocked = true;
                *at
            }
            OrderEvent::CouponReturned { at } => {
                p.coupon_returned = true;
                *at
            }
            OrderEvent::RefundSettled { at, .. } => {
                p.refund_settled = true;
                *at
            }
            OrderEvent::StockClosed { at } => {
                p.stock_closed = true;
                *at
            }
        };
        o.updated_at = at;
    }

    fn event_type(event: &OrderEvent) -> &'static str {
        match event {
            OrderEvent::Placed { .. } => "order.placed",
            OrderEvent::StatusChanged { .. } => "order.status_changed",
            OrderEvent::LinesReserved { .. } => "order.lines_reserved",
            OrderEvent::CouponRedeemed { .. } => "order.coupon_redeemed",
            OrderEvent::PaymentCaptured { .. } => "order.payment_captured",
            OrderEvent::LinesCommitted { .. } => "order.lines_committed",
            OrderEvent::CartCleared { .. } => "order.cart_cleared",
            OrderEvent::ReservationsReleased { .. } => "order.reservations_released",
            OrderEvent::Restocked { .. } => "order.restocked",
            OrderEvent::CouponReturned { .. } => "order.coupon_returned",
            OrderEvent::RefundSettled { .. } => "order.refund_settled",
            OrderEvent::StockClosed { .. } => "order.stock_closed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(id: &str, qty: u32, price: i64) -> OrderLine {
        OrderLine {
            product_id: id.into(),
            title: id.into(),
            unit_price: price,
            quantity: qty,
            line_total: price * i64::from(qty),
        }
    }

    fn placed(coupon: bool) -> OrderState {
        let mut s = OrderState::default();
        let now = chrono::Utc::now();
        let new = NewOrder {
            user_id: "u".into(),
            lines: vec![line("a", 2, 500), line("b", 1, 250)],
            currency: "USD".into(),
            discount: if coupon { 125 } else { 0 },
            coupon_code: coupon.then(|| "SAVE".to_string()),
            payment_method: "pm_card_visa".into(),
            shipping_address: None,
            reservation_expires_at: now + chrono::Duration::minutes(15),
            request_hash: None,
        };
        run(&mut s, OrderCommand::Place(Box::new(new.clone()))).unwrap();
        run(&mut s, OrderCommand::Place(Box::new(new))).unwrap();
        s
    }

    fn run(s: &mut OrderState, c: OrderCommand) -> Result<(), OrderError> {
        for e in s.decide("o1", &c, chrono::Utc::now())? {
            s.apply(&e);
        }
        Ok(())
    }

    fn order(s: &OrderState) -> &Order {
        s.order.as_ref().unwrap()
    }

    #[test]
    fn happy_path_steps_in_order() {
        let mut s = placed(true);
        assert_eq!((order(&s).subtotal, order(&s).total), (1250, 1125));
        assert!(matches!(order(&s).next_step(), Some(OrderEffect::Reserve { lines, .. }) if lines.len() == 2));
        run(&mut s, OrderCommand::Reserved { product_ids: vec!["a".into()] }).unwrap();
        assert!(
            matches!(order(&s).next_step(), Some(OrderEffect::Reserve { lines, .. }) if lines == vec![("b".to_string(), 1)])
        );
        run(&mut s, OrderCommand::Reserved { product_ids: vec!["b".into()] }).unwrap();
        assert_eq!(order(&s).status, OrderStatus::StockReserved);
        assert!(matches!(order(&s).next_step(), Some(OrderEffect::RedeemCoupon { .. })));
        run(&mut s, OrderCommand::CouponRedeemed).unwrap();
        assert!(matches!(order(&s).next_step(), Some(OrderEffect::Charge { amount: 1125, .. })));
        run(&mut s, OrderCommand::PaymentCaptured).unwrap();
        assert_eq!(order(&s).status, OrderStatus::Paid);
        run(&mut s, OrderCommand::StockCommitted { product_ids: vec!["a".into(), "b".into()] }).unwrap();
        assert!(matches!(order(&s).next_step(), Some(OrderEffect::ClearCart { .. })));
        run(&mut s, OrderCommand::CartCleared).unwrap();
        assert_eq!(order(&s).next_step(), None);
        run(&mut s, OrderCommand::Ship).unwrap();
        // Shipped: the products may forget the order.
        assert!(
            matches!(order(&s).next_step(), Some(OrderEffect::CloseStock { product_ids, .. }) if product_ids.len() == 2)
        );
        run(&mut s, OrderCommand::StockClosed).unwrap();
        assert_eq!(order(&s).next_step(), None);
        run(&mut s, OrderCommand::Deliver).unwrap();
        let statuses: Vec<_> = order(&s).history.iter().map(|h| h.status.as_str()).collect();
        assert_eq!(statuses, ["pending", "stock_reserved", "paid", "shipped", "delivered"]);
        assert!(run(&mut s, OrderCommand::Cancel { reason: "late".into() }).is_err());
    }

    #[test]
    fn cancelling_a_paid_order_restocks_returns_the_coupon_and_refunds() {
        let mut s = placed(true);
        run(&mut s, OrderCommand::Reserved { product_ids: vec!["a".into(), "b".into()] }).unwrap();
        run(&mut s, OrderCommand::CouponRedeemed).unwrap();
        run(&mut s, OrderCommand::PaymentCaptured).unwrap();
        run(&mut s, OrderCommand::StockCommitted { product_ids: vec!["a".into()] }).unwrap();
        run(&mut s, OrderCommand::Cancel { reason: "changed my mind".into() }).unwrap();
        assert_eq!(order(&s).next_step(), Some(OrderEffect::Release { product_ids: vec!["b".into()] }));
        run(&mut s, OrderCommand::Released).unwrap();
        // Every line: b's commit may have happened without its outcome being recorded.
        let both = vec!["a".to_string(), "b".to_string()];
        assert_eq!(order(&s).next_step(), Some(OrderEffect::Restock { product_ids: both.clone() }));
        run(&mut s, OrderCommand::Restocked).unwrap();
        let expires_at = order(&s).reservation_expires_at;
        assert_eq!(order(&s).next_step(), Some(OrderEffect::CloseStock { product_ids: both, expires_at }));
        run(&mut s, OrderCommand::StockClosed).unwrap();
        assert_eq!(order(&s).next_step(), Some(OrderEffect::ReturnCoupon { code: "SAVE".into() }));
        run(&mut s, OrderCommand::CouponReturned).unwrap();
        assert_eq!(order(&s).next_step(), Some(OrderEffect::Refund { payment_id: "pay-o1".into() }));
        run(&mut s, OrderCommand::RefundSettled { refunded: true }).unwrap();
        assert_eq!(order(&s).status, OrderStatus::Refunded);
        assert_eq!(order(&s).next_step(), None);
    }

    #[test]
    fn out_of_stock_rejects_and_releases_without_refund() {
        let mut s = placed(false);
        run(
            &mut s,
            OrderCommand::ReservationRefused {
                reserved: vec!["a".into()],
                product_id: "b".into(),
                reason: "out of stock".into(),
            },
        )
        .unwrap();
        assert_eq!(order(&s).status, OrderStatus::Rejected);
        assert!(matches!(order(&s).next_step(), Some(OrderEffect::Release { .. })));
        run(&mut s, OrderCommand::Released).unwrap();
        assert_eq!(order(&s).next_step(), None, "nothing was sold or charged: nothing to restock, close or refund");
    }

    #[test]
    fn late_outcomes_after_cancel_are_recorded_and_compensated() {
        let mut s = placed(false);
        run(&mut s, OrderCommand::Reserved { product_ids: vec!["a".into(), "b".into()] }).unwrap();
        run(&mut s, OrderCommand::Cancel { reason: "user".into() }).unwrap();
        // The charge that was in flight when the user cancelled succeeds afterwards.
        run(&mut s, OrderCommand::PaymentCaptured).unwrap();
        assert_eq!(order(&s).status, OrderStatus::Cancelled);
        run(&mut s, OrderCommand::Released).unwrap();
        assert_eq!(order(&s).next_step(), Some(OrderEffect::Refund { payment_id: "pay-o1".into() }));
    }

    #[test]
    fn an_order_never_mixes_currencies() {
        let lines = [("a", "USD"), ("b", "USD")];
        assert_eq!(order_currency(Some("USD"), lines), Ok("USD".into()));
        assert_eq!(order_currency(None, lines), Ok("USD".into()));
        // The reported attack: a USD cart whose product was switched to JPY must not become a USD order.
        let err = order_currency(Some("USD"), [("a", "USD"), ("b", "JPY")]).unwrap_err();
        assert_eq!(
            err,
            OrderError::CurrencyMismatch {
                product_id: "b".into(),
                product_currency: "JPY".into(),
                order_currency: "USD".into()
            }
        );
        assert!(err.to_string().contains("product b is now priced in JPY but the cart is in USD"));
        assert!(order_currency(Some("USD"), [("a", "JPY")]).is_err(), "a single relabelled line too");
        assert!(order_currency(None, [("a", "EUR"), ("b", "USD")]).is_err());
        assert_eq!(order_currency(Some("USD"), []), Ok("USD".into()));
        assert_eq!(order_currency(None, []), Err(OrderError::Empty));
    }

    fn any_command() -> impl Strategy<Value = OrderCommand> {
        let ids = || proptest::collection::vec(prop_oneof![Just("a".to_string()), Just("b".to_string())], 0..3);
        prop_oneof![
            Just(OrderCommand::Cancel { reason: "r".into() }),
            Just(OrderCommand::Ship),
            Just(OrderCommand::Deliver),
            ids().prop_map(|product_ids| OrderCommand::Reserved { product_ids }),
            ids().prop_map(|reserved| OrderCommand::ReservationRefused {
                reserved,
                product_id: "b".into(),
                reason: "r".into()
            }),
            Just(OrderCommand::CouponRedeemed),
            Just(OrderCommand::CouponRefused { reason: "r".into() }),
            Just(OrderCommand::PaymentCaptured),
            Just(OrderCommand::PaymentFailed { reason: "r".into() }),
            ids().prop_map(|product_ids| OrderCommand::StockCommitted { product_ids }),
            Just(OrderCommand::CartCleared),
            Just(OrderCommand::Released),
            Just(OrderCommand::Restocked),
            Just(OrderCommand::CouponReturned),
            any::<bool>().prop_map(|refunded| OrderCommand::RefundSettled { refunded }),
            Just(OrderCommand::StockClosed),
        ]
    }

    proptest! {
        /// Whatever the lines, an accepted currency is the one every line is priced in.
        #[test]
        fn accepted_currency_is_every_lines_currency(
            cart in proptest::option::of(prop_oneof![Just("USD"), Just("EUR")]),
            lines in proptest::collection::vec(prop_oneof![Just("USD"), Just("EUR"), Just("JPY")], 0..6),
        ) {
            let ids: Vec<String> = (0..lines.len()).map(|i| format!("p{i}")).collect();
            let r = order_currency(cart, ids.iter().map(String::as_str).zip(lines.iter().copied()));
            match r {
                Ok(c) => {
                    prop_assert!(lines.iter().all(|l| *l == c));
                    prop_assert!(cart.is_none_or(|cart| cart == c));
                }
                Err(OrderError::CurrencyMismatch { product_currency, order_currency, .. }) => {
                    prop_assert_ne!(product_currency, order_currency)
                }
                Err(e) => prop_assert!(cart.is_none() && lines.is_empty(), "{e}"),
            }
        }

        /// Whatever commands arrive in whatever order, the status history only ever takes legal transitions, and
        /// a refused command changes nothing.
        #[test]
        fn only_legal_transitions(commands in proptest::collection::vec(any_command(), 0..40), coupon in any::<bool>()) {
            let mut s = placed(coupon);
            for c in commands {
                let before = s.clone();
                if run(&mut s, c).is_err() {
                    prop_assert_eq!(&s, &before);
                }
                let h = &order(&s).history;
                for pair in h.windows(2) {
                    prop_assert!(pair[0].status.can_become(pair[1].status), "{:?} -> {:?}", pair[0].status, pair[1].status);
                }
                prop_assert_eq!(h.last().map(|e| e.status), Some(order(&s).status));
            }
        }
    }
}
