//! `Hub`: who follows what. Connections subscribe to one order or to every
//! order; each order status update from Kafka is handed to exactly the
//! connections that follow it.

use super::connection::ConnectionMsg;
use crate::events::{Envelope, OrderStatus, RejectReason};
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// What a WebSocket client receives for each status change.
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
    /// The trace of the event announcing it, for the push's span; not sent.
    #[serde(skip)]
    pub trace: Option<crate::trace::TraceParent>,
}

impl StatusUpdate {
    /// The update an `order-events` envelope announces, if any.
    pub fn from_envelope(envelope: &Envelope) -> Option<Self> {
        let change = envelope.event.status_change()?;
        Some(Self {
            order_id: envelope.order_id,
            status: change.status,
            reason: change.reason,
            at: envelope.occurred_at,
            seq: change.seq,
            trace: envelope.trace,
        })
    }
}

/// What a connection follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Every order.
    All,
    /// One order.
    Order(Uuid),
}

/// The hub actor; see the module documentation.
pub struct Hub;

/// State of the [`Hub`].
#[derive(Default)]
pub struct HubState {
    /// Connections following every order.
    all: HashMap<ActorId, ActorRef<ConnectionMsg>>,
    /// Connections following one order, by order.
    by_order: HashMap<Uuid, HashMap<ActorId, ActorRef<ConnectionMsg>>>,
    /// What each connection follows, to unsubscribe it.
    follows: HashMap<ActorId, HashSet<Uuid>>,
}

/// Messages of the [`Hub`].
pub enum HubMsg {
    /// Starts sending `follow`'s updates to `connection`.
    Subscribe {
        /// The connection actor.
        connection: ActorRef<ConnectionMsg>,
        /// What it follows.
        follow: Follow,
    },
    /// Stops sending anything to the connection (it closed).
    Unsubscribe {
        /// The connection actor's id.
        connection: ActorId,
    },
    /// Hands an update to everyone following its order.
    Publish(StatusUpdate),
    /// How many connections are subscribed.
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
            HubMsg::Subscribe { connection, follow } => {
                let id = connection.get_id();
                match follow {
                    Follow::All => {
                        state.all.insert(id, connection);
                    }
                    Follow::Order(order_id) => {
                        state
                            .by_order
                            .entry(order_id)
                            .or_default()
                            .insert(id, connection);
                        state.follows.entry(id).or_default().insert(order_id);
                    }
                }
            }
            HubMsg::Unsubscribe { connection } => unsubscribe(state, connection),
            HubMsg::Publish(update) => {
                let mut gone = Vec::new();
                let followers = state
                    .by_order
                    .get(&update.order_id)
                    .into_iter()
                    .flat_map(|m| m.values())
                    .chain(state.all.values());
                for connection in followers {
                    if connection
                        .send_message(ConnectionMsg::Push(update.clone()))
                        .is_err()
                    {
                        gone.push(connection.get_id());
                    }
                }
                for id in gone {
                    unsubscribe(state, id);
                }
            }
            HubMsg::Count { reply } => {
                let _ = reply.send(state.all.len() + state.follows.len());
            }
        }
        Ok(())
    }
}

fn unsubscribe(state: &mut HubState, connection: ActorId) {
    state.all.remove(&connection);
    for order_id in state.follows.remove(&connection).unwrap_or_default() {
        if let Some(followers) = state.by_order.get_mut(&order_id) {
            followers.remove(&connection);
            if followers.is_empty() {
                state.by_order.remove(&order_id);
            }
        }
    }
}
