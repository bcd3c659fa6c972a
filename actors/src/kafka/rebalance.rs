//! Rebalance notifications: the consumer context every [`EventConsumer`]
//! runs with, which tells a [`RebalanceListener`] when the group gives this
//! process partitions or takes them away. It also turns librdkafka's
//! periodic statistics into the consumer-lag metric.
//!
//! librdkafka calls these hooks from inside the consumer's poll, that is
//! between two of the poll loop's batches, so a listener sees a revocation
//! after the batch in hand was handled and before any message of the next
//! assignment. Hooks must be quick: they run on the poll loop's task.
//!
//! [`EventConsumer`]: super::EventConsumer

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;
use std::sync::Arc;

/// One partition of one topic.
pub type TopicPartition = (String, i32);

/// Told which partitions this process holds. Listeners rely on the
/// consumer using the `range` assignor, which gives one member the same
/// partition numbers of every topic that has the same partition count.
pub trait RebalanceListener: Send + Sync + 'static {
    /// The subscribed topics' partition counts, read before joining the group.
    fn partition_counts(&self, counts: &[TopicPartition]);
    /// The group assigned these partitions to this consumer.
    fn assigned(&self, partitions: &[TopicPartition]);
    /// These partitions are taken away: a rebalance, or the consumer is
    /// stopping. Called before another member can be given them.
    fn revoked(&self, partitions: &[TopicPartition]);
}

/// The context of every consumer; forwards rebalances to the listener, if any.
#[derive(Clone, Default)]
pub struct ShopContext {
    listener: Option<Arc<dyn RebalanceListener>>,
    /// The consumer group, for the lag metric's labels.
    group: Option<String>,
}

impl ShopContext {
    /// A context that tells `listener` about rebalances.
    pub fn new(listener: Option<Arc<dyn RebalanceListener>>) -> Self {
        Self {
            listener,
            group: None,
        }
    }

    /// Reports the lag of consumer group `group` (with `statistics.interval.ms` set).
    pub fn with_group(mut self, group: &str) -> Self {
        self.group = Some(group.to_owned());
        self
    }

    /// The listener, if any.
    pub fn listener(&self) -> Option<&Arc<dyn RebalanceListener>> {
        self.listener.as_ref()
    }
}

impl ClientContext for ShopContext {
    fn stats(&self, statistics: Statistics) {
        let Some(group) = &self.group else { return };
        let lag = &crate::metrics::metrics().consumer_lag;
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                // -1 is librdkafka's internal partition.
                if *partition < 0 {
                    continue;
                }
                let labels = crate::metrics::PartitionLabels {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                };
                if p.consumer_lag < 0 {
                    // Not consumed here (any more): another member reports it.
                    lag.remove(&labels);
                } else {
                    lag.get_or_create(&labels).set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for ShopContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let partitions = elements(list);
                tracing::info!(?partitions, "partitions revoked");
                if let Some(listener) = &self.listener {
                    listener.revoked(&partitions);
                }
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions = elements(list);
            tracing::info!(?partitions, "partitions assigned");
            if let Some(listener) = &self.listener {
                listener.assigned(&partitions);
            }
        }
    }
}

/// The `(topic, partition)` pairs of a list.
pub fn elements(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}
