"""The regression engine: image + person boxes -> body meshes and full-image cameras.

Per person: the detector box becomes the crop box (CLIFF's rule for the checkpoint's crop
aspect), the M RoIs of the fixed layout are cropped, ``bbox_info`` is computed with the
image's focal length, the network regresses pose/shape/local camera per RoI, the person's
estimate follows the checkpoint's aggregation, and RoI 0's local camera gives the
full-image perspective camera (docs/method.md §4). Batched over persons. Each batch's
estimates get their quality block (:func:`hmrcli.engine.quality.add_regress_quality`: the
RoIs' own poses and cameras compared).

Where the crops are cut (``crops``), one path per device, chosen by measurement:

* ``"torch"`` (default on CUDA): ``prepare`` keeps the image (a uint8 tensor, in pinned
  memory) and the RoIs' affines; ``run`` cuts every RoI of every person of a batch on the
  device in one ``grid_sample`` (:func:`hmrcli.geometry.crop_batch`), so the loader thread
  does no per-RoI work and only the images cross the bus.
* ``"cv2"`` (default on the CPU): ``prepare`` cuts each RoI with ``cv2.warpAffine``
  (:func:`hmrcli.geometry.crop_image_np`) on the loader thread. Measured on the CPU
  (:func:`hmrcli.bench.speed.measure_crops`: 2 shared cores, 1-16 persons x 5 RoIs of
  1920x1080 images, 256x192 crops): 1.6-4.1 ms per person for OpenCV (crops, upload and float
  conversion) against 13-46 ms for the torch path (the float canvas of the images and a
  trilinear ``grid_sample``), and the OpenCV crops are cut on the loader thread, in parallel
  with the network.

Both paths use the same :func:`hmrcli.geometry.crop_affine` matrices and pixel-centre
convention; their crops agree within 1 grey level (OpenCV rounds to uint8 and quantises
positions to 1/32 px), so the estimates agree to float noise of the network
(tests/test_engine_device_crops.py).

Network speed knobs (constructor): ``precision`` (``"auto"``: bf16 autocast on CUDA, fp32 on
the CPU), ``channels_last`` (default on, on every device: measured 10-25 % faster on the CPU
too), ``compile`` (``torch.compile`` of the
network, off by default) and ``backbone_chunk`` (how many crops the backbone sees at once;
default per device, :data:`DEFAULT_BACKBONE_CHUNK`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hmrcli import geometry as G
from hmrcli.body import BodyModel
from hmrcli.engine.base import PersonBox, PersonEstimate, Prepared, finished_images
from hmrcli.engine.quality import add_regress_quality

__all__ = ["PersonBox", "PersonEstimate", "RegressionEngine", "RegressPrepared",  # (the records: hmrcli.engine.base)
           "PRECISIONS", "CROP_PATHS", "DEFAULT_BACKBONE_CHUNK", "DEFAULT_CPU_BATCH_SIZE", "resolve_precision",
           "default_backbone_chunk", "batch_size_for_memory"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: where the crops are cut: "auto" (torch on CUDA, cv2 on the CPU), "cv2" or "torch"
CROP_PATHS = ("auto", "cv2", "torch")
#: crops per backbone call by device type (0: all B*M crops at once). CPU: measured with
#: ResNet-50 on 256x192 crops in fp32 (one thread, configurations interleaved, best of 3, ms
#: per crop): one at a time 191, chunks of 4 150, of 8 146, of 16 189, all 80 at once 246 (16
#: at once 172): past ~8 crops the activations outgrow the caches. With 8 (and channels_last),
#: M = 5 costs 4.0-5.1x M = 1 per person at batch 1, 4 and 16 (`hmrcli benchmark --speed
#: --device cpu`, 2 shared cores; 4.8-6.3x before) and the peak memory at batch 16, M = 5 fell
#: from 1.57 to 0.92 GiB. CUDA: all at once (a GPU wants big batches; benchmarks/gpu_check.sh
#: measures it).
DEFAULT_BACKBONE_CHUNK = {"cpu": 8, "cuda": 0}
#: ``batch_size="auto"`` on the CPU (the time per person no longer grows with the batch once
#: the backbone is chunked; 16 keeps the peak memory near 1 GB with M = 5)
DEFAULT_CPU_BATCH_SIZE = 16


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA, ``"fp32"`` elsewhere; ``fp32``/``bf16``/``fp16`` as
    given (``fp16`` only on CUDA). Raises ValueError for anything else."""
    dev = torch.device(device)
    if precision == "auto":
        return "bf16" if dev.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    return precision


def default_backbone_chunk(device: str | torch.device) -> int:
    """:data:`DEFAULT_BACKBONE_CHUNK` for the device's type (0: no chunking)."""
    return DEFAULT_BACKBONE_CHUNK.get(torch.device(device).type, 0)


def batch_size_for_memory(free_bytes: int, per_person_bytes: int, fraction: float = 0.6, cap: int = 256) -> int:
    """Persons per batch that fit in ``fraction`` of ``free_bytes`` at ``per_person_bytes``
    each, clamped to [1, cap]."""
    if per_person_bytes <= 0:
        return cap
    return int(max(1, min(cap, (fraction * free_bytes) // per_person_bytes)))


@dataclass(kw_only=True)
class RegressPrepared(Prepared):
    """One image prepared for the network: per person, the crop box (cx, cy, b) pixels, the M
    RoIs (M, 3), their image -> crop affines (M, 2, 3) and bbox_info (M, 3); and either the
    crops (M, h, w, 3) uint8 RGB (the cv2 path) or the image itself as a uint8 (H, W, 3)
    tensor (the torch path, pinned when the engine runs on CUDA), which ``run`` crops."""

    crop_boxes: np.ndarray
    rois: np.ndarray
    bbox_info: np.ndarray
    affines: np.ndarray
    crops: np.ndarray | None = None
    image: torch.Tensor | None = None


class RegressionEngine:
    """Runs a loaded regressor (``hmrcli.load_regressor``) and a body model on persons.

    Args:
        model: the regressor (``model(crops (B,M,3,H,W), bbox_info (B,M,3))`` with a ``config``).
        body: the body model.
        device: where the network runs.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on the CPU), ``"fp32"``, ``"bf16"``
            or ``"fp16"`` (CUDA only). ``self.precision`` is the resolved one.
        batch_size: persons per network call, or ``"auto"`` (:meth:`auto_batch_size`: from
            the free GPU memory on CUDA, :data:`DEFAULT_CPU_BATCH_SIZE` on the CPU).
        crops: ``"auto"`` (torch on CUDA, cv2 on the CPU), ``"cv2"`` or ``"torch"`` (module
            docstring).
        channels_last: NHWC memory format for the crops and the network's weights (None: on,
            on every device: tensor cores on CUDA want it, and on the CPU it was measured
            faster too).
        compile: ``torch.compile`` the network (first batches are slow while it compiles;
            every batch is padded to ``batch_size`` persons so that one compilation serves the
            whole run).
        backbone_chunk: crops per backbone call, 0 for all at once (None: per device,
            :data:`DEFAULT_BACKBONE_CHUNK`); results are the same.
        overlap: stage batch k+1's pixels while batch k runs (:meth:`stage`: on CUDA, copies
            from pinned memory on a side stream); results are the same either way.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        body: BodyModel,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        batch_size: int | str = 16,
        *,
        crops: str = "auto",
        channels_last: bool | None = None,
        compile: bool = False,
        backbone_chunk: int | None = None,
        overlap: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        if crops not in CROP_PATHS:
            raise ValueError(f"crops must be one of {', '.join(CROP_PATHS)}; got {crops!r}")
        self.crop_path = ("torch" if self.device.type == "cuda" else "cv2") if crops == "auto" else crops
        self.channels_last = True if channels_last is None else bool(channels_last)
        self.backbone_chunk = default_backbone_chunk(self.device) if backbone_chunk is None else int(backbone_chunk)
        if self.backbone_chunk < 0:
            raise ValueError(f"backbone_chunk must be >= 0 (0: no chunking); got {backbone_chunk}")
        # (the layout of the weights follows the engine's setting, also for a model shared by engines)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(self.device).eval().to(memory_format=fmt)
        self.cfg = model.config
        self.body = body
        self.compile = bool(compile)
        self.overlap = bool(overlap)
        #: the CUDA stream the next batch's pixels are copied on (:meth:`stage`); None off CUDA
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" and self.overlap else None
        # the chunk goes to models that take it (MultiRoIHMR, CLIFFRegressor), as an argument:
        # the model object may be shared by engines with other settings
        takes_chunk = "backbone_chunk" in inspect.signature(self.model.forward).parameters
        self._net_kwargs = {"backbone_chunk": self.backbone_chunk or None} if takes_chunk else {}
        self._net = torch.compile(self.model) if self.compile else self.model
        # Published checkpoints regress SMPL betas; another body model's shape space is
        # unrelated, so those betas are not applied to it (mean shape instead).
        self.betas_applied = self.cfg.body_model == "smpl" and body.info.betas_are_smpl
        self.betas_space = self.cfg.body_model
        if batch_size == "auto":
            self.batch_size = DEFAULT_CPU_BATCH_SIZE
            self.batch_size = self.auto_batch_size()
        elif isinstance(batch_size, str):
            raise ValueError(f"batch_size must be a positive integer or 'auto'; got {batch_size!r}")
        else:
            self.batch_size = max(1, int(batch_size))

    name = "regress"

    def describe(self) -> dict[str, Any]:
        """What the camera JSON records about this engine."""
        cfg = self.cfg
        return {
            "engine": "regress",
            "roi_convention": "box (cx, cy, b): centre and size in pixels, b = crop height for "
                              f"{cfg.aspect} crops {cfg.crop_hw[0]}x{cfg.crop_hw[1]} (HxW); cam_local (s, tx, ty) "
                              "weak-perspective in normalised crop coordinates; t = RoI 0's camera converted "
                              "(docs/method.md §4)",
            "aggregation": cfg.aggregation,
            "regressor": {"arch": cfg.arch, "backbone": cfg.backbone, "num_rois": cfg.num_rois,
                          "checkpoint": self.model.config.provenance.get("source_file", ""),
                          **({"view_azimuth_deg": v} if (v := getattr(self.model, "view_azimuth_deg", 0.0)) else {})},
        }

    def settings(self) -> dict[str, Any]:
        """The speed settings in effect (for logs and benchmarks; not part of the results)."""
        return {"device": str(self.device), "precision": self.precision, "crops": self.crop_path,
                "channels_last": self.channels_last, "compile": self.compile,
                "backbone_chunk": self.backbone_chunk, "batch_size": self.batch_size, "overlap": self.overlap}

    @property
    def image_device(self) -> torch.device | None:
        """Where :meth:`prepare` takes images already decoded (a uint8 (H, W, 3) tensor there is
        cropped without a copy): the engine's CUDA device on the torch crop path, else None
        (numpy images on the host)."""
        return self.device if self.crop_path == "torch" and self.device.type == "cuda" else None

    # -- preparation (per image, on the loader thread) ----------------------------
    def prepare(self, image: np.ndarray | torch.Tensor, persons: list[PersonBox], focal: float | None = None,
                principal: tuple[float, float] | None = None) -> RegressPrepared:
        """RoIs (N, M, 3), affines (N, M, 2, 3), bbox_info (N, M, 3) for one RGB image (uint8
        (H, W, 3), numpy or a tensor on any device), and
        the crops (N, M, h, w, 3) uint8 (cv2 path) or the image as a tensor (torch path).
        ``focal`` (pixels; None: sqrt(W^2 + H^2)) and ``principal`` (cu, cv) pixels (None: the
        image centre) enter bbox_info and the camera conversion."""
        h_img, w_img = (int(v) for v in image.shape[:2])
        f = float(focal) if focal else float(G.default_focal(w_img, h_img))
        c = np.array(principal if principal is not None else (w_img / 2.0, h_img / 2.0), dtype=np.float64)
        cfg = self.cfg
        xyxy = np.stack([np.asarray(p.xyxy, dtype=np.float64) for p in persons]) if persons else np.zeros((0, 4))
        crop_boxes = G.box_from_xyxy(xyxy, aspect=cfg.aspect, rescale=cfg.box_rescale)
        rois = G.make_rois(crop_boxes, cfg.num_rois)
        affines = G.crop_affine(rois, cfg.crop_hw)
        info = G.bbox_info(rois, (w_img, h_img), f, c)
        crops = tensor = None
        if self.crop_path == "cv2":
            if isinstance(image, torch.Tensor):
                image = image.cpu().numpy()
            crops = np.zeros((len(persons), cfg.num_rois, *cfg.crop_hw, 3), dtype=np.uint8)
            for i in range(len(persons)):
                for m in range(cfg.num_rois):
                    crops[i, m] = G.crop_image_np(image, affines[i, m], cfg.crop_hw)
        elif persons and isinstance(image, torch.Tensor) and image.device == self.device:
            tensor = image  # decoded on the device (hmrcli.sources.read_image_tensor): nothing to upload
        elif persons:
            tensor = image.cpu() if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
            if self.device.type == "cuda":
                tensor = tensor.pin_memory()  # a copy: the upload in run() is asynchronous
        return RegressPrepared(image_wh=(w_img, h_img), focal=f, principal=(float(c[0]), float(c[1])),
                               problems=[""] * len(persons), crop_boxes=crop_boxes, rois=rois, bbox_info=info,
                               affines=affines, crops=crops, image=tensor)

    # -- network -----------------------------------------------------------------
    def stage(self, prepared: list[tuple[RegressPrepared, list[PersonBox]]],
              chunk: list[tuple[int, int]]) -> dict[str, Any]:
        """Start moving one batch's pixels to the device: the crops (cv2 path, uint8, from
        pinned memory on CUDA) or the batch's images (torch path), each image once. On CUDA the
        copies are issued on a side stream (:attr:`copy_stream`) and return at once, so that
        :meth:`run` stages batch k+1 while the device still computes batch k; elsewhere they
        are plain tensors. :meth:`batch_crops` waits for them and cuts the crops."""
        cuda = self.device.type == "cuda" and self.overlap
        main = torch.cuda.current_stream(self.device) if cuda else None
        ctx = torch.cuda.stream(self.copy_stream) if cuda else contextlib.nullcontext()
        with ctx:
            if self.crop_path == "cv2":
                host = torch.from_numpy(np.stack([prepared[i][0].crops[j] for i, j in chunk]))
                if cuda:
                    host = host.pin_memory()
                crops = host.to(self.device, non_blocking=cuda)
                if cuda:
                    crops.record_stream(main)  # (used on the main stream: keep its memory until done there)
                return {"crops": crops, "cuda": cuda}
            order: dict[int, int] = {}  # the batch's images, each once
            for i, _ in chunk:
                order.setdefault(i, len(order))
            images = []
            for i in order:
                im = prepared[i][0].image
                if im.device != self.device:
                    im = im.to(self.device, non_blocking=cuda)  # (pinned in prepare on CUDA: asynchronous)
                    if cuda:
                        im.record_stream(main)
                images.append(im)
            return {"images": images, "index": [order[i] for i, _ in chunk], "cuda": cuda}

    def batch_crops(self, prepared: list[tuple[RegressPrepared, list[PersonBox]]],
                    chunk: list[tuple[int, int]], staged: dict[str, Any] | None = None) -> torch.Tensor:
        """The batch's crops (B, M, 3, h, w), float 0..255 on the device (``staged``: what
        :meth:`stage` started for this chunk; None: staged now)."""
        staged = staged if staged is not None else self.stage(prepared, chunk)
        if staged["cuda"]:
            torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)
        if "crops" in staged:
            return staged["crops"].permute(0, 1, 4, 2, 3).float()
        affines = np.stack([prepared[i][0].affines[j] for i, j in chunk])
        return G.crop_batch(staged["images"], staged["index"], affines, self.cfg.crop_hw, device=self.device)

    @torch.no_grad()
    def forward_network(self, crops: torch.Tensor, info: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network, with this engine's precision, memory format, backbone chunking and
        compilation, on crops (B, M, 3, h, w) float 0..255 and bbox_info (B, M, 3) on the
        device -> float32 ``rotmats`` (B, 24, 3, 3), ``betas`` (B, 10), ``cams`` (B, M, 3), and
        when the network gives them (not an ONNX graph) each RoI's own ``roi_rotmats`` (B, M, 24,
        3, 3) and ``roi_betas`` (B, M, 10)."""
        x = G.normalize_crops(crops)
        bi = info.to(device=self.device, dtype=torch.float32)
        b = x.shape[0]
        if self.compile and b < self.batch_size:  # one shape for the whole run: one compilation
            x = torch.cat([x, x.new_zeros((self.batch_size - b, *x.shape[1:]))])
            bi = torch.cat([bi, bi.new_zeros((self.batch_size - b, *bi.shape[1:]))])
        shape = x.shape  # (B, M, 3, h, w): the layout is that of the B*M crops the backbone sees
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.reshape(-1, *shape[2:]).contiguous(memory_format=fmt).reshape(shape)
        dt = PRECISIONS[self.precision]
        ctx = torch.autocast(self.device.type, dtype=dt) if dt is not None else contextlib.nullcontext()
        with ctx:
            out = self._net(x, bi, **self._net_kwargs)
        res = {
            "rotmats": out.person_rotmats[:b].float(),
            "betas": out.person_betas[:b].float(),
            "cams": out.cams[:b].float(),
        }
        if getattr(out, "rotmats", None) is not None:  # each RoI's own estimate (for the quality block)
            res["roi_rotmats"], res["roi_betas"] = out.rotmats[:b].float(), out.betas[:b].float()
        return res

    def auto_batch_size(self, image_pixels: float = 12e6, fraction: float = 0.6, cap: int = 256) -> int:
        """Persons per batch for ``batch_size="auto"``. CPU: :data:`DEFAULT_CPU_BATCH_SIZE`.
        CUDA: from the free memory (``torch.cuda.mem_get_info``) and the memory one more person
        takes, measured as the difference of the peak memory of this engine's network on 2 and
        1 random persons, plus, on the torch crop path, the crop canvas of one image of
        ``image_pixels`` per person (worst case: every person in its own image; float32 RGB
        plus the uint8 upload): ``batch_size_for_memory(free, per_person, fraction, cap)``."""
        if self.device.type != "cuda":
            return DEFAULT_CPU_BATCH_SIZE
        m = self.cfg.num_rois
        h, w = self.cfg.crop_hw
        saved = getattr(self, "batch_size", 1), self._net
        self.batch_size, self._net = 1, self.model  # (measured uncompiled: no compilation for two shapes)
        try:
            peaks = []
            for b in (1, 2):
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                base = torch.cuda.memory_allocated(self.device)
                crops = torch.rand(b, m, 3, h, w, device=self.device) * 255
                info = torch.zeros(b, m, 3, device=self.device)
                self.forward_network(crops, info)
                torch.cuda.synchronize(self.device)
                peaks.append(torch.cuda.max_memory_allocated(self.device) - base)
                del crops, info
        finally:
            self.batch_size, self._net = saved
        per_person = max(peaks[1] - peaks[0], 1)
        if self.crop_path == "torch":
            per_person += int(image_pixels * 3 * (4 + 1))
        free, _ = torch.cuda.mem_get_info(self.device)
        return batch_size_for_memory(free, per_person, fraction, cap)

    def run(self, prepared: list[tuple[RegressPrepared, list[PersonBox]]], *,
            stop: Callable[[], bool] | None = None,
            on_persons: Callable[[int], None] | None = None) -> list[list[PersonEstimate]]:
        """Estimate every person of several prepared images, batching persons across them
        (``stop``, ``on_persons``: :meth:`hmrcli.engine.base.Engine.run`)."""
        flat = [(i, j) for i, (p, persons) in enumerate(prepared) for j in range(len(persons))]
        results: list[list[PersonEstimate | None]] = [[None] * len(p[1]) for p in prepared]
        dev, f64 = self.device, torch.float64
        starts = list(range(0, len(flat), self.batch_size))
        staged = self.stage(prepared, flat[:self.batch_size]) if flat else None
        for k, s in enumerate(starts):
            if s and stop is not None and stop():
                return results[:finished_images(flat, s, len(prepared))]  # type: ignore[return-value]
            chunk = flat[s:s + self.batch_size]
            info = np.stack([prepared[i][0].bbox_info[j] for i, j in chunk])
            net = self.forward_network(self.batch_crops(prepared, chunk, staged), torch.from_numpy(info))
            rois = np.stack([prepared[i][0].rois[j] for i, j in chunk])
            img_wh = np.array([prepared[i][0].image_wh for i, j in chunk], dtype=np.float64)
            focal = np.array([prepared[i][0].focal for i, j in chunk], dtype=np.float64)
            principal = np.array([prepared[i][0].principal for i, j in chunk], dtype=np.float64)
            cams_t = net["cams"].double()
            # CLIFF's camera conversion on the device, in float64 (RoI 0's camera)
            cam_t = G.local_to_full(cams_t[:, 0], torch.from_numpy(rois[:, 0]).to(dev, f64),
                                    torch.from_numpy(img_wh).to(dev, f64), torch.from_numpy(focal).to(dev, f64),
                                    principal=torch.from_numpy(principal).to(dev, f64))
            betas = net["betas"]
            body_betas = betas if self.betas_applied else torch.zeros_like(betas)
            body_out = self.body(net["rotmats"].double(), body_betas.double())
            # the next batch's pixels start moving now, while the device works on this one (the
            # .cpu() calls below wait for it): on CUDA the copies overlap the network and body model
            nxt = starts[k + 1] if k + 1 < len(starts) else None
            staged = self.stage(prepared, flat[nxt:nxt + self.batch_size]) if nxt is not None and self.overlap else None
            verts = body_out.vertices.cpu().numpy()
            joints = body_out.joints.cpu().numpy()
            cams = cams_t.cpu().numpy()
            cam_t = cam_t.cpu().numpy()
            rot = net["rotmats"].cpu().double().numpy()
            betas_np = betas.cpu().double().numpy()
            for k, (i, j) in enumerate(chunk):
                p = prepared[i][0]
                w, h = (int(v) for v in p.image_wh)
                results[i][j] = PersonEstimate(
                    box=prepared[i][1][j], crop_box=p.crop_boxes[j], rois=rois[k], bbox_info=info[k],
                    cams_local=cams[k], rotmats=rot[k], betas=betas_np[k], betas_applied=self.betas_applied,
                    cam_t=cam_t[k], K=G.intrinsics(focal[k], w, h, principal[k]), focal=float(focal[k]), image_wh=(w, h),
                    vertices_model=verts[k], joints_model=joints[k], extra={"engine": "regress"},
                )
            add_regress_quality(self.body, [results[i][j] for i, j in chunk], net.get("roi_rotmats"),
                                net.get("roi_betas"), self.betas_applied)
            if on_persons is not None:
                on_persons(len(chunk))
        return results  # type: ignore[return-value]
