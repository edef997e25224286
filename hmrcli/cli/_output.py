"""Output helpers shared by the commands: rich on a terminal, JSON otherwise."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

stdout = Console()
stderr = Console(stderr=True)


def want_json(flag: bool | None) -> bool:
    """Explicit ``--json/--no-json`` wins; otherwise JSON when stdout is not a terminal."""
    if flag is not None:
        return flag
    return not sys.stdout.isatty()


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()
