//! The conformance suite: every test runs against SQLite (a file in a temporary directory) and
//! against the real PostgreSQL on 127.0.0.1 (a fresh schema per test, dropped afterwards). An
//! unreachable PostgreSQL fails its tests: a store test that skipped would prove nothing.

use std::collections::BTreeSet;

use sqlx::{Connection, Executor, PgConnection, PgPool, SqlitePool};
use tempfile::TempDir;

use super::*;

const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const TTL: i64 = 10_000;

/// Declares each test once per backend: `store::tests::sqlite::NAME` and
/// `store::tests::postgres::NAME` both run `NAME(fixture)`.
macro_rules! store_test_suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Fixture::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Fixture::postgres().await).await;
                }
            )*
        }
    };
}

store_test_suite!(
    projects_are_unique_and_count_their_databases,
    tokens_are_found_by_hash_revoked_once_and_listed,
    ensure_database_is_idempotent_and_needs_the_project,
    acquire_grants_a_free_lease_and_reports_a_live_holder,
    acquire_after_expiry_grants_the_next_generation,
    min_generation_raises_the_issued_number,
    renew_extends_only_the_current_generation,
    renew_after_expiry_keeps_a_lease_nobody_took,
    release_frees_the_lease_and_records_the_sealed_head,
    handoff_request_reaches_the_holder_and_acquire_clears_it,
    issue_generation_forks_without_touching_the_lease,
    generations_strictly_increase_across_any_interleaving,
    advance_head_moves_forward_for_the_holder_only,
    advance_heads_applies_the_rule_to_every_row,
    events_filter_and_return_the_newest_oldest_first,
    instances_register_report_and_list,
    generations_are_inserted_sealed_and_listed,
    racing_acquires_grant_exactly_one,
    racing_forks_get_distinct_generations,
    a_failed_write_among_concurrent_ones_fails_alone,
    corrupt_rows_are_errors_not_panics,
    notes_replace_their_kind_and_filter,
    replica_roots_come_with_the_project_and_are_replaced_whole,
    a_huge_min_generation_is_refused_and_never_wedges_the_database,
);

async fn replica_roots_come_with_the_project_and_are_replaced_whole(f: Fixture) {
    let s = &f.store;
    let roots = |r: &[&str]| r.iter().map(|u| u.to_string()).collect::<Vec<_>>();
    s.create_project(&project("a"), &roots(&["s3://b/z", "s3://b/a"]), 1).await.expect("create a");
    s.create_project(&project("b"), &[], 1).await.expect("create b");
    assert_eq!(s.replica_roots(&project("a")).await.expect("roots"), roots(&["s3://b/a", "s3://b/z"]));
    assert!(s.replica_roots(&project("b")).await.expect("roots").is_empty());
    assert!(s.replica_roots(&project("nope")).await.expect("roots").is_empty());
    // A duplicate project leaves the first one's roots as they were and adds none.
    let dup = s.create_project(&project("a"), &roots(&["s3://evil/x"]), 2).await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists { what: "project", .. })), "{dup:?}");
    assert_eq!(s.replica_roots(&project("a")).await.expect("roots"), roots(&["s3://b/a", "s3://b/z"]));
    s.set_replica_roots(&project("a"), &roots(&["file:///srv/a", "s3://b/a"]), 3).await.expect("set");
    assert_eq!(s.replica_roots(&project("a")).await.expect("roots"), roots(&["file:///srv/a", "s3://b/a"]));
    s.set_replica_roots(&project("b"), &roots(&["s3://b/b"]), 3).await.expect("set b");
    assert_eq!(s.replica_roots(&project("b")).await.expect("roots"), roots(&["s3://b/b"]));
    s.set_replica_roots(&project("a"), &[], 4).await.expect("clear");
    assert!(s.replica_roots(&project("a")).await.expect("roots").is_empty());
    assert_eq!(
        s.replica_roots(&project("b")).await.expect("roots"),
        roots(&["s3://b/b"]),
        "other projects keep theirs"
    );
    let missing = s.set_replica_roots(&project("nope"), &roots(&["s3://b/x"]), 5).await;
    assert!(matches!(missing, Err(StoreError::NotFound { what: "project", .. })), "{missing:?}");
    assert!(s.replica_roots(&project("nope")).await.expect("roots").is_empty());
}

async fn a_huge_min_generation_is_refused_and_never_wedges_the_database(f: Fixture) {
    let (p, d) = with_database(&f).await;
    for huge in [Generation(u64::MAX), Generation(i64::MAX as u64), Generation(MAX_GENERATION.0 + 1)] {
        let refused = f.store.acquire(&p, &d, &instance("a"), huge, 0, TTL).await;
        assert!(matches!(refused, Err(StoreError::OutOfRange { .. })), "acquire with {huge:?}: {refused:?}");
        let refused = f.store.issue_generation(&p, &d, huge).await;
        assert!(matches!(refused, Err(StoreError::OutOfRange { .. })), "fork with {huge:?}: {refused:?}");
    }
    assert_eq!(get(&f, &p, &d).await.last_generation, Generation(0), "nothing was issued");
    // The largest allowed minimum still leaves every later acquire a number that fits.
    let (g, ..) = granted(f.store.acquire(&p, &d, &instance("a"), MAX_GENERATION, 0, TTL).await.expect("acquire"));
    assert_eq!(g, MAX_GENERATION);
    let (g, ..) = granted(f.store.acquire(&p, &d, &instance("b"), Generation(1), TTL, TTL).await.expect("acquire"));
    assert_eq!(g, MAX_GENERATION.next());
    assert_eq!(f.store.issue_generation(&p, &d, Generation(1)).await.expect("fork"), Generation(MAX_GENERATION.0 + 2));
    let (g, ..) = granted(f.store.acquire(&p, &d, &instance("c"), Generation(1), 3 * TTL, TTL).await.expect("acquire"));
    assert_eq!(g, Generation(MAX_GENERATION.0 + 3));
}

async fn notes_replace_their_kind_and_filter(f: Fixture) {
    let note = |p: &str, d: &str, kind: &str, at: i64| NoteRow {
        project: project(p),
        database: db(d),
        kind: kind.into(),
        at,
        body: format!("{{\"at\":{at}}}"),
    };
    f.store.put_note(&note("p", "b", "scan", 1)).await.expect("put");
    f.store.put_note(&note("p", "a", "scan", 2)).await.expect("put");
    f.store.put_note(&note("p", "a", "drill", 3)).await.expect("put");
    f.store.put_note(&note("q", "a", "scan", 4)).await.expect("put");
    // The newest of a kind replaces the previous one.
    f.store.put_note(&note("p", "a", "scan", 5)).await.expect("replace");
    let all = f.store.list_notes(None, None).await.expect("list");
    let keys: Vec<(String, String, String, i64)> =
        all.iter().map(|n| (n.project.to_string(), n.database.to_string(), n.kind.clone(), n.at)).collect();
    let want = [("p", "a", "drill", 3), ("p", "a", "scan", 5), ("p", "b", "scan", 1), ("q", "a", "scan", 4)];
    assert_eq!(keys, want.map(|(p, d, k, a)| (p.to_string(), d.to_string(), k.to_string(), a)).to_vec());
    assert_eq!(all[1].body, "{\"at\":5}");
    let p_scans = f.store.list_notes(Some(&project("p")), Some("scan")).await.expect("filter");
    assert_eq!(p_scans.iter().map(|n| n.at).collect::<Vec<_>>(), vec![5, 1]);
    assert!(f.store.list_notes(Some(&project("zz")), None).await.expect("none").is_empty());
}

/// A store under test, with raw SQL access to its tables for damaging rows on purpose.
struct Fixture {
    store: Arc<dyn Store>,
    raw: Raw,
    // Dropped last: the store's connections are gone by then.
    _dir: Option<TempDir>,
    _schema: Option<SchemaGuard>,
}

enum Raw {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Fixture {
    async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().expect("create temporary directory");
        let url = format!("sqlite://{}", dir.path().join("controller.db").display());
        let store = SqliteStore::connect(&url).await.expect("open sqlite store");
        Fixture { raw: Raw::Sqlite(store.pool.clone()), store: Arc::new(store), _dir: Some(dir), _schema: None }
    }

    async fn postgres() -> Fixture {
        let guard = SchemaGuard::new();
        let store = PostgresStore::connect(&guard.url()).await.unwrap_or_else(|e| {
            panic!("connect to PostgreSQL at {POSTGRES_URL} (scripts/install-deps.sh starts it): {e}")
        });
        Fixture { raw: Raw::Postgres(store.pool.clone()), store: Arc::new(store), _dir: None, _schema: Some(guard) }
    }

    async fn exec(&self, sql: &str) {
        match &self.raw {
            Raw::Sqlite(pool) => pool.execute(sql).await.map(drop),
            Raw::Postgres(pool) => pool.execute(sql).await.map(drop),
        }
        .expect("run raw sql");
    }
}

/// A fresh schema in the shared `test` database, dropped when the test ends (even by a panic).
struct SchemaGuard {
    schema: String,
}

impl SchemaGuard {
    fn new() -> SchemaGuard {
        SchemaGuard { schema: format!("store_test_{:016x}", rand::random::<u64>()) }
    }

    fn url(&self) -> String {
        format!("{POSTGRES_URL}?schema={}", self.schema)
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        // Drop cannot await, and the test's runtime may be shutting down: use a runtime of its
        // own on a thread of its own. Best effort: a leftover schema only takes space.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(POSTGRES_URL).await?;
                conn.execute(sql.as_str()).await?;
                conn.close().await
            })
            .map_err(std::io::Error::other)
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}", self.schema);
        }
    }
}

fn project(s: &str) -> ProjectName {
    s.parse().expect("valid project name")
}

fn db(s: &str) -> DatabaseName {
    s.parse().expect("valid database name")
}

fn instance(s: &str) -> InstanceId {
    s.parse().expect("valid instance id")
}

/// A store with project `p` holding database `d` (policy handoff).
async fn with_database(f: &Fixture) -> (ProjectName, DatabaseName) {
    let (p, d) = (project("p"), db("d"));
    f.store.create_project(&p, &[], 1).await.expect("create project");
    f.store.ensure_database(&p, &d, Policy::Handoff, 1).await.expect("ensure database");
    (p, d)
}

fn granted(a: Acquired) -> (Generation, Millis, DatabaseRow) {
    match a {
        Acquired::Granted { generation, expires_at, db } => (generation, expires_at, db),
        Acquired::Held { db } => panic!("expected a grant, held by {:?}", db.holder),
    }
}

fn held(a: Acquired) -> DatabaseRow {
    match a {
        Acquired::Held { db } => db,
        Acquired::Granted { generation, .. } => panic!("expected held, granted generation {generation:?}"),
    }
}

async fn get(f: &Fixture, p: &ProjectName, d: &DatabaseName) -> DatabaseRow {
    f.store.get_database(p, d).await.expect("get database").expect("database exists")
}

async fn projects_are_unique_and_count_their_databases(f: Fixture) {
    let s = &f.store;
    s.create_project(&project("b"), &[], 2).await.expect("create b");
    s.create_project(&project("a"), &[], 1).await.expect("create a");
    let dup = s.create_project(&project("a"), &[], 3).await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists { what: "project", .. })), "{dup:?}");
    for name in ["x", "y"] {
        s.ensure_database(&project("a"), &db(name), Policy::Wait, 4).await.expect("ensure");
    }
    let listed = s.list_projects().await.expect("list projects");
    assert_eq!(
        listed,
        vec![
            ProjectRow { name: project("a"), created_at: 1, databases: 2 },
            ProjectRow { name: project("b"), created_at: 2, databases: 0 },
        ]
    );
    assert!(s.project_exists(&project("a")).await.expect("exists"));
    assert!(!s.project_exists(&project("c")).await.expect("exists"));
}

async fn tokens_are_found_by_hash_revoked_once_and_listed(f: Fixture) {
    let s = &f.store;
    s.create_project(&project("p"), &[], 1).await.expect("create project");
    s.create_project(&project("q"), &[], 1).await.expect("create project");
    let token = |id: &str, kind, project: Option<&str>, hash: &str, at| TokenRow {
        id: id.into(),
        kind,
        project: project.map(self::project),
        hash: hash.into(),
        created_at: at,
        revoked_at: None,
    };
    let admin = token("t-admin", TokenKind::Admin, None, "h-admin", 10);
    let agent = token("t-agent", TokenKind::Agent, Some("p"), "h-agent", 11);
    let other = token("t-other", TokenKind::Agent, Some("q"), "h-other", 12);
    for t in [&admin, &agent, &other] {
        s.insert_token(t).await.expect("insert token");
    }
    let same_id = s.insert_token(&token("t-admin", TokenKind::Admin, None, "h-new", 13)).await;
    assert!(matches!(same_id, Err(StoreError::AlreadyExists { what: "token", .. })), "{same_id:?}");
    let same_hash = s.insert_token(&token("t-new", TokenKind::Admin, None, "h-agent", 13)).await;
    assert!(matches!(same_hash, Err(StoreError::AlreadyExists { what: "token", .. })), "{same_hash:?}");
    let no_project = s.insert_token(&token("t-lost", TokenKind::Agent, Some("nope"), "h-lost", 13)).await;
    assert!(matches!(no_project, Err(StoreError::NotFound { what: "project", .. })), "{no_project:?}");

    assert_eq!(s.find_token_by_hash("h-agent").await.expect("find"), Some(agent.clone()));
    assert_eq!(s.find_token_by_hash("h-none").await.expect("find"), None);
    assert_eq!(s.list_tokens(Some(&project("p"))).await.expect("list"), vec![agent.clone()]);
    assert_eq!(s.list_tokens(None).await.expect("list"), vec![admin.clone(), agent.clone(), other]);
    assert_eq!(s.count_admin_tokens().await.expect("count"), 1);

    assert!(s.revoke_token("t-admin", 20).await.expect("revoke"));
    assert!(!s.revoke_token("t-admin", 21).await.expect("revoke again"));
    assert!(!s.revoke_token("t-none", 21).await.expect("revoke unknown"));
    let revoked = s.find_token_by_hash("h-admin").await.expect("find").expect("still listed");
    assert_eq!(revoked.revoked_at, Some(20));
    assert_eq!(s.count_admin_tokens().await.expect("count"), 0);
}

async fn ensure_database_is_idempotent_and_needs_the_project(f: Fixture) {
    let s = &f.store;
    let (p, d) = (project("p"), db("d"));
    let missing = s.ensure_database(&p, &d, Policy::Alert, 5).await;
    assert!(matches!(missing, Err(StoreError::NotFound { what: "project", .. })), "{missing:?}");
    s.create_project(&p, &[], 1).await.expect("create project");
    let first = s.ensure_database(&p, &d, Policy::Alert, 5).await.expect("ensure");
    assert_eq!(
        first,
        DatabaseRow {
            project: p.clone(),
            name: d.clone(),
            policy: Policy::Alert,
            last_generation: Generation(0),
            holder: None,
            holder_generation: Generation(0),
            expires_at: 0,
            handoff_to: None,
            head: None,
            created_at: 5,
        }
    );
    // A second call returns the existing row: the policy and creation time stay.
    let again = s.ensure_database(&p, &d, Policy::Wait, 9).await.expect("ensure again");
    assert_eq!(again, first);
    s.ensure_database(&p, &db("a"), Policy::Wait, 6).await.expect("ensure a");
    let names: Vec<_> = s.list_databases(Some(&p)).await.expect("list").into_iter().map(|r| r.name).collect();
    assert_eq!(names, vec![db("a"), d.clone()]);
    assert_eq!(s.list_databases(None).await.expect("list all").len(), 2);
    assert!(s.list_databases(Some(&project("q"))).await.expect("list q").is_empty());

    s.set_policy(&p, &d, Policy::Wait).await.expect("set policy");
    assert_eq!(get(&f, &p, &d).await.policy, Policy::Wait);
    let gone = s.set_policy(&p, &db("zz"), Policy::Wait).await;
    assert!(matches!(gone, Err(StoreError::NotFound { what: "database", .. })), "{gone:?}");
    assert_eq!(s.get_database(&p, &db("zz")).await.expect("get"), None);
}

async fn acquire_grants_a_free_lease_and_reports_a_live_holder(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let (a, b) = (instance("a"), instance("b"));
    let (generation, expires_at, row) =
        granted(f.store.acquire(&p, &d, &a, Generation(1), 100, TTL).await.expect("acquire"));
    assert_eq!((generation, expires_at), (Generation(1), 100 + TTL));
    assert_eq!(
        (row.holder.as_ref(), row.holder_generation, row.last_generation),
        (Some(&a), Generation(1), Generation(1))
    );
    assert_eq!(get(&f, &p, &d).await, row, "the grant is what the store holds");

    let row = held(f.store.acquire(&p, &d, &b, Generation(1), 100 + TTL - 1, TTL).await.expect("acquire"));
    assert_eq!((row.holder, row.holder_generation, row.expires_at), (Some(a), Generation(1), 100 + TTL));
    assert_eq!(row.last_generation, Generation(1), "a refused acquire issues nothing");

    let missing = f.store.acquire(&p, &db("nope"), &b, Generation(1), 100, TTL).await;
    assert!(matches!(missing, Err(StoreError::NotFound { what: "database", .. })), "{missing:?}");
}

async fn acquire_after_expiry_grants_the_next_generation(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let (a, b) = (instance("a"), instance("b"));
    granted(f.store.acquire(&p, &d, &a, Generation(1), 100, TTL).await.expect("acquire"));
    // Expiry is judged by the caller's clock: at exactly expires_at the lease is free.
    let (generation, expires_at, row) =
        granted(f.store.acquire(&p, &d, &b, Generation(1), 100 + TTL, TTL).await.expect("acquire"));
    assert_eq!((generation, expires_at), (Generation(2), 100 + 2 * TTL));
    assert_eq!(row.holder, Some(b.clone()));
    // The holder asking again gets a fresh generation too.
    let (generation, ..) = granted(f.store.acquire(&p, &d, &b, Generation(1), 100 + TTL, TTL).await.expect("acquire"));
    assert_eq!(generation, Generation(3));
}

async fn min_generation_raises_the_issued_number(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let (generation, ..) =
        granted(f.store.acquire(&p, &d, &instance("a"), Generation(40), 0, TTL).await.expect("acquire"));
    assert_eq!(generation, Generation(40));
    let (generation, ..) =
        granted(f.store.acquire(&p, &d, &instance("b"), Generation(7), TTL, TTL).await.expect("acquire"));
    assert_eq!(generation, Generation(41), "a lower minimum never lowers the number");
    assert_eq!(get(&f, &p, &d).await.last_generation, Generation(41));
}

async fn renew_extends_only_the_current_generation(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let (a, b) = (instance("a"), instance("b"));
    granted(f.store.acquire(&p, &d, &a, Generation(1), 0, TTL).await.expect("acquire"));
    let renewed = f.store.renew(&p, &d, &a, Generation(1), 5_000, TTL).await.expect("renew");
    assert_eq!(renewed, Renewed::Renewed { expires_at: 5_000 + TTL, handoff_to: None });
    assert_eq!(get(&f, &p, &d).await.expires_at, 5_000 + TTL);
    // A renewal that arrives late, with an older clock reading, does not shorten the lease.
    let late = f.store.renew(&p, &d, &a, Generation(1), 1_000, TTL).await.expect("renew");
    assert_eq!(late, Renewed::Renewed { expires_at: 5_000 + TTL, handoff_to: None });

    // b takes over after expiry: a's generation is fenced.
    granted(f.store.acquire(&p, &d, &b, Generation(1), 5_000 + TTL, TTL).await.expect("acquire"));
    match f.store.renew(&p, &d, &a, Generation(1), 5_000 + TTL, TTL).await.expect("renew") {
        Renewed::Fenced { db } => assert_eq!((db.holder, db.holder_generation), (Some(b.clone()), Generation(2))),
        other => panic!("stale holder renewed: {other:?}"),
    }
    // The right instance with a stale generation is fenced as well.
    let stale = f.store.renew(&p, &d, &b, Generation(1), 5_000 + TTL, TTL).await.expect("renew");
    assert!(matches!(stale, Renewed::Fenced { .. }), "{stale:?}");
    let missing = f.store.renew(&p, &db("nope"), &b, Generation(2), 0, TTL).await;
    assert!(matches!(missing, Err(StoreError::NotFound { what: "database", .. })), "{missing:?}");
}

async fn renew_after_expiry_keeps_a_lease_nobody_took(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let a = instance("a");
    granted(f.store.acquire(&p, &d, &a, Generation(1), 0, TTL).await.expect("acquire"));
    let renewed = f.store.renew(&p, &d, &a, Generation(1), 3 * TTL, TTL).await.expect("renew");
    assert_eq!(renewed, Renewed::Renewed { expires_at: 4 * TTL, handoff_to: None });
    let row = get(&f, &p, &d).await;
    assert_eq!((row.holder, row.holder_generation, row.last_generation), (Some(a), Generation(1), Generation(1)));
}

async fn release_frees_the_lease_and_records_the_sealed_head(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let (a, b) = (instance("a"), instance("b"));
    granted(f.store.acquire(&p, &d, &a, Generation(1), 0, TTL).await.expect("acquire"));
    let sealed = Position { generation: Generation(1), txid: Txid(42) };
    assert!(!f.store.release(&p, &d, &b, Generation(1), Some(sealed)).await.expect("release by stranger"));
    assert!(!f.store.release(&p, &d, &a, Generation(2), Some(sealed)).await.expect("release stale"));
    assert_eq!(get(&f, &p, &d).await.holder, Some(a.clone()));

    assert!(f.store.release(&p, &d, &a, Generation(1), Some(sealed)).await.expect("release"));
    let row = get(&f, &p, &d).await;
    assert_eq!((row.holder, row.expires_at, row.head, row.handoff_to), (None, 0, Some(sealed), None));
    assert!(!f.store.release(&p, &d, &a, Generation(1), None).await.expect("release twice"));

    // Free again before any expiry; an unsealed release keeps the head.
    let (generation, ..) = granted(f.store.acquire(&p, &d, &b, Generation(1), 1, TTL).await.expect("acquire"));
    assert_eq!(generation, Generation(2));
    assert!(f.store.release(&p, &d, &b, generation, None).await.expect("release"));
    assert_eq!(get(&f, &p, &d).await.head, Some(sealed));
    assert!(!f.store.release(&p, &db("nope"), &b, generation, None).await.expect("release missing"));
}

async fn handoff_request_reaches_the_holder_and_acquire_clears_it(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let (a, b, c) = (instance("a"), instance("b"), instance("c"));
    granted(f.store.acquire(&p, &d, &a, Generation(1), 0, TTL).await.expect("acquire"));
    assert!(!f.store.request_handoff(&p, &d, &a, Generation(2), &b).await.expect("stale request"));
    assert!(!f.store.request_handoff(&p, &d, &c, Generation(1), &b).await.expect("wrong holder"));
    assert!(f.store.request_handoff(&p, &d, &a, Generation(1), &b).await.expect("request"));
    let renewed = f.store.renew(&p, &d, &a, Generation(1), 10, TTL).await.expect("renew");
    assert_eq!(renewed, Renewed::Renewed { expires_at: 10 + TTL, handoff_to: Some(b.clone()) });
    assert_eq!(get(&f, &p, &d).await.handoff_to, Some(b.clone()));

    // The holder coming back under a new generation starts with no pending handoff.
    let (_, _, row) = granted(f.store.acquire(&p, &d, &a, Generation(1), 20, TTL).await.expect("acquire"));
    assert_eq!(row.handoff_to, None);
    assert!(f.store.request_handoff(&p, &d, &a, Generation(2), &b).await.expect("request"));
    let (_, _, row) = granted(f.store.acquire(&p, &d, &b, Generation(1), 20 + TTL, TTL).await.expect("acquire"));
    assert_eq!((row.holder, row.handoff_to), (Some(b), None));
}

async fn issue_generation_forks_without_touching_the_lease(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let a = instance("a");
    granted(f.store.acquire(&p, &d, &a, Generation(1), 0, TTL).await.expect("acquire"));
    assert_eq!(f.store.issue_generation(&p, &d, Generation(1)).await.expect("issue"), Generation(2));
    assert_eq!(f.store.issue_generation(&p, &d, Generation(10)).await.expect("issue"), Generation(10));
    assert_eq!(f.store.issue_generation(&p, &d, Generation(3)).await.expect("issue"), Generation(11));
    let row = get(&f, &p, &d).await;
    assert_eq!(
        (row.holder, row.holder_generation, row.last_generation, row.expires_at),
        (Some(a.clone()), Generation(1), Generation(11), TTL)
    );
    // The holder keeps renewing its own generation.
    assert!(matches!(f.store.renew(&p, &d, &a, Generation(1), 1, TTL).await.expect("renew"), Renewed::Renewed { .. }));
    let (generation, ..) =
        granted(f.store.acquire(&p, &d, &instance("b"), Generation(1), 2 * TTL, TTL).await.expect("acquire"));
    assert_eq!(generation, Generation(12));
    let missing = f.store.issue_generation(&p, &db("nope"), Generation(1)).await;
    assert!(matches!(missing, Err(StoreError::NotFound { what: "database", .. })), "{missing:?}");
}

async fn generations_strictly_increase_across_any_interleaving(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let ids = [instance("a"), instance("b"), instance("c")];
    let mut issued = Vec::new();
    let mut now = 0;
    // A fixed pseudo-random walk over every way a generation can be issued or a lease freed.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..60 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let pick = (seed >> 33) as usize;
        let who = &ids[pick % ids.len()];
        let min = Generation((pick % 7) as u64);
        match (pick / 3) % 4 {
            0 => {
                if let Acquired::Granted { generation, .. } =
                    f.store.acquire(&p, &d, who, min, now, TTL).await.expect("acquire")
                {
                    issued.push(generation);
                }
            }
            1 => issued.push(f.store.issue_generation(&p, &d, min).await.expect("issue")),
            2 => {
                let row = get(&f, &p, &d).await;
                if let Some(holder) = row.holder {
                    f.store.release(&p, &d, &holder, row.holder_generation, None).await.expect("release");
                }
            }
            _ => now += TTL,
        }
    }
    assert!(issued.len() > 10, "the walk issued only {} generations", issued.len());
    assert!(issued.windows(2).all(|w| w[0] < w[1]), "not strictly increasing: {issued:?}");
    assert_eq!(get(&f, &p, &d).await.last_generation, *issued.last().expect("issued"));
}

async fn advance_head_moves_forward_for_the_holder_only(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let (a, b) = (instance("a"), instance("b"));
    let at = |g, t| Position { generation: Generation(g), txid: Txid(t) };
    granted(f.store.acquire(&p, &d, &a, Generation(1), 0, TTL).await.expect("acquire"));
    let head = |f: &Fixture| {
        let (p, d) = (p.clone(), d.clone());
        let store = Arc::clone(&f.store);
        async move { store.get_database(&p, &d).await.expect("get").expect("exists").head }
    };

    f.store.advance_head(&p, &d, &a, at(1, 5)).await.expect("advance");
    assert_eq!(head(&f).await, Some(at(1, 5)));
    f.store.advance_head(&p, &d, &a, at(1, 3)).await.expect("advance backwards");
    assert_eq!(head(&f).await, Some(at(1, 5)), "the head never moves back");
    f.store.advance_head(&p, &d, &a, at(1, 5)).await.expect("advance to the same");
    f.store.advance_head(&p, &d, &b, at(1, 9)).await.expect("advance by a stranger");
    f.store.advance_head(&p, &d, &a, at(2, 9)).await.expect("advance another generation");
    assert_eq!(head(&f).await, Some(at(1, 5)), "only the holder's own generation moves the head");
    f.store.advance_head(&p, &d, &a, at(1, 8)).await.expect("advance");
    assert_eq!(head(&f).await, Some(at(1, 8)));

    // A new holder continues from the old head: a lower txid in its own generation is news.
    granted(f.store.acquire(&p, &d, &b, Generation(1), TTL, TTL).await.expect("acquire"));
    f.store.advance_head(&p, &d, &a, at(1, 20)).await.expect("advance by the old holder");
    assert_eq!(head(&f).await, Some(at(1, 8)), "a fenced holder no longer moves the head");
    f.store.advance_head(&p, &d, &b, at(2, 2)).await.expect("advance");
    assert_eq!(head(&f).await, Some(at(2, 2)));
    f.store.advance_head(&p, &db("nope"), &b, at(2, 2)).await.expect("advance on a missing database");
}

async fn advance_heads_applies_the_rule_to_every_row(f: Fixture) {
    let (p, d1) = with_database(&f).await;
    let (d2, d3) = (db("d2"), db("d3"));
    for d in [&d2, &d3] {
        f.store.ensure_database(&p, d, Policy::Handoff, 1).await.expect("ensure database");
    }
    let (a, b) = (instance("a"), instance("b"));
    let at = |g, t| Position { generation: Generation(g), txid: Txid(t) };
    for d in [&d1, &d2] {
        granted(f.store.acquire(&p, d, &a, Generation(1), 0, TTL).await.expect("acquire"));
    }
    granted(f.store.acquire(&p, &d3, &b, Generation(1), 0, TTL).await.expect("acquire"));
    let up = |d: &DatabaseName, i: &InstanceId, position| HeadUpdate {
        project: p.clone(),
        database: d.clone(),
        instance: i.clone(),
        position,
    };
    let head = |d: &DatabaseName| {
        let (p, d, store) = (p.clone(), d.clone(), Arc::clone(&f.store));
        async move { store.get_database(&p, &d).await.expect("get").expect("exists").head }
    };

    f.store.advance_heads(&[up(&d1, &a, at(1, 5)), up(&d2, &a, at(1, 7))]).await.expect("advance");
    assert_eq!((head(&d1).await, head(&d2).await, head(&d3).await), (Some(at(1, 5)), Some(at(1, 7)), None));
    f.store
        .advance_heads(&[
            up(&d1, &a, at(1, 3)),
            up(&d2, &a, at(1, 9)),
            up(&d3, &a, at(1, 4)),
            up(&db("nope"), &a, at(1, 1)),
        ])
        .await
        .expect("advance a mixed batch");
    assert_eq!(
        (head(&d1).await, head(&d2).await, head(&d3).await),
        (Some(at(1, 5)), Some(at(1, 9)), None),
        "each row follows the rule: never back, only the holder, a missing database is skipped"
    );
    f.store.advance_heads(&[]).await.expect("an empty batch");
}

async fn events_filter_and_return_the_newest_oldest_first(f: Fixture) {
    let event = |project: &str, database: Option<&str>, kind: &str, n: i64| NewEvent {
        at: n,
        project: self::project(project),
        database: database.map(db),
        kind: kind.into(),
        instance: (n % 2 == 0).then(|| instance("a")),
        other_instance: None,
        message: format!("event {n}"),
    };
    let mut ids = Vec::new();
    for n in 0..12 {
        let e = match n % 3 {
            0 => event("p", Some("d"), "forked", n),
            1 => event("p", Some("e"), "fenced", n),
            _ => event("q", None, "forked", n),
        };
        ids.push(f.store.insert_event(&e).await.expect("insert event"));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let list = |filter: EventFilter| {
        let store = Arc::clone(&f.store);
        async move {
            store.list_events(&filter).await.expect("list events").into_iter().map(|e| e.event.at).collect::<Vec<_>>()
        }
    };

    assert_eq!(list(EventFilter::default()).await, (0..12).collect::<Vec<_>>());
    assert_eq!(
        list(EventFilter { project: Some(project("p")), ..Default::default() }).await,
        vec![0, 1, 3, 4, 6, 7, 9, 10]
    );
    let pd = EventFilter { project: Some(project("p")), database: Some(db("d")), ..Default::default() };
    assert_eq!(list(pd.clone()).await, vec![0, 3, 6, 9]);
    assert_eq!(
        list(EventFilter { kind: Some("forked".into()), ..Default::default() }).await,
        vec![0, 2, 3, 5, 6, 8, 9, 11]
    );
    assert_eq!(list(EventFilter { after_id: ids[6], ..pd.clone() }).await, vec![9]);
    // A limit keeps the newest events, still oldest first.
    assert_eq!(list(EventFilter { limit: 3, ..Default::default() }).await, vec![9, 10, 11]);
    assert_eq!(list(EventFilter { limit: 2, ..pd }).await, vec![6, 9]);

    let full = f.store.list_events(&EventFilter { limit: 1, ..Default::default() }).await.expect("list");
    assert_eq!(full, vec![EventRow { id: ids[11], event: event("q", None, "forked", 11) }]);
}

async fn instances_register_report_and_list(f: Fixture) {
    let s = &f.store;
    let (p, q, d) = (project("p"), project("q"), db("d"));
    s.create_project(&p, &[], 1).await.expect("create project");
    s.create_project(&q, &[], 1).await.expect("create project");
    let info = |id: &str, project: &ProjectName| InstanceInfo {
        id: instance(id),
        project: project.clone(),
        host: format!("host-{id}"),
        platform: "linux".into(),
        mode: "run".into(),
        version: "0.1.0".into(),
    };
    s.register_instance(&info("a", &p), 100).await.expect("register a");
    s.register_instance(&info("b", &p), 200).await.expect("register b");
    s.register_instance(&info("c", &q), 300).await.expect("register c");
    let orphan = s.register_instance(&info("z", &project("nope")), 300).await;
    assert!(matches!(orphan, Err(StoreError::NotFound { what: "project", .. })), "{orphan:?}");

    let a = s.get_instance(&instance("a")).await.expect("get").expect("registered");
    assert_eq!(
        a,
        InstanceRow {
            info: info("a", &p),
            started_at: 100,
            last_seen: 100,
            database: None,
            role: String::new(),
            report: None
        }
    );
    // Registering again only refreshes last_seen.
    let mut changed = info("a", &p);
    changed.host = "elsewhere".into();
    s.register_instance(&changed, 150).await.expect("register again");
    let a = s.get_instance(&instance("a")).await.expect("get").expect("registered");
    assert_eq!((a.info, a.started_at, a.last_seen), (info("a", &p), 100, 150));
    // The same id registered by another project refreshes nothing of it.
    s.register_instance(&info("a", &q), 160).await.expect("register under q");
    let a = s.get_instance(&instance("a")).await.expect("get").expect("registered");
    assert_eq!((a.info, a.started_at, a.last_seen), (info("a", &p), 100, 150));

    let report = Report {
        generation: Generation(3),
        local_txid: Txid(40),
        durable_txid: Txid(38),
        lag_seconds: 1.5,
        lag_bytes: 4096,
        last_upload_at: Some(170),
        uploads: 12,
        upload_errors: 1,
        upload_blocked: true,
        state: "replicating".into(),
        // Every bit of a checksum survives.
        durable_checksum: u64::MAX - 5,
    };
    s.record_report(&instance("a"), &d, "holder", Some(&report), 180).await.expect("record report");
    let a = s.get_instance(&instance("a")).await.expect("get").expect("registered");
    assert_eq!(
        (a.last_seen, a.database, a.role.as_str(), a.report),
        (180, Some(d.clone()), "holder", Some(report.clone()))
    );
    s.record_report(&instance("a"), &db("e"), "pending", None, 190).await.expect("record without report");
    let a = s.get_instance(&instance("a")).await.expect("get").expect("registered");
    assert_eq!((a.last_seen, a.database, a.role.as_str(), a.report), (190, Some(db("e")), "pending", None));
    let unknown = s.record_report(&instance("nobody"), &d, "holder", None, 190).await;
    assert!(matches!(unknown, Err(StoreError::NotFound { what: "instance", .. })), "{unknown:?}");

    let update = |id: &str, role: &str, report: Option<Report>, at| ReportUpdate {
        instance: instance(id),
        database: d.clone(),
        role: role.into(),
        report,
        at,
    };
    s.record_reports(&[
        update("b", "forked", Some(report.clone()), 400),
        update("nobody", "holder", None, 400),
        update("c", "fenced", None, 410),
    ])
    .await
    .expect("record a batch with an unknown instance");
    let b = s.get_instance(&instance("b")).await.expect("get").expect("registered");
    assert_eq!((b.last_seen, b.role.as_str(), b.report), (400, "forked", Some(report)));
    let c = s.get_instance(&instance("c")).await.expect("get").expect("registered");
    assert_eq!((c.last_seen, c.role.as_str()), (410, "fenced"));

    let ids = |rows: Vec<InstanceRow>| rows.into_iter().map(|r| r.info.id.to_string()).collect::<Vec<_>>();
    assert_eq!(ids(s.list_instances(None, 0).await.expect("list")), ["a", "b", "c"]);
    assert_eq!(ids(s.list_instances(Some(&p), 0).await.expect("list")), ["a", "b"]);
    assert_eq!(ids(s.list_instances(Some(&p), 190).await.expect("list")), ["a", "b"]);
    assert_eq!(ids(s.list_instances(Some(&p), 191).await.expect("list")), ["b"]);
    assert_eq!(ids(s.list_instances(None, 405).await.expect("list")), ["c"]);
    assert!(s.list_instances(Some(&project("nope")), 0).await.expect("list").is_empty());
}

async fn generations_are_inserted_sealed_and_listed(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let row = |generation, parent: Option<Position>, leased| GenerationRow {
        project: p.clone(),
        database: d.clone(),
        generation: Generation(generation),
        instance: instance("a"),
        host: "h".into(),
        parent,
        created_at: 10 * generation as i64,
        sealed_txid: None,
        sealed_at: None,
        leased,
    };
    let parent = Position { generation: Generation(1), txid: Txid(7) };
    // Inserted out of order, listed oldest first.
    f.store.insert_generation(&row(2, Some(parent), false)).await.expect("insert 2");
    f.store.insert_generation(&row(1, None, true)).await.expect("insert 1");
    let dup = f.store.insert_generation(&row(1, None, true)).await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists { what: "generation", .. })), "{dup:?}");
    let mut orphan = row(1, None, true);
    orphan.database = db("nope");
    let orphan = f.store.insert_generation(&orphan).await;
    assert!(matches!(orphan, Err(StoreError::NotFound { what: "database", .. })), "{orphan:?}");

    f.store.seal_generation(&p, &d, Generation(1), Txid(7), 99).await.expect("seal");
    let missing = f.store.seal_generation(&p, &d, Generation(5), Txid(7), 99).await;
    assert!(matches!(missing, Err(StoreError::NotFound { what: "generation", .. })), "{missing:?}");
    let mut sealed = row(1, None, true);
    sealed.sealed_txid = Some(Txid(7));
    sealed.sealed_at = Some(99);
    assert_eq!(f.store.list_generations(&p, &d).await.expect("list"), vec![sealed, row(2, Some(parent), false)]);
    assert!(f.store.list_generations(&p, &db("nope")).await.expect("list").is_empty());
}

async fn racing_acquires_grant_exactly_one(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let racers: Vec<_> = (0..20)
        .map(|i| {
            let (store, p, d) = (Arc::clone(&f.store), p.clone(), d.clone());
            tokio::spawn(async move {
                (i, store.acquire(&p, &d, &instance(&format!("i{i}")), Generation(1), 50, TTL).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut holders = BTreeSet::new();
    for racer in racers {
        match racer.await.expect("join racer") {
            (i, Ok(Acquired::Granted { generation, .. })) => winners.push((i, generation)),
            (_, Ok(Acquired::Held { db })) => {
                holders.insert(db.holder.expect("held names a holder").to_string());
            }
            (i, Err(e)) => panic!("racer {i}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let (winner, generation) = winners[0];
    assert_eq!(generation, Generation(1));
    assert!(holders.iter().all(|h| *h == format!("i{winner}")), "held by {holders:?}, granted to i{winner}");
    assert_eq!(get(&f, &p, &d).await.last_generation, Generation(1));
}

async fn racing_forks_get_distinct_generations(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let racers: Vec<_> = (0..20)
        .map(|_| {
            let (store, p, d) = (Arc::clone(&f.store), p.clone(), d.clone());
            tokio::spawn(async move { store.issue_generation(&p, &d, Generation(1)).await })
        })
        .collect();
    let mut issued = BTreeSet::new();
    for racer in racers {
        issued.insert(racer.await.expect("join racer").expect("issue").0);
    }
    assert_eq!(issued, (1..=20).collect::<BTreeSet<u64>>());
}

async fn a_failed_write_among_concurrent_ones_fails_alone(f: Fixture) {
    // Every project is created twice at once: one creation of each wins, whatever else shares
    // its transaction or its commit.
    let writers: Vec<_> = (0..20)
        .map(|i| {
            let store = Arc::clone(&f.store);
            tokio::spawn(async move { store.create_project(&project(&format!("p{}", i % 10)), &[], i).await })
        })
        .collect();
    let (mut created, mut refused) = (0, 0);
    for writer in writers {
        match writer.await.expect("join writer") {
            Ok(()) => created += 1,
            Err(StoreError::AlreadyExists { what: "project", .. }) => refused += 1,
            Err(e) => panic!("unexpected failure: {e}"),
        }
    }
    assert_eq!((created, refused), (10, 10));
    assert_eq!(f.store.list_projects().await.expect("list").len(), 10);
}

async fn corrupt_rows_are_errors_not_panics(f: Fixture) {
    let (p, d) = with_database(&f).await;
    let expect_corrupt = |r: Result<Option<DatabaseRow>>, what: &str| {
        assert!(matches!(r, Err(StoreError::Corrupt { table: "databases", .. })), "{what}: {r:?}");
    };
    f.exec("UPDATE databases SET holder = 'not/an id'").await;
    expect_corrupt(f.store.get_database(&p, &d).await, "bad holder");
    f.exec("UPDATE databases SET holder = NULL, last_generation = -1").await;
    expect_corrupt(f.store.get_database(&p, &d).await, "negative generation");
    f.exec("UPDATE databases SET last_generation = 0, policy = 'sometimes'").await;
    expect_corrupt(f.store.get_database(&p, &d).await, "unknown policy");
    f.exec("UPDATE databases SET policy = 'wait', head_generation = 3").await;
    expect_corrupt(f.store.get_database(&p, &d).await, "half a head");
    let listed = f.store.list_databases(None).await;
    assert!(matches!(listed, Err(StoreError::Corrupt { .. })), "{listed:?}");
    f.exec("UPDATE databases SET head_generation = NULL").await;
    assert_eq!(get(&f, &p, &d).await.policy, Policy::Wait, "repaired");
    f.exec("INSERT INTO tokens (id, kind, hash, created_at) VALUES ('t', 'root', 'h', 0)").await;
    let token = f.store.find_token_by_hash("h").await;
    assert!(matches!(token, Err(StoreError::Corrupt { table: "tokens", .. })), "{token:?}");
}

#[tokio::test]
async fn sqlite_store_survives_reopening() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let url = format!("sqlite://{}", dir.path().join("nested.db").display());
    let (p, d, a) = (project("p"), db("d"), instance("a"));
    {
        let store = SqliteStore::connect(&url).await.expect("open");
        store.create_project(&p, &[], 1).await.expect("create project");
        store.ensure_database(&p, &d, Policy::Wait, 1).await.expect("ensure");
        granted(store.acquire(&p, &d, &a, Generation(1), 0, TTL).await.expect("acquire"));
        store.pool.close().await;
    }
    // Reopening runs the migrations again (a no-op) and finds the issued generation.
    let store = SqliteStore::connect(&url).await.expect("reopen");
    let row = store.get_database(&p, &d).await.expect("get").expect("exists");
    assert_eq!((row.holder, row.last_generation), (Some(a), Generation(1)));
}

#[tokio::test]
async fn sqlite_store_syncs_every_commit() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let store = SqliteStore::connect(&format!("sqlite://{}", dir.path().join("c.db").display())).await.expect("open");
    // Every connection is set up alike; ask the pool's, which are not the writer's.
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&store.pool).await.expect("pragma");
    assert_eq!(journal, "wal");
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&store.pool).await.expect("pragma");
    assert_eq!(synchronous, 2, "FULL");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&store.pool).await.expect("pragma");
    assert_eq!(foreign_keys, 1);
}

#[tokio::test]
async fn sqlite_memory_store_works() {
    let store = SqliteStore::connect("sqlite::memory:").await.expect("open in memory");
    store.create_project(&project("p"), &[], 1).await.expect("create project");
    store.ensure_database(&project("p"), &db("d"), Policy::Wait, 1).await.expect("ensure");
    assert_eq!(store.list_projects().await.expect("list")[0].databases, 1);
}

#[tokio::test]
async fn postgres_schema_name_is_validated() {
    for bad in ["", "Upper", "a-b", "x;drop", "a\"b"] {
        let url = format!("{POSTGRES_URL}?sslmode=disable&schema={bad}");
        let refused = PostgresStore::connect(&url).await;
        assert!(matches!(refused, Err(StoreError::Backend(sqlx::Error::Configuration(_)))), "{bad:?} accepted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_controllers_starting_together_share_one_schema() {
    // A name starting with a digit, and a second query parameter that must survive the
    // schema's removal from the URL.
    let guard = SchemaGuard { schema: format!("0store_test_{:016x}", rand::random::<u64>()) };
    let schema_url = format!("{POSTGRES_URL}?sslmode=disable&schema={}", guard.schema);
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = schema_url.clone();
            tokio::spawn(async move { PostgresStore::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.expect("join").expect("connect while others migrate"));
    }
    stores[0].create_project(&project("p"), &[], 1).await.expect("create project");
    assert!(stores[3].project_exists(&project("p")).await.expect("exists"), "one schema for all");
    let migrations: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&stores[1].pool)
        .await
        .expect("migration history is in the schema");
    let shipped = sqlx::migrate!("migrations/postgres").iter().count() as i64;
    assert_eq!(migrations, shipped, "each migration applied once, in this schema");
    let elsewhere: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'projects' AND table_schema = $1",
    )
    .bind(&guard.schema)
    .fetch_one(&stores[2].pool)
    .await
    .expect("query catalog");
    assert_eq!(elsewhere, 1);
}
