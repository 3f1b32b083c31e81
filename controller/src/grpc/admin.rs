//! `walfleet.v1.AdminService`: projects, tokens, instances, events, generations, databases.

use std::sync::Arc;

use proto::model::Policy;
use proto::v1::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use super::{database, project, wire_position, ApiError, ApiResult};
use crate::auth::{self, bearer, Auth};
use crate::inventory::{self, Drill, Inventory, Scan};
use crate::lease::{now_ms, Leases};
use crate::metrics::Metrics;
use crate::roots::{self, validate_roots};
use crate::store::{EventFilter, InstanceRow, NewEvent, Store, TokenKind};
use proto::model::{DatabaseName, Generation, ProjectName};
use std::collections::HashMap;

pub struct AdminApi {
    pub leases: Arc<Leases>,
    pub inventory: Arc<Inventory>,
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
}

impl AdminApi {
    fn store(&self) -> &Arc<dyn Store> {
        self.leases.store()
    }

    /// Admits admin tokens only; returns the token's id (who, in audit events).
    async fn admin<T>(&self, req: &Request<T>) -> ApiResult<String> {
        match self.auth.admin(bearer(req.metadata())).await? {
            auth::Caller::Admin { token_id } | auth::Caller::Agent { token_id, .. } => Ok(token_id),
        }
    }

    /// Audits a change of a project's replica roots.
    async fn roots_event(&self, p: &ProjectName, who: &str, roots: &[String], now: i64) -> ApiResult<()> {
        let message = match roots {
            [] => format!("admin token {who} set no replica roots for project {p}: no agent replica URL is accepted"),
            r => format!("admin token {who} set the replica roots of project {p}: {}", r.join(", ")),
        };
        let event = NewEvent {
            at: now,
            project: p.clone(),
            database: None,
            kind: "replica_roots_set".into(),
            instance: None,
            other_instance: None,
            message,
        };
        self.store().insert_event(&event).await.map_err(ApiError::from)?;
        Ok(())
    }

    /// A database that exists, named by wire strings.
    async fn existing(&self, p: &str, d: &str) -> ApiResult<(ProjectName, DatabaseName)> {
        let (p, d) = (project(p)?, database(d)?);
        if self.store().get_database(&p, &d).await.map_err(ApiError::from)?.is_none() {
            return Err(ApiError::NotFound(format!("database {p}/{d} does not exist")));
        }
        Ok((p, d))
    }
}

fn opt_project(s: &str) -> ApiResult<Option<proto::model::ProjectName>> {
    if s.is_empty() {
        Ok(None)
    } else {
        project(s).map(Some)
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_project(
        &self,
        req: Request<v1::CreateProjectRequest>,
    ) -> Result<Response<v1::CreateProjectResponse>, Status> {
        let _t = self.metrics.call("create_project");
        let who = self.admin(&req).await?;
        let name = project(&req.get_ref().name)?;
        let roots = validate_roots(&req.get_ref().replica_roots).map_err(ApiError::from)?;
        let now = now_ms();
        self.store().create_project(&name, &roots, now).await.map_err(ApiError::from)?;
        self.roots_event(&name, &who, &roots, now).await?;
        let token = auth::generate(TokenKind::Agent, Some(name.clone()), now);
        self.store().insert_token(&token.row).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::CreateProjectResponse {
            name: name.to_string(),
            agent_token: token.secret,
            agent_token_id: token.row.id,
        }))
    }

    async fn list_projects(
        &self,
        req: Request<v1::ListProjectsRequest>,
    ) -> Result<Response<v1::ListProjectsResponse>, Status> {
        self.admin(&req).await?;
        let rows = self.store().list_projects().await.map_err(ApiError::from)?;
        let mut projects = Vec::with_capacity(rows.len());
        for p in rows {
            projects.push(v1::ProjectInfo {
                replica_roots: self.store().replica_roots(&p.name).await.map_err(ApiError::from)?,
                name: p.name.to_string(),
                created_at_unix_ms: p.created_at,
                databases: p.databases,
            });
        }
        Ok(Response::new(v1::ListProjectsResponse { projects }))
    }

    async fn set_replica_roots(
        &self,
        req: Request<v1::SetReplicaRootsRequest>,
    ) -> Result<Response<v1::SetReplicaRootsResponse>, Status> {
        let who = self.admin(&req).await?;
        let name = project(&req.get_ref().project)?;
        let roots = validate_roots(&req.get_ref().replica_roots).map_err(ApiError::from)?;
        let now = now_ms();
        self.store().set_replica_roots(&name, &roots, now).await.map_err(ApiError::from)?;
        self.roots_event(&name, &who, &roots, now).await?;
        let replica_roots = self.store().replica_roots(&name).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::SetReplicaRootsResponse { replica_roots }))
    }

    async fn create_token(
        &self,
        req: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        self.admin(&req).await?;
        let r = req.get_ref();
        let (kind, proj) = match r.kind.as_str() {
            "admin" => (TokenKind::Admin, None),
            "agent" => {
                let p = project(&r.project)?;
                if !self.store().project_exists(&p).await.map_err(ApiError::from)? {
                    return Err(ApiError::NotFound(format!("project {p:?} does not exist")).into());
                }
                (TokenKind::Agent, Some(p))
            }
            other => {
                return Err(ApiError::InvalidArgument(format!("invalid token kind {other:?}: agent or admin")).into())
            }
        };
        let token = auth::generate(kind, proj, now_ms());
        self.store().insert_token(&token.row).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::CreateTokenResponse { token: token.secret, token_id: token.row.id }))
    }

    async fn revoke_token(
        &self,
        req: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        self.admin(&req).await?;
        let id = &req.get_ref().token_id;
        let revoked = self.store().revoke_token(id, now_ms()).await.map_err(ApiError::from)?;
        self.auth.forget();
        if !revoked {
            return Err(ApiError::NotFound(format!("no active token with id {id:?}")).into());
        }
        Ok(Response::new(v1::RevokeTokenResponse { revoked }))
    }

    async fn list_tokens(
        &self,
        req: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        self.admin(&req).await?;
        let p = opt_project(&req.get_ref().project)?;
        let rows = self.store().list_tokens(p.as_ref()).await.map_err(ApiError::from)?;
        let tokens = rows
            .into_iter()
            .map(|t| v1::TokenInfo {
                token_id: t.id,
                kind: t.kind.as_str().into(),
                project: t.project.map(|p| p.to_string()).unwrap_or_default(),
                created_at_unix_ms: t.created_at,
                revoked_at_unix_ms: t.revoked_at.unwrap_or(0),
            })
            .collect();
        Ok(Response::new(v1::ListTokensResponse { tokens }))
    }

    async fn list_instances(
        &self,
        req: Request<v1::ListInstancesRequest>,
    ) -> Result<Response<v1::ListInstancesResponse>, Status> {
        self.admin(&req).await?;
        let p = opt_project(&req.get_ref().project)?;
        let rows = self.store().list_instances(p.as_ref(), 0).await.map_err(ApiError::from)?;
        let instances = rows
            .into_iter()
            .map(|r| v1::InstanceInfo {
                instance: Some(v1::Instance {
                    instance_id: r.info.id.to_string(),
                    host: r.info.host,
                    platform: r.info.platform,
                    mode: r.info.mode,
                    version: r.info.version,
                }),
                project: r.info.project.to_string(),
                database: r.database.map(|d| d.to_string()).unwrap_or_default(),
                generation: r.report.as_ref().map(|x| x.generation.0).unwrap_or(0),
                role: r.role,
                started_at_unix_ms: r.started_at,
                last_seen_unix_ms: r.last_seen,
                report: r.report.map(|x| v1::Report {
                    local_txid: x.local_txid.0,
                    durable_txid: x.durable_txid.0,
                    lag_seconds: x.lag_seconds,
                    lag_bytes: x.lag_bytes,
                    last_upload_unix_ms: x.last_upload_at.unwrap_or(0),
                    uploads: x.uploads,
                    upload_errors: x.upload_errors,
                    upload_blocked: x.upload_blocked,
                    state: x.state,
                    durable_checksum: x.durable_checksum,
                }),
            })
            .collect();
        Ok(Response::new(v1::ListInstancesResponse { instances }))
    }

    async fn list_events(
        &self,
        req: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        self.admin(&req).await?;
        let r = req.get_ref();
        let filter = EventFilter {
            project: opt_project(&r.project)?,
            database: if r.database.is_empty() { None } else { Some(database(&r.database)?) },
            kind: None,
            after_id: r.after_id,
            limit: r.limit,
        };
        let rows = self.store().list_events(&filter).await.map_err(ApiError::from)?;
        let events = rows
            .into_iter()
            .map(|e| v1::Event {
                id: e.id,
                at_unix_ms: e.event.at,
                project: e.event.project.to_string(),
                database: e.event.database.map(|d| d.to_string()).unwrap_or_default(),
                kind: e.event.kind,
                instance_id: e.event.instance.map(|i| i.to_string()).unwrap_or_default(),
                other_instance_id: e.event.other_instance.map(|i| i.to_string()).unwrap_or_default(),
                message: e.event.message,
            })
            .collect();
        Ok(Response::new(v1::ListEventsResponse { events }))
    }

    async fn list_generations(
        &self,
        req: Request<v1::ListGenerationsRequest>,
    ) -> Result<Response<v1::ListGenerationsResponse>, Status> {
        self.admin(&req).await?;
        let r = req.get_ref();
        let (p, d) = (project(&r.project)?, database(&r.database)?);
        if self.store().get_database(&p, &d).await.map_err(ApiError::from)?.is_none() {
            return Err(ApiError::NotFound(format!("database {p}/{d} does not exist")).into());
        }
        let rows = self.store().list_generations(&p, &d).await.map_err(ApiError::from)?;
        let generations = rows
            .into_iter()
            .map(|g| v1::GenerationInfo {
                generation: g.generation.0,
                instance_id: g.instance.to_string(),
                host: g.host,
                parent: wire_position(g.parent),
                created_at_unix_ms: g.created_at,
                sealed_txid: g.sealed_txid.map(|t| t.0).unwrap_or(0),
                sealed_at_unix_ms: g.sealed_at.unwrap_or(0),
                leased: g.leased,
            })
            .collect();
        Ok(Response::new(v1::ListGenerationsResponse { generations }))
    }

    async fn list_databases(
        &self,
        req: Request<v1::ListDatabasesRequest>,
    ) -> Result<Response<v1::ListDatabasesResponse>, Status> {
        let _t = self.metrics.call("list_databases");
        self.admin(&req).await?;
        let p = opt_project(&req.get_ref().project)?;
        let store = self.store();
        let rows = store.list_databases(p.as_ref()).await.map_err(ApiError::from)?;
        let instances = store.list_instances(p.as_ref(), 0).await.map_err(ApiError::from)?;
        let mut by_db: HashMap<(&ProjectName, &DatabaseName), Vec<&InstanceRow>> = HashMap::new();
        for i in &instances {
            if let Some(d) = &i.database {
                by_db.entry((&i.info.project, d)).or_default().push(i);
            }
        }
        let mut notes: HashMap<(ProjectName, DatabaseName, String), String> = HashMap::new();
        for n in store.list_notes(p.as_ref(), None).await.map_err(ApiError::from)? {
            notes.insert((n.project, n.database, n.kind), n.body);
        }
        let note = |d: &crate::store::DatabaseRow, kind: &str| {
            notes.get(&(d.project.clone(), d.name.clone(), kind.to_string()))
        };
        let now = now_ms();
        let renew_ms = self.leases.renew_interval_ms() as i64;
        let mut databases = Vec::with_capacity(rows.len());
        for d in rows {
            let gens = store.list_generations(&d.project, &d.name).await.map_err(ApiError::from)?;
            let mine = by_db.get(&(&d.project, &d.name)).cloned().unwrap_or_default();
            let (status, reason) =
                inventory::status(&mine, self.inventory.is_stalled(&d.project, &d.name), renew_ms, now);
            let holder = mine.iter().filter(|i| i.role == "holder").max_by_key(|i| i.last_seen);
            let report = holder.and_then(|h| h.report.clone()).unwrap_or_default();
            let scan: Option<Scan> = note(&d, inventory::SCAN).and_then(|b| serde_json::from_str(b).ok());
            let drill: Option<Drill> = note(&d, inventory::DRILL).and_then(|b| serde_json::from_str(b).ok());
            let replica_url = note(&d, inventory::REPLICA)
                .and_then(|b| serde_json::from_str::<inventory::ReplicaNote>(b).ok())
                .map(|r| r.url)
                .unwrap_or_default();
            let uploading_for =
                gens.iter().find(|g| g.generation == report.generation).map_or(0, |g| now - g.created_at);
            let bytes = scan.as_ref().map_or(0, |s| s.bytes);
            let (storage_cost, request_cost) =
                inventory::monthly_cost(self.inventory.prices, bytes, report.uploads, uploading_for);
            databases.push(v1::DatabaseInfo {
                project: d.project.to_string(),
                name: d.name.to_string(),
                policy: d.policy.to_string(),
                holder_instance_id: d.holder.map(|h| h.to_string()).unwrap_or_default(),
                generation: d.holder_generation.0,
                lease_expires_at_unix_ms: d.expires_at,
                head: wire_position(d.head),
                created_at_unix_ms: d.created_at,
                status: status.as_str().to_string(),
                status_reason: reason,
                generation_chain: gens.iter().map(|g| g.generation.0).collect(),
                local_txid: report.local_txid.0,
                durable_txid: report.durable_txid.0,
                lag_seconds: report.lag_seconds,
                lag_bytes: report.lag_bytes,
                last_upload_unix_ms: report.last_upload_at.unwrap_or(0),
                replica_url,
                scan: scan.map(|s| v1::ScanInfo {
                    at_unix_ms: s.at,
                    objects: s.objects,
                    bytes: s.bytes,
                    earliest_generation: s.earliest_generation,
                    earliest_txid: s.earliest_txid,
                    earliest_unix_ms: s.earliest_ms,
                    latest_generation: s.latest_generation,
                    latest_txid: s.latest_txid,
                    latest_unix_ms: s.latest_ms,
                    drift: s.drift,
                    requests: s.requests,
                    error: s.error,
                }),
                monthly_storage_cost: storage_cost,
                monthly_request_cost: request_cost,
                last_drill: drill.map(wire_drill),
                last_report_unix_ms: holder.map_or(0, |h| h.last_seen),
            });
        }
        Ok(Response::new(v1::ListDatabasesResponse { databases }))
    }

    async fn scan(&self, req: Request<v1::ScanRequest>) -> Result<Response<v1::ScanResponse>, Status> {
        self.admin(&req).await?;
        let r = req.get_ref();
        let p = opt_project(&r.project)?;
        let d = if r.database.is_empty() { None } else { Some(database(&r.database)?) };
        let scanned = self.inventory.scan_all(p.as_ref(), d.as_ref()).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::ScanResponse { scanned }))
    }

    async fn drill(&self, req: Request<v1::DrillRequest>) -> Result<Response<v1::DrillResponse>, Status> {
        self.admin(&req).await?;
        let (p, d) = self.existing(&req.get_ref().project, &req.get_ref().database).await?;
        if req.get_ref().schedule_set {
            self.inventory.set_drill_schedule(&p, &d, req.get_ref().every_ms).await.map_err(ApiError::from)?;
            return Ok(Response::new(v1::DrillResponse { result: None }));
        }
        let result = self.inventory.drill(&p, &d).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::DrillResponse { result: Some(wire_drill(result)) }))
    }

    async fn begin_restore(
        &self,
        req: Request<v1::BeginRestoreRequest>,
    ) -> Result<Response<v1::BeginRestoreResponse>, Status> {
        let who = self.admin(&req).await?;
        let r = req.get_ref();
        let (p, d) = self.existing(&r.project, &r.database).await?;
        let Some(replica_url) = self.inventory.replica_url(&p, &d).await.map_err(ApiError::from)? else {
            return Err(
                ApiError::NotFound(format!("no replica URL recorded for {p}/{d}: no agent has reported one")).into()
            );
        };
        let what = if r.dry_run { "restore_planned" } else { "restore_started" };
        let event = NewEvent {
            at: now_ms(),
            project: p.clone(),
            database: Some(d.clone()),
            kind: what.into(),
            instance: None,
            other_instance: None,
            message: format!(
                "admin token {who} {} {p}/{d} at {} from {replica_url} to {}",
                if r.dry_run { "planned a restore of" } else { "started restoring" },
                r.point,
                r.destination
            ),
        };
        let restore_id = self.store().insert_event(&event).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::BeginRestoreResponse { replica_url, restore_id }))
    }

    async fn set_retention(
        &self,
        req: Request<v1::SetRetentionRequest>,
    ) -> Result<Response<v1::SetRetentionResponse>, Status> {
        let who = self.admin(&req).await?;
        let r = req.get_ref();
        let (p, d) = self.existing(&r.project, &r.database).await?;
        self.inventory.set_retention(&p, &d, r.keep_ms).await.map_err(ApiError::from)?;
        let message = match r.keep_ms {
            0 => format!("admin token {who} cleared the retention policy: keep everything"),
            ms => format!(
                "admin token {who} set retention: keep {} of point-in-time restore",
                humantime::format_duration(std::time::Duration::from_millis(ms))
            ),
        };
        self.leases.event(&p, &d, "retention_set", None, None, message).await;
        Ok(Response::new(v1::SetRetentionResponse {}))
    }

    async fn get_retention(
        &self,
        req: Request<v1::GetRetentionRequest>,
    ) -> Result<Response<v1::GetRetentionResponse>, Status> {
        self.admin(&req).await?;
        let r = req.get_ref();
        let (p, d) = self.existing(&r.project, &r.database).await?;
        let keep_ms = self.inventory.retention_ms(&p, &d).await.map_err(ApiError::from)?;
        let replica_url = self.inventory.replica_url(&p, &d).await.map_err(ApiError::from)?.unwrap_or_default();
        let db = self.store().get_database(&p, &d).await.map_err(ApiError::from)?;
        let current_generation = db.map_or(0, |d| d.holder_generation.0);
        Ok(Response::new(v1::GetRetentionResponse { keep_ms, replica_url, current_generation }))
    }

    async fn begin_clone(
        &self,
        req: Request<v1::BeginCloneRequest>,
    ) -> Result<Response<v1::BeginCloneResponse>, Status> {
        self.admin(&req).await?;
        let r = req.get_ref();
        let (p, d) = (project(&r.project)?, database(&r.database)?);
        if !self.store().project_exists(&p).await.map_err(ApiError::from)? {
            return Err(ApiError::NotFound(format!("project {p:?} does not exist")).into());
        }
        let now = now_ms();
        let db = self.store().ensure_database(&p, &d, Policy::Handoff, now).await.map_err(ApiError::from)?;
        if let Some(h) = db.holder.as_ref().filter(|_| db.expires_at > now) {
            return Err(ApiError::FailedPrecondition(format!(
                "{p}/{d} has a live writer (instance {h}, generation {}): stop it before cloning into it",
                db.holder_generation.0
            ))
            .into());
        }
        let replica_url = if r.replica_url.trim().is_empty() {
            self.inventory.replica_url(&p, &d).await.map_err(ApiError::from)?.ok_or_else(|| {
                ApiError::InvalidArgument(format!("no replica URL recorded for {p}/{d}: give the target's replica"))
            })?
        } else {
            // An admin's URL too: the controller reads it later with its own credentials.
            let url = r.replica_url.trim();
            roots::check(&p, url, &self.store().replica_roots(&p).await.map_err(ApiError::from)?)
                .map_err(ApiError::from)?;
            self.inventory.remember_replica(&p, &d, url).await.map_err(ApiError::from)?;
            url.to_string()
        };
        let min = Generation(r.min_generation.max(1));
        let generation = self.store().issue_generation(&p, &d, min).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::BeginCloneResponse { generation: generation.0, replica_url }))
    }

    async fn end_clone(&self, req: Request<v1::EndCloneRequest>) -> Result<Response<v1::EndCloneResponse>, Status> {
        let who = self.admin(&req).await?;
        let r = req.get_ref();
        let (p, d) = self.existing(&r.project, &r.database).await?;
        let now = now_ms();
        let generation = Generation(r.generation);
        let row = crate::store::GenerationRow {
            project: p.clone(),
            database: d.clone(),
            generation,
            instance: "clone".parse().map_err(|e: proto::model::NameError| ApiError::InvalidArgument(e.to_string()))?,
            host: String::new(),
            parent: None,
            created_at: now,
            sealed_txid: Some(proto::model::Txid(r.txid)),
            sealed_at: Some(now),
            leased: false,
        };
        self.store().insert_generation(&row).await.map_err(ApiError::from)?;
        let message = format!(
            "admin token {who} cloned {} into {p}/{d} as generation {} (a new lineage)",
            r.source, r.generation
        );
        self.leases.event(&p, &d, "cloned", None, None, message).await;
        Ok(Response::new(v1::EndCloneResponse {}))
    }

    async fn end_restore(
        &self,
        req: Request<v1::EndRestoreRequest>,
    ) -> Result<Response<v1::EndRestoreResponse>, Status> {
        let who = self.admin(&req).await?;
        let r = req.get_ref();
        let (p, d) = self.existing(&r.project, &r.database).await?;
        let event = NewEvent {
            at: now_ms(),
            project: p.clone(),
            database: Some(d.clone()),
            kind: if r.ok { "restore_finished" } else { "restore_failed" }.into(),
            instance: None,
            other_instance: None,
            message: format!("restore #{} of {p}/{d} by admin token {who}: {}", r.restore_id, r.message),
        };
        self.store().insert_event(&event).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::EndRestoreResponse {}))
    }

    async fn rollback(&self, req: Request<v1::RollbackRequest>) -> Result<Response<v1::RollbackResponse>, Status> {
        let who = self.admin(&req).await?;
        let r = req.get_ref();
        let (p, d) = self.existing(&r.project, &r.database).await?;
        let point = super::position(r.point.as_ref())?
            .ok_or_else(|| ApiError::InvalidArgument("a rollback needs a point: generation and transaction".into()))?;
        let (instance, generation) =
            self.leases.request_rollback(&p, &d, point, r.restore_id, &who).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::RollbackResponse { instance_id: instance.to_string(), generation: generation.0 }))
    }

    async fn get_rollback(
        &self,
        req: Request<v1::GetRollbackRequest>,
    ) -> Result<Response<v1::GetRollbackResponse>, Status> {
        self.admin(&req).await?;
        let r = req.get_ref();
        let (p, d) = self.existing(&r.project, &r.database).await?;
        let note = self.leases.rollback_note(&p, &d).await.map_err(ApiError::from)?;
        Ok(Response::new(match note.filter(|n| n.restore_id == r.restore_id) {
            Some(n) => {
                v1::GetRollbackResponse { state: n.state, generation: n.new_generation, instance_id: n.new_instance }
            }
            None => v1::GetRollbackResponse::default(),
        }))
    }

    async fn set_policy(&self, req: Request<v1::SetPolicyRequest>) -> Result<Response<v1::SetPolicyResponse>, Status> {
        self.admin(&req).await?;
        let r = req.get_ref();
        let (p, d) = (project(&r.project)?, database(&r.database)?);
        let policy: Policy =
            r.policy.parse().map_err(|e: proto::model::PolicyError| ApiError::InvalidArgument(e.to_string()))?;
        if !self.store().project_exists(&p).await.map_err(ApiError::from)? {
            return Err(ApiError::NotFound(format!("project {p:?} does not exist")).into());
        }
        // Setting a policy before the first agent arrives creates the database.
        self.store().ensure_database(&p, &d, policy, now_ms()).await.map_err(ApiError::from)?;
        self.store().set_policy(&p, &d, policy).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::SetPolicyResponse {}))
    }
}

fn wire_drill(d: Drill) -> v1::DrillResult {
    v1::DrillResult {
        at_unix_ms: d.at,
        ok: d.ok,
        generation: d.generation,
        txid: d.txid,
        duration_ms: d.duration_ms,
        message: d.message,
        expected_checksum: d.expected_checksum,
        restored_checksum: d.restored_checksum,
    }
}
