//! The run's own Postgres database: named by a UUID, created by the first
//! service that starts, read directly by the checks, dropped at the end.

use std::time::Duration;
use tokio_postgres::NoTls;

/// The Postgres server (no database name).
fn server() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database name and URL for this run.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// `shop_faults_<uuid>`.
    pub name: String,
    /// Its URL, for the services.
    pub url: String,
}

impl TestDatabase {
    /// Names a fresh database (nothing is created yet).
    pub fn new(run_id: &str) -> Self {
        let name = format!("shop_faults_{run_id}");
        Self {
            url: format!("{}/{name}", server()),
            name,
        }
    }

    /// A connection to it, for the checks.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("the test database is reachable");
        tokio::spawn(connection);
        client
    }

    /// Drops it, disconnecting whoever is still connected.
    pub async fn drop_database(&self) {
        let dropped = tokio::time::timeout(
            Duration::from_secs(10),
            shop_actors::db::drop_database(&self.url),
        )
        .await;
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop database {}: {error}", self.name),
            Err(_) => eprintln!("could not drop database {}: timed out", self.name),
        }
    }
}
