#!/usr/bin/env python3
"""A random but deterministic SQLite workload for walfleet's point-in-time tests.

Each step is one committed transaction (VACUUM is its own step): inserts (small rows, overflow
blobs, occasionally a 500-row batch), updates, deletes, schema changes (create/drop table,
add column, create/drop index), VACUUM. After each step has committed it prints one JSON line:
  {"step": n, "op": "insert", "ts": <unix seconds after commit>, "changes": <total_changes>}
Stored data depends only on the seed and the step number (no wall-clock values), so the
database after step n is a pure function of (seed, n): replaying with --steps n on a fresh
file reproduces it exactly. Exits 0 after --steps steps or on SIGTERM/SIGINT (after the step
in progress).
"""
import argparse
import json
import random
import signal
import sqlite3
import sys
import time

stop = False


def on_signal(signum, frame):
    global stop
    stop = True


def tables(conn):
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 't%' ORDER BY name")]


def columns(conn, t):
    return [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')]


def ids(conn, t):
    return [r[0] for r in conn.execute(f'SELECT id FROM "{t}" ORDER BY id')]


def blob(rng):
    r = rng.random()
    if r < 0.05:
        n = rng.randint(5000, 120000)  # overflow pages
    elif r < 0.3:
        n = rng.randint(500, 3000)
    else:
        n = rng.randint(0, 200)
    return rng.randbytes(n)


def insert_rows(conn, rng, t, n, step):
    cols = columns(conn, t)
    extra = [c for c in cols if c not in ("id", "k", "v", "step")]
    for _ in range(n):
        vals = [f"k{rng.randrange(10**9)}", blob(rng), step] + [rng.randrange(1000) for _ in extra]
        names = ", ".join(["k", "v", "step"] + [f'"{c}"' for c in extra])
        marks = ", ".join("?" * len(vals))
        conn.execute(f'INSERT INTO "{t}"({names}) VALUES ({marks})', vals)


def step_once(conn, rng, step):
    ts = tables(conn)
    ops = ["insert"] * 6 + ["update"] * 3 + ["delete"] * 2 + ["batch", "create_table", "drop_table", "add_column", "create_index", "drop_index", "vacuum"]
    op = rng.choice(ops)
    if op == "vacuum":
        conn.execute("VACUUM")
        return op
    conn.execute("BEGIN IMMEDIATE")
    t = rng.choice(ts)
    if op == "insert":
        insert_rows(conn, rng, t, rng.randint(1, 20), step)
    elif op == "batch":
        insert_rows(conn, rng, t, 500, step)
    elif op == "update":
        for i in rng.sample(ids(conn, t), k=min(10, len(ids(conn, t)))):
            conn.execute(f'UPDATE "{t}" SET v = ?, step = ? WHERE id = ?', (blob(rng), step, i))
    elif op == "delete":
        have = ids(conn, t)
        for i in rng.sample(have, k=min(len(have) // 4 + 1, len(have))):
            conn.execute(f'DELETE FROM "{t}" WHERE id = ?', (i,))
    elif op == "create_table":
        conn.execute(f'CREATE TABLE "t{step}"(id INTEGER PRIMARY KEY, k TEXT, v BLOB, step INTEGER)')
        insert_rows(conn, rng, f"t{step}", rng.randint(0, 10), step)
    elif op == "drop_table":
        if len(ts) > 1:
            conn.execute(f'DROP TABLE "{t}"')
        else:
            op = "drop_table_skipped"
    elif op == "add_column":
        conn.execute(f'ALTER TABLE "{t}" ADD COLUMN "c{step}" INTEGER DEFAULT {step}')
    elif op == "create_index":
        conn.execute(f'CREATE INDEX "i{step}" ON "{t}"(k)')
    elif op == "drop_index":
        idx = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND name LIKE 'i%' ORDER BY name")]
        if idx:
            conn.execute(f'DROP INDEX "{rng.choice(idx)}"')
        else:
            op = "drop_index_skipped"
    conn.execute("COMMIT")
    return op


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("db")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--steps", type=int, default=100, help="number of steps (0 = until signalled)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between steps")
    args = p.parse_args()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    rng = random.Random(args.seed)
    conn = sqlite3.connect(args.db, isolation_level=None, timeout=5.0)
    conn.execute("PRAGMA busy_timeout=5000")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        print(f"workload: journal_mode is {mode}, not wal", file=sys.stderr)
        return 2
    if tables(conn):
        print("workload: wants a fresh database (found tables)", file=sys.stderr)
        return 2
    conn.execute("CREATE TABLE t0(id INTEGER PRIMARY KEY, k TEXT, v BLOB, step INTEGER)")
    step = 0
    while not stop and (args.steps == 0 or step < args.steps):
        step += 1
        op = step_once(conn, rng, step)
        try:
            print(json.dumps({"step": step, "op": op, "ts": time.time(), "changes": conn.total_changes}), flush=True)
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + args.interval
        while not stop and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    conn.close()
    print(f"workload: {step} steps", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
