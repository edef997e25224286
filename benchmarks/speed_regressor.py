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
import json
import platform
import subprocess
import sys

from hmrcli.bench.speed import (  # shared with `hmrcli benchmark --speed`
    PAPER_TABLE3_FPS_RTX3090,
    measure_speed,
)


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
        print(json.dumps(measure_speed(a.backbone, m, b, a.device, a.precision, a.repeats, a.body_model)))
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
