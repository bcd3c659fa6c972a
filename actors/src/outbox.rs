//! The transactional outbox and the inbox of processed event ids.
//!
//! A service never writes to Postgres and then, separately, to Kafka. It
//! appends the events a change causes to its schema's `outbox` table in the
//! same transaction as the change ([`append`]); the [`OutboxRelay`] actor
//! publishes committed rows and deletes them once Kafka has acknowledged
//! them. A crash between the two only means a row is published again, and
//! consumers drop the duplicate by its event id ([`first_delivery`]).
//!
//! Each row keeps the trace context of the work that wrote it (column
//! `traceparent`). The relay publishes every row in a `publish` span, a
//! child of that context, and sends the span's own context as the Kafka
//! header [`trace::HEADER`]: every message of an order's saga then belongs
//! to the order's trace, each under a span of its own.

use crate::db::DbError;
use crate::events::Envelope;
use crate::trace::{self, TraceParent};
use deadpool_postgres::{Pool, Transaction};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use uuid::Uuid;

/// Rows published per round trip.
pub const BATCH: i64 = 500;
/// How long a message may wait in the producer queue when Kafka is slow.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns of outbox rows, as arrays: one statement writes any number
/// of rows (`unnest`), alone ([`append`]) or inside a larger statement.
pub struct OutboxRows {
    topics: Vec<&'static str>,
    keys: Vec<String>,
    ids: Vec<Uuid>,
    payloads: Vec<Vec<u8>>,
    traces: Vec<Option<String>>,
}

impl OutboxRows {
    /// The columns to insert for `envelopes`, encoded once.
    pub fn new(envelopes: &[Envelope]) -> Self {
        OutboxRows {
            topics: envelopes.iter().map(Envelope::topic).collect(),
            keys: envelopes.iter().map(Envelope::key).collect(),
            ids: envelopes.iter().map(|e| e.event_id).collect(),
            payloads: envelopes.iter().map(Envelope::encode).collect(),
            traces: envelopes
                .iter()
                .map(|e| e.trace.map(|t| t.to_string()))
                .collect(),
        }
    }

    /// The parameters of [`OutboxRows::unnest`], in order.
    pub fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [
            &self.topics,
            &self.keys,
            &self.ids,
            &self.payloads,
            &self.traces,
        ]
    }

    /// The outbox columns the parameters fill, in their order.
    pub const COLUMNS: &'static str = "topic, key, event_id, payload, traceparent";

    /// The SQL types of the parameters, in their order.
    const TYPES: [&'static str; 5] = ["text[]", "text[]", "uuid[]", "bytea[]", "text[]"];

    /// `unnest` of the five parameters, numbered from `first`, as rows in
    /// [`OutboxRows::COLUMNS`] order.
    pub fn unnest(first: usize) -> String {
        let args: Vec<String> = Self::TYPES
            .iter()
            .enumerate()
            .map(|(i, ty)| format!("${}::{ty}", first + i))
            .collect();
        format!("unnest({})", args.join(", "))
    }
}

/// Appends `envelopes` to `schema`'s outbox inside the caller's transaction.
pub async fn append(
    tx: &Transaction<'_>,
    schema: &str,
    envelopes: &[Envelope],
) -> Result<(), DbError> {
    if envelopes.is_empty() {
        return Ok(());
    }
    let rows = OutboxRows::new(envelopes);
    let statement = tx
        .prepare_cached(&format!(
            "INSERT INTO {schema}.outbox ({}) SELECT * FROM {}",
            OutboxRows::COLUMNS,
            OutboxRows::unnest(1)
        ))
        .await?;
    tx.execute(&statement, &rows.params()).await?;
    Ok(())
}

/// Records that `event_id` was processed, in the caller's transaction.
/// Returns false if it already was: the caller must then skip the effect.
pub async fn first_delivery(
    tx: &Transaction<'_>,
    schema: &str,
    event_id: Uuid,
) -> Result<bool, DbError> {
    let statement = tx
        .prepare_cached(&format!(
            "INSERT INTO {schema}.processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING"
        ))
        .await?;
    Ok(tx.execute(&statement, &[&event_id]).await? == 1)
}

/// Records every id of `event_ids` as processed, in the caller's
/// transaction, in one round trip; returns those that were not processed
/// before. A batch's handler calls this once instead of
/// [`first_delivery`] per message: the same guarantee (an id is recorded
/// in the transaction of its effect, so a redelivery changes nothing), a
/// round trip per batch instead of one per message. An id repeated inside
/// `event_ids` is returned once; the caller must apply it once.
pub async fn first_deliveries(
    tx: &Transaction<'_>,
    schema: &str,
    event_ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>, DbError> {
    if event_ids.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let statement = tx
        .prepare_cached(&format!(
            "INSERT INTO {schema}.processed_events (event_id) SELECT * FROM unnest($1::uuid[])
             ON CONFLICT DO NOTHING RETURNING event_id"
        ))
        .await?;
    let rows = tx.query(&statement, &[&event_ids]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// A cheap handle that writers use to wake the relay after a commit.
#[derive(Clone, Debug)]
pub struct OutboxNotifier {
    relay: ActorRef<RelayMsg>,
    /// Set while a wake-up is queued, so a burst of commits sends one message.
    queued: Arc<AtomicBool>,
}

impl OutboxNotifier {
    /// Asks the relay to publish now rather than at its next poll.
    pub fn wake(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let _ = self.relay.send_message(RelayMsg::Publish);
        }
    }
}

#[cfg(test)]
impl OutboxNotifier {
    /// A notifier that wakes `relay`, a stand-in for the relay in unit tests.
    pub(crate) fn waking(relay: ActorRef<RelayMsg>) -> Self {
        Self {
            relay,
            queued: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Publishes one schema's outbox to Kafka.
pub struct OutboxRelay;

/// How often the backlog metrics are read: often enough for a dashboard,
/// rarely enough that the poll (every `OUTBOX_POLL_MS`, 50 ms by default)
/// does not add a counting query to every round.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Start-up arguments of an [`OutboxRelay`].
pub struct RelayArgs {
    /// The service's pool.
    pub pool: Pool,
    /// Shared producer (idempotent, acks=all).
    pub producer: FutureProducer,
    /// The schema whose outbox this relay drains.
    pub schema: &'static str,
    /// Put before each row's topic (see `KafkaSettings::topic_prefix`).
    pub topic_prefix: String,
    /// How often to look for rows when nobody woke the relay (rows written
    /// by another process of the same service, or left by a failed round).
    pub poll_interval: Duration,
}

/// State of a running [`OutboxRelay`].
pub struct RelayState {
    args: RelayArgs,
    /// Shared with every [`OutboxNotifier`].
    queued: Arc<AtomicBool>,
    /// When the backlog metrics were last read.
    backlog_read: Option<std::time::Instant>,
    /// Advisory-lock key: one relay per schema publishes at a time, across
    /// processes, so each order's events reach Kafka in commit order.
    lock_key: i64,
    /// The periodic poll, stopped with the actor.
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// Messages of an [`OutboxRelay`].
#[derive(Debug)]
pub enum RelayMsg {
    /// Publish every committed row now.
    Publish,
    /// Periodic poll: publish whatever is there.
    Tick,
    /// Hands out a notifier bound to this relay.
    Notifier(ractor::RpcReplyPort<OutboxNotifier>),
}

impl Actor for OutboxRelay {
    type Msg = RelayMsg;
    type State = RelayState;
    type Arguments = RelayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ticker = myself.send_interval(args.poll_interval, || RelayMsg::Tick);
        let lock_key = lock_key(args.schema);
        Ok(RelayState {
            args,
            queued: Arc::new(AtomicBool::new(false)),
            backlog_read: None,
            lock_key,
            ticker: Some(ticker),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RelayMsg::Notifier(reply) => {
                let _ = reply.send(OutboxNotifier {
                    relay: myself,
                    queued: state.queued.clone(),
                });
            }
            RelayMsg::Tick => {
                // What notifications did not publish shows here, before this
                // round publishes it.
                if state
                    .backlog_read
                    .is_none_or(|read| read.elapsed() >= BACKLOG_EVERY)
                {
                    state.backlog_read = Some(std::time::Instant::now());
                    if let Err(error) = measure_backlog(state).await {
                        tracing::debug!(schema = state.args.schema, %error, "outbox backlog not measured");
                    }
                }
                myself.send_message(RelayMsg::Publish)?;
            }
            RelayMsg::Publish => {
                // Clear first: a commit that lands during this round wakes us again.
                state.queued.store(false, Ordering::Release);
                match publish_all(state).await {
                    Ok(Round::Done) => {}
                    Ok(Round::Busy) => {
                        // Another process holds the schema's relay lock; our
                        // rows go out when it is released.
                        drop(myself.send_after(Duration::from_millis(10), || RelayMsg::Tick));
                    }
                    Err(error) => {
                        // Rows stay in the outbox; the next tick retries them.
                        tracing::warn!(schema = state.args.schema, %error, "outbox publish failed");
                    }
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(ticker) = state.ticker.take() {
            ticker.abort();
        }
        // Publish what is committed, so a clean shutdown leaves nothing behind.
        if let Err(error) = publish_all(state).await {
            tracing::warn!(schema = state.args.schema, %error, "outbox not drained on stop");
        }
        Ok(())
    }
}

/// Sets the outbox's backlog metrics: rows waiting, and the oldest one's age.
async fn measure_backlog(state: &RelayState) -> Result<(), RelayError> {
    let schema = state.args.schema;
    let client = state.args.pool.get().await.map_err(DbError::from)?;
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), \
                 COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 \
                 FROM {schema}.outbox"
            ),
            &[],
        )
        .await?;
    let labels = crate::metrics::SchemaLabels { schema };
    let metrics = crate::metrics::metrics();
    metrics
        .outbox_backlog
        .get_or_create(&labels)
        .set(row.get(0));
    metrics
        .outbox_age_seconds
        .get_or_create(&labels)
        .set(row.get(1));
    Ok(())
}

/// How a publishing round ended.
enum Round {
    /// The outbox is empty (as far as this round could see).
    Done,
    /// Another relay holds the lock.
    Busy,
}

/// Why a publishing round failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No pooled connection, or a query failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A query failed.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// Some messages were not acknowledged; they stay in the outbox.
    #[error("{failed} of {total} messages not acknowledged by kafka: {first}")]
    Kafka {
        /// Messages not acknowledged.
        failed: usize,
        /// Messages sent.
        total: usize,
        /// The first error.
        first: rdkafka::error::KafkaError,
    },
}

async fn publish_all(state: &RelayState) -> Result<Round, RelayError> {
    let publisher = Publisher {
        pool: &state.args.pool,
        producer: &state.args.producer,
        schema: state.args.schema,
        topic_prefix: &state.args.topic_prefix,
        lock_key: state.lock_key,
    };
    loop {
        let (published, full) = publisher.publish_batch().await?;
        match published {
            None => return Ok(Round::Busy),
            Some(_) if !full => return Ok(Round::Done),
            Some(_) => {}
        }
    }
}

/// One round of a relay's work on one schema, without the actor around it
/// (the relay runs it; the benchmarks time it).
pub struct Publisher<'a> {
    /// Where the outbox is.
    pub pool: &'a Pool,
    /// Where its rows go (idempotent, acks=all).
    pub producer: &'a FutureProducer,
    /// Whose outbox.
    pub schema: &'a str,
    /// Put before each row's topic (see `KafkaSettings::topic_prefix`).
    pub topic_prefix: &'a str,
    /// The schema's relay lock ([`Publisher::lock_key`]).
    pub lock_key: i64,
}

impl Publisher<'_> {
    /// The advisory-lock key of `schema`'s relay: one relay per schema
    /// publishes at a time, across processes.
    pub fn lock_key(schema: &str) -> i64 {
        lock_key(schema)
    }

    /// Publishes up to [`BATCH`] rows in one transaction holding the relay
    /// lock. Returns the number published (`None` if the lock was taken)
    /// and whether the batch was full (more rows may be waiting).
    pub async fn publish_batch(&self) -> Result<(Option<usize>, bool), RelayError> {
        let mut open = OpenTransaction(Some(self.pool.get().await.map_err(DbError::from)?));
        let client = open.client();
        let lock = client
            .prepare_cached("SELECT pg_try_advisory_xact_lock($1)")
            .await?;
        let select = client
            .prepare_cached(&format!(
                "SELECT id, topic, key, payload, traceparent FROM {}.outbox ORDER BY id LIMIT $1",
                self.schema
            ))
            .await?;
        // BEGIN, the lock and the rows in one round trip (tokio-postgres
        // pipelines them; Postgres runs them in order). The rows are read
        // by a statement of their own, after the lock is held, so their
        // snapshot sees every delete of the relay that held it before.
        // Without the lock they are read for nothing and ignored.
        let key: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&self.lock_key];
        let (_, locked, rows) = futures::try_join!(
            client.batch_execute("BEGIN"),
            client.query_one(&lock, &key),
            client.query(&select, &[&BATCH]),
        )?;
        if !locked.get::<_, bool>(0) {
            open.finish("ROLLBACK").await?;
            return Ok((None, false));
        }
        if rows.is_empty() {
            open.finish("COMMIT").await?;
            return Ok((Some(0), false));
        }
        // Rows name the platform's topics; the broker's names may carry a prefix.
        let topics: Vec<String> = rows
            .iter()
            .map(|row| format!("{}{}", self.topic_prefix, row.get::<_, &str>(1)))
            .collect();
        let sends = rows.iter().zip(&topics).map(|(row, topic)| {
            let key: &str = row.get(2);
            let payload: &[u8] = row.get(3);
            let stored: Option<&str> = row.get(4);
            let span = publish_span(topic, key, stored);
            let header = TraceParent::of_span(&span).map(|t| t.to_string());
            let mut record = FutureRecord::to(topic).key(key).payload(payload);
            if let Some(value) = &header {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: trace::HEADER,
                    value: Some(value.as_str()),
                }));
            }
            // The span lasts until Kafka acknowledges the message.
            self.producer.send(record, QUEUE_TIMEOUT).instrument(span)
        });
        let results = futures::future::join_all(sends).await;
        let mut sent = Vec::with_capacity(rows.len());
        let mut failures = Vec::new();
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(_) => sent.push(row.get::<_, i64>(0)),
                Err((error, _)) => failures.push(error),
            }
        }
        if sent.is_empty() {
            open.finish("COMMIT").await?;
        } else {
            let client = open.client();
            let delete = client
                .prepare_cached(&format!(
                    "DELETE FROM {}.outbox WHERE id = ANY($1)",
                    self.schema
                ))
                .await?;
            // This commit need not wait for its WAL flush: if Postgres
            // crashes and forgets the delete, the rows are only published
            // again, and consumers drop the copies by event id. Not waiting
            // keeps the flush (milliseconds on this disk) out of every
            // round. The three statements go in one round trip.
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&sent];
            futures::try_join!(
                client.batch_execute("SET LOCAL synchronous_commit TO OFF"),
                client.execute(&delete, &params),
                client.batch_execute("COMMIT"),
            )?;
            open.done();
        }
        if let Some(first) = failures.into_iter().next() {
            return Err(RelayError::Kafka {
                failed: rows.len() - sent.len(),
                total: rows.len(),
                first,
            });
        }
        Ok((Some(sent.len()), rows.len() as i64 == BATCH))
    }
}

/// A pooled connection inside a transaction opened with a plain `BEGIN`
/// (so it could share a round trip with the first statements). If the
/// round ends in any other way than [`OpenTransaction::finish`] or
/// [`OpenTransaction::done`] (an error, a cancelled future), the
/// connection is taken out of the pool and closed, which rolls the
/// transaction back: it never goes back to the pool mid-transaction.
struct OpenTransaction(Option<deadpool_postgres::Client>);

impl OpenTransaction {
    fn client(&self) -> &deadpool_postgres::Client {
        // Only `done` empties it, and nothing uses it after that.
        self.0.as_ref().expect("the connection is held until done")
    }

    /// Ends the transaction with `statement` (COMMIT or ROLLBACK).
    async fn finish(&mut self, statement: &str) -> Result<(), tokio_postgres::Error> {
        self.client().batch_execute(statement).await?;
        self.done();
        Ok(())
    }

    /// The transaction ended: the connection may go back to the pool.
    fn done(&mut self) {
        drop(self.0.take());
    }
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// The span of publishing one row: a child of the context stored with it.
/// A row without one (written before tracing, or by work outside any span)
/// gets no span, and its message no header.
fn publish_span(topic: &str, key: &str, stored: Option<&str>) -> tracing::Span {
    let Some(parent) = stored.and_then(|value| TraceParent::parse(value).ok()) else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        parent: None,
        "publish",
        otel.name = %format_args!("{topic} publish"),
        otel.kind = "producer",
        order_id = key,
        trace_id = tracing::field::Empty,
    );
    trace::adopt(&span, Some(&parent));
    span
}

/// A stable advisory-lock key per schema.
fn lock_key(schema: &str) -> i64 {
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in b"shop-outbox:".iter().chain(schema.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_differ_per_schema_and_are_stable() {
        assert_eq!(lock_key("orders"), lock_key("orders"));
        assert_ne!(lock_key("orders"), lock_key("product"));
        assert_ne!(lock_key("payment"), lock_key("product"));
    }
}
