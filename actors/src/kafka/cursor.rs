//! Where a broadcast reader resumes. A [`Subscription::Broadcast`] reader has
//! no consumer group, so nothing in Kafka remembers how far it got; a
//! [`BroadcastCursor`] does, for readers whose work must be continuous across
//! restarts (the gateway's order history in Redis). Without one, a broadcast
//! reader starts at the end.
//!
//! [`Subscription::Broadcast`]: super::Subscription::Broadcast

use futures::future::BoxFuture;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::collections::HashMap;
use std::time::Duration;

/// One partition's readable offsets when the reader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Its oldest offset still kept (retention deletes older ones).
    pub low: i64,
    /// The offset the next message will get: its end.
    pub high: i64,
}

/// How far a broadcast reader got: the offset of the next message to read,
/// for each (topic, partition).
pub type Positions = HashMap<(String, i32), i64>;

/// Remembers how far a broadcast reader got, and tells it where to resume.
pub trait BroadcastCursor: Send + Sync + std::fmt::Debug + 'static {
    /// Where to start each partition. A partition left out, or given an
    /// offset outside `low..=high`, starts at its end.
    fn start<'a>(&'a self, partitions: &'a [PartitionRange]) -> BoxFuture<'a, Positions>;

    /// Every message before these offsets has been handled.
    fn advanced<'a>(&'a self, handled: &'a Positions) -> BoxFuture<'a, ()>;
}

/// Every partition of `topics` with its watermarks. Blocks: call it off the
/// runtime's workers.
pub(crate) fn partition_ranges<C: rdkafka::consumer::ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topics: &[String],
) -> rdkafka::error::KafkaResult<Vec<PartitionRange>> {
    let timeout = Duration::from_secs(10);
    let mut ranges = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
            ranges.push(PartitionRange {
                topic: topic.clone(),
                partition: partition.id(),
                low,
                high,
            });
        }
    }
    Ok(ranges)
}

/// The assignment: each partition at the cursor's offset if it lies within
/// the partition's range, else at its end.
pub(crate) fn starting_offsets(ranges: &[PartitionRange], chosen: &Positions) -> Positions {
    ranges
        .iter()
        .map(|range| {
            let key = (range.topic.clone(), range.partition);
            let offset = chosen
                .get(&key)
                .copied()
                .filter(|offset| (range.low..=range.high).contains(offset))
                .unwrap_or(range.high);
            (key, offset)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(partition: i32, low: i64, high: i64) -> PartitionRange {
        PartitionRange {
            topic: "t".into(),
            partition,
            low,
            high,
        }
    }

    #[test]
    fn a_valid_offset_is_kept_and_anything_else_starts_at_the_end() {
        let ranges = [range(0, 0, 10), range(1, 5, 10), range(2, 0, 10)];
        let chosen = Positions::from([
            (("t".into(), 0), 3), // within: resume there
            (("t".into(), 1), 2), // deleted by retention: the end
            (("t".into(), 9), 1), // no such partition: ignored
        ]);
        let start = starting_offsets(&ranges, &chosen);
        assert_eq!(start[&("t".to_owned(), 0)], 3);
        assert_eq!(start[&("t".to_owned(), 1)], 10);
        assert_eq!(start[&("t".to_owned(), 2)], 10); // not chosen
        assert_eq!(start.len(), 3);
    }
}
