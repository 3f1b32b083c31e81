//! The controller's HTTP side for people: the fleet dashboard (`dashboard` crate) at `/`, its
//! login, its live regions and its actions. `/healthz` and `/metrics` stay in `server.rs`.
//!
//! Every page and data request needs the admin token: a session cookie from the login form or
//! `Authorization: Bearer`. Without it a page answers with the login form (a redirect) and a
//! live region or action with 401, and no fleet data. The data comes from the admin API's own
//! handlers (`grpc::admin::AdminApi`), called in-process with the caller's token, so the
//! dashboard shows what the CLI shows and its actions are audited exactly as the CLI's are.

mod actions;
mod pages;
mod session;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use proto::v1::admin_service_server::AdminService;
use proto::v1::{self, DatabaseInfo};

use crate::auth::Auth;
use crate::config::ServeArgs;
use crate::grpc::admin::AdminApi;
use crate::inventory::Inventory;
use crate::lease::{now_ms, Leases};
use crate::metrics::Metrics;
use crate::store::Millis;

/// The fleet snapshot is computed at most this often, however many pages poll it.
const SNAPSHOT_FOR: Duration = Duration::from_secs(2);

/// What every dashboard handler shares.
pub struct Dashboard {
    admin: AdminApi,
    sessions: session::Sessions,
    /// The controller serves HTTP over TLS (the cookie gets `Secure`, origins are https).
    secure: bool,
    /// `serve --drill-interval`: the drill schedule of a database without its own.
    drill_every: Duration,
    snapshot: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

/// Every database with its writer's host and platform, as of `at`.
pub struct Snapshot {
    pub at: Millis,
    pub databases: Vec<DatabaseInfo>,
    pub writers: dashboard::fleet::Writers,
}

/// The dashboard's routes, ready to merge into the controller's HTTP router.
pub fn router(
    leases: &Arc<Leases>,
    inventory: &Arc<Inventory>,
    auth: &Arc<Auth>,
    metrics: &Arc<Metrics>,
    args: &ServeArgs,
) -> axum::Router {
    let admin =
        AdminApi { leases: leases.clone(), inventory: inventory.clone(), auth: auth.clone(), metrics: metrics.clone() };
    let state = Arc::new(Dashboard {
        admin,
        sessions: session::Sessions::default(),
        secure: args.tls_cert.is_some(),
        drill_every: args.drill_interval,
        snapshot: Mutex::default(),
    });
    axum::Router::new()
        .route("/", get(pages::fleet))
        .route("/events", get(pages::events))
        .route("/proof", get(pages::proof))
        .route("/db/:project/:database", get(pages::database))
        .route("/db/:project/:database/:action", post(actions::act))
        .route("/login", get(pages::login_form).post(actions::login))
        .route("/logout", post(actions::logout))
        .route("/assets/app.css", get(|| async { asset("text/css; charset=utf-8", dashboard::assets::APP_CSS) }))
        .route("/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", dashboard::assets::APP_JS) }))
        .layer(tower_http::compression::CompressionLayer::new())
        .with_state(state)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    ];
    (headers, body).into_response()
}

/// An HTML answer with the headers every page carries: no caching, no framing, and a content
/// security policy that admits only the dashboard's own script and stylesheet.
pub(crate) fn html(status: StatusCode, body: String) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("same-origin")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ),
    ];
    (status, headers, body).into_response()
}

/// Someone signed in with the admin token.
pub(crate) struct Caller {
    /// The admin token, passed on to the admin API.
    pub secret: String,
    /// The cookie session's id; None for `Authorization: Bearer`.
    pub session: Option<String>,
    pub view: dashboard::Session,
}

/// Why a request gets no data.
pub(crate) enum Refused {
    /// No credentials or bad ones: the login page for a page, 401 for the rest.
    Unauthenticated(String),
    Forbidden(String),
}

impl Dashboard {
    /// The signed-in caller of a request: a cookie session whose token is still valid, or a
    /// bearer admin token.
    pub(crate) async fn caller(&self, headers: &HeaderMap) -> Result<Caller, Refused> {
        if let Some(token) = session::bearer(headers) {
            return match self.admin.auth.admin(Some(token)).await {
                Ok(_) => Ok(Caller {
                    secret: token.to_string(),
                    session: None,
                    view: dashboard::Session { csrf: String::new(), cookie: false },
                }),
                Err(e) => Err(Refused::Unauthenticated(e.to_string())),
            };
        }
        let Some(id) = session::cookie(headers) else {
            return Err(Refused::Unauthenticated("sign in with an admin token".into()));
        };
        let Some(s) = self.sessions.get(id) else {
            return Err(Refused::Unauthenticated("the session ended: sign in again".into()));
        };
        if let Err(e) = self.admin.auth.admin(Some(&s.secret)).await {
            self.sessions.remove(id);
            return Err(Refused::Unauthenticated(format!("the session's token no longer works ({e}): sign in again")));
        }
        Ok(Caller {
            secret: s.secret,
            session: Some(id.to_string()),
            view: dashboard::Session { csrf: s.csrf, cookie: true },
        })
    }

    /// Every database, from the admin API (shared by all open pages for two seconds).
    pub(crate) async fn snapshot(&self, secret: &str) -> Result<Arc<Snapshot>, tonic::Status> {
        if let Some((at, s)) = self.snapshot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if at.elapsed() < SNAPSHOT_FOR {
                return Ok(s.clone());
            }
        }
        let dbs = self.admin.list_databases(request(secret, v1::ListDatabasesRequest::default())).await?;
        let instances = self.admin.list_instances(request(secret, v1::ListInstancesRequest::default())).await?;
        let writers = instances
            .into_inner()
            .instances
            .into_iter()
            .filter_map(|i| i.instance)
            .map(|i| (i.instance_id, (i.host, i.platform)))
            .collect();
        let snap = Arc::new(Snapshot { at: now_ms(), databases: dbs.into_inner().databases, writers });
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), snap.clone()));
        Ok(snap)
    }

    /// Forgets the snapshot (after an action changed something).
    pub(crate) fn invalidate(&self) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A request to the admin API carrying the caller's token.
pub(crate) fn request<T>(secret: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {secret}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// The HTTP status for an admin API error.
pub(crate) fn status_code(s: &tonic::Status) -> StatusCode {
    use tonic::Code;
    match s.code() {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::AlreadyExists | Code::FailedPrecondition => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The answer to a refused request: pages (GET, not a live refresh) go to the login form.
pub(crate) fn refusal(r: Refused, headers: &HeaderMap, page: Option<&str>) -> Response {
    match r {
        Refused::Unauthenticated(why) => match page {
            Some(next) if headers.get("x-live").is_none() => {
                Redirect::to(&format!("/login?next={}", encode(next))).into_response()
            }
            _ => (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], format!("{why}\n")).into_response(),
        },
        Refused::Forbidden(why) => (StatusCode::FORBIDDEN, format!("{why}\n")).into_response(),
    }
}

/// Percent-encodes a path and query for `?next=`.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
