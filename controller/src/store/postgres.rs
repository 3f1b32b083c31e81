//! PostgreSQL implementation of `Store`, for several controllers sharing the work.
//!
//! Every lease transition is one `UPDATE … WHERE … RETURNING` in autocommit. Under READ
//! COMMITTED an UPDATE that waited for a concurrent one re-evaluates its WHERE clause on the
//! row the other committed, so keeping the whole decision inside the WHERE clause makes each
//! transition linearizable without explicit locks. PostgreSQL commits concurrent transactions
//! with one WAL flush, so a pool of connections is also what makes many renewals per second
//! cheap.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use proto::model::{DatabaseName, Generation, InstanceId, Policy, Position, ProjectName, Txid};
use sqlx::error::ErrorKind;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor, Postgres, QueryBuilder};

use super::sqlite::rows::{
    self, database_columns, event_columns, generation_columns, instance_columns, int, on_insert, opt_position,
    token_columns, DatabaseRaw, EventRaw, GenerationRaw, InstanceRaw, ProjectRaw, ReportColumns, TokenRaw,
};
use super::{
    Acquired, DatabaseRow, EventFilter, EventRow, GenerationRow, HeadUpdate, InstanceInfo, InstanceRow, Millis,
    NewEvent, NoteRow, ProjectRow, Renewed, Report, ReportUpdate, Result, Store, StoreError, TokenRow,
};

/// Inserts the replica roots of a project inside `tx`.
async fn insert_roots(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    name: &ProjectName,
    roots: &[String],
    now: Millis,
) -> Result<()> {
    if roots.is_empty() {
        return Ok(());
    }
    sqlx::query("INSERT INTO replica_roots (project, url, created_at) SELECT $1, u, $3 FROM UNNEST($2::text[]) AS u")
        .bind(name.as_str())
        .bind(roots.to_vec())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(|e| on_insert(e, "replica root", &roots.join(", "), ("project", name.as_str())))?;
    Ok(())
}

/// Enough concurrent commits to share WAL flushes; far below the server's usual limit of 100.
const CONNECTIONS: u32 = 16;

pub struct PostgresStore {
    pub(super) pool: PgPool,
}

impl PostgresStore {
    /// Connects to `postgres://…` and applies the migrations. An extra query parameter
    /// `schema=NAME` keeps the whole store, migration history included, inside schema NAME
    /// (created if missing), so several stores can share one database.
    pub async fn connect(url: &str) -> Result<Self> {
        let (url, schema) = split_schema(url)?;
        let mut options = PgConnectOptions::from_str(&url)?;
        if let Some(schema) = &schema {
            // Set at connection start-up, so every pooled connection (the migrator's too)
            // resolves unqualified names in the schema and nowhere else.
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        if let Some(schema) = &schema {
            create_schema(&pool, schema).await?;
        }
        // The migrator holds a PostgreSQL advisory lock while it runs, so controllers that
        // start together apply each migration once.
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(PostgresStore { pool })
    }
}

/// Splits `schema=NAME` off the URL's query string.
fn split_schema(url: &str) -> Result<(String, Option<String>)> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_owned(), None)) };
    let mut schema = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("schema=") {
            Some(name) => schema = Some(name),
            None => rest.push(pair),
        }
    }
    if let Some(name) = schema {
        // The name goes into DDL and a start-up option unescaped, so it is held to a safe alphabet.
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(StoreError::Backend(sqlx::Error::Configuration(
                format!("invalid schema {name:?} in the database URL: use a-z, 0-9 and '_'").into(),
            )));
        }
    }
    let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    Ok((url, schema.map(str::to_owned)))
}

async fn create_schema(pool: &PgPool, schema: &str) -> Result<()> {
    let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    match pool.execute(sql.as_str()).await {
        Ok(_) => Ok(()),
        // Two controllers creating it at once: IF NOT EXISTS does not stop the slower one from
        // tripping over the catalog row the faster one just inserted.
        Err(e) if e.as_database_error().is_some_and(|d| d.kind() == ErrorKind::UniqueViolation) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn not_found(project: &ProjectName, name: &DatabaseName) -> StoreError {
    StoreError::NotFound { what: "database", name: format!("{project}/{name}") }
}

async fn get<'e, E: Executor<'e, Database = Postgres>>(
    e: E,
    project: &ProjectName,
    name: &DatabaseName,
) -> Result<Option<DatabaseRow>> {
    let raw: Option<DatabaseRaw> =
        sqlx::query_as(concat!("SELECT ", database_columns!(), " FROM databases WHERE project = $1 AND name = $2"))
            .bind(project.as_str())
            .bind(name.as_str())
            .fetch_optional(e)
            .await?;
    raw.map(DatabaseRow::try_from).transpose()
}

/// Report updates in one statement. An instance this store does not know (yet) matches no row
/// and is skipped: one stray heartbeat must not cost everybody else's reports. Returns how many
/// instances were updated.
async fn record_reports_on<'e, E: Executor<'e, Database = Postgres>>(e: E, batch: &[ReportUpdate]) -> Result<u64> {
    let mut q = QueryBuilder::<Postgres>::new(
        "UPDATE instances AS i SET last_seen = GREATEST(i.last_seen, v.at), \
         database = v.db, role = v.role, report_generation = v.g, report_local_txid = v.lt, \
         report_durable_txid = v.dt, report_lag_seconds = v.ls, report_lag_bytes = v.lb, \
         report_last_upload_at = v.lu, report_uploads = v.up, report_upload_errors = v.ue, \
         report_upload_blocked = v.ub, report_state = v.st, report_durable_checksum = v.dc FROM (",
    );
    // The casts type the VALUES columns, which PostgreSQL would otherwise take as text.
    q.push_values(batch, |mut b, u| {
        let r = ReportColumns::new(u.report.as_ref());
        b.push_bind(u.instance.to_string())
            .push_bind(u.at)
            .push_unseparated("::BIGINT")
            .push_bind(u.database.to_string())
            .push_bind(u.role.clone())
            .push_bind(r.generation)
            .push_unseparated("::BIGINT")
            .push_bind(r.local_txid)
            .push_unseparated("::BIGINT")
            .push_bind(r.durable_txid)
            .push_unseparated("::BIGINT")
            .push_bind(r.lag_seconds)
            .push_unseparated("::DOUBLE PRECISION")
            .push_bind(r.lag_bytes)
            .push_unseparated("::BIGINT")
            .push_bind(r.last_upload_at)
            .push_unseparated("::BIGINT")
            .push_bind(r.uploads)
            .push_unseparated("::BIGINT")
            .push_bind(r.upload_errors)
            .push_unseparated("::BIGINT")
            .push_bind(r.upload_blocked)
            .push_unseparated("::BOOLEAN")
            .push_bind(r.state)
            .push_unseparated("::TEXT")
            .push_bind(r.durable_checksum)
            .push_unseparated("::BIGINT");
    });
    q.push(") AS v(id, at, db, role, g, lt, dt, ls, lb, lu, up, ue, ub, st, dc) WHERE i.id = v.id");
    Ok(q.build().persistent(false).execute(e).await?.rows_affected())
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn create_project(&self, name: &ProjectName, replica_roots: &[String], now: Millis) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query("INSERT INTO projects (name, created_at) VALUES ($1, $2)")
            .bind(name.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await;
        inserted.map_err(|e| on_insert(e, "project", name.as_str(), ("project", name.as_str())))?;
        insert_roots(&mut tx, name, replica_roots, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_replica_roots(&self, name: &ProjectName, replica_roots: &[String], now: Millis) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // The project row is locked, so a concurrent replacement waits for this one.
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM projects WHERE name = $1 FOR UPDATE")
            .bind(name.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Err(StoreError::NotFound { what: "project", name: name.to_string() });
        }
        sqlx::query("DELETE FROM replica_roots WHERE project = $1").bind(name.as_str()).execute(&mut *tx).await?;
        insert_roots(&mut tx, name, replica_roots, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn replica_roots(&self, name: &ProjectName) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT url FROM replica_roots WHERE project = $1 ORDER BY url")
            .bind(name.as_str())
            .fetch_all(&self.pool)
            .await?)
    }

    async fn list_projects(&self) -> Result<Vec<ProjectRow>> {
        let raw: Vec<ProjectRaw> = sqlx::query_as(
            "SELECT p.name, p.created_at, (SELECT COUNT(*) FROM databases d WHERE d.project = p.name) AS databases \
             FROM projects p ORDER BY p.name",
        )
        .fetch_all(&self.pool)
        .await?;
        raw.into_iter().map(ProjectRow::try_from).collect()
    }

    async fn project_exists(&self, name: &ProjectName) -> Result<bool> {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM projects WHERE name = $1)")
            .bind(name.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(exists)
    }

    async fn insert_token(&self, t: &TokenRow) -> Result<()> {
        let project = t.project.as_ref().map(|p| p.as_str());
        let inserted = sqlx::query(
            "INSERT INTO tokens (id, kind, project, hash, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t.id)
        .bind(t.kind.as_str())
        .bind(project)
        .bind(&t.hash)
        .bind(t.created_at)
        .bind(t.revoked_at)
        .execute(&self.pool)
        .await;
        inserted.map_err(|e| on_insert(e, "token", &t.id, ("project", project.unwrap_or_default())))?;
        Ok(())
    }

    async fn find_token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        let raw: Option<TokenRaw> =
            sqlx::query_as(concat!("SELECT ", token_columns!(), " FROM tokens WHERE hash = $1"))
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
        raw.map(TokenRow::try_from).transpose()
    }

    async fn revoke_token(&self, id: &str, now: Millis) -> Result<bool> {
        let done = sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_tokens(&self, project: Option<&ProjectName>) -> Result<Vec<TokenRow>> {
        let raw: Vec<TokenRaw> = match project {
            Some(p) => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    token_columns!(),
                    " FROM tokens WHERE project = $1 ORDER BY created_at, id"
                ))
                .bind(p.as_str())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as(concat!("SELECT ", token_columns!(), " FROM tokens ORDER BY created_at, id"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        raw.into_iter().map(TokenRow::try_from).collect()
    }

    async fn count_admin_tokens(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE kind = 'admin' AND revoked_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        rows::unsigned("tokens", "count", n)
    }

    async fn ensure_database(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        policy: Policy,
        now: Millis,
    ) -> Result<DatabaseRow> {
        if let Some(db) = get(&self.pool, project, name).await? {
            return Ok(db);
        }
        let inserted = sqlx::query_as(concat!(
            "INSERT INTO databases (project, name, policy, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (project, name) DO NOTHING RETURNING ",
            database_columns!()
        ))
        .bind(project.as_str())
        .bind(name.as_str())
        .bind(policy.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await;
        let inserted: Option<DatabaseRaw> =
            inserted.map_err(|e| on_insert(e, "database", name.as_str(), ("project", project.as_str())))?;
        match inserted {
            Some(raw) => raw.try_into(),
            // Another controller created it between the two statements.
            None => get(&self.pool, project, name).await?.ok_or_else(|| not_found(project, name)),
        }
    }

    async fn get_database(&self, project: &ProjectName, name: &DatabaseName) -> Result<Option<DatabaseRow>> {
        get(&self.pool, project, name).await
    }

    async fn list_databases(&self, project: Option<&ProjectName>) -> Result<Vec<DatabaseRow>> {
        let raw: Vec<DatabaseRaw> = match project {
            Some(p) => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    database_columns!(),
                    " FROM databases WHERE project = $1 ORDER BY project, name"
                ))
                .bind(p.as_str())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as(concat!("SELECT ", database_columns!(), " FROM databases ORDER BY project, name"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        raw.into_iter().map(DatabaseRow::try_from).collect()
    }

    async fn set_policy(&self, project: &ProjectName, name: &DatabaseName, policy: Policy) -> Result<()> {
        let done = sqlx::query("UPDATE databases SET policy = $3 WHERE project = $1 AND name = $2")
            .bind(project.as_str())
            .bind(name.as_str())
            .bind(policy.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found(project, name));
        }
        Ok(())
    }

    async fn acquire(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        instance: &InstanceId,
        min_generation: Generation,
        now: Millis,
        ttl_ms: i64,
    ) -> Result<Acquired> {
        super::check_min_generation(min_generation)?;
        // The whole decision is in the WHERE clause: free, expired, or already ours.
        let granted: Option<DatabaseRaw> = sqlx::query_as(concat!(
            "UPDATE databases SET holder = $3, last_generation = GREATEST(last_generation + 1, $4), \
             holder_generation = GREATEST(last_generation + 1, $4), expires_at = $5 + $6, handoff_to = NULL \
             WHERE project = $1 AND name = $2 AND (holder IS NULL OR expires_at <= $5 OR holder = $3) \
             RETURNING ",
            database_columns!()
        ))
        .bind(project.as_str())
        .bind(name.as_str())
        .bind(instance.as_str())
        .bind(int("generation", min_generation.0)?)
        .bind(now)
        .bind(ttl_ms)
        .fetch_optional(&self.pool)
        .await?;
        match granted {
            Some(raw) => {
                let db = DatabaseRow::try_from(raw)?;
                Ok(Acquired::Granted { generation: db.holder_generation, expires_at: db.expires_at, db })
            }
            None => Ok(Acquired::Held {
                db: get(&self.pool, project, name).await?.ok_or_else(|| not_found(project, name))?,
            }),
        }
    }

    async fn renew(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        instance: &InstanceId,
        generation: Generation,
        now: Millis,
        ttl_ms: i64,
    ) -> Result<Renewed> {
        // Expiry is not checked: if nobody acquired the lease since, the holder keeps it.
        // GREATEST: a late, older renewal never shortens the lease.
        let renewed: Option<(i64, Option<String>)> = sqlx::query_as(
            "UPDATE databases SET expires_at = GREATEST(expires_at, $5 + $6) \
             WHERE project = $1 AND name = $2 AND holder = $3 AND holder_generation = $4 \
             RETURNING expires_at, handoff_to",
        )
        .bind(project.as_str())
        .bind(name.as_str())
        .bind(instance.as_str())
        .bind(int("generation", generation.0)?)
        .bind(now)
        .bind(ttl_ms)
        .fetch_optional(&self.pool)
        .await?;
        match renewed {
            Some((expires_at, handoff_to)) => Ok(Renewed::Renewed {
                expires_at,
                handoff_to: rows::opt_instance("databases", "handoff_to", handoff_to)?,
            }),
            None => Ok(Renewed::Fenced {
                db: get(&self.pool, project, name).await?.ok_or_else(|| not_found(project, name))?,
            }),
        }
    }

    async fn release(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        instance: &InstanceId,
        generation: Generation,
        sealed: Option<Position>,
    ) -> Result<bool> {
        let (head_generation, head_txid) = opt_position(sealed)?;
        let done = sqlx::query(
            "UPDATE databases SET holder = NULL, expires_at = 0, handoff_to = NULL, \
             head_generation = COALESCE($5, head_generation), head_txid = COALESCE($6, head_txid) \
             WHERE project = $1 AND name = $2 AND holder = $3 AND holder_generation = $4",
        )
        .bind(project.as_str())
        .bind(name.as_str())
        .bind(instance.as_str())
        .bind(int("generation", generation.0)?)
        .bind(head_generation)
        .bind(head_txid)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn request_handoff(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        holder: &InstanceId,
        generation: Generation,
        newcomer: &InstanceId,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE databases SET handoff_to = $5 \
             WHERE project = $1 AND name = $2 AND holder = $3 AND holder_generation = $4",
        )
        .bind(project.as_str())
        .bind(name.as_str())
        .bind(holder.as_str())
        .bind(int("generation", generation.0)?)
        .bind(newcomer.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn issue_generation(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        min_generation: Generation,
    ) -> Result<Generation> {
        super::check_min_generation(min_generation)?;
        let issued: Option<i64> = sqlx::query_scalar(
            "UPDATE databases SET last_generation = GREATEST(last_generation + 1, $3) \
             WHERE project = $1 AND name = $2 RETURNING last_generation",
        )
        .bind(project.as_str())
        .bind(name.as_str())
        .bind(int("generation", min_generation.0)?)
        .fetch_optional(&self.pool)
        .await?;
        let issued = issued.ok_or_else(|| not_found(project, name))?;
        Ok(Generation(rows::unsigned("databases", "last_generation", issued)?))
    }

    async fn advance_head(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        instance: &InstanceId,
        position: Position,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE databases SET head_generation = $4, head_txid = $5 \
             WHERE project = $1 AND name = $2 AND holder = $3 AND holder_generation = $4 \
             AND (head_generation IS NULL OR head_txid <= $5 OR head_generation <> $4)",
        )
        .bind(project.as_str())
        .bind(name.as_str())
        .bind(instance.as_str())
        .bind(int("generation", position.generation.0)?)
        .bind(int("transaction id", position.txid.0)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn register_instance(&self, info: &InstanceInfo, now: Millis) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO instances (id, project, host, platform, mode, version, started_at, last_seen) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (id) DO UPDATE SET last_seen = GREATEST(instances.last_seen, EXCLUDED.last_seen) \
             WHERE instances.project = EXCLUDED.project",
        )
        .bind(info.id.as_str())
        .bind(info.project.as_str())
        .bind(&info.host)
        .bind(&info.platform)
        .bind(&info.mode)
        .bind(&info.version)
        .bind(now)
        .execute(&self.pool)
        .await;
        inserted.map_err(|e| on_insert(e, "instance", info.id.as_str(), ("project", info.project.as_str())))?;
        Ok(())
    }

    async fn get_instance(&self, id: &InstanceId) -> Result<Option<InstanceRow>> {
        let raw: Option<InstanceRaw> =
            sqlx::query_as(concat!("SELECT ", instance_columns!(), " FROM instances WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        raw.map(InstanceRow::try_from).transpose()
    }

    async fn record_report(
        &self,
        id: &InstanceId,
        database: &DatabaseName,
        role: &str,
        report: Option<&Report>,
        now: Millis,
    ) -> Result<()> {
        let update = ReportUpdate {
            instance: id.clone(),
            database: database.clone(),
            role: role.to_owned(),
            report: report.cloned(),
            at: now,
        };
        if record_reports_on(&self.pool, std::slice::from_ref(&update)).await? == 0 {
            return Err(StoreError::NotFound { what: "instance", name: id.to_string() });
        }
        Ok(())
    }

    async fn record_reports(&self, batch: &[ReportUpdate]) -> Result<()> {
        if !batch.is_empty() {
            record_reports_on(&self.pool, batch).await?;
        }
        Ok(())
    }

    async fn advance_heads(&self, heads: &[HeadUpdate]) -> Result<()> {
        if heads.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(heads.len());
        for h in heads {
            rows.push((h, int("generation", h.position.generation.0)?, int("transaction id", h.position.txid.0)?));
        }
        // The rule of `advance_head`, for every row in one statement.
        let mut q =
            QueryBuilder::<Postgres>::new("UPDATE databases AS d SET head_generation = v.g, head_txid = v.t FROM (");
        q.push_values(&rows, |mut b, (h, generation, txid)| {
            b.push_bind(h.project.as_str())
                .push_bind(h.database.as_str())
                .push_bind(h.instance.as_str())
                .push_bind(*generation)
                .push_unseparated("::BIGINT")
                .push_bind(*txid)
                .push_unseparated("::BIGINT");
        });
        q.push(
            ") AS v(project, name, instance, g, t) WHERE d.project = v.project AND d.name = v.name \
             AND d.holder = v.instance AND d.holder_generation = v.g \
             AND (d.head_generation IS NULL OR d.head_txid <= v.t OR d.head_generation <> v.g)",
        );
        q.build().persistent(false).execute(&self.pool).await?;
        Ok(())
    }

    async fn list_instances(&self, project: Option<&ProjectName>, seen_since: Millis) -> Result<Vec<InstanceRow>> {
        let raw: Vec<InstanceRaw> = match project {
            Some(p) => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    instance_columns!(),
                    " FROM instances WHERE project = $1 AND last_seen >= $2 ORDER BY started_at, id"
                ))
                .bind(p.as_str())
                .bind(seen_since)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as(concat!(
                    "SELECT ",
                    instance_columns!(),
                    " FROM instances WHERE last_seen >= $1 ORDER BY started_at, id"
                ))
                .bind(seen_since)
                .fetch_all(&self.pool)
                .await?
            }
        };
        raw.into_iter().map(InstanceRow::try_from).collect()
    }

    async fn insert_generation(&self, row: &GenerationRow) -> Result<()> {
        let (parent_generation, parent_txid) = opt_position(row.parent)?;
        let inserted = sqlx::query(
            "INSERT INTO generations (project, database, generation, instance, host, parent_generation, \
             parent_txid, created_at, sealed_txid, sealed_at, leased) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(row.project.as_str())
        .bind(row.database.as_str())
        .bind(int("generation", row.generation.0)?)
        .bind(row.instance.as_str())
        .bind(&row.host)
        .bind(parent_generation)
        .bind(parent_txid)
        .bind(row.created_at)
        .bind(row.sealed_txid.map(|t| int("transaction id", t.0)).transpose()?)
        .bind(row.sealed_at)
        .bind(row.leased)
        .execute(&self.pool)
        .await;
        let db = format!("{}/{}", row.project, row.database);
        let name = format!("{db}/{}", row.generation.0);
        inserted.map_err(|e| on_insert(e, "generation", &name, ("database", &db)))?;
        Ok(())
    }

    async fn seal_generation(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        generation: Generation,
        txid: Txid,
        now: Millis,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE generations SET sealed_txid = $4, sealed_at = $5 \
             WHERE project = $1 AND database = $2 AND generation = $3",
        )
        .bind(project.as_str())
        .bind(name.as_str())
        .bind(int("generation", generation.0)?)
        .bind(int("transaction id", txid.0)?)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "generation",
                name: format!("{project}/{name}/{}", generation.0),
            });
        }
        Ok(())
    }

    async fn list_generations(&self, project: &ProjectName, name: &DatabaseName) -> Result<Vec<GenerationRow>> {
        let raw: Vec<GenerationRaw> = sqlx::query_as(concat!(
            "SELECT ",
            generation_columns!(),
            " FROM generations WHERE project = $1 AND database = $2 ORDER BY generation"
        ))
        .bind(project.as_str())
        .bind(name.as_str())
        .fetch_all(&self.pool)
        .await?;
        raw.into_iter().map(GenerationRow::try_from).collect()
    }

    async fn insert_event(&self, e: &NewEvent) -> Result<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO events (at, project, database, kind, instance, other_instance, message) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(e.at)
        .bind(e.project.as_str())
        .bind(e.database.as_ref().map(|d| d.as_str()))
        .bind(&e.kind)
        .bind(e.instance.as_ref().map(|i| i.as_str()))
        .bind(e.other_instance.as_ref().map(|i| i.as_str()))
        .bind(&e.message)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRow>> {
        let mut q = QueryBuilder::<Postgres>::new(concat!(
            "SELECT ",
            event_columns!(),
            " FROM (SELECT ",
            event_columns!(),
            " FROM events WHERE id > "
        ));
        q.push_bind(filter.after_id);
        if let Some(p) = &filter.project {
            q.push(" AND project = ").push_bind(p.as_str().to_owned());
        }
        if let Some(d) = &filter.database {
            q.push(" AND database = ").push_bind(d.as_str().to_owned());
        }
        if let Some(k) = &filter.kind {
            q.push(" AND kind = ").push_bind(k.clone());
        }
        // The newest `limit` events, handed back oldest first.
        q.push(" ORDER BY id DESC LIMIT ").push_bind(rows::event_limit(filter.limit));
        q.push(") AS newest ORDER BY id");
        let raw: Vec<EventRaw> = q.build_query_as().fetch_all(&self.pool).await?;
        raw.into_iter().map(EventRow::try_from).collect()
    }

    async fn put_note(&self, n: &NoteRow) -> Result<()> {
        sqlx::query("INSERT INTO notes (project, database, kind, at, body) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (project, database, kind) DO UPDATE SET at = excluded.at, body = excluded.body")
            .bind(n.project.as_str())
            .bind(n.database.as_str())
            .bind(&n.kind)
            .bind(n.at)
            .bind(&n.body)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_notes(&self, project: Option<&ProjectName>, kind: Option<&str>) -> Result<Vec<NoteRow>> {
        let mut q = QueryBuilder::<Postgres>::new("SELECT project, database, kind, at, body FROM notes WHERE 1 = 1");
        if let Some(p) = project {
            q.push(" AND project = ").push_bind(p.as_str().to_owned());
        }
        if let Some(k) = kind {
            q.push(" AND kind = ").push_bind(k.to_owned());
        }
        q.push(" ORDER BY project, database, kind");
        let raw: Vec<(String, String, String, i64, String)> = q.build_query_as().fetch_all(&self.pool).await?;
        raw.into_iter().map(rows::note).collect()
    }
}
