//! The dashboard's state-changing requests (POST): sign in and out, and the actions on a
//! database (run a drill, set its drill schedule, policy or retention, start a clone).
//!
//! A cookie-authenticated POST must carry the session's CSRF token (form field `csrf` or
//! header `X-CSRF-Token`) and come from the dashboard's own origin; a bearer-authenticated one
//! needs neither (no browser sends that header on its own). Actions call the admin API's own
//! handlers, so they write the same events and notes as the CLI.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use proto::v1;
use proto::v1::admin_service_server::AdminService;
use tracing::info;

use super::{html, refusal, request, session, status_code, Caller, Dashboard, Refused};

/// Where a login may send the browser on: a path of this site, never another origin.
pub fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

pub async fn login(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let next = safe_next(f.get("next").map_or("/", String::as_str)).to_string();
    if let Err(why) = session::same_origin(&headers, d.secure) {
        return html(StatusCode::FORBIDDEN, dashboard::login(&next, Some(&why)));
    }
    let token = f.get("token").map_or("", |t| t.trim());
    match d.admin.auth.admin(Some(token)).await {
        Ok(crate::auth::Caller::Admin { token_id } | crate::auth::Caller::Agent { token_id, .. }) => {
            let (id, _csrf) = d.sessions.create(token.to_string());
            info!(token_id = %token_id, "dashboard sign-in");
            let mut r = Redirect::to(&next).into_response();
            if let Ok(v) = session::set_cookie(&id, d.secure).parse() {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => html(StatusCode::UNAUTHORIZED, dashboard::login(&next, Some(&format!("Refused: {e}")))),
    }
}

/// Checks what every cookie-authenticated POST must carry.
fn check_post(d: &Dashboard, c: &Caller, headers: &HeaderMap, form: &HashMap<String, String>) -> Result<(), Refused> {
    if c.session.is_none() {
        return Ok(()); // Authorization: Bearer
    }
    session::same_origin(headers, d.secure).map_err(Refused::Forbidden)?;
    let sent = form
        .get("csrf")
        .map(String::as_str)
        .or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()))
        .unwrap_or("");
    if sent.is_empty() || !session::same(sent, &c.view.csrf) {
        return Err(Refused::Forbidden("missing or wrong CSRF token: reload the page and try again".into()));
    }
    Ok(())
}

pub async fn logout(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let c = match d.caller(&headers).await {
        Ok(c) => c,
        Err(r) => return refusal(r, &headers, None),
    };
    if let Err(r) = check_post(&d, &c, &headers, &f) {
        return refusal(r, &headers, None);
    }
    if let Some(id) = &c.session {
        d.sessions.remove(id);
    }
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = session::set_cookie("", d.secure).parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn duration_ms(field: &str, text: &str) -> Result<u64, tonic::Status> {
    let t = text.trim();
    if t.is_empty() || t == "0" {
        return Ok(0);
    }
    humantime::parse_duration(t).map(|d| d.as_millis() as u64).map_err(|e| {
        tonic::Status::invalid_argument(format!("{field} {t:?} is not a duration like 30m, 24h or 7d: {e}"))
    })
}

pub async fn act(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path((project, database, action)): Path<(String, String, String)>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let c = match d.caller(&headers).await {
        Ok(c) => c,
        Err(r) => return refusal(r, &headers, None),
    };
    if let Err(r) = check_post(&d, &c, &headers, &f) {
        return refusal(r, &headers, None);
    }
    let back = format!("/db/{project}/{database}");
    let field = |k: &str| f.get(k).cloned().unwrap_or_default();
    let (p, db) = (project.clone(), database.clone());
    let s = &c.secret;
    let result: Result<(), tonic::Status> = match action.as_str() {
        "drill" => {
            let req = v1::DrillRequest { project: p, database: db, every_ms: 0, schedule_set: false };
            d.admin.drill(request(s, req)).await.map(|_| ())
        }
        "drill-schedule" => match duration_ms("every", &field("every")) {
            Ok(every_ms) => {
                let req = v1::DrillRequest { project: p, database: db, every_ms, schedule_set: true };
                d.admin.drill(request(s, req)).await.map(|_| ())
            }
            Err(e) => Err(e),
        },
        "policy" => {
            let req = v1::SetPolicyRequest { project: p, database: db, policy: field("policy") };
            d.admin.set_policy(request(s, req)).await.map(|_| ())
        }
        "retention" => match duration_ms("keep", &field("keep")) {
            Ok(keep_ms) => {
                let req = v1::SetRetentionRequest { project: p, database: db, keep_ms };
                d.admin.set_retention(request(s, req)).await.map(|_| ())
            }
            Err(e) => Err(e),
        },
        "clone" => clone(&d, s, (&p, &db), field("into").trim(), field("point").trim()).await,
        other => Err(tonic::Status::not_found(format!(
            "no action {other:?}: drill, drill-schedule, policy, retention or clone"
        ))),
    };
    d.invalidate();
    match result {
        Ok(()) => Redirect::to(&back).into_response(),
        Err(e) => html(status_code(&e), dashboard::notice(&c.view, "Action refused", e.message(), &back)),
    }
}

/// A clone started from the dashboard: the controller restores the point into scratch space
/// and writes it as a new lineage of the target, as `walfleet restore P/D --into P2/D2` does on
/// an operator's machine, with the same audit trail (restore started, cloned, finished).
async fn clone(
    d: &Dashboard,
    secret: &str,
    (p, db): (&str, &str),
    into: &str,
    point: &str,
) -> Result<(), tonic::Status> {
    let Some((p2, d2)) = into.split_once('/') else {
        return Err(tonic::Status::invalid_argument(format!("clone into {into:?}: expected PROJECT/DATABASE")));
    };
    let target = if point.is_empty() {
        agent::restore::Target::Latest
    } else if let Ok(n) = point.parse::<u64>() {
        agent::restore::Target::Txid(proto::model::Txid(n))
    } else {
        match chrono::DateTime::parse_from_rfc3339(point) {
            Ok(t) => agent::restore::Target::Timestamp(t.with_timezone(&chrono::Utc)),
            Err(_) => {
                return Err(tonic::Status::invalid_argument(format!(
                    "point {point:?}: give a transaction number or an RFC 3339 time (empty: the latest)"
                )))
            }
        }
    };
    let point_text = match target {
        agent::restore::Target::Txid(n) => format!("transaction {}", n.0),
        agent::restore::Target::Timestamp(t) => format!("time {}", t.to_rfc3339()),
        _ => "the latest point".to_string(),
    };
    let destination = format!("{p2}/{d2} (clone, a new lineage)");
    let begin = v1::BeginRestoreRequest {
        project: p.into(),
        database: db.into(),
        point: point_text.clone(),
        destination: destination.clone(),
        dry_run: false,
    };
    let begun = d.admin.begin_restore(request(secret, begin)).await?.into_inner();
    let result = clone_steps(d, secret, (p, db), (p2, d2), &begun.replica_url, target).await;
    let (ok, message) = match result {
        Ok(m) => (true, m),
        Err(e) => (false, format!("restore of {point_text} to {destination} failed: {e:#}")),
    };
    let end = v1::EndRestoreRequest {
        project: p.into(),
        database: db.into(),
        restore_id: begun.restore_id,
        ok,
        message: message.clone(),
    };
    d.admin.end_restore(request(secret, end)).await?;
    if ok {
        Ok(())
    } else {
        Err(tonic::Status::failed_precondition(message))
    }
}

async fn clone_steps(
    d: &Dashboard,
    secret: &str,
    (p, db): (&str, &str),
    (p2, d2): (&str, &str),
    url: &str,
    target: agent::restore::Target,
) -> anyhow::Result<String> {
    use agent::object_store::ObjectStore;
    let (pn, dn) = (p.parse().context("parse project")?, db.parse().context("parse database")?);
    let key = d.admin.inventory.drill_key(&pn, &dn);
    let store =
        Arc::new(ObjectStore::from_url(url).await.with_context(|| format!("open replica {url}"))?.with_encryption(key));
    let scratch = tempfile::tempdir().context("create scratch directory")?;
    let out = scratch.path().join("clone.db");
    let opts = agent::restore::RestoreOptions {
        output: out.clone(),
        target,
        if_db_not_exists: false,
        if_replica_exists: false,
        integrity_check: true,
        replica_url: None,
    };
    let (applied, generation) = match agent::restore::restore(store, &opts).await? {
        agent::restore::RestoreOutcome::Restored { applied, generation } => (applied, generation),
        other => bail!("nothing restored: {other:?}"),
    };
    // The target's generation starts above anything its replica already holds.
    let (p2n, d2n) = (p2.parse().context("parse target project")?, d2.parse().context("parse target database")?);
    let known = d.admin.inventory.replica_url(&p2n, &d2n).await.context("read the target's replica")?;
    let min_generation = match &known {
        Some(u) => {
            let s = ObjectStore::from_url(u).await.with_context(|| format!("open replica {u}"))?;
            let top = s.list("", Some("/")).await.with_context(|| format!("list replica {u}"))?;
            agent::layout::generations(&top).last().map_or(1, |g| g.0 + 1)
        }
        None => 1,
    };
    let begin =
        v1::BeginCloneRequest { project: p2.into(), database: d2.into(), replica_url: String::new(), min_generation };
    let begun = d.admin.begin_clone(request(secret, begin)).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let begun = begun.into_inner();
    let g = proto::model::Generation(begun.generation);
    let target_store = ObjectStore::from_url(&begun.replica_url)
        .await
        .with_context(|| format!("open replica {}", begun.replica_url))?
        .with_encryption(key);
    let writer = agent::manifest::Writer {
        instance: "clone".into(),
        host: agent::replicate::hostname(),
        pid: std::process::id(),
        platform: None,
    };
    let seeded = agent::seed::seed(&target_store, g, &out, writer).await?;
    let source = format!("{p}/{db} at transaction {}", applied.txid.0);
    let end =
        v1::EndCloneRequest { project: p2.into(), database: d2.into(), generation: g.0, txid: seeded.txid.0, source };
    d.admin.end_clone(request(secret, end)).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok(format!(
        "restored the point to {p2}/{d2} (clone, a new lineage): generation {}, transaction {}, checksum {:016x}; {p2}/{d2} generation {} holds it",
        generation.map_or(0, |g| g.0),
        applied.txid.0,
        applied.checksum,
        g.0
    ))
}
