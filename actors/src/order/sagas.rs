//! `SagaSupervisor`: parent of every [`OrderSaga`]. It routes each reply to
//! its order's saga, starting the saga (from Postgres) when none is running
//! — after a restart, or when the order's partition moved here — and
//! forgets sagas when they stop, whether cleanly (terminal order) or by
//! crashing (the reply in hand is retried by the consumer and a fresh saga
//! picks it up from the last persisted step).
//!
//! It runs only the sagas this process owns ([`Placement`]): when the group
//! assigns it partitions it resumes, from Postgres, every saga of those
//! partitions that is not over, each with its persisted deadline; when a
//! partition is revoked it stops that partition's sagas. It also sweeps
//! periodically for owned sagas whose deadline passed with no actor
//! watching them (created by another process, or whose actor crashed), so
//! no saga waits forever.

use super::machine::{SagaPolicy, SagaState};
use super::placement::Placement;
use super::repo::OrderRepoMsg;
use super::saga::{OrderSaga, SagaArgs, SagaClock, SagaError, SagaMsg};
use crate::events::Envelope;
use crate::outbox::OutboxNotifier;
use crate::rpc::ask;
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort, SupervisionEvent,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Most sagas loaded by one resume or sweep.
const RESUME_LIMIT: i64 = 100_000;

/// The saga supervisor; see the module documentation.
pub struct SagaSupervisor;

/// Start-up arguments of a [`SagaSupervisor`].
#[derive(Clone)]
pub struct SagasArgs {
    /// Handed to every saga.
    pub repo: ActorRef<OrderRepoMsg>,
    /// Handed to every saga.
    pub outbox: OutboxNotifier,
    /// Handed to every saga.
    pub policy: SagaPolicy,
    /// How often to look for overdue sagas nobody is watching.
    pub sweep_every: Duration,
    /// Which orders this process owns.
    pub placement: Arc<Placement>,
}

/// State of a [`SagaSupervisor`].
pub struct SagasState {
    args: SagasArgs,
    /// Running sagas by order.
    by_order: HashMap<Uuid, ActorRef<SagaMsg>>,
    /// The same, by actor, to clean up when one stops.
    by_actor: HashMap<ActorId, Uuid>,
    /// The periodic sweep, stopped with the supervisor.
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

/// Messages of a [`SagaSupervisor`].
pub enum SagasMsg {
    /// Starts the saga of an order just created (its state in hand).
    Begin {
        /// The new order's saga state.
        state: SagaState,
    },
    /// Routes a reply to its order's saga.
    Deliver {
        /// The reply.
        envelope: Envelope,
        /// Answered by the saga once the step is durable.
        reply: RpcReplyPort<Result<(), SagaError>>,
    },
    /// The orders whose sagas are running here.
    Running {
        /// Their ids.
        reply: RpcReplyPort<Vec<Uuid>>,
    },
    /// The group assigned partitions to this process: resume their sagas.
    Acquired,
    /// Partitions were revoked: stop the sagas this process no longer owns.
    Released,
    /// Looks in Postgres for sagas to resume: all that are not over (at
    /// start), or only the overdue ones (periodically).
    Sweep {
        /// Only sagas whose deadline has passed.
        overdue_only: bool,
    },
    /// Starts the owned sagas found by a sweep, unless already running.
    Resume {
        /// Their persisted states.
        states: Vec<SagaState>,
    },
}

impl Actor for SagaSupervisor {
    type Msg = SagasMsg;
    type State = SagasState;
    type Arguments = SagasArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SagasArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let sweeper =
            myself.send_interval(args.sweep_every, || SagasMsg::Sweep { overdue_only: true });
        Ok(SagasState {
            args,
            by_order: HashMap::new(),
            by_actor: HashMap::new(),
            sweeper: Some(sweeper),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(sweeper) = state.sweeper.take() {
            sweeper.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SagasMsg::Begin { state: saga } => {
                // Not ours: the owner starts it on the first reply, or its
                // sweep does when the deadline passes.
                if state.args.placement.owns(saga.order_id)
                    && !state.by_order.contains_key(&saga.order_id)
                {
                    let order_id = saga.order_id;
                    if let Err(error) = spawn_saga(&myself, state, order_id, Some(saga)).await {
                        // The order is stored; the first reply will start it.
                        tracing::warn!(%order_id, %error, "saga not started eagerly");
                    }
                }
            }
            SagasMsg::Deliver { envelope, reply } => {
                let order_id = envelope.order_id;
                let mut message = SagaMsg::Reply {
                    envelope: Box::new(envelope),
                    reply,
                };
                // Twice: the first saga found may be stopping (its order
                // just finished); a fresh one then reloads from Postgres.
                for _ in 0..2 {
                    let saga = match state.by_order.get(&order_id) {
                        Some(saga) => saga.clone(),
                        None => match spawn_saga(&myself, state, order_id, None).await {
                            Ok(saga) => saga,
                            Err(error) => {
                                tracing::error!(%order_id, %error, "could not start saga");
                                return Ok(()); // dropping `reply` makes the consumer retry
                            }
                        },
                    };
                    match saga.send_message(message) {
                        Ok(()) => return Ok(()),
                        Err(MessagingErr::SendErr(returned)) => {
                            forget(state, &saga.get_id());
                            message = returned;
                        }
                        Err(_) => {
                            forget(state, &saga.get_id());
                            return Ok(());
                        }
                    }
                }
            }
            SagasMsg::Running { reply } => {
                let _ = reply.send(state.by_order.keys().copied().collect());
            }
            SagasMsg::Acquired => {
                // Every saga in flight, not only overdue ones: the previous
                // owner stopped watching them.
                myself.send_message(SagasMsg::Sweep {
                    overdue_only: false,
                })?;
            }
            SagasMsg::Released => {
                let placement = &state.args.placement;
                let mut released = 0usize;
                for (order_id, saga) in &state.by_order {
                    if !placement.owns(*order_id) {
                        saga.stop(Some("partition revoked".into()));
                        released += 1;
                    }
                }
                if released > 0 {
                    tracing::info!(released, "stopped sagas of revoked partitions");
                }
            }
            SagasMsg::Sweep { overdue_only } => {
                // The query runs as a task; its result comes back as Resume.
                let repo = state.args.repo.clone();
                tokio::spawn(async move {
                    let found = ask(&repo, "order repo", crate::rpc::DEFAULT_TIMEOUT, |reply| {
                        OrderRepoMsg::LoadInFlight {
                            overdue_only,
                            limit: RESUME_LIMIT,
                            reply,
                        }
                    })
                    .await;
                    match found {
                        Ok(Ok(states)) if states.is_empty() => {}
                        Ok(Ok(states)) => {
                            let _ = myself.send_message(SagasMsg::Resume { states });
                        }
                        Ok(Err(error)) => tracing::warn!(%error, "saga sweep failed"),
                        Err(error) => tracing::warn!(%error, "saga sweep failed"),
                    }
                });
            }
            SagasMsg::Resume { states } => {
                let mut resumed = 0usize;
                for saga in states {
                    if state.by_order.contains_key(&saga.order_id)
                        || !state.args.placement.owns(saga.order_id)
                    {
                        continue;
                    }
                    let order_id = saga.order_id;
                    match spawn_saga(&myself, state, order_id, Some(saga)).await {
                        Ok(_) => resumed += 1,
                        Err(error) => tracing::warn!(%order_id, %error, "saga not resumed"),
                    }
                }
                if resumed > 0 {
                    tracing::info!(resumed, "resumed sagas from postgres");
                }
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
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                forget(state, &cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let order_id = forget(state, &cell.get_id());
                tracing::error!(order_id = ?order_id, %error, "saga crashed; its next reply restarts it from Postgres");
            }
            _ => {}
        }
        Ok(())
    }
}

async fn spawn_saga(
    myself: &ActorRef<SagasMsg>,
    state: &mut SagasState,
    order_id: Uuid,
    saga: Option<SagaState>,
) -> Result<ActorRef<SagaMsg>, ractor::SpawnErr> {
    let (actor, _) = Actor::spawn_linked(
        None,
        OrderSaga,
        SagaArgs {
            order_id,
            state: saga,
            repo: state.args.repo.clone(),
            outbox: state.args.outbox.clone(),
            policy: state.args.policy,
            placement: state.args.placement.clone(),
            clock: SagaClock::Wall,
        },
        myself.get_cell(),
    )
    .await?;
    state.by_order.insert(order_id, actor.clone());
    state.by_actor.insert(actor.get_id(), order_id);
    crate::metrics::metrics()
        .sagas_running
        .set(i64::try_from(state.by_order.len()).unwrap_or(i64::MAX));
    Ok(actor)
}

/// Drops a stopped saga from both maps; returns its order.
fn forget(state: &mut SagasState, actor: &ActorId) -> Option<Uuid> {
    let order_id = state.by_actor.remove(actor)?;
    if state
        .by_order
        .get(&order_id)
        .is_some_and(|saga| saga.get_id() == *actor)
    {
        state.by_order.remove(&order_id);
    }
    crate::metrics::metrics()
        .sagas_running
        .set(i64::try_from(state.by_order.len()).unwrap_or(i64::MAX));
    Some(order_id)
}
