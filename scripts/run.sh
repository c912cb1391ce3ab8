#!/usr/bin/env bash
# Sets up the local stack and runs the whole platform in the foreground: portal, gateway, two
# dispatchers (leader + hot standby) and a worker. Ctrl-C or SIGTERM stops it cleanly.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# COLORFAAS_SKIP_STACK=1: the stack (RabbitMQ, ZooKeeper, MongoDB, runtime images) is already up and
# shared with others, so leave it alone (scripts/bench-load.sh on a shared machine).
if [ "${COLORFAAS_SKIP_STACK:-0}" != 1 ]; then bash scripts/stack.sh up; fi
echo "[run] building (release)"
cargo build --release --bins --quiet

STATE="${COLORFAAS_STATE_DIR:-$ROOT/.stack}"
export MONGODB_URI="${MONGODB_URI:-mongodb://127.0.0.1:27017}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export ZK_CONNECT="${ZK_CONNECT:-127.0.0.1:2181}"
export PORTAL_ADDR="${PORTAL_ADDR:-127.0.0.1:8080}"
export GATEWAY_ADDR="${GATEWAY_ADDR:-127.0.0.1:8081}"
export PORTAL_GATEWAY_URL="${PORTAL_GATEWAY_URL:-http://$GATEWAY_ADDR}"
BIN="$ROOT/target/release"
mkdir -p "$STATE"
# Functions' secrets are sealed with this key (portal) and opened with it (workers).
if [ -z "${COLORFAAS_SECRETS_KEY:-}" ]; then
  if [ ! -s "$STATE/secrets.key" ]; then
    (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$STATE/secrets.key")
  fi
  COLORFAAS_SECRETS_KEY="$(cat "$STATE/secrets.key")"
  export COLORFAAS_SECRETS_KEY
fi
pids=()

# Runs one component and restarts it whenever it exits (a component exits non-zero when it
# cannot recover by itself), with back-off: 1 s, doubling to 30 s, back to 1 s after a minute
# of running. Every restart is logged here and in the component's log.
supervise() { # name, then env assignments and args
  local name=$1; shift
  local label="$name${SUFFIX:-}" log="$STATE/$name${SUFFIX:-}.log"
  if [ ! -x "$BIN/$name" ]; then
    echo "[run] $name: not built; skipping"
    return
  fi
  (
    child=""
    trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; [ -n "$child" ] && wait "$child" 2>/dev/null; exit 0' INT TERM
    backoff=1
    while :; do
      started=$SECONDS
      env "$@" "$BIN/$name" >>"$log" 2>&1 &
      child=$!
      rc=0
      wait "$child" || rc=$?
      child=""
      if [ $((SECONDS - started)) -ge 60 ]; then backoff=1; fi
      echo "[run] $label exited (status $rc); restarting in ${backoff}s (log $log)" | tee -a "$log"
      sleep "$backoff" & wait $! || true
      backoff=$((backoff * 2 > 30 ? 30 : backoff * 2))
    done
  ) &
  pids+=($!)
  echo "[run] $label started (supervised, log $log)"
}

stop() {
  echo "[run] stopping"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${sleeper:-}" ]; then kill "$sleeper" 2>/dev/null || true; fi
  echo "[run] stopped"
  exit 0
}
trap stop INT TERM

SUFFIX=-1 supervise worker WORKER_ID=worker-1 WORKER_DIR="$STATE/worker-1" WORKER_ADDR=127.0.0.1:8090
SUFFIX=-1 supervise dispatcher DISPATCHER_ID=dispatcher-1 DISPATCHER_ADDR=127.0.0.1:8091
SUFFIX=-2 supervise dispatcher DISPATCHER_ID=dispatcher-2 DISPATCHER_ADDR=127.0.0.1:8092
supervise gateway
# Top-ups use the built-in TEST payment provider (any valid card pays): named explicitly, as a
# portal without PORTAL_PAYMENT_PROVIDER takes no payments.
supervise portal PORTAL_PAYMENT_PROVIDER="${PORTAL_PAYMENT_PROVIDER:-test}"

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
  sleep 3600 & sleeper=$!
  wait "$sleeper" || true
done
