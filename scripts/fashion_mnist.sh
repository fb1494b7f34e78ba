#!/usr/bin/env bash
# Fashion-MNIST example, from a fresh Debian/Ubuntu machine: installs what is
# missing (the data set package, zlib, gnuplot), builds only this example in
# Release, runs it, and says where the CSV logs and the PNG are.
#
# Usage: scripts/fashion_mnist.sh [example flags...]
#   scripts/fashion_mnist.sh                          # default comparison: muon, normuon,
#                                                     # adamuon, adamw, sgd over 3 seeds
#   scripts/fashion_mnist.sh --optimizers muon,normuon --seeds 5
#   scripts/fashion_mnist.sh --train-limit 2000 --sweep-subset 1000 --seeds 1   # smoke run
#   scripts/fashion_mnist.sh --epochs 5 --widths 1024,1024
#   scripts/fashion_mnist.sh --width-transfer
# Environment: BUILD_DIR (default build/fashion_mnist), CXX (compiler),
#              JOBS (build parallelism, default: number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."

# Build tools and Eigen, plus this example's own needs. deps.sh installs only
# what is missing, running apt-get update at most once.
bash scripts/deps.sh dataset-fashion-mnist zlib1g-dev gnuplot-nox

data_dir=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [[ ! -f $data_dir/train-images-idx3-ubyte.gz ]]; then
  echo "fashion_mnist.sh: no Fashion-MNIST files in $data_dir" >&2
  echo "  (Debian package dataset-fashion-mnist; or set FASHION_MNIST_DIR)" >&2
  exit 1
fi

build_dir=${BUILD_DIR:-build/fashion_mnist}
cmake_args=(-S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
            -DMUON_BUILD_TESTS=OFF -DMUON_BUILD_BENCHMARKS=OFF -DMUON_BUILD_EXAMPLES=ON
            -DMUON_ENABLE_CUDA=OFF)
[[ -n ${CXX:-} ]] && cmake_args+=(-DCMAKE_CXX_COMPILER="$CXX")
cmake "${cmake_args[@]}" >/dev/null
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}" --target fashion_mnist

out_dir="$build_dir/out"
# An --out among the user's flags wins over ours.
for arg in "$@"; do [[ $arg == --out ]] && out_dir=""; done
args=("$@")
[[ -n $out_dir ]] && args=(--out "$out_dir" "${args[@]}")

"$build_dir/examples/fashion_mnist/fashion_mnist" "${args[@]}"

shown=${out_dir:-the --out folder}
echo
echo "CSV logs: $shown/*.csv (summary.csv: mean, std, min, max over the seeds)"
[[ -n $out_dir && -f $out_dir/curves.png ]] && echo "Plot:     $out_dir/curves.png"
exit 0
