#!/usr/bin/env bash
# Sets up the local stack (installing what is missing) and runs every test: unit tests, the
# runtime agents' protocol tests, and the integration tests against real RabbitMQ, ZooKeeper,
# MongoDB and Docker — among them tests/tests/openapi.rs, which runs schemathesis (installed by
# stack.sh into .stack/schemathesis) against a gateway and a portal started for it (a minute or
# two). Safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/stack.sh up

echo "[test] runtime agents"
python3 runtimes/agent/test_agents.py

echo "[test] cargo build"
cargo build --workspace --all-targets --quiet

echo "[test] cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary, the last often for an
# empty doc-test set).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\n%d passed, %d failed\n", p, f }' "$log"
exit "$status"
