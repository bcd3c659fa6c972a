//! The product service: catalogue and inventory.
//!
//! ```text
//! ServiceSupervisor("product")
//! ├── InventoryRepo      Postgres: products, reservations (essential)
//! ├── ProductCache       Redis: cache-aside copies (essential)
//! ├── OutboxRelay        product.outbox -> inventory-events (essential)
//! └── EventConsumer      inventory-commands -> InventoryCommands (restartable)
//! ```

pub mod cache;
pub mod catalog;
pub mod inventory;
pub mod model;
pub mod repo;

use crate::events::topics;
use crate::kafka::Subscription;
use crate::service::{self, Infra, RunningService};
use crate::supervisor::ChildKind;
use crate::StartError;
use ractor::Actor;
use std::sync::Arc;

pub use catalog::{Catalog, CatalogError};
pub use model::{NewProduct, Product};

/// The running product service.
pub struct ProductService {
    /// Its supervisor, to stop it and to watch it.
    pub service: RunningService,
    /// What the HTTP routes use.
    pub catalog: Catalog,
}

/// Starts the product service's actor tree.
pub async fn start(infra: &Infra) -> Result<ProductService, StartError> {
    let service = RunningService::start("product").await?;
    let sup = &service.supervisor;
    let (repo, _) = Actor::spawn_linked(
        None,
        repo::InventoryRepo,
        infra.pool.clone(),
        sup.get_cell(),
    )
    .await?;
    crate::supervisor::adopt(sup, repo.get_cell(), "inventory-repo", ChildKind::Essential).await?;
    let (cache, _) = Actor::spawn_linked(
        None,
        cache::ProductCache,
        cache::CacheArgs {
            pool: infra.redis.clone(),
            prefix: infra.redis_prefix.clone(),
        },
        sup.get_cell(),
    )
    .await?;
    crate::supervisor::adopt(sup, cache.get_cell(), "product-cache", ChildKind::Essential).await?;
    let catalog = Catalog { repo, cache };
    let outbox = service::start_relay(sup, infra, "product").await?;
    let handler = Arc::new(inventory::InventoryCommands {
        catalog: catalog.clone(),
        outbox,
    });
    service::start_consumer(
        sup,
        infra,
        Subscription::Group {
            group_id: "product".into(),
        },
        vec![topics::INVENTORY_COMMANDS],
        handler,
        None,
    )
    .await?;
    Ok(ProductService { service, catalog })
}
