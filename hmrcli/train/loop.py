"""The training loop behind ``hmrcli train``.

:func:`train` builds everything from a :class:`hmrcli.train.config.TrainConfig`:

* the model (:func:`hmrcli.nn.checkpoints.build_model`), optionally initialised from a
  native, authors' (Multi-RoI) or CLIFF checkpoint: every parameter whose name and shape
  match is loaded, the rest is reported (:func:`init_from_checkpoint`: missing,
  unexpected and shape-mismatched names with both shapes);
* the data (:class:`hmrcli.train.data.MixedDataset` of the ``data.train`` sets by ratio,
  fed by a :class:`hmrcli.train.data.GlobalIndexSampler`, so the batch of step ``s`` is a
  function of the seed and ``s`` only);
* the criterion (:func:`make_criterion`: :class:`hmrcli.train.losses.MultiRoILoss`, ImpHMR's
  or PointHMR's), Adam/AdamW, a learning-rate
  schedule (``LambdaLR``: warm-up, then constant / cosine / linear / step);
* bf16 autocast on CUDA when ``precision = "bf16"`` (fp32 elsewhere).

Outputs under ``cfg.output``::

    config.json                    the resolved configuration
    metrics.jsonl                  one JSON object per logged step / evaluation / checkpoint
    tensorboard/                   the same scalars, when torch.utils.tensorboard imports
    checkpoints/step_NNNNNNN.safetensors + .json   native checkpoints (save_native; the JSON's
                                   provenance holds the training config, step and metrics)
    checkpoints/step_NNNNNNN.state.pt              training state beside each checkpoint
    model.safetensors + model.json                 the final model

Resuming (``resume=True``) loads the newest ``*.state.pt`` and its weights and continues at
the same step: model, optimizer, scheduler, the torch/CUDA/numpy/python RNG states and the
data order are restored, so the next step's loss equals the uninterrupted run's (bitwise on
CPU; CUDA kernels may be non-deterministic). The state file is written with ``torch.save``
of plain tensors, numbers, strings, lists and dicts and read back with
``torch.load(weights_only=True)``. An interruption (Ctrl-C) saves a checkpoint at the
current step first.

Nothing here prints: progress goes to the ``progress`` callback as dicts (``event`` =
``start``, ``step``, ``checkpoint``, ``eval``, ``end``).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from hmrcli._version import __version__
from hmrcli.bench import metrics as M
from hmrcli.bench.datasets import DatasetError
from hmrcli.body import load_body_model
from hmrcli.files import atomic_write_bytes
from hmrcli.nn.checkpoints import (
    CheckpointError,
    build_model,
    detect_layout,
    read_state_dict,
    save_native,
    to_native,
)
from hmrcli.nn.mean_params import load_mean_params
from hmrcli.train.config import TrainConfig, config_to_dict
from hmrcli.train.data import GlobalIndexSampler, MixedDataset, SpinDataset, collate
from hmrcli.train.losses import MultiRoILoss, targets_from_batch
from hmrcli.train.losses_imphmr import ImpHMRLoss
from hmrcli.train.losses_pointhmr import PointHMRLoss
from hmrcli.weights.catalogue import resolve_checkpoint

__all__ = [
    "STATE_FORMAT",
    "TrainError",
    "TrainInterrupted",
    "TrainResult",
    "build_datasets",
    "evaluate",
    "init_from_checkpoint",
    "latest_state",
    "lr_factor",
    "make_criterion",
    "mesh_sampling_for",
    "train",
]

STATE_FORMAT = "hmrcli.train_state/1"
ProgressCallback = Callable[[dict[str, Any]], None]
_CKPT_RE = re.compile(r"^step_(\d+)\.state\.pt$")


class TrainError(RuntimeError):
    """Training cannot start or continue; the message says why."""


class TrainInterrupted(KeyboardInterrupt):
    """Training was interrupted; ``checkpoint`` is the state saved at ``step`` (or None)."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    output: Path
    checkpoint: Path  # final native weights (model.safetensors)
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)  # last evaluation (may be empty)
    last_losses: dict[str, float] = field(default_factory=dict)
    init_report: dict[str, Any] | None = None
    seconds: float = 0.0


# ------------------------------------------------------------------ pieces


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device {name!r} requested but CUDA is not available")
    return dev


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at (0-based) ``step``: linear warm-up over
    ``schedule.warmup_steps``, then the schedule over the remaining steps."""
    sc = cfg.schedule
    if sc.warmup_steps > 0 and step < sc.warmup_steps:
        return (step + 1) / sc.warmup_steps
    if sc.name == "constant":
        return 1.0
    if sc.name == "step":
        return sc.gamma ** ((step - sc.warmup_steps) // max(1, sc.step_size))
    progress = min(1.0, max(0.0, (step - sc.warmup_steps) / max(1, cfg.steps - sc.warmup_steps)))
    if sc.name == "cosine":
        return sc.min_lr_ratio + (1.0 - sc.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if sc.name == "linear":
        return 1.0 - (1.0 - sc.min_lr_ratio) * progress
    raise TrainError(f"unknown schedule {sc.name!r}")


def init_from_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load every parameter/buffer of ``path`` whose (native) name and shape match ``model``.

    ``path``: a native (safetensors + JSON), authors' Multi-RoI or CLIFF checkpoint file,
    or a registry name. Returns a report: ``layout``, ``loaded`` / ``total`` counts and the
    names that did not load: ``missing`` (in the model, not in the file), ``unexpected``
    (in the file only) and ``shape_mismatch`` (``[name, file shape, model shape]``).
    """

    try:
        p = resolve_checkpoint(path)
        sd, cfg_json = read_state_dict(p)
    except CheckpointError as e:
        raise TrainError(f"model.init: {e}") from None
    layout = "native" if cfg_json is not None else detect_layout(sd)
    if layout == "unknown":
        raise TrainError(f"model.init: {p}: unrecognised checkpoint layout (first keys: {', '.join(list(sd)[:5])})")
    native = to_native(sd, layout)
    own = model.state_dict()
    load = {k: v.to(own[k].dtype) for k, v in native.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    mismatch = [[k, list(native[k].shape), list(own[k].shape)]
                for k in native if k in own and tuple(native[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in native]
    unexpected = [k for k in native if k not in own]
    model.load_state_dict(load, strict=False)
    return {"path": str(p), "layout": layout, "loaded": len(load), "total": len(own),
            "missing": missing, "unexpected": unexpected, "shape_mismatch": mismatch}


def make_criterion(cfg: TrainConfig, body, model: nn.Module) -> MultiRoILoss:
    """The training criterion of the configured architecture: :class:`MultiRoILoss` (multiroi,
    cliff), :class:`~hmrcli.train.losses_imphmr.ImpHMRLoss` or
    :class:`~hmrcli.train.losses_pointhmr.PointHMRLoss`. ``criterion.run_model(model, crops,
    bbox_info)`` is the training forward pass, ``criterion(out, targets)`` the loss."""
    crop = tuple(cfg.model.crop_hw)
    if cfg.model.arch == "imphmr":
        return ImpHMRLoss(body, cfg.losses, crop, cfg.model.aggregation)
    if cfg.model.arch == "pointhmr":
        return PointHMRLoss(body, cfg.losses, crop, (model.down0, model.down1))
    return MultiRoILoss(body, cfg.losses, crop, cfg.model.aggregation)


def mesh_sampling_for(arch: str, body):
    """PointHMR's mesh sampling for the training body model: None (the shipped one) for the
    free model; derived from the user's mesh otherwise (:mod:`hmrcli.nn.mesh_sampling`)."""
    if arch != "pointhmr" or body.info.name == "free":
        return None
    from hmrcli.nn.mesh_sampling import derive_mesh_sampling

    try:
        return derive_mesh_sampling(body.template(torch.float64).numpy(), body.faces)
    except ImportError as e:
        raise TrainError(f"model.arch = pointhmr with body model {body.info.name!r}: {e}") from None


def _augment(cfg: TrainConfig):
    return cfg.data.augment if cfg.data.augment.enabled else None


def _spin_dataset(cfg: TrainConfig, d, augment):

    return SpinDataset(d.path, d.img_root or None, aspect=cfg.model.aspect, num_rois=cfg.model.num_rois,
                       augment=augment, seed=cfg.seed, name=d.name or None,
                       crop_hw=(int(cfg.model.crop_hw[0]), int(cfg.model.crop_hw[1])))


def build_datasets(cfg: TrainConfig):
    """``(train MixedDataset or None, [test SpinDataset, ...])`` of the configuration."""

    try:
        train_sets = [_spin_dataset(cfg, d, _augment(cfg)) for d in cfg.data.train]
        test_sets = [_spin_dataset(cfg, d, None) for d in cfg.data.test]
        mixed = (MixedDataset(train_sets, [d.ratio for d in cfg.data.train], seed=cfg.seed)
                 if train_sets else None)
    except (DatasetError, ValueError) as e:
        raise TrainError(f"data: {e}") from None
    return mixed, test_sets


def _check_betas_space(datasets, body) -> None:
    name = body.info.name
    for ds in datasets:
        if float(np.max(ds.has_smpl, initial=0)) > 0 and ds.betas_space != name:
            raise TrainError(
                f"dataset {ds.name}: its betas are in the {ds.betas_space!r} shape space but the training body "
                f"model is {name!r}; set model.body_model = \"{ds.betas_space}\" (or use matching data)")


def _loader(dataset, batch_size: int, sampler, num_workers: int, seed: int, pin: bool):


    # A private generator: creating the iterator must not draw from the global torch RNG.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=num_workers, pin_memory=pin,
                      generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ RNG state (weights_only-safe)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = st["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def latest_state(output: str | os.PathLike) -> Path | None:
    """The newest ``checkpoints/step_*.state.pt`` under ``output`` (None if there is none)."""
    d = Path(output) / "checkpoints"
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name))]
    return max(found)[1] if found else None


def _atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _append_jsonl(path: Path, obj: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")


# ------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(model: nn.Module, dataset, body, device: torch.device | str = "cpu", batch_size: int = 32,
             limit: int = 0, precision: str = "fp32", num_workers: int = 0) -> dict[str, Any]:
    """MPJPE / PA-MPJPE / PVE (mm) of the model's person estimates on ``dataset`` rows with
    SMPL-layout ground truth (``has_smpl``), both posed with ``body``.

    Joints: with an H36M regressor (the user's SMPL set-up) the 3DPW protocol of
    :mod:`hmrcli.bench.metrics` (14 LSP joints from the H36M joints, pelvis-centred); without
    one (the free body model) the 24 skeleton joints centred on the pelvis joint. PVE: all
    vertices, pelvis-centred, no alignment.
    """

    device = torch.device(device)
    was_training = model.training
    model.eval()
    n = len(dataset) if not limit else min(limit, len(dataset))
    loader = _loader(dataset, batch_size, range(n), num_workers, 0, device.type == "cuda")
    errs: dict[str, list[np.ndarray]] = {"MPJPE": [], "PA-MPJPE": [], "PVE": []}
    use_h36m = bool(getattr(body, "has_h36m", False))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16" and device.type == "cuda")
    try:
        for batch in loader:
            sel = batch["has_smpl"] > 0
            if not bool(sel.any()):
                continue
            with autocast:
                out = model(batch["img"][sel].to(device), batch["bbox_info"][sel].to(device))
            pr = body(out.person_rotmats.float(), out.person_betas.float())
            gt = body(batch["rotmats"][sel].to(device).float(), batch["betas"][sel].to(device).float())
            if use_h36m:
                pj, gj = pr.joints_h36m, gt.joints_h36m
                pp, gp = pj[:, 0], gj[:, 0]
                p14, g14 = M.lsp14_from_h36m(pj), M.lsp14_from_h36m(gj)
            else:
                pp, gp = pr.joints[:, 0], gt.joints[:, 0]
                p14, g14 = pr.joints - pp[:, None], gt.joints - gp[:, None]
            errs["MPJPE"].append(M.mpjpe(p14, g14))
            errs["PA-MPJPE"].append(M.pa_mpjpe(p14, g14))
            errs["PVE"].append(M.pve(pr.vertices, gt.vertices, pp, gp))
    finally:
        model.train(was_training)
    count = int(sum(len(e) for e in errs["MPJPE"]))
    res: dict[str, Any] = {k: (float(np.concatenate(v).mean()) if v else None) for k, v in errs.items()}
    res["count"] = count
    res["joints"] = ("14 LSP joints from H36M joints, pelvis-centred" if use_h36m
                     else "24 skeleton joints of the body model, pelvis-centred")
    return res


# ------------------------------------------------------------------ training


def _emit(progress: ProgressCallback | None, event: dict[str, Any]) -> None:
    if progress is not None:
        progress(event)


def _provenance(cfg: TrainConfig, step: int, body, init_report, metrics, last_losses, datasets) -> dict[str, Any]:

    return {
        "trained_with": f"hmrcli train {__version__}",
        "step": step,
        "samples_seen": step * cfg.batch_size,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "body_model": body.info.name,
        "datasets": [{"name": d.name, "path": str(d.path), "rows": len(d)} for d in datasets],
        "init": None if init_report is None else {k: init_report[k] for k in ("path", "layout", "loaded", "total")},
        "metrics": metrics,
        "last_losses": last_losses,
        "train_config": config_to_dict(cfg),
    }


def train(cfg: TrainConfig, resume: bool = False, progress: ProgressCallback | None = None) -> TrainResult:
    """Train (or resume training) as configured; see the module docstring."""

    t_start = time.perf_counter()
    device = _device(cfg.device)
    notes: list[str] = []
    precision = cfg.precision
    if precision == "bf16" and device.type != "cuda":
        notes.append("precision bf16 applies on CUDA only; training in fp32 on " + device.type)
        precision = "fp32"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.output)
    ck_dir = out_dir / "checkpoints"
    state_path = latest_state(out_dir) if resume else None
    if resume and state_path is None:
        raise TrainError(f"--resume: no training state (checkpoints/step_*.state.pt) under {out_dir}")
    if not resume and latest_state(out_dir) is not None:
        raise TrainError(f"{out_dir} already holds a training run; pass --resume to continue it, or choose "
                         "another output folder")
    if not cfg.data.train:
        raise TrainError("data.train is empty: give at least one training dataset ([[data.train]] path = ...)")

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)

    try:
        body = load_body_model(cfg.model.body_model, smpl_dir=cfg.model.smpl_dir)
    except Exception as e:  # BodyModelNotFoundError, ValueError
        raise TrainError(f"model.body_model: {e}") from None
    train_ds, test_sets = build_datasets(cfg)
    _check_betas_space([*train_ds.datasets, *test_sets], body)

    reg_cfg = cfg.model.regressor_config(body.info.name)
    mean_params = load_mean_params(cfg.model.mean_params) if cfg.model.mean_params else None
    model = build_model(reg_cfg, mean_params=mean_params, mesh_sampling=mesh_sampling_for(reg_cfg.arch, body))
    init_report = None
    if cfg.model.init and not resume:
        init_report = init_from_checkpoint(model, cfg.model.init)
    model.to(device).train()

    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if cfg.optim.name == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    criterion = make_criterion(cfg, body, model)

    step = 0
    rng_to_restore = None
    metrics: dict[str, Any] = {}
    resumed_from = None
    if state_path is not None:
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        if st.get("format") != STATE_FORMAT:
            raise TrainError(f"{state_path}: not an hmrcli training state ({st.get('format')!r})")
        saved_model = st["config"]["model"]
        for k in cfg.model.architecture():
            now = config_to_dict(cfg.model)[k]
            if saved_model.get(k) != now:
                raise TrainError(f"--resume: model.{k} is {now!r} but the run was trained with {saved_model.get(k)!r}")
        wpath = state_path.parent / st["weights"]
        sd, _ = read_state_dict(wpath)
        model.load_state_dict(sd, strict=True)
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        step = int(st["step"])
        rng_to_restore = st["rng"]
        metrics = dict(st.get("metrics") or {})
        init_report = st.get("init_report")
        resumed_from = str(state_path)

    out_dir.mkdir(parents=True, exist_ok=True)
    ck_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n")
    log_path = out_dir / "metrics.jsonl"
    tb = None
    try:
        # optional: tensorboard may not be installed
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=step if step else None)
    except Exception:  # tensorboard not installed
        tb = None

    loader = _loader(train_ds, cfg.batch_size, GlobalIndexSampler(start=step * cfg.batch_size),
                     cfg.data.num_workers, cfg.seed, device.type == "cuda")
    batches = iter(loader)
    if rng_to_restore is not None:  # after the loader iterator exists: the run continues exactly
        _set_rng_state(rng_to_restore)

    _emit(progress, {"event": "start", "step": step, "steps": cfg.steps, "device": str(device),
                     "precision": precision, "output": str(out_dir), "train_rows": sum(len(d) for d in train_ds.datasets),
                     "test_rows": [len(d) for d in test_sets], "resumed_from": resumed_from,
                     "init": init_report, "notes": notes, "body_model": body.info.name,
                     "parameters": sum(p.numel() for p in params), "tensorboard": tb is not None})

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")
    last_losses: dict[str, float] = {}
    saved_step = step if resume else -1
    window: list[dict[str, float]] = []
    t_window = time.perf_counter()

    def save(final: bool = False) -> Path:
        nonlocal saved_step
        name = f"step_{step:07d}"
        reg_cfg.provenance = _provenance(cfg, step, body, init_report, metrics, last_losses, train_ds.datasets)
        w = save_native(model, reg_cfg, ck_dir / name)
        state = {
            "format": STATE_FORMAT, "step": step, "weights": w.name,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
            "config": config_to_dict(cfg), "metrics": metrics, "init_report": init_report,
        }
        _atomic_torch_save(state, ck_dir / f"{name}.state.pt")
        saved_step = step
        if cfg.keep_checkpoints:
            found = sorted((int(m.group(1)), p) for p in ck_dir.iterdir() if (m := _CKPT_RE.match(p.name)))
            for s_old, p_old in found[: max(0, len(found) - cfg.keep_checkpoints)]:
                for q in (p_old, ck_dir / f"step_{s_old:07d}.safetensors", ck_dir / f"step_{s_old:07d}.json"):
                    q.unlink(missing_ok=True)
        final_path = None
        if final:
            final_path = save_native(model, reg_cfg, out_dir / "model")
        _append_jsonl(log_path, {"event": "checkpoint", "step": step, "path": str(w), "final": final})
        _emit(progress, {"event": "checkpoint", "step": step, "path": str(w), "final": final})
        return final_path or w

    def run_eval() -> None:
        nonlocal metrics
        if not test_sets:
            return
        res = {}
        for i, ds in enumerate(test_sets):
            key = ds.name if ds.name not in res else f"{ds.name}_{i}"
            res[key] = evaluate(model, ds, body, device, cfg.batch_size, cfg.data.test_limit, precision,
                                    cfg.data.num_workers)
        metrics = {"step": step, "test": res}
        _append_jsonl(log_path, {"event": "eval", "step": step, "test": res})
        if tb is not None:
            for name, r in res.items():
                for k in ("MPJPE", "PA-MPJPE", "PVE"):
                    if r.get(k) is not None:
                        tb.add_scalar(f"eval/{name}/{k}", r[k], step)
        _emit(progress, {"event": "eval", "step": step, "test": res})

    try:
        while step < cfg.steps:
            batch = next(batches)
            crops = batch["img"].to(device, non_blocking=True)
            info = batch["bbox_info"].to(device, non_blocking=True)
            targets = targets_from_batch(batch, device)
            with autocast:
                out = criterion.run_model(model, crops, info)
            res = criterion(out, targets)
            if not torch.isfinite(res.total):
                raise TrainError(f"the loss is not finite at step {step + 1} ({res.as_floats()}); lower optim.lr "
                                 "or check the data")
            optimizer.zero_grad(set_to_none=True)
            res.total.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            step += 1
            last_losses = res.as_floats()
            if cfg.log_every:
                window.append(last_losses)
            elapsed = time.perf_counter() - t_start
            if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
                dt = time.perf_counter() - t_window
                mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                rec = {"event": "train", "step": step, "lr": lr, **mean,
                       "samples_per_s": len(window) * cfg.batch_size / max(dt, 1e-9), "elapsed_s": elapsed}
                _append_jsonl(log_path, rec)
                if tb is not None:
                    for k, v in mean.items():
                        tb.add_scalar(f"train/{k}", v, step)
                    tb.add_scalar("train/lr", lr, step)
                window, t_window = [], time.perf_counter()
            _emit(progress, {"event": "step", "step": step, "steps": cfg.steps, "lr": lr, "losses": last_losses,
                             "elapsed_s": elapsed})
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                run_eval()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save()
    except KeyboardInterrupt:
        path = None
        if step > 0 and step != saved_step:
            path = save()
        elif step == saved_step and step > 0:
            path = ck_dir / f"step_{step:07d}.safetensors"
        if tb is not None:
            tb.close()
        raise TrainInterrupted(step, path) from None

    if not metrics or metrics.get("step") != step:
        run_eval()
    final = save(final=True)
    if tb is not None:
        tb.close()
    seconds = time.perf_counter() - t_start
    _emit(progress, {"event": "end", "step": step, "checkpoint": str(final), "metrics": metrics,
                     "losses": last_losses, "seconds": seconds})
    return TrainResult(output=out_dir, checkpoint=final, step=step, metrics=metrics, last_losses=last_losses,
                       init_report=init_report, seconds=seconds)
