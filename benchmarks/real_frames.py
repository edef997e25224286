"""Real-frame accuracy of ``hmrcli infer``: real photos with ground-truth 3D joints and
calibrated cameras; JSON on stdout.

Frames (8): the 3D-pose test fixtures of OpenMMLab's MMPose (``tests/data`` at commit
``MMPOSE_COMMIT``): 4 Human3.6M frames (S1 Directions, S5 SittingDown, S7 Greeting, S8
WalkDog; ``h36m/test_h36m_body3d.npz`` + ``h36m/cameras.pkl``) and 4 MPI-INF-3DHP frames
(2 training-set studio frames, 2 test-set frames; ``mpi_inf_3dhp/test_3dhp_{train,test}.npz``
+ ``cameras_{train,test}.pkl``). The ``S`` arrays hold the 17 joints in the camera frame in
metres (MMPose's converters multiply the datasets' millimetres by 0.001); the camera pickles
hold fx, fy, cx, cy (Human3.6M's principal point is off-centre, e.g. (512.5, 515.5) in a
1000 x 1002 frame; MPI-INF-3DHP's test-set intrinsics were fitted by MMPose's converter from
its 2D/3D annotations). The GT projects onto the people within 1-2.5 px of the fixtures' own
2D joints (lens distortion is ignored, as hmrcli's pinhole camera does).

Licences -- the repository holds NONE of these files:

* MMPose (code and its test-fixture packaging): Apache-2.0.
* Human3.6M (Ionescu et al., TPAMI 2014, http://vision.imar.ro/human3.6m): images and
  poses under the Human3.6M licence: registration required, academic / non-commercial
  research use only, no redistribution.
* MPI-INF-3DHP (Mehta et al., 3DV 2017, https://vcai.mpi-inf.mpg.de/3dhp-dataset/): images
  and poses for non-commercial scientific research only, under the licence that comes with
  the dataset; no redistribution.

``--download`` fetches the 14 files (1.9 MB of JPEGs + annotations) from MMPose's public
GitHub repository at the pinned commit (raw.githubusercontent.com), checks each sha256 and
stores them under ``--data-root`` in MMPose's own layout; by downloading them you take on
the dataset licences above. Camera pickles are read with hmrcli's restricted unpickler
(plain numpy data only, nothing executed).

Data root layout (``--data-root DIR``): MMPose's ``tests/data`` subset below, so DIR may be an
MMPose checkout, its ``tests/data``, or a folder filled by ``--download``::

    DIR/h36m/test_h36m_body3d.npz      imgname (S1/S1_x.54138969/S1_x.54138969_000001.jpg), S (N,17,4)
    DIR/h36m/cameras.pkl               {(subject, camera_id): {f, c, R, T, ...}}
    DIR/h36m/S1/.../*.jpg
    DIR/mpi_inf_3dhp/test_3dhp_{train,test}.npz   imgname, S (N,17,4), part, center, scale
    DIR/mpi_inf_3dhp/cameras_{train,test}.pkl     {"S4_Seq2_Cam0" | "TS1": {f, c, ...}}
    DIR/mpi_inf_3dhp/*.jpg

Protocol: the 12 limb joints (COCO-17 shoulders, elbows, wrists, hips, knees, ankles;
``LIMB_NAMES``), predicted as hmrcli's body model's ``keypoints_coco`` from each person's
``person_00.params.npz`` (rotmats, betas, transl; camera frame), against the datasets' joints
of the same names. MPJPE (mm): both sides translated so their mid-hip points coincide.
PA-MPJPE (mm): similarity Procrustes (``hmrcli.bench.metrics.pa_mpjpe``). Root error: the
mid-hip point in the camera frame, depth (z) and 3D distance, metres. Note the body models'
hips are not the mocap markers' hips: a few cm of systematic offset is part of the figures.
The person box is the GT 2D joints' bounding box grown by ``--box-pad`` (default 15 %,
centred), clipped to the image; ``--box dataset`` uses the fixtures' square crop
(``center``, ``scale * 200``, 1.2 x the joints' extent) instead. ``constant_pose`` is the
body's relaxed standing pose (``hmrcli.body.pose_limits.POSE_MEAN``, mean shape) upright,
facing the camera: a floor every estimate should beat.

Variants run ``hmrcli infer`` once per variant over all frames (a folder of symlinks, boxes
in a ``hmrcli.detections/1`` file, the intrinsics per image with ``--intrinsics`` when the
CLI has it; otherwise ``--focal`` per group of frames with equal focal length and a warning:
principal point not applied). A variant whose flag the CLI lacks is reported as skipped.

Usage::

    python benchmarks/real_frames.py --data-root DIR [--download] [--variants default,nomirror,rois1,heavy,gmm]
        [--json-out FILE] [--keep-outputs DIR] [--overlay] [--draw-gt DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hmrcli.assets import sha256_file

MMPOSE_REPO = "open-mmlab/mmpose"
MMPOSE_COMMIT = "759b39c13fea6ba094afc1fa932f51dc1b11cbf9"
RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/tests/data/{path}"

#: relative path under the data root -> sha256 (MMPose ``tests/data`` at MMPOSE_COMMIT).
FILES: dict[str, str] = {
    "h36m/test_h36m_body3d.npz": "18c7c2ace888ef821117ac8c5211fc57e56f24b98cd281f5ffda2df72e2dbd82",
    "h36m/cameras.pkl": "382a17f51ed39dd2eda2d91a811e184897e69b6f4c42130b7453f7efd8d10237",
    "h36m/S1/S1_Directions_1.54138969/S1_Directions_1.54138969_000001.jpg":
        "bb3e1e2b0952df633dddbfa55974ecfeaa8d4e0f47ef08c0aebbb1166c6f3821",
    "h36m/S5/S5_SittingDown.54138969/S5_SittingDown.54138969_002061.jpg":
        "d1401955cc33db0757eb21352c2f75150001b65b90161f1e888f2af3e2ce0641",
    "h36m/S7/S7_Greeting.55011271/S7_Greeting.55011271_000396.jpg":
        "a5689b42f9d8a848709e35f4f1826002159dd6112161b3aa570ef140e4ae4e38",
    "h36m/S8/S8_WalkDog_1.55011271/S8_WalkDog_1.55011271_000026.jpg":
        "24bd002339c426f48a22a770b1061687af1730d735a885fed8f6883d8c47ce3c",
    "mpi_inf_3dhp/test_3dhp_train.npz": "a4194dc04950ae1b388c3ebebfb1147ac6d93ee4a74912c7bc036358ac8b2d9c",
    "mpi_inf_3dhp/test_3dhp_test.npz": "930da1f8187d5dd039e2e65346c350fc18f5a1f16aa5dcc27358e3a1cf60c2a7",
    "mpi_inf_3dhp/cameras_train.pkl": "baeb3204dfb4d9d9d0a93d78e71fadfd4934e696c51b7abfecb30cb9228b54b7",
    "mpi_inf_3dhp/cameras_test.pkl": "608a212a39c6582345c9733f66547d0b5f805023ed1aa0fd0f8b56f257f019a6",
    "mpi_inf_3dhp/S4_Seq2_Cam0_001033.jpg": "8f761dc7834039bec54ab82f953fd505c8012f05a0583afaeff1dfbad329a15c",
    "mpi_inf_3dhp/S8_Seq1_Cam8_002165.jpg": "71f8c5d6e7cd23803caa202a353009ff4e38e641dc07cc95b72d908eb4b30593",
    "mpi_inf_3dhp/TS1_002001.jpg": "54bcbcf5be8c811e3a85271c7a691920ca1c2cede190965f4499a3d1a326e155",
    "mpi_inf_3dhp/TS2_001850.jpg": "b5aaab0b959d524c06fb124c2b4aede01ab0d6c22ffad8cef961f93b46d10206",
}

#: The 12 limb joints, COCO-17 names and order (COCO17_NAMES[5:17]).
LIMB_NAMES: tuple[str, ...] = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
LIMB_HIPS = (6, 7)  # positions of left_hip, right_hip in LIMB_NAMES
#: LIMB_NAMES -> Human3.6M 17-joint index (MMPose order: 0 root, 1-3 right hip/knee/foot,
#: 4-6 left hip/knee/foot, 7 spine, 8 thorax, 9 neck/nose, 10 head, 11-13 left shoulder/
#: elbow/wrist, 14-16 right shoulder/elbow/wrist).
H36M_LIMB = (11, 14, 12, 15, 13, 16, 4, 1, 5, 2, 6, 3)
#: LIMB_NAMES -> MPI-INF-3DHP 17-joint index (0 head_top, 1 neck, 2-4 right shoulder/elbow/
#: wrist, 5-7 left, 8-10 right hip/knee/ankle, 11-13 left, 14 pelvis, 15 spine, 16 head).
MPI3DHP_LIMB = (5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)

#: variant -> extra ``hmrcli infer`` flags (the first flag must be listed by ``--help``).
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "nomirror": ["--no-mirror"],
    "rois1": ["--rois", "1"],
    "heavy": ["--landmarks", "heavy"],
    "gmm": ["--pose-prior", "gmm"],
}
BASELINE = "constant_pose"


@dataclass
class Frame:
    """One evaluation frame: camera-frame GT (metres) and intrinsics (pixels)."""

    name: str                 # unique file name for hmrcli (dataset prefix + original name)
    dataset: str              # "h36m" | "mpi_inf_3dhp"
    image: Path
    K: np.ndarray             # (3, 3)
    joints17: np.ndarray      # (17, 3) the dataset's joints, camera frame, metres
    limb_index: tuple[int, ...]
    width: int = 0
    height: int = 0
    box_dataset: list[float] | None = None  # xyxy, the fixture's square crop
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def limbs(self) -> np.ndarray:
        """(12, 3) GT limb joints in LIMB_NAMES order, camera frame, metres."""
        return self.joints17[list(self.limb_index)]


# ---------------------------------------------------------------------------------- data

def resolve_root(root: str | os.PathLike) -> Path:
    """The folder holding ``h36m/`` and/or ``mpi_inf_3dhp/`` (DIR, DIR/tests/data or DIR/data)."""
    root = Path(root)
    for cand in (root, root / "tests" / "data", root / "data"):
        if (cand / "h36m").is_dir() or (cand / "mpi_inf_3dhp").is_dir():
            return cand
    return root


def download(root: Path, commit: str = MMPOSE_COMMIT, files: dict[str, str] | None = None,
             url_template: str = RAW_URL, timeout: float = 30.0) -> list[str]:
    """Fetch missing / mismatching files into ``root``; returns the paths fetched.
    Raises SystemExit with a readable message when offline or a checksum differs."""
    files = FILES if files is None else files
    fetched = []
    for rel, digest in files.items():
        dest = root / rel
        if dest.is_file() and sha256_file(dest) == digest:
            continue
        url = url_template.format(repo=MMPOSE_REPO, commit=commit, path=rel)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                data = r.read()
        except (urllib.error.URLError, OSError) as e:
            raise SystemExit(
                f"--download: cannot fetch {url} ({getattr(e, 'reason', e)}). This needs network "
                f"access to raw.githubusercontent.com; offline, copy MMPose's tests/data "
                f"(commit {commit}) to {root} by hand, or pass --data-root to an MMPose checkout."
            ) from None
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise SystemExit(f"--download: {url}: sha256 {got} != expected {digest}; not stored.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        fetched.append(rel)
    return fetched


def _load_pickle(path: Path) -> dict:
    from hmrcli.body.safe_pickle import load_smpl_pickle  # restricted: numpy data only
    return load_smpl_pickle(path)


def intrinsics(f: Any, c: Any) -> np.ndarray:
    fx, fy = np.ravel(np.asarray(f, dtype=np.float64))[:2]
    cx, cy = np.ravel(np.asarray(c, dtype=np.float64))[:2]
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _box_from_center_scale(center: Any, scale: float) -> list[float]:
    cx, cy = (float(v) for v in np.ravel(center)[:2])
    half = 100.0 * float(scale)
    return [cx - half, cy - half, cx + half, cy + half]


def load_h36m(root: Path) -> list[Frame]:
    d = np.load(root / "h36m" / "test_h36m_body3d.npz", allow_pickle=False)
    cams = _load_pickle(root / "h36m" / "cameras.pkl")
    frames = []
    for i, rel in enumerate(d["imgname"]):
        rel = str(rel)
        base = rel.split("/")[-1]                        # S1_Directions_1.54138969_000001.jpg
        subject = base.split("_")[0]
        cam_id = base.split(".")[1].split("_")[0]
        cam = cams[(subject, cam_id)]
        frames.append(Frame(
            name=f"h36m_{base}", dataset="h36m", image=root / "h36m" / rel,
            K=intrinsics(cam["f"], cam["c"]), joints17=np.asarray(d["S"][i, :, :3], dtype=np.float64),
            limb_index=H36M_LIMB, box_dataset=_box_from_center_scale(d["center"][i], d["scale"][i]),
            extra={"subject": subject, "camera": cam_id},
        ))
    return frames


def load_3dhp(root: Path) -> list[Frame]:
    frames = []
    for split in ("train", "test"):
        npz = root / "mpi_inf_3dhp" / f"test_3dhp_{split}.npz"
        if not npz.is_file():
            continue
        d = np.load(npz, allow_pickle=False)
        cams = _load_pickle(root / "mpi_inf_3dhp" / f"cameras_{split}.pkl")
        for i, base in enumerate(d["imgname"]):
            base = str(base)
            key = base.split("_")[0] if split == "test" else "_".join(base.split("_")[:3])
            cam = cams[key]
            frames.append(Frame(
                name=f"3dhp_{base}", dataset="mpi_inf_3dhp", image=root / "mpi_inf_3dhp" / base,
                K=intrinsics(cam["f"], cam["c"]), joints17=np.asarray(d["S"][i, :, :3], dtype=np.float64),
                limb_index=MPI3DHP_LIMB, box_dataset=_box_from_center_scale(d["center"][i], d["scale"][i]),
                extra={"camera": key, "split": split},
            ))
    return frames


def load_frames(root: str | os.PathLike) -> list[Frame]:
    """Every frame found under the data root (sizes read from the images)."""
    import cv2

    root = resolve_root(root)
    frames: list[Frame] = []
    if (root / "h36m" / "test_h36m_body3d.npz").is_file():
        frames += load_h36m(root)
    if (root / "mpi_inf_3dhp").is_dir():
        frames += load_3dhp(root)
    if not frames:
        raise SystemExit(f"{root}: no frames (expected h36m/test_h36m_body3d.npz or "
                         "mpi_inf_3dhp/test_3dhp_*.npz; use --download)")
    for fr in frames:
        img = cv2.imread(str(fr.image), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise SystemExit(f"{fr.image}: missing or not an image (use --download)")
        fr.height, fr.width = img.shape[:2]
    return frames


def project(K: np.ndarray, X: np.ndarray) -> np.ndarray:
    """(N, 3) camera-frame points -> (N, 2) pixels (pinhole, no distortion)."""
    X = np.asarray(X, dtype=np.float64)
    return (X[:, :2] / X[:, 2:3]) @ K[:2, :2].T + K[:2, 2]


def gt_box(fr: Frame, pad: float = 0.15) -> list[float]:
    """Bounding box of the projected 17 GT joints grown by ``pad`` (fraction of each side,
    centred), clipped to the image."""
    p = project(fr.K, fr.joints17)
    lo, hi = p.min(0), p.max(0)
    c, s = (lo + hi) / 2, (hi - lo) * (1 + pad)
    x1, y1 = c - s / 2
    x2, y2 = c + s / 2
    w, h = fr.width or np.inf, fr.height or np.inf
    return [float(max(0.0, x1)), float(max(0.0, y1)), float(min(w - 1, x2)), float(min(h - 1, y2))]


def person_box(fr: Frame, mode: str = "gt2d", pad: float = 0.15) -> list[float]:
    if mode == "dataset" and fr.box_dataset is not None:
        x1, y1, x2, y2 = fr.box_dataset
        return [max(0.0, x1), max(0.0, y1), min(fr.width - 1.0, x2), min(fr.height - 1.0, y2)]
    return gt_box(fr, pad)


# ------------------------------------------------------------------------------- metrics
def mid_hip(j12: np.ndarray) -> np.ndarray:
    return np.asarray(j12)[..., list(LIMB_HIPS), :].mean(-2)


def limb_errors(pred: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    """pred, gt: (12, 3) camera-frame metres -> MPJPE / PA-MPJPE (mm), per-joint (mm, mid-hip
    aligned), root offsets (m)."""
    from hmrcli.bench.metrics import pa_mpjpe

    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    pc, gc = pred - mid_hip(pred), gt - mid_hip(gt)
    per_joint = np.linalg.norm(pc - gc, axis=-1) * 1000.0
    root_p, root_g = mid_hip(pred), mid_hip(gt)
    return {
        "pa_mpjpe_mm": float(pa_mpjpe(pred, gt)[0]),
        "mpjpe_mm": float(per_joint.mean()),
        "per_joint_mm": per_joint,
        "root_depth_err_m": float(root_p[2] - root_g[2]),
        "root_err_m": float(np.linalg.norm(root_p - root_g)),
    }


def coco_limbs(kp17: np.ndarray) -> np.ndarray:
    """COCO-17 keypoints (..., 17, 3) -> limb joints (..., 12, 3)."""
    from hmrcli.body import COCO17_NAMES

    return np.asarray(kp17)[..., [COCO17_NAMES.index(n) for n in LIMB_NAMES], :]


def constant_pose_limbs(body) -> np.ndarray:
    """(12, 3) limb joints of the relaxed standing pose, upright and facing the camera (body
    +Y up -> camera -Y, body +Z forward -> camera -Z), mid-hip at the origin."""
    import torch

    from hmrcli.body.pose_limits import POSE_MEAN

    pose = np.zeros((1, 24, 3))
    pose[0, 0] = (np.pi, 0.0, 0.0)
    pose[0, 1:] = POSE_MEAN
    out = body(torch.as_tensor(pose, dtype=torch.float64))
    j = coco_limbs(out.keypoints_coco[0].numpy())
    return j - mid_hip(j)


def predicted_limbs(body, params_npz: Path) -> np.ndarray:
    """(12, 3) camera-frame limb joints from an hmrcli ``person_XX.params.npz``."""
    import torch

    d = np.load(params_npz, allow_pickle=False)
    rot = torch.as_tensor(d["rotmats"][None], dtype=torch.float64)
    betas = torch.as_tensor(d["betas"][None], dtype=torch.float64)
    if "betas_applied" in d.files and not bool(d["betas_applied"]):
        betas = torch.zeros_like(betas)
    transl = torch.as_tensor(d["transl"][None], dtype=torch.float64)
    return coco_limbs(body(rot, betas, transl).keypoints_coco[0].numpy())


def summarize(per_frame: dict[str, dict[str, Any]], frames: list[Frame]) -> dict[str, Any]:
    keys = ("pa_mpjpe_mm", "mpjpe_mm", "root_depth_err_m", "root_err_m", "landmark_err_px")
    out: dict[str, Any] = {}
    groups = {"all": [f.name for f in frames]}
    for ds in sorted({f.dataset for f in frames}):
        groups[ds] = [f.name for f in frames if f.dataset == ds]
    for g, names in groups.items():
        rows = [per_frame[n] for n in names if n in per_frame and "mpjpe_mm" in per_frame[n]]
        s: dict[str, Any] = {"frames": len(rows), "of": len(names)}
        for k in keys:
            v = [r[k] for r in rows if r.get(k) is not None]
            if v:
                s[k if k != "root_depth_err_m" else "abs_root_depth_err_m"] = round(
                    float(np.mean(np.abs(v) if k == "root_depth_err_m" else v)), 3 if k.endswith("_m") else 1)
        if rows:
            s["per_joint_mm"] = dict(zip(LIMB_NAMES, np.round(np.mean([r["per_joint_mm"] for r in rows], 0), 1).tolist()))
        from hmrcli.bench.quality_check import ranking

        scored = [r for r in rows if r.get("quality_score") is not None and r.get("pa_mpjpe_mm") is not None]
        if len(scored) >= 3:  # does the quality score rank the frames by their error? (hmrcli.bench.quality_check)
            s["quality_ranking"] = ranking(np.array([r["quality_score"] for r in scored]),
                                           np.array([r["pa_mpjpe_mm"] for r in scored]))
        out[g] = s
    return out


def _rounded_frame(r: dict[str, Any]) -> dict[str, Any]:
    o = {}
    for k, v in r.items():
        if k == "per_joint_mm":
            o[k] = dict(zip(LIMB_NAMES, np.round(v, 0).astype(int).tolist()))
        elif isinstance(v, float):
            o[k] = round(v, 3 if k.endswith("_m") else 4 if k == "quality_score" else 1)
        else:
            o[k] = v
    return o


# ---------------------------------------------------------------------------------- CLI
def hmrcli_exe() -> str:
    here = Path(sys.executable).parent / "hmrcli"
    return str(here) if here.exists() else (shutil.which("hmrcli") or "hmrcli")


def cli_flags(exe: str) -> set[str]:
    """Long options ``hmrcli infer --help`` lists."""
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
    r = subprocess.run([exe, "infer", "--help"], capture_output=True, text=True, env=env)
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", r.stdout + r.stderr))


def cli_version(exe: str) -> str:
    r = subprocess.run([exe, "--version"], capture_output=True, text=True)
    return (r.stdout or r.stderr).strip()


def write_inputs(frames: list[Frame], work: Path, box_mode: str, pad: float) -> tuple[Path, Path, Path]:
    """images/ (symlinks), boxes.jsonl (hmrcli.detections/1), intrinsics.json."""
    img_dir = work / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    lines, intr = [], {}
    for fr in frames:
        link = img_dir / fr.name
        if not link.exists():
            try:
                link.symlink_to(fr.image.resolve())
            except OSError:
                shutil.copyfile(fr.image, link)
        box = person_box(fr, box_mode, pad)
        lines.append(json.dumps({
            "schema": "hmrcli.detections/1", "path": str(link), "name": fr.name, "width": fr.width,
            "height": fr.height, "detector": "ground-truth",
            "persons": [{"box_xyxy": [round(v, 2) for v in box], "score": None, "class": "person",
                         "detector": f"gt:{box_mode}"}]}))
        intr[fr.name] = {"K": fr.K.tolist()}
    boxes = work / "boxes.jsonl"
    boxes.write_text("\n".join(lines) + "\n")
    intr_file = work / "intrinsics.json"
    intr_file.write_text(json.dumps({"images": intr}, indent=1))
    return img_dir, boxes, intr_file


def focal_groups(frames: list[Frame], tol: float = 0.01) -> list[tuple[float, list[Frame]]]:
    """Frames grouped by mean focal length (within ``tol`` relative), for --focal runs."""
    groups: list[tuple[float, list[Frame]]] = []
    for fr in sorted(frames, key=lambda f: (f.K[0, 0] + f.K[1, 1]) / 2):
        f = (fr.K[0, 0] + fr.K[1, 1]) / 2
        if groups and abs(f / groups[-1][0] - 1) <= tol:
            groups[-1][1].append(fr)
        else:
            groups.append((f, [fr]))
    return [(float(np.mean([(g.K[0, 0] + g.K[1, 1]) / 2 for g in fs])), fs) for _, fs in groups]


def output_dir(out: Path, name: str) -> Path | None:
    for cand in (out / name, out / Path(name).stem):
        if cand.is_dir():
            return cand
    return None


def run_variant(exe: str, flags: list[str], frames: list[Frame], img_dir: Path, boxes: Path,
                intr_file: Path | None, out: Path, overlay: bool) -> tuple[list[list[str]], float, list[str]]:
    """Run ``hmrcli infer`` (once, or once per focal group without --intrinsics)."""
    cmds, errors = [], []
    base = [exe, "infer"]
    tail = ["--out", str(out), "--boxes", str(boxes), "--no-json", "--quiet", "--overwrite"]
    tail += ["--overlay"] if overlay else []
    if intr_file is not None:
        cmds.append(base + [str(img_dir)] + tail + ["--intrinsics", str(intr_file)] + flags)
    else:
        for f, fs in focal_groups(frames):
            cmds.append(base + [str(img_dir / fr.name) for fr in fs] + tail + ["--focal", f"{f:.3f}"] + flags)
    t0 = time.perf_counter()
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode not in (0, 1):
            errors.append(f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[-800:]}")
    return cmds, time.perf_counter() - t0, errors


def score_outputs(body_cache: dict, frames: list[Frame], out: Path) -> dict[str, dict[str, Any]]:
    from hmrcli.body import load_body_model

    res: dict[str, dict[str, Any]] = {}
    for fr in frames:
        d = output_dir(out, fr.name)
        p = d / "person_00.params.npz" if d else None
        if p is None or not p.is_file():
            res[fr.name] = {"error": _error_for(out, fr.name) or "no person_00.params.npz"}
            continue
        name = str(np.load(p, allow_pickle=False).get("body_model", "free"))
        if name not in body_cache:
            body_cache[name] = load_body_model(name)
        pred = predicted_limbs(body_cache[name], p)
        r = limb_errors(pred, fr.limbs)
        cam_file = d / "person_00.camera.json"
        if cam_file.is_file():
            cam = json.loads(cam_file.read_text())
            ks = cam.get("K_source") or cam.get("focal_source")
            r["K_source"] = re.sub(r"\S*intrinsics\.json", "intrinsics.json", ks) if isinstance(ks, str) else ks
            lm = ((cam.get("estimate") or {}).get("landmarks") or {}).get("kp2d_px")
            if lm is not None:
                lm = coco_limbs(np.asarray(lm, dtype=np.float64))
                r["landmark_err_px"] = float(np.linalg.norm(lm - project(fr.K, fr.limbs), axis=-1).mean())
            fit = (cam.get("estimate") or {}).get("fit") or {}
            if "reproj_px" in fit:
                r["fit_reproj_px"] = fit["reproj_px"]
            q = cam.get("quality") or {}
            if q.get("score") is not None:
                r["quality_score"] = q["score"]
                r["quality_flags"] = q.get("flags", [])
        res[fr.name] = r
    return res


def _error_for(out: Path, name: str) -> str | None:
    f = out / "errors.jsonl"
    if not f.is_file():
        return None
    for line in f.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if name in str(e.get("file", "")):
            return f"{e.get('stage')}: {e.get('message')}"
    return None


def draw_gt(frames: list[Frame], dest: Path, box_mode: str, pad: float) -> list[str]:
    """PNG per frame: GT joints projected (left limbs blue, right red, others white), box green."""
    import cv2

    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for fr in frames:
        img = cv2.imread(str(fr.image))
        p = project(fr.K, fr.joints17)
        r = max(3, int(round(min(fr.width, fr.height) / 200)))
        for i, xy in enumerate(p):
            cv2.circle(img, tuple(int(round(v)) for v in xy), r, (255, 255, 255), -1)
        for k, (n, j) in enumerate(zip(LIMB_NAMES, fr.limb_index)):
            col = (255, 80, 0) if n.startswith("left") else (0, 0, 255)
            xy = tuple(int(round(v)) for v in p[j])
            cv2.circle(img, xy, r + 2, col, -1)
            cv2.putText(img, n.replace("left_", "L").replace("right_", "R")[:5], (xy[0] + r + 2, xy[1]),
                        cv2.FONT_HERSHEY_SIMPLEX, r / 8, col, max(1, r // 3))
        x1, y1, x2, y2 = (int(round(v)) for v in person_box(fr, box_mode, pad))
        cv2.rectangle(img, (x1, y1), (x2, y2), (0, 255, 0), max(1, r // 2))
        c = tuple(int(round(v)) for v in fr.K[:2, 2])
        cv2.drawMarker(img, c, (0, 255, 255), cv2.MARKER_CROSS, 6 * r, max(1, r // 2))
        out = dest / (Path(fr.name).stem + ".png")
        cv2.imwrite(str(out), img)
        written.append(str(out))
    return written


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("HMRCLI_REAL_FRAMES"),
                    help="MMPose tests/data layout (or an MMPose checkout); env HMRCLI_REAL_FRAMES")
    ap.add_argument("--download", action="store_true", help="fetch missing files into --data-root (sha256-checked)")
    ap.add_argument("--variants", default="default,nomirror,rois1,heavy,gmm",
                    help=f"comma-separated, of {', '.join(VARIANTS)} (the {BASELINE} baseline always runs)")
    ap.add_argument("--box", choices=("gt2d", "dataset"), default="gt2d")
    ap.add_argument("--box-pad", type=float, default=0.15)
    ap.add_argument("--json-out", help="also write the JSON here")
    ap.add_argument("--keep-outputs", help="keep hmrcli's outputs here (DIR/<variant>/...)")
    ap.add_argument("--overlay", action="store_true", help="pass --overlay to hmrcli (see --keep-outputs)")
    ap.add_argument("--draw-gt", help="write GT-projection check PNGs to this folder and exit")
    ap.add_argument("--frames", help="comma-separated substrings: keep only matching frames")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    if not a.data_root:
        ap.error("--data-root DIR is required (or set HMRCLI_REAL_FRAMES)")
    root = resolve_root(a.data_root)
    if a.download:
        root = Path(a.data_root)
        if not ((root / "h36m").is_dir() or (root / "mpi_inf_3dhp").is_dir()):
            root = resolve_root(root)
        fetched = download(root)
        print(f"downloaded {len(fetched)} file(s) into {root}", file=sys.stderr)
    frames = load_frames(root)
    if a.frames:
        keep = a.frames.split(",")
        frames = [f for f in frames if any(k in f.name for k in keep)]
    if a.draw_gt:
        written = draw_gt(frames, Path(a.draw_gt), a.box, a.box_pad)
        print(json.dumps({"written": written}, indent=1))
        return {"written": written}

    checks = {}
    for rel, digest in FILES.items():
        p = root / rel
        checks[rel] = p.is_file() and sha256_file(p) == digest
    exe = hmrcli_exe()
    flags = cli_flags(exe)
    warnings = []
    use_intr = "--intrinsics" in flags
    if not use_intr:
        warnings.append("hmrcli infer has no --intrinsics: ran with --focal per group of equal focal length; "
                        "principal point not applied (hmrcli assumes the image centre)")
    wanted = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in VARIANTS and v != BASELINE]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")

    from hmrcli.body import load_body_model

    body_cache = {"free": load_body_model("free")}
    result: dict[str, Any] = {
        "benchmark": "real_frames",
        "hmrcli": cli_version(exe),
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "data": {"root": str(root), "source": f"github.com/{MMPOSE_REPO} tests/data @ {MMPOSE_COMMIT}",
                 "licences": "Human3.6M and MPI-INF-3DHP: non-commercial research only, no redistribution; "
                             "MMPose: Apache-2.0",
                 "sha256_ok": all(checks.values()) if checks else None,
                 "sha256_mismatch": [k for k, ok in checks.items() if not ok],
                 "frames": {f.name: {"dataset": f.dataset, "size": [f.width, f.height],
                                     "fx_fy_cx_cy": [round(f.K[0, 0], 2), round(f.K[1, 1], 2), round(f.K[0, 2], 2),
                                                     round(f.K[1, 2], 2)],
                                     "gt_root_depth_m": round(float(mid_hip(f.limbs)[2]), 3),
                                     "box_xyxy": [round(v, 1) for v in person_box(f, a.box, a.box_pad)],
                                     **f.extra} for f in frames}},
        "protocol": {"joints": list(LIMB_NAMES), "units": "mm (root: m)",
                     "mpjpe": "mid-hip aligned", "pa_mpjpe": "similarity Procrustes (hmrcli.bench.metrics.pa_mpjpe)",
                     "root": "mid-hip, camera frame: depth error pred-gt (signed per frame, mean |.|) and 3D distance",
                     "landmark_err_px": "BlazePose COCO-17 limb landmarks (camera.json estimate) vs GT projection",
                     "box": f"{a.box}" + (f", pad {a.box_pad:.0%}" if a.box == "gt2d" else "")},
        "camera": "intrinsics (--intrinsics, per image K)" if use_intr else "focal fallback (--focal)",
        "warnings": warnings,
        "variants": {},
    }

    # baseline
    const = constant_pose_limbs(body_cache["free"])
    per = {}
    for fr in frames:
        r = limb_errors(const + mid_hip(fr.limbs), fr.limbs)
        r.pop("root_depth_err_m")
        r.pop("root_err_m")
        per[fr.name] = r
    result["variants"][BASELINE] = {
        "status": "ok", "what": "POSE_MEAN, mean shape, upright facing the camera; mid-hip placed on the GT's",
        "mean": summarize(per, frames), "frames": {k: _rounded_frame(v) for k, v in per.items()}}

    keep = Path(a.keep_outputs) if a.keep_outputs else None
    with tempfile.TemporaryDirectory(prefix="hmrcli_real_frames_") as tmp:
        work = Path(tmp)
        img_dir, boxes, intr_file = write_inputs(frames, work, a.box, a.box_pad)
        for v in wanted:
            if v == BASELINE:
                continue
            vflags = VARIANTS[v]
            if vflags and vflags[0] not in flags:
                result["variants"][v] = {"status": "skipped", "flags": vflags,
                                         "reason": f"hmrcli infer --help does not list {vflags[0]}"}
                continue
            out = (keep / v) if keep else work / "out" / v
            cmds, secs, errors = run_variant(exe, vflags, frames, img_dir, boxes, intr_file if use_intr else None,
                                             out, a.overlay)
            per = score_outputs(body_cache, frames, out)
            result["variants"][v] = {
                "status": "ok" if not errors else "failed", "flags": vflags, "errors": errors,
                "commands": [" ".join(c) for c in cmds], "seconds": round(secs, 1),
                "seconds_per_frame": round(secs / max(1, len(frames)), 2),
                "mean": summarize(per, frames), "frames": {k: _rounded_frame(v) for k, v in per.items()}}
        if keep:
            keep.mkdir(parents=True, exist_ok=True)
            for f in (boxes, intr_file):
                shutil.copyfile(f, keep / f.name)
    result["seconds_total"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if a.json_out:
        Path(a.json_out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
