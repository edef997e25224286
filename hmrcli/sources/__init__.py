"""Inputs: files, folders, globs, stdin and video frames -> :class:`ImageSource` -> RGB images.

Expanding inputs (:func:`expand_inputs`)
----------------------------------------
* **file** -- taken as given (errors, e.g. a missing file, are reported when it is read). A
  video (recognised by content) becomes one source per kept frame (``frame_stride``); a
  ``.jsonl``/``.json``/``.ndjson`` file whose text starts with ``{`` is a list of records (below).
* **folder** -- walked recursively, sorted by name (per folder: its files, then its
  sub-folders); symlinked folders are followed once (a symlink loop cannot recurse); hidden
  entries (``.name``) are skipped; non-regular files (FIFOs, sockets, devices) are kept and
  refused when read, without being opened (so they are recorded, and never block). A file is
  an image or a video by its CONTENT (magic bytes), not its extension: ``scan.txt`` holding a
  PNG is an image. A file with an image/video extension whose content is not one (a text file
  named ``.jpg``) and a file that cannot be examined (no permission, symlink loop, dangling
  link) are kept, so that reading it gives a per-file error; other files are skipped.
* **glob** (``*``, ``?``, ``[``; ``**`` recursive) -- each match as a file or folder; names are
  relative to the pattern's folder part. A pattern matching nothing is kept as a (missing) file.
* ``-`` -- stdin: one path (file, folder or glob) per line, or NUL-separated (``find -print0``);
  or JSON lines of records from an earlier stage (``hmrcli.detections/1`` of ``hmrcli detect``,
  ``hmrcli.crop-event/1`` lines of ``hmrcli crop --json``, ``hmrcli.crops/1``), or one COCO
  annotations JSON. Record sources carry their record (:attr:`ImageSource.record`: path, size,
  persons), whose boxes the commands use instead of a detector. See :mod:`hmrcli.records`.

Every source has an output ``name`` (relative, never escaping the output folder: ``..`` and
absolute prefixes are dropped by :func:`hmrcli.records.safe_relative_name`): the path
below a given folder or glob base, else the file name; a video frame is
``<video name>/frame_000123.png`` (frame index, from 0). Names are unique: a clash (``a/x.jpg``
and ``b/x.jpg`` given as files) is resolved with more of the path, then ``~2``, ``~3``...

Sharding (:func:`shard_sources`): ``--shard I/N`` (``0 <= I < N``) keeps the I-th of N
contiguous blocks of the expanded list (block sizes differ by at most one). The list, and so
the split, is deterministic for the same inputs; contiguous blocks keep a video's frames
together, so each job decodes only its stretch of the video.

Reading (:func:`read_image`) -> RGB ``uint8`` (H, W, 3), C-contiguous, or :class:`ImageReadError`
with (file, stage, message):

* EXIF orientation is applied (JPEG, PNG ``eXIf``, WebP ``EXIF``, TIFF): pixels come out as
  a viewer shows them, and ``width``/``height`` are those of the rotated image.
* grey -> RGB; 16-bit -> 8-bit by ``round(v / 257)`` (full range, linear); CMYK JPEG -> RGB
  (OpenCV's conversion); an alpha channel (PNG, WebP) is composited over mid-grey
  (:data:`ALPHA_BACKGROUND` = 128), so transparent cut-outs get a neutral background; other
  formats' alpha is dropped.
* Size limit (:data:`MAX_PIXELS`, 100 megapixels; environment variable ``HMRCLI_MAX_PIXELS``
  overrides): larger images are REFUSED, not downscaled -- the size is read from the file
  header BEFORE decoding (PNG, JPEG, GIF, BMP, WebP, TIFF, PNM/PAM/PFM, Radiance HDR,
  JPEG 2000, Sun raster), so a 20000x20000 image costs no memory. Downscaling was not chosen:
  it needs the full decode for most formats, and boxes given for the image would no longer
  match. Formats whose header is not parsed here are checked after decoding (OpenCV's own
  limit, 2^30 pixels, bounds that decode). Files over :data:`MAX_FILE_BYTES` are refused.
* A JPEG without its end-of-image marker is reported as truncated (older OpenCV versions
  return a half-grey picture for it); a zero-byte file, text, HEIC/AVIF and undecodable data
  get their own messages.
* Video frames are decoded lazily with ``cv2.VideoCapture``: one open capture per video,
  read forward frame by frame (re-opened only to go back), so memory stays flat and the
  frames are exactly those of a sequential decode. A frame source's ``path`` is
  ``<video path>#frame=<index>``; ``read_image`` accepts that string (when no such file
  exists) as well as the :class:`ImageSource`.

The package: :mod:`.base` (``ImageSource``, ``ImageReadError``, suffixes, limits),
:mod:`.probe` (format and size from the headers, EXIF: read by Pillow), :mod:`.decode` (image
files and video frames to RGB), :mod:`.expand` (inputs -> sources, shards).
"""

from hmrcli.sources.base import (
    ALPHA_BACKGROUND,
    IMAGE_SUFFIXES,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    RECORD_SUFFIXES,
    VIDEO_SUFFIXES,
    ImageReadError,
    ImageSource,
)
from hmrcli.sources.decode import (
    _CAPTURES,
    close_videos,
    decode_image,
    read_image,
    video_frame_count,
)
from hmrcli.sources.expand import (
    expand_inputs,
    parse_shard,
    probe_file,
    shard_sources,
    sources_from_records,
)
from hmrcli.sources.probe import (
    FULL_FRAME_DIAGONAL_MM,
    ImageInfo,
    apply_orientation,
    exif_focal_px,
    exif_orientation,
    probe_image,
)

__all__ = [
    "ImageSource", "ImageReadError", "ImageInfo", "expand_inputs", "read_image", "decode_image", "probe_image",
    "probe_file", "parse_shard", "shard_sources", "sources_from_records", "video_frame_count", "close_videos",
    "exif_focal_px", "exif_orientation", "apply_orientation", "FULL_FRAME_DIAGONAL_MM",
    "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "RECORD_SUFFIXES", "MAX_PIXELS", "MAX_FILE_BYTES", "ALPHA_BACKGROUND",
    "_CAPTURES",
]
