#!/usr/bin/env bash
# Benchmark: Newton–Schulz schedules against the exact polar factor (SVD,
# Gram eigendecomposition) per shape, written as Google Benchmark JSON, then
# summarized as a ratio table (scripts/bench_table.py).
#   bash scripts/bench.sh                       # every shape (a few minutes)
#   MUON_BENCH_QUICK=1 bash scripts/bench.sh    # 128x128 and 256x256 only
#   bash scripts/bench.sh --benchmark_filter='/1024x' --muon_threads=2
# Extra arguments go to the benchmark program. Environment: JOBS (build
# parallelism, default nproc), BUILD_DIR (default build/bench-release),
# BENCH_JSON (default $BUILD_DIR/bench_orthogonalize.json).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${JOBS:-$(nproc)}
dir=${BUILD_DIR:-build/bench-release}
json=${BENCH_JSON:-$dir/bench_orthogonalize.json}

bash scripts/deps.sh python3

cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DMUON_BUILD_TESTS=OFF -DMUON_BUILD_BENCHMARKS=ON -DMUON_BUILD_EXAMPLES=OFF \
  -DMUON_ENABLE_CUDA=OFF
cmake --build "$dir" --target bench_orthogonalize -j "$jobs"

args=()
[[ ${MUON_BENCH_QUICK:-0} == 1 ]] && args+=("--benchmark_filter=/(128|256)x")
"$dir/bench/bench_orthogonalize" "${args[@]}" "$@" \
  --benchmark_out="$json" --benchmark_out_format=json
echo
echo "JSON: $json"
python3 scripts/bench_table.py "$json"
