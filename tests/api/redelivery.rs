//! Delivering every message a second time — to every consumer — has no
//! second effect: no row is written, changed or deleted, no message is
//! published, no client is told anything twice.

use crate::helpers::{differences, high_watermarks, spawn_app, table_digests, TestApp, WsClient};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use shop_actors::events::{topics, Envelope, Event, OrderStatus, OrderStatusChanged};
use shop_actors::kafka::KafkaSettings;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The platform's consumer groups and the topics each reads. (The gateway
/// reads `order-events` with no group; its pushes are checked on the
/// socket.)
const GROUPS: [(&str, &str); 4] = [
    ("product", topics::INVENTORY_COMMANDS),
    ("order", topics::INVENTORY_EVENTS),
    ("order", topics::PAYMENT_EVENTS),
    ("payment", topics::PAYMENT_COMMANDS),
];

/// High watermarks by topic and partition.
type Highs = BTreeMap<(String, i32), i64>;

/// One message as read: where it was, and what to send again.
struct Published {
    topic: String,
    partition: i32,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

/// Reads every message on every topic, start to end.
fn read_all(kafka: &KafkaSettings) -> Vec<Published> {
    let (consumer, mut remaining) =
        crate::helpers::read_every_topic(kafka, "redelivery-test-reader");
    let mut messages = Vec::new();
    while remaining > 0 {
        let message = consumer
            .poll(TIMEOUT)
            .expect("message before timeout")
            .unwrap();
        messages.push(Published {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            key: message.key().unwrap().to_vec(),
            payload: message.payload().unwrap().to_vec(),
            headers: message
                .headers()
                .map(rdkafka::message::BorrowedHeaders::detach),
        });
        remaining -= 1;
    }
    messages
}

async fn watermarks(kafka: &KafkaSettings) -> Highs {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || high_watermarks(&kafka))
        .await
        .unwrap()
}

/// Waits until the platform's consumer group `group` has committed
/// `highs` on every partition of its topic `topic`.
async fn wait_caught_up(kafka: &KafkaSettings, group: &str, topic: &str, highs: &Highs) {
    let brokers = kafka.brokers.clone();
    let group = kafka.group(group);
    let topic = kafka.topic(topic);
    let highs: Vec<(i32, i64)> = highs
        .iter()
        .filter(|((t, _), _)| *t == topic)
        .map(|((_, partition), high)| (*partition, *high))
        .collect();
    assert!(!highs.is_empty(), "no partitions of {topic}");
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut wanted = TopicPartitionList::new();
        for (partition, _) in &highs {
            wanted.add_partition(&topic, *partition);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let committed = consumer.committed_offsets(wanted.clone(), TIMEOUT).unwrap();
            let done = highs.iter().all(|(partition, high)| {
                match committed
                    .find_partition(&topic, *partition)
                    .map(|p| p.offset())
                {
                    Some(Offset::Offset(offset)) => offset >= *high,
                    _ => *high == 0,
                }
            });
            if done {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{group} never caught up on {topic}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
}

/// Waits until every group has committed `highs`, then returns the
/// digests of every table. Read before the watermarks that are compared
/// with them: an effect's outbox row is either still there (in the
/// digest) or already published (past the watermark).
async fn digests_once_consumed(app: &TestApp, highs: &Highs) -> BTreeMap<String, String> {
    let kafka = app.kafka_settings();
    for (group, topic) in GROUPS {
        wait_caught_up(&kafka, group, topic, highs).await;
    }
    table_digests(&app.db).await
}

/// The platform at rest: every outbox row published, every published
/// message consumed, and nothing new since. The digests of every table
/// and the topics' high watermarks then.
async fn at_rest(app: &TestApp) -> (BTreeMap<String, String>, Highs) {
    let kafka = app.kafka_settings();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let outboxes = ["orders.outbox", "product.outbox", "payment.outbox"];
        let mut unpublished = 0;
        for outbox in outboxes {
            unpublished += app.count(outbox).await;
        }
        if unpublished == 0 {
            let highs = watermarks(&kafka).await;
            let digests = digests_once_consumed(app, &highs).await;
            let unchanged = outboxes.iter().all(|o| digests[*o].starts_with("0 rows"));
            if unchanged && watermarks(&kafka).await == highs {
                return (digests, highs);
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never at rest");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything the gateway pushed to `ws` before one barrier event on each
/// partition of `order-events` (a made-up order's PENDING, which an admin
/// following every order is sent): the gateway reads each partition in
/// order and the hub hands updates on in order, so a push caused by a
/// message before a barrier reaches the socket before that barrier's.
async fn pushes_before_barriers(
    ws: &mut WsClient,
    kafka: &KafkaSettings,
    highs: &Highs,
) -> Vec<Value> {
    let topic = kafka.topic(topics::ORDER_EVENTS);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .unwrap();
    let mut barriers = BTreeSet::new();
    for (_, partition) in highs.keys().filter(|(t, _)| *t == topic) {
        let barrier = Envelope::new(
            Uuid::now_v7(),
            Uuid::new_v4(),
            Event::OrderStatusChanged(OrderStatusChanged {
                status: OrderStatus::Pending,
                reason: None,
                seq: 1,
                customer_id: Some("redelivery-barrier".into()),
            }),
        );
        let (key, payload) = (barrier.key(), barrier.encode());
        producer
            .send(
                FutureRecord::to(&topic)
                    .partition(*partition)
                    .key(&key)
                    .payload(&payload),
                TIMEOUT,
            )
            .await
            .expect("barrier published");
        barriers.insert(barrier.order_id.to_string());
    }
    let mut before = Vec::new();
    while !barriers.is_empty() {
        let message = ws
            .next_json(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("no barrier came back; saw {before:?}"));
        if !barriers.remove(message["order_id"].as_str().unwrap_or_default()) {
            before.push(message);
        }
    }
    before
}

#[tokio::test]
async fn redelivering_every_message_to_every_consumer_has_no_second_effect() {
    let app = spawn_app().await;
    let product = app.create_product(5).await;
    let mut ws = app.websocket("/ws").await;
    let confirmed = app.order(product, 2, "tok_visa").await;
    let declined = app.order(product, 1, "tok_chargeDeclined").await;
    let out_of_stock = app.order(product, 50, "tok_visa").await;
    for order in [confirmed, declined, out_of_stock] {
        ws.statuses_until_terminal(order).await;
        app.wait_terminal(order).await;
    }
    assert_eq!(app.stock(product).await, 3);
    let (digests_before, highs_before) = at_rest(&app).await;

    let kafka = app.kafka_settings();
    let reader = kafka.clone();
    let history = tokio::task::spawn_blocking(move || read_all(&reader))
        .await
        .unwrap();
    assert!(
        history.len() >= 15,
        "expected the whole saga history, got {}",
        history.len()
    );
    // Each message again, on its own partition, after the original.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .unwrap();
    let mut expected = highs_before.clone();
    for message in &history {
        let mut record = FutureRecord::to(&message.topic)
            .partition(message.partition)
            .key(&message.key)
            .payload(&message.payload);
        if let Some(headers) = &message.headers {
            record = record.headers(headers.clone());
        }
        producer.send(record, TIMEOUT).await.expect("redelivered");
        *expected
            .get_mut(&(message.topic.clone(), message.partition))
            .expect("a known partition") += 1;
    }

    // Once every group has consumed the copies: no row differs, and no
    // topic holds anything but the copies.
    let digests_after = digests_once_consumed(&app, &expected).await;
    let highs_after = watermarks(&kafka).await;
    let changed = differences(&digests_before, &digests_after);
    assert!(changed.is_empty(), "rows changed: {changed:#?}");
    let published = differences(&expected, &highs_after);
    assert!(published.is_empty(), "messages published: {published:#?}");
    // And the gateway, which read the copies of `order-events` too, told
    // no client anything twice.
    let told_twice = pushes_before_barriers(&mut ws, &kafka, &highs_after).await;
    assert!(told_twice.is_empty(), "told twice: {told_twice:#?}");
    app.teardown().await;
}
