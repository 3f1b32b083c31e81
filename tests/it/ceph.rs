//! The realism tier: the same guarantees against Ceph RGW, a production S3 implementation
//! with atomic conditional writes and its own quirks (If-Match only with an unquoted ETag).

use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;
use tests::ceph::Rgw;
use tests::replica::{remove_database, wait_shipped};
use tests::sqlite::{content_hash, integrity_check, open_wal};
use tests::{restore, Agent, App};

const T: Duration = Duration::from_secs(60);

fn replicate(db: &Path, url: &str, env: &[(String, String)]) -> Result<Agent> {
    Agent::start(&["replicate", db.to_str().context("db path")?, url], env)
}

/// An app writes, the agent ships to RGW, restarts once (sealing generation 1 with If-Match),
/// then dies with kill -9 and the data directory goes: the restore from RGW holds every row.
#[test]
fn rgw_proof_of_persistence_across_a_restart() -> Result<()> {
    let rgw = Rgw::get()?;
    let url = rgw.unique_url("persist");
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let mut writer = App::writer(&db, &["--rate", "40", "--value-size", "300"])?;
    writer.wait_lines(1, T)?;
    let mut agent = replicate(&db, &url, &rgw.env())?;
    agent.wait_metric("walfleet_durable_txid", |v| v >= 3.0, T)?;
    agent.sigterm()?;
    assert_eq!(agent.wait(T)?.code(), Some(0), "agent:\n{}", agent.stderr());
    let first = tests::replica::strip_ansi(&agent.stderr());
    assert!(first.contains("conditional=true"), "RGW honours conditional writes:\n{first}");
    assert!(first.contains("sealed generation"), "the seal (If-Match) went through:\n{first}");

    let mut agent = replicate(&db, &url, &rgw.env())?;
    agent.wait_metric("walfleet_generation", |v| v == 2.0, T)?;
    writer.wait_lines(80, T)?;
    assert!(writer.stop(T)?.success());
    let committed = writer.committed_ids();
    wait_shipped(&mut agent, Duration::from_secs(2), T)?;
    let want = content_hash(&db)?;
    agent.sigkill()?;
    remove_database(&db)?;

    let out = tempfile::tempdir()?;
    let restored = out.path().join("restored.db");
    let o = restore(&rgw.env(), &url, &restored, &[])?;
    tests::process::expect_success("restore from RGW", &o);
    assert_eq!(integrity_check(&restored)?, "ok");
    assert_eq!(content_hash(&restored)?, want, "restored vs the source");
    let conn = tests::sqlite::open_ro(&restored)?;
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM items ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    assert_eq!(ids, committed, "every committed row");
    Ok(())
}

/// Two instances of a must-be-single app start together on one replica with no controller
/// (a platform that ran two copies): atomic If-None-Match lets exactly one claim the
/// generation; the other stops naming why, and the replica holds the winner's database only.
#[test]
fn rgw_two_writers_starting_together_one_wins() -> Result<()> {
    let rgw = Rgw::get()?;
    let mut claimed_races = 0;
    for round in 0..4 {
        let url = rgw.unique_url("race");
        let dir = tempfile::tempdir()?;
        let dbs = [dir.path().join("a.db"), dir.path().join("b.db")];
        for (i, db) in dbs.iter().enumerate() {
            let c = open_wal(db)?;
            c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT)")?;
            c.execute("INSERT INTO t(who) VALUES (?1)", [format!("writer {i} round {round}")])?;
        }
        let mut agents = [replicate(&dbs[0], &url, &rgw.env())?, replicate(&dbs[1], &url, &rgw.env())?];
        // The loser exits; the winner keeps replicating.
        let deadline = std::time::Instant::now() + T;
        let loser = loop {
            if let Some(i) = (0..2).find(|&i| agents[i].try_status().ok().flatten().is_some()) {
                break i;
            }
            assert!(std::time::Instant::now() < deadline, "neither writer stopped: both think they own the replica");
            std::thread::sleep(Duration::from_millis(50));
        };
        let winner = 1 - loser;
        let why = agents[loser].stderr();
        assert!(!agents[loser].wait(T)?.success(), "the loser exits non-zero:\n{why}");
        let raced = why.contains("already claimed by another writer");
        assert!(raced || why.contains("is not proven to descend"), "round {round}: the loser says why:\n{why}");
        claimed_races += usize::from(raced);
        wait_shipped(&mut agents[winner], Duration::from_millis(1500), T)?;
        std::thread::sleep(Duration::from_millis(500));
        assert!(agents[winner].try_status()?.is_none(), "the winner keeps running:\n{}", agents[winner].stderr());
        let want = content_hash(&dbs[winner])?;
        agents[winner].sigterm()?;
        assert!(agents[winner].wait(T)?.success(), "winner:\n{}", agents[winner].stderr());

        let restored = dir.path().join("restored.db");
        tests::process::expect_success("restore", &restore(&rgw.env(), &url, &restored, &[])?);
        assert_eq!(content_hash(&restored)?, want, "round {round}: the replica holds the winner's database");
    }
    eprintln!("rounds decided by the atomic claim itself: {claimed_races} of 4");
    Ok(())
}
