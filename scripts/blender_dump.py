"""Import files into headless Blender and report what Blender made of them, as JSON.

Run by Blender (not by hmrcli's Python):

    blender -b --factory-startup --python-exit-code 1 --python scripts/blender_dump.py -- REQUEST.json OUT.json

(``--python-exit-code 1``: Blender otherwise exits 0 after a failing script.)

REQUEST.json: ``{"items": [ITEM, ...]}``; each ITEM is imported into an empty scene:

* ``{"kind": "gltf", "path": P, "fps": 30, "frames": [k, ...]}`` -- ``import_scene.gltf`` with
  ``import_shading='SMOOTH'`` (Debian's Blender 3.4 with numpy >= 1.24 fails in the default
  ``'NORMALS'`` mode on ``np.bool``);
* ``{"kind": "bvh", "path": P, "fps": 30, "frame_start": 1, "frames": [...]}`` --
  ``import_anim.bvh`` with its defaults (Y up, -Z forward, scale 1). Blender 3.4's BVH reader
  opens the file with mode ``'rU'``, which Python 3.11 (Debian's Blender runs on the system
  Python; Blender's own 3.4 builds bundle Python 3.10) refuses: the reader's ``open`` is
  wrapped to drop the ``U`` first (:func:`_bvh_open_fix`);
* ``{"kind": "obj", "path": P, "forward_axis": "Z", "up_axis": "NEGATIVE_Y"}`` -- ``wm.obj_import``;
* ``{"kind": "ply", "path": P, "rotate_x_deg": -90}`` -- ``import_mesh.ply`` (no axis options in
  Blender 3.4), then the object rotated about x and the rotation applied.

``fps`` sets the scene's frame rate before the import (Blender's glTF importer places a key at
``time * scene fps``). ``frames``: scene frames at which bone heads and skinned vertices are
reported (none: the current frame only).

OUT.json: ``{"blender": version, "items": [{"kind", "objects": [{"name", "type"}], "actions":
[{"name", "frame_range", "key_frames"}], "armatures": [{"name", "bones": [names], "heads":
{frame: {bone: [x, y, z]}}}], "meshes": [{"name", "num_vertices", "influences": {n: count},
"vertices": {frame: [[x, y, z], ...]}}]}]}``; positions are Blender world coordinates (metres,
+Z up), ``influences`` counts vertices by their number of vertex groups with a weight > 0.
"""

import json
import math
import sys

import bpy
import numpy as np


def _reset(fps):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if fps:
        bpy.context.scene.render.fps = int(round(fps))
        bpy.context.scene.render.fps_base = 1.0


def _bvh_open_fix():
    """Let Blender 3.4's BVH reader run on Python >= 3.11 (``open(path, 'rU')`` was removed)."""
    import builtins

    import io_anim_bvh.import_bvh as reader

    def _open(file, mode="r", *args, **kwargs):
        return builtins.open(file, mode.replace("U", ""), *args, **kwargs)

    if sys.version_info >= (3, 11) and "open" not in vars(reader):
        reader.open = _open


def _import(item):
    kind, path = item["kind"], item["path"]
    if kind == "gltf":
        bpy.ops.import_scene.gltf(filepath=path, import_shading="SMOOTH")
    elif kind == "bvh":
        _bvh_open_fix()
        bpy.ops.import_anim.bvh(filepath=path, frame_start=int(item.get("frame_start", 1)))
    elif kind == "obj":
        bpy.ops.wm.obj_import(filepath=path, forward_axis=item.get("forward_axis", "NEGATIVE_Z"),
                              up_axis=item.get("up_axis", "Y"))
    elif kind == "ply":
        bpy.ops.import_mesh.ply(filepath=path)
        angle = math.radians(float(item.get("rotate_x_deg", 0.0)))
        for ob in bpy.context.selected_objects:
            ob.rotation_euler[0] += angle
            bpy.context.view_layer.objects.active = ob
        bpy.ops.object.transform_apply(location=False, rotation=True, scale=False)
    else:
        raise ValueError(f"unknown kind {kind!r}")


def _mesh_world(ob):
    depsgraph = bpy.context.evaluated_depsgraph_get()
    ev = ob.evaluated_get(depsgraph)
    me = ev.to_mesh()
    co = np.empty(len(me.vertices) * 3)
    me.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    co = co.reshape(-1, 3)
    m = np.array(ob.matrix_world)
    return (co @ m[:3, :3].T + m[:3, 3]).tolist()


def _dump(item):
    scene = bpy.context.scene
    frames = [int(f) for f in item.get("frames", [])] or [scene.frame_current]
    out = {"kind": item["kind"], "objects": [{"name": o.name, "type": o.type} for o in bpy.data.objects],
           "actions": [], "armatures": [], "meshes": []}
    for act in bpy.data.actions:
        keys = sorted({round(k.co[0], 4) for fc in act.fcurves for k in fc.keyframe_points})
        out["actions"].append({"name": act.name, "frame_range": list(act.frame_range), "key_frames": keys})
    arms = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    heads = {o.name: {} for o in arms}
    verts = {o.name: {} for o in meshes}
    for f in frames:
        scene.frame_set(f)
        for o in arms:
            m = o.matrix_world
            heads[o.name][str(f)] = {pb.name: list(m @ pb.head) for pb in o.pose.bones}
        for o in meshes:
            verts[o.name][str(f)] = _mesh_world(o)
    for o in arms:
        out["armatures"].append({"name": o.name, "bones": [b.name for b in o.data.bones], "heads": heads[o.name]})
    for o in meshes:
        infl = {}
        for v in o.data.vertices:
            n = sum(1 for ge in v.groups if ge.weight > 0)
            infl[str(n)] = infl.get(str(n), 0) + 1
        out["meshes"].append({"name": o.name, "num_vertices": len(o.data.vertices), "influences": infl,
                              "vertices": verts[o.name]})
    return out


def main(argv):
    args = argv[argv.index("--") + 1:] if "--" in argv else []
    if len(args) != 2:
        raise SystemExit("usage: blender -b --factory-startup --python blender_dump.py -- REQUEST.json OUT.json")
    with open(args[0], encoding="utf-8") as f:
        request = json.load(f)
    results = []
    for item in request["items"]:
        _reset(item.get("fps"))
        _import(item)
        results.append(_dump(item))
    with open(args[1], "w", encoding="utf-8") as f:
        json.dump({"blender": bpy.app.version_string, "items": results}, f)


if __name__ == "__main__":
    main(sys.argv)
