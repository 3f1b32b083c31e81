//! The admin verbs: gRPC calls to a controller, printed as a table or as JSON (`--json`).

use anyhow::{bail, Context, Result};
use proto::v1::admin_service_client::AdminServiceClient;
use proto::v1::{self};
use serde_json::{json, Value};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::{ClientArgs, Command, TokensVerb};

mod projects;

type Client = AdminServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel to `url`, with TLS when it is https (a private CA from `ca`, else webpki roots).
pub async fn channel(url: &str, ca: Option<&std::path::Path>) -> Result<Channel> {
    let mut ep = Endpoint::from_shared(url.to_string()).with_context(|| format!("invalid controller URL {url:?}"))?;
    if let Some(host) = proto::endpoint::plaintext_remote_host(url) {
        tracing::warn!(
            controller = %url,
            host = %host,
            "the token goes to a non-loopback host over plaintext http: use an https:// controller URL"
        );
    }
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).with_context(|| format!("read CA file {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        ep = ep.tls_config(tls).context("configure tls")?;
    }
    ep = ep.connect_timeout(std::time::Duration::from_secs(5)).timeout(std::time::Duration::from_secs(30));
    ep.connect().await.with_context(|| format!("connect to controller {url}"))
}

async fn client(c: &ClientArgs) -> Result<Client> {
    let Some(token) = c.token.as_deref() else {
        bail!("no admin token: set WALFLEET_ADMIN_TOKEN or pass --admin-token");
    };
    let value = format!("Bearer {token}").parse().context("admin token is not valid ASCII")?;
    let ch = channel(&c.controller, c.ca.as_deref()).await?;
    Ok(AdminServiceClient::with_interceptor(ch, Bearer(Some(value))))
}

/// `PROJECT/DB`.
fn target(s: &str) -> Result<(String, String)> {
    match s.split_once('/') {
        Some((p, d)) if !p.is_empty() && !d.is_empty() && !d.contains('/') => Ok((p.into(), d.into())),
        _ => bail!("expected PROJECT/DB, got {s:?}"),
    }
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("controller refused: {} ({:?})", e.message(), e.code())
}

fn ms(t: i64) -> String {
    if t <= 0 {
        return "-".into();
    }
    chrono::DateTime::from_timestamp_millis(t)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// Prints rows as aligned columns.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut width: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = width[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn print(json_out: bool, v: Value, headers: &[&str], rows: Vec<Vec<String>>) -> Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        table(headers, rows);
    }
    Ok(())
}

fn drill_json(d: &v1::DrillResult) -> Value {
    json!({"at_unix_ms": d.at_unix_ms, "ok": d.ok, "generation": d.generation, "txid": d.txid,
        "duration_ms": d.duration_ms, "message": d.message, "expected_checksum": d.expected_checksum,
        "restored_checksum": d.restored_checksum})
}

fn database_json(d: &v1::DatabaseInfo) -> Value {
    json!({
        "project": d.project, "name": d.name, "policy": d.policy, "status": d.status,
        "status_reason": d.status_reason, "holder_instance_id": d.holder_instance_id,
        "generation": d.generation, "generation_chain": d.generation_chain,
        "lease_expires_at_unix_ms": d.lease_expires_at_unix_ms, "head": pos(&d.head),
        "local_txid": d.local_txid, "durable_txid": d.durable_txid, "lag_seconds": d.lag_seconds,
        "lag_bytes": d.lag_bytes, "last_upload_unix_ms": d.last_upload_unix_ms,
        "last_report_unix_ms": d.last_report_unix_ms, "replica_url": d.replica_url,
        "window": d.scan.as_ref().map(|s| json!({
            "earliest": {"generation": s.earliest_generation, "txid": s.earliest_txid, "unix_ms": s.earliest_unix_ms},
            "latest": {"generation": s.latest_generation, "txid": s.latest_txid, "unix_ms": s.latest_unix_ms},
        })),
        "objects": d.scan.as_ref().map(|s| s.objects), "bytes": d.scan.as_ref().map(|s| s.bytes),
        "scan": d.scan.as_ref().map(|s| json!({"at_unix_ms": s.at_unix_ms, "drift": s.drift, "requests": s.requests, "error": s.error})),
        "monthly_cost": {"storage": d.monthly_storage_cost, "requests": d.monthly_request_cost,
            "total": d.monthly_storage_cost + d.monthly_request_cost},
        "last_drill": d.last_drill.as_ref().map(drill_json),
        "created_at_unix_ms": d.created_at_unix_ms,
    })
}

/// Where `walfleet restore` puts the database.
enum Into {
    File(std::path::PathBuf),
    Clone {
        target: String,
        replica: Option<String>,
        /// Seals the clone's objects; an encrypted source's clone is never written in the clear
        /// unless asked.
        key: Option<agent::object_store::EncryptionKey>,
    },
    /// Roll the running app back to the point (its agent restores it).
    Live {
        wait: std::time::Duration,
    },
    Nowhere,
}

/// `walfleet restore`: the controller names the replica and audits; this machine restores.
async fn restore(
    t: &str,
    to: Into,
    txid: Option<u64>,
    timestamp: Option<String>,
    dry_run: bool,
    key: Option<agent::object_store::EncryptionKey>,
    c: &ClientArgs,
) -> Result<i32> {
    use agent::restore::{self, Target};
    let (project, database) = target(t)?;
    let point = match (txid, &timestamp) {
        (Some(n), _) => Target::Txid(proto::model::Txid(n)),
        (None, Some(ts)) => Target::Timestamp(
            chrono::DateTime::parse_from_rfc3339(ts)
                .with_context(|| format!("--timestamp {ts:?} is not an RFC 3339 time"))?
                .with_timezone(&chrono::Utc),
        ),
        (None, None) => Target::Latest,
    };
    let point_text = match point {
        Target::Latest => "the latest point".to_string(),
        Target::Txid(n) => format!("transaction {}", n.0),
        Target::Timestamp(ts) => format!("time {}", ts.to_rfc3339()),
        Target::At(g, n) => format!("generation {} transaction {}", g.0, n.0),
    };
    let destination = match &to {
        Into::File(p) => format!("file {}", p.display()),
        Into::Clone { target: t2, .. } => format!("{} (clone, a new lineage)", t2),
        Into::Live { .. } => "the running app (live rollback)".to_string(),
        Into::Nowhere => "nowhere (dry run)".to_string(),
    };
    if let Into::File(out) = &to {
        if out.exists() {
            bail!("output {} already exists; restore never overwrites a file", out.display());
        }
    }
    let into = match &to {
        Into::Clone { target: t2, .. } => Some(target(t2)?),
        _ => None,
    };
    let mut cl = client(c).await?;
    let begun = cl
        .begin_restore(v1::BeginRestoreRequest {
            project: project.clone(),
            database: database.clone(),
            point: point_text.clone(),
            destination: destination.clone(),
            dry_run,
        })
        .await
        .map_err(status)?
        .into_inner();
    let url = begun.replica_url;
    let store = std::sync::Arc::new(
        agent::object_store::ObjectStore::from_url(&url)
            .await
            .with_context(|| format!("open replica {url}"))?
            .with_encryption(key.as_ref()),
    );
    if let (Into::Live { wait }, false) = (&to, dry_run) {
        let result = rollback(&mut cl, &store, (&project, &database), point, begun.restore_id, *wait).await;
        return end_restore(&mut cl, t, (project, database), begun.restore_id, &destination, &point_text, result, c)
            .await;
    }
    if dry_run {
        let chosen = restore::choose(&store, point).await?;
        let bytes: u64 = chosen.plan.iter().map(|f| f.size).sum();
        let plan = json!({
            "database": t, "replica": url, "point": point_text, "destination": destination,
            "generation": chosen.generation.map(|g| g.0), "txid": chosen.txid().0,
            "files": chosen.plan.iter().map(|f| json!({"key": f.key, "level": f.level, "min_txid": f.min.0, "max_txid": f.max.0, "bytes": f.size})).collect::<Vec<_>>(),
            "bytes": bytes,
        });
        if c.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            println!("would restore {t} at {point_text} from {url} to {destination}: generation {:?}, transaction {}, {} files, {bytes} bytes",
                chosen.generation.map(|g| g.0), chosen.txid().0, chosen.plan.len());
            for f in &chosen.plan {
                println!("  {} (level {}, transactions {}..{}, {} bytes)", f.key, f.level, f.min.0, f.max.0, f.size);
            }
        }
        return Ok(0);
    }
    let scratch = tempfile::tempdir().context("create scratch directory")?;
    let out = match &to {
        Into::File(p) => p.clone(),
        _ => scratch.path().join("restored.db"),
    };
    let opts = restore::RestoreOptions {
        output: out.clone(),
        target: point,
        if_db_not_exists: false,
        if_replica_exists: false,
        integrity_check: true,
        replica_url: None,
    };
    let result = async {
        let (applied, generation) = match restore::restore(store, &opts).await? {
            restore::RestoreOutcome::Restored { applied, generation } => (applied, generation),
            other => bail!("nothing restored: {other:?}"),
        };
        let mut message = format!(
            "restored {point_text} to {destination}: generation {}, transaction {}, checksum {:016x}, {} files, {} bytes",
            generation.map_or(0, |g| g.0),
            applied.txid.0,
            applied.checksum,
            applied.files,
            applied.bytes
        );
        if let (Some((p2, d2)), Into::Clone { replica, key, .. }) = (&into, &to) {
            let source = format!("{t} at transaction {}", applied.txid.0);
            let g = clone_into(&mut cl, (p2, d2), replica.clone(), key.as_ref(), &out, &source).await?;
            message.push_str(&format!("; {p2}/{d2} generation {} holds it", g.0));
        }
        Ok(message)
    }
    .await;
    end_restore(&mut cl, t, (project, database), begun.restore_id, &destination, &point_text, result, c).await
}

/// Records how an audited restore ended, and prints it.
#[allow(clippy::too_many_arguments)]
async fn end_restore(
    cl: &mut Client,
    t: &str,
    (project, database): (String, String),
    restore_id: i64,
    destination: &str,
    point_text: &str,
    result: Result<String>,
    c: &ClientArgs,
) -> Result<i32> {
    let (ok, message) = match result {
        Ok(m) => (true, m),
        Err(e) => (false, format!("restore of {point_text} to {destination} failed: {e:#}")),
    };
    let audit =
        cl.end_restore(v1::EndRestoreRequest { project, database, restore_id, ok, message: message.clone() }).await;
    if let Err(e) = audit {
        eprintln!("warning: the controller did not record the end of the restore: {}", e.message());
    }
    if !ok {
        bail!("{message}");
    }
    if c.json {
        println!("{}", json!({"database": t, "destination": destination, "ok": true, "message": message}));
    } else {
        println!("{message}");
    }
    Ok(0)
}

/// A live rollback: the exact point (generation, transaction) from the restore plan, asked of
/// the database's writer, then followed until a new generation continues from it.
async fn rollback(
    cl: &mut Client,
    store: &std::sync::Arc<agent::object_store::ObjectStore>,
    (project, database): (&str, &str),
    point: agent::restore::Target,
    restore_id: i64,
    wait: std::time::Duration,
) -> Result<String> {
    let chosen = agent::restore::choose(store, point).await?;
    let Some(generation) = chosen.generation else {
        bail!("the replica holds no generations (a Litestream replica?): a live rollback needs walfleet's layout");
    };
    let txid = chosen.txid();
    let asked = cl
        .rollback(v1::RollbackRequest {
            project: project.to_string(),
            database: database.to_string(),
            point: Some(v1::Position { generation: generation.0, txid: txid.0 }),
            restore_id,
        })
        .await
        .map_err(status)?
        .into_inner();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let state = cl
            .get_rollback(v1::GetRollbackRequest {
                project: project.to_string(),
                database: database.to_string(),
                restore_id,
            })
            .await
            .map_err(status)?
            .into_inner();
        if state.state == "done" {
            return Ok(format!(
                "rolled {project}/{database} back to generation {} transaction {}: instance {} stopped its app, \
                 instance {} restored the point and writes generation {} from it; generation {} stays restorable",
                generation.0, txid.0, asked.instance_id, state.instance_id, state.generation, asked.generation
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "instance {} did not finish the rollback within {} (state {:?}); see `walfleet events`",
                asked.instance_id,
                humantime::format_duration(wait),
                state.state
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Writes the restored database at `db` as a new lineage of `p2/d2`.
async fn clone_into(
    cl: &mut Client,
    (p2, d2): (&str, &str),
    replica: Option<String>,
    key: Option<&agent::object_store::EncryptionKey>,
    db: &std::path::Path,
    source: &str,
) -> Result<proto::model::Generation> {
    // The controller never issues a number below what the target's replica already holds.
    let known = match &replica {
        Some(u) => Some(u.clone()),
        None => {
            let r = cl
                .get_retention(v1::GetRetentionRequest { project: p2.into(), database: d2.into() })
                .await
                .ok()
                .map(|r| r.into_inner().replica_url);
            r.filter(|u| !u.is_empty())
        }
    };
    let min_generation = match &known {
        Some(u) => {
            let s = agent::object_store::ObjectStore::from_url(u).await.with_context(|| format!("open replica {u}"))?;
            let top = s.list("", Some("/")).await.with_context(|| format!("list replica {u}"))?;
            // Past u64 there is no next number: ask for u64::MAX and let the controller refuse.
            agent::layout::generations(&top).last().map_or(1, |g| g.0.saturating_add(1))
        }
        None => 1,
    };
    let begun = cl
        .begin_clone(v1::BeginCloneRequest {
            project: p2.into(),
            database: d2.into(),
            replica_url: replica.unwrap_or_default(),
            min_generation,
        })
        .await
        .map_err(status)?
        .into_inner();
    let g = proto::model::Generation(begun.generation);
    let store = agent::object_store::ObjectStore::from_url(&begun.replica_url)
        .await
        .with_context(|| format!("open replica {}", begun.replica_url))?
        .with_encryption(key);
    let writer = agent::manifest::Writer {
        instance: "clone".into(),
        host: agent::replicate::hostname(),
        pid: std::process::id(),
        platform: None,
    };
    let seeded = agent::seed::seed(&store, g, db, writer).await?;
    cl.end_clone(v1::EndCloneRequest {
        project: p2.into(),
        database: d2.into(),
        generation: g.0,
        txid: seeded.txid.0,
        source: source.into(),
    })
    .await
    .map_err(status)?;
    Ok(g)
}

/// `walfleet retention`: set the policy, or plan it over the bucket's listing exactly as the
/// agent will (the same planning code).
async fn retention(
    t: &str,
    keep: Option<std::time::Duration>,
    clear: bool,
    dry_run: bool,
    c: &ClientArgs,
) -> Result<i32> {
    let (project, database) = target(t)?;
    let mut cl = client(c).await?;
    if !dry_run && (keep.is_some() || clear) {
        let keep_ms = keep.map_or(0, |k| k.as_millis() as u64);
        cl.set_retention(v1::SetRetentionRequest { project, database, keep_ms }).await.map_err(status)?;
        if c.json {
            println!("{}", json!({"database": t, "keep_ms": keep_ms}));
        } else if keep_ms == 0 {
            println!("{t}: retention cleared; everything is kept");
        } else {
            println!("{t}: keeping {} of point-in-time restore", humantime::format_duration(keep.unwrap_or_default()));
        }
        return Ok(0);
    }
    let info = cl
        .get_retention(v1::GetRetentionRequest { project: project.clone(), database: database.clone() })
        .await
        .map_err(status)?
        .into_inner();
    let keep_ms = keep.map_or(info.keep_ms, |k| k.as_millis() as u64);
    if !dry_run {
        if c.json {
            println!("{}", json!({"database": t, "keep_ms": keep_ms}));
        } else if keep_ms == 0 {
            println!("{t}: no retention policy; everything is kept");
        } else {
            println!("{t}: keeping {}", humantime::format_duration(std::time::Duration::from_millis(keep_ms)));
        }
        return Ok(0);
    }
    if info.replica_url.is_empty() {
        bail!("no replica URL recorded for {t}: no agent has reported one");
    }
    let plan = if keep_ms == 0 {
        agent::retention::Plan::default()
    } else {
        let store = agent::object_store::ObjectStore::from_url(&info.replica_url)
            .await
            .with_context(|| format!("open replica {}", info.replica_url))?;
        let mut listing = agent::retention::list(&store).await?;
        // Without the key an encrypted database's manifests are unreadable here: take the
        // parents the controller recorded, so the plan matches the agent's.
        if listing.iter().any(|l| l.origin == agent::retention::Origin::Unknown) {
            let recorded = cl
                .list_generations(v1::ListGenerationsRequest { project, database })
                .await
                .map_err(status)?
                .into_inner()
                .generations;
            for l in listing.iter_mut().filter(|l| l.origin == agent::retention::Origin::Unknown) {
                if let Some(g) = recorded.iter().find(|g| g.generation == l.generation.0) {
                    l.origin = match &g.parent {
                        Some(p) => agent::retention::Origin::From {
                            generation: proto::model::Generation(p.generation),
                            txid: proto::model::Txid(p.txid),
                        },
                        None => agent::retention::Origin::New,
                    };
                }
            }
        }
        agent::retention::plan(
            &listing,
            proto::model::Generation(info.current_generation),
            std::time::Duration::from_millis(keep_ms),
            std::time::SystemTime::now(),
        )
    };
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"database": t, "replica": info.replica_url, "keep_ms": keep_ms,
                "current_generation": info.current_generation, "delete": plan.keys, "bytes": plan.bytes,
                "earliest_txid_after": plan.earliest.map(|t| t.0)}))?
        );
    } else {
        println!(
            "{t}: {} objects ({} bytes) would go under a {} window",
            plan.keys.len(),
            plan.bytes,
            humantime::format_duration(std::time::Duration::from_millis(keep_ms))
        );
        for k in &plan.keys {
            println!("  {k}");
        }
    }
    Ok(0)
}

fn pos(p: &Option<v1::Position>) -> Value {
    match p {
        Some(p) => json!({"generation": p.generation, "txid": p.txid}),
        None => Value::Null,
    }
}

pub async fn run(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Serve(_) => unreachable!("serve is dispatched by main"),
        Command::RecoverAdmin { database_url, file } => {
            crate::server::recover_admin(&database_url, &file).await?;
        }
        Command::Projects { verb, client: c } => projects::run(verb, &c).await?,
        Command::Tokens { verb, client: c } => {
            let mut cl = client(&c).await?;
            match verb {
                TokensVerb::Create { project, admin } => {
                    let req = v1::CreateTokenRequest {
                        kind: if admin { "admin" } else { "agent" }.into(),
                        project: project.unwrap_or_default(),
                    };
                    let r = cl.create_token(req).await.map_err(status)?.into_inner();
                    if c.json {
                        println!("{}", json!({"token": r.token, "token_id": r.token_id}));
                    } else {
                        println!("token {} (shown once, store it now): {}", r.token_id, r.token);
                    }
                }
                TokensVerb::Revoke { token_id } => {
                    cl.revoke_token(v1::RevokeTokenRequest { token_id: token_id.clone() }).await.map_err(status)?;
                    if c.json {
                        println!("{}", json!({"revoked": token_id}));
                    } else {
                        println!("token {token_id} revoked");
                    }
                }
                TokensVerb::List { project } => {
                    let r = cl
                        .list_tokens(v1::ListTokensRequest { project: project.unwrap_or_default() })
                        .await
                        .map_err(status)?
                        .into_inner();
                    let v = json!(r.tokens.iter().map(|t| json!({"token_id": t.token_id, "kind": t.kind, "project": t.project, "created_at_unix_ms": t.created_at_unix_ms, "revoked_at_unix_ms": t.revoked_at_unix_ms})).collect::<Vec<_>>());
                    let rows = r
                        .tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.token_id.clone(),
                                t.kind.clone(),
                                t.project.clone(),
                                ms(t.created_at_unix_ms),
                                ms(t.revoked_at_unix_ms),
                            ]
                        })
                        .collect();
                    print(c.json, v, &["TOKEN", "KIND", "PROJECT", "CREATED", "REVOKED"], rows)?;
                }
            }
        }
        Command::Instances { project, client: c } => {
            let mut cl = client(&c).await?;
            let r = cl
                .list_instances(v1::ListInstancesRequest { project: project.unwrap_or_default() })
                .await
                .map_err(status)?
                .into_inner();
            let v = json!(r
                .instances
                .iter()
                .map(|i| {
                    let inst = i.instance.clone().unwrap_or_default();
                    let rep = i.report.clone().unwrap_or_default();
                    json!({"instance_id": inst.instance_id, "host": inst.host, "platform": inst.platform, "mode": inst.mode,
                        "project": i.project, "database": i.database, "generation": i.generation, "role": i.role,
                        "started_at_unix_ms": i.started_at_unix_ms, "last_seen_unix_ms": i.last_seen_unix_ms,
                        "local_txid": rep.local_txid, "durable_txid": rep.durable_txid, "lag_seconds": rep.lag_seconds,
                        "lag_bytes": rep.lag_bytes, "state": rep.state})
                })
                .collect::<Vec<_>>());
            let rows = r
                .instances
                .iter()
                .map(|i| {
                    let inst = i.instance.clone().unwrap_or_default();
                    let rep = i.report.clone().unwrap_or_default();
                    vec![
                        inst.instance_id,
                        format!("{}/{}", i.project, i.database),
                        i.role.clone(),
                        i.generation.to_string(),
                        rep.durable_txid.to_string(),
                        inst.host,
                        inst.platform,
                        ms(i.last_seen_unix_ms),
                    ]
                })
                .collect();
            print(
                c.json,
                v,
                &["INSTANCE", "DATABASE", "ROLE", "GENERATION", "DURABLE", "HOST", "PLATFORM", "LAST SEEN"],
                rows,
            )?;
        }
        Command::Events { project, database, after, limit, client: c } => {
            let mut cl = client(&c).await?;
            let req = v1::ListEventsRequest {
                project: project.unwrap_or_default(),
                database: database.unwrap_or_default(),
                after_id: after,
                limit,
            };
            let r = cl.list_events(req).await.map_err(status)?.into_inner();
            let v = json!(r.events.iter().map(|e| json!({"id": e.id, "at_unix_ms": e.at_unix_ms, "project": e.project, "database": e.database, "kind": e.kind, "instance_id": e.instance_id, "other_instance_id": e.other_instance_id, "message": e.message})).collect::<Vec<_>>());
            let rows = r
                .events
                .iter()
                .map(|e| {
                    vec![
                        e.id.to_string(),
                        ms(e.at_unix_ms),
                        format!("{}/{}", e.project, e.database),
                        e.kind.clone(),
                        e.message.clone(),
                    ]
                })
                .collect();
            print(c.json, v, &["ID", "AT", "DATABASE", "KIND", "MESSAGE"], rows)?;
        }
        Command::Generations { target: t, client: c } => {
            let (project, database) = target(&t)?;
            let mut cl = client(&c).await?;
            let r = cl
                .list_generations(v1::ListGenerationsRequest { project, database })
                .await
                .map_err(status)?
                .into_inner();
            let v = json!(r.generations.iter().map(|g| json!({"generation": g.generation, "instance_id": g.instance_id, "host": g.host, "parent": pos(&g.parent), "created_at_unix_ms": g.created_at_unix_ms, "sealed_txid": g.sealed_txid, "sealed_at_unix_ms": g.sealed_at_unix_ms, "leased": g.leased})).collect::<Vec<_>>());
            let rows = r
                .generations
                .iter()
                .map(|g| {
                    vec![
                        format!("{:016x}", g.generation),
                        g.parent
                            .as_ref()
                            .map(|p| format!("{:016x}@{}", p.generation, p.txid))
                            .unwrap_or_else(|| "-".into()),
                        g.instance_id.clone(),
                        g.host.clone(),
                        if g.leased { "lease" } else { "fork" }.into(),
                        ms(g.created_at_unix_ms),
                        if g.sealed_txid > 0 { g.sealed_txid.to_string() } else { "-".into() },
                    ]
                })
                .collect();
            print(c.json, v, &["GENERATION", "PARENT", "INSTANCE", "HOST", "KIND", "CREATED", "SEALED AT TXID"], rows)?;
        }
        Command::Databases { project, client: c } => {
            let mut cl = client(&c).await?;
            let r = cl
                .list_databases(v1::ListDatabasesRequest { project: project.unwrap_or_default() })
                .await
                .map_err(status)?
                .into_inner();
            let v = json!(r.databases.iter().map(database_json).collect::<Vec<_>>());
            let rows = r
                .databases
                .iter()
                .map(|d| {
                    let window = d.scan.as_ref().map_or_else(
                        || "-".into(),
                        |s| {
                            format!(
                                "{}..{} ({} .. {})",
                                s.earliest_txid,
                                s.latest_txid,
                                ms(s.earliest_unix_ms),
                                ms(s.latest_unix_ms)
                            )
                        },
                    );
                    vec![
                        format!("{}/{}", d.project, d.name),
                        d.status.clone(),
                        d.generation.to_string(),
                        format!("{}/{}", d.durable_txid, d.local_txid),
                        format!("{:.1}s", d.lag_seconds),
                        window,
                        d.scan.as_ref().map_or_else(|| "-".into(), |s| format!("{}/{}", s.objects, s.bytes)),
                        format!("${:.4}", d.monthly_storage_cost + d.monthly_request_cost),
                        d.last_drill
                            .as_ref()
                            .map_or_else(|| "-".into(), |x| if x.ok { "ok".into() } else { "FAILED".into() }),
                    ]
                })
                .collect();
            print(
                c.json,
                v,
                &[
                    "DATABASE",
                    "STATUS",
                    "GENERATION",
                    "DURABLE/LOCAL",
                    "LAG",
                    "WINDOW (TXID)",
                    "OBJECTS/BYTES",
                    "COST/MONTH",
                    "DRILL",
                ],
                rows,
            )?;
        }
        Command::Scan { target: t, project, client: c } => {
            let (project, database) = match t {
                Some(t) => target(&t)?,
                None => (project.unwrap_or_default(), String::new()),
            };
            let mut cl = client(&c).await?;
            let r = cl.scan(v1::ScanRequest { project, database }).await.map_err(status)?.into_inner();
            if c.json {
                println!("{}", json!({"scanned": r.scanned}));
            } else {
                println!("scanned {} database(s)", r.scanned);
            }
        }
        Command::Drill { target: t, every, client: c } => {
            let (project, database) = target(&t)?;
            let mut cl = client(&c).await?;
            if let Some(every) = every {
                let every_ms = every.as_millis() as u64;
                cl.drill(v1::DrillRequest { project, database, every_ms, schedule_set: true }).await.map_err(status)?;
                if c.json {
                    println!("{}", json!({"database": t, "drill_every_ms": every_ms}));
                } else {
                    println!("{t}: drilled every {}", humantime::format_duration(every));
                }
                return Ok(0);
            }
            let r = cl
                .drill(v1::DrillRequest { project, database, every_ms: 0, schedule_set: false })
                .await
                .map_err(status)?
                .into_inner();
            let d = r.result.context("drill answer without a result")?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&drill_json(&d))?);
            } else {
                println!(
                    "drill of {t}: {} in {} ms: {}",
                    if d.ok { "passed" } else { "FAILED" },
                    d.duration_ms,
                    d.message
                );
            }
            return Ok(if d.ok { 0 } else { 1 });
        }
        Command::Retention { target: t, keep, clear, dry_run, client: c } => {
            return retention(&t, keep, clear, dry_run, &c).await;
        }
        Command::Restore {
            target: t,
            output,
            into,
            live,
            wait,
            encryption_key,
            into_encryption_key,
            replica,
            txid,
            timestamp,
            dry_run,
            client: c,
        } => {
            let key = agent::config::parse_key("--encryption-key / WALFLEET_ENCRYPTION_KEY", encryption_key)?;
            let into_key =
                agent::config::parse_key("--into-encryption-key / WALFLEET_INTO_ENCRYPTION_KEY", into_encryption_key)?;
            let to = match (output, into) {
                _ if live => Into::Live { wait },
                (_, Some(into)) => Into::Clone { target: into, replica, key: into_key.or_else(|| key.clone()) },
                (Some(out), None) => Into::File(out),
                (None, None) => Into::Nowhere,
            };
            return restore(&t, to, txid, timestamp, dry_run, key, &c).await;
        }
        Command::Policy { target: t, policy, client: c } => {
            let (project, database) = target(&t)?;
            let mut cl = client(&c).await?;
            cl.set_policy(v1::SetPolicyRequest { project, database, policy: policy.clone() }).await.map_err(status)?;
            if c.json {
                println!("{}", json!({"database": t, "policy": policy}));
            } else {
                println!("{t}: policy {policy}");
            }
        }
    }
    Ok(0)
}
