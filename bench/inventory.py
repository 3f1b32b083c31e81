#!/usr/bin/env python3
"""Fleet inventory at scale (stdlib only).

    cargo build --release -p agent -p controller --bins   # this script builds nothing
    python3 bench/inventory.py                            # 1,000 databases, SQLite store
    python3 bench/inventory.py --databases 1000 --backend postgres

1. `walfleet databases --json` latency with N live databases: one controller (lease TTL 15 s),
   `walfleet-loadgen` plays N agents (one database each, a renew with a report every 5 s) while
   the CLI lists the whole inventory --samples times. The figure is the CLI's wall time (process
   start, TLS-less connect, the call, JSON printing), measured from this script.
2. Object store requests of the reconcile scan: --real databases replicated for real by
   `walfleet-agent run` (a writer app, two runs each so every database has two generations) to
   s3s-fs; then `walfleet scan`; the S3 server's own request log gives the requests the scan
   made. Per database per hour at the default scan interval (15 min).

Prints a markdown table; raw JSON goes to bench/.data/inventory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import controller_load as cl  # noqa: E402
import run as rb  # noqa: E402

AGENT = cl.REPO / "target" / "release" / "walfleet-agent"
WRITER = cl.REPO / "tests" / "apps" / "writer.py"


def cli(ctl: cl.Controller, args: list[str], env: dict) -> tuple[float, str]:
    e = dict(env, WALFLEET_CONTROLLER=ctl.url, WALFLEET_ADMIN_TOKEN=cl.ADMIN_TOKEN)
    t0 = time.monotonic()
    out = subprocess.run([str(cl.WALFLEET), *args], env=e, capture_output=True, text=True, timeout=300)
    dt = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"walfleet {args} failed: {out.stderr}")
    return dt, out.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--databases", type=int, default=1000)
    p.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--real", type=int, default=5, help="databases replicated for real for the scan figure")
    a = p.parse_args()
    for b in (cl.WALFLEET, cl.LOADGEN, AGENT):
        if not b.exists():
            sys.exit(f"{b} missing: cargo build --release -p agent -p controller --bins")
    cl.DATA.mkdir(parents=True, exist_ok=True)
    logs = cl.DATA / "inventory"
    logs.mkdir(exist_ok=True)
    (rb.DATA / "run").mkdir(parents=True, exist_ok=True)
    s3 = rb.S3(cl.DATA / "inventory-s3")
    s3.start()
    env = s3.walfleet_env()
    ctl = cl.Controller(a.backend, logs / "controller.log", "15s",
                        {k: v for k, v in env.items() if k.startswith("AWS_")} | {"WALFLEET_SCAN_INTERVAL": "1h"})
    result: dict = {"databases": a.databases, "backend": a.backend}
    try:
        # --- the scan's requests, on real replicas -----------------------------------------
        token = ctl.create_project("real")
        for i in range(a.real):
            for run in range(2):
                db = cl.DATA / "inventory" / f"real-{i}.db"
                if run == 0:
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{db}{suffix}").unlink(missing_ok=True)
                e = dict(env, WALFLEET_CONTROLLER=ctl.url, WALFLEET_TOKEN=token, WALFLEET_PROJECT="real",
                         WALFLEET_DB_NAME=f"db{i}")
                out = subprocess.run([str(AGENT), "run", str(db), f"s3://{rb.BUCKET}/real/db{i}", "--",
                                      sys.executable, str(WRITER), str(db), "--count", "100", "--rate", "200"],
                                     env=e, capture_output=True, text=True, timeout=120)
                if out.returncode != 0:
                    raise RuntimeError(f"agent run real/db{i} exited {out.returncode}: {out.stderr[-2000:]}")
        t0 = time.time()
        _, out = cli(ctl, ["scan", "--project", "real", "--json"], env)
        time.sleep(0.5)
        ops = s3.ops_between(t0, time.time())
        scanned = json.loads(out)["scanned"]
        requests = sum(ops.values())
        _, inv = cli(ctl, ["databases", "--project", "real", "--json"], env)
        inv = json.loads(inv)
        result["scan"] = {
            "databases": scanned,
            "generations_per_database": statistics.mean(len(d["generation_chain"]) for d in inv),
            "objects_per_database": statistics.mean(d["objects"] or 0 for d in inv),
            "s3_ops": ops,
            "requests_per_database_per_scan": requests / max(scanned, 1),
            "requests_per_database_per_hour_at_15min": 4 * requests / max(scanned, 1),
            "self_reported_requests": sum(d["scan"]["requests"] for d in inv if d["scan"]),
        }
        rb.log(f"scan: {result['scan']}")

        # --- inventory latency with N live databases ---------------------------------------
        token = ctl.create_project("bench")
        lg_env = dict(os.environ, WALFLEET_TOKEN=token, RUST_LOG="warn")
        lg = subprocess.Popen([str(cl.LOADGEN), "--controller", ctl.url, "--project", "bench",
                               "--agents", str(a.databases), "--interval", "5s", "--duration", "120s",
                               "--warmup", "5s", "--json"], env=lg_env, stdout=subprocess.PIPE,
                              stderr=open(logs / "loadgen.log", "w"), text=True)
        deadline = time.monotonic() + 300
        while True:
            _, out = cli(ctl, ["databases", "--project", "bench", "--json"], env)
            n = len(json.loads(out))
            if n >= a.databases:
                break
            if time.monotonic() > deadline or lg.poll() is not None:
                raise RuntimeError(f"only {n} databases registered; see {logs / 'loadgen.log'}")
            time.sleep(1)
        time.sleep(6)  # every simulated agent has reported once
        times, size, healthy = [], 0, 0
        for _ in range(a.samples):
            dt, out = cli(ctl, ["databases", "--json"], env)
            times.append(dt)
            size = len(out)
            healthy = sum(1 for d in json.loads(out) if d["status"] == "healthy")
        lg.terminate()
        lg.wait(timeout=60)
        times.sort()
        result["list"] = {
            "rows": a.databases + a.real, "samples": len(times), "p50_s": round(times[len(times) // 2], 3),
            "max_s": round(times[-1], 3), "min_s": round(times[0], 3), "json_bytes": size, "healthy": healthy,
            "controller_hwm_kib": rb.vm_kib(ctl.proc.pid, "VmHWM"),
        }
        rb.log(f"list: {result['list']}")
    finally:
        ctl.close()
        rb.stop(s3.proc)
    (cl.DATA / "inventory.json").write_text(json.dumps(result, indent=2))
    s, l_ = result["scan"], result["list"]
    print("| figure | value |\n|---|---|")
    print(f"| `walfleet databases --json`, {l_['rows']} databases ({a.backend}), p50 / min / max wall | "
          f"{l_['p50_s']} s / {l_['min_s']} s / {l_['max_s']} s ({l_['json_bytes']} bytes of JSON) |")
    print(f"| reconcile scan: requests per database per scan ({s['generations_per_database']:.0f} generations, "
          f"{s['objects_per_database']:.0f} objects each) | {s['requests_per_database_per_scan']:.1f} ({s['s3_ops']}) |")
    print(f"| reconcile scan: requests per database per hour at the default 15 min | "
          f"{s['requests_per_database_per_hour_at_15min']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
