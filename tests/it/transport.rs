//! How the controller is reached: no plaintext listener where other machines can connect
//! unless the operator says so, HTTPS on the HTTP endpoint with the gRPC certificate, clients
//! that warn before sending a token in the clear, and an admin bootstrap that happens once, into
//! an empty store, without printing the secret.

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tests::controller::{self, Controller};
use tests::process::{apply_env, Process};

const T: Duration = Duration::from_secs(60);
const PLAINTEXT_CLIENT_WARNING: &str = "non-loopback host over plaintext http";

fn serve(dir: &Path, grpc: &str, http: &str, extra: &[&str], env: &[(String, String)]) -> Result<Process> {
    serve_store(dir, &format!("sqlite://{}", dir.join("walfleet.db").display()), grpc, http, extra, env)
}

fn serve_store(
    dir: &Path,
    store: &str,
    grpc: &str,
    http: &str,
    extra: &[&str],
    env: &[(String, String)],
) -> Result<Process> {
    let mut cmd = Command::new(controller::bin()?);
    cmd.args(["serve", "--grpc-addr", grpc, "--http-addr", http])
        .args(["--database-url", store])
        .args(extra)
        .current_dir(dir);
    let mut env = env.to_vec();
    env.push(("RUST_LOG".into(), "info,sqlx=warn".into()));
    apply_env(&mut cmd, &env);
    cmd.env_remove("WALFLEET_ADMIN_TOKEN");
    Process::spawn("walfleet serve", cmd)
}

fn wait_healthy(p: &mut Process, port: u16) -> Result<()> {
    let url = format!("http://127.0.0.1:{port}/healthz");
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build()?;
    tests::try_wait_until(T, "controller /healthz", || {
        !p.is_running() || client.get(&url).send().is_ok_and(|r| r.status().is_success())
    })?;
    anyhow::ensure!(p.is_running(), "controller exited during start:\n{}", p.stderr());
    Ok(())
}

fn cli(url: &str, token: &str, args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = Command::new(controller::bin()?);
    cmd.args(args);
    apply_env(&mut cmd, &[("WALFLEET_CONTROLLER".into(), url.into()), ("WALFLEET_ADMIN_TOKEN".into(), token.into())]);
    tests::process::run("walfleet", cmd, T)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `--grpc-addr` or `--http-addr` on an address other machines reach, without a certificate:
/// the controller refuses to start and says what to do; nothing listens.
#[test]
fn a_plaintext_bind_on_a_non_loopback_address_is_refused() -> Result<()> {
    for (grpc, http) in [("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "0.0.0.0"), ("[::]", "127.0.0.1")] {
        let dir = tempfile::tempdir()?;
        let (g, h) = (tests::free_port(), tests::free_port());
        let (grpc, http) = (format!("{grpc}:{g}"), format!("{http}:{h}"));
        let mut p = serve(dir.path(), &grpc, &http, &[], &[("WALFLEET_ADMIN_TOKEN".into(), "x".repeat(40))])?;
        let st = p.wait(T).with_context(|| format!("serve on {grpc} / {http} did not refuse to start"))?;
        assert!(!st.success(), "serve on {grpc} / {http} exited {st}");
        let err = p.stderr();
        let exposed = if grpc.starts_with("127.") { format!("--http-addr {http}") } else { "--grpc-addr".into() };
        assert!(err.contains(&exposed), "the refusal does not name {exposed}:\n{err}");
        assert!(err.contains("--insecure-plaintext") && err.contains("--tls-cert"), "no way out named:\n{err}");
        assert!(std::net::TcpStream::connect(("127.0.0.1", h)).is_err(), "something listens on {http}");
    }
    Ok(())
}

/// `--insecure-plaintext` (TLS terminated by a proxy in front): it serves, and says at start
/// that it is plaintext on an exposed address. The CLI and the agent warn before they send a
/// token over plaintext http to a host that is not loopback (0.0.0.0 here, which reaches this
/// machine), and say nothing for 127.0.0.1.
#[test]
fn insecure_plaintext_serves_with_a_warning_and_clients_warn() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (g, h) = (tests::free_port(), tests::free_port());
    let admin = "wfadmin_transport_0123456789abcdef01234567";
    let mut p = serve(
        dir.path(),
        &format!("0.0.0.0:{g}"),
        &format!("0.0.0.0:{h}"),
        &["--insecure-plaintext", "--admin-token", admin],
        &[],
    )?;
    wait_healthy(&mut p, h)?;
    let err = p.stderr();
    assert!(err.contains("WARN") && err.contains("--insecure-plaintext"), "no start-up warning:\n{err}");

    let remote = cli(&format!("http://0.0.0.0:{g}"), admin, &["projects", "list"])?;
    assert!(remote.status.success(), "CLI over 0.0.0.0 failed: {}", text(&remote.stderr));
    assert!(text(&remote.stderr).contains(PLAINTEXT_CLIENT_WARNING), "the CLI did not warn:\n{}", text(&remote.stderr));
    let local = cli(&format!("http://127.0.0.1:{g}"), admin, &["projects", "list"])?;
    assert!(local.status.success(), "CLI over loopback failed: {}", text(&local.stderr));
    assert!(!text(&local.stderr).contains(PLAINTEXT_CLIENT_WARNING), "a loopback URL warned:\n{}", text(&local.stderr));

    // The agent warns at start, before its first call (refused here: the token is unknown).
    let db = dir.path().join("app.db");
    tests::sqlite::open_wal(&db)?.execute_batch("CREATE TABLE t(x)")?;
    let replica = format!("file://{}", dir.path().join("replica").display());
    let env = [
        ("WALFLEET_CONTROLLER".to_string(), format!("http://0.0.0.0:{g}")),
        ("WALFLEET_TOKEN".into(), "wfagent_unknown_0123456789abcdef0123456789".into()),
        ("WALFLEET_PROJECT".into(), "shop".into()),
        ("WALFLEET_DB_NAME".into(), "app".into()),
        ("WALFLEET_LEASE_WAIT".into(), "2s".into()),
    ];
    let out = tests::agent::run(&["replicate", db.to_str().context("utf-8 path")?, &replica], &env)?;
    assert!(!out.status.success(), "an unknown agent token was accepted");
    assert!(text(&out.stderr).contains(PLAINTEXT_CLIENT_WARNING), "the agent did not warn:\n{}", text(&out.stderr));
    Ok(())
}

/// With `--tls-cert`/`--tls-key` the HTTP endpoint is HTTPS with the same certificate: a client
/// that trusts the CA gets `/healthz`; plaintext HTTP on that port gets nothing.
#[test]
fn the_http_endpoint_serves_tls_with_the_grpc_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca, cert, key) = controller::tls_files(dir.path())?;
    let store = format!("sqlite://{}", dir.path().join("walfleet.db").display());
    let (cert, key) = (cert.to_str().context("utf-8")?, key.to_str().context("utf-8")?);
    let c = Controller::start(&store, Duration::from_secs(3), &["--tls-cert", cert, "--tls-key", key])?;
    let https = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", ca.to_str().context("utf-8")?])
        .arg(format!("{}/healthz", c.http_url()))
        .output()?;
    assert!(https.status.success(), "https /healthz failed: {}", text(&https.stderr));
    assert_eq!(text(&https.stdout).trim(), "ok");
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}/healthz", c.http_port))
        .output()?;
    assert!(!plain.status.success() || !text(&plain.stdout).contains("ok"), "plaintext HTTP was served next to TLS");
    // gRPC keeps working on the same certificate.
    let mut c = c;
    c.ca = Some(ca);
    let out = c.cli(&["projects", "list"])?;
    assert!(out.status.success(), "CLI over TLS failed: {}", text(&out.stderr));
    Ok(())
}

/// A first start without WALFLEET_ADMIN_TOKEN generates the admin token and writes it to a
/// file of mode 0600 beside the store; stdout (the platform's log) names the file and never
/// holds the secret. A restart creates nothing more.
#[test]
fn a_generated_admin_token_goes_to_a_private_file_not_to_the_log() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (g, h) = (tests::free_port(), tests::free_port());
    let (grpc, http) = (format!("127.0.0.1:{g}"), format!("127.0.0.1:{h}"));
    let mut p = serve(dir.path(), &grpc, &http, &[], &[])?;
    wait_healthy(&mut p, h)?;
    let file = dir.path().join("walfleet.db.admin-token");
    tests::try_wait_until(T, "the admin token file", || file.exists())?;
    let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin token file mode {mode:o}");
    let secret = std::fs::read_to_string(&file)?.trim().to_string();
    assert!(secret.len() >= 32, "secret {secret:?}");
    tests::try_wait_until(T, "the path on stdout", || p.stdout().contains("walfleet.db.admin-token"))?;
    for (what, log) in [("stdout", p.stdout()), ("stderr", p.stderr())] {
        assert!(!log.contains(&secret), "the admin secret is in the controller's {what}:\n{log}");
    }
    let url = format!("http://{grpc}");
    let out = cli(&url, &secret, &["projects", "list"])?;
    assert!(out.status.success(), "the generated token does not work: {}", text(&out.stderr));

    p.stop(T)?;
    let mut p = serve(dir.path(), &grpc, &http, &[], &[])?;
    wait_healthy(&mut p, h)?;
    assert!(!p.stdout().contains("admin token"), "a restart made another admin token:\n{}", p.stdout());
    assert_eq!(std::fs::read_to_string(&file)?.trim(), secret, "the token file changed");
    Ok(())
}

/// Every admin token revoked: a restart with a (new) WALFLEET_ADMIN_TOKEN does not adopt it,
/// and prints no new secret; the controller says how to recover, and `walfleet recover-admin`
/// on the store writes a working token to a private file.
#[test]
fn revoking_every_admin_token_survives_a_restart() -> Result<()> {
    let mut c = Controller::start_sqlite(Duration::from_secs(3))?;
    let tokens = c.cli_json(&["tokens", "list"])?;
    let ids: Vec<String> = tokens
        .as_array()
        .context("token list")?
        .iter()
        .filter(|t| t["kind"] == "admin")
        .filter_map(|t| t["token_id"].as_str().map(String::from))
        .collect();
    assert_eq!(ids.len(), 1, "{tokens}");
    let out = c.cli(&["tokens", "revoke", &ids[0]])?;
    assert!(out.status.success(), "revoke failed: {}", text(&out.stderr));
    assert!(!c.cli(&["projects", "list"])?.status.success(), "a revoked admin token still works");

    c.admin_token = "wfadmin_readopted_0123456789abcdef0123456789ab".into();
    c.restart()?;
    let out = c.cli(&["projects", "list"])?;
    assert!(!out.status.success(), "a restart adopted WALFLEET_ADMIN_TOKEN into a store that had admins");
    // Without WALFLEET_ADMIN_TOKEN: no new secret is generated or printed either.
    c.kill()?;
    let dir = tempfile::tempdir()?;
    let (g, h) = (tests::free_port(), tests::free_port());
    let mut p = serve_store(dir.path(), &c.store_url, &format!("127.0.0.1:{g}"), &format!("127.0.0.1:{h}"), &[], &[])?;
    wait_healthy(&mut p, h)?;
    assert!(!p.stdout().contains("admin token"), "a restart made a new admin token:\n{}", p.stdout());
    let err = p.stderr();
    assert!(err.contains("recover-admin"), "the controller does not say how to recover:\n{err}");
    p.stop(T)?;
    c.restart()?;

    let file = dir.path().join("recovered");
    let mut cmd = Command::new(controller::bin()?);
    cmd.args(["recover-admin", "--database-url", &c.store_url, "--admin-token-file"]).arg(&file);
    apply_env(&mut cmd, &[]);
    let out = tests::process::run("walfleet recover-admin", cmd, T)?;
    assert!(out.status.success(), "recover-admin failed: {}", text(&out.stderr));
    assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o777, 0o600);
    let secret = std::fs::read_to_string(&file)?.trim().to_string();
    assert!(!text(&out.stdout).contains(&secret), "recover-admin printed the secret");
    let out = c.cli_as(&secret, &["projects", "list"])?;
    assert!(out.status.success(), "the recovered token does not work: {}", text(&out.stderr));
    // It never replaces an existing file.
    let mut cmd = Command::new(controller::bin()?);
    cmd.args(["recover-admin", "--database-url", &c.store_url, "--admin-token-file"]).arg(&file);
    apply_env(&mut cmd, &[]);
    let out = tests::process::run("walfleet recover-admin", cmd, T)?;
    assert!(!out.status.success(), "recover-admin replaced an existing token file");
    assert_eq!(std::fs::read_to_string(&file)?.trim(), secret);
    Ok(())
}
