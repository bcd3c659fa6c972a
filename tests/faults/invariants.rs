//! What must hold once the faults are over, checked against Postgres
//! directly: each check is named, passes or fails with a message naming
//! the orders or products at fault, and is counted in the
//! [`Report`](crate::report::Report).

use crate::processes::LogDir;
use crate::report::Report;
use crate::workload::{Intent, Placed, Product};
use std::collections::{BTreeMap, HashMap};
use tokio_postgres::Client;
use uuid::Uuid;

/// Statuses that end a saga.
pub const TERMINAL: [&str; 3] = ["CONFIRMED", "REJECTED", "FAILED"];
/// SQL: orders still in flight.
pub const OPEN_ORDERS: &str =
    "SELECT id FROM orders.orders WHERE status NOT IN ('CONFIRMED', 'REJECTED', 'FAILED')";

/// An order as stored.
#[derive(Debug, Clone)]
pub struct OrderRow {
    /// Current status.
    pub status: String,
    /// Rejection reason, if any.
    pub reason: Option<String>,
    /// Sequence number of the current status.
    pub seq: i32,
    /// Last change.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Every order in the database.
pub async fn orders(db: &Client) -> BTreeMap<Uuid, OrderRow> {
    db.query(
        "SELECT id, status, reason, seq, updated_at FROM orders.orders",
        &[],
    )
    .await
    .expect("read orders")
    .iter()
    .map(|row| {
        (
            row.get(0),
            OrderRow {
                status: row.get(1),
                reason: row.get(2),
                seq: row.get(3),
                updated_at: row.get(4),
            },
        )
    })
    .collect()
}

/// What the checks need besides the database.
pub struct Context<'a> {
    /// Orders the platform accepted (202).
    pub placed: &'a [Placed],
    /// The test catalogue with its initial stock.
    pub products: &'a [Product],
    /// Process logs, for evidence.
    pub logs: &'a LogDir,
    /// Lowest stock any sample saw during the run (`None`: no sample read).
    pub lowest_stock_seen: Option<i64>,
    /// Stock samples that failed.
    pub stock_samples_failed: u64,
    /// From the suite's start to these checks: shorter than the services'
    /// saga step timeout, or a deadline may have fired legitimately.
    pub run_took: std::time::Duration,
}

impl Context<'_> {
    /// Where an order came in, and what the logs say about it.
    pub fn evidence(&self, order_id: Uuid) -> String {
        let via = self
            .placed
            .iter()
            .find(|p| p.order_id == order_id)
            .map(|p| format!("accepted by {} ({:?})", p.via, p.intent))
            .unwrap_or_else(|| "not acknowledged to the client".into());
        let lines = self.logs.grep(&order_id.to_string(), 8);
        format!(
            "\n    order {order_id}: {via}\n      {}",
            lines.join("\n      ")
        )
    }

    fn evidence_for(&self, ids: &[Uuid]) -> String {
        ids.iter().take(3).map(|id| self.evidence(*id)).collect()
    }
}

fn listed<T: std::fmt::Display>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(10).map(ToString::to_string).collect();
    let more = items.len().saturating_sub(10);
    if more > 0 {
        format!("{} (and {more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Runs every invariant over the quiesced database.
pub async fn check_all(db: &Client, cx: &Context<'_>, report: &mut Report) {
    let all = orders(db).await;
    report.record(
        "every accepted order is stored",
        accepted_are_stored(&all, cx),
    );
    report.record("every order is terminal", all_terminal(&all, cx));
    report.record(
        "initial stock = current stock + units in CONFIRMED orders",
        stock_is_conserved(db, cx).await,
    );
    report.record("no stock is ever negative", no_negative_stock(db, cx).await);
    report.record(
        "no order has more than one successful authorization",
        one_authorization(db, &all).await,
    );
    report.record(
        "no REJECTED order keeps an AUTHORIZED authorization",
        rejected_not_charged(db, cx).await,
    );
    report.record(
        "no REJECTED order holds RESERVED stock; CONFIRMED orders hold exactly their items",
        reservations_match(db, cx).await,
    );
    report.record(
        "every order's history is one valid path, ending in its status",
        histories_are_paths(db, &all, cx).await,
    );
    report.record(
        "every outcome fits what the order asked for",
        outcomes_fit_intents(&all, cx),
    );
}

fn accepted_are_stored(all: &BTreeMap<Uuid, OrderRow>, cx: &Context<'_>) -> Result<String, String> {
    let lost: Vec<Uuid> = cx
        .placed
        .iter()
        .map(|p| p.order_id)
        .filter(|id| !all.contains_key(id))
        .collect();
    if lost.is_empty() {
        Ok(format!(
            "{} accepted, all in orders.orders",
            cx.placed.len()
        ))
    } else {
        Err(format!(
            "{} accepted orders are missing: {}",
            lost.len(),
            listed(&lost)
        ))
    }
}

fn all_terminal(all: &BTreeMap<Uuid, OrderRow>, cx: &Context<'_>) -> Result<String, String> {
    let stuck: Vec<(&Uuid, &OrderRow)> = all
        .iter()
        .filter(|(_, o)| !TERMINAL.contains(&o.status.as_str()))
        .collect();
    if stuck.is_empty() {
        return Ok(format!("{} orders, none in flight", all.len()));
    }
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, order) in &stuck {
        *by_status.entry(order.status.as_str()).or_default() += 1;
    }
    let described: Vec<String> = stuck
        .iter()
        .map(|(id, o)| format!("{id} {} seq {} since {}", o.status, o.seq, o.updated_at))
        .collect();
    let ids: Vec<Uuid> = stuck.iter().map(|(id, _)| **id).collect();
    Err(format!(
        "{} of {} orders are not terminal {by_status:?}: {}{}",
        stuck.len(),
        all.len(),
        listed(&described),
        cx.evidence_for(&ids)
    ))
}

async fn stock_is_conserved(db: &Client, cx: &Context<'_>) -> Result<String, String> {
    let ids: Vec<Uuid> = cx.products.iter().map(|p| p.id).collect();
    let ids = &ids;
    let sums = |sql: &'static str| async move {
        db.query(sql, &[ids])
            .await
            .expect("sum per product")
            .iter()
            .map(|r| (r.get::<_, Uuid>(0), r.get::<_, i64>(1)))
            .collect::<HashMap<Uuid, i64>>()
    };
    let current = sums("SELECT id, stock::bigint FROM product.products WHERE id = ANY($1)").await;
    let confirmed = sums(
        "SELECT i.product_id, sum(i.quantity)::bigint FROM orders.order_items i
         JOIN orders.orders o ON o.id = i.order_id
         WHERE o.status = 'CONFIRMED' AND i.product_id = ANY($1) GROUP BY 1",
    )
    .await;
    let held = sums(
        "SELECT product_id, sum(quantity)::bigint FROM product.reservations
         WHERE status = 'RESERVED' AND product_id = ANY($1) GROUP BY 1",
    )
    .await;
    let mut wrong = Vec::new();
    let mut sold = 0;
    for product in cx.products {
        let now = current.get(&product.id).copied().unwrap_or(i64::MIN);
        let units = confirmed.get(&product.id).copied().unwrap_or(0);
        sold += units;
        if i64::from(product.initial_stock) != now + units {
            wrong.push(format!(
                "product {}: initial {} != current {now} + confirmed {units} \
                 (RESERVED reservations hold {})",
                product.id,
                product.initial_stock,
                held.get(&product.id).copied().unwrap_or(0)
            ));
        }
    }
    if wrong.is_empty() {
        Ok(format!("{} products, {sold} units sold", cx.products.len()))
    } else {
        Err(wrong.join("; "))
    }
}

async fn no_negative_stock(db: &Client, cx: &Context<'_>) -> Result<String, String> {
    let negative: Vec<String> = db
        .query(
            "SELECT id, stock FROM product.products WHERE stock < 0",
            &[],
        )
        .await
        .expect("read stock")
        .iter()
        .map(|r| format!("product {} at {}", r.get::<_, Uuid>(0), r.get::<_, i32>(1)))
        .collect();
    let failed = cx.stock_samples_failed;
    match cx.lowest_stock_seen {
        None => Err(format!(
            "no stock sample was read during the run ({failed} failed): nothing shows the stock \
             stayed >= 0; negative now: [{}]",
            negative.join(", ")
        )),
        Some(lowest) if negative.is_empty() && lowest >= 0 => Ok(format!(
            "lowest stock sampled during the run: {lowest} ({failed} samples failed)"
        )),
        Some(lowest) => Err(format!(
            "negative now: [{}]; lowest sampled during the run: {lowest}",
            negative.join(", ")
        )),
    }
}

async fn one_authorization(db: &Client, all: &BTreeMap<Uuid, OrderRow>) -> Result<String, String> {
    let rows = db
        .query(
            "SELECT order_id, count(*) FILTER (WHERE status = 'AUTHORIZED')
             FROM payment.authorizations GROUP BY 1",
            &[],
        )
        .await
        .expect("read authorizations");
    let authorized: HashMap<Uuid, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut problems = Vec::new();
    for (order_id, count) in &authorized {
        if *count > 1 {
            problems.push(format!("order {order_id} has {count} AUTHORIZED rows"));
        }
        if !all.contains_key(order_id) {
            problems.push(format!("authorization for unknown order {order_id}"));
        }
    }
    for (order_id, order) in all {
        if order.status == "CONFIRMED" && authorized.get(order_id).copied().unwrap_or(0) != 1 {
            problems.push(format!(
                "CONFIRMED order {order_id} has no AUTHORIZED authorization"
            ));
        }
    }
    if problems.is_empty() {
        Ok(format!(
            "{} authorizations, {} AUTHORIZED",
            rows.len(),
            authorized.values().sum::<i64>()
        ))
    } else {
        Err(listed(&problems))
    }
}

async fn rejected_not_charged(db: &Client, cx: &Context<'_>) -> Result<String, String> {
    let charged: Vec<Uuid> = db
        .query(
            "SELECT o.id FROM orders.orders o JOIN payment.authorizations a ON a.order_id = o.id
             WHERE o.status = 'REJECTED' AND a.status = 'AUTHORIZED'",
            &[],
        )
        .await
        .expect("read charged rejections")
        .iter()
        .map(|r| r.get(0))
        .collect();
    if charged.is_empty() {
        Ok("none".into())
    } else {
        Err(format!(
            "{} REJECTED orders keep an AUTHORIZED payment: {}{}",
            charged.len(),
            listed(&charged),
            cx.evidence_for(&charged)
        ))
    }
}

async fn reservations_match(db: &Client, cx: &Context<'_>) -> Result<String, String> {
    let rejected_holding: Vec<Uuid> = db
        .query(
            "SELECT DISTINCT r.order_id FROM product.reservations r
             JOIN orders.orders o ON o.id = r.order_id
             WHERE r.status = 'RESERVED' AND o.status = 'REJECTED'",
            &[],
        )
        .await
        .expect("read reservations of rejected orders")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Items of CONFIRMED orders against their RESERVED reservations, both ways.
    let mismatched: Vec<Uuid> = db
        .query(
            "WITH wanted AS (
                 SELECT i.order_id, i.product_id, i.quantity FROM orders.order_items i
                 JOIN orders.orders o ON o.id = i.order_id WHERE o.status = 'CONFIRMED'),
             held AS (
                 SELECT r.order_id, r.product_id, r.quantity FROM product.reservations r
                 JOIN orders.orders o ON o.id = r.order_id
                 WHERE r.status = 'RESERVED' AND o.status = 'CONFIRMED')
             SELECT DISTINCT coalesce(w.order_id, h.order_id) FROM wanted w
             FULL JOIN held h ON h.order_id = w.order_id AND h.product_id = w.product_id
             WHERE w.quantity IS DISTINCT FROM h.quantity",
            &[],
        )
        .await
        .expect("compare confirmed items with reservations")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut problems = Vec::new();
    if !rejected_holding.is_empty() {
        problems.push(format!(
            "{} REJECTED orders still hold RESERVED stock: {}{}",
            rejected_holding.len(),
            listed(&rejected_holding),
            cx.evidence_for(&rejected_holding)
        ));
    }
    if !mismatched.is_empty() {
        problems.push(format!(
            "{} CONFIRMED orders whose reservations differ from their items: {}{}",
            mismatched.len(),
            listed(&mismatched),
            cx.evidence_for(&mismatched)
        ));
    }
    if problems.is_empty() {
        Ok("consistent".into())
    } else {
        Err(problems.join("; "))
    }
}

/// The status changes a saga may make (the timeout paths included).
fn may_follow(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        (
            "PENDING",
            "INVENTORY_RESERVED" | "REJECTED" | "COMPENSATING" | "FAILED"
        ) | ("INVENTORY_RESERVED", "PAYMENT_AUTHORIZED" | "COMPENSATING")
            | ("PAYMENT_AUTHORIZED", "CONFIRMED")
            | ("COMPENSATING", "REJECTED" | "FAILED")
    )
}

async fn histories_are_paths(
    db: &Client,
    all: &BTreeMap<Uuid, OrderRow>,
    cx: &Context<'_>,
) -> Result<String, String> {
    let rows = db
        .query(
            "SELECT order_id, seq, status FROM orders.status_history ORDER BY order_id, seq",
            &[],
        )
        .await
        .expect("read histories");
    let mut histories: BTreeMap<Uuid, Vec<(i32, String)>> = BTreeMap::new();
    for row in &rows {
        histories
            .entry(row.get(0))
            .or_default()
            .push((row.get(1), row.get(2)));
    }
    let mut bad = Vec::new();
    let mut ids = Vec::new();
    for (order_id, order) in all {
        let history = histories.remove(order_id).unwrap_or_default();
        let statuses: Vec<&str> = history.iter().map(|(_, s)| s.as_str()).collect();
        let contiguous = history
            .iter()
            .enumerate()
            .all(|(i, (seq, _))| *seq == i as i32 + 1);
        let valid = contiguous
            && statuses.first() == Some(&"PENDING")
            && statuses.windows(2).all(|w| may_follow(w[0], w[1]))
            && statuses.last() == Some(&order.status.as_str())
            && history.last().map(|(seq, _)| *seq) == Some(order.seq);
        if !valid {
            bad.push(format!(
                "{order_id} ({}/{}): {statuses:?}",
                order.status, order.seq
            ));
            ids.push(*order_id);
        }
    }
    for order_id in histories.keys() {
        bad.push(format!("history of unknown order {order_id}"));
    }
    if bad.is_empty() {
        Ok(format!(
            "{} history rows over {} orders",
            rows.len(),
            all.len()
        ))
    } else {
        Err(format!(
            "{} bad histories: {}{}",
            bad.len(),
            listed(&bad),
            cx.evidence_for(&ids)
        ))
    }
}

/// Every order ended as what it asked for makes it end: confirmed, or out
/// of stock, or declined. No fault the suite injects justifies a `TIMEOUT`
/// or a `FAILED`: every command and reply goes through a durable outbox
/// (written with the state change it follows from) to a topic of
/// replication 3 and `min.insync.replicas` 2 with `acks=all`, and is
/// consumed at least once (offsets stored after the work is done), so
/// each one arrives in the end however the faults fell. The saga step
/// timeout is set longer than the whole run (`SAGA_STEP_TIMEOUT`), so no
/// deadline can paper over a lost message: a lost one leaves its order
/// open, caught by "every order is terminal". `FAILED` needs
/// `SAGA_MAX_ATTEMPTS` (6) stock releases left unanswered over minutes of
/// backoff (5 s, doubling), far longer than any outage here; a release
/// answered late still ends the order REJECTED.
fn outcomes_fit_intents(
    all: &BTreeMap<Uuid, OrderRow>,
    cx: &Context<'_>,
) -> Result<String, String> {
    let mut wrong = Vec::new();
    let mut ids = Vec::new();
    let mut gave_up = BTreeMap::<&str, usize>::new();
    for order in all.values() {
        match (order.status.as_str(), order.reason.as_deref()) {
            ("REJECTED", Some("TIMEOUT")) => *gave_up.entry("REJECTED TIMEOUT").or_default() += 1,
            ("FAILED", _) => *gave_up.entry("FAILED").or_default() += 1,
            _ => {}
        }
    }
    for placed in cx.placed {
        let Some(order) = all.get(&placed.order_id) else {
            continue; // reported as lost
        };
        let outcome = (order.status.as_str(), order.reason.as_deref());
        let fits = match (placed.intent, outcome) {
            // Not terminal: reported by its own check.
            (_, (status, _)) if !TERMINAL.contains(&status) => true,
            (_, ("REJECTED", Some("OUT_OF_STOCK"))) => true,
            (Intent::Approve, ("CONFIRMED", None)) => true,
            (Intent::Decline, ("REJECTED", Some("PAYMENT_DECLINED"))) => true,
            _ => false,
        };
        if !fits {
            wrong.push(format!(
                "{} ({:?}) ended {} {:?}",
                placed.order_id, placed.intent, order.status, order.reason
            ));
            ids.push(placed.order_id);
        }
    }
    // Orders never acknowledged to a client have no intent on record, but
    // a deadline or an exhausted compensation is as unjustified for them.
    let unacknowledged: Vec<Uuid> = all
        .iter()
        .filter(|(id, o)| {
            (o.status == "FAILED" || o.reason.as_deref() == Some("TIMEOUT"))
                && !cx.placed.iter().any(|p| p.order_id == **id)
        })
        .map(|(id, _)| *id)
        .collect();
    for id in &unacknowledged {
        let order = &all[id];
        wrong.push(format!(
            "{id} (never acknowledged) ended {} {:?}",
            order.status, order.reason
        ));
        ids.push(*id);
    }
    let timeout = crate::SAGA_STEP_TIMEOUT;
    if cx.run_took >= timeout {
        wrong.insert(
            0,
            format!(
                "the run took {:.0} s, longer than the saga step timeout ({} s): a deadline could \
             have ended an order without any fault, so this check proves nothing",
                cx.run_took.as_secs_f64(),
                timeout.as_secs()
            ),
        );
    }
    if wrong.is_empty() {
        Ok(format!(
            "approved orders confirmed or out of stock, declined ones rejected, impossible ones \
             out of stock; no TIMEOUT, no FAILED (step timeout {timeout:?}, the run {:.0} s)",
            cx.run_took.as_secs_f64()
        ))
    } else {
        Err(format!(
            "{} (gave up: {gave_up:?}){}",
            listed(&wrong),
            cx.evidence_for(&ids)
        ))
    }
}
