#!/usr/bin/env bash
# THE test command: installs/updates the external tools (cached), builds every binary the
# black-box tests start, then runs the whole workspace test suite with nextest
# (profile in .config/nextest.toml). Extra arguments go to `cargo nextest run`,
# e.g. `scripts/test.sh -p tests harness::`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --workspace --bins

# One Ceph RGW cluster for the whole run (the realism tier's tests fail without it).
CEPH_DIR="${TMPDIR:-/tmp}/walfleet-ceph-$$"
trap 'bash scripts/ceph.sh stop "$CEPH_DIR"; rm -rf "$CEPH_DIR"' EXIT
bash scripts/ceph.sh start "$CEPH_DIR"
export WALFLEET_CEPH_ENV="$CEPH_DIR/env"

cargo nextest run --workspace --no-fail-fast "$@"
