"""Regressors as ONNX graphs: export (``hmrcli weights export-onnx``) and an onnxruntime-backed
regressor that the regression engine runs like the torch network (``--runtime onnx``).

The graph: inputs ``crops`` (B, M, 3, H, W) float32, ImageNet-normalised RGB (what
:func:`hmrcli.geometry.normalize_crops` makes), and ``bbox_info`` (B, M, 3) float32; outputs
``person_rotmats`` (B, 24, 3, 3), ``person_betas`` (B, 10) and ``cams`` (B, M, 3) (the local
weak-perspective camera of every RoI) -- the three things :class:`hmrcli.engine.RegressionEngine`
takes from the network. B is dynamic; M and the crop size are those of the checkpoint. The
aggregation (``code``/``paper``) is baked into the graph.

The file is self-contained: its ``metadata_props`` hold the checkpoint's
:class:`RegressorConfig` as JSON (key :data:`CONFIG_KEY`: crop size, aspect, box_rescale,
num_rois, aggregation, body model, provenance), the format tag :data:`FORMAT_KEY` and the
export's parity figures. Reading a file needs onnxruntime only (a core dependency); exporting
needs the ``onnx`` extra (``onnx`` + ``onnxscript``, torch's ONNX exporter). ONNX files are
protocol buffers: loading one runs no Python code.
"""

from __future__ import annotations

import ctypes.util
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hmrcli._version import __version__
from hmrcli.files import atomic_write_bytes
from hmrcli.nn.checkpoints import CheckpointError, RegressorConfig

__all__ = ["FORMAT", "FORMAT_KEY", "CONFIG_KEY", "INPUT_NAMES", "OUTPUT_NAMES", "OnnxExportError",
           "OnnxRegressor", "OnnxRegressorOutput", "export_onnx", "is_onnx_file", "read_onnx_metadata",
           "execution_providers"]

#: the format tag stored under :data:`FORMAT_KEY` in the file's metadata_props
FORMAT = "hmrcli.regressor-onnx/1"
FORMAT_KEY = "hmrcli.format"
#: metadata key of the :class:`RegressorConfig` JSON
CONFIG_KEY = "hmrcli.regressor_config"
INPUT_NAMES = ("crops", "bbox_info")
OUTPUT_NAMES = ("person_rotmats", "person_betas", "cams")
#: default largest |onnxruntime - torch| accepted at export, per output (times max(1, |torch output|))
DEFAULT_TOLERANCE = 1e-3
#: the ONNX opset written (onnxruntime >= 1.14 runs it; the [onnx] extra's exporter writes it natively)
DEFAULT_OPSET = 18
EXPORT_INSTALL_HINT = "pip install 'hmrcli[onnx]' (onnx and onnxscript, torch's ONNX exporter)"
_ONNX_MAGIC_HINT = "make one with `hmrcli weights export-onnx CHECKPOINT OUT.onnx`"


class OnnxExportError(RuntimeError):
    """The export failed, or onnxruntime's outputs differ from torch's beyond the tolerance."""


def is_onnx_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an ONNX file (by its suffix, ``.onnx``)."""
    return Path(path).suffix.lower() == ".onnx"


# --------------------------------------------------------------------------- export


class _ExportWrapper(nn.Module):
    """The regressor with tensor outputs only: (person_rotmats, person_betas, cams)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, crops: torch.Tensor, bbox_info: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(crops, bbox_info)
        return out.person_rotmats, out.person_betas, out.cams


def _parity_inputs(cfg: RegressorConfig, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plausible network inputs: uniform RGB pixels, ImageNet-normalised, and bbox_info in the
    range real boxes give (centre within 0.5 focal lengths of the principal point, box size
    0.1..2 focal lengths: bbox_info[2] -2.3..29)."""
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.crop_hw
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)
    crops = (torch.rand(batch, cfg.num_rois, 3, h, w, generator=g) - mean) / std
    m = cfg.num_rois
    xy = (torch.rand(batch, m, 2, generator=g) - 0.5) * 2.8  # (c - principal) / f * 2.8, |.| <= 0.5 f
    size = 0.1 + 1.9 * torch.rand(batch, m, 1, generator=g)  # b / f
    info = torch.cat([xy, (size - 0.24) / 0.06], dim=-1)
    return crops.float(), info.float()


def _quiet_exporter():
    """Silence the exporter's chatter (missing torchvision ops, deprecation notes) during export."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
        levels = [lg.level for lg in loggers]
        try:
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)

    return cm()


def export_onnx(
    model: nn.Module,
    cfg: RegressorConfig,
    out: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    parity_batches: tuple[int, ...] = (1, 3),
    seed: int = 0,
) -> dict[str, Any]:
    """Export ``model`` (a loaded regressor with config ``cfg``) to ``out`` (ONNX).

    The graph has a dynamic batch axis; M and the crop size are ``cfg``'s. Before the file is
    written, the graph runs under onnxruntime on the CPU for every batch size in
    ``parity_batches`` against the torch model (same random inputs); per output, the largest
    absolute difference must be at most ``tolerance * max(1, largest |torch output|)`` (absolute
    for outputs of the usual size, |values| <= 1..10; relative for the huge outputs of untrained
    networks, where float32 rounding alone exceeds any absolute bound), else
    :class:`OnnxExportError` and nothing is written. The file is written atomically, with
    ``cfg`` (JSON) and the parity figures in its ``metadata_props``. Returns a report: path,
    opset, ``max_abs_diff`` and ``max_abs_torch`` per output, the batch sizes checked, size in
    bytes."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) needs it)
    except ImportError as e:
        raise OnnxExportError(f"exporting to ONNX needs the onnx and onnxscript packages ({e}): {EXPORT_INSTALL_HINT}") from None
    import onnxruntime as ort

    if torch.__version__ < "2.6":
        raise OnnxExportError(f"exporting to ONNX needs torch >= 2.6 (its dynamo exporter); this is torch {torch.__version__}")
    if not parity_batches:
        raise ValueError("parity_batches must name at least one batch size")
    out = Path(out)
    model = model.to("cpu").eval()
    wrapper = _ExportWrapper(model).eval()
    example = _parity_inputs(cfg, 2, seed)  # B = 2: a batch of 1 would be specialised
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad(), _quiet_exporter():
            prog = torch.onnx.export(
                wrapper, example, None, dynamo=True, opset_version=int(opset), input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES), dynamic_shapes=({0: batch}, {0: batch}), optimize=True,
                verbose=False, external_data=False,
            )
            proto = prog.model_proto
    except Exception as e:  # the exporter raises many kinds (torch.export, onnxscript translation)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise OnnxExportError(f"torch.onnx.export failed for this {cfg.arch}/{cfg.backbone} regressor "
                              f"(opset {opset}): {type(e).__name__}: {first}") from e

    # the parity check: the exact bytes that will be written, on the CPU
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OnnxExportError(f"onnxruntime {ort.__version__} cannot load the exported graph: "
                              f"{type(e).__name__}: {e}") from e
    diffs = dict.fromkeys(OUTPUT_NAMES, 0.0)
    scale = dict.fromkeys(OUTPUT_NAMES, 0.0)
    for k, b in enumerate(parity_batches):
        crops, info = _parity_inputs(cfg, int(b), seed + 1 + k)
        with torch.no_grad():
            ref = wrapper(crops, info)
        got = sess.run(list(OUTPUT_NAMES), {"crops": crops.numpy(), "bbox_info": info.numpy()})
        for name, r, g in zip(OUTPUT_NAMES, ref, got):
            if tuple(g.shape) != tuple(r.shape):
                raise OnnxExportError(f"parity check, batch {b}: onnxruntime's {name} has shape {tuple(g.shape)}, "
                                      f"torch's {tuple(r.shape)}")
            d = float(np.max(np.abs(g.astype(np.float64) - r.double().numpy()))) if g.size else 0.0
            if not np.isfinite(d):
                raise OnnxExportError(f"parity check, batch {b}: {name} is not finite under onnxruntime or torch")
            diffs[name] = max(diffs[name], d)
            scale[name] = max(scale[name], float(r.abs().max()) if r.numel() else 0.0)
    del sess
    bad = [n for n in OUTPUT_NAMES if diffs[n] > tolerance * max(1.0, scale[n])]
    if bad:
        raise OnnxExportError(
            "parity check failed: onnxruntime and torch differ by up to "
            + ", ".join(f"{n} {diffs[n]:.3g} (|torch| <= {scale[n]:.3g})" for n in OUTPUT_NAMES)
            + f" (max abs diff); allowed: {tolerance:g} x max(1, |torch|); nothing written")

    meta = {
        FORMAT_KEY: FORMAT,
        CONFIG_KEY: json.dumps(cfg.to_json(), sort_keys=True),
        "hmrcli.version": __version__,
        "hmrcli.inputs": "crops (B,M,3,H,W) float32 ImageNet-normalised RGB; bbox_info (B,M,3) float32",
        "hmrcli.outputs": "person_rotmats (B,24,3,3); person_betas (B,10); cams (B,M,3) local (s,tx,ty)",
        "hmrcli.parity": json.dumps({"max_abs_diff": diffs, "max_abs_torch": scale,
                                     "batches": [int(b) for b in parity_batches],
                                     "onnxruntime": ort.__version__, "torch": torch.__version__,
                                     "tolerance": tolerance}, sort_keys=True),
    }
    onnx.helper.set_model_props(proto, meta)
    proto.producer_name = "hmrcli"
    proto.producer_version = __version__
    data = proto.SerializeToString()
    atomic_write_bytes(out, data)
    return {"written": str(out), "opset": int(opset), "max_abs_diff": diffs, "max_abs_torch": scale,
            "parity_batches": list(parity_batches),
            "tolerance": tolerance, "bytes": len(data), "arch": cfg.arch, "backbone": cfg.backbone,
            "num_rois": cfg.num_rois, "crop_hw": list(cfg.crop_hw), "aggregation": cfg.aggregation}


# --------------------------------------------------------------------------- runtime


@dataclass
class OnnxRegressorOutput:
    """What :class:`OnnxRegressor` returns (the fields the engine reads of a
    :class:`hmrcli.nn.multiroi.RegressorOutput`): person_rotmats (B, 24, 3, 3), person_betas
    (B, 10), cams (B, M, 3); torch tensors on the regressor's device."""

    person_rotmats: torch.Tensor
    person_betas: torch.Tensor
    cams: torch.Tensor

    @property
    def person_cam(self) -> torch.Tensor:
        return self.cams[:, 0]


def _tensorrt_loadable() -> bool:
    """onnxruntime lists TensorRT whenever it was built with it; the libraries may still be absent."""
    return ctypes.util.find_library("nvinfer") is not None


def execution_providers(device: str | torch.device) -> list[Any]:
    """onnxruntime execution providers for ``device``: on ``cuda[:N]``, TensorRT (when
    onnxruntime offers it and libnvinfer is found) and CUDA when offered, then the CPU; on the
    CPU, the CPU."""
    import onnxruntime as ort

    dev = torch.device(device)
    if dev.type == "cpu":
        return ["CPUExecutionProvider"]
    if dev.type != "cuda":
        raise ValueError(f"the ONNX runtime runs on cpu or cuda[:N], not {dev}")
    idx = dev.index or 0
    have = ort.get_available_providers()
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in have and _tensorrt_loadable():
        providers.append(("TensorrtExecutionProvider", {"device_id": idx}))
    if "CUDAExecutionProvider" in have:
        providers.append(("CUDAExecutionProvider", {"device_id": idx}))
    if not providers:
        warnings.warn(f"device {dev} asked for, but this onnxruntime ({ort.__version__}) has no CUDA execution "
                      "provider (pip install onnxruntime-gpu): the ONNX regressor runs on the CPU", RuntimeWarning,
                      stacklevel=3)
    providers.append("CPUExecutionProvider")
    return providers


def _session(path: Path, providers: list[Any]):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path}: not a readable ONNX file for onnxruntime {ort.__version__} "
                              f"({type(e).__name__}: {msg}); {_ONNX_MAGIC_HINT}") from None


def read_onnx_metadata(sess, path: Path) -> tuple[RegressorConfig, dict[str, str]]:
    """The :class:`RegressorConfig` stored in an ONNX file by :func:`export_onnx` (and all its
    metadata), checked against the graph's inputs and outputs."""
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    if meta.get(FORMAT_KEY) != FORMAT or CONFIG_KEY not in meta:
        raise CheckpointError(f"{path}: an ONNX file without hmrcli's regressor metadata ({FORMAT_KEY}="
                              f"{meta.get(FORMAT_KEY)!r}, expected {FORMAT!r}); {_ONNX_MAGIC_HINT}")
    where = f"{path} (ONNX metadata {CONFIG_KEY})"
    try:
        d = json.loads(meta[CONFIG_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}: not valid JSON ({e})") from None
    cfg = RegressorConfig.from_json(d, where)
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = {o.name for o in sess.get_outputs()}
    want = {"crops": [cfg.num_rois, 3, *cfg.crop_hw], "bbox_info": [cfg.num_rois, 3]}
    for name, tail in want.items():
        shape = list(inputs[name].shape)[1:] if name in inputs else None
        if shape != tail:
            raise CheckpointError(f"{path}: the graph's input {name} is {shape and list(inputs[name].shape)}, "
                                  f"but its config says (B, {', '.join(map(str, tail))}); {_ONNX_MAGIC_HINT}")
    missing = [n for n in OUTPUT_NAMES if n not in outputs]
    if missing:
        raise CheckpointError(f"{path}: the graph lacks the outputs {', '.join(missing)}; {_ONNX_MAGIC_HINT}")
    return cfg, meta


class OnnxRegressor:
    """A regressor exported by :func:`export_onnx`, run by onnxruntime, with the interface
    :class:`hmrcli.engine.RegressionEngine` uses of the torch network: ``config`` (its
    :class:`RegressorConfig`; ``provenance["source_file"]`` is the ONNX file's name,
    ``provenance["runtime"]`` ``"onnx"``), ``to(device)`` and ``eval()`` (both return the
    regressor) and ``model(crops (B,M,3,H,W), bbox_info (B,M,3))`` -> :class:`OnnxRegressorOutput`.

    The graph is fp32: autocast (``--precision bf16/fp16``) does not reach it. On ``cuda``
    devices it runs with onnxruntime's TensorRT/CUDA providers when offered
    (:func:`execution_providers`), else on the CPU; inputs go through host memory."""

    runtime = "onnx"

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu",
                 providers: list[Any] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such ONNX file")
        self._fixed_providers = providers
        self.device = torch.device(device)
        self._spec = providers or execution_providers(self.device)
        self._sess = _session(self.path, self._spec)
        cfg, meta = read_onnx_metadata(self._sess, self.path)
        stored = dict(cfg.provenance)
        cfg.provenance = {**stored, "runtime": "onnx", "source_file": self.path.name,
                          "exported_from": stored.get("source_file", "")}
        self.config = cfg
        self.metadata = meta
        self.num_rois = cfg.num_rois
        self.aggregation = cfg.aggregation

    @property
    def providers(self) -> list[str]:
        """The execution providers onnxruntime actually uses, preferred first."""
        return list(self._sess.get_providers())

    def to(self, device: str | torch.device | None = None, *args: Any, **kwargs: Any) -> OnnxRegressor:
        """Run on ``device`` from now on (rebuilding the session when the providers change). Like
        ``nn.Module.to``, also takes ``device=``; a dtype or ``memory_format`` changes nothing
        (the graph is fp32, and its inputs are copied to host memory)."""
        device = kwargs.pop("device", device)
        if device is None or isinstance(device, torch.dtype):
            return self
        dev = torch.device(device)
        if dev != self.device and self._fixed_providers is None:
            spec = execution_providers(dev)
            if spec != self._spec:
                self._sess = _session(self.path, spec)
                self._spec = spec
        self.device = dev
        return self

    def eval(self) -> OnnxRegressor:
        return self

    def train(self, mode: bool = True) -> OnnxRegressor:
        if mode:
            raise ValueError("an ONNX regressor runs inference only")
        return self

    def __call__(self, crops: torch.Tensor, bbox_info: torch.Tensor, return_proj: bool = False) -> OnnxRegressorOutput:
        if return_proj:
            raise ValueError("an ONNX regressor has no contrastive projection head")
        m, (h, w) = self.config.num_rois, self.config.crop_hw
        if crops.dim() != 5 or tuple(crops.shape[1:]) != (m, 3, h, w) or tuple(bbox_info.shape) != (crops.shape[0], m, 3):
            raise ValueError(f"expected crops (B,{m},3,{h},{w}) and bbox_info (B,{m},3); got {tuple(crops.shape)} "
                             f"and {tuple(bbox_info.shape)}")
        feed = {"crops": np.ascontiguousarray(crops.detach().to("cpu", torch.float32).numpy()),
                "bbox_info": np.ascontiguousarray(bbox_info.detach().to("cpu", torch.float32).numpy())}
        rot, betas, cams = self._sess.run(list(OUTPUT_NAMES), feed)
        dev = self.device
        return OnnxRegressorOutput(person_rotmats=torch.from_numpy(rot).to(dev),
                                   person_betas=torch.from_numpy(betas).to(dev),
                                   cams=torch.from_numpy(cams).to(dev))

    forward = __call__

    def __repr__(self) -> str:
        c = self.config
        return (f"OnnxRegressor({self.path.name!r}, {c.arch}/{c.backbone}, M={c.num_rois}, crop {c.crop_hw[0]}x"
                f"{c.crop_hw[1]}, {c.aggregation}, providers={self.providers})")
