//! Typed configuration: every setting is a flag and an environment
//! variable, with a default that works on a developer's machine.

use clap::Args;
use shop_actors::kafka::KafkaSettings;
use std::net::IpAddr;
use std::time::Duration;

/// Settings shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Kafka bootstrap servers. Unset: `shop all` starts an embedded
    /// Kafka-protocol broker in the process.
    #[arg(long, env = "KAFKA_BROKERS", global = true)]
    pub kafka_brokers: Option<String>,
    /// Partitions per topic when topics are created. Default: 2 for the
    /// broker embedded in `shop all` (one process reads every partition
    /// anyway, and the embedded broker's cost grows with partitions: see
    /// BENCHMARKS.md), else 6.
    #[arg(long, env = "KAFKA_PARTITIONS", global = true)]
    pub kafka_partitions: Option<i32>,
    /// Replication factor when topics are created; existing topics must
    /// have at least this many replicas. The default suits a 3-broker
    /// cluster; a single-node Kafka needs 1. Ignored by the embedded broker.
    #[arg(
        long,
        env = "KAFKA_REPLICATION",
        default_value_t = shop_actors::kafka::DEFAULT_REPLICATION,
        value_parser = clap::value_parser!(i32).range(1..),
        global = true
    )]
    pub kafka_replication: i32,
    /// `min.insync.replicas` of the topics the platform creates. Default:
    /// 2, or KAFKA_REPLICATION if that is less.
    #[arg(
        long,
        env = "KAFKA_MIN_INSYNC_REPLICAS",
        value_parser = clap::value_parser!(i32).range(1..),
        global = true
    )]
    pub kafka_min_insync_replicas: Option<i32>,
    /// `retention.ms` of the dead-letter topic when the platform creates
    /// it; -1 keeps dead letters forever. Default: 30 days.
    #[arg(
        long,
        env = "KAFKA_DEAD_LETTER_RETENTION_MS",
        default_value_t = shop_actors::kafka::DEFAULT_DEAD_LETTER_RETENTION_MS,
        value_parser = parse_retention,
        global = true
    )]
    pub kafka_dead_letter_retention_ms: i64,
    /// Put before every topic name and consumer-group id, so that several
    /// platforms (environments, test runs) share one Kafka cluster, e.g.
    /// `staging.`. Letters, digits, `.`, `_` and `-` only.
    #[arg(
        long,
        env = "KAFKA_TOPIC_PREFIX",
        default_value = "",
        value_parser = parse_topic_prefix,
        global = true
    )]
    pub kafka_topic_prefix: String,
    /// Consumer-group session timeout, in milliseconds.
    #[arg(
        long,
        env = "KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub kafka_session_timeout_ms: u64,
    /// Longest wait of a consumer's fetch that finds nothing new
    /// (`fetch.wait.max.ms`), in milliseconds. Default: 1 with the broker
    /// embedded in this process, else 10. A real Kafka broker answers a
    /// waiting fetch as soon as a message arrives, so there this only
    /// bounds idle polling; the embedded broker (librdkafka's mock, also
    /// what `shop broker` runs) holds an empty fetch for the whole wait, so
    /// against it every hop pays about half of it.
    #[arg(long, env = "KAFKA_FETCH_WAIT_MS", global = true)]
    pub kafka_fetch_wait_ms: Option<u64>,
    /// Postgres URL; the database is created if missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/shop",
        global = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Postgres connections per process.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16, global = true)]
    pub database_pool_size: usize,
    /// Redis URL.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true,
        hide_env_values = true
    )]
    pub redis_url: String,
    /// Prefix of every Redis key.
    #[arg(long, env = "REDIS_PREFIX", default_value = "shop", global = true)]
    pub redis_prefix: String,
    /// Address the HTTP servers listen on.
    #[arg(long, env = "HTTP_HOST", default_value = "0.0.0.0", global = true)]
    pub http_host: IpAddr,
    /// Port of the order service (REST entry point).
    #[arg(long, env = "ORDER_PORT", default_value_t = 8080, global = true)]
    pub order_port: u16,
    /// Port of the product service.
    #[arg(long, env = "PRODUCT_PORT", default_value_t = 8081, global = true)]
    pub product_port: u16,
    /// Port of the payment service.
    #[arg(long, env = "PAYMENT_PORT", default_value_t = 8082, global = true)]
    pub payment_port: u16,
    /// Port of the gateway (WebSockets).
    #[arg(long, env = "GATEWAY_PORT", default_value_t = 8083, global = true)]
    pub gateway_port: u16,
    /// Base URL of the product service, for the order service. Default:
    /// the product service of this process, or 127.0.0.1:PRODUCT_PORT.
    #[arg(long, env = "PRODUCT_URL", global = true)]
    pub product_url: Option<String>,
    /// Base URL of the order service, for the gateway's snapshots. Default:
    /// the order service of this process, or 127.0.0.1:ORDER_PORT.
    #[arg(long, env = "ORDER_URL", global = true)]
    pub order_url: Option<String>,
    /// Base URL of the product service as a browser reaches it, for the
    /// storefront page. Default: PRODUCT_URL, or as for PRODUCT_URL.
    #[arg(long, env = "PUBLIC_PRODUCT_URL", global = true)]
    pub public_product_url: Option<String>,
    /// Base URL of the order service as a browser reaches it, for the
    /// storefront page. Default: ORDER_URL, or as for ORDER_URL.
    #[arg(long, env = "PUBLIC_ORDER_URL", global = true)]
    pub public_order_url: Option<String>,
    /// How often the gateway pings each WebSocket client, in seconds.
    #[arg(long, env = "WS_PING_SECONDS", default_value_t = 20, global = true)]
    pub ws_ping_seconds: u64,
    /// How long a WebSocket client may stay silent (not even a pong) before
    /// it is closed, in seconds.
    #[arg(
        long,
        env = "WS_IDLE_TIMEOUT_SECONDS",
        default_value_t = 60,
        global = true
    )]
    pub ws_idle_timeout_seconds: u64,
    /// Updates that may wait for one slow WebSocket client before it is
    /// closed with 1008.
    #[arg(long, env = "WS_QUEUE_LIMIT", default_value_t = 256, global = true)]
    pub ws_queue_limit: usize,
    /// Frames (any kind, pings included) one WebSocket client may send per
    /// second on average, in bursts of up to twice that; a faster client is
    /// closed with 1008.
    #[arg(
        long,
        env = "WS_MAX_FRAMES_PER_SECOND",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub ws_max_frames_per_second: u32,
    /// WebSocket connections one subject (token `sub`) may have open at
    /// once; more are refused with 429 at the upgrade.
    #[arg(
        long,
        env = "WS_MAX_CONNECTIONS_PER_SUBJECT",
        default_value_t = 32,
        value_parser = clap::value_parser!(u64).range(1..),
        global = true
    )]
    pub ws_max_connections_per_subject: u64,
    /// How long an HTTP connection may take to send a request's head, and
    /// how long it may stay idle between requests, in seconds: a bare TCP
    /// connection, a head sent byte by byte and an idle keep-alive are
    /// closed after it.
    #[arg(
        long,
        env = "HTTP_HEADER_TIMEOUT_SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        global = true
    )]
    pub http_header_timeout_seconds: u64,
    /// How long a request body may take to arrive, in seconds; a slower one
    /// gets 408.
    #[arg(
        long,
        env = "HTTP_BODY_TIMEOUT_SECONDS",
        default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        global = true
    )]
    pub http_body_timeout_seconds: u64,
    /// Connections the process's HTTP servers serve at once, together
    /// (upgraded WebSockets not counted), and at most half the descriptor
    /// limit; more wait in the listen backlog.
    #[arg(
        long,
        env = "HTTP_MAX_CONNECTIONS",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u64).range(1..=1_000_000),
        global = true
    )]
    pub http_max_connections: u64,
    /// Simulated payment processor latency, in milliseconds.
    #[arg(long, env = "PAYMENT_LATENCY_MS", default_value_t = 20, global = true)]
    pub payment_latency_ms: u64,
    /// How long a saga waits for stock or payment before compensating, in
    /// milliseconds.
    #[arg(
        long,
        env = "SAGA_STEP_TIMEOUT_MS",
        default_value_t = 30_000,
        global = true
    )]
    pub saga_step_timeout_ms: u64,
    /// How long a saga waits for its first stock release to be acknowledged
    /// before sending it again, in milliseconds; doubles at each attempt.
    #[arg(
        long,
        env = "SAGA_RETRY_BASE_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub saga_retry_base_ms: u64,
    /// Longest wait between compensation attempts, in milliseconds.
    #[arg(
        long,
        env = "SAGA_RETRY_MAX_MS",
        default_value_t = 120_000,
        global = true
    )]
    pub saga_retry_max_ms: u64,
    /// Compensation attempts before a saga is FAILED (an operator's turn).
    #[arg(long, env = "SAGA_MAX_ATTEMPTS", default_value_t = 6, global = true)]
    pub saga_max_attempts: i32,
    /// How often the order service looks for overdue sagas no actor is
    /// watching, in milliseconds.
    #[arg(long, env = "SAGA_SWEEP_MS", default_value_t = 1_000, global = true)]
    pub saga_sweep_ms: u64,
    /// How often an idle outbox relay polls, in milliseconds.
    #[arg(long, env = "OUTBOX_POLL_MS", default_value_t = 50, global = true)]
    pub outbox_poll_ms: u64,
    /// Seconds an `Idempotency-Key` of `POST /orders` is remembered after
    /// its first use (1 to 31536000, a year).
    // Bounded so that `now() + ttl` in Postgres can never overflow.
    #[arg(
        long,
        env = "IDEMPOTENCY_TTL_SECONDS",
        default_value_t = 86_400,
        value_parser = clap::value_parser!(u64).range(1..=31_536_000),
        global = true
    )]
    pub idempotency_ttl_seconds: u64,
    /// Seconds to finish in-flight work on shutdown.
    #[arg(
        long,
        env = "SHUTDOWN_GRACE_SECONDS",
        default_value_t = 20,
        global = true
    )]
    pub shutdown_grace_seconds: u64,
    /// Shared secret verifying (and, for `shop token`, signing) HS256
    /// bearer tokens; at least 32 bytes.
    #[arg(long, env = "JWT_SECRET", global = true, hide_env_values = true)]
    pub jwt_secret: Option<crate::auth::Secret>,
    /// PEM public key (RSA or P-256) verifying RS256/ES256 bearer tokens
    /// from an identity provider.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE", global = true)]
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// When set, a bearer token must name this audience in `aud` (as an
    /// identity provider's access tokens do, e.g. Keycloak's client id).
    /// Unset: any `aud`, or none, is accepted.
    #[arg(long, env = "JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,
    /// When set, a bearer token's `iss` must be exactly this (e.g.
    /// `https://keycloak.example/realms/shop`). Unset: not checked.
    #[arg(long, env = "JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,
    /// Where development mode (neither JWT_SECRET nor JWT_PUBLIC_KEY_FILE
    /// set) keeps its generated secret. Default:
    /// `$XDG_STATE_HOME/shop/dev-jwt-secret` (`~/.local/state/...`).
    #[arg(long, env = "JWT_DEV_SECRET_FILE", global = true)]
    pub jwt_dev_secret_file: Option<std::path::PathBuf>,
    /// `text` (default) or `json` log lines.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, one line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// [`Settings`] alone, as a command of its own: to parse or inspect them
/// without the CLI's subcommands.
#[derive(clap::Parser)]
struct Only {
    #[command(flatten)]
    settings: Settings,
}

impl Settings {
    /// What each HTTP server allows one connection.
    pub fn http_limits(&self) -> crate::http::server::Limits {
        crate::http::server::Limits {
            header_timeout: Duration::from_secs(self.http_header_timeout_seconds),
            body_timeout: Duration::from_secs(self.http_body_timeout_seconds),
            max_connections: usize::try_from(self.http_max_connections).unwrap_or(usize::MAX),
        }
    }

    /// The defaults, as if no flag or variable were set (for tests and tools).
    ///
    /// Every argument's environment variable is unset for this parse, so a
    /// stray `KAFKA_BROKERS` or `SAGA_STEP_TIMEOUT_MS` in the caller's
    /// environment changes nothing.
    pub fn defaults() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Only::command()
            .mut_args(|arg| arg.env(None::<&str>))
            .try_get_matches_from(["shop"])
            .expect("every setting has a default");
        Only::from_arg_matches(&matches)
            .expect("the defaults parse")
            .settings
    }

    /// Where development mode keeps its generated JWT secret.
    pub fn jwt_dev_secret_file(&self) -> std::path::PathBuf {
        if let Some(path) = &self.jwt_dev_secret_file {
            return path.clone();
        }
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|home| std::path::PathBuf::from(home).join(".local/state"))
            });
        match state {
            Some(dir) => dir.join("shop").join("dev-jwt-secret"),
            None => std::path::PathBuf::from(".shop-dev-jwt-secret"),
        }
    }

    /// Simulated payment latency.
    pub fn payment_latency(&self) -> Duration {
        Duration::from_millis(self.payment_latency_ms)
    }

    /// Saga deadlines and compensation retries.
    pub fn saga_policy(&self) -> shop_actors::order::machine::SagaPolicy {
        shop_actors::order::machine::SagaPolicy {
            step_timeout: Duration::from_millis(self.saga_step_timeout_ms.max(1)),
            retry_base: Duration::from_millis(self.saga_retry_base_ms.max(1)),
            retry_max: Duration::from_millis(self.saga_retry_max_ms.max(1)),
            max_attempts: self.saga_max_attempts.max(1),
        }
    }

    /// How to reach Kafka at `brokers` and lay out topics there, from these
    /// settings. `embedded`: `brokers` is the broker embedded in this
    /// process, which has one node, so its topics have one replica.
    pub fn kafka(&self, brokers: &str, embedded: bool) -> KafkaSettings {
        let mut kafka = KafkaSettings::new(brokers);
        kafka.partitions = self.kafka_partitions.unwrap_or(if embedded {
            EMBEDDED_PARTITIONS
        } else {
            DEFAULT_PARTITIONS
        });
        kafka.replication = if embedded { 1 } else { self.kafka_replication };
        kafka.min_insync_replicas = self
            .kafka_min_insync_replicas
            .unwrap_or(shop_actors::kafka::DEFAULT_MIN_INSYNC_REPLICAS.min(kafka.replication));
        kafka.dead_letter_retention_ms = self.kafka_dead_letter_retention_ms;
        kafka.topic_prefix = self.kafka_topic_prefix.clone();
        kafka.session_timeout = Duration::from_millis(self.kafka_session_timeout_ms);
        // The embedded broker holds an empty fetch for the whole wait (it
        // is librdkafka's mock): poll it often, or every hop waits.
        let fetch_wait_ms = self.kafka_fetch_wait_ms.unwrap_or(if embedded {
            EMBEDDED_FETCH_WAIT_MS
        } else {
            shop_actors::kafka::DEFAULT_FETCH_WAIT_MS
        });
        kafka.fetch_wait = Duration::from_millis(fetch_wait_ms.max(1));
        kafka
    }

    /// The database URL with any password replaced, for logs.
    pub fn database_url_redacted(&self) -> String {
        redact(&self.database_url)
    }
}

/// `fetch.wait.max.ms` against the broker embedded in this process, unless
/// `KAFKA_FETCH_WAIT_MS` says otherwise: its mock holds an empty fetch for
/// the whole wait, so this is what each hop may wait for a message already
/// there (at the cost of about 10% of a core polling while idle).
const EMBEDDED_FETCH_WAIT_MS: u64 = 1;

/// Partitions per topic on the broker embedded in `shop all` unless
/// `KAFKA_PARTITIONS` says otherwise. One process reads every partition, so
/// more buy no parallelism; and librdkafka's mock broker finds a fetch's
/// offset by walking the partition's log from its oldest batch, so the
/// more partitions a topic is split into, the smaller its batches and the
/// longer those walks (BENCHMARKS.md: 1,700 orders/s held with 2, collapse
/// above 1,500/s with 6).
const EMBEDDED_PARTITIONS: i32 = 2;

/// Partitions per topic elsewhere: room for several processes of a service.
pub const DEFAULT_PARTITIONS: i32 = 6;

/// `KAFKA_DEAD_LETTER_RETENTION_MS`: a positive number of milliseconds, or -1.
fn parse_retention(value: &str) -> Result<i64, String> {
    match value.trim().parse::<i64>() {
        Ok(ms) if ms == -1 || ms > 0 => Ok(ms),
        _ => Err("a positive number of milliseconds, or -1 to keep forever".into()),
    }
}

/// `KAFKA_TOPIC_PREFIX`: what Kafka allows in a topic name (letters,
/// digits, `.`, `_`, `-`), short enough to leave room for the names.
fn parse_topic_prefix(value: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value.len() > 200 || !value.chars().all(allowed) {
        return Err(
            "at most 200 of the characters Kafka allows in a topic name: letters, digits, `.`, `_`, `-`"
                .into(),
        );
    }
    Ok(value.to_owned())
}

/// Replaces the password of a `scheme://user:password@host` URL with `***`.
pub fn redact(url: &str) -> String {
    // libpq's key=value form (`host=db password=…`).
    if !url.contains("://") {
        return url
            .split(' ')
            .map(|part| match part.split_once('=') {
                Some((key, _)) if is_secret_key(key) => format!("{key}=***"),
                _ => part.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(at) => before_query.split_at(at),
        None => (before_query, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let mut redacted = format!("{scheme}://{authority}{path}");
    if let Some(query) = query {
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_secret_key(key) => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&query.join("&"));
    }
    redacted
}

/// Whether a URL query or conninfo key names a secret.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "sslpassword",
        "sslkey",
    ]
    .iter()
    .any(|secret| key == *secret || key.ends_with(&format!("_{secret}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("postgres://shop:s3cret@db:5432/shop"),
            "postgres://shop:***@db:5432/shop"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/shop"),
            "postgres://postgres@127.0.0.1/shop"
        );
        assert_eq!(redact("redis://:pw@redis:6379"), "redis://:***@redis:6379");
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5432/x?password=s3cret&sslmode=disable"),
            "postgres://postgres@127.0.0.1:5432/x?password=***&sslmode=disable"
        );
        assert_eq!(
            redact("postgres://u:a@b@db/x?user=u&PASSWORD=p"),
            "postgres://u:***@db/x?user=u&PASSWORD=***"
        );
        assert_eq!(
            redact("host=db user=shop password=s3cret dbname=shop"),
            "host=db user=shop password=*** dbname=shop"
        );
    }

    /// The README's configuration table: each row's variables and its
    /// default column.
    fn readme_settings() -> Vec<(Vec<String>, String)> {
        let readme = include_str!("../README.md");
        let table = readme
            .split("| variable | default | meaning |")
            .nth(1)
            .expect("the README has its settings table");
        table
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let variables = cells[1]
                    .split(',')
                    .map(|v| v.trim().trim_matches('`').to_owned())
                    .collect();
                (variables, cells[2].to_owned())
            })
            .collect()
    }

    #[test]
    fn defaults_match_the_readme() {
        use clap::CommandFactory;
        let readme = readme_settings();
        let documented = |env: &str| {
            readme
                .iter()
                .find(|(variables, _)| variables.iter().any(|v| v == env))
                .map(|(_, default)| default.clone())
        };
        let command = Only::command();
        let mut checked = 0;
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
                continue;
            };
            let default: Vec<_> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let Some(readme_default) = documented(env) else {
                panic!("{env} is a setting the README's table does not list");
            };
            // A plain `value` is the default clap applies; `unset` and
            // `empty` are no default; anything else (`2` with the embedded
            // broker, else `6`) is decided in code and checked below.
            let literal = readme_default
                .strip_prefix('`')
                .and_then(|d| d.strip_suffix('`'))
                .filter(|d| !d.contains('`'));
            match (literal, readme_default.as_str()) {
                (Some(value), _) => {
                    assert_eq!(default, [value], "{env}: the README says `{value}`");
                    checked += 1;
                }
                (None, "unset" | "empty") => {
                    assert!(
                        default.is_empty() || default == [""],
                        "{env}: the README says {readme_default}, the default is {default:?}"
                    );
                    checked += 1;
                }
                _ => {}
            }
        }
        assert!(checked >= 30, "only {checked} defaults were compared");
        // Rows whose variables are not settings are read elsewhere.
        let settings: Vec<String> = command
            .get_arguments()
            .filter_map(|arg| arg.get_env()?.to_str().map(str::to_owned))
            .collect();
        for (variables, _) in &readme {
            for variable in variables {
                assert!(
                    settings.contains(variable)
                        || variable == "RUST_LOG"
                        || variable.starts_with("OTEL_"),
                    "the README lists {variable}, which is not a setting"
                );
            }
        }
        // The defaults written in words, and what the code makes of them.
        let settings = Settings::defaults();
        assert_eq!(documented("ORDER_PORT").as_deref(), Some("`8080`–`8083`"));
        assert_eq!(
            [
                settings.order_port,
                settings.product_port,
                settings.payment_port,
                settings.gateway_port
            ],
            [8080, 8081, 8082, 8083]
        );
        assert!(settings.kafka_brokers.is_none());
        assert_eq!(settings.kafka_topic_prefix, "");
    }

    #[test]
    fn kafka_settings_follow_the_broker() {
        let mut settings = Settings::defaults();
        let cluster = settings.kafka("k:9092", false);
        assert_eq!(
            (
                cluster.partitions,
                cluster.replication,
                cluster.min_insync_replicas
            ),
            (6, 3, 2)
        );
        let embedded = settings.kafka("127.0.0.1:1", true);
        assert_eq!(
            (
                embedded.partitions,
                embedded.replication,
                embedded.min_insync_replicas
            ),
            (2, 1, 1)
        );
        // A single node: min.insync.replicas follows the replication down.
        settings.kafka_replication = 1;
        assert_eq!(settings.kafka("k:9092", false).min_insync_replicas, 1);
        settings.kafka_topic_prefix = "staging.".into();
        let prefixed = settings.kafka("k:9092", false);
        assert_eq!(prefixed.topic("order-events"), "staging.order-events");
        assert_eq!(prefixed.group("order"), "staging.order");
    }

    #[test]
    fn bad_topic_settings_are_refused() {
        assert!(parse_topic_prefix("staging.eu-1_a").is_ok());
        assert!(parse_topic_prefix("").is_ok());
        assert!(parse_topic_prefix("a/b").is_err());
        assert!(parse_topic_prefix("a b").is_err());
        assert_eq!(parse_retention("-1"), Ok(-1));
        assert!(parse_retention("0").is_err());
        assert!(parse_retention("-5").is_err());
        assert!(parse_retention("1h").is_err());
    }
}
