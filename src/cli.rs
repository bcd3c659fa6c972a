//! The `shop` command line: which service(s) to run, or which tool.

use crate::config::Settings;
use crate::startup::{Platform, Role};
use anyhow::Context;
use clap::{Parser, Subcommand};
use shop_actors::events::topics;

/// shop: an event-driven e-commerce platform (product, order, payment and
/// gateway services over Kafka).
#[derive(Debug, Parser)]
#[command(name = "shop", version, about)]
pub struct Cli {
    /// What to run; `all` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings, from flags or environment variables.
    #[command(flatten)]
    pub settings: Settings,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// All four services in one process (embedded Kafka if KAFKA_BROKERS is unset).
    All,
    /// The product service: catalogue and inventory.
    Product,
    /// The order service: REST entry point and saga orchestrator.
    Order,
    /// The payment service: simulated card processor.
    Payment,
    /// The WebSocket gateway.
    Gateway,
    /// Create the database if needed, apply every migration, and exit.
    Migrate,
    /// Run only an embedded Kafka-protocol broker (for running services as
    /// separate processes on a machine without Kafka); prints its address.
    /// Reads `down` and `up` lines on standard input to simulate an outage
    /// (for fault-injection tests); data survives it.
    Broker,
}

/// Parses the command line and runs it.
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    crate::telemetry::init(cli.settings.log_format);
    let role = match cli.command.unwrap_or(Command::All) {
        Command::All => Role::All,
        Command::Product => Role::Product,
        Command::Order => Role::Order,
        Command::Payment => Role::Payment,
        Command::Gateway => Role::Gateway,
        Command::Migrate => {
            let url = &cli.settings.database_url;
            shop_actors::db::ensure_database(url)
                .await
                .context("creating the database")?;
            shop_actors::db::migrate(url, &shop_actors::db::ALL_SCHEMAS)
                .await
                .context("migrating")?;
            tracing::info!("migrations applied");
            return Ok(());
        }
        Command::Broker => {
            let broker = shop_actors::kafka::EmbeddedBroker::start(
                &topics::ALL,
                cli.settings.kafka_partitions,
            )
            .context("starting the embedded broker")?;
            println!("{}", broker.bootstrap_servers());
            tracing::info!(
                brokers = broker.bootstrap_servers(),
                "embedded broker running; Ctrl-C to stop"
            );
            let broker = std::sync::Arc::new(broker);
            tokio::spawn(broker_control(broker.clone()));
            shutdown_signal().await;
            return Ok(());
        }
    };
    let mut platform = Platform::start(&cli.settings, role)
        .await
        .context("starting shop")?;
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            platform.shutdown().await;
            Ok(())
        }
        service = platform.failed() => {
            anyhow::bail!("the {service} service stopped unexpectedly; exiting so it can be restarted")
        }
    }
}

/// Applies `down` / `up` lines from standard input to the broker. End of
/// input (no terminal, or CI) just ends the control loop.
async fn broker_control(broker: std::sync::Arc<shop_actors::kafka::EmbeddedBroker>) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let up = match line.trim() {
            "down" => false,
            "up" => true,
            "" => continue,
            other => {
                tracing::warn!(command = other, "unknown broker command; use `down` or `up`");
                continue;
            }
        };
        match broker.set_broker_up(up) {
            Ok(()) => tracing::warn!(up, "broker availability changed"),
            Err(error) => tracing::error!(%error, "could not change broker availability"),
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
