//! The last scenario: once everything has settled, stop every service,
//! rewind every consumer group to offset 0, start them again and let the
//! whole history be delivered a second time. Nothing may change.

use crate::invariants;
use crate::kafka::{self, Published, GROUPS};
use crate::report::Report;
use crate::scenarios::{settle, Platform, Until};
use crate::snapshot;
use futures::StreamExt;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::Client;

/// Orders the faults left open, and the products they hold reservations
/// of: what the redelivery may legitimately move, by finishing them.
struct LeftOpen {
    orders: BTreeSet<String>,
    products: BTreeSet<String>,
}

impl LeftOpen {
    fn new(orders: BTreeSet<String>, before: &snapshot::Snapshot) -> Self {
        let products = before
            .keys()
            .filter_map(|key| key.strip_prefix("reservation "))
            .filter_map(|pair| pair.split_once('/'))
            .filter(|(order, _)| orders.contains(*order))
            .map(|(_, product)| product.to_owned())
            .collect();
        Self { orders, products }
    }

    /// True if a snapshot change line is about an open order, or the stock
    /// of a product one of them holds.
    fn explains(&self, change: &str) -> bool {
        let id = |kind: &str| change.strip_prefix(kind).and_then(|rest| rest.get(..36));
        ["order ", "authorization ", "reservation "]
            .iter()
            .any(|kind| id(kind).is_some_and(|order| self.orders.contains(order)))
            || id("stock ").is_some_and(|product| self.products.contains(product))
    }
}

/// Stops every service, rewinds every group to offset 0, restarts the
/// services, lets them consume the whole history again, and checks that
/// nothing changed: no row, no message, no WebSocket push.
pub async fn redeliver_everything(platform: &mut Platform, db: &Client, report: &mut Report) {
    let brokers = platform.broker.address.clone();
    let stops = platform.services.terminate_all().await;
    report.record(
        "every service stopped with SIGTERM before the redelivery exits 0 within the grace period",
        crate::scenarios::clean_stops(&stops),
    );
    let highs_before = kafka::high_watermarks(&brokers)
        .await
        .expect("high watermarks");
    let resets = futures::future::join_all(
        GROUPS
            .iter()
            .map(|(group, _)| kafka::reset_group_to_zero(&brokers, group)),
    )
    .await;
    let mut rewound = Vec::new();
    let mut not_rewound = Vec::new();
    for reset in resets {
        match reset {
            Ok(reset) if reset.took_effect() => {
                rewound.push(format!("{} ({})", reset.group, reset.how))
            }
            Ok(reset) => not_rewound.push(format!("{}: {:?}", reset.group, reset.committed)),
            Err(error) => not_rewound.push(error),
        }
    }
    report.record(
        "every consumer group was rewound to offset 0",
        if not_rewound.is_empty() {
            Ok(rewound.join(", "))
        } else {
            Err(not_rewound.join("; "))
        },
    );
    // Orders the faults left open: whatever the redelivery does to them is a
    // first effect (reported by "every order is terminal"), not a second one.
    let open_before: BTreeSet<String> = db
        .query(invariants::OPEN_ORDERS, &[])
        .await
        .expect("read open orders")
        .iter()
        .map(|r| r.get::<_, uuid::Uuid>(0).to_string())
        .collect();
    let before = snapshot::take(db).await;

    // The gateway first, with a client listening through the redelivery.
    platform.services.start(&["gateway"]).await;
    let ws_url = platform.services.url("gateway").replace("http://", "ws://") + "/ws";
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            ws_url.as_str(),
        )
        .expect("websocket request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", crate::admin_token())
            .parse()
            .expect("header"),
    );
    let listener = GatewayListener::subscribe_to_all(request).await;
    let started = Instant::now();
    platform
        .services
        .start(&["product", "payment", "order-a", "order-b"])
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (caught_up, progress) = settle(platform, db, Until::Drained, deadline).await;
    report.record(
        "every group consumed the whole history again",
        if caught_up {
            Ok(format!("in {:.1} s", started.elapsed().as_secs_f64()))
        } else {
            Err(format!("not caught up within 60 s: {progress:?}"))
        },
    );
    // Proving that nothing else happens takes waiting: give the relays
    // (OUTBOX_POLL_MS = 50) forty rounds to publish a second effect.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let heard = match listener {
        Ok(listener) => listener.stop().await,
        Err(error) => Err(error),
    };
    let after = snapshot::take(db).await;
    let changes = snapshot::diff(&before, &after);
    let left_open = LeftOpen::new(open_before.clone(), &before);
    let finished = changes.iter().filter(|c| left_open.explains(c)).count();
    let digests: Vec<&String> = changes.iter().filter(|c| c.starts_with("table ")).collect();
    let second: Vec<&String> = changes
        .iter()
        .filter(|c| !c.starts_with("table ") && !left_open.explains(c))
        .collect();
    report.record(
        "the redelivery changed nothing in Postgres",
        if changes.is_empty() {
            Ok(format!("{} entries compared", before.len()))
        } else {
            Err(format!(
                "{} changes: {finished} rows of the {} orders the faults had left open or of \
                 products they held (the redelivery finished them: see \"every order is \
                 terminal\") {open_before:?}; \
                 {} rows of other orders or products (second effects): {:#?}; \
                 whole-table digests that moved: {digests:#?}",
                changes.len(),
                open_before.len(),
                second.len(),
                second.iter().take(15).collect::<Vec<_>>(),
            ))
        },
    );
    // The topics' ends, not what a reader found: reading nothing (a reader
    // that timed out) must not look like nothing published.
    let highs_after = kafka::high_watermarks(&brokers)
        .await
        .expect("high watermarks");
    let grown: Vec<String> = highs_after
        .iter()
        .filter_map(|(partition, after)| {
            let before = highs_before.get(partition).copied();
            (before != Some(*after)).then(|| {
                format!(
                    "{}/{}: {} -> {after}",
                    partition.0,
                    partition.1,
                    before.map_or("absent".into(), |b| b.to_string())
                )
            })
        })
        .chain(
            highs_before
                .keys()
                .filter(|p| !highs_after.contains_key(*p))
                .map(|(topic, partition)| format!("{topic}/{partition}: gone")),
        )
        .collect();
    let new_messages: i64 = highs_after
        .iter()
        .map(|(p, after)| after - highs_before.get(p).copied().unwrap_or(0))
        .sum();
    report.record(
        "the redelivery published nothing (every topic's high watermark unchanged)",
        if grown.is_empty() {
            let total: i64 = highs_after.values().sum();
            Ok(format!(
                "{} partitions, {total} messages, the same before and after",
                highs_after.len()
            ))
        } else {
            // Only to say what they were: the watermarks decided.
            let described =
                match kafka::messages_between(&brokers, &highs_before, &highs_after).await {
                    Ok(published) => {
                        let (late, second): (Vec<&Published>, Vec<&Published>) = published
                            .iter()
                            .partition(|m| open_before.contains(&m.order_id));
                        let describe = |messages: &[&Published]| -> Vec<String> {
                            messages
                                .iter()
                                .take(15)
                                .map(|m| format!("{} {} {}", m.topic, m.event_type, m.order_id))
                                .collect()
                        };
                        format!(
                            "{} of them read back: {} about orders the faults had left open {:?}, \
                         {} second effects {:?}",
                            published.len(),
                            late.len(),
                            describe(&late),
                            second.len(),
                            describe(&second)
                        )
                    }
                    Err(error) => format!("reading them back failed: {error}"),
                };
            Err(format!(
                "{new_messages} new messages: {}; {described}",
                grown.join(", ")
            ))
        },
    );
    report.record(
        "the gateway pushed nothing during the redelivery (to a subscribed, working socket)",
        match heard {
            Ok(pushed) if pushed.is_empty() => Ok("subscribed; no message".into()),
            Ok(pushed) => Err(format!("{} messages, first: {}", pushed.len(), pushed[0])),
            Err(error) => Err(error),
        },
    );
}

/// A WebSocket client of the gateway subscribed to every order.
struct GatewayListener {
    /// Tells the reader to stop.
    stop: tokio::sync::oneshot::Sender<()>,
    /// The reader: every push it saw, or how the socket failed.
    reader: tokio::task::JoinHandle<Result<Vec<String>, String>>,
}

/// How long the gateway may take to acknowledge a subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

impl GatewayListener {
    /// Connects, subscribes to scope `all` and waits for `subscribed`: until
    /// then the gateway pushes nothing, so a listener that did not see it
    /// proves nothing. Any other message first, or none, is an error.
    async fn subscribe_to_all(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Self, String> {
        use tokio_tungstenite::tungstenite::Message;
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| format!("WebSocket to the gateway: {e}"))?;
        futures::SinkExt::send(
            &mut socket,
            Message::text(r#"{"type":"subscribe","scope":"all"}"#),
        )
        .await
        .map_err(|e| format!("sending the subscription: {e}"))?;
        let first = tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
            loop {
                match socket.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => return other,
                }
            }
        })
        .await
        .map_err(|_| format!("no answer to the subscription within {SUBSCRIBE_TIMEOUT:?}"))?;
        match first {
            Some(Ok(Message::Text(text)))
                if serde_json::from_str::<serde_json::Value>(&text)
                    .is_ok_and(|v| v["type"] == "subscribed" && v["scope"] == "all") => {}
            Some(Ok(other)) => {
                return Err(format!(
                    "the subscription was answered with {other:?}, not `subscribed`"
                ))
            }
            Some(Err(e)) => return Err(format!("the socket failed before `subscribed`: {e}")),
            None => return Err("the socket closed before `subscribed`".into()),
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let reader = tokio::spawn(async move {
            let mut pushed = Vec::new();
            loop {
                let message = tokio::select! {
                    _ = &mut stopped => return Ok(pushed),
                    message = socket.next() => message,
                };
                match message {
                    Some(Ok(Message::Text(text))) => pushed.push(text.to_string()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(other)) => {
                        return Err(format!(
                            "the socket ended ({other:?}) after {} pushes: a listener that \
                             stops listening hears nothing",
                            pushed.len()
                        ))
                    }
                    Some(Err(e)) => {
                        return Err(format!(
                            "the socket failed ({e}) after {} pushes: a listener that stops \
                             listening hears nothing",
                            pushed.len()
                        ))
                    }
                    None => {
                        return Err(format!(
                            "the socket closed after {} pushes: a listener that stops \
                             listening hears nothing",
                            pushed.len()
                        ))
                    }
                }
            }
        });
        Ok(Self { stop, reader })
    }

    /// Stops listening: every push seen, or how the socket failed.
    async fn stop(self) -> Result<Vec<String>, String> {
        let _ = self.stop.send(());
        self.reader
            .await
            .unwrap_or_else(|e| Err(format!("the listener panicked: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

    /// A stand-in gateway: answers the first message with `answer`, then
    /// drops the connection without a close frame.
    async fn gateway_answering(answer: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut socket = tokio_tungstenite::accept_async(tcp)
                .await
                .expect("handshake");
            let _subscription = socket.next().await;
            socket.send(Message::text(answer)).await.expect("answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        format!("ws://{address}/ws")
    }

    #[tokio::test]
    async fn a_listener_fails_when_its_socket_dies_or_it_was_never_subscribed() {
        let url = gateway_answering(r#"{"type":"subscribed","scope":"all"}"#).await;
        let listener = GatewayListener::subscribe_to_all(url.into_client_request().expect("url"))
            .await
            .expect("subscribed");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let heard = listener.stop().await;
        assert!(
            heard.as_ref().is_err_and(|e| e.contains("after 0 pushes")),
            "{heard:?}"
        );

        let url =
            gateway_answering(r#"{"type":"error","error":"bad_request","message":"?"}"#).await;
        let refused =
            GatewayListener::subscribe_to_all(url.into_client_request().expect("url")).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("not `subscribed`")),
            "{:?}",
            refused.err()
        );
    }
}
