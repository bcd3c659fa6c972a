//! The five service processes, each its own `shop <service>`, on ports
//! fixed for the whole run so restarts come back where clients look.

use crate::processes::{free_port, LogDir, Proc, Recipe, ShopBinary, Stop, READY_TIMEOUT};
use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::time::Instant;

/// A service process: which `shop` subcommand, on which port.
pub struct ServiceProc {
    /// The process.
    pub proc: Proc,
    /// Its HTTP port on 127.0.0.1 (fixed across restarts).
    pub port: u16,
}

impl ServiceProc {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The five service processes, by name: `product`, `payment`, `order-a`,
/// `order-b` (two replicas in the `order` group) and `gateway`.
pub struct Services {
    by_name: BTreeMap<&'static str, ServiceProc>,
    http: reqwest::Client,
}

/// Every service process, in the order the suite kills them.
pub const SERVICES: [&str; 5] = ["product", "payment", "order-a", "gateway", "order-b"];

impl Services {
    /// Prepares (does not start) every service with `env` plus its own port.
    pub fn new(logs: &LogDir, shop: &ShopBinary, env: &BTreeMap<String, String>) -> Self {
        let mut by_name = BTreeMap::new();
        let product_port = free_port();
        for name in SERVICES {
            let (subcommand, port_var) = match name {
                "product" => ("product", "PRODUCT_PORT"),
                "payment" => ("payment", "PAYMENT_PORT"),
                "gateway" => ("gateway", "GATEWAY_PORT"),
                _ => ("order", "ORDER_PORT"),
            };
            let port = if name == "product" {
                product_port
            } else {
                free_port()
            };
            let mut env = env.clone();
            env.insert(port_var.into(), port.to_string());
            env.insert(
                "PRODUCT_URL".into(),
                format!("http://127.0.0.1:{product_port}"),
            );
            let recipe = Recipe {
                program: shop.program(),
                args: vec![subcommand.into()],
                env,
                user: None,
            };
            by_name.insert(
                name,
                ServiceProc {
                    proc: Proc::new(name, recipe, logs),
                    port,
                },
            );
        }
        Self {
            by_name,
            http: crate::admin_client(Duration::from_secs(3)),
        }
    }

    /// The service called `name`.
    pub fn get(&mut self, name: &str) -> &mut ServiceProc {
        self.by_name
            .get_mut(name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// Every service's name and base URL.
    pub fn urls(&self) -> Vec<(&'static str, String)> {
        self.by_name.iter().map(|(n, s)| (*n, s.url())).collect()
    }

    /// Base URL of service `name`.
    pub fn url(&self, name: &str) -> String {
        self.by_name[name].url()
    }

    /// Starts `names` and waits until each answers `GET /readyz` with 200.
    pub async fn start(&mut self, names: &[&str]) {
        for name in names {
            self.get(name).proc.spawn();
        }
        for name in names {
            self.wait_ready(name).await;
        }
    }

    /// Waits until the two order processes own every partition between
    /// them, each some and none twice (`GET /admin/sagas/running`): the
    /// `order` group is not rebalancing.
    pub async fn wait_order_group_settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut owned = Vec::new();
            for name in ["order-a", "order-b"] {
                let url = format!("{}/admin/sagas/running", self.url(name));
                let body: Option<serde_json::Value> = match self.http.get(&url).send().await {
                    Ok(response) => response.json().await.ok(),
                    Err(_) => None,
                };
                owned.push(body.map(|b| (b["partitions"].as_i64(), b["owned_partitions"].clone())));
            }
            if let [Some((Some(total), a)), Some((_, b))] = &owned[..] {
                let set = |v: &serde_json::Value| -> Vec<i64> {
                    v.as_array()
                        .map(|ps| ps.iter().filter_map(serde_json::Value::as_i64).collect())
                        .unwrap_or_default()
                };
                let (a, b) = (set(a), set(b));
                let mut all: Vec<i64> = a.iter().chain(&b).copied().collect();
                all.sort_unstable();
                if !a.is_empty() && !b.is_empty() && all == (0..*total).collect::<Vec<_>>() {
                    println!("[faults] order group settled: order-a owns {a:?}, order-b {b:?}");
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "order group never settled: {owned:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls `GET /readyz` of `name` until it answers 200.
    pub async fn wait_ready(&mut self, name: &str) {
        let url = format!("{}/readyz", self.url(name));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(response) = self.http.get(&url).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            let service = self.get(name);
            service.proc.assert_alive("waiting for /readyz");
            assert!(
                Instant::now() < deadline,
                "{name} not ready within {READY_TIMEOUT:?}; log tail:\n{}",
                service.proc.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs `name`.
    pub async fn kill9(&mut self, name: &str) {
        self.get(name).proc.kill9().await;
    }

    /// SIGTERMs every service at once and waits for all; how each stopped.
    pub async fn terminate_all(&mut self) -> Vec<(&'static str, Stop)> {
        let stops = self
            .by_name
            .iter_mut()
            .map(|(name, service)| async move { (*name, service.proc.terminate().await) });
        futures::future::join_all(stops).await
    }

    /// Stops `name` with SIGTERM; how it stopped.
    pub async fn terminate(&mut self, name: &str) -> Stop {
        self.get(name).proc.terminate().await
    }

    /// Services whose current incarnation exited by itself, with the status.
    pub fn exited(&mut self) -> Vec<(String, ExitStatus)> {
        self.by_name
            .values_mut()
            .filter_map(|s| s.proc.exited().map(|status| (s.proc.name.clone(), status)))
            .collect()
    }

    /// Kills every service (also happens on drop).
    pub async fn kill_all(&mut self) {
        for service in self.by_name.values_mut() {
            service.proc.kill9().await;
        }
    }
}
