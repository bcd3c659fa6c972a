//! The messages that travel over Kafka: one JSON envelope shape for every
//! command and event, the topics they travel on, and the vocabulary (order
//! statuses, rejection reasons) that every service shares.
//!
//! The envelope is the contract between services, so it is versioned
//! (`schema_version`) and decoding is strict: an unknown event type or version
//! is an error the consumer can report, never a silent default.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;
use uuid::Uuid;

/// The envelope version this build writes and accepts.
pub const SCHEMA_VERSION: u32 = 1;

/// Kafka topic names. Every message is keyed by its order id, so all of one
/// order's messages land on one partition and keep their order.
pub mod topics {
    /// Commands to the product service: reserve or release stock.
    pub const INVENTORY_COMMANDS: &str = "inventory-commands";
    /// Replies from the product service: reserved, rejected, released.
    pub const INVENTORY_EVENTS: &str = "inventory-events";
    /// Commands to the payment service: authorize a payment.
    pub const PAYMENT_COMMANDS: &str = "payment-commands";
    /// Replies from the payment service: authorized or declined.
    pub const PAYMENT_EVENTS: &str = "payment-events";
    /// The order lifecycle: every status change of every order.
    pub const ORDER_EVENTS: &str = "order-events";
    /// Messages no consumer could handle, with why and where they came from.
    pub const DEAD_LETTERS: &str = "dead-letters";
    /// Every topic the platform uses, for creating them at start-up.
    pub const ALL: [&str; 6] = [
        INVENTORY_COMMANDS,
        INVENTORY_EVENTS,
        PAYMENT_COMMANDS,
        PAYMENT_EVENTS,
        ORDER_EVENTS,
        DEAD_LETTERS,
    ];
}

/// One message on a topic: identity and tracing metadata around a typed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Envelope {
    /// Unique per message; consumers record it to make redelivery harmless.
    pub event_id: Uuid,
    /// The order this message is about; also the Kafka key.
    pub order_id: Uuid,
    /// Shared by every message caused by one client request, for tracing a saga.
    pub correlation_id: Uuid,
    /// When the producing service decided this happened.
    pub occurred_at: DateTime<Utc>,
    /// Envelope version, so a consumer can refuse what it does not understand.
    pub schema_version: u32,
    /// The event type (`event_type`) and its body (`payload`).
    #[serde(flatten)]
    pub event: Event,
    /// The trace this message belongs to. Not part of the JSON: it is
    /// stored in the outbox row beside it and travels as the Kafka header
    /// `traceparent`, so a consumer reads it without parsing the body.
    #[serde(skip)]
    pub trace: Option<crate::trace::TraceParent>,
}

/// Why an envelope could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, not an envelope, or an event type this build does not know.
    #[error("malformed envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A well-formed envelope of a version this build does not understand.
    #[error("unsupported schema version {0} (this build understands {SCHEMA_VERSION})")]
    UnsupportedVersion(u32),
}

impl Envelope {
    /// A new envelope for `event` about `order_id`, stamped now. It belongs
    /// to the current span's trace: a message is caused by the work that
    /// writes it.
    pub fn new(order_id: Uuid, correlation_id: Uuid, event: Event) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            order_id,
            correlation_id,
            occurred_at: Utc::now(),
            schema_version: SCHEMA_VERSION,
            event,
            trace: crate::trace::TraceParent::current(),
        }
    }

    /// The JSON bytes that go on the wire.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising these plain types cannot fail: every map key is a string.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses wire bytes, refusing unknown versions.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let envelope: Self = serde_json::from_slice(bytes)?;
        if envelope.schema_version != SCHEMA_VERSION {
            return Err(DecodeError::UnsupportedVersion(envelope.schema_version));
        }
        Ok(envelope)
    }

    /// The topic this message belongs on.
    pub fn topic(&self) -> &'static str {
        self.event.topic()
    }

    /// The Kafka key: the order id, so one order's messages stay in order.
    pub fn key(&self) -> String {
        self.order_id.to_string()
    }
}

/// Every command and event, tagged by `event_type` with its `payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event_type", content = "payload")]
pub enum Event {
    /// Command to the product service: take these items out of stock for the order.
    ReserveInventory(ReserveInventory),
    /// Command to the product service: put the order's reserved items back.
    ReleaseInventory(ReleaseInventory),
    /// Reply: every item of the order was reserved.
    InventoryReserved(InventoryReserved),
    /// Reply: the order could not be reserved; nothing was taken.
    InventoryRejected(InventoryRejected),
    /// Reply: the order's reserved items are back in stock.
    InventoryReleased(InventoryReleased),
    /// Command to the payment service: authorize the order's total.
    AuthorizePayment(AuthorizePayment),
    /// Reply: the payment was authorized.
    PaymentAuthorized(PaymentAuthorized),
    /// Reply: the payment was declined.
    PaymentDeclined(PaymentDeclined),
    /// Command to the payment service: cancel the order's authorization, now
    /// or whenever it arrives (compensation after a timeout).
    VoidPayment(VoidPayment),
    /// Reply: the order's authorization is void (or can never be made).
    PaymentVoided(PaymentVoided),
    /// Lifecycle: an order was accepted and is PENDING.
    OrderCreated(OrderCreated),
    /// Lifecycle: an order moved to an intermediate status.
    OrderStatusChanged(OrderStatusChanged),
    /// Lifecycle: an order is CONFIRMED (terminal).
    OrderConfirmed(OrderStatusChanged),
    /// Lifecycle: an order is REJECTED (terminal), with its reason.
    OrderRejected(OrderStatusChanged),
}

impl Event {
    /// The topic this kind of message travels on.
    pub fn topic(&self) -> &'static str {
        match self {
            Event::ReserveInventory(_) | Event::ReleaseInventory(_) => topics::INVENTORY_COMMANDS,
            Event::InventoryReserved(_)
            | Event::InventoryRejected(_)
            | Event::InventoryReleased(_) => topics::INVENTORY_EVENTS,
            Event::AuthorizePayment(_) | Event::VoidPayment(_) => topics::PAYMENT_COMMANDS,
            Event::PaymentAuthorized(_) | Event::PaymentDeclined(_) | Event::PaymentVoided(_) => {
                topics::PAYMENT_EVENTS
            }
            Event::OrderCreated(_)
            | Event::OrderStatusChanged(_)
            | Event::OrderConfirmed(_)
            | Event::OrderRejected(_) => topics::ORDER_EVENTS,
        }
    }

    /// The `event_type` string, as it appears on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::ReserveInventory(_) => "ReserveInventory",
            Event::ReleaseInventory(_) => "ReleaseInventory",
            Event::InventoryReserved(_) => "InventoryReserved",
            Event::InventoryRejected(_) => "InventoryRejected",
            Event::InventoryReleased(_) => "InventoryReleased",
            Event::AuthorizePayment(_) => "AuthorizePayment",
            Event::PaymentAuthorized(_) => "PaymentAuthorized",
            Event::PaymentDeclined(_) => "PaymentDeclined",
            Event::VoidPayment(_) => "VoidPayment",
            Event::PaymentVoided(_) => "PaymentVoided",
            Event::OrderCreated(_) => "OrderCreated",
            Event::OrderStatusChanged(_) => "OrderStatusChanged",
            Event::OrderConfirmed(_) => "OrderConfirmed",
            Event::OrderRejected(_) => "OrderRejected",
        }
    }

    /// The status change this lifecycle event announces, if it is one.
    pub fn status_change(&self) -> Option<&OrderStatusChanged> {
        match self {
            Event::OrderCreated(created) => Some(&created.status),
            Event::OrderStatusChanged(change)
            | Event::OrderConfirmed(change)
            | Event::OrderRejected(change) => Some(change),
            _ => None,
        }
    }
}

/// One line of an order: a product and how many units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderLine {
    /// The product ordered.
    pub product_id: Uuid,
    /// Units ordered; always at least 1.
    pub quantity: i32,
}

/// A product's stock after a reservation or release, so listeners can show
/// live stock without asking the product service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StockLevel {
    /// The product whose stock moved.
    pub product_id: Uuid,
    /// Units this message moved.
    pub quantity: i32,
    /// Units in stock once the move committed.
    pub stock: i32,
}

/// Payload of [`Event::ReserveInventory`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReserveInventory {
    /// What to reserve; all of it or nothing.
    pub items: Vec<OrderLine>,
}

/// Payload of [`Event::ReleaseInventory`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseInventory {
    /// Why the stock goes back (the order's rejection reason).
    pub reason: RejectReason,
}

/// Payload of [`Event::InventoryReserved`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InventoryReserved {
    /// Each product reserved and its stock afterwards.
    pub items: Vec<StockLevel>,
}

/// Payload of [`Event::InventoryRejected`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InventoryRejected {
    /// Why: always `OUT_OF_STOCK` today.
    pub reason: RejectReason,
    /// The first product that could not be reserved.
    pub product_id: Option<Uuid>,
    /// A sentence for humans.
    pub message: String,
}

/// Payload of [`Event::InventoryReleased`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InventoryReleased {
    /// Each product returned and its stock afterwards; empty when there was
    /// nothing (left) to release.
    pub items: Vec<StockLevel>,
}

/// Payload of [`Event::AuthorizePayment`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuthorizePayment {
    /// Who pays.
    pub customer_id: String,
    /// The order total in minor units (cents).
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// The simulated card: a Stripe-style test token.
    pub payment_token: String,
}

/// Payload of [`Event::PaymentAuthorized`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PaymentAuthorized {
    /// The processor's authorization id.
    pub authorization_id: Uuid,
    /// The amount authorized, in cents.
    pub amount_cents: i64,
}

/// Payload of [`Event::PaymentDeclined`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PaymentDeclined {
    /// The processor's decline code, e.g. `card_declined`.
    pub decline_code: String,
}

/// Payload of [`Event::VoidPayment`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VoidPayment {
    /// Why the authorization is cancelled.
    pub reason: RejectReason,
}

/// Payload of [`Event::PaymentVoided`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PaymentVoided {
    /// The authorization voided, if one had been made.
    pub authorization_id: Option<Uuid>,
}

/// Payload of [`Event::OrderCreated`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderCreated {
    /// Who placed the order.
    pub customer_id: String,
    /// What was ordered.
    pub items: Vec<OrderLine>,
    /// The total in cents, priced when the order was placed.
    pub total_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// The first status change: PENDING, sequence 1.
    #[serde(flatten)]
    pub status: OrderStatusChanged,
}

/// A status change of an order, as pushed to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderStatusChanged {
    /// The new status.
    pub status: OrderStatus,
    /// Why, for REJECTED and COMPENSATING.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    /// Per-order sequence number, 1 for PENDING, +1 for each change; lets a
    /// listener drop duplicates and detect gaps.
    pub seq: i32,
    /// Who placed the order, so a listener can route the change to its
    /// customer. Absent in `OrderCreated`, which names the customer itself,
    /// and in events written before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
}

/// Where an order is in its saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Accepted; waiting for stock.
    Pending,
    /// Stock reserved; waiting for payment.
    InventoryReserved,
    /// Payment authorized; about to confirm.
    PaymentAuthorized,
    /// A later step failed; reserved stock is being released.
    Compensating,
    /// Done: stock taken and payment authorized.
    Confirmed,
    /// Done: the order will not be fulfilled (see the reason).
    Rejected,
    /// Compensation kept failing: an operator must look (`GET /admin/sagas/stuck`).
    Failed,
}

impl OrderStatus {
    /// Every status, in saga order.
    pub const ALL: [OrderStatus; 7] = [
        OrderStatus::Pending,
        OrderStatus::InventoryReserved,
        OrderStatus::PaymentAuthorized,
        OrderStatus::Compensating,
        OrderStatus::Confirmed,
        OrderStatus::Rejected,
        OrderStatus::Failed,
    ];

    /// The database and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::InventoryReserved => "INVENTORY_RESERVED",
            OrderStatus::PaymentAuthorized => "PAYMENT_AUTHORIZED",
            OrderStatus::Compensating => "COMPENSATING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Rejected => "REJECTED",
            OrderStatus::Failed => "FAILED",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// True once the saga is over. FAILED is terminal for the saga: it
    /// stops acting and waits for an operator.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Confirmed | OrderStatus::Rejected | OrderStatus::Failed
        )
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an order was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RejectReason {
    /// Some item did not have enough stock.
    OutOfStock,
    /// The payment processor declined the card.
    PaymentDeclined,
    /// A step's deadline passed without an answer.
    Timeout,
}

impl RejectReason {
    /// The database and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::OutOfStock => "OUT_OF_STOCK",
            RejectReason::PaymentDeclined => "PAYMENT_DECLINED",
            RejectReason::Timeout => "TIMEOUT",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [
            RejectReason::OutOfStock,
            RejectReason::PaymentDeclined,
            RejectReason::Timeout,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == s)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope::new(
            Uuid::new_v4(),
            Uuid::new_v4(),
            Event::ReserveInventory(ReserveInventory {
                items: vec![OrderLine {
                    product_id: Uuid::new_v4(),
                    quantity: 2,
                }],
            }),
        )
    }

    #[test]
    fn envelope_round_trips_through_json() {
        let envelope = sample();
        let decoded = Envelope::decode(&envelope.encode()).expect("decodes");
        assert_eq!(decoded, envelope);
    }

    #[test]
    fn wire_format_has_the_documented_fields() {
        let json: serde_json::Value =
            serde_json::from_slice(&sample().encode()).expect("valid JSON");
        for field in [
            "event_id",
            "order_id",
            "correlation_id",
            "occurred_at",
            "schema_version",
            "event_type",
            "payload",
        ] {
            assert!(json.get(field).is_some(), "missing {field}: {json}");
        }
        assert_eq!(json["event_type"], "ReserveInventory");
    }

    #[test]
    fn unknown_event_type_is_an_error() {
        let mut json: serde_json::Value = serde_json::from_slice(&sample().encode()).unwrap();
        json["event_type"] = "TeleportGoods".into();
        let err = Envelope::decode(json.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
    }

    #[test]
    fn unknown_schema_version_is_an_error() {
        let mut json: serde_json::Value = serde_json::from_slice(&sample().encode()).unwrap();
        json["schema_version"] = 99.into();
        let err = Envelope::decode(json.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::UnsupportedVersion(99)), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Envelope::decode(b"\xff\x00not json").is_err());
        assert!(Envelope::decode(b"{}").is_err());
    }

    #[test]
    fn status_spellings_round_trip() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert_eq!(
            RejectReason::parse("OUT_OF_STOCK"),
            Some(RejectReason::OutOfStock)
        );
    }

    #[test]
    fn every_event_routes_to_a_known_topic() {
        let order_created = Event::OrderCreated(OrderCreated {
            customer_id: "c".into(),
            items: vec![],
            total_cents: 0,
            currency: "EUR".into(),
            status: OrderStatusChanged {
                status: OrderStatus::Pending,
                reason: None,
                seq: 1,
                customer_id: None,
            },
        });
        assert_eq!(order_created.topic(), topics::ORDER_EVENTS);
        assert!(order_created.status_change().is_some());
        assert!(topics::ALL.contains(&sample().topic()));
    }
}
