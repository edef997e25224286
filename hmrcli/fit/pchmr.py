"""PC-HMR pose calibration: correct a body mesh with a 3D pose stream.

Implements the calibration module of PC-HMR (Luan, Wang, Zhang et al., "PC-HMR: Pose
Calibration for 3D Human Mesh Recovery from 2D Images/Videos", AAAI 2021, section 3.3,
Eqs. 6-13): a non-rigid per-bone transformation between the mesh's own 3D joints and a
target 3D pose (the "pose stream": BlazePose world landmarks, or any 3D joints), blended
over the vertices.

Units and frames
----------------
Everything is in metres. ``vertices`` / ``joints`` are the mesh and its 24 SMPL-layout joints
in whatever frame the mesh is in (the pipeline's meshes are in the OpenCV camera frame: x
right, y down, z forward); the result is in the same frame. ``target_joints`` is the stream in
the same 24-joint layout (``hmrcli.body.JOINT_NAMES``); :func:`smpl24_from_coco17` and
:func:`smpl24_from_blazepose33` map other joint sets to it.

Step 0 -- rigid alignment of the stream (``align``)
    ``"pelvis"`` (default): the stream is translated so that its pelvis lies on the mesh's
    pelvis (the stream's origin and depth are unknown, e.g. MediaPipe's world landmarks are
    centred between the hips); its orientation is trusted, so the stream must be in the mesh's
    axes (see :func:`mediapipe_world_to_camera`). ``"procrustes"``: in addition the stream is
    rotated about its pelvis by the least-squares (Kabsch) rotation that best aligns its torso
    joints (pelvis, hips, spine, neck, collars, shoulders) to the mesh's; use it for streams in
    another or unknown orientation -- the mesh's global orientation is then kept and only the
    limbs (and the residual torso pose) are calibrated. ``"none"``: the stream is used as
    given (already in the mesh's frame, translation included). When the stream's pelvis is
    missing, the anchor is the confidence-weighted centroid of the joints present in both.

Steps 1-3 -- per bone, Eqs. 6-11
    For a bone from parent joint p to child joint c, with the mesh bone ``b = J_c - J_p`` and
    the stream bone ``b' = J'_c - J'_p``:

    * Eq. 6-7, rotation ``Psi``: the rotation by ``psi = arccos(b.b'/|b||b'|)`` about
      ``(b x b')/|b x b'|`` (Rodrigues' formula), i.e. the smallest rotation turning the
      direction of ``b`` onto that of ``b'``. (The paper writes ``b = J_p - J_c``; negating
      both vectors gives the same rotation.) Computed with ``atan2`` for accuracy; parallel
      bones give the identity, anti-parallel ones a half turn about an axis normal to ``b``.
    * Eq. 8, translation at the parent: ``T = Jhat_p - Psi J_p``.
    * Eq. 9-10, non-rigid term at the child: ``Delta = (Jhat_p + b') - (Psi J_c + T)
      = b' - Psi b``, which, since ``Psi b`` is parallel to ``b'``, is exactly the change of
      bone length along the stream's bone direction.
    * Eq. 11: a point ``x`` of the bone moves to ``Psi x + T + W Delta``, ``W`` in [0, 1]
      (0 at the parent joint, 1 at the child joint). The non-rigid term matters when the
      stream's bone lengths differ from the mesh's (measured: the true pose on another body
      shape as stream, MPJPE 228 mm before, 43 mm after, 93 mm with ``nonrigid=False``).

    How the chain is handled: bones are processed from the root down the SMPL tree, and
    ``Jhat_p`` is where the calibration has already put the parent joint (the child end of
    the parent bone; for the root, the aligned stream's pelvis). With ``twist="parent"``
    (default) the rotation is taken relative to the parent's: ``Psi = R(Psi_parent b -> b')
    Psi_parent``, with ``R(.)`` the Eq. 6-7 rotation, so the part of the rotation that bone
    directions cannot observe (the twist about the bone) is inherited from the parent instead
    of being the world-frame minimum, and children move with their parents. ``twist=
    "minimal"`` is Eq. 6-7 literally, ``Psi = R(b -> b')``; it gives the same bone directions
    and joint positions but a worse surface (measured on the free model, 8 random bodies,
    every joint perturbed by 20 degrees, true joints as stream: vertex error 16.8 mm with
    "parent" vs 23.4 mm with "minimal"; 33 vs 47 mm at 40 degrees).

    For a stream in the mesh's layout with every joint present, Eq. 8-10 here are the
    paper's exactly: by induction ``Jhat_p = J'_p`` (the child end of each calibrated bone
    lands on the stream's joint), so ``T = J'_p - Psi J_p`` and ``Delta = J'_c - (Psi J_c +
    T)``.
    It differs from the paper only where the paper has no answer: when a joint is missing, or
    when the stream's joint positions are not the mesh's joint centres (COCO/BlazePose hips
    and shoulders are surface landmarks, not SMPL's joint centres). There the bones are placed
    by their DIRECTIONS (and lengths) from the already calibrated parent, so the mesh never
    tears at a joint.

    Missing joints (``target_conf == 0``, non-finite coordinates, or a zero-length bone):
    a bone with a missing end is left alone -- it moves rigidly with its parent (``Psi =
    Psi_parent``, ``Delta = 0``) -- and its descendants are still calibrated from the stream
    where their own ends are present. ``bridge_missing=True`` (an extension, off by default)
    instead turns such a segment towards the NEAREST joints the stream has below it (Kabsch,
    or Eq. 6-7 for a single one, of the mesh vectors ``J_d - J_k`` onto the stream's
    ``J'_d - J'_k``, with ``J'_k`` replaced by ``Jhat_k`` when joint ``k`` is missing too;
    rotation only, no non-rigid term). For COCO-17 / BlazePose streams, which have no spine,
    neck or collar joints, this lets the shoulders correct the spine's lean instead of
    leaving the whole torso at the pelvis's rotation (measured as above with COCO-17
    keypoints of the true mesh as stream: MPJPE 195 mm -> 105 mm without, 49 mm with
    bridging). A complete stream gives identical results either way.

Step 4 -- the mesh, Eqs. 12-13
    ``V_j' = sum_i A_ji (Psi_i V_j + T_i + W_ji Delta_i)``.

    The paper learns ``A`` (vertex-to-bone assignment) and ``W`` (how much of the non-rigid
    term a vertex receives); hmrcli has no trained ``A`` / ``W`` and derives them from the
    geometry of the body model:

    * ``A`` is the body model's linear-blend-skinning weights (``body.skinning_weights``,
      rows sum to 1). Column ``k`` of SMPL's weights belongs to the body segment that joint
      ``k`` rotates, i.e. the bone from joint ``k`` to its child, so the "bones" here are
      indexed by their PARENT joint: ``nbones = 24``, bone ``k`` = segment of joint ``k``.
      Three kinds of segment exist in the SMPL tree:

      - one child ``c`` (17 of them): the bone ``k -> c`` with Eqs. 6-11;
      - several children (the pelvis: both hips and spine1; spine3: neck and both collars):
        a segment with three ends has no single direction, so ``Psi`` is the weighted Kabsch
        rotation that best turns the mesh vectors ``J_c - J_k`` onto the stream's (the
        least-squares extension of Eq. 6-7 to several bones; if the ends present are
        collinear, e.g. only the two hips, the Eq. 6-7 rotation of their dominant direction
        composed with the parent's), ``T`` from Eq. 8 and ``Delta = 0`` (no single child);
      - no child in the 24 joints (feet, head, hands): the end segment follows its parent
        bone's transformation at ``W = 1`` (rigidly attached to the child end).

    * ``W`` is each vertex's position along its bone: ``W_jk = clamp(((V_j - J_k) . b) /
      |b|^2, 0, 1)`` -- the parameter of the vertex's orthogonal projection onto the segment
      ``J_k -> J_c`` of the input mesh; 0 for the other kinds of segment. Vertices near the
      child joint thus receive the whole non-rigid term, those near the parent none, and the
      blended transformation is continuous across a joint (both neighbouring segments send
      the joint to the same place). This matches the trained ``A * W`` the paper shows (its
      Fig. 6: highlighted around each bone's child joint).

``iterations > 1`` repeats steps 1-4 on the calibrated mesh, its joints re-estimated from
its vertices (``body.joint_regressor`` plus the input's skeleton-minus-regressed offsets,
turned with their segments); the rotations returned are the composition over the passes.
The default single pass is the paper's and is the recommended setting: with a complete
stream it already puts the mesh's skeleton on the stream, and a regressor re-estimate of
joints is off by the regressor's own error (on the free model, joints regressed from a
posed mesh lie ~18 mm from its skeleton joints), so further passes chase that error
(measured as above: MPJPE 194.8 mm before, 21.7 mm after 1 pass, 30.3 mm after 2;
``benchmarks/pchmr_check.py`` prints these figures).

Everything is batched torch, in the dtype and on the device of ``vertices`` (float64
recommended); nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from hmrcli import geometry as G
from hmrcli.body.model import SMPL_PARENTS
from hmrcli.geometry import rotation_between  # noqa: F401  (part of this module's API: PC-HMR Eqs. 6-7)

__all__ = [
    "BLAZEPOSE_TO_SMPL24",
    "COCO17_TO_SMPL24",
    "TORSO_JOINTS",
    "CalibrationResult",
    "bone_weights",
    "calibrate_mesh",
    "kabsch_rotation",
    "mediapipe_world_to_camera",
    "mpjpe",
    "rotation_between",
    "smpl24_from_blazepose33",
    "smpl24_from_coco17",
]

NUM_JOINTS = 24
# Children of each joint in the SMPL tree.
CHILDREN: tuple[tuple[int, ...], ...] = tuple(
    tuple(c for c in range(NUM_JOINTS) if SMPL_PARENTS[c] == j) for j in range(NUM_JOINTS)
)


def _descendants(k: int) -> tuple[int, ...]:
    out: list[int] = []
    for c in CHILDREN[k]:
        out += [c, *_descendants(c)]
    return tuple(out)


def _between(k: int, d: int) -> tuple[int, ...]:
    """Joints strictly between ancestor k and descendant d."""
    path = []
    x = SMPL_PARENTS[d]
    while x != k:
        path.append(x)
        x = SMPL_PARENTS[x]
    return tuple(path)


DESCENDANTS: tuple[tuple[int, ...], ...] = tuple(_descendants(k) for k in range(NUM_JOINTS))
BETWEEN: tuple[dict[int, tuple[int, ...]], ...] = tuple(
    {d: _between(k, d) for d in DESCENDANTS[k]} for k in range(NUM_JOINTS)
)
# Joints used by align="procrustes": pelvis, hips, spine1-3, neck, collars, shoulders.
TORSO_JOINTS: tuple[int, ...] = (0, 1, 2, 3, 6, 9, 12, 13, 14, 16, 17)

# COCO-17 index -> SMPL-24 index (body points only; the face points have no SMPL joint).
COCO17_TO_SMPL24: dict[int, int] = {
    5: 16, 6: 17, 7: 18, 8: 19, 9: 20, 10: 21, 11: 1, 12: 2, 13: 4, 14: 5, 15: 7, 16: 8,
}
# BlazePose-33 index (or tuple of indices, averaged) -> SMPL-24 index.
BLAZEPOSE_TO_SMPL24: dict[int, tuple[int, ...]] = {
    16: (11,), 17: (12,),          # shoulders
    18: (13,), 19: (14,),          # elbows
    20: (15,), 21: (16,),          # wrists
    22: (17, 19), 23: (18, 20),    # hands: mean of the pinky and index knuckle landmarks
    1: (23,), 2: (24,),            # hips
    4: (25,), 5: (26,),            # knees
    7: (27,), 8: (28,),            # ankles
    10: (31,), 11: (32,),          # feet: foot index (toe) landmarks
}


@dataclass
class CalibrationResult:
    """Output of :func:`calibrate_mesh` (tensors on the input's device/dtype, metres).

    vertices: (B, V, 3) calibrated mesh, same frame as the input;
    joints: (B, 24, 3) joints regressed from the calibrated vertices (``body.joint_regressor``);
    bone_rotations: (B, 24, 3, 3) the rotation ``Psi`` used for each bone, bone ``k`` being
    the body segment of joint ``k`` (from joint ``k`` to its child, see the module docstring);
    used_bones: (B, 24) bool, bones calibrated from the stream (both ends present; for the
    pelvis and spine3, the joint and at least one child present; never for the end segments
    feet, head and hands, which follow their parent);
    skeleton: (B, 24, 3) where the calibration put the input's own ``joints``;
    aligned_target: (B, 24, 3) the stream after the rigid alignment of step 0.
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    bone_rotations: torch.Tensor
    used_bones: torch.Tensor
    skeleton: torch.Tensor
    aligned_target: torch.Tensor


# --------------------------------------------------------------------------------------
# rotations
# --------------------------------------------------------------------------------------
def kabsch_rotation(
    u: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least-squares rotation ``R`` minimising ``sum_k w_k |R u_k - t_k|^2``.

    u, t: (..., K, 3) vectors (not re-centred); w: (..., K) weights >= 0 (None: ones).
    Returns ``(R (..., 3, 3), rank_ok (...))``; ``rank_ok`` is False where the weighted vectors
    do not span two directions (the rotation about their common line is then undetermined
    and ``R`` should not be trusted).
    """
    if w is None:
        w = torch.ones(u.shape[:-1], dtype=u.dtype, device=u.device)
    r = G.best_rotation(u, t, w)
    s = torch.linalg.svdvals(torch.einsum("...k,...ki,...kj->...ij", w, u, t))
    rank_ok = s[..., 1] > 1e-6 * s[..., 0].clamp_min(1e-30)
    return r, rank_ok & (s[..., 0] > 0)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _as_tensor(x, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        t = torch.as_tensor(np.asarray(x))
    if like is not None:
        t = t.to(device=like.device, dtype=like.dtype)
    elif not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def bone_weights(vertices: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
    """``W`` of Eq. 12 derived geometrically: (B, V, 24).

    For each segment ``k`` with a single child ``c``: the parameter of each vertex's
    orthogonal projection onto the segment ``J_k -> J_c`` clamped to [0, 1] (0 at the
    parent joint, 1 at and beyond the child joint). 0 for the other segments (they get no
    non-rigid term).
    """
    b, v = vertices.shape[:2]
    out = torch.zeros(b, v, NUM_JOINTS, dtype=vertices.dtype, device=vertices.device)
    single = [k for k in range(NUM_JOINTS) if len(CHILDREN[k]) == 1]
    if not single:
        return out
    ks = torch.tensor(single, device=vertices.device)
    cs = torch.tensor([CHILDREN[k][0] for k in single], device=vertices.device)
    jp, jc = joints[:, ks], joints[:, cs]  # (B, S, 3)
    bone = jc - jp
    len2 = (bone * bone).sum(-1).clamp_min(1e-12)  # (B, S)
    # ((V - J_p) . b) / |b|^2 = (V . b - J_p . b) / |b|^2
    proj = (torch.einsum("bvi,bsi->bvs", vertices, bone) - (jp * bone).sum(-1)[:, None]) / len2[:, None]
    out[:, :, ks] = proj.clamp(0.0, 1.0)
    return out


def mpjpe(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean per-joint position error (B,) in the inputs' units, over the joints given."""
    return (pred - gt).norm(dim=-1).mean(-1)


def _anchor_offsets(
    joints: torch.Tensor, target: torch.Tensor, conf: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points (B, 3) of mesh and stream: the pelvis where the stream has it, else
    the confidence-weighted centroid of the stream's present joints (mesh: same weights)."""
    w = conf
    wsum = w.sum(-1, keepdim=True).clamp_min(1e-12)
    cm = (w[..., None] * joints).sum(1) / wsum
    ct = (w[..., None] * target).sum(1) / wsum
    has_pelvis = (conf[:, 0] > 0)[:, None]
    am = torch.where(has_pelvis, joints[:, 0], cm)
    at = torch.where(has_pelvis, target[:, 0], ct)
    return am, at


def _align_stream(
    joints: torch.Tensor, target: torch.Tensor, conf: torch.Tensor, align: str
) -> torch.Tensor:
    if align == "none":
        return target
    am, at = _anchor_offsets(joints, target, conf)
    aligned = target - at[:, None] + am[:, None]
    if align == "pelvis":
        return aligned
    # procrustes: rotate the stream about the anchor by the Kabsch rotation over the torso.
    idx = torch.tensor(TORSO_JOINTS, device=joints.device)
    u = target[:, idx] - at[:, None]  # stream vectors (rotate these ...)
    m = joints[:, idx] - am[:, None]  # ... onto the mesh's
    w = conf[:, idx]
    r, ok = kabsch_rotation(u, m, w)
    eye = torch.eye(3, dtype=joints.dtype, device=joints.device).expand_as(r)
    r = torch.where(ok[:, None, None], r, eye)
    return torch.einsum("bij,bkj->bki", r, target - at[:, None]) + am[:, None]


# --------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------
def _calibrate_once(
    a: torch.Tensor,
    vertices: torch.Tensor,
    joints: torch.Tensor,
    target: torch.Tensor,
    present: torch.Tensor,
    conf: torch.Tensor,
    nonrigid: bool,
    max_stretch: float | None,
    twist: str,
    bridge_missing: bool,
    chunk_size: int,
):
    bsz = vertices.shape[0]
    dev, dt = vertices.device, vertices.dtype
    eye = torch.eye(3, dtype=dt, device=dev).expand(bsz, 3, 3)
    zeros3 = torch.zeros(bsz, 3, dtype=dt, device=dev)
    psi: list[torch.Tensor] = [eye] * NUM_JOINTS
    trans: list[torch.Tensor] = [zeros3] * NUM_JOINTS
    delta: list[torch.Tensor] = [zeros3] * NUM_JOINTS
    jhat: list[torch.Tensor] = [joints[:, k] for k in range(NUM_JOINTS)]
    used = torch.zeros(bsz, NUM_JOINTS, dtype=torch.bool, device=dev)

    # The root's calibrated position: the (aligned) stream's pelvis when present.
    jhat[0] = torch.where(present[:, 0, None], target[:, 0], joints[:, 0])

    bi = torch.arange(bsz, device=dev)

    def fit_ends(k: int, ends: list[int], w: torch.Tensor, anchor_t: torch.Tensor, psi_par: torch.Tensor):
        """Rotation turning the mesh vectors J_e - J_k onto the stream's e - anchor_t
        (weights w (B, E)): Kabsch when they span two directions, else Eq. 6-7 on the
        dominant one (composed with the parent's rotation for twist="parent")."""
        e = torch.tensor(ends, device=dev)
        u = joints[:, e] - joints[:, k, None]
        t = target[:, e] - anchor_t[:, None]
        r_k, full = kabsch_rotation(u, t, w)
        i_dom = w.argmax(-1)
        if twist == "parent":
            r_dir = rotation_between((psi_par @ u[bi, i_dom, :, None])[..., 0], t[bi, i_dom]) @ psi_par
        else:
            r_dir = rotation_between(u[bi, i_dom], t[bi, i_dom])
        return torch.where(full[:, None, None], r_k, r_dir), (w > 0).any(-1)

    for k in range(NUM_JOINTS):  # SMPL_PARENTS is topologically ordered (parent < child)
        p = SMPL_PARENTS[k]
        psi_par = eye if p < 0 else psi[p]
        kids = CHILDREN[k]
        d_k = zeros3
        if len(kids) == 1:
            c = kids[0]
            b_mesh = joints[:, c] - joints[:, k]
            b_tgt = target[:, c] - target[:, k]
            ok = present[:, k] & present[:, c]
            ok = ok & (b_mesh.norm(dim=-1) > 1e-6) & (b_tgt.norm(dim=-1) > 1e-6)  # degenerate bones
            if max_stretch is not None:
                lm = b_mesh.norm(dim=-1, keepdim=True)
                lt = b_tgt.norm(dim=-1, keepdim=True)
                lt_c = lt.clamp(lm * (1 - max_stretch), lm * (1 + max_stretch))
                b_tgt = b_tgt * (lt_c / lt.clamp_min(1e-12))
            # Eq. 6-7 relative to the parent's rotation (see the module docstring).
            if twist == "parent":
                r = rotation_between((psi_par @ b_mesh[..., None])[..., 0], b_tgt) @ psi_par
            else:  # "minimal": the paper's Eq. 6-7 between the two bones as given
                r = rotation_between(b_mesh, b_tgt)
            psi_k = torch.where(ok[:, None, None], r, psi_par)
            if nonrigid:
                # Eq. 9-10: Delta = (Jhat_k + b') - (Psi J_c + T) = b' - Psi b.
                d_k = b_tgt - (psi_k @ b_mesh[..., None])[..., 0]
                d_k = torch.where(ok[:, None], d_k, torch.zeros_like(d_k))
        elif len(kids) > 1:
            w = conf[:, list(kids)] * present[:, list(kids)]
            r, any_end = fit_ends(k, list(kids), w, target[:, k], psi_par)
            ok = present[:, k] & any_end
            psi_k = torch.where(ok[:, None, None], r, psi_par)
        else:  # end segment: follows its parent bone at W = 1
            ok = torch.zeros(bsz, dtype=torch.bool, device=dev)
            psi_k = psi_par
        if bridge_missing and DESCENDANTS[k]:
            # Turn a segment the stream cannot calibrate by itself towards the nearest joints
            # the stream has below it, pivoting at the stream's joint k or, if missing, at
            # where the chain put it.
            desc = list(DESCENDANTS[k])
            nearest = torch.stack(
                [present[:, d] & ~present[:, list(BETWEEN[k][d])].any(-1) if BETWEEN[k][d] else present[:, d]
                 for d in desc], -1)
            w = conf[:, desc] * nearest
            anchor_t = torch.where(present[:, k, None], target[:, k], jhat[k])
            r, any_end = fit_ends(k, desc, w, anchor_t, psi_par)
            bridged = ~ok & any_end
            psi_k = torch.where(bridged[:, None, None], r, psi_k)
        t_k = jhat[k] - (psi_k @ joints[:, k, :, None])[..., 0]  # Eq. 8
        for c in kids:
            jhat[c] = (psi_k @ joints[:, c, :, None])[..., 0] + t_k + d_k
        psi[k], trans[k], delta[k] = psi_k, t_k, d_k
        used[:, k] = ok

    psi_t = torch.stack(psi, 1)  # (B, 24, 3, 3)
    trans_t = torch.stack(trans, 1)  # (B, 24, 3)
    delta_t = torch.stack(delta, 1)  # (B, 24, 3)
    skeleton = torch.stack(jhat, 1)

    # Eqs. 12-13, in batch chunks: V' = (sum_i A_i Psi_i) V + sum_i A_i T_i + sum_i A_i W_i Delta_i.
    out = []
    for s in range(0, bsz, chunk_size):
        e = min(bsz, s + chunk_size)
        v = vertices[s:e]
        w = bone_weights(v, joints[s:e])  # (b, V, 24)
        m = torch.einsum("vk,bkij->bvij", a, psi_t[s:e])
        vv = (m @ v[..., None])[..., 0]
        vv = vv + torch.einsum("vk,bki->bvi", a, trans_t[s:e])
        vv = vv + torch.einsum("vk,bvk,bki->bvi", a, w, delta_t[s:e])
        out.append(vv)
    new_v = torch.cat(out) if len(out) > 1 else out[0]
    return new_v, psi_t, used, skeleton


def calibrate_mesh(
    body,
    vertices: torch.Tensor,
    joints: torch.Tensor,
    target_joints: torch.Tensor,
    target_conf: torch.Tensor | None = None,
    *,
    align: Literal["pelvis", "procrustes", "none"] = "pelvis",
    iterations: int = 1,
    nonrigid: bool = True,
    max_stretch: float | None = None,
    twist: Literal["parent", "minimal"] = "parent",
    bridge_missing: bool = False,
    min_conf: float = 0.0,
    chunk_size: int = 64,
) -> CalibrationResult:
    """Calibrate meshes with a 3D pose stream (PC-HMR Eqs. 6-13; see the module docstring).

    body: the :class:`hmrcli.body.BodyModel` the mesh comes from (for its skinning weights,
    the ``A`` of Eq. 13, and its joint regressor).
    vertices: (B, V, 3) meshes, metres; joints: (B, 24, 3) their own SMPL-layout joints;
    target_joints: (B, 24, 3) the stream in the same layout; target_conf: (B, 24) in [0, 1],
    0 = joint missing (None: all present; non-finite stream joints count as missing).
    align: rigid alignment of the stream first (``"pelvis"``, ``"procrustes"``, ``"none"``).
    iterations: passes (1 recommended; see the module docstring).
    min_conf: joints with ``target_conf <= min_conf`` are missing; above it the confidence
    only weights the Kabsch fits (pelvis, spine3, ``align="procrustes"``, bridging).
    twist: ``"parent"`` (default) or ``"minimal"`` (Eq. 6-7 in the world frame), see above.
    bridge_missing: turn bones with a missing end towards the nearest present descendants
    (off by default: such bones are left alone), see the module docstring.
    nonrigid: False drops the non-rigid term (the paper's "w/o Non-Rigid" ablation: bones
    keep the mesh's lengths). max_stretch: if set, the stream's bone lengths are clamped to
    ``(1 +- max_stretch)`` times the mesh's before the non-rigid term (guards against
    implausible stream bone lengths); None (default) follows the paper.
    chunk_size: batch chunk for the vertex blending (memory ~ chunk * V * 9 numbers).
    """
    if align not in ("pelvis", "procrustes", "none"):
        raise ValueError(f"align must be 'pelvis', 'procrustes' or 'none'; got {align!r}")
    if twist not in ("parent", "minimal"):
        raise ValueError(f"twist must be 'parent' or 'minimal'; got {twist!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1; got {iterations}")
    vertices = _as_tensor(vertices)
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be (B, V, 3); got {tuple(vertices.shape)}")
    bsz = vertices.shape[0]
    joints = _as_tensor(joints, vertices)
    target = _as_tensor(target_joints, vertices)
    for name, x in (("joints", joints), ("target_joints", target)):
        if x.shape != (bsz, NUM_JOINTS, 3):
            raise ValueError(f"{name} must be (B, 24, 3) with B = {bsz}; got {tuple(x.shape)}")
    if target_conf is None:
        conf = torch.ones(bsz, NUM_JOINTS, dtype=vertices.dtype, device=vertices.device)
    else:
        conf = _as_tensor(target_conf, vertices)
        if conf.shape != (bsz, NUM_JOINTS):
            raise ValueError(f"target_conf must be (B, 24) with B = {bsz}; got {tuple(conf.shape)}")
    finite = torch.isfinite(target).all(-1)
    conf = torch.where(finite & torch.isfinite(conf), conf.clamp(0.0, 1.0), torch.zeros_like(conf))
    target = torch.where(finite[..., None], target, torch.zeros_like(target))
    conf = torch.where(conf > min_conf, conf, torch.zeros_like(conf))
    present = conf > 0

    # A (Eq. 13): the skinning weights, rows renormalised to sum to exactly 1 (the stored
    # weights are float32-rounded), so that identity transforms leave the mesh unchanged.
    a_np = np.clip(np.asarray(body.skinning_weights, dtype=np.float64), 0.0, None)
    a_np = a_np / np.clip(a_np.sum(1, keepdims=True), 1e-12, None)
    a = torch.as_tensor(a_np, device=vertices.device, dtype=vertices.dtype)
    if a.shape != (vertices.shape[1], NUM_JOINTS):
        raise ValueError(
            f"the body model has {a.shape[0]} vertices and {a.shape[1]} joints; the mesh has "
            f"{vertices.shape[1]} vertices (calibrate with the model the mesh comes from)"
        )
    jreg = torch.as_tensor(np.asarray(body.joint_regressor), device=vertices.device, dtype=vertices.dtype)

    aligned = _align_stream(joints, target, conf, align)
    aligned = torch.where(present[..., None], aligned, torch.zeros_like(aligned))
    v, j = vertices, joints
    offset = joints - torch.einsum("jv,bvi->bji", jreg, vertices)
    psi_total = None
    for it in range(iterations):
        v, psi, used, skeleton = _calibrate_once(
            a, v, j, aligned, present, conf, nonrigid, max_stretch, twist, bridge_missing, chunk_size
        )
        psi_total = psi if psi_total is None else psi @ psi_total
        if it + 1 < iterations:
            # The calibrated mesh's own joints, re-estimated from its vertices: regressed
            # joints plus the input's skeleton-minus-regressed offsets, turned with each
            # joint's segment.
            j = torch.einsum("jv,bvi->bji", jreg, v) + (psi_total @ offset[..., None])[..., 0]
    psi = psi_total
    return CalibrationResult(
        vertices=v,
        joints=torch.einsum("jv,bvi->bji", jreg, v),
        bone_rotations=psi,
        used_bones=used,
        skeleton=skeleton,
        aligned_target=aligned,
    )


# --------------------------------------------------------------------------------------
# other joint sets -> the 24-joint layout
# --------------------------------------------------------------------------------------
def smpl24_from_coco17(
    kp3d: torch.Tensor, conf: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D COCO-17 keypoints (B, 17, 3) and confidences (B, 17) -> SMPL-24 joints (B, 24, 3)
    and confidences (B, 24).

    Shoulders -> 16/17, elbows -> 18/19, wrists -> 20/21, hips -> 1/2, knees -> 4/5,
    ankles -> 7/8; the pelvis (0) is the midpoint of the hips (confidence: the smaller of
    the two). All other joints (spine, neck, collars, head, feet, hands) get confidence 0.
    COCO's hips and shoulders are surface landmarks, not SMPL's joint centres (SMPL's hips
    sit deeper and higher in the pelvis), which is why the calibration is driven by bone
    DIRECTIONS placed from the already calibrated parent rather than by these positions.
    """
    kp3d = _as_tensor(kp3d)
    if kp3d.dim() != 3 or kp3d.shape[1:] != (17, 3):
        raise ValueError(f"kp3d must be (B, 17, 3); got {tuple(kp3d.shape)}")
    bsz = kp3d.shape[0]
    c = torch.ones(bsz, 17, dtype=kp3d.dtype, device=kp3d.device) if conf is None else _as_tensor(conf, kp3d)
    out = torch.zeros(bsz, NUM_JOINTS, 3, dtype=kp3d.dtype, device=kp3d.device)
    oc = torch.zeros(bsz, NUM_JOINTS, dtype=kp3d.dtype, device=kp3d.device)
    for ci, si in COCO17_TO_SMPL24.items():
        out[:, si] = kp3d[:, ci]
        oc[:, si] = c[:, ci]
    out[:, 0] = 0.5 * (kp3d[:, 11] + kp3d[:, 12])
    oc[:, 0] = torch.minimum(c[:, 11], c[:, 12])
    return _finite(out, oc)


def _finite(j: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ok = torch.isfinite(j).all(-1) & torch.isfinite(c)
    j = torch.where(ok[..., None], j, torch.zeros_like(j))
    return j, torch.where(ok, c.clamp(0, 1), torch.zeros_like(c))


def mediapipe_world_to_camera(world, convention: Literal["opencv", "opengl"] = "opencv"):
    """MediaPipe/BlazePose world landmarks (..., 3) -> camera-aligned axes.

    MediaPipe's world landmarks are metres with the origin between the hips, x to the image's
    right, y DOWN, and z the depth, "the smaller the value the closer the world landmark is to
    the camera" (MediaPipe Tasks ``Landmark`` reference) -- z points away from the camera.
    That is OpenCV's camera axes (x right, y down, z forward; right-handed), the frame of the
    pipeline's meshes, so ``"opencv"`` returns the coordinates unchanged (only the origin
    differs, which :func:`calibrate_mesh`'s pelvis alignment removes). ``"opengl"`` (x right,
    y up, z towards the viewer) negates y and z. Numpy in, numpy out.
    """
    if convention == "opencv":
        return world.clone() if isinstance(world, torch.Tensor) else np.array(world, dtype=np.float64)
    if convention == "opengl":
        flip = [1.0, -1.0, -1.0]
        if isinstance(world, torch.Tensor):
            return world * torch.tensor(flip, dtype=world.dtype, device=world.device)
        return np.asarray(world, dtype=np.float64) * np.array(flip)
    raise ValueError(f"convention must be 'opencv' or 'opengl'; got {convention!r}")


def smpl24_from_blazepose33(
    world: torch.Tensor, visibility: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BlazePose world landmarks (B, 33, 3) and visibilities (B, 33) -> SMPL-24 joints
    (B, 24, 3) and confidences (B, 24), in the camera axes (:func:`mediapipe_world_to_camera`,
    ``"opencv"``: MediaPipe's world axes already are x right, y down, z away from the camera).

    Map (BlazePose index -> SMPL joint): 11/12 shoulders -> 16/17, 13/14 elbows -> 18/19,
    15/16 wrists -> 20/21, mean of 17+19 / 18+20 (pinky and index) -> hands 22/23,
    23/24 hips -> 1/2, 25/26 knees -> 4/5, 27/28 ankles -> 7/8, 31/32 foot index -> feet
    10/11; pelvis 0 = midpoint of the hips. The nose (0) and face points are not used: no SMPL
    joint is at the nose, and the neck/head bone has no stream end at the neck. Confidence of
    an averaged joint: the smallest visibility of its landmarks; non-finite landmarks count
    as missing. As with COCO, BlazePose's hips and shoulders are surface landmarks, not SMPL's
    joint centres.
    """
    world = _as_tensor(world)
    if world.dim() != 3 or world.shape[1:] != (33, 3):
        raise ValueError(f"world must be (B, 33, 3); got {tuple(world.shape)}")
    world = mediapipe_world_to_camera(world, "opencv")
    bsz = world.shape[0]
    vis = (torch.ones(bsz, 33, dtype=world.dtype, device=world.device) if visibility is None
           else _as_tensor(visibility, world))
    vis = torch.where(torch.isfinite(world).all(-1), vis, torch.zeros_like(vis))
    out = torch.zeros(bsz, NUM_JOINTS, 3, dtype=world.dtype, device=world.device)
    oc = torch.zeros(bsz, NUM_JOINTS, dtype=world.dtype, device=world.device)
    for si, idx in BLAZEPOSE_TO_SMPL24.items():
        i = list(idx)
        out[:, si] = world[:, i].mean(1)
        oc[:, si] = vis[:, i].amin(1)
    out[:, 0] = 0.5 * (world[:, 23] + world[:, 24])
    oc[:, 0] = torch.minimum(vis[:, 23], vis[:, 24])
    return _finite(out, oc)

