//! The gateway: pushes every order status change to WebSocket clients.
//!
//! ```text
//! ServiceSupervisor("gateway")
//! ├── Hub                    who follows which order (essential)
//! ├── ConnectionSupervisor   one WsConnection per client (essential)
//! │   └── WsConnection ...
//! ├── EventConsumer          order-events -> OrderUpdates (restartable)
//! └── EventConsumer          inventory-events -> StockUpdates (restartable)
//! ```
//!
//! Each gateway process reads every partition of `order-events` (no
//! consumer group), so every replica sees every update and a client may
//! connect to any. Each update is written to the order history in Redis
//! ([`history`]) before it is pushed; a reader resumes where the history
//! says, so a restart misses nothing. What a client missed while it was
//! away comes from that history when it subscribes, or from the order
//! service when Redis cannot prove it has all of it.

pub mod connection;
pub mod connections;
pub mod history;
pub mod hub;
pub mod orders;
pub mod protocol;
pub mod reader;
pub mod requests;
pub mod session;
pub mod slots;

use crate::events::{topics, Envelope};
use crate::kafka::Subscription;
use crate::kafka::{EventHandler, HandlerError};
use crate::rpc::{ask, RpcError, DEFAULT_TIMEOUT};
use crate::service::{self, Infra, RunningService};
use crate::supervisor::{self as sup, ChildKind};
use crate::StartError;
use connection::WebSocket;
use connections::{ConnectionSupervisor, ConnectionsArgs, ConnectionsMsg};
use history::History;
use hub::{Hub, HubMsg, StatusUpdate, StockChange};
use ractor::{Actor, ActorRef};
use slots::{SubjectSlot, SubjectSlots};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

pub use connection::ConnectionPolicy;
pub use protocol::{ClientMessage, Scope, ServerMessage};
pub use session::{Session, SharedVerifier, TokenVerifier, CLOSE_TOKEN_EXPIRED};

/// How the gateway is set up.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The order service's base URL, for snapshots.
    pub order_url: String,
    /// Heartbeats and limits of every connection.
    pub policy: ConnectionPolicy,
}

/// Hands `order-events` to the hub, after writing them to the history.
pub struct OrderUpdates {
    /// The hub.
    pub hub: ActorRef<HubMsg>,
    /// The order history in Redis.
    pub history: History,
}

impl EventHandler for OrderUpdates {
    async fn handle(&self, batch: Vec<Envelope>) -> Result<(), HandlerError> {
        let updates: Vec<StatusUpdate> = batch
            .iter()
            .filter_map(StatusUpdate::from_envelope)
            .collect();
        // First the history, then the push: a client that subscribes after
        // the push finds the update in Redis (or is sent to the order
        // service, if writing it failed).
        self.history.record(&updates).await;
        for update in updates {
            self.hub
                .send_message(HubMsg::Publish(update))
                .map_err(|_| HandlerError::Transient("hub is not running".into()))?;
        }
        Ok(())
    }
}

/// Hands the stock levels of `inventory-events` to the hub. Stock is read
/// from the end when the gateway starts: a client wants the stock from now
/// on, having read the catalogue itself.
pub struct StockUpdates {
    /// The hub.
    pub hub: ActorRef<HubMsg>,
}

impl EventHandler for StockUpdates {
    async fn handle(&self, batch: Vec<Envelope>) -> Result<(), HandlerError> {
        for change in batch.iter().flat_map(StockChange::from_envelope) {
            self.hub
                .send_message(HubMsg::PublishStock(change))
                .map_err(|_| HandlerError::Transient("hub is not running".into()))?;
        }
        Ok(())
    }
}

/// What the HTTP routes use; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    hub: ActorRef<HubMsg>,
    connections: ActorRef<ConnectionsMsg>,
    slots: Arc<SubjectSlots>,
}

/// A connection the HTTP layer admitted: what its actor starts with.
pub struct Admission {
    /// Who connected, with which token, until when.
    pub session: Session,
    /// Its place in its subject's count ([`Gateway::reserve`]).
    pub slot: SubjectSlot,
    /// A subscription asked for when connecting.
    pub initial: Option<ClientMessage>,
    /// Checks the tokens of `refresh` requests.
    pub verifier: SharedVerifier,
}

/// Largest frame or message a client may send (requests are tiny).
pub const MAX_FRAME: usize = 4 * 1024;
/// Bytes read from a client socket at a time. tungstenite reserves this
/// much per connection up front (128 KiB by default, most of an idle
/// connection's memory); client requests are a few hundred bytes, and a
/// larger frame still arrives, only in more reads.
const READ_BUFFER: usize = 1024;
/// Most bytes tungstenite may hold for a client that does not read. Pushes
/// wait for the socket anyway (each send is flushed); what builds up is
/// the pongs tungstenite writes by itself for each ping it reads, which
/// without a cap grow without limit when the client never reads. Past the
/// cap the latest pong replaces the one waiting (RFC 6455 allows answering
/// only the last ping).
pub const MAX_WRITE_BUFFER: usize = 16 * 1024;

/// tungstenite's settings for a client socket: small buffers, capped ones.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Write each push as it comes: they are small, and latency counts.
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
}

impl Gateway {
    /// Finishes a WebSocket upgrade the HTTP layer accepted (it answered
    /// `101 Switching Protocols`): once the connection is handed over, it
    /// gets its connection actor. Runs in its own task, so the response is
    /// sent first.
    pub fn upgrade(&self, on_upgrade: warp::hyper::upgrade::OnUpgrade, admission: Admission) {
        let gateway = self.clone();
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::debug!(%error, "websocket upgrade failed");
                    return;
                }
            };
            let io: Box<dyn connection::Io> = Box::new(hyper_util::rt::TokioIo::new(upgraded));
            let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                io,
                Role::Server,
                Some(socket_config()),
            )
            .await;
            gateway.open(socket, admission);
        });
    }

    /// A slot for one more connection of `subject`, or `None` when it has
    /// as many open as the policy allows ([`Gateway::per_subject`]).
    pub fn reserve(&self, subject: &str) -> Option<SubjectSlot> {
        self.slots.reserve(subject)
    }

    /// Connections one subject may have open at once.
    pub fn per_subject(&self) -> usize {
        self.slots.limit()
    }

    /// Gives an upgraded socket its connection actor.
    fn open(&self, socket: WebSocket, admission: Admission) {
        if self
            .connections
            .send_message(ConnectionsMsg::Open {
                socket: Box::new(socket),
                admission: Box::new(admission),
            })
            .is_err()
        {
            tracing::warn!("gateway is stopping; websocket dropped");
        }
    }

    /// Closes every connection with 1001 (going away) and waits, at most
    /// `grace`, until they are gone: the first step of a shutdown, before
    /// the HTTP server stops.
    pub async fn close_all(&self, grace: std::time::Duration) {
        if self
            .connections
            .send_message(ConnectionsMsg::CloseAll)
            .is_err()
        {
            return;
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            match self.connections().await {
                Ok(0) | Err(_) => return,
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    /// Open WebSocket connections.
    pub async fn connections(&self) -> Result<usize, RpcError> {
        ask(
            &self.connections,
            "connection supervisor",
            DEFAULT_TIMEOUT,
            |reply| ConnectionsMsg::Count { reply },
        )
        .await
    }

    /// Subscribed connections, as the hub sees them.
    pub async fn subscribers(&self) -> Result<usize, RpcError> {
        ask(&self.hub, "hub", DEFAULT_TIMEOUT, |reply| HubMsg::Count {
            reply,
        })
        .await
    }
}

/// The running gateway.
pub struct GatewayService {
    /// Its supervisor.
    pub service: RunningService,
    /// What the HTTP routes use.
    pub gateway: Gateway,
}

/// Starts the gateway's actor tree.
pub async fn start(infra: &Infra, config: &GatewayConfig) -> Result<GatewayService, StartError> {
    let service = RunningService::start("gateway").await?;
    let supervisor = &service.supervisor;
    let history = History::new(infra.redis.clone(), &infra.redis_prefix);
    let (hub, _) = Actor::spawn_linked(None, Hub, (), supervisor.get_cell()).await?;
    sup::adopt(supervisor, hub.get_cell(), "hub", ChildKind::Essential).await?;
    let (connections, _) = Actor::spawn_linked(
        None,
        ConnectionSupervisor,
        ConnectionsArgs {
            hub: hub.clone(),
            lookup: orders::OrderLookup::new(&config.order_url, history.clone()),
            policy: config.policy,
        },
        supervisor.get_cell(),
    )
    .await?;
    sup::adopt(
        supervisor,
        connections.get_cell(),
        "connection-supervisor",
        ChildKind::Essential,
    )
    .await?;
    service::start_consumer(
        supervisor,
        infra,
        Subscription::Broadcast {
            cursor: Some(Arc::new(history.clone())),
        },
        vec![topics::ORDER_EVENTS],
        Arc::new(OrderUpdates {
            hub: hub.clone(),
            history,
        }),
        None,
    )
    .await?;
    service::start_consumer(
        supervisor,
        infra,
        Subscription::Broadcast { cursor: None },
        vec![topics::INVENTORY_EVENTS],
        Arc::new(StockUpdates { hub: hub.clone() }),
        None,
    )
    .await?;
    Ok(GatewayService {
        service,
        gateway: Gateway {
            hub,
            connections,
            slots: SubjectSlots::new(config.policy.per_subject),
        },
    })
}
