//! `History`: each order's recent status updates, kept in Redis by the
//! gateway so that a subscriber's snapshot or catch-up is one Redis read
//! instead of a call to the order service and a Postgres query. Postgres
//! stays the source of truth: whenever Redis cannot prove it holds what a
//! subscriber needs, the gateway asks the order service ([`super::orders`]).
//!
//! What makes a Redis copy trustworthy is continuity. Every gateway replica
//! reads every `order-events` partition and writes each update here before
//! pushing it, so while at least one reader is running nothing is missed.
//! Continuity is tracked by *generation*:
//!
//! - `{prefix}:gateway:generation` is the current generation `g`;
//! - `{prefix}:gateway:{g}:offsets` holds, per partition, the offset up to
//!   which every update has been written (a [`BroadcastCursor`]): a starting
//!   gateway resumes from there, so a restart misses nothing;
//! - `{prefix}:gateway:{g}:order:{id}` is a sorted set of the order's
//!   updates, scored by sequence number, the last [`KEEP`] of them, dropped a
//!   day after the order's last change.
//!
//! A gateway that cannot resume (no offsets, a partition it does not know,
//! an offset retention has deleted) starts a new generation at the end of
//! each partition; so does one whose write failed (Redis down), on its next
//! batch, because the generation it was writing now has a hole. Updates
//! from before a generation began are not in it: the newest entry of an
//! order is still its current status (anything later is yet to be read, and
//! will be pushed), but a catch-up is served from Redis only when the
//! entries it needs are all there.
//!
//! Not an actor: lookups come from every connection at once and Redis
//! multiplexes them; an actor in between would only queue them.

use super::hub::StatusUpdate;
use crate::cache::RedisPool;
use crate::events::{OrderStatus, RejectReason};
use crate::kafka::{BroadcastCursor, PartitionRange, Positions};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Updates kept per order; an order has about five.
pub const KEEP: isize = 64;
/// How long an order's updates are kept after its last change.
const ORDER_TTL_SECS: i64 = 24 * 3600;
/// How long a generation's offsets (and the generation counter) are kept
/// after their last write: a gateway down for longer starts a new one.
const OFFSETS_TTL_SECS: i64 = 7 * 24 * 3600;
/// How often a reader's offsets are written at most. Writing them late only
/// means a restart reads (and writes again, harmlessly) up to this much more.
const OFFSETS_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for Redis; past it, the order service is asked instead.
const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed write, how long pushes go out without trying Redis:
/// while it is down, each try would hold every push back by up to
/// [`OP_TIMEOUT`].
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// One stored update. Unlike what clients are sent, it keeps the customer,
/// so the gateway can tell who may see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Per-order sequence number.
    pub seq: i32,
    /// The status entered.
    pub status: OrderStatus,
    /// Why, when rejected or compensating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    /// When.
    pub at: DateTime<Utc>,
    /// Who placed the order, when the event said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
}

/// The gateway's order history in Redis; cheap to clone.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

struct Inner {
    pool: RedisPool,
    prefix: String,
    /// The generation this process writes and reads; 0 while it has none
    /// (Redis unreachable, or a write failed): then every lookup goes to
    /// the order service.
    generation: AtomicU64,
    /// No write is tried before this instant (Redis recently failed).
    pause_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Offsets handled since they were last written.
    unwritten: std::sync::Mutex<Unwritten>,
}

/// Offsets waiting to be written: at most every [`OFFSETS_EVERY`], not
/// after every batch, so a busy reader pays one Redis round trip a second
/// for them instead of one a batch.
#[derive(Default)]
struct Unwritten {
    positions: Positions,
    written_at: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("prefix", &self.inner.prefix)
            .field("generation", &self.generation())
            .finish()
    }
}

/// Why Redis did not answer.
#[derive(Debug, thiserror::Error)]
enum RedisFailure {
    #[error("no connection: {0}")]
    Connection(String),
    #[error("{0}")]
    Command(#[from] redis::RedisError),
    #[error("timed out")]
    Timeout,
}

impl History {
    /// The history under `prefix` in `pool`'s Redis. Nothing is read until
    /// the gateway's reader starts ([`BroadcastCursor::start`]).
    pub fn new(pool: RedisPool, prefix: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                prefix: prefix.to_owned(),
                generation: AtomicU64::new(0),
                pause_until: std::sync::Mutex::new(None),
                unwritten: std::sync::Mutex::default(),
            }),
        }
    }

    /// The generation in use; 0 for none.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Stores `updates`; called for each batch read from `order-events`
    /// before it is pushed, so that anyone who misses a push finds it here.
    /// On failure the generation is abandoned (it has a hole) and the next
    /// batch starts a new one.
    pub async fn record(&self, updates: &[StatusUpdate]) {
        if updates.is_empty() || self.paused() {
            return;
        }
        let current = self.generation();
        let written = bounded(async {
            let mut conn = self.connection().await?;
            let generation = if current == 0 {
                // Continuous from this batch on.
                redis::cmd("INCR")
                    .arg(generation_key(&self.inner.prefix))
                    .query_async::<u64>(&mut *conn)
                    .await?
            } else {
                current
            };
            let mut pipe = redis::pipe();
            pipe.atomic();
            for update in updates {
                let key = order_key(&self.inner.prefix, generation, update.order_id);
                let entry = serde_json::to_string(&Entry::from(update))
                    .map_err(|e| RedisFailure::Connection(e.to_string()))?;
                pipe.zadd(&key, entry, update.seq)
                    .ignore()
                    .zremrangebyrank(&key, 0, -(KEEP + 1))
                    .ignore()
                    .expire(&key, ORDER_TTL_SECS)
                    .ignore();
            }
            pipe.query_async::<()>(&mut *conn).await?;
            Ok(generation)
        })
        .await;
        match written {
            Ok(generation) => {
                if generation != current {
                    tracing::info!(generation, "gateway order history: new generation");
                }
                self.inner.generation.store(generation, Ordering::Release);
            }
            Err(error) => {
                if current != 0 {
                    tracing::warn!(%error, "gateway order history not written; snapshots come from the order service until Redis is back");
                }
                self.inner.generation.store(0, Ordering::Release);
                self.pause();
            }
        }
    }

    fn paused(&self) -> bool {
        let until = *self
            .inner
            .pause_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        until.is_some_and(|until| tokio::time::Instant::now() < until)
    }

    fn pause(&self) {
        *self
            .inner
            .pause_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(tokio::time::Instant::now() + RETRY_AFTER);
    }

    /// The order's stored updates, oldest first, one per sequence number;
    /// `None` when there are none or Redis cannot be trusted or reached.
    pub async fn read(&self, order_id: Uuid) -> Option<Vec<Entry>> {
        let generation = self.generation();
        if generation == 0 {
            return None;
        }
        let raw = bounded(async {
            let mut conn = self.connection().await?;
            let raw: Vec<String> = redis::cmd("ZRANGE")
                .arg(order_key(&self.inner.prefix, generation, order_id))
                .arg(0)
                .arg(-1)
                .query_async(&mut *conn)
                .await?;
            Ok(raw)
        })
        .await
        .map_err(|error| tracing::debug!(%error, "gateway order history not read"))
        .ok()?;
        if self.generation() != generation {
            return None; // abandoned meanwhile: it may have a hole
        }
        let mut entries: Vec<Entry> = raw
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        entries.sort_by_key(|entry| entry.seq);
        entries.dedup_by_key(|entry| entry.seq);
        (!entries.is_empty()).then_some(entries)
    }

    async fn connection(
        &self,
    ) -> Result<bb8::PooledConnection<'_, bb8_redis::RedisConnectionManager>, RedisFailure> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| RedisFailure::Connection(e.to_string()))
    }

    /// Resumes the current generation if its offsets cover every partition,
    /// else starts a new one at the partitions' ends.
    async fn resume_or_begin(&self, ranges: &[PartitionRange]) -> Result<Positions, RedisFailure> {
        let prefix = &self.inner.prefix;
        let mut conn = self.connection().await?;
        let current: Option<u64> = redis::cmd("GET")
            .arg(generation_key(prefix))
            .query_async(&mut *conn)
            .await?;
        if let Some(generation) = current.filter(|g| *g > 0) {
            let stored: HashMap<String, i64> = redis::cmd("HGETALL")
                .arg(offsets_key(prefix, generation))
                .query_async(&mut *conn)
                .await?;
            let positions: Positions = ranges
                .iter()
                .filter_map(|range| {
                    let offset = *stored.get(&field(&range.topic, range.partition))?;
                    (range.low..=range.high)
                        .contains(&offset)
                        .then(|| ((range.topic.clone(), range.partition), offset))
                })
                .collect();
            if positions.len() == ranges.len() {
                self.inner.generation.store(generation, Ordering::Release);
                tracing::info!(generation, "gateway order history: resuming");
                return Ok(positions);
            }
        }
        let generation: u64 = redis::cmd("INCR")
            .arg(generation_key(prefix))
            .query_async(&mut *conn)
            .await?;
        let positions: Positions = ranges
            .iter()
            .map(|range| ((range.topic.clone(), range.partition), range.high))
            .collect();
        write_offsets(&mut conn, prefix, generation, &positions).await?;
        self.inner.generation.store(generation, Ordering::Release);
        tracing::info!(
            generation,
            "gateway order history: new generation from the end of order-events"
        );
        Ok(positions)
    }
}

impl BroadcastCursor for History {
    fn start<'a>(&'a self, partitions: &'a [PartitionRange]) -> BoxFuture<'a, Positions> {
        Box::pin(async move {
            match bounded(self.resume_or_begin(partitions)).await {
                Ok(positions) => positions,
                Err(error) => {
                    tracing::warn!(%error, "gateway order history unavailable; reading from the end, snapshots from the order service");
                    self.inner.generation.store(0, Ordering::Release);
                    Positions::new()
                }
            }
        })
    }

    fn advanced<'a>(&'a self, handled: &'a Positions) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let generation = self.generation();
            if generation == 0 || handled.is_empty() {
                return;
            }
            let due = {
                let mut unwritten = self
                    .inner
                    .unwritten
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                for (partition, next) in handled {
                    let offset = unwritten.positions.entry(partition.clone()).or_insert(0);
                    *offset = (*offset).max(*next);
                }
                let now = tokio::time::Instant::now();
                if unwritten
                    .written_at
                    .is_some_and(|at| now.duration_since(at) < OFFSETS_EVERY)
                {
                    return;
                }
                unwritten.written_at = Some(now);
                std::mem::take(&mut unwritten.positions)
            };
            let written = bounded(async {
                let mut conn = self.connection().await?;
                write_offsets(&mut conn, &self.inner.prefix, generation, &due).await
            })
            .await;
            if let Err(error) = written {
                // Only means a restart resumes a little earlier.
                tracing::debug!(%error, "gateway order history offsets not written");
            }
        })
    }
}

impl From<&StatusUpdate> for Entry {
    fn from(update: &StatusUpdate) -> Self {
        Self {
            seq: update.seq,
            status: update.status,
            reason: update.reason,
            at: update.at,
            customer_id: update.customer_id.clone(),
        }
    }
}

/// Whether `entries` (oldest first, one per seq) hold everything a client
/// that has seen up to `last_seq` needs: the current status for a snapshot,
/// or every update after `last_seq` for a catch-up.
pub fn covers(entries: &[Entry], last_seq: Option<i32>) -> bool {
    if entries.is_empty() {
        return false;
    }
    let Some(after) = last_seq else {
        return true;
    };
    let missed: Vec<i32> = entries
        .iter()
        .map(|e| e.seq)
        .filter(|seq| *seq > after)
        .collect();
    // Nothing newer than `after` is known, or the newer ones run unbroken
    // from `after + 1` to the newest.
    missed.is_empty()
        || missed.first() == Some(&(after + 1)) && missed.windows(2).all(|w| w[1] == w[0] + 1)
}

async fn write_offsets(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    generation: u64,
    positions: &Positions,
) -> Result<(), RedisFailure> {
    let key = offsets_key(prefix, generation);
    let mut pipe = redis::pipe();
    pipe.atomic();
    for ((topic, partition), offset) in positions {
        pipe.hset(&key, field(topic, *partition), *offset).ignore();
    }
    // The generation counter lives as long as the offsets: when neither has
    // been written for that long, every order key has long expired too, so
    // counting again from 1 meets nothing left over.
    pipe.expire(&key, OFFSETS_TTL_SECS).ignore();
    pipe.expire(generation_key(prefix), OFFSETS_TTL_SECS)
        .ignore();
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

async fn bounded<T>(
    work: impl std::future::Future<Output = Result<T, RedisFailure>>,
) -> Result<T, RedisFailure> {
    tokio::time::timeout(OP_TIMEOUT, work)
        .await
        .unwrap_or(Err(RedisFailure::Timeout))
}

fn generation_key(prefix: &str) -> String {
    format!("{prefix}:gateway:generation")
}

fn offsets_key(prefix: &str, generation: u64) -> String {
    format!("{prefix}:gateway:{generation}:offsets")
}

fn order_key(prefix: &str, generation: u64, order_id: Uuid) -> String {
    format!("{prefix}:gateway:{generation}:order:{order_id}")
}

fn field(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(seqs: &[i32]) -> Vec<Entry> {
        seqs.iter()
            .map(|seq| Entry {
                seq: *seq,
                status: OrderStatus::Pending,
                reason: None,
                at: Utc::now(),
                customer_id: None,
            })
            .collect()
    }

    #[test]
    fn any_stored_update_gives_a_snapshot() {
        assert!(covers(&entries(&[3, 4]), None));
        assert!(!covers(&entries(&[]), None));
        assert!(!covers(&entries(&[]), Some(0)));
    }

    #[test]
    fn a_catch_up_needs_every_update_after_last_seq() {
        let stored = entries(&[2, 3, 4]);
        assert!(covers(&stored, Some(1)));
        assert!(covers(&stored, Some(3)));
        assert!(covers(&stored, Some(4))); // nothing missed
        assert!(covers(&stored, Some(9))); // nothing newer known
        assert!(!covers(&stored, Some(0))); // 1 is not stored
        assert!(!covers(&entries(&[1, 2, 4]), Some(1))); // 3 is missing
    }

    #[test]
    fn entries_keep_the_customer_and_skip_empty_fields() {
        let update = StatusUpdate {
            order_id: Uuid::nil(),
            status: OrderStatus::Rejected,
            reason: Some(RejectReason::OutOfStock),
            at: Utc::now(),
            seq: 3,
            customer_id: Some("alice".into()),
            trace: None,
        };
        let entry = Entry::from(&update);
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["customer_id"], "alice");
        assert_eq!(json["reason"], "OUT_OF_STOCK");
        let back: Entry = serde_json::from_value(json).unwrap();
        assert_eq!(back, entry);
        let bare = Entry {
            customer_id: None,
            reason: None,
            ..entry
        };
        let json = serde_json::to_value(&bare).unwrap();
        assert!(json.get("customer_id").is_none() && json.get("reason").is_none());
    }
}
