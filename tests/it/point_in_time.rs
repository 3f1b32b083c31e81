//! Point-in-time restore: every TXID and every moment between two transactions restores to
//! exactly the database the source had then.

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rusqlite::Connection;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tests::process::expect_success;
use tests::replica::{strip_ansi, wait_durable_past};
use tests::sqlite::{content_hash, integrity_check, open_wal};
use tests::{restore, Agent, S3Server};

const T: Duration = Duration::from_secs(30);
const STEPS: usize = 25;
/// A pause after each step's durability before the next write starts, so the LTX timestamps
/// (milliseconds) of neighbouring steps are well apart and a time between them exists.
const GAP: Duration = Duration::from_millis(30);

/// One step of the source's history as replicated.
struct Point {
    step: usize,
    op: &'static str,
    txid: u64,
    hash: String,
    /// Unix milliseconds just after the step was seen durable.
    durable_ms: u64,
    /// Unix milliseconds just before the next step started writing (set when it starts).
    next_start_ms: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds: `2026-01-02T15:04:05.123Z`.
fn rfc3339_ms(ms: u64) -> String {
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The `txid=` field of the agent's `restored` log line, as a number.
fn restored_txid(stderr: &str) -> Result<u64> {
    let plain = strip_ansi(stderr);
    let line = plain.lines().rev().find(|l| l.contains("restored")).context("no `restored` line in the log")?;
    let hex = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("txid="))
        .with_context(|| format!("no txid= in {line:?}"))?;
    u64::from_str_radix(hex, 16).with_context(|| format!("txid={hex} in {line:?}"))
}

fn blob(rng: &mut StdRng) -> Vec<u8> {
    let n = match rng.gen_range(0..100) {
        0..=4 => rng.gen_range(5_000..120_000), // overflow pages
        5..=29 => rng.gen_range(500..3_000),
        _ => rng.gen_range(0..200),
    };
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

fn user_tables(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 't%' ORDER BY name")?;
    let v = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(v)
}

fn row_ids(conn: &Connection, t: &str) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare(&format!("SELECT id FROM \"{t}\" ORDER BY id"))?;
    let v = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(v)
}

fn insert_rows(conn: &Connection, rng: &mut StdRng, t: &str, n: usize, step: usize) -> Result<()> {
    let extra: Vec<String> = {
        let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{t}')"))?;
        let cols: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        cols.into_iter().filter(|c| !["id", "k", "v", "step"].contains(&c.as_str())).collect()
    };
    let mut names = vec!["k".to_string(), "v".into(), "step".into()];
    names.extend(extra.iter().map(|c| format!("\"{c}\"")));
    let marks = vec!["?"; names.len()].join(", ");
    let sql = format!("INSERT INTO \"{t}\"({}) VALUES ({marks})", names.join(", "));
    let mut stmt = conn.prepare(&sql)?;
    for _ in 0..n {
        let mut vals: Vec<rusqlite::types::Value> =
            vec![format!("k{}", rng.gen_range(0..1_000_000_000u32)).into(), blob(rng).into(), (step as i64).into()];
        vals.extend(extra.iter().map(|_| rusqlite::types::Value::Integer(rng.gen_range(0..1000))));
        stmt.execute(rusqlite::params_from_iter(vals))?;
    }
    Ok(())
}

/// Runs one step `op` as one committed transaction (VACUUM on its own). Every step changes the
/// database, so every step is a new TXID.
fn run_step(conn: &Connection, rng: &mut StdRng, step: usize, op: &'static str) -> Result<()> {
    if op == "vacuum" {
        conn.execute_batch("VACUUM")?;
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let tables = user_tables(conn)?;
    let t = tables.choose(rng).context("no tables")?.clone();
    let ids = row_ids(conn, &t)?;
    match op {
        "insert" => {
            let n = rng.gen_range(1..=20);
            insert_rows(conn, rng, &t, n, step)?
        }
        "batch" => insert_rows(conn, rng, &t, 500, step)?,
        "update" | "delete" if ids.is_empty() => insert_rows(conn, rng, &t, 5, step)?,
        "update" => {
            for id in ids.choose_multiple(rng, 10.min(ids.len())).copied().collect::<Vec<_>>() {
                conn.execute(&format!("UPDATE \"{t}\" SET v = ?1, step = ?2 WHERE id = ?3"), (blob(rng), step, id))?;
            }
        }
        "delete" => {
            for id in ids.choose_multiple(rng, ids.len() / 4 + 1).copied().collect::<Vec<_>>() {
                conn.execute(&format!("DELETE FROM \"{t}\" WHERE id = ?1"), [id])?;
            }
        }
        "create_table" => {
            conn.execute_batch(&format!(
                "CREATE TABLE \"t_{step}\"(id INTEGER PRIMARY KEY, k TEXT, v BLOB, step INTEGER)"
            ))?;
            let n = rng.gen_range(1..=10);
            insert_rows(conn, rng, &format!("t_{step}"), n, step)?;
        }
        // The schedule creates a table before it drops one and starts with two.
        "drop_table" => conn.execute_batch(&format!("DROP TABLE \"{}\"", tables.last().context("a table")?))?,
        "add_column" => {
            conn.execute_batch(&format!("ALTER TABLE \"{t}\" ADD COLUMN \"c{step}\" INTEGER DEFAULT {step}"))?
        }
        "create_index" => conn.execute_batch(&format!("CREATE INDEX \"i{step}\" ON \"{t}\"(k, step)"))?,
        "drop_index" => {
            let idx: String = conn.query_row(
                "SELECT name FROM sqlite_master WHERE type='index' AND name LIKE 'i%' ORDER BY name LIMIT 1",
                [],
                |r| r.get(0),
            )?;
            conn.execute_batch(&format!("DROP INDEX \"{idx}\""))?;
        }
        "user_version" => conn.execute_batch(&format!("PRAGMA user_version = {step}"))?,
        other => bail!("unknown op {other}"),
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// [`STEPS`] operations: every kind at least once (two VACUUMs, two ALTER TABLEs), the rest
/// row changes, in a seeded order, except that a table and an index are created before
/// anything is dropped (the initial schema has two tables and one index, so drops always
/// find something).
fn schedule(rng: &mut StdRng) -> Vec<&'static str> {
    let mut ops = vec![
        "vacuum",
        "vacuum",
        "add_column",
        "add_column",
        "create_index",
        "drop_index",
        "drop_table",
        "batch",
        "user_version",
    ];
    let fill = ["insert", "insert", "insert", "update", "update", "delete"];
    while ops.len() < STEPS - 1 {
        ops.push(fill.choose(rng).copied().unwrap_or("insert"));
    }
    ops.shuffle(rng);
    ops.insert(0, "create_table");
    ops
}

fn restore_and_check(s3: &S3Server, url: &str, out: &Path, extra: &[&str], want_hash: &str) -> Result<u64> {
    let o = restore(&s3.env(), url, out, extra)?;
    expect_success(&format!("restore {extra:?}"), &o);
    let txid = restored_txid(&String::from_utf8_lossy(&o.stderr))?;
    let check = integrity_check(out)?;
    assert_eq!(check, "ok", "integrity of the restore {extra:?}");
    let got = content_hash(out)?;
    assert_eq!(got, want_hash, "content of the restore {extra:?} (restored txid {txid})");
    Ok(txid)
}

#[test]
fn restores_equal_the_source_at_random_txids_and_times() -> Result<()> {
    let seed = tests::test_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let s3 = S3Server::new()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("pitr.db");
    let url = s3.url("pitr/db");

    let conn = open_wal(&db)?;
    conn.execute_batch(
        "CREATE TABLE t0(id INTEGER PRIMARY KEY, k TEXT, v BLOB, step INTEGER);
         CREATE TABLE t1(id INTEGER PRIMARY KEY, k TEXT, v BLOB, step INTEGER);
         CREATE INDEX i0 ON t0(k);",
    )?;
    insert_rows(&conn, &mut rng, "t0", 20, 0)?;
    insert_rows(&conn, &mut rng, "t1", 20, 0)?;

    let db_s = db.to_str().context("utf-8 path")?;
    let mut agent = Agent::start(&["replicate", db_s, &url, "--sync-interval", "250ms"], &s3.env())?;
    let first = wait_durable_past(&mut agent, 0, T)?;
    let mut points = vec![Point {
        step: 0,
        op: "initial",
        txid: first,
        hash: content_hash(&db)?,
        durable_ms: now_ms(),
        next_start_ms: None,
    }];

    for (i, op) in schedule(&mut rng).into_iter().enumerate() {
        std::thread::sleep(GAP);
        let prev = points.last_mut().context("a point")?;
        let after = prev.txid;
        prev.next_start_ms = Some(now_ms());
        let step = i + 1;
        run_step(&conn, &mut rng, step, op).with_context(|| format!("step {step} ({op})"))?;
        let txid = wait_durable_past(&mut agent, after, T).with_context(|| format!("step {step} ({op})"))?;
        let durable_ms = now_ms();
        points.push(Point { step, op, txid, hash: content_hash(&db)?, durable_ms, next_start_ms: None });
    }
    drop(conn);
    agent.sigterm()?;
    let st = agent.wait(T)?;
    assert!(st.success(), "agent exit after SIGTERM: {st}");
    for p in &points {
        eprintln!("step {:2} {:13} txid {:3} {} at {}", p.step, p.op, p.txid, p.hash, rfc3339_ms(p.durable_ms));
    }

    // Restores at random recorded TXIDs (always including the first and the last).
    let mut picks: Vec<usize> =
        (1..points.len() - 1).collect::<Vec<_>>().choose_multiple(&mut rng, 6).copied().collect();
    picks.extend([0, points.len() - 1]);
    picks.sort_unstable();
    for (n, &i) in picks.iter().enumerate() {
        let p = &points[i];
        let out = dir.path().join(format!("txid-{n}.db"));
        let txid = p.txid.to_string();
        let got = restore_and_check(&s3, &url, &out, &["--txid", &txid], &p.hash)
            .with_context(|| format!("restore --txid {txid} (step {} {})", p.step, p.op))?;
        assert_eq!(got, p.txid, "restore --txid {txid} restored another TXID (step {})", p.step);
        eprintln!("restore --txid {txid}: step {} ok", p.step);
    }
    // The hex spelling of a TXID names the same point.
    let p = &points[points.len() / 2];
    let hex = format!("{:016x}", p.txid);
    restore_and_check(&s3, &url, &dir.path().join("txid-hex.db"), &["--txid", &hex], &p.hash)?;

    // Restores at random moments strictly between one step's durability and the next step's
    // first write: the newest TXID at or before such a moment is that step's.
    let between: Vec<usize> = (0..points.len() - 1).collect::<Vec<_>>().choose_multiple(&mut rng, 4).copied().collect();
    for (n, &i) in between.iter().enumerate() {
        let p = &points[i];
        let next_start = p.next_start_ms.context("a later step started")?;
        assert!(next_start > p.durable_ms + 1, "GAP leaves room between step {} and the next", p.step);
        let at = rng.gen_range(p.durable_ms + 1..next_start);
        let ts = rfc3339_ms(at);
        let out = dir.path().join(format!("time-{n}.db"));
        let got = restore_and_check(&s3, &url, &out, &["--timestamp", &ts], &p.hash)
            .with_context(|| format!("restore --timestamp {ts} (after step {} {})", p.step, p.op))?;
        let next_txid = points[i + 1].txid;
        assert!(
            (p.txid..next_txid).contains(&got),
            "restore --timestamp {ts} restored txid {got}; step {} is txid {}, the next step {next_txid}",
            p.step,
            p.txid
        );
        eprintln!("restore --timestamp {ts}: step {} (txid {got}) ok", p.step);
    }
    Ok(())
}

#[test]
fn rfc3339_formats_unix_milliseconds() {
    assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
    assert_eq!(rfc3339_ms(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
}

/// A writer that claimed a generation from an older point of its parent (a live rollback) and
/// died before writing anything of its own leaves a manifest and nothing else. The lineage
/// continues from that point, so the latest restore is the point, not the parent's end.
#[test]
fn latest_follows_a_claimed_generation_back_to_its_point() -> Result<()> {
    let s3 = S3Server::new()?;
    let url = s3.url("claimed/app");
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    let db_s = db.to_str().context("db path")?;
    let conn = open_wal(&db)?;
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")?;
    let mut agent = Agent::start(&["replicate", db_s, &url, "--sync-interval", "250ms"], &s3.env())?;
    conn.execute("INSERT INTO t(v) VALUES ('kept')", [])?;
    let point = tests::replica::wait_shipped(&mut agent, Duration::from_millis(600), T)?.durable_txid;
    let at_point = content_hash(&db)?;
    conn.execute("INSERT INTO t(v) VALUES ('rolled back')", [])?;
    let end = wait_durable_past(&mut agent, point, T)?;
    agent.sigterm()?;
    assert!(agent.wait(T)?.success(), "agent:\n{}", agent.stderr());
    assert!(end > point);

    let one = dir.path().join("latest-before.db");
    assert_eq!(restore_and_check(&s3, &url, &one, &[], &content_hash(&db)?)?, end, "latest before the claim");

    // Generation 2, claimed from generation 1 at `point`, holding nothing yet.
    let gen1 = s3.object_path("claimed/app/0000000000000001/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&gen1)?)?;
    m["generation"] = 2.into();
    m["base_txid"] = point.into();
    m["parent"] = serde_json::json!({"generation": 1, "txid": point, "checksum": "0000000000000000"});
    m["sealed"] = serde_json::Value::Null;
    m["sealed_at"] = serde_json::Value::Null;
    let gen2 = s3.object_path("claimed/app/0000000000000002/manifest.json");
    std::fs::create_dir_all(gen2.parent().context("manifest dir")?)?;
    std::fs::write(&gen2, serde_json::to_vec(&m)?)?;

    let two = dir.path().join("latest-after.db");
    assert_eq!(restore_and_check(&s3, &url, &two, &[], &at_point)?, point, "latest after the claim");
    Ok(())
}
