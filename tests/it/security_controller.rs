//! The controller's own defences, against the real `walfleet serve` and s3s-fs, with gRPC
//! clients that play agents: replica URLs bound to the roots an admin set per project (the
//! controller reads replicas with its own credentials), agent calls that name another
//! project's instance, numbers too large for the store, and event floods.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use proto::v1::{self, acquire_response};
use serde_json::Value;
use tests::controller::{agent_client, register, AgentClient, Controller};
use tests::S3Server;
use tonic::Code;

const TTL: Duration = Duration::from_secs(5);

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// An agent client of `project` (with `token`) that has registered `ids` (replicate mode).
async fn registered(c: &Controller, token: &str, project: &str, ids: &[&str]) -> Result<AgentClient> {
    let mut cl = agent_client(&c.url(), token)?;
    for id in ids {
        register(&mut cl, project, id, "replicate").await?;
    }
    Ok(cl)
}

fn acquire_req(project: &str, database: &str, id: &str, url: &str, min_generation: u64) -> v1::AcquireRequest {
    v1::AcquireRequest {
        project: project.into(),
        database: database.into(),
        instance_id: id.into(),
        position: None,
        min_generation,
        replica_url: url.into(),
        rollback_to: None,
    }
}

async fn acquire(
    cl: &mut AgentClient,
    project: &str,
    database: &str,
    id: &str,
    url: &str,
) -> Result<acquire_response::Outcome, tonic::Status> {
    let r = cl.acquire(acquire_req(project, database, id, url, 1)).await?;
    r.into_inner().outcome.ok_or_else(|| tonic::Status::internal("acquire answered without an outcome"))
}

async fn granted(cl: &mut AgentClient, project: &str, database: &str, id: &str, url: &str) -> Result<u64> {
    match acquire(cl, project, database, id, url).await {
        Ok(acquire_response::Outcome::Granted(g)) => Ok(g.generation),
        other => bail!("acquire of {project}/{database} by {id} with {url:?}: expected a grant, got {other:?}"),
    }
}

/// Events of `project` of one kind, oldest first (a limit above anything a test records).
fn events(c: &Controller, project: &str, kind: &str) -> Result<Vec<Value>> {
    let v = c.cli_json(&["events", "--project", project, "--limit", "5000"])?;
    Ok(v.as_array().cloned().unwrap_or_default().into_iter().filter(|e| e["kind"] == kind).collect())
}

/// The inventory row of PROJECT/DB, if the database exists.
fn database(c: &Controller, project: &str, name: &str) -> Result<Option<Value>> {
    let v = c.cli_json(&["databases", "--project", project])?;
    Ok(v.as_array().cloned().unwrap_or_default().into_iter().find(|d| d["name"] == name))
}

fn replica_url(c: &Controller, project: &str, name: &str) -> Result<String> {
    Ok(database(c, project, name)?.and_then(|d| d["replica_url"].as_str().map(str::to_string)).unwrap_or_default())
}

/// An agent token of project `alpha` names another tenant's bucket or prefix, a directory of
/// the controller's host and an internal endpoint: each acquire is refused naming the URL and
/// the allowed root, an event records it, the inventory never lists it, and neither a scan nor
/// a drill connects to the endpoint. A URL under the root is granted and recorded.
#[test]
fn agent_replica_urls_outside_the_project_roots_are_refused_recorded_and_never_read() -> Result<()> {
    let s3 = S3Server::new()?;
    let c = Controller::start_sqlite_with(TTL, s3.env(), &[])?;
    let alpha = c.create_project_with_roots("alpha", &["s3://test/alpha"])?;
    c.create_project_with_roots("beta", &["s3://test/beta"])?;
    // Stands for an internal host: nothing may ever connect to it.
    let trap = std::net::TcpListener::bind("127.0.0.1:0")?;
    trap.set_nonblocking(true)?;
    let trap_url = format!("s3://test/alpha/app?endpoint=http://{}", trap.local_addr()?);
    let outside = [
        "s3://other-bucket/alpha/app",
        "s3://test/beta/app",
        "file:///etc",
        trap_url.as_str(),
        "s3://test/alphabet/app",
        "s3://test/alpha/app?region=x.attacker.example",
    ];
    let malformed = ["s3://test/alpha/../beta/app", "s3://test/alpha%2F..%2Fbeta/app"];
    let rt = runtime()?;
    rt.block_on(async {
        let mut cl = registered(&c, &alpha, "alpha", &["i1"]).await?;
        for url in outside {
            let e = match acquire(&mut cl, "alpha", "app", "i1", url).await {
                Ok(o) => bail!("acquire naming {url} was answered {o:?}; it must be refused"),
                Err(e) => e,
            };
            assert_eq!(e.code(), Code::PermissionDenied, "{url}: {e:?}");
            assert!(
                e.message().contains(url)
                    && e.message().contains("s3://test/alpha")
                    && e.message().contains("set-roots"),
                "the refusal must name the URL, the allowed root and how to allow it: {e:?}"
            );
        }
        for url in malformed {
            match acquire(&mut cl, "alpha", "app", "i1", url).await {
                Ok(o) => bail!("acquire naming {url} was answered {o:?}; it must be refused"),
                Err(e) => assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}"),
            }
        }
        anyhow::Ok(())
    })?;

    let refused = events(&c, "alpha", "replica_refused")?;
    assert_eq!(refused.len(), outside.len() + malformed.len(), "{refused:#?}");
    for (e, url) in refused.iter().zip(outside.iter().chain(malformed.iter())) {
        assert_eq!(e["instance_id"], "i1", "{e}");
        assert!(e["message"].as_str().is_some_and(|m| m.contains(url)), "event must name {url}: {e}");
    }
    assert_eq!(replica_url(&c, "alpha", "app")?, "", "no refused URL is in the inventory");
    let scanned = c.cli_json(&["scan", "--project", "alpha"])?;
    assert_eq!(scanned["scanned"], 0, "nothing to scan: {scanned}");

    // Under the root: granted and recorded; the scan reads it, and only it.
    rt.block_on(async {
        let mut cl = agent_client(&c.url(), &alpha)?;
        granted(&mut cl, "alpha", "app", "i1", "s3://test/alpha/app").await
    })?;
    assert_eq!(replica_url(&c, "alpha", "app")?, "s3://test/alpha/app");
    let scanned = c.cli_json(&["scan", "alpha/app"])?;
    assert_eq!(scanned["scanned"], 1, "{scanned}");
    let db = database(&c, "alpha", "app")?.context("alpha/app listed")?;
    assert_eq!(db["scan"]["error"], "", "{db:#}");
    let drill = c.cli(&["drill", "alpha/app"])?;
    assert!(!String::from_utf8_lossy(&drill.stdout).contains(&trap_url), "{drill:?}");
    match trap.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => bail!("something connected to the endpoint an agent named: {other:?}"),
    }
    Ok(())
}

/// Only the holder's URL is the database's replica: a newcomer that was forked (alert policy)
/// or kept waiting names another prefix inside the roots, and the recorded URL stays the
/// holder's.
#[test]
fn a_forked_or_pending_newcomer_does_not_replace_the_recorded_replica() -> Result<()> {
    let c = Controller::start_sqlite(TTL)?;
    let alpha = c.create_project("alpha")?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut cl = registered(&c, &alpha, "alpha", &["holder", "forked", "waiting"]).await?;
        granted(&mut cl, "alpha", "app", "holder", "s3://test/alpha/app").await?;
        match acquire(&mut cl, "alpha", "app", "forked", "s3://test/alpha/forked").await {
            Ok(acquire_response::Outcome::Forked(_)) => {}
            other => bail!("a sidecar newcomer under the alert policy is forked, got {other:?}"),
        }
        anyhow::Ok(())
    })?;
    assert_eq!(replica_url(&c, "alpha", "app")?, "s3://test/alpha/app");
    let out = c.cli(&["policy", "alpha/app", "wait"])?;
    assert!(out.status.success(), "{out:?}");
    rt.block_on(async {
        let mut cl = agent_client(&c.url(), &alpha)?;
        match acquire(&mut cl, "alpha", "app", "waiting", "s3://test/alpha/waiting").await {
            Ok(acquire_response::Outcome::Pending(_)) => {}
            other => bail!("a newcomer under the wait policy waits, got {other:?}"),
        }
        anyhow::Ok(())
    })?;
    assert_eq!(replica_url(&c, "alpha", "app")?, "s3://test/alpha/app");
    Ok(())
}

/// A project without roots accepts no agent URL and the refusal says how to set one; the admin
/// verbs set and show them; once the roots move, the URL recorded before is neither scanned,
/// drilled nor handed to a restore, and a clone's `--replica` must lie inside them too.
#[test]
fn replica_roots_are_set_by_admin_verbs_and_urls_outside_them_are_not_read() -> Result<()> {
    let s3 = S3Server::new()?;
    let c = Controller::start_sqlite_with(TTL, s3.env(), &[])?;
    let token = c.create_project_with_roots("gamma", &[])?;
    let rt = runtime()?;
    let e = rt.block_on(async {
        let mut cl = registered(&c, &token, "gamma", &["g1"]).await?;
        anyhow::Ok(acquire(&mut cl, "gamma", "app", "g1", "s3://test/gamma/app").await)
    })?;
    let e = e.expect_err("a project without roots accepts no replica URL");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("no replica roots") && e.message().contains("walfleet projects set-roots gamma"),
        "{e:?}"
    );

    let set = c.cli_json(&["projects", "set-roots", "gamma", "--replica-root", "s3://test/gamma"])?;
    assert_eq!(set["replica_roots"], serde_json::json!(["s3://test/gamma"]), "{set}");
    let listed = c.cli_json(&["projects", "list"])?;
    let gamma = listed.as_array().and_then(|a| a.iter().find(|p| p["name"] == "gamma")).context("gamma listed")?;
    assert_eq!(gamma["replica_roots"], serde_json::json!(["s3://test/gamma"]), "{listed}");
    let bad = c.cli(&["projects", "set-roots", "gamma", "--replica-root", "s3://test/../x"])?;
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("replica root"), "{bad:?}");
    rt.block_on(async {
        let mut cl = agent_client(&c.url(), &token)?;
        granted(&mut cl, "gamma", "app", "g1", "s3://test/gamma/app").await
    })?;
    assert_eq!(replica_url(&c, "gamma", "app")?, "s3://test/gamma/app");

    // The admin moves the roots: what was recorded is outside them now.
    c.cli_json(&["projects", "set-roots", "gamma", "--replica-root", "s3://test/elsewhere"])?;
    c.cli_json(&["scan", "gamma/app"])?;
    let db = database(&c, "gamma", "app")?.context("gamma/app listed")?;
    let err = db["scan"]["error"].as_str().unwrap_or("");
    assert!(err.contains("not scanned") && err.contains("outside the replica roots"), "{db:#}");
    let drill = c.cli(&["drill", "gamma/app"])?;
    assert!(!drill.status.success(), "{drill:?}");
    assert!(String::from_utf8_lossy(&drill.stdout).contains("not drilled"), "{drill:?}");
    let out = tempfile::tempdir()?;
    let file = out.path().join("r.db");
    let restore = c.cli(&["restore", "gamma/app", "--output", file.to_str().context("utf-8")?])?;
    assert!(!restore.status.success(), "{restore:?}");
    assert!(String::from_utf8_lossy(&restore.stderr).contains("outside the replica roots"), "{restore:?}");
    assert!(!file.exists());
    let set = events(&c, "gamma", "replica_roots_set")?;
    assert_eq!(set.len(), 3, "creation and two changes are audited: {set:#?}");

    // A clone's target replica is read by the controller later: it must be inside the roots.
    let admin = c.admin_token.clone();
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(c.url())?.connect().await?;
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {admin}").parse()?;
        let mut cl =
            v1::admin_service_client::AdminServiceClient::with_interceptor(ch, move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                Ok(req)
            });
        let clone = |url: &str| v1::BeginCloneRequest {
            project: "gamma".into(),
            database: "copy".into(),
            replica_url: url.into(),
            min_generation: 1,
        };
        let e = cl.begin_clone(clone("s3://test/beta/copy")).await.expect_err("outside the roots");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("s3://test/beta/copy"), "{e:?}");
        let e = cl.begin_clone(clone("file:///etc")).await.expect_err("outside the roots");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let ok = cl.begin_clone(clone("s3://test/elsewhere/copy")).await?.into_inner();
        assert_eq!(ok.replica_url, "s3://test/elsewhere/copy");
        anyhow::Ok(())
    })?;
    Ok(())
}

/// Project alpha's token names project beta's live holder in Renew, Release, Validate and
/// Register: each is refused, nothing is recorded about it, and its lease and generation stay
/// as they were. Inside one project, a Release by an instance that does not hold the lease
/// seals nothing; the holder's own release seals.
#[test]
fn calls_naming_another_projects_instance_are_refused_and_only_a_real_release_seals() -> Result<()> {
    let c = Controller::start_sqlite(TTL)?;
    let alpha = c.create_project("alpha")?;
    let beta = c.create_project("beta")?;
    let rt = runtime()?;
    let g = rt.block_on(async {
        let mut b = registered(&c, &beta, "beta", &["b1"]).await?;
        granted(&mut b, "beta", "app", "b1", "").await
    })?;
    let report = v1::Report { local_txid: 999, durable_txid: 999, state: "hijacked".into(), ..Default::default() };
    rt.block_on(async {
        let mut a = agent_client(&c.url(), &alpha)?;
        // alpha's own database of that name, held by alpha's own instance.
        register(&mut a, "alpha", "a0", "replicate").await?;
        granted(&mut a, "alpha", "other", "a0", "").await?;
        let renew = a
            .renew(v1::RenewRequest {
                project: "alpha".into(),
                database: "other".into(),
                instance_id: "b1".into(),
                generation: g,
                report: Some(report.clone()),
            })
            .await;
        let e = renew.expect_err("renew naming beta's instance");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("b1") && e.message().contains("beta"), "{e:?}");
        let release = a
            .release(v1::ReleaseRequest {
                project: "alpha".into(),
                database: "other".into(),
                instance_id: "b1".into(),
                generation: g,
                sealed: Some(v1::Position { generation: g, txid: 5 }),
                report: Some(report.clone()),
            })
            .await;
        assert_eq!(release.expect_err("release naming beta's instance").code(), Code::PermissionDenied);
        let validate = a
            .validate(v1::ValidateRequest {
                project: "alpha".into(),
                database: "other".into(),
                instance_id: "b1".into(),
                generation: g,
                action: "delete".into(),
            })
            .await;
        assert_eq!(validate.expect_err("validate naming beta's instance").code(), Code::PermissionDenied);
        let e = register(&mut a, "alpha", "b1", "run").await.expect_err("register of beta's instance id");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        // beta's holder reports; once that is flushed, anything buffered before it is too.
        let mut b = agent_client(&c.url(), &beta)?;
        b.renew(v1::RenewRequest {
            project: "beta".into(),
            database: "app".into(),
            instance_id: "b1".into(),
            generation: g,
            report: Some(v1::Report { local_txid: 3, durable_txid: 3, state: "ok".into(), ..Default::default() }),
        })
        .await?;
        anyhow::Ok(())
    })?;
    let b1 = || -> Result<Value> {
        let v = c.cli_json(&["instances", "--project", "beta"])?;
        v.as_array().and_then(|a| a.iter().find(|i| i["instance_id"] == "b1").cloned()).context("b1 listed")
    };
    tests::wait_until(Duration::from_secs(30), "beta's report flushed", || b1().is_ok_and(|i| i["durable_txid"] == 3));
    let i = b1()?;
    assert_eq!(
        (i["role"].as_str(), i["database"].as_str(), i["state"].as_str()),
        (Some("holder"), Some("app"), Some("ok"))
    );
    let alpha_events = c.cli_json(&["events", "--project", "alpha"])?;
    assert!(
        alpha_events.as_array().is_some_and(|a| a.iter().all(|e| e["instance_id"] != "b1")),
        "nothing is recorded about beta's instance in alpha: {alpha_events:#}"
    );
    let gens = c.cli_json(&["generations", "beta/app"])?;
    assert_eq!(gens[0]["sealed_txid"], 0, "beta's generation is not sealed: {gens:#}");
    let db = database(&c, "beta", "app")?.context("beta/app")?;
    assert_eq!(db["holder_instance_id"], "b1", "{db:#}");

    // Inside alpha: a stale instance's release seals nothing; the holder's does.
    let (g1, released) = rt.block_on(async {
        let mut a = agent_client(&c.url(), &alpha)?;
        register(&mut a, "alpha", "a1", "run").await?;
        register(&mut a, "alpha", "a2", "run").await?;
        let g1 = granted(&mut a, "alpha", "db2", "a1", "").await?;
        let stale = a
            .release(v1::ReleaseRequest {
                project: "alpha".into(),
                database: "db2".into(),
                instance_id: "a2".into(),
                generation: g1,
                sealed: Some(v1::Position { generation: g1, txid: 7 }),
                report: None,
            })
            .await?
            .into_inner();
        anyhow::Ok((g1, stale.released))
    })?;
    assert!(!released, "a2 held nothing");
    let gens = c.cli_json(&["generations", "alpha/db2"])?;
    assert_eq!((gens[0]["generation"].as_u64(), gens[0]["sealed_txid"].as_u64()), (Some(g1), Some(0)), "{gens:#}");
    let db = database(&c, "alpha", "db2")?.context("alpha/db2")?;
    assert_eq!((db["holder_instance_id"].as_str(), &db["head"]), (Some("a1"), &Value::Null), "{db:#}");
    let released = rt.block_on(async {
        let mut a = agent_client(&c.url(), &alpha)?;
        let r = a
            .release(v1::ReleaseRequest {
                project: "alpha".into(),
                database: "db2".into(),
                instance_id: "a1".into(),
                generation: g1,
                sealed: Some(v1::Position { generation: g1, txid: 9 }),
                report: None,
            })
            .await?;
        anyhow::Ok(r.into_inner().released)
    })?;
    assert!(released);
    let gens = c.cli_json(&["generations", "alpha/db2"])?;
    assert_eq!(gens[0]["sealed_txid"].as_u64(), Some(9), "{gens:#}");
    Ok(())
}

/// `min_generation` = u64::MAX (or 2^63 - 1) from an agent is refused with a clear error and
/// the database can still be acquired, again and again; transaction ids past what the store
/// compares and an oversized replica URL are refused too.
#[test]
fn huge_numbers_and_sizes_from_an_agent_are_refused_and_never_wedge_a_database() -> Result<()> {
    let c = Controller::start_sqlite(TTL)?;
    let alpha = c.create_project("alpha")?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut a = registered(&c, &alpha, "alpha", &["a1", "a2", "a3"]).await?;
        for huge in [u64::MAX, i64::MAX as u64, (1 << 62) + 1] {
            let r = a.acquire(acquire_req("alpha", "app", "a1", "", huge)).await;
            let e = match r {
                Ok(ok) => bail!("min_generation {huge} was answered {:?}; it must be refused", ok.into_inner()),
                Err(e) => e,
            };
            assert_eq!(e.code(), Code::InvalidArgument, "min_generation {huge}: {e:?}");
            assert!(e.message().contains("min_generation") && e.message().contains(&huge.to_string()), "{e:?}");
        }
        let long = format!("s3://test/alpha/{}", "x".repeat(5000));
        let e = acquire(&mut a, "alpha", "app", "a1", &long).await.expect_err("an oversized URL");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("longer than"), "{e:?}");

        let g = granted(&mut a, "alpha", "app", "a1", "").await?;
        assert_eq!(g, 1, "nothing was issued by the refused acquires");
        let e = a
            .renew(v1::RenewRequest {
                project: "alpha".into(),
                database: "app".into(),
                instance_id: "a1".into(),
                generation: g,
                report: Some(v1::Report { local_txid: u64::MAX, durable_txid: u64::MAX, ..Default::default() }),
            })
            .await
            .expect_err("a report past 2^63 - 1");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let e = a
            .release(v1::ReleaseRequest {
                project: "alpha".into(),
                database: "app".into(),
                instance_id: "a1".into(),
                generation: g,
                sealed: Some(v1::Position { generation: g, txid: u64::MAX }),
                report: None,
            })
            .await
            .expect_err("a seal past 2^63 - 1");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let released = a
            .release(v1::ReleaseRequest {
                project: "alpha".into(),
                database: "app".into(),
                instance_id: "a1".into(),
                generation: g,
                sealed: Some(v1::Position { generation: g, txid: 4 }),
                report: None,
            })
            .await?
            .into_inner();
        assert!(released.released);
        assert_eq!(granted(&mut a, "alpha", "app", "a2", "").await?, 2);
        anyhow::Ok(())
    })?;
    Ok(())
}

/// One project's agents loop on a call that records an event (a stale instance asking to
/// delete): at most the quota is recorded, the rest is counted in one `events_suppressed`
/// event, and another project's events are unaffected.
#[test]
fn events_caused_by_a_projects_agents_are_capped_and_the_overflow_is_counted() -> Result<()> {
    const CALLS: usize = 1008;
    let c = Controller::start_sqlite(TTL)?;
    let alpha = c.create_project("alpha")?;
    let beta = c.create_project("beta")?;
    let rt = runtime()?;
    let validate = |project: &str, id: &str, generation: u64| v1::ValidateRequest {
        project: project.into(),
        database: "app".into(),
        instance_id: id.into(),
        generation,
        action: "delete".into(),
    };
    let g = rt.block_on(async {
        let mut a = registered(&c, &alpha, "alpha", &["holder", "stale"]).await?;
        let g = granted(&mut a, "alpha", "app", "holder", "").await?;
        // 16 callers at once, CALLS in all.
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (mut a, req) = (a.clone(), validate("alpha", "stale", g));
            callers.spawn(async move {
                for _ in 0..CALLS / 16 {
                    if a.validate(req.clone()).await?.into_inner().current {
                        return Err(tonic::Status::internal("the stale instance was current"));
                    }
                }
                Ok(())
            });
        }
        while let Some(r) = callers.join_next().await {
            r??;
        }
        let mut b = registered(&c, &beta, "beta", &["b-stale", "b-holder"]).await?;
        let gb = granted(&mut b, "beta", "app", "b-holder", "").await?;
        assert!(!b.validate(validate("beta", "b-stale", gb)).await?.into_inner().current);
        anyhow::Ok(g)
    })?;
    let recorded = events(&c, "alpha", "delete_refused")?.len();
    assert!(
        (600..CALLS).contains(&recorded),
        "{recorded} of {CALLS} refused deletes recorded: the quota lets 600 through at once, not all"
    );
    assert_eq!(events(&c, "beta", "delete_refused")?.len(), 1, "beta's quota is its own");
    // The quota refills: the next event that gets through carries the count of what did not.
    let mut suppressed = Vec::new();
    tests::wait_until(Duration::from_secs(30), "an events_suppressed event", || {
        let _ = rt.block_on(async {
            let mut a = agent_client(&c.url(), &alpha)?;
            a.validate(validate("alpha", "stale", g)).await?;
            anyhow::Ok(())
        });
        suppressed = events(&c, "alpha", "events_suppressed").unwrap_or_default();
        !suppressed.is_empty()
    });
    let msg = suppressed[0]["message"].as_str().unwrap_or("");
    assert!(msg.contains("were not recorded") && msg.contains("quota"), "{msg}");
    Ok(())
}

/// A real agent pointed at another tenant's prefix does not start: it exits non-zero with the
/// controller's refusal, and writes nothing there.
#[test]
fn a_real_agent_naming_a_replica_outside_its_roots_exits_with_the_refusal() -> Result<()> {
    let s3 = S3Server::new()?;
    let c = Controller::start_sqlite_with(TTL, s3.env(), &[])?;
    let alpha = c.create_project_with_roots("alpha", &["s3://test/alpha"])?;
    c.create_project_with_roots("beta", &["s3://test/beta"])?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    tests::sqlite::open_wal(&db)?.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")?;
    let url = s3.url("beta/app");
    let env = c.agent_env(s3.env(), &alpha, "alpha", "app");
    let mut agent = tests::Agent::start(&["replicate", db.to_str().context("utf-8")?, &url], &env)?;
    let st = agent.wait(Duration::from_secs(60))?;
    assert!(!st.success(), "the agent must not run on a refused replica:\n{}", agent.stderr());
    let err = agent.stderr();
    assert!(err.contains("outside the replica roots") && err.contains(&url), "{err}");
    assert!(s3.keys("beta/app").iter().all(|k| k.contains("probe")), "{:?}", s3.keys("beta/app"));
    assert_eq!(events(&c, "alpha", "replica_refused")?.len(), 1);
    Ok(())
}
