//! The named checks of a run: each is printed as it is recorded, and the
//! run ends with `faults: N passed, M failed`.

/// One named check and how it went.
#[derive(Debug)]
pub struct Check {
    /// What it proves, e.g. `every accepted order is terminal`.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The evidence: a summary, or what broke it.
    pub detail: String,
}

/// Every check of the run, in order.
#[derive(Debug, Default)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// Records (and prints) one check.
    pub fn record(&mut self, name: &str, outcome: Result<String, String>) {
        let (passed, detail) = match outcome {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        println!(
            "[faults] {} {name}: {detail}",
            if passed { "PASS" } else { "FAIL" }
        );
        self.checks.push(Check {
            name: name.to_owned(),
            passed,
            detail,
        });
    }

    /// Checks that held.
    pub fn passed(&self) -> usize {
        self.checks.iter().filter(|c| c.passed).count()
    }

    /// Checks that did not.
    pub fn failed(&self) -> usize {
        self.checks.len() - self.passed()
    }
}
