//! Peak resident memory of child processes, read from `/proc/PID/status` (`VmHWM`).
//!
//! `VmHWM` is the kernel's own high-water mark of a process's resident set, so a poller only
//! has to read it once more before the process exits to see its peak; what it can miss is
//! growth in the last poll interval before exit.

use crate::process::{apply_env, Process};
use anyhow::{Context, Result};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often [`PeakRss`] reads `/proc/PID/status`.
const POLL: Duration = Duration::from_millis(5);

/// `VmHWM` of `pid` in KiB; `None` once the process is gone or a zombie (its memory released).
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()
}

/// A thread that keeps reading a process's `VmHWM` until the process exits (or
/// [`PeakRss::finish`]), remembering the largest value seen.
pub struct PeakRss {
    pid: u32,
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PeakRss {
    /// Starts watching `pid` (a child that is running now).
    pub fn watch(pid: u32) -> Result<PeakRss> {
        let peak_kib = Arc::new(AtomicU64::new(vm_hwm_kib(pid).unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak, halt) = (peak_kib.clone(), stop.clone());
        let thread = std::thread::Builder::new().name(format!("rss-{pid}")).spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match vm_hwm_kib(pid) {
                    Some(kib) => {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    None => break,
                }
                std::thread::sleep(POLL);
            }
        })?;
        Ok(PeakRss { pid, peak_kib, stop, thread: Some(thread) })
    }

    /// The largest `VmHWM` seen so far, in KiB (reads it once more if the process still runs).
    pub fn peak_kib(&self) -> u64 {
        if let Some(kib) = vm_hwm_kib(self.pid) {
            self.peak_kib.fetch_max(kib, Ordering::Relaxed);
        }
        self.peak_kib.load(Ordering::Relaxed)
    }

    /// Stops the poller and returns the peak in KiB.
    pub fn finish(mut self) -> u64 {
        let kib = self.peak_kib();
        self.halt();
        kib.max(self.peak_kib.load(Ordering::Relaxed))
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A finished one-shot command with the peak resident memory it reached.
pub struct Measured {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub peak_rss_kib: u64,
    pub elapsed: Duration,
}

/// `walfleet-agent restore URL -o OUT EXTRA…` like [`crate::restore`], with its peak RSS
/// polled from `/proc` while it runs. Fails (after killing it) if it runs past `timeout`.
pub fn restore_measured(
    env: &[(String, String)],
    url: &str,
    out: &Path,
    extra: &[&str],
    timeout: Duration,
) -> Result<Measured> {
    let mut cmd = Command::new(crate::bins::agent()?);
    cmd.args(["restore", url, "-o"]).arg(out).args(extra);
    apply_env(&mut cmd, env);
    if !env.iter().any(|(k, _)| k == "RUST_LOG") {
        cmd.env("RUST_LOG", "info");
    }
    let start = std::time::Instant::now();
    let mut p = Process::spawn("walfleet-agent restore", cmd)?;
    let rss = PeakRss::watch(p.pid())?;
    let status = match p.wait(timeout) {
        Ok(st) => st,
        Err(e) => {
            let _ = p.sigkill();
            return Err(e).context("restore did not finish");
        }
    };
    let elapsed = start.elapsed();
    let peak_rss_kib = rss.finish();
    Ok(Measured { status, stdout: p.stdout(), stderr: p.stderr(), peak_rss_kib, elapsed })
}
