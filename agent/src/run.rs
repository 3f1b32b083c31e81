//! Run mode: restore (if a replica exists), start replication, then start the app; forward
//! signals; on SIGTERM stop the app, ship the final WAL tail, seal, and exit with the app's
//! code, all inside the platform's grace period.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{DbConfig, ReplicateConfig};
use crate::health::{self, DbMetrics, Registry};
use crate::object_store::ObjectStore;
use crate::replicate::{state, DbReplicator, ReplicateOptions, StaleDatabase};
use crate::restore::{self, RestoreOptions, RestoreOutcome, Target};

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub replicate: ReplicateConfig,
    pub app: Vec<String>,
    /// From SIGTERM to exit, everything included (Cloud Run allows 10 s).
    pub grace: Duration,
    /// Move a local database that is not on the replica's lineage aside and restore.
    pub stale_protection: bool,
}

struct Running {
    name: String,
    task: JoinHandle<Result<()>>,
}

/// Starts replication of every database (restoring first where needed) and returns once each
/// is ready. Used by run mode and by `replicate` alike.
pub async fn start_databases(
    cfg: &ReplicateConfig,
    registry: &Arc<Registry>,
    stop: &CancellationToken,
    stale_protection: bool,
    shutdown_timeout: Duration,
) -> Result<Vec<(String, JoinHandle<Result<()>>)>> {
    let mut out = Vec::new();
    for db in &cfg.databases {
        let store = Arc::new(
            ObjectStore::from_url(&db.replica_url).await.with_context(|| format!("open replica {}", db.replica_url))?,
        );
        registry.add_store(store.requests());
        let metrics = DbMetrics::new(&db.name);
        registry.add_db(metrics.clone());
        let r = start_one(db, cfg, store, metrics, stop, stale_protection, shutdown_timeout).await?;
        out.push((r.name, r.task));
    }
    registry.started.store(true, Ordering::Relaxed);
    Ok(out)
}

async fn start_one(
    db: &DbConfig,
    cfg: &ReplicateConfig,
    store: Arc<ObjectStore>,
    metrics: Arc<DbMetrics>,
    stop: &CancellationToken,
    stale_protection: bool,
    shutdown_timeout: Duration,
) -> Result<Running> {
    for attempt in 0..2 {
        if !db.path.exists() {
            restore_latest(db, store.clone()).await?;
        }
        let rep = DbReplicator {
            db_path: db.path.clone(),
            replica_url: db.replica_url.clone(),
            store: store.clone(),
            opts: ReplicateOptions {
                sync_interval: cfg.sync_interval,
                platform: crate::config::platform_identity(),
                shutdown_timeout,
                spool_budget: cfg.spool_budget,
                ..ReplicateOptions::default()
            },
            metrics: metrics.clone(),
        };
        info!(db = %db.name, path = %db.path.display(), replica = %db.replica_url, "replicating");
        let mut task = tokio::spawn(rep.run(stop.child_token()));
        // Ready once the generation is claimed and the base is in place.
        loop {
            if metrics.ready.load(Ordering::Relaxed) {
                return Ok(Running { name: db.name.clone(), task });
            }
            tokio::select! {
                res = &mut task => {
                    let err = match res {
                        Ok(Ok(())) => bail!("replication of {} stopped during start", db.name),
                        Ok(Err(e)) => e,
                        Err(e) => return Err(e.into()),
                    };
                    if attempt == 0 && stale_protection && err.downcast_ref::<StaleDatabase>().is_some() {
                        let aside = move_aside(&db.path)?;
                        warn!(db = %db.name, moved_to = %aside.display(), reason = %err,
                            "stale database moved aside; restoring the replica");
                        break;
                    }
                    return Err(err);
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
    bail!("database {} could not be started", db.name)
}

async fn restore_latest(db: &DbConfig, store: Arc<ObjectStore>) -> Result<()> {
    let started = Instant::now();
    let opts = RestoreOptions {
        output: db.path.clone(),
        target: Target::Latest,
        if_db_not_exists: true,
        if_replica_exists: true,
        integrity_check: true,
        replica_url: Some(db.replica_url.clone()),
    };
    match restore::restore(store, &opts).await.with_context(|| format!("restore {}", db.name))? {
        RestoreOutcome::Restored { applied, .. } => info!(
            db = %db.name,
            txid = %applied.txid,
            bytes = applied.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "restored before start"
        ),
        RestoreOutcome::SkippedNoReplica => info!(db = %db.name, "no replica yet; starting a new lineage"),
        RestoreOutcome::SkippedDbExists => {}
    }
    Ok(())
}

/// Renames the database and its companions to `<db>.stale-<time>[-wal|-shm]`; never deletes.
pub fn move_aside(db: &Path) -> Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let mut base = db.as_os_str().to_owned();
    base.push(format!(".stale-{stamp}"));
    let base = PathBuf::from(base);
    for suffix in ["", "-wal", "-shm"] {
        let mut from = db.as_os_str().to_owned();
        from.push(suffix);
        let from = PathBuf::from(from);
        if from.exists() {
            let mut to = base.as_os_str().to_owned();
            to.push(suffix);
            std::fs::rename(&from, PathBuf::from(&to)).with_context(|| format!("move {} aside", from.display()))?;
        }
    }
    let notes = state::dir_for(db);
    if notes.exists() {
        let _ = std::fs::remove_dir_all(&notes);
    }
    Ok(base)
}

/// Runs the app under replication; returns its exit code.
pub async fn run(cfg: RunConfig, cancel: CancellationToken) -> Result<i32> {
    let Some((program, args)) = cfg.app.split_first() else { bail!("no app to run: give it after --") };
    let flush_budget = (cfg.grace / 3).min(Duration::from_secs(3));
    let app_budget = cfg.grace.saturating_sub(flush_budget);
    let registry = Arc::new(Registry::default());
    let stop = CancellationToken::new();
    let http = tokio::spawn(health::serve(cfg.replicate.http_addr, registry.clone(), stop.clone()));
    let tasks = tokio::select! {
        r = start_databases(&cfg.replicate, &registry, &stop, cfg.stale_protection, flush_budget) => r,
        _ = cancel.cancelled() => {
            stop.cancel();
            bail!("stopped before the app started");
        }
    };
    let tasks = match tasks {
        Ok(t) => t,
        Err(e) => {
            stop.cancel();
            let _ = http.await;
            return Err(e);
        }
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start app {program:?}"))?;
    let pid = child.id();
    info!(app = %program, pid, "app started");
    let status = tokio::select! {
        s = child.wait() => s.context("wait for app")?,
        _ = cancel.cancelled() => {
            let at = Instant::now();
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
            match tokio::time::timeout(app_budget, child.wait()).await {
                Ok(s) => s.context("wait for app")?,
                Err(_) => {
                    warn!(after = ?at.elapsed(), "app ignored SIGTERM; killing it");
                    let _ = child.kill().await;
                    child.wait().await.context("wait for app")?
                }
            }
        }
    };
    let code =
        status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));
    info!(code, "app exited; shipping the final changes");
    stop.cancel();
    let mut failed = false;
    for (name, t) in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(db = %name, error = %format!("{e:#}"), "final flush failed");
                failed = true;
            }
            Err(e) => {
                warn!(db = %name, error = %e, "replication task failed");
                failed = true;
            }
        }
    }
    let _ = http.await;
    if failed && code == 0 {
        return Ok(1);
    }
    Ok(code)
}
