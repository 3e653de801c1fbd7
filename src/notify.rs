//! Notifications and transactional emails, derived from committed events, in sinks of the event bus:
//! - the [`Notifier`] runs twice. As the *keeper*, once per deployment, it stores each event's notifications; as the
//!   *pusher*, in every process, it pushes them live to the WebSocket clients connected to its process through the
//!   [`NotificationHub`], storing them first if they are not yet (the store keeps one per event and user, whichever
//!   comes first, and hands that same one to the others), and only for users with a socket open there. Within a
//!   process the two share [`StoredNotifications`], so a notification is stored by one of them and not looked up by
//!   the other;
//! - the [`Emailer`] runs once per deployment. It renders emails from templates and hands them to a [`MailSender`];
//!   the default sender records them in the store, dropping a repeat for the same event and template.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::broadcast;

use crate::bridge::recent::{RecentIds, RecentMap};
use crate::bridge::EventSink;
use crate::domain::order::{Order, OrderStatus};
use crate::domain::payment::Payment;
use crate::http::OpenCounts;
use crate::store::{Email, EventRecord, Notification, NotificationStore, SalesStore, StoreError, UserStore};

/// Notification ids remembered per process so that an event handled again pushes nothing twice.
const PUSHED_IDS: usize = 4096;
/// Orders and payments remembered from the events that created them.
const REMEMBERED: usize = 20_000;

/// What the sinks need of an order or a payment, learnt from the event that created it (`order.placed` carries the
/// order, `payment.requested` the payment): who it belongs to, its lines and amounts, none of which change later. A
/// later event of the same entity reads the store only when its creation was handled before this process started.
pub struct Remembered {
    sales: Arc<dyn SalesStore>,
    orders: Known<Order>,
    payments: Known<Payment>,
}

/// Entities remembered by id.
type Known<T> = Mutex<RecentMap<String, Arc<T>>>;

impl Remembered {
    pub fn new(sales: Arc<dyn SalesStore>) -> Self {
        Self { sales, orders: Mutex::new(RecentMap::new(REMEMBERED)), payments: Mutex::new(RecentMap::new(REMEMBERED)) }
    }

    /// Remembers the order or payment an event creates (once, whichever sink of this process sees it first).
    fn learn(&self, event: &EventRecord) {
        fn remember<T: serde::de::DeserializeOwned>(known: &Known<T>, id: &str, value: &serde_json::Value) {
            let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
            if known.get(id).is_none() {
                if let Ok(created) = serde_json::from_value::<T>(value.clone()) {
                    known.insert(id.to_string(), Arc::new(created));
                }
            }
        }
        match event.event_type.as_str() {
            "order.placed" => remember(&self.orders, entity_id(event), &event.payload["order"]),
            "payment.requested" => remember(&self.payments, entity_id(event), &event.payload["payment"]),
            _ => {}
        }
    }

    /// The order as placed: its owner, lines, total and currency.
    async fn order(&self, id: &str) -> Result<Option<Arc<Order>>, String> {
        if let Some(order) = self.orders.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(Some(order));
        }
        Ok(self.sales.order(id).await.map_err(|e| e.to_string())?.map(Arc::new))
    }

    /// The payment as requested: its owner, order, amount and currency.
    async fn payment(&self, id: &str) -> Result<Option<Arc<Payment>>, String> {
        if let Some(payment) = self.payments.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(Some(payment));
        }
        Ok(self.sales.payment(id).await.map_err(|e| e.to_string())?.map(Arc::new))
    }
}

/// Live feed of stored notifications for the WebSocket sessions of this process.
#[derive(Clone)]
pub struct NotificationHub {
    sender: broadcast::Sender<Notification>,
    pushed: Arc<Mutex<RecentIds<u64>>>,
    /// The sockets open per user in this process.
    watchers: OpenCounts,
}

impl NotificationHub {
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity).0,
            pushed: Arc::new(Mutex::new(RecentIds::new(PUSHED_IDS))),
            watchers: OpenCounts::default(),
        }
    }

    /// The sockets open per user, counted by the WebSocket sessions ([`crate::http::SocketLimits`]).
    pub fn watchers(&self) -> OpenCounts {
        self.watchers.clone()
    }

    /// Whether a socket of `user_id` (of anybody, for `None`: a notification for everyone) is open here.
    fn watched(&self, user_id: Option<&str>) -> bool {
        match user_id {
            Some(user) => self.watchers.is_open(user),
            None => self.watchers.any_open(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.sender.subscribe()
    }

    /// Pushes `n` unless it was pushed recently.
    fn publish(&self, n: Notification) {
        if self.pushed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(n.id) {
            let _ = self.sender.send(n);
        }
    }
}

#[async_trait]
pub trait MailSender: Send + Sync {
    async fn send(&self, email: Email) -> Result<(), StoreError>;
}

/// Records emails instead of sending them (admin `GET /api/admin/emails`); a repeat for the same event is dropped.
pub struct RecordingMailer {
    pub store: Arc<dyn NotificationStore>,
}

#[async_trait]
impl MailSender for RecordingMailer {
    async fn send(&self, email: Email) -> Result<(), StoreError> {
        self.store.insert_email(email).await.map(drop)
    }
}

/// Fills the template's `{{name}}` placeholders from `values` in one pass over the template text. A value is
/// copied in as it is and never scanned again, so text a user chose (a name, a product title, a reason) that looks
/// like a placeholder stays literal text. A placeholder with no value is left as written.
pub fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        out.push_str(&rest[..open]);
        let key = &after[..close];
        match values.iter().find(|(k, _)| *k == key) {
            Some((_, value)) => out.push_str(value),
            None => out.push_str(&rest[open..open + 2 + close + 2]),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

/// Amount in minor units with as many decimals as the currency has: `12.34 USD`, `1234 JPY`, `1.234 KWD`.
pub fn money(amount: i64, currency: &str) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    match crate::domain::currency::minor_units(currency).unwrap_or(2) {
        0 => format!("{sign}{abs} {currency}"),
        digits => {
            let unit = 10u64.pow(u32::from(digits));
            let width = usize::from(digits);
            format!("{sign}{}.{:0width$} {currency}", abs / unit, abs % unit)
        }
    }
}

struct Template {
    name: &'static str,
    subject: &'static str,
    body: &'static str,
}

const ORDER_CONFIRMATION: Template = Template {
    name: "order_confirmation",
    subject: "Your order {{order}} is confirmed",
    body: "Hi {{name}},\n\nthank you for your order {{order}}. We received your payment of {{total}}.\n\n{{lines}}\n\nWe will let you know when it ships.\n",
};
const PAYMENT_FAILED: Template = Template {
    name: "payment_failed",
    subject: "Payment for order {{order}} failed",
    body: "Hi {{name}},\n\nwe could not take payment of {{total}} for order {{order}}: {{reason}}.\nNothing was charged and the items went back on sale.\n",
};
const ORDER_SHIPPED: Template = Template {
    name: "order_shipped",
    subject: "Your order {{order}} is on its way",
    body: "Hi {{name}},\n\nyour order {{order}} has shipped.\n\n{{lines}}\n",
};
const ORDER_REFUNDED: Template = Template {
    name: "order_refunded",
    subject: "Your refund for order {{order}}",
    body: "Hi {{name}},\n\nwe refunded {{total}} for your cancelled order {{order}}.\n",
};

/// Stores and pushes notifications; one in every process ([`crate::bridge::Sinks::every_process`]).
pub struct Notifier {
    notifications: Arc<dyn NotificationStore>,
    sales: Arc<Remembered>,
    hub: NotificationHub,
    stored: StoredNotifications,
    /// The keeper stores every notification; the pusher only those it pushes.
    keeps: bool,
}

/// Notifications stored (or being stored) lately by this process, by event and user: the keeper and the pusher
/// share it, so that whichever comes second waits for the first one's write instead of repeating it.
#[derive(Clone)]
pub struct StoredNotifications(Arc<Mutex<RecentMap<String, Arc<tokio::sync::OnceCell<Notification>>>>>);

impl Default for StoredNotifications {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(RecentMap::new(PUSHED_IDS))))
    }
}

impl StoredNotifications {
    async fn store(&self, store: &dyn NotificationStore, n: Notification) -> Result<Notification, StoreError> {
        let key = format!("{}|{}", n.event_id, n.user_id.as_deref().unwrap_or_default());
        let cell = {
            let mut stored = self.0.lock().unwrap_or_else(|p| p.into_inner());
            match stored.get(&key) {
                Some(cell) => cell,
                None => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    stored.insert(key, cell.clone());
                    cell
                }
            }
        };
        cell.get_or_try_init(|| store.insert_notification(n)).await.cloned()
    }
}

/// Sends transactional emails; one per deployment ([`crate::bridge::Sinks::once`]).
pub struct Emailer {
    pub sales: Arc<Remembered>,
    pub users: Arc<dyn UserStore>,
    pub mailer: Arc<dyn MailSender>,
}

fn entity_id(event: &EventRecord) -> &str {
    event.stream.split_once(':').map_or("", |(_, id)| id)
}

/// The status an order event moves the order to, and the reason given.
fn order_status(event: &EventRecord) -> Result<Option<(OrderStatus, Option<&str>)>, String> {
    match event.event_type.as_str() {
        "order.placed" => Ok(Some((OrderStatus::Pending, None))),
        "order.status_changed" => {
            let status = serde_json::from_value(event.payload["to"].clone()).map_err(|e| e.to_string())?;
            Ok(Some((status, event.payload["reason"].as_str())))
        }
        _ => Ok(None),
    }
}

impl Notifier {
    /// The sink of every process (`keeps: false`): pushes to the sockets open here, storing only what it pushes.
    /// The sink of one process per event (`keeps: true`): stores every notification, and pushes it here too.
    pub fn new(
        notifications: Arc<dyn NotificationStore>,
        sales: Arc<Remembered>,
        hub: NotificationHub,
        stored: StoredNotifications,
        keeps: bool,
    ) -> Self {
        Self { notifications, sales, hub, stored, keeps }
    }

    async fn notify(
        &self,
        event: &EventRecord,
        user_id: Option<&str>,
        title: String,
        body: String,
        data: serde_json::Value,
    ) -> Result<(), String> {
        let n = Notification {
            id: 0,
            user_id: user_id.map(str::to_string),
            kind: event.event_type.clone(),
            title,
            body,
            data,
            event_id: event.id.clone(),
            read: false,
            created_at: event.recorded_at,
        };
        if !self.keeps && !self.hub.watched(user_id) {
            return Ok(());
        }
        let stored = self.stored.store(self.notifications.as_ref(), n).await.map_err(|e| e.to_string())?;
        self.hub.publish(stored);
        Ok(())
    }

    async fn order_status(&self, event: &EventRecord, status: OrderStatus, reason: Option<&str>) -> Result<(), String> {
        let Some(order) = self.sales.order(entity_id(event)).await? else { return Ok(()) };
        let label = status.as_str().replace('_', " ");
        let body = match reason {
            Some(r) => format!("Order {} is now {label}: {r}.", order.id),
            None => format!("Order {} is now {label}.", order.id),
        };
        let data = json!({ "orderId": order.id, "status": status, "reason": reason, "total": order.total, "currency": order.currency });
        self.notify(event, Some(&order.user_id), format!("Order {label}"), body, data).await
    }

    async fn payment(&self, event: &EventRecord) -> Result<(), String> {
        let Some(p) = self.sales.payment(entity_id(event)).await? else { return Ok(()) };
        let (title, body) = match event.event_type.as_str() {
            "payment.captured" => {
                ("Payment received", format!("We received {} for order {}.", money(p.amount, &p.currency), p.order_id))
            }
            "payment.failed" => (
                "Payment failed",
                format!(
                    "Payment for order {} failed: {}.",
                    p.order_id,
                    event.payload["reason"].as_str().unwrap_or("declined")
                ),
            ),
            _ => {
                ("Payment refunded", format!("We refunded {} for order {}.", money(p.amount, &p.currency), p.order_id))
            }
        };
        let data = json!({ "paymentId": p.id, "orderId": p.order_id, "amount": p.amount, "currency": p.currency,
            "outcome": event.event_type.trim_start_matches("payment."), "reason": event.payload.get("reason") });
        self.notify(event, Some(&p.user_id), title.to_string(), body, data).await
    }
}

#[async_trait]
impl EventSink for Notifier {
    async fn handle(&self, event: &EventRecord) -> Result<(), String> {
        self.sales.learn(event);
        if let Some((status, reason)) = order_status(event)? {
            return self.order_status(event, status, reason).await;
        }
        match event.event_type.as_str() {
            "payment.captured" | "payment.failed" | "payment.refunded" => self.payment(event).await,
            "product.created" => {
                let p = &event.payload["product"];
                let title = p["title"].as_str().unwrap_or("a new product");
                let data =
                    json!({ "productId": p["id"], "title": title, "price": p["price"], "currency": p["currency"] });
                self.notify(event, None, "New product".into(), format!("New in the catalog: {title}."), data).await
            }
            _ => Ok(()),
        }
    }
}

impl Emailer {
    async fn email(
        &self,
        event: &EventRecord,
        order: &Order,
        template: &Template,
        reason: Option<&str>,
    ) -> Result<(), String> {
        let Some(user) = self.users.user(&order.user_id).await.map_err(|e| e.to_string())? else { return Ok(()) };
        let lines: Vec<String> = order
            .lines
            .iter()
            .map(|l| format!("  {} x {}  {}", l.quantity, l.title, money(l.line_total, &order.currency)))
            .collect();
        let values = [
            ("name", user.name.clone()),
            ("order", order.id.clone()),
            ("total", money(order.total, &order.currency)),
            ("lines", lines.join("\n")),
            ("reason", reason.unwrap_or("unknown reason").to_string()),
        ];
        let email = Email {
            id: 0,
            to: user.email,
            template: template.name.to_string(),
            subject: render(template.subject, &values),
            body: render(template.body, &values),
            event_id: event.id.clone(),
            created_at: event.recorded_at,
        };
        self.mailer.send(email).await.map_err(|e| e.to_string())
    }
}

#[async_trait]
impl EventSink for Emailer {
    async fn handle(&self, event: &EventRecord) -> Result<(), String> {
        self.sales.learn(event);
        let Some((status, reason)) = order_status(event)? else { return Ok(()) };
        let template = match status {
            OrderStatus::Paid => &ORDER_CONFIRMATION,
            OrderStatus::PaymentFailed => &PAYMENT_FAILED,
            OrderStatus::Shipped => &ORDER_SHIPPED,
            OrderStatus::Refunded => &ORDER_REFUNDED,
            _ => return Ok(()),
        };
        let Some(order) = self.sales.order(entity_id(event)).await? else { return Ok(()) };
        self.email(event, &order, template, reason).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_every_placeholder() {
        let values = [("name", "Ada".to_string()), ("order", "ord_1".to_string()), ("total", money(12345, "USD"))];
        let text = render("Hi {{name}}, {{order}} cost {{total}}.", &values);
        assert_eq!(text, "Hi Ada, ord_1 cost 123.45 USD.");
        for t in [ORDER_CONFIRMATION, PAYMENT_FAILED, ORDER_SHIPPED, ORDER_REFUNDED] {
            let all = [
                ("name", "n".to_string()),
                ("order", "o".to_string()),
                ("total", "t".to_string()),
                ("lines", "l".to_string()),
                ("reason", "r".to_string()),
            ];
            assert!(!render(t.body, &all).contains("{{"), "{}", t.name);
            assert!(!render(t.subject, &all).contains("{{"), "{}", t.name);
        }
        assert_eq!(money(5, "EUR"), "0.05 EUR");
        assert_eq!(money(-1250, "USD"), "-12.50 USD");
        assert_eq!(money(100, "JPY"), "100 JPY");
        assert_eq!(money(1234, "KWD"), "1.234 KWD");
    }

    #[test]
    fn values_are_never_expanded_as_templates() {
        let values = [
            ("name", "{{total}} {{order}} {{orderId}}".to_string()),
            ("order", "ord_1".to_string()),
            ("total", "9.99 USD".to_string()),
            ("lines", "  1 x {{name}}{{reason}}".to_string()),
            ("reason", "{{".to_string()),
        ];
        let text =
            render("Hi {{name}}, order {{order}} of {{total}}:\n{{lines}}\n{{reason}}}} {{unknown}} {{", &values);
        assert_eq!(
            text,
            "Hi {{total}} {{order}} {{orderId}}, order ord_1 of 9.99 USD:\n  1 x {{name}}{{reason}}\n{{}} {{unknown}} {{"
        );
    }
}
