"""The evaluation loop behind ``hmrcli benchmark`` (protocol: docs/method.md §7,
metrics: :mod:`hmrcli.bench.metrics`, all in millimetres).

A *predictor* maps samples to SMPL parameters; the same loop scores the network
(:class:`NetworkPredictor`) and test oracles (:class:`GroundTruthPredictor`):

* prediction: posed with the **neutral** SMPL model (``body_gender = "neutral"``; an
  oracle may ask for the sample's own gendered model with ``body_gender = "sample"``);
* ground truth: posed with the sample's **gendered** SMPL model (3DPW), or the dataset's
  3D joints when it has them (H36M Protocol 2: ``S``; PVE then not available);
* joints: SPIN's ``J_regressor_h36m.npy`` (17) -> 14 LSP joints, pelvis-centred;
  MPJPE, PA-MPJPE (similarity Procrustes), PVE (pelvis-centred, no Procrustes).

Aggregation: the mean over all evaluated persons (overall) and per sequence.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol, Sequence

import cv2
import numpy as np
import torch

from hmrcli import assets
from hmrcli.bench.datasets import Sample, load_dataset
from hmrcli.bench.metrics import lsp14_from_h36m, mesh_metrics, mpjpe, pa_mpjpe
from hmrcli.body import load_body_model
from hmrcli.body.model import (
    SMPL_DOWNLOAD_HELP,
    SMPL_FILENAMES,
    find_h36m_regressor,
    find_smpl_files,
)
from hmrcli.detect import create_detector, detect_images
from hmrcli.engine.regress import PersonBox, RegressionEngine
from hmrcli.geometry.boxes import DEFAULT_RESCALE, box_aspect
from hmrcli.weights.catalogue import load_regressor, registry_document

__all__ = ["Predictor", "GroundTruthPredictor", "NetworkPredictor", "BenchmarkAssetsError",
           "check_assets", "engine_xyxy", "box_iou", "run_benchmark", "evaluate", "published_figures", "PROTOCOL", "METRICS"]

METRICS = ("MPJPE", "PA-MPJPE", "PVE")
J24_TO_J14: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18)  # SPIN constants
PROTOCOL = (
    "SPIN/CLIFF protocol: GT with gendered SMPL (3DPW) or dataset 3D joints (H36M P2), prediction with "
    "neutral SMPL; H36M regressor (17) -> 14 LSP joints [6,5,4,1,2,3,16,15,14,11,12,13,8,10], "
    "pelvis-centred (H36M joint 0); MPJPE; PA-MPJPE after per-sample similarity Procrustes "
    "(rotation with reflection fix, scale, translation); PVE over all vertices after pelvis "
    "centring, no Procrustes; millimetres; mean over persons"
)


class BenchmarkAssetsError(FileNotFoundError):
    """SMPL files or the H36M regressor needed by the benchmark are missing."""


class Predictor(Protocol):
    """Maps a batch of samples to SMPL parameters: rotmats (B,24,3,3) or axis-angle
    (B,72) with the global orientation in the camera frame, and betas (B,10)."""

    name: str
    body_gender: str  # "neutral" (pose with neutral SMPL) or "sample" (the sample's gendered SMPL)

    def predict(self, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]: ...


class GroundTruthPredictor:
    """Oracle: returns each sample's ground-truth pose/betas, optionally perturbed by Gaussian
    noise (``pose_noise`` radians, ``betas_noise``). Posed with the sample's own gendered
    model by default, so the unperturbed oracle scores 0 mm."""

    def __init__(self, pose_noise: float = 0.0, betas_noise: float = 0.0, body_gender: str = "sample", seed: int = 0):
        self.pose_noise, self.betas_noise = pose_noise, betas_noise
        self.body_gender = body_gender
        self.rng = np.random.default_rng(seed)
        self.name = "ground-truth" if pose_noise == betas_noise == 0 else "ground-truth+noise"

    def predict(self, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
        if any(s.pose is None or s.betas is None for s in samples):
            raise ValueError("the ground-truth predictor needs SMPL pose and shape in the dataset")
        pose = np.stack([s.pose for s in samples])
        betas = np.stack([s.betas for s in samples])
        if self.pose_noise:
            pose = pose + self.rng.normal(scale=self.pose_noise, size=pose.shape)
        if self.betas_noise:
            betas = betas + self.rng.normal(scale=self.betas_noise, size=betas.shape)
        return pose, betas


class NetworkPredictor:
    """A regressor checkpoint run by :class:`hmrcli.engine.regress.RegressionEngine` on each
    sample's image (RGB) and dataset box, with the engine's default focal length.

    The crop box's height ``b`` is the dataset's box size (SPIN's ``scale * 200``, centred on
    ``center``): the corner box handed to the engine is chosen so that the checkpoint's
    detector-box rule (aspect, ``box_rescale``) maps it back exactly onto ``(cx, cy, b)``."""

    body_gender = "neutral"

    def __init__(self, checkpoint: str | os.PathLike, body, device: str = "cpu", batch_size: int = 16,
                 aggregation: str | None = None, precision: str = "fp32", detector=None):

        self.model = load_regressor(checkpoint, device=device, aggregation=aggregation)
        self.engine = RegressionEngine(self.model, body, device=device, precision=precision, batch_size=batch_size)
        self.cfg = self.model.config
        self.name = str(checkpoint)
        self.device = device
        self.detector = detector
        self.detect_stats = {"matched": 0, "fallback_to_dataset_box": 0}
        self._det_cache: dict[str, list[np.ndarray]] = {}

    def _detected_box(self, s: Sample, img: np.ndarray) -> np.ndarray | None:
        """The detection with the highest IoU against the dataset box (None: no overlap)."""

        key = str(s.image)
        if key not in self._det_cache:
            dets = detect_images(self.detector, [img], [key])[0]
            self._det_cache = {key: [np.asarray(d.box_xyxy, dtype=np.float64) for d in dets]}  # one image cached
        boxes = self._det_cache[key]
        if not boxes:
            return None
        ious = box_iou(np.stack(boxes), s.box_xyxy)
        k = int(np.argmax(ious))
        return boxes[k] if ious[k] > 0 else None

    def predict(self, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
        prepared = []
        for s in samples:
            img = cv2.imread(str(s.image), cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(f"{s.image}: image not found or unreadable")
            rgb = img[:, :, ::-1].copy()
            det = self._detected_box(s, rgb) if self.detector is not None else None
            if det is not None:
                self.detect_stats["matched"] += 1
                persons = [PersonBox(det, source="detector")]  # the engine's detector-box rule applies
            else:
                if self.detector is not None:
                    self.detect_stats["fallback_to_dataset_box"] += 1
                persons = [PersonBox(engine_xyxy(s.box, self.cfg), source="dataset")]
            prepared.append((self.engine.prepare(rgb, persons), persons))
        res = self.engine.run(prepared)
        return np.stack([r[0].rotmats for r in res]), np.stack([r[0].betas for r in res])


def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) xyxy boxes with one (4,) xyxy box."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1, y1 = np.maximum(b[:, 0], box[0]), np.maximum(b[:, 1], box[1])
    x2, y2 = np.minimum(b[:, 2], box[2]), np.minimum(b[:, 3], box[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return inter / np.maximum(area, 1e-12)


def engine_xyxy(box: np.ndarray, cfg) -> np.ndarray:
    """Corner box whose crop box under ``cfg``'s rule (:func:`hmrcli.geometry.box_from_xyxy`
    with ``cfg.aspect`` and ``cfg.box_rescale``) is exactly ``box = (cx, cy, b)``."""

    rescale = cfg.box_rescale if cfg.box_rescale is not None else DEFAULT_RESCALE[cfg.aspect]
    cx, cy, b = (float(v) for v in box)
    h = b / rescale
    w = h * box_aspect(cfg.aspect)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def check_assets(smpl_dir: str | os.PathLike | None, genders: set[str], h36m_regressor: str | os.PathLike | None = None) -> None:
    """Raise :class:`BenchmarkAssetsError` listing every missing file (SMPL models for
    ``genders`` and ``J_regressor_h36m.npy``) and where they are looked for."""
    found = find_smpl_files(smpl_dir)
    missing = [f"SMPL {g} model ({' or '.join(SMPL_FILENAMES[g][:3])})" for g in sorted(genders) if g not in found]
    reg = Path(h36m_regressor) if h36m_regressor else find_h36m_regressor(smpl_dir)
    if reg is None or not reg.is_file():
        missing.append("J_regressor_h36m.npy (SPIN data release)")
    if missing:
        root = assets.smpl_dir(smpl_dir)
        where = str(root) if root is not None else "no SMPL folder configured (--smpl-dir / HMRCLI_SMPL_DIR)"
        raise BenchmarkAssetsError(
            "the benchmark needs files only you can obtain; missing: " + "; ".join(missing)
            + f". Looked in: {where}. {SMPL_DOWNLOAD_HELP}")


def published_figures(checkpoint: str | None, dataset: str) -> list[dict[str, Any]]:
    """Published figures from ``models/registry.json`` for ``dataset``: the checkpoint's own
    (matched by registry name or file name) and the papers' (Multi-RoI)."""

    reg = registry_document()
    out = []
    ck = Path(str(checkpoint)).name if checkpoint else None
    for name, e in reg.get("checkpoints", {}).items():
        pub = e.get("published") or {}
        if ck and (ck == name or ck == e.get("filename")) and pub.get("dataset") == dataset:
            out.append({"source": f"checkpoint {name}", **{m: pub.get(m) for m in METRICS}})
    for name, e in reg.get("papers", {}).items():
        pub = e.get("published") or {}
        if pub.get("dataset") == dataset:
            out.append({"source": f"paper {name}", **{m: pub.get(m) for m in METRICS}})
    return out


def _gt_joints_from_s(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B,J,4) dataset joints -> LSP14 (B,14,3) pelvis-centred and a (B,14) validity mask.
    J = 24: SPIN's J24 layout, LSP14 = ``J24_TO_J14`` (joints 0-12 and 18, "Head (H36M)"),
    pelvis = mid-hip (joints 2, 3) as SPIN's eval does; J = 17: H36M order."""
    if s.shape[1] == 24:
        pel = (s[:, 2, :3] + s[:, 3, :3]) / 2
        j14 = s[:, list(J24_TO_J14)]
        return j14[..., :3] - pel[:, None], j14[..., 3] > 0
    if s.shape[1] == 17:
        return lsp14_from_h36m(s[..., :3]), np.ones(s.shape[:2], bool)[:, :14]
    raise ValueError(f"3D joints must have 24 or 17 joints; got {s.shape[1]}")


def evaluate(
    samples: Sequence[Sample],
    predictor: Predictor,
    smpl_dir: str | os.PathLike | None = None,
    h36m_regressor: str | os.PathLike | None = None,
    batch_size: int = 32,
    progress=None,
) -> dict[str, Any]:
    """Score ``predictor`` on ``samples``. Returns ``{"overall": {metric: mm}, "sequences":
    {name: {"count", metric: mm}}, "count", "per_sample": {metric: [...]}, "protocol"}``.
    ``progress(done, total)`` is called after each batch when given."""

    if not samples:
        raise ValueError("no samples to evaluate")
    genders = {s.gender for s in samples if s.joints3d is None}
    if predictor.body_gender == "neutral":
        genders.add("neutral")
    else:
        genders |= {s.gender for s in samples}
    check_assets(smpl_dir, genders, h36m_regressor)
    bodies = {g: load_body_model("smpl", g, smpl_dir, h36m_regressor) for g in sorted(genders)}
    per = {m: np.full(len(samples), np.nan) for m in METRICS}
    for start in range(0, len(samples), batch_size):
        idx = np.arange(start, min(len(samples), start + batch_size))
        batch = [samples[i] for i in idx]
        pose, betas = predictor.predict(batch)
        pose = torch.as_tensor(np.asarray(pose, dtype=np.float64))
        betas = torch.as_tensor(np.asarray(betas, dtype=np.float64))
        pred_g = np.array(["neutral" if predictor.body_gender == "neutral" else s.gender for s in batch])
        gt_g = np.array([s.gender for s in batch])
        has_j = np.array([s.joints3d is not None for s in batch])
        pred_v = [None] * len(batch)
        pred_j = [None] * len(batch)
        for g in set(pred_g):
            sel = np.nonzero(pred_g == g)[0]
            out = bodies[g](pose[sel], betas[sel])
            for k, i in enumerate(sel):
                pred_v[i], pred_j[i] = out.vertices[k].numpy(), out.joints_h36m[k].numpy()
        mesh_sel = np.nonzero(~has_j)[0]
        for g in set(gt_g[mesh_sel]):
            sel = mesh_sel[gt_g[mesh_sel] == g]
            gp = torch.as_tensor(np.stack([batch[i].pose for i in sel]))
            gb = torch.as_tensor(np.stack([batch[i].betas for i in sel]))
            gv = bodies[g](gp, gb).vertices.numpy()
            reg = bodies[g]._h36m.numpy()  # one regressor file for all genders
            m = mesh_metrics(np.stack([pred_v[i] for i in sel]), gv, reg)
            for name in METRICS:
                per[name][idx[sel]] = m[name]
        jsel = np.nonzero(has_j)[0]
        if len(jsel):
            s3 = np.stack([batch[i].joints3d for i in jsel])
            g14, ok = _gt_joints_from_s(s3)
            p14 = lsp14_from_h36m(np.stack([pred_j[i] for i in jsel]))
            for k, i in enumerate(jsel):
                v = ok[k]
                per["MPJPE"][idx[i]] = mpjpe(p14[k:k + 1, v], g14[k:k + 1, v])[0]
                per["PA-MPJPE"][idx[i]] = pa_mpjpe(p14[k:k + 1, v], g14[k:k + 1, v])[0]
        if progress is not None:
            progress(int(idx[-1]) + 1, len(samples))
    seqs: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        seqs[s.sequence].append(i)

    def _agg(ix) -> dict[str, Any]:
        d: dict[str, Any] = {"count": len(ix)}
        for name in METRICS:
            vals = per[name][ix]
            d[name] = None if np.isnan(vals).all() else float(np.nanmean(vals))
        return d

    return {
        "count": len(samples),
        "overall": _agg(np.arange(len(samples))),
        "sequences": {k: _agg(np.array(v)) for k, v in sorted(seqs.items())},
        "per_sample": {k: v.tolist() for k, v in per.items()},
        "units": "mm",
        "aggregation_over_samples": "mean over persons",
        "protocol": PROTOCOL,
        "predictor": predictor.name,
    }


def run_benchmark(
    dataset: str,
    data_root: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    split: str = "test",
    boxes: str = "dataset",
    smpl_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    aggregation: str | None = None,
    predictor: Predictor | None = None,
    limit: int | None = None,
    progress=None,
    detector: str = "auto",
    detector_opts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load ``dataset`` from ``data_root``, run ``checkpoint`` (or a given ``predictor``) on
    every sample and return the report: :func:`evaluate`'s dict (without per-sample values)
    plus dataset, split, source, checkpoint, num_rois, aggregation, device, boxes and the
    published figures beside ours.

    boxes: ``"dataset"`` (the dataset's person boxes) or ``"detect"`` (``detector`` from
    :mod:`hmrcli.detect` on each image; the detection with the highest IoU against the
    dataset box is that person's, the dataset box is used where none overlaps, counted in
    ``detection``)."""

    if boxes not in ("dataset", "detect"):
        raise ValueError(f"boxes must be 'dataset' or 'detect'; got {boxes!r}")
    samples, source = load_dataset(dataset, data_root, split)
    if limit:
        samples = samples[: int(limit)]
    genders = {"neutral"} | {s.gender for s in samples if s.joints3d is None}
    check_assets(smpl_dir, genders)
    num_rois = agg = None
    if predictor is None:
        if checkpoint is None:
            raise ValueError("give a checkpoint (file or registry name)")
        det = None
        if boxes == "detect":

            det = create_detector(detector, **(detector_opts or {}))
        body = load_body_model("smpl", "neutral", smpl_dir)
        predictor = NetworkPredictor(checkpoint, body, device=device, batch_size=batch_size, aggregation=aggregation,
                                     detector=det)
        num_rois, agg = predictor.cfg.num_rois, getattr(predictor.cfg, "aggregation", None)
    res = evaluate(samples, predictor, smpl_dir, batch_size=batch_size, progress=progress)
    res.pop("per_sample")
    if isinstance(predictor, NetworkPredictor) and predictor.detector is not None:
        res["detection"] = {"detector": getattr(predictor.detector, "name", detector), **predictor.detect_stats}
    return {
        "dataset": dataset, "split": split, "source": source, "boxes": boxes,
        "checkpoint": None if checkpoint is None else str(checkpoint), "num_rois": num_rois,
        "aggregation": agg, "device": str(device), **res,
        "published": published_figures(None if checkpoint is None else str(checkpoint), dataset),
    }
