//! Harness for walfleet's black-box integration tests (the `it` test binary).
//!
//! Everything here starts or talks to real things: the `walfleet-agent` binary, an s3s-fs
//! server over HTTP with SigV4, the `litestream` binary, Python apps writing through their own
//! SQLite driver, and a TCP proxy for network faults. Child processes are killed on drop and
//! their logs are printed to stderr then (nextest shows them only for failing tests).
//!
//! Synchronisation is always a condition with a deadline ([`wait_until`]), never a bare sleep.

pub mod agent;
pub mod apps;
pub mod bins;
pub mod browser;
pub mod ceph;
pub mod controller;
pub mod garage;
pub mod litestream;
pub mod memory;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod replica;
pub mod s3;
pub mod sqlite;

pub use agent::{restore, Agent};
pub use apps::App;
pub use metrics::Metrics;
pub use process::Process;
pub use proxy::Proxy;
pub use s3::S3Server;

use std::time::{Duration, Instant};

/// Polls `cond` until it returns true; panics with `what` if `timeout` passes first.
/// The poll interval starts at 10 ms and backs off to 200 ms.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    if let Err(e) = try_wait_until(timeout, what, &mut cond) {
        panic!("{e}");
    }
}

/// Like [`wait_until`] but returns an error instead of panicking.
pub fn try_wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if cond() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A free TCP port on 127.0.0.1 (bind :0, read the port, release it).
/// The seed of a randomised test: `WALFLEET_TEST_SEED` or a fresh one, printed so that a
/// failure can be replayed.
pub fn test_seed() -> u64 {
    let seed = std::env::var("WALFLEET_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("seed {seed} (rerun with WALFLEET_TEST_SEED={seed})");
    seed
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to pick a free port")
}
