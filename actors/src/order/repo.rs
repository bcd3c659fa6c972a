//! `OrderRepo`: the order service's Postgres repository. It creates orders
//! and persists every saga step together with the events that step sends,
//! in one transaction (transactional outbox), guarded by the order's
//! sequence number so two writers can never both advance the same order.

use super::machine::SagaState;
use super::model::{OrderItem, OrderSummary, OrderView, StatusEntry};
use crate::db::DbError;
use crate::events::{Envelope, OrderLine, OrderStatus, RejectReason};
use crate::outbox;
use crate::rpc::answer;
use deadpool_postgres::Pool;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_postgres::Row;
use uuid::Uuid;

const SCHEMA: &str = "orders";

/// A priced order ready to store.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Its saga's opening state (status PENDING, seq 1).
    pub saga: SagaState,
    /// Lines with names and unit prices.
    pub items: Vec<OrderItem>,
    /// The request's idempotency key, marked DONE with its response in the
    /// order's transaction, so there is never an order without its key or a
    /// DONE key without its order.
    pub idempotency: Option<super::idempotency::Completion>,
    /// The trace of the request that placed it, for its opening messages.
    pub trace: Option<crate::trace::TraceParent>,
}

/// A saga an operator should look at.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StuckSaga {
    /// The order.
    pub order_id: Uuid,
    /// Who placed it.
    pub customer_id: String,
    /// FAILED, or the in-flight status it is stuck in.
    pub status: OrderStatus,
    /// Why it was compensating, if it was.
    pub reason: Option<RejectReason>,
    /// Compensation attempts made.
    pub attempts: i32,
    /// When its current step gave up (or will).
    pub deadline_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it last changed.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The outcome of persisting a saga step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// Stored, with its events.
    Applied,
    /// The triggering event was already processed; nothing stored.
    Duplicate,
    /// The order moved on since the saga read it; reload and decide again.
    Stale,
}

/// The repository actor; see the module documentation.
pub struct OrderRepo;

/// Messages of [`OrderRepo`].
pub enum OrderRepoMsg {
    /// Stores a new order with its OrderCreated and ReserveInventory
    /// messages, and completes its idempotency key if it has one.
    Create {
        /// The order.
        order: NewOrder,
        /// Done once committed; [`PlaceError::InProgress`] (and nothing
        /// stored) if the key's claim was lost to another request.
        ///
        /// [`PlaceError::InProgress`]: super::idempotency::PlaceError::InProgress
        reply: RpcReplyPort<Result<(), super::idempotency::PlaceError>>,
    },
    /// Reads an order's saga state.
    LoadSaga {
        /// The order.
        order_id: Uuid,
        /// Its state, or `None` if there is no such order.
        reply: RpcReplyPort<Result<Option<SagaState>, DbError>>,
    },
    /// Persists one saga step.
    Advance {
        /// The reply that caused the step, recorded as processed.
        event_id: Uuid,
        /// The sequence number the step was decided from.
        from_seq: i32,
        /// The compensation attempts the step was decided from.
        from_attempts: i32,
        /// The state after the step.
        next: SagaState,
        /// Lifecycle events and commands the step sends.
        messages: Vec<Envelope>,
        /// What happened.
        reply: RpcReplyPort<Result<Advance, DbError>>,
    },
    /// Reads the sagas that are not over (to resume them after a start, or
    /// to find those whose deadline passed while no actor was watching).
    LoadInFlight {
        /// Only those whose deadline has passed.
        overdue_only: bool,
        /// At most this many, oldest first.
        limit: i64,
        /// Their states.
        reply: RpcReplyPort<Result<Vec<SagaState>, DbError>>,
    },
    /// Lists the sagas that need an operator.
    ListStuck {
        /// How long past its deadline an in-flight saga must be to count.
        grace_seconds: f64,
        /// FAILED and long-overdue sagas.
        reply: RpcReplyPort<Result<Vec<StuckSaga>, DbError>>,
    },
    /// Reads one order with its items and history.
    Get {
        /// The order.
        order_id: Uuid,
        /// The order, or `None`.
        reply: RpcReplyPort<Result<Option<OrderView>, DbError>>,
    },
    /// Lists a customer's most recent orders.
    ListByCustomer {
        /// The customer.
        customer_id: String,
        /// At most this many, newest first.
        limit: i64,
        /// The orders.
        reply: RpcReplyPort<Result<Vec<OrderSummary>, DbError>>,
    },
}

impl Actor for OrderRepo {
    type Msg = OrderRepoMsg;
    type State = Pool;
    type Arguments = Pool;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        pool: Pool,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(pool)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        pool: &mut Pool,
    ) -> Result<(), ActorProcessingErr> {
        let pool = pool.clone();
        match message {
            OrderRepoMsg::Create { order, reply } => answer(reply, create(pool, order)),
            OrderRepoMsg::LoadSaga { order_id, reply } => answer(reply, load(pool, order_id)),
            OrderRepoMsg::Advance {
                event_id,
                from_seq,
                from_attempts,
                next,
                messages,
                reply,
            } => answer(
                reply,
                advance(pool, event_id, (from_seq, from_attempts), next, messages),
            ),
            OrderRepoMsg::LoadInFlight {
                overdue_only,
                limit,
                reply,
            } => answer(reply, load_in_flight(pool, overdue_only, limit)),
            OrderRepoMsg::ListStuck {
                grace_seconds,
                reply,
            } => answer(reply, list_stuck(pool, grace_seconds)),
            OrderRepoMsg::Get { order_id, reply } => answer(reply, get(pool, order_id)),
            OrderRepoMsg::ListByCustomer {
                customer_id,
                limit,
                reply,
            } => answer(reply, list_by_customer(pool, customer_id, limit)),
        }
        Ok(())
    }
}

fn reason_str(reason: Option<RejectReason>) -> Option<&'static str> {
    reason.map(RejectReason::as_str)
}

fn status_from(row: &Row, column: &str) -> OrderStatus {
    // The column only ever holds values written from `OrderStatus`.
    OrderStatus::parse(row.get(column)).unwrap_or(OrderStatus::Pending)
}

fn reason_from(row: &Row, column: &str) -> Option<RejectReason> {
    row.get::<_, Option<&str>>(column)
        .and_then(RejectReason::parse)
}

async fn create(pool: Pool, order: NewOrder) -> Result<(), super::idempotency::PlaceError> {
    let saga = &order.saga;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // The key first: a lost claim stops us before any work, and the key's
    // row lock orders this transaction against a concurrent release or
    // takeover of the same claim.
    if let Some(completion) = &order.idempotency {
        if !super::idempotency::complete(&tx, completion).await? {
            return Err(super::idempotency::PlaceError::InProgress);
        }
    }
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
    // Made in this actor's task, outside the request's span: they belong
    // to the request's trace all the same.
    for message in &mut opening {
        message.trace = order.trace;
    }
    // The four writes in one round trip (tokio-postgres pipelines them, in
    // this order); the first failure aborts the transaction.
    let status = saga.status.as_str();
    let reason = reason_str(saga.reason);
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
        outbox::append(&tx, SCHEMA, &opening),
    )?;
    tx.commit().await?;
    Ok(())
}

async fn load(pool: Pool, order_id: Uuid) -> Result<Option<SagaState>, DbError> {
    let client = pool.get().await?;
    let order = client
        .prepare_cached(
            "SELECT id, customer_id, correlation_id, status, reason, seq, total_cents, currency,
                    payment_token, deadline_at, attempts
             FROM orders.orders WHERE id = $1",
        )
        .await?;
    let Some(row) = client.query_opt(&order, &[&order_id]).await? else {
        return Ok(None);
    };
    Ok(load_items(&client, vec![row]).await?.pop())
}

/// Saga states for `rows` (from `orders.orders`, in [`load`]'s columns),
/// with their items, in one more query.
async fn load_items(
    client: &deadpool_postgres::Client,
    rows: Vec<Row>,
) -> Result<Vec<SagaState>, DbError> {
    let ids: Vec<Uuid> = rows.iter().map(|row| row.get("id")).collect();
    let items = client
        .prepare_cached(
            "SELECT order_id, product_id, quantity FROM orders.order_items
             WHERE order_id = ANY($1) ORDER BY order_id, product_id",
        )
        .await?;
    let items = client.query(&items, &[&ids]).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let order_id: Uuid = row.get("id");
            SagaState {
                order_id,
                customer_id: row.get("customer_id"),
                correlation_id: row.get("correlation_id"),
                status: status_from(row, "status"),
                reason: reason_from(row, "reason"),
                seq: row.get("seq"),
                items: items
                    .iter()
                    .filter(|item| item.get::<_, Uuid>(0) == order_id)
                    .map(|item| OrderLine {
                        product_id: item.get(1),
                        quantity: item.get(2),
                    })
                    .collect(),
                total_cents: row.get("total_cents"),
                currency: row.get("currency"),
                payment_token: row.get("payment_token"),
                deadline_at: row.get("deadline_at"),
                attempts: row.get("attempts"),
            }
        })
        .collect())
}

/// Sagas that are not over, oldest first, at most `limit`; with
/// `overdue_only`, only those whose deadline has passed.
async fn load_in_flight(
    pool: Pool,
    overdue_only: bool,
    limit: i64,
) -> Result<Vec<SagaState>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT id, customer_id, correlation_id, status, reason, seq, total_cents, currency,
                    payment_token, deadline_at, attempts
             FROM orders.orders
             WHERE status NOT IN ('CONFIRMED', 'REJECTED', 'FAILED')
               AND (NOT $1 OR deadline_at < now())
             ORDER BY created_at LIMIT $2",
        )
        .await?;
    let rows = client.query(&statement, &[&overdue_only, &limit]).await?;
    load_items(&client, rows).await
}

/// Orders that need an operator: FAILED, or overdue by more than `grace`.
async fn list_stuck(pool: Pool, grace_seconds: f64) -> Result<Vec<StuckSaga>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, customer_id, status, reason, attempts, deadline_at, updated_at
             FROM orders.orders
             WHERE status = 'FAILED'
                OR (status NOT IN ('CONFIRMED', 'REJECTED')
                    AND deadline_at < now() - make_interval(secs => $1))
             ORDER BY updated_at",
            &[&grace_seconds],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| StuckSaga {
            order_id: row.get("id"),
            customer_id: row.get("customer_id"),
            status: status_from(row, "status"),
            reason: reason_from(row, "reason"),
            attempts: row.get("attempts"),
            deadline_at: row.get("deadline_at"),
            updated_at: row.get("updated_at"),
        })
        .collect())
}

async fn advance(
    pool: Pool,
    event_id: Uuid,
    (from_seq, from_attempts): (i32, i32),
    next: SagaState,
    messages: Vec<Envelope>,
) -> Result<Advance, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let update = tx
        .prepare_cached(
            "UPDATE orders.orders
             SET status = $2, reason = $3, seq = $4, deadline_at = $6, attempts = $7, updated_at = now()
             WHERE id = $1 AND seq = $5 AND attempts = $8",
        )
        .await?;
    // Both in one round trip (tokio-postgres pipelines them): whichever
    // says no, returning rolls the transaction back, the other's write too.
    let (first, updated) =
        futures::try_join!(outbox::first_delivery(&tx, SCHEMA, event_id), async {
            tx.execute(
                &update,
                &[
                    &next.order_id,
                    &next.status.as_str(),
                    &reason_str(next.reason),
                    &next.seq,
                    &from_seq,
                    &next.deadline_at,
                    &next.attempts,
                    &from_attempts,
                ],
            )
            .await
            .map_err(DbError::from)
        },)?;
    if !first {
        return Ok(Advance::Duplicate);
    }
    if updated == 0 {
        // Rolling back also forgets the event id, so it is processed again.
        return Ok(Advance::Stale);
    }
    let changes: Vec<_> = messages
        .iter()
        .filter_map(|m| m.event.status_change().map(|c| (c, m.occurred_at)))
        .collect();
    let seqs: Vec<i32> = changes.iter().map(|(c, _)| c.seq).collect();
    let statuses: Vec<&str> = changes.iter().map(|(c, _)| c.status.as_str()).collect();
    let reasons: Vec<Option<&str>> = changes.iter().map(|(c, _)| reason_str(c.reason)).collect();
    let ats: Vec<chrono::DateTime<chrono::Utc>> = changes.iter().map(|(_, at)| *at).collect();
    let history = tx
        .prepare_cached(
            "INSERT INTO orders.status_history (order_id, seq, status, reason, at)
             SELECT $1, * FROM unnest($2::int[], $3::text[], $4::text[], $5::timestamptz[])",
        )
        .await?;
    // The history rows and the outbox rows in one round trip.
    futures::try_join!(
        async {
            tx.execute(
                &history,
                &[&next.order_id, &seqs, &statuses, &reasons, &ats],
            )
            .await
            .map_err(DbError::from)
        },
        outbox::append(&tx, SCHEMA, &messages),
    )?;
    tx.commit().await?;
    Ok(Advance::Applied)
}

async fn get(pool: Pool, order_id: Uuid) -> Result<Option<OrderView>, DbError> {
    let client = pool.get().await?;
    let order = client
        .prepare_cached(
            "SELECT customer_id, status, reason, total_cents, currency, created_at, updated_at
             FROM orders.orders WHERE id = $1",
        )
        .await?;
    let Some(row) = client.query_opt(&order, &[&order_id]).await? else {
        return Ok(None);
    };
    let items = client
        .prepare_cached(
            "SELECT product_id, name, quantity, unit_price_cents FROM orders.order_items
             WHERE order_id = $1 ORDER BY name, product_id",
        )
        .await?;
    let history = client
        .prepare_cached(
            "SELECT seq, status, reason, at FROM orders.status_history WHERE order_id = $1 ORDER BY seq",
        )
        .await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&order_id];
    let (items, history) = futures::try_join!(
        client.query(&items, &params),
        client.query(&history, &params)
    )?;
    Ok(Some(OrderView {
        order_id,
        customer_id: row.get("customer_id"),
        status: status_from(&row, "status"),
        reason: reason_from(&row, "reason"),
        items: items
            .iter()
            .map(|item| OrderItem {
                product_id: item.get(0),
                name: item.get(1),
                quantity: item.get(2),
                unit_price_cents: item.get(3),
            })
            .collect(),
        total_cents: row.get("total_cents"),
        currency: row.get("currency"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        history: history
            .iter()
            .map(|entry| StatusEntry {
                seq: entry.get("seq"),
                status: status_from(entry, "status"),
                reason: reason_from(entry, "reason"),
                at: entry.get("at"),
            })
            .collect(),
    }))
}

async fn list_by_customer(
    pool: Pool,
    customer_id: String,
    limit: i64,
) -> Result<Vec<OrderSummary>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT id, status, reason, total_cents, currency, created_at, updated_at
             FROM orders.orders WHERE customer_id = $1 ORDER BY created_at DESC, id LIMIT $2",
        )
        .await?;
    let rows = client.query(&statement, &[&customer_id, &limit]).await?;
    Ok(rows
        .iter()
        .map(|row| OrderSummary {
            order_id: row.get("id"),
            status: status_from(row, "status"),
            reason: reason_from(row, "reason"),
            total_cents: row.get("total_cents"),
            currency: row.get("currency"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        })
        .collect())
}
