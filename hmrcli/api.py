"""The documented Python entry points of hmrcli (the CLI calls these).

>>> import hmrcli
>>> net = hmrcli.load_regressor("cliff-res50", device="cuda")       # doctest: +SKIP
>>> out = net(crops, bbox_info)   # crops (B,M,3,H,W) normalised, bbox_info (B,M,3)  # doctest: +SKIP
>>> out.rotmats, out.betas, out.cams   # (B,M,24,3,3), (B,M,10), (B,M,3)            # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from hmrcli.body import load_body_model
from hmrcli.devices import resolve_device
from hmrcli.engine.fit import FitEngine, RefinedEngine
from hmrcli.engine.regress import PersonBox, RegressionEngine
from hmrcli.fit.optimize import FitOptions
from hmrcli.nn.checkpoints import RegressorConfig
from hmrcli.weights.catalogue import RUNTIMES, load_regressor

__all__ = ["load_regressor", "load_body_model", "estimate_people", "make_engine", "EngineChoice", "EngineSpec",
           "RegressorConfig", "RUNTIMES"]


def estimate_people(
    image,
    boxes_xyxy,
    regressor: nn.Module,
    body=None,
    focal: float | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    batch_size: int = 16,
):
    """Image in, people out: RGB uint8 image (H, W, 3) and person boxes (N, 4) xyxy pixels ->
    a list of :class:`hmrcli.engine.regress.PersonEstimate` (pose, betas, local cameras,
    full-image camera ``cam_t`` and ``K``, posed vertices). ``body`` defaults to
    ``load_body_model("auto")``."""
    if body is None:
        body = load_body_model("auto")
    engine = RegressionEngine(regressor, body, device=device, precision=precision, batch_size=batch_size)
    persons = [PersonBox(np.asarray(b, dtype=np.float64)) for b in np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)]
    if not persons:
        return []
    return engine.run([(engine.prepare(np.asarray(image), persons, focal), persons)])[0]


ENGINES = ("auto", "regress", "fit")
REFINEMENTS = ("none", "fit", "pc-hmr")


class EngineChoice(str):
    """The engine :func:`make_engine` built (``"regress"`` or ``"fit"``) and why (``reason``)."""

    reason: str = ""


def make_engine(
    engine: str = "auto",
    checkpoint: str | os.PathLike | None = None,
    body=None,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    batch_size: int | str = "auto",
    aggregation: str | None = None,
    rois: int = 5,
    landmarks: str = "full",
    pose_prior: str = "relaxed",
    refine: str = "none",
    runtime: str = "torch",
    compile: bool = False,
    view_azimuth: float | None = None,
    mirror: bool = True,
):
    """The engine ``hmrcli infer`` runs, for the batch pipeline (:func:`hmrcli.pipeline.run_inference`)
    or direct ``prepare``/``run`` calls. Returns ``(engine, choice)``.

    ``engine``: ``regress`` (the Multi-RoI / CLIFF network of ``checkpoint``), ``fit`` (the
    body model fitted to BlazePose landmarks on ``rois`` RoIs, ``landmarks`` full|heavy,
    ``pose_prior`` relaxed|gmm, ``mirror``: BlazePose also on each crop flipped left-right) or ``auto`` (regress with a checkpoint, else fit);
    ``refine``: none, fit or pc-hmr after it. ``body`` defaults to ``load_body_model("auto")``.
    ``runtime``: what runs the regressor, ``torch`` or ``onnx`` (onnxruntime; ``checkpoint`` must
    then be an ``.onnx`` file from ``hmrcli weights export-onnx``, and ``precision`` fp32).
    ``precision``: auto (bf16 autocast on CUDA, fp32 on the CPU), fp32, bf16 or fp16 (CUDA);
    ``compile``: ``torch.compile`` the network (regress, torch runtime). ``view_azimuth``:
    degrees, ImpHMR checkpoints only: the estimate for that viewing direction
    (:func:`hmrcli.weights.catalogue.load_regressor`). Raises ValueError for bad combinations, CheckpointError / DetectorUnavailable when a
    checkpoint or BlazePose cannot be loaded."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if refine not in REFINEMENTS:
        raise ValueError(f"refine must be one of {', '.join(REFINEMENTS)}, got {refine!r}")
    if landmarks not in ("full", "heavy"):
        raise ValueError(f"landmarks must be full or heavy, got {landmarks!r}")
    if pose_prior not in ("relaxed", "gmm"):
        raise ValueError(f"pose_prior must be relaxed or gmm, got {pose_prior!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    choice = EngineChoice(engine if engine != "auto" else ("regress" if checkpoint else "fit"))
    choice.reason = (f"regressor checkpoint {checkpoint}" if checkpoint else
                     "no regressor checkpoint configured (--checkpoint / HMRCLI_CHECKPOINT): fitting the body model "
                     "to BlazePose landmarks, offline") if engine == "auto" else f"--engine {engine}"
    if choice == "regress" and checkpoint is None:
        raise ValueError("the regression engine needs a regressor checkpoint: pass a file or a name from "
                         "`hmrcli weights list` (hmrcli doctor shows which are found), or use the fit engine")
    if runtime == "onnx" and choice != "regress":
        raise ValueError("--runtime onnx runs the regression engine's network: it needs --engine regress (or auto) "
                         "and an .onnx --checkpoint from `hmrcli weights export-onnx`")
    if runtime == "onnx":
        if precision not in ("fp32", "auto"):
            raise ValueError(f"--runtime onnx runs the exported fp32 graph: --precision {precision} does not apply to "
                             "it (use fp32)")
        precision = "fp32"  # (autocast would not reach onnxruntime)
    if view_azimuth is not None and choice != "regress":
        raise ValueError("--view-azimuth needs the regression engine with an ImpHMR checkpoint")
    if choice == "fit" and refine == "fit":
        refine = "none"  # the fit engine already fits

    if body is None:
        body = load_body_model("auto")
    if choice == "regress":

        net = load_regressor(checkpoint, device=device, aggregation=aggregation, runtime=runtime,
                             view_azimuth=view_azimuth)
        eng = RegressionEngine(net, body, device=device, precision=precision, batch_size=batch_size,
                               compile=compile)
    else:
        # (the fitting engine fits each person on its own: its batch only groups the progress reports)
        eng = FitEngine(body, device=device, num_rois=rois, batch_size=16 if batch_size == "auto" else batch_size,
                        landmark_model=landmarks, mirror=mirror,
                        options=FitOptions(pose_prior=pose_prior))
    if refine != "none":
        eng = RefinedEngine(eng, refine, num_rois=rois, landmark_model=landmarks, mirror=mirror,
                            options=FitOptions(pose_prior=pose_prior))
    return eng, choice


@dataclass
class EngineSpec:
    """Everything :func:`make_engine` and :func:`load_body_model` need, built where the engine
    runs (:meth:`build`): ``hmrcli infer`` builds it in its own process, the Ray executor once
    in each worker (a loaded network cannot be sent between machines; a spec can). Fields as
    for :func:`make_engine` (``runtime`` included: ``torch`` or ``onnx``), plus the body model's
    (``body_model`` smpl|free|auto, ``gender``, ``smpl_dir``). ``device`` ``"auto"`` is resolved
    where it is built (``cuda`` when that process sees a GPU, else ``cpu``)."""

    engine: str = "auto"
    checkpoint: str | None = None
    body_model: str = "auto"
    gender: str = "neutral"
    smpl_dir: str | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | str = "auto"
    aggregation: str | None = None
    rois: int = 5
    landmarks: str = "full"
    pose_prior: str = "relaxed"
    refine: str = "none"
    runtime: str = "torch"
    compile: bool = False
    view_azimuth: float | None = None
    mirror: bool = True

    def build(self):
        """``(engine, choice)`` as :func:`make_engine` returns them."""
        kw = asdict(self)
        body = load_body_model(kw.pop("body_model"), gender=kw.pop("gender"), smpl_dir=kw.pop("smpl_dir"))
        kw["device"] = resolve_device(kw["device"])
        return make_engine(body=body, **kw)
