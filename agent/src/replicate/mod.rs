//! Replication of one database: claim a generation, give it a base, then ship every committed
//! transaction as an LTX file, at most one upload per sync interval, none while idle.

pub mod capture;
pub mod compact;
pub mod lock;
pub mod state;
pub mod upload;
mod watch;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{TimeZone, Utc};
use proto::model::{Generation, Txid};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::health::DbMetrics;
use crate::layout;
use crate::manifest::{self, Manifest, Parent, Position, Writer};
use crate::object_store::{ObjectStore, PutCondition, PutOptions};
use crate::restore;
use capture::{Capture, Captured, Outcome};
use watch::{wal_stat, WalWatcher};

#[derive(Clone, Debug)]
pub struct ReplicateOptions {
    pub sync_interval: Duration,
    /// How often a level-9 snapshot of the whole database is written (zero: never).
    pub snapshot_interval: Duration,
    /// Checkpoint once this many WAL bytes were captured since the last one.
    pub checkpoint_bytes: u64,
    /// ... or this long after the last one, if anything was captured.
    pub checkpoint_interval: Duration,
    /// How long shutdown may spend shipping the final tail.
    pub shutdown_timeout: Duration,
    /// Most bytes of captured-but-not-uploaded files kept on local disk during an outage;
    /// past it the spool is dropped and the whole database is shipped once storage is back.
    pub spool_budget: u64,
    pub instance: String,
    /// The platform's name for this instance (Cloud Run revision, Fly machine, host name).
    pub platform: Option<String>,
    /// The generation to write, issued by the controller; without one the next number after
    /// the highest under the root is taken.
    pub generation: Option<Generation>,
    /// A live rollback's point: the new generation continues from this generation and
    /// transaction (which the local database was restored to) instead of the newest history.
    pub parent_at: Option<proto::model::Position>,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            sync_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(24 * 3600),
            checkpoint_bytes: 4 << 20,
            checkpoint_interval: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(8),
            spool_budget: 1 << 30,
            instance: new_instance_id(),
            platform: None,
            generation: None,
            parent_at: None,
        }
    }
}

pub fn new_instance_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A local database that is not on the replica's lineage.
#[derive(Debug, thiserror::Error)]
#[error(
    "database {db} (checksum {local:016x}) is not proven to descend from the replica's newest position \
     (generation {generation}, transaction {txid}): no local state from walfleet names that generation and it \
     does not equal a sealed position; restore it from the replica or move it aside"
)]
pub struct StaleDatabase {
    pub db: String,
    pub local: u64,
    pub txid: Txid,
    pub generation: Generation,
}

pub struct DbReplicator {
    pub db_path: PathBuf,
    pub replica_url: String,
    pub store: Arc<ObjectStore>,
    pub opts: ReplicateOptions,
    pub metrics: Arc<DbMetrics>,
}

type Shared = Arc<Mutex<Capture>>;

async fn blocking<T: Send + 'static>(
    cap: &Shared,
    f: impl FnOnce(&mut Capture) -> Result<T> + Send + 'static,
) -> Result<T> {
    let cap = cap.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = cap.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut c)
    })
    .await
    .context("capture task")?
}

/// Compaction levels and how often each one folds the level below it.
const COMPACTION_LEVELS: [(u8, Duration); 3] =
    [(1, Duration::from_secs(30)), (2, Duration::from_secs(300)), (3, Duration::from_secs(3600))];

/// How long shutdown waits for a compaction that is still running, after the final flush.
const COMPACTION_GRACE: Duration = Duration::from_secs(2);

/// A compaction running on its own task: the files of `level - 1` it folds (a prefix of that
/// level's local list) and where its output is.
struct Compaction {
    level: u8,
    inputs: Vec<(Txid, Txid, PathBuf)>,
    out: PathBuf,
    task: tokio::task::JoinHandle<Result<()>>,
}

struct Session {
    /// Local copies of uploaded files per level (0..=2) awaiting compaction: (min, max, path).
    local: [Vec<(Txid, Txid, PathBuf)>; 3],
    generation: Generation,
    manifest: Manifest,
    manifest_etag: Option<String>,
    conditional: bool,
    spool: VecDeque<Captured>,
    durable: Txid,
    durable_checksum: u64,
    /// The spool was dropped behind this transaction: the whole database is owed as the next
    /// one before anything else is captured.
    full_after: Option<Txid>,
}

impl DbReplicator {
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        // Files left by an earlier process belong to its generation: this one starts afresh.
        let staging = state::dir_for(&self.db_path).join("staging");
        let _ = std::fs::remove_dir_all(&staging);
        let _ = std::fs::remove_dir_all(state::dir_for(&self.db_path).join("ltx"));
        let (db, st) = (self.db_path.clone(), staging.clone());
        let cap = tokio::task::spawn_blocking(move || Capture::open(&db, &st)).await.context("open task")??;
        let cap: Shared = Arc::new(Mutex::new(cap));
        let mut session = self.start(&cap, &cancel).await?;
        self.metrics.ready.store(true, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<()>(1);
        *self.metrics.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx.clone());
        let mut watcher = WalWatcher::new(&self.db_path, tx);
        let mut last_upload: Option<Instant> = None;
        let mut last_checkpoint = Instant::now();
        let mut last_compaction = [Instant::now(); COMPACTION_LEVELS.len()];
        let mut compacting: Option<Compaction> = None;
        let mut last_snapshot = Instant::now();
        // The transaction the last snapshot covers: an idle database is not snapshotted again.
        let mut snapshotted: Option<Txid> = None;
        let mut last_wal_stat = wal_stat(&self.db_path);
        let mut backoff = Duration::from_millis(200);
        let mut capture_backoff = Duration::from_millis(200);
        // Set after a failed capture: how long to wait before trying again.
        let mut capture_retry: Option<Duration> = None;
        loop {
            let idle = session.spool.is_empty();
            // A snapshot owed for the last durable transaction is taken even if no commit
            // follows it; after that an idle database costs no requests.
            let snapshot_owed = !self.opts.snapshot_interval.is_zero()
                && session.durable > Txid::ZERO
                && snapshotted != Some(session.durable)
                && last_snapshot.elapsed() >= self.opts.snapshot_interval;
            if let Some(wait) = capture_retry.take() {
                // A failed capture is tried again after its backoff, whether the log changed or
                // not (a commit waits in it).
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            } else {
                watcher.resume();
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = rx.recv() => watcher.pause(),
                    _ = tokio::time::sleep(if idle { Duration::from_secs(1) } else { backoff }) => {
                        let now = wal_stat(&self.db_path);
                        if idle && now == last_wal_stat && !snapshot_owed {
                            continue;
                        }
                    }
                }
            }
            last_wal_stat = wal_stat(&self.db_path);
            // Commits waiting for the next sync count as lag from the moment they are seen.
            self.refresh_pending(&cap, &session).await?;
            if self.metrics.pending_bytes.load(Ordering::Relaxed) > 0 {
                let now = capture::now_ms();
                let _ = self.metrics.oldest_pending_ms.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            }
            // First commit after idle goes at once; under steady writes at most one upload
            // per sync interval.
            if let Some(t) = last_upload {
                let wait = self.opts.sync_interval.saturating_sub(t.elapsed());
                if !wait.is_zero() {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
            // The interval runs from one sync's start to the next, so an upload's own duration
            // does not stretch it (and the lag with it).
            let tick = Instant::now();
            let started = crate::replicate::capture::now_ms();
            // A capture or checkpoint that fails (a full or failing disk under the notes
            // directory) changed nothing: it is tried again with backoff, like an upload, while
            // the metrics, /readyz and the reports to the controller say so.
            match self.sync_local(&cap, &mut session, &mut last_checkpoint).await {
                Ok(()) => {
                    self.metrics.captured_at_ms.store(started, Ordering::Relaxed);
                    if self.metrics.capture_failing.swap(false, Ordering::Relaxed) {
                        info!(db = %self.metrics.name, "capture works again");
                    }
                    capture_backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    self.metrics.capture_errors.fetch_add(1, Ordering::Relaxed);
                    self.metrics.capture_failing.store(true, Ordering::Relaxed);
                    warn!(error = %format!("{e:#}"), db = %self.metrics.name, retry_in = ?capture_backoff,
                        "capture failed; will retry");
                    capture_retry = Some(capture_backoff);
                    capture_backoff = (capture_backoff * 2).min(Duration::from_secs(30));
                }
            }
            if !session.spool.is_empty() {
                let uploaded = self.upload_spool(&mut session).await;
                self.refresh_pending(&cap, &session).await?;
                match uploaded {
                    Ok(()) => {
                        backoff = Duration::from_millis(200);
                        last_upload = Some(tick);
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), db = %self.metrics.name, "upload failed; will retry");
                        // Exponential backoff with jitter, at most 30 s.
                        let jitter =
                            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
                        backoff = (backoff * 2).min(Duration::from_secs(30)) + jitter;
                        continue;
                    }
                }
            }
            // Compaction runs beside the loop, one level at a time, so a large merge and its
            // upload never hold back the next transaction's upload.
            if compacting.as_ref().is_some_and(|c| c.task.is_finished()) {
                if let Some(c) = compacting.take() {
                    self.compacted(&mut session, c).await;
                }
            }
            if compacting.is_none() {
                for (i, (level, every)) in COMPACTION_LEVELS.iter().enumerate() {
                    if last_compaction[i].elapsed() >= *every {
                        last_compaction[i] = Instant::now();
                        compacting = self.start_compaction(&session, *level);
                        if compacting.is_some() {
                            break;
                        }
                    }
                }
            }
            let snapshot_due =
                !self.opts.snapshot_interval.is_zero() && last_snapshot.elapsed() >= self.opts.snapshot_interval;
            if snapshot_due
                && session.spool.is_empty()
                && session.durable > Txid::ZERO
                && snapshotted != Some(session.durable)
            {
                match self.snapshot(&cap, &session).await {
                    Ok(true) => {
                        last_snapshot = Instant::now();
                        snapshotted = Some(session.durable);
                    }
                    Ok(false) => {}
                    Err(e) => warn!(error = %format!("{e:#}"), "snapshot failed; will retry"),
                }
            }
        }
        let sealed = self.shutdown(&cap, &mut session).await;
        // A compaction still running only folds durable transactions: let it finish or stop it.
        if let Some(mut c) = compacting {
            if tokio::time::timeout(COMPACTION_GRACE, &mut c.task).await.is_err() {
                c.task.abort();
                info!(db = %self.metrics.name, level = c.level, "stopped an unfinished compaction at shutdown");
            }
        }
        sealed
    }

    /// Captures what was committed and checkpoints when one is due. On an error nothing that
    /// was captured is lost: the transactions captured so far are in the spool.
    async fn sync_local(&self, cap: &Shared, session: &mut Session, last_checkpoint: &mut Instant) -> Result<()> {
        self.capture_all(cap, session, false).await?;
        // Checkpoint right after the capture, while few commits can have landed since (the
        // captured files are already fsynced on local disk), so that under steady writes the
        // tail to capture under the write lock stays small and the log does not only grow.
        let since = blocking(cap, |c| Ok(c.since_checkpoint)).await?;
        let due = since >= self.opts.checkpoint_bytes
            || (since > 0 && last_checkpoint.elapsed() >= self.opts.checkpoint_interval);
        let checkpointed = if due {
            let (done, tail) = blocking(cap, |c| {
                let done = c.checkpoint();
                Ok((done, c.take_tail()))
            })
            .await?;
            if let Some(c) = tail {
                self.captured(session, c);
            }
            done?
        } else {
            false
        };
        if checkpointed {
            self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
            *last_checkpoint = Instant::now();
        } else {
            // Let the app's own checkpoints copy the log up to its end (see
            // Capture::advance_pin).
            blocking(cap, |c| c.advance_pin()).await?;
        }
        Ok(())
    }

    /// Final flush and seal, bounded by the shutdown timeout.
    async fn shutdown(&self, cap: &Shared, session: &mut Session) -> Result<()> {
        let deadline = self.opts.shutdown_timeout;
        let flush = async {
            while let Err(e) = self.capture_all(cap, session, true).await {
                warn!(error = %format!("{e:#}"), "final capture failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            while !session.spool.is_empty() {
                if let Err(e) = self.upload_spool(session).await {
                    warn!(error = %format!("{e:#}"), "final upload failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            let mut m = session.manifest.clone();
            m.sealed = Some(Position::new(session.durable, session.durable_checksum));
            m.sealed_at = Some(Utc::now());
            m.update(&self.store, session.manifest_etag.as_deref().filter(|_| session.conditional)).await?;
            Ok::<_, anyhow::Error>(())
        };
        match tokio::time::timeout(deadline, flush).await {
            Ok(Ok(())) => {
                info!(db = %self.metrics.name, txid = %session.durable, generation = %session.generation, "sealed generation");
                Ok(())
            }
            Ok(Err(e)) => Err(e.context("final flush")),
            Err(_) => bail!("final flush did not finish within {deadline:?}; durable up to {}", session.durable),
        }
    }

    async fn capture_all(&self, cap: &Shared, session: &mut Session, drain: bool) -> Result<()> {
        let spooled: u64 = session.spool.iter().map(|c| c.size).sum();
        // Only the front of the spool can have been sent (uploads go in order and stop at the
        // first failure): it may have landed with its answer lost, so it is kept and its TXID
        // is never given to other content. Everything behind it was never sent.
        if spooled > self.opts.spool_budget && session.spool.iter().skip(1).any(|c| !c.full) {
            // Storage has been away too long: drop the spool behind its front and ship the
            // whole database as the transaction after that, so the history keeps no gap.
            warn!(db = %self.metrics.name, spooled, budget = self.opts.spool_budget,
                "upload spool over budget; dropping it and shipping the whole database when storage returns");
            for c in session.spool.drain(1..) {
                let _ = std::fs::remove_file(&c.path);
            }
            session.full_after = Some(session.spool.front().map_or(session.durable, |c| c.txid));
        }
        if let Some(after) = session.full_after {
            // Owed until it is written: a capture that failed leaves it owed, and nothing
            // is captured from the log before it.
            let c = blocking(cap, move |c| {
                c.txid = after;
                c.capture_full(after.next())
            })
            .await?;
            session.full_after = None;
            self.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
            self.captured(session, c);
            if !drain {
                return self.refresh_pending(cap, session).await;
            }
        }
        loop {
            match blocking(cap, |c| c.capture()).await? {
                Outcome::Idle => break,
                Outcome::Captured(c) => {
                    // One transaction per sync: commits that land meanwhile wait for the next.
                    let more = c.more;
                    self.captured(session, c);
                    if !more && !drain {
                        break;
                    }
                }
                Outcome::Lost(reason) => {
                    warn!(db = %self.metrics.name, %reason, "wal continuity lost; writing the whole database as the next transaction");
                    let c = blocking(cap, |c| {
                        let next = c.txid.next();
                        c.capture_full(next)
                    })
                    .await?;
                    self.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
                    self.captured(session, c);
                    if !drain {
                        break;
                    }
                }
            }
        }
        self.refresh_pending(cap, session).await
    }

    /// Lag in bytes: committed WAL not yet captured plus captured files not yet uploaded.
    async fn refresh_pending(&self, cap: &Shared, session: &Session) -> Result<()> {
        let pending = blocking(cap, |c| Ok(c.pending_wal_bytes())).await?;
        let spooled: u64 = session.spool.iter().map(|c| c.size).sum();
        self.metrics.pending_bytes.store(pending + spooled, Ordering::Relaxed);
        Ok(())
    }

    fn captured(&self, session: &mut Session, c: Captured) {
        self.metrics.local_txid.store(c.txid.0, Ordering::Relaxed);
        if session.spool.is_empty() {
            self.metrics.oldest_pending_ms.store(c.timestamp_ms, Ordering::Relaxed);
        }
        session.spool.push_back(c);
    }

    async fn upload_spool(&self, session: &mut Session) -> Result<()> {
        while let Some(c) = session.spool.front().cloned() {
            let key = layout::ltx_key(
                &self.store.backend(),
                &layout::generation_prefix(session.generation),
                0,
                c.txid,
                c.txid,
            );
            let ts = Utc.timestamp_millis_opt(c.timestamp_ms).single().unwrap_or_else(Utc::now);
            let opts = PutOptions {
                condition: if session.conditional { PutCondition::IfNoneMatch } else { PutCondition::None },
                timestamp: Some(ts),
            };
            // Already there from an attempt whose answer was lost counts only if it is this file.
            if let Err(e) = upload::put_once(&self.store, &key, &c.path, &opts, upload::Same::Bytes).await {
                self.metrics.upload_errors.fetch_add(1, Ordering::Relaxed);
                self.metrics.upload_blocked.store(true, Ordering::Relaxed);
                return Err(e);
            }
            self.metrics.upload_blocked.store(false, Ordering::Relaxed);
            self.metrics.uploads.fetch_add(1, Ordering::Relaxed);
            self.metrics.last_upload_ms.store(capture::now_ms(), Ordering::Relaxed);
            session.spool.pop_front();
            session.durable = c.txid;
            session.durable_checksum = c.post_checksum;
            self.metrics.set_durable(c.txid.0, c.post_checksum);
            self.keep_for_compaction(session, 0, c.txid, c.txid, &c.path);
            match session.spool.front() {
                Some(n) => self.metrics.oldest_pending_ms.store(n.timestamp_ms, Ordering::Relaxed),
                None => self.metrics.oldest_pending_ms.store(0, Ordering::Relaxed),
            }
        }
        self.save_state(session)?;
        Ok(())
    }

    /// Moves an uploaded file into the local compaction area of its level (the top level's
    /// files are not needed locally).
    fn keep_for_compaction(&self, session: &mut Session, level: u8, min: Txid, max: Txid, path: &Path) {
        let Some(list) = session.local.get_mut(level as usize) else {
            let _ = std::fs::remove_file(path);
            return;
        };
        let dir = state::dir_for(&self.db_path).join("ltx").join(level.to_string());
        let dest = dir.join(crate::ltx::filename(min.0, max.0));
        match std::fs::create_dir_all(&dir).and_then(|()| std::fs::rename(path, &dest)) {
            Ok(()) => list.push((min, max, dest)),
            Err(e) => {
                warn!(error = %e, "keep file for compaction");
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Writes the whole database as of the durable transaction as a level-9 snapshot, so a
    /// restore (and the next generation's base) starts from one file instead of the whole
    /// history. False when commits arrived that are not durable yet: it waits for a quieter
    /// wake-up.
    async fn snapshot(&self, cap: &Shared, session: &Session) -> Result<bool> {
        let durable = session.durable;
        let Some(c) = blocking(cap, move |c| c.snapshot(durable)).await? else { return Ok(false) };
        let key = layout::ltx_key(
            &self.store.backend(),
            &layout::generation_prefix(session.generation),
            layout::SNAPSHOT_LEVEL,
            Txid(1),
            durable,
        );
        let opts = PutOptions {
            condition: if session.conditional { PutCondition::IfNoneMatch } else { PutCondition::None },
            timestamp: Utc.timestamp_millis_opt(c.timestamp_ms).single(),
        };
        // A snapshot of this transaction written before (its answer lost) differs only in its
        // timestamp: the same size is the check.
        let put = upload::put_once(&self.store, &key, &c.path, &opts, upload::Same::Size).await;
        let _ = std::fs::remove_file(&c.path);
        put?;
        self.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
        info!(db = %self.metrics.name, txid = %durable, bytes = c.size, "wrote snapshot");
        Ok(true)
    }

    /// Starts folding the local files of `level - 1` into one file at `level` and uploading
    /// it, on its own task; `None` when there is nothing to fold.
    fn start_compaction(&self, session: &Session, level: u8) -> Option<Compaction> {
        let inputs = session.local[(level - 1) as usize].clone();
        if inputs.len() < 2 {
            return None;
        }
        let (min, max) = (inputs[0].0, inputs[inputs.len() - 1].1);
        let out = state::dir_for(&self.db_path).join("staging").join(format!("compact-{level}.ltx"));
        let key =
            layout::ltx_key(&self.store.backend(), &layout::generation_prefix(session.generation), level, min, max);
        let (store, conditional, o, upload) = (self.store.clone(), session.conditional, out.clone(), out.clone());
        let paths: Vec<PathBuf> = inputs.iter().map(|i| i.2.clone()).collect();
        let task = tokio::spawn(async move {
            let header = tokio::task::spawn_blocking(move || {
                let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
                compact::merge(&refs, &o)
            })
            .await
            .context("compaction task")??
            .0;
            let opts = PutOptions {
                condition: if conditional { PutCondition::IfNoneMatch } else { PutCondition::None },
                timestamp: Utc.timestamp_millis_opt(header.timestamp_ms).single(),
            };
            // The merge of the same inputs is the same file.
            upload::put_once(&store, &key, &upload, &opts, upload::Same::Bytes).await
        });
        Some(Compaction { level, inputs, out, task })
    }

    /// Takes a finished compaction's result: its inputs go, its output is kept for the level
    /// above. A failed one leaves everything as it was, to be tried again.
    async fn compacted(&self, session: &mut Session, c: Compaction) {
        let result = match c.task.await {
            Ok(r) => r,
            Err(e) => Err(anyhow::Error::from(e).context("compaction task")),
        };
        if let Err(e) = result {
            warn!(error = %format!("{e:#}"), level = c.level, "compaction failed; will retry");
            return;
        }
        let below = (c.level - 1) as usize;
        for (_, _, p) in &c.inputs {
            let _ = std::fs::remove_file(p);
        }
        session.local[below].drain(..c.inputs.len());
        let (min, max) = (c.inputs[0].0, c.inputs[c.inputs.len() - 1].1);
        self.keep_for_compaction(session, c.level, min, max, &c.out);
        info!(level = c.level, %min, %max, files = c.inputs.len(), "compacted");
    }

    fn save_state(&self, session: &Session) -> Result<()> {
        // The cursor belongs to the newest captured transaction; it is only recorded when
        // that transaction is the durable one.
        let st = state::LocalState {
            replica: self.replica_url.clone(),
            generation: session.generation,
            txid: session.durable,
            checksum: format!("{:016x}", session.durable_checksum),
            cursor: None,
        };
        state::save(&self.db_path, &st)
    }

    /// Claims a new generation and ships whatever the replica lacks of the local database.
    ///
    /// The local database may continue the replica's history only with proof: the local
    /// state (written by walfleet's own restore or by the previous agent) names the newest
    /// generation, or the database equals the position that generation was sealed at.
    /// Anything else is refused as stale rather than replicated as the truth.
    async fn start(&self, cap: &Shared, cancel: &CancellationToken) -> Result<Session> {
        let store = &self.store;
        let conditional = store.probe_conditional_writes(".walfleet-probe").await.context("probe object store")?;
        let top = store.list("", Some("/")).await.context("list replica root")?;
        let gens = layout::generations(&top);
        // The newest position on record: the newest generation with any history (or the
        // point a rollback restored).
        let latest = match self.opts.parent_at {
            Some(p) => {
                let files = restore::list_generation(store, &layout::generation_prefix(p.generation)).await?;
                if restore::plan::latest(&files).is_none_or(|t| t < p.txid) {
                    bail!(
                        "rollback point generation {} transaction {} is not in the replica",
                        p.generation.0,
                        p.txid.0
                    );
                }
                Some((p.generation, p.txid, files))
            }
            None => restore::newest_history(store, &gens).await?,
        };
        // A database without a single page yet has nothing to replicate: wait for the app.
        let scan = loop {
            let scan = blocking(cap, |c| c.scan()).await?;
            if scan.commit > 0 {
                break scan;
            }
            tokio::select! {
                _ = cancel.cancelled() => bail!("stopped before the database had any content"),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        };
        let generation = match (self.opts.generation, gens.last()) {
            (None, last) => last.map(|g| layout::next_generation(*g)).transpose()?.unwrap_or(Generation(1)),
            // Never write into a generation that exists: its keys belong to another writer.
            (Some(g), Some(last)) if g <= *last => bail!(
                "the controller issued generation {g} for {} but the replica already has generation {last}: \
                 another writer created it after the lease was granted; restart to acquire a newer one",
                self.replica_url
            ),
            (Some(g), _) => g,
        };
        let local = state::load(&self.db_path);
        // (parent, whether the local database is exactly at the parent's position)
        let (parent, exact): (Option<Parent>, bool) = match &latest {
            None => (None, false),
            Some((g, txid, _)) => {
                // Our notes name this generation, or an ancestor reached only through
                // generations that hold nothing of their own (writers killed right after copying
                // their base): each of those generations' only writer was a process that ran
                // beside this database, so they continue the lineage the notes prove.
                let g_manifest = Manifest::load(store, *g).await?;
                let sealed = g_manifest.as_ref().and_then(|m| m.sealed.clone()).filter(|p| p.txid == *txid);
                let mut proven = local.as_ref().is_some_and(|s| s.replica == self.replica_url && s.generation == *g);
                let mut cursor = g_manifest;
                for _ in 0..64 {
                    let Some(m) = cursor.take() else { break };
                    let Some(parent) = m.parent.as_ref().filter(|p| m.base_txid == *txid && p.position.txid == *txid)
                    else {
                        break;
                    };
                    if local.as_ref().is_some_and(|s| {
                        s.replica == self.replica_url && s.generation == parent.generation && s.txid <= *txid
                    }) {
                        proven = true;
                        break;
                    }
                    cursor = Manifest::load(store, parent.generation).await?;
                }
                let known = local.as_ref().filter(|_| proven);
                let (checksum, exact) = match (known, sealed) {
                    (Some(s), _) if s.txid == *txid && s.checksum() == Some(scan.checksum) => (scan.checksum, true),
                    (_, Some(p)) if p.checksum() == Some(scan.checksum) => (scan.checksum, true),
                    (Some(s), sealed) => {
                        info!(db = %self.metrics.name, local_txid = %s.txid, replica_txid = %txid,
                            "database changed since the replica's newest transaction; shipping it whole");
                        (
                            sealed
                                .and_then(|p| p.checksum())
                                .or_else(|| (s.txid == *txid).then(|| s.checksum()).flatten())
                                .unwrap_or(0),
                            false,
                        )
                    }
                    (None, _) => {
                        return Err(StaleDatabase {
                            db: self.db_path.display().to_string(),
                            local: scan.checksum,
                            txid: *txid,
                            generation: *g,
                        }
                        .into())
                    }
                };
                (Some(Parent { generation: *g, position: Position::new(*txid, checksum) }), exact)
            }
        };
        let manifest = Manifest {
            format: manifest::FORMAT,
            generation,
            base_txid: parent.as_ref().map(|p| p.position.txid).unwrap_or(Txid::ZERO),
            parent,
            page_size: scan.page_size,
            writer: Writer {
                instance: self.opts.instance.clone(),
                host: hostname(),
                pid: std::process::id(),
                platform: self.opts.platform.clone(),
            },
            created_at: Utc::now(),
            sealed: None,
            sealed_at: None,
            reason: None,
        };
        let etag = manifest.claim(store, conditional).await?;
        info!(db = %self.metrics.name, %generation, conditional, "claimed generation");
        self.metrics.generation.store(generation.0, Ordering::Relaxed);
        let mut session = Session {
            generation,
            manifest,
            manifest_etag: etag,
            conditional,
            local: Default::default(),
            spool: VecDeque::new(),
            durable: Txid::ZERO,
            durable_checksum: 0,
            full_after: None,
        };
        match &latest {
            None => {
                let c = blocking(cap, |c| c.capture_full(Txid(1))).await?;
                self.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
                self.captured(&mut session, c);
            }
            Some((g, txid, files)) => {
                let txid = *txid;
                self.copy_base(*g, files, txid, generation).await?;
                // From here on this database's notes name the new generation.
                state::save(
                    &self.db_path,
                    &state::LocalState {
                        replica: self.replica_url.clone(),
                        generation,
                        txid,
                        checksum: format!("{:016x}", if exact { scan.checksum } else { 0 }),
                        cursor: None,
                    },
                )?;
                session.durable = txid;
                session.durable_checksum = if exact { scan.checksum } else { 0 };
                self.metrics.set_durable(txid.0, session.durable_checksum);
                self.metrics.local_txid.store(txid.0, Ordering::Relaxed);
                let c = blocking(cap, move |c| {
                    c.txid = txid;
                    if exact {
                        return Ok(None);
                    }
                    c.capture_full(txid.next()).map(Some)
                })
                .await?;
                if let Some(c) = c {
                    self.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
                    self.captured(&mut session, c);
                }
            }
        }
        self.upload_spool(&mut session).await?;
        Ok(session)
    }

    /// Gives the new generation its own base by server-side copies of the files that
    /// restore the parent at `txid`: a generation prefix restores on its own.
    async fn copy_base(
        &self,
        parent: Generation,
        files: &[layout::LtxObject],
        txid: Txid,
        to: Generation,
    ) -> Result<()> {
        let from = layout::generation_prefix(parent);
        let plan = restore::plan::plan(&from, files, Some(txid))?;
        let dest = layout::generation_prefix(to);
        for f in &plan {
            let key = layout::ltx_key(&self.store.backend(), &dest, f.level, f.min, f.max);
            let ts = self.store.head(&f.key).await?.and_then(|m| m.timestamp);
            let opts = PutOptions { condition: PutCondition::None, timestamp: ts };
            self.store.copy(&f.key, &key, &opts).await.with_context(|| format!("copy {} to {key}", f.key))?;
        }
        info!(files = plan.len(), %parent, %to, "copied base from parent generation");
        Ok(())
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
