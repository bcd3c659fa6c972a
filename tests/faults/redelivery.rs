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
    let forced = platform.services.terminate_all().await;
    if !forced.is_empty() {
        println!("[faults] {forced:?} ignored SIGTERM and were killed");
    }
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
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket to the gateway");
    futures::SinkExt::send(
        &mut socket,
        tokio_tungstenite::tungstenite::Message::text(r#"{"type":"subscribe","scope":"all"}"#),
    )
    .await
    .expect("subscribe");
    let listener = tokio::spawn(async move {
        let mut socket = socket;
        let mut pushed = Vec::new();
        while let Some(Ok(message)) = socket.next().await {
            let text = message.to_text().map(str::to_owned).unwrap_or_default();
            // Status pushes only: the subscription's acknowledgement is not one.
            if message.is_text() && !text.contains(r#""type":"subscribed""#) {
                pushed.push(text);
            }
        }
        pushed
    });
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
    listener.abort();
    let pushed = listener.await.unwrap_or_default();
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
    let highs_after = kafka::high_watermarks(&brokers)
        .await
        .expect("high watermarks");
    let published = kafka::messages_between(&brokers, &highs_before, &highs_after)
        .await
        .unwrap_or_else(|e| panic!("read the new messages: {e}"));
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
    report.record(
        "the redelivery published nothing",
        if published.is_empty() {
            let total: i64 = highs_after.values().sum();
            Ok(format!("{total} messages on the topics, unchanged"))
        } else {
            Err(format!(
                "{} new messages: {} about orders the faults had left open {:?}, \
                 {} second effects {:?}",
                published.len(),
                late.len(),
                describe(&late),
                second.len(),
                describe(&second)
            ))
        },
    );
    report.record(
        "the gateway pushed nothing during the redelivery",
        if pushed.is_empty() {
            Ok("no message".into())
        } else {
            Err(format!("{} messages, first: {}", pushed.len(), pushed[0]))
        },
    );
}
