//! Checkout and orders: snapshots the cart at current catalog prices into an order actor, which then drives the
//! saga through [`OrderSaga`]: reserve every line, redeem the coupon, take payment, commit the stock, clear the
//! cart; or compensate. Reads come from the orders read model.

use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::actors::{Effects, Entity, EntityError, EntityRouter};
use crate::carts::Carts;
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::domain::cart::{Cart, CartCommand};
use crate::domain::coupon::{self, CouponCommand, CouponError, CouponState};
use crate::domain::order::{self, NewOrder, Order, OrderCommand, OrderEffect, OrderError, OrderLine, OrderState};
use crate::domain::payment::{PaymentCommand, PaymentError, PaymentState, PaymentStatus};
use crate::domain::product::{ProductCommand, ProductState};
use crate::domain::user::{self, Address, User};
use crate::ratelimit::RateLimit;
use crate::store::{OrderQuery, Page, ReadModel, SalesStore, StoreError};

impl Entity for OrderState {
    type Effect = OrderEffect;

    fn read_model(&self) -> Option<ReadModel> {
        self.order.clone().map(|o| ReadModel::Order(Box::new(o)))
    }

    fn next_effect(&self) -> Option<OrderEffect> {
        self.order.as_ref().and_then(Order::next_step)
    }

    /// Counts an order whose checkout ended (paid, or failed before payment), with the time since it was placed.
    fn committed(&self, event_types: &[String]) {
        use crate::telemetry::metrics::{CHECKOUT_DURATION, ORDERS};
        use order::OrderStatus as S;
        let Some(order) = &self.order else { return };
        let Some(last) = order.history.last() else { return };
        if !event_types.iter().any(|t| t == "order.status_changed") {
            return;
        }
        let outcome = match last.status {
            S::Paid => "paid",
            S::Rejected => "rejected",
            S::PaymentFailed => "payment_failed",
            S::Cancelled if !order.history.iter().any(|h| h.status == S::Paid) => "cancelled",
            _ => return,
        };
        let took = (last.at - order.created_at).to_std().unwrap_or_default();
        metrics::counter!(ORDERS, "outcome" => outcome).increment(1);
        metrics::histogram!(CHECKOUT_DURATION, "outcome" => outcome).record(took.as_secs_f64());
    }
}

impl Entity for CouponState {
    type Effect = std::convert::Infallible;

    fn read_model(&self) -> Option<ReadModel> {
        self.coupon.clone().map(ReadModel::Coupon)
    }
}

/// Runs the order saga's steps against the other entities. Every call is keyed by the order id, so running a step
/// again (after a crash, a timeout or a restart) has no further effect.
pub struct OrderSaga {
    pub products: EntityRouter<ProductState>,
    pub carts: EntityRouter<Cart>,
    pub payments: EntityRouter<PaymentState>,
    pub coupons: EntityRouter<CouponState>,
    /// How long a charge step waits for its payment to be decided before trying again.
    pub payment_wait: Duration,
}

fn unavailable<E>(e: EntityError<E>) -> String
where
    E: std::fmt::Display,
{
    e.to_string()
}

impl OrderSaga {
    /// Runs one command per product, all at once (each product is its own actor; a checkout's lines wait for the
    /// slowest one, not for their sum). Returns the products done and, if a product refused, the first in line
    /// order that did, and why. When some products are unavailable after others made progress, the progress is kept
    /// and the step later resumes with the rest; with no progress at all the step fails and is retried.
    async fn each_product(
        &self,
        commands: impl IntoIterator<Item = (String, ProductCommand)>,
    ) -> Result<(Vec<String>, Option<(String, String)>), String> {
        let calls = commands.into_iter().map(|(product_id, command)| async move {
            let outcome = self.products.apply(&product_id, command).await;
            (product_id, outcome)
        });
        let mut done = Vec::new();
        let (mut refused, mut failed) = (None, None);
        for (product_id, outcome) in futures_util::future::join_all(calls).await {
            match outcome {
                Ok(_) => done.push(product_id),
                Err(EntityError::Rejected(e)) => {
                    refused.get_or_insert((product_id, e.to_string()));
                }
                Err(e) => {
                    failed.get_or_insert(unavailable(e));
                }
            }
        }
        match (refused, failed) {
            (Some(refused), _) => Ok((done, Some(refused))),
            (None, Some(error)) if done.is_empty() => Err(error),
            _ => Ok((done, None)),
        }
    }
}

#[async_trait]
impl Effects<OrderState> for OrderSaga {
    async fn run(&self, order_id: &str, effect: OrderEffect) -> Result<OrderCommand, String> {
        let oid = order_id.to_string();
        match effect {
            OrderEffect::Reserve { lines, expires_at } => {
                let commands = lines.into_iter().map(|(product_id, quantity)| {
                    (product_id, ProductCommand::Reserve { order_id: oid.clone(), quantity, expires_at })
                });
                Ok(match self.each_product(commands).await? {
                    (reserved, Some((product_id, reason))) => {
                        OrderCommand::ReservationRefused { reserved, product_id, reason }
                    }
                    (reserved, None) => OrderCommand::Reserved { product_ids: reserved },
                })
            }
            OrderEffect::RedeemCoupon { code, user_id, subtotal, currency } => {
                let cmd = CouponCommand::Redeem { order_id: oid, user_id, subtotal, currency };
                match self.coupons.execute(&code, cmd).await {
                    Ok(_) => Ok(OrderCommand::CouponRedeemed),
                    Err(EntityError::Rejected(e)) => Ok(OrderCommand::CouponRefused { reason: e.to_string() }),
                    Err(e) => Err(unavailable(e)),
                }
            }
            OrderEffect::Charge { payment_id, user_id, amount, currency, method } => {
                if amount == 0 {
                    return Ok(OrderCommand::PaymentCaptured);
                }
                let cmd = PaymentCommand::Request { order_id: oid, user_id, amount, currency, method };
                match self.payments.execute(&payment_id, cmd).await {
                    Ok(_) => {}
                    Err(EntityError::Rejected(e)) => return Ok(OrderCommand::PaymentFailed { reason: e.to_string() }),
                    Err(e) => return Err(unavailable(e)),
                }
                let payment = self.payments.settled(&payment_id, self.payment_wait).await.map_err(unavailable)?;
                let payment = payment.payment.ok_or("payment vanished")?;
                match (payment.status, payment.failure) {
                    (PaymentStatus::Pending, _) => Err("payment still pending".into()),
                    // A failed payment stays failed for its order, even once a capture learned of later was refunded.
                    (_, Some(reason)) => Ok(OrderCommand::PaymentFailed { reason }),
                    (PaymentStatus::Failed, None) => {
                        Ok(OrderCommand::PaymentFailed { reason: "payment failed".into() })
                    }
                    (PaymentStatus::Captured | PaymentStatus::Refunded, None) => Ok(OrderCommand::PaymentCaptured),
                }
            }
            OrderEffect::CommitStock { product_ids } => {
                let commands =
                    product_ids.into_iter().map(|id| (id, ProductCommand::CommitReservation { order_id: oid.clone() }));
                Ok(match self.each_product(commands).await? {
                    (committed, Some((product_id, reason))) => {
                        OrderCommand::CommitRefused { committed, product_id, reason }
                    }
                    (committed, None) => OrderCommand::StockCommitted { product_ids: committed },
                })
            }
            OrderEffect::ClearCart { user_id, product_ids, placed_at } => {
                let cmd = CartCommand::CheckOut { order_id: oid, product_ids, placed_at };
                self.carts.apply(&user_id, cmd).await.map_err(unavailable)?;
                Ok(OrderCommand::CartCleared)
            }
            OrderEffect::Release { product_ids } => {
                for product_id in product_ids {
                    let cmd = ProductCommand::ReleaseReservation { order_id: oid.clone(), reason: "released".into() };
                    self.products.apply(&product_id, cmd).await.map_err(unavailable)?;
                }
                Ok(OrderCommand::Released)
            }
            OrderEffect::Restock { product_ids } => {
                for product_id in product_ids {
                    let cmd = ProductCommand::Restock { order_id: oid.clone() };
                    self.products.apply(&product_id, cmd).await.map_err(unavailable)?;
                }
                Ok(OrderCommand::Restocked)
            }
            OrderEffect::CloseStock { product_ids, expires_at } => {
                for product_id in product_ids {
                    let cmd = ProductCommand::CloseOrder { order_id: oid.clone(), expires_at };
                    self.products.apply(&product_id, cmd).await.map_err(unavailable)?;
                }
                Ok(OrderCommand::StockClosed)
            }
            OrderEffect::ReturnCoupon { code } => {
                match self.coupons.execute(&code, CouponCommand::Return { order_id: oid }).await {
                    Ok(_) | Err(EntityError::Rejected(CouponError::NotFound)) => Ok(OrderCommand::CouponReturned),
                    Err(e) => Err(unavailable(e)),
                }
            }
            OrderEffect::Refund { payment_id } => {
                match self.payments.execute(&payment_id, PaymentCommand::RequestRefund).await {
                    Ok(_) => {}
                    // The order failed before any payment was requested.
                    Err(EntityError::Rejected(PaymentError::NotFound)) => {
                        return Ok(OrderCommand::RefundSettled { refunded: false })
                    }
                    Err(e) => return Err(unavailable(e)),
                }
                let payment = self.payments.settled(&payment_id, self.payment_wait).await.map_err(unavailable)?;
                match payment.payment.map(|p| p.status) {
                    Some(PaymentStatus::Refunded) => Ok(OrderCommand::RefundSettled { refunded: true }),
                    Some(PaymentStatus::Failed) | None => Ok(OrderCommand::RefundSettled { refunded: false }),
                    Some(_) => Err("refund still pending".into()),
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("the cart is empty")]
    CartEmpty,
    #[error("product {0} is no longer available")]
    ProductUnavailable(String),
    #[error("only {available} of product {product_id} in stock")]
    InsufficientStock { product_id: String, available: i64 },
    #[error(transparent)]
    Coupon(#[from] CouponError),
    #[error("`paymentMethod` must be a payment method token such as pm_card_visa")]
    InvalidPaymentMethod,
    #[error("`Idempotency-Key` must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("this `Idempotency-Key` was already used for order {0} with a different request; use a new key for a new checkout")]
    IdempotencyKeyReused(String),
    #[error(transparent)]
    Address(#[from] user::UserError),
    #[error("order not found")]
    OrderNotFound,
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("this coupon cannot be applied to this order")]
    CouponNotApplicable,
    #[error("too many checkouts; slow down")]
    RateLimited { scope: &'static str, retry_after: Duration },
    #[error("you have {limit} orders in progress already; wait for one to be paid or to fail")]
    TooManyPendingOrders { limit: u32 },
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for CheckoutError {
    fn from(e: StoreError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// For reads of other entities, which are never rejected: any failure is unavailability.
impl<E: std::fmt::Display> From<EntityError<E>> for CheckoutError {
    fn from(e: EntityError<E>) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// A command to an order: the order's own rejection, or unavailability.
fn order_error(e: EntityError<OrderError>) -> CheckoutError {
    match e {
        EntityError::Rejected(e) => CheckoutError::Order(e),
        EntityError::Unavailable(e) => CheckoutError::Unavailable(e),
    }
}

#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub payment_method: String,
    pub coupon_code: Option<String>,
    pub shipping_address: Option<Address>,
}

impl CheckoutRequest {
    /// What identifies the request besides the cart: replaying the key with other values is a different request.
    fn fingerprint(&self) -> String {
        let address = self.shipping_address.as_ref().map(|a| serde_json::to_string(a).unwrap_or_default());
        let coupon = self.coupon_code.as_deref().map(|c| coupon::normalize_code(c).unwrap_or_else(|_| c.to_string()));
        let text = format!("{}\n{coupon:?}\n{address:?}", self.payment_method);
        crate::auth::tokens::hex(&Sha256::digest(text.as_bytes())[..16])
    }
}

/// Stripe's rule for a repeated idempotency key: the original order when the request is the same, an error when it
/// differs. The cart is part of the request: it still holds exactly the order's lines (the order has not cleared
/// them yet, or it failed), or it is empty because the order checked it out. Anything else was put in the cart
/// after that order and calls for a new key.
fn same_request(existing: Order, fingerprint: &str, cart: &Cart) -> Result<Order, CheckoutError> {
    use std::collections::BTreeMap;
    let ordered: BTreeMap<&str, u32> = existing.lines.iter().map(|l| (l.product_id.as_str(), l.quantity)).collect();
    let in_cart: BTreeMap<&str, u32> = cart.lines.iter().map(|l| (l.product_id.as_str(), l.quantity)).collect();
    let same_body = existing.request_hash.as_deref().is_none_or(|h| h == fingerprint);
    let same_cart = in_cart.is_empty() || in_cart == ordered;
    if same_body && same_cart {
        Ok(existing)
    } else {
        Err(CheckoutError::IdempotencyKeyReused(existing.id))
    }
}

#[derive(Clone)]
pub struct Orders {
    orders: EntityRouter<OrderState>,
    coupons: EntityRouter<CouponState>,
    carts: Carts,
    catalog: Catalog,
    store: std::sync::Arc<dyn SalesStore>,
    clock: Clock,
    reservation_ttl: chrono::Duration,
    limits: CheckoutPolicy,
}

/// How checkout treats users: how long an unpaid order holds stock, and what one user may ask of it (so many
/// checkouts and coupon codes a minute, so many orders in progress), on a node with so many live entities.
#[derive(Clone)]
pub struct CheckoutPolicy {
    pub reservation_ttl: Duration,
    pub checkouts: std::sync::Arc<dyn RateLimit>,
    pub coupon_codes: std::sync::Arc<dyn RateLimit>,
    pub max_pending_orders: u32,
    /// The node's cap on live entities: a checkout pins an order, a payment and its products until it settles.
    pub live: std::sync::Arc<crate::actors::live::LiveLimit>,
}

/// Orders in progress are among a user's newest this many: an order leaves progress within its reservation's
/// lifetime, in which the checkout rate allows far fewer.
const PENDING_LOOKBACK: u32 = 100;

/// The same user and idempotency key always name the same order.
pub fn order_id_for(user_id: &str, idempotency_key: &str) -> String {
    let digest = Sha256::digest(format!("{user_id}\n{idempotency_key}").as_bytes());
    format!("ord_{}", crate::auth::tokens::hex(&digest[..16]))
}

fn check_payment_method(method: &str) -> Result<(), CheckoutError> {
    let ok = (method.starts_with("pm_") || method.starts_with("tok_"))
        && (4..=64).contains(&method.len())
        && method.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CheckoutError::InvalidPaymentMethod)
    }
}

impl Orders {
    pub fn new(
        orders: EntityRouter<OrderState>,
        coupons: EntityRouter<CouponState>,
        carts: Carts,
        catalog: Catalog,
        store: std::sync::Arc<dyn SalesStore>,
        clock: Clock,
        limits: CheckoutPolicy,
    ) -> Self {
        let reservation_ttl =
            chrono::Duration::from_std(limits.reservation_ttl).unwrap_or(chrono::Duration::minutes(15));
        Self { orders, coupons, carts, catalog, store, clock, reservation_ttl, limits }
    }

    pub fn router(&self) -> &EntityRouter<OrderState> {
        &self.orders
    }

    /// Places the order for the user's cart, or returns the order this idempotency key already placed.
    pub async fn checkout(
        &self,
        user: &User,
        idempotency_key: &str,
        request: CheckoutRequest,
    ) -> Result<Order, CheckoutError> {
        let key_ok =
            (1..=255).contains(&idempotency_key.len()) && idempotency_key.chars().all(|c| c.is_ascii_graphic());
        if !key_ok {
            return Err(CheckoutError::InvalidIdempotencyKey);
        }
        let order_id = order_id_for(&user.id, idempotency_key);
        let fingerprint = request.fingerprint();
        // The read model, not the order's actor: a key that placed nothing must not start an actor.
        if let Some(existing) = self.store.order(&order_id).await? {
            let cart = self.carts.router().get(&user.id).await?;
            return same_request(existing, &fingerprint, &cart);
        }
        check_payment_method(&request.payment_method)?;
        self.admit(&user.id, request.coupon_code.is_some()).await?;
        let shipping_address = match &request.shipping_address {
            Some(a) => Some(user::check_address(a)?),
            None => user.address.clone(),
        };
        let cart = self.carts.router().get(&user.id).await?;
        if cart.lines.is_empty() {
            return Err(CheckoutError::CartEmpty);
        }
        let mut products = Vec::with_capacity(cart.lines.len());
        for line in &cart.lines {
            match self.catalog.get(&line.product_id).await {
                Ok(p) => products.push((p, line.quantity)),
                Err(EntityError::Rejected(_)) => {
                    return Err(CheckoutError::ProductUnavailable(line.product_id.clone()))
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Prices come from the catalog now, so the currency must too: a product that changed currency since it
        // was added is refused rather than charged in the cart's currency.
        let currency = order::order_currency(
            cart.currency.as_deref(),
            products.iter().map(|(p, _)| (p.id.as_str(), p.currency.as_str())),
        )?;
        let mut lines = Vec::with_capacity(products.len());
        for (product, quantity) in products {
            if product.available() < i64::from(quantity) {
                let available = product.available();
                return Err(CheckoutError::InsufficientStock { product_id: product.id, available });
            }
            lines.push(OrderLine {
                product_id: product.id,
                title: product.title,
                unit_price: product.price,
                quantity,
                line_total: product.price * i64::from(quantity),
            });
        }
        let subtotal: i64 = lines.iter().map(|l| l.line_total).sum();
        let now = self.clock.now();
        let (coupon_code, discount) = match &request.coupon_code {
            Some(raw) => {
                // One answer for a code that does not exist and one that exists but does not apply, so codes cannot
                // be found by trying them.
                let code = coupon::normalize_code(raw)?;
                let state = self.coupons.get(&code).await?;
                let coupon = state.coupon.ok_or(CheckoutError::CouponNotApplicable)?;
                let discount = coupon
                    .discount_for(&order_id, &user.id, subtotal, &currency, now)
                    .map_err(|_| CheckoutError::CouponNotApplicable)?;
                (Some(code), discount)
            }
            None => (None, 0),
        };
        let new = NewOrder {
            user_id: user.id.clone(),
            lines,
            currency,
            discount,
            coupon_code,
            payment_method: request.payment_method,
            shipping_address,
            reservation_expires_at: now + self.reservation_ttl,
            request_hash: Some(fingerprint.clone()),
        };
        let state = self.orders.execute(&order_id, OrderCommand::Place(Box::new(new))).await.map_err(order_error)?;
        let order = state.order.ok_or(CheckoutError::OrderNotFound)?;
        // A concurrent checkout with the same key may have placed the order first.
        if order.request_hash.as_deref() != Some(fingerprint.as_str()) {
            return Err(CheckoutError::IdempotencyKeyReused(order.id));
        }
        tracing::info!(order_id = %order.id, user_id = %user.id, total = order.total, "order placed");
        Ok(order)
    }

    /// Takes a checkout (and a coupon try) from the user's budgets, and refuses a user with as many orders in
    /// progress as allowed. A repeated checkout (same idempotency key) is answered before this, so it costs nothing.
    async fn admit(&self, user_id: &str, with_coupon: bool) -> Result<(), CheckoutError> {
        if self.limits.live.is_full() {
            return Err(CheckoutError::Unavailable(
                "every entity this node may keep live (actors.max_live_entities) has work in flight; retry shortly"
                    .into(),
            ));
        }
        let limited = |scope| move |retry_after| CheckoutError::RateLimited { scope, retry_after };
        self.limits.checkouts.check(user_id).await.map_err(limited("checkout"))?;
        if with_coupon {
            self.limits.coupon_codes.check(user_id).await.map_err(limited("coupon"))?;
        }
        let newest = OrderQuery { user_id: Some(user_id.to_string()), status: None, page: 1, limit: PENDING_LOOKBACK };
        let page = self.store.list_orders(&newest).await?;
        let pending = page.items.iter().filter(|o| o.status.in_progress()).count();
        if pending >= self.limits.max_pending_orders as usize {
            return Err(CheckoutError::TooManyPendingOrders { limit: self.limits.max_pending_orders });
        }
        Ok(())
    }

    /// An order of this user (someone else's order is "not found").
    pub async fn get_for(&self, user_id: &str, order_id: &str) -> Result<Order, CheckoutError> {
        match self.store.order(order_id).await? {
            Some(o) if o.user_id == user_id => Ok(o),
            _ => Err(CheckoutError::OrderNotFound),
        }
    }

    pub async fn list(&self, query: &OrderQuery) -> Result<Page<Order>, CheckoutError> {
        Ok(self.store.list_orders(query).await?)
    }

    pub async fn cancel(&self, user_id: &str, order_id: &str) -> Result<Order, CheckoutError> {
        self.get_for(user_id, order_id).await?;
        self.command(order_id, OrderCommand::Cancel { reason: "cancelled by the customer".into() }).await
    }

    /// Admin commands: `Ship` or `Deliver`.
    pub async fn command(&self, order_id: &str, command: OrderCommand) -> Result<Order, CheckoutError> {
        if self.store.order(order_id).await?.is_none() {
            return Err(CheckoutError::OrderNotFound);
        }
        let state = self.orders.execute(order_id, command).await.map_err(order_error)?;
        state.order.ok_or(CheckoutError::OrderNotFound)
    }
}
