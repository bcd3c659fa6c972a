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
    /// Simulated processor round trip. The simulated processor works on
    /// authorizations concurrently, each from the moment it was issued (its
    /// `occurred_at`), as a real processor's client would call it: a batch
    /// waits until its newest command has had this long, so a command that
    /// already waited behind the previous batch does not wait it again.
    pub latency: Duration,
}

/// How much longer a batch whose newest command was issued at `newest`
/// must wait, at `now`, for the simulated processor to have answered.
fn processor_wait(
    latency: Duration,
    newest: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> Duration {
    // A clock behind the issuer's (another machine) counts as no time
    // spent; never more than one full latency either way.
    let spent = (now - newest).to_std().unwrap_or_default();
    latency.saturating_sub(spent)
}

impl EventHandler for PaymentCommands {
    async fn handle(&self, batch: Vec<Envelope>) -> Result<(), HandlerError> {
        if let Some(newest) = batch.iter().map(|e| e.occurred_at).max() {
            let wait = processor_wait(self.latency, newest, chrono::Utc::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
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

#[cfg(test)]
mod tests {
    use super::processor_wait;
    use chrono::{TimeZone, Utc};
    use std::time::Duration;

    #[test]
    fn a_batch_waits_only_what_its_newest_command_has_not_yet_spent() {
        let latency = Duration::from_millis(20);
        let issued = Utc.timestamp_millis_opt(1_000_000).unwrap();
        let at = |ms| issued + chrono::Duration::milliseconds(ms);
        assert_eq!(processor_wait(latency, issued, at(0)), latency);
        assert_eq!(
            processor_wait(latency, issued, at(15)),
            Duration::from_millis(5)
        );
        assert_eq!(processor_wait(latency, issued, at(20)), Duration::ZERO);
        assert_eq!(processor_wait(latency, issued, at(500)), Duration::ZERO);
        // Issued "in the future" by a clock ahead of ours: one latency, no more.
        assert_eq!(processor_wait(latency, issued, at(-30)), latency);
        assert_eq!(
            processor_wait(Duration::ZERO, issued, at(0)),
            Duration::ZERO
        );
    }
}
