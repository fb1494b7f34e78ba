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

python3 - "$out/bench_cuda.json" "$out/torch_gpu.json" <<'PY'
import json, sys
ours = {b["name"]: b for b in json.load(open(sys.argv[1]))["benchmarks"]}
torch_doc = json.load(open(sys.argv[2]))
ref = torch_doc["results"]
print(f"\ndevice: {torch_doc['device']}  torch {torch_doc['torch']}")
print(f"{'comparison':58s} {'ours ms':>9s} {'torch ms':>9s} {'ratio':>7s} {'ours TF/s':>10s} {'torch TF/s':>10s}")
def row(label, mine, theirs):
    if mine not in ours or theirs not in ref:
        return
    a, b = ours[mine], ref[theirs]
    print(f"{label:58s} {a['ms']:9.3f} {b['ms']:9.3f} {a['ms'] / b['ms']:7.3f} "
          f"{a.get('TFLOP/s', 0):10.1f} {b['tflops']:10.1f}")
targets = {"768x3072": 0.30, "4096x4096": 0.70, "4096x14336": 0.55, "gpt2-small": 0.25}
for shape in ["768x3072", "1024x4096", "4096x4096", "4096x14336", "8192x8192"]:
    for mode in ["eager", "graph"]:
        row(f"NS5 bf16 {shape} ({mode}) / torch NS5 eager", f"ns/bf16/{shape}/batch:1/{mode}",
            f"ns5/{shape}/batch:1")
    row(f"step {shape} (graph) / torch.optim.Muon.step [target {targets.get(shape, '-')}]",
        f"step/{shape}/graph", f"muon_step/{shape}")
for mode in ["eager", "graph"]:
    row(f"NS5 bf16 32x1024x1024 ({mode}) / torch batched NS5", f"ns/bf16/1024x1024/batch:32/{mode}",
        "ns5/1024x1024/batch:32")
row("GPT-2 small step (graph) / torch.optim.Muon.step [target 0.25]", "step/gpt2-small/graph",
    "muon_step/gpt2-small")
row("GPT-2 small step (eager) / torch.optim.Muon.step", "step/gpt2-small/eager",
    "muon_step/gpt2-small")
PY
