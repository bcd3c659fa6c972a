//! Messages no consumer can handle go to the dead-letter topic with why and
//! where they came from, without holding back anyone's order; once their
//! cause is fixed, a replay sends them back, once.

use crate::helpers::{produce, reserve, spawn_app, TestApp};
use serde_json::Value;
use shop_actors::events::{topics, Envelope};
use shop_actors::kafka::dead_letters::{self, DeadLetter, Failure, Selection};
use shop_actors::kafka::KafkaSettings;
use std::time::Duration;
use uuid::Uuid;

fn kafka(app: &TestApp) -> KafkaSettings {
    app.kafka_settings()
}

/// `envelope`'s wire JSON with `field` set to `value`.
fn tampered(envelope: &Envelope, field: &str, value: Value) -> Vec<u8> {
    let mut json: Value = serde_json::from_slice(&envelope.encode()).unwrap();
    json[field] = value;
    serde_json::to_vec(&json).unwrap()
}

/// Waits until the dead-letter topic holds at least `count` messages.
async fn wait_for_dead_letters(settings: &KafkaSettings, count: usize) -> Vec<DeadLetter> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let letters = dead_letters::list(settings).await.unwrap();
        if letters.len() >= count {
            return letters;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} dead letters, found {letters:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_without_blocking_other_orders() {
    let app = spawn_app().await;
    let settings = kafka(&app);
    let product = app.create_product(10).await;
    let producer = settings.producer().unwrap();
    let valid = reserve(Uuid::now_v7(), product, 1);
    // One bad message on each of the test broker's three partitions, so the
    // order placed below has one ahead of it wherever its command lands.
    let bad: [(&str, Vec<u8>, &str); 3] = [
        (
            "malformed JSON",
            br#"{"event_id": "not even closed"#.to_vec(),
            "malformed envelope",
        ),
        (
            "unknown event type",
            tampered(&valid, "event_type", "ReserveUnicorns".into()),
            "unknown variant `ReserveUnicorns`",
        ),
        (
            "unsupported schema version",
            tampered(&valid, "schema_version", 99.into()),
            "unsupported schema version 99",
        ),
    ];
    let mut sent = Vec::new();
    for (partition, (what, payload, _)) in bad.iter().enumerate() {
        let key = Uuid::now_v7().to_string();
        let at = produce(
            &producer,
            &settings.topic(topics::INVENTORY_COMMANDS),
            partition as i32,
            &key,
            payload,
        )
        .await;
        sent.push((what, key, at));
    }

    let order = app.order(product, 2, "tok_visa").await;
    let order = app.wait_terminal(order).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");

    let letters = wait_for_dead_letters(&settings, 3).await;
    // Anything else would have been dead-lettered by now too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let letters_now = dead_letters::list(&settings).await.unwrap();
    assert_eq!(letters_now, letters, "exactly the three bad messages");
    assert_eq!(letters.len(), 3, "{letters:?}");
    for ((what, key, (partition, offset)), (_, payload, error)) in sent.iter().zip(&bad) {
        let letter = letters
            .iter()
            .find(|l| l.source_partition == Some(*partition))
            .unwrap_or_else(|| panic!("no dead letter for the {what} message: {letters:?}"));
        assert_eq!(
            letter.source_topic.as_deref(),
            Some(settings.topic(topics::INVENTORY_COMMANDS).as_str())
        );
        assert_eq!(letter.source_offset, Some(*offset), "{what}");
        assert_eq!(letter.group.as_deref(), Some("product"), "{what}");
        assert_eq!(&letter.payload, payload, "{what}: original bytes");
        assert_eq!(letter.key.as_deref(), Some(key.as_bytes()), "{what}");
        let reason = letter.error.as_deref().unwrap_or_default();
        assert!(reason.contains(error), "{what}: {reason:?}");
        assert!(letter.failed_at.is_some(), "{what}");
    }
    let by_type = |event_type: &str| {
        letters
            .iter()
            .any(|l| l.event_type.as_deref() == Some(event_type))
    };
    assert!(by_type("ReserveUnicorns") && by_type("ReserveInventory"));
    app.teardown().await;
}

#[tokio::test]
async fn a_dead_letter_replayed_once_its_cause_is_fixed_is_handled_once() {
    let app = spawn_app().await;
    let settings = kafka(&app);
    let product = app.create_product(10).await;
    let order_id = Uuid::now_v7();
    let command = reserve(order_id, product, 2);
    // As the product consumer would have written it while, say, its
    // database refused the command; the cause is now fixed.
    let failure = Failure {
        error: "permanent: reservation refused".into(),
        source_topic: settings.topic(topics::INVENTORY_COMMANDS),
        source_partition: 0,
        source_offset: 0,
        group: "product".into(),
        failed_at: chrono::Utc::now(),
    };
    let producer = settings.producer().unwrap();
    dead_letters::send(
        &producer,
        &settings.topic(topics::DEAD_LETTERS),
        Some(command.key().as_bytes()),
        Some(&command.encode()),
        &failure,
    )
    .await
    .unwrap();

    let replayed = dead_letters::replay(&settings, &Selection::All)
        .await
        .unwrap();

    assert_eq!(replayed.len(), 1, "{replayed:?}");
    assert_eq!(replayed[0].payload, command.encode());
    crate::helpers::wait_for_count(
        &app.db,
        "SELECT count(*) FROM product.reservations WHERE order_id = $1",
        order_id,
        1,
        "the replayed command never reached the product service",
    )
    .await;
    assert_eq!(app.stock(product).await, 8);

    let again = dead_letters::replay(&settings, &Selection::All)
        .await
        .unwrap();
    assert!(again.is_empty(), "replayed twice: {again:?}");
    let progress = dead_letters::progress(&settings).await.unwrap();
    let letters = dead_letters::list(&settings).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(progress.is_replayed(&letters[0]));
    app.teardown().await;
}
