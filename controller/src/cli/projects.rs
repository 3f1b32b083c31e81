//! `walfleet projects create|set-roots|list`.

use anyhow::Result;
use proto::v1;
use serde_json::json;

use super::{client, ms, print, status};
use crate::config::{ClientArgs, ProjectsVerb};

pub async fn run(verb: ProjectsVerb, c: &ClientArgs) -> Result<()> {
    let mut cl = client(c).await?;
    match verb {
        ProjectsVerb::Create { name, replica_roots } => {
            let r = cl
                .create_project(v1::CreateProjectRequest { name, replica_roots: replica_roots.clone() })
                .await
                .map_err(status)?
                .into_inner();
            if c.json {
                println!(
                    "{}",
                    json!({"project": r.name, "agent_token": r.agent_token, "agent_token_id": r.agent_token_id,
                        "replica_roots": replica_roots})
                );
            } else {
                println!("project {} created", r.name);
                if replica_roots.is_empty() {
                    println!(
                        "no replica roots: its agents are refused until `walfleet projects set-roots {} \
                         --replica-root s3://BUCKET/PREFIX`",
                        r.name
                    );
                } else {
                    println!("replica roots: {}", replica_roots.join(", "));
                }
                println!("agent token (shown once, store it now): {}", r.agent_token);
            }
        }
        ProjectsVerb::SetRoots { name, replica_roots, none } => {
            let roots = if none { Vec::new() } else { replica_roots };
            let r = cl
                .set_replica_roots(v1::SetReplicaRootsRequest { project: name.clone(), replica_roots: roots })
                .await
                .map_err(status)?
                .into_inner();
            if c.json {
                println!("{}", json!({"project": name, "replica_roots": r.replica_roots}));
            } else if r.replica_roots.is_empty() {
                println!("project {name}: no replica roots; every agent replica URL is refused");
            } else {
                println!("project {name}: replica roots {}", r.replica_roots.join(", "));
            }
        }
        ProjectsVerb::List => {
            let r = cl.list_projects(v1::ListProjectsRequest {}).await.map_err(status)?.into_inner();
            let v = json!(r
                .projects
                .iter()
                .map(|p| json!({"name": p.name, "created_at_unix_ms": p.created_at_unix_ms,
                    "databases": p.databases, "replica_roots": p.replica_roots}))
                .collect::<Vec<_>>());
            let rows = r
                .projects
                .iter()
                .map(|p| {
                    let roots = if p.replica_roots.is_empty() { "-".into() } else { p.replica_roots.join(" ") };
                    vec![p.name.clone(), p.databases.to_string(), ms(p.created_at_unix_ms), roots]
                })
                .collect();
            print(c.json, v, &["PROJECT", "DATABASES", "CREATED", "REPLICA ROOTS"], rows)?;
        }
    }
    Ok(())
}
