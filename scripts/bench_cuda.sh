#!/usr/bin/env bash
# GPU benchmark in one command: builds bench/cuda/bench_cuda, runs it and the
# PyTorch baselines (scripts/torch_gpu_ns.py) in the same session, then prints
# time ratios (ours / torch) and achieved TFLOP/s. JSON is kept in $OUT_DIR.
# Environment: BUILD_DIR (build/bench-cuda), OUT_DIR (build/bench-cuda/results),
# CUDA_ARCH (90), JOBS (nproc), BENCH_FILTER (Google Benchmark --benchmark_filter).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build/bench-cuda}
out=${OUT_DIR:-$build/results}
jobs=${JOBS:-$(nproc)}
mkdir -p "$out"

if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUON_ENABLE_CUDA=ON \
  -DMUON_BUILD_TESTS=OFF -DMUON_BUILD_EXAMPLES=OFF -DMUON_BUILD_BENCHMARKS=ON \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" >/dev/null
cmake --build "$build" -j "$jobs" --target bench_cuda

rm -f "$out/bench_cuda.json"
"$build/bench/cuda/bench_cuda" --benchmark_out="$out/bench_cuda.json" --benchmark_out_format=json \
  --benchmark_min_time=0.5 ${BENCH_FILTER:+--benchmark_filter="$BENCH_FILTER"}
if [[ ! -s "$out/bench_cuda.json" ]]; then  # bench_cuda printed "no CUDA device: skipping"
  exit 0
fi
python3 scripts/torch_gpu_ns.py --out "$out/torch_gpu.json"

python3 scripts/cuda_ratios.py "$out/bench_cuda.json" "$out/torch_gpu.json"
