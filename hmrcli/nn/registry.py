"""Known checkpoints (``models/registry.json``): name -> file resolution, fetch, verify.

Registry entry fields: ``filename``, ``layout``, ``arch``, ``backbone``, ``num_rois``,
``url`` (direct download URL, or null when the publisher only offers an interactive page),
``source`` (where to get it by hand), ``sha256`` (full digest, or null when unknown),
``licence``, ``published`` (3DPW figures from the paper/release).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from hmrcli import assets
from hmrcli.nn.checkpoints import CheckpointError

__all__ = ["known_checkpoints", "resolve_checkpoint", "fetch_checkpoint", "verify_checkpoint", "FetchError"]


class FetchError(RuntimeError):
    """A checkpoint could not be downloaded; the message says how to place it by hand."""


def _registry() -> dict[str, Any]:
    return json.loads(assets.asset_path("registry.json").read_text())


def known_checkpoints() -> dict[str, dict[str, Any]]:
    return dict(_registry()["checkpoints"])


def _manual(entry: dict[str, Any], dest: Path) -> str:
    return (f"Download {entry['filename']} by hand from {entry['source']} and put it at {dest / entry['filename']} "
            "(or set HMRCLI_CHECKPOINT_DIR to the folder that holds it).")


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


def fetch_checkpoint(
    name: str,
    dest: str | os.PathLike | None = None,
    timeout: float = 15.0,
    overwrite: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download a registry checkpoint into ``dest`` (default: the checkpoints folder),
    streaming to a temporary file, checking its sha256 when the registry knows it, then
    renaming it into place. Fails fast, with the manual alternative, when offline."""
    reg = known_checkpoints()
    if name not in reg:
        raise FetchError(f"{name!r} is not a known checkpoint (known: {', '.join(sorted(reg))})")
    entry = reg[name]
    dest = Path(dest) if dest is not None else assets.checkpoints_dir()
    target = dest / entry["filename"]
    if target.is_file() and not overwrite:
        return target
    url = entry.get("url")
    if not url:
        raise FetchError(f"{name}: the publisher offers no direct download URL. {_manual(entry, dest)}")
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{entry['filename']}.", suffix=".part", dir=dest)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    total = getattr(r, "length", None)
                    got = 0
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
                        h.update(chunk)
                        got += len(chunk)
                        if progress:
                            progress(got, total)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise FetchError(f"{name}: cannot download {url} ({reason}). {_manual(entry, dest)}") from None
        digest = h.hexdigest()
        want = entry.get("sha256")
        if want and digest != want:
            raise FetchError(f"{name}: downloaded file has sha256 {digest}, expected {want}; not kept. "
                             f"{_manual(entry, dest)}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def verify_checkpoint(path_or_name: str | os.PathLike) -> dict[str, Any]:
    """sha256 of a checkpoint file, compared with the registry when the file is known,
    and whether it loads (layout, architecture, backbone, M)."""
    from hmrcli.nn.checkpoints import load_checkpoint

    path = resolve_checkpoint(path_or_name)
    digest = assets.sha256_file(path)
    reg = known_checkpoints()
    entry_name = next((n for n, e in reg.items() if e["filename"] == path.name or n == str(path_or_name)), None)
    rep: dict[str, Any] = {"path": str(path), "sha256": digest, "registry_name": entry_name}
    if entry_name is not None:
        want = reg[entry_name].get("sha256")
        rep["sha256_expected"] = want
        rep["sha256_ok"] = (digest == want) if want else None
    try:
        _, cfg = load_checkpoint(path)
        rep.update(loads=True, layout=cfg.provenance.get("layout", "native"), arch=cfg.arch, backbone=cfg.backbone,
                   num_rois=cfg.num_rois)
    except CheckpointError as e:
        rep.update(loads=False, error=str(e))
    rep["ok"] = rep["loads"] and rep.get("sha256_ok") is not False
    return rep
