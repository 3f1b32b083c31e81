//! The agent's local HTTP endpoint: `/healthz`, `/readyz`, Prometheus `/metrics` and
//! `/durable`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::control::{LeaseState, LeaseStatus};
use crate::object_store::RequestCounts;

/// Live figures of one replicated database.
#[derive(Debug, Default)]
pub struct DbMetrics {
    pub name: String,
    pub generation: AtomicU64,
    pub local_txid: AtomicU64,
    pub durable_txid: AtomicU64,
    /// Database checksum at `durable_txid` (0: unknown).
    pub durable_checksum: AtomicU64,
    /// (durable TXID, checksum at it) set together, so a report never pairs one TXID with
    /// another's checksum (a drill compares them).
    pub durable_pair: Mutex<(u64, u64)>,
    /// Wall-clock ms of the last successful upload (0: none yet).
    pub last_upload_ms: AtomicI64,
    /// Wall-clock ms of the oldest captured transaction not yet durable (0: none).
    pub oldest_pending_ms: AtomicI64,
    pub pending_bytes: AtomicU64,
    pub uploads: AtomicU64,
    pub upload_errors: AtomicU64,
    pub snapshots: AtomicU64,
    pub checkpoints: AtomicU64,
    pub upload_blocked: AtomicBool,
    /// Failed captures and checkpoints (each is tried again).
    pub capture_errors: AtomicU64,
    /// True from a failed capture or checkpoint until one succeeds.
    pub capture_failing: AtomicBool,
    /// True once the replication of this database ended with an error: nothing more is shipped.
    pub stopped: AtomicBool,
    pub ready: AtomicBool,
    /// Wall-clock ms at which the newest completed capture started: every commit before it
    /// is in `local_txid`.
    pub captured_at_ms: AtomicI64,
    /// Wakes the replication loop (a capture without waiting for the WAL watcher).
    pub wake: Mutex<Option<tokio::sync::mpsc::Sender<()>>>,
    /// Where the database stands with the controller (`Standalone` without one).
    pub lease: LeaseStatus,
}

impl DbMetrics {
    pub fn new(name: &str) -> Arc<DbMetrics> {
        Arc::new(DbMetrics { name: name.to_string(), ..Default::default() })
    }

    /// Records the durable position and the database checksum at it.
    pub fn set_durable(&self, txid: u64, checksum: u64) {
        let mut pair = self.durable_pair.lock().unwrap_or_else(|e| e.into_inner());
        *pair = (txid, checksum);
        self.durable_checksum.store(checksum, Ordering::Relaxed);
        self.durable_txid.store(txid, Ordering::Relaxed);
    }

    /// The durable TXID and the checksum at it, read together.
    pub fn durable(&self) -> (u64, u64) {
        *self.durable_pair.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until everything committed before this call (or `txid`, when given) is durable.
    /// Rides the normal upload cadence: it only asks for a capture, never for an extra upload.
    pub async fn wait_durable(&self, txid: Option<u64>, timeout: std::time::Duration) -> Result<u64, u64> {
        // Far past any cap the handler sets; checked so that no duration can overflow it.
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or_else(|| now + MAX_DURABLE_TIMEOUT);
        let asked = chrono::Utc::now().timestamp_millis();
        let mut target = txid;
        loop {
            let durable = self.durable_txid.load(Ordering::Relaxed);
            if target.is_none() && self.captured_at_ms.load(Ordering::Relaxed) > asked {
                target = Some(self.local_txid.load(Ordering::Relaxed));
            }
            if let Some(t) = target {
                if durable >= t {
                    return Ok(durable);
                }
            } else if let Some(tx) = self.wake.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                let _ = tx.try_send(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(durable);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Whether start-up is done as far as the controller goes: standalone, or the lease was
    /// granted (a renew failing for a while does not make the app unready), or forked.
    pub fn lease_ready(&self) -> bool {
        matches!(
            self.lease.state(),
            LeaseState::Standalone | LeaseState::Held | LeaseState::Unconfirmed | LeaseState::Forked
        )
    }

    /// Fencing rule 4: with a controller, a TXID is declared durable to the app only while
    /// the lease is confirmed. `Err` says why not.
    pub fn may_declare_durable(&self) -> Result<(), String> {
        match self.lease.state() {
            LeaseState::Standalone => Ok(()),
            _ if self.lease.is_confirmed(tokio::time::Instant::now()) => Ok(()),
            LeaseState::Held | LeaseState::Unconfirmed => {
                Err("lease unconfirmed: the controller has not confirmed this instance's lease in time".into())
            }
            LeaseState::Fenced => Err("lease fenced: the controller gave the lease to another instance".into()),
            LeaseState::Forked => Err("lease forked: this instance writes a fork without the lease".into()),
            LeaseState::Pending => Err("lease pending: not acquired yet".into()),
            LeaseState::Released => Err("lease released".into()),
        }
    }

    /// False while captures fail or once replication stopped: commits are not being shipped.
    pub fn replicating(&self) -> bool {
        !self.capture_failing.load(Ordering::Relaxed) && !self.stopped.load(Ordering::Relaxed)
    }

    pub fn lag_seconds(&self) -> f64 {
        match self.oldest_pending_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            t => ((chrono::Utc::now().timestamp_millis() - t).max(0) as f64) / 1000.0,
        }
    }
}

#[derive(Default)]
pub struct Registry {
    dbs: Mutex<Vec<Arc<DbMetrics>>>,
    stores: Mutex<Vec<RequestCounts>>,
    /// Set once every database finished its start-up (restore, lease).
    pub started: AtomicBool,
    /// Failed calls to the controller (every kind).
    pub controller_errors: Arc<AtomicU64>,
}

impl Registry {
    pub fn add_db(&self, m: Arc<DbMetrics>) {
        self.dbs.lock().unwrap_or_else(|e| e.into_inner()).push(m);
    }

    /// Forgets the databases and stores before a restart of all of them (a live rollback).
    pub fn clear_databases(&self) {
        self.started.store(false, Ordering::Relaxed);
        self.dbs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.stores.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn add_store(&self, c: RequestCounts) {
        self.stores.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }

    pub fn dbs(&self) -> Vec<Arc<DbMetrics>> {
        self.dbs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn ready(&self) -> bool {
        self.started.load(Ordering::Relaxed)
            && self.dbs().iter().all(|d| d.ready.load(Ordering::Relaxed) && d.lease_ready() && d.replicating())
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let dbs = self.dbs();
        let gauge = |s: &mut String, name: &str, help: &str, kind: &str, f: &dyn Fn(&DbMetrics) -> f64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for d in &dbs {
                let _ = writeln!(s, "{name}{{db=\"{}\"}} {}", escape(&d.name), f(d));
            }
        };
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        gauge(&mut s, "walfleet_generation", "Generation this agent writes.", "gauge", &|d| ld(&d.generation));
        gauge(&mut s, "walfleet_local_txid", "Newest transaction captured from the WAL.", "gauge", &|d| {
            ld(&d.local_txid)
        });
        gauge(&mut s, "walfleet_durable_txid", "Newest transaction durable in object storage.", "gauge", &|d| {
            ld(&d.durable_txid)
        });
        gauge(&mut s, "walfleet_lag_seconds", "Age of the oldest change not yet durable.", "gauge", &|d| {
            d.lag_seconds()
        });
        gauge(&mut s, "walfleet_lag_bytes", "Bytes of committed changes not yet durable.", "gauge", &|d| {
            ld(&d.pending_bytes)
        });
        gauge(&mut s, "walfleet_uploads_total", "LTX files uploaded.", "counter", &|d| ld(&d.uploads));
        gauge(&mut s, "walfleet_upload_errors_total", "Failed upload attempts.", "counter", &|d| ld(&d.upload_errors));
        gauge(&mut s, "walfleet_snapshots_total", "Whole-database transactions written.", "counter", &|d| {
            ld(&d.snapshots)
        });
        gauge(
            &mut s,
            "walfleet_checkpoints_total",
            "Checkpoints run by the agent.",
            "counter",
            &|d| ld(&d.checkpoints),
        );
        gauge(&mut s, "walfleet_capture_errors_total", "Failed captures and checkpoints.", "counter", &|d| {
            ld(&d.capture_errors)
        });
        gauge(&mut s, "walfleet_capture_failing", "1 while captures from the WAL fail.", "gauge", &|d| {
            f64::from(u8::from(d.capture_failing.load(Ordering::Relaxed)))
        });
        gauge(&mut s, "walfleet_replication_stopped", "1 once replication ended with an error.", "gauge", &|d| {
            f64::from(u8::from(d.stopped.load(Ordering::Relaxed)))
        });
        gauge(&mut s, "walfleet_upload_blocked", "1 while object storage refuses uploads.", "gauge", &|d| {
            f64::from(u8::from(d.upload_blocked.load(Ordering::Relaxed)))
        });
        let now = tokio::time::Instant::now();
        gauge(&mut s, "walfleet_lease_held", "1 while the controller confirms this instance's lease.", "gauge", &|d| {
            f64::from(u8::from(d.lease.is_confirmed(now)))
        });
        gauge(
            &mut s,
            "walfleet_lease_confirmed_until_seconds",
            "Unix time until which the lease is confirmed (0: not confirmed).",
            "gauge",
            &|d| d.lease.confirmed_until_unix_ms() as f64 / 1000.0,
        );
        let _ = writeln!(
            s,
            "# HELP walfleet_lease_state Where each database stands with the controller (1 for the current state).\n# TYPE walfleet_lease_state gauge"
        );
        for d in &dbs {
            let current = d.lease.state();
            for st in LeaseState::ALL {
                let v = u8::from(st == current);
                let _ = writeln!(s, "walfleet_lease_state{{db=\"{}\",state=\"{}\"}} {v}", escape(&d.name), st.as_str());
            }
        }
        let _ = writeln!(
            s,
            "# HELP walfleet_controller_errors_total Failed calls to the controller.\n# TYPE walfleet_controller_errors_total counter\nwalfleet_controller_errors_total {}",
            self.controller_errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP walfleet_object_store_requests_total Requests sent to object storage.\n# TYPE walfleet_object_store_requests_total counter"
        );
        let stores = self.stores.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for kind in crate::object_store::RequestKind::ALL {
            let n: u64 = stores.iter().map(|c| c.get(kind)).sum();
            let _ = writeln!(s, "walfleet_object_store_requests_total{{kind=\"{}\"}} {n}", kind.as_str());
        }
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[derive(serde::Deserialize)]
struct WaitQuery {
    db: Option<String>,
    txid: Option<u64>,
    timeout: Option<String>,
}

/// The longest `/durable?timeout=` accepted; a longer one is a 400.
pub const MAX_DURABLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Parses `/durable`'s `timeout` (default 10 s, at most [`MAX_DURABLE_TIMEOUT`]).
fn durable_timeout(v: Option<&str>) -> Result<std::time::Duration, String> {
    let Some(v) = v else { return Ok(std::time::Duration::from_secs(10)) };
    let d = humantime::parse_duration(v).map_err(|e| format!("timeout {v:?} is not a duration (say 10s): {e}"))?;
    if d > MAX_DURABLE_TIMEOUT {
        return Err(format!("timeout {v:?} is over the maximum of 1h"));
    }
    Ok(d)
}

/// `GET /durable[?db=NAME][&txid=N][&timeout=10s]`: 200 with the durable TXID once the
/// app's latest commit (or TXID N) is in object storage; 504 on timeout (at most 1 h; a bad
/// or longer timeout is a 400); 503 when a controller is configured and the lease is not
/// confirmed.
async fn wait_durable(
    State(r): State<Arc<Registry>>,
    axum::extract::Query(q): axum::extract::Query<WaitQuery>,
) -> (StatusCode, String) {
    let dbs = r.dbs();
    let db = match (&q.db, dbs.len()) {
        (Some(name), _) => dbs.iter().find(|d| &d.name == name).cloned(),
        (None, 1) => dbs.first().cloned(),
        (None, _) => return (StatusCode::BAD_REQUEST, "several databases: name one with ?db=\n".into()),
    };
    let Some(db) = db else { return (StatusCode::NOT_FOUND, "no such database\n".into()) };
    let timeout = match durable_timeout(q.timeout.as_deref()) {
        Ok(d) => d,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    match db.wait_durable(q.txid, timeout).await {
        // Checked when the answer is given: that is the moment durability is declared.
        Ok(t) => match db.may_declare_durable() {
            Ok(()) => (StatusCode::OK, format!("{t}\n")),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}; durable txid is {t} but is not declared\n")),
        },
        Err(t) => (StatusCode::GATEWAY_TIMEOUT, format!("not durable yet; durable txid is {t}\n")),
    }
}

pub async fn serve(addr: SocketAddr, registry: Arc<Registry>, cancel: CancellationToken) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(r): State<Arc<Registry>>| async move {
                if r.ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .route("/metrics", get(|State(r): State<Arc<Registry>>| async move { r.render() }))
        .route("/durable", get(wait_durable))
        .with_state(registry);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind http {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving health and metrics");
    axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await?;
    Ok(())
}
