//! `Catalog`: what the product service's HTTP routes call. It reads
//! cache-aside (Redis first, Postgres on a miss, then fill Redis) and
//! invalidates the cache after every write.

use super::cache::ProductCacheMsg;
use super::model::{NewProduct, Product};
use super::repo::{CreateError, InventoryRepoMsg};
use crate::db::DbError;
use crate::rpc::{ask, RpcError, DEFAULT_TIMEOUT};
use ractor::ActorRef;
use std::time::Duration;
use uuid::Uuid;

/// How long a cache read may take before we go to Postgres anyway.
const CACHE_TIMEOUT: Duration = Duration::from_millis(300);

/// Why a catalogue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Another product has this SKU.
    #[error("{0}")]
    Conflict(String),
    /// The database or an actor is unavailable.
    #[error("catalogue unavailable: {0}")]
    Unavailable(String),
}

impl From<DbError> for CatalogError {
    fn from(e: DbError) -> Self {
        CatalogError::Unavailable(e.to_string())
    }
}

impl From<RpcError> for CatalogError {
    fn from(e: RpcError) -> Self {
        CatalogError::Unavailable(e.to_string())
    }
}

/// Handle to the catalogue's actors; cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    /// Postgres.
    pub(crate) repo: ActorRef<InventoryRepoMsg>,
    /// Redis.
    pub(crate) cache: ActorRef<ProductCacheMsg>,
}

impl Catalog {
    /// Every product.
    pub async fn list(&self) -> Result<Vec<Product>, CatalogError> {
        let cached = ask(&self.cache, "product cache", CACHE_TIMEOUT, |reply| {
            ProductCacheMsg::GetAll { reply }
        })
        .await
        .ok()
        .flatten();
        if let Some(products) = cached {
            return Ok(products);
        }
        let products = ask(&self.repo, "inventory repo", DEFAULT_TIMEOUT, |reply| {
            InventoryRepoMsg::List { reply }
        })
        .await??;
        let _ = self.cache.send_message(ProductCacheMsg::PutAll {
            products: products.clone(),
        });
        Ok(products)
    }

    /// The products with these ids, in the order asked; unknown ids are left out.
    pub async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<Product>, CatalogError> {
        let cached = ask(&self.cache, "product cache", CACHE_TIMEOUT, |reply| {
            ProductCacheMsg::GetMany {
                ids: ids.to_vec(),
                reply,
            }
        })
        .await
        .unwrap_or_else(|_| vec![None; ids.len()]);
        let missing: Vec<Uuid> = ids
            .iter()
            .zip(&cached)
            .filter(|(_, hit)| hit.is_none())
            .map(|(id, _)| *id)
            .collect();
        let fetched = if missing.is_empty() {
            Vec::new()
        } else {
            let fetched = ask(&self.repo, "inventory repo", DEFAULT_TIMEOUT, |reply| {
                InventoryRepoMsg::GetMany {
                    ids: missing,
                    reply,
                }
            })
            .await??;
            if !fetched.is_empty() {
                let _ = self.cache.send_message(ProductCacheMsg::PutMany {
                    products: fetched.clone(),
                });
            }
            fetched
        };
        Ok(ids
            .iter()
            .zip(cached)
            .filter_map(|(id, hit)| hit.or_else(|| fetched.iter().find(|p| p.id == *id).cloned()))
            .collect())
    }

    /// One product, if it exists.
    pub async fn get(&self, id: Uuid) -> Result<Option<Product>, CatalogError> {
        Ok(self.get_many(&[id]).await?.pop())
    }

    /// Creates a product (input already validated).
    pub async fn create(&self, product: NewProduct) -> Result<Product, CatalogError> {
        let created = ask(&self.repo, "inventory repo", DEFAULT_TIMEOUT, |reply| {
            InventoryRepoMsg::Create { product, reply }
        })
        .await?
        .map_err(|e| match e {
            CreateError::DuplicateSku(_) => CatalogError::Conflict(e.to_string()),
            CreateError::Db(db) => db.into(),
        })?;
        self.invalidate(vec![created.id]).await;
        Ok(created)
    }

    /// Sets a product's stock; `None` if there is no such product.
    pub async fn set_stock(&self, id: Uuid, stock: i32) -> Result<Option<Product>, CatalogError> {
        let updated = ask(&self.repo, "inventory repo", DEFAULT_TIMEOUT, |reply| {
            InventoryRepoMsg::SetStock { id, stock, reply }
        })
        .await??;
        self.invalidate(vec![id]).await;
        Ok(updated)
    }

    /// Drops cached copies of `ids` (and the catalogue).
    pub async fn invalidate(&self, ids: Vec<Uuid>) {
        let _ = ask(&self.cache, "product cache", CACHE_TIMEOUT, |reply| {
            ProductCacheMsg::Invalidate { ids, reply }
        })
        .await;
    }
}
