//! A database larger than 1 GiB (so it holds SQLite's lock-byte page) replicates and restores
//! exactly, at 4 KiB and 64 KiB pages, with the agent and the restore staying in bounded memory.

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use rusqlite::Connection;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::memory::{restore_measured, PeakRss};
use tests::replica::wait_durable_past;
use tests::sqlite::{content_hash, integrity_check, page_checksum};
use tests::{Agent, S3Server};

/// The database size to build: past the lock-byte page at offset 1 GiB.
const TARGET_BYTES: u64 = 1_100 * 1024 * 1024;
/// The memory bound the agent and the restore must stay under whatever the database size.
const RSS_LIMIT_KIB: u64 = 64 * 1024;
/// Long enough for a debug-build agent to ship or restore 1.1 GiB on a busy 2-core machine.
const BIG: Duration = Duration::from_secs(300);

fn random_blob(rng: &mut StdRng, min: usize, max: usize) -> Vec<u8> {
    let mut v = vec![0u8; rng.gen_range(min..max)];
    rng.fill_bytes(&mut v);
    v
}

/// Builds a WAL-mode database of about [`TARGET_BYTES`] with `page_size`: random blobs (most
/// spanning overflow pages) in large transactions, plus an index. It is written without a
/// journal and then switched to WAL, which is how a big import would be done too.
fn build(db: &Path, page_size: u32, rng: &mut StdRng) -> Result<()> {
    let conn = Connection::open(db)?;
    conn.execute_batch(&format!(
        "PRAGMA page_size = {page_size};
         PRAGMA journal_mode = OFF;
         PRAGMA synchronous = OFF;
         CREATE TABLE big(id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB NOT NULL);
         CREATE INDEX big_k ON big(k);
         CREATE TABLE small(id INTEGER PRIMARY KEY, n INTEGER, s TEXT);"
    ))?;
    let got: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    if got != page_size {
        bail!("page_size is {got}, wanted {page_size}");
    }
    let mut written = 0u64;
    while written < TARGET_BYTES {
        conn.execute_batch("BEGIN")?;
        {
            let mut big = conn.prepare("INSERT INTO big(k, v) VALUES (?1, ?2)")?;
            let mut small = conn.prepare("INSERT INTO small(n, s) VALUES (?1, ?2)")?;
            let mut in_tx = 0u64;
            while in_tx < 64 * 1024 * 1024 {
                let v = random_blob(rng, 1_000, 400_000);
                in_tx += v.len() as u64;
                big.execute((format!("k{:016x}", rng.gen::<u64>()), v))?;
                small.execute((rng.gen::<i64>(), format!("s{}", rng.gen::<u32>())))?;
            }
            written += in_tx;
        }
        conn.execute_batch("COMMIT")?;
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        bail!("journal_mode is {mode}, not wal");
    }
    Ok(())
}

/// The `checksum=` field of the agent's `restored` log line (ANSI colours removed).
fn restored_checksum(stderr: &str) -> Option<u64> {
    let mut plain = String::with_capacity(stderr.len());
    let mut chars = stderr.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    let line = plain.lines().rev().find(|l| l.contains("restored"))?;
    let field = line.split("checksum=").nth(1)?;
    let hex: String = field.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    u64::from_str_radix(&hex, 16).ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn one_size(page_size: u32, rng: &mut StdRng) -> Result<Peaks> {
    let s3 = S3Server::new()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("big.db");
    let url = s3.url(&format!("large/p{page_size}"));

    let t = Instant::now();
    build(&db, page_size, rng)?;
    let size = std::fs::metadata(&db)?.len();
    assert!(size > 1 << 30, "the database must extend past the lock-byte page: {size} bytes");
    eprintln!("[{page_size}] built {:.1} MiB in {:.1?}", size as f64 / 1048576.0, t.elapsed());

    let t = Instant::now();
    let db_s = db.to_str().context("utf-8 path")?;
    let mut agent = Agent::start(&["replicate", db_s, &url], &s3.env())?;
    let agent_rss = PeakRss::watch(agent.process().pid())?;
    let snapshot = wait_durable_past(&mut agent, 0, BIG).context("the first snapshot")?;
    eprintln!("[{page_size}] snapshot durable as txid {snapshot} in {:.1?}", t.elapsed());

    // A few more transactions on top of the snapshot: new rows, an update, a delete.
    let conn = tests::sqlite::open_wal(&db)?;
    for i in 0..5 {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for _ in 0..4 {
            conn.execute(
                "INSERT INTO big(k, v) VALUES (?1, ?2)",
                (format!("after{i}-{}", rng.gen::<u32>()), random_blob(rng, 100, 300_000)),
            )?;
        }
        conn.execute("UPDATE big SET v = ?1 WHERE id = ?2", (random_blob(rng, 10, 100_000), 1 + i * 7))?;
        conn.execute("DELETE FROM small WHERE id % 97 = ?1", [i])?;
        conn.execute_batch("COMMIT")?;
    }
    let last = wait_durable_past(&mut agent, snapshot, BIG).context("the writes after the snapshot")?;
    drop(conn);
    let want = content_hash(&db)?;
    let agent_hwm_before_term = tests::memory::vm_hwm_kib(agent.process().pid()).unwrap_or(0);

    agent.sigterm()?;
    let st = agent.wait(Duration::from_secs(60))?;
    assert!(st.success(), "agent exit after SIGTERM: {st}");
    let agent_peak = agent_rss.finish().max(agent_hwm_before_term);
    eprintln!(
        "[{page_size}] agent peak RSS {:.1} MiB (VmHWM before SIGTERM {:.1} MiB); durable txid {last}",
        mib(agent_peak),
        mib(agent_hwm_before_term)
    );

    // The source's file after a full checkpoint is what a restore must reproduce page for page.
    let src = Connection::open(&db)?;
    let (busy, _, _): (i64, i64, i64) =
        src.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    assert_eq!(busy, 0, "checkpoint of the source was blocked");
    drop(src);
    let want_checksum = page_checksum(&db)?;

    let out = dir.path().join("restored.db");
    let r = restore_measured(&s3.env(), &url, &out, &[], BIG)?;
    assert!(r.status.success(), "restore failed: {}\n{}", r.status, r.stderr);
    eprintln!("[{page_size}] restore took {:.1?}, peak RSS {:.1} MiB", r.elapsed, mib(r.peak_rss_kib));
    assert_eq!(integrity_check(&out)?, "ok", "integrity of the restored database");
    assert_eq!(content_hash(&out)?, want, "content of the restored database");
    let got_checksum = page_checksum(&out)?;
    assert_eq!(
        got_checksum, want_checksum,
        "page checksum of the restore vs the checkpointed source: {got_checksum:016x} != {want_checksum:016x}"
    );
    let logged = restored_checksum(&r.stderr);
    assert_eq!(logged, Some(want_checksum), "checksum= in the restore log:\n{}", r.stderr);

    Ok(Peaks { page_size, db_bytes: size, agent_kib: agent_peak, restore_kib: r.peak_rss_kib })
}

/// Peak resident memory while replicating and restoring one database.
struct Peaks {
    page_size: u32,
    db_bytes: u64,
    agent_kib: u64,
    restore_kib: u64,
}

#[test]
fn one_gib_database_restores_exactly_4k_and_64k_pages() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(tests::test_seed());
    // Both sizes run before the memory bound is judged, so a failure shows every figure.
    let peaks = [one_size(4096, &mut rng)?, one_size(65536, &mut rng)?];
    let report: Vec<String> = peaks
        .iter()
        .map(|p| {
            format!(
                "page size {}, {:.0} MiB database: agent {:.1} MiB, restore {:.1} MiB",
                p.page_size,
                p.db_bytes as f64 / 1048576.0,
                mib(p.agent_kib),
                mib(p.restore_kib)
            )
        })
        .collect();
    eprintln!("peak RSS (VmHWM):\n  {}", report.join("\n  "));
    assert!(
        peaks.iter().all(|p| p.agent_kib < RSS_LIMIT_KIB && p.restore_kib < RSS_LIMIT_KIB),
        "peak RSS must stay under {} MiB whatever the database size:\n  {}",
        RSS_LIMIT_KIB / 1024,
        report.join("\n  ")
    );
    Ok(())
}
