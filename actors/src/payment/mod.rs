//! The payment service: a simulated card processor.
//!
//! ```text
//! ServiceSupervisor("payment")
//! ├── PaymentRepo        Postgres: authorizations (essential)
//! ├── OutboxRelay        payment.outbox -> payment-events (essential)
//! └── EventConsumer      payment-commands -> PaymentCommands (restartable)
//! ```

pub mod repo;
pub mod tokens;

use crate::events::{topics, Envelope};
use crate::kafka::Subscription;
use crate::kafka::{EventHandler, HandlerError};
use crate::outbox::OutboxNotifier;
use crate::rpc::ask;
use crate::service::{self, Infra, RunningService};
use crate::supervisor::{self as sup, ChildKind};
use crate::StartError;
use ractor::{Actor, ActorRef};
use repo::PaymentRepoMsg;
use std::sync::Arc;
use std::time::Duration;

/// Handles `payment-commands`: waits the simulated processor latency, then
/// records each decision with its reply.
pub struct PaymentCommands {
    /// Where decisions are stored.
    pub repo: ActorRef<PaymentRepoMsg>,
    /// Wakes the relay once replies are committed.
    pub outbox: OutboxNotifier,
    /// Simulated processor round trip. A batch's authorizations are sent to
    /// the processor together, so a batch waits it once.
    pub latency: Duration,
}

impl EventHandler for PaymentCommands {
    async fn handle(&self, batch: Vec<Envelope>) -> Result<(), HandlerError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        ask(
            &self.repo,
            "payment repo",
            Duration::from_secs(30),
            |reply| PaymentRepoMsg::ApplyCommands { batch, reply },
        )
        .await
        .map_err(|e| HandlerError::Transient(e.to_string()))?
        .map_err(|e| {
            if e.is_transient() {
                HandlerError::Transient(e.to_string())
            } else {
                HandlerError::Permanent(e.to_string())
            }
        })?;
        self.outbox.wake();
        Ok(())
    }
}

/// The running payment service.
pub struct PaymentService {
    /// Its supervisor.
    pub service: RunningService,
}

/// Starts the payment service's actor tree.
pub async fn start(infra: &Infra, latency: Duration) -> Result<PaymentService, StartError> {
    let service = RunningService::start("payment").await?;
    let supervisor = &service.supervisor;
    let (repo, _) = Actor::spawn_linked(
        None,
        repo::PaymentRepo,
        infra.pool.clone(),
        supervisor.get_cell(),
    )
    .await?;
    sup::adopt(
        supervisor,
        repo.get_cell(),
        "payment-repo",
        ChildKind::Essential,
    )
    .await?;
    let outbox = service::start_relay(supervisor, infra, "payment").await?;
    service::start_consumer(
        supervisor,
        infra,
        Subscription::Group {
            group_id: "payment".into(),
        },
        vec![topics::PAYMENT_COMMANDS],
        Arc::new(PaymentCommands {
            repo,
            outbox,
            latency,
        }),
        None,
    )
    .await?;
    Ok(PaymentService { service })
}
