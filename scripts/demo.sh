#!/usr/bin/env bash
# The main job: from a fresh Debian 12 machine (as root, or with sudo),
# install what the build needs, build the demo in Release and run it.
#   bash scripts/demo.sh
# Environment: JOBS sets build parallelism (default: nproc); BUILD_DIR the
# build directory (default: build/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${JOBS:-$(nproc)}
dir=${BUILD_DIR:-build/demo}

bash scripts/deps.sh

# Only the demo: no tests, benchmarks or CUDA code to compile first.
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DMUON_BUILD_TESTS=OFF -DMUON_BUILD_BENCHMARKS=OFF -DMUON_BUILD_EXAMPLES=ON \
  -DMUON_ENABLE_CUDA=OFF
cmake --build "$dir" --target muon_demo -j "$jobs"
"$dir/examples/muon_demo"
