#!/usr/bin/env bash
# THE test command: installs/updates the external tools (cached), builds every binary the
# black-box tests start, then runs the whole workspace test suite with nextest
# (profile in .config/nextest.toml). Extra arguments go to `cargo nextest run`,
# e.g. `scripts/test.sh -p tests harness::`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
