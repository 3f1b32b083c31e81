//! The fleet inventory across projects: reconcile scans that match the bucket, audited
//! restores to a file, drills that catch a corrupted object, drift from a vanished object, and
//! tokens that reach only what they should.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::controller::Controller;
use tests::replica::wait_shipped;
use tests::sqlite::{integrity_check, open_ro};
use tests::{restore, Agent, S3Server};

const T: Duration = Duration::from_secs(60);

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

fn agent_env(s3: &S3Server, c: &Controller, token: &str, project: &str, db: &str) -> Vec<(String, String)> {
    let mut env = c.agent_env(s3.env(), token, project, db);
    // Many small transactions, so a history has points inside it.
    env.push(("WALFLEET_SYNC_INTERVAL".into(), "100ms".into()));
    env
}

fn start(
    s3: &S3Server,
    c: &Controller,
    token: &str,
    project: &str,
    db: &str,
    dir: &Path,
    app: &[&str],
) -> Result<Agent> {
    let path = dir.join(format!("{project}-{db}.db"));
    let url = s3.url(&format!("{project}/{db}"));
    let argv = tests::apps::argv("writer.py", &path, app);
    let mut args = vec!["run", utf8(&path)?, url.as_str(), "--"];
    args.extend(argv.iter().map(String::as_str));
    Agent::start(&args, &agent_env(s3, c, token, project, db))
}

fn ids(db: &Path) -> Result<Vec<i64>> {
    let conn = open_ro(db)?;
    let mut stmt = conn.prepare("SELECT id FROM items ORDER BY id")?;
    let v = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(v)
}

fn printed(a: &Agent) -> Vec<i64> {
    a.stdout().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Objects and bytes under `prefix`, read from the server's disk (no S3 request).
fn on_disk(s3: &S3Server, prefix: &str) -> Result<(u64, u64)> {
    let keys = s3.keys(prefix);
    let mut bytes = 0;
    for k in &keys {
        bytes += std::fs::metadata(s3.object_path(k)).with_context(|| format!("stat {k}"))?.len();
    }
    Ok((keys.len() as u64, bytes))
}

fn inventory(c: &Controller) -> Result<BTreeMap<String, Value>> {
    let v = c.cli_json(&["databases"])?;
    let mut out = BTreeMap::new();
    for d in v.as_array().context("databases is an array")? {
        out.insert(format!("{}/{}", d["project"].as_str().unwrap_or(""), d["name"].as_str().unwrap_or("")), d.clone());
    }
    Ok(out)
}

fn kinds(c: &Controller, project: &str) -> Result<Vec<(String, String)>> {
    Ok(c.events(project)?
        .iter()
        .map(|e| (e["kind"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string()))
        .collect())
}

fn wait_inventory(
    c: &Controller,
    what: &str,
    pred: impl Fn(&BTreeMap<String, Value>) -> bool,
) -> Result<BTreeMap<String, Value>> {
    let start = Instant::now();
    loop {
        let inv = inventory(c)?;
        if pred(&inv) {
            return Ok(inv);
        }
        if start.elapsed() > T {
            bail!("timed out waiting for {what}; inventory:\n{}", serde_json::to_string_pretty(&inv)?);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn inventory_restore_and_drills_across_projects() -> Result<()> {
    let s3 = S3Server::new()?;
    let c = Controller::start_sqlite_with(
        Duration::from_secs(3),
        s3.env(),
        &["--scan-interval", "1h", "--drill-check", "300ms"],
    )?;
    let dir = tempfile::tempdir()?;
    let projects = ["alpha", "beta", "gamma"];
    let mut tokens = BTreeMap::new();
    for p in projects {
        tokens.insert(p, c.create_project(p)?);
    }
    // Two finished databases per project: each app commits its rows and exits; the agent
    // ships everything, seals its generation and releases.
    let mut committed: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for p in projects {
        for (i, d) in ["one", "two"].into_iter().enumerate() {
            let count = (20 + 10 * i).to_string();
            let mut a = start(&s3, &c, &tokens[p], p, d, dir.path(), &["--count", &count, "--rate", "50"])?;
            assert_eq!(a.wait(T)?.code(), Some(0), "{p}/{d} agent:\n{}", a.stderr());
            committed.insert(format!("{p}/{d}"), printed(&a));
        }
    }
    // And one live database with a writing app.
    let mut live = start(&s3, &c, &tokens["alpha"], "alpha", "live", dir.path(), &["--rate", "20"])?;
    live.wait_http_ok("/readyz", T)?;
    live.wait_metric("walfleet_lease_held", |v| v == 1.0, T)?;
    live.wait_metric("walfleet_durable_txid", |v| v >= 3.0, T)?;

    let scanned = c.cli_json(&["scan"])?;
    assert_eq!(scanned["scanned"], 7, "{scanned}");
    let inv = wait_inventory(&c, "the live database healthy with a report", |inv| {
        inv.get("alpha/live").is_some_and(|d| d["status"] == "healthy" && d["durable_txid"].as_u64() > Some(0))
    })?;
    assert_eq!(inv.len(), 7, "{inv:#?}");
    for (name, d) in &inv {
        let (objects, bytes) = on_disk(&s3, &format!("{name}/"))?;
        let lived = name == "alpha/live";
        if !lived {
            // Nothing changes after the seal: the scan's figures are the bucket's.
            assert_eq!((d["objects"].as_u64(), d["bytes"].as_u64()), (Some(objects), Some(bytes)), "{name}: {d:#}");
            assert_eq!(d["status"], "offline", "{name}: a released database has no holder: {d:#}");
            assert_eq!(d["window"]["latest"]["txid"], d["head"]["txid"], "{name}: window ends at the sealed head");
        } else {
            assert!(d["objects"].as_u64().is_some_and(|n| n > 0 && n <= objects), "{name}: {d:#} vs {objects}");
        }
        assert_eq!(d["window"]["earliest"]["txid"].as_u64().map(|t| t >= 1), Some(true), "{name}: {d:#}");
        assert!(d["window"]["latest"]["unix_ms"].as_i64() > Some(0), "{name}: {d:#}");
        assert!(d["generation_chain"].as_array().is_some_and(|g| !g.is_empty()), "{name}: {d:#}");
        assert!(d["monthly_cost"]["storage"].as_f64() > Some(0.0), "{name}: {d:#}");
        assert_eq!(d["scan"]["drift"], "", "{name}: {d:#}");
        assert!(d["replica_url"].as_str().is_some_and(|u| u.ends_with(name.as_str())), "{name}: {d:#}");
    }

    // Restore to a file on this machine: equal to what the app committed.
    let out = dir.path().join("alpha-one.restored.db");
    let r = c.cli_json(&["restore", "alpha/one", "--output", utf8(&out)?])?;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(integrity_check(&out)?, "ok");
    assert_eq!(ids(&out)?, committed["alpha/one"], "restored rows vs every id the app printed");
    // An existing output is refused and left as it was.
    let again = c.cli(&["restore", "alpha/one", "--output", utf8(&out)?])?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(ids(&out)?, committed["alpha/one"]);

    // Clone into another project as a new lineage: restorable at once, and the target's agent
    // starts from it; its app continues after the cloned rows.
    let c1 = c.cli_json(&["restore", "alpha/one", "--into", "beta/staging", "--replica", &s3.url("beta/staging")])?;
    assert_eq!(c1["ok"], true, "{c1}");
    let cloned = dir.path().join("beta-staging.restored.db");
    c.cli_json(&["restore", "beta/staging", "--output", utf8(&cloned)?])?;
    assert_eq!(ids(&cloned)?, committed["alpha/one"], "the clone equals the source");
    let mut st = start(&s3, &c, &tokens["beta"], "beta", "staging", dir.path(), &["--count", "5", "--rate", "50"])?;
    assert_eq!(st.wait(T)?.code(), Some(0), "staging agent:\n{}", st.stderr());
    let more = printed(&st);
    assert_eq!(more.first().copied(), committed["alpha/one"].last().map(|l| l + 1), "continues after the clone");
    let after_clone = dir.path().join("beta-staging.after.db");
    c.cli_json(&["restore", "beta/staging", "--output", utf8(&after_clone)?])?;
    let want: Vec<i64> = committed["alpha/one"].iter().chain(more.iter()).copied().collect();
    assert_eq!(ids(&after_clone)?, want);
    assert_eq!(ids(&out)?, committed["alpha/one"], "the source is untouched");
    let staging_events = kinds(&c, "beta")?;
    assert!(staging_events.iter().any(|(k, m)| k == "cloned" && m.contains("alpha/one")), "{staging_events:?}");
    // A database with a live writer cannot be cloned into.
    let refused = c.cli(&["restore", "alpha/one", "--into", "alpha/live"])?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("live writer"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A chosen point: equal to the agent's own restore of that transaction.
    let mid = inv["beta/two"]["window"]["latest"]["txid"].as_u64().context("txid")? / 2 + 1;
    let plan = c.cli_json(&["restore", "beta/two", "--txid", &mid.to_string(), "--dry-run"])?;
    assert_eq!(plan["txid"], mid, "{plan:#}");
    assert!(plan["files"].as_array().is_some_and(|f| !f.is_empty()), "{plan:#}");
    let at_mid = dir.path().join("beta-two.mid.db");
    c.cli_json(&["restore", "beta/two", "--txid", &mid.to_string(), "--output", utf8(&at_mid)?])?;
    let oracle = dir.path().join("beta-two.oracle.db");
    tests::process::expect_success(
        "agent restore",
        &restore(&s3.env(), &s3.url("beta/two"), &oracle, &["--txid", &mid.to_string()])?,
    );
    let (got, want) = (ids(&at_mid)?, ids(&oracle)?);
    assert!(!got.is_empty() && got.len() < committed["beta/two"].len(), "a point inside the history: {got:?}");
    assert_eq!(got, want, "walfleet restore --txid vs walfleet-agent restore --txid");
    let audit = kinds(&c, "beta")?;
    assert!(
        audit.iter().any(|(k, m)| k == "restore_planned" && m.contains(&format!("transaction {mid}"))),
        "{audit:?}"
    );
    assert!(audit.iter().any(|(k, m)| k == "restore_finished" && m.contains("admin token")), "{audit:?}");

    // Drills: the live database passes, its checksum compared with the agent's report.
    let drill = c.cli_json(&["drill", "alpha/live"])?;
    assert_eq!(drill["ok"], true, "{drill:#}");
    assert_eq!(drill["expected_checksum"], drill["restored_checksum"], "{drill:#}");
    assert!(drill["expected_checksum"].as_str().is_some_and(|s| !s.is_empty()), "{drill:#}");

    // A corrupted object fails the next drill, which names it; nothing else is touched.
    let plan = c.cli_json(&["restore", "gamma/one", "--dry-run"])?;
    let victim = plan["files"].as_array().and_then(|f| f.last()).and_then(|f| f["key"].as_str()).context("plan key")?;
    let victim = format!("gamma/one/{victim}");
    let path = s3.object_path(&victim);
    let before: BTreeMap<String, Vec<u8>> = s3
        .keys("")
        .into_iter()
        .filter(|k| k != &victim)
        .filter_map(|k| Some((k.clone(), std::fs::read(s3.object_path(&k)).ok()?)))
        .collect();
    let mut body = std::fs::read(&path)?;
    let at = body.len() / 2;
    body[at] ^= 0xff;
    std::fs::write(&path, &body)?;
    let failed = c.cli(&["drill", "gamma/one", "--json"])?;
    assert_eq!(failed.status.code(), Some(1), "a failed drill exits 1: {}", String::from_utf8_lossy(&failed.stderr));
    let failed: Value = serde_json::from_slice(&failed.stdout)?;
    assert_eq!(failed["ok"], false);
    let key_in_store = victim.trim_start_matches("gamma/one/");
    assert!(failed["message"].as_str().is_some_and(|m| m.contains(key_in_store)), "names the object: {failed:#}");
    let events = kinds(&c, "gamma")?;
    assert!(events.iter().any(|(k, m)| k == "drill_failed" && m.contains(key_in_store)), "{events:?}");
    for (k, b) in &before {
        if k.starts_with("alpha/live/") {
            continue; // still being written
        }
        assert_eq!(std::fs::read(s3.object_path(k)).ok().as_ref(), Some(b), "object {k} changed");
    }
    let inv = inventory(&c)?;
    assert_eq!(inv["gamma/one"]["last_drill"]["ok"], false, "{:#}", inv["gamma/one"]);
    assert_eq!(inv["alpha/live"]["last_drill"]["ok"], true, "{:#}", inv["alpha/live"]);
    // A schedule: the controller drills gamma/two by itself.
    assert!(inv["gamma/two"]["last_drill"].is_null(), "{:#}", inv["gamma/two"]);
    c.cli_json(&["drill", "gamma/two", "--every", "1s"])?;
    let inv = wait_inventory(&c, "a scheduled drill", |inv| inv["gamma/two"]["last_drill"]["ok"] == true)?;
    assert!(inv["gamma/one"]["last_drill"]["ok"] == false, "unscheduled databases are not drilled again");

    // Drift: an object removed behind walfleet's back (a lifecycle rule) shows at the next scan.
    let gone = s3.keys("beta/one/").into_iter().find(|k| k.ends_with(".ltx")).context("an ltx object")?;
    std::fs::remove_file(s3.object_path(&gone))?;
    c.cli_json(&["scan", "beta/one"])?;
    let inv = inventory(&c)?;
    let drift = inv["beta/one"]["scan"]["drift"].as_str().unwrap_or("").to_string();
    assert!(drift.contains("gone since the scan before"), "drift: {drift:?}");
    assert!(kinds(&c, "beta")?.iter().any(|(k, _)| k == "drift"));
    assert_eq!(inv["beta/two"]["scan"]["drift"], "", "other databases unaffected");

    live.sigterm()?;
    assert_eq!(live.wait(T)?.code(), Some(0), "live agent:\n{}", live.stderr());
    Ok(())
}

/// Agent tokens reach no inventory, drill or restore, not even their own project's; names are
/// validated; an unknown database is named in the error.
#[test]
fn inventory_and_restores_need_an_admin_token() -> Result<()> {
    let s3 = S3Server::new()?;
    let c = Controller::start_sqlite_with(Duration::from_secs(3), s3.env(), &[])?;
    let alpha = c.create_project("alpha")?;
    c.create_project("beta")?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("x.db");
    for args in [
        vec!["databases"],
        vec!["databases", "--project", "beta"],
        vec!["drill", "beta/app"],
        vec!["restore", "beta/app", "--output", utf8(&out)?],
        vec!["restore", "alpha/app", "--output", utf8(&out)?],
    ] {
        let o = c.cli_as(&alpha, &args)?;
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} with an agent token must fail");
        assert!(err.contains("admin"), "{args:?}: error names the needed token kind: {err}");
    }
    assert!(!out.exists());
    let o = c.cli(&["restore", "../x/app", "--output", utf8(&out)?])?;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("../x"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = c.cli(&["drill", "alpha/nope"])?;
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("alpha/nope does not exist"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

fn wait_event(c: &Controller, project: &str, kind: &str, after: usize) -> Result<String> {
    let start = Instant::now();
    loop {
        let events = kinds(c, project)?;
        if let Some((_, m)) = events.iter().skip(after).find(|(k, _)| k == kind) {
            return Ok(m.clone());
        }
        if start.elapsed() > T {
            bail!("no {kind} event in {T:?}; events: {events:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The object store goes away while the app keeps committing: the database is reported
/// stalled (an event and the inventory status) and clears when uploads resume. An agent that
/// stops reporting raises report_missing, and report_resumed when it is back.
#[test]
fn stalls_and_silent_agents_raise_events() -> Result<()> {
    let mut s3 = S3Server::new()?;
    let c = Controller::start_sqlite_with(Duration::from_secs(3), s3.env(), &["--stall-after", "2s"])?;
    let token = c.create_project("shop")?;
    let dir = tempfile::tempdir()?;
    let mut a = start(&s3, &c, &token, "shop", "app", dir.path(), &["--rate", "20"])?;
    a.wait_http_ok("/readyz", T)?;
    a.wait_metric("walfleet_durable_txid", |v| v >= 3.0, T)?;
    wait_inventory(&c, "healthy", |inv| inv.get("shop/app").is_some_and(|d| d["status"] == "healthy"))?;

    s3.stop()?;
    let msg = wait_event(&c, "shop", "stalled", 0)?;
    assert!(msg.contains("nothing became durable"), "{msg}");
    let inv = wait_inventory(&c, "stalled", |inv| inv.get("shop/app").is_some_and(|d| d["status"] == "stalled"))?;
    let d = &inv["shop/app"];
    assert!(d["local_txid"].as_u64() > d["durable_txid"].as_u64(), "{d:#}");
    s3.start()?;
    wait_event(&c, "shop", "stall_cleared", 0)?;
    wait_inventory(&c, "healthy again", |inv| inv.get("shop/app").is_some_and(|d| d["status"] == "healthy"))?;

    let seen = kinds(&c, "shop")?.len();
    a.signal("STOP")?;
    let missing = wait_event(&c, "shop", "report_missing", seen);
    a.signal("CONT")?;
    let missing = missing?;
    assert!(missing.contains("no report from holder"), "{missing}");
    wait_event(&c, "shop", "report_resumed", seen)?;
    a.sigterm()?;
    assert_eq!(a.wait(T)?.code(), Some(0), "agent:\n{}", a.stderr());
    Ok(())
}

/// Runs the writer app to completion; returns the ids it committed.
fn write_rows(db: &Path, count: u32, rate: u32) -> Result<Vec<i64>> {
    let argv = tests::apps::argv("writer.py", db, &["--count", &count.to_string(), "--rate", &rate.to_string()]);
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let out = tests::process::run("writer.py", cmd, T)?;
    if !out.status.success() {
        bail!("writer.py failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn replicate(db: &Path, env: &[(String, String)], url: &str) -> Result<Agent> {
    Agent::start(&["replicate", utf8(db)?, url], env)
}

/// A retention window on a database with two generations and several snapshots: the agent
/// deletes exactly what `walfleet retention --dry-run` listed, the latest point still restores
/// every row, and an agent whose generation is not current (a fork) deletes nothing.
#[test]
fn retention_deletes_what_the_dry_run_listed_and_a_fork_deletes_nothing() -> Result<()> {
    let s3 = S3Server::new()?;
    let c = Controller::start_sqlite_with(Duration::from_secs(3), s3.env(), &[])?;
    let token = c.create_project("shop")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    let url = s3.url("shop/app");
    let mut env = agent_env(&s3, &c, &token, "shop", "app");
    env.extend([
        ("WALFLEET_SNAPSHOT_INTERVAL".into(), "300ms".into()),
        ("WALFLEET_RETENTION_INTERVAL".into(), "500ms".into()),
    ]);
    let mut ids = write_rows(&db, 10, 100)?;
    // Generation 1, then generation 2 after a restart; rows written under each.
    for _ in 0..2 {
        let mut a = replicate(&db, &env, &url)?;
        a.wait_metric("walfleet_lease_held", |v| v == 1.0, T)?;
        ids.extend(write_rows(&db, 20, 40)?);
        shipped_and_snapshotted(&mut a)?;
        a.sigterm()?;
        assert_eq!(a.wait(T)?.code(), Some(0), "agent:\n{}", a.stderr());
    }
    let mut a = replicate(&db, &env, &url)?;
    a.wait_metric("walfleet_lease_held", |v| v == 1.0, T)?;
    ids.extend(write_rows(&db, 20, 40)?);
    shipped_and_snapshotted(&mut a)?;
    std::thread::sleep(Duration::from_secs(1));

    let before = s3.keys("shop/app/");
    let dry = c.cli_json(&["retention", "shop/app", "--keep", "2s", "--dry-run"])?;
    let planned: Vec<String> = dry["delete"]
        .as_array()
        .context("delete list")?
        .iter()
        .filter_map(|k| k.as_str().map(|k| format!("shop/app/{k}")))
        .collect();
    assert!(planned.iter().all(|k| before.contains(k)), "planned keys exist: {planned:?}");
    let gens = tests::replica::generations(&before, "shop/app/");
    assert!(gens.len() >= 3, "three generations: {gens:?}");
    assert!(
        planned.iter().any(|k| k.starts_with(&format!("shop/app/{}/", gens[0]))),
        "the oldest generation goes: {planned:?}"
    );
    let current = gens.last().context("current")?;
    assert!(
        planned.iter().any(|k| k.starts_with(&format!("shop/app/{current}/"))),
        "covered files of the current generation go: {planned:?}"
    );
    assert!(!planned.contains(&format!("shop/app/{current}/manifest.json")), "the current manifest stays");
    // Nothing is deleted until a policy is set.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s3.keys("shop/app/"), before, "no policy, no deletes");

    c.cli_json(&["retention", "shop/app", "--keep", "2s"])?;
    let start = Instant::now();
    while s3.keys("shop/app/") == before {
        if start.elapsed() > T {
            bail!("no deletes within {T:?}:\n{}", a.stderr());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2)); // a later pass finds nothing more
    let after = s3.keys("shop/app/");
    let deleted: Vec<String> = before.iter().filter(|k| !after.contains(k)).cloned().collect();
    assert_eq!(deleted, planned, "deleted vs the dry run");
    assert!(after.iter().all(|k| before.contains(k)), "nothing new appeared");

    let out = dir.path().join("restored.db");
    let r = c.cli_json(&["restore", "shop/app", "--output", utf8(&out)?])?;
    assert_eq!(r["ok"], true);
    assert_eq!(integrity_check(&out)?, "ok");
    assert_eq!(self::ids(&out)?, ids, "every row still restores at the latest point");

    // A second instance forks (alert policy): it holds no lease, so it never asks to delete
    // (tests/it/safety_restore.rs counts its passes), and the bucket's history stays as it is.
    let other = dir.path().join("other.db");
    let mut b = replicate(&other, &env, &url)?;
    b.wait_metric("walfleet_lease_state{state=\"forked\"}", |v| v == 1.0, T)?;
    let now: Vec<String> = s3.keys("shop/app/").into_iter().filter(|k| before.contains(k)).collect();
    assert_eq!(now, after, "the fork deleted nothing");
    b.sigterm()?;
    b.wait(T)?;
    a.sigterm()?;
    assert_eq!(a.wait(T)?.code(), Some(0), "agent:\n{}", a.stderr());
    Ok(())
}

/// Waits until everything the agent captured is durable and the snapshot owed for the final
/// transaction is taken (it may come before or after the last upload is seen): the snapshot
/// count holds still for 2 s and is at least 1. How many snapshots a generation gets depends
/// on how the writes fall against the snapshot interval, so only "one covers the end" is
/// certain.
fn shipped_and_snapshotted(a: &mut Agent) -> Result<()> {
    wait_shipped(a, Duration::from_secs(2), T)?;
    let start = Instant::now();
    let mut last = (a.metrics()?.select("walfleet_snapshots_total").unwrap_or(0.0), start);
    while last.1.elapsed() < Duration::from_secs(2) {
        if start.elapsed() > T {
            bail!("snapshots never stopped:\n{}", a.stderr());
        }
        std::thread::sleep(Duration::from_millis(100));
        let now = a.metrics()?.select("walfleet_snapshots_total").unwrap_or(0.0);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    if last.0 < 1.0 {
        bail!("no snapshot in this generation:\n{}", a.stderr());
    }
    Ok(())
}

/// (id, ts) of every row: ts is the wall time of the commit, so rows written again after a
/// rollback differ from the abandoned ones with the same id.
fn rows(db: &Path) -> Result<Vec<(i64, f64)>> {
    let conn = open_ro(db)?;
    let mut stmt = conn.prepare("SELECT id, ts FROM items ORDER BY id")?;
    let v = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
    Ok(v)
}

#[test]
fn live_rollback_restores_the_point_and_restarts_the_app() -> Result<()> {
    let s3 = S3Server::new()?;
    let c = Controller::start_sqlite_with(Duration::from_secs(3), s3.env(), &["--scan-interval", "1h"])?;
    let dir = tempfile::tempdir()?;
    let token = c.create_project("alpha")?;
    let mut live = start(&s3, &c, &token, "alpha", "app", dir.path(), &["--rate", "20"])?;
    live.wait_http_ok("/readyz", T)?;
    live.wait_metric("walfleet_lease_held", |v| v == 1.0, T)?;
    let point = live.wait_metric("walfleet_durable_txid", |v| v >= 5.0, T)? as u64;
    let old_generation = live.wait_metric("walfleet_generation", |v| v > 0.0, T)? as u64;
    // The chosen point as a file, before anything is rolled back.
    let at_point = dir.path().join("at-point.db");
    c.cli_json(&["restore", "alpha/app", "--txid", &point.to_string(), "--output", utf8(&at_point)?])?;
    let wanted = rows(&at_point)?;
    assert!(!wanted.is_empty());
    // The history goes on past the point (the "bad migration" to undo).
    live.wait_metric("walfleet_durable_txid", |v| v >= point as f64 + 10.0, T)?;

    // The dry run plans and changes nothing.
    let plan = c.cli_json(&["restore", "alpha/app", "--txid", &point.to_string(), "--live", "--dry-run"])?;
    assert_eq!(plan["txid"], point, "{plan:#}");
    assert_eq!(plan["generation"], old_generation, "{plan:#}");
    assert_eq!(live.wait_metric("walfleet_generation", |_| true, T)? as u64, old_generation);

    let asked_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    let done = c.cli_json(&["restore", "alpha/app", "--txid", &point.to_string(), "--live"])?;
    assert_eq!(done["ok"], true, "{done:#}\nagent:\n{}", live.stderr());
    // The same process runs the app again, in a newer generation, holding the lease.
    let new_generation = live.wait_metric("walfleet_generation", |v| v as u64 > old_generation, T)? as u64;
    live.wait_http_ok("/readyz", T)?;
    live.wait_metric("walfleet_lease_held", |v| v == 1.0, T)?;
    live.wait_metric("walfleet_durable_txid", |v| v >= point as f64 + 5.0, T)?;
    let db = dir.path().join("alpha-app.db");
    assert!(std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("alpha-app.db.rolled-back-")));
    live.sigterm()?;
    assert_eq!(live.wait(T)?.code(), Some(0), "agent:\n{}", live.stderr());
    // The app's downtime, from the agent's own log (shown with --no-capture).
    for l in live
        .stderr()
        .lines()
        .filter(|l| l.contains("rollback requested") || l.contains("app started") || l.contains("rolled back"))
    {
        eprintln!("{l}");
    }

    // The live database: exactly the point, then rows the restarted app wrote after the ask.
    let now = rows(&db)?;
    assert_eq!(integrity_check(&db)?, "ok");
    assert!(now.len() > wanted.len(), "the app wrote after the rollback");
    assert_eq!(&now[..wanted.len()], &wanted[..], "the rolled-back database starts with the point, row for row");
    assert!(now[wanted.len()..].iter().all(|(_, ts)| *ts >= asked_at), "rows past the point are new ones");
    let last = wanted.last().map(|r| r.0).unwrap_or(0);
    let printed = printed(&live);
    assert!(
        printed.windows(2).any(|w| w[1] == last + 1 && w[0] > last),
        "the app restarted after id {last}: {printed:?}"
    );

    // The replica's latest point is the new lineage; its parent is the point.
    let latest = dir.path().join("latest.db");
    c.cli_json(&["restore", "alpha/app", "--output", utf8(&latest)?])?;
    assert_eq!(rows(&latest)?, now);
    let gens = c.cli_json(&["generations", "alpha/app"])?;
    let g = gens
        .as_array()
        .and_then(|a| a.iter().find(|g| g["generation"].as_u64() == Some(new_generation)))
        .context("new generation listed")?;
    assert_eq!(
        (g["parent"]["generation"].as_u64(), g["parent"]["txid"].as_u64()),
        (Some(old_generation), Some(point)),
        "{gens:#}"
    );
    // The generation rolled back from stays restorable, abandoned rows included.
    let old = dir.path().join("old.db");
    let old_url = s3.url(&format!("alpha/app/{old_generation:016x}"));
    tests::process::expect_success("restore old generation", &restore(&s3.env(), &old_url, &old, &[])?);
    let old_rows = rows(&old)?;
    assert!(old_rows.len() > wanted.len(), "the old generation holds the rows past the point");
    assert_eq!(&old_rows[..wanted.len()], &wanted[..]);
    let abandoned = &old_rows[wanted.len()..];
    assert!(now[wanted.len()..].iter().all(|r| !abandoned.contains(r)), "no abandoned row came back");

    let events = kinds(&c, "alpha")?;
    for kind in ["rollback_requested", "rolled_back", "restore_finished"] {
        assert!(events.iter().any(|(k, _)| k == kind), "{kind} missing: {events:?}");
    }
    assert!(events.iter().any(|(k, m)| k == "restore_started" && m.contains("live rollback")), "{events:?}");

    // Nobody runs the app now: a live rollback is refused and says why.
    let refused = c.cli(&["restore", "alpha/app", "--txid", &point.to_string(), "--live"])?;
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("no instance holds its lease"), "{err}");
    // And an agent may not start from another point than the head on its own.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let refused = rt.block_on(async {
        let mut client =
            tests::controller::agent_client(&c.url(), &token).map_err(|e| tonic::Status::internal(e.to_string()))?;
        tests::controller::register(&mut client, "alpha", "rogue", "run").await?;
        client
            .acquire(proto::v1::AcquireRequest {
                project: "alpha".into(),
                database: "app".into(),
                instance_id: "rogue".into(),
                rollback_to: Some(proto::v1::Position { generation: old_generation, txid: 2 }),
                ..Default::default()
            })
            .await
            .map(|_| ())
    });
    let status = refused.expect_err("an acquire naming an unrequested point is refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("no rollback"), "{status:?}");
    Ok(())
}
