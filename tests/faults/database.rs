//! The run's own Postgres: a private server (so crashing it hurts no other
//! test), started from the Debian binaries with a fresh data directory,
//! and in it the run's database, created by the first service that starts
//! and read directly by the checks.
//!
//! A private server rather than a proxy in front of the shared one: the
//! outage it gives is a real crash (every backend killed, no checkpoint,
//! crash recovery on restart), with nothing of the suite's own in the
//! path of the services' connections; and the suite's load stays off the
//! server the other test suites share.

use crate::processes::{free_port, LogDir, Proc, Recipe, READY_TIMEOUT};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::NoTls;

/// A `postgres` server of our own, on a free port, trusting loopback.
pub struct PrivatePostgres {
    proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The data directory (removed on drop unless `FAULTS_KEEP_DB` is set).
    data: PathBuf,
    /// Where `initdb` and `postgres` are.
    bin: PathBuf,
}

impl PrivatePostgres {
    /// Creates a data directory with `initdb` and starts the server on it.
    pub async fn start(logs: &LogDir, run_id: &str) -> Self {
        let bin = binaries();
        let user = server_user();
        let data = std::env::temp_dir().join(format!("shop-faults-pg-{run_id}"));
        std::fs::create_dir_all(&data).expect("create the Postgres data directory");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&data, Some(uid), Some(gid))
                .expect("give the data directory to the postgres user");
        }
        let mut initdb = tokio::process::Command::new(bin.join("initdb"));
        initdb
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--no-locale", "--no-sync", "--no-instructions", "-D"])
            .arg(&data)
            .current_dir(&data);
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let output = initdb
            .output()
            .await
            .unwrap_or_else(|e| panic!("run {}/initdb: {e}", bin.display()));
        assert!(
            output.status.success(),
            "initdb failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let port = free_port();
        let settings = [
            "listen_addresses=127.0.0.1".to_owned(),
            format!("port={port}"),
            // No Unix socket: its path would be one more thing to share.
            "unix_socket_directories=".to_owned(),
            "max_connections=200".to_owned(),
            // The outage is a crash of the server, not of the machine: what
            // it wrote is in the page cache and survives either way, so
            // flushing it to disk proves nothing and slows every commit.
            "fsync=off".to_owned(),
        ];
        let mut args = vec!["-D".to_owned(), data.display().to_string()];
        for setting in settings {
            args.extend(["-c".to_owned(), setting]);
        }
        let recipe = Recipe {
            program: bin.join("postgres").display().to_string(),
            args,
            env: BTreeMap::new(),
            user,
        };
        let mut server = Self {
            proc: Proc::new("postgres", recipe, logs),
            port,
            data,
            bin,
        };
        server.restart().await;
        server
    }

    /// `postgres://postgres@127.0.0.1:<port>` (no database name).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// A crash: immediate shutdown (SIGQUIT), which kills every backend at
    /// once, rolls back nothing cleanly and skips the checkpoint, so the
    /// next start runs crash recovery. Returns once the server has gone.
    pub async fn crash(&mut self) {
        let stop = self
            .proc
            .signal_and_wait("QUIT", Duration::from_secs(10))
            .await;
        println!("[faults] postgres {}", stop.describe());
    }

    /// Starts it (again) and waits until it takes connections.
    pub async fn restart(&mut self) {
        self.proc.spawn();
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/postgres", self.url());
        loop {
            let connected =
                tokio::time::timeout(Duration::from_secs(2), tokio_postgres::connect(&url, NoTls))
                    .await;
            if let Ok(Ok((client, connection))) = connected {
                drop(client);
                let _ = connection.await;
                return;
            }
            self.proc.assert_alive("starting");
            assert!(
                Instant::now() < deadline,
                "postgres never took connections; log:\n{}",
                self.proc.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // A fast shutdown (SIGINT) rather than the child's SIGKILL: a
        // killed postmaster leaves its backends behind for a while.
        if let Some(pid) = self.proc.child.as_ref().and_then(|c| c.id()) {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline
                && self.proc.exited().is_none()
                && Path::new(&format!("/proc/{pid}")).exists()
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if std::env::var_os("FAULTS_KEEP_DB").is_some() {
            println!(
                "[faults] kept the Postgres data directory {} (start it with `{} -D {} -c port={}`)",
                self.data.display(),
                self.bin.join("postgres").display(),
                self.data.display(),
                self.port
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

/// Where the Postgres binaries are: `FAULTS_POSTGRES_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's package, which
/// `.ci/services.sh` installs).
fn binaries() -> PathBuf {
    if let Some(dir) = std::env::var_os("FAULTS_POSTGRES_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no Postgres binaries under /usr/lib/postgresql/*/bin (install Debian's `postgresql`, \
             e.g. with `bash .ci/services.sh`, or set FAULTS_POSTGRES_BIN)"
        )
    })
}

/// `Some((uid, gid))` of the `postgres` user when the suite runs as root,
/// which Postgres refuses to run as; `None` otherwise (it runs as us).
fn server_user() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user of the process reading it.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields[..] {
            ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
            _ => None,
        }
    });
    Some(user.unwrap_or_else(|| {
        panic!(
            "the suite runs as root and Postgres refuses to: it runs its server as the \
             `postgres` user, and there is none (Debian's `postgresql` package creates it)"
        )
    }))
}

/// A database name and URL for this run.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// Its URL (database `shop_faults_<run id>`), for the services.
    pub url: String,
}

impl TestDatabase {
    /// Names a fresh database on `server` (nothing is created yet).
    pub fn new(run_id: &str, server: &PrivatePostgres) -> Self {
        Self {
            url: format!("{}/shop_faults_{run_id}", server.url()),
        }
    }

    /// A connection to it, for the checks.
    pub async fn connect(&self) -> tokio_postgres::Client {
        self.try_connect()
            .await
            .unwrap_or_else(|e| panic!("the test database is reachable: {e}"))
    }

    /// A connection to it, or why not.
    pub async fn try_connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }
}
