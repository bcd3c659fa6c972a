//! `shop loadgen`: the load harness. It places orders against a running
//! platform (or one it starts in this process with `--embedded`), follows
//! them to their final status over a WebSocket, and reports latency from
//! create to CONFIRMED/REJECTED (an HDR histogram), throughput of final
//! statuses and errors by kind, as a summary, a JSON result and an SVG chart.
//!
//! - [`mix`]: which outcomes to provoke, and in what proportion.
//! - [`arrival`]: the open-loop schedule and run length.
//! - [`target`]: the platform under test, and the tokens for it.
//! - [`client`]: the products it creates and the orders it places.
//! - [`ws`]: the WebSocket that brings final statuses.
//! - [`tracker`]: matches orders with their final status; records.
//! - [`recorder`]: histograms, counts, per-second series.
//! - [`driver`]: the open and closed loops.
//! - [`progress`], [`report`], [`svg`]: what the user sees.
//!
//! Timings are reported, never asserted: see `BENCHMARKS.md`.

pub mod arrival;
pub mod client;
pub mod driver;
pub mod mix;
pub mod progress;
pub mod recorder;
pub mod report;
pub mod svg;
pub mod target;
pub mod tracker;
pub mod ws;

pub use arrival::Length;
pub use driver::{Load, Plan};
pub use mix::Mix;
pub use report::Report;
pub use target::{Credentials, TargetSpec};

use crate::config::Settings;
use client::{Customer, OrderClient};
use mix::Outcome;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why a run could not be carried out (errors of single orders are not
/// this: they are counted in the report).
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The flags do not describe a run.
    #[error("{0}")]
    Config(String),
    /// The embedded platform did not start.
    #[error("starting the embedded platform: {0}")]
    Startup(#[from] crate::startup::StartupError),
    /// Tokens cannot be signed.
    #[error("tokens: {0}; against a platform with only a public key, pass --admin-token")]
    Keys(#[from] crate::auth::KeyError),
    /// Creating products or clients failed.
    #[error("setting up: {0}")]
    Setup(String),
    /// The WebSocket could not be opened or subscribed.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The warm-up order did not come through.
    #[error("warm-up: {0}")]
    Warmup(String),
    /// The histograms could not be created.
    #[error("histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    /// The result could not be written.
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// `shop loadgen` flags.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("loop").args(["rate", "concurrency"])))]
#[command(group(clap::ArgGroup::new("length").args(["duration", "orders"])))]
pub struct LoadgenArgs {
    /// Open loop: orders per second on a fixed schedule; latency counts
    /// from each order's scheduled time (default: 100 unless --concurrency).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: this many workers, each placing its next order once the
    /// previous one is final.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// How long to send orders: 30s, 2m, 500ms (default 30s unless --orders).
    #[arg(long, value_parser = arrival::parse_duration)]
    pub duration: Option<Duration>,
    /// Send exactly this many orders.
    #[arg(long)]
    pub orders: Option<u64>,
    /// Outcome mix: relative weights of confirm, out-of-stock and decline
    /// (payment token tok_chargeDeclined).
    #[arg(long, default_value = "confirm=80,out-of-stock=10,decline=10")]
    pub mix: Mix,
    /// Start the whole platform in this process (free ports, embedded
    /// broker unless KAFKA_BROKERS is set, and a fresh database
    /// `shop_loadgen_<uuid>`, dropped afterwards, unless DATABASE_URL is set).
    #[arg(long)]
    pub embedded: bool,
    /// The gateway of a running platform (`ws://` or `http://`); default
    /// `ws://127.0.0.1:$GATEWAY_PORT`. The order and product services are
    /// `--order-url` and `--product-url`.
    #[arg(long, env = "GATEWAY_URL", conflicts_with = "embedded")]
    pub gateway_url: Option<String>,
    /// An admin token to use for everything, instead of tokens signed with
    /// JWT_SECRET (or the development secret), e.g. from an identity provider.
    #[arg(
        long,
        env = "LOADGEN_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "embedded"
    )]
    pub admin_token: Option<crate::auth::Secret>,
    /// Simulated customers, each with its own token.
    #[arg(long, default_value_t = 100)]
    pub customers: usize,
    /// In-stock products the orders are spread over (one more, with no
    /// stock, takes the out-of-stock orders).
    #[arg(long, default_value_t = 16)]
    pub products: usize,
    /// An accepted order with no final status after this long is an error.
    #[arg(long, default_value = "30s", value_parser = arrival::parse_duration)]
    pub final_timeout: Duration,
    /// An HTTP request with no answer after this long is an error.
    #[arg(long, default_value = "10s", value_parser = arrival::parse_duration)]
    pub request_timeout: Duration,
    /// Open loop: orders in flight beyond which due orders are skipped and
    /// counted as errors.
    #[arg(long, default_value_t = 20_000)]
    pub max_in_flight: usize,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the SVG chart here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
}

/// Everything about a run but the target.
#[derive(Debug, Clone)]
pub struct Options {
    /// How to drive the platform.
    pub plan: Plan,
    /// Simulated customers.
    pub customers: usize,
    /// In-stock products.
    pub products: usize,
    /// HTTP request timeout.
    pub request_timeout: Duration,
    /// Where to write the JSON result.
    pub out: Option<PathBuf>,
    /// Where to write the SVG chart.
    pub svg: Option<PathBuf>,
}

impl LoadgenArgs {
    /// The target and options these flags (with `settings`) describe.
    pub fn resolve(&self, settings: &Settings) -> Result<(TargetSpec, Options), LoadgenError> {
        let load = match (self.rate, self.concurrency) {
            (Some(rate), _) if !(rate.is_finite() && rate > 0.0) => {
                return Err(LoadgenError::Config("--rate must be positive".into()))
            }
            (Some(rate), _) => Load::Open { rate },
            (None, Some(0)) => {
                return Err(LoadgenError::Config(
                    "--concurrency must be positive".into(),
                ))
            }
            (None, Some(concurrency)) => Load::Closed { concurrency },
            (None, None) => Load::Open { rate: 100.0 },
        };
        let length = match (self.duration, self.orders) {
            (Some(d), _) if d.is_zero() => {
                return Err(LoadgenError::Config("--duration must be positive".into()))
            }
            (Some(d), _) => Length::Duration(d),
            (None, Some(0)) => {
                return Err(LoadgenError::Config("--orders must be positive".into()))
            }
            (None, Some(n)) => Length::Orders(n),
            (None, None) => Length::Duration(Duration::from_secs(30)),
        };
        if self.customers == 0 || self.products == 0 {
            return Err(LoadgenError::Config(
                "--customers and --products must be positive".into(),
            ));
        }
        let spec = if self.embedded {
            // A fresh database unless the user named one: a benchmark
            // should neither start from nor leave behind someone's data.
            let named = std::env::var_os("DATABASE_URL").is_some()
                || settings.database_url != Settings::defaults().database_url;
            TargetSpec::Embedded {
                settings: Box::new(settings.clone()),
                fresh_database: !named,
            }
        } else {
            let local = |port: u16| format!("http://127.0.0.1:{port}");
            let credentials = match &self.admin_token {
                Some(token) => Credentials::AdminToken(token.0.clone()),
                None => Credentials::Sign(crate::auth::load(settings)?.0),
            };
            TargetSpec::Remote {
                order_url: settings
                    .order_url
                    .clone()
                    .unwrap_or_else(|| local(settings.order_port)),
                product_url: settings
                    .product_url
                    .clone()
                    .unwrap_or_else(|| local(settings.product_port)),
                gateway_url: self
                    .gateway_url
                    .clone()
                    .unwrap_or_else(|| format!("ws://127.0.0.1:{}", settings.gateway_port)),
                credentials,
            }
        };
        let options = Options {
            plan: Plan {
                load,
                length,
                mix: self.mix,
                final_timeout: self.final_timeout,
                max_in_flight: self.max_in_flight.max(1),
                quiet: self.quiet,
            },
            customers: self.customers,
            products: self.products,
            request_timeout: self.request_timeout,
            out: self.out.clone(),
            svg: self.svg.clone(),
        };
        Ok((spec, options))
    }
}

/// How long a warm-up order may take: the first one also waits for every
/// consumer group to join.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the harness: starts (or reaches) the platform, creates products and
/// tokens, warms up, drives the load, stops an embedded platform, and
/// writes the result files asked for.
pub async fn run(spec: TargetSpec, options: &Options) -> Result<Report, LoadgenError> {
    let target = target::Target::start(spec).await?;
    let result = load(&target, options).await;
    target.stop().await;
    let report = result?;
    if let Some(path) = &options.out {
        let json = serde_json::to_vec_pretty(&report)
            .map_err(|e| LoadgenError::Write(path.clone(), e.into()))?;
        std::fs::write(path, json).map_err(|e| LoadgenError::Write(path.clone(), e))?;
    }
    if let Some(path) = &options.svg {
        std::fs::write(path, svg::render(&report))
            .map_err(|e| LoadgenError::Write(path.clone(), e))?;
    }
    Ok(report)
}

/// Opens the WebSockets that bring final statuses. With tokens it signs,
/// the harness follows each simulated customer on a connection of its own
/// (`{"type":"subscribe","scope":"mine"}`), so the updates of a heavy run
/// are spread over many connections, as real clients' are, and no single
/// connection's queue in the gateway (`WS_QUEUE_LIMIT`) bounds the run.
/// With only an admin token (`--admin-token`) it cannot act as each
/// customer, so one admin connection follows every order (`scope: all`).
async fn follow(
    target: &target::Target,
    admin: &str,
    client: &OrderClient,
) -> Result<Vec<ws::Socket>, LoadgenError> {
    use futures::{StreamExt, TryStreamExt};
    if matches!(target.credentials, target::Credentials::AdminToken(_)) {
        return Ok(vec![ws::connect(&target.gateway_url, admin, "all").await?]);
    }
    // In customer order (`buffered`, not `buffer_unordered`): the first
    // socket must be customer 0's, who places the warm-up order.
    futures::stream::iter(&client.customers)
        .map(|customer| ws::connect(&target.gateway_url, &customer.token, "mine"))
        .buffered(CONNECT_PARALLELISM)
        .try_collect()
        .await
}

/// WebSockets opened at once while setting up.
const CONNECT_PARALLELISM: usize = 16;

async fn load(target: &target::Target, options: &Options) -> Result<Report, LoadgenError> {
    let plan = &options.plan;
    let run_length = match plan.length {
        Length::Duration(d) => d,
        Length::Orders(_) => Duration::from_secs(24 * 3600),
    };
    // Valid for the whole run, however slow it turns out.
    let ttl = run_length + plan.final_timeout + Duration::from_secs(3600);
    let admin = target.credentials.admin(ttl)?;
    let http = OrderClient::http(options.request_timeout)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let catalogue = client::create_catalogue(
        &http,
        &target.product_url,
        &admin,
        options.products,
        &run_id[..12],
    )
    .await?;
    let customers = (0..options.customers)
        .map(|i| {
            let id = format!("loadgen-{i}");
            let token = target.credentials.customer(&id, ttl)?;
            Ok(Customer { id, token })
        })
        .collect::<Result<Vec<_>, LoadgenError>>()?;
    let client = Arc::new(OrderClient {
        http,
        order_url: target.order_url.clone(),
        customers,
        catalogue,
    });
    let mut sockets = follow(target, &admin, &client).await?;

    // One order through the whole saga before the clock starts: consumer
    // groups join, connections open, caches fill. Order 0 is customer 0's,
    // whom the first socket follows (or the only one, an admin's).
    let warmup = client
        .place(Outcome::Confirm, 0)
        .await
        .map_err(|kind| LoadgenError::Warmup(format!("placing the warm-up order: {kind}")))?;
    let first = sockets
        .first_mut()
        .ok_or_else(|| LoadgenError::WebSocket("no connection".into()))?;
    let status = ws::wait_final(first, warmup, WARMUP_TIMEOUT).await?;
    if status.status != "CONFIRMED" {
        return Err(LoadgenError::Warmup(format!(
            "the warm-up order ended {} ({})",
            status.status,
            status.reason.as_deref().unwrap_or("no reason")
        )));
    }

    let outcomes = driver::drive(plan, client, sockets).await?;
    let config = report::RunConfig {
        mode: match plan.load {
            Load::Open { .. } => "open",
            Load::Closed { .. } => "closed",
        },
        rate: match plan.load {
            Load::Open { rate } => Some(rate),
            Load::Closed { .. } => None,
        },
        concurrency: match plan.load {
            Load::Closed { concurrency } => Some(concurrency),
            Load::Open { .. } => None,
        },
        duration_s: match plan.length {
            Length::Duration(d) => Some(d.as_secs_f64()),
            Length::Orders(_) => None,
        },
        orders: match plan.length {
            Length::Orders(n) => Some(n),
            Length::Duration(_) => None,
        },
        mix: plan.mix.to_string(),
        target: target.label.clone(),
        customers: options.customers,
        products: options.products,
        final_timeout_s: plan.final_timeout.as_secs_f64(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
    };
    Ok(Report::new(
        config,
        outcomes
            .started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        outcomes.sending,
        outcomes.elapsed,
        &outcomes.recorder,
    ))
}
