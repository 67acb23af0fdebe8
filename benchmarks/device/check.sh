#!/usr/bin/env bash
# Run ON a lent GPU machine (the `device` tool), after benchmarks/device/wheels.sh here. Two
# prepared calls, the second at once while the machine is warm (it goes back 30 s idle):
#
#   run(command="bash benchmarks/device/check.sh bench", carry=[".whl"], timeout_s=560)
#   run(command="bash benchmarks/device/check.sh tests", carry=[".whl"], timeout_s=560)
#
# A lease is 15 minutes of device time, the machine's start included, and one command at most
# 10; so every step has its own time limit and each phase ends within about 9 minutes. Each
# step's output goes to stdout and to the phase's log under $OUT (what comes back from that
# machine); a step that fails or runs out of time is named in summary.txt, and the next step
# still runs. `bench` comes first: its figures are what issue 22 (item 5) still lacks.
#
#   bench : quantize.py (fused ÷ a device copy, each row checked bit-identical to the eager
#           twin), call_overhead.py (host cost of each compiled kernel call of a quantized
#           layer), run_overhead.py --breakdown on the demo and on resnet18 at batch 16 (the
#           run ÷ a plain FP32 loop, and the cost beyond the floor per quantized-layer call:
#           the target is <= 0.3 ms);
#   tests : every `gpu`-marked test, package by package as nox runs them (their conftest
#           files share names), then the repository's.
#
# Environment: PYTHON (default python3, the one that holds the machine's torch), DEVICE
# (default cuda; `cpu` rehearses the script on a machine without a GPU: the gpu tests skip,
# and on a small CPU the benchmark steps run out of time), OUT (default ./device-out).
set -uo pipefail
cd "$(dirname "$0")/../.."
phase="${1:-}"
case "$phase" in tests|bench) ;; *) echo "usage: $0 bench|tests" >&2; exit 2 ;; esac
PYTHON="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log="$OUT/$phase.log"
summary="$OUT/summary-$phase.txt"
: > "$summary"

# QBench, and what the machine's image lacks, from the wheels carried in .whl (offline)
site=/tmp/qbench-site
rm -rf "$site"
if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$site" .whl/*.whl > "$OUT/install.log" 2>&1; then
  cat "$OUT/install.log"
  echo "install FAILED: run benchmarks/device/wheels.sh here first and carry .whl" \
    | tee -a "$summary"
  exit 1
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" - <<'PY' 2>&1 | tee -a "$summary"
import os, platform, torch, qbench
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()} | torch {torch.__version__} | cuda {torch.version.cuda}"
      f" | gpu {gpu} | cpus {os.cpu_count()} | qbench from {os.path.dirname(qbench.__file__)}")
print("formats registered:", len(qbench.list_formats()), "| nvfp4:", qbench.get_format("nvfp4").name)
PY
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
  echo "QBench does not import with $PYTHON: a dependency missing from .whl?" | tee -a "$summary"
  exit 1
fi

step() {  # step LABEL SECONDS COMMAND...: one logged, time-limited step
  local label="$1" limit="$2"
  shift 2
  local start=$SECONDS
  echo "=== $label (limit ${limit} s): $*" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]} verdict=ok
  case "$rc" in
    0) ;;
    124|137) verdict="TIMED OUT" ;;
    5) verdict="nothing marked gpu" ;;  # pytest's exit status when no test was selected
    *) verdict="FAILED (rc $rc)" ;;
  esac
  echo "$label: $verdict in $((SECONDS - start)) s" | tee -a "$summary"
}

if [ "$phase" = bench ]; then
  step "quantize.py" 200 "$PYTHON" benchmarks/quantize.py --device "$DEVICE" --repeats 5 \
    --formats fp8_e4m3 fp4_e2m1 int8 mxfp8_e4m3 mxfp4_e2m1 nvfp4
  step "call_overhead.py" 60 "$PYTHON" benchmarks/call_overhead.py --device "$DEVICE" --rounds 7
  step "run_overhead.py demo" 75 "$PYTHON" benchmarks/run_overhead.py --device "$DEVICE" \
    --breakdown --repeats 3
  step "run_overhead.py resnet18 batch 16" 150 "$PYTHON" benchmarks/run_overhead.py \
    --device "$DEVICE" --model resnet18 --batch-size 16 --images 128 --workers 4 \
    --breakdown --repeats 2
else
  for dir in qbench-core/tests qbench-formats/tests qbench-ops/tests qbench-adapters/tests \
             qbench-eval/tests tests; do
    step "pytest -m gpu $dir" 85 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu "$dir"
  done
fi
echo "--- summary"; cat "$summary"
