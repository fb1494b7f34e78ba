// SPDX-License-Identifier: MIT
#pragma once
/// \file bench_common.hpp
/// \brief What the CPU benchmarks share: the thread counts they compare at,
/// one switch that puts every engine on the same number of threads, and the
/// hand-written Eigen Newton–Schulz a user would write (the baseline).
///
/// Equal resources: a comparison is only meaningful when the baseline gets
/// the threads the library gets. The benchmarks are built with OpenMP when
/// CMake finds it (MUON_BENCH_OPENMP), so Eigen's own products in the
/// baseline run on Eigen::setNbThreads(t) threads, as in a user's program
/// compiled with -fopenmp.

#include <Eigen/Core>
#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <muon/backend/eigen/thread_pool.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef MUON_USE_BLAS
#include <cblas.h>  // OpenBLAS's declares openblas_set_num_threads (OPENBLAS_VERSION)
#endif

namespace bench {

/// True when the hand-written baseline can use more than one thread.
inline bool baseline_threads_available() {
#ifdef EIGEN_HAS_OPENMP
  return true;
#else
  return false;
#endif
}

/// The thread counts to compare at: MUON_BENCH_THREADS (comma list), default
/// 1 and the machine's cores. Counts above 1 are dropped when the baseline
/// cannot thread (a build without OpenMP): no ratio mixes thread counts.
inline std::vector<int> thread_counts() {
  std::vector<int> counts;
  if (const char* env = std::getenv("MUON_BENCH_THREADS")) {
    std::stringstream list(env);
    std::string item;
    while (std::getline(list, item, ','))
      if (const int t = std::atoi(item.c_str()); t > 0) counts.push_back(t);
  }
  if (counts.empty()) {
    counts.push_back(1);
    counts.push_back(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  }
  if (!baseline_threads_available())
    counts.erase(std::remove_if(counts.begin(), counts.end(), [](int t) { return t > 1; }),
                 counts.end());
  if (counts.empty()) counts.push_back(1);
  std::sort(counts.begin(), counts.end());
  counts.erase(std::unique(counts.begin(), counts.end()), counts.end());
  return counts;
}

/// Puts every engine on `t` threads: this library's workspaces made from now
/// on, Eigen's OpenMP products (the baseline), OpenBLAS and OpenMP.
inline void use_threads(int t) {
  muon::set_num_threads(t);
#ifdef EIGEN_HAS_OPENMP
  Eigen::setNbThreads(t);
#endif
#ifdef _OPENMP
  omp_set_num_threads(t);
#endif
#if defined(MUON_USE_BLAS) && defined(OPENBLAS_VERSION)
  openblas_set_num_threads(t);
#endif
}

/// Jordan's quintic coefficients (Jordan et al., "Muon", 2024) and steps.
constexpr int kSteps = 5;
constexpr double kA = 3.4445, kB = -4.7750, kC = 2.0315;

/// The hand-written baseline: what a user writes with Eigen expressions.
/// Templated so the rounding reference can run the same code in double.
template <typename Matrix>
Matrix plain_eigen_ns5(const Matrix& G) {
  using S = typename Matrix::Scalar;
  const bool tall = G.rows() > G.cols();
  Matrix X = tall ? Matrix(G.transpose()) : G;
  X /= X.norm() + S(1e-7);
  for (int k = 0; k < kSteps; ++k) {
    Matrix A = X * X.transpose();
    Matrix B = S(kB) * A + S(kC) * A * A;
    X = S(kA) * X + B * X;
  }
  if (tall) X.transposeInPlace();
  return X;
}

}  // namespace bench
