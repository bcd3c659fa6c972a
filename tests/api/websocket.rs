//! Status changes reach WebSocket clients in order.

use crate::helpers::{spawn_app, spawn_app_with, statuses, websocket_upgrade, Options};
use std::time::Duration;

#[tokio::test]
async fn websocket_client_sees_every_status_in_order_until_confirmed() {
    let app = spawn_app().await;
    let product = app.create_product(10).await;
    let mut ws = app.websocket("/ws").await;
    let order_id = app.order(product, 1, "tok_visa").await;
    let updates = ws.statuses_until_terminal(order_id).await;
    assert_eq!(
        statuses(&updates),
        [
            "PENDING",
            "INVENTORY_RESERVED",
            "PAYMENT_AUTHORIZED",
            "CONFIRMED"
        ]
    );
    let seqs: Vec<i64> = updates.iter().map(|u| u["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert!(updates.iter().all(|u| u["at"].is_string()));
    app.teardown().await;
}

#[tokio::test]
async fn websocket_client_sees_rejection_with_its_reason() {
    let app = spawn_app().await;
    let product = app.create_product(10).await;
    let mut ws = app.websocket("/ws").await;
    let order_id = app.order(product, 1, "tok_chargeDeclined").await;
    let updates = ws.statuses_until_terminal(order_id).await;
    assert_eq!(
        statuses(&updates),
        ["PENDING", "INVENTORY_RESERVED", "COMPENSATING", "REJECTED"]
    );
    assert_eq!(updates.last().unwrap()["reason"], "PAYMENT_DECLINED");
    app.teardown().await;
}

#[tokio::test]
async fn following_one_order_shows_only_that_order() {
    // A slow processor leaves time to connect after the order is accepted.
    let app = spawn_app_with(Options {
        payment_latency_ms: 800,
        ..Options::default()
    })
    .await;
    let product = app.create_product(10).await;
    let followed = app.order(product, 1, "tok_visa").await;
    let mut ws = app.websocket(&format!("/ws?order_id={followed}")).await;
    // An admin following everything sees the other order too.
    let mut everything = app.websocket("/ws").await;
    let other = app.order(product, 1, "tok_visa").await;
    let updates = ws.statuses_until_terminal(followed).await;
    assert_eq!(updates.last().unwrap()["status"], "CONFIRMED");
    // Once the admin has the other order's end, the hub has handed each of
    // its updates to everyone it meant them for (each update to all its
    // followers in one step): anything leaked is already queued for `ws`,
    // ahead of the barrier's answer.
    everything.statuses_until_terminal(other).await;
    let leaked = ws.until_barrier().await;
    assert!(leaked.is_empty(), "leaked {leaked:?}");
    app.teardown().await;
}

#[tokio::test]
async fn closed_connection_actor_is_cleaned_up() {
    let app = spawn_app().await;
    let gateway = app.platform.as_ref().unwrap().gateway.clone().unwrap();
    let ws = app.websocket("/ws").await;
    assert_eq!(gateway.connections().await.unwrap(), 1);
    drop(ws);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gateway.connections().await.unwrap() > 0 || gateway.subscribers().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection actor not cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.teardown().await;
}

#[tokio::test]
async fn bad_websocket_query_is_a_json_400() {
    let app = spawn_app().await;
    let response = websocket_upgrade(
        &app.http,
        &format!(
            "{}/ws?order_id=nope",
            app.ws_url.replace("ws://", "http://")
        ),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");

    // Not a WebSocket handshake at all, or one of another version: the
    // caller is told what is missing, in the same JSON shape.
    let url = format!("{}/ws", app.ws_url.replace("ws://", "http://"));
    let plain = app.http.get(&url).send().await.unwrap();
    assert_eq!(plain.status(), 400);
    let body: serde_json::Value = plain.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    assert!(
        body["message"].as_str().unwrap().contains("Upgrade"),
        "{body}"
    );
    let old = app
        .http
        .get(&url)
        .header("connection", "keep-alive, Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 400);
    let body: serde_json::Value = old.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("version"),
        "{body}"
    );
    app.teardown().await;
}
