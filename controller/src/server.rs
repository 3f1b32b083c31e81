//! `walfleet serve`: the store, the gRPC services (optionally over rustls), the HTTP endpoint
//! and the report flusher, under one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::routing::get;
use proto::v1::admin_service_server::AdminServiceServer;
use proto::v1::agent_service_server::AgentServiceServer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::{self, Auth};
use crate::config::{AdminTokenFile, ServeArgs};
use crate::grpc::admin::AdminApi;
use crate::grpc::agent::AgentApi;
use crate::inventory::{Inventory, Prices};
use crate::lease::{now_ms, Leases};
use crate::metrics::Metrics;
use crate::store::{self, Store, TokenKind};

/// Creates the first admin token, only into an empty store (no token, revoked or not, and no
/// project): the given one, or a new one written to a file of mode 0600 whose path is printed.
/// A store whose admin tokens were all revoked stays that way (`walfleet recover-admin`).
async fn bootstrap_admin(
    store: &Arc<dyn Store>,
    given: Option<&str>,
    file: &AdminTokenFile,
    database_url: &str,
) -> Result<()> {
    if !store.list_tokens(None).await?.is_empty() || !store.list_projects().await?.is_empty() {
        if store.count_admin_tokens().await? == 0 {
            warn!(
                "every admin token of this store is revoked; WALFLEET_ADMIN_TOKEN is adopted only by an empty store: \
                 run `walfleet recover-admin --database-url …` where the controller runs to create one"
            );
        } else if given.is_some() {
            info!("the store has tokens already; WALFLEET_ADMIN_TOKEN was not adopted (only an empty store adopts it)");
        }
        return Ok(());
    }
    let now = now_ms();
    match given {
        Some(secret) => {
            let token = auth::from_secret(secret.to_string(), "bootstrap".into(), TokenKind::Admin, None, now);
            match store.insert_token(&token.row).await {
                Ok(()) => info!(token_id = %token.row.id, "adopted WALFLEET_ADMIN_TOKEN as the first admin token"),
                // Another controller sharing the store bootstrapped at the same moment.
                Err(store::StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            Ok(())
        }
        None => {
            let path = new_admin_token(store, file, database_url).await?;
            if let Some(path) = path {
                println!("admin token written to {} (mode 0600; read it, then keep it safe)", path.display());
            }
            Ok(())
        }
    }
}

/// Generates an admin token, writes its secret to a new file (mode 0600, never replacing one),
/// then stores its hash. `None` when another controller stored a token first.
async fn new_admin_token(
    store: &Arc<dyn Store>,
    file: &AdminTokenFile,
    database_url: &str,
) -> Result<Option<std::path::PathBuf>> {
    let path = admin_token_path(file, database_url);
    let token = auth::generate(TokenKind::Admin, None, now_ms());
    write_secret_file(&path, &token.secret)?;
    match store.insert_token(&token.row).await {
        Ok(()) => {
            info!(token_id = %token.row.id, path = %path.display(), "created an admin token");
            Ok(Some(path))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            match e {
                store::StoreError::AlreadyExists { .. } => Ok(None),
                e => Err(e.into()),
            }
        }
    }
}

fn admin_token_path(file: &AdminTokenFile, database_url: &str) -> std::path::PathBuf {
    if let Some(p) = &file.path {
        return p.clone();
    }
    match database_url.strip_prefix("sqlite://").map(|p| p.split('?').next().unwrap_or(p)) {
        Some(db) if !db.is_empty() && db != ":memory:" => format!("{db}.admin-token").into(),
        _ => "walfleet-admin-token".into(),
    }
}

fn write_secret_file(path: &std::path::Path, secret: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).with_context(|| {
        format!(
            "create the admin token file {} (it must not exist yet; --admin-token-file names another)",
            path.display()
        )
    })?;
    f.write_all(format!("{secret}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// `walfleet recover-admin`: a new admin token straight into the store, written to a file.
pub async fn recover_admin(database_url: &str, file: &AdminTokenFile) -> Result<()> {
    let store = store::connect(database_url).await?;
    match new_admin_token(&store, file, database_url).await? {
        Some(path) => println!("admin token written to {} (mode 0600)", path.display()),
        None => bail!("a token with the same id or hash exists already; run it again"),
    }
    Ok(())
}

pub async fn serve(args: ServeArgs, cancel: CancellationToken) -> Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => None,
    };
    crate::tls::check_plaintext(
        &[("--grpc-addr", args.grpc_addr), ("--http-addr", args.http_addr)],
        tls.is_some(),
        args.insecure_plaintext,
    )?;
    let https = match &tls {
        Some((cert, key)) => Some(crate::tls::server_config(cert, key)?),
        None => None,
    };
    let store = store::connect(&args.database_url).await?;
    bootstrap_admin(&store, args.admin_token.as_deref(), &args.admin_token_file, &args.database_url).await?;
    let leases = Leases::new(store.clone(), args.lease_ttl);
    let auth = Arc::new(Auth::new(store.clone()));
    let metrics = Arc::new(Metrics::default());
    let tracker = TaskTracker::new();

    let http =
        tokio::net::TcpListener::bind(args.http_addr).await.with_context(|| format!("bind {}", args.http_addr))?;
    let grpc =
        tokio::net::TcpListener::bind(args.grpc_addr).await.with_context(|| format!("bind {}", args.grpc_addr))?;
    let (grpc_addr, http_addr): (SocketAddr, SocketAddr) = (grpc.local_addr()?, http.local_addr()?);
    info!(grpc = %grpc_addr, http = %http_addr, tls = tls.is_some(), store = store.backend(), ttl = ?args.lease_ttl, "controller listening");

    tracker.spawn(leases.clone().run_flusher(cancel.clone()));
    let prices = Prices { storage_gb_month: args.price_storage_gb_month, put_per_1000: args.price_put_per_1000 };
    let keys = match &args.drill_keys {
        Some(path) => crate::inventory::read_keys(path)?,
        None => Default::default(),
    };
    let inventory = Inventory::new(leases.clone(), prices, args.scan_interval, args.stall_after, keys);
    tracker.spawn(inventory.clone().run_scanner(cancel.clone()));
    tracker.spawn(inventory.clone().run_watcher(cancel.clone()));
    tracker.spawn(inventory.clone().run_drills(args.drill_interval, args.drill_check, cancel.clone()));

    let m = metrics.clone();
    let app = axum::Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let m = m.clone();
            async move { m.render() }
        }),
    );
    let app = app.merge(crate::http::router(&leases, &inventory, &auth, &metrics, &args));
    let c = cancel.clone();
    match https {
        Some(config) => {
            tracker.spawn(crate::tls::serve_https(http, app, config, c));
        }
        None => {
            tracker.spawn(async move {
                let _ = axum::serve(http, app).with_graceful_shutdown(c.cancelled_owned()).await;
            });
        }
    }

    let agent =
        AgentApi { leases: leases.clone(), inventory: inventory.clone(), auth: auth.clone(), metrics: metrics.clone() };
    let admin = AdminApi { leases: leases.clone(), inventory, auth, metrics };
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &tls {
        let cert = std::fs::read(cert).with_context(|| format!("read --tls-cert {}", cert.display()))?;
        let key = std::fs::read(key).with_context(|| format!("read --tls-key {}", key.display()))?;
        let tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
        builder = builder.tls_config(tls).context("configure tls")?;
    }
    // Small answers go out at once: with Nagle's algorithm an answer's last frame waited for
    // the client's delayed ACK (tens of milliseconds in the tail of every heartbeat).
    let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
    let result = builder
        .add_service(AgentServiceServer::new(agent))
        .add_service(AdminServiceServer::new(admin))
        .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned())
        .await
        .context("serve grpc");
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    info!("controller stopped");
    result
}
