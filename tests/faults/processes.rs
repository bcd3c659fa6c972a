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
/// How long a SIGTERM'd service may take to finish in-flight work.
const TERM_GRACE: Duration = Duration::from_secs(15);

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

    /// SIGTERM, then SIGKILL if it has not exited within [`TERM_GRACE`].
    /// Returns false if it had to be killed.
    pub async fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(TERM_GRACE, child.wait()).await {
            Ok(_) => true,
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                false
            }
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
