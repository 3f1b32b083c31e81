//! The `walfleet-agent` binary as a child process, and one-shot `walfleet-agent restore`.

use crate::metrics::Metrics;
use crate::process::{apply_env, Process};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

/// How long a one-shot command (restore, status, …) may take before it counts as hung.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A running `walfleet-agent` (any subcommand) with its HTTP address for `/metrics`,
/// `/healthz`, `/readyz`. Killed on drop; its stderr is printed then.
pub struct Agent {
    proc: Process,
    http: SocketAddr,
    client: reqwest::blocking::Client,
}

impl Agent {
    /// Spawns `walfleet-agent ARGS…` with `env` (typically [`crate::S3Server::env`]).
    /// Unless `env` sets them: `WALFLEET_HTTP_ADDR` = a free 127.0.0.1 port,
    /// `RUST_LOG=info`, `RUST_BACKTRACE=1`.
    pub fn start(args: &[&str], env: &[(String, String)]) -> Result<Agent> {
        Self::start_in(args, env, None)
    }

    /// Like [`Agent::start`] with a working directory.
    pub fn start_in(args: &[&str], env: &[(String, String)], cwd: Option<&Path>) -> Result<Agent> {
        let bin = crate::bins::agent()?;
        let mut env = env.to_vec();
        let has = |env: &[(String, String)], k: &str| env.iter().any(|(n, _)| n == k);
        if !has(&env, "WALFLEET_HTTP_ADDR") {
            env.push(("WALFLEET_HTTP_ADDR".into(), format!("127.0.0.1:{}", crate::free_port())));
        }
        for (k, v) in [("RUST_LOG", "info"), ("RUST_BACKTRACE", "1")] {
            if !has(&env, k) {
                env.push((k.into(), v.into()));
            }
        }
        let http: SocketAddr = env
            .iter()
            .rev()
            .find(|(k, _)| k == "WALFLEET_HTTP_ADDR")
            .map(|(_, v)| v.parse())
            .transpose()
            .context("parse WALFLEET_HTTP_ADDR")?
            .context("WALFLEET_HTTP_ADDR set above")?;
        let mut cmd = Command::new(bin);
        cmd.args(args);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        apply_env(&mut cmd, &env);
        let name = format!("walfleet-agent {}", args.first().copied().unwrap_or(""));
        let proc = Process::spawn(&name, cmd)?;
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build()?;
        Ok(Agent { proc, http, client })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// GET `path` on the agent's HTTP server: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let resp = self
            .client
            .get(format!("http://{}{path}", self.http))
            .send()
            .with_context(|| format!("GET {path} from agent at {}", self.http))?;
        let code = resp.status().as_u16();
        Ok((code, resp.text()?))
    }

    /// One scrape of `/metrics`.
    pub fn metrics(&self) -> Result<Metrics> {
        let (code, body) = self.get("/metrics")?;
        if code != 200 {
            bail!("GET /metrics: {code}: {body}");
        }
        Ok(Metrics::parse(&body))
    }

    /// Polls `/metrics` until the series matching `selector` (see [`Metrics::select`]) satisfy
    /// `pred`; returns that value. Fails with the last scrape (or error) and the agent's exit
    /// status if `timeout` passes or the agent exits.
    pub fn wait_metric(&mut self, selector: &str, pred: impl Fn(f64) -> bool, timeout: Duration) -> Result<f64> {
        let start = Instant::now();
        loop {
            let last = match self.metrics() {
                Ok(m) => match m.select(selector) {
                    Some(v) if pred(v) => return Ok(v),
                    Some(v) => format!("{selector} = {v}; all series:\n{}", m.dump()),
                    None => format!("no series matches {selector}; all series:\n{}", m.dump()),
                },
                Err(e) => format!("{e:#}"),
            };
            if let Some(st) = self.proc.try_status()? {
                bail!("agent exited ({st}) while waiting for {selector}; last: {last}");
            }
            if start.elapsed() >= timeout {
                bail!("timed out after {timeout:?} waiting for {selector}; last: {last}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `path` (e.g. `/readyz`) answers 200.
    pub fn wait_http_ok(&mut self, path: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let last = match self.get(path) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("{code}: {body}"),
                Err(e) => format!("{e:#}"),
            };
            if let Some(st) = self.proc.try_status()? {
                bail!("agent exited ({st}) while waiting for {path}; last: {last}");
            }
            if start.elapsed() >= timeout {
                bail!("timed out after {timeout:?} waiting for {path} = 200; last: {last}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn sigterm(&mut self) -> Result<()> {
        self.proc.sigterm()
    }

    /// Sends a signal by its `kill -s` name (STOP, CONT, …) to the agent process only.
    pub fn signal(&mut self, signal: &str) -> Result<()> {
        self.proc.signal(signal)
    }

    pub fn sigkill(&mut self) -> Result<ExitStatus> {
        self.proc.sigkill()
    }

    /// Waits up to `timeout` for the agent to exit.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.proc.wait(timeout)
    }

    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        self.proc.try_status()
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.proc
    }
}

/// `walfleet-agent restore URL -o OUT EXTRA…` with `env` (e.g. [`crate::S3Server::env`]);
/// `extra` is e.g. `["--txid", "42"]` or `["--timestamp", "2026-11-23T10:00:00Z"]`.
pub fn restore(env: &[(String, String)], url: &str, out: &Path, extra: &[&str]) -> Result<Output> {
    let mut args: Vec<&str> = vec!["restore", url, "-o"];
    let out = out.to_str().context("output path is not UTF-8")?;
    args.push(out);
    args.extend_from_slice(extra);
    run(&args, env)
}

/// Runs `walfleet-agent ARGS…` to completion with `env` (bounded by [`COMMAND_TIMEOUT`]).
pub fn run(args: &[&str], env: &[(String, String)]) -> Result<Output> {
    let mut cmd = Command::new(crate::bins::agent()?);
    cmd.args(args);
    apply_env(&mut cmd, env);
    if !env.iter().any(|(k, _)| k == "RUST_LOG") {
        cmd.env("RUST_LOG", "info");
    }
    let name = format!("walfleet-agent {}", args.first().copied().unwrap_or(""));
    crate::process::run(&name, cmd, COMMAND_TIMEOUT)
}
