//! What the services stand on, as processes of their own: a 3-node Apache
//! Kafka cluster (KRaft), run by `scripts/kafka.sh` with its data and logs
//! in the run's log folder, and a private `redis-server` (so stopping it
//! hurts no other test).

use crate::processes::{free_port, LogDir, Proc, Recipe, READY_TIMEOUT};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// Brokers in the cluster; node `N` (1-based) has broker id `N`.
pub const NODES: i32 = 3;

/// The Apache Kafka cluster, driven through `scripts/kafka.sh`.
pub struct Cluster {
    /// The script, at the repository's top.
    script: PathBuf,
    /// `SHOP_KAFKA_DIR` of the script: the nodes' data, logs and pid files.
    state: PathBuf,
    /// Bootstrap servers, `host:port,...`.
    pub address: String,
}

impl Cluster {
    /// Formats and starts [`NODES`] nodes and waits until each is ready.
    pub async fn start(logs: &LogDir) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
        let state = logs.path().join("kafka");
        let mut cluster = Self {
            script,
            state,
            address: String::new(),
        };
        let printed = cluster
            .run(&["start", "--nodes", &NODES.to_string()])
            .await
            .unwrap_or_else(|e| panic!("scripts/kafka.sh start: {e}"));
        cluster.address = printed.lines().last().unwrap_or_default().trim().to_owned();
        assert!(
            !cluster.address.is_empty(),
            "scripts/kafka.sh printed no bootstrap servers"
        );
        cluster
    }

    /// Runs the script with `args`; its stdout, or why it failed.
    async fn run(&self, args: &[&str]) -> Result<String, String> {
        let output = tokio::process::Command::new("bash")
            .arg(&self.script)
            .args(args)
            .env("SHOP_KAFKA_DIR", &self.state)
            .output()
            .await
            .map_err(|e| format!("running {}: {e}", self.script.display()))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "{args:?} exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// SIGKILL of `nodes`: a crash, nothing flushed.
    pub async fn kill(&self, nodes: &[i32]) {
        let args = node_args("kill", nodes);
        self.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await
            .unwrap_or_else(|e| panic!("killing brokers {nodes:?}: {e}"));
    }

    /// A clean stop of node `node` (SIGTERM; it hands over its leaders).
    pub async fn stop_node(&self, node: i32) {
        self.run(&["stop-node", &node.to_string()])
            .await
            .unwrap_or_else(|e| panic!("stopping broker {node}: {e}"));
    }

    /// Starts `nodes` again on their data and waits until they are ready.
    pub async fn restart(&self, nodes: &[i32]) {
        let args = node_args("restart", nodes);
        self.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await
            .unwrap_or_else(|e| panic!("restarting brokers {nodes:?}: {e}"));
    }

    /// Every node.
    pub fn all() -> Vec<i32> {
        (1..=NODES).collect()
    }

    /// A client for metadata requests.
    fn client(&self) -> Result<BaseConsumer, String> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .create()
            .map_err(|e| format!("kafka client: {e}"))
    }

    /// Every partition of every topic (the platform's and Kafka's own)
    /// with its leader, replicas and in-sync replicas.
    async fn partitions(&self) -> Result<Vec<PartitionState>, String> {
        let client = self.client()?;
        tokio::task::spawn_blocking(move || {
            let metadata = client
                .fetch_metadata(None, Duration::from_secs(5))
                .map_err(|e| format!("metadata: {e}"))?;
            Ok(metadata
                .topics()
                .iter()
                .flat_map(|topic| {
                    topic.partitions().iter().map(|p| PartitionState {
                        topic: topic.name().to_owned(),
                        leader: p.leader(),
                        replicas: p.replicas().len(),
                        in_sync: p.isr().len(),
                    })
                })
                .collect())
        })
        .await
        .map_err(|e| format!("metadata task: {e}"))?
    }

    /// The node that leads the most partitions of the platform's topics,
    /// and how many it leads.
    pub async fn busiest_leader(&self) -> (i32, usize) {
        let partitions = self
            .partitions()
            .await
            .unwrap_or_else(|e| panic!("finding the partition leaders: {e}"));
        let mut led: BTreeMap<i32, usize> = BTreeMap::new();
        for partition in partitions
            .iter()
            .filter(|p| shop_actors::events::topics::ALL.contains(&p.topic.as_str()))
        {
            *led.entry(partition.leader).or_default() += 1;
        }
        led.into_iter()
            .max_by_key(|(_, count)| *count)
            .filter(|(node, _)| (1..=NODES).contains(node))
            .unwrap_or_else(|| panic!("no partition of the platform's topics has a leader"))
    }

    /// Waits until every partition has all its replicas in sync again;
    /// how long that took, or what was still behind at `bound`.
    pub async fn wait_in_sync(&self, bound: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            let behind = match self.partitions().await {
                Ok(partitions) => {
                    let behind: Vec<String> = partitions
                        .iter()
                        .filter(|p| p.in_sync < p.replicas || p.leader < 0)
                        .map(|p| format!("{} ({}/{} in sync)", p.topic, p.in_sync, p.replicas))
                        .collect();
                    if behind.is_empty() {
                        return Ok(started.elapsed());
                    }
                    behind
                }
                Err(e) => vec![e],
            };
            if started.elapsed() > bound {
                return Err(format!(
                    "{} partitions not in sync after {} s: {}",
                    behind.len(),
                    bound.as_secs(),
                    behind
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Even when the suite panics: stop exactly the nodes it started.
        // `--keep` leaves their logs beside the services' for a post-mortem.
        let _ = std::process::Command::new("bash")
            .arg(&self.script)
            .args(["stop", "--keep"])
            .env("SHOP_KAFKA_DIR", &self.state)
            .status();
    }
}

/// `command` and the node numbers, as the script's arguments.
fn node_args(command: &str, nodes: &[i32]) -> Vec<String> {
    std::iter::once(command.to_owned())
        .chain(nodes.iter().map(i32::to_string))
        .collect()
}

/// One partition as the cluster's metadata describes it.
struct PartitionState {
    topic: String,
    /// Broker id of its leader (-1: none).
    leader: i32,
    replicas: usize,
    in_sync: usize,
}

/// A `redis-server` of our own, so stopping it hurts nobody else.
pub struct PrivateRedis {
    proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free port, without persistence.
    pub async fn start(logs: &LogDir) -> Self {
        let port = free_port();
        let recipe = Recipe {
            program: std::env::var("FAULTS_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()),
            args: [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(String::from)
            .to_vec(),
            env: BTreeMap::new(),
            user: None,
        };
        let mut redis = Self {
            proc: Proc::new("redis", recipe, logs),
            port,
        };
        redis.restart().await;
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: an outage, not a maintenance window).
    pub async fn stop(&mut self) {
        self.proc.kill9().await;
    }

    /// Starts it (again) and waits until it answers PING.
    pub async fn restart(&mut self) {
        self.proc.spawn();
        let deadline = Instant::now() + READY_TIMEOUT;
        while !redis_pong(self.port).await {
            self.proc.assert_alive("starting");
            assert!(Instant::now() < deadline, "redis never answered PING");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn redis_pong(port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buffer = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut buffer)).await,
        Ok(Ok(_)) if &buffer == b"+PONG\r\n"
    )
}
