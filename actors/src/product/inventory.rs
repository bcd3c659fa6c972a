//! The product service's consumer of `inventory-commands`: reserves and
//! releases stock through [`InventoryRepo`](super::repo::InventoryRepo) and
//! drops the cached copies of every product whose stock moved.

use super::catalog::Catalog;
use super::repo::InventoryRepoMsg;
use crate::events::Envelope;
use crate::kafka::{EventHandler, HandlerError};
use crate::outbox::OutboxNotifier;
use crate::rpc::{ask, RpcError};
use std::time::Duration;

/// A batch may hold hundreds of orders; give its transaction room.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Handles inventory commands; see the module documentation.
pub struct InventoryCommands {
    /// Repository and cache.
    pub catalog: Catalog,
    /// Wakes the outbox relay once replies are committed.
    pub outbox: OutboxNotifier,
}

impl EventHandler for InventoryCommands {
    async fn handle(&self, batch: Vec<Envelope>) -> Result<(), HandlerError> {
        let touched = ask(
            &self.catalog.repo,
            "inventory repo",
            BATCH_TIMEOUT,
            |reply| InventoryRepoMsg::ApplyCommands { batch, reply },
        )
        .await
        .map_err(|e: RpcError| HandlerError::Transient(e.to_string()))?
        .map_err(|e| {
            if e.is_transient() {
                HandlerError::Transient(e.to_string())
            } else {
                HandlerError::Permanent(e.to_string())
            }
        })?;
        self.outbox.wake();
        if !touched.is_empty() {
            self.catalog.invalidate(touched).await;
        }
        Ok(())
    }
}
