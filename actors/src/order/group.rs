//! Group commit for [`OrderRepo`](super::repo::OrderRepo): new orders and
//! saga steps that arrive while earlier ones are being written are written
//! together, in one transaction. A group costs one pipelined round trip for
//! all its statements and one WAL flush, where each write alone cost three
//! to four round trips and a flush of its own; under load that flush and
//! those wake-ups of Postgres were most of an order's database cost.
//!
//! Every write in a group is a statement that cannot fail on its own
//! account in the ordinary course (an insert of fresh ids, or a step that
//! checks its own guards and reports what it did), so one write never has
//! to roll back the others. If the group fails all the same (a constraint,
//! a lost connection), each of its writes is tried again alone, so only
//! the write at fault reports the error.

use super::idempotency::PlaceError;
use super::machine::SagaState;
use super::repo::{Advance, NewOrder};
use crate::db::DbError;
use crate::events::{Envelope, RejectReason};
use crate::outbox::OutboxRows;
use deadpool_postgres::{Pool, Transaction};
use ractor::RpcReplyPort;
use std::sync::LazyLock;
use uuid::Uuid;

/// Most writes in one group: bounds one transaction's size (and the
/// statement queue of one connection).
pub const MAX_GROUP: usize = 256;

/// Groups written at the same time, each on its own connection. More than
/// one, so a group forms behind the one in flight rather than waiting for
/// it; few, so that under load writes queue into groups instead of
/// spreading one to a transaction over the pool.
pub const MAX_IN_FLIGHT: usize = 2;

/// A saga step to persist.
#[derive(Debug)]
pub struct Step {
    /// The reply that caused the step, recorded as processed.
    pub event_id: Uuid,
    /// The sequence number the step was decided from.
    pub from_seq: i32,
    /// The compensation attempts the step was decided from.
    pub from_attempts: i32,
    /// The state after the step.
    pub next: SagaState,
    /// Lifecycle events and commands the step sends.
    pub messages: Vec<Envelope>,
}

/// One write waiting for its group, with whom to tell.
pub enum Write {
    /// A new order without an idempotency key (one with a key is written
    /// alone: completing the key may refuse it).
    Create {
        /// The order.
        order: Box<NewOrder>,
        /// Told once committed.
        reply: RpcReplyPort<Result<(), PlaceError>>,
    },
    /// A saga step.
    Advance {
        /// The step.
        step: Box<Step>,
        /// Told what happened once committed.
        reply: RpcReplyPort<Result<Advance, DbError>>,
    },
}

/// Writes `writes` as one group and tells each writer its outcome.
pub async fn commit(pool: Pool, writes: Vec<Write>) {
    let outcomes = match write_group(&pool, &writes).await {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(error) if writes.len() > 1 => {
            tracing::debug!(%error, size = writes.len(), "group write failed; writing each alone");
            let alone = writes
                .iter()
                .map(|write| write_group(&pool, std::slice::from_ref(write)));
            futures::future::join_all(alone)
                .await
                .into_iter()
                .map(|outcome| outcome.map(|mut one| one.remove(0)))
                .collect()
        }
        Err(error) => vec![Err(error)],
    };
    for (write, outcome) in writes.into_iter().zip(outcomes) {
        match write {
            Write::Create { reply, .. } => {
                let _ = reply.send(outcome.map(|_| ()).map_err(PlaceError::from));
            }
            Write::Advance { reply, .. } => {
                let _ = reply.send(outcome);
            }
        }
    }
}

/// One transaction for all of `writes`: BEGIN, then every statement
/// pipelined, then COMMIT.
/// A creation counts as [`Advance::Applied`].
async fn write_group(pool: &Pool, writes: &[Write]) -> Result<Vec<Advance>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let outcomes =
        futures::future::try_join_all(writes.iter().map(|write| write_one(&tx, write))).await?;
    tx.commit().await?;
    Ok(outcomes)
}

async fn write_one(tx: &Transaction<'_>, write: &Write) -> Result<Advance, DbError> {
    match write {
        Write::Create { order, .. } => {
            insert(tx, order).await?;
            Ok(Advance::Applied)
        }
        Write::Advance { step, .. } => advance(tx, step).await,
    }
}

/// Inserts a new order, its items, its first history entry and its
/// opening messages: four statements, sent together.
pub async fn insert(tx: &Transaction<'_>, order: &NewOrder) -> Result<(), DbError> {
    let saga = &order.saga;
    let insert = tx
        .prepare_cached(
            "INSERT INTO orders.orders (id, customer_id, status, total_cents, currency, payment_token, correlation_id, seq, deadline_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await?;
    let items_insert = tx
        .prepare_cached(
            "INSERT INTO orders.order_items (order_id, product_id, name, quantity, unit_price_cents)
             SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::int[], $5::bigint[])",
        )
        .await?;
    let history = tx
        .prepare_cached(
            "INSERT INTO orders.status_history (order_id, seq, status, reason) VALUES ($1, $2, $3, $4)",
        )
        .await?;
    let products: Vec<Uuid> = order.items.iter().map(|i| i.product_id).collect();
    let names: Vec<&str> = order.items.iter().map(|i| i.name.as_str()).collect();
    let quantities: Vec<i32> = order.items.iter().map(|i| i.quantity).collect();
    let prices: Vec<i64> = order.items.iter().map(|i| i.unit_price_cents).collect();
    let mut opening = saga.opening_messages();
    // Made in the repository's task, outside the request's span: they
    // belong to the request's trace all the same.
    for message in &mut opening {
        message.trace = order.trace;
    }
    // The four writes in one round trip (tokio-postgres pipelines them, in
    // this order); the first failure aborts the transaction.
    let status = saga.status.as_str();
    let reason = saga.reason.map(RejectReason::as_str);
    futures::try_join!(
        async {
            tx.execute(
                &insert,
                &[
                    &saga.order_id,
                    &saga.customer_id,
                    &status,
                    &saga.total_cents,
                    &saga.currency,
                    &saga.payment_token,
                    &saga.correlation_id,
                    &saga.seq,
                    &saga.deadline_at,
                ],
            )
            .await
            .map_err(DbError::from)
        },
        async {
            tx.execute(
                &items_insert,
                &[&saga.order_id, &products, &names, &quantities, &prices],
            )
            .await
            .map_err(DbError::from)
        },
        async {
            tx.execute(&history, &[&saga.order_id, &saga.seq, &status, &reason])
                .await
                .map_err(DbError::from)
        },
        crate::outbox::append(tx, "orders", &opening),
    )?;
    Ok(())
}

/// A saga step as one statement: the order moves only if its version is
/// still the one the step was decided from and the reply was never
/// processed; only then are the reply's id, the history and the outbox
/// rows written. So a stale or repeated step writes nothing and needs no
/// rollback, and the answer says which it was.
static ADVANCE: LazyLock<String> = LazyLock::new(|| {
    "
WITH seen AS (
    SELECT 1 FROM orders.processed_events WHERE event_id = $9
), moved AS (
    UPDATE orders.orders
    SET status = $2, reason = $3, seq = $4, deadline_at = $6, attempts = $7, updated_at = now()
    WHERE id = $1 AND seq = $5 AND attempts = $8 AND NOT EXISTS (SELECT 1 FROM seen)
    RETURNING id
), marked AS (
    INSERT INTO orders.processed_events (event_id) SELECT $9::uuid FROM moved
    ON CONFLICT DO NOTHING RETURNING event_id
), history AS (
    INSERT INTO orders.status_history (order_id, seq, status, reason, at)
    SELECT moved.id, h.* FROM moved,
           unnest($10::int[], $11::text[], $12::text[], $13::timestamptz[]) AS h
), outbox AS (
    INSERT INTO orders.outbox (OUTBOX_COLUMNS) SELECT o.* FROM moved, OUTBOX_ROWS AS o
)
SELECT EXISTS (SELECT 1 FROM seen), (SELECT count(*) FROM moved), (SELECT count(*) FROM marked)"
        .replace("OUTBOX_COLUMNS", OutboxRows::COLUMNS)
        .replace("OUTBOX_ROWS", &OutboxRows::unnest(14))
});

/// Persists one saga step inside the group's transaction.
async fn advance(tx: &Transaction<'_>, step: &Step) -> Result<Advance, DbError> {
    let next = &step.next;
    let statement = tx.prepare_cached(&ADVANCE).await?;
    let changes: Vec<_> = step
        .messages
        .iter()
        .filter_map(|m| m.event.status_change().map(|c| (c, m.occurred_at)))
        .collect();
    let seqs: Vec<i32> = changes.iter().map(|(c, _)| c.seq).collect();
    let statuses: Vec<&str> = changes.iter().map(|(c, _)| c.status.as_str()).collect();
    let reasons: Vec<Option<&str>> = changes
        .iter()
        .map(|(c, _)| c.reason.map(RejectReason::as_str))
        .collect();
    let ats: Vec<chrono::DateTime<chrono::Utc>> = changes.iter().map(|(_, at)| *at).collect();
    let rows = OutboxRows::new(&step.messages);
    let status = next.status.as_str();
    let reason = next.reason.map(RejectReason::as_str);
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
        &next.order_id,
        &status,
        &reason,
        &next.seq,
        &step.from_seq,
        &next.deadline_at,
        &next.attempts,
        &step.from_attempts,
        &step.event_id,
        &seqs,
        &statuses,
        &reasons,
        &ats,
    ];
    params.extend(rows.params());
    let row = tx.query_one(&statement, &params).await?;
    let (seen, moved, marked): (bool, i64, i64) = (row.get(0), row.get(1), row.get(2));
    Ok(match (seen, moved, marked) {
        (true, _, _) => Advance::Duplicate,
        (false, 0, _) => Advance::Stale,
        (false, _, 1) => Advance::Applied,
        // The order moved, but another transaction recorded the reply
        // meanwhile: committing would apply one reply twice, so the whole
        // group fails and each write is tried alone.
        (false, _, _) => {
            return Err(DbError::Conflict(format!(
                "reply {} was recorded concurrently while order {} moved",
                step.event_id, next.order_id
            )))
        }
    })
}
