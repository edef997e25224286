"""Regressor checkpoints: the native format, the authors' and CLIFF's files.

Native format (what ``hmrcli weights convert`` writes): ``NAME.safetensors`` (weights,
native parameter names: backbone under ``backbone.``) plus ``NAME.json`` (a
:class:`RegressorConfig`: its :class:`ArchitectureConfig` (architecture, backbone, M, crop
size, aspect, aggregation, iterations), box convention, body model that pose/shape refer to,
provenance).

Also loaded directly (always with ``torch.load(weights_only=True)``):

* the authors' Multi-RoI files (``{'model': state_dict, 'optimizer': ..., ...}``), layouts
  ``mroi_res50`` (``HMR_sim``: backbone keys unprefixed) and ``mroi_hr48``
  (``HMR_sim_hrnet``: backbone under ``backbone.``, 720-d pose-HRNet features);
* CLIFF's released files (``res50-*.pt``, ``hr48-*.pt``: weights under ``model``, maybe a
  ``module.`` prefix, backbone under ``encoder.``), as the single-RoI CLIFF model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from hmrcli.files import atomic_write_bytes, atomic_write_text
from hmrcli.nn.backbones import BACKBONES, create_backbone
from hmrcli.nn.imphmr import ImpHMR
from hmrcli.nn.mean_params import load_mean_params
from hmrcli.nn.mesh_sampling import (
    MeshSampling,
    load_mesh_sampling,
)
from hmrcli.nn.multiroi import CLIFFRegressor, MultiRoIHMR
from hmrcli.nn.pointhmr import PointHMR

__all__ = [
    "CheckpointError",
    "ArchitectureConfig",
    "RegressorConfig",
    "ARCHS",
    "DEFAULT_HEAD_DIM",
    "ASPECTS",
    "AGGREGATIONS",
    "LAYOUTS",
    "read_state_dict",
    "detect_layout",
    "to_native",
    "config_for_layout",
    "build_model",
    "load_checkpoint",
    "save_native",
]

HEAD_PREFIXES = ("init_pose", "init_shape", "init_cam", "pos_enc.", "fc1.", "fc2.", "decpose.",
                 "decshape.", "deccam.", "fuse_fc.", "attention.", "proj_head.")

# layout name -> (architecture, backbone, description)
LAYOUTS: dict[str, tuple[str, str, str]] = {
    "native": ("", "", "hmrcli native (safetensors + JSON config)"),
    "mroi_res50": ("multiroi", "resnet50", "Multi-RoI authors' HMR_sim (ResNet-50)"),
    "mroi_hr48": ("multiroi", "hrnet_w48_pose", "Multi-RoI authors' HMR_sim_hrnet (pose-HRNet-W48, 720-d)"),
    "cliff_res50": ("cliff", "resnet50", "CLIFF release, ResNet-50"),
    "cliff_hr48": ("cliff", "hrnet_w48_cls", "CLIFF release, classification HRNet-W48 (2048-d)"),
}


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model it looks like."""


#: what an :class:`ArchitectureConfig`'s ``arch``, ``aspect`` and ``aggregation`` may be
ARCHS = ("multiroi", "cliff", "imphmr", "pointhmr")
#: ``head_dim`` 0 means these widths (ImpHMR: the feature field's hidden width, GIRAFFE's;
#: PointHMR: the first transformer block's token width, the paper's)
DEFAULT_HEAD_DIM = {"imphmr": 128, "pointhmr": 512}
ASPECTS = ("rect", "square")
AGGREGATIONS = ("code", "paper")


@dataclass
class ArchitectureConfig:
    """The network of a regressor: what :func:`build_model` builds. These fields are declared
    here only: :class:`RegressorConfig` (a checkpoint's config) adds what interprets the outputs,
    ``hmrcli.train.config.ModelConfig`` (training) adds where to start and the body model.

    arch: ``multiroi``, ``cliff`` (the M = 1 baseline), ``imphmr`` (:mod:`hmrcli.nn.imphmr`;
    M = 1 is the paper's model, M > 1 puts Multi-RoI fusion in front of its feature field) or
    ``pointhmr`` (:mod:`hmrcli.nn.pointhmr`; M = 1); num_rois: M (1..5; cliff, pointhmr: 1);
    crop_hw: crop size in pixels (H, W); aspect: ``rect`` (256x192, b = crop height) or
    ``square`` (224x224); aggregation: ``code`` (RoI 0's estimate) or ``paper`` (mean fused
    feature; multiroi only); n_iter: iterations of the regression; head_dim: the width of the
    architecture's own head, 0 = its default (:data:`DEFAULT_HEAD_DIM`: ImpHMR's feature-field
    MLP 128, PointHMR's tokens 512), smaller for CPU-scale runs; must be 0 for multiroi/cliff.
    """

    arch: str = "multiroi"  # multiroi | cliff
    backbone: str = "resnet50"  # resnet50 | hrnet_w48_pose | hrnet_w48_cls | resnet18
    num_rois: int = 5
    crop_hw: tuple[int, int] = (256, 192)
    aspect: str = "rect"
    aggregation: str = "code"
    n_iter: int = 3
    head_dim: int = 0

    def architecture(self) -> dict[str, Any]:
        """The values of the :class:`ArchitectureConfig` fields (of a subclass too)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ArchitectureConfig)}

    def validate(self, where: str = "<config>") -> None:
        """Raise CheckpointError naming ``where`` and the field when a value cannot be used."""

        if self.arch not in ARCHS:
            raise _bad(self, where, "arch", " or ".join(ARCHS))
        if self.backbone not in BACKBONES:
            raise _bad(self, where, "backbone", f"one of {', '.join(sorted(BACKBONES))}")
        if not _is_int(self.num_rois) or not 1 <= self.num_rois <= 5:
            raise _bad(self, where, "num_rois", "an integer 1..5")
        if self.arch in ("cliff", "pointhmr") and self.num_rois != 1:
            raise _bad(self, where, "num_rois", f"1 for the {self.arch} architecture")
        if not all(_is_int(v) and 32 <= v <= 1024 for v in self.crop_hw):
            raise _bad(self, where, "crop_hw", "two integers 32..1024")
        if self.aspect not in ASPECTS:
            raise _bad(self, where, "aspect", " or ".join(ASPECTS))
        if self.aggregation not in AGGREGATIONS:
            raise _bad(self, where, "aggregation", " or ".join(AGGREGATIONS))
        if not _is_int(self.n_iter) or not 1 <= self.n_iter <= 10:
            raise _bad(self, where, "n_iter", "an integer 1..10")
        if self.arch in ("imphmr", "pointhmr") and self.aggregation != "code":
            raise _bad(self, where, "aggregation", f"code for the {self.arch} architecture")
        if not _is_int(self.head_dim):
            raise _bad(self, where, "head_dim", "an integer")
        if self.arch in ("multiroi", "cliff") and self.head_dim != 0:
            raise _bad(self, where, "head_dim", f"0 for the {self.arch} architecture (it has no such width)")
        if self.arch == "imphmr" and not (self.head_dim == 0 or 8 <= self.head_dim <= 1024):
            raise _bad(self, where, "head_dim", "0 (128) or 8..1024 for imphmr")
        if self.arch == "pointhmr" and not (self.head_dim == 0 or (32 <= self.head_dim <= 2048
                                                                   and self.head_dim % 32 == 0)):
            raise _bad(self, where, "head_dim", "0 (512) or a multiple of 32 in 32..2048 for pointhmr")


@dataclass
class RegressorConfig(ArchitectureConfig):
    """Everything needed to rebuild a regressor and interpret its outputs: its
    :class:`ArchitectureConfig` and box_rescale (the crop box's margin); body_model: the body
    model its pose/shape refer to (``smpl`` for all published checkpoints: SMPL neutral, 10
    betas); provenance: where the weights come from.
    """

    box_rescale: float = 1.1
    body_model: str = "smpl"
    format_version: int = 1
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["crop_hw"] = list(self.crop_hw)
        if not self.head_dim:  # the default: left out, so the JSON of multiroi/cliff keeps its form
            del d["head_dim"]
        d["schema"] = "hmrcli.regressor/1"
        return d

    @classmethod
    def from_json(cls, d: Any, where: str = "<config>") -> "RegressorConfig":
        """A config from its JSON form, every field checked (type, finite, range); errors
        (CheckpointError) name ``where`` and the field."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{where}: the config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "crop_hw" in kw:
            hw = kw["crop_hw"]
            if not (isinstance(hw, (list, tuple)) and len(hw) == 2 and all(_is_int(v) for v in hw)):
                raise CheckpointError(f"{where}: crop_hw must be two integers [H, W], got {hw!r}")
            kw["crop_hw"] = (int(hw[0]), int(hw[1]))
        cfg = cls(**kw)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "<config>") -> None:
        """Raise CheckpointError naming ``where`` and the field when a value cannot be used."""
        super().validate(where)
        if not (isinstance(self.box_rescale, (int, float)) and math.isfinite(self.box_rescale)
                and 0.5 <= self.box_rescale <= 4.0):
            raise _bad(self, where, "box_rescale", "a finite number 0.5..4")
        if not isinstance(self.body_model, str):
            raise _bad(self, where, "body_model", "a name (smpl, free)")


def _bad(cfg: Any, where: str, field: str, want: str) -> CheckpointError:
    return CheckpointError(f"{where}: {field} must be {want}, got {getattr(cfg, field)!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: not a model checkpoint (expected a state dict of tensors, or one under 'model')"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read weights (and the native JSON config when there is one) without running code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":

        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e
        cfg_path = path.with_suffix(".json")
        try:
            cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
        return sd, cfg
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle refused by weights_only, not a torch file...
        raise CheckpointError(
            f"{path}: cannot be loaded as a PyTorch checkpoint with weights_only=True "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    return _unwrap(obj, path), None


def detect_layout(sd: dict[str, torch.Tensor]) -> str:
    keys = sd.keys()
    if any(k.startswith("encoder.") for k in keys):
        return "cliff_hr48" if any(k.startswith("encoder.incre_modules") for k in keys) else "cliff_res50"
    if "fuse_fc.weight" in sd:
        if any(k.startswith("backbone.") for k in keys):
            d = sd["fuse_fc.weight"].shape[1] - 195
            return "mroi_hr48" if d == 720 else "native"
        return "mroi_res50"
    if any(k.startswith("backbone.") for k in keys):
        return "native"
    return "unknown"


def to_native(sd: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Rename a state dict of ``layout`` to hmrcli's native parameter names."""
    if layout in ("native", "mroi_hr48"):
        return dict(sd)
    if layout == "mroi_res50":
        return {(k if k.startswith(HEAD_PREFIXES) else f"backbone.{k}"): v for k, v in sd.items()}
    if layout in ("cliff_res50", "cliff_hr48"):
        return {(f"backbone.{k[len('encoder.'):]}" if k.startswith("encoder.") else k): v for k, v in sd.items()}
    raise CheckpointError(f"unknown checkpoint layout {layout!r}")


def config_for_layout(layout: str, sd: dict[str, torch.Tensor]) -> RegressorConfig:
    arch, backbone, desc = LAYOUTS[layout]
    num_rois = int(sd["attention.4.weight"].shape[0]) if arch == "multiroi" else 1
    return RegressorConfig(arch=arch, backbone=backbone, num_rois=num_rois,
                           provenance={"layout": layout, "description": desc})


def build_model(cfg: RegressorConfig, mean_params: dict[str, torch.Tensor] | None = None,
                mesh_sampling: MeshSampling | None = None) -> nn.Module:
    """A randomly initialised model for ``cfg``; its start values are ``mean_params``
    (default: hmrcli's shipped ones, see :mod:`hmrcli.nn.mean_params`).

    PointHMR's mesh sampling (:mod:`hmrcli.nn.mesh_sampling`): ``mesh_sampling`` when given
    (``hmrcli train`` derives SMPL's), else the shipped one for ``body_model = "free"``, else
    else CheckpointError (a checkpoint carries its own: the loader reads it from the file)."""

    if mean_params is None:
        mean_params = load_mean_params()
    backbone = create_backbone(cfg.backbone)
    if cfg.arch == "multiroi":
        return MultiRoIHMR(backbone, num_rois=cfg.num_rois, n_iter=cfg.n_iter, aggregation=cfg.aggregation,
                           mean_params=mean_params)
    if cfg.arch == "cliff":
        return CLIFFRegressor(backbone, n_iter=cfg.n_iter, mean_params=mean_params)
    head = cfg.head_dim or DEFAULT_HEAD_DIM.get(cfg.arch, 0)
    if cfg.arch == "imphmr":
        return ImpHMR(backbone, num_rois=cfg.num_rois, n_iter=cfg.n_iter, mean_params=mean_params, field_hidden=head)
    if cfg.arch == "pointhmr":
        if not hasattr(backbone, "forward_pyramid"):
            raise CheckpointError(f"backbone {cfg.backbone!r} has no 1/4 + 1/32 feature maps for PointHMR")
        if mesh_sampling is None:
            body = getattr(cfg, "body_model", "free")
            if body != "free":
                raise CheckpointError(f"PointHMR needs the mesh sampling of body model {body!r}: pass mesh_sampling "
                                      "(derive_mesh_sampling from the body model's files, or a checkpoint's own)")
            mesh_sampling = load_mesh_sampling("free")
        grid = (-(-int(cfg.crop_hw[0]) // 32), -(-int(cfg.crop_hw[1]) // 32))
        return PointHMR(backbone, mesh_sampling, n_iter=cfg.n_iter, mean_params=mean_params, token_dim=head,
                        grid_hw=grid)
    raise CheckpointError(f"unknown architecture {cfg.arch!r}")


def _key_report(missing: list[str], unexpected: list[str], limit: int = 8) -> str:
    def fmt(ks: list[str]) -> str:
        return ", ".join(ks[:limit]) + (f" ... (+{len(ks) - limit} more)" if len(ks) > limit else "")

    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {fmt(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {fmt(unexpected)}")
    return "; ".join(parts)


def load_checkpoint(path: str | os.PathLike, aggregation: str | None = None) -> tuple[nn.Module, RegressorConfig]:
    """Load any supported checkpoint into a model (CPU, eval mode) and its config."""
    path = Path(path)
    sd, cfg_json = read_state_dict(path)
    layout = "native" if cfg_json is not None else detect_layout(sd)
    if layout == "unknown":
        sample = ", ".join(list(sd)[:5])
        raise CheckpointError(
            f"{path}: unrecognised checkpoint layout (first keys: {sample}); supported: "
            + "; ".join(f"{k} = {v[2]}" for k, v in LAYOUTS.items())
        )
    if layout == "native":
        if cfg_json is None:
            raise CheckpointError(f"{path}: native weights need their JSON config beside them ({path.with_suffix('.json').name})")
        cfg = RegressorConfig.from_json(cfg_json, str(path.with_suffix(".json")))
    else:
        cfg = config_for_layout(layout, sd)
        cfg.provenance["source_file"] = path.name
    if aggregation is not None:
        cfg.aggregation = aggregation
    native = to_native(sd, layout)
    sampling = None
    if cfg.arch == "pointhmr":  # the checkpoint's own mesh sampling (model buffers), for any body model
        try:
            sampling = MeshSampling.from_state_dict(native)
        except KeyError as e:
            raise CheckpointError(f"{path}: a PointHMR checkpoint without its mesh sampling: {e.args[0]}") from None
    model = build_model(cfg, mesh_sampling=sampling)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(native))
    unexpected = sorted(set(native) - set(expected))
    shape_bad = [k for k in set(expected) & set(native) if tuple(expected[k].shape) != tuple(native[k].shape)]
    if missing or unexpected or shape_bad:
        msg = _key_report(missing, unexpected)
        if shape_bad:
            k = sorted(shape_bad)[0]
            msg += f"; {len(shape_bad)} shape mismatches, e.g. {k}: file {tuple(native[k].shape)} vs model {tuple(expected[k].shape)}"
        raise CheckpointError(f"{path}: looks like {LAYOUTS[layout][2]} ({layout}) but does not match it: {msg}")
    model.load_state_dict(native, strict=True)
    return model.eval(), cfg


def save_native(model: nn.Module, cfg: RegressorConfig, out: str | os.PathLike) -> Path:
    """Write ``OUT.safetensors`` + ``OUT.json`` atomically; returns the weights path."""

    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(out, save(sd, metadata={"format": "hmrcli.regressor/1"}))
    atomic_write_text(out.with_suffix(".json"), json.dumps(cfg.to_json(), indent=2) + "\n")
    return out
