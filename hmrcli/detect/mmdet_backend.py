"""The production person detector: MMDetection 3.3 (``mmdet.apis``), person class only.

Install with the ``[mmdet]`` extra *and* mmcv 2.1.0 built with its compiled ops (``make``
does both; see the Makefile's ``$(VENV)/.mmcv`` target)::

    pip install "setuptools<81" wheel ninja psutil
    MMCV_WITH_OPS=1 MAX_JOBS=2 pip install --no-build-isolation mmcv==2.1.0
    pip install -e '.[mmdet]'

Default model: RTMDet-m trained on COCO (``rtmdet-m`` in ``models/registry.json``; its
config ships inside the mmdet wheel under ``mmdet/.mim/configs/``, its weights do not:
``hmrcli weights fetch rtmdet-m``, or put the file in the checkpoints folder by hand).

Conventions. hmrcli images are RGB; MMDetection's pipelines for numpy input expect BGR
(its ``data_preprocessor`` normalises with BGR means and does not swap channels for
RTMDet), so images are flipped to BGR here. MMDetection's boxes put the image's left edge at
``x = 0`` (pixel ``j`` covers ``[j, j + 1)``); hmrcli puts pixel centres at integers
(:mod:`hmrcli.detect.base`), so boxes are shifted by -0.5 px, then clipped to the image
(``[-0.5, W - 0.5] x [-0.5, H - 0.5]``: MMDetection clips to the padded network input, so a
box can reach into the padding), and boxes left with no area are dropped.

Batching. ``mmdet.apis.inference_detector`` runs a list of images one at a time; here the
same test pipeline (``get_test_pipeline_cfg`` with ``LoadImageFromNDArray``, exactly as
``inference_detector`` builds it) prepares ``batch_size`` images and one
``model.test_step`` call runs them together. The results match ``inference_detector``'s
(tests/test_detect_mmdet.py compares them).

Weights are read with ``torch.load(weights_only=True)`` (numpy arrays and scalars allowed):
no code from a checkpoint file ever runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from hmrcli import assets
from hmrcli.detect.base import Detection, DetectorUnavailable
from hmrcli.nn.checkpoints import CheckpointError
from hmrcli.weights.catalogue import known_checkpoints
from hmrcli.weights.readers import read_mmdet_checkpoint

__all__ = ["MMDetDetector", "DEFAULT_MODEL", "availability", "mmdet_configs_dir",
           "INSTALL_HINT"]

#: Registry name (``models/registry.json``, section ``detectors``) of the default model.
DEFAULT_MODEL = "rtmdet-m"

INSTALL_HINT = (
    "Install MMDetection with `make` (it builds mmcv's compiled ops), or by hand in this "
    "environment: pip install 'setuptools<81' wheel ninja psutil && "
    "MMCV_WITH_OPS=1 MAX_JOBS=2 pip install --no-build-isolation mmcv==2.1.0 && "
    "pip install -e '.[mmdet]'  (mmcv must be built after torch is installed)."
)


def _import_mmdet() -> Any:
    """Import mmdet and the mmcv ops it needs; DetectorUnavailable with the install recipe
    otherwise."""
    try:
        import mmcv  # noqa: F401  (optional dependency: mmcv and the [mmdet] extra, this whole block)
        import mmdet  # asserts compatible mmcv/mmengine versions
        import mmengine  # noqa: F401
        from mmcv.ops import batched_nms  # noqa: F401  (fails on mmcv without compiled ops)
        from mmdet import apis  # noqa: F401
    except ImportError as e:
        raise DetectorUnavailable(f"the mmdet detector needs MMDetection 3.3 with mmcv 2.1.0 ({e}). "
                                  + INSTALL_HINT) from e
    except AssertionError as e:  # mmdet's version check
        raise DetectorUnavailable(f"the installed MMDetection stack is incompatible ({e}). " + INSTALL_HINT) from e
    return mmdet


def availability(checkpoint: str | os.PathLike | None = None) -> str | None:
    """Why ``MMDetDetector(checkpoint=checkpoint)`` cannot run here, or None. Cheap: finds the
    packages, mmcv's compiled ops and the weights without importing any of them."""
    for mod in ("mmengine", "mmcv", "mmdet"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed. {INSTALL_HINT}"
    spec = importlib.util.find_spec("mmcv")
    folders = [Path(f) for f in (spec.submodule_search_locations or [])] if spec else []
    if not any(next(f.glob("_ext.*"), None) is not None for f in folders):
        return f"mmcv is installed without its compiled ops (mmcv._ext). {INSTALL_HINT}"
    try:
        _resolve_checkpoint(checkpoint)
    except DetectorUnavailable as e:
        return str(e)
    return None


def mmdet_configs_dir() -> Path | None:
    """``mmdet/.mim/configs`` inside the installed mmdet wheel (None when mmdet is absent)."""
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / ".mim" / "configs"


#: Warnings MMDetection 3.3 / mmengine raise on every run with recent torch, about their own
#: code (deprecated ``torch.cuda.amp.autocast``, ``torch.meshgrid`` without ``indexing``, the
#: COCO class names assumed while the weights are loaded by hmrcli): hidden; others pass.
_KNOWN_NOISE = (
    (FutureWarning, r"`torch\.cuda\.amp\.autocast"),
    (UserWarning, r"torch\.meshgrid: in an upcoming release"),
    (UserWarning, r"checkpoint is None, use COCO classes"),
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide :data:`_KNOWN_NOISE`, also from code that calls ``warnings.simplefilter`` itself
    (``init_detector`` does); other warnings are shown as usual."""
    with warnings.catch_warnings():
        show = warnings.showwarning

        def filtered(message, category, *args, **kwargs):  # type: ignore[no-untyped-def]
            if not any(issubclass(category, c) and re.search(pat, str(message)) for c, pat in _KNOWN_NOISE):
                show(message, category, *args, **kwargs)

        warnings.showwarning = filtered
        yield


def _resolve_config(config: str | os.PathLike | None, entry: dict[str, Any] | None) -> Path:
    cfg_dir = mmdet_configs_dir()
    if config is None:
        config = (entry or known_checkpoints("detectors")[DEFAULT_MODEL])["config"]
    elif str(config) in known_checkpoints("detectors"):
        config = known_checkpoints("detectors")[str(config)]["config"]
    p = Path(config).expanduser()
    if p.is_file():
        return p
    if cfg_dir is not None and (cfg_dir / p).is_file():
        return cfg_dir / p
    raise DetectorUnavailable(
        f"detector config {str(config)!r} is neither a file nor a config of the installed mmdet "
        f"(looked in {cfg_dir}/; e.g. 'rtmdet/rtmdet_tiny_8xb32-300e_coco.py')"
    )


def _resolve_checkpoint(checkpoint: str | os.PathLike | None) -> tuple[Path, dict[str, Any] | None, str]:
    """(file, registry entry or None, registry name or file stem)."""
    reg = known_checkpoints("detectors")
    name = DEFAULT_MODEL if checkpoint is None else str(checkpoint)
    p = Path(name).expanduser()
    if checkpoint is not None and p.is_file():
        entry_name = next((n for n, e in reg.items() if e["filename"] == p.name), None)
        return p, reg.get(entry_name) if entry_name else None, entry_name or p.stem
    if name in reg:
        entry = reg[name]
        cand = assets.checkpoints_dir() / entry["filename"]
        if cand.is_file():
            return cand, entry, name
        raise DetectorUnavailable(
            f"detector weights {name!r} ({entry['filename']}) are not in {assets.checkpoints_dir()}. "
            f"Run `hmrcli weights fetch {name}` (needs network), or download {entry['url']} by hand and put it "
            "there (or set HMRCLI_CHECKPOINT_DIR to the folder holding it)."
        )
    raise DetectorUnavailable(
        f"detector checkpoint {name!r}: no such file, and not a known detector (known: {', '.join(sorted(reg))})"
    )


def _check_ops_on(device: str) -> None:
    """mmcv's NMS runs on ``device`` (mmcv built without CUDA ops fails only here)."""
    from mmcv.ops import nms  # optional dependency (mmcv)

    try:
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]], device=device)
        nms(boxes, torch.tensor([0.9, 0.8], device=device), 0.5)
    except (RuntimeError, NotImplementedError) as e:
        raise DetectorUnavailable(
            f"mmcv's compiled ops do not run on {device!r} ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
            "rebuild mmcv with CUDA ops on a machine with the CUDA toolkit (FORCE_CUDA=1 in the environment; "
            "delete the cached wheel under ~/.cache/hmrcli/wheels first), or use device='cpu'"
        ) from e


class MMDetDetector:
    """Person boxes from an MMDetection detector (default RTMDet-m, COCO).

    ``config``: a config file, a path relative to mmdet's shipped configs
    (``rtmdet/rtmdet_tiny_8xb32-300e_coco.py``) or a registry name; default: the config of the
    registry entry of ``checkpoint`` (or of :data:`DEFAULT_MODEL`). ``checkpoint``: a file or a
    registry name (looked up in the checkpoints folder); default :data:`DEFAULT_MODEL`.
    ``allow_random_weights=True`` with ``checkpoint=None`` builds the model with seeded random
    weights instead (tests, benchmarks): its boxes are meaningless.
    """

    name = "mmdet"
    one_person_per_image = False

    def __init__(
        self,
        config: str | os.PathLike | None = None,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
        score_thr: float = 0.5,
        batch_size: int = 8,
        *,
        allow_random_weights: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= score_thr <= 1.0:
            raise ValueError(f"score_thr must be in [0, 1], got {score_thr}")
        _import_mmdet()
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise DetectorUnavailable(f"device {device!r} asked for, but this torch build has no usable CUDA "
                                      f"(torch {torch.__version__}); use device='cpu'")
        self.score_thr = float(score_thr)
        self.batch_size = int(batch_size)
        self.device = str(device)

        random_weights = checkpoint is None and allow_random_weights
        if random_weights:
            ckpt_path, entry, model_name = None, None, None
        else:
            ckpt_path, entry, model_name = _resolve_checkpoint(checkpoint)
        self.config_path = _resolve_config(config, entry)
        self.checkpoint_path = ckpt_path
        self.model_name = model_name or self.config_path.stem
        self.label = f"{self.name}:{self.model_name}"

        from mmdet.apis import init_detector  # optional dependency (the [mmdet] extra)

        with _quiet():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                # palette only matters for visualisation; naming one skips building the test dataset
                model = init_detector(str(self.config_path), checkpoint=None, palette="random", device="cpu")
        if ckpt_path is not None:
            self._load_weights(model, ckpt_path)
        model.to(self.device)
        model.eval()
        self.model = model
        if self.device != "cpu":
            _check_ops_on(self.device)

        classes = [str(c).lower() for c in (model.dataset_meta or {}).get("classes", ())]
        if "person" not in classes:
            raise DetectorUnavailable(f"{self.config_path.name}: the model's classes have no 'person' "
                                      f"({', '.join(classes[:8])}...); use a COCO detector")
        self.person_class = classes.index("person")
        self._pipeline = self._test_pipeline()

    @staticmethod
    def _load_weights(model: Any, path: Path) -> None:

        try:
            sd, meta = read_mmdet_checkpoint(path)
        except CheckpointError as e:
            raise DetectorUnavailable(str(e)) from e
        try:
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = "; ".join(lines[1:4]) + (" ..." if len(lines) > 4 else "")
            raise DetectorUnavailable(f"{path}: does not fit the detector config ({detail or lines[0]}). "
                                      "Pass the config it was trained with (--det-config).") from e
        if missing:
            raise DetectorUnavailable(
                f"{path}: does not fit the detector config ({len(missing)} missing weights, e.g. "
                f"{', '.join(missing[:4])}; {len(unexpected)} unexpected). Pass the config it was trained "
                "with (--det-config)."
            )
        dataset_meta = meta.get("dataset_meta")
        if isinstance(dataset_meta, dict) and dataset_meta.get("classes"):
            model.dataset_meta = {k.lower(): v for k, v in dataset_meta.items()}

    def _test_pipeline(self) -> Any:
        # exactly what mmdet.apis.inference_detector builds for numpy input
        # optional dependency (mmcv, the [mmdet] extra)
        from mmcv.transforms import Compose
        from mmdet.utils import get_test_pipeline_cfg

        cfg = get_test_pipeline_cfg(self.model.cfg.copy())
        cfg[0].type = "mmdet.LoadImageFromNDArray"
        return Compose(cfg)

    def raw_predict(self, bgr_images: list[np.ndarray]) -> list[Any]:
        """MMDetection's ``DetDataSample`` results for BGR images, in batches of
        ``batch_size`` (boxes in MMDetection's convention, all classes, no threshold)."""
        out: list[Any] = []
        for start in range(0, len(bgr_images), self.batch_size):
            chunk = bgr_images[start:start + self.batch_size]
            packed = [self._pipeline(dict(img=img, img_id=start + i)) for i, img in enumerate(chunk)]
            data = {"inputs": [d["inputs"] for d in packed], "data_samples": [d["data_samples"] for d in packed]}
            with torch.no_grad(), _quiet():
                out.extend(self.model.test_step(data))
        return out

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        images = list(images)
        for i, img in enumerate(images):
            if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"image {i}: expected an RGB uint8 array (H, W, 3), got "
                                 f"{getattr(img, 'dtype', type(img).__name__)} {getattr(img, 'shape', '')}")
        todo = [i for i, img in enumerate(images) if img.shape[0] > 0 and img.shape[1] > 0]
        bgr = [np.ascontiguousarray(images[i][..., ::-1]) for i in todo]
        results: list[list[Detection]] = [[] for _ in images]
        for i, res in zip(todo, self.raw_predict(bgr)):
            results[i] = self._to_detections(res, images[i].shape[0], images[i].shape[1])
        return results

    def _to_detections(self, res: Any, h: int, w: int) -> list[Detection]:
        inst = res.pred_instances
        labels = inst.labels.detach().cpu().numpy()
        scores = inst.scores.detach().cpu().numpy().astype(np.float64)
        boxes = inst.bboxes.detach().cpu().numpy().astype(np.float64).reshape(-1, 4)
        keep = (labels == self.person_class) & (scores >= self.score_thr)
        boxes, scores = boxes[keep] - 0.5, scores[keep]
        boxes[:, 0::2] = boxes[:, 0::2].clip(-0.5, w - 0.5)
        boxes[:, 1::2] = boxes[:, 1::2].clip(-0.5, h - 0.5)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores = boxes[ok], scores[ok]
        order = np.argsort(-scores, kind="stable")
        return [Detection(box_xyxy=boxes[j].copy(), score=float(scores[j]), detector=self.label) for j in order]
