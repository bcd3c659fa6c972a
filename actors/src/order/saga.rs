//! `OrderSaga`: one actor per in-flight order. It receives that order's
//! replies (in partition order, one at a time) and its own deadline
//! timer, decides the next step with the pure state machine, persists the
//! step and its commands through [`OrderRepo`](super::repo::OrderRepo), and
//! stops once the order is terminal. It holds nothing that is not also in
//! Postgres — the deadline included — so a saga that crashes, or whose
//! process restarts, resumes from its last stored step.

use super::machine::{SagaPolicy, SagaState, Transition};
use super::repo::{Advance, OrderRepoMsg, Step};
use crate::events::{Envelope, Event, OrderStatus};
use crate::outbox::OutboxNotifier;
use crate::rpc::{ask, DEFAULT_TIMEOUT};
use crate::trace::{self, TraceParent};
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::Instrument;
use uuid::Uuid;

/// Attempts at a step when another writer keeps moving the order.
const MAX_STALE_RETRIES: usize = 3;
/// How soon a deadline step that could not be persisted is tried again
/// (jittered between half of it and all of it).
const DEADLINE_STEP_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

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
    /// Its state when known (a just-created or rehydrated order); loaded
    /// from Postgres on the first message otherwise.
    pub state: Option<SagaState>,
    /// Where steps are persisted.
    pub repo: ActorRef<OrderRepoMsg>,
    /// Wakes the outbox relay after each step.
    pub outbox: OutboxNotifier,
    /// Step deadlines and compensation retries.
    pub policy: SagaPolicy,
    /// Whether this process still owns the order.
    pub placement: std::sync::Arc<super::placement::Placement>,
    /// Where the saga reads the time its deadlines are measured in.
    pub clock: SagaClock,
}

/// Where a saga reads the time. Deadlines are persisted as wall-clock
/// instants (any process may resume a saga), so a running saga reads the
/// wall clock; its unit tests read one that follows tokio's clock, which
/// they pause and advance.
#[derive(Debug, Clone, Copy)]
pub enum SagaClock {
    /// The system's wall clock.
    Wall,
    /// `at` when tokio's clock read `since`; tokio's clock from then on.
    #[cfg(test)]
    Tokio {
        /// The wall-clock time it starts at.
        at: DateTime<Utc>,
        /// The tokio instant that stands for `at`.
        since: tokio::time::Instant,
    },
}

impl SagaClock {
    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Self::Wall => Utc::now(),
            #[cfg(test)]
            Self::Tokio { at, since } => {
                *at + chrono::Duration::from_std(since.elapsed()).unwrap_or_default()
            }
        }
    }
}

/// State of a running [`OrderSaga`].
pub struct SagaActorState {
    args: SagaArgs,
    /// The armed deadline timer, replaced at every step.
    timer: Option<Timer>,
    /// The trace of the last reply, so that a deadline step (compensation
    /// after a timeout) shows in the order's trace too.
    trace: Option<TraceParent>,
}

/// Messages of an [`OrderSaga`].
pub enum SagaMsg {
    /// A reply from another service about this order.
    Reply {
        /// The decoded reply (boxed: an envelope is large next to a deadline).
        envelope: Box<Envelope>,
        /// Answered once the resulting step is durable (or the reply was
        /// found to need none), so the consumer may store its offset.
        reply: RpcReplyPort<Result<(), SagaError>>,
    },
    /// The deadline armed for version `(seq, attempts)` has passed.
    Deadline {
        /// The sequence number the timer was armed at.
        seq: i32,
        /// The compensation attempts the timer was armed at.
        attempts: i32,
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
        Ok(SagaActorState {
            args,
            timer: None,
            trace: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        arm(&myself, state);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SagaMsg::Reply { envelope, reply } => {
                state.trace = envelope.trace.or(state.trace);
                let span = trace::process_span("order", &envelope);
                let result = step(&mut state.args, Input::Reply(&envelope))
                    .instrument(span)
                    .await;
                let _ = reply.send(result);
            }
            SagaMsg::Deadline { .. } if !state.args.placement.owns(state.args.order_id) => {
                // The partition moved: its new owner watches this deadline.
                myself.stop(Some("partition revoked".into()));
                return Ok(());
            }
            SagaMsg::Deadline { seq, attempts } => {
                let current = state.args.state.as_ref().map(|s| (s.seq, s.attempts));
                if current == Some((seq, attempts)) {
                    let span = deadline_span(state.args.order_id, state.trace.as_ref());
                    let stepped = step(&mut state.args, Input::Deadline)
                        .instrument(span)
                        .await;
                    if let Err(error) = stepped {
                        // Try again shortly: the deadline has still passed.
                        tracing::warn!(%error, "deadline step failed; retrying");
                        let retry = crate::retry::jittered(DEADLINE_STEP_RETRY);
                        state.timer = Some(
                            myself.send_after(retry, move || SagaMsg::Deadline { seq, attempts }),
                        );
                        return Ok(());
                    }
                }
            }
        }
        if matches!(&state.args.state, Some(s) if s.status.is_terminal()) {
            myself.stop(Some("order is terminal".into()));
        } else if !state.args.placement.owns(state.args.order_id) {
            // A reply read just before its partition was revoked: handled,
            // and the new owner takes the saga from here.
            myself.stop(Some("not the owner".into()));
        } else {
            arm(&myself, state);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        Ok(())
    }
}

/// The span of a deadline step: in the order's trace when this actor saw
/// a reply of it, else the root of a new trace.
fn deadline_span(order_id: Uuid, last_reply: Option<&TraceParent>) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "deadline",
        service = "order",
        %order_id,
        trace_id = tracing::field::Empty,
    );
    trace::adopt(&span, last_reply);
    span
}

/// A pending `send_after`.
type Timer = tokio::task::JoinHandle<Result<(), ractor::MessagingErr<SagaMsg>>>;

/// Arms the timer for the current state's deadline (replacing any other).
fn arm(myself: &ActorRef<SagaMsg>, state: &mut SagaActorState) {
    if let Some(timer) = state.timer.take() {
        timer.abort();
    }
    let Some(saga) = &state.args.state else {
        return;
    };
    let Some(deadline) = saga.deadline_at else {
        return;
    };
    let wait = (deadline - state.args.clock.now())
        .to_std()
        .unwrap_or_default();
    let (seq, attempts) = (saga.seq, saga.attempts);
    state.timer = Some(myself.send_after(wait, move || SagaMsg::Deadline { seq, attempts }));
}

/// What the saga is reacting to.
enum Input<'a> {
    Reply(&'a Envelope),
    Deadline,
}

async fn step(args: &mut SagaArgs, input: Input<'_>) -> Result<(), SagaError> {
    let order_id = args.order_id;
    let fail = |reason: String| SagaError { order_id, reason };
    let (event_id, event_type) = match &input {
        Input::Reply(envelope) => (envelope.event_id, envelope.event.type_name()),
        // A deadline is not a message: any fresh id will do, and the
        // (seq, attempts) guard makes it happen once.
        Input::Deadline => (Uuid::now_v7(), "deadline"),
    };
    // A cached state may be behind Postgres: another process (the owner of
    // the order's partition before a rebalance) may have moved the order.
    // So "nothing to do" and "already processed" are only trusted once they
    // were decided on a state fresh from Postgres.
    let mut fresh = args.state.is_none();
    for _ in 0..MAX_STALE_RETRIES {
        if args.state.is_none() {
            args.state = ask(&args.repo, "order repo", DEFAULT_TIMEOUT, |reply| {
                OrderRepoMsg::LoadSaga { order_id, reply }
            })
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(e.to_string()))?;
            fresh = true;
        }
        let Some(current) = &args.state else {
            tracing::warn!(%order_id, event_type, "event for an unknown order ignored");
            return Ok(());
        };
        let decided = match &input {
            Input::Reply(envelope) => current.next(&envelope.event, &args.policy),
            // The deadline of the state as it is now, not as it was when
            // the timer was armed.
            Input::Deadline if current.deadline_at.is_some_and(|d| d > args.clock.now()) => None,
            Input::Deadline => current.on_deadline(&args.policy),
        };
        let Some(transition) = decided else {
            if !fresh {
                args.state = None;
                continue;
            }
            tracing::debug!(%order_id, status = %current.status, event_type, "no step needed");
            return Ok(());
        };
        let transition = with_jitter(transition);
        let (next, messages) = current.apply(&transition, args.clock.now());
        let (from_seq, from_attempts) = (current.seq, current.attempts);
        let outcome = ask(&args.repo, "order repo", DEFAULT_TIMEOUT, |reply| {
            OrderRepoMsg::Advance {
                step: Step {
                    event_id,
                    from_seq,
                    from_attempts,
                    next: next.clone(),
                    messages,
                },
                reply,
            }
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))?;
        match outcome {
            Advance::Applied => {
                log_step(current, &next, event_type);
                record_step(current, &next, &args.policy, args.clock.now());
                args.state = Some(next);
                args.outbox.wake();
                return Ok(());
            }
            // Processed before (by this saga or another): our copy may be
            // behind, so drop it; the next event reloads it.
            Advance::Duplicate => {
                args.state = None;
                return Ok(());
            }
            // Someone else moved the order: forget what we knew and decide again.
            Advance::Stale => args.state = None,
        }
    }
    Err(fail("order keeps changing under the saga".into()))
}

/// Spreads compensation retries out, so sagas that timed out together (a
/// long outage) do not all retry in the same instant.
fn with_jitter(mut transition: Transition) -> Transition {
    if transition.attempts > 1 {
        transition.wait = transition.wait.map(crate::retry::jittered);
    }
    transition
}

fn log_step(before: &SagaState, after: &SagaState, cause: &str) {
    let order_id = after.order_id;
    match after.status {
        OrderStatus::Failed if before.status != OrderStatus::Failed => tracing::error!(
            %order_id, reason = ?after.reason, attempts = after.attempts,
            "saga FAILED: compensation was never acknowledged; an operator must look (GET /admin/sagas/stuck)"
        ),
        _ if after.status == before.status => tracing::warn!(
            %order_id, status = %after.status, attempt = after.attempts,
            "compensation not acknowledged yet; sent again"
        ),
        _ => tracing::info!(
            %order_id, status = %after.status, reason = ?after.reason, cause, "order advanced"
        ),
    }
}

/// Counts a step in the metrics: how long the order spent in the step it
/// left, and the outcome when it is final. A forward step's start is its
/// deadline less the step timeout; an order's creation time is in its
/// (version 7) id.
fn record_step(before: &SagaState, after: &SagaState, policy: &SagaPolicy, now: DateTime<Utc>) {
    let metrics = crate::metrics::metrics();
    if before.status != after.status && before.attempts == 0 {
        if let Some(deadline) = before.deadline_at {
            let timeout = chrono::Duration::from_std(policy.step_timeout).unwrap_or_default();
            if let Ok(took) = (now - (deadline - timeout)).to_std() {
                metrics.saga_step(before.status, took);
            }
        }
    }
    if after.status.is_terminal() && !before.status.is_terminal() {
        let created = after.order_id.get_timestamp().map(|t| {
            let (secs, nanos) = t.to_unix();
            std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos)
        });
        let took = created
            .and_then(|c| std::time::SystemTime::now().duration_since(c).ok())
            .unwrap_or_default();
        metrics.saga_finished(after.status, after.reason.map(|r| r.as_str()), took);
    }
}

/// True for replies the saga may act on (the consumer routes only these).
pub fn is_saga_reply(event: &Event) -> bool {
    matches!(
        event,
        Event::InventoryReserved(_)
            | Event::InventoryRejected(_)
            | Event::InventoryReleased(_)
            | Event::PaymentAuthorized(_)
            | Event::PaymentDeclined(_)
            | Event::PaymentVoided(_)
    )
}

#[cfg(test)]
mod tests;
