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
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller (gRPC control plane, HTTP metrics).
    Serve(ServeArgs),
    /// Create or list projects.
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
    /// Databases with their lease and policy.
    Databases {
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
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
    /// PEM certificate chain for TLS on gRPC (with --tls-key).
    #[arg(long, env = "WALFLEET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "WALFLEET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The first admin token, adopted when the store has none (otherwise one is generated and
    /// printed once).
    #[arg(long = "admin-token", env = "WALFLEET_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}
