//! The consumer actor: reads a service's topics in batches, hands each batch
//! to the service's [`EventHandler`], and stores the Kafka offsets only after
//! the handler reports the batch's effects durable.
//!
//! That ordering is the at-least-once half of the platform's exactly-once
//! effect; the other half is that every handler records the event ids it has
//! processed in the same transaction as their effect, so a redelivered batch
//! changes nothing.
//!
//! Each envelope leaves the consumer with the trace context of its
//! message's `traceparent` header ([`crate::trace`]); the handler does that
//! envelope's work in a span that continues it.
//!
//! A message that cannot be handled — not a valid envelope, or refused
//! permanently by the handler [`PERMANENT_ATTEMPTS`] times in a row — goes to
//! the dead-letter topic ([`super::dead_letters`]), and its offset is stored
//! only once Kafka has acknowledged the dead letter: every message is either
//! handled or dead-lettered, and one bad message never blocks the others.

use crate::events::Envelope;
use crate::kafka::cursor::{partition_ranges, starting_offsets, BroadcastCursor, Positions};
use crate::kafka::dead_letters::{self, Failure};
use crate::kafka::rebalance::{RebalanceListener, ShopContext};
use crate::kafka::KafkaSettings;
use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Most messages handed to a handler at once.
const MAX_BATCH: usize = 256;
/// How long stopping waits for the final offset commit.
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(5);
/// First and longest pause between retries of a failing batch.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How many times in a row the handler may refuse one message permanently
/// before it is dead-lettered. More than one, because a "permanent" error is
/// the handler's judgement and is sometimes wrong (a constraint that a
/// concurrent transaction was about to satisfy).
pub const PERMANENT_ATTEMPTS: u32 = 3;

/// Why a handler could not finish a batch.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A dependency failed (database, broker, timeout): retry later.
    #[error("transient: {0}")]
    Transient(String),
    /// The message itself cannot be handled; retrying will not help.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// What a service does with the envelopes it consumes.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `batch` (in partition order). `Ok` promises every effect of
    /// every envelope is committed; the consumer then stores their offsets.
    /// Must be idempotent per `event_id`.
    fn handle(&self, batch: Vec<Envelope>)
        -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// How a consumer gets its partitions.
#[derive(Debug, Clone)]
pub enum Subscription {
    /// Join consumer group `group_id`: processes sharing it share the
    /// partitions, and committed offsets survive restarts. A new group
    /// starts at the beginning of the topics.
    Group {
        /// The group's name.
        group_id: String,
    },
    /// Read every partition, with no group: every process sees every
    /// message (what each gateway replica needs). Reading starts where the
    /// cursor says, or at the end as it is when the consumer starts.
    Broadcast {
        /// Remembers how far this reader got, across restarts.
        cursor: Option<Arc<dyn BroadcastCursor>>,
    },
}

/// Start-up arguments of an [`EventConsumer`].
pub struct ConsumerArgs<H> {
    /// Where Kafka is.
    pub settings: KafkaSettings,
    /// Group membership or broadcast.
    pub subscription: Subscription,
    /// Topics to read, by their logical names (the settings' prefix is
    /// added here).
    pub topics: Vec<&'static str>,
    /// What to do with each batch.
    pub handler: Arc<H>,
    /// The process's shared producer, for sending messages that cannot be
    /// handled to the dead-letter topic.
    pub producer: FutureProducer,
    /// Told about rebalances (group members only). With a listener the
    /// group uses the `range` assignor: see [`RebalanceListener`].
    pub rebalance: Option<Arc<dyn RebalanceListener>>,
}

/// The consumer actor; see the module documentation.
pub struct EventConsumer<H>(std::marker::PhantomData<fn() -> H>);

impl<H> Default for EventConsumer<H> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// State of a running [`EventConsumer`].
pub struct ConsumerState {
    /// Shared with the poll loop; kept here to commit on the way out.
    consumer: Arc<StreamConsumer<ShopContext>>,
    /// Tells the poll loop to finish its current batch and stop.
    stop: watch::Sender<bool>,
    /// The poll loop, awaited on stop.
    poll_loop: Option<JoinHandle<()>>,
    /// Group members commit their stored offsets on the way out; a
    /// broadcast reader has no group to commit to.
    commit_on_stop: bool,
}

/// Messages of an [`EventConsumer`].
#[derive(Debug)]
pub enum ConsumerMsg {
    /// The poll loop ended by itself (it only does so on a fatal error); the
    /// actor fails so its supervisor can start a fresh consumer.
    PollLoopEnded(String),
}

impl<H: EventHandler> Actor for EventConsumer<H> {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs<H>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let topics: Vec<String> = args.topics.iter().map(|t| args.settings.topic(t)).collect();
        let (consumer, label) = match &args.subscription {
            Subscription::Group { group_id } => {
                let mut config = args.settings.consumer_config(group_id, false);
                if args.rebalance.is_some() {
                    config.set("partition.assignment.strategy", "range");
                }
                // Statistics carry the consumer lag reported at /metrics.
                config.set("statistics.interval.ms", "5000");
                let context = ShopContext::new(args.rebalance.clone()).with_group(group_id);
                let consumer: Arc<StreamConsumer<ShopContext>> =
                    Arc::new(config.create_with_context(context)?);
                if let Some(listener) = &args.rebalance {
                    let (described, topics) = (consumer.clone(), topics.clone());
                    // Metadata requests block: keep them off the runtime.
                    let counts =
                        tokio::task::spawn_blocking(move || partition_counts(&described, &topics))
                            .await??;
                    listener.partition_counts(&counts);
                }
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                consumer.subscribe(&names)?;
                (consumer, group_id.clone())
            }
            Subscription::Broadcast { cursor } => {
                let mut config = args.settings.consumer_config("shop-broadcast", true);
                config.set("enable.auto.commit", "false");
                let consumer: Arc<StreamConsumer<ShopContext>> =
                    Arc::new(config.create_with_context(ShopContext::default())?);
                let topics = topics.clone();
                let assigner = consumer.clone();
                // Metadata and watermark requests block: keep them off the runtime.
                let ranges =
                    tokio::task::spawn_blocking(move || partition_ranges(&assigner, &topics))
                        .await??;
                let chosen = match cursor {
                    Some(cursor) => cursor.start(&ranges).await,
                    None => Positions::new(),
                };
                let mut assignment = rdkafka::TopicPartitionList::new();
                for ((topic, partition), offset) in starting_offsets(&ranges, &chosen) {
                    assignment.add_partition_offset(
                        &topic,
                        partition,
                        rdkafka::Offset::Offset(offset),
                    )?;
                }
                consumer.assign(&assignment)?;
                (consumer, "broadcast".to_owned())
            }
        };
        let cursor = match &args.subscription {
            Subscription::Broadcast { cursor } => cursor.clone(),
            Subscription::Group { .. } => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let poll_loop = tokio::spawn(poll_loop(
            consumer.clone(),
            args.handler,
            stop_rx,
            myself,
            DeadLetters {
                producer: args.producer,
                topic: args.settings.topic(crate::events::topics::DEAD_LETTERS),
                group: label,
            },
            cursor,
        ));
        Ok(ConsumerState {
            consumer,
            stop,
            poll_loop: Some(poll_loop),
            commit_on_stop: matches!(args.subscription, Subscription::Group { .. }),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConsumerMsg::PollLoopEnded(reason) => Err(reason.into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state.stop.send(true);
        if let Some(poll_loop) = state.poll_loop.take() {
            // The loop finishes the batch in hand; give it a bounded time.
            let _ = tokio::time::timeout(Duration::from_secs(10), poll_loop).await;
        }
        if let Some(listener) = state.consumer.context().listener() {
            // This process gives up its partitions now, not when the group
            // notices it has gone.
            if let Ok(assignment) = state.consumer.assignment() {
                listener.revoked(&crate::kafka::rebalance::elements(&assignment));
            }
        }
        if !state.commit_on_stop {
            return Ok(());
        }
        let consumer = state.consumer.clone();
        // A synchronous commit blocks a thread: keep it off the runtime's
        // workers. It waits for the broker without end when the broker is
        // gone, so stopping waits for it only so long; the offsets stored
        // since the last automatic commit are then redelivered, which the
        // handlers absorb.
        let commit = tokio::task::spawn_blocking(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "final offset commit skipped");
            }
        });
        if tokio::time::timeout(FINAL_COMMIT_WAIT, commit)
            .await
            .is_err()
        {
            tracing::warn!("final offset commit unanswered; its messages will be redelivered");
        }
        Ok(())
    }
}

/// How many partitions each of `topics` has.
fn partition_counts(
    consumer: &StreamConsumer<ShopContext>,
    topics: &[String],
) -> rdkafka::error::KafkaResult<Vec<(String, i32)>> {
    let timeout = Duration::from_secs(10);
    let mut counts = Vec::with_capacity(topics.len());
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let count = metadata
            .topics()
            .iter()
            .map(|t| t.partitions().len())
            .sum::<usize>();
        counts.push((topic.clone(), i32::try_from(count).unwrap_or(i32::MAX)));
    }
    Ok(counts)
}

/// One message as read, kept whole until its offset is stored: its position
/// to store, and its original bytes in case it has to be dead-lettered.
struct Received {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// A decoded envelope in a batch, with the index of the [`Received`]
/// message it came from.
struct Item {
    envelope: Envelope,
    source: usize,
}

/// Where this consumer sends messages it cannot handle.
struct DeadLetters {
    /// The process's shared producer.
    producer: FutureProducer,
    /// The dead-letter topic's name on the broker.
    topic: String,
    /// The consumer group, or `broadcast`, for logs and the dead letter's headers.
    group: String,
}

/// Why [`handle_with_retry`] or [`dead_letter`] returned before finishing.
struct Stopped;

async fn poll_loop<H: EventHandler>(
    consumer: Arc<StreamConsumer<ShopContext>>,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
    myself: ActorRef<ConsumerMsg>,
    dead_letters: DeadLetters,
    cursor: Option<Arc<dyn BroadcastCursor>>,
) {
    let group = dead_letters.group.as_str();
    loop {
        let first = tokio::select! {
            _ = stop.changed() => return,
            message = consumer.recv() => message,
        };
        let mut received = Vec::new();
        let mut batch = Vec::new();
        let mut undecodable = Vec::new();
        let mut fatal = None;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Ok(message) => {
                    let source = received.len();
                    received.push(Received {
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec),
                    });
                    match Envelope::decode(message.payload().unwrap_or_default()) {
                        Ok(mut envelope) => {
                            envelope.trace = trace_context(&message);
                            batch.push(Item { envelope, source });
                        }
                        Err(error) => undecodable.push((source, error.to_string())),
                    }
                }
                Err(error) => {
                    // librdkafka reports broker trouble here and recovers by itself.
                    tracing::warn!(%group, %error, "kafka consumer error");
                    if matches!(error, rdkafka::error::KafkaError::Canceled) {
                        fatal = Some(error.to_string());
                    }
                }
            }
            if received.len() < MAX_BATCH {
                // Take whatever else is already fetched, without waiting.
                next = consumer.recv().now_or_never();
            }
        }
        for (source, error) in undecodable {
            if dead_letter(&dead_letters, &received[source], error, &mut stop)
                .await
                .is_err()
            {
                // Stopping: leave the offsets unstored so it is redelivered.
                return;
            }
        }
        if !batch.is_empty()
            && handle_with_retry(&*handler, batch, &received, &dead_letters, &mut stop)
                .await
                .is_err()
        {
            // Stopping mid-retry: leave the offsets unstored so it is redelivered.
            return;
        }
        // Every message is now handled or acknowledged as a dead letter.
        if let Some(cursor) = &cursor {
            let mut handled = Positions::new();
            for message in &received {
                let next = handled
                    .entry((message.topic.clone(), message.partition))
                    .or_insert(0);
                *next = (*next).max(message.offset + 1);
            }
            cursor.advanced(&handled).await;
        }
        for message in received {
            if let Err(error) =
                consumer.store_offset(&message.topic, message.partition, message.offset)
            {
                // The partition moved to another member, which will redo the
                // work; the recorded event ids make that harmless.
                tracing::debug!(%group, %error, "offset not stored");
            }
        }
        if let Some(reason) = fatal {
            let _ = myself.send_message(ConsumerMsg::PollLoopEnded(reason));
            return;
        }
    }
}

/// The message's `traceparent` header, if it has a valid one. A missing or
/// invalid one only means its work starts a new trace.
fn trace_context(message: &impl Message) -> Option<crate::trace::TraceParent> {
    let header = message
        .headers()?
        .iter()
        .find(|header| header.key == crate::trace::HEADER)?;
    let value = std::str::from_utf8(header.value?).ok()?;
    match crate::trace::TraceParent::parse(value) {
        Ok(parent) => Some(parent),
        Err(error) => {
            tracing::debug!(%error, value, "traceparent header ignored");
            None
        }
    }
}

/// Hands `batch` to the handler until it succeeds. A batch that fails
/// permanently is split, so one bad message cannot hold back the others; a
/// single message that fails permanently [`PERMANENT_ATTEMPTS`] times in a
/// row is dead-lettered. Transient failures (a database outage) are retried
/// for as long as they last: they say nothing about the message.
async fn handle_with_retry<H: EventHandler>(
    handler: &H,
    batch: Vec<Item>,
    received: &[Received],
    dead_letters: &DeadLetters,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Stopped> {
    let group = dead_letters.group.as_str();
    let mut pending = vec![batch];
    while let Some(batch) = pending.pop() {
        let mut backoff = RETRY_MIN;
        let mut refusals = 0;
        loop {
            let envelopes = batch.iter().map(|item| item.envelope.clone()).collect();
            match handler.handle(envelopes).await {
                Ok(()) => break,
                Err(HandlerError::Permanent(reason)) if batch.len() > 1 => {
                    tracing::warn!(%group, %reason, size = batch.len(), "batch failed; retrying its messages one by one");
                    // Pushed in reverse so they are handled in their original order.
                    pending.extend(batch.into_iter().rev().map(|item| vec![item]));
                    break;
                }
                Err(error @ HandlerError::Permanent(_)) => {
                    refusals += 1;
                    let Some(item) = batch.first() else { break };
                    if refusals >= PERMANENT_ATTEMPTS {
                        dead_letter(
                            dead_letters,
                            &received[item.source],
                            error.to_string(),
                            stop,
                        )
                        .await?;
                        break;
                    }
                    tracing::warn!(
                        %group, %error, event_id = %item.envelope.event_id,
                        attempt = refusals, retry_in_ms = backoff.as_millis() as u64,
                        "message refused; will retry before dead-lettering it"
                    );
                }
                Err(error @ HandlerError::Transient(_)) => {
                    // Only refusals in a row count: an outage in between
                    // says nothing about the message.
                    refusals = 0;
                    tracing::warn!(%group, %error, retry_in_ms = backoff.as_millis() as u64, "batch failed; will retry");
                }
            }
            pause(backoff, stop).await?;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
    Ok(())
}

/// Sends `message` to the dead-letter topic with `error`, retrying with
/// backoff until Kafka acknowledges it: its offset must not be stored
/// before, or a message would be neither handled nor dead-lettered.
async fn dead_letter(
    dead_letters: &DeadLetters,
    message: &Received,
    error: String,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Stopped> {
    let failure = Failure {
        error,
        source_topic: message.topic.clone(),
        source_partition: message.partition,
        source_offset: message.offset,
        group: dead_letters.group.clone(),
        failed_at: chrono::Utc::now(),
    };
    tracing::error!(
        group = %failure.group, topic = %failure.source_topic,
        partition = failure.source_partition, offset = failure.source_offset,
        error = %failure.error,
        failed_at = %failure.failed_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "message cannot be handled; sending it to the dead-letter topic"
    );
    let mut backoff = RETRY_MIN;
    loop {
        let sent = tokio::select! {
            _ = stop.changed() => return Err(Stopped),
            sent = dead_letters::send(
                &dead_letters.producer,
                &dead_letters.topic,
                message.key.as_deref(),
                message.payload.as_deref(),
                &failure,
            ) => sent,
        };
        match sent {
            Ok((dead_letter_partition, dead_letter_offset)) => {
                tracing::info!(
                    group = %failure.group, topic = %failure.source_topic,
                    partition = failure.source_partition, offset = failure.source_offset,
                    dead_letter_partition, dead_letter_offset, "dead letter stored"
                );
                crate::metrics::metrics()
                    .dead_letters
                    .get_or_create(&crate::metrics::DeadLetterLabels {
                        group: failure.group.clone(),
                        topic: failure.source_topic.clone(),
                    })
                    .inc();
                return Ok(());
            }
            Err(error) => tracing::warn!(
                group = %failure.group, %error, retry_in_ms = backoff.as_millis() as u64,
                "could not send a dead letter; will retry"
            ),
        }
        pause(backoff, stop).await?;
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

/// Sleeps about `backoff` (jittered), unless asked to stop first.
async fn pause(backoff: Duration, stop: &mut watch::Receiver<bool>) -> Result<(), Stopped> {
    tokio::select! {
        _ = stop.changed() => Err(Stopped),
        _ = tokio::time::sleep(crate::retry::jittered(backoff)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{topics, Event, OrderLine, ReserveInventory};
    use rdkafka::mocking::MockCluster;
    use std::sync::atomic::{AtomicU32, Ordering};
    use uuid::Uuid;

    /// Refuses, permanently, every batch holding `poison`; accepts the rest.
    struct RefusesPoison {
        poison: Uuid,
        /// Batches handed over, in order, as their event ids.
        calls: std::sync::Mutex<Vec<Vec<Uuid>>>,
    }

    impl EventHandler for RefusesPoison {
        async fn handle(&self, batch: Vec<Envelope>) -> Result<(), HandlerError> {
            let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
            let poisoned = ids.contains(&self.poison);
            self.calls.lock().unwrap().push(ids);
            if poisoned {
                Err(HandlerError::Permanent("no such thing".into()))
            } else {
                Ok(())
            }
        }
    }

    /// Refuses twice, then accepts.
    struct RefusesTwice(AtomicU32);

    impl EventHandler for RefusesTwice {
        async fn handle(&self, _batch: Vec<Envelope>) -> Result<(), HandlerError> {
            match self.0.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(HandlerError::Permanent("not yet".into())),
                _ => Ok(()),
            }
        }
    }

    fn envelope() -> Envelope {
        Envelope::new(
            Uuid::now_v7(),
            Uuid::new_v4(),
            Event::ReserveInventory(ReserveInventory {
                items: vec![OrderLine {
                    product_id: Uuid::new_v4(),
                    quantity: 1,
                }],
            }),
        )
    }

    /// `envelopes` as if read at offsets 10, 11, … of partition 1.
    fn as_read(envelopes: &[Envelope]) -> (Vec<Item>, Vec<Received>) {
        let received = envelopes
            .iter()
            .enumerate()
            .map(|(i, e)| Received {
                topic: topics::INVENTORY_COMMANDS.into(),
                partition: 1,
                offset: 10 + i as i64,
                key: Some(e.key().into_bytes()),
                payload: Some(e.encode()),
            })
            .collect();
        let items = envelopes
            .iter()
            .enumerate()
            .map(|(source, e)| Item {
                envelope: e.clone(),
                source,
            })
            .collect();
        (items, received)
    }

    fn dead_letters(
        cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    ) -> DeadLetters {
        let settings = KafkaSettings::new(cluster.bootstrap_servers());
        DeadLetters {
            producer: settings.producer().unwrap(),
            topic: topics::DEAD_LETTERS.into(),
            group: "product".into(),
        }
    }

    #[tokio::test]
    async fn one_refused_message_is_dead_lettered_and_the_rest_of_its_batch_handled() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(topics::DEAD_LETTERS, 1, 1).unwrap();
        let batch = [envelope(), envelope(), envelope()];
        let handler = RefusesPoison {
            poison: batch[1].event_id,
            calls: Default::default(),
        };
        let (items, received) = as_read(&batch);
        let (_stop, mut stop_rx) = watch::channel(false);
        let sink = dead_letters(&cluster);

        let done = handle_with_retry(&handler, items, &received, &sink, &mut stop_rx).await;
        assert!(done.is_ok());

        let ids = |e: &[&Envelope]| e.iter().map(|e| e.event_id).collect::<Vec<_>>();
        let [first, poison, last] = [&batch[0], &batch[1], &batch[2]];
        assert_eq!(
            *handler.calls.lock().unwrap(),
            vec![
                ids(&[first, poison, last]),
                ids(&[first]),
                ids(&[poison]),
                ids(&[poison]),
                ids(&[poison]),
                ids(&[last]),
            ],
            "the batch is split, and the refused message tried {PERMANENT_ATTEMPTS} times"
        );
        let settings = KafkaSettings::new(cluster.bootstrap_servers());
        let letters = dead_letters::list(&settings).await.unwrap();
        assert_eq!(letters.len(), 1, "{letters:?}");
        let letter = &letters[0];
        assert_eq!(letter.payload, poison.encode(), "original bytes");
        assert_eq!(letter.key.as_deref(), Some(poison.key().as_bytes()));
        assert_eq!(letter.error.as_deref(), Some("permanent: no such thing"));
        assert_eq!(
            letter.source_topic.as_deref(),
            Some(topics::INVENTORY_COMMANDS)
        );
        assert_eq!(
            (letter.source_partition, letter.source_offset),
            (Some(1), Some(11))
        );
        assert_eq!(letter.group.as_deref(), Some("product"));
        assert!(letter.failed_at.is_some());
    }

    #[tokio::test]
    async fn a_message_accepted_before_the_last_attempt_is_not_dead_lettered() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(topics::DEAD_LETTERS, 1, 1).unwrap();
        let handler = RefusesTwice(AtomicU32::new(0));
        let (items, received) = as_read(&[envelope()]);
        let (_stop, mut stop_rx) = watch::channel(false);

        let done = handle_with_retry(
            &handler,
            items,
            &received,
            &dead_letters(&cluster),
            &mut stop_rx,
        )
        .await;

        assert!(done.is_ok());
        assert_eq!(handler.0.load(Ordering::SeqCst), 3);
        let settings = KafkaSettings::new(cluster.bootstrap_servers());
        assert!(dead_letters::list(&settings).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn stopping_while_a_dead_letter_cannot_be_sent_is_reported_as_stopped() {
        let cluster = MockCluster::new(1).unwrap();
        // No dead-letter topic, and the broker down: the send cannot succeed.
        cluster.broker_down(1).unwrap();
        let (_, received) = as_read(&[envelope()]);
        let (stop, mut stop_rx) = watch::channel(false);
        let sink = dead_letters(&cluster);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = stop.send(true);
            stop
        });

        let sent = dead_letter(&sink, &received[0], "bad".into(), &mut stop_rx).await;

        assert!(
            sent.is_err(),
            "reported as stopped, so the caller stores nothing"
        );
        drop(stopper.await);
    }

    /// Refuses every batch as a transient failure, counting the calls.
    struct AlwaysUnavailable(tokio::sync::watch::Sender<u32>);

    impl EventHandler for AlwaysUnavailable {
        async fn handle(&self, _batch: Vec<Envelope>) -> Result<(), HandlerError> {
            self.0.send_modify(|calls| *calls += 1);
            Err(HandlerError::Transient("postgres is down".into()))
        }
    }

    /// Accepts every batch, passing on the event ids it saw.
    struct Accepts(tokio::sync::mpsc::UnboundedSender<Uuid>);

    impl EventHandler for Accepts {
        async fn handle(&self, batch: Vec<Envelope>) -> Result<(), HandlerError> {
            for envelope in batch {
                let _ = self.0.send(envelope.event_id);
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_batch_still_failing_when_the_consumer_stops_is_delivered_to_the_next_member() {
        let cluster = MockCluster::new(1).unwrap();
        cluster
            .create_topic(topics::INVENTORY_COMMANDS, 1, 1)
            .unwrap();
        cluster.create_topic(topics::DEAD_LETTERS, 1, 1).unwrap();
        let settings = KafkaSettings::new(cluster.bootstrap_servers());
        let producer = settings.producer().unwrap();
        let command = envelope();
        producer
            .send(
                rdkafka::producer::FutureRecord::to(topics::INVENTORY_COMMANDS)
                    .key(&command.key())
                    .payload(&command.encode()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        fn args<H>(
            settings: &KafkaSettings,
            producer: &FutureProducer,
            handler: Arc<H>,
        ) -> ConsumerArgs<H> {
            ConsumerArgs {
                settings: settings.clone(),
                subscription: Subscription::Group {
                    group_id: "product".into(),
                },
                topics: vec![topics::INVENTORY_COMMANDS],
                handler,
                producer: producer.clone(),
                rebalance: None,
            }
        }

        // The first member's handler fails, again and again, until it stops.
        let (calls, mut called) = tokio::sync::watch::channel(0);
        let (first, first_done) = Actor::spawn(
            None,
            EventConsumer::default(),
            args(&settings, &producer, Arc::new(AlwaysUnavailable(calls))),
        )
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(30), called.wait_for(|n| *n >= 2))
            .await
            .expect("the handler was retried")
            .unwrap();
        first.stop(None);
        first_done.await.unwrap();

        // The next member of the group gets the same message: its offset
        // was neither stored nor committed.
        let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let (second, second_done) = Actor::spawn(
            None,
            EventConsumer::default(),
            args(&settings, &producer, Arc::new(Accepts(seen))),
        )
        .await
        .unwrap();
        let redelivered = tokio::time::timeout(Duration::from_secs(30), seen_rx.recv())
            .await
            .expect("the message is delivered again");
        assert_eq!(redelivered, Some(command.event_id));
        second.stop(None);
        second_done.await.unwrap();
    }
}
