"""Which torch device a ``device`` setting names: the one rule shared by the command line, the
engine and detector specs (also in Ray workers, where the setting is resolved on the worker's
own machine)."""

from __future__ import annotations

__all__ = ["DeviceUnavailable", "resolve_device"]


class DeviceUnavailable(ValueError):
    """A CUDA device was asked for on a machine (or a torch build) without one."""


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when this process sees a CUDA device, else ``cpu``; ``cpu`` and
    other non-CUDA names as given; ``cuda`` / ``cuda:N`` as given when CUDA is available, else
    :class:`DeviceUnavailable`."""
    name = str(name)
    if name != "auto" and not name.startswith("cuda"):
        return name
    import torch  # start-up: torch takes ~3 s to import, only when a device is resolved

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {name!r}: CUDA is not available on this machine (torch {torch.__version__}; "
                                "hmrcli doctor shows devices)")
    return name
