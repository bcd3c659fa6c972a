//! `ProductCache`: the Redis side of the catalogue's cache-aside reads.
//!
//! Entries are JSON copies of products under `{prefix}:product:{id}` plus the
//! whole catalogue under `{prefix}:products`. They are deleted whenever stock
//! or a product changes, and expire after a short TTL as a backstop against
//! a read that raced an invalidation. Every operation has a short deadline;
//! a failure is a miss, never an error for the client. After a failure the
//! cache is bypassed for a moment (a circuit breaker), so an outage costs
//! one short timeout rather than one per request; when Redis returns, the
//! cache refills from Postgres as entries are read.

use super::model::Product;
use crate::cache::RedisPool;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use redis::AsyncCommands;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long one Redis operation may take before it counts as a miss.
const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// Lifetime of a cached entry.
const TTL_SECONDS: u64 = 30;
/// How long Redis is bypassed after a failure.
const BREAKER_OPEN: Duration = Duration::from_secs(1);

/// The cache actor; see the module documentation.
pub struct ProductCache;

/// Start-up arguments of [`ProductCache`].
#[derive(Clone)]
pub struct CacheArgs {
    /// The Redis pool.
    pub pool: RedisPool,
    /// Key prefix, so several deployments (or test runs) can share a Redis.
    pub prefix: String,
}

/// State of [`ProductCache`], shared with the tasks it spawns.
#[derive(Clone)]
pub struct CacheState {
    args: CacheArgs,
    /// While set and in the future, Redis is not tried.
    bypass_until: Arc<Mutex<Option<Instant>>>,
    /// An invalidation failed: Redis may hold stale entries, so nothing is
    /// read from it until every entry of ours has been dropped.
    must_purge: Arc<AtomicBool>,
}

impl CacheState {
    fn bypassed(&self) -> bool {
        let until = *self.bypass_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|until| Instant::now() < until)
    }

    /// Runs a Redis operation with [`OP_TIMEOUT`]; `None` on any failure,
    /// which also opens the breaker.
    async fn bounded<T>(
        &self,
        operation: impl std::future::Future<Output = Result<T, String>>,
    ) -> Option<T> {
        if self.bypassed() {
            return None;
        }
        if self.must_purge.load(Ordering::Acquire) {
            match tokio::time::timeout(OP_TIMEOUT, purge(&self.args)).await {
                Ok(Ok(())) => {
                    self.must_purge.store(false, Ordering::Release);
                    tracing::info!("redis is back; dropped entries that may have gone stale");
                }
                _ => return self.trip("stale entries could not be purged".into()),
            }
        }
        let failure = match tokio::time::timeout(OP_TIMEOUT, operation).await {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(error)) => error,
            Err(_) => "timed out".to_owned(),
        };
        self.trip(failure)
    }

    /// Opens the breaker after a failure.
    fn trip<T>(&self, failure: String) -> Option<T> {
        let mut until = self.bypass_until.lock().unwrap_or_else(|e| e.into_inner());
        if until.is_none_or(|until| Instant::now() >= until) {
            tracing::warn!(error = %failure, "redis unavailable; serving from postgres");
        }
        *until = Some(Instant::now() + BREAKER_OPEN);
        None
    }
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
    type State = CacheState;
    type Arguments = CacheArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: CacheArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(CacheState {
            args,
            bypass_until: Arc::new(Mutex::new(None)),
            must_purge: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut CacheState,
    ) -> Result<(), ActorProcessingErr> {
        let state = state.clone();
        tokio::spawn(async move {
            let args = &state.args;
            match message {
                ProductCacheMsg::GetMany { ids, reply } => {
                    let found = state.bounded(get_many(args, &ids)).await;
                    let _ = reply.send(found.unwrap_or_else(|| vec![None; ids.len()]));
                }
                ProductCacheMsg::GetAll { reply } => {
                    let _ = reply.send(state.bounded(get_all(args)).await.flatten());
                }
                ProductCacheMsg::PutMany { products } => {
                    state.bounded(put_many(args, &products)).await;
                }
                ProductCacheMsg::PutAll { products } => {
                    state.bounded(put_all(args, &products)).await;
                }
                ProductCacheMsg::Invalidate { ids, reply } => {
                    // Never bypassed: a stale entry must not outlive a change
                    // just because an earlier read failed.
                    let done = tokio::time::timeout(OP_TIMEOUT, invalidate(args, &ids)).await;
                    if !matches!(done, Ok(Ok(()))) {
                        state.must_purge.store(true, Ordering::Release);
                        let _: Option<()> = state.trip("invalidation failed".into());
                    }
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

/// Drops every entry under our prefix.
async fn purge(args: &CacheArgs) -> Result<(), String> {
    let mut conn = args.pool.get().await.map_err(|e| e.to_string())?;
    let pattern = format!("{}:product*", args.prefix);
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        if !keys.is_empty() {
            conn.del::<_, ()>(keys).await.map_err(|e| e.to_string())?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
