//! `ConnectionSupervisor`: parent of every [`WsConnection`]. Connections are
//! short-lived and never restarted (the client reconnects); the supervisor
//! only keeps count and makes sure a crashed connection is unsubscribed.

use super::connection::WebSocket;
use super::connection::{ConnectionArgs, ConnectionPolicy, WsConnection};
use super::hub::HubMsg;
use super::orders::OrderLookup;
use super::Admission;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

/// The connection supervisor; see the module documentation.
pub struct ConnectionSupervisor;

/// State of the [`ConnectionSupervisor`].
pub struct ConnectionsState {
    args: ConnectionsArgs,
    /// Connections currently open.
    open: usize,
}

/// Start-up arguments of the [`ConnectionSupervisor`], handed to every
/// connection.
#[derive(Clone)]
pub struct ConnectionsArgs {
    /// Where connections subscribe.
    pub hub: ActorRef<HubMsg>,
    /// Where snapshots come from.
    pub lookup: OrderLookup,
    /// Heartbeats and limits.
    pub policy: ConnectionPolicy,
}

/// Messages of the [`ConnectionSupervisor`].
pub enum ConnectionsMsg {
    /// A client upgraded to a WebSocket: give it an actor.
    Open {
        /// The socket (boxed: it is large, and this message is not).
        socket: Box<WebSocket>,
        /// Who connected, until when, and what they asked for at once.
        admission: Box<Admission>,
    },
    /// Closes every connection with 1001 (going away): the server is
    /// shutting down.
    CloseAll,
    /// How many connections are open.
    Count {
        /// The number.
        reply: RpcReplyPort<usize>,
    },
}

impl Actor for ConnectionSupervisor {
    type Msg = ConnectionsMsg;
    type State = ConnectionsState;
    type Arguments = ConnectionsArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConnectionsArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ConnectionsState { args, open: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConnectionsMsg::Open { socket, admission } => {
                let Admission {
                    session,
                    slot,
                    initial,
                    verifier,
                } = *admission;
                let args = ConnectionArgs {
                    socket: *socket,
                    session,
                    verifier,
                    slot,
                    initial,
                    hub: state.args.hub.clone(),
                    lookup: state.args.lookup.clone(),
                    policy: state.args.policy,
                };
                match Actor::spawn_linked(None, WsConnection, args, myself.get_cell()).await {
                    Ok(_) => state.open += 1,
                    Err(error) => tracing::warn!(%error, "websocket connection not started"),
                }
            }
            ConnectionsMsg::CloseAll => {
                myself
                    .get_cell()
                    .stop_children(Some("server shutting down".into()));
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
                let _ = state.args.hub.send_message(HubMsg::Disconnect {
                    connection: cell.get_id(),
                });
            }
            _ => {}
        }
        Ok(())
    }
}
