//! Saga placement: two order-service processes split the orders by
//! partition — each saga actor runs where its order's partition is
//! assigned — and when one leaves, the other takes its sagas over from
//! Postgres with no order lost and no step taken twice.

use crate::helpers::{spawn_app_with, statuses, Options, TestApp};
use futures::future::join_all;
use serde_json::Value;
use shop::Role;
use shop_actors::order::placement::partition_of;
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;

/// Partitions per topic in tests (see `helpers::spawn_app_with`).
const PARTITIONS: i32 = 3;

/// What `GET /admin/sagas/running` says.
struct Running {
    owned: BTreeSet<i32>,
    orders: BTreeSet<Uuid>,
}

async fn running(app: &TestApp) -> Running {
    let body: Value = app
        .get_json(format!("{}/admin/sagas/running", app.order_url))
        .await;
    let ids = |key: &str| -> Vec<Value> { body[key].as_array().cloned().unwrap_or_default() };
    Running {
        owned: ids("owned_partitions")
            .iter()
            .map(|p| p.as_i64().unwrap() as i32)
            .collect(),
        orders: ids("order_ids")
            .iter()
            .map(|id| id.as_str().unwrap().parse().unwrap())
            .collect(),
    }
}

/// Waits until `check` holds for the two processes' views.
async fn wait_for(
    a: &TestApp,
    b: &TestApp,
    what: &str,
    check: impl Fn(&Running, &Running) -> bool,
) -> (Running, Running) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let (ra, rb) = (running(a).await, running(b).await);
        if check(&ra, &rb) {
            return (ra, rb);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: a owns {:?} running {}, b owns {:?} running {}",
            ra.owned,
            ra.orders.len(),
            rb.owned,
            rb.orders.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_order_processes_split_sagas_by_partition_and_hand_over_on_leave() {
    // Slow payments keep the sagas in flight long enough to look at them.
    let latency = 4_000;
    let a = spawn_app_with(Options {
        payment_latency_ms: latency,
        ..Options::default()
    })
    .await;
    let b = spawn_app_with(Options {
        role: Role::Order,
        kafka: Some(a.kafka.clone()),
        db_name: Some(a.db_name.clone()),
        product_url: Some(a.product_url.clone()),
        payment_latency_ms: latency,
        ..Options::default()
    })
    .await;
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();
    wait_for(&a, &b, "partitions split", |ra, rb| {
        !ra.owned.is_empty()
            && !rb.owned.is_empty()
            && ra.owned.is_disjoint(&rb.owned)
            && ra.owned.union(&rb.owned).copied().collect::<BTreeSet<_>>() == all
    })
    .await;

    // Orders placed through both processes, against stock for all of them.
    let product = a.create_product(100).await;
    let placed = join_all((0..30).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.order(product, 1, "tok_visa")
    }))
    .await;
    let placed: BTreeSet<Uuid> = placed.into_iter().collect();

    // Each saga runs in exactly one process: the owner of its partition.
    let (ra, rb) = wait_for(&a, &b, "every saga running at its owner", |ra, rb| {
        ra.orders
            .union(&rb.orders)
            .copied()
            .collect::<BTreeSet<_>>()
            == placed
    })
    .await;
    assert!(ra.orders.is_disjoint(&rb.orders), "a saga runs twice");
    for (view, name) in [(&ra, "a"), (&rb, "b")] {
        for order in &view.orders {
            assert!(
                view.owned.contains(&partition_of(*order, PARTITIONS)),
                "order {order} runs in {name}, which does not own its partition"
            );
        }
    }
    assert!(
        !ra.orders.is_empty() && !rb.orders.is_empty(),
        "both processes carry sagas"
    );

    // B leaves while its sagas wait for payment: A takes every partition and
    // resumes B's sagas from Postgres.
    let handed_over = rb.orders.clone();
    b.stop_keeping_data().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let now = running(&a).await;
        if now.owned == all {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never took b's partitions: {:?}",
            now.owned
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for order_id in &placed {
        let order = a.wait_terminal(*order_id).await;
        assert_eq!(order["status"], "CONFIRMED", "order {order_id}: {order}");
        let history = order["history"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            statuses(&history),
            [
                "PENDING",
                "INVENTORY_RESERVED",
                "PAYMENT_AUTHORIZED",
                "CONFIRMED"
            ],
            "order {order_id} took each step once (handed over: {})",
            handed_over.contains(order_id)
        );
    }
    assert_eq!(a.count("payment.authorizations").await, 30);
    assert_eq!(a.stock(product).await, 70);
    // Finished sagas stop; none is left behind.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = running(&a).await;
        if after.orders.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sagas left running: {:?}",
            after.orders
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.teardown().await;
}
