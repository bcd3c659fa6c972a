//! The order service's consumer of `inventory-events` and `payment-events`:
//! routes each reply to its order's saga and reports the batch done only
//! when every resulting step is durable.

use super::saga::is_saga_reply;
use super::sagas::SagasMsg;
use crate::events::Envelope;
use crate::kafka::{EventHandler, HandlerError};
use crate::rpc::ask;
use futures::future::join_all;
use ractor::ActorRef;
use std::time::Duration;

/// How long one saga step may take before the batch is retried.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Handles saga replies; see the module documentation.
pub struct SagaReplies {
    /// Routes replies to sagas.
    pub sagas: ActorRef<SagasMsg>,
}

impl EventHandler for SagaReplies {
    async fn handle(&self, batch: Vec<Envelope>) -> Result<(), HandlerError> {
        let replies = batch.into_iter().filter(|envelope| {
            let saga_reply = is_saga_reply(&envelope.event);
            if !saga_reply {
                tracing::warn!(
                    event_type = envelope.event.type_name(),
                    "not a saga reply; ignored"
                );
            }
            saga_reply
        });
        // Different orders proceed in parallel; one order's replies in order.
        let by_order = crate::inbox::by_order(replies, |e| e.order_id);
        let results = join_all(by_order.into_iter().map(|replies| async move {
            for envelope in replies {
                ask(&self.sagas, "saga supervisor", STEP_TIMEOUT, |reply| {
                    SagasMsg::Deliver { envelope, reply }
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        }))
        .await;
        match results.into_iter().find_map(Result::err) {
            Some(error) => Err(HandlerError::Transient(error)),
            None => Ok(()),
        }
    }
}
