#!/usr/bin/env bash
# The test command (README quick start, .ci/run): starts the services the tests talk to,
# then runs every test of the workspace against them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo test --workspace --locked "$@"
