//! The order saga as a pure state machine: given where an order is and a
//! reply that arrived, what its next statuses are and which commands to
//! send. No I/O here, so every path is unit-tested and benchmarked directly.
//!
//! ```text
//! PENDING --InventoryReserved--> INVENTORY_RESERVED --PaymentAuthorized--> PAYMENT_AUTHORIZED -> CONFIRMED
//!    |                                 |
//!    InventoryRejected                 PaymentDeclined
//!    v                                 v
//! REJECTED(OUT_OF_STOCK)           COMPENSATING(PAYMENT_DECLINED) --InventoryReleased--> REJECTED(PAYMENT_DECLINED)
//! ```

use crate::events::{
    AuthorizePayment, Envelope, Event, OrderCreated, OrderLine, OrderStatus, OrderStatusChanged,
    RejectReason, ReleaseInventory, ReserveInventory,
};
use uuid::Uuid;

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
}

/// What a reply does to an order.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Statuses entered, in order (one or two).
    pub statuses: Vec<(OrderStatus, Option<RejectReason>)>,
    /// Commands to send to other services.
    pub commands: Vec<Event>,
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
                },
            })),
            self.envelope(Event::ReserveInventory(ReserveInventory {
                items: self.items.clone(),
            })),
        ]
    }

    /// Decides what `reply` does to this order; `None` if it does nothing
    /// (a duplicate, or a reply the current status does not expect).
    pub fn next(&self, reply: &Event) -> Option<Transition> {
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
            },
            (Pending, Event::InventoryRejected(rejected)) => Transition {
                statuses: vec![(Rejected, Some(rejected.reason))],
                commands: vec![],
            },
            (InventoryReserved, Event::PaymentAuthorized(_)) => Transition {
                statuses: vec![(PaymentAuthorized, None), (Confirmed, None)],
                commands: vec![],
            },
            (InventoryReserved, Event::PaymentDeclined(_)) => Transition {
                statuses: vec![(Compensating, Some(RejectReason::PaymentDeclined))],
                commands: vec![Event::ReleaseInventory(ReleaseInventory {
                    reason: RejectReason::PaymentDeclined,
                })],
            },
            (Compensating, Event::InventoryReleased(_)) => Transition {
                statuses: vec![(Rejected, self.reason)],
                commands: vec![],
            },
            _ => return None,
        };
        Some(transition)
    }

    /// The state after `transition`, and the messages it sends: one
    /// lifecycle event per status entered, then its commands.
    pub fn apply(&self, transition: &Transition) -> (SagaState, Vec<Envelope>) {
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
            };
            let event = match status {
                OrderStatus::Confirmed => Event::OrderConfirmed(change),
                OrderStatus::Rejected => Event::OrderRejected(change),
                _ => Event::OrderStatusChanged(change),
            };
            messages.push(next.envelope(event));
        }
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
        }
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

    /// Feeds `replies` in order, returning the final state and every message sent.
    fn run(replies: &[Event]) -> (SagaState, Vec<Envelope>) {
        let mut state = pending();
        let mut sent = state.opening_messages();
        for reply in replies {
            if let Some(transition) = state.next(reply) {
                let (next, messages) = state.apply(&transition);
                state = next;
                sent.extend(messages);
            }
        }
        (state, sent)
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
        assert_eq!(pending().next(&authorized()), None);
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
}
