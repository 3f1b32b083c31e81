//! Garage 2.5 on free 127.0.0.1 ports: the degraded path. It accepts `If-None-Match` and
//! `If-Match` and ignores them, so it shows what walfleet does where conditional writes do
//! nothing. One single-node server per test (starts in well under a second).

use crate::process::{apply_env, Process};
use crate::s3::{ACCESS_KEY, BUCKET, REGION, SECRET_KEY};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub struct Garage {
    _data: TempDir,
    port: u16,
    proc: Process,
}

impl Garage {
    /// Starts a fresh single-node server with bucket [`BUCKET`] and the harness's key.
    pub fn new() -> Result<Garage> {
        let data = tempfile::Builder::new().prefix("garage-").tempdir().context("create garage data dir")?;
        let (port, rpc) = (crate::free_port(), crate::free_port());
        let d = data.path().display();
        let config = data.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{}\"\n\
                 [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{port}\"\n",
                "0".repeat(64)
            ),
        )?;
        let mut cmd = Command::new(crate::bins::garage()?);
        cmd.arg("-c").arg(&config).args(["server", "--single-node", "--default-bucket"]);
        apply_env(
            &mut cmd,
            &[
                ("GARAGE_DEFAULT_ACCESS_KEY".into(), ACCESS_KEY.into()),
                ("GARAGE_DEFAULT_SECRET_KEY".into(), SECRET_KEY.into()),
                ("GARAGE_DEFAULT_BUCKET".into(), BUCKET.into()),
                ("RUST_LOG".into(), "garage=warn".into()),
            ],
        );
        let mut proc = Process::spawn("garage", cmd)?;
        // The S3 port answers before the key exists: wait for a signed request to succeed.
        let endpoint = format!("http://127.0.0.1:{port}");
        let mkbucket = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/s3_mkbucket.py");
        let start = Instant::now();
        loop {
            let ok = Command::new(crate::bins::python())
                .arg(&mkbucket)
                .args([&endpoint, BUCKET, ACCESS_KEY, SECRET_KEY, REGION])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            if !proc.is_running() || start.elapsed() > Duration::from_secs(30) {
                bail!("garage did not become ready at {endpoint}:\n{}", proc.stderr());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Garage { _data: data, port, proc })
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{}", prefix.trim_matches('/'))
    }

    /// AWS variables pointing at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_for(&format!("http://127.0.0.1:{}", self.port))
    }

    /// The S3 API's address (to put a [`crate::Proxy`] in front).
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// AWS variables pointing at `endpoint` (e.g. a proxy in front) with this server's keys.
    pub fn env_for(&self, endpoint: &str) -> Vec<(String, String)> {
        crate::s3::aws_env(endpoint, ACCESS_KEY, SECRET_KEY)
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        // SIGINT stops it in about 1.5 s; SIGTERM can take 10 s.
        if self.proc.signal("INT").is_ok() && self.proc.wait(Duration::from_secs(5)).is_ok() {
            return;
        }
        let _ = self.proc.sigkill();
    }
}
