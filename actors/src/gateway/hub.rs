//! `Hub`: who follows what. Connections subscribe to topics — one order,
//! every order of one customer, (admins) every order, or the catalogue's
//! stock — and each update from Kafka is handed to exactly the connections
//! that follow one of its topics.

use super::connection::ConnectionHandle;
use crate::events::{Envelope, Event, OrderStatus, RejectReason};
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// One status change of an order, as pushed to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// The order.
    pub order_id: Uuid,
    /// Its new status.
    pub status: OrderStatus,
    /// Why, when rejected or compensating.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    /// When the change happened.
    pub at: DateTime<Utc>,
    /// Per-order sequence number (1 = PENDING), for ordering and de-duplication.
    pub seq: i32,
    /// Who placed the order, for routing; not sent to clients.
    #[serde(skip)]
    pub customer_id: Option<String>,
    /// The trace of the event announcing it, for the push's span; not sent.
    #[serde(skip)]
    pub trace: Option<crate::trace::TraceParent>,
}

impl StatusUpdate {
    /// The update an `order-events` envelope announces, if any.
    pub fn from_envelope(envelope: &Envelope) -> Option<Self> {
        let change = envelope.event.status_change()?;
        let customer_id = match &envelope.event {
            Event::OrderCreated(created) => Some(created.customer_id.clone()),
            _ => change.customer_id.clone(),
        };
        Some(Self {
            order_id: envelope.order_id,
            status: change.status,
            reason: change.reason,
            at: envelope.occurred_at,
            seq: change.seq,
            customer_id,
            trace: envelope.trace,
        })
    }
}

/// A product's stock after a reservation or a release, as pushed to
/// clients following `stock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockChange {
    /// The product.
    pub product_id: Uuid,
    /// Units in stock once the change committed.
    pub stock: i32,
    /// When it committed; a client keeps the latest per product, since
    /// changes of one product may come from different partitions.
    pub at: DateTime<Utc>,
}

impl StockChange {
    /// The stock changes an `inventory-events` envelope announces.
    pub fn from_envelope(envelope: &Envelope) -> Vec<Self> {
        let levels = match &envelope.event {
            Event::InventoryReserved(reserved) => &reserved.items,
            Event::InventoryReleased(released) => &released.items,
            _ => return Vec::new(),
        };
        levels
            .iter()
            .map(|level| Self {
                product_id: level.product_id,
                stock: level.stock,
                at: envelope.occurred_at,
            })
            .collect()
    }
}

/// What the hub hands a connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An order's status changed.
    Status(StatusUpdate),
    /// A product's stock changed.
    Stock(StockChange),
}

/// What a connection can follow.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// One order.
    Order(Uuid),
    /// Every order of one customer.
    Customer(String),
    /// Every order (admins only; checked by the connection).
    All,
    /// Every product's stock.
    Stock,
}

/// The hub actor; see the module documentation.
pub struct Hub;

/// State of the [`Hub`].
#[derive(Default)]
pub struct HubState {
    /// Followers of each topic.
    followers: HashMap<Topic, HashMap<ActorId, ConnectionHandle>>,
    /// What each connection follows, to unsubscribe it.
    follows: HashMap<ActorId, HashSet<Topic>>,
}

/// Messages of the [`Hub`].
pub enum HubMsg {
    /// Starts sending `topic`'s updates to `connection`.
    Subscribe {
        /// The connection.
        connection: ConnectionHandle,
        /// What it follows from now on.
        topic: Topic,
    },
    /// Stops sending `topic`'s updates to the connection.
    Unsubscribe {
        /// The connection actor's id.
        connection: ActorId,
        /// What it no longer follows.
        topic: Topic,
    },
    /// Stops sending anything to the connection (it closed).
    Disconnect {
        /// The connection actor's id.
        connection: ActorId,
    },
    /// Hands an update to everyone following its order, its customer, or all.
    Publish(StatusUpdate),
    /// Hands a stock change to everyone following `stock`.
    PublishStock(StockChange),
    /// How many connections follow something.
    Count {
        /// The number of distinct connections.
        reply: RpcReplyPort<usize>,
    },
}

impl Actor for Hub {
    type Msg = HubMsg;
    type State = HubState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(HubState::default())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HubMsg::Subscribe { connection, topic } => {
                let id = connection.id();
                state.follows.entry(id).or_default().insert(topic.clone());
                state
                    .followers
                    .entry(topic)
                    .or_default()
                    .insert(id, connection);
            }
            HubMsg::Unsubscribe { connection, topic } => {
                if let Some(topics) = state.follows.get_mut(&connection) {
                    topics.remove(&topic);
                    if topics.is_empty() {
                        state.follows.remove(&connection);
                    }
                }
                remove_follower(state, &topic, connection);
            }
            HubMsg::Disconnect { connection } => disconnect(state, connection),
            HubMsg::Publish(update) => {
                let mut topics = vec![Topic::Order(update.order_id), Topic::All];
                if let Some(customer) = &update.customer_id {
                    topics.push(Topic::Customer(customer.clone()));
                }
                // A connection following two of these topics gets the update
                // once.
                let mut sent = HashSet::new();
                let mut gone = Vec::new();
                for topic in &topics {
                    for (id, connection) in state.followers.get(topic).into_iter().flatten() {
                        if sent.insert(*id) && !connection.push(Outbound::Status(update.clone())) {
                            gone.push(*id);
                        }
                    }
                }
                for id in gone {
                    disconnect(state, id);
                }
            }
            HubMsg::PublishStock(change) => {
                let mut gone = Vec::new();
                for (id, connection) in state.followers.get(&Topic::Stock).into_iter().flatten() {
                    if !connection.push(Outbound::Stock(change.clone())) {
                        gone.push(*id);
                    }
                }
                for id in gone {
                    disconnect(state, id);
                }
            }
            HubMsg::Count { reply } => {
                let _ = reply.send(state.follows.len());
            }
        }
        Ok(())
    }
}

fn remove_follower(state: &mut HubState, topic: &Topic, connection: ActorId) {
    if let Some(followers) = state.followers.get_mut(topic) {
        followers.remove(&connection);
        if followers.is_empty() {
            state.followers.remove(topic);
        }
    }
}

fn disconnect(state: &mut HubState, connection: ActorId) {
    for topic in state.follows.remove(&connection).unwrap_or_default() {
        remove_follower(state, &topic, connection);
    }
}
