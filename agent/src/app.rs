//! What each command does, callable in-process with a cancellation token.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::config::{Command, GenerationsArgs, ReplicateConfig, RestoreConfig};
use crate::control::Mode;
use crate::health::{self, Registry};
use crate::manifest::Manifest;
use crate::object_store::ObjectStore;
use crate::replicate::ReplicateOptions;
use crate::restore::{self, RestoreOptions, RestoreOutcome};
use crate::run::StartOptions;

/// Runs a command to completion; returns the process exit code.
pub async fn run(command: Command, cancel: CancellationToken) -> Result<i32> {
    match command {
        Command::Replicate(args) => replicate(args.resolve()?, !args.no_stale_protection, cancel).await.map(|()| 0),
        Command::Run(args) => crate::run::run(args.resolve()?, cancel).await,
        Command::Restore(args) => restore_cmd(args.resolve()?).await,
        Command::Generations(args) => generations(args).await.map(|()| 0),
    }
}

/// Sidecar mode: restore where needed, then replicate until cancelled.
pub async fn replicate(cfg: ReplicateConfig, stale_protection: bool, cancel: CancellationToken) -> Result<()> {
    let _locks = crate::run::lock_databases(&cfg)?;
    let registry = Arc::new(Registry::default());
    let tracker = TaskTracker::new();
    let http = tracker.spawn(health::serve(cfg.http_addr, registry.clone(), cancel.clone()));
    let opts = StartOptions {
        stale_protection,
        shutdown_timeout: ReplicateOptions::default().shutdown_timeout,
        mode: Mode::Replicate,
        app_stop: None,
        release_timeout: Duration::from_secs(2),
        rollback: None,
    };
    let started = crate::run::start_databases(&cfg, &registry, &cancel, &opts).await;
    let started = match started {
        Ok(t) => t,
        Err(e) => {
            cancel.cancel();
            let _ = http.await;
            return Err(e);
        }
    };
    tracker.close();
    let mut first_err = None;
    // In the order they end: one database failing (or handed over) must stop the others now,
    // not when the ones before it in the list happen to finish.
    let mut pending: FuturesUnordered<_> =
        started.tasks.into_iter().map(|(name, t)| async move { (name, t.await) }).collect();
    while let Some((name, res)) = pending.next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(db = %name, error = %format!("{e:#}"), "replication stopped");
                // One database failing stops the agent: the platform should see it.
                cancel.cancel();
                first_err.get_or_insert(e);
            }
            Err(e) => {
                cancel.cancel();
                first_err.get_or_insert(anyhow::Error::from(e));
            }
        }
    }
    cancel.cancel();
    if let Some(c) = started.commands {
        let _ = c.await;
    }
    if let Ok(Err(e)) = http.await {
        first_err.get_or_insert(e);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub async fn restore_cmd(cfg: RestoreConfig) -> Result<i32> {
    let store = Arc::new(
        ObjectStore::from_url(&cfg.replica_url)
            .await
            .with_context(|| format!("open replica {}", cfg.replica_url))?
            .with_encryption(cfg.encryption_key.as_ref()),
    );
    let opts = RestoreOptions {
        output: cfg.output.clone(),
        target: cfg.target,
        if_db_not_exists: cfg.if_db_not_exists,
        if_replica_exists: cfg.if_replica_exists,
        integrity_check: cfg.integrity_check,
        replica_url: Some(cfg.replica_url.clone()),
    };
    let started = std::time::Instant::now();
    match restore::restore(store, &opts).await? {
        RestoreOutcome::Restored { applied, generation } => {
            info!(
                output = %cfg.output.display(),
                txid = %applied.txid,
                checksum = %format!("{:016x}", applied.checksum),
                generation = %generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
                files = applied.files,
                bytes = applied.bytes,
                pages = applied.pages,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "restored"
            );
        }
        RestoreOutcome::SkippedDbExists => info!(output = %cfg.output.display(), "database exists; nothing restored"),
        RestoreOutcome::SkippedNoReplica => info!(replica = %cfg.replica_url, "no replica yet; nothing restored"),
    }
    Ok(0)
}

async fn generations(args: GenerationsArgs) -> Result<()> {
    let store = ObjectStore::from_url(&args.replica_url).await?;
    let top = store.list("", Some("/")).await?;
    let mut rows = Vec::new();
    for g in crate::layout::generations(&top) {
        let manifest = Manifest::load(&store, g).await?;
        let files = restore::list_generation(&store, &crate::layout::generation_prefix(g)).await?;
        let latest = restore::plan::latest(&files);
        rows.push(serde_json::json!({
            "generation": g.to_string(),
            "parent": manifest.as_ref().and_then(|m| m.parent.as_ref()).map(|p| format!("{}@{}", p.generation, p.position.txid)),
            "created_at": manifest.as_ref().map(|m| m.created_at.to_rfc3339()),
            "writer": manifest.as_ref().map(|m| format!("{}/{}", m.writer.host, m.writer.instance)),
            "sealed": manifest.as_ref().and_then(|m| m.sealed.as_ref()).map(|s| s.txid.to_string()),
            "latest_txid": latest.map(|t| t.to_string()),
            "files": files.len(),
            "bytes": files.iter().map(|f| f.size).sum::<u64>(),
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<18} {:<30} {:<18} {:<8} {:>7} {:>12}  WRITER",
            "GENERATION", "PARENT", "LATEST", "SEALED", "FILES", "BYTES"
        );
        for r in rows {
            let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
            println!(
                "{:<18} {:<30} {:<18} {:<8} {:>7} {:>12}  {}",
                s("generation"),
                s("parent"),
                s("latest_txid"),
                if r["sealed"].is_null() { "no" } else { "yes" },
                r["files"].as_u64().unwrap_or(0),
                r["bytes"].as_u64().unwrap_or(0),
                s("writer")
            );
        }
    }
    Ok(())
}
