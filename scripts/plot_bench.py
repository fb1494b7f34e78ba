#!/usr/bin/env python3
"""Turns benchmark JSON (Google Benchmark's --benchmark_format=json, or
scripts/torch_cpu_ns.py's output) into a PNG: per shape, each method's time
relative to plain_eigen (log scale, lower is faster).

Usage: plot_bench.py bench_cpu.json [torch_cpu.json ...] -o out.png
Needs matplotlib (Debian: apt-get install python3-matplotlib).
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(paths):
    rows = {}
    for path in paths:
        for b in json.load(open(path))["benchmarks"]:
            name = b["name"].split("/min_time")[0].replace("/real_time", "")
            method, shape = name.split("/")[:2]
            rows.setdefault(shape, {})[method] = float(b["real_time"])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="+")
    ap.add_argument("-o", "--output", default="bench_cpu.png")
    args = ap.parse_args()
    rows = load(args.json)
    shapes = [s for s in rows if "plain_eigen" in rows[s]]
    methods = []
    for s in shapes:
        for m in rows[s]:
            if m != "plain_eigen" and m not in methods:
                methods.append(m)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(shapes)), 5))
    width = 0.8 / max(1, len(methods))
    for k, m in enumerate(methods):
        xs = [i + (k - len(methods) / 2) * width + width / 2 for i, s in enumerate(shapes) if m in rows[s]]
        ys = [rows[s][m] / rows[s]["plain_eigen"] for s in shapes if m in rows[s]]
        ax.bar(xs, ys, width, label=m)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels(shapes)
    ax.set_ylabel("time / plain Eigen NS5 (same run)")
    ax.set_title("Newton-Schulz (5 steps, fp32 unless bf16) on the CPU")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
