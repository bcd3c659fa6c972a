//! Backoff with jitter, so processes retrying after a shared outage do not
//! all come back in the same millisecond.

use rand::RngExt;
use std::time::Duration;

/// A random pause between half of `base` and all of it ("equal jitter").
pub fn jittered(base: Duration) -> Duration {
    let half = base / 2;
    let extra = rand::rng().random_range(0..=half.as_micros() as u64);
    half + Duration::from_micros(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_whole() {
        let base = Duration::from_millis(100);
        for _ in 0..1000 {
            let pause = jittered(base);
            assert!(pause >= base / 2 && pause <= base, "{pause:?}");
        }
    }
}
