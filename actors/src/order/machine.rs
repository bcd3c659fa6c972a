//! The order saga as a pure state machine: given where an order is and
//! what happened (a reply arrived, or the step's deadline passed), what its
//! next statuses are, which commands to send, and when to give up waiting.
//! No I/O here, so every path is unit-tested and benchmarked directly.
//!
//! ```text
//! PENDING --InventoryReserved--> INVENTORY_RESERVED --PaymentAuthorized--> PAYMENT_AUTHORIZED -> CONFIRMED
//!    |                                 |
//!    InventoryRejected                 PaymentDeclined / deadline
//!    v                                 v
//! REJECTED(OUT_OF_STOCK)           COMPENSATING(reason) --InventoryReleased--> REJECTED(reason)
//!                                      |  ^
//!    PENDING --deadline--> COMPENSATING(TIMEOUT)
//!                                      |  | deadline: send the release again, backing off
//!                                      v
//!                                  FAILED(reason) after the last attempt (an operator's turn);
//!                                  a release that still arrives then ends it REJECTED.
//! ```
//!
//! Every waiting status has a deadline. Compensation after a timeout also
//! voids the payment, so an authorization that arrives late is cancelled.

use crate::events::{
    AuthorizePayment, Envelope, Event, OrderCreated, OrderLine, OrderStatus, OrderStatusChanged,
    RejectReason, ReleaseInventory, ReserveInventory, VoidPayment,
};
use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;

/// How long steps may take and how hard compensation tries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SagaPolicy {
    /// How long to wait for stock or payment before compensating.
    pub step_timeout: Duration,
    /// How long to wait for the first release to be acknowledged; each
    /// further attempt waits twice as long (with jitter), up to `retry_max`.
    pub retry_base: Duration,
    /// Longest wait between compensation attempts.
    pub retry_max: Duration,
    /// Compensation attempts before the saga is FAILED.
    pub max_attempts: i32,
}

impl Default for SagaPolicy {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(30),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(120),
            max_attempts: 6,
        }
    }
}

impl SagaPolicy {
    /// The wait before compensation attempt `attempt` (1-based) is retried.
    pub fn retry_wait(&self, attempt: i32) -> Duration {
        let doublings = attempt.saturating_sub(1).clamp(0, 16) as u32;
        self.retry_base
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.retry_max)
    }
}

/// Everything the saga needs to decide and to act, as persisted in
/// `orders.orders`.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaState {
    /// The order.
    pub order_id: Uuid,
    /// Who placed it.
    pub customer_id: String,
    /// Ties all of the order's messages together.
    pub correlation_id: Uuid,
    /// Current status.
    pub status: OrderStatus,
    /// Rejection (or compensation) reason.
    pub reason: Option<RejectReason>,
    /// Sequence number of the current status.
    pub seq: i32,
    /// What was ordered.
    pub items: Vec<OrderLine>,
    /// Total in cents.
    pub total_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The simulated card.
    pub payment_token: String,
    /// When the current step gives up; `None` once terminal.
    pub deadline_at: Option<DateTime<Utc>>,
    /// Compensation attempts sent in the current status (0 outside
    /// COMPENSATING); with `seq`, the saga's optimistic-lock version.
    pub attempts: i32,
}

/// What an event does to an order.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Statuses entered, in order (none when only retrying compensation).
    pub statuses: Vec<(OrderStatus, Option<RejectReason>)>,
    /// Commands to send to other services.
    pub commands: Vec<Event>,
    /// Compensation attempts after this step.
    pub attempts: i32,
    /// How long the next step may take; `None` when the saga is done.
    pub wait: Option<Duration>,
}

impl SagaState {
    /// The first messages of a new order: its creation and the request for stock.
    pub fn opening_messages(&self) -> Vec<Envelope> {
        vec![
            self.envelope(Event::OrderCreated(OrderCreated {
                customer_id: self.customer_id.clone(),
                items: self.items.clone(),
                total_cents: self.total_cents,
                currency: self.currency.clone(),
                status: OrderStatusChanged {
                    status: self.status,
                    reason: None,
                    seq: self.seq,
                    customer_id: None,
                },
            })),
            self.envelope(Event::ReserveInventory(ReserveInventory {
                items: self.items.clone(),
            })),
        ]
    }

    /// Decides what `reply` does to this order; `None` if it does nothing
    /// (a duplicate, a late reply, or one the current status does not expect).
    pub fn next(&self, reply: &Event, policy: &SagaPolicy) -> Option<Transition> {
        use OrderStatus::*;
        let transition = match (self.status, reply) {
            (Pending, Event::InventoryReserved(_)) => Transition {
                statuses: vec![(InventoryReserved, None)],
                commands: vec![Event::AuthorizePayment(AuthorizePayment {
                    customer_id: self.customer_id.clone(),
                    amount_cents: self.total_cents,
                    currency: self.currency.clone(),
                    payment_token: self.payment_token.clone(),
                })],
                attempts: 0,
                wait: Some(policy.step_timeout),
            },
            (Pending, Event::InventoryRejected(rejected)) => Transition {
                statuses: vec![(Rejected, Some(rejected.reason))],
                commands: vec![],
                attempts: 0,
                wait: None,
            },
            (InventoryReserved, Event::PaymentAuthorized(_)) => Transition {
                statuses: vec![(PaymentAuthorized, None), (Confirmed, None)],
                commands: vec![],
                attempts: 0,
                wait: None,
            },
            (InventoryReserved, Event::PaymentDeclined(_)) => {
                self.compensate(RejectReason::PaymentDeclined, policy)
            }
            // The release is what compensation waits for; once it is in,
            // the order is over — also when the saga had already given up.
            (Compensating | Failed, Event::InventoryReleased(_)) => Transition {
                statuses: vec![(Rejected, self.reason)],
                commands: vec![],
                attempts: 0,
                wait: None,
            },
            _ => return None,
        };
        Some(transition)
    }

    /// Decides what the passing of the current deadline does; `None` if
    /// there is no deadline (the saga is done).
    pub fn on_deadline(&self, policy: &SagaPolicy) -> Option<Transition> {
        use OrderStatus::*;
        match self.status {
            Pending | InventoryReserved | PaymentAuthorized => {
                Some(self.compensate(RejectReason::Timeout, policy))
            }
            Compensating if self.attempts >= policy.max_attempts => Some(Transition {
                statuses: vec![(Failed, self.reason)],
                commands: vec![],
                attempts: self.attempts,
                wait: None,
            }),
            Compensating => {
                let reason = self.reason.unwrap_or(RejectReason::Timeout);
                Some(Transition {
                    statuses: vec![],
                    commands: compensation_commands(reason),
                    attempts: self.attempts + 1,
                    wait: Some(policy.retry_wait(self.attempts + 1)),
                })
            }
            Confirmed | Rejected | Failed => None,
        }
    }

    /// Enters COMPENSATING: give the stock back and, after a timeout, void
    /// whatever payment may still be authorized.
    fn compensate(&self, reason: RejectReason, policy: &SagaPolicy) -> Transition {
        Transition {
            statuses: vec![(OrderStatus::Compensating, Some(reason))],
            commands: compensation_commands(reason),
            attempts: 1,
            wait: Some(policy.retry_wait(1)),
        }
    }

    /// The state after `transition` at time `now`, and the messages it
    /// sends: one lifecycle event per status entered, then its commands.
    pub fn apply(&self, transition: &Transition, now: DateTime<Utc>) -> (SagaState, Vec<Envelope>) {
        let mut next = self.clone();
        let mut messages =
            Vec::with_capacity(transition.statuses.len() + transition.commands.len());
        for (status, reason) in &transition.statuses {
            next.seq += 1;
            next.status = *status;
            next.reason = *reason;
            let change = OrderStatusChanged {
                status: *status,
                reason: *reason,
                seq: next.seq,
                customer_id: Some(self.customer_id.clone()),
            };
            let event = match status {
                OrderStatus::Confirmed => Event::OrderConfirmed(change),
                OrderStatus::Rejected | OrderStatus::Failed => Event::OrderRejected(change),
                _ => Event::OrderStatusChanged(change),
            };
            messages.push(next.envelope(event));
        }
        next.attempts = transition.attempts;
        next.deadline_at = transition
            .wait
            .and_then(|wait| chrono::Duration::from_std(wait).ok())
            .map(|wait| now + wait);
        messages.extend(
            transition
                .commands
                .iter()
                .cloned()
                .map(|c| next.envelope(c)),
        );
        (next, messages)
    }

    fn envelope(&self, event: Event) -> Envelope {
        Envelope::new(self.order_id, self.correlation_id, event)
    }
}

/// What compensating for `reason` sends: the stock back always; a void of
/// the payment when the payment's outcome is unknown (a timeout).
fn compensation_commands(reason: RejectReason) -> Vec<Event> {
    let mut commands = vec![Event::ReleaseInventory(ReleaseInventory { reason })];
    if reason == RejectReason::Timeout {
        commands.push(Event::VoidPayment(VoidPayment { reason }));
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::*;

    fn pending() -> SagaState {
        // Fixed ids, so two runs can be compared.
        SagaState {
            order_id: Uuid::from_u128(1),
            customer_id: "alice".into(),
            correlation_id: Uuid::from_u128(2),
            status: OrderStatus::Pending,
            reason: None,
            seq: 1,
            items: vec![OrderLine {
                product_id: Uuid::from_u128(3),
                quantity: 2,
            }],
            total_cents: 2900,
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
            deadline_at: None,
            attempts: 0,
        }
    }

    fn policy() -> SagaPolicy {
        SagaPolicy {
            max_attempts: 3,
            ..SagaPolicy::default()
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn reserved() -> Event {
        Event::InventoryReserved(InventoryReserved { items: vec![] })
    }
    fn authorized() -> Event {
        Event::PaymentAuthorized(PaymentAuthorized {
            authorization_id: Uuid::new_v4(),
            amount_cents: 2900,
        })
    }
    fn declined() -> Event {
        Event::PaymentDeclined(PaymentDeclined {
            decline_code: "card_declined".into(),
        })
    }
    fn released() -> Event {
        Event::InventoryReleased(InventoryReleased { items: vec![] })
    }

    /// What can happen to a saga.
    enum Step {
        Reply(Event),
        Deadline,
    }

    /// Feeds `steps` in order, returning the final state and every message sent.
    fn run_steps(steps: Vec<Step>) -> (SagaState, Vec<Envelope>) {
        let mut state = pending();
        let mut sent = state.opening_messages();
        for step in steps {
            let transition = match step {
                Step::Reply(reply) => state.next(&reply, &policy()),
                Step::Deadline => state.on_deadline(&policy()),
            };
            if let Some(transition) = transition {
                let (next, messages) = state.apply(&transition, now());
                state = next;
                sent.extend(messages);
            }
        }
        (state, sent)
    }

    fn run(replies: &[Event]) -> (SagaState, Vec<Envelope>) {
        run_steps(replies.iter().cloned().map(Step::Reply).collect())
    }

    fn types(sent: &[Envelope]) -> Vec<&'static str> {
        sent.iter().map(|e| e.event.type_name()).collect()
    }

    #[test]
    fn happy_path_confirms_after_stock_and_payment() {
        let (state, sent) = run(&[reserved(), authorized()]);
        assert_eq!(state.status, OrderStatus::Confirmed);
        assert_eq!(state.seq, 4);
        assert_eq!(
            types(&sent),
            [
                "OrderCreated",
                "ReserveInventory",
                "OrderStatusChanged",
                "AuthorizePayment",
                "OrderStatusChanged",
                "OrderConfirmed"
            ]
        );
    }

    #[test]
    fn out_of_stock_rejects_without_payment() {
        let rejected = Event::InventoryRejected(InventoryRejected {
            reason: RejectReason::OutOfStock,
            product_id: None,
            message: "none left".into(),
        });
        let (state, sent) = run(&[rejected]);
        assert_eq!(state.status, OrderStatus::Rejected);
        assert_eq!(state.reason, Some(RejectReason::OutOfStock));
        assert!(!types(&sent).contains(&"AuthorizePayment"));
    }

    #[test]
    fn payment_decline_releases_reserved_stock_before_rejecting() {
        let (state, sent) = run(&[reserved(), declined()]);
        assert_eq!(state.status, OrderStatus::Compensating);
        assert_eq!(types(&sent).last(), Some(&"ReleaseInventory"));
        let (state, _) = run(&[reserved(), declined(), released()]);
        assert_eq!(state.status, OrderStatus::Rejected);
        assert_eq!(state.reason, Some(RejectReason::PaymentDeclined));
    }

    #[test]
    fn duplicate_and_out_of_order_replies_change_nothing() {
        let once = run(&[reserved(), authorized()]);
        let twice = run(&[
            reserved(),
            reserved(),
            authorized(),
            authorized(),
            declined(),
        ]);
        assert_eq!(once.0, twice.0);
        assert_eq!(types(&once.1), types(&twice.1));
        // A payment reply before stock is reserved is not acted on.
        assert_eq!(pending().next(&authorized(), &policy()), None);
    }

    #[test]
    fn sequence_numbers_increase_by_one_per_status() {
        let (_, sent) = run(&[reserved(), declined(), released()]);
        let seqs: Vec<i32> = sent
            .iter()
            .filter_map(|e| e.event.status_change().map(|c| c.seq))
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }

    #[test]
    fn every_message_is_keyed_by_the_order() {
        let (state, sent) = run(&[reserved(), authorized()]);
        assert!(sent.iter().all(|e| e.order_id == state.order_id));
        assert!(sent
            .iter()
            .all(|e| e.correlation_id == state.correlation_id));
    }

    #[test]
    fn waiting_steps_have_deadlines_and_terminal_ones_do_not() {
        let (reserved_state, _) = run(&[reserved()]);
        assert_eq!(
            reserved_state.deadline_at,
            Some(now() + chrono::Duration::from_std(policy().step_timeout).unwrap())
        );
        let (confirmed, _) = run(&[reserved(), authorized()]);
        assert_eq!(confirmed.deadline_at, None);
        assert_eq!(confirmed.on_deadline(&policy()), None);
    }

    #[test]
    fn timeout_while_pending_releases_stock_and_voids_payment_then_rejects() {
        let (state, sent) = run_steps(vec![Step::Deadline]);
        assert_eq!(state.status, OrderStatus::Compensating);
        assert_eq!(state.reason, Some(RejectReason::Timeout));
        assert_eq!(
            &types(&sent)[2..],
            ["OrderStatusChanged", "ReleaseInventory", "VoidPayment"]
        );
        let (state, _) = run_steps(vec![Step::Deadline, Step::Reply(released())]);
        assert_eq!(state.status, OrderStatus::Rejected);
        assert_eq!(state.reason, Some(RejectReason::Timeout));
    }

    #[test]
    fn late_replies_after_a_timeout_are_not_acted_on() {
        let (state, sent) = run_steps(vec![
            Step::Reply(reserved()),
            Step::Deadline,
            Step::Reply(authorized()),
            Step::Reply(reserved()),
        ]);
        assert_eq!(state.status, OrderStatus::Compensating);
        // The authorization that came late is covered by the void already sent.
        assert!(types(&sent).contains(&"VoidPayment"));
        assert!(!types(&sent).contains(&"OrderConfirmed"));
    }

    #[test]
    fn unacknowledged_compensation_is_retried_with_backoff_then_fails() {
        let mut steps = vec![Step::Reply(reserved()), Step::Reply(declined())];
        steps.extend((0..policy().max_attempts).map(|_| Step::Deadline));
        let (state, sent) = run_steps(steps);
        assert_eq!(state.status, OrderStatus::Failed);
        assert_eq!(state.reason, Some(RejectReason::PaymentDeclined));
        let releases = types(&sent)
            .iter()
            .filter(|t| **t == "ReleaseInventory")
            .count();
        assert_eq!(releases as i32, policy().max_attempts);
        // A release that still arrives resolves the failure.
        let (resolved, _) = {
            let transition = state.next(&released(), &policy()).expect("a step");
            state.apply(&transition, now())
        };
        assert_eq!(resolved.status, OrderStatus::Rejected);
    }

    #[test]
    fn retry_waits_double_up_to_the_cap() {
        let policy = SagaPolicy {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(5),
            ..SagaPolicy::default()
        };
        let waits: Vec<u64> = (1..=5).map(|a| policy.retry_wait(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
    }
}
