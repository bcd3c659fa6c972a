//! Kafka plumbing: client settings, topic creation, the embedded
//! Kafka-protocol broker, the consumer actor every service uses, and the
//! dead-letter topic's reader and replayer.

pub mod consumer;
pub mod cursor;
pub mod dead_letters;
pub mod rebalance;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureProducer;
use std::time::Duration;

pub use consumer::{ConsumerArgs, EventConsumer, EventHandler, HandlerError, Subscription};
pub use cursor::{BroadcastCursor, PartitionRange, Positions};
pub use dead_letters::{DeadLetter, DeadLetterError, Selection};
pub use rebalance::{RebalanceListener, TopicPartition};

/// Longest wait between reconnection attempts to a broker (librdkafka's
/// default is 10 s): a restarted broker is back in use within a second,
/// well inside a consumer's session timeout, so its group survives.
const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// Default of [`KafkaSettings::fetch_wait`], in milliseconds.
pub const DEFAULT_FETCH_WAIT_MS: u64 = 10;

/// How to reach Kafka and how topics are laid out.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Partitions per topic when the platform creates its topics.
    pub partitions: i32,
    /// Replication factor when the platform creates its topics.
    pub replication: i32,
    /// How long a consumer that vanished without leaving keeps its partitions.
    pub session_timeout: Duration,
    /// How long the broker may hold a fetch that finds no new message
    /// (`fetch.wait.max.ms`). A real Kafka broker answers as soon as a
    /// message arrives, so this only bounds idle polling there; the
    /// embedded broker (librdkafka's mock) holds an empty fetch for the
    /// whole wait even when a message arrives meanwhile, so against it
    /// every hop pays half of this on average.
    pub fetch_wait: Duration,
}

impl KafkaSettings {
    /// Settings for `brokers` with single-node defaults.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            partitions: 6,
            replication: 1,
            session_timeout: Duration::from_secs(10),
            fetch_wait: Duration::from_millis(DEFAULT_FETCH_WAIT_MS),
        }
    }

    /// A producer that never duplicates or reorders a partition's messages
    /// (idempotence) and only counts a message sent once all replicas have it.
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "30000")
            .set("client.id", "shop")
            // Named, not left to the default: the order service computes
            // which partition an order's replies land on (CRC32 of the key,
            // see `order::placement`), so every producer must agree.
            .set("partitioner", "consistent_random")
            .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
            .create()
    }

    /// Configuration for a consumer in `group_id` that stores offsets only
    /// when told to (after the work is durable) and commits them periodically.
    pub fn consumer_config(&self, group_id: &str, from_latest: bool) -> ClientConfig {
        // `from_latest` only matters for a group with no committed offsets.
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
            .set("group.id", group_id)
            .set("client.id", "shop")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                if from_latest { "latest" } else { "earliest" },
            )
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout.as_millis() / 4).max(100).to_string(),
            )
            .set(
                "fetch.wait.max.ms",
                self.fetch_wait.as_millis().clamp(1, 60_000).to_string(),
            )
            .set("partition.assignment.strategy", "cooperative-sticky");
        config
    }

    /// Keeps the dead-letter topic's size metric current: its messages
    /// (high minus low watermark over its partitions), read every `every`
    /// until the returned task is aborted. Replay does not remove a dead
    /// letter, so the figure counts replayed ones too.
    pub fn watch_dead_letter_topic(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let brokers = self.brokers.clone();
        tokio::spawn(async move {
            let client: Result<rdkafka::consumer::BaseConsumer, _> = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create();
            let Ok(client) = client.map(std::sync::Arc::new) else {
                return;
            };
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                let client = client.clone();
                // Metadata and watermark requests block: keep them off the runtime.
                let size = tokio::task::spawn_blocking(move || {
                    use rdkafka::consumer::Consumer;
                    let timeout = Duration::from_secs(5);
                    let topic = crate::events::topics::DEAD_LETTERS;
                    let metadata = client.fetch_metadata(Some(topic), timeout).ok()?;
                    let mut size = 0;
                    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                        let (low, high) = client
                            .fetch_watermarks(topic, partition.id(), timeout)
                            .ok()?;
                        size += high - low;
                    }
                    Some(size)
                })
                .await;
                if let Ok(Some(size)) = size {
                    crate::metrics::metrics()
                        .dead_letter_topic_messages
                        .set(size);
                }
            }
        })
    }

    /// Creates the platform's topics if they do not exist yet.
    pub async fn ensure_topics(&self, topics: &[&str]) -> Result<(), KafkaError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()?;
        let admin = std::sync::Arc::new(admin);
        // Ask first: most starts find every topic there, and some brokers
        // (librdkafka's mock among them) do not implement CreateTopics.
        let existing = {
            let admin = admin.clone();
            tokio::task::spawn_blocking(move || {
                admin
                    .inner()
                    .fetch_metadata(None, Duration::from_secs(10))
                    .map(|m| {
                        m.topics()
                            .iter()
                            .map(|t| t.name().to_owned())
                            .collect::<Vec<_>>()
                    })
            })
            .await
            .map_err(|_| KafkaError::AdminOp(RDKafkaErrorCode::Fail))??
        };
        let missing: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|t| !existing.iter().any(|e| e == t))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|name| {
                NewTopic::new(
                    name,
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                )
            })
            .collect();
        let options = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(10)))
            .request_timeout(Some(Duration::from_secs(15)));
        let results = tokio::time::timeout(
            Duration::from_secs(20),
            admin.create_topics(&new_topics, &options),
        )
        .await
        .map_err(|_| KafkaError::AdminOp(RDKafkaErrorCode::RequestTimedOut))??;
        for result in results {
            match result {
                Ok(topic) => tracing::info!(%topic, partitions = self.partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    tracing::error!(%topic, %code, "could not create topic");
                    return Err(KafkaError::AdminOp(code));
                }
            }
        }
        Ok(())
    }
}

/// Pause before each request to the embedded broker's thread at start-up
/// (see [`EmbeddedBroker::start`]).
const MOCK_REQUEST_PAUSE: Duration = Duration::from_millis(3);

/// A Kafka-protocol broker inside this process (librdkafka's mock cluster),
/// so the platform runs on a machine with no Kafka installed. Other processes
/// reach it over TCP at [`EmbeddedBroker::bootstrap_servers`]. It keeps
/// everything in memory: it is for development and tests, not production.
pub struct EmbeddedBroker {
    bootstrap: String,
    /// Dropping this ends the broker thread, which drops the cluster.
    stop: Option<std::sync::mpsc::Sender<BrokerCommand>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Requests to the thread that owns the mock cluster (it is not `Send`).
enum BrokerCommand {
    /// Take broker `id` down (connections refused) or bring it back up.
    SetUp(i32, bool, std::sync::mpsc::Sender<Result<(), KafkaError>>),
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster with `topics` created at `partitions` each.
    pub fn start(topics: &[&str], partitions: i32) -> Result<Self, KafkaError> {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<BrokerCommand>();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for topic in &topics {
                    // A pause before each request to the mock's thread: it
                    // serves its requests, then drains its wake-up pipe, so
                    // a request made in between (the next topic, sent as
                    // soon as the last one is answered) loses its wake-up
                    // and waits for the thread's 1 s poll timeout
                    // (librdkafka's `rd_kafka_mock_cluster_io_poll`). That
                    // made start-up take 0 to 2 s more at random; a pause of
                    // a few milliseconds lets the drain happen first.
                    std::thread::sleep(MOCK_REQUEST_PAUSE);
                    if let Err(e) = cluster.create_topic(topic, partitions, 1) {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Serve commands until every sender is gone, then drop the cluster.
                while let Ok(command) = stop_rx.recv() {
                    match command {
                        BrokerCommand::SetUp(id, up, reply) => {
                            let result = if up {
                                cluster.broker_up(id)
                            } else {
                                cluster.broker_down(id)
                            };
                            let _ = reply.send(result);
                        }
                    }
                }
            })
            .map_err(|_| KafkaError::MockCluster(RDKafkaErrorCode::Fail))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| KafkaError::MockCluster(RDKafkaErrorCode::Fail))??;
        Ok(Self {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address clients connect to, e.g. `127.0.0.1:39421`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Simulates an outage (`up == false`) or its end, keeping all data.
    pub fn set_broker_up(&self, up: bool) -> Result<(), KafkaError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let fail = || KafkaError::MockCluster(RDKafkaErrorCode::Fail);
        self.stop
            .as_ref()
            .ok_or_else(fail)?
            .send(BrokerCommand::SetUp(1, up, tx))
            .map_err(|_| fail())?;
        rx.recv().map_err(|_| fail())?
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::FutureRecord;

    #[tokio::test]
    async fn the_dead_letter_size_metric_counts_the_topic() {
        let cluster = MockCluster::new(1).unwrap();
        cluster
            .create_topic(crate::events::topics::DEAD_LETTERS, 2, 1)
            .unwrap();
        let settings = KafkaSettings::new(cluster.bootstrap_servers());
        let producer = settings.producer().unwrap();
        for key in ["a", "b", "c"] {
            producer
                .send(
                    FutureRecord::<str, str>::to(crate::events::topics::DEAD_LETTERS)
                        .key(key)
                        .payload("{}"),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
        let watch = settings.watch_dead_letter_topic(Duration::from_millis(50));
        let gauge = &crate::metrics::metrics().dead_letter_topic_messages;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while gauge.get() != 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gauge at {}",
                gauge.get()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        watch.abort();
    }
}
