#!/usr/bin/env bash
# The whole optimizer step, one command: builds bench/bench_step (Release,
# OpenMP), runs it (this library's step, the plain Eigen loop, the checks, the
# sgemm rate and the optimizer's memory, at 1 thread and at every core) and
# PyTorch's CPU step of the same algorithm (scripts/torch_cpu_step.py, fp32 and
# bf16) at the same thread counts, then PyTorch's best configuration over
# torch threads x OpenBLAS threads; prints every time as a ratio to the
# baseline measured in the same run at the same thread count, then the
# roofline table (scripts/bench_roofline.py): this machine's sgemm rate, bf16
# dot-product peak and triad bandwidth from the same run, and each part of
# the step (Newton-Schulz products, AdamW, the Muon elementwise passes)
# against the limit that bounds it.
#
# Usage: scripts/bench_step.sh [out_dir]      (default build/bench_step_results)
# Environment: MUON_BENCH_THREADS (comma list, default "1,<cores>"),
#   MUON_BENCH_LAYERS (GPT-2 blocks, default 12), MUON_BENCH_MODEL (gpt2,
#   mlp or small), BENCH_MIN_TIME (s per measurement, default 3), BENCH_REPETITIONS
#   (of each measurement of ours, default 3: the median is reported),
#   BENCH_FILTER (a --benchmark_filter regex, default all), NO_TORCH=1 (skip
#   PyTorch), BUILD_DIR, JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/bench_step_results}
build=${BUILD_DIR:-build/bench_step}
jobs=${JOBS:-2}
cores=$(nproc)
threads=${MUON_BENCH_THREADS:-1,$cores}
layers=${MUON_BENCH_LAYERS:-12}
model=${MUON_BENCH_MODEL:-gpt2}
min_time=${BENCH_MIN_TIME:-3}
mkdir -p "$out"
# Google Benchmark and the compilers; PyTorch's CPU step (python3-torch)
# unless NO_TORCH is set.
if [[ -z ${NO_TORCH:-} ]]; then bash scripts/deps.sh python3-torch; else bash scripts/deps.sh; fi

# Not BLAS: the default step stays on the pure-Eigen products (step_bf16 uses
# the library's own bf16 kernel, in every build, on CPUs with AVX512-BF16).
opts=()
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUON_ENABLE_CUDA=OFF \
  -DMUON_BUILD_TESTS=OFF -DMUON_BUILD_EXAMPLES=OFF "${opts[@]}" >/dev/null
cmake --build "$build" -j "$jobs" --target bench_step

echo "== bench_step (threads: $threads; model: $model, layers $layers) =="
MUON_BENCH_THREADS=$threads MUON_BENCH_LAYERS=$layers MUON_BENCH_MODEL=$model \
  "$build/bench/bench_step" --benchmark_min_time="$min_time" \
  --benchmark_repetitions="${BENCH_REPETITIONS:-3}" --benchmark_filter="${BENCH_FILTER:-.}" \
  --benchmark_format=json \
  --benchmark_out="$out/bench_step.json" --benchmark_out_format=json >/dev/null

torch_py=/usr/bin/python3
torch_files=()
if [[ -z ${NO_TORCH:-} ]] && "$torch_py" -c "import torch" 2>/dev/null; then
  run_torch() {  # torch threads, openblas threads, dtype, output
    OPENBLAS_NUM_THREADS=$2 OMP_NUM_THREADS=$1 "$torch_py" scripts/torch_cpu_step.py \
      --threads "$1" --dtype "$3" --model "$model" --layers "$layers" --min-time "$min_time" >"$4"
    torch_files+=("$4")
  }
  IFS=, read -ra counts <<<"$threads"
  for t in "${counts[@]}"; do
    for dtype in fp32 bf16; do
      echo "== PyTorch step $dtype (torch threads $t, OpenBLAS threads $t) =="
      run_torch "$t" "$t" "$dtype" "$out/torch_${dtype}_t$t.json"
    done
  done
  # PyTorch's best configuration: every torch x OpenBLAS thread split.
  for t in $(seq 1 "$cores"); do
    for b in $(seq 1 "$cores"); do
      [[ $t == "$b" ]] && continue
      for dtype in fp32 bf16; do
        echo "== PyTorch step $dtype (torch threads $t, OpenBLAS threads $b) =="
        run_torch "$t" "$b" "$dtype" "$out/torch_${dtype}_t${t}_blas$b.json"
      done
    done
  done
else
  echo "PyTorch not found (Debian: apt-get install python3-torch); torch columns skipped"
fi

python3 scripts/cpu_ratios.py step "$out/bench_step.json" "${torch_files[@]}" || true
echo
python3 scripts/bench_roofline.py "$out/bench_step.json"
echo "JSON in $out"
