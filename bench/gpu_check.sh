#!/usr/bin/env bash
# The prepared GPU check (issue 14, item 9): one command, at most 8 minutes on one GPU, no network.
#
#   (a) bench/gpu_qlora.py   QLoRA steps on a randomly initialised Llama-2-7B-shaped model at seq 1024
#                            and 512, batch 1, and the gpu profile's packed batches of 8 (512p8): peak
#                            memory against models.estimate_memory (within 15%) and tokens/s;
#                            goal: peak <= 12 GiB at seq 1024, batch 1
#   (b) bench/gpu_sample.py  evaluate's transformers backend on the same model in 4 bits, k=16 paths for
#                            32 prompts, against one model.generate per path; goal >= 5x
#   (c) pytest -m gpu        the CUDA-only tests (the test files that carry the mark)
#
# The models are random because nothing can be downloaded there and the embedded model's 94 MB GGUF
# does not fit the 64 MiB a device call carries. What the device image lacks, or has in versions
# older than requirements.txt's bounds, travels as wheels in .whl/ (git-ignored; 57 MiB with the
# repo's 1 MiB, under the 64 MiB): bitsandbytes and trl (absent), datasets + dill + multiprocess
# (trl's and train's, absent), transformers and peft (the image's are older). Fill it once, here,
# in the repo root (the image's python is 3.12; pip must match each wheel's platform tag exactly):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl bitsandbytes==0.50.2 trl==1.16.0 transformers==5.24.0 \
#     peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#
# Run it with the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=560).
# Its files come back from $OUT: gpu_check.log, qlora.json, sample.json, pytest.xml, summary.json
# (elsewhere they go to runs/gpu-check/). On a CUDA machine with mdlab's requirements installed no
# wheels are needed: `bash bench/gpu_check.sh`. `bash bench/gpu_check.sh --cpu-dry-run` runs the same
# steps on a small random model on the CPU and measures nothing (a check of this script).
# Settings from the environment: PYTHON (python3), WHEELS (.whl), GPU_CHECK_WORKDIR (where the random
# model is written; default /dev/shm when it has 20 GiB free, else the temp dir), LIMIT_QLORA (300),
# LIMIT_SAMPLE (120), LIMIT_PYTEST (30): seconds each part may take.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
OUTDIR=${OUT:-runs/gpu-check}
SITE=${TMPDIR:-/tmp}/mdlab-gpu-check-site
DRY=()
[[ "${1:-}" == "--cpu-dry-run" ]] && DRY=(--cpu-dry-run)
# seconds per part; with ~30 s of set-up they add up to the 8 minutes the check may take
LIMIT_QLORA=${LIMIT_QLORA:-300} LIMIT_SAMPLE=${LIMIT_SAMPLE:-120} LIMIT_PYTEST=${LIMIT_PYTEST:-30}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MDLAB_OFFLINE=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
mkdir -p "$OUTDIR"

part() {  # part NAME LIMIT COMMAND...: run one part under its own timeout; its status goes to STATUS
    local name=$1 limit=$2 start=$SECONDS rc=0
    shift 2
    echo
    echo "======== $name (at most ${limit} s) ========"
    # timeout signals the whole process group, so gpu_qlora.py's per-configuration children go too
    timeout -k 10 "$limit" "$@" || rc=$?
    echo "-------- $name: exit status $rc in $((SECONDS - start)) s"
    STATUS+=("$name=$rc")
}

main() {
    echo "gpu_check.sh ${DRY[*]:-} $(date -u +%Y-%m-%dT%H:%M:%SZ) in $PWD, results in $OUTDIR"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    fi
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        # --no-deps: the wheels name every missing package; --target + PYTHONPATH puts them ahead of the image's
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$WHEELS"/*.whl
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        echo "installed into $SITE: $(cd "$WHEELS" && ls -- *.whl | tr '\n' ' ')"
    else
        echo "no wheels in $WHEELS: using $PY's own packages"
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's mdlab, installed or not
    "$PY" - "${DRY[@]}" <<'EOF' || return 2
import sys
from importlib import metadata

import mdlab

report = mdlab.env_report()
for dist in ("datasets", "pyarrow", "fsspec", "huggingface_hub", "tokenizers", "safetensors"):
    try:
        print(f"{dist:<14}  {metadata.version(dist)}")
    except metadata.PackageNotFoundError:
        print(f"{dist:<14}  not installed")
if report["device"] != "cuda" and "--cpu-dry-run" not in sys.argv:
    sys.exit("no CUDA device: this check needs a GPU (or --cpu-dry-run)")
EOF

    STATUS=()
    local steps=6
    [[ ${#DRY[@]} -gt 0 ]] && steps=2
    part qlora "$LIMIT_QLORA" "$PY" bench/gpu_qlora.py --steps "$steps" --json "$OUTDIR/qlora.json" \
        ${GPU_CHECK_WORKDIR:+--workdir "$GPU_CHECK_WORKDIR"} "${DRY[@]}"
    part sample "$LIMIT_SAMPLE" "$PY" bench/gpu_sample.py --naive-seconds 20 --json "$OUTDIR/sample.json" \
        ${GPU_CHECK_WORKDIR:+--workdir "$GPU_CHECK_WORKDIR"} "${DRY[@]}"
    # only the files that carry the mark: collecting the others needs packages (nbformat...) the image lacks
    mapfile -t gpu_tests < <(grep -l "pytest.mark.gpu" tests/test_*.py)
    part pytest "$LIMIT_PYTEST" "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml "$OUTDIR/pytest.xml" \
        "${gpu_tests[@]}"

    "$PY" - "$OUTDIR" "${STATUS[@]}" <<'EOF'
"""The summary table: each part's status and headline figures, also written to summary.json."""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out = Path(sys.argv[1])
status = dict(item.split("=") for item in sys.argv[2:])


def read(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else {}


def verdict(name):
    rc = int(status.get(name, -1))
    return "ok" if rc == 0 else "TIMED OUT" if rc in (124, 137) else f"FAILED ({rc})"


qlora, sample = read("qlora.json"), read("sample.json")
tests = None
if (out / "pytest.xml").exists():
    suite = ET.parse(out / "pytest.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    tests = (f"{counts['tests']} test(s): {counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']}"
             f" passed, {counts['skipped']} skipped, {counts['failures']} failed, {counts['errors']} errors")
print("\n======== summary ========")
print(f"{'part':<8}{'status':<12}figures")
rows = []
for r in qlora.get("configs", []):
    if "error" in r:
        rows.append(f"{r['config']}: {r['error']}")
    elif r.get("ratio") is not None:
        rows.append(f"{r['config']}: peak {r['peak_allocated_gib']:.2f} GiB = {r['ratio']:.2f}x predicted "
                    f"{r['predicted_allocated_gib']:.2f} ({'within' if r['within_tolerance'] else 'OUTSIDE'} 15%), "
                    f"reserved {r['peak_reserved_gib']:.2f} GiB, {r['tokens_per_s']:.0f} tok/s")
    else:
        rows.append(f"{r['config']}: trained (dry run, nothing measured)")
if qlora.get("meets_goal") is not None:
    rows.append(f"goal 1024x1 peak reserved <= 12 GiB: {'met' if qlora['meets_goal'] else 'NOT met'}")
print(f"{'qlora':<8}{verdict('qlora'):<12}" + ("\n" + " " * 20).join(rows or ["no figures"]))
if sample:
    m, n = sample["mdlab"], sample["naive"]
    goal = {True: "met", False: "NOT met", None: "dry run"}[sample["meets_goal"]]
    line = (f"mdlab {m['tokens_per_s']:.0f} tok/s vs naive {n['tokens_per_s']:.0f} tok/s = {sample['ratio']:.1f}x "
            f"(goal >= 5x: {goal})")
else:
    line = "no figures"
print(f"{'sample':<8}{verdict('sample'):<12}{line}")
print(f"{'pytest':<8}{verdict('pytest'):<12}{tests or 'no report'}")
summary = {"status": {name: verdict(name) for name in status}, "qlora": qlora, "sample": sample,
           "pytest": tests}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
EOF
    for item in "${STATUS[@]}"; do
        [[ ${item#*=} == 0 ]] || return 1
    done
}

main 2>&1 | tee "$OUTDIR/gpu_check.log"
