//! The last live fault: the private Postgres crashes (immediate shutdown:
//! every backend killed, no checkpoint) and stays down a few seconds while
//! orders keep coming, then starts again through crash recovery. While it
//! is down every service must say it is not ready and every order placed
//! must get the API's 503 JSON error (or be accepted, and then kept);
//! afterwards every service must be ready again and orders flow.

use crate::readiness::{self, ReadyzWatch};
use crate::report::Report;
use crate::scenarios::{orders_flow, Platform, ORDERS_BETWEEN_FAULTS, READY_AGAIN};
use crate::services::SERVICES;
use crate::workload::{Answer, Outcome, Workload};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::Client;
use uuid::Uuid;

/// How long Postgres stays down.
const OUTAGE: Duration = Duration::from_secs(5);

/// Crashes Postgres, keeps it down for [`OUTAGE`], starts it again and
/// records what `/readyz` and the order clients saw; `db` is connected
/// again afterwards (the crash ends every connection, the suite's too).
/// Returns the fault's name.
pub async fn crash_postgres(
    platform: &mut Platform,
    db: &mut Client,
    workload: &Workload,
    report: &mut Report,
) -> String {
    let readyz = ReadyzWatch::start(platform.services.urls());
    println!(
        "[faults] postgres crashes (immediate shutdown), down for {OUTAGE:?} ({} orders accepted so far)",
        workload.accepted()
    );
    platform.postgres.crash().await;
    let down = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    let up = Instant::now();
    platform.postgres.restart().await;
    let back = Instant::now();
    println!(
        "[faults] postgres up after {:.1} s of crash recovery",
        back.duration_since(up).as_secs_f64()
    );
    *db = platform.database.connect().await;
    let samples = readyz.stop_once_ready(&SERVICES, back, READY_AGAIN).await;
    report.record(
        "/readyz of every service answers 503 naming postgres while Postgres is down, \
         and 200 once it is back",
        readiness::judge(
            &samples,
            &SERVICES,
            "postgres",
            (down, up),
            back,
            READY_AGAIN,
        ),
    );
    let answers = workload.answers_sent_between(down, up);
    report.record(
        "orders placed while Postgres is down get 503 `unavailable` or are accepted, \
         and every accepted one is stored",
        answered_clearly(db, &answers).await,
    );
    orders_flow(
        platform,
        workload,
        ORDERS_BETWEEN_FAULTS,
        "the Postgres outage",
    )
    .await;
    format!("postgres crashed, down {} s", OUTAGE.as_secs())
}

/// Every attempt in `answers` got the API's 503 `unavailable` (what
/// `POST /orders` documents for Postgres unavailable) or a 202 whose order
/// is in the database; there was at least one attempt.
async fn answered_clearly(db: &Client, answers: &[Answer]) -> Result<String, String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut unclear = Vec::new();
    let mut accepted = Vec::new();
    for answer in answers {
        let key = match &answer.outcome {
            Outcome::Accepted(order_id) => {
                accepted.push(*order_id);
                "202".to_owned()
            }
            Outcome::Refused {
                status: 503,
                error: Some(code),
            } if code == "unavailable" => "503 unavailable".to_owned(),
            other => {
                unclear.push(format!("{} answered {other:?}", answer.via));
                format!("{other:?}")
            }
        };
        *counts.entry(key).or_default() += 1;
    }
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM orders.orders WHERE id = ANY($1)",
            &[&accepted],
        )
        .await
        .map(|row| row.get(0))
        .unwrap_or(-1);
    let lost = accepted.len() as i64 - stored;
    if answers.is_empty() {
        Err("no order was placed while Postgres was down: the check saw nothing".into())
    } else if !unclear.is_empty() || lost != 0 {
        let shown: Vec<&String> = unclear.iter().take(5).collect();
        Err(format!(
            "{} attempts {counts:?}; unclear answers: {shown:?}; accepted but not stored: \
             {lost} of {} {:?}",
            answers.len(),
            accepted.len(),
            accepted.iter().take(5).collect::<Vec<&Uuid>>()
        ))
    } else {
        Ok(format!(
            "{} attempts {counts:?}; every accepted one stored",
            answers.len()
        ))
    }
}
