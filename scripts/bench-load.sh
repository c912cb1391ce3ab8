#!/usr/bin/env bash
# The headline load bench: the platform exactly as `bash scripts/run.sh` starts it (portal,
# gateway, two dispatchers, one worker; release build), driven from OUTSIDE by wrk
# (scripts/bench/invoke.lua) with a warm no-op python3 function and four API keys (so the
# per-key rate limit is not what is measured). It prints, per load: throughput, p50/p90/p99/max
# latency, answers by HTTP status and socket errors, the 2xx rate in each tenth of the run, the
# CPU each process used per call, the gateway's stage histograms and the deepest queues; beside
# them floors measured in the same run by the in-process benches (bare RabbitMQ publish ->
# consume, a direct round trip to a warm agent, a group commit of 64 run records), and the
# worker's resident memory after the load and after up to BENCH_IDLE_SECONDS of idling.
#
#   bash scripts/bench-load.sh
#
# Knobs (environment):
#   BENCH_SECONDS        length of each load (default 600)
#   BENCH_LOADS          which loads, in order (default "sync1 sync32 async64")
#   BENCH_IDLE_SECONDS   idle wait for the worker's memory (default 60)
#   BENCH_FLOORS         1 = measure the floors first with cargo bench (default 1)
#   COLORFAAS_SKIP_STACK 1 = the stack is already up and shared: run.sh leaves it alone
# The platform runs under its own AMQP prefix and database (loadbench-<time>), so it cannot mix
# with anyone else's; it is stopped on exit (the shared services keep running), its queues are
# deleted and its database dropped. Figures and logs stay in .stack/bench/<tag>/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECS="${BENCH_SECONDS:-600}"
LOADS="${BENCH_LOADS:-sync1 sync32 async64}"
IDLE="${BENCH_IDLE_SECONDS:-60}"
FLOORS="${BENCH_FLOORS:-1}"
TAG="loadbench-$(date -u +%Y%m%d-%H%M%S)"
export COLORFAAS_AMQP_PREFIX="$TAG"
export MONGODB_DB="${TAG//-/_}"
export PORTAL_ADDR=127.0.0.1:8080 GATEWAY_ADDR=127.0.0.1:8081
STATE="${COLORFAAS_STATE_DIR:-$ROOT/.stack}"
OUT="$STATE/bench/$TAG"
BIN="$ROOT/target/release"
MGMT="http://guest:guest@127.0.0.1:15672/api"
mkdir -p "$OUT"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

if ! command -v wrk >/dev/null; then
  [ "$(id -u)" = 0 ] || die "wrk is missing; install the Debian package wrk"
  log "installing wrk"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >"$OUT/apt.log" 2>&1 \
    || { apt-get update -q >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >"$OUT/apt.log" 2>&1; } \
    || die "apt-get install wrk failed (see $OUT/apt.log)"
fi
for port in 8080 8081 8090 8091 8092; do
  port_open "$port" && die "port $port is in use: another platform is running (stop it first)"
done

# --- the floors, before the platform starts (in-process benches, their own prefixes) ----------
floors() {
  # One cargo invocation for both, so that they share one feature resolution (and one build).
  log "floors: cargo bench -p dispatcher --bench hop -p gateway --bench gateway (short settings)"
  GATEWAY_BENCH_SECS=3 GATEWAY_BENCH_ASYNC_SECS=2 GATEWAY_BENCH_SEQ=1000 \
    cargo bench -q -p dispatcher --bench hop -p gateway --bench gateway >"$OUT/floors-raw.txt" 2>"$OUT/floors.err" \
    || log "the in-process benches failed (see $OUT/floors.err)"
  {
    grep -h 'floor, bare publish' "$OUT/floors-raw.txt" || echo "  (no RabbitMQ floor)"
    grep -h 'floor: direct agent' "$OUT/floors-raw.txt" || echo "  (no agent floor)"
    grep -ho 'MongoDB: one group commit of 64 pending runs took [0-9]* ms with [0-9]* runs stored' \
      "$OUT/floors-raw.txt" | sed 's/^/  /' || echo "  (no database floor)"
  } >"$OUT/floors.txt"
}
if [ "$FLOORS" = 1 ]; then floors; fi

# --- the platform, as the README's run command starts it --------------------------------------
RUN_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$RUN_PID" ]; then
    log "stopping the platform"
    kill -TERM "$RUN_PID" 2>/dev/null || true
    wait "$RUN_PID" 2>/dev/null || true
  fi
  # Its queues and exchanges (every name starts with the prefix), then its database.
  local kind name
  for kind in queues exchanges; do
    curl -fsS "$MGMT/$kind/%2f?columns=name" 2>/dev/null \
      | python3 -c 'import json,sys; [print(q["name"]) for q in json.load(sys.stdin) if q["name"].startswith(sys.argv[1] + ".")]' "$TAG" \
      | while read -r name; do curl -fsS -X DELETE "$MGMT/$kind/%2f/$name" >/dev/null 2>&1 || true; done || true
  done
  local py=""
  for cand in "$STATE/venv/bin/python3" python3; do
    if "$cand" -c 'import pymongo' 2>/dev/null; then py="$cand"; break; fi
  done
  if [ -n "$py" ]; then
    "$py" -c 'import pymongo,sys; pymongo.MongoClient("mongodb://127.0.0.1:27017").drop_database(sys.argv[1])' "$MONGODB_DB" \
      || log "could not drop database $MONGODB_DB"
  else
    log "no python with pymongo: database $MONGODB_DB is left behind"
  fi
  log "logs and figures: $OUT"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting the platform (bash scripts/run.sh; prefix and database $TAG)"
bash scripts/run.sh >"$OUT/run.log" 2>&1 &
RUN_PID=$!
for _ in $(seq 1 3600); do
  grep -q 'Color FaaS is running' "$OUT/run.log" && break
  kill -0 "$RUN_PID" 2>/dev/null || die "run.sh exited; see $OUT/run.log"
  sleep 0.5
done
grep -q 'Color FaaS is running' "$OUT/run.log" || die "the platform did not start in 30 min; see $OUT/run.log"

# --- a user, four keys, credit and a no-op function through the portal's JSON API -------------
api() { # method path [body] -> body on stdout; fails on a non-2xx answer
  curl -fsS -X "$1" "http://$PORTAL_ADDR/api/v1$2" -H 'Content-Type: application/json' \
    ${TOKEN:+-H "Authorization: Bearer $TOKEN"} ${3:+--data "$3"}
}
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
EMAIL="$TAG@example.com"
api POST /users "{\"email\":\"$EMAIL\",\"name\":\"Load Bench\",\"password\":\"bench-password-1\"}" >/dev/null
TOKEN="$(api POST /sessions "{\"email\":\"$EMAIL\",\"password\":\"bench-password-1\"}" | field token)"
KEYS=""
for i in 1 2 3 4; do
  KEYS="$KEYS${KEYS:+,}$(api POST /keys "{\"label\":\"bench-$i\"}" | field key)"
done
api POST /account/topups \
  '{"amount_micros":1000000000000,"card_number":"4242424242424242","card_expiry":"12/99","card_cvc":"123"}' >/dev/null
CODE="$(printf 'def handle(event, context):\n    return None\n' | base64 -w0)"
api POST /functions "{\"name\":\"noop\",\"runtime\":\"python3\",\"handler\":\"main.handle\",\"code_base64\":\"$CODE\",\"filename\":\"main.py\",\"mode\":\"sync\",\"resources\":{\"cpu_millicores\":100,\"memory_mb\":128,\"disk_mb\":64},\"timeout_ms\":1000}" >/dev/null
URL="http://$GATEWAY_ADDR/v1/invoke/noop"
FIRST_KEY="${KEYS%%,*}"
for i in $(seq 1 240); do # the worker registers, then the first call is a cold start
  code="$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL" -H "Authorization: Bearer $FIRST_KEY" --data '{}')"
  [ "$code" = 200 ] && break
  [ "$i" = 240 ] && die "the function never answered 200 (last $code); see $OUT/*.log"
  sleep 0.5
done
export BENCH_KEYS="$KEYS"
log "warming up: 10 s of sync calls on 32 connections (not measured)"
BENCH_MODE=sync wrk -t2 -c32 -d10s --timeout 30s -s scripts/bench/invoke.lua "$URL" >"$OUT/warmup.txt" 2>&1 || true

# --- measuring helpers ----------------------------------------------------------------------
pids_of() { # binary name -> pids of this checkout's release binary
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2>/dev/null)" = "$BIN/$1" ] && echo "${p#/proc/}"
  done
  return 0
}
pid_by_comm() { pgrep -x "$1" 2>/dev/null | tr '\n' ' '; }
ticks() { # pids... -> utime + stime summed (clock ticks)
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
machine_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
declare -A GROUP
GROUP[gateway]="$(pids_of gateway | tr '\n' ' ')"
GROUP[dispatchers]="$(pids_of dispatcher | tr '\n' ' ')"
GROUP[worker]="$(pids_of worker | tr '\n' ' ')"
GROUP[portal]="$(pids_of portal | tr '\n' ' ')"
GROUP[rabbitmq]="$(pid_by_comm beam.smp)"
GROUP[mongodb]="$(pgrep -f 'nx-27017 --data-dir|mongod ' 2>/dev/null | tr '\n' ' ')"
WORKER_PID="$(pids_of worker | head -1)"
[ -n "$WORKER_PID" ] || die "no worker process found"
cpu_snapshot() { # -> "name=ticks ..." for every group, then machine=ticks
  local g
  for g in gateway dispatchers worker portal rabbitmq mongodb; do
    # shellcheck disable=SC2086
    printf '%s=%s ' "$g" "$(ticks ${GROUP[$g]})"
  done
  printf 'machine=%s\n' "$(machine_ticks)"
}
cpu_report() { # before after calls -> CPU ms per call by process, and the machine's
  python3 - "$1" "$2" "$3" "$(getconf CLK_TCK)" <<'EOF'
import sys
a = dict(kv.split("=") for kv in sys.argv[1].split())
b = dict(kv.split("=") for kv in sys.argv[2].split())
calls, hz = max(int(sys.argv[3]), 1), int(sys.argv[4])
parts = []
listed = 0
for k in a:
    if k == "machine":
        continue
    ms = (int(b[k]) - int(a[k])) * 1000 / hz
    listed += ms
    parts.append(f"{k} {ms * 1000 / calls:.0f}")
machine = (int(b["machine"]) - int(a["machine"])) * 1000 / hz
parts.append(f"everything else (wrk, containers, other engineers) {(machine - listed) * 1000 / calls:.0f}")
print("    CPU µs per answered call: " + ", ".join(parts))
EOF
}
queue_sampler() { # every 2 s: each of our queues' depth; the deepest seen is reported
  while :; do
    curl -fsS "$MGMT/queues/%2f?columns=name,messages" 2>/dev/null \
      | python3 -c 'import json,sys; [print(q["name"], q.get("messages", 0)) for q in json.load(sys.stdin) if q["name"].startswith(sys.argv[1] + ".")]' "$TAG" || true
    sleep 2
  done
}
backlog() { # messages in our queues now
  curl -fsS "$MGMT/queues/%2f?columns=name,messages" 2>/dev/null \
    | python3 -c 'import json,sys; print(sum(q.get("messages", 0) for q in json.load(sys.stdin) if q["name"].startswith(sys.argv[1] + ".")))' "$TAG"
}

RESULTS="$OUT/results.txt"
: >"$RESULTS"
run_load() { # name mode threads connections
  local name=$1 mode=$2 t=$3 c=$4
  log "$name: $mode, $c connection(s), $SECS s (load average $(loadavg))"
  local la0 cpu0 cpu1 sampler ok drain=0
  la0="$(loadavg)"
  curl -fsS "http://$GATEWAY_ADDR/metrics" >"$OUT/$name.metrics.before"
  cpu0="$(cpu_snapshot)"
  queue_sampler >"$OUT/$name.queues" &
  sampler=$!
  BENCH_MODE=$mode wrk -t"$t" -c"$c" -d"${SECS}s" --timeout 30s -s scripts/bench/invoke.lua "$URL" \
    >"$OUT/$name.wrk" 2>&1 || true
  local result
  result="$(grep '^RESULT ' "$OUT/$name.wrk" | sed 's/^RESULT //')" || true
  [ -n "$result" ] || { cat "$OUT/$name.wrk" >&2; die "$name: wrk printed no result"; }
  if [ "$mode" = async ]; then # let the accepted backlog run, and time it
    local t0=$SECONDS
    while [ "$(backlog)" != 0 ] && [ $((SECONDS - t0)) -lt 600 ]; do sleep 1; done
    drain=$((SECONDS - t0))
  fi
  cpu1="$(cpu_snapshot)"
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  curl -fsS "http://$GATEWAY_ADDR/metrics" >"$OUT/$name.metrics.after"
  ok="$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$result")"
  {
    echo "$name $result drain=$drain load_before=${la0// /,} load_after=$(loadavg | tr ' ' ',')"
  } >>"$RESULTS"
  {
    echo "  $name detail:"
    cpu_report "$cpu0" "$cpu1" "$ok"
    echo "    gateway stage histograms over the load:"
    python3 scripts/bench/stages.py "$OUT/$name.metrics.before" "$OUT/$name.metrics.after"
    echo "    deepest queues (sampled every 2 s):"
    sort -k2,2nr "$OUT/$name.queues" | awk '!seen[$1]++ && $2 > 0 {printf "      %s %s\n", $1, $2}' | head -5
  } >>"$OUT/details.txt"
}

: >"$OUT/details.txt"
for load in $LOADS; do
  case "$load" in
    sync1) run_load sync1 sync 1 1 ;;
    sync32) run_load sync32 sync 2 32 ;;
    async64) run_load async64 async 2 64 ;;
    *) die "unknown load $load (sync1, sync32, async64)" ;;
  esac
done

# --- the worker's memory after the load, and after idling -----------------------------------
RSS_AFTER="$(rss_kb "$WORKER_PID")"
t0=$SECONDS
while [ $((SECONDS - t0)) -lt "$IDLE" ] && [ "$(rss_kb "$WORKER_PID")" -gt 30720 ]; do sleep 5; done
RSS_IDLE="$(rss_kb "$WORKER_PID")"
IDLE_TOOK=$((SECONDS - t0))

# --- the report ------------------------------------------------------------------------------
echo
echo "Load bench $TAG: wrk from outside against bash scripts/run.sh (release; 2 dispatchers, 1 worker, portal),"
echo "no-op python3 function (100 mCPU, 128 MB), 4 API keys; $(nproc) cores shared by everything on this machine"
echo "(including wrk and, on a shared machine, other people's work: see the load averages)."
echo
echo "| load | s | 2xx/s | p50 ms | p90 ms | p99 ms | max ms | answers by status | socket errors | load avg before → after |"
echo "|---|---|---|---|---|---|---|---|---|---|"
while read -r name rest; do
  get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $rest"; }
  label="$name"
  case "$name" in
    sync1) label="sync, 1 connection" ;;
    sync32) label="sync, 32 connections" ;;
    async64) label="async, 64 connections (backlog ran in $(get drain) s after)" ;;
  esac
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s → %s |\n' "$label" "$(get secs)" "$(get rate)" \
    "$(get p50)" "$(get p90)" "$(get p99)" "$(get max)" "$(get statuses)" "$(get socket_errors)" \
    "$(get load_before)" "$(get load_after)"
done <"$RESULTS"
echo
echo "2xx/s in each tenth of the run:"
while read -r name rest; do
  echo "  $name: $(sed -n 's/.* tenths=\([^ ]*\).*/\1/p' <<<" $rest")"
done <"$RESULTS"
echo
if [ -s "$OUT/floors.txt" ]; then
  echo "floors, measured in this run before the platform started (in-process benches):"
  cat "$OUT/floors.txt"
  echo
fi
cat "$OUT/details.txt"
echo
echo "worker resident memory: $((RSS_AFTER / 1024)) MB after the load, $((RSS_IDLE / 1024)) MB after ${IDLE_TOOK} s idle (goal <= 30 MB within 60 s)"
