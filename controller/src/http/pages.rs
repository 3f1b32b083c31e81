//! The dashboard's pages (GET). Each answers with the whole page, or with only its live
//! region when the request carries `X-Live: 1` (the page script's refresh).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use proto::v1;
use proto::v1::admin_service_server::AdminService;

use super::{html, refusal, request, status_code, Caller, Dashboard};
use crate::inventory::{self, DrillSchedule};
use crate::lease::now_ms;

type Params = Query<HashMap<String, String>>;

fn param(q: &HashMap<String, String>, k: &str) -> String {
    q.get(k).cloned().unwrap_or_default()
}

fn live(headers: &HeaderMap) -> bool {
    headers.contains_key("x-live")
}

fn path_and_query(uri: &Uri) -> String {
    uri.path_and_query().map_or_else(|| "/".to_string(), |p| p.as_str().to_string())
}

/// The signed-in caller, or the answer for someone who is not.
async fn caller(d: &Dashboard, headers: &HeaderMap, uri: &Uri) -> Result<Caller, Response> {
    d.caller(headers).await.map_err(|r| refusal(r, headers, Some(&path_and_query(uri))))
}

fn failed(c: &Caller, s: tonic::Status) -> Response {
    html(status_code(&s), dashboard::notice(&c.view, "Not available", s.message(), "/"))
}

pub async fn login_form(State(d): State<Arc<Dashboard>>, headers: HeaderMap, Query(q): Params) -> Response {
    let next = param(&q, "next");
    // Already signed in: straight on.
    if d.caller(&headers).await.is_ok() {
        return axum::response::Redirect::to(super::actions::safe_next(&next)).into_response();
    }
    html(StatusCode::OK, dashboard::login(super::actions::safe_next(&next), None))
}

pub async fn fleet(State(d): State<Arc<Dashboard>>, headers: HeaderMap, uri: Uri, Query(q): Params) -> Response {
    let c = match caller(&d, &headers, &uri).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let snap = match d.snapshot(&c.secret).await {
        Ok(s) => s,
        Err(s) => return failed(&c, s),
    };
    let fq = dashboard::fleet::FleetQuery {
        project: param(&q, "project"),
        status: param(&q, "status"),
        sort: param(&q, "sort"),
        desc: q.get("desc").is_some_and(|v| v == "1"),
    };
    let page = dashboard::fleet::render(&c.view, &fq, &snap.databases, &snap.writers, now_ms(), live(&headers));
    html(StatusCode::OK, page)
}

pub async fn events(State(d): State<Arc<Dashboard>>, headers: HeaderMap, uri: Uri, Query(q): Params) -> Response {
    let c = match caller(&d, &headers, &uri).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let eq = dashboard::events::EventsQuery {
        project: param(&q, "project"),
        database: param(&q, "database").trim().to_string(),
        kind: param(&q, "kind"),
    };
    let req = v1::ListEventsRequest {
        project: eq.project.clone(),
        database: eq.database.clone(),
        after_id: 0,
        limit: if eq.kind.is_empty() { 300 } else { 1000 },
    };
    let events = match d.admin.list_events(request(&c.secret, req)).await {
        Ok(r) => r.into_inner().events,
        Err(s) => return failed(&c, s),
    };
    let projects = match d.admin.list_projects(request(&c.secret, v1::ListProjectsRequest::default())).await {
        Ok(r) => r.into_inner().projects.into_iter().map(|p| p.name).collect::<Vec<_>>(),
        Err(s) => return failed(&c, s),
    };
    let page = dashboard::events::render(&c.view, &eq, &projects, &events, now_ms(), live(&headers));
    html(StatusCode::OK, page)
}

/// The drill schedule in force per database: its own, else `serve --drill-interval`.
async fn schedules(d: &Dashboard) -> Result<HashMap<(String, String), u64>, tonic::Status> {
    let notes = d
        .admin
        .leases
        .store()
        .list_notes(None, Some(inventory::DRILL_SCHEDULE))
        .await
        .map_err(|e| tonic::Status::from(crate::grpc::ApiError::from(e)))?;
    Ok(notes
        .into_iter()
        .filter_map(|n| {
            let s: DrillSchedule = serde_json::from_str(&n.body).ok()?;
            Some(((n.project.to_string(), n.database.to_string()), s.every_ms))
        })
        .collect())
}

pub async fn proof(State(d): State<Arc<Dashboard>>, headers: HeaderMap, uri: Uri) -> Response {
    let c = match caller(&d, &headers, &uri).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let snap = match d.snapshot(&c.secret).await {
        Ok(s) => s,
        Err(s) => return failed(&c, s),
    };
    let every = match schedules(&d).await {
        Ok(e) => e,
        Err(s) => return failed(&c, s),
    };
    let proofs: HashMap<(String, String), dashboard::proof::Evidence> =
        match d.admin.leases.store().list_notes(None, Some(inventory::PROOF)).await {
            Ok(notes) => notes
                .into_iter()
                .filter_map(|n| {
                    let drill: inventory::Drill = serde_json::from_str(&n.body).ok()?;
                    let e = dashboard::proof::Evidence {
                        at: drill.at,
                        generation: drill.generation,
                        txid: drill.txid,
                        checksum: drill.restored_checksum,
                        duration_ms: drill.duration_ms,
                    };
                    Some(((n.project.to_string(), n.database.to_string()), e))
                })
                .collect(),
            Err(e) => return failed(&c, crate::grpc::ApiError::from(e).into()),
        };
    let default_every = d.drill_every.as_millis() as u64;
    let rows: Vec<dashboard::proof::ProofRow> = snap
        .databases
        .iter()
        .map(|db| {
            let key = (db.project.clone(), db.name.clone());
            dashboard::proof::ProofRow {
                db,
                evidence: proofs.get(&key).cloned(),
                every_ms: every.get(&key).copied().unwrap_or(default_every),
            }
        })
        .collect();
    html(StatusCode::OK, dashboard::proof::render(&c.view, &rows, now_ms(), live(&headers)))
}

pub async fn database(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    uri: Uri,
    Path((project, name)): Path<(String, String)>,
    Query(q): Params,
) -> Response {
    let c = match caller(&d, &headers, &uri).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let snap = match d.snapshot(&c.secret).await {
        Ok(s) => s,
        Err(s) => return failed(&c, s),
    };
    let Some(db) = snap.databases.iter().find(|x| x.project == project && x.name == name) else {
        return failed(&c, tonic::Status::not_found(format!("database {project}/{name} does not exist")));
    };
    let gens = v1::ListGenerationsRequest { project: project.clone(), database: name.clone() };
    let generations = match d.admin.list_generations(request(&c.secret, gens)).await {
        Ok(r) => r.into_inner().generations,
        Err(s) => return failed(&c, s),
    };
    let req = v1::ListEventsRequest { project: project.clone(), database: name.clone(), after_id: 0, limit: 300 };
    let events = match d.admin.list_events(request(&c.secret, req)).await {
        Ok(r) => r.into_inner().events,
        Err(s) => return failed(&c, s),
    };
    let ret = v1::GetRetentionRequest { project: project.clone(), database: name.clone() };
    let retention_ms = match d.admin.get_retention(request(&c.secret, ret)).await {
        Ok(r) => r.into_inner().keep_ms,
        Err(s) => return failed(&c, s),
    };
    let drill_every_ms = match schedules(&d).await {
        Ok(e) => e.get(&(project.clone(), name.clone())).copied().unwrap_or(d.drill_every.as_millis() as u64),
        Err(s) => return failed(&c, s),
    };
    let pick = match (q.get("txid").and_then(|t| t.parse().ok()), q.get("at").and_then(|t| t.parse().ok())) {
        (Some(t), _) => dashboard::database::Pick::Txid(t),
        (None, Some(ms)) => dashboard::database::Pick::At(ms),
        _ => dashboard::database::Pick::Latest,
    };
    let view = dashboard::database::DbView {
        db,
        generations: &generations,
        events: &events,
        writers: &snap.writers,
        retention_ms,
        drill_every_ms,
        pick,
        now: now_ms(),
    };
    html(StatusCode::OK, dashboard::database::render(&c.view, &view, live(&headers)))
}
