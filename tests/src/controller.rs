//! The `walfleet` controller as a child process (`walfleet serve`), its admin CLI, and a gRPC
//! agent client for tests that play many agents at once.

use crate::process::{apply_env, Process};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;
use tempfile::TempDir;

/// The PostgreSQL every test shares (trust auth, database `test`); each test isolates itself
/// in a schema of its own.
pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A store URL for PostgreSQL in a fresh schema (the controller creates it).
pub fn postgres_url() -> String {
    format!("{POSTGRES}?schema=wf_test_{:016x}", rand::random::<u64>())
}

/// The replica root [`Controller::create_project`] gives a project: the whole bucket every
/// S3 server of the harness serves (s3s-fs and Garage), its endpoint from `AWS_ENDPOINT_URL`.
pub const DEFAULT_ROOT: &str = "s3://test";

/// `walfleet` (override: `WALFLEET_BIN`).
pub fn bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WALFLEET_BIN") {
        return Ok(p.into());
    }
    crate::bins::workspace_bin("walfleet")
}

pub struct Controller {
    proc: Option<Process>,
    pub grpc_port: u16,
    pub http_port: u16,
    pub store_url: String,
    pub admin_token: String,
    pub ttl: Duration,
    /// The CA that signed the controller's certificate, when it serves TLS (see [`tls_files`]).
    pub ca: Option<PathBuf>,
    extra: Vec<String>,
    /// More environment for the controller and the CLI (e.g. the object store's credentials,
    /// which the inventory scan, drills and `walfleet restore` read with).
    pub env: Vec<(String, String)>,
    _dir: TempDir,
}

impl Controller {
    /// A controller on a SQLite store of its own.
    pub fn start_sqlite(ttl: Duration) -> Result<Controller> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("walfleet.db").display());
        Self::start_with(dir, url, ttl, &[])
    }

    /// A controller on `store_url` (several may share one PostgreSQL URL).
    pub fn start(store_url: &str, ttl: Duration, extra: &[&str]) -> Result<Controller> {
        Self::start_with(tempfile::tempdir()?, store_url.to_string(), ttl, extra)
    }

    fn start_with(dir: TempDir, store_url: String, ttl: Duration, extra: &[&str]) -> Result<Controller> {
        Self::start_with_env(dir, store_url, ttl, extra, Vec::new())
    }

    fn start_with_env(
        dir: TempDir,
        store_url: String,
        ttl: Duration,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> Result<Controller> {
        let mut c = Controller {
            proc: None,
            grpc_port: crate::free_port(),
            http_port: crate::free_port(),
            store_url,
            admin_token: "wfadmin_test_0123456789abcdef0123456789abcdef".into(),
            ttl,
            ca: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env,
            _dir: dir,
        };
        c.spawn()?;
        Ok(c)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(bin()?);
        cmd.args(["serve", "--grpc-addr", &format!("127.0.0.1:{}", self.grpc_port)])
            .args(["--http-addr", &format!("127.0.0.1:{}", self.http_port)])
            .args(["--database-url", &self.store_url])
            .args(["--lease-ttl", &format!("{}ms", self.ttl.as_millis())])
            .args(&self.extra);
        let mut env = vec![
            ("WALFLEET_ADMIN_TOKEN".into(), self.admin_token.clone()),
            ("RUST_LOG".into(), "info,sqlx=warn".into()),
            ("RUST_BACKTRACE".into(), "1".into()),
        ];
        env.extend(self.env.iter().cloned());
        apply_env(&mut cmd, &env);
        let proc = Process::spawn("walfleet serve", cmd)?;
        self.proc = Some(proc);
        let url = format!("http://127.0.0.1:{}/healthz", self.http_port);
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build()?;
        // With TLS the HTTP endpoint is https too (same certificate): a listening port is enough.
        let tls = self.tls();
        let http_port = self.http_port;
        let proc = self.proc.as_mut().context("controller process")?;
        crate::try_wait_until(Duration::from_secs(60), "controller /healthz", || {
            if !proc.is_running() {
                return true;
            }
            if tls {
                return std::net::TcpStream::connect(("127.0.0.1", http_port)).is_ok();
            }
            client.get(&url).send().is_ok_and(|r| r.status().is_success())
        })?;
        if !proc.is_running() {
            bail!("controller exited during start:\n{}", proc.stderr());
        }
        Ok(())
    }

    fn tls(&self) -> bool {
        self.extra.iter().any(|a| a == "--tls-cert")
    }

    /// gRPC URL for agents and the CLI (https when started with `--tls-cert`).
    pub fn url(&self) -> String {
        let scheme = if self.tls() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.grpc_port)
    }

    /// Base URL of the HTTP endpoint (https when started with `--tls-cert`).
    pub fn http_url(&self) -> String {
        let scheme = if self.tls() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.http_port)
    }

    /// `store_env` (the object store's variables) plus what an agent of `project`/`db` needs to
    /// work under this controller.
    pub fn agent_env(
        &self,
        mut store_env: Vec<(String, String)>,
        token: &str,
        project: &str,
        db: &str,
    ) -> Vec<(String, String)> {
        store_env.extend([
            ("WALFLEET_CONTROLLER".into(), self.url()),
            ("WALFLEET_TOKEN".into(), token.to_string()),
            ("WALFLEET_PROJECT".into(), project.into()),
            ("WALFLEET_DB_NAME".into(), db.into()),
            ("WALFLEET_LEASE_WAIT".into(), "60s".into()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
        ]);
        store_env
    }

    /// kill -9 (a crash): nothing is flushed.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(p) = self.proc.as_mut() {
            p.sigkill()?;
        }
        Ok(())
    }

    /// A controller on a SQLite store of its own, started with `env` and extra flags.
    pub fn start_sqlite_with(ttl: Duration, env: Vec<(String, String)>, extra: &[&str]) -> Result<Controller> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("walfleet.db").display());
        Self::start_with_env(dir, url, ttl, extra, env)
    }

    /// Starts it again on the same ports and store.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.proc = None;
        self.spawn()
    }

    pub fn stderr(&self) -> String {
        self.proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }

    /// `walfleet ARGS…` against this controller with the admin token.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        self.cli_as(&self.admin_token, args)
    }

    /// `walfleet ARGS…` with another token.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(bin()?);
        cmd.args(args);
        let mut env =
            vec![("WALFLEET_CONTROLLER".into(), self.url()), ("WALFLEET_ADMIN_TOKEN".into(), token.to_string())];
        if let Some(ca) = &self.ca {
            env.push(("WALFLEET_CONTROLLER_CA".into(), ca.display().to_string()));
        }
        env.extend(self.env.iter().cloned());
        apply_env(&mut cmd, &env);
        crate::process::run("walfleet", cmd, Duration::from_secs(60))
    }

    /// `walfleet ARGS… --json`, parsed; fails with stderr when the command fails.
    pub fn cli_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli(&a)?;
        if !out.status.success() {
            bail!("walfleet {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parse output of walfleet {args:?}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Creates a project whose replicas may live anywhere in the test bucket
    /// ([`DEFAULT_ROOT`]); returns its agent token.
    pub fn create_project(&self, name: &str) -> Result<String> {
        self.create_project_with_roots(name, &[DEFAULT_ROOT])
    }

    /// Creates a project with these replica roots (none: every agent replica URL is refused);
    /// returns its agent token.
    pub fn create_project_with_roots(&self, name: &str, roots: &[&str]) -> Result<String> {
        let mut args = vec!["projects", "create", name];
        for r in roots {
            args.extend(["--replica-root", r]);
        }
        let v = self.cli_json(&args)?;
        v["agent_token"].as_str().map(str::to_string).context("agent_token in output")
    }

    /// Events of a project (all kinds), oldest first.
    pub fn events(&self, project: &str) -> Result<Vec<serde_json::Value>> {
        let v = self.cli_json(&["events", "--project", project, "--limit", "1000"])?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }
}

/// PEM files of a private CA and a server certificate it signed for 127.0.0.1 and localhost:
/// (ca.pem, cert.pem, key.pem) in `dir`.
pub fn tls_files(dir: &std::path::Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL clients (curl) take a leaf whose issuer equals its subject for
    // a self-signed certificate.
    ca_params.distinguished_name.push(DnType::CommonName, "walfleet test CA");
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])?;
    leaf_params.distinguished_name.push(DnType::CommonName, "walfleet test controller");
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca.pem())?;
    std::fs::write(&paths.1, leaf.pem())?;
    std::fs::write(&paths.2, leaf_key.serialize_pem())?;
    Ok(paths)
}

/// A gRPC client of the agent service that sends `token` on every call (for tests that play
/// agents directly).
pub type AgentClient = proto::v1::agent_service_client::AgentServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A lazily connecting client: calls fail (and may be retried) while the controller is down.
pub fn agent_client(url: &str, token: &str) -> Result<AgentClient> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let value = format!("Bearer {token}").parse().context("token as metadata")?;
    Ok(proto::v1::agent_service_client::AgentServiceClient::with_interceptor(ch, Bearer(value)))
}

/// Registers an instance (mode "replicate" or "run").
pub async fn register(c: &mut AgentClient, project: &str, id: &str, mode: &str) -> Result<(), tonic::Status> {
    let req = proto::v1::RegisterRequest {
        project: project.into(),
        instance: Some(proto::v1::Instance {
            instance_id: id.into(),
            host: format!("host-{id}"),
            platform: format!("test:{id}"),
            mode: mode.into(),
            version: "test".into(),
        }),
    };
    c.register(req).await.map(|_| ())
}
