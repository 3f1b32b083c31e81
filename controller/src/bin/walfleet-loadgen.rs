//! Simulated agents for the controller's heartbeat benchmark (`bench/controller_load.py`).
//!
//! Each simulated agent is what a real one does on the wire: `Register` (mode "replicate", an
//! instance id of its own), `Acquire` of its own database (`<db-prefix>-<n>`), then a `Renew`
//! with a report every `--interval`, its phase drawn uniformly over the interval. The N agents
//! share `--connections` HTTP/2 channels. Each renew's latency is measured on this side, from
//! the send to the response; renews sent inside the measured window (after the last agent was
//! set up and `--warmup` passed, for `--duration`) make the figures. Exits non-zero when any
//! call failed or any renew was fenced.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::{self, acquire_response, renew_response};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(name = "walfleet-loadgen", version, about = "simulated agents: heartbeat load on a walfleet controller")]
struct Args {
    /// Controller gRPC URL.
    #[arg(long, env = "WALFLEET_CONTROLLER", default_value = "http://127.0.0.1:7070")]
    controller: String,
    /// Agent token of --project.
    #[arg(long, env = "WALFLEET_TOKEN", hide_env_values = true)]
    token: String,
    #[arg(long, env = "WALFLEET_PROJECT")]
    project: String,
    /// PEM file of the CA that signed the controller's certificate (https).
    #[arg(long, env = "WALFLEET_CONTROLLER_CA")]
    ca: Option<std::path::PathBuf>,
    /// Simulated agents, one database each.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Time between two renews of one agent.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    interval: Duration,
    /// Length of the measured window.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Heartbeats before the measured window starts (counted from the last agent's set-up).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    warmup: Duration,
    /// HTTP/2 connections shared by the agents.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Register + acquire calls in flight during set-up.
    #[arg(long, default_value_t = 64)]
    setup_concurrency: usize,
    /// Databases are named <db-prefix>-<n>.
    #[arg(long, default_value = "db")]
    db_prefix: String,
    /// Worker threads of this process's runtime (it shares the machine with the controller).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The controller's process id: its CPU time over the window and its peak RSS are reported.
    #[arg(long)]
    controller_pid: Option<u32>,
    /// Also report the CPU time of every process with this command name (e.g. the store's
    /// "postgres" server processes) over the window.
    #[arg(long)]
    store_comm: Option<String>,
    /// Write every renew of the window to this CSV file (ms since the window start, latency µs,
    /// outcome).
    #[arg(long)]
    samples: Option<std::path::PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Renewed,
    Fenced,
    Error,
}

/// One renew: sent `sent_ms` after the start, answered `micros` later.
#[derive(Clone, Copy)]
struct Sample {
    sent_ms: u32,
    micros: u32,
    outcome: Outcome,
}

/// What one simulated agent did.
#[derive(Default)]
struct AgentLog {
    setup: Option<Duration>,
    samples: Vec<Sample>,
    /// The first failure (set-up or renew), for the report.
    error: Option<String>,
}

/// Everything an agent task shares with the others.
struct Shared {
    project: String,
    token: MetadataValue<Ascii>,
    interval: Duration,
    start: Instant,
    run_id: u32,
    db_prefix: String,
    setup_gate: Semaphore,
    set_up: AtomicUsize,
    agents: usize,
    all_set_up: Notify,
}

impl Shared {
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert("authorization", self.token.clone());
        req
    }

    fn setup_finished(&self) {
        if self.set_up.fetch_add(1, Ordering::AcqRel) + 1 == self.agents {
            self.all_set_up.notify_one();
        }
    }
}

fn status(call: &str, e: &tonic::Status) -> String {
    format!("{call}: {:?}: {}", e.code(), e.message())
}

/// Register and acquire: the generation granted and how long the two calls took (the wait for
/// a set-up slot not included).
async fn set_up(
    shared: &Shared,
    client: &mut AgentServiceClient<Channel>,
    instance: &str,
    database: &str,
) -> Result<(u64, Duration), String> {
    let _permit = shared.setup_gate.acquire().await.map_err(|e| format!("set-up gate: {e}"))?;
    let began = Instant::now();
    let register = v1::RegisterRequest {
        project: shared.project.clone(),
        instance: Some(v1::Instance {
            instance_id: instance.to_owned(),
            host: format!("loadgen-{instance}"),
            platform: String::new(),
            mode: "replicate".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }),
    };
    client.register(shared.request(register)).await.map_err(|e| status("register", &e))?;
    let acquire = v1::AcquireRequest {
        project: shared.project.clone(),
        database: database.to_owned(),
        instance_id: instance.to_owned(),
        min_generation: 1,
        // Fields the wire contract may grow keep their defaults.
        ..Default::default()
    };
    let answer = client.acquire(shared.request(acquire)).await.map_err(|e| status("acquire", &e))?.into_inner();
    match answer.outcome {
        Some(acquire_response::Outcome::Granted(g)) => Ok((g.generation, began.elapsed())),
        Some(acquire_response::Outcome::Pending(p)) => {
            Err(format!("acquire {database}: pending ({}), held by {}", p.reason, p.holder_instance_id))
        }
        Some(acquire_response::Outcome::Forked(f)) => {
            Err(format!("acquire {database}: forked beside holder {}", f.holder_instance_id))
        }
        None => Err(format!("acquire {database}: answer without an outcome")),
    }
}

/// A database that keeps writing: transaction ids and upload counters grow with every report.
struct Progress {
    txid: u64,
    uploads: u64,
    checksum: u64,
}

impl Progress {
    fn next_report(&mut self, interval: Duration) -> v1::Report {
        let mut rng = rand::thread_rng();
        let written = rng.gen_range(1..=50);
        self.txid += written;
        self.uploads += interval.as_secs().max(1);
        self.checksum = rng.gen();
        let pending = rng.gen_range(0..=2u64);
        v1::Report {
            local_txid: self.txid,
            durable_txid: self.txid.saturating_sub(pending).max(1),
            lag_seconds: rng.gen_range(0.0..1.0),
            lag_bytes: pending * rng.gen_range(4096..=65536),
            last_upload_unix_ms: chrono::Utc::now().timestamp_millis(),
            uploads: self.uploads,
            upload_errors: 0,
            upload_blocked: false,
            state: "ok".into(),
            durable_checksum: self.checksum,
        }
    }
}

async fn agent(
    n: usize,
    mut client: AgentServiceClient<Channel>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> AgentLog {
    let mut log = AgentLog::default();
    let instance = format!("lg-{:08x}-{n}", shared.run_id);
    let database = format!("{}-{n}", shared.db_prefix);
    let generation = set_up(&shared, &mut client, &instance, &database).await;
    shared.setup_finished();
    let generation = match generation {
        Ok((g, took)) => {
            log.setup = Some(took);
            g
        }
        Err(e) => {
            log.error = Some(e);
            return log;
        }
    };

    // The phase is fixed from the start of the run, so agents set up late join their slot.
    let phase = shared.interval.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
    let mut ticks = tokio::time::interval_at((shared.start + phase).into(), shared.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut progress = Progress { txid: rand::thread_rng().gen_range(1..1000), uploads: 0, checksum: 0 };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let renew = v1::RenewRequest {
            project: shared.project.clone(),
            database: database.clone(),
            instance_id: instance.clone(),
            generation,
            report: Some(progress.next_report(shared.interval)),
        };
        let req = shared.request(renew);
        let sent = Instant::now();
        let answer = client.renew(req).await;
        let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
        let sent_ms = u32::try_from(sent.duration_since(shared.start).as_millis()).unwrap_or(u32::MAX);
        let outcome = match answer.map(|a| a.into_inner().outcome) {
            Ok(Some(renew_response::Outcome::Renewed(_))) => Outcome::Renewed,
            Ok(Some(renew_response::Outcome::Fenced(f))) => {
                log.error.get_or_insert_with(|| {
                    format!(
                        "renew {database}: fenced, generation {} held by {}",
                        f.current_generation, f.holder_instance_id
                    )
                });
                Outcome::Fenced
            }
            Ok(None) => {
                log.error.get_or_insert_with(|| format!("renew {database}: answer without an outcome"));
                Outcome::Error
            }
            Err(e) => {
                log.error.get_or_insert_with(|| status("renew", &e));
                Outcome::Error
            }
        };
        log.samples.push(Sample { sent_ms, micros, outcome });
        if outcome == Outcome::Fenced {
            // A fenced agent stops claiming the lease.
            break;
        }
    }
    log
}

/// utime + stime of a process in seconds (USER_HZ = 100), and its VmHWM / VmRSS in KiB.
fn proc_usage(pid: &str) -> Result<(f64, u64, u64)> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("parse /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields.get(i).context("short /proc/PID/stat")?.parse::<u64>().context("parse cpu ticks")
    };
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let cpu = (ticks(11)? + ticks(12)?) as f64 / 100.0;
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((cpu, kib("VmHWM:"), kib("VmRSS:")))
}

/// CPU seconds of all processes whose command name is `comm` (processes that exit during the
/// window take their time with them).
fn comm_cpu(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    let mut total = 0.0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let matches = std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm);
        if matches {
            if let Ok((cpu, _, _)) = proc_usage(pid) {
                total += cpu;
            }
        }
    }
    total
}

/// Busy CPU seconds of the whole machine so far (all but idle and iowait in /proc/stat).
fn machine_busy() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let first = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = first.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    // guest time is already counted in user time.
    let total: u64 = ticks.iter().take(8).sum();
    Ok(total.saturating_sub(idle) as f64 / 100.0)
}

/// Time some task stalled on `resource` (cpu, io) so far, in seconds (Linux PSI; 0 without it).
fn pressure(resource: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/pressure/{resource}")) else { return 0.0 };
    text.lines()
        .find(|l| l.starts_with("some "))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(0.0, |us| us as f64 / 1e6)
}

/// The value at quantile `q` of sorted `v` (nearest rank), in milliseconds.
fn quantile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn run(args: Args) -> Result<(Value, bool)> {
    if args.agents == 0 || args.connections == 0 {
        bail!("--agents and --connections must be at least 1");
    }
    if args.interval.is_zero() || args.duration.is_zero() {
        bail!("--interval and --duration must be longer than zero");
    }
    let token: MetadataValue<Ascii> =
        format!("Bearer {}", args.token).parse().context("the token is not valid ASCII metadata")?;
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        channels.push(controller::cli::channel(&args.controller, args.ca.as_deref()).await?);
    }
    let shared = Arc::new(Shared {
        project: args.project.clone(),
        token,
        interval: args.interval,
        start: Instant::now(),
        run_id: rand::random(),
        db_prefix: args.db_prefix.clone(),
        setup_gate: Semaphore::new(args.setup_concurrency.max(1)),
        set_up: AtomicUsize::new(0),
        agents: args.agents,
        all_set_up: Notify::new(),
    });
    let controller_pid = args.controller_pid.map(|p| p.to_string());
    let controller_before_setup = controller_pid.as_deref().map(proc_usage).transpose()?;
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..args.agents {
        let client = AgentServiceClient::new(channels[n % channels.len()].clone());
        tasks.spawn(agent(n, client, shared.clone(), stop.clone()));
    }
    shared.all_set_up.notified().await;
    let setup_secs = shared.start.elapsed().as_secs_f64();
    info!(agents = args.agents, secs = round3(setup_secs), "agents set up");

    let window_start = Instant::now() + args.warmup;
    let window_end = window_start + args.duration;
    tokio::time::sleep_until(window_start.into()).await;
    let controller_before = controller_pid.as_deref().map(proc_usage).transpose()?;
    let own_before = proc_usage("self")?;
    let machine_before = machine_busy()?;
    let pressure_before = (pressure("cpu"), pressure("io"));
    let store_before = args.store_comm.as_deref().map(comm_cpu);
    info!(secs = args.duration.as_secs_f64(), "measuring");
    tokio::time::sleep_until(window_end.into()).await;
    let controller_after = controller_pid.as_deref().map(proc_usage).transpose()?;
    let own_after = proc_usage("self")?;
    let machine_after = machine_busy()?;
    let pressure_after = (pressure("cpu"), pressure("io"));
    let store_after = args.store_comm.as_deref().map(comm_cpu);
    stop.cancel();

    let mut logs = Vec::with_capacity(args.agents);
    while let Some(joined) = tasks.join_next().await {
        logs.push(joined.context("join a simulated agent")?);
    }

    let from_ms = window_start.duration_since(shared.start).as_millis() as u64;
    let to_ms = window_end.duration_since(shared.start).as_millis() as u64;
    let window = args.duration.as_secs_f64();
    let (mut latencies, mut renewed, mut fenced, mut errors) = (Vec::new(), 0u64, 0u64, 0u64);
    let (mut total_fenced, mut total_errors, mut setup_errors, mut total_renews) = (0u64, 0u64, 0u64, 0u64);
    // Per second of the window: renews sent and the slowest answer, to show periodic stalls.
    let seconds = args.duration.as_secs().max(1) as usize;
    let mut per_second = vec![(0u64, 0u32); seconds];
    let mut setup_times = Vec::new();
    let mut error_samples: Vec<String> = Vec::new();
    let mut csv = args.samples.as_ref().map(|_| String::from("sent_ms,latency_us,outcome\n"));
    for log in &logs {
        match log.setup {
            Some(d) => setup_times.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX)),
            None => setup_errors += 1,
        }
        if let Some(e) = &log.error {
            if error_samples.len() < 5 && !error_samples.contains(e) {
                error_samples.push(e.clone());
            }
        }
        for s in &log.samples {
            total_renews += 1;
            match s.outcome {
                Outcome::Fenced => total_fenced += 1,
                Outcome::Error => total_errors += 1,
                Outcome::Renewed => {}
            }
            let at = u64::from(s.sent_ms);
            if at < from_ms || at >= to_ms {
                continue;
            }
            match s.outcome {
                Outcome::Renewed => renewed += 1,
                Outcome::Fenced => fenced += 1,
                Outcome::Error => errors += 1,
            }
            latencies.push(s.micros);
            if let Some(csv) = csv.as_mut() {
                let outcome = match s.outcome {
                    Outcome::Renewed => "renewed",
                    Outcome::Fenced => "fenced",
                    Outcome::Error => "error",
                };
                csv.push_str(&format!("{},{},{outcome}\n", at - from_ms, s.micros));
            }
            let slot = (((at - from_ms) / 1000) as usize).min(seconds - 1);
            per_second[slot].0 += 1;
            per_second[slot].1 = per_second[slot].1.max(s.micros);
        }
    }
    if let (Some(path), Some(csv)) = (&args.samples, csv) {
        std::fs::write(path, csv).with_context(|| format!("write {}", path.display()))?;
    }
    latencies.sort_unstable();
    setup_times.sort_unstable();
    let mean_ms = if latencies.is_empty() {
        0.0
    } else {
        latencies.iter().map(|&l| f64::from(l)).sum::<f64>() / latencies.len() as f64 / 1000.0
    };
    let cpu = |before: Option<(f64, u64, u64)>, after: Option<(f64, u64, u64)>| match (before, after) {
        (Some(b), Some(a)) => json!({
            "cpu_s": round3(a.0 - b.0),
            "cpu_pct": round3((a.0 - b.0) / window * 100.0),
            "peak_rss_kib": a.1,
            "rss_kib": a.2,
        }),
        _ => Value::Null,
    };
    let controller_setup_cpu = match (controller_before_setup, controller_before) {
        (Some(b), Some(a)) => json!(round3(a.0 - b.0)),
        _ => Value::Null,
    };
    let store_cpu = match (store_before, store_after) {
        (Some(b), Some(a)) => {
            json!({"comm": args.store_comm, "cpu_s": round3(a - b), "cpu_pct": round3((a - b) / window * 100.0)})
        }
        _ => Value::Null,
    };
    let machine = machine_after - machine_before;
    let report = json!({
        "agents": args.agents,
        "connections": args.connections,
        "interval_s": args.interval.as_secs_f64(),
        "warmup_s": args.warmup.as_secs_f64(),
        "window_s": window,
        "target_rps": round3(args.agents as f64 / args.interval.as_secs_f64()),
        "achieved_rps": round3(latencies.len() as f64 / window),
        "renewed_rps": round3(renewed as f64 / window),
        "renews": latencies.len(),
        "renewed": renewed,
        "fenced": fenced,
        "errors": errors,
        "latency_ms": {
            "mean": round3(mean_ms),
            "p50": quantile_ms(&latencies, 0.50),
            "p90": quantile_ms(&latencies, 0.90),
            "p99": quantile_ms(&latencies, 0.99),
            "p999": quantile_ms(&latencies, 0.999),
            "max": quantile_ms(&latencies, 1.0),
        },
        "per_second": per_second.iter().map(|(n, max)| json!([n, f64::from(*max) / 1000.0])).collect::<Vec<_>>(),
        "setup": {
            "secs": round3(setup_secs),
            "failed": setup_errors,
            "p50_ms": quantile_ms(&setup_times, 0.50),
            "p99_ms": quantile_ms(&setup_times, 0.99),
            "max_ms": quantile_ms(&setup_times, 1.0),
            "controller_cpu_s": controller_setup_cpu,
        },
        "whole_run": { "renews": total_renews, "fenced": total_fenced, "errors": total_errors },
        "controller": cpu(controller_before, controller_after),
        "loadgen": cpu(Some(own_before), Some(own_after)),
        "store_processes": store_cpu,
        "machine_busy": { "cpu_s": round3(machine), "cpu_pct": round3(machine / window * 100.0) },
        // Share of the window in which some task waited for a CPU or for I/O (Linux PSI "some").
        "pressure_pct": {
            "cpu": round3((pressure_after.0 - pressure_before.0) / window * 100.0),
            "io": round3((pressure_after.1 - pressure_before.1) / window * 100.0),
        },
        "error_samples": error_samples,
    });
    let ok = setup_errors == 0 && total_errors == 0 && total_fenced == 0;
    if !ok {
        warn!(setup_errors, errors = total_errors, fenced = total_fenced, "calls failed or were fenced");
    }
    Ok((report, ok))
}

fn print_text(r: &Value) {
    let l = &r["latency_ms"];
    println!(
        "{} agents, {} connections, renew every {} s: target {} renews/s, achieved {} renews/s over {} s",
        r["agents"], r["connections"], r["interval_s"], r["target_rps"], r["achieved_rps"], r["window_s"]
    );
    println!(
        "renew latency ms: p50 {} p90 {} p99 {} p99.9 {} max {} (mean {})",
        l["p50"], l["p90"], l["p99"], l["p999"], l["max"], l["mean"]
    );
    println!("renewed {} fenced {} errors {} in the window", r["renewed"], r["fenced"], r["errors"]);
    let s = &r["setup"];
    println!(
        "set-up (register + acquire): {} s for all, per agent p50 {} ms p99 {} ms, {} failed",
        s["secs"], s["p50_ms"], s["p99_ms"], s["failed"]
    );
    for who in ["controller", "loadgen"] {
        let c = &r[who];
        if !c.is_null() {
            println!(
                "{who}: cpu {} s ({} % of one core), peak rss {} KiB",
                c["cpu_s"], c["cpu_pct"], c["peak_rss_kib"]
            );
        }
    }
    if !r["store_processes"].is_null() {
        let s = &r["store_processes"];
        println!(
            "{} processes: cpu {} s ({} % of one core)",
            s["comm"].as_str().unwrap_or_default(),
            s["cpu_s"],
            s["cpu_pct"]
        );
    }
    println!(
        "whole machine busy: {} s of cpu ({} % of one core)",
        r["machine_busy"]["cpu_s"], r["machine_busy"]["cpu_pct"]
    );
    if let Some(errors) = r["error_samples"].as_array().filter(|e| !e.is_empty()) {
        println!("first errors:");
        for e in errors {
            println!("  {}", e.as_str().unwrap_or_default());
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    // rustls sees two crypto providers in this build (ring and aws-lc-rs); use ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: start the runtime: {e}");
                return std::process::ExitCode::from(2);
            }
        };
    let json_out = args.json;
    match runtime.block_on(run(args)) {
        Ok((report, ok)) => {
            if json_out {
                println!("{report}");
            } else {
                print_text(&report);
            }
            std::process::ExitCode::from(if ok { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
