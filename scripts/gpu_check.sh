#!/usr/bin/env bash
# The first thing to run on a machine with an NVIDIA GPU: builds the CUDA
# targets for the GPU present, runs the CUDA tests, compute-sanitizer
# memcheck, the CUDA benchmark and the PyTorch comparison, each stage under
# its own time limit, all within 9 minutes. Logs and a short summary go to
# the output folder.
#
#   bash scripts/gpu_check.sh [out_dir]      # default: $OUT, else build/gpu-check
#
# Environment: CUDA_ARCH (default native: the GPUs of this machine), JOBS
# (default nproc), GPU_CHECK_CPU=1 also builds and runs the CPU test suite
# (it is compiler coverage, not GPU coverage: off by default to keep the
# budget for the GPU stages).
#
# Stages and their limits (seconds):
#   build      240  configure (tests, benchmarks, examples) and build the CUDA targets
#   host        60  test_cuda "[host]": the CUDA code that needs no device
#   device     120  test_cuda "[device]": device results against the CPU backend and
#                   optimizer, graphs, the transactional step, cross-backend checkpoints
#   memcheck   120  compute-sanitizer --tool memcheck on the device tests
#   quickstart  30  examples/cuda_quickstart
#   bench       90  bench_cuda (Newton-Schulz shapes, optimizer steps) + scripts/torch_gpu_ns.py
# On a machine without a GPU every stage after the build reports "skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:-${OUT:-$root/build/gpu-check}}
build=$root/build/gpu-check-build
jobs=${JOBS:-$(nproc)}
arch=${CUDA_ARCH:-native}
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
start=$(date +%s)

if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

note() { echo "$*" | tee -a "$summary"; }
# stage name limit command...: runs the command with its output in <name>.log
stage() {
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s) rc
  timeout --foreground "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  local took=$(($(date +%s) - t0)) verdict=passed
  ((rc == 124)) && verdict="TIMED OUT"
  ((rc == 77)) && verdict=skipped
  ((rc != 0 && rc != 124 && rc != 77)) && verdict="FAILED (exit $rc)"
  note "$(printf '%-11s %-16s %4ds  %s' "$name" "$verdict" "$took" "$out/$name.log")"
  return $rc
}

note "muon gpu_check $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $(hostname), $(date -u +%FT%TZ)"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
    sed 's/^/gpu: /' | tee -a "$summary"
fi
note "nvcc: $(nvcc --version 2>/dev/null | tail -1)"
note "arch: $arch"

stage build 240 bash -c "
  cmake -S '$root' -B '$build' -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUON_ENABLE_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES='$arch' -DMUON_BUILD_TESTS=ON -DMUON_BUILD_BENCHMARKS=ON \
    -DMUON_BUILD_EXAMPLES=ON &&
  cmake --build '$build' -j $jobs --target test_cuda muon_cuda_probe cuda_quickstart &&
  { cmake --build '$build' -j $jobs --target test_nccl || echo 'test_nccl not built (no NCCL?)'; } &&
  { cmake --build '$build' -j $jobs --target bench_cuda || echo 'bench_cuda not built (Google Benchmark missing?)'; }"
built=$?

probe() { [[ -x $build/tests/cuda/muon_cuda_probe ]] && "$build/tests/cuda/muon_cuda_probe"; }
if ((built != 0)); then
  note "the build failed: no GPU stage can run"
elif ! probe >/dev/null; then
  note "no usable CUDA device: the GPU stages are skipped"
  stage host 60 "$build/tests/cuda/test_cuda" "[host]"
else
  stage host 60 "$build/tests/cuda/test_cuda" "[host]"
  stage device 120 "$build/tests/cuda/test_cuda" "[device]" --durations yes
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  if [[ -n $sanitizer ]]; then
    stage memcheck 120 "$sanitizer" --tool memcheck --error-exitcode 1 \
      "$build/tests/cuda/test_cuda" "[device]"
  else
    note "memcheck    skipped          compute-sanitizer not found"
  fi
  if [[ -x $build/tests/cuda/test_nccl ]]; then  # one-rank NCCL communicator
    stage nccl 60 "$build/tests/cuda/test_nccl"
  else
    note "nccl        skipped          test_nccl not built"
  fi
  stage quickstart 30 "$build/examples/cuda_quickstart"
  if [[ -x $build/bench/cuda/bench_cuda ]]; then
    stage bench 90 bash -c "
      '$build/bench/cuda/bench_cuda' --benchmark_out='$out/bench_cuda.json' \
        --benchmark_out_format=json --benchmark_min_time=0.2 &&
      if python3 -c 'import torch' 2>/dev/null; then
        python3 '$root/scripts/torch_gpu_ns.py' --out '$out/torch_gpu.json' --iters 30
      else echo 'torch not importable: no comparison'; fi"
  else
    note "bench       skipped          bench_cuda not built"
  fi
fi

if [[ ${GPU_CHECK_CPU:-0} == 1 ]] && ((built == 0)); then
  stage cpu 300 bash -c "cmake --build '$build' -j $jobs && ctest --test-dir '$build' -j $jobs \
    --output-on-failure -E 'test_cuda_(device|memcheck)'"
fi

# The ratio table, when both benchmark files exist.
if [[ -s $out/bench_cuda.json && -s $out/torch_gpu.json ]]; then
  python3 "$root/scripts/cuda_ratios.py" "$out/bench_cuda.json" "$out/torch_gpu.json" |
    tee "$out/ratios.txt" | tee -a "$summary"
fi
note "total: $(($(date +%s) - start))s; logs in $out"
grep -qE 'FAILED|TIMED OUT' "$summary" && exit 1
exit 0
