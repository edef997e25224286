"""The Python API does what `hmrcli infer` does: engine choice (hmrcli.api.make_engine), then the
batch pipeline with a detector, without the CLI."""

from pathlib import Path

import pytest

from hmrcli.api import make_engine

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"


def test_engine_choice_and_refusals(constant_checkpoint):
    from hmrcli.body import load_body_model

    body = load_body_model("free")
    eng, choice = make_engine("auto", constant_checkpoint, body)
    assert choice == "regress" and "constant" in choice.reason and eng.name == "regress"
    eng, choice = make_engine("auto", constant_checkpoint, body, refine="pc-hmr")
    assert eng.name == "regress+pc-hmr"
    for kw, msg in ((dict(engine="nope"), "engine must be"), (dict(refine="x"), "refine must be"),
                    (dict(landmarks="lite"), "landmarks must be"), (dict(pose_prior="vae"), "pose_prior must be"),
                    (dict(engine="regress"), "needs a regressor checkpoint")):
        with pytest.raises(ValueError, match=msg):
            make_engine(body=body, **kw)


@pytest.mark.fit
def test_api_runs_the_whole_job(tmp_path):
    """Detector + fit engine + pipeline from Python: both people of the park photo."""
    from hmrcli.detect import create_detector
    from hmrcli.pipeline import InferOptions, run_inference
    from hmrcli.sources import expand_inputs

    eng, choice = make_engine(pose_prior="gmm")
    assert choice == "fit" and "offline" in choice.reason and eng.options.pose_prior == "gmm"
    det = create_detector("auto")
    try:
        summary = run_inference(expand_inputs([str(SAMPLES / "two_people_park.jpg")]), eng,
                                InferOptions(out=tmp_path / "out"), detector=det)
    finally:
        eng.close()
    assert (summary.done, summary.persons, summary.failed) == (1, 2, 0)
    assert (tmp_path / "out" / "two_people_park.jpg" / "person_01.obj").is_file()


def test_every_engine_has_the_engine_interface(constant_checkpoint):
    from hmrcli.body import load_body_model
    from hmrcli.engine.base import Engine

    body = load_body_model("free")
    for kw in (dict(engine="regress", checkpoint=constant_checkpoint), dict(engine="regress",
               checkpoint=constant_checkpoint, refine="fit")):
        eng, _ = make_engine(body=body, **kw)
        assert isinstance(eng, Engine), type(eng)
        assert {"engine", "roi_convention"} <= set(eng.describe())


def test_one_device_rule(monkeypatch):
    """``hmrcli.devices.resolve_device`` is the rule of the CLI, the engine and detector specs."""
    import torch

    import hmrcli.detect as detect_mod
    from hmrcli.api import EngineSpec
    from hmrcli.detect import DetectorSpec
    from hmrcli.detect.whole_image import WholeImageDetector
    from hmrcli.devices import DeviceUnavailable, resolve_device

    have = torch.cuda.is_available()
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") == ("cuda" if have else "cpu")
    if not have:
        for name in ("cuda", "cuda:1"):
            with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
                resolve_device(name)
        with pytest.raises(DeviceUnavailable):
            EngineSpec(engine="regress", checkpoint="x.pt", body_model="free", device="cuda").build()
    seen = []
    monkeypatch.setattr(detect_mod, "create_detector", lambda name, **opts: seen.append(opts) or WholeImageDetector())
    DetectorSpec("mmdet", {"device": "auto", "score_thr": 0.3}).build()
    assert seen == [{"device": resolve_device("auto"), "score_thr": 0.3}]
