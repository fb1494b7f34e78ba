#!/usr/bin/env python3
"""One hybrid Muon + AdamW optimizer step over GPT-2 small's parameters in
PyTorch CPU ops: the same algorithm and defaults as bench/bench_step.cpp's
`step` and `plain_eigen` (Nesterov EMA momentum 0.95, Jordan's NS5, lr scaled
by sqrt(max(1, rows/cols)), decoupled weight decay 0.1; AdamW with torch's
defaults on embeddings, norms and biases).

    buf = 0.95 buf + 0.05 g;  u = 0.05 g + 0.95 buf
    X = u / (||u||_F + 1e-7) (transposed when tall);  5 x: A = X X^T;
    B = b A + c A A;  X = a X + B X
    W = W (1 - lr wd) - lr sqrt(max(1, rows/cols)) X

The Newton-Schulz runs in fp32 or bf16 (--dtype; the momentum and weights
stay fp32, as torch.optim.Muon keeps them). Prints one JSON object in Google
Benchmark's layout: {"context": ..., "benchmarks": [{"name":
"torch_step_<dtype>/t<threads>/<model>", "real_time": ms, ...}]}.

Threads: torch.set_num_threads(--threads). PyTorch's fp32 matmul may run in
the system BLAS (OpenBLAS), which threads on its own: set
OPENBLAS_NUM_THREADS (and OMP_NUM_THREADS) in the environment before starting
this script; scripts/bench_step.sh does, and records what it set.

Usage: torch_cpu_step.py [--threads N] [--model gpt2|mlp|small] [--layers L]
                         [--dtype fp32|bf16] [--min-time S]
Needs PyTorch (Debian: apt-get install python3-torch; run with /usr/bin/python3).
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch

# The same NS5 as the per-matrix comparison (this script's folder is on sys.path).
from torch_cpu_ns import STEPS, ns5


def model_params(model: str, layers: int):
    if model == "mlp":  # examples/fashion_mnist's default MLP
        shapes = [("fc1.weight", (512, 784)), ("fc1.bias", (512,)), ("fc2.weight", (512, 512)),
                  ("fc2.bias", (512,)), ("classifier.weight", (10, 512)), ("classifier.bias", (10,))]
        return draw(shapes)
    if model == "small":  # bench_step's gpt:d192x6, a character-level GPT
        return draw(gpt_shapes(6, 192, 65, 256))
    return draw(gpt_shapes(layers, 768, 50257, 1024))  # GPT-2 small


def gpt_shapes(layers: int, d: int, vocab: int, context: int):
    shapes = [("wte.weight", (vocab, d)), ("wpe.weight", (context, d))]
    for layer in range(layers):
        h = f"h.{layer}."
        shapes += [(h + "ln_1.weight", (d,)), (h + "ln_1.bias", (d,)),
                   (h + "attn.c_attn.weight", (d, 3 * d)), (h + "attn.c_attn.bias", (3 * d,)),
                   (h + "attn.c_proj.weight", (d, d)), (h + "attn.c_proj.bias", (d,)),
                   (h + "ln_2.weight", (d,)), (h + "ln_2.bias", (d,)),
                   (h + "mlp.c_fc.weight", (d, 4 * d)), (h + "mlp.c_fc.bias", (4 * d,)),
                   (h + "mlp.c_proj.weight", (4 * d, d)), (h + "mlp.c_proj.bias", (d,))]
    shapes += [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]
    return shapes


def draw(shapes):
    gen = torch.Generator().manual_seed(1)
    params = []
    for name, shape in shapes:
        p = torch.nn.Parameter(0.02 * torch.randn(shape, generator=gen))
        p.grad = 0.02 * torch.randn(shape, generator=gen)
        params.append((name, p))
    return params


def is_muon(name: str, p: torch.Tensor) -> bool:
    return p.ndim == 2 and not any(k in name for k in ("wte", "wpe", "classifier"))


class HybridStep:
    def __init__(self, params, dtype):
        self.dtype = dtype
        self.muon = [p for n, p in params if is_muon(n, p)]
        self.buf = [torch.zeros_like(p) for p in self.muon]
        self.adamw = torch.optim.AdamW([p for n, p in params if not is_muon(n, p)], lr=1e-3)
        self.lr, self.mu, self.wd = 0.02, 0.95, 0.1

    @torch.no_grad()
    def step(self):
        for p, buf in zip(self.muon, self.buf):
            buf.lerp_(p.grad, 1 - self.mu)
            u = p.grad.lerp(buf, self.mu)
            O = ns5(u, self.dtype)
            scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
            p.mul_(1 - self.lr * self.wd)
            p.add_(O.to(p.dtype), alpha=-self.lr * scale)
        self.adamw.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: all cores)")
    ap.add_argument("--model", choices=["gpt2", "mlp", "small"], default="gpt2")
    ap.add_argument("--layers", type=int, default=12, help="GPT-2 blocks")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--min-time", type=float, default=5.0, help="seconds of timed steps")
    args = ap.parse_args()
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    params = model_params(args.model, args.layers)
    label = {"mlp": "mlp:784-512-512-10", "small": "gpt:d192x6"}.get(
        args.model, f"gpt2_layers:{args.layers}")
    opt = HybridStep(params, dtype)
    opt.step()  # warm-up: state allocated, kernels chosen
    times = []
    start = time.perf_counter()
    while not times or time.perf_counter() - start < args.min_time:
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    m = [min(p.size(0), p.size(1)) for p in opt.muon]
    n = [max(p.size(0), p.size(1)) for p in opt.muon]
    flops = sum(STEPS * (3 * a * a * b + a ** 3) for a, b in zip(m, n))
    ms = 1e3 * statistics.median(times)
    out = {"context": {"torch": torch.__version__, "threads": threads,
                       "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
                       "blas": "see torch.__config__.show()",
                       "machine": platform.processor() or platform.machine(),
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
           "benchmarks": [{"name": f"torch_step_{args.dtype}/t{threads}/{label}",
                           "real_time": ms, "time_unit": "ms", "iterations": len(times),
                           "best_ms": 1e3 * min(times), "GFLOPs": flops / (ms * 1e-3) * 1e-9}]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
