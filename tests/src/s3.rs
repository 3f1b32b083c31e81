//! A real S3-compatible server (s3s-fs 0.14.1) on a free 127.0.0.1 port, SigV4 enforced.

use crate::process::{apply_env, Process};
use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
pub const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const REGION: &str = "us-east-1";
pub const BUCKET: &str = "test";

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// s3s-fs serving bucket [`BUCKET`] from its own temp dir. Killed on drop.
///
/// s3s-fs maps keys to file paths: `a` and `a/b` cannot coexist, and keys must avoid `//`,
/// `..`, `+`, `%` and a trailing `/`. Conditional PUTs are honoured one at a time but are not
/// atomic under races (see research/s3-servers.md).
pub struct S3Server {
    data: TempDir,
    port: u16,
    proc: Option<Process>,
    starts: u32,
}

impl S3Server {
    /// Starts a fresh server with an empty bucket [`BUCKET`].
    pub fn new() -> Result<S3Server> {
        let data = tempfile::Builder::new().prefix("s3s-fs-").tempdir().context("create s3s-fs data dir")?;
        std::fs::create_dir(data.path().join(BUCKET)).context("create bucket dir")?;
        let mut data = data;
        let mut last_err = None;
        // The port is picked by binding :0 and released before s3s-fs binds it; if another
        // process takes it in between, try a new one.
        for _ in 0..5 {
            let mut s = S3Server { data, port: crate::free_port(), proc: None, starts: 0 };
            match s.start() {
                Ok(()) => return Ok(s),
                Err(e) => {
                    last_err = Some(e);
                    data = s.take_data();
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("s3s-fs did not start")))
    }

    fn take_data(mut self) -> TempDir {
        if let Some(mut p) = self.proc.take() {
            let _ = p.sigkill();
        }
        // Swap the data dir out so Drop of `self` does not remove it.
        let placeholder = tempfile::tempdir().expect("create placeholder temp dir");
        std::mem::replace(&mut self.data, placeholder)
    }

    /// Starts (again) on the same port and data dir. No-op if running.
    pub fn start(&mut self) -> Result<()> {
        if let Some(p) = self.proc.as_mut() {
            if p.is_running() {
                return Ok(());
            }
        }
        self.proc = None;
        let bin = crate::bins::s3s_fs()?;
        let mut cmd = Command::new(bin);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.data.path())
            .env("RUST_LOG", "s3s=info,s3s_fs=info");
        apply_env(&mut cmd, &[]);
        self.starts += 1;
        let mut p = Process::spawn(&format!("s3s-fs#{}", self.starts), cmd)?;
        wait_ready(&mut p, self.addr())?;
        self.proc = Some(p);
        Ok(())
    }

    /// Stops the server (SIGKILL: s3s-fs writes each object fully before answering, so this
    /// loses nothing acknowledged). Data stays for [`S3Server::start`].
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.sigkill()?;
        }
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// `s3://test/<prefix>`: a replica URL for walfleet (endpoint from the environment).
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{}", prefix.trim_matches('/'))
    }

    /// The directory holding the objects: `data_dir()/test/<key>` is object `<key>`.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// The file holding object `key` of the test bucket.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.data.path().join(BUCKET).join(key)
    }

    /// Keys under `prefix` in the test bucket, sorted (read from disk, no S3 request).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let root = self.data.path().join(BUCKET);
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.retain(|k| k.starts_with(prefix));
        out.sort();
        out
    }

    /// Credentials, region and endpoint for a client of this server.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_for(&self.endpoint())
    }

    /// Like [`S3Server::env`] but with another endpoint (e.g. a [`crate::Proxy`] in front).
    pub fn env_for(&self, endpoint: &str) -> Vec<(String, String)> {
        aws_env(endpoint, ACCESS_KEY, SECRET_KEY)
    }

    /// The server's log so far (all starts).
    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }
}

/// The standard AWS variables for an S3-compatible server at `endpoint` (region [`REGION`]).
pub fn aws_env(endpoint: &str, access_key: &str, secret_key: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", access_key),
        ("AWS_SECRET_ACCESS_KEY", secret_key),
        ("AWS_REGION", REGION),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            let key = rel.to_string_lossy().into_owned();
            // s3s-fs keeps its own bookkeeping (metadata, multipart parts) in dot files.
            if !key.split('/').any(|c| c.starts_with(".")) {
                out.push(key);
            }
        }
    }
}

/// Ready when an HTTP request gets an HTTP answer (an unsigned request gets 403: the server
/// is up and checking signatures).
fn wait_ready(p: &mut Process, addr: SocketAddr) -> Result<()> {
    let start = Instant::now();
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let url = format!("http://{addr}/{BUCKET}");
    loop {
        if let Some(st) = p.try_status()? {
            bail!("s3s-fs exited during startup ({st}):\n{}", p.stderr());
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            if let Ok(resp) = client.head(&url).send() {
                let code = resp.status().as_u16();
                if code == 403 || resp.status().is_success() {
                    return Ok(());
                }
                bail!("s3s-fs answered an unsigned HEAD with {code}, expected 403");
            }
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("s3s-fs on {addr} not ready after {READY_TIMEOUT:?}:\n{}", p.stderr());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
