//! The harness's WebSocket clients: one connection to the gateway per
//! simulated customer, subscribed to that customer's orders
//! (`{"type":"subscribe","scope":"mine"}`), or a single admin connection
//! subscribed to every order (`scope: all`). Each one's reader turns every
//! final `update` frame into an [`Event::Final`], stamped with the time it
//! was read.

use super::tracker::Event;
use super::LoadgenError;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// A connection to the gateway.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The fields of a gateway frame the harness reads.
#[derive(Debug, Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    order_id: Option<Uuid>,
    #[serde(borrow)]
    status: Option<&'a str>,
    reason: Option<String>,
    #[serde(borrow)]
    message: Option<&'a str>,
}

/// A final status read from a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalStatus {
    /// The order.
    pub order_id: Uuid,
    /// CONFIRMED, REJECTED or FAILED.
    pub status: String,
    /// Why, when rejected or failed.
    pub reason: Option<String>,
}

/// The final status in an `update` or `snapshot` frame, if it carries one.
pub fn final_status(text: &str) -> Option<FinalStatus> {
    let frame: Frame<'_> = serde_json::from_str(text).ok()?;
    if !matches!(frame.kind, "update" | "snapshot") {
        return None;
    }
    let status = frame.status?;
    matches!(status, "CONFIRMED" | "REJECTED" | "FAILED").then(|| FinalStatus {
        order_id: frame.order_id.unwrap_or_default(),
        status: status.to_owned(),
        reason: frame.reason,
    })
}

/// Connects to `gateway_url` (`ws://host:port`) with `token` and subscribes
/// to `scope` (`mine`, or `all` for an admin); returns once the gateway
/// says `subscribed`.
pub async fn connect(gateway_url: &str, token: &str, scope: &str) -> Result<Socket, LoadgenError> {
    let url = format!("{}/ws", gateway_url.trim_end_matches('/'));
    let lost = |why: String| LoadgenError::WebSocket(format!("{url}: {why}"));
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| lost(e.to_string()))?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| lost("the token is not a valid header".into()))?,
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| lost(e.to_string()))?;
    socket
        .send(Message::text(
            serde_json::json!({"type": "subscribe", "scope": scope}).to_string(),
        ))
        .await
        .map_err(|e| lost(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .map_err(|_| lost("no `subscribed` within 10 s".into()))?
            .ok_or_else(|| lost("closed before `subscribed`".into()))?
            .map_err(|e| lost(e.to_string()))?;
        if let Message::Text(text) = message {
            let frame: Frame<'_> = serde_json::from_str(&text)
                .map_err(|_| lost(format!("not JSON: {}", text.as_str())))?;
            match frame.kind {
                "subscribed" => return Ok(socket),
                "error" => {
                    return Err(lost(format!(
                        "subscription refused: {}",
                        frame.message.unwrap_or("?")
                    )))
                }
                _ => {}
            }
        }
    }
}

/// Reads frames until `order_id` is final (for the warm-up order, before
/// the reader task owns the socket).
pub async fn wait_final(
    socket: &mut Socket,
    order_id: Uuid,
    timeout: Duration,
) -> Result<FinalStatus, LoadgenError> {
    let deadline = Instant::now() + timeout;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .map_err(|_| {
                LoadgenError::Warmup(format!(
                    "order {order_id} reached no final status within {timeout:?}"
                ))
            })?
            .ok_or_else(|| LoadgenError::WebSocket("closed during the warm-up".into()))?
            .map_err(|e| LoadgenError::WebSocket(e.to_string()))?;
        if let Message::Text(text) = message {
            if let Some(status) = final_status(&text).filter(|s| s.order_id == order_id) {
                return Ok(status);
            }
        }
    }
}

/// Reads the socket until it closes (or the tracker stops listening),
/// forwarding every final status.
pub async fn read(mut socket: Socket, events: mpsc::UnboundedSender<Event>) {
    while let Some(message) = socket.next().await {
        let at = Instant::now();
        let text = match message {
            Ok(Message::Text(text)) => text,
            // tungstenite answers pings itself while we read.
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        if let Some(status) = final_status(&text) {
            let event = Event::Final {
                order_id: status.order_id,
                status: status.status,
                reason: status.reason,
                at,
            };
            if events.send(event).is_err() {
                return;
            }
        }
    }
    let _ = events.send(Event::WebSocketLost);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_final_statuses() {
        let id = Uuid::new_v4();
        let confirmed = format!(
            r#"{{"type":"update","order_id":"{id}","status":"CONFIRMED","at":"2026-01-01T00:00:00Z","seq":4}}"#
        );
        assert_eq!(
            final_status(&confirmed),
            Some(FinalStatus {
                order_id: id,
                status: "CONFIRMED".into(),
                reason: None
            })
        );
        let rejected = format!(
            r#"{{"type":"update","order_id":"{id}","status":"REJECTED","reason":"OUT_OF_STOCK","seq":2}}"#
        );
        assert_eq!(
            final_status(&rejected).and_then(|s| s.reason),
            Some("OUT_OF_STOCK".into())
        );
        let pending = format!(r#"{{"type":"update","order_id":"{id}","status":"PENDING"}}"#);
        assert_eq!(final_status(&pending), None);
        assert_eq!(final_status(r#"{"type":"subscribed","scope":"all"}"#), None);
        assert_eq!(final_status("not json"), None);
    }
}
