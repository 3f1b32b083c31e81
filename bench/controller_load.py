#!/usr/bin/env python3
"""Controller heartbeats at scale: simulated agents against one `walfleet serve` (stdlib only).

    cargo build --release -p controller --bins      # this script builds nothing
    python3 bench/controller_load.py                # sqlite + postgres x 1000 + 10000 agents
    python3 bench/controller_load.py --backends sqlite --agents 10000 --duration 30s

For each backend and agent count: a fresh controller (`target/release/walfleet serve`, lease TTL
15 s) on free ports with a fresh store: a SQLite file in a new directory under bench/.data/ (on
the real disk: a tmpfs would make every fsync free) or a new PostgreSQL schema
(postgres://postgres@127.0.0.1:5432/test?schema=wf_bench_<random>, dropped afterwards). A project
is created with the admin CLI, then `target/release/walfleet-loadgen` plays the agents: register,
acquire `db-<n>`, renew every --interval with a report, phases spread over the interval, on a
one-thread runtime. The controller's CPU (utime+stime) and peak RSS (VmHWM) come from /proc.

Prints a markdown table; raw JSON goes to bench/.data/controller-load.json, controller and
loadgen logs to bench/.data/controller-load/.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
DATA = BENCH / ".data"
WALFLEET = REPO / "target" / "release" / "walfleet"
LOADGEN = REPO / "target" / "release" / "walfleet-loadgen"
POSTGRES = "postgres://postgres@127.0.0.1:5432/test"
ADMIN_TOKEN = "wfadmin_bench_" + secrets.token_hex(16)

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, logfile: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"walfleet serve exited {proc.returncode}:\n{logfile.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"walfleet serve not healthy after {timeout} s")


def stop(p: subprocess.Popen, timeout: float = 30) -> int | None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode


def psql(sql: str) -> None:
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "test", "-q", "-c", sql],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"psql {sql!r} failed: {out.stderr}")


def psql_value(sql: str) -> str:
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "test", "-Atc", sql],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


class Controller:
    """`walfleet serve` on a fresh store."""

    def __init__(self, backend: str, logs: Path, ttl: str, extra_env: dict[str, str]):
        self.backend = backend
        self.schema = None
        self.dir = Path(tempfile.mkdtemp(prefix=f"ctl-{backend}-", dir=DATA))
        if backend == "sqlite":
            url = f"sqlite://{self.dir / 'walfleet.db'}"
        else:
            self.schema = f"wf_bench_{secrets.token_hex(6)}"
            url = f"{POSTGRES}?schema={self.schema}"
        self.grpc_port, self.http_port = free_port(), free_port()
        self.log = logs
        env = dict(os.environ, WALFLEET_ADMIN_TOKEN=ADMIN_TOKEN)
        env.setdefault("RUST_LOG", "info,sqlx=warn")
        env.update(extra_env)
        self.proc = subprocess.Popen(
            [str(WALFLEET), "serve", "--grpc-addr", f"127.0.0.1:{self.grpc_port}",
             "--http-addr", f"127.0.0.1:{self.http_port}", "--database-url", url, "--lease-ttl", ttl],
            env=env, stdout=open(logs, "w"), stderr=subprocess.STDOUT)
        wait_healthy(self.http_port, self.proc, logs)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def create_project(self, name: str) -> str:
        env = dict(os.environ, WALFLEET_CONTROLLER=self.url, WALFLEET_ADMIN_TOKEN=ADMIN_TOKEN)
        out = subprocess.run([str(WALFLEET), "projects", "create", name, "--json"], env=env,
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"walfleet projects create failed: {out.stderr}")
        return json.loads(out.stdout)["agent_token"]

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=2) as r:
                body = r.read().decode()
        except OSError:
            return out
        for line in body.splitlines():
            if line.startswith("walfleet_") and " " in line:
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def close(self) -> int | None:
        code = stop(self.proc)
        if self.schema:
            psql(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


def run_one(backend: str, agents: int, a: argparse.Namespace, logs: Path) -> dict:
    tag = f"{backend}-{agents}"
    log(f"{tag}: starting the controller")
    extra_env = dict(kv.split("=", 1) for kv in a.controller_env)
    ctl = Controller(backend, logs / f"{tag}-controller.log", a.lease_ttl, extra_env)
    try:
        token = ctl.create_project("bench")
        env = dict(os.environ, WALFLEET_TOKEN=token)
        env.setdefault("RUST_LOG", "info")
        argv = [str(LOADGEN), "--controller", ctl.url, "--project", "bench", "--agents", str(agents),
                "--interval", a.interval, "--duration", a.duration, "--warmup", a.warmup,
                "--connections", str(a.connections), "--threads", str(a.threads),
                "--controller-pid", str(ctl.proc.pid), "--samples", str(logs / f"{tag}-renews.csv"), "--json"]
        if backend == "postgres":
            argv += ["--store-comm", "postgres"]
        log(f"{tag}: {' '.join(argv[1:])}")
        with open(logs / f"{tag}-loadgen.log", "w") as err:
            out = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        if not out.stdout.strip():
            raise RuntimeError(f"{tag}: walfleet-loadgen exited {out.returncode} without a report "
                               f"(see {logs / f'{tag}-loadgen.log'})")
        r = json.loads(out.stdout)
        r["backend"] = backend
        r["loadgen_exit"] = out.returncode
        r["controller_metrics"] = ctl.metrics()
        lat = r["latency_ms"]
        log(f"{tag}: {r['achieved_rps']} renews/s (target {r['target_rps']}), p50 {lat['p50']} ms, "
            f"p99 {lat['p99']} ms, max {lat['max']} ms, errors {r['errors']}, fenced {r['fenced']}, "
            f"exit {out.returncode}")
        return r
    finally:
        code = ctl.close()
        log(f"{tag}: controller stopped ({code})")


def mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def table(results: list[dict]) -> str:
    rows = ["| backend | agents | target renews/s | achieved renews/s | p50 ms | p90 ms | p99 ms | max ms "
            "| errors | fenced | controller CPU | store server CPU | controller peak RSS MiB "
            "| loadgen CPU | machine busy | CPU / IO pressure | set-up |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lat, c, lg, m = r["latency_ms"], r.get("controller") or {}, r["loadgen"], r["machine_busy"]
        store = r.get("store_processes")
        store_cpu = f"{store['cpu_pct']:.0f} %" if store else "(in-process)"
        setup, psi = r["setup"], r["pressure_pct"]
        rows.append(
            f"| {r['backend']} | {r['agents']} | {r['target_rps']:.0f} | {r['achieved_rps']:.0f} "
            f"| {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | {lat['max']:.1f} "
            f"| {r['errors']} | {r['fenced']} | {c.get('cpu_pct', 0):.0f} % | {store_cpu} "
            f"| {mib(c.get('peak_rss_kib'))} | {lg['cpu_pct']:.0f} % | {m['cpu_pct']:.0f} % "
            f"| {psi['cpu']:.0f} % / {psi['io']:.0f} % | {setup['secs']:.1f} s |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--agents", default="1000,10000", help="comma-separated agent counts")
    ap.add_argument("--interval", default="5s")
    ap.add_argument("--duration", default="60s", help="measured window")
    ap.add_argument("--warmup", default="10s", help="after the last agent was set up")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="loadgen runtime worker threads")
    ap.add_argument("--lease-ttl", default="15s")
    ap.add_argument("--out", type=Path, default=DATA / "controller-load.json")
    ap.add_argument("--controller-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for walfleet serve (repeatable)")
    a = ap.parse_args()
    for b in (WALFLEET, LOADGEN):
        if not b.exists():
            print(f"{b} is missing: run `cargo build --release -p controller --bins` first", file=sys.stderr)
            return 2
    DATA.mkdir(parents=True, exist_ok=True)
    logs = DATA / "controller-load"
    logs.mkdir(exist_ok=True)
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    counts = [int(n) for n in a.agents.split(",") if n.strip()]
    if "postgres" in backends:
        pg = {k: psql_value(f"SHOW {k}") for k in ("synchronous_commit", "fsync", "wal_sync_method")}
        log(f"postgres {psql_value('SHOW server_version')}: {pg}")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results = []
    failed = False
    for backend in backends:
        for n in counts:
            r = run_one(backend, n, a, logs)
            failed |= r["loadgen_exit"] != 0
            results.append(r)
            # Let the disk and the page cache settle between runs.
            time.sleep(3)
    a.out.write_text(json.dumps({"started": started, "args": {k: str(v) for k, v in vars(a).items()},
                                 "results": results}, indent=1))
    print(f"Run {started}, `python3 bench/controller_load.py {' '.join(sys.argv[1:])}`".rstrip())
    print(f"(renew every {a.interval}, lease TTL {a.lease_ttl}, {a.duration} measured after {a.warmup} "
          f"warm-up, {a.connections} HTTP/2 connections, loadgen on {a.threads} thread(s))\n")
    print(table(results))
    log(f"raw results in {a.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
