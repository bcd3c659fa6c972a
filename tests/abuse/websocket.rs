//! Abuse of the gateway's WebSockets: ping and frame floods from clients that never read, oversized frames, expiring tokens, per-subject caps.

use crate::helpers::{spawn_app, statuses, token, websocket_upgrade, TestApp, JWT_SECRET};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use shop::auth::{Authenticator, Role};
use std::time::{Duration, SystemTime};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Growth of the whole test process's memory a flood may cause (the
/// gateway's per-connection bound is far smaller: see docs/guarantees.md;
/// this leaves room for the other tests running in the same process).
const MAX_GROWTH_KIB: u64 = 64 * 1024;

type RawSocket = WebSocketStream<tokio::net::TcpStream>;

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A raw client with a 4 KiB receive buffer, as a client that never reads
/// would have, authenticated with `token`.
async fn raw_client(app: &TestApp, token: &str) -> RawSocket {
    let addr: std::net::SocketAddr = app.ws_url.trim_start_matches("ws://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let mut request = format!("{}/ws", app.ws_url).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (socket, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    socket
}

/// Sends `frame` up to `count` times without reading, until the server
/// stops taking them (a send blocked for a second) or the socket fails.
async fn flood(socket: &mut RawSocket, frame: Message, count: usize) -> usize {
    for sent in 0..count {
        match tokio::time::timeout(Duration::from_secs(1), socket.send(frame.clone())).await {
            Ok(Ok(())) => {}
            _ => return sent,
        }
    }
    count
}

/// Reads until the server's close frame; its code, or `None` if the socket
/// ended without one (or nothing came for 20 s).
async fn close_code(socket: &mut RawSocket) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// A customer following their own orders while someone else abuses the
/// gateway still sees their order through.
async fn a_normal_client_still_gets_its_order(app: &TestApp, customer: &str) {
    let product = app.create_product(10).await;
    let mut ws = app
        .websocket_as("/ws", &token(customer, Role::Customer))
        .await;
    ws.subscribe_mine().await;
    let order_id = app
        .place_order_as(
            customer,
            json!({"items": [{"product_id": product, "quantity": 1}], "payment_token": "tok_visa"}),
        )
        .await;
    let updates = ws.statuses_until_terminal(order_id).await;
    assert_eq!(statuses(&updates).last(), Some(&"CONFIRMED"));
}

/// A client that never reads sends `frame` up to a million times: the
/// gateway stops taking them, closes it with 1008, grows by less than
/// [`MAX_GROWTH_KIB`], and still serves another customer.
async fn a_flood_is_closed_with_1008_in_bounded_memory(frame: Message) {
    let app = spawn_app().await;
    let mut flooder = raw_client(&app, &token("mallory", Role::Customer)).await;
    let before = rss_kib();
    let sent = flood(&mut flooder, frame, 1_000_000).await;
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < MAX_GROWTH_KIB,
        "{sent} frames grew memory by {grown} KiB"
    );
    assert_eq!(
        close_code(&mut flooder).await,
        Some(CloseCode::Policy),
        "after {sent} frames"
    );
    a_normal_client_still_gets_its_order(&app, "alice").await;
    app.teardown().await;
}

#[tokio::test]
async fn a_ping_flood_from_a_client_that_never_reads_is_closed_with_1008_in_bounded_memory() {
    a_flood_is_closed_with_1008_in_bounded_memory(Message::Ping(vec![7u8; 125].into())).await;
}

#[tokio::test]
async fn a_frame_flood_from_a_client_that_never_reads_is_closed_with_1008_in_bounded_memory() {
    a_flood_is_closed_with_1008_in_bounded_memory(Message::text(
        r#"{"type":"subscribe","scope":"stock"}"#,
    ))
    .await;
}

#[tokio::test]
async fn an_oversized_frame_is_closed_with_1009() {
    let app = spawn_app().await;
    let mut client = raw_client(&app, &token("alice", Role::Customer)).await;
    let big = format!(
        r#"{{"type":"subscribe","scope":"stock","pad":"{}"}}"#,
        "x".repeat(8 * 1024)
    );
    client.send(Message::text(big)).await.unwrap();
    assert_eq!(close_code(&mut client).await, Some(CloseCode::Size));
    app.teardown().await;
}

/// A token of `customer` whose `exp` was `ago` seconds ago.
fn expired_token(customer: &str, ago: u64) -> String {
    Authenticator::from_secret(JWT_SECRET.as_bytes())
        .unwrap()
        .mint_expiring(
            customer,
            Role::Customer,
            SystemTime::now() - Duration::from_secs(ago),
        )
        .unwrap()
}

#[tokio::test]
async fn a_session_is_closed_with_4001_when_its_token_expires() {
    let app = spawn_app().await;
    // Past `exp`, inside the 30 s leeway: accepted for about 3 s more.
    let mut ws = app.websocket_as("/ws", &expired_token("alice", 27)).await;
    ws.subscribe_mine().await;
    let code = loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), ws.socket_mut().next())
            .await
            .expect("closed within the leeway")
            .expect("a close frame")
            .expect("a frame");
        if let Message::Close(frame) = frame {
            break frame.map(|f| f.code);
        }
    };
    assert_eq!(code, Some(CloseCode::from(4001)));
    app.teardown().await;
}

#[tokio::test]
async fn a_fresh_token_extends_the_session_and_a_foreign_one_does_not() {
    let app = spawn_app().await;
    let mut ws = app.websocket_as("/ws", &expired_token("alice", 27)).await;
    ws.send_json(&json!({"type": "refresh", "token": token("bob", Role::Customer)}))
        .await;
    let refused = ws.wait_for("error").await;
    assert_eq!(refused["error"], "forbidden");
    ws.send_json(&json!({"type": "refresh", "token": "not.a.token"}))
        .await;
    assert_eq!(ws.wait_for("error").await["error"], "unauthorized");
    ws.send_json(&json!({"type": "refresh", "token": token("alice", Role::Customer)}))
        .await;
    let refreshed = ws.wait_for("refreshed").await;
    assert!(refreshed["ends_at"].is_string(), "{refreshed}");
    // Past the first token's end, the session still answers.
    tokio::time::sleep(Duration::from_secs(6)).await;
    ws.send_json(&json!({"type": "subscribe", "scope": "stock"}))
        .await;
    let subscribed: Value = ws.wait_for("subscribed").await;
    assert_eq!(subscribed["scope"], "stock");
    app.teardown().await;
}

#[tokio::test]
async fn a_negative_last_seq_is_refused_over_the_websocket_as_in_the_query() {
    let app = spawn_app().await;
    let alice = token("alice", Role::Customer);
    let order_id = uuid::Uuid::now_v7();
    let mut ws = app.websocket_as("/ws", &alice).await;
    ws.send_json(&json!({"type": "subscribe", "order_id": order_id, "last_seq": -1}))
        .await;
    let refused = ws.wait_for("error").await;
    assert_eq!(refused["error"], "bad_request");
    assert!(
        refused["message"].as_str().unwrap().contains("last_seq"),
        "{refused}"
    );
    let mut request = format!("{}/ws?order_id={order_id}&last_seq=-1", app.ws_url)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {alice}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("expected 400, got {:?}", other.map(|(_, r)| r.status())),
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_subject_past_its_connection_cap_is_refused_with_a_json_429() {
    let app = spawn_app().await;
    let carol = token("carol", Role::Customer);
    let mut open = Vec::new();
    for _ in 0..32 {
        open.push(app.websocket_as("/ws", &carol).await);
    }
    let refused = websocket_upgrade(
        &reqwest::Client::new(),
        &format!("{}/ws", app.ws_url.replace("ws://", "http://")),
    )
    .bearer_auth(&carol)
    .send()
    .await
    .unwrap();
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_connections");
    // Another subject is not affected.
    let mut dave = app
        .websocket_as("/ws", &token("dave", Role::Customer))
        .await;
    dave.subscribe_mine().await;
    // A closed connection frees its slot.
    let mut first = open.remove(0);
    first.socket_mut().close(None).await.unwrap();
    while first.socket_mut().next().await.is_some() {}
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut request = format!("{}/ws", app.ws_url).into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {carol}").parse().unwrap());
        if tokio_tungstenite::connect_async(request).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.teardown().await;
}
