//! The fleet inventory: what every database's replica holds (a reconcile scan of its listing),
//! how it is doing (agent reports, stall and silence detection), what it costs, and drills.
//!
//! The scan reads only listings: one delimited LIST of the replica root and one LIST per
//! generation (paged by 1,000 keys). Object bodies are never read, so a scan costs a few
//! requests per database however large the history is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent::layout::{self, LtxObject};
use agent::object_store::ObjectStore;
use agent::restore::plan;
use proto::model::{DatabaseName, Generation, InstanceId, Position, ProjectName, Txid};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::lease::{now_ms, Leases};
use crate::roots::{self, RootError};
use crate::store::{InstanceRow, Millis, NoteRow, Store, StoreError};

/// Why a recorded replica URL is not read.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Refused(#[from] RootError),
}

/// Note kinds kept per database.
pub const REPLICA: &str = "replica";
pub const SCAN: &str = "scan";
pub const DRILL: &str = "drill";
pub const RETENTION: &str = "retention";
pub const DRILL_SCHEDULE: &str = "drill_schedule";
/// The newest drill that passed and matched the agent's checksum (the proof of persistence).
pub const PROOF: &str = "proof";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DrillSchedule {
    /// 0: never (overrides the controller's --drill-interval).
    pub every_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RetentionNote {
    pub keep_ms: u64,
}

/// Prices for the monthly estimate (USD; defaults are AWS S3 Standard list prices).
#[derive(Clone, Copy, Debug)]
pub struct Prices {
    pub storage_gb_month: f64,
    pub put_per_1000: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Prices { storage_gb_month: 0.023, put_per_1000: 0.005 }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReplicaNote {
    pub url: String,
}

/// What one generation's listing holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GenerationScan {
    pub generation: u64,
    pub objects: u64,
    pub bytes: u64,
    /// Newest transaction a complete history reaches (0: none).
    pub latest_txid: u64,
}

/// The result of one reconcile scan of a replica.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Scan {
    pub at: Millis,
    pub objects: u64,
    pub bytes: u64,
    pub earliest_generation: u64,
    pub earliest_txid: u64,
    pub earliest_ms: Millis,
    pub latest_generation: u64,
    pub latest_txid: u64,
    pub latest_ms: Millis,
    /// What the listing contradicts; empty when it agrees with the reports and the last scan.
    pub drift: String,
    pub requests: u64,
    pub error: String,
    pub generations: Vec<GenerationScan>,
}

/// A drill's outcome.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Drill {
    pub at: Millis,
    pub ok: bool,
    pub generation: u64,
    pub txid: u64,
    pub duration_ms: u64,
    pub message: String,
    pub expected_checksum: String,
    pub restored_checksum: String,
}

fn millis(t: Option<SystemTime>) -> Millis {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as Millis)
}

/// Scans the replica at `url`. `head` is the newest position agents reported durable; `prev`
/// the previous scan. Drift: a reported-durable transaction the bucket does not reach, a gap
/// in a generation's history, or objects of a generation gone since the previous scan.
pub async fn scan(url: &str, head: Option<Position>, prev: Option<&Scan>) -> Scan {
    let mut out = Scan { at: now_ms(), ..Default::default() };
    let store = match ObjectStore::from_url(url).await {
        Ok(s) => s,
        Err(e) => {
            out.error = format!("open replica {url}: {e}");
            return out;
        }
    };
    if let Err(e) = scan_into(&store, head, prev, &mut out).await {
        out.error = format!("{e:#}");
    }
    out.requests = store.requests().snapshot().iter().map(|(_, n)| n).sum();
    out
}

async fn scan_into(
    store: &ObjectStore,
    head: Option<Position>,
    prev: Option<&Scan>,
    out: &mut Scan,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let top = store.list("", Some("/")).await.context("list replica root")?;
    let mut drift: Vec<String> = Vec::new();
    for g in layout::generations(&top) {
        let base = layout::generation_prefix(g);
        let listing = store.list(&base, None).await.with_context(|| format!("list {base}"))?;
        let modified: HashMap<&str, Millis> =
            listing.objects.iter().map(|o| (o.key.as_str(), millis(o.last_modified))).collect();
        let files: Vec<LtxObject> = layout::ltx_objects(&store.backend(), &base, &listing);
        let mut gs = GenerationScan {
            generation: g.0,
            objects: listing.objects.len() as u64,
            bytes: listing.objects.iter().map(|o| o.size).sum(),
            latest_txid: 0,
        };
        out.objects += gs.objects;
        out.bytes += gs.bytes;
        if !files.is_empty() {
            match plan::plan(&base, &files, None) {
                Ok(p) => {
                    if let Some(last) = p.last() {
                        gs.latest_txid = last.max.0;
                        if gs.latest_txid >= out.latest_txid || g.0 > out.latest_generation {
                            out.latest_generation = g.0;
                            out.latest_txid = last.max.0;
                            out.latest_ms = modified.get(last.key.as_str()).copied().unwrap_or(0);
                        }
                    }
                    // The earliest point: the first file that starts the history.
                    if out.earliest_generation == 0 {
                        if let Some(first) = files.iter().filter(|f| f.min == Txid(1)).min_by_key(|f| f.max) {
                            out.earliest_generation = g.0;
                            out.earliest_txid = first.max.0;
                            out.earliest_ms = modified.get(first.key.as_str()).copied().unwrap_or(0);
                        }
                    }
                }
                Err(e) => drift.push(format!("generation {}: {e}", g.0)),
            }
        }
        if let Some(before) = prev.and_then(|p| p.generations.iter().find(|x| x.generation == g.0)) {
            if gs.objects < before.objects {
                drift.push(format!(
                    "generation {}: {} objects gone since the scan before (had {}, now {})",
                    g.0,
                    before.objects - gs.objects,
                    before.objects,
                    gs.objects
                ));
            }
        }
        out.generations.push(gs);
    }
    if let Some(before) = prev {
        for lost in before.generations.iter().filter(|b| !out.generations.iter().any(|g| g.generation == b.generation))
        {
            drift.push(format!(
                "generation {}: all {} objects gone since the scan before",
                lost.generation, lost.objects
            ));
        }
    }
    if let Some(h) = head {
        let have = out.generations.iter().find(|g| g.generation == h.generation.0).map_or(0, |g| g.latest_txid);
        if have < h.txid.0 {
            drift.push(format!(
                "generation {}: transaction {} was reported durable but the bucket's history reaches only {}",
                h.generation.0, h.txid.0, have
            ));
        }
    }
    out.drift = drift.join("; ");
    Ok(())
}

/// Monthly cost estimate: stored bytes, and PUTs at the rate the holder has uploaded so far.
pub fn monthly_cost(prices: Prices, bytes: u64, uploads: u64, uploading_for_ms: Millis) -> (f64, f64) {
    let storage = bytes as f64 / 1e9 * prices.storage_gb_month;
    let hours = uploading_for_ms as f64 / 3.6e6;
    let puts_per_month = if hours > 0.0 { uploads as f64 / hours * 730.0 } else { 0.0 };
    (storage, puts_per_month / 1000.0 * prices.put_per_1000)
}

/// A database's health as the inventory shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Healthy,
    Lagging,
    Stalled,
    Offline,
    Violation,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Lagging => "lagging",
            Status::Stalled => "stalled",
            Status::Offline => "offline",
            Status::Violation => "violation",
            Status::Unknown => "unknown",
        }
    }
}

/// Reports older than this many renew intervals mean the agent is silent.
const SILENT_AFTER_RENEWS: i64 = 2;
/// Lag above this makes a database "lagging".
pub const LAGGING_SECONDS: f64 = 10.0;

/// Judges one database from its instances (all roles), whether the watcher has it stalled,
/// and the renew interval.
pub fn status(instances: &[&InstanceRow], stalled: bool, renew_ms: i64, now: Millis) -> (Status, String) {
    let live = |i: &&&InstanceRow| now - i.last_seen <= renew_ms * (SILENT_AFTER_RENEWS + 1);
    if let Some(v) = instances.iter().filter(live).find(|i| i.role == "forked" || i.role == "fenced") {
        return (Status::Violation, format!("instance {} runs beside the holder ({})", v.info.id, v.role));
    }
    let Some(holder) = instances.iter().filter(|i| i.role == "holder").max_by_key(|i| i.last_seen) else {
        return match instances.iter().max_by_key(|i| i.last_seen) {
            Some(i) => (Status::Offline, format!("no holder; last seen instance {} ({})", i.info.id, i.role)),
            None => (Status::Unknown, "no agent has reported".into()),
        };
    };
    let silent_for = now - holder.last_seen;
    if silent_for > renew_ms * SILENT_AFTER_RENEWS {
        return (Status::Offline, format!("holder {} silent for {} s", holder.info.id, silent_for / 1000));
    }
    let Some(r) = &holder.report else { return (Status::Unknown, "holder has not reported yet".into()) };
    if stalled || r.upload_blocked {
        return (
            Status::Stalled,
            format!("local transaction {} but durable stuck at {}", r.local_txid.0, r.durable_txid.0),
        );
    }
    if r.lag_seconds > LAGGING_SECONDS || r.state == "lagging" {
        return (Status::Lagging, format!("{:.1} s of commits not yet durable", r.lag_seconds));
    }
    (Status::Healthy, String::new())
}

/// Per-holder progress the watcher tracks between ticks.
#[derive(Clone, Debug)]
struct Progress {
    durable: u64,
    /// When durable last moved (or local first passed it).
    since: Instant,
    stalled: bool,
    silent: bool,
}

/// The background work of the inventory: reconcile scans and the stall watcher.
pub struct Inventory {
    pub leases: Arc<Leases>,
    pub prices: Prices,
    pub scan_every: Duration,
    pub stall_after: Duration,
    progress: Mutex<HashMap<(ProjectName, DatabaseName), Progress>>,
    /// Client-side encryption keys by `project/database`, for drills.
    keys: HashMap<String, agent::object_store::EncryptionKey>,
}

impl Inventory {
    pub fn new(
        leases: Arc<Leases>,
        prices: Prices,
        scan_every: Duration,
        stall_after: Duration,
        keys: HashMap<String, agent::object_store::EncryptionKey>,
    ) -> Arc<Inventory> {
        Arc::new(Inventory { leases, prices, scan_every, stall_after, progress: Mutex::default(), keys })
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.leases.store()
    }

    /// The client-side encryption key given for a database's drills (`serve --drill-keys`).
    pub fn drill_key(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
    ) -> Option<&agent::object_store::EncryptionKey> {
        self.keys.get(&format!("{project}/{database}"))
    }

    /// Whether the watcher currently judges (project, database) stalled.
    pub fn is_stalled(&self, project: &ProjectName, database: &DatabaseName) -> bool {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(project.clone(), database.clone()))
            .is_some_and(|p| p.stalled)
    }

    /// Scans every database with a reported replica (of `project`, or all; one database when
    /// `database` is given); returns how many were scanned.
    pub async fn scan_all(
        &self,
        project: Option<&ProjectName>,
        database: Option<&DatabaseName>,
    ) -> Result<u32, StoreError> {
        let replicas = self.store().list_notes(project, Some(REPLICA)).await?;
        let scans: HashMap<(ProjectName, DatabaseName), Scan> = self
            .store()
            .list_notes(project, Some(SCAN))
            .await?
            .into_iter()
            .filter_map(|n| Some(((n.project, n.database), serde_json::from_str(&n.body).ok()?)))
            .collect();
        let mut scanned = 0;
        let mut project_roots: HashMap<ProjectName, Vec<String>> = HashMap::new();
        for note in replicas.into_iter().filter(|n| database.is_none_or(|d| &n.database == d)) {
            let Ok(replica) = serde_json::from_str::<ReplicaNote>(&note.body) else { continue };
            if !project_roots.contains_key(&note.project) {
                let r = self.store().replica_roots(&note.project).await?;
                project_roots.insert(note.project.clone(), r);
            }
            let head = self.store().get_database(&note.project, &note.database).await?.and_then(|d| d.head);
            let prev = scans.get(&(note.project.clone(), note.database.clone()));
            // A URL outside the project's current roots is never read.
            let allowed = roots::check(&note.project, &replica.url, &project_roots[&note.project]);
            let result = match allowed {
                Ok(()) => scan(&replica.url, head, prev).await,
                Err(e) => Scan { at: now_ms(), error: format!("not scanned: {e}"), ..Default::default() },
            };
            let drift_changed = !result.drift.is_empty() && prev.is_none_or(|p| p.drift != result.drift);
            if drift_changed {
                self.leases
                    .event(
                        &note.project,
                        &note.database,
                        "drift",
                        None,
                        None,
                        format!("replica {}: {}", replica.url, result.drift),
                    )
                    .await;
            }
            if !result.error.is_empty() {
                warn!(project = %note.project, database = %note.database, error = %result.error, "reconcile scan failed");
            }
            let body = serde_json::to_string(&result).unwrap_or_default();
            let row =
                NoteRow { project: note.project, database: note.database, kind: SCAN.into(), at: result.at, body };
            self.store().put_note(&row).await?;
            scanned += 1;
        }
        Ok(scanned)
    }

    pub async fn run_scanner(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.scan_every) => {}
            }
            match self.scan_all(None, None).await {
                Ok(n) => info!(databases = n, "reconcile scan done"),
                Err(e) => warn!(error = %e, "reconcile scan failed"),
            }
        }
    }

    /// Drills each database whose last drill is older than its schedule (its own, else
    /// `default_every`; zero: never). Checked every `tick`, one drill at a time.
    pub async fn run_drills(self: Arc<Self>, default_every: Duration, tick: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            if let Err(e) = self.drills_due(default_every, &cancel).await {
                warn!(error = %e, "scheduled drills failed");
            }
        }
    }

    async fn drills_due(&self, default_every: Duration, cancel: &CancellationToken) -> Result<(), StoreError> {
        let notes = self.store().list_notes(None, None).await?;
        let mut by_db: HashMap<(ProjectName, DatabaseName), HashMap<String, String>> = HashMap::new();
        for n in notes {
            by_db.entry((n.project, n.database)).or_default().insert(n.kind, n.body);
        }
        let now = now_ms();
        for ((p, d), kinds) in by_db {
            if cancel.is_cancelled() || !kinds.contains_key(REPLICA) {
                continue;
            }
            let every = match kinds.get(DRILL_SCHEDULE).and_then(|b| serde_json::from_str::<DrillSchedule>(b).ok()) {
                Some(s) => Duration::from_millis(s.every_ms),
                None => default_every,
            };
            if every.is_zero() {
                continue;
            }
            let last = kinds.get(DRILL).and_then(|b| serde_json::from_str::<Drill>(b).ok()).map_or(0, |d| d.at);
            if now - last >= every.as_millis() as i64 {
                self.drill(&p, &d).await?;
            }
        }
        Ok(())
    }

    pub async fn set_drill_schedule(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        every_ms: u64,
    ) -> Result<(), StoreError> {
        let row = NoteRow::json(project, database, DRILL_SCHEDULE, now_ms(), &DrillSchedule { every_ms });
        self.store().put_note(&row).await
    }

    /// Every renew interval: a holder whose local TXID is ahead of a durable TXID that has not
    /// moved for `stall_after` is stalled; a holder silent for two renew intervals is missing.
    /// Each raises one event when it starts and one when it clears.
    pub async fn run_watcher(self: Arc<Self>, cancel: CancellationToken) {
        let every = Duration::from_millis(self.leases.renew_interval_ms());
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.watch_once().await {
                warn!(error = %e, "stall watcher failed");
            }
        }
    }

    async fn watch_once(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let renew_ms = self.leases.renew_interval_ms() as i64;
        let rows = self.store().list_instances(None, now - renew_ms * 20).await?;
        let mut events: Vec<(ProjectName, DatabaseName, &'static str, InstanceId, String)> = Vec::new();
        {
            let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            for i in rows.iter().filter(|i| i.role == "holder") {
                let (Some(db), Some(r)) = (&i.database, &i.report) else { continue };
                let key = (i.info.project.clone(), db.clone());
                let p = progress.entry(key.clone()).or_insert(Progress {
                    durable: r.durable_txid.0,
                    since: Instant::now(),
                    stalled: false,
                    silent: false,
                });
                if r.durable_txid.0 != p.durable || r.local_txid.0 <= r.durable_txid.0 {
                    p.durable = r.durable_txid.0;
                    p.since = Instant::now();
                    if p.stalled {
                        p.stalled = false;
                        events.push((
                            key.0.clone(),
                            key.1.clone(),
                            "stall_cleared",
                            i.info.id.clone(),
                            format!("durable transaction moving again ({})", r.durable_txid.0),
                        ));
                    }
                } else if !p.stalled && p.since.elapsed() >= self.stall_after {
                    p.stalled = true;
                    events.push((
                        key.0.clone(),
                        key.1.clone(),
                        "stalled",
                        i.info.id.clone(),
                        format!(
                            "instance {} committed up to transaction {} but nothing became durable past {} for {} s",
                            i.info.id,
                            r.local_txid.0,
                            r.durable_txid.0,
                            p.since.elapsed().as_secs()
                        ),
                    ));
                }
                let silent = now - i.last_seen > renew_ms * SILENT_AFTER_RENEWS;
                if silent != p.silent {
                    p.silent = silent;
                    let (kind, msg) = if silent {
                        (
                            "report_missing",
                            format!("no report from holder {} for {} s", i.info.id, (now - i.last_seen) / 1000),
                        )
                    } else {
                        ("report_resumed", format!("holder {} reports again", i.info.id))
                    };
                    events.push((key.0.clone(), key.1.clone(), kind, i.info.id.clone(), msg));
                }
            }
        }
        for (p, d, kind, id, msg) in events {
            self.leases.event(&p, &d, kind, Some(&id), None, msg).await;
        }
        Ok(())
    }

    /// Records the replica URL an agent reported, when it is new or changed.
    pub async fn remember_replica(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        url: &str,
    ) -> Result<(), StoreError> {
        if url.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_string(&ReplicaNote { url: url.to_string() }).unwrap_or_default();
        let known = self.store().list_notes(Some(project), Some(REPLICA)).await?;
        if known.iter().any(|n| &n.database == database && n.body == body) {
            return Ok(());
        }
        let row =
            NoteRow { project: project.clone(), database: database.clone(), kind: REPLICA.into(), at: now_ms(), body };
        self.store().put_note(&row).await
    }

    /// The retention window of a database (0: none).
    pub async fn retention_ms(&self, project: &ProjectName, database: &DatabaseName) -> Result<u64, StoreError> {
        let notes = self.store().list_notes(Some(project), Some(RETENTION)).await?;
        Ok(notes
            .into_iter()
            .find(|n| &n.database == database)
            .and_then(|n| serde_json::from_str::<RetentionNote>(&n.body).ok())
            .map_or(0, |r| r.keep_ms))
    }

    pub async fn set_retention(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        keep_ms: u64,
    ) -> Result<(), StoreError> {
        let row = NoteRow::json(project, database, RETENTION, now_ms(), &RetentionNote { keep_ms });
        self.store().put_note(&row).await
    }

    /// The replica URL recorded for a database, as long as it lies under its project's current
    /// replica roots (an admin may have changed them since it was recorded): the controller
    /// and the admin verbs read nothing else.
    pub async fn replica_url(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
    ) -> Result<Option<String>, ReplicaError> {
        let notes = self.store().list_notes(Some(project), Some(REPLICA)).await?;
        let Some(url) = notes
            .into_iter()
            .find(|n| &n.database == database)
            .and_then(|n| serde_json::from_str::<ReplicaNote>(&n.body).ok())
            .map(|r| r.url)
        else {
            return Ok(None);
        };
        roots::check(project, &url, &self.store().replica_roots(project).await?)?;
        Ok(Some(url))
    }

    /// Restores the newest reported-durable point into scratch space, checks integrity and the
    /// checksum the agent reported for it, and records the result (an event when it fails).
    pub async fn drill(&self, project: &ProjectName, database: &DatabaseName) -> Result<Drill, StoreError> {
        let started = Instant::now();
        let mut d = Drill { at: now_ms(), ..Default::default() };
        let holder_report = self
            .store()
            .list_instances(Some(project), 0)
            .await?
            .into_iter()
            .filter(|i| i.role == "holder" && i.database.as_ref() == Some(database))
            .max_by_key(|i| i.last_seen)
            .and_then(|i| i.report);
        match self.replica_url(project, database).await {
            Err(ReplicaError::Store(e)) => return Err(e),
            Err(ReplicaError::Refused(e)) => d.message = format!("not drilled: {e}"),
            Ok(None) => {
                d.message = format!("no replica URL reported for {project}/{database}: no agent has acquired it");
            }
            Ok(Some(url)) => {
                let expected = holder_report.filter(|r| r.durable_txid.0 > 0 && r.durable_checksum != 0);
                let target = match &expected {
                    Some(r) => agent::restore::Target::Txid(r.durable_txid),
                    None => agent::restore::Target::Latest,
                };
                let key = self.keys.get(&format!("{project}/{database}"));
                match restore_scratch(&url, target, key).await {
                    Ok((generation, applied)) => {
                        d.generation = generation.map_or(0, |g| g.0);
                        d.txid = applied.txid.0;
                        d.restored_checksum = format!("{:016x}", applied.checksum);
                        match expected {
                            Some(r) if r.durable_checksum != applied.checksum => {
                                d.expected_checksum = format!("{:016x}", r.durable_checksum);
                                d.message = format!(
                                    "checksum at transaction {} is {} but the agent reported {}",
                                    applied.txid.0, d.restored_checksum, d.expected_checksum
                                );
                            }
                            Some(r) => {
                                d.expected_checksum = format!("{:016x}", r.durable_checksum);
                                d.ok = true;
                                d.message = format!(
                                    "restored transaction {}; integrity ok; checksum matches the agent's report",
                                    applied.txid.0
                                );
                            }
                            None => {
                                d.ok = true;
                                d.message = format!(
                                    "restored transaction {}; integrity ok; no reported checksum to compare",
                                    applied.txid.0
                                );
                            }
                        }
                    }
                    Err(e) => d.message = format!("restore from {url} failed: {e:#}"),
                }
            }
        }
        d.duration_ms = started.elapsed().as_millis() as u64;
        let (kind, what) = if d.ok { ("drill_passed", "passed") } else { ("drill_failed", "FAILED") };
        self.leases
            .event(
                project,
                database,
                kind,
                None,
                None,
                format!("restore drill {what} in {} ms: {}", d.duration_ms, d.message),
            )
            .await;
        let row = NoteRow::json(project, database, DRILL, d.at, &d);
        self.store().put_note(&row).await?;
        if d.ok && !d.expected_checksum.is_empty() {
            self.store().put_note(&NoteRow::json(project, database, PROOF, d.at, &d)).await?;
        }
        Ok(d)
    }
}

async fn restore_scratch(
    url: &str,
    target: agent::restore::Target,
    key: Option<&agent::object_store::EncryptionKey>,
) -> anyhow::Result<(Option<Generation>, agent::restore::Applied)> {
    use anyhow::Context as _;
    let store =
        Arc::new(ObjectStore::from_url(url).await.with_context(|| format!("open replica {url}"))?.with_encryption(key));
    let dir = tempfile::tempdir().context("create scratch directory")?;
    let opts = agent::restore::RestoreOptions {
        output: dir.path().join("drill.db"),
        target,
        if_db_not_exists: false,
        if_replica_exists: false,
        integrity_check: true,
        replica_url: None,
    };
    match agent::restore::restore(store, &opts).await? {
        agent::restore::RestoreOutcome::Restored { applied, generation } => Ok((generation, applied)),
        other => anyhow::bail!("nothing restored: {other:?}"),
    }
}

/// Reads a drill keys file: `PROJECT/DB = KEY` lines, `#` comments, blank lines ignored.
pub fn read_keys(path: &std::path::Path) -> anyhow::Result<HashMap<String, agent::object_store::EncryptionKey>> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path).with_context(|| format!("read drill keys file {}", path.display()))?;
    let mut keys = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), n + 1);
        let (name, key) = line.split_once('=').with_context(|| format!("{}: expected PROJECT/DB = KEY", at()))?;
        let name = name.trim();
        let (p, d) = name.split_once('/').with_context(|| format!("{}: {name:?} is not PROJECT/DB", at()))?;
        p.parse::<ProjectName>().map_err(|e| anyhow::anyhow!("{}: project {p:?}: {e}", at()))?;
        d.parse::<DatabaseName>().map_err(|e| anyhow::anyhow!("{}: database {d:?}: {e}", at()))?;
        let key = key.trim().parse().map_err(|e| anyhow::anyhow!("{}: key of {name}: {e}", at()))?;
        if keys.insert(name.to_string(), key).is_some() {
            anyhow::bail!("{}: {name} is given twice", at());
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drill_keys_file_names_what_is_wrong() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys");
        let key = "ab".repeat(32);
        std::fs::write(&path, format!("# drills\nshop/app = {key}\n\nshop/orders={key} # same key\n")).expect("write");
        let keys = read_keys(&path).expect("read");
        assert_eq!(keys.len(), 2);
        assert!(keys.contains_key("shop/app") && keys.contains_key("shop/orders"));
        for (bad, says) in [
            (format!("shop/app {key}"), "expected PROJECT/DB = KEY"),
            (format!("shop = {key}"), "is not PROJECT/DB"),
            ("shop/app = 1234".to_string(), "key of shop/app"),
            (format!("shop/app = {key}\nshop/app = {key}"), "given twice"),
        ] {
            std::fs::write(&path, &bad).expect("write");
            let e = format!("{:#}", read_keys(&path).expect_err(&bad));
            assert!(e.contains(says) && e.contains("line"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn monthly_cost_scales_with_bytes_and_upload_rate() {
        let p = Prices { storage_gb_month: 0.02, put_per_1000: 0.005 };
        let (s, r) = monthly_cost(p, 10_000_000_000, 3600, 3_600_000);
        assert!((s - 0.2).abs() < 1e-9, "{s}");
        // One PUT a second: 3600 × 730 per month.
        assert!((r - 3600.0 * 730.0 / 1000.0 * 0.005).abs() < 1e-6, "{r}");
        assert_eq!(monthly_cost(p, 0, 5, 0), (0.0, 0.0));
    }
}
