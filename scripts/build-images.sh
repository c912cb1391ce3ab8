#!/usr/bin/env bash
# Builds the Color FaaS function runtime images WITHOUT a container registry:
# each root filesystem is made by mmdebstrap from Debian bookworm packages and
# turned into an image with `docker import`.
#
#   colorfaas/runtime-python3:latest   python3 agent   (runtimes/agent/agent.py)
#   colorfaas/runtime-node:latest      node agent      (runtimes/agent/agent.js)
#   colorfaas/runtime-exec:latest      exec agent      (runtimes/agent/agent.py)
#
# Each image carries LABEL io.colorfaas.recipe=<sha256 of this script, the
# runtime's package list and its agent file>; an image whose label matches is
# left alone, so a second run takes well under a second.
# The python3 and exec images share one root filesystem (and one image layer).
#
# Usage: scripts/build-images.sh [--force]       (works from any directory)
# Users with a registry can instead `docker build -f runtimes/<rt>/Dockerfile runtimes`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCRIPT="scripts/build-images.sh"
SUITE="bookworm"
RUNTIMES=(python3 node exec)
FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,17p' "$SCRIPT" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-images: unknown argument: $arg (usage: $SCRIPT [--force])" >&2; exit 2 ;;
    esac
done

die() { echo "build-images: error: $*" >&2; exit 1; }

# --- per-runtime recipe -------------------------------------------------------
# python3-minimal alone has no `json` module (nor most of the stdlib), so the
# python images add libpython3.11-stdlib; tzdata makes zoneinfo work, as in
# python:3.11-slim.
packages_for() {
    case "$1" in
        python3|exec) echo "python3-minimal,libpython3.11-stdlib,tzdata" ;;
        node)         echo "nodejs" ;;
    esac
}
agent_for() {
    case "$1" in
        python3|exec) echo "runtimes/agent/agent.py" ;;
        node)         echo "runtimes/agent/agent.js" ;;
    esac
}
rootfs_for() {  # runtimes with the same rootfs key share one mmdebstrap run
    case "$1" in
        python3|exec) echo "python" ;;
        node)         echo "node" ;;
    esac
}
entrypoint_for() {
    case "$1" in
        python3|exec) echo '["python3", "/opt/colorfaas/agent.py"]' ;;
        node)         echo '["node", "/opt/colorfaas/agent.js"]' ;;
    esac
}
tag_for() { echo "colorfaas/runtime-$1:latest"; }

recipe_hash() {
    local rt="$1" agent
    agent="$(agent_for "$rt")"
    {
        printf 'runtime=%s\nsuite=%s\npackages=%s\n--- %s\n' "$rt" "$SUITE" "$(packages_for "$rt")" "$SCRIPT"
        cat "$SCRIPT"
        printf -- '--- %s\n' "$agent"
        cat "$agent"
    } | sha256sum | cut -d' ' -f1
}

now_ms() { date +%s%3N; }
START_MS="$(now_ms)"
elapsed() { local ms=$(( $(now_ms) - START_MS )); printf '%d.%ds' $((ms / 1000)) $(((ms % 1000) / 100)); }

# --- preconditions --------------------------------------------------------------
for rt in "${RUNTIMES[@]}"; do
    [[ -r "$(agent_for "$rt")" ]] || die "missing $(agent_for "$rt") (run from a complete checkout)"
done
command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed"
if ! docker_err="$(docker version --format '{{.Server.Version}}' 2>&1 >/dev/null)"; then
    die "cannot reach the Docker daemon${DOCKER_HOST:+ at $DOCKER_HOST}: ${docker_err##*$'\n'}"
fi

# Serialize concurrent runs (e.g. setup and tests started together).
LOCK="${TMPDIR:-/tmp}/colorfaas-build-images.lock"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$LOCK"
    flock -w 900 9 || die "timed out waiting for another build-images run ($LOCK)"
fi

# --- what needs building ----------------------------------------------------------
declare -A HASH=() OLD_ID=() NEED_ROOTFS=()
TODO=()
for rt in "${RUNTIMES[@]}"; do
    tag="$(tag_for "$rt")"
    HASH[$rt]="$(recipe_hash "$rt")"
    have="$(docker image inspect --format '{{ index .Config.Labels "io.colorfaas.recipe" }}' "$tag" 2>/dev/null || true)"
    if [[ $FORCE -eq 0 && "$have" == "${HASH[$rt]}" ]]; then
        echo "$tag: up to date"
        continue
    fi
    OLD_ID[$rt]="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
    TODO+=("$rt")
    NEED_ROOTFS[$(rootfs_for "$rt")]=1
done
[[ ${#TODO[@]} -eq 0 ]] && exit 0

if ! command -v mmdebstrap >/dev/null 2>&1; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "build-images: mmdebstrap is missing; installing it with apt-get" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >&2 \
            || die "mmdebstrap is missing and 'apt-get install -y mmdebstrap' failed"
    else
        die "mmdebstrap is missing (install it: apt-get install -y mmdebstrap)"
    fi
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/colorfaas-images.XXXXXX")"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        # the build job and its direct children (mmdebstrap, docker import)
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build ------------------------------------------------------------------------
build_rootfs() {  # $1 = rootfs key, $2 = one runtime using it; writes $TMP/$1.tar
    local key="$1" rt="$2" agent pkgs
    agent="$(agent_for "$rt")"
    pkgs="$(packages_for "$rt")"
    local -a opts=(
        --variant=essential
        --include="$pkgs"
        # no docs, manuals or translations (copyright files are kept)
        --dpkgopt='path-exclude=/usr/share/doc/*'
        --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --dpkgopt='path-exclude=/usr/share/man/*'
        --dpkgopt='path-exclude=/usr/share/info/*'
        --dpkgopt='path-exclude=/usr/share/locale/*'
        --dpkgopt='path-exclude=/usr/share/lintian/*'
        --customize-hook='mkdir -p "$1/opt/colorfaas" "$1/code" "$1/run/colorfaas"'
        --customize-hook="copy-in $agent /opt/colorfaas"
        --customize-hook='chmod 0755 "$1/opt/colorfaas" "$1/code" "$1/run/colorfaas" && chmod 0644 "$1"/opt/colorfaas/*'
        --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/log/* "$1"/usr/share/bash-completion'
    )
    # A merged /usr set up by mmdebstrap itself keeps usrmerge (and perl) out.
    if [[ -d /usr/share/mmdebstrap/hooks/merged-usr ]]; then
        opts+=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
    fi
    if ! mmdebstrap "${opts[@]}" "$SUITE" "$TMP/$key.tar" </dev/null >"$TMP/$key.log" 2>&1; then
        echo "build-images: error: mmdebstrap failed for the $key root filesystem; last lines:" >&2
        tail -n 25 "$TMP/$key.log" | sed 's/^/    /' >&2
        return 1
    fi
}

import_image() {  # $1 = runtime; $TMP/<rootfs>.tar must exist
    local rt="$1" tag tar
    tag="$(tag_for "$rt")"
    tar="$TMP/$(rootfs_for "$rt").tar"
    if ! docker import \
            --change "ENTRYPOINT $(entrypoint_for "$rt")" \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp COLORFAAS_RUNTIME=$rt" \
            --change 'USER 10001:10001' \
            --change 'WORKDIR /tmp' \
            --change "LABEL io.colorfaas.runtime=$rt io.colorfaas.recipe=${HASH[$rt]}" \
            --message "Color FaaS $rt runtime (mmdebstrap $SUITE)" \
            "$tar" "$tag" >"$TMP/$rt.import.log" 2>&1; then
        echo "build-images: error: docker import failed for $tag:" >&2
        sed 's/^/    /' "$TMP/$rt.import.log" >&2
        return 1
    fi
    # Drop the image this one replaced, unless something still uses it.
    local old="${OLD_ID[$rt]:-}" new
    new="$(docker image inspect --format '{{.Id}}' "$tag")"
    if [[ -n "$old" && "$old" != "$new" ]]; then
        docker image rm "$old" >/dev/null 2>&1 || true
    fi
    echo "$tag: built in $(elapsed)"
}

build_group() {  # $1 = rootfs key: build it once, then import every runtime using it
    local key="$1" rt first=""
    for rt in "${TODO[@]}"; do
        if [[ "$(rootfs_for "$rt")" == "$key" ]]; then first="$rt"; break; fi
    done
    build_rootfs "$key" "$first" || return 1
    for rt in "${TODO[@]}"; do
        if [[ "$(rootfs_for "$rt")" == "$key" ]]; then
            import_image "$rt" || return 1
        fi
    done
    rm -f "$TMP/$key.tar"
}

for key in "${!NEED_ROOTFS[@]}"; do
    build_group "$key" &
    PIDS+=("$!")
done
failed=0
for pid in "${PIDS[@]}"; do
    wait "$pid" || failed=1
done
PIDS=()
[[ $failed -eq 0 ]] || die "some runtime images were not built (see above)"
