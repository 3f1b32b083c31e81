//! The admin verbs: gRPC calls to a controller, printed as a table or as JSON (`--json`).

use anyhow::{bail, Context, Result};
use proto::v1::admin_service_client::AdminServiceClient;
use proto::v1::{self};
use serde_json::{json, Value};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::{ClientArgs, Command, ProjectsVerb, TokensVerb};

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

fn pos(p: &Option<v1::Position>) -> Value {
    match p {
        Some(p) => json!({"generation": p.generation, "txid": p.txid}),
        None => Value::Null,
    }
}

pub async fn run(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Serve(_) => unreachable!("serve is dispatched by main"),
        Command::Projects { verb, client: c } => {
            let mut cl = client(&c).await?;
            match verb {
                ProjectsVerb::Create { name } => {
                    let r = cl.create_project(v1::CreateProjectRequest { name }).await.map_err(status)?.into_inner();
                    if c.json {
                        println!(
                            "{}",
                            json!({"project": r.name, "agent_token": r.agent_token, "agent_token_id": r.agent_token_id})
                        );
                    } else {
                        println!("project {} created", r.name);
                        println!("agent token (shown once, store it now): {}", r.agent_token);
                    }
                }
                ProjectsVerb::List => {
                    let r = cl.list_projects(v1::ListProjectsRequest {}).await.map_err(status)?.into_inner();
                    let v = json!(r.projects.iter().map(|p| json!({"name": p.name, "created_at_unix_ms": p.created_at_unix_ms, "databases": p.databases})).collect::<Vec<_>>());
                    let rows = r
                        .projects
                        .iter()
                        .map(|p| vec![p.name.clone(), p.databases.to_string(), ms(p.created_at_unix_ms)])
                        .collect();
                    print(c.json, v, &["PROJECT", "DATABASES", "CREATED"], rows)?;
                }
            }
        }
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
            let v = json!(r.databases.iter().map(|d| json!({"project": d.project, "name": d.name, "policy": d.policy, "holder_instance_id": d.holder_instance_id, "generation": d.generation, "lease_expires_at_unix_ms": d.lease_expires_at_unix_ms, "head": pos(&d.head), "created_at_unix_ms": d.created_at_unix_ms})).collect::<Vec<_>>());
            let rows = r
                .databases
                .iter()
                .map(|d| {
                    vec![
                        format!("{}/{}", d.project, d.name),
                        d.policy.clone(),
                        if d.holder_instance_id.is_empty() { "-".into() } else { d.holder_instance_id.clone() },
                        d.generation.to_string(),
                        d.head
                            .as_ref()
                            .map(|p| format!("{:016x}@{}", p.generation, p.txid))
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print(c.json, v, &["DATABASE", "POLICY", "HOLDER", "GENERATION", "HEAD"], rows)?;
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
