"""The body-model interface over smplx, checked on synthetic SMPL-layout files."""

import numpy as np
import pytest
import roma
import torch
from _fake_smpl import reference_lbs

from hmrcli.body import (
    BodyModelNotFoundError,
    find_smpl_files,
    load_body_model,
)


@pytest.fixture(scope="module")
def smpl(fake_smpl_dir):
    return load_body_model("smpl", gender="neutral", smpl_dir=fake_smpl_dir)


def _random_rotmats(n, scale=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    aa = torch.randn(n, 24, 3, generator=g, dtype=torch.float64) * scale
    return roma.rotvec_to_rotmat(aa), aa


def test_finds_files_by_official_and_smplx_names(fake_smpl_dir):
    files = find_smpl_files(fake_smpl_dir)
    assert files["neutral"].name == "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl"
    assert files["male"].name == "SMPL_MALE.pkl"
    assert "female" not in files


def test_missing_file_says_where_to_get_it(fake_smpl_dir, tmp_path):
    with pytest.raises(BodyModelNotFoundError) as e:
        load_body_model("smpl", gender="female", smpl_dir=fake_smpl_dir)
    msg = str(e.value)
    assert "smpl.is.tue.mpg.de" in msg and "--smpl-dir" in msg and "HMRCLI_SMPL_DIR" in msg
    assert str(fake_smpl_dir) in msg
    with pytest.raises(BodyModelNotFoundError, match="no SMPL folder configured"):
        import os

        old = os.environ.pop("HMRCLI_SMPL_DIR", None)
        os.environ["HMRCLI_HOME"] = str(tmp_path)
        try:
            load_body_model("smpl")
        finally:
            os.environ.pop("HMRCLI_HOME")
            if old is not None:
                os.environ["HMRCLI_SMPL_DIR"] = old


def test_matches_independent_lbs(smpl, fake_smpl_model):
    rot, _ = _random_rotmats(3)
    betas = torch.randn(3, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    transl = torch.tensor([[0.1, -0.2, 3.0]], dtype=torch.float64).expand(3, 3)
    out = smpl(rot, betas, transl)
    assert out.vertices.dtype == torch.float64 and out.vertices.shape == (3, 6890, 3)
    # smplx rounds some model arrays through float32 when it builds its buffers (to_np),
    # so agreement is ~1e-8 m, not float64 round-off.
    for i in range(3):
        v_ref, j_ref = reference_lbs(fake_smpl_model, rot[i].numpy(), betas[i].numpy())
        np.testing.assert_allclose(out.vertices[i].numpy(), v_ref + transl[i].numpy(), atol=1e-6)
        np.testing.assert_allclose(out.joints[i].numpy(), j_ref + transl[i].numpy(), atol=1e-6)


def test_axis_angle_and_rotmat_agree(smpl):
    rot, aa = _random_rotmats(4, seed=3)
    a = smpl(rot.float())
    b = smpl(aa.float().reshape(4, 72))
    c = smpl(aa.float())
    torch.testing.assert_close(a.vertices, b.vertices, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.vertices, c.vertices, atol=1e-5, rtol=0)
    assert a.vertices.dtype == torch.float32


def test_rest_pose_is_template(smpl, fake_smpl_model):
    out = smpl(torch.zeros(1, 72, dtype=torch.float64))
    np.testing.assert_allclose(out.vertices[0].numpy(), fake_smpl_model["v_template"], atol=1e-6)


def test_keypoints(smpl):
    rot, _ = _random_rotmats(2, seed=5)
    out = smpl(rot)
    assert out.keypoints_coco.shape == (2, 17, 3)
    torch.testing.assert_close(out.keypoints_coco[:, 0], out.vertices[:, 332])  # nose vertex
    torch.testing.assert_close(out.keypoints_coco[:, 5], out.joints[:, 16])  # left shoulder
    torch.testing.assert_close(out.keypoints_coco[:, 16], out.joints[:, 8])  # right ankle
    assert out.joints_h36m is None and not smpl.has_h36m


def test_h36m_regressor_from_smpl_dir(fake_smpl_dir, tmp_path):
    import shutil

    d = tmp_path / "smpl"
    shutil.copytree(fake_smpl_dir, d)
    reg = np.random.default_rng(0).random((17, 6890))
    reg /= reg.sum(1, keepdims=True)
    np.save(d / "J_regressor_h36m.npy", reg)
    m = load_body_model("smpl", smpl_dir=d)
    out = m(torch.zeros(1, 72, dtype=torch.float64))
    np.testing.assert_allclose(out.joints_h36m[0].numpy(), reg @ out.vertices[0].numpy(), atol=1e-9)
    np.save(d / "J_regressor_h36m.npy", reg[:, :100])
    with pytest.raises(ValueError, match=r"J_regressor_h36m.npy.*\(17, 6890\)"):
        load_body_model("smpl", smpl_dir=d)


def test_large_batch_chunks_and_matches(smpl):
    n = 3000
    rot, _ = _random_rotmats(n, seed=7)
    rot = rot.float()
    out = smpl(rot, chunk_size=512)
    assert out.vertices.shape == (n, 6890, 3)
    single = smpl(rot[[0, 1234, n - 1]])
    torch.testing.assert_close(out.vertices[[0, 1234, n - 1]], single.vertices, atol=1e-5, rtol=0)


def test_gradients_flow(smpl):
    pose = torch.zeros(2, 72, requires_grad=True)
    betas = torch.zeros(2, 10, requires_grad=True)
    out = smpl(pose, betas)
    out.vertices.sum().backward()
    assert betas.grad is not None and torch.isfinite(betas.grad).all()


def test_npz_files_with_pickles_are_refused(tmp_path, fake_smpl_model):
    d = tmp_path / "smpl"
    d.mkdir()
    bad = dict(fake_smpl_model)
    bad["meta"] = np.array([{"a": 1}], dtype=object)
    np.savez(d / "SMPL_NEUTRAL.npz", **bad)
    with pytest.raises(ValueError, match="pickled objects"):
        load_body_model("smpl", smpl_dir=d)
    np.savez(d / "SMPL_NEUTRAL.npz", **fake_smpl_model)
    m = load_body_model("smpl", smpl_dir=d)
    assert m.num_vertices == 6890 and m.info.betas_are_smpl


def test_bad_inputs(smpl):
    with pytest.raises(ValueError, match="pose must be"):
        smpl(torch.zeros(2, 23, 3))
    with pytest.raises(ValueError, match="betas"):
        smpl(torch.zeros(2, 72), torch.zeros(3, 10))
    with pytest.raises(ValueError, match="gender"):
        load_body_model("smpl", gender="robot")
    with pytest.raises(ValueError, match="neutral body only"):
        load_body_model("free", gender="female")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_follows_input(smpl):
    out = smpl(torch.zeros(2, 72, device="cuda"))
    assert out.vertices.device.type == "cuda"
