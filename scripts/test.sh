#!/usr/bin/env bash
# The test command (README quick start, .ci/run): starts the services the tests talk to,
# and the third-party webhook verifiers (scripts/lib/verifiers.sh), then runs every test of
# the workspace against them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
. scripts/lib/verifiers.sh
cargo test --workspace --locked "$@"
