"""The manifest (``OUT/manifest.jsonl``): settings of a run, input fingerprints, the re-run rule's records."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hmrcli.assets import sha256_file
from hmrcli.files import json_text, write_all
from hmrcli.pipeline.options import MANIFEST_NAME, MANIFEST_SCHEMA, InferOptions
from hmrcli.sources import ImageSource
from hmrcli.weights.catalogue import resolve_checkpoint


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
        self.size_read = 0  # bytes of the file read (its size when it was read)
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
            self.size_read = f.tell()

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
        line = json_text({"schema": MANIFEST_SCHEMA, **rec}, default=_json_default)
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
        # (only when set: results made before these options existed are not redone for them)
        **({"min_quality": float(opts.min_quality)} if opts.min_quality is not None else {}),
        **({"overlay_quality": True} if opts.overlay and opts.overlay_quality else {}),
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
