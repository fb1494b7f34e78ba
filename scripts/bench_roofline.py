#!/usr/bin/env python3
"""The roofline table of a bench_step run (bench/bench_step.cpp).

Reads the JSON of bench_step (--benchmark_out) and prints, per thread count,
this machine's limits measured in the same run -- Eigen's sgemm rate, the
bf16 dot-product peak (vdpbf16ps) and the STREAM-like triad bandwidth -- and
every part of the GPT-2-small step against the limit that bounds it:

  - the step's Newton-Schulz products as GFLOP/s on the minimal flop count
    (5 (3 m^2 n + m^3) per Muon matrix) over the whole step time, against
    sgemm (fp32) or the bf16 dot peak (step_bf16);
  - the elementwise passes as bytes per second against the triad: AdamW on
    GPT-2's token embedding (at the minimum 28 B per element and at what its
    two passes move, 44 B), its check alone (16 B), the Muon momentum + input
    pass (16 B) and the update pass (12 B) over 768x3072 and 3072x768
    matrices (one thread: in the step they run one per matrix).

Medians of the repetitions where the run has them. Usage:
  python3 scripts/bench_roofline.py bench_step.json [--markdown]
"""
import argparse
import json
import re
import sys


def runs(path):
    with open(path) as f:
        data = json.load(f)
    by_name = {}
    has_median = any(b.get("aggregate_name") == "median" for b in data["benchmarks"])
    for b in data["benchmarks"]:
        if has_median and b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        if has_median and b.get("run_type") != "aggregate" and b.get("repetitions", 1) > 1:
            continue
        name = b.get("run_name", b["name"]).replace("/real_time", "")
        name = re.sub(r"_median$", "", name)
        by_name[name] = b
    return by_name


def ms(b):
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
    return b["real_time"] * scale


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    r = runs(args.json)
    threads = sorted({int(m.group(1)) for n in r for m in [re.match(r"\w+/t(\d+)", n)] if m})
    rows = []

    def find(prefix):
        for n, b in r.items():
            if n == prefix or n.startswith(prefix + "/"):
                return b
        return None

    limits = {}
    for t in threads:
        sg, bf, tr = find(f"sgemm/t{t}"), find(f"bf16_dot/t{t}"), find(f"triad/t{t}")
        limits[t] = (sg and sg["GFLOPs"], bf and bf["GFLOPs"], tr and tr["GBps"] * 1e-9)
    head = ["threads", "sgemm GFLOP/s", "bf16 dot GFLOP/s", "triad GB/s"]
    lim_rows = [[str(t)] + [f"{x:.1f}" if x else "-" for x in limits[t]] for t in threads]

    for t in threads:
        sgemm, bf16, triad = limits[t]
        for what, peak, peak_name in (("step", sgemm, "sgemm"), ("step_bf16", bf16, "bf16 dot"),
                                      ("plain_eigen", sgemm, "sgemm")):
            b = find(f"{what}/t{t}")
            if b and "GFLOPs" in b:
                rows.append([str(t), f"{what}: NS products (minimal flops) over the step", f"{ms(b):.1f} ms",
                             f"{b['GFLOPs']:.1f} GFLOP/s", f"{peak_name} {peak:.1f}" if peak else "-",
                             f"{b['GFLOPs'] / peak:.2f}" if peak else "-"])
        b = find(f"adamw/t{t}")
        if b:
            for label, key in (("AdamW wte, 28 B/elt (minimum)", "GBps_min28"),
                               ("AdamW wte, 44 B/elt (check 16 + write 28)", "GBps")):
                rows.append([str(t), label, f"{b['ns_per_element']:.2f} ns/elt",
                             f"{b[key] * 1e-9:.1f} GB/s", f"triad {triad:.1f}" if triad else "-",
                             f"{b[key] * 1e-9 / triad:.2f}" if triad else "-"])
        b = find(f"adamw_check/t{t}")
        if b:
            rows.append([str(t), "AdamW wte check alone, 16 B/elt", f"{b['ns_per_element']:.2f} ns/elt",
                         f"{b['GBps'] * 1e-9:.1f} GB/s", f"triad {triad:.1f}" if triad else "-",
                         f"{b['GBps'] * 1e-9 / triad:.2f}" if triad else "-"])
    triad1 = limits.get(1, (None, None, None))[2]
    for n, b in sorted(r.items()):
        m = re.match(r"(muon_load|muon_update)/t1/(\d+x\d+)", n)
        if not m:
            continue
        label = {"muon_load": "Muon momentum + NS input, 16 B/elt",
                 "muon_update": "Muon update, 12 B/elt"}[m.group(1)] + f" ({m.group(2)})"
        rows.append(["1", label, f"{b['ns_per_element']:.2f} ns/elt", f"{b['GBps'] * 1e-9:.1f} GB/s",
                     f"triad {triad1:.1f}" if triad1 else "-",
                     f"{b['GBps'] * 1e-9 / triad1:.2f}" if triad1 else "-"])
    for n in ("adamw", "adamw_check"):
        a, b = find(f"{n}/t1"), find(f"{n}/t2")
        if a and b:
            rows.append(["2/1", f"{n}: speed-up from the second thread", "", f"{ms(a) / ms(b):.2f}x", "", ""])
    body = ["threads", "part", "time", "rate", "limit (same run)", "of limit"]

    def table(header, rs):
        if args.markdown:
            out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out += ["| " + " | ".join(x) + " |" for x in rs]
        else:
            w = [max(len(header[i]), *(len(x[i]) for x in rs)) if rs else len(header[i])
                 for i in range(len(header))]
            out = ["  ".join(h.ljust(w[i]) for i, h in enumerate(header))]
            out += ["  ".join(c.ljust(w[i]) for i, c in enumerate(x)) for x in rs]
        return "\n".join(out)

    print("== This machine's limits, measured in the same run ==")
    print(table(head, lim_rows))
    print()
    print("== The GPT-2-small step against them ==")
    print(table(body, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
