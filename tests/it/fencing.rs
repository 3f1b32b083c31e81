//! Leases and fencing at the controller, driven by gRPC clients that play agents: a race of
//! many agents against two controllers sharing PostgreSQL while the controllers crash and
//! restart, and the refusals of bad tokens and names.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::v1::{self, acquire_response, renew_response};
use rand::{Rng, SeedableRng};
use tests::controller::{self, agent_client, register, Controller};

/// One lease as a client held it: from the grant's answer until it stopped claiming it (its
/// last successful renew's send time + TTL, or the moment it sent its release).
#[derive(Clone, Debug)]
struct Held {
    instance: String,
    generation: u64,
    from: Instant,
    until: Instant,
}

struct Race {
    urls: Vec<String>,
    token: String,
    ttl: Duration,
    deadline: Instant,
    history: Mutex<Vec<Held>>,
}

async fn play(race: Arc<Race>, agent: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut start = 0;
    while Instant::now() < race.deadline {
        start += 1;
        // Every process start is a new instance (fencing rule 2).
        let id = format!("a{agent}-{start}");
        let url = &race.urls[rng.gen_range(0..race.urls.len())];
        let Ok(mut c) = agent_client(url, &race.token) else { continue };
        if register(&mut c, "race", &id, "replicate").await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // Ask until granted or the race is over.
        let granted = loop {
            if Instant::now() >= race.deadline {
                break None;
            }
            let sent = Instant::now();
            let req = v1::AcquireRequest {
                project: "race".into(),
                database: "db".into(),
                instance_id: id.clone(),
                position: None,
                min_generation: 1,
                replica_url: String::new(),
                rollback_to: None,
            };
            match c.acquire(req).await.map(|r| r.into_inner().outcome) {
                Ok(Some(acquire_response::Outcome::Granted(g))) => break Some((g.generation, sent, Instant::now())),
                Ok(Some(acquire_response::Outcome::Pending(p))) => {
                    tokio::time::sleep(Duration::from_millis(p.retry_after_ms.clamp(20, 300))).await;
                }
                Ok(other) => panic!("unexpected acquire outcome under the wait policy: {other:?}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let Some((generation, sent, from)) = granted else { break };
        let mut until = sent + race.ttl;
        let hold = Duration::from_millis(rng.gen_range(50..600));
        let crash = rng.gen_bool(0.2);
        let mut lost = false;
        while from.elapsed() < hold {
            tokio::time::sleep(race.ttl / 3).await;
            if Instant::now() >= until {
                lost = true;
                break;
            }
            let sent = Instant::now();
            let req = v1::RenewRequest {
                project: "race".into(),
                database: "db".into(),
                instance_id: id.clone(),
                generation,
                report: None,
            };
            match c.renew(req).await.map(|r| r.into_inner().outcome) {
                Ok(Some(renew_response::Outcome::Renewed(_))) => until = sent + race.ttl,
                Ok(_) => {
                    lost = true;
                    break;
                }
                // Unreachable: keep the old deadline and try again.
                Err(_) => {}
            }
        }
        if !crash && !lost {
            let sent = Instant::now();
            until = until.min(sent);
            let req = v1::ReleaseRequest {
                project: "race".into(),
                database: "db".into(),
                instance_id: id.clone(),
                generation,
                sealed: None,
                report: None,
            };
            let _ = c.release(req).await;
        }
        race.history.lock().unwrap_or_else(|e| e.into_inner()).push(Held { instance: id, generation, from, until });
    }
}

#[test]
fn fifty_agents_race_two_controllers_sharing_postgres_while_they_restart() -> anyhow::Result<()> {
    let seed = tests::test_seed();
    let ttl = Duration::from_millis(1500);
    let url = controller::postgres_url();
    let mut a = Controller::start(&url, ttl, &[])?;
    let mut b = Controller::start(&url, ttl, &[])?;
    let token = a.create_project("race")?;
    let out = a.cli(&["policy", "race/db", "wait"])?;
    assert!(out.status.success(), "set policy: {}", String::from_utf8_lossy(&out.stderr));

    let race = Arc::new(Race {
        urls: vec![a.url(), b.url()],
        token,
        ttl,
        deadline: Instant::now() + Duration::from_secs(25),
        history: Mutex::default(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let handles: Vec<_> =
        (0..50).map(|i| rt.spawn(play(race.clone(), i, seed.wrapping_add(i as u64 * 7919)))).collect();
    // Crash and restart the controllers in turn while the race runs.
    let mut restarts = 0;
    while Instant::now() + Duration::from_secs(4) < race.deadline {
        std::thread::sleep(Duration::from_secs(3));
        let c = if restarts % 2 == 0 { &mut a } else { &mut b };
        c.kill()?;
        std::thread::sleep(Duration::from_millis(500));
        c.restart()?;
        restarts += 1;
    }
    rt.block_on(async {
        for h in handles {
            h.await.expect("agent task");
        }
    });

    let mut history = race.history.lock().unwrap_or_else(|e| e.into_inner()).clone();
    history.sort_by_key(|h| h.from);
    eprintln!("{} leases granted and held across {restarts} controller restarts", history.len());
    assert!(history.len() >= 10, "too few grants to prove anything: {}", history.len());
    assert!(restarts >= 4, "controllers restarted only {restarts} times");
    for w in history.windows(2) {
        let (p, n) = (&w[0], &w[1]);
        assert!(
            p.until <= n.from,
            "two holders overlap: {} (generation {}) held until {:?} after {} (generation {}) was granted",
            p.instance,
            p.generation,
            p.until - n.from,
            n.instance,
            n.generation
        );
        assert!(
            p.generation < n.generation,
            "generations not strictly increasing in grant order: {} then {}",
            p.generation,
            n.generation
        );
    }
    // The controller's own record agrees with what the clients saw.
    let gens = a.cli_json(&["generations", "race/db"])?;
    let issued: Vec<u64> = gens.as_array().into_iter().flatten().filter_map(|g| g["generation"].as_u64()).collect();
    assert!(issued.windows(2).all(|w| w[0] < w[1]), "controller's generations not increasing: {issued:?}");
    for h in &history {
        assert!(issued.contains(&h.generation), "generation {} held by a client is not on record", h.generation);
    }
    Ok(())
}

/// Runs one acquire as `token` and returns the refusal's code and message.
fn refused(c: &Controller, token: &str, project: &str, database: &str, instance: &str) -> (tonic::Code, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut cl = agent_client(&c.url(), token).expect("client");
        let r = match register(&mut cl, project, instance, "run").await {
            Err(e) => Err(e),
            Ok(()) => cl
                .acquire(v1::AcquireRequest {
                    project: project.into(),
                    database: database.into(),
                    instance_id: instance.into(),
                    position: None,
                    min_generation: 1,
                    replica_url: String::new(),
                    rollback_to: None,
                })
                .await
                .map(|_| ()),
        };
        let e = r.expect_err("the call should have been refused");
        (e.code(), e.message().to_string())
    })
}

#[test]
fn wrong_foreign_and_revoked_tokens_and_bad_names_are_refused() -> anyhow::Result<()> {
    let c = Controller::start_sqlite(Duration::from_secs(5))?;
    let shop = c.create_project("shop")?;
    let blog = c.create_project("blog")?;

    let (code, msg) = refused(&c, "wfagent_000000000000_nope", "shop", "db", "i1");
    assert_eq!(code, tonic::Code::Unauthenticated, "{msg}");
    assert!(msg.contains("unknown token"), "{msg}");

    let (code, msg) = refused(&c, &blog, "shop", "db", "i2");
    assert_eq!(code, tonic::Code::PermissionDenied, "{msg}");
    assert!(msg.contains("cannot reach project shop"), "{msg}");

    let (code, msg) = refused(&c, &shop, "shop", "../x", "i3");
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(msg.contains("invalid database name \"../x\""), "{msg}");
    let (code, msg) = refused(&c, &shop, "../x", "db", "i4");
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(msg.contains("invalid project name"), "{msg}");

    // An agent token is not an admin token.
    let out = c.cli_as(&shop, &["projects", "list"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs an admin token"), "{out:?}");
    let out = c.cli(&["projects", "create", "../x"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid project name \"../x\""), "{out:?}");

    // Revoke shop's token: it stops working, blog's keeps working.
    let tokens = c.cli_json(&["tokens", "list", "--project", "shop"])?;
    let id = tokens[0]["token_id"].as_str().expect("token id").to_string();
    let out = c.cli(&["tokens", "revoke", &id])?;
    assert!(out.status.success(), "{out:?}");
    let (code, msg) = refused(&c, &shop, "shop", "db", "i5");
    assert_eq!(code, tonic::Code::Unauthenticated, "{msg}");
    assert!(msg.contains("revoked"), "{msg}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut cl = agent_client(&c.url(), &blog)?;
        register(&mut cl, "blog", "i6", "run").await?;
        anyhow::Ok(())
    })?;

    // Tokens are stored hashed: the secret is nowhere in the store file.
    let db = c.store_url.trim_start_matches("sqlite://");
    let bytes = std::fs::read(db)?;
    let wal = std::fs::read(format!("{db}-wal")).unwrap_or_default();
    for secret in [&shop, &blog] {
        let s = secret.as_bytes();
        assert!(!bytes.windows(s.len()).any(|w| w == s) && !wal.windows(s.len()).any(|w| w == s), "secret stored");
    }
    Ok(())
}
