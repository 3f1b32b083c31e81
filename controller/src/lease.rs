//! Leases, generations and duplicate instances: the fencing rules applied on top of the store's
//! compare-and-swap statements.
//!
//! 1. Generations are issued only here, by `Store::acquire`/`issue_generation`, persisted before
//!    they are returned.
//! 2. Every acquire gets a new generation; instance IDs are the agent's, one per process start.
//! 3. (object keys carry the generation: the agent's side.)
//! 4. `validate` answers whether an instance still holds the current generation.
//! 5. Expiry is judged by this process's clock (`Clock`); agents renew at TTL/3.

mod rollback;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::model::{DatabaseName, Generation, InstanceId, Policy, Position, ProjectName};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{
    Acquired, DatabaseRow, GenerationRow, HeadUpdate, InstanceInfo, Millis, NewEvent, Renewed, Report, ReportUpdate,
    Store, StoreError,
};

/// How often buffered reports are written, and how many go into one write.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
const REPORT_CHUNK: usize = 64;

/// The controller's clock (fencing rule 5).
pub fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("instance {0} is not registered: call Register first")]
    NotRegistered(InstanceId),
    #[error("instance {instance} belongs to project {owner}, not {project}")]
    WrongProject { instance: InstanceId, owner: ProjectName, project: ProjectName },
    #[error("database {project}/{database} does not exist")]
    NoDatabase { project: ProjectName, database: DatabaseName },
    #[error("{0}")]
    Rollback(String),
    /// The replica URL of an acquire is not one the controller may read.
    #[error(transparent)]
    ReplicaRefused(#[from] crate::roots::RootError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub use rollback::{RollbackNote, ROLLBACK};

/// A command for one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Handoff {
        database: DatabaseName,
        newcomer: InstanceId,
        newcomer_host: String,
    },
    /// Stop the app, restore `point`, continue in a new generation from it.
    Rollback {
        database: DatabaseName,
        point: Position,
        restore_id: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireOutcome {
    Granted { generation: Generation, head: Option<Position>, policy: Policy },
    Pending { reason: &'static str, holder: Option<InstanceId>, retry_after_ms: u64, policy: Policy },
    Forked { generation: Generation, holder: InstanceId },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenewOutcome {
    Renewed { commands: Vec<Command> },
    Fenced { current: Generation, holder: Option<InstanceId> },
}

pub struct Leases {
    store: Arc<dyn Store>,
    pub ttl_ms: i64,
    hub: Mutex<HashMap<InstanceId, broadcast::Sender<Command>>>,
    reports: Mutex<HashMap<(InstanceId, DatabaseName), ReportUpdate>>,
    /// Heads to move forward with the next flush: (project, database, holder) → position.
    heads: Mutex<HashMap<(ProjectName, DatabaseName, InstanceId), Position>>,
    /// Rollbacks asked of a holder through this controller, repeated on its renews.
    rollbacks: Mutex<HashMap<(InstanceId, DatabaseName), Command>>,
    /// How many more events each project's agents may cause (`agent_event`).
    quotas: Mutex<HashMap<ProjectName, Quota>>,
}

/// Events the agents of one project may cause at once, and how many more per second after
/// that: a token (or a fleet of them) that loops on refused calls cannot flood the event log.
pub const EVENT_BURST: u32 = 600;
pub const EVENTS_PER_SECOND: f64 = 1.0;

/// A token bucket of agent-caused events.
struct Quota {
    tokens: f64,
    at: std::time::Instant,
    /// Events not recorded since the last one that was.
    suppressed: u64,
}

impl Quota {
    /// Takes one event: Some(events suppressed before it) when it may be recorded.
    fn take(&mut self, now: std::time::Instant) -> Option<u64> {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * EVENTS_PER_SECOND;
        self.tokens = (self.tokens + refill).min(f64::from(EVENT_BURST));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

impl Leases {
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Arc<Leases> {
        Arc::new(Leases {
            store,
            ttl_ms: ttl.as_millis() as i64,
            hub: Mutex::default(),
            reports: Mutex::default(),
            heads: Mutex::default(),
            rollbacks: Mutex::default(),
            quotas: Mutex::default(),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn renew_interval_ms(&self) -> u64 {
        (self.ttl_ms / 3).max(1) as u64
    }

    pub async fn register(&self, info: &InstanceInfo) -> Result<(), LeaseError> {
        // An instance ID of another project is not refreshed (nor taken over) by this one.
        self.owned(&info.project, &info.id).await?;
        self.store.register_instance(info, now_ms()).await?;
        info!(instance = %info.id, project = %info.project, host = %info.host, platform = %info.platform,
            mode = %info.mode, "instance registered");
        Ok(())
    }

    /// The instance if it is registered in `project`; None when it is not registered at all;
    /// WrongProject when it belongs to another project (then nothing may be done in its name).
    async fn owned(&self, project: &ProjectName, id: &InstanceId) -> Result<Option<InstanceInfo>, LeaseError> {
        match self.store.get_instance(id).await? {
            Some(row) if &row.info.project != project => Err(LeaseError::WrongProject {
                instance: id.clone(),
                owner: row.info.project,
                project: project.clone(),
            }),
            row => Ok(row.map(|r| r.info)),
        }
    }

    async fn instance(&self, project: &ProjectName, id: &InstanceId) -> Result<InstanceInfo, LeaseError> {
        let row = self.store.get_instance(id).await?.ok_or_else(|| LeaseError::NotRegistered(id.clone()))?;
        if &row.info.project != project {
            return Err(LeaseError::WrongProject {
                instance: id.clone(),
                owner: row.info.project,
                project: project.clone(),
            });
        }
        Ok(row.info)
    }

    pub async fn acquire(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        id: &InstanceId,
        min_generation: Generation,
        rollback_to: Option<Position>,
        replica_url: &str,
    ) -> Result<AcquireOutcome, LeaseError> {
        let me = self.instance(project, id).await?;
        crate::store::check_min_generation(min_generation)?;
        if !replica_url.is_empty() {
            self.check_replica(project, database, id, replica_url).await?;
        }
        let rollback = match rollback_to {
            Some(p) => Some(self.check_rollback(project, database, id, p).await?),
            None => None,
        };
        // A sidecar cannot stop its app, so handing over is not its default.
        let default_policy = if me.mode == "run" { Policy::Handoff } else { Policy::Alert };
        let now = now_ms();
        let before = self.store.ensure_database(project, database, default_policy, now).await?;
        let min_generation = min_generation.max(Generation(1));
        match self.store.acquire(project, database, id, min_generation, now, self.ttl_ms).await? {
            Acquired::Granted { generation, db, .. } => {
                self.store
                    .insert_generation(&GenerationRow {
                        project: project.clone(),
                        database: database.clone(),
                        generation,
                        instance: id.clone(),
                        host: me.host.clone(),
                        parent: rollback_to.or(before.head),
                        created_at: now,
                        sealed_txid: None,
                        sealed_at: None,
                        leased: true,
                    })
                    .await?;
                if let Some(old) = before.holder.as_ref().filter(|h| *h != id) {
                    self.agent_event(
                        project,
                        database,
                        "lease_expired",
                        Some(old),
                        Some(id),
                        format!(
                            "lease of instance {old} (generation {}) expired without release; granted to instance {id} ({})",
                            before.holder_generation.0,
                            describe(&me)
                        ),
                    )
                    .await;
                }
                self.store.record_report(id, database, "holder", None, now).await?;
                info!(%project, %database, instance = %id, generation = generation.0, "lease granted");
                if let Some(note) = rollback {
                    self.rollback_granted(project, database, note, id, generation).await?;
                    return Ok(AcquireOutcome::Granted { generation, head: rollback_to, policy: db.policy });
                }
                Ok(AcquireOutcome::Granted { generation, head: db.head.or(before.head), policy: db.policy })
            }
            Acquired::Held { db } => self.held(project, database, &me, &db, min_generation, now).await,
        }
    }

    /// A live holder exists: a duplicate instance. Record it and apply the database's policy.
    async fn held(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        me: &InstanceInfo,
        db: &DatabaseRow,
        min_generation: Generation,
        now: Millis,
    ) -> Result<AcquireOutcome, LeaseError> {
        let Some(holder) = db.holder.clone() else {
            // Freed between the two statements: the agent asks again at once.
            return Ok(AcquireOutcome::Pending { reason: "wait", holder: None, retry_after_ms: 0, policy: db.policy });
        };
        let holder_info = self.store.get_instance(&holder).await?.map(|r| r.info);
        let holder_desc = holder_info.as_ref().map(describe).unwrap_or_else(|| "unknown host".into());
        let already_seen = self
            .store
            .get_instance(&me.id)
            .await?
            .is_some_and(|r| r.database.as_ref() == Some(database) && r.role == "pending");
        if !already_seen {
            self.agent_event(
                project,
                database,
                "duplicate_instance",
                Some(&holder),
                Some(&me.id),
                format!(
                    "second live instance of {project}/{database}: holder {holder} ({holder_desc}, generation {}) and \
                     newcomer {} ({}); policy {}",
                    db.holder_generation.0,
                    me.id,
                    describe(me),
                    db.policy
                ),
            )
            .await;
            warn!(%project, %database, %holder, newcomer = %me.id, policy = %db.policy, "duplicate instance");
        }
        match db.policy {
            Policy::Handoff => {
                if db.handoff_to.as_ref() != Some(&me.id)
                    && self.store.request_handoff(project, database, &holder, db.holder_generation, &me.id).await?
                {
                    self.agent_event(
                        project,
                        database,
                        "handoff_requested",
                        Some(&holder),
                        Some(&me.id),
                        format!(
                            "asked instance {holder} to seal generation {} and hand over to {}",
                            db.holder_generation.0, me.id
                        ),
                    )
                    .await;
                    self.send(
                        &holder,
                        Command::Handoff {
                            database: database.clone(),
                            newcomer: me.id.clone(),
                            newcomer_host: me.host.clone(),
                        },
                    );
                }
                self.store.record_report(&me.id, database, "pending", None, now).await?;
                Ok(AcquireOutcome::Pending {
                    reason: "handoff",
                    holder: Some(holder),
                    retry_after_ms: 200,
                    policy: db.policy,
                })
            }
            Policy::Wait => {
                self.store.record_report(&me.id, database, "pending", None, now).await?;
                let left = (db.expires_at - now).clamp(50, 1000) as u64;
                Ok(AcquireOutcome::Pending {
                    reason: "wait",
                    holder: Some(holder),
                    retry_after_ms: left,
                    policy: db.policy,
                })
            }
            Policy::Alert => {
                let generation = self.store.issue_generation(project, database, min_generation).await?;
                self.store
                    .insert_generation(&GenerationRow {
                        project: project.clone(),
                        database: database.clone(),
                        generation,
                        instance: me.id.clone(),
                        host: me.host.clone(),
                        parent: db.head,
                        created_at: now,
                        sealed_txid: None,
                        sealed_at: None,
                        leased: false,
                    })
                    .await?;
                self.agent_event(
                    project,
                    database,
                    "forked",
                    Some(&me.id),
                    Some(&holder),
                    format!(
                        "instance {} runs in generation {} beside holder {holder} (generation {}): the fork is kept, \
                         never merged",
                        me.id, generation.0, db.holder_generation.0
                    ),
                )
                .await;
                self.store.record_report(&me.id, database, "forked", None, now).await?;
                Ok(AcquireOutcome::Forked { generation, holder })
            }
        }
    }

    pub async fn renew(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        id: &InstanceId,
        generation: Generation,
        report: Option<Report>,
    ) -> Result<RenewOutcome, LeaseError> {
        let now = now_ms();
        match self.store.renew(project, database, id, generation, now, self.ttl_ms).await? {
            Renewed::Renewed { handoff_to, .. } => {
                if let Some(r) = &report {
                    if r.durable_txid.0 > 0 {
                        let pos = Position { generation, txid: r.durable_txid };
                        self.lock_heads().insert((project.clone(), database.clone(), id.clone()), pos);
                    }
                }
                self.buffer_report(id, database, "holder", report, now);
                let mut commands = Vec::new();
                if let Some(newcomer) = handoff_to {
                    let host = self.store.get_instance(&newcomer).await?.map(|r| r.info.host).unwrap_or_default();
                    commands.push(Command::Handoff { database: database.clone(), newcomer, newcomer_host: host });
                }
                if let Some(c) = self.lock_rollbacks().get(&(id.clone(), database.clone())) {
                    commands.push(c.clone());
                }
                Ok(RenewOutcome::Renewed { commands })
            }
            Renewed::Fenced { db } => {
                // A renewal proves the instance is this project's only when it matched the
                // lease; otherwise nothing is recorded about an instance of another project.
                let row = self.store.get_instance(id).await?;
                if let Some(r) = row.as_ref().filter(|r| &r.info.project != project) {
                    return Err(LeaseError::WrongProject {
                        instance: id.clone(),
                        owner: r.info.project.clone(),
                        project: project.clone(),
                    });
                }
                let role = row.as_ref().map(|r| r.role.as_str()).unwrap_or("");
                if role != "forked" && role != "fenced" {
                    self.agent_event(
                        project,
                        database,
                        "fenced",
                        Some(id),
                        db.holder.as_ref(),
                        format!(
                            "instance {id} renewed generation {} but the lease is {}: it may keep writing only its own \
                             generation",
                            generation.0,
                            match &db.holder {
                                Some(h) => format!("held by {h} (generation {})", db.holder_generation.0),
                                None => "free".into(),
                            }
                        ),
                    )
                    .await;
                }
                let role = if role == "forked" { "forked" } else { "fenced" };
                self.buffer_report(id, database, role, report, now);
                Ok(RenewOutcome::Fenced { current: db.last_generation, holder: db.holder })
            }
        }
    }

    pub async fn release(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        id: &InstanceId,
        generation: Generation,
        sealed: Option<Position>,
        report: Option<Report>,
    ) -> Result<bool, LeaseError> {
        let now = now_ms();
        if self.owned(project, id).await?.is_none() {
            // Not registered: it holds nothing, and nothing is recorded in its name.
            return Ok(false);
        }
        let before = self.store.get_database(project, database).await?;
        let released = self.store.release(project, database, id, generation, sealed).await?;
        if released {
            // The report buffer may still hold an older head for this holder: drop it.
            self.lock_heads().remove(&(project.clone(), database.clone(), id.clone()));
            self.lock_rollbacks().remove(&(id.clone(), database.clone()));
        }
        // Only a real release seals: a stale or fenced instance never seals the generation
        // (nor moves the head) of the holder that replaced it.
        if let Some(p) = sealed.filter(|p| released && p.generation == generation) {
            match self.store.seal_generation(project, database, generation, p.txid, now).await {
                // A controller that crashed between granting and recording the generation
                // left no row to seal; the lease itself was released.
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.buffer_report(id, database, "released", report, now);
        if released {
            let newcomer = before.and_then(|b| b.handoff_to);
            let (kind, msg) = match (&newcomer, sealed) {
                (Some(n), Some(p)) => (
                    "handoff_completed",
                    format!(
                        "instance {id} sealed generation {} at transaction {} and handed over to {n}",
                        generation.0, p.txid.0
                    ),
                ),
                (_, Some(p)) => (
                    "released",
                    format!(
                        "instance {id} sealed generation {} at transaction {} and released",
                        generation.0, p.txid.0
                    ),
                ),
                (_, None) => ("released", format!("instance {id} released generation {} unsealed", generation.0)),
            };
            self.agent_event(project, database, kind, Some(id), newcomer.as_ref(), msg).await;
            info!(%project, %database, instance = %id, generation = generation.0, "lease released");
        }
        Ok(released)
    }

    /// Fencing rule 4: is `generation` the current, live lease of `id`?
    pub async fn validate(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        id: &InstanceId,
        generation: Generation,
    ) -> Result<(bool, Generation), LeaseError> {
        self.owned(project, id).await?;
        let db = self
            .store
            .get_database(project, database)
            .await?
            .ok_or_else(|| LeaseError::NoDatabase { project: project.clone(), database: database.clone() })?;
        let current = db.holder.as_ref() == Some(id) && db.holder_generation == generation && db.expires_at > now_ms();
        Ok((current, db.holder_generation))
    }

    /// Commands for `id` from now on, plus any handoff already requested of it.
    pub async fn subscribe(
        &self,
        project: &ProjectName,
        id: &InstanceId,
    ) -> Result<(Vec<Command>, broadcast::Receiver<Command>), LeaseError> {
        self.instance(project, id).await?;
        let rx = {
            let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
            hub.retain(|_, tx| tx.receiver_count() > 0);
            hub.entry(id.clone()).or_insert_with(|| broadcast::channel(16).0).subscribe()
        };
        let mut pending = Vec::new();
        for db in self.store.list_databases(Some(project)).await? {
            if db.holder.as_ref() == Some(id) {
                if let Some(newcomer) = db.handoff_to {
                    let host = self.store.get_instance(&newcomer).await?.map(|r| r.info.host).unwrap_or_default();
                    pending.push(Command::Handoff { database: db.name, newcomer, newcomer_host: host });
                }
            }
        }
        pending.extend(self.pending_rollbacks(project, id).await?);
        Ok((pending, rx))
    }

    /// Refuses (and records) a replica URL the controller may not read: outside the project's
    /// replica roots, or not a valid replica URL.
    async fn check_replica(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        id: &InstanceId,
        url: &str,
    ) -> Result<(), LeaseError> {
        let roots = self.store.replica_roots(project).await?;
        let Err(e) = crate::roots::check(project, url, &roots) else { return Ok(()) };
        let shown: String = url.chars().take(256).collect();
        warn!(%project, %database, instance = %id, url = %shown, "replica url refused");
        let msg = format!("instance {id} named replica {shown} for {project}/{database}; refused: {e}");
        self.agent_event(project, database, "replica_refused", Some(id), None, msg).await;
        Err(e.into())
    }

    /// An event an agent's call caused: recorded within its project's quota ([`EVENT_BURST`]
    /// at once, [`EVENTS_PER_SECOND`] after that). What goes over it is counted, and the count
    /// is recorded (`events_suppressed`) with the next event the quota lets through.
    pub(crate) async fn agent_event(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        kind: &str,
        instance: Option<&InstanceId>,
        other: Option<&InstanceId>,
        message: String,
    ) {
        let now = std::time::Instant::now();
        let taken = self
            .quotas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(project.clone())
            .or_insert(Quota { tokens: f64::from(EVENT_BURST), at: now, suppressed: 0 })
            .take(now);
        match taken {
            None => {
                tracing::debug!(%project, %database, kind, "event over the project's quota not recorded");
                return;
            }
            Some(0) => {}
            Some(n) => {
                let msg = format!(
                    "{n} events caused by agents of project {project} were not recorded: over its quota of \
                     {EVENT_BURST} at once and {EVENTS_PER_SECOND} a second"
                );
                warn!(%project, suppressed = n, "agent events suppressed");
                self.event(project, database, "events_suppressed", None, None, msg).await;
            }
        }
        self.event(project, database, kind, instance, other, message).await;
    }

    fn send(&self, id: &InstanceId, cmd: Command) {
        if let Some(tx) = self.hub.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            let _ = tx.send(cmd);
        }
    }

    pub(crate) async fn event(
        &self,
        project: &ProjectName,
        database: &DatabaseName,
        kind: &str,
        instance: Option<&InstanceId>,
        other: Option<&InstanceId>,
        message: String,
    ) {
        let e = NewEvent {
            at: now_ms(),
            project: project.clone(),
            database: Some(database.clone()),
            kind: kind.to_string(),
            instance: instance.cloned(),
            other_instance: other.cloned(),
            message,
        };
        if let Err(err) = self.store.insert_event(&e).await {
            warn!(error = %err, kind, "record event failed");
        }
    }

    fn buffer_report(&self, id: &InstanceId, database: &DatabaseName, role: &str, report: Option<Report>, at: Millis) {
        let update =
            ReportUpdate { instance: id.clone(), database: database.clone(), role: role.to_string(), report, at };
        self.reports.lock().unwrap_or_else(|e| e.into_inner()).insert((id.clone(), database.clone()), update);
    }

    fn lock_rollbacks(&self) -> std::sync::MutexGuard<'_, HashMap<(InstanceId, DatabaseName), Command>> {
        self.rollbacks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_heads(&self) -> std::sync::MutexGuard<'_, HashMap<(ProjectName, DatabaseName, InstanceId), Position>> {
        self.heads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes buffered reports and head positions: a heartbeat costs one durable write (the
    /// lease); reports and heads are written a few times a second, one statement per chunk, so
    /// no write holds the store's writer long enough to delay the renewals queued behind it.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let batch: Vec<ReportUpdate> =
            self.reports.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, v)| v).collect();
        for chunk in batch.chunks(REPORT_CHUNK) {
            self.store.record_reports(chunk).await?;
        }
        let heads: Vec<HeadUpdate> = self
            .lock_heads()
            .drain()
            .map(|((project, database, instance), position)| HeadUpdate { project, database, instance, position })
            .collect();
        for chunk in heads.chunks(REPORT_CHUNK) {
            self.store.advance_heads(chunk).await?;
        }
        Ok(())
    }

    pub async fn run_flusher(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
            }
            if let Err(e) = self.flush().await {
                warn!(error = %e, "flush reports failed");
            }
        }
        if let Err(e) = self.flush().await {
            warn!(error = %e, "final flush of reports failed");
        }
    }
}

fn describe(i: &InstanceInfo) -> String {
    if i.platform.is_empty() {
        format!("host {}", i.host)
    } else {
        format!("host {}, {}", i.host, i.platform)
    }
}
