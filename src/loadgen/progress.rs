//! Progress while a run goes: a bar with live throughput on stderr when it
//! is a terminal, otherwise (CI, a pipe) one plain line every few seconds,
//! so logs stay readable.

use super::tracker::Live;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often the display is refreshed.
const TICK: Duration = Duration::from_millis(250);
/// How often a plain line is written when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Shows progress until `stop` turns true. `expected` is the run's length
/// in seconds (duration mode) or orders (order-count mode).
pub async fn show(
    live: Arc<Live>,
    start: Instant,
    length: Length,
    quiet: bool,
    mut stop: watch::Receiver<bool>,
) {
    if quiet {
        return;
    }
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        let (len, template) = match length {
            Length::Seconds(s) => (
                s,
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} s  {msg}",
            ),
            Length::Orders(n) => (
                n,
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} orders  {msg}",
            ),
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        Some(bar)
    } else {
        None
    };
    // (time, final statuses) over the last second, for the live rate.
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut last_line = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let now = Instant::now();
        let finished = live.finished.load(Ordering::Relaxed);
        samples.push_back((now, finished));
        while samples.len() > 1 && now.duration_since(samples[0].0) > Duration::from_secs(1) {
            samples.pop_front();
        }
        let rate = match (samples.front(), samples.back()) {
            (Some((t0, f0)), Some((t1, f1))) if t1 > t0 => {
                (f1 - f0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        let message = format!(
            "{rate:.0} final/s, {} sent, {finished} final, {} in flight, {} errors",
            live.sent.load(Ordering::Relaxed),
            live.in_flight.load(Ordering::Relaxed),
            live.errors.load(Ordering::Relaxed),
        );
        match &bar {
            Some(bar) => {
                let position = match length {
                    Length::Seconds(s) => now.duration_since(start).as_secs().min(s),
                    Length::Orders(_) => finished + live.errors.load(Ordering::Relaxed),
                };
                bar.set_position(position);
                bar.set_message(message);
                bar.tick();
            }
            None if now.duration_since(last_line) >= LINE_EVERY => {
                last_line = now;
                eprintln!(
                    "loadgen {:>5.1} s: {message}",
                    now.duration_since(start).as_secs_f64()
                );
            }
            None => {}
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

/// What the bar counts to.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    /// Seconds of sending.
    Seconds(u64),
    /// Orders.
    Orders(u64),
}
