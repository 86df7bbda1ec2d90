#!/bin/bash
# `make docker-test`: build the serve-cpu image with buildah, start it with its own command,
# and check it from outside (docker/smoke.py): readiness, a translation per model, non-root,
# the health check, a graceful stop on SIGTERM. Cleans up its container, image and build
# layers on any exit. Needs root with buildah, podman and debootstrap (apt-get install).
#
# Official base images cannot be pulled here, so it builds on a local stand-in for
# python:3.11-slim-bookworm (docker/build-standin-base.sh), and the build reaches the package
# index with this machine's CA bundle, passed in through the CA_BUNDLE build argument.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
BASE=${BASE:-localhost/pix2pix-standin-python:3.11-slim-bookworm}
HOST_CA=${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
IMAGE=localhost/pix2pix-docker-test:$$
buildah=(buildah --storage-driver vfs)

for tool in buildah podman debootstrap; do
    command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "docker-test builds with buildah as root" >&2; exit 1; }

container="" server="" made_models="" log=$(mktemp)
images_before=$(mktemp)
cleanup() {
    status=$?
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$server" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$server" 2>/dev/null || true
    fi
    [ -n "$container" ] && "${buildah[@]}" rm "$container" >/dev/null 2>&1 || true
    # Every image this run made: the tagged one and those of the intermediate stages.
    "${buildah[@]}" images --all --quiet --no-trunc | sort -u | comm -13 "$images_before" - \
        | xargs -r "${buildah[@]}" rmi --force >/dev/null 2>&1 || true
    [ -n "$made_models" ] && rm -rf "$made_models"
    rm -f "$log" "$images_before"
    if [ "$status" = 0 ]; then echo "PASS docker-test"; else echo "FAIL docker-test" >&2; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

docker/build-standin-base.sh "$BASE"
"${buildah[@]}" images --all --quiet --no-trunc | sort -u >"$images_before"

# The repo's demo models when models/ holds ONNX ones, else stand-ins exported here.
if compgen -G "models/*/generator.onnx" >/dev/null; then
    models=models
    echo "models: the repo's models/ ($(cd models && ls -d */ | tr -d / | tr '\n' ' '))"
else
    models=docker/.test-models
    made_models=$models
    rm -rf "$models"
    "$PYTHON" - "$models" <<'PY'
import sys, tempfile
from pathlib import Path
sys.path.insert(0, ".")
from model.export import export_model
from tests.conftest import write_tiny_models
with tempfile.TemporaryDirectory() as tmp:
    tiny = write_tiny_models(Path(tmp))
    for source, name in (("labels", "labels2photo"), ("gray", "gray2color")):
        export_model(tiny / source, Path(sys.argv[1]) / name, "onnx")
PY
    echo "models: STAND-INS (models/ has no ONNX model yet): untrained tiny labels2photo," \
        "gray2color exported to ONNX in $models"
fi

echo "building serve-cpu on $BASE"
start=$(date +%s)
# No --layers: with vfs storage every cached step is a full copy of the file system, which
# costs minutes here; this test checks the image, not the cache. --format docker keeps the
# HEALTHCHECK, which the OCI format has no field for.
if ! timeout "$BUILD_TIMEOUT" "${buildah[@]}" bud --isolation chroot --layers=false --format docker \
        --target serve-cpu --build-arg BASE_IMAGE="$BASE" --build-arg MODELS="$models" \
        -v "$HOST_CA:/run/build-ca.pem:ro" --build-arg CA_BUNDLE=/run/build-ca.pem \
        -t "$IMAGE" . >"$log" 2>&1; then
    tail -40 "$log" >&2
    exit 1
fi
size=$("${buildah[@]}" inspect --type image --format '{{.Size}}' "$IMAGE" 2>/dev/null || true)
[ -n "$size" ] || size=$(podman --storage-driver vfs image inspect --format '{{.Size}}' "$IMAGE")
echo "ok   built in $(($(date +%s) - start)) s; image size $((size / 1000000)) MB"

config=$("${buildah[@]}" inspect --type image "$IMAGE" \
    | "$PYTHON" -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["Docker"]["config"]))')
"$PYTHON" - "$config" <<'PY'
import json, sys
config = json.loads(sys.argv[1])
user, ports, health = config.get("User"), config.get("ExposedPorts") or {}, config.get("Healthcheck")
assert user and user.split(":")[0] not in ("", "0", "root"), f"image user {user!r}"
assert "8000/tcp" in ports, f"exposed {ports}"
assert health and "/healthz" in " ".join(health["Test"]), f"healthcheck {health}"
print(f"ok   image config: USER {user}, EXPOSE 8000, HEALTHCHECK on /healthz, CMD {config['Cmd']}")
PY

port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
container=$("${buildah[@]}" from --name "pix2pix-docker-test-$$" "$IMAGE")
# chroot isolation shares the host's network: listen on loopback only, on a free port.
"${buildah[@]}" config --env UVICORN_HOST=127.0.0.1 --env UVICORN_PORT="$port" "$container"
mapfile -t command < <("$PYTHON" -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])["Cmd"]))' "$config")

if "${buildah[@]}" run --isolation chroot "$container" -- python -c \
        'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is not None)'; then
    echo "ok   no torch in the image"
else
    echo "FAIL: torch is installed in serve-cpu" >&2; exit 1
fi

"${buildah[@]}" run --isolation chroot "$container" -- "${command[@]}" >"$log" 2>&1 &
server=$!
# The server's own pid, as uvicorn logs it: chroot isolation has no pid namespace, so it is
# the host's pid of that process (buildah's chroot helpers sit between it and $server).
uvicorn=""
for _ in $(seq 300); do
    uvicorn=$(sed -n 's/.*Started server process \[\([0-9]*\)\].*/\1/p' "$log" | head -1)
    [ -n "$uvicorn" ] && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.2
done
[ -n "$uvicorn" ] || { cat "$log" >&2; echo "FAIL: the server did not start" >&2; exit 1; }
tr '\0' ' ' <"/proc/$uvicorn/cmdline" | grep -q "uvicorn app.main:create_app" \
    || { echo "FAIL: pid $uvicorn is not the server" >&2; exit 1; }
uid=$(ps -o uid= -p "$uvicorn" | tr -d ' ')
[ "$uid" != 0 ] || { echo "FAIL: the server runs as root" >&2; exit 1; }
echo "ok   server process $uvicorn runs as uid $uid (not root), listening on 127.0.0.1:$port"

health=$("$PYTHON" -c 'import json, sys; print(json.loads(sys.argv[1])["Healthcheck"]["Test"][1])' "$config")
smoke_ready() {
    "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=3)" 2>/dev/null
}
started=$(date +%s.%N)
for _ in $(seq 360); do smoke_ready && break; kill -0 "$server" 2>/dev/null || break; sleep 0.5; done
smoke_ready || { tail -20 "$log" >&2; echo "FAIL: /readyz never answered 200" >&2; exit 1; }
elapsed=$("$PYTHON" -c "import time; print(f'{time.time() - $started:.1f}')")
echo "ok   /readyz answered 200 $elapsed s after the server had started"
if "${buildah[@]}" run --isolation chroot "$container" -- sh -c "$health"; then
    echo "ok   the image's HEALTHCHECK command passes inside the container"
else
    echo "FAIL: HEALTHCHECK command failed" >&2; exit 1
fi

if ! timeout 600 "$PYTHON" docker/smoke.py --url "http://127.0.0.1:$port" --pid "$uvicorn"; then
    echo "--- server log" >&2; tail -40 "$log" >&2; exit 1
fi
wait "$server" || true  # uvicorn re-raises SIGTERM after its graceful shutdown (status 143)
server=""
if ! grep -q "Application shutdown complete" "$log"; then
    tail -20 "$log" >&2; echo "FAIL: no clean shutdown in the server log" >&2; exit 1
fi
echo "ok   clean shutdown; the server log ends:"
grep -E "^INFO: +(Shutting down|Waiting for (connections|application shutdown)|Application shutdown|Finished)" "$log" \
    | sed 's/^/     /'
