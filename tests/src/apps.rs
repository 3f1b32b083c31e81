//! Real SQLite apps (Python's `sqlite3`, WAL mode) from `tests/apps/`, run as child processes.
//!
//! - `writer.py DB [--rate R] [--count N] [--seconds S] [--start-id I] [--value-size B]`:
//!   one row per transaction into `items`, prints each committed id; exits 0 on SIGTERM after
//!   the current commit.
//! - `workload.py DB --seed S [--steps N] [--interval SECS]`: a random but deterministic
//!   workload (inserts, updates, deletes, schema changes, VACUUM); prints one JSON line per
//!   committed step: `{"step": n, "op": "...", "ts": unix_seconds}`. The database after step
//!   n is a pure function of (seed, n): replay it with [`workload_replay`] for expectations.

use crate::process::Process;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `tests/apps`.
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps")
}

/// `python3 tests/apps/<script> DB ARGS…` as an argv, e.g. for `walfleet-agent run -- …`.
pub fn argv(script: &str, db: &Path, args: &[&str]) -> Vec<String> {
    let mut v = vec![
        crate::bins::python().to_string_lossy().into_owned(),
        apps_dir().join(script).to_string_lossy().into_owned(),
        db.to_string_lossy().into_owned(),
    ];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// A running app whose stdout lines are collected as they come.
pub struct App {
    proc: Process,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl App {
    /// Starts `tests/apps/<script> DB ARGS…`.
    pub fn start(script: &str, db: &Path, args: &[&str]) -> Result<App> {
        let argv = argv(script, db, args);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).env("PYTHONUNBUFFERED", "1");
        let mut proc = Process::spawn_piped(script, cmd)?;
        let stdout = proc.take_stdout().context("app stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::Builder::new().name(format!("{script}-stdout")).spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("app lines lock").push(line);
            }
        })?;
        Ok(App { proc, lines, reader: Some(reader) })
    }

    /// `writer.py DB ARGS…`
    pub fn writer(db: &Path, args: &[&str]) -> Result<App> {
        Self::start("writer.py", db, args)
    }

    /// `workload.py DB --seed SEED ARGS…`
    pub fn workload(db: &Path, seed: u64, args: &[&str]) -> Result<App> {
        let seed = seed.to_string();
        let mut all = vec!["--seed", seed.as_str()];
        all.extend_from_slice(args);
        Self::start("workload.py", db, &all)
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("app lines lock").clone()
    }

    pub fn line_count(&self) -> usize {
        self.lines.lock().expect("app lines lock").len()
    }

    /// writer.py: ids committed so far, in order.
    pub fn committed_ids(&self) -> Vec<i64> {
        self.lines().iter().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// writer.py: the last committed id.
    pub fn last_committed(&self) -> Option<i64> {
        self.committed_ids().last().copied()
    }

    /// workload.py: the JSON step records so far.
    pub fn steps(&self) -> Vec<serde_json::Value> {
        self.lines().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Waits until at least `n` stdout lines arrived (fails early if the app exits first).
    pub fn wait_lines(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.line_count() >= n {
                return Ok(());
            }
            if let Some(st) = self.proc.try_status()? {
                self.join_reader();
                if self.line_count() >= n {
                    return Ok(());
                }
                bail!("{} exited ({st}) after {} of {n} lines", self.proc.name(), self.line_count());
            }
            if start.elapsed() >= timeout {
                bail!("timed out after {timeout:?}: {} printed {} of {n} lines", self.proc.name(), self.line_count());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for exit and for every stdout line to be collected.
    pub fn finish(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let st = self.proc.wait(timeout)?;
        self.join_reader();
        Ok(st)
    }

    /// SIGTERM, wait for exit (the app finishes its current commit), collect the output.
    pub fn stop(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let st = self.proc.stop(timeout)?;
        self.join_reader();
        Ok(st)
    }

    fn join_reader(&mut self) {
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

impl Deref for App {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.proc
    }
}

impl DerefMut for App {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.proc
    }
}

/// Runs workload.py on a fresh `db` for exactly `steps` steps with no pause: the state a
/// replica must have after step `steps` of the same seed.
pub fn workload_replay(db: &Path, seed: u64, steps: u64) -> Result<()> {
    if db.exists() {
        bail!("workload_replay wants a fresh path, {} exists", db.display());
    }
    let steps_s = steps.to_string();
    let mut app = App::workload(db, seed, &["--steps", &steps_s, "--interval", "0"])?;
    let st = app.finish(Duration::from_secs(120))?;
    if !st.success() {
        bail!("workload.py replay failed ({st}):\n{}", app.stderr());
    }
    Ok(())
}
