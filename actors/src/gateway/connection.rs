//! `WsConnection`: one actor per WebSocket client. It owns the socket's
//! sending half; a task ([`reader`]) reads the receiving half and hands the
//! actor the client's requests, which [`requests`] answers: subscriptions
//! with a snapshot or a catch-up, then live updates in order, each at most
//! once (by sequence number), in the protocol of [`protocol`].
//!
//! It also keeps the connection healthy and bounded, in both directions:
//! - out: it pings, and closes a client silent past the idle timeout;
//!   pushes wait in a bounded queue, and a client that lets it overflow is
//!   closed with 1008 (policy violation) without touching anyone else;
//!   tungstenite's write buffer is capped, so unread pongs cannot pile up;
//! - in: requests are read only as fast as they are handled, a client
//!   sending frames faster than its rate is closed with 1008, and a frame
//!   over the size limit with 1009 (message too big);
//! - the session ends with its token ([`session`]): 4001, unless the client
//!   sent a fresh token;
//! - a server shutdown closes with 1001.
//!
//! [`protocol`]: super::protocol
//! [`reader`]: super::reader
//! [`requests`]: super::requests
//! [`session`]: super::session

use super::hub::{HubMsg, Outbound, StatusUpdate};
use super::orders::{Known, LookupError, OrderLookup};
use super::protocol::{ClientMessage, ServerMessage};
use super::reader::{self, FrameRate, ReaderArgs, Turn, READ_AHEAD};
use super::session::{Session, SharedVerifier, CLOSE_TOKEN_EXPIRED, LONGEST_WAIT};
use super::slots::SubjectSlot;
use crate::auth::Principal;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, MessagingErr};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// What a client socket runs over: an upgraded HTTP connection (or, in
/// tests, an in-memory pipe).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// An upgraded client socket.
pub type WebSocket = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// Orders one connection may follow at once.
pub const MAX_SUBSCRIPTIONS: usize = 1_000;
/// Orders remembered for de-duplication of scope (`mine`, `all`) updates
/// before the oldest are forgotten.
pub(super) const MAX_REMEMBERED: usize = 10_000;
/// Order lookups one connection has in flight at once; its other
/// subscriptions wait their turn (in `lookups`), so a client subscribing
/// to many orders (or to made-up ones) costs the order service at most
/// this many requests at a time.
pub(super) const LOOKUPS_AT_ONCE: usize = 4;
/// Longest wait for one frame to be written before the client counts as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Close codes (RFC 6455).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
/// How long a closed connection waits for the client's side of the closing
/// handshake before dropping the socket. Dropping it at once would let the
/// client's next write (a pong, its own close) be answered with a reset,
/// which on most systems discards the close frame still unread at the client.
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// When the reader has stopped (a flood, an oversized frame), the client's
/// unread frames make dropping the socket send a reset, which throws away
/// the close frame unless the client has read it. A flooder that never
/// reads has its receive buffer full, so the close frame waits behind it:
/// the socket is kept this long, unread (the client's sends block, and
/// nothing is buffered here), so that a client that stops to read learns
/// why it was closed. Reading on instead would let a flooder keep sending.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

/// How connections behave; the same for all.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionPolicy {
    /// How often the server pings.
    pub ping_every: Duration,
    /// How long a client may stay silent (no frame, not even a pong).
    pub idle_timeout: Duration,
    /// Pushes that may wait for a slow client before it is closed.
    pub queue_limit: usize,
    /// Frames (of any kind, pings included) a client may send per second
    /// on average, in bursts of up to twice that; faster is a flood (1008).
    pub frames_per_second: u32,
    /// Connections one subject (token `sub`) may have open at once; more
    /// are refused at the upgrade (429).
    pub per_subject: usize,
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        Self {
            ping_every: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            queue_limit: 256,
            frames_per_second: 100,
            per_subject: 32,
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
    /// Who is connected, with which token, until when.
    pub session: Session,
    /// Checks the fresh tokens of `refresh` requests.
    pub verifier: SharedVerifier,
    /// The connection's place in its subject's count, given back when the
    /// actor is gone.
    pub slot: SubjectSlot,
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
    /// The reader's turns: closed when the actor stops, so that the reader
    /// only drains the client's last frames.
    pub(super) room: Arc<Semaphore>,
    pub(super) ticker: Option<tokio::task::JoinHandle<()>>,
    pub(super) queue: Arc<Queue>,
    /// Milliseconds since `opened` when the client was last heard from.
    pub(super) heard: Arc<AtomicU64>,
    pub(super) opened: Instant,
    /// When the session ends (its token's end), and the timer that says so.
    pub(super) session_end: Instant,
    pub(super) expiry: Option<tokio::task::JoinHandle<Result<(), MessagingErr<ConnectionMsg>>>>,
    /// Highest sequence number sent per order subscribed to by id.
    pub(super) last_seq: HashMap<Uuid, i32>,
    /// The same for orders seen only through a scope subscription.
    pub(super) seen: HashMap<Uuid, i32>,
    /// Orders waiting for their snapshot, with the live updates that
    /// arrived meanwhile.
    pub(super) pending: HashMap<Uuid, Vec<StatusUpdate>>,
    /// Lookups not started yet (at most [`LOOKUPS_AT_ONCE`] run), oldest
    /// first, with their `last_seq`.
    pub(super) lookups: VecDeque<(Uuid, Option<i32>)>,
    /// Lookups running.
    pub(super) looking: usize,
    /// Whether the socket is already closed (no close frame to send).
    pub(super) closed: bool,
    /// Whether the server sent a close frame.
    pub(super) sent_close: bool,
    /// Kept until the actor is gone (see [`ConnectionArgs::slot`]).
    pub(super) _slot: SubjectSlot,
}

/// What a connection keeps of its start-up arguments.
pub(super) struct Args {
    pub(super) principal: Principal,
    pub(super) token: String,
    pub(super) verifier: SharedVerifier,
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
    /// A request from the client; handling it frees its turn.
    Request(ClientMessage, Turn),
    /// A frame the client sent that is not a valid request.
    Invalid(String, Turn),
    /// The client sends frames faster than its rate: close with 1008.
    Flood,
    /// The client sent a frame or message over the size limit: close with
    /// 1009.
    TooBig(String),
    /// The session's end may have come: close with 4001 if it has.
    Expired,
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
        let (sink, stream) = args.socket.split();
        let heard = Arc::new(AtomicU64::new(0));
        let opened = Instant::now();
        let room = Arc::new(Semaphore::new(READ_AHEAD));
        let reader = tokio::spawn(reader::read(
            stream,
            ReaderArgs {
                connection: myself.clone(),
                room: room.clone(),
                rate: FrameRate::new(args.policy.frames_per_second, opened),
                heard: heard.clone(),
                opened,
            },
        ));
        let ticker = myself.send_interval(args.policy.ping_every, || ConnectionMsg::Tick);
        if let Some(initial) = args.initial {
            myself.send_message(ConnectionMsg::Request(initial, Turn::outside()))?;
        }
        crate::metrics::metrics().websocket_connections.inc();
        let mut state = ConnectionState {
            queue: Arc::new(Queue {
                waiting: AtomicUsize::new(0),
                limit: args.policy.queue_limit.max(1),
                overflowed: AtomicBool::new(false),
            }),
            session_end: opened + args.session.remaining(),
            args: Args {
                principal: args.session.principal,
                token: args.session.token,
                verifier: args.verifier,
                hub: args.hub,
                lookup: args.lookup,
                policy: args.policy,
            },
            sink,
            reader,
            room,
            ticker: Some(ticker),
            heard,
            opened,
            expiry: None,
            last_seq: HashMap::new(),
            seen: HashMap::new(),
            pending: HashMap::new(),
            lookups: VecDeque::new(),
            looking: 0,
            closed: false,
            sent_close: false,
            _slot: args.slot,
        };
        arm_expiry(&myself, &mut state);
        Ok(state)
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
            ConnectionMsg::Request(request, turn) => {
                super::requests::request_received(&myself, state, request).await;
                drop(turn);
            }
            ConnectionMsg::Invalid(reason, turn) => {
                let message = ServerMessage::error("bad_request", reason, None);
                send(&myself, state, &message).await;
                drop(turn);
            }
            ConnectionMsg::Flood => {
                tracing::info!(
                    subject = %state.args.principal.subject,
                    per_second = state.args.policy.frames_per_second,
                    "websocket client sends frames too fast; closing it"
                );
                close(&myself, state, CLOSE_POLICY, "too many frames").await;
            }
            ConnectionMsg::TooBig(reason) => {
                tracing::debug!(%reason, "websocket frame too big; closing the connection");
                close(&myself, state, CLOSE_TOO_BIG, "message too big").await;
            }
            ConnectionMsg::Expired => {
                if Instant::now() >= state.session_end {
                    close(&myself, state, CLOSE_TOKEN_EXPIRED, "token expired").await;
                } else {
                    // A refresh moved the end, or the wait was capped.
                    arm_expiry(&myself, state);
                }
            }
            ConnectionMsg::Looked {
                order_id,
                last_seq,
                result,
            } => {
                state.looking = state.looking.saturating_sub(1);
                super::requests::looked(&myself, state, order_id, last_seq, result).await;
                super::requests::start_lookups(&myself, state);
            }
            ConnectionMsg::Tick => {
                let silent = reader::elapsed_ms(state.opened)
                    .saturating_sub(state.heard.load(Ordering::Relaxed));
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
        if let Some(expiry) = state.expiry.take() {
            expiry.abort();
        }
        // Requests still in the mailbox are never handled: the reader must
        // not wait for their turns, only drain.
        state.room.close();
        if !state.closed {
            // Stopped by the server (a shutdown), not by the client.
            let frame = close_frame(CLOSE_GOING_AWAY, "server shutting down");
            state.sent_close = true;
            let _ = tokio::time::timeout(SEND_TIMEOUT, state.sink.send(frame)).await;
        }
        let _ = tokio::time::timeout(SEND_TIMEOUT, state.sink.close()).await;
        if state.sent_close && state.reader.is_finished() {
            tokio::time::sleep(CLOSE_FLUSH).await;
        }
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

/// Sets the timer of the session's end (replacing any earlier one).
pub(super) fn arm_expiry(myself: &ActorRef<ConnectionMsg>, state: &mut ConnectionState) {
    if let Some(earlier) = state.expiry.take() {
        earlier.abort();
    }
    let wait = state
        .session_end
        .saturating_duration_since(Instant::now())
        .min(LONGEST_WAIT);
    state.expiry = Some(myself.send_after(wait, || ConnectionMsg::Expired));
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
        state.sent_close = true;
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

#[cfg(test)]
mod tests;
