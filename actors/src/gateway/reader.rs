//! The reading half of a [`WsConnection`]: a task that reads the client's
//! frames and hands its requests to the connection actor, never faster
//! than the actor handles them, and never faster than the client may send.
//!
//! - Backpressure: the actor's mailbox is unbounded, so the reader holds a
//!   [`Turn`] (one of [`READ_AHEAD`]) for every request it hands over, and
//!   reads no further frame until a turn is free; the actor frees it once
//!   the request is handled. A client sending faster than that fills its
//!   own TCP window, not the gateway's memory.
//! - Rate: every frame, pings and pongs included, takes a token of a
//!   [`FrameRate`] bucket; a client out of tokens is flooding and the
//!   connection is closed with 1008. Pings matter: tungstenite answers each
//!   with a pong the gateway must write.
//! - Size: tungstenite refuses a frame or message over its limits before
//!   reading it; that ends the stream, and the connection closes with 1009.
//!
//! [`WsConnection`]: super::connection::WsConnection

use super::connection::ConnectionMsg;
use super::protocol::ClientMessage;
use futures::{Stream, StreamExt};
use ractor::ActorRef;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Requests read but not yet handled; the reader waits for one to be
/// handled before reading on. A few keep a client's pipelined requests
/// flowing; each is at most one message (`MAX_FRAME`).
pub const READ_AHEAD: usize = 4;

/// A request's place among the [`READ_AHEAD`]: dropping it (once the
/// request is handled) lets the reader read the next frame.
pub struct Turn(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Turn {
    /// For a request that did not come through the reader (`/ws?order_id=`).
    pub(super) fn outside() -> Self {
        Turn(None)
    }
}

/// A token bucket over a client's frames: `per_second` on average, bursts
/// of up to twice that.
#[derive(Debug, Clone)]
pub struct FrameRate {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl FrameRate {
    /// A full bucket for `per_second` frames a second (at least 1).
    pub fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            burst: 2.0 * per_second,
            tokens: 2.0 * per_second,
            last: now,
        }
    }

    /// Whether a frame arriving at `now` is within the rate (it takes a token).
    pub fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the reader needs besides the stream.
pub(super) struct ReaderArgs {
    /// The connection actor.
    pub(super) connection: ActorRef<ConnectionMsg>,
    /// The turns; closed by the actor when it stops.
    pub(super) room: Arc<Semaphore>,
    /// The client's frame budget.
    pub(super) rate: FrameRate,
    /// Milliseconds since `opened` when the client was last heard from.
    pub(super) heard: Arc<AtomicU64>,
    /// When the connection opened.
    pub(super) opened: Instant,
}

/// Reads `stream` until the client leaves, floods or sends too much; tells
/// the actor which. Once the actor stops (it closes `room`), reads on only
/// to see the client's side of the closing handshake.
pub(super) async fn read<S>(mut stream: S, mut args: ReaderArgs)
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let end = loop {
        let turn = match args.room.clone().acquire_owned().await {
            Ok(permit) => Turn(Some(permit)),
            Err(_) => return drain(stream, args.rate).await,
        };
        let frame = match stream.next().await {
            None => break ConnectionMsg::ClientGone,
            Some(Err(WsError::Capacity(e))) => break ConnectionMsg::TooBig(e.to_string()),
            Some(Err(_)) => break ConnectionMsg::ClientGone,
            Some(Ok(frame)) => frame,
        };
        args.heard.store(elapsed_ms(args.opened), Ordering::Relaxed);
        if !args.rate.admit(Instant::now()) {
            break ConnectionMsg::Flood;
        }
        let text = match frame {
            Message::Close(_) => break ConnectionMsg::ClientGone,
            Message::Text(text) => text,
            _ => continue, // pings, pongs, binary: proof of life only
        };
        let message = match serde_json::from_str::<ClientMessage>(text.as_str()) {
            Ok(request) => ConnectionMsg::Request(request, turn),
            Err(e) => ConnectionMsg::Invalid(e.to_string(), turn),
        };
        if args.connection.send_message(message).is_err() {
            // Stopped: the turn came back with the message.
            return drain(stream, args.rate).await;
        }
    };
    let _ = args.connection.send_message(end);
}

/// Reads and drops frames until the client answers the close (or leaves,
/// or floods), so that its last frames do not meet a reset.
async fn drain<S>(mut stream: S, mut rate: FrameRate)
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    while let Some(Ok(frame)) = stream.next().await {
        if matches!(frame, Message::Close(_)) || !rate.admit(Instant::now()) {
            return;
        }
    }
}

/// Milliseconds since `since`.
pub(super) fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use std::time::Duration;

    #[test]
    fn the_rate_allows_a_burst_then_its_average() {
        let start = Instant::now();
        let mut rate = FrameRate::new(10, start);
        assert_eq!((0..100).filter(|_| rate.admit(start)).count(), 20, "burst");
        assert!(!rate.admit(start));
        // A second later, ten more.
        let later = start + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| rate.admit(later)).count(), 10);
        // Idle for long: still no more than the burst.
        let much_later = later + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| rate.admit(much_later)).count(), 20);
    }

    /// Stands in for the connection actor: keeps every message (and so
    /// every turn) until told to let go of them.
    struct Keeper;

    #[derive(Default, Clone)]
    struct Kept {
        requests: Arc<Mutex<Vec<ConnectionMsg>>>,
        /// Whether requests are handled at once (their turns dropped).
        handles: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Actor for Keeper {
        type Msg = ConnectionMsg;
        type State = Kept;
        type Arguments = Kept;

        async fn pre_start(
            &self,
            _myself: ActorRef<Self::Msg>,
            kept: Kept,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(kept)
        }

        async fn handle(
            &self,
            _myself: ActorRef<Self::Msg>,
            message: Self::Msg,
            kept: &mut Kept,
        ) -> Result<(), ActorProcessingErr> {
            if kept.handles.load(Ordering::SeqCst) {
                let marker = match message {
                    ConnectionMsg::Request(..) => ConnectionMsg::Tick,
                    other => other,
                };
                kept.requests.lock().unwrap().push(marker);
            } else {
                kept.requests.lock().unwrap().push(message);
            }
            Ok(())
        }
    }

    /// Endless valid subscribes, counting how many were read.
    fn endless_subscribes(
        pulled: Arc<AtomicUsize>,
    ) -> impl Stream<Item = Result<Message, WsError>> + Unpin {
        Box::pin(futures::stream::unfold(pulled, |pulled| async move {
            pulled.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            let frame = Message::text(r#"{"type":"subscribe","scope":"stock"}"#);
            Some((Ok(frame), pulled))
        }))
    }

    fn reader_args(connection: ActorRef<ConnectionMsg>, per_second: u32) -> ReaderArgs {
        ReaderArgs {
            connection,
            room: Arc::new(Semaphore::new(READ_AHEAD)),
            rate: FrameRate::new(per_second, Instant::now()),
            heard: Arc::new(AtomicU64::new(0)),
            opened: Instant::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_reader_reads_no_further_than_the_actor_has_handled() {
        let kept = Kept::default();
        let (keeper, _) = Actor::spawn(None, Keeper, kept.clone()).await.unwrap();
        let pulled = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(read(
            endless_subscribes(pulled.clone()),
            reader_args(keeper.clone(), u32::MAX),
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The actor holds every turn: the reader stopped after READ_AHEAD.
        assert_eq!(pulled.load(Ordering::SeqCst), READ_AHEAD);
        assert_eq!(kept.requests.lock().unwrap().len(), READ_AHEAD);
        // Handling them lets it read on.
        kept.handles.store(true, Ordering::SeqCst);
        kept.requests.lock().unwrap().clear();
        // (Busy from now on, so paused time would never advance: yield.)
        for _ in 0..10_000 {
            if pulled.load(Ordering::SeqCst) > 10 * READ_AHEAD {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(pulled.load(Ordering::SeqCst) > 10 * READ_AHEAD);
        task.abort();
        keeper.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_over_its_rate_is_told_apart_as_a_flood() {
        let kept = Kept::default();
        kept.handles.store(true, Ordering::SeqCst);
        let (keeper, _) = Actor::spawn(None, Keeper, kept.clone()).await.unwrap();
        let pulled = Arc::new(AtomicUsize::new(0));
        read(
            endless_subscribes(pulled.clone()),
            reader_args(keeper.clone(), 10),
        )
        .await;
        // 20 frames of burst are handed over; the 21st ends the reading.
        assert_eq!(pulled.load(Ordering::SeqCst), 21);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let messages = kept.requests.lock().unwrap();
        assert!(matches!(messages.last(), Some(ConnectionMsg::Flood)));
        assert_eq!(messages.len(), 21);
        drop(messages);
        keeper.stop(None);
    }
}
