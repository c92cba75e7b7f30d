#!/usr/bin/env bash
# Build the Docker image with buildah and check that it serves and trains, on a machine without
# a Docker engine or Docker Hub access (buildah, chroot isolation, vfs storage; run as root).
#
#   scripts/docker_smoke.sh [CHECKOUT]
#
# CHECKOUT (default: the repo this script sits in) is a checkout where `dvc repro` has run; its
# models/, metrics/ and dvc.lock are mounted into the container. The image is built from the
# repo this script sits in. Steps:
#   1. base image: if BASE_IMAGE is not in local storage, debootstrap a minimal Debian bookworm
#      (python3.11 + venv) and commit it as BASE_IMAGE (about 3 minutes, once);
#   2. `buildah bud` of the Dockerfile, with pip pointed at the same local wheel folders, indexes
#      and CA bundle this machine's pip uses (read from `pip config`), bind-mounted read-only, so
#      torch installs from disk at the pinned version; the rest comes from PyPI (about 7 minutes);
#   3. serve: the image's own CMD with PORT set to a free port, in the background; wait for
#      GET /ready = 200, POST a generated PNG to /predict, expect 200 and a `predictions` list;
#   4. train: a tiny `dvc repro` (the params tests/test_pipeline_e2e.py uses) inside the image on
#      a temporary git copy of the repo mounted at /app; expect models/classifier.pt2 (~2 min).
# It prints the build time and the image size, and exits non-zero with a message on any failure.
# Time on a 2-core machine: about 11 minutes in all (5 with SKIP_BUILD=1), plus 3 for a new base.
# Needs: buildah (apt-get install buildah), debootstrap for step 1, curl, git, and a python with
# Pillow and PyYAML (default: the repo's .venv). Disk: about 3x the image size under
# /var/lib/containers (vfs keeps full copies).
#
# Environment: BASE_IMAGE (default localhost/python:3.11-slim-local), IMAGE (default
# localhost/flowerlab:latest), DEBIAN_MIRROR, PYTHON, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS and
# PIP_CERT (override what pip config says), READY_TIMEOUT (seconds, default 180), SKIP_BUILD=1
# (reuse an existing IMAGE instead of rebuilding it).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHECKOUT=$(cd "${1:-$REPO}" && pwd)
BASE_IMAGE=${BASE_IMAGE:-localhost/python:3.11-slim-local}
IMAGE=${IMAGE:-localhost/flowerlab:latest}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
READY_TIMEOUT=${READY_TIMEOUT:-180}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3

BUILDAH=(buildah --storage-driver vfs)
ISOLATION=(--isolation chroot)

log() { printf '\n== %s\n' "$*"; }
die() { printf '\ndocker_smoke: FAILED: %s\n' "$*" >&2; exit 1; }

# --- cleanup: the server, the working containers, the temporary folder --------------------------
WORK=$(mktemp -d /tmp/flowerlab-smoke.XXXXXX)
CONTAINERS=()
CTR=
SERVER_PID=
cleanup() {
    local rc=$?
    stop_server
    for ctr in "${CONTAINERS[@]}"; do "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true; done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# `buildah run` does not pass SIGTERM on to its command: end the command's own process tree.
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$child"; descendants "$child"; done
}
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    local pids
    pids="$(descendants "$SERVER_PID") $SERVER_PID"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

new_container() {  # IMAGE: a fresh working container from IMAGE in $CTR, removed on exit
    CTR=$("${BUILDAH[@]}" from --pull-never "$1") || die "buildah from $1"
    CONTAINERS+=("$CTR")
}

image_size() { "${BUILDAH[@]}" images --format '{{.Size}}' "$1" | head -n1; }

# --- preflight ----------------------------------------------------------------------------------
command -v buildah >/dev/null || die "buildah not found: apt-get install -y buildah"
command -v curl >/dev/null || die "curl not found"
[[ $(id -u) == 0 ]] || die "run as root (buildah with chroot isolation and vfs storage)"
"$PYTHON" -c "import PIL, yaml" 2>/dev/null || die "$PYTHON lacks Pillow/PyYAML: set PYTHON"
for f in models/classifier.pt2 dvc.lock; do
    [[ -f $CHECKOUT/$f ]] || die "$CHECKOUT/$f missing: run \`dvc repro\` in $CHECKOUT first"
done
[[ -d $CHECKOUT/metrics ]] || die "$CHECKOUT/metrics missing: run \`dvc repro\` first"
echo "repo: $REPO   checkout: $CHECKOUT   image: $IMAGE   base: $BASE_IMAGE"

# --- 1. base image --------------------------------------------------------------------------------
if "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE: present"
else
    log "base image $BASE_IMAGE: debootstrap Debian bookworm from $DEBIAN_MIRROR"
    command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install -y debootstrap"
    base_start=$SECONDS
    new_container scratch
    root=$("${BUILDAH[@]}" mount "$CTR")
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap"; }
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    "${BUILDAH[@]}" unmount "$CTR" >/dev/null
    "${BUILDAH[@]}" config --env LANG=C.UTF-8 --cmd python3 "$CTR"
    "${BUILDAH[@]}" commit --quiet --rm "$CTR" "$BASE_IMAGE" >/dev/null || die "commit $BASE_IMAGE"
    echo "base image built in $((SECONDS - base_start)) s, size $(image_size "$BASE_IMAGE")"
fi

# --- 2. build -------------------------------------------------------------------------------------
# The local package sources and the CA bundle this machine's pip uses; each is bind-mounted
# read-only into the build at the same path (a CA bundle that a TLS-inspecting proxy needs is
# not in the image's). A PEP 503 index at .../simple links to ../../files: its parent is mounted.
pip_setting() {  # pip's own precedence: PIP_* environment variable, then pip config
    local env_name=$1 key=$2
    if [[ -n ${!env_name:-} ]]; then echo "${!env_name}"; return; fi
    "$PYTHON" -m pip config get "global.$key" 2>/dev/null || true
}
extra_index=$(pip_setting PIP_EXTRA_INDEX_URL extra-index-url)
find_links=$(pip_setting PIP_FIND_LINKS find-links)
cert=$(pip_setting PIP_CERT cert)
volumes=()
if [[ -n $cert && -f $cert ]]; then volumes+=(--volume "$cert:$cert:ro"); else cert=; fi
for source in $extra_index $find_links; do
    path=${source#file://}
    [[ $path == /* ]] || continue
    [[ $(basename "$path") == simple ]] && path=$(dirname "$path")
    [[ -d $path ]] && volumes+=(--volume "$path:$path:ro")
done
if [[ ${SKIP_BUILD:-0} == 1 ]] && "${BUILDAH[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1; then
    BUILD_SECONDS="skipped (SKIP_BUILD=1)"
else
    log "build $IMAGE (pip extra-index-url: '$extra_index', find-links: '$find_links', cert: '$cert')"
    old_id=$("${BUILDAH[@]}" images --quiet --no-trunc "$IMAGE" 2>/dev/null | head -n1 || true)
    build_start=$SECONDS
    "${BUILDAH[@]}" bud "${ISOLATION[@]}" --format docker --pull-never \
        --build-arg BASE_IMAGE="$BASE_IMAGE" \
        --build-arg PIP_EXTRA_INDEX_URL="$extra_index" \
        --build-arg PIP_FIND_LINKS="$find_links" \
        --build-arg PIP_CERT="$cert" \
        "${volumes[@]}" -t "$IMAGE" -f "$REPO/Dockerfile" "$REPO" \
        || die "buildah bud failed (output above)"
    BUILD_SECONDS="$((SECONDS - build_start)) s"
    new_id=$("${BUILDAH[@]}" images --quiet --no-trunc "$IMAGE" | head -n1)
    if [[ -n $old_id && $old_id != "$new_id" ]]; then  # the previous build of this tag, now untagged
        "${BUILDAH[@]}" rmi "$old_id" >/dev/null 2>&1 || true
    fi
fi
SIZE=$(image_size "$IMAGE")
echo "image $IMAGE: build $BUILD_SECONDS, size $SIZE"

# --- 3. serve -------------------------------------------------------------------------------------
log "serve: the image's CMD with models/, metrics/, dvc.lock of $CHECKOUT"
mapfile -d '' -t cmd < <("${BUILDAH[@]}" inspect --type image "$IMAGE" | "$PYTHON" -c \
    "import json, sys; sys.stdout.write(''.join(a + '\0' for a in json.load(sys.stdin)['Docker']['config']['Cmd']))")
[[ ${#cmd[@]} -gt 0 ]] || die "the image has no CMD"
port=$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
new_container "$IMAGE"
"${BUILDAH[@]}" run "${ISOLATION[@]}" --env PORT="$port" \
    --volume "$CHECKOUT/models:/app/models:ro" \
    --volume "$CHECKOUT/metrics:/app/metrics:ro" \
    --volume "$CHECKOUT/dvc.lock:/app/dvc.lock:ro" \
    "$CTR" -- "${cmd[@]}" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
echo "CMD ${cmd[*]} with PORT=$port (pid $SERVER_PID)"

url=http://127.0.0.1:$port
serve_start=$SECONDS
until [[ $(curl -s -o "$WORK/ready.json" -w '%{http_code}' "$url/ready" || true) == 200 ]]; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        tail -n 30 "$WORK/server.log" >&2; die "the server exited before /ready gave 200"
    fi
    if (( SECONDS - serve_start > READY_TIMEOUT )); then
        tail -n 30 "$WORK/server.log" >&2; die "GET /ready not 200 within ${READY_TIMEOUT} s"
    fi
    sleep 1
done
echo "GET /ready: 200 after $((SECONDS - serve_start)) s"

"$PYTHON" - "$WORK/flower.png" <<'EOF'
import sys
from PIL import Image, ImageDraw
image = Image.new("RGB", (96, 96), (30, 120, 40))
draw = ImageDraw.Draw(image)
for i in range(5):  # five petals around a centre
    x, y = 48 + 22 * [0, 1, 0.6, -0.6, -1][i], 48 + 22 * [-1, -0.2, 0.9, 0.9, -0.2][i]
    draw.ellipse((x - 14, y - 14, x + 14, y + 14), fill=(230, 60, 140))
draw.ellipse((38, 38, 58, 58), fill=(250, 210, 40))
image.save(sys.argv[1])
EOF
code=$(curl -s -o "$WORK/predict.json" -w '%{http_code}' -F "file=@$WORK/flower.png;type=image/png" \
    "$url/predict?k=3" || true)
[[ $code == 200 ]] || { cat "$WORK/predict.json" >&2 || true; die "POST /predict gave HTTP $code"; }
"$PYTHON" - "$WORK/predict.json" <<'EOF' || die "POST /predict: no non-empty 'predictions' list"
import json, sys
body = json.load(open(sys.argv[1]))
predictions = body["predictions"]
assert isinstance(predictions, list) and predictions and "label" in predictions[0], body
print("POST /predict: 200, top-3:", ", ".join(f"{p['label']} {p['probability']:.3f}" for p in predictions))
EOF
rss_kib=0
for pid in $(descendants "$SERVER_PID"); do  # the service's processes, not buildah's helpers
    read -r comm rss < <(ps -o comm=,rss= -p "$pid" 2>/dev/null || true) || true
    [[ -n ${comm:-} && $comm != buildah* ]] && rss_kib=$((rss_kib + ${rss:-0}))
done
echo "server memory after /predict: $((rss_kib / 1024)) MiB RSS"
stop_server
echo "server stopped"

# --- 4. train -------------------------------------------------------------------------------------
log "train: tiny dvc repro inside the image on a temporary git copy of $REPO"
tiny=$WORK/tiny
mkdir -p "$tiny"
# The repo's files as tests/test_pipeline_e2e.py copies them (tracked and new, not ignored),
# less anything dvc.yaml declares as an output: a `dvc repro` running in $REPO meanwhile may
# have written outputs that DVC has not yet listed in a .gitignore.
"$PYTHON" - "$REPO" <<'EOF' | (cd "$REPO" && tar --null -T - --ignore-failed-read -cf -) | tar -xf - -C "$tiny"
import subprocess
import sys
from pathlib import Path
import yaml
repo = Path(sys.argv[1])
listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                        cwd=repo, check=True, capture_output=True).stdout.decode().split("\0")
outputs = [next(iter(entry)) if isinstance(entry, dict) else entry
           for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values()
           for kind in ("outs", "metrics", "plots") for entry in stage.get(kind, [])]
def is_output(name: str) -> bool:
    return any(name == out or name.startswith(out.rstrip("/") + "/") for out in outputs)
sys.stdout.write("".join(f"{name}\0" for name in listed
                         if name and (repo / name).is_file() and not is_output(name)))
EOF
# The same tiny configuration as tests/test_pipeline_e2e.py, set by the same helper.
PYTHONPATH=$REPO "$PYTHON" -c 'import sys; from pathlib import Path
from tests.datasets import TINY_PIPELINE, set_params
set_params(Path(sys.argv[1]), TINY_PIPELINE)' "$tiny/params.yaml"
git -C "$tiny" init -q
git -C "$tiny" add -A
git -C "$tiny" -c user.name=smoke -c user.email=smoke@localhost commit -qm tiny
new_container "$IMAGE"
train_start=$SECONDS
"${BUILDAH[@]}" run "${ISOLATION[@]}" --user "$(id -u):$(id -g)" --volume "$tiny:/app" \
    --env GIT_AUTHOR_NAME=smoke --env GIT_AUTHOR_EMAIL=smoke@localhost \
    --env GIT_COMMITTER_NAME=smoke --env GIT_COMMITTER_EMAIL=smoke@localhost \
    "$CTR" -- dvc repro >"$WORK/repro.log" 2>&1 \
    || { tail -n 30 "$WORK/repro.log" >&2; die "dvc repro inside the image failed"; }
echo "stages run: $(sed -nE "s/^Running stage '([a-z_]+)'.*/\1/p" "$WORK/repro.log" | tr '\n' ' ')"
[[ -s $tiny/models/classifier.pt2 ]] || die "dvc repro inside the image wrote no models/classifier.pt2"
[[ -s $tiny/metrics/evaluate.json ]] || die "dvc repro inside the image wrote no metrics/evaluate.json"
echo "dvc repro in the image: $((SECONDS - train_start)) s; models/classifier.pt2 $(du -h "$tiny/models/classifier.pt2" | cut -f1);" \
    "test accuracy $("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["accuracy"])' "$tiny/metrics/evaluate.json")" \
    "(tiny run: 4 images per class, 1 epoch)"

log "docker_smoke: OK"
echo "image $IMAGE: build $BUILD_SECONDS, size $SIZE (base $BASE_IMAGE, size $(image_size "$BASE_IMAGE"))"
