//! The order repository's group commit (`shop_actors::order::group`), against
//! a real database: writes that share a transaction keep each their own
//! outcome — a stale or repeated step writes nothing while its neighbours
//! commit — and one write that fails does not fail its group.

use chrono::Utc;
use shop_actors::events::{Event, InventoryReserved, OrderLine, OrderStatus, StockLevel};
use shop_actors::order::group::{self, Step, Write};
use shop_actors::order::machine::{SagaPolicy, SagaState};
use shop_actors::order::repo::{Advance, NewOrder};
use tokio::sync::oneshot;
use uuid::Uuid;

fn order() -> NewOrder {
    let order_id = Uuid::now_v7();
    let product_id = Uuid::now_v7();
    NewOrder {
        saga: SagaState {
            order_id,
            customer_id: "group-commit".into(),
            correlation_id: Uuid::now_v7(),
            status: OrderStatus::Pending,
            reason: None,
            seq: 1,
            items: vec![OrderLine {
                product_id,
                quantity: 1,
            }],
            total_cents: 100,
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
            deadline_at: Some(Utc::now() + chrono::Duration::seconds(30)),
            attempts: 0,
        },
        items: vec![shop_actors::order::model::OrderItem {
            product_id,
            name: "thing".into(),
            quantity: 1,
            unit_price_cents: 100,
        }],
        idempotency: None,
        trace: None,
    }
}

/// The step an `InventoryReserved` reply causes, decided from `from`.
fn reserved_step(from: &SagaState, event_id: Uuid) -> Step {
    let reply = Event::InventoryReserved(InventoryReserved {
        items: vec![StockLevel {
            product_id: from.items[0].product_id,
            quantity: 1,
            stock: 9,
        }],
    });
    let transition = from
        .next(&reply, &SagaPolicy::default())
        .expect("a pending order moves on when its stock is reserved");
    let (next, messages) = from.apply(&transition, Utc::now());
    Step {
        event_id,
        from_seq: from.seq,
        from_attempts: from.attempts,
        next,
        messages,
    }
}

type Outcome = oneshot::Receiver<Result<Advance, shop_actors::db::DbError>>;

fn advance(step: Step) -> (Write, Outcome) {
    let (tx, rx) = oneshot::channel();
    let write = Write::Advance {
        step: Box::new(step),
        reply: tx.into(),
    };
    (write, rx)
}

async fn outcome(rx: Outcome) -> Result<Advance, String> {
    rx.await
        .expect("every write is answered")
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn writes_in_one_group_keep_their_own_outcomes() {
    let base = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let url = format!("{base}/shop_group_{}", Uuid::new_v4().simple());
    shop_actors::db::ensure_database(&url).await.unwrap();
    shop_actors::db::migrate(&url, &shop_actors::db::ALL_SCHEMAS)
        .await
        .unwrap();
    let pool = shop_actors::db::pool(&url, 4).unwrap();

    // Three orders created in one group.
    let (x, y, z) = (order(), order(), order());
    let (xs, ys, zs) = (x.saga.clone(), y.saga.clone(), z.saga.clone());
    let mut created = Vec::new();
    let mut writes = Vec::new();
    for new in [x, y, z] {
        let (tx, rx) = oneshot::channel();
        writes.push(Write::Create {
            order: Box::new(new),
            reply: tx.into(),
        });
        created.push(rx);
    }
    group::commit(pool.clone(), writes).await;
    for rx in created {
        rx.await.unwrap().expect("each order is created");
    }

    // One group: x moves; y's step was decided from a version it is not at
    // (stale); z's step collides with its own first history entry (seq 1),
    // so the group's transaction fails and each write is retried alone.
    let e1 = Uuid::now_v7();
    let (w1, x_moved) = advance(reserved_step(&xs, e1));
    let mut y_behind = ys.clone();
    y_behind.seq = 7;
    let (w2, y_stale) = advance(reserved_step(&y_behind, Uuid::now_v7()));
    let mut z_bad = reserved_step(&zs, Uuid::now_v7());
    z_bad.next.seq = 1;
    for message in &mut z_bad.messages {
        if let Event::OrderStatusChanged(change) = &mut message.event {
            change.seq = 1;
        }
    }
    let (w3, z_failed) = advance(z_bad);
    group::commit(pool.clone(), vec![w1, w2, w3]).await;
    assert_eq!(outcome(x_moved).await, Ok(Advance::Applied));
    assert_eq!(outcome(y_stale).await, Ok(Advance::Stale));
    let z_error = outcome(z_failed).await.expect_err("z's write fails");
    assert!(z_error.contains("23505"), "a unique violation: {z_error}");

    // The same reply again (a redelivery) is a duplicate even though it is
    // decided from the right version; y's real step still applies beside it.
    let (w4, x_again) = advance(reserved_step(&xs, e1));
    let (w5, y_moved) = advance(reserved_step(&ys, Uuid::now_v7()));
    group::commit(pool.clone(), vec![w4, w5]).await;
    assert_eq!(outcome(x_again).await, Ok(Advance::Duplicate));
    assert_eq!(outcome(y_moved).await, Ok(Advance::Applied));

    // What is stored matches: x and y moved once, z did not move; only the
    // applied steps wrote history and outbox rows.
    let client = pool.get().await.unwrap();
    let seq = |id: Uuid| {
        let client = &client;
        async move {
            client
                .query_one("SELECT seq FROM orders.orders WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, i32>(0)
        }
    };
    assert_eq!(seq(xs.order_id).await, 2);
    assert_eq!(seq(ys.order_id).await, 2);
    assert_eq!(seq(zs.order_id).await, 1);
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM orders.status_history").await, 5);
    assert_eq!(
        count("SELECT count(*) FROM orders.processed_events").await,
        2
    );
    let opening = 2 * 3;
    let per_step = reserved_step(&xs, Uuid::now_v7()).messages.len() as i64;
    assert_eq!(
        count("SELECT count(*) FROM orders.outbox").await,
        opening + 2 * per_step
    );
    drop(client);
    drop(pool);
    shop_actors::db::drop_database(&url).await.unwrap();
}
