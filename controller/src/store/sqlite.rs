//! SQLite implementation of `Store`: the default backend, one file beside the controller.
//!
//! Writes go through ONE connection and are group-committed: the writes that arrive while a
//! commit is in flight run together in the next transaction, each still its own statement, and
//! every caller is answered only after the commit that carries its write. With
//! `synchronous=FULL` each commit waits for an fsync, so without grouping the store could not
//! write faster than the disk syncs (a few hundred per second on ordinary disks). Reads use a
//! small pool beside the writer: in WAL mode they never wait for it.

use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use proto::model::{DatabaseName, Generation, InstanceId, Policy, Position, ProjectName, Txid};
use sqlx::error::ErrorKind;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Executor, QueryBuilder, Sqlite};
use tokio::sync::{oneshot, Mutex as AsyncMutex, OwnedMutexGuard};

use self::rows::{
    database_columns, event_columns, generation_columns, instance_columns, int, on_insert, opt_position, token_columns,
    DatabaseRaw, EventRaw, GenerationRaw, InstanceRaw, ProjectRaw, ReportColumns, TokenRaw,
};
use super::{
    Acquired, DatabaseRow, EventFilter, EventRow, GenerationRow, HeadUpdate, InstanceInfo, InstanceRow, Millis,
    NewEvent, NoteRow, ProjectRow, Renewed, Report, ReportUpdate, Result, Store, StoreError, TokenRow,
};

pub(super) mod rows;

mod roots {
    use sqlx::sqlite::SqliteConnection;

    use super::super::Result;

    /// Inserts `roots` of `project` (distinct URLs) on the writer connection.
    pub async fn insert(c: &mut SqliteConnection, project: &str, roots: &[String], now: i64) -> Result<()> {
        for url in roots {
            sqlx::query("INSERT INTO replica_roots (project, url, created_at) VALUES ($1, $2, $3)")
                .bind(project)
                .bind(url)
                .bind(now)
                .execute(&mut *c)
                .await?;
        }
        Ok(())
    }
}

/// Readers beside the single writer.
const READERS: u32 = 4;

pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    writer: Writer,
}

impl SqliteStore {
    /// Opens `sqlite://PATH` (created if missing) or `sqlite::memory:` and applies the
    /// migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // An issued generation must survive a power loss: every commit reaches the disk.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let mut conn = options.connect().await?;
        sqlx::migrate!("migrations/sqlite").run(&mut conn).await?;
        // An in-memory store lives as long as the writer connection keeps it open; readers
        // share it through the shared cache the URL selects.
        let pool = SqlitePoolOptions::new().max_connections(READERS).connect_with(options).await?;
        Ok(SqliteStore {
            pool,
            writer: Writer { queue: Mutex::new(Vec::new()), conn: Arc::new(AsyncMutex::new(conn)) },
        })
    }

    /// Runs `op` on the writer connection inside the next group commit and returns its result
    /// once that commit is durable.
    async fn write<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        self.enqueue(op, false).await
    }

    /// `write` for an `op` whose only write is its first statement.
    async fn write_one<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        self.enqueue(op, true).await
    }

    async fn enqueue<T, F>(&self, op: F, one_statement: bool) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.writer.lock_queue().push(Box::new(Pending { op: Some(op), one_statement, result: None, reply }));
        let conn = Arc::clone(&self.writer.conn).lock_owned().await;
        let batch = std::mem::take(&mut *self.writer.lock_queue());
        if batch.is_empty() {
            // The previous batch carried this write.
            drop(conn);
        } else {
            // The batch runs in its own task: a caller that goes away mid-batch must leave
            // neither the others unanswered nor the connection inside a transaction. Only its
            // panic can make the join fail, and then the answer below reports it.
            let _ = tokio::spawn(commit_batch(conn, batch)).await;
        }
        answer.await.map_err(|_| StoreError::Backend(sqlx::Error::WorkerCrashed))?
    }
}

struct Writer {
    /// Writes waiting for the next batch.
    queue: Mutex<Vec<Box<dyn Job>>>,
    conn: Arc<AsyncMutex<SqliteConnection>>,
}

impl Writer {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Vec<Box<dyn Job>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One write waiting for its batch.
trait Job: Send {
    /// Runs the write inside the batch's transaction and keeps its result until the commit.
    /// False when the write failed in a way that may have ended the transaction.
    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> BoxFuture<'c, bool>;
    /// True when the write is one statement (reads may follow it), so it needs no
    /// transaction of its own.
    fn one_statement(&self) -> bool;
    /// Answers the caller: its own result once the batch committed (or its own error), the
    /// batch's failure otherwise.
    fn answer(self: Box<Self>, batch: Result<(), &str>);
}

struct Pending<T, F> {
    op: Option<F>,
    one_statement: bool,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send,
{
    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> BoxFuture<'c, bool> {
        Box::pin(async move {
            // A caller that went away is not acted for: its write must not land later, judged
            // at a `now` that is no longer now.
            if self.reply.is_closed() {
                return true;
            }
            let Some(op) = self.op.take() else { return true };
            let result = op(conn).await;
            let intact = !matches!(&result, Err(e) if may_end_transaction(e));
            self.result = Some(result);
            intact
        })
    }

    fn one_statement(&self) -> bool {
        self.one_statement
    }

    fn answer(self: Box<Self>, batch: Result<(), &str>) {
        let result = match (batch, self.result) {
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Ok(()), None) => return,
            (Err(why), _) => Err(StoreError::Backend(sqlx::Error::Io(std::io::Error::other(why.to_owned())))),
        };
        // The caller may have gone away meanwhile; then nobody waits for this answer.
        let _ = self.reply.send(result);
    }
}

/// SQLite rolls back a whole transaction on some errors (disk full, I/O error, busy) but only
/// the statement on a constraint violation; errors raised here after a statement ran (a row
/// that does not parse, a missing row) leave the transaction as it was.
fn may_end_transaction(e: &StoreError) -> bool {
    match e {
        StoreError::Backend(sqlx::Error::Database(d)) => matches!(d.kind(), ErrorKind::Other),
        StoreError::Backend(sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed) => true,
        _ => false,
    }
}

async fn commit_batch(mut conn: OwnedMutexGuard<SqliteConnection>, mut batch: Vec<Box<dyn Job>>) {
    let outcome = run_batch(&mut conn, &mut batch).await;
    if outcome.is_err() {
        // Leave the connection outside any transaction for the next batch; this fails
        // harmlessly when SQLite already rolled back.
        let _ = (&mut *conn).execute("ROLLBACK").await;
    }
    for job in batch {
        job.answer(outcome.as_ref().copied().map_err(String::as_str));
    }
}

async fn run_batch(conn: &mut SqliteConnection, batch: &mut [Box<dyn Job>]) -> Result<(), String> {
    if let [job] = batch {
        if job.one_statement() {
            // Alone in its batch, a single statement is its own transaction: one round trip
            // to the connection's thread instead of three.
            return if job.run(conn).await { Ok(()) } else { Err("the write failed".to_owned()) };
        }
    }
    // IMMEDIATE takes the write lock up front, so no statement of the batch can meet a busy
    // database halfway.
    conn.execute("BEGIN IMMEDIATE").await.map_err(|e| format!("begin a write batch: {e}"))?;
    for job in batch.iter_mut() {
        // A write that failed alone is rolled back alone and its caller gets its error.
        if !job.run(conn).await {
            return Err("another write of the same batch failed: the batch was rolled back".to_owned());
        }
    }
    conn.execute("COMMIT").await.map_err(|e| format!("commit a write batch: {e}"))?;
    Ok(())
}

/// A database's key, owned so a queued write can carry it.
struct Key {
    project: String,
    name: String,
}

impl Key {
    fn new(project: &ProjectName, name: &DatabaseName) -> Key {
        Key { project: project.as_str().to_owned(), name: name.as_str().to_owned() }
    }

    fn not_found(&self) -> StoreError {
        StoreError::NotFound { what: "database", name: format!("{}/{}", self.project, self.name) }
    }

    async fn get<'e, E: Executor<'e, Database = Sqlite>>(&self, e: E) -> Result<Option<DatabaseRow>> {
        let raw: Option<DatabaseRaw> =
            sqlx::query_as(concat!("SELECT ", database_columns!(), " FROM databases WHERE project = $1 AND name = $2"))
                .bind(&self.project)
                .bind(&self.name)
                .fetch_optional(e)
                .await?;
        raw.map(DatabaseRow::try_from).transpose()
    }
}

/// Report updates in one statement (the writer is shared with every renewal, so it is held
/// for one statement, not one per instance). An instance this store does not know (yet)
/// matches no row and is skipped. Returns how many instances were updated.
async fn record_reports_on(conn: &mut SqliteConnection, batch: &[ReportUpdate]) -> Result<u64> {
    let mut q = QueryBuilder::<Sqlite>::new("WITH v(id, at, db, role, g, lt, dt, ls, lb, lu, up, ue, ub, st, dc) AS (");
    q.push_values(batch, |mut b, u| {
        let r = ReportColumns::new(u.report.as_ref());
        b.push_bind(u.instance.to_string())
            .push_bind(u.at)
            .push_bind(u.database.to_string())
            .push_bind(u.role.clone())
            .push_bind(r.generation)
            .push_bind(r.local_txid)
            .push_bind(r.durable_txid)
            .push_bind(r.lag_seconds)
            .push_bind(r.lag_bytes)
            .push_bind(r.last_upload_at)
            .push_bind(r.uploads)
            .push_bind(r.upload_errors)
            .push_bind(r.upload_blocked)
            .push_bind(r.state)
            .push_bind(r.durable_checksum);
    });
    q.push(
        ") UPDATE instances SET last_seen = MAX(last_seen, v.at), database = v.db, role = v.role, \
         report_generation = v.g, report_local_txid = v.lt, report_durable_txid = v.dt, \
         report_lag_seconds = v.ls, report_lag_bytes = v.lb, report_last_upload_at = v.lu, \
         report_uploads = v.up, report_upload_errors = v.ue, report_upload_blocked = v.ub, \
         report_state = v.st, report_durable_checksum = v.dc FROM v WHERE instances.id = v.id",
    );
    Ok(q.build().persistent(false).execute(conn).await?.rows_affected())
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn create_project(&self, name: &ProjectName, replica_roots: &[String], now: Millis) -> Result<()> {
        let name = name.as_str().to_owned();
        let roots = replica_roots.to_vec();
        self.write(move |c| {
            Box::pin(async move {
                let inserted = sqlx::query("INSERT INTO projects (name, created_at) VALUES ($1, $2)")
                    .bind(&name)
                    .bind(now)
                    .execute(&mut *c)
                    .await;
                inserted.map_err(|e| on_insert(e, "project", &name, ("project", &name)))?;
                // The project row exists and the roots are distinct: these inserts cannot fail
                // on a constraint, so the batch never commits the project without its roots.
                roots::insert(c, &name, &roots, now).await
            })
        })
        .await
    }

    async fn set_replica_roots(&self, name: &ProjectName, replica_roots: &[String], now: Millis) -> Result<()> {
        let name = name.as_str().to_owned();
        let roots = replica_roots.to_vec();
        self.write(move |c| {
            Box::pin(async move {
                let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM projects WHERE name = $1")
                    .bind(&name)
                    .fetch_optional(&mut *c)
                    .await?;
                if found.is_none() {
                    return Err(StoreError::NotFound { what: "project", name });
                }
                sqlx::query("DELETE FROM replica_roots WHERE project = $1").bind(&name).execute(&mut *c).await?;
                roots::insert(c, &name, &roots, now).await
            })
        })
        .await
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
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM projects WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn insert_token(&self, token: &TokenRow) -> Result<()> {
        let t = token.clone();
        self.write(move |c| {
            Box::pin(async move {
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
                .execute(c)
                .await;
                inserted.map_err(|e| on_insert(e, "token", &t.id, ("project", project.unwrap_or_default())))?;
                Ok(())
            })
        })
        .await
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
        let id = id.to_owned();
        self.write(move |c| {
            Box::pin(async move {
                let done = sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                    .bind(&id)
                    .bind(now)
                    .execute(c)
                    .await?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
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
        let key = Key::new(project, name);
        if let Some(db) = key.get(&self.pool).await? {
            return Ok(db);
        }
        self.write(move |c| {
            Box::pin(async move {
                let inserted = sqlx::query(
                    "INSERT INTO databases (project, name, policy, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (project, name) DO NOTHING",
                )
                .bind(&key.project)
                .bind(&key.name)
                .bind(policy.as_str())
                .bind(now)
                .execute(&mut *c)
                .await;
                inserted.map_err(|e| on_insert(e, "database", &key.name, ("project", &key.project)))?;
                key.get(c).await?.ok_or_else(|| key.not_found())
            })
        })
        .await
    }

    async fn get_database(&self, project: &ProjectName, name: &DatabaseName) -> Result<Option<DatabaseRow>> {
        Key::new(project, name).get(&self.pool).await
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
        let key = Key::new(project, name);
        self.write(move |c| {
            Box::pin(async move {
                let done = sqlx::query("UPDATE databases SET policy = $3 WHERE project = $1 AND name = $2")
                    .bind(&key.project)
                    .bind(&key.name)
                    .bind(policy.as_str())
                    .execute(c)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(key.not_found());
                }
                Ok(())
            })
        })
        .await
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
        let key = Key::new(project, name);
        let instance = instance.as_str().to_owned();
        super::check_min_generation(min_generation)?;
        let min_generation = int("generation", min_generation.0)?;
        self.write(move |c| {
            Box::pin(async move {
                // The whole decision is in the WHERE clause: free, expired, or already ours.
                let granted: Option<DatabaseRaw> = sqlx::query_as(concat!(
                    "UPDATE databases SET holder = $3, last_generation = MAX(last_generation + 1, $4), \
                     holder_generation = MAX(last_generation + 1, $4), expires_at = $5 + $6, handoff_to = NULL \
                     WHERE project = $1 AND name = $2 AND (holder IS NULL OR expires_at <= $5 OR holder = $3) \
                     RETURNING ",
                    database_columns!()
                ))
                .bind(&key.project)
                .bind(&key.name)
                .bind(&instance)
                .bind(min_generation)
                .bind(now)
                .bind(ttl_ms)
                .fetch_optional(&mut *c)
                .await?;
                match granted {
                    Some(raw) => {
                        let db = DatabaseRow::try_from(raw)?;
                        Ok(Acquired::Granted { generation: db.holder_generation, expires_at: db.expires_at, db })
                    }
                    None => Ok(Acquired::Held { db: key.get(c).await?.ok_or_else(|| key.not_found())? }),
                }
            })
        })
        .await
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
        let key = Key::new(project, name);
        let instance = instance.as_str().to_owned();
        let generation = int("generation", generation.0)?;
        self.write_one(move |c| {
            Box::pin(async move {
                // Expiry is not checked: if nobody acquired the lease since, the holder keeps it.
                // MAX: a late, older renewal never shortens the lease.
                let renewed: Option<(i64, Option<String>)> = sqlx::query_as(
                    "UPDATE databases SET expires_at = MAX(expires_at, $5 + $6) \
                     WHERE project = $1 AND name = $2 AND holder = $3 AND holder_generation = $4 \
                     RETURNING expires_at, handoff_to",
                )
                .bind(&key.project)
                .bind(&key.name)
                .bind(&instance)
                .bind(generation)
                .bind(now)
                .bind(ttl_ms)
                .fetch_optional(&mut *c)
                .await?;
                match renewed {
                    Some((expires_at, handoff_to)) => Ok(Renewed::Renewed {
                        expires_at,
                        handoff_to: rows::opt_instance("databases", "handoff_to", handoff_to)?,
                    }),
                    None => Ok(Renewed::Fenced { db: key.get(c).await?.ok_or_else(|| key.not_found())? }),
                }
            })
        })
        .await
    }

    async fn release(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        instance: &InstanceId,
        generation: Generation,
        sealed: Option<Position>,
    ) -> Result<bool> {
        let key = Key::new(project, name);
        let instance = instance.as_str().to_owned();
        let generation = int("generation", generation.0)?;
        let (head_generation, head_txid) = opt_position(sealed)?;
        self.write(move |c| {
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE databases SET holder = NULL, expires_at = 0, handoff_to = NULL, \
                     head_generation = COALESCE($5, head_generation), head_txid = COALESCE($6, head_txid) \
                     WHERE project = $1 AND name = $2 AND holder = $3 AND holder_generation = $4",
                )
                .bind(&key.project)
                .bind(&key.name)
                .bind(&instance)
                .bind(generation)
                .bind(head_generation)
                .bind(head_txid)
                .execute(c)
                .await?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
    }

    async fn request_handoff(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        holder: &InstanceId,
        generation: Generation,
        newcomer: &InstanceId,
    ) -> Result<bool> {
        let key = Key::new(project, name);
        let (holder, newcomer) = (holder.as_str().to_owned(), newcomer.as_str().to_owned());
        let generation = int("generation", generation.0)?;
        self.write(move |c| {
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE databases SET handoff_to = $5 \
                     WHERE project = $1 AND name = $2 AND holder = $3 AND holder_generation = $4",
                )
                .bind(&key.project)
                .bind(&key.name)
                .bind(&holder)
                .bind(generation)
                .bind(&newcomer)
                .execute(c)
                .await?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
    }

    async fn issue_generation(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        min_generation: Generation,
    ) -> Result<Generation> {
        let key = Key::new(project, name);
        super::check_min_generation(min_generation)?;
        let min_generation = int("generation", min_generation.0)?;
        self.write(move |c| {
            Box::pin(async move {
                let issued: Option<i64> = sqlx::query_scalar(
                    "UPDATE databases SET last_generation = MAX(last_generation + 1, $3) \
                     WHERE project = $1 AND name = $2 RETURNING last_generation",
                )
                .bind(&key.project)
                .bind(&key.name)
                .bind(min_generation)
                .fetch_optional(c)
                .await?;
                let issued = issued.ok_or_else(|| key.not_found())?;
                Ok(Generation(rows::unsigned("databases", "last_generation", issued)?))
            })
        })
        .await
    }

    async fn advance_head(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        instance: &InstanceId,
        position: Position,
    ) -> Result<()> {
        let key = Key::new(project, name);
        let instance = instance.as_str().to_owned();
        let generation = int("generation", position.generation.0)?;
        let txid = int("transaction id", position.txid.0)?;
        self.write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE databases SET head_generation = $4, head_txid = $5 \
                     WHERE project = $1 AND name = $2 AND holder = $3 AND holder_generation = $4 \
                     AND (head_generation IS NULL OR head_txid <= $5 OR head_generation <> $4)",
                )
                .bind(&key.project)
                .bind(&key.name)
                .bind(&instance)
                .bind(generation)
                .bind(txid)
                .execute(c)
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn advance_heads(&self, heads: &[HeadUpdate]) -> Result<()> {
        if heads.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(heads.len());
        for h in heads {
            let generation = int("generation", h.position.generation.0)?;
            let txid = int("transaction id", h.position.txid.0)?;
            rows.push((Key::new(&h.project, &h.database), h.instance.to_string(), generation, txid));
        }
        self.write_one(move |c| {
            Box::pin(async move {
                // The rule of `advance_head`, for every row in one statement.
                let mut q = QueryBuilder::<Sqlite>::new("WITH v(project, name, instance, g, t) AS (");
                q.push_values(&rows, |mut b, (key, instance, generation, txid)| {
                    b.push_bind(key.project.clone())
                        .push_bind(key.name.clone())
                        .push_bind(instance.clone())
                        .push_bind(*generation)
                        .push_bind(*txid);
                });
                q.push(
                    ") UPDATE databases SET head_generation = v.g, head_txid = v.t FROM v \
                     WHERE databases.project = v.project AND databases.name = v.name \
                     AND databases.holder = v.instance AND databases.holder_generation = v.g \
                     AND (databases.head_generation IS NULL OR databases.head_txid <= v.t \
                     OR databases.head_generation <> v.g)",
                );
                q.build().persistent(false).execute(&mut *c).await?;
                Ok(())
            })
        })
        .await
    }

    async fn register_instance(&self, info: &InstanceInfo, now: Millis) -> Result<()> {
        let info = info.clone();
        self.write(move |c| {
            Box::pin(async move {
                let inserted = sqlx::query(
                    "INSERT INTO instances (id, project, host, platform, mode, version, started_at, last_seen) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                     ON CONFLICT (id) DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen) \
                     WHERE instances.project = excluded.project",
                )
                .bind(info.id.as_str())
                .bind(info.project.as_str())
                .bind(&info.host)
                .bind(&info.platform)
                .bind(&info.mode)
                .bind(&info.version)
                .bind(now)
                .execute(c)
                .await;
                inserted.map_err(|e| on_insert(e, "instance", info.id.as_str(), ("project", info.project.as_str())))?;
                Ok(())
            })
        })
        .await
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
        self.write_one(move |c| {
            Box::pin(async move {
                if record_reports_on(c, std::slice::from_ref(&update)).await? == 0 {
                    return Err(StoreError::NotFound { what: "instance", name: update.instance.to_string() });
                }
                Ok(())
            })
        })
        .await
    }

    async fn record_reports(&self, batch: &[ReportUpdate]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = batch.to_vec();
        self.write_one(move |c| {
            Box::pin(async move {
                record_reports_on(c, &batch).await?;
                Ok(())
            })
        })
        .await
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
        let row = row.clone();
        let generation = int("generation", row.generation.0)?;
        let (parent_generation, parent_txid) = opt_position(row.parent)?;
        let sealed_txid = row.sealed_txid.map(|t| int("transaction id", t.0)).transpose()?;
        self.write(move |c| {
            Box::pin(async move {
                let inserted = sqlx::query(
                    "INSERT INTO generations (project, database, generation, instance, host, parent_generation, \
                     parent_txid, created_at, sealed_txid, sealed_at, leased) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(row.project.as_str())
                .bind(row.database.as_str())
                .bind(generation)
                .bind(row.instance.as_str())
                .bind(&row.host)
                .bind(parent_generation)
                .bind(parent_txid)
                .bind(row.created_at)
                .bind(sealed_txid)
                .bind(row.sealed_at)
                .bind(row.leased)
                .execute(c)
                .await;
                let db = format!("{}/{}", row.project, row.database);
                let name = format!("{db}/{}", row.generation.0);
                inserted.map_err(|e| on_insert(e, "generation", &name, ("database", &db)))?;
                Ok(())
            })
        })
        .await
    }

    async fn seal_generation(
        &self,
        project: &ProjectName,
        name: &DatabaseName,
        generation: Generation,
        txid: Txid,
        now: Millis,
    ) -> Result<()> {
        let key = Key::new(project, name);
        let (generation, txid) = (int("generation", generation.0)?, int("transaction id", txid.0)?);
        self.write(move |c| {
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE generations SET sealed_txid = $4, sealed_at = $5 \
                     WHERE project = $1 AND database = $2 AND generation = $3",
                )
                .bind(&key.project)
                .bind(&key.name)
                .bind(generation)
                .bind(txid)
                .bind(now)
                .execute(c)
                .await?;
                if done.rows_affected() == 0 {
                    let name = format!("{}/{}/{generation}", key.project, key.name);
                    return Err(StoreError::NotFound { what: "generation", name });
                }
                Ok(())
            })
        })
        .await
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

    async fn insert_event(&self, event: &NewEvent) -> Result<i64> {
        let e = event.clone();
        self.write(move |c| {
            Box::pin(async move {
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
                .fetch_one(c)
                .await?;
                Ok(id)
            })
        })
        .await
    }

    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRow>> {
        let mut q = QueryBuilder::<Sqlite>::new(concat!(
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

    async fn put_note(&self, note: &NoteRow) -> Result<()> {
        let n = note.clone();
        self.write(move |c| {
            Box::pin(async move {
                sqlx::query("INSERT INTO notes (project, database, kind, at, body) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (project, database, kind) DO UPDATE SET at = excluded.at, body = excluded.body")
                    .bind(n.project.as_str())
                    .bind(n.database.as_str())
                    .bind(&n.kind)
                    .bind(n.at)
                    .bind(&n.body)
                    .execute(c)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn list_notes(&self, project: Option<&ProjectName>, kind: Option<&str>) -> Result<Vec<NoteRow>> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT project, database, kind, at, body FROM notes WHERE 1 = 1");
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
