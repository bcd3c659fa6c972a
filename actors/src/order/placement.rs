//! Saga placement: which orders' sagas this process runs.
//!
//! An order's replies are keyed by its id, so they all land on one
//! partition of `inventory-events` and the same-numbered partition of
//! `payment-events`; the `order` consumer group (range assignor) gives both
//! to one process. That process owns the order: it runs the order's saga
//! actor and watches its deadline. When a rebalance takes the partition
//! away, the saga stops here and is resumed from Postgres by the new owner,
//! so at any moment one process — at most — drives an order.
//!
//! Ownership is computed, not looked up: librdkafka's `consistent_random`
//! partitioner (which [`KafkaSettings::producer`] names explicitly) sends a
//! key to `CRC32(key) % partitions`.
//!
//! [`KafkaSettings::producer`]: crate::kafka::KafkaSettings::producer

use super::sagas::SagasMsg;
use crate::kafka::{RebalanceListener, TopicPartition};
use ractor::ActorRef;
use std::collections::BTreeSet;
use std::sync::{OnceLock, RwLock};
use uuid::Uuid;

/// The partition a key is produced to, as librdkafka's `consistent` and
/// `consistent_random` partitioners compute it.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    let partitions = u32::try_from(partitions.max(1)).unwrap_or(1);
    // Below `partitions`, which fits in an i32.
    (crc32fast::hash(key) % partitions) as i32
}

/// The partition an order's replies land on.
pub fn partition_of(order_id: Uuid, partitions: i32) -> i32 {
    partition_for_key(order_id.to_string().as_bytes(), partitions)
}

/// What this process owns; shared by the consumer (which updates it from
/// inside librdkafka's rebalance callbacks) and the saga supervisor.
pub struct Placement {
    /// The topic whose assignment decides ownership (its name on the broker).
    topic: String,
    owned: RwLock<Owned>,
    /// Told when ownership changes; set once the supervisor exists.
    sagas: OnceLock<ActorRef<SagasMsg>>,
}

#[derive(Default)]
struct Owned {
    /// The topic's partition count; 0 until the consumer has read it.
    partitions: i32,
    /// The topic's partitions assigned to this process.
    assigned: BTreeSet<i32>,
}

/// What [`Placement::snapshot`] returns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ownership {
    /// The topic whose assignment decides ownership (its name on the broker).
    pub topic: String,
    /// Its partition count (0: not known yet).
    pub partitions: i32,
    /// The partitions this process owns.
    pub owned: Vec<i32>,
}

impl Placement {
    /// Ownership decided by the assignment of `topic`; nothing is owned
    /// until the group assigns partitions.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            owned: RwLock::new(Owned::default()),
            sagas: OnceLock::new(),
        }
    }

    /// Sends ownership changes to `sagas` from now on.
    pub fn notify(&self, sagas: ActorRef<SagasMsg>) {
        let _ = self.sagas.set(sagas);
    }

    /// Whether this process should run the saga of `order_id`.
    pub fn owns(&self, order_id: Uuid) -> bool {
        let owned = self.read();
        owned.partitions > 0
            && owned
                .assigned
                .contains(&partition_of(order_id, owned.partitions))
    }

    /// The current ownership, for operators.
    pub fn snapshot(&self) -> Ownership {
        let owned = self.read();
        Ownership {
            topic: self.topic.clone(),
            partitions: owned.partitions,
            owned: owned.assigned.iter().copied().collect(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Owned> {
        // The data stays consistent whatever panicked while holding the lock.
        self.owned.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Owned> {
        self.owned.write().unwrap_or_else(|e| e.into_inner())
    }

    /// This topic's partition numbers among `partitions`.
    fn mine(&self, partitions: &[TopicPartition]) -> Vec<i32> {
        partitions
            .iter()
            .filter(|(topic, _)| *topic == self.topic)
            .map(|(_, partition)| *partition)
            .collect()
    }

    fn tell(&self, message: SagasMsg) {
        if let Some(sagas) = self.sagas.get() {
            let _ = sagas.send_message(message);
        }
    }
}

impl RebalanceListener for Placement {
    fn partition_counts(&self, counts: &[TopicPartition]) {
        if let Some((_, count)) = counts.iter().find(|(topic, _)| *topic == self.topic) {
            self.write().partitions = *count;
        }
    }

    fn assigned(&self, partitions: &[TopicPartition]) {
        let mine = self.mine(partitions);
        if mine.is_empty() {
            return;
        }
        self.write().assigned.extend(&mine);
        // The sagas of these partitions are in Postgres; pick them up.
        self.tell(SagasMsg::Acquired);
    }

    fn revoked(&self, partitions: &[TopicPartition]) {
        let mine = self.mine(partitions);
        if mine.is_empty() {
            return;
        }
        {
            let mut owned = self.write();
            for partition in &mine {
                owned.assigned.remove(partition);
            }
        }
        // From here on `owns` is false for their orders: a saga timer that
        // fires before the supervisor stops the saga does nothing.
        self.tell(SagasMsg::Released);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::FutureRecord;
    use std::time::Duration;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        (topic.to_owned(), partition)
    }

    #[test]
    fn nothing_is_owned_before_partitions_are_counted_and_assigned() {
        let placement = Placement::new("replies");
        let order = Uuid::now_v7();
        assert!(!placement.owns(order));
        placement.assigned(&[tp("replies", 0), tp("replies", 1)]);
        assert!(!placement.owns(order), "count unknown");
        placement.partition_counts(&[tp("replies", 2)]);
        assert!(placement.owns(order), "both partitions are ours");
    }

    #[test]
    fn ownership_follows_assignment_and_revocation_of_its_own_topic() {
        let placement = Placement::new("replies");
        placement.partition_counts(&[tp("other", 1), tp("replies", 4)]);
        placement.assigned(&[tp("replies", 1), tp("other", 0)]);
        let orders: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();
        for order in &orders {
            assert_eq!(placement.owns(*order), partition_of(*order, 4) == 1);
        }
        placement.revoked(&[tp("other", 0)]);
        assert_eq!(
            placement.snapshot().owned,
            vec![1],
            "other topics do not count"
        );
        placement.revoked(&[tp("replies", 1)]);
        assert!(orders.iter().all(|order| !placement.owns(*order)));
    }

    /// The computed partition is the one librdkafka's producer really uses.
    #[tokio::test]
    async fn computed_partition_matches_the_producer() {
        let cluster = MockCluster::new(1).unwrap();
        let partitions = 6;
        cluster.create_topic("replies", partitions, 1).unwrap();
        let settings = crate::kafka::KafkaSettings::new(cluster.bootstrap_servers());
        let producer = settings.producer().unwrap();
        let mut seen = BTreeSet::new();
        for _ in 0..60 {
            let order = Uuid::now_v7();
            let key = order.to_string();
            let delivery = producer
                .send(
                    FutureRecord::<String, str>::to("replies")
                        .key(&key)
                        .payload("{}"),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            assert_eq!(
                delivery.partition,
                partition_of(order, partitions),
                "order {order}"
            );
            seen.insert(delivery.partition);
        }
        assert!(seen.len() > 1, "keys spread over partitions: {seen:?}");
        // And a consumer reading a partition finds exactly its keys there.
        let consumer: BaseConsumer = settings
            .consumer_config("placement-test", false)
            .create()
            .unwrap();
        let mut assignment = rdkafka::TopicPartitionList::new();
        assignment
            .add_partition_offset("replies", 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let mut read = 0;
        while let Some(message) = consumer.poll(Duration::from_secs(2)) {
            let message = message.unwrap();
            let order: Uuid = std::str::from_utf8(message.key().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(partition_of(order, partitions), 0);
            read += 1;
        }
        assert!(read > 0, "partition 0 had messages");
    }
}
