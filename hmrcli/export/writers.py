"""Atomic file writing and the byte encoders of the exported formats."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from hmrcli.files import atomic_write_bytes, atomic_write_text  # the one atomic writer
from hmrcli.records import (
    safe_relative_name,  # the output-naming rule lives with the records
)

__all__ = ["atomic_write_bytes", "atomic_write_text", "mesh_bytes", "npz_bytes", "safe_relative_name"]


def mesh_bytes(vertices: np.ndarray, faces: np.ndarray, fmt: str) -> bytes:
    """Encode a triangle mesh as ``obj`` or ``ply`` (binary) with trimesh; vertices as given
    (metres), faces unchanged (no merging or reordering)."""
    import trimesh  # start-up: trimesh takes ~1.3 s to import; hmrcli.export.writers is used by `hmrcli detect`

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
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key, val in arrays.items():
            val = np.asarray(val)
            if val.dtype == object:
                raise ValueError(f"{key}: object arrays cannot be stored without pickle")
            one = io.BytesIO()
            if not val.flags.c_contiguous:  # (np.ascontiguousarray would turn a 0-d array into 1-d)
                val = np.ascontiguousarray(val)
            np.lib.format.write_array(one, val, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, one.getvalue(), compresslevel=9)
    return buf.getvalue()


