//! Child processes with captured logs, signals and deadlines.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Environment variables removed from every child the harness starts: they would point the
/// AWS SDKs (Rust and Go) at real AWS settings of the machine instead of the test server.
pub const REMOVED_ENV: &[&str] = &[
    "AWS_CA_BUNDLE",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
];

/// Applies `env` to `cmd` after removing [`REMOVED_ENV`].
pub fn apply_env(cmd: &mut Command, env: &[(String, String)]) {
    for k in REMOVED_ENV {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
}

/// How many lines of each log [`Process`] prints when dropped.
const LOG_TAIL_LINES: usize = 200;

/// A running child. stderr always goes to a file in the process's own temp dir; stdout too,
/// unless [`Process::spawn_piped`] hands it to the caller. On drop the child is killed (if
/// still running) and the tail of its logs is printed to stderr, so a failing test shows
/// what every process said.
pub struct Process {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    logs: TempDir,
}

impl Process {
    /// Spawns `cmd` with stdout and stderr captured to files.
    pub fn spawn(name: &str, cmd: Command) -> Result<Process> {
        Self::spawn_inner(name, cmd, false)
    }

    /// Spawns `cmd` with stderr captured to a file and stdout piped: take it with
    /// [`Process::take_stdout`].
    pub fn spawn_piped(name: &str, cmd: Command) -> Result<Process> {
        Self::spawn_inner(name, cmd, true)
    }

    fn spawn_inner(name: &str, mut cmd: Command, stdout_piped: bool) -> Result<Process> {
        let logs = tempfile::Builder::new().prefix(&format!("{name}-logs-")).tempdir().context("create log dir")?;
        let stderr = std::fs::File::create(logs.path().join("stderr.log"))?;
        cmd.stdin(Stdio::null()).stderr(stderr);
        if stdout_piped {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(std::fs::File::create(logs.path().join("stdout.log"))?);
        }
        let child = cmd.spawn().with_context(|| format!("spawn {name}: {cmd:?}"))?;
        Ok(Process { name: name.to_owned(), child, status: None, logs })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The piped stdout (only for [`Process::spawn_piped`], once).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.logs.path().join("stderr.log")
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path())
    }

    /// Everything the process wrote to stdout so far (empty when stdout is piped).
    pub fn stdout(&self) -> String {
        read_lossy(&self.logs.path().join("stdout.log"))
    }

    /// The exit status if the process has exited, without blocking.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().context("poll child")?;
        }
        Ok(self.status)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Sends `signal` (a `kill -s` name: TERM, INT, KILL, STOP, CONT, HUP) if still running.
    pub fn signal(&mut self, signal: &str) -> Result<()> {
        if self.try_status()?.is_some() {
            bail!("{} already exited ({:?}); cannot send SIG{signal}", self.name, self.status);
        }
        let st = Command::new("kill").args(["-s", signal, &self.pid().to_string()]).status().context("run kill")?;
        if !st.success() {
            bail!("kill -s {signal} {} failed: {st}", self.pid());
        }
        Ok(())
    }

    pub fn sigterm(&mut self) -> Result<()> {
        self.signal("TERM")
    }

    /// SIGKILL and reap.
    pub fn sigkill(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_status()? {
            return Ok(st);
        }
        self.child.kill().context("kill child")?;
        let st = self.child.wait().context("reap child")?;
        self.status = Some(st);
        Ok(st)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_status()? {
                return Ok(st);
            }
            if start.elapsed() >= timeout {
                bail!("{} (pid {}) still running after {timeout:?}", self.name, self.pid());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit status.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.try_status()? {
            return Ok(st);
        }
        self.sigterm()?;
        self.wait(timeout)
    }

    fn print_logs(&self) {
        eprintln!("----- {} (pid {}) exit: {:?} -----", self.name, self.pid(), self.status);
        for (what, text) in [("stderr", self.stderr()), ("stdout", self.stdout())] {
            if text.is_empty() {
                continue;
            }
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
            eprintln!("----- {} {what} ({} lines, last {}) -----", self.name, lines.len(), lines.len() - skip);
            for l in &lines[skip..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.sigkill();
        }
        self.print_logs();
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Runs `cmd` to completion (stdin closed) and returns its output; kills it and fails if it
/// runs longer than `timeout`.
pub fn run(name: &str, cmd: Command, timeout: Duration) -> Result<Output> {
    let mut p = Process::spawn(name, cmd)?;
    let status = match p.wait(timeout) {
        Ok(st) => st,
        Err(e) => {
            let _ = p.sigkill();
            return Err(e);
        }
    };
    let out = Output {
        status,
        stdout: std::fs::read(p.logs.path().join("stdout.log"))?,
        stderr: std::fs::read(p.stderr_path())?,
    };
    Ok(out)
}

/// Panics with the command's output unless it exited 0. Returns stdout as text.
pub fn expect_success(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
