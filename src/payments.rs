//! The payment provider interface, the simulated provider used by default, and the effects that let a payment
//! actor talk to the provider.
//!
//! Simulated payment methods, in the spirit of Stripe's test cards:
//!
//! | method | outcome |
//! |---|---|
//! | `pm_card_visa`, `pm_card_mastercard` | captured |
//! | `pm_card_chargeDeclined` | declined: `card_declined` |
//! | `pm_card_chargeDeclinedInsufficientFunds` | declined: `insufficient_funds` |
//! | `pm_card_flaky` | fails transiently twice, then captured (exercises retries) |
//! | `pm_card_timeout` | never answers: times out on every attempt; the lookup finds no charge, the payment fails |
//! | `pm_card_lostResponse` | captured, but every answer is lost: times out on every attempt; the lookup finds the capture |
//! | `pm_card_lateCapture` | times out on every attempt and the lookup finds no charge, but the provider captures right after answering it: the recheck finds the capture, which is refunded |
//! | anything else | declined: `invalid_payment_method` |
//!
//! When the attempts run out without an answer, [`PaymentEffects`] asks the provider for the charge by its
//! idempotency key ([`PaymentProvider::lookup`]) instead of declaring the payment failed; a payment failed because
//! the lookup found nothing asks once more after `recheck_after`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::actors::{Effects, Entity};
use crate::domain::payment::{PaymentCommand, PaymentEffect, PaymentState};
use crate::domain::Timestamp;
use crate::store::ReadModel;

impl Entity for PaymentState {
    type Effect = PaymentEffect;

    fn read_model(&self) -> Option<ReadModel> {
        self.payment.clone().map(ReadModel::Payment)
    }

    fn next_effect(&self) -> Option<PaymentEffect> {
        PaymentState::next_effect(self)
    }

    fn due(&self, now: Timestamp) -> Option<PaymentCommand> {
        PaymentState::due(self, now)
    }

    fn next_due(&self) -> Option<Timestamp> {
        PaymentState::next_due(self)
    }

    fn keep_alive(&self) -> bool {
        PaymentState::keep_alive(self)
    }
}

#[derive(Debug, Clone)]
pub struct ChargeRequest {
    /// The same key always means the same charge: the provider never captures twice for one key.
    pub idempotency_key: String,
    pub order_id: String,
    pub amount: i64,
    pub currency: String,
    pub method: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Captured { charge_id: String },
    Declined { reason: String },
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("payment provider error: {0}")]
pub struct ProviderError(pub String);

#[async_trait]
pub trait PaymentProvider: Send + Sync {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError>;
    async fn refund(&self, charge_id: &str, idempotency_key: &str) -> Result<String, ProviderError>;
    /// What became of the charge made with `idempotency_key`, asked when its answer never came. `None` means the
    /// provider holds no charge under the key now; a request still in flight may still be captured afterwards, which
    /// is why a payment failed on `None` asks again later and refunds any capture it learns of.
    async fn lookup(&self, idempotency_key: &str) -> Result<Option<ChargeOutcome>, ProviderError>;
}

/// A captured charge as the simulated provider's ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerCharge {
    pub charge_id: String,
    pub order_id: String,
    pub amount: i64,
    pub refunded: bool,
}

#[derive(Default)]
struct Ledger {
    by_key: HashMap<String, LedgerCharge>,
    attempts: HashMap<String, u32>,
    refunds: HashMap<String, String>,
    /// Requests received but not processed yet (`pm_card_lateCapture`): each is captured right after a lookup of its
    /// key has answered that there is no charge.
    in_flight: HashMap<String, ChargeRequest>,
    /// Every key the ledger holds, oldest first, with when it was first seen: forgotten after the retention.
    seen: VecDeque<(Instant, String)>,
}

impl Ledger {
    /// Notes a key the first time it is booked, and forgets the keys older than `retention`.
    fn remember(&mut self, key: &str, retention: Duration) {
        let now = Instant::now();
        self.seen.push_back((now, key.to_string()));
        while let Some((at, key)) = self.seen.front() {
            if now.duration_since(*at) <= retention {
                break;
            }
            self.by_key.remove(key);
            self.attempts.remove(key);
            self.refunds.remove(key);
            self.seen.pop_front();
        }
    }
}

/// In-memory provider with configurable latency; its ledger lets tests check what was really charged.
///
/// Like a real provider, it keeps a key (its charge, attempts and refund) for a limited time, so its memory is
/// bounded by the payments of that window rather than by every payment ever made.
pub struct SimulatedProvider {
    latency: Duration,
    retention: Duration,
    ledger: Mutex<Ledger>,
    /// While true, charges wait before deciding: tests hold a payment in flight for as long as they need.
    held: tokio::sync::watch::Sender<bool>,
}

impl SimulatedProvider {
    /// Keys are kept for a day, as real providers keep idempotency keys.
    pub fn new(latency: Duration) -> Self {
        Self::with_retention(latency, Duration::from_secs(24 * 3600))
    }

    /// Keys are kept for `retention` after they are first booked.
    pub fn with_retention(latency: Duration, retention: Duration) -> Self {
        Self { latency, retention, ledger: Mutex::new(Ledger::default()), held: tokio::sync::watch::Sender::new(false) }
    }

    /// Charges from now on wait, after their latency, until [`Self::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Lets held charges go on.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides and books a charge: the same key always gets the same capture.
    fn book(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        Self::book_in(&mut self.ledger(), request, self.retention)
    }

    fn book_in(
        ledger: &mut Ledger,
        request: &ChargeRequest,
        retention: Duration,
    ) -> Result<ChargeOutcome, ProviderError> {
        if let Some(existing) = ledger.by_key.get(&request.idempotency_key) {
            return Ok(ChargeOutcome::Captured { charge_id: existing.charge_id.clone() });
        }
        if !ledger.attempts.contains_key(&request.idempotency_key) {
            ledger.remember(&request.idempotency_key, retention);
        }
        let attempt = ledger.attempts.entry(request.idempotency_key.clone()).or_default();
        *attempt += 1;
        let capture = match request.method.as_str() {
            "pm_card_visa" | "pm_card_mastercard" | "pm_card_lostResponse" | "pm_card_lateCapture" => true,
            "pm_card_flaky" if *attempt > 2 => true,
            "pm_card_flaky" => return Err(ProviderError("processing_error".into())),
            "pm_card_chargeDeclined" => return Ok(ChargeOutcome::Declined { reason: "card_declined".into() }),
            "pm_card_chargeDeclinedInsufficientFunds" => {
                return Ok(ChargeOutcome::Declined { reason: "insufficient_funds".into() })
            }
            _ => false,
        };
        if !capture {
            return Ok(ChargeOutcome::Declined { reason: "invalid_payment_method".into() });
        }
        let charge = ledger.by_key.entry(request.idempotency_key.clone()).or_insert_with(|| LedgerCharge {
            charge_id: format!("ch_{}", uuid::Uuid::new_v4().simple()),
            order_id: request.order_id.clone(),
            amount: request.amount,
            refunded: false,
        });
        Ok(ChargeOutcome::Captured { charge_id: charge.charge_id.clone() })
    }

    /// Every capture made for an order (more than one would be a double charge).
    pub fn captures_for_order(&self, order_id: &str) -> Vec<LedgerCharge> {
        self.ledger().by_key.values().filter(|c| c.order_id == order_id).cloned().collect()
    }
}

#[async_trait]
impl PaymentProvider for SimulatedProvider {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        tokio::time::sleep(self.latency).await;
        // The sender lives as long as the provider, so waiting ends only by a release.
        let _ = self.held.subscribe().wait_for(|held| !held).await;
        if request.method == "pm_card_timeout" {
            return std::future::pending().await;
        }
        if request.method == "pm_card_lateCapture" {
            // Received, and processed only once the payment has given up on it.
            self.ledger().in_flight.entry(request.idempotency_key.clone()).or_insert_with(|| request.clone());
            return std::future::pending().await;
        }
        let outcome = self.book(request);
        if request.method == "pm_card_lostResponse" {
            // Booked, but the answer never reaches the caller.
            std::future::pending::<()>().await;
        }
        outcome
    }

    async fn refund(&self, charge_id: &str, idempotency_key: &str) -> Result<String, ProviderError> {
        tokio::time::sleep(self.latency).await;
        let mut ledger = self.ledger();
        if let Some(refund) = ledger.refunds.get(idempotency_key) {
            return Ok(refund.clone());
        }
        let charge = ledger
            .by_key
            .values_mut()
            .find(|c| c.charge_id == charge_id)
            .ok_or_else(|| ProviderError(format!("no such charge {charge_id}")))?;
        charge.refunded = true;
        let refund_id = format!("re_{}", uuid::Uuid::new_v4().simple());
        ledger.refunds.insert(idempotency_key.to_string(), refund_id.clone());
        ledger.remember(idempotency_key, self.retention);
        Ok(refund_id)
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<ChargeOutcome>, ProviderError> {
        tokio::time::sleep(self.latency).await;
        let mut ledger = self.ledger();
        if let Some(charge) = ledger.by_key.get(idempotency_key) {
            return Ok(Some(ChargeOutcome::Captured { charge_id: charge.charge_id.clone() }));
        }
        // Nothing yet; a request still in flight is processed right after this answer.
        if let Some(request) = ledger.in_flight.remove(idempotency_key) {
            Self::book_in(&mut ledger, &request, self.retention)?;
        }
        Ok(None)
    }
}

/// Calls the provider on behalf of payment actors, with a timeout per call and backoff between attempts.
pub struct PaymentEffects {
    pub provider: std::sync::Arc<dyn PaymentProvider>,
    pub timeout: Duration,
    pub max_attempts: u32,
    /// How long after failing for lack of a charge a payment looks its key up again.
    pub recheck_after: Duration,
}

#[async_trait]
impl Effects<PaymentState> for PaymentEffects {
    async fn run(&self, id: &str, effect: PaymentEffect) -> Result<PaymentCommand, String> {
        match effect {
            PaymentEffect::Charge { attempt, amount, currency, method, order_id } => {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(25u64 << attempt.min(6))).await;
                }
                let request = ChargeRequest { idempotency_key: id.to_string(), order_id, amount, currency, method };
                let outcome = tokio::time::timeout(self.timeout, self.provider.charge(&request)).await;
                Ok(match outcome {
                    Ok(Ok(ChargeOutcome::Captured { charge_id })) => PaymentCommand::Charged { charge_id },
                    Ok(Ok(ChargeOutcome::Declined { reason })) => PaymentCommand::Declined { reason },
                    Ok(Err(e)) => PaymentCommand::TransientFailure { reason: e.0, max_attempts: self.max_attempts },
                    Err(_) => {
                        PaymentCommand::TransientFailure { reason: "timeout".into(), max_attempts: self.max_attempts }
                    }
                })
            }
            PaymentEffect::Lookup => match tokio::time::timeout(self.timeout, self.provider.lookup(id)).await {
                Ok(Ok(Some(ChargeOutcome::Captured { charge_id }))) => Ok(PaymentCommand::Charged { charge_id }),
                Ok(Ok(Some(ChargeOutcome::Declined { reason }))) => Ok(PaymentCommand::Declined { reason }),
                Ok(Ok(None)) => Ok(PaymentCommand::NotCharged {
                    recheck_after: chrono::Duration::from_std(self.recheck_after).unwrap_or(chrono::Duration::days(1)),
                }),
                // Still unknown: asked again after a backoff, for as long as it takes.
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("charge lookup timed out".into()),
            },
            PaymentEffect::Refund { charge_id } => {
                let key = format!("refund-{id}");
                match tokio::time::timeout(self.timeout, self.provider.refund(&charge_id, &key)).await {
                    Ok(Ok(refund_id)) => Ok(PaymentCommand::Refunded { refund_id }),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("refund timed out".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &str, method: &str) -> ChargeRequest {
        ChargeRequest {
            idempotency_key: key.into(),
            order_id: format!("order-{key}"),
            amount: 100,
            currency: "USD".into(),
            method: method.into(),
        }
    }

    #[tokio::test]
    async fn simulated_provider_is_idempotent_per_key() {
        let p = SimulatedProvider::new(Duration::ZERO);
        let a = p.charge(&request("k1", "pm_card_visa")).await.unwrap();
        let b = p.charge(&request("k1", "pm_card_visa")).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(p.captures_for_order("order-k1").len(), 1);
        let declined = p.charge(&request("k2", "pm_card_chargeDeclined")).await.unwrap();
        assert_eq!(declined, ChargeOutcome::Declined { reason: "card_declined".into() });
        assert!(p.charge(&request("k3", "pm_card_flaky")).await.is_err());
        assert!(p.charge(&request("k3", "pm_card_flaky")).await.is_err());
        assert!(matches!(p.charge(&request("k3", "pm_card_flaky")).await, Ok(ChargeOutcome::Captured { .. })));
        let ChargeOutcome::Captured { charge_id } = a else { panic!() };
        let r1 = p.refund(&charge_id, "refund-k1").await.unwrap();
        assert_eq!(p.refund(&charge_id, "refund-k1").await.unwrap(), r1);
        assert!(p.captures_for_order("order-k1")[0].refunded);
    }

    #[tokio::test]
    async fn simulated_provider_forgets_keys_after_its_retention() {
        let p = SimulatedProvider::with_retention(Duration::ZERO, Duration::from_millis(30));
        let ChargeOutcome::Captured { charge_id } = p.charge(&request("k1", "pm_card_visa")).await.unwrap() else {
            panic!("captured")
        };
        p.refund(&charge_id, "refund-k1").await.unwrap();
        assert!(p.lookup("k1").await.unwrap().is_some(), "kept within the retention");
        std::thread::sleep(Duration::from_millis(60));
        p.charge(&request("k2", "pm_card_visa")).await.unwrap();
        assert_eq!(p.lookup("k1").await.unwrap(), None, "forgotten after it");
        assert!(p.captures_for_order("order-k1").is_empty());
        assert_eq!(p.captures_for_order("order-k2").len(), 1);
        let ledger = p.ledger();
        assert_eq!((ledger.by_key.len(), ledger.attempts.len(), ledger.refunds.len(), ledger.seen.len()), (1, 1, 0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_find_lost_captures_and_captures_that_land_after_them() {
        let p = SimulatedProvider::new(Duration::ZERO);
        let wait = Duration::from_secs(5);
        let lost = tokio::time::timeout(wait, p.charge(&request("k1", "pm_card_lostResponse"))).await;
        assert!(lost.is_err(), "the answer never comes");
        let captured = p.captures_for_order("order-k1");
        assert_eq!(captured.len(), 1, "but the charge was captured");
        let found = ChargeOutcome::Captured { charge_id: captured[0].charge_id.clone() };
        assert_eq!(p.lookup("k1").await.unwrap(), Some(found));

        assert!(tokio::time::timeout(wait, p.charge(&request("k2", "pm_card_timeout"))).await.is_err());
        assert_eq!(p.lookup("k2").await.unwrap(), None);
        assert_eq!(p.lookup("k2").await.unwrap(), None, "a request never processed is never captured");

        // A request still in flight when the lookup answers "no charge" is captured right after.
        for _ in 0..2 {
            assert!(tokio::time::timeout(wait, p.charge(&request("k3", "pm_card_lateCapture"))).await.is_err());
        }
        assert!(p.captures_for_order("order-k3").is_empty());
        assert_eq!(p.lookup("k3").await.unwrap(), None);
        let captured = p.captures_for_order("order-k3");
        assert_eq!(captured.len(), 1, "captured once, after the lookup");
        let found = ChargeOutcome::Captured { charge_id: captured[0].charge_id.clone() };
        assert_eq!(p.lookup("k3").await.unwrap(), Some(found));
    }
}
