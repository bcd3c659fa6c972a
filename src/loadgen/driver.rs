//! Sending orders: the open loop (one task per order, each sent when due)
//! and the closed loop (N workers, each sending its next order once the
//! previous one is settled), with the tracker, the WebSocket reader and the
//! progress display running beside them.

use super::arrival::{Length, Schedule};
use super::client::OrderClient;
use super::mix::{Mix, Outcome};
use super::progress;
use super::recorder::Recorder;
use super::tracker::{self, Done, Event, Live};
use super::ws;
use super::LoadgenError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Open or closed loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// A fixed arrival rate, orders per second.
    Open {
        /// Orders per second.
        rate: f64,
    },
    /// A fixed number of workers.
    Closed {
        /// Workers.
        concurrency: usize,
    },
}

/// How to drive the platform.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Open or closed loop.
    pub load: Load,
    /// How long.
    pub length: Length,
    /// Which outcomes.
    pub mix: Mix,
    /// How long an accepted order may take to become final.
    pub final_timeout: Duration,
    /// Open loop: orders in flight beyond which a due order is not sent
    /// (counted as `in_flight_limit`), so a stalled platform cannot make
    /// the harness exhaust memory or sockets.
    pub max_in_flight: usize,
    /// No progress display.
    pub quiet: bool,
}

/// What a run produced, before it becomes a report.
pub struct Outcomes {
    /// Everything recorded.
    pub recorder: Recorder,
    /// When sending started (wall clock).
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Time spent sending.
    pub sending: Duration,
    /// Time until the last order was settled.
    pub elapsed: Duration,
}

/// Runs `plan` with `client`, watching final statuses on `sockets`.
pub async fn drive(
    plan: &Plan,
    client: Arc<OrderClient>,
    sockets: Vec<ws::Socket>,
) -> Result<Outcomes, LoadgenError> {
    let recorder = Recorder::new()?;
    let live = Arc::new(Live::default());
    let (events, events_rx) = mpsc::unbounded_channel();
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|socket| tokio::spawn(ws::read(socket, events.clone())))
        .collect();
    let start = Instant::now();
    let started_at = chrono::Utc::now();
    let tracker = tokio::spawn(tracker::run(
        events_rx,
        recorder,
        start,
        plan.final_timeout,
        live.clone(),
    ));
    let (stop_progress, stop_rx) = watch::channel(false);
    let bar_length = match plan.length {
        Length::Duration(d) => progress::Length::Seconds(d.as_secs().max(1)),
        Length::Orders(n) => progress::Length::Orders(n),
    };
    let progress = tokio::spawn(progress::show(
        live.clone(),
        start,
        bar_length,
        plan.quiet,
        stop_rx,
    ));

    match plan.load {
        Load::Open { rate } => open_loop(plan, rate, start, &client, &events, &live).await,
        Load::Closed { concurrency } => {
            closed_loop(plan, concurrency, start, &client, &events, &live).await
        }
    }
    let sending = start.elapsed();
    let _ = events.send(Event::SendingDone);
    drop(events);
    let recorder = tracker
        .await
        .map_err(|e| LoadgenError::Setup(format!("the tracker task failed: {e}")))?;
    let elapsed = start.elapsed();
    for reader in readers {
        reader.abort();
    }
    let _ = stop_progress.send(true);
    let _ = progress.await;
    Ok(Outcomes {
        recorder,
        started_at,
        sending,
        elapsed,
    })
}

/// Sends order `n` and reports what happened to the tracker.
async fn place(
    client: Arc<OrderClient>,
    events: mpsc::UnboundedSender<Event>,
    outcome: Outcome,
    n: u64,
    due: Instant,
    done: Option<Done>,
) {
    let event = match client.place(outcome, n).await {
        Ok(order_id) => Event::Accepted {
            order_id,
            due,
            intended: outcome,
            done,
        },
        Err(kind) => Event::Failed { kind, done },
    };
    let _ = events.send(event);
}

async fn open_loop(
    plan: &Plan,
    rate: f64,
    start: Instant,
    client: &Arc<OrderClient>,
    events: &mpsc::UnboundedSender<Event>,
    live: &Arc<Live>,
) {
    let schedule = Schedule {
        start,
        rate,
        length: plan.length,
    };
    let mut picker = plan.mix.picker();
    let mut tasks = JoinSet::new();
    let mut n = 0;
    while let Some(due) = schedule.due(n) {
        tokio::time::sleep_until(due).await;
        let outcome = picker.next_outcome();
        let _ = events.send(Event::Sent { due });
        // Counted before the request, so the tracker can never see an
        // order settle that was not yet counted as in flight.
        let in_flight = live.in_flight.fetch_add(1, Ordering::Relaxed);
        if in_flight >= plan.max_in_flight {
            let _ = events.send(Event::Failed {
                kind: "in_flight_limit".into(),
                done: None,
            });
        } else {
            tasks.spawn(place(client.clone(), events.clone(), outcome, n, due, None));
        }
        n += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn closed_loop(
    plan: &Plan,
    concurrency: usize,
    start: Instant,
    client: &Arc<OrderClient>,
    events: &mpsc::UnboundedSender<Event>,
    live: &Arc<Live>,
) {
    let picker = Arc::new(Mutex::new(plan.mix.picker()));
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, events, live, picker, issued) = (
            client.clone(),
            events.clone(),
            live.clone(),
            picker.clone(),
            issued.clone(),
        );
        let length = plan.length;
        workers.spawn(async move {
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                let more = match length {
                    Length::Orders(count) => n < count,
                    Length::Duration(d) => start.elapsed() < d,
                };
                if !more {
                    break;
                }
                let outcome = match picker.lock() {
                    Ok(mut picker) => picker.next_outcome(),
                    Err(poisoned) => poisoned.into_inner().next_outcome(),
                };
                let due = Instant::now();
                let _ = events.send(Event::Sent { due });
                live.in_flight.fetch_add(1, Ordering::Relaxed);
                let (done, settled) = oneshot::channel();
                place(client.clone(), events.clone(), outcome, n, due, Some(done)).await;
                if !settled.await.unwrap_or(false) {
                    // An error comes back at once; pausing keeps a failing
                    // platform from being hammered in a tight loop.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
}
