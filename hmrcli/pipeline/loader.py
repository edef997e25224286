"""The loader thread: decode (prefetch pool) -> detect -> ``engine.prepare``, in input order, into a bounded queue."""

from __future__ import annotations

import functools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hmrcli.detect import detect_sources
from hmrcli.engine.base import PersonBox, Prepared
from hmrcli.intrinsics import CameraIntrinsics, IntrinsicsError
from hmrcli.pipeline.options import DEFAULT_MAX_PERSONS, InferOptions
from hmrcli.sources import ImageSource, exif_focal_px, read_image
from hmrcli.sources.device_decode import device_decode_unavailable, read_image_tensor


class _Prefetch:
    """Decode images ahead of their use, on ``workers`` threads, handing them out in order.

    :meth:`feed` yields the sources in order while keeping up to ``ahead`` of them submitted;
    :meth:`read` (called for each yielded source, in order) returns its image. Video frames
    go to one extra thread of their own, in order (a video is decoded forward; frames read
    out of order would make it re-open and seek). ``workers`` 0: decode in the caller."""

    def __init__(self, workers: int, ahead: int, reader: Callable[[ImageSource], Any] = read_image) -> None:
        self.reader = reader
        self.workers = max(0, int(workers))
        self.ahead = max(1, int(ahead))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hmrcli-decode") if self.workers else None
        self._video_pool = None
        self._queue: deque[tuple[ImageSource, Any]] = deque()

    def _submit(self, src: ImageSource):
        if self._pool is None:
            return None
        if getattr(src, "video", None) is not None:
            if self._video_pool is None:
                self._video_pool = ThreadPoolExecutor(1, thread_name_prefix="hmrcli-video")
            return self._video_pool.submit(self.reader, src)
        return self._pool.submit(self.reader, src)

    def feed(self, sources: Iterable[ImageSource], halt: threading.Event) -> Iterator[ImageSource]:
        it = iter(sources)
        exhausted = False
        while not halt.is_set():
            while not exhausted and len(self._queue) < self.ahead:
                src = next(it, None)
                if src is None:
                    exhausted = True
                    break
                self._queue.append((src, self._submit(src)))
            if not self._queue:
                return
            yield self._queue[0][0]

    def read(self, src: ImageSource) -> np.ndarray:
        s, fut = self._queue.popleft()
        if s is not src:  # feed() and read() out of step: a bug, not a bad input
            raise RuntimeError("decoder out of order")
        return self.reader(src) if fut is None else fut.result()

    def close(self) -> None:
        for _, fut in self._queue:
            if fut is not None:
                fut.cancel()
        self._queue.clear()
        for pool in (self._pool, self._video_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def _camera_for(src: ImageSource, image: np.ndarray, opts: InferOptions) -> CameraIntrinsics:
    """The camera of one image and where it came from: ``--intrinsics FILE`` (its entry for
    the image, else its default K; raises IntrinsicsError when it has neither), else
    ``--focal`` / the photo's EXIF focal length (files only, not video frames) / the default
    sqrt(W^2 + H^2), with ``--principal-point`` or the image centre."""
    if opts.intrinsics is not None:
        return opts.intrinsics.lookup(src.path)
    pp = opts.principal_point
    pp_note = f", principal point --principal-point {pp[0]:g},{pp[1]:g}" if pp is not None else ""
    if opts.focal:
        return CameraIntrinsics(float(opts.focal), pp, "--focal" + pp_note)
    if opts.exif_focal and getattr(src, "video", None) is None:
        h, w = image.shape[:2]
        got = exif_focal_px(src.path, w, h)
        if got is not None and got[0] is not None:
            return CameraIntrinsics(float(got[0]), pp, got[1] + pp_note)
        if got is not None:  # an implausible EXIF focal: the default, and why
            return CameraIntrinsics(None, pp, f"default sqrt(W^2 + H^2); {got[1]}" + pp_note)
    return CameraIntrinsics(None, pp, "default sqrt(W^2 + H^2)" + pp_note)


@dataclass
class _Job:
    """One prepared image on its way from the loader to the engine. ``indices``: each
    person's index among the image's detections (persons with unusable boxes are left out);
    ``notes``: why persons were left out; ``image``: kept only for the overlay."""

    src: ImageSource
    prepared: Prepared
    persons: list[PersonBox]
    indices: list[int]
    notes: list[str]
    image: np.ndarray | None
    camera: CameraIntrinsics | None = None
    found_by: str = "detector"  # what looked for the persons (named in a "no person found" problem)
    capped: list[str] = field(default_factory=list)  # persons left out by the default cap (a note, not a failure)


#: smallest person box reconstructed, in pixels (width and height): a box of one pixel (e.g. the
#: whole picture of a 1x1 image) holds no person to reconstruct
MIN_BOX_PX = 2.0


def _usable_persons(src: ImageSource, item: Any) -> tuple[list[PersonBox], list[int], list[str]]:
    """The persons whose boxes can be cropped (finite, at least MIN_BOX_PX wide and high),
    their detection indices, and a note for each one left out."""
    persons, indices, notes = [], [], []
    for k, d in enumerate(item.detections):
        box = np.asarray(d.box_xyxy, dtype=np.float64)
        w, h = (float(box[2] - box[0]), float(box[3] - box[1])) if box.shape == (4,) else (float("nan"),) * 2
        if not (np.all(np.isfinite(box)) and w >= MIN_BOX_PX and h >= MIN_BOX_PX):
            notes.append(f"{src.path}: person {k}: box {np.round(box, 1).tolist()} ({w:.0f}x{h:.0f} px) is too small "
                         f"to reconstruct (image {item.width}x{item.height} px)")
            continue
        persons.append(PersonBox(box, d.score, d.detector))
        indices.append(k)
    return persons, indices, notes


class _Loader(threading.Thread):
    """The loader thread: decode (prefetch pool) -> detect -> ``engine.prepare``, in input
    order, into a bounded queue. Messages: ("item", _Job), ("error", src, stage, message),
    ("skip", src, why) (left to another process), ("fatal", exception), ("end",)."""

    def __init__(self, todo: list[ImageSource], engine: Any, opts: InferOptions, detector: Any,
                 halt: threading.Event, claim: Callable[[ImageSource], str | None] | None = None) -> None:
        super().__init__(name="hmrcli-loader", daemon=True)
        self.todo, self.engine, self.opts, self.detector, self.halt = todo, engine, opts, detector, halt
        self.claim = claim
        self.queue: queue.Queue = queue.Queue(maxsize=max(2, 2 * int(opts.images_per_step)))
        label = getattr(detector, "detector_label", None) or getattr(detector, "name", type(detector).__name__)
        self.found_by = f"detector {label}"

    def _claimed(self) -> Iterator[ImageSource]:
        """The sources to do, less those ``claim`` leaves to another process (a ("skip", src,
        why) message each)."""
        for src in self.todo:
            why = self.claim(src) if self.claim is not None else None
            if why is None:
                yield src
            elif not self.put(("skip", src, why)):
                return

    def put(self, msg: tuple) -> bool:
        while not self.halt.is_set():
            try:
                self.queue.put(msg, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def image_reader(self) -> tuple[Callable[[ImageSource], Any], str]:
        """How images are decoded, and its name: into the engine's device (``nvjpeg``: JPEGs
        by nvJPEG, :func:`hmrcli.sources.read_image_tensor`) when the engine takes device
        images (``engine.image_device``), nothing needs the pixels on the host (the detector
        reads boxes, ``needs_pixels`` False; no overlay) and nvJPEG is usable; else on the host."""
        dev = getattr(self.engine, "image_device", None)
        if (dev is not None and not getattr(self.detector, "needs_pixels", True) and not self.opts.overlay
                and device_decode_unavailable(dev) is None):
            return functools.partial(read_image_tensor, device=dev), "nvjpeg"
        return read_image, "host"

    def run(self) -> None:
        opts = self.opts
        reader, self.decode = self.image_reader()
        pre = _Prefetch(opts.workers, ahead=max(2, 2 * opts.workers), reader=reader)
        srcs = pre.feed(self._claimed(), self.halt)
        items = None
        try:
            items = detect_sources(srcs, self.detector, batch_size=opts.images_per_step, read=pre.read,
                                   max_persons=opts.max_persons or None)
            for item in items:
                if self.halt.is_set():
                    break
                src = item.source
                if item.error is not None:
                    if not self.put(("error", src, *item.error)):
                        break
                    continue
                cut = []
                if opts.max_persons is None and len(item.detections) > DEFAULT_MAX_PERSONS:
                    n = len(item.detections)
                    item.detections = sorted(item.detections, key=lambda d: -(d.score if d.score is not None else 0.0)
                                             )[:DEFAULT_MAX_PERSONS]
                    cut = [f"{src.path}: {n} persons given or found; the {DEFAULT_MAX_PERSONS} highest-scoring are "
                           "reconstructed (--max-persons N to choose another limit)"]
                persons, indices, notes = _usable_persons(src, item)
                if item.detections and not persons:  # a 1x1 image, degenerate boxes: nothing to crop
                    if not self.put(("error", src, "crop", "; ".join(notes))):
                        break
                    continue
                try:
                    camera = _camera_for(src, item.image, opts)
                except IntrinsicsError as e:
                    if not self.put(("error", src, "camera", f"{src.path}: {e}")):
                        break
                    continue
                try:
                    # engines take (image, persons, focal[, principal]); the principal point is passed
                    # only when one is known, so engines written before it keep working
                    extra = () if camera.principal is None else (camera.principal,)
                    prepared = self.engine.prepare(item.image, persons, camera.focal, *extra)
                except Exception as e:
                    if not self.put(("error", src, "crop", f"{src.path}: {type(e).__name__}: {e}")):
                        break
                    continue
                job = _Job(src, prepared, persons, indices, notes, item.image if opts.overlay else None, camera,
                           self.found_by, cut)
                if not self.put(("item", job)):
                    break
                del item, prepared, job  # hold nothing while waiting for the next image
        except BaseException as e:  # DetectorUnavailable (a broken installation), bugs: end the run
            self.put(("fatal", e))
        finally:
            for gen in (items, srcs):
                if gen is not None:
                    try:
                        gen.close()
                    except Exception:
                        pass
            pre.close()
            self.put(("end",))
