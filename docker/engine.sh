#!/usr/bin/env bash
# A container engine for `make image` and tests/integration/test_container.py, set up by the
# project itself. Idempotent: once set up, a run only checks (about a second).
#
#   docker/engine.sh env               set up; print ENGINE=, COMPOSE=, CONTAINERS_CONF=, BASE=
#   docker/engine.sh build TAG         set up, then build docker/Dockerfile (CPU) as TAG
#   docker/engine.sh prometheus        print the image for compose's prometheus service: its
#                                      pinned prom/prometheus where it can be had, else one
#                                      built here from Debian's package (docker/local/)
#   docker/engine.sh images TAG        build TAG, then the prometheus image (`make test` runs
#                                      this in the background while the other tests run)
#
# Engine: a Docker engine that answers `docker info`, else podman, installed with apt-get
# where it is missing and this is root on Debian; MODELSERVE_ENGINE=docker|podman chooses.
# Exit status 3: no engine is there and none can be installed (the tests skip on it).
# Runs hold a lock, so a second one waits for the first and then finds its work done.
#
# Facts of the build machines it handles (harmless elsewhere):
# - crun fails on hybrid (v1) cgroups: where /sys/fs/cgroup is not cgroup2, podman runs with
#   runc and the cgroupfs manager;
# - raising a hard rlimit is refused: containers ask for the host's own hard limits, and no
#   more processes than kernel.pid_max (podman's rootful defaults ask for more);
# - no image registry is reachable: when the official base cannot be pulled, a Python base is
#   made from Debian's python3 (debootstrap, then `import`) and kept for the next builds;
# - TLS to the package registries goes through the host's CA bundle, and a CPU torch wheel may
#   lie in pip's find-links folder: with podman both are mounted into the build's RUN steps
#   (`podman build -v`), never copied into the image;
# - compose services find each other by name only with CNI's dnsname plugin.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${MODELSERVE_ENGINE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/modelserve-engine}
OFFICIAL_BASE=docker.io/library/python:3.11-slim-bookworm
LOCAL_BASE=localhost/modelserve-python:3.11-bookworm
LOCAL_PROMETHEUS=localhost/modelserve-prometheus:bookworm
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
# The torch wheel folder: pip's find-links here (the first one), where it exists.
TORCH_WHEELS=${TORCH_WHEELS:-${PIP_FIND_LINKS:-/opt/wheels}}
TORCH_WHEELS=${TORCH_WHEELS%% *}
PACKAGES=(podman runc debootstrap podman-compose golang-github-containernetworking-plugin-dnsname)

say() { echo "engine.sh: $*" >&2; }
unavailable() { say "$*"; exit 3; }

docker_engine() {
  command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1
}

install_podman() {
  if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 \
     && command -v debootstrap >/dev/null 2>&1 && command -v podman-compose >/dev/null 2>&1 \
     && { [ -x /usr/lib/cni/dnsname ] || ! command -v apt-get >/dev/null 2>&1; }; then
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 \
    || unavailable "no Docker engine answers, podman is missing and apt-get is unavailable"
  [ "$(id -u)" = 0 ] \
    || unavailable "no Docker engine answers and podman is missing (installing it needs root)"
  say "installing ${PACKAGES[*]} (apt-get)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${PACKAGES[@]}" >/dev/null
}

# containers.conf for podman: the host's hard rlimits, and runc + cgroupfs on v1 cgroups.
write_containers_conf() {
  local conf=$STATE/containers.conf nofile nproc pid_max limits=""
  nofile=$(ulimit -Hn) nproc=$(ulimit -Hu) pid_max=$(cat /proc/sys/kernel/pid_max)
  # no more processes than pids: runc was refused an nproc above kernel.pid_max here
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
  [ "$nofile" = unlimited ] || limits="\"nofile=$nofile:$nofile\", "
  {
    echo "[containers]"
    echo "default_ulimits = [$limits\"nproc=$nproc:$nproc\"]"
    if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ]; then
      echo "[engine]"
      echo 'runtime = "runc"'
      echo 'cgroup_manager = "cgroupfs"'
    fi
  } > "$conf.new"
  mv "$conf.new" "$conf"
  export CONTAINERS_CONF=$conf
}

image_exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# $1 if it is here or can be pulled (fails at once where no registry is reachable).
have_or_pull() {
  image_exists "$1" || timeout 600 "$ENGINE" pull -q "$1" >/dev/null 2>&1
}

# Debian bookworm with its python3 (3.11, as in the official image), made with debootstrap from
# the mirror apt uses here, trimmed of apt's lists, docs and locales, and imported.
build_local_base() {
  [ "$(id -u)" = 0 ] || { say "cannot pull $OFFICIAL_BASE, and debootstrap needs root"; exit 1; }
  command -v debootstrap >/dev/null 2>&1 || { say "debootstrap is missing"; exit 1; }
  local mirror rootfs=$STATE/rootfs quiet=()
  mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
           | grep -v security | head -n 1 || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  rm -rf "$rootfs"
  say "making $LOCAL_BASE: debootstrap bookworm from $mirror (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 \
    bookworm "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$STATE/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
         "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
         "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
  [ "$ENGINE" = podman ] && quiet=(--quiet)
  tar -C "$rootfs" -c . | "$ENGINE" import "${quiet[@]}" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null
  rm -rf "$rootfs"
}

# The base image: $PYTHON_IMAGE if set; else the official one if it is here or can be pulled;
# else the local one (made once, then reused).
choose_base() {
  if [ -n "${PYTHON_IMAGE:-}" ]; then BASE=$PYTHON_IMAGE
  elif image_exists "$OFFICIAL_BASE"; then BASE=$OFFICIAL_BASE
  elif image_exists "$LOCAL_BASE"; then BASE=$LOCAL_BASE
  elif have_or_pull "$OFFICIAL_BASE"; then BASE=$OFFICIAL_BASE
  else
    say "$OFFICIAL_BASE cannot be pulled: making a local Python base instead"
    build_local_base
    BASE=$LOCAL_BASE
  fi
}

setup() {
  CONTAINERS_CONF=
  ENGINE=${MODELSERVE_ENGINE:-}
  if [ -z "$ENGINE" ]; then
    if docker_engine; then ENGINE=docker; else ENGINE=podman; fi
  fi
  if [ "$ENGINE" = podman ]; then
    install_podman
    write_containers_conf
    COMPOSE=podman-compose
  else
    command -v docker >/dev/null 2>&1 || unavailable "MODELSERVE_ENGINE=docker: no docker"
    COMPOSE="docker compose"
  fi
  "$ENGINE" info >/dev/null 2>&1 || { "$ENGINE" info >&2 || true; exit 1; }
  choose_base
}

# Build flags beyond the Dockerfile's defaults (into FLAGS). podman: the host's CA bundle over
# the base's (pip trusts the system store: truststore in pip >= 24.2, Debian's patched certifi
# before), and the folder holding this torch's CPU wheel on /mnt. Both are mounted only while
# a RUN step runs, on paths every Debian base already has, so the image gets neither their
# content nor a mount point of theirs.
build_flags() {
  FLAGS=(--build-arg "PYTHON_IMAGE=$BASE" --build-arg VARIANT=cpu
         --build-arg "TORCH_VERSION=$TORCH_VERSION")
  [ "$ENGINE" = podman ] || return 0
  # docker format: OCI images drop SHELL and HEALTHCHECK
  FLAGS+=(--pull=never --format docker)
  local ca
  for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [ -f "$ca" ]; then
      FLAGS+=(-v "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
      break
    fi
  done
  if compgen -G "$TORCH_WHEELS/torch-$TORCH_VERSION+cpu-cp311-*.whl" >/dev/null; then
    FLAGS+=(-v "$TORCH_WHEELS:/mnt:ro" --build-arg TORCH_FIND_LINKS=/mnt)
  fi
}

build() {
  build_flags
  local args=("${FLAGS[@]}" -f "$ROOT/docker/Dockerfile" "$ROOT")
  say "$ENGINE build -t $1 ${args[*]}"
  if [ "$ENGINE" = docker ]; then
    DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-1} docker build -t "$1" "${args[@]}"
    return
  fi
  # Each change leaves the last image and build stage untagged (2.5 GB): the build stage is
  # tagged too, so pruning the untagged images frees the disk and keeps every layer in use.
  podman build --target build -t "${1%:*}-build-stage:latest" "${args[@]}"
  podman build -t "$1" "${args[@]}"
  podman image prune -f >/dev/null
}

# compose's pinned Prometheus where it can be had, else Debian's prometheus on the local base.
prometheus_image() {
  local pinned
  pinned=$(awk '/image: *prom\/prometheus:/ {print $2; exit}' "$ROOT/docker/compose.yaml")
  if [ -n "$pinned" ] && have_or_pull "docker.io/$pinned"; then
    PROMETHEUS=docker.io/$pinned
    return
  fi
  PROMETHEUS=$LOCAL_PROMETHEUS
  image_exists "$PROMETHEUS" && return
  say "${pinned:-prom/prometheus} cannot be pulled: building $PROMETHEUS from Debian's package"
  local base=$BASE
  [ "$base" = "$OFFICIAL_BASE" ] && base=docker.io/library/debian:bookworm-slim
  "$ENGINE" build --build-arg "DEBIAN_IMAGE=$base" -t "$PROMETHEUS" \
    -f "$ROOT/docker/local/prometheus.Containerfile" "$ROOT/docker/local" >&2
}

# One run at a time (apt-get, the base, builds): the script runs again under the lock, which its
# children do not inherit.
if [ -z "${MODELSERVE_ENGINE_LOCKED:-}" ]; then
  mkdir -p "$STATE"
  MODELSERVE_ENGINE_LOCKED=1 exec flock -o "$STATE/lock" bash "$0" "$@"
fi

case "${1:-}" in
  env)
    setup
    echo "ENGINE=$ENGINE"
    echo "COMPOSE=$COMPOSE"
    echo "CONTAINERS_CONF=$CONTAINERS_CONF"
    echo "BASE=$BASE"
    ;;
  build)
    [ -n "${2:-}" ] || { say "usage: $0 build TAG"; exit 2; }
    setup
    build "$2"
    ;;
  prometheus)
    setup
    prometheus_image
    echo "$PROMETHEUS"
    ;;
  images)
    [ -n "${2:-}" ] || { say "usage: $0 images TAG"; exit 2; }
    setup
    build "$2"
    prometheus_image
    ;;
  *)
    echo "usage: $0 env | build TAG | prometheus | images TAG" >&2
    exit 2
    ;;
esac
