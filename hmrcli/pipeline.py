"""Batch inference: inputs -> persons -> engine (regress | fit, optional refine) -> files under ``--out``.

Output layout (``docs/output.md``), for an input filed under NAME (the file name, or its
path below a given folder, extension kept so ``a.jpg`` and ``a.png`` differ)::

    OUT/NAME/person_00.obj|.ply        mesh (metres; frame: see camera JSON "mesh")
    OUT/NAME/person_00.camera.json     camera + boxes + RoIs (hmrcli.camera/1)
    OUT/NAME/person_00.params.npz      body-model parameters
    OUT/NAME/overlay.png               with ``overlay``: all persons rendered over the photo
    OUT/NAME/result.json               written last: the image is done (hmrcli.result/1)
    OUT/manifest.jsonl                 what was produced with which settings (hmrcli.manifest/1)
    OUT/errors.jsonl                   one line per failed input or person (hmrcli.error/1)

XX in person_XX is the person's index among the image's detections; a person the engine
could not reconstruct (e.g. no landmarks found in its box) has no files, an errors.jsonl
line and an entry in result.json's "problems". A failing image never stops the batch.

Flow. One loader thread reads (through a small pool of decoding threads), detects and
prepares the images (``engine.prepare``: crops, or BlazePose landmarks for the fit engine)
and hands them over a bounded queue to the calling thread, which runs the engine on batches
and writes the files. The detector and the engine's landmark models are used from the loader
thread only (MediaPipe graphs are not thread-safe); the engine's ``run`` from the calling
thread only. At most ``2 * images_per_step`` prepared images wait in the queue, a few more
are being decoded or detected: memory does not grow with the number of images.

Per image, in this order: (1) an old ``result.json`` is removed (the image is not done until
the new one lands), (2) every person's files and the overlay are written atomically (temp
file + rename), (3) ``result.json`` is written, (4) files of the layout that the new result
does not list (persons that no longer exist, leftover temp files) are removed, (5) one line
is appended to ``manifest.jsonl``. A kill at any point leaves either a finished image or one
that the next run redoes.

Re-runs. An image is skipped when its ``result.json`` exists and its last manifest line has
the same settings (:func:`run_settings`: engine, model, checkpoint sha256, body model,
detector, focal, mesh formats/frame, overlay, ...) and the same input (file size and
modification time, and boxes given with the input), and the files it lists exist. Otherwise
it is redone, and the caller is told once per reason (``{"event": "redo", ...}``) which
settings differ. ``overwrite`` redoes every image.

Stopping. ``stop`` (a :class:`StopRequest`, set e.g. by a signal handler) makes the run
finish the batch the engine is working on, write it, and return; a KeyboardInterrupt
abandons the batch at once (its images are redone by the next run). Either way the loader
thread is joined before returning, the summary says ``interrupted`` and no temp files remain.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hmrcli._version import __version__
from hmrcli.assets import sha256_file
from hmrcli.detect import detect_sources
from hmrcli.detect.whole_image import WholeImageDetector
from hmrcli.engine.regress import PersonBox, PersonEstimate
from hmrcli.export.writers import (
    atomic_write_bytes,
    atomic_write_text,
    mesh_bytes,
    npz_bytes,
)
from hmrcli.files import append_json_line, write_all
from hmrcli.intrinsics import CameraIntrinsics, IntrinsicsError
from hmrcli.records import BatchSummary, error_record
from hmrcli.sources import ImageSource, read_image

__all__ = ["InferOptions", "InferSummary", "StopRequest", "Manifest", "run_inference", "run_settings",
           "CAMERA_SCHEMA", "RESULT_SCHEMA", "MANIFEST_SCHEMA", "MANIFEST_NAME", "ERRORS_NAME", "SIGNAL_EXIT_CODES",
           "camera_record"]

CAMERA_SCHEMA = "hmrcli.camera/1"
RESULT_SCHEMA = "hmrcli.result/1"
MANIFEST_SCHEMA = "hmrcli.manifest/1"
MANIFEST_NAME = "manifest.jsonl"
ERRORS_NAME = "errors.jsonl"
#: exit status of a run stopped by a signal: 128 + the signal number
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
#: errors kept in ``InferSummary.errors`` (all of them go to errors.jsonl)
MAX_SUMMARY_ERRORS = 1000

CAMERA_CONVENTION = (
    "OpenCV pinhole camera: x right, y down, z forward (metres); pixel = K (R X + t) / z with "
    "pixel (0,0) the centre of the top-left pixel. R, t map the body model's output (pose with "
    "global orientation, no translation) to the camera frame; R is the identity (the global "
    "orientation is already in the camera frame)."
)


@dataclass
class InferOptions:
    out: Path
    mesh_formats: tuple[str, ...] = ("obj",)
    mesh_frame: str = "camera"  # "camera" | "model"
    focal: float | None = None  # pixels; None: EXIF (when exif_focal) else sqrt(W^2 + H^2)
    exif_focal: bool = True  # use the photo's EXIF focal length when --focal is not given
    principal_point: tuple[float, float] | None = None  # pixels (--principal-point); None: the image centre
    intrinsics: Any = None  # hmrcli.intrinsics.IntrinsicsTable (--intrinsics FILE): wins over the above
    overwrite: bool = False
    checkpoint: str = ""
    images_per_step: int = 8  # images per engine.run (also: per detector call)
    max_persons: int | None = None  # with a detector: keep the N highest-scoring persons
    overlay: bool = False  # also write OUT/NAME/overlay.png (meshes rendered over the photo)
    workers: int = 2  # image-decoding threads (0: decode in the loader thread)
    settings: dict[str, Any] = field(default_factory=dict)  # more settings for the manifest (compared on re-runs)


@dataclass
class InferSummary(BatchSummary):
    command: ClassVar[str] = "infer"
    interrupted: str | None = None  # "SIGINT", "SIGTERM", ... when the run was stopped
    redone: int = 0  # images that had results made with other settings (or none recorded), redone
    no_person: int = 0  # images done with no person found by the detector (recorded, exit status unchanged)
    persons_failed: int = 0  # persons found but not reconstructed (no landmarks, unusable box, ...)

    @property
    def remaining(self) -> int:
        """Images not handled because the run was stopped."""
        return max(0, self.images - self.done - self.skipped - self.failed)

    @property
    def exit_code(self) -> int:
        """0: every image succeeded or was already done; 1: some failed; 2: all failed;
        130 / 143: stopped by SIGINT / SIGTERM (128 + signal number)."""
        if self.interrupted:
            return SIGNAL_EXIT_CODES.get(self.interrupted, 130)
        return super().exit_code

    def _extra_json(self) -> dict[str, Any]:
        return {"remaining": self.remaining, "redone": self.redone, "no_person": self.no_person,
                "persons_failed": self.persons_failed, "interrupted": self.interrupted}


class StopRequest:
    """Ask a running :func:`run_inference` to stop after the batch in progress (thread- and
    signal-handler-safe). ``reason``: what asked, e.g. "SIGTERM" (gives the exit status)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def request(self, reason: str = "SIGINT") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


# --------------------------------------------------------------------------- manifest


def _canonical(obj: Any) -> Any:
    """JSON round trip: tuples -> lists, numpy scalars -> numbers, keys -> str."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    return str(o)


def settings_id(settings: dict[str, Any]) -> str:
    """16 hex digits naming a settings dict (sha256 of its canonical JSON)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the settings that differ (``checkpoint_sha256``, ``model.fit.w2d``)."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


class Manifest:
    """``OUT/manifest.jsonl``: an append-only log, one JSON object per line (schema
    ``hmrcli.manifest/1``):

    * ``{"kind": "run", "settings_id", "settings", "files", "hmrcli", "started"}`` -- written by
      a run before its first image line: the settings its images were made with (compared on
      re-runs) and the files they came from (path, size, mtime, sha256: ``files`` also serves
      as a cache, so a checkpoint is hashed once, not on every run);
    * ``{"kind": "image", "name", "image", "settings_id", "input", "persons", "files"}`` -- one
      per finished image, appended after its ``result.json`` (the last line of a name wins).

    Each line is one ``os.write`` on a file opened with ``O_APPEND``: lines never interleave and
    a kill leaves at most a torn last line, which readers skip (and the next append starts on
    a new line)."""

    def __init__(self, out: Path, names: Iterable[str] | None = None) -> None:
        self.path = Path(out) / MANIFEST_NAME
        self.settings: dict[str, dict[str, Any]] = {}
        self.images: dict[str, dict[str, Any]] = {}
        self.file_cache: dict[tuple[str, int, int], str] = {}
        self.bad_lines = 0
        self._fd: int | None = None
        self._needs_newline = False
        self._read(set(names) if names is not None else None)

    def _read(self, wanted: set[str] | None) -> None:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            last = b"\n"
            for raw in f:
                last = raw[-1:]
                try:
                    rec = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    self.bad_lines += 1
                    continue
                if not isinstance(rec, dict):
                    self.bad_lines += 1
                    continue
                kind = rec.get("kind")
                if kind == "run" and isinstance(rec.get("settings"), dict):
                    self.settings[str(rec.get("settings_id"))] = rec["settings"]
                    for ent in rec.get("files") or []:
                        try:
                            self.file_cache[(ent["path"], int(ent["size"]), int(ent["mtime_ns"]))] = ent["sha256"]
                        except (KeyError, TypeError, ValueError):
                            pass
                elif kind == "image" and "name" in rec:
                    if wanted is None or rec["name"] in wanted:
                        self.images[str(rec["name"])] = rec
            self._needs_newline = last != b"\n"

    def file_sha256(self, path: str | os.PathLike) -> dict[str, Any]:
        """``{"path", "size", "mtime_ns", "sha256"}`` of a file, hashed only when the manifest
        does not know it already (same path, size and modification time)."""
        p = os.path.abspath(path)
        st = os.stat(p)
        key = (p, int(st.st_size), int(st.st_mtime_ns))
        sha = self.file_cache.get(key)
        if sha is None:
            sha = self.file_cache[key] = sha256_file(Path(p))
        return {"path": p, "size": key[1], "mtime_ns": key[2], "sha256": sha}

    def append(self, rec: dict[str, Any]) -> None:
        line = json.dumps({"schema": MANIFEST_SCHEMA, **rec}, ensure_ascii=False, default=_json_default)
        data = (line + "\n").encode("utf-8")
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if self._needs_newline:  # a torn last line (killed mid-write): start on a new line
                data = b"\n" + data
                self._needs_newline = False
        write_all(self._fd, data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def run_settings(engine: Any, opts: InferOptions, detector: Any,
                 manifest: Manifest | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(settings, files): what the outputs of this run depend on, compared on re-runs, and
    the files (checkpoint, body model) they were hashed from. Not compared: the device, batch
    sizes, workers, and the hmrcli version (recorded in the manifest's run line)."""
    files: list[dict[str, Any]] = []

    def sha_of(path: Any) -> str | None:
        if not path:
            return None
        try:
            ent = manifest.file_sha256(path) if manifest is not None else None
            if ent is None:
                p = os.path.abspath(path)
                st = os.stat(p)
                ent = {"path": p, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(Path(p))}
        except OSError:
            return None
        files.append(ent)
        return ent["sha256"]

    desc = dict(engine.describe()) if hasattr(engine, "describe") else {}
    desc.pop("roi_convention", None)  # prose
    if isinstance(desc.get("regressor"), dict):
        desc["regressor"] = {k: v for k, v in desc["regressor"].items() if k != "checkpoint"}  # a file name
    ckpt_sha = None
    if opts.checkpoint:
        try:
            from hmrcli.weights.catalogue import resolve_checkpoint

            ckpt_sha = sha_of(resolve_checkpoint(opts.checkpoint))
        except Exception:
            ckpt_sha = None
        if ckpt_sha is None:
            ckpt_sha = f"unhashed:{opts.checkpoint}"
    base = getattr(engine, "base", engine)
    body = getattr(engine, "body", None)
    info = getattr(body, "info", None)
    body_settings = None
    if info is not None:
        body_settings = {"name": getattr(info, "name", None), "gender": getattr(info, "gender", None),
                         "num_vertices": getattr(info, "num_vertices", None),
                         "sha256": sha_of(getattr(info, "path", None))}
    label = getattr(detector, "detector_label", None) or getattr(detector, "label", None)
    det = {"name": getattr(detector, "name", type(detector).__name__),
           "label": label if isinstance(label, str) else None,
           "score_thr": getattr(detector, "score_thr", None)}
    ck = getattr(detector, "checkpoint_path", None)
    if ck:
        det["checkpoint"] = Path(ck).name
    settings = {
        "engine": getattr(engine, "name", type(engine).__name__),
        "model": desc,
        "checkpoint_sha256": ckpt_sha,
        "precision": getattr(base, "precision", None),
        "body_model": body_settings,
        "betas_applied": getattr(engine, "betas_applied", None),
        "detector": det,
        "max_persons": opts.max_persons,
        "focal": opts.focal,
        "exif_focal": bool(opts.exif_focal),
        "principal_point": list(opts.principal_point) if opts.principal_point is not None else None,
        "intrinsics_sha256": getattr(opts.intrinsics, "digest", None),
        "mesh_formats": list(opts.mesh_formats),
        "mesh_frame": opts.mesh_frame,
        "overlay": bool(opts.overlay),
        **opts.settings,
    }
    return _canonical(settings), files


def _input_fingerprint(src: ImageSource, boxes: list[dict[str, Any]] | None) -> dict[str, Any]:
    """What identifies an input's content cheaply: the file's (or video's) size and
    modification time, and a hash of the person boxes given with it."""
    fp: dict[str, Any] = {}
    path = src.video if getattr(src, "video", None) is not None else src.path
    try:
        st = os.stat(path)
        fp["size"], fp["mtime_ns"] = int(st.st_size), int(st.st_mtime_ns)
    except (OSError, ValueError):
        fp["size"] = fp["mtime_ns"] = None
    if boxes is not None:
        text = json.dumps(boxes, sort_keys=True, separators=(",", ":"), default=_json_default)
        fp["boxes"] = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return fp


def _given_boxes(src: ImageSource, detector: Any):
    """The person boxes given with an input (records, --boxes), or None when a detector finds them."""
    if getattr(detector, "name", None) != "boxes":
        return None
    try:
        return detector.record_for(src.path)["persons"]
    except Exception:
        return None


# --------------------------------------------------------------------------- files of the layout

_OUR_FILE = re.compile(r"^(person_\d+\.(obj|ply|camera\.json|params\.npz)|overlay\.png|result\.json)$")
_OUR_TMP = re.compile(r"^\.(person_\d+\.(obj|ply|camera\.json|params\.npz)|overlay\.png|result\.json)\..+\.tmp$")


def _remove_stale(d: Path, keep: set[str]) -> None:
    """Remove layout files in ``d`` that ``keep`` does not list (persons of an older result)
    and leftover temp files of killed writes. Other files are left alone."""
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        if (_OUR_FILE.match(n) and n not in keep) or _OUR_TMP.match(n):
            try:
                os.unlink(d / n)
            except OSError:
                pass


def camera_record(est: PersonEstimate, index: int, image_path: str, engine: Any,
                  mesh_frame: str, focal_source: str) -> dict[str, Any]:
    """The ``hmrcli.camera/1`` record of one person (see docs/schemas). ``focal_source``:
    where K came from (``--intrinsics FILE (entry)``, ``--focal``, EXIF, default; plus the
    principal point's origin), also recorded as ``K_source``."""
    w, h = est.image_wh
    if mesh_frame == "camera":
        mesh_R, mesh_t = np.eye(3), np.zeros(3)
    else:
        mesh_R, mesh_t = np.eye(3), est.cam_t
    desc = engine.describe()
    rec = {
        "schema": CAMERA_SCHEMA,
        "image": {"path": image_path, "width": w, "height": h},
        "units": {"K": "pixels", "t": "metres", "boxes": "pixels"},
        "convention": CAMERA_CONVENTION,
        "K": est.K.tolist(),
        "R": np.eye(3).tolist(),
        "t": est.cam_t.tolist(),
        "focal_px": est.focal,
        "focal_source": focal_source,
        "K_source": focal_source,
        "principal_point_px": [float(est.K[0, 2]), float(est.K[1, 2])],
        "mesh": {"frame": mesh_frame, "R": mesh_R.tolist(), "t": np.asarray(mesh_t).tolist(),
                 "note": "X_camera = mesh.R @ X_file + mesh.t for the vertices in the mesh files"},
        "person": {
            "index": index,
            "box_xyxy": np.asarray(est.box.xyxy).tolist(),
            "score": est.box.score,
            "box_source": est.box.source,
            "crop_box_cxcyb": np.asarray(est.crop_box).tolist(),
        },
        "rois": [
            {"box_cxcyb": np.asarray(est.rois[m]).tolist(), "cam_local": np.asarray(est.cams_local[m]).tolist(),
             "bbox_info": np.asarray(est.bbox_info[m]).tolist()}
            for m in range(len(est.rois))
        ],
        "roi_convention": desc.get("roi_convention"),
        "engine": engine.name,
        "aggregation": desc.get("aggregation"),
        "body_model": {"name": engine.body.info.name, "gender": engine.body.info.gender,
                       "betas_applied": est.betas_applied,
                       "betas_space": engine.betas_space},
        "hmrcli": __version__,
    }
    for key in ("regressor", "fit", "refine"):
        if key in desc:
            rec[key] = desc[key]
    details = {k: v for k, v in est.extra.items() if k != "engine"}
    if details:
        rec["estimate"] = details
    return rec


def _write_person(dirpath: Path, k: int, est: PersonEstimate, src: ImageSource, engine: Any,
                  opts: InferOptions, files: list[str], focal_source: str = "default sqrt(W^2 + H^2)") -> None:
    """Write one person's files atomically, appending each name to ``files`` once written."""
    stem = f"person_{k:02d}"
    verts = est.vertices_model + est.cam_t if opts.mesh_frame == "camera" else est.vertices_model
    for fmt in opts.mesh_formats:
        atomic_write_bytes(dirpath / f"{stem}.{fmt}", mesh_bytes(verts, engine.body.faces, fmt))
        files.append(f"{stem}.{fmt}")
    import roma
    import torch

    aa = roma.rotmat_to_rotvec(torch.from_numpy(est.rotmats)).numpy()
    atomic_write_bytes(dirpath / f"{stem}.params.npz", npz_bytes(
        global_orient=aa[0], body_pose=aa[1:].reshape(-1), betas=est.betas, transl=est.cam_t,
        rotmats=est.rotmats, cam_local=est.cams_local, K=est.K,
        body_model=np.array(engine.body.info.name), betas_space=np.array(engine.betas_space),
        betas_applied=np.array(est.betas_applied),
    ))
    files.append(f"{stem}.params.npz")
    atomic_write_text(dirpath / f"{stem}.camera.json",
                      json.dumps(camera_record(est, k, str(src.path), engine, opts.mesh_frame, focal_source), indent=1))
    files.append(f"{stem}.camera.json")


def _write_overlay(dirpath: Path, image: np.ndarray, ests: list[PersonEstimate], faces: np.ndarray) -> str:
    """OUT/NAME/overlay.png: every person's mesh rendered over the image (camera frame)."""
    import cv2

    from hmrcli.render import render_overlay

    if ests:
        meshes = [(e.vertices_model + e.cam_t, faces) for e in ests]
        rgb = render_overlay(image, meshes, ests[0].K)
    else:
        rgb = image
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("PNG encoding of the overlay failed")
    atomic_write_bytes(dirpath / "overlay.png", buf.tobytes())
    return "overlay.png"


def _append_error(out: Path, rec: dict[str, Any]) -> None:
    append_json_line(out / ERRORS_NAME, rec)


# --------------------------------------------------------------------------- loader


class _Prefetch:
    """Decode images ahead of their use, on ``workers`` threads, handing them out in order.

    :meth:`feed` yields the sources in order while keeping up to ``ahead`` of them submitted;
    :meth:`read` (called for each yielded source, in order) returns its image. Video frames
    go to one extra thread of their own, in order (a video is decoded forward; frames read
    out of order would make it re-open and seek). ``workers`` 0: decode in the caller."""

    def __init__(self, workers: int, ahead: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.workers = max(0, int(workers))
        self.ahead = max(1, int(ahead))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hmrcli-decode") if self.workers else None
        self._video_pool = None
        self._queue: deque[tuple[ImageSource, Any]] = deque()

    def _submit(self, src: ImageSource):
        if self._pool is None:
            return None
        if getattr(src, "video", None) is not None:
            if self._video_pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._video_pool = ThreadPoolExecutor(1, thread_name_prefix="hmrcli-video")
            return self._video_pool.submit(read_image, src)
        return self._pool.submit(read_image, src)

    def feed(self, sources: Iterable[ImageSource], halt: threading.Event) -> Iterator[ImageSource]:
        it = iter(sources)
        exhausted = False
        while not halt.is_set():
            while not exhausted and len(self._queue) < self.ahead:
                src = next(it, None)
                if src is None:
                    exhausted = True
                    break
                self._queue.append((src, self._submit(src)))
            if not self._queue:
                return
            yield self._queue[0][0]

    def read(self, src: ImageSource) -> np.ndarray:
        s, fut = self._queue.popleft()
        if s is not src:  # feed() and read() out of step: a bug, not a bad input
            raise RuntimeError("decoder out of order")
        return read_image(src) if fut is None else fut.result()

    def close(self) -> None:
        for _, fut in self._queue:
            if fut is not None:
                fut.cancel()
        self._queue.clear()
        for pool in (self._pool, self._video_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def _camera_for(src: ImageSource, image: np.ndarray, opts: InferOptions) -> CameraIntrinsics:
    """The camera of one image and where it came from: ``--intrinsics FILE`` (its entry for
    the image, else its default K; raises IntrinsicsError when it has neither), else
    ``--focal`` / the photo's EXIF focal length (files only, not video frames) / the default
    sqrt(W^2 + H^2), with ``--principal-point`` or the image centre."""
    if opts.intrinsics is not None:
        return opts.intrinsics.lookup(src.path)
    pp = opts.principal_point
    pp_note = f", principal point --principal-point {pp[0]:g},{pp[1]:g}" if pp is not None else ""
    if opts.focal:
        return CameraIntrinsics(float(opts.focal), pp, "--focal" + pp_note)
    if opts.exif_focal and getattr(src, "video", None) is None:
        from hmrcli.sources import exif_focal_px

        h, w = image.shape[:2]
        got = exif_focal_px(src.path, w, h)
        if got is not None:
            return CameraIntrinsics(float(got[0]), pp, got[1] + pp_note)
    return CameraIntrinsics(None, pp, "default sqrt(W^2 + H^2)" + pp_note)


@dataclass
class _Job:
    """One prepared image on its way from the loader to the engine. ``indices``: each
    person's index among the image's detections (persons with unusable boxes are left out);
    ``notes``: why persons were left out; ``image``: kept only for the overlay."""

    src: ImageSource
    prepared: dict[str, Any]
    persons: list[PersonBox]
    indices: list[int]
    notes: list[str]
    image: np.ndarray | None
    camera: CameraIntrinsics | None = None
    found_by: str = "detector"  # what looked for the persons (named in a "no person found" problem)


#: smallest person box reconstructed, in pixels (width and height)
MIN_BOX_PX = 1.0


def _usable_persons(src: ImageSource, item: Any) -> tuple[list[PersonBox], list[int], list[str]]:
    """The persons whose boxes can be cropped (finite, at least MIN_BOX_PX wide and high),
    their detection indices, and a note for each one left out."""
    persons, indices, notes = [], [], []
    for k, d in enumerate(item.detections):
        box = np.asarray(d.box_xyxy, dtype=np.float64)
        w, h = (float(box[2] - box[0]), float(box[3] - box[1])) if box.shape == (4,) else (float("nan"),) * 2
        if not (np.all(np.isfinite(box)) and w >= MIN_BOX_PX and h >= MIN_BOX_PX):
            notes.append(f"{src.path}: person {k}: box {np.round(box, 1).tolist()} ({w:.0f}x{h:.0f} px) is too small "
                         f"to reconstruct (image {item.width}x{item.height} px)")
            continue
        persons.append(PersonBox(box, d.score, d.detector))
        indices.append(k)
    return persons, indices, notes


class _Loader(threading.Thread):
    """The loader thread: decode (prefetch pool) -> detect -> ``engine.prepare``, in input
    order, into a bounded queue. Messages: ("item", _Job),
    ("error", src, stage, message), ("fatal", exception), ("end",)."""

    def __init__(self, todo: list[ImageSource], engine: Any, opts: InferOptions, detector: Any,
                 halt: threading.Event) -> None:
        super().__init__(name="hmrcli-loader", daemon=True)
        self.todo, self.engine, self.opts, self.detector, self.halt = todo, engine, opts, detector, halt
        self.queue: queue.Queue = queue.Queue(maxsize=max(2, 2 * int(opts.images_per_step)))
        label = getattr(detector, "detector_label", None) or getattr(detector, "name", type(detector).__name__)
        self.found_by = f"detector {label}"

    def put(self, msg: tuple) -> bool:
        while not self.halt.is_set():
            try:
                self.queue.put(msg, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        opts = self.opts
        pre = _Prefetch(opts.workers, ahead=max(2, 2 * opts.workers))
        srcs = pre.feed(self.todo, self.halt)
        items = None
        try:
            items = detect_sources(srcs, self.detector, batch_size=opts.images_per_step, read=pre.read,
                                   max_persons=opts.max_persons)
            for item in items:
                if self.halt.is_set():
                    break
                src = item.source
                if item.error is not None:
                    if not self.put(("error", src, *item.error)):
                        break
                    continue
                persons, indices, notes = _usable_persons(src, item)
                if item.detections and not persons:  # a 1x1 image, degenerate boxes: nothing to crop
                    if not self.put(("error", src, "crop", "; ".join(notes))):
                        break
                    continue
                try:
                    camera = _camera_for(src, item.image, opts)
                except IntrinsicsError as e:
                    if not self.put(("error", src, "camera", f"{src.path}: {e}")):
                        break
                    continue
                try:
                    # engines take (image, persons, focal[, principal]); the principal point is passed
                    # only when one is known, so engines written before it keep working
                    extra = () if camera.principal is None else (camera.principal,)
                    prepared = self.engine.prepare(item.image, persons, camera.focal, *extra)
                except Exception as e:
                    if not self.put(("error", src, "crop", f"{src.path}: {type(e).__name__}: {e}")):
                        break
                    continue
                job = _Job(src, prepared, persons, indices, notes, item.image if opts.overlay else None, camera,
                           self.found_by)
                if not self.put(("item", job)):
                    break
                del item, prepared, job  # hold nothing while waiting for the next image
        except BaseException as e:  # DetectorUnavailable (a broken installation), bugs: end the run
            self.put(("fatal", e))
        finally:
            for gen in (items, srcs):
                if gen is not None:
                    try:
                        gen.close()
                    except Exception:
                        pass
            pre.close()
            self.put(("end",))


# --------------------------------------------------------------------------- the run


def _why_redo(out: Path, src: ImageSource, man: Manifest, sid: str, settings: dict[str, Any],
              fp: dict[str, Any]) -> str | None:
    """None: the image is finished with these settings (skip it). "": it has no result yet.
    Otherwise why its result is redone."""
    d = out / src.name
    ent = man.images.get(src.name)
    has_result = (d / "result.json").is_file()
    if not has_result:
        return "its result.json is missing" if ent is not None else ""
    if ent is None:
        return "results without a manifest entry (an older hmrcli, or a run killed while finishing the image)"
    if ent.get("settings_id") != sid:
        old = man.settings.get(str(ent.get("settings_id")))
        if old is None:
            return "made with settings the manifest does not record"
        diff = settings_diff(old, settings)
        return "made with other settings: " + ", ".join(diff) if diff else None
    old_fp = ent.get("input") or {}
    if any(old_fp.get(k) != fp.get(k) for k in ("size", "mtime_ns")):
        return "the input file changed (size or modification time)"
    if old_fp.get("boxes") != fp.get("boxes"):
        return "the person boxes given for it changed"
    for f in ent.get("files") or []:
        if not (d / f).is_file():
            return "some of its files are missing"
    return None


def run_inference(
    sources: list[ImageSource],
    engine: Any,
    opts: InferOptions,
    progress: Callable[[dict[str, Any]], None] | None = None,
    detector: Any = None,
    stop: StopRequest | None = None,
) -> InferSummary:
    """Run the engine over ``sources`` and write outputs (layout, manifest and re-run rule:
    this module's docstring, ``docs/output.md``). Persons come from ``detector`` (a
    :class:`hmrcli.detect.base.Detector`, e.g. ``hmrcli.detect.create_detector("auto")``, or
    the ``boxes`` detector over given boxes); without one, each image is one person whose box
    is the whole image.

    ``progress`` receives event dicts, from the calling thread: ``done``, ``skipped``,
    ``error`` (image failed) and ``warning`` (a person failed) per image, ``redo`` (once per
    reason why finished images are redone). ``stop``: see :class:`StopRequest`; the run also
    stops cleanly on KeyboardInterrupt. Either way ``summary.interrupted`` says so.
    ``detector`` and the engine's ``prepare`` run on a loader thread, ``engine.run`` here."""
    t0 = time.perf_counter()
    if detector is None:
        detector = WholeImageDetector()
    out = Path(opts.out)
    summ = InferSummary(images=len(sources))
    emit = progress or (lambda ev: None)
    man = Manifest(out, names=[s.name for s in sources])
    settings, hashed = run_settings(engine, opts, detector, man)
    sid = settings_id(settings)
    run_line_written = False

    def fail(src: ImageSource, stage: str, msg: str) -> None:
        rec = error_record(str(src.path), stage, msg)
        _append_error(out, rec)
        summ.failed += 1
        if len(summ.errors) < MAX_SUMMARY_ERRORS:
            summ.errors.append(rec)
        emit({"event": "error", **rec, "name": src.name})

    # -- what is left to do
    fps: dict[str, dict[str, Any]] = {}
    todo: list[ImageSource] = []
    reasons: dict[str, int] = {}
    for src in sources:
        fp = _input_fingerprint(src, _given_boxes(src, detector))
        if not opts.overwrite:
            why = _why_redo(out, src, man, sid, settings, fp)
            if why is None:
                summ.skipped += 1
                emit({"event": "skipped", "file": str(src.path), "name": src.name})
                continue
            if why:
                reasons[why] = reasons.get(why, 0) + 1
                summ.redone += 1
        fps[src.name] = fp
        todo.append(src)
    for why, n in reasons.items():
        emit({"event": "redo", "images": n, "reason": why})

    def finish(job: _Job, ests: list[PersonEstimate | None]) -> None:
        nonlocal run_line_written
        src, image = job.src, job.image
        d = out / src.name
        staged = [("crop", n) for n in job.notes] + [("landmarks", why) for why in job.prepared.get("problems", []) if why]
        if not job.persons and not job.notes:
            staged.insert(0, ("detect", f"{src.path}: no person found ({job.found_by})"))
        problems = [m for _, m in staged]
        kept = [(job.indices[j], est) for j, est in enumerate(ests) if est is not None]
        files: list[str] = []
        try:
            try:
                (d / "result.json").unlink()  # redoing: not done until the new result.json lands
            except FileNotFoundError:
                pass
            for k, est in kept:
                _write_person(d, k, est, src, engine, opts, files,
                              job.camera.source if job.camera is not None else "default sqrt(W^2 + H^2)")
            if opts.overlay and image is not None:
                files.append(_write_overlay(d, image, [est for _, est in kept], engine.body.faces))
            atomic_write_text(d / "result.json", json.dumps({
                "schema": RESULT_SCHEMA, "image": str(src.path), "name": src.name, "persons": len(kept),
                "person_indices": [k for k, _ in kept], "problems": problems, "files": files,
                "engine": engine.name, "checkpoint": opts.checkpoint, "mesh_frame": opts.mesh_frame,
                "hmrcli": __version__,
            }, indent=1))
        except Exception as e:
            _remove_files(d, files)
            fail(src, "write", f"{src.path}: {type(e).__name__}: {e}")
            return
        except BaseException:  # abandoned (KeyboardInterrupt): leave nothing half-made
            _remove_files(d, files)
            raise
        _remove_stale(d, set(files) | {"result.json"})
        if not run_line_written:
            man.append({"kind": "run", "settings_id": sid, "settings": settings, "files": hashed,
                        "hmrcli": __version__, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "device": str(getattr(engine, "device", "cpu")),
                        "batch_size": getattr(engine, "batch_size", None),
                        "images_per_step": opts.images_per_step, "workers": opts.workers})
            run_line_written = True
        man.append({"kind": "image", "name": src.name, "image": str(src.path), "settings_id": sid,
                    "input": fps.get(src.name), "persons": len(kept), "files": files})
        for stage, why in staged:
            rec = error_record(str(src.path), stage, why)
            _append_error(out, rec)
            emit({"event": "warning", **rec, "name": src.name})
        summ.done += 1
        summ.persons += len(kept)
        summ.persons_failed += len(job.notes) + len(job.persons) - len(kept)
        if not job.persons and not job.notes:
            summ.no_person += 1
        emit({"event": "done", "file": str(src.path), "name": src.name, "persons": len(kept), "out": str(d)})

    def run_batch(batch: list[_Job]) -> None:
        try:
            results = engine.run([(job.prepared, job.persons) for job in batch])
        except Exception as e:  # network / fit failure: find the image(s) it comes from
            if len(batch) > 1:
                for job in batch:
                    run_batch([job])
                return
            src = batch[0].src
            fail(src, getattr(engine, "name", "engine"), f"{src.path}: {type(e).__name__}: {e}")
            return
        for job, ests in zip(batch, results):
            finish(job, ests)

    pending: list[_Job] = []
    halt = threading.Event()
    loader = _Loader(todo, engine, opts, detector, halt) if todo else None
    fatal: BaseException | None = None
    try:
        if loader is not None:
            loader.start()
            n_persons = 0
            while True:
                if stop is not None and stop.is_set():
                    break  # pending images (prepared, not run) are left for the next run
                try:
                    msg = loader.queue.get(timeout=0.1)
                except queue.Empty:
                    if not loader.is_alive() and loader.queue.empty():
                        break
                    continue
                kind = msg[0]
                if kind == "end":
                    batch, pending = pending, []
                    run_batch(batch)
                    break
                if kind == "fatal":
                    fatal = msg[1]
                    break
                if kind == "error":
                    fail(msg[1], msg[2], msg[3])
                    continue
                pending.append(msg[1])
                n_persons += len(msg[1].persons)
                del msg
                if len(pending) >= opts.images_per_step or n_persons >= engine.batch_size:
                    batch, pending, n_persons = pending, [], 0
                    run_batch(batch)
                    del batch
    except KeyboardInterrupt:
        summ.interrupted = (stop.reason if stop is not None and stop.reason else None) or "SIGINT"
    finally:
        halt.set()
        pending.clear()
        if loader is not None:
            _join(loader)
        man.close()
    if stop is not None and stop.is_set() and summ.interrupted is None:
        summ.interrupted = stop.reason or "SIGINT"
    summ.seconds = time.perf_counter() - t0
    if fatal is not None:
        raise fatal
    return summ


def _join(loader: _Loader) -> None:
    """Wait for the loader to leave put() and finish the image it is on (the detector and the
    engine's landmark models must not be closed while it uses them); a KeyboardInterrupt
    meanwhile does not cut this short."""
    while loader.is_alive():
        try:
            try:
                while True:
                    loader.queue.get_nowait()
            except queue.Empty:
                pass
            loader.join(timeout=0.1)
        except KeyboardInterrupt:
            continue


def _remove_files(d: Path, files: list[str]) -> None:
    """Remove the files of an image written by an attempt that did not finish, and temp files."""
    for f in files:
        try:
            os.unlink(d / f)
        except OSError:
            pass
    _remove_stale(d, keep={n for n in _listdir(d) if _OUR_FILE.match(n)})


def _listdir(d: Path) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []
