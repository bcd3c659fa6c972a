//! The payment service decides an order's payment once: a repeated
//! authorize command, even with a new event id (a replay, a re-sent
//! command), gets the first answer again, not a second decision.

use crate::helpers::{produce, spawn_app_with, Options, TestBroker};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use shop::Role;
use shop_actors::events::{topics, AuthorizePayment, Envelope, Event};
use shop_actors::kafka::KafkaSettings;
use std::time::Duration;
use uuid::Uuid;

/// An `AuthorizePayment` of 1000 cents for `order_id` with `token`, under
/// a fresh event id.
fn authorize(order_id: Uuid, token: &str) -> Envelope {
    Envelope::new(
        order_id,
        Uuid::new_v4(),
        Event::AuthorizePayment(AuthorizePayment {
            customer_id: "alice".into(),
            amount_cents: 1000,
            currency: "EUR".into(),
            payment_token: token.into(),
        }),
    )
}

/// The first `count` replies on the payment-events topic for `order_id`,
/// in the order the service published them (one partition per order).
async fn replies(kafka: &KafkaSettings, order_id: Uuid, count: usize) -> Vec<Event> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set("group.id", kafka.group("payment-test-reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer
            .subscribe(&[&kafka.topic(topics::PAYMENT_EVENTS)])
            .expect("subscribed");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut found = Vec::new();
        while found.len() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {count} replies for {order_id}: {found:?}",
                found.len()
            );
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.expect("readable");
            let envelope = Envelope::decode(message.payload().unwrap()).expect("an envelope");
            if envelope.order_id == order_id {
                found.push(envelope.event);
            }
        }
        found
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_repeated_authorize_with_a_new_event_id_gets_the_first_answer() {
    let broker = TestBroker::start(3);
    let app = spawn_app_with(Options {
        role: Role::Payment,
        kafka: Some(broker.target()),
        ..Options::default()
    })
    .await;
    let kafka = app.kafka_settings();
    let producer = kafka.producer().unwrap();
    let order_id = Uuid::now_v7();
    // The second command names a declining card: deciding again would
    // answer differently, so only a repeated answer matches the first.
    let first = authorize(order_id, "tok_visa");
    let again = authorize(order_id, "tok_chargeDeclined");
    assert_ne!(first.event_id, again.event_id);
    for command in [&first, &again] {
        produce(
            &producer,
            &kafka.topic(topics::PAYMENT_COMMANDS),
            0,
            &order_id.to_string(),
            &command.encode(),
        )
        .await;
    }
    let answers = replies(&kafka, order_id, 2).await;
    let Event::PaymentAuthorized(authorized) = &answers[0] else {
        panic!("the first command is approved: {answers:?}");
    };
    assert_eq!(authorized.amount_cents, 1000);
    assert_eq!(
        answers[1], answers[0],
        "the repeated command got another decision"
    );
    let rows: i64 = app
        .db
        .query_one(
            "SELECT count(*) FROM payment.authorizations WHERE order_id = $1",
            &[&order_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    app.teardown().await;
    broker.teardown().await;
}
