#!/usr/bin/env python3
"""PyTorch's CPU Newton-Schulz (Jordan quintic, 5 steps) on the shapes of
bench/bench_cpu.cpp, in fp32 and bf16, as torch.optim.Muon computes it:

    X = G / (||G||_F + 1e-7)  (transposed when tall);  5 x: A = X X^T;
    B = b A + c A A;  X = a X + B X

Prints one JSON object: {"context": ..., "benchmarks": [{"name":
"torch_<dtype>/t<threads>/<rows>x<cols>", "real_time": ms, "time_unit": "ms",
"GFLOPs": ..., "orth_err": ..., "ns_rounding": ...}, ...]}, the same
fields Google Benchmark writes (and bench/bench_cpu.cpp's counters:
ns_rounding = ||O - O64||_F / ||O64||_F against the same NS5 in float64), so scripts/bench_cpu.sh and scripts/plot_bench.py read both alike.

With --inputs DIR, each shape's input is read from DIR/<rows>x<cols>.f32
(raw float32, row-major, as bench/bench_cpu writes them under
MUON_BENCH_DUMP_INPUTS=DIR), so both programs orthogonalize the same
matrices; otherwise a seeded Gaussian of the same shape is drawn here.

Usage: torch_cpu_ns.py [--threads N] [--min-time S] [--shapes 256x256,...]
                       [--inputs DIR]
Needs PyTorch (Debian: apt-get install python3-torch; run with /usr/bin/python3).
"""
import argparse
import json
import os
import platform
import time

import torch

A, B, C = 3.4445, -4.7750, 2.0315
STEPS = 5
SHAPES = [(256, 256), (512, 512), (1024, 1024), (768, 3072), (1024, 4096), (2048, 2048)]


def ns5(G: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    X = G.to(dtype)
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T
    X = X / (X.norm() + 1e-7)
    for _ in range(STEPS):
        Am = X @ X.T
        Bm = B * Am + C * Am @ Am
        X = A * X + Bm @ X
    if tall:
        X = X.T
    return X


def orth_err(O: torch.Tensor) -> float:
    O = O.double()
    if O.size(0) > O.size(1):
        O = O.T
    return float((O @ O.T - torch.eye(O.size(0), dtype=torch.float64)).norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: all cores)")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement")
    ap.add_argument("--shapes", default="", help="comma list rowsxcols (default: all)")
    ap.add_argument("--inputs", default="", help="folder of bench_cpu's inputs (<r>x<c>.f32)")
    args = ap.parse_args()
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    out = {"context": {"torch": torch.__version__, "threads": threads,
                       "inputs": "bench_cpu's" if args.inputs else "own seeded Gaussian",
                       "machine": platform.processor() or platform.machine(),
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
           "benchmarks": []}
    for rows, cols in shapes:
        if args.inputs:
            with open(os.path.join(args.inputs, f"{rows}x{cols}.f32"), "rb") as f:
                raw = bytearray(f.read())
            if len(raw) != 4 * rows * cols:
                raise SystemExit(f"torch_cpu_ns.py: {rows}x{cols}.f32 has {len(raw)} bytes,"
                                 f" expected {4 * rows * cols}")
            G = torch.frombuffer(raw, dtype=torch.float32).reshape(rows, cols)
        else:
            gen = torch.Generator().manual_seed(7919 * rows + cols)
            G = torch.randn(rows, cols, generator=gen)
        m, n = min(rows, cols), max(rows, cols)
        flops = STEPS * (4 * m * m * n + 2 * m ** 3)
        with torch.no_grad():
            ref = ns5(G.double(), torch.float64)
        for name, dtype in (("torch_fp32", torch.float32), ("torch_bf16", torch.bfloat16)):
            with torch.no_grad():
                O = ns5(G, dtype)  # warm-up (and the result whose quality we report)
                iters, start = 0, time.perf_counter()
                while True:
                    ns5(G, dtype)
                    iters += 1
                    elapsed = time.perf_counter() - start
                    if elapsed >= args.min_time:
                        break
            ms = 1e3 * elapsed / iters
            out["benchmarks"].append({
                "name": f"{name}/t{threads}/{rows}x{cols}", "real_time": ms, "time_unit": "ms",
                "iterations": iters, "GFLOPs": flops / (ms * 1e-3) * 1e-9,
                "orth_err": orth_err(O.float()),
                "ns_rounding": float((O.double() - ref).norm() / ref.norm())})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
