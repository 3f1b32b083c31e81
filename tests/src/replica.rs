//! Watching a replica from outside: waiting until an agent has shipped everything it
//! captured, reading what `restore` logged, listing a replica's objects, removing a
//! database together with its sidecar files.

use crate::agent::Agent;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// What an agent's metrics say about one database once everything is shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    pub local_txid: u64,
    pub durable_txid: u64,
}

/// Waits until the agent reports `walfleet_durable_txid == walfleet_local_txid > 0` and
/// `walfleet_lag_bytes == 0`, continuously for `settle`. The agent captures a commit at the
/// latest one sync interval after it lands, so a `settle` longer than the sync interval
/// means a commit made before this call cannot still be waiting to be captured.
pub fn wait_shipped(agent: &mut Agent, settle: Duration, timeout: Duration) -> Result<Shipped> {
    let start = Instant::now();
    let mut since: Option<(Instant, Shipped)> = None;
    loop {
        let last = match agent.metrics() {
            Ok(m) => {
                let local = m.select("walfleet_local_txid").unwrap_or(-1.0);
                let durable = m.select("walfleet_durable_txid").unwrap_or(-2.0);
                let lag = m.select("walfleet_lag_bytes").unwrap_or(-1.0);
                if local > 0.0 && local == durable && lag == 0.0 {
                    let now = Shipped { local_txid: local as u64, durable_txid: durable as u64 };
                    match since {
                        Some((t, s)) if s == now => {
                            if t.elapsed() >= settle {
                                return Ok(now);
                            }
                        }
                        _ => since = Some((Instant::now(), now)),
                    }
                } else {
                    since = None;
                }
                m.dump()
            }
            Err(e) => {
                since = None;
                format!("{e:#}")
            }
        };
        if let Some(st) = agent.try_status()? {
            bail!("agent exited ({st}) before it had shipped everything; last scrape:\n{last}");
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for durable == local and lag_bytes == 0; last:\n{last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `s` without ANSI escape sequences (the agent's log may be coloured).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The value of `field=` on the last log line containing `message` (plain log format).
pub fn log_field(log: &str, message: &str, field: &str) -> Option<String> {
    let log = strip_ansi(log);
    let want = format!("{field}=");
    let line = log.lines().rev().find(|l| l.contains(message))?;
    line.split_whitespace().find_map(|tok| tok.strip_prefix(&want)).map(|v| v.trim_matches('"').to_owned())
}

/// Removes `db`, `db-wal`, `db-shm`, `db-journal` and walfleet's `db-walfleet` directory.
pub fn remove_database(db: &Path) -> Result<()> {
    let file = db.file_name().context("database path has no file name")?.to_string_lossy().into_owned();
    let dir = db.parent().context("database path has no parent")?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = dir.join(format!("{file}{suffix}"));
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("remove {}", p.display()))?;
        }
    }
    let state = dir.join(format!("{file}-walfleet"));
    if state.exists() {
        std::fs::remove_dir_all(&state).with_context(|| format!("remove {}", state.display()))?;
    }
    Ok(())
}

/// Every file under `root` as a `/`-separated path relative to it, sorted (a file:// replica's
/// keys).
pub fn file_keys(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The generations (16 hex digits) named by the first path component of `keys` after
/// `prefix`, sorted.
pub fn generations(keys: &[String], prefix: &str) -> Vec<String> {
    let mut gens: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(prefix)?.split('/').next())
        .filter(|g| g.len() == 16 && g.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect();
    gens.dedup();
    gens
}

/// An LTX object key split into (level, min txid, max txid) for either layout:
/// `…/<level %04x>/<min>-<max>.ltx` (S3) or `…/ltx/<level>/<min>-<max>.ltx` (file).
pub fn parse_ltx_key(key: &str) -> Option<(u8, u64, u64)> {
    let mut parts = key.rsplit('/');
    let name = parts.next()?.strip_suffix(".ltx")?;
    let level = parts.next()?;
    let level = if parts.next() == Some("ltx") { level.parse().ok()? } else { u8::from_str_radix(level, 16).ok()? };
    let (min, max) = name.split_once('-')?;
    Some((level, u64::from_str_radix(min, 16).ok()?, u64::from_str_radix(max, 16).ok()?))
}

/// `file:///…` for an absolute directory.
pub fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// Waits until the agent has captured past `after` and everything captured is durable
/// (`local > after`, `durable == local`, `lag_bytes == 0`); returns the durable TXID.
pub fn wait_durable_past(agent: &mut Agent, after: u64, timeout: Duration) -> Result<u64> {
    let start = Instant::now();
    loop {
        let last = match agent.metrics() {
            Ok(m) => {
                let local = m.select("walfleet_local_txid").unwrap_or(0.0) as u64;
                let durable = m.select("walfleet_durable_txid").unwrap_or(0.0) as u64;
                let lag = m.select("walfleet_lag_bytes").unwrap_or(f64::NAN);
                if local > after && durable == local && lag == 0.0 {
                    return Ok(durable);
                }
                m.dump()
            }
            // The HTTP server may not listen yet.
            Err(e) => format!("{e:#}"),
        };
        if let Some(st) = agent.try_status()? {
            bail!("agent exited ({st}) waiting for durability past txid {after}; last scrape:\n{last}");
        }
        if start.elapsed() > timeout {
            bail!("timed out waiting for local > {after}, durable == local, lag == 0; last scrape:\n{last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
