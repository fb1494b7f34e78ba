#!/usr/bin/env python3
"""PyTorch GPU baselines for bench/cuda/bench_cuda.cu, on the same shapes.

  ns5/<rows>x<cols>/batch:<b>   eager Newton-Schulz, the reference formulation:
                                bf16, Jordan's (3.4445, -4.7750, 2.0315) x 5,
                                X / (||X||_F + 1e-7), tall inputs transposed
  muon_step/<rows>x<cols>       torch.optim.Muon.step on one parameter
  muon_step/gpt2-small          torch.optim.Muon.step over GPT-2 small's 48
                                matrices (12 x {2304x768, 768x768, 3072x768, 768x3072})

Timed with CUDA events (mean over --iters after --warmup calls). Writes JSON:
{"device": ..., "torch": ..., "results": {name: {"ms": ..., "tflops": ...}}}
TFLOP/s counts 5 (4 m^2 n + 2 m^3) per m x n matrix (m <= n), like bench_cuda.
"""
import argparse
import json
import sys

import torch

JORDAN = (3.4445, -4.7750, 2.0315)
SHAPES = [(768, 3072, 1), (1024, 4096, 1), (4096, 4096, 1), (4096, 14336, 1),
          (8192, 8192, 1), (1024, 1024, 32)]
GPT2 = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12


def ns5(G, steps=5, eps=1e-7):
    a, b, c = JORDAN
    X = G.to(torch.bfloat16)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


def flops(rows, cols, steps=5):
    m, n = min(rows, cols), max(rows, cols)
    return steps * (4 * m * m * n + 2 * m ** 3)


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters


def muon_step_fn(shapes, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    params = []
    for r, c in shapes:
        p = torch.nn.Parameter(0.02 * torch.randn(r, c, device="cuda", generator=g))
        p.grad = 0.02 * torch.randn(r, c, device="cuda", generator=g)
        params.append(p)
    opt = torch.optim.Muon(params)  # defaults: lr 1e-3, wd 0.1, mu 0.95, nesterov, 5 steps
    return opt.step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="-", help="JSON output file (- for stdout)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: skipping", file=sys.stderr)
        return 0
    res = {}
    for r, c, b in SHAPES:
        x = torch.randn(b, r, c, device="cuda", dtype=torch.bfloat16) if b > 1 else \
            torch.randn(r, c, device="cuda", dtype=torch.bfloat16)
        ms = timed(lambda: ns5(x), args.warmup, args.iters)
        res[f"ns5/{r}x{c}/batch:{b}"] = {"ms": ms, "tflops": flops(r, c) * b / (ms * 1e-3) / 1e12}
        if b == 1:
            step = muon_step_fn([(r, c)])
            ms = timed(step, args.warmup, args.iters)
            res[f"muon_step/{r}x{c}"] = {"ms": ms, "tflops": flops(r, c) / (ms * 1e-3) / 1e12}
    step = muon_step_fn(GPT2)
    ms = timed(step, args.warmup, args.iters)
    res["muon_step/gpt2-small"] = {"ms": ms,
                                   "tflops": sum(flops(r, c) for r, c in GPT2) / (ms * 1e-3) / 1e12}
    doc = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": res}
    text = json.dumps(doc, indent=2)
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
