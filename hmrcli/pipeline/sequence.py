"""Sequences: after a run's frames are written, persons are tracked and each track's motion smoothed.

A sequence is the frames of one video (``OUT/<video name>/frame_000123.png/``), or, with
``--sequence``, the images of one input folder (sorted naturally: ``f2.png`` before
``f10.png``). When every frame of a sequence has been run (frames that failed are gaps),
its per-frame results (``person_KK.params.npz`` + ``.camera.json``) are read back,
tracked (:func:`hmrcli.track.track_people`) and smoothed (:func:`hmrcli.track.smooth_track`),
and written next to the frames::

    OUT/<sequence>/sequence.json           hmrcli.sequence/1: frames, tracks, smoothing and its lag
    OUT/<sequence>/track_03.npz            one tracked person's motion (hmrcli.animation/1:
                                           hmrcli.export.animation.read_animation_npz)
    OUT/<sequence>/track_overlay/<frame>.png   with --overlay: each track's smoothed mesh drawn
                                           over the frame in its own colour, labelled with its id

``<sequence>`` is the video's output name (``clip.mp4``) or the folder's (``""``, i.e. OUT
itself, for the frames of a folder given as the input). Reading from the files, not from
memory, makes a re-run that skipped finished frames track the same way, and lets another
executor's run be tracked by the driver. ``sequence.json`` records a digest of the frames'
results and the tracking settings: a re-run with both unchanged leaves the tracks alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hmrcli._version import __version__
from hmrcli.body import load_body_model
from hmrcli.export.animation import TrackAnimation, animation_npz_bytes
from hmrcli.export.results import ResultsError, read_person
from hmrcli.export.tracks import SEQUENCE_NAME, SEQUENCE_SCHEMA
from hmrcli.export.writers import atomic_write_bytes, atomic_write_text
from hmrcli.files import append_json_line
from hmrcli.fit.optimize import KeypointBody
from hmrcli.render import render_overlay
from hmrcli.render.renderer import PALETTE
from hmrcli.sources import ImageSource, read_image
from hmrcli.track import (
    Observation,
    SmoothOptions,
    TrackerOptions,
    lag_note,
    smooth_track,
    track_people,
)
from hmrcli.track.tracker import estimate_box

__all__ = ["SEQUENCE_SCHEMA", "SequenceOptions", "Sequence", "SequenceDone", "find_sequences", "natural_key",
           "video_fps", "write_sequence", "finish_sequences", "read_sequence_observations"]

OVERLAY_DIR = "track_overlay"
DEFAULT_FPS = 30.0
_TRACK_FILE = re.compile(r"^track_\d+\.npz$")
#: revision of what a sequence's files hold (part of the digest: a change redoes the tracks)
_LAYOUT = 2


@dataclass(frozen=True)
class SequenceOptions:
    """``folders``: images of one folder form a sequence too (``--sequence``; videos always do
    when sequences are on); ``fps``: frames per second for folders of images, and for videos
    whose container gives none (None: 30, recorded as assumed); ``smooth``, ``tracker``: the
    steps' settings; ``overlay``: write ``track_overlay/`` images."""

    folders: bool = False
    fps: float | None = None
    smooth: SmoothOptions = field(default_factory=SmoothOptions)
    tracker: TrackerOptions = field(default_factory=TrackerOptions)
    overlay: bool = False
    smpl_dir: str | None = None

    def settings(self) -> dict[str, Any]:
        """What the tracks depend on (compared on re-runs)."""
        return {"smooth": asdict(self.smooth), "tracker": asdict(self.tracker), "fps": self.fps,
                "overlay": self.overlay, "hmrcli": __version__, "layout": _LAYOUT}


@dataclass
class Sequence:
    """One sequence of a run: its output folder name, its frames in order (the sources),
    the video (or None for a folder of images), frames per second and where that came from."""

    name: str
    frames: list[ImageSource]
    video: Path | None
    fps: float
    fps_source: str

    def frame_index(self, step: int) -> int:
        src = self.frames[step]
        return int(src.frame) if src.frame is not None else step


@dataclass
class SequenceDone:
    """What :func:`write_sequence` did: ``tracks`` written (and ``short_tracks``: persons seen
    in too few frames for a track, listed in sequence.json), or ``skipped`` (up to date), or
    ``error`` (the sequence could not be tracked; recorded in errors.jsonl)."""

    name: str
    tracks: int = 0
    short_tracks: int = 0
    frames: int = 0
    missing: int = 0
    skipped: bool = False
    error: str | None = None
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)


def natural_key(name: str) -> list[Any]:
    """Sort key that orders the digit runs of a name by value (``f2`` before ``f10``)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def video_fps(video: str | os.PathLike) -> float | None:
    """The frame rate a video's container states (OpenCV ``CAP_PROP_FPS``), or None."""
    cap = cv2.VideoCapture(str(video))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return fps if math.isfinite(fps) and 0.5 <= fps <= 1000 else None


def find_sequences(sources: list[ImageSource], opts: SequenceOptions) -> list[Sequence]:
    """The sequences among a run's sources: every video's frames (in frame order) and, with
    ``opts.folders``, the images of each output folder (natural order)."""
    groups: dict[tuple[str, str], list[ImageSource]] = {}
    for src in sources:
        parent = Path(src.name).parent.as_posix()
        parent = "" if parent == "." else parent
        if src.video is not None:
            groups.setdefault(("video", parent), []).append(src)
        elif opts.folders:
            groups.setdefault(("folder", parent), []).append(src)
    out = []
    for (kind, name), frames in sorted(groups.items(), key=lambda kv: natural_key(kv[0][1])):
        if kind == "video":
            frames = sorted(frames, key=lambda s: int(s.frame))
            video = frames[0].video
            got = video_fps(video) if opts.fps is None else None
            fps, how = (got, "video container") if got else (
                (opts.fps, "--fps") if opts.fps else (DEFAULT_FPS, "assumed (the video states none; give --fps)"))
        else:
            frames = sorted(frames, key=lambda s: natural_key(Path(s.name).name))
            video = None
            fps, how = (opts.fps, "--fps") if opts.fps else (DEFAULT_FPS, "assumed (frames of a folder; give --fps)")
        out.append(Sequence(name, frames, video, float(fps), how))
    return out


def _digest(out: Path, seq: Sequence, settings: dict[str, Any]) -> tuple[str, list[int]]:
    """sha256 of the settings and every frame's result.json and person files; the steps of
    frames without a result."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    missing = []
    for step, src in enumerate(seq.frames):
        d = out / src.name
        h.update(src.name.encode("utf-8", "surrogateescape") + b"\0")
        try:
            res = (d / "result.json").read_bytes()
        except OSError:
            missing.append(step)
            continue
        h.update(res)
        try:
            indices = json.loads(res).get("person_indices") or []
        except ValueError:
            indices = []
        for k in indices:
            for suffix in (".params.npz", ".camera.json"):
                try:
                    h.update((d / f"person_{int(k):02d}{suffix}").read_bytes())
                except (OSError, ValueError):
                    h.update(b"missing")
    return h.hexdigest(), missing


def _landmarks(cam: dict[str, Any]) -> dict[str, np.ndarray] | None:
    lm = (cam.get("estimate") or {}).get("landmarks") if isinstance(cam.get("estimate"), dict) else None
    if not isinstance(lm, dict):
        return None
    try:
        out = {"kp2d": np.asarray(lm["kp2d_px"], dtype=np.float64).reshape(17, 2),
               "conf2d": np.asarray(lm["conf2d"], dtype=np.float64).reshape(17),
               "kp3d": np.asarray(lm["kp3d_m"], dtype=np.float64).reshape(17, 3)}
        rois = cam.get("rois") or []
        if rois and isinstance(rois[0], dict) and rois[0].get("box_cxcyb") is not None:
            out["box_size"] = float(np.asarray(rois[0]["box_cxcyb"], dtype=np.float64)[2])
    except (KeyError, TypeError, ValueError):
        return None
    return out if all(np.all(np.isfinite(v)) for v in out.values()) else None


def read_sequence_observations(out: Path, seq: Sequence, body_for: Callable[[str, str], Any]
                               ) -> tuple[list[list[Observation]], dict[str, Any]]:
    """Per step, the observations of its saved persons (joints from ``body_for(model,
    gender)``'s :class:`KeypointBody`); and facts of the sequence (body model, camera).
    Raises ResultsError naming a file that cannot be read."""
    frames: list[list[Observation]] = []
    facts: dict[str, Any] = {}
    for step, src in enumerate(seq.frames):
        d = out / src.name
        obs: list[Observation] = []
        try:
            res = json.loads((d / "result.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            frames.append(obs)
            continue
        for k in res.get("person_indices") or []:
            p = read_person(d, f"person_{int(k):02d}")
            kb = body_for(p.body_model, p.gender)
            facts.setdefault("body_model", p.body_model)
            facts.setdefault("gender", p.gender)
            if p.body_model != facts["body_model"]:
                raise ResultsError(f"{p.params_path}: body model {p.body_model!r}, but the sequence's other frames "
                                   f"use {facts['body_model']!r}")
            img = p.camera.get("image") if isinstance(p.camera.get("image"), dict) else {}
            if img.get("width") and img.get("height"):
                facts.setdefault("image_wh", (int(img["width"]), int(img["height"])))
            facts.setdefault("K", p.K)
            betas = p.mesh_betas if p.mesh_betas is not None else np.zeros_like(p.betas)
            b = np.zeros(kb.num_betas)
            b[:min(len(betas), kb.num_betas)] = betas[:kb.num_betas]
            with torch.no_grad():
                _, j = kb(torch.as_tensor(p.rotmats[None]), torch.as_tensor(b[None]))
            jc = j[0].numpy() + p.transl
            uv = (jc @ p.K.T)
            uv = uv[:, :2] / np.maximum(uv[:, 2:], 1e-6)
            person = p.camera.get("person") if isinstance(p.camera.get("person"), dict) else {}
            det = person.get("box_xyxy")
            try:
                det = np.asarray(det, dtype=np.float64).reshape(4) if det is not None else None
            except (TypeError, ValueError):
                det = None
            obs.append(Observation(step=step, frame=seq.frame_index(step), person=int(k), box_xyxy=estimate_box(uv),
                                   joints_2d=uv, joints_cam=jc, rotmats=p.rotmats, betas=p.betas,
                                   betas_applied=p.betas_applied, transl=p.transl, K=p.K,
                                   landmarks=_landmarks(p.camera), det_box_xyxy=det))
        frames.append(obs)
    return frames, facts


def _remove_stale(d: Path, keep: set[str]) -> None:
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        if _TRACK_FILE.match(n) and n not in keep:
            try:
                os.unlink(d / n)
            except OSError:
                pass
    od = d / OVERLAY_DIR
    if od.is_dir():
        for n in os.listdir(od):
            if n.endswith(".png") and f"{OVERLAY_DIR}/{n}" not in keep:
                try:
                    os.unlink(od / n)
                except OSError:
                    pass


def _overlay_png(image: np.ndarray, items: list[tuple[int, str, np.ndarray]], faces: np.ndarray,
                 K: np.ndarray) -> bytes:
    """The frame with each (track number, id, camera-frame vertices) drawn in its colour + label."""
    colors = [PALETTE[n % len(PALETTE)] for n, _, _ in items]
    rgb = render_overlay(image, [(v, faces) for _, _, v in items], K, colors=colors) if items else image.copy()
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    for (n, tid, v), c in zip(items, colors):
        uv = v @ K.T
        uv = uv[:, :2] / np.maximum(uv[:, 2:], 1e-6)
        x, y = int(np.clip(np.median(uv[:, 0]), 0, bgr.shape[1] - 1)), int(np.clip(uv[:, 1].min() - 8, 16, bgr.shape[0] - 1))
        col = tuple(int(255 * ch) for ch in c[::-1])
        cv2.putText(bgr, tid, (x - 40, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(bgr, tid, (x - 40, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, col, 2, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError("PNG encoding of the track overlay failed")
    return buf.tobytes()


def write_sequence(out: Path, seq: Sequence, opts: SequenceOptions, body: Any = None,
                   force: bool = False) -> SequenceDone:
    """Track and smooth one sequence from its saved frames and write its files (module
    docstring). ``body``: the run's body model (loaded by name from the results otherwise);
    ``force``: even when ``sequence.json`` says they are up to date. Raises ResultsError /
    OSError; :func:`finish_sequences` records them."""
    t0 = time.perf_counter()
    d = out / seq.name if seq.name else out
    settings = opts.settings()
    digest, missing = _digest(out, seq, settings)
    done = SequenceDone(seq.name, frames=len(seq.frames), missing=len(missing))
    try:
        old = json.loads((d / SEQUENCE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if not force and isinstance(old, dict) and old.get("digest") == digest and all((d / f).is_file() for f in old.get("files", [])):
        done.skipped, done.tracks, done.short_tracks = True, len(old.get("tracks") or []), len(old.get("short_tracks") or [])
        return done
    kbs: dict[tuple[str, str], tuple[Any, KeypointBody]] = {}

    def body_for(name: str, gender: str) -> KeypointBody:
        if (name, gender) not in kbs:
            bm = body if body is not None and body.info.name == name and body.info.gender == gender else \
                load_body_model(name, gender=gender, smpl_dir=opts.smpl_dir)
            kbs[(name, gender)] = (bm, KeypointBody(bm, dtype=torch.float64))
        return kbs[(name, gender)][1]

    frames, facts = read_sequence_observations(out, seq, body_for)
    twins: list = []
    short: list = []
    tracks = track_people(frames, opts.tracker, twins, short)
    files: list[str] = []
    records = []
    smoothed = []
    for tr in tracks:
        kb = body_for(facts["body_model"], facts["gender"])
        sm = smooth_track(tr, kb, seq.fps, opts.smooth)
        smoothed.append(sm)
        anim = TrackAnimation(track_id=tr.track_id, frames=sm.frames, fps=seq.fps, rotmats=sm.rotmats,
                              betas=sm.betas, transl=sm.transl, body_model=facts["body_model"],
                              K=facts.get("K"), image_wh=facts.get("image_wh"))
        fname = f"{tr.track_id}.npz"
        atomic_write_bytes(d / fname, animation_npz_bytes(anim))
        files.append(fname)
        records.append({"id": tr.track_id, "file": fname, "first_frame": int(sm.frames[0]),
                        "last_frame": int(sm.frames[-1]), "observed_frames": int(len(sm.frames)),
                        "gaps": [[seq.frame_index(s), n] for s, n in tr.gaps()],
                        "persons": [[int(f), int(k)] for f, k in zip(sm.frames, sm.persons)],
                        "betas_applied": sm.betas_applied, "smoothing": sm.details or None})
    if opts.overlay and smoothed:
        bm = kbs[(facts["body_model"], facts["gender"])][0]
        faces = np.asarray(bm.faces)
        at: dict[int, list[tuple[int, str, int]]] = {}
        for n, sm in enumerate(smoothed):
            for i, s in enumerate(sm.steps):
                at.setdefault(int(s), []).append((n, sm.track_id, i))
        for step, src in enumerate(seq.frames):
            if step in missing:
                continue
            items = []
            for n, tid, i in at.get(step, []):
                sm = smoothed[n]
                b = torch.as_tensor(sm.betas[None]) if sm.betas_applied else None
                v = bm(torch.as_tensor(sm.rotmats[i:i + 1]), betas=b).vertices[0].numpy() + sm.transl[i]
                items.append((n, tid, v))
            image = read_image(src)
            rel = f"{OVERLAY_DIR}/{Path(src.name).stem}.png"
            atomic_write_bytes(d / rel, _overlay_png(image, items, faces, np.asarray(facts.get("K"))))
            files.append(rel)
    rec = {
        "schema": SEQUENCE_SCHEMA, "name": seq.name, "video": str(seq.video) if seq.video is not None else None,
        "fps": seq.fps, "fps_source": seq.fps_source,
        "units": {"fps": "frames per second of the source frame indices", "transl": "metres",
                  "frames": "source frame indices (0-based; video frame numbers)"},
        "frames": [{"step": s, "frame": seq.frame_index(s), "name": src.name,
                    "folder": Path(src.name).relative_to(seq.name).as_posix() if seq.name else src.name,
                    "done": s not in missing} for s, src in enumerate(seq.frames)],
        "missing_frames": [seq.frame_index(s) for s in missing],
        "duplicates": [{"frame": o.frame, "person": o.person, "same_body_as_person": k.person,
                        "joints_in_own_box": round(o.in_box, 3)} for o, k in twins],
        "short_tracks": [{"first_frame": obs[0].frame, "observed_frames": len(obs),
                          "persons": [[o.frame, o.person] for o in obs]} for obs in short],
        "body_model": facts.get("body_model"), "gender": facts.get("gender"), "tracks": records,
        "tracker": asdict(opts.tracker), "smoothing": {"method": opts.smooth.method, **asdict(opts.smooth),
                                                         "lag": lag_note(opts.smooth, seq.fps)},
        "convention": "track_XX.npz: hmrcli.animation/1 (hmrcli.export.animation); rotations joint 0 = global "
                      "orientation in the OpenCV camera frame (x right, y down, z forward); X_camera = X_model + transl",
        "files": files, "digest": digest, "hmrcli": __version__,
    }
    atomic_write_text(d / SEQUENCE_NAME, json.dumps(rec, indent=1))
    _remove_stale(d, set(files))
    done.tracks, done.short_tracks = len(tracks), len(short)
    done.files, done.seconds = files + [SEQUENCE_NAME], time.perf_counter() - t0
    return done


def finish_sequences(out: Path, sources: list[ImageSource], opts: SequenceOptions, body: Any = None,
                     emit: Callable[[dict[str, Any]], None] = lambda ev: None,
                     force: bool = False) -> list[SequenceDone]:
    """:func:`write_sequence` for every sequence among ``sources`` (``force``: re-track those
    up to date too, as ``--overwrite`` does); a sequence that fails is recorded
    (``errors.jsonl``, stage ``track``; a ``sequence`` event with ``error``) and the others go on."""
    results = []
    for seq in find_sequences(sources, opts):
        try:
            done = write_sequence(out, seq, opts, body, force)
        except Exception as e:
            msg = f"{out / seq.name if seq.name else out}: tracking the sequence failed ({type(e).__name__}: {e})"
            append_json_line(out / "errors.jsonl", {"file": str(seq.video or (out / seq.name)), "stage": "track",
                                                     "message": msg})
            done = SequenceDone(seq.name, frames=len(seq.frames), error=msg)
        results.append(done)
        emit({"event": "sequence", "name": seq.name, "frames": done.frames, "missing_frames": done.missing,
              "tracks": done.tracks, "short_tracks": done.short_tracks, "up_to_date": done.skipped, "seconds": round(done.seconds, 3),
              **({"error": done.error} if done.error else {})})
    return results
