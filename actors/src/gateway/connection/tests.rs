//! A connection's heartbeat on tokio's paused clock: the client is the
//! other end of an in-memory pipe and notes the (virtual) instant of every
//! frame it gets, so pings and the idle close are timed exactly, with no
//! real waiting.

use super::*;
use crate::auth::Role;
use crate::gateway::history::History;
use crate::gateway::session::TokenVerifier;
use crate::gateway::slots::SubjectSlots;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Role as Side;
use tokio_tungstenite::WebSocketStream;

/// Refuses every fresh token: these clients never refresh.
struct NoRefresh;

impl TokenVerifier for NoRefresh {
    fn verify(&self, _token: &str) -> Result<Session, String> {
        Err("no refresh in these tests".into())
    }
}

/// Stands in for the hub: reports when a connection says it is gone.
struct FakeHub;

impl Actor for FakeHub {
    type Msg = HubMsg;
    type State = mpsc::UnboundedSender<Instant>;
    type Arguments = mpsc::UnboundedSender<Instant>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        gone: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(gone)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        gone: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let HubMsg::Disconnect { .. } = message {
            let _ = gone.send(Instant::now());
        }
        Ok(())
    }
}

/// The client's end of the pipe. Once `muted`, what the client writes is
/// thrown away: it still reads the server's frames, but the server hears
/// nothing from it (no pong, no close), as from a client that vanished.
struct ClientEnd {
    pipe: DuplexStream,
    muted: Arc<AtomicBool>,
}

impl AsyncRead for ClientEnd {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.pipe).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientEnd {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.muted.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.pipe).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.pipe).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.pipe).poll_shutdown(cx)
    }
}

/// A client connected to a [`WsConnection`] with `policy`.
struct Client {
    socket: WebSocketStream<ClientEnd>,
    muted: Arc<AtomicBool>,
    /// When the connection opened, on tokio's clock.
    opened: Instant,
    /// Tells when the connection has gone.
    gone: mpsc::UnboundedReceiver<Instant>,
}

/// What the client got, and how long after the connection opened.
#[derive(Debug, PartialEq)]
enum Got {
    Ping(Duration),
    Close(Duration, u16, String),
}

async fn connect(policy: ConnectionPolicy) -> Client {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let server: Box<dyn Io> = Box::new(server);
    let socket =
        WebSocketStream::from_raw_socket(server, Side::Server, Some(super::super::socket_config()))
            .await;
    let (gone_tx, gone) = mpsc::unbounded_channel();
    let (hub, _) = Actor::spawn(None, FakeHub, gone_tx).await.unwrap();
    // Never reached: these clients subscribe to nothing.
    let redis = crate::cache::pool("redis://127.0.0.1:1").unwrap();
    let lookup = OrderLookup::new("http://127.0.0.1:1", History::new(redis, "test"));
    let args = ConnectionArgs {
        socket,
        session: Session {
            principal: Principal {
                subject: "alice".into(),
                role: Role::Customer,
            },
            token: "token".into(),
            ends_at: SystemTime::now() + Duration::from_secs(24 * 3600),
        },
        verifier: Arc::new(NoRefresh),
        slot: SubjectSlots::new(1).reserve("alice").unwrap(),
        initial: None,
        hub,
        lookup,
        policy,
    };
    let opened = Instant::now();
    Actor::spawn(None, WsConnection, args).await.unwrap();
    let muted = Arc::new(AtomicBool::new(false));
    let end = ClientEnd {
        pipe: client,
        muted: muted.clone(),
    };
    Client {
        socket: WebSocketStream::from_raw_socket(end, Side::Client, None).await,
        muted,
        opened,
        gone,
    }
}

impl Client {
    /// The next ping or close, and when it came; `None` once the socket is
    /// gone. Reading also sends the pong tungstenite queued for the ping
    /// before (unless muted).
    async fn next(&mut self) -> Option<Got> {
        let at = |client: &Self| client.opened.elapsed();
        match self.socket.next().await? {
            Ok(Message::Ping(_)) => Some(Got::Ping(at(self))),
            Ok(Message::Close(Some(close))) => Some(Got::Close(
                at(self),
                close.code.into(),
                close.reason.to_string(),
            )),
            Ok(other) => panic!("unexpected frame {other:?}"),
            Err(_) => None,
        }
    }

    /// Up to `most` frames, up to and including a close.
    async fn frames(&mut self, most: usize) -> Vec<Got> {
        let mut got = Vec::new();
        while got.len() < most {
            let Some(frame) = self.next().await else {
                break;
            };
            let closed = matches!(frame, Got::Close(..));
            got.push(frame);
            if closed {
                break;
            }
        }
        got
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test(start_paused = true)]
async fn a_connection_pings_at_every_interval_and_keeps_a_client_that_answers() {
    let policy = ConnectionPolicy::default();
    assert_eq!(
        (policy.ping_every, policy.idle_timeout),
        (secs(20), secs(60))
    );
    let mut client = connect(policy).await;
    // Twice the idle timeout, answering every ping with a pong.
    let pinged: Vec<Got> = [20, 40, 60, 80, 100, 120]
        .map(|s| Got::Ping(secs(s)))
        .into();
    assert_eq!(client.frames(6).await, pinged);
    assert!(client.gone.try_recv().is_err(), "the connection is open");
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_at_the_first_ping_past_its_idle_timeout() {
    let mut client = connect(ConnectionPolicy::default()).await;
    client.muted.store(true, Ordering::SeqCst);
    // Silent for exactly the idle timeout (60 s) is not yet past it: pinged.
    assert_eq!(
        client.frames(5).await,
        [
            Got::Ping(secs(20)),
            Got::Ping(secs(40)),
            Got::Ping(secs(60)),
            Got::Close(secs(80), CLOSE_NORMAL, "idle timeout".into()),
        ]
    );
    let gone = client.gone.recv().await.unwrap();
    assert_eq!(gone - client.opened, secs(80));
}

#[tokio::test(start_paused = true)]
async fn idle_time_counts_from_the_last_frame_the_client_sent() {
    let mut client = connect(ConnectionPolicy::default()).await;
    assert_eq!(client.next().await, Some(Got::Ping(secs(20))));
    // Reading on sends the pong to the first ping: last heard at 20 s.
    assert_eq!(client.next().await, Some(Got::Ping(secs(40))));
    client.muted.store(true, Ordering::SeqCst);
    assert_eq!(
        client.frames(4).await,
        [
            Got::Ping(secs(60)),
            Got::Ping(secs(80)),
            Got::Close(secs(100), CLOSE_NORMAL, "idle timeout".into()),
        ]
    );
}
