//! `WsConnection`: one actor per WebSocket client. It owns the socket's
//! sending half; a small task reads the receiving half and hands the
//! actor the client's requests, which [`requests`] answers: subscriptions
//! with a snapshot or a catch-up, then live updates in order, each at most
//! once (by sequence number), in the protocol of [`protocol`].
//!
//! It also keeps the connection healthy and bounded: it pings, and closes a
//! client silent past the idle timeout; pushes wait in a bounded queue, and
//! a client that lets it overflow is closed with 1008 (policy violation)
//! without touching anyone else; a server shutdown closes with 1001.
//!
//! [`protocol`]: super::protocol
//! [`requests`]: super::requests

use super::hub::{HubMsg, Outbound, StatusUpdate};
use super::orders::{Known, LookupError, OrderLookup};
use super::protocol::{ClientMessage, ServerMessage};
use crate::auth::Principal;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// An upgraded client socket.
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<warp::hyper::upgrade::Upgraded>>;

/// Orders one connection may follow at once.
pub const MAX_SUBSCRIPTIONS: usize = 1_000;
/// Orders remembered for de-duplication of scope (`mine`, `all`) updates
/// before the oldest are forgotten.
pub(super) const MAX_REMEMBERED: usize = 10_000;
/// Longest wait for one frame to be written before the client counts as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Close codes (RFC 6455).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
/// How long a closed connection waits for the client's side of the closing
/// handshake before dropping the socket. Dropping it at once would let the
/// client's next write (a pong, its own close) be answered with a reset,
/// which on most systems discards the close frame still unread at the client.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// How connections behave; the same for all.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionPolicy {
    /// How often the server pings.
    pub ping_every: Duration,
    /// How long a client may stay silent (no frame, not even a pong).
    pub idle_timeout: Duration,
    /// Pushes that may wait for a slow client before it is closed.
    pub queue_limit: usize,
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        Self {
            ping_every: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            queue_limit: 256,
        }
    }
}

/// How the hub reaches a connection: its actor, and the counters that keep
/// its queue bounded.
#[derive(Clone)]
pub struct ConnectionHandle {
    pub(super) actor: ActorRef<ConnectionMsg>,
    pub(super) queue: Arc<Queue>,
}

/// Pushes waiting in a connection's mailbox.
pub(super) struct Queue {
    waiting: AtomicUsize,
    limit: usize,
    /// Set once `waiting` went over `limit`; the connection is closing.
    overflowed: AtomicBool,
}

impl ConnectionHandle {
    /// The connection actor's id.
    pub fn id(&self) -> ActorId {
        self.actor.get_id()
    }

    /// Queues `update` for the client; false if the connection is gone.
    /// Past the queue's limit nothing more is queued (memory stays bounded)
    /// and the connection closes itself with 1008.
    pub fn push(&self, update: Outbound) -> bool {
        if self.queue.overflowed.load(Ordering::Acquire) {
            return true;
        }
        if self.queue.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue.limit {
            self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
            self.queue.overflowed.store(true, Ordering::Release);
            return self.actor.send_message(ConnectionMsg::Overflow).is_ok();
        }
        self.actor.send_message(ConnectionMsg::Push(update)).is_ok()
    }
}

/// The connection actor; see the module documentation.
pub struct WsConnection;

/// Start-up arguments of a [`WsConnection`].
pub struct ConnectionArgs {
    /// The upgraded socket.
    pub socket: WebSocket,
    /// Who is connected.
    pub principal: Principal,
    /// Their bearer token, forwarded to the order service for snapshots.
    pub token: String,
    /// A subscription requested when connecting (`/ws?order_id=`).
    pub initial: Option<ClientMessage>,
    /// Where to subscribe.
    pub hub: ActorRef<HubMsg>,
    /// Where snapshots come from.
    pub lookup: OrderLookup,
    /// Heartbeats and limits.
    pub policy: ConnectionPolicy,
}

/// State of a [`WsConnection`].
pub struct ConnectionState {
    pub(super) args: Args,
    pub(super) sink: SplitSink<WebSocket, Message>,
    pub(super) reader: tokio::task::JoinHandle<()>,
    pub(super) ticker: Option<tokio::task::JoinHandle<()>>,
    pub(super) queue: Arc<Queue>,
    /// Milliseconds since `opened` when the client was last heard from.
    pub(super) heard: Arc<AtomicU64>,
    pub(super) opened: Instant,
    /// Highest sequence number sent per order subscribed to by id.
    pub(super) last_seq: HashMap<Uuid, i32>,
    /// The same for orders seen only through a scope subscription.
    pub(super) seen: HashMap<Uuid, i32>,
    /// Orders waiting for their snapshot, with the live updates that
    /// arrived meanwhile.
    pub(super) pending: HashMap<Uuid, Vec<StatusUpdate>>,
    /// Whether the socket is already closed (no close frame to send).
    pub(super) closed: bool,
}

/// What a connection keeps of its start-up arguments.
pub(super) struct Args {
    pub(super) principal: Principal,
    pub(super) token: String,
    pub(super) hub: ActorRef<HubMsg>,
    pub(super) lookup: OrderLookup,
    pub(super) policy: ConnectionPolicy,
}

/// Messages of a [`WsConnection`].
pub enum ConnectionMsg {
    /// An update to send to the client.
    Push(Outbound),
    /// Updates queued past the limit: close with 1008.
    Overflow,
    /// A request from the client.
    Request(ClientMessage),
    /// A frame the client sent that is not a valid request.
    Invalid(String),
    /// The order service answered for a subscription.
    Looked {
        /// The order.
        order_id: Uuid,
        /// Resume after this sequence number instead of a snapshot.
        last_seq: Option<i32>,
        /// The order, if the client may see it.
        result: Result<Option<Known>, LookupError>,
    },
    /// Time to ping, and to check the client is still there.
    Tick,
    /// The client closed the socket or it failed.
    ClientGone,
}

impl Actor for WsConnection {
    type Msg = ConnectionMsg;
    type State = ConnectionState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ConnectionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (sink, mut stream) = args.socket.split();
        let heard = Arc::new(AtomicU64::new(0));
        let opened = Instant::now();
        let (me, seen) = (myself.clone(), heard.clone());
        let reader = tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                seen.store(elapsed_ms(opened), Ordering::Relaxed);
                let text = match frame {
                    Message::Close(_) => break,
                    Message::Text(text) => text,
                    _ => continue, // pings, pongs, binary: proof of life only
                };
                let message = match serde_json::from_str::<ClientMessage>(text.as_str()) {
                    Ok(request) => ConnectionMsg::Request(request),
                    Err(e) => ConnectionMsg::Invalid(e.to_string()),
                };
                // Once the actor has stopped this fails; reading goes on so
                // that the client's closing handshake is seen (see post_stop).
                let _ = me.send_message(message);
            }
            let _ = me.send_message(ConnectionMsg::ClientGone);
        });
        let ticker = myself.send_interval(args.policy.ping_every, || ConnectionMsg::Tick);
        if let Some(initial) = args.initial {
            myself.send_message(ConnectionMsg::Request(initial))?;
        }
        crate::metrics::metrics().websocket_connections.inc();
        Ok(ConnectionState {
            queue: Arc::new(Queue {
                waiting: AtomicUsize::new(0),
                limit: args.policy.queue_limit.max(1),
                overflowed: AtomicBool::new(false),
            }),
            args: Args {
                principal: args.principal,
                token: args.token,
                hub: args.hub,
                lookup: args.lookup,
                policy: args.policy,
            },
            sink,
            reader,
            ticker: Some(ticker),
            heard,
            opened,
            last_seq: HashMap::new(),
            seen: HashMap::new(),
            pending: HashMap::new(),
            closed: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConnectionMsg::Push(outbound) => {
                state.queue.waiting.fetch_sub(1, Ordering::AcqRel);
                if state.queue.overflowed.load(Ordering::Acquire) {
                    // The close is already on its way; skip the backlog.
                    return Ok(());
                }
                let update = match outbound {
                    Outbound::Status(update) => update,
                    Outbound::Stock(change) => {
                        send(&myself, state, &ServerMessage::Stock(change)).await;
                        return Ok(());
                    }
                };
                if let Some(waiting) = state.pending.get_mut(&update.order_id) {
                    waiting.push(update);
                } else {
                    super::requests::deliver(&myself, state, update).await;
                }
            }
            ConnectionMsg::Overflow => {
                tracing::warn!(
                    limit = state.queue.limit,
                    "websocket client too slow; closing it"
                );
                close(
                    &myself,
                    state,
                    CLOSE_POLICY,
                    "too slow: outbound queue full",
                )
                .await;
            }
            ConnectionMsg::Request(request) => {
                super::requests::request_received(&myself, state, request).await
            }
            ConnectionMsg::Invalid(reason) => {
                let message = ServerMessage::error("bad_request", reason, None);
                send(&myself, state, &message).await;
            }
            ConnectionMsg::Looked {
                order_id,
                last_seq,
                result,
            } => super::requests::looked(&myself, state, order_id, last_seq, result).await,
            ConnectionMsg::Tick => {
                let silent =
                    elapsed_ms(state.opened).saturating_sub(state.heard.load(Ordering::Relaxed));
                if Duration::from_millis(silent) > state.args.policy.idle_timeout {
                    close(&myself, state, CLOSE_NORMAL, "idle timeout").await;
                } else if !state.closed {
                    let ping = tokio::time::timeout(
                        SEND_TIMEOUT,
                        state.sink.send(Message::Ping(Default::default())),
                    );
                    if !matches!(ping.await, Ok(Ok(()))) {
                        state.closed = true;
                        myself.stop(Some("client unreachable".into()));
                    }
                }
            }
            ConnectionMsg::ClientGone => {
                state.closed = true;
                myself.stop(Some("client left".into()));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        crate::metrics::metrics().websocket_connections.dec();
        let _ = state.args.hub.send_message(HubMsg::Disconnect {
            connection: myself.get_id(),
        });
        if let Some(ticker) = state.ticker.take() {
            ticker.abort();
        }
        if !state.closed {
            // Stopped by the server (a shutdown), not by the client.
            let frame = close_frame(CLOSE_GOING_AWAY, "server shutting down");
            let _ = tokio::time::timeout(SEND_TIMEOUT, state.sink.send(frame)).await;
        }
        let _ = tokio::time::timeout(SEND_TIMEOUT, state.sink.close()).await;
        // The reader ends when the client answers the close or goes away.
        if tokio::time::timeout(CLOSE_LINGER, &mut state.reader)
            .await
            .is_err()
        {
            state.reader.abort();
        }
        Ok(())
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Writes one message; a client that cannot take it within
/// [`SEND_TIMEOUT`] is gone.
pub(super) async fn send(
    myself: &ActorRef<ConnectionMsg>,
    state: &mut ConnectionState,
    message: &ServerMessage,
) {
    if state.closed {
        return;
    }
    let Ok(json) = serde_json::to_string(message) else {
        return;
    };
    let sent = tokio::time::timeout(SEND_TIMEOUT, state.sink.send(Message::text(json))).await;
    if !matches!(sent, Ok(Ok(()))) {
        state.closed = true;
        myself.stop(Some("client unreachable".into()));
    }
}

/// Closes the socket with `code` and stops.
async fn close(
    myself: &ActorRef<ConnectionMsg>,
    state: &mut ConnectionState,
    code: u16,
    reason: &'static str,
) {
    if !state.closed {
        state.closed = true;
        let frame = close_frame(code, reason);
        let _ = tokio::time::timeout(SEND_TIMEOUT, state.sink.send(frame)).await;
    }
    myself.stop(Some(reason.into()));
}

/// A close frame with `code` and `reason`.
fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}
