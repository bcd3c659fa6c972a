//! Delivering every message a second time — to every consumer — has no
//! second effect: no stock moves, no payment is taken, no order changes,
//! no client is told anything twice.

use crate::helpers::{spawn_app, TestApp};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use shop_actors::events::topics;
use shop_actors::kafka::KafkaSettings;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a duplicate could change.
async fn snapshot(app: &TestApp) -> Vec<(String, i64)> {
    let mut counts = Vec::new();
    for query in [
        "SELECT count(*) FROM orders.status_history",
        "SELECT count(*) FROM orders.orders WHERE status NOT IN ('CONFIRMED', 'REJECTED')",
        "SELECT count(*) FROM payment.authorizations",
        "SELECT coalesce(sum(stock), 0) FROM product.products",
        "SELECT count(*) FROM product.reservations WHERE status = 'RESERVED'",
        "SELECT count(*) FROM product.outbox",
        "SELECT count(*) FROM orders.outbox",
        "SELECT count(*) FROM payment.outbox",
    ] {
        let value: i64 = app.db.query_one(query, &[]).await.unwrap().get(0);
        counts.push((query.to_owned(), value));
    }
    counts
}

/// Reads every message on every topic, start to end.
fn read_all(kafka: &KafkaSettings) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let (consumer, mut remaining) =
        crate::helpers::read_every_topic(kafka, "redelivery-test-reader");
    let mut messages = Vec::new();
    while remaining > 0 {
        let message = consumer
            .poll(TIMEOUT)
            .expect("message before timeout")
            .unwrap();
        messages.push((
            message.topic().to_owned(),
            message.key().unwrap().to_vec(),
            message.payload().unwrap().to_vec(),
        ));
        remaining -= 1;
    }
    messages
}

/// Waits until the platform's consumer group `group` has committed the
/// end of its topic `topic`.
async fn wait_caught_up(kafka: &KafkaSettings, group: &str, topic: &str) {
    let brokers = kafka.brokers.clone();
    let group = kafka.group(group);
    let topic = kafka.topic(topic);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .unwrap();
        let metadata = consumer.fetch_metadata(Some(&topic), TIMEOUT).unwrap();
        let mut wanted = TopicPartitionList::new();
        let mut highs = Vec::new();
        for partition in metadata.topics()[0].partitions() {
            let (_, high) = consumer
                .fetch_watermarks(&topic, partition.id(), TIMEOUT)
                .unwrap();
            wanted.add_partition(&topic, partition.id());
            highs.push((partition.id(), high));
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
    let kafka = app.kafka_settings();
    for (group, topic) in [
        ("product", topics::INVENTORY_COMMANDS),
        ("order", topics::INVENTORY_EVENTS),
        ("order", topics::PAYMENT_EVENTS),
        ("payment", topics::PAYMENT_COMMANDS),
    ] {
        wait_caught_up(&kafka, group, topic).await;
    }
    let before = snapshot(&app).await;
    let stock_before = app.stock(product).await;
    assert_eq!(stock_before, 3);

    let reader = kafka.clone();
    let history = tokio::task::spawn_blocking(move || read_all(&reader))
        .await
        .unwrap();
    assert!(
        history.len() >= 15,
        "expected the whole saga history, got {}",
        history.len()
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .unwrap();
    for (topic, key, payload) in &history {
        producer
            .send(FutureRecord::to(topic).key(key).payload(payload), TIMEOUT)
            .await
            .expect("redelivered");
    }

    for (group, topic) in [
        ("product", topics::INVENTORY_COMMANDS),
        ("order", topics::INVENTORY_EVENTS),
        ("order", topics::PAYMENT_EVENTS),
        ("payment", topics::PAYMENT_COMMANDS),
    ] {
        wait_caught_up(&kafka, group, topic).await;
    }
    // Give the relays a moment: a second effect would show as new rows or events.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(snapshot(&app).await, before);
    assert_eq!(app.stock(product).await, stock_before);
    assert!(
        ws.next_json(Duration::from_secs(1)).await.is_none(),
        "a client was told something twice"
    );
    app.teardown().await;
}
