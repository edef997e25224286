"""Where hmrcli finds its model assets and the user's files.

Every path to a model asset goes through this module; nothing else in the
package builds such paths itself.

Search order for the shipped assets (``models/`` in the repository):
1. ``$HMRCLI_MODELS_DIR`` if set,
2. ``hmrcli/models/`` inside the installed package (a wheel or ``pip install .``: the
   build copies the repository's ``models/`` there, see ``setup.py``),
3. the ``models/`` folder beside the package (source checkout or editable install).

User files that cannot be shipped (SMPL, checkpoints) are looked up in
``--smpl-dir`` / ``$HMRCLI_SMPL_DIR`` and ``$HMRCLI_HOME`` (default
``~/.cache/hmrcli``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = [
    "AssetNotFoundError",
    "models_dir",
    "asset_path",
    "hmrcli_home",
    "smpl_dir",
    "checkpoints_dir",
    "sha256_file",
]


class AssetNotFoundError(FileNotFoundError):
    """A model asset or user file is missing; the message says how to get it."""


def models_dir() -> Path:
    """The folder holding the shipped model assets (``models/``)."""
    env = os.environ.get("HMRCLI_MODELS_DIR")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise AssetNotFoundError(f"HMRCLI_MODELS_DIR={env} is not a folder")
        return p
    here = Path(__file__).resolve().parent
    for p in (here / "models", here.parent / "models"):
        if (p / "registry.json").is_file():
            return p
    raise AssetNotFoundError(
        f"hmrcli's model assets were found neither in the package ({here / 'models'}) nor beside it "
        f"({here.parent / 'models'}). Reinstall hmrcli (pip install . or the wheel carries them), or set "
        "HMRCLI_MODELS_DIR to a copy of the repository's models/ folder."
    )


def asset_path(relative: str, must_exist: bool = True) -> Path:
    """Path of a shipped asset, e.g. ``asset_path('body/hmrcli_free_neutral.npz')``."""
    p = models_dir() / relative
    if must_exist and not p.exists():
        raise AssetNotFoundError(
            f"model asset {relative!r} is missing from {models_dir()}; "
            "re-clone the repository or regenerate it (see models/README.md)"
        )
    return p


def hmrcli_home() -> Path:
    """Per-user folder for downloaded checkpoints and caches (``$HMRCLI_HOME``)."""
    return Path(os.environ.get("HMRCLI_HOME", "~/.cache/hmrcli")).expanduser()


def smpl_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The folder the user keeps SMPL files in: ``--smpl-dir``, ``$HMRCLI_SMPL_DIR``,
    or ``$HMRCLI_HOME/smpl`` if it exists. None when none is configured."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("HMRCLI_SMPL_DIR")
    if env:
        return Path(env).expanduser()
    p = hmrcli_home() / "smpl"
    return p if p.is_dir() else None


def checkpoints_dir() -> Path:
    """Folder scanned for regressor checkpoints (``$HMRCLI_CHECKPOINT_DIR`` or
    ``$HMRCLI_HOME/checkpoints``)."""
    env = os.environ.get("HMRCLI_CHECKPOINT_DIR")
    return Path(env).expanduser() if env else hmrcli_home() / "checkpoints"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
