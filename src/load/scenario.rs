//! What a simulated user does: pick the next action by the mix, make its calls, and after a checkout follow the
//! order until it settles, on the user's WebSocket or by polling.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::api::{self, Answer, Session};
use super::listener::Listener;
use super::setup::{Catalog, User, ADJECTIVES, CATEGORIES, NOUNS};
use super::stats::{Learnt, Op, Recorder};
use super::Phase;

/// An order not settled this long after its checkout is given up on (counted unsettled).
const ORDER_TIMEOUT: Duration = Duration::from_secs(60);
/// With a socket, how long to wait for a push before asking for the order once.
const PUSH_WAIT: Duration = Duration::from_secs(2);
/// Polling without a socket starts this soon and doubles up to `POLL_MAX`.
const POLL_FIRST: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_millis(500);
/// A cart is kept to this many lines, and a line below `LINE_MAX` units.
const CART_LINES: usize = 10;
const LINE_MAX: u32 = 900;
/// The payment test token the simulated provider always captures.
const PAYMENT_METHOD: &str = "pm_card_visa";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A page of the catalog, maybe of one category, a price range, a sort.
    Browse,
    /// A text search of one or two words.
    Search,
    /// One product, often one just listed.
    Product,
    /// An item added to the cart, then the cart viewed.
    Cart,
    /// A checkout followed until the order is paid (or failed).
    Checkout,
}

impl Action {
    pub const ALL: [Action; 5] = [Action::Browse, Action::Search, Action::Product, Action::Cart, Action::Checkout];

    pub fn name(self) -> &'static str {
        match self {
            Action::Browse => "browse",
            Action::Search => "search",
            Action::Product => "product",
            Action::Cart => "cart",
            Action::Checkout => "checkout",
        }
    }
}

/// Relative weights of the actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; Action::ALL.len()],
}

impl Default for Mix {
    fn default() -> Self {
        Self { weights: [35, 10, 25, 20, 10] }
    }
}

impl Mix {
    pub fn total(&self) -> u32 {
        self.weights.iter().sum()
    }

    /// The action a roll in `0..total()` falls on.
    pub fn pick(&self, roll: u32) -> Action {
        let mut below = 0;
        for (action, weight) in Action::ALL.into_iter().zip(self.weights) {
            below += weight;
            if roll < below {
                return action;
            }
        }
        Action::Browse
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `browse=40,product=25,...`: the actions named get their weights, the others 0.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut weights = [0u32; Action::ALL.len()];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').ok_or_else(|| format!("expected name=weight, got `{part}`"))?;
            let position = Action::ALL.iter().position(|a| a.name() == name.trim()).ok_or_else(|| {
                let names: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
                format!("unknown action `{}`, expected one of {}", name.trim(), names.join(", "))
            })?;
            weights[position] =
                weight.trim().parse().map_err(|_| format!("`{part}`: the weight must be a whole number"))?;
        }
        let mix = Self { weights };
        match mix.total() {
            0 => Err("give at least one action a weight above 0".into()),
            t if t > 1_000_000 => Err("weights add up to more than 1,000,000".into()),
            _ => Ok(mix),
        }
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Action::ALL
            .into_iter()
            .zip(self.weights)
            .filter(|(_, w)| *w > 0)
            .map(|(a, w)| format!("{}={w}", a.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// What every user of a run shares.
pub struct Context {
    pub recorder: Arc<Recorder>,
    pub catalog: Arc<Catalog>,
    pub mix: Mix,
    pub think: Duration,
    pub run: String,
}

/// Runs one user until the run is over: no new action once it is draining, and nothing at all once it is done.
pub async fn shop(user: User, with_socket: bool, context: Arc<Context>, mut phase: watch::Receiver<Phase>) {
    let mut shopper = Shopper {
        user,
        rng: StdRng::from_entropy(),
        with_socket,
        listener: None,
        cart: Vec::new(),
        seen: Vec::new(),
        checkouts: 0,
        context,
    };
    let mut running = phase.clone();
    tokio::select! {
        _ = shopper.live(&mut running) => {}
        _ = until(&mut phase, Phase::Done) => {}
    }
    if let Some(listener) = shopper.listener.take() {
        listener.close().await;
    }
}

async fn until(phase: &mut watch::Receiver<Phase>, wanted: Phase) {
    // An error means the run is gone: stop as well.
    let _ = phase.wait_for(|p| *p >= wanted).await;
}

struct Shopper {
    user: User,
    rng: StdRng,
    with_socket: bool,
    listener: Option<Listener>,
    /// The cart as this user filled it: (product, quantity).
    cart: Vec<(String, u32)>,
    /// Products on the last page listed, which the next product page often opens.
    seen: Vec<String>,
    checkouts: u64,
    context: Arc<Context>,
}

enum Settled {
    Paid,
    Failed,
    InProgress,
}

fn settled(status: &str) -> Settled {
    match status {
        "paid" | "shipped" | "delivered" => Settled::Paid,
        "payment_failed" | "rejected" | "cancelled" | "refunded" => Settled::Failed,
        _ => Settled::InProgress,
    }
}

impl Shopper {
    async fn live(&mut self, phase: &mut watch::Receiver<Phase>) {
        let context = self.context.clone();
        if self.with_socket {
            self.connect().await;
        }
        let total = context.mix.total();
        while *phase.borrow() == Phase::Running {
            let action = context.mix.pick(self.rng.gen_range(0..total));
            match action {
                Action::Browse => self.browse().await,
                Action::Search => self.search().await,
                Action::Product => self.product().await,
                Action::Cart => {
                    self.add_to_cart().await;
                    self.call(Op::CartView, Method::GET, "/api/cart", None, None).await;
                }
                Action::Checkout => self.checkout().await,
            }
            if !context.think.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(context.think) => {}
                    _ = until(phase, Phase::Draining) => {}
                }
            }
        }
    }

    /// One call as this user, recorded under `op`: refreshes the session when it is due or the token expired
    /// under the request. `None` when no answer came.
    async fn call(
        &mut self,
        op: Op,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Option<Answer> {
        if Instant::now() >= self.user.session.renew_at {
            self.refresh().await;
        }
        let recorder = self.context.recorder.clone();
        let mut refreshed = false;
        loop {
            let started = Instant::now();
            let token = Some(self.user.session.access.as_str());
            match self.user.api.call(method.clone(), path, token, body, idempotency_key).await {
                Ok(a) if a.status == 401 && a.code() == "token_expired" && !refreshed => {
                    refreshed = true;
                    self.refresh().await;
                }
                Ok(a) => {
                    if a.is_success() {
                        recorder.ok(op, started.elapsed());
                    } else {
                        recorder.error(op, a.describe());
                    }
                    return Some(a);
                }
                Err(e) => {
                    recorder.error(op, api::transport(&e));
                    return None;
                }
            }
        }
    }

    async fn refresh(&mut self) {
        let recorder = self.context.recorder.clone();
        let body = json!({"refreshToken": self.user.session.refresh});
        let started = Instant::now();
        let retry_in = match self.user.api.post("/api/users/refresh", None, &body).await {
            Ok(a) if a.is_success() => match Session::from_body(&a.body) {
                Some(session) => {
                    recorder.ok(Op::Refresh, started.elapsed());
                    self.user.session = session;
                    return;
                }
                None => {
                    recorder.error(Op::Refresh, format!("{} without a session", a.status));
                    Duration::from_secs(5)
                }
            },
            Ok(a) => {
                recorder.error(Op::Refresh, a.describe());
                a.wait()
            }
            Err(e) => {
                recorder.error(Op::Refresh, api::transport(&e));
                Duration::from_secs(1)
            }
        };
        // Not before then: the requests in between go with the old token.
        self.user.session.renew_at = Instant::now() + retry_in;
    }

    async fn connect(&mut self) {
        if Instant::now() >= self.user.session.renew_at {
            self.refresh().await;
        }
        let recorder = self.context.recorder.clone();
        let started = Instant::now();
        match Listener::connect(&self.user.api, &self.user.session.access, recorder.clone()).await {
            Ok(listener) => {
                recorder.ok(Op::WsConnect, started.elapsed());
                self.listener = Some(listener);
            }
            Err(e) => recorder.error(Op::WsConnect, e),
        }
    }

    fn pick(&mut self, from: &[&'static str]) -> &'static str {
        from[self.rng.gen_range(0..from.len())]
    }

    fn remember(&mut self, listing: &Answer) {
        if let Some(items) = listing.body["items"].as_array() {
            self.seen = items.iter().filter_map(|p| p["id"].as_str().map(str::to_string)).collect();
        }
    }

    async fn browse(&mut self) {
        const SORTS: [&str; 6] = ["newest", "oldest", "price", "-price", "title", "-title"];
        let page = self.rng.gen_range(1..=3);
        let mut path = format!("/api/products?limit=20&page={page}&sort={}", self.pick(&SORTS));
        if self.rng.gen_bool(0.5) {
            path.push_str(&format!("&category={}", self.pick(&CATEGORIES)));
        }
        if self.rng.gen_bool(0.25) {
            let min = self.rng.gen_range(0..80) * 100;
            path.push_str(&format!("&minPrice={min}&maxPrice={}", min + 2_500));
        }
        if let Some(answer) = self.call(Op::Browse, Method::GET, &path, None, None).await {
            self.remember(&answer);
        }
    }

    async fn search(&mut self) {
        let words = match self.rng.gen_range(0..3) {
            0 => self.pick(&ADJECTIVES).to_string(),
            1 => self.pick(&NOUNS).to_string(),
            _ => format!("{}%20{}", self.pick(&ADJECTIVES), self.pick(&NOUNS)),
        };
        let path = format!("/api/products?limit=20&q={words}");
        if let Some(answer) = self.call(Op::Search, Method::GET, &path, None, None).await {
            self.remember(&answer);
        }
    }

    fn any_product(&mut self) -> String {
        let products = &self.context.catalog.products;
        products[self.rng.gen_range(0..products.len())].clone()
    }

    async fn product(&mut self) {
        let id = match self.seen.len() {
            0 => self.any_product(),
            n if self.rng.gen_bool(0.7) => self.seen[self.rng.gen_range(0..n)].clone(),
            _ => self.any_product(),
        };
        self.call(Op::Product, Method::GET, &format!("/api/products/{id}"), None, None).await;
    }

    /// Adds one or two units of a load product (a listed one may be in another currency than the cart).
    async fn add_to_cart(&mut self) {
        let quantity = self.rng.gen_range(1..=2);
        let line = if self.cart.len() >= CART_LINES { Some(self.rng.gen_range(0..self.cart.len())) } else { None };
        if line.is_some_and(|i| self.cart[i].1 + quantity > LINE_MAX) {
            self.clear_cart().await;
            return;
        }
        let product = match line {
            Some(i) => self.cart[i].0.clone(),
            None => self.any_product(),
        };
        let body = json!({"productId": product, "quantity": quantity});
        let Some(answer) = self.call(Op::CartAdd, Method::POST, "/api/cart/items", Some(&body), None).await else {
            return;
        };
        if answer.is_success() {
            match self.cart.iter_mut().find(|(p, _)| *p == product) {
                Some(line) => line.1 += quantity,
                None => self.cart.push((product, quantity)),
            }
        } else if matches!(answer.code(), "cart_full" | "invalid_quantity") {
            self.clear_cart().await;
        }
    }

    async fn clear_cart(&mut self) {
        self.call(Op::CartClear, Method::DELETE, "/api/cart", None, None).await;
        self.cart.clear();
    }

    async fn checkout(&mut self) {
        if self.cart.is_empty() {
            self.add_to_cart().await;
            if self.cart.is_empty() {
                return;
            }
        }
        if self.with_socket && !self.listener.as_ref().is_some_and(Listener::is_open) {
            self.connect().await;
        }
        self.checkouts += 1;
        let key = format!("load-{}-{}-{}", self.context.run, self.user.index, self.checkouts);
        let body = json!({
            "paymentMethod": PAYMENT_METHOD,
            "shippingAddress": {"line1": "1 Load Street", "city": "Testville", "postalCode": "00001", "country": "US"},
        });
        let started = Instant::now();
        // A retry with the same key names the same order, so an unavailable server or a lost answer places none twice.
        for _ in 0..3 {
            let answer = self.call(Op::Checkout, Method::POST, "/api/cart/checkout", Some(&body), Some(&key)).await;
            match answer {
                Some(a) if a.status == 202 => {
                    let Some(id) = a.body["id"].as_str() else { return };
                    self.context.recorder.order_placed();
                    self.cart.clear();
                    return self.follow(id, started).await;
                }
                Some(a) if a.status == 503 || a.status == 429 => tokio::time::sleep(a.wait()).await,
                None => tokio::time::sleep(Duration::from_millis(500)).await,
                Some(a) => {
                    if a.code() == "cart_empty" {
                        self.cart.clear();
                    }
                    return;
                }
            }
        }
    }

    /// Waits for the order to be paid or fail: the push on the socket (asking once when none came in a while),
    /// or polling with backoff.
    async fn follow(&mut self, id: &str, started: Instant) {
        let recorder = self.context.recorder.clone();
        let mut poll_wait = POLL_FIRST;
        while started.elapsed() < ORDER_TIMEOUT {
            let pushed = match self.listener.as_mut() {
                Some(listener) => Some(tokio::time::timeout(PUSH_WAIT, listener.next_status(id)).await),
                None => None,
            };
            let (status, by) = match pushed {
                Some(Ok(Some(status))) => (Some(status), Learnt::Push),
                // The socket ended: poll from now on, and open another before the next checkout.
                Some(Ok(None)) => {
                    self.listener = None;
                    (self.poll(id).await, Learnt::Polling)
                }
                Some(Err(_)) => (self.poll(id).await, Learnt::Polling),
                None => {
                    tokio::time::sleep(poll_wait).await;
                    poll_wait = (poll_wait * 2).min(POLL_MAX);
                    (self.poll(id).await, Learnt::Polling)
                }
            };
            match status.as_deref().map(settled) {
                Some(Settled::Paid) => return recorder.order_paid(started.elapsed(), by),
                Some(Settled::Failed) => {
                    recorder.order_failed(status.as_deref().unwrap_or_default());
                    // A failed order leaves its lines in the cart: start again from an empty one.
                    return self.clear_cart().await;
                }
                Some(Settled::InProgress) | None => {}
            }
        }
    }

    async fn poll(&mut self, id: &str) -> Option<String> {
        let answer = self.call(Op::OrderPoll, Method::GET, &format!("/api/orders/{id}"), None, None).await?;
        answer.body["status"].as_str().map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_print() {
        let mix: Mix = "browse=40, product=25,cart=20,checkout=10,search=5".parse().unwrap();
        assert_eq!(mix.total(), 100);
        assert_eq!(mix.to_string(), "browse=40,search=5,product=25,cart=20,checkout=10");
        assert_eq!(Mix::default().to_string(), "browse=35,search=10,product=25,cart=20,checkout=10");
        assert_eq!("checkout=1".parse::<Mix>().unwrap().to_string(), "checkout=1");
        for bad in ["", "browse=0", "browse", "browse=x", "dance=1", "browse=-1"] {
            assert!(bad.parse::<Mix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_roll_lands_on_an_action_by_its_weight() {
        let mix: Mix = "browse=2,cart=1,checkout=3".parse().unwrap();
        let picked: Vec<Action> = (0..mix.total()).map(|roll| mix.pick(roll)).collect();
        use Action::*;
        assert_eq!(picked, [Browse, Browse, Cart, Checkout, Checkout, Checkout]);
    }
}
