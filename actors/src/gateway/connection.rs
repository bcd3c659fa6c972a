//! `WsConnection`: one actor per WebSocket client. It owns the socket's
//! sending half; a small task reads the receiving half and tells the actor
//! when the client leaves. Updates are sent in order, each order's at most
//! once (by sequence number), and the actor unsubscribes itself when it
//! stops for any reason.

use super::hub::{Follow, HubMsg, StatusUpdate};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::HashMap;
use tracing::Instrument;
use uuid::Uuid;
use warp::ws::{Message, WebSocket};

/// Orders remembered per connection for de-duplication before the oldest
/// are forgotten (a connection following every order sees many).
const MAX_REMEMBERED: usize = 10_000;

/// The connection actor; see the module documentation.
pub struct WsConnection;

/// Start-up arguments of a [`WsConnection`].
pub struct ConnectionArgs {
    /// The upgraded socket.
    pub socket: WebSocket,
    /// What the client follows.
    pub follow: Follow,
    /// Where to subscribe.
    pub hub: ActorRef<HubMsg>,
}

/// State of a [`WsConnection`].
pub struct ConnectionState {
    sink: SplitSink<WebSocket, Message>,
    reader: tokio::task::JoinHandle<()>,
    hub: ActorRef<HubMsg>,
    /// Highest sequence number sent per order.
    last_seq: HashMap<Uuid, i32>,
}

/// Messages of a [`WsConnection`].
#[derive(Debug)]
pub enum ConnectionMsg {
    /// An update to send to the client.
    Push(StatusUpdate),
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
        let me = myself.clone();
        let reader = tokio::spawn(async move {
            // Clients only listen; anything they send is read and dropped
            // until they close.
            while let Some(Ok(message)) = stream.next().await {
                if message.is_close() {
                    break;
                }
            }
            let _ = me.send_message(ConnectionMsg::ClientGone);
        });
        args.hub.send_message(HubMsg::Subscribe {
            connection: myself,
            follow: args.follow,
        })?;
        crate::metrics::metrics().websocket_connections.inc();
        Ok(ConnectionState {
            sink,
            reader,
            hub: args.hub,
            last_seq: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConnectionMsg::Push(update) => {
                let last = state.last_seq.get(&update.order_id).copied().unwrap_or(0);
                if update.seq <= last {
                    return Ok(()); // already sent: a redelivered event
                }
                if state.last_seq.len() >= MAX_REMEMBERED {
                    state.last_seq.clear();
                }
                state.last_seq.insert(update.order_id, update.seq);
                let json = serde_json::to_string(&update)?;
                let span = push_span(&update);
                if state
                    .sink
                    .send(Message::text(json))
                    .instrument(span)
                    .await
                    .is_err()
                {
                    myself.stop(Some("client unreachable".into()));
                }
            }
            ConnectionMsg::ClientGone => myself.stop(Some("client left".into())),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state.hub.send_message(HubMsg::Unsubscribe {
            connection: myself.get_id(),
        });
        crate::metrics::metrics().websocket_connections.dec();
        state.reader.abort();
        let _ = state.sink.close().await;
        Ok(())
    }
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
