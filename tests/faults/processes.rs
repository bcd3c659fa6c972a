//! Child processes that can be killed and started again, and where they
//! log.
//!
//! Every child is spawned with `kill_on_drop`, so a failed assertion (which
//! unwinds through the owner) still takes every process down with it. Each
//! incarnation of a process writes stdout and stderr to its own file,
//! `<name>.<incarnation>.log`, under the run's [`LogDir`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// How long a freshly started process may take to answer its readiness probe.
pub const READY_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a SIGTERM'd service may take to exit: its grace period
/// (`SHUTDOWN_GRACE_SECONDS`) plus the 2 s `shop`'s `main` gives threads
/// still blocked in librdkafka, and a second for the process to go...
///
/// ...plus, for now, a known defect: with the group coordinator's broker
/// down, a consumer's stop waits out the fixed 5 s final-commit wait
/// (`FINAL_COMMIT_WAIT` in `actors/src/kafka/consumer.rs`) and then its
/// close blocks until the 10 s session timeout, so order-a took 7-12 s to
/// exit against a 5 s grace. The bound covers that, and no more, until the
/// shutdown shares one deadline; tighten it to the grace plus 3 s then.
pub const TERM_BOUND: Duration =
    crate::SHUTDOWN_GRACE.saturating_add(Duration::from_secs(3 + 5 + 10));
/// How long [`Proc::terminate`] waits before it kills: well past
/// [`TERM_BOUND`], so a slow stop is measured, not cut short.
const TERM_PATIENCE: Duration = Duration::from_secs(30);

/// The directory holding this run's process logs.
#[derive(Debug, Clone)]
pub struct LogDir {
    /// `target/faults-logs/<run-id>/`.
    path: PathBuf,
}

impl LogDir {
    /// Creates `target/faults-logs/<run_id>/` next to the `shop` binary.
    pub fn create(run_id: &str) -> Self {
        // CARGO_BIN_EXE_shop is `<target>/<profile>/shop`.
        let target = Path::new(env!("CARGO_BIN_EXE_shop"))
            .ancestors()
            .nth(2)
            .expect("the shop binary lives in <target>/<profile>/");
        let path = target.join("faults-logs").join(run_id);
        std::fs::create_dir_all(&path).expect("create the log directory");
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self, file: &str) -> (PathBuf, std::fs::File) {
        let path = self.path.join(file);
        let handle = std::fs::File::create(&path).expect("create a log file");
        (path, handle)
    }

    /// Log lines (from every file) that mention `needle`, prefixed by file name.
    pub fn grep(&self, needle: &str, limit: usize) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        let mut found = Vec::new();
        for file in files {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            for line in text.lines().filter(|line| line.contains(needle)) {
                found.push(format!("{}: {line}", name.as_deref().unwrap_or("?")));
                if found.len() >= limit {
                    return found;
                }
            }
        }
        found
    }

    /// Every JSON log line of every incarnation of process `name`.
    pub fn json_lines(&self, name: &str) -> Vec<serde_json::Value> {
        let prefix = format!("{name}.");
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
        {
            let file = entry.file_name().to_string_lossy().into_owned();
            if !file.starts_with(&prefix) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            lines.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
        lines
    }
}

/// A private copy of the `shop` binary for this run. Other builds share
/// the target directory and may replace `target/debug/shop` while the suite
/// runs; a restarted process must be the same program as the one it
/// replaces. The copy is deleted when this is dropped.
pub struct ShopBinary {
    path: PathBuf,
}

impl ShopBinary {
    /// Copies the binary cargo built for this test into `logs`.
    pub fn install(logs: &LogDir) -> Self {
        let path = logs.path().join("shop");
        std::fs::copy(env!("CARGO_BIN_EXE_shop"), &path).expect("copy the shop binary");
        Self { path }
    }

    /// Where the copy is.
    pub fn program(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for ShopBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

/// How to start one process, again and again.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The executable.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment added to the suite's own.
    pub env: BTreeMap<String, String>,
    /// Run as this `(uid, gid)` instead of the suite's own user: Postgres
    /// refuses to run as root.
    pub user: Option<(u32, u32)>,
}

/// One process that can be killed and started again.
pub struct Proc {
    /// Name in logs and messages, e.g. `order-a`.
    pub name: String,
    recipe: Recipe,
    logs: LogDir,
    /// The current incarnation, if running.
    pub child: Option<Child>,
    /// Starts so far; names the log file of the current one.
    incarnation: u32,
    /// The current incarnation's log.
    pub log_path: PathBuf,
}

impl Proc {
    /// A process that is not started yet.
    pub fn new(name: &str, recipe: Recipe, logs: &LogDir) -> Self {
        Self {
            name: name.to_owned(),
            recipe,
            logs: logs.clone(),
            child: None,
            incarnation: 0,
            log_path: PathBuf::new(),
        }
    }

    /// The command of the next incarnation, logging to its own file.
    pub fn command(&mut self) -> Command {
        let (path, log) = self
            .logs
            .open(&format!("{}.{}.log", self.name, self.incarnation));
        self.incarnation += 1;
        self.log_path = path;
        let mut command = Command::new(&self.recipe.program);
        command
            .args(&self.recipe.args)
            .envs(&self.recipe.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone a log handle"))
            .stderr(log)
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.recipe.user {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Starts a new incarnation.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let child = self
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL: no clean-up, no goodbye to the consumer group.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `TERM_PATIENCE`:
    /// how it stopped.
    pub async fn terminate(&mut self) -> Stop {
        self.signal_and_wait("TERM", TERM_PATIENCE).await
    }

    /// Sends `signal` (a name `kill` knows), waits up to `patience` for the
    /// process to exit, SIGKILLs it if it has not: how it stopped.
    pub async fn signal_and_wait(&mut self, signal: &str, patience: Duration) -> Stop {
        let started = std::time::Instant::now();
        let Some(mut child) = self.child.take() else {
            return Stop {
                status: None,
                took: Duration::ZERO,
                was_running: false,
            };
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args([format!("-{signal}"), pid.to_string()])
                .status();
        }
        let status = match tokio::time::timeout(patience, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                None
            }
        };
        Stop {
            status,
            took: started.elapsed(),
            was_running: true,
        }
    }

    /// `Some(status)` if the current incarnation has exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last lines of the current incarnation's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Panics with the log tail if the process has exited.
    pub fn assert_alive(&mut self, while_doing: &str) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited ({status}) while {while_doing}; log {}:\n{}",
                self.name,
                self.log_path.display(),
                self.log_tail(30)
            );
        }
    }
}

/// How a signalled process stopped.
#[derive(Debug, Clone, Copy)]
pub struct Stop {
    /// Its exit status; `None` if it had to be killed (or was not running).
    pub status: Option<ExitStatus>,
    /// From the signal to its exit (or to the kill).
    pub took: Duration,
    /// False if there was no process to stop.
    pub was_running: bool,
}

impl Stop {
    /// A clean stop: it exited by itself, with status 0, within `bound`.
    pub fn is_clean(&self, bound: Duration) -> bool {
        self.status.is_some_and(|s| s.success()) && self.took <= bound
    }

    /// `exited 0 in 1.2 s`, `exited with signal: 9 in ...`, `was killed after ...`.
    pub fn describe(&self) -> String {
        let took = self.took.as_secs_f64();
        match self.status {
            _ if !self.was_running => "was not running".into(),
            Some(status) if status.success() => format!("exited 0 in {took:.1} s"),
            Some(status) => format!("exited with {status} in {took:.1} s"),
            None => format!("ignored the signal and was killed after {took:.1} s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn stop(raw_status: Option<i32>, took_ms: u64) -> Stop {
        Stop {
            status: raw_status.map(ExitStatus::from_raw),
            took: Duration::from_millis(took_ms),
            was_running: true,
        }
    }

    #[test]
    fn only_exit_0_within_the_bound_is_a_clean_stop() {
        let bound = Duration::from_secs(8);
        assert!(stop(Some(0), 1_000).is_clean(bound));
        // Exit status 1 (raw wait status 1 << 8).
        assert!(!stop(Some(256), 1_000).is_clean(bound));
        // Died of SIGTERM's default action: no handler ran.
        assert!(!stop(Some(15), 1_000).is_clean(bound));
        assert!(!stop(Some(0), 9_000).is_clean(bound));
        assert!(!stop(None, 30_000).is_clean(bound));
        assert_eq!(
            stop(Some(256), 1_500).describe(),
            "exited with exit status: 1 in 1.5 s"
        );
    }
}
