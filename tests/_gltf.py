"""Reading a GLB back in tests: accessors, node transforms and glTF 2.0 skinning, in numpy, from
the file's own data (no hmrcli code)."""

import numpy as np
import pygltflib

_COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def read_glb(data: bytes):
    gl = pygltflib.GLTF2.load_from_bytes(data)
    blob = gl.binary_blob()

    def accessor(i):
        a = gl.accessors[i]
        v = gl.bufferViews[a.bufferView]
        n = _WIDTH[a.type]
        dt = np.dtype(_COMPONENTS[a.componentType])
        assert v.byteStride in (None, 0, n * dt.itemsize)
        start = (v.byteOffset or 0) + (a.byteOffset or 0)
        arr = np.frombuffer(blob, dtype=dt, count=a.count * n, offset=start)
        return arr.reshape(a.count, n) if n > 1 else arr

    return gl, accessor


def _quat_to_mat(q):
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _local(node, rest=False):
    m = np.eye(4)
    if node.matrix:
        return np.asarray(node.matrix, dtype=np.float64).reshape(4, 4).T
    if node.rotation and not rest:
        m[:3, :3] = _quat_to_mat(node.rotation)
    if node.scale:
        m[:3, :3] = m[:3, :3] @ np.diag(node.scale)
    if node.translation:
        m[:3, 3] = node.translation
    return m


def world_matrices(gl, rest=False):
    world = {}

    def visit(i, parent):
        world[i] = parent @ _local(gl.nodes[i], rest)
        for c in gl.nodes[i].children or []:
            visit(c, world[i])

    for r in gl.scenes[gl.scene].nodes:
        visit(r, np.eye(4))
    return world


def skin_glb(data: bytes, weights_override=None, rest=False):
    """Linear blend skinning exactly as glTF 2.0 defines it, from the file's own data."""
    gl, acc = read_glb(data)
    prim = gl.meshes[0].primitives[0]
    skin = gl.skins[0]
    pos = acc(prim.attributes.POSITION).astype(np.float64)
    joints = acc(prim.attributes.JOINTS_0).astype(np.int64)
    weights = acc(prim.attributes.WEIGHTS_0).astype(np.float64)
    ibm = acc(skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1).astype(np.float64)
    world = world_matrices(gl, rest)
    M = np.stack([world[n] @ ibm[k] for k, n in enumerate(skin.joints)])  # (24, 4, 4)
    ph = np.concatenate([pos, np.ones((len(pos), 1))], axis=1)
    per_joint = np.einsum("jab,vb->vja", M, ph)[..., :3]  # (V, 24, 3)
    if weights_override is not None:
        return np.einsum("vj,vja->va", weights_override, per_joint), gl
    return np.einsum("vk,vka->va", weights, np.take_along_axis(per_joint, joints[..., None], axis=1)), gl
