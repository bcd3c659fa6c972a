//! When orders are sent: the open-loop arrival schedule, and how long a run
//! lasts (`--duration` or `--orders`).
//!
//! In open-loop mode the n-th order is *due* at `start + n / rate` whatever
//! happened to earlier orders, and its latency is measured from that due
//! time, not from when it actually left. A platform (or a client) that
//! stalls therefore shows the stall in every order that should have been
//! sent during it, instead of hiding it by sending fewer orders: the
//! "coordinated omission" that a closed loop suffers from.

use std::time::Duration;
use tokio::time::Instant;

/// How long a run sends orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// Send for this long.
    Duration(Duration),
    /// Send exactly this many orders.
    Orders(u64),
}

/// A fixed-rate arrival schedule.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// When order 0 is due.
    pub start: Instant,
    /// Orders per second (positive, finite).
    pub rate: f64,
    /// When to stop.
    pub length: Length,
}

impl Schedule {
    /// When order `n` is due, or `None` once the schedule is over.
    pub fn due(&self, n: u64) -> Option<Instant> {
        // Computed from n each time (not by adding intervals) so rounding
        // never accumulates over a long run.
        let offset = Duration::from_secs_f64(n as f64 / self.rate);
        match self.length {
            Length::Orders(count) if n >= count => None,
            Length::Duration(length) if offset >= length => None,
            _ => Some(self.start + offset),
        }
    }
}

/// Parses `30s`, `2m`, `500ms`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 2m or 500ms"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_due_at_a_fixed_rate_from_the_start() {
        let start = Instant::now();
        let schedule = Schedule {
            start,
            rate: 200.0,
            length: Length::Duration(Duration::from_secs(1)),
        };
        assert_eq!(schedule.due(0), Some(start));
        assert_eq!(schedule.due(1), Some(start + Duration::from_millis(5)));
        assert_eq!(schedule.due(199), Some(start + Duration::from_millis(995)));
        assert_eq!(schedule.due(200), None, "one second holds 200 orders");
    }

    #[test]
    fn an_order_count_ends_the_schedule() {
        let schedule = Schedule {
            start: Instant::now(),
            rate: 1.0,
            length: Length::Orders(3),
        };
        assert!(schedule.due(2).is_some());
        assert_eq!(schedule.due(3), None);
    }

    #[test]
    fn durations_take_common_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 days").is_err());
    }
}
