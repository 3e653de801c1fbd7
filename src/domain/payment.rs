//! Payments: one per order (its id derives from the order's), charged through the provider with the payment id as
//! idempotency key, so retries and recoveries can never capture twice.
//!
//! A transient failure (a timeout, a provider error) never proves that nothing was charged: the charge may have been
//! captured and only its answer lost. So when the attempts run out, the payment is not failed yet; the provider is
//! asked what it holds under the payment's key, and the payment ends captured or failed according to its answer.

use serde::{Deserialize, Serialize};

use super::{Aggregate, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Pending,
    Captured,
    Failed,
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    pub id: String,
    pub order_id: String,
    pub user_id: String,
    pub amount: i64,
    pub currency: String,
    pub method: String,
    pub status: PaymentStatus,
    /// Charge attempts that failed transiently.
    pub attempts: u32,
    pub charge_id: Option<String>,
    pub failure: Option<String>,
    pub refund_requested: bool,
    pub refund_id: Option<String>,
    /// Set when the attempts ran out without an answer (to the last attempt's error) until the provider has said
    /// whether the charge was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_outcome: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentState {
    pub payment: Option<Payment>,
}

#[derive(Debug, Clone)]
pub enum PaymentCommand {
    /// Creates the payment; a repeat is a no-op.
    Request {
        order_id: String,
        user_id: String,
        amount: i64,
        currency: String,
        method: String,
    },
    Charged {
        charge_id: String,
    },
    Declined {
        reason: String,
    },
    /// A timeout or provider error; after `max_attempts` the provider is asked whether the charge was made.
    TransientFailure {
        reason: String,
        max_attempts: u32,
    },
    /// The provider holds no charge under the payment's key (and will accept none any more).
    NotCharged,
    /// Refund whatever was or will be captured; a no-op for failed payments.
    RequestRefund,
    Refunded {
        refund_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum PaymentEvent {
    Requested { payment: Box<Payment> },
    AttemptFailed { attempt: u32, reason: String, at: Timestamp },
    OutcomeUnknown { reason: String, at: Timestamp },
    Captured { charge_id: String, at: Timestamp },
    Failed { reason: String, at: Timestamp },
    RefundRequested { at: Timestamp },
    Refunded { refund_id: String, at: Timestamp },
}

/// The provider call a payment's state calls for. `Lookup` asks the provider what it holds under the payment's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentEffect {
    Charge { attempt: u32, amount: i64, currency: String, method: String, order_id: String },
    Lookup,
    Refund { charge_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("payment not found")]
    NotFound,
    #[error("amount must be positive")]
    InvalidAmount,
}

impl PaymentState {
    fn get(&self) -> Result<&Payment, PaymentError> {
        self.payment.as_ref().ok_or(PaymentError::NotFound)
    }

    pub fn next_effect(&self) -> Option<PaymentEffect> {
        let p = self.payment.as_ref()?;
        match p.status {
            PaymentStatus::Pending if p.unknown_outcome.is_some() => Some(PaymentEffect::Lookup),
            PaymentStatus::Pending => Some(PaymentEffect::Charge {
                attempt: p.attempts,
                amount: p.amount,
                currency: p.currency.clone(),
                method: p.method.clone(),
                order_id: p.order_id.clone(),
            }),
            PaymentStatus::Captured if p.refund_requested => {
                p.charge_id.clone().map(|charge_id| PaymentEffect::Refund { charge_id })
            }
            _ => None,
        }
    }
}

impl Aggregate for PaymentState {
    const KIND: &'static str = "payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;

    fn decide(&self, id: &str, command: &PaymentCommand, now: Timestamp) -> Result<Vec<PaymentEvent>, PaymentError> {
        use PaymentStatus as S;
        match command {
            PaymentCommand::Request { order_id, user_id, amount, currency, method } => {
                if self.payment.is_some() {
                    return Ok(vec![]);
                }
                if *amount <= 0 {
                    return Err(PaymentError::InvalidAmount);
                }
                let payment = Payment {
                    id: id.to_string(),
                    order_id: order_id.clone(),
                    user_id: user_id.clone(),
                    amount: *amount,
                    currency: currency.clone(),
                    method: method.clone(),
                    status: S::Pending,
                    attempts: 0,
                    charge_id: None,
                    failure: None,
                    refund_requested: false,
                    refund_id: None,
                    unknown_outcome: None,
                    created_at: now,
                    updated_at: now,
                };
                Ok(vec![PaymentEvent::Requested { payment: Box::new(payment) }])
            }
            PaymentCommand::Charged { charge_id } => Ok(match self.get()?.status {
                S::Pending => vec![PaymentEvent::Captured { charge_id: charge_id.clone(), at: now }],
                _ => vec![],
            }),
            PaymentCommand::Declined { reason } => Ok(match self.get()?.status {
                S::Pending => vec![PaymentEvent::Failed { reason: reason.clone(), at: now }],
                _ => vec![],
            }),
            PaymentCommand::TransientFailure { reason, max_attempts } => {
                let p = self.get()?;
                if p.status != S::Pending || p.unknown_outcome.is_some() {
                    return Ok(vec![]);
                }
                let attempt = p.attempts + 1;
                let mut events = vec![PaymentEvent::AttemptFailed { attempt, reason: reason.clone(), at: now }];
                if attempt >= *max_attempts {
                    events.push(PaymentEvent::OutcomeUnknown { reason: reason.clone(), at: now });
                }
                Ok(events)
            }
            PaymentCommand::NotCharged => {
                let p = self.get()?;
                Ok(match (&p.status, &p.unknown_outcome) {
                    (S::Pending, Some(reason)) => {
                        vec![PaymentEvent::Failed { reason: format!("provider unavailable: {reason}"), at: now }]
                    }
                    _ => vec![],
                })
            }
            PaymentCommand::RequestRefund => {
                let p = self.get()?;
                let refundable = matches!(p.status, S::Pending | S::Captured) && !p.refund_requested;
                Ok(if refundable { vec![PaymentEvent::RefundRequested { at: now }] } else { vec![] })
            }
            PaymentCommand::Refunded { refund_id } => Ok(match self.get()?.status {
                S::Captured => vec![PaymentEvent::Refunded { refund_id: refund_id.clone(), at: now }],
                _ => vec![],
            }),
        }
    }

    fn apply(&mut self, event: &PaymentEvent) {
        if let PaymentEvent::Requested { payment } = event {
            self.payment = Some(payment.as_ref().clone());
            return;
        }
        let Some(p) = &mut self.payment else { return };
        match event {
            PaymentEvent::Requested { .. } => {}
            PaymentEvent::AttemptFailed { attempt, at, .. } => {
                p.attempts = *attempt;
                p.updated_at = *at;
            }
            PaymentEvent::OutcomeUnknown { reason, at } => {
                p.unknown_outcome = Some(reason.clone());
                p.updated_at = *at;
            }
            PaymentEvent::Captured { charge_id, at } => {
                p.status = PaymentStatus::Captured;
                p.charge_id = Some(charge_id.clone());
                p.unknown_outcome = None;
                p.updated_at = *at;
            }
            PaymentEvent::Failed { reason, at } => {
                p.status = PaymentStatus::Failed;
                p.failure = Some(reason.clone());
                p.unknown_outcome = None;
                p.updated_at = *at;
            }
            PaymentEvent::RefundRequested { at } => {
                p.refund_requested = true;
                p.updated_at = *at;
            }
            PaymentEvent::Refunded { refund_id, at } => {
                p.status = PaymentStatus::Refunded;
                p.refund_id = Some(refund_id.clone());
                p.updated_at = *at;
            }
        }
    }

    fn event_type(event: &PaymentEvent) -> &'static str {
        match event {
            PaymentEvent::Requested { .. } => "payment.requested",
            PaymentEvent::AttemptFailed { .. } => "payment.attempt_failed",
            PaymentEvent::OutcomeUnknown { .. } => "payment.outcome_unknown",
            PaymentEvent::Captured { .. } => "payment.captured",
            PaymentEvent::Failed { .. } => "payment.failed",
            PaymentEvent::RefundRequested { .. } => "payment.refund_requested",
            PaymentEvent::Refunded { .. } => "payment.refunded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &mut PaymentState, c: PaymentCommand) {
        for e in s.decide("pay-1", &c, chrono::Utc::now()).unwrap() {
            s.apply(&e);
        }
    }

    fn requested() -> PaymentState {
        let mut s = PaymentState::default();
        let req = PaymentCommand::Request {
            order_id: "o".into(),
            user_id: "u".into(),
            amount: 500,
            currency: "USD".into(),
            method: "pm_card_visa".into(),
        };
        run(&mut s, req.clone());
        run(&mut s, req);
        s
    }

    fn exhausted() -> PaymentState {
        let mut s = requested();
        for attempt in 0..3 {
            assert!(matches!(s.next_effect(), Some(PaymentEffect::Charge { attempt: a, .. }) if a == attempt));
            run(&mut s, PaymentCommand::TransientFailure { reason: "timeout".into(), max_attempts: 3 });
        }
        s
    }

    #[test]
    fn transient_failures_retry_then_ask_the_provider_before_failing() {
        let mut s = exhausted();
        let p = s.payment.as_ref().unwrap();
        assert_eq!((p.status, p.attempts, p.unknown_outcome.as_deref()), (PaymentStatus::Pending, 3, Some("timeout")));
        assert_eq!(s.next_effect(), Some(PaymentEffect::Lookup));
        // A late transient failure does not start the attempts again.
        run(&mut s, PaymentCommand::TransientFailure { reason: "timeout".into(), max_attempts: 3 });
        assert_eq!(s.payment.as_ref().unwrap().attempts, 3);
        run(&mut s, PaymentCommand::NotCharged);
        let p = s.payment.as_ref().unwrap();
        assert_eq!((p.status, p.failure.as_deref()), (PaymentStatus::Failed, Some("provider unavailable: timeout")));
        assert_eq!(s.next_effect(), None);
        // A late success for a failed payment changes nothing.
        run(&mut s, PaymentCommand::Charged { charge_id: "ch".into() });
        assert_eq!(s.payment.as_ref().unwrap().status, PaymentStatus::Failed);
    }

    #[test]
    fn a_charge_found_by_its_key_is_captured_and_refunded_if_asked() {
        let mut s = exhausted();
        run(&mut s, PaymentCommand::RequestRefund);
        run(&mut s, PaymentCommand::Charged { charge_id: "ch_lost".into() });
        let p = s.payment.as_ref().unwrap();
        assert_eq!((p.status, p.unknown_outcome.as_deref()), (PaymentStatus::Captured, None));
        assert_eq!(s.next_effect(), Some(PaymentEffect::Refund { charge_id: "ch_lost".into() }));
        // A charge that is known cannot be declared missing.
        run(&mut s, PaymentCommand::NotCharged);
        assert_eq!(s.payment.as_ref().unwrap().status, PaymentStatus::Captured);
    }

    #[test]
    fn refund_requested_while_charging_refunds_after_capture() {
        let mut s = requested();
        run(&mut s, PaymentCommand::RequestRefund);
        run(&mut s, PaymentCommand::Charged { charge_id: "ch_1".into() });
        assert_eq!(s.next_effect(), Some(PaymentEffect::Refund { charge_id: "ch_1".into() }));
        run(&mut s, PaymentCommand::Refunded { refund_id: "re_1".into() });
        run(&mut s, PaymentCommand::Refunded { refund_id: "re_2".into() });
        let p = s.payment.as_ref().unwrap();
        assert_eq!((p.status, p.refund_id.as_deref()), (PaymentStatus::Refunded, Some("re_1")));
        assert_eq!(s.next_effect(), None);
    }
}
