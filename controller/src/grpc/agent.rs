//! `walfleet.v1.AgentService`: register, acquire / renew / release, validate, commands.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::model::{Generation, ProjectName};
use proto::v1::{self, agent_service_server::AgentService};
use tonic::{Request, Response, Status};

use super::{database, generation, instance, position, project, txid, wire_position, ApiError, ApiResult};
use crate::auth::{bearer, Auth};
use crate::lease::{AcquireOutcome, Command, Leases, RenewOutcome};
use crate::metrics::Metrics;
use crate::store::{InstanceInfo, Report};

pub struct AgentApi {
    pub leases: Arc<Leases>,
    pub inventory: Arc<crate::inventory::Inventory>,
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
}

impl AgentApi {
    async fn authorize<T>(&self, req: &Request<T>, project_name: &str) -> ApiResult<ProjectName> {
        let p = project(project_name)?;
        self.auth.agent(bearer(req.metadata()), &p).await?;
        Ok(p)
    }
}

/// A report from the wire: transaction ids the store compares must fit it; shown-only values
/// are made safe to store (a NaN lag would come back as NULL).
fn report(r: Option<&v1::Report>, g: Generation) -> ApiResult<Option<Report>> {
    let Some(r) = r else { return Ok(None) };
    Ok(Some(Report {
        generation: g,
        local_txid: txid("report local_txid", r.local_txid)?,
        durable_txid: txid("report durable_txid", r.durable_txid)?,
        lag_seconds: if r.lag_seconds.is_finite() { r.lag_seconds.max(0.0) } else { 0.0 },
        lag_bytes: r.lag_bytes,
        last_upload_at: (r.last_upload_unix_ms > 0).then_some(r.last_upload_unix_ms),
        uploads: r.uploads,
        upload_errors: r.upload_errors,
        upload_blocked: r.upload_blocked,
        state: r.state.chars().take(32).collect(),
        durable_checksum: r.durable_checksum,
    }))
}

fn wire_command(c: Command) -> v1::Command {
    match c {
        Command::Handoff { database, newcomer, newcomer_host } => v1::Command {
            database: database.to_string(),
            kind: Some(v1::command::Kind::Handoff(v1::Handoff {
                newcomer_instance_id: newcomer.to_string(),
                newcomer_host,
            })),
        },
        Command::Rollback { database, point, restore_id } => v1::Command {
            database: database.to_string(),
            kind: Some(v1::command::Kind::Rollback(v1::Rollback { point: wire_position(Some(point)), restore_id })),
        },
    }
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<v1::Command, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(&self, req: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        let _t = self.metrics.call("register");
        let project = self.authorize(&req, &req.get_ref().project).await?;
        let i = req.get_ref().instance.as_ref().ok_or_else(|| ApiError::InvalidArgument("missing instance".into()))?;
        let info = InstanceInfo {
            id: instance(&i.instance_id)?,
            project,
            host: i.host.chars().take(255).collect(),
            platform: i.platform.chars().take(255).collect(),
            mode: match i.mode.as_str() {
                "run" | "replicate" => i.mode.clone(),
                other => {
                    return Err(ApiError::InvalidArgument(format!("invalid mode {other:?}: run or replicate")).into())
                }
            },
            version: i.version.chars().take(64).collect(),
        };
        self.leases.register(&info).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::RegisterResponse {
            lease_ttl_ms: self.leases.ttl_ms as u64,
            renew_interval_ms: self.leases.renew_interval_ms(),
        }))
    }

    async fn acquire(&self, req: Request<v1::AcquireRequest>) -> Result<Response<v1::AcquireResponse>, Status> {
        let _t = self.metrics.call("acquire");
        let r = req.get_ref();
        let project = self.authorize(&req, &r.project).await?;
        let (db, id) = (database(&r.database)?, instance(&r.instance_id)?);
        let min = Generation(r.min_generation);
        let rollback_to = position(r.rollback_to.as_ref())?;
        let url = r.replica_url.trim();
        let out = self.leases.acquire(&project, &db, &id, min, rollback_to, url).await.map_err(ApiError::from)?;
        // Only the holder's URL is the database's replica: a pending or forked newcomer's is not
        // recorded (acquire refused any URL outside the project's replica roots).
        if matches!(out, AcquireOutcome::Granted { .. }) {
            if let Err(e) = self.inventory.remember_replica(&project, &db, url).await {
                tracing::warn!(%project, database = %db, error = %e, "record replica URL failed");
            }
        }
        use v1::acquire_response::Outcome;
        let outcome = match out {
            AcquireOutcome::Granted { generation, head, policy } => Outcome::Granted(v1::Granted {
                generation: generation.0,
                lease_ttl_ms: self.leases.ttl_ms as u64,
                renew_interval_ms: self.leases.renew_interval_ms(),
                head: wire_position(head),
                policy: policy.to_string(),
            }),
            AcquireOutcome::Pending { reason, holder, retry_after_ms, policy } => Outcome::Pending(v1::Pending {
                reason: reason.into(),
                holder_instance_id: holder.map(|h| h.to_string()).unwrap_or_default(),
                retry_after_ms,
                policy: policy.to_string(),
            }),
            AcquireOutcome::Forked { generation, holder } => Outcome::Forked(v1::Forked {
                generation: generation.0,
                holder_instance_id: holder.to_string(),
                renew_interval_ms: self.leases.renew_interval_ms(),
            }),
        };
        Ok(Response::new(v1::AcquireResponse { outcome: Some(outcome) }))
    }

    async fn renew(&self, req: Request<v1::RenewRequest>) -> Result<Response<v1::RenewResponse>, Status> {
        let _t = self.metrics.call("renew");
        let r = req.get_ref();
        let project = self.authorize(&req, &r.project).await?;
        let (db, id, g) = (database(&r.database)?, instance(&r.instance_id)?, generation(r.generation)?);
        let report = report(r.report.as_ref(), g)?;
        let out = self.leases.renew(&project, &db, &id, g, report).await.map_err(ApiError::from)?;
        use v1::renew_response::Outcome;
        let outcome = match out {
            RenewOutcome::Renewed { commands } => Outcome::Renewed(v1::Renewed {
                lease_ttl_ms: self.leases.ttl_ms as u64,
                commands: commands.into_iter().map(wire_command).collect(),
            }),
            RenewOutcome::Fenced { current, holder } => Outcome::Fenced(v1::Fenced {
                current_generation: current.0,
                holder_instance_id: holder.map(|h| h.to_string()).unwrap_or_default(),
            }),
        };
        Ok(Response::new(v1::RenewResponse { outcome: Some(outcome) }))
    }

    async fn release(&self, req: Request<v1::ReleaseRequest>) -> Result<Response<v1::ReleaseResponse>, Status> {
        let _t = self.metrics.call("release");
        let r = req.get_ref();
        let project = self.authorize(&req, &r.project).await?;
        let (db, id, g) = (database(&r.database)?, instance(&r.instance_id)?, generation(r.generation)?);
        let sealed = position(r.sealed.as_ref())?;
        if sealed.is_some_and(|p| p.generation != g) {
            return Err(ApiError::InvalidArgument(format!("sealed position is not in generation {}", g.0)).into());
        }
        let released = self
            .leases
            .release(&project, &db, &id, g, sealed, report(r.report.as_ref(), g)?)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(v1::ReleaseResponse { released }))
    }

    async fn validate(&self, req: Request<v1::ValidateRequest>) -> Result<Response<v1::ValidateResponse>, Status> {
        let _t = self.metrics.call("validate");
        let r = req.get_ref();
        let project = self.authorize(&req, &r.project).await?;
        let (db, id, g) = (database(&r.database)?, instance(&r.instance_id)?, generation(r.generation)?);
        let (current, now) = self.leases.validate(&project, &db, &id, g).await.map_err(ApiError::from)?;
        let mut retention_keep_ms = 0;
        if r.action == "delete" {
            if current {
                retention_keep_ms = self.inventory.retention_ms(&project, &db).await.map_err(ApiError::from)?;
            } else {
                let msg = format!(
                    "instance {id} asked to delete objects as generation {} but the current generation is {}: refused",
                    g.0, now.0
                );
                self.leases.agent_event(&project, &db, "delete_refused", Some(&id), None, msg).await;
            }
        }
        Ok(Response::new(v1::ValidateResponse { current, current_generation: now.0, retention_keep_ms }))
    }

    type CommandsStream = CommandStream;

    async fn commands(&self, req: Request<v1::CommandsRequest>) -> Result<Response<Self::CommandsStream>, Status> {
        let _t = self.metrics.call("commands");
        let r = req.get_ref();
        let project = self.authorize(&req, &r.project).await?;
        let id = instance(&r.instance_id)?;
        let (pending, rx) = self.leases.subscribe(&project, &id).await.map_err(ApiError::from)?;
        let first = futures::stream::iter(pending.into_iter().map(|c| Ok(wire_command(c))));
        let rest = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(c) => return Some((Ok(wire_command(c)), rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        use futures::StreamExt;
        Ok(Response::new(Box::pin(first.chain(rest))))
    }
}
