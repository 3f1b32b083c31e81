//! What the agent ships survives the loss of the machine: a restore from the replica alone
//! holds every committed row, nothing the app did behind the agent's back breaks that, and an
//! idle agent costs nothing.

use anyhow::{Context, Result};
use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;
use tests::replica::{log_field, remove_database, wait_shipped};
use tests::sqlite::{content_hash, integrity_check, open_ro, open_wal, page_checksum};
use tests::{restore, Agent, App, Proxy, S3Server};

const T: Duration = Duration::from_secs(30);
/// Longer than the agent's 1 s sync interval: see [`wait_shipped`].
const SETTLE: Duration = Duration::from_secs(2);

fn replicate(db: &Path, url: &str, env: &[(String, String)]) -> Result<Agent> {
    let db = db.to_str().context("db path is not UTF-8")?;
    Agent::start(&["replicate", db, url], env)
}

/// One `items` row as writer.py writes it: (id, k, v, ts).
type Row = (i64, String, Vec<u8>, f64);

fn ids(db: &Path) -> Result<Vec<i64>> {
    let conn = open_ro(db)?;
    let mut stmt = conn.prepare("SELECT id FROM items ORDER BY id")?;
    let ids = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}

/// Restores `url` into `out` (which must not exist), checks integrity and that the restored
/// file's page checksum is the `checksum=` the restore logged. Returns the restore's stderr.
fn restore_checked(env: &[(String, String)], url: &str, out: &Path) -> Result<String> {
    assert!(!out.exists(), "{} exists before the restore", out.display());
    let o = restore(env, url, out, &[])?;
    tests::process::expect_success("walfleet-agent restore", &o);
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(integrity_check(out)?, "ok", "restored database integrity");
    let logged = log_field(&log, "restored", "checksum").with_context(|| format!("no checksum= in:\n{log}"))?;
    assert_eq!(logged, format!("{:016x}", page_checksum(out)?), "logged checksum vs restored file; log:\n{log}");
    Ok(log)
}

/// The writer stops cleanly, the agent ships everything, then the machine is lost (agent
/// killed, database and every sidecar deleted): the restore holds every committed id.
#[test]
fn proof_of_persistence() -> Result<()> {
    let s3 = S3Server::new()?;
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let url = s3.url("persist/app");
    let mut writer = App::writer(&db, &["--rate", "20", "--value-size", "300"])?;
    writer.wait_lines(1, T)?;
    let mut agent = replicate(&db, &url, &s3.env())?;
    agent.wait_metric("walfleet_durable_txid", |v| v >= 3.0, T)?;
    writer.wait_lines(60, T)?;
    let st = writer.stop(T)?;
    assert!(st.success(), "writer exit: {st}");
    let committed = writer.committed_ids();
    assert!(committed.len() >= 60, "{} commits", committed.len());

    wait_shipped(&mut agent, SETTLE, T)?;
    let want = content_hash(&db)?;
    agent.sigkill()?;
    remove_database(&db)?;

    let out = tempfile::tempdir()?;
    let restored = out.path().join("restored.db");
    restore_checked(&s3.env(), &url, &restored)?;
    assert_eq!(ids(&restored)?, committed, "restored ids vs every id the writer committed");
    assert_eq!(content_hash(&restored)?, want);
    Ok(())
}

/// A store that takes longer than the agent's read timeout (10 s) to answer
/// CompleteMultipartUpload, as one does while it assembles a large object: the agent waits for
/// the answer instead of retrying a completion that already consumed the upload.
#[test]
fn a_slow_multipart_completion_is_waited_for() -> Result<()> {
    let s3 = S3Server::new()?;
    let proxy = Proxy::new(s3.addr())?;
    let env = s3.env_for(&proxy.endpoint());
    let data = tempfile::tempdir()?;
    let db = data.path().join("big.db");
    let conn = open_wal(&db)?;
    // Random bytes do not compress: the snapshot is over the 256 MiB multipart threshold.
    conn.execute_batch(
        "CREATE TABLE blobs(id INTEGER PRIMARY KEY, v BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 264)
         INSERT INTO blobs(v) SELECT randomblob(1 << 20) FROM n;",
    )?;
    drop(conn);
    proxy.set_response_hold(&["POST ", "uploadId="], Duration::from_secs(12));
    let url = s3.url("slow-complete/db");
    let mut agent = replicate(&db, &url, &env)?;
    let shipped = wait_shipped(&mut agent, SETTLE, Duration::from_secs(90))?;
    assert!(proxy.responses_held() >= 1, "no CompleteMultipartUpload passed the proxy");
    assert!(agent.try_status()?.is_none(), "agent exited:\n{}", agent.stderr());
    assert_eq!(agent.metrics()?.sum("walfleet_upload_errors_total"), 0.0, "upload errors:\n{}", agent.stderr());
    let want = content_hash(&db)?;
    agent.sigkill()?;
    let out = tempfile::tempdir()?;
    let restored = out.path().join("restored.db");
    restore_checked(&s3.env(), &url, &restored)?;
    assert_eq!(content_hash(&restored)?, want, "restored at {shipped:?}");
    Ok(())
}

/// kill -9 of the agent while the app keeps writing: the restore is a prefix of the history
/// (ids 1..=k, no holes, each row as written) that includes every commit made before a
/// moment the agent reported durable.
#[test]
fn proof_of_persistence_after_kill_9_mid_writes() -> Result<()> {
    let s3 = S3Server::new()?;
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let url = s3.url("persist/kill");
    let mut writer = App::writer(&db, &["--rate", "20", "--value-size", "300"])?;
    writer.wait_lines(1, T)?;
    let mut agent = replicate(&db, &url, &s3.env())?;
    agent.wait_metric("walfleet_durable_txid", |v| v >= 2.0, T)?;
    writer.wait_lines(40, T)?;

    // Every commit counted here is in the WAL before `seen` is read, so the capture that makes
    // transaction `seen + 1` (started after that read) contains it.
    let committed_before = writer.line_count();
    let seen = agent.metrics()?.select("walfleet_local_txid").context("local txid")?;
    let durable = agent.wait_metric("walfleet_durable_txid", |v| v > seen, T)?;
    writer.wait_lines(committed_before + 10, T)?;
    agent.sigkill()?;
    writer.wait_lines(writer.line_count() + 5, T)?;
    assert!(writer.stop(T)?.success());
    let all = writer.committed_ids();

    let out = tempfile::tempdir()?;
    let restored = out.path().join("restored.db");
    restore_checked(&s3.env(), &url, &restored)?;
    let got = ids(&restored)?;
    let k = got.len();
    assert_eq!(got, (1..=k as i64).collect::<Vec<_>>(), "restored ids are not 1..=k");
    assert!(
        k >= committed_before,
        "restored {k} rows, but {committed_before} were committed before durable txid {durable} (> {seen})"
    );
    assert!(k <= all.len(), "restored {k} rows, the writer committed only {}", all.len());

    // Each restored row is byte for byte the row the app wrote.
    let src = open_ro(&db)?;
    let dst = open_ro(&restored)?;
    let rows = |c: &Connection| -> rusqlite::Result<Vec<Row>> {
        let mut stmt = c.prepare("SELECT id, k, v, ts FROM items WHERE id <= ?1 ORDER BY id")?;
        let v = stmt.query_map([k as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect();
        v
    };
    assert!(rows(&src)? == rows(&dst)?, "restored rows differ from the source's first {k} rows");
    Ok(())
}

/// After its last upload an idle agent sends nothing at all to object storage for a minute,
/// and still reacts to the next commit.
#[test]
fn idle_agent_sends_no_requests() -> Result<()> {
    let s3 = S3Server::new()?;
    let proxy = Proxy::new(s3.addr())?;
    let env = s3.env_for(&proxy.endpoint());
    let data = tempfile::tempdir()?;
    let db = data.path().join("idle.db");
    let conn = open_wal(&db)?;
    conn.execute_batch("CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT)")?;
    let mut agent = replicate(&db, &s3.url("idle/db"), &env)?;
    for i in 0..5 {
        conn.execute("INSERT INTO items(v) VALUES (?1)", [format!("row {i}")])?;
    }
    let shipped = wait_shipped(&mut agent, SETTLE, T)?;

    let requests = |a: &Agent| -> Result<(f64, f64, f64)> {
        let m = a.metrics()?;
        Ok((
            m.sum("walfleet_object_store_requests_total"),
            m.sum("walfleet_uploads_total"),
            m.sum("walfleet_upload_errors_total"),
        ))
    };
    let before = requests(&agent)?;
    let bytes_before = proxy.bytes_up();
    // The measurement itself: one minute without writes.
    let idle = Duration::from_secs(60);
    let start = std::time::Instant::now();
    while start.elapsed() < idle {
        std::thread::sleep(Duration::from_millis(500));
        assert!(agent.try_status()?.is_none(), "agent exited while idle");
    }
    let after = requests(&agent)?;
    let m = agent.metrics()?;
    assert_eq!(
        proxy.bytes_up() - bytes_before,
        0,
        "bytes sent to object storage while idle; requests by kind:\n{}",
        m.with_prefix("walfleet_object_store_requests_total")
            .iter()
            .map(|(k, v)| format!("{k} {v}\n"))
            .collect::<String>()
    );
    assert_eq!(after, before, "request/upload/error counters moved while idle");

    conn.execute("INSERT INTO items(v) VALUES ('wake up')", [])?;
    agent.wait_metric("walfleet_durable_txid", |v| v > shipped.durable_txid as f64, Duration::from_secs(5))?;
    assert!(proxy.bytes_up() > bytes_before, "a commit after idle went nowhere");
    Ok(())
}

/// `walfleet_lag_bytes` counts committed changes not yet durable: once the agent reports a
/// commit durable and nothing else was written, it is zero (not the size of the last upload).
#[test]
fn lag_bytes_return_to_zero_once_durable() -> Result<()> {
    let s3 = S3Server::new()?;
    let data = tempfile::tempdir()?;
    let db = data.path().join("lag.db");
    let conn = open_wal(&db)?;
    conn.execute_batch("CREATE TABLE items(id INTEGER PRIMARY KEY, v BLOB)")?;
    let mut agent = replicate(&db, &s3.url("lag/db"), &s3.env())?;
    let mut durable = agent.wait_metric("walfleet_durable_txid", |v| v >= 1.0, T)?;
    wait_shipped(&mut agent, SETTLE, T)?;
    for round in 0..3 {
        conn.execute("INSERT INTO items(v) VALUES (randomblob(5000))", [])?;
        durable = agent.wait_metric("walfleet_durable_txid", |v| v > durable, T)?;
        // Nothing else is written: the commit just reported durable was the only change.
        agent
            .wait_metric("walfleet_lag_bytes", |v| v == 0.0, Duration::from_secs(5))
            .with_context(|| format!("round {round}: transaction {durable} is durable, nothing else was written"))?;
    }
    Ok(())
}

/// Runs `PRAGMA wal_checkpoint(TRUNCATE)` with a short busy timeout (a reader may keep it from
/// finishing; that is the agent's right). Returns (busy, wal frames, checkpointed frames).
fn checkpoint_truncate(conn: &Connection) -> Result<(i64, i64, i64)> {
    conn.busy_timeout(Duration::from_millis(500))?;
    let r = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(r?)
}

fn app_round(conn: &Connection, round: i64) -> Result<()> {
    for i in 0..15 {
        conn.execute("INSERT INTO items(k, v) VALUES (?1, randomblob(1500))", [format!("r{round}-{i}")])?;
    }
    conn.execute("DELETE FROM items WHERE id % 4 = ?1", [round % 4])?;
    conn.execute("UPDATE items SET k = k || '+' WHERE id % 3 = 0", [])?;
    Ok(())
}

/// The app checkpoints (TRUNCATE) and VACUUMs between writes while the agent runs, then
/// writes and truncates the WAL while the agent is down; after the restart the replica still
/// restores to exactly the app's database.
#[test]
fn behind_the_agents_back() -> Result<()> {
    let s3 = S3Server::new()?;
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let url = s3.url("behind/app");
    let conn = open_wal(&db)?;
    conn.execute_batch("CREATE TABLE items(id INTEGER PRIMARY KEY, k TEXT, v BLOB)")?;
    let mut agent = replicate(&db, &url, &s3.env())?;
    agent.wait_metric("walfleet_durable_txid", |v| v >= 1.0, T)?;

    for round in 0..4 {
        app_round(&conn, round)?;
        checkpoint_truncate(&conn)?;
        conn.execute_batch("VACUUM")?;
        app_round(&conn, round + 10)?;
        checkpoint_truncate(&conn)?;
    }
    wait_shipped(&mut agent, SETTLE, T)?;
    let out = tempfile::tempdir()?;
    let first = out.path().join("first.db");
    restore_checked(&s3.env(), &url, &first)?;
    assert_eq!(content_hash(&first)?, content_hash(&db)?, "restore while the agent runs");

    agent.sigterm()?;
    let st = agent.wait(T)?;
    assert!(st.success(), "agent exit on SIGTERM: {st}");
    drop(agent);

    // The agent is down: nobody holds the WAL, so TRUNCATE empties it for real.
    app_round(&conn, 20)?;
    let (busy, _, _) = checkpoint_truncate(&conn)?;
    assert_eq!(busy, 0, "checkpoint(TRUNCATE) with no agent running");
    let wal = data.path().join("app.db-wal");
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0, "WAL truncated");
    conn.execute_batch("VACUUM")?;
    app_round(&conn, 21)?;
    checkpoint_truncate(&conn)?;
    app_round(&conn, 22)?;

    let mut agent = replicate(&db, &url, &s3.env())?;
    wait_shipped(&mut agent, SETTLE, T)?;
    app_round(&conn, 23)?;
    checkpoint_truncate(&conn)?;
    wait_shipped(&mut agent, SETTLE, T)?;
    let snapshots = agent.metrics()?.sum("walfleet_snapshots_total");
    eprintln!("restarted agent wrote {snapshots} whole-database transactions");
    let want = content_hash(&db)?;
    agent.sigterm()?;
    assert!(agent.wait(T)?.success(), "agent exit on SIGTERM");

    let second = out.path().join("second.db");
    restore_checked(&s3.env(), &url, &second)?;
    assert_eq!(content_hash(&second)?, want, "restore after the agent restarted on a truncated WAL");
    Ok(())
}

/// Every restart of the log after one of the agent's checkpoints is one the agent expects, also
/// when the app reopened the database in between: SQLite writes the restarting connection's own
/// count of restarts into the log header, so a new connection starts that count again at 1.
#[test]
fn restarts_by_a_reopened_app_keep_continuity() -> Result<()> {
    let s3 = S3Server::new()?;
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let url = s3.url("reopened/app");
    open_wal(&db)?.execute_batch("CREATE TABLE items(id INTEGER PRIMARY KEY, v BLOB)")?;
    let mut agent = replicate(&db, &url, &s3.env())?;
    agent.wait_metric("walfleet_durable_txid", |v| v >= 1.0, T)?;
    let mut checkpoints = agent.metrics()?.sum("walfleet_checkpoints_total");
    for _session in 0..3 {
        let conn = open_wal(&db)?;
        for _burst in 0..2 {
            // Over 4 MiB of log, one commit per row: the agent checkpoints after it, and the
            // next burst's first commit restarts the log.
            for _ in 0..1500 {
                conn.execute("INSERT INTO items(v) VALUES (randomblob(4000))", [])?;
            }
            let before = checkpoints;
            agent.wait_metric("walfleet_checkpoints_total", |v| v > before, T)?;
            checkpoints = agent.metrics()?.sum("walfleet_checkpoints_total");
        }
    }
    open_wal(&db)?.execute("DELETE FROM items WHERE id % 2 = 0", [])?;
    wait_shipped(&mut agent, SETTLE, T)?;
    let log = agent.stderr();
    assert!(!log.contains("continuity lost"), "the agent lost continuity:\n{log}");
    let restored = data.path().join("restored.db");
    restore_checked(&s3.env(), &url, &restored)?;
    assert_eq!(content_hash(&restored)?, content_hash(&db)?, "restore equals the app's database");
    agent.sigterm()?;
    assert!(agent.wait(T)?.success(), "agent exit on SIGTERM");
    Ok(())
}

/// Periodic level-9 snapshots: one appears while the app writes in bursts; the latest restore
/// equals the source whether it starts from the snapshot or (snapshot removed) from the
/// incremental history, so the snapshot holds exactly the database at its transaction; and a
/// restarted agent's new generation gets its base from the snapshot.
#[test]
fn idle_database_still_gets_the_snapshot_it_is_owed() -> Result<()> {
    let s3 = S3Server::new()?;
    let url = s3.url("owed/app");
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    assert!(App::writer(&db, &["--count", "5", "--rate", "0"])?.finish(T)?.success());
    let mut env = s3.env();
    env.push(("WALFLEET_SNAPSHOT_INTERVAL".into(), "5s".into()));
    let mut agent = replicate(&db, &url, &env)?;
    agent.wait_metric("walfleet_snapshots_total", |v| v >= 1.0, T)?; // the generation's base
                                                                     // Commits land right after the base snapshot, then the database goes idle: the next
                                                                     // snapshot falls due while nothing is being written.
    assert!(App::writer(&db, &["--count", "20", "--rate", "0"])?.finish(T)?.success());
    let last = wait_shipped(&mut agent, Duration::from_millis(1500), T)?.durable_txid;
    let covers = |s3: &S3Server| {
        s3.keys("owed/app/")
            .iter()
            .filter_map(|k| tests::replica::parse_ltx_key(k))
            .any(|(level, _, max)| level == 9 && max == last)
    };
    let start = std::time::Instant::now();
    while !covers(&s3) {
        assert!(start.elapsed() < T, "no snapshot of txid {last} while idle: {:?}", s3.keys("owed/app/"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once owed snapshot is taken, an idle database is not snapshotted again.
    let taken = agent.metrics()?.select("walfleet_snapshots_total").unwrap_or(0.0);
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(agent.metrics()?.select("walfleet_snapshots_total").unwrap_or(0.0), taken, "snapshots while idle");
    agent.sigterm()?;
    assert!(agent.wait(T)?.success(), "agent exit:\n{}", agent.stderr());
    Ok(())
}

#[test]
fn periodic_snapshots_restore_the_same_database_as_the_history() -> Result<()> {
    let s3 = S3Server::new()?;
    let url = s3.url("snap/app");
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    let mut env = s3.env();
    env.push(("WALFLEET_SNAPSHOT_INTERVAL".into(), "1s".into()));
    let mut agent = replicate(&db, &url, &env)?;
    let snapshots =
        |s3: &S3Server| -> Vec<String> { s3.keys("snap/app/").into_iter().filter(|k| k.contains("/0009/")).collect() };
    // Bursts with pauses: a snapshot is taken only when everything captured is durable.
    let start = std::time::Instant::now();
    while snapshots(&s3).is_empty() {
        assert!(start.elapsed() < T, "no snapshot after {T:?}: {:?}", s3.keys("snap/app/"));
        assert!(App::writer(&db, &["--count", "20", "--rate", "0"])?.finish(T)?.success());
        wait_shipped(&mut agent, SETTLE, T)?;
    }
    assert!(App::writer(&db, &["--count", "20", "--rate", "0"])?.finish(T)?.success());
    wait_shipped(&mut agent, SETTLE, T)?;
    agent.sigterm()?;
    assert!(agent.wait(T)?.success(), "agent exit:\n{}", agent.stderr());
    let source = content_hash(&db)?;

    let with_snapshot = dir.path().join("with.db");
    let log = restore_checked(&s3.env(), &url, &with_snapshot)?;
    assert_eq!(content_hash(&with_snapshot)?, source, "restore starting from the snapshot");
    // Within a few seconds nothing is compacted yet: one file for several transactions is the
    // snapshot.
    let files = log_field(&log, "restored", "files").context("files= in the restore log")?;
    let txid = log_field(&log, "restored", "txid").context("txid= in the restore log")?;
    let snap_max = snapshots(&s3).iter().filter_map(|k| tests::replica::parse_ltx_key(k)).map(|(_, _, max)| max).max();
    assert!(
        files
            .parse::<u64>()
            .ok()
            .zip(u64::from_str_radix(&txid, 16).ok())
            .zip(snap_max)
            .is_some_and(|((f, t), m)| f <= 2 && f < t && m > 1),
        "the restore did not start from the snapshot (files={files}, txid={txid}, snapshot up to {snap_max:?})"
    );

    // The next generation copies its base from the snapshot onwards.
    let mut agent = replicate(&db, &url, &s3.env())?;
    wait_shipped(&mut agent, SETTLE, T)?;
    agent.sigterm()?;
    assert!(agent.wait(T)?.success(), "agent exit:\n{}", agent.stderr());
    let gens = tests::replica::generations(&s3.keys("snap/app/"), "snap/app/");
    let newest = gens.last().context("generations")?;
    assert!(
        snapshots(&s3).iter().any(|k| k.starts_with(&format!("snap/app/{newest}/"))),
        "the second generation's base has no snapshot: {:?}",
        s3.keys(&format!("snap/app/{newest}/"))
    );

    // Without any snapshot the incremental history alone gives the same database.
    for k in snapshots(&s3) {
        std::fs::remove_file(s3.object_path(&k))?;
    }
    let without = dir.path().join("without.db");
    restore_checked(&s3.env(), &format!("{url}/{}", gens[0]), &without)?;
    assert_eq!(content_hash(&without)?, source, "restore from the incremental history only");
    Ok(())
}
