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
use tracing::{error, info, warn};

use proto::model::{DatabaseName, Generation, InstanceId, Position, Txid};

use crate::config::{DbConfig, ReplicateConfig};
use crate::control::{
    at_head, local_position, CommandStream, Control, ControlError, Lease, LeaseKeeper, LeaseKind, LeaseState, Mode,
    RetentionKeeper, Rollback,
};
use crate::health::{self, DbMetrics, Registry};
use crate::layout;
use crate::object_store::ObjectStore;
use crate::replicate::{lock, new_instance_id, state, DbReplicator, ReplicateOptions, StaleDatabase};
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

/// How the databases are started.
#[derive(Clone, Debug)]
pub struct StartOptions {
    /// Move a local database that is not on the lineage aside and restore.
    pub stale_protection: bool,
    /// How long the final flush and seal may take.
    pub shutdown_timeout: Duration,
    pub mode: Mode,
    /// Run mode: cancelled to stop the app, which a handoff does just like SIGTERM. Without
    /// it (a sidecar) a handoff stops only the database's replication.
    pub app_stop: Option<CancellationToken>,
    /// How long the release at shutdown may take.
    pub release_timeout: Duration,
    /// A live rollback this start continues: its database was restored to the point, and its
    /// new generation starts there.
    pub rollback: Option<Rollback>,
}

/// The databases' tasks, and the controller's command stream (which ends with `stop`).
pub struct Started {
    pub tasks: Vec<(String, JoinHandle<Result<()>>)>,
    pub commands: Option<JoinHandle<()>>,
    pub control: Option<Arc<Control>>,
    /// Cancelled when the replication of any database ends with an error.
    pub failed: CancellationToken,
}

/// Starts replication of every database (with a controller: after acquiring its lease;
/// restoring first where needed) and returns once each is ready. Used by run mode and by
/// `replicate` alike.
pub async fn start_databases(
    cfg: &ReplicateConfig,
    registry: &Arc<Registry>,
    stop: &CancellationToken,
    opts: &StartOptions,
) -> Result<Started> {
    // One instance ID per process start (fencing rule 2), shared by all its databases.
    let instance = new_instance_id();
    let control = match &cfg.control {
        Some(c) => {
            let id: InstanceId = instance.parse().context("make an instance id")?;
            Some(Control::connect(c, id, opts.mode, registry.controller_errors.clone(), stop).await?)
        }
        None => None,
    };
    let commands = control.as_ref().map(|c| tokio::spawn(CommandStream { control: c.clone() }.run(stop.clone())));
    let failed = CancellationToken::new();
    let mut out = Vec::new();
    for db in &cfg.databases {
        let store = Arc::new(
            ObjectStore::from_url(&db.replica_url)
                .await
                .with_context(|| format!("open replica {}", db.replica_url))?
                .with_encryption(db.encryption_key.as_ref()),
        );
        registry.add_store(store.requests());
        let metrics = DbMetrics::new(&db.name);
        registry.add_db(metrics.clone());
        let task = match (&control, &db.database) {
            (Some(control), Some(name)) => {
                let leased = Leased { control: control.clone(), name: name.clone(), metrics: metrics.clone() };
                leased.start(db, cfg, store, stop, opts, &instance).await?
            }
            _ => start_one(db, cfg, store, metrics.clone(), stop.child_token(), opts, &instance, None, None).await?,
        };
        out.push((db.name.clone(), watch_replication(task, metrics, failed.clone())));
    }
    registry.started.store(true, Ordering::Relaxed);
    Ok(Started { tasks: out, commands, control, failed })
}

/// Marks a database whose replication ended with an error (metrics, /readyz, reports) and
/// cancels `failed`, which in run mode stops the app: it must not keep writing unreplicated.
fn watch_replication(
    task: JoinHandle<Result<()>>,
    metrics: Arc<DbMetrics>,
    failed: CancellationToken,
) -> JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let res = match task.await {
            Ok(r) => r,
            Err(e) => Err(anyhow::Error::from(e).context("replication task")),
        };
        if let Err(e) = &res {
            metrics.stopped.store(true, Ordering::Relaxed);
            error!(db = %metrics.name, error = %format!("{e:#}"), "replication stopped");
            failed.cancel();
        }
        res
    })
}

/// One database under a lease (or in a fork of its own).
struct Leased {
    control: Arc<Control>,
    name: DatabaseName,
    metrics: Arc<DbMetrics>,
}

impl Leased {
    /// Acquires, restores where the local database is not at the controller's head, starts
    /// replication in the issued generation and returns the task that renews, replicates and
    /// finally releases.
    async fn start(
        self,
        db: &DbConfig,
        cfg: &ReplicateConfig,
        store: Arc<ObjectStore>,
        stop: &CancellationToken,
        opts: &StartOptions,
        instance: &str,
    ) -> Result<JoinHandle<Result<()>>> {
        self.metrics.lease.set_state(LeaseState::Pending);
        // The controller never issues a number below what the replica already holds.
        let top = store.list("", Some("/")).await.with_context(|| format!("list replica {}", db.replica_url))?;
        let min_generation =
            layout::generations(&top).last().map(|g| layout::next_generation(*g)).transpose()?.unwrap_or(Generation(1));
        let position = local_position(&db.path, &db.replica_url);
        let rollback_to = opts.rollback.as_ref().filter(|r| r.database == self.name).map(|r| r.point);
        let lease =
            self.control.acquire(&self.name, position, min_generation, &db.replica_url, rollback_to, stop).await?;
        let db_stop = stop.child_token();
        match &lease.kind {
            LeaseKind::Held { confirmed_until, .. } => {
                self.metrics.lease.confirm(*confirmed_until);
                let trigger = opts.app_stop.clone().unwrap_or_else(|| db_stop.clone());
                self.control.handoffs.watch(&self.name, trigger);
            }
            LeaseKind::Forked { .. } => {
                self.metrics.lease.set_state(LeaseState::Forked);
            }
        }
        // Renewing starts now: a long restore must not let the lease run out.
        let keeper_stop = CancellationToken::new();
        let keeper = tokio::spawn(
            LeaseKeeper {
                control: self.control.clone(),
                database: self.name.clone(),
                lease: lease.clone(),
                metrics: self.metrics.clone(),
            }
            .run(keeper_stop.clone()),
        );
        let retention = tokio::spawn(
            RetentionKeeper {
                control: self.control.clone(),
                database: self.name.clone(),
                generation: lease.generation,
                store: store.clone(),
                forked: matches!(lease.kind, LeaseKind::Forked { .. }),
            }
            .run(keeper_stop.clone()),
        );
        let started = async {
            if let Some(head) = lease.head.filter(|h| db.path.exists() && !at_head(position, *h)) {
                self.set_aside_behind_head(db, head, position, opts)?;
            }
            let generation = Some(lease.generation);
            start_one(db, cfg, store, self.metrics.clone(), db_stop, opts, instance, generation, rollback_to).await
        }
        .await;
        let task = match started {
            Ok(t) => t,
            Err(e) => {
                keeper_stop.cancel();
                let _ = keeper.await;
                let _ = retention.await;
                // Nothing was sealed; releasing lets the next instance in without waiting for
                // the TTL.
                self.release(&lease, None, opts.release_timeout).await;
                return Err(e);
            }
        };
        let mode = opts.mode;
        let release_timeout = opts.release_timeout;
        Ok(tokio::spawn(async move {
            let res = match task.await {
                Ok(r) => r,
                Err(e) => Err(anyhow::Error::from(e).context("replication task")),
            };
            keeper_stop.cancel();
            let _ = keeper.await;
            let _ = retention.await;
            // The replicator returns Ok only once the generation is sealed at its durable
            // position; after a failed seal the controller must not move the head.
            let sealed = res.is_ok().then(|| Position {
                generation: lease.generation,
                txid: Txid(self.metrics.durable_txid.load(Ordering::Relaxed)),
            });
            self.release(&lease, sealed, release_timeout).await;
            res?;
            match self.control.handoffs.requested(&self.name) {
                // A sidecar cannot stop its app: exiting is how the platform learns of it.
                Some(h) if mode == Mode::Replicate => Err(ControlError::HandedOver {
                    project: self.control.project().clone(),
                    database: self.name.clone(),
                    newcomer: h.newcomer,
                }
                .into()),
                _ => Ok(()),
            }
        }))
    }

    /// The local database is not where the controller says the lineage is: move it aside so
    /// that the replica is restored, or refuse without stale protection.
    fn set_aside_behind_head(
        &self,
        db: &DbConfig,
        head: Position,
        local: Option<Position>,
        opts: &StartOptions,
    ) -> Result<()> {
        let notes =
            local.map_or_else(|| "none".to_string(), |p| format!("generation {} txid {}", p.generation.0, p.txid.0));
        if !opts.stale_protection {
            bail!(
                "database {} is not at the controller's head for {}/{} (generation {} txid {}; local notes: {notes}): \
                 restore it from the replica, move it aside, or drop --no-stale-protection to let the agent do that",
                db.path.display(),
                self.control.project(),
                self.name,
                head.generation.0,
                head.txid.0
            );
        }
        if opts.mode != Mode::Run {
            bail!(
                "database {} is not at the controller's head for {}/{} (generation {} txid {}; local notes: {notes}); {}",
                db.path.display(),
                self.control.project(),
                self.name,
                head.generation.0,
                head.txid.0,
                sidecar_refusal(&db.path)
            );
        }
        let aside = move_aside(&db.path)?;
        warn!(db = %db.name, moved_to = %aside.display(), head_generation = head.generation.0, head_txid = head.txid.0,
            local = %notes, "database is not at the controller's head; moved it aside and restoring the replica");
        Ok(())
    }

    async fn release(&self, lease: &Lease, sealed: Option<Position>, timeout: Duration) {
        let report = crate::control::report(&self.metrics);
        match self.control.release(&self.name, lease.generation, sealed, report, timeout).await {
            Ok(released) => {
                self.metrics.lease.set_state(LeaseState::Released);
                info!(db = %self.name, generation = lease.generation.0, sealed_txid = sealed.map(|p| p.txid.0),
                    released, "lease released");
            }
            Err(status) => warn!(db = %self.name, generation = lease.generation.0, error = %status.message(),
                "release failed; the lease runs out after its ttl"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn start_one(
    db: &DbConfig,
    cfg: &ReplicateConfig,
    store: Arc<ObjectStore>,
    metrics: Arc<DbMetrics>,
    db_stop: CancellationToken,
    opts: &StartOptions,
    instance: &str,
    generation: Option<Generation>,
    parent_at: Option<Position>,
) -> Result<JoinHandle<Result<()>>> {
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
                snapshot_interval: cfg.snapshot_interval,
                platform: crate::config::platform_identity(),
                shutdown_timeout: opts.shutdown_timeout,
                spool_budget: cfg.spool_budget,
                instance: instance.to_string(),
                generation,
                parent_at,
                ..ReplicateOptions::default()
            },
            metrics: metrics.clone(),
        };
        info!(db = %db.name, path = %db.path.display(), replica = %db.replica_url, "replicating");
        let mut task = tokio::spawn(rep.run(db_stop.clone()));
        // Ready once the generation is claimed and the base is in place.
        loop {
            if metrics.ready.load(Ordering::Relaxed) {
                return Ok(task);
            }
            tokio::select! {
                res = &mut task => {
                    let err = match res {
                        Ok(Ok(())) => bail!("replication of {} stopped during start", db.name),
                        Ok(Err(e)) => e,
                        Err(e) => return Err(e.into()),
                    };
                    if err.downcast_ref::<StaleDatabase>().is_some() && opts.stale_protection && opts.mode != Mode::Run {
                        return Err(err.context(sidecar_refusal(&db.path)));
                    }
                    if attempt == 0 && opts.stale_protection && err.downcast_ref::<StaleDatabase>().is_some() {
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

/// Why a sidecar does not move a database aside: the app beside it may have the file open, and
/// would keep writing to the renamed file while the agent restored another in its place.
fn sidecar_refusal(db: &Path) -> String {
    format!(
        "in replicate mode the agent does not move {} aside while an app may have it open: stop the app, \
         move the database and its -wal and -shm files aside (or delete them), and start again; run mode \
         does this itself",
        db.display()
    )
}

/// Renames the database and its companions to `<db>.stale-<time>[-wal|-shm]`; never deletes.
pub fn move_aside(db: &Path) -> Result<PathBuf> {
    move_aside_as(db, "stale")
}

/// Renames the database and its companions to `<db>.<label>-<time>[-wal|-shm]`.
fn move_aside_as(db: &Path, label: &str) -> Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let mut base = db.as_os_str().to_owned();
    base.push(format!(".{label}-{stamp}"));
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
    state::sync_dir(state::parent_dir(db))?;
    clear_notes(db);
    Ok(base)
}

/// Deletes the agent's notes about `db` (they described the database just moved aside), all
/// but the lock file: the lock this agent holds must stay where a second agent would look.
fn clear_notes(db: &Path) {
    let Ok(entries) = std::fs::read_dir(state::dir_for(db)) else { return };
    for e in entries.flatten() {
        if e.file_name() == lock::LOCK_FILE {
            continue;
        }
        let p = e.path();
        let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// Takes the notes-directory lock of every database (see [`lock::lock`]): held by the caller
/// for the agent's lifetime, before anything in the notes is read or deleted.
pub fn lock_databases(cfg: &ReplicateConfig) -> Result<Vec<lock::NotesLock>> {
    cfg.databases.iter().map(|db| lock::lock(&db.path)).collect()
}

/// Runs the app under replication; returns its exit code. A live rollback stops the app,
/// restores the chosen point and runs it again, in the same process.
pub async fn run(cfg: RunConfig, cancel: CancellationToken) -> Result<i32> {
    let Some((program, args)) = cfg.app.split_first() else { bail!("no app to run: give it after --") };
    let _locks = lock_databases(&cfg.replicate)?;
    let flush_budget = (cfg.grace / 3).min(Duration::from_secs(3));
    let app_budget = cfg.grace.saturating_sub(flush_budget);
    // With a controller the release comes out of the flush budget, so the grace still holds.
    let release_timeout = match cfg.replicate.control {
        Some(_) => (flush_budget / 3).min(Duration::from_secs(1)),
        None => Duration::ZERO,
    };
    let registry = Arc::new(Registry::default());
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(health::serve(cfg.replicate.http_addr, registry.clone(), http_stop.clone()));
    let mut rollback: Option<Rollback> = None;
    let result = loop {
        let stop = CancellationToken::new();
        // SIGTERM, or a handoff or rollback the controller asks for: all stop the app the same way.
        let app_stop = cancel.child_token();
        let opts = StartOptions {
            stale_protection: cfg.stale_protection,
            shutdown_timeout: flush_budget - release_timeout,
            mode: Mode::Run,
            app_stop: Some(app_stop.clone()),
            release_timeout,
            rollback: rollback.take(),
        };
        registry.clear_databases();
        let started = tokio::select! {
            r = start_databases(&cfg.replicate, &registry, &stop, &opts) => r,
            _ = cancel.cancelled() => {
                stop.cancel();
                break Err(anyhow::anyhow!("stopped before the app started"));
            }
        };
        let started = match started {
            Ok(t) => t,
            Err(e) => {
                stop.cancel();
                break Err(e);
            }
        };
        // Replication that ends with an error stops the app: it must not run unreplicated.
        let failed = started.failed.clone();
        let stop_app = app_stop.clone();
        let watcher = tokio::spawn(async move {
            failed.cancelled().await;
            if !stop_app.is_cancelled() {
                error!("replication stopped; stopping the app");
                stop_app.cancel();
            }
        });
        let code = if app_stop.is_cancelled() {
            info!("stop requested before the app started; not starting it");
            0
        } else {
            match run_app(program, args, &app_stop, app_budget).await {
                Ok(c) => c,
                Err(e) => {
                    stop.cancel();
                    let _ = finish(started).await;
                    break Err(e);
                }
            }
        };
        watcher.abort();
        let replication_failed = started.failed.is_cancelled();
        info!(code, "app exited; shipping the final changes");
        stop.cancel();
        let control = started.control.clone();
        let failed = finish(started).await || replication_failed;
        let asked = control.map(|c| c.handoffs.rollbacks()).unwrap_or_default();
        let Some(r) = asked.into_iter().next().filter(|_| !cancel.is_cancelled() && !failed) else {
            break Ok(if failed && code == 0 { 1 } else { code });
        };
        match restore_point(&cfg.replicate, &r).await {
            Ok(()) => rollback = Some(r),
            // The database was left as it was: the app starts again on it.
            Err(e) => warn!(db = %r.database, error = %format!("{e:#}"),
                "rollback failed; restarting the app on the database as it was"),
        }
    };
    http_stop.cancel();
    let _ = http.await;
    result
}

/// Waits for every database's final flush and the command stream; true when one failed.
async fn finish(started: Started) -> bool {
    let mut failed = false;
    for (name, t) in started.tasks {
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
    if let Some(c) = started.commands {
        let _ = c.await;
    }
    failed
}

/// A live rollback's restore: the point is restored and verified beside the database first;
/// only then is the database moved aside (kept, never deleted) and the restored file put in
/// its place, with notes that let the next generation continue from the point.
async fn restore_point(cfg: &ReplicateConfig, r: &Rollback) -> Result<()> {
    let Some(db) = cfg.databases.iter().find(|d| d.database.as_ref() == Some(&r.database)) else {
        bail!("rollback of {}: this agent does not replicate it", r.database);
    };
    let started = Instant::now();
    let store = Arc::new(
        ObjectStore::from_url(&db.replica_url)
            .await
            .with_context(|| format!("open replica {}", db.replica_url))?
            .with_encryption(db.encryption_key.as_ref()),
    );
    let mut staged = db.path.as_os_str().to_owned();
    staged.push(format!(".rollback-{}", r.restore_id));
    let staged = PathBuf::from(staged);
    if staged.exists() {
        move_aside(&staged)?;
    }
    let opts = RestoreOptions {
        output: staged.clone(),
        target: Target::At(r.point.generation, r.point.txid),
        if_db_not_exists: false,
        if_replica_exists: false,
        integrity_check: true,
        replica_url: None,
    };
    let applied = match restore::restore(store, &opts).await? {
        RestoreOutcome::Restored { applied, .. } => applied,
        other => bail!("nothing restored: {other:?}"),
    };
    let aside = move_aside_as(&db.path, "rolled-back")?;
    // Never over a file that appeared at the path meanwhile.
    restore::rename_noreplace(&staged, &db.path)
        .with_context(|| format!("move restored database to {}", db.path.display()))?;
    state::sync_dir(state::parent_dir(&db.path))?;
    state::save(
        &db.path,
        &state::LocalState {
            replica: db.replica_url.clone(),
            generation: r.point.generation,
            txid: applied.txid,
            checksum: format!("{:016x}", applied.checksum),
            cursor: None,
        },
    )?;
    info!(db = %db.name, generation = r.point.generation.0, txid = applied.txid.0, moved_to = %aside.display(),
        elapsed_ms = started.elapsed().as_millis() as u64, "rolled back: restored the point; starting again");
    Ok(())
}

/// Starts the app and waits for it; `app_stop` sends it SIGTERM, and it is killed if it is
/// still running `budget` later. Returns its exit code (128 + signal when killed by one).
async fn run_app(program: &str, args: &[String], app_stop: &CancellationToken, budget: Duration) -> Result<i32> {
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
        _ = app_stop.cancelled() => {
            let at = Instant::now();
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
            match tokio::time::timeout(budget, child.wait()).await {
                Ok(s) => s.context("wait for app")?,
                Err(_) => {
                    warn!(after = ?at.elapsed(), "app ignored SIGTERM; killing it");
                    let _ = child.kill().await;
                    child.wait().await.context("wait for app")?
                }
            }
        }
    };
    Ok(status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
}
