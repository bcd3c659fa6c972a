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
use rdkafka::metadata::Metadata;
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

/// Default replication factor of the topics the platform creates: a
/// 3-broker cluster, which survives one broker down with
/// [`DEFAULT_MIN_INSYNC_REPLICAS`] still in sync.
pub const DEFAULT_REPLICATION: i32 = 3;

/// Default `min.insync.replicas` of the topics the platform creates (never
/// above their replication factor): with `acks=all`, a message counts as
/// sent only once two brokers have it, so losing one loses nothing.
pub const DEFAULT_MIN_INSYNC_REPLICAS: i32 = 2;

/// Default retention of the dead-letter topic: 30 days, time for an
/// operator to find the cause and replay. The other topics keep the
/// broker's default (7 days on Apache Kafka), far longer than any saga.
pub const DEFAULT_DEAD_LETTER_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

/// How long start-up waits for the platform's topics to have leaders.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Why the platform's topics could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The client or broker failed.
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    /// The topic settings contradict each other.
    #[error("{0}")]
    Settings(String),
    /// The cluster has fewer brokers than the replication factor asks for.
    #[error(
        "KAFKA_REPLICATION is {replication} but the cluster has {brokers} broker(s); \
         set KAFKA_REPLICATION to at most {brokers} (a single-node Kafka needs KAFKA_REPLICATION=1)"
    )]
    TooFewBrokers {
        /// The configured replication factor.
        replication: i32,
        /// Brokers the cluster reported.
        brokers: usize,
    },
    /// A topic exists with less than the platform is configured for.
    #[error(
        "topic `{topic}` exists with {found} {what} but {setting} is {wanted}; \
         set {setting} to {found} or less, or give the topic more {what} with Kafka's own tools"
    )]
    TooSmall {
        /// The topic's name on the broker.
        topic: String,
        /// `partitions` or `replicas`.
        what: &'static str,
        /// What the topic has.
        found: i32,
        /// What the settings ask for.
        wanted: i32,
        /// The environment variable that asks for it.
        setting: &'static str,
    },
    /// Partitions of the platform's topics still had no leader after this
    /// many seconds.
    #[error("the platform's topics still have partitions without a leader after {0} s")]
    NoLeaders(u64),
    /// The broker refused to create a topic.
    #[error("could not create topic `{topic}`: {code}")]
    Create {
        /// The topic's name on the broker.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
}

/// How to reach Kafka and how topics are laid out.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Partitions per topic when the platform creates its topics.
    pub partitions: i32,
    /// Replication factor when the platform creates its topics; existing
    /// topics must have at least this many replicas.
    pub replication: i32,
    /// `min.insync.replicas` of the topics the platform creates.
    pub min_insync_replicas: i32,
    /// `retention.ms` of the dead-letter topic when the platform creates
    /// it (`-1`: keep forever).
    pub dead_letter_retention_ms: i64,
    /// Put before every topic name and consumer-group id, so that several
    /// platforms (test runs, environments) share one cluster; empty for none.
    pub topic_prefix: String,
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
    /// Settings for `brokers` with single-node defaults and no prefix.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            partitions: 6,
            replication: 1,
            min_insync_replicas: 1,
            dead_letter_retention_ms: DEFAULT_DEAD_LETTER_RETENTION_MS,
            topic_prefix: String::new(),
            session_timeout: Duration::from_secs(10),
            fetch_wait: Duration::from_millis(DEFAULT_FETCH_WAIT_MS),
        }
    }

    /// The name on the broker of the platform's topic `name` (one of
    /// [`crate::events::topics`]).
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// The id on the broker of the platform's consumer group `id`.
    pub fn group(&self, id: &str) -> String {
        format!("{}{id}", self.topic_prefix)
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
            .set("group.id", self.group(group_id))
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
        let topic = self.topic(crate::events::topics::DEAD_LETTERS);
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
                let (client, topic) = (client.clone(), topic.clone());
                // Metadata and watermark requests block: keep them off the runtime.
                let size = tokio::task::spawn_blocking(move || {
                    use rdkafka::consumer::Consumer;
                    let timeout = Duration::from_secs(5);
                    let metadata = client.fetch_metadata(Some(&topic), timeout).ok()?;
                    let mut size = 0;
                    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                        let (low, high) = client
                            .fetch_watermarks(&topic, partition.id(), timeout)
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

    /// Creates the platform's topics (logical names, see [`Self::topic`])
    /// that do not exist yet, with [`Self::partitions`],
    /// [`Self::replication`] and `min.insync.replicas`, and checks that
    /// those that exist have at least as many partitions and replicas.
    pub async fn ensure_topics(&self, topics: &[&str]) -> Result<(), TopicError> {
        if self.min_insync_replicas < 1 || self.min_insync_replicas > self.replication {
            return Err(TopicError::Settings(format!(
                "KAFKA_MIN_INSYNC_REPLICAS is {} but must be between 1 and KAFKA_REPLICATION ({})",
                self.min_insync_replicas, self.replication
            )));
        }
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()?;
        let admin = std::sync::Arc::new(admin);
        // Ask first: most starts find every topic there, and some brokers
        // (librdkafka's mock among them) do not implement CreateTopics.
        let metadata = {
            let admin = admin.clone();
            tokio::task::spawn_blocking(move || {
                admin.inner().fetch_metadata(None, Duration::from_secs(10))
            })
            .await
            .map_err(|_| KafkaError::AdminOp(RDKafkaErrorCode::Fail))??
        };
        let missing = self.missing_topics(topics, &metadata)?;
        if missing.is_empty() {
            return self.await_leaders(&admin, topics, Some(metadata)).await;
        }
        let min_insync = self.min_insync_replicas.to_string();
        let dead_letter_retention = self.dead_letter_retention_ms.to_string();
        let dead_letters = self.topic(crate::events::topics::DEAD_LETTERS);
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|name| {
                let topic = NewTopic::new(
                    name,
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                )
                .set("min.insync.replicas", &min_insync);
                if *name == dead_letters {
                    topic.set("retention.ms", &dead_letter_retention)
                } else {
                    topic
                }
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
                Ok(topic) => tracing::info!(
                    %topic,
                    partitions = self.partitions,
                    replication = self.replication,
                    min_insync_replicas = self.min_insync_replicas,
                    "created topic"
                ),
                // Another process of the platform created it meanwhile.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(TopicError::Create { topic, code }),
            }
        }
        self.await_leaders(&admin, topics, None).await
    }

    /// Waits until every partition of `topics` has a leader (starting from
    /// `metadata` if given). Apache Kafka answers CreateTopics before the
    /// new partitions' leaders are known to every broker, and a consumer
    /// that asks for the topic meanwhile is refused (`NotLeaderForPartition`).
    async fn await_leaders(
        &self,
        admin: &std::sync::Arc<AdminClient<DefaultClientContext>>,
        topics: &[&str],
        mut metadata: Option<Metadata>,
    ) -> Result<(), TopicError> {
        let names: Vec<String> = topics.iter().map(|t| self.topic(t)).collect();
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            if let Some(metadata) = &metadata {
                let led = names.iter().all(|name| {
                    metadata.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions()
                                .iter()
                                .all(|p| p.leader() >= 0 && p.error().is_none())
                    })
                });
                if led {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TopicError::NoLeaders(LEADER_WAIT.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let admin = admin.clone();
            metadata = tokio::task::spawn_blocking(move || {
                admin.inner().fetch_metadata(None, Duration::from_secs(10))
            })
            .await
            .ok()
            .and_then(Result::ok);
        }
    }

    /// The names on the broker of those of `topics` (logical names) to
    /// create, given the cluster's `metadata`; an error if an existing one
    /// is smaller than configured or the cluster cannot hold the replicas.
    fn missing_topics(
        &self,
        topics: &[&str],
        metadata: &Metadata,
    ) -> Result<Vec<String>, TopicError> {
        let mut missing = Vec::new();
        for name in topics {
            let name = self.topic(name);
            let Some(existing) = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            else {
                missing.push(name);
                continue;
            };
            let partitions = i32::try_from(existing.partitions().len()).unwrap_or(i32::MAX);
            // The replica list is the assignment, whether or not each
            // replica is in sync right now (a broker may be restarting).
            let replicas = existing
                .partitions()
                .iter()
                .map(|p| i32::try_from(p.replicas().len()).unwrap_or(i32::MAX))
                .min()
                .unwrap_or(0);
            for (what, found, wanted, setting) in [
                (
                    "partitions",
                    partitions,
                    self.partitions,
                    "KAFKA_PARTITIONS",
                ),
                ("replicas", replicas, self.replication, "KAFKA_REPLICATION"),
            ] {
                if found < wanted {
                    return Err(TopicError::TooSmall {
                        topic: name,
                        what,
                        found,
                        wanted,
                        setting,
                    });
                }
            }
        }
        let brokers = metadata.brokers().len();
        if !missing.is_empty() && usize::try_from(self.replication).unwrap_or(0) > brokers {
            return Err(TopicError::TooFewBrokers {
                replication: self.replication,
                brokers,
            });
        }
        Ok(missing)
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
    pub fn start(topics: &[impl AsRef<str>], partitions: i32) -> Result<Self, KafkaError> {
        let topics: Vec<String> = topics.iter().map(|t| t.as_ref().to_owned()).collect();
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

    /// Settings for `cluster` asking for `partitions` × `replication`.
    fn asking(
        cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        partitions: i32,
        replication: i32,
    ) -> KafkaSettings {
        let mut settings = KafkaSettings::new(cluster.bootstrap_servers());
        settings.partitions = partitions;
        settings.replication = replication;
        settings.min_insync_replicas = replication.min(2);
        settings.topic_prefix = "env1.".into();
        settings
    }

    #[tokio::test]
    async fn existing_topics_smaller_than_configured_are_refused_at_start() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("env1.order-events", 2, 1).unwrap();
        let too_few_partitions = asking(&cluster, 6, 1)
            .ensure_topics(&["order-events"])
            .await;
        assert!(
            matches!(
                &too_few_partitions,
                Err(TopicError::TooSmall { topic, what: "partitions", found: 2, wanted: 6, .. })
                    if topic == "env1.order-events"
            ),
            "{too_few_partitions:?}"
        );
        let too_few_replicas = asking(&cluster, 2, 3)
            .ensure_topics(&["order-events"])
            .await;
        assert!(
            matches!(
                &too_few_replicas,
                Err(TopicError::TooSmall {
                    what: "replicas",
                    found: 1,
                    wanted: 3,
                    ..
                })
            ),
            "{too_few_replicas:?}"
        );
        // As many as configured, or more, is fine; so is the same name
        // without this platform's prefix, which is someone else's.
        assert!(asking(&cluster, 1, 1)
            .ensure_topics(&["order-events"])
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_replication_factor_the_cluster_cannot_hold_is_refused_clearly() {
        let cluster = MockCluster::new(1).unwrap();
        let result = asking(&cluster, 2, 3)
            .ensure_topics(&["order-events"])
            .await;
        assert!(
            matches!(
                result,
                Err(TopicError::TooFewBrokers {
                    replication: 3,
                    brokers: 1
                })
            ),
            "{result:?}"
        );
        let mut contradictory = asking(&cluster, 2, 1);
        contradictory.min_insync_replicas = 2;
        assert!(matches!(
            contradictory.ensure_topics(&["order-events"]).await,
            Err(TopicError::Settings(_))
        ));
    }

    #[tokio::test]
    async fn topics_replicated_as_configured_pass_on_a_three_broker_cluster() {
        let cluster = MockCluster::new(3).unwrap();
        for topic in crate::events::topics::ALL {
            cluster
                .create_topic(&format!("env1.{topic}"), 6, 3)
                .unwrap();
        }
        asking(&cluster, 6, 3)
            .ensure_topics(&crate::events::topics::ALL)
            .await
            .unwrap();
    }

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
