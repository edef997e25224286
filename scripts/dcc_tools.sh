#!/usr/bin/env bash
# The real clients of tests/test_dcc_blender.py, installed when missing:
#
#   * Blender (Debian: apt-get install blender python3-numpy -> Blender 3.4; its glTF importer
#     needs numpy). Measured on Debian 12 x86_64: 203 packages, 229 MB downloaded, 811 MB on disk,
#     ~40 s. Needs root and apt-get; `apt-get update` is run when the first try fails.
#   * the Khronos glTF validator (npm package gltf-validator, $GLTF_VALIDATOR_SPEC) in
#     build/tools/gltf-validator/ (git-ignored; scripts/gltf_validate.cjs finds it there). Needs npm.
#
# `make test` runs this before the tests (WITH_DCC=0 skips it); a tool that cannot be installed is
# reported ("skipped: <reason>") and the tests that need it skip with the same reason.
# With --require (make test-dcc) a missing tool makes the script exit with 77.
# Variables: BLENDER (the blender to check, default: the one on PATH), GLTF_VALIDATOR_SPEC.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REQUIRE=0
[ "${1:-}" = --require ] && REQUIRE=1
TOOLS=build/tools
VALIDATOR_DIR=$TOOLS/gltf-validator
GLTF_VALIDATOR_SPEC=${GLTF_VALIDATOR_SPEC:-gltf-validator@2.0.0-dev.3.10}
mkdir -p "$TOOLS"
missing=0

log() { echo "dcc-tools: $*" >&2; }
skip() { log "skipped: $*"; missing=1; }

blender_ok() {
    local b=${BLENDER:-$(command -v blender || true)}
    [ -n "$b" ] && "$b" -b --factory-startup --python-exit-code 1 --python-expr "import numpy" >/dev/null 2>&1
}

apt_blender() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    local t0=$SECONDS
    log "apt-get install -y blender python3-numpy (log: $TOOLS/apt-blender.log)"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y blender python3-numpy \
        || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y blender python3-numpy; }
    } >"$TOOLS/apt-blender.log" 2>&1 || return 1
    log "blender installed in $((SECONDS - t0)) s ($(grep -m1 -E '^Need to get' "$TOOLS/apt-blender.log" || true))"
}

if blender_ok; then
    log "blender: $(${BLENDER:-blender} -b --factory-startup --version 2>/dev/null | head -1)"
elif apt_blender && blender_ok; then
    :
else
    skip "no usable blender (with numpy), and it cannot be installed here (needs root and apt-get: apt-get install blender python3-numpy; see $TOOLS/apt-blender.log if it failed)"
fi

validator_ok() {
    command -v node >/dev/null && node -e "require(require.resolve('gltf-validator', {paths: [process.argv[1]]}))" \
        "$VALIDATOR_DIR/node_modules" >/dev/null 2>&1
}

if validator_ok; then
    log "gltf-validator: $VALIDATOR_DIR"
elif command -v npm >/dev/null && command -v node >/dev/null; then
    mkdir -p "$VALIDATOR_DIR"
    log "npm install $GLTF_VALIDATOR_SPEC into $VALIDATOR_DIR"
    if ! (cd "$VALIDATOR_DIR" && npm install --no-audit --no-fund --silent "$GLTF_VALIDATOR_SPEC" >npm.log 2>&1) \
        || ! validator_ok; then
        skip "npm install $GLTF_VALIDATOR_SPEC failed (see $VALIDATOR_DIR/npm.log)"
    fi
else
    skip "no node/npm for the glTF validator (npm install gltf-validator)"
fi

if [ "$missing" = 1 ] && [ "$REQUIRE" = 1 ]; then exit 77; fi
exit 0
