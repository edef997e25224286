"""Writers: meshes (OBJ/PLY), camera JSON, body-model parameters (NPZ), all atomic."""

from hmrcli.export.writers import (
    atomic_write_bytes,
    atomic_write_text,
    mesh_bytes,
    npz_bytes,
    safe_relative_name,
)

__all__ = ["atomic_write_bytes", "atomic_write_text", "mesh_bytes", "npz_bytes", "safe_relative_name"]
