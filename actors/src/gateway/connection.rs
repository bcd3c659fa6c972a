//! `WsConnection`: one actor per WebSocket client. It owns the socket's
//! sending half; a small task reads the receiving half and hands the
//! actor the client's requests. It speaks the protocol of [`protocol`]:
//! subscriptions with a snapshot or a catch-up from the order service, then
//! live updates in order, each at most once (by sequence number).
//!
//! It also keeps the connection healthy and bounded: it pings, and closes a
//! client silent past the idle timeout; pushes wait in a bounded queue, and
//! a client that lets it overflow is closed with 1008 (policy violation)
//! without touching anyone else; a server shutdown closes with 1001.
//!
//! [`protocol`]: super::protocol

use super::hub::{HubMsg, Outbound, StatusUpdate, Topic};
use super::orders::{Known, LookupError, OrderLookup};
use super::protocol::{ClientMessage, Scope, ServerMessage};
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
use tracing::Instrument;
use uuid::Uuid;

/// An upgraded client socket.
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<warp::hyper::upgrade::Upgraded>>;

/// Orders one connection may follow at once.
pub const MAX_SUBSCRIPTIONS: usize = 1_000;
/// Orders remembered for de-duplication of scope (`mine`, `all`) updates
/// before the oldest are forgotten.
const MAX_REMEMBERED: usize = 10_000;
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
    actor: ActorRef<ConnectionMsg>,
    queue: Arc<Queue>,
}

/// Pushes waiting in a connection's mailbox.
struct Queue {
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
    args: Args,
    sink: SplitSink<WebSocket, Message>,
    reader: tokio::task::JoinHandle<()>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    queue: Arc<Queue>,
    /// Milliseconds since `opened` when the client was last heard from.
    heard: Arc<AtomicU64>,
    opened: Instant,
    /// Highest sequence number sent per order subscribed to by id.
    last_seq: HashMap<Uuid, i32>,
    /// The same for orders seen only through a scope subscription.
    seen: HashMap<Uuid, i32>,
    /// Orders waiting for their snapshot, with the live updates that
    /// arrived meanwhile.
    pending: HashMap<Uuid, Vec<StatusUpdate>>,
    /// Whether the socket is already closed (no close frame to send).
    closed: bool,
}

/// What a connection keeps of its start-up arguments.
struct Args {
    principal: Principal,
    token: String,
    hub: ActorRef<HubMsg>,
    lookup: OrderLookup,
    policy: ConnectionPolicy,
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
                    deliver(&myself, state, update).await;
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
            ConnectionMsg::Request(request) => request_received(&myself, state, request).await,
            ConnectionMsg::Invalid(reason) => {
                let message = ServerMessage::error("bad_request", reason, None);
                send(&myself, state, &message).await;
            }
            ConnectionMsg::Looked {
                order_id,
                last_seq,
                result,
            } => looked(&myself, state, order_id, last_seq, result).await,
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

fn handle_of(myself: &ActorRef<ConnectionMsg>, state: &ConnectionState) -> ConnectionHandle {
    ConnectionHandle {
        actor: myself.clone(),
        queue: state.queue.clone(),
    }
}

async fn request_received(
    myself: &ActorRef<ConnectionMsg>,
    state: &mut ConnectionState,
    request: ClientMessage,
) {
    let reply = match request {
        ClientMessage::Subscribe {
            order_id: Some(order_id),
            last_seq,
            scope: None,
        } => {
            if state.last_seq.contains_key(&order_id) || state.pending.contains_key(&order_id) {
                ServerMessage::Subscribed {
                    order_id: Some(order_id),
                    scope: None,
                    seq: state.last_seq.get(&order_id).copied(),
                }
            } else if state.last_seq.len() + state.pending.len() >= MAX_SUBSCRIPTIONS {
                ServerMessage::error(
                    "too_many_subscriptions",
                    format!("at most {MAX_SUBSCRIPTIONS} orders per connection"),
                    Some(order_id),
                )
            } else {
                // Follow first, look up second: an update that lands in
                // between waits in `pending` instead of being lost.
                state.pending.insert(order_id, Vec::new());
                let _ = state.args.hub.send_message(HubMsg::Subscribe {
                    connection: handle_of(myself, state),
                    topic: Topic::Order(order_id),
                });
                let (lookup, principal, token, me) = (
                    state.args.lookup.clone(),
                    state.args.principal.clone(),
                    state.args.token.clone(),
                    myself.clone(),
                );
                tokio::spawn(async move {
                    let result = lookup.get(order_id, &principal, &token, last_seq).await;
                    let _ = me.send_message(ConnectionMsg::Looked {
                        order_id,
                        last_seq,
                        result,
                    });
                });
                return;
            }
        }
        ClientMessage::Subscribe {
            order_id: None,
            last_seq: None,
            scope: Some(scope),
        } => match scope_topic(&state.args.principal, scope) {
            Ok(topic) => {
                let _ = state.args.hub.send_message(HubMsg::Subscribe {
                    connection: handle_of(myself, state),
                    topic,
                });
                ServerMessage::Subscribed {
                    order_id: None,
                    scope: Some(scope),
                    seq: None,
                }
            }
            Err(refusal) => refusal,
        },
        ClientMessage::Unsubscribe {
            order_id: Some(order_id),
            scope: None,
        } => {
            state.last_seq.remove(&order_id);
            state.pending.remove(&order_id);
            let _ = state.args.hub.send_message(HubMsg::Unsubscribe {
                connection: myself.get_id(),
                topic: Topic::Order(order_id),
            });
            ServerMessage::Unsubscribed {
                order_id: Some(order_id),
                scope: None,
            }
        }
        ClientMessage::Unsubscribe {
            order_id: None,
            scope: Some(scope),
        } => match scope_topic(&state.args.principal, scope) {
            Ok(topic) => {
                let _ = state.args.hub.send_message(HubMsg::Unsubscribe {
                    connection: myself.get_id(),
                    topic,
                });
                ServerMessage::Unsubscribed {
                    order_id: None,
                    scope: Some(scope),
                }
            }
            Err(refusal) => refusal,
        },
        _ => ServerMessage::error(
            "bad_request",
            "name either an order_id (with an optional last_seq) or a scope",
            None,
        ),
    };
    send(myself, state, &reply).await;
}

/// The hub topic of a scope, if the caller may follow it.
fn scope_topic(principal: &Principal, scope: Scope) -> Result<Topic, ServerMessage> {
    match scope {
        Scope::Mine => Ok(Topic::Customer(principal.subject.clone())),
        Scope::Stock => Ok(Topic::Stock),
        Scope::All if principal.is_admin() => Ok(Topic::All),
        Scope::All => Err(ServerMessage::error(
            "forbidden",
            "only admins may follow every order",
            None,
        )),
    }
}

/// The lookup answered a subscription: send the snapshot (or the
/// missed updates), then whatever arrived meanwhile.
async fn looked(
    myself: &ActorRef<ConnectionMsg>,
    state: &mut ConnectionState,
    order_id: Uuid,
    last_seq: Option<i32>,
    result: Result<Option<Known>, LookupError>,
) {
    let Some(waiting) = state.pending.remove(&order_id) else {
        return; // unsubscribed meanwhile
    };
    let refusal = match result {
        // The lookup checked the order is the client's.
        Ok(Some(order)) => {
            let current = order.current.seq;
            match last_seq {
                Some(after) => {
                    for entry in order.history.iter().filter(|h| h.seq > after) {
                        let update = StatusUpdate {
                            order_id,
                            status: entry.status,
                            reason: entry.reason,
                            at: entry.at,
                            seq: entry.seq,
                            customer_id: None,
                            trace: None,
                        };
                        send(myself, state, &ServerMessage::Update(update)).await;
                    }
                }
                None => {
                    let snapshot = ServerMessage::Snapshot {
                        order_id,
                        status: order.current.status,
                        reason: order.current.reason,
                        at: order.current.at,
                        seq: current,
                    };
                    send(myself, state, &snapshot).await;
                }
            }
            state
                .last_seq
                .insert(order_id, current.max(last_seq.unwrap_or(0)));
            let subscribed = ServerMessage::Subscribed {
                order_id: Some(order_id),
                scope: None,
                seq: Some(current),
            };
            send(myself, state, &subscribed).await;
            for update in waiting {
                deliver(myself, state, update).await;
            }
            return;
        }
        Ok(None) => ServerMessage::error(
            "not_found",
            format!("order {order_id} does not exist"),
            Some(order_id),
        ),
        Err(LookupError::Unauthorized(reason)) => {
            ServerMessage::error("unauthorized", reason, Some(order_id))
        }
        Err(LookupError::Unavailable(reason)) => {
            ServerMessage::error("unavailable", reason, Some(order_id))
        }
    };
    let _ = state.args.hub.send_message(HubMsg::Unsubscribe {
        connection: myself.get_id(),
        topic: Topic::Order(order_id),
    });
    send(myself, state, &refusal).await;
}

/// Sends a live update unless the client already has it.
async fn deliver(
    myself: &ActorRef<ConnectionMsg>,
    state: &mut ConnectionState,
    update: StatusUpdate,
) {
    let sent = if state.last_seq.contains_key(&update.order_id) {
        &mut state.last_seq
    } else {
        &mut state.seen
    };
    if update.seq <= sent.get(&update.order_id).copied().unwrap_or(0) {
        return; // already sent: a redelivered event, or part of the snapshot
    }
    if sent.len() >= MAX_REMEMBERED && !sent.contains_key(&update.order_id) {
        sent.clear();
    }
    sent.insert(update.order_id, update.seq);
    let span = push_span(&update);
    send(myself, state, &ServerMessage::Update(update))
        .instrument(span)
        .await;
}

/// The span of pushing `update` to one client: the last step of its
/// order's trace.
fn push_span(update: &StatusUpdate) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "websocket push",
        otel.kind = "producer",
        service = "gateway",
        order_id = %update.order_id,
        status = %update.status,
        trace_id = tracing::field::Empty,
    );
    crate::trace::adopt(&span, update.trace.as_ref());
    span
}

/// Writes one message; a client that cannot take it within
/// [`SEND_TIMEOUT`] is gone.
async fn send(
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
