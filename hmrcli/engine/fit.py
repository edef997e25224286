"""The fitting engine (``--engine fit``) and the refinement stages (``--refine fit|pc-hmr``).

Both follow the regression engine's two-call interface, so the batch pipeline drives them
the same way: ``prepare(image, persons, focal)`` does the per-image work while the image is
in memory (here: BlazePose landmarks on every RoI of every person), ``run(prepared_list)``
does the batched work (here: the SMPLify-style fit of all persons of several images at once)
and returns :class:`hmrcli.engine.regress.PersonEstimate` lists. A person whose landmarks
cannot be found is returned as ``None`` with the reason in the prepared item's ``problems``.

* :class:`FitEngine` -- landmarks -> closed-form initialisation -> fit. No network weights.
* :class:`RefinedEngine` -- wraps an engine (regression or fit) and refines its estimates:
  ``"fit"`` re-runs the fit starting from the estimate (pose, shape, camera), ``"pc-hmr"``
  calibrates the estimated mesh with the BlazePose world landmarks as the 3D pose stream
  (:func:`hmrcli.fit.pchmr.calibrate_mesh`; the mesh files then hold the calibrated surface
  while the saved parameters stay those of the estimate -- PC-HMR moves vertices, it has no
  parameters).

Every estimate gets its quality block (:mod:`hmrcli.engine.quality`): the fit engine's from
the per-RoI landmarks and the fit residuals; ``--refine fit`` recomputes it for the refined
fit (the base engine's score, flags and spreads kept under ``refined_from``); ``--refine
pc-hmr`` keeps the base engine's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from hmrcli import geometry as G
from hmrcli.body import BodyModel
from hmrcli.engine.base import PersonBox, PersonEstimate, Prepared, finished_images
from hmrcli.engine.quality import add_fit_quality
from hmrcli.fit.landmarks import Landmarker, PersonLandmarks, limb_polygons
from hmrcli.fit.optimize import (
    FitInit,
    FitOptions,
    FitTargets,
    KeypointBody,
    fit_bodies,
    meshes_one_by_one,
)
from hmrcli.fit.pchmr import calibrate_mesh, smpl24_from_blazepose33

__all__ = ["FitEngine", "RefinedEngine", "REFINERS", "landmarks_for_persons"]

REFINERS = ("fit", "pc-hmr")

ROI_CONVENTION_FIT = ("box (cx, cy, b): centre and size in pixels of the square RoIs BlazePose ran on; "
                      "cam_local (s, tx, ty): the fitted full camera expressed as each RoI's weak-perspective "
                      "camera (docs/method.md §4, inverse direction)")


def _one(landmarker: Landmarker, image: np.ndarray, k: int, p: PersonBox,
         mask: list[np.ndarray] | None = None) -> tuple[PersonLandmarks | None, str | None]:
    try:
        lm = landmarker(image, p.xyxy, mask=mask) if mask else landmarker(image, p.xyxy)
    except Exception as e:  # a broken crop must not stop the others
        return None, f"person {k}: landmark model failed ({type(e).__name__}: {e})"
    if lm is None:
        return None, f"person {k}: BlazePose found no body in its box {np.round(p.xyxy, 1).tolist()}"
    if int((lm.conf2d > 0).sum()) < 4:
        return None, f"person {k}: fewer than 4 visible landmarks"
    return lm, None


#: two persons' landmarks are one body when their common confident landmarks lie within this
#: fraction of the larger box size of each other (mean distance), over at least 6 landmarks
SAME_BODY_FRAC = 0.1
#: half-width of the limb polygons that erase the other person, in box sizes
MASK_HALF_WIDTH = 0.06


def _same_body(a: PersonLandmarks, b: PersonLandmarks) -> bool:
    both = (a.conf2d > 0) & (b.conf2d > 0)
    if both.sum() < 6:
        return False
    d = float(np.linalg.norm(a.kp2d[both] - b.kp2d[both], axis=1).mean())
    return d < SAME_BODY_FRAC * max(float(a.rois[0, 2]), float(b.rois[0, 2]))


def _box_fit(lm: PersonLandmarks, p: PersonBox) -> float:
    """How well the person box matches the landmarks: IoU of the box with the box around
    the confident landmarks."""
    pts = lm.kp2d[lm.conf2d > 0]
    return float(G.box_iou_xyxy(np.concatenate([pts.min(0), pts.max(0)]), np.asarray(p.xyxy, dtype=np.float64)))


def landmarks_for_persons(landmarker: Landmarker, image: np.ndarray, persons: list[PersonBox],
                          separate: bool = True) -> tuple[list[PersonLandmarks | None], list[str | None]]:
    """BlazePose landmarks of every person of one image, and per person the reason it has
    none (None when it has).

    ``separate``: where two persons' boxes overlap, BlazePose may find the same body in both
    (the nearer or the more visible one). When two persons' landmarks are one body
    (:data:`SAME_BODY_FRAC`), the body is given to the person whose box matches it best (IoU
    of the box with the landmarks' box) and BlazePose looks again in the other person's box
    with that body's limbs erased (:func:`hmrcli.fit.landmarks.limb_polygons`, half-width
    :data:`MASK_HALF_WIDTH` box sizes). The new landmarks replace the old ones when they are
    a different body (recorded as ``masked_person``); otherwise the old ones stay (two
    estimates of one body, which the tracker of a sequence drops)."""
    lms: list[PersonLandmarks | None] = []
    problems: list[str | None] = []
    for k, p in enumerate(persons):
        lm, why = _one(landmarker, image, k, p)
        lms.append(lm)
        problems.append(why)
    if not separate or len(persons) < 2:
        return lms, problems
    redone: set[int] = set()
    for i in range(len(persons)):
        for j in range(i + 1, len(persons)):
            a, b = lms[i], lms[j]
            if a is None or b is None or i in redone or j in redone or not _same_body(a, b):
                continue
            owner, other = (i, j) if _box_fit(a, persons[i]) >= _box_fit(b, persons[j]) else (j, i)
            own = lms[owner]
            mask = limb_polygons(own.kp2d, own.conf2d, MASK_HALF_WIDTH * float(own.rois[0, 2]))
            new, _ = _one(landmarker, image, other, persons[other], mask=mask)
            redone.add(other)
            if new is not None and not _same_body(new, own):
                new.masked_person = owner
                lms[other] = new
    return lms, problems


def _targets(items: list[tuple[PersonLandmarks, np.ndarray, float]]) -> FitTargets:
    lms = [i[0] for i in items]
    return FitTargets(
        kp2d=np.stack([lm.kp2d for lm in lms]), conf2d=np.stack([lm.conf2d for lm in lms]),
        K=np.stack([i[1] for i in items]), box_size=np.array([i[2] for i in items]),
        kp3d=np.stack([lm.kp3d for lm in lms]), conf3d=np.stack([lm.conf3d for lm in lms]))


class FitEngine:
    """Fits the body model to BlazePose landmarks (see :mod:`hmrcli.fit.optimize`).

    Args:
        body: the body model whose pose/shape are fitted (its own betas: betas are applied).
        device: where the optimisation runs (cpu / cuda).
        num_rois: BlazePose runs on this many RoIs of each person (1 = one crop; 5 = the
            Multi-RoI layout, fused).
        batch_size: persons optimised together.
        options: fitting weights and iteration counts.
        landmarker: an existing :class:`Landmarker` to share.
        landmark_model: BlazePose ``full`` or ``heavy`` (when no landmarker is given).
        mirror: BlazePose also on every RoI's crop flipped left-right, both views fused
            (:mod:`hmrcli.fit.landmarks`; when no landmarker is given).
    """

    name = "fit"

    def __init__(self, body: BodyModel, device: str | torch.device = "cpu", num_rois: int = 5, batch_size: int = 16,
                 options: FitOptions | None = None, landmarker: Landmarker | None = None,
                 landmark_model: str = "full", mirror: bool = True) -> None:
        self.body = body
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.options = options or FitOptions()
        self.landmarker = landmarker or Landmarker(num_rois=num_rois, landmark_model=landmark_model, mirror=mirror)
        self.kb = KeypointBody(body, device=self.device)
        self.betas_applied = True
        self.betas_space = body.info.name

    def close(self) -> None:
        self.landmarker.close()

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {"engine": "fit", "roi_convention": ROI_CONVENTION_FIT, "aggregation": None,
                "fit": {"landmarks": f"mediapipe BlazePose {getattr(self.landmarker, 'landmark_model', 'full')} "
                                     "(0.10.21), COCO-17 correspondence",
                        "num_rois": self.landmarker.num_rois, "mirror": bool(getattr(self.landmarker, "mirror", False)),
                        "overlapping_persons": "second look",  # landmarks_for_persons
                        "w2d": o.w2d, "w3d": o.w3d, "pose_prior": o.pose_prior,
                        "stages": ["camera"] + [f"body{k}" for k in range(len(o.body_stages))]}}

    def prepare(self, image: np.ndarray, persons: list[PersonBox], focal: float | None = None,
                principal: tuple[float, float] | None = None) -> Prepared:
        """BlazePose landmarks of every person. ``focal`` pixels (None: sqrt(W^2 + H^2)),
        ``principal`` (cu, cv) pixels (None: the image centre)."""
        h, w = image.shape[:2]
        f = float(focal) if focal else float(G.default_focal(w, h))
        c = (float(principal[0]), float(principal[1])) if principal is not None else (w / 2.0, h / 2.0)
        lms, problems = landmarks_for_persons(self.landmarker, image, persons)
        return Prepared(image_wh=(w, h), focal=f, principal=c, problems=problems, landmarks=lms)

    def run(self, prepared: list[tuple[Prepared, list[PersonBox]]], *, stop: Callable[[], bool] | None = None,
            on_persons: Callable[[int], None] | None = None) -> list[list[PersonEstimate | None]]:
        """Fit every person with landmarks, in batches of ``batch_size`` (``stop``,
        ``on_persons``: :meth:`hmrcli.engine.base.Engine.run`)."""
        results: list[list[PersonEstimate | None]] = [[None] * len(p[1]) for p in prepared]
        flat = [(i, j) for i, (p, persons) in enumerate(prepared) for j in range(len(persons))
                if p.landmarks[j] is not None]
        for s in range(0, len(flat), self.batch_size):
            if s and stop is not None and stop():
                return results[:finished_images(flat, s, len(prepared))]
            chunk = flat[s:s + self.batch_size]
            items = []
            for i, j in chunk:
                p = prepared[i][0]
                lm = p.landmarks[j]
                items.append((lm, G.intrinsics(p.focal, *p.image_wh, np.asarray(p.principal)), float(lm.rois[0, 2])))
            fit = fit_bodies(self.kb, _targets(items), options=self.options, device=self.device)
            metas = [{"lm": prepared[i][0].landmarks[j], "image_wh": prepared[i][0].image_wh,
                      "focal": prepared[i][0].focal, "principal": prepared[i][0].principal,
                      "box": prepared[i][1][j]} for i, j in chunk]
            ests = _estimates(self.body, metas, fit, "fit")
            add_fit_quality(self.body, ests, [m["lm"] for m in metas])
            for (i, j), est in zip(chunk, ests):
                results[i][j] = est
            if on_persons is not None:
                on_persons(len(chunk))
        return results


def _estimates(body: BodyModel, metas: list[dict[str, Any]], fit, how: str,
               base: list[PersonEstimate] | None = None) -> list[PersonEstimate]:
    """PersonEstimates from a fit. metas[k]: {"lm": PersonLandmarks, "image_wh", "focal",
    "principal", "box": PersonBox}; ``base``: the estimates a refinement started from."""
    verts, joints = meshes_one_by_one(body, fit.rotmats, fit.betas)
    ests = []
    for k, m in enumerate(metas):
        lm: PersonLandmarks = m["lm"]
        w, h = m["image_wh"]
        f = float(m["focal"])
        wh = np.array([w, h], dtype=np.float64)
        c = np.asarray(m.get("principal", (w / 2.0, h / 2.0)), dtype=np.float64)
        cam_t = fit.transl[k]
        extra: dict[str, Any] = {
            how: {"reproj_px": round(float(fit.reproj_px[k]), 3), "reproj_box": round(float(fit.reproj_box[k]), 5),
                  "rois_used": int(lm.rois_ok.sum()), "views_used": lm.views_used, "views": lm.num_views,
                  "stages": fit.stages},
            "landmarks": lm.to_json()}
        if base is not None:
            prev = base[k]
            extra = {**prev.extra, **extra, "refined_from": prev.extra.get("engine", "regress")}
            box, crop_box, rois, info = prev.box, prev.crop_box, prev.rois, prev.bbox_info
        else:
            box, rois = m["box"], lm.rois
            crop_box, info = rois[0].copy(), G.bbox_info(rois, wh, f, c)
            extra["engine"] = "fit"
        cams_local = G.full_to_local(np.broadcast_to(cam_t, (len(rois), 3)), rois, wh, f, principal=c)
        ests.append(PersonEstimate(
            box=box, crop_box=crop_box, rois=rois, bbox_info=info, cams_local=cams_local,
            rotmats=fit.rotmats[k], betas=fit.betas[k], betas_applied=True, cam_t=cam_t,
            K=G.intrinsics(f, w, h, c), focal=f, image_wh=(int(w), int(h)), vertices_model=verts[k],
            joints_model=joints[k], extra=extra))
    return ests


class RefinedEngine:
    """An engine followed by a refinement stage (``"fit"`` or ``"pc-hmr"``).

    For ``"fit"`` the body model must be the one the base engine's meshes use and its betas
    must be applied (a regressor's SMPL betas on the free model are not: the fit then starts
    from the mean shape and fits the free model's own betas).
    """

    def __init__(self, base, how: str, landmarker: Landmarker | None = None, options: FitOptions | None = None,
                 num_rois: int = 5, landmark_model: str = "full", mirror: bool = True) -> None:
        if how not in REFINERS:
            raise ValueError(f"unknown refinement {how!r}: use {', '.join(REFINERS)}")
        self.base = base
        self.how = how
        self.body: BodyModel = base.body
        self.batch_size = base.batch_size
        self.device = getattr(base, "device", torch.device("cpu"))
        self.options = options or FitOptions()
        shared = getattr(base, "landmarker", None)
        self.landmarker = landmarker or shared or Landmarker(num_rois=num_rois, landmark_model=landmark_model,
                                                             mirror=mirror)
        self._own_landmarker = landmarker is None and shared is None
        self.kb = KeypointBody(self.body, device=self.device) if how == "fit" else None
        self.betas_applied = True if how == "fit" else base.betas_applied
        self.betas_space = self.body.info.name if how == "fit" else base.betas_space
        self.name = f"{base.name}+{how}"

    def close(self) -> None:
        if hasattr(self.base, "close"):
            self.base.close()
        if self._own_landmarker:
            self.landmarker.close()

    def describe(self) -> dict[str, Any]:
        d = dict(self.base.describe())
        d["refine"] = {"method": self.how, "num_rois": self.landmarker.num_rois,
                       "landmarks": getattr(self.landmarker, "landmark_model", "full"),
                       "mirror": bool(getattr(self.landmarker, "mirror", False))}
        if self.how == "pc-hmr":
            d["refine"]["note"] = ("mesh calibrated by PC-HMR's per-bone transformation with the BlazePose world "
                                   "landmarks as the pose stream; params are the unrefined estimate's")
        return d

    def prepare(self, image: np.ndarray, persons: list[PersonBox], focal: float | None = None,
                principal: tuple[float, float] | None = None) -> Prepared:
        """The base engine's preparation, plus BlazePose landmarks when it has none."""
        p = self.base.prepare(image, persons, focal, principal)
        if p.landmarks is None:
            p.landmarks, p.problems = landmarks_for_persons(self.landmarker, image, persons)
        return p

    def run(self, prepared: list[tuple[Prepared, list[PersonBox]]], *, stop: Callable[[], bool] | None = None,
            on_persons: Callable[[int], None] | None = None) -> list[list[PersonEstimate | None]]:
        """The base engine, then the refinement of every person with landmarks, in batches
        (``stop``: between batches of either; ``on_persons`` counts refined persons)."""
        base_results = self.base.run(prepared, stop=stop)
        prepared = prepared[:len(base_results)]
        # persons without landmarks keep the unrefined estimate (noted in its extra)
        todo = []
        for i, ests in enumerate(base_results):
            for j, est in enumerate(ests):
                if est is None:
                    continue
                if prepared[i][0].landmarks[j] is None:
                    est.extra["refine_skipped"] = prepared[i][0].problems[j]
                else:
                    todo.append((i, j))
        for s in range(0, len(todo), self.batch_size):
            if s and stop is not None and stop():
                return base_results[:finished_images(todo, s, len(base_results))]
            chunk = todo[s:s + self.batch_size]
            base = [base_results[i][j] for i, j in chunk]
            if self.how == "fit":
                refined = self._refine_fit(chunk, prepared, base)
            else:
                refined = self._refine_pchmr(chunk, prepared, base)
            for (i, j), est in zip(chunk, refined):
                base_results[i][j] = est
            if on_persons is not None:
                on_persons(len(chunk))
        return base_results

    def _refine_fit(self, chunk, prepared, base: list[PersonEstimate]) -> list[PersonEstimate]:
        lms = [prepared[i][0].landmarks[j] for i, j in chunk]
        items = [(lm, est.K, float(lm.rois[0, 2])) for lm, est in zip(lms, base)]
        init = FitInit(rotmats=np.stack([e.rotmats for e in base]),
                       betas=np.stack([e.betas if e.betas_applied else np.zeros_like(e.betas) for e in base]),
                       transl=np.stack([e.cam_t for e in base]))
        fit = fit_bodies(self.kb, _targets(items), init=init, options=self.options, device=self.device)
        metas = [{"lm": lm, "image_wh": e.image_wh, "focal": e.focal, "principal": (float(e.K[0, 2]), float(e.K[1, 2])),
                  "box": e.box} for lm, e in zip(lms, base)]
        refined = _estimates(self.body, metas, fit, "refine_fit", base)
        add_fit_quality(self.body, refined, lms)
        for est, prev in zip(refined, base):  # the base engine's verdict stays visible
            if est.quality is not None and prev.quality is not None:
                est.quality["refined_from"] = {k: prev.quality.get(k) for k in (
                    "engine", "score", "flags", "joint_spread_mm", "camera_spread_pct") if k in prev.quality}
        return refined

    def _refine_pchmr(self, chunk, prepared, base: list[PersonEstimate]) -> list[PersonEstimate]:
        lms = [prepared[i][0].landmarks[j] for i, j in chunk]
        world = torch.from_numpy(np.stack([lm.blazepose3d for lm in lms]))
        vis = torch.from_numpy(np.stack([lm.blazepose_vis for lm in lms]))
        target, conf = smpl24_from_blazepose33(world, vis)
        verts = torch.from_numpy(np.stack([e.vertices_model for e in base]))
        joints = torch.from_numpy(np.stack([e.joints_model for e in base]))
        res = calibrate_mesh(self.body, verts, joints, target.to(verts.dtype), conf.to(verts.dtype), align="pelvis",
                             bridge_missing=True, min_conf=0.3)
        out = []
        for k, est in enumerate(base):
            extra = dict(est.extra)
            extra["pc-hmr"] = {"bones_calibrated": int(res.used_bones[k].sum()), "stream": "BlazePose world landmarks",
                               "params": "unrefined (PC-HMR calibrates vertices only)"}
            extra["landmarks"] = lms[k].to_json()
            est.vertices_model = res.vertices[k].numpy()
            est.joints_model = res.joints[k].numpy()
            est.extra = extra
            out.append(est)
        return out
