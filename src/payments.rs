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
//! | `pm_card_timeout` | never answers: times out on every attempt, then the payment fails |
//! | anything else | declined: `invalid_payment_method` |

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::actors::{Effects, Entity};
use crate::domain::payment::{PaymentCommand, PaymentEffect, PaymentState};
use crate::store::ReadModel;

impl Entity for PaymentState {
    type Effect = PaymentEffect;

    fn read_model(&self) -> Option<ReadModel> {
        self.payment.clone().map(ReadModel::Payment)
    }

    fn next_effect(&self) -> Option<PaymentEffect> {
        PaymentState::next_effect(self)
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
}

/// In-memory provider with configurable latency; its ledger lets tests check what was really charged.
pub struct SimulatedProvider {
    latency: Duration,
    ledger: Mutex<Ledger>,
}

impl SimulatedProvider {
    pub fn new(latency: Duration) -> Self {
        Self { latency, ledger: Mutex::new(Ledger::default()) }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
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
        let attempt = {
            let mut ledger = self.ledger();
            if let Some(existing) = ledger.by_key.get(&request.idempotency_key) {
                return Ok(ChargeOutcome::Captured { charge_id: existing.charge_id.clone() });
            }
            let n = ledger.attempts.entry(request.idempotency_key.clone()).or_default();
            *n += 1;
            *n
        };
        let capture = match request.method.as_str() {
            "pm_card_visa" | "pm_card_mastercard" => true,
            "pm_card_flaky" if attempt > 2 => true,
            "pm_card_flaky" => return Err(ProviderError("processing_error".into())),
            "pm_card_timeout" => std::future::pending().await,
            "pm_card_chargeDeclined" => return Ok(ChargeOutcome::Declined { reason: "card_declined".into() }),
            "pm_card_chargeDeclinedInsufficientFunds" => {
                return Ok(ChargeOutcome::Declined { reason: "insufficient_funds".into() })
            }
            _ => false,
        };
        if !capture {
            return Ok(ChargeOutcome::Declined { reason: "invalid_payment_method".into() });
        }
        let mut ledger = self.ledger();
        let charge = ledger.by_key.entry(request.idempotency_key.clone()).or_insert_with(|| LedgerCharge {
            charge_id: format!("ch_{}", uuid::Uuid::new_v4().simple()),
            order_id: request.order_id.clone(),
            amount: request.amount,
            refunded: false,
        });
        Ok(ChargeOutcome::Captured { charge_id: charge.charge_id.clone() })
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
        Ok(refund_id)
    }
}

/// Calls the provider on behalf of payment actors, with a timeout per call and backoff between attempts.
pub struct PaymentEffects {
    pub provider: std::sync::Arc<dyn PaymentProvider>,
    pub timeout: Duration,
    pub max_attempts: u32,
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
}
