//! The controller's state: projects, tokens, databases with their lease, instances, generations
//! and events. `Store` has two implementations over typed sqlx pools (SQLite by default,
//! PostgreSQL when several controllers share the work) and ONE conformance suite runs against
//! both (`tests.rs`).
//!
//! Every lease or generation change is a single compare-and-swap statement, so it is
//! linearizable in both backends. Times are milliseconds since the Unix epoch on the
//! controller's clock, passed in by the caller (fencing rule 5: the controller's clock judges
//! expiry; tests drive it).

mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use proto::model::{DatabaseName, Generation, InstanceId, Policy, Position, ProjectName, Txid};
use serde::Serialize;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Milliseconds since the Unix epoch on the controller's clock.
pub type Millis = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {name:?} already exists")]
    AlreadyExists { what: &'static str, name: String },
    #[error("{what} {name:?} does not exist")]
    NotFound { what: &'static str, name: String },
    /// A number from outside past what the store accepts (nothing was written).
    #[error("{what} {value} is larger than the largest the controller accepts ({max})")]
    OutOfRange { what: &'static str, value: u64, max: u64 },
    /// A row that does not parse back into domain types (a damaged or foreign store).
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("state store: {0}")]
    Backend(#[from] sqlx::Error),
    #[error("state store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The largest `min_generation` an acquire or fork may ask for. Far below the stores' 2^63 - 1,
/// so a database raised to it can still be acquired 2^62 more times: one request naming a huge
/// number can never leave a database whose next generation does not fit.
pub const MAX_GENERATION: Generation = Generation(1 << 62);

/// Refuses a `min_generation` past [`MAX_GENERATION`].
pub fn check_min_generation(min_generation: Generation) -> Result<()> {
    if min_generation > MAX_GENERATION {
        return Err(StoreError::OutOfRange { what: "min_generation", value: min_generation.0, max: MAX_GENERATION.0 });
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProjectRow {
    pub name: ProjectName,
    pub created_at: Millis,
    /// Databases known in this project.
    pub databases: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Admin,
    Agent,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::Agent => "agent",
        }
    }
}

/// A token as stored: only the SHA-256 of the secret, never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    /// Public identifier, shown in listings and used to revoke.
    pub id: String,
    pub kind: TokenKind,
    /// The project an agent token reaches; None for admin tokens.
    pub project: Option<ProjectName>,
    #[serde(skip)]
    pub hash: String,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// A database and its lease, as one row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DatabaseRow {
    pub project: ProjectName,
    pub name: DatabaseName,
    pub policy: Policy,
    /// The highest generation ever issued for this database (leased or forked).
    pub last_generation: Generation,
    pub holder: Option<InstanceId>,
    /// The generation the holder writes (meaningful while `holder` is set).
    pub holder_generation: Generation,
    pub expires_at: Millis,
    /// A newcomer the holder was asked to hand over to.
    pub handoff_to: Option<InstanceId>,
    /// The newest position known on the lineage: the holder's durable reports and the
    /// position a generation was sealed at on release.
    pub head: Option<Position>,
    pub created_at: Millis,
}

/// Outcome of `acquire`: one compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The lease was free (or expired): it is the caller's under a new generation.
    Granted { generation: Generation, expires_at: Millis, db: DatabaseRow },
    /// A live holder has it; `db` shows who.
    Held { db: DatabaseRow },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewed {
    /// Still the holder; the lease runs until `expires_at`. `handoff_to` is set when the
    /// holder was asked to hand over.
    Renewed { expires_at: Millis, handoff_to: Option<InstanceId> },
    /// Not the holder of that generation any more (`db` shows the current state).
    Fenced { db: DatabaseRow },
}

/// What an agent process says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    pub id: InstanceId,
    pub project: ProjectName,
    pub host: String,
    pub platform: String,
    pub mode: String,
    pub version: String,
}

/// An agent's report about one database (stored as the latest per instance and database).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub generation: Generation,
    pub local_txid: Txid,
    pub durable_txid: Txid,
    pub lag_seconds: f64,
    pub lag_bytes: u64,
    pub last_upload_at: Option<Millis>,
    pub uploads: u64,
    pub upload_errors: u64,
    pub upload_blocked: bool,
    pub state: String,
    pub durable_checksum: u64,
}

/// An instance with what it last said about one database.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InstanceRow {
    pub info: InstanceInfo,
    pub started_at: Millis,
    pub last_seen: Millis,
    /// The database it works on, once it asked for one.
    pub database: Option<DatabaseName>,
    /// "holder", "pending", "forked", "released", "fenced" (set by the controller).
    pub role: String,
    pub report: Option<Report>,
}

/// One entry of `advance_heads`.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadUpdate {
    pub project: ProjectName,
    pub database: DatabaseName,
    pub instance: InstanceId,
    pub position: Position,
}

/// One entry of `record_reports`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportUpdate {
    pub instance: InstanceId,
    pub database: DatabaseName,
    pub role: String,
    pub report: Option<Report>,
    pub at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GenerationRow {
    pub project: ProjectName,
    pub database: DatabaseName,
    pub generation: Generation,
    pub instance: InstanceId,
    pub host: String,
    pub parent: Option<Position>,
    pub created_at: Millis,
    pub sealed_txid: Option<Txid>,
    pub sealed_at: Option<Millis>,
    /// False for a fork issued without the lease (alert policy).
    pub leased: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NewEvent {
    pub at: Millis,
    pub project: ProjectName,
    pub database: Option<DatabaseName>,
    pub kind: String,
    pub instance: Option<InstanceId>,
    pub other_instance: Option<InstanceId>,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventRow {
    pub id: i64,
    #[serde(flatten)]
    pub event: NewEvent,
}

#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub project: Option<ProjectName>,
    pub database: Option<DatabaseName>,
    pub kind: Option<String>,
    /// Only events with a larger id.
    pub after_id: i64,
    /// At most this many, newest last (0 means 1000).
    pub limit: u32,
}

/// One inventory note of a database: the newest of its kind replaces the previous one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NoteRow {
    pub project: ProjectName,
    pub database: DatabaseName,
    pub kind: String,
    pub at: Millis,
    /// JSON.
    pub body: String,
}

impl NoteRow {
    /// A note whose body is `value` as JSON.
    pub fn json(
        project: &ProjectName,
        database: &DatabaseName,
        kind: &str,
        at: Millis,
        value: &impl serde::Serialize,
    ) -> NoteRow {
        NoteRow {
            project: project.clone(),
            database: database.clone(),
            kind: kind.to_string(),
            at,
            body: serde_json::to_string(value).unwrap_or_default(),
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// "sqlite" or "postgres".
    fn backend(&self) -> &'static str;

    // Projects and tokens.
    /// Creates the project with its replica roots (checked by the caller, no duplicates), in
    /// one transaction: AlreadyExists leaves nothing behind.
    async fn create_project(&self, name: &ProjectName, replica_roots: &[String], now: Millis) -> Result<()>;
    /// Replaces the project's replica roots (no duplicates) in one transaction; NotFound when
    /// there is no such project.
    async fn set_replica_roots(&self, name: &ProjectName, replica_roots: &[String], now: Millis) -> Result<()>;
    /// The project's replica roots, ordered by URL (none when it has none or does not exist).
    async fn replica_roots(&self, name: &ProjectName) -> Result<Vec<String>>;
    async fn list_projects(&self) -> Result<Vec<ProjectRow>>;
    async fn project_exists(&self, name: &ProjectName) -> Result<bool>;
    /// Fails with AlreadyExists on a duplicate id or hash.
    async fn insert_token(&self, token: &TokenRow) -> Result<()>;
    async fn find_token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>>;
    /// Sets revoked_at if not yet revoked; false when no such token or already revoked.
    async fn revoke_token(&self, id: &str, now: Millis) -> Result<bool>;
    async fn list_tokens(&self, project: Option<&ProjectName>) -> Result<Vec<TokenRow>>;
    /// Admin tokens that are not revoked (bootstrap: the first start creates one).
    async fn count_admin_tokens(&self) -> Result<u64>;

    // Databases and their lease.
    /// Creates the database row (lease free, no generation issued) with `policy` unless it
    /// exists; returns the row either way. The project must exist (NotFound otherwise).
    async fn ensure_database(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        policy: Policy,
        now: Millis,
    ) -> Result<DatabaseRow>;
    async fn get_database(&self, project: &ProjectName, name: &DatabaseName) -> Result<Option<DatabaseRow>>;
    async fn list_databases(&self, project: Option<&ProjectName>) -> Result<Vec<DatabaseRow>>;
    async fn set_policy(&self, project: &ProjectName, name: &DatabaseName, policy: Policy) -> Result<()>;

    /// ONE statement: if the lease is free or expired at `now` (or already this instance's),
    /// make `instance` the holder under generation `max(last_generation + 1, min_generation)`,
    /// persisted before it is returned, expiring at `now + ttl_ms`, handoff cleared.
    /// OutOfRange (nothing written) when `min_generation` is past [`MAX_GENERATION`].
    async fn acquire(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        instance: &InstanceId,
        min_generation: Generation,
        now: Millis,
        ttl_ms: i64,
    ) -> Result<Acquired>;

    /// ONE statement: extend to `now + ttl_ms` iff `instance` still holds `generation`. A holder
    /// whose lease ran out while nobody else acquired it renews (there was no other holder).
    async fn renew(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        instance: &InstanceId,
        generation: Generation,
        now: Millis,
        ttl_ms: i64,
    ) -> Result<Renewed>;

    /// ONE statement: free the lease iff `instance` holds `generation`; the head becomes
    /// `sealed` when given. False when it was not the holder.
    async fn release(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        instance: &InstanceId,
        generation: Generation,
        sealed: Option<Position>,
    ) -> Result<bool>;

    /// ONE statement: ask the holder of `generation` to hand over to `newcomer` (only while
    /// it still holds it). False when the holder changed.
    async fn request_handoff(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        holder: &InstanceId,
        generation: Generation,
        newcomer: &InstanceId,
    ) -> Result<bool>;

    /// ONE statement: issue a generation without the lease (alert policy fork):
    /// `max(last_generation + 1, min_generation)`, persisted before it is returned.
    /// OutOfRange (nothing written) when `min_generation` is past [`MAX_GENERATION`].
    async fn issue_generation(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        min_generation: Generation,
    ) -> Result<Generation>;

    /// Moves the head forward to `position` when `instance` holds `position.generation` and
    /// the head is not already past `position.txid`.
    async fn advance_head(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        instance: &InstanceId,
        position: Position,
    ) -> Result<()>;
    /// `advance_head` for many databases at once (the controller batches the heads its
    /// holders report): one statement where the backend allows it.
    async fn advance_heads(&self, heads: &[HeadUpdate]) -> Result<()> {
        for h in heads {
            self.advance_head(&h.project, &h.database, &h.instance, h.position).await?;
        }
        Ok(())
    }

    // Instances.
    /// Records a process start; a second registration of the same id only refreshes last_seen,
    /// and only when it names the same project (an instance of another project is left alone).
    async fn register_instance(&self, info: &InstanceInfo, now: Millis) -> Result<()>;
    async fn get_instance(&self, id: &InstanceId) -> Result<Option<InstanceRow>>;
    /// Latest report, role and database of an instance; refreshes last_seen.
    async fn record_report(
        &self,
        id: &InstanceId,
        database: &DatabaseName,
        role: &str,
        report: Option<&Report>,
        now: Millis,
    ) -> Result<()>;
    /// Many reports at once (the controller batches heartbeats): one transaction where the
    /// backend allows it.
    async fn record_reports(&self, batch: &[ReportUpdate]) -> Result<()> {
        for r in batch {
            self.record_report(&r.instance, &r.database, &r.role, r.report.as_ref(), r.at).await?;
        }
        Ok(())
    }
    /// Instances of a project (or all), seen at or after `seen_since`.
    async fn list_instances(&self, project: Option<&ProjectName>, seen_since: Millis) -> Result<Vec<InstanceRow>>;

    // Generations.
    async fn insert_generation(&self, row: &GenerationRow) -> Result<()>;
    async fn seal_generation(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        generation: Generation,
        txid: Txid,
        now: Millis,
    ) -> Result<()>;
    /// Oldest first.
    async fn list_generations(&self, project: &ProjectName, name: &DatabaseName) -> Result<Vec<GenerationRow>>;

    // Events.
    async fn insert_event(&self, event: &NewEvent) -> Result<i64>;
    /// Ascending id.
    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRow>>;

    /// Inserts or replaces the note (project, database, kind).
    async fn put_note(&self, note: &NoteRow) -> Result<()>;
    /// Notes of one project (or all), of one kind (or all), ordered by project, database, kind.
    async fn list_notes(&self, project: Option<&ProjectName>, kind: Option<&str>) -> Result<Vec<NoteRow>>;
}

/// Opens (and migrates) the store a URL names: `sqlite://path` (created if missing) or
/// `postgres://…`.
pub async fn connect(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    use anyhow::Context;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let s = PostgresStore::connect(url).await.context("connect to postgres state store")?;
        Ok(Arc::new(s))
    } else if url.starts_with("sqlite:") {
        let s = SqliteStore::connect(url).await.context("open sqlite state store")?;
        Ok(Arc::new(s))
    } else {
        anyhow::bail!("unsupported --database-url {url:?}: expected sqlite://PATH or postgres://…")
    }
}
