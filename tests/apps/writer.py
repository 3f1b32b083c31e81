#!/usr/bin/env python3
"""A real SQLite app for walfleet's integration tests (Python's own sqlite3 driver, WAL mode).

Commits one row per transaction into items(id INTEGER PRIMARY KEY, k TEXT, v BLOB, ts REAL)
and, after each COMMIT has returned, prints the committed id on stdout (flushed). Nothing else
goes to stdout; diagnostics go to stderr.

Stops after --count commits or --seconds, whichever comes first (neither: runs until
signalled). On SIGTERM/SIGINT it finishes the commit in progress, then exits 0.
Ids continue from max(id)+1 unless --start-id is given, so it can resume on a restored copy.
Row values are deterministic in the id: k = "key-<id>", v = --value-size bytes derived from id.
"""
import argparse
import hashlib
import signal
import sqlite3
import sys
import time

stop = False


def on_signal(signum, frame):
    global stop
    stop = True


def value(i, size):
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("db")
    p.add_argument("--rate", type=float, default=10.0, help="commits per second; 0 = as fast as possible")
    p.add_argument("--count", type=int, default=0, help="stop after this many commits (0 = no limit)")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0 = no limit)")
    p.add_argument("--start-id", type=int, default=None, help="first id (default max(id)+1)")
    p.add_argument("--value-size", type=int, default=100, help="bytes in v per row")
    p.add_argument("--synchronous", default="FULL", help="PRAGMA synchronous (FULL or NORMAL)")
    args = p.parse_args()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    conn = sqlite3.connect(args.db, isolation_level=None, timeout=5.0)
    conn.execute("PRAGMA busy_timeout=5000")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        print(f"writer: journal_mode is {mode}, not wal", file=sys.stderr)
        return 2
    conn.execute(f"PRAGMA synchronous={args.synchronous}")
    conn.execute("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, k TEXT, v BLOB, ts REAL)")

    next_id = args.start_id
    if next_id is None:
        next_id = (conn.execute("SELECT max(id) FROM items").fetchone()[0] or 0) + 1
    print(f"writer: {args.db} starting at id {next_id}", file=sys.stderr, flush=True)

    period = 1.0 / args.rate if args.rate > 0 else 0.0
    start = time.monotonic()
    done = 0
    while not stop:
        if args.count and done >= args.count:
            break
        if args.seconds and time.monotonic() - start >= args.seconds:
            break
        i = next_id
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO items(id, k, v, ts) VALUES (?, ?, ?, ?)", (i, f"key-{i}", value(i, args.value_size), time.time()))
        conn.execute("COMMIT")
        done += 1
        next_id += 1
        try:
            print(i, flush=True)
        except BrokenPipeError:
            pass
        if period:
            due = start + done * period
            # Sleep in slices so a signal is acted on promptly.
            while not stop:
                left = due - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, 0.05))
    conn.close()
    print(f"writer: committed {done} rows, last id {next_id - 1}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
