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
use deadpool_postgres::{Pool, Transaction};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
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
///
/// Each command is one statement, and the commands of different orders
/// are sent together (tokio-postgres pipelines them; Postgres runs them one
/// after the other), so a batch costs a few round trips, not a few per
/// command. One order's commands still run one after the other, in
/// partition order.
pub async fn apply_commands(pool: Pool, batch: Vec<Envelope>) -> Result<Vec<Uuid>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Every id of the batch recorded in one round trip, in this transaction.
    let replies = crate::inbox::apply_batch(&tx, SCHEMA, "product", &batch, |envelope| {
        apply_command(&tx, envelope)
    })
    .await?;
    let mut touched: Vec<Uuid> = replies
        .iter()
        .flat_map(|reply| match &reply.event {
            Event::InventoryReserved(InventoryReserved { items })
            | Event::InventoryReleased(InventoryReleased { items }) => {
                items.iter().map(|level| level.product_id).collect()
            }
            _ => Vec::new(),
        })
        .collect();
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

/// Takes every line of the order out of stock, or none of them, in one
/// statement (`product.reserve`, migration 5). A second reserve for the
/// same order (a replayed command with a new event id) must not take stock
/// twice: it is answered with what is held. And an order whose stock was
/// already given back (its saga compensated) never takes stock again,
/// however late or often its reserve arrives.
async fn reserve(
    tx: &Transaction<'_>,
    order_id: Uuid,
    items: &[OrderLine],
) -> Result<Event, DbError> {
    let ids: Vec<Uuid> = items.iter().map(|line| line.product_id).collect();
    let quantities: Vec<i32> = items.iter().map(|line| line.quantity).collect();
    let statement = tx
        .prepare_cached(
            "SELECT outcome, product_id, quantity, stock, reason FROM product.reserve($1, $2, $3)",
        )
        .await?;
    let rows = tx
        .query(&statement, &[&order_id, &ids, &quantities])
        .await?;
    Ok(reservation_reply(order_id, &rows))
}

/// The reply for what `product.reserve` returned.
fn reservation_reply(order_id: Uuid, rows: &[Row]) -> Event {
    let outcome = rows.first().map(|row| row.get::<_, &str>(0));
    let levels = || {
        rows.iter()
            .map(|row| StockLevel {
                product_id: row.get(1),
                quantity: row.get(2),
                stock: row.get(3),
            })
            .collect()
    };
    match (outcome, rows.first()) {
        (Some("held" | "reserved"), _) => {
            Event::InventoryReserved(InventoryReserved { items: levels() })
        }
        (Some("released"), Some(row)) => {
            let reason: &str = row.get(4);
            Event::InventoryRejected(InventoryRejected {
                reason: RejectReason::parse(reason).unwrap_or(RejectReason::Timeout),
                product_id: None,
                message: format!("order {order_id} was cancelled ({reason}); nothing reserved"),
            })
        }
        (Some(shortfall), Some(row)) => {
            let product_id: Uuid = row.get(1);
            let quantity: i32 = row.get(2);
            let have: Option<i32> = row.get(3);
            let have = have.unwrap_or(0);
            let message = match shortfall {
                "missing" => format!("product {product_id} does not exist"),
                "invalid" => {
                    format!("invalid quantity {quantity} for product {product_id} (have {have})")
                }
                _ => format!("product {product_id} has {have} in stock, {quantity} requested"),
            };
            Event::InventoryRejected(InventoryRejected {
                reason: RejectReason::OutOfStock,
                product_id: Some(product_id),
                message,
            })
        }
        // No lines at all (validation never sends that): nothing to take.
        _ => Event::InventoryReserved(InventoryReserved { items: Vec::new() }),
    }
}

/// Returns whatever the order still holds; releasing twice returns nothing
/// the second time. Leaves a tombstone so a later reserve is refused. One
/// statement, like [`reserve`].
async fn release(
    tx: &Transaction<'_>,
    order_id: Uuid,
    reason: RejectReason,
) -> Result<Event, DbError> {
    let give_back = tx
        .prepare_cached(
            "WITH tombstone AS (
                 INSERT INTO product.released_orders (order_id, reason) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING
             ), released AS (
                 UPDATE product.reservations SET status = 'RELEASED', updated_at = now()
                 WHERE order_id = $1 AND status = 'RESERVED'
                 RETURNING product_id, quantity
             )
             UPDATE product.products p SET stock = p.stock + r.quantity, updated_at = now()
             FROM released r WHERE p.id = r.product_id
             RETURNING p.id, r.quantity, p.stock",
        )
        .await?;
    let rows = tx.query(&give_back, &[&order_id, &reason.as_str()]).await?;
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
