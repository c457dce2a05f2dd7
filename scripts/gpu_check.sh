#!/usr/bin/env bash
# One GPU check, run once on a CUDA machine from anywhere inside the repository:
#
#     OUT=/path/to/folder bash scripts/gpu_check.sh
#
# 1. nvidia-smi and the torch/CUDA versions;
# 2. the CUDA tests of the runners and the benchmark (python3 -m pytest -m cuda);
# 3. ResNet-50 at 224x224 on CUDA, batch 1/32/256, each with and without CUDA graphs, end-to-end
#    (host->device, compute, device->host) and compute-only:
#    torch eager FP32, torch eager FP16 channels_last, torch.compile FP16 channels_last
#    (default mode; mode="reduce-overhead" for the CUDA-graph variant);
# 4. one merged report in $OUT: bench.json, bench.csv, bench.md, bench.png, plus gpu_check.log
#    (everything this script printed). The Markdown table is printed last.
#
# Needs: python3 with torch (CUDA), numpy, click, tqdm, matplotlib, pytest. The repository does not
# have to be installed (PYTHONPATH is set here). Every step has its own timeout and the script
# keeps a global deadline (BUDGET seconds, default 400), so it finishes in under 7 minutes; a
# benchmark stopped by its timeout keeps what it measured (SIGTERM is handled like Ctrl-C).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-artifacts/gpu_check}"
PY="${PYTHON:-python3}"
BUDGET="${BUDGET:-400}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
WORK="$(mktemp -d)"
START=$SECONDS
REPORT_RESERVE=25  # seconds kept for merging and printing the report

# step NAME CAP command... : run with `timeout`, never past the global deadline.
step() {
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START) - REPORT_RESERVE))
  local limit=$((cap < left ? cap : left))
  echo
  if ((limit < 10)); then
    echo "=== $name: SKIPPED, the time budget is spent ($((SECONDS - START)) s used)"
    return 0
  fi
  echo "=== [$((SECONDS - START)) s] $name (timeout ${limit} s)"
  # `timeout` must start the command itself: its SIGTERM then reaches resnet-bench, which stops
  # like on Ctrl-C and writes what it measured.
  if [[ -n "${QUIET_STDOUT:-}" ]]; then
    timeout -k 10 "$limit" "$@" >/dev/null
  else
    timeout -k 10 "$limit" "$@"
  fi
  local rc=$?
  echo "=== $name: exit $rc ($((SECONDS - START)) s used)"
}

bench() {  # bench NAME CAP extra resnet-bench options...
  local name=$1 cap=$2
  shift 2
  # each run's own table goes nowhere: the merged one is printed at the end
  QUIET_STDOUT=1 step "resnet-bench $name" "$cap" "$PY" -m bench.cli run \
    --device cuda --depth 50 --batch-sizes 1,32,256 --cuda-graphs both --warmup 5,0.2s \
    --warmup-max-time 5 --min-iters 10 --min-time 0.5 --no-progress --out "$WORK/$name" "$@"
}

main() {
  echo "gpu_check: $(date -u +%FT%TZ), repository $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  step "nvidia-smi" 20 nvidia-smi
  step "versions" 40 "$PY" -c '
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version(), "| GPU:", torch.cuda.is_available() and
      torch.cuda.get_device_name(0))'
  step "pytest -m cuda (runners, benchmark)" 100 "$PY" -m pytest -m cuda -q -p no:cacheprovider \
    tests/test_runners.py tests/test_bench_cli.py
  step "pytest -m cuda (training with AMP, export gate, TensorRT skips)" 120 "$PY" -m pytest \
    -m cuda -q -rs -p no:cacheprovider tests/test_cuda_end_to_end.py tests/test_tensorrt.py
  step "pytest torchvision interop" 40 "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_models.py -k torchvision
  bench eager-fp32 45 --backends torch --precision fp32
  bench eager-fp16-channels-last 45 --backends torch --precision fp16 --channels-last
  bench compile-fp16-channels-last 200 --backends torch-compile --precision fp16 --channels-last

  local runs=()
  for run in "$WORK"/eager-fp32 "$WORK"/eager-fp16-channels-last "$WORK"/compile-fp16-channels-last; do
    [[ -f "$run/bench.json" ]] && runs+=("$run")
  done
  echo
  if ((${#runs[@]} == 0)); then
    echo "=== no benchmark run produced results"
    return 1
  fi
  echo "=== [$((SECONDS - START)) s] merging ${#runs[@]} run(s) into $OUT"
  timeout -k 5 $((REPORT_RESERVE - 5)) "$PY" -m bench.cli report "${runs[@]}" --out "$OUT" >/dev/null
  echo "=== done in $((SECONDS - START)) s; files: $(cd "$OUT" && ls | tr '\n' ' ')"
  echo
  cat "$OUT/bench.md"
}

main 2>&1 | tee "$OUT/gpu_check.log"
rm -rf "$WORK"
