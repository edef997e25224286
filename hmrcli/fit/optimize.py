"""SMPLify-style fitting of body pose, shape and full-image camera translation, person by person.

Objective per person (every person is optimised on its own):

    E = w2d  * sum_k c_k^2 rho_s(|Pi(K, X_k + t) - x_k| / h)            2D reprojection
      + w3d  * sum_k d_k^2 rho_s'(|(X_k - X_root) - (Y_k - Y_root)|)     3D, root-aligned
      + wlim * |limit excess(theta)|^2 + wbend * sum exp(+-theta_bend)^2  joint limits, bends
      + wpose * P(theta) + wshape * |beta|^2                             pose / shape priors
      + 100 * sum_k relu(z_min - z_k)^2                                  keypoints in front

with X_k the body model's COCO-17 keypoints (camera-frame orientation, no translation), t
the camera translation (metres), K the intrinsics, x_k the 2D landmarks (pixels) with
confidence c_k, h the person's box size (pixels; residuals are in box units so the weights
do not depend on the image resolution), Y_k the 3D landmarks (metres, camera-aligned axes)
with confidence d_k, root = the midpoint of the hips, and rho_s the Geman-McClure robust
function rho_s(r) = s^2 r^2 / (s^2 + r^2). Pose prior P (``FitOptions.pose_prior``):
``relaxed`` |theta - theta_mean|^2 towards a relaxed standing pose
(:mod:`hmrcli.body.pose_limits`, the default), or ``gmm`` the Mahalanobis term of the best
component of a Gaussian mixture learned from motion capture (:mod:`hmrcli.body.pose_prior`,
times ``gmm_scale``).

Staged as in SMPLify: (0) closed-form initialisation -- global orientation by Kabsch
alignment of the body's rest torso (shoulders, hips) to the 3D landmarks, limbs by minimal
"swing" rotations onto the 3D landmarks' limb directions (:func:`swing_init`), depth from
the ratio of 3D to 2D torso length with the given focal length, x/y so the hips project
where they were seen; (1) camera stage: global orientation + translation on the torso
keypoints; (2) body stages: everything, with the prior weights and the robust scales s
(2D: 0.5 -> 0.2 -> 0.1 box; 3D: 0.5 -> 0.2 -> 0.1 m) annealed from loose to tight, so every
landmark pulls at first and outliers stop pulling at the end. Initialisation from a
regressor's estimate (``--refine fit``) skips (0) and (1).

Each stage is a Levenberg-Marquardt per person: the energy is a sum of squared residuals
(the robust terms as r * sqrt(rho(r^2)) / |r|), the Jacobian of the person's residual vector
comes from forward differences (all perturbed parameter vectors evaluated as one tensor
batch; pose correctives and the GMM component held at the current estimate), the person
solves its own damped normal equations and keeps or rejects its step with its own damping.
Persons never share an optimiser, a step size, a stopping rule or a tensor: :func:`fit_bodies`
fits them one after the other with tensors of batch size 1, so a person's result does not
depend on the other persons of the call -- bit for bit (batched kernels round differently
with the batch size and with a row's place in it, and 40 iterations amplify last-bit
differences to ~1e-3 in the rotations). Only the COCO keypoints are needed, so the body
model is evaluated through :class:`KeypointBody` (its skinning collapsed exactly onto the
keypoints), which makes an evaluation cost microseconds instead of a full mesh skinning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from hmrcli import geometry as G
from hmrcli.body import BodyModel
from hmrcli.fit.priors import BENDS, JOINT_LIMITS, POSE_MEAN

__all__ = ["KeypointBody", "FitTargets", "FitInit", "FitOptions", "FitResult", "fit_bodies", "meshes_one_by_one", "TORSO",
           "kabsch"]

TORSO = (5, 6, 11, 12)  # COCO: shoulders, hips
_LHIP, _RHIP, _LSH, _RSH = 11, 12, 5, 6


class KeypointBody:
    """COCO-17 keypoints and 24 joints of a :class:`BodyModel`, differentiable and cheap.

    Exactly the model's linear blend skinning with pose correctives, collapsed onto the
    keypoints: a keypoint is ``sum_s w_ks T_s v_s`` over the vertices s its regressor uses,
    with ``T_s = sum_j W_sj A_j`` (A_j the joints' rigid transforms) and ``v_s`` linear in
    the betas and the pose-corrective features. Swapping the sums gives
    ``sum_j A_j (sum_s w_ks W_sj v_s)``: the inner sums are precomputed per (keypoint, joint)
    for the template, every shape direction and every pose-corrective direction, so an
    evaluation costs O(17 x 24 x 207) instead of a skinning of thousands of vertices.
    """

    def __init__(self, body: BodyModel, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.body = body
        wv, wj = body.coco_regressor
        support = np.flatnonzero(np.abs(wv).sum(axis=0) > 0)
        v_t = body.template(torch.float64).numpy()
        sd = body.shapedirs  # (V, 3, K)
        jr = body.joint_regressor  # (24, V)
        pd = body.posedirs.reshape(207, -1, 3)[:, support]  # (207, S, 3)
        kwt = wv[:, support][:, :, None] * body.skinning_weights[support][None]  # (17, S, 24)
        kw = dict(device=device, dtype=dtype)
        self.device, self.dtype = torch.device(device), dtype
        self.num_betas = sd.shape[2]
        self.j_t = torch.as_tensor(jr @ v_t, **kw)
        self.j_sd = torch.as_tensor(np.einsum("jv,vck->jck", jr, sd), **kw)
        self.m0 = torch.as_tensor(np.einsum("ksj,sc->kjc", kwt, v_t[support]), **kw)
        self.msd = torch.as_tensor(np.einsum("ksj,scq->kjcq", kwt, sd[support]), **kw)
        # None when the model has no pose correctives (the free model): skipped entirely
        self.mpd = torch.as_tensor(np.einsum("ksj,psc->kjcp", kwt, pd), **kw) if np.any(pd) else None
        self.c = torch.as_tensor(kwt.sum(axis=1), **kw)  # (17, 24)
        self.kj = torch.as_tensor(wj, **kw)
        self.parents = torch.as_tensor(np.array(body.parents), dtype=torch.long, device=device)
        # forward kinematics level by level (all joints at one depth of the tree at once): 8
        # chained products for SMPL's 24 joints instead of 23; per level the joints (a slice
        # when they are consecutive) and the rows of their parents in the chain built so far
        par = [int(v) for v in body.parents]
        depth = [0] * len(par)
        for j in range(1, len(par)):
            depth[j] = depth[par[j]] + 1
        order = [0]
        self._levels: list[tuple[slice | torch.Tensor, torch.Tensor]] = []
        for d in range(1, max(depth) + 1):
            js = [j for j in range(len(par)) if depth[j] == d]
            sel = slice(js[0], js[-1] + 1) if js == list(range(js[0], js[-1] + 1)) else \
                torch.as_tensor(js, dtype=torch.long, device=device)
            self._levels.append((sel, torch.as_tensor([order.index(par[j]) for j in js], dtype=torch.long, device=device)))
            order += js
        inv = np.argsort(order)
        self._unorder = None if np.array_equal(inv, np.arange(len(par))) else torch.as_tensor(inv, device=device)
        self._par0 = torch.as_tensor([0] + par[1:], dtype=torch.long, device=device)

    def double(self) -> "KeypointBody":
        """This model in float64 (itself when it is; built once otherwise)."""
        if self.dtype == torch.float64:
            return self
        if getattr(self, "_double", None) is None:
            self._double = KeypointBody(self.body, device=self.device, dtype=torch.float64)
        return self._double

    def __call__(self, rotmats: torch.Tensor, betas: torch.Tensor, correctives_grad: bool = True,
                 correctives_from: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """rotmats (B, 24, 3, 3), betas (B, K) -> keypoints (B, 17, 3), joints (B, 24, 3).

        ``correctives_grad=False`` evaluates the same values but treats the pose-corrective
        offsets as constants for differentiation. ``correctives_from`` (1 or B, 24, 3, 3):
        take the pose-corrective offsets from these rotations instead (the fitting
        Jacobian's finite differences hold them at the current estimate: 85 directions
        through the 207 corrective directions would dominate the cost, and the correctives
        move keypoints by millimetres)."""
        j = self.j_t + torch.einsum("jck,bk->bjc", self.j_sd, betas)
        m = self.m0 + torch.einsum("kjcq,bq->bkjc", self.msd, betas)
        if self.mpd is not None:
            src = rotmats if correctives_from is None else correctives_from
            eye = torch.eye(3, device=src.device, dtype=src.dtype)
            feat = (src[:, 1:] - eye).reshape(src.shape[0], -1)
            if not correctives_grad:
                feat = feat.detach()
            m = m + torch.einsum("kjcp,bp->bkjc", self.mpd, feat)
        rg, jp = self._kinematics(rotmats, j)
        # A_j = [R_j | jp_j - R_j j_j]: the joints' rigid transforms relative to the rest pose
        at = jp - torch.einsum("bjmn,bjn->bjm", rg, j)
        kp = torch.einsum("bjmn,bkjn->bkm", rg, m) + torch.einsum("bjm,kj->bkm", at, self.c)
        kp = kp + torch.einsum("kj,bjc->bkc", self.kj, jp)
        return kp, jp

    def _kinematics(self, rotmats: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global rotations (B, J, 3, 3) and posed joint positions (B, J, 3) from the local
        rotations and the rest joints (smplx's ``batch_rigid_transform``, level by level,
        with 4x4 transforms)."""
        b, nj = rotmats.shape[:2]
        rel = j - j[:, self._par0] * (torch.arange(nj, device=j.device) > 0)[:, None].to(j.dtype)
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=j.dtype, device=j.device).expand(b, nj, 1, 4)
        loc = torch.cat([torch.cat([rotmats, rel[..., None]], -1), bottom], -2)  # (B, J, 4, 4)
        g = loc[:, :1]
        for sel, prow in self._levels:
            g = torch.cat([g, g[:, prow] @ loc[:, sel]], 1)
        if self._unorder is not None:
            g = g[:, self._unorder]
        return g[..., :3, :3], g[..., :3, 3]


@dataclass
class FitTargets:
    """Observations for B persons. kp2d (B, 17, 2) pixels; conf2d (B, 17); K (B, 3, 3);
    box_size (B,) pixels; kp3d (B, 17, 3) metres camera-aligned (any origin: it is
    root-aligned) or None; conf3d (B, 17) or None."""

    kp2d: np.ndarray
    conf2d: np.ndarray
    K: np.ndarray
    box_size: np.ndarray
    kp3d: np.ndarray | None = None
    conf3d: np.ndarray | None = None


@dataclass
class FitInit:
    """Starting point (e.g. a regressor's estimate): rotmats (B, 24, 3, 3) with joint 0 the
    global orientation in the camera frame, betas (B, K), transl (B, 3) metres."""

    rotmats: np.ndarray
    betas: np.ndarray
    transl: np.ndarray


@dataclass
class FitOptions:
    w2d: float = 1.0
    w3d: float = 0.5
    sigma2d: float = 0.1
    sigma3d: float = 0.1
    # per body stage: (pose prior, limits, bends, shape) weights and the 2D robust scale
    # (box units): strong priors and a wide robust scale first (every landmark pulls),
    # then weaker priors and a tight scale (outlying landmarks stop pulling)
    body_stages: tuple[tuple[float, float, float, float, float], ...] = (
        (1e-2, 1.0, 1e-3, 1e-2, 0.5), (2e-3, 1.0, 2e-4, 4e-3, 0.2), (5e-4, 1.0, 5e-5, 2e-3, 0.1))
    camera_iters: int = 10
    body_iters: int = 10
    optimize_shape: bool = True
    min_depth: float = 0.3  # metres: keypoints closer to the camera plane are penalised
    wide_min_conf: float = 0.8  # landmarks below this confidence sit out the wide-scale stages
    # pose prior: "relaxed" (distance to a relaxed standing pose, hmrcli.body.pose_limits) or
    # "gmm" (the Gaussian mixture learned from CMU motion capture, hmrcli.body.pose_prior; its
    # residual is Mahalanobis-scaled, so the stage weights are multiplied by gmm_scale; 0.3 was
    # the best of 0.03/0.1/0.3/1 on the real frames of benchmarks/real_frames.py)
    pose_prior: str = "relaxed"
    gmm_scale: float = 0.3


@dataclass
class FitResult:
    """Fitted parameters (numpy float64) and per-person diagnostics.

    rotmats (B, 24, 3, 3); body_pose_aa (B, 23, 3); betas (B, K); transl (B, 3) metres
    (X_camera = body(rotmats, betas) + transl); reproj_px (B,) mean 2D error in pixels over
    keypoints with confidence >= 0.5; reproj_box (B,) the same divided by the box size;
    loss (B,) final objective; seconds: wall time of the whole batch.
    """

    rotmats: np.ndarray
    body_pose_aa: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    reproj_px: np.ndarray
    reproj_box: np.ndarray
    loss: np.ndarray
    seconds: float
    stages: list[str] = field(default_factory=list)


def kabsch(src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Rotations R (B, 3, 3) minimising sum w |R src - dst|^2 for centred point sets (B, N, 3)
    (:func:`hmrcli.geometry.best_rotation`)."""
    return G.best_rotation(src, dst, w)


#: (SMPL joint, COCO start keypoint, COCO end keypoint, SMPL parent joint) of the limb bones the
#: swing initialisation sets, parents before children.
IK_BONES: tuple[tuple[int, int, int, int], ...] = (
    (1, 11, 13, 0), (2, 12, 14, 0), (16, 5, 7, 0), (17, 6, 8, 0),
    (4, 13, 15, 1), (5, 14, 16, 2), (18, 7, 9, 16), (19, 8, 10, 17),
)


def swing_init(rest_kp: torch.Tensor, global_rot: torch.Tensor, kp3d: torch.Tensor, conf3d: torch.Tensor,
               base: torch.Tensor | None = None) -> torch.Tensor:
    """Body pose (B, 23, 3, 3) whose limb bones point along the 3D landmarks' limb
    directions (minimal "swing" rotations, no twist), processed from the root outwards.

    rest_kp (B, 17, 3): COCO keypoints of the rest pose (body frame); global_rot (B, 3, 3);
    kp3d (B, 17, 3) camera-aligned; conf3d (B, 17). Bones whose end points have zero
    confidence keep their ``base`` rotation (B, 23, 3, 3; default the rest pose). Joints
    between the pelvis and the shoulders (spine, collars) are left at rest, so a shoulder's
    parent frame is the global orientation.
    """
    b = rest_kp.shape[0]
    eye = torch.eye(3, dtype=rest_kp.dtype, device=rest_kp.device)
    local = eye.expand(b, 23, 3, 3).clone() if base is None else base.clone()
    glob: dict[int, torch.Tensor] = {0: global_rot}
    for j, ks, ke, parent in IK_BONES:
        gp = glob[parent]
        d_rest = torch.einsum("bij,bj->bi", gp, rest_kp[:, ke] - rest_kp[:, ks])
        d_tgt = kp3d[:, ke] - kp3d[:, ks]
        ok = (conf3d[:, ks] > 0) & (conf3d[:, ke] > 0)
        rl = gp.transpose(1, 2) @ G.rotation_between(d_rest, d_tgt) @ gp
        rl = torch.where(ok[:, None, None], rl, local[:, j - 1])
        local[:, j - 1] = rl
        glob[j] = gp @ rl
    return local


def _project(p: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    z = p[..., 2:3].clamp(min=1e-2)
    uv = p[..., :2] / z
    return uv * torch.stack([K[:, 0, 0], K[:, 1, 1]], -1)[:, None] + K[:, None, :2, 2]


def _root(kp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (kp[:, _LHIP] + kp[:, _RHIP])


def _initialise(kb: KeypointBody, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form global orientation (B, 3, 3) and translation (B, 3)."""
    b = t["kp2d"].shape[0]
    dt, dev = kb.dtype, kb.device
    eye = torch.eye(3, dtype=dt, device=dev).expand(b, 24, 3, 3).clone()
    rest, _ = kb(eye, torch.zeros(b, kb.num_betas, dtype=dt, device=dev))
    # default: upright, facing the camera (body +Y up -> camera -y, body front +Z -> camera -z)
    r0 = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=dt, device=dev)).expand(b, 3, 3).clone()
    if t.get("kp3d") is not None:
        torso = list(TORSO)
        src = rest[:, torso] - _root(rest)[:, None]
        dst = t["kp3d"][:, torso] - _root(t["kp3d"])[:, None]
        w = t["conf3d"][:, torso]
        ok = (w > 0).sum(1) >= 3
        r = kabsch(src, dst, w + 1e-6)
        r0 = torch.where(ok[:, None, None], r, r0)
    posed = torch.einsum("bij,bkj->bki", r0, rest)
    kp2, c2 = t["kp2d"], t["conf2d"]
    f = t["K"][:, 0, 0]
    sh2 = 0.5 * (kp2[:, _LSH] + kp2[:, _RSH])
    hip2 = 0.5 * (kp2[:, _LHIP] + kp2[:, _RHIP])
    sh3 = 0.5 * (posed[:, _LSH] + posed[:, _RSH])
    hip3 = _root(posed)
    l2 = torch.linalg.norm(sh2 - hip2, dim=-1)
    l3 = torch.linalg.norm((sh3 - hip3)[:, :2], dim=-1).clamp(min=0.2)
    torso_ok = (torch.stack([c2[:, i] for i in TORSO], 1) > 0.2).all(1) & (l2 > 2)
    # fallback: a 1.7 m body filling the box height
    depth_box = f * 1.7 / t["box_size"].clamp(min=1.0)
    depth = torch.where(torso_ok, f * l3 / l2.clamp(min=1e-3), depth_box)
    anchor = torch.where(torso_ok[:, None], hip2, t["center"])
    ray = torch.cat([(anchor - t["K"][:, :2, 2]) / f[:, None], torch.ones(b, 1, dtype=dt, device=dev)], 1)
    transl = ray * depth[:, None] - hip3
    return r0, transl


#: forward-difference step of the fitting Jacobian (radians, metres, shape units): its
#: truncation error (~step) and rounding error (~1e-16 / step) are ~1e-7 and ~1e-9 of the
#: derivatives (measured against the exact forward-mode Jacobian on real fits: at most 4e-7
#: of its largest entry)
_FD_STEP = 1e-7


def _person(arr: np.ndarray | None, k: int, dt: torch.dtype, dev: torch.device) -> torch.Tensor | None:
    """Person k's slice of a batched array as a FRESH (1, ...) tensor: a copy, so its memory
    (and hence the alignment the kernels see) does not depend on where k sat in the batch."""
    if arr is None:
        return None
    return torch.tensor(np.ascontiguousarray(np.asarray(arr)[k:k + 1]), dtype=dt, device=dev)


def fit_bodies(body: BodyModel | KeypointBody, targets: FitTargets, init: FitInit | None = None,
               options: FitOptions | None = None, device: str | torch.device = "cpu") -> FitResult:
    """Fit B bodies to their landmarks (see the module docstring). Runs on ``device``.

    The persons are fitted one after the other, each with tensors of batch size 1, so a
    person's result does not depend on the other persons of the call, their number or its
    place among them -- not even in the last bit (batched kernels round differently with
    the batch size: a batched fit of 40 persons differed from single fits by up to 5e-3 in
    the rotation matrices after the 40 Levenberg-Marquardt iterations)."""
    import roma

    t0 = time.perf_counter()
    o = options or FitOptions()
    kb = body if isinstance(body, KeypointBody) else KeypointBody(body, device=device)
    kb = kb.double()  # the finite-difference Jacobian needs double precision
    dt, dev = kb.dtype, kb.device
    b = int(np.asarray(targets.kp2d).shape[0])
    if b == 0:
        z = np.zeros((0,))
        return FitResult(np.zeros((0, 24, 3, 3)), np.zeros((0, 23, 3)), np.zeros((0, kb.num_betas)), np.zeros((0, 3)),
                         z, z, z, 0.0)
    nb = kb.num_betas
    P = 75 + nb
    i_go, i_bp, i_be, i_tr = slice(0, 3), slice(3, 72), slice(72, 72 + nb), slice(72 + nb, 75 + nb)
    lim = torch.as_tensor(JOINT_LIMITS, dtype=dt, device=dev)
    mean = torch.as_tensor(POSE_MEAN, dtype=dt, device=dev).reshape(-1)
    bends = [(3 * (j - 1) + c, sgn) for j, c, sgn in BENDS]
    if o.pose_prior == "gmm":
        from hmrcli.body.pose_prior import GMMPosePrior

        gmm = GMMPosePrior.load()
        g_mu = torch.as_tensor(gmm.means, dtype=dt, device=dev)  # (C, 69)
        g_lc = torch.as_tensor(gmm.precisions_chol, dtype=dt, device=dev)  # (C, 69, 69)

        def prior_res(th, comp=None):
            """(N, 69) -> (N, 69); ``comp``: hold the mixture component fixed (finite differences)."""
            if comp is None:
                return o.gmm_scale ** 0.5 * gmm.residuals(th)
            return o.gmm_scale ** 0.5 * ((th - g_mu[comp]) @ g_lc[comp])

        def prior_comp(th):
            return gmm.component(th)[0]
    elif o.pose_prior == "relaxed":
        def prior_res(th, comp=None):
            return th - mean

        def prior_comp(th):
            return None
    else:
        raise ValueError(f"unknown pose prior {o.pose_prior!r}: use relaxed or gmm")
    b_idx = [k for k, _ in bends]
    b_sgn = torch.as_tensor([sgn for _, sgn in bends], dtype=dt, device=dev)

    def residuals(xs, kp2, cf2, Ki, box, k3, cf3, wts, jmask, corr=None, comp=None):
        """Residual vectors (N, R) of ONE person at N parameter vectors xs (N, P); the squared
        norm of a row is the energy. ``corr``/``comp``: pose correctives and prior component
        held at the current estimate's (the Jacobian's finite differences)."""
        n = xs.shape[0]
        wp, wl, wb, ws = wts[0], wts[1], wts[2], wts[3]
        aa = torch.cat([xs[:, i_go], xs[:, i_bp]], 1).reshape(n, 24, 3)
        rot = roma.rotvec_to_rotmat(aa)
        kp, _ = kb(rot, xs[:, i_be], correctives_from=corr)
        pc = kp + xs[:, None, i_tr]
        uv = pc[..., :2] / pc[..., 2:].clamp(min=1e-2) * torch.stack([Ki[0, 0], Ki[1, 1]]) + Ki[:2, 2]
        r2 = (uv - kp2) / box
        n2 = (r2 ** 2).sum(-1, keepdim=True)
        s2 = wts[4] ** 2
        # while the robust scale is wide, only confident landmarks pull (BlazePose places cut-off
        # limbs inside the picture with middling visibility; they join once outliers are cheap)
        sure = (cf2 >= o.wide_min_conf) | (wts[4] <= o.sigma2d)
        res2 = (o.w2d ** 0.5) * (cf2 * jmask * sure)[:, None] * r2 * torch.sqrt(s2 / (s2 + n2))
        d = (kp - 0.5 * (kp[:, _LHIP:_LHIP + 1] + kp[:, _RHIP:_RHIP + 1])) - (k3 - 0.5 * (k3[_LHIP] + k3[_RHIP]))
        n3 = (d ** 2).sum(-1, keepdim=True)
        s3 = (wts[4] * o.sigma3d / o.sigma2d) ** 2
        res3 = (o.w3d ** 0.5) * (cf3 * jmask * sure)[:, None] * d * torch.sqrt(s3 / (s3 + n3))
        # keep every keypoint in front of the camera (the robust 2D term saturates, so
        # without this a body behind the camera could look cheap)
        front = 10.0 * torch.relu(o.min_depth - pc[..., 2])
        th_f = xs[:, i_bp]
        th = th_f.reshape(n, 23, 3)
        ex = torch.relu(lim[..., 0] - th) + torch.relu(th - lim[..., 1])
        rb = torch.exp(b_sgn * th_f[:, b_idx])
        return torch.cat([res2.reshape(n, -1), res3.reshape(n, -1), front, wp.sqrt() * prior_res(th_f, comp),
                          wl.sqrt() * ex.reshape(n, -1), wb.sqrt() * rb, ws.sqrt() * xs[:, i_be]], 1)

    def run_stage(x, data, weights, joints, free, iters):
        """Levenberg-Marquardt on ONE person's x (1, P): its own Jacobian (forward
        differences), damping and accept/reject; tensor shapes depend on the stage only."""
        w = torch.as_tensor(weights, dtype=dt, device=dev)
        jm = torch.zeros(17, dtype=dt, device=dev)
        jm[list(range(17)) if joints is None else list(joints)] = 1.0
        idx = torch.cat([torch.arange(P, device=dev)[sl] for sl in free])
        nf = int(idx.shape[0])
        hstep = torch.zeros(nf, P, dtype=dt, device=dev)
        rows = torch.arange(nf, device=dev)
        hstep[rows, idx] = _FD_STEP
        lam = torch.tensor(1e-3, dtype=dt, device=dev)
        r = residuals(x, *data, w, jm)
        e = (r ** 2).sum()
        for _ in range(iters):
            corr = roma.rotvec_to_rotmat(torch.cat([x[:, i_go], x[:, i_bp]], 1).reshape(1, 24, 3))
            comp = prior_comp(x[:, i_bp])
            xs = x + hstep
            dx = (xs - x)[rows, idx]  # the steps as represented (x + step rounds)
            jx = (residuals(xs, *data, w, jm, corr=corr, comp=comp) - r).T / dx  # (R, nf)
            g = jx.T @ r[0]
            h = jx.T @ jx
            ha = h + torch.diag(lam * (torch.diagonal(h) + 1e-8))
            step = torch.zeros_like(x)
            step[0, idx] = -torch.linalg.solve(ha, g)
            xn = x + step
            rn = residuals(xn, *data, w, jm)
            en = (rn ** 2).sum()
            ok = torch.isfinite(en) & (en < e)
            x = torch.where(ok, xn, x)
            r = torch.where(ok, rn, r)
            e = torch.where(ok, en, e)
            lam = torch.where(ok, lam * 0.3, lam * 8.0).clamp(1e-7, 1e7)
        return x, e

    has3d = targets.kp3d is not None
    conf3 = targets.conf3d if targets.conf3d is not None or not has3d else targets.conf2d
    stages: list[str] = []
    outs = []
    for k in range(b):
        t = {"kp2d": _person(targets.kp2d, k, dt, dev), "conf2d": _person(targets.conf2d, k, dt, dev),
             "K": _person(targets.K, k, dt, dev), "box_size": _person(targets.box_size, k, dt, dev),
             "kp3d": _person(targets.kp3d, k, dt, dev), "conf3d": _person(conf3, k, dt, dev) if has3d else None}
        c2 = t["conf2d"]
        vis = c2 > 0
        lo = torch.where(vis[..., None], t["kp2d"], torch.full_like(t["kp2d"], float("inf"))).amin(1)
        hi = torch.where(vis[..., None], t["kp2d"], torch.full_like(t["kp2d"], -float("inf"))).amax(1)
        t["center"] = torch.where(torch.isfinite(lo).all(1, keepdim=True), 0.5 * (lo + hi), t["K"][:, :2, 2])
        if init is None:
            r0, tr = _initialise(kb, t)
            go = roma.rotmat_to_rotvec(r0)
            bp = torch.as_tensor(POSE_MEAN, dtype=dt, device=dev).expand(1, 23, 3).clone()
            if has3d:
                eye = torch.eye(3, dtype=dt, device=dev).expand(1, 24, 3, 3).clone()
                rest, _ = kb(eye, torch.zeros(1, nb, dtype=dt, device=dev))
                bp = roma.rotmat_to_rotvec(swing_init(rest, r0, t["kp3d"], t["conf3d"], roma.rotvec_to_rotmat(bp)))
            betas = torch.zeros(1, nb, dtype=dt, device=dev)
        else:
            aa = roma.rotmat_to_rotvec(_person(init.rotmats, k, dt, dev))
            go, bp = aa[:, 0], aa[:, 1:]
            betas = _person(init.betas, k, dt, dev)[:, :nb]
            if betas.shape[1] < nb:
                betas = torch.nn.functional.pad(betas, (0, nb - betas.shape[1]))
            tr = _person(init.transl, k, dt, dev)
        x = torch.cat([go, bp.reshape(1, 69), betas, tr], 1).detach()  # (1, P)
        kp3d = t["kp3d"][0] if has3d else torch.zeros(17, 3, dtype=dt, device=dev)
        c3 = t["conf3d"][0] if has3d else torch.zeros_like(c2[0])
        data = (t["kp2d"][0], c2[0], t["K"][0], t["box_size"][0], kp3d, c3)
        stages = []
        e = torch.zeros((), dtype=dt, device=dev)
        with torch.no_grad():
            if init is None and o.camera_iters > 0:
                x, e = run_stage(x, data, (0.0, 0.0, 0.0, 0.0, o.sigma2d), TORSO, (i_go, i_tr), o.camera_iters)
                stages.append("camera")
            free = (i_go, i_bp, i_tr) + ((i_be,) if o.optimize_shape else ())
            for s, wts in enumerate(o.body_stages):
                x, e = run_stage(x, data, wts, None, free, o.body_iters)
                stages.append(f"body{s}")
            go, bp, betas, tr = x[:, i_go], x[:, i_bp].reshape(1, 23, 3), x[:, i_be], x[:, i_tr]
            rot = roma.rotvec_to_rotmat(torch.cat([go[:, None], bp], 1))
            kp, _ = kb(rot, betas)
            uv = _project(kp + tr[:, None], t["K"])
            err = torch.linalg.norm(uv - t["kp2d"], dim=-1)
            m = (c2 >= 0.5).to(dt)
            rep = (err * m).sum(1) / m.sum(1).clamp(min=1)
        outs.append((rot, bp, betas, tr, rep, rep / t["box_size"], e[None]))

    def cat(i):
        return torch.cat([q[i] for q in outs]).detach().double().cpu().numpy()

    return FitResult(
        rotmats=cat(0), body_pose_aa=cat(1), betas=cat(2), transl=cat(3), reproj_px=cat(4), reproj_box=cat(5),
        loss=cat(6), seconds=time.perf_counter() - t0, stages=stages)


def meshes_one_by_one(body: BodyModel, rotmats: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (B, V, 3) and joints (B, 24, 3) of ``body`` posed by rotmats (B, 24, 3, 3) and
    betas (B, K), evaluated one person at a time (like :func:`fit_bodies`, so that a person's
    mesh does not depend on the others: a batched evaluation differs in the last bits)."""
    vs, js = [], []
    for k in range(len(rotmats)):
        out = body(torch.tensor(np.ascontiguousarray(rotmats[k:k + 1])), torch.tensor(np.ascontiguousarray(betas[k:k + 1])))
        vs.append(out.vertices.numpy())
        js.append(out.joints.numpy())
    if not vs:
        out = body(torch.as_tensor(rotmats), torch.as_tensor(betas))
        return out.vertices.numpy(), out.joints.numpy()
    return np.concatenate(vs), np.concatenate(js)
