//! `OrderSaga`: one actor per in-flight order. It receives that order's
//! replies (in partition order, one at a time), decides the next step with
//! the pure state machine, persists the step and its commands through
//! [`OrderRepo`](super::repo::OrderRepo), and stops once the order is
//! terminal. It holds nothing that is not also in Postgres, so a saga that
//! crashes or moves to another process resumes from its last stored step.

use super::machine::SagaState;
use super::repo::{Advance, OrderRepoMsg};
use crate::events::Envelope;
use crate::outbox::OutboxNotifier;
use crate::rpc::{ask, DEFAULT_TIMEOUT};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use uuid::Uuid;

/// Attempts at a step when another writer keeps moving the order.
const MAX_STALE_RETRIES: usize = 3;

/// Why a reply could not be applied; the consumer retries it later.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("saga of order {order_id}: {reason}")]
pub struct SagaError {
    /// The order.
    pub order_id: Uuid,
    /// What went wrong.
    pub reason: String,
}

/// The saga actor; see the module documentation.
pub struct OrderSaga;

/// Start-up arguments of an [`OrderSaga`].
pub struct SagaArgs {
    /// The order this saga drives.
    pub order_id: Uuid,
    /// Its state when known (a just-created order); loaded lazily otherwise.
    pub state: Option<SagaState>,
    /// Where steps are persisted.
    pub repo: ActorRef<OrderRepoMsg>,
    /// Wakes the outbox relay after each step.
    pub outbox: OutboxNotifier,
}

/// State of a running [`OrderSaga`].
pub struct SagaActorState {
    args: SagaArgs,
}

/// Messages of an [`OrderSaga`].
pub enum SagaMsg {
    /// A reply from another service about this order.
    Reply {
        /// The decoded reply.
        envelope: Envelope,
        /// Answered once the resulting step is durable (or the reply was
        /// found to need none), so the consumer may store its offset.
        reply: RpcReplyPort<Result<(), SagaError>>,
    },
}

impl Actor for OrderSaga {
    type Msg = SagaMsg;
    type State = SagaActorState;
    type Arguments = SagaArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SagaArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Loading waits for the first message: spawning stays instant for
        // the supervisor, and the load happens in this actor's own turn.
        Ok(SagaActorState { args })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SagaMsg::Reply { envelope, reply } => {
                let result = step(&mut state.args, &envelope).await;
                let terminal = matches!(&state.args.state, Some(s) if s.status.is_terminal());
                let _ = reply.send(result);
                if terminal {
                    myself.stop(Some("order is terminal".into()));
                }
            }
        }
        Ok(())
    }
}

async fn step(args: &mut SagaArgs, envelope: &Envelope) -> Result<(), SagaError> {
    let order_id = args.order_id;
    let fail = |reason: String| SagaError { order_id, reason };
    for _ in 0..MAX_STALE_RETRIES {
        if args.state.is_none() {
            args.state = ask(&args.repo, "order repo", DEFAULT_TIMEOUT, |reply| {
                OrderRepoMsg::LoadSaga { order_id, reply }
            })
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(e.to_string()))?;
        }
        let Some(current) = &args.state else {
            tracing::warn!(%order_id, event_type = envelope.event.type_name(), "reply for an unknown order ignored");
            return Ok(());
        };
        let Some(transition) = current.next(&envelope.event) else {
            tracing::debug!(%order_id, status = %current.status, event_type = envelope.event.type_name(), "reply needs no step");
            return Ok(());
        };
        let (next, messages) = current.apply(&transition);
        let from_seq = current.seq;
        let outcome = ask(&args.repo, "order repo", DEFAULT_TIMEOUT, |reply| {
            OrderRepoMsg::Advance {
                event_id: envelope.event_id,
                from_seq,
                next: next.clone(),
                messages,
                reply,
            }
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))?;
        match outcome {
            Advance::Applied => {
                tracing::info!(%order_id, status = %next.status, reason = ?next.reason, "order advanced");
                args.state = Some(next);
                args.outbox.wake();
                return Ok(());
            }
            Advance::Duplicate => return Ok(()),
            // Someone else moved the order: forget what we knew and decide again.
            Advance::Stale => args.state = None,
        }
    }
    Err(fail("order keeps changing under the saga".into()))
}
