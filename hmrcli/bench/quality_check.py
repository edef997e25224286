"""Is the quality score worth something? Synthetic renders with known truth, ranked by score.

:func:`make_scenes` draws random plausible bodies of the free body model
(:func:`hmrcli.bench.fit_synthetic.synthetic_people`: poses within the joint limits, betas ~
N(0, 1), any heading, 4-10 m), renders each alone with hmrcli's renderer (a random light
body colour, headlight shading) over a procedural background (gradients and colour noise) in
a 1280x720 image (f = image diagonal, centred principal point), and corrupts a random
share of them, a quarter each:

* ``clean``: the whole body inside the image (moved in when it is not);
* ``occluded``: 1-3 random rectangles (30-70 % of the box wide, 15-45 % high; flat colour
  with noise, or a patch of another background) pasted over the person's box;
* ``truncated``: the body moved so that an image border (left, right or bottom 30 % each,
  top 10 %) cuts 15-55 % of its box off;
* ``occluded+truncated``: both.

The person box handed to the engine is the projected mesh's bounding box clipped to the
image (what a detector that sees the visible part gives); there is no detector score.
:func:`evaluate` runs an engine on the scenes and measures each person's PA-MPJPE over the
24 skeleton joints (similarity Procrustes, :func:`hmrcli.bench.metrics.pa_mpjpe`, mm)
against the truth; :func:`ranking` says how well the quality score ranks the persons by
error: Spearman's rank correlation between ``1 - score`` and the error (the issue's "rank
correlation", positive = useful), and the mean error of the best 50 % / 80 % of persons by
score against all of them. ``benchmarks/quality_check.py`` is the command.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from hmrcli import geometry as G
from hmrcli.bench.fit_synthetic import synthetic_people
from hmrcli.bench.metrics import pa_mpjpe
from hmrcli.bench.synthetic import textured_background
from hmrcli.body import BodyModel
from hmrcli.engine.base import PersonBox
from hmrcli.render import render

__all__ = ["CORRUPTIONS", "QualityScene", "make_scenes", "evaluate", "ranking", "measure_correlations"]

CORRUPTIONS = ("clean", "occluded", "truncated", "occluded+truncated")


@dataclass
class QualityScene:
    """One rendered person with its truth. image (H, W, 3) uint8 RGB; box (4,) xyxy pixels
    (the projected mesh's box clipped to the image); K (3, 3); joints (24, 3) metres, the
    true skeleton joints (model frame); corruption (of :data:`CORRUPTIONS`); side: the cut
    border (truncated scenes); cut: fraction of the box outside the image; occluded: fraction
    of the person's visible pixels covered by occluders."""

    image: np.ndarray
    box: np.ndarray
    K: np.ndarray
    joints: np.ndarray
    corruption: str
    side: str | None = None
    cut: float = 0.0
    occluded: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _box_of(v_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    uv = G.project(v_cam, K)
    return np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])


def _shift(transl: np.ndarray, vertices: np.ndarray, K: np.ndarray, du: float, dv: float) -> np.ndarray:
    """The translation that moves the body's projection by about (du, dv) pixels (a shift
    parallel to the image plane at the body's depth; refined once for perspective)."""
    t = np.array(transl, dtype=np.float64)
    target = _box_of(vertices + t, K)[:2] + (du, dv)
    for _ in range(3):
        z = float((vertices + t)[:, 2].mean())
        now = _box_of(vertices + t, K)[:2]
        t[:2] += (target - now) * z / np.array([K[0, 0], K[1, 1]])
    return t


def make_scenes(body: BodyModel, n: int, seed: int = 0, image_wh: tuple[int, int] = (1280, 720),
                distance: tuple[float, float] = (4.0, 10.0)) -> list[QualityScene]:
    """n scenes as described in the module docstring (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    w, h = image_wh
    people = synthetic_people(body, n, rng, image_wh=image_wh, distance=distance, noise2d=0.0, noise3d=0.0,
                              spread=0.4)
    K = people.K
    scenes = []
    for i in range(n):
        kind = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
        v = people.vertices[i]
        t = people.transl[i]
        box = _box_of(v + t, K)
        bw, bh = box[2] - box[0], box[3] - box[1]
        # inside the image first (a margin of 3 % of the image), unless the body is too large
        m = 0.03 * np.array([w, h])
        du = np.clip(0.0, m[0] - box[0], (w - 1 - m[0]) - box[2]) if bw < w - 2 * m[0] else (w - 1) / 2 - (box[0] + box[2]) / 2
        dv = np.clip(0.0, m[1] - box[1], (h - 1 - m[1]) - box[3]) if bh < h - 2 * m[1] else (h - 1) / 2 - (box[1] + box[3]) / 2
        t = _shift(t, v, K, float(du), float(dv))
        side, cut = None, 0.0
        if "truncated" in kind:
            side = ("left", "right", "bottom", "top")[int(rng.choice(4, p=[0.3, 0.3, 0.3, 0.1]))]
            cut = float(rng.uniform(0.15, 0.55))
            box = _box_of(v + t, K)
            bw, bh = box[2] - box[0], box[3] - box[1]
            if side == "left":
                t = _shift(t, v, K, -0.5 - box[0] - cut * bw, 0.0)
            elif side == "right":
                t = _shift(t, v, K, (w - 0.5) - box[2] + cut * bw, 0.0)
            elif side == "top":
                t = _shift(t, v, K, 0.0, -0.5 - box[1] - cut * bh)
            else:
                t = _shift(t, v, K, 0.0, (h - 0.5) - box[3] + cut * bh)
        bg = textured_background(rng, w, h)
        colour = tuple(float(c) for c in rng.uniform(0.45, 0.95, 3))
        out = render([(v + t, body.faces)], K, (w, h), background=bg, colors=[colour], device="cpu")
        img = out.rgb.copy()
        full = _box_of(v + t, K)
        box = np.array([max(full[0], -0.5), max(full[1], -0.5), min(full[2], w - 0.5), min(full[3], h - 0.5)])
        person = out.mask == 0
        occluded = 0.0
        if "occluded" in kind:
            covered = np.zeros((h, w), dtype=bool)
            bw, bh = box[2] - box[0], box[3] - box[1]
            other = textured_background(rng, w, h) if rng.uniform() < 0.5 else None
            for _ in range(int(rng.integers(1, 4))):
                ow, oh = rng.uniform(0.3, 0.7) * bw, rng.uniform(0.15, 0.45) * bh
                cx, cy = rng.uniform(box[0], box[2]), rng.uniform(box[1], box[3])
                x0, x1 = int(np.clip(cx - ow / 2, 0, w)), int(np.clip(cx + ow / 2, 0, w))
                y0, y1 = int(np.clip(cy - oh / 2, 0, h)), int(np.clip(cy + oh / 2, 0, h))
                if x1 <= x0 or y1 <= y0:
                    continue
                if other is not None:
                    patch = other[y0:y1, x0:x1]
                else:
                    patch = np.clip(rng.uniform(0, 255, 3) + rng.normal(0, 12, (y1 - y0, x1 - x0, 3)), 0, 255)
                img[y0:y1, x0:x1] = patch.astype(np.uint8)
                covered[y0:y1, x0:x1] = True
            occluded = float((covered & person).sum() / max(1, person.sum()))
        scenes.append(QualityScene(image=img, box=box, K=K.copy(), joints=people.joints[i].copy(), corruption=kind,
                                   side=side, cut=cut, occluded=occluded))
    return scenes


def evaluate(engine: Any, scenes: list[QualityScene], progress: Callable[[int], None] | None = None,
             images_per_run: int = 8) -> list[dict[str, Any]]:
    """Run ``engine`` (an :class:`hmrcli.engine.base.Engine`) on every scene (K given to it)
    and return per scene: ``corruption``, ``side``, ``cut``, ``occluded``, and when a mesh
    came out ``pa_mpjpe_mm`` and the ``quality`` block (else ``found`` False)."""
    rows: list[dict[str, Any]] = []
    for s in range(0, len(scenes), images_per_run):
        chunk = scenes[s:s + images_per_run]
        prepared = []
        for sc in chunk:
            persons = [PersonBox(sc.box.copy(), None, "synthetic")]
            prepared.append((engine.prepare(sc.image, persons, float(sc.K[0, 0]), (float(sc.K[0, 2]), float(sc.K[1, 2]))),
                             persons))
        results = engine.run(prepared)
        for sc, ests in zip(chunk, results):
            est = ests[0] if ests else None
            row: dict[str, Any] = {"corruption": sc.corruption, "side": sc.side, "cut": round(sc.cut, 3),
                                   "occluded": round(sc.occluded, 3), "found": est is not None}
            if est is not None:
                row["pa_mpjpe_mm"] = float(pa_mpjpe(est.joints_model[None], sc.joints[None])[0])
                row["quality"] = est.quality
            rows.append(row)
        if progress is not None:
            progress(len(chunk))
    return rows


def ranking(score: np.ndarray, error: np.ndarray) -> dict[str, Any]:
    """How well ``score`` (higher = more trusted) ranks persons by ``error`` (lower = better):
    ``spearman`` = Spearman's rho between ``-score`` and ``error`` (positive: a lower score goes
    with a larger error), the mean error of all persons and of the best 50 % / 80 % by score,
    and how much lower those are than all (%)."""
    score = np.asarray(score, dtype=np.float64)
    error = np.asarray(error, dtype=np.float64)
    n = len(score)
    if n < 3:
        return {"n": n}
    order = np.argsort(-score, kind="stable")
    rho = spearmanr(-score, error).statistic
    out: dict[str, Any] = {"n": n, "spearman": round(float(rho), 3), "mean_error_all_mm": round(float(error.mean()), 1)}
    for frac in (0.5, 0.8):
        k = max(1, int(round(frac * n)))
        best = float(error[order[:k]].mean())
        out[f"mean_error_best_{int(frac * 100)}pct_mm"] = round(best, 1)
        out[f"reduction_best_{int(frac * 100)}pct"] = round(100.0 * (1.0 - best / float(error.mean())), 1)
    return out


#: measures of the quality block compared one by one with the error (their Spearman rho)
_MEASURES = {
    "fit": ("landmark_spread_box_pct", "landmark_spread_3d_mm", "residual_2d_px", "residual_3d_mm", "rois_dropped",
            "hidden_joints"),
    "regress": ("joint_spread_mm", "camera_spread_pct", "hidden_joints"),
}


def _measure(q: dict[str, Any], key: str) -> float | None:
    """A measure of a quality block, higher = worse (``rois_dropped`` = views - views_used,
    ``hidden_joints`` = 17 - visible_joints)."""
    if key == "rois_dropped":  # landmark sets (views) the fusion left out
        return q.get("views", q["rois"]) - q.get("views_used", q["rois_used"])
    if key == "hidden_joints":
        return 17 - q["visible_joints"]
    v = q.get(key)
    return v.get("overall") if isinstance(v, dict) else v


def measure_correlations(rows: list[dict[str, Any]], engine: str) -> dict[str, Any]:
    """Spearman's rho of each single measure of the quality block (higher = worse) with the
    error, over the persons where it has a value."""
    out = {}
    for key in _MEASURES.get(engine, ()):
        xs, es = [], []
        for r in rows:
            if not r["found"]:
                continue
            v = _measure(r["quality"], key)
            if v is not None and np.isfinite(v):
                xs.append(v)
                es.append(r["pa_mpjpe_mm"])
        out[key] = round(float(spearmanr(xs, es).statistic), 3) if len(xs) >= 3 else None
    return out


def summarise(rows: list[dict[str, Any]], engine: str, seconds: float) -> dict[str, Any]:
    """The engine's section of the report: persons found, the ranking by score (and, for
    reference, by the true error: the best possible), the single measures' correlations, per corruption mean error and mean score, flag counts."""
    found = [r for r in rows if r["found"]]
    score = np.array([r["quality"]["score"] for r in found])
    err = np.array([r["pa_mpjpe_mm"] for r in found])
    per = {}
    for c in CORRUPTIONS:
        sel = [r for r in found if r["corruption"] == c]
        if sel:
            per[c] = {"n": len(sel), "mean_error_mm": round(float(np.mean([r["pa_mpjpe_mm"] for r in sel])), 1),
                      "mean_score": round(float(np.mean([r["quality"]["score"] for r in sel])), 3)}
    flags: dict[str, int] = {}
    for r in found:
        for f in r["quality"]["flags"]:
            flags[f] = flags.get(f, 0) + 1
    truncated_ok = [r for r in found if r["side"] is not None]
    side_hit = sum(1 for r in truncated_ok if r["side"] in r["quality"]["truncated"])
    return {"persons": len(rows), "found": len(found), "score_ranking": ranking(score, err),
            "ranked_by_true_error": ranking(-err, err),  # the best any score could do on this set
            "single_measures_spearman": measure_correlations(rows, engine), "by_corruption": per, "flags": flags,
            "truncated_side_detected": f"{side_hit}/{len(truncated_ok)}",
            "seconds_per_person": round(seconds / max(1, len(rows)), 3)}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
