//! The real `litestream` 0.5.17 binary: the interoperability oracle.

use crate::process::{apply_env, Process};
use crate::s3::{S3Server, BUCKET, REGION};
use anyhow::{Context, Result};
use std::path::Path;
use std::process::{Command, Output};

/// Litestream's S3 replica URL for `prefix` on `s3` (endpoint, region, path style in the URL).
pub fn s3_url(s3: &S3Server, prefix: &str) -> String {
    s3_url_for(&s3.endpoint(), prefix)
}

/// Like [`s3_url`] for another endpoint (e.g. a [`crate::Proxy`]).
pub fn s3_url_for(endpoint: &str, prefix: &str) -> String {
    format!("s3://{BUCKET}/{}?endpoint={endpoint}&region={REGION}&forcePathStyle=true", prefix.trim_matches('/'))
}

fn command(env: &[(String, String)]) -> Result<Command> {
    let mut cmd = Command::new(crate::bins::litestream()?);
    apply_env(&mut cmd, env);
    Ok(cmd)
}

/// `litestream version` (trimmed), e.g. `0.5.17`.
pub fn version() -> Result<String> {
    let mut cmd = command(&[])?;
    cmd.arg("version");
    let out = crate::process::run("litestream version", cmd, crate::agent::COMMAND_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `litestream restore -o OUT EXTRA… URL` with `env` (e.g. [`S3Server::env`]).
pub fn restore(env: &[(String, String)], url: &str, out: &Path, extra: &[&str]) -> Result<Output> {
    let mut cmd = command(env)?;
    cmd.arg("restore").arg("-o").arg(out).args(extra).arg(url);
    crate::process::run("litestream restore", cmd, crate::agent::COMMAND_TIMEOUT)
}

/// `litestream replicate DB URL` as a child process (stop it with [`Process::stop`]).
pub fn replicate(env: &[(String, String)], db: &Path, url: &str) -> Result<Process> {
    let mut cmd = command(env)?;
    cmd.arg("replicate").arg(db).arg(url);
    Process::spawn("litestream replicate", cmd).context("start litestream replicate")
}
