//! The agent's logs as a platform captures them (stderr through a pipe or file): no ANSI
//! escapes, one JSON object per line with `severity` when asked, and an error printed once.

use anyhow::{Context, Result};
use std::time::Duration;
use tests::Agent;

const T: Duration = Duration::from_secs(60);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A failed restore: its error is on stderr exactly once, and no line carries an escape byte.
#[test]
fn a_failed_restore_logs_its_error_once_without_escapes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let replica = format!("file://{}", dir.path().join("no-such-replica").display());
    let out = dir.path().join("out.db");
    let res = tests::restore(&[], &replica, &out, &[])?;
    assert!(!res.status.success(), "a restore from nothing succeeded");
    let err = text(&res.stderr);
    assert!(!res.stderr.contains(&0x1b), "ANSI escapes in piped stderr:\n{err:?}");
    let n = err.matches("no-such-replica").count();
    assert_eq!(n, 1, "the error is printed {n} times:\n{err}");
    Ok(())
}

/// `WALFLEET_LOG_FORMAT=json` and `--log-format json`: every line of a replicating agent and of
/// a failed restore is a JSON object with `timestamp`, `severity` and `message`; the failure's
/// severity is ERROR. `WALFLEET_LOG=warn` leaves out the INFO lines.
#[test]
fn json_logs_carry_severity_on_every_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    tests::sqlite::open_wal(&db)?.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")?;
    let replica = format!("file://{}", dir.path().join("replica").display());
    let env = [("WALFLEET_LOG_FORMAT".to_string(), "json".to_string())];
    let mut a = Agent::start(&["replicate", db.to_str().context("utf-8")?, &replica], &env)?;
    a.wait_http_ok("/readyz", T)?;
    a.sigterm()?;
    assert!(a.wait(T)?.success(), "agent exit:\n{}", a.stderr());
    let lines = json_lines(&a.stderr())?;
    assert!(lines.iter().any(|l| l["severity"] == "INFO"), "no INFO line:\n{}", a.stderr());

    let out = dir.path().join("out.db");
    let missing = format!("file://{}", dir.path().join("missing").display());
    let res =
        tests::agent::run(&["--log-format", "json", "restore", &missing, "-o", out.to_str().context("utf-8")?], &[])?;
    assert!(!res.status.success());
    let lines = json_lines(&text(&res.stderr))?;
    let errors: Vec<_> = lines.iter().filter(|l| l["severity"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "want one ERROR line: {lines:?}");
    assert!(errors[0]["message"].as_str().is_some_and(|m| m.contains("missing")), "{:?}", errors[0]);

    let quiet = [("WALFLEET_LOG_FORMAT".to_string(), "json".to_string()), ("WALFLEET_LOG".into(), "warn".into())];
    let res = tests::agent::run(&["restore", &missing, "-o", out.to_str().context("utf-8")?], &quiet)?;
    let lines = json_lines(&text(&res.stderr))?;
    assert!(lines.iter().all(|l| l["severity"] != "INFO"), "WALFLEET_LOG=warn let INFO through: {lines:?}");
    Ok(())
}

fn json_lines(stderr: &str) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("not a JSON line: {line:?}"))?;
        for k in ["timestamp", "severity", "message"] {
            anyhow::ensure!(v.get(k).is_some(), "no {k} in {line}");
        }
        out.push(v);
    }
    anyhow::ensure!(!out.is_empty(), "no log lines");
    Ok(out)
}
