"""One batch run over many processes or machines, on a Ray cluster (``hmrcli infer --executor ray``).

Ray is an optional dependency (``pip install 'hmrcli[ray]'``). The run is split the way the
local run is (:mod:`hmrcli.pipeline.run`):

* the **driver** (this process) makes the plan (:func:`plan_run`: the manifest read once, the
  settings, what to skip or redo), hands contiguous chunks of the images to do to the workers,
  and is the only writer of ``OUT/manifest.jsonl`` and ``OUT/errors.jsonl`` (a
  :class:`Recorder` fed with the workers' outcomes): safe on a shared NFS folder;
* each **worker** is a Ray actor (one per GPU with ``gpus_per_worker=1``, or per
  ``cpus_per_worker`` CPUs) that builds the engine and the detector once (from picklable
  specs: :class:`hmrcli.api.EngineSpec`, :class:`hmrcli.detect.DetectorSpec`) and runs
  :func:`execute` on each chunk it is given, writing only ``OUT/NAME/`` folders.

Plain Ray Core actors, not Ray Data: Ray Data aborts the whole dataset on one failing batch
(or drops rows silently with ``max_errored_blocks``), and its read stage with 1-CPU actors
deadlocked on a 2-CPU machine.

Failures: a bad image is an ordinary recorded failure (the worker's ``execute`` records it);
a worker that dies (killed, out of memory, a crash in native code) is restarted by Ray
(``max_restarts``) and its chunk is given out once more; a chunk whose worker dies twice has
its images recorded as failed (stage ``executor``). Images the dead worker had finished are
redone by the retry: every image gets exactly one manifest line. A cluster without the
resources asked for fails at once (:class:`ExecutorError`) instead of waiting.

Stopping: a :class:`StopRequest` makes the driver give out no more chunks and ask every
worker to stop after its current person batch; finished images are recorded, the rest are
left for the next run (the summary's ``interrupted``), as in a local run.

Every node must see the inputs and the output folder at the same paths (a shared file
system): the workers read the images and write the results themselves.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hmrcli.detect import detection_summary
from hmrcli.detect.whole_image import WholeImageDetector
from hmrcli.pipeline.manifest import Manifest, _given_boxes, run_settings
from hmrcli.pipeline.options import InferOptions, InferSummary, StopRequest
from hmrcli.pipeline.run import (
    ImageDone,
    ImageFailed,
    Outcome,
    Recorder,
    engine_run_info,
    execute,
    plan_run,
    track_sequences,
)
from hmrcli.records import error_record
from hmrcli.sources import ImageSource

__all__ = ["run_inference_ray", "ExecutorError", "RAY_MAX_RESTARTS"]

#: times Ray restarts a worker that died, over the whole run
RAY_MAX_RESTARTS = 3


class ExecutorError(RuntimeError):
    """The cluster cannot run the job as asked (Ray missing, not enough GPUs or CPUs, workers
    that do not start or cannot build the engine). The CLI prints it and exits with status 2."""


def _ray():
    try:
        import ray  # optional dependency: only this executor needs it
    except ImportError as e:
        raise ExecutorError("--executor ray needs Ray: pip install 'hmrcli[ray]' (or pip install ray) on every "
                            f"machine of the cluster ({type(e).__name__}: {e})") from e
    return ray


class _Worker:
    """A Ray actor (see :func:`_actor_class`): the engine and the detector, built once, run
    chunk after chunk. ``max_concurrency=2`` lets :meth:`stop` arrive while a chunk runs."""

    def __init__(self, engine_factory: Callable[[], Any], detector_factory: Callable[[], Any] | None,
                 opts: InferOptions) -> None:
        self.opts = opts
        self.error: str | None = None  # why the engine or the detector could not be built (said by ready())
        try:
            built = engine_factory()
            self.engine = built[0] if isinstance(built, tuple) else built
            self.detector = detector_factory() if detector_factory is not None else WholeImageDetector()
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
        self._stop: StopRequest | None = None
        self._stop_reason: str | None = None
        self._lock = threading.Lock()

    @property
    def where(self) -> dict[str, Any]:
        import ray  # optional dependency (the [ray] extra)

        return {"host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def ready(self) -> dict[str, Any]:
        if self.error is not None:
            return {**self.where, "error": self.error}
        return {**self.where, "device": str(getattr(self.engine, "device", "cpu")), "detector": detection_summary(self.detector),
                "detector_name": getattr(self.detector, "name", None),
                "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def settings(self) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        man = Manifest(Path(self.opts.out), names=[])
        try:
            settings, hashed = run_settings(self.engine, self.opts, self.detector, man)
        finally:
            man.close()
        return settings, hashed, engine_run_info(self.engine)

    def given_boxes(self, sources: list[ImageSource]) -> list[Any]:
        return [_given_boxes(s, self.detector) for s in sources]

    def run_chunk(self, sources: list[ImageSource], sid: str, manifest_offset: int) -> tuple[list[Outcome], str | None]:
        stop = StopRequest()
        with self._lock:
            self._stop = stop
            if self._stop_reason is not None:
                stop.request(self._stop_reason)
        outcomes: list[Outcome] = []
        interrupted = execute(sources, self.engine, self.opts, self.detector, sid, outcomes.append, stop,
                              manifest_offset)
        for o in outcomes:
            if isinstance(o, ImageDone):
                o.worker = self.where
        return outcomes, interrupted

    def stop(self, reason: str) -> None:
        with self._lock:
            self._stop_reason = reason
            if self._stop is not None:
                self._stop.request(reason)

    def close(self) -> None:
        for obj in (self.detector, self.engine):
            if hasattr(obj, "close"):
                try:
                    obj.close()
                except Exception:
                    pass


def _actor_class(ray, cpus: float, gpus: float):
    return ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=RAY_MAX_RESTARTS, max_task_retries=0,
                      max_concurrency=2)(_Worker)


def _cause(e: BaseException) -> BaseException:
    """The exception a worker raised, out of Ray's wrappers."""
    seen = 0
    while seen < 5:
        inner = getattr(e, "cause", None) or getattr(e, "__cause__", None)
        if not isinstance(inner, BaseException) or inner is e:
            break
        e, seen = inner, seen + 1
    return e


def _resources(ray, workers: int | None, cpus: float, gpus: float) -> int:
    """The number of workers, checked against the cluster's CPUs and GPUs (fail fast)."""
    total = ray.cluster_resources()
    have_gpu, have_cpu = float(total.get("GPU", 0.0)), float(total.get("CPU", 0.0))
    if workers is None:
        workers = int(math.floor(have_gpu / gpus + 1e-9)) if gpus > 0 else int(math.floor(have_cpu / cpus + 1e-9))
        if workers < 1:
            what = f"{have_gpu:g} GPU(s) for {gpus:g} GPU(s) per worker" if gpus > 0 else \
                f"{have_cpu:g} CPU(s) for {cpus:g} CPU(s) per worker"
            raise ExecutorError(f"the Ray cluster has {what}: no worker fits (--gpus-per-worker, --ray-workers)")
    if workers * gpus > have_gpu + 1e-9:
        raise ExecutorError(f"--ray-workers {workers} x --gpus-per-worker {gpus:g} asks for {workers * gpus:g} GPU(s); "
                            f"the Ray cluster has {have_gpu:g}")
    if workers * cpus > have_cpu + 1e-9:
        raise ExecutorError(f"--ray-workers {workers} x {cpus:g} CPU(s) per worker asks for {workers * cpus:g} CPU(s); "
                            f"the Ray cluster has {have_cpu:g}")
    return workers


def run_inference_ray(
    sources: list[ImageSource],
    engine_factory: Callable[[], Any],
    opts: InferOptions,
    detector_factory: Callable[[], Any] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    stop: StopRequest | None = None,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    chunk_images: int | None = None,
    start_timeout: float = 120.0,
) -> InferSummary:
    """:func:`hmrcli.pipeline.run_inference` on a Ray cluster: same outputs, summary, events
    and stop request. ``engine_factory`` / ``detector_factory``: picklable callables that build
    the engine (or ``(engine, choice)``) and the detector in each worker, e.g.
    ``EngineSpec(...).build`` and ``DetectorSpec(...).build`` (None: the whole-image detector).

    ``address``: None starts a local Ray cluster (unless Ray is already initialised in this
    process), ``"auto"`` joins the cluster of this machine, ``HOST:PORT`` a remote head.
    ``workers``: how many (default: as many as the cluster's GPUs, or CPUs, allow);
    ``gpus_per_worker`` (may be fractional), ``cpus_per_worker``; ``chunk_images``: images per
    task (default: up to ``opts.images_per_step``, small enough to spread the images over the
    workers). Raises :class:`ExecutorError` when the cluster cannot run it as asked."""
    t0 = time.perf_counter()
    ray = _ray()
    emit = progress or (lambda ev: None)
    started_here = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=True)
        except Exception as e:  # ConnectionError, auth, bad address
            raise ExecutorError(f"cannot start or join the Ray cluster (address {address or 'local'}): "
                                f"{type(e).__name__}: {e}") from e
        started_here = True
    actors: list[Any] = []
    try:
        n = _resources(ray, workers, float(cpus_per_worker), float(gpus_per_worker))
        Actor = _actor_class(ray, float(cpus_per_worker), float(gpus_per_worker))
        actors = [Actor.options(scheduling_strategy="SPREAD").remote(engine_factory, detector_factory, opts)
                  for _ in range(n)]
        infos = _wait_ready(ray, actors, start_timeout)
        hosts = sorted({i["host"] for i in infos})
        emit({"event": "note", "executor": "ray", "workers": n, "nodes": len({i["node"] for i in infos}),
              "message": f"ray: {n} worker(s) on {len(hosts)} node(s) ({', '.join(hosts)}), device "
                         f"{infos[0]['device']}; {infos[0]['detector']}"})
        settings, hashed, run_info = ray.get(actors[0].settings.remote())
        given: dict[str, Any] = {}
        if infos[0]["detector_name"] == "boxes":
            given = dict(zip([s.name for s in sources], ray.get(actors[0].given_boxes.remote(sources))))
        plan = plan_run(sources, opts, lambda man: (settings, hashed), lambda src: given.get(src.name), emit,
                        {**run_info, "executor": "ray", "ray_workers": n})
        try:
            recorder = Recorder(plan, opts, emit)
            interrupted = _schedule(ray, actors, plan.todo, (plan.settings_id, plan.manifest_offset), recorder, stop, chunk_images or
                                    max(1, min(int(opts.images_per_step), math.ceil(len(plan.todo) / (2 * n)) or 1)),
                                    emit)
        finally:
            plan.manifest.close()
        summ = plan.summary
        summ.interrupted = interrupted
        if opts.sequence is not None and interrupted is None:  # tracks: by the driver, from the written frames
            track_sequences(sources, None, opts, summ, emit)
        summ.seconds = time.perf_counter() - t0
        return summ
    finally:
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        if started_here:
            ray.shutdown()


def _wait_ready(ray, actors: list[Any], timeout: float) -> list[dict[str, Any]]:
    refs = [a.ready.remote() for a in actors]
    done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    if pending:
        raise ExecutorError(f"{len(pending)} of {len(refs)} Ray worker(s) did not start within {timeout:g} s (the "
                            "cluster lacks the CPUs/GPUs, or they are taken by other jobs)")
    try:
        infos = ray.get(refs)
    except Exception as e:
        cause = _cause(e)
        raise ExecutorError(f"a Ray worker did not start: {type(cause).__name__}: {cause}") from None
    for info in infos:
        if "error" in info:
            raise ExecutorError(f"a Ray worker (on {info['host']}) could not build the engine or the detector: "
                                f"{info['error']}")
    return infos


def _schedule(ray, actors: list[Any], todo: list[ImageSource], sid: tuple[str, int], recorder: Recorder,
              stop: StopRequest | None, chunk: int, emit: Callable[[dict[str, Any]], None]) -> str | None:
    """Give out chunks of ``todo`` to idle workers until all are done (or a stop), feeding the
    recorder. A worker whose task failed because it died (``ActorUnavailableError`` while Ray
    restarts it, ``ActorDiedError`` when it gives up) gets no task until a ping says it is back;
    its chunk is given out once more. Returns why the run was interrupted."""
    from ray.exceptions import (  # optional dependency (the [ray] extra)
        ActorDiedError,
        ActorUnavailableError,
        RayActorError,
        WorkerCrashedError,
    )

    died = (ActorDiedError, RayActorError, WorkerCrashedError)
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    queue_: deque[int] = deque(range(len(chunks)))
    tries = [0] * len(chunks)
    idle = deque(range(len(actors)))
    inflight: dict[Any, tuple[int, int]] = {}
    pings: dict[Any, int] = {}  # ready() calls to restarting workers
    stopping: str | None = None
    interrupted: str | None = None
    try:
        while queue_ or inflight:
            if stop is not None and stop.is_set() and stopping is None:
                stopping = stop.reason or "SIGINT"
                for a in actors:
                    a.stop.remote(stopping)
            while idle and queue_ and stopping is None:
                ai, ci = idle.popleft(), queue_.popleft()
                tries[ci] += 1
                inflight[actors[ai].run_chunk.remote(chunks[ci], *sid)] = (ai, ci)
            if not inflight and (stopping is not None or not pings):
                for ci in queue_ if stopping is None else ():  # every worker is gone for good
                    _fail_chunk(recorder, chunks[ci], "no Ray worker is left to run it (each died "
                                                      f"{RAY_MAX_RESTARTS + 1} times)")
                break
            ready, _ = ray.wait([*inflight, *pings], num_returns=1, timeout=0.2)
            for ref in ready:
                if ref in pings:
                    ai = pings.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(ai)  # restarted
                    except ActorUnavailableError:
                        time.sleep(0.2)
                        pings[actors[ai].ready.remote()] = ai
                    except Exception:
                        pass  # gone for good
                    continue
                ai, ci = inflight.pop(ref)
                try:
                    outcomes, why = ray.get(ref)
                except (ActorUnavailableError, *died) as e:
                    pings[actors[ai].ready.remote()] = ai
                    if tries[ci] < 2 and stopping is None:
                        emit({"event": "note", "message": f"ray: a worker died ({type(e).__name__}); its "
                                                          f"{len(chunks[ci])} image(s) are given out again"})
                        queue_.appendleft(ci)
                    else:
                        _fail_chunk(recorder, chunks[ci], f"the Ray worker running it died {tries[ci]} time(s) "
                                                          f"({type(e).__name__})")
                    continue
                except Exception as e:  # the worker's run raised: a broken installation, not a bad image
                    raise _cause(e) from None
                idle.append(ai)
                for o in outcomes:
                    recorder(o)
                if why is not None:
                    interrupted = why
    except KeyboardInterrupt:
        return (stop.reason if stop is not None and stop.reason else None) or "SIGINT"
    if stopping is not None:
        interrupted = stopping
    return interrupted


def _fail_chunk(recorder: Recorder, chunk: list[ImageSource], why: str) -> None:
    for src in chunk:
        recorder(ImageFailed(src.name, error_record(str(src.path), "executor", f"{src.path}: {why}")))
