#!/usr/bin/env bash
# One-shot GPU check, for a machine with a CUDA device: runs every CUDA-marked test (regressor,
# batched crops, staged copies, nvJPEG decoding, renderer, fit, detector, body model, training
# step in bf16: the tests whose skip mark mentions CUDA) and the speed benchmark (`hmrcli
# benchmark --speed --device cuda`: the network at M = 1 and 5, batch 1, 16 and 64, fp32 and bf16,
# torch and onnxruntime; torch.compile at M = 5; end to end from JPEG files to files written),
# then prints ONE JSON object: device name, torch / CUDA / cuDNN versions, tests
# passed/failed/skipped (with the failures' names), speed figures (ms/person, persons/s, M=5 /
# M=1 cost ratio, crop paths, peak GPU memory, end-to-end images/s and persons/s).
#
#     benchmarks/gpu_check.sh            # from the repository root, with the project's .venv
#     GPU_CHECK_PYTHON=python3 benchmarks/gpu_check.sh   # another interpreter with hmrcli's needs
#
# Budget: under 8 minutes (tests at most GPU_CHECK_TEST_TIMEOUT s, default 210; each of the three
# benchmark calls at most GPU_CHECK_BENCH_TIMEOUT s, default 90). Exit status: 0 all good, 1 a
# test failed or a benchmark call failed, 2 no CUDA device / no interpreter (nothing run).
# Temporary files in GPU_CHECK_DIR (default: a fresh mktemp -d), kept for a look after a failure.
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY=${GPU_CHECK_PYTHON:-.venv/bin/python}
if ! command -v "$PY" > /dev/null; then
    echo "gpu_check: no interpreter $PY in $(pwd) (build the project's virtual environment first, or set GPU_CHECK_PYTHON)" >&2
    echo '{"ok": false, "error": "no interpreter"}'
    exit 2
fi

# -- the device ------------------------------------------------------------------------------
if ! device_json=$("$PY" - <<'EOF'
import json, sys
import torch
if not torch.cuda.is_available():
    sys.exit(3)
p = torch.cuda.get_device_properties(0)
print(json.dumps({"device_name": torch.cuda.get_device_name(0), "device_count": torch.cuda.device_count(),
                  "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
                  "torch": torch.__version__, "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version(), "bf16_supported": torch.cuda.is_bf16_supported()}))
EOF
); then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False; torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null), CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}): nothing to check" >&2
    echo '{"ok": false, "error": "no CUDA device"}'
    exit 2
fi

DIR=${GPU_CHECK_DIR:-$(mktemp -d -t hmrcli-gpu-check.XXXXXX)}
mkdir -p "$DIR"
T_TESTS=${GPU_CHECK_TEST_TIMEOUT:-210}
T_BENCH=${GPU_CHECK_BENCH_TIMEOUT:-90}
START=$(date +%s)

# -- the CUDA-marked tests: functions whose decorators (or a module-level mark they name)
#    mention CUDA, found by reading the test files ---------------------------------------------
"$PY" - > "$DIR/cuda_tests.txt" <<'EOF'
import ast, pathlib
for path in sorted(pathlib.Path("tests").glob("test_*.py")):
    src = path.read_text()
    tree = ast.parse(src)
    cuda_skip = lambda text: "skip" in text and "cuda" in text.lower()  # noqa: E731 (a skip mark about CUDA)
    seg = lambda node: ast.get_source_segment(src, node) or ""  # noqa: E731
    marks = {t.id for node in tree.body if isinstance(node, ast.Assign) and cuda_skip(seg(node.value))
             for t in node.targets if isinstance(t, ast.Name)}
    module_wide = "pytestmark" in marks
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.name.startswith("test"):
            continue
        decos = [seg(d) for d in node.decorator_list]
        if module_wide or any(cuda_skip(d) or d in marks for d in decos):
            print(f"{path}::{node.name}")
EOF
mapfile -t CUDA_TESTS < "$DIR/cuda_tests.txt"
echo "gpu_check: ${#CUDA_TESTS[@]} CUDA-marked tests on $(echo "$device_json" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["device_name"])')" >&2
tests_rc=0
if ((${#CUDA_TESTS[@]})); then
    timeout "$T_TESTS" "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$DIR/tests.xml" "${CUDA_TESTS[@]}" \
        > "$DIR/tests.log" 2>&1 || tests_rc=$?
    tail -n 15 "$DIR/tests.log" >&2
fi

# -- the speed benchmark ------------------------------------------------------------------------
# three calls: (a) network, eager: M = 1 and 5 x batch 1, 16, 64 x fp32, bf16 (torch) and fp32
# (onnxruntime); (b) torch.compile at M = 5, batch 64, bf16; (c) end to end from JPEG files on
# disk to files written, M = 5, bf16, batch auto-sized (64) over E2E_IMAGES copies of the sample JPEGs
bench_rc=0
bench() {  # name, then the benchmark options
    local name=$1; shift
    timeout "$T_BENCH" "$PY" -c 'import sys; from hmrcli.cli import main; sys.argv[0] = "hmrcli"; main()' \
        benchmark --speed --device cuda --repeats 5 --same-process --json "$@" > "$DIR/speed_$name.json" \
        2> "$DIR/speed_$name.err" || { bench_rc=$?; echo "gpu_check: benchmark $name failed (exit $bench_rc), see $DIR/speed_$name.err" >&2; }
}
bench network --rois 1 --rois 5 --batch-size 1 --batch-size 16 --batch-size 64 --precision fp32 --precision bf16 \
    --runtime torch --runtime onnx
bench compiled --rois 5 --batch-size 64 --precision bf16 --mode compiled
mkdir -p "$DIR/e2e_images"
n=0
while ((n < ${E2E_IMAGES:-400})); do
    for f in sample_images/*.jpg; do
        cp "$f" "$DIR/e2e_images/img_$(printf %05d $n).jpg"; n=$((n + 1))
    done
done
bench end_to_end --rois 5 --batch-size 64 --precision bf16 --detector whole-image --images "$DIR/e2e_images"

# -- the summary -------------------------------------------------------------------------------
DEVICE_JSON=$device_json TESTS_RC=$tests_rc BENCH_RC=$bench_rc DIR=$DIR START=$START "$PY" - <<'EOF'
import glob, json, os, time
import xml.etree.ElementTree as ET

d = os.environ["DIR"]
summary = {"ok": False, **json.loads(os.environ["DEVICE_JSON"]), "dir": d}
tests = {"selected": [l.strip() for l in open(os.path.join(d, "cuda_tests.txt")) if l.strip()],
         "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "skip_reasons": [],
         "exit_status": int(os.environ["TESTS_RC"])}
xml = os.path.join(d, "tests.xml")
if os.path.exists(xml):
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None:
            tests["failed"] += 1
            tests["failures"].append(name)
        elif case.find("error") is not None:
            tests["errors"] += 1
            tests["failures"].append(name)
        elif case.find("skipped") is not None:
            tests["skipped"] += 1
            tests["skip_reasons"].append(f"{name}: {case.find('skipped').get('message', '')}"[:200])
        else:
            tests["passed"] += 1
elif tests["selected"]:
    tests["error"] = f"no test report (timed out or crashed? exit {tests['exit_status']}); see {d}/tests.log"
summary["tests"] = tests
speed, end_to_end = [], []
for path in sorted(glob.glob(os.path.join(d, "speed_*.json"))):
    try:
        rep = json.load(open(path))
    except ValueError:
        speed.append({"file": os.path.basename(path), "error": "no JSON (see the .err file)"})
        continue
    for r in rep.get("results", []):
        row = {k: r.get(k) for k in ("num_rois", "batch", "precision", "mode", "runtime")}
        if "error" in r:
            speed.append({**row, "error": r["error"]})
            continue
        row.update(network_ms_per_person=r["network"]["ms_per_person"], network_persons_per_s=r["network"]["persons_per_s"],
                   body_ms_per_person=r["network+body"]["ms_per_person"], peak_cuda_mib=r.get("peak_cuda_mib"),
                   cost_vs_m1=r.get("cost_vs_m1"), settings=r.get("settings"), crops=r.get("crops"))
        speed.append(row)
    for r in rep.get("end_to_end", []):
        end_to_end.append({k: r.get(k) for k in ("images", "persons", "num_rois", "batch", "precision", "mode",
                                                 "runtime", "seconds", "persons_per_s", "pipeline")})
summary["end_to_end"] = end_to_end
summary["speed"] = sorted(speed, key=lambda r: (str(r.get("runtime")), str(r.get("mode")), str(r.get("precision")),
                                               r.get("batch") or 0, r.get("num_rois") or 0))
summary["seconds"] = int(time.time() - int(os.environ["START"]))
summary["ok"] = (tests["failed"] == 0 and tests["errors"] == 0 and "error" not in tests
                 and int(os.environ["BENCH_RC"]) == 0 and not any("error" in r for r in speed))
print(json.dumps(summary, indent=1))
EOF
summary_rc=$?
if ((summary_rc != 0)); then
    echo "gpu_check: could not write the summary (exit $summary_rc); files in $DIR" >&2
    exit 1
fi
if ((tests_rc != 0 || bench_rc != 0)); then
    exit 1
fi
exit 0
