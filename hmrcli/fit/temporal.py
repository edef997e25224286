"""The body model fitted to a window of frames at once, with an acceleration penalty (``--smooth fit-window``).

One person's frames t = 0..T-1 (one track) start from their per-frame estimates (rotations
R0_t, translation t0_t) and one shared shape (betas, held fixed). The unknowns are, per
frame, a small rotation increment per joint d_t (24 x 3, axis-angle of R_t = R0_t exp(d_t):
increments stay far from the 180-degree wrap of axis-angle, so the parametrisation is
continuous however the body is turned) and a translation change (3). Energy:

    E = sum_t [ w2d  sum_k c_k^2 rho(|Pi(K_t, X_tk + t_t) - x_tk| / h_t)        2D landmarks, box units
              + w3d  sum_k d_k^2 rho(|(X_tk - X_t,root) - (Y_tk - Y_t,root)|)   3D landmarks, metres
              + wanchor |J_t - J0_t|^2                                          stay near the per-frame joints
              + wpose |theta_t - theta_mean|^2 + wlim |limit excess(theta_t)|^2 ]
      + wacc sum_t |A_t|^2,   A_t = 2 ((J_t+1 - J_t) / g_t+1 - (J_t - J_t-1) / g_t) / (g_t + g_t+1)

with J_t the 24 joints in the camera frame (metres; so the penalty covers the body's pose
and its path), g the frame gaps (a track may miss frames; A_t is then the acceleration per
frame^2 of the interpolating parabola), rho the Geman-McClure function of the per-frame fit
(:mod:`hmrcli.fit.optimize`) at its final scale. The 2D/3D terms need the landmarks the
per-frame fit used (the fitting engine, or ``--refine fit``); without them the anchor term
is the data term (a regression engine's estimates are then smoothed in joint space, through
the body model).

Solver: Levenberg-Marquardt over the whole window. A frame's residuals depend on its own 75
unknowns only, so the Jacobian is per frame (forward differences, every frame's 75
perturbations evaluated as one batch), and an acceleration couples three neighbouring
frames, so the normal equations are banded (a frame with the two on either side); they are
solved with ``scipy.linalg.solveh_banded`` (a general sparse least-squares solver took
minutes where this takes seconds). Long tracks are fitted in windows of ``window`` frames overlapping by
``overlap``; the two frames before a window are held at the previous window's solution
(the acceleration stays continuous across windows), and a window's last ``overlap`` frames
are fitted again, with their future, by the next one. Offline and non-causal: a frame's
result depends on up to ``window`` frames on either side, there is no lag.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from hmrcli.body import BodyModel
from hmrcli.fit.optimize import KeypointBody
from hmrcli.fit.priors import JOINT_LIMITS, POSE_MEAN

__all__ = ["TemporalFitOptions", "TemporalTargets", "TemporalFitResult", "fit_window"]

_LHIP, _RHIP = 11, 12
_P = 75  # unknowns per frame: 24 x 3 rotation increments + 3 translation


@dataclass(frozen=True)
class TemporalFitOptions:
    """Weights (see the module docstring) and the windowing. ``wacc`` multiplies the squared
    joint accelerations in metres / frame^2; ``sigma2d`` (box units) and ``sigma3d``
    (metres) are the robust scales; ``max_iters``: Levenberg-Marquardt iterations per window."""

    w2d: float = 1.0
    w3d: float = 0.5
    wanchor: float = 0.02
    wanchor_no_landmarks: float = 1.0
    wpose: float = 5e-4
    wlim: float = 1.0
    wacc: float = 4.0
    sigma2d: float = 0.1
    sigma3d: float = 0.1
    window: int = 48
    overlap: int = 12
    max_iters: int = 20

    def __post_init__(self) -> None:
        if self.window < 3 or not 0 <= self.overlap < self.window - 1:
            raise ValueError(f"need window >= 3 and 0 <= overlap < window - 1; got {self.window}, {self.overlap}")


@dataclass
class TemporalTargets:
    """Per-frame landmarks of one track (T frames): kp2d (T, 17, 2) pixels, conf2d (T, 17)
    (0 where a frame has none), kp3d (T, 17, 3) metres camera-aligned (any origin), conf3d
    (T, 17), box_size (T,) pixels, K (T, 3, 3)."""

    kp2d: np.ndarray
    conf2d: np.ndarray
    kp3d: np.ndarray
    conf3d: np.ndarray
    box_size: np.ndarray
    K: np.ndarray


@dataclass
class TemporalFitResult:
    """rotmats (T, 24, 3, 3) (joint 0: camera-frame orientation), transl (T, 3) metres
    (X_camera = X_model + transl), joints (T, 24, 3) camera frame, windows solved, solver
    evaluations and seconds."""

    rotmats: np.ndarray
    transl: np.ndarray
    joints: np.ndarray
    windows: int
    nfev: int
    seconds: float


def _accel_rows(times: np.ndarray) -> list[tuple[int, int, int, float, float, float]]:
    """(i0, i1, i2, c0, c1, c2): A = c0 J_i0 + c1 J_i1 + c2 J_i2 for consecutive triples."""
    out = []
    for i in range(1, len(times) - 1):
        g1, g2 = float(times[i] - times[i - 1]), float(times[i + 1] - times[i])
        s = 2.0 / (g1 + g2)
        out.append((i - 1, i, i + 1, s / g1, -s * (1.0 / g1 + 1.0 / g2), s / g2))
    return out


#: forward-difference step of the per-frame Jacobians (as in hmrcli.fit.optimize)
_FD_STEP = 1e-7


class _Window:
    """The least-squares problem of one window of T frames, with ``fixed`` leading frames
    (joints held constant) for the acceleration at its start."""

    def __init__(self, kb: KeypointBody, rot0: np.ndarray, tr0: np.ndarray, betas: np.ndarray,
                 targets: TemporalTargets | None, times: np.ndarray, anchor: np.ndarray,
                 fixed_joints: np.ndarray, fixed_times: np.ndarray, o: TemporalFitOptions) -> None:
        import roma

        self.roma = roma
        self.kb, self.o = kb, o
        dt, dev = kb.dtype, kb.device
        self.T = len(rot0)
        self.rot0 = torch.as_tensor(rot0, dtype=dt, device=dev)
        self.tr0 = torch.as_tensor(tr0, dtype=dt, device=dev)
        self.betas = torch.as_tensor(np.asarray(betas, dtype=np.float64), dtype=dt, device=dev)
        self.anchor = torch.as_tensor(anchor, dtype=dt, device=dev)
        self.tg = None if targets is None else {k: torch.as_tensor(getattr(targets, k), dtype=dt, device=dev)
                                                 for k in ("kp2d", "conf2d", "kp3d", "conf3d", "box_size", "K")}
        self.wanchor = o.wanchor if targets is not None else o.wanchor_no_landmarks
        self.nf = len(fixed_joints)
        self.fixed = torch.as_tensor(np.asarray(fixed_joints).reshape(self.nf, 72), dtype=dt, device=dev)
        rows = _accel_rows(np.concatenate([fixed_times, times]).astype(np.float64))
        self.rows = [r for r in rows if r[2] >= self.nf]  # at least one unknown frame in it
        self.lim = torch.as_tensor(JOINT_LIMITS, dtype=dt, device=dev).reshape(69, 2)
        self.mean = torch.as_tensor(POSE_MEAN, dtype=dt, device=dev).reshape(-1)

    def pose(self, x: torch.Tensor, frame: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotations (N, 24, 3, 3) and translations (N, 3) of unknowns x (N, 75) of the frames
        ``frame`` (N,) (default: all T, in order)."""
        f = slice(None) if frame is None else frame
        d = self.roma.rotvec_to_rotmat(x[:, :72].reshape(-1, 24, 3))
        return self.rot0[f] @ d, self.tr0[f] + x[:, 72:]

    def frame_residuals(self, x: torch.Tensor, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame residuals (N, R) and camera-frame joints (N, 72) of unknowns x (N, 75)
        belonging to the frames ``frame`` (N,)."""
        o = self.o
        n = x.shape[0]
        rot, tr = self.pose(x, frame)
        kp, jp = self.kb(rot, self.betas.expand(n, -1))
        jc = (jp + tr[:, None]).reshape(n, 72)
        parts = [self.wanchor ** 0.5 * (jc - self.anchor[frame].reshape(n, 72))]
        if self.tg is not None:
            g = {k: v[frame] for k, v in self.tg.items()}
            pc = kp + tr[:, None]
            K = g["K"]
            uv = pc[..., :2] / pc[..., 2:].clamp(min=1e-2) * torch.stack([K[:, 0, 0], K[:, 1, 1]], -1)[:, None] \
                + K[:, None, :2, 2]
            r2 = (uv - g["kp2d"]) / g["box_size"][:, None, None]
            n2 = (r2 ** 2).sum(-1, keepdim=True)
            s2 = o.sigma2d ** 2
            parts.append((o.w2d ** 0.5 * g["conf2d"][..., None] * r2 * torch.sqrt(s2 / (s2 + n2))).reshape(n, -1))
            k3 = g["kp3d"]
            d = (kp - 0.5 * (kp[:, _LHIP:_LHIP + 1] + kp[:, _RHIP:_RHIP + 1])) \
                - (k3 - 0.5 * (k3[:, _LHIP:_LHIP + 1] + k3[:, _RHIP:_RHIP + 1]))
            n3 = (d ** 2).sum(-1, keepdim=True)
            s3 = o.sigma3d ** 2
            parts.append((o.w3d ** 0.5 * g["conf3d"][..., None] * d * torch.sqrt(s3 / (s3 + n3))).reshape(n, -1))
        th = self.roma.rotmat_to_rotvec(rot[:, 1:]).reshape(n, 69)
        ex = torch.relu(self.lim[:, 0] - th) + torch.relu(th - self.lim[:, 1])
        parts += [o.wpose ** 0.5 * (th - self.mean), o.wlim ** 0.5 * ex]
        return torch.cat(parts, 1), jc

    def accel(self, jc: torch.Tensor) -> torch.Tensor:
        """sqrt(wacc) * accelerations (A, 72) of the joints jc (T, 72) (fixed frames first)."""
        allj = torch.cat([self.fixed, jc], 0) if self.nf else jc
        if not self.rows:
            return jc.new_zeros((0, 72))
        i = torch.as_tensor([r[:3] for r in self.rows], device=jc.device)
        c = torch.as_tensor([r[3:] for r in self.rows], dtype=jc.dtype, device=jc.device)
        return self.o.wacc ** 0.5 * torch.einsum("ak,akj->aj", c, allj[i])

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        fr, jc = self.frame_residuals(x, torch.arange(self.T))
        return (fr ** 2).sum() + (self.accel(jc) ** 2).sum()

    def solve(self, iters: int) -> tuple[torch.Tensor, int]:
        """Levenberg-Marquardt over all unknowns of the window: per-frame Jacobians by forward
        differences (every frame's 75 perturbations in one batched evaluation), the normal
        equations banded (a frame couples with two neighbours each side), solved with
        ``scipy.linalg.solveh_banded``."""
        T, dt, dev = self.T, self.kb.dtype, self.kb.device
        x = torch.zeros(T, _P, dtype=dt, device=dev)
        idx = torch.arange(T, device=dev)
        eye = torch.eye(_P, dtype=dt, device=dev) * _FD_STEP
        fidx = idx.repeat_interleave(_P + 1)
        sw = self.o.wacc ** 0.5
        n = T * _P
        u = 3 * _P - 1  # upper bandwidth: frames t and t + 2 share acceleration rows
        lam = 1e-3
        e = self.energy(x)
        evals = 1
        for _ in range(iters):
            xs = torch.cat([x[:, None], x[:, None] + eye[None]], 1).reshape(-1, _P)
            fr_all, jc_all = self.frame_residuals(xs, fidx)
            evals += 1
            fr_all = fr_all.reshape(T, _P + 1, -1)
            jc_all = jc_all.reshape(T, _P + 1, 72)
            dx = (xs.reshape(T, _P + 1, _P)[:, 1:] - x[:, None]).diagonal(dim1=1, dim2=2)  # steps as represented
            rf, jf = fr_all[:, 0], (fr_all[:, 1:] - fr_all[:, :1]).transpose(1, 2) / dx[:, None]  # (T, R), (T, R, P)
            jc, jj = jc_all[:, 0], (jc_all[:, 1:] - jc_all[:, :1]).transpose(1, 2) / dx[:, None]  # (T, 72), (T, 72, P)
            blocks = torch.zeros(T, 3, _P, _P, dtype=dt, device=dev)  # H[t, t + d]
            blocks[:, 0] = jf.transpose(1, 2) @ jf
            g = torch.einsum("trp,tr->tp", jf, rf)
            a = self.accel(jc)
            for k, (i0, i1, i2, c0, c1, c2) in enumerate(self.rows):
                terms = [(i - self.nf, c) for i, c in ((i0, c0), (i1, c1), (i2, c2)) if i >= self.nf]
                for ti, ci in terms:
                    g[ti] += sw * ci * (jj[ti].T @ a[k])
                    for tj, cj in terms:
                        if tj >= ti:
                            blocks[ti, tj - ti] += (sw * sw * ci * cj) * (jj[ti].T @ jj[tj])
            diag = blocks[:, 0].diagonal(dim1=1, dim2=2).reshape(-1)
            ab = np.zeros((u + 1, n))  # upper banded form: ab[u + i - j, j] = H[i, j] for i <= j
            bl = blocks.cpu().numpy()
            ii, jj_ = np.meshgrid(np.arange(_P), np.arange(_P), indexing="ij")
            for t in range(T):
                for d in range(min(3, T - t)):
                    r0, c0_ = t * _P, (t + d) * _P
                    keep = (r0 + ii) <= (c0_ + jj_)
                    ab[u + (r0 + ii[keep]) - (c0_ + jj_[keep]), c0_ + jj_[keep]] = bl[t, d][keep]
            damp = lam * (diag.cpu().numpy() + 1e-8)
            ab[u] += damp
            gg = g.reshape(-1).cpu().numpy()
            try:
                step = -scipy.linalg.solveh_banded(ab, gg, lower=False, check_finite=False)
            except (np.linalg.LinAlgError, ValueError):
                lam *= 8.0
                continue
            xn = x + torch.as_tensor(step, dtype=dt, device=dev).reshape(T, _P)
            en = self.energy(xn)
            evals += 1
            if torch.isfinite(en) and en < e:
                rel = float((e - en) / max(float(e), 1e-30))
                x, e, lam = xn, en, max(lam * 0.3, 1e-7)
                if rel < 1e-7:
                    break
            else:
                lam = min(lam * 8.0, 1e7)
        return x, evals


def fit_window(body: BodyModel | KeypointBody, rotmats: np.ndarray, transl: np.ndarray, betas: np.ndarray,
               times: np.ndarray, targets: TemporalTargets | None = None,
               options: TemporalFitOptions | None = None) -> TemporalFitResult:
    """Fit one track's frames jointly (see the module docstring).

    rotmats (T, 24, 3, 3) and transl (T, 3): the per-frame estimates (the start and the
    anchor); betas (K,): the track's shape (held fixed); times (T,): the frames' positions in
    frames (increasing; gaps allowed); targets: the landmarks, or None (anchor only)."""
    t0 = time.perf_counter()
    o = options or TemporalFitOptions()
    kb = body if isinstance(body, KeypointBody) else KeypointBody(body)
    kb = kb.double()
    T = len(rotmats)
    rot = np.array(rotmats, dtype=np.float64)
    tr = np.array(transl, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    b = np.asarray(betas, dtype=np.float64)[:kb.num_betas]
    b = np.pad(b, (0, kb.num_betas - len(b)))
    with torch.no_grad():
        _, j0 = kb(torch.as_tensor(rot), torch.as_tensor(np.broadcast_to(b, (T, len(b))).copy()))
    anchor = j0.numpy() + tr[:, None]
    if T < 3:  # no acceleration to penalise
        return TemporalFitResult(rot, tr, anchor, 0, 0, time.perf_counter() - t0)
    out_rot, out_tr, out_j = rot.copy(), tr.copy(), anchor.copy()
    windows, nfev = 0, 0
    s = 0
    while s < T:
        e = min(T, s + o.window)
        if T - e < max(3, o.overlap):  # a short remainder joins this window
            e = T
        sl = slice(s, e)
        nfix = min(2, s)
        tg = None if targets is None else TemporalTargets(*(np.asarray(getattr(targets, k))[sl] for k in (
            "kp2d", "conf2d", "kp3d", "conf3d", "box_size", "K")))
        prob = _Window(kb, out_rot[sl], out_tr[sl], b, tg, times[sl], anchor[sl], out_j[s - nfix:s],
                       times[s - nfix:s], o)
        with torch.no_grad():
            x, n_ev = prob.solve(o.max_iters)
            r, t = prob.pose(x)
            _, jp = kb(r, prob.betas.expand(e - s, -1))
        keep = e - s if e == T else max(1, e - s - o.overlap)
        out_rot[s:s + keep] = r.numpy()[:keep]
        out_tr[s:s + keep] = t.numpy()[:keep]
        out_j[s:s + keep] = (jp + t[:, None]).numpy()[:keep]
        windows += 1
        nfev += n_ev
        s += keep
    return TemporalFitResult(out_rot, out_tr, out_j, windows, nfev, time.perf_counter() - t0)
