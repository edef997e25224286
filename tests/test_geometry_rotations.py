"""6D and axis-angle rotation conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hmrcli import geometry as g


def _spin_rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """Transcription of SPIN/CLIFF's reference implementation ((B, 6) -> (B, 3, 3))."""
    x = x.view(-1, 3, 2)
    a1, a2 = x[:, :, 0], x[:, :, 1]
    b1 = F.normalize(a1)
    b2 = F.normalize(a2 - torch.einsum("bi,bi->b", b1, a2).unsqueeze(-1) * b1)
    b3 = torch.cross(b1, b2, dim=1)
    return torch.stack((b1, b2, b3), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(6,), (7, 6), (2, 3, 24, 6)])
def test_rot6d_outputs_are_rotations(dtype, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    R = g.rot6d_to_rotmat(x)
    assert R.shape == (*shape[:-1], 3, 3) and R.dtype == dtype
    eye = torch.eye(3, dtype=dtype).expand_as(R)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(R.transpose(-1, -2) @ R, eye, atol=tol, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(shape[:-1], dtype=dtype), atol=tol, rtol=0)


def test_rot6d_matches_spin_reference_and_convention():
    x = torch.randn(100, 6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(g.rot6d_to_rotmat(x), _spin_rot6d_to_rotmat(x), atol=0, rtol=0)
    # row-by-row reading: columns are elements (0, 2, 4) and (1, 3, 5)
    torch.testing.assert_close(g.rot6d_to_rotmat(torch.tensor([1.0, 0, 0, 1, 0, 0])), torch.eye(3))
    R = g.rot6d_to_rotmat(torch.tensor([0.0, 1, 1, 0, 0, 0]))
    torch.testing.assert_close(R, torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]]))


def test_rot6d_round_trips():
    gen = torch.Generator().manual_seed(2)
    R = g.axis_angle_to_rotmat(torch.randn(50, 3, generator=gen, dtype=torch.float64))
    six = g.rotmat_to_rot6d(R)
    assert six.shape == (50, 6)
    torch.testing.assert_close(g.rot6d_to_rotmat(six), R, atol=1e-12, rtol=0)
    # rot6d -> R -> rot6d is the Gram-Schmidt projection: idempotent after one pass
    x = torch.randn(5, 4, 6, generator=gen, dtype=torch.float64)
    once = g.rotmat_to_rot6d(g.rot6d_to_rotmat(x))
    torch.testing.assert_close(g.rotmat_to_rot6d(g.rot6d_to_rotmat(once)), once, atol=1e-12, rtol=0)
    torch.testing.assert_close(g.rotmat_to_rot6d(R), R[..., :, :2].reshape(50, 6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_axis_angle_round_trip(dtype):
    gen = torch.Generator().manual_seed(3)
    axis = F.normalize(torch.randn(3, 8, 3, generator=gen, dtype=dtype), dim=-1)
    angle = torch.rand(3, 8, 1, generator=gen, dtype=dtype) * 3.0  # < pi
    rv = axis * angle
    R = g.axis_angle_to_rotmat(rv)
    assert R.shape == (3, 8, 3, 3) and R.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(g.rotmat_to_axis_angle(R), rv, atol=tol, rtol=0)


def test_numpy_inputs_give_numpy():
    R = g.axis_angle_to_rotmat(np.array([0.0, 0.0, np.pi / 2]))
    assert isinstance(R, np.ndarray)
    np.testing.assert_allclose(R, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(g.rot6d_to_rotmat(g.rotmat_to_rot6d(R)), R, atol=1e-12)
    np.testing.assert_allclose(g.rotmat_to_axis_angle(R), [0, 0, np.pi / 2], atol=1e-12)
    with pytest.raises(ValueError):
        g.rot6d_to_rotmat(np.zeros(5))


def test_best_rotation_recovers_a_rotation_and_never_reflects():
    import roma

    from hmrcli.geometry import best_rotation

    g = torch.Generator().manual_seed(0)
    r_true = roma.rotvec_to_rotmat(torch.randn(4, 3, dtype=torch.float64, generator=g))
    src = torch.randn(4, 10, 3, dtype=torch.float64, generator=g)
    dst = torch.einsum("bij,bkj->bki", r_true, src)
    torch.testing.assert_close(best_rotation(src, dst), r_true, atol=1e-10, rtol=0)
    # weights: points with weight 0 do not matter
    noisy = dst.clone()
    noisy[:, :3] += 5.0
    w = torch.ones(4, 10, dtype=torch.float64)
    w[:, :3] = 0.0
    torch.testing.assert_close(best_rotation(src, noisy, w), r_true, atol=1e-10, rtol=0)
    # a mirrored target gives a proper rotation (det +1), not the reflection
    mirrored = dst * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    assert torch.allclose(torch.linalg.det(best_rotation(src, mirrored)), torch.ones(4, dtype=torch.float64))
