#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, then
#   1. g++    Release, -Werror, tests/benchmarks/examples (+ CUDA code when nvcc is
#             found; the CUDA tests that need a device are reported skipped)
#   2. clang++ -O1 with AddressSanitizer + UndefinedBehaviorSanitizer, -Werror, the
#             tests (CUDA, benchmarks and examples off; the examples get a
#             clang -fsyntax-only warnings pass); the tests run under the
#             sanitizers
#   3. the optional CPU product engine (OpenBLAS) where installed (the bf16
#      engine is the library's own kernel: stages 1 and 2 test it on CPUs with
#      AVX512-BF16)
#   4. the distributed optimizer under MPI at 1-4 ranks, where Open MPI is installed,
#      and a find_package(muon COMPONENTS MPI) consumer run on 2 ranks
#   5. the libtorch adapter (muon::torch) where libtorch-dev is installed: its
#      tests (g++, and clang++ with ASan + UBSan), the README/docs snippets that use
#      it, a short run of the CNN example, and a find_package(muon COMPONENTS
#      Torch) consumer
#   6. libFuzzer on the checkpoint loader (clang, 30 s)
#   7. install to a prefix and build/run the consumer project against it
#      (find_package, and pkg-config) and against the source tree (add_subdirectory)
# Skipped tests are listed with the reason. Environment: MUON_TEST_QUICK=1 runs
# stage 1 only; JOBS sets build parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${JOBS:-$(nproc)}

bash scripts/deps.sh

# Each stage's header says how long the run has taken so far (CI must stay
# well under 30 minutes: the differences show where the time goes).
stage() { echo; echo "=== $* === ($((SECONDS / 60)) min $((SECONDS % 60)) s into the run)"; }
# Lists the entries ctest skipped (return code 77) with the first line their
# probe printed: a skip says why, and never reads as a pass.
run_ctest() {  # build dir, ctest args...
  local dir=$1; shift
  ctest --test-dir "$dir" --output-on-failure "$@" | tee "$dir/ctest.out"
  local name
  for name in $(sed -n 's/^[[:space:]]*[0-9]* - \([^ ]*\) (Skipped)$/\1/p' "$dir/ctest.out"); do
    echo "  skipped: $name ($(awk -v t="\"$name\" start time" '
      index($0, t) == 1 { found = 1; next }
      found && /^Output:/ { getline; getline; print; exit }' "$dir/Testing/Temporary/LastTest.log"))"
  done
}
build_and_test() {  # dir, extra cmake args...
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUON_WARNINGS_AS_ERRORS=ON "$@"
  cmake --build "$dir" -j "$jobs"
  run_ctest "$dir" -j "$jobs"
}

stage "g++: build and test"
# CUDA code for one architecture here (sm_90): the compile check; the default
# list (sm_80 to sm_90) multiplies nvcc's device passes, and gpu_check.sh
# builds for the GPU at hand.
# libtorch's headers compile slowly: its adapter has a stage of its own (5).
build_and_test build/gcc -DCMAKE_CXX_COMPILER=g++ -DMUON_CUDA_ARCHITECTURES=90 \
  -DMUON_ENABLE_TORCH=OFF
[[ ${MUON_TEST_QUICK:-0} == 1 ]] && exit 0

stage "clang++ -O1, ASan + UBSan: build and test"
# One clang build serves both the second compiler's warnings and the
# sanitizers: clang at -O1 with line tables (a sanitizer build of these
# template-heavy tests takes g++ -O2 -g several times as long). The
# benchmarks are left out here: stage 1 compiles them (g++ -Werror), they
# never run under the sanitizers, and their clang build was a fifth of this
# run's time (CI must stay well under 30 minutes). The examples are not run
# here either: clang emits every warning from its front end, so a
# syntax-only pass over them (seconds) checks them warning-free instead of a
# sanitizer build (minutes).
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  build_and_test build/clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only -DNDEBUG" -DMUON_SANITIZE=ON \
  -DMUON_ENABLE_CUDA=OFF -DMUON_ENABLE_TORCH=OFF -DMUON_BUILD_BENCHMARKS=OFF \
  -DMUON_BUILD_EXAMPLES=OFF
echo "clang++ -fsyntax-only -Wall -Wextra -Wpedantic -Werror over the examples"
eigen_include=$(pkg-config --cflags-only-I eigen3 2>/dev/null | sed 's/^-I//; s/ *$//')
printf '%s\n' examples/*.cpp examples/fashion_mnist/main.cpp |
  xargs -P "$jobs" -n 1 clang++ -std=c++17 -fsyntax-only -Wall -Wextra -Wpedantic -Werror \
    -fopenmp -Iinclude -isystem "${eigen_include:-/usr/include/eigen3}" \
    -DFASHION_MNIST_PLOT_SCRIPT='"plot.gp"'

stage "optional CPU products (MUON_USE_BLAS): backend tests"
# Only where the package is installed (scripts/deps.sh tries to).
optional=()
dpkg-query -W -f='${Status}' libopenblas-dev 2>/dev/null | grep -q "install ok installed" &&
  optional+=(-DMUON_USE_BLAS=ON)
if ((${#optional[@]})); then
  cmake -S . -B build/optional -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUON_WARNINGS_AS_ERRORS=ON \
    -DMUON_BUILD_BENCHMARKS=OFF -DMUON_BUILD_EXAMPLES=OFF -DMUON_ENABLE_CUDA=OFF "${optional[@]}"
  cmake --build build/optional -j "$jobs" --target test_gram_ns test_newton_schulz muon_products_probe
  run_ctest build/optional -R '^test_(gram_ns|newton_schulz|products_blas)$'
else
  echo "no optional product packages installed; stage skipped"
fi

stage "MPI: the distributed optimizer at 1, 2, 3 and 4 ranks (MUON_ENABLE_MPI)"
# Only where Open MPI is installed (scripts/deps.sh tries to); oversubscribed
# on a small machine.
if dpkg-query -W -f='${Status}' libopenmpi-dev 2>/dev/null | grep -q "install ok installed" &&
  command -v mpiexec >/dev/null; then
  cmake -S . -B build/mpi -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUON_WARNINGS_AS_ERRORS=ON \
    -DMUON_BUILD_BENCHMARKS=OFF -DMUON_BUILD_EXAMPLES=OFF -DMUON_ENABLE_CUDA=OFF -DMUON_ENABLE_MPI=ON
  cmake --build build/mpi -j "$jobs" --target test_dist
  run_ctest build/mpi -R '^test_dist_np'
  # The installed package's MPI component: find_package(muon COMPONENTS MPI).
  rm -rf build/mpi-prefix
  cmake --install build/mpi --prefix build/mpi-prefix >/dev/null
  cmake -S tests/consumer_mpi -B build/consumer-mpi -G Ninja -DCMAKE_PREFIX_PATH="$root/build/mpi-prefix"
  cmake --build build/consumer-mpi
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
    mpiexec -n 2 build/consumer-mpi/muon_mpi_consumer
else
  echo "Open MPI (libopenmpi-dev, mpiexec) not installed; stage skipped"
fi

stage "libtorch: muon::torch tests (g++; clang++ ASan + UBSan), CNN and transformer examples (short), package consumer"
# Only where Debian's libtorch-dev is installed (scripts/deps.sh tries to).
if dpkg-query -W -f='${Status}' libtorch-dev 2>/dev/null | grep -q "install ok installed"; then
  torch_cmake=(-G Ninja -DMUON_WARNINGS_AS_ERRORS=ON -DMUON_ENABLE_TORCH=ON -DMUON_ENABLE_CUDA=OFF
               -DMUON_BUILD_BENCHMARKS=OFF)
  cmake -S . -B build/torch -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=g++ "${torch_cmake[@]}"
  # clang++ with ASan + UBSan as in stage 2 (libtorch itself is not instrumented).
  cmake -S . -B build/torch-clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only -DNDEBUG" -DMUON_SANITIZE=ON \
    -DMUON_BUILD_EXAMPLES=OFF "${torch_cmake[@]}"
  # The two compilers side by side (one job each): about as long as one.
  cmake --build build/torch -j 1 --target test_torch libtorch_fashion_mnist transformer_lm &
  torch_gcc=$!
  cmake --build build/torch-clang -j 1 --target test_torch
  wait "$torch_gcc"
  run_ctest build/torch -j "$jobs" -R '^test_(torch|doc_snippets_torch)$'
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 run_ctest build/torch-clang -R '^test_torch$'
  if [[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
    ./build/torch/examples/libtorch_fashion_mnist/libtorch_fashion_mnist --quick \
      --out build/torch/example_out
  else
    echo "dataset-fashion-mnist not installed: the example's short run skipped"
  fi
  # The byte-level GPT: the loss must fall and the QK-Clip arm must clip (exit 3 if not).
  if [[ -d /usr/share/games/fortunes ]]; then
    ./build/torch/examples/transformer_lm/transformer_lm --quick --out build/torch/transformer_lm_out
  else
    echo "fortunes not installed: the transformer example's short run skipped"
  fi
  rm -rf build/torch-prefix
  cmake --install build/torch --prefix build/torch-prefix >/dev/null
  cmake -S tests/consumer_torch -B build/consumer-torch -G Ninja \
    -DCMAKE_PREFIX_PATH="$root/build/torch-prefix"
  cmake --build build/consumer-torch
  ./build/consumer-torch/muon_torch_consumer
else
  echo "libtorch-dev not installed; stage skipped"
fi

stage "libFuzzer: checkpoint loader (clang, 30 s)"
# The fuzz targets live in tests/ (configured, not built); only they are built.
cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DMUON_WARNINGS_AS_ERRORS=ON -DMUON_BUILD_FUZZERS=ON -DMUON_BUILD_BENCHMARKS=OFF \
  -DMUON_BUILD_EXAMPLES=OFF -DMUON_ENABLE_CUDA=OFF
cmake --build build/fuzz -j "$jobs" --target fuzz_checkpoint fuzz_checkpoint_seed
rm -rf build/fuzz/corpus && mkdir -p build/fuzz/corpus
./build/fuzz/tests/fuzz_checkpoint_seed build/fuzz/corpus  # valid checkpoints as seeds
./build/fuzz/tests/fuzz_checkpoint -max_total_time=30 -max_len=8192 -rss_limit_mb=2048 \
  -print_final_stats=1 build/fuzz/corpus

stage "package: install, then consume with find_package and add_subdirectory"
prefix="$root/build/prefix"
rm -rf "$prefix"
cmake --install build/gcc --prefix "$prefix"
cmake -S tests/consumer -B build/consumer-installed -G Ninja -DCMAKE_PREFIX_PATH="$prefix"
cmake --build build/consumer-installed
./build/consumer-installed/muon_consumer
cmake -S tests/consumer -B build/consumer-subdir -G Ninja -DMUON_CONSUMER_SOURCE_DIR="$root"
cmake --build build/consumer-subdir
./build/consumer-subdir/muon_consumer
# pkg-config: the installed muon.pc gives the include flags (and Requires eigen3);
# the consumer also checks that version.hpp matches the .pc file's Version.
pc() { PKG_CONFIG_PATH="$prefix/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" pkg-config "$@"; }
pc_version=$(pc --modversion muon)
# The flags exactly as a user gets them: they must give Eigen as a system
# header (-isystem), or Eigen's AVX-512 code warns (unused variables) under
# -Wall -march=native, and -Werror fails here. g++ 12's own AVX-512 intrinsics
# trip -W(maybe-)uninitialized wherever Eigen inlines them, whatever the
# include flags (GCC bug 105593, fixed in 13): the README's advice for it.
pc_cflags=$(pc --cflags muon)
pc_libs=$(pc --libs muon)
echo "pkg-config: muon $pc_version, cflags: $pc_cflags"
gcc_105593=""
(($(g++ -dumpversion | cut -d. -f1) < 13)) && gcc_105593=-Wno-uninitialized
mkdir -p build/consumer-pkgconfig
# shellcheck disable=SC2086  # the flags are meant to split into words
g++ -std=c++17 -O2 -march=native -Wall -Wextra -Wpedantic -Werror $gcc_105593 $pc_cflags \
  -DMUON_EXPECTED_VERSION="\"$pc_version\"" \
  tests/consumer/main.cpp -o build/consumer-pkgconfig/muon_consumer $pc_libs
./build/consumer-pkgconfig/muon_consumer

echo
echo "all stages passed ($((SECONDS / 60)) min $((SECONDS % 60)) s)"
