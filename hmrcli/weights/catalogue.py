"""The weights catalogue (``models/registry.json``): name -> file resolution, fetch, verify.

Registry entry fields: ``filename``, ``layout``, ``arch``, ``backbone``, ``num_rois``,
``url`` (direct download URL, or null when the publisher only offers an interactive page),
``source`` (where to get it by hand), ``sha256`` (full digest, or null when unknown),
``licence``, ``published`` (3DPW figures from the paper/release).

Person-detector weights live in the ``detectors`` section (same fields where they apply,
plus ``kind: "detector"``, ``framework``, ``config``, and ``sha256_prefix``: the leading hex
digits of the digest when only those are published, as in OpenMMLab's filenames). Fetch,
verify and the listing see both sections; names are unique across them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from hmrcli import assets
from hmrcli.nn.checkpoints import CheckpointError, load_checkpoint
from hmrcli.weights.onnx_regressor import OnnxRegressor, is_onnx_file
from hmrcli.weights.readers import read_mmdet_checkpoint

__all__ = ["load_regressor", "RUNTIMES", "known_checkpoints", "resolve_checkpoint", "fetch_checkpoint", "verify_checkpoint", "FetchError",
           "registry_document"]


class FetchError(RuntimeError):
    """A checkpoint could not be downloaded; the message says how to place it by hand."""


def registry_document() -> dict[str, Any]:
    """``models/registry.json`` as a dict (all sections, including the published figures)."""
    return json.loads(assets.asset_path("registry.json").read_text())


#: Registry sections holding downloadable weights: regressors, then person detectors.
SECTIONS = ("checkpoints", "detectors")


def known_checkpoints(section: str | None = None) -> dict[str, dict[str, Any]]:
    """Registry entries by name: one section (``"checkpoints"``: regressors, ``"detectors"``)
    or, by default, both."""
    reg = registry_document()
    out: dict[str, dict[str, Any]] = {}
    for sec in (section,) if section else SECTIONS:
        out.update(reg.get(sec, {}))
    return out


def _sha_matches(digest: str, entry: dict[str, Any]) -> bool | None:
    """Whether ``digest`` matches the entry's full sha256, else its published prefix;
    None when the registry knows neither."""
    want = entry.get("sha256")
    if want:
        return digest == want
    prefix = entry.get("sha256_prefix")
    if prefix:
        return digest.startswith(prefix.lower())
    return None


def _manual(entry: dict[str, Any], dest: Path) -> str:
    return (f"Download {entry['filename']} by hand from {entry['source']} and put it at {dest / entry['filename']} "
            "(or set HMRCLI_CHECKPOINT_DIR to the folder that holds it).")


def resolve_checkpoint(path_or_name: str | Path) -> Path:
    """A file path as given, or a registry name looked up in the checkpoints folder."""
    p = Path(path_or_name).expanduser()
    if p.exists():
        return p
    reg = known_checkpoints()
    name = str(path_or_name)
    if name in reg:
        entry = reg[name]
        cand = assets.checkpoints_dir() / entry["filename"]
        if cand.is_file():
            return cand
        raise CheckpointError(
            f"checkpoint {name!r} ({entry['filename']}) is not in {assets.checkpoints_dir()}. "
            f"Download it from {entry['source']} and put it there (or set HMRCLI_CHECKPOINT_DIR)."
        )
    raise CheckpointError(
        f"{name}: no such file, and not a known checkpoint name (known: {', '.join(sorted(reg))})"
    )


def fetch_checkpoint(
    name: str,
    dest: str | os.PathLike | None = None,
    timeout: float = 15.0,
    overwrite: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download a registry checkpoint into ``dest`` (default: the checkpoints folder),
    streaming to a temporary file, checking its sha256 when the registry knows it, then
    renaming it into place. Fails fast, with the manual alternative, when offline."""
    reg = known_checkpoints()
    if name not in reg:
        raise FetchError(f"{name!r} is not a known checkpoint (known: {', '.join(sorted(reg))})")
    entry = reg[name]
    dest = Path(dest) if dest is not None else assets.checkpoints_dir()
    target = dest / entry["filename"]
    if target.is_file() and not overwrite:
        return target
    url = entry.get("url")
    if not url:
        raise FetchError(f"{name}: the publisher offers no direct download URL. {_manual(entry, dest)}")
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{entry['filename']}.", suffix=".part", dir=dest)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    total = getattr(r, "length", None)
                    got = 0
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
                        h.update(chunk)
                        got += len(chunk)
                        if progress:
                            progress(got, total)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise FetchError(f"{name}: cannot download {url} ({reason}). {_manual(entry, dest)}") from None
        digest = h.hexdigest()
        if _sha_matches(digest, entry) is False:
            want = entry.get("sha256") or f"{entry['sha256_prefix']}..."
            raise FetchError(f"{name}: downloaded file has sha256 {digest}, expected {want}; not kept. "
                             f"{_manual(entry, dest)}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def verify_checkpoint(path_or_name: str | os.PathLike) -> dict[str, Any]:
    """sha256 of a checkpoint file, compared with the registry when the file is known,
    and whether it loads (layout, architecture, backbone, M)."""
    path = resolve_checkpoint(path_or_name)
    digest = assets.sha256_file(path)
    reg = known_checkpoints()
    entry_name = next((n for n, e in reg.items() if e["filename"] == path.name or n == str(path_or_name)), None)
    rep: dict[str, Any] = {"path": str(path), "sha256": digest, "registry_name": entry_name}
    if entry_name is not None:
        entry = reg[entry_name]
        rep["sha256_expected"] = entry.get("sha256")
        if not entry.get("sha256") and entry.get("sha256_prefix"):
            rep["sha256_prefix_expected"] = entry["sha256_prefix"]
        rep["sha256_ok"] = _sha_matches(digest, entry)
        if entry.get("kind") == "detector":
            return _verify_detector(path, entry, rep)
    try:
        if is_onnx_file(path):  # an `hmrcli weights export-onnx` graph: opened by onnxruntime on the CPU
            cfg = OnnxRegressor(path, device="cpu").config
            rep.update(runtime="onnx", exported_from=cfg.provenance.get("exported_from", ""))
        else:
            _, cfg = load_checkpoint(path)
        rep.update(loads=True, layout=cfg.provenance.get("layout", "native"), arch=cfg.arch, backbone=cfg.backbone,
                   num_rois=cfg.num_rois)
    except CheckpointError as e:
        rep.update(loads=False, error=str(e))
    rep["ok"] = rep["loads"] and rep.get("sha256_ok") is not False
    return rep


def _verify_detector(path: Path, entry: dict[str, Any], rep: dict[str, Any]) -> dict[str, Any]:
    """Detector weights: readable without running code (the detector framework itself is
    not needed for this check)."""
    try:
        sd, _meta = read_mmdet_checkpoint(path)
        rep.update(loads=True, layout=entry.get("framework", "mmdet"), arch=entry.get("arch"),
                   backbone=entry.get("backbone"), num_rois=None, tensors=len(sd))
    except CheckpointError as e:
        rep.update(loads=False, error=str(e))
    rep["ok"] = rep["loads"] and rep.get("sha256_ok") is not False
    return rep


#: what :func:`load_regressor` can run a regressor with
RUNTIMES = ("torch", "onnx")


def load_regressor(
    path_or_name: str | os.PathLike,
    device: str | torch.device = "cpu",
    aggregation: str | None = None,
    runtime: str = "torch",
    view_azimuth: float | None = None,
) -> nn.Module | OnnxRegressor:
    """Load a regressor from a checkpoint file (native, authors' Multi-RoI or CLIFF layout)
    or a registry name (``models/registry.json``, looked up in the checkpoints folder).

    Returns the network in eval mode on ``device``; its :class:`RegressorConfig` is
    ``model.config``. ``forward(crops (B,M,3,H,W), bbox_info (B,M,3))`` returns a
    :class:`hmrcli.nn.multiroi.RegressorOutput`.

    ``runtime="onnx"``: ``path_or_name`` must be an ``.onnx`` file written by
    ``hmrcli weights export-onnx`` (:func:`hmrcli.weights.onnx_regressor.export_onnx`); returns
    an :class:`~hmrcli.weights.onnx_regressor.OnnxRegressor` (onnxruntime; CUDA/TensorRT
    providers on ``cuda`` devices when onnxruntime offers them), whose call returns the
    person-level outputs (``person_rotmats``, ``person_betas``, ``cams``). The aggregation is
    the one the graph was exported with.

    ``view_azimuth`` (degrees; ImpHMR checkpoints only, torch runtime): the network returns
    the pose and shape ImpHMR infers for a camera turned by that azimuth about the vertical
    axis (``model.view_azimuth_deg``; :mod:`hmrcli.nn.imphmr`); CheckpointError for any other
    architecture.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    path = resolve_checkpoint(path_or_name)
    if view_azimuth is not None and not math.isfinite(float(view_azimuth)):
        raise ValueError(f"view_azimuth must be a finite number of degrees, got {view_azimuth!r}")
    if runtime == "onnx" and view_azimuth is not None:
        raise CheckpointError(f"{path}: --view-azimuth runs ImpHMR's feature field for another view; the ONNX graph "
                              "holds the canonical view only (use --runtime torch)")
    if runtime == "onnx":
        if not is_onnx_file(path):
            raise CheckpointError(
                f"{path}: --runtime onnx needs an .onnx file made by `hmrcli weights export-onnx` (this is not one); "
                f"export it first (`hmrcli weights export-onnx {path_or_name} OUT.onnx`) or use --runtime torch")
        net = OnnxRegressor(path, device=device)
        if aggregation is not None and aggregation != net.config.aggregation:
            raise CheckpointError(
                f"{path}: the ONNX graph was exported with aggregation {net.config.aggregation!r}; it cannot run "
                f"{aggregation!r} (export again with `hmrcli weights export-onnx --aggregation {aggregation}`)")
        return net
    if is_onnx_file(path):
        raise CheckpointError(f"{path}: an ONNX file; run it with --runtime onnx (load_regressor(..., runtime='onnx'))")
    model, cfg = load_checkpoint(path, aggregation=aggregation)
    if view_azimuth is not None:
        if cfg.arch != "imphmr":
            raise CheckpointError(f"{path}: --view-azimuth needs an ImpHMR checkpoint (model.arch = imphmr); this one "
                                  f"is {cfg.arch}, which infers the image's own view only")
        model.view_azimuth_deg = float(view_azimuth)
    model.config = cfg
    return model.to(device).eval()
