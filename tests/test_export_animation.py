"""Animation files of a track (hmrcli.export.animation): the NPZ round trip, and joint positions
computed by forward kinematics from the GLB's and the BVH's own content equal the body model's."""

import io
import re

import numpy as np
import pytest
import torch
from _gltf import read_glb, skin_glb, world_matrices

from hmrcli.body import JOINT_NAMES, SMPL_PARENTS, load_body_model
from hmrcli.export.animation import (
    ANIMATION_FORMAT,
    AnimationFileError,
    TrackAnimation,
    animated_glb_bytes,
    animation_npz_bytes,
    bvh_text,
    read_animation_npz,
)
from hmrcli.export.glb import GLTF_FROM_OPENCV

F = GLTF_FROM_OPENCV


def make_track(frames=(3, 4, 6, 7, 9), seed=0, fps=30.0, body_model="free", camera=True):
    """A walking-ish random track in front of the camera: smooth random joint rotations,
    upright global orientation, translation about 3 m deep."""
    import roma

    rng = np.random.default_rng(seed)
    frames = np.asarray(frames)
    t = frames / fps
    base = rng.normal(scale=0.3, size=(24, 3))
    amp = rng.normal(scale=0.4, size=(24, 3))
    aa = base[None] + np.sin(2 * np.pi * 0.8 * t)[:, None, None] * amp[None]
    rot = roma.rotvec_to_rotmat(torch.from_numpy(aa)).numpy()
    rot[:, 0] = np.diag([1.0, -1.0, -1.0]) @ rot[:, 0]  # upright in the camera like a real estimate
    transl = np.stack([0.4 * np.sin(t), 0.1 + 0.02 * t, 3.0 + 0.5 * t], axis=1)
    return TrackAnimation(
        track_id="track_03", frames=frames, fps=fps, rotmats=rot, betas=rng.normal(scale=0.8, size=10),
        transl=transl, body_model=body_model,
        K=np.array([[900.0, 0, 320], [0, 900.0, 240], [0, 0, 1]]) if camera else None,
        image_wh=(640, 480) if camera else None)


def posed(body, track):
    out = body(torch.from_numpy(track.rotmats), betas=torch.from_numpy(track.betas[None]),
               transl=torch.from_numpy(track.transl))
    return out.vertices.numpy(), out.joints.numpy()


@pytest.fixture(scope="module")
def free():
    return load_body_model("free")


# -- TrackAnimation and NPZ -----------------------------------------------------------------------

def test_npz_round_trip_is_exact_and_deterministic(tmp_path):
    track = make_track()
    data = animation_npz_bytes(track)
    assert data == animation_npz_bytes(make_track())  # same content, same bytes
    path = tmp_path / "track_03.npz"
    path.write_bytes(data)
    back = read_animation_npz(path)
    assert back.track_id == "track_03" and back.body_model == "free" and back.fps == 30.0
    assert back.image_wh == (640, 480)
    for name in ("frames", "rotmats", "betas", "transl", "K"):
        assert np.array_equal(getattr(back, name), getattr(track, name)), name
    assert back.frames.dtype == np.int64
    with np.load(path, allow_pickle=False) as z:  # plain arrays, readable without hmrcli
        assert str(z["format"]) == ANIMATION_FORMAT
        assert z["rotmats"].shape == (5, 24, 3, 3) and z["transl"].shape == (5, 3) and z["betas"].shape == (10,)
        assert z["frames"].tolist() == [3, 4, 6, 7, 9] and float(z["fps"]) == 30.0
        assert "metres" in str(z["convention"])


def test_npz_without_camera(tmp_path):
    track = make_track(camera=False)
    path = tmp_path / "t.npz"
    path.write_bytes(animation_npz_bytes(track))
    back = read_animation_npz(path)
    assert back.K is None and back.image_wh is None


@pytest.mark.parametrize("change, words", [
    (lambda d: d.pop("rotmats"), "missing rotmats"),
    (lambda d: d.update(rotmats=d["rotmats"][:, :23]), "rotmats must have shape (5, 24, 3, 3)"),
    (lambda d: d.update(transl=d["transl"][:4]), "transl must have shape (5, 3)"),
    (lambda d: d.update(frames=d["frames"][::-1]), "strictly increasing"),
    (lambda d: d.update(fps=np.array(0.0)), "fps must be a positive number"),
    (lambda d: d.update(betas=np.zeros((2, 10))), "betas must be (B,)"),
    (lambda d: d.update(format=np.array("something/2")), "format 'something/2'"),
    (lambda d: d.update(track_id=np.array([1, 2])), "track_id must be a string"),
    (lambda d: d.update(image_wh=np.array([640.5, 480])), "image_wh must be two positive integers"),
    (lambda d: d.update(transl=np.full((5, 3), np.nan)), "transl has non-finite values"),
])
def test_npz_reader_names_the_file_and_the_problem(tmp_path, change, words):
    with np.load(io.BytesIO(animation_npz_bytes(make_track())), allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    change(d)
    path = tmp_path / "bad.npz"
    np.savez(path, **d)
    with pytest.raises(AnimationFileError) as e:
        read_animation_npz(path)
    assert str(path) in str(e.value) and words in str(e.value)


def test_npz_reader_refuses_other_files(tmp_path):
    p = tmp_path / "noise.npz"
    p.write_bytes(b"not a zip file at all")
    with pytest.raises(AnimationFileError, match=re.escape(str(p))):
        read_animation_npz(p)
    p = tmp_path / "array.npy"
    np.save(p, np.zeros(3))
    with pytest.raises(AnimationFileError, match="not an .npz archive"):
        read_animation_npz(p)
    p = tmp_path / "pickled.npz"
    np.savez(p, track_id=np.array([{"a": 1}], dtype=object))
    with pytest.raises(AnimationFileError, match=re.escape(str(p))):
        read_animation_npz(p)
    with pytest.raises(AnimationFileError, match="no such file"):
        read_animation_npz(tmp_path / "missing.npz")


def test_track_validation():
    t = make_track()
    with pytest.raises(ValueError, match="integer frame indices"):
        TrackAnimation("a", np.array([0.5, 1.0]), 30, t.rotmats[:2], t.betas, t.transl[:2], "free")
    with pytest.raises(ValueError, match="strictly increasing"):
        TrackAnimation("a", np.array([2, 2]), 30, t.rotmats[:2], t.betas, t.transl[:2], "free")
    with pytest.raises(ValueError, match="non-empty"):
        TrackAnimation("", t.frames, 30, t.rotmats, t.betas, t.transl, "free")
    ok = TrackAnimation("a", [1.0, 2.0], 25, t.rotmats[:2].tolist(), list(t.betas), t.transl[:2], "free")
    assert ok.frames.dtype == np.int64 and ok.fps == 25.0 and np.allclose(ok.times, [0.04, 0.08])


# -- animated GLB ---------------------------------------------------------------------------------

def _sampled(gl, acc, anim):
    """{(node, path): (times (T,), values (T, n))} of the file's animation."""
    out = {}
    for ch in anim.channels:
        s = anim.samplers[ch.sampler]
        assert s.interpolation == "LINEAR"
        out[(ch.target.node, ch.target.path)] = (acc(s.input).astype(np.float64), acc(s.output).astype(np.float64))
    return out


def glb_joints_per_key(data):
    """Joint world positions (T, 24, 3) at each key, by setting every node to its keyed TRS and
    walking the node hierarchy (the file's own data only)."""
    gl, acc = read_glb(data)
    (anim,) = gl.animations
    chans = _sampled(gl, acc, anim)
    times = next(iter(chans.values()))[0]
    out = []
    for i in range(len(times)):
        for (node, path), (_, vals) in chans.items():
            setattr(gl.nodes[node], path, [float(x) for x in vals[i]])
        world = world_matrices(gl)
        out.append(np.stack([world[n][:3, 3] for n in gl.skins[0].joints]))
    return times, np.stack(out), chans, gl


def test_animated_glb_channels_and_joint_positions(free):
    track = make_track()
    data = animated_glb_bytes(free, track)
    times, joints, chans, gl = glb_joints_per_key(data)
    skin = gl.skins[0]
    assert [gl.nodes[n].name for n in skin.joints] == list(JOINT_NAMES)
    # one rotation channel per joint, one translation channel (the root), shared key times
    assert sorted(chans) == sorted([(n, "rotation") for n in skin.joints] + [(skin.joints[0], "translation")])
    assert np.allclose(times, track.frames / track.fps, atol=1e-6)
    assert gl.animations[0].name == "track_03"
    for (_, path), (_, vals) in chans.items():
        if path == "rotation":
            assert np.abs(np.linalg.norm(vals, axis=1) - 1).max() < 1e-6
            assert np.all(np.sum(vals[1:] * vals[:-1], axis=1) >= 0)  # short-way interpolation
    _, ref = posed(free, track)  # (T, 24, 3) camera frame
    err = np.abs(joints - ref @ F.T).max()
    assert err < 2e-5, err  # float32 keys
    # the nodes' own TRS (what a viewer without animation shows) is the first frame
    gl0, _ = read_glb(data)
    w0 = world_matrices(gl0)
    assert np.abs(np.stack([w0[n][:3, 3] for n in gl0.skins[0].joints]) - ref[0] @ F.T).max() < 2e-5


def test_animated_glb_skins_to_the_body_model_at_every_key(free):
    """The skin (rest mesh, inverse bind matrices) agrees with the animated skeleton: skinning
    the file's mesh with the keyed pose and the model's full weights gives the model's posed
    vertices (the free model has no pose correctives)."""
    track = make_track(frames=(0, 5, 12))
    data = animated_glb_bytes(free, track)
    gl, acc = read_glb(data)
    chans = _sampled(gl, acc, gl.animations[0])
    verts, _ = posed(free, track)
    for i in range(track.num_frames):
        doc = pygltf_with_key(data, chans, i)
        got, _ = skin_glb(doc, weights_override=free.skinning_weights)
        assert np.abs(got - verts[i] @ F.T).max() < 5e-5


def pygltf_with_key(data, chans, i):
    gl, _ = read_glb(data)
    for (node, path), (_, vals) in chans.items():
        setattr(gl.nodes[node], path, [float(x) for x in vals[i]])
    out = gl.save_to_bytes()
    return b"".join(out) if isinstance(out, list) else bytes(out)


def test_animated_glb_camera(free):
    track = make_track()
    gl, _ = read_glb(animated_glb_bytes(free, track, with_camera=True))
    (cam_node,) = [n for n in gl.nodes if n.camera is not None]
    assert np.allclose(cam_node.translation, 0) and np.allclose(cam_node.rotation, [0, 0, 0, 1])
    assert gl.cameras[0].perspective.yfov == pytest.approx(2 * np.arctan(240 / 900.0))
    assert gl.asset.extras["fps"] == 30.0 and gl.asset.extras["frames"] == {"first": 3, "last": 9, "count": 5}
    gl, _ = read_glb(animated_glb_bytes(free, track))
    assert not any(n.camera is not None for n in gl.nodes)
    with pytest.raises(ValueError, match="no camera intrinsics"):
        animated_glb_bytes(free, make_track(camera=False), with_camera=True)


def test_wrong_body_model_is_refused(free):
    with pytest.raises(ValueError, match="'smpl' body model"):
        animated_glb_bytes(free, make_track(body_model="smpl"))
    with pytest.raises(ValueError, match="'smpl' body model"):
        bvh_text(free, make_track(body_model="smpl"))


def test_single_frame_track(free):
    track = make_track(frames=(7,))
    times, joints, _, _ = glb_joints_per_key(animated_glb_bytes(free, track))
    _, ref = posed(free, track)
    assert times.shape == (1,) and np.abs(joints[0] - ref[0] @ F.T).max() < 2e-5
    text = bvh_text(free, track)
    order = [JOINT_NAMES.index(j["name"]) for j in parse_bvh(text)[0]]
    frames, pos = bvh_joints(text)
    assert frames == 1 and np.abs(pos[0] - ref[0, order] @ F.T).max() < 2e-5


# -- BVH ------------------------------------------------------------------------------------------

def parse_bvh(text):
    """A small BVH reader: joints (name, parent index, offset, channels), end sites, frame count,
    frame time and the motion matrix."""
    tokens = text.split()
    joints, stack, end_sites = [], [], []
    assert tokens[0] == "HIERARCHY"
    i = 1
    while tokens[i] != "MOTION":
        tok = tokens[i]
        if tok in ("ROOT", "JOINT"):
            joints.append({"name": tokens[i + 1], "parent": stack[-1] if stack else -1})
            i += 2
        elif tok == "End":
            assert tokens[i + 1:i + 4] == ["Site", "{", "OFFSET"] and tokens[i + 7] == "}"
            end_sites.append(stack[-1])
            i += 8
        elif tok == "{":
            stack.append(len(joints) - 1)
            i += 1
        elif tok == "}":
            stack.pop()
            i += 1
        elif tok == "OFFSET":
            joints[stack[-1]]["offset"] = np.array([float(x) for x in tokens[i + 1:i + 4]])
            i += 4
        elif tok == "CHANNELS":
            n = int(tokens[i + 1])
            joints[stack[-1]]["channels"] = tokens[i + 2:i + 2 + n]
            i += 2 + n
        else:
            raise AssertionError(f"unexpected token {tok!r}")
    assert tokens[i + 1] == "Frames:" and tokens[i + 3] == "Frame" and tokens[i + 4] == "Time:"
    n_frames, frame_time = int(tokens[i + 2]), float(tokens[i + 5])
    motion = np.array([float(x) for x in tokens[i + 6:]]).reshape(n_frames, -1)
    return joints, end_sites, n_frames, frame_time, motion


def _axis(c, deg):
    a = np.radians(deg)
    c_, s = np.cos(a), np.sin(a)
    return {"X": np.array([[1, 0, 0], [0, c_, -s], [0, s, c_]]),
            "Y": np.array([[c_, 0, s], [0, 1, 0], [-s, 0, c_]]),
            "Z": np.array([[c_, -s, 0], [s, c_, 0], [0, 0, 1]])}[c]


def bvh_joints(text):
    """World joint positions (N, J, 3) by forward kinematics of the BVH's content, the channels
    applied in the order they are listed (R = R_first R_second R_third, translation T)."""
    joints, _, n, _, motion = parse_bvh(text)
    out = np.zeros((n, len(joints), 3))
    for f in range(n):
        col = 0
        world = []
        for k, j in enumerate(joints):
            R, T = np.eye(3), np.zeros(3)
            for ch in j["channels"]:
                v = motion[f, col]
                col += 1
                if ch.endswith("position"):
                    T["XYZ".index(ch[0])] = v
                else:
                    R = R @ _axis(ch[0], v)
            if j["parent"] < 0:
                Rw, pw = R, j["offset"] + T
            else:
                Rp, pp = world[j["parent"]]
                Rw, pw = Rp @ R, pp + Rp @ j["offset"]
            world.append((Rw, pw))
            out[f, k] = pw
        assert col == motion.shape[1]
    return n, out


def test_bvh_hierarchy_offsets_and_channels(free):
    track = make_track()
    joints, end_sites, n, frame_time, _ = parse_bvh(bvh_text(free, track))
    assert [j["name"] for j in joints] != list(JOINT_NAMES)  # depth-first order, not SMPL's
    assert sorted(j["name"] for j in joints) == sorted(JOINT_NAMES)
    idx = {j["name"]: JOINT_NAMES.index(j["name"]) for j in joints}
    rest = free.rest_joints(track.betas)
    for j in joints:
        k = idx[j["name"]]
        p = SMPL_PARENTS[k]
        if p < 0:
            assert j["parent"] == -1 and np.allclose(j["offset"], 0)
            assert j["channels"] == ["Xposition", "Yposition", "Zposition", "Zrotation", "Xrotation", "Yrotation"]
        else:
            assert JOINT_NAMES[idx[joints[j["parent"]]["name"]]] == JOINT_NAMES[p]
            assert np.abs(j["offset"] - (rest[k] - rest[p])).max() < 1e-6  # the track's shape
            assert j["channels"] == ["Zrotation", "Xrotation", "Yrotation"]
    assert sorted(joints[e]["name"] for e in end_sites) == sorted(
        ["left_foot", "right_foot", "head", "left_hand", "right_hand"])
    assert n == 7 and frame_time == pytest.approx(1 / 30.0)  # frames 3..9 with the gaps filled


def test_bvh_joint_positions_equal_the_body_model(free):
    track = make_track()
    text = bvh_text(free, track)
    joints, *_ = parse_bvh(text)
    order = [JOINT_NAMES.index(j["name"]) for j in joints]
    n, pos = bvh_joints(text)
    _, ref = posed(free, track)
    ref = ref[:, order] @ F.T
    rows = track.frames - track.frames[0]  # motion line i = source frame frames[0] + i
    err = np.abs(pos[rows] - ref).max()
    assert err < 2e-5, err  # six decimals in the file
    # a gap frame (5, between keys 4 and 6) lies between its neighbours' poses
    mid = pos[5 - 3]
    assert np.linalg.norm(mid - 0.5 * (ref[1] + ref[2]), axis=1).max() < 0.05
    # and matches the animated GLB's interpolation at that time (slerp + linear translation)
    import roma

    times, gj, chans, gl = glb_joints_per_key(animated_glb_bytes(free, track))
    for (node, path), (_, vals) in chans.items():
        a, b = vals[1], vals[2]
        v = (roma.unitquat_slerp(torch.from_numpy(a), torch.from_numpy(b), torch.tensor([0.5]))[0].numpy()
             if path == "rotation" else 0.5 * (a + b))
        setattr(gl.nodes[node], path, [float(x) for x in v])
    world = world_matrices(gl)
    glb_mid = np.stack([world[n][:3, 3] for n in gl.skins[0].joints])[order]
    assert np.abs(glb_mid - mid).max() < 2e-5


def test_bvh_euler_unwrapped(free):
    """A joint turning steadily past 180 degrees: the Euler channels do not jump by 360."""
    import roma

    frames = np.arange(40)
    track = make_track(frames=frames)
    ang = np.linspace(0, 3 * np.pi, 40)
    track.rotmats[:, 16] = roma.rotvec_to_rotmat(torch.from_numpy(np.stack(
        [np.zeros(40), ang, np.zeros(40)], axis=1))).numpy()
    text = bvh_text(free, track)
    *_, motion = parse_bvh(text)
    assert np.abs(np.diff(motion[:, 3:], axis=0)).max() < 90
    _, pos = bvh_joints(text)
    _, ref = posed(free, track)
    joints, *_ = parse_bvh(text)
    order = [JOINT_NAMES.index(j["name"]) for j in joints]
    assert np.abs(pos - ref[:, order] @ F.T).max() < 2e-5


def test_bvh_with_smpl_layout_model(fake_smpl_dir):
    smpl = load_body_model("smpl", smpl_dir=fake_smpl_dir)
    track = make_track(body_model="smpl", frames=(0, 1, 2))
    text = bvh_text(smpl, track)
    joints, *_ = parse_bvh(text)
    order = [JOINT_NAMES.index(j["name"]) for j in joints]
    _, pos = bvh_joints(text)
    _, ref = posed(smpl, track)
    assert np.abs(pos - ref[:, order] @ F.T).max() < 2e-5
    _, gj, _, _ = glb_joints_per_key(animated_glb_bytes(smpl, track))
    assert np.abs(gj - ref @ F.T).max() < 2e-5
