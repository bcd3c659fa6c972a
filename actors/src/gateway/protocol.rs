//! The WebSocket protocol: what a client sends and what the gateway answers,
//! each a JSON text frame tagged by `type`. See `docs/events.md`.

use super::hub::{StatusUpdate, StockChange};
use crate::events::{OrderStatus, RejectReason};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a scope subscription covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every order of the caller.
    Mine,
    /// Every order (admins only).
    All,
    /// Every product's stock changes (anyone).
    Stock,
}

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    /// Follow one order (`order_id`, optionally resuming after `last_seq`)
    /// or a whole scope.
    Subscribe {
        /// The order to follow.
        #[serde(default)]
        order_id: Option<Uuid>,
        /// The last sequence number the client has: it gets exactly the
        /// updates after it instead of a snapshot.
        #[serde(default)]
        last_seq: Option<i32>,
        /// `mine` or `all` instead of one order.
        #[serde(default)]
        scope: Option<Scope>,
    },
    /// Extend the session with a fresh token of the same subject and role,
    /// before the current one expires (else the server closes with 4001).
    Refresh {
        /// The fresh bearer token.
        token: BearerToken,
    },
    /// Stop following an order or a scope.
    Unsubscribe {
        /// The order.
        #[serde(default)]
        order_id: Option<Uuid>,
        /// Or the scope.
        #[serde(default)]
        scope: Option<Scope>,
    },
}

/// A bearer token sent in a message: a credential, so never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct BearerToken(pub String);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

/// What the gateway sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// An order's current status, first thing after a subscription without
    /// `last_seq`.
    Snapshot {
        /// The order.
        order_id: Uuid,
        /// Its status now.
        status: OrderStatus,
        /// Why, when rejected or compensating.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<RejectReason>,
        /// When it entered that status.
        at: DateTime<Utc>,
        /// Its sequence number now; updates follow from `seq + 1`.
        seq: i32,
    },
    /// One status change.
    Update(StatusUpdate),
    /// One product's new stock.
    Stock(StockChange),
    /// The subscription is active: every later change will be pushed.
    Subscribed {
        /// The order, for an order subscription.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order_id: Option<Uuid>,
        /// The scope, for a scope subscription.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<Scope>,
        /// The order's sequence number when the subscription began.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<i32>,
    },
    /// The subscription has ended.
    Unsubscribed {
        /// The order.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order_id: Option<Uuid>,
        /// The scope.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<Scope>,
    },
    /// A `refresh` was accepted: the session now ends at `ends_at` (the
    /// fresh token's expiry plus the leeway).
    Refreshed {
        /// When the server will close the session with 4001.
        ends_at: DateTime<Utc>,
    },
    /// A request was refused; the connection stays open.
    Error {
        /// Stable machine-readable code: `bad_request`, `not_found`,
        /// `forbidden`, `too_many_subscriptions`, `unavailable`, `unauthorized`.
        error: String,
        /// For a human.
        message: String,
        /// The order concerned, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order_id: Option<Uuid>,
    },
}

impl ServerMessage {
    /// An error about `order_id`.
    pub fn error(error: &str, message: impl Into<String>, order_id: Option<Uuid>) -> Self {
        ServerMessage::Error {
            error: error.to_owned(),
            message: message.into(),
            order_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_and_unknown_ones_are_refused() {
        let id = Uuid::now_v7();
        assert_eq!(
            serde_json::from_str::<ClientMessage>(&format!(
                r#"{{"type":"subscribe","order_id":"{id}","last_seq":2}}"#
            ))
            .unwrap(),
            ClientMessage::Subscribe {
                order_id: Some(id),
                last_seq: Some(2),
                scope: None
            }
        );
        assert_eq!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"unsubscribe","scope":"mine"}"#)
                .unwrap(),
            ClientMessage::Unsubscribe {
                order_id: None,
                scope: Some(Scope::Mine)
            }
        );
        let refresh: ClientMessage =
            serde_json::from_str(r#"{"type":"refresh","token":"abc.def.ghi"}"#).unwrap();
        assert_eq!(
            refresh,
            ClientMessage::Refresh {
                token: BearerToken("abc.def.ghi".into())
            }
        );
        assert!(!format!("{refresh:?}").contains("abc.def.ghi"));
        for bad in [
            r#"{"type":"refresh"}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"subscribe","order_id":"nope"}"#,
            r#"{"type":"subscribe","scope":"everyone"}"#,
            r#"{"type":"subscribe","extra":1}"#,
            "[]",
        ] {
            assert!(serde_json::from_str::<ClientMessage>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stock_is_a_scope_and_its_changes_a_message_of_their_own() {
        assert_eq!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"subscribe","scope":"stock"}"#)
                .unwrap(),
            ClientMessage::Subscribe {
                order_id: None,
                last_seq: None,
                scope: Some(Scope::Stock)
            }
        );
        let change = StockChange {
            product_id: Uuid::nil(),
            stock: 7,
            at: DateTime::<Utc>::UNIX_EPOCH,
        };
        let json = serde_json::to_value(ServerMessage::Stock(change)).unwrap();
        assert_eq!(json["type"], "stock");
        assert_eq!(json["stock"], 7);
        assert_eq!(json["product_id"], Uuid::nil().to_string());
    }

    #[test]
    fn updates_are_tagged_and_never_name_the_customer() {
        let update = StatusUpdate {
            order_id: Uuid::nil(),
            status: OrderStatus::Confirmed,
            reason: None,
            at: DateTime::<Utc>::UNIX_EPOCH,
            seq: 4,
            customer_id: Some("alice".into()),
            trace: None,
        };
        let json = serde_json::to_value(ServerMessage::Update(update)).unwrap();
        assert_eq!(json["type"], "update");
        assert_eq!(json["status"], "CONFIRMED");
        assert_eq!(json["seq"], 4);
        assert!(json.get("customer_id").is_none());
    }
}
