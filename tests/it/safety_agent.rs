//! The agent keeps replication safe under faults of its own machine and of its neighbours: a
//! full disk under its notes, a second agent on the same database, a sidecar beside a running
//! app, an upload whose answer was lost before a spool overflow, a power cut after its notes
//! were renamed, and two agents claiming a generation on a store that ignores conditional
//! writes.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tests::replica::{remove_database, strip_ansi, wait_shipped};
use tests::sqlite::{content_hash, integrity_check, open_ro};
use tests::{restore, wait_until, Agent, App, Proxy, S3Server};

const T: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(2);

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().context("path is not UTF-8")
}

fn replicate(db: &Path, url: &str, env: &[(String, String)]) -> Result<Agent> {
    Agent::start(&["replicate", utf8(db)?, url], env)
}

fn ids(db: &Path) -> Result<Vec<i64>> {
    let conn = open_ro(db)?;
    let mut stmt = conn.prepare("SELECT id FROM items ORDER BY id")?;
    let ids = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}

fn notes(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-walfleet", db.display()))
}

fn restored(env: &[(String, String)], url: &str, dir: &Path) -> Result<PathBuf> {
    let out = dir.join("restored.db");
    let o = restore(env, url, &out, &[])?;
    tests::process::expect_success("walfleet-agent restore", &o);
    assert_eq!(integrity_check(&out)?, "ok", "restored database integrity");
    Ok(out)
}

fn sh(cmd: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(cmd).args(args).status().with_context(|| format!("run {cmd}"))?;
    if !st.success() {
        bail!("{cmd} {args:?}: {st}");
    }
    Ok(())
}

/// A tiny tmpfs, filled to the last byte, bind-mounted over a directory: every write there
/// fails with ENOSPC until it is unmounted. Unmounted on drop.
struct FullDisk {
    over: PathBuf,
    fs: tempfile::TempDir,
    mounted: bool,
}

impl FullDisk {
    fn mount_over(dir: &Path) -> Result<FullDisk> {
        let fs = tempfile::tempdir()?;
        sh("mount", &["-t", "tmpfs", "-o", "size=64k", "tmpfs", utf8(fs.path())?])?;
        // Fill it: the filler's last write fails when the disk is full.
        {
            use std::io::Write;
            let mut f = std::fs::File::create(fs.path().join("filler"))?;
            let block = vec![0u8; 4096];
            while f.write_all(&block).is_ok() {}
            let _ = f.sync_all();
        }
        std::fs::create_dir_all(dir)?;
        sh("mount", &["--bind", utf8(fs.path())?, utf8(dir)?])?;
        Ok(FullDisk { over: dir.to_path_buf(), fs, mounted: true })
    }

    fn unmount(&mut self) -> Result<()> {
        if self.mounted {
            sh("umount", &[utf8(&self.over)?])?;
            sh("umount", &[utf8(self.fs.path())?])?;
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// The agent's staging directory fills up (ENOSPC) while the app keeps writing: the agent
/// keeps running, says so (metric, /readyz), and once the disk has room again it ships every
/// commit made meanwhile: the restore equals the database.
#[test]
fn a_full_disk_under_the_notes_pauses_capture_and_replication_resumes() -> Result<()> {
    let s3 = S3Server::new()?;
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let url = s3.url("safety/enospc");
    let mut writer = App::writer(&db, &["--rate", "20", "--value-size", "300"])?;
    writer.wait_lines(1, T)?;
    let mut agent = replicate(&db, &url, &s3.env())?;
    agent.wait_metric("walfleet_durable_txid", |v| v >= 2.0, T)?;

    let mut disk = FullDisk::mount_over(&notes(&db).join("staging"))?;
    agent.wait_metric("walfleet_capture_errors_total", |v| v >= 2.0, T)?;
    assert_eq!(
        agent.metrics()?.select("walfleet_capture_failing"),
        Some(1.0),
        "capture_failing while the disk is full"
    );
    let (code, body) = agent.get("/readyz")?;
    assert_eq!(code, 503, "/readyz while captures fail: {body}");
    writer.wait_lines(writer.line_count() + 20, T)?;
    assert!(agent.try_status()?.is_none(), "agent exited on a full disk:\n{}", agent.stderr());

    disk.unmount()?;
    agent.wait_metric("walfleet_capture_failing", |v| v == 0.0, T)?;
    writer.wait_lines(writer.line_count() + 10, T)?;
    assert!(writer.stop(T)?.success(), "writer exit:\n{}", writer.stderr());
    wait_shipped(&mut agent, SETTLE, T)?;
    agent.wait_http_ok("/readyz", T)?;
    let want = content_hash(&db)?;
    agent.sigterm()?;
    assert!(agent.wait(T)?.success(), "agent exit on SIGTERM:\n{}", agent.stderr());

    let out = tempfile::tempdir()?;
    let got = restored(&s3.env(), &url, out.path())?;
    assert_eq!(ids(&got)?, writer.committed_ids(), "restored ids vs every id the writer committed");
    assert_eq!(content_hash(&got)?, want, "restored content vs the database");
    Ok(())
}

/// Run mode on the same fault: the app keeps running, and what it commits during and after the
/// fault reaches the replica (before the fix replication ended and the app ran unreplicated).
#[test]
fn run_mode_keeps_replicating_after_a_full_disk_under_the_notes() -> Result<()> {
    let s3 = S3Server::new()?;
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let url = s3.url("safety/enospc-run");
    let app = tests::apps::argv("writer.py", &db, &["--rate", "20", "--value-size", "300"]);
    let mut args = vec!["run", utf8(&db)?, url.as_str(), "--"];
    args.extend(app.iter().map(String::as_str));
    let mut agent = Agent::start(&args, &s3.env())?;
    agent.wait_metric("walfleet_durable_txid", |v| v >= 3.0, T)?;

    let mut disk = FullDisk::mount_over(&notes(&db).join("staging"))?;
    agent.wait_metric("walfleet_capture_errors_total", |v| v >= 2.0, T)?;
    disk.unmount()?;
    agent.wait_metric("walfleet_capture_failing", |v| v == 0.0, T)?;
    let local = agent.metrics()?.select("walfleet_local_txid").context("local txid")?;
    agent.wait_metric("walfleet_durable_txid", |v| v > local, T)?;
    agent.sigterm()?;
    let st = agent.wait(T)?;
    assert!(st.success() || st.code() == Some(143), "run mode exit {st}:\n{}", agent.stderr());
    let printed: Vec<i64> = agent.stdout().lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(printed.len() > 20, "the app committed {} rows", printed.len());

    let out = tempfile::tempdir()?;
    let got = restored(&s3.env(), &url, out.path())?;
    assert_eq!(ids(&got)?, printed, "restored ids vs every id the app printed");
    Ok(())
}

/// A second agent started on a database another agent replicates is refused at once, names
/// the first one's PID, and deletes nothing of it: the first agent ships everything.
#[test]
fn a_second_agent_on_the_same_database_is_refused_and_names_the_holder() -> Result<()> {
    let s3 = S3Server::new()?;
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let url = s3.url("safety/lock");
    let mut writer = App::writer(&db, &["--rate", "20", "--value-size", "300"])?;
    writer.wait_lines(1, T)?;
    let mut first = replicate(&db, &url, &s3.env())?;
    first.wait_metric("walfleet_durable_txid", |v| v >= 2.0, T)?;
    let pid = first.process().pid();

    let mut second = replicate(&db, &s3.url("safety/lock-second"), &s3.env())?;
    let st = second.wait(T).with_context(|| format!("the second agent kept running:\n{}", second.stderr()))?;
    let err = strip_ansi(&second.stderr());
    assert!(!st.success(), "second agent exit {st}:\n{err}");
    assert!(err.contains("already replicated by another walfleet agent"), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "the error names the holder's pid {pid}:\n{err}");
    assert!(s3.keys("safety/lock-second").is_empty(), "the refused agent wrote to its replica");

    writer.wait_lines(writer.line_count() + 20, T)?;
    assert!(writer.stop(T)?.success(), "writer exit:\n{}", writer.stderr());
    wait_shipped(&mut first, SETTLE, T)?;
    let want = content_hash(&db)?;
    first.sigterm()?;
    assert!(first.wait(T)?.success(), "first agent exit:\n{}", first.stderr());
    let out = tempfile::tempdir()?;
    let got = restored(&s3.env(), &url, out.path())?;
    assert_eq!(ids(&got)?, writer.committed_ids());
    assert_eq!(content_hash(&got)?, want);
    Ok(())
}

/// In `replicate` (sidecar) mode a database that is not on the replica's lineage is refused:
/// the app beside the agent may have it open, so nothing is moved; the error names the path
/// and what to do.
#[test]
fn replicate_mode_refuses_to_move_a_stale_database_aside() -> Result<()> {
    let s3 = S3Server::new()?;
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let url = s3.url("safety/stale");
    assert!(App::writer(&db, &["--count", "5", "--rate", "0"])?.finish(T)?.success());
    let mut agent = replicate(&db, &url, &s3.env())?;
    wait_shipped(&mut agent, SETTLE, T)?;
    agent.sigterm()?;
    assert!(agent.wait(T)?.success(), "agent exit:\n{}", agent.stderr());

    // Another database at the same path, with no notes of walfleet beside it.
    remove_database(&db)?;
    assert!(App::writer(&db, &["--count", "7", "--rate", "0", "--start-id", "1000"])?.finish(T)?.success());
    let before = content_hash(&db)?;
    let keys = s3.keys("");
    let mut agent = replicate(&db, &url, &s3.env())?;
    let st = agent.wait(T).with_context(|| format!("the sidecar kept running:\n{}", agent.stderr()))?;
    let err = strip_ansi(&agent.stderr());
    assert!(!st.success(), "sidecar exit {st}:\n{err}");
    assert!(err.contains("does not move") && err.contains(utf8(&db)?), "unclear error:\n{err}");
    assert_eq!(content_hash(&db)?, before, "the database was changed");
    let aside: Vec<_> = std::fs::read_dir(data.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".stale-"))
        .collect();
    assert!(aside.is_empty(), "files were moved aside: {aside:?}");
    assert_eq!(s3.keys(""), keys, "the refused sidecar changed the replica");
    Ok(())
}

/// An upload lands but its answer is lost, then storage stays away until the spool overflows:
/// the whole database must not be shipped under the TXID of the upload that landed (a 412 on
/// it is not "the same bytes"). The restore equals the database.
#[test]
fn a_spool_overflow_after_a_lost_answer_never_reuses_its_txid() -> Result<()> {
    let s3 = S3Server::new()?;
    let proxy = Proxy::new(s3.addr())?;
    let mut env = s3.env_for(&proxy.endpoint());
    env.push(("WALFLEET_SPOOL_BUDGET".into(), "20000".into()));
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let url = s3.url("safety/lost-answer");
    let mut writer = App::writer(&db, &["--rate", "20", "--value-size", "300"])?;
    writer.wait_lines(1, T)?;
    let mut agent = replicate(&db, &url, &env)?;
    agent.wait_metric("walfleet_durable_txid", |v| v >= 3.0, T)?;
    let snapshots = agent.metrics()?.sum("walfleet_snapshots_total");

    // The next level-0 upload reaches the server; its answer is held, then the connection
    // cut and every new one refused.
    proxy.set_response_hold(&["PUT ", "/0000/"], Duration::from_secs(60));
    wait_until(T, "a level-0 upload answered by the server and held", || proxy.responses_held() >= 1);
    proxy.set_drop_fraction(1.0);
    proxy.cut_all();
    agent.wait_metric("walfleet_snapshots_total", |v| v > snapshots, T)?;
    writer.wait_lines(writer.line_count() + 10, T)?;
    proxy.heal();

    assert!(writer.stop(T)?.success(), "writer exit:\n{}", writer.stderr());
    wait_shipped(&mut agent, SETTLE, Duration::from_secs(60))?;
    let want = content_hash(&db)?;
    agent.sigterm()?;
    assert!(agent.wait(T)?.success(), "agent exit:\n{}", agent.stderr());
    let out = tempfile::tempdir()?;
    let got = restored(&s3.env(), &url, out.path())?;
    assert_eq!(ids(&got)?, writer.committed_ids(), "restored ids vs every id the writer committed");
    assert_eq!(content_hash(&got)?, want, "restored content vs the database");
    Ok(())
}

/// The notes (`state.json`) are renamed into place and then the directory is fsynced, so a
/// power cut cannot bring the old notes back: seen in the agent's own system calls.
#[test]
fn notes_rename_is_followed_by_a_directory_fsync() -> Result<()> {
    let s3 = S3Server::new()?;
    let data = tempfile::tempdir()?;
    let db = data.path().join("app.db");
    let url = s3.url("safety/fsync");
    assert!(App::writer(&db, &["--count", "5", "--rate", "0"])?.finish(T)?.success());
    let trace = data.path().join("strace.txt");
    let mut cmd = Command::new("strace");
    // One file per thread (`strace.txt.<tid>`): no call is split across lines.
    cmd.args(["-ff", "-qq", "-e", "trace=openat,close,rename,renameat,renameat2,fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(tests::bins::agent()?)
        .args(["replicate", utf8(&db)?, &url]);
    tests::process::apply_env(&mut cmd, &s3.env());
    cmd.env("WALFLEET_HTTP_ADDR", format!("127.0.0.1:{}", tests::free_port()));
    let mut proc = tests::Process::spawn("strace walfleet-agent replicate", cmd)?;
    let notes_dir = notes(&db);
    let state = notes_dir.join("state.json");
    let traces = || -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(data.path()) else { return vec![] };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("strace.txt."))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    };
    let synced = || traces().iter().any(|t| directory_synced_after_rename(t, &notes_dir, &state));
    let found = tests::try_wait_until(T, "an fsync of the notes directory after state.json was renamed", synced);
    let _ = proc.sigkill();
    if let Err(e) = found {
        let all = traces().join("\n");
        let relevant: Vec<&str> = all.lines().filter(|l| l.contains("walfleet") || l.contains("fsync")).collect();
        bail!("{e}; system calls:\n{}", relevant.join("\n"));
    }
    Ok(())
}

/// Whether, in one thread's trace, a rename onto `state` is followed by an fsync of a
/// descriptor opened on `dir`.
fn directory_synced_after_rename(trace: &str, dir: &Path, state: &Path) -> bool {
    let dir = format!("\"{}\",", dir.display());
    let state = format!("\"{}\")", state.display());
    let mut renamed = false;
    let mut dir_fds: Vec<String> = Vec::new();
    for call in trace.lines() {
        if call.starts_with("rename") && call.contains(&state) && call.trim_end().ends_with(" = 0") {
            renamed = true;
        } else if call.starts_with("openat(") && call.contains(&dir) {
            if let Some(fd) = call.rsplit(" = ").next() {
                dir_fds.push(fd.trim().to_string());
            }
        } else if let Some(rest) = call.strip_prefix("close(") {
            let fd = rest.split(')').next().unwrap_or("");
            dir_fds.retain(|f| f != fd);
        } else if let Some(rest) = call.strip_prefix("fsync(") {
            let fd = rest.split(')').next().unwrap_or("");
            if renamed && dir_fds.iter().any(|f| f == fd) {
                return true;
            }
        }
    }
    false
}

/// Two standalone agents (two machines, one replica root) start together on a store that
/// ignores conditional writes, both finding generation 1 free (their HEADs are answered only
/// after both were sent). They must not both write generation 1: the one whose identity is
/// not in the manifest read back gives up with a clear error.
fn two_standalone_claims_never_share_a_generation(
    addr: std::net::SocketAddr,
    env_for: impl Fn(&str) -> Vec<(String, String)>,
    url: &str,
    ignores_conditional_writes: bool,
) -> Result<()> {
    let proxy = Proxy::new(addr)?;
    let env = env_for(&proxy.endpoint());
    let (da, dbd) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (a_db, b_db) = (da.path().join("app.db"), dbd.path().join("app.db"));
    assert!(App::writer(&a_db, &["--count", "5", "--rate", "0"])?.finish(T)?.success());
    assert!(App::writer(&b_db, &["--count", "5", "--rate", "0", "--start-id", "1000"])?.finish(T)?.success());
    proxy.set_response_hold(&["HEAD ", "manifest.json"], Duration::from_secs(2));
    let mut a = replicate(&a_db, url, &env)?;
    let mut b = replicate(&b_db, url, &env)?;
    let deadline = std::time::Instant::now() + T;
    // Each agent either claims a generation of its own (and says so in its metrics) or exits
    // with an error that names the claim it lost.
    let mut generations = Vec::new();
    for agent in [&mut a, &mut b] {
        loop {
            if let Some(st) = agent.try_status()? {
                let err = strip_ansi(&agent.stderr());
                assert!(!st.success(), "agent exited {st}:\n{err}");
                // Lost the claim, or came second and found the other's history (not its own
                // database's): both leave the generation to the other writer.
                assert!(
                    err.contains("already claimed by another writer") || err.contains("not proven to descend"),
                    "unclear error:\n{err}"
                );
                break;
            }
            if let Ok(m) = agent.metrics() {
                if m.select("walfleet_durable_txid").unwrap_or(0.0) >= 1.0 {
                    generations.push(m.select("walfleet_generation").context("generation")? as u64);
                    break;
                }
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "agent neither replicated nor exited:\n{}",
                agent.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if ignores_conditional_writes {
        assert!(proxy.responses_held() >= 2, "both claims' HEADs went through the proxy");
    }
    assert!(!generations.is_empty(), "neither agent replicated");
    let mut unique = generations.clone();
    unique.dedup();
    assert_eq!(unique.len(), generations.len(), "two agents write one generation: {generations:?}");
    Ok(())
}

#[test]
fn two_standalone_claims_on_garage_never_share_a_generation() -> Result<()> {
    let garage = tests::garage::Garage::new()?;
    two_standalone_claims_never_share_a_generation(
        garage.addr(),
        |e| garage.env_for(e),
        &garage.url("safety/claim"),
        true,
    )
}

#[test]
fn two_standalone_claims_on_s3s_fs_never_share_a_generation() -> Result<()> {
    let s3 = S3Server::new()?;
    two_standalone_claims_never_share_a_generation(s3.addr(), |e| s3.env_for(e), &s3.url("safety/claim"), false)
}
