#!/usr/bin/env bash
# The quick start: build walfleet-agent, replicate a demo database that a real SQLite app
# (Python's sqlite3) is writing to a local file:// replica, stop the agent as a platform would
# (SIGTERM), "redeploy" by deleting the data directory, restore, and check that every row the
# app committed is there and the database passes integrity_check.
# Usage: scripts/demo.sh [WORK_DIR]   (default: target/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "demo: python3 is required" >&2; exit 1; }
cargo build --release -p agent --bins
BIN=$PWD/target/release/walfleet-agent
WORK=$(realpath -m "${1:-target/demo}")
rm -rf "$WORK"; mkdir -p "$WORK/data"
DB=$WORK/data/app.db
REPLICA=file://$WORK/replica
PORT=${WALFLEET_DEMO_PORT:-19187}

python3 - "$DB" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1]); c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"); c.commit()
PY
echo "demo: replicating $DB to $REPLICA"
"$BIN" replicate "$DB" "$REPLICA" --http-addr "127.0.0.1:$PORT" 2> "$WORK/agent.log" &
AGENT=$!
trap 'kill $AGENT 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
python3 - "$DB" <<'PY'
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1])
for i in range(200):
    c.execute("INSERT INTO notes(body) VALUES (?)", (f"note {i}",)); c.commit(); time.sleep(0.01)
PY
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^walfleet_(local|durable)_txid'
kill -TERM $AGENT; wait $AGENT; trap - EXIT
echo "demo: agent stopped; wiping the data directory (a redeploy)"
rm -rf "$WORK/data"
"$BIN" restore "$REPLICA" -o "$WORK/data/app.db" 2>> "$WORK/agent.log"
python3 - "$WORK/data/app.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
n = c.execute("SELECT count(*) FROM notes").fetchone()[0]
ok = c.execute("PRAGMA integrity_check").fetchone()[0]
print(f"demo: restored {n} rows, integrity_check={ok}")
sys.exit(0 if (n == 200 and ok == "ok") else 1)
PY
"$BIN" generations "$REPLICA"
echo "demo: OK"
