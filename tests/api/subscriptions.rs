//! The WebSocket subscription protocol: snapshot then live updates,
//! catch-up from `last_seq` with no gap and no duplicate, a customer's own
//! orders, heartbeats, slow consumers, shutdown, and gateway replicas.

use crate::helpers::{postgres_base, spawn_app_with, statuses, token, Options, TestApp, WsClient};
use futures::future::join_all;
use futures::StreamExt;
use serde_json::{json, Value};
use shop::auth::Role;
use shop::Role as Service;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// Status messages (snapshots and updates) of `order_id` until a terminal one.
async fn until_terminal(ws: &mut WsClient, order_id: Uuid) -> Vec<Value> {
    ws.statuses_until_terminal(order_id).await
}

fn seqs(messages: &[Value]) -> Vec<i64> {
    messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

/// Holds every payment decision until the returned session rolls back: it
/// locks `payment.authorizations` against writes, and the payment service
/// records its decision there in the transaction of its reply, so no order
/// gets past INVENTORY_RESERVED (seq 2) meanwhile.
async fn hold_payments(app: &TestApp) -> tokio_postgres::Client {
    let url = format!("{}/{}", postgres_base(), app.db_name);
    let (holder, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    holder
        .batch_execute("BEGIN; LOCK TABLE payment.authorizations IN SHARE MODE")
        .await
        .unwrap();
    holder
}

#[tokio::test]
async fn subscribing_gives_a_snapshot_then_every_later_update_once() {
    let app = spawn_app_with(Options::default()).await;
    let product = app.create_product(10).await;
    // The snapshot is taken while payment is held, so the order's last two
    // statuses can only come as updates.
    let held = hold_payments(&app).await;
    let order_id = app.order(product, 1, "tok_visa").await;
    let mut ws = app
        .websocket_as("/ws", &token("alice", Role::Customer))
        .await;
    ws.send_json(&json!({"type": "subscribe", "order_id": order_id}))
        .await;
    let snapshot = ws.wait_for("snapshot").await;
    assert_eq!(ws.wait_for("subscribed").await["seq"], snapshot["seq"]);
    held.batch_execute("ROLLBACK").await.unwrap();
    let mut messages = vec![snapshot];
    // Bounded: the server's pings would keep a read waiting for ever.
    let later = tokio::time::timeout(Duration::from_secs(30), until_terminal(&mut ws, order_id));
    messages.extend(later.await.expect("the order's later updates"));
    let first = messages[0]["seq"].as_i64().unwrap();
    assert!(
        (1..=2).contains(&first),
        "the snapshot came before the payment: {messages:?}"
    );
    assert!(messages[1..].iter().all(|m| m["type"] == "update"));
    assert_eq!(
        seqs(&messages),
        (first..=4).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_eq!(
        statuses(&messages[messages.len() - 2..]),
        ["PAYMENT_AUTHORIZED", "CONFIRMED"]
    );
    // Nothing follows the final update: no duplicate.
    let more = ws.until_barrier().await;
    assert!(more.is_empty(), "{more:?}");
    // Unsubscribing is acknowledged.
    ws.send_json(&json!({"type": "unsubscribe", "order_id": order_id}))
        .await;
    assert_eq!(
        ws.wait_for("unsubscribed").await["order_id"],
        json!(order_id)
    );
    app.teardown().await;
}

#[tokio::test]
async fn reconnecting_with_last_seq_gets_exactly_the_missed_updates() {
    let app = spawn_app_with(Options::default()).await;
    let product = app.create_product(10).await;
    let alice = token("alice", Role::Customer);
    // Another of alice's tabs watches the order to its end, so the gateway
    // has read every update before the reconnection below (the order
    // service can report the end a little before the gateway has read it;
    // a reconnection then would get the rest as live updates instead).
    let mut watcher = app.websocket_as("/ws", &alice).await;
    watcher.subscribe_mine().await;
    let order_id = app.order(product, 1, "tok_chargeDeclined").await;
    watcher.statuses_until_terminal(order_id).await;
    // The client saw PENDING (seq 1), then lost its connection.
    let mut ws = app
        .websocket_as(&format!("/ws?order_id={order_id}&last_seq=1"), &alice)
        .await;
    let mut missed = Vec::new();
    loop {
        let message = ws.next_json(Duration::from_secs(10)).await.unwrap();
        if message["type"] == "subscribed" {
            assert_eq!(message["seq"], 4);
            break;
        }
        missed.push(message);
    }
    assert!(missed.iter().all(|m| m["type"] == "update"));
    assert_eq!(seqs(&missed), [2, 3, 4]);
    assert_eq!(
        statuses(&missed),
        ["INVENTORY_RESERVED", "COMPENSATING", "REJECTED"]
    );
    assert_eq!(missed[2]["reason"], "PAYMENT_DECLINED");
    // Nothing else follows: no duplicate of what was just sent (the watcher
    // saw the end before this connection opened, so no live update of the
    // order is still to come).
    let more = ws.until_barrier().await;
    assert!(more.is_empty(), "{more:?}");
    // A bad request is answered, and the connection stays usable.
    ws.send_json(&json!({"type": "subscribe"})).await;
    assert_eq!(ws.wait_for("error").await["error"], "bad_request");
    ws.send_json(&json!({"type": "subscribe", "order_id": order_id, "last_seq": 4}))
        .await;
    assert_eq!(ws.wait_for("subscribed").await["seq"], 4);
    app.teardown().await;
}

#[tokio::test]
async fn mine_follows_every_order_of_the_caller_and_no_other() {
    let app = spawn_app_with(Options::default()).await;
    let product = app.create_product(10).await;
    let mut ws = app
        .websocket_as("/ws", &token("alice", Role::Customer))
        .await;
    ws.subscribe_mine().await;
    let mut bobs = app.websocket_as("/ws", &token("bob", Role::Customer)).await;
    bobs.subscribe_mine().await;
    let place = |customer: &'static str| {
        app.place_order_as(
            customer,
            json!({"items": [{"product_id": product, "quantity": 1}], "payment_token": "tok_visa"}),
        )
    };
    let orders = join_all([place("alice"), place("bob"), place("alice")]).await;
    let (mine, theirs) = (vec![orders[0], orders[2]], orders[1]);
    for order in &mine {
        let updates = until_terminal(&mut ws, *order).await;
        assert_eq!(seqs(&updates), [1, 2, 3, 4]);
    }
    // Bob has his order's end: the hub has handed each of its updates to
    // everyone it meant them for (all its followers in one step), so
    // anything leaked to alice is queued ahead of the barrier's answer.
    let his = until_terminal(&mut bobs, theirs).await;
    assert_eq!(seqs(&his), [1, 2, 3, 4]);
    let leaked = ws.until_barrier().await;
    assert!(leaked.is_empty(), "leaked {leaked:?}");
    app.teardown().await;
}

#[tokio::test]
async fn silent_clients_are_closed_and_listening_ones_kept() {
    let app = spawn_app_with(Options {
        ws_ping_seconds: 1,
        ws_idle_timeout_seconds: 2,
        ..Options::default()
    })
    .await;
    let alice = token("alice", Role::Customer);
    let (mut listening, mut silent) = (
        app.websocket_as("/ws", &alice).await,
        app.websocket_as("/ws", &alice).await,
    );
    // The listening client reads (and so answers pings) for 4 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        assert!(
            listening
                .next_json(Duration::from_millis(200))
                .await
                .is_none(),
            "nothing to say"
        );
    }
    // A client answering pings stays: it is still answered.
    assert_eq!(listening.until_barrier().await, Vec::<Value>::new());
    let close = silent.close_frame().await;
    assert_eq!(close, Some((CloseCode::Normal, "idle timeout".to_owned())));
    app.teardown().await;
}

#[tokio::test]
async fn a_client_too_slow_for_its_queue_is_closed_with_1008_and_others_are_not() {
    let app = spawn_app_with(Options {
        ws_queue_limit: 3,
        ..Options::default()
    })
    .await;
    let product = app.create_product(1_000).await;
    let slow = app.websocket("/ws").await;
    let mut fine = app
        .websocket_as("/ws", &token("carol", Role::Customer))
        .await;
    fine.subscribe_mine().await;
    // A burst of updates to the admin following everything, whose queue
    // holds three: it overflows. (Carol's own order never has more than two
    // updates in flight at once.)
    let placed = join_all((0..40).map(|_| app.order(product, 1, "tok_visa"))).await;
    for order in &placed {
        app.wait_terminal(*order).await;
    }
    let mut slow = slow;
    assert_eq!(
        slow.close_frame().await.map(|(code, _)| code),
        Some(CloseCode::Policy)
    );
    // Another client is untouched and still served.
    let carols = app
        .place_order_as(
            "carol",
            json!({"items": [{"product_id": product, "quantity": 1}]}),
        )
        .await;
    let updates = until_terminal(&mut fine, carols).await;
    assert_eq!(seqs(&updates), [1, 2, 3, 4]);
    app.teardown().await;
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let app = spawn_app_with(Options::default()).await;
    let mut ws = app
        .websocket_as("/ws", &token("alice", Role::Customer))
        .await;
    ws.subscribe_mine().await;
    let stopping = tokio::spawn(app.teardown());
    assert_eq!(
        ws.close_frame().await.map(|(code, _)| code),
        Some(CloseCode::Away)
    );
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_client_on_either_gateway_replica_gets_every_update() {
    let app = spawn_app_with(Options {
        payment_latency_ms: 300,
        ..Options::default()
    })
    .await;
    let replica = spawn_app_with(Options {
        role: Service::Gateway,
        kafka: Some(app.kafka.clone()),
        db_name: Some(app.db_name.clone()),
        order_url: Some(app.order_url.clone()),
        ..Options::default()
    })
    .await;
    let alice = token("alice", Role::Customer);
    let mut on_first = app.websocket_as("/ws", &alice).await;
    let mut on_replica = replica.websocket_as("/ws", &alice).await;
    for ws in [&mut on_first, &mut on_replica] {
        ws.subscribe_mine().await;
    }
    let product = app.create_product(10).await;
    let order_id = app.order(product, 1, "tok_visa").await;
    for ws in [&mut on_first, &mut on_replica] {
        let updates = until_terminal(ws, order_id).await;
        assert_eq!(seqs(&updates), [1, 2, 3, 4]);
    }
    // A snapshot works on the replica too (it asks the order service).
    on_replica
        .send_json(&json!({"type": "subscribe", "order_id": order_id}))
        .await;
    let snapshot = on_replica.wait_for("snapshot").await;
    assert_eq!(snapshot["status"], "CONFIRMED");
    replica.stop_keeping_data().await;
    app.teardown().await;
}

impl WsClient {
    /// Reads until the server's close frame; its code and reason.
    async fn close_frame(&mut self) -> Option<(CloseCode, String)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket_mut().next())
                .await
                .ok()??;
            match next {
                Ok(Message::Close(Some(frame))) => {
                    return Some((frame.code, frame.reason.to_string()))
                }
                Ok(Message::Close(None)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

#[tokio::test]
async fn stock_changes_reach_every_client_following_stock() {
    let app = spawn_app_with(Options::default()).await;
    let product = app.create_product(5).await;
    let mut everything = app.websocket("/ws").await;
    let mut ws = app
        .websocket_as("/ws", &token("carol", Role::Customer))
        .await;
    ws.send_json(&json!({"type": "subscribe", "scope": "stock"}))
        .await;
    assert_eq!(ws.wait_for("subscribed").await["scope"], "stock");
    // Someone else's orders: one reserves 2 and is confirmed, one reserves
    // 1 and is declined, which puts it back.
    let confirmed = app.order(product, 2, "tok_visa").await;
    app.wait_terminal(confirmed).await;
    let declined = app.order(product, 1, "tok_chargeDeclined").await;
    app.wait_terminal(declined).await;
    let mut levels = Vec::new();
    while levels.len() < 3 {
        let message = ws.wait_for("stock").await;
        assert_eq!(message["product_id"], product.to_string(), "{message}");
        assert!(message["at"].is_string(), "{message}");
        levels.push(message["stock"].as_i64().unwrap());
    }
    assert_eq!(levels, [3, 2, 3]);
    // Order updates are not part of it: once an admin following every
    // order has both ends, the hub has handed out each of their updates,
    // and none is queued for carol ahead of the barrier's answer.
    for order in [confirmed, declined] {
        everything.statuses_until_terminal(order).await;
    }
    let leaked = ws.until_barrier().await;
    assert!(leaked.is_empty(), "leaked {leaked:?}");
    app.teardown().await;
}
