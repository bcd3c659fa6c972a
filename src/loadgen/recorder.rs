//! What a run measured: the latency histograms (HDR, in microseconds), the
//! counts, errors by kind, and a per-second series. Only the tracker task
//! writes to it, so it needs no lock.

use super::mix::Outcome;
use hdrhistogram::{CreationError, Histogram};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest latency recorded, in microseconds (an hour): anything slower is
/// clamped, and a final-status timeout is far below it anyway.
const MAX_MICROS: u64 = 3_600_000_000;

/// A new histogram of microseconds with `digits` significant figures.
fn histogram(digits: u8) -> Result<Histogram<u64>, CreationError> {
    Histogram::new_with_bounds(1, MAX_MICROS, digits)
}

/// Orders by what happened to them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Orders the harness tried to send (one per scheduled arrival, or per
    /// worker turn).
    pub sent: u64,
    /// Answered `202 Accepted`.
    pub accepted: u64,
    /// Reached a final status (CONFIRMED, REJECTED or FAILED) over the WebSocket.
    pub finished: u64,
    /// Ended CONFIRMED.
    pub confirmed: u64,
    /// Ended REJECTED, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Ended otherwise than their mix entry intended (e.g. a confirm order
    /// that was rejected).
    pub unexpected: u64,
    /// Every error (the sum of `errors`).
    pub errors: u64,
}

/// One second of the run (second 0 starts when the first order is due).
#[derive(Debug, Clone)]
pub struct Second {
    /// Orders sent in this second.
    pub sent: u64,
    /// Final statuses received in this second.
    pub finished: u64,
    /// CONFIRMED received in this second.
    pub confirmed: u64,
    /// Errors in this second.
    pub errors: u64,
    /// Latency of the orders that finished in this second.
    pub latency: Histogram<u64>,
}

impl Second {
    fn new(template: &Histogram<u64>) -> Self {
        Self {
            sent: 0,
            finished: 0,
            confirmed: 0,
            errors: 0,
            latency: Histogram::new_from(template),
        }
    }
}

/// Everything measured so far.
#[derive(Debug)]
pub struct Recorder {
    /// Every final status: create to final, microseconds.
    pub all: Histogram<u64>,
    /// Only CONFIRMED orders (the figure the platform's targets name).
    pub confirmed: Histogram<u64>,
    /// Order counts.
    pub counts: Counts,
    /// Errors by kind (`http_503`, `timeout`, `connect`, `no_final_status`, ...).
    pub errors: BTreeMap<String, u64>,
    /// One entry per second since the start.
    pub seconds: Vec<Second>,
    /// When the last final status arrived, from the start.
    pub last_final: Option<Duration>,
    /// An empty per-second histogram, copied for each new second (copying
    /// cannot fail, creating can).
    second_template: Histogram<u64>,
}

impl Recorder {
    /// Nothing recorded yet.
    pub fn new() -> Result<Self, CreationError> {
        Ok(Self {
            all: histogram(3)?,
            confirmed: histogram(3)?,
            counts: Counts::default(),
            errors: BTreeMap::new(),
            seconds: Vec::new(),
            last_final: None,
            // Two significant digits: enough for a chart, and small.
            second_template: histogram(2)?,
        })
    }

    fn second(&mut self, since_start: Duration) -> &mut Second {
        // A run is at most hours long; the clamp only guards the arithmetic.
        let index = usize::try_from(since_start.as_secs())
            .unwrap_or(0)
            .min(1 << 20);
        if self.seconds.len() <= index {
            let template = &self.second_template;
            self.seconds
                .resize_with(index + 1, || Second::new(template));
        }
        &mut self.seconds[index]
    }

    /// An order was sent at `since_start`.
    pub fn sent(&mut self, since_start: Duration) {
        self.counts.sent += 1;
        self.second(since_start).sent += 1;
    }

    /// An order was accepted.
    pub fn accepted(&mut self) {
        self.counts.accepted += 1;
    }

    /// An error of `kind` at `since_start`.
    pub fn error(&mut self, kind: &str, since_start: Duration) {
        self.counts.errors += 1;
        *self.errors.entry(kind.to_owned()).or_default() += 1;
        self.second(since_start).errors += 1;
    }

    /// An order intended as `intended` reached `status` (with `reason`)
    /// `latency` after it was due, at `since_start`.
    pub fn finished(
        &mut self,
        intended: Outcome,
        status: &str,
        reason: Option<&str>,
        latency: Duration,
        since_start: Duration,
    ) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_MICROS)
            .clamp(1, MAX_MICROS);
        self.all.saturating_record(micros);
        self.counts.finished += 1;
        let confirmed = status == "CONFIRMED";
        if confirmed {
            self.counts.confirmed += 1;
            self.confirmed.saturating_record(micros);
        } else if status == "REJECTED" {
            *self
                .counts
                .rejected
                .entry(reason.unwrap_or("UNKNOWN").to_owned())
                .or_default() += 1;
        } else {
            // FAILED: the saga gave up compensating; an operator's case.
            self.error("saga_failed", since_start);
        }
        if intended.expected() != (status, reason) {
            self.counts.unexpected += 1;
        }
        self.last_final = Some(since_start);
        let second = self.second(since_start);
        second.finished += 1;
        if confirmed {
            second.confirmed += 1;
        }
        second.latency.saturating_record(micros);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outcomes_errors_and_seconds() {
        let mut recorder = Recorder::new().unwrap();
        let ms = Duration::from_millis;
        recorder.sent(ms(10));
        recorder.sent(ms(1500));
        recorder.accepted();
        recorder.finished(Outcome::Confirm, "CONFIRMED", None, ms(40), ms(50));
        recorder.finished(
            Outcome::Confirm,
            "REJECTED",
            Some("OUT_OF_STOCK"),
            ms(30),
            ms(1600),
        );
        recorder.error("http_503", ms(2100));
        assert_eq!(recorder.counts.sent, 2);
        assert_eq!(recorder.counts.finished, 2);
        assert_eq!(recorder.counts.confirmed, 1);
        assert_eq!(recorder.counts.rejected["OUT_OF_STOCK"], 1);
        assert_eq!(recorder.counts.unexpected, 1);
        assert_eq!(recorder.errors["http_503"], 1);
        assert_eq!(recorder.seconds.len(), 3);
        assert_eq!(recorder.seconds[1].finished, 1);
        assert_eq!(recorder.seconds[2].errors, 1);
        assert_eq!(recorder.confirmed.len(), 1);
        let p50 = recorder.all.value_at_quantile(0.5);
        assert!((29_000..=31_000).contains(&p50), "{p50}");
    }
}
