//! The consumer actor: reads a service's topics in batches, hands each batch
//! to the service's [`EventHandler`], and stores the Kafka offsets only after
//! the handler reports the batch's effects durable.
//!
//! That ordering is the at-least-once half of the platform's exactly-once
//! effect; the other half is that every handler records the event ids it has
//! processed in the same transaction as their effect, so a redelivered batch
//! changes nothing.

use crate::events::Envelope;
use crate::kafka::KafkaSettings;
use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Most messages handed to a handler at once.
const MAX_BATCH: usize = 256;
/// First and longest pause between retries of a failing batch.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

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
    /// Read every partition, starting at the end as it is when the consumer
    /// starts, with no group: every process sees every message published
    /// after it started (what each gateway replica needs).
    Broadcast,
}

/// Start-up arguments of an [`EventConsumer`].
pub struct ConsumerArgs<H> {
    /// Where Kafka is.
    pub settings: KafkaSettings,
    /// Group membership or broadcast.
    pub subscription: Subscription,
    /// Topics to read.
    pub topics: Vec<&'static str>,
    /// What to do with each batch.
    pub handler: Arc<H>,
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
    consumer: Arc<StreamConsumer>,
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
        let (consumer, label) = match &args.subscription {
            Subscription::Group { group_id } => {
                let consumer: StreamConsumer =
                    args.settings.consumer_config(group_id, false).create()?;
                consumer.subscribe(&args.topics)?;
                (Arc::new(consumer), group_id.clone())
            }
            Subscription::Broadcast => {
                let mut config = args.settings.consumer_config("shop-broadcast", true);
                config.set("enable.auto.commit", "false");
                let consumer: Arc<StreamConsumer> = Arc::new(config.create()?);
                let topics = args.topics.clone();
                let assigner = consumer.clone();
                // Metadata and watermark requests block: keep them off the runtime.
                tokio::task::spawn_blocking(move || assign_at_end(&assigner, &topics)).await??;
                (consumer, "broadcast".to_owned())
            }
        };
        let (stop, stop_rx) = watch::channel(false);
        let poll_loop = tokio::spawn(poll_loop(
            consumer.clone(),
            args.handler,
            stop_rx,
            myself,
            label,
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
        if !state.commit_on_stop {
            return Ok(());
        }
        let consumer = state.consumer.clone();
        // A synchronous commit blocks a thread: keep it off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "final offset commit skipped");
            }
        })
        .await;
        Ok(())
    }
}

/// Assigns every partition of `topics` at its current end, so that exactly
/// the messages published from now on are read.
fn assign_at_end(consumer: &StreamConsumer, topics: &[&str]) -> rdkafka::error::KafkaResult<()> {
    let timeout = Duration::from_secs(10);
    let mut assignment = rdkafka::TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
            assignment.add_partition_offset(
                topic,
                partition.id(),
                rdkafka::Offset::Offset(high),
            )?;
        }
    }
    consumer.assign(&assignment)
}

/// One message's position, to store once its batch is handled.
struct Position {
    topic: String,
    partition: i32,
    offset: i64,
}

async fn poll_loop<H: EventHandler>(
    consumer: Arc<StreamConsumer>,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
    myself: ActorRef<ConsumerMsg>,
    group: String,
) {
    loop {
        let first = tokio::select! {
            _ = stop.changed() => return,
            message = consumer.recv() => message,
        };
        let mut batch = Vec::new();
        let mut positions = Vec::new();
        let mut fatal = None;
        let mut next = Some(first);
        while let Some(received) = next.take() {
            match received {
                Ok(message) => {
                    positions.push(Position {
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                    });
                    match Envelope::decode(message.payload().unwrap_or_default()) {
                        Ok(envelope) => batch.push(envelope),
                        Err(error) => tracing::error!(
                            %group, topic = message.topic(), partition = message.partition(),
                            offset = message.offset(), %error,
                            "skipping a message that is not a valid envelope"
                        ),
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
            if positions.len() < MAX_BATCH {
                // Take whatever else is already fetched, without waiting.
                next = consumer.recv().now_or_never();
            }
        }
        if !batch.is_empty() && !handle_with_retry(&*handler, batch, &mut stop, &group).await {
            // Stopping mid-retry: leave the offsets unstored so it is redelivered.
            return;
        }
        for position in positions {
            if let Err(error) =
                consumer.store_offset(&position.topic, position.partition, position.offset)
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

/// Hands `batch` to the handler until it succeeds. A batch that fails
/// permanently is split, so one bad message cannot hold back the others.
/// Returns false if asked to stop before the batch was done.
async fn handle_with_retry<H: EventHandler>(
    handler: &H,
    batch: Vec<Envelope>,
    stop: &mut watch::Receiver<bool>,
    group: &str,
) -> bool {
    let mut pending = vec![batch];
    while let Some(batch) = pending.pop() {
        let mut backoff = RETRY_MIN;
        loop {
            match handler.handle(batch.clone()).await {
                Ok(()) => break,
                Err(HandlerError::Permanent(reason)) if batch.len() > 1 => {
                    tracing::warn!(%group, %reason, size = batch.len(), "batch failed; retrying its messages one by one");
                    // Pushed in reverse so they are handled in their original order.
                    pending.extend(batch.into_iter().rev().map(|envelope| vec![envelope]));
                    break;
                }
                Err(HandlerError::Permanent(reason)) => {
                    let envelope = &batch[0];
                    tracing::error!(
                        %group, %reason, event_id = %envelope.event_id,
                        order_id = %envelope.order_id, event_type = envelope.event.type_name(),
                        "dropping a message that cannot be handled"
                    );
                    break;
                }
                Err(HandlerError::Transient(reason)) => {
                    tracing::warn!(%group, %reason, retry_in_ms = backoff.as_millis() as u64, "batch failed; will retry");
                    let pause = crate::retry::jittered(backoff);
                    tokio::select! {
                        _ = stop.changed() => return false,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }
    true
}
