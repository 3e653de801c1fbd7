//! Payments: one per order (its id derives from the order's), charged through the provider with the payment id as
//! idempotency key, so retries and recoveries can never capture twice.
//!
//! A transient failure (a timeout, a provider error) never proves that nothing was charged: the charge may have been
//! captured and only its answer lost. So when the attempts run out, the payment is not failed yet; the provider is
//! asked what it holds under the payment's key, and the payment ends captured or failed according to its answer.
//!
//! Even "no charge" is only true when asked: a request still in flight at the provider may be captured afterwards.
//! So a payment failed that way looks its key up once more after a while (`recheck_at`), and a capture learned of
//! for a failed payment, then or at any time, is recorded and refunded: money is never kept for a failed payment.

use serde::{Deserialize, Serialize};

use super::{Aggregate, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Pending,
    Captured,
    Failed,
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// A payment failed because the provider held no charge under its key looks the key up again at this time, in
    /// case a request still in flight was captured late. Cleared once that lookup has answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub recheck_at: Option<Timestamp>,
    /// The recheck is due and its lookup under way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rechecking: bool,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentState {
    pub payment: Option<Payment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The provider holds no charge under the payment's key. When that fails the payment, its key is looked up again
    /// after `recheck_after`, since a request still in flight may yet be captured.
    NotCharged {
        recheck_after: chrono::Duration,
    },
    /// The time for a failed payment's recheck has come.
    Recheck,
    /// Refund whatever was or will be captured; a no-op for failed payments (a capture learned of later is refunded
    /// anyway).
    RequestRefund,
    Refunded {
        refund_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum PaymentEvent {
    Requested {
        payment: Box<Payment>,
    },
    AttemptFailed {
        attempt: u32,
        reason: String,
        at: Timestamp,
    },
    OutcomeUnknown {
        reason: String,
        at: Timestamp,
    },
    Captured {
        charge_id: String,
        at: Timestamp,
    },
    Failed {
        reason: String,
        at: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recheck_at: Option<Timestamp>,
    },
    RecheckStarted {
        at: Timestamp,
    },
    /// The recheck found no charge either: the failure is final.
    NoChargeConfirmed {
        at: Timestamp,
    },
    /// A capture learned of after the payment failed (a request the provider processed late); it is refunded.
    CapturedLate {
        charge_id: String,
        at: Timestamp,
    },
    RefundRequested {
        at: Timestamp,
    },
    Refunded {
        refund_id: String,
        at: Timestamp,
    },
}

/// The provider call a payment's state calls for. `Lookup` asks the provider what it holds under the payment's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentEffect {
    Charge { attempt: u32, amount: i64, currency: String, method: String, order_id: String },
    Lookup,
    Refund { charge_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum PaymentError {
    #[error("payment not found")]
    NotFound,
    #[error("amount must be positive")]
    InvalidAmount,
}

impl Payment {
    /// Whether the payment failed, whatever became of a charge learned of later: an order is never paid by it.
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }
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
            PaymentStatus::Captured | PaymentStatus::Failed if p.refund_requested => {
                p.charge_id.clone().map(|charge_id| PaymentEffect::Refund { charge_id })
            }
            PaymentStatus::Failed if p.rechecking => Some(PaymentEffect::Lookup),
            _ => None,
        }
    }

    /// The recheck of a failed payment, once its time has come.
    pub fn due(&self, now: Timestamp) -> Option<PaymentCommand> {
        let p = self.payment.as_ref()?;
        let due = p.status == PaymentStatus::Failed && !p.rechecking && p.recheck_at.is_some_and(|at| at <= now);
        due.then_some(PaymentCommand::Recheck)
    }

    /// When [`Self::due`] will return the recheck.
    pub fn next_due(&self) -> Option<Timestamp> {
        let p = self.payment.as_ref()?;
        (p.status == PaymentStatus::Failed && !p.rechecking).then_some(p.recheck_at).flatten()
    }

    /// A payment waiting for its recheck stays running, and is restarted after a restart.
    pub fn keep_alive(&self) -> bool {
        self.payment.as_ref().is_some_and(|p| p.recheck_at.is_some())
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
                    recheck_at: None,
                    rechecking: false,
                    created_at: now,
                    updated_at: now,
                };
                Ok(vec![PaymentEvent::Requested { payment: Box::new(payment) }])
            }
            PaymentCommand::Charged { charge_id } => {
                let p = self.get()?;
                Ok(match p.status {
                    S::Pending => vec![PaymentEvent::Captured { charge_id: charge_id.clone(), at: now }],
                    // The provider captured after the payment gave up: the order has failed, so the money goes back.
                    S::Failed if p.charge_id.is_none() => {
                        vec![PaymentEvent::CapturedLate { charge_id: charge_id.clone(), at: now }]
                    }
                    _ => vec![],
                })
            }
            PaymentCommand::Declined { reason } => {
                let p = self.get()?;
                Ok(match p.status {
                    S::Pending => vec![PaymentEvent::Failed { reason: reason.clone(), at: now, recheck_at: None }],
                    S::Failed if p.rechecking => vec![PaymentEvent::NoChargeConfirmed { at: now }],
                    _ => vec![],
                })
            }
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
            PaymentCommand::NotCharged { recheck_after } => {
                let p = self.get()?;
                Ok(match (&p.status, &p.unknown_outcome) {
                    (S::Pending, Some(reason)) => vec![PaymentEvent::Failed {
                        reason: format!("provider unavailable: {reason}"),
                        at: now,
                        recheck_at: Some(now + *recheck_after),
                    }],
                    (S::Failed, _) if p.rechecking => vec![PaymentEvent::NoChargeConfirmed { at: now }],
                    _ => vec![],
                })
            }
            PaymentCommand::Recheck => Ok(match self.due(now) {
                Some(_) => vec![PaymentEvent::RecheckStarted { at: now }],
                None => vec![],
            }),
            PaymentCommand::RequestRefund => {
                let p = self.get()?;
                let refundable = matches!(p.status, S::Pending | S::Captured) && !p.refund_requested;
                Ok(if refundable { vec![PaymentEvent::RefundRequested { at: now }] } else { vec![] })
            }
            PaymentCommand::Refunded { refund_id } => {
                let p = self.get()?;
                let refundable = p.status == S::Captured || (p.status == S::Failed && p.charge_id.is_some());
                Ok(if refundable {
                    vec![PaymentEvent::Refunded { refund_id: refund_id.clone(), at: now }]
                } else {
                    vec![]
                })
            }
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
            PaymentEvent::Failed { reason, at, recheck_at } => {
                p.status = PaymentStatus::Failed;
                p.failure = Some(reason.clone());
                p.unknown_outcome = None;
                p.recheck_at = *recheck_at;
                p.updated_at = *at;
            }
            PaymentEvent::RecheckStarted { at } => {
                p.rechecking = true;
                p.updated_at = *at;
            }
            PaymentEvent::NoChargeConfirmed { at } => {
                p.recheck_at = None;
                p.rechecking = false;
                p.updated_at = *at;
            }
            PaymentEvent::CapturedLate { charge_id, at } => {
                p.charge_id = Some(charge_id.clone());
                p.refund_requested = true;
                p.recheck_at = None;
                p.rechecking = false;
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
            PaymentEvent::RecheckStarted { .. } => "payment.recheck_started",
            PaymentEvent::NoChargeConfirmed { .. } => "payment.no_charge_confirmed",
            PaymentEvent::CapturedLate { .. } => "payment.captured_late",
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

    fn not_charged() -> PaymentCommand {
        PaymentCommand::NotCharged { recheck_after: chrono::Duration::minutes(5) }
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
        let before = chrono::Utc::now();
        run(&mut s, not_charged());
        let p = s.payment.as_ref().unwrap();
        assert_eq!((p.status, p.failure.as_deref()), (PaymentStatus::Failed, Some("provider unavailable: timeout")));
        assert!(p.failed());
        // Failed, but a request still in flight may be captured yet: the key is looked up again in five minutes.
        assert!(p.recheck_at.is_some_and(|at| at >= before + chrono::Duration::minutes(5)));
        assert_eq!(s.next_effect(), None);
        assert!(s.keep_alive());
        assert_eq!(s.due(before), None);
        let later = before + chrono::Duration::minutes(6);
        let recheck = s.due(later).expect("due after five minutes");
        for e in s.decide("pay-1", &recheck, later).unwrap() {
            s.apply(&e);
        }
        assert_eq!(s.next_effect(), Some(PaymentEffect::Lookup));
        assert_eq!(s.due(later), None, "one recheck at a time");
        // Still no charge: the failure is final and nothing is left to do.
        run(&mut s, not_charged());
        let p = s.payment.as_ref().unwrap();
        assert_eq!((p.status, p.recheck_at, p.rechecking), (PaymentStatus::Failed, None, false));
        assert_eq!((s.next_effect(), s.keep_alive(), s.due(later)), (None, false, None));
    }

    #[test]
    fn a_capture_after_the_payment_failed_is_recorded_and_refunded() {
        let mut s = exhausted();
        run(&mut s, not_charged());
        // The provider processes a timed-out request after the lookup found nothing; the recheck finds its capture.
        let later = chrono::Utc::now() + chrono::Duration::minutes(6);
        let recheck = s.due(later).unwrap();
        for e in s.decide("pay-1", &recheck, later).unwrap() {
            s.apply(&e);
        }
        let events = s.decide("pay-1", &PaymentCommand::Charged { charge_id: "ch_late".into() }, later).unwrap();
        assert!(matches!(&events[..], [PaymentEvent::CapturedLate { charge_id, .. }] if charge_id == "ch_late"));
        events.iter().for_each(|e| s.apply(e));
        let p = s.payment.as_ref().unwrap();
        assert_eq!((p.status, p.charge_id.as_deref()), (PaymentStatus::Failed, Some("ch_late")));
        assert!(p.failed() && !s.keep_alive());
        assert_eq!(s.next_effect(), Some(PaymentEffect::Refund { charge_id: "ch_late".into() }));
        // The same capture learned of again (a provider's notification, say) changes nothing.
        run(&mut s, PaymentCommand::Charged { charge_id: "ch_late".into() });
        run(&mut s, PaymentCommand::RequestRefund);
        run(&mut s, PaymentCommand::Refunded { refund_id: "re_1".into() });
        let p = s.payment.as_ref().unwrap();
        assert_eq!((p.status, p.refund_id.as_deref()), (PaymentStatus::Refunded, Some("re_1")));
        assert!(p.failed(), "refunded, and still a failed payment for its order");
        assert_eq!(s.next_effect(), None);
    }

    #[test]
    fn a_capture_learned_of_for_a_declined_payment_is_refunded() {
        let mut s = requested();
        run(&mut s, PaymentCommand::Declined { reason: "card_declined".into() });
        let p = s.payment.as_ref().unwrap();
        assert_eq!((p.status, p.recheck_at), (PaymentStatus::Failed, None), "a decline is an answer: no recheck");
        run(&mut s, PaymentCommand::Charged { charge_id: "ch_odd".into() });
        assert_eq!(s.next_effect(), Some(PaymentEffect::Refund { charge_id: "ch_odd".into() }));
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
        run(&mut s, not_charged());
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
