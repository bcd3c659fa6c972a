//! Building and running the platform: connect to Postgres, Redis and Kafka
//! (or start the embedded broker), migrate, start each requested service's
//! actor tree, and serve its HTTP routes. Returns the bound addresses, so
//! tests can bind port 0.

use crate::config::Settings;
use crate::http::{self, health::Readiness};
use shop_actors::db::{self, SchemaMigrations};
use shop_actors::events::topics;
use shop_actors::kafka::EmbeddedBroker;
use shop_actors::{Infra, RunningService};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;
use warp::Filter;

/// Which services a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// All four, in one process.
    All,
    /// The product service.
    Product,
    /// The order service.
    Order,
    /// The payment service.
    Payment,
    /// The WebSocket gateway.
    Gateway,
}

impl Role {
    fn runs(self, other: Role) -> bool {
        self == Role::All || self == other
    }

    fn schemas(self) -> Vec<SchemaMigrations> {
        db::ALL_SCHEMAS
            .into_iter()
            .filter(|s| match s.schema {
                "product" => self.runs(Role::Product),
                "orders" => self.runs(Role::Order),
                "payment" => self.runs(Role::Payment),
                _ => true,
            })
            .collect()
    }
}

/// Why the platform could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A service failed to start.
    #[error(transparent)]
    Service(#[from] shop_actors::StartError),
    /// A database step failed.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// Kafka set-up failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The platform's topics are not as configured, or could not be created.
    #[error("kafka topics: {0}")]
    Topics(#[from] shop_actors::kafka::TopicError),
    /// A port could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// Where each running service listens.
#[derive(Debug, Clone, Default)]
pub struct Addresses {
    /// Order service.
    pub order: Option<SocketAddr>,
    /// Product service.
    pub product: Option<SocketAddr>,
    /// Payment service.
    pub payment: Option<SocketAddr>,
    /// Gateway.
    pub gateway: Option<SocketAddr>,
}

/// Where the storefront page (served by the gateway) finds the product and
/// order services from a browser: the public URLs if set, else the URLs the
/// services use among themselves, else this process's own services on
/// 127.0.0.1, which is right for `cargo run` on a developer's machine.
fn storefront_config(
    settings: &Settings,
    addresses: &Addresses,
    keys: &crate::auth::KeySource,
) -> http::storefront::StorefrontConfig {
    let url =
        |public: &Option<String>, internal: &Option<String>, here: Option<SocketAddr>, port| {
            public
                .clone()
                .or_else(|| internal.clone())
                .unwrap_or_else(|| format!("http://127.0.0.1:{}", here.map_or(port, |a| a.port())))
        };
    http::storefront::StorefrontConfig {
        product_url: url(
            &settings.public_product_url,
            &settings.product_url,
            addresses.product,
            settings.product_port,
        ),
        order_url: url(
            &settings.public_order_url,
            &settings.order_url,
            addresses.order,
            settings.order_port,
        ),
        dev_tokens: matches!(keys, crate::auth::KeySource::Development { .. }),
    }
}

/// A running platform (one service or all four).
pub struct Platform {
    /// Where the services listen.
    pub addresses: Addresses,
    /// The Kafka bootstrap servers in use (the embedded broker's, if any).
    pub kafka_brokers: String,
    /// Postgres, Redis and Kafka handles.
    pub infra: Infra,
    /// Handles used by the services' routes, for tests and tools.
    pub orders: Option<shop_actors::order::Orders>,
    /// The gateway handle, for tests and tools.
    pub gateway: Option<shop_actors::gateway::Gateway>,
    /// Verifies bearer tokens (and signs them, with a shared secret).
    pub auth: crate::auth::Authenticator,
    services: Vec<RunningService>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    /// Keeps the dead-letter topic's size metric current.
    dlq_watch: tokio::task::JoinHandle<()>,
    stop_http: watch::Sender<bool>,
    grace: Duration,
    /// What each HTTP server allows a connection.
    http_limits: http::server::Limits,
    /// The connections all the HTTP servers may hold together.
    http_connections: http::server::Connections,
    /// Kept last: dropped after everything that talks to it.
    broker: Option<EmbeddedBroker>,
}

impl Platform {
    /// Starts `role` with `settings`.
    pub async fn start(settings: &Settings, role: Role) -> Result<Self, StartupError> {
        let started = std::time::Instant::now();
        let (auth, keys) = crate::auth::load(settings)
            .map_err(|e| StartupError::Config(format!("bearer tokens: {e}")))?;
        match &keys {
            crate::auth::KeySource::Configured => {
                tracing::info!("bearer tokens verified with the configured key(s)")
            }
            crate::auth::KeySource::Development { path, created } => tracing::warn!(
                path = %path.display(), created,
                "DEVELOPMENT MODE: neither JWT_SECRET nor JWT_PUBLIC_KEY_FILE is set; \
                 tokens are signed with the generated secret in this file \
                 (`shop token --customer <id>` prints one)"
            ),
        }
        let (broker, kafka) = match (&settings.kafka_brokers, role) {
            (Some(brokers), _) => {
                let kafka = settings.kafka(brokers, false);
                kafka.ensure_topics(&topics::ALL).await?;
                (None, kafka)
            }
            (None, Role::All) => {
                let mut kafka = settings.kafka("", true);
                let names: Vec<String> = topics::ALL.iter().map(|t| kafka.topic(t)).collect();
                let broker = EmbeddedBroker::start(&names, kafka.partitions)?;
                kafka.brokers = broker.bootstrap_servers().to_owned();
                let brokers = &kafka.brokers;
                tracing::info!(%brokers, "started the embedded Kafka-protocol broker (in memory; try `kcat -b {brokers} -L`)");
                (Some(broker), kafka)
            }
            (None, _) => {
                return Err(StartupError::Config(format!(
                    "KAFKA_BROKERS is required to run the {role:?} service alone; `shop all` starts an embedded broker"
                )))
            }
        };
        let brokers = kafka.brokers.clone();

        tracing::info!(database = %settings.database_url_redacted(), "connecting to postgres");
        db::ensure_database(&settings.database_url).await?;
        db::migrate(&settings.database_url, &role.schemas()).await?;
        let pool = db::pool(&settings.database_url, settings.database_pool_size)?;
        let redis = shop_actors::cache::pool(&settings.redis_url)
            .map_err(|e| StartupError::Config(format!("REDIS_URL: {e}")))?;
        let infra = Infra {
            pool: pool.clone(),
            redis: redis.clone(),
            redis_prefix: settings.redis_prefix.clone(),
            producer: kafka.producer()?,
            kafka,
            outbox_poll: Duration::from_millis(settings.outbox_poll_ms.max(1)),
        };
        let readiness = Readiness {
            postgres: Some(pool),
            redis: Some(redis),
            kafka: Some(infra.producer.clone()),
        };

        let (stop_http, stop_rx) = watch::channel(false);
        let mut platform = Platform {
            addresses: Addresses::default(),
            kafka_brokers: brokers,
            infra: infra.clone(),
            orders: None,
            gateway: None,
            auth: auth.clone(),
            services: Vec::new(),
            servers: Vec::new(),
            dlq_watch: infra.kafka.watch_dead_letter_topic(Duration::from_secs(15)),
            stop_http,
            grace: Duration::from_secs(settings.shutdown_grace_seconds),
            http_limits: settings.http_limits(),
            http_connections: http::server::Connections::new(&settings.http_limits()),
            broker,
        };
        let host = settings.http_host;

        if role.runs(Role::Product) {
            let product = shop_actors::product::start(&infra).await?;
            let routes = http::product::routes(product.catalog, auth.clone())
                .or(http::health::routes(readiness.clone()))
                .unify();
            // The storefront page, served by the gateway, calls it from a browser.
            let routes = http::cors::allow_browsers(routes);
            let addr = platform
                .listen(
                    "product",
                    SocketAddr::new(host, settings.product_port),
                    routes,
                    &stop_rx,
                )
                .await?;
            platform.addresses.product = Some(addr);
            platform.services.push(product.service);
        }
        if role.runs(Role::Payment) {
            let payment = shop_actors::payment::start(&infra, settings.payment_latency()).await?;
            let addr = platform
                .listen(
                    "payment",
                    SocketAddr::new(host, settings.payment_port),
                    http::health::routes(readiness.clone()),
                    &stop_rx,
                )
                .await?;
            platform.addresses.payment = Some(addr);
            platform.services.push(payment.service);
        }
        if role.runs(Role::Order) {
            let product_url = url_of(
                &settings.product_url,
                platform.addresses.product,
                settings.product_port,
            );
            let config = shop_actors::order::OrderConfig {
                product_url,
                policy: settings.saga_policy(),
                sweep_every: Duration::from_millis(settings.saga_sweep_ms.max(10)),
                idempotency_ttl: Duration::from_secs(settings.idempotency_ttl_seconds),
            };
            let order = shop_actors::order::start(&infra, &config).await?;
            let routes = http::order::routes(order.orders.clone(), auth.clone())
                .or(http::admin::routes(order.orders.clone(), auth.clone()))
                .unify()
                .or(http::health::routes(readiness.clone()))
                .unify();
            let routes = http::cors::allow_browsers(routes);
            let addr = platform
                .listen(
                    "order",
                    SocketAddr::new(host, settings.order_port),
                    routes,
                    &stop_rx,
                )
                .await?;
            platform.addresses.order = Some(addr);
            platform.orders = Some(order.orders);
            platform.services.push(order.service);
        }
        if role.runs(Role::Gateway) {
            let order_url = url_of(
                &settings.order_url,
                platform.addresses.order,
                settings.order_port,
            );
            let config = shop_actors::gateway::GatewayConfig {
                order_url,
                policy: shop_actors::gateway::ConnectionPolicy {
                    ping_every: Duration::from_secs(settings.ws_ping_seconds.max(1)),
                    idle_timeout: Duration::from_secs(settings.ws_idle_timeout_seconds.max(1)),
                    queue_limit: settings.ws_queue_limit.max(1),
                    frames_per_second: settings.ws_max_frames_per_second.max(1),
                    per_subject: usize::try_from(settings.ws_max_connections_per_subject)
                        .unwrap_or(usize::MAX),
                },
            };
            let storefront = http::storefront::routes(
                storefront_config(settings, &platform.addresses, &keys),
                auth.clone(),
            )
            .map_err(|e| StartupError::Config(e.to_string()))?;
            let gateway = shop_actors::gateway::start(&infra, &config).await?;
            let routes = http::gateway::routes(gateway.gateway.clone(), auth.clone())
                .or(storefront)
                .unify()
                .or(http::health::routes(readiness.clone()))
                .unify();
            let addr = platform
                .listen(
                    "gateway",
                    SocketAddr::new(host, settings.gateway_port),
                    routes,
                    &stop_rx,
                )
                .await?;
            platform.addresses.gateway = Some(addr);
            platform.gateway = Some(gateway.gateway);
            platform.services.push(gateway.service);
        }
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, addresses = ?platform.addresses, "shop is up");
        Ok(platform)
    }

    async fn listen<F>(
        &mut self,
        name: &'static str,
        addr: SocketAddr,
        routes: F,
        stop: &watch::Receiver<bool>,
    ) -> Result<SocketAddr, StartupError>
    where
        F: warp::Filter<Extract = (warp::reply::Response,), Error = warp::Rejection>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        let (listener, bound) = http::bind(addr)
            .await
            .map_err(|e| StartupError::Bind(addr, e))?;
        tracing::info!(service = name, address = %bound, "listening");
        self.servers.push(http::serve(
            name,
            routes.boxed(),
            listener,
            stop.clone(),
            self.http_limits,
            self.http_connections.clone(),
        ));
        Ok(bound)
    }

    /// Completes when any service's actor tree stops by itself (an
    /// essential actor failed): the process should then exit non-zero.
    pub async fn failed(&mut self) -> &'static str {
        let watches = self.services.iter_mut().map(|s| {
            let name = s.name;
            Box::pin(async move {
                let _ = (&mut s.stopped).await;
                name
            })
        });
        futures::future::select_all(watches).await.0
    }

    /// Stops taking requests, then stops every service (consumers commit
    /// their offsets, relays publish what is committed), then the broker.
    pub async fn shutdown(mut self) {
        // WebSocket clients are told first (1001), so they reconnect
        // elsewhere instead of seeing a broken connection.
        if let Some(gateway) = &self.gateway {
            gateway.close_all(self.grace).await;
        }
        let _ = self.stop_http.send(true);
        for server in self.servers.drain(..) {
            let _ = tokio::time::timeout(self.grace, server).await;
        }
        for service in self.services.drain(..) {
            service.stop(self.grace).await;
        }
        self.dlq_watch.abort();
        drop(self.broker.take());
    }
}

/// Where another service is: as configured, else in this process, else on
/// this machine's default port.
fn url_of(configured: &Option<String>, here: Option<SocketAddr>, port: u16) -> String {
    match (configured, here) {
        (Some(url), _) => url.clone(),
        (None, Some(addr)) => format!("http://127.0.0.1:{}", addr.port()),
        (None, None) => format!("http://127.0.0.1:{port}"),
    }
}
