// SPDX-License-Identifier: MIT
#pragma once
/// \file example_support.hpp
/// \brief What demo.cpp and svd_vs_newton_schulz.cpp share: the seeded
/// gradient-like input, the schedules they compare and the timer. One copy,
/// so the two programs keep measuring the same thing and their numbers can
/// be read side by side.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <vector>

#include <muon/muon.hpp>

namespace muon_examples {

/// A seeded rows x cols float matrix with a gradient's kind of spectrum: a
/// rank-`rank` signal with singular values about 1, 1/2, ..., 1/rank plus
/// dense noise with singular values about 5e-3 * (1 +- sqrt(min/max)) of
/// the two sizes. The spread over three orders of magnitude is what makes
/// the choice of schedule matter: Newton–Schulz is slowest on the small end.
inline muon::Matrix<float> gradient_like(Eigen::Index rows, Eigen::Index cols, Eigen::Index rank,
                                         unsigned seed) {
  using Index = Eigen::Index;
  using MatrixF = muon::Matrix<float>;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // The fill order is part of what a seed means: the numbers the examples
  // print (and the docs quote) depend on it.
  auto gaussian = [&](Index r, Index c) {
    MatrixF M(r, c);
    for (Index j = 0; j < c; ++j)
      for (Index i = 0; i < r; ++i) M(i, j) = normal(rng);
    return M;
  };
  // Gaussian columns of length k have norm about sqrt(k): divide it out.
  MatrixF left = gaussian(rows, rank) / std::sqrt(float(rows));
  const MatrixF right = gaussian(cols, rank) / std::sqrt(float(cols));
  for (Index k = 0; k < rank; ++k) left.col(k) /= float(k + 1);
  const float noise = 5e-3f / std::sqrt(float(std::max(rows, cols)));
  return left * right.transpose() + noise * gaussian(rows, cols);
}

/// One Newton–Schulz configuration to compare.
struct ScheduleRun {
  muon::Schedule schedule;
  int steps;
};

/// Every built-in schedule at the default 5 steps, then Polar Express at 6:
/// 5 leave the small end of this spread short of 1, 6 bring s/||G||_F down
/// to 1e-3 within 1e-2 of it.
inline std::vector<ScheduleRun> compared_schedules() {
  return {{muon::Schedule::jordan(), 5},
          {muon::Schedule::cubic(), 5},
          {muon::Schedule::quintic(), 5},
          {muon::Schedule::polar_express(), 5},
          {muon::Schedule::polar_express(), 6}};
}

/// Median wall time (steady_clock) of `runs` calls of `work`, in
/// milliseconds: the median, since other work on a shared machine only ever
/// makes a run slower.
template <class Work>
double median_ms(int runs, Work&& work) {
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    work();
    const auto stop = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace muon_examples
