//! The live faults, in order, each injected while orders keep flowing:
//! kill -9 each service and restart it, SIGTERM two of them with one broker
//! down the whole time, kill -9 the broker that leads the most partitions,
//! restart every broker in turn, take the whole cluster away (with
//! `/readyz` watched), take Redis away, crash Postgres
//! ([`postgres_outage`]); then wait for everything to settle.

use crate::database::{PrivatePostgres, TestDatabase};
use crate::infra::{Cluster, PrivateRedis, NODES};
use crate::invariants;
use crate::kafka;
use crate::postgres_outage;
use crate::processes::{LogDir, Stop, TERM_BOUND};
use crate::readiness::{self, ReadyzWatch};
use crate::report::Report;
use crate::services::{Services, SERVICES};
use crate::workload::Workload;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::Client;

/// How long a killed service stays dead before it is restarted.
const DEAD_FOR: Duration = Duration::from_secs(2);
/// How long the surviving order process may take to finish the sagas of
/// a killed one (session timeout, then a rebalance).
const TAKEOVER_BOUND: Duration = Duration::from_secs(30);
/// How long Redis, and the whole Kafka cluster, stay down.
const OUTAGE: Duration = Duration::from_secs(4);
/// How long a restarted broker may take to have every partition's
/// replicas in sync again.
const IN_SYNC_BOUND: Duration = Duration::from_secs(60);
/// Orders the platform must accept after each fault before the next one.
pub const ORDERS_BETWEEN_FAULTS: usize = 15;
/// How soon every service must answer `/readyz` with 200 once a
/// dependency that was down is back.
pub const READY_AGAIN: Duration = Duration::from_secs(30);

/// The processes under test.
pub struct Platform {
    /// The Apache Kafka cluster.
    pub broker: Cluster,
    /// The private Redis.
    pub redis: PrivateRedis,
    /// The private Postgres.
    pub postgres: PrivatePostgres,
    /// The run's database on it.
    pub database: TestDatabase,
    /// The five service processes.
    pub services: Services,
    /// Services that exited by themselves (and were restarted, as an
    /// orchestrator would), with their exit status.
    pub crashes: Vec<String>,
    /// Where every process logs.
    pub logs: LogDir,
}

impl Platform {
    /// Restarts any service that exited by itself, recording it.
    pub async fn revive_crashed(&mut self) {
        for (name, status) in self.services.exited() {
            println!("[faults] {name} exited by itself ({status}); restarting it");
            self.crashes.push(format!("{name} exited ({status})"));
            self.services.get(&name).proc.kill9().await;
            self.services.start(&[name.as_str()]).await;
        }
    }
}

/// Waits until `more` further orders have been accepted: the platform takes
/// orders again after a fault.
pub async fn orders_flow(platform: &mut Platform, workload: &Workload, more: usize, after: &str) {
    let target = workload.accepted() + more;
    let deadline = Instant::now() + Duration::from_secs(60);
    while workload.accepted() < target {
        platform.revive_crashed().await;
        assert!(
            Instant::now() < deadline,
            "no orders accepted within 60 s after {after} ({} so far)",
            workload.accepted()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every stop in `stops` was clean (exit 0 within [`TERM_BOUND`]),
/// and how each went.
pub fn clean_stops(stops: &[(&str, Stop)]) -> Result<String, String> {
    let summary = stops
        .iter()
        .map(|(name, stop)| format!("{name} {}", stop.describe()))
        .collect::<Vec<_>>()
        .join(", ");
    if stops.iter().all(|(_, stop)| stop.is_clean(TERM_BOUND)) {
        Ok(summary)
    } else {
        Err(summary)
    }
}

/// Restarts brokers `nodes` and records how long they took to be back in sync.
async fn bring_back(platform: &Platform, nodes: &[i32], synced: &mut Vec<Result<String, String>>) {
    platform.broker.restart(nodes).await;
    let result = platform
        .broker
        .wait_in_sync(IN_SYNC_BOUND)
        .await
        .map(|took| {
            format!(
                "brokers {nodes:?} in sync {:.1} s after their start",
                took.as_secs_f64()
            )
        })
        .map_err(|behind| format!("brokers {nodes:?}: {behind}"));
    println!("[faults] brokers {nodes:?} back: {result:?}");
    synced.push(result);
}

/// Waits until the whole pipeline works (at least `count` orders have
/// ended), so the first fault lands on a platform in its stride.
pub async fn warm_up(platform: &mut Platform, db: &Client, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ended: i64 = db
            .query_one(
                "SELECT count(*) FROM orders.orders
                 WHERE status IN ('CONFIRMED', 'REJECTED', 'FAILED')",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if ended >= count {
            return;
        }
        platform.revive_crashed().await;
        assert!(
            Instant::now() < deadline,
            "the platform does not work even without faults: only {ended} orders ended \
             within 30 s of start-up; first errors logged:\n{}",
            platform.logs.grep("\"level\":\"ERROR\"", 5).join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until every order created before `killed_at` (database clock)
/// is terminal: the survivor has taken over the killed order process's
/// partitions and finished its sagas. Returns how long that took, or the
/// orders still open at [`TAKEOVER_BOUND`].
async fn survivor_takes_over(
    db: &Client,
    killed_at: chrono::DateTime<chrono::Utc>,
    already_reported: &BTreeSet<String>,
) -> Result<Duration, Vec<String>> {
    let started = Instant::now();
    loop {
        let open: Vec<String> = db
            .query(
                "SELECT id::text, status FROM orders.orders
                 WHERE created_at <= $1 AND status NOT IN ('CONFIRMED', 'REJECTED', 'FAILED')",
                &[&killed_at],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .filter(|r| !already_reported.contains(r.get::<_, &str>(0)))
                    .map(|r| format!("{} {}", r.get::<_, &str>(0), r.get::<_, &str>(1)))
                    .collect()
            })
            .unwrap_or_else(|e| vec![format!("query failed: {e}")]);
        if open.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > TAKEOVER_BOUND {
            return Err(open);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Injects every live fault in turn; returns what was injected. Records
/// whether the surviving order process took over a killed one's sagas.
pub async fn inject_live_faults(
    platform: &mut Platform,
    db: &mut Client,
    workload: &Workload,
    report: &mut Report,
) -> Vec<String> {
    let mut faults = Vec::new();
    let mut takeovers = Vec::new();
    let mut lost = Vec::new();
    let mut reported = BTreeSet::new();
    for name in SERVICES {
        println!(
            "[faults] kill -9 {name} ({} orders accepted so far)",
            workload.accepted()
        );
        let killed_at: chrono::DateTime<chrono::Utc> = db
            .query_one("SELECT now()", &[])
            .await
            .expect("database clock")
            .get(0);
        platform.services.kill9(name).await;
        faults.push(format!("kill -9 {name}"));
        if name.starts_with("order") {
            // The other order process must finish what this one had in flight.
            match survivor_takes_over(db, killed_at, &reported).await {
                Ok(took) => takeovers.push(format!("{name}: {:.1} s", took.as_secs_f64())),
                Err(open) => {
                    reported.extend(
                        open.iter()
                            .filter_map(|o| o.split(' ').next())
                            .map(String::from),
                    );
                    lost.push(format!(
                        "{name}: {} orders from before the kill still open after {} s: {}",
                        open.len(),
                        TAKEOVER_BOUND.as_secs(),
                        open.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        } else {
            // Being dead for a while is the fault itself: nothing to poll for.
            tokio::time::sleep(DEAD_FOR).await;
        }
        platform.services.start(&[name]).await;
        println!("[faults] {name} restarted and ready");
        orders_flow(
            platform,
            workload,
            ORDERS_BETWEEN_FAULTS,
            &format!("restarting {name}"),
        )
        .await;
    }

    // One broker down for a whole phase of load: with replication 3 and
    // min.insync.replicas 2, every write still has two brokers to land on.
    let mut synced = Vec::new();
    let down = NODES;
    println!("[faults] kill -9 broker {down}, down for the whole SIGTERM phase");
    platform.broker.kill(&[down]).await;
    faults.push(format!("broker {down} down for a phase"));

    // SIGTERM under load: a clean stop finishes or hands back its work (the
    // end-of-run checks show nothing lost and nothing done twice).
    let mut stops = Vec::new();
    for name in ["order-a", "payment"] {
        println!(
            "[faults] SIGTERM {name} ({} orders accepted so far)",
            workload.accepted()
        );
        let stop = platform.services.terminate(name).await;
        stops.push((name, stop));
        faults.push(format!("SIGTERM {name}"));
        platform.services.start(&[name]).await;
        println!("[faults] {name} restarted and ready");
        orders_flow(
            platform,
            workload,
            ORDERS_BETWEEN_FAULTS,
            &format!("stopping {name}"),
        )
        .await;
    }
    report.record(
        &format!(
            "a service stopped with SIGTERM under load exits 0 by itself within the grace \
             period ({} s, {} s with the margin)",
            crate::SHUTDOWN_GRACE.as_secs(),
            TERM_BOUND.as_secs()
        ),
        clean_stops(&stops),
    );

    bring_back(platform, &[down], &mut synced).await;

    // kill -9 of the broker that leads the most of the platform's
    // partitions: their leadership moves to the others mid-flight.
    let (leader, led) = platform.broker.busiest_leader().await;
    println!("[faults] kill -9 broker {leader}, leader of {led} partitions");
    platform.broker.kill(&[leader]).await;
    faults.push(format!(
        "kill -9 broker {leader} (leading {led} partitions)"
    ));
    orders_flow(
        platform,
        workload,
        ORDERS_BETWEEN_FAULTS,
        &format!("killing broker {leader}"),
    )
    .await;
    bring_back(platform, &[leader], &mut synced).await;

    // A rolling restart, as an upgrade does it: one broker at a time, each
    // back in sync before the next goes.
    for node in 1..=NODES {
        println!(
            "[faults] rolling restart: broker {node} ({} orders accepted so far)",
            workload.accepted()
        );
        platform.broker.stop_node(node).await;
        bring_back(platform, &[node], &mut synced).await;
        orders_flow(
            platform,
            workload,
            ORDERS_BETWEEN_FAULTS / 3,
            &format!("restarting broker {node}"),
        )
        .await;
    }
    faults.push(format!("rolling restart of {NODES} brokers"));

    // The whole cluster down (a power cut): producers and consumers wait,
    // nothing acknowledged is lost, and everything resumes on its own.
    // `/readyz` is polled throughout: src/http/health.rs documents Kafka as
    // required, so every service must say it is not ready.
    platform.services.wait_order_group_settled().await;
    let readyz = ReadyzWatch::start(platform.services.urls());
    println!("[faults] kill -9 every broker, down for {OUTAGE:?}");
    platform.broker.kill(&Cluster::all()).await;
    let down = Instant::now();
    faults.push(format!("every broker down {} s", OUTAGE.as_secs()));
    tokio::time::sleep(OUTAGE).await;
    let up = Instant::now();
    bring_back(platform, &Cluster::all(), &mut synced).await;
    let back = Instant::now();
    let samples = readyz.stop_once_ready(&SERVICES, back, READY_AGAIN).await;
    report.record(
        "/readyz of every service answers 503 naming kafka while every broker is down, \
         and 200 once they are back",
        readiness::judge(&samples, &SERVICES, "kafka", (down, up), back, READY_AGAIN),
    );
    orders_flow(
        platform,
        workload,
        ORDERS_BETWEEN_FAULTS,
        "the cluster outage",
    )
    .await;
    report.record(
        "every restarted broker is back in sync (all replicas of every partition)",
        if synced.iter().all(Result::is_ok) {
            Ok(synced
                .iter()
                .filter_map(|r| r.as_ref().ok().cloned())
                .collect::<Vec<_>>()
                .join("; "))
        } else {
            Err(synced
                .iter()
                .filter_map(|r| r.as_ref().err().cloned())
                .collect::<Vec<_>>()
                .join("; "))
        },
    );

    println!("[faults] redis down for {OUTAGE:?}");
    platform.redis.stop().await;
    faults.push(format!("redis down {} s", OUTAGE.as_secs()));
    tokio::time::sleep(OUTAGE).await;
    platform.redis.restart().await;
    println!("[faults] redis up");
    orders_flow(
        platform,
        workload,
        ORDERS_BETWEEN_FAULTS,
        "the Redis outage",
    )
    .await;

    faults.push(postgres_outage::crash_postgres(platform, db, workload, report).await);
    report.record(
        "a killed order process's sagas are finished by the other one",
        if lost.is_empty() {
            Ok(format!(
                "every order from before each kill ended: {}",
                takeovers.join(", ")
            ))
        } else {
            Err(format!(
                "{} (ended in time: {takeovers:?})",
                lost.join("; ")
            ))
        },
    );
    faults
}

/// What the platform looks like while settling (-1: the count could not
/// be read).
#[derive(Debug)]
pub struct Progress {
    /// Orders not in a terminal status.
    pub in_flight: i64,
    /// Rows waiting in the three outboxes.
    pub outbox_rows: i64,
    /// Messages not yet committed, per consumer group, or why the lag
    /// could not be read (which is never drained).
    pub lag: Result<std::collections::BTreeMap<&'static str, i64>, String>,
}

impl Progress {
    /// Every outbox published and every group's lag read and zero.
    pub fn drained(&self) -> bool {
        self.outbox_rows == 0
            && self.lag.as_ref().is_ok_and(|lag| {
                kafka::GROUPS
                    .iter()
                    .all(|(group, _)| lag.get(group) == Some(&0))
            })
    }
}

/// What [`settle`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Drained, and every order terminal.
    Quiet,
    /// Drained (orders stuck before stay stuck).
    Drained,
}

async fn progress(db: &Client, brokers: &str) -> Progress {
    let in_flight = db
        .query_one(
            &format!("SELECT count(*) FROM ({}) open", invariants::OPEN_ORDERS),
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1);
    let outbox_rows = db
        .query_one(
            "SELECT (SELECT count(*) FROM orders.outbox) + (SELECT count(*) FROM product.outbox)
                  + (SELECT count(*) FROM payment.outbox)",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1);
    // An error is kept, not read as "no lag": settling polls again, and
    // reports it if it never succeeds.
    let lag = kafka::lag(brokers).await;
    Progress {
        in_flight,
        outbox_rows,
        lag,
    }
}

/// Polls until every outbox is empty and every group caught up (and, for
/// [`Until::Quiet`], every order terminal), or `deadline`. Returns whether
/// it got there and the last progress seen.
pub async fn settle(
    platform: &mut Platform,
    db: &Client,
    until: Until,
    deadline: Instant,
) -> (bool, Progress) {
    let brokers = platform.broker.address.clone();
    let mut last_report = Instant::now();
    loop {
        platform.revive_crashed().await;
        let now = progress(db, &brokers).await;
        if now.drained() && (until == Until::Drained || now.in_flight == 0) {
            return (true, now);
        }
        if Instant::now() >= deadline {
            return (false, now);
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!("[faults] settling: {now:?}");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lag_that_could_not_be_read_is_not_drained() {
        let zero = kafka::GROUPS.iter().map(|(g, _)| (*g, 0)).collect();
        let drained = |lag| {
            Progress {
                in_flight: 0,
                outbox_rows: 0,
                lag,
            }
            .drained()
        };
        assert!(drained(Ok(zero)));
        assert!(!drained(Err("metadata: timed out".into())));
        // An empty map (what an error used to become) is not every group at 0.
        assert!(!drained(Ok(Default::default())));
    }
}
