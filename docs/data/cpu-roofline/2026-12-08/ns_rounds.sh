#!/bin/bash
# The bf16 NS5 rounds of 2026-12-08 (docs/performance_cpu.md): per round, our
# bench_cpu muon_bf16 at t = 1, 2, then PyTorch's bf16 NS5 at t = 1, 2
# (scripts/torch_cpu_ns.py, Debian's python3-torch); prints our / PyTorch's.
# Usage (repository root, after scripts/bench_step.sh built build/bench_step):
#   bash docs/data/cpu-roofline/2026-12-08/ns_rounds.sh <out_dir>
set -euo pipefail
out=${1:?out dir}
mkdir -p "$out"
for round in 1 2 3 4 5; do
  MUON_BENCH_SHAPES=1024x1024,768x3072 MUON_BENCH_THREADS=1,2 build/bench_step/bench/bench_cpu \
    --benchmark_filter='^muon_bf16/' --benchmark_min_time=1 --benchmark_format=json \
    --benchmark_out="$out/ours_ns_$round.json" --benchmark_out_format=json >/dev/null 2>&1
  for t in 1 2; do
    OPENBLAS_NUM_THREADS=$t OMP_NUM_THREADS=$t /usr/bin/python3 scripts/torch_cpu_ns.py --threads $t \
      --shapes 1024x1024,768x3072 --min-time 1 >"$out/torch_ns_t${t}_$round.json" 2>/dev/null
  done
  /usr/bin/python3 - "$out" "$round" <<'PY'
import json, sys
out, r = sys.argv[1], sys.argv[2]
ours = {'/'.join(b['name'].split('/')[1:3]): b['real_time']
        for b in json.load(open(f'{out}/ours_ns_{r}.json'))['benchmarks']}
cells = []
for t in ('t1', 't2'):
    for b in json.load(open(f'{out}/torch_ns_{t}_{r}.json'))['benchmarks']:
        if b['name'].startswith('torch_bf16'):
            k = f"{t}/{b['name'].split('/')[2]}"
            cells.append(f"{k}: {ours[k]:.1f} vs {b['real_time']:.1f} = {ours[k] / b['real_time']:.3f}")
print('round', r, ' | '.join(cells))
PY
done
