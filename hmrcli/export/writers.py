"""Atomic file writing and the byte encoders of the exported formats."""

from __future__ import annotations

import io
import os
import re
import tempfile
import unicodedata
from pathlib import Path, PurePath

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "mesh_bytes", "npz_bytes", "safe_relative_name"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file in the target folder, fsync, then rename over
    ``path``: readers never see a partial file, and a crash leaves no partial output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def mesh_bytes(vertices: np.ndarray, faces: np.ndarray, fmt: str) -> bytes:
    """Encode a triangle mesh as ``obj`` or ``ply`` (binary) with trimesh; vertices as given
    (metres), faces unchanged (no merging or reordering)."""
    import trimesh

    if fmt not in ("obj", "ply"):
        raise ValueError(f"unknown mesh format {fmt!r} (obj or ply)")
    mesh = trimesh.Trimesh(vertices=np.asarray(vertices, dtype=np.float64), faces=np.asarray(faces),
                           process=False, validate=False)
    out = trimesh.exchange.export.export_mesh(mesh, file_obj=None, file_type=fmt)
    return out.encode("utf-8") if isinstance(out, str) else bytes(out)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def deterministic_npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez_compressed``'s format with fixed zip timestamps, order and modes, so that
    identical arrays give identical bytes (for shipped model files whose sha256 is recorded).
    Object arrays are refused (the files must load with ``allow_pickle=False``)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key, val in arrays.items():
            val = np.asarray(val)
            if val.dtype == object:
                raise ValueError(f"{key}: object arrays cannot be stored without pickle")
            one = io.BytesIO()
            np.lib.format.write_array(one, np.ascontiguousarray(val), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, one.getvalue(), compresslevel=9)
    return buf.getvalue()


_BAD = re.compile(r"[\x00-\x1f<>:\"|?*\\]")


def safe_relative_name(rel: str | PurePath) -> str:
    """A relative output name that cannot leave the output folder: ``..``, absolute
    prefixes, control and reserved characters are replaced; non-ASCII letters are kept."""
    parts = []
    for p in PurePath(rel).parts:
        if p in ("", ".", "..", "/") or p.endswith(":\\"):
            continue
        p = unicodedata.normalize("NFC", _BAD.sub("_", p)).strip()
        if p in ("", ".", ".."):
            continue
        parts.append(p)
    if not parts:
        raise ValueError(f"cannot make an output name from {str(rel)!r}")
    return "/".join(parts)
