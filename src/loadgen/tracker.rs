//! The tracker: the one task that matches accepted orders with the final
//! statuses the WebSocket brings, records latencies and errors, gives up on
//! orders that never finish, and tells closed-loop workers when their order
//! is done. Everything else talks to it through [`Event`]s.

use super::mix::Outcome;
use super::recorder::Recorder;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

/// Tells a closed-loop worker its order is settled: `true` for a final
/// status, `false` for an error or a timeout.
pub type Done = oneshot::Sender<bool>;

/// Something that happened to an order, or to the harness.
#[derive(Debug)]
pub enum Event {
    /// An order was due (open loop) or sent (closed loop) at `due`.
    Sent {
        /// When.
        due: Instant,
    },
    /// The platform accepted an order (`202`).
    Accepted {
        /// The order's id.
        order_id: Uuid,
        /// When it was due: latency is measured from here.
        due: Instant,
        /// What it was built to end as.
        intended: Outcome,
        /// A closed-loop worker waiting for it.
        done: Option<Done>,
    },
    /// Sending an order failed; `kind` names how (`http_503`, `timeout`, ...).
    Failed {
        /// The error kind.
        kind: String,
        /// A closed-loop worker waiting for it.
        done: Option<Done>,
    },
    /// A final status arrived over the WebSocket at `at`.
    Final {
        /// The order.
        order_id: Uuid,
        /// CONFIRMED, REJECTED or FAILED.
        status: String,
        /// Why, for REJECTED and FAILED.
        reason: Option<String>,
        /// When the frame was read.
        at: Instant,
    },
    /// The WebSocket closed or failed: no more final statuses will come.
    WebSocketLost,
    /// Every order has been sent and answered over HTTP.
    SendingDone,
}

/// Live figures for the progress display, updated by the tracker.
#[derive(Debug, Default)]
pub struct Live {
    /// Orders sent.
    pub sent: AtomicU64,
    /// Final statuses received.
    pub finished: AtomicU64,
    /// Errors.
    pub errors: AtomicU64,
    /// Orders sent and not yet final, failed or given up on.
    pub in_flight: AtomicUsize,
}

/// An accepted order waiting for its final status.
struct Pending {
    due: Instant,
    intended: Outcome,
    done: Option<Done>,
}

/// A final status that arrived before its order's `202` was read (or for
/// an order of someone else's on a shared platform).
struct Early {
    status: String,
    reason: Option<String>,
    at: Instant,
}

/// Runs until sending is done and every accepted order is final or given
/// up on (after `final_timeout`); returns what it recorded.
pub async fn run(
    mut events: mpsc::UnboundedReceiver<Event>,
    mut recorder: Recorder,
    start: Instant,
    final_timeout: Duration,
    live: Arc<Live>,
) -> Recorder {
    let mut pending: HashMap<Uuid, Pending> = HashMap::new();
    let mut early: HashMap<Uuid, Early> = HashMap::new();
    let mut sending_done = false;
    let mut sweep = tokio::time::interval(Duration::from_millis(100));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let since = |at: Instant| at.saturating_duration_since(start);
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                match event {
                    Event::Sent { due } => {
                        live.sent.fetch_add(1, Ordering::Relaxed);
                        recorder.sent(since(due));
                    }
                    Event::Accepted { order_id, due, intended, done } => {
                        recorder.accepted();
                        let order = Pending { due, intended, done };
                        match early.remove(&order_id) {
                            Some(f) => finish(&mut recorder, &live, order, &f.status, f.reason.as_deref(), f.at, start),
                            None => { pending.insert(order_id, order); }
                        }
                    }
                    Event::Failed { kind, done } => {
                        fail(&mut recorder, &live, &kind, since(Instant::now()), done);
                    }
                    Event::Final { order_id, status, reason, at } => match pending.remove(&order_id) {
                        Some(order) => finish(&mut recorder, &live, order, &status, reason.as_deref(), at, start),
                        None => { early.insert(order_id, Early { status, reason, at }); }
                    },
                    Event::WebSocketLost => {
                        // Counted once; the orders it strands are counted
                        // as they time out.
                        recorder.error("websocket", since(Instant::now()));
                        live.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::SendingDone => sending_done = true,
                }
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                let overdue: Vec<Uuid> = pending
                    .iter()
                    .filter(|(_, p)| now.saturating_duration_since(p.due) > final_timeout)
                    .map(|(id, _)| *id)
                    .collect();
                for id in overdue {
                    if let Some(order) = pending.remove(&id) {
                        fail(&mut recorder, &live, "no_final_status", since(now), order.done);
                    }
                }
                // Updates of orders that are not ours (a shared platform).
                early.retain(|_, e| now.saturating_duration_since(e.at) <= final_timeout);
            }
        }
        if sending_done && pending.is_empty() {
            break;
        }
    }
    recorder
}

fn finish(
    recorder: &mut Recorder,
    live: &Live,
    order: Pending,
    status: &str,
    reason: Option<&str>,
    at: Instant,
    start: Instant,
) {
    recorder.finished(
        order.intended,
        status,
        reason,
        at.saturating_duration_since(order.due),
        at.saturating_duration_since(start),
    );
    live.finished.fetch_add(1, Ordering::Relaxed);
    live.in_flight.fetch_sub(1, Ordering::Relaxed);
    if status == "FAILED" {
        live.errors.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(done) = order.done {
        let _ = done.send(true);
    }
}

fn fail(
    recorder: &mut Recorder,
    live: &Live,
    kind: &str,
    since_start: Duration,
    done: Option<Done>,
) {
    recorder.error(kind, since_start);
    live.errors.fetch_add(1, Ordering::Relaxed);
    live.in_flight.fetch_sub(1, Ordering::Relaxed);
    if let Some(done) = done {
        let _ = done.send(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn matches_finals_that_arrive_before_the_202() {
        let (tx, rx) = mpsc::unbounded_channel();
        let live = Arc::new(Live::default());
        let start = Instant::now();
        let task = tokio::spawn(run(
            rx,
            Recorder::new().unwrap(),
            start,
            Duration::from_secs(5),
            live.clone(),
        ));
        let (early, late) = (Uuid::new_v4(), Uuid::new_v4());
        for _ in 0..3 {
            live.in_flight.fetch_add(1, Ordering::Relaxed);
            tx.send(Event::Sent { due: start }).unwrap();
        }
        let final_of = |order_id, status: &str| Event::Final {
            order_id,
            status: status.into(),
            reason: None,
            at: start + Duration::from_millis(40),
        };
        tx.send(final_of(early, "CONFIRMED")).unwrap();
        for order_id in [early, late] {
            tx.send(Event::Accepted {
                order_id,
                due: start,
                intended: Outcome::Confirm,
                done: None,
            })
            .unwrap();
        }
        tx.send(final_of(late, "CONFIRMED")).unwrap();
        tx.send(Event::Failed {
            kind: "http_503".into(),
            done: None,
        })
        .unwrap();
        tx.send(Event::SendingDone).unwrap();
        let recorder = task.await.unwrap();
        assert_eq!(recorder.counts.sent, 3);
        assert_eq!(recorder.counts.finished, 2);
        assert_eq!(recorder.counts.errors, 1);
        assert_eq!(live.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(recorder.all.max() / 1000, 40);
    }

    #[tokio::test]
    async fn gives_up_on_orders_that_never_finish() {
        let (tx, rx) = mpsc::unbounded_channel();
        let live = Arc::new(Live::default());
        let start = Instant::now();
        let task = tokio::spawn(run(
            rx,
            Recorder::new().unwrap(),
            start,
            Duration::from_millis(200),
            live.clone(),
        ));
        let (done, waiting) = oneshot::channel();
        live.in_flight.fetch_add(1, Ordering::Relaxed);
        tx.send(Event::Accepted {
            order_id: Uuid::new_v4(),
            due: start,
            intended: Outcome::Confirm,
            done: Some(done),
        })
        .unwrap();
        tx.send(Event::SendingDone).unwrap();
        assert!(!waiting.await.unwrap(), "the worker hears it failed");
        let recorder = task.await.unwrap();
        assert_eq!(recorder.errors["no_final_status"], 1);
    }
}
