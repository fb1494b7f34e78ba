#!/usr/bin/env bash
# The data-parallel Fashion-MNIST example over MPI, from a fresh Debian/Ubuntu
# machine: installs what is missing (Open MPI, the data set, zlib), builds the
# example with MUON_ENABLE_MPI, and runs it on each rank count with --check
# (bitwise the single-process optimizer on the same gradients).
#
# Usage: scripts/fashion_mnist_dist.sh [ranks,...] [example flags...]
#   scripts/fashion_mnist_dist.sh                    # 1 and 2 ranks, one epoch each
#   scripts/fashion_mnist_dist.sh 2 --steps 60
# Environment: BUILD_DIR (default build/mpi), JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh dataset-fashion-mnist zlib1g-dev libopenmpi-dev openmpi-bin

ranks=1,2
if [[ ${1:-} =~ ^[0-9,]+$ ]]; then
  ranks=$1
  shift
fi
build_dir=${BUILD_DIR:-build/mpi}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUON_ENABLE_MPI=ON \
  -DMUON_BUILD_TESTS=OFF -DMUON_BUILD_BENCHMARKS=OFF -DMUON_BUILD_EXAMPLES=ON \
  -DMUON_ENABLE_CUDA=OFF >/dev/null
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}" --target fashion_mnist_dist

# Open MPI refuses root and more ranks than cores unless told.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
IFS=, read -ra counts <<<"$ranks"
for n in "${counts[@]}"; do
  mpiexec -n "$n" "$build_dir/examples/fashion_mnist/fashion_mnist_dist" --check "$@"
done
