"""The MMDetection person detector, end to end through the real mmdet pipeline (test
transforms, data preprocessor, RTMDet-tiny, NMS from mmcv's compiled ops) with seeded random
weights: no checkpoint can be downloaded here.

Random weights alone give every class a score of ~0.5 everywhere and boxes a pixel wide, so
the fixture rescales the last layers of the head deterministically (see :func:`_informative`):
only "person" and "car" remain candidates, their scores spread over (0, 1) and boxes are tens
of pixels wide. The boxes mean nothing; what is tested is hmrcli's side: RGB -> BGR, the
conversion to full-image pixels in hmrcli's convention (-0.5 px, clipped to the image), class
filtering, the score threshold, batching, odd inputs, weights loading.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hmrcli.detect import mmdet_backend as mb
from hmrcli.detect.base import Detection, Detector, DetectorUnavailable
from hmrcli.weights.readers import read_mmdet_checkpoint

try:
    mb._import_mmdet()
    _MISSING = None
except DetectorUnavailable as e:  # shown by pytest -ra
    _MISSING = f"MMDetection is not importable here (`make` installs it): {str(e).split('. Install')[0]}"


# the FutureWarning comes from mmdet's own code when the tests call it directly
pytestmark = pytest.mark.filterwarnings("ignore:`torch.cuda.amp.autocast:FutureWarning")

TINY = "rtmdet/rtmdet_tiny_8xb32-300e_coco.py"
PERSON, CAR = 0, 2  # COCO class indices
SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"


def _rgb(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(SAMPLES / name)), cv2.COLOR_BGR2RGB)


def _informative(model: torch.nn.Module) -> None:
    """Deterministic edit of RTMDet's head: classification convs x3000 with bias -30 except
    person and car (-6), so only those two classes pass the config's 0.001 pre-NMS threshold and
    their scores spread over (0, 1); regression convs x1000 with bias 3 (distances ~3 strides),
    so boxes are tens of pixels wide and some reach into the padding of non-square images."""
    head = model.bbox_head
    with torch.no_grad():
        for conv in head.rtm_cls:
            conv.weight.mul_(3000.0)
            conv.bias.fill_(-30.0)
            conv.bias[PERSON] = -6.0
            conv.bias[CAR] = -6.0
        for conv in head.rtm_reg:
            conv.weight.mul_(1000.0)
            conv.bias.fill_(3.0)


@pytest.fixture(scope="module")
def det():
    if _MISSING:
        pytest.skip(_MISSING)
    d = mb.MMDetDetector(config=TINY, allow_random_weights=True, seed=0, score_thr=0.0, batch_size=8)
    _informative(d.model)
    return d


@pytest.fixture(scope="module")
def images():
    """Different sizes and aspect ratios (square, portrait, landscape with padding, small)."""
    return [_rgb("astronaut.png"), _rgb("grace_hopper.jpg"), cv2.resize(_rgb("cameraman.png"), (700, 300)),
            cv2.resize(_rgb("grace_hopper.jpg"), (90, 150))]


def _with(det, **attrs):
    """The same loaded model with other settings (a shallow copy)."""
    d = copy.copy(det)
    for k, v in attrs.items():
        setattr(d, k, v)
    return d


def _expected(raw, h: int, w: int, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """What hmrcli must make of one mmdet result: person boxes with score >= thr, shifted to
    pixel-centre coordinates, clipped, degenerate ones dropped, by decreasing score."""
    p = raw.pred_instances
    labels, scores, boxes = p.labels.numpy(), p.scores.numpy().astype(np.float64), p.bboxes.numpy().astype(np.float64)
    keep = (labels == PERSON) & (scores >= thr)
    b = boxes[keep] - 0.5
    b[:, 0::2] = b[:, 0::2].clip(-0.5, w - 0.5)
    b[:, 1::2] = b[:, 1::2].clip(-0.5, h - 0.5)
    s = scores[keep]
    ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b, s = b[ok], s[ok]
    order = np.argsort(-s, kind="stable")
    return b[order], s[order]


def _arrays(dets: list[Detection]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([d.box_xyxy for d in dets]).reshape(-1, 4), np.array([d.score for d in dets], dtype=np.float64))


def _assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray],
                 box_tol: float = 1e-3, score_tol: float = 1e-5) -> None:
    """Same detections up to float noise (batched and single-image convolutions differ in the
    last bits, which may also swap two near-equal scores): a one-to-one matching within
    tolerance."""
    (gb, gs), (wb, ws) = got, want
    assert len(gs) == len(ws)
    if not len(gs):
        return
    cost = np.abs(gb[:, None, :] - wb[None, :, :]).max(-1) / box_tol + np.abs(gs[:, None] - ws[None, :]) / score_tol
    used = set()
    for i in range(len(gs)):
        j = int(np.argmin(np.where(np.isin(np.arange(len(ws)), list(used)), np.inf, cost[i])))
        assert np.abs(gb[i] - wb[j]).max() <= box_tol and abs(gs[i] - ws[j]) <= score_tol, (i, gb[i], gs[i], wb[j], ws[j])
        used.add(j)


def _bgr(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[..., ::-1])


# --------------------------------------------------------------------------------------------
# end to end, against mmdet.apis.inference_detector


@pytest.mark.mmdet
def test_detect_matches_inference_detector_on_bgr(det, images):
    from mmdet.apis import inference_detector

    assert isinstance(det, Detector) and det.name == "mmdet" and not det.one_person_per_image
    got = det.detect(images)  # one batch, four sizes
    raw = inference_detector(det.model, [_bgr(im) for im in images])  # one image at a time
    clipped_somewhere = False
    for im, dets, r in zip(images, got, raw):
        h, w = im.shape[:2]
        assert r.ori_shape == (h, w)
        want = _expected(r, h, w, 0.0)
        assert len(dets) > 10
        _assert_same(_arrays(dets), want)
        b, s = _arrays(dets)
        assert b.dtype == np.float64 and all(d.box_xyxy.shape == (4,) for d in dets)
        assert np.all(np.diff(s) <= 0), "sorted by decreasing score"
        assert np.all(b[:, [0, 1]] >= -0.5) and np.all(b[:, 2] <= w - 0.5) and np.all(b[:, 3] <= h - 0.5)
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        assert all(d.label == "person" and d.detector == "mmdet:rtmdet_tiny_8xb32-300e_coco" for d in dets)
        rec = dets[0].to_json()
        assert rec["class"] == "person" and len(rec["box_xyxy"]) == 4 and isinstance(rec["score"], float)
        raw_boxes = r.pred_instances.bboxes.numpy()
        clipped_somewhere |= bool(np.any(raw_boxes[:, 2] > w) | np.any(raw_boxes[:, 3] > h))
    assert clipped_somewhere, "the landscape image should give boxes reaching into mmdet's padding"
    # the channel order matters: the same images given to mmdet as RGB give other boxes
    as_rgb = inference_detector(det.model, images[:1])[0].pred_instances
    assert not (len(as_rgb) == len(raw[0].pred_instances) and torch.equal(as_rgb.bboxes, raw[0].pred_instances.bboxes))


@pytest.mark.mmdet
def test_only_the_person_class_is_kept(det, images):
    from mmdet.apis import inference_detector

    raw = inference_detector(det.model, [_bgr(images[0])])[0].pred_instances
    labels = raw.labels.numpy()
    assert {PERSON, CAR} <= set(labels.tolist()), "the raw result should hold both classes"
    dets = det.detect(images[:1])[0]
    assert len(dets) == int(np.sum(labels == PERSON))  # astronaut: no box clipped away
    # no car entry among the detections (boxes are per prior, so a car may share a person's
    # box: compare box and score together)
    got_b, got_s = _arrays(dets)
    for cb, cs in zip(raw.bboxes.numpy()[labels == CAR] - 0.5, raw.scores.numpy()[labels == CAR]):
        assert not np.any(np.isclose(got_b, cb, atol=1e-3).all(axis=-1) & np.isclose(got_s, cs, atol=1e-6))
    # a detector whose person class is another index is honoured
    other = _with(det, person_class=CAR)
    assert len(other.detect(images[:1])[0]) == int(np.sum(labels == CAR))


@pytest.mark.mmdet
def test_conversion_of_a_hand_made_result(det):
    """mmdet's convention (left image edge at x = 0) -> pixel centres at integers, clipping to
    the image, degenerate boxes dropped, other classes and low scores dropped, sorted."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    res = DetDataSample()
    res.pred_instances = InstanceData(
        bboxes=torch.tensor([[10.0, 20.0, 30.0, 60.0],     # person, inside
                             [-5.0, -5.0, 50.0, 140.0],    # person, beyond the 100x80 image: clipped
                             [0.0, 110.0, 40.0, 130.0],    # person, entirely below the image: dropped
                             [1.0, 1.0, 2.0, 2.0],         # car: dropped
                             [5.0, 5.0, 15.0, 15.0]]),     # person, score under the threshold
        scores=torch.tensor([0.3, 0.9, 0.8, 0.99, 0.05]),
        labels=torch.tensor([PERSON, PERSON, PERSON, CAR, PERSON]))
    out = _with(det, score_thr=0.1)._to_detections(res, h=100, w=80)
    assert [d.score for d in out] == pytest.approx([0.9, 0.3])
    np.testing.assert_allclose(out[0].box_xyxy, [-0.5, -0.5, 49.5, 99.5])
    np.testing.assert_allclose(out[1].box_xyxy, [9.5, 19.5, 29.5, 59.5])
    assert all(d.box_xyxy.dtype == np.float64 and isinstance(d.score, float) for d in out)


@pytest.mark.mmdet
def test_score_threshold_removes_exactly_the_lower_scores(det, images):
    base = det.detect(images[:2])
    for img, dets in zip(images[:2], base):
        thr = float(np.median([d.score for d in dets]))
        kept = [d for d in dets if d.score >= thr]
        assert 0 < len(kept) < len(dets)
        got = _with(det, score_thr=thr).detect([img])[0]
        _assert_same(_arrays(got), _arrays(kept))
        assert all(d.score >= thr for d in got)
    assert _with(det, score_thr=1.0).detect(images[:1]) == [[]]


@pytest.mark.mmdet
def test_batches_equal_single_calls(det, images):
    three = images[:3]
    singles = [det.detect([im])[0] for im in three]
    for bs in (8, 2, 1):  # one batch; batches of 2 + 1; one image per batch
        got = _with(det, batch_size=bs).detect(three)
        assert len(got) == 3
        for g, s in zip(got, singles):
            _assert_same(_arrays(g), _arrays(s))
    # the same image twice in one batch gives the same answer twice
    a, b = det.detect([images[0], images[0]])
    _assert_same(_arrays(a), _arrays(b))


@pytest.mark.mmdet
def test_black_empty_and_bad_images(det, images):
    black = np.zeros((240, 320, 3), np.uint8)
    out = det.detect([black, images[0], np.zeros((0, 0, 3), np.uint8), np.zeros((0, 50, 3), np.uint8)])
    assert len(out) == 4 and out[2] == [] and out[3] == []
    for d in out[0]:
        assert -0.5 <= d.box_xyxy[0] < d.box_xyxy[2] <= 319.5 and -0.5 <= d.box_xyxy[1] < d.box_xyxy[3] <= 239.5
    _assert_same(_arrays(out[1]), _arrays(det.detect([images[0]])[0]))
    assert _with(det, score_thr=0.5).detect([black]) == [[]]
    assert det.detect([]) == []
    with pytest.raises(ValueError, match="image 1"):
        det.detect([black, black[..., 0]])
    with pytest.raises(ValueError, match="RGB uint8"):
        det.detect([np.zeros((10, 10, 4), np.uint8)])
    with pytest.raises(ValueError, match="float32"):
        det.detect([np.zeros((10, 10, 3), np.float32)])


@pytest.mark.mmdet
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(det, images):  # pragma: no cover - CPU-only machines
    gpu = mb.MMDetDetector(config=TINY, allow_random_weights=True, seed=0, score_thr=0.0, device="cuda")
    _informative(gpu.model)
    gpu.model.load_state_dict(det.model.state_dict())
    for g, c in zip(gpu.detect(images), det.detect(images)):
        _assert_same(_arrays(g), _arrays(c), box_tol=0.05, score_tol=1e-3)


# --------------------------------------------------------------------------------------------
# weights: files, registry names, safe loading


def _save_mmdet_checkpoint(model, path: Path, drop: str | None = None, reshape: str | None = None) -> Path:
    """An MMDetection-style checkpoint (meta with dataset_meta and numpy values, as the
    runner writes them) of ``model``'s weights."""
    sd = {k: v.clone() for k, v in model.state_dict().items() if k != drop}
    if reshape:
        sd[reshape] = sd[reshape][:1]
    meta = {"dataset_meta": {"classes": tuple(model.dataset_meta["classes"]), "palette": [(220, 20, 60)] * 80},
            "mmengine_version": "0.10.7", "seed": np.int64(0), "epoch": 300, "scale": np.float32(1.0),
            "hist": np.arange(3.0)}
    torch.save({"meta": meta, "state_dict": sd}, path)
    return path


@pytest.mark.mmdet
def test_checkpoint_by_file_and_registry_name(det, images, tmp_path, monkeypatch):
    from hmrcli.weights.catalogue import known_checkpoints

    entry = known_checkpoints("detectors")["rtmdet-tiny"]
    monkeypatch.setenv("HMRCLI_CHECKPOINT_DIR", str(tmp_path))
    with pytest.raises(DetectorUnavailable, match="hmrcli weights fetch rtmdet-tiny") as e:
        mb.MMDetDetector(checkpoint="rtmdet-tiny")
    assert entry["filename"] in str(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(DetectorUnavailable, match="hmrcli weights fetch rtmdet-m"):
        mb.MMDetDetector()  # the default model
    path = _save_mmdet_checkpoint(det.model, tmp_path / entry["filename"])
    ref = det.detect(images[:2])
    by_name = mb.MMDetDetector(checkpoint="rtmdet-tiny", score_thr=0.0)  # config from the registry entry
    assert by_name.config_path.name == "rtmdet_tiny_8xb32-300e_coco.py" and by_name.model_name == "rtmdet-tiny"
    by_file = mb.MMDetDetector(config=TINY, checkpoint=str(path), score_thr=0.0)
    for d in (by_name, by_file):
        assert d.model_name == "rtmdet-tiny"  # the file is recognised by its registry filename
        for g, r in zip(d.detect(images[:2]), ref):
            _assert_same(_arrays(g), _arrays(r))
            assert all(x.detector == "mmdet:rtmdet-tiny" for x in g)
    # weights that do not fit the config
    broken = _save_mmdet_checkpoint(det.model, tmp_path / "broken.pth", drop="bbox_head.rtm_cls.0.bias")
    with pytest.raises(DetectorUnavailable, match="does not fit.*rtm_cls.0.bias"):
        mb.MMDetDetector(config=TINY, checkpoint=broken)
    broken = _save_mmdet_checkpoint(det.model, tmp_path / "broken.pth", reshape="bbox_head.rtm_reg.1.weight")
    with pytest.raises(DetectorUnavailable, match="does not fit.*rtm_reg.1.weight"):
        mb.MMDetDetector(config=TINY, checkpoint=broken)
    with pytest.raises(DetectorUnavailable, match="neither a file nor a config"):
        mb.MMDetDetector(config="rtmdet/no_such.py", checkpoint=path)
    with pytest.raises(DetectorUnavailable, match="not a known detector"):
        mb.MMDetDetector(checkpoint="no-such-detector")


def test_default_config_is_shipped_in_mmdet():
    from hmrcli.weights.catalogue import known_checkpoints

    reg = known_checkpoints("detectors")
    assert mb.DEFAULT_MODEL in reg
    for name, e in reg.items():
        assert e["url"].endswith("/" + e["filename"]) and e["url"].startswith("https://download.openmmlab.com/")
        assert e["filename"].split("-")[-1] == e["sha256_prefix"] + ".pth" and e["sha256"] is None
        assert e["kind"] == "detector" and e["person_class"] == 0
    if _MISSING:
        pytest.skip(_MISSING)
    for e in reg.values():
        assert (mb.mmdet_configs_dir() / e["config"]).is_file()
    assert mb._resolve_config(None, None).name == "rtmdet_m_8xb32-300e_coco.py"


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_are_read_without_running_code(tmp_path, capsys):
    from hmrcli.nn.checkpoints import CheckpointError

    sd = {"w": torch.zeros(2)}
    p = tmp_path / "ok.pth"
    torch.save({"meta": {"dataset_meta": {"classes": ("person",)}, "n": np.float64(1.0), "a": np.arange(2)},
                "state_dict": sd}, p)
    got, meta = read_mmdet_checkpoint(p)
    assert torch.equal(got["w"], sd["w"]) and meta["dataset_meta"]["classes"] == ("person",)
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": sd, "meta": {"x": _Evil()}}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_mmdet_checkpoint(evil)
    assert "must never run" not in capsys.readouterr().out
    torch.save({"optimizer": {}}, tmp_path / "nosd.pth")
    with pytest.raises(CheckpointError, match="not an MMDetection checkpoint"):
        read_mmdet_checkpoint(tmp_path / "nosd.pth")


def test_availability_is_cheap_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("HMRCLI_CHECKPOINT_DIR", str(tmp_path))
    why = mb.availability()
    if _MISSING:
        assert why and "pip install -e '.[mmdet]'" in why
        return
    assert "hmrcli weights fetch rtmdet-m" in why
    from hmrcli.weights.catalogue import known_checkpoints

    (tmp_path / known_checkpoints("detectors")["rtmdet-m"]["filename"]).write_bytes(b"x")
    assert mb.availability() is None
    assert "not a known detector" in mb.availability("nope")
    # mmcv without its compiled ops (the "mmcv-lite" build): found without importing mmcv
    import importlib.machinery

    real = mb.importlib.util.find_spec
    lite = importlib.machinery.ModuleSpec("mmcv", None, is_package=True)
    lite.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(mb.importlib.util, "find_spec", lambda n, *a: lite if n == "mmcv" else real(n, *a))
    assert "without its compiled ops" in mb.availability()


def test_without_mmdet_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mmdet", None)
    with pytest.raises(DetectorUnavailable) as e:
        mb.MMDetDetector(allow_random_weights=True)
    msg = str(e.value)
    assert "make" in msg and "pip install -e '.[mmdet]'" in msg and "--no-build-isolation mmcv==2.1.0" in msg


@pytest.mark.mmdet
def test_cuda_without_cuda_is_refused(monkeypatch):
    if _MISSING:
        pytest.skip(_MISSING)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    with pytest.raises(DetectorUnavailable, match="CUDA"):
        mb.MMDetDetector(config=TINY, allow_random_weights=True, device="cuda")


# --------------------------------------------------------------------------------------------
# the registry's detector section: fetch and verify with the published sha256 prefix


def test_fetch_and_verify_detector_weights(tmp_path, monkeypatch):
    from hmrcli import assets
    from hmrcli.weights.catalogue import (
        FetchError,
        fetch_checkpoint,
        known_checkpoints,
        verify_checkpoint,
    )

    served = tmp_path / "served" / "det.pth"
    served.parent.mkdir()
    torch.save({"meta": {"dataset_meta": {"classes": ("person",)}}, "state_dict": {"w": torch.ones(3)}}, served)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    models = tmp_path / "models"
    shutil.copytree(assets.models_dir(), models)
    reg = json.loads((models / "registry.json").read_text())
    base = dict(reg["detectors"]["rtmdet-tiny"], url=served.as_uri())
    reg["detectors"].update({
        "det-good": dict(base, filename=f"det_{digest[:8]}.pth", sha256_prefix=digest[:8]),
        "det-bad": dict(base, filename="det_00000000.pth", sha256_prefix="00000000"),
    })
    (models / "registry.json").write_text(json.dumps(reg))
    monkeypatch.setenv("HMRCLI_MODELS_DIR", str(models))
    monkeypatch.setenv("HMRCLI_CHECKPOINT_DIR", str(tmp_path / "ckpts"))
    assert {"det-good", "rtmdet-m", "cliff-res50"} <= set(known_checkpoints())
    assert "cliff-res50" not in known_checkpoints("detectors") and "rtmdet-m" not in known_checkpoints("checkpoints")
    path = fetch_checkpoint("det-good")
    assert path.read_bytes() == served.read_bytes()
    with pytest.raises(FetchError, match="expected 00000000"):
        fetch_checkpoint("det-bad")
    assert not (tmp_path / "ckpts" / "det_00000000.pth").exists()
    rep = verify_checkpoint("det-good")
    assert rep["ok"] and rep["sha256_ok"] and rep["loads"] and rep["layout"] == "mmdet"
    assert rep["sha256_prefix_expected"] == digest[:8] and rep["sha256_expected"] is None
    path.write_bytes(b"garbage")
    rep = verify_checkpoint("det-good")
    assert not rep["ok"] and rep["sha256_ok"] is False and not rep["loads"]
