#!/usr/bin/env bash
# Sets up the local stack and runs the whole platform in the foreground: portal, gateway, two
# dispatchers (leader + hot standby) and a worker. Ctrl-C or SIGTERM stops it cleanly.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/stack.sh up
echo "[run] building (release)"
cargo build --release --bins --quiet

STATE="${COLORFAAS_STATE_DIR:-$ROOT/.stack}"
export MONGODB_URI="${MONGODB_URI:-mongodb://127.0.0.1:27017}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export ZK_CONNECT="${ZK_CONNECT:-127.0.0.1:2181}"
export PORTAL_ADDR="${PORTAL_ADDR:-127.0.0.1:8080}"
export GATEWAY_ADDR="${GATEWAY_ADDR:-127.0.0.1:8081}"
BIN="$ROOT/target/release"
pids=()

start() { # name, then env assignments and args
  local name=$1; shift
  if [ ! -x "$BIN/$name" ]; then
    echo "[run] $name: not built yet (its issue is open); skipping"
    return
  fi
  env "$@" "$BIN/$name" >"$STATE/$name${SUFFIX:-}.log" 2>&1 &
  pids+=($!)
  echo "[run] $name${SUFFIX:-} started (pid $!, log $STATE/$name${SUFFIX:-}.log)"
}

stop() {
  echo "[run] stopping"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo "[run] stopped"
  exit 0
}
trap stop INT TERM

SUFFIX=-1 start worker WORKER_ID=worker-1 WORKER_DIR="$STATE/worker-1" WORKER_ADDR=127.0.0.1:8090
SUFFIX=-1 start dispatcher DISPATCHER_ID=dispatcher-1 DISPATCHER_ADDR=127.0.0.1:8091
SUFFIX=-2 start dispatcher DISPATCHER_ID=dispatcher-2 DISPATCHER_ADDR=127.0.0.1:8092
start gateway
# Top-ups use the built-in TEST payment provider (any valid card pays): named explicitly, as a
# portal without PORTAL_PAYMENT_PROVIDER takes no payments.
start portal PORTAL_PAYMENT_PROVIDER="${PORTAL_PAYMENT_PROVIDER:-test}"

wait_healthy() { # name, host:port — waits until its /healthz says 200 (at most a minute)
  for _ in $(seq 1 120); do
    if curl -fsS -o /dev/null "http://$2/healthz" 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "[run] $1 is not healthy yet; see $STATE/$1.log"
}
wait_healthy gateway "$GATEWAY_ADDR"
wait_healthy portal "$PORTAL_ADDR"

echo
echo "Color FaaS is running:"
echo "  portal   http://$PORTAL_ADDR  (web pages; JSON API under /api/v1)"
echo "  gateway  http://$GATEWAY_ADDR/v1/invoke/<function>"
echo "  rabbitmq http://127.0.0.1:15672 (guest/guest)"
echo "Ctrl-C stops it."
while :; do
  for p in "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
      echo "[run] a component (pid $p) exited; see the logs in $STATE"
      stop
    fi
  done
  sleep 1 & wait $! || true
done
