#!/usr/bin/env python
"""hmrcli's files in real clients: headless Blender and the Khronos glTF validator.

Writes, for one synthetic free-model track (8 frames at 25 fps, source frames 2..10 with frame 7
missing): the animated GLB and the BVH of the track, and the still GLB, OBJ and PLY of its frame 5
(camera frame, as ``hmrcli export`` writes them); imports them into Blender
(scripts/blender_dump.py) and validates the GLBs (scripts/gltf_validate.cjs). Prints one JSON
object: the Blender and validator versions, per file what Blender made of it (bones, action keys)
and the distances to hmrcli's own numbers in metres:

* ``joint_err_max_m``: largest distance, over all bones and keys, between a bone's world head in
  Blender and hmrcli's posed joint (animated GLB, BVH);
* ``glb_vs_obj_m``: the still GLB's surface as Blender skins it (4 influences) vs the OBJ as
  imported with the README's recipe (max, median, 99th percentile);
* ``obj_recipe_err_max_m`` / ``ply_recipe_err_max_m``: OBJ/PLY imported with the README's recipe
  vs hmrcli's vertices; ``obj_default_axes_min_dist_m``: the OBJ with Blender's default axes;
* ``validator``: errors/warnings per GLB.

    python benchmarks/dcc_check.py [--blender blender] [--out DIR]

tests/test_dcc_blender.py runs the same functions and asserts on the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmrcli.body import JOINT_NAMES, load_body_model
from hmrcli.export.animation import TrackAnimation, animated_glb_bytes, bvh_text
from hmrcli.export.glb import skinned_glb_bytes
from hmrcli.export.writers import mesh_bytes

ROOT = Path(__file__).resolve().parents[1]
#: OpenCV camera frame -> Blender world (+Z up), through glTF/BVH's +Y up: X_b = (x, z, -y).
TO_BLENDER = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
FRAMES = np.array([2, 3, 4, 5, 6, 8, 9, 10])  # source frame indices; frame 7 is missing (a gap)
FPS = 25.0
STILL_FRAME = 5
ITEMS = ("anim_glb", "bvh", "glb", "obj", "obj_default", "ply")


def make_track() -> TrackAnimation:
    import roma

    rng = np.random.default_rng(7)
    t = FRAMES / FPS
    aa = rng.normal(scale=0.25, size=(24, 3))[None] + np.sin(2 * np.pi * t)[:, None, None] * rng.normal(
        scale=0.35, size=(24, 3))[None]
    rot = roma.rotvec_to_rotmat(torch.from_numpy(aa)).numpy()
    rot[:, 0] = np.diag([1.0, -1.0, -1.0]) @ rot[:, 0]  # upright in the camera like a real estimate
    transl = np.stack([0.3 * np.sin(3 * t), 0.15 + 0.0 * t, 3.2 + 0.8 * t], axis=1)
    return TrackAnimation(track_id="track_01", frames=FRAMES, fps=FPS, rotmats=rot,
                          betas=rng.normal(scale=0.8, size=10), transl=transl, body_model="free",
                          K=np.array([[1000.0, 0, 320], [0, 1000.0, 240], [0, 0, 1]]), image_wh=(640, 480))


def write_files(out: Path) -> dict[str, Any]:
    """The files under test in ``out`` and hmrcli's own numbers (camera frame, metres)."""
    out.mkdir(parents=True, exist_ok=True)
    body = load_body_model("free")
    track = make_track()
    k = int(np.searchsorted(FRAMES, STILL_FRAME))
    o = body(torch.from_numpy(track.rotmats), betas=torch.from_numpy(track.betas[None]),
             transl=torch.from_numpy(track.transl))
    verts, joints = o.vertices.numpy(), o.joints.numpy()
    p = {"anim_glb": out / "track_01.glb", "bvh": out / "track_01.bvh", "glb": out / "person_01.glb",
         "obj": out / "person_01.obj", "ply": out / "person_01.ply"}
    p["anim_glb"].write_bytes(animated_glb_bytes(body, track, with_camera=True))
    p["bvh"].write_text(bvh_text(body, track))
    cam = {"K": track.K, "width": 640, "height": 480, "position": np.zeros(3)}
    p["glb"].write_bytes(skinned_glb_bytes(body, track.rotmats[k], track.betas, transl=track.transl[k], camera=cam))
    p["obj"].write_bytes(mesh_bytes(verts[k], body.faces, "obj"))
    p["ply"].write_bytes(mesh_bytes(verts[k], body.faces, "ply"))
    return {"paths": p, "dir": out, "track": track, "joints": joints, "verts": verts, "k": k,
            "num_vertices": body.num_vertices}


def run_blender(files: dict[str, Any], blender: str, timeout: float = 300) -> dict[str, Any]:
    """Import the files into Blender; what scripts/blender_dump.py reports, per item name."""
    p, d = files["paths"], files["dir"]
    frames = list(range(int(FRAMES[0]), int(FRAMES[-1]) + 1))
    request = {"items": [
        {"kind": "gltf", "path": str(p["anim_glb"]), "fps": FPS, "frames": frames},
        {"kind": "bvh", "path": str(p["bvh"]), "fps": FPS, "frame_start": int(FRAMES[0]), "frames": frames},
        {"kind": "gltf", "path": str(p["glb"])},
        {"kind": "obj", "path": str(p["obj"]), "forward_axis": "Z", "up_axis": "NEGATIVE_Y"},  # the README's recipe
        {"kind": "obj", "path": str(p["obj"])},  # Blender's default axes, for contrast
        {"kind": "ply", "path": str(p["ply"]), "rotate_x_deg": -90},  # the README's recipe
    ]}
    (d / "request.json").write_text(json.dumps(request))
    cmd = [blender, "-b", "--factory-startup", "--python-exit-code", "1", "--python",
           str(ROOT / "scripts" / "blender_dump.py"), "--", str(d / "request.json"), str(d / "blender.json")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"blender failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    out = json.loads((d / "blender.json").read_text())
    return {"blender": out["blender"], **dict(zip(ITEMS, out["items"]))}


def run_validator(paths: list[Path], node: str = "node") -> list[dict[str, Any]]:
    """One report per file from scripts/gltf_validate.cjs (errors, warnings, messages)."""
    r = subprocess.run([node, str(ROOT / "scripts" / "gltf_validate.cjs"), *map(str, paths)],
                       capture_output=True, text=True, timeout=120)
    reports = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode not in (0, 1) or len(reports) != len(paths):
        raise RuntimeError(f"gltf_validate.cjs failed ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")
    return reports


def heads(arm: dict[str, Any], frame: int) -> np.ndarray:
    """(24, 3) world bone heads of an armature at a scene frame, in ``JOINT_NAMES`` order."""
    h = arm["heads"][str(frame)]
    return np.array([h[name] for name in JOINT_NAMES])


def mesh_vertices(item: dict[str, Any]) -> np.ndarray:
    (mesh,) = item["meshes"]
    (v,) = mesh["vertices"].values()
    return np.asarray(v)


def measure(files: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """Distances between what Blender made of the files and hmrcli's numbers (metres)."""
    ref_j = files["joints"] @ TO_BLENDER.T
    ref_v = files["verts"][files["k"]] @ TO_BLENDER.T
    out: dict[str, Any] = {}
    for key in ("anim_glb", "bvh"):
        (arm,) = got[key]["armatures"]
        err = max(float(np.linalg.norm(heads(arm, f) - ref_j[i], axis=1).max()) for i, f in enumerate(FRAMES))
        out[key] = {"bones": len(arm["bones"]), "action_keys": [a["key_frames"] for a in got[key]["actions"]],
                    "joint_err_max_m": err}
    v_glb, v_obj, v_ply = (mesh_vertices(got[k]) for k in ("glb", "obj", "ply"))
    e = np.linalg.norm(v_glb - v_obj, axis=1) if v_glb.shape == v_obj.shape else None
    (mesh,) = got["glb"]["meshes"]
    out["glb"] = {"bones": len(got["glb"]["armatures"][0]["bones"]) if got["glb"]["armatures"] else 0,
                  "num_vertices": mesh["num_vertices"],
                  "influences": {int(k): v for k, v in sorted(mesh["influences"].items())},
                  "glb_vs_obj_m": None if e is None else {
                      "max": float(e.max()), "median": float(np.median(e)), "p99": float(np.percentile(e, 99))}}
    out["obj_recipe_err_max_m"] = float(np.abs(v_obj - ref_v).max()) if v_obj.shape == ref_v.shape else None
    out["ply_recipe_err_max_m"] = float(np.abs(v_ply - ref_v).max()) if v_ply.shape == ref_v.shape else None
    out["obj_default_axes_min_dist_m"] = float(np.linalg.norm(mesh_vertices(got["obj_default"]) - ref_v, axis=1).min())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blender", default=os.environ.get("BLENDER") or "blender")
    ap.add_argument("--out", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    a = ap.parse_args()
    blender = shutil.which(a.blender)
    if blender is None:
        raise SystemExit(f"{a.blender}: not found (make test-dcc installs Blender)")
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(a.out or Path(tmp))
        got = run_blender(files, blender)
        result: dict[str, Any] = {"blender": got["blender"], "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                                  "track": {"frames": FRAMES.tolist(), "fps": FPS}, **measure(files, got)}
        node = shutil.which("node")
        if node:
            reports = run_validator([files["paths"]["anim_glb"], files["paths"]["glb"]], node)
            result["validator"] = {Path(r["file"]).name: {"version": r["validator"], "errors": r["errors"],
                                                          "warnings": r["warnings"]} for r in reports}
        else:
            result["validator"] = "node not found"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
