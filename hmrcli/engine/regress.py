"""The regression engine: image + person boxes -> body meshes and full-image cameras.

Per person: the detector box becomes the crop box (CLIFF's rule for the checkpoint's crop
aspect), the M RoIs of the fixed layout are cropped, ``bbox_info`` is computed with the
image's focal length, the network regresses pose/shape/local camera per RoI, the person's
estimate follows the checkpoint's aggregation, and RoI 0's local camera gives the
full-image perspective camera (docs/method.md §4). Batched over persons.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hmrcli import geometry as G
from hmrcli.body import BodyModel
from hmrcli.engine.base import PersonBox, PersonEstimate, Prepared, finished_images

__all__ = ["PersonBox", "PersonEstimate", "RegressionEngine", "RegressPrepared", "PRECISIONS"]  # (the records: hmrcli.engine.base)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(kw_only=True)
class RegressPrepared(Prepared):
    """One image prepared for the network: per person, the crop box (cx, cy, b) pixels, the M
    RoIs (M, 3), their crops (M, h, w, 3) uint8 RGB and bbox_info (M, 3)."""

    crops: np.ndarray
    crop_boxes: np.ndarray
    rois: np.ndarray
    bbox_info: np.ndarray


class RegressionEngine:
    """Runs a loaded regressor (``hmrcli.load_regressor``) and a body model on persons."""

    def __init__(
        self,
        model: torch.nn.Module,
        body: BodyModel,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        batch_size: int = 16,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("--precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
        self.model = model.to(self.device).eval()
        self.cfg = model.config
        self.body = body
        self.precision = precision
        self.batch_size = max(1, int(batch_size))
        # Published checkpoints regress SMPL betas; another body model's shape space is
        # unrelated, so those betas are not applied to it (mean shape instead).
        self.betas_applied = self.cfg.body_model == "smpl" and body.info.betas_are_smpl
        self.betas_space = self.cfg.body_model

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
                          "checkpoint": self.model.config.provenance.get("source_file", "")},
        }

    # -- preparation (numpy, CPU) ------------------------------------------------
    def prepare(self, image: np.ndarray, persons: list[PersonBox], focal: float | None = None,
                principal: tuple[float, float] | None = None) -> RegressPrepared:
        """Crops (N, M, h, w, 3) uint8, RoIs (N, M, 3), bbox_info (N, M, 3) for one RGB image.
        ``focal`` (pixels; None: sqrt(W^2 + H^2)) and ``principal`` (cu, cv) pixels (None: the
        image centre) enter bbox_info and the camera conversion."""
        h_img, w_img = image.shape[:2]
        f = float(focal) if focal else float(G.default_focal(w_img, h_img))
        c = np.array(principal if principal is not None else (w_img / 2.0, h_img / 2.0), dtype=np.float64)
        cfg = self.cfg
        xyxy = np.stack([np.asarray(p.xyxy, dtype=np.float64) for p in persons]) if persons else np.zeros((0, 4))
        crop_boxes = G.box_from_xyxy(xyxy, aspect=cfg.aspect, rescale=cfg.box_rescale)
        rois = G.make_rois(crop_boxes, cfg.num_rois)
        affines = G.crop_affine(rois, cfg.crop_hw)
        crops = np.zeros((len(persons), cfg.num_rois, *cfg.crop_hw, 3), dtype=np.uint8)
        for i in range(len(persons)):
            for m in range(cfg.num_rois):
                crops[i, m] = G.crop_image_np(image, affines[i, m], cfg.crop_hw)
        info = G.bbox_info(rois, (w_img, h_img), f, c)
        return RegressPrepared(image_wh=(w_img, h_img), focal=f, principal=(float(c[0]), float(c[1])),
                               problems=[""] * len(persons), crops=crops, crop_boxes=crop_boxes, rois=rois,
                               bbox_info=info)

    # -- network + body model ----------------------------------------------------
    @torch.no_grad()
    def _forward(self, crops: np.ndarray, info: np.ndarray) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(crops).to(self.device).permute(0, 1, 4, 2, 3).float()
        x = G.normalize_crops(x)
        bi = torch.from_numpy(np.asarray(info, dtype=np.float32)).to(self.device)
        dt = PRECISIONS[self.precision]
        ctx = torch.autocast(self.device.type, dtype=dt) if dt is not None else contextlib.nullcontext()
        with ctx:
            out = self.model(x, bi)
        return {
            "rotmats": out.person_rotmats.float(),
            "betas": out.person_betas.float(),
            "cams": out.cams.float(),
        }

    def run(self, prepared: list[tuple[RegressPrepared, list[PersonBox]]], *,
            stop: Callable[[], bool] | None = None,
            on_persons: Callable[[int], None] | None = None) -> list[list[PersonEstimate]]:
        """Estimate every person of several prepared images, batching persons across them
        (``stop``, ``on_persons``: :meth:`hmrcli.engine.base.Engine.run`)."""
        flat = [(i, j) for i, (p, persons) in enumerate(prepared) for j in range(len(persons))]
        results: list[list[PersonEstimate | None]] = [[None] * len(p[1]) for p in prepared]
        for s in range(0, len(flat), self.batch_size):
            if s and stop is not None and stop():
                return results[:finished_images(flat, s, len(prepared))]  # type: ignore[return-value]
            chunk = flat[s:s + self.batch_size]
            crops = np.stack([prepared[i][0].crops[j] for i, j in chunk])
            info = np.stack([prepared[i][0].bbox_info[j] for i, j in chunk])
            net = self._forward(crops, info)
            rois = np.stack([prepared[i][0].rois[j] for i, j in chunk])
            img_wh = np.array([prepared[i][0].image_wh for i, j in chunk], dtype=np.float64)
            focal = np.array([prepared[i][0].focal for i, j in chunk], dtype=np.float64)
            principal = np.array([prepared[i][0].principal for i, j in chunk], dtype=np.float64)
            cams = net["cams"].cpu().double().numpy()
            cam_t = G.local_to_full(cams[:, 0], rois[:, 0], img_wh, focal, principal=principal)
            betas = net["betas"]
            body_betas = betas if self.betas_applied else torch.zeros_like(betas)
            body_out = self.body(net["rotmats"].double(), body_betas.double())
            verts = body_out.vertices.cpu().numpy()
            joints = body_out.joints.cpu().numpy()
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
            if on_persons is not None:
                on_persons(len(chunk))
        return results  # type: ignore[return-value]
