//! Command line and environment of `walfleet`: the server and the admin verbs. The only module
//! that reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "walfleet", version, about = "walfleet controller and admin CLI")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as plain text (colour only on a terminal) or one JSON object per line with
    /// `severity` (default: WALFLEET_LOG_FORMAT, else plain). Filter with WALFLEET_LOG.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<agent::telemetry::LogFormat>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller (gRPC control plane, HTTP metrics).
    Serve(ServeArgs),
    /// Create or list projects, or set where their replicas may live.
    Projects {
        #[command(subcommand)]
        verb: ProjectsVerb,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create, revoke or list tokens.
    Tokens {
        #[command(subcommand)]
        verb: TokensVerb,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Agent instances and what each last reported.
    Instances {
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Events: duplicate instances, handoffs, forks, expiries.
    Events {
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        database: Option<String>,
        /// Only events after this id.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The generations the controller issued for PROJECT/DB.
    Generations {
        target: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The inventory: every database (of --project, or all) with its status, positions, lag,
    /// restorable window, stored objects and bytes, cost estimate and last drill.
    Databases {
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reconcile now: scan the replicas' listings (all databases, --project, or one PROJECT/DB).
    Scan {
        target: Option<String>,
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Restore drill of PROJECT/DB, run by the controller: restore into scratch space, check
    /// integrity and the checksum the agent reported. Exits 1 when the drill fails.
    Drill {
        target: String,
        /// Set the database's drill schedule instead of drilling now (0s: never).
        #[arg(long, value_parser = parse_duration)]
        every: Option<Duration>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show or set how much point-in-time history PROJECT/DB keeps (--keep 7d). The current
    /// generation's agent deletes what falls outside, after the controller validates its
    /// generation. --dry-run lists what would go (with --keep: under that window instead).
    Retention {
        target: String,
        #[arg(long, value_parser = parse_duration)]
        keep: Option<Duration>,
        /// Keep everything (clears the policy).
        #[arg(long, conflicts_with = "keep")]
        clear: bool,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Restore PROJECT/DB onto this machine (audited by the controller). Reads the bucket
    /// with this machine's AWS_* credentials.
    Restore {
        target: String,
        /// Where the restored database is written (never overwritten if it exists).
        #[arg(long, required_unless_present_any = ["dry_run", "into", "live"], conflicts_with_all = ["into", "live"])]
        output: Option<PathBuf>,
        /// Clone into PROJECT2/DB2 instead: the restored database becomes a new lineage in
        /// that database's replica (which must have no live writer); its agent restores it.
        #[arg(long, conflicts_with = "live")]
        into: Option<String>,
        /// Roll the running app back: its agent (run mode) stops the app, restores the point,
        /// and starts the app again in a new generation whose parent is that point. The
        /// generation rolled back from stays restorable.
        #[arg(long)]
        live: bool,
        /// How long --live waits for the agent to finish.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
        wait: std::time::Duration,
        /// The database's client-side encryption key (64 hex digits), when its agent encrypts.
        #[arg(long, env = "WALFLEET_ENCRYPTION_KEY", hide_env_values = true)]
        encryption_key: Option<String>,
        /// The clone's encryption key for --into (default: the source's key, so an encrypted
        /// database is never cloned in the clear).
        #[arg(long, env = "WALFLEET_INTO_ENCRYPTION_KEY", hide_env_values = true, requires = "into")]
        into_encryption_key: Option<String>,
        /// The replica root of --into, when no agent of it has reported one.
        #[arg(long, requires = "into")]
        replica: Option<String>,
        /// Restore exactly this transaction.
        #[arg(long, conflicts_with = "timestamp")]
        txid: Option<u64>,
        /// Restore the newest transaction at or before this time (RFC 3339).
        #[arg(long)]
        timestamp: Option<String>,
        /// Print the plan (generation, files, transaction) and restore nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a new admin token directly in the controller's store, for when every admin
    /// token was revoked: needs access to the store itself (run it where the controller runs).
    /// The token is written to --admin-token-file, never printed.
    RecoverAdmin {
        #[arg(long, env = "WALFLEET_DATABASE_URL", default_value = "sqlite://walfleet.db")]
        database_url: String,
        #[command(flatten)]
        file: AdminTokenFile,
    },
    /// Set what happens when a second instance of PROJECT/DB appears: handoff, wait or alert.
    Policy {
        target: String,
        policy: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProjectsVerb {
    /// Create a project; prints its agent token once.
    Create {
        name: String,
        /// Where the project's replicas may live (repeatable): `s3://BUCKET/PREFIX`, with
        /// `?endpoint=URL` for a store other than the controller's AWS_ENDPOINT_URL, or
        /// `file:///DIR`. The controller reads (scans, drills, restores) and agents may name
        /// only replica URLs under one of them; without any, every agent URL is refused.
        #[arg(long = "replica-root", value_name = "URL")]
        replica_roots: Vec<String>,
    },
    /// Replace the replica roots of a project (give every root it keeps).
    SetRoots {
        name: String,
        #[arg(long = "replica-root", value_name = "URL", required_unless_present = "none")]
        replica_roots: Vec<String>,
        /// Remove every root: no agent replica URL of the project is accepted any more.
        #[arg(long, conflicts_with = "replica_roots")]
        none: bool,
    },
    List,
}

#[derive(Subcommand, Debug)]
pub enum TokensVerb {
    /// Create an agent token for --project, or an admin token with --admin; printed once.
    Create {
        #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
        project: Option<String>,
        #[arg(long)]
        admin: bool,
    },
    /// Revoke a token by its id.
    Revoke { token_id: String },
    List {
        #[arg(long)]
        project: Option<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Controller gRPC URL.
    #[arg(long, global = true, env = "WALFLEET_CONTROLLER", default_value = "http://127.0.0.1:7070")]
    pub controller: String,
    /// Admin token.
    #[arg(long = "admin-token", global = true, env = "WALFLEET_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the controller's certificate (https).
    #[arg(long = "ca", global = true, env = "WALFLEET_CONTROLLER_CA")]
    pub ca: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[arg(long, env = "WALFLEET_GRPC_ADDR", default_value = "127.0.0.1:7070")]
    pub grpc_addr: SocketAddr,
    #[arg(long, env = "WALFLEET_CONTROLLER_HTTP_ADDR", default_value = "127.0.0.1:7080")]
    pub http_addr: SocketAddr,
    /// State store: sqlite://PATH (created if missing) or postgres://… (shared by several
    /// controllers).
    #[arg(long, env = "WALFLEET_DATABASE_URL", default_value = "sqlite://walfleet.db")]
    pub database_url: String,
    /// Lease time to live; agents renew at a third of it.
    #[arg(long, env = "WALFLEET_LEASE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// PEM certificate chain for TLS on gRPC and HTTP (with --tls-key).
    #[arg(long, env = "WALFLEET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "WALFLEET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The first admin token, adopted only by an empty store (no token and no project yet);
    /// without it the first start generates one and writes it to --admin-token-file.
    #[arg(long = "admin-token", env = "WALFLEET_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[command(flatten)]
    pub admin_token_file: AdminTokenFile,
    /// Serve gRPC and HTTP without TLS on a non-loopback address (refused otherwise): only
    /// behind a proxy that terminates TLS. Logged as a warning at every start.
    #[arg(long, env = "WALFLEET_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// How often the inventory reconciles every replica's listing (the controller reads the
    /// buckets with its own AWS_* credentials).
    #[arg(long, env = "WALFLEET_SCAN_INTERVAL", default_value = "15m", value_parser = parse_duration)]
    pub scan_interval: Duration,
    /// A holder whose durable transaction has not moved for this long while its local one did
    /// is stalled (an event).
    #[arg(long, env = "WALFLEET_STALL_AFTER", default_value = "60s", value_parser = parse_duration)]
    pub stall_after: Duration,
    /// Keys of databases whose agents encrypt, so drills can decrypt them: a file of
    /// `PROJECT/DB = KEY` lines (64 hex digits; `#` starts a comment). Read at start; never
    /// stored by the controller.
    #[arg(long, env = "WALFLEET_DRILL_KEYS_FILE")]
    pub drill_keys: Option<std::path::PathBuf>,
    /// Run a restore drill of every database this often (0: only on demand), unless the
    /// database has its own schedule (`walfleet drill PROJECT/DB --every D`).
    #[arg(long, env = "WALFLEET_DRILL_INTERVAL", default_value = "0s", value_parser = parse_duration)]
    pub drill_interval: Duration,
    /// How often drill schedules are checked.
    #[arg(long, env = "WALFLEET_DRILL_CHECK", default_value = "1m", value_parser = parse_duration)]
    pub drill_check: Duration,
    /// Storage price for the cost estimate, per GB-month.
    #[arg(long, env = "WALFLEET_PRICE_STORAGE_GB_MONTH", default_value_t = 0.023)]
    pub price_storage_gb_month: f64,
    /// Request price for the cost estimate, per 1,000 PUTs.
    #[arg(long, env = "WALFLEET_PRICE_PUT_PER_1000", default_value_t = 0.005)]
    pub price_put_per_1000: f64,
}

#[derive(Args, Debug, Clone)]
pub struct AdminTokenFile {
    /// Where a generated admin token is written (created with mode 0600, never overwritten).
    /// Default: beside a SQLite store (`<store>.admin-token`), else `walfleet-admin-token` in
    /// the working directory.
    #[arg(long = "admin-token-file", env = "WALFLEET_ADMIN_TOKEN_FILE")]
    pub path: Option<PathBuf>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}
