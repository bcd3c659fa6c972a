//! Looking at (and resetting) the broker from the outside: whether it
//! answers, the topics' high watermarks, each consumer group's committed
//! offsets, and rewinding a group to offset 0.
//!
//! librdkafka's calls block, so every public function here runs them on the
//! blocking pool.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use shop_actors::events::topics;
use std::collections::BTreeMap;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// The consumer groups and the topics each one reads.
pub const GROUPS: [(&str, &[&str]); 3] = [
    ("product", &[topics::INVENTORY_COMMANDS]),
    ("order", &[topics::INVENTORY_EVENTS, topics::PAYMENT_EVENTS]),
    ("payment", &[topics::PAYMENT_COMMANDS]),
];

/// `(topic, partition)`.
pub type Partition = (String, i32);

/// A consumer in `group`, configured as the services' members of that group
/// are (assignor and session timeout): librdkafka's mock broker expects
/// every member of a group to agree, and applies the session timeout of
/// whichever member joined last to all of them.
fn client(brokers: &str, group: &str) -> Result<BaseConsumer, String> {
    let assignor = if group == "order" {
        "range"
    } else {
        "cooperative-sticky"
    };
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", crate::SESSION_TIMEOUT_MS.to_string())
        .set("partition.assignment.strategy", assignor)
        .create()
        .map_err(|e| format!("kafka client: {e}"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("kafka task panicked")
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    Ok(metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// The high watermark of every partition of every platform topic.
pub async fn high_watermarks(brokers: &str) -> Result<BTreeMap<Partition, i64>, String> {
    let brokers = brokers.to_owned();
    blocking(move || {
        let consumer = client(&brokers, "faults-probe")?;
        let mut highs = BTreeMap::new();
        for topic in topics::ALL {
            for partition in partitions_of(&consumer, topic)? {
                let (_, high) = consumer
                    .fetch_watermarks(topic, partition, TIMEOUT)
                    .map_err(|e| format!("watermarks of {topic}/{partition}: {e}"))?;
                highs.insert((topic.to_owned(), partition), high);
            }
        }
        Ok(highs)
    })
    .await
}

fn committed_blocking(
    consumer: &BaseConsumer,
    topics: &[&str],
) -> Result<BTreeMap<Partition, Option<i64>>, String> {
    let mut wanted = TopicPartitionList::new();
    for topic in topics {
        for partition in partitions_of(consumer, topic)? {
            wanted.add_partition(topic, partition);
        }
    }
    let committed = consumer
        .committed_offsets(wanted, TIMEOUT)
        .map_err(|e| format!("committed offsets: {e}"))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            ((e.topic().to_owned(), e.partition()), offset)
        })
        .collect())
}

/// Messages not yet committed by each group, summed over its partitions.
pub async fn lag(brokers: &str) -> Result<BTreeMap<&'static str, i64>, String> {
    let highs = high_watermarks(brokers).await?;
    let brokers = brokers.to_owned();
    blocking(move || {
        let mut lag = BTreeMap::new();
        for (group, topics) in GROUPS {
            let consumer = client(&brokers, group)?;
            let committed = committed_blocking(&consumer, topics)?;
            let behind = committed
                .iter()
                .map(|(partition, offset)| {
                    let high = highs.get(partition).copied().unwrap_or(0);
                    (high - offset.unwrap_or(0)).max(0)
                })
                .sum();
            lag.insert(group, behind);
        }
        Ok(lag)
    })
    .await
}

/// How a group was rewound.
#[derive(Debug)]
pub struct Reset {
    /// The group.
    pub group: &'static str,
    /// `standalone commit` or `joined the group`.
    pub how: &'static str,
    /// Committed offsets read back afterwards.
    pub committed: BTreeMap<Partition, Option<i64>>,
}

impl Reset {
    /// True if every partition's committed offset is 0.
    pub fn took_effect(&self) -> bool {
        self.committed.values().all(|offset| *offset == Some(0))
    }
}

/// Commits offset 0 for every partition of `group`'s topics. Every member of
/// the group must have stopped. A standalone commit (generation -1) is
/// tried first: a real Kafka accepts it for an empty group. librdkafka's
/// mock broker refuses it for any group it has seen (UNKNOWN_MEMBER_ID /
/// ILLEGAL_GENERATION), so if the read-back shows no effect, the suite joins
/// the group itself, takes every partition, commits 0 as a member, and
/// leaves without consuming.
pub async fn reset_group_to_zero(brokers: &str, group: &'static str) -> Result<Reset, String> {
    let topics = GROUPS
        .iter()
        .find(|(g, _)| *g == group)
        .map(|(_, t)| *t)
        .ok_or_else(|| format!("unknown group {group}"))?;
    let brokers = brokers.to_owned();
    blocking(move || {
        let zeros = |consumer: &BaseConsumer| -> Result<TopicPartitionList, String> {
            let mut list = TopicPartitionList::new();
            for topic in topics {
                for partition in partitions_of(consumer, topic)? {
                    list.add_partition_offset(topic, partition, Offset::Offset(0))
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok(list)
        };
        let standalone = client(&brokers, group)?;
        let list = zeros(&standalone)?;
        // Refused by the mock broker: the read-back below tells.
        let _ = standalone.commit(&list, CommitMode::Sync);
        let committed = committed_blocking(&standalone, topics)?;
        let first = Reset {
            group,
            how: "standalone commit",
            committed,
        };
        if first.took_effect() {
            return Ok(first);
        }
        drop(standalone);

        let member = client(&brokers, group)?;
        member
            .subscribe(topics)
            .map_err(|e| format!("subscribe {group}: {e}"))?;
        let wanted = list.count();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut last_error = None;
        loop {
            // Messages that arrive are dropped: nothing is stored or committed.
            if let Some(Err(error)) = member.poll(Duration::from_millis(100)) {
                last_error = Some(error.to_string());
            }
            let assigned = member.assignment().map(|a| a.count()).unwrap_or(0);
            if assigned == wanted {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "{group}: joined but got {assigned} of {wanted} partitions in 30 s \
                     (is a member still alive?); last error: {last_error:?}"
                ));
            }
        }
        member
            .commit(&list, CommitMode::Sync)
            .map_err(|e| format!("{group}: commit offset 0 as a member: {e}"))?;
        let committed = committed_blocking(&member, topics)?;
        member.unsubscribe();
        Ok(Reset {
            group,
            how: "joined the group",
            committed,
        })
    })
    .await
}

/// One message read back from a topic.
#[derive(Debug)]
pub struct Published {
    /// Where it is.
    pub topic: String,
    /// Its key: the order id.
    pub order_id: String,
    /// The envelope's `event_type`.
    pub event_type: String,
}

/// The messages between `from` (inclusive) and `to` (exclusive) offsets.
pub async fn messages_between(
    brokers: &str,
    from: &BTreeMap<Partition, i64>,
    to: &BTreeMap<Partition, i64>,
) -> Result<Vec<Published>, String> {
    let brokers = brokers.to_owned();
    let mut ranges = Vec::new();
    for (partition, end) in to {
        let start = from.get(partition).copied().unwrap_or(0);
        if *end > start {
            ranges.push((partition.clone(), start, *end));
        }
    }
    blocking(move || {
        use rdkafka::message::Message;
        let consumer = client(&brokers, "faults-reader")?;
        let mut assignment = TopicPartitionList::new();
        let mut remaining = 0;
        for ((topic, partition), start, end) in &ranges {
            assignment
                .add_partition_offset(topic, *partition, Offset::Offset(*start))
                .map_err(|e| e.to_string())?;
            remaining += end - start;
        }
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        let mut found = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while remaining > 0 && std::time::Instant::now() < deadline {
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let in_range = ranges.iter().any(|((t, p), start, end)| {
                t == message.topic()
                    && *p == message.partition()
                    && (*start..*end).contains(&message.offset())
            });
            if !in_range {
                continue;
            }
            remaining -= 1;
            let envelope: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap_or_default()).unwrap_or_default();
            found.push(Published {
                topic: message.topic().to_owned(),
                order_id: envelope["order_id"].as_str().unwrap_or("?").to_owned(),
                event_type: envelope["event_type"].as_str().unwrap_or("?").to_owned(),
            });
        }
        Ok(found)
    })
    .await
}
