//! Real agents under a real controller: a rolling deploy that hands the lease over without
//! losing a committed write, a duplicate instance under the alert policy, and a controller
//! that crashes and then stays away for a minute.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};
use tests::controller::Controller;
use tests::replica::{generations, wait_durable_past};
use tests::sqlite::{integrity_check, open_ro};
use tests::{restore, Agent, S3Server};

const T: Duration = Duration::from_secs(60);

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

/// The environment of an agent of project `shop`, database `app`, under `c`.
fn fleet_env(s3: &S3Server, c: &Controller, token: &str) -> Vec<(String, String)> {
    c.agent_env(s3.env(), token, "shop", "app")
}

fn run_mode(db: &Path, url: &str, app: &[String], env: &[(String, String)]) -> Result<Agent> {
    let mut args = vec!["run", utf8(db)?, url, "--"];
    args.extend(app.iter().map(String::as_str));
    Agent::start(&args, env)
}

fn printed_ids(text: &str) -> Vec<i64> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// (id, ts) of every row.
fn rows(db: &Path) -> Result<Vec<(i64, f64)>> {
    let conn = open_ro(db)?;
    let mut stmt = conn.prepare("SELECT id, ts FROM items ORDER BY id")?;
    let v = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
    Ok(v)
}

fn wait_printed(agent: &mut Agent, n: usize, what: &str) -> Result<()> {
    let start = Instant::now();
    while printed_ids(&agent.stdout()).len() < n {
        if let Some(st) = agent.try_status()? {
            bail!("{what}: agent exited ({st}) before its app committed {n} rows:\n{}", agent.stderr());
        }
        if start.elapsed() > T {
            bail!("{what}: the app printed {} ids in {T:?}", printed_ids(&agent.stdout()).len());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn kinds(events: &[serde_json::Value]) -> Vec<String> {
    events.iter().filter_map(|e| e["kind"].as_str().map(str::to_string)).collect()
}

/// Instance A runs the app; instance B starts for the same database: A stops its app, seals at
/// its final transaction and releases; B restores exactly that and starts its app. Every id A's
/// app committed is in B's database, and B's app continues right after the last one.
#[test]
fn rolling_deploy_hands_over_without_losing_a_commit() -> Result<()> {
    let s3 = S3Server::new()?;
    let c = Controller::start_sqlite(Duration::from_secs(3))?;
    let token = c.create_project("shop")?;
    let url = s3.url("shop/app");
    let env = fleet_env(&s3, &c, &token);
    let (da, db_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (a_db, b_db) = (da.path().join("app.db"), db_dir.path().join("app.db"));

    let mut a = run_mode(&a_db, &url, &tests::apps::argv("writer.py", &a_db, &["--rate", "100"]), &env)?;
    wait_printed(&mut a, 50, "instance A")?;
    let mut b = run_mode(&b_db, &url, &tests::apps::argv("writer.py", &b_db, &["--rate", "100"]), &env)?;
    let st = a.wait(T)?;
    assert_eq!(st.code(), Some(0), "instance A should exit with its app's code after the handoff:\n{}", a.stderr());
    let a_ids = printed_ids(&a.stdout());
    wait_printed(&mut b, 20, "instance B")?;
    let b_ids = printed_ids(&b.stdout());
    assert_eq!(
        b_ids.first().copied(),
        a_ids.last().map(|l| l + 1),
        "B's app must continue right after A's last committed id (A committed {} ids)",
        a_ids.len()
    );
    b.sigterm()?;
    assert_eq!(b.wait(T)?.code(), Some(0), "instance B exit:\n{}", b.stderr());
    let b_ids = printed_ids(&b.stdout());

    let out = tempfile::tempdir()?;
    let restored = out.path().join("restored.db");
    tests::process::expect_success("restore", &restore(&s3.env(), &url, &restored, &[])?);
    assert_eq!(integrity_check(&restored)?, "ok");
    let all = rows(&restored)?;
    let ids: Vec<i64> = all.iter().map(|r| r.0).collect();
    let expected: Vec<i64> = a_ids.iter().chain(b_ids.iter()).copied().collect();
    assert_eq!(ids, expected, "restored ids vs every id both apps printed");
    // The unavailability window: from A's last commit to B's first.
    let last_a = all.iter().find(|r| Some(r.0) == a_ids.last().copied()).map(|r| r.1).context("A's last row")?;
    let first_b = all.iter().find(|r| Some(r.0) == b_ids.first().copied()).map(|r| r.1).context("B's first row")?;
    eprintln!("handoff unavailability window: {:.3} s (A's last commit to B's first)", first_b - last_a);

    let events = kinds(&c.events("shop")?);
    for k in ["duplicate_instance", "handoff_requested", "handoff_completed"] {
        assert!(events.iter().any(|e| e == k), "no {k} event in {events:?}");
    }
    let gens = c.cli_json(&["generations", "shop/app"])?;
    let first = &gens[0];
    assert!(first["sealed_txid"].as_u64().unwrap_or(0) > 0, "A's generation was not sealed: {gens}");
    Ok(())
}

/// Under the alert policy a second live instance runs in its own generation: the violation
/// names both instances within two heartbeats, neither overwrites the other's objects, and
/// both generations restore.
#[test]
fn duplicate_instance_under_alert_policy_forks_and_keeps_both() -> Result<()> {
    let s3 = S3Server::new()?;
    let ttl = Duration::from_secs(3);
    let c = Controller::start_sqlite(ttl)?;
    let token = c.create_project("shop")?;
    let out = c.cli(&["policy", "shop/app", "alert"])?;
    assert!(out.status.success(), "{out:?}");
    let url = s3.url("shop/app");
    let env = fleet_env(&s3, &c, &token);
    let (da, dbd) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (a_db, b_db) = (da.path().join("app.db"), dbd.path().join("app.db"));

    let mut a = run_mode(&a_db, &url, &tests::apps::argv("writer.py", &a_db, &["--rate", "50"]), &env)?;
    wait_printed(&mut a, 20, "instance A")?;
    let started_b = Instant::now();
    let mut b = run_mode(
        &b_db,
        &url,
        &tests::apps::argv("writer.py", &b_db, &["--rate", "50", "--start-id", "1000000"]),
        &env,
    )?;
    // The violation is recorded when B asks for the lease, before its app may start: so it is
    // on record by the time B's app has committed anything (well within two heartbeats).
    wait_printed(&mut b, 1, "instance B")?;
    let violation = c
        .events("shop")?
        .into_iter()
        .find(|e| e["kind"] == "duplicate_instance")
        .context("no duplicate_instance event by the time B's app committed")?;
    eprintln!("violation seen within {:?} of starting B: {}", started_b.elapsed(), violation["message"]);
    wait_printed(&mut b, 20, "instance B")?;
    let instances = c.cli_json(&["instances", "--project", "shop"])?;
    let ids: Vec<String> = instances
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["instance_id"].as_str().map(String::from))
        .collect();
    assert_eq!(ids.len(), 2, "two instances registered: {instances}");
    for id in &ids {
        assert!(
            violation["instance_id"] == id.as_str() || violation["other_instance_id"] == id.as_str(),
            "the violation does not name instance {id}: {violation}"
        );
    }
    assert!(violation["message"].as_str().unwrap_or("").contains("host"), "no host in {violation}");

    // Both write for a while; A's objects as listed now must be untouched at the end.
    let before = s3.keys("shop/app/");
    let digest = |k: &str| std::fs::read(s3.object_path(k));
    let before: Vec<(String, Vec<u8>)> = before.into_iter().filter_map(|k| digest(&k).ok().map(|d| (k, d))).collect();
    wait_printed(&mut b, 60, "instance B")?;
    wait_durable_past(&mut a, 0, T)?;
    a.sigterm()?;
    b.sigterm()?;
    assert!(a.wait(T)?.success(), "A exit:\n{}", a.stderr());
    assert!(b.wait(T)?.success(), "B exit:\n{}", b.stderr());
    for (k, d) in &before {
        if k.ends_with("manifest.json") {
            continue; // sealed by its own writer on the way out
        }
        assert!(digest(k).ok().as_ref() == Some(d), "object {k} changed after the fork");
    }
    let gens = generations(&s3.keys("shop/app/"), "shop/app/");
    assert!(gens.len() >= 2, "expected two generations, found {gens:?}");

    // Each generation restores to its own writer's rows.
    let (a_ids, b_ids) = (printed_ids(&a.stdout()), printed_ids(&b.stdout()));
    let tmp = tempfile::tempdir()?;
    let mut found_a = false;
    let mut found_b = false;
    for g in &gens {
        let out = tmp.path().join(format!("{g}.db"));
        tests::process::expect_success("restore", &restore(&s3.env(), &format!("{url}/{g}"), &out, &[])?);
        assert_eq!(integrity_check(&out)?, "ok");
        let ids: Vec<i64> = rows(&out)?.into_iter().map(|r| r.0).collect();
        found_a |= ids.ends_with(&a_ids[a_ids.len().saturating_sub(5)..]) && ids.contains(a_ids.last().context("a")?);
        found_b |= ids.contains(b_ids.last().context("b")?);
    }
    assert!(found_a && found_b, "A's rows restorable: {found_a}, B's rows restorable: {found_b}");
    assert!(kinds(&c.events("shop")?).iter().any(|k| k == "forked"));
    Ok(())
}

/// The controller is killed mid-lease and restarted; later it is away for 60 s. The agent
/// keeps replicating its own generation all along, reports the lease unconfirmed meanwhile,
/// reconciles when the controller returns, and nothing is lost; no second writer appears.
#[test]
fn controller_crash_and_one_minute_outage_lose_nothing() -> Result<()> {
    let s3 = S3Server::new()?;
    let mut c = Controller::start_sqlite(Duration::from_secs(3))?;
    let token = c.create_project("shop")?;
    let url = s3.url("shop/app");
    let env = fleet_env(&s3, &c, &token);
    let d = tempfile::tempdir()?;
    let db = d.path().join("app.db");
    let mut a = run_mode(&db, &url, &tests::apps::argv("writer.py", &db, &["--rate", "20"]), &env)?;
    a.wait_http_ok("/readyz", T)?;
    wait_printed(&mut a, 10, "before the crash")?;
    a.wait_metric("walfleet_lease_held", |v| v == 1.0, T)?;

    c.restart()?;
    wait_renewed_by(&mut a, &c)?;
    let n = printed_ids(&a.stdout()).len();
    wait_printed(&mut a, n + 20, "after the controller restarted")?;

    c.kill()?;
    let away = Instant::now();
    // Unconfirmed once the lease could have expired; writes and uploads go on.
    a.wait_metric("walfleet_lease_held", |v| v == 0.0, T)?;
    let durable = a.metrics()?.select("walfleet_durable_txid").unwrap_or(0.0) as u64;
    let (code, body) = a.get("/durable?timeout=2s")?;
    assert_eq!(code, 503, "/durable must not confirm durability with an unconfirmed lease: {body}");
    wait_durable_past(&mut a, durable + 5, T)?;
    while away.elapsed() < Duration::from_secs(60) {
        assert!(a.try_status()?.is_none(), "agent exited while the controller was away:\n{}", a.stderr());
        std::thread::sleep(Duration::from_millis(500));
    }
    c.restart()?;
    wait_renewed_by(&mut a, &c)?;
    a.wait_metric("walfleet_lease_held", |v| v == 1.0, T)?;
    let n = printed_ids(&a.stdout()).len();
    wait_printed(&mut a, n + 10, "after the outage")?;
    a.sigterm()?;
    assert_eq!(a.wait(T)?.code(), Some(0), "agent exit:\n{}", a.stderr());

    let printed = printed_ids(&a.stdout());
    let out = d.path().join("restored.db");
    tests::process::expect_success("restore", &restore(&s3.env(), &url, &out, &[])?);
    let ids: Vec<i64> = rows(&out)?.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, printed, "restored ids vs every id the app printed");
    assert_eq!(generations(&s3.keys("shop/app/"), "shop/app/").len(), 1, "one writer, one generation");
    let events = kinds(&c.events("shop")?);
    for bad in ["duplicate_instance", "lease_expired", "fenced", "forked"] {
        assert!(!events.iter().any(|e| e == bad), "unexpected {bad} event: {events:?}");
    }
    Ok(())
}

/// Waits until a renew sent after the controller (re)started was answered: the confirmation
/// deadline is then past start + TTL·5/6, which no renew answered by the previous process reaches.
fn wait_renewed_by(a: &mut Agent, c: &Controller) -> Result<()> {
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    let until = started + c.ttl.as_secs_f64() * 5.0 / 6.0;
    a.wait_metric("walfleet_lease_confirmed_until_seconds", |v| v > until, T)
        .with_context(|| format!("no renew answered by the restarted controller; its log:\n{}", c.stderr()))?;
    Ok(())
}

/// gRPC over rustls: the controller serves a certificate from a private CA; an agent and the
/// CLI that trust that CA work, a CLI that does not is refused.
#[test]
fn agent_and_cli_talk_to_the_controller_over_tls() -> Result<()> {
    let s3 = S3Server::new()?;
    let dir = tempfile::tempdir()?;
    let (ca, cert, key) = tests::controller::tls_files(dir.path())?;
    let store = format!("sqlite://{}", dir.path().join("walfleet.db").display());
    let mut c =
        Controller::start(&store, Duration::from_secs(3), &["--tls-cert", utf8(&cert)?, "--tls-key", utf8(&key)?])?;
    assert!(c.url().starts_with("https://"));
    let out = c.cli(&["projects", "list"])?;
    assert!(!out.status.success(), "a CLI that does not trust the CA must fail");
    c.ca = Some(ca.clone());
    let token = c.create_project("shop")?;

    let mut env = fleet_env(&s3, &c, &token);
    env.push(("WALFLEET_CONTROLLER_CA".into(), utf8(&ca)?.to_string()));
    let db = dir.path().join("app.db");
    let mut a = run_mode(&db, &s3.url("shop/app"), &tests::apps::argv("writer.py", &db, &["--rate", "20"]), &env)?;
    a.wait_http_ok("/readyz", T)?;
    a.wait_metric("walfleet_lease_held", |v| v == 1.0, T)?;
    wait_printed(&mut a, 5, "app over tls")?;
    let dbs = c.cli_json(&["databases", "--project", "shop"])?;
    assert_eq!(dbs[0]["holder_instance_id"].as_str().map(|s| !s.is_empty()), Some(true), "no holder: {dbs}");
    a.sigterm()?;
    assert_eq!(a.wait(T)?.code(), Some(0), "agent exit:\n{}", a.stderr());
    Ok(())
}

/// Under the wait policy a second instance waits for the lease, bounded by its lease wait, then
/// exits non-zero naming the holder, so the platform shows the failure; the holder is untouched.
#[test]
fn wait_policy_newcomer_gives_up_naming_the_holder() -> Result<()> {
    let s3 = S3Server::new()?;
    let c = Controller::start_sqlite(Duration::from_secs(3))?;
    let token = c.create_project("shop")?;
    let out = c.cli(&["policy", "shop/app", "wait"])?;
    assert!(out.status.success(), "{out:?}");
    let url = s3.url("shop/app");
    let env = fleet_env(&s3, &c, &token);
    let (da, dbd) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (a_db, b_db) = (da.path().join("app.db"), dbd.path().join("app.db"));
    let mut a = run_mode(&a_db, &url, &tests::apps::argv("writer.py", &a_db, &["--rate", "20"]), &env)?;
    wait_printed(&mut a, 5, "instance A")?;

    let mut env_b = env.clone();
    env_b.push(("WALFLEET_LEASE_WAIT".into(), "3s".into()));
    let mut b = run_mode(&b_db, &url, &tests::apps::argv("writer.py", &b_db, &["--rate", "20"]), &env_b)?;
    let st = b.wait(T)?;
    assert!(!st.success(), "the waiting instance must exit non-zero");
    assert!(printed_ids(&b.stdout()).is_empty(), "the waiting instance's app must never start");
    let holder = c.cli_json(&["databases", "--project", "shop"])?[0]["holder_instance_id"].as_str().map(String::from);
    let holder = holder.context("holder")?;
    assert!(b.stderr().contains(&holder), "B's error does not name holder {holder}:\n{}", b.stderr());
    let n = printed_ids(&a.stdout()).len();
    wait_printed(&mut a, n + 5, "instance A after B gave up")?;
    a.sigterm()?;
    assert_eq!(a.wait(T)?.code(), Some(0));
    assert!(kinds(&c.events("shop")?).iter().any(|k| k == "duplicate_instance"));
    Ok(())
}
