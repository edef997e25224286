"""Does ImpHMR learn to infer other viewing directions? (CPU scale, synthetic data.)

Trains ImpHMR (``hmrcli.train``) on a few synthetic people without augmentation, then, on the
same people, compares the global orientation it infers for azimuth ``xi`` with the ground
truth turned by ``R_y(xi)^T`` (what the arbitrary-view loss asks for, docs/method.md §10) and
with its own canonical estimate. A model that ignores the viewing direction gives
``view_vs_canonical`` ~ 0 and ``view_vs_turned_gt`` ~ ``xi``; one that has learnt it gives
``view_vs_turned_gt`` ~ ``canonical_vs_gt`` and ``view_vs_canonical`` ~ ``xi``. Angles are
geodesic, degrees, averaged over the people. Prints JSON.

    python benchmarks/imphmr_views.py --work /tmp/views --steps 800
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch


def _geodesic_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    c = ((a.transpose(-1, -2) @ b).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(c.clamp(-1, 1)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/imphmr_views"))
    ap.add_argument("--people", type=int, default=8)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--azimuths", type=float, nargs="*", default=[90.0, 180.0])
    args = ap.parse_args(argv)
    from hmrcli.nn.imphmr import azimuth_rotation
    from hmrcli.train.config import load_config
    from hmrcli.train.loop import build_datasets, train
    from hmrcli.train.synthetic import SyntheticConfig, write_synthetic_dataset
    from hmrcli.weights.catalogue import load_regressor

    work = args.work.resolve()
    npz = work / "data" / "synthetic.npz"
    if not npz.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            write_synthetic_dataset(npz.parent, args.people, seed=5,
                                    config=SyntheticConfig(image_wh=(256, 192), min_height=32))
    out = work / f"run{args.steps}"
    overrides = [f"data.train.0.path={npz}", f"output={out}", f"batch_size={args.people}", f"steps={args.steps}",
                 "log_every=0", "checkpoint_every=0", "data.augment.enabled=false", "model.backbone=resnet18",
                 "model.crop_hw=64,48", "model.body_model=free", "device=cpu", "threads=1", "model.arch=imphmr",
                 "model.num_rois=1", f"model.head_dim={args.head_dim}", "losses.contrast=0", "losses.camera=0",
                 f"optim.lr={args.lr}"]
    cfg = load_config(None, overrides)
    t0 = time.perf_counter()
    res = train(cfg)
    seconds = time.perf_counter() - t0
    ds, _ = build_datasets(cfg)
    n = min(args.people, len(ds))
    batch = {k: torch.stack([ds[i][k] for i in range(n)]) for k in ("img", "bbox_info", "rotmats")}
    net = load_regressor(res.checkpoint)
    gt0 = batch["rotmats"][:, 0]
    rep = {"people": n, "steps": args.steps, "seconds": round(seconds, 1), "overrides": overrides,
           "last_losses": {k: round(v, 4) for k, v in res.last_losses.items()}}
    with torch.no_grad():
        canon = net(batch["img"], batch["bbox_info"]).person_rotmats[:, 0]
        rep["canonical_vs_gt_deg"] = round(float(_geodesic_deg(canon, gt0).mean()), 1)
        for deg in args.azimuths:
            xi = math.radians(deg)
            view = net(batch["img"], batch["bbox_info"], azimuth=xi).person_rotmats[:, 0]
            turned = azimuth_rotation(torch.tensor(xi)).T @ gt0
            rep[f"azimuth_{deg:g}"] = {
                "view_vs_turned_gt_deg": round(float(_geodesic_deg(view, turned).mean()), 1),
                "view_vs_canonical_deg": round(float(_geodesic_deg(view, canon).mean()), 1),
            }
    json.dump(rep, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
