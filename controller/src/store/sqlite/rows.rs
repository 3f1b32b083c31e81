//! Row shapes and their conversion into domain types. The SQLite and PostgreSQL schemas are
//! the same column for column, so `postgres.rs` decodes through these too. Nothing read back
//! is trusted: a value that does not parse is `StoreError::Corrupt`, never a panic.

use std::fmt::Display;
use std::str::FromStr;

use proto::model::{Generation, InstanceId, Position, Txid};
use sqlx::error::ErrorKind;
use sqlx::FromRow;

use super::super::{
    DatabaseRow, EventRow, GenerationRow, InstanceInfo, InstanceRow, NewEvent, ProjectRow, Report, Result, StoreError,
    TokenKind, TokenRow,
};

// Column lists as literals, so `concat!` builds each statement at compile time: one fixed text
// per statement, which sqlx prepares once per connection and caches.
macro_rules! database_columns {
    () => {
        "project, name, policy, last_generation, holder, holder_generation, expires_at, handoff_to, \
         head_generation, head_txid, created_at"
    };
}
macro_rules! token_columns {
    () => {
        "id, kind, project, hash, created_at, revoked_at"
    };
}
macro_rules! instance_columns {
    () => {
        "id, project, host, platform, mode, version, started_at, last_seen, database, role, \
         report_generation, report_local_txid, report_durable_txid, report_lag_seconds, report_lag_bytes, \
         report_last_upload_at, report_uploads, report_upload_errors, report_upload_blocked, report_state, \
         report_durable_checksum"
    };
}
macro_rules! generation_columns {
    () => {
        "project, database, generation, instance, host, parent_generation, parent_txid, created_at, \
         sealed_txid, sealed_at, leased"
    };
}
macro_rules! event_columns {
    () => {
        "id, at, project, database, kind, instance, other_instance, message"
    };
}
pub(crate) use {database_columns, event_columns, generation_columns, instance_columns, token_columns};

/// A u64 identifier or position as the INTEGER/BIGINT the store compares. Values past
/// 2^63-1 are refused rather than wrapped, which would break every comparison.
pub fn int(what: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| {
        StoreError::Backend(sqlx::Error::Encode(format!("{what} {value} is beyond the store's range").into()))
    })
}

pub fn opt_position(p: Option<Position>) -> Result<(Option<i64>, Option<i64>)> {
    match p {
        Some(p) => Ok((Some(int("generation", p.generation.0)?), Some(int("transaction id", p.txid.0)?))),
        None => Ok((None, None)),
    }
}

/// Report fields that are only shown, never compared, keep all 64 bits: the checksum
/// uses them all.
fn bits(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

fn from_bits(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

/// Maps the constraint errors of an insert: a duplicate key, or a parent row that is
/// missing (`parent` names it).
pub fn on_insert(e: sqlx::Error, what: &'static str, name: &str, parent: (&'static str, &str)) -> StoreError {
    match e.as_database_error().map(|d| d.kind()) {
        Some(ErrorKind::UniqueViolation) => StoreError::AlreadyExists { what, name: name.to_owned() },
        Some(ErrorKind::ForeignKeyViolation) => StoreError::NotFound { what: parent.0, name: parent.1.to_owned() },
        _ => StoreError::Backend(e),
    }
}

pub fn event_limit(limit: u32) -> i64 {
    if limit == 0 {
        1000
    } else {
        i64::from(limit)
    }
}

/// A `notes` row: (project, database, kind, at, body).
pub fn note(raw: (String, String, String, i64, String)) -> Result<super::super::NoteRow> {
    let (project, database, kind, at, body) = raw;
    Ok(super::super::NoteRow {
        project: parse("notes", "project", project)?,
        database: parse("notes", "database", database)?,
        kind,
        at,
        body,
    })
}

fn corrupt(table: &'static str, detail: String) -> StoreError {
    StoreError::Corrupt { table, detail }
}

fn parse<T>(table: &'static str, column: &str, value: String) -> Result<T>
where
    T: FromStr,
    T::Err: Display,
{
    value.parse().map_err(|e| corrupt(table, format!("{column}: {e}")))
}

pub fn unsigned(table: &'static str, column: &str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| corrupt(table, format!("{column} is negative: {value}")))
}

pub fn opt_instance(table: &'static str, column: &str, value: Option<String>) -> Result<Option<InstanceId>> {
    value.map(|v| parse(table, column, v)).transpose()
}

fn position(table: &'static str, column: &str, generation: Option<i64>, txid: Option<i64>) -> Result<Option<Position>> {
    match (generation, txid) {
        (Some(g), Some(t)) => Ok(Some(Position {
            generation: Generation(unsigned(table, column, g)?),
            txid: Txid(unsigned(table, column, t)?),
        })),
        (None, None) => Ok(None),
        _ => Err(corrupt(table, format!("{column} has a generation or a transaction id, not both"))),
    }
}

#[derive(FromRow)]
pub struct ProjectRaw {
    name: String,
    created_at: i64,
    databases: i64,
}

impl TryFrom<ProjectRaw> for ProjectRow {
    type Error = StoreError;
    fn try_from(r: ProjectRaw) -> Result<ProjectRow> {
        Ok(ProjectRow {
            name: parse("projects", "name", r.name)?,
            created_at: r.created_at,
            databases: unsigned("projects", "databases", r.databases)?,
        })
    }
}

#[derive(FromRow)]
pub struct TokenRaw {
    id: String,
    kind: String,
    project: Option<String>,
    hash: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl TryFrom<TokenRaw> for TokenRow {
    type Error = StoreError;
    fn try_from(r: TokenRaw) -> Result<TokenRow> {
        let kind = match r.kind.as_str() {
            "admin" => TokenKind::Admin,
            "agent" => TokenKind::Agent,
            other => return Err(corrupt("tokens", format!("kind: {other:?}"))),
        };
        Ok(TokenRow {
            id: r.id,
            kind,
            project: r.project.map(|p| parse("tokens", "project", p)).transpose()?,
            hash: r.hash,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        })
    }
}

#[derive(FromRow)]
pub struct DatabaseRaw {
    project: String,
    name: String,
    policy: String,
    last_generation: i64,
    holder: Option<String>,
    holder_generation: i64,
    expires_at: i64,
    handoff_to: Option<String>,
    head_generation: Option<i64>,
    head_txid: Option<i64>,
    created_at: i64,
}

impl TryFrom<DatabaseRaw> for DatabaseRow {
    type Error = StoreError;
    fn try_from(r: DatabaseRaw) -> Result<DatabaseRow> {
        const T: &str = "databases";
        Ok(DatabaseRow {
            project: parse(T, "project", r.project)?,
            name: parse(T, "name", r.name)?,
            policy: parse(T, "policy", r.policy)?,
            last_generation: Generation(unsigned(T, "last_generation", r.last_generation)?),
            holder: opt_instance(T, "holder", r.holder)?,
            holder_generation: Generation(unsigned(T, "holder_generation", r.holder_generation)?),
            expires_at: r.expires_at,
            handoff_to: opt_instance(T, "handoff_to", r.handoff_to)?,
            head: position(T, "head", r.head_generation, r.head_txid)?,
            created_at: r.created_at,
        })
    }
}

/// The report columns of `instances`, all NULL when there is no report.
#[derive(Default)]
pub struct ReportColumns {
    pub generation: Option<i64>,
    pub local_txid: Option<i64>,
    pub durable_txid: Option<i64>,
    pub lag_seconds: Option<f64>,
    pub lag_bytes: Option<i64>,
    pub last_upload_at: Option<i64>,
    pub uploads: Option<i64>,
    pub upload_errors: Option<i64>,
    pub upload_blocked: Option<bool>,
    pub state: Option<String>,
    pub durable_checksum: Option<i64>,
}

impl ReportColumns {
    pub fn new(report: Option<&Report>) -> ReportColumns {
        let Some(r) = report else { return ReportColumns::default() };
        ReportColumns {
            generation: Some(bits(r.generation.0)),
            local_txid: Some(bits(r.local_txid.0)),
            durable_txid: Some(bits(r.durable_txid.0)),
            lag_seconds: Some(r.lag_seconds),
            lag_bytes: Some(bits(r.lag_bytes)),
            last_upload_at: r.last_upload_at,
            uploads: Some(bits(r.uploads)),
            upload_errors: Some(bits(r.upload_errors)),
            upload_blocked: Some(r.upload_blocked),
            state: Some(r.state.clone()),
            durable_checksum: Some(bits(r.durable_checksum)),
        }
    }
}

#[derive(FromRow)]
pub struct InstanceRaw {
    id: String,
    project: String,
    host: String,
    platform: String,
    mode: String,
    version: String,
    started_at: i64,
    last_seen: i64,
    database: Option<String>,
    role: String,
    report_generation: Option<i64>,
    report_local_txid: Option<i64>,
    report_durable_txid: Option<i64>,
    report_lag_seconds: Option<f64>,
    report_lag_bytes: Option<i64>,
    report_last_upload_at: Option<i64>,
    report_uploads: Option<i64>,
    report_upload_errors: Option<i64>,
    report_upload_blocked: Option<bool>,
    report_state: Option<String>,
    report_durable_checksum: Option<i64>,
}

impl TryFrom<InstanceRaw> for InstanceRow {
    type Error = StoreError;
    fn try_from(r: InstanceRaw) -> Result<InstanceRow> {
        const T: &str = "instances";
        let report = match r.report_generation {
            None => None,
            Some(generation) => {
                let missing = |column: &str| corrupt(T, format!("{column} is NULL in a report"));
                Some(Report {
                    generation: Generation(from_bits(generation)),
                    local_txid: Txid(from_bits(r.report_local_txid.ok_or_else(|| missing("local_txid"))?)),
                    durable_txid: Txid(from_bits(r.report_durable_txid.ok_or_else(|| missing("durable_txid"))?)),
                    // SQLite stores a NaN as NULL.
                    lag_seconds: r.report_lag_seconds.unwrap_or(f64::NAN),
                    lag_bytes: from_bits(r.report_lag_bytes.ok_or_else(|| missing("lag_bytes"))?),
                    last_upload_at: r.report_last_upload_at,
                    uploads: from_bits(r.report_uploads.ok_or_else(|| missing("uploads"))?),
                    upload_errors: from_bits(r.report_upload_errors.ok_or_else(|| missing("upload_errors"))?),
                    upload_blocked: r.report_upload_blocked.ok_or_else(|| missing("upload_blocked"))?,
                    state: r.report_state.ok_or_else(|| missing("state"))?,
                    durable_checksum: from_bits(r.report_durable_checksum.ok_or_else(|| missing("durable_checksum"))?),
                })
            }
        };
        Ok(InstanceRow {
            info: InstanceInfo {
                id: parse(T, "id", r.id)?,
                project: parse(T, "project", r.project)?,
                host: r.host,
                platform: r.platform,
                mode: r.mode,
                version: r.version,
            },
            started_at: r.started_at,
            last_seen: r.last_seen,
            database: r.database.map(|d| parse(T, "database", d)).transpose()?,
            role: r.role,
            report,
        })
    }
}

#[derive(FromRow)]
pub struct GenerationRaw {
    project: String,
    database: String,
    generation: i64,
    instance: String,
    host: String,
    parent_generation: Option<i64>,
    parent_txid: Option<i64>,
    created_at: i64,
    sealed_txid: Option<i64>,
    sealed_at: Option<i64>,
    leased: bool,
}

impl TryFrom<GenerationRaw> for GenerationRow {
    type Error = StoreError;
    fn try_from(r: GenerationRaw) -> Result<GenerationRow> {
        const T: &str = "generations";
        Ok(GenerationRow {
            project: parse(T, "project", r.project)?,
            database: parse(T, "database", r.database)?,
            generation: Generation(unsigned(T, "generation", r.generation)?),
            instance: parse(T, "instance", r.instance)?,
            host: r.host,
            parent: position(T, "parent", r.parent_generation, r.parent_txid)?,
            created_at: r.created_at,
            sealed_txid: r.sealed_txid.map(|t| unsigned(T, "sealed_txid", t).map(Txid)).transpose()?,
            sealed_at: r.sealed_at,
            leased: r.leased,
        })
    }
}

#[derive(FromRow)]
pub struct EventRaw {
    id: i64,
    at: i64,
    project: String,
    database: Option<String>,
    kind: String,
    instance: Option<String>,
    other_instance: Option<String>,
    message: String,
}

impl TryFrom<EventRaw> for EventRow {
    type Error = StoreError;
    fn try_from(r: EventRaw) -> Result<EventRow> {
        const T: &str = "events";
        Ok(EventRow {
            id: r.id,
            event: NewEvent {
                at: r.at,
                project: parse(T, "project", r.project)?,
                database: r.database.map(|d| parse(T, "database", d)).transpose()?,
                kind: r.kind,
                instance: opt_instance(T, "instance", r.instance)?,
                other_instance: opt_instance(T, "other_instance", r.other_instance)?,
                message: r.message,
            },
        })
    }
}
