//! Property: the order saga's stock steps apply exactly once per order however they are retried, reordered or
//! delivered late, and a product remembers no more orders than can still send it a step.
//!
//! Real order state machines drive their saga against one real product state. Any step's outcome may be lost (the
//! product applied it, the order retries it later), any command sent earlier may arrive again at any later time (a
//! stale task of a crashed actor), the clock moves, reservations expire, customers cancel and admins ship.
//!
//! At any point everything so far may turn out to have been recorded by the code before orders closed their
//! outcomes: the product's state loses its schedule and counters, and orders that had finished never run again. The
//! product migrates that state and asks about the orders of its old sales, and the same guarantees hold.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::order::{NewOrder, Order, OrderCommand, OrderEffect, OrderLine, OrderState, OrderStatus};
use super::product::MAX_RESERVATION_TTL_SECS;
use super::product::{ProductCommand, ProductDetails, ProductEffect, ProductState, Settlement};
use super::{Aggregate, Timestamp};

const PRODUCT: &str = "p1";
const RESERVATION_TTL_SECS: i64 = 900;

struct Shop {
    product: ProductState,
    /// Each order and whether its payment goes through.
    orders: Vec<(OrderState, bool)>,
    /// Every command ever sent to the product, for late re-delivery.
    sent: Vec<ProductCommand>,
    now: Timestamp,
    /// Time of the product's latest event: what it has forgotten by depends on it.
    last_event_at: Timestamp,
    /// Orders that had finished when the history turned out to be old: nothing restarts them.
    dormant: BTreeSet<usize>,
    legacy: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Place {
        quantity: u32,
        pays: bool,
    },
    /// Runs the order's next saga step; its outcome reaches the order only if `recorded`.
    Step {
        order: usize,
        recorded: bool,
    },
    /// Delivers again a command sent earlier; its answer goes nowhere.
    Redeliver {
        index: usize,
    },
    Advance {
        secs: i64,
    },
    Cancel {
        order: usize,
    },
    Ship {
        order: usize,
    },
    /// Everything so far was recorded before orders closed their outcomes.
    Legacy,
    /// The product's effect: it asks what became of the orders of its old sales.
    CheckOrders,
}

/// Order indexes are taken modulo the number of orders placed so far.
fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (1u32..4, any::<bool>()).prop_map(|(quantity, pays)| Op::Place { quantity, pays }),
        6 => (any::<usize>(), prop::bool::weighted(0.7)).prop_map(|(order, recorded)| Op::Step { order, recorded }),
        1 => any::<usize>().prop_map(|index| Op::Redeliver { index }),
        1 => (0i64..400).prop_map(|secs| Op::Advance { secs }),
        1 => any::<usize>().prop_map(|order| Op::Cancel { order }),
        1 => any::<usize>().prop_map(|order| Op::Ship { order }),
        1 => Just(Op::Legacy),
        1 => Just(Op::CheckOrders),
    ]
}

impl Shop {
    fn new(stock: i64) -> Self {
        let now = chrono::Utc::now();
        let mut shop = Self {
            product: ProductState::default(),
            orders: vec![],
            sent: vec![],
            now,
            last_event_at: now,
            dormant: BTreeSet::new(),
            legacy: false,
        };
        let details = ProductDetails {
            title: Some("Mug".into()),
            description: Some(String::new()),
            price: Some(100),
            currency: Some("USD".into()),
            category: Some("kitchen".into()),
            image_url: Some(None),
        };
        shop.deliver(&ProductCommand::Create { details, initial_stock: stock }).unwrap();
        shop
    }

    fn deliver(&mut self, command: &ProductCommand) -> Result<(), super::product::ProductError> {
        let events = self.product.decide(PRODUCT, command, self.now)?;
        if !events.is_empty() {
            self.last_event_at = self.now;
        }
        for e in &events {
            self.product.apply(e);
        }
        Ok(())
    }

    fn send(&mut self, command: ProductCommand) -> bool {
        self.sent.push(command.clone());
        self.deliver(&command).is_ok()
    }

    fn order(&self, i: usize) -> &Order {
        self.orders[i].0.order.as_ref().expect("placed")
    }

    fn tell(&mut self, i: usize, command: OrderCommand) -> bool {
        let state = &mut self.orders[i].0;
        match state.decide(&format!("o{i}"), &command, self.now) {
            Ok(events) => {
                events.iter().for_each(|e| state.apply(e));
                // A command starts the order's actor, which then runs whatever step it has left.
                self.dormant.remove(&i);
                true
            }
            Err(_) => false,
        }
    }

    fn place(&mut self, quantity: u32, pays: bool) {
        let line =
            OrderLine { product_id: PRODUCT.into(), title: "Mug".into(), unit_price: 100, quantity, line_total: 0 };
        let new = NewOrder {
            user_id: "u".into(),
            lines: vec![line],
            currency: "USD".into(),
            discount: 0,
            coupon_code: None,
            payment_method: "pm_card_visa".into(),
            shipping_address: None,
            reservation_expires_at: self.now + chrono::Duration::seconds(RESERVATION_TTL_SECS),
            request_hash: None,
        };
        self.orders.push((OrderState::default(), pays));
        let i = self.orders.len() - 1;
        assert!(self.tell(i, OrderCommand::Place(Box::new(new))));
    }

    /// Runs order `i`'s next saga step against the product, as `OrderSaga` does. Returns false when it has none.
    fn step(&mut self, i: usize, recorded: bool) -> bool {
        if self.dormant.contains(&i) {
            return false;
        }
        let Some(effect) = self.order(i).next_step() else { return false };
        let (order_id, pays) = (format!("o{i}"), self.orders[i].1);
        let refused = |reason: &str| (PRODUCT.to_string(), reason.to_string());
        let outcome = match effect {
            OrderEffect::Reserve { lines, expires_at } => {
                let quantity = lines.iter().map(|(_, q)| q).sum();
                if self.send(ProductCommand::Reserve { order_id, quantity, expires_at }) {
                    OrderCommand::Reserved { product_ids: vec![PRODUCT.into()] }
                } else {
                    let (product_id, reason) = refused("unavailable");
                    OrderCommand::ReservationRefused { reserved: vec![], product_id, reason }
                }
            }
            OrderEffect::RedeemCoupon { .. } => OrderCommand::CouponRedeemed,
            OrderEffect::Charge { .. } if pays => OrderCommand::PaymentCaptured,
            OrderEffect::Charge { .. } => OrderCommand::PaymentFailed { reason: "card_declined".into() },
            OrderEffect::CommitStock { .. } => {
                if self.send(ProductCommand::CommitReservation { order_id }) {
                    OrderCommand::StockCommitted { product_ids: vec![PRODUCT.into()] }
                } else {
                    let (product_id, reason) = refused("expired");
                    OrderCommand::CommitRefused { committed: vec![], product_id, reason }
                }
            }
            OrderEffect::ClearCart { .. } => OrderCommand::CartCleared,
            OrderEffect::Release { product_ids } => {
                if product_ids.iter().any(|id| id == PRODUCT) {
                    self.send(ProductCommand::ReleaseReservation { order_id, reason: "released".into() });
                }
                OrderCommand::Released
            }
            OrderEffect::Restock { product_ids } => {
                if product_ids.iter().any(|id| id == PRODUCT) {
                    self.send(ProductCommand::Restock { order_id });
                }
                OrderCommand::Restocked
            }
            OrderEffect::CloseStock { product_ids, expires_at } => {
                if product_ids.iter().any(|id| id == PRODUCT) {
                    self.send(ProductCommand::CloseOrder { order_id, expires_at });
                }
                OrderCommand::StockClosed
            }
            OrderEffect::ReturnCoupon { .. } => OrderCommand::CouponReturned,
            OrderEffect::Refund { .. } => OrderCommand::RefundSettled { refunded: pays },
        };
        if recorded {
            assert!(self.tell(i, outcome), "a step's outcome is always accepted");
        }
        true
    }

    /// Moves the clock and runs what the product finds due, as its actor's tick does.
    fn advance(&mut self, secs: i64) {
        self.now += chrono::Duration::seconds(secs);
        while let Some(command) = self.product.due(self.now) {
            self.deliver(&command).unwrap();
        }
    }

    /// Runs the product's effect against the orders, as `ProductEffects` does with their read model. Returns false
    /// when it has none.
    fn check_orders(&mut self) -> bool {
        let Some(ProductEffect::CheckOrders { order_ids }) = self.product.next_effect() else { return false };
        let finished = order_ids
            .iter()
            .map(|id| (id, self.order(id[1..].parse().unwrap())))
            .filter(|(_, o)| matches!(o.status, OrderStatus::Shipped | OrderStatus::Delivered))
            .map(|(id, o)| (id.clone(), o.reservation_expires_at))
            .collect();
        self.deliver(&ProductCommand::OrdersChecked { order_ids, finished }).unwrap();
        true
    }

    /// Rewrites the history so far as the code before orders closed their outcomes left it: no order closed, so
    /// every closed outcome is the sale or restock it was; the product's state has no schedule, no forgotten bound,
    /// no sold counter and no format; and the orders that had finished are never restarted. Only possible while the
    /// product has forgotten nothing, as that code never did.
    fn go_legacy(&mut self) {
        if self.legacy || self.product.forgotten_until.is_some() {
            return;
        }
        let mut state = serde_json::to_value(&self.product).unwrap();
        for (i, (order, _)) in self.orders.iter_mut().enumerate() {
            let Some(o) = order.order.as_mut() else { continue };
            o.progress.stock_closed = false;
            let Some(outcome) = state["settled"].get_mut(format!("o{i}")) else { continue };
            if outcome["outcome"] == "closed" {
                let shipped = matches!(o.status, OrderStatus::Shipped | OrderStatus::Delivered);
                let kind = if shipped { "committed" } else { "restocked" };
                *outcome = serde_json::json!({"outcome": kind, "quantity": o.lines[0].quantity});
            }
        }
        for field in ["forgetting", "forgottenUntil", "unitsSold", "format", "unchecked"] {
            state.as_object_mut().unwrap().remove(field);
        }
        self.product = serde_json::from_value(state).unwrap();
        for i in 0..self.orders.len() {
            let o = self.order(i);
            let done = matches!(o.status, OrderStatus::Shipped | OrderStatus::Delivered) || o.progress.refund_settled;
            if done && matches!(o.next_step(), Some(OrderEffect::CloseStock { .. })) {
                self.dormant.insert(i);
            }
        }
        self.legacy = true;
    }

    /// Units the orders hold as sold: paid, shipped or delivered.
    fn sold_to_orders(&self) -> i64 {
        (0..self.orders.len())
            .map(|i| self.order(i))
            .filter(|o| matches!(o.status, OrderStatus::Paid | OrderStatus::Shipped | OrderStatus::Delivered))
            .map(|o| i64::from(o.lines[0].quantity))
            .sum()
    }

    fn check_stock(&self, initial: i64) -> Result<(), TestCaseError> {
        let p = self.product.product.as_ref().unwrap();
        prop_assert!(p.stock_on_hand >= 0 && p.stock_reserved >= 0 && p.available() >= 0, "{p:?}");
        prop_assert_eq!(p.stock_reserved, self.product.reservations.values().map(|r| r.quantity).sum::<i64>());
        prop_assert_eq!(p.stock_on_hand + self.product.sold(), initial);
        Ok(())
    }

    /// The product remembers an order only while its reservation expiry has not passed, or while the order may
    /// still restock what it bought; an outcome migrated from old history, until the expiry it was given, and all
    /// of old history until it is migrated.
    fn check_bounded(&self) -> Result<(), TestCaseError> {
        if matches!(self.product.due(self.now), Some(ProductCommand::MigrateOutcomes)) {
            return Ok(());
        }
        for (order_id, settlement) in &self.product.settled {
            let i: usize = order_id[1..].parse().unwrap();
            let o = self.order(i);
            let open = matches!(settlement, Settlement::Committed { .. } | Settlement::Restocked { .. })
                && !o.progress.stock_closed;
            let scheduled = self.product.forgetting.iter().any(|(at, id)| id == order_id && *at > self.last_event_at);
            prop_assert!(
                o.reservation_expires_at > self.last_event_at || open || scheduled,
                "{order_id}: {settlement:?}, {o:?}"
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn saga_steps_apply_once_and_settled_orders_are_forgotten(
        initial in 0i64..12,
        ops in proptest::collection::vec(op(), 1..160),
    ) {
        let mut shop = Shop::new(initial);
        for op in ops {
            let placed = shop.orders.len();
            match op {
                Op::Place { quantity, pays } if placed < 8 => shop.place(quantity, pays),
                Op::Place { .. } => {}
                _ if placed == 0 => {}
                Op::Step { order, recorded } => {
                    shop.step(order % placed, recorded);
                }
                Op::Redeliver { index } if !shop.sent.is_empty() => {
                    let command = shop.sent[index % shop.sent.len()].clone();
                    let _ = shop.deliver(&command);
                }
                Op::Redeliver { .. } => {}
                Op::Advance { secs } => shop.advance(secs),
                Op::Cancel { order } => {
                    shop.tell(order % placed, OrderCommand::Cancel { reason: "changed my mind".into() });
                }
                Op::Ship { order } => {
                    shop.tell(order % placed, OrderCommand::Ship);
                }
                Op::Legacy => shop.go_legacy(),
                Op::CheckOrders => {
                    shop.check_orders();
                }
            }
            shop.check_stock(initial)?;
            shop.check_bounded()?;
        }

        // Every saga runs to its end, with every outcome recorded; a third of the paid orders stay unshipped. Orders
        // that had finished in old history never run again; the product asks about them instead.
        for i in 0..shop.orders.len() {
            for _ in 0..40 {
                if !shop.step(i, true) {
                    let shipped = i % 3 != 0 && shop.tell(i, OrderCommand::Ship);
                    if !shipped {
                        break;
                    }
                }
            }
            prop_assert!(shop.order(i).next_step().is_none() || shop.dormant.contains(&i), "{:?}", shop.order(i));
        }
        shop.advance(0);
        while shop.check_orders() {}
        shop.check_stock(initial)?;
        prop_assert_eq!(shop.product.sold(), shop.sold_to_orders(), "each order's stock moved once");

        // Past every expiry, the product holds only the orders that may still be cancelled and restocked. Outcomes
        // of old history whose expiry was not recorded take the longest reservation more.
        let longest = if shop.legacy { MAX_RESERVATION_TTL_SECS } else { RESERVATION_TTL_SECS };
        shop.advance(longest + 1);
        shop.deliver(&ProductCommand::AdjustStock { delta: 1, reason: "count".into() }).unwrap();
        let open: Vec<String> = (0..shop.orders.len())
            .filter(|i| shop.order(*i).status == OrderStatus::Paid)
            .map(|i| format!("o{i}"))
            .collect();
        prop_assert_eq!(shop.product.settled.keys().cloned().collect::<Vec<_>>(), open);
        prop_assert!(shop.product.reservations.is_empty() && shop.product.forgetting.is_empty());

        // Whatever arrives late now, nothing moves.
        let before = shop.product.clone();
        for command in shop.sent.clone().iter().chain(shop.sent.clone().iter().rev()) {
            let _ = shop.deliver(command);
        }
        let (p, q) = (before.product.as_ref().unwrap(), shop.product.product.as_ref().unwrap());
        prop_assert_eq!((p.stock_on_hand, p.stock_reserved), (q.stock_on_hand, q.stock_reserved));
        prop_assert_eq!(before.sold(), shop.product.sold());
        prop_assert_eq!(&before.settled, &shop.product.settled);
        shop.check_stock(initial + 1)?;
    }
}
