//! Command line, environment and TOML configuration, parsed and validated once.
//! This is the only module that reads the process environment for settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use proto::model::Txid;
use serde::Deserialize;

use crate::restore::Target;

#[derive(Parser, Debug)]
#[command(name = "walfleet-agent", version, about = "Keeps a SQLite database alive in object storage")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream every committed change of one or more databases to object storage.
    Replicate(ReplicateArgs),
    /// Restore if needed, replicate, and run the app; SIGTERM stops the app, ships the final
    /// changes and exits with the app's code.
    Run(RunArgs),
    /// Rebuild a database from its replica.
    Restore(RestoreArgs),
    /// List a replica's generations and where each one ends.
    Generations(GenerationsArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// TOML file describing several databases (`${VAR}` is expanded).
    #[arg(long, env = "WALFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the health and metrics endpoint.
    #[arg(long, env = "WALFLEET_HTTP_ADDR", default_value = "127.0.0.1:9187")]
    pub http_addr: SocketAddr,
    /// Shortest time between two uploads under steady writes (e.g. 1s, 250ms).
    #[arg(long, env = "WALFLEET_SYNC_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub sync_interval: Duration,
    /// Local disk kept for changes waiting for object storage (bytes, e.g. 1073741824).
    #[arg(long, env = "WALFLEET_SPOOL_BUDGET", default_value_t = 1 << 30)]
    pub spool_budget: u64,
}

#[derive(Args, Debug)]
pub struct ReplicateArgs {
    /// Database path and replica URL (or WALFLEET_DB_PATH / WALFLEET_REPLICA_URL, or --config).
    pub positional: Vec<String>,
    #[command(flatten)]
    pub common: Common,
    /// Name of the database in metrics and reports (defaults to the file name).
    #[arg(long, env = "WALFLEET_DB_NAME")]
    pub name: Option<String>,
    /// Refuse to start on a database that is not on the replica's lineage instead of moving it
    /// aside (as `<db>.stale-<time>`) and restoring the replica.
    #[arg(long, env = "WALFLEET_NO_STALE_PROTECTION")]
    pub no_stale_protection: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub replicate: ReplicateArgs,
    /// The app and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub app: Vec<String>,
    /// Time from SIGTERM to exit, app shutdown and final upload included.
    #[arg(long, env = "WALFLEET_GRACE", default_value = "9s", value_parser = parse_duration)]
    pub grace: Duration,
}

impl RunArgs {
    pub fn resolve(&self) -> Result<crate::run::RunConfig> {
        Ok(crate::run::RunConfig {
            replicate: self.replicate.resolve()?,
            app: self.app.clone(),
            grace: self.grace,
            stale_protection: !self.replicate.no_stale_protection,
        })
    }
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// `[DB_PATH] [REPLICA_URL]`: an argument with a scheme is a replica URL.
    pub positional: Vec<String>,
    #[arg(long, env = "WALFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where to write the database (defaults to DB_PATH).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Restore as of this transaction (decimal, or 16 hex digits as in LTX file names).
    #[arg(long, conflicts_with = "timestamp", value_parser = parse_txid)]
    pub txid: Option<Txid>,
    /// Restore as of this time (RFC 3339).
    #[arg(long, value_parser = parse_timestamp)]
    pub timestamp: Option<chrono::DateTime<chrono::Utc>>,
    /// Do nothing (and succeed) when the output already exists.
    #[arg(long)]
    pub if_db_not_exists: bool,
    /// Do nothing (and succeed) when there is no replica yet.
    #[arg(long)]
    pub if_replica_exists: bool,
    /// Skip `PRAGMA integrity_check` on the result.
    #[arg(long)]
    pub no_integrity_check: bool,
}

#[derive(Args, Debug)]
pub struct GenerationsArgs {
    pub replica_url: String,
    #[arg(long)]
    pub json: bool,
}

/// One database to replicate, validated.
#[derive(Clone, Debug)]
pub struct DbConfig {
    pub name: String,
    pub path: PathBuf,
    pub replica_url: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    sync_interval: Option<String>,
    #[serde(default)]
    http_addr: Option<String>,
    #[serde(default)]
    databases: Vec<FileDb>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileDb {
    path: PathBuf,
    replica: String,
    #[serde(default)]
    name: Option<String>,
}

/// Everything `replicate` needs.
#[derive(Clone, Debug)]
pub struct ReplicateConfig {
    pub spool_budget: u64,
    pub databases: Vec<DbConfig>,
    pub http_addr: SocketAddr,
    pub sync_interval: Duration,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn is_url(s: &str) -> bool {
    s.contains("://")
}

/// Splits `[DB_PATH] [REPLICA_URL]` positionals by whether they carry a scheme.
fn split_positional(args: &[String]) -> Result<(Option<PathBuf>, Option<String>)> {
    let mut db = None;
    let mut url = None;
    for a in args {
        if is_url(a) {
            if url.replace(a.clone()).is_some() {
                bail!("two replica URLs given: {a:?} and another; give one");
            }
        } else if db.replace(PathBuf::from(a)).is_some() {
            bail!("two database paths given: {a:?} and another; give one");
        }
    }
    Ok((db, url))
}

fn validate_url(url: &str) -> Result<()> {
    if !(url.starts_with("file:///") || url.starts_with("s3://")) {
        bail!("replica URL {url:?} is not supported: use file:///absolute/path or s3://bucket/prefix");
    }
    Ok(())
}

fn default_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "db".into())
}

impl ReplicateArgs {
    pub fn resolve(&self) -> Result<ReplicateConfig> {
        let (db, url) = split_positional(&self.positional)?;
        let mut cfg = ReplicateConfig {
            spool_budget: self.common.spool_budget,
            databases: Vec::new(),
            http_addr: self.common.http_addr,
            sync_interval: self.common.sync_interval,
        };
        if let Some(file) = &self.common.config {
            let fc = load_file(file)?;
            if let Some(s) = fc.sync_interval {
                cfg.sync_interval =
                    parse_duration(&s).map_err(|e| anyhow::anyhow!("{}: sync_interval: {e}", file.display()))?;
            }
            if let Some(a) = fc.http_addr {
                cfg.http_addr =
                    a.parse().with_context(|| format!("{}: http_addr {a:?} is not host:port", file.display()))?;
            }
            for d in fc.databases {
                validate_url(&d.replica)
                    .with_context(|| format!("{}: database {}", file.display(), d.path.display()))?;
                cfg.databases.push(DbConfig {
                    name: d.name.unwrap_or_else(|| default_name(&d.path)),
                    path: d.path,
                    replica_url: d.replica,
                });
            }
        }
        let db = db.or_else(|| env("WALFLEET_DB_PATH").map(PathBuf::from));
        let url = url.or_else(|| env("WALFLEET_REPLICA_URL"));
        match (db, url) {
            (Some(path), Some(url)) => {
                validate_url(&url)?;
                let name = self.name.clone().unwrap_or_else(|| default_name(&path));
                cfg.databases.push(DbConfig { name, path, replica_url: url });
            }
            (Some(p), None) if cfg.databases.is_empty() => {
                bail!("no replica URL for {}: give one after the path or set WALFLEET_REPLICA_URL", p.display())
            }
            (None, Some(_)) if cfg.databases.is_empty() => {
                bail!("no database path: give one before the URL or set WALFLEET_DB_PATH")
            }
            _ => {}
        }
        if cfg.databases.is_empty() {
            bail!("nothing to replicate: give DB_PATH REPLICA_URL, set WALFLEET_DB_PATH and WALFLEET_REPLICA_URL, or --config");
        }
        Ok(cfg)
    }
}

/// A validated restore request.
#[derive(Clone, Debug)]
pub struct RestoreConfig {
    pub replica_url: String,
    pub output: PathBuf,
    pub target: Target,
    pub if_db_not_exists: bool,
    pub if_replica_exists: bool,
    pub integrity_check: bool,
}

impl RestoreArgs {
    pub fn resolve(&self) -> Result<RestoreConfig> {
        let (db, url) = split_positional(&self.positional)?;
        let db = db.or_else(|| env("WALFLEET_DB_PATH").map(PathBuf::from));
        let mut url = url.or_else(|| env("WALFLEET_REPLICA_URL"));
        if url.is_none() {
            if let (Some(file), Some(db)) = (&self.config, &db) {
                url = load_file(file)?.databases.into_iter().find(|d| &d.path == db).map(|d| d.replica);
            }
        }
        let Some(url) = url else { bail!("no replica URL: give one, or set WALFLEET_REPLICA_URL") };
        validate_url(&url)?;
        let Some(output) = self.output.clone().or(db) else { bail!("no output: give -o FILE or a database path") };
        let target = match (self.txid, self.timestamp) {
            (Some(t), _) => Target::Txid(t),
            (None, Some(ts)) => Target::Timestamp(ts),
            (None, None) => Target::Latest,
        };
        Ok(RestoreConfig {
            replica_url: url,
            output,
            target,
            if_db_not_exists: self.if_db_not_exists,
            if_replica_exists: self.if_replica_exists,
            integrity_check: !self.no_integrity_check,
        })
    }
}

fn load_file(path: &Path) -> Result<FileConfig> {
    let raw = std::fs::read_to_string(path).with_context(|| format!("read config {}", path.display()))?;
    let expanded = expand_env(&raw, env).with_context(|| format!("expand variables in {}", path.display()))?;
    toml::from_str(&expanded).with_context(|| format!("parse config {}", path.display()))
}

/// Expands `${VAR}`; an unset variable is an error naming it.
pub fn expand_env(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find('}') else { bail!("unterminated ${{ in config") };
        let name = &after[..j];
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => bail!("config refers to ${{{name}}} but {name} is not set"),
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The platform's name for this instance, when it gives one.
pub fn platform_identity() -> Option<String> {
    ["K_REVISION", "FLY_MACHINE_ID", "RAILWAY_REPLICA_ID", "HOSTNAME"]
        .iter()
        .find_map(|var| env(var).map(|v| format!("{var}={v}")))
}

pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 1s or 250ms: {e}"))
}

pub fn parse_txid(s: &str) -> std::result::Result<Txid, String> {
    if s.len() == 16 {
        if let Ok(t) = s.parse::<Txid>() {
            return Ok(t);
        }
    }
    s.parse::<u64>().map(Txid).map_err(|_| format!("{s:?} is not a transaction id (decimal, or 16 hex digits)"))
}

pub fn parse_timestamp(s: &str) -> std::result::Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{s:?} is not an RFC 3339 time like 2026-01-02T15:04:05Z: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion_names_missing_variables() {
        let look = |k: &str| (k == "B").then(|| "bucket".to_string());
        assert_eq!(expand_env("s3://${B}/x", look).expect("expand"), "s3://bucket/x");
        let err = expand_env("s3://${NOPE}/x", look).expect_err("missing");
        assert!(err.to_string().contains("NOPE"), "{err}");
    }

    #[test]
    fn positional_split_by_scheme() {
        let (db, url) = split_positional(&["/d/app.db".into(), "s3://b/p".into()]).expect("split");
        assert_eq!(db, Some(PathBuf::from("/d/app.db")));
        assert_eq!(url.as_deref(), Some("s3://b/p"));
        assert!(split_positional(&["s3://a/b".into(), "s3://c/d".into()]).is_err());
    }

    #[test]
    fn txids_parse_in_both_forms() {
        assert_eq!(parse_txid("17"), Ok(Txid(17)));
        assert_eq!(parse_txid("0000000000000011"), Ok(Txid(17)));
        assert!(parse_txid("x").is_err());
        assert!(validate_url("http://x").is_err());
    }
}
