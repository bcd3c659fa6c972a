//! The gateway's order history in Redis: a restarted gateway resumes
//! reading where its history stopped, so updates published while no gateway
//! ran are not missed, and subscribers' snapshots and catch-ups come from
//! Redis — here with the order service unreachable, so nothing else could
//! have answered them — while orders Redis does not know still go to the
//! order service.

use crate::helpers::{spawn_app_with, token, Options, TestApp, WsClient};
use serde_json::{json, Value};
use shop::auth::Role;
use shop::Role as Service;
use std::time::Duration;
use uuid::Uuid;

/// Nothing listens here: a gateway pointed at it cannot reach the order service.
const NO_ORDER_SERVICE: &str = "http://127.0.0.1:9";

async fn gateway(app: &TestApp, db_name: Option<String>, order_url: &str) -> TestApp {
    spawn_app_with(Options {
        role: Service::Gateway,
        kafka: Some(app.kafka.clone()),
        db_name,
        order_url: Some(order_url.to_owned()),
        ..Options::default()
    })
    .await
}

/// Subscribes to `order_id` until the gateway answers with a snapshot: its
/// reader may still be catching up, and until then the order is unknown to
/// Redis and the lookup falls through to the (unreachable) order service.
async fn snapshot_once_read(ws: &mut WsClient, order_id: Uuid) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        ws.send_json(&json!({"type": "subscribe", "order_id": order_id}))
            .await;
        let answer = loop {
            let message = ws.next_json(Duration::from_secs(5)).await.expect("answer");
            if message["type"] == "snapshot" || message["type"] == "error" {
                break message;
            }
        };
        if answer["type"] == "snapshot" {
            return answer;
        }
        assert_eq!(answer["error"], "unavailable", "{answer}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted gateway never read {order_id}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_restarted_gateway_resumes_its_history_and_answers_subscribers_from_redis() {
    let app = spawn_app_with(Options::default()).await;
    let first = gateway(&app, None, &app.order_url).await;
    let alice = token("alice", Role::Customer);
    let mut ws = first.websocket_as("/ws", &alice).await;
    ws.subscribe_mine().await;
    let product = app.create_product(10).await;
    let seen_live = app.order(product, 1, "tok_visa").await;
    let live = ws.statuses_until_terminal(seen_live).await;
    assert_eq!(live.len(), 4, "{live:?}");
    drop(ws);
    let history = first.stop_keeping_data().await;

    // No gateway of this history runs while this order goes through.
    let while_down = app.order(product, 1, "tok_chargeDeclined").await;
    app.wait_terminal(while_down).await;

    let second = gateway(&app, Some(history), NO_ORDER_SERVICE).await;
    let mut ws = second.websocket_as("/ws", &alice).await;
    let snapshot = snapshot_once_read(&mut ws, while_down).await;
    assert_eq!(snapshot["status"], "REJECTED", "{snapshot}");
    assert_eq!(snapshot["reason"], "PAYMENT_DECLINED");
    assert_eq!(snapshot["seq"], 4);
    assert_eq!(ws.wait_for("subscribed").await["seq"], 4);

    // A catch-up: exactly what follows last_seq, from Redis.
    ws.send_json(&json!({"type": "subscribe", "order_id": seen_live, "last_seq": 1}))
        .await;
    let mut missed = Vec::new();
    loop {
        let message = ws.next_json(Duration::from_secs(10)).await.expect("reply");
        match message["type"].as_str() {
            Some("subscribed") => break,
            Some("update") => missed.push(message["seq"].as_i64().unwrap()),
            _ => panic!("unexpected {message}"),
        }
    }
    assert_eq!(missed, [2, 3, 4]);

    // Redis knows whose order it is: another customer is told it does not exist.
    let mut bob = second
        .websocket_as("/ws", &token("bob", Role::Customer))
        .await;
    bob.send_json(&json!({"type": "subscribe", "order_id": seen_live}))
        .await;
    assert_eq!(bob.wait_for("error").await["error"], "not_found");

    // An order Redis does not know goes to the order service, unreachable here.
    ws.send_json(&json!({"type": "subscribe", "order_id": Uuid::now_v7()}))
        .await;
    assert_eq!(ws.wait_for("error").await["error"], "unavailable");

    second.teardown().await;
    app.teardown().await;
}
