#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes docs/transformer_lm.md from one run of the transformer_lm example.

Usage: report.py OUT_DIR DOC.md [--data-link data/transformer_lm]

OUT_DIR holds what the program wrote (info.csv, summary.csv, sweep.csv,
width.csv, qkclip.csv, qkclip_evals.csv, runs.csv, routing.txt, sample.txt,
the PNGs) and what scripts/transformer_lm.sh added (machine.csv, the exact
command). Every number in the page comes from those files; the sentences
that judge them (who wins, whether the optimum transfers) are computed here
from the same numbers, so a rerun that changes the numbers changes them too.
Standard library only.
"""

import csv
import math
import os
import sys

LN2 = math.log(2.0)
NAMES = {
    "muon": "hybrid Muon + AdamW",
    "normuon": "hybrid NorMuon + AdamW",
    "adamw": "`torch::optim::AdamW`",
}


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row and any(row.values())]


def num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def finite(x):
    return isinstance(x, float) and math.isfinite(x)


def g(x, digits=4):
    """A number as the tables print it: 4 significant digits, or 'diverged'."""
    if not finite(x):
        return "diverged" if x == math.inf or math.isnan(x) else str(x)
    return f"{x:.{digits}g}"


def f4(x):
    return f"{x:.4f}" if finite(x) else "diverged"


def ratio(x):
    return f"{x:.2f}×" if finite(x) else "—"


def lr_text(x):
    return f"{x:g}"


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    out, doc = argv[1], argv[2]
    link = "data/transformer_lm"
    if "--data-link" in argv:
        link = argv[argv.index("--data-link") + 1]

    info = {r["key"]: r["value"] for r in read_csv(os.path.join(out, "info.csv"))}
    machine = {r["key"]: r["value"] for r in read_csv(os.path.join(out, "machine.csv"))}
    summary = read_csv(os.path.join(out, "summary.csv"))
    sweep = read_csv(os.path.join(out, "sweep.csv"))
    width = read_csv(os.path.join(out, "width.csv"))
    qk = read_csv(os.path.join(out, "qkclip.csv"))
    qk_evals = read_csv(os.path.join(out, "qkclip_evals.csv"))
    runs = read_csv(os.path.join(out, "runs.csv"))
    routing = open(os.path.join(out, "routing.txt")).read().rstrip() if os.path.exists(
        os.path.join(out, "routing.txt")) else ""
    sample = open(os.path.join(out, "sample.txt"), "rb").read() if os.path.exists(
        os.path.join(out, "sample.txt")) else b""
    if not info or not summary:
        sys.exit(f"report.py: {out} has no info.csv/summary.csv (did the run finish?)")

    by_opt = {r["optimizer"]: r for r in summary}
    steps = int(info["steps"])
    seeds = int(info["seeds"])
    lines = []
    w = lines.append

    # ------------------------------------------------------------ header
    w("# A transformer trained in C++: Muon against AdamW, width transfer and QK-Clip")
    w("")
    w("`examples/transformer_lm/` trains a small GPT over bytes on English text "
      "with libtorch's C++ frontend and asks the questions of \"Practical "
      "Efficiency of Muon for Pretraining\" (Essential AI, arXiv 2505.02222) on "
      "this machine: what a step costs, how many steps Muon needs to reach "
      "AdamW's loss, the wall-clock to that loss, whether the best learning "
      "rate transfers across width, and what QK-Clip does to the attention "
      "logits when the Muon lr is high. **Every number and plot below comes "
      "from one recorded run of `bash scripts/transformer_lm.sh`** (the "
      "page itself is written by `examples/transformer_lm/report.py` from that "
      "run's CSV files); it is a 2-core CPU at toy scale, and the page says "
      "where Muon does not win.")
    w("")

    # ------------------------------------------------------------ headline
    mu, ad = by_opt.get("muon"), by_opt.get("adamw")
    if mu and ad:
        w("## In one paragraph")
        w("")
        x_time, x_steps, x_wall = num(mu["step_time_vs_adamw"]), num(
            mu["steps_to_target_vs_adamw"]), num(mu["wall_to_target_vs_adamw"])
        text = (f"At this run's size ({info['d_model']}-wide, {info['layers']} layers, "
                f"{info['heads']} heads, context {info['context']}, batch "
                f"{info['batch']} sequences, {steps} steps, {seeds} seed"
                f"{'s' if seeds != 1 else ''}), the hybrid "
                f"Muon step took **{ratio(x_time)}** AdamW's time "
                f"({g(num(mu['step_ms_median']), 3)} ms against "
                f"{g(num(ad['step_ms_median']), 3)} ms, median of interleaved steps; the "
                f"optimizer's `step()` alone is {100 * num(mu['optimizer_share']):.0f}% of "
                f"the hybrid's step and {100 * num(ad['optimizer_share']):.0f}% of AdamW's). ")
        if finite(x_steps):
            text += (f"It reached AdamW's final validation loss "
                     f"({f4(num(ad['final_val_mean']))} nats/byte) in "
                     f"**{ratio(x_steps)}** AdamW's steps "
                     f"({num(mu['steps_to_target_mean_curve']):.0f} of {steps}), so the "
                     f"wall-clock to that loss was **{ratio(x_wall)}** AdamW's. ")
        else:
            text += "It did not reach AdamW's final validation loss within the budget. "
        text += (f"Its own final loss was {f4(num(mu['final_val_mean']))} ± "
                 f"{f4(num(mu['final_val_std']))} against AdamW's "
                 f"{f4(num(ad['final_val_mean']))} ± {f4(num(ad['final_val_std']))}.")
        w(text)
        w("")

    # ------------------------------------------------------------ command, machine
    w("## The command and the machine")
    w("")
    w("```sh")
    w(machine.get("command", "bash scripts/transformer_lm.sh"))
    w("```")
    w("")
    w(f"- Date: {machine.get('date_start', '?')} to {machine.get('date_end', '?')} "
      f"(the program's own total: {float(info['total_seconds']) / 60:.1f} min).")
    w(f"- Machine: `lscpu` model name \"{machine.get('cpu', '?')}\", "
      f"{machine.get('cores', '?')} cores (`nproc`), {machine.get('os', '?')}; "
      f"{machine.get('compiler', '?')}, Release, `-march=native`.")
    w(f"- libtorch {info['libtorch']} from Debian ({machine.get('libtorch_package', '?')}), "
      f"CPU; **{info['threads']} thread** for libtorch, OpenBLAS and the hybrid's "
      "Newton–Schulz alike (`--threads`).")
    load = machine.get("load_start", "?"), machine.get("load_end", "?")
    samples = machine.get("load_samples", "").split()
    shared = ""
    if len(samples) == 4:
        lo, med, hi, n = samples
        shared = (f" Sampled every 30 s through the run ({n} samples), the 1-minute load "
                  f"was {lo} at least, {med} at the median, {hi} at most. ")
        others = machine.get("other_processes", "").split()
        counts = [(o.rsplit(":", 1)[0], o.rsplit(":", 1)[1]) for o in others if ":" in o]
        if counts:
            shared += ("Other processes busy at those samples (name: samples): "
                       + ", ".join(f"`{n}`: {k}" for n, k in counts) + ". ")
        if float(med) > 1.5:
            builds = any(n in ("cc1plus", "cc1", "clang", "clang++", "ld", "ninja", "make")
                         for n, _ in counts)
            shared += ("The program runs one thread, so a load above 1 is other work: the "
                       "machine was **shared with other jobs**"
                       + (" — compilers among them, i.e. builds —" if builds else "")
                       + " during the run, which slows every step; the interleaved timing "
                       "keeps the ratios comparable, the absolute times are inflated.")
    w(f"- Load average (1, 5, 15 min) at the start: {load[0]}; at the end: {load[1]}."
      + shared)
    w("")

    # ------------------------------------------------------------ data, model
    w("## What it trains")
    w("")
    w(f"**Data.** Debian's `fortunes` package: the {info['files']} fortune files under "
      f"`{info['text_dir']}` (the `.dat` indexes and `.u8` links left out, and `off/` "
      "when installed), split at their `%` lines and joined with an empty line "
      "between fortunes. Every tenth fortune is held out for validation: "
      f"{int(info['train_fortunes']):,} fortunes ({int(info['train_bytes']):,} bytes) to "
      f"train on, {int(info['val_fortunes']):,} ({int(info['val_bytes']):,} bytes) held "
      "out. Byte-level: the vocabulary is the 256 byte values, nothing to download. "
      "Fortunes is English prose of many kinds (quotations, jokes, definitions, "
      "verse), about 2.5 MB, installed by one small package; the other English "
      "texts Debian installs by default (licences, manual pages) are formulaic or "
      "markup. Training windows of "
      f"{info['context']} bytes are drawn at random offsets (one generator per seed, "
      f"so every optimizer of a seed sees the same batches); the validation loss is "
      f"the mean over {info['val_seqs']} fixed windows spread evenly over the "
      "held-out text (the same for every run), in nats per byte "
      "(divide by ln 2 for bits per byte).")
    w("")
    w(f"**Model** (`gpt.hpp`): a pre-norm GPT, d_model {info['d_model']}, "
      f"{info['layers']} layers, {info['heads']} heads, context {info['context']}, "
      f"learned positions, {'tied' if info['tied'] == 'yes' else 'untied'} output head, "
      "GELU MLP of 4·d_model, GPT-2's initialization. The attention is written "
      "out (fused QKV without bias, q·kᵀ/√d_head, causal mask, softmax), so "
      "each head's largest logit of a forward pass is read for QK-Clip. "
      "Every run: batch "
      f"{info['batch']} × {info['context']} bytes, {steps} steps, linear warmup over "
      f"{info['warmup']} steps then cosine decay to zero (set through "
      "`OptimizerOptions::set_lr` for every optimizer; `MuonOptions::set_lr` moves "
      "the hybrid's AdamW lr with it), validation every "
      f"{info['eval_every']} steps.")
    w("")
    w("**Routing** (printed by `make_hybrid`; the fused QKV weight is "
      f"orthogonalized as {'three row blocks Q, K, V (`HybridOptions::splits`)' if info['qkv'] == 'split' else info['qkv']}):")
    w("")
    w("```")
    w(routing)
    w("```")
    w("")
    w("The embeddings (`wte`, `wpe`) and the head (`lm_head`) are caught by the "
      "routing rules' name patterns and go to AdamW, with the gains and biases; "
      "the attention and MLP matrices go to Muon.")
    w("")

    # ------------------------------------------------------------ optimizers, sweep
    w("## Optimizers and the lr sweep")
    w("")
    w("- **hybrid Muon + AdamW**: `muon::torch::make_hybrid` with `torch.optim.Muon`'s "
      "defaults (momentum 0.95, Nesterov, 5 Newton–Schulz steps with Jordan's "
      "coefficients, decoupled weight decay 0.1, lr by shape `original`, "
      "√max(1, out/in)) for the matrices; its AdamW part (betas 0.9/0.95, eps "
      "1e-8, weight decay 0.1) at AdamW's chosen lr.")
    w("- **hybrid NorMuon + AdamW**: the same with `MuonOptions::variant(normuon)` "
      "(β₂ 0.95).")
    w("- **`torch::optim::AdamW`** on every parameter: betas (0.9, 0.95), eps 1e-8, "
      "weight decay 0.1 (nanoGPT's settings for GPT pretraining; not swept).")
    w("")
    grids = {k: info.get(f"grid_{k}", "") for k in ("muon", "normuon", "adamw")}
    w(f"Each lr is swept on seed 1 over the full {steps}-step budget (AdamW over "
      f"{grids['adamw']}; the hybrids' Muon lr over {grids['muon']}), keeping the lr "
      "with the lowest final validation loss; an optimum at an edge extends the "
      "grid by a factor 2 (twice at most). AdamW is swept first and the hybrids' "
      "AdamW part runs at its chosen lr, so their sweeps tune the Muon lr alone. "
      "Seed 1 of the comparison is the sweep's run at the chosen lr. "
      + ("" if info.get("sweep_edge_notes", "-") == "-" else
         f"Note: {info['sweep_edge_notes']}."))
    w("")
    w("| optimizer | lr → final validation loss (chosen in bold) |")
    w("|---|---|")
    for name in ("adamw", "muon", "normuon"):
        points = [r for r in sweep if r["optimizer"] == name]
        if not points:
            continue
        chosen = float(info.get(f"lr_{name}", "nan"))
        cells = []
        for r in points:
            lr, v = num(r["lr"]), num(r["final_val_loss"])
            cell = f"{lr_text(lr)} → {f4(v)}"
            cells.append(f"**{cell}**" if math.isclose(lr, chosen, rel_tol=1e-6) else cell)
        w(f"| {NAMES[name]} | {', '.join(cells)} |")
    w("")

    # ------------------------------------------------------------ the table
    w("## The paper's table, measured")
    w("")
    target = num(summary[0]["target_val_loss"])
    w(f"Target: AdamW's final validation loss at the {steps}-step budget, mean over "
      f"its {seeds} seeds: **{f4(target)}** nats/byte. *Steps to target*: where the "
      "seed-mean validation curve first reaches it, interpolated linearly between "
      f"the evaluations (every {info['eval_every']} steps) around the crossing "
      "(AdamW's own curve reaches it at the budget by construction); per seed the "
      "same rule, mean ± sample std over the seeds that reach it. *Time per step*: "
      "the dedicated interleaved timing phase (one model per optimizer, same shape "
      "and seed, stepped in turn on the same batch, order rotating, "
      f"{info['timing_reps']} timed repetitions after 3 untimed; median, "
      "[quartiles]); the whole step is zero_grad + forward + backward + `step()`, "
      "and `step()` is also timed alone. *Wall-clock to target* = steps to target "
      "× median time per step (evaluation excluded). Ratios are against AdamW, as "
      "the paper's table has them.")
    w("")
    w("| optimizer | lr | final val loss (mean ± std) | time / step (ms) | `step()` (ms) | `step()` share | steps to target | per seed | wall-clock to target (s) | time/step vs AdamW | steps vs AdamW | wall-clock vs AdamW |")
    w("|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in summary:
        name = r["optimizer"]
        lr = num(r["lr"])
        lr_cell = (f"{lr_text(lr)} (AdamW part {lr_text(num(r['adamw_part_lr']))})"
                   if name != "adamw" else lr_text(lr))
        reach = int(float(r["seeds_reaching_target"]))
        per_seed = (f"{num(r['steps_to_target_seed_mean']):.0f} ± "
                    f"{num(r['steps_to_target_seed_std']):.0f} ({reach}/{r['seeds']} seeds)"
                    if reach > 0 else f"none of {r['seeds']} seeds")
        steps_cell = (f"{num(r['steps_to_target_mean_curve']):.0f}"
                      if finite(num(r["steps_to_target_mean_curve"])) else f"> {steps}")
        wall = num(r["wall_to_target_s"])
        w(f"| {NAMES[name]} | {lr_cell} | {f4(num(r['final_val_mean']))} ± "
          f"{f4(num(r['final_val_std']))} | {num(r['step_ms_median']):.1f} "
          f"[{num(r['step_ms_q1']):.1f}–{num(r['step_ms_q3']):.1f}] | "
          f"{num(r['optimizer_step_ms_median']):.2f} | "
          f"{100 * num(r['optimizer_share']):.1f}% | {steps_cell} | {per_seed} | "
          f"{(f'{wall:.1f}' if finite(wall) else '—')} | {ratio(num(r['step_time_vs_adamw']))} | "
          f"{ratio(num(r['steps_to_target_vs_adamw']))} | "
          f"{ratio(num(r['wall_to_target_vs_adamw']))} |")
    w("")
    # Per seed final losses.
    compare_runs = {}
    for r in runs:
        if (int(r["steps"]) == steps and r["d_model"] == info["d_model"]
                and float(r["qk_clip_tau"]) == 0
                and (r["optimizer"] == "adamw" or r["qkv"] == info["qkv"])
                and (r["optimizer"] == "adamw" or r["lr_rule"] == "original")
                and math.isclose(num(r["lr"]), float(info.get(f"lr_{r['optimizer']}", "nan")),
                                 rel_tol=1e-6)):
            compare_runs.setdefault(r["optimizer"], {})[int(r["seed"])] = num(r["final_val_loss"])
    if compare_runs:
        names = [r["optimizer"] for r in summary]
        w("Final validation loss per seed:")
        w("")
        w("| seed | " + " | ".join(NAMES[n] for n in names) + " |")
        w("|---:|" + "---|" * len(names))
        for s in range(1, seeds + 1):
            w(f"| {s} | " + " | ".join(f4(compare_runs.get(n, {}).get(s, math.nan))
                                       for n in names) + " |")
        w("")
    w(f"![curves]({link}/curves.png)")
    w("")
    w("(top: validation loss, mean over the seeds with min..max bars, the target "
      "dashed; bottom left: the sweep; bottom right: every timed step of the "
      "timing phase, whole step and `step()` alone.)")
    w("")

    # ------------------------------------------------------------ judgement
    w("### Where Muon wins and where it does not, at this scale")
    w("")
    for name in ("muon", "normuon"):
        r = by_opt.get(name)
        if not r or not ad:
            continue
        label = NAMES[name]
        x_time = num(r["step_time_vs_adamw"])
        x_steps = num(r["steps_to_target_vs_adamw"])
        x_wall = num(r["wall_to_target_vs_adamw"])
        diff = num(r["final_val_mean"]) - num(ad["final_val_mean"])
        spread = max(num(r["final_val_std"]), num(ad["final_val_std"]))
        items = []
        if x_time > 1.02:
            items.append(f"**per step it loses**: {ratio(x_time)} AdamW's time; its "
                         f"`step()` takes {num(r['optimizer_step_ms_median']):.1f} ms against "
                         f"AdamW's {num(ad['optimizer_step_ms_median']):.1f} ms "
                         f"({100 * num(r['optimizer_share']):.0f}% of its step): Newton–Schulz "
                         "on every matrix, on one CPU core, against a forward and backward "
                         "pass that is small at this size")
        elif x_time < 0.98:
            items.append(f"per step it is cheaper ({ratio(x_time)} AdamW's time)")
        else:
            items.append(f"per step it costs the same as AdamW within 2% ({ratio(x_time)})")
        if finite(x_steps) and x_steps < 1:
            items.append(f"it needs {ratio(x_steps)} AdamW's steps to reach AdamW's final loss")
        elif finite(x_steps):
            items.append(f"**it needs as many steps or more** ({ratio(x_steps)}) to reach "
                         "AdamW's final loss")
        else:
            items.append("**it does not reach AdamW's final loss** within the budget")
        if finite(x_wall):
            items.append(("so on wall-clock it " + ("wins" if x_wall < 1 else "**loses**")
                          + f": {ratio(x_wall)} AdamW's time to the target"))
        if abs(diff) <= spread:
            items.append(f"its final loss differs from AdamW's by {diff:+.4f}, inside the "
                         f"seed spread (std up to {spread:.4f})")
        else:
            items.append(f"its final loss is {abs(diff):.4f} {'below' if diff < 0 else '**above**'} "
                         f"AdamW's (seed std up to {spread:.4f})")
        w(f"- {label}: " + "; ".join(items) + ".")
    w("- The steps-to-target ratio is measured inside one schedule: every run decays "
      f"its lr to zero at step {steps}, so a run that crosses AdamW's final loss at "
      "step s did so with its lr still above zero; a run given only s steps (its "
      "own schedule ending there) could end a little lower or higher. Runs of "
      "different lengths are not compared here.")
    w(f"- Scale: {int(info.get('params', '0')):,} parameters on one CPU thread, "
      f"{int(info['batch']) * int(info['context']):,} bytes per step. The paper "
      "trains models up to 4B parameters on accelerators at large batch sizes; "
      "nothing here tests its claims at that scale, and the optimizer's share of a "
      "step measured here is a property of this size and this machine.")
    w("")

    # ------------------------------------------------------------ width transfer
    if width:
        w("## Width transfer")
        w("")
        arms = []
        for r in width:
            if r["arm"] not in arms:
                arms.append(r["arm"])
        widths = sorted({int(r["d_model"]) for r in width})
        w(f"The lr swept at d_model {', '.join(map(str, widths))} (same depth "
          f"{info['layers']} and {info['heads']} heads, {info.get('width_steps', steps)} "
          "steps, seed 1), for Muon with the library's lr-by-shape rule on "
          "(`original`, the default) and off (`none`), and for AdamW. The hybrid's "
          f"AdamW part stays at AdamW's lr chosen at d_model {info['d_model']} "
          f"({lr_text(float(info['lr_adamw']))}), so only the Muon lr moves. Same "
          "grids as the sweep, extended at an edge by a factor 2 (twice at most). "
          "The widths stop at the default model's: a d_model 256 model has 4× the "
          "matrix parameters of d_model 128, and its 12 sweep runs would take several "
          "times this whole phase on this machine (`--widths 64,128,256` runs them).")
        w("")
        w("What the rule is here: `original` multiplies the lr by √max(1, out/in). "
          "In this model every matrix keeps its aspect ratio as the width grows "
          "(Q, K, V blocks and the output projection d×d, the MLP's 4d×d and d×4d), so "
          "the factor is the same at every width (2 for the MLP's first matrix, 1 for "
          "the others): on and off differ by that constant, not by a width-dependent "
          "scale. Muon's width behaviour comes from the orthogonalized update itself "
          "(its spectral norm is about 1 whatever the width), not from the rule. "
          "`--width-rules` also takes `match_rms_adamw` and `spectral`.")
        w("")
        w("| arm | " + " | ".join(f"best lr at d_model {d}" for d in widths)
          + f" | loss at d_model {widths[-1]} with d_model {widths[0]}'s best lr, minus its best |")
        w("|---|" + "---:|" * len(widths) + "---:|")
        verdicts = []
        within_lines = []
        for arm in arms:
            best = {}
            curves = {}
            for r in width:
                if r["arm"] != arm:
                    continue
                d = int(r["d_model"])
                curves.setdefault(d, {})[num(r["lr"])] = num(r["final_val_loss"])
                if r["best"] == "1":
                    best[d] = num(r["lr"])
            small, large = widths[0], widths[-1]
            penalty = math.nan
            if small in best and large in curves and best[small] in curves[large]:
                penalty = curves[large][best[small]] - min(
                    v for v in curves[large].values() if finite(v))
            cells = [lr_text(best[d]) if d in best else "—" for d in widths]
            cells.append(f"{penalty:+.4f}" if finite(penalty) else "—")
            w(f"| {arm} | " + " | ".join(cells) + " |")
            # The lrs a single-seed sweep cannot tell from the best: within one
            # seed std (the comparison's, of the same optimizer) of it.
            std = num(by_opt.get("adamw" if arm == "adamw" else "muon", {}).get(
                "final_val_std", "nan"))
            if finite(std) and all(d in curves for d in widths):
                sets = []
                for d in widths:
                    top = min(v for v in curves[d].values() if finite(v))
                    sets.append({lr for lr, v in curves[d].items() if finite(v) and v <= top + std})
                common = set.intersection(*sets)
                describe_arm = {"adamw": "AdamW", "muon-original": "Muon (rule on)",
                                "muon-none": "Muon (rule off)"}.get(arm, arm)
                within_lines.append(
                    f"- {describe_arm}: " + "; ".join(
                        f"d_model {d}: {', '.join(lr_text(x) for x in sorted(st))}"
                        for d, st in zip(widths, sets))
                    + (f" — **common to every width: {', '.join(lr_text(x) for x in sorted(common))}**"
                       if common else " — **no lr is within the noise of the best at every width**"))
            if all(d in best for d in widths):
                lrs = [best[d] for d in widths]
                spread = max(lrs) / min(lrs)
                describe = {"adamw": "AdamW", "muon-original": "Muon (rule on)",
                            "muon-none": "Muon (rule off)"}.get(arm, arm)
                if spread == 1:
                    verdicts.append(f"{describe}: the best lr is {lr_text(lrs[0])} at every "
                                    "width — it transfers on this factor-2 grid")
                else:
                    trend = ("falls" if lrs[-1] < lrs[0] else "rises" if lrs[-1] > lrs[0]
                             else "moves")
                    verdicts.append(
                        f"{describe}: the best lr {trend} from {lr_text(lrs[0])} at d_model "
                        f"{small} to {lr_text(lrs[-1])} at d_model {large} (a factor "
                        f"{spread:g} between extremes); carrying d_model {small}'s lr to "
                        f"d_model {large} costs {penalty:+.4f} nats/byte"
                        if finite(penalty) else
                        f"{describe}: the best lr moves over a factor {spread:g}")
        w("")
        w("Measured, not asserted: " + "; ".join(verdicts) + ". A grid of factor 2 "
          "cannot see shifts below a factor 2, and each point is one seed.")
        w("")
        moved = [v.split(":")[0] for v in verdicts if "transfers on this" not in v]
        kept = [v.split(":")[0] for v in verdicts if "transfers on this" in v]
        w("In short: " + (f"the best lr stays put across these widths for {', '.join(kept)}"
                          if kept else "no optimum stays exactly put across these widths")
          + (f"; it moves for {', '.join(moved)} (by how much, and what carrying the "
             "narrowest width's lr costs, is in the table)." if moved else "."))
        w("")
        if within_lines:
            w("How sure that is: the lrs whose final loss is within one seed standard "
              "deviation of their width's best (the comparison's std at d_model "
              f"{info['d_model']}: {f4(num(mu['final_val_std'])) if mu else '?'} for Muon, "
              f"{f4(num(ad['final_val_std'])) if ad else '?'} for AdamW) — a "
              "one-seed sweep cannot tell these apart:")
            w("")
            for line in within_lines:
                w(line)
            w("")
        w(f"![width transfer]({link}/width_transfer.png)")
        w("")
        w("Final validation loss per point:")
        w("")
        for arm in arms:
            cells = []
            for d in widths:
                pts = sorted((num(r["lr"]), num(r["final_val_loss"]), r["best"] == "1")
                             for r in width if r["arm"] == arm and int(r["d_model"]) == d)
                cells.append(f"d_model {d}: " + ", ".join(
                    (f"**{lr_text(lr)} → {f4(v)}**" if b else f"{lr_text(lr)} → {f4(v)}")
                    for lr, v, b in pts))
            w(f"- {arm}: " + "; ".join(cells))
        w("")

    # ------------------------------------------------------------ QK-Clip
    if qk:
        w("## QK-Clip")
        w("")
        arms = []
        for r in qk:
            if r["arm"] not in arms:
                arms.append(r["arm"])
        qk_lr, tau = info["qk_lr"], info["qk_tau"]
        w(f"The hybrid Muon at lr {qk_lr} (`--qk-lr-factor` × its chosen lr; same "
          f"model, seed 1, {steps} steps), in these arms: "
          + ", ".join(f"`{a}`" for a in arms) + ". `clip`: after every step, "
          "`Muon::qk_clip` on each layer's fused QKV weight (`query` = `key` = "
          "`blocks.<i>.attn.qkv.weight`, `head_dim` d_head, `key_row` d_model) with "
          f"that step's per-head maxima, τ = {tau}, α = 0.5; `heads`: the fused QKV "
          "orthogonalized per head (`HybridOptions::heads` = 3 × heads: every Q, K "
          "and V head its own d_head × d_model block) instead of as three Q/K/V "
          "blocks, no clip; `heads-clip`: both. The largest logit is q·k/√d_head before the softmax, "
          "over the batch and the allowed (causal) positions, measured in the forward "
          "pass before any clip.")
        w("")
        # The exact-cap check of each clipping arm, from runs.csv (the QK-Clip
        # runs are the ones at the QK lr on the default width).
        cap = {}
        for run in runs:
            if (run["optimizer"] == "muon" and run["d_model"] == info["d_model"]
                    and math.isclose(num(run["lr"]), float(qk_lr), rel_tol=1e-5)):
                clip = float(run["qk_clip_tau"]) > 0
                arm = ("heads-clip" if clip else "heads") if run["qkv"] == "heads" else (
                    "clip" if clip else "none")
                cap[arm] = run.get("exact_cap_check", "-")
        w("| arm | largest logit (any layer, any step) | at the last step (max over layers) | head clips | exact-cap check | final val loss |")
        w("|---|---:|---:|---:|---|---:|")
        final_of = {}
        for r in qk_evals:
            final_of[r["arm"]] = num(r["val_loss"])
        for a in arms:
            rows = [r for r in qk if r["arm"] == a]
            peak = max(num(r["max_logit"]) for r in rows)
            last_step = max(int(r["step"]) for r in rows)
            last = max(num(r["max_logit"]) for r in rows if int(r["step"]) == last_step)
            clips = sum(int(r["heads_clipped"]) for r in rows)
            w(f"| `{a}` | {peak:.1f} | {last:.1f} | {clips} | {cap.get(a, '-')} | "
              f"{f4(final_of.get(a, math.nan))} |")
        w("")
        evals = read_csv(os.path.join(out, "evals.csv"))
        last_logit = {}
        for run in runs:
            key = run["run"]
            name = run["optimizer"]
            if (run["d_model"] == info["d_model"] and int(run["steps"]) == steps
                    and float(run["qk_clip_tau"]) == 0
                    and math.isclose(num(run["lr"]), float(info.get(f"lr_{name}", "nan")),
                                     rel_tol=1e-6)
                    and (name == "adamw" or (run["qkv"] == info["qkv"]
                                             and run["lr_rule"] == "original"))):
                pts = [e for e in evals if e["run"] == key]
                if pts:
                    last_logit.setdefault(name, []).append(num(pts[-1]["max_logit"]))
        if last_logit:
            w("For scale: at the chosen lrs of the comparison, the largest logit of the "
              "last training step was " + ", ".join(
                  f"{sum(v) / len(v):.1f} for {NAMES[n]}" for n, v in last_logit.items())
              + " (mean over the seeds).")
            w("")
        w(f"![qk clip]({link}/qk_clip.png)")
        w("")
        peaks = {a: max(num(r["max_logit"]) for r in qk if r["arm"] == a) for a in arms}
        if "none" in peaks and "heads" in peaks:
            more = peaks["heads"] > peaks["none"]
            w(f"Per-head orthogonalization (`heads`) made the logits grow "
              f"{'faster' if more else 'less'}: a peak of {peaks['heads']:.1f} against "
              f"{peaks['none']:.1f} with Q, K and V orthogonalized as whole blocks, and a final "
              f"validation loss of {f4(final_of.get('heads', math.nan))} against "
              f"{f4(final_of.get('none', math.nan))}. "
              + ("A plausible cause, not measured here: each head's block of the "
                 "update has singular values near 1, so the stacked per-head update's "
                 "spectral norm can reach √heads times a whole-block update's "
                 "([family/per_head.md](family/per_head.md))." if more else ""))
            w("")
        peak_none = max((num(r["max_logit"]) for r in qk if r["arm"] == "none"), default=math.nan)
        if finite(peak_none):
            tau_f = float(tau)
            if peak_none > tau_f:
                w(f"Without the clip the largest logit reached {peak_none:.1f}, above τ = {tau}; "
                  "with it the logits the next forward passes see stay near τ (a clip "
                  "caps the logits of the batch that measured them; the next batch and "
                  "the next step can go a little above again).")
            else:
                w(f"Without the clip the largest logit stayed at {peak_none:.1f}, below "
                  f"τ = {tau}: at this lr and length the clip never acts.")
            w("")
        w("*Exact-cap check*, run after every clipping arm (its result is in the "
          "table; `--quick` fails unless it passes): layer by layer, one forward "
          "pass, QK-Clip with its maxima, the same forward again — every head that "
          "was above τ must then peak at τ (within 1e-4 relative) and the others must "
          "be unchanged, i.e. the clip scaled the query and key rows of the right "
          "heads of the fused weight. Scaling the V rows instead of the K rows (a "
          "wrong `key_row`) makes it fail.")
        w("")

    # ------------------------------------------------------------ sample
    if sample:
        text = "".join(ch if (32 <= ord(ch) < 127 or ch in "\n\t") else "?"
                       for ch in sample.decode("latin-1"))
        w("## Generated text")
        w("")
        w(f"{len(sample) - len(info.get('prompt', ''))} bytes sampled at temperature 0.8 "
          f"from the best model of the comparison ({info.get('sample_of', '?')}), "
          "after the prompt \"The \" (bytes outside printable ASCII shown as `?`):")
        w("")
        w("```text")
        w(text.rstrip("\n"))
        w("```")
        w("")

    # ------------------------------------------------------------ reproduce
    w("## Run it")
    w("")
    w("```sh")
    w("bash scripts/transformer_lm.sh            # installs what is missing, builds, runs the study, writes this page")
    w("bash scripts/transformer_lm.sh --quick    # the CI run: tiny model, 40 steps, checks (< 1 min)")
    w("build/transformer_lm/examples/transformer_lm/transformer_lm --help   # every flag")
    w("```")
    w("")
    w("The script installs (through `scripts/deps.sh`, only what is missing) "
      "`libtorch-dev`, `fortunes` and `gnuplot-nox`, builds only this example in "
      "Release (`build/transformer_lm`; `BUILD_DIR` overrides), runs it with your "
      "flags, and — for a run with no flags — writes this page and copies the "
      f"CSVs, PNGs and log to `docs/{link}/`. Each phase is a flag: `--steps`, "
      "`--seeds`, `--d-model`, `--layers`, `--heads`, `--context`, `--batch`, "
      "`--tied`, `--qkv whole|split|heads`, `--grid-*`, `--lr-*`, `--timing-reps`, "
      "`--width on|off`, `--widths`, `--width-rules`, `--qk on|off`, `--qk-tau`, "
      "`--qk-lr`, `--qk-arms`, `--threads`.")
    w("")
    w("Files of the run (in `--out`, and here in "
      f"[`docs/{link}/`]({link}/)):")
    w("")
    w("| file | content |")
    w("|---|---|")
    w("| `summary.csv` | the table above, one row per optimizer |")
    w("| `sweep.csv` | every sweep point: optimizer, lr, AdamW-part lr, final validation loss |")
    w("| `runs.csv`, `evals.csv` | every run trained (its settings, final loss, head clips) and its evaluations (step, train loss since the last evaluation, validation loss, largest attention logit, training seconds) |")
    w("| `curves.csv` | per optimizer and evaluation step: validation loss mean/min/max over the seeds |")
    w("| `timing.csv` | every timed step of the interleaved timing phase |")
    w("| `width.csv` | width transfer: arm, d_model, lr, final validation loss, best-of-width flag |")
    w("| `qkclip.csv`, `qkclip_evals.csv` | QK-Clip arms: per step and layer the largest logit, train loss, heads clipped; their evaluations |")
    w("| `routing.txt`, `sample.txt`, `info.csv`, `machine.csv`, `run.log` | the routing table, the generated text, the settings, the machine, the program's output |")
    w("| `curves.png`, `width_transfer.png`, `qk_clip.png` | the plots (gnuplot: `curves.gp`, `width.gp`, `qkclip.gp`) |")
    w("")
    w("## Limits")
    w("")
    w("- One CPU thread, a shared machine: times are medians of interleaved steps, "
      "and the ratios are the numbers to read; the absolute milliseconds depend on "
      "what else ran.")
    w("- One seed per sweep and width-transfer point; three seeds for the comparison.")
    w("- Short runs: the step budget is a small fraction of an epoch of the text; "
      "nothing here says what happens after many epochs or at scale.")
    w("- The run is deterministic for a given binary and thread count (libtorch's "
      "CPU kernels at one thread and the library's fixed-order reductions), so the "
      "same command reproduces the losses; the times vary with the machine.")
    w("")

    with open(doc, "w") as f:
        f.write("\n".join(lines))
    print(f"report: wrote {doc}")


if __name__ == "__main__":
    main(sys.argv)
