#!/usr/bin/env python3
"""Ratio table of bench/cuda/bench_cuda (Google Benchmark JSON) against
scripts/torch_gpu_ns.py (JSON), measured in the same session: our time over
torch's for each comparison, with the issue's targets where there is one.

    python3 scripts/cuda_ratios.py bench_cuda.json torch_gpu.json
"""
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
