"""Derive PointHMR's mesh down-/up-sampling for a body model (hmrcli.nn.mesh_sampling).

    python scripts/derive_mesh_sampling.py                      # the free body model -> models/mesh_sampling/
    python scripts/derive_mesh_sampling.py --body-model smpl --smpl-dir DIR --out smpl_1732_431.npz

Needs ``fast-simplification`` (``pip install fast-simplification``; the ``[pointhmr]`` extra).
Prints a JSON summary: vertex counts per level, the up-sampling error of the template
(full mesh -> coarse -> mid -> full, mm) and of posed bodies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--body-model", default="free", choices=("free", "smpl"))
    ap.add_argument("--smpl-dir", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from hmrcli.body import load_body_model
    from hmrcli.nn.mesh_sampling import (
        FREE_MESH_SAMPLING_FILE,
        LEVELS,
        derive_mesh_sampling,
        upsample,
    )

    body = load_body_model(args.body_model, smpl_dir=args.smpl_dir)
    out = args.out or (ROOT / "models" / FREE_MESH_SAMPLING_FILE if args.body_model == "free" else None)
    if out is None:
        ap.error("--out is required for SMPL (its derived arrays are not shipped)")
    ms = derive_mesh_sampling(body.template(torch.float64).numpy(), body.faces, LEVELS)
    ms.save(out)

    def err(v: torch.Tensor) -> list[float]:
        mid = upsample(v[:, torch.from_numpy(ms.down0)], torch.from_numpy(ms.up0_idx), torch.from_numpy(ms.up0_w))
        full = upsample(mid, torch.from_numpy(ms.up1_idx), torch.from_numpy(ms.up1_w))
        d = (full - v).norm(dim=-1) * 1000
        return [round(float(d.mean()), 2), round(float(d.max()), 2)]

    g = torch.Generator().manual_seed(0)
    pose = torch.randn(8, 72, generator=g, dtype=torch.float64) * 0.3
    posed = body(pose, torch.zeros(8, 10, dtype=torch.float64)).vertices
    json.dump({"body_model": body.info.name, "vertices": ms.num_vertices, "levels": list(ms.levels),
               "coarse_faces": int(len(ms.faces0)), "file": str(out),
               "template_roundtrip_mm_mean_max": err(body.template(torch.float64)[None]),
               "posed_roundtrip_mm_mean_max": err(posed)}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
