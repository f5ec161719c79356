#!/usr/bin/env bash
# One prepared pass over everything that needs a GPU; run from anywhere on a CUDA machine:
#
#     OUT=gpu_results bash scripts/gpu_check.sh
#
# Sections (each logged to $OUT/<section>.log, its exit status and seconds appended to $OUT/status.txt;
# a failing section is recorded and the next one runs):
#   install     pip install --no-index .whl/*.whl, only if the repo holds a .whl/ folder (no PyPI needed)
#   env         python, torch, CUDA, GPU name, the packages the project imports
#   tests       pytest -m "not slow" (the CUDA parametrisations run wherever CUDA is available)
#   cuda_ran    from tests.xml: lists the CUDA cases that passed; fails if none did or any failed
#   bench       benchmarks/bench.py --device cuda --json $OUT/bench.json --plot $OUT/speed.png
#   train_bf16  train.py, 1 epoch on the embedded data per decoder of the table, one GPU, --precision bf16-mixed
# Exit status: 0 if every section passed, else 1. Timeouts (seconds) can be overridden through the
# environment: TESTS_TIMEOUT, BENCH_TIMEOUT, TRAIN_TIMEOUT; BENCH_ARGS adds flags to bench.py (e.g. --quick).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="$(mkdir -p "${OUT:-gpu_results}" && cd "${OUT:-gpu_results}" && pwd)"
PYTHON="${PYTHON:-python3}"
# The repo is importable without installing it; the embedded dataset and scratch runs stay out of $OUT.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export CAPTION_TORCH_CACHE="${CAPTION_TORCH_CACHE:-/tmp/caption-torch-cache}"
SCRATCH="$(mktemp -d /tmp/gpu_check.XXXXXX)"
: > "$OUT/status.txt"
failed=0

# section NAME COMMAND...: run COMMAND in the background (so `set -e` holds inside it), log it, record its status.
section() {
    local name=$1 status=0 start=$SECONDS
    shift
    echo "== $name: $*"
    "$@" > "$OUT/$name.log" 2>&1 &
    wait $! || status=$?
    echo "$name $status $((SECONDS - start))s" | tee -a "$OUT/status.txt"
    if [ "$status" -ne 0 ]; then
        failed=1
        tail -n 30 "$OUT/$name.log" | sed "s/^/   $name| /"
    fi
}

install_wheels() {
    "$PYTHON" -m pip install --no-index --find-links "$REPO/.whl" "$REPO"/.whl/*.whl
}

report_environment() {
    command -v nvidia-smi > /dev/null && nvidia-smi || echo "nvidia-smi: not found"
    "$PYTHON" - <<'EOF'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.machine())
for name in ("torch", "lightning", "torchmetrics", "h5py", "numpy", "matplotlib", "tqdm", "pytest"):
    try:
        print(f"{name:13s}", importlib.import_module(name).__version__)
    except ImportError as error:
        print(f"{name:13s} MISSING ({error})")
import torch
print("cuda", torch.version.cuda, "available:", torch.cuda.is_available())
if not torch.cuda.is_available():
    sys.exit("error: torch sees no CUDA device")
print("device", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
EOF
}

run_tests() {
    timeout "${TESTS_TIMEOUT:-420}" "$PYTHON" -m pytest -m "not slow" -q -p no:cacheprovider \
        --junitxml "$OUT/tests.xml" --basetemp "$SCRATCH/pytest"
}

check_cuda_ran() {
    # The tests section ran the CUDA parametrisations already; a run where none of them passed
    # (CUDA not seen, every one skipped) must not count as a GPU check.
    "$PYTHON" - "$OUT/tests.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

cases = [c for c in ET.parse(sys.argv[1]).iter("testcase") if "cuda" in c.get("name", "")]
passed = [c for c in cases if not any(child.tag in ("failure", "error", "skipped") for child in c)]
for case in passed:
    print("passed", case.get("classname"), case.get("name"))
print(f"{len(passed)} of {len(cases)} CUDA cases passed")
sys.exit(0 if passed and len(passed) == len(cases) else 1)
EOF
}

run_bench() {
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
    timeout "${BENCH_TIMEOUT:-420}" "$PYTHON" benchmarks/bench.py --device cuda --json "$OUT/bench.json" \
        --plot "$OUT/speed.png" ${BENCH_ARGS:-}
}

run_train_bf16() {
    local decoders
    decoders=$("$PYTHON" -c "from caption_torch.models.registry import DECODERS; print(*DECODERS)")
    for decoder in $decoders; do
        timeout "${TRAIN_TIMEOUT:-300}" "$PYTHON" train.py --accelerator gpu --devices 1 --precision bf16-mixed \
            --model "$decoder" --epochs 1 --log-dir "$SCRATCH/train_$decoder"
        # The plot comes back; the checkpoints (tens of MB) stay on the machine.
        cp "$SCRATCH/train_$decoder/lightning_logs/version_0/loss.png" "$OUT/train_bf16_${decoder}_loss.png"
    done
    [ "$(grep -c "final training loss" "$OUT/train_bf16.log")" -eq "$(echo $decoders | wc -w)" ]
}

if [ -d "$REPO/.whl" ]; then
    section install install_wheels
else
    echo "== install: no .whl/ folder; using the torch and lightning already importable"
fi
section env report_environment
section tests run_tests
section cuda_ran check_cuda_ran
section bench run_bench
section train_bf16 run_train_bf16

echo "== status ($OUT/status.txt)"
cat "$OUT/status.txt"
exit "$failed"
