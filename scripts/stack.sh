#!/usr/bin/env bash
# Sets up the local stack from nothing and starts what is not running, on loopback:
# RabbitMQ (+ management UI), ZooKeeper, MongoDB (mongod, or the nx-27017 stand-in), and the
# function runtime images. Safe to run again: it reuses whatever is already up.
#
#   scripts/stack.sh up      install + start everything (default)
#   scripts/stack.sh status  print what is running
#   scripts/stack.sh down    stop the services this script started
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${COLORFAAS_STATE_DIR:-$ROOT/.stack}"
mkdir -p "$STATE"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds what
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  return 1
}

APT_UPDATED=0
apt_install() { # packages...
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "packages missing (${missing[*]}); run as root or install them"
  log "installing ${missing[*]}"
  if [ "$APT_UPDATED" = 0 ]; then
    apt-get update -q >"$STATE/apt-update.log" 2>&1 || die "apt-get update failed (see $STATE/apt-update.log)"
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >"$STATE/apt-install.log" 2>&1 || die "apt-get install ${missing[*]} failed (see $STATE/apt-install.log)"
}

check_docker() {
  command -v docker >/dev/null || die "docker is not installed; install Docker Engine and start it"
  docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (is dockerd running, and may this user use /var/run/docker.sock?)"
}

start_rabbitmq() {
  if port_open 5672 && port_open 15672; then log "rabbitmq: already running"; return; fi
  apt_install rabbitmq-server curl
  # Loopback only, management UI on 15672.
  if ! grep -q colorfaas /etc/rabbitmq/rabbitmq-env.conf 2>/dev/null; then
    printf '# colorfaas: loopback only\nNODE_IP_ADDRESS=127.0.0.1\nexport ERL_EPMD_ADDRESS=127.0.0.1\n' >>/etc/rabbitmq/rabbitmq-env.conf
  fi
  if ! grep -q colorfaas /etc/rabbitmq/rabbitmq.conf 2>/dev/null; then
    printf '# colorfaas\nmanagement.tcp.ip = 127.0.0.1\nmanagement.tcp.port = 15672\nheartbeat = 10\n' >>/etc/rabbitmq/rabbitmq.conf
  fi
  rabbitmq-plugins enable --offline rabbitmq_management >/dev/null
  if ! port_open 5672; then
    log "rabbitmq: starting"
    (cd / && setsid rabbitmq-server >"$STATE/rabbitmq.out" 2>&1 &)
  fi
  wait_port 5672 60 || die "rabbitmq did not open 5672 within 60 s (see $STATE/rabbitmq.out, /var/log/rabbitmq)"
  wait_port 15672 60 || die "rabbitmq management UI did not open 15672 within 60 s"
  log "rabbitmq: up (amqp 5672, management http://127.0.0.1:15672 guest/guest)"
}

start_zookeeper() {
  if port_open 2181; then log "zookeeper: already running"; return; fi
  apt_install zookeeper
  local dir="$STATE/zookeeper"
  mkdir -p "$dir/data" "$dir/log"
  cat >"$dir/zoo.cfg" <<EOF
tickTime=500
initLimit=10
syncLimit=5
dataDir=$dir/data
clientPort=2181
clientPortAddress=127.0.0.1
minSessionTimeout=1000
maxSessionTimeout=30000
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr
EOF
  log "zookeeper: starting"
  ZOO_LOG_DIR="$dir/log" ZOOPIDFILE="$dir/zookeeper.pid" \
    /usr/share/zookeeper/bin/zkServer.sh start "$dir/zoo.cfg" >"$dir/start.out" 2>&1 \
    || die "zookeeper failed to start (see $dir/start.out and $dir/log)"
  wait_port 2181 30 || die "zookeeper did not open 2181 within 30 s (see $dir/log)"
  log "zookeeper: up (127.0.0.1:2181)"
}

# The nx-27017 stand-in, installed into $STATE/venv (where no mongod exists).
install_standin() {
  local venv="$STATE/venv"
  [ -x "$venv/bin/nx-27017" ] && return 0
  log "mongodb: no mongod on PATH; installing the nx-27017 stand-in into $venv"
  python3 -m venv "$venv" || { apt_install python3-venv; python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q nx-27017 >"$STATE/pip.log" 2>&1 || die "pip install nx-27017 failed (see $STATE/pip.log)"
}

start_mongodb() {
  if port_open 27017; then log "mongodb: already running"; return; fi
  if command -v mongod >/dev/null; then
    mkdir -p "$STATE/mongod"
    log "mongodb: starting mongod"
    mongod --dbpath "$STATE/mongod" --bind_ip 127.0.0.1 --port 27017 --fork \
      --logpath "$STATE/mongod/mongod.log" >/dev/null || die "mongod failed (see $STATE/mongod/mongod.log)"
  else
    local venv="$STATE/venv"
    install_standin
    mkdir -p "$STATE/nx-data"
    log "mongodb: starting the nx-27017 stand-in"
    (cd "$STATE" && setsid "$venv/bin/nx-27017" --data-dir "$STATE/nx-data" --log-file "$STATE/nx-27017.log" \
      --pid-file "$STATE/nx-27017.pid" >"$STATE/nx-27017.out" 2>&1 &)
  fi
  wait_port 27017 30 || die "mongodb did not open 27017 within 30 s"
  log "mongodb: up (mongodb://127.0.0.1:27017)"
}

# The fault suite (tests/tests/faults.rs) runs RabbitMQ, ZooKeeper and MongoDB instances of its
# own, on other ports and data folders: their programs must be installed even where the shared
# services already run (e.g. started by someone else).
fault_suite_programs() {
  apt_install rabbitmq-server zookeeper
  command -v mongod >/dev/null || install_standin
}

# schemathesis (PyPI) fuzzes the gateway and portal against their OpenAPI documents in the tests
# (tests/tests/openapi.rs); it gets a venv of its own, pinned.
SCHEMATHESIS_VERSION=4.32.5
install_schemathesis() {
  local venv="$STATE/schemathesis"
  if "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    log "schemathesis: $SCHEMATHESIS_VERSION installed"; return
  fi
  log "schemathesis: installing $SCHEMATHESIS_VERSION into $venv"
  python3 -m venv "$venv" || { apt_install python3-venv; python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" >"$STATE/pip-schemathesis.log" 2>&1 \
    || die "pip install schemathesis failed (see $STATE/pip-schemathesis.log)"
}

up() {
  local t0=$SECONDS
  check_docker
  command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
  start_rabbitmq
  start_zookeeper
  start_mongodb
  fault_suite_programs
  apt_install mmdebstrap
  apt_install chromium chromium-driver # the portal's browser test (headless, via chromedriver)
  install_schemathesis
  # The portal checks uploads without running them: python3's compiler and `node --check`.
  command -v node >/dev/null || apt_install nodejs
  bash "$ROOT/scripts/build-images.sh"
  log "stack ready in $((SECONDS - t0)) s"
}

status() {
  for p in 5672:rabbitmq 15672:rabbitmq-management 2181:zookeeper 27017:mongodb; do
    if port_open "${p%%:*}"; then echo "${p#*:}: up"; else echo "${p#*:}: down"; fi
  done
  docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^colorfaas/' || echo "runtime images: none"
}

down() {
  [ -f "$STATE/nx-27017.pid" ] && kill "$(cat "$STATE/nx-27017.pid")" 2>/dev/null || true
  pkill -f "nx-27017 --data-dir $STATE" 2>/dev/null || true
  [ -f "$STATE/zookeeper/zoo.cfg" ] && ZOOPIDFILE="$STATE/zookeeper/zookeeper.pid" \
    /usr/share/zookeeper/bin/zkServer.sh stop "$STATE/zookeeper/zoo.cfg" >/dev/null 2>&1 || true
  rabbitmqctl stop >/dev/null 2>&1 || true
  log "stopped"
}

case "${1:-up}" in
  up) up ;;
  status) status ;;
  down) down ;;
  *) die "usage: $0 [up|status|down]" ;;
esac
