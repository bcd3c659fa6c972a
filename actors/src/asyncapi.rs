//! The AsyncAPI 3.0 document of the Kafka topics (`docs/asyncapi.json`),
//! generated from the code so that it cannot drift: the message schemas are
//! derived (utoipa `ToSchema`) from the types in [`crate::events`] that
//! serialize the messages, and each event type is put on the channel that
//! [`Event::topic`] routes it to.
//!
//! The checked-in file is compared with a fresh one by this module's tests
//! (`cargo test -p shop-actors asyncapi`), which also check a serialized
//! example of every event type, and every envelope in `docs/events.md`,
//! against the schemas. After changing an event type, regenerate it with
//! `SHOP_UPDATE_ASYNCAPI=1 cargo test -p shop-actors asyncapi`.

use crate::events::{
    topics, AuthorizePayment, Envelope, Event, InventoryRejected, InventoryReleased,
    InventoryReserved, OrderCreated, OrderLine, OrderStatus, OrderStatusChanged, PaymentAuthorized,
    PaymentDeclined, PaymentVoided, RejectReason, ReleaseInventory, ReserveInventory, StockLevel,
    VoidPayment, SCHEMA_VERSION,
};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// Where the checked-in document lives, relative to the workspace root.
pub const PATH: &str = "docs/asyncapi.json";

/// Every schema the messages use, collected from the derives.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(Envelope)))]
struct EventSchemas;

/// Who writes and who reads a topic, for the channel's description.
fn topic_roles(topic: &str) -> Option<(&'static str, &'static str, &'static str)> {
    // (channel id, producer, consumer)
    Some(match topic {
        topics::INVENTORY_COMMANDS => (
            "inventoryCommands",
            "the order service, through its outbox (`orders.outbox`)",
            "the product service, consumer group `product`",
        ),
        topics::INVENTORY_EVENTS => (
            "inventoryEvents",
            "the product service, through its outbox (`product.outbox`)",
            "the order service, consumer group `order`",
        ),
        topics::PAYMENT_COMMANDS => (
            "paymentCommands",
            "the order service, through its outbox (`orders.outbox`)",
            "the payment service, consumer group `payment`",
        ),
        topics::PAYMENT_EVENTS => (
            "paymentEvents",
            "the payment service, through its outbox (`payment.outbox`)",
            "the order service, consumer group `order`",
        ),
        topics::ORDER_EVENTS => (
            "orderEvents",
            "the order service, through its outbox (`orders.outbox`)",
            "every gateway process, with no group (each reads every partition from its end)",
        ),
        topics::DEAD_LETTERS => (
            "deadLetters",
            "any consumer that cannot handle a message",
            "operators, with `shop dlq list` and `shop dlq replay`",
        ),
        _ => return None,
    })
}

/// One message of every event type, as the services write them (fixed ids
/// and times, so the document is stable).
pub fn examples() -> Vec<Envelope> {
    let order_id = Uuid::from_u128(0x01a2_1722_2441_7297_89a7_834d_f2a7_4de4);
    let mug = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0001);
    let authorization_id = Uuid::from_u128(0x01a2_1722_3b9e_7c31_a0f4_6f2e_1d5c_8a90);
    let line = OrderLine {
        product_id: mug,
        quantity: 2,
    };
    let moved = StockLevel {
        product_id: mug,
        quantity: 2,
        stock: 118,
    };
    let change = |status, reason, seq| OrderStatusChanged {
        status,
        reason,
        seq,
        customer_id: Some("alice".into()),
    };
    let events = vec![
        Event::ReserveInventory(ReserveInventory { items: vec![line] }),
        Event::ReleaseInventory(ReleaseInventory {
            reason: RejectReason::PaymentDeclined,
        }),
        Event::InventoryReserved(InventoryReserved { items: vec![moved] }),
        Event::InventoryRejected(InventoryRejected {
            reason: RejectReason::OutOfStock,
            product_id: Some(mug),
            message: format!("product {mug} has 1 in stock, 2 requested"),
        }),
        Event::InventoryReleased(InventoryReleased {
            items: vec![StockLevel {
                stock: 120,
                ..moved
            }],
        }),
        Event::AuthorizePayment(AuthorizePayment {
            customer_id: "alice".into(),
            amount_cents: 2400,
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
        }),
        Event::PaymentAuthorized(PaymentAuthorized {
            authorization_id,
            amount_cents: 2400,
        }),
        Event::PaymentDeclined(PaymentDeclined {
            decline_code: "card_declined".into(),
        }),
        Event::VoidPayment(VoidPayment {
            reason: RejectReason::Timeout,
        }),
        Event::PaymentVoided(PaymentVoided {
            authorization_id: Some(authorization_id),
        }),
        Event::OrderCreated(OrderCreated {
            customer_id: "alice".into(),
            items: vec![line],
            total_cents: 2400,
            currency: "EUR".into(),
            status: OrderStatusChanged {
                customer_id: None,
                ..change(OrderStatus::Pending, None, 1)
            },
        }),
        Event::OrderStatusChanged(change(OrderStatus::InventoryReserved, None, 2)),
        Event::OrderConfirmed(change(OrderStatus::Confirmed, None, 4)),
        Event::OrderRejected(change(
            OrderStatus::Rejected,
            Some(RejectReason::PaymentDeclined),
            4,
        )),
    ];
    let at: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-11-26T09:14:03.203529871Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default();
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| Envelope {
            event_id: Uuid::from_u128(0x01a2_1722_2443_732a_a24b_e40a_d23f_0800 + i as u128),
            order_id,
            correlation_id: Uuid::from_u128(0x5c90_a958_7403_4430_ac66_a787_95e7_61d1),
            occurred_at: at,
            schema_version: SCHEMA_VERSION,
            event,
            trace: None,
        })
        .collect()
}

/// The AsyncAPI document.
pub fn document() -> Value {
    let schemas = <EventSchemas as utoipa::OpenApi>::openapi()
        .components
        .map(|c| serde_json::to_value(c.schemas).unwrap_or_default())
        .unwrap_or_default();
    let examples = examples();
    // Each variant's doc comment, which the derive put on its schema.
    let summary = |name: &str| {
        schemas["Event"]["oneOf"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|variant| variant["properties"]["event_type"]["enum"][0] == name)
            .and_then(|variant| variant["description"].as_str())
            .unwrap_or_default()
            .to_owned()
    };

    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for topic in topics::ALL {
        let Some((id, producer, consumer)) = topic_roles(topic) else {
            continue;
        };
        let on_topic: Vec<&Envelope> = examples.iter().filter(|e| e.topic() == topic).collect();
        let mut channel_messages = Map::new();
        for envelope in &on_topic {
            let name = envelope.event.type_name();
            channel_messages.insert(
                name.to_owned(),
                json!({ "$ref": format!("#/components/messages/{name}") }),
            );
            messages.insert(name.to_owned(), message(envelope, &summary(name)));
        }
        if topic == topics::DEAD_LETTERS {
            channel_messages.insert(
                "DeadLetter".into(),
                json!({ "$ref": "#/components/messages/DeadLetter" }),
            );
            messages.insert("DeadLetter".into(), dead_letter());
        }
        let refs: Vec<Value> = channel_messages
            .keys()
            .map(|name| json!({ "$ref": format!("#/channels/{id}/messages/{name}") }))
            .collect();
        channels.insert(
            id.to_owned(),
            json!({
                "address": topic,
                "title": topic,
                "description": format!(
                    "Written by {producer}; read by {consumer}. Keyed by the order id, \
                     so one order's messages stay in order on one partition."
                ),
                "messages": channel_messages,
            }),
        );
        for (action, who) in [("send", producer), ("receive", consumer)] {
            operations.insert(
                format!("{action}{}", upper_first(id)),
                json!({
                    "action": action,
                    "channel": { "$ref": format!("#/channels/{id}") },
                    "summary": format!("{}: {who}", if action == "send" { "Written" } else { "Read" }),
                    "messages": refs,
                }),
            );
        }
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "shop events",
            "version": SCHEMA_VERSION.to_string(),
            "description": "Every message shop puts on Kafka: one JSON envelope \
                (identity and tracing fields around an `event_type` and its `payload`) \
                for every command and event. Generated from `actors/src/events.rs`; \
                the prose reference with the saga is docs/events.md. Delivery is \
                at-least-once: consumers record each `event_id` in the same transaction \
                as its effect, so redelivery is harmless. `schema_version` is the \
                envelope version; consumers refuse any other (to `dead-letters`). The \
                gateway's WebSocket protocol (`GET /ws`) is described in the README.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas,
        },
    })
}

/// The document as checked in: pretty JSON with a final newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

/// The message of `envelope`'s type: the envelope narrowed to its
/// `event_type`, the Kafka key and header, and the example.
fn message(envelope: &Envelope, summary: &str) -> Value {
    let name = envelope.event.type_name();
    let example = serde_json::to_value(envelope).unwrap_or_default();
    json!({
        "name": name,
        "title": name,
        "summary": summary,
        "contentType": "application/json",
        "payload": {
            "allOf": [
                { "$ref": "#/components/schemas/Envelope" },
                {
                    "type": "object",
                    "required": ["event_type", "payload"],
                    "properties": {
                        "event_type": { "const": name },
                        "payload": { "$ref": format!("#/components/schemas/{}", payload_schema(&envelope.event)) },
                    },
                },
            ],
        },
        "headers": {
            "type": "object",
            "properties": {
                "traceparent": {
                    "type": "string",
                    "description": "W3C trace context of the work that wrote the message; \
                        the consumer's span continues it.",
                },
            },
        },
        "bindings": {
            "kafka": {
                "key": { "type": "string", "format": "uuid", "description": "The order id." },
                "bindingVersion": "0.5.0",
            },
        },
        "examples": [{ "name": name, "payload": example, "headers": {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        } }],
    })
}

/// The name of the schema of `event`'s payload: its type's, except that
/// the three lifecycle events share `OrderStatusChanged`'s.
fn payload_schema(event: &Event) -> &'static str {
    match event {
        Event::OrderConfirmed(_) | Event::OrderRejected(_) => "OrderStatusChanged",
        other => other.type_name(),
    }
}

/// A dead letter: the original bytes, with where they came from and why.
fn dead_letter() -> Value {
    let header = |description: &str| json!({ "type": "string", "description": description });
    json!({
        "name": "DeadLetter",
        "title": "DeadLetter",
        "summary": "A message no consumer could handle, with its original key and payload \
            bytes unchanged (so it may not be an envelope at all).",
        "payload": {},
        "headers": {
            "type": "object",
            "required": [
                "dlq.error", "dlq.source.topic", "dlq.source.partition",
                "dlq.source.offset", "dlq.consumer.group", "dlq.failed.at",
            ],
            "properties": {
                "dlq.error": header("Why it failed."),
                "dlq.source.topic": header("The topic it came from."),
                "dlq.source.partition": header("Its partition there."),
                "dlq.source.offset": header("Its offset there."),
                "dlq.consumer.group": header("The group that gave up, or `broadcast` for a gateway."),
                "dlq.failed.at": header("When, RFC 3339 UTC."),
                "traceparent": header("The original message's trace context, if it had one."),
            },
        },
        "bindings": {
            "kafka": {
                "key": { "type": "string", "description": "The original key." },
                "bindingVersion": "0.5.0",
            },
        },
    })
}

fn upper_first(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    fn workspace_file(path: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path)
    }

    /// A validator for the payload of message `name`: the whole document
    /// is the root, so its `#/components/...` references resolve.
    fn validator(name: &str) -> jsonschema::Validator {
        let mut root = document();
        root["$ref"] = json!(format!("#/components/messages/{name}/payload"));
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("the schema of {name} compiles: {e}"))
    }

    fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
        validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    #[test]
    fn asyncapi_checked_in_document_is_current() {
        let path = workspace_file(PATH);
        let generated = document_text();
        if std::env::var_os("SHOP_UPDATE_ASYNCAPI").is_some() {
            std::fs::write(&path, &generated).expect("writes docs/asyncapi.json");
            return;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        if checked_in != generated {
            let fresh = std::env::temp_dir().join(format!("asyncapi-{}.json", Uuid::new_v4()));
            std::fs::write(&fresh, &generated).expect("writes a temporary file");
            let diff = std::process::Command::new("diff")
                .arg("-u")
                .arg(&path)
                .arg(&fresh)
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_else(|e| format!("(no diff: {e})"));
            let _ = std::fs::remove_file(&fresh);
            panic!(
                "{PATH} is not what the event types generate:\n{diff}\n\
                 Regenerate it with: SHOP_UPDATE_ASYNCAPI=1 cargo test -p shop-actors asyncapi"
            );
        }
    }

    #[test]
    fn asyncapi_has_every_event_type_and_topic() {
        let doc = document();
        // The Event enum's own schema lists every variant the derive saw:
        // an event type without an example here fails this test.
        let derived: BTreeSet<String> = doc["components"]["schemas"]["Event"]["oneOf"]
            .as_array()
            .expect("Event is a oneOf")
            .iter()
            .filter_map(|variant| variant["properties"]["event_type"]["enum"][0].as_str())
            .map(str::to_owned)
            .collect();
        let examples: BTreeSet<String> = examples()
            .iter()
            .map(|e| e.event.type_name().to_owned())
            .collect();
        assert_eq!(derived.len(), 14, "{derived:?}");
        assert_eq!(derived, examples);
        for name in &examples {
            let message = &doc["components"]["messages"][name];
            assert!(
                message["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: {message}"
            );
        }
        let addresses: BTreeSet<&str> = doc["channels"]
            .as_object()
            .expect("channels")
            .values()
            .filter_map(|c| c["address"].as_str())
            .collect();
        assert_eq!(addresses, topics::ALL.into_iter().collect());
    }

    #[test]
    fn asyncapi_every_serialized_event_matches_its_schema() {
        for envelope in examples() {
            let name = envelope.event.type_name();
            let wire: Value = serde_json::from_slice(&envelope.encode()).expect("JSON");
            let errors = errors(&validator(name), &wire);
            assert!(errors.is_empty(), "{name}: {errors:?}\n{wire}");
        }
    }

    #[test]
    fn asyncapi_schemas_refuse_what_consumers_refuse() {
        let envelope = &examples()[0];
        let wire: Value = serde_json::from_slice(&envelope.encode()).expect("JSON");
        let reserve = validator("ReserveInventory");
        let mut missing = wire.clone();
        missing["payload"]
            .as_object_mut()
            .expect("object")
            .remove("items");
        let mut wrong_type = wire.clone();
        wrong_type["order_id"] = json!("not a uuid");
        let mut wrong_quantity = wire.clone();
        wrong_quantity["payload"]["items"][0]["quantity"] = json!("two");
        for (what, bad) in [
            ("no items", missing),
            ("a bad order_id", wrong_type),
            ("a quantity that is a string", wrong_quantity),
        ] {
            assert!(!reserve.is_valid(&bad), "the schema accepted {what}");
            assert!(
                Envelope::decode(bad.to_string().as_bytes()).is_err(),
                "the decoder accepted {what}"
            );
        }
        // A message is checked against its own type, not any event type.
        assert!(!validator("ReleaseInventory").is_valid(&wire));
    }

    #[test]
    fn asyncapi_examples_in_events_md_match_the_schemas_and_decode() {
        let text = std::fs::read_to_string(workspace_file("docs/events.md")).expect("events.md");
        let mut checked = BTreeSet::new();
        for block in text.split("```json").skip(1) {
            let Some((body, _)) = block.split_once("```") else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<Value>(body) else {
                continue;
            };
            let Some(name) = value["event_type"].as_str() else {
                continue;
            };
            let errors = errors(&validator(name), &value);
            assert!(errors.is_empty(), "events.md {name}: {errors:?}\n{value}");
            Envelope::decode(value.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("events.md {name} does not decode: {e}"));
            checked.insert(name.to_owned());
        }
        assert!(checked.len() >= 14, "events.md examples found: {checked:?}");
    }
}
