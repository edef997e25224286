"""A synthetic labelled dataset in the SPIN/CLIFF ``.npz`` format, rendered from the free body model.

**What it is for.**  It validates the training machinery and the geometry (crops, boxes,
cameras, losses, the loop, the ablation on a held-out synthetic split) with exact ground
truth.  It does **not** yield weights for real photos: the bodies are untextured, single-
colour, headlight-shaded meshes of the free body model over procedural backgrounds, and
their betas live in the free model's shape space, not SMPL's.

What :func:`write_synthetic_dataset` writes under ``root``:

* ``images/<i:06d>.jpg``: ``image_wh`` (default 640x480) RGB images with 1-3 people
  (several people per image: the contrastive loss's negatives);
* optionally ``masks/<i:06d>.png``: uint8 person index + 1 per pixel (0: background);
* ``<name>.npz``, one row per person, SPIN's keys: ``imgname`` (relative to ``root``),
  ``center`` (N, 2) px, ``scale`` (N,) (box size ``b = 200 scale``, square box
  ``max(w, h) * 1.2`` of the projected mesh clipped to the image), ``part`` (N, 24, 3)
  (x, y px, conf) and ``S`` (N, 24, 4) (camera frame, metres, conf) in SPIN's 24-joint order
  (mapping: :func:`hmrcli.train.data.spin24_from_body` -- COCO-17 keypoints for ankles,
  knees, hips, wrists, elbows, shoulders, nose, eyes, ears; SMPL joints for pelvis (MPII)
  <- pelvis, neck (LSP) <- neck, head (H36M) <- head; head top, thorax, spine and jaw have
  conf 0; ``part`` conf is also 0 for points outside the image), ``pose`` (N, 72)
  axis-angle with the global orientation in the camera frame, ``shape`` (N, 10) betas,
  ``has_smpl`` (N,); CLIFF's ``focal_l`` (N,) and ``global_t`` (N, 3); our extras
  ``cam_t`` (N, 3) (= ``global_t``: ``X_cam = body(pose, shape) + cam_t``),
  ``joints_smpl24`` (N, 24, 3) (body-model skeleton joints, camera frame), ``img_wh``
  (N, 2), ``betas_space`` = "free" (the betas are the free model's, not SMPL's), and with
  masks ``maskname``/``mask_index``;
* ``<name>.json``: the generator settings, counts and this disclaimer.

Scene model: focal length = image diagonal, principal point at the image centre (CLIFF's
assumption, docs/method.md §4); poses from :func:`hmrcli.body.pose_limits.sample_plausible_pose`,
betas ~ N(0, 1) clipped to +-2, heading uniform, +-0.1 rad tilt; the pelvis on a random
ray through the image at 3-8 m; people whose box is mostly outside the image, too small, or
overlapping another person's box too much are re-drawn.  Every image comes from
``numpy.random.default_rng([seed, image_index])``: the same seed gives the same files.
Speed at 640x480: about 20 people (10 images) per second on one busy CPU core -- 1000
samples in ~50 s; ``workers=N`` renders in N processes with identical output.
"""

from __future__ import annotations

import colorsys
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hmrcli import geometry as G
from hmrcli.bench.datasets import load_npz_arrays
from hmrcli.body import BodyModel, load_body_model
from hmrcli.body.pose_limits import sample_plausible_pose
from hmrcli.render import render
from hmrcli.train.data import SPIN24_BODY_CONF, spin24_from_body

__all__ = [
    "BACKGROUND_KINDS",
    "DISCLAIMER",
    "SyntheticConfig",
    "SyntheticPerson",
    "procedural_background",
    "make_image",
    "sample_people",
    "split_npz",
    "write_synthetic_dataset",
]

DISCLAIMER = (
    "Synthetic data from the free body model (untextured meshes over procedural backgrounds; "
    "betas in the free model's shape space). It validates the training machinery and the "
    "geometry; it does not yield weights for real photos."
)

#: Background families of :func:`procedural_background`.
BACKGROUND_KINDS = ("gradient", "noise", "stripes", "checker")


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings (pixels, metres, radians).

    image_wh: image size.  people: (min, max) people per image.  distance: range of the
    camera-to-pelvis distance.  pose_spread: ``sample_plausible_pose`` spread.  betas_clip:
    |betas| bound.  tilt: max tilt off vertical.  box_rescale: square-box enlargement of the
    mesh's box (SPIN: 1.2).  max_overlap: max IoU between two people's boxes.  min_inside:
    min fraction of a person's tight box inside the image.  min_height: min tight-box height.
    image_noise: max std of the Gaussian pixel noise.  jpeg_quality: JPEG quality.
    write_masks: also write ``masks/*.png``.
    """

    image_wh: tuple[int, int] = (640, 480)
    people: tuple[int, int] = (1, 3)
    distance: tuple[float, float] = (3.0, 8.0)
    pose_spread: float = 0.5
    betas_clip: float = 2.0
    tilt: float = 0.1
    box_rescale: float = 1.2
    max_overlap: float = 0.3
    min_inside: float = 0.6
    min_height: float = 48.0
    image_noise: float = 4.0
    jpeg_quality: int = 92
    write_masks: bool = False


@dataclass
class SyntheticPerson:
    """One placed body: pose (72) camera-frame axis-angle, betas (10), cam_t (3) m,
    vertices (V, 3) / joints (24, 3) / keypoints (17, 3) in the camera frame (m),
    xyxy (4) tight box of the projected mesh (px), color (3) RGB in [0, 1]."""

    pose: np.ndarray
    betas: np.ndarray
    cam_t: np.ndarray
    vertices: np.ndarray
    joints: np.ndarray
    keypoints: np.ndarray
    xyxy: np.ndarray
    color: tuple[float, float, float]


# -- backgrounds -------------------------------------------------------------------------------


def _colors(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0, 255, size=(n, 3))


def _coords(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Pixel coordinates along a random direction, (h, w)."""
    a = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return x * np.float32(np.cos(a)) + y * np.float32(np.sin(a))


def _gradient(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    c0, c1 = _colors(rng, 2).astype(np.float32)
    if rng.uniform() < 0.3:  # radial
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.hypot(x - cx, y - cy)
    else:
        t = _coords(rng, w, h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _noise(rng: np.random.Generator, w: int, h: int) -> np.ndarray:

    gw = int(rng.integers(3, 33))
    gh = max(2, int(round(gw * h / w)))
    small = rng.uniform(0, 255, size=(gh, gw, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255)


def _stripes(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    c0, c1 = _colors(rng, 2).astype(np.float32)
    period = rng.uniform(8, 96)
    t = _coords(rng, w, h) * np.float32(2 * np.pi / period)
    t = 0.5 + 0.5 * np.sin(t) if rng.uniform() < 0.5 else (np.sin(t) > 0).astype(np.float32)
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _checker(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    c0, c1 = _colors(rng, 2).astype(np.float32)
    a, size = rng.uniform(0, np.pi / 2), rng.uniform(8, 80)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (x * np.cos(a) + y * np.sin(a)) / size
    v = (-x * np.sin(a) + y * np.cos(a)) / size
    t = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


_MAKERS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "gradient": _gradient, "noise": _noise, "stripes": _stripes, "checker": _checker,
}


def _shapes(rng: np.random.Generator, img: np.ndarray) -> None:
    """Draw a few random filled rectangles and circles (clutter) in place."""

    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, 8))):
        color = tuple(float(c) for c in _colors(rng, 1)[0])
        if rng.uniform() < 0.5:
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(10, w // 3)), y0 + int(rng.integers(10, h // 3))
            cv2.rectangle(img, (x0, y0), (x1, y1), color, -1)
        else:
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(img, c, int(rng.integers(5, min(w, h) // 5)), color, -1)


def procedural_background(rng: np.random.Generator, image_wh: tuple[int, int], kind: str | None = None) -> np.ndarray:
    """A random procedural background, (H, W, 3) uint8 RGB.

    ``kind`` (default: random) is one of :data:`BACKGROUND_KINDS`; half the time another
    family is blended in (up to 50 %), half the time random rectangles/circles are drawn, and
    colour noise (std up to 12) is added.
    """
    w, h = int(image_wh[0]), int(image_wh[1])
    kinds = list(BACKGROUND_KINDS)
    k = kind if kind is not None else kinds[int(rng.integers(len(kinds)))]
    if k not in _MAKERS:
        raise ValueError(f"unknown background kind {k!r} (choose from {kinds})")
    img = _MAKERS[k](rng, w, h)
    if rng.uniform() < 0.5:
        other = _MAKERS[kinds[int(rng.integers(len(kinds)))]](rng, w, h)
        a = np.float32(rng.uniform(0.0, 0.5))
        img = img * (1 - a) + other * a
    img = np.ascontiguousarray(img, dtype=np.float32)
    if rng.uniform() < 0.5:
        _shapes(rng, img)
    img += rng.normal(0, rng.uniform(0, 12), size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _person_color(rng: np.random.Generator) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.7), rng.uniform(0.55, 1.0))
    return (float(r), float(g), float(b))


# -- people ------------------------------------------------------------------------------------


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _clip_box(xyxy: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.array([max(xyxy[0], -0.5), max(xyxy[1], -0.5), min(xyxy[2], w - 0.5), min(xyxy[3], h - 0.5)])


def sample_people(
    body: BodyModel,
    rng: np.random.Generator,
    n: int,
    K: np.ndarray,
    config: SyntheticConfig = SyntheticConfig(),
    tries: int = 3,
) -> list[SyntheticPerson]:
    """Up to ``n`` people placed in one image (see the module docstring); may return fewer
    when the constraints reject the candidates of ``tries`` rounds (at least one is kept
    whenever any candidate satisfies the size/inside constraints)."""

    w, h = config.image_wh
    f, c = float(K[0, 0]), K[:2, 2]
    out: list[SyntheticPerson] = []
    boxes: list[np.ndarray] = []
    for _ in range(tries):
        m = 4 * n
        body_pose = sample_plausible_pose(m, rng, config.pose_spread).reshape(m, 69)
        heading = G.axis_rotation(1, rng.uniform(-np.pi, np.pi, m))
        tilt = G.axis_rotation(0, rng.uniform(-config.tilt, config.tilt, m)) @ G.axis_rotation(2, rng.uniform(-config.tilt, config.tilt, m))
        glob = np.diag([1.0, -1.0, -1.0]) @ tilt @ heading  # body +Y up -> camera y down, facing the camera
        pose = np.concatenate([G.rotmat_to_axis_angle(glob), body_pose], axis=1)
        betas = np.clip(rng.normal(size=(m, 10)), -config.betas_clip, config.betas_clip)
        dist = rng.uniform(*config.distance, m)
        uv = np.stack([rng.uniform(0.1, 0.9, m) * w, rng.uniform(0.3, 0.7, m) * h], 1)
        colors = [_person_color(rng) for _ in range(m)]
        res = body(torch.from_numpy(pose), torch.from_numpy(betas))
        verts, joints, kps = res.vertices.numpy(), res.joints.numpy(), res.keypoints_coco.numpy()
        for i in range(m):
            ray = np.array([(uv[i, 0] - c[0]) / f, (uv[i, 1] - c[1]) / f, 1.0])
            cam_t = ray / np.linalg.norm(ray) * dist[i] - joints[i, 0]
            v = verts[i] + cam_t
            p = v[:, :2] / v[:, 2:] * f + c
            xyxy = np.array([*p.min(0), *p.max(0)])
            clipped = _clip_box(xyxy, w, h)
            area = (xyxy[2] - xyxy[0]) * (xyxy[3] - xyxy[1])
            inside = max(0.0, clipped[2] - clipped[0]) * max(0.0, clipped[3] - clipped[1]) / area
            if inside < config.min_inside or clipped[3] - clipped[1] < config.min_height:
                continue
            if any(_iou(clipped, b) > config.max_overlap for b in boxes):
                continue
            boxes.append(clipped)
            out.append(SyntheticPerson(pose[i], betas[i], cam_t, v, joints[i] + cam_t, kps[i] + cam_t, xyxy, colors[i]))
            if len(out) == n:
                return out
    return out


def _labels(p: SyntheticPerson, K: np.ndarray, wh: tuple[int, int], rescale: float) -> dict[str, np.ndarray]:
    """SPIN/CLIFF fields of one person."""
    w, h = wh
    s24 = spin24_from_body(p.joints, p.keypoints)
    ok = SPIN24_BODY_CONF > 0
    uv = np.zeros((24, 2))
    uv[ok] = G.project(s24[ok], K)
    inside = (uv[:, 0] >= -0.5) & (uv[:, 0] <= w - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= h - 0.5)
    box = G.box_from_xyxy(_clip_box(p.xyxy, w, h), aspect="square", rescale=rescale)
    return {
        "center": box[:2],
        "scale": np.float64(box[2] / G.PIXEL_STD),
        "part": np.concatenate([uv, (SPIN24_BODY_CONF * inside)[:, None]], 1),
        "S": np.concatenate([s24, SPIN24_BODY_CONF[:, None]], 1),
        "pose": p.pose,
        "shape": p.betas,
        "has_smpl": np.float64(1.0),
        "focal_l": np.float64(K[0, 0]),
        "global_t": p.cam_t,
        "cam_t": p.cam_t,
        "joints_smpl24": p.joints,
        "img_wh": np.array([w, h], dtype=np.float64),
    }


def _render(people: list[SyntheticPerson], faces: np.ndarray, K: np.ndarray, wh: tuple[int, int],
            rng: np.random.Generator, config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) int16 person-index mask (-1: background)."""

    bg = procedural_background(rng, wh)
    out = render([(p.vertices, faces) for p in people], K, wh, background=bg, colors=[p.color for p in people],
                 device="cpu")
    img = out.rgb.astype(np.float32)
    img += rng.normal(0, rng.uniform(0, config.image_noise), size=img.shape).astype(np.float32)
    if rng.uniform() < 0.3:

        img = cv2.GaussianBlur(img, (3, 3), 0)
    return np.clip(img, 0, 255).round().astype(np.uint8), out.mask


def _camera(config: SyntheticConfig) -> np.ndarray:
    w, h = config.image_wh
    return G.intrinsics(float(G.default_focal(w, h)), float(w), float(h))


def make_image(
    root: Path,
    index: int,
    seed: int,
    config: SyntheticConfig,
    body: BodyModel,
    cap: int | None = None,
) -> list[dict[str, Any]]:
    """Draw, render and write image ``index`` (``default_rng([seed, index])``); returns its
    people's label rows (``_labels`` plus ``imgname``, ``maskname``, ``mask_index``), at most
    ``cap`` of them.  An image with no accepted person writes nothing and returns []."""

    rng = np.random.default_rng([seed, index])
    lo, hi = config.people
    want = int(rng.integers(lo, hi + 1))
    K = _camera(config)
    people = sample_people(body, rng, want, K, config)
    if cap is not None:
        people = people[:cap]
    if not people:
        return []
    wh = config.image_wh
    img, mask = _render(people, body.faces, K, wh, rng, config)
    imgname = f"images/{index:06d}.jpg"
    cv2.imwrite(str(root / imgname), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(config.jpeg_quality)])
    maskname = f"masks/{index:06d}.png"
    if config.write_masks:
        cv2.imwrite(str(root / maskname), (mask + 1).astype(np.uint8))
    rows = []
    for k, p in enumerate(people):
        row = _labels(p, K, wh, config.box_rescale)
        row.update(imgname=imgname, maskname=maskname, mask_index=k + 1)
        rows.append(row)
    return rows


_WORKER: dict[str, Any] = {}


def _worker_init() -> None:

    torch.set_num_threads(1)
    _WORKER["body"] = load_body_model("free")


def _worker_image(root: str, index: int, seed: int, config: SyntheticConfig) -> list[dict[str, Any]]:
    return make_image(Path(root), index, seed, config, _WORKER["body"])


def _image_rows(root: Path, seed: int, config: SyntheticConfig, body: BodyModel | None,
                workers: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """``(index, rows)`` of images 0, 1, 2, ... in order (computed ``workers`` at a time)."""
    if workers <= 1:
        assert body is not None
        i = 0
        while True:
            yield i, make_image(root, i, seed, config, body)
            i += 1

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
        pending: dict[int, Any] = {}
        nxt = 0
        i = 0
        try:
            while True:
                while len(pending) < 3 * workers:
                    pending[nxt] = pool.submit(_worker_image, str(root), nxt, seed, config)
                    nxt += 1
                yield i, pending.pop(i).result()
                i += 1
        finally:
            for fut in pending.values():
                fut.cancel()
            for idx, fut in pending.items():  # speculative images past the end: remove their files
                if not fut.cancelled():
                    fut.result()
                for sub in ("images", "masks"):
                    for ext in ("jpg", "png"):
                        (root / sub / f"{idx:06d}.{ext}").unlink(missing_ok=True)


def write_synthetic_dataset(
    root: str | os.PathLike,
    n_samples: int,
    seed: int = 0,
    name: str = "synthetic",
    config: SyntheticConfig = SyntheticConfig(),
    body: BodyModel | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Render ``n_samples`` labelled people (1-3 per image) and write them (module docstring).

    Args:
        root: output folder (created); ``images/`` and ``<name>.npz`` go there.
        n_samples: number of person rows (the last image is re-drawn with fewer people when
            needed; it is the same image with the surplus people left out).
        seed: image ``i`` is drawn from ``default_rng([seed, i])``.
        name: stem of the ``.npz``/``.json`` files.
        config: :class:`SyntheticConfig`.
        body: body model (default: the free model); must be None with ``workers > 1``
            (each worker process loads the free model).
        progress: called as ``progress(samples_done, n_samples)`` after every image.
        workers: processes rendering in parallel (1 thread each); the files are the same
            for any number of workers.
    Returns:
        Summary dict: ``npz``, ``samples``, ``images``, ``seconds``.
    """

    if n_samples <= 0:
        raise ValueError("n_samples must be positive")
    lo, hi = config.people
    if not 1 <= lo <= hi:
        raise ValueError(f"people must be (min, max) with 1 <= min <= max; got {config.people}")
    if workers > 1 and body is not None:
        raise ValueError("with workers > 1 every worker loads the free body model; pass body=None")
    if body is None and workers <= 1:

        body = load_body_model("free")
    t0 = time.perf_counter()
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    if config.write_masks:
        (root / "masks").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    draws = 0
    gen = _image_rows(root, seed, config, body, workers)
    try:
        for i, got in gen:
            draws = i + 1
            need = n_samples - len(rows)
            if len(got) > need:  # the last image: the same draw with the surplus people left out
                if body is None:

                    body = load_body_model("free")
                got = make_image(root, i, seed, config, body, cap=need)
            rows.extend(got)
            if got and progress is not None:
                progress(len(rows), n_samples)
            if len(rows) >= n_samples:
                break
    finally:
        gen.close()
    arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k not in ("imgname", "maskname", "mask_index")}
    arrays["imgname"] = np.array([r["imgname"] for r in rows], dtype=str)
    arrays["betas_space"] = np.array("free" if body is None else body.info.name)
    if config.write_masks:
        arrays["maskname"] = np.array([r["maskname"] for r in rows], dtype=str)
        arrays["mask_index"] = np.array([r["mask_index"] for r in rows], dtype=np.int64)
    npz = root / f"{name}.npz"
    np.savez(npz, **arrays)
    images = len(set(arrays["imgname"].tolist()))
    summary = {"npz": str(npz), "samples": len(rows), "images": images, "seconds": time.perf_counter() - t0}
    meta = {"disclaimer": DISCLAIMER, "seed": seed, "config": asdict(config), "body_model": str(arrays["betas_space"]),
            "samples": len(rows), "images": images, "image_draws": draws}
    (root / f"{name}.json").write_text(json.dumps(meta, indent=2))
    return summary


def split_npz(
    npz_path: str | os.PathLike,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Split a SPIN-style ``.npz`` by *image* (people of one image stay together) into
    ``<stem>_<split>.npz`` files beside it.

    Args:
        npz_path: the file to split (its ``imgname`` stays valid: same folder).
        fractions: split name -> fraction of the images (default ``train 0.8, test 0.2``).
        seed: seed of the image permutation.
    Returns:
        split name -> path written.
    """
    fractions = dict(fractions or {"train": 0.8, "test": 0.2})
    if not fractions or any(v < 0 for v in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"fractions must be non-negative with a positive sum; got {fractions}")
    path = Path(npz_path)
    d = load_npz_arrays(path)
    names = np.asarray(d["imgname"]).astype(str)
    n = len(names)
    images = np.unique(names)
    order = np.random.default_rng(seed).permutation(len(images))
    frac = np.array(list(fractions.values()), dtype=np.float64)
    raw = frac / frac.sum() * len(images)
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: len(images) - counts.sum()]] += 1
    out: dict[str, Path] = {}
    start = 0
    for split, cnt in zip(fractions, counts):
        chosen = set(images[order[start:start + cnt]].tolist())
        start += cnt
        sel = np.array([s in chosen for s in names], dtype=bool)
        arrays = {k: (v[sel] if v.ndim and v.shape[0] == n else v) for k, v in d.items()}
        out[split] = path.with_name(f"{path.stem}_{split}.npz")
        np.savez(out[split], **arrays)
    return out
