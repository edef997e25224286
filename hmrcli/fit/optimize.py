"""Batched SMPLify-style fitting of body pose, shape and full-image camera translation.

Objective per person (the persons of a batch are optimised together but independently):

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

Each stage is a batched Levenberg-Marquardt: the energy is a sum of squared residuals (the
robust terms as r * sqrt(rho(r^2)) / |r|), the Jacobian of every person's residual vector
comes from ``torch.func`` (vmap over persons of jacfwd), each person solves its own damped
normal equations and keeps or rejects its step with its own damping -- persons never
interact, unlike a quasi-Newton method on the summed energy. Only the COCO keypoints are
needed, so the body model is evaluated through :class:`KeypointBody` (its skinning
collapsed exactly onto the keypoints), which makes an evaluation cost microseconds per
person instead of a full mesh skinning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from hmrcli import geometry as G
from hmrcli.body import BodyModel
from hmrcli.fit.priors import BENDS, JOINT_LIMITS, POSE_MEAN

__all__ = ["KeypointBody", "FitTargets", "FitInit", "FitOptions", "FitResult", "fit_bodies", "TORSO", "kabsch"]

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
        from smplx.lbs import batch_rigid_transform

        self._brt = batch_rigid_transform
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

    def __call__(self, rotmats: torch.Tensor, betas: torch.Tensor,
                 correctives_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """rotmats (B, 24, 3, 3), betas (B, K) -> keypoints (B, 17, 3), joints (B, 24, 3).

        ``correctives_grad=False`` evaluates the same values but treats the pose-corrective
        offsets as constants for differentiation (the fitting Jacobian: 85 tangent
        directions through the 207 corrective directions dominate the cost, and the
        correctives move keypoints by millimetres)."""
        b = rotmats.shape[0]
        j = self.j_t + torch.einsum("jck,bk->bjc", self.j_sd, betas)
        eye = torch.eye(3, device=rotmats.device, dtype=rotmats.dtype)
        feat = (rotmats[:, 1:] - eye).reshape(b, -1)
        if not correctives_grad:
            feat = feat.detach()
        m = self.m0 + torch.einsum("kjcq,bq->bkjc", self.msd, betas)
        if self.mpd is not None:
            m = m + torch.einsum("kjcp,bp->bkjc", self.mpd, feat)
        jp, a = self._brt(rotmats, j, self.parents, dtype=rotmats.dtype)
        kp = torch.einsum("bjmn,bkjn->bkm", a[..., :3, :3], m) + torch.einsum("bjm,kj->bkm", a[..., :3, 3], self.c)
        kp = kp + torch.einsum("kj,bjc->bkc", self.kj, jp)
        return kp, jp


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


def fit_bodies(body: BodyModel | KeypointBody, targets: FitTargets, init: FitInit | None = None,
               options: FitOptions | None = None, device: str | torch.device = "cpu") -> FitResult:
    """Fit B bodies to their landmarks (see the module docstring). Runs on ``device``."""
    import roma

    t0 = time.perf_counter()
    o = options or FitOptions()
    kb = body if isinstance(body, KeypointBody) else KeypointBody(body, device=device)
    dt, dev = kb.dtype, kb.device

    def T(x):
        return None if x is None else torch.as_tensor(np.asarray(x), dtype=dt, device=dev)

    t = {"kp2d": T(targets.kp2d), "conf2d": T(targets.conf2d), "K": T(targets.K), "box_size": T(targets.box_size),
         "kp3d": T(targets.kp3d), "conf3d": T(targets.conf3d)}
    b = t["kp2d"].shape[0]
    if b == 0:
        z = np.zeros((0,))
        return FitResult(np.zeros((0, 24, 3, 3)), np.zeros((0, 23, 3)), np.zeros((0, kb.num_betas)), np.zeros((0, 3)),
                         z, z, z, 0.0)
    if t["kp3d"] is not None and t["conf3d"] is None:
        t["conf3d"] = t["conf2d"].clone()
    c2 = t["conf2d"]
    vis = c2 > 0
    lo = torch.where(vis[..., None], t["kp2d"], torch.full_like(t["kp2d"], float("inf"))).amin(1)
    hi = torch.where(vis[..., None], t["kp2d"], torch.full_like(t["kp2d"], -float("inf"))).amax(1)
    t["center"] = torch.where(torch.isfinite(lo).all(1, keepdim=True), 0.5 * (lo + hi), t["K"][:, :2, 2])

    if init is None:
        r0, tr = _initialise(kb, t)
        go = roma.rotmat_to_rotvec(r0)
        bp = torch.as_tensor(POSE_MEAN, dtype=dt, device=dev).expand(b, 23, 3).clone()
        if t["kp3d"] is not None:
            eye = torch.eye(3, dtype=dt, device=dev).expand(b, 24, 3, 3).clone()
            rest, _ = kb(eye, torch.zeros(b, kb.num_betas, dtype=dt, device=dev))
            bp = roma.rotmat_to_rotvec(swing_init(rest, r0, t["kp3d"], t["conf3d"], roma.rotvec_to_rotmat(bp)))
        betas = torch.zeros(b, kb.num_betas, dtype=dt, device=dev)
    else:
        aa = roma.rotmat_to_rotvec(T(init.rotmats))
        go, bp = aa[:, 0], aa[:, 1:]
        betas = T(init.betas)[:, : kb.num_betas]
        if betas.shape[1] < kb.num_betas:
            betas = torch.nn.functional.pad(betas, (0, kb.num_betas - betas.shape[1]))
        tr = T(init.transl)
    nb = kb.num_betas
    x = torch.cat([go, bp.reshape(b, 69), betas, tr], 1).detach()  # (B, P)
    P = x.shape[1]
    i_go, i_bp, i_be, i_tr = slice(0, 3), slice(3, 72), slice(72, 72 + nb), slice(72 + nb, 75 + nb)
    has3d = t["kp3d"] is not None
    kp3d = t["kp3d"] if has3d else torch.zeros_like(t["kp2d"][..., :1]).expand(b, 17, 3)
    c3 = t["conf3d"] if has3d else torch.zeros_like(c2)
    lim = torch.as_tensor(JOINT_LIMITS, dtype=dt, device=dev)
    mean = torch.as_tensor(POSE_MEAN, dtype=dt, device=dev).reshape(-1)
    bends = [(3 * (j - 1) + c, sgn) for j, c, sgn in BENDS]
    if o.pose_prior == "gmm":
        from hmrcli.body.pose_prior import GMMPosePrior

        gmm = GMMPosePrior.load()  # tensors follow the inputs (device, dtype)
        def prior_res(th):
            return o.gmm_scale ** 0.5 * gmm.residuals(th)
    elif o.pose_prior == "relaxed":
        def prior_res(th):
            return th - mean
    else:
        raise ValueError(f"unknown pose prior {o.pose_prior!r}: use relaxed or gmm")

    def residuals(xi, kp2, cf2, Ki, box, k3, cf3, wts, jmask):
        """Residual vector of ONE person (vmapped); its squared norm is the energy."""
        wp, wl, wb, ws = wts[0], wts[1], wts[2], wts[3]
        aa = torch.cat([xi[i_go], xi[i_bp]]).reshape(24, 3)
        rot = roma.rotvec_to_rotmat(aa)
        kp, _ = kb(rot[None], xi[i_be][None], correctives_grad=False)
        kp = kp[0]
        pc = kp + xi[i_tr]
        uv = pc[:, :2] / pc[:, 2:].clamp(min=1e-2) * torch.stack([Ki[0, 0], Ki[1, 1]]) + Ki[:2, 2]
        r2 = (uv - kp2) / box
        n2 = (r2 ** 2).sum(-1, keepdim=True)
        s2 = wts[4] ** 2
        # while the robust scale is wide, only confident landmarks pull (BlazePose places cut-off
        # limbs inside the picture with middling visibility; they join once outliers are cheap)
        sure = (cf2 >= o.wide_min_conf) | (wts[4] <= o.sigma2d)
        res2 = (o.w2d ** 0.5) * (cf2 * jmask * sure)[:, None] * r2 * torch.sqrt(s2 / (s2 + n2))
        d = (kp - 0.5 * (kp[_LHIP] + kp[_RHIP])) - (k3 - 0.5 * (k3[_LHIP] + k3[_RHIP]))
        n3 = (d ** 2).sum(-1, keepdim=True)
        s3 = (wts[4] * o.sigma3d / o.sigma2d) ** 2
        res3 = (o.w3d ** 0.5) * (cf3 * jmask * sure)[:, None] * d * torch.sqrt(s3 / (s3 + n3))
        # keep every keypoint in front of the camera (the robust 2D term saturates, so
        # without this a body behind the camera could look cheap)
        front = 10.0 * torch.relu(o.min_depth - pc[:, 2])
        th = xi[i_bp].reshape(23, 3)
        ex = torch.relu(lim[..., 0] - th) + torch.relu(th - lim[..., 1])
        th_f = xi[i_bp]
        rb = torch.stack([torch.exp(sgn * th_f[k]) for k, sgn in bends])
        return torch.cat([res2.reshape(-1), res3.reshape(-1), front, wp.sqrt() * prior_res(th_f), wl.sqrt() * ex.reshape(-1),
                          wb.sqrt() * rb, ws.sqrt() * xi[i_be]])

    from torch.func import jacfwd, vmap

    res_b = vmap(residuals)
    jac_b = vmap(jacfwd(residuals))
    data = (t["kp2d"], c2, t["K"], t["box_size"], kp3d, c3)

    def run_stage(x, weights, joints, free, iters):
        w = torch.as_tensor(weights, dtype=dt, device=dev).expand(b, 5)
        jm = torch.zeros(17, dtype=dt, device=dev)
        jm[list(range(17)) if joints is None else list(joints)] = 1.0
        jm = jm.expand(b, 17)
        fm = torch.zeros(P, dtype=torch.bool, device=dev)
        for sl in free:
            fm[sl] = True
        lam = torch.full((b,), 1e-3, dtype=dt, device=dev)
        r = res_b(x, *data, w, jm)
        e = (r ** 2).sum(1)
        for _ in range(iters):
            jac = jac_b(x, *data, w, jm).to(dt) * fm.to(dt)
            g = torch.einsum("brp,br->bp", jac, r)
            h = torch.einsum("brp,brq->bpq", jac, jac)
            dg = torch.diagonal(h, dim1=1, dim2=2)
            ha = h + torch.diag_embed(lam[:, None] * (dg + 1e-8) + (~fm) * 1.0)
            step = -torch.linalg.solve(ha, g[..., None])[..., 0] * fm
            xn = x + step
            rn = res_b(xn, *data, w, jm)
            en = (rn ** 2).sum(1)
            ok = torch.isfinite(en) & (en < e)
            x = torch.where(ok[:, None], xn, x)
            r = torch.where(ok[:, None], rn, r)
            e = torch.where(ok, en, e)
            lam = torch.where(ok, lam * 0.3, lam * 8.0).clamp(1e-7, 1e7)
        return x, e

    stages = []
    e = torch.zeros(b, dtype=dt, device=dev)
    with torch.no_grad():
        if init is None and o.camera_iters > 0:
            x, e = run_stage(x, (0.0, 0.0, 0.0, 0.0, o.sigma2d), TORSO, (i_go, i_tr), o.camera_iters)
            stages.append("camera")
        free = (i_go, i_bp, i_tr) + ((i_be,) if o.optimize_shape else ())
        for k, wts in enumerate(o.body_stages):
            x, e = run_stage(x, wts, None, free, o.body_iters)
            stages.append(f"body{k}")
        go, bp, betas, tr = x[:, i_go], x[:, i_bp].reshape(b, 23, 3), x[:, i_be], x[:, i_tr]
        loss = e
        rot = roma.rotvec_to_rotmat(torch.cat([go[:, None], bp], 1))
        kp, _ = kb(rot, betas)
        uv = _project(kp + tr[:, None], t["K"])
        err = torch.linalg.norm(uv - t["kp2d"], dim=-1)
        m = (c2 >= 0.5).to(dt)
        rep = (err * m).sum(1) / m.sum(1).clamp(min=1)
    return FitResult(
        rotmats=rot.double().cpu().numpy(),
        body_pose_aa=bp.detach().double().cpu().numpy(),
        betas=betas.detach().double().cpu().numpy(),
        transl=tr.detach().double().cpu().numpy(),
        reproj_px=rep.double().cpu().numpy(),
        reproj_box=(rep / t["box_size"]).double().cpu().numpy(),
        loss=loss.double().cpu().numpy(),
        seconds=time.perf_counter() - t0,
        stages=stages,
    )
