//! Spawning a platform for one test, and the small clients tests use.

use futures::StreamExt;
use serde_json::{json, Value};
use shop::{Platform, Role, Settings};
use std::time::Duration;
use tokio_postgres::NoTls;
use uuid::Uuid;

/// Postgres server for tests (no database name).
pub fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The machine's Redis for tests.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Polls `query` (one row, one count, `$1` = `id`) until it returns `want`.
pub async fn wait_for_count(
    db: &tokio_postgres::Client,
    query: &str,
    id: Uuid,
    want: i64,
    what: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let count: i64 = db.query_one(query, &[&id]).await.unwrap().get(0);
        if count == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port free on loopback now (a process started next may bind it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A WebSocket upgrade request to `url` (`http://…/ws…`) sent as a plain
/// HTTP request, so that a test can read a refusal's status and JSON body.
pub fn websocket_upgrade(client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    client
        .get(url)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
}

/// The shared secret every test platform verifies tokens with, so that
/// platforms of one test (a second order process, a gateway replica)
/// accept each other's tokens.
pub const JWT_SECRET: &str = "test-only-secret-test-only-secret-0123456789";

/// A token for `customer` (or an admin token), signed with [`JWT_SECRET`].
pub fn token(customer: &str, role: shop::auth::Role) -> String {
    shop::auth::Authenticator::from_secret(JWT_SECRET.as_bytes())
        .expect("test secret")
        .mint(customer, role, Duration::from_secs(3600))
        .expect("signed")
}

/// A token of the admin `ops`.
pub fn admin_token() -> String {
    token("ops", shop::auth::Role::Admin)
}

/// The Apache Kafka (or any real broker) to run against instead of an
/// embedded broker per test, e.g. `127.0.0.1:9092`; unset: embedded.
pub fn external_brokers() -> Option<String> {
    std::env::var("TEST_KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.trim().is_empty())
}

/// Replication factor of the topics tests create on [`external_brokers`]
/// (`TEST_KAFKA_REPLICATION`, default 1: a single node).
fn external_replication() -> i32 {
    std::env::var("TEST_KAFKA_REPLICATION")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
}

/// Where a test's platform finds Kafka: a broker and the prefix of the
/// test's own topics and groups there, so tests sharing one broker never
/// see each other's messages.
#[derive(Debug, Clone)]
pub struct KafkaTarget {
    /// Bootstrap servers.
    pub brokers: String,
    /// `KAFKA_TOPIC_PREFIX` of the platform.
    pub topic_prefix: String,
}

/// A broker a test shares between several platforms it starts itself:
/// an embedded one of its own, or a fresh prefix on [`external_brokers`].
pub struct TestBroker {
    /// Kept running until dropped.
    embedded: Option<shop_actors::kafka::EmbeddedBroker>,
    target: KafkaTarget,
}

impl TestBroker {
    /// An embedded broker with every topic at `partitions`, or a prefix on
    /// the external broker (whose topics the first platform creates).
    pub fn start(partitions: i32) -> Self {
        let topic_prefix = format!("shop_test_{}.", Uuid::new_v4().simple());
        match external_brokers() {
            Some(brokers) => Self {
                embedded: None,
                target: KafkaTarget {
                    brokers,
                    topic_prefix,
                },
            },
            None => {
                let names: Vec<String> = shop_actors::events::topics::ALL
                    .iter()
                    .map(|t| format!("{topic_prefix}{t}"))
                    .collect();
                let broker = shop_actors::kafka::EmbeddedBroker::start(&names, partitions)
                    .expect("embedded broker");
                Self {
                    target: KafkaTarget {
                        brokers: broker.bootstrap_servers().to_owned(),
                        topic_prefix,
                    },
                    embedded: Some(broker),
                }
            }
        }
    }

    /// Takes the embedded broker down (connections refused) or brings it
    /// back; `false` on an external broker, which a test cannot stop.
    pub fn set_up(&self, up: bool) -> bool {
        match &self.embedded {
            Some(broker) => {
                broker.set_broker_up(up).expect("embedded broker answers");
                true
            }
            None => false,
        }
    }

    /// What to give [`Options::kafka`].
    pub fn target(&self) -> KafkaTarget {
        self.target.clone()
    }

    /// Deletes the test's topics from the external broker, if that is where they are.
    pub async fn teardown(self) {
        if self.embedded.is_none() {
            delete_topics(&self.target).await;
        }
    }
}

/// Deletes the platform topics of `target`'s prefix (tests on a shared
/// broker clean up after themselves).
async fn delete_topics(target: &KafkaTarget) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &target.brokers)
            .create()
            .expect("admin client");
    let names: Vec<String> = shop_actors::events::topics::ALL
        .iter()
        .map(|t| format!("{}{t}", target.topic_prefix))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        admin.delete_topics(&names, &options),
    )
    .await;
}

/// A running platform with its own database and clients for it.
pub struct TestApp {
    /// The platform (taken on teardown).
    pub platform: Option<Platform>,
    /// HTTP client sending an admin token with every request (tests about
    /// who may do what use their own client).
    pub http: reqwest::Client,
    /// e.g. `http://127.0.0.1:41234`
    pub order_url: String,
    /// Product service base URL.
    pub product_url: String,
    /// Gateway WebSocket base URL, `ws://...`.
    pub ws_url: String,
    /// A direct connection to the test database, for checking what was written.
    pub db: tokio_postgres::Client,
    /// The test database's name.
    pub db_name: String,
    /// Where its Kafka is, to start more platforms on the same topics.
    pub kafka: KafkaTarget,
    /// Whether this app made its topics on an external broker (and so
    /// deletes them on teardown).
    owns_topics: bool,
}

/// Options for [`spawn_app_with`].
pub struct Options {
    /// Simulated payment latency.
    pub payment_latency_ms: u64,
    /// Saga step deadline.
    pub saga_step_timeout_ms: u64,
    /// First compensation retry wait.
    pub saga_retry_base_ms: u64,
    /// Compensation attempts before FAILED.
    pub saga_max_attempts: i32,
    /// Which services to run.
    pub role: Role,
    /// An existing broker and prefix (required unless `role` is `All`);
    /// `None`: an embedded broker of its own, or a fresh prefix on
    /// [`external_brokers`].
    pub kafka: Option<KafkaTarget>,
    /// An existing test database to reuse (a restart), instead of a new one.
    pub db_name: Option<String>,
    /// A Redis other than the machine's.
    pub redis_url: Option<String>,
    /// Where the product service is, when this app does not run it.
    pub product_url: Option<String>,
    /// Where the order service is, when this app does not run it.
    pub order_url: Option<String>,
    /// WebSocket heartbeat and limits: ping and idle timeout in seconds,
    /// and the outbound queue.
    pub ws_ping_seconds: u64,
    /// See `ws_ping_seconds`.
    pub ws_idle_timeout_seconds: u64,
    /// See `ws_ping_seconds`.
    pub ws_queue_limit: usize,
    /// Any other setting, changed last.
    pub configure: Option<fn(&mut Settings)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            payment_latency_ms: 0,
            saga_step_timeout_ms: 30_000,
            saga_retry_base_ms: 5_000,
            saga_max_attempts: 6,
            role: Role::All,
            kafka: None,
            db_name: None,
            redis_url: None,
            product_url: None,
            order_url: None,
            ws_ping_seconds: 20,
            ws_idle_timeout_seconds: 60,
            ws_queue_limit: 256,
            configure: None,
        }
    }
}

/// Starts all four services on free ports with a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// [`spawn_app`] with options.
pub async fn spawn_app_with(options: Options) -> TestApp {
    // Nothing is exported in these tests, so there is nothing to flush.
    let _telemetry = shop::telemetry::init(shop::config::LogFormat::Text);
    let db_name = options
        .db_name
        .clone()
        .unwrap_or_else(|| format!("shop_test_{}", Uuid::new_v4().simple()));
    let mut settings = Settings::defaults();
    settings.database_url = format!("{}/{db_name}", postgres_base());
    settings.database_pool_size = 8;
    settings.redis_url = options.redis_url.clone().unwrap_or_else(redis_url);
    settings.redis_prefix = db_name.clone();
    settings.http_host = "127.0.0.1".parse().expect("an address");
    settings.order_port = 0;
    settings.product_port = 0;
    settings.payment_port = 0;
    settings.gateway_port = 0;
    settings.kafka_partitions = Some(3);
    settings.kafka_session_timeout_ms = 6000;
    settings.payment_latency_ms = options.payment_latency_ms;
    settings.saga_step_timeout_ms = options.saga_step_timeout_ms;
    settings.saga_retry_base_ms = options.saga_retry_base_ms;
    settings.saga_max_attempts = options.saga_max_attempts;
    settings.saga_sweep_ms = 100;
    let owns_topics = options.kafka.is_none() && external_brokers().is_some();
    let kafka = options.kafka.clone().unwrap_or_else(|| KafkaTarget {
        // An embedded broker's own address is known once it runs.
        brokers: external_brokers().unwrap_or_default(),
        topic_prefix: format!("{db_name}."),
    });
    settings.kafka_brokers = Some(kafka.brokers.clone()).filter(|b| !b.is_empty());
    settings.kafka_topic_prefix = kafka.topic_prefix.clone();
    settings.kafka_replication = external_replication();
    settings.product_url = options.product_url.clone();
    settings.order_url = options.order_url.clone();
    settings.ws_ping_seconds = options.ws_ping_seconds;
    settings.ws_idle_timeout_seconds = options.ws_idle_timeout_seconds;
    settings.ws_queue_limit = options.ws_queue_limit;
    settings.outbox_poll_ms = 20;
    settings.shutdown_grace_seconds = 5;
    settings.jwt_secret = Some(shop::auth::Secret(JWT_SECRET.into()));
    if let Some(configure) = options.configure {
        configure(&mut settings);
    }
    let platform = Platform::start(&settings, options.role)
        .await
        .expect("platform starts");
    let addrs = platform.addresses.clone();
    let platform_brokers = platform.kafka_brokers.clone();
    let (db, connection) = tokio_postgres::connect(&settings.database_url, NoTls)
        .await
        .expect("test database reachable");
    tokio::spawn(connection);
    TestApp {
        platform: Some(platform),
        http: admin_client(),
        order_url: addrs
            .order
            .map(|a| format!("http://{a}"))
            .unwrap_or_default(),
        product_url: addrs
            .product
            .map(|a| format!("http://{a}"))
            .unwrap_or_default(),
        ws_url: addrs
            .gateway
            .map(|a| format!("ws://{a}"))
            .unwrap_or_default(),
        db,
        db_name,
        kafka: KafkaTarget {
            brokers: platform_brokers,
            topic_prefix: kafka.topic_prefix,
        },
        owns_topics,
    }
}

impl TestApp {
    /// Stops the platform but keeps the database, for a restart; returns
    /// the database's name.
    pub async fn stop_keeping_data(mut self) -> String {
        if let Some(platform) = self.platform.take() {
            platform.shutdown().await;
        }
        self.db_name.clone()
    }

    /// Stops the platform and drops the test database (and its topics on
    /// an external broker).
    pub async fn teardown(mut self) {
        if let Some(platform) = self.platform.take() {
            platform.shutdown().await;
        }
        if self.owns_topics {
            delete_topics(&self.kafka).await;
        }
        drop(self.db);
        let url = format!("{}/{}", postgres_base(), self.db_name);
        let _ = shop_actors::db::drop_database(&url).await;
    }

    /// The Kafka settings this app's platform runs with (its topics'
    /// names, its groups' ids).
    pub fn kafka_settings(&self) -> shop_actors::kafka::KafkaSettings {
        self.platform.as_ref().expect("running").infra.kafka.clone()
    }

    /// Creates a product with `stock` units at 1000 cents; returns its id.
    pub async fn create_product(&self, stock: i32) -> Uuid {
        let response = self
            .http
            .post(format!("{}/products", self.product_url))
            .json(&json!({
                "sku": format!("TEST-{}", Uuid::new_v4().simple()),
                "name": "Test product",
                "price_cents": 1000,
                "stock": stock,
            }))
            .send()
            .await
            .expect("product service answers");
        assert_eq!(response.status(), 201, "create product");
        let body: Value = response.json().await.expect("json");
        body["id"].as_str().expect("id").parse().expect("uuid")
    }

    /// The product's stock as `GET /products/{id}` answers it (through
    /// the cache).
    pub async fn api_stock(&self, product_id: Uuid) -> i64 {
        let url = format!("{}/products/{product_id}", self.product_url);
        let response = self.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["stock"]
            .as_i64()
            .unwrap()
    }

    /// The product's stock, read from Postgres directly.
    pub async fn stock(&self, product_id: Uuid) -> i32 {
        self.db
            .query_one(
                "SELECT stock FROM product.products WHERE id = $1",
                &[&product_id],
            )
            .await
            .expect("product exists")
            .get(0)
    }

    /// Places an order; returns the response.
    pub async fn place_order(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/orders", self.order_url))
            .json(body)
            .send()
            .await
            .expect("order service answers")
    }

    /// Places an order of `quantity` × `product_id` and returns its id.
    pub async fn order(&self, product_id: Uuid, quantity: i32, token: &str) -> Uuid {
        let response = self
            .place_order(&json!({
                "customer_id": "alice",
                "items": [{"product_id": product_id, "quantity": quantity}],
                "payment_token": token,
            }))
            .await;
        accepted_order_id(response, "place order").await
    }

    /// Places an order as `customer` (with their own token); returns its id.
    pub async fn place_order_as(&self, customer: &str, body: Value) -> Uuid {
        let response = reqwest::Client::new()
            .post(format!("{}/orders", self.order_url))
            .bearer_auth(token(customer, shop::auth::Role::Customer))
            .json(&body)
            .send()
            .await
            .expect("order service answers");
        accepted_order_id(response, &format!("place order as {customer}")).await
    }

    /// `GET url`, answered with JSON.
    pub async fn get_json(&self, url: impl reqwest::IntoUrl) -> Value {
        self.http
            .get(url)
            .send()
            .await
            .expect("service answers")
            .json()
            .await
            .expect("json")
    }

    /// `GET /metrics` of the order service (the process's metrics).
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.order_url))
            .send()
            .await
            .expect("service answers")
            .text()
            .await
            .expect("text")
    }

    /// `GET /orders/{id}`.
    pub async fn get_order(&self, order_id: Uuid) -> Value {
        self.get_json(format!("{}/orders/{order_id}", self.order_url))
            .await
    }

    /// Waits until the order is CONFIRMED or REJECTED; returns it.
    pub async fn wait_terminal(&self, order_id: Uuid) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let order = self.get_order(order_id).await;
            if matches!(order["status"].as_str(), Some("CONFIRMED" | "REJECTED")) {
                return order;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} stuck: {order}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens a WebSocket to the gateway as an admin: `/ws` follows every
    /// order, `/ws?order_id=…` one. Returns once the subscription is active.
    pub async fn websocket(&self, path_and_query: &str) -> WsClient {
        let mut ws = self.websocket_as(path_and_query, &admin_token()).await;
        if !path_and_query.contains("order_id=") {
            ws.send_json(&json!({"type": "subscribe", "scope": "all"}))
                .await;
        }
        ws.wait_for("subscribed").await;
        ws
    }

    /// Opens a WebSocket with `token`, offered as a subprotocol the way a
    /// browser sends it; nothing is subscribed beyond the query's order.
    pub async fn websocket_as(&self, path_and_query: &str, token: &str) -> WsClient {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("{}{path_and_query}", self.ws_url)
            .into_client_request()
            .expect("websocket request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            format!("shop.v1, bearer.{token}").parse().expect("header"),
        );
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connects");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("shop.v1"),
            "the server selects the protocol"
        );
        WsClient {
            socket,
            unread: Vec::new(),
        }
    }

    /// Number of rows in `table`.
    pub async fn count(&self, table: &str) -> i64 {
        self.db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0)
    }
}

/// A WebSocket client of the gateway.
pub struct WsClient {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Messages about other orders, kept for later calls.
    unread: Vec<Value>,
}

impl WsClient {
    /// The underlying socket.
    pub fn socket_mut(
        &mut self,
    ) -> &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    > {
        &mut self.socket
    }

    /// Sends a JSON message.
    pub async fn send_json(&mut self, message: &Value) {
        use futures::SinkExt;
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::text(
                message.to_string(),
            ))
            .await
            .expect("websocket send");
    }

    /// Follows every order of the connection's customer; returns once the
    /// subscription is active.
    pub async fn subscribe_mine(&mut self) {
        self.send_json(&json!({"type": "subscribe", "scope": "mine"}))
            .await;
        self.wait_for("subscribed").await;
    }

    /// Reads until a message of `kind` (its `type`) arrives, keeping the
    /// others for later calls; returns it.
    pub async fn wait_for(&mut self, kind: &str) -> Value {
        let mut others = Vec::new();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(15), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no {kind} message; saw {others:?}"))
                .expect("socket open")
                .expect("frame");
            if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                let value: Value = serde_json::from_str(&text).expect("gateway sends JSON");
                if value["type"] == kind {
                    self.unread.append(&mut others);
                    return value;
                }
                others.push(value);
            }
        }
    }

    /// The next JSON message, or `None` if none arrives within `wait`.
    pub async fn next_json(&mut self, wait: Duration) -> Option<Value> {
        if !self.unread.is_empty() {
            return Some(self.unread.remove(0));
        }
        loop {
            let message = tokio::time::timeout(wait, self.socket.next())
                .await
                .ok()??
                .ok()?;
            if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                return Some(serde_json::from_str(&text).expect("gateway sends JSON"));
            }
        }
    }

    /// Collects the statuses of `order_id` until one is terminal.
    pub async fn statuses_until_terminal(&mut self, order_id: Uuid) -> Vec<Value> {
        let mut seen = Vec::new();
        let mut others = Vec::new();
        while let Some(update) = self.next_json(Duration::from_secs(30)).await {
            let is_status = matches!(update["type"].as_str(), Some("update" | "snapshot"));
            if !is_status || update["order_id"] != json!(order_id) {
                others.push(update);
                continue;
            }
            let terminal = matches!(update["status"].as_str(), Some("CONFIRMED" | "REJECTED"));
            seen.push(update);
            if terminal {
                others.append(&mut self.unread);
                self.unread = others;
                return seen;
            }
        }
        panic!("no terminal status for {order_id}; saw {seen:?}");
    }
}

/// The `status` fields of `updates`.
pub fn statuses(updates: &[Value]) -> Vec<&str> {
    updates
        .iter()
        .map(|u| u["status"].as_str().unwrap_or("?"))
        .collect()
}

/// The value of the sample `series` (name and labels, exactly as exposed)
/// in a metrics page; 0 when absent.
pub fn metric_value(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// An HTTP client that sends an admin token with every request.
pub fn admin_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", admin_token())
            .parse()
            .expect("header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("http client")
}

/// Produces `payload` keyed by `key` straight onto `partition` of `topic`;
/// returns where it landed.
pub async fn produce(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    payload: &[u8],
) -> (i32, i64) {
    let delivery = producer
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(payload),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
    (delivery.partition, delivery.offset)
}

/// A `ReserveInventory` command of `quantity` × `product` for `order_id`.
pub fn reserve(order_id: Uuid, product: Uuid, quantity: i32) -> shop_actors::events::Envelope {
    shop_actors::events::Envelope::new(
        order_id,
        Uuid::new_v4(),
        shop_actors::events::Event::ReserveInventory(shop_actors::events::ReserveInventory {
            items: vec![shop_actors::events::OrderLine {
                product_id: product,
                quantity,
            }],
        }),
    )
}

/// The cached copy of one product, read straight from Redis.
pub async fn cached_stock(url: &str, prefix: &str, product: uuid::Uuid) -> Option<i64> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let entry: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}:product:{product}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    entry.map(|json| {
        serde_json::from_str::<Value>(&json).unwrap()["stock"]
            .as_i64()
            .unwrap()
    })
}

/// A consumer (of no group) assigned every partition of every topic of
/// `kafka` from the beginning, and how many messages there are to read: to
/// check what was published.
pub fn read_every_topic(
    kafka: &shop_actors::kafka::KafkaSettings,
    name: &str,
) -> (rdkafka::consumer::BaseConsumer, i64) {
    use rdkafka::consumer::Consumer;
    let timeout = Duration::from_secs(10);
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", kafka.group(name))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut remaining = 0;
    for topic in shop_actors::events::topics::ALL {
        let topic = kafka.topic(topic);
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .expect("metadata");
        for partition in metadata.topics()[0].partitions() {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition.id(), timeout)
                .expect("watermarks");
            remaining += high - low;
            assignment
                .add_partition_offset(&topic, partition.id(), rdkafka::Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&assignment).expect("assign");
    (consumer, remaining)
}

/// The `order_id` of a `202 Accepted` answer to `POST /orders`.
pub async fn accepted_order_id(response: reqwest::Response, what: &str) -> Uuid {
    assert_eq!(response.status(), 202, "{what}");
    let body: Value = response.json().await.expect("json");
    body["order_id"]
        .as_str()
        .expect("order_id")
        .parse()
        .expect("uuid")
}

impl WsClient {
    /// Every message the gateway sent this client before it answered a
    /// barrier: a request the connection answers by itself (unsubscribing
    /// from an order it never followed, whose `unsubscribed` names it).
    /// The connection handles its mailbox in order and writes each message
    /// before the next, so a push it was handed before the request (a leak,
    /// a duplicate) comes first; messages already read and kept for later
    /// count too. A closed socket never answers, so it fails here instead
    /// of passing for a quiet one. A ping would not do: tungstenite answers
    /// it from the reader, ahead of whatever the connection has queued.
    pub async fn until_barrier(&mut self) -> Vec<Value> {
        use futures::SinkExt;
        let barrier = Uuid::new_v4();
        let mut before = std::mem::take(&mut self.unread);
        let request = json!({"type": "unsubscribe", "order_id": barrier}).to_string();
        let sent = tokio::time::timeout(
            Duration::from_secs(15),
            self.socket
                .send(tokio_tungstenite::tungstenite::Message::text(request)),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("the barrier could not be sent: {error}; saw {before:?}"),
            Err(_) => panic!("the barrier could not be sent in time; saw {before:?}"),
        }
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(15), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("the barrier was not answered; saw {before:?}"));
            let text = match frame {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => text,
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                    panic!("closed ({frame:?}) before answering the barrier; saw {before:?}")
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => panic!("socket failed before the barrier: {error}"),
                None => panic!("socket closed before answering the barrier; saw {before:?}"),
            };
            let message: Value = serde_json::from_str(&text).expect("gateway sends JSON");
            if message["type"] == "unsubscribed" && message["order_id"] == json!(barrier) {
                return before;
            }
            before.push(message);
        }
    }
}

/// A digest of every row of every table the services own (schemas
/// `orders`, `product` and `payment`), per table with its row count: equal
/// digests mean no row was written, changed or deleted in between, every
/// column (timestamps included) compared. The fault suite's snapshot
/// (`tests/faults/snapshot.rs`) reads its tables the same way.
pub async fn table_digests(
    db: &tokio_postgres::Client,
) -> std::collections::BTreeMap<String, String> {
    let tables = db
        .query(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables
             WHERE table_schema IN ('orders', 'product', 'payment') AND table_type = 'BASE TABLE'
             ORDER BY 1",
            &[],
        )
        .await
        .expect("list tables");
    let mut digests = std::collections::BTreeMap::new();
    for table in &tables {
        let name: String = table.get(0);
        let row = db
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')
                     FROM {name} t"
                ),
                &[],
            )
            .await
            .expect("digest a table");
        let (rows, md5): (i64, String) = (row.get(0), row.get(1));
        digests.insert(name, format!("{rows} rows, md5 {md5}"));
    }
    digests
}

/// The high watermark (the offset the next message will get) of every
/// partition of every topic of `kafka`, by topic and partition: how much
/// was ever published there, which a relay deleting its published outbox
/// rows does not hide. Blocking.
pub fn high_watermarks(
    kafka: &shop_actors::kafka::KafkaSettings,
) -> std::collections::BTreeMap<(String, i32), i64> {
    use rdkafka::consumer::Consumer;
    let timeout = Duration::from_secs(10);
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", kafka.group("watermark-reader"))
        .create()
        .expect("consumer");
    let mut highs = std::collections::BTreeMap::new();
    for topic in shop_actors::events::topics::ALL {
        let topic = kafka.topic(topic);
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .expect("metadata");
        for partition in metadata.topics()[0].partitions() {
            let (_, high) = consumer
                .fetch_watermarks(&topic, partition.id(), timeout)
                .expect("watermarks");
            highs.insert((topic.clone(), partition.id()), high);
        }
    }
    highs
}

/// The entries of two maps that differ, one line each: an assertion
/// message that names what changed.
pub fn differences<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    before: &std::collections::BTreeMap<K, V>,
    after: &std::collections::BTreeMap<K, V>,
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&K> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|key| before.get(key) != after.get(key))
        .map(|key| format!("{key:?}: {:?} -> {:?}", before.get(key), after.get(key)))
        .collect()
}
