"""The run: what is left to do, the engine on batches, the files of each image, a clean stop."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from hmrcli._version import __version__
from hmrcli.detect.whole_image import WholeImageDetector
from hmrcli.engine.base import PersonEstimate
from hmrcli.export.writers import (
    atomic_write_text,
)
from hmrcli.pipeline.layout import (
    _OUR_FILE,
    _append_error,
    _remove_stale,
    _write_overlay,
    _write_person,
)
from hmrcli.pipeline.loader import _Job, _Loader
from hmrcli.pipeline.locks import ImageLocks, ManifestTail
from hmrcli.pipeline.manifest import (
    Manifest,
    _given_boxes,
    _input_fingerprint,
    run_settings,
    settings_diff,
    settings_id,
)
from hmrcli.pipeline.options import (
    MANIFEST_NAME,
    MAX_SUMMARY_ERRORS,
    RESULT_SCHEMA,
    InferOptions,
    InferSummary,
    StopRequest,
)
from hmrcli.records import error_record
from hmrcli.sources import ImageSource


def _symlink_below(out: Path, name: str) -> Path | None:
    """The first existing symbolic link among ``out/<name>``'s folders below ``out``, or None."""
    p = out
    for part in Path(name).parts:
        p = p / part
        if p.is_symlink():
            return p
        if not p.exists():
            return None
    return None


def _outside_of(sources: list[ImageSource], out: Path) -> tuple[list[ImageSource], int]:
    """The sources that are not inside the output folder ``out`` (files or video frames whose
    file lies below it), and how many were left out."""
    try:
        root = out.resolve()
    except OSError:
        return sources, 0
    keep = []
    for src in sources:
        f = src.video if src.video is not None else src.path
        try:
            inside = Path(os.path.realpath(f)).is_relative_to(root)
        except (OSError, ValueError):
            inside = False
        if not inside:
            keep.append(src)
    return keep, len(sources) - len(keep)


def _why_redo(out: Path, src: ImageSource, man: Manifest, sid: str, settings: dict[str, Any],
              fp: dict[str, Any]) -> str | None:
    """None: the image is finished with these settings (skip it). "": it has no result yet.
    Otherwise why its result is redone."""
    d = out / src.name
    ent = man.images.get(src.name)
    has_result = (d / "result.json").is_file()
    if not has_result:
        return "its result.json is missing" if ent is not None else ""
    if ent is None:
        return "results without a manifest entry (an older hmrcli, or a run killed while finishing the image)"
    if ent.get("settings_id") != sid:
        old = man.settings.get(str(ent.get("settings_id")))
        if old is None:
            return "made with settings the manifest does not record"
        diff = settings_diff(old, settings)
        return "made with other settings: " + ", ".join(diff) if diff else None
    old_fp = ent.get("input") or {}
    if any(old_fp.get(k) != fp.get(k) for k in ("size", "mtime_ns")):
        return "the input file changed (size or modification time)"
    if old_fp.get("boxes") != fp.get("boxes"):
        return "the person boxes given for it changed"
    for f in ent.get("files") or []:
        if not (d / f).is_file():
            return "some of its files are missing"
    return None


@dataclass
class ImageDone:
    """An image finished by :func:`execute`: its files are written (``result.json`` last).
    ``warnings``: error records of its persons (and of a search that found nobody)."""

    name: str
    image: str
    out_dir: str
    persons: int
    files: list[str]
    warnings: list[dict[str, Any]]
    persons_failed: int
    no_person: bool
    worker: dict[str, Any] | None = None  # which worker made it (several workers: host, node, pid)
    flags: dict[str, int] = field(default_factory=dict)  # its persons per quality flag (written or withheld)
    below_quality: int = 0  # its persons withheld by --min-quality


@dataclass
class ImageFailed:
    """An image :func:`execute` could not finish: nothing of it is written; ``record`` is its
    ``hmrcli.error/1`` line."""

    name: str
    record: dict[str, Any]


@dataclass
class ImageSkipped:
    """An image :func:`execute` left to another process sharing the output folder (it holds
    the image's lock, or has just finished it: :mod:`hmrcli.pipeline.locks`)."""

    name: str
    image: str
    reason: str


@dataclass
class PersonsDone:
    """Progress inside the engine: ``persons`` more persons went through it (one batch)."""

    persons: int


Outcome = ImageDone | ImageFailed | ImageSkipped | PersonsDone


@dataclass
class RunPlan:
    """What a run will do, decided once before any image is read: the sources left after
    leaving out those inside the output folder, the ones to (re)do, their input
    fingerprints, the settings (and their id) the outputs depend on, and the summary so far
    (images, skipped, redone)."""

    out: Path
    todo: list[ImageSource]
    manifest_offset: int  # the manifest's size when the plan was made (bytes)
    fingerprints: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    hashed: list[dict[str, Any]]
    settings_id: str
    run_info: dict[str, Any]
    summary: InferSummary
    manifest: Manifest


def plan_run(sources: list[ImageSource], opts: InferOptions,
             settings_of: Callable[[Manifest], tuple[dict[str, Any], list[dict[str, Any]]]],
             boxes_of: Callable[[ImageSource], Any] = lambda src: None,
             emit: Callable[[dict[str, Any]], None] = lambda ev: None, run_info: dict[str, Any] | None = None) -> RunPlan:
    """The plan step of a run: read the manifest once, compute the settings
    (``settings_of(manifest)``, e.g. :func:`run_settings` of the engine and detector), and
    decide per source: skip (finished with these settings and this input), redo (and why,
    reported once per reason as a ``redo`` event) or do. ``boxes_of``: the person boxes given
    with a source (they are part of its fingerprint). The returned plan's manifest is open for
    appends by the one process that records the run (:class:`Recorder`)."""
    out = Path(opts.out)
    sources, inside = _outside_of(sources, out)
    if inside:  # e.g. `infer photos --out photos/meshes`: our own overlays are never inputs
        emit({"event": "note", "left_out": inside, "message": f"{inside} input(s) inside the output folder {out} "
                                                             "left out (hmrcli never reads from its output tree)"})
    summ = InferSummary(images=len(sources))
    man = Manifest(out, names=[s.name for s in sources])
    settings, hashed = settings_of(man)
    sid = settings_id(settings)
    fps: dict[str, dict[str, Any]] = {}
    todo: list[ImageSource] = []
    reasons: dict[str, int] = {}
    for src in sources:
        fp = _input_fingerprint(src, boxes_of(src))
        if not opts.overwrite:
            why = _why_redo(out, src, man, sid, settings, fp)
            if why is None:
                summ.skipped += 1
                emit({"event": "skipped", "file": str(src.path), "name": src.name})
                continue
            if why:
                reasons[why] = reasons.get(why, 0) + 1
                summ.redone += 1
        fps[src.name] = fp
        todo.append(src)
    for why, n in reasons.items():
        emit({"event": "redo", "images": n, "reason": why})
    return RunPlan(out, todo, man.size_read, fps, settings, hashed, sid, dict(run_info or {}), summ, man)


class Recorder:
    """The bookkeeping of a run, done by one process (the driver, with several workers):
    ``manifest.jsonl`` lines (the run line before the first image line), ``errors.jsonl``
    lines, the summary and the progress events, from the outcomes of :func:`execute`."""

    def __init__(self, plan: RunPlan, opts: InferOptions, emit: Callable[[dict[str, Any]], None]) -> None:
        self.plan, self.opts, self.emit = plan, opts, emit
        self.summary = plan.summary
        self._run_line_written = False

    def __call__(self, outcome: Outcome) -> None:
        if isinstance(outcome, ImageFailed):
            self.failed(outcome)
        elif isinstance(outcome, PersonsDone):
            self.emit({"event": "persons", "persons": outcome.persons})
        elif isinstance(outcome, ImageSkipped):
            self.summary.skipped += 1
            self.emit({"event": "skipped", "file": outcome.image, "name": outcome.name, "reason": outcome.reason})
        else:
            self.done(outcome)

    def failed(self, outcome: ImageFailed) -> None:
        rec, summ = outcome.record, self.summary
        _append_error(self.plan.out, rec)
        summ.failed += 1
        if len(summ.errors) < MAX_SUMMARY_ERRORS:
            summ.errors.append(rec)
        self.emit({"event": "error", **rec, "name": outcome.name})

    def done(self, o: ImageDone) -> None:
        plan, summ = self.plan, self.summary
        if not self._run_line_written:
            plan.manifest.append({"kind": "run", "settings_id": plan.settings_id, "settings": plan.settings,
                                  "files": plan.hashed, "hmrcli": __version__,
                                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                  **plan.run_info, "images_per_step": self.opts.images_per_step,
                                  "workers": self.opts.workers})
            self._run_line_written = True
        plan.manifest.append({"kind": "image", "name": o.name, "image": o.image, "settings_id": plan.settings_id,
                              "input": plan.fingerprints.get(o.name), "persons": o.persons, "files": o.files,
                              **({"worker": o.worker} if o.worker is not None else {})})
        for rec in o.warnings:
            _append_error(plan.out, rec)
            self.emit({"event": "warning", **rec, "name": o.name})
        summ.done += 1
        summ.persons += o.persons
        summ.persons_failed += o.persons_failed
        summ.below_quality += o.below_quality
        for f, n in o.flags.items():
            summ.flags[f] = summ.flags.get(f, 0) + n
        summ.no_person += bool(o.no_person)
        self.emit({"event": "done", "file": o.image, "name": o.name, "persons": o.persons, "out": o.out_dir})


def engine_run_info(engine: Any) -> dict[str, Any]:
    """What the manifest's run line records about the engine without comparing it on re-runs."""
    return {"device": str(getattr(engine, "device", "cpu")), "batch_size": getattr(engine, "batch_size", None)}


def run_inference(
    sources: list[ImageSource],
    engine: Any,
    opts: InferOptions,
    progress: Callable[[dict[str, Any]], None] | None = None,
    detector: Any = None,
    stop: StopRequest | None = None,
) -> InferSummary:
    """Run the engine over ``sources`` and write outputs (layout, manifest and re-run rule:
    this package's docstring, ``docs/output.md``), in this process. Persons come from
    ``detector`` (a :class:`hmrcli.detect.base.Detector`, e.g.
    ``hmrcli.detect.create_detector("auto")``, or the ``boxes`` detector over given boxes);
    without one, each image is one person whose box is the whole image.

    ``progress`` receives event dicts, from the calling thread: ``done``, ``skipped``,
    ``error`` (image failed) and ``warning`` (a person failed) per image, ``redo`` (once per
    reason why finished images are redone), ``note``. ``stop``: see :class:`StopRequest`;
    the run also stops cleanly on KeyboardInterrupt. Either way ``summary.interrupted`` says
    so. ``detector`` and the engine's ``prepare`` run on a loader thread, ``engine.run`` here.

    The same run on several processes or machines: :func:`hmrcli.pipeline.ray_executor.run_inference_ray`
    (plan here, :func:`execute` in workers, :class:`Recorder` here)."""
    t0 = time.perf_counter()
    if detector is None:
        detector = WholeImageDetector()
    emit = progress or (lambda ev: None)
    plan = plan_run(sources, opts, lambda man: run_settings(engine, opts, detector, man),
                    lambda src: _given_boxes(src, detector), emit, engine_run_info(engine))
    summ = plan.summary
    try:
        interrupted = execute(plan.todo, engine, opts, detector, plan.settings_id, Recorder(plan, opts, emit), stop,
                              plan.manifest_offset)
    finally:
        plan.manifest.close()
    summ.interrupted = interrupted
    if opts.sequence is not None and interrupted is None:
        track_sequences(sources, engine, opts, summ, emit)
    summ.seconds = time.perf_counter() - t0
    return summ


def track_sequences(sources: list[ImageSource], engine: Any, opts: InferOptions, summ: InferSummary,
                    emit: Callable[[dict[str, Any]], None]) -> None:
    """After the frames: track and smooth every sequence among ``sources``
    (:mod:`hmrcli.pipeline.sequence`), counting them in the summary."""
    from hmrcli.pipeline.sequence import finish_sequences

    kept, _ = _outside_of(sources, Path(opts.out))
    for done in finish_sequences(Path(opts.out), kept, opts.sequence, getattr(engine, "body", None), emit,
                                 force=opts.overwrite):
        if done.error:
            summ.sequences_failed += 1
        else:
            summ.sequences += 1
            summ.tracks += done.tracks


def execute(todo: list[ImageSource], engine: Any, opts: InferOptions, detector: Any, sid: str,
            record: Callable[[Outcome], None], stop: StopRequest | None = None,
            manifest_offset: int | None = None) -> str | None:
    """The execute step of a run: loader thread -> ``engine.run`` on batches -> the files of
    each image under ``opts.out``; each image's :class:`ImageDone` / :class:`ImageFailed`
    goes to ``record`` (from this thread, in completion order). Writes only ``OUT/NAME/``
    folders: the manifest and ``errors.jsonl`` are the recorder's. Returns why the run was
    interrupted (``StopRequest.reason``, "SIGINT" for a KeyboardInterrupt) or None.
    Exceptions that end the run (a broken detector installation) are raised after the loader
    thread has been joined.

    Each image is locked before it is read (:mod:`hmrcli.pipeline.locks`); one whose lock
    another process holds, or that the manifest records as finished with settings ``sid``
    beyond ``manifest_offset`` (its size when the plan was made; default: now), is an
    :class:`ImageSkipped`."""
    out = Path(opts.out)
    engine_name = getattr(engine, "name", "engine")
    interrupted: str | None = None
    locks = ImageLocks(out)
    tail = ManifestTail(out / MANIFEST_NAME, _size(out / MANIFEST_NAME) if manifest_offset is None else manifest_offset)

    def claim(src: ImageSource) -> str | None:  # (loader thread)
        try:
            if not locks.try_lock(src.name):
                return "another hmrcli process sharing the output folder is doing it"
        except OSError:
            return None  # no lock file (e.g. a read-only lock folder): work unlocked, as before locks
        if tail.finished(src.name, sid):
            locks.release(src.name)
            return "another hmrcli process sharing the output folder finished it during this run"
        return None

    def fail(src: ImageSource, stage: str, msg: str) -> None:
        record(ImageFailed(src.name, error_record(str(src.path), stage, msg)))
        locks.release(src.name)

    def finish(job: _Job, ests: list[PersonEstimate | None]) -> None:
        src, image = job.src, job.image
        d = out / src.name
        staged = ([("detect", n) for n in job.capped] + [("crop", n) for n in job.notes]
                  + [("landmarks", why) for why in job.prepared.problems if why])
        if not job.persons and not job.notes:
            staged.insert(0, ("detect", f"{src.path}: no person found ({job.found_by})"))
        ests = list(ests)
        for j, est in enumerate(ests):  # never write a NaN mesh: a non-finite estimate is a recorded failure
            if est is not None and not (np.all(np.isfinite(est.vertices_model)) and np.all(np.isfinite(est.cam_t))):
                staged.append((engine_name, f"{src.path}: person {job.indices[j]}: the estimate "
                               "is not finite (NaN/inf); nothing written for it"))
                ests[j] = None
        assessed, flag_counts = [], {}
        for j, est in enumerate(ests):  # the quality verdicts; --min-quality withholds the doubtful
            if est is None or est.quality is None:
                continue
            q, k = est.quality, job.indices[j]
            for f in q.get("flags", ()):
                flag_counts[f] = flag_counts.get(f, 0) + 1
            below = opts.min_quality is not None and not q.get("score", 0.0) >= opts.min_quality
            assessed.append({"index": k, "score": q.get("score"), "flags": list(q.get("flags", ())), "written": not below})
            if below:
                staged.append(("quality", f"{src.path}: person {k}: quality score {q.get('score')} below --min-quality "
                               f"{opts.min_quality:g} (flags: {', '.join(q.get('flags', ())) or 'none'}); no files "
                               "written for it"))
                ests[j] = None
        withheld = sum(not a["written"] for a in assessed)
        problems = [m for _, m in staged]
        kept = [(job.indices[j], est) for j, est in enumerate(ests) if est is not None]
        files: list[str] = []
        link = _symlink_below(out, src.name)
        if link is not None:  # never write through a link inside the output tree (it may point anywhere)
            fail(src, "write", f"{src.path}: {link} is a symbolic link inside the output folder; refusing to write "
                               "through it (remove it and run again)")
            return
        try:
            try:
                (d / "result.json").unlink()  # redoing: not done until the new result.json lands
            except FileNotFoundError:
                pass
            for k, est in kept:
                _write_person(d, k, est, src, engine, opts, files,
                              job.camera.source if job.camera is not None else "default sqrt(W^2 + H^2)")
            if opts.overlay and image is not None:
                files.append(_write_overlay(d, image, [est for _, est in kept], engine.body.faces,
                                            by_quality=opts.overlay_quality))
            atomic_write_text(d / "result.json", json.dumps({
                "schema": RESULT_SCHEMA, "image": str(src.path), "name": src.name, "persons": len(kept),
                "person_indices": [k for k, _ in kept], "problems": problems, "quality": assessed,
                "files": files,
                "engine": engine.name, "checkpoint": opts.checkpoint, "mesh_frame": opts.mesh_frame,
                "hmrcli": __version__,
            }, indent=1))
        except Exception as e:
            _remove_files(d, files)
            fail(src, "write", f"{src.path}: {type(e).__name__}: {e}")
            return
        except BaseException:  # abandoned (KeyboardInterrupt): leave nothing half-made
            _remove_files(d, files)
            raise
        _remove_stale(d, set(files) | {"result.json"})
        no_person = not job.persons and not job.notes
        record(ImageDone(src.name, str(src.path), str(d), len(kept), files,
                         [error_record(str(src.path), stage, why) for stage, why in staged],
                         len(job.notes) + len(job.persons) - len(kept) - withheld, no_person,
                         flags=flag_counts, below_quality=withheld))
        locks.release(src.name)

    # engines check the stop request between person batches and report progress (Engine.run)
    kw: dict[str, Any] = {"stop": stop.is_set if stop is not None else None,
                          "on_persons": lambda n: record(PersonsDone(n))}

    def run_batch(batch: list[_Job]) -> None:
        try:
            # a stop request met between person batches: only the images finished (a prefix) come
            # back; the others are left for the next run
            results = engine.run([(job.prepared, job.persons) for job in batch], **kw)
        except Exception as e:  # network / fit failure: find the image(s) it comes from
            if len(batch) > 1:
                for job in batch:
                    run_batch([job])
                return
            src = batch[0].src
            fail(src, engine_name, f"{src.path}: {type(e).__name__}: {e}")
            return
        for job, ests in zip(batch, results):
            finish(job, ests)

    if not todo:
        return None
    pending: list[_Job] = []
    halt = threading.Event()
    loader = _Loader(todo, engine, opts, detector, halt, claim)
    fatal: BaseException | None = None
    try:
        loader.start()
        n_persons = 0
        while True:
            if stop is not None and stop.is_set():
                break  # pending images (prepared, not run) are left for the next run
            try:
                msg = loader.queue.get(timeout=0.1)
            except queue.Empty:
                if not loader.is_alive() and loader.queue.empty():
                    break
                continue
            kind = msg[0]
            if kind == "end":
                batch, pending = pending, []
                run_batch(batch)
                break
            if kind == "fatal":
                fatal = msg[1]
                break
            if kind == "error":
                fail(msg[1], msg[2], msg[3])
                continue
            if kind == "skip":
                record(ImageSkipped(msg[1].name, str(msg[1].path), msg[2]))
                continue
            pending.append(msg[1])
            n_persons += len(msg[1].persons)
            del msg
            if len(pending) >= opts.images_per_step or n_persons >= engine.batch_size:
                batch, pending, n_persons = pending, [], 0
                run_batch(batch)
                del batch
    except KeyboardInterrupt:
        interrupted = (stop.reason if stop is not None and stop.reason else None) or "SIGINT"
    finally:
        halt.set()
        pending.clear()
        _join(loader)
        locks.release_all()
    if stop is not None and stop.is_set() and interrupted is None:
        interrupted = stop.reason or "SIGINT"
    if fatal is not None:
        raise fatal
    return interrupted


def _size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _join(loader: _Loader) -> None:
    """Wait for the loader to leave put() and finish the image it is on (the detector and the
    engine's landmark models must not be closed while it uses them); a KeyboardInterrupt
    meanwhile does not cut this short."""
    while loader.is_alive():
        try:
            try:
                while True:
                    loader.queue.get_nowait()
            except queue.Empty:
                pass
            loader.join(timeout=0.1)
        except KeyboardInterrupt:
            continue


def _remove_files(d: Path, files: list[str]) -> None:
    """Remove the files of an image written by an attempt that did not finish, and temp files."""
    for f in files:
        try:
            os.unlink(d / f)
        except OSError:
            pass
    _remove_stale(d, keep={n for n in _listdir(d) if _OUR_FILE.match(n)})


def _listdir(d: Path) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []
