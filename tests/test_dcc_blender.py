"""Real clients: Blender (headless) imports hmrcli's GLB, BVH, OBJ and PLY files, and the Khronos
glTF validator checks the GLBs.

benchmarks/dcc_check.py writes the files (an animated GLB and a BVH of a synthetic free-model
track with a gap, the still GLB, OBJ and PLY of one of its frames) and runs Blender on
scripts/blender_dump.py, which only reports what Blender made of each file (bones, actions, bone
heads and skinned vertices in Blender's world); the comparisons with hmrcli's own numbers are
here. Blender's world is +Z up: its importers (glTF, BVH, and OBJ/PLY with the README's recipe)
map the OpenCV camera frame to ``X_blender = (x, z, -y)``.

Needs ``blender`` (Debian: ``apt-get install blender python3-numpy``, Blender 3.4) and, for the
validator, node with the npm package gltf-validator in build/tools/gltf-validator; ``make test``
installs both where it can (scripts/dcc_tools.sh), ``make test-dcc`` runs this file with
HMRCLI_REQUIRE_DCC=1, which turns a missing tool into a failure instead of a skip.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hmrcli.body import JOINT_NAMES

ROOT = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("HMRCLI_REQUIRE_DCC") == "1"
BLENDER = shutil.which(os.environ.get("BLENDER") or "blender")
NODE = shutil.which("node")


def _load_check():
    spec = importlib.util.spec_from_file_location("dcc_check", ROOT / "benchmarks" / "dcc_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["dcc_check"] = mod
    spec.loader.exec_module(mod)
    return mod


dcc = _load_check()


def _missing(what: str, how: str):
    if REQUIRE:
        pytest.fail(f"{what} (HMRCLI_REQUIRE_DCC=1): {how}")
    pytest.skip(f"{what}: {how}")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return dcc.write_files(tmp_path_factory.mktemp("dcc"))


@pytest.fixture(scope="module")
def blender(files):
    if BLENDER is None:
        _missing("blender not found", "`make test` (as root) and `make test-dcc` install it: "
                                      "apt-get install blender python3-numpy")
    got = dcc.run_blender(files, BLENDER)
    assert got["blender"].startswith(("3.", "4."))
    return got


def _only(items):
    assert len(items) == 1, [i.get("name") for i in items]
    return items[0]


def test_animated_glb_in_blender(blender, files):
    got = blender["anim_glb"]
    arm = _only(got["armatures"])
    assert len(arm["bones"]) == 24 and sorted(arm["bones"]) == sorted(JOINT_NAMES)
    act = _only(got["actions"])
    assert act["key_frames"] == [float(f) for f in dcc.FRAMES]  # T = 8 keys at the source frame numbers
    assert any(o["type"] == "CAMERA" for o in got["objects"])
    ref = files["joints"] @ dcc.TO_BLENDER.T
    errs = [np.linalg.norm(dcc.heads(arm, f) - ref[i], axis=1).max() for i, f in enumerate(dcc.FRAMES)]
    assert max(errs) < 0.01, errs  # every bone within 1 cm at every key (float32 keys: ~1e-6 m)
    wrist, i = JOINT_NAMES.index("left_wrist"), 4  # the chosen bone at frame k = FRAMES[4] = 6
    assert np.linalg.norm(dcc.heads(arm, dcc.FRAMES[i])[wrist] - ref[i, wrist]) < 0.01
    # and between keys Blender moves (the pose at the gap frame 7 differs from both neighbours)
    assert np.linalg.norm(dcc.heads(arm, 7) - dcc.heads(arm, 6), axis=1).max() > 1e-3


def test_bvh_in_blender(blender, files):
    got = blender["bvh"]
    arm = _only(got["armatures"])
    assert len(arm["bones"]) == 24 and sorted(arm["bones"]) == sorted(JOINT_NAMES)
    act = _only(got["actions"])
    # one BVH frame per source frame from the first to the last (the gap at 7 filled)
    assert act["key_frames"] == [float(f) for f in range(dcc.FRAMES[0], dcc.FRAMES[-1] + 1)]
    ref = files["joints"] @ dcc.TO_BLENDER.T
    errs = [np.linalg.norm(dcc.heads(arm, f) - ref[i], axis=1).max() for i, f in enumerate(dcc.FRAMES)]
    assert max(errs) < 0.01, errs
    # the filled frame agrees with the GLB's interpolation in Blender
    glb_arm = _only(blender["anim_glb"]["armatures"])
    assert np.linalg.norm(dcc.heads(arm, 7) - dcc.heads(glb_arm, 7), axis=1).max() < 0.01


def test_still_glb_obj_and_ply_land_on_the_same_place(blender, files):
    ref_v = files["verts"][files["k"]] @ dcc.TO_BLENDER.T  # hmrcli's posed surface (the OBJ's content)
    n = files["num_vertices"]
    glb = blender["glb"]
    assert len(_only(glb["armatures"])["bones"]) == 24
    mesh = _only(glb["meshes"])
    assert mesh["num_vertices"] == n
    infl = {int(k): v for k, v in mesh["influences"].items()}
    assert set(infl) <= {1, 2, 3, 4} and sum(infl.values()) == n  # 1-4 influences per vertex
    v_glb, v_obj, v_ply = (dcc.mesh_vertices(blender[k]) for k in ("glb", "obj", "ply"))
    assert v_glb.shape == v_obj.shape == v_ply.shape == (n, 3)
    # the README's recipes put the OBJ and the PLY exactly where hmrcli's vertices are
    assert np.abs(v_obj - ref_v).max() < 1e-5 and np.abs(v_ply - ref_v).max() < 1e-5
    # the GLB's skinned surface (4 influences; the free model has no pose correctives) within ~1.2 cm
    err = np.linalg.norm(v_glb - v_obj, axis=1)
    assert err.max() < 0.012 and np.median(err) < 1e-4, (err.max(), np.median(err))
    # Blender's default OBJ axes (-Z forward, Y up) do not: the body lands elsewhere
    assert np.linalg.norm(dcc.mesh_vertices(blender["obj_default"]) - ref_v, axis=1).min() > 1.0
    m = dcc.measure(files, blender)  # the figures benchmarks/dcc_check.py prints
    assert m["anim_glb"]["joint_err_max_m"] < 0.01 and m["bvh"]["joint_err_max_m"] < 0.01
    assert m["glb"]["glb_vs_obj_m"]["max"] == pytest.approx(err.max())


def test_glbs_pass_the_khronos_gltf_validator(files):
    if NODE is None:
        _missing("no glTF validator", "node not found")
    probe = subprocess.run(
        [NODE, "-e", "require(require.resolve('gltf-validator', {paths: [process.argv[1]]}))",
         os.environ.get("GLTF_VALIDATOR_DIR", str(ROOT / "build" / "tools" / "gltf-validator")) + "/node_modules"],
        capture_output=True, text=True)
    if probe.returncode != 0:
        _missing("no glTF validator", "the npm package gltf-validator is not in build/tools/gltf-validator "
                                      "(make test / make test-dcc install it with npm)")
    reports = dcc.run_validator([files["paths"]["anim_glb"], files["paths"]["glb"]], NODE)
    assert len(reports) == 2
    for rep in reports:
        assert rep["errors"] == 0 and rep["warnings"] == 0, rep
