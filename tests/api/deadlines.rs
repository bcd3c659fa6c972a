//! Sagas keep their promises when answers do not come: deadlines that
//! survive restarts, compensation that voids late payments, and retries that
//! end in a visible FAILED state instead of a silently stuck order.

use crate::helpers::{spawn_app_with, Options, TestBroker};
use serde_json::Value;
use shop::Role;
use std::time::Duration;
use uuid::Uuid;

/// Polls `query` (one row, one text column) until it returns `want`.
async fn wait_for(db: &tokio_postgres::Client, query: &str, id: Uuid, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let row = db.query_opt(query, &[&id]).await.unwrap();
        let got: Option<String> = row.map(|r| r.get(0));
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{query} for {id}: got {got:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn history(order: &Value) -> Vec<String> {
    order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{}{}",
                h["status"].as_str().unwrap(),
                h["reason"]
                    .as_str()
                    .map(|r| format!("({r})"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

/// Log output kept in memory, to read what was logged at which level.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// The lines that mention `order_id`.
    fn lines_about(&self, order_id: Uuid) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(&order_id.to_string()))
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn payment_timeout_releases_stock_and_voids_the_late_authorization() {
    // The processor answers after 15 s; the saga waits only 8 s. (Generous
    // enough that the reservation itself, which waits for the consumer
    // groups to form on a fresh broker, lands before the first deadline.)
    let app = spawn_app_with(Options {
        payment_latency_ms: 15_000,
        saga_step_timeout_ms: 8_000,
        ..Options::default()
    })
    .await;
    let product = app.create_product(5).await;
    let order_id = app.order(product, 2, "tok_visa").await;
    let order = app.wait_terminal(order_id).await;
    assert_eq!(order["status"], "REJECTED");
    assert_eq!(order["reason"], "TIMEOUT");
    assert_eq!(
        history(&order),
        [
            "PENDING",
            "INVENTORY_RESERVED",
            "COMPENSATING(TIMEOUT)",
            "REJECTED(TIMEOUT)"
        ]
    );
    assert_eq!(app.stock(product).await, 5, "reserved stock came back");
    // The authorization the processor made late is voided, not kept.
    wait_for(
        &app.db,
        "SELECT status FROM payment.authorizations WHERE order_id = $1",
        order_id,
        "VOIDED",
    )
    .await;
    app.teardown().await;
}

#[tokio::test]
async fn deadline_persists_across_a_restart() {
    // The payment never answers in time; the platform is down when the
    // stored deadline passes. If a restart armed a fresh deadline instead
    // of the stored one, the order would time out a whole step timeout
    // after the restart, not at once.
    const STEP_TIMEOUT: Duration = Duration::from_secs(15);
    let options = || Options {
        payment_latency_ms: 120_000,
        saga_step_timeout_ms: STEP_TIMEOUT.as_millis() as u64,
        ..Options::default()
    };
    let app = spawn_app_with(options()).await;
    let product = app.create_product(5).await;
    let order_id = app.order(product, 1, "tok_visa").await;
    // Waiting for the payment: the deadline is the payment step's.
    wait_for(
        &app.db,
        "SELECT status FROM orders.orders WHERE id = $1",
        order_id,
        "INVENTORY_RESERVED",
    )
    .await;
    let deadline: chrono::DateTime<chrono::Utc> = app
        .db
        .query_one(
            "SELECT deadline_at FROM orders.orders WHERE id = $1",
            &[&order_id],
        )
        .await
        .unwrap()
        .get(0);
    let db_name = app.stop_keeping_data().await;
    // Stay stopped until the stored deadline has passed.
    let overdue = (deadline - chrono::Utc::now() + chrono::Duration::milliseconds(500))
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(overdue).await;
    let app = spawn_app_with(Options {
        db_name: Some(db_name),
        ..options()
    })
    .await;
    // A third of a step timeout: far less than a fresh deadline would take.
    let bound = tokio::time::Instant::now() + STEP_TIMEOUT / 3;
    loop {
        let reason: Option<String> = app
            .db
            .query_one(
                "SELECT reason FROM orders.orders WHERE id = $1",
                &[&order_id],
            )
            .await
            .unwrap()
            .get(0);
        if reason.as_deref() == Some("TIMEOUT") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < bound,
            "the overdue saga did not time out within {:?} of the restart: it was given a fresh deadline",
            STEP_TIMEOUT / 3
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let order = app.wait_terminal(order_id).await;
    assert_eq!(order["status"], "REJECTED");
    assert_eq!(order["reason"], "TIMEOUT");
    // The reservation made before the restart is released: the release
    // leaves a tombstone that refuses a late one, and the stock is back.
    wait_for(
        &app.db,
        "SELECT reason FROM product.released_orders WHERE order_id = $1",
        order_id,
        "TIMEOUT",
    )
    .await;
    let held: i64 = app
        .db
        .query_one(
            "SELECT count(*) FROM product.reservations WHERE order_id = $1 AND status = 'RESERVED'",
            &[&order_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0);
    assert_eq!(app.stock(product).await, 5);
    app.teardown().await;
}

#[tokio::test]
async fn unacknowledged_compensation_ends_failed_and_listed_then_heals() {
    // What the platform logs from here on: the test's runtime has one
    // thread, so every actor it starts logs through this subscriber.
    let logged = Captured::default();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logged.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish(),
    );
    // An order service with no product service: nobody acknowledges a release.
    let broker = TestBroker::start(3);
    let order_app = spawn_app_with(Options {
        role: Role::Order,
        kafka: Some(broker.target()),
        saga_retry_base_ms: 100,
        saga_max_attempts: 3,
        ..Options::default()
    })
    .await;
    // The metrics registry is the process's, shared by every test running
    // in it: the count is compared before and after, and no other test
    // ends a saga FAILED (they all keep the default attempts and waits).
    let failed_counter = "shop_saga_outcomes_total{status=\"FAILED\",reason=\"PAYMENT_DECLINED\"}";
    let failed_before = crate::helpers::metric_value(&order_app.metrics().await, failed_counter);
    // An order whose payment was declined and whose stock must come back.
    let order_id = Uuid::now_v7();
    order_app
        .db
        .batch_execute(&format!(
            "INSERT INTO orders.orders (id, customer_id, status, reason, total_cents, currency, payment_token, correlation_id, seq, deadline_at, attempts)
             VALUES ('{order_id}', 'carol', 'COMPENSATING', 'PAYMENT_DECLINED', 1000, 'EUR', 'tok_chargeDeclined', '{}', 3, now(), 0);
             INSERT INTO orders.order_items VALUES ('{order_id}', '00000000-0000-4000-8000-000000000001', 'Enamel camp mug', 1, 1000);",
            Uuid::new_v4()
        ))
        .await
        .unwrap();
    wait_for(
        &order_app.db,
        "SELECT status FROM orders.orders WHERE id = $1",
        order_id,
        "FAILED",
    )
    .await;
    let attempts: i32 = order_app
        .db
        .query_one(
            "SELECT attempts FROM orders.orders WHERE id = $1",
            &[&order_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 3);
    // Each attempt (SAGA_MAX_ATTEMPTS of them) is a warning; giving up is
    // one error an operator sees.
    let lines = logged.lines_about(order_id);
    let resent = lines
        .iter()
        .filter(|l| l.contains(" WARN ") && l.contains("compensation not acknowledged yet"))
        .count();
    assert_eq!(resent, 3, "{lines:#?}");
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("ERROR") && l.contains("saga FAILED"))
        .collect();
    assert_eq!(failed.len(), 1, "{lines:#?}");
    let stuck: Value = order_app
        .get_json(format!("{}/admin/sagas/stuck", order_app.order_url))
        .await;
    assert_eq!(stuck["count"], 1, "{stuck}");
    assert_eq!(stuck["sagas"][0]["order_id"], order_id.to_string());
    assert_eq!(stuck["sagas"][0]["status"], "FAILED");
    // ... and counted, for alerting.
    let metrics = order_app.metrics().await;
    assert_eq!(
        crate::helpers::metric_value(&metrics, failed_counter),
        failed_before + 1.0,
        "{metrics}"
    );

    // The product service comes back: the releases that were sent are
    // applied, and the acknowledgement ends the order REJECTED.
    let db_name = order_app.db_name.clone();
    let product_app = spawn_app_with(Options {
        role: Role::Product,
        kafka: Some(broker.target()),
        db_name: Some(db_name),
        ..Options::default()
    })
    .await;
    wait_for(
        &order_app.db,
        "SELECT status FROM orders.orders WHERE id = $1",
        order_id,
        "REJECTED",
    )
    .await;
    let tombstones: i64 = order_app
        .db
        .query_one(
            "SELECT count(*) FROM product.released_orders WHERE order_id = $1",
            &[&order_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tombstones, 1);

    // A reservation for the released order that arrives now (late, or
    // replayed) takes nothing.
    let product = product_app.create_product(5).await;
    let late = crate::helpers::reserve(order_id, product, 2);
    let settings = product_app.kafka_settings();
    let producer = settings.producer().unwrap();
    crate::helpers::produce(
        &producer,
        &settings.topic(shop_actors::events::topics::INVENTORY_COMMANDS),
        0,
        &order_id.to_string(),
        &late.encode(),
    )
    .await;
    // Handled once its id is in the product service's inbox: the stock
    // is read after that, in the same state the command left it.
    crate::helpers::wait_for_count(
        &order_app.db,
        "SELECT count(*) FROM product.processed_events WHERE event_id = $1",
        late.event_id,
        1,
        "the late reservation was never handled",
    )
    .await;
    assert_eq!(
        product_app.stock(product).await,
        5,
        "a late reservation took stock"
    );
    let held: i64 = order_app
        .db
        .query_one(
            "SELECT count(*) FROM product.reservations WHERE order_id = $1",
            &[&order_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0, "a late reservation was recorded");
    product_app.stop_keeping_data().await;
    order_app.teardown().await;
    broker.teardown().await;
}
