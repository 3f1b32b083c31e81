//! The agent's lease flow against a scripted controller on a real socket, with a real SQLite
//! database and a file replica: register, acquire, renew, handoff, fence, release.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::model::Generation;
use proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use proto::v1::{acquire_response, renew_response};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::LeaseState;
use crate::config::{ControlConfig, DbConfig, ReplicateConfig, Secret};
use crate::health::Registry;
use crate::run::{start_databases, StartOptions, Started};

const TOKEN: &str = "wfagent_test_secret";

/// What the scripted controller does and what it saw.
#[derive(Default)]
struct State {
    ttl_ms: u64,
    policy: &'static str,
    next_generation: u64,
    holder: Option<(String, u64)>,
    head: Option<proto::v1::Position>,
    /// Answer renews with `Fenced`.
    fence: bool,
    /// Answer renews as if out of reach.
    unavailable: bool,
    /// Put a handoff to this instance on renew answers.
    handoff_to: Option<String>,
    subscribers: usize,
    registered: Vec<proto::v1::RegisterRequest>,
    acquires: Vec<proto::v1::AcquireRequest>,
    renews: Vec<proto::v1::RenewRequest>,
    releases: Vec<proto::v1::ReleaseRequest>,
}

#[derive(Clone)]
struct Fake {
    state: Arc<Mutex<State>>,
    commands: broadcast::Sender<proto::v1::Command>,
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check<T>(req: &Request<T>) -> Result<(), Status> {
        let want = format!("Bearer {TOKEN}");
        match req.metadata().get("authorization").and_then(|v| v.to_str().ok()) {
            Some(v) if v == want => Ok(()),
            _ => Err(Status::unauthenticated("unknown token")),
        }
    }
}

fn handoff_command(newcomer: &str) -> proto::v1::Command {
    proto::v1::Command {
        database: "app".into(),
        kind: Some(proto::v1::command::Kind::Handoff(proto::v1::Handoff {
            newcomer_instance_id: newcomer.into(),
            newcomer_host: "elsewhere".into(),
        })),
    }
}

#[tonic::async_trait]
impl AgentService for Fake {
    async fn register(
        &self,
        req: Request<proto::v1::RegisterRequest>,
    ) -> Result<Response<proto::v1::RegisterResponse>, Status> {
        Self::check(&req)?;
        let mut s = self.lock();
        s.registered.push(req.into_inner());
        Ok(Response::new(proto::v1::RegisterResponse { lease_ttl_ms: s.ttl_ms, renew_interval_ms: s.ttl_ms / 3 }))
    }

    async fn acquire(
        &self,
        req: Request<proto::v1::AcquireRequest>,
    ) -> Result<Response<proto::v1::AcquireResponse>, Status> {
        Self::check(&req)?;
        let req = req.into_inner();
        let mut s = self.lock();
        s.acquires.push(req.clone());
        let free = s.holder.as_ref().is_none_or(|(h, _)| *h == req.instance_id);
        let outcome = if free || s.policy == "alert" {
            let generation = s.next_generation.max(req.min_generation);
            s.next_generation = generation + 1;
            if free {
                s.holder = Some((req.instance_id.clone(), generation));
                acquire_response::Outcome::Granted(proto::v1::Granted {
                    generation,
                    lease_ttl_ms: s.ttl_ms,
                    renew_interval_ms: s.ttl_ms / 3,
                    head: s.head,
                    policy: s.policy.into(),
                })
            } else {
                acquire_response::Outcome::Forked(proto::v1::Forked {
                    generation,
                    holder_instance_id: s.holder.as_ref().map(|h| h.0.clone()).unwrap_or_default(),
                    renew_interval_ms: s.ttl_ms / 3,
                })
            }
        } else {
            acquire_response::Outcome::Pending(proto::v1::Pending {
                reason: s.policy.into(),
                holder_instance_id: s.holder.as_ref().map(|h| h.0.clone()).unwrap_or_default(),
                retry_after_ms: 100,
                policy: s.policy.into(),
            })
        };
        Ok(Response::new(proto::v1::AcquireResponse { outcome: Some(outcome) }))
    }

    async fn renew(&self, req: Request<proto::v1::RenewRequest>) -> Result<Response<proto::v1::RenewResponse>, Status> {
        Self::check(&req)?;
        let req = req.into_inner();
        let mut s = self.lock();
        if s.unavailable {
            return Err(Status::unavailable("controller down"));
        }
        s.renews.push(req.clone());
        let holds = s.holder.as_ref().is_some_and(|(h, g)| *h == req.instance_id && *g == req.generation);
        let outcome = if s.fence || !holds {
            renew_response::Outcome::Fenced(proto::v1::Fenced {
                current_generation: s.next_generation,
                holder_instance_id: "0000000000000bad".into(),
            })
        } else {
            renew_response::Outcome::Renewed(proto::v1::Renewed {
                lease_ttl_ms: s.ttl_ms,
                commands: s.handoff_to.iter().map(|n| handoff_command(n)).collect(),
            })
        };
        Ok(Response::new(proto::v1::RenewResponse { outcome: Some(outcome) }))
    }

    async fn release(
        &self,
        req: Request<proto::v1::ReleaseRequest>,
    ) -> Result<Response<proto::v1::ReleaseResponse>, Status> {
        Self::check(&req)?;
        let req = req.into_inner();
        let mut s = self.lock();
        s.releases.push(req.clone());
        let holds = s.holder.as_ref().is_some_and(|(h, g)| *h == req.instance_id && *g == req.generation);
        if holds {
            s.holder = None;
            if req.sealed.is_some() {
                s.head = req.sealed;
            }
        }
        Ok(Response::new(proto::v1::ReleaseResponse { released: holds }))
    }

    async fn validate(
        &self,
        _req: Request<proto::v1::ValidateRequest>,
    ) -> Result<Response<proto::v1::ValidateResponse>, Status> {
        Err(Status::unimplemented("not used by the agent"))
    }

    type CommandsStream = tokio_stream::wrappers::ReceiverStream<Result<proto::v1::Command, Status>>;

    async fn commands(
        &self,
        req: Request<proto::v1::CommandsRequest>,
    ) -> Result<Response<Self::CommandsStream>, Status> {
        Self::check(&req)?;
        let mut rx = self.commands.subscribe();
        self.lock().subscribers += 1;
        let (tx, out) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok(c) = rx.recv().await {
                if tx.send(Ok(c)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(out)))
    }
}

/// Serves the fake on a free port until the test's runtime ends; returns its URL.
async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

fn fake(policy: &'static str, next_generation: u64) -> Fake {
    let state = State { ttl_ms: 900, policy, next_generation, ..State::default() };
    Fake { state: Arc::new(Mutex::new(state)), commands: broadcast::channel(8).0 }
}

struct Env {
    _dir: tempfile::TempDir,
    db: PathBuf,
    replica: String,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let replica_dir = dir.path().join("replica");
    std::fs::create_dir_all(&replica_dir).expect("replica dir");
    let c = rusqlite::Connection::open(&db).expect("open db");
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())).expect("wal");
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);").expect("seed");
    Env { replica: format!("file://{}", replica_dir.display()), db, _dir: dir }
}

fn write(db: &Path, x: i64) {
    let c = rusqlite::Connection::open(db).expect("open db");
    c.execute("INSERT INTO t VALUES (?1)", [x]).expect("insert");
}

fn config(url: &str, token: &str, e: &Env, lease_wait: Duration) -> ReplicateConfig {
    ReplicateConfig {
        spool_budget: 1 << 30,
        databases: vec![DbConfig {
            name: "app".into(),
            path: e.db.clone(),
            replica_url: e.replica.clone(),
            database: Some("app".parse().expect("name")),
            encryption_key: None,
        }],
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        sync_interval: Duration::from_millis(100),
        snapshot_interval: Duration::ZERO,
        control: Some(ControlConfig {
            url: url.into(),
            token: Secret::new(token),
            project: "shop".parse().expect("project"),
            ca_pem: None,
            lease_wait,
            retention_interval: Duration::from_secs(3600),
        }),
    }
}

fn options(mode: super::Mode) -> StartOptions {
    StartOptions {
        stale_protection: true,
        shutdown_timeout: Duration::from_secs(5),
        mode,
        app_stop: None,
        release_timeout: Duration::from_secs(2),
        rollback: None,
    }
}

/// Polls `f` until it holds; fails after a generous deadline.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start(
    cfg: &ReplicateConfig,
    mode: super::Mode,
) -> (Arc<Registry>, CancellationToken, anyhow::Result<Started>) {
    let registry = Arc::new(Registry::default());
    let stop = CancellationToken::new();
    let started = start_databases(cfg, &registry, &stop, &options(mode)).await;
    (registry, stop, started)
}

async fn finish(stop: &CancellationToken, started: Started) -> Vec<anyhow::Result<()>> {
    stop.cancel();
    let mut out = Vec::new();
    for (_, t) in started.tasks {
        out.push(t.await.expect("join"));
    }
    if let Some(c) = started.commands {
        c.await.expect("join commands");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_database_writes_the_issued_generation_renews_and_releases_its_seal() {
    let f = fake("handoff", 7);
    let url = serve(f.clone()).await;
    let e = env();
    let (registry, stop, started) =
        start(&config(&url, TOKEN, &e, Duration::from_secs(10)), super::Mode::Replicate).await;
    let started = started.expect("start");
    let m = registry.dbs()[0].clone();
    assert_eq!(m.generation.load(Ordering::Relaxed), 7, "the controller's generation, not the next free one");
    assert_eq!(m.lease.state(), LeaseState::Held);
    assert!(registry.ready());
    assert!(m.may_declare_durable().is_ok());
    write(&e.db, 3);
    let durable = m.durable_txid.load(Ordering::Relaxed);
    until("a renew reporting new durable changes", || {
        f.lock().renews.last().and_then(|r| r.report.as_ref()).is_some_and(|r| r.durable_txid > durable)
    })
    .await;
    {
        let s = f.lock();
        let reg = &s.registered[0];
        let instance = reg.instance.as_ref().expect("instance");
        assert_eq!(reg.project, "shop");
        assert_eq!(instance.mode, "replicate");
        assert_eq!(s.acquires[0].instance_id, instance.instance_id);
        assert_eq!(s.acquires[0].min_generation, 1, "empty replica root");
        assert!(s.acquires[0].position.is_none(), "no notes before the first run");
        let r = s.renews.last().and_then(|r| r.report.clone()).expect("report");
        assert_eq!(r.state, "ok");
        assert!(r.durable_checksum != 0 && r.last_upload_unix_ms > 0 && r.uploads > 0, "{r:?}");
    }
    for r in finish(&stop, started).await {
        r.expect("clean shutdown");
    }
    let rel = {
        let s = f.lock();
        assert_eq!(s.releases.len(), 1);
        s.releases[0].clone()
    };
    let sealed = rel.sealed.expect("sealed position");
    assert_eq!((rel.generation, sealed.generation), (7, 7));
    assert_eq!(sealed.txid, m.durable_txid.load(Ordering::Relaxed));
    assert_eq!(m.lease.state(), LeaseState::Released);
    let store = crate::object_store::ObjectStore::from_url(&e.replica).await.expect("store");
    let manifest = crate::manifest::Manifest::load(&store, Generation(7)).await.expect("load").expect("manifest");
    assert_eq!(manifest.sealed.map(|p| p.txid.0), Some(sealed.txid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_sends_its_position_and_the_replica_floor() {
    let f = fake("handoff", 1);
    let url = serve(f.clone()).await;
    let e = env();
    let cfg = config(&url, TOKEN, &e, Duration::from_secs(10));
    let (_, stop, started) = start(&cfg, super::Mode::Replicate).await;
    finish(&stop, started.expect("first start")).await;
    let sealed = f.lock().releases[0].sealed.expect("sealed");
    // The second process finds its notes at the head: no restore, a new generation above it.
    let (registry, stop, started) = start(&cfg, super::Mode::Replicate).await;
    let started = started.expect("second start");
    {
        let s = f.lock();
        let a = &s.acquires[1];
        assert_eq!(a.position, Some(sealed));
        assert_eq!(a.min_generation, sealed.generation + 1);
        assert_ne!(a.instance_id, s.acquires[0].instance_id, "instance ids are never reused");
    }
    assert_eq!(registry.dbs()[0].generation.load(Ordering::Relaxed), 2);
    assert!(!stale_files(&e.db), "a database at the head is not moved aside");
    finish(&stop, started).await;
}

fn stale_files(db: &Path) -> bool {
    let name = db.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    std::fs::read_dir(db.parent().expect("dir"))
        .expect("read dir")
        .filter_map(|d| d.ok())
        .any(|d| d.file_name().to_string_lossy().starts_with(&format!("{name}.stale-")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_off_the_head_is_moved_aside_and_restored() {
    let f = fake("handoff", 1);
    let url = serve(f.clone()).await;
    let e = env();
    let cfg = config(&url, TOKEN, &e, Duration::from_secs(10));
    let (_, stop, started) = start(&cfg, super::Mode::Replicate).await;
    finish(&stop, started.expect("first start")).await;
    // The controller knows a newer head than these notes (another instance wrote since).
    let head = f.lock().releases[0].sealed.expect("sealed");
    f.lock().head = Some(proto::v1::Position { generation: head.generation + 5, txid: head.txid + 3 });
    // A sidecar refuses (the app beside it may have the file open) and moves nothing.
    let (_, _, refused) = start(&cfg, super::Mode::Replicate).await;
    let msg = format!("{:#}", refused.err().expect("a sidecar refuses a database off the head"));
    assert!(msg.contains("not at the controller's head") && msg.contains("does not move"), "{msg}");
    assert!(!stale_files(&e.db), "a sidecar moved the database aside");
    // Run mode (its app not started yet) moves it aside and restores.
    let (registry, stop, started) = start(&cfg, super::Mode::Run).await;
    let started = started.expect("second start");
    assert!(stale_files(&e.db), "moved aside");
    assert!(e.db.exists(), "restored");
    assert_eq!(registry.dbs()[0].lease.state(), LeaseState::Held);
    finish(&stop, started).await;

    // Without stale protection the agent refuses instead, and gives the lease back.
    f.lock().head = Some(proto::v1::Position { generation: head.generation + 9, txid: head.txid + 9 });
    let mut strict = options(super::Mode::Replicate);
    strict.stale_protection = false;
    let registry = Arc::new(Registry::default());
    let err = start_databases(&cfg, &registry, &CancellationToken::new(), &strict).await.err().expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("not at the controller's head") && msg.contains("--no-stale-protection"), "{msg}");
    assert!(f.lock().releases.last().is_some_and(|r| r.sealed.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_handed_over_by_stream_seals_releases_and_names_the_newcomer() {
    let f = fake("handoff", 1);
    let url = serve(f.clone()).await;
    let e = env();
    let (_registry, _stop, started) =
        start(&config(&url, TOKEN, &e, Duration::from_secs(10)), super::Mode::Replicate).await;
    let started = started.expect("start");
    until("the command stream", || f.lock().subscribers > 0).await;
    f.commands.send(handoff_command("0123456789abcdef")).expect("send");
    // Delivered again on a renew: acted on once.
    f.lock().handoff_to = Some("0123456789abcdef".into());
    let (_, task) = started.tasks.into_iter().next().expect("task");
    let err = task.await.expect("join").expect_err("a sidecar exits after a handoff");
    assert_eq!(err.to_string(), "lease for shop/app was handed over to instance 0123456789abcdef: stopped replicating");
    let s = f.lock();
    assert_eq!(s.releases.len(), 1);
    assert!(s.releases[0].sealed.is_some_and(|p| p.txid > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_mode_stops_the_app_on_a_handoff_and_exits_with_its_code() {
    let f = fake("handoff", 1);
    let url = serve(f.clone()).await;
    let e = env();
    let marker = e.db.with_extension("app-started");
    let script = format!("touch '{}'; trap 'exit 7' TERM; while true; do sleep 0.05; done", marker.display());
    let cfg = crate::run::RunConfig {
        replicate: config(&url, TOKEN, &e, Duration::from_secs(10)),
        app: vec!["sh".into(), "-c".into(), script],
        grace: Duration::from_secs(9),
        stale_protection: true,
    };
    let run = tokio::spawn(crate::run::run(cfg, CancellationToken::new()));
    until("the app", || marker.exists()).await;
    // This time on the renew answer.
    f.lock().handoff_to = Some("0123456789abcdef".into());
    let code = run.await.expect("join").expect("run");
    assert_eq!(code, 7, "the app's own exit code");
    let s = f.lock();
    assert_eq!(s.registered[0].instance.as_ref().map(|i| i.mode.as_str()), Some("run"));
    assert_eq!(s.releases.len(), 1);
    assert!(s.releases[0].sealed.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_holder_keeps_replicating_but_declares_nothing_durable() {
    let f = fake("handoff", 1);
    let url = serve(f.clone()).await;
    let e = env();
    let (registry, stop, started) =
        start(&config(&url, TOKEN, &e, Duration::from_secs(10)), super::Mode::Replicate).await;
    let started = started.expect("start");
    let m = registry.dbs()[0].clone();
    f.lock().fence = true;
    until("the fence", || m.lease.state() == LeaseState::Fenced).await;
    let why = m.may_declare_durable().expect_err("fenced");
    assert!(why.contains("fenced"), "{why}");
    let before = m.durable_txid.load(Ordering::Relaxed);
    write(&e.db, 9);
    until("uploads into its own generation", || m.durable_txid.load(Ordering::Relaxed) > before).await;
    assert_eq!(m.generation.load(Ordering::Relaxed), 1);
    until("a report saying fenced", || {
        f.lock().renews.last().and_then(|r| r.report.as_ref()).is_some_and(|r| r.state == "fenced")
    })
    .await;
    let metrics = registry.render();
    assert!(metrics.contains("walfleet_lease_state{db=\"app\",state=\"fenced\"} 1"), "{metrics}");
    assert!(metrics.contains("walfleet_lease_held{db=\"app\"} 0"), "{metrics}");
    for r in finish(&stop, started).await {
        r.expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_renew_unconfirms_the_lease_until_the_next_one_succeeds() {
    let f = fake("handoff", 1);
    let url = serve(f.clone()).await;
    let e = env();
    let (registry, stop, started) =
        start(&config(&url, TOKEN, &e, Duration::from_secs(10)), super::Mode::Replicate).await;
    let started = started.expect("start");
    let m = registry.dbs()[0].clone();
    assert!(m.may_declare_durable().is_ok());
    f.lock().unavailable = true;
    until("the confirmation to run out", || m.lease.state() == LeaseState::Unconfirmed).await;
    assert!(m.may_declare_durable().expect_err("unconfirmed").contains("unconfirmed"));
    assert!(registry.ready(), "an unconfirmed lease does not take the app out of service");
    let before = m.durable_txid.load(Ordering::Relaxed);
    write(&e.db, 5);
    until("replication to go on meanwhile", || m.durable_txid.load(Ordering::Relaxed) > before).await;
    assert!(registry.controller_errors.load(Ordering::Relaxed) > 0);
    f.lock().unavailable = false;
    until("the next renew to confirm it again", || m.lease.state() == LeaseState::Held).await;
    assert!(m.may_declare_durable().is_ok());
    for r in finish(&stop, started).await {
        r.expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_under_wait_fails_naming_the_holder() {
    let f = fake("wait", 4);
    f.lock().holder = Some(("00000000000000aa".into(), 3));
    let url = serve(f.clone()).await;
    let e = env();
    let (registry, _stop, started) =
        start(&config(&url, TOKEN, &e, Duration::from_millis(700)), super::Mode::Run).await;
    let err = started.err().expect("no lease");
    assert_eq!(err.to_string(), "lease for shop/app is held by instance 00000000000000aa (policy wait); waited 700ms");
    assert_eq!(registry.dbs()[0].lease.state(), LeaseState::Pending);
    assert!(!registry.ready());
    assert!(e.db.exists() && !stale_files(&e.db), "nothing touched before the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_fork_runs_without_the_lease() {
    let f = fake("alert", 4);
    f.lock().holder = Some(("00000000000000aa".into(), 3));
    let url = serve(f.clone()).await;
    let e = env();
    let (registry, stop, started) =
        start(&config(&url, TOKEN, &e, Duration::from_secs(10)), super::Mode::Replicate).await;
    let started = started.expect("start");
    let m = registry.dbs()[0].clone();
    assert_eq!(m.lease.state(), LeaseState::Forked);
    assert_eq!(m.generation.load(Ordering::Relaxed), 4);
    assert!(registry.ready(), "a fork is ready");
    assert!(m.may_declare_durable().expect_err("forked").contains("forked"));
    // It renews as its report and shrugs off the fence it is answered with.
    let n = f.lock().renews.len();
    until("two more renews", || f.lock().renews.len() >= n + 2).await;
    assert_eq!(m.lease.state(), LeaseState::Forked);
    finish(&stop, started).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_fails_at_once_with_the_controllers_reason() {
    let f = fake("handoff", 1);
    let url = serve(f.clone()).await;
    let e = env();
    // A retry would run into the lease wait and say "unreachable" instead.
    let (_, _, started) = start(&config(&url, "wrong", &e, Duration::from_secs(600)), super::Mode::Replicate).await;
    let msg = format!("{:#}", started.err().expect("refused"));
    assert!(msg.contains("refused register") && msg.contains("unknown token"), "{msg}");
    assert!(!msg.contains("wrong"), "the token is never shown: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_controller_fails_after_the_lease_wait_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("http://127.0.0.1:{port}");
    let e = env();
    let registry = Arc::new(Registry::default());
    let started = start_databases(
        &config(&url, TOKEN, &e, Duration::from_millis(600)),
        &registry,
        &CancellationToken::new(),
        &options(super::Mode::Replicate),
    )
    .await;
    let msg = format!("{:#}", started.err().expect("unreachable"));
    assert!(msg.contains(&url) && msg.contains("unreachable"), "{msg}");
    assert!(registry.controller_errors.load(Ordering::Relaxed) > 0);
}
