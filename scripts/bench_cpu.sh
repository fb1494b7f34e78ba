#!/usr/bin/env bash
# CPU speed, one command: builds bench/bench_cpu (Release, OpenMP; with
# MUON_USE_BLAS when OpenBLAS is installed), runs it and
# PyTorch's CPU NS5 (scripts/torch_cpu_ns.py) at the same thread counts, keeps
# the JSON and prints every method's time as a ratio to the hand-written Eigen
# NS5 measured in the same run AT THE SAME THREAD COUNT (lower is faster),
# plus bf16 against PyTorch bf16. PyTorch orthogonalizes the same input
# matrices (written by bench_cpu to out_dir/inputs), so the error counters
# compare like with like.
#
# Usage: scripts/bench_cpu.sh [out_dir]      (default build/bench_cpu_results)
# Environment: MUON_BENCH_THREADS (comma list, default "1,<cores>"; every
#   engine, the baseline's Eigen/OpenMP, OpenBLAS and torch, gets that many),
#   MUON_BENCH_SHAPES (comma list of <rows>x<cols>), BENCH_FILTER (Google
#   Benchmark regex), BENCH_MIN_TIME (s, 0.5), BENCH_REPETITIONS (of each of
#   ours, default 1; with more, the median is reported), JOBS (build
#   parallelism), BUILD_DIR (default build/bench_cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/bench_cpu_results}
build=${BUILD_DIR:-build/bench_cpu}
jobs=${JOBS:-2}
threads=${MUON_BENCH_THREADS:-1,$(nproc)}
mkdir -p "$out"

opts=()
dpkg-query -W -f='${Status}' libopenblas-dev 2>/dev/null | grep -q "install ok installed" &&
  opts+=(-DMUON_USE_BLAS=ON)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUON_ENABLE_CUDA=OFF \
  -DMUON_BUILD_TESTS=OFF -DMUON_BUILD_EXAMPLES=OFF "${opts[@]}" >/dev/null
cmake --build "$build" -j "$jobs" --target bench_cpu

echo "== bench_cpu (threads: $threads; options: ${opts[*]:-none}) =="
mkdir -p "$out/inputs"
MUON_BENCH_DUMP_INPUTS="$out/inputs" MUON_BENCH_THREADS=$threads "$build/bench/bench_cpu" \
  --benchmark_filter="${BENCH_FILTER:-.}" --benchmark_min_time="${BENCH_MIN_TIME:-0.5}" \
  --benchmark_repetitions="${BENCH_REPETITIONS:-1}" \
  --benchmark_format=json --benchmark_out="$out/bench_cpu.json" --benchmark_out_format=json \
  >/dev/null

torch_py=/usr/bin/python3
torch_files=()
shapes_arg=()
[[ -n ${MUON_BENCH_SHAPES:-} ]] && shapes_arg=(--shapes "$MUON_BENCH_SHAPES")
if "$torch_py" -c "import torch" 2>/dev/null; then
  IFS=, read -ra counts <<<"$threads"
  for t in "${counts[@]}"; do
    echo "== PyTorch CPU NS5 (torch and OpenBLAS threads: $t) =="
    OPENBLAS_NUM_THREADS=$t OMP_NUM_THREADS=$t "$torch_py" scripts/torch_cpu_ns.py --threads "$t" \
      --inputs "$out/inputs" --min-time "${BENCH_MIN_TIME:-0.5}" "${shapes_arg[@]}" \
      >"$out/torch_cpu_t$t.json"
    torch_files+=("$out/torch_cpu_t$t.json")
  done
else
  echo "PyTorch not found (Debian: apt-get install python3-torch); torch columns skipped"
fi

python3 scripts/cpu_ratios.py ns "$out/bench_cpu.json" "${torch_files[@]}"
echo "JSON in $out (plot: python3 scripts/plot_bench.py $out/bench_cpu.json" \
  "$out/torch_cpu_t*.json -o $out/bench_cpu.png)"
