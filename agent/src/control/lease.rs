//! A lease as the agent sees it: its state, the deadline until which it may claim it (fencing
//! rule 5), and the keeper task that renews it and reports.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::model::{Generation, InstanceId, Policy, Position, Txid};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::client::{Control, RenewOutcome};
use crate::health::DbMetrics;

/// Where a database stands with the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// No controller is configured.
    Standalone,
    /// Waiting for the controller or for another instance to let go.
    Pending,
    /// The lease is this instance's and the last renew confirmed it.
    Held,
    /// The lease was granted but no renew succeeded before the confirmation ran out.
    Unconfirmed,
    /// The controller gave the lease to another instance; this one writes only its own
    /// generation.
    Fenced,
    /// Running beside the holder in a generation of its own (alert policy).
    Forked,
    /// Released at shutdown.
    Released,
}

impl LeaseState {
    pub const ALL: [LeaseState; 7] = [
        LeaseState::Standalone,
        LeaseState::Pending,
        LeaseState::Held,
        LeaseState::Unconfirmed,
        LeaseState::Fenced,
        LeaseState::Forked,
        LeaseState::Released,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Standalone => "standalone",
            LeaseState::Pending => "pending",
            LeaseState::Held => "held",
            LeaseState::Unconfirmed => "unconfirmed",
            LeaseState::Fenced => "fenced",
            LeaseState::Forked => "forked",
            LeaseState::Released => "released",
        }
    }

    fn from_u8(v: u8) -> LeaseState {
        Self::ALL.get(usize::from(v)).copied().unwrap_or(LeaseState::Standalone)
    }

    fn to_u8(self) -> u8 {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0) as u8
    }
}

/// The lease figures of one database, shared between the keeper and the HTTP endpoint.
#[derive(Debug, Default)]
pub struct LeaseStatus {
    state: AtomicU8,
    /// Monotonic: the check that matters (`/durable`) must not move with the wall clock.
    confirmed_until: Mutex<Option<Instant>>,
    /// The same deadline on the wall clock, for metrics.
    confirmed_until_unix_ms: AtomicI64,
}

impl LeaseStatus {
    pub fn state(&self) -> LeaseState {
        LeaseState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Sets the state; returns the previous one.
    pub fn set_state(&self, s: LeaseState) -> LeaseState {
        let before = LeaseState::from_u8(self.state.swap(s.to_u8(), Ordering::Relaxed));
        if !matches!(s, LeaseState::Held | LeaseState::Unconfirmed) {
            self.set_deadline(None);
        }
        before
    }

    fn set_deadline(&self, until: Option<Instant>) {
        *self.confirmed_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
        let unix = until.map_or(0, |u| {
            let left = u.saturating_duration_since(Instant::now());
            chrono::Utc::now().timestamp_millis() + left.as_millis() as i64
        });
        self.confirmed_until_unix_ms.store(unix, Ordering::Relaxed);
    }

    /// The controller confirmed the lease until `until` (already reduced by the margin).
    pub fn confirm(&self, until: Instant) {
        self.set_deadline(Some(until));
        self.state.store(LeaseState::Held.to_u8(), Ordering::Relaxed);
    }

    /// Whether the lease may be claimed at `now`: held, and inside the confirmed window.
    pub fn is_confirmed(&self, now: Instant) -> bool {
        matches!(self.state(), LeaseState::Held | LeaseState::Unconfirmed)
            && self.confirmed_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|u| now < u)
    }

    pub fn confirmed_until(&self) -> Option<Instant> {
        *self.confirmed_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wall-clock ms of the confirmation deadline (0: none).
    pub fn confirmed_until_unix_ms(&self) -> i64 {
        self.confirmed_until_unix_ms.load(Ordering::Relaxed)
    }
}

/// How much earlier than the controller's expiry the agent stops claiming the lease: covers
/// clock rate differences and the request's way to the controller.
pub fn margin(ttl: Duration) -> Duration {
    ttl / 6
}

/// Fencing rule 5: a lease renewed by a request sent at `sent` is confirmed until
/// `sent + ttl - margin`. Measured from the send, not the answer: the controller started its
/// TTL somewhere in between, so this ends before the controller's expiry whatever the delay.
pub fn confirmed_until(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl.saturating_sub(margin(ttl))
}

/// Whether a local database whose notes say `local` may continue from the controller's
/// `head` without a restore: exactly there, or further along the same generation (the
/// controller learns durable positions from reports, which trail the uploads).
pub fn at_head(local: Option<Position>, head: Position) -> bool {
    match local {
        Some(l) => l.generation == head.generation && l.txid >= head.txid,
        None => false,
    }
}

/// What the controller granted.
#[derive(Clone, Debug)]
pub enum LeaseKind {
    /// The lease, confirmed until `confirmed_until`.
    Held { ttl: Duration, confirmed_until: Instant, policy: Option<Policy> },
    /// A generation of its own without the lease (alert policy): `holder` has the lease.
    Forked { holder: String },
}

#[derive(Clone, Debug)]
pub struct Lease {
    pub generation: Generation,
    /// The newest position the controller knows on the lineage.
    pub head: Option<Position>,
    pub renew_interval: Duration,
    pub kind: LeaseKind,
}

/// Builds the report a renew or release carries from the database's live figures.
pub fn report(m: &DbMetrics) -> proto::v1::Report {
    let blocked = m.upload_blocked.load(Ordering::Relaxed);
    let lag = m.lag_seconds();
    let state = match m.lease.state() {
        LeaseState::Fenced => "fenced",
        LeaseState::Unconfirmed => "unconfirmed",
        _ if m.stopped.load(Ordering::Relaxed) => "replication_stopped",
        _ if m.capture_failing.load(Ordering::Relaxed) => "capture_failing",
        _ if blocked => "upload_blocked",
        _ if lag > LAGGING_AFTER.as_secs_f64() => "lagging",
        _ => "ok",
    };
    let (durable_txid, durable_checksum) = m.durable();
    proto::v1::Report {
        local_txid: m.local_txid.load(Ordering::Relaxed),
        durable_txid,
        lag_seconds: lag,
        lag_bytes: m.pending_bytes.load(Ordering::Relaxed),
        last_upload_unix_ms: m.last_upload_ms.load(Ordering::Relaxed),
        uploads: m.uploads.load(Ordering::Relaxed),
        upload_errors: m.upload_errors.load(Ordering::Relaxed),
        upload_blocked: blocked,
        state: state.to_string(),
        durable_checksum,
    }
}

/// Changes older than this make the report say "lagging".
const LAGGING_AFTER: Duration = Duration::from_secs(10);

/// How soon a failed renew is tried again.
const RETRY_RENEW: Duration = Duration::from_secs(1);

/// Renews one database's lease every renew interval (each renew is also its report) and keeps
/// its `LeaseStatus` true. Stopped by its owner after the final flush, before the release.
pub struct LeaseKeeper {
    pub control: Arc<Control>,
    pub database: proto::model::DatabaseName,
    pub lease: Lease,
    pub metrics: Arc<DbMetrics>,
}

impl LeaseKeeper {
    pub async fn run(self, cancel: CancellationToken) {
        let forked = matches!(self.lease.kind, LeaseKind::Forked { .. });
        let mut ttl = match &self.lease.kind {
            LeaseKind::Held { ttl, .. } => *ttl,
            LeaseKind::Forked { .. } => Duration::ZERO,
        };
        let every = self.lease.renew_interval;
        let mut next = Instant::now() + every;
        let mut failing = false;
        // The last renew error logged: a new kind of failure is logged once more.
        let mut last_error: Option<(tonic::Code, String)> = None;
        loop {
            // Wake for the next renew, or when the confirmation runs out, whichever is first.
            let wake = match self.metrics.lease.confirmed_until() {
                Some(u) if self.metrics.lease.state() == LeaseState::Held => next.min(u),
                _ => next,
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = Instant::now();
            if now >= next {
                let sent = Instant::now();
                let report = report(&self.metrics);
                let before = self.metrics.lease.state();
                let answer = self.control.renew(&self.database, self.lease.generation, report, every).await;
                match &answer {
                    // A forked instance renews only to report; it is never the holder, and the
                    // fence it is answered with is expected.
                    Ok(_) if forked => {}
                    Ok(RenewOutcome::Renewed { ttl: granted, commands }) => {
                        if let Some(t) = granted {
                            ttl = *t;
                        }
                        // A fence is final for this generation; a late answer cannot undo it.
                        if before != LeaseState::Fenced {
                            self.metrics.lease.confirm(confirmed_until(sent, ttl));
                            if before == LeaseState::Unconfirmed {
                                info!(db = %self.database, generation = self.lease.generation.0, "lease confirmed again");
                            }
                        }
                        for c in commands {
                            self.control.handoffs.deliver(c.clone());
                        }
                    }
                    Ok(RenewOutcome::Fenced { current, holder }) => {
                        if self.metrics.lease.set_state(LeaseState::Fenced) != LeaseState::Fenced {
                            let holder = holder.as_ref().map_or_else(|| "none".to_string(), InstanceId::to_string);
                            error!(db = %self.database, generation = self.lease.generation.0,
                                current_generation = current.0, %holder,
                                "lease fenced: the controller gave it to another instance; replicating into this \
                                 instance's own generation only");
                        }
                    }
                    Err(status) => {
                        let this = (status.code(), status.message().to_string());
                        if last_error.as_ref() != Some(&this) {
                            warn!(db = %self.database, controller = %self.control.url(), code = ?status.code(),
                                error = %status.message(), "lease renew failed; retrying every second");
                            last_error = Some(this);
                        }
                    }
                }
                if answer.is_ok() {
                    if failing && before != LeaseState::Unconfirmed {
                        info!(db = %self.database, generation = self.lease.generation.0, "lease renew answered again");
                    }
                    failing = false;
                    last_error = None;
                    next = sent + every;
                } else {
                    failing = true;
                    next = Instant::now() + RETRY_RENEW.min(every);
                }
            }
            let now = Instant::now();
            let lapsed = self.metrics.lease.confirmed_until().is_none_or(|u| now >= u);
            if self.metrics.lease.state() == LeaseState::Held && lapsed {
                self.metrics.lease.set_state(LeaseState::Unconfirmed);
                warn!(db = %self.database, generation = self.lease.generation.0,
                    "lease unconfirmed: no renew succeeded in time; not declaring anything durable until one does");
            }
        }
    }
}

/// The position the local notes give for `db` on `replica`, if the database file exists.
pub fn local_position(db: &std::path::Path, replica: &str) -> Option<Position> {
    if !db.exists() {
        return None;
    }
    let st = crate::replicate::state::load(db).filter(|s| s.replica == replica)?;
    Some(Position { generation: st.generation, txid: st.txid })
}

/// A position from the wire: generation 0 means none.
pub fn position_from_wire(p: Option<proto::v1::Position>) -> Option<Position> {
    p.filter(|p| p.generation > 0).map(|p| Position { generation: Generation(p.generation), txid: Txid(p.txid) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(g: u64, t: u64) -> Position {
        Position { generation: Generation(g), txid: Txid(t) }
    }

    #[test]
    fn confirmation_ends_before_the_controller_expiry() {
        let sent = Instant::now();
        let ttl = Duration::from_secs(30);
        let until = confirmed_until(sent, ttl);
        assert_eq!(until - sent, Duration::from_secs(25));
        // Whatever the answer's delay, the controller's expiry (its receive + ttl) is later.
        assert!(until < sent + ttl);
        // Renewing at ttl/3 leaves two more renew attempts inside the window.
        assert!(until - sent > 2 * (ttl / 3));
        assert_eq!(confirmed_until(sent, Duration::from_millis(600)) - sent, Duration::from_millis(500));
        assert_eq!(confirmed_until(sent, Duration::ZERO), sent);
    }

    #[test]
    fn status_confirms_only_inside_the_window() {
        let s = LeaseStatus::default();
        let now = Instant::now();
        assert_eq!(s.state(), LeaseState::Standalone);
        assert!(!s.is_confirmed(now));
        s.confirm(now + Duration::from_secs(5));
        assert_eq!(s.state(), LeaseState::Held);
        assert!(s.is_confirmed(now));
        assert!(!s.is_confirmed(now + Duration::from_secs(5)));
        assert!(s.confirmed_until_unix_ms() > chrono::Utc::now().timestamp_millis());
        assert_eq!(s.set_state(LeaseState::Fenced), LeaseState::Held);
        assert!(!s.is_confirmed(now));
        assert_eq!(s.confirmed_until_unix_ms(), 0);
        for st in LeaseState::ALL {
            assert_eq!(LeaseState::from_u8(st.to_u8()), st);
        }
    }

    #[test]
    fn local_database_must_be_at_the_head_to_skip_the_restore() {
        let head = pos(5, 100);
        assert!(at_head(Some(pos(5, 100)), head));
        // Reports trail uploads: further along the head's own generation is the same lineage.
        assert!(at_head(Some(pos(5, 120)), head));
        assert!(!at_head(Some(pos(5, 99)), head), "behind the head");
        assert!(!at_head(Some(pos(4, 100)), head), "an older generation");
        assert!(!at_head(Some(pos(6, 100)), head), "a generation the controller does not know as head");
        assert!(!at_head(None, head), "no notes: nothing proves where it is");
    }

    #[test]
    fn wire_positions_treat_generation_zero_as_none() {
        assert_eq!(position_from_wire(None), None);
        assert_eq!(position_from_wire(Some(proto::v1::Position { generation: 0, txid: 9 })), None);
        assert_eq!(position_from_wire(Some(proto::v1::Position { generation: 2, txid: 9 })), Some(pos(2, 9)));
    }
}
