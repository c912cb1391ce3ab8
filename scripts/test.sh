#!/usr/bin/env bash
# Sets up the local stack (installing what is missing) and runs every test: unit tests, the
# runtime agents' protocol tests, and the integration tests against real RabbitMQ, ZooKeeper,
# MongoDB and Docker. Safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/stack.sh up

echo "[test] runtime agents"
python3 runtimes/agent/test_agents.py

echo "[test] cargo build"
cargo build --workspace --all-targets --quiet

echo "[test] cargo test"
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-2}"
