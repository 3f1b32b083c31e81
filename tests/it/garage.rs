//! The degraded path: Garage accepts `If-None-Match` and `If-Match` and ignores them. The
//! agent's probe notices and says so; the guarantees then rest on the controller's lease and
//! on generations in the key: two instances of one app forked under the controller each keep
//! their own generation, nothing of one is overwritten by the other, and both restore.

use anyhow::{Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};
use tests::controller::Controller;
use tests::garage::Garage;
use tests::replica::strip_ansi;
use tests::sqlite::integrity_check;
use tests::{restore, Agent};

const T: Duration = Duration::from_secs(60);

fn run_mode(db: &Path, url: &str, app_args: &[&str], env: &[(String, String)]) -> Result<Agent> {
    let app = tests::apps::argv("writer.py", db, app_args);
    let mut args = vec!["run", db.to_str().context("db path")?, url, "--"];
    args.extend(app.iter().map(String::as_str));
    Agent::start(&args, env)
}

fn printed(a: &Agent) -> Vec<i64> {
    a.stdout().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn wait_printed(a: &mut Agent, n: usize) -> Result<()> {
    let start = Instant::now();
    while printed(a).len() < n {
        anyhow::ensure!(a.try_status()?.is_none(), "agent exited:\n{}", a.stderr());
        anyhow::ensure!(start.elapsed() < T, "fewer than {n} commits within {T:?}:\n{}", a.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn ids(db: &Path) -> Result<Vec<i64>> {
    let conn = tests::sqlite::open_ro(db)?;
    let mut stmt = conn.prepare("SELECT id FROM items ORDER BY id")?;
    let ids = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}

#[test]
fn garage_ignores_conditional_writes_and_generations_still_fence() -> Result<()> {
    let garage = Garage::new()?;
    let c = Controller::start_sqlite_with(Duration::from_secs(3), garage.env(), &[])?;
    let token = c.create_project("shop")?;
    let out = c.cli(&["policy", "shop/app", "alert"])?;
    assert!(out.status.success(), "{out:?}");
    let url = garage.url("shop/app");
    let env = c.agent_env(garage.env(), &token, "shop", "app");
    let (da, dbd) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (a_db, b_db) = (da.path().join("app.db"), dbd.path().join("app.db"));

    let mut a = run_mode(&a_db, &url, &["--rate", "50"], &env)?;
    wait_printed(&mut a, 20)?;
    let log = strip_ansi(&a.stderr());
    assert!(log.contains("conditional=false"), "the probe must see Garage ignore If-None-Match:\n{log}");
    let gen_a = a.wait_metric("walfleet_generation", |v| v > 0.0, T)? as u64;

    // A second instance of the same app: forked into a generation of its own.
    let mut b = run_mode(&b_db, &url, &["--rate", "50", "--start-id", "1000000"], &env)?;
    wait_printed(&mut b, 20)?;
    let gen_b = b.wait_metric("walfleet_generation", |v| v > 0.0, T)? as u64;
    assert_ne!(gen_a, gen_b, "two writers in one generation");
    wait_printed(&mut a, 60)?;
    wait_printed(&mut b, 60)?;
    a.sigterm()?;
    b.sigterm()?;
    assert!(a.wait(T)?.success(), "A exit:\n{}", a.stderr());
    assert!(b.wait(T)?.success(), "B exit:\n{}", b.stderr());

    // Each generation restores to exactly its own writer's database.
    let tmp = tempfile::tempdir()?;
    for (g, db, who) in [(gen_a, &a_db, &a), (gen_b, &b_db, &b)] {
        let out = tmp.path().join(format!("{g}.db"));
        let r = restore(&garage.env(), &format!("{url}/{g:016x}"), &out, &[])?;
        tests::process::expect_success(&format!("restore generation {g}"), &r);
        assert_eq!(integrity_check(&out)?, "ok");
        assert_eq!(ids(&out)?, ids(db)?, "generation {g} vs its writer's database");
        let last = *printed(who).last().context("printed ids")?;
        assert!(ids(&out)?.contains(&last), "generation {g} lacks its writer's last commit {last}");
    }
    Ok(())
}
