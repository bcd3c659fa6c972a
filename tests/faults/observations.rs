//! What the suite watches while the run goes on, rather than checks at
//! the end: the lowest stock ever sampled, and — from the order
//! processes' logs — where sagas ran.

use crate::database::TestDatabase;
use crate::processes::LogDir;
use crate::workload::Product;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;
use uuid::Uuid;

/// Samples the lowest stock of `products` until dropped.
pub struct StockSampler {
    lowest: Arc<AtomicI64>,
    /// Samples read, and samples that failed (a query error, or no row).
    read: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl StockSampler {
    /// Starts sampling every 200 ms on its own connection, connecting again
    /// after a failure (Postgres itself is one of the faults).
    pub fn start(database: TestDatabase, products: &[Product]) -> Self {
        let ids: Vec<Uuid> = products.iter().map(|p| p.id).collect();
        let lowest = Arc::new(AtomicI64::new(i64::MAX));
        let (read, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (seen, counted, missed) = (lowest.clone(), read.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let mut db: Option<Client> = None;
            loop {
                if db.as_ref().is_none_or(Client::is_closed) {
                    db = database.try_connect().await.ok();
                }
                let sample = match &db {
                    Some(db) => db
                        .query_one(
                            "SELECT min(stock)::bigint FROM product.products WHERE id = ANY($1)",
                            &[&ids],
                        )
                        .await
                        .ok()
                        .and_then(|row| row.get::<_, Option<i64>>(0)),
                    None => None,
                };
                match sample {
                    Some(min) => {
                        seen.fetch_min(min, Ordering::Relaxed);
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        missed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            lowest,
            read,
            failed,
            task,
        }
    }

    /// The lowest stock seen so far; `None` if no sample was read, which
    /// proves nothing about the stock.
    pub fn lowest(&self) -> Option<i64> {
        (self.read.load(Ordering::Relaxed) > 0).then(|| self.lowest.load(Ordering::Relaxed))
    }

    /// Samples that failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

impl Drop for StockSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Orders whose saga steps ran in more than one order process, and orders
/// whose steps all ran in a process other than the one that accepted them
/// (read from the `order advanced` / `order placed` log lines).
pub fn saga_placement(logs: &LogDir) -> (usize, usize) {
    let mut advanced_in: HashMap<String, BTreeSet<&str>> = HashMap::new();
    let mut placed_in: HashMap<String, &str> = HashMap::new();
    for process in ["order-a", "order-b"] {
        for line in logs.json_lines(process) {
            let Some(order_id) = line["order_id"].as_str() else {
                continue;
            };
            match line["message"].as_str() {
                Some("order advanced") => {
                    advanced_in
                        .entry(order_id.to_owned())
                        .or_default()
                        .insert(process);
                }
                Some("order placed") => {
                    placed_in.insert(order_id.to_owned(), process);
                }
                _ => {}
            }
        }
    }
    let in_both = advanced_in.values().filter(|p| p.len() > 1).count();
    let elsewhere = advanced_in
        .iter()
        .filter(|(id, p)| placed_in.get(*id).is_some_and(|via| !p.contains(via)))
        .count();
    (in_both, elsewhere)
}

/// Orders stepped (`order advanced`) by both order processes between `from`
/// and `to`, a window with no fault and no rebalance: with placement by
/// partition there must be none.
pub fn sagas_stay_put(
    logs: &LogDir,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Result<String, String> {
    let mut stepped_in: HashMap<String, BTreeSet<&str>> = HashMap::new();
    for process in ["order-a", "order-b"] {
        for line in logs.json_lines(process) {
            let at = line["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok());
            if line["message"] != "order advanced"
                || !at.is_some_and(|at| (from..=to).contains(&at))
            {
                continue;
            }
            if let Some(order_id) = line["order_id"].as_str() {
                stepped_in
                    .entry(order_id.to_owned())
                    .or_default()
                    .insert(process);
            }
        }
    }
    let both: Vec<&String> = stepped_in
        .iter()
        .filter(|(_, processes)| processes.len() > 1)
        .map(|(order, _)| order)
        .collect();
    if stepped_in.is_empty() {
        Err(format!("no saga step logged from {from} to {to}"))
    } else if both.is_empty() {
        Ok(format!(
            "{} orders, each stepped by one process",
            stepped_in.len()
        ))
    } else {
        Err(format!(
            "{} of {} orders stepped by both processes, e.g. {:?}",
            both.len(),
            stepped_in.len(),
            both.iter().take(5).collect::<Vec<_>>()
        ))
    }
}

/// Saga steps (`order advanced` log lines) per order process between
/// `from` and `to`, a window in which both were up and nothing was hurt.
/// Each must have taken a fair part: with six partitions per topic split
/// between two members, at least a fifth of the steps.
pub fn load_is_shared(
    logs: &LogDir,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Result<String, String> {
    let mut steps: BTreeMap<&str, usize> = BTreeMap::new();
    for process in ["order-a", "order-b"] {
        let count = logs
            .json_lines(process)
            .iter()
            .filter(|line| line["message"] == "order advanced")
            .filter_map(|line| {
                line["timestamp"]
                    .as_str()?
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .ok()
            })
            .filter(|at| (from..=to).contains(at))
            .count();
        steps.insert(process, count);
    }
    let total: usize = steps.values().sum();
    let summary = format!("saga steps from {from} to {to}: {steps:?}");
    if total > 0 && steps.values().all(|n| n * 5 >= total) {
        Ok(summary)
    } else {
        Err(summary)
    }
}
