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
use std::time::Duration;
// tokio's, which is the system's monotonic clock unless a test pauses it.
use tokio::time::Instant;

/// Restarts allowed per child within [`RESTART_WINDOW`] before giving up.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Backoff of a child's first restart in the window; each further one
/// waits twice as long. Jittered: half of it to all of it.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

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
    let backoff = crate::retry::jittered(restart_backoff(restarts.len()));
    restarts.push(now);
    myself.send_after(backoff, move || SupervisorMsg::Start {
        name,
        start,
        restarts,
    });
    Ok(())
}

/// The backoff, before jitter, of a child restarted `earlier` times
/// within [`RESTART_WINDOW`].
fn restart_backoff(earlier: usize) -> Duration {
    FIRST_BACKOFF * 2u32.pow(earlier as u32)
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

#[cfg(test)]
mod tests {
    //! Restarts on tokio's paused clock: each start of a child is reported
    //! with its (virtual) instant, so the backoff between a failure and the
    //! restart is measured exactly, with no real waiting.

    use super::*;
    use tokio::sync::mpsc;

    /// A start of the child: when, and how to reach that incarnation.
    type Started = (Instant, ActorRef<Crash>);

    /// Tells a [`Crasher`] to fail.
    struct Crash;

    /// A restartable child that reports each start and fails when told.
    struct Crasher;

    impl Actor for Crasher {
        type Msg = Crash;
        type State = ();
        type Arguments = mpsc::UnboundedSender<Started>;

        async fn pre_start(
            &self,
            myself: ActorRef<Self::Msg>,
            started: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            let _ = started.send((Instant::now(), myself));
            Ok(())
        }

        async fn handle(
            &self,
            _myself: ActorRef<Self::Msg>,
            _message: Crash,
            _state: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            Err("told to crash".into())
        }
    }

    /// The supervisor's parent (the process, in a service): reports how the
    /// supervisor ended.
    struct Watcher;

    impl Actor for Watcher {
        type Msg = ();
        type State = mpsc::UnboundedSender<String>;
        type Arguments = mpsc::UnboundedSender<String>;

        async fn pre_start(
            &self,
            _myself: ActorRef<Self::Msg>,
            ended: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(ended)
        }

        async fn handle_supervisor_evt(
            &self,
            _myself: ActorRef<Self::Msg>,
            event: SupervisionEvent,
            ended: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            match event {
                SupervisionEvent::ActorFailed(_, error) => {
                    let _ = ended.send(format!("failed: {error}"));
                }
                SupervisionEvent::ActorTerminated(_, _, reason) => {
                    let _ = ended.send(format!("stopped: {reason:?}"));
                }
                _ => {}
            }
            Ok(())
        }
    }

    /// A supervisor under a [`Watcher`], with one [`Crasher`] started.
    struct Tree {
        ended: mpsc::UnboundedReceiver<String>,
        started: mpsc::UnboundedReceiver<Started>,
        child: ActorRef<Crash>,
    }

    async fn tree() -> Tree {
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let (watcher, _) = Actor::spawn(None, Watcher, ended_tx).await.unwrap();
        let (supervisor, _) =
            Actor::spawn_linked(None, ServiceSupervisor, "test", watcher.get_cell())
                .await
                .unwrap();
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let start: StartFn = Arc::new(move |parent: ActorCell| {
            let started = started_tx.clone();
            Box::pin(async move {
                let (child, _) = Actor::spawn_linked(None, Crasher, started, parent).await?;
                Ok(child.get_cell())
            })
        });
        start_restartable(&supervisor, "crasher", start)
            .await
            .unwrap();
        let (_, child) = started.recv().await.unwrap();
        Tree {
            ended,
            started,
            child,
        }
    }

    impl Tree {
        /// Fails the running child; returns how long its restart took.
        async fn crash(&mut self) -> Duration {
            let crashed = Instant::now();
            self.child.send_message(Crash).unwrap();
            let within = Duration::from_secs(3600);
            let (at, child) = tokio::time::timeout(within, self.started.recv())
                .await
                .expect("restarted within an hour")
                .expect("restarted");
            self.child = child;
            at - crashed
        }
    }

    #[test]
    fn the_restart_backoff_doubles_from_200_ms() {
        let backoffs: Vec<u128> = (0..MAX_RESTARTS)
            .map(|earlier| restart_backoff(earlier).as_millis())
            .collect();
        assert_eq!(backoffs, [200, 400, 800, 1600, 3200]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_child_is_restarted_after_a_doubling_backoff_then_the_supervisor_gives_up() {
        let mut tree = tree().await;
        for earlier in 0..5 {
            // 200 ms, doubling with each restart, jittered (half to all).
            let whole = Duration::from_millis(200 << earlier);
            let took = tree.crash().await;
            assert!(
                took >= whole / 2 && took <= whole,
                "restart {} took {took:?}, not {:?}..{whole:?}",
                earlier + 1,
                whole / 2
            );
        }
        // The budget is spent: the next failure, within the window, fails
        // the supervisor at once (the service then exits for its
        // orchestrator to restart) instead of restarting the child.
        let crashed = Instant::now();
        tree.child.send_message(Crash).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(3600), tree.ended.recv())
            .await
            .expect("the supervisor ended")
            .unwrap();
        assert_eq!(Instant::now(), crashed);
        assert!(
            ended.starts_with("failed") && ended.contains("crasher failed 5 times within 60s"),
            "{ended}"
        );
        let later = tokio::time::timeout(Duration::from_secs(3600), tree.started.recv()).await;
        assert!(
            matches!(later, Err(_) | Ok(None)),
            "restarted after giving up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_older_than_the_window_no_longer_count() {
        let mut tree = tree().await;
        for _ in 0..MAX_RESTARTS {
            tree.crash().await;
        }
        // A window after the last failure its budget and its backoff are
        // back to those of a first restart.
        tokio::time::advance(RESTART_WINDOW).await;
        let took = tree.crash().await;
        let first = Duration::from_millis(200);
        assert!(took >= first / 2 && took <= first, "{took:?}");
        assert!(tree.ended.try_recv().is_err(), "the supervisor is running");
    }
}
