"""Known checkpoints (``models/registry.json``) and name -> file resolution."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from hmrcli import assets
from hmrcli.nn.checkpoints import CheckpointError

__all__ = ["known_checkpoints", "resolve_checkpoint"]


@lru_cache(maxsize=1)
def _registry() -> dict[str, Any]:
    return json.loads(assets.asset_path("registry.json").read_text())


def known_checkpoints() -> dict[str, dict[str, Any]]:
    return dict(_registry()["checkpoints"])


def resolve_checkpoint(path_or_name: str | Path) -> Path:
    """A file path as given, or a registry name looked up in the checkpoints folder."""
    p = Path(path_or_name).expanduser()
    if p.exists():
        return p
    reg = known_checkpoints()
    name = str(path_or_name)
    if name in reg:
        entry = reg[name]
        cand = assets.checkpoints_dir() / entry["filename"]
        if cand.is_file():
            return cand
        raise CheckpointError(
            f"checkpoint {name!r} ({entry['filename']}) is not in {assets.checkpoints_dir()}. "
            f"Download it from {entry['source']} and put it there (or set HMRCLI_CHECKPOINT_DIR)."
        )
    raise CheckpointError(
        f"{name}: no such file, and not a known checkpoint name (known: {', '.join(sorted(reg))})"
    )
