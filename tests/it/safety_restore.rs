//! Data-safety edges of restores, retention and `/durable`: a restore never replaces what
//! appears at its output nor deletes another restore's temporary file, takes any path; the
//! generations a rollback or a fork leaves stay restorable under retention, and a fork does not
//! ask to delete; `/durable` bounds its timeout.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::controller::Controller;
use tests::process::{apply_env, expect_success, Process};
use tests::proxy::Proxy;
use tests::replica::wait_shipped;
use tests::sqlite::{integrity_check, open_ro};
use tests::{restore, Agent, App, S3Server};

const T: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(2);

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

fn ids(db: &Path) -> Result<Vec<i64>> {
    let conn = open_ro(db)?;
    let mut stmt = conn.prepare("SELECT id FROM items ORDER BY id")?;
    let v = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(v)
}

/// A replica of a few dozen rows under `prefix`, shipped by an agent that then stopped; the
/// rows' ids.
fn replica(s3: &S3Server, dir: &Path, prefix: &str) -> Result<(String, Vec<i64>)> {
    let db = dir.join("source.db");
    App::writer(&db, &["--count", "30", "--rate", "0"])?.finish(T)?;
    let url = s3.url(prefix);
    let mut a = Agent::start(&["replicate", utf8(&db)?, &url], &s3.env())?;
    wait_shipped(&mut a, SETTLE, T)?;
    a.sigterm()?;
    assert_eq!(a.wait(T)?.code(), Some(0), "agent:\n{}", a.stderr());
    Ok((url, ids(&db)?))
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir)?.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    Ok(v)
}

/// Something appears at the output while the restore waits for an object (a proxy holds the
/// response): here a dangling symlink, which a check by `exists()` does not see. The restore
/// fails naming the output, the symlink is still there (nothing created at its target either),
/// and its temporary file is gone.
#[test]
fn restore_does_not_replace_an_output_that_appears_during_it() -> Result<()> {
    let s3 = S3Server::new()?;
    let src = tempfile::tempdir()?;
    let (url, _) = replica(&s3, src.path(), "safety/appear")?;
    let proxy = Proxy::new(s3.addr())?;
    proxy.set_response_hold(&["GET ", ".ltx"], Duration::from_secs(3));
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out.db");
    let target = dir.path().join("elsewhere").join("theirs.db");
    let mut cmd = Command::new(tests::bins::agent()?);
    cmd.args(["restore", &url, "-o", utf8(&out)?]);
    apply_env(&mut cmd, &s3.env_for(&proxy.endpoint()));
    cmd.env("RUST_LOG", "info");
    let mut p = Process::spawn("walfleet-agent restore", cmd)?;
    tests::try_wait_until(T, "an LTX response held by the proxy", || proxy.responses_held() >= 1)?;
    std::os::unix::fs::symlink(&target, &out)?;
    let status = p.wait(T)?;
    let err = tests::replica::strip_ansi(&p.stderr());
    assert!(!status.success(), "the restore replaced what appeared at its output:\n{err}");
    assert!(err.contains("out.db") && err.contains("appeared during the restore"), "unclear error:\n{err}");
    assert!(std::fs::symlink_metadata(&out)?.file_type().is_symlink(), "the symlink was replaced");
    assert!(!target.exists(), "something was written through the symlink");
    assert_eq!(names(dir.path())?, vec!["out.db".to_string()], "the temporary file is left behind");
    Ok(())
}

/// A file at the name older versions used for their temporary file belongs to someone else (a
/// restore running beside this one): it is neither deleted nor overwritten.
#[test]
fn restore_leaves_a_foreign_temporary_file_alone() -> Result<()> {
    let s3 = S3Server::new()?;
    let src = tempfile::tempdir()?;
    let (url, want) = replica(&s3, src.path(), "safety/foreign")?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out.db");
    let foreign = dir.path().join("out.db.walfleet-restore.tmp");
    std::fs::write(&foreign, b"another restore's pages")?;
    expect_success("restore", &restore(&s3.env(), &url, &out, &[])?);
    assert_eq!(std::fs::read(&foreign)?, b"another restore's pages", "the foreign temporary file was touched");
    assert_eq!(ids(&out)?, want);
    assert_eq!(integrity_check(&out)?, "ok");
    Ok(())
}

/// `?`, `#` and `%` in the output path are file name characters, not URI syntax.
#[test]
fn restore_writes_to_a_path_with_uri_characters() -> Result<()> {
    let s3 = S3Server::new()?;
    let src = tempfile::tempdir()?;
    let (url, want) = replica(&s3, src.path(), "safety/uri")?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("we?ird#name%41 x.db");
    let o = restore(&s3.env(), &url, &out, &[])?;
    expect_success("restore to a path with ? # %", &o);
    assert_eq!(ids(&out)?, want);
    assert_eq!(integrity_check(&out)?, "ok");
    Ok(())
}

/// A timeout no clock can add is a 400 naming the parameter, not a panic of the handler (and a
/// dropped connection); so is one past the 1 h cap, or one that is not a duration.
#[test]
fn durable_bounds_its_timeout() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    App::writer(&db, &["--count", "5", "--rate", "0"])?.finish(T)?;
    let url = format!("file://{}", dir.path().join("replica").display());
    let mut a = Agent::start(&["replicate", utf8(&db)?, &url], &[])?;
    a.wait_metric("walfleet_durable_txid", |v| v >= 1.0, T)?;
    for (timeout, says) in [("18446744073709551615s", "timeout"), ("2h", "1h"), ("soon", "timeout")] {
        let (code, body) = a.get(&format!("/durable?timeout={timeout}"))?;
        assert_eq!(code, 400, "timeout={timeout}: {body}");
        assert!(body.contains(says), "timeout={timeout}: {body}");
    }
    let (code, body) = a.get("/durable?timeout=1h")?;
    assert_eq!(code, 200, "{body}");
    assert!(a.try_status()?.is_none(), "agent exited:\n{}", a.stderr());
    a.sigterm()?;
    assert_eq!(a.wait(T)?.code(), Some(0), "agent:\n{}", a.stderr());
    Ok(())
}

fn leased_env(s3: &S3Server, c: &Controller, token: &str, project: &str, db: &str) -> Vec<(String, String)> {
    let mut env = c.agent_env(s3.env(), token, project, db);
    env.extend([
        ("WALFLEET_SYNC_INTERVAL".into(), "100ms".into()),
        ("WALFLEET_SNAPSHOT_INTERVAL".into(), "300ms".into()),
        ("WALFLEET_RETENTION_INTERVAL".into(), "500ms".into()),
    ]);
    env
}

/// Waits until some object of `before` under `prefix` (other than a manifest) is gone: a
/// retention pass deleted it.
fn wait_deleted_under(s3: &S3Server, before: &[String], prefix: &str, what: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        let now = s3.keys(prefix);
        if before.iter().any(|k| k.starts_with(prefix) && !k.ends_with("manifest.json") && !now.contains(k)) {
            return Ok(());
        }
        if start.elapsed() > T {
            bail!("{what}: nothing under {prefix} was deleted within {T:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Calls of `method` the controller has answered.
fn rpc_calls(c: &Controller, method: &str) -> Result<f64> {
    let body = reqwest::blocking::get(format!("http://127.0.0.1:{}/metrics", c.http_port))?.text()?;
    Ok(tests::metrics::Metrics::parse(&body).sum(&format!("walfleet_controller_rpc_total{{method=\"{method}\"}}")))
}

/// After a live rollback the generation rolled back from goes on past the point the new one
/// continued from: retention keeps every object of it, however old, while it deletes what the
/// window lets go in the current generation; the dry run does not list it either, and it still
/// restores, abandoned rows included.
#[test]
fn retention_keeps_the_generation_a_rollback_left() -> Result<()> {
    let s3 = S3Server::new()?;
    let c = Controller::start_sqlite_with(Duration::from_secs(3), s3.env(), &["--scan-interval", "1h"])?;
    let token = c.create_project("alpha")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    let url = s3.url("alpha/app");
    let argv = tests::apps::argv("writer.py", &db, &["--rate", "20"]);
    let mut args = vec!["run", utf8(&db)?, url.as_str(), "--"];
    args.extend(argv.iter().map(String::as_str));
    let mut live = Agent::start(&args, &leased_env(&s3, &c, &token, "alpha", "app"))?;
    live.wait_metric("walfleet_lease_held", |v| v == 1.0, T)?;
    let point = live.wait_metric("walfleet_durable_txid", |v| v >= 5.0, T)? as u64;
    let old_generation = live.wait_metric("walfleet_generation", |v| v > 0.0, T)? as u64;
    live.wait_metric("walfleet_durable_txid", |v| v >= point as f64 + 10.0, T)?;
    let done = c.cli_json(&["restore", "alpha/app", "--txid", &point.to_string(), "--live"])?;
    assert_eq!(done["ok"], true, "{done:#}\nagent:\n{}", live.stderr());
    let new_generation = live.wait_metric("walfleet_generation", |v| v as u64 > old_generation, T)? as u64;
    live.wait_metric("walfleet_lease_held", |v| v == 1.0, T)?;
    live.wait_metric("walfleet_snapshots_total", |v| v >= 2.0, T)?;

    let old_prefix = format!("alpha/app/{old_generation:016x}/");
    let new_prefix = format!("alpha/app/{new_generation:016x}/");
    let old_keys = s3.keys(&old_prefix);
    assert!(old_keys.iter().any(|k| k.ends_with(".ltx")), "the old generation holds files: {old_keys:?}");
    let before = s3.keys(&new_prefix);
    c.cli_json(&["retention", "alpha/app", "--keep", "2s"])?;
    // A pass that deleted in the current generation saw the old one entirely outside the
    // window: every object of it is older than the current generation's snapshots.
    wait_deleted_under(&s3, &before, &new_prefix, "retention in the current generation")?;
    let dry = c.cli_json(&["retention", "alpha/app", "--keep", "2s", "--dry-run"])?;
    let kept = s3.keys(&old_prefix);
    assert_eq!(kept, old_keys, "retention deleted from the generation rolled back from");
    let planned = dry["delete"].as_array().context("delete list")?;
    assert!(
        planned.iter().filter_map(|k| k.as_str()).all(|k| !k.starts_with(&format!("{old_generation:016x}/"))),
        "the dry run plans deletes in the generation rolled back from: {planned:?}"
    );
    live.sigterm()?;
    assert_eq!(live.wait(T)?.code(), Some(0), "agent:\n{}", live.stderr());

    let old = dir.path().join("old.db");
    let old_url = s3.url(&format!("alpha/app/{old_generation:016x}"));
    expect_success("restore the generation rolled back from", &restore(&s3.env(), &old_url, &old, &[])?);
    assert_eq!(integrity_check(&old)?, "ok");
    assert!(ids(&old)?.len() as u64 >= point, "the old generation still holds its rows");
    Ok(())
}

/// A second sidecar forks (alert policy): it holds no lease, so it never asks to delete
/// (no `delete_refused` however many passes the holder makes), and the holder's retention
/// leaves the fork's generation alone.
#[test]
fn a_fork_does_not_ask_to_delete_and_keeps_its_generation() -> Result<()> {
    let s3 = S3Server::new()?;
    let c = Controller::start_sqlite_with(Duration::from_secs(3), s3.env(), &["--scan-interval", "1h"])?;
    let token = c.create_project("shop")?;
    let dir = tempfile::tempdir()?;
    let (db_a, db_b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let url = s3.url("shop/app");
    let env = leased_env(&s3, &c, &token, "shop", "app");
    App::writer(&db_a, &["--count", "10", "--rate", "0"])?.finish(T)?;
    let mut a = Agent::start(&["replicate", utf8(&db_a)?, &url], &env)?;
    a.wait_metric("walfleet_lease_held", |v| v == 1.0, T)?;
    wait_shipped(&mut a, SETTLE, T)?;
    // The fork restores the replica (its database is missing), then writes history of its own.
    let mut b = Agent::start(&["replicate", utf8(&db_b)?, &url], &env)?;
    b.wait_metric("walfleet_lease_state{state=\"forked\"}", |v| v == 1.0, T)?;
    let fork_generation = b.wait_metric("walfleet_generation", |v| v > 0.0, T)? as u64;
    App::writer(&db_b, &["--count", "10", "--rate", "50"])?.finish(T)?;
    wait_shipped(&mut b, SETTLE, T)?;
    App::writer(&db_a, &["--count", "20", "--rate", "50"])?.finish(T)?;
    a.wait_metric("walfleet_snapshots_total", |v| v >= 2.0, T)?;
    let holder_generation = a.wait_metric("walfleet_generation", |v| v > 0.0, T)? as u64;
    assert!(fork_generation > holder_generation);

    let fork_prefix = format!("shop/app/{fork_generation:016x}/");
    let fork_keys = s3.keys(&fork_prefix);
    let before = s3.keys(&format!("shop/app/{holder_generation:016x}/"));
    c.cli_json(&["retention", "shop/app", "--keep", "2s"])?;
    wait_deleted_under(&s3, &before, &format!("shop/app/{holder_generation:016x}/"), "the holder's retention")?;
    // Several more passes of the holder (one validation each); the fork's keeper runs on the
    // same interval, so it had as many chances to ask.
    let seen = rpc_calls(&c, "validate")?;
    tests::try_wait_until(T, "three more retention validations", || {
        rpc_calls(&c, "validate").is_ok_and(|n| n >= seen + 3.0)
    })?;
    let refused: Vec<_> = c.events("shop")?.into_iter().filter(|e| e["kind"] == "delete_refused").collect();
    assert!(refused.is_empty(), "the fork asked to delete: {refused:?}");
    assert_eq!(s3.keys(&fork_prefix), fork_keys, "the fork's generation lost objects");
    b.sigterm()?;
    b.wait(T)?;
    a.sigterm()?;
    assert_eq!(a.wait(T)?.code(), Some(0), "agent:\n{}", a.stderr());
    Ok(())
}

/// The older branch of a fork: a holder and a fork (alert policy) both write, both stop, and a
/// new instance continues the newest history (the fork's). The holder's generation went on past
/// the point the fork started from, so it is off the current lineage: retention deletes the
/// fork's generation once the new one replaced it and the window passed, but never the other
/// branch, which still restores every row its writer committed.
#[test]
fn retention_keeps_the_older_branch_of_a_fork() -> Result<()> {
    let s3 = S3Server::new()?;
    let c = Controller::start_sqlite_with(Duration::from_secs(3), s3.env(), &["--scan-interval", "1h"])?;
    let token = c.create_project("shop")?;
    let dir = tempfile::tempdir()?;
    let (db_a, db_b, db_c) = (dir.path().join("a.db"), dir.path().join("b.db"), dir.path().join("c.db"));
    let url = s3.url("shop/app");
    let env = leased_env(&s3, &c, &token, "shop", "app");
    App::writer(&db_a, &["--count", "10", "--rate", "0"])?.finish(T)?;
    let mut a = Agent::start(&["replicate", utf8(&db_a)?, &url], &env)?;
    a.wait_metric("walfleet_lease_held", |v| v == 1.0, T)?;
    wait_shipped(&mut a, SETTLE, T)?;
    let holder_generation = a.wait_metric("walfleet_generation", |v| v > 0.0, T)? as u64;
    let mut b = Agent::start(&["replicate", utf8(&db_b)?, &url], &env)?;
    b.wait_metric("walfleet_lease_state{state=\"forked\"}", |v| v == 1.0, T)?;
    let fork_generation = b.wait_metric("walfleet_generation", |v| v > 0.0, T)? as u64;
    // Both branches go on from the fork point.
    App::writer(&db_b, &["--count", "10", "--rate", "50"])?.finish(T)?;
    App::writer(&db_a, &["--count", "20", "--rate", "50"])?.finish(T)?;
    wait_shipped(&mut b, SETTLE, T)?;
    wait_shipped(&mut a, SETTLE, T)?;
    let holder_rows = ids(&db_a)?;
    b.sigterm()?;
    b.wait(T)?;
    a.sigterm()?;
    assert_eq!(a.wait(T)?.code(), Some(0), "agent:\n{}", a.stderr());

    // A new instance restores the newest history and continues it in a generation of its own.
    let mut n = Agent::start(&["replicate", utf8(&db_c)?, &url], &env)?;
    n.wait_metric("walfleet_lease_held", |v| v == 1.0, T)?;
    let current = n.wait_metric("walfleet_generation", |v| v as u64 > fork_generation, T)? as u64;
    let gens = c.cli_json(&["generations", "shop/app"])?;
    let parent = gens
        .as_array()
        .and_then(|a| a.iter().find(|g| g["generation"].as_u64() == Some(current)))
        .map(|g| g["parent"]["generation"].clone());
    eprintln!("current generation {current}, parent {parent:?}; fork {fork_generation}, holder {holder_generation}");
    let holder_prefix = format!("shop/app/{holder_generation:016x}/");
    let fork_prefix = format!("shop/app/{fork_generation:016x}/");
    let holder_keys = s3.keys(&holder_prefix);
    assert!(!s3.keys(&fork_prefix).is_empty());
    c.cli_json(&["retention", "shop/app", "--keep", "2s"])?;
    // The branch the new generation continued goes whole once outside the window ...
    tests::try_wait_until(T, "the continued branch deleted", || s3.keys(&fork_prefix).is_empty())?;
    // ... the other branch stays, object for object, and restores.
    assert_eq!(s3.keys(&holder_prefix), holder_keys, "retention deleted from the older branch of the fork");
    n.sigterm()?;
    assert_eq!(n.wait(T)?.code(), Some(0), "agent:\n{}", n.stderr());
    let out = dir.path().join("branch.db");
    let branch_url = s3.url(&format!("shop/app/{holder_generation:016x}"));
    expect_success("restore the older branch", &restore(&s3.env(), &branch_url, &out, &[])?);
    assert_eq!(ids(&out)?, holder_rows, "the older branch restores every row its writer committed");
    Ok(())
}
