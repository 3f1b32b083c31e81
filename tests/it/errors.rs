//! Failures are loud, name what is wrong, and leave nothing half-done behind: no output file
//! from a failed restore, no overwritten database, no objects from a refused replicate.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use tempfile::TempDir;
use tests::replica::{parse_ltx_key, remove_database, wait_shipped};
use tests::sqlite::{content_hash, open_wal};
use tests::{restore, Agent, App, S3Server};

const T: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(2);

fn stderr(o: &Output) -> String {
    tests::replica::strip_ansi(&String::from_utf8_lossy(&o.stderr))
}

fn sidecar(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push("-walfleet");
    PathBuf::from(s)
}

/// Asserts that a failed or skipped restore left neither the output nor its sidecars.
fn assert_no_output(out: &Path) {
    for p in [out.to_path_buf(), sidecar(out), PathBuf::from(format!("{}-wal", out.display()))] {
        assert!(!p.exists(), "{} exists after a restore that wrote nothing", p.display());
    }
    let dir = out.parent().expect("output has a parent");
    let left: Vec<_> = std::fs::read_dir(dir).expect("read output dir").flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "files left in the output directory: {left:?}");
}

/// A replica under `prefix` with a few seconds of history (several level-0 LTX files, one
/// generation, sealed), plus the database it came from.
struct Fixture {
    s3: S3Server,
    data: TempDir,
    url: String,
    prefix: String,
    hash: String,
}

impl Fixture {
    fn new(prefix: &str) -> Result<Fixture> {
        let s3 = S3Server::new()?;
        let data = tempfile::tempdir()?;
        let db = data.path().join("app.db");
        let url = s3.url(prefix);
        App::writer(&db, &["--count", "5", "--rate", "0"])?.finish(T)?;
        let mut agent = Agent::start(&["replicate", db.to_str().context("utf-8")?, &url], &s3.env())?;
        let mut writer = App::writer(&db, &["--count", "40", "--rate", "20", "--value-size", "3000"])?;
        assert!(writer.finish(T)?.success());
        wait_shipped(&mut agent, SETTLE, T)?;
        agent.sigterm()?;
        assert!(agent.wait(T)?.success(), "agent exit on SIGTERM");
        let hash = content_hash(&db)?;
        Ok(Fixture { s3, data, url, prefix: format!("{prefix}/"), hash })
    }

    fn db(&self) -> PathBuf {
        self.data.path().join("app.db")
    }

    /// The newest level-0 LTX object: a restore of the latest state must read it.
    fn newest_ltx(&self) -> Result<String> {
        let keys = self.s3.keys(&self.prefix);
        keys.iter()
            .filter_map(|k| parse_ltx_key(k).filter(|(level, _, _)| *level == 0).map(|(_, _, max)| (max, k)))
            .max()
            .map(|(_, k)| k.clone())
            .with_context(|| format!("no level-0 LTX object among {keys:?}"))
    }

    /// A restore that works, to show the damage is what breaks the next one.
    fn assert_restores(&self) -> Result<()> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("ok.db");
        tests::process::expect_success(
            "restore of the intact replica",
            &restore(&self.s3.env(), &self.url, &out, &[])?,
        );
        assert_eq!(content_hash(&out)?, self.hash);
        Ok(())
    }
}

/// The error identifies the object: its key in the bucket, or its key under the replica root
/// together with the replica URL.
fn assert_names_object(err: &str, fx: &Fixture, key: &str) {
    let relative = key.strip_prefix(&fx.prefix).unwrap_or(key);
    assert!(
        err.contains(key) || (err.contains(relative) && err.contains(&fx.url)),
        "stderr does not identify the object {key} (bucket key, or {relative} with {}):\n{err}",
        fx.url
    );
}

#[test]
fn restore_from_an_empty_prefix_fails_and_names_it() -> Result<()> {
    let s3 = S3Server::new()?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out.db");
    let o = restore(&s3.env(), &s3.url("nothing/here"), &out, &[])?;
    let err = stderr(&o);
    assert!(!o.status.success(), "restore of an empty prefix succeeded:\n{err}");
    assert!(err.contains("no replica found at"), "{err}");
    assert!(err.contains("test/nothing/here"), "stderr does not name the replica:\n{err}");
    assert_no_output(&out);
    Ok(())
}

#[test]
fn restore_if_replica_exists_on_an_empty_prefix_does_nothing() -> Result<()> {
    let s3 = S3Server::new()?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out.db");
    let o = restore(&s3.env(), &s3.url("nothing/here"), &out, &["--if-replica-exists"])?;
    tests::process::expect_success("restore --if-replica-exists of an empty prefix", &o);
    assert_no_output(&out);
    Ok(())
}

#[test]
fn restore_never_overwrites_an_existing_database() -> Result<()> {
    let fx = Fixture::new("errors/exists")?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out.db");
    {
        let conn = open_wal(&out)?;
        conn.execute_batch("CREATE TABLE mine(x); INSERT INTO mine VALUES ('keep me');")?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    let before = std::fs::read(&out)?;

    let o = restore(&fx.s3.env(), &fx.url, &out, &[])?;
    let err = stderr(&o);
    assert!(!o.status.success(), "restore over an existing database succeeded:\n{err}");
    assert!(err.contains(&out.display().to_string()), "stderr does not name the output:\n{err}");
    assert!(std::fs::read(&out)? == before, "the existing database's bytes changed");

    let o = restore(&fx.s3.env(), &fx.url, &out, &["--if-db-not-exists"])?;
    tests::process::expect_success("restore --if-db-not-exists over an existing database", &o);
    assert!(std::fs::read(&out)? == before, "the existing database's bytes changed (--if-db-not-exists)");
    Ok(())
}

#[test]
fn restore_fails_on_a_damaged_object_and_names_it() -> Result<()> {
    let fx = Fixture::new("errors/flip")?;
    fx.assert_restores()?;
    let key = fx.newest_ltx()?;
    let path = fx.s3.object_path(&key);
    let mut bytes = std::fs::read(&path)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&path, &bytes)?;

    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out.db");
    let o = restore(&fx.s3.env(), &fx.url, &out, &[])?;
    let err = stderr(&o);
    assert!(!o.status.success(), "restore through a damaged {key} ({} bytes) succeeded:\n{err}", bytes.len());
    assert_no_output(&out);
    assert_names_object(&err, &fx, &key);
    Ok(())
}

#[test]
fn restore_fails_on_a_truncated_object_and_names_it() -> Result<()> {
    let fx = Fixture::new("errors/short")?;
    fx.assert_restores()?;
    let key = fx.newest_ltx()?;
    let path = fx.s3.object_path(&key);
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;

    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out.db");
    let o = restore(&fx.s3.env(), &fx.url, &out, &[])?;
    let err = stderr(&o);
    assert!(!o.status.success(), "restore through a truncated {key} succeeded:\n{err}");
    assert_no_output(&out);
    assert_names_object(&err, &fx, &key);
    Ok(())
}

#[test]
fn unsupported_replica_url_scheme_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out.db");
    let o = restore(&[], "http://x", &out, &[])?;
    let err = stderr(&o);
    assert!(!o.status.success(), "restore from http://x succeeded:\n{err}");
    assert!(err.contains("http://x") && err.contains("not supported"), "unclear error:\n{err}");
    assert!(err.contains("s3://") && err.contains("file://"), "the error should name the supported schemes:\n{err}");
    assert_no_output(&out);

    let db = dir.path().join("app.db");
    App::writer(&db, &["--count", "1", "--rate", "0"])?.finish(T)?;
    let o = tests::agent::run(&["replicate", db.to_str().context("utf-8")?, "http://x"], &[])?;
    let err = stderr(&o);
    assert!(!o.status.success(), "replicate to http://x started:\n{err}");
    assert!(err.contains("http://x") && err.contains("not supported"), "unclear error:\n{err}");
    Ok(())
}

/// A different database at the path of one the replica has history for is not replicated
/// over that history: with stale protection off the agent refuses, says why, and writes
/// nothing (with it on, the default, the database is moved aside: see lifecycle tests).
#[test]
fn replicate_refuses_a_database_not_descended_from_the_replica() -> Result<()> {
    let fx = Fixture::new("errors/stale")?;
    let db = fx.db();
    remove_database(&db)?;
    App::writer(&db, &["--count", "7", "--rate", "0", "--start-id", "1000"])?.finish(T)?;
    let keys_before = fx.s3.keys("");
    let manifests: Vec<(String, Vec<u8>)> = keys_before
        .iter()
        .filter(|k| k.ends_with("manifest.json"))
        .map(|k| Ok((k.clone(), std::fs::read(fx.s3.object_path(k))?)))
        .collect::<Result<_>>()?;

    let mut agent =
        Agent::start(&["replicate", "--no-stale-protection", db.to_str().context("utf-8")?, &fx.url], &fx.s3.env())?;
    let st = agent.wait(T)?;
    let err = tests::replica::strip_ansi(&agent.stderr());
    assert!(!st.success(), "replicate of a foreign database exited {st}:\n{err}");
    assert!(err.contains("not proven to descend"), "{err}");
    assert_eq!(fx.s3.keys(""), keys_before, "the refused agent changed the replica's keys");
    for (k, bytes) in manifests {
        assert!(std::fs::read(fx.s3.object_path(&k))? == bytes, "{k} changed");
    }

    // The replica still restores to the original database.
    fx.assert_restores()
}
