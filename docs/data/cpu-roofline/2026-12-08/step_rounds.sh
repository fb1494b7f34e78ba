#!/bin/bash
# The bf16 whole-step rounds of 2026-12-08 (docs/performance_cpu.md): per
# round, our bench_step step_bf16 (GPT-2 small, 12 layers) at t = 1, 2, then
# PyTorch's bf16 step (scripts/torch_cpu_step.py) at t = 1, 2; prints the ratios.
# Usage (repository root, after scripts/bench_step.sh built build/bench_step):
#   bash docs/data/cpu-roofline/2026-12-08/step_rounds.sh <out_dir>
set -euo pipefail
out=${1:?out dir}
mkdir -p "$out"
for round in 1 2 3; do
  MUON_BENCH_THREADS=1,2 build/bench_step/bench/bench_step --benchmark_filter='^step_bf16/' \
    --benchmark_min_time=2 --benchmark_format=json --benchmark_out="$out/ours_step_$round.json" \
    --benchmark_out_format=json >/dev/null 2>&1
  for t in 1 2; do
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=$t /usr/bin/python3 scripts/torch_cpu_step.py --threads $t \
      --dtype bf16 --model gpt2 --layers 12 --min-time 4 >"$out/torch_step_t${t}_$round.json" 2>/dev/null
  done
  /usr/bin/python3 - "$out" "$round" <<'PY'
import json, sys
out, r = sys.argv[1], sys.argv[2]
ours = {b['name'].split('/')[1]: b['real_time']
        for b in json.load(open(f'{out}/ours_step_{r}.json'))['benchmarks']}
torch = {t: json.load(open(f'{out}/torch_step_{t}_{r}.json'))['benchmarks'][0]['real_time']
         for t in ('t1', 't2')}
print('round', r, 'ours', {k: round(v, 1) for k, v in ours.items()},
      'torch', {k: round(v, 1) for k, v in torch.items()},
      'ratio t1 %.3f t2 %.3f best/best %.3f' % (ours['t1'] / torch['t1'], ours['t2'] / torch['t2'],
                                                min(ours.values()) / min(torch.values())))
PY
done
