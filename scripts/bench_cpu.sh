#!/usr/bin/env bash
# CPU speed, one command: builds bench/bench_cpu (default products, and with
# MUON_USE_BLAS / MUON_USE_BF16 when their packages are installed), runs it and
# PyTorch's CPU NS5 (scripts/torch_cpu_ns.py) back to back, keeps the JSON and
# prints every method's time as a ratio to the hand-written Eigen NS5 measured
# in the same run (lower is faster), plus bf16 against PyTorch bf16. PyTorch
# orthogonalizes the same input matrices (written by bench_cpu to
# out_dir/inputs), so the error counters compare like with like.
#
# Usage: scripts/bench_cpu.sh [out_dir]      (default build/bench_cpu_results)
# Environment: BENCH_FILTER (Google Benchmark regex), BENCH_MIN_TIME (s, 0.5),
#   JOBS (build parallelism), MUON_NUM_THREADS (threads of this library; torch
#   gets the same count), BUILD_DIR (default build/bench_cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/bench_cpu_results}
build=${BUILD_DIR:-build/bench_cpu}
jobs=${JOBS:-2}
threads=${MUON_NUM_THREADS:-$(nproc)}
mkdir -p "$out"

opts=()
dpkg-query -W -f='${Status}' libopenblas-dev 2>/dev/null | grep -q "install ok installed" &&
  opts+=(-DMUON_USE_BLAS=ON)
dpkg-query -W -f='${Status}' libdnnl-dev 2>/dev/null | grep -q "install ok installed" &&
  opts+=(-DMUON_USE_BF16=ON)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUON_ENABLE_CUDA=OFF \
  -DMUON_BUILD_TESTS=OFF -DMUON_BUILD_EXAMPLES=OFF "${opts[@]}" >/dev/null
cmake --build "$build" -j "$jobs" --target bench_cpu

echo "== bench_cpu (threads: $threads; options: ${opts[*]:-none}) =="
mkdir -p "$out/inputs"
MUON_BENCH_DUMP_INPUTS="$out/inputs" MUON_NUM_THREADS=$threads "$build/bench/bench_cpu" --benchmark_filter="${BENCH_FILTER:-.}" \
  --benchmark_min_time="${BENCH_MIN_TIME:-0.5}" --benchmark_format=json \
  --benchmark_out="$out/bench_cpu.json" --benchmark_out_format=json >/dev/null

torch_py=/usr/bin/python3
if "$torch_py" -c "import torch" 2>/dev/null; then
  echo "== PyTorch CPU NS5 (threads: $threads) =="
  "$torch_py" scripts/torch_cpu_ns.py --threads "$threads" --inputs "$out/inputs" \
    --min-time "${BENCH_MIN_TIME:-0.5}" >"$out/torch_cpu.json"
else
  echo "PyTorch not found (Debian: apt-get install python3-torch); torch columns skipped"
  echo '{"benchmarks": []}' >"$out/torch_cpu.json"
fi

python3 - "$out/bench_cpu.json" "$out/torch_cpu.json" <<'EOF'
import json, sys
rows = {}
for path in sys.argv[1:]:
    for b in json.load(open(path))["benchmarks"]:
        name = b["name"].split("/min_time")[0].replace("/real_time", "")
        method, shape = name.split("/")[:2]
        rows.setdefault(shape, {})[method] = b
methods = ["muon_default", "muon_standard", "muon_gram", "muon_1thread", "muon_blas",
           "muon_bf16", "muon_bf16_gram", "polar_eigh", "polar_svd", "torch_fp32", "torch_bf16"]
print("\ntime / plain_eigen (same run; < 1 is faster)")
print(f"{'shape':>10} {'plain ms':>9} " + " ".join(f"{m:>13}" for m in methods))
for shape, r in rows.items():
    base = r.get("plain_eigen")
    if not base:
        continue
    cells = []
    for m in methods:
        cells.append(f"{r[m]['real_time'] / base['real_time']:13.3f}" if m in r else f"{'-':>13}")
    print(f"{shape:>10} {base['real_time']:9.1f} " + " ".join(cells))
print("\nfastest muon path / polar_eigh, muon_bf16 / torch_bf16 (time ratios),"
      " orth_err and ns_rounding (distance to the float64 NS5), ours vs torch")
for shape, r in rows.items():
    ours = [m for m in ("muon_default", "muon_blas", "muon_bf16") if m in r]
    if not ours:
        continue
    best = min(ours, key=lambda m: r[m]["real_time"])
    line = f"{shape:>10} fastest={best:<12} vs eigh {r[best]['real_time'] / r['polar_eigh']['real_time']:.3f}" \
        if "polar_eigh" in r else f"{shape:>10} fastest={best}"
    if "muon_bf16" in r and "torch_bf16" in r:
        line += (f"   bf16 vs torch bf16 {r['muon_bf16']['real_time'] / r['torch_bf16']['real_time']:.3f}"
                 f" (orth_err {r['muon_bf16']['orth_err']:.3g} vs {r['torch_bf16']['orth_err']:.3g};"
                 f" ns_rounding {r['muon_bf16'].get('ns_rounding', float('nan')):.3g}"
                 f" vs {r['torch_bf16'].get('ns_rounding', float('nan')):.3g})")
    print(line)
EOF
echo "JSON in $out (plot: python3 scripts/plot_bench.py $out/bench_cpu.json $out/torch_cpu.json -o $out/bench_cpu.png)"
