//! The outcome mix: which share of orders should be confirmed, run out of
//! stock, or have their payment declined (`--mix confirm=80,out-of-stock=10,decline=10`),
//! and a deterministic picker that follows it.
//!
//! The picker is a smooth weighted round-robin rather than a random draw:
//! two runs with the same flags send the same sequence of orders, and even a
//! short run has exactly the requested proportions.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// What an order is built to end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// In stock, paid with an approving card: ends CONFIRMED.
    Confirm,
    /// More than the product holds: ends REJECTED with OUT_OF_STOCK.
    OutOfStock,
    /// Stock reserved, payment declined, stock released: ends REJECTED with
    /// PAYMENT_DECLINED.
    Decline,
}

impl Outcome {
    /// Every outcome, in the order `--mix` and the report list them.
    pub const ALL: [Outcome; 3] = [Outcome::Confirm, Outcome::OutOfStock, Outcome::Decline];

    /// The name used in `--mix` and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Confirm => "confirm",
            Outcome::OutOfStock => "out-of-stock",
            Outcome::Decline => "decline",
        }
    }

    /// The final status and reason the platform should give such an order.
    pub fn expected(self) -> (&'static str, Option<&'static str>) {
        match self {
            Outcome::Confirm => ("CONFIRMED", None),
            Outcome::OutOfStock => ("REJECTED", Some("OUT_OF_STOCK")),
            Outcome::Decline => ("REJECTED", Some("PAYMENT_DECLINED")),
        }
    }

    fn index(self) -> usize {
        match self {
            Outcome::Confirm => 0,
            Outcome::OutOfStock => 1,
            Outcome::Decline => 2,
        }
    }
}

/// Relative weights of the outcomes; at least one is positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 3],
}

impl Mix {
    /// The weight of `outcome`.
    pub fn weight(&self, outcome: Outcome) -> u32 {
        self.weights[outcome.index()]
    }

    /// A picker that starts at the beginning of the sequence.
    pub fn picker(&self) -> Picker {
        Picker {
            weights: self.weights,
            current: [0; 3],
        }
    }
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            weights: [80, 10, 10],
        }
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Outcome::ALL
            .iter()
            .map(|o| format!("{}={}", o.name(), self.weight(*o)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Why a `--mix` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    /// A part is not `name=weight`.
    #[error("`{0}` is not name=weight")]
    Syntax(String),
    /// An unknown outcome name.
    #[error("unknown outcome `{0}`: use confirm, out-of-stock or decline")]
    Unknown(String),
    /// The same outcome twice.
    #[error("`{0}` is given twice")]
    Duplicate(String),
    /// Every weight is zero.
    #[error("at least one weight must be positive")]
    Empty,
}

impl FromStr for Mix {
    type Err = MixError;

    /// `confirm=80,out-of-stock=10,decline=10`; an outcome left out has
    /// weight 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut weights = [0u32; 3];
        let mut seen = [false; 3];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| MixError::Syntax(part.to_owned()))?;
            let name = name.trim();
            let outcome = Outcome::ALL
                .into_iter()
                .find(|o| o.name() == name)
                .ok_or_else(|| MixError::Unknown(name.to_owned()))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| MixError::Syntax(part.to_owned()))?;
            if std::mem::replace(&mut seen[outcome.index()], true) {
                return Err(MixError::Duplicate(name.to_owned()));
            }
            weights[outcome.index()] = weight;
        }
        if weights.iter().all(|w| *w == 0) {
            return Err(MixError::Empty);
        }
        Ok(Self { weights })
    }
}

/// Yields outcomes in the mix's proportions, spread evenly (smooth weighted
/// round-robin: over every `sum of weights` picks, each outcome comes up
/// exactly its weight times, never in long runs).
#[derive(Debug, Clone)]
pub struct Picker {
    weights: [u32; 3],
    current: [i64; 3],
}

impl Picker {
    /// The next outcome.
    pub fn next_outcome(&mut self) -> Outcome {
        let total: i64 = self.weights.iter().map(|w| i64::from(*w)).sum();
        let mut best = 0;
        for i in 0..3 {
            self.current[i] += i64::from(self.weights[i]);
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= total;
        Outcome::ALL[best]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_weights() {
        let mix: Mix = "confirm=80, out-of-stock=10,decline=10".parse().unwrap();
        assert_eq!(mix, Mix::default());
        let only: Mix = "decline=1".parse().unwrap();
        assert_eq!(only.weight(Outcome::Confirm), 0);
        assert_eq!(only.weight(Outcome::Decline), 1);
        assert_eq!(mix.to_string(), "confirm=80,out-of-stock=10,decline=10");
    }

    #[test]
    fn refuses_bad_mixes() {
        assert_eq!(
            "confirm".parse::<Mix>(),
            Err(MixError::Syntax("confirm".into()))
        );
        assert_eq!(
            "refund=3".parse::<Mix>(),
            Err(MixError::Unknown("refund".into()))
        );
        assert_eq!(
            "confirm=1,confirm=2".parse::<Mix>(),
            Err(MixError::Duplicate("confirm".into()))
        );
        assert_eq!("confirm=0".parse::<Mix>(), Err(MixError::Empty));
        assert!("confirm=-1".parse::<Mix>().is_err());
    }

    #[test]
    fn picker_gives_exact_proportions_per_cycle() {
        let mix: Mix = "confirm=8,out-of-stock=1,decline=1".parse().unwrap();
        let mut picker = mix.picker();
        for _ in 0..5 {
            let cycle: Vec<Outcome> = (0..10).map(|_| picker.next_outcome()).collect();
            let count = |o| cycle.iter().filter(|c| **c == o).count();
            assert_eq!(count(Outcome::Confirm), 8);
            assert_eq!(count(Outcome::OutOfStock), 1);
            assert_eq!(count(Outcome::Decline), 1);
        }
    }

    #[test]
    fn picker_spreads_outcomes_out() {
        let mix: Mix = "confirm=1,decline=1".parse().unwrap();
        let mut picker = mix.picker();
        let picks: Vec<Outcome> = (0..4).map(|_| picker.next_outcome()).collect();
        assert_eq!(
            picks,
            [
                Outcome::Confirm,
                Outcome::Decline,
                Outcome::Confirm,
                Outcome::Decline
            ]
        );
    }
}
