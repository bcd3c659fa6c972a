//! The platform under test: one started in this process (`--embedded`, on
//! free ports with a database of its own), or one already running, given
//! its URLs; and the credentials the harness signs its tokens with.

use super::LoadgenError;
use crate::auth::{Authenticator, Role};
use crate::config::Settings;
use crate::startup::Platform;
use std::time::Duration;

/// How the harness gets its tokens.
#[derive(Clone)]
pub enum Credentials {
    /// It signs an admin token and one token per customer (HS256 with the
    /// platform's secret).
    Sign(Authenticator),
    /// An admin token from elsewhere (e.g. an identity provider): it is
    /// used for every request, orders naming their customer in the body.
    AdminToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::Sign(_) => "Sign(***)",
            Credentials::AdminToken(_) => "AdminToken(***)",
        })
    }
}

impl Credentials {
    /// An admin token.
    pub fn admin(&self, ttl: Duration) -> Result<String, LoadgenError> {
        match self {
            Credentials::Sign(auth) => Ok(auth.mint("loadgen-admin", Role::Admin, ttl)?),
            Credentials::AdminToken(token) => Ok(token.clone()),
        }
    }

    /// A token for the customer `id`.
    pub fn customer(&self, id: &str, ttl: Duration) -> Result<String, LoadgenError> {
        match self {
            Credentials::Sign(auth) => Ok(auth.mint(id, Role::Customer, ttl)?),
            Credentials::AdminToken(token) => Ok(token.clone()),
        }
    }
}

/// Which platform to load.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// Start all four services in this process with these settings (ports
    /// and addresses are overridden).
    Embedded {
        /// The platform's settings.
        settings: Box<Settings>,
        /// Use a new database `shop_loadgen_<uuid>` on the settings'
        /// server, dropped afterwards, instead of the configured one.
        fresh_database: bool,
    },
    /// A platform that is already running.
    Remote {
        /// Order service base URL, `http://host:port`.
        order_url: String,
        /// Product service base URL.
        product_url: String,
        /// Gateway base URL, `ws://host:port`.
        gateway_url: String,
        /// How to get tokens it accepts.
        credentials: Credentials,
    },
}

/// A platform ready to be loaded.
pub struct Target {
    /// Order service base URL.
    pub order_url: String,
    /// Product service base URL.
    pub product_url: String,
    /// Gateway base URL, `ws://host:port`.
    pub gateway_url: String,
    /// How to get tokens.
    pub credentials: Credentials,
    /// `embedded` or the order URL, for the report.
    pub label: String,
    /// The platform, when it runs in this process.
    platform: Option<Platform>,
    /// The database to drop afterwards (its server's URL and its name).
    drop_database: Option<(String, String)>,
}

impl Target {
    /// Starts the embedded platform, or just takes the remote one's URLs.
    pub async fn start(spec: TargetSpec) -> Result<Self, LoadgenError> {
        let (settings, fresh_database) = match spec {
            TargetSpec::Remote {
                order_url,
                product_url,
                gateway_url,
                credentials,
            } => {
                return Ok(Self {
                    label: order_url.clone(),
                    order_url,
                    product_url,
                    gateway_url: websocket_url(&gateway_url),
                    credentials,
                    platform: None,
                    drop_database: None,
                })
            }
            TargetSpec::Embedded {
                settings,
                fresh_database,
            } => (settings, fresh_database),
        };
        let mut settings = *settings;
        settings.http_host = std::net::IpAddr::from([127, 0, 0, 1]);
        settings.order_port = 0;
        settings.product_port = 0;
        settings.payment_port = 0;
        settings.gateway_port = 0;
        // Each service talks to its neighbours in this process.
        settings.order_url = None;
        settings.product_url = None;
        let mut drop_database = None;
        if fresh_database {
            let name = format!("shop_loadgen_{}", uuid::Uuid::new_v4().simple());
            settings.database_url = with_database(&settings.database_url, &name);
            settings.redis_prefix = name.clone();
            drop_database = Some((settings.database_url.clone(), name));
        }
        if settings.jwt_secret.is_none() && settings.jwt_public_key_file.is_none() {
            // A throwaway secret: the development secret file is left alone.
            let secret = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            settings.jwt_secret = Some(crate::auth::Secret(secret));
        }
        let platform = Platform::start(&settings, crate::startup::Role::All).await?;
        let url = |addr: Option<std::net::SocketAddr>, scheme: &str| {
            addr.map(|a| format!("{scheme}://{a}")).unwrap_or_default()
        };
        let addresses = platform.addresses.clone();
        Ok(Self {
            order_url: url(addresses.order, "http"),
            product_url: url(addresses.product, "http"),
            gateway_url: url(addresses.gateway, "ws"),
            credentials: Credentials::Sign(platform.auth.clone()),
            label: "embedded".to_owned(),
            platform: Some(platform),
            drop_database,
        })
    }

    /// Stops the embedded platform and drops its fresh database.
    pub async fn stop(mut self) {
        if let Some(platform) = self.platform.take() {
            platform.shutdown().await;
        }
        if let Some((url, name)) = self.drop_database.take() {
            if let Err(error) = shop_actors::db::drop_database(&url).await {
                tracing::warn!(database = %name, %error, "could not drop the load test database");
            }
        }
    }
}

/// `url` with its database replaced by `name` (query string kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split_once('/').map_or(rest, |(host, _)| host);
            format!("{scheme}://{host}/{name}")
        }
        None => format!("{base}/{name}"),
    };
    match query {
        Some(query) => format!("{base}?{query}"),
        None => base,
    }
}

/// A gateway URL as `ws://` (an `http://` one is accepted too).
pub fn websocket_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        url.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_database_name() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/shop", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@db/shop?sslmode=disable", "x"),
            "postgres://u:p@db/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://db:5432", "x"),
            "postgres://db:5432/x"
        );
    }

    #[test]
    fn gateway_urls_become_websocket_urls() {
        assert_eq!(websocket_url("http://h:8083/"), "ws://h:8083");
        assert_eq!(websocket_url("ws://h:8083"), "ws://h:8083");
    }
}
