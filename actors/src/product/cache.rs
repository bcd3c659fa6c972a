//! `ProductCache`: the Redis side of the catalogue's cache-aside reads.
//!
//! Entries are JSON copies of products under `{prefix}:product:{id}` plus the
//! whole catalogue under `{prefix}:products`. They are deleted whenever stock
//! or a product changes, and expire after a short TTL as a backstop against
//! a read that raced an invalidation. Every operation has a short deadline;
//! a failure is a miss, never an error for the client.

use super::model::Product;
use crate::cache::RedisPool;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use redis::AsyncCommands;
use std::time::Duration;
use uuid::Uuid;

/// How long one Redis operation may take before it counts as a miss.
const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// Lifetime of a cached entry.
const TTL_SECONDS: u64 = 30;

/// The cache actor; see the module documentation.
pub struct ProductCache;

/// Start-up arguments and state of [`ProductCache`].
#[derive(Clone)]
pub struct CacheArgs {
    /// The Redis pool.
    pub pool: RedisPool,
    /// Key prefix, so several deployments (or test runs) can share a Redis.
    pub prefix: String,
}

/// Messages of [`ProductCache`].
pub enum ProductCacheMsg {
    /// Cached copies of these products; `None` where missing.
    GetMany {
        /// Products wanted.
        ids: Vec<Uuid>,
        /// One entry per id, in order.
        reply: RpcReplyPort<Vec<Option<Product>>>,
    },
    /// The cached catalogue, if any.
    GetAll {
        /// The catalogue, or `None` on a miss.
        reply: RpcReplyPort<Option<Vec<Product>>>,
    },
    /// Stores products read from Postgres.
    PutMany {
        /// Fresh copies.
        products: Vec<Product>,
    },
    /// Stores the whole catalogue.
    PutAll {
        /// The catalogue, fresh from Postgres.
        products: Vec<Product>,
    },
    /// Drops these products and the catalogue; answered once done, so a
    /// writer can invalidate before acknowledging its change.
    Invalidate {
        /// Products that changed.
        ids: Vec<Uuid>,
        /// Answered when the keys are gone (or Redis is unreachable).
        reply: RpcReplyPort<()>,
    },
}

impl Actor for ProductCache {
    type Msg = ProductCacheMsg;
    type State = CacheArgs;
    type Arguments = CacheArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: CacheArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut CacheArgs,
    ) -> Result<(), ActorProcessingErr> {
        let args = state.clone();
        tokio::spawn(async move {
            match message {
                ProductCacheMsg::GetMany { ids, reply } => {
                    let found = bounded(get_many(&args, &ids)).await;
                    let _ = reply.send(found.unwrap_or_else(|| vec![None; ids.len()]));
                }
                ProductCacheMsg::GetAll { reply } => {
                    let _ = reply.send(bounded(get_all(&args)).await.flatten());
                }
                ProductCacheMsg::PutMany { products } => {
                    bounded(put_many(&args, &products)).await;
                }
                ProductCacheMsg::PutAll { products } => {
                    bounded(put_all(&args, &products)).await;
                }
                ProductCacheMsg::Invalidate { ids, reply } => {
                    bounded(invalidate(&args, &ids)).await;
                    let _ = reply.send(());
                }
            }
        });
        Ok(())
    }
}

fn product_key(prefix: &str, id: Uuid) -> String {
    format!("{prefix}:product:{id}")
}

fn catalogue_key(prefix: &str) -> String {
    format!("{prefix}:products")
}

/// Runs a Redis operation with [`OP_TIMEOUT`], logging failures; `None` on
/// any failure.
async fn bounded<T>(operation: impl std::future::Future<Output = Result<T, String>>) -> Option<T> {
    match tokio::time::timeout(OP_TIMEOUT, operation).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(error)) => {
            tracing::debug!(%error, "redis operation failed; falling back to postgres");
            None
        }
        Err(_) => {
            tracing::debug!("redis operation timed out; falling back to postgres");
            None
        }
    }
}

async fn get_many(args: &CacheArgs, ids: &[Uuid]) -> Result<Vec<Option<Product>>, String> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = args.pool.get().await.map_err(|e| e.to_string())?;
    let keys: Vec<String> = ids
        .iter()
        .map(|id| product_key(&args.prefix, *id))
        .collect();
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(values
        .into_iter()
        .map(|value| value.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
        .collect())
}

async fn get_all(args: &CacheArgs) -> Result<Option<Vec<Product>>, String> {
    let mut conn = args.pool.get().await.map_err(|e| e.to_string())?;
    let value: Option<Vec<u8>> = conn
        .get(catalogue_key(&args.prefix))
        .await
        .map_err(|e| e.to_string())?;
    Ok(value.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

async fn put_many(args: &CacheArgs, products: &[Product]) -> Result<(), String> {
    let mut conn = args.pool.get().await.map_err(|e| e.to_string())?;
    let mut pipe = redis::pipe();
    for product in products {
        let json = serde_json::to_vec(product).map_err(|e| e.to_string())?;
        pipe.set_ex(product_key(&args.prefix, product.id), json, TTL_SECONDS)
            .ignore();
    }
    pipe.query_async::<()>(&mut *conn)
        .await
        .map_err(|e| e.to_string())
}

async fn put_all(args: &CacheArgs, products: &[Product]) -> Result<(), String> {
    let mut conn = args.pool.get().await.map_err(|e| e.to_string())?;
    let json = serde_json::to_vec(products).map_err(|e| e.to_string())?;
    conn.set_ex::<_, _, ()>(catalogue_key(&args.prefix), json, TTL_SECONDS)
        .await
        .map_err(|e| e.to_string())
}

async fn invalidate(args: &CacheArgs, ids: &[Uuid]) -> Result<(), String> {
    let mut conn = args.pool.get().await.map_err(|e| e.to_string())?;
    let mut keys: Vec<String> = ids
        .iter()
        .map(|id| product_key(&args.prefix, *id))
        .collect();
    keys.push(catalogue_key(&args.prefix));
    conn.del::<_, ()>(keys).await.map_err(|e| e.to_string())
}
