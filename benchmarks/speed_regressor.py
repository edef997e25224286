#!/usr/bin/env python
"""Regressor speed: persons/s and ms/person for M = 1..5 RoIs (the analogue of the
Multi-RoI paper's Table 3), network alone (crops already prepared) and network + body
model, with the peak resident memory of a fresh process per configuration.

Prints one JSON object. Random weights (speed does not depend on their values).

    python benchmarks/speed_regressor.py [--backbone resnet50] [--device cpu] [--batch 1 16]
        [--rois 1 2 3 4 5] [--precision fp32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import time

PAPER_TABLE3_FPS_RTX3090 = {1: 76.3, 2: 63.5, 3: 61.7, 4: 57.3, 5: 55.6}


def _one(backbone: str, m: int, batch: int, device: str, precision: str, repeats: int, body: str) -> dict:
    import torch

    from hmrcli.body import load_body_model
    from hmrcli.nn.checkpoints import RegressorConfig, build_model

    torch.manual_seed(0)
    arch = "multiroi"
    cfg = RegressorConfig(arch=arch, backbone=backbone, num_rois=m)
    model = build_model(cfg).eval().to(device)
    bm = load_body_model(body)
    dt = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    crops = torch.randn(batch, m, 3, *cfg.crop_hw, device=device)
    info = torch.randn(batch, m, 3, device=device) * 0.3

    def step(with_body: bool):
        with torch.no_grad(), (torch.autocast(torch.device(device).type, dtype=dt) if dt else contextlib.nullcontext()):
            out = model(crops, info)
        if with_body:
            bm(out.person_rotmats.float(), out.person_betas.float())
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step(True)  # warm-up
    res = {}
    for key, with_body in (("network", False), ("network+body", True)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step(with_body)
            times.append(time.perf_counter() - t0)
        best = min(times)
        res[key] = {"ms_per_person": round(1000 * best / batch, 2), "persons_per_s": round(batch / best, 2)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    out = {"backbone": backbone, "num_rois": m, "batch": batch, "device": device, "precision": precision,
           "body_model": body, **res, "peak_rss_mib": round(peak, 1)}
    if device.startswith("cuda"):
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rois", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--body-model", default="free")
    ap.add_argument("--_child", nargs=3, metavar=("M", "BATCH", "X"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        m, b, _ = (int(x) for x in a._child)
        print(json.dumps(_one(a.backbone, m, b, a.device, a.precision, a.repeats, a.body_model)))
        return
    import torch

    rows = []
    for b in a.batch:
        for m in a.rois:  # a fresh process per configuration: honest peak memory
            cmd = [sys.executable, __file__, "--backbone", a.backbone, "--device", a.device, "--precision", a.precision,
                   "--repeats", str(a.repeats), "--body-model", a.body_model, "--_child", str(m), str(b), "0"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                rows.append({"num_rois": m, "batch": b, "error": r.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    dev = a.device
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(json.dumps({
        "benchmark": "hmrcli.speed_regressor/1", "device_name": name, "torch": torch.__version__,
        "note": "random weights; network = backbone over M crops + fusion + 3-iteration regressor; "
                "network+body adds the body model (posing the mesh). Best of --repeats.",
        "paper_table3_fps_rtx3090_batch1": PAPER_TABLE3_FPS_RTX3090, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
