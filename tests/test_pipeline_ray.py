"""``--executor ray``: the same outputs, summary and exit code as the local run; re-runs skip;
a worker that dies mid-run leaves every image done exactly once; a cluster without the GPUs
asked for fails at once; a simulated two-node cluster spreads the work over both nodes.

Local Ray clusters (``num_cpus=2``, one faked GPU, dashboard off), shut down in finalizers;
each test has a hard timeout (the ``timeout`` helper below: SIGALRM)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import ray  # the [ray] extra, part of the dev extra the tests are run with
import ray.cloudpickle
from _pipeline_helpers import SAMPLES, constant_checkpoint

from hmrcli.api import EngineSpec
from hmrcli.detect import DetectorSpec
from hmrcli.pipeline import InferOptions, StopRequest, run_inference
from hmrcli.pipeline.ray_executor import ExecutorError, run_inference_ray

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/

IMAGES = ["grace_hopper.jpg", "cameraman.png", "astronaut.png", "person_dog_horse.jpg", "two_people_park.jpg"]


@contextmanager
def timeout(seconds: int):
    def _raise(signum, frame):
        raise TimeoutError(f"test took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Five photos and one broken file."""
    d = tmp_path_factory.mktemp("ray-in")
    for n in IMAGES:
        shutil.copy(SAMPLES / n, d / n)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    from hmrcli.sources import expand_inputs

    return expand_inputs([str(d)])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return constant_checkpoint(tmp_path_factory.mktemp("ray-ckpt") / "const")


@pytest.fixture(scope="module")
def cluster():
    """One local node: 2 CPUs and a faked GPU."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False,
             object_store_memory=100 * 1024 * 1024)
    yield
    ray.shutdown()


def _spec(ckpt) -> EngineSpec:
    return EngineSpec(engine="regress", checkpoint=str(ckpt), body_model="free", device="cpu", batch_size=4)


def _opts(out: Path) -> InferOptions:
    return InferOptions(out=out, checkpoint="", images_per_step=2, workers=0)


def _tree(out: Path) -> dict[str, bytes]:
    """Every result file below ``out`` (not the bookkeeping, whose lines carry times, nor the
    empty per-image lock files)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.parent != out and p.parent.name != ".hmrcli-locks"}


def _image_lines(out: Path) -> list[dict]:
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.strip()]
    return [x for x in lines if x["kind"] == "image"]


def _summary(s) -> dict:
    d = s.to_json()
    d.pop("seconds")
    return d


def test_ray_matches_local_and_reruns_skip(tmp_path, inputs, ckpt, cluster):
    with timeout(240):
        eng, _ = _spec(ckpt).build()
        det = DetectorSpec("whole-image", {})
        local = run_inference(inputs, eng, _opts(tmp_path / "local"), detector=det.build())
        events: list[dict] = []
        remote = run_inference_ray(inputs, _spec(ckpt).build, _opts(tmp_path / "ray"), detector_factory=det.build,
                                   progress=events.append, workers=2, cpus_per_worker=0.5, gpus_per_worker=0.5)
    assert _summary(remote) == _summary(local)
    assert (remote.done, remote.failed, remote.exit_code) == (5, 1, 1)
    assert _tree(tmp_path / "ray") == _tree(tmp_path / "local")  # byte for byte (the constant network)
    assert len(_tree(tmp_path / "ray")) == 5 * 4  # obj, npz, camera json, result.json per image
    errs = [json.loads(x) for x in (tmp_path / "ray" / "errors.jsonl").read_text().splitlines()]
    assert [Path(e["file"]).name for e in errs] == ["broken.jpg"]
    lines = _image_lines(tmp_path / "ray")
    assert sorted(x["name"] for x in lines) == sorted(IMAGES)
    assert all(x["worker"]["pid"] for x in lines)
    note = [e for e in events if e.get("executor") == "ray"]
    assert note and note[0]["workers"] == 2
    for f in (tmp_path / "ray").rglob("person_00.obj"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~_umask()
    with timeout(120):  # a re-run skips everything it finished (the broken file is tried again)
        again = run_inference_ray(inputs, _spec(ckpt).build, _opts(tmp_path / "ray"), detector_factory=det.build,
                                  workers=2, cpus_per_worker=0.5)
    assert (again.skipped, again.done, again.failed) == (5, 0, 1)
    assert len(_image_lines(tmp_path / "ray")) == 5


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


class _DyingEngine:
    """Wraps the real engine; the first ``run`` in the whole cluster (a marker file says which
    one) kills its worker process as an out-of-memory kill or a crash would."""

    def __init__(self, inner, marker: str) -> None:
        self.inner, self.marker = inner, marker

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, prepared, **kw):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return self.inner.run(prepared, **kw)
        os.close(fd)
        os._exit(1)


def _dying_factory(ckpt: str, marker: str):
    eng, _ = EngineSpec(engine="regress", checkpoint=ckpt, body_model="free", device="cpu", batch_size=4).build()
    return _DyingEngine(eng, marker)


def test_a_worker_that_dies_is_restarted_and_its_chunk_redone(tmp_path, inputs, ckpt, cluster):
    import functools

    marker = tmp_path / "died"
    events: list[dict] = []
    with timeout(240):
        summ = run_inference_ray(inputs, functools.partial(_dying_factory, str(ckpt), str(marker)),
                                 _opts(tmp_path / "out"), detector_factory=DetectorSpec("whole-image", {}).build,
                                 progress=events.append, workers=2, cpus_per_worker=0.5)
    assert marker.exists()  # a worker did die
    assert any("died" in e.get("message", "") for e in events)
    assert (summ.done, summ.failed, summ.exit_code) == (5, 1, 1)
    names = [x["name"] for x in _image_lines(tmp_path / "out")]
    assert sorted(names) == sorted(IMAGES)  # each exactly once
    for n in IMAGES:
        assert (tmp_path / "out" / n / "result.json").is_file()


def test_stop_request_stops_the_workers_and_a_rerun_finishes(tmp_path, inputs, ckpt, cluster):
    stop = StopRequest()

    def progress(ev):
        if ev.get("event") == "done":
            stop.request("SIGTERM")

    with timeout(240):
        summ = run_inference_ray(inputs, _spec(ckpt).build, InferOptions(out=tmp_path / "o", images_per_step=1,
                                                                          workers=0),
                                 detector_factory=DetectorSpec("whole-image", {}).build, progress=progress, stop=stop,
                                 workers=1, cpus_per_worker=1, chunk_images=1)
        assert summ.interrupted == "SIGTERM" and summ.exit_code == 143
        assert summ.remaining > 0 and summ.done >= 1
        rest = run_inference_ray(inputs, _spec(ckpt).build, InferOptions(out=tmp_path / "o", workers=0),
                                 detector_factory=DetectorSpec("whole-image", {}).build, workers=1)
    assert rest.skipped == summ.done and rest.done == 5 - summ.done
    assert sorted(x["name"] for x in _image_lines(tmp_path / "o")) == sorted(IMAGES)


def test_more_gpus_than_the_cluster_has_fails_at_once(tmp_path, inputs, ckpt, cluster):
    t0 = time.perf_counter()
    with timeout(60), pytest.raises(ExecutorError, match=r"asks for 2 GPU\(s\); the Ray cluster has 1"):
        run_inference_ray(inputs, _spec(ckpt).build, _opts(tmp_path / "o"), workers=2, gpus_per_worker=1)
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ExecutorError, match="no worker fits"):
        run_inference_ray(inputs, _spec(ckpt).build, _opts(tmp_path / "o"), gpus_per_worker=2)
    assert not (tmp_path / "o" / "manifest.jsonl").exists()


def test_engine_that_cannot_be_built_is_a_clear_error(tmp_path, inputs, cluster):
    spec = EngineSpec(engine="regress", checkpoint=str(tmp_path / "missing.pt"), body_model="free", device="cpu")
    with timeout(120), pytest.raises(ExecutorError, match="could not build the engine.*missing.pt"):
        run_inference_ray(inputs, spec.build, _opts(tmp_path / "o"), workers=1)


def test_two_node_cluster_spreads_the_work(tmp_path, inputs, ckpt):
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False, configure_logging=False)
        with timeout(240):
            summ = run_inference_ray(inputs, _spec(ckpt).build, _opts(tmp_path / "o"),
                                     detector_factory=DetectorSpec("whole-image", {}).build, workers=2,
                                     chunk_images=1)
        assert (summ.done, summ.failed) == (5, 1)
        nodes = {x["worker"]["node"] for x in _image_lines(tmp_path / "o")}
        assert len(nodes) == 2
    finally:
        ray.shutdown()
        c.shutdown()


def test_cli_executor_ray(tmp_path, inputs, ckpt):
    """``hmrcli infer --executor ray`` starts its own local cluster; same summary as local."""
    from _pipeline_helpers import run_hmrcli, summary_of

    d = Path(inputs[0].path).parent
    common = ["infer", str(d), "--checkpoint", str(ckpt), "--body-model", "free", "--detector", "whole-image",
              "--json", "--quiet"]
    local = run_hmrcli(*common, "--out", str(tmp_path / "local"), timeout=300)
    remote = run_hmrcli(*common, "--out", str(tmp_path / "ray"), "--executor", "ray", "--ray-workers", "1",
                        "--cpus-per-worker", "1", timeout=300)
    assert remote.returncode == local.returncode == 1, remote.stderr[-2000:]
    s_local, s_ray = summary_of(local.stdout), summary_of(remote.stdout)
    for s in (s_local, s_ray):
        s.pop("seconds"), s.pop("out")
    assert s_ray == s_local and s_ray["done"] == 5
    assert _tree(tmp_path / "ray") == _tree(tmp_path / "local")
    bad = run_hmrcli("infer", str(d), "--out", str(tmp_path / "x"), "--ray-workers", "2", timeout=120)
    assert bad.returncode == 2 and "need --executor ray" in bad.stderr
    many = run_hmrcli(*common, "--out", str(tmp_path / "g"), "--executor", "ray", "--gpus-per-worker", "1",
                      "--ray-workers", "1", timeout=120)
    assert many.returncode == 2 and "asks for 1 GPU(s); the Ray cluster has 0" in " ".join(many.stderr.split())
