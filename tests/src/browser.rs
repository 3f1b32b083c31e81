//! A real headless browser: Debian's `chromium` driven by `playwright-core` (npm, installed by
//! scripts/install-deps.sh into the cache; no browser download) from a node script in
//! `tests/browser/`. The script and the test talk over stdio: the script prints `STEP <name>`
//! and waits for one line on stdin, which the test's step handler returns after doing what
//! the step needs (start a second instance, wait for a handoff); `PASS <check>` lines report
//! what held. The script exits non-zero when a check fails, and then so does the test.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const INSTALL: &str = "run scripts/install-deps.sh (installs chromium and playwright-core)";

/// `playwright-core`'s ES module entry (override: `PLAYWRIGHT_CORE`).
pub fn playwright() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PLAYWRIGHT_CORE") {
        return Ok(p.into());
    }
    let p = crate::bins::cache_dir().join("npm/node_modules/playwright-core/index.mjs");
    if !p.is_file() {
        bail!("playwright-core is not installed at {}: {INSTALL}", p.display());
    }
    Ok(p)
}

/// The chromium binary (override: `CHROMIUM`).
pub fn chromium() -> Result<PathBuf> {
    let p: PathBuf = std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
    if !p.is_file() {
        bail!("chromium is not installed at {}: {INSTALL}", p.display());
    }
    Ok(p)
}

/// `tests/browser/<name>`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser").join(name)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `node tests/browser/<name>` with `env`, answering each `STEP` with `on_step(step,
/// lines so far)`; returns every line the script printed. Fails when the script fails, says
/// nothing for `timeout`, or a step handler fails.
pub fn run(
    name: &str,
    env: &[(String, String)],
    timeout: Duration,
    mut on_step: impl FnMut(&str, &[String]) -> Result<String>,
) -> Result<Vec<String>> {
    let logs = tempfile::tempdir()?;
    let stderr_path = logs.path().join("stderr.log");
    let mut cmd = Command::new("node");
    cmd.arg(script(name))
        .env("PLAYWRIGHT_CORE", playwright()?)
        .env("CHROMIUM", chromium()?)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path)?);
    let mut child = Killed(cmd.spawn().context("start node (is nodejs installed?)")?);
    let mut stdin = child.0.stdin.take().context("script stdin")?;
    let stdout = child.0.stdout.take().context("script stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines: Vec<String> = Vec::new();
    let started = Instant::now();
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                eprintln!("browser: {line}");
                lines.push(line.clone());
                if let Some(step) = line.strip_prefix("STEP ") {
                    let reply = on_step(step, &lines).with_context(|| format!("step {step} of {name}"))?;
                    writeln!(stdin, "{reply}").context("answer the browser script")?;
                    stdin.flush()?;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if started.elapsed() > timeout {
                    bail!("{name} did not finish in {timeout:?}; stderr:\n{}", stderr());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.0.wait().context("wait for the browser script")?;
    if !status.success() {
        bail!("{name} failed ({status}):\n{}\nstdout:\n{}", stderr(), lines.join("\n"));
    }
    Ok(lines)
}
