"""Skinned, posed body as binary glTF 2.0 (``.glb``) for Blender and other DCC tools.

What the file holds (one person):

* a skeleton of 24 joint nodes named and parented like SMPL (``hmrcli.body.JOINT_NAMES``,
  ``SMPL_PARENTS``); each node's rotation is the estimated joint rotation (a unit
  quaternion), so the file opens in the estimated pose and can be re-posed;
* one skinned mesh: the *rest* body (shaped with the person's betas, rest pose) with
  ``JOINTS_0``/``WEIGHTS_0`` = the body model's four largest skinning weights per vertex,
  renormalised to sum to 1, and the skin's inverse bind matrices;
* optionally the camera as a glTF perspective camera.

Axes. glTF is +Y up; hmrcli's cameras are OpenCV's (x right, y down, z forward). The GLB's
scene coordinates are the chosen mesh frame (the same frame as the OBJ/PLY files, see the
camera JSON's ``"mesh"`` block) rotated 180 degrees about x: ``X_glb = diag(1, -1, -1) X_file``.
With the camera frame the scene is then glTF's own camera frame: the camera sits at the
origin with the identity rotation (glTF cameras look down -Z with +Y up) and the body
stands upright in front of it. With the model frame the body's pelvis is near the origin and
the camera sits at ``diag(1, -1, -1) (-t)``. The rest pose (all joint rotations cleared)
is the upright body facing the camera, placed at the posed pelvis; the inverse bind matrices
are the inverses of the joints' rest transforms, so importers need not guess a bind pose.

Limits. Plain linear blend skinning cannot express pose-corrective blend shapes (SMPL's
``posedirs``): the GLB's posed surface differs from the body model's by those correctives
(up to a few centimetres at bent elbows and knees for SMPL; the free model has none) and by
the weights dropped beyond the fourth influence. The glTF camera has a vertical field of view
and an aspect ratio only: it assumes square pixels and the principal point at the image
centre (the exact K is in the node's ``extras`` and in the camera JSON).

Units: metres.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pygltflib as g
import torch

__all__ = ["GLTF_FROM_OPENCV", "skinned_glb_bytes", "top_k_weights"]

#: Rotation from an OpenCV-style frame (y down, z forward) to glTF's (+y up, -z forward).
GLTF_FROM_OPENCV = np.diag([1.0, -1.0, -1.0])


def top_k_weights(weights: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest influences per vertex: joint indices (V, k) and weights (V, k)
    renormalised to sum to 1; unused slots hold joint 0 with weight 0."""
    w = np.asarray(weights, dtype=np.float64)
    idx = np.argsort(-w, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(w, idx, axis=1)
    top[top < 1e-7] = 0.0
    s = top.sum(axis=1, keepdims=True)
    if np.any(s <= 0):
        raise ValueError("a vertex has no skinning weight")
    top = top / s
    idx = np.where(top > 0, idx, 0)
    return idx, top


def _quat_xyzw(R: np.ndarray) -> np.ndarray:
    """Unit quaternions (x, y, z, w) of rotation matrices (..., 3, 3), w >= 0."""
    import roma  # start-up: roma imports torch._dynamo (~3 s); hmrcli export of obj/ply needs no roma

    q = roma.rotmat_to_unitquat(torch.as_tensor(np.asarray(R, dtype=np.float64))).numpy()
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:4] < 0, -q, q)


def _as_rotations(rotmats: np.ndarray) -> np.ndarray:
    """Project (possibly slightly non-orthonormal) matrices onto the nearest rotations."""
    import roma  # start-up: roma imports torch._dynamo (~3 s); hmrcli export of obj/ply needs no roma

    return roma.special_procrustes(torch.as_tensor(np.asarray(rotmats, dtype=np.float64))).numpy()


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (float32); viewers shade flat without them."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(norm > 1e-12, n / np.maximum(norm, 1e-12), np.array([0.0, 0.0, 1.0]))
    return n.astype(np.float32)


class _Blob:
    """Accumulates buffer views/accessors into one binary buffer (4-byte aligned)."""

    def __init__(self, gltf: Any) -> None:
        self.gltf = gltf
        self.data = bytearray()

    def add(self, array: np.ndarray, component: int, type_: str, target: int | None = None,
            minmax: bool = False, normalized: bool = False) -> int:
        raw = np.ascontiguousarray(array).tobytes()
        while len(self.data) % 4:
            self.data.append(0)
        view = g.BufferView(buffer=0, byteOffset=len(self.data), byteLength=len(raw))
        if target is not None:
            view.target = target
        self.data += raw
        self.gltf.bufferViews.append(view)
        acc = g.Accessor(bufferView=len(self.gltf.bufferViews) - 1, componentType=component,
                         count=int(array.shape[0]), type=type_)
        if normalized:
            acc.normalized = True
        if minmax:
            flat = np.asarray(array).reshape(array.shape[0], -1)
            acc.min = [float(x) for x in flat.min(axis=0)]
            acc.max = [float(x) for x in flat.max(axis=0)]
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1


class _Skinned:
    """A skinned body's glTF document before it is encoded: the document, its binary data,
    the 24 joint nodes (SMPL order) and the shaped rest joints ``J`` (24, 3) in the body
    model's frame, so that callers (the animated GLB) can add to it."""

    def __init__(self, gltf: Any, blob: _Blob, joint_nodes: list[int], J: np.ndarray) -> None:
        self.gltf, self.blob, self.joint_nodes, self.J = gltf, blob, joint_nodes, J

    def to_bytes(self) -> bytes:
        self.gltf.buffers = [g.Buffer(byteLength=len(self.blob.data))]
        self.gltf.set_binary_blob(bytes(self.blob.data))
        out = self.gltf.save_to_bytes()
        return b"".join(out) if isinstance(out, list) else bytes(out)


def shaped_betas(body: Any, betas: np.ndarray | None) -> np.ndarray:
    """``betas`` padded with zeros to the body model's ``num_betas`` (float64); zeros for None."""
    nb = body.num_betas
    b = np.zeros(nb)
    if betas is not None:
        betas = np.asarray(betas, dtype=np.float64).reshape(-1)
        if betas.shape[0] > nb:
            raise ValueError(f"betas has {betas.shape[0]} values; the body model takes at most {nb}")
        b[: betas.shape[0]] = betas
    return b


def skinned_glb_bytes(
    body: Any,
    rotmats: np.ndarray,
    betas: np.ndarray | None,
    transl: np.ndarray | None = None,
    camera: dict[str, Any] | None = None,
    name: str = "person",
    extras: dict[str, Any] | None = None,
) -> bytes:
    """Encode one posed, skinned body as GLB bytes.

    body: a :class:`hmrcli.body.BodyModel`; rotmats (24, 3, 3) joint rotations (joint 0 the
    global orientation); betas (<= num_betas,) or None for the mean shape; transl (3,) added
    to the posed body in its frame (the camera translation for the camera frame, None/zeros
    for the model frame). camera: ``{"K": (3, 3), "width": W, "height": H, "position": (3,)}``
    with ``position`` the camera centre in the same frame as the body (zeros in the camera
    frame, ``-t`` in the model frame); None for no camera. ``extras`` goes to the asset's
    ``extras`` (JSON-serialisable). See the module docstring for axes and limits.
    """
    return build_skinned(body, rotmats, betas, transl, camera, name, extras).to_bytes()


def build_skinned(
    body: Any,
    rotmats: np.ndarray,
    betas: np.ndarray | None,
    transl: np.ndarray | None = None,
    camera: dict[str, Any] | None = None,
    name: str = "person",
    extras: dict[str, Any] | None = None,
) -> _Skinned:
    """The document of :func:`skinned_glb_bytes` (same arguments), not yet encoded."""
    rot = _as_rotations(np.asarray(rotmats, dtype=np.float64).reshape(24, 3, 3))
    transl = np.zeros(3) if transl is None else np.asarray(transl, dtype=np.float64).reshape(3)
    b = shaped_betas(body, betas)
    v_rest = body.template(dtype=torch.float64).numpy() + body.shapedirs @ b  # (V, 3)
    J = body.joint_regressor @ v_rest  # (24, 3), like smplx (joints of the shaped rest body)
    parents = list(body.parents)
    F = GLTF_FROM_OPENCV

    # Pelvis node: world rotation F R0, world position F (J0 + transl). Children: local
    # rotation R_k and offset J_k - J_parent, as in SMPL's kinematic chain.
    root_pos = F @ (J[0] + transl)
    d = root_pos - J[0]  # rest mesh placed so that its pelvis sits at the posed pelvis
    quats = _quat_xyzw(rot)
    quats[0] = _quat_xyzw(F @ rot[0])

    gl = g.GLTF2()
    gl.asset = g.Asset(generator="hmrcli", version="2.0")
    if extras:
        gl.asset.extras = extras
    gl.scene = 0
    gl.scenes = [g.Scene(name=name, nodes=[])]
    blob = _Blob(gl)

    joint_nodes = []
    for k in range(24):
        offset = root_pos if parents[k] < 0 else J[k] - J[parents[k]]
        node = g.Node(name=body.joint_names[k], translation=[float(x) for x in offset],
                      rotation=[float(x) for x in quats[k]])
        gl.nodes.append(node)
        joint_nodes.append(len(gl.nodes) - 1)
    for k in range(24):
        if parents[k] >= 0:
            gl.nodes[joint_nodes[parents[k]]].children.append(joint_nodes[k])

    positions = (v_rest + d).astype(np.float32)
    faces = np.asarray(body.faces, dtype=np.uint32).reshape(-1)
    jidx, jw = top_k_weights(body.skinning_weights, 4)
    jw32 = jw.astype(np.float32)
    jw32[:, 0] += 1.0 - jw32.sum(axis=1)  # exact sum in float32 (validators check it)
    ibm = np.tile(np.eye(4), (24, 1, 1))
    ibm[:, :3, 3] = -(J + d)  # inverse of each joint's rest transform (identity rotation)
    ibm_colmajor = np.transpose(ibm, (0, 2, 1)).astype(np.float32)  # glTF matrices are column-major

    a_pos = blob.add(positions, g.FLOAT, g.VEC3, g.ARRAY_BUFFER, minmax=True)
    a_nrm = blob.add(_vertex_normals(positions.astype(np.float64), faces.reshape(-1, 3)), g.FLOAT, g.VEC3,
                     g.ARRAY_BUFFER)
    a_joints = blob.add(jidx.astype(np.uint8), g.UNSIGNED_BYTE, g.VEC4, g.ARRAY_BUFFER)
    a_weights = blob.add(jw32, g.FLOAT, g.VEC4, g.ARRAY_BUFFER)
    a_idx = blob.add(faces, g.UNSIGNED_INT, g.SCALAR, g.ELEMENT_ARRAY_BUFFER, minmax=True)
    a_ibm = blob.add(ibm_colmajor, g.FLOAT, g.MAT4)

    gl.materials = [g.Material(name="skin", doubleSided=True, pbrMetallicRoughness=g.PbrMetallicRoughness(
        baseColorFactor=[0.65, 0.74, 0.86, 1.0], metallicFactor=0.0, roughnessFactor=0.8))]
    gl.meshes = [g.Mesh(name=f"{name}_body", primitives=[g.Primitive(
        attributes=g.Attributes(POSITION=a_pos, NORMAL=a_nrm, JOINTS_0=a_joints, WEIGHTS_0=a_weights),
        indices=a_idx, material=0, mode=g.TRIANGLES)])]
    gl.skins = [g.Skin(name=f"{name}_skeleton", joints=joint_nodes, skeleton=joint_nodes[0],
                       inverseBindMatrices=a_ibm)]
    gl.nodes.append(g.Node(name=f"{name}_body", mesh=0, skin=0))
    mesh_node = len(gl.nodes) - 1
    gl.scenes[0].nodes += [joint_nodes[0], mesh_node]

    if camera is not None:
        K = np.asarray(camera["K"], dtype=np.float64).reshape(3, 3)
        w, h = float(camera["width"]), float(camera["height"])
        pos = F @ np.asarray(camera.get("position", np.zeros(3)), dtype=np.float64).reshape(3)
        yfov = 2.0 * math.atan2(h / 2.0, float(K[1, 1]))
        gl.cameras = [g.Camera(name="camera", type="perspective", perspective=g.Perspective(
            yfov=yfov, aspectRatio=w / h, znear=0.01))]
        cam_node = g.Node(name="camera", camera=0, translation=[float(x) for x in pos],
                          rotation=[0.0, 0.0, 0.0, 1.0])
        cam_node.extras = {"K": K.tolist(), "width": int(w), "height": int(h),
                           "note": "glTF cameras look down -Z with +Y up; OpenCV's look down +Z with +Y "
                                   "down: this node is the OpenCV camera rotated 180 degrees about x. "
                                   "yfov = 2 atan(H / (2 fy)); principal point assumed at the centre."}
        gl.nodes.append(cam_node)
        gl.scenes[0].nodes.append(len(gl.nodes) - 1)

    return _Skinned(gl, blob, joint_nodes, J)
