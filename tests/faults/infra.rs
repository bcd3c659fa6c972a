//! What the services stand on, as processes of their own: the `shop broker`
//! (taken down and up through its stdin) and a private `redis-server` (so
//! stopping it hurts no other test).

use crate::processes::{free_port, LogDir, Proc, Recipe, ShopBinary, READY_TIMEOUT};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::ChildStdin;
use tokio::time::Instant;

/// The `shop broker` process, with its stdin kept to send `down` / `up`.
pub struct Broker {
    proc: Proc,
    stdin: Option<ChildStdin>,
    /// `host:port` printed by the broker.
    pub address: String,
}

impl Broker {
    /// Starts `shop broker` with `partitions` per topic and reads its address.
    pub async fn start(logs: &LogDir, shop: &ShopBinary, partitions: i32) -> Self {
        let mut env = BTreeMap::new();
        env.insert("KAFKA_PARTITIONS".into(), partitions.to_string());
        env.insert("LOG_FORMAT".into(), "json".into());
        let recipe = Recipe {
            program: shop.program(),
            args: vec!["broker".into()],
            env,
        };
        let mut proc = Proc::new("broker", recipe, logs);
        let mut command = proc.command();
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = command.spawn().expect("spawn shop broker");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("broker stdout");
        proc.child = Some(child);
        let mut lines = BufReader::new(stdout).lines();
        let mut log = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&proc.log_path)
            .await
            .expect("open the broker log");
        // The address is the first line that parses as one; copy everything.
        let address = tokio::time::timeout(READY_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log.write_all(format!("{line}\n").as_bytes()).await;
                if line.trim().parse::<std::net::SocketAddr>().is_ok() {
                    return Some(line.trim().to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("shop broker printed no address:\n{}", proc.log_tail(20)));
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        Self {
            proc,
            stdin,
            address,
        }
    }

    /// Sends one control line (`down` or `up`).
    pub async fn control(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("broker stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the broker's stdin");
        stdin.flush().await.expect("flush the broker's stdin");
    }

    /// Panics (with its log) if the broker process has died: its data
    /// lives only in its memory, so there is nothing to restart.
    pub fn assert_alive(&mut self) {
        self.proc.assert_alive("the suite was running");
    }
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
