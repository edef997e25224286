"""Helpers of the tests/test_pipeline_*.py files: a small regressor checkpoint whose heads
output constants (so results do not depend on the batch), a cheap stand-in engine, and
running ``hmrcli`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from hmrcli.engine.base import Prepared

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"


def constant_checkpoint(path: Path, crop_hw=(64, 48), num_rois: int = 5) -> Path:
    """A Multi-RoI ResNet-50 whose heads output their start values (an upright body: global
    orientation 180 deg about x, SMPL's +y up -> camera's -y; local camera (0.9, 0, 0) for
    every RoI), so the true answer is known and bit-identical whatever the batch. ``crop_hw``
    None: the checkpoint's standard crop size; the default small crops are cheap."""
    import torch

    from hmrcli.nn.checkpoints import RegressorConfig, build_model, save_native

    torch.manual_seed(0)
    extra = {} if crop_hw is None else {"crop_hw": tuple(crop_hw)}
    cfg = RegressorConfig(arch="multiroi", backbone="resnet50", num_rois=num_rois, **extra)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for lin in (model.decpose, model.decshape, model.deccam):
            lin.weight.zero_()
            lin.bias.zero_()
        model.init_pose[0, :6] = torch.diag(torch.tensor([1.0, -1.0, -1.0]))[:, :2].reshape(-1)
    return save_native(model, cfg, path)


_SHARED: dict[str, Path] = {}


def shared_checkpoint(tmp_path_factory) -> Path:
    """One :func:`constant_checkpoint` per test session (it takes a few seconds to write)."""
    if "ckpt" not in _SHARED or not _SHARED["ckpt"].exists():
        _SHARED["ckpt"] = constant_checkpoint(tmp_path_factory.mktemp("pipeline-ckpt") / "const")
    return _SHARED["ckpt"]


class StubBody:
    """A three-vertex 'body model' (what the writers need of one)."""

    faces = np.array([[0, 1, 2]])
    info = SimpleNamespace(name="stub", gender="neutral", path=None, num_vertices=3)


@dataclass(kw_only=True)
class StubPrepared(Prepared):
    mean: float
    ballast: np.ndarray | None = None


class StubEngine:
    """A cheap engine with the interface run_inference uses. ``prepare`` allocates
    ``prep_bytes`` per image (so prepared images that pile up show in the memory), ``run``
    returns a fixed estimate per person; ``fail_on`` names images whose run raises."""

    name = "stub"
    betas_applied = True
    betas_space = "stub"

    def __init__(self, batch_size: int = 4, prep_bytes: int = 0, fail_on=(), tag: str = "a") -> None:
        self.body = StubBody()
        self.batch_size = batch_size
        self.prep_bytes = prep_bytes
        self.fail_on = set(fail_on)
        self.tag = tag
        self.runs: list[int] = []

    def describe(self):
        return {"engine": "stub", "aggregation": None, "tag": self.tag}

    def prepare(self, image, persons, focal=None):
        h, w = image.shape[:2]
        return StubPrepared(image_wh=(w, h), focal=float(focal or np.hypot(w, h)), principal=(w / 2, h / 2),
                            problems=[""] * len(persons), mean=float(image.mean()),
                            ballast=np.ones(self.prep_bytes, np.uint8) if self.prep_bytes else None)

    def run(self, prepared, *, stop=None, on_persons=None):
        from hmrcli.engine.base import PersonEstimate

        self.runs.append(len(prepared))
        out = []
        for p, persons in prepared:
            if p.mean in self.fail_on:
                raise RuntimeError("stub engine failure")
            w, h = p.image_wh
            K = np.array([[p.focal, 0, w / 2], [0, p.focal, h / 2], [0, 0, 1.0]])
            ests = []
            for box in persons:
                ests.append(PersonEstimate(
                    box=box, crop_box=np.array([1.0, 2.0, 3.0]), rois=np.zeros((1, 3)), bbox_info=np.zeros((1, 3)),
                    cams_local=np.zeros((1, 3)), rotmats=np.tile(np.eye(3), (24, 1, 1)), betas=np.zeros(10),
                    betas_applied=True, cam_t=np.array([0.0, 0.0, 5.0]), K=K, focal=p.focal,
                    image_wh=(w, h), vertices_model=np.eye(3) * p.mean / 255.0,
                    joints_model=np.zeros((24, 3))))
            out.append(ests)
        if on_persons is not None:  # one batch: everything, then the report
            on_persons(sum(len(persons) for _, persons in prepared))
        return out


def hmrcli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from hmrcli.cli import main; main()", *args]


#: environment variable naming the gate folder of :func:`gated_hmrcli_cmd`
GATE_ENV = "HMRCLI_TEST_ENGINE_GATE"


def gated_hmrcli_cmd(*args: str, free_calls: int = 1) -> list[str]:
    """``hmrcli`` in a subprocess whose regression engine is gated (:func:`install_engine_gate`,
    folder from ``$HMRCLI_TEST_ENGINE_GATE``): the test decides when work remains."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import _pipeline_helpers as h; "
            f"h.install_engine_gate(free_calls={int(free_calls)}); from hmrcli.cli import main; main()")
    return [sys.executable, "-c", code, *args]


def install_engine_gate(gate: str | os.PathLike | None = None, free_calls: int = 1) -> None:
    """Make ``RegressionEngine.run`` block, from call ``free_calls + 1`` on, until ``GATE/go``
    exists; before blocking, call k creates ``GATE/blocked-k``. So a test knows that exactly
    ``free_calls`` batches have finished and that the run is held before the next one."""
    import time

    from hmrcli.engine.regress import RegressionEngine

    folder = Path(gate if gate is not None else os.environ[GATE_ENV])
    orig = RegressionEngine.run
    calls = [0]

    def run(self, prepared, **kw):
        calls[0] += 1
        if calls[0] > free_calls:
            (folder / f"blocked-{calls[0]}").touch()
            while not (folder / "go").exists():
                time.sleep(0.005)
        return orig(self, prepared, **kw)

    RegressionEngine.run = run


def child_env() -> dict[str, str]:
    """The environment of hmrcli subprocesses: one torch thread (an OpenMP team on a shared,
    busy test machine spends most of its time waiting for preempted threads)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT)}


def run_hmrcli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(hmrcli_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=child_env(), **kw)


def summary_of(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def output_state(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (relative path -> content), the manifest reduced to what it
    means: the latest image line per name and the settings it refers to (timings dropped)."""
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != "manifest.jsonl":
            files[str(p.relative_to(out))] = p.read_bytes()
    man = out / "manifest.jsonl"
    if man.exists():
        runs, images = {}, {}
        for line in man.read_text().splitlines():
            rec = json.loads(line)
            if rec["kind"] == "run":
                runs[rec["settings_id"]] = rec["settings"]
            else:
                images[rec["name"]] = rec
        state = {n: {**{k: v for k, v in rec.items() if k != "settings_id"}, "settings": runs[rec["settings_id"]]}
                 for n, rec in sorted(images.items())}
        files["manifest.jsonl"] = json.dumps(state, sort_keys=True).encode()
    return files
