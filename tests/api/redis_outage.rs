//! Redis is only a cache: when it is unreachable or flushed every API keeps
//! answering with the right data from Postgres, and the cache refills when
//! it returns.

use crate::helpers::{cached_stock, free_port, spawn_app_with, token, Options};
use serde_json::{json, Value};
use shop::auth::Role;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A private redis-server on a free port, so stopping it disturbs no one.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// On a port free now, trying another if a process took it between
    /// the check and redis-server's bind.
    fn start_anywhere() -> Self {
        for _ in 0..5 {
            if let Some(redis) = Self::try_start(free_port()) {
                return redis;
            }
        }
        panic!("private redis did not start on any of 5 free ports");
    }

    /// On `port` again (a restart): it was this test's redis-server's.
    fn start(port: u16) -> Self {
        Self::try_start(port).expect("private redis restarts on its port")
    }

    /// `None` if redis-server exits (its port was taken) before it answers.
    fn try_start(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let mut redis = Self {
            port,
            child: Some(child),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = redis
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() {
                redis.child = None;
                return None;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "private redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Product cache entries (the catalogue and single products).
async fn cached_keys(url: &str, prefix: &str) -> usize {
    keys(url, &format!("{prefix}:product*")).await
}

async fn keys(url: &str, pattern: &str) -> usize {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.len()
}

#[tokio::test]
async fn every_api_keeps_working_through_a_redis_outage_and_the_cache_refills() {
    let mut redis = PrivateRedis::start_anywhere();
    let port = redis.port;
    let app = spawn_app_with(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let product = app.create_product(10).await;
    let read_stock = || app.api_stock(product);
    assert_eq!(read_stock().await, 10);
    // The cache is filled behind the read, so give it a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cached_keys(&redis.url(), &app.db_name).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reads fill the cache"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let alice = token("alice", Role::Customer);
    let mut ws = app.websocket_as("/ws", &alice).await;
    ws.subscribe_mine().await;

    redis.stop();
    // Orders go through and reads show the right stock, from Postgres.
    let order_id = app.order(product, 3, "tok_visa").await;
    assert_eq!(app.wait_terminal(order_id).await["status"], "CONFIRMED");
    // Every update still reaches WebSocket clients, and a snapshot comes
    // from the order service instead of the gateway's history.
    assert_eq!(ws.statuses_until_terminal(order_id).await.len(), 4);
    ws.send_json(&json!({"type": "subscribe", "order_id": order_id}))
        .await;
    assert_eq!(ws.wait_for("snapshot").await["status"], "CONFIRMED");
    assert_eq!(read_stock().await, 7);
    let listed = app
        .http
        .get(format!("{}/products", app.product_url))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let ready: Value = app.get_json(format!("{}/readyz", app.product_url)).await;
    assert_eq!(
        ready["status"], "ready",
        "a cache outage does not make the service unready: {ready}"
    );
    assert!(
        ready["checks"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("degraded"),
        "{ready}"
    );

    // Redis returns (empty, as after a flush): the cache refills on reads.
    let redis = PrivateRedis::start(port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(read_stock().await, 7);
        if cached_keys(&redis.url(), &app.db_name).await > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cache never refilled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The gateway's history starts again with updates read once it has
    // waited out its pause after the last failed write (5 s).
    let plenty = app.create_product(100).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let after = app.order(plenty, 1, "tok_visa").await;
        assert_eq!(ws.statuses_until_terminal(after).await.len(), 4);
        let pattern = format!("{}:gateway:*:order:{after}", app.db_name);
        if keys(&redis.url(), &pattern).await > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway's history never restarted"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    app.teardown().await;
}

/// A TCP proxy in front of a Redis that can be cut: while cut, every
/// connection through it is dropped and new ones are closed at once, so
/// the platform finds Redis unreachable while Redis itself keeps its data,
/// and nothing the platform sent during the cut reaches it later.
struct CuttableProxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let acceptor = tokio::spawn({
            let (cut, links) = (cut.clone(), links.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if cut.load(std::sync::atomic::Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            }
        });
        Self {
            port,
            cut,
            links,
            acceptor,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.acceptor.abort();
    }
}

#[tokio::test]
async fn entries_that_went_stale_while_redis_was_unreachable_are_never_served() {
    let redis = PrivateRedis::start_anywhere();
    let proxy = CuttableProxy::start(redis.port).await;
    let app = spawn_app_with(Options {
        redis_url: Some(proxy.url()),
        ..Options::default()
    })
    .await;
    let product = app.create_product(10).await;
    let url = format!("{}/products/{product}", app.product_url);
    let read_stock = || app.api_stock(product);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cached_stock(&redis.url(), &app.db_name, product).await != Some(10) {
        assert_eq!(read_stock().await, 10);
        assert!(
            tokio::time::Instant::now() < deadline,
            "reads fill the cache"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Unreachable, not empty: the stock changes while the cached copy stays.
    proxy.cut();
    let changed = app
        .http
        .put(format!("{url}/stock"))
        .bearer_auth(crate::helpers::admin_token())
        .json(&json!({"stock": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200, "{}", changed.text().await.unwrap());
    assert_eq!(read_stock().await, 4);
    assert_eq!(
        cached_stock(&redis.url(), &app.db_name, product).await,
        Some(10),
        "Redis still holds the entry from before the change"
    );

    // Redis is reachable again with that stale entry (its TTL is 30 s, far
    // beyond this test): no read may serve it, and once the cache is used
    // again it holds the new figure.
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(read_stock().await, 4, "a stale cache entry was served");
        if cached_stock(&redis.url(), &app.db_name, product).await == Some(4) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache was never used again after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        assert_eq!(read_stock().await, 4);
    }
    app.teardown().await;
}
