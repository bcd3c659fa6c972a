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
        let Ok(Ok((admin, connection))) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_postgres::connect(&format!("{}/postgres", server()), NoTls),
        )
        .await
        else {
            eprintln!("could not connect to drop database {}", self.name);
            return;
        };
        tokio::spawn(connection);
        if let Err(error) = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await
        {
            eprintln!("could not drop database {}: {error}", self.name);
        }
    }
}
