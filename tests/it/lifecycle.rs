//! The life of a deployed agent: redeploys that wipe the disk, an image that ships an old
//! database, an object-store outage, a lossy network, a sidecar that crashes anywhere, bad
//! configuration, and an app that asks whether its last commit is durable.

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tests::replica::{generations, parse_ltx_key, remove_database, strip_ansi, wait_durable_past, wait_shipped};
use tests::sqlite::{content_hash, integrity_check, open_ro, open_wal};
use tests::{restore, Agent, App, Proxy, S3Server};

const T: Duration = Duration::from_secs(30);
/// Longer than the agent's 1 s sync interval: see [`wait_shipped`].
const SETTLE: Duration = Duration::from_secs(2);

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

fn replicate(db: &Path, url: &str, env: &[(String, String)]) -> Result<Agent> {
    Agent::start(&["replicate", utf8(db)?, url], env)
}

/// `walfleet-agent run DB URL -- APP…`
fn run_mode(db: &Path, url: &str, app: &[String], env: &[(String, String)]) -> Result<Agent> {
    let mut args = vec!["run", utf8(db)?, url, "--"];
    args.extend(app.iter().map(String::as_str));
    Agent::start(&args, env)
}

fn ids(db: &Path) -> Result<Vec<i64>> {
    let conn = open_ro(db)?;
    let mut stmt = conn.prepare("SELECT id FROM items ORDER BY id")?;
    let ids = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}

/// The integer lines of `text` (writer.py prints one committed id per line).
fn printed_ids(text: &str) -> Vec<i64> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Restores the latest state of `url` into a fresh `out` and checks its integrity.
fn restore_ok(env: &[(String, String)], url: &str, out: &Path) -> Result<()> {
    let o = restore(env, url, out, &[])?;
    tests::process::expect_success("walfleet-agent restore", &o);
    assert_eq!(integrity_check(out)?, "ok", "integrity of the database restored from {url}");
    Ok(())
}

/// Files in `dir` whose name starts with `prefix`, sorted.
fn files_starting(dir: &Path, prefix: &str) -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    Ok(v)
}

/// 20 redeploys in run mode, each on an empty disk: every cycle restores what the previous
/// one shipped (the writer continues exactly after the last id it printed), and the replica
/// at the end holds exactly the ids the writer printed, once each.
#[test]
fn redeploy_twenty_times_loses_nothing() -> Result<()> {
    let s3 = S3Server::new()?;
    let url = s3.url("redeploy/app");
    let data = tempfile::tempdir()?;
    let dir = data.path().join("data");
    let db = dir.join("app.db");
    let app = tests::apps::argv("writer.py", &db, &["--rate", "50"]);
    let mut env = s3.env();
    env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    let mut printed: Vec<i64> = Vec::new();
    for cycle in 0..20 {
        std::fs::create_dir_all(&dir)?;
        let mut agent = run_mode(&db, &url, &app, &env)?;
        // A few commits of this cycle (the writer's stdout is the agent's).
        let start = Instant::now();
        while printed_ids(&agent.stdout()).len() < 5 {
            if let Some(st) = agent.try_status()? {
                bail!("cycle {cycle}: agent exited ({st}) before the writer committed 5 rows");
            }
            if start.elapsed() > T {
                bail!("cycle {cycle}: the writer printed {} ids in {T:?}", printed_ids(&agent.stdout()).len());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        agent.sigterm()?;
        let st = agent.wait(Duration::from_secs(20))?;
        assert_eq!(st.code(), Some(0), "cycle {cycle}: agent exit (the writer's code is 0)\n{}", agent.stderr());
        let got = printed_ids(&agent.stdout());
        let first = printed.last().map_or(1, |l| l + 1);
        assert_eq!(
            got.first().copied(),
            Some(first),
            "cycle {cycle}: the writer started at {:?}, so the restore before it lacked ids the previous cycle printed",
            got.first()
        );
        printed.extend(got);
        std::fs::remove_dir_all(&dir)?;
    }
    let out = data.path().join("restored.db");
    restore_ok(&s3.env(), &url, &out)?;
    let restored = ids(&out)?;
    assert_eq!(restored.len(), printed.len(), "restored {} rows, the writer printed {}", restored.len(), printed.len());
    assert_eq!(restored, printed, "restored ids vs every id the writer printed over 20 redeploys");
    Ok(())
}

/// A container image that ships an older copy of the database (no walfleet state beside it):
/// run mode moves it aside, restores the replica, and the app sees the newer data; the
/// replica's history is untouched.
#[test]
fn stale_image_database_is_moved_aside() -> Result<()> {
    let s3 = S3Server::new()?;
    let url = s3.url("stale/app");
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let image = data.path().join("image.db");

    assert!(App::writer(&db, &["--count", "5", "--rate", "0"])?.finish(T)?.success());
    assert!(!Path::new(&format!("{}-wal", db.display())).exists(), "writer left a WAL behind");
    std::fs::copy(&db, &image)?;
    let old_hash = content_hash(&image)?;

    let mut agent = replicate(&db, &url, &s3.env())?;
    agent.wait_http_ok("/readyz", T)?;
    assert!(App::writer(&db, &["--count", "25", "--rate", "50"])?.finish(T)?.success());
    wait_shipped(&mut agent, SETTLE, T)?;
    agent.sigterm()?;
    assert!(agent.wait(T)?.success(), "replicate agent exit on SIGTERM:\n{}", agent.stderr());
    let new_hash = content_hash(&db)?;
    assert_eq!(ids(&db)?.len(), 30);

    // The redeploy: a fresh disk holding only the image's database.
    remove_database(&db)?;
    std::fs::copy(&image, &db)?;
    let count = [
        tests::bins::python().to_string_lossy().into_owned(),
        "-c".into(),
        "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM items').fetchone()[0])"
            .into(),
        utf8(&db)?.to_owned(),
    ];
    let mut agent = run_mode(&db, &url, &count, &s3.env())?;
    let st = agent.wait(T)?;
    assert!(st.success(), "run mode exit: {st}\n{}", agent.stderr());
    assert_eq!(agent.stdout().trim(), "30", "rows the app saw; agent log:\n{}", agent.stderr());

    let aside: Vec<String> = files_starting(data.path(), "app.db.stale-")?
        .into_iter()
        .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
        .collect();
    assert_eq!(aside.len(), 1, "moved-aside databases: {aside:?}");
    let aside = data.path().join(&aside[0]);
    assert_eq!(content_hash(&aside)?, old_hash, "the moved-aside file is the image's database");
    assert_eq!(content_hash(&db)?, new_hash, "the database in place after run mode");

    let out = data.path().join("restored.db");
    restore_ok(&s3.env(), &url, &out)?;
    assert_eq!(content_hash(&out)?, new_hash, "the replica after the stale start");
    Ok(())
}

/// What the outage loop saw in the agent's metrics.
#[derive(Debug, Default)]
struct Seen {
    blocked: bool,
    errors_max: f64,
    local_max: f64,
}

/// Scrapes the agent every 250 ms for `length`, failing at once if the agent or the writer
/// exits.
fn watch(agent: &mut Agent, writer: &mut App, length: Duration, seen: &mut Seen) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < length {
        if let Some(st) = agent.try_status()? {
            bail!("agent exited ({st}) during the outage");
        }
        if let Some(st) = writer.try_status()? {
            bail!("writer exited ({st}) during the outage:\n{}", writer.stderr());
        }
        if let Ok(m) = agent.metrics() {
            seen.blocked |= m.sum("walfleet_upload_blocked") == 1.0;
            let e = m.sum("walfleet_upload_errors_total");
            seen.errors_max = seen.errors_max.max(e);
            seen.local_max = seen.local_max.max(m.sum("walfleet_local_txid"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// 60 s without object storage while the app writes: first 30 s of a hung network (requests
/// accepted, never answered), then 30 s of refused connections (the hung ones stay hung: only
/// the client's own timeout frees them). The app never notices; the agent reports that it is
/// blocked, counts failed attempts and keeps capturing; once storage is back everything
/// drains and restores exactly.
#[test]
fn storage_outage_sixty_seconds() -> Result<()> {
    let s3 = S3Server::new()?;
    let proxy = Proxy::new(s3.addr())?;
    let env = s3.env_for(&proxy.endpoint());
    let url = s3.url("outage/app");
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");

    let mut writer = App::writer(&db, &["--rate", "20", "--value-size", "500"])?;
    writer.wait_lines(1, T)?;
    let mut agent = replicate(&db, &url, &env)?;
    agent.wait_metric("walfleet_durable_txid", |v| v >= 3.0, T)?;

    let before = agent.metrics()?;
    let lines_before = writer.line_count();
    let errors_before = before.sum("walfleet_upload_errors_total");
    let local_before = before.sum("walfleet_local_txid");
    let mut seen = Seen { errors_max: errors_before, local_max: local_before, ..Seen::default() };

    proxy.set_blackhole(true);
    // The agent's kept-alive connections were made before: they go dead too.
    proxy.cut_all();
    watch(&mut agent, &mut writer, Duration::from_secs(30), &mut seen)?;
    proxy.set_blackhole(false);
    proxy.set_drop_fraction(1.0);
    watch(&mut agent, &mut writer, Duration::from_secs(30), &mut seen)?;
    let m = agent.metrics()?;
    assert!(writer.line_count() > lines_before + 100, "the writer stalled: {} → {}", lines_before, writer.line_count());
    assert!(
        seen.blocked,
        "walfleet_upload_blocked never 1 during 60 s without storage: {seen:?} (before: errors {errors_before}, \
         local {local_before})\n{}",
        m.dump()
    );
    assert!(
        seen.errors_max >= errors_before + 2.0,
        "walfleet_upload_errors_total did not rise during 60 s without storage: {seen:?} (before: {errors_before})\n{}",
        m.dump()
    );
    assert!(seen.local_max > local_before, "the agent captured nothing during the outage: {seen:?}\n{}", m.dump());

    proxy.heal();
    let local_at_heal = agent.metrics()?.sum("walfleet_local_txid") as u64;
    wait_durable_past(&mut agent, local_at_heal, Duration::from_secs(90))?;
    assert!(writer.stop(T)?.success(), "writer exit:\n{}", writer.stderr());
    assert!(!writer.stderr().contains("Traceback"), "writer errors:\n{}", writer.stderr());
    wait_shipped(&mut agent, SETTLE, T)?;
    let m = agent.metrics()?;
    assert_eq!(m.sum("walfleet_upload_blocked"), 0.0, "blocked after the drain:\n{}", m.dump());
    assert_eq!(m.sum("walfleet_lag_seconds"), 0.0, "lag after the drain:\n{}", m.dump());
    let want = content_hash(&db)?;
    agent.sigterm()?;
    assert!(agent.wait(T)?.success(), "agent exit on SIGTERM");

    let out = data.path().join("restored.db");
    restore_ok(&s3.env(), &url, &out)?;
    assert_eq!(content_hash(&out)?, want);
    assert_eq!(ids(&out)?, writer.committed_ids());
    Ok(())
}

/// 20 s of writes through a network that drops a fifth of all connections, cuts live ones
/// every 0.7 s and delays every packet by 50 ms: the restore is exact and the level-0 files are one per transaction,
/// contiguous, none twice.
#[test]
fn lossy_network_restores_exactly() -> Result<()> {
    let s3 = S3Server::new()?;
    let proxy = Proxy::new(s3.addr())?;
    let env = s3.env_for(&proxy.endpoint());
    let prefix = "lossy/app";
    let url = s3.url(prefix);
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");

    assert!(App::writer(&db, &["--count", "1", "--rate", "0"])?.finish(T)?.success());
    let mut agent = replicate(&db, &url, &env)?;
    agent.wait_http_ok("/readyz", T)?;
    proxy.set_drop_fraction(0.2);
    proxy.set_delay(Duration::from_millis(50));
    let mut writer = App::writer(&db, &["--rate", "20", "--seconds", "20", "--value-size", "400"])?;
    // The agent keeps its connections alive: cut them now and then so that new ones are
    // made, a fifth of which the proxy drops.
    let start = Instant::now();
    while writer.is_running() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("writer still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(700));
        proxy.cut_all();
    }
    assert!(writer.finish(T)?.success(), "writer:\n{}", writer.stderr());
    let dropped = proxy.stats().dropped;
    proxy.heal();
    let shipped = wait_shipped(&mut agent, SETTLE, Duration::from_secs(90))?;
    assert!(dropped > 0, "the proxy dropped no connection: {:?}", proxy.stats());
    let want = content_hash(&db)?;
    agent.sigterm()?;
    assert!(agent.wait(T)?.success(), "agent exit on SIGTERM");

    let out = data.path().join("restored.db");
    restore_ok(&s3.env(), &url, &out)?;
    assert_eq!(content_hash(&out)?, want);

    let keys = s3.keys(&format!("{prefix}/"));
    let gens = generations(&keys, &format!("{prefix}/"));
    assert_eq!(gens.len(), 1, "generations: {gens:?}");
    let mut l0: Vec<(u64, u64)> =
        keys.iter().filter_map(|k| parse_ltx_key(k)).filter(|(l, _, _)| *l == 0).map(|(_, a, b)| (a, b)).collect();
    l0.sort();
    assert!(!l0.is_empty(), "no level-0 files in {keys:?}");
    assert_eq!(l0[0].0, 1, "first level-0 file: {:?}", l0[0]);
    for w in l0.windows(2) {
        assert_eq!(w[1].0, w[0].1 + 1, "level-0 files not contiguous (gap or duplicate): {:?} then {:?}", w[0], w[1]);
    }
    assert_eq!(l0.last().map(|x| x.1), Some(shipped.durable_txid), "last level-0 file vs durable txid");
    Ok(())
}

/// A sidecar that is killed with SIGKILL 50 times at random moments (start-up, base copy,
/// upload, idle) while the app keeps writing to the same database: no restart treats the
/// app's database as stale, and after one clean run the restore is exact.
#[test]
fn crash_anywhere_fifty_kills() -> Result<()> {
    let seed = tests::test_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let s3 = S3Server::new()?;
    let url = s3.url("crash/app");
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");

    let mut writer = App::writer(&db, &["--rate", "20", "--value-size", "300"])?;
    writer.wait_lines(1, T)?;
    for i in 0..50 {
        let mut agent = replicate(&db, &url, &s3.env())?;
        let ms = rng.gen_range(50..=800);
        // The fault: a kill at a random moment of the agent's life, not a synchronisation.
        std::thread::sleep(Duration::from_millis(ms));
        if let Some(st) = agent.try_status()? {
            bail!("kill {i} (after {ms} ms, seed {seed}): agent had already exited ({st}):\n{}", agent.stderr());
        }
        agent.sigkill()?;
        let aside = files_starting(data.path(), "app.db.stale-")?;
        assert!(
            aside.is_empty(),
            "kill {i} (after {ms} ms, seed {seed}): the agent moved the live database aside: {aside:?}"
        );
        if let Some(st) = writer.try_status()? {
            bail!("kill {i} (seed {seed}): writer exited ({st}):\n{}", writer.stderr());
        }
    }
    let mut agent = replicate(&db, &url, &s3.env())?;
    agent.wait_http_ok("/readyz", T)?;
    writer.wait_lines(writer.line_count() + 10, T)?;
    assert!(writer.stop(T)?.success(), "writer exit:\n{}", writer.stderr());
    wait_shipped(&mut agent, SETTLE, Duration::from_secs(60))?;
    let want = content_hash(&db)?;
    agent.sigterm()?;
    assert!(agent.wait(T)?.success(), "agent exit on SIGTERM:\n{}", agent.stderr());
    assert!(files_starting(data.path(), "app.db.stale-")?.is_empty(), "a stale copy was moved aside (seed {seed})");

    let out = data.path().join("restored.db");
    restore_ok(&s3.env(), &url, &out)?;
    assert_eq!(content_hash(&out)?, want, "seed {seed}");
    assert_eq!(ids(&out)?, writer.committed_ids(), "seed {seed}");
    Ok(())
}

/// `walfleet-agent ARGS…` with `env` only: every `WALFLEET_*` of the test's own environment
/// removed, so the case is exactly what it says.
fn agent_clean(args: &[&str], env: &[(String, String)]) -> Result<Output> {
    let mut cmd = Command::new(tests::bins::agent()?);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("WALFLEET_") {
            cmd.env_remove(k);
        }
    }
    tests::process::apply_env(&mut cmd, env);
    cmd.env("WALFLEET_HTTP_ADDR", format!("127.0.0.1:{}", tests::free_port()));
    tests::process::run("walfleet-agent (bad config)", cmd, Duration::from_secs(20))
}

/// Asserts the agent refused (non-zero exit) and its stderr names one of `names`.
fn assert_refused(what: &str, o: &Output, names: &[&str]) {
    let err = strip_ansi(&String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "{what}: exit {} (expected a refusal); stderr:\n{err}", o.status);
    assert!(names.iter().any(|n| err.contains(n)), "{what}: stderr names none of {names:?}:\n{err}");
}

/// Bad settings are refused before anything happens, naming the setting: nothing is written
/// to the replica, no database is created, the app is not started.
#[test]
fn bad_config_is_refused_naming_the_setting() -> Result<()> {
    let s3 = S3Server::new()?;
    let url = s3.url("badcfg/app");
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let dbs = utf8(&db)?;
    let marker = data.path().join("app-started");
    let touch = ["touch".to_string(), utf8(&marker)?.to_string()];
    let with = |k: &str, v: &str| {
        let mut env = s3.env();
        env.push((k.into(), v.into()));
        env
    };

    let o = agent_clean(&["replicate", dbs, &url], &with("WALFLEET_SYNC_INTERVAL", "banana"))?;
    assert_refused("replicate, WALFLEET_SYNC_INTERVAL=banana", &o, &["WALFLEET_SYNC_INTERVAL", "sync-interval"]);
    let mut args = vec!["run", dbs, url.as_str(), "--"];
    args.extend(touch.iter().map(String::as_str));
    let o = agent_clean(&args, &with("WALFLEET_SYNC_INTERVAL", "banana"))?;
    assert_refused("run, WALFLEET_SYNC_INTERVAL=banana", &o, &["WALFLEET_SYNC_INTERVAL", "sync-interval"]);
    assert!(!marker.exists(), "run mode started the app despite a bad setting");

    let toml = data.path().join("unknown.toml");
    std::fs::write(
        &toml,
        format!(
            "sync_interval = \"1s\"\nsync_intervall = \"2s\"\n\n[[databases]]\npath = \"{dbs}\"\nreplica = \"{url}\"\n"
        ),
    )?;
    let o = agent_clean(&["replicate", "--config", utf8(&toml)?], &s3.env())?;
    assert_refused("TOML with an unknown key", &o, &["sync_intervall"]);
    let toml2 = data.path().join("unknown-db.toml");
    std::fs::write(&toml2, format!("[[databases]]\npath = \"{dbs}\"\nreplica = \"{url}\"\nreplicaa = \"x\"\n"))?;
    let o = agent_clean(&["replicate", "--config", utf8(&toml2)?], &s3.env())?;
    assert_refused("TOML with an unknown key in [[databases]]", &o, &["replicaa"]);

    let toml3 = data.path().join("unset.toml");
    std::fs::write(
        &toml3,
        format!("[[databases]]\npath = \"{dbs}\"\nreplica = \"s3://test/${{WALFLEET_LIFECYCLE_UNSET_VAR}}/app\"\n"),
    )?;
    let o = agent_clean(&["replicate", "--config", utf8(&toml3)?], &s3.env())?;
    assert_refused("TOML with ${UNSET}", &o, &["WALFLEET_LIFECYCLE_UNSET_VAR"]);

    let o = agent_clean(&["replicate", dbs], &s3.env())?;
    assert_refused("replicate without a replica URL", &o, &["WALFLEET_REPLICA_URL", "replica URL"]);
    let o = agent_clean(&["replicate"], &s3.env())?;
    assert_refused("replicate with nothing", &o, &["WALFLEET_DB_PATH", "database path"]);

    assert_eq!(s3.keys(""), Vec::<String>::new(), "objects written by refused agents");
    let left: Vec<_> = std::fs::read_dir(data.path())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".toml"))
        .collect();
    assert!(left.is_empty(), "files created by refused agents: {left:?}");
    Ok(())
}

/// `GET /durable` answers 200 only once the app's latest commit is in object storage: a
/// restore taken right after the answer holds the row, three times over; an unreachable
/// TXID times out with 504.
#[test]
fn durable_endpoint_waits_for_the_latest_commit() -> Result<()> {
    let s3 = S3Server::new()?;
    let url = s3.url("durable/app");
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let conn = open_wal(&db)?;
    conn.execute_batch("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")?;
    let mut agent = replicate(&db, &url, &s3.env())?;
    agent.wait_http_ok("/readyz", T)?;
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let base = format!("http://{}", agent.http_addr());

    for i in 1..=3i64 {
        conn.execute("INSERT INTO notes(id, body) VALUES (?1, ?2)", rusqlite::params![i, format!("note {i}")])?;
        let want = content_hash(&db)?;
        let resp = client.get(format!("{base}/durable?timeout=10s")).send()?;
        let code = resp.status().as_u16();
        let body = resp.text()?;
        assert_eq!(code, 200, "GET /durable after note {i}: {body}");
        let txid: u64 = body.trim().parse().with_context(|| format!("GET /durable body {body:?}"))?;
        let m = agent.metrics()?;
        assert!(m.sum("walfleet_durable_txid") >= txid as f64, "durable_txid below the answered {txid}:\n{}", m.dump());
        let out = data.path().join(format!("restored-{i}.db"));
        restore_ok(&s3.env(), &url, &out)?;
        assert_eq!(content_hash(&out)?, want, "restore right after /durable answered 200 for note {i}");
    }

    let local = agent.metrics()?.sum("walfleet_local_txid") as u64;
    let resp = client.get(format!("{base}/durable?txid={}&timeout=1s", local + 1000)).send()?;
    assert_eq!(resp.status().as_u16(), 504, "a TXID nobody wrote: {}", resp.text()?);
    agent.sigterm()?;
    assert!(agent.wait(T)?.success());
    Ok(())
}
