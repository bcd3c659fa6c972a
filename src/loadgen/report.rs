//! The result of a run: the JSON document `--out` writes (configuration,
//! counts, throughput, latency percentiles, per-second series) and the
//! human summary printed at the end.

use super::recorder::{Counts, Recorder};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// What was run, as recorded in the result.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// `open` (fixed arrival rate) or `closed` (fixed concurrency).
    pub mode: &'static str,
    /// Open loop: orders per second.
    pub rate: Option<f64>,
    /// Closed loop: workers.
    pub concurrency: Option<usize>,
    /// How long orders were sent, in seconds, when bounded by time.
    pub duration_s: Option<f64>,
    /// How many orders were sent, when bounded by count.
    pub orders: Option<u64>,
    /// The outcome mix, as `--mix` takes it.
    pub mix: String,
    /// `embedded` or the order service's URL.
    pub target: String,
    /// Simulated customers (one token each, unless an admin token is used).
    pub customers: usize,
    /// Products in stock that orders are spread over.
    pub products: usize,
    /// How long an accepted order may take to reach a final status before
    /// it counts as an error, in seconds.
    pub final_timeout_s: f64,
    /// Logical CPUs of the machine the harness ran on.
    pub cpus: usize,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Percentiles of a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| round3(micros as f64 / 1000.0);
        Self {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: round3(histogram.mean() / 1000.0),
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Rates over the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Throughput {
    /// Orders sent per second of sending.
    pub offered_per_s: f64,
    /// Final statuses per second, from the start to the last final status.
    pub finished_per_s: f64,
    /// CONFIRMED per second, over the same span.
    pub confirmed_per_s: f64,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SecondReport {
    /// Seconds since the start.
    pub second: usize,
    /// Orders sent.
    pub sent: u64,
    /// Final statuses received.
    pub finished: u64,
    /// CONFIRMED received.
    pub confirmed: u64,
    /// Errors.
    pub errors: u64,
    /// Latency of the orders that finished in this second, ms (0 if none).
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub max_ms: f64,
}

/// The whole result, as written to `--out`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run.
    pub config: RunConfig,
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
    /// Seconds spent sending orders.
    pub sending_s: f64,
    /// Seconds from the start until the last order was final or given up on.
    pub elapsed_s: f64,
    /// Orders by what happened to them.
    pub counts: Counts,
    /// Errors by kind: `http_<status>`, `timeout` (no HTTP answer in time),
    /// `connect`, `request`, `bad_response`, `no_final_status`,
    /// `saga_failed`, `websocket`, `in_flight_limit`.
    pub errors: BTreeMap<String, u64>,
    /// Rates.
    pub throughput: Throughput,
    /// Create to final status (CONFIRMED or REJECTED), every order.
    pub latency_ms: Percentiles,
    /// Create to CONFIRMED only.
    pub confirmed_latency_ms: Percentiles,
    /// One entry per second.
    pub series: Vec<SecondReport>,
}

impl Report {
    /// Builds the report from what was recorded.
    pub fn new(
        config: RunConfig,
        started_at: String,
        sending: Duration,
        elapsed: Duration,
        recorder: &Recorder,
    ) -> Self {
        let per_s = |count: u64, span: Duration| {
            if span.is_zero() {
                0.0
            } else {
                round3(count as f64 / span.as_secs_f64())
            }
        };
        // The span that final statuses came in; at least one second so a
        // tiny run does not report an absurd rate.
        let final_span = recorder
            .last_final
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        let series = recorder
            .seconds
            .iter()
            .enumerate()
            .map(|(second, s)| {
                let p = Percentiles::of(&s.latency);
                SecondReport {
                    second,
                    sent: s.sent,
                    finished: s.finished,
                    confirmed: s.confirmed,
                    errors: s.errors,
                    p50_ms: p.p50,
                    p99_ms: p.p99,
                    max_ms: p.max,
                }
            })
            .collect();
        Self {
            config,
            started_at,
            sending_s: round3(sending.as_secs_f64()),
            elapsed_s: round3(elapsed.as_secs_f64()),
            counts: recorder.counts.clone(),
            errors: recorder.errors.clone(),
            throughput: Throughput {
                offered_per_s: per_s(recorder.counts.sent, sending),
                finished_per_s: per_s(recorder.counts.finished, final_span),
                confirmed_per_s: per_s(recorder.counts.confirmed, final_span),
            },
            latency_ms: Percentiles::of(&recorder.all),
            confirmed_latency_ms: Percentiles::of(&recorder.confirmed),
            series,
        }
    }

    /// The summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let load = match (c.rate, c.concurrency) {
            (Some(rate), _) => format!("open loop at {rate} orders/s"),
            (_, Some(n)) => format!("closed loop with {n} workers"),
            _ => "?".to_owned(),
        };
        let _ = writeln!(
            out,
            "shop loadgen: {load} against {}, mix {}",
            c.target, c.mix
        );
        let k = &self.counts;
        let rejected: Vec<String> = k
            .rejected
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        let _ = writeln!(
            out,
            "  orders     {} sent in {:.1} s, {} accepted, {} final ({} confirmed, {} rejected{}), {} not as intended",
            k.sent,
            self.sending_s,
            k.accepted,
            k.finished,
            k.confirmed,
            k.rejected.values().sum::<u64>(),
            if rejected.is_empty() {
                String::new()
            } else {
                format!(": {}", rejected.join(", "))
            },
            k.unexpected,
        );
        let t = &self.throughput;
        let _ = writeln!(
            out,
            "  throughput {:.1} final/s, {:.1} confirmed/s (offered {:.1}/s)",
            t.finished_per_s, t.confirmed_per_s, t.offered_per_s
        );
        for (label, p) in [
            ("latency   ", &self.latency_ms),
            ("confirmed ", &self.confirmed_latency_ms),
        ] {
            let _ = writeln!(
                out,
                "  {label} p50 {:.1} ms, p90 {:.1}, p99 {:.1}, p99.9 {:.1}, max {:.1} ({} orders)",
                p.p50, p.p90, p.p99, p.p999, p.max, p.count
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "  errors     none");
        } else {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(kind, n)| format!("{n} {kind}"))
                .collect();
            let _ = writeln!(out, "  errors     {}", kinds.join(", "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::mix::Outcome;

    pub(crate) fn sample() -> Report {
        let mut recorder = Recorder::new().unwrap();
        let ms = Duration::from_millis;
        for i in 0..100u64 {
            recorder.sent(ms(i * 20));
            recorder.accepted();
            recorder.finished(
                Outcome::Confirm,
                "CONFIRMED",
                None,
                ms(10 + i),
                ms(i * 20 + 10 + i),
            );
        }
        recorder.error("http_503", ms(500));
        let config = RunConfig {
            mode: "open",
            rate: Some(50.0),
            concurrency: None,
            duration_s: Some(2.0),
            orders: None,
            mix: "confirm=1,out-of-stock=0,decline=0".into(),
            target: "embedded".into(),
            customers: 10,
            products: 4,
            final_timeout_s: 30.0,
            cpus: 2,
        };
        Report::new(
            config,
            "2026-01-01T00:00:00Z".into(),
            Duration::from_secs(2),
            Duration::from_secs(3),
            &recorder,
        )
    }

    #[test]
    fn percentiles_are_in_milliseconds() {
        let report = sample();
        assert_eq!(report.latency_ms.count, 100);
        assert!((59.0..=61.0).contains(&report.latency_ms.p50));
        assert!((109.0..=110.0).contains(&report.latency_ms.max));
        assert_eq!(report.throughput.offered_per_s, 50.0);
        assert_eq!(report.series.len(), 3);
        assert_eq!(report.errors["http_503"], 1);
    }

    #[test]
    fn summary_names_counts_and_errors() {
        let summary = sample().summary();
        assert!(summary.contains("100 sent"), "{summary}");
        assert!(summary.contains("1 http_503"), "{summary}");
    }
}
