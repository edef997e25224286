#!/usr/bin/env bash
# `make test-docker`: build the Dockerfile's image and check it the way a user runs it.
#
#   1. a Docker client with BuildKit and a running daemon: installed (apt-get install docker.io) and
#      started (dockerd $DOCKERD_ARGS, stopped again at the end) when missing and run as root;
#   2. the base image: BASE (default local/debian:bookworm, made with debootstrap when missing:
#      a machine without access to a container registry can still build);
#   3. docker build (BuildKit, --network $DOCKER_NETWORK, the CA bundle as the build secret cacert);
#   4. in the container, as a user with no passwd entry (--user $RUN_USER) and no network:
#      the HOME is writable, `hmrcli doctor` is ok, `hmrcli infer /data/sample_images --out /data/out`
#      on a copy of sample_images/ writes result.json per image and manifest.jsonl, every file 0644;
#   5. prints one JSON line: image size, build time, start-to-first-result time, ...
#      (also written, with the logs, to build/docker-test/).
#
# When Docker cannot be had (no client and no root to install it, a daemon that cannot start, no
# base image and no root to make one) the script prints "skipped: <reason>" and exits with 77;
# with DOCKER_TEST_SKIP_OK=1 a skip exits with 0 instead (for CI runners without Docker).
#
# Variables: IMAGE (hmrcli:test), BASE, WITH_MMDET (0: no mmcv build, ~5 min saved; 1: the
# Dockerfile's default), PIP_TORCH_ARGS (when set, passed as is; else the Dockerfile's CPU index
# when reachable, else a torch CPU wheel that this machine's pip can get, served to the build from
# 127.0.0.1, else plain PyPI), CACERT (the CA bundle given as the build secret; default the
# system's), DOCKER (the client), DOCKER_NETWORK (host), DOCKERD_ARGS (--bridge=none), RUN_USER
# (12345:12345), DEBIAN_MIRROR, DOCKER_BUILD_ARGS (more arguments for docker build), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

IMAGE=${IMAGE:-hmrcli:test}
BASE=${BASE:-local/debian:bookworm}
WITH_MMDET=${WITH_MMDET:-0}
DOCKER_NETWORK=${DOCKER_NETWORK:-host}
DOCKERD_ARGS=${DOCKERD_ARGS:---bridge=none}
RUN_USER=${RUN_USER:-12345:12345}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER_TEST_SKIP_OK=${DOCKER_TEST_SKIP_OK:-0}
PY=${PYTHON:-python3}
ART=$ROOT/build/docker-test
TMP=$(mktemp -d "${TMPDIR:-/tmp}/hmrcli-docker-test.XXXXXX")
mkdir -p "$ART"

DOCKERD_PID=
HTTP_PID=
DOCKER=

log() { echo "docker-test: $*" >&2; }

skip() {
    echo "skipped: $*" >&2
    if [ "$DOCKER_TEST_SKIP_OK" = 1 ]; then exit 0; fi
    echo "(DOCKER_TEST_SKIP_OK=1 lets a skip pass)" >&2
    exit 77
}

cleanup() {
    local rc=$?
    set +e
    if [ -n "$HTTP_PID" ]; then kill "$HTTP_PID" 2>/dev/null; wait "$HTTP_PID" 2>/dev/null; fi
    # files written in the container belong to RUN_USER: remove them from inside if we cannot
    if [ -d "$TMP/data" ] && ! rm -rf "$TMP/data" 2>/dev/null && [ -n "$DOCKER" ]; then
        "$DOCKER" run --rm --network none --user "$RUN_USER" -v "$TMP/data:/data" --entrypoint /bin/rm "$IMAGE" \
            -rf /data/out /data/out-stop >/dev/null 2>&1
    fi
    if [ -n "$DOCKERD_PID" ]; then
        log "stopping the dockerd this script started (pid $DOCKERD_PID)"
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$DOCKERD_PID" 2>/dev/null && log "dockerd (pid $DOCKERD_PID) is still stopping"
    fi
    rm -rf "$TMP" 2>/dev/null
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
    is_root && command -v apt-get >/dev/null || return 1
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >"$ART/apt.log" 2>&1 \
        || { apt-get update >>"$ART/apt.log" 2>&1 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$ART/apt.log" 2>&1; }
}

# A client that builds with BuildKit: one with the buildx plugin, or a classic client (< 23)
# that has BuildKit built in (DOCKER_BUILDKIT=1). A client >= 23 without buildx cannot.
client_ok() {
    local c=$1 major
    command -v "$c" >/dev/null 2>&1 || return 1
    "$c" buildx version >/dev/null 2>&1 && return 0
    major=$("$c" --version 2>/dev/null | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')
    [ -n "$major" ] && [ "$major" -lt 23 ]
}

find_client() {
    local c
    for c in ${DOCKER:+"$DOCKER"} docker /usr/bin/docker; do
        if client_ok "$c"; then DOCKER=$(command -v "$c"); return 0; fi
    done
    return 1
}

# ---- 1. Docker
if ! find_client; then
    apt_install docker.io || skip "no Docker client with BuildKit (buildx, or a client < 23), and cannot install docker.io (needs root and apt-get)"
    find_client || skip "no Docker client with BuildKit even after installing docker.io"
fi
export DOCKER_BUILDKIT=1
if ! "$DOCKER" info >/dev/null 2>&1; then
    dockerd_bin=$(command -v dockerd || true)
    if [ -z "$dockerd_bin" ]; then
        apt_install docker.io || skip "the Docker daemon is not running and there is no dockerd to start (and no root to install one)"
        dockerd_bin=$(command -v dockerd || true)
    fi
    why=$("$DOCKER" info 2>&1 | grep -oiE -m1 '(cannot connect to the docker daemon|permission denied)[^?]*' || true)
    is_root || skip "the Docker daemon is not reachable (${why:-docker info failed}) and starting one needs root"
    [ -n "$dockerd_bin" ] || skip "no dockerd"
    log "starting $dockerd_bin $DOCKERD_ARGS (log: $ART/dockerd.log)"
    # shellcheck disable=SC2086  # DOCKERD_ARGS: several arguments
    "$dockerd_bin" $DOCKERD_ARGS >"$ART/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 120); do
        "$DOCKER" info >/dev/null 2>&1 && break
        kill -0 "$DOCKERD_PID" 2>/dev/null || { DOCKERD_PID=; skip "dockerd did not start: $(tail -3 "$ART/dockerd.log")"; }
        sleep 0.5
    done
    "$DOCKER" info >/dev/null 2>&1 || skip "dockerd did not answer within 60 s: $(tail -3 "$ART/dockerd.log")"
fi
log "client $DOCKER ($("$DOCKER" --version)), server $("$DOCKER" version -f '{{.Server.Version}}')"

# ---- 2. the base image
if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
    if [ "$BASE" = local/debian:bookworm ]; then
        is_root || skip "$BASE is missing and making it (debootstrap) needs root; or set BASE to an image you have"
        command -v debootstrap >/dev/null || apt_install debootstrap || skip "$BASE is missing and debootstrap cannot be installed"
        log "making $BASE: debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR (~1 min)"
        debootstrap --variant=minbase bookworm "$TMP/rootfs" "$DEBIAN_MIRROR" >"$ART/debootstrap.log" 2>&1 \
            || skip "debootstrap failed: $(tail -3 "$ART/debootstrap.log")"
        rm -rf "$TMP"/rootfs/var/lib/apt/lists/* "$TMP"/rootfs/var/cache/apt/*.bin "$TMP"/rootfs/var/cache/apt/archives/*.deb
        tar -C "$TMP/rootfs" -c . | "$DOCKER" import - "$BASE" >/dev/null
        rm -rf "$TMP/rootfs"
    else
        "$DOCKER" pull "$BASE" >/dev/null || skip "cannot pull BASE=$BASE"
    fi
fi

# ---- 3. build
build_args=(--build-arg "BASE=$BASE" --build-arg "WITH_MMDET=$WITH_MMDET")
CACERT=${CACERT:-}
if [ -z "$CACERT" ]; then
    for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
        if [ -s "$f" ]; then CACERT=$f; break; fi
    done
fi
[ -n "$CACERT" ] && build_args+=(--secret "id=cacert,src=$CACERT")

torch_spec=$(sed -n 's/^ARG TORCH_SPEC=//p' Dockerfile | head -1)
torch_source="the Dockerfile's default index (PyTorch CPU wheels)"
if [ -n "${PIP_TORCH_ARGS+set}" ]; then
    build_args+=(--build-arg "PIP_TORCH_ARGS=$PIP_TORCH_ARGS")
    torch_source="PIP_TORCH_ARGS=$PIP_TORCH_ARGS"
elif ! curl -fsS -m 15 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
    # The CPU index is out of reach: a CPU wheel this machine's pip can get (its own configuration:
    # a wheelhouse, a mirror), served to the build over 127.0.0.1 (the build uses the host network).
    pip_py=$PY
    [ -x "$ROOT/.venv/bin/python" ] && pip_py=$ROOT/.venv/bin/python
    mkdir -p "$TMP/wheels"
    if [ "$DOCKER_NETWORK" = host ] \
        && "$pip_py" -m pip download -q --no-deps --only-binary=:all: -d "$TMP/wheels" "$torch_spec" >"$ART/torch-download.log" 2>&1 \
        && ls "$TMP"/wheels/torch-*+cpu-*.whl >/dev/null 2>&1; then
        # a fixed port when free: PIP_TORCH_ARGS is part of BuildKit's cache key
        port=$("$PY" -c '
import socket
s = socket.socket()
try:
    s.bind(("127.0.0.1", 38765))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
        "$PY" -m http.server "$port" --bind 127.0.0.1 --directory "$TMP/wheels" >"$ART/wheel-server.log" 2>&1 &
        HTTP_PID=$!
        for _ in $(seq 50); do curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break; sleep 0.2; done
        build_args+=(--build-arg "PIP_TORCH_ARGS=--find-links http://127.0.0.1:$port/")
        torch_source="$(basename "$TMP"/wheels/torch-*.whl) from this machine's pip, served on 127.0.0.1:$port"
    else
        build_args+=(--build-arg "PIP_TORCH_ARGS=")
        torch_source="plain PyPI (no CPU wheel index or wheel reachable: a CUDA build of torch, a much larger image)"
    fi
fi
# shellcheck disable=SC2206  # DOCKER_BUILD_ARGS: several arguments
build_args+=(${DOCKER_BUILD_ARGS:-})

log "building $IMAGE (BASE=$BASE, WITH_MMDET=$WITH_MMDET, torch: $torch_source); log: $ART/build.log"
t0=$("$PY" -c 'import time; print(time.time())')
if ! "$DOCKER" build --progress plain --network "$DOCKER_NETWORK" "${build_args[@]}" -t "$IMAGE" . >"$ART/build.log" 2>&1; then
    tail -40 "$ART/build.log" >&2
    log "FAILED: docker build (full log: $ART/build.log)"
    exit 1
fi
build_s=$("$PY" -c "import time; print(round(time.time() - $t0, 1))")
if [ -n "$HTTP_PID" ]; then kill "$HTTP_PID" 2>/dev/null; wait "$HTTP_PID" 2>/dev/null || true; HTTP_PID=; fi

# ---- 4. run it as an arbitrary non-root user, offline
mkdir -p "$TMP/data"
cp -r sample_images "$TMP/data/sample_images"
chmod 0777 "$TMP/data"
run=("$DOCKER" run --rm --network none --user "$RUN_USER" -v "$TMP/data:/data")

"$PY" - "$ART" "$WITH_MMDET" "$RUN_USER" "$IMAGE" "$BASE" "$build_s" "$TMP/data" "$torch_source" "${run[@]}" <<'EOF'
import json, os, stat, subprocess, sys, time
from pathlib import Path

art, with_mmdet, run_user, image, base, build_s, data, torch_source, *run = sys.argv[1:]
art, data = Path(art), Path(data)
uid = int(run_user.split(":")[0])
problems = []

def check(cond, what):
    if not cond:
        problems.append(what)
        print(f"docker-test: FAIL: {what}", file=sys.stderr)

# HOME and the caches are writable for a UID with no passwd entry
r = subprocess.run(run + ["--entrypoint", "python", image, "-c",
                          "import os, pathlib, tempfile; h = pathlib.Path.home(); "
                          "d = pathlib.Path(os.environ['XDG_CACHE_HOME']) / 'hmrcli'; d.mkdir(parents=True); "
                          "(d / 'probe').write_text('x'); import matplotlib; "
                          "print(os.getuid(), h, matplotlib.get_configdir())"],
                   capture_output=True, text=True, timeout=300)
check(r.returncode == 0 and r.stdout.split()[0] == str(uid), f"HOME/cache not writable as {run_user}: {r.stdout}{r.stderr[-1500:]}")
check("Matplotlib created a temporary" not in r.stderr, f"matplotlib has no config dir: {r.stderr[-500:]}")

# container start + CLI start (imports, no model): `hmrcli --version`
t = time.monotonic()
r = subprocess.run(run + [image, "--version"], capture_output=True, text=True, timeout=300)
version_s = round(time.monotonic() - t, 2)
check(r.returncode == 0 and r.stdout.startswith("hmrcli "), f"--version: {r.stdout}{r.stderr[-500:]}")

# doctor
t = time.monotonic()
r = subprocess.run(run + [image, "doctor", "--json"], capture_output=True, text=True, timeout=600)
doctor_s = round(time.monotonic() - t, 2)
(art / "doctor.json").write_text(r.stdout)
(art / "doctor.stderr").write_text(r.stderr)
check(r.returncode == 0, f"doctor exited {r.returncode}: {r.stderr[-1500:]}")
try:
    doc = json.loads(r.stdout)
except ValueError:
    doc = {}
    check(False, "doctor --json printed no JSON")
opt = {o["name"]: o for o in doc.get("optional", [])}
check(doc.get("ok") is True, f"doctor ok is {doc.get('ok')}: {doc.get('problems')}")
check(doc.get("default_infer", {}).get("can_run") is True, f"doctor: default infer cannot run: {doc.get('default_infer')}")
check(str(doc.get("executable", "")).startswith("/opt/venv/"), f"doctor: executable {doc.get('executable')}")
check("site-packages/hmrcli/models" in str(doc.get("models_dir")), f"doctor: models_dir {doc.get('models_dir')} (not the wheel's)")
for lm in ("full", "heavy"):
    check(doc.get("landmark_models", {}).get(lm, {}).get("usable") is True, f"doctor: BlazePose {lm} landmark model not usable")
check(opt.get("mediapipe", {}).get("installed") is True, "doctor: mediapipe not installed")
for name in ("mmcv", "mmdet"):
    check(bool(opt.get(name, {}).get("installed")) == (with_mmdet == "1"), f"doctor: {name} installed={opt.get(name, {}).get('installed')} with WITH_MMDET={with_mmdet}")

# infer, timed from `docker run` to the first result: the first result.json on disk (its mtime;
# the volume is on this machine's clock) and the first "done" line on stdout
cmd = run + [image, "infer", "/data/sample_images", "--out", "/data/out", "--json"]
t, wall = time.monotonic(), time.time()
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
first_line, lines = None, []
for line in p.stdout:
    lines.append(line)
    if first_line is None and '"event": "done"' in line:
        first_line = round(time.monotonic() - t, 2)
err = p.stderr.read()
rc = p.wait(timeout=900)
infer_s = round(time.monotonic() - t, 2)
(art / "infer.jsonl").write_text("".join(lines))
(art / "infer.stderr").write_text(err)
check(rc == 0, f"infer exited {rc}: {err[-1500:]}")
records = [json.loads(x) for x in lines if x.startswith("{")]
summary = next((x for x in reversed(records) if x.get("schema") == "hmrcli.summary/1"), {})
images = sorted(f.name for f in (data / "sample_images").iterdir()
                if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
out = data / "out"
check(summary.get("done") == len(images) and summary.get("failed") == 0, f"infer summary {summary}")
check((out / "manifest.jsonl").is_file(), "no out/manifest.jsonl")
for name in images:
    check((out / name / "result.json").is_file(), f"no out/{name}/result.json")
files = [f for f in out.rglob("*") if f.is_file()]
results = [f.stat().st_mtime for f in out.glob("*/result.json")]
first_file = round(min(results) - wall, 2) if results else None
check(len(files) > len(images), f"only {len(files)} files written")
for f in files:
    st = f.stat()
    check(stat.S_IMODE(st.st_mode) == 0o644, f"{f.relative_to(data)} has mode {oct(stat.S_IMODE(st.st_mode))}, not 0644")
    check(st.st_uid == uid, f"{f.relative_to(data)} belongs to uid {st.st_uid}, not {uid}")

# `docker stop` (SIGTERM to hmrcli, PID 1) stops a run cleanly: status 143, not SIGKILL's 137
stop_s = None
detached = run[:2] + ["-d"] + [a for a in run[2:] if a != "--rm"]
cid = subprocess.run(detached + [image, "infer", "/data/sample_images", "--out", "/data/out-stop", "--json"],
                     capture_output=True, text=True, check=True).stdout.strip()
deadline = time.monotonic() + 120
while time.monotonic() < deadline:  # until the engine is being set up
    logs = subprocess.run(run[:1] + ["logs", cid], capture_output=True, text=True).stderr
    if "engine:" in logs:
        break
    time.sleep(0.5)
t = time.monotonic()
subprocess.run(run[:1] + ["stop", "-t", "60", cid], capture_output=True, check=True)
stop_s = round(time.monotonic() - t, 2)
code = int(subprocess.run(run[:1] + ["wait", cid], capture_output=True, text=True).stdout.strip() or -1)
subprocess.run(run[:1] + ["rm", "-f", cid], capture_output=True)
check(code in (143, 0), f"docker stop: exit status {code}, not 143 (SIGTERM handled)")
if code == 0:
    print("docker-test: note: the run ended before docker stop reached it", file=sys.stderr)

size = int(subprocess.run(run[:1] + ["image", "inspect", "-f", "{{.Size}}", image], capture_output=True, text=True,
                          check=True).stdout)
report = {
    "image": image, "base": base, "with_mmdet": with_mmdet == "1", "torch": torch_source,
    "image_size_bytes": size, "image_size_mb": round(size / 1e6, 1),
    "build_s": float(build_s), "version_s": version_s, "doctor_s": doctor_s,
    "first_result_s": first_file, "first_done_line_s": first_line, "infer_s": infer_s, "stop_s": stop_s,
    "images": len(images), "persons": summary.get("persons"), "files_written": len(files),
    "user": run_user, "ok": not problems,
}
(art / "report.json").write_text(json.dumps(report, indent=1) + "\n")
print(json.dumps(report))
sys.exit(1 if problems else 0)
EOF
