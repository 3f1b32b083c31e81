//! The gRPC client: one channel per process, the token on every call, retries where the
//! controller was merely out of reach, and prost answers turned into the agent's types once.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::model::{DatabaseName, Generation, InstanceId, Policy, Position, ProjectName};
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::{acquire_response, renew_response};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use tracing::{info, warn};

use super::commands::{Command, Handoffs};
use super::lease::{confirmed_until, position_from_wire, Lease, LeaseKind};
use crate::config::ControlConfig;

/// How the agent runs its databases: it tells the controller, which picks the default policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `run`: the agent supervises the app and can stop it for a handoff.
    Run,
    /// `replicate`: a sidecar; it cannot stop the app.
    Replicate,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Replicate => "replicate",
        }
    }
}

/// Why talking to the controller failed, as start-up and shutdown branch on it.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("controller {url} is unreachable; gave up after {waited} (--lease-wait): {message}")]
    Unreachable { url: String, waited: String, message: String },
    #[error("controller {url} refused {call}: {message}")]
    Refused { url: String, call: &'static str, code: Code, message: String },
    #[error("lease for {project}/{database} is held by instance {holder} (policy {policy}); waited {waited}")]
    Held { project: ProjectName, database: DatabaseName, holder: String, policy: String, waited: String },
    #[error("controller {url} answered {call} without an outcome; is it a newer version?")]
    NoOutcome { url: String, call: &'static str },
    #[error("stopped while waiting for the controller")]
    Stopped,
    #[error("lease for {project}/{database} was handed over to instance {newcomer}: stopped replicating")]
    HandedOver { project: ProjectName, database: DatabaseName, newcomer: InstanceId },
}

/// Statuses that mean "not reached" or "try again": everything else (bad token, wrong project,
/// bad name) is an answer and is not retried.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Internal
    )
}

/// Failures of the connection rather than answers of the controller: the channel is replaced.
fn transport_failure(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled)
}

/// A duration as a person reads it in an error: "60s", "1500ms".
pub fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub(super) struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub(super) type Client = AgentServiceClient<InterceptedService<Channel, Bearer>>;

/// Answer to a renew, converted.
#[derive(Debug)]
pub enum RenewOutcome {
    Renewed { ttl: Option<Duration>, commands: Vec<Command> },
    Fenced { current: Generation, holder: Option<InstanceId> },
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// This process's connection to the controller.
pub struct Control {
    /// Replaced by a fresh channel after a transport failure (see [`Control::call`]).
    client: std::sync::Mutex<Client>,
    endpoint: Endpoint,
    bearer: Bearer,
    url: String,
    project: ProjectName,
    instance: InstanceId,
    lease_wait: Duration,
    errors: Arc<AtomicU64>,
    /// Stop commands (handoff, rollback) from renews and from the command stream meet here.
    pub handoffs: Handoffs,
    /// From Register: used where a grant leaves them out.
    ttl: Duration,
    renew_interval: Duration,
    /// How often retention is applied (see [`super::RetentionKeeper`]).
    pub retention_interval: Duration,
}

impl Control {
    /// Opens the channel (lazily: the first call connects) and registers this process,
    /// retrying an unreachable controller for up to the lease wait.
    pub async fn connect(
        cfg: &ControlConfig,
        instance: InstanceId,
        mode: Mode,
        errors: Arc<AtomicU64>,
        stop: &CancellationToken,
    ) -> anyhow::Result<Arc<Control>> {
        use anyhow::Context as _;
        let mut ep = Endpoint::from_shared(cfg.url.clone())
            .with_context(|| format!("parse controller URL {}", cfg.url))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(host) = proto::endpoint::plaintext_remote_host(&cfg.url) {
            tracing::warn!(
                controller = %cfg.url,
                host = %host,
                "the agent token goes to a non-loopback host over plaintext http: use an https:// controller URL"
            );
        }
        if cfg.url.starts_with("https://") {
            let tls = match &cfg.ca_pem {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_webpki_roots(),
            };
            ep = ep.tls_config(tls).with_context(|| format!("set up TLS for controller {}", cfg.url))?;
        }
        let mut bearer: MetadataValue<Ascii> = format!("Bearer {}", cfg.token.expose())
            .parse()
            .context("put the agent token in a header (WALFLEET_TOKEN)")?;
        bearer.set_sensitive(true);
        let bearer = Bearer(bearer);
        let client = AgentServiceClient::with_interceptor(ep.connect_lazy(), bearer.clone());
        let mut control = Control {
            client: std::sync::Mutex::new(client),
            endpoint: ep,
            bearer,
            url: cfg.url.clone(),
            project: cfg.project.clone(),
            instance,
            lease_wait: cfg.lease_wait,
            errors,
            handoffs: Handoffs::default(),
            ttl: Duration::from_secs(30),
            renew_interval: Duration::from_secs(10),
            retention_interval: cfg.retention_interval,
        };
        let req = proto::v1::RegisterRequest {
            project: control.project.to_string(),
            instance: Some(proto::v1::Instance {
                instance_id: control.instance.to_string(),
                host: crate::replicate::hostname(),
                platform: crate::config::platform_identity().unwrap_or_default(),
                mode: mode.as_str().to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
        };
        let deadline = Instant::now() + control.lease_wait;
        let resp = control
            .retrying("register", deadline, stop, |mut c| {
                let req = req.clone();
                async move { c.register(req).await }
            })
            .await?;
        if resp.lease_ttl_ms > 0 {
            control.ttl = Duration::from_millis(resp.lease_ttl_ms);
        }
        control.renew_interval = match resp.renew_interval_ms {
            0 => control.ttl / 3,
            ms => Duration::from_millis(ms),
        };
        info!(controller = %control.url, project = %control.project, instance = %control.instance,
            mode = mode.as_str(), ttl_ms = control.ttl.as_millis() as u64, "registered with the controller");
        Ok(Arc::new(control))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn project(&self) -> &ProjectName {
        &self.project
    }

    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }

    pub fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn client(&self) -> Client {
        self.client.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Drops the channel after a transport failure and starts a new one (connected lazily by
    /// the next call). A connection to a controller that vanished without closing it (a VM
    /// gone, a partition) would otherwise hold calls until HTTP/2 keep-alive gives up on it.
    pub(super) fn reconnect(&self) {
        let fresh = AgentServiceClient::with_interceptor(self.endpoint.connect_lazy(), self.bearer.clone());
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    /// One call, bounded by `timeout`; failures count as controller errors.
    async fn call<R, F, Fut>(&self, timeout: Duration, f: F) -> Result<R, Status>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let r = match tokio::time::timeout(timeout, f(self.client())).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!("no answer within {}", human(timeout)))),
        };
        if let Err(s) = &r {
            self.count_error();
            if transport_failure(s) {
                self.reconnect();
            }
        }
        r
    }

    /// Calls until answered, retrying transport failures with backoff until `deadline`.
    async fn retrying<R, F, Fut>(
        &self,
        what: &'static str,
        deadline: Instant,
        stop: &CancellationToken,
        mut f: F,
    ) -> Result<R, ControlError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let mut backoff = Duration::from_millis(200);
        let mut warned = false;
        loop {
            let status = match self.call(CALL_TIMEOUT, &mut f).await {
                Ok(r) => {
                    if warned {
                        info!(controller = %self.url, call = what, "controller reached");
                    }
                    return Ok(r);
                }
                Err(s) => s,
            };
            if !retryable(&status) {
                return Err(ControlError::Refused {
                    url: self.url.clone(),
                    call: what,
                    code: status.code(),
                    message: status.message().to_string(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ControlError::Unreachable {
                    url: self.url.clone(),
                    waited: human(self.lease_wait),
                    message: status.message().to_string(),
                });
            }
            if !warned {
                warn!(controller = %self.url, call = what, code = ?status.code(), error = %status.message(),
                    "controller unreachable; retrying");
                warned = true;
            }
            let jitter = Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 4 + 1));
            let pause = (backoff + jitter).min(deadline - now);
            tokio::select! {
                _ = stop.cancelled() => return Err(ControlError::Stopped),
                _ = tokio::time::sleep(pause) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Asks for the lease of `database` until granted or forked, waiting out a holder for up
    /// to the lease wait.
    pub async fn acquire(
        &self,
        database: &DatabaseName,
        position: Option<Position>,
        min_generation: Generation,
        replica_url: &str,
        rollback_to: Option<Position>,
        stop: &CancellationToken,
    ) -> Result<Lease, ControlError> {
        let started = Instant::now();
        let deadline = started + self.lease_wait;
        let req = proto::v1::AcquireRequest {
            project: self.project.to_string(),
            database: database.to_string(),
            instance_id: self.instance.to_string(),
            position: position.map(|p| proto::v1::Position { generation: p.generation.0, txid: p.txid.0 }),
            min_generation: min_generation.0,
            replica_url: replica_url.to_string(),
            rollback_to: rollback_to.map(|p| proto::v1::Position { generation: p.generation.0, txid: p.txid.0 }),
        };
        let mut told = false;
        loop {
            let sent = Instant::now();
            let resp = self
                .retrying("acquire", deadline, stop, |mut c| {
                    let req = req.clone();
                    async move { c.acquire(req).await }
                })
                .await?;
            let outcome = resp.outcome.ok_or(ControlError::NoOutcome { url: self.url.clone(), call: "acquire" })?;
            match outcome {
                acquire_response::Outcome::Granted(g) => {
                    let ttl = match g.lease_ttl_ms {
                        0 => self.ttl,
                        ms => Duration::from_millis(ms),
                    };
                    let renew_interval = match g.renew_interval_ms {
                        0 => ttl / 3,
                        ms => Duration::from_millis(ms),
                    };
                    let policy = g.policy.parse::<Policy>().ok();
                    let head = position_from_wire(g.head);
                    info!(db = %database, generation = g.generation, ttl_ms = ttl.as_millis() as u64,
                        head_generation = head.map_or(0, |h| h.generation.0), head_txid = head.map_or(0, |h| h.txid.0),
                        policy = %g.policy, "lease granted");
                    return Ok(Lease {
                        generation: Generation(g.generation),
                        head,
                        renew_interval,
                        kind: LeaseKind::Held { ttl, confirmed_until: confirmed_until(sent, ttl), policy },
                    });
                }
                acquire_response::Outcome::Forked(f) => {
                    warn!(db = %database, holder = %f.holder_instance_id, generation = f.generation,
                        "lease held by another instance; running in a generation of its own without the lease \
                         (forked, alert policy)");
                    let renew_interval = match f.renew_interval_ms {
                        0 => self.renew_interval,
                        ms => Duration::from_millis(ms),
                    };
                    return Ok(Lease {
                        generation: Generation(f.generation),
                        head: None,
                        renew_interval,
                        kind: LeaseKind::Forked { holder: f.holder_instance_id },
                    });
                }
                acquire_response::Outcome::Pending(p) => {
                    let holder = if p.holder_instance_id.is_empty() { "unknown" } else { &p.holder_instance_id };
                    if !told {
                        info!(db = %database, holder, reason = %p.reason, policy = %p.policy,
                            wait = %human(self.lease_wait), "lease pending");
                        told = true;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(ControlError::Held {
                            project: self.project.clone(),
                            database: database.clone(),
                            holder: holder.to_string(),
                            policy: if p.policy.is_empty() { p.reason.clone() } else { p.policy.clone() },
                            waited: human(self.lease_wait),
                        });
                    }
                    // The last attempt falls on the deadline itself.
                    let pause = Duration::from_millis(p.retry_after_ms.clamp(20, 1000)).min(deadline - now);
                    tokio::select! {
                        _ = stop.cancelled() => return Err(ControlError::Stopped),
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// One renew (no retry: the keeper retries on its own schedule).
    pub async fn renew(
        &self,
        database: &DatabaseName,
        generation: Generation,
        report: proto::v1::Report,
        interval: Duration,
    ) -> Result<RenewOutcome, Status> {
        let req = proto::v1::RenewRequest {
            project: self.project.to_string(),
            database: database.to_string(),
            instance_id: self.instance.to_string(),
            generation: generation.0,
            report: Some(report),
        };
        let timeout = interval.clamp(Duration::from_millis(500), CALL_TIMEOUT);
        let resp = self.call(timeout, |mut c| async move { c.renew(req).await }).await?;
        match resp.outcome {
            Some(renew_response::Outcome::Renewed(r)) => Ok(RenewOutcome::Renewed {
                ttl: (r.lease_ttl_ms > 0).then(|| Duration::from_millis(r.lease_ttl_ms)),
                commands: r.commands.into_iter().filter_map(Command::from_wire).collect(),
            }),
            Some(renew_response::Outcome::Fenced(f)) => Ok(RenewOutcome::Fenced {
                current: Generation(f.current_generation),
                holder: f.holder_instance_id.parse().ok(),
            }),
            None => {
                self.count_error();
                Err(Status::internal("renew answer without an outcome"))
            }
        }
    }

    /// Fencing rule 4: asks whether `generation` is still the current one before deleting;
    /// the answer also carries the database's retention window (none: keep everything).
    pub async fn validate_delete(
        &self,
        database: &DatabaseName,
        generation: Generation,
    ) -> Result<(bool, Generation, Option<Duration>), Status> {
        let req = proto::v1::ValidateRequest {
            project: self.project.to_string(),
            database: database.to_string(),
            instance_id: self.instance.to_string(),
            generation: generation.0,
            action: "delete".into(),
        };
        let r = self.call(CALL_TIMEOUT, |mut c| async move { c.validate(req).await }).await?;
        let keep = (r.retention_keep_ms > 0).then(|| Duration::from_millis(r.retention_keep_ms));
        Ok((r.current, Generation(r.current_generation), keep))
    }

    /// Gives the lease back; `sealed` is where the generation was sealed (none when the seal
    /// failed, so the controller keeps the head at what is known durable).
    pub async fn release(
        &self,
        database: &DatabaseName,
        generation: Generation,
        sealed: Option<Position>,
        report: proto::v1::Report,
        timeout: Duration,
    ) -> Result<bool, Status> {
        let req = proto::v1::ReleaseRequest {
            project: self.project.to_string(),
            database: database.to_string(),
            instance_id: self.instance.to_string(),
            generation: generation.0,
            sealed: sealed.map(|p| proto::v1::Position { generation: p.generation.0, txid: p.txid.0 }),
            report: Some(report),
        };
        self.call(timeout, |mut c| async move { c.release(req).await }).await.map(|r| r.released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transport_failures_are_retried() {
        assert!(retryable(&Status::unavailable("tcp connect error")));
        assert!(retryable(&Status::deadline_exceeded("slow")));
        for code in [Code::Unauthenticated, Code::PermissionDenied, Code::InvalidArgument, Code::FailedPrecondition] {
            assert!(!retryable(&Status::new(code, "no")), "{code:?}");
        }
        assert_eq!(human(Duration::from_secs(60)), "60s");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn held_lease_error_names_holder_policy_and_wait() {
        let e = ControlError::Held {
            project: "shop".parse().expect("name"),
            database: "app".parse().expect("name"),
            holder: "0123456789abcdef".into(),
            policy: "wait".into(),
            waited: human(Duration::from_secs(60)),
        };
        assert_eq!(e.to_string(), "lease for shop/app is held by instance 0123456789abcdef (policy wait); waited 60s");
    }
}
