//! Shopping carts: one per user, lines of product + quantity. Prices are never stored in the cart; they are read
//! from the catalog when the cart is shown, and snapshotted only at checkout.

use serde::{Deserialize, Serialize};

use super::{Aggregate, Timestamp};

pub const MAX_LINE_QUANTITY: u32 = 999;
pub const MAX_LINES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CartLine {
    pub product_id: String,
    pub quantity: u32,
    /// When the line was put in the cart.
    pub added_at: Timestamp,
    /// Units added to the line after `added_at`, oldest first, counted in `quantity`. A check-out takes only the
    /// units that were in the cart when its order was placed, so units added while the order was being paid stay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additions: Vec<Addition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Addition {
    pub quantity: u32,
    pub at: Timestamp,
}

impl CartLine {
    /// Changes the quantity as of `at`: an increase is a new addition; a decrease takes the newest units first.
    fn set_quantity(&mut self, quantity: u32, at: Timestamp) {
        if quantity > self.quantity {
            self.additions.push(Addition { quantity: quantity - self.quantity, at });
        } else {
            let mut excess = self.quantity - quantity;
            while excess > 0 {
                let Some(last) = self.additions.last_mut() else { break };
                let taken = excess.min(last.quantity);
                last.quantity -= taken;
                excess -= taken;
                if last.quantity == 0 {
                    self.additions.pop();
                }
            }
        }
        self.quantity = quantity;
    }

    /// The line left once the units in the cart at `placed_at` are taken, if any units were added after it.
    fn after_check_out(&self, placed_at: Timestamp) -> Option<CartLine> {
        let later = self.additions.iter().position(|a| a.at > placed_at)?;
        let (first, rest) = self.additions[later..].split_first()?;
        Some(CartLine {
            product_id: self.product_id.clone(),
            quantity: first.quantity + rest.iter().map(|a| a.quantity).sum::<u32>(),
            added_at: first.at,
            additions: rest.to_vec(),
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    pub lines: Vec<CartLine>,
    /// Currency of the lines in the cart; a cart holds one currency at a time.
    pub currency: Option<String>,
    pub updated_at: Option<Timestamp>,
}

/// What the cart needs to know about a product to accept it, looked up by the caller at command time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductAvailability {
    pub available: i64,
    pub currency: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CartCommand {
    /// Adds `quantity` to the line (creating it if needed).
    AddItem {
        product_id: String,
        quantity: i64,
        product: ProductAvailability,
    },
    /// Sets the line's quantity.
    SetQuantity {
        product_id: String,
        quantity: i64,
        product: ProductAvailability,
    },
    RemoveItem {
        product_id: String,
    },
    Clear,
    /// Removes what an order bought: the units of its products that were in the cart when it was placed. Units
    /// added later are not the order's: they stay, and a repeated check-out leaves them alone.
    CheckOut {
        order_id: String,
        product_ids: Vec<String>,
        placed_at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum CartEvent {
    LineSet { product_id: String, quantity: u32, currency: String, at: Timestamp },
    LineRemoved { product_id: String, at: Timestamp },
    Cleared { at: Timestamp },
    CheckedOut { order_id: String, product_ids: Vec<String>, placed_at: Option<Timestamp>, at: Timestamp },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CartError {
    #[error("quantity must be between 1 and {MAX_LINE_QUANTITY}")]
    InvalidQuantity,
    #[error("only {available} in stock, the cart would hold {requested}")]
    InsufficientStock { available: i64, requested: i64 },
    #[error("the cart holds {cart} items; this product is priced in {product}")]
    CurrencyMismatch { cart: String, product: String },
    #[error("the cart already has {MAX_LINES} different products")]
    CartFull,
    #[error("this product is not in the cart")]
    LineNotFound,
}

impl Cart {
    pub fn line(&self, product_id: &str) -> Option<&CartLine> {
        self.lines.iter().find(|l| l.product_id == product_id)
    }

    pub fn item_count(&self) -> u64 {
        self.lines.iter().map(|l| u64::from(l.quantity)).sum()
    }

    /// Whether a check-out of `product_ids` by an order placed at `placed_at` takes units of the line. Check-outs
    /// recorded before orders sent their time carry none, and took every line of those products.
    fn checked_out_by(line: &CartLine, product_ids: &[String], placed_at: Option<Timestamp>) -> bool {
        product_ids.contains(&line.product_id) && placed_at.is_none_or(|placed| line.added_at <= placed)
    }

    fn set_line(
        &self,
        product_id: &str,
        quantity: i64,
        product: &ProductAvailability,
        now: Timestamp,
    ) -> Result<Vec<CartEvent>, CartError> {
        if !(1..=i64::from(MAX_LINE_QUANTITY)).contains(&quantity) {
            return Err(CartError::InvalidQuantity);
        }
        if quantity > product.available {
            return Err(CartError::InsufficientStock { available: product.available.max(0), requested: quantity });
        }
        let others = self.lines.iter().filter(|l| l.product_id != product_id).count();
        if let Some(currency) = &self.currency {
            if others > 0 && currency != &product.currency {
                return Err(CartError::CurrencyMismatch { cart: currency.clone(), product: product.currency.clone() });
            }
        }
        if self.line(product_id).is_none() && self.lines.len() >= MAX_LINES {
            return Err(CartError::CartFull);
        }
        let quantity = u32::try_from(quantity).map_err(|_| CartError::InvalidQuantity)?;
        Ok(vec![CartEvent::LineSet {
            product_id: product_id.to_string(),
            quantity,
            currency: product.currency.clone(),
            at: now,
        }])
    }
}

/// Parses a client-supplied quantity (rejecting zero, negatives and absurd values) before any lookup.
pub fn check_quantity(quantity: i64) -> Result<i64, CartError> {
    if (1..=i64::from(MAX_LINE_QUANTITY)).contains(&quantity) {
        Ok(quantity)
    } else {
        Err(CartError::InvalidQuantity)
    }
}

impl Aggregate for Cart {
    const KIND: &'static str = "cart";
    type Command = CartCommand;
    type Event = CartEvent;
    type Error = CartError;

    fn decide(&self, _user_id: &str, command: &CartCommand, now: Timestamp) -> Result<Vec<CartEvent>, CartError> {
        match command {
            CartCommand::AddItem { product_id, quantity, product } => {
                check_quantity(*quantity)?;
                let existing = self.line(product_id).map_or(0, |l| i64::from(l.quantity));
                self.set_line(product_id, existing + quantity, product, now)
            }
            CartCommand::SetQuantity { product_id, quantity, product } => {
                if self.line(product_id).is_none() {
                    return Err(CartError::LineNotFound);
                }
                self.set_line(product_id, *quantity, product, now)
            }
            CartCommand::RemoveItem { product_id } => match self.line(product_id) {
                Some(_) => Ok(vec![CartEvent::LineRemoved { product_id: product_id.clone(), at: now }]),
                None => Err(CartError::LineNotFound),
            },
            CartCommand::Clear if self.lines.is_empty() => Ok(vec![]),
            CartCommand::Clear => Ok(vec![CartEvent::Cleared { at: now }]),
            CartCommand::CheckOut { order_id, product_ids, placed_at } => {
                let placed_at = Some(*placed_at);
                if !self.lines.iter().any(|l| Self::checked_out_by(l, product_ids, placed_at)) {
                    return Ok(vec![]);
                }
                Ok(vec![CartEvent::CheckedOut {
                    order_id: order_id.clone(),
                    product_ids: product_ids.clone(),
                    placed_at,
                    at: now,
                }])
            }
        }
    }

    fn apply(&mut self, event: &CartEvent) {
        match event {
            CartEvent::LineSet { product_id, quantity, currency, at } => {
                match self.lines.iter_mut().find(|l| &l.product_id == product_id) {
                    Some(line) => line.set_quantity(*quantity, *at),
                    None => self.lines.push(CartLine {
                        product_id: product_id.clone(),
                        quantity: *quantity,
                        added_at: *at,
                        additions: vec![],
                    }),
                }
                self.currency = Some(currency.clone());
                self.updated_at = Some(*at);
            }
            CartEvent::LineRemoved { product_id, at } => {
                self.lines.retain(|l| &l.product_id != product_id);
                if self.lines.is_empty() {
                    self.currency = None;
                }
                self.updated_at = Some(*at);
            }
            CartEvent::Cleared { at } => {
                self.lines.clear();
                self.currency = None;
                self.updated_at = Some(*at);
            }
            CartEvent::CheckedOut { product_ids, placed_at, at, .. } => {
                self.lines = std::mem::take(&mut self.lines)
                    .into_iter()
                    .filter_map(|l| {
                        if !Self::checked_out_by(&l, product_ids, *placed_at) {
                            return Some(l);
                        }
                        placed_at.and_then(|placed| l.after_check_out(placed))
                    })
                    .collect();
                if self.lines.is_empty() {
                    self.currency = None;
                }
                self.updated_at = Some(*at);
            }
        }
    }

    fn event_type(event: &CartEvent) -> &'static str {
        match event {
            CartEvent::LineSet { .. } => "cart.line_set",
            CartEvent::LineRemoved { .. } => "cart.line_removed",
            CartEvent::Cleared { .. } => "cart.cleared",
            CartEvent::CheckedOut { .. } => "cart.checked_out",
        }
    }
}

/// A priced cart line, as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PricedLine {
    pub product_id: String,
    pub title: Option<String>,
    pub unit_price: Option<i64>,
    /// The currency the product is priced in now.
    pub currency: Option<String>,
    pub quantity: u32,
    pub line_total: i64,
    /// False when the product was deleted, no longer has this quantity in stock, or is now priced in another
    /// currency than the cart.
    pub available: bool,
}

/// What the catalog says about a line's product at the moment the cart is shown.
#[derive(Debug, Clone, Copy)]
pub struct CatalogEntry<'a> {
    pub title: &'a str,
    pub price: i64,
    pub currency: &'a str,
    pub available: i64,
}

/// Totals computed by the server from current catalog prices; unavailable lines are shown but not counted.
pub fn price_lines(lines: Vec<PricedLine>) -> (Vec<PricedLine>, i64, u64) {
    let subtotal = lines.iter().filter(|l| l.available).map(|l| l.line_total).sum();
    let items = lines.iter().filter(|l| l.available).map(|l| u64::from(l.quantity)).sum();
    (lines, subtotal, items)
}

pub fn priced_line(line: &CartLine, cart_currency: Option<&str>, product: Option<CatalogEntry<'_>>) -> PricedLine {
    match product {
        Some(p) => PricedLine {
            product_id: line.product_id.clone(),
            title: Some(p.title.to_string()),
            unit_price: Some(p.price),
            currency: Some(p.currency.to_string()),
            quantity: line.quantity,
            line_total: p.price * i64::from(line.quantity),
            available: p.available >= i64::from(line.quantity) && cart_currency.is_none_or(|c| c == p.currency),
        },
        None => PricedLine {
            product_id: line.product_id.clone(),
            title: None,
            unit_price: None,
            currency: None,
            quantity: line.quantity,
            line_total: 0,
            available: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd(available: i64) -> ProductAvailability {
        ProductAvailability { available, currency: "USD".into() }
    }

    fn run(cart: &mut Cart, cmd: CartCommand) -> Result<(), CartError> {
        for e in cart.decide("u", &cmd, chrono::Utc::now())? {
            cart.apply(&e);
        }
        Ok(())
    }

    #[test]
    fn adding_twice_accumulates_up_to_stock() {
        let mut c = Cart::default();
        run(&mut c, CartCommand::AddItem { product_id: "a".into(), quantity: 2, product: usd(5) }).unwrap();
        run(&mut c, CartCommand::AddItem { product_id: "a".into(), quantity: 3, product: usd(5) }).unwrap();
        assert_eq!(c.line("a").unwrap().quantity, 5);
        let err = run(&mut c, CartCommand::AddItem { product_id: "a".into(), quantity: 1, product: usd(5) });
        assert_eq!(err, Err(CartError::InsufficientStock { available: 5, requested: 6 }));
    }

    #[test]
    fn bad_quantities_and_currencies_are_refused() {
        let mut c = Cart::default();
        for q in [0, -1, 1000, i64::MAX] {
            assert_eq!(
                run(&mut c, CartCommand::AddItem { product_id: "a".into(), quantity: q, product: usd(10_000) }),
                Err(CartError::InvalidQuantity)
            );
        }
        run(&mut c, CartCommand::AddItem { product_id: "a".into(), quantity: 1, product: usd(1) }).unwrap();
        let eur = ProductAvailability { available: 3, currency: "EUR".into() };
        assert!(matches!(
            run(&mut c, CartCommand::AddItem { product_id: "b".into(), quantity: 1, product: eur }),
            Err(CartError::CurrencyMismatch { .. })
        ));
        assert_eq!(run(&mut c, CartCommand::RemoveItem { product_id: "zz".into() }), Err(CartError::LineNotFound));
        assert_eq!(
            run(&mut c, CartCommand::SetQuantity { product_id: "zz".into(), quantity: 1, product: usd(1) }),
            Err(CartError::LineNotFound)
        );
    }

    #[test]
    fn a_repeated_check_out_leaves_lines_added_after_the_order() {
        let t0 = chrono::Utc::now();
        let mut c = Cart::default();
        let at = |c: &mut Cart, cmd: CartCommand, when| {
            for e in c.decide("u", &cmd, when).unwrap() {
                c.apply(&e);
            }
        };
        at(&mut c, CartCommand::AddItem { product_id: "a".into(), quantity: 2, product: usd(9) }, t0);
        at(&mut c, CartCommand::AddItem { product_id: "b".into(), quantity: 1, product: usd(9) }, t0);
        let placed_at = t0 + chrono::Duration::seconds(1);
        let check_out = CartCommand::CheckOut { order_id: "o1".into(), product_ids: vec!["a".into()], placed_at };
        at(&mut c, check_out.clone(), t0 + chrono::Duration::seconds(2));
        assert_eq!(c.lines.iter().map(|l| l.product_id.as_str()).collect::<Vec<_>>(), ["b"]);
        // The customer puts `a` back; the same check-out arriving again must not take it.
        at(
            &mut c,
            CartCommand::AddItem { product_id: "a".into(), quantity: 1, product: usd(9) },
            t0 + chrono::Duration::seconds(3),
        );
        let before = c.clone();
        assert!(c.decide("u", &check_out, t0 + chrono::Duration::seconds(4)).unwrap().is_empty());
        assert_eq!(c, before);
        assert_eq!(c.line("a").map(|l| l.quantity), Some(1));
    }

    #[test]
    fn units_added_while_the_order_is_paid_stay_in_the_cart() {
        let t = |secs| chrono::Utc::now() + chrono::Duration::seconds(secs);
        let t0 = t(0);
        let at = |c: &mut Cart, cmd: &CartCommand, when| {
            for e in c.decide("u", cmd, when).unwrap() {
                c.apply(&e);
            }
        };
        let add = |quantity| CartCommand::AddItem { product_id: "a".into(), quantity, product: usd(9) };
        let mut c = Cart::default();
        at(&mut c, &add(1), t0);
        // The order is placed with that one unit; before its check-out step runs, the shopper adds two more.
        let placed_at = t0 + chrono::Duration::seconds(1);
        at(&mut c, &add(2), t0 + chrono::Duration::seconds(2));
        assert_eq!(c.line("a").map(|l| l.quantity), Some(3));
        let check_out = CartCommand::CheckOut { order_id: "o1".into(), product_ids: vec!["a".into()], placed_at };
        at(&mut c, &check_out, t0 + chrono::Duration::seconds(3));
        let line = c.line("a").expect("the two units added after the order stay");
        assert_eq!((line.quantity, line.added_at), (2, t0 + chrono::Duration::seconds(2)));
        assert_eq!(c.currency.as_deref(), Some("USD"));
        // The same check-out again takes nothing more.
        let before = c.clone();
        assert!(c.decide("u", &check_out, t0 + chrono::Duration::seconds(4)).unwrap().is_empty());
        assert_eq!(c, before);
    }

    #[test]
    fn lowering_a_line_takes_the_newest_units_first() {
        let t0 = chrono::Utc::now();
        let secs = |n| t0 + chrono::Duration::seconds(n);
        let mut c = Cart::default();
        let set = |product_id: &str, quantity| CartCommand::SetQuantity {
            product_id: product_id.into(),
            quantity,
            product: usd(99),
        };
        for (cmd, when) in [
            (CartCommand::AddItem { product_id: "a".into(), quantity: 2, product: usd(99) }, secs(0)),
            (CartCommand::AddItem { product_id: "a".into(), quantity: 3, product: usd(99) }, secs(2)),
            (CartCommand::AddItem { product_id: "a".into(), quantity: 4, product: usd(99) }, secs(4)),
            (set("a", 4), secs(5)),
        ] {
            for e in c.decide("u", &cmd, when).unwrap() {
                c.apply(&e);
            }
        }
        // 2 at 0s, 2 of the 3 at 2s: an order placed at 3s bought 4 units, and none are left.
        let line = c.line("a").unwrap();
        assert_eq!(line.additions, [Addition { quantity: 2, at: secs(2) }]);
        let check_out = |placed_at| CartEvent::CheckedOut {
            order_id: "o".into(),
            product_ids: vec!["a".into()],
            placed_at: Some(placed_at),
            at: secs(6),
        };
        let mut taken = c.clone();
        taken.apply(&check_out(secs(3)));
        assert!(taken.lines.is_empty());
        // An order placed at 1s bought the first 2: the 2 added at 2s stay.
        c.apply(&check_out(secs(1)));
        assert_eq!(c.line("a").map(|l| (l.quantity, l.added_at)), Some((2, secs(2))));
    }

    #[test]
    fn check_outs_recorded_without_their_order_time_still_apply() {
        let mut c = Cart::default();
        run(&mut c, CartCommand::AddItem { product_id: "a".into(), quantity: 2, product: usd(9) }).unwrap();
        let legacy = serde_json::json!({"type": "checked_out", "orderId": "o1", "productIds": ["a"], "at": "2026-01-01T00:00:00Z"});
        c.apply(&serde_json::from_value(legacy).unwrap());
        assert!(c.lines.is_empty() && c.currency.is_none());
        let legacy_state =
            serde_json::json!({"lines": [], "currency": null, "updated_at": null, "checked_out": ["o1"]});
        assert_eq!(serde_json::from_value::<Cart>(legacy_state).unwrap(), Cart::default());
    }

    #[test]
    fn totals_skip_unavailable_lines() {
        let now = chrono::Utc::now();
        let line = |id: &str, q| CartLine { product_id: id.into(), quantity: q, added_at: now, additions: vec![] };
        let entry = |title, price, currency, available| Some(CatalogEntry { title, price, currency, available });
        let usd = Some("USD");
        let lines = vec![
            priced_line(&line("a", 2), usd, entry("A", 150, "USD", 10)),
            priced_line(&line("b", 1), usd, None),
            priced_line(&line("c", 4), usd, entry("C", 100, "USD", 3)),
            // Switched to yen after it was added: shown, but never summed into a dollar subtotal.
            priced_line(&line("d", 1), usd, entry("D", 100, "JPY", 10)),
        ];
        let (lines, subtotal, items) = price_lines(lines);
        assert_eq!(subtotal, 300);
        assert_eq!(items, 2);
        assert!(!lines[1].available && !lines[2].available && !lines[3].available);
        assert_eq!(lines[3].currency.as_deref(), Some("JPY"));
    }

    proptest! {
        /// Any sequence of cart operations keeps every line within 1..=MAX and within the stock it was checked
        /// against, with no duplicate lines; the total equals the sum of price * quantity.
        #[test]
        fn cart_invariants(ops in proptest::collection::vec((0u8..4, 0usize..4, -3i64..1200, 0i64..1000), 0..80),
                           prices in proptest::collection::vec(0i64..100_000, 4)) {
            let ids = ["a", "b", "c", "d"];
            let mut c = Cart::default();
            for (op, idx, qty, stock) in ops {
                let id = ids[idx].to_string();
                let cmd = match op {
                    0 => CartCommand::AddItem { product_id: id, quantity: qty, product: usd(stock) },
                    1 => CartCommand::SetQuantity { product_id: id, quantity: qty, product: usd(stock) },
                    2 => CartCommand::RemoveItem { product_id: id },
                    _ => CartCommand::Clear,
                };
                let before = c.clone();
                if run(&mut c, cmd).is_err() {
                    prop_assert_eq!(&c, &before);
                }
                let mut seen = std::collections::HashSet::new();
                for l in &c.lines {
                    prop_assert!(l.quantity >= 1 && l.quantity <= MAX_LINE_QUANTITY);
                    // Every addition holds units, and the units first added are still there.
                    prop_assert!(l.additions.iter().all(|a| a.quantity > 0));
                    prop_assert!(l.additions.iter().map(|a| a.quantity).sum::<u32>() < l.quantity);
                    prop_assert!(seen.insert(l.product_id.clone()));
                }
            }
            let priced: Vec<_> = c.lines.iter().map(|l| {
                let i = ids.iter().position(|x| *x == l.product_id).unwrap();
                priced_line(l, c.currency.as_deref(), Some(CatalogEntry { title: "t", price: prices[i], currency: "USD", available: i64::MAX }))
            }).collect();
            let expected: i64 = c.lines.iter().map(|l| {
                let i = ids.iter().position(|x| *x == l.product_id).unwrap();
                prices[i] * i64::from(l.quantity)
            }).sum();
            let (_, subtotal, items) = price_lines(priced);
            prop_assert_eq!(subtotal, expected);
            prop_assert_eq!(items, c.item_count());
        }
    }
}
