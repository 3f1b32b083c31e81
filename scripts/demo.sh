#!/usr/bin/env bash
# The quick start: a real small walfleet fleet on this machine, and the proof of persistence
# done for you, step by step.
#
#   scripts/demo.sh [--keep] [--work DIR]
#
# Builds walfleet (debug; reuses an existing build, or WALFLEET_BIN_DIR), starts `walfleet
# serve` on its embedded SQLite store, an S3-compatible server (s3s-fs from the test cache
# ~/.cache/walfleet; a file:// replica where none is installed), and two projects with two
# apps each under `walfleet-agent run`. Then: writes marker rows, "redeploys" one app (its data
# directory wiped) and shows the markers restored, starts a second instance of a must-be-single
# app (the duplicate is caught and handed off), runs a restore drill, and prints the dashboard
# URL and the admin token. Every step is checked; at the end it prints "demo: OK" and stops
# everything it started. --keep leaves the fleet running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

KEEP=0
WORK=$ROOT/target/demo
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1 ;;
    --work) WORK=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "demo: unknown argument $1 (use --keep, --work DIR)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf 'demo: %s\n' "$*"; }
die() {
  printf 'demo: FAILED: %s\n' "$*" >&2
  for f in "$WORK"/logs/*.log; do
    [ -f "$f" ] && { printf -- '--- %s (last 15 lines)\n' "$f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}
command -v python3 >/dev/null || die "python3 is required (the demo apps use its sqlite3 module)"
command -v curl >/dev/null || die "curl is required"

if [ -n "${WALFLEET_BIN_DIR:-}" ]; then
  BIN=$WALFLEET_BIN_DIR
else
  say "building walfleet (debug)"
  cargo build --quiet -p agent -p controller --bins || die "cargo build failed"
  BIN=$ROOT/target/debug
fi
for b in walfleet walfleet-agent; do [ -x "$BIN/$b" ] || die "$BIN/$b is missing"; done

rm -rf "$WORK"; mkdir -p "$WORK/logs" "$WORK/data"
WORK=$(cd "$WORK" && pwd)
unset AWS_CA_BUNDLE AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL_S3 || true

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.1 s until it succeeds.
wait_for() {
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.1
  done
}

# --- object storage -------------------------------------------------------------------------
S3S=${WALFLEET_CACHE:-$HOME/.cache/walfleet}/s3s-fs/bin/s3s-fs
if [ -x "$S3S" ]; then
  S3_PORT=$(port)
  mkdir -p "$WORK/s3/demo"
  "$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key demo --secret-key demosecret "$WORK/s3" \
    >"$WORK/logs/s3s-fs.log" 2>&1 &
  PIDS+=($!)
  export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demosecret AWS_REGION=us-east-1
  export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
  wait_for 20 "s3s-fs" curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/"
  replica() { echo "s3://demo/$1/$2"; }
  root() { echo "s3://demo/$1"; }
  say "object storage: s3s-fs at $AWS_ENDPOINT_URL (bucket demo)"
else
  replica() { echo "file://$WORK/replicas/$1/$2"; }
  root() { echo "file://$WORK/replicas/$1"; }
  say "object storage: s3s-fs is not installed (scripts/install-deps.sh); using file:// replicas under $WORK/replicas"
fi

# --- the controller -------------------------------------------------------------------------
GRPC_PORT=$(port); HTTP_PORT=$(port)
export WALFLEET_ADMIN_TOKEN=wfadmin_demo_$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export WALFLEET_CONTROLLER=http://127.0.0.1:$GRPC_PORT
"$BIN/walfleet" serve --grpc-addr "127.0.0.1:$GRPC_PORT" --http-addr "127.0.0.1:$HTTP_PORT" \
  --database-url "sqlite://$WORK/walfleet.db" --lease-ttl 6s --scan-interval 5s \
  >"$WORK/logs/controller.log" 2>&1 &
PIDS+=($!)
wait_for 30 "walfleet serve" curl -sf "http://127.0.0.1:$HTTP_PORT/healthz"
say "controller: walfleet serve (gRPC $WALFLEET_CONTROLLER, dashboard http://127.0.0.1:$HTTP_PORT/)"

wf() { "$BIN/walfleet" "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# --- the apps -------------------------------------------------------------------------------
cat >"$WORK/app.py" <<'PY'
# A small real app: one note per commit through Python's sqlite3 (WAL), until SIGTERM.
import signal, sqlite3, sys, time
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT, at REAL)")
db.execute("CREATE TABLE IF NOT EXISTS markers(id INTEGER PRIMARY KEY, body TEXT)")
while not stop:
    db.execute("INSERT INTO notes(body, at) VALUES (?, ?)", ("note", time.time()))
    time.sleep(0.2)
PY

declare -A TOKEN AGENT_PORT
for p in shop blog; do
  TOKEN[$p]=$(wf projects create "$p" --replica-root "$(root "$p")" --json | json 'd["agent_token"]') \
    || die "create project $p"
done
say "projects: shop, blog (one agent token each; replicas only under $(root '<project>'))"

# start_app PROJECT DB DIR: walfleet-agent run in its own data directory; sets LAST_PID.
start_app() {
  local p=$1 d=$2 dir=$3 hp
  hp=$(port)
  mkdir -p "$dir"
  WALFLEET_TOKEN=${TOKEN[$p]} WALFLEET_PROJECT=$p WALFLEET_DB_NAME=$d WALFLEET_HTTP_ADDR=127.0.0.1:$hp \
    "$BIN/walfleet-agent" run "$dir/$d.db" "$(replica "$p" "$d")" -- python3 "$WORK/app.py" "$dir/$d.db" \
    >>"$WORK/logs/$p-$d.log" 2>&1 &
  LAST_PID=$!
  PIDS+=($LAST_PID)
  AGENT_PORT[$p/$d]=$hp
}
declare -A PID
for pd in shop/app shop/orders blog/posts blog/comments; do
  start_app "${pd%/*}" "${pd#*/}" "$WORK/data/$pd"
  PID[$pd]=$LAST_PID
done
for pd in shop/app shop/orders blog/posts blog/comments; do
  wait_for 60 "$pd to replicate" curl -sf "http://127.0.0.1:${AGENT_PORT[$pd]}/readyz"
done
healthy() { [ "$(wf databases --json | json 'sum(1 for x in d if x["status"] == "healthy")')" = 4 ]; }
wait_for 60 "four healthy databases" healthy
say "fleet: 4 apps under walfleet-agent run, all healthy"

# --- 1. marker rows ------------------------------------------------------------------------
APP_DB=$WORK/data/shop/app/app.db
python3 - "$APP_DB" <<'PY' || die "write marker rows"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=5)
db.executemany("INSERT INTO markers(body) VALUES (?)", [(f"marker {i}",) for i in range(3)])
db.commit()
PY
curl -sf "http://127.0.0.1:${AGENT_PORT[shop/app]}/durable" >/dev/null || die "the markers did not become durable"
say "step 1: wrote 3 marker rows into shop/app; the agent confirms they are in object storage (/durable)"

# --- 2. redeploy shop/app with its data directory wiped --------------------------------------
kill -TERM "${PID[shop/app]}"; wait "${PID[shop/app]}" || die "shop/app agent exited non-zero on SIGTERM"
rm -rf "$WORK/data/shop/app"
say "step 2: stopped shop/app (SIGTERM) and wiped its data directory, as a redeploy does"
start_app shop app "$WORK/data/shop/app"; PID[shop/app]=$LAST_PID
wait_for 60 "shop/app to come back" curl -sf "http://127.0.0.1:${AGENT_PORT[shop/app]}/readyz"
n=$(python3 -c "import sqlite3,sys; print(sqlite3.connect('file:'+sys.argv[1]+'?mode=ro', uri=True).execute(\"SELECT count(*) FROM markers WHERE body LIKE 'marker %'\").fetchone()[0])" "$APP_DB") \
  || die "read the markers back"
[ "$n" = 3 ] || die "after the redeploy shop/app has $n of 3 marker rows"
say "        restored on start: all 3 marker rows are back"

# --- 3. a second instance of a must-be-single app --------------------------------------------
before=$(wf generations shop/orders --json | json 'd[-1]["generation"]')
start_app shop orders "$WORK/data/shop/orders-2"; NEW_ORDERS=$LAST_PID
wait "${PID[shop/orders]}" || die "the first shop/orders instance did not exit cleanly after the handoff"
PID[shop/orders]=$NEW_ORDERS
wait_for 60 "the second shop/orders instance" curl -sf "http://127.0.0.1:${AGENT_PORT[shop/orders]}/readyz"
events=$(wf events --project shop --json)
for k in duplicate_instance handoff_requested handoff_completed; do
  echo "$events" | json "any(e['kind'] == '$k' and e['database'] == 'orders' for e in d) or sys.exit(1)" >/dev/null \
    || die "no $k event for shop/orders"
done
after=$(wf generations shop/orders --json | json 'd[-1]["generation"]')
[ "$after" -gt "$before" ] || die "shop/orders is still on generation $before after the handoff"
say "step 3: a second shop/orders instance was caught (duplicate_instance), the first handed over and exited; generation $before -> $after"

# --- 4. a restore drill ----------------------------------------------------------------------
# The drill compares the restored database with the checksum its holder reported: wait for the
# restored instance's first report of a durable transaction.
holder_reported() {
  wf instances --project "$1" --json \
    | json "any(i['database'] == '$2' and i['role'] == 'holder' and i['durable_txid'] > 0 for i in d) or sys.exit(1)"
}
wait_for 60 "the shop/app holder's report of a durable transaction" holder_reported shop app
wf scan >/dev/null || die "walfleet scan"
drill=$(wf drill shop/app --json) || die "the drill of shop/app failed: $drill"
echo "$drill" | json 'd["ok"] or sys.exit(1)' >/dev/null || die "the drill of shop/app did not pass: $drill"
echo "$drill" | json '"checksum matches" in d["message"] or sys.exit(1)' >/dev/null \
  || die "the drill of shop/app did not compare the agent's checksum: $drill"
say "step 4: restore drill of shop/app: $(echo "$drill" | json 'd["message"]')"

say "dashboard: http://127.0.0.1:$HTTP_PORT/"
say "admin token: $WALFLEET_ADMIN_TOKEN"
if [ "$KEEP" = 1 ]; then
  say "the fleet keeps running (logs in $WORK/logs); Ctrl-C stops it"
  trap 'cleanup; exit 0' INT TERM
  while :; do sleep 1; done
fi
say "OK"
