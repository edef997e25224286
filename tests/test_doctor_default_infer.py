"""doctor: ``ok`` means the default ``hmrcli infer`` can run; messages say whether packages or
model files are missing."""

import importlib.util

import pytest

from hmrcli import diagnostics


def _hide(monkeypatch, *names):
    real = importlib.util.find_spec

    def fake(name, *a, **k):
        if name.split(".")[0] in names:
            return None
        return real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


def test_missing_mmdet_packages_are_named_not_weights(monkeypatch):
    from hmrcli.detect import available_detectors

    _hide(monkeypatch, "mmengine", "mmdet", "mmcv")
    mm = next(d for d in available_detectors() if d["name"] == "mmdet")
    assert not mm["available"] and "mmengine is not installed" in mm["problem"]
    assert "weights" not in mm["problem"].split(".")[0]


def test_ok_is_the_default_infer(monkeypatch):
    monkeypatch.delenv("HMRCLI_CHECKPOINT", raising=False)
    rep = diagnostics.collect()
    d = rep["default_infer"]
    assert d["engine"] == "fit" and rep["ok"] == d["can_run"]
    if importlib.util.find_spec("mediapipe") is None:
        pytest.skip("mediapipe is not installed here: the can-run case needs it")
    assert d["can_run"] and d["detector"] in ("mmdet", "movenet") and rep["ok"]


def test_missing_runtimes_or_mediapipe_make_doctor_not_ok(monkeypatch):
    monkeypatch.delenv("HMRCLI_CHECKPOINT", raising=False)
    _hide(monkeypatch, "ai_edge_litert", "mmengine", "onnxruntime")
    rep = diagnostics.collect()
    d = rep["default_infer"]
    assert not rep["ok"] and not d["can_run"] and d["detector"] is None
    assert any("ai-edge-litert" in m["problem"] and "package" not in m["fix"] or "install" in m["fix"]
               for m in d["missing"])
    _hide(monkeypatch, "mediapipe")
    d = diagnostics.collect()["default_infer"]
    assert any(m["problem"].startswith("fitting engine: package missing: mediapipe is not installed") for m in d["missing"])


def test_checkpoint_env_names_a_missing_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HMRCLI_CHECKPOINT", str(tmp_path / "nope.safetensors"))
    rep = diagnostics.collect()
    d = rep["default_infer"]
    assert d["engine"] == "regress" and not d["can_run"] and not rep["ok"]
    assert "HMRCLI_CHECKPOINT" in d["missing"][0]["problem"]
