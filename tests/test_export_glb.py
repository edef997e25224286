"""The skinned GLB: read it back with pygltflib, skin it in numpy, compare with the body model."""

import io

import numpy as np
import pytest
import torch
from _fake_smpl import make_fake_smpl, write_chumpy_pickle  # noqa: E402
from _gltf import read_glb, skin_glb, world_matrices  # noqa: E402

from hmrcli.body import JOINT_NAMES, SMPL_PARENTS, load_body_model  # noqa: E402
from hmrcli.export.glb import GLTF_FROM_OPENCV, skinned_glb_bytes, top_k_weights  # noqa: E402

F = GLTF_FROM_OPENCV


def random_pose(seed, scale=0.35):
    rng = np.random.default_rng(seed)
    import roma

    aa = rng.normal(scale=scale, size=(24, 3))
    rot = roma.rotvec_to_rotmat(torch.from_numpy(aa)).numpy()
    rot[0] = np.diag([1.0, -1.0, -1.0]) @ rot[0]  # upright in the camera like a real estimate
    return rot, rng.normal(scale=0.8, size=10), np.array([0.15, -0.1, 3.2])


def posed_vertices(body, rot, betas, transl):
    out = body(torch.from_numpy(rot[None]), betas=torch.from_numpy(betas[None]),
               transl=torch.from_numpy(transl[None]))
    return out.vertices[0].numpy(), out.joints[0].numpy()


@pytest.fixture(scope="module")
def free():
    return load_body_model("free")


@pytest.fixture(scope="module")
def fake_smpl_no_correctives(tmp_path_factory):
    d = tmp_path_factory.mktemp("smpl_nopose")
    m = make_fake_smpl(seed=0)
    m["posedirs"] = np.zeros_like(m["posedirs"])
    write_chumpy_pickle(d / "SMPL_NEUTRAL.pkl", m)
    return load_body_model("smpl", smpl_dir=d)


def test_structure_names_hierarchy_weights(free):
    rot, betas, t = random_pose(0)
    data = skinned_glb_bytes(free, rot, betas, transl=t, camera={"K": np.diag([1000.0, 1000.0, 1.0]),
                                                                 "width": 640, "height": 480})
    assert data[:4] == b"glTF"
    gl, acc = read_glb(data)
    skin = gl.skins[0]
    assert len(skin.joints) == 24
    names = [gl.nodes[n].name for n in skin.joints]
    assert names == list(JOINT_NAMES)
    parent_of = {c: i for i, n in enumerate(gl.nodes) for c in (n.children or [])}
    for k, n in enumerate(skin.joints):
        p = SMPL_PARENTS[k]
        if p < 0:
            assert n not in parent_of and n in gl.scenes[0].nodes and skin.skeleton == n
        else:
            assert parent_of[n] == skin.joints[p]
    prim = gl.meshes[0].primitives[0]
    w = acc(prim.attributes.WEIGHTS_0)
    j = acc(prim.attributes.JOINTS_0)
    assert w.shape == (free.num_vertices, 4) and j.shape == (free.num_vertices, 4)
    assert np.all(w >= 0) and np.abs(w.astype(np.float64).sum(1) - 1).max() < 1e-6
    assert j.max() < 24 and np.all(j[w == 0] == 0)
    n = acc(prim.attributes.NORMAL)
    assert n.shape == (free.num_vertices, 3) and np.abs(np.linalg.norm(n, axis=1) - 1).max() < 1e-5
    faces = acc(prim.indices).reshape(-1, 3)
    assert np.array_equal(faces, free.faces)
    # the skinned mesh node is a scene root without a transform (glTF ignores it anyway)
    mesh_node = next(i for i, n in enumerate(gl.nodes) if n.mesh is not None)
    assert mesh_node in gl.scenes[0].nodes and not gl.nodes[mesh_node].translation
    # rotations are unit quaternions
    for n in skin.joints:
        assert abs(np.linalg.norm(gl.nodes[n].rotation) - 1) < 1e-9
    # camera: glTF perspective at the origin, identity rotation, fov from fy
    cam_node = next(n for n in gl.nodes if n.camera is not None)
    cam = gl.cameras[cam_node.camera]
    assert cam.type == "perspective"
    assert cam.perspective.yfov == pytest.approx(2 * np.arctan(240 / 1000.0))
    assert cam.perspective.aspectRatio == pytest.approx(640 / 480)
    assert np.allclose(cam_node.translation, 0) and np.allclose(cam_node.rotation, [0, 0, 0, 1])


def test_rest_pose_is_the_bind_pose(free):
    """Clearing every rotation gives back the stored rest mesh: the inverse bind matrices are
    the inverses of the joints' rest transforms."""
    rot, betas, t = random_pose(1)
    data = skinned_glb_bytes(free, rot, betas, transl=t)
    gl, acc = read_glb(data)
    v_rest, _ = skin_glb(data, rest=True)
    pos = acc(gl.meshes[0].primitives[0].attributes.POSITION)
    assert np.abs(v_rest - pos).max() < 1e-5
    # and the rest body is upright (+Y up in glTF) with its shaped joints
    shaped_j = free.rest_joints(betas)
    world = world_matrices(gl, rest=True)
    jw = np.stack([world[n][:3, 3] for n in gl.skins[0].joints])
    assert np.abs((jw - jw[0]) - (shaped_j - shaped_j[0])).max() < 1e-6
    assert jw[15, 1] > jw[0, 1] > jw[7, 1]  # head above pelvis above ankle


@pytest.mark.parametrize("frame", ["camera", "model"])
def test_skinning_reproduces_the_free_body_model(free, frame):
    """The free model has no pose correctives: the only difference left is dropping
    influences beyond the fourth. With the model's full weights it matches to float32."""
    assert np.abs(free.posedirs).max() == 0
    rot, betas, t = random_pose(2)
    ref, _ = posed_vertices(free, rot, betas, t if frame == "camera" else np.zeros(3))
    data = skinned_glb_bytes(free, rot, betas, transl=t if frame == "camera" else None)
    full, _ = skin_glb(data, weights_override=free.skinning_weights)
    assert np.abs(full - ref @ F.T).max() < 2e-5
    got, _ = skin_glb(data)
    err = np.linalg.norm(got - ref @ F.T, axis=1)
    # bound: the weight mass dropped beyond 4 influences (< 0.1 on a few vertices) times a lever arm
    assert err.max() < 0.02 and np.median(err) < 1e-5, (err.max(), np.median(err))


def test_skinning_with_pose_correctives_differs_only_by_them(fake_smpl_dir, fake_smpl_no_correctives):
    smpl = load_body_model("smpl", smpl_dir=fake_smpl_dir)
    rot, betas, t = random_pose(3)
    data = skinned_glb_bytes(fake_smpl_no_correctives, rot, betas, transl=t)
    got, _ = skin_glb(data)
    ref, _ = posed_vertices(fake_smpl_no_correctives, rot, betas, t)
    assert np.abs(got - ref @ F.T).max() < 2e-5  # no correctives, <= 4 influences: exact
    data = skinned_glb_bytes(smpl, rot, betas, transl=t)
    got, _ = skin_glb(data)
    ref, _ = posed_vertices(smpl, rot, betas, t)
    # the GLB carries no pose correctives: the difference is exactly the skinned correctives
    rest_only, _ = posed_vertices(fake_smpl_no_correctives, rot, betas, t)
    assert np.abs(got - rest_only @ F.T).max() < 2e-5
    diff = np.linalg.norm(got - ref @ F.T, axis=1)
    assert 1e-4 < diff.max() < 0.1


def test_mean_shape_when_betas_are_none(free):
    rot, _, t = random_pose(4)
    a = skinned_glb_bytes(free, rot, None, transl=t)
    b = skinned_glb_bytes(free, rot, np.zeros(10), transl=t)
    assert np.allclose(skin_glb(a)[0], skin_glb(b)[0])


def test_model_frame_camera_position(free):
    rot, betas, t = random_pose(5)
    data = skinned_glb_bytes(free, rot, betas, camera={"K": np.diag([800.0, 800.0, 1.0]), "width": 400,
                                                        "height": 600, "position": -t})
    gl, _ = read_glb(data)
    cam_node = next(n for n in gl.nodes if n.camera is not None)
    assert np.allclose(cam_node.translation, F @ -t)


def test_top_k_weights():
    w = np.array([[0.5, 0.2, 0.1, 0.1, 0.1, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    j, k = top_k_weights(w, 4)
    assert np.allclose(k.sum(1), 1)
    assert list(j[0][:1]) == [0] and np.isclose(k[0, 0], 0.5 / 0.9)
    assert list(j[1]) == [1, 0, 0, 0] and list(k[1]) == [1, 0, 0, 0]


def test_trimesh_reads_the_file(free):
    """A second, independent reader (trimesh) accepts the file and sees the rest mesh."""
    import trimesh

    rot, betas, t = random_pose(6)
    scene = trimesh.load(io.BytesIO(skinned_glb_bytes(free, rot, betas, transl=t)), file_type="glb")
    geom = list(scene.geometry.values())
    assert len(geom) == 1 and len(geom[0].vertices) == free.num_vertices
