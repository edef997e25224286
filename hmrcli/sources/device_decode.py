"""Decoding images straight into device memory: JPEG files on the GPU (nvJPEG), anything
else through :func:`hmrcli.sources.read_image` and one upload.

When the regression engine cuts its crops on a CUDA device and the person boxes come from a
file or an earlier ``hmrcli detect`` (no detector needs the pixels on the host), a decoded
image is only ever used on the GPU. Then a JPEG is decoded there by nvJPEG through
``torchvision.io.decode_jpeg(device="cuda")`` (torchvision is the maintained binding of
nvJPEG for torch; hmrcli does not bind the library itself): only the compressed bytes cross
the bus, and the host's cores are left to the other stages.

Everything about what a file may be stays as :func:`hmrcli.sources.decode_image` rules it
(size limits, truncated files, the EXIF orientation): the header is checked on the host
first, the orientation is applied on the device (:func:`orient_tensor`, the same 8 cases as
:func:`hmrcli.sources.probe.apply_orientation`). Whatever nvJPEG does not decode (other
formats, CMYK or 12-bit JPEGs, a torchvision without nvJPEG, the CPU) goes through the host
decoder and is uploaded: the result is the same image, within JPEG decoder tolerance (both
are IDCTs of the same coefficients; chroma up-sampling may differ by a few grey levels).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hmrcli.sources.base import _FRAME_RE, MAX_PIXELS, ImageSource
from hmrcli.sources.decode import _read_bytes, decode_image, read_image
from hmrcli.sources.probe import image_orientation, jpeg_scan_offset, probe_image

__all__ = ["orient_tensor", "device_decode_unavailable", "decode_image_tensor", "read_image_tensor"]


def orient_tensor(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Stored pixels (H, W, C) -> displayed pixels for an EXIF Orientation (1..8), on any
    device: exactly :func:`hmrcli.sources.probe.apply_orientation` (which uses numpy's
    negative strides; torch has none, so flips copy)."""
    if orientation == 2:
        return img.flip(1)
    if orientation == 3:
        return img.flip(0, 1)
    if orientation == 4:
        return img.flip(0)
    if orientation == 5:
        return img.transpose(0, 1)
    if orientation == 6:
        return img.transpose(0, 1).flip(1)
    if orientation == 7:
        return img.transpose(0, 1).flip(0, 1)
    if orientation == 8:
        return img.transpose(0, 1).flip(0)
    return img


def _nvjpeg():
    """torchvision's ``decode_jpeg`` and ``ImageReadMode``, or None with the reason."""
    try:
        # optional: torchvision (the [gpu] extra) binds nvJPEG; absent -> host decoding
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as e:  # ImportError, or a torchvision built for another torch (RuntimeError)
        return None, f"torchvision is not usable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return (decode_jpeg, ImageReadMode), ""


def device_decode_unavailable(device: str | torch.device) -> str | None:
    """None when JPEGs can be decoded on ``device`` (a CUDA device and a torchvision with
    nvJPEG), else why not (then :func:`read_image_tensor` decodes on the host)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return f"{dev.type} is not a CUDA device"
    if not torch.cuda.is_available():
        return "CUDA is not available to this torch"
    _, why = _nvjpeg()
    return why or None


def decode_image_tensor(data: bytes, device: str | torch.device, file: str | os.PathLike = "<bytes>",
                        max_pixels: int | None = None) -> tuple[torch.Tensor, str]:
    """Decode an encoded image to an RGB uint8 (H, W, 3) tensor on ``device`` and say how
    (``"nvjpeg"`` or ``"host"``). Same checks, errors (:class:`ImageReadError`) and pixels as
    :func:`hmrcli.sources.decode_image` (within JPEG decoder tolerance)."""
    dev = torch.device(device)
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    info = probe_image(data) if data else None
    if info is not None and info.format == "jpeg" and device_decode_unavailable(dev) is None:
        if info.width and info.height and info.width * info.height > limit:
            return torch.from_numpy(decode_image(data, file, max_pixels)).to(dev), "host"  # (raises the size error)
        try:
            jpeg_scan_offset(data)
            complete = data[-2:] == b"\xff\xd9" or data.find(b"\xff\xd9") >= 0
        except ValueError:
            complete = False
        if complete:
            (decode_jpeg, mode), _ = _nvjpeg()
            try:
                chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode.RGB, device=dev)
            except Exception:  # CMYK, 12-bit, damaged scans...: the host decoder says what is wrong, or copes
                chw = None
            if chw is not None:
                img = orient_tensor(chw.permute(1, 2, 0), image_orientation(data)).contiguous()
                return img, "nvjpeg"
    img = decode_image(data, file, max_pixels)
    return torch.from_numpy(img).to(dev, non_blocking=False), "host"


def read_image_tensor(source: str | os.PathLike | ImageSource, device: str | torch.device,
                      max_pixels: int | None = None) -> torch.Tensor:
    """:func:`hmrcli.sources.read_image` into a tensor on ``device``: a JPEG file decoded there
    by nvJPEG when it can be (:func:`device_decode_unavailable`), anything else (video
    frames, other formats) decoded on the host and uploaded. RGB uint8 (H, W, 3). Raises
    :class:`ImageReadError`."""
    if isinstance(source, ImageSource):
        if source.video is not None and source.frame is not None:
            return torch.from_numpy(read_image(source, max_pixels)).to(device)
        source = source.path
    path = Path(source)
    m = _FRAME_RE.match(str(path))
    if m and not os.path.lexists(path) and os.path.isfile(m.group("video")):
        return torch.from_numpy(read_image(path, max_pixels)).to(device)
    img, _ = decode_image_tensor(_read_bytes(path), device, path, max_pixels)
    return img
