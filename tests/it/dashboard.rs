//! The fleet dashboard in a real headless browser (Debian's chromium through playwright-core)
//! against the real `walfleet serve`, with real agents replicating to s3s-fs; the 1,000-database
//! fleet view under `walfleet-loadgen`; and the quick start (`scripts/demo.sh`) end to end.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::controller::Controller;
use tests::process::{apply_env, Process};
use tests::{Agent, S3Server};

const T: Duration = Duration::from_secs(90);

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

/// `walfleet-agent run DB URL -- writer.py DB --rate 20` for `project/db` under `c`.
fn app(s3: &S3Server, c: &Controller, token: &str, project: &str, db: &str, dir: &Path) -> Result<Agent> {
    let file = dir.join(format!("{db}.db"));
    let url = s3.url(&format!("{project}/{db}"));
    let env = c.agent_env(s3.env(), token, project, db);
    let argv = tests::apps::argv("writer.py", &file, &["--rate", "20"]);
    let mut args = vec!["run", utf8(&file)?, &url, "--"];
    args.extend(argv.iter().map(String::as_str));
    Agent::start(&args, &env)
}

fn printed(agent: &Agent) -> usize {
    agent.stdout().lines().filter(|l| l.trim().parse::<i64>().is_ok()).count()
}

fn wait_printed(agent: &mut Agent, n: usize, what: &str) -> Result<()> {
    let start = Instant::now();
    while printed(agent) < n {
        if let Some(st) = agent.try_status()? {
            bail!("{what}: agent exited ({st}) before its app committed {n} rows:\n{}", agent.stderr());
        }
        if start.elapsed() > T {
            bail!("{what}: the app printed {} ids in {T:?}", printed(agent));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `walfleet databases --json` as (project/db → entry).
fn databases(c: &Controller) -> Result<Vec<Value>> {
    Ok(c.cli_json(&["databases"])?.as_array().cloned().unwrap_or_default())
}

fn find<'a>(dbs: &'a [Value], name: &str) -> Option<&'a Value> {
    dbs.iter().find(|d| format!("{}/{}", d["project"].as_str().unwrap_or(""), d["name"].as_str().unwrap_or("")) == name)
}

fn browser_env(c: &Controller, mode: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("WF_BASE".to_string(), format!("http://127.0.0.1:{}", c.http_port)),
        ("WF_TOKEN".to_string(), c.admin_token.clone()),
        ("WF_MODE".to_string(), mode.to_string()),
    ];
    // Screenshots for the README: WALFLEET_SCREENSHOTS=docs (a directory) when running this.
    if let Some(dir) = std::env::var_os("WALFLEET_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        let dir = if dir.is_absolute() { dir } else { Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir) };
        env.push(("WF_SHOTS".to_string(), dir.display().to_string()));
    }
    env
}

fn passes(lines: &[String]) -> Vec<&str> {
    lines.iter().filter_map(|l| l.strip_prefix("PASS ")).collect()
}

/// Login; every database listed with the right status; a second instance's duplicate event
/// appears on the events view without a reload, naming both instances; the lineage shows the
/// new generation after the handoff; a drill started from the UI appears with its result; a
/// wrong token gets no fleet data; a POST without the CSRF token is refused; no console errors.
#[test]
fn dashboard_in_a_real_browser() -> Result<()> {
    let s3 = S3Server::new()?;
    let c = Controller::start_sqlite_with(Duration::from_secs(3), s3.env(), &["--scan-interval", "2s"])?;
    let shop = c.create_project("shop")?;
    let blog = c.create_project("blog")?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let mut a = app(&s3, &c, &shop, "shop", "app", dirs[0].path())?;
    let mut orders = app(&s3, &c, &shop, "shop", "orders", dirs[1].path())?;
    let mut posts = app(&s3, &c, &blog, "blog", "posts", dirs[2].path())?;
    for (agent, what) in [(&mut a, "shop/app"), (&mut orders, "shop/orders"), (&mut posts, "blog/posts")] {
        wait_printed(agent, 20, what)?;
    }
    posts.sigterm()?;
    assert!(posts.wait(T)?.success(), "blog/posts agent exit:\n{}", posts.stderr());

    // What the CLI says is what the browser must show.
    let expect = json!({"shop/app": "healthy", "shop/orders": "healthy", "blog/posts": "offline"});
    let mut last = Vec::new();
    let settled = tests::try_wait_until(T, "statuses and a scan of shop/app", || {
        let Ok(dbs) = databases(&c) else { return false };
        let ok =
            expect.as_object().into_iter().flatten().all(|(k, v)| find(&dbs, k).is_some_and(|d| &d["status"] == v))
                && find(&dbs, "shop/app").is_some_and(|d| {
                    d["scan"]["at_unix_ms"].as_u64().unwrap_or(0) > 0
                        && d["window"]["latest"]["txid"].as_u64().unwrap_or(0) > 0
                });
        last = dbs;
        ok
    });
    if let Err(e) = settled {
        bail!("{e}: the CLI shows {}", Value::Array(last));
    }

    let mut env = browser_env(&c, "fleet");
    env.push(("WF_EXPECT".into(), expect.to_string()));
    let mut b: Option<Agent> = None;
    let lines = tests::browser::run("dashboard.mjs", &env, Duration::from_secs(300), |step, lines| match step {
        "duplicate" => {
            b = Some(app(&s3, &c, &shop, "shop", "app", dirs[3].path())?);
            Ok("OK".into())
        }
        "duplicate-checked" => {
            let named = lines.iter().rev().find_map(|l| l.strip_prefix("DUPLICATE ")).context("no DUPLICATE line")?;
            let instances = c.cli_json(&["instances", "--project", "shop"])?;
            let of_app: Vec<&str> = instances
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["database"] == "app")
                .filter_map(|i| i["instance_id"].as_str())
                .collect();
            for id in named.split_whitespace() {
                assert!(of_app.contains(&id), "the page names {id}, not an instance of shop/app: {instances}");
            }
            Ok("OK".into())
        }
        "handoff" => {
            assert!(a.wait(T)?.success(), "instance A should exit after handing over:\n{}", a.stderr());
            let newcomer = b.as_mut().context("instance B")?;
            wait_printed(newcomer, 5, "instance B")?;
            let gens = c.cli_json(&["generations", "shop/app"])?;
            let newest =
                gens.as_array().and_then(|g| g.last()).and_then(|g| g["generation"].as_u64()).context("gens")?;
            tests::try_wait_until(T, "shop/app held by the new generation", || {
                databases(&c).ok().is_some_and(|d| find(&d, "shop/app").is_some_and(|d| d["generation"] == newest))
            })?;
            Ok(format!("GEN {newest}"))
        }
        other => bail!("unexpected step {other}"),
    })?;
    let got = passes(&lines);
    for want in [
        "login with the admin token",
        "the fleet view lists every database with the right status",
        "duplicate event appears without a reload",
        "the lineage view shows the new generation",
        "a drill started from the UI appears with its result",
        "a wrong token gets no fleet data",
        "without the CSRF token is refused",
        "no console errors on any page",
    ] {
        assert!(got.iter().any(|p| p.contains(want)), "the browser script did not report {want:?}: {got:?}");
    }
    // The UI's drill is audited like the CLI's: a drill_passed event and the proof note.
    let events = c.events("shop")?;
    assert!(events.iter().any(|e| e["kind"] == "drill_passed" && e["database"] == "app"), "no drill_passed event");
    Ok(())
}

/// `walfleet-loadgen` plays 1,000 agents; the fleet view lists them all, sorts, filters and
/// refreshes in the browser.
#[test]
fn dashboard_fleet_view_with_a_thousand_databases() -> Result<()> {
    let c = Controller::start_sqlite(Duration::from_secs(15))?;
    let token = c.create_project("load")?;
    let mut cmd = Command::new(tests::bins::workspace_bin("walfleet-loadgen")?);
    cmd.args(["--controller", &c.url(), "--token", &token, "--project", "load", "--agents", "1000"]).args([
        "--interval",
        "5s",
        "--warmup",
        "1s",
        "--duration",
        "600s",
        "--connections",
        "4",
    ]);
    apply_env(&mut cmd, &[("RUST_LOG".into(), "warn".into())]);
    let mut loadgen = Process::spawn("walfleet-loadgen", cmd)?;
    tests::try_wait_until(Duration::from_secs(180), "1,000 databases registered", || {
        databases(&c).is_ok_and(|d| d.len() >= 1000)
    })?;
    assert!(loadgen.is_running(), "loadgen exited early:\n{}", loadgen.stderr());
    let mut env = browser_env(&c, "thousand");
    env.push(("WF_ROWS".into(), "1000".into()));
    let lines = tests::browser::run("dashboard.mjs", &env, Duration::from_secs(300), |step, _| {
        bail!("unexpected step {step}")
    })?;
    let got = passes(&lines);
    assert!(got.iter().any(|p| p.contains("with 1000 databases renders")), "{got:?}");
    assert!(got.iter().any(|p| p.contains("no console errors")), "{got:?}");
    Ok(())
}

/// The quick start: `scripts/demo.sh` builds (or reuses the build), runs the fleet, performs
/// the proof of persistence step by step and prints OK.
#[test]
fn quick_start_demo_passes() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = tempfile::tempdir()?;
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/demo.sh")).arg("--work").arg(work.path());
    // The binaries this test run was built with.
    cmd.env("WALFLEET_BIN_DIR", tests::bins::target_dir()?);
    apply_env(&mut cmd, &[]);
    let out = tests::process::run("demo.sh", cmd, Duration::from_secs(600))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l.trim() == "demo: OK"),
        "demo.sh failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
