//! The `shop` command line: which service(s) to run, or which tool.

use crate::config::Settings;
use crate::startup::{Platform, Role};
use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use shop_actors::events::topics;
use shop_actors::kafka::dead_letters::{self, DeadLetter, ReplayProgress, Selection};
use shop_actors::kafka::KafkaSettings;
use std::io::Write;

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
    /// Benchmark one WebSocket gateway: open N customer connections,
    /// publish status updates to `order-events` at a fixed rate, and report
    /// publication-to-client latency and the gateway's memory per
    /// connection. Needs KAFKA_BROKERS and the gateway's token secret.
    Wsbench(crate::wsbench::WsBenchArgs),
    /// Print a bearer token signed with JWT_SECRET, or else with the
    /// development secret (`JWT_DEV_SECRET_FILE`), which is created if missing.
    Token {
        /// The customer id (the token's subject).
        #[arg(long)]
        customer: String,
        /// An admin token instead of a customer one.
        #[arg(long)]
        admin: bool,
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_seconds: u64,
    },
    /// The load harness: places orders at a fixed rate (open loop) or
    /// concurrency (closed loop), follows each to its final status over a
    /// WebSocket, and reports latency, throughput and errors (summary on
    /// stdout, `--out` JSON, `--svg` chart). `--embedded` runs the platform
    /// in this process; otherwise `--order-url`, `--product-url` and
    /// `--gateway-url` say where it is.
    Loadgen(crate::loadgen::LoadgenArgs),
    /// Inspect or replay the dead-letter topic, where consumers put the
    /// messages they cannot handle. Needs KAFKA_BROKERS.
    Dlq {
        /// What to do.
        #[command(subcommand)]
        command: DlqCommand,
    },
}

/// `shop dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show every dead letter: where it came from, why it failed, and
    /// whether it was already replayed.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to the topic they came from, once their cause
    /// is fixed. A dead letter is never replayed twice; prints what it sent.
    Replay(ReplayArgs),
}

/// Which dead letters `shop dlq replay` sends: exactly one of the choices.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("selection")
        .required(true)
        .args(["all", "topic", "partition"])
))]
pub struct ReplayArgs {
    /// Every pending dead letter.
    #[arg(long)]
    pub all: bool,
    /// Pending dead letters that came from this topic, as `shop dlq list`
    /// shows it or without KAFKA_TOPIC_PREFIX.
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,
    /// The one dead letter at this partition of the dead-letter topic
    /// (with --offset; both as `shop dlq list` shows them).
    #[arg(long, requires = "offset")]
    pub partition: Option<i32>,
    /// Its offset in that partition (with --partition).
    #[arg(long, requires = "partition")]
    pub offset: Option<i64>,
}

impl ReplayArgs {
    /// The library's view of the choice (clap guarantees there is one).
    fn selection(&self, kafka: &KafkaSettings) -> Selection {
        match (&self.topic, self.partition, self.offset) {
            (Some(topic), _, _) if topic.starts_with(&kafka.topic_prefix) => {
                Selection::SourceTopic(topic.clone())
            }
            (Some(topic), _, _) => Selection::SourceTopic(kafka.topic(topic)),
            (None, Some(partition), Some(offset)) => Selection::One { partition, offset },
            _ => Selection::All,
        }
    }
}

/// Parses the command line and runs it.
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = match cli.command {
        Some(Command::Loadgen(_)) => {
            crate::telemetry::init_with_default_filter(cli.settings.log_format, "warn")
        }
        _ => crate::telemetry::init(cli.settings.log_format),
    };
    let result = run_command(cli).await;
    // Spans still queued for the exporter are sent before the process exits.
    telemetry.shutdown().await;
    result
}

/// Runs the parsed command line.
async fn run_command(cli: Cli) -> anyhow::Result<()> {
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
            let kafka = cli.settings.kafka("", false);
            let names: Vec<String> = topics::ALL.iter().map(|t| kafka.topic(t)).collect();
            let broker = shop_actors::kafka::EmbeddedBroker::start(&names, kafka.partitions)
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
        Command::Dlq { command } => return dlq(&cli.settings, command).await,
        Command::Wsbench(args) => {
            let brokers = cli.settings.kafka_brokers.clone().context(
                "KAFKA_BROKERS (or --kafka-brokers) is required: the broker the gateway reads",
            )?;
            let (auth, _) = crate::auth::load(&cli.settings).context("loading the signing key")?;
            let kafka = cli.settings.kafka(&brokers, false);
            let result = crate::wsbench::run(&args, &kafka, &auth).await?;
            let json = serde_json::to_string_pretty(&result)?;
            if let Some(path) = &args.out {
                std::fs::write(path, &json)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{json}");
            return Ok(());
        }
        Command::Loadgen(args) => return loadgen(&cli.settings, &args).await,
        Command::Token {
            customer,
            admin,
            ttl_seconds,
        } => {
            let customer = customer.trim();
            anyhow::ensure!(
                shop_actors::order::model::is_valid_customer_id(customer),
                "--customer must be 1 to {} bytes, none of them control characters",
                shop_actors::order::model::MAX_CUSTOMER_ID_LEN
            );
            let (auth, _) = crate::auth::load(&cli.settings).context("loading the signing key")?;
            let role = if admin {
                crate::auth::Role::Admin
            } else {
                crate::auth::Role::Customer
            };
            let token = auth
                .mint(customer, role, std::time::Duration::from_secs(ttl_seconds))
                .context("signing the token")?;
            println!("{token}");
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

/// Runs `shop loadgen` and prints its summary.
async fn loadgen(settings: &Settings, args: &crate::loadgen::LoadgenArgs) -> anyhow::Result<()> {
    let (target, options) = args.resolve(settings)?;
    let report = crate::loadgen::run(target, &options)
        .await
        .context("load test")?;
    print!("{}", report.summary());
    for (what, path) in [("result", &options.out), ("chart", &options.svg)] {
        if let Some(path) = path {
            println!("  {what:<10} {}", path.display());
        }
    }
    Ok(())
}

/// Runs a `shop dlq` subcommand against the brokers in `settings`.
async fn dlq(settings: &Settings, command: DlqCommand) -> anyhow::Result<()> {
    let Some(brokers) = settings.kafka_brokers.clone() else {
        anyhow::bail!(
            "KAFKA_BROKERS (or --kafka-brokers) is not set. `shop dlq` reads the broker the \
             services use; the embedded broker lives inside the `shop all` process, so pass the \
             address it logged at start-up (\"started the embedded Kafka-protocol broker ... \
             brokers=127.0.0.1:PORT\") or the one `shop broker` printed"
        );
    };
    let kafka = settings.kafka(&brokers, false);
    // Output is written only once the Kafka work is done: the log subscriber
    // also writes to stdout, and holding its lock across an await would
    // deadlock the first log line.
    match command {
        DlqCommand::List { json } => {
            let letters = dead_letters::list(&kafka)
                .await
                .context("reading the dead-letter topic")?;
            let progress = dead_letters::progress(&kafka)
                .await
                .context("reading what was already replayed")?;
            let mut out = std::io::stdout().lock();
            if json {
                for letter in &letters {
                    writeln!(out, "{}", letter_json(letter, progress.is_replayed(letter)))?;
                }
            } else if letters.is_empty() {
                writeln!(
                    out,
                    "no dead letters on `{}`",
                    kafka.topic(topics::DEAD_LETTERS)
                )?;
            } else {
                write!(out, "{}", letter_table(&letters, &progress))?;
            }
        }
        DlqCommand::Replay(args) => {
            let replayed = dead_letters::replay(&kafka, &args.selection(&kafka))
                .await
                .context("replaying dead letters")?;
            let mut out = std::io::stdout().lock();
            for letter in &replayed {
                writeln!(
                    out,
                    "replayed {}/{} to {} ({}, order {})",
                    letter.partition,
                    letter.offset,
                    letter.source_topic.as_deref().unwrap_or("-"),
                    letter.event_type.as_deref().unwrap_or("?"),
                    letter.order_id.as_deref().unwrap_or("?"),
                )?;
            }
            writeln!(out, "{} dead letter(s) replayed", replayed.len())?;
        }
    }
    Ok(())
}

/// `bytes` as text, or `None` if they are not UTF-8.
fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

/// Lower-case hex, for bytes that are not text.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One dead letter as a JSON line. Key and payload are text when they are
/// UTF-8 (they are, for anything the platform wrote), else `null` with a
/// `_hex` sibling, so no byte is lost.
fn letter_json(letter: &DeadLetter, replayed: bool) -> serde_json::Value {
    let key = letter.key.as_deref().unwrap_or_default();
    let mut value = json!({
        "partition": letter.partition,
        "offset": letter.offset,
        "replayed": replayed,
        "source_topic": letter.source_topic,
        "source_partition": letter.source_partition,
        "source_offset": letter.source_offset,
        "group": letter.group,
        "failed_at": letter.failed_at,
        "error": letter.error,
        "event_type": letter.event_type,
        "order_id": letter.order_id,
        "key": letter.key.as_deref().and_then(text),
        "payload": text(&letter.payload),
    });
    if text(key).is_none() {
        value["key_hex"] = hex(key).into();
    }
    if text(&letter.payload).is_none() {
        value["payload_hex"] = hex(&letter.payload).into();
    }
    value
}

/// Dead letters as an aligned table, the error last since it is the longest.
fn letter_table(letters: &[DeadLetter], progress: &ReplayProgress) -> String {
    let dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    let mut rows = vec![[
        "PARTITION",
        "OFFSET",
        "STATE",
        "SOURCE",
        "GROUP",
        "FAILED AT",
        "EVENT TYPE",
        "ORDER ID",
        "ERROR",
    ]
    .map(str::to_owned)];
    for letter in letters {
        let source = letter.source_topic.as_ref().map(|topic| {
            format!(
                "{topic}/{}@{}",
                dash(letter.source_partition.map(|p| p.to_string())),
                dash(letter.source_offset.map(|o| o.to_string())),
            )
        });
        rows.push([
            letter.partition.to_string(),
            letter.offset.to_string(),
            if progress.is_replayed(letter) {
                "replayed"
            } else {
                "pending"
            }
            .to_owned(),
            dash(source),
            dash(letter.group.clone()),
            dash(
                letter
                    .failed_at
                    .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            ),
            dash(letter.event_type.clone()),
            dash(letter.order_id.clone()),
            dash(letter.error.clone()),
        ]);
    }
    let mut widths = [0; 9];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        table.push_str(cells.join("  ").trim_end());
        table.push('\n');
    }
    table
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
                tracing::warn!(
                    command = other,
                    "unknown broker command; use `down` or `up`"
                );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn replay_selection(args: &[&str]) -> Result<Selection, clap::Error> {
        let cli = Cli::try_parse_from(["shop", "dlq", "replay"].iter().chain(args))?;
        let kafka = cli.settings.kafka("k:9092", false);
        match cli.command {
            Some(Command::Dlq {
                command: DlqCommand::Replay(args),
            }) => Ok(args.selection(&kafka)),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn replay_takes_exactly_one_selection() {
        assert_eq!(replay_selection(&["--all"]).unwrap(), Selection::All);
        assert_eq!(
            replay_selection(&["--topic", "inventory-commands"]).unwrap(),
            Selection::SourceTopic("inventory-commands".into())
        );
        // With a prefix, the topic as listed or as the platform names it.
        for topic in ["staging.inventory-commands", "inventory-commands"] {
            assert_eq!(
                replay_selection(&["--kafka-topic-prefix", "staging.", "--topic", topic]).unwrap(),
                Selection::SourceTopic("staging.inventory-commands".into())
            );
        }
        assert_eq!(
            replay_selection(&["--partition", "2", "--offset", "7"]).unwrap(),
            Selection::One {
                partition: 2,
                offset: 7
            }
        );
        for refused in [
            &[][..],
            &["--all", "--topic", "x"],
            &["--partition", "2"],
            &["--offset", "7"],
            &["--all", "--partition", "2", "--offset", "7"],
        ] {
            assert!(replay_selection(refused).is_err(), "{refused:?} accepted");
        }
    }

    #[test]
    fn listing_shows_state_and_keeps_bytes_that_are_not_text() {
        let letter = DeadLetter::parse(
            1,
            4,
            Some(&[0xff, 0x00][..]),
            Some(b"{oops"),
            [
                ("dlq.source.topic", Some(&b"inventory-commands"[..])),
                ("dlq.source.partition", Some(&b"0"[..])),
                ("dlq.source.offset", Some(&b"12"[..])),
                ("dlq.error", Some(&b"malformed envelope"[..])),
            ],
        );
        let line = letter_json(&letter, false);
        assert_eq!(line["key"], serde_json::Value::Null);
        assert_eq!(line["key_hex"], "ff00");
        assert_eq!(line["payload"], "{oops");
        assert_eq!(line["source_offset"], 12);
        let table = letter_table(&[letter], &ReplayProgress::default());
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("PARTITION  OFFSET  STATE"), "{table}");
        assert!(
            lines[1].contains("pending  inventory-commands/0@12"),
            "{table}"
        );
        assert!(lines[1].ends_with("malformed envelope"), "{table}");
    }
}
