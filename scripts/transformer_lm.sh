#!/usr/bin/env bash
# The transformer example (examples/transformer_lm/), from a fresh
# Debian/Ubuntu machine: installs what is missing (libtorch, the fortunes
# text, gnuplot), builds only this example in Release with the muon::torch
# adapter, runs it, and writes a report of the run.
#
# Usage: scripts/transformer_lm.sh [example flags...]
#   scripts/transformer_lm.sh             # the whole study (~30 min on 2 cores); with no
#                                         # flags it also rewrites docs/transformer_lm.md
#                                         # and docs/data/transformer_lm/ from this run
#   scripts/transformer_lm.sh --quick     # the CI run (< 1 min): tiny model, checks
#   scripts/transformer_lm.sh --steps 400 --widths 64,128,256
# A run with flags writes its report to <out>/transformer_lm.md instead.
# Environment: BUILD_DIR (default build/transformer_lm), CXX (compiler),
#              JOBS (build parallelism, default: number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."

# Build tools and Eigen, plus this example's own needs. deps.sh installs only
# what is missing, running apt-get update at most once.
bash scripts/deps.sh libtorch-dev fortunes gnuplot-nox

text_dir=${FORTUNES_DIR:-/usr/share/games/fortunes}
if [[ ! -d $text_dir ]]; then
  echo "transformer_lm.sh: no fortune files in $text_dir" >&2
  echo "  (apt-get install fortunes; or set FORTUNES_DIR)" >&2
  exit 1
fi

build_dir=${BUILD_DIR:-build/transformer_lm}
cmake_args=(-S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUON_ENABLE_TORCH=ON
            -DMUON_BUILD_TESTS=OFF -DMUON_BUILD_BENCHMARKS=OFF -DMUON_BUILD_EXAMPLES=ON
            -DMUON_ENABLE_CUDA=OFF)
[[ -n ${CXX:-} ]] && cmake_args+=(-DCMAKE_CXX_COMPILER="$CXX")
cmake "${cmake_args[@]}" >/dev/null
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}" --target transformer_lm

# The output folder: the user's --out, else ours.
out_dir="$build_dir/out"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ ${args[i]} == --out && $((i + 1)) -lt ${#args[@]} ]] && out_dir=${args[i + 1]}
done
[[ " ${args[*]-} " == *" --out "* ]] || args=(--out "$out_dir" "${args[@]}")
publish=0
(($# == 0)) && publish=1
mkdir -p "$out_dir"

load() { cut -d' ' -f1-3 /proc/loadavg; }
# The machine's load through the run, every 30 s, and the other processes then
# busy (over 20% of a CPU over their lifetime): how much it was shared, and with what.
(while sleep 30; do
  echo "$(cut -d' ' -f1 /proc/loadavg) $(ps -eo comm=,pcpu= --sort=-pcpu |
    awk '$1 != "transformer_lm" && $2 > 20 {print $1}' | head -3 | tr '\n' ' ')"
done) >"$out_dir/load.txt" &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true' EXIT
date_start=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
load_start=$(load)

set +e
"$build_dir/examples/transformer_lm/transformer_lm" "${args[@]}" | tee "$out_dir/run.log"
status=${PIPESTATUS[0]}
set -e
date_end=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
load_end=$(load)
kill "$sampler" 2>/dev/null || true
((status == 0)) || { echo "transformer_lm.sh: the program failed (exit $status)" >&2; exit "$status"; }

cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$build_dir/CMakeCache.txt")
row() { local v=${2//\"/\"\"}; printf '%s,"%s"\n' "$1" "$v"; }  # CSV, the value quoted
{
  echo "key,value"
  row command "bash scripts/transformer_lm.sh${*:+ $*}"
  row date_start "$date_start"
  row date_end "$date_end"
  row cpu "$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  row cores "$(nproc)"
  row os "$(. /etc/os-release && echo "$PRETTY_NAME")"
  row compiler "$("$cxx" --version | head -1)"
  row libtorch_package "libtorch-dev $(dpkg-query -W -f='${Version}' libtorch-dev 2>/dev/null)"
  row load_start "$load_start"
  row load_end "$load_end"
  row load_samples "$(cut -d' ' -f1 "$out_dir/load.txt" | sort -g |
    awk '{v[NR]=$1} END {if (NR) printf "%s %s %s %d", v[1], v[int((NR+1)/2)], v[NR], NR}')"
  row other_processes "$(cut -d' ' -f2- "$out_dir/load.txt" | tr ' ' '\n' | sed '/^$/d' | sort |
    uniq -c | sort -rn | head -5 | awk '{printf "%s%s:%s", (NR > 1 ? " " : ""), $2, $1}')"
} >"$out_dir/machine.csv"

if ((publish)); then
  data=docs/data/transformer_lm
  mkdir -p "$data"
  for f in summary.csv sweep.csv runs.csv evals.csv curves.csv timing.csv width.csv qkclip.csv \
           qkclip_evals.csv routing.txt sample.txt info.csv machine.csv run.log \
           curves.png width_transfer.png qk_clip.png; do
    [[ -f $out_dir/$f ]] && cp "$out_dir/$f" "$data/"
  done
  python3 examples/transformer_lm/report.py "$out_dir" docs/transformer_lm.md \
    --data-link data/transformer_lm
else
  python3 examples/transformer_lm/report.py "$out_dir" "$out_dir/transformer_lm.md" --data-link .
fi
echo
echo "CSV files and plots: $out_dir"
exit 0
