"""Ablation of the Multi-RoI training on a synthetic train/test split (paper Table 2, in small).

Runs ``hmrcli train`` with identical data, seed, schedule and budget for every row:

* ``M=1 (CLIFF-like)``: the CLIFF regressor, one RoI (no fusion, no camera-consistency or
  contrastive loss, which need several RoIs);
* ``M=5 full``: Multi-RoI with fusion, all losses (docs/method.md §6 weights);
* ``M=5 without L_cam``: ``losses.camera = 0``;
* ``M=5 without L_contrast``: ``losses.contrast = 0``;
* ``ImpHMR (M=1)``: ImpHMR (docs/method.md §10) with all its losses, feature-field width
  ``--imphmr-head-dim``;
* ``PointHMR``: PointHMR (docs/method.md §11) with all its losses, backbone
  ``--pointhmr-backbone`` (default: ``--backbone``), token width ``--pointhmr-head-dim``;

and reports MPJPE / PA-MPJPE / PVE (mm) on the held-out synthetic test split (24 skeleton
joints of the free body model, pelvis-centred; PVE pelvis-centred, no alignment), as JSON on
stdout with the exact command lines, steps, samples and timings.

The data: :func:`hmrcli.train.synthetic.write_synthetic_dataset` (free body model rendered
over procedural backgrounds), split by image. It validates the training machinery; the
numbers say nothing about accuracy on real photos. At the default CPU scale (ResNet-18,
small crops, a few hundred steps) the differences between the rows are of the order of the
run-to-run noise: read them as "the pipeline trains", not as a reproduction of Table 2.

Usage::

    python benchmarks/train_ablation.py --work runs/ablation            # CPU default scale
    python benchmarks/train_ablation.py --work runs/abl --steps 5000 --batch-size 48 \\
        --backbone resnet50 --crop 256 192 --train-samples 20000 --device cuda --precision bf16 \\
        --imphmr-head-dim 0 --pointhmr-head-dim 0 --pointhmr-backbone hrnet_w32_pose
    python benchmarks/train_ablation.py --only 0 1 4 5 --steps 120   # the four architectures

(``--*-head-dim 0`` is each paper's width: ImpHMR's field MLP 128, PointHMR's tokens 512; the
CPU defaults are smaller, as ResNet-18 and 64x48 crops stand in for the papers' backbones
and crops.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

RUNS = (
    ("M=1 (CLIFF-like)", ["model.arch=cliff", "model.num_rois=1", "losses.contrast=0", "losses.camera=0"]),
    ("M=5 full", []),
    ("M=5 without L_cam", ["losses.camera=0"]),
    ("M=5 without L_contrast", ["losses.contrast=0"]),
    ("ImpHMR (M=1)", ["model.arch=imphmr", "model.num_rois=1", "losses.contrast=0", "losses.camera=0"]),
    ("PointHMR", ["model.arch=pointhmr", "model.num_rois=1", "losses.contrast=0", "losses.camera=0"]),
)
IMPHMR_ROW, POINTHMR_ROW = 4, 5


def _data(work: Path, n_train: int, n_test: int, seed: int, image_wh: tuple[int, int]) -> dict[str, str]:
    """Generate (once) the synthetic train and test sets (different seeds, so no image is shared)."""
    from hmrcli.train.synthetic import SyntheticConfig, write_synthetic_dataset

    out = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1000)):
        root = work / "data" / split
        npz = root / "synthetic.npz"
        meta = root / "synthetic.json"
        ok = False
        if npz.is_file() and meta.is_file():
            m = json.loads(meta.read_text())
            ok = m.get("samples") == n and m.get("seed") == s and list(m["config"]["image_wh"]) == list(image_wh)
        if not ok:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                write_synthetic_dataset(root, n, seed=s, config=SyntheticConfig(image_wh=image_wh))
        out[split] = str(npz)
    return out


def _mean_pose_reference(data: dict[str, str]) -> dict[str, float]:
    """MPJPE / PA-MPJPE / PVE of a constant prediction: the training set's mean pose (per-joint
    rotation mean projected onto SO(3)) and mean betas, for every test person. A network that
    has not learnt to read the image scores about this."""
    import numpy as np
    import torch

    from hmrcli.bench import metrics as M
    from hmrcli.body import load_body_model
    from hmrcli.geometry.rotations import axis_angle_to_rotmat

    body = load_body_model("free")
    tr, te = np.load(data["train"]), np.load(data["test"])
    rot = axis_angle_to_rotmat(torch.from_numpy(tr["pose"].reshape(-1, 24, 3)))
    u, _, vh = torch.linalg.svd(rot.mean(0))
    d = torch.sign(torch.linalg.det(u @ vh))
    mean_rot = u @ torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)) @ vh
    n = len(te["pose"])
    gt = body(axis_angle_to_rotmat(torch.from_numpy(te["pose"].reshape(-1, 24, 3))).float(),
              torch.from_numpy(te["shape"]).float())
    pr = body(mean_rot[None].expand(n, 24, 3, 3).float(), torch.from_numpy(tr["shape"].mean(0)).float()[None].expand(n, 10))
    pj, gj = pr.joints - pr.joints[:, :1], gt.joints - gt.joints[:, :1]
    return {"MPJPE": round(float(M.mpjpe(pj, gj).mean()), 1), "PA-MPJPE": round(float(M.pa_mpjpe(pj, gj).mean()), 1),
            "PVE": round(float(M.pve(pr.vertices, gt.vertices, pr.joints[:, 0], gt.joints[:, 0]).mean()), 1)}


def _hmrcli() -> list[str]:
    exe = shutil.which("hmrcli", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    return [exe] if exe else [sys.executable, "-c", "from hmrcli.cli import main; main()"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/train_ablation"))
    ap.add_argument("--train-samples", type=int, default=400)
    ap.add_argument("--test-samples", type=int, default=100)
    ap.add_argument("--image-wh", type=int, nargs=2, default=(640, 480))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--crop", type=int, nargs=2, default=(64, 48), metavar=("H", "W"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    # one intra-op thread + one loader worker: on a shared 2-core machine two OpenMP threads
    # can spin-wait on a descheduled partner and run several times slower
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run (0: torch's default)")
    ap.add_argument("--workers", type=int, default=1, help="data loader worker processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--imphmr-head-dim", type=int, default=32, help="ImpHMR feature-field width (0: 128, GIRAFFE's)")
    ap.add_argument("--pointhmr-head-dim", type=int, default=64, help="PointHMR token width (0: 512, the paper's)")
    ap.add_argument("--pointhmr-backbone", default=None, help="PointHMR's backbone (default: --backbone)")
    ap.add_argument("--only", nargs="*", help=f"run only these rows (by index 0-{len(RUNS) - 1})", type=int)
    ap.add_argument("--extra", nargs="*", default=[], help="further --set overrides for every run")
    args = ap.parse_args(argv)

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = _data(work, args.train_samples, args.test_samples, args.seed, tuple(args.image_wh))
    t_data = time.perf_counter() - t0
    base = work / "base.toml"
    base.write_text(
        f'batch_size = {args.batch_size}\nsteps = {args.steps}\nseed = {args.seed}\ndevice = "{args.device}"\n'
        f'precision = "{args.precision}"\nthreads = {args.threads}\ncheckpoint_every = 0\nlog_every = 10\n'
        f'[data]\nnum_workers = {args.workers}\n'
        f'[model]\nbackbone = "{args.backbone}"\ncrop_hw = [{args.crop[0]}, {args.crop[1]}]\nbody_model = "free"\n'
        f'[optim]\nlr = {args.lr}\n'
        f'[[data.train]]\npath = "{data["train"]}"\n[[data.test]]\npath = "{data["test"]}"\n'
    )
    rows = []
    for i, (name, sets) in enumerate(RUNS):
        if args.only is not None and i not in args.only:
            continue
        out = work / f"run{i}"
        if out.exists():
            shutil.rmtree(out)
        cmd = [*_hmrcli(), "train", "-c", str(base), "-o", str(out), "--json", "-q"]
        if i == IMPHMR_ROW:
            sets = [*sets, f"model.head_dim={args.imphmr_head_dim}"]
        if i == POINTHMR_ROW:
            sets = [*sets, f"model.head_dim={args.pointhmr_head_dim}",
                    f"model.backbone={args.pointhmr_backbone or args.backbone}"]
        for s in [*sets, *args.extra]:
            cmd += ["--set", s]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sec = time.perf_counter() - t
        if proc.returncode != 0:
            rows.append({"name": name, "command": shlex.join(["hmrcli", *cmd[len(_hmrcli()):]]),
                         "error": proc.stderr[-2000:]})
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        test = res["metrics"]["test"]["synthetic"]
        rows.append({
            "name": name,
            "command": shlex.join(["hmrcli", *cmd[len(_hmrcli()):]]),
            "steps": res["step"],
            "train_samples_seen": res["step"] * args.batch_size,
            "seconds": round(sec, 1),
            "MPJPE": round(test["MPJPE"], 1),
            "PA-MPJPE": round(test["PA-MPJPE"], 1),
            "PVE": round(test["PVE"], 1),
            "test_persons": test["count"],
            "final_train_losses": {k: round(v, 4) for k, v in res["last_losses"].items()},
        })
    import torch

    from hmrcli.train.synthetic import DISCLAIMER

    report = {
        "benchmark": "Multi-RoI / ImpHMR / PointHMR training comparison on synthetic data",
        "disclaimer": DISCLAIMER,
        "scale": {
            "train_samples": args.train_samples, "test_samples": args.test_samples,
            "image_wh": list(args.image_wh), "steps": args.steps, "batch_size": args.batch_size,
            "backbone": args.backbone, "crop_hw": list(args.crop), "lr": args.lr, "seed": args.seed,
            "device": args.device, "precision": args.precision, "threads": args.threads, "workers": args.workers,
            "imphmr_head_dim": args.imphmr_head_dim, "pointhmr_head_dim": args.pointhmr_head_dim,
            "pointhmr_backbone": args.pointhmr_backbone or args.backbone,
            "body_model": "free",
            "metric_joints": "24 skeleton joints of the free body model, pelvis-centred",
        },
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "torch_default_threads": torch.get_num_threads()},
        "data_seconds": round(t_data, 1),
        "reference_constant_mean_pose": _mean_pose_reference(data),
        "config_file": str(base),
        "config": base.read_text(),
        "runs": rows,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
