//! `InventoryRepo`: the product service's Postgres repository. It owns every
//! read and write of the `product` schema, including the atomic stock
//! reservation that makes overselling impossible.
//!
//! Each request runs as its own task on the pool, so the actor's mailbox
//! never waits on a query and independent requests proceed in parallel.

use super::model::{NewProduct, Product};
use crate::db::DbError;
use crate::events::{
    Envelope, Event, InventoryRejected, InventoryReleased, InventoryReserved, OrderLine,
    RejectReason, StockLevel,
};
use crate::outbox;
use crate::rpc::answer;
use crate::trace;
use deadpool_postgres::{Pool, Transaction};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use tracing::Instrument;
use uuid::Uuid;

const SCHEMA: &str = "product";
const COLUMNS: &str = "id, sku, name, description, price_cents, currency, stock, updated_at";

/// Why a product could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Another product already has this SKU.
    #[error("a product with sku {0} already exists")]
    DuplicateSku(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The repository actor; see the module documentation.
pub struct InventoryRepo;

/// Messages of [`InventoryRepo`].
pub enum InventoryRepoMsg {
    /// All products, ordered by name.
    List {
        /// The products.
        reply: RpcReplyPort<Result<Vec<Product>, DbError>>,
    },
    /// The products with these ids (missing ids are simply absent).
    GetMany {
        /// Ids to look up.
        ids: Vec<Uuid>,
        /// The products found.
        reply: RpcReplyPort<Result<Vec<Product>, DbError>>,
    },
    /// Creates a product.
    Create {
        /// Validated input.
        product: NewProduct,
        /// The stored product.
        reply: RpcReplyPort<Result<Product, CreateError>>,
    },
    /// Sets a product's stock to an absolute level (restock or correction).
    SetStock {
        /// The product.
        id: Uuid,
        /// The new level, already validated.
        stock: i32,
        /// The updated product, or `None` if there is no such product.
        reply: RpcReplyPort<Result<Option<Product>, DbError>>,
    },
    /// Applies a batch of inventory commands in one transaction: each one
    /// at most once, with its reply appended to the outbox.
    ApplyCommands {
        /// Decoded `inventory-commands` envelopes, in partition order.
        batch: Vec<Envelope>,
        /// Ids of the products whose stock changed.
        reply: RpcReplyPort<Result<Vec<Uuid>, DbError>>,
    },
}

impl Actor for InventoryRepo {
    type Msg = InventoryRepoMsg;
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
            InventoryRepoMsg::List { reply } => answer(reply, list(pool)),
            InventoryRepoMsg::GetMany { ids, reply } => answer(reply, get_many(pool, ids)),
            InventoryRepoMsg::Create { product, reply } => answer(reply, create(pool, product)),
            InventoryRepoMsg::SetStock { id, stock, reply } => {
                answer(reply, set_stock(pool, id, stock))
            }
            InventoryRepoMsg::ApplyCommands { batch, reply } => {
                answer(reply, apply_commands(pool, batch))
            }
        }
        Ok(())
    }
}

fn product_from(row: &Row) -> Product {
    Product {
        id: row.get(0),
        sku: row.get(1),
        name: row.get(2),
        description: row.get(3),
        price_cents: row.get(4),
        currency: row.get(5),
        stock: row.get(6),
        updated_at: row.get(7),
    }
}

async fn list(pool: Pool) -> Result<Vec<Product>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM product.products ORDER BY name, id"
        ))
        .await?;
    let rows = client.query(&statement, &[]).await?;
    Ok(rows.iter().map(product_from).collect())
}

async fn get_many(pool: Pool, ids: Vec<Uuid>) -> Result<Vec<Product>, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM product.products WHERE id = ANY($1)"
        ))
        .await?;
    let rows = client.query(&statement, &[&ids]).await?;
    Ok(rows.iter().map(product_from).collect())
}

async fn create(pool: Pool, product: NewProduct) -> Result<Product, CreateError> {
    let client = pool.get().await.map_err(DbError::from)?;
    let result = client
        .query_one(
            &format!(
                "INSERT INTO product.products (id, sku, name, description, price_cents, currency, stock)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::now_v7(),
                &product.sku.trim(),
                &product.name.trim(),
                &product.description,
                &product.price_cents,
                &product.currency,
                &product.stock,
            ],
        )
        .await;
    match result {
        Ok(row) => Ok(product_from(&row)),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            Err(CreateError::DuplicateSku(product.sku.trim().to_owned()))
        }
        Err(e) => Err(DbError::from(e).into()),
    }
}

async fn set_stock(pool: Pool, id: Uuid, stock: i32) -> Result<Option<Product>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE product.products SET stock = $2, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
            ),
            &[&id, &stock],
        )
        .await?;
    Ok(row.as_ref().map(product_from))
}

/// Applies a batch of `inventory-commands` in one transaction: records its
/// event ids (a redelivered one does nothing), reserves or releases stock
/// for each new one, and appends the replies to the outbox. Returns the
/// products whose stock moved. What the consumer's handler does through
/// [`InventoryRepo`]; public for the benchmarks.
pub async fn apply_commands(pool: Pool, batch: Vec<Envelope>) -> Result<Vec<Uuid>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Every id of the batch recorded in one round trip, in this transaction.
    let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
    let mut fresh = outbox::first_deliveries(&tx, SCHEMA, &ids).await?;
    let mut replies = Vec::with_capacity(batch.len());
    let mut touched = Vec::new();
    for envelope in &batch {
        // `remove`: an id twice in one batch is applied once.
        if !fresh.remove(&envelope.event_id) {
            tracing::debug!(event_id = %envelope.event_id, "duplicate inventory command ignored");
            continue;
        }
        // Each command's work is its own span in its order's trace, though
        // the batch shares one transaction.
        let span = trace::process_span("product", envelope);
        let Some(reply) = apply_command(&tx, envelope)
            .instrument(span.clone())
            .await?
        else {
            continue;
        };
        if let Event::InventoryReserved(InventoryReserved { items })
        | Event::InventoryReleased(InventoryReleased { items }) = &reply
        {
            touched.extend(items.iter().map(|level| level.product_id));
        }
        replies.push(
            span.in_scope(|| Envelope::new(envelope.order_id, envelope.correlation_id, reply)),
        );
    }
    outbox::append(&tx, SCHEMA, &replies).await?;
    tx.commit().await?;
    touched.sort_unstable();
    touched.dedup();
    Ok(touched)
}

/// Applies one command, already recorded as processed, in the batch's
/// transaction; returns its reply, or nothing for a misrouted message.
async fn apply_command(
    tx: &Transaction<'_>,
    envelope: &Envelope,
) -> Result<Option<Event>, DbError> {
    let reply = match &envelope.event {
        Event::ReserveInventory(command) => reserve(tx, envelope.order_id, &command.items).await?,
        Event::ReleaseInventory(command) => release(tx, envelope.order_id, command.reason).await?,
        other => {
            tracing::warn!(
                event_type = other.type_name(),
                "not an inventory command; ignored"
            );
            return Ok(None);
        }
    };
    Ok(Some(reply))
}

/// Takes every line of the order out of stock, or none of them.
async fn reserve(
    tx: &Transaction<'_>,
    order_id: Uuid,
    items: &[OrderLine],
) -> Result<Event, DbError> {
    // A second reserve for the same order (a replayed command with a new
    // event id) must not take stock twice: answer with what is held. And an
    // order whose stock was already given back (its saga compensated) never
    // takes stock again, however late or often its reserve arrives. Both
    // are asked in one round trip: held rows have a product, the tombstone
    // (at most one) only a reason.
    let before = tx
        .prepare_cached(
            "SELECT r.product_id, r.quantity, p.stock, NULL::text AS released
             FROM product.reservations r JOIN product.products p ON p.id = r.product_id
             WHERE r.order_id = $1 AND r.status = 'RESERVED'
             UNION ALL
             SELECT NULL, NULL, NULL, reason FROM product.released_orders WHERE order_id = $1",
        )
        .await?;
    let before = tx.query(&before, &[&order_id]).await?;
    let (held, released): (Vec<&Row>, Vec<&Row>) = before
        .iter()
        .partition(|row| row.get::<_, Option<Uuid>>(0).is_some());
    if !held.is_empty() {
        return Ok(Event::InventoryReserved(InventoryReserved {
            items: held.into_iter().map(stock_level).collect(),
        }));
    }
    if let Some(row) = released.first() {
        let reason: &str = row.get(3);
        return Ok(Event::InventoryRejected(InventoryRejected {
            reason: RejectReason::parse(reason).unwrap_or(RejectReason::Timeout),
            product_id: None,
            message: format!("order {order_id} was cancelled ({reason}); nothing reserved"),
        }));
    }
    let mut lines = items.to_vec();
    lines.sort_by_key(|line| line.product_id);
    let ids: Vec<Uuid> = lines.iter().map(|line| line.product_id).collect();
    let quantities: Vec<i32> = lines.iter().map(|line| line.quantity).collect();
    // Lock the rows in id order, so concurrent reservations cannot deadlock,
    // and check every line before changing any.
    let lock = tx
        .prepare_cached(
            "SELECT id, stock FROM product.products WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .await?;
    let stock = tx.query(&lock, &[&ids]).await?;
    for line in &lines {
        let available = stock
            .iter()
            .find(|row| row.get::<_, Uuid>(0) == line.product_id)
            .map(|row| row.get::<_, i32>(1));
        let shortfall = match available {
            None => Some(format!("product {} does not exist", line.product_id)),
            Some(have) if line.quantity <= 0 => Some(format!(
                "invalid quantity {} for product {} (have {have})",
                line.quantity, line.product_id
            )),
            Some(have) if have < line.quantity => Some(format!(
                "product {} has {have} in stock, {} requested",
                line.product_id, line.quantity
            )),
            Some(_) => None,
        };
        if let Some(message) = shortfall {
            return Ok(Event::InventoryRejected(InventoryRejected {
                reason: RejectReason::OutOfStock,
                product_id: Some(line.product_id),
                message,
            }));
        }
    }
    let take = tx
        .prepare_cached(
            "WITH lines AS (SELECT * FROM unnest($1::uuid[], $2::int[]) AS l(product_id, quantity)),
             taken AS (
                 UPDATE product.products p SET stock = p.stock - l.quantity, updated_at = now()
                 FROM lines l WHERE p.id = l.product_id
                 RETURNING p.id, l.quantity, p.stock
             ),
             held AS (
                 INSERT INTO product.reservations (order_id, product_id, quantity, status)
                 SELECT $3, product_id, quantity, 'RESERVED' FROM lines
             )
             SELECT id, quantity, stock FROM taken",
        )
        .await?;
    let rows = tx.query(&take, &[&ids, &quantities, &order_id]).await?;
    Ok(Event::InventoryReserved(InventoryReserved {
        items: rows.iter().map(stock_level).collect(),
    }))
}

/// Returns whatever the order still holds; releasing twice returns nothing
/// the second time. Leaves a tombstone so a later reserve is refused.
async fn release(
    tx: &Transaction<'_>,
    order_id: Uuid,
    reason: RejectReason,
) -> Result<Event, DbError> {
    let tombstone = tx
        .prepare_cached(
            "INSERT INTO product.released_orders (order_id, reason) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&tombstone, &[&order_id, &reason.as_str()])
        .await?;
    let give_back = tx
        .prepare_cached(
            "WITH released AS (
                 UPDATE product.reservations SET status = 'RELEASED', updated_at = now()
                 WHERE order_id = $1 AND status = 'RESERVED'
                 RETURNING product_id, quantity
             )
             UPDATE product.products p SET stock = p.stock + r.quantity, updated_at = now()
             FROM released r WHERE p.id = r.product_id
             RETURNING p.id, r.quantity, p.stock",
        )
        .await?;
    let rows = tx.query(&give_back, &[&order_id]).await?;
    Ok(Event::InventoryReleased(InventoryReleased {
        items: rows.iter().map(stock_level).collect(),
    }))
}

fn stock_level(row: &Row) -> StockLevel {
    StockLevel {
        product_id: row.get(0),
        quantity: row.get(1),
        stock: row.get(2),
    }
}
