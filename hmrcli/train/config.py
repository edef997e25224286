"""The training configuration: typed dataclasses, read from TOML, JSON or YAML, every
field settable with ``--set key=value``.

File formats: ``.toml`` (stdlib ``tomllib``), ``.json``, and ``.yaml``/``.yml`` when
PyYAML is importable (it is not a declared dependency of hmrcli; without it, YAML files
are refused with a message and TOML/JSON still work).

Overrides: ``section.field=value`` with dotted keys (list items by index:
``data.train.0.ratio=0.5``). The value is parsed by the field's type: numbers, booleans
(``true/false/yes/no/on/off/1/0``), ``none``/``null`` for optional fields, lists and
tuples as JSON (``[256, 192]``) or comma-separated (``256,192``), sections and lists of
sections as JSON (``data.train=[{"path": "a.npz"}]``). Unknown keys are errors (with
the closest valid names).

Defaults are the authors' training set-up where the method states one (docs/method.md
section 5: loss weights, Adam, lr 1e-4, batch 48, M = 5, 256x192 crops, ResNet-50).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from hmrcli.nn.backbones import BACKBONES
from hmrcli.nn.checkpoints import (
    AGGREGATIONS,
    ARCHS,
    ASPECTS,
    ArchitectureConfig,  # the one definition of the network's fields (also a checkpoint's)
    CheckpointError,
    RegressorConfig,
)
from hmrcli.train.data import (
    AugmentConfig,  # the one definition (also used by the datasets)
)

__all__ = [
    "ConfigError",
    "AugmentConfig",
    "DataConfig",
    "DatasetConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "example_toml",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


@dataclass
class DatasetConfig:
    """One training/evaluation dataset: a SPIN/CLIFF-style ``.npz`` (imgname, center,
    scale, part, S, pose, shape, has_smpl, ...) with its images under ``img_root``."""

    path: str = ""
    img_root: str = ""  # folder the npz's imgname paths are relative to ("" = the npz's folder)
    ratio: float = 1.0  # mixing ratio among the training datasets (normalised to sum 1)
    name: str = ""  # label in logs (default: the file name)


@dataclass
class DataConfig:
    train: list[DatasetConfig] = field(default_factory=list)
    test: list[DatasetConfig] = field(default_factory=list)  # held-out sets: MPJPE / PA-MPJPE
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 0
    test_limit: int = 0  # evaluate at most this many persons per test set (0 = all)


@dataclass
class ModelConfig(ArchitectureConfig):
    """The network to train: the fields of :class:`~hmrcli.nn.checkpoints.ArchitectureConfig`
    (arch, backbone, num_rois, crop_hw, aspect, aggregation, n_iter: declared there once, for
    training and checkpoints alike), then the training-only ones below."""

    init: Optional[str] = None  # native, authors' or CLIFF checkpoint to start from
    mean_params: Optional[str] = None  # SPIN smpl_mean_params.npz (default: hmrcli's)
    body_model: str = "auto"  # smpl | free | auto (the checkpoint records the one resolved)
    smpl_dir: Optional[str] = None

    def regressor_config(self, body_model: str) -> RegressorConfig:
        """The checkpoint config of the network trained: this architecture, its outputs in
        ``body_model`` (the resolved one: smpl or free)."""
        return RegressorConfig(**{**self.architecture(), "crop_hw": tuple(self.crop_hw)}, body_model=body_model)


@dataclass
class LossConfig:
    """Weights (0 = term off, not computed) and options of the training losses
    (:mod:`hmrcli.train.losses`). Defaults: docs/method.md §6."""

    scale: float = 60.0
    kp2d: float = 5.0
    kp3d: float = 5.0
    vertices: float = 1.0
    pose: float = 1.0
    betas: float = 0.001
    camera: float = 1.0
    contrast: float = 0.1
    camera_form: str = "code"  # code (authors' camera_losses) | paper (Eq. 13/16, per axis)
    camera_axis_weights: Optional[list[float]] = None  # (x, y, s); None: the form's own
    temperature: float = 0.5
    contrast_scale_by_temperature: bool = True
    kp2d_norm: str = "box"  # box (normalised crop coords, b/2 units) | crop (2x/w-1, 2y/h-1: authors')
    mesh_source: str = "auto"  # roi (every RoI's estimate) | person | auto (person for aggregation=paper)
    # ImpHMR (model.arch = imphmr; hmrcli.train.losses_imphmr, docs/method.md §10)
    view: float = 1.0  # arbitrary-view imagination: x (kp3d, pose, betas) weights at the sampled azimuth
    silhouette: float = 1.0  # geometric guidance: squared error of the silhouette seen from the sampled azimuth
    consistency: float = 1.0  # appearance consistency between views (rows without SMPL ground truth)
    view_azimuth_range: float = 180.0  # degrees: the sampled azimuth is uniform in [-range, range]
    silhouette_extent: float = 2.4  # metres: side of the square (pelvis-centred) a silhouette covers
    # PointHMR (model.arch = pointhmr; hmrcli.train.losses_pointhmr, docs/method.md §11)
    heatmap: float = 1.0  # squared error of the vertex heatmaps against Gaussians at the projected vertices
    heatmap_sigma: float = 2.0  # Gaussian std in heatmap cells at a 56-cell-wide map (scaled with the width)
    point_vertices: float = 1.0  # L1 of the regressed vertices, summed over the 3 resolutions
    point_joints: float = 1.0  # 3D joints: the 14 joint tokens and the skeleton joints of the regressed mesh
    point_kp2d: float = 1.0  # 2D: the joint tokens projected with the camera token's camera


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.0  # max gradient norm (0 = off)


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant | cosine | step | linear
    warmup_steps: int = 0  # linear warm-up from 0
    min_lr_ratio: float = 0.0  # cosine/linear: final lr = lr * min_lr_ratio
    step_size: int = 10000  # step: multiply by gamma every step_size steps
    gamma: float = 0.1


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch_size: int = 48
    steps: int = 1000
    precision: str = "fp32"  # fp32 | bf16 (autocast, CUDA only; fp32 elsewhere)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    output: str = "runs/train"
    checkpoint_every: int = 1000  # steps (0 = only at the end)
    keep_checkpoints: int = 3  # periodic checkpoints kept (0 = all); the final one always
    log_every: int = 10  # steps between metric-log lines
    eval_every: int = 0  # steps between evaluations on data.test (0 = at the end only)
    seed: int = 0
    threads: int = 0  # CPU intra-op threads (0 = torch's default)


# ------------------------------------------------------------------ typed conversion


def _origin(tp: Any) -> Any:
    return typing.get_origin(tp)


def _optional_inner(tp: Any) -> tuple[bool, Any]:
    if _origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else f" (valid: {', '.join(options)})"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a parsed (TOML/JSON/YAML) value to the field type ``tp``."""
    opt, tp = _optional_inner(tp)
    if value is None:
        if opt:
            return None
        raise ConfigError(f"{key}: may not be null")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table/object, got {type(value).__name__}")
        return _from_dict(tp, value, key)
    origin = _origin(tp)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = _parse_list_string(value, key)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _parse_bool(value, key)
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
            if f.is_integer():
                return int(f)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _parse_bool(s: str, key: str) -> bool:
    v = s.strip().lower()
    if v in ("true", "yes", "on", "1"):
        return True
    if v in ("false", "no", "off", "0"):
        return False
    raise ConfigError(f"{key}: expected true/false, got {s!r}")


def _parse_list_string(s: str, key: str) -> list[Any]:
    s = s.strip()
    if s.startswith("["):
        try:
            return json.loads(s)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{key}: invalid JSON list {s!r} ({e})") from None
    return [] if not s else [p.strip() for p in s.split(",")]


def _from_dict(cls: type, d: dict[str, Any], prefix: str = "") -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kw = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            raise ConfigError(f"unknown configuration key {key!r}{_suggest(k, names)}")
        kw[k] = _convert(v, hints[k], key)
    return cls(**kw)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a nested dict (missing fields take their defaults)."""
    cfg = _from_dict(TrainConfig, d)
    validate(cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), JSON-serialisable."""

    def conv(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return x

    return conv(cfg)


def _read_file(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON ({e})") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml  # optional: PyYAML only for .yaml configurations
        except ImportError:
            raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                              "or write the configuration as TOML or JSON") from None
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({e})") from None
        return d or {}
    raise ConfigError(f"{path}: unknown configuration format {suffix!r} (use .toml, .json, .yaml or .yml)")


def _resolve_paths(cfg: TrainConfig, base: Path) -> None:
    """Relative dataset/checkpoint paths in a file are relative to that file's folder."""

    def rel(p: str | None) -> str | None:
        if not p:
            return p
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q))

    for ds in [*cfg.data.train, *cfg.data.test]:
        ds.path = rel(ds.path) or ""
        ds.img_root = rel(ds.img_root) or ""
    if cfg.model.init and (Path(cfg.model.init).suffix or os.sep in cfg.model.init):
        cfg.model.init = rel(cfg.model.init)  # (a bare registry name stays as it is)
    cfg.model.smpl_dir = rel(cfg.model.smpl_dir)
    cfg.model.mean_params = rel(cfg.model.mean_params)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a configuration file (or start from the defaults) and apply ``--set`` overrides.

    Relative paths inside the file (datasets, ``model.init``, ``model.mean_params``) are
    taken relative to the file's folder; the ``output`` folder and override values are
    relative to the working directory.
    """
    if path is None:
        cfg = TrainConfig()
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: no such configuration file")
        d = _read_file(p)
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: the configuration must be a table/mapping at the top level")
        cfg = _from_dict(TrainConfig, d)
        _resolve_paths(cfg, p.resolve().parent)
    apply_overrides(cfg, overrides or [])
    _resolve_paths(cfg, Path.cwd())  # what is still relative (overrides) is relative to the working directory
    validate(cfg)
    return cfg


def _parse_scalar_override(raw: str, tp: Any, key: str) -> Any:
    opt, inner = _optional_inner(tp)
    if opt and raw.strip().lower() in ("none", "null", ""):
        return None
    if dataclasses.is_dataclass(inner) or (_origin(inner) is list and typing.get_args(inner)
                                           and dataclasses.is_dataclass(typing.get_args(inner)[0])):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{key}: expected JSON for a section, got {raw!r} ({e})") from None
        return _convert(value, tp, key)
    return _convert(raw, tp, key)


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``key=value`` overrides in place (see the module docstring)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        obj: Any = cfg
        tp: Any = TrainConfig
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            here = ".".join(parts[: i + 1])
            if dataclasses.is_dataclass(obj):
                names = [f.name for f in dataclasses.fields(obj)]
                if part not in names:
                    raise ConfigError(f"unknown configuration key {here!r}{_suggest(part, names)}")
                ftp = _hints(type(obj))[part]
                if last:
                    setattr(obj, part, _parse_scalar_override(raw, ftp, key))
                else:
                    obj, tp = getattr(obj, part), ftp
            elif isinstance(obj, list):
                try:
                    idx = int(part)
                except ValueError:
                    raise ConfigError(f"{here}: list index expected, got {part!r}") from None
                inner = typing.get_args(_optional_inner(tp)[1])[0]
                if idx == len(obj) and dataclasses.is_dataclass(inner):
                    obj.append(inner())  # data.train.N.path=... appends a dataset
                if not 0 <= idx < len(obj):
                    raise ConfigError(f"{here}: index {idx} out of range (list has {len(obj)} items)")
                if last:
                    obj[idx] = _parse_scalar_override(raw, inner, key)
                else:
                    obj, tp = obj[idx], inner
            else:
                raise ConfigError(f"{here}: {parts[i - 1]!r} has no fields")
    return cfg


_CHOICES = {
    "model.arch": ARCHS,
    "model.aspect": ASPECTS,
    "model.aggregation": AGGREGATIONS,
    "model.body_model": ("auto", "smpl", "free"),
    "losses.camera_form": ("code", "paper"),
    "losses.kp2d_norm": ("box", "crop"),
    "losses.mesh_source": ("auto", "roi", "person"),
    "optim.name": ("adam", "adamw"),
    "schedule.name": ("constant", "cosine", "step", "linear"),
    "precision": ("fp32", "bf16"),
}


def validate(cfg: TrainConfig) -> None:
    """Check choices and ranges; raises :class:`ConfigError`."""
    for key, choices in _CHOICES.items():
        obj: Any = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        if obj not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {obj!r}")
    m = cfg.model
    if m.arch == "cliff" and m.num_rois != 1:
        raise ConfigError(f"model.arch = cliff takes one RoI; set model.num_rois = 1 (got {m.num_rois})")
    if not 1 <= m.num_rois <= 5:
        raise ConfigError(f"model.num_rois must be 1..5; got {m.num_rois}")
    if min(m.crop_hw) < 32:
        raise ConfigError(f"model.crop_hw must be at least 32x32; got {list(m.crop_hw)}")

    if m.backbone not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown {m.backbone!r}; available: {', '.join(sorted(BACKBONES))}")
    try:  # the rest of what a checkpoint's config is checked for (crop_hw up to 1024, n_iter 1..10)
        ArchitectureConfig.validate(m, "model")
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    for name in ("batch_size", "steps"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1")
    for name in ("checkpoint_every", "log_every", "eval_every", "keep_checkpoints", "threads"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0")
    lc = cfg.losses
    for name in ("scale", "kp2d", "kp3d", "vertices", "pose", "betas", "camera", "contrast"):
        if getattr(lc, name) < 0:
            raise ConfigError(f"losses.{name} must be >= 0")
    if lc.temperature <= 0:
        raise ConfigError("losses.temperature must be > 0")
    if lc.camera_axis_weights is not None and len(lc.camera_axis_weights) != 3:
        raise ConfigError("losses.camera_axis_weights needs 3 values (x, y, s)")
    if lc.contrast > 0 and (m.arch in ("cliff", "pointhmr") or (m.arch == "imphmr" and m.num_rois == 1)):
        raise ConfigError(f"losses.contrast > 0 needs the Multi-RoI projection head (several RoIs); set "
                          f"losses.contrast = 0 for {m.arch} with {m.num_rois} RoI(s)")
    for name in ("view", "silhouette", "consistency", "heatmap", "point_vertices", "point_joints", "point_kp2d"):
        if getattr(lc, name) < 0:
            raise ConfigError(f"losses.{name} must be >= 0")
    if not 0 <= lc.view_azimuth_range <= 180:
        raise ConfigError("losses.view_azimuth_range must be 0..180 (degrees)")
    if lc.silhouette_extent <= 0 or lc.heatmap_sigma <= 0:
        raise ConfigError("losses.silhouette_extent and losses.heatmap_sigma must be > 0")
    if cfg.optim.lr <= 0:
        raise ConfigError("optim.lr must be > 0")
    for ds in [*cfg.data.train, *cfg.data.test]:
        if not ds.path:
            raise ConfigError("every dataset needs a path")
        if ds.ratio < 0:
            raise ConfigError(f"dataset {ds.path}: ratio must be >= 0")
    if cfg.data.train and sum(d.ratio for d in cfg.data.train) <= 0:
        raise ConfigError("data.train: the mixing ratios sum to 0")


def example_toml() -> str:
    """A commented example configuration (the defaults, with a small synthetic set-up)."""
    return _EXAMPLE


_EXAMPLE = """\
# hmrcli train configuration (TOML). Every key can be overridden: --set section.key=value
batch_size = 48
steps = 20000
precision = "bf16"          # fp32 | bf16 (autocast on CUDA; fp32 on CPU)
device = "auto"             # auto | cpu | cuda | cuda:N
output = "runs/mroi_r50"
checkpoint_every = 1000
keep_checkpoints = 3
log_every = 10
eval_every = 2000           # 0 = evaluate data.test at the end only
seed = 0

[model]
arch = "multiroi"           # multiroi | cliff (M = 1 baseline) | imphmr | pointhmr
backbone = "resnet50"       # resnet50 | hrnet_w48_pose | hrnet_w48_cls | resnet18 | hrnet_w32_pose
num_rois = 5
crop_hw = [256, 192]
aspect = "rect"
aggregation = "code"
# init = "res50-PA45.7_MJE72.0_MVE85.3_3dpw.pt"   # native, authors' or CLIFF checkpoint
body_model = "auto"         # smpl (needs --smpl-dir files) | free | auto

[losses]                    # L = scale * sum(weight * term); weight 0 = term off
scale = 60.0
kp2d = 5.0
kp3d = 5.0
vertices = 1.0
pose = 1.0
betas = 0.001
camera = 1.0
contrast = 0.1
camera_form = "code"        # code (authors') | paper (Eq. 13/16, per axis)
temperature = 0.5
kp2d_norm = "box"           # box | crop (authors' per-axis normalisation)

[optim]
name = "adam"
lr = 1e-4
weight_decay = 0.0

[schedule]
name = "constant"           # constant | cosine | step | linear
warmup_steps = 0

[data]
num_workers = 4

[data.augment]
enabled = true
flip_prob = 0.5
rot_factor = 30.0
rot_prob = 0.4
scale_factor = 0.25
shift_factor = 0.0
noise_factor = 0.4

[[data.train]]
path = "data/h36m_train.npz"
img_root = "data/h36m"
ratio = 0.5

[[data.train]]
path = "data/coco_2014_train.npz"
img_root = "data/coco"
ratio = 0.5

[[data.test]]
path = "data/synthetic_test.npz"
"""
