//! The dead-letter topic: where a consumer puts a message it cannot handle,
//! and the tools that read it back and replay it once the cause is fixed.
//!
//! A consumer gives up on a message that is not a valid envelope, or that
//! its handler refuses permanently several times in a row. It produces the
//! message to [`topics::DEAD_LETTERS`] with the original key and payload
//! bytes, plus headers that say why and where it came from ([`Failure`]),
//! and moves on, so one bad message never holds back other orders.
//!
//! [`list`] reads the whole topic. [`replay`] sends selected dead letters
//! back to their source topic and records its progress as the committed
//! offsets of consumer group [`REPLAY_GROUP`], so a later replay never sends
//! the same dead letter again. Per partition, the committed offset says
//! "everything below was replayed" and the commit's metadata lists the
//! offsets above it that a selective replay (one topic, one dead letter)
//! has already sent.
//!
//! Run one replay at a time: two concurrent replays could both send a dead
//! letter before either records it. That is harmless, because consumers
//! ignore an `event_id` they have already processed, but it is noise.

use crate::events::topics;
use crate::kafka::KafkaSettings;
use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Header: why the message could not be handled.
pub const HEADER_ERROR: &str = "dlq.error";
/// Header: the topic the message was read from.
pub const HEADER_SOURCE_TOPIC: &str = "dlq.source.topic";
/// Header: its partition there.
pub const HEADER_SOURCE_PARTITION: &str = "dlq.source.partition";
/// Header: its offset there.
pub const HEADER_SOURCE_OFFSET: &str = "dlq.source.offset";
/// Header: the consumer group that gave up on it, or `broadcast`.
pub const HEADER_GROUP: &str = "dlq.consumer.group";
/// Header: when it gave up, RFC 3339.
pub const HEADER_FAILED_AT: &str = "dlq.failed.at";

/// The consumer group whose committed offsets record what was replayed. It
/// never subscribes: it only reads by assignment and commits.
pub const REPLAY_GROUP: &str = "shop-dlq-replay";

/// Metadata, broker round trips and each commit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Reading a whole partition range back.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `send` may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on one produce, above the producer's own `message.timeout.ms`
/// (30 s), so a stuck delivery report cannot hang a caller.
const SEND_TIMEOUT: Duration = Duration::from_secs(40);
/// Brokers refuse commit metadata above `offset.metadata.max.bytes`
/// (4096 by default); stay under it.
const MAX_PROGRESS_METADATA: usize = 4000;

/// What went wrong reading, sending or replaying dead letters.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The client or broker failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The broker has no dead-letter topic (or it has no partitions).
    #[error(
        "topic `{0}` not found; is this the platform's broker (and KAFKA_TOPIC_PREFIX its prefix)?"
    )]
    NoTopic(String),
    /// An operation did not finish in time.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The dead letter asked for does not exist or was already replayed.
    #[error("no pending dead letter at partition {partition}, offset {offset} (unknown, or already replayed)")]
    NotPending {
        /// Partition of the dead-letter topic.
        partition: i32,
        /// Offset in that partition.
        offset: i64,
    },
    /// The dead letter asked for does not say where it came from.
    #[error("dead letter at partition {partition}, offset {offset} has no usable `{HEADER_SOURCE_TOPIC}` header; nowhere to replay it")]
    NoSource {
        /// Partition of the dead-letter topic.
        partition: i32,
        /// Offset in that partition.
        offset: i64,
    },
    /// The replay group's commits are not what this module writes.
    #[error("unreadable replay progress in partition {partition}: {metadata:?}")]
    Progress {
        /// Partition of the dead-letter topic.
        partition: i32,
        /// The commit metadata found.
        metadata: String,
    },
    /// Too many dead letters replayed out of order in one partition to
    /// record; replaying everything pending (in order) clears it.
    #[error("partition {0} has too many dead letters replayed out of order to record more; replay all pending dead letters instead")]
    TooFarAhead(i32),
    /// A blocking Kafka call panicked or was cancelled.
    #[error("blocking kafka task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Why a message became a dead letter and where it came from: what the
/// consumer writes as the dead letter's headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The error text: the decode error, or the handler's last error.
    pub error: String,
    /// The topic the message was read from (where replay sends it back).
    pub source_topic: String,
    /// Its partition there.
    pub source_partition: i32,
    /// Its offset there, to find the original.
    pub source_offset: i64,
    /// The consumer group that gave up, or `broadcast`.
    pub group: String,
    /// When it gave up.
    pub failed_at: DateTime<Utc>,
}

impl Failure {
    /// The Kafka headers that carry this failure.
    pub fn headers(&self) -> OwnedHeaders {
        let partition = self.source_partition.to_string();
        let offset = self.source_offset.to_string();
        let failed_at = self.failed_at.to_rfc3339_opts(SecondsFormat::Millis, true);
        [
            (HEADER_ERROR, self.error.as_str()),
            (HEADER_SOURCE_TOPIC, self.source_topic.as_str()),
            (HEADER_SOURCE_PARTITION, partition.as_str()),
            (HEADER_SOURCE_OFFSET, offset.as_str()),
            (HEADER_GROUP, self.group.as_str()),
            (HEADER_FAILED_AT, failed_at.as_str()),
        ]
        .into_iter()
        .fold(
            OwnedHeaders::new_with_capacity(6),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value),
                })
            },
        )
    }
}

/// Produces `key` and `payload`, unchanged, to the dead-letter topic
/// (`topic`, its name on the broker) with `failure` as headers. Returns the dead letter's partition and offset once
/// Kafka has acknowledged it. Keyed like the original, so one order's dead
/// letters stay in order too.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    failure: &Failure,
) -> Result<(i32, i64), DeadLetterError> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(failure.headers());
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    let delivery = tokio::time::timeout(SEND_TIMEOUT, producer.send(record, QUEUE_TIMEOUT))
        .await
        .map_err(|_| DeadLetterError::Timeout("sending a dead letter"))?
        .map_err(|(error, _)| error)?;
    Ok((delivery.partition, delivery.offset))
}

/// One message on the dead-letter topic, read back.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Its partition in the dead-letter topic.
    pub partition: i32,
    /// Its offset there; with `partition`, how to pick it for replay.
    pub offset: i64,
    /// The original key (the order id for the platform's own messages).
    pub key: Option<Vec<u8>>,
    /// The original payload bytes, exactly as they failed.
    pub payload: Vec<u8>,
    /// `dlq.error`: why it failed.
    pub error: Option<String>,
    /// `dlq.source.topic`: where it came from and where replay sends it.
    pub source_topic: Option<String>,
    /// `dlq.source.partition`.
    pub source_partition: Option<i32>,
    /// `dlq.source.offset`.
    pub source_offset: Option<i64>,
    /// `dlq.consumer.group`: who gave up on it.
    pub group: Option<String>,
    /// `dlq.failed.at`.
    pub failed_at: Option<DateTime<Utc>>,
    /// The payload's `event_type`, if the payload is JSON that has one.
    pub event_type: Option<String>,
    /// The payload's `order_id`, if the payload is JSON that has one.
    pub order_id: Option<String>,
}

impl DeadLetter {
    /// Builds a dead letter from a message's parts. Headers are read
    /// leniently (missing or unparsable ones are `None`) because anyone can
    /// produce to the topic, and a listing must still show what is there.
    pub fn parse<'h>(
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) -> Self {
        let payload = payload.unwrap_or_default().to_vec();
        let (event_type, order_id) = payload_fields(&payload);
        let mut letter = Self {
            partition,
            offset,
            key: key.map(<[u8]>::to_vec),
            payload,
            error: None,
            source_topic: None,
            source_partition: None,
            source_offset: None,
            group: None,
            failed_at: None,
            event_type,
            order_id,
        };
        for (name, value) in headers {
            let Some(value) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
                continue;
            };
            match name {
                HEADER_ERROR => letter.error = Some(value.to_owned()),
                HEADER_SOURCE_TOPIC => letter.source_topic = Some(value.to_owned()),
                HEADER_SOURCE_PARTITION => letter.source_partition = value.parse().ok(),
                HEADER_SOURCE_OFFSET => letter.source_offset = value.parse().ok(),
                HEADER_GROUP => letter.group = Some(value.to_owned()),
                HEADER_FAILED_AT => {
                    letter.failed_at = DateTime::parse_from_rfc3339(value)
                        .ok()
                        .map(|at| at.with_timezone(&Utc))
                }
                _ => {}
            }
        }
        letter
    }

    fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .into_iter()
            .flat_map(|headers| headers.iter())
            .map(|header| (header.key, header.value));
        Self::parse(
            message.partition(),
            message.offset(),
            message.key(),
            message.payload(),
            headers,
        )
    }

    /// Where replay would send it: its source topic, unless that is missing
    /// or the dead-letter topic itself (`dead_letters`; that would only loop).
    fn replay_topic(&self, dead_letters: &str) -> Option<&str> {
        self.source_topic
            .as_deref()
            .filter(|topic| !topic.is_empty() && *topic != dead_letters)
    }
}

/// `event_type` and `order_id` of a JSON payload, for listings; `None` for
/// whatever is not there (a malformed payload is why many dead letters exist).
fn payload_fields(payload: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(payload) else {
        return (None, None);
    };
    let text = |name: &str| fields.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    (text("event_type"), text("order_id"))
}

/// Which dead letters a replay sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every pending dead letter.
    All,
    /// Pending dead letters that came from this topic.
    SourceTopic(String),
    /// The one dead letter at this position of the dead-letter topic.
    One {
        /// Partition of the dead-letter topic.
        partition: i32,
        /// Offset in that partition.
        offset: i64,
    },
}

impl Selection {
    fn matches(&self, letter: &DeadLetter) -> bool {
        match self {
            Selection::All => true,
            Selection::SourceTopic(topic) => letter.source_topic.as_deref() == Some(topic),
            Selection::One { partition, offset } => {
                letter.partition == *partition && letter.offset == *offset
            }
        }
    }
}

/// What earlier replays have sent, per partition of the dead-letter topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayProgress {
    partitions: BTreeMap<i32, PartitionProgress>,
}

impl ReplayProgress {
    /// Whether `letter` was already replayed.
    pub fn is_replayed(&self, letter: &DeadLetter) -> bool {
        self.partitions
            .get(&letter.partition)
            .is_some_and(|progress| progress.is_replayed(letter.offset))
    }
}

/// Replay progress in one partition; see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PartitionProgress {
    /// Every dead letter below this offset was replayed (the committed offset).
    next: i64,
    /// Dead letters at or above `next` that a selective replay already sent
    /// (the commit's metadata).
    ahead: BTreeSet<i64>,
}

impl PartitionProgress {
    /// Reads a commit of the replay group; `None` offset means no commit yet.
    fn from_commit(offset: Option<i64>, metadata: &str) -> Option<Self> {
        let next = offset.unwrap_or(0);
        let mut ahead = BTreeSet::new();
        for range in metadata.split(',').filter(|r| !r.is_empty()) {
            let (first, last) = match range.split_once('-') {
                Some((first, last)) => (first.parse().ok()?, last.parse().ok()?),
                None => {
                    let single: i64 = range.parse().ok()?;
                    (single, single)
                }
            };
            if first > last || last - first > 1_000_000 {
                return None;
            }
            ahead.extend((first..=last).filter(|o| *o >= next));
        }
        Some(Self { next, ahead })
    }

    fn is_replayed(&self, offset: i64) -> bool {
        offset < self.next || self.ahead.contains(&offset)
    }

    /// Records that the dead letter at `offset` was replayed. `known` are
    /// the offsets of every dead letter read in the partition (sorted) and
    /// `end` where that read stopped: the committed offset moves up to the
    /// first dead letter not replayed yet, so only true gaps stay in the
    /// metadata.
    fn mark(&mut self, offset: i64, known: &[i64], end: i64) {
        self.ahead.insert(offset);
        let first_pending = known
            .iter()
            .copied()
            .filter(|o| *o >= self.next)
            .find(|o| !self.ahead.contains(o))
            .unwrap_or(end);
        self.next = self.next.max(first_pending);
        let next = self.next;
        self.ahead.retain(|o| *o >= next);
    }

    /// `ahead` as commit metadata: ascending ranges, `3-5,9`.
    fn metadata(&self) -> String {
        let mut ranges: Vec<(i64, i64)> = Vec::new();
        for &offset in &self.ahead {
            match ranges.last_mut() {
                Some((_, last)) if *last + 1 == offset => *last = offset,
                _ => ranges.push((offset, offset)),
            }
        }
        ranges
            .iter()
            .map(|&(first, last)| {
                if first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Every dead letter on the topic, from the beginning of each partition to
/// its end as of now, in partition then offset order. Reads by assignment:
/// joins no group and commits nothing.
pub async fn list(settings: &KafkaSettings) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let consumer = Arc::new(reader(settings)?);
    let snapshot = blocking({
        let consumer = consumer.clone();
        move || read(&consumer, false)
    })
    .await?;
    close(consumer).await;
    Ok(snapshot.letters)
}

/// What earlier replays have sent (the replay group's commits).
pub async fn progress(settings: &KafkaSettings) -> Result<ReplayProgress, DeadLetterError> {
    let consumer = Arc::new(reader(settings)?);
    let progress = blocking({
        let consumer = consumer.clone();
        move || {
            let partitions = partitions(&consumer)?;
            committed(&consumer, &partitions)
        }
    })
    .await?;
    close(consumer).await;
    Ok(progress)
}

/// Sends the selected pending dead letters back to their source topics,
/// with their original key and payload, in partition and offset order.
/// Each is recorded as replayed (a commit of [`REPLAY_GROUP`]) right after
/// Kafka acknowledges it, so an interrupted replay resumes where it stopped.
/// Returns what was sent.
///
/// Under [`Selection::All`] or [`Selection::SourceTopic`], a dead letter
/// with no usable source topic is skipped (and stays pending); asking for it
/// with [`Selection::One`] is an error, as is asking for one that is not
/// pending.
pub async fn replay(
    settings: &KafkaSettings,
    selection: &Selection,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let consumer = Arc::new(reader(settings)?);
    let result = replay_with(settings, &consumer, selection).await;
    close(consumer).await;
    result
}

async fn replay_with(
    settings: &KafkaSettings,
    consumer: &Arc<Reader>,
    selection: &Selection,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let Snapshot {
        mut progress,
        letters,
        ends,
    } = blocking({
        let consumer = consumer.clone();
        move || read(&consumer, true)
    })
    .await?;
    let mut known: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for letter in &letters {
        known
            .entry(letter.partition)
            .or_default()
            .push(letter.offset);
    }
    let selected: Vec<&DeadLetter> = letters
        .iter()
        .filter(|letter| !progress.is_replayed(letter) && selection.matches(letter))
        .collect();
    let dead_letters = consumer.context().topic.as_str();
    if let Selection::One { partition, offset } = *selection {
        match selected.first() {
            None => return Err(DeadLetterError::NotPending { partition, offset }),
            Some(letter) if letter.replay_topic(dead_letters).is_none() => {
                return Err(DeadLetterError::NoSource { partition, offset })
            }
            Some(_) => {}
        }
    }
    if selected.is_empty() {
        return Ok(Vec::new());
    }
    let producer = settings.producer()?;
    let mut replayed = Vec::new();
    for letter in selected {
        let Some(topic) = letter.replay_topic(dead_letters) else {
            tracing::warn!(
                partition = letter.partition,
                offset = letter.offset,
                "dead letter has no source topic; left pending"
            );
            continue;
        };
        let mut partition_progress = progress
            .partitions
            .get(&letter.partition)
            .cloned()
            .unwrap_or_default();
        partition_progress.mark(
            letter.offset,
            known.get(&letter.partition).map_or(&[][..], Vec::as_slice),
            ends.get(&letter.partition)
                .copied()
                .unwrap_or(letter.offset + 1),
        );
        let metadata = partition_progress.metadata();
        // Checked before sending: a dead letter that was sent but cannot be
        // recorded would be sent again by the next replay.
        if metadata.len() > MAX_PROGRESS_METADATA {
            return Err(DeadLetterError::TooFarAhead(letter.partition));
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(&letter.payload);
        if let Some(key) = &letter.key {
            record = record.key(key);
        }
        tokio::time::timeout(SEND_TIMEOUT, producer.send(record, QUEUE_TIMEOUT))
            .await
            .map_err(|_| DeadLetterError::Timeout("replaying a dead letter"))?
            .map_err(|(error, _)| error)?;
        let partition = letter.partition;
        let next = partition_progress.next;
        blocking({
            let consumer = consumer.clone();
            move || {
                let topic = consumer.context().topic.as_str();
                let mut offsets = TopicPartitionList::new();
                offsets
                    .add_partition(topic, partition)
                    .set_offset(Offset::Offset(next))?;
                if let Some(mut element) = offsets.find_partition(topic, partition) {
                    element.set_metadata(metadata);
                }
                Ok(consumer.commit(&offsets, CommitMode::Sync)?)
            }
        })
        .await?;
        progress.partitions.insert(partition, partition_progress);
        replayed.push(letter.clone());
    }
    Ok(replayed)
}

/// One read of the topic.
struct Snapshot {
    /// The replay group's commits (empty unless read from them).
    progress: ReplayProgress,
    /// The dead letters read, in partition then offset order.
    letters: Vec<DeadLetter>,
    /// Per partition, the end offset the read stopped at.
    ends: BTreeMap<i32, i64>,
}

/// The consumer [`reader`] builds.
type Reader = BaseConsumer<ReaderContext>;

/// librdkafka context of a [`Reader`], carrying the name on the broker of
/// the dead-letter topic it reads. A read knows it has reached the end of a
/// partition by librdkafka's end-of-partition event, which librdkafka also
/// reports as a client error: that one is not worth an error line.
struct ReaderContext {
    /// The dead-letter topic's name on the broker.
    topic: String,
}

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::trace!(reason, "end of a dead-letter partition");
        } else {
            tracing::error!(%error, reason, "kafka client error while reading dead letters");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A consumer that reads by assignment. It carries the replay group's id
/// only to read and write that group's commits; it never joins the group,
/// and commits only when [`replay`] says so.
fn reader(settings: &KafkaSettings) -> Result<Reader, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", settings.group(REPLAY_GROUP))
        .set("client.id", "shop-dlq")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create_with_context(ReaderContext {
            topic: settings.topic(topics::DEAD_LETTERS),
        })
}

/// Runs blocking librdkafka calls off the async runtime's workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DeadLetterError> + Send + 'static,
) -> Result<T, DeadLetterError> {
    tokio::task::spawn_blocking(work).await?
}

/// Drops the consumer off the runtime: closing it talks to the broker.
async fn close(consumer: Arc<Reader>) {
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
}

/// Each partition of the dead-letter topic with its low and high watermarks.
fn partitions(consumer: &Reader) -> Result<Vec<(i32, i64, i64)>, DeadLetterError> {
    let topic = consumer.context().topic.as_str();
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let ids: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if ids.is_empty() {
        return Err(DeadLetterError::NoTopic(topic.to_owned()));
    }
    ids.into_iter()
        .map(|id| {
            let (low, high) = consumer.fetch_watermarks(topic, id, REQUEST_TIMEOUT)?;
            Ok((id, low, high))
        })
        .collect()
}

/// The replay group's committed progress in `partitions`.
fn committed(
    consumer: &Reader,
    partitions: &[(i32, i64, i64)],
) -> Result<ReplayProgress, DeadLetterError> {
    let mut wanted = TopicPartitionList::new();
    for &(id, _, _) in partitions {
        wanted.add_partition(&consumer.context().topic, id);
    }
    let commits = consumer.committed_offsets(wanted, REQUEST_TIMEOUT)?;
    let mut progress = ReplayProgress::default();
    for element in commits.elements() {
        let offset = match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        };
        let partition = element.partition();
        let parsed =
            PartitionProgress::from_commit(offset, element.metadata()).ok_or_else(|| {
                DeadLetterError::Progress {
                    partition,
                    metadata: element.metadata().to_owned(),
                }
            })?;
        progress.partitions.insert(partition, parsed);
    }
    Ok(progress)
}

/// Reads the topic up to its current end: from the beginning, or, with
/// `from_committed`, from the replay group's committed offsets.
fn read(consumer: &Reader, from_committed: bool) -> Result<Snapshot, DeadLetterError> {
    let partitions = partitions(consumer)?;
    let progress = if from_committed {
        committed(consumer, &partitions)?
    } else {
        ReplayProgress::default()
    };
    let mut assignment = TopicPartitionList::new();
    let mut open = BTreeMap::new();
    let mut ends = BTreeMap::new();
    for &(id, low, high) in &partitions {
        let start = progress
            .partitions
            .get(&id)
            .map_or(low, |done| done.next.max(low));
        ends.insert(id, high);
        if start < high {
            assignment.add_partition_offset(
                &consumer.context().topic,
                id,
                Offset::Offset(start),
            )?;
            open.insert(id, high);
        }
    }
    let mut letters = Vec::new();
    if !open.is_empty() {
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + READ_TIMEOUT;
        let mut last_error = None;
        while !open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if let Some(error) = last_error {
                    return Err(DeadLetterError::Kafka(error));
                }
                return Err(DeadLetterError::Timeout("reading the dead-letter topic"));
            }
            match consumer.poll(left.min(Duration::from_millis(500))) {
                None => {}
                Some(Ok(message)) => {
                    let partition = message.partition();
                    if let Some(&end) = open.get(&partition) {
                        if message.offset() < end {
                            letters.push(DeadLetter::from_message(&message));
                        }
                        if message.offset() + 1 >= end {
                            open.remove(&partition);
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    open.remove(&partition);
                }
                // librdkafka reports broker trouble here and retries by
                // itself; give up only at the deadline.
                Some(Err(error)) => last_error = Some(error),
            }
        }
        // Stop fetching: nothing more is read, and commits need no assignment.
        consumer.unassign()?;
    }
    letters.sort_by_key(|letter| (letter.partition, letter.offset));
    Ok(Snapshot {
        progress,
        letters,
        ends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn failure() -> Failure {
        Failure {
            error: "malformed envelope: expected value at line 1 column 1".into(),
            source_topic: topics::INVENTORY_COMMANDS.into(),
            source_partition: 2,
            source_offset: 41,
            group: "product".into(),
            failed_at: Utc
                .with_ymd_and_hms(2026, 11, 26, 9, 14, 3)
                .single()
                .unwrap_or_default(),
        }
    }

    #[test]
    fn headers_round_trip_through_a_dead_letter() {
        let failure = failure();
        let headers = failure.headers();
        let pairs = headers.iter().map(|h| (h.key, h.value));
        let letter = DeadLetter::parse(0, 7, Some(b"k"), Some(b"{not json"), pairs);
        assert_eq!(letter.error.as_deref(), Some(failure.error.as_str()));
        assert_eq!(letter.source_topic.as_deref(), Some("inventory-commands"));
        assert_eq!(letter.source_partition, Some(2));
        assert_eq!(letter.source_offset, Some(41));
        assert_eq!(letter.group.as_deref(), Some("product"));
        assert_eq!(letter.failed_at, Some(failure.failed_at));
        assert_eq!(letter.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(letter.payload, b"{not json");
        assert_eq!((letter.event_type, letter.order_id), (None, None));
    }

    #[test]
    fn headers_are_named_as_documented_and_failed_at_is_rfc3339() {
        let headers = failure().headers();
        let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
        assert_eq!(
            names,
            [
                "dlq.error",
                "dlq.source.topic",
                "dlq.source.partition",
                "dlq.source.offset",
                "dlq.consumer.group",
                "dlq.failed.at"
            ]
        );
        let failed_at = headers.iter().find(|h| h.key == HEADER_FAILED_AT);
        assert_eq!(
            failed_at.and_then(|h| h.value),
            Some(&b"2026-11-26T09:14:03.000Z"[..])
        );
    }

    #[test]
    fn missing_or_garbled_headers_read_as_none() {
        let headers = [
            (HEADER_SOURCE_PARTITION, Some(&b"two"[..])),
            (HEADER_FAILED_AT, Some(&b"yesterday"[..])),
            (HEADER_GROUP, None),
            ("unrelated", Some(&b"x"[..])),
        ];
        let letter = DeadLetter::parse(1, 0, None, None, headers);
        assert_eq!(letter.source_partition, None);
        assert_eq!(letter.failed_at, None);
        assert_eq!(letter.group, None);
        assert_eq!(letter.error, None);
        assert_eq!(letter.replay_topic(topics::DEAD_LETTERS), None);
        assert!(letter.payload.is_empty());
    }

    #[test]
    fn event_type_and_order_id_come_from_the_payload_when_present() {
        let payload = br#"{"order_id":"abc","schema_version":99,"event_type":"ReserveInventory"}"#;
        let letter = DeadLetter::parse(0, 0, None, Some(payload), []);
        assert_eq!(letter.event_type.as_deref(), Some("ReserveInventory"));
        assert_eq!(letter.order_id.as_deref(), Some("abc"));
        let letter = DeadLetter::parse(0, 0, None, Some(b"[1,2]"), []);
        assert_eq!((letter.event_type, letter.order_id), (None, None));
    }

    #[test]
    fn a_dead_letter_never_replays_into_the_dead_letter_topic() {
        let headers = [(HEADER_SOURCE_TOPIC, Some(topics::DEAD_LETTERS.as_bytes()))];
        let letter = DeadLetter::parse(0, 0, None, None, headers);
        assert_eq!(letter.replay_topic(topics::DEAD_LETTERS), None);
    }

    #[test]
    fn selections_pick_by_source_topic_or_position() {
        let headers = [(HEADER_SOURCE_TOPIC, Some(&b"payment-commands"[..]))];
        let letter = DeadLetter::parse(2, 5, None, None, headers);
        assert!(Selection::All.matches(&letter));
        assert!(Selection::SourceTopic("payment-commands".into()).matches(&letter));
        assert!(!Selection::SourceTopic("inventory-commands".into()).matches(&letter));
        assert!(Selection::One {
            partition: 2,
            offset: 5
        }
        .matches(&letter));
        assert!(!Selection::One {
            partition: 1,
            offset: 5
        }
        .matches(&letter));
    }

    #[test]
    fn replaying_in_order_only_moves_the_committed_offset() {
        let known = [3, 4, 5];
        let mut progress = PartitionProgress::from_commit(Some(3), "").unwrap_or_default();
        progress.mark(3, &known, 6);
        assert_eq!((progress.next, progress.metadata()), (4, String::new()));
        progress.mark(4, &known, 6);
        progress.mark(5, &known, 6);
        assert_eq!((progress.next, progress.metadata()), (6, String::new()));
        assert!(progress.is_replayed(5));
        assert!(!progress.is_replayed(6));
    }

    #[test]
    fn replaying_out_of_order_keeps_the_gaps_in_metadata() {
        let known = [0, 1, 2, 3, 4, 5, 6];
        let mut progress = PartitionProgress::default();
        for offset in [2, 3, 4, 6] {
            progress.mark(offset, &known, 7);
        }
        assert_eq!(
            (progress.next, progress.metadata()),
            (0, "2-4,6".to_owned())
        );
        assert!(progress.is_replayed(3) && !progress.is_replayed(1));
        let read_back = PartitionProgress::from_commit(Some(0), "2-4,6");
        assert_eq!(read_back.as_ref(), Some(&progress));
        // Filling the first gap moves the committed offset past the run.
        progress.mark(0, &known, 7);
        progress.mark(1, &known, 7);
        assert_eq!((progress.next, progress.metadata()), (5, "6".to_owned()));
        progress.mark(5, &known, 7);
        assert_eq!((progress.next, progress.metadata()), (7, String::new()));
    }

    #[test]
    fn offsets_missing_from_the_topic_do_not_hold_progress_back() {
        // Offsets 0-9 are gone (retention): the first dead letter is 10.
        let mut progress = PartitionProgress::default();
        progress.mark(10, &[10, 11], 12);
        assert_eq!((progress.next, progress.metadata()), (11, String::new()));
    }

    #[test]
    fn foreign_commit_metadata_is_refused() {
        assert_eq!(PartitionProgress::from_commit(Some(0), "hello"), None);
        assert_eq!(PartitionProgress::from_commit(Some(0), "5-3"), None);
        assert_eq!(
            PartitionProgress::from_commit(None, ""),
            Some(PartitionProgress::default())
        );
    }

    /// Messages on `topic` (all partitions), as (key, payload).
    fn messages_on(brokers: &str, topic: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
        let settings = KafkaSettings::new(brokers);
        let consumer = reader(&settings).unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        let mut remaining = 0;
        for partition in metadata.topics()[0].partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition.id(), REQUEST_TIMEOUT)
                .unwrap();
            remaining += high - low;
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut found = Vec::new();
        while remaining > 0 {
            match consumer.poll(REQUEST_TIMEOUT).expect("a message") {
                Ok(m) => {
                    found.push((m.key().map(<[u8]>::to_vec), m.payload().unwrap().to_vec()));
                    remaining -= 1;
                }
                Err(KafkaError::PartitionEOF(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        found
    }

    #[tokio::test]
    async fn replay_sends_each_dead_letter_once_whatever_the_selection() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        let brokers = cluster.bootstrap_servers();
        // A prefix, as when several platforms share a cluster: everything
        // here must find the prefixed topics and group.
        let mut settings = KafkaSettings::new(&brokers);
        settings.topic_prefix = "staging.".into();
        for topic in [
            topics::DEAD_LETTERS,
            topics::INVENTORY_COMMANDS,
            topics::PAYMENT_COMMANDS,
        ] {
            cluster.create_topic(&settings.topic(topic), 2, 1).unwrap();
        }
        let producer = settings.producer().unwrap();
        let (inventory_topic, payment_topic) = (
            settings.topic(topics::INVENTORY_COMMANDS),
            settings.topic(topics::PAYMENT_COMMANDS),
        );
        // Five dead letters on one key (one partition), from two topics.
        let sources = [
            &inventory_topic,
            &payment_topic,
            &inventory_topic,
            &payment_topic,
            &inventory_topic,
        ];
        for (i, source) in sources.iter().enumerate() {
            let failure = Failure {
                source_topic: (*source).clone(),
                source_offset: i as i64,
                ..failure()
            };
            let payload = format!("message {i}");
            send(
                &producer,
                &settings.topic(topics::DEAD_LETTERS),
                Some(b"order-1"),
                Some(payload.as_bytes()),
                &failure,
            )
            .await
            .unwrap();
        }
        let letters = list(&settings).await.unwrap();
        assert_eq!(letters.len(), 5);
        let partition = letters[0].partition;

        let payments = replay(&settings, &Selection::SourceTopic(payment_topic.clone()))
            .await
            .unwrap();
        assert_eq!(payments.len(), 2);
        let progress = progress(&settings).await.unwrap();
        let replayed: Vec<bool> = letters.iter().map(|l| progress.is_replayed(l)).collect();
        assert_eq!(replayed, [false, true, false, true, false]);

        let one = Selection::One {
            partition,
            offset: letters[2].offset,
        };
        assert_eq!(replay(&settings, &one).await.unwrap(), [letters[2].clone()]);
        assert!(matches!(
            replay(&settings, &one).await,
            Err(DeadLetterError::NotPending { .. })
        ));

        let rest = replay(&settings, &Selection::All).await.unwrap();
        let offsets: Vec<i64> = rest.iter().map(|l| l.offset).collect();
        assert_eq!(offsets, [letters[0].offset, letters[4].offset]);
        assert!(replay(&settings, &Selection::All).await.unwrap().is_empty());
        let progress = super::progress(&settings).await.unwrap();
        assert!(letters.iter().all(|l| progress.is_replayed(l)));

        let (inventory, payment) = tokio::task::spawn_blocking(move || {
            (
                messages_on(&brokers, &inventory_topic),
                messages_on(&brokers, &payment_topic),
            )
        })
        .await
        .unwrap();
        let payloads = |found: &[(Option<Vec<u8>>, Vec<u8>)]| {
            let mut p: Vec<String> = found
                .iter()
                .map(|(key, payload)| {
                    assert_eq!(key.as_deref(), Some(&b"order-1"[..]));
                    String::from_utf8(payload.clone()).unwrap()
                })
                .collect();
            p.sort();
            p
        };
        assert_eq!(
            payloads(&inventory),
            ["message 0", "message 2", "message 4"]
        );
        assert_eq!(payloads(&payment), ["message 1", "message 3"]);
    }
}
