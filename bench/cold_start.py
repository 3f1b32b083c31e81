#!/usr/bin/env python3
"""Cold start and SIGTERM-to-exit benchmark: walfleet vs Litestream 0.5.17 (stdlib only).

    python3 bench/cold_start.py            # 10 MiB + 100 MiB (+ 1 GiB if the time estimate fits)
    python3 bench/cold_start.py --no-1g    # never try 1 GiB

1. Cold start = spawn of the process -> app exec (the app writes time.time() to a stamp file),
   on a fresh empty directory, replica on a local s3s-fs server:
     walfleet:   walfleet-agent run NEWDIR/app.db s3://bench/w-SIZE -- python3 -c <stamp>
     litestream: sh -c 'litestream restore -o NEWDIR/app.db URL && python3 -c <stamp>'
   3 repetitions each, median reported. The restored row count is checked every repetition.
2. SIGTERM-to-exit: walfleet-agent run --sync-interval 60s with an app that commits ~50 MiB
   (WAL, wal_autocheckpoint=0), prints "written" and sleeps; SIGTERM to the agent, time to exit,
   then `walfleet-agent restore` and compare the row count.
Prints a markdown table (does not write RESULTS.md).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AGENT = REPO / "target" / "release" / "walfleet-agent"
CACHE = Path.home() / ".cache" / "walfleet"
S3S = CACHE / "s3s-fs" / "bin" / "s3s-fs"
LITESTREAM = CACHE / "litestream-venv" / "bin" / "litestream"
AK = "GK0123456789abcdef01234567"
SK = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
MIB = 1 << 20
REPS = 3
STAMP_APP = "import time,sys; open(sys.argv[1],'w').write(str(time.time()))"
BUDGET_S = 12 * 60

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening")


def make_db(path: Path, size: int) -> int:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    rows = size // 1370  # 1 KiB blob + row/page overhead (~1.37 KB/row on 4 KiB pages)
    batch = 2000
    for i in range(0, rows, batch):
        n = min(batch, rows - i)
        con.executemany("INSERT INTO t(v) VALUES (?)", ((os.urandom(1024),) for _ in range(n)))
        con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return rows


def count(path: Path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        con.close()


def metrics(port: int) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return out
    for line in body.splitlines():
        m = re.match(r"^(walfleet_\w+)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            out[m.group(1)] = float(m.group(3))
    return out


def stop(p: subprocess.Popen, timeout: float = 20) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Bench:
    def __init__(self, work: Path):
        self.work = work
        self.data = work / "s3"
        (self.data / "bench").mkdir(parents=True)
        self.port = free_port()
        self.s3 = subprocess.Popen(
            [str(S3S), "--host", "127.0.0.1", "--port", str(self.port),
             "--access-key", AK, "--secret-key", SK, str(self.data)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        base = dict(os.environ)
        base.pop("AWS_CA_BUNDLE", None)
        base.update(AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK, AWS_REGION="us-east-1")
        self.lenv = dict(base)
        self.wenv = dict(base, AWS_ENDPOINT_URL=f"http://127.0.0.1:{self.port}")

    def lurl(self, prefix: str) -> str:
        return (f"s3://bench/{prefix}?endpoint=http://127.0.0.1:{self.port}"
                "&region=us-east-1&forcePathStyle=true")

    def close(self) -> None:
        stop(self.s3, 5)

    # --- seeding -------------------------------------------------------------------------
    def seed_walfleet(self, db: Path, prefix: str) -> float:
        port = free_port()
        t = time.monotonic()
        p = subprocess.Popen([str(AGENT), "replicate", str(db), f"s3://bench/{prefix}",
                              "--http-addr", f"127.0.0.1:{port}"], env=self.wenv,
                             stdout=subprocess.DEVNULL, stderr=open(self.work / f"{prefix}.log", "w"))
        try:
            while True:
                m = metrics(port)
                if m.get("walfleet_durable_txid", 0) >= 1 and m.get("walfleet_lag_bytes", 1) == 0:
                    break
                if p.poll() is not None:
                    raise RuntimeError(f"walfleet replicate exited {p.returncode}")
                if time.monotonic() - t > 300:
                    raise RuntimeError(f"walfleet replicate not durable: {m}")
                time.sleep(0.2)
            return time.monotonic() - t
        finally:
            stop(p)

    def seed_litestream(self, db: Path, prefix: str) -> float:
        t = time.monotonic()
        p = subprocess.Popen([str(LITESTREAM), "replicate", str(db), self.lurl(prefix)],
                             env=self.lenv, stdout=subprocess.DEVNULL,
                             stderr=open(self.work / f"{prefix}.log", "w"))
        d = self.data / "bench" / prefix
        try:
            while not (d.exists() and any(f.name.endswith(".ltx") for f in d.rglob("*") if f.is_file())):
                if p.poll() is not None:
                    raise RuntimeError(f"litestream replicate exited {p.returncode}")
                if time.monotonic() - t > 300:
                    raise RuntimeError("litestream: no LTX object")
                time.sleep(0.2)
            took = time.monotonic() - t
            time.sleep(3)
            return took
        finally:
            stop(p)

    # --- cold start ----------------------------------------------------------------------
    def cold_walfleet(self, prefix: str, rows: int, rep: int) -> float:
        d = self.work / f"cw-{prefix}-{rep}"
        d.mkdir()
        stamp = d / "stamp"
        port = free_port()
        argv = [str(AGENT), "run", str(d / "app.db"), f"s3://bench/{prefix}",
                "--http-addr", f"127.0.0.1:{port}", "--", "python3", "-c", STAMP_APP, str(stamp)]
        t = time.time()
        p = subprocess.Popen(argv, env=self.wenv, stdout=subprocess.DEVNULL,
                             stderr=open(d / "agent.log", "w"))
        try:
            p.wait(300)
        except subprocess.TimeoutExpired:
            pass
        stop(p)
        if not stamp.exists():
            raise RuntimeError(f"walfleet cold start: app did not run (see {d}/agent.log)")
        took = float(stamp.read_text()) - t
        got = count(d / "app.db")
        if got != rows:
            raise RuntimeError(f"walfleet cold start: {got} rows, expected {rows}")
        shutil.rmtree(d)
        return took

    def cold_litestream(self, prefix: str, rows: int, rep: int) -> float:
        d = self.work / f"cl-{prefix}-{rep}"
        d.mkdir()
        stamp = d / "stamp"
        sh = (f"'{LITESTREAM}' restore -o '{d}/app.db' '{self.lurl(prefix)}'"
              f" && python3 -c \"{STAMP_APP}\" '{stamp}'")
        t = time.time()
        p = subprocess.run(["sh", "-c", sh], env=self.lenv, stdout=subprocess.DEVNULL,
                           stderr=open(d / "restore.log", "w"), timeout=300)
        if p.returncode != 0 or not stamp.exists():
            raise RuntimeError(f"litestream cold start failed (see {d}/restore.log)")
        took = float(stamp.read_text()) - t
        got = count(d / "app.db")
        if got != rows:
            raise RuntimeError(f"litestream cold start: {got} rows, expected {rows}")
        shutil.rmtree(d)
        return took

    def size_case(self, size: int) -> dict:
        label = f"{size // MIB} MiB" if size < 1024 * MIB else f"{size // (1024 * MIB)} GiB"
        tag = f"{size // MIB}m"
        t = time.monotonic()
        src = self.work / f"src-{tag}"
        src.mkdir()
        db = src / "db.sqlite"
        rows = make_db(db, size)
        real = db.stat().st_size
        log(f"{label}: db {real / MIB:.1f} MiB, {rows} rows, built in {time.monotonic() - t:.1f}s")
        ws = self.seed_walfleet(db, f"w-{tag}")
        ls = self.seed_litestream(db, f"l-{tag}")
        log(f"{label}: seeded walfleet {ws:.1f}s, litestream {ls:.1f}s")
        w = [self.cold_walfleet(f"w-{tag}", rows, i) for i in range(REPS)]
        log(f"{label}: walfleet cold starts {[round(x, 3) for x in w]}")
        lt = [self.cold_litestream(f"l-{tag}", rows, i) for i in range(REPS)]
        log(f"{label}: litestream cold starts {[round(x, 3) for x in lt]}")
        shutil.rmtree(src)
        return dict(label=label, size=size, db_mib=real / MIB, rows=rows, w=w, l=lt,
                    elapsed=time.monotonic() - t)

    # --- SIGTERM with unflushed WAL tail -------------------------------------------------
    def sigterm_case(self) -> dict:
        d = self.work / "term"
        d.mkdir()
        db = d / "app.db"
        app = d / "app.py"
        app.write_text(
            "import os, signal, sqlite3, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
            "con = sqlite3.connect(sys.argv[1])\n"
            "con.execute('PRAGMA journal_mode=WAL')\n"
            "con.execute('PRAGMA wal_autocheckpoint=0')\n"
            "con.execute('CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)')\n"
            "con.commit()\n"
            "for _ in range(50):\n"
            "    con.executemany('INSERT INTO t(v) VALUES (?)', ((os.urandom(1024),) for _ in range(1000)))\n"
            "    con.commit()\n"
            "n = con.execute('SELECT count(*) FROM t').fetchone()[0]\n"
            "print('written', n, os.path.getsize(sys.argv[1] + '-wal'), flush=True)\n"
            "while True:\n"
            "    time.sleep(1)\n")
        port = free_port()
        p = subprocess.Popen([str(AGENT), "run", str(db), "s3://bench/t", "--http-addr",
                              f"127.0.0.1:{port}", "--sync-interval", "60s", "--",
                              "python3", str(app), str(db)],
                             env=self.wenv, stdout=subprocess.PIPE, text=True,
                             stderr=open(d / "agent.log", "w"))
        line = ""
        while True:
            line = p.stdout.readline()
            if not line or line.startswith("written"):
                break
        if not line:
            p.wait()
            raise RuntimeError(f"sigterm case: app never printed 'written' (see {d}/agent.log)")
        _, rows, wal = line.split()
        rows, wal = int(rows), int(wal)
        m = metrics(port)
        log(f"sigterm: written {rows} rows, WAL {wal / MIB:.1f} MiB; before SIGTERM metrics "
            f"{ {k: v for k, v in m.items() if 'txid' in k or 'lag' in k} }")
        t = time.monotonic()
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "killed after 60 s"
        took = time.monotonic() - t
        out = d / "restored.db"
        r = subprocess.run([str(AGENT), "restore", "s3://bench/t", "-o", str(out)], env=self.wenv,
                           capture_output=True, text=True, timeout=120)
        restored = count(out) if r.returncode == 0 else None
        log(f"sigterm: exit {rc} after {took:.2f}s; restored rows {restored} "
            f"(restore rc {r.returncode} {r.stderr.strip()[-300:]})")
        return dict(wal=wal, rows=rows, took=took, rc=rc, restored=restored, before=m)


def fmt(x: float) -> str:
    return f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-1g", action="store_true")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds; 1 GiB only if it fits")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="walfleet-cold-", dir=os.environ.get("TMPDIR", "/tmp")))
    b = Bench(work)
    cases = []
    skipped_1g = None
    try:
        term = b.sigterm_case()
        for size in (10 * MIB, 100 * MIB):
            cases.append(b.size_case(size))
        # 1 GiB costs roughly 10x the 100 MiB case (db build, two seeds, 6 restores).
        est = cases[-1]["elapsed"] * 10
        left = args.budget - (time.monotonic() - T0)
        if args.no_1g:
            skipped_1g = "skipped (--no-1g)"
        elif est > left:
            skipped_1g = (f"skipped: estimated {est:.0f} s (10x the 100 MiB case) "
                          f"> {left:.0f} s left of the time budget")
        else:
            cases.append(b.size_case(1024 * MIB))
    finally:
        b.close()
    shutil.rmtree(work, ignore_errors=True)

    out = []
    out.append("| replica (db file) | rows | walfleet `run` cold start, median (3 runs) | "
               "litestream `restore && app`, median (3 runs) | walfleet / litestream |")
    out.append("|---|---:|---:|---:|---:|")
    for c in cases:
        wm, lm = statistics.median(c["w"]), statistics.median(c["l"])
        out.append(f"| {c['label']} ({c['db_mib']:.1f} MiB) | {c['rows']} | {fmt(wm)} s "
                   f"({', '.join(fmt(x) for x in c['w'])}) | {fmt(lm)} s "
                   f"({', '.join(fmt(x) for x in c['l'])}) | {wm / lm:.2f}x |")
    if skipped_1g:
        out.append(f"| 1 GiB | | {skipped_1g} | | |")
    out.append("")
    c100 = next(c for c in cases if c["size"] == 100 * MIB)
    wm, lm = statistics.median(c100["w"]), statistics.median(c100["l"])
    out.append(f"- Target 100 MiB cold start < 1 s: **{'met' if wm < 1 else 'missed'}** ({fmt(wm)} s).")
    out.append(f"- Target <= 0.5x Litestream: **{'met' if wm <= 0.5 * lm else 'missed'}** "
               f"({wm / lm:.2f}x: {fmt(wm)} s vs {fmt(lm)} s).")
    ok = term["restored"] == term["rows"]
    fit = isinstance(term["rc"], int) and term["took"] < 10
    out.append(f"- SIGTERM-to-exit with a {term['wal'] / MIB:.1f} MiB unflushed WAL tail "
               f"(`--sync-interval 60s`, {term['rows']} rows): **{term['took']:.2f} s**, agent exit "
               f"code {term['rc']}; Cloud Run 10 s: **{'fits' if fit else 'does not fit'}**. "
               f"`walfleet-agent restore` afterwards: {term['restored']} rows "
               f"({'matches' if ok else 'MISMATCH'}).")
    print("\n".join(out))


if __name__ == "__main__":
    main()
