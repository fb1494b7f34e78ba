#!/usr/bin/env python3
"""Ratio tables of the CPU benchmarks, at equal thread counts.

    python3 scripts/cpu_ratios.py ns   bench_cpu.json  [torch_cpu_t*.json ...] [--markdown]
    python3 scripts/cpu_ratios.py step bench_step.json [torch_step_*.json ...] [--markdown]

ns: bench/bench_cpu (+ scripts/torch_cpu_ns.py): per thread count, every
method's time over the hand-written Eigen NS5 of the same run and thread
count; then the one-shot call over the reused workspace, and bf16 against
PyTorch's bf16 with the error counters.

step: bench/bench_step (+ scripts/torch_cpu_step.py): the optimizer's memory;
per thread count the step, the checks, the plain Eigen loop and PyTorch's
step, as times, ratios to the plain loop, GFLOP/s and the fraction of the
sgemm rate of the same run; then PyTorch's best configuration over torch x
OpenBLAS threads against our best step.

Names are "<method>/t<threads>/<what>" (Google Benchmark's suffixes are
dropped); with --benchmark_repetitions the median is used. Standard library
only.
"""
import argparse
import json
import sys


def load(paths):
    rows = {}  # (threads, what) -> method -> benchmark (+ "_context")
    for path in paths:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        for b in doc["benchmarks"]:
            if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
                continue  # with --benchmark_repetitions, the median stands for the run
            if b.get("run_type") == "iteration" and b.get("repetitions", 1) > 1:
                continue
            name = b["name"]
            for cut in ("/min_time", "/iterations", "/real_time"):
                name = name.split(cut)[0]
            if name.count("/") < 2:  # bench_step's roofline entries (scripts/bench_roofline.py)
                continue
            method, t, what = name.split("/")[:3]
            b["_context"] = doc.get("context", {})
            key = (int(t[1:]), what)
            blas = str(b["_context"].get("openblas_threads", t[1:]))
            if method.startswith("torch_step") and blas != t[1:]:
                method += f"@blas{blas}"  # an unequal split: only for the best-configuration line
            rows.setdefault(key, {})[method] = b
    return rows


def table(header, lines, markdown):
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
                  for i, h in enumerate(header)]
        print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        for line in lines:
            print("  ".join(c.rjust(w) for c, w in zip(line, widths)))


def ns(rows, markdown):
    methods = ["muon_oneshot", "muon_reused", "muon_default", "muon_standard", "muon_gram", "muon_blas",
               "muon_bf16", "muon_bf16_gram", "polar_eigh", "polar_svd", "torch_fp32",
               "torch_bf16"]
    for threads in sorted({t for t, _ in rows}):
        print(f"\nthreads {threads}: time / plain_eigen at {threads} thread(s), same run"
              " (< 1 is faster)\n")
        lines = []
        for (t, shape), r in rows.items():
            base = r.get("plain_eigen")
            if t != threads or not base:
                continue
            lines.append([shape, f"{base['real_time']:.1f}"] +
                         [f"{r[m]['real_time'] / base['real_time']:.3f}" if m in r else "-"
                          for m in methods])
        table(["shape", "plain ms"] + methods, lines, markdown)
    print("\none-shot orthogonalize() / reused workspace; bf16 / torch bf16 at the same threads"
          " with orth_err and ns_rounding (ours vs torch)\n")
    lines = []
    for (t, shape), r in rows.items():
        if "muon_default" not in r:
            continue
        line = [str(t), shape,
                f"{r['muon_oneshot']['real_time'] / r['muon_reused']['real_time']:.3f}"
                if "muon_oneshot" in r and "muon_reused" in r else "-"]
        if "muon_bf16" in r and "torch_bf16" in r:
            a, b = r["muon_bf16"], r["torch_bf16"]
            line += [f"{a['real_time'] / b['real_time']:.3f}",
                     f"{a['orth_err']:.4g} vs {b['orth_err']:.4g}",
                     f"{a.get('ns_rounding', float('nan')):.3g} vs"
                     f" {b.get('ns_rounding', float('nan')):.3g}"]
        else:
            line += ["-", "-", "-"]
        lines.append(line)
    table(["threads", "shape", "oneshot/reused", "bf16/torch bf16", "orth_err", "ns_rounding"],
          lines, markdown)


def step(rows, markdown):
    for (t, what), r in sorted(rows.items()):
        if "memory" in r:
            b = r["memory"]
            print(f"memory (t{t}, {what}): optimizer heap {b['optimizer_MB']:.1f} MB, resident"
                  f" growth {b['rss_growth_MB']:.1f} MB; Muon weights {b['muon_weight_MB']:.1f} MB,"
                  f" AdamW parameters {b['adamw_param_MB']:.1f} MB; beyond momentum and moments"
                  f" {b['beyond_state_MB']:.1f} MB; Muon side (momentum + workspaces) ="
                  f" {b['muon_side_x_weights']:.3f} x the Muon weights;"
                  f" {int(b['workspaces'])} workspaces")
    print("\ntime per step; ratios to plain_eigen at the same threads (< 1 is faster);"
          " GFLOP/s by the minimal NS flop count and as a fraction of the same run's sgemm\n")
    lines = []
    for (t, what), r in sorted(rows.items()):
        base, peak = r.get("plain_eigen"), r.get("sgemm", {}).get("GFLOPs")
        for method in ("step", "step_bf16", "check", "plain_eigen", "torch_step_fp32",
                       "torch_step_bf16"):
            if method not in r:
                continue
            b = r[method]
            g = b.get("GFLOPs")
            lines.append([str(t), what, method, f"{b['real_time']:.1f}",
                          f"{b['real_time'] / base['real_time']:.3f}" if base else "-",
                          f"{g:.1f}" if g else "-",
                          f"{g / peak:.2f}" if g and peak else "-",
                          f"{peak:.1f}" if peak else "-"])
    table(["threads", "model", "what", "ms", "/ plain", "GFLOP/s", "of sgemm", "sgemm GFLOP/s"],
          lines, markdown)
    print("\nPyTorch's best configuration (torch threads x OpenBLAS threads) against our"
          " best step of the same precision (fp32: step, bf16: step_bf16)\n")
    lines = []
    for dtype, method in (("fp32", "step"), ("bf16", "step_bf16")):
        ours = [b for r in rows.values() for m, b in r.items() if m == method]
        if not ours:
            continue
        best = min(ours, key=lambda b: b["real_time"])
        runs = [(t, b) for (t, _), r in rows.items() for m, b in r.items()
                if m.startswith(f"torch_step_{dtype}")]
        if not runs:
            continue
        t, b = min(runs, key=lambda x: x[1]["real_time"])
        lines.append([dtype, f"{b['real_time']:.1f}", str(t),
                      str(b["_context"].get("openblas_threads")),
                      f"{best['real_time']:.1f} ({best['name'].split('/')[1]})",
                      f"{best['real_time'] / b['real_time']:.3f}"])
    table(["torch dtype", "torch best ms", "torch threads", "OpenBLAS threads", "our best ms",
           "ours / torch"], lines, markdown)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["ns", "step"])
    ap.add_argument("json", nargs="+")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    rows = load(args.json)
    if not rows:
        sys.exit("cpu_ratios: no benchmark results")
    (ns if args.kind == "ns" else step)(rows, args.markdown)


if __name__ == "__main__":
    main()
