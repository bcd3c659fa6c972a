//! `OrderRepo`: the order service's Postgres repository. It creates orders
//! and persists every saga step together with the events that step sends,
//! in one transaction (transactional outbox), guarded by the order's
//! sequence number so two writers can never both advance the same order.
//! New orders and saga steps are written in groups ([`group`]): those that
//! arrive while earlier groups are being written share one transaction.

pub use super::group::Step;
use super::group::{self, Write};
use super::machine::SagaState;
use super::model::{OrderItem, OrderSummary, OrderView, StatusEntry};
use crate::db::DbError;
use crate::events::{OrderLine, OrderStatus, RejectReason};
use crate::rpc::answer;
use deadpool_postgres::Pool;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_postgres::Row;
use uuid::Uuid;

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
    /// Persists one saga step (in the next group).
    Advance {
        /// The step.
        step: Step,
        /// What happened.
        reply: RpcReplyPort<Result<Advance, DbError>>,
    },
    /// Writes the waiting creations and steps, as one group per free slot.
    Flush,
    /// A group's transaction ended (its writers have been told).
    Written,
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

/// State of [`OrderRepo`].
pub struct RepoState {
    pool: Pool,
    /// Creations and steps waiting for a group, in arrival order.
    pending: Vec<Write>,
    /// Groups being written.
    in_flight: usize,
    /// A [`OrderRepoMsg::Flush`] is in the mailbox: writes that arrive
    /// before it is handled join its group.
    flush_queued: bool,
}

impl RepoState {
    /// Queues `write` for the next group, and a flush if none is queued and
    /// a slot is free.
    fn enqueue(&mut self, myself: &ActorRef<OrderRepoMsg>, write: Write) {
        self.pending.push(write);
        self.schedule(myself);
    }

    fn schedule(&mut self, myself: &ActorRef<OrderRepoMsg>) {
        if !self.flush_queued && !self.pending.is_empty() && self.in_flight < group::MAX_IN_FLIGHT {
            self.flush_queued = myself.send_message(OrderRepoMsg::Flush).is_ok();
        }
    }
}

/// A group's claim on one of the [`group::MAX_IN_FLIGHT`] slots: gives it
/// back when dropped, however the group's task ends (even by a panic), so
/// the repository never waits for a slot that is not coming back.
struct Slot(ActorRef<OrderRepoMsg>);

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = self.0.send_message(OrderRepoMsg::Written);
    }
}

impl Actor for OrderRepo {
    type Msg = OrderRepoMsg;
    type State = RepoState;
    type Arguments = Pool;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        pool: Pool,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RepoState {
            pool,
            pending: Vec::new(),
            in_flight: 0,
            flush_queued: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut RepoState,
    ) -> Result<(), ActorProcessingErr> {
        let pool = state.pool.clone();
        match message {
            OrderRepoMsg::Create { order, reply } if order.idempotency.is_some() => {
                answer(reply, create(pool, order))
            }
            OrderRepoMsg::Create { order, reply } => state.enqueue(
                &myself,
                Write::Create {
                    order: Box::new(order),
                    reply,
                },
            ),
            OrderRepoMsg::Advance { step, reply } => state.enqueue(
                &myself,
                Write::Advance {
                    step: Box::new(step),
                    reply,
                },
            ),
            OrderRepoMsg::Flush => {
                state.flush_queued = false;
                while !state.pending.is_empty() && state.in_flight < group::MAX_IN_FLIGHT {
                    let take = state.pending.len().min(group::MAX_GROUP);
                    let writes: Vec<Write> = state.pending.drain(..take).collect();
                    state.in_flight += 1;
                    let (pool, slot) = (pool.clone(), Slot(myself.clone()));
                    tokio::spawn(async move {
                        group::commit(pool, writes).await;
                        drop(slot);
                    });
                }
            }
            OrderRepoMsg::Written => {
                state.in_flight = state.in_flight.saturating_sub(1);
                state.schedule(&myself);
            }
            OrderRepoMsg::LoadSaga { order_id, reply } => answer(reply, load(pool, order_id)),
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

fn status_from(row: &Row, column: &str) -> OrderStatus {
    // The column only ever holds values written from `OrderStatus`.
    OrderStatus::parse(row.get(column)).unwrap_or(OrderStatus::Pending)
}

fn reason_from(row: &Row, column: &str) -> Option<RejectReason> {
    row.get::<_, Option<&str>>(column)
        .and_then(RejectReason::parse)
}

/// Writes an order that has an idempotency key, alone: completing the key
/// may find its claim lost, and then nothing of the order is stored.
async fn create(pool: Pool, order: NewOrder) -> Result<(), super::idempotency::PlaceError> {
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
    group::insert(&tx, &order).await?;
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
