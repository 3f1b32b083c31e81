//! Command line, environment and TOML configuration, parsed and validated once.
//! This is the only module that reads the process environment for settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use proto::model::{DatabaseName, ProjectName, Txid};
use serde::Deserialize;

use crate::restore::Target;

#[derive(Parser, Debug)]
#[command(name = "walfleet-agent", version, about = "Keeps a SQLite database alive in object storage")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as plain text (colour only on a terminal) or one JSON object per line with
    /// `severity` (default: WALFLEET_LOG_FORMAT, else plain). Filter with WALFLEET_LOG.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<crate::telemetry::LogFormat>,
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
    /// How often a whole-database snapshot (level 9) bounds the cost of a restore; 0 turns
    /// snapshots off.
    #[arg(long, env = "WALFLEET_SNAPSHOT_INTERVAL", default_value = "24h", value_parser = parse_duration)]
    pub snapshot_interval: Duration,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// The controller this agent leases its databases from (optional: without one the agent runs
/// standalone).
#[derive(Args, Debug, Clone, Default)]
pub struct ControlArgs {
    /// gRPC URL of the walfleet controller (http://host:port or https://host:port).
    #[arg(long, env = "WALFLEET_CONTROLLER")]
    pub controller: Option<String>,
    /// The project's agent token (required with --controller).
    #[arg(long, env = "WALFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// The project the databases belong to (required with --controller).
    #[arg(long, env = "WALFLEET_PROJECT")]
    pub project: Option<String>,
    /// PEM file of a private CA that signed the controller's certificate (https only; the
    /// public web roots are trusted otherwise).
    #[arg(long, env = "WALFLEET_CONTROLLER_CA")]
    pub controller_ca: Option<PathBuf>,
    /// How long start-up may wait for an unreachable controller or for a lease another
    /// instance holds (default 60s).
    #[arg(long, env = "WALFLEET_LEASE_WAIT", value_parser = parse_duration)]
    pub lease_wait: Option<Duration>,
    /// How often the retention policy the controller holds for a database is applied (deletes
    /// only after the controller confirms this instance's generation is current).
    #[arg(long, env = "WALFLEET_RETENTION_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub retention_interval: Duration,
}

/// A value that must never reach a log: `Debug` prints a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
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
    /// The name the controller knows it by (`name`, validated): set when a controller is
    /// configured.
    pub database: Option<DatabaseName>,
    /// Client-side encryption of every object of this database (opt-in).
    pub encryption_key: Option<crate::object_store::EncryptionKey>,
}

/// How to reach the controller, validated.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub url: String,
    pub token: Secret,
    pub project: ProjectName,
    /// PEM of a private CA for an https controller.
    pub ca_pem: Option<Vec<u8>>,
    /// How long start-up waits for the controller or for a held lease.
    pub lease_wait: Duration,
    pub retention_interval: Duration,
}

pub const DEFAULT_LEASE_WAIT: Duration = Duration::from_secs(60);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    sync_interval: Option<String>,
    #[serde(default)]
    http_addr: Option<String>,
    #[serde(default)]
    controller: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    controller_ca: Option<PathBuf>,
    #[serde(default)]
    lease_wait: Option<String>,
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
    /// 64 hex digits; `${VAR}` keeps it out of the file.
    #[serde(default)]
    encryption_key: Option<String>,
}

/// A key from a setting; the error names the setting, never the value.
/// A client-side encryption key from a setting (blank: none); errors name the setting, never
/// the value.
pub fn parse_key(setting: &str, v: Option<String>) -> Result<Option<crate::object_store::EncryptionKey>> {
    v.filter(|s| !s.trim().is_empty())
        .map(|s| s.parse().map_err(|e: String| anyhow::anyhow!("{setting}: {e}")))
        .transpose()
}

/// Everything `replicate` needs.
#[derive(Clone, Debug)]
pub struct ReplicateConfig {
    pub spool_budget: u64,
    pub databases: Vec<DbConfig>,
    pub http_addr: SocketAddr,
    pub sync_interval: Duration,
    pub snapshot_interval: Duration,
    /// The controller, when one is configured.
    pub control: Option<ControlConfig>,
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
            snapshot_interval: self.common.snapshot_interval,
            control: None,
        };
        // Flags and environment win over the file for the controller settings.
        let mut control = self.common.control.clone();
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
            control.controller = control.controller.or(fc.controller);
            control.token = control.token.or(fc.token.map(Secret));
            control.project = control.project.or(fc.project);
            control.controller_ca = control.controller_ca.or(fc.controller_ca);
            if let (None, Some(s)) = (control.lease_wait, fc.lease_wait) {
                control.lease_wait =
                    Some(parse_duration(&s).map_err(|e| anyhow::anyhow!("{}: lease_wait: {e}", file.display()))?);
            }
            for d in fc.databases {
                validate_url(&d.replica)
                    .with_context(|| format!("{}: database {}", file.display(), d.path.display()))?;
                let encryption_key = parse_key(
                    &format!("{}: database {}: encryption_key", file.display(), d.path.display()),
                    d.encryption_key,
                )?;
                cfg.databases.push(DbConfig {
                    name: d.name.unwrap_or_else(|| default_name(&d.path)),
                    path: d.path,
                    replica_url: d.replica,
                    database: None,
                    encryption_key,
                });
            }
        }
        let db = db.or_else(|| env("WALFLEET_DB_PATH").map(PathBuf::from));
        let url = url.or_else(|| env("WALFLEET_REPLICA_URL"));
        match (db, url) {
            (Some(path), Some(url)) => {
                validate_url(&url)?;
                let name = self.name.clone().unwrap_or_else(|| default_name(&path));
                let encryption_key = parse_key("WALFLEET_ENCRYPTION_KEY", env("WALFLEET_ENCRYPTION_KEY"))?;
                cfg.databases.push(DbConfig { name, path, replica_url: url, database: None, encryption_key });
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
        cfg.control = resolve_control(&control, &mut cfg.databases)?;
        Ok(cfg)
    }
}

/// Validates the controller settings; with a controller every database needs a name the
/// controller accepts.
fn resolve_control(args: &ControlArgs, dbs: &mut [DbConfig]) -> Result<Option<ControlConfig>> {
    let Some(url) = args.controller.clone() else { return Ok(None) };
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    if !scheme_ok || url.parse::<axum::http::Uri>().is_err() {
        bail!("controller URL {url:?} is not supported: use http://host:port or https://host:port");
    }
    let Some(token) = args.token.clone().filter(|t| !t.expose().is_empty()) else {
        bail!(
            "a controller is set ({url}) but no agent token: set WALFLEET_TOKEN or --token (or `token` in the config)"
        );
    };
    // The token travels as a header value.
    if !token.expose().bytes().all(|b| b.is_ascii_graphic()) {
        bail!("the agent token (WALFLEET_TOKEN) has spaces or characters that cannot go in a header; copy it again");
    }
    let Some(project) = args.project.as_deref().filter(|p| !p.is_empty()) else {
        bail!("a controller is set ({url}) but no project: set WALFLEET_PROJECT or --project (or `project` in the config)");
    };
    let project: ProjectName = project.parse().context("check WALFLEET_PROJECT / --project")?;
    let ca_pem = match &args.controller_ca {
        None => None,
        Some(_) if url.starts_with("http://") => {
            bail!("--controller-ca (WALFLEET_CONTROLLER_CA) is set but the controller URL {url} is plain http: use https://")
        }
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("read controller CA {}", path.display()))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                bail!("controller CA {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display());
            }
            Some(pem)
        }
    };
    for db in dbs.iter_mut() {
        let name: DatabaseName = db.name.parse().with_context(|| {
            // The file name usually carries an extension the controller refuses: offer the stem.
            let stem = db.path.file_stem().map(|s| s.to_string_lossy().to_lowercase());
            let like = stem.filter(|s| s.parse::<DatabaseName>().is_ok()).unwrap_or_else(|| "app".into());
            format!(
                "database {}: the controller needs a name like \"{like}\": set --name / WALFLEET_DB_NAME (or `name` in the config)",
                db.path.display()
            )
        })?;
        db.database = Some(name);
    }
    let mut names: Vec<&str> = dbs.iter().map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("two databases are named {:?}: each needs its own name for the controller", w[0]);
    }
    Ok(Some(ControlConfig {
        url,
        token,
        project,
        ca_pem,
        lease_wait: args.lease_wait.unwrap_or(DEFAULT_LEASE_WAIT),
        retention_interval: args.retention_interval,
    }))
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
    pub encryption_key: Option<crate::object_store::EncryptionKey>,
}

impl RestoreArgs {
    pub fn resolve(&self) -> Result<RestoreConfig> {
        let (db, url) = split_positional(&self.positional)?;
        let db = db.or_else(|| env("WALFLEET_DB_PATH").map(PathBuf::from));
        let mut url = url.or_else(|| env("WALFLEET_REPLICA_URL"));
        let mut encryption_key = parse_key("WALFLEET_ENCRYPTION_KEY", env("WALFLEET_ENCRYPTION_KEY"))?;
        if url.is_none() {
            if let (Some(file), Some(db)) = (&self.config, &db) {
                if let Some(d) = load_file(file)?.databases.into_iter().find(|d| &d.path == db) {
                    url = Some(d.replica);
                    if encryption_key.is_none() {
                        encryption_key = parse_key(&format!("{}: encryption_key", file.display()), d.encryption_key)?;
                    }
                }
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
            encryption_key,
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

    fn dbs(name: &str) -> Vec<DbConfig> {
        vec![DbConfig {
            name: name.into(),
            path: PathBuf::from("/d/app.db"),
            replica_url: "file:///r".into(),
            database: None,
            encryption_key: None,
        }]
    }

    fn control(project: Option<&str>, token: Option<&str>) -> ControlArgs {
        ControlArgs {
            controller: Some("http://127.0.0.1:7070".into()),
            token: token.map(Secret::new),
            project: project.map(str::to_string),
            ..ControlArgs::default()
        }
    }

    fn err(args: &ControlArgs, name: &str) -> String {
        format!("{:#}", resolve_control(args, &mut dbs(name)).expect_err("refused"))
    }

    #[test]
    fn controller_needs_token_and_project() {
        assert!(err(&control(Some("shop"), None), "app").contains("WALFLEET_TOKEN"));
        assert!(err(&control(Some("shop"), Some("")), "app").contains("WALFLEET_TOKEN"));
        assert!(err(&control(None, Some("t")), "app").contains("WALFLEET_PROJECT"));
        let bad = err(&control(Some("Shop/../x"), Some("t")), "app");
        assert!(bad.contains("invalid project name") && bad.contains("Shop/../x"), "{bad}");
        let bad = err(&control(Some("shop"), Some("t")), "app.db");
        assert!(bad.contains("\"app.db\"") && bad.contains("WALFLEET_DB_NAME"), "{bad}");
        let mut url = control(Some("shop"), Some("t"));
        url.controller = Some("127.0.0.1:7070".into());
        assert!(err(&url, "app").contains("http://host:port"));
        let mut ca = control(Some("shop"), Some("t"));
        ca.controller_ca = Some(PathBuf::from("/nonexistent/ca.pem"));
        assert!(err(&ca, "app").contains("plain http"));
    }

    #[test]
    fn controller_settings_resolve_and_hide_the_token() {
        let mut list = dbs("app");
        let c = resolve_control(&control(Some("shop"), Some("wfagent_secret")), &mut list)
            .expect("valid")
            .expect("configured");
        assert_eq!(c.project.as_str(), "shop");
        assert_eq!(c.lease_wait, DEFAULT_LEASE_WAIT);
        assert_eq!(list[0].database.as_ref().map(|d| d.as_str()), Some("app"));
        assert!(!format!("{c:?}").contains("wfagent_secret"));
        assert!(resolve_control(&ControlArgs::default(), &mut dbs("app.db")).expect("standalone").is_none());
        let mut two = dbs("app");
        two.extend(dbs("app"));
        assert!(format!("{:#}", resolve_control(&control(Some("shop"), Some("t")), &mut two).expect_err("dup"))
            .contains("two databases"));
    }
}
