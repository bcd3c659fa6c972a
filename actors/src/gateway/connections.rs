//! `ConnectionSupervisor`: parent of every [`WsConnection`]. Connections are
//! short-lived and never restarted (the client reconnects); the supervisor
//! only keeps count and makes sure a crashed connection is unsubscribed.

use super::connection::{ConnectionArgs, WsConnection};
use super::hub::{Follow, HubMsg};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use warp::ws::WebSocket;

/// The connection supervisor; see the module documentation.
pub struct ConnectionSupervisor;

/// State of the [`ConnectionSupervisor`].
pub struct ConnectionsState {
    hub: ActorRef<HubMsg>,
    /// Connections currently open.
    open: usize,
}

/// Messages of the [`ConnectionSupervisor`].
pub enum ConnectionsMsg {
    /// A client upgraded to a WebSocket: give it an actor.
    Open {
        /// The socket (boxed: it is large, and this message is not).
        socket: Box<WebSocket>,
        /// What it follows.
        follow: Follow,
    },
    /// How many connections are open.
    Count {
        /// The number.
        reply: RpcReplyPort<usize>,
    },
}

impl Actor for ConnectionSupervisor {
    type Msg = ConnectionsMsg;
    type State = ConnectionsState;
    type Arguments = ActorRef<HubMsg>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        hub: ActorRef<HubMsg>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ConnectionsState { hub, open: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConnectionsMsg::Open { socket, follow } => {
                let args = ConnectionArgs {
                    socket: *socket,
                    follow,
                    hub: state.hub.clone(),
                };
                match Actor::spawn_linked(None, WsConnection, args, myself.get_cell()).await {
                    Ok(_) => state.open += 1,
                    Err(error) => tracing::warn!(%error, "websocket connection not started"),
                }
            }
            ConnectionsMsg::Count { reply } => {
                let _ = reply.send(state.open);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(_, _, _) => state.open = state.open.saturating_sub(1),
            SupervisionEvent::ActorFailed(cell, error) => {
                state.open = state.open.saturating_sub(1);
                tracing::warn!(%error, "websocket connection failed");
                let _ = state.hub.send_message(HubMsg::Unsubscribe {
                    connection: cell.get_id(),
                });
            }
            _ => {}
        }
        Ok(())
    }
}
