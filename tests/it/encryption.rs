//! Client-side encryption: the object store holds only ciphertext; restores with the key
//! equal the source; without it, or with a wrong one, they fail naming the object.

use anyhow::{Context, Result};
use std::time::Duration;
use tests::controller::Controller;
use tests::sqlite::{content_hash, integrity_check, open_ro, open_wal};
use tests::{restore, Agent, S3Server};

const T: Duration = Duration::from_secs(60);
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[test]
fn encrypted_replica_holds_no_plaintext_and_needs_its_key() -> Result<()> {
    let s3 = S3Server::new()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    let url = s3.url("enc/app");
    let mut env = s3.env();
    env.push(("WALFLEET_ENCRYPTION_KEY".into(), KEY.into()));
    env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    let argv = tests::apps::argv("writer.py", &db, &["--count", "40", "--rate", "50", "--value-size", "300"]);
    let mut args = vec!["run", db.to_str().context("path")?, url.as_str(), "--"];
    args.extend(argv.iter().map(String::as_str));
    let mut a = Agent::start(&args, &env)?;
    assert_eq!(a.wait(T)?.code(), Some(0), "agent:\n{}", a.stderr());
    let printed: Vec<i64> = a.stdout().lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(printed.len(), 40);

    // Every object the agent wrote is ciphertext: no SQLite header, no row text, no LTX magic.
    let keys = s3.keys("enc/app/");
    assert!(keys.iter().any(|k| k.ends_with(".ltx")) && keys.iter().any(|k| k.ends_with("manifest.json")), "{keys:?}");
    for k in &keys {
        let body = std::fs::read(s3.object_path(k))?;
        assert!(body.starts_with(b"WFENC\x01"), "{k} is not sealed");
        for needle in [&b"SQLite format 3"[..], b"key-1", b"LTX", b"\"generation\""] {
            assert!(!body.windows(needle.len()).any(|w| w == needle), "{k} holds plaintext {needle:?}");
        }
    }

    // With the key: equal to what the app committed.
    let out = dir.path().join("restored.db");
    let ok = restore(&env, &url, &out, &[])?;
    tests::process::expect_success("restore with the key", &ok);
    assert_eq!(integrity_check(&out)?, "ok");
    let conn = open_ro(&out)?;
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM items ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    assert_eq!(ids, printed);

    // Without a key, and with a wrong one: refused, naming the object; nothing is written.
    let plain_env = s3.env();
    let none = dir.path().join("no-key.db");
    let r = restore(&plain_env, &url, &none, &[])?;
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("is encrypted by walfleet") && err.contains("manifest.json"), "{err}");
    assert!(!none.exists());
    let mut wrong_env = s3.env();
    wrong_env.push(("WALFLEET_ENCRYPTION_KEY".into(), KEY.replace("00", "ff")));
    let wrong = dir.path().join("wrong-key.db");
    let r = restore(&wrong_env, &url, &wrong, &[])?;
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("wrong encryption key"), "{err}");
    assert!(!wrong.exists());
    // A malformed key is refused naming the setting, not echoing the value.
    let mut bad_env = s3.env();
    bad_env.push(("WALFLEET_ENCRYPTION_KEY".into(), "not-a-key".into()));
    let r = restore(&bad_env, &url, &dir.path().join("bad.db"), &[])?;
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("WALFLEET_ENCRYPTION_KEY") && !err.contains("not-a-key"), "{err}");
    Ok(())
}

/// The controller side: drills decrypt with the key from the controller's keys file, and a
/// clone of an encrypted database is sealed too (with the source's key unless told otherwise).
#[test]
fn drills_and_clones_of_an_encrypted_database() -> Result<()> {
    let s3 = S3Server::new()?;
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("drill-keys");
    std::fs::write(&keys, format!("# encrypted databases\nshop/app = {KEY}\n"))?;
    let keys_arg = keys.to_str().context("path")?;
    let c = Controller::start_sqlite_with(Duration::from_secs(3), s3.env(), &["--drill-keys", keys_arg])?;
    let token = c.create_project("shop")?;
    c.create_project("stage")?;

    let db = dir.path().join("app.db");
    let mut env = c.agent_env(s3.env(), &token, "shop", "app");
    env.push(("WALFLEET_ENCRYPTION_KEY".into(), KEY.into()));
    let conn = open_wal(&db)?;
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")?;
    let mut a = Agent::start(&["replicate", db.to_str().context("path")?, &s3.url("shop/app")], &env)?;
    for i in 0..20 {
        conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("secret row {i}")])?;
    }
    let shipped = tests::replica::wait_shipped(&mut a, Duration::from_millis(1500), T)?;
    let source = content_hash(&db)?;
    // The drill compares with the checksum the agent reported: wait for that report.
    tests::try_wait_until(T, "the agent's report of its durable transaction", || {
        c.cli_json(&["databases"]).is_ok_and(|v| {
            v.as_array().is_some_and(|all| {
                all.iter().any(|d| d["name"] == "app" && d["durable_txid"].as_u64() >= Some(shipped.durable_txid))
            })
        })
    })?;

    let drill = c.cli_json(&["drill", "shop/app"])?;
    assert_eq!(drill["ok"], true, "{drill:#}");
    assert_eq!(drill["expected_checksum"], drill["restored_checksum"], "{drill:#}");

    // A clone: sealed with the source's key by default.
    let stage = s3.url("stage/app");
    let cloned =
        c.cli_json(&["restore", "shop/app", "--into", "stage/app", "--replica", &stage, "--encryption-key", KEY])?;
    assert_eq!(cloned["ok"], true, "{cloned}");
    let staged = s3.keys("stage/app/");
    assert!(staged.iter().any(|k| k.ends_with(".ltx")), "{staged:?}");
    for k in &staged {
        assert!(std::fs::read(s3.object_path(k))?.starts_with(b"WFENC\x01"), "{k} of the clone is not sealed");
    }
    let out = dir.path().join("stage.db");
    let r =
        c.cli_json(&["restore", "stage/app", "--output", out.to_str().context("path")?, "--encryption-key", KEY])?;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(content_hash(&out)?, source, "the clone restores to the source");

    // Another key for the clone, when asked: the source's key no longer opens it.
    let other = KEY.replace("00", "77");
    let again = c.cli(&[
        "restore",
        "shop/app",
        "--into",
        "stage/other",
        "--replica",
        &s3.url("stage/other"),
        "--encryption-key",
        KEY,
        "--into-encryption-key",
        &other,
    ])?;
    tests::process::expect_success("clone with its own key", &again);
    let wrong = dir.path().join("wrong.db");
    let r = c.cli(&["restore", "stage/other", "--output", wrong.to_str().context("path")?, "--encryption-key", KEY])?;
    assert!(!r.status.success(), "the source's key opened a clone sealed with another");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("wrong encryption key"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!wrong.exists());
    let right = dir.path().join("right.db");
    let r = c.cli_json(&[
        "restore",
        "stage/other",
        "--output",
        right.to_str().context("path")?,
        "--encryption-key",
        &other,
    ])?;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(content_hash(&right)?, source);

    a.sigterm()?;
    assert_eq!(a.wait(T)?.code(), Some(0), "agent:\n{}", a.stderr());
    Ok(())
}
