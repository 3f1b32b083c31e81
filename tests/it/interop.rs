//! Interoperability with Litestream 0.5.17, both ways, on both backends: every walfleet
//! generation is a Litestream replica, and a Litestream replica restores with walfleet.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use tests::replica::{file_keys, file_url, generations, wait_shipped};
use tests::sqlite::{content_hash, integrity_ok};
use tests::{litestream, restore, try_wait_until, Agent, App, S3Server};

const T: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(2);

/// A replica store: a directory (file://) or the S3 server.
enum Store {
    File(TempDir),
    S3(S3Server),
}

impl Store {
    fn file() -> Result<Store> {
        Ok(Store::File(tempfile::Builder::new().prefix("replica-").tempdir()?))
    }

    fn s3() -> Result<Store> {
        Ok(Store::S3(S3Server::new()?))
    }

    /// walfleet's URL for `prefix`.
    fn url(&self, prefix: &str) -> String {
        match self {
            Store::File(dir) => file_url(&dir.path().join(prefix)),
            Store::S3(s3) => s3.url(prefix),
        }
    }

    /// Litestream's URL for `prefix`.
    fn litestream_url(&self, prefix: &str) -> String {
        match self {
            Store::File(dir) => file_url(&dir.path().join(prefix)),
            Store::S3(s3) => litestream::s3_url(s3, prefix),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        match self {
            Store::File(_) => Vec::new(),
            Store::S3(s3) => s3.env(),
        }
    }

    /// Keys under `prefix/`.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let prefix = format!("{}/", prefix.trim_matches('/'));
        match self {
            Store::File(dir) => file_keys(dir.path()).into_iter().filter(|k| k.starts_with(&prefix)).collect(),
            Store::S3(s3) => s3.keys(&prefix),
        }
    }

    /// The generations under `prefix/`, oldest first.
    fn generations(&self, prefix: &str) -> Vec<String> {
        generations(&self.keys(prefix), &format!("{}/", prefix.trim_matches('/')))
    }
}

fn replicate(db: &Path, url: &str, env: &[(String, String)]) -> Result<Agent> {
    let db = db.to_str().context("db path is not UTF-8")?;
    Agent::start(&["replicate", db, url], env)
}

/// Runs `writer.py db --count N` to completion while `agent` replicates, waits until the agent
/// shipped it all, stops the agent (SIGTERM seals the generation) and returns the source's
/// content hash.
fn write_ship_stop(db: &Path, mut agent: Agent, count: u32) -> Result<String> {
    let count = count.to_string();
    let mut writer = App::writer(db, &["--count", &count, "--rate", "20", "--value-size", "700"])?;
    let st = writer.finish(T)?;
    assert!(st.success(), "writer: {st}");
    wait_shipped(&mut agent, SETTLE, T)?;
    let hash = content_hash(db)?;
    agent.sigterm()?;
    let st = agent.wait(T)?;
    assert!(st.success(), "agent exit on SIGTERM: {st}");
    Ok(hash)
}

/// `litestream restore` of `url` into a new file under `dir`; returns its content hash.
fn litestream_restore(store: &Store, url: &str, dir: &Path, name: &str) -> Result<String> {
    let out = dir.join(name);
    let o = litestream::restore(&store.env(), url, &out, &[])?;
    tests::process::expect_success(&format!("litestream restore {url}"), &o);
    assert!(integrity_ok(&out)?, "litestream's restore of {url} fails integrity_check");
    content_hash(&out)
}

fn walfleet_generations_restore_with_litestream(store: Store) -> Result<()> {
    let data = tempfile::tempdir()?;
    let out = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let prefix = "interop/app";
    let url = store.url(prefix);

    // The database exists before the agent starts.
    App::writer(&db, &["--count", "5", "--rate", "0"])?.finish(T)?;
    let first = write_ship_stop(&db, replicate(&db, &url, &store.env())?, 40)?;
    let gens = store.generations(prefix);
    assert_eq!(gens.len(), 1, "generations after one agent run: {gens:?}\nkeys: {:?}", store.keys(prefix));
    let g1 = store.litestream_url(&format!("{prefix}/{}", gens[0]));
    assert_eq!(litestream_restore(&store, &g1, out.path(), "g1.db")?, first, "litestream restore of {g1}");

    // A restarted agent continues in a second generation, itself a complete Litestream replica.
    let second = write_ship_stop(&db, replicate(&db, &url, &store.env())?, 40)?;
    assert_ne!(second, first);
    let gens = store.generations(prefix);
    assert_eq!(gens.len(), 2, "generations after two agent runs: {gens:?}");
    let g2 = store.litestream_url(&format!("{prefix}/{}", gens[1]));
    assert_eq!(litestream_restore(&store, &g2, out.path(), "g2.db")?, second, "litestream restore of {g2}");
    // The first generation still restores to where it ended.
    assert_eq!(litestream_restore(&store, &g1, out.path(), "g1-again.db")?, first, "{g1} after the restart");

    let ours = out.path().join("walfleet.db");
    tests::process::expect_success("walfleet-agent restore", &restore(&store.env(), &url, &ours, &[])?);
    assert_eq!(content_hash(&ours)?, second, "walfleet restore of the root");
    Ok(())
}

#[test]
fn walfleet_generations_restore_with_litestream_file() -> Result<()> {
    walfleet_generations_restore_with_litestream(Store::file()?)
}

#[test]
fn walfleet_generations_restore_with_litestream_s3() -> Result<()> {
    walfleet_generations_restore_with_litestream(Store::s3()?)
}

fn litestream_replica_restores_with_walfleet(store: Store) -> Result<()> {
    let data = tempfile::tempdir()?;
    let out = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let prefix = "litestream/app";
    assert!(App::writer(&db, &["--count", "50", "--rate", "0", "--value-size", "2000"])?.finish(T)?.success());

    let mut ls = litestream::replicate(&store.env(), &db, &store.litestream_url(prefix))?;
    // More commits while Litestream runs, so the replica holds incremental LTX files too.
    let mut writer = App::writer(&db, &["--count", "30", "--rate", "20", "--value-size", "700"])?;
    assert!(writer.finish(T)?.success());
    let want = content_hash(&db)?;

    // Litestream itself is the judge of when its replica is complete.
    let mut attempt = 0;
    let mut last = String::new();
    let done = try_wait_until(T, "litestream's own restore to match the source", || {
        attempt += 1;
        let path: PathBuf = out.path().join(format!("probe-{attempt}.db"));
        match litestream::restore(&store.env(), &store.litestream_url(prefix), &path, &[]) {
            Ok(o) if o.status.success() => {
                last = content_hash(&path).unwrap_or_else(|e| format!("{e:#}"));
                last == want
            }
            Ok(o) => {
                last = String::from_utf8_lossy(&o.stderr).into_owned();
                false
            }
            Err(e) => {
                last = format!("{e:#}");
                false
            }
        }
    });
    if let Err(e) = done {
        bail!("{e:#}; last: {last}");
    }
    let st = ls.stop(T)?;
    eprintln!("litestream replicate exit: {st}");
    let ltx = store.keys(prefix).iter().filter(|k| k.ends_with(".ltx")).count();
    assert!(ltx >= 2, "litestream wrote {ltx} LTX files: {:?}", store.keys(prefix));

    let restored = out.path().join("walfleet.db");
    let o = restore(&store.env(), &store.url(prefix), &restored, &[])?;
    tests::process::expect_success("walfleet-agent restore of a Litestream replica", &o);
    assert!(integrity_ok(&restored)?);
    assert_eq!(content_hash(&restored)?, want);
    Ok(())
}

#[test]
fn litestream_replica_restores_with_walfleet_file() -> Result<()> {
    litestream_replica_restores_with_walfleet(Store::file()?)
}

#[test]
fn litestream_replica_restores_with_walfleet_s3() -> Result<()> {
    litestream_replica_restores_with_walfleet(Store::s3()?)
}
