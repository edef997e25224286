"""Images decoded into device memory (hmrcli.sources.device_decode) and the pipeline that uses
them: EXIF orientation on tensors, the host fallback (bit-identical to read_image), the
loader's choice, and whole runs whose files are byte for byte those of the plain pipeline.
The nvJPEG checks themselves need a CUDA device and torchvision (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import glob
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _pipeline_helpers import SAMPLES, output_state
from test_sources_robustness import with_exif

import hmrcli.pipeline.loader as loader_mod
from hmrcli import load_regressor
from hmrcli.body import load_body_model
from hmrcli.detect.boxes_backend import BoxesDetector
from hmrcli.engine.regress import RegressionEngine
from hmrcli.pipeline import InferOptions, run_inference
from hmrcli.sources import ImageReadError, decode_image, expand_inputs, read_image
from hmrcli.sources.device_decode import (
    decode_image_tensor,
    device_decode_unavailable,
    orient_tensor,
    read_image_tensor,
)
from hmrcli.sources.probe import apply_orientation

CUDA_NVJPEG = pytest.mark.skipif(not torch.cuda.is_available() or device_decode_unavailable("cuda") is not None,
                                 reason="needs a CUDA device and torchvision with nvJPEG")


def _jpeg(img: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _natural(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 3.0) * 4 - 384, 0, 255).astype(np.uint8)


def test_orient_tensor_equals_apply_orientation():
    img = np.arange(4 * 7 * 3, dtype=np.uint8).reshape(4, 7, 3)
    for o in range(0, 10):
        want = apply_orientation(img, o)
        got = orient_tensor(torch.from_numpy(img), o)
        np.testing.assert_array_equal(got.numpy(), want, err_msg=f"orientation {o}")
    assert orient_tensor(torch.from_numpy(img), 6).shape == (7, 4, 3)


def test_host_fallback_is_read_image_exactly(tmp_path):
    assert "not a CUDA device" in device_decode_unavailable("cpu")
    base = _jpeg(_natural(60, 90, 1))
    for o in (1, 3, 6, 8):
        data = with_exif(base, o)
        t, how = decode_image_tensor(data, "cpu", "x.jpg")
        assert how == "host" and t.dtype == torch.uint8 and t.device.type == "cpu"
        np.testing.assert_array_equal(t.numpy(), decode_image(data, "x.jpg"))
        assert t.shape[:2] == ((60, 90) if o in (1, 3) else (90, 60))
    f = tmp_path / "p.png"
    cv2.imwrite(str(f), _natural(20, 30, 2))
    np.testing.assert_array_equal(read_image_tensor(f, "cpu").numpy(), read_image(f))
    # the same errors, naming the file
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(base[: len(base) // 2])
    with pytest.raises(ImageReadError) as a:
        read_image_tensor(bad, "cpu")
    with pytest.raises(ImageReadError) as b:
        read_image(bad)
    assert str(a.value) == str(b.value) and "cut.jpg" in str(a.value)


class _DeviceImagesEngine(RegressionEngine):
    """The regression engine told to take device images on the CPU (what it does on CUDA):
    the loader then hands it tensors from read_image_tensor."""

    @property
    def image_device(self):
        return self.device


def test_loader_decodes_into_the_device_only_when_nothing_needs_host_pixels(monkeypatch, tmp_path):
    class Eng:
        image_device = torch.device("cuda")

    opts = InferOptions(out=tmp_path)
    boxes = BoxesDetector(records=[])
    mk = lambda det, o=opts: loader_mod._Loader([], Eng(), o, det, None)  # noqa: E731
    assert mk(boxes).image_reader()[1] == ("nvjpeg" if device_decode_unavailable("cuda") is None else "host")
    monkeypatch.setattr(loader_mod, "device_decode_unavailable", lambda dev: None)
    assert mk(boxes).image_reader()[1] == "nvjpeg"
    assert mk(boxes, InferOptions(out=tmp_path, overlay=True)).image_reader()[1] == "host"  # the overlay reads pixels

    class Pixels:
        name = "mmdet"

    assert mk(Pixels()).image_reader()[1] == "host"  # a detector that reads pixels (needs_pixels unset)
    Eng.image_device = None
    assert mk(boxes).image_reader()[1] == "host"  # an engine that takes host images


def test_device_images_through_the_pipeline_give_the_same_files(monkeypatch, tmp_path, fake_smpl_dir):
    """Boxes given, torch crop path: images decoded into tensors (the nvJPEG route, with the
    host decoder standing in on the CPU), staged batches, several decode threads -> the same
    files, byte for byte, as the plain pipeline (numpy images, no staging, one thread)."""
    import _probe as P

    ckpt, _ = P.small_checkpoint(tmp_path / "ckpt")
    body = load_body_model("smpl", smpl_dir=fake_smpl_dir)
    jpgs = sorted(glob.glob(str(SAMPLES / "*.jpg")))[:3]
    recs = []
    for k, p in enumerate(jpgs):
        h, w = read_image(p).shape[:2]
        recs.append({"path": p, "width": w, "height": h,
                     "persons": [{"box_xyxy": [0.1 * w, 0.1 * h, 0.5 * w, 0.9 * h], "score": 0.9},
                                 {"box_xyxy": [0.45 * w, 0.2 * h, 0.95 * w, 0.95 * h], "score": 0.8}][:1 + k % 2]})
    states, decodes = [], []
    real_reader = loader_mod._Loader.image_reader

    def spy(self):
        reader, name = real_reader(self)
        decodes.append(name)
        return reader, name

    monkeypatch.setattr(loader_mod._Loader, "image_reader", spy)
    monkeypatch.setattr(loader_mod, "device_decode_unavailable", lambda dev: None)
    for k, (cls, overlap, workers) in enumerate([(RegressionEngine, False, 0), (_DeviceImagesEngine, True, 2),
                                                 (_DeviceImagesEngine, False, 1)]):
        net = load_regressor(ckpt)
        eng = cls(net, body, batch_size=2, crops="torch", overlap=overlap)
        out = tmp_path / f"out{k}"
        summ = run_inference(expand_inputs(jpgs), eng, InferOptions(out=out, workers=workers, images_per_step=2),
                             detector=BoxesDetector(records=recs))
        assert (summ.done, summ.failed, summ.persons) == (3, 0, 4)
        states.append({k2: v for k2, v in output_state(out).items() if not k2.startswith("manifest")})
    assert decodes == ["host", "nvjpeg", "nvjpeg"]
    assert states[0].keys() == states[1].keys() == states[2].keys() and len(states[0]) > 6
    for name in states[0]:
        assert states[0][name] == states[1][name] == states[2][name], name


@CUDA_NVJPEG
def test_nvjpeg_equals_opencv_within_decoder_tolerance():
    files = [Path(p) for p in sorted(glob.glob(str(SAMPLES / "*.jpg")))]
    assert files
    for f in files:
        data = f.read_bytes()
        t, how = decode_image_tensor(data, "cuda", f)
        want = read_image(f)
        assert how == "nvjpeg" and t.device.type == "cuda" and t.shape == want.shape, f
        diff = np.abs(t.cpu().numpy().astype(np.int16) - want)
        # same coefficients, IDCT and chroma up-sampling may differ: a few grey levels at most
        assert diff.mean() < 1.5 and np.percentile(diff, 99.9) <= 12, (f, diff.mean(), diff.max())
    data = with_exif(_jpeg(_natural(60, 90, 3)), 6)
    t, how = decode_image_tensor(data, "cuda")
    assert how == "nvjpeg" and t.shape == (90, 60, 3)
    assert np.abs(t.cpu().numpy().astype(np.int16) - decode_image(data)).mean() < 1.5
