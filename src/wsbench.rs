//! `shop wsbench`: the WebSocket gateway's benchmark. It opens N client
//! connections to one gateway, each a different customer following its own
//! orders (`{"type":"subscribe","scope":"mine"}`), then publishes order
//! status changes to `order-events` itself, at a fixed rate, for random
//! customers, and measures for each update the time from its publication
//! (the envelope's `occurred_at`) to its arrival at the client.
//!
//! Publishing directly, instead of placing orders, isolates the gateway:
//! the figures are Kafka → gateway → client, not the saga. With
//! `--gateway-pid` it also reads the gateway's resident memory before and
//! after the connections open, for the memory per idle connection.
//! Timings are reported, never asserted: see `BENCHMARKS.md`.

use crate::auth::{Authenticator, Role};
use anyhow::Context;
use futures::{SinkExt, StreamExt};
use rdkafka::producer::FutureRecord;
use serde::Serialize;
use shop_actors::events::{topics, Envelope, Event, OrderStatus, OrderStatusChanged};
use shop_actors::kafka::KafkaSettings;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct WsBenchArgs {
    /// The gateway's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8083/ws")]
    pub gateway_url: String,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 1_000)]
    pub connections: usize,
    /// Status updates published per second while measuring.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// How long to publish, in seconds.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Connections opened at the same time while connecting.
    #[arg(long, default_value_t = 100)]
    pub connect_parallelism: usize,
    /// The gateway's process id, to read its memory (Linux `/proc`).
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct WsBenchResult {
    /// Connections that were open and subscribed when publishing began.
    pub connections: usize,
    /// Connections that failed to open or subscribe.
    pub failed_connections: usize,
    /// Seconds taken to open and subscribe them all.
    pub connect_seconds: f64,
    /// Updates published.
    pub published: usize,
    /// Updates received by their client.
    pub received: usize,
    /// Publication rate asked for, per second.
    pub rate: u32,
    /// Latency from publication to the client, in milliseconds.
    pub latency_ms: Percentiles,
    /// The gateway's resident memory before and after connecting, in KiB.
    pub gateway_rss_kib: Option<(u64, u64)>,
    /// (after − before) / connections, in KiB.
    pub rss_per_connection_kib: Option<f64>,
    /// Connections closed by the gateway during the run.
    pub closed_during_run: usize,
}

/// Latency percentiles.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of `samples` (microseconds), in milliseconds.
    pub fn of(mut samples: Vec<u64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index] as f64 / 1000.0
        };
        Self {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        }
    }
}

/// Runs the benchmark against the gateway at `args.gateway_url`, publishing
/// to the order-events topic of `kafka`, with tokens signed by `auth`.
pub async fn run(
    args: &WsBenchArgs,
    kafka: &KafkaSettings,
    auth: &Authenticator,
) -> anyhow::Result<WsBenchResult> {
    let rss_before = args.gateway_pid.and_then(rss_kib);
    let (latencies_tx, mut latencies) = mpsc::unbounded_channel::<u64>();
    let closed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut failed = 0;
    let mut clients = Vec::with_capacity(args.connections);
    let mut index = 0;
    while index < args.connections {
        let batch = (index..(index + args.connect_parallelism.max(1)).min(args.connections))
            .map(|i| connect(&args.gateway_url, customer(i), auth))
            .collect::<Vec<_>>();
        index += batch.len();
        for connected in futures::future::join_all(batch).await {
            match connected {
                Ok(socket) => clients.push(socket),
                Err(error) => {
                    failed += 1;
                    if failed <= 3 {
                        eprintln!("connection failed: {error:#}");
                    }
                }
            }
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let open = clients.len();
    eprintln!("{open} connections open and subscribed in {connect_seconds:.1} s ({failed} failed)");
    // Let the gateway settle before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = args.gateway_pid.and_then(rss_kib);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|socket| tokio::spawn(read_updates(socket, latencies_tx.clone(), closed.clone())))
        .collect();
    drop(latencies_tx);

    let published = publish(kafka, open, args.rate, args.seconds).await?;
    // Stragglers: give the last updates a moment to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for reader in &readers {
        reader.abort();
    }
    let mut samples = Vec::with_capacity(published);
    while let Ok(sample) = latencies.try_recv() {
        samples.push(sample);
    }
    let received = samples.len();
    let rss = rss_before.zip(rss_after);
    Ok(WsBenchResult {
        connections: open,
        failed_connections: failed,
        connect_seconds,
        published,
        received,
        rate: args.rate,
        latency_ms: Percentiles::of(samples),
        gateway_rss_kib: rss,
        rss_per_connection_kib: rss
            .filter(|_| open > 0)
            .map(|(before, after)| after.saturating_sub(before) as f64 / open as f64),
        closed_during_run: closed.load(Ordering::Relaxed),
    })
}

/// The customer behind connection `i`.
fn customer(i: usize) -> String {
    format!("wsbench-{i}")
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens one connection as `customer`, subscribed to its own orders.
async fn connect(url: &str, customer: String, auth: &Authenticator) -> anyhow::Result<Socket> {
    let token = auth.mint(&customer, Role::Customer, Duration::from_secs(3600))?;
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("shop.v1, bearer.{token}").parse()?,
    );
    let (mut socket, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .context("connect timed out")??;
    socket
        .send(Message::text(r#"{"type":"subscribe","scope":"mine"}"#))
        .await?;
    let deadline = Duration::from_secs(30);
    loop {
        let frame = tokio::time::timeout(deadline, socket.next())
            .await
            .context("no answer to the subscription")?
            .context("closed before subscribing")??;
        if frame
            .to_text()
            .is_ok_and(|t| t.contains(r#""type":"subscribed""#))
        {
            return Ok(socket);
        }
    }
}

/// Reads a connection until it closes, sending each update's latency (µs).
async fn read_updates(
    mut socket: Socket,
    latencies: mpsc::UnboundedSender<u64>,
    closed: Arc<AtomicUsize>,
) {
    while let Some(frame) = socket.next().await {
        let Ok(frame) = frame else { break };
        if let Message::Close(_) = frame {
            break;
        }
        let Ok(text) = frame.to_text() else { continue };
        let Ok(update) = serde_json::from_str::<serde_json::Value>(text) else {
            continue;
        };
        if update["type"] != "update" {
            continue;
        }
        let at = update["at"]
            .as_str()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok());
        if let Some(at) = at {
            let micros = (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
                .num_microseconds()
                .unwrap_or(i64::MAX);
            let _ = latencies.send(u64::try_from(micros).unwrap_or(0));
        }
    }
    closed.fetch_add(1, Ordering::Relaxed);
}

/// Publishes `rate` updates a second for `seconds`, each for a random
/// connected customer; returns how many were published.
async fn publish(
    kafka: &KafkaSettings,
    customers: usize,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<usize> {
    if customers == 0 || rate == 0 {
        return Ok(0);
    }
    let producer = kafka.producer()?;
    let topic = kafka.topic(topics::ORDER_EVENTS);
    let total = usize::try_from(u64::from(rate) * seconds).unwrap_or(usize::MAX);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let started = tokio::time::Instant::now();
    let mut sends = futures::stream::FuturesUnordered::new();
    let mut published = 0;
    for n in 0..total {
        // A fixed schedule: a slow send does not push later ones back.
        tokio::time::sleep_until(started + interval * u32::try_from(n).unwrap_or(u32::MAX)).await;
        let envelope = Envelope::new(
            Uuid::now_v7(),
            Uuid::new_v4(),
            Event::OrderStatusChanged(OrderStatusChanged {
                status: OrderStatus::InventoryReserved,
                reason: None,
                seq: 2,
                customer_id: Some(customer(rand_index(n, customers))),
            }),
        );
        // Enqueued now, not when the future is first polled: `send` would
        // only hand the message to librdkafka once awaited.
        let (key, payload) = (envelope.key(), envelope.encode());
        let queued = producer
            .send_result(FutureRecord::to(&topic).key(&key).payload(&payload))
            .map_err(|(error, _)| error);
        sends.push(async move {
            match queued {
                Ok(delivery) => matches!(delivery.await, Ok(Ok(_))),
                Err(_) => false,
            }
        });
        // Keep the in-flight sends bounded and counted.
        while sends.len() > 1_000 {
            if sends.next().await == Some(true) {
                published += 1;
            }
        }
    }
    while let Some(sent) = sends.next().await {
        if sent {
            published += 1;
        }
    }
    Ok(published)
}

/// A well-spread, repeatable choice of customer for the `n`th update.
fn rand_index(n: usize, customers: usize) -> usize {
    // Multiplicative hashing: consecutive updates land on distant customers.
    (n.wrapping_mul(2_654_435_761)) % customers
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<u64> = (1..=1000).map(|ms| ms * 1000).collect();
        let p = Percentiles::of(samples);
        assert_eq!((p.p50, p.p99, p.p999, p.max), (500.0, 990.0, 999.0, 1000.0));
        assert_eq!(Percentiles::of(Vec::new()).max, 0.0);
    }

    #[test]
    fn updates_spread_over_every_customer() {
        let hit: std::collections::HashSet<usize> = (0..1000).map(|n| rand_index(n, 100)).collect();
        assert_eq!(hit.len(), 100);
    }

    #[test]
    fn this_process_memory_is_readable() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
