#!/usr/bin/env python3
"""The dashboard under a 1,000-database fleet (stdlib + node with playwright-core).

    cargo build --release -p controller --bins      # this script builds nothing
    python3 bench/dashboard.py [--agents 1000] [--bin-dir target/release]

A fresh `walfleet serve` (SQLite store under bench/.data/) and `walfleet-loadgen` playing
--agents agents (one database each, renewing every 5 s) on free ports. Then:
  - fleet-view server time: GET / with a bearer token on loopback, back to back (the fleet
    snapshot is shared for 2 s, so most are served from it) and spaced 2.2 s apart (each one
    computes the snapshot from the store again): p50 / p99 / max;
  - page weight: the fleet page, its stylesheet and script as sent (gzip) and uncompressed;
  - time to first render in headless chromium (bench/dashboard_render.mjs): first contentful
    paint and DOMContentLoaded of the signed-in fleet page, median of 5 loads;
  - controller CPU (utime+stime from /proc) over 60 s with 5 fleet pages open (each refreshes
    its live region every 5 s), minus 60 s with none open (the loadgen's heartbeats only).
Prints a markdown table and writes bench/.data/dashboard.json.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / ".data"
TOKEN = "wfadmin_bench_" + secrets.token_hex(16)
HZ = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def get(url: str, gz: bool = False, live: bool = False) -> tuple[float, int, bytes, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    if gz:
        req.add_header("Accept-Encoding", "gzip")
    if live:
        req.add_header("X-Live", "1")
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
        headers = dict(r.headers)
    return time.perf_counter() - t, r.status, body, headers


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--bin-dir", default=str(REPO / "target" / "release"))
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--cold", type=int, default=30)
    ap.add_argument("--cpu-window", type=float, default=60.0)
    a = ap.parse_args()
    bins = Path(a.bin_dir)
    work = DATA / "dashboard"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    grpc, http = free_port(), free_port()
    base = f"http://127.0.0.1:{http}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(WALFLEET_ADMIN_TOKEN=TOKEN, RUST_LOG="warn", WALFLEET_CONTROLLER=f"http://127.0.0.1:{grpc}")
    procs: list[subprocess.Popen] = []
    try:
        ctl = subprocess.Popen([bins / "walfleet", "serve", "--grpc-addr", f"127.0.0.1:{grpc}", "--http-addr", f"127.0.0.1:{http}",
                                "--database-url", f"sqlite://{work}/walfleet.db", "--lease-ttl", "15s"],
                               env=env, stdout=open(work / "controller.log", "w"), stderr=subprocess.STDOUT)
        procs.append(ctl)
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        out = subprocess.run([bins / "walfleet", "projects", "create", "load", "--json"], env=env, check=True, capture_output=True)
        agent_token = json.loads(out.stdout)["agent_token"]
        lg = subprocess.Popen([bins / "walfleet-loadgen", "--token", agent_token, "--project", "load", "--agents", str(a.agents),
                               "--interval", "5s", "--warmup", "1s", "--duration", "3600s", "--connections", "4"],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(work / "loadgen.log", "w"))
        procs.append(lg)
        deadline = time.monotonic() + 300
        while True:
            _, _, body, _ = get(f"{base}/", live=True)
            rows = body.count(b"<tr data-db=")
            if rows >= a.agents:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {rows} databases after 300 s")
            time.sleep(1)
        time.sleep(6)  # every agent has reported once
        print(f"fleet of {rows} databases up", file=sys.stderr)

        warm = [get(f"{base}/")[0] for _ in range(a.requests)]
        cold = []
        for _ in range(a.cold):
            time.sleep(2.2)
            cold.append(get(f"{base}/")[0])
        _, _, page_gz, h = get(f"{base}/", gz=True)
        _, _, page_raw, _ = get(f"{base}/")
        css_gz = get(f"{base}/assets/app.css", gz=True)[2]
        js_gz = get(f"{base}/assets/app.js", gz=True)[2]
        css_raw = get(f"{base}/assets/app.css")[2]
        js_raw = get(f"{base}/assets/app.js")[2]
        gzipped = h.get("Content-Encoding") == "gzip"

        # Idle CPU, then 5 open pages.
        c0 = cpu_seconds(ctl.pid)
        time.sleep(a.cpu_window)
        idle = (cpu_seconds(ctl.pid) - c0) / a.cpu_window
        node_env = dict(env, WF_BASE=base, WF_TOKEN=TOKEN, WF_PAGES="5", WF_HOLD_S=str(a.cpu_window + 15))
        render = subprocess.Popen(["node", REPO / "bench" / "dashboard_render.mjs"], env=node_env,
                                  stdout=subprocess.PIPE, stderr=open(work / "render.log", "w"), text=True)
        procs.append(render)
        first = json.loads(render.stdout.readline())  # after the render measurements, pages are open
        time.sleep(5)
        c1 = cpu_seconds(ctl.pid)
        time.sleep(a.cpu_window)
        busy = (cpu_seconds(ctl.pid) - c1) / a.cpu_window
        render.wait(60)

        result = {
            "databases": rows,
            "server_ms_warm": {"p50": pct(warm, 50) * 1e3, "p99": pct(warm, 99) * 1e3, "max": max(warm) * 1e3},
            "server_ms_cold": {"p50": pct(cold, 50) * 1e3, "p99": pct(cold, 99) * 1e3, "max": max(cold) * 1e3},
            "page_bytes": {"html_sent": len(page_gz), "html_raw": len(page_raw), "css_sent": len(css_gz), "js_sent": len(js_gz),
                           "css_raw": len(css_raw), "js_raw": len(js_raw), "gzip": gzipped,
                           "total_sent": len(page_gz) + len(css_gz) + len(js_gz)},
            "render_ms": first,
            "cpu_pct_idle": idle * 100,
            "cpu_pct_5_pages": busy * 100,
            "cpu_pct_above_idle": (busy - idle) * 100,
        }
        (DATA / "dashboard.json").write_text(json.dumps(result, indent=2))
        w, c, b = result["server_ms_warm"], result["server_ms_cold"], result["page_bytes"]
        print("| measure | value | target |\n|---|---|---|")
        print(f"| fleet view server time, {rows} databases, snapshot shared (p50 / p99 / max) | {w['p50']:.1f} / {w['p99']:.1f} / {w['max']:.1f} ms | p99 < 100 ms |")
        print(f"| fleet view server time, snapshot computed each time (p50 / p99 / max) | {c['p50']:.1f} / {c['p99']:.1f} / {c['max']:.1f} ms | p99 < 100 ms |")
        print(f"| page weight as sent (HTML + CSS + JS, gzip) | {b['total_sent'] / 1024:.0f} KiB ({b['html_sent'] / 1024:.0f} + {b['css_sent'] / 1024:.1f} + {b['js_sent'] / 1024:.1f}); uncompressed HTML {b['html_raw'] / 1024:.0f} KiB | < 300 KB |")
        print(f"| time to first render, headless chromium (FCP / DOMContentLoaded, median of {first['loads']}) | {first['fcp_ms']:.0f} / {first['dcl_ms']:.0f} ms | < 1 s |")
        print(f"| controller CPU, 5 pages open, above idle | {result['cpu_pct_above_idle']:.2f} % of a core (idle {idle * 100:.2f} %, with pages {busy * 100:.2f} %) | < 2 % |")
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    sys.exit(main())
