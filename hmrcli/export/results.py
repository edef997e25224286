"""Re-export saved results (``hmrcli infer`` / the fitting engine's output) without any network.

Input: a results folder in the ``hmrcli.result/1`` layout — one folder per image holding
``result.json`` (written last: the image is complete), and per person
``person_XX.params.npz`` and ``person_XX.camera.json`` (``hmrcli.camera/1``). Folders
without ``result.json`` (an interrupted run) are ignored.

Output, under ``out`` (default: the results folder itself), per image folder NAME::

    NAME/person_XX.obj | .ply     posed mesh (metres) in the chosen frame
    NAME/person_XX.glb            skinned, posed body (see hmrcli.export.glb)
    NAME/person_XX.json           camera record + parameters (hmrcli.person/1)
    NAME/person_XX.params.npz     body-model parameters, normalised keys
    NAME/overlay.png              all the image's persons rendered over the image
    errors.jsonl                  one line per failure: file, stage "export", message

Frames (the same words as the camera JSON's ``"mesh"`` block): ``camera`` — OpenCV camera
frame (x right, y down, z forward), ``X_camera = X_file``; ``model`` — the body model's output
before the camera translation, ``X_camera = X_file + t`` (``t`` = the params' ``transl``).

``hmrcli.person/1`` keys: every key of the person's camera record (``image``, ``K``, ``R``,
``t``, ``focal_px``, ``person``, ``rois``, ``body_model``, ...; see ``hmrcli.camera/1``) with
``schema`` replaced, ``mesh`` describing the frame of *this* export's mesh files, plus
``params`` (``global_orient`` (3,) and ``body_pose`` (69,) axis-angle in radians, ``rotmats``
(24,3,3), ``betas`` (10,), ``transl`` (3,) metres), ``joints`` (``names`` (24), ``camera``
(24,3) metres in the camera frame, ``image`` (24,2) pixels), ``units``, ``source`` (the files
read) and ``hmrcli`` (version).

Every file is written atomically; existing outputs are kept unless ``overwrite``. A failing
person or image never stops the rest. Nothing here prints: progress goes to a callback.
"""

from __future__ import annotations

import json
import os
import re
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch

from hmrcli._version import __version__
from hmrcli.body import load_body_model
from hmrcli.export.glb import skinned_glb_bytes
from hmrcli.export.writers import (
    atomic_write_bytes,
    atomic_write_text,
    mesh_bytes,
    npz_bytes,
)
from hmrcli.files import append_json_line, json_text
from hmrcli.records import BatchSummary
from hmrcli.render import quality_color, render_overlay
from hmrcli.sources import ImageReadError, read_image

__all__ = [
    "EXPORT_FORMATS",
    "PERSON_FORMATS",
    "PERSON_SCHEMA",
    "ExportOptions",
    "ExportSummary",
    "ResultsError",
    "SavedPerson",
    "find_result_images",
    "mesh_block",
    "person_record",
    "person_stems",
    "read_person",
    "run_export",
]

PERSON_SCHEMA = "hmrcli.person/1"
PERSON_FORMATS = ("obj", "ply", "glb", "json", "npz")
EXPORT_FORMATS = PERSON_FORMATS + ("overlay",)
MESH_FRAMES = ("camera", "model")
OVERLAY_NAME = "overlay.png"
_SUFFIX = {"obj": ".obj", "ply": ".ply", "glb": ".glb", "json": ".json", "npz": ".params.npz"}
_STEM = re.compile(r"^(person_\d+)\.(?:params\.npz|camera\.json)$")
_MESH_NOTE = "X_camera = mesh.R @ X_file + mesh.t for the vertices in the mesh files"
_FRAME_WORDS = {
    "camera": "camera: OpenCV camera frame (x right, y down, z forward), metres",
    "model": "model: the body model's output before the camera translation (axes of the camera frame), metres",
}


class ResultsError(ValueError):
    """A saved result cannot be read; the message starts with the file and says the problem."""


@dataclass
class ExportOptions:
    out: Path
    formats: tuple[str, ...] = ("obj",)
    mesh_frame: str = "camera"  # "camera" | "model"
    overwrite: bool = False
    smpl_dir: str | os.PathLike | None = None
    glb_camera: bool = True  # put the camera into the GLB files
    min_quality: float | None = None  # export only persons whose camera JSON quality.score >= this
    overlay_quality: bool = False  # overlay: colour each person by its quality score

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in EXPORT_FORMATS]
        if bad or not self.formats:
            raise ValueError(f"unknown export format(s) {bad or list(self.formats)}: choose from {', '.join(EXPORT_FORMATS)}")
        if self.mesh_frame not in MESH_FRAMES:
            raise ValueError(f"mesh frame must be camera or model; got {self.mesh_frame!r}")


@dataclass
class ExportSummary(BatchSummary):
    """Counts: ``persons`` found; each person and each overlay is one unit that is ``done``
    (something written), ``skipped`` (all its outputs existed) or ``failed``; ``written``
    files."""

    command: ClassVar[str] = "export"
    written: int = 0
    below_quality: int = 0  # persons left out by --min-quality (score below it; counted as skipped)
    quality_unknown: int = 0  # persons left out by --min-quality because their camera JSON has no quality score

    def _extra_json(self) -> dict[str, Any]:
        return {"written": self.written, "below_quality": self.below_quality, "quality_unknown": self.quality_unknown}


@dataclass
class SavedPerson:
    """One person read back from a results folder (float64 arrays, metres/radians)."""

    stem: str
    params_path: Path
    camera_path: Path
    camera: dict[str, Any]
    rotmats: np.ndarray  # (24, 3, 3)
    betas: np.ndarray  # (n <= 10,) as saved
    betas_applied: bool
    transl: np.ndarray  # (3,) camera translation: X_camera = X_model + transl
    K: np.ndarray  # (3, 3)
    body_model: str
    gender: str
    betas_space: str
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # params keys not read here

    @property
    def mesh_betas(self) -> np.ndarray | None:
        """The betas the meshes use: the saved ones, or None (mean shape) when they were not
        applied (a checkpoint's betas that mean nothing to this body model)."""
        return self.betas if self.betas_applied else None


# -- reading -----------------------------------------------------------------------------

def find_result_images(results_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """(name, folder) of every complete image (a folder with ``result.json``) below
    ``results_dir``, sorted by name; name is the folder relative to ``results_dir``
    (``"."`` when ``results_dir`` is itself one image's folder)."""
    root = Path(results_dir)
    found = []
    for r in root.rglob("result.json"):
        if r.is_file():
            d = r.parent
            found.append((d.relative_to(root).as_posix() or ".", d))
    return sorted(found, key=lambda x: x[0])


def person_stems(image_dir: str | os.PathLike) -> list[str]:
    """``person_XX`` stems of an image folder: any with a params or camera file, plus
    ``person_00 .. person_{N-1}`` when ``result.json`` says N persons."""
    d = Path(image_dir)
    stems = {m.group(1) for p in d.iterdir() if (m := _STEM.match(p.name))}
    try:
        n = json.loads((d / "result.json").read_text(encoding="utf-8")).get("persons")
        if isinstance(n, int) and 0 <= n < 10000:
            stems |= {f"person_{k:02d}" for k in range(n)}
    except (OSError, ValueError, AttributeError):
        pass
    return sorted(stems, key=lambda s: (int(s.split("_")[1]), s))


def _str(v: Any) -> str:
    return str(np.asarray(v).reshape(-1)[0]) if np.asarray(v).size else ""


def _array(z: dict[str, np.ndarray], key: str, shape: tuple[int, ...], path: Path) -> np.ndarray:
    a = np.asarray(z[key])
    if a.dtype.kind not in "fiu":
        raise ResultsError(f"{path}: '{key}' is not numeric (dtype {a.dtype})")
    a = a.astype(np.float64)
    if a.size != int(np.prod(shape)):
        raise ResultsError(f"{path}: '{key}' has shape {a.shape}, expected {shape}")
    a = a.reshape(shape)
    if not np.all(np.isfinite(a)):
        raise ResultsError(f"{path}: '{key}' holds NaN or infinite values")
    return a


def read_person(image_dir: str | os.PathLike, stem: str) -> SavedPerson:
    """Read ``stem.params.npz`` and ``stem.camera.json``. Raises :class:`ResultsError`
    naming the file and the problem (missing file, unreadable, missing or malformed key).
    Extra keys are kept in ``extra``; ``rotmats`` wins over ``global_orient``/``body_pose``."""
    d = Path(image_dir)
    pp, cp = d / f"{stem}.params.npz", d / f"{stem}.camera.json"
    if not pp.is_file():
        raise ResultsError(f"{pp}: missing parameters file")
    if not cp.is_file():
        raise ResultsError(f"{cp}: missing camera file")
    try:
        with np.load(pp, allow_pickle=False) as npz:
            z = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ResultsError(f"{pp}: not a readable .npz ({type(e).__name__}: {e})") from None
    try:
        cam = json.loads(cp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{cp}: cannot read ({e})") from None
    except ValueError as e:
        raise ResultsError(f"{cp}: not JSON ({e})") from None
    if not isinstance(cam, dict):
        raise ResultsError(f"{cp}: expected a JSON object (hmrcli.camera/1)")

    if "rotmats" in z:
        rot = _array(z, "rotmats", (24, 3, 3), pp)
    elif "global_orient" in z and "body_pose" in z:
        import roma  # start-up: roma imports torch._dynamo (~3 s); the default obj export needs no roma

        aa = np.concatenate([_array(z, "global_orient", (3,), pp), _array(z, "body_pose", (69,), pp)]).reshape(24, 3)
        rot = roma.rotvec_to_rotmat(torch.from_numpy(aa)).numpy()
    else:
        raise ResultsError(f"{pp}: missing 'rotmats' (or 'global_orient' and 'body_pose')")
    missing = [k for k in ("betas", "transl") if k not in z]
    if missing:
        raise ResultsError(f"{pp}: missing key(s) {', '.join(repr(k) for k in missing)}")
    betas = np.asarray(z["betas"])
    if betas.ndim != 1 or betas.shape[0] > 300 or betas.dtype.kind not in "fiu":
        raise ResultsError(f"{pp}: 'betas' has shape {betas.shape}, expected (10,)")
    betas = _array(z, "betas", betas.shape, pp)
    transl = _array(z, "transl", (3,), pp)
    if "K" in z:
        K = _array(z, "K", (3, 3), pp)
    elif "K" in cam:
        try:
            K = np.asarray(cam["K"], dtype=np.float64).reshape(3, 3)
        except (TypeError, ValueError):
            raise ResultsError(f"{cp}: 'K' is not a 3x3 matrix") from None
    else:
        raise ResultsError(f"{pp}: missing 'K' (and {cp.name} has none)")
    bm = cam.get("body_model") if isinstance(cam.get("body_model"), dict) else {}
    name = _str(z["body_model"]) if "body_model" in z else bm.get("name")
    if not name:
        raise ResultsError(f"{pp}: missing 'body_model' (and {cp.name} names none)")
    gender = _str(z["gender"]) if "gender" in z else bm.get("gender", "neutral")
    if "betas_applied" in z:
        applied = bool(np.asarray(z["betas_applied"]).reshape(-1)[0])
    else:
        applied = bool(bm.get("betas_applied", True))
    space = _str(z["betas_space"]) if "betas_space" in z else str(bm.get("betas_space", name))
    known = {"rotmats", "global_orient", "body_pose", "betas", "transl", "K", "body_model", "gender",
             "betas_applied", "betas_space"}
    return SavedPerson(stem=stem, params_path=pp, camera_path=cp, camera=cam, rotmats=rot, betas=betas,
                       betas_applied=applied, transl=transl, K=K, body_model=str(name), gender=str(gender),
                       betas_space=space, extra={k: v for k, v in z.items() if k not in known})


# -- encoding ----------------------------------------------------------------------------

def mesh_block(frame: str, transl: np.ndarray) -> dict[str, Any]:
    """The camera JSON's ``"mesh"`` block for mesh files written in ``frame``."""
    t = np.zeros(3) if frame == "camera" else np.asarray(transl, dtype=np.float64)
    return {"frame": frame, "R": np.eye(3).tolist(), "t": t.tolist(), "note": _MESH_NOTE}


class _Posed:
    """A person's posed body (model frame, before the translation), computed once."""

    def __init__(self, body: Any, p: SavedPerson) -> None:
        b = None if p.mesh_betas is None else torch.from_numpy(p.mesh_betas[None])
        out = body(torch.from_numpy(p.rotmats[None]), betas=b)
        self.vertices = out.vertices[0].numpy()
        self.joints = out.joints[0].numpy()


def _mesh_file(vertices: np.ndarray, faces: np.ndarray, fmt: str, frame: str, transl: np.ndarray) -> bytes:
    data = mesh_bytes(vertices, faces, fmt)
    t = [0.0, 0.0, 0.0] if frame == "camera" else [float(x) for x in transl]
    lines = [f"hmrcli mesh frame {_FRAME_WORDS[frame]}",
             f"X_camera = mesh.R @ X_file + mesh.t with mesh.R = I, mesh.t = [{t[0]:.6f}, {t[1]:.6f}, {t[2]:.6f}]"]
    if fmt == "obj":
        return "".join(f"# {s}\n" for s in lines).encode("utf-8") + data
    # PLY: comments go into the header, after the "format" line
    i = data.find(b"\n", data.find(b"format "))
    return data[: i + 1] + "".join(f"comment {s}\n" for s in lines).encode("ascii") + data[i + 1:]


def person_record(p: SavedPerson, posed: _Posed, frame: str, joint_names: tuple[str, ...]) -> dict[str, Any]:
    """The ``hmrcli.person/1`` record (see the module docstring)."""
    import roma  # start-up: roma imports torch._dynamo (~3 s); the default obj export needs no roma

    aa = roma.rotmat_to_rotvec(torch.from_numpy(p.rotmats)).numpy()
    jc = posed.joints + p.transl
    z = np.where(np.abs(jc[:, 2:]) < 1e-9, 1e-9, jc[:, 2:])
    uv = (jc @ p.K.T)[:, :2] / z
    rec = {k: v for k, v in p.camera.items()}
    rec["camera_schema"] = p.camera.get("schema")
    rec["schema"] = PERSON_SCHEMA
    rec["mesh"] = mesh_block(frame, p.transl)
    rec["params"] = {
        "global_orient": aa[0].tolist(),
        "body_pose": aa[1:].reshape(-1).tolist(),
        "rotmats": p.rotmats.tolist(),
        "betas": p.betas.tolist(),
        "transl": p.transl.tolist(),
        "body_model": p.body_model,
        "gender": p.gender,
        "betas_space": p.betas_space,
        "betas_applied": p.betas_applied,
    }
    rec["joints"] = {"names": list(joint_names), "camera": jc.tolist(), "image": uv.tolist()}
    rec["units"] = {**(p.camera.get("units") if isinstance(p.camera.get("units"), dict) else {}),
                    "K": "pixels", "t": "metres", "transl": "metres", "global_orient": "radians (axis-angle)",
                    "body_pose": "radians (axis-angle, 23 joints x 3)", "joints.camera": "metres",
                    "joints.image": "pixels"}
    rec["source"] = {"params": str(p.params_path), "camera": str(p.camera_path)}
    rec["hmrcli"] = __version__
    return rec


def _npz(p: SavedPerson) -> bytes:
    import roma  # start-up: roma imports torch._dynamo (~3 s); the default obj export needs no roma

    aa = roma.rotmat_to_rotvec(torch.from_numpy(p.rotmats)).numpy()
    return npz_bytes(**p.extra, global_orient=aa[0], body_pose=aa[1:].reshape(-1), betas=p.betas,
                     transl=p.transl, rotmats=p.rotmats, K=p.K, body_model=np.array(p.body_model),
                     gender=np.array(p.gender), betas_space=np.array(p.betas_space),
                     betas_applied=np.array(p.betas_applied))


def _glb(body: Any, p: SavedPerson, frame: str, with_camera: bool) -> bytes:

    cam = None
    if with_camera:
        img = p.camera.get("image") if isinstance(p.camera.get("image"), dict) else {}
        try:
            w, h = int(img["width"]), int(img["height"])
        except (KeyError, TypeError, ValueError):
            raise ResultsError(f"{p.camera_path}: no image width/height for the GLB camera") from None
        pos = np.zeros(3) if frame == "camera" else -p.transl
        cam = {"K": p.K, "width": w, "height": h, "position": pos}
    extras = {"hmrcli": __version__, "frame": frame, "mesh": mesh_block(frame, p.transl),
              "axes": "X_glb = diag(1, -1, -1) X_file (glTF +Y up); X_file as in the camera JSON's mesh block",
              "body_model": {"name": p.body_model, "gender": p.gender, "betas_applied": p.betas_applied},
              "betas": p.betas.tolist(), "transl": p.transl.tolist(),
              "note": "linear blend skinning only: pose-corrective blend shapes are not represented"}
    return skinned_glb_bytes(body, p.rotmats, p.mesh_betas, transl=p.transl if frame == "camera" else None,
                             camera=cam, name=p.stem, extras=extras)


def _png(image_rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image_rgb[..., ::-1]))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


# -- the batch ---------------------------------------------------------------------------

def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _append_error(out: Path, rec: dict[str, str]) -> None:
    append_json_line(out / "errors.jsonl", rec)


def run_export(
    results_dir: str | os.PathLike,
    opts: ExportOptions,
    progress: Callable[[dict[str, Any]], None] | None = None,
    skip: Callable[[str], bool] | None = None,
) -> ExportSummary:
    """Re-export every complete image below ``results_dir`` in ``opts.formats``.
    ``progress`` receives ``{"event": "error", ...}`` per failure and one ``"done"`` event
    per image (with its counts). Raises ResultsError when ``results_dir`` holds no results.
    ``skip(name)``: leave out the images it says (names as :func:`find_result_images` gives)."""
    t0 = time.perf_counter()
    root = Path(results_dir)
    if not root.is_dir():
        raise ResultsError(f"{root}: not a folder")
    images = find_result_images(root)
    if not images:
        raise ResultsError(f"{root}: no results found (no result.json below it; run `hmrcli infer` first)")
    if skip is not None:  # e.g. the frames of sequences, exported as tracks (hmrcli.export.tracks)
        images = [(name, d) for name, d in images if not skip(name)]
    out = Path(opts.out)
    summ = ExportSummary(images=len(images))
    person_fmts = [f for f in opts.formats if f in PERSON_FORMATS]
    bodies: dict[tuple[str, str], Any] = {}  # a BodyModel, or the reason it cannot be loaded

    def fail(file: Path | str, message: str, fmt: str | None = None) -> None:
        rec = {"file": str(file), "stage": "export", "message": message}
        if fmt:
            rec["format"] = fmt
        _append_error(out, rec)
        summ.errors.append(rec)
        if progress:
            progress({"event": "error", **rec})

    def body_for(p: SavedPerson) -> Any:

        key = (p.body_model, p.gender)
        if key not in bodies:
            try:
                bodies[key] = load_body_model(p.body_model, gender=p.gender, smpl_dir=opts.smpl_dir)
            except Exception as e:  # missing SMPL files, bad model file: fail these persons only
                bodies[key] = f"body model {p.body_model!r} ({p.gender}): {e}"
        if isinstance(bodies[key], str):
            raise ResultsError(f"{p.params_path}: {bodies[key]}")
        return bodies[key]

    for name, d in images:
        od = out if name == "." else out / name
        try:
            stems = person_stems(d)
        except OSError as e:
            fail(d, f"{d}: cannot list the folder ({e})")
            summ.failed += 1
            continue
        summ.persons += len(stems)
        counts = {"written": 0, "skipped": 0, "failed": 0}
        people: dict[str, SavedPerson | ResultsError] = {}
        posed_cache: dict[str, _Posed] = {}

        def load(stem: str) -> SavedPerson:
            if stem not in people:
                try:
                    people[stem] = read_person(d, stem)
                except ResultsError as e:
                    people[stem] = e
            p = people[stem]
            if isinstance(p, ResultsError):
                raise p
            return p

        def posed_of(p: SavedPerson) -> _Posed:
            if p.stem not in posed_cache:
                body = body_for(p)
                try:
                    posed_cache[p.stem] = _Posed(body, p)
                except Exception as e:
                    raise ResultsError(f"{p.params_path}: cannot pose the body ({type(e).__name__}: {e})") from None
            return posed_cache[p.stem]

        def record(ok: bool, wrote: int) -> None:
            summ.written += wrote
            counts["written"] += wrote
            if not ok:
                summ.failed += 1
                counts["failed"] += 1
            elif wrote:
                summ.done += 1
            else:
                summ.skipped += 1
                counts["skipped"] += 1

        def passes(stem: str) -> bool:
            """With --min-quality: whether the person's quality score reaches it (counted when not)."""
            if opts.min_quality is None:
                return True
            q = load(stem).camera.get("quality")
            score = q.get("score") if isinstance(q, dict) else None
            if not isinstance(score, (int, float)):
                summ.quality_unknown += 1
                counts["below_quality"] += 1
                return False
            if not score >= opts.min_quality:
                summ.below_quality += 1
                counts["below_quality"] += 1
                return False
            return True

        counts["below_quality"] = 0
        kept: list[str] = []
        for stem in stems:
            if opts.min_quality is not None:
                try:
                    ok = passes(stem)
                except ResultsError as e:
                    fail(d / f"{stem}.params.npz", str(e))
                    record(False, 0)
                    continue
                if not ok:
                    record(True, 0)
                    continue
            kept.append(stem)
            targets = {f: od / f"{stem}{_SUFFIX[f]}" for f in person_fmts}
            # never write over a file being read (npz into the results folder itself)
            pending = [f for f, t in targets.items()
                       if (opts.overwrite or not t.exists()) and not _same_file(t, d / f"{stem}.params.npz")]
            if not pending:
                record(True, 0)
                continue
            try:
                p = load(stem)
            except ResultsError as e:
                fail(d / f"{stem}.params.npz", str(e))
                record(False, 0)
                continue
            ok, wrote = True, 0
            need_body = [f for f in pending if f != "npz"]  # npz needs no body model
            if need_body:
                try:
                    posed = posed_of(p)
                except ResultsError as e:
                    fail(p.params_path, str(e), ",".join(need_body))
                    ok, pending = False, [f for f in pending if f == "npz"]
            for fmt in pending:
                try:
                    if fmt in ("obj", "ply"):
                        mesh_frame = (p.camera.get("mesh") or {}).get("frame") if isinstance(p.camera.get("mesh"), dict) else None
                        if od.resolve() == d.resolve() and mesh_frame not in (None, opts.mesh_frame):
                            raise ResultsError(
                                f"{targets[fmt]}: would write {opts.mesh_frame}-frame vertices next to {p.camera_path.name}, "
                                f"whose mesh block says {mesh_frame!r}; export to another --out folder")
                        v = posed.vertices + p.transl if opts.mesh_frame == "camera" else posed.vertices
                        data = _mesh_file(v, body_for(p).faces, fmt, opts.mesh_frame, p.transl)
                        atomic_write_bytes(targets[fmt], data)
                    elif fmt == "glb":
                        atomic_write_bytes(targets[fmt], _glb(body_for(p), p, opts.mesh_frame, opts.glb_camera))
                    elif fmt == "json":
                        rec = person_record(p, posed, opts.mesh_frame, tuple(body_for(p).joint_names))
                        atomic_write_text(targets[fmt], json_text(rec, indent=1))
                    elif fmt == "npz":
                        atomic_write_bytes(targets[fmt], _npz(p))
                    wrote += 1
                except Exception as e:
                    ok = False
                    msg = str(e) if isinstance(e, ResultsError) else f"{targets[fmt]}: {type(e).__name__}: {e}"
                    fail(p.params_path, msg, fmt)
            record(ok, wrote)

        if "overlay" in opts.formats:
            target = od / OVERLAY_NAME
            if target.exists() and not opts.overwrite:
                record(True, 0)
            else:
                image_path: Path | str = d / "result.json"
                try:
                    meshes, first, colors = [], None, []
                    for stem in kept:
                        try:
                            p = load(stem)
                            posed = posed_of(p)
                        except ResultsError as e:
                            raise ResultsError(f"{target}: not drawn, a person cannot be read: {e}") from None
                        first = first or p
                        meshes.append((posed.vertices + p.transl, np.asarray(body_for(p).faces)))
                        q = p.camera.get("quality")
                        colors.append(quality_color(q.get("score") if isinstance(q, dict) else None))
                    like = first
                    for stem in stems if like is None else ():  # everybody left out by --min-quality
                        try:
                            like = load(stem)
                            break
                        except ResultsError:
                            continue
                    image_path = _overlay_image_path(d, like)
                    atomic_write_bytes(target, _overlay(image_path, meshes, first,
                                                        colors=colors if opts.overlay_quality else None, like=like))
                    record(True, 1)
                except Exception as e:
                    msg = str(e) if isinstance(e, ResultsError) else f"{target}: {type(e).__name__}: {e}"
                    fail(image_path, msg, "overlay")
                    record(False, 0)
        if progress:
            progress({"event": "done", "file": name, "persons": len(stems), "out": str(od), **counts})
    summ.seconds = time.perf_counter() - t0
    return summ


def _overlay_image_path(d: Path, p: SavedPerson | None) -> Path:
    img = p.camera.get("image") if p is not None and isinstance(p.camera.get("image"), dict) else None
    path = img.get("path") if img else None
    if not path:
        try:
            path = json.loads((d / "result.json").read_text(encoding="utf-8")).get("image")
        except (OSError, ValueError, AttributeError):
            path = None
    if not path:
        raise ResultsError(f"{d}: no source image path recorded (camera JSON image.path / result.json image)")
    return Path(path)


def _overlay(image_path: Path, meshes: list[tuple[np.ndarray, np.ndarray]], p: SavedPerson | None,
             colors: list[tuple[float, float, float]] | None = None, like: SavedPerson | None = None) -> bytes:
    """The overlay PNG: ``meshes`` drawn over the source image with ``p``'s camera (``colors``
    per mesh, None: the default palette); no person: the image itself (checked against
    ``like``'s recorded size when given)."""

    if not image_path.is_file():
        raise ResultsError(f"{image_path}: source image not found (the overlay needs the original image; "
                           "run the export from the folder `hmrcli infer` ran in, or restore the image)")
    try:
        image = read_image(image_path)
    except ImageReadError as e:
        raise ResultsError(str(e)) from None
    if p is None:
        p = like
        if p is None:
            return _png(image)  # nobody to draw
        meshes = []
    img = p.camera.get("image") or {}
    w, h = img.get("width"), img.get("height")
    if (w, h) != (image.shape[1], image.shape[0]) and w is not None:
        raise ResultsError(f"{image_path}: image is {image.shape[1]}x{image.shape[0]} but the results were made "
                           f"from a {w}x{h} image; it is not the same image")
    if not meshes:
        return _png(image)
    return _png(render_overlay(image, meshes=meshes, K=p.K, colors=colors))
