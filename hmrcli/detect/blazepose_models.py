"""BlazePose landmark model files: ``full`` (in the mediapipe 0.10.21 wheel) and ``heavy``.

BlazePose GHUM Heavy (``pose_landmark_heavy.tflite``, 27.7 MB, Apache-2.0, Google) is the
larger landmark network MediaPipe downloads itself for ``model_complexity=2``. mediapipe
0.10.21's Pose graph loads it from its own package folder
(``mediapipe/modules/pose_landmark/``), so hmrcli installs it there, as mediapipe does,
after checking its sha256. Where it comes from, in this order:

1. already in mediapipe's folder (checked);
2. hmrcli's cache, ``$HMRCLI_HOME/models/blazepose/`` (default ``~/.cache/hmrcli/...``);
3. a local npm tarball or file given to :func:`install_landmark_model` (``make install-heavy``
   runs ``npm pack @mediapipe/pose@0.5.1675469404`` and hands it over: the npm package holds
   a byte-identical copy);
4. a download (``download=True``): the npm registry's tarball of that package, else
   MediaPipe's own address (``storage.googleapis.com/mediapipe-assets``).

Without any of them :func:`ensure_landmark_model` raises
:class:`hmrcli.detect.base.DetectorUnavailable` saying how to get the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hmrcli.assets import hmrcli_home, sha256_file
from hmrcli.detect.base import DetectorUnavailable
from hmrcli.files import atomic_write_bytes

__all__ = ["LandmarkModelFile", "LANDMARK_FILES", "NPM_PACKAGE", "landmark_model_status", "ensure_landmark_model",
           "install_landmark_model", "cache_dir"]

NPM_PACKAGE = "@mediapipe/pose@0.5.1675469404"
NPM_TARBALL_URL = "https://registry.npmjs.org/@mediapipe/pose/-/pose-0.5.1675469404.tgz"
NPM_TARBALL_SHA256 = "8bb349a7b3a3ba699df23be804ddd3b3eab810b50b15406894be257859388a84"
GCS_URL = "https://storage.googleapis.com/mediapipe-assets/"


@dataclass(frozen=True)
class LandmarkModelFile:
    name: str
    filename: str
    sha256: str
    size: int
    licence: str = "Apache-2.0 (Google; model card: BlazePose GHUM 3D)"


LANDMARK_FILES = {
    "full": LandmarkModelFile("full", "pose_landmark_full.tflite",
                              "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f", 6440512),
    "heavy": LandmarkModelFile("heavy", "pose_landmark_heavy.tflite",
                               "59e42d71bcd44cbdbabc419f0ff76686595fd265419566bd4009ef703ea8e1fe", 27709200),
}


def cache_dir() -> Path:
    """Where downloaded BlazePose files are kept: ``$HMRCLI_HOME/models/blazepose``."""
    return hmrcli_home() / "models" / "blazepose"


def _mediapipe_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("mediapipe")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "modules" / "pose_landmark"


def _good(path: Path, spec: LandmarkModelFile) -> bool:
    try:
        return path.is_file() and path.stat().st_size == spec.size and sha256_file(path) == spec.sha256
    except OSError:
        return False


def landmark_model_status(name: str) -> tuple[bool, str]:
    """(usable, description) of a landmark model, without installing anything."""
    spec = LANDMARK_FILES[name]
    mp = _mediapipe_dir()
    if mp is None:
        return False, "mediapipe is not installed"
    if _good(mp / spec.filename, spec):
        return True, f"{mp / spec.filename} (sha256 ok)"
    cached = cache_dir() / spec.filename
    if _good(cached, spec):
        return True, f"{cached} (cached; copied into mediapipe's folder on first use)"
    return False, _missing_message(spec)


def _missing_message(spec: LandmarkModelFile) -> str:
    return (f"the BlazePose {spec.name} landmark model ({spec.filename}) is not installed: run `make install-heavy` "
            f"(needs npm), or `hmrcli weights fetch blazepose-{spec.name}` (downloads {NPM_PACKAGE} from the npm "
            f"registry, {spec.size / 1e6:.1f} MB model), or `hmrcli weights fetch blazepose-{spec.name} --from FILE` "
            f"with the .tflite or the npm tarball (`npm pack {NPM_PACKAGE}`)")


def _from_tarball(data: bytes, spec: LandmarkModelFile, origin: str) -> bytes:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
            member = tf.getmember(f"package/{spec.filename}")
            f = tf.extractfile(member)
            if f is None:
                raise KeyError(spec.filename)
            return f.read()
    except (tarfile.TarError, KeyError, OSError) as e:
        raise DetectorUnavailable(f"{origin}: not an npm tarball of {NPM_PACKAGE} holding package/{spec.filename} "
                                  f"({type(e).__name__}: {e})") from None


def _check(data: bytes, spec: LandmarkModelFile, origin: str) -> bytes:
    got = hashlib.sha256(data).hexdigest()
    if got != spec.sha256:
        raise DetectorUnavailable(f"{origin}: sha256 {got} is not the expected {spec.sha256} of {spec.filename}; "
                                  "refusing to use it")
    return data


def install_landmark_model(name: str, source: str | os.PathLike | None = None, download: bool = False,
                           timeout: float = 120.0) -> Path:
    """Put a landmark model into hmrcli's cache and mediapipe's folder; returns the path in
    mediapipe's folder. ``source``: a ``.tflite`` file or the npm tarball; else the cache;
    else (``download=True``) the npm registry, then MediaPipe's address. Raises
    DetectorUnavailable (with what to do) when none works or a file fails its sha256."""
    spec = LANDMARK_FILES[name]
    mp = _mediapipe_dir()
    if mp is None:
        raise DetectorUnavailable("mediapipe is not installed (`make install-fit`)")
    target = mp / spec.filename
    cached = cache_dir() / spec.filename
    data: bytes | None = None
    if source is not None:
        src = Path(source)
        try:
            raw = src.read_bytes()
        except OSError as e:
            raise DetectorUnavailable(f"{src}: cannot read ({e.strerror or e})") from None
        data = _check(_from_tarball(raw, spec, str(src)) if raw[:2] == b"\x1f\x8b" else raw, spec, str(src))
    elif _good(target, spec):
        return target
    elif _good(cached, spec):
        data = cached.read_bytes()
    elif download:
        errors = []
        for url, tarball in ((NPM_TARBALL_URL, True), (GCS_URL + spec.filename, False)):
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (fixed https URLs)
                    raw = r.read()
                if tarball:
                    if hashlib.sha256(raw).hexdigest() != NPM_TARBALL_SHA256:
                        raise DetectorUnavailable(f"{url}: the tarball's sha256 is not the pinned one")
                    raw = _from_tarball(raw, spec, url)
                data = _check(raw, spec, url)
                break
            except (OSError, DetectorUnavailable) as e:
                errors.append(f"{url}: {e}")
        if data is None:
            raise DetectorUnavailable("could not download the BlazePose " + name + " landmark model: "
                                      + "; ".join(errors) + ". " + _missing_message(spec))
    else:
        raise DetectorUnavailable(_missing_message(spec))
    if not _good(cached, spec):
        try:
            atomic_write_bytes(cached, data)
        except OSError:
            pass  # the cache is a convenience
    if not _good(target, spec):
        try:
            atomic_write_bytes(target, data)
        except OSError as e:
            raise DetectorUnavailable(f"cannot write {target} ({e.strerror or e}): mediapipe loads its landmark "
                                      f"models only from its own folder; install it where you can write, or copy "
                                      f"{cached} there") from None
    return target


def ensure_landmark_model(name: str) -> Path:
    """The landmark model ready for mediapipe (from the cache if needed; never downloads).
    Raises DetectorUnavailable saying how to get it."""
    if name not in LANDMARK_FILES:
        raise ValueError(f"unknown landmark model {name!r}: use {', '.join(LANDMARK_FILES)}")
    return install_landmark_model(name)
