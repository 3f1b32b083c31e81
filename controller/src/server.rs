//! `walfleet serve`: the store, the gRPC services (optionally over rustls), the HTTP endpoint
//! and the report flusher, under one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::routing::get;
use proto::v1::admin_service_server::AdminServiceServer;
use proto::v1::agent_service_server::AgentServiceServer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::auth::{self, Auth};
use crate::config::ServeArgs;
use crate::grpc::admin::AdminApi;
use crate::grpc::agent::AgentApi;
use crate::inventory::{Inventory, Prices};
use crate::lease::{now_ms, Leases};
use crate::metrics::Metrics;
use crate::store::{self, Store, TokenKind};

/// Creates the first admin token when the store has none: the given one, or a new one printed
/// once on stdout.
async fn bootstrap_admin(store: &Arc<dyn Store>, given: Option<&str>) -> Result<()> {
    if store.count_admin_tokens().await? > 0 {
        return Ok(());
    }
    let now = now_ms();
    let token = match given {
        Some(secret) => auth::from_secret(secret.to_string(), "bootstrap".into(), TokenKind::Admin, None, now),
        None => auth::generate(TokenKind::Admin, None, now),
    };
    match store.insert_token(&token.row).await {
        Ok(()) => {}
        // Another controller sharing the store bootstrapped at the same moment.
        Err(store::StoreError::AlreadyExists { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if given.is_none() {
        println!("admin token (shown once, store it now): {}", token.secret);
    }
    info!(token_id = %token.row.id, "created the first admin token");
    Ok(())
}

pub async fn serve(args: ServeArgs, cancel: CancellationToken) -> Result<()> {
    let store = store::connect(&args.database_url).await?;
    bootstrap_admin(&store, args.admin_token.as_deref()).await?;
    let leases = Leases::new(store.clone(), args.lease_ttl);
    let auth = Arc::new(Auth::new(store.clone()));
    let metrics = Arc::new(Metrics::default());
    let tracker = TaskTracker::new();

    let http =
        tokio::net::TcpListener::bind(args.http_addr).await.with_context(|| format!("bind {}", args.http_addr))?;
    let grpc =
        tokio::net::TcpListener::bind(args.grpc_addr).await.with_context(|| format!("bind {}", args.grpc_addr))?;
    let (grpc_addr, http_addr): (SocketAddr, SocketAddr) = (grpc.local_addr()?, http.local_addr()?);
    info!(grpc = %grpc_addr, http = %http_addr, store = store.backend(), ttl = ?args.lease_ttl, "controller listening");

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
    tracker.spawn(async move {
        let _ = axum::serve(http, app).with_graceful_shutdown(c.cancelled_owned()).await;
    });

    let agent =
        AgentApi { leases: leases.clone(), inventory: inventory.clone(), auth: auth.clone(), metrics: metrics.clone() };
    let admin = AdminApi { leases: leases.clone(), inventory, auth, metrics };
    let mut builder = tonic::transport::Server::builder();
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
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
