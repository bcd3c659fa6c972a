//! The supervisor at the root of each service's actor tree.
//!
//! Children come in two kinds. *Restartable* ones (Kafka consumers, outbox
//! relays) hold no references that others depend on, so a failed one is
//! started afresh after a backoff. *Essential* ones (repositories, the saga
//! supervisor, the WebSocket hub) are referenced by the HTTP layer; if one of
//! them fails the service cannot go on correctly, so the supervisor stops
//! and the process exits non-zero for its orchestrator to restart it, which
//! is safe because all state is in Postgres and Kafka.

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Restarts allowed per child within [`RESTART_WINDOW`] before giving up.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Starts (or restarts) one child linked to the given supervisor cell.
pub type StartFn =
    Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// How a child is treated when it exits.
#[derive(Clone)]
pub enum ChildKind {
    /// Started again after a backoff.
    Restartable(StartFn),
    /// Its failure stops the whole service.
    Essential,
}

/// A registered child.
#[derive(Clone)]
struct Child {
    name: &'static str,
    kind: ChildKind,
    /// Recent restart times, for the restart budget.
    restarts: Vec<Instant>,
}

/// The root supervisor of one service.
pub struct ServiceSupervisor;

/// State of a [`ServiceSupervisor`].
pub struct SupervisorState {
    /// The service's name, for logs.
    service: &'static str,
    /// Children by actor id.
    children: HashMap<ActorId, Child>,
    /// Set by [`SupervisorMsg::ShutDown`]: children now exit on purpose.
    shutting_down: bool,
}

/// Messages of a [`ServiceSupervisor`].
pub enum SupervisorMsg {
    /// Registers an already-linked child under `name`.
    Adopt {
        /// The child (already spawned linked to this supervisor).
        child: ActorCell,
        /// Its name, for logs.
        name: &'static str,
        /// What to do when it exits.
        kind: ChildKind,
        /// Answered once registered.
        reply: ractor::RpcReplyPort<()>,
    },
    /// Starts a child now: a restart whose backoff has elapsed, or a first start.
    Start {
        /// The child's name, for logs.
        name: &'static str,
        /// How to start it.
        start: StartFn,
        /// Restart history carried over from the previous incarnation.
        restarts: Vec<Instant>,
    },
    /// The service is being stopped: children exiting from now on are
    /// neither restarted nor treated as failures.
    ShutDown {
        /// Answered once noted.
        reply: ractor::RpcReplyPort<()>,
    },
}

impl Actor for ServiceSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = &'static str;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        service: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            service,
            children: HashMap::new(),
            shutting_down: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Adopt {
                child,
                name,
                kind,
                reply,
            } => {
                state.children.insert(
                    child.get_id(),
                    Child {
                        name,
                        kind,
                        restarts: Vec::new(),
                    },
                );
                let _ = reply.send(());
            }
            SupervisorMsg::ShutDown { reply } => {
                state.shutting_down = true;
                let _ = reply.send(());
            }
            SupervisorMsg::Start { .. } if state.shutting_down => {}
            SupervisorMsg::Start {
                name,
                start,
                restarts,
            } => match start(myself.get_cell()).await {
                Ok(cell) => {
                    tracing::info!(service = state.service, child = name, "child restarted");
                    state.children.insert(
                        cell.get_id(),
                        Child {
                            name,
                            kind: ChildKind::Restartable(start),
                            restarts,
                        },
                    );
                }
                Err(error) => {
                    tracing::error!(service = state.service, child = name, %error, "child could not be restarted");
                    schedule_restart(&myself, state.service, name, start, restarts)?;
                }
            },
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            _ => return Ok(()),
        };
        let Some(child) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.shutting_down {
            tracing::debug!(service = state.service, child = child.name, "child stopped");
            return Ok(());
        }
        match child.kind {
            ChildKind::Restartable(start) => {
                tracing::warn!(service = state.service, child = child.name, reason = ?failure, "child exited; restarting");
                schedule_restart(&myself, state.service, child.name, start, child.restarts)?;
            }
            ChildKind::Essential => {
                tracing::error!(service = state.service, child = child.name, reason = ?failure, "essential child exited; stopping the service");
                myself.stop(Some(format!("{} exited", child.name)));
            }
        }
        Ok(())
    }
}

/// Queues a restart after an exponential backoff, or fails the supervisor
/// when the child has used up its restart budget.
fn schedule_restart(
    myself: &ActorRef<SupervisorMsg>,
    service: &'static str,
    name: &'static str,
    start: StartFn,
    mut restarts: Vec<Instant>,
) -> Result<(), ActorProcessingErr> {
    let now = Instant::now();
    restarts.retain(|at| now.duration_since(*at) < RESTART_WINDOW);
    if restarts.len() >= MAX_RESTARTS {
        return Err(format!(
            "{service}: {name} failed {MAX_RESTARTS} times within {RESTART_WINDOW:?}"
        )
        .into());
    }
    let backoff =
        crate::retry::jittered(Duration::from_millis(200) * 2u32.pow(restarts.len() as u32));
    restarts.push(now);
    myself.send_after(backoff, move || SupervisorMsg::Start {
        name,
        start,
        restarts,
    });
    Ok(())
}

/// Registers `child` with `supervisor`.
pub async fn adopt(
    supervisor: &ActorRef<SupervisorMsg>,
    child: ActorCell,
    name: &'static str,
    kind: ChildKind,
) -> Result<(), crate::rpc::RpcError> {
    crate::rpc::ask(
        supervisor,
        "supervisor",
        crate::rpc::DEFAULT_TIMEOUT,
        |reply| SupervisorMsg::Adopt {
            child,
            name,
            kind,
            reply,
        },
    )
    .await
}

/// Starts a restartable child under `supervisor` and registers it.
pub async fn start_restartable(
    supervisor: &ActorRef<SupervisorMsg>,
    name: &'static str,
    start: StartFn,
) -> Result<(), crate::StartError> {
    let cell = start(supervisor.get_cell()).await?;
    adopt(supervisor, cell, name, ChildKind::Restartable(start)).await?;
    Ok(())
}
