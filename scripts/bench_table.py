#!/usr/bin/env python3
"""Summarize bench_orthogonalize's Google Benchmark JSON as a ratio table.

    python3 scripts/bench_table.py bench.json [--markdown]

One row per (shape, method): time, time relative to the exact SVD and eigh
polar factors of the same shape and run (below 1: faster than the exact
route), orthogonality error, relative distance to U V^T, and effective
GFLOP/s (Newton-Schulz only; general count 4 m^2 n + 2 m^3 per step).
Ratios are taken within one run only: on a shared machine absolute times
drift between runs, ratios much less. Standard library only.
"""

import argparse
import json
import statistics
import sys

TIME_UNIT_TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
EXACT = ("polar_svd", "polar_eigh")


def load_rows(path):
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    context = report.get("context", {})
    threads = int(context.get("muon_threads", "1"))
    # One thread: CPU time (leaves out waiting for a core); several: wall time.
    time_key = "cpu_time" if threads == 1 else "real_time"
    runs = {}
    for b in report.get("benchmarks", []):
        if b.get("error_occurred"):
            continue
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        parts = b.get("run_name", b["name"]).split("/")
        if len(parts) < 2:
            continue
        method, shape = parts[0], parts[1]
        entry = runs.setdefault((shape, method), {"times": [], "median": None})
        ms = b[time_key] * TIME_UNIT_TO_MS[b.get("time_unit", "ns")]
        if b.get("run_type") == "aggregate":
            entry["median"] = ms
        else:
            entry["times"].append(ms)
        for key in ("orth_err", "dist_to_svd", "eff_flop_rate", "label"):
            if key in b:
                entry[key] = b[key]
    rows = []
    for (shape, method), e in runs.items():
        ms = e["median"] if e["median"] is not None else statistics.median(e["times"])
        rows.append(dict(shape=shape, method=method, ms=ms, **{
            k: e.get(k) for k in ("orth_err", "dist_to_svd", "eff_flop_rate", "label")}))
    return context, time_key, rows


def shape_key(shape):
    rows, cols = (int(x) for x in shape.split("x"))
    return (rows * cols, rows)


ORDER = ("NS_jordan", "NS_cubic", "NS_quintic", "NS_polar_express") + EXACT


def method_key(method):
    return (ORDER.index(method) if method in ORDER else len(ORDER), method)


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="output of --benchmark_out=... --benchmark_out_format=json")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    context, time_key, rows = load_rows(args.json)
    if not rows:
        sys.exit(f"bench_table: no benchmark results in {args.json}")
    by_shape = {}
    for r in rows:
        by_shape.setdefault(r["shape"], {})[r["method"]] = r

    header = ["shape", "method", "time ms", "t/t_svd", "t/t_eigh", "orth err", "dist to UV^T",
              "eff GFLOP/s", "label"]
    table = []
    for shape in sorted(by_shape, key=shape_key):
        methods = by_shape[shape]
        svd = methods.get("polar_svd", {}).get("ms")
        eigh = methods.get("polar_eigh", {}).get("ms")
        for method in sorted(methods, key=method_key):
            r = methods[method]
            rate = r["eff_flop_rate"]
            table.append([
                shape, method, fmt(r["ms"], ".2f"),
                fmt(r["ms"] / svd if svd else None, ".3f"),
                fmt(r["ms"] / eigh if eigh else None, ".3f"),
                fmt(r["orth_err"], ".3g"), fmt(r["dist_to_svd"], ".3g"),
                fmt(rate / 1e9 if rate is not None else None, ".1f"),
                r["label"] or "",
            ])

    print(f"time: {time_key} (muon_threads={context.get('muon_threads', '1')}); "
          "t/t_svd, t/t_eigh < 1: faster than that exact polar factor")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in table:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(header[i]), *(len(row[i]) for row in table)) for i in range(len(header))]
    left = {0, 1, len(header) - 1}
    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    print(line(header))
    previous = None
    for row in table:
        if previous is not None and row[0] != previous:
            print()
        print(line(row))
        previous = row[0]


if __name__ == "__main__":
    main()
