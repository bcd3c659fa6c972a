//! The saga's timers on tokio's paused clock: a repository stand-in
//! answers its loads and records its steps with the (virtual) instant
//! each was asked for, so a test sees exactly when a deadline fired
//! without Postgres, Kafka or any real waiting.

use super::*;
use crate::events::{InventoryReserved, PaymentVoided, RejectReason};
use crate::kafka::RebalanceListener;
use crate::order::placement::Placement;
use crate::outbox::RelayMsg;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A step the saga asked the repository to persist.
struct Asked {
    /// When, on tokio's clock.
    at: Instant,
    /// The step.
    step: Step,
    /// Whether the repository stored it (or refused it, as a database that
    /// is down would).
    applied: bool,
}

/// Stands in for the order repository: loads return the state it holds;
/// steps are applied to it, after refusing the first `refuse`, and each
/// is reported on `asked`.
struct FakeRepo;

struct FakeRepoState {
    state: SagaState,
    refuse: usize,
    asked: mpsc::UnboundedSender<Asked>,
}

impl Actor for FakeRepo {
    type Msg = OrderRepoMsg;
    type State = FakeRepoState;
    type Arguments = FakeRepoState;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        repo: FakeRepoState,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(repo)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        repo: &mut FakeRepoState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            OrderRepoMsg::LoadSaga { reply, .. } => {
                let _ = reply.send(Ok(Some(repo.state.clone())));
            }
            OrderRepoMsg::Advance { step, reply } => {
                let applied = repo.refuse == 0;
                if applied {
                    repo.state = step.next.clone();
                    let _ = reply.send(Ok(Advance::Applied));
                } else {
                    // Unanswered: the saga's step fails.
                    repo.refuse -= 1;
                    drop(reply);
                }
                let _ = repo.asked.send(Asked {
                    at: Instant::now(),
                    step,
                    applied,
                });
            }
            _ => unreachable!("a saga only loads and advances"),
        }
        Ok(())
    }
}

/// Stands in for the outbox relay: wake-ups go nowhere.
struct IdleRelay;

impl Actor for IdleRelay {
    type Msg = RelayMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        _message: Self::Msg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// The wall-clock time the saga's clock reads when a test starts.
fn start() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn after(wait: Duration) -> DateTime<Utc> {
    start() + chrono::Duration::from_std(wait).unwrap()
}

/// An order in `status`, its step due at `deadline_at`.
fn order(status: OrderStatus, deadline_at: DateTime<Utc>) -> SagaState {
    SagaState {
        order_id: Uuid::from_u128(1),
        customer_id: "alice".into(),
        correlation_id: Uuid::from_u128(2),
        status,
        reason: None,
        seq: 1,
        items: vec![],
        total_cents: 2900,
        currency: "EUR".into(),
        payment_token: "tok_visa".into(),
        deadline_at: Some(deadline_at),
        attempts: 0,
    }
}

/// A running saga on tokio's paused clock, and what it asks of its repository.
struct Running {
    saga: ActorRef<SagaMsg>,
    /// Ends when the saga stops.
    done: tokio::task::JoinHandle<()>,
    asked: mpsc::UnboundedReceiver<Asked>,
    /// When the saga started, on tokio's clock.
    started: Instant,
}

/// Starts the saga of `state`, as the supervisor does with a state in hand
/// (a new order, or one resumed from Postgres), on a clock that reads
/// [`start`] now and follows tokio's (paused) clock.
async fn run(state: SagaState, policy: SagaPolicy, refuse: usize) -> Running {
    let (asked_tx, asked) = mpsc::unbounded_channel();
    let repo = FakeRepoState {
        state: state.clone(),
        refuse,
        asked: asked_tx,
    };
    let (repo, _) = Actor::spawn(None, FakeRepo, repo).await.unwrap();
    let (relay, _) = Actor::spawn(None, IdleRelay, ()).await.unwrap();
    let placement = Arc::new(Placement::new("replies"));
    placement.partition_counts(&[("replies".into(), 1)]);
    placement.assigned(&[("replies".into(), 0)]);
    let started = Instant::now();
    let args = SagaArgs {
        order_id: state.order_id,
        state: Some(state),
        repo,
        outbox: OutboxNotifier::waking(relay),
        policy,
        placement,
        clock: SagaClock::Tokio {
            at: start(),
            since: started,
        },
    };
    let (saga, done) = Actor::spawn(None, OrderSaga, args).await.unwrap();
    Running {
        saga,
        done,
        asked,
        started,
    }
}

impl Running {
    /// Hands the saga a reply and waits until it is handled.
    async fn reply(&self, event: Event) {
        let envelope = Envelope::new(Uuid::from_u128(1), Uuid::from_u128(2), event);
        let handled = ask(&self.saga, "saga", DEFAULT_TIMEOUT, |reply| {
            SagaMsg::Reply {
                envelope: Box::new(envelope),
                reply,
            }
        })
        .await;
        assert_eq!(handled, Ok(Ok(())));
    }

    /// Returns once the saga has handled every message sent to it before:
    /// it answers a reply it never acts on (a void it did not ask for)
    /// after them, in mailbox order. Instead of sleeping "long enough".
    async fn barrier(&self) {
        self.reply(Event::PaymentVoided(PaymentVoided {
            authorization_id: None,
        }))
        .await;
    }

    /// How long after the saga started `at` is.
    fn since_start(&self, at: Instant) -> Duration {
        at - self.started
    }

    /// The next step the saga asks for, whenever (virtually) it comes.
    async fn next_step(&mut self) -> Asked {
        let within = Duration::from_secs(24 * 3600);
        tokio::time::timeout(within, self.asked.recv())
            .await
            .expect("a step within a day")
            .expect("the repository is running")
    }
}

fn types(step: &Step) -> Vec<&'static str> {
    step.messages.iter().map(|m| m.event.type_name()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_step_deadline_fires_at_the_configured_timeout_and_not_before() {
    let policy = SagaPolicy::default();
    let timeout = policy.step_timeout;
    let mut saga = run(order(OrderStatus::Pending, after(timeout)), policy, 0).await;
    // Stock is reserved 10 s in: the payment step gets its own timeout.
    tokio::time::advance(Duration::from_secs(10)).await;
    saga.reply(Event::InventoryReserved(InventoryReserved {
        items: vec![],
    }))
    .await;
    let reserved = saga.next_step().await;
    assert_eq!(reserved.step.next.status, OrderStatus::InventoryReserved);
    let due = Duration::from_secs(10) + timeout;
    assert_eq!(reserved.step.next.deadline_at, Some(after(due)));

    // A millisecond before: nothing, and the stock step's deadline (30 s)
    // that passed meanwhile was superseded.
    tokio::time::advance(due - Duration::from_secs(10) - Duration::from_millis(1)).await;
    saga.barrier().await;
    assert!(saga.asked.try_recv().is_err(), "a step before the deadline");

    // At the deadline, to the millisecond: compensation for the timeout.
    let timed_out = saga.next_step().await;
    assert_eq!(saga.since_start(timed_out.at), due);
    let next = &timed_out.step.next;
    assert_eq!(next.status, OrderStatus::Compensating);
    assert_eq!(next.reason, Some(RejectReason::Timeout));
    assert_eq!(
        types(&timed_out.step),
        ["OrderStatusChanged", "ReleaseInventory", "VoidPayment"]
    );
    assert_eq!(next.deadline_at, Some(after(due + policy.retry_base)));
}

#[tokio::test(start_paused = true)]
async fn a_resumed_deadline_fires_at_its_persisted_instant_not_a_fresh_timeout() {
    // Persisted 18 s into its 30 s step by a process that then went away.
    let policy = SagaPolicy::default();
    let left = Duration::from_secs(12);
    let mut saga = run(
        order(OrderStatus::InventoryReserved, after(left)),
        policy,
        0,
    )
    .await;
    tokio::time::advance(left - Duration::from_millis(1)).await;
    saga.barrier().await;
    assert!(saga.asked.try_recv().is_err(), "a step before the deadline");
    let timed_out = saga.next_step().await;
    assert_eq!(saga.since_start(timed_out.at), left);
    assert_eq!(timed_out.step.next.status, OrderStatus::Compensating);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_passed_while_nobody_watched_fires_at_once() {
    let overdue = start() - chrono::Duration::seconds(5);
    let mut saga = run(
        order(OrderStatus::Pending, overdue),
        SagaPolicy::default(),
        0,
    )
    .await;
    let timed_out = saga.next_step().await;
    assert_eq!(saga.since_start(timed_out.at), Duration::ZERO);
    assert_eq!(timed_out.step.next.reason, Some(RejectReason::Timeout));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_step_that_cannot_be_stored_is_tried_again_within_one_to_two_seconds() {
    let policy = SagaPolicy::default();
    let timeout = policy.step_timeout;
    let mut saga = run(order(OrderStatus::Pending, after(timeout)), policy, 1).await;
    let refused = saga.next_step().await;
    assert!(!refused.applied);
    assert_eq!(saga.since_start(refused.at), timeout);
    let stored = saga.next_step().await;
    assert!(stored.applied);
    let retried_after = stored.at - refused.at;
    assert!(
        retried_after >= Duration::from_secs(1) && retried_after <= Duration::from_secs(2),
        "retried after {retried_after:?}"
    );
    assert_eq!(stored.step.next.status, OrderStatus::Compensating);
}

#[tokio::test(start_paused = true)]
async fn compensation_is_sent_again_at_each_persisted_retry_deadline_then_fails() {
    let policy = SagaPolicy::default();
    // Compensating after a decline; the first release is due back in retry_base.
    let mut compensating = order(OrderStatus::Compensating, after(policy.retry_base));
    compensating.reason = Some(RejectReason::PaymentDeclined);
    compensating.attempts = 1;
    let mut saga = run(compensating, policy, 0).await;
    let mut due = after(policy.retry_base);
    for attempt in 2..=policy.max_attempts {
        let retry = saga.next_step().await;
        let fired = start() + chrono::Duration::from_std(saga.since_start(retry.at)).unwrap();
        // Timers have millisecond resolution.
        assert!(
            fired >= due && fired - due < chrono::Duration::milliseconds(1),
            "attempt {attempt} fired at {fired}, due at {due}"
        );
        let next = &retry.step.next;
        assert_eq!(
            (next.status, next.attempts),
            (OrderStatus::Compensating, attempt)
        );
        assert_eq!(types(&retry.step), ["ReleaseInventory"]);
        let whole = policy.retry_wait(attempt);
        let wait = (next.deadline_at.unwrap() - fired).to_std().unwrap();
        assert!(
            wait >= whole / 2 && wait <= whole,
            "attempt {attempt} waits {wait:?}"
        );
        due = next.deadline_at.unwrap();
    }
    let failed = saga.next_step().await;
    let fired = start() + chrono::Duration::from_std(saga.since_start(failed.at)).unwrap();
    assert!(fired >= due && fired - due < chrono::Duration::milliseconds(1));
    assert_eq!(failed.step.next.status, OrderStatus::Failed);
    assert_eq!(failed.step.next.deadline_at, None);
    // FAILED is terminal: the saga stops, and asks for nothing more (in
    // an hour, on the paused clock).
    saga.done.await.unwrap();
    let later = tokio::time::timeout(Duration::from_secs(3600), saga.asked.recv()).await;
    assert!(later.is_err(), "a step after FAILED");
}

#[test]
fn compensation_waits_double_with_equal_jitter_up_to_the_cap() {
    let policy = SagaPolicy::default();
    // (attempt, shortest, longest wait) in seconds, as SagaPolicy documents
    // them: the first attempt waits retry_base (5 s); each further one twice
    // the last, capped at retry_max (120 s), and jittered between half of
    // it and all of it.
    let expected = [
        (1, 5, 5),
        (2, 5, 10),
        (3, 10, 20),
        (4, 20, 40),
        (5, 40, 80),
        (6, 60, 120),
    ];
    for (attempt, shortest, longest) in expected {
        let decided = if attempt == 1 {
            // Entering compensation (here, a timed-out step).
            order(OrderStatus::Pending, start()).on_deadline(&policy)
        } else {
            let mut compensating = order(OrderStatus::Compensating, start());
            compensating.attempts = attempt - 1;
            compensating.on_deadline(&policy)
        };
        let decided = decided.expect("a step");
        assert_eq!(decided.attempts, attempt);
        let (shortest, longest) = (Duration::from_secs(shortest), Duration::from_secs(longest));
        let waits: Vec<Duration> = (0..500)
            .map(|_| with_jitter(decided.clone()).wait.expect("a deadline"))
            .collect();
        let (least, most) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(
            *least >= shortest && *most <= longest,
            "attempt {attempt}: {least:?}..{most:?}"
        );
        // Spread over the range, not stuck at one end of it.
        let tenth = (longest - shortest) / 10;
        assert!(*least <= shortest + tenth && *most >= longest - tenth);
    }
    // After the last attempt there is no further wait: the saga fails.
    let mut exhausted = order(OrderStatus::Compensating, start());
    exhausted.attempts = policy.max_attempts;
    let failed = exhausted.on_deadline(&policy).expect("a step");
    assert_eq!(failed.wait, None);
}
