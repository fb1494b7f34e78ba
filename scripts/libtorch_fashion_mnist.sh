#!/usr/bin/env bash
# The libtorch Fashion-MNIST example (examples/libtorch_fashion_mnist/), from a
# fresh Debian/Ubuntu machine: installs what is missing (libtorch, the data
# set package, zlib, gnuplot), builds only this example in Release with the
# muon::torch adapter, runs it, and says where the CSV files and the PNG are.
#
# Usage: scripts/libtorch_fashion_mnist.sh [example flags...]
#   scripts/libtorch_fashion_mnist.sh                 # the default comparison (~10 min on 2 cores)
#   scripts/libtorch_fashion_mnist.sh --quick         # a small run (< 1 min), as CI does
#   scripts/libtorch_fashion_mnist.sh --epochs 10 --seeds 5
# Environment: BUILD_DIR (default build/torch_example), CXX (compiler),
#              JOBS (build parallelism, default: number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."

# Build tools and Eigen, plus this example's own needs. deps.sh installs only
# what is missing, running apt-get update at most once.
bash scripts/deps.sh libtorch-dev dataset-fashion-mnist zlib1g-dev gnuplot-nox

data_dir=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [[ ! -f $data_dir/train-images-idx3-ubyte.gz ]]; then
  echo "libtorch_fashion_mnist.sh: no Fashion-MNIST files in $data_dir" >&2
  echo "  (apt-get install dataset-fashion-mnist; or set FASHION_MNIST_DIR)" >&2
  exit 1
fi

build_dir=${BUILD_DIR:-build/torch_example}
cmake_args=(-S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUON_ENABLE_TORCH=ON
            -DMUON_BUILD_TESTS=OFF -DMUON_BUILD_BENCHMARKS=OFF -DMUON_BUILD_EXAMPLES=ON
            -DMUON_ENABLE_CUDA=OFF)
[[ -n ${CXX:-} ]] && cmake_args+=(-DCMAKE_CXX_COMPILER="$CXX")
cmake "${cmake_args[@]}" >/dev/null
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}" --target libtorch_fashion_mnist

out_dir="$build_dir/out"
# An --out among the user's flags wins over ours.
for arg in "$@"; do [[ $arg == --out ]] && out_dir=""; done
args=("$@")
[[ -n $out_dir ]] && args=(--out "$out_dir" "${args[@]}")

"$build_dir/examples/libtorch_fashion_mnist/libtorch_fashion_mnist" "${args[@]}"

shown=${out_dir:-the --out folder}
echo
echo "CSV files: $shown/runs.csv (per optimizer, seed, epoch), summary.csv, sweep.csv, epochs_*.csv"
[[ -n $out_dir && -f $out_dir/curves.png ]] && echo "Plot:      $out_dir/curves.png"
exit 0
