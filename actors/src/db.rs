//! Postgres plumbing shared by every service: the connection pool, creating
//! the database on first start, and the schema migrations.
//!
//! Each service owns one schema (`product`, `orders`, `payment`). Migrations
//! run under a Postgres advisory lock, so any number of processes may start
//! at once and exactly one of them applies each migration.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// Advisory-lock key that serialises migrations across processes ("shopmig").
const MIGRATION_LOCK: i64 = 0x73686f_706d6967;

/// Errors from the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `DATABASE_URL` is not a Postgres URL we can use.
    #[error("invalid DATABASE_URL: {0}")]
    Config(String),
    /// A query or connection failed.
    #[error("postgres: {}", postgres_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No pooled connection became free or could be opened in time.
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// Another transaction wrote the same thing concurrently; this one was
    /// rolled back and may be retried.
    #[error("concurrent write: {0}")]
    Conflict(String),
}

/// The server's own message and code when there is one ("db error" alone
/// says nothing about what went wrong).
fn postgres_detail(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

impl DbError {
    /// True when retrying the same work later may succeed (connection loss,
    /// serialisation failure, deadlock), as opposed to a bug or bad data.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Config(_) => false,
            DbError::Pool(_) | DbError::Conflict(_) => true,
            DbError::Postgres(e) => match e.code() {
                None => true,
                Some(code) => {
                    *code == SqlState::T_R_SERIALIZATION_FAILURE
                        || *code == SqlState::T_R_DEADLOCK_DETECTED
                        || *code == SqlState::ADMIN_SHUTDOWN
                        || *code == SqlState::CANNOT_CONNECT_NOW
                        || *code == SqlState::TOO_MANY_CONNECTIONS
                        || code.code().starts_with("08")
                }
            },
        }
    }
}

/// One service's schema and its ordered migrations.
pub struct SchemaMigrations {
    /// The schema (and service) name.
    pub schema: &'static str,
    /// `(version, sql)` pairs, applied in order, each once.
    pub steps: &'static [(i32, &'static str)],
}

/// Every schema the platform owns, in dependency order.
pub const ALL_SCHEMAS: [SchemaMigrations; 3] = [
    SchemaMigrations {
        schema: "product",
        steps: &[
            (1, include_str!("../migrations/product_0001_init.sql")),
            (
                2,
                include_str!("../migrations/product_0002_demo_catalogue.sql"),
            ),
            (
                3,
                include_str!("../migrations/product_0003_released_orders.sql"),
            ),
            (
                4,
                include_str!("../migrations/product_0004_outbox_traceparent.sql"),
            ),
            (
                5,
                include_str!("../migrations/product_0005_reserve_function.sql"),
            ),
        ],
    },
    SchemaMigrations {
        schema: "orders",
        steps: &[
            (1, include_str!("../migrations/orders_0001_init.sql")),
            (2, include_str!("../migrations/orders_0002_deadlines.sql")),
            (
                3,
                include_str!("../migrations/orders_0003_idempotency_keys.sql"),
            ),
            (
                4,
                include_str!("../migrations/orders_0004_outbox_traceparent.sql"),
            ),
        ],
    },
    SchemaMigrations {
        schema: "payment",
        steps: &[
            (1, include_str!("../migrations/payment_0001_init.sql")),
            (2, include_str!("../migrations/payment_0002_voids.sql")),
            (
                3,
                include_str!("../migrations/payment_0003_outbox_traceparent.sql"),
            ),
        ],
    },
];

/// Parses a `postgres://` URL.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
    tokio_postgres::Config::from_str(url).map_err(|e| DbError::Config(e.to_string()))
}

/// Creates the database named in `url` if it does not exist yet. Safe to call
/// from several processes at once.
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let config = parse_url(url)?;
    let Some(dbname) = config.get_dbname().map(str::to_owned) else {
        return Ok(());
    };
    // Connecting to the target first is the common case and needs no privileges.
    if config.connect(NoTls).await.is_ok() {
        return Ok(());
    }
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin.connect(NoTls).await?;
    let conn = tokio::spawn(connection);
    let quoted = format!("\"{}\"", dbname.replace('"', "\"\""));
    let result = client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await;
    drop(client);
    let _ = conn.await;
    match result {
        Ok(()) => {
            tracing::info!(database = %dbname, "created database");
            Ok(())
        }
        // Another process won the race: the database exists, which is all we need.
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Drops the database named in `url`, disconnecting whoever is still
/// connected to it (tools and tests that made a database for one run).
pub async fn drop_database(url: &str) -> Result<(), DbError> {
    let config = parse_url(url)?;
    let Some(dbname) = config.get_dbname().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = config;
    admin.dbname("postgres");
    let (client, connection) = admin.connect(NoTls).await?;
    let conn = tokio::spawn(connection);
    let quoted = format!("\"{}\"", dbname.replace('"', "\"\""));
    let result = client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        .await;
    drop(client);
    let _ = conn.await;
    Ok(result?)
}

/// Builds a connection pool of at most `size` connections.
pub fn pool(url: &str, size: usize) -> Result<Pool, DbError> {
    let mut config = parse_url(url)?;
    if config.get_application_name().is_none() {
        config.application_name("shop");
    }
    config.connect_timeout(Duration::from_secs(5));
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| DbError::Config(e.to_string()))
}

/// Applies every pending migration of `schemas`, holding the migration lock.
pub async fn migrate(url: &str, schemas: &[SchemaMigrations]) -> Result<(), DbError> {
    let (mut client, connection) = parse_url(url)?.connect(NoTls).await?;
    let conn = tokio::spawn(connection);
    let result = migrate_with(&mut client, schemas).await;
    // Unlocking is implicit when the session ends, even if a step failed.
    drop(client);
    let _ = conn.await;
    result
}

async fn migrate_with(
    client: &mut tokio_postgres::Client,
    schemas: &[SchemaMigrations],
) -> Result<(), DbError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS public.shop_migrations (
                schema_name text NOT NULL,
                version integer NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (schema_name, version)
            )",
        )
        .await?;
    for schema in schemas {
        for (version, sql) in schema.steps {
            let tx = client.transaction().await?;
            let applied = tx
                .query_opt(
                    "SELECT 1 FROM public.shop_migrations WHERE schema_name = $1 AND version = $2",
                    &[&schema.schema, version],
                )
                .await?
                .is_some();
            if applied {
                continue;
            }
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO public.shop_migrations (schema_name, version) VALUES ($1, $2)",
                &[&schema.schema, version],
            )
            .await?;
            tx.commit().await?;
            tracing::info!(schema = schema.schema, version, "applied migration");
        }
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    Ok(())
}

/// Checks that a pooled connection answers, for readiness probes.
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}
