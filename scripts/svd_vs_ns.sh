#!/usr/bin/env bash
# Singular values before/after every Newton–Schulz schedule vs the exact SVD
# polar factor: builds examples/svd_vs_newton_schulz.cpp, runs it (table on
# stdout, CSV on disk) and plots the CSV with gnuplot.
#   bash scripts/svd_vs_ns.sh [rows cols rank seed]     (default 256 1024 16 7)
# Environment: BUILD_DIR (default build/svd_vs_ns), OUT_DIR (default
# $BUILD_DIR/out), JOBS (default nproc). Needs gnuplot for the PNG; without
# it the CSV and the table are still produced.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${JOBS:-$(nproc)}
dir=${BUILD_DIR:-build/svd_vs_ns}
out=${OUT_DIR:-$dir/out}

bash scripts/deps.sh gnuplot-nox  # + the plotter

cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DMUON_BUILD_TESTS=OFF -DMUON_BUILD_BENCHMARKS=OFF -DMUON_BUILD_EXAMPLES=ON \
  -DMUON_ENABLE_CUDA=OFF
cmake --build "$dir" --target svd_vs_newton_schulz -j "$jobs"

mkdir -p "$out"
"$dir/examples/svd_vs_newton_schulz" "$out/singular_values.csv" "$@"
if command -v gnuplot >/dev/null; then
  gnuplot -e "csv='$out/singular_values.csv'; png='$out/singular_values.png'" \
    examples/plot_singular_values.gp
  echo "plot: $out/singular_values.png"
else
  echo "gnuplot not found (apt-get install gnuplot-nox): CSV only"
fi
