//! `walfleet.v1.AdminService`: projects, tokens, instances, events, generations, databases.

use std::sync::Arc;

use proto::model::Policy;
use proto::v1::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use super::{database, project, wire_position, ApiError, ApiResult};
use crate::auth::{self, bearer, Auth};
use crate::lease::{now_ms, Leases};
use crate::metrics::Metrics;
use crate::store::{EventFilter, Store, TokenKind};

pub struct AdminApi {
    pub leases: Arc<Leases>,
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
}

impl AdminApi {
    fn store(&self) -> &Arc<dyn Store> {
        self.leases.store()
    }

    async fn admin<T>(&self, req: &Request<T>) -> ApiResult<()> {
        self.auth.admin(bearer(req.metadata())).await?;
        Ok(())
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
        self.admin(&req).await?;
        let name = project(&req.get_ref().name)?;
        let now = now_ms();
        self.store().create_project(&name, now).await.map_err(ApiError::from)?;
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
        let projects = rows
            .into_iter()
            .map(|p| v1::ProjectInfo {
                name: p.name.to_string(),
                created_at_unix_ms: p.created_at,
                databases: p.databases,
            })
            .collect();
        Ok(Response::new(v1::ListProjectsResponse { projects }))
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
        self.admin(&req).await?;
        let p = opt_project(&req.get_ref().project)?;
        let rows = self.store().list_databases(p.as_ref()).await.map_err(ApiError::from)?;
        let databases = rows
            .into_iter()
            .map(|d| v1::DatabaseInfo {
                project: d.project.to_string(),
                name: d.name.to_string(),
                policy: d.policy.to_string(),
                holder_instance_id: d.holder.map(|h| h.to_string()).unwrap_or_default(),
                generation: d.holder_generation.0,
                lease_expires_at_unix_ms: d.expires_at,
                head: wire_position(d.head),
                created_at_unix_ms: d.created_at,
            })
            .collect();
        Ok(Response::new(v1::ListDatabasesResponse { databases }))
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
