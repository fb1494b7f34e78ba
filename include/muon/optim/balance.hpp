// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/balance.hpp
/// \brief Deterministic assignment of independent jobs to workers by cost:
/// which thread orthogonalizes which small matrix (muon::Optimizer), and
/// which rank is the home of which matrix (distributed optimizers).
///
/// Longest processing time first (Graham 1969): jobs in decreasing cost, each
/// to the worker with the least load so far. Its makespan is at most
/// 4/3 - 1/(3w) of the optimum for w workers. Ties break by job index, then
/// by the lowest worker, so every process computes the same assignment from
/// the same costs.

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <vector>

namespace muon {
namespace optim {

/// The Newton–Schulz cost of an r x c matrix up to a constant: the products
/// are m x m x n for m = min(r, c), n = max(r, c).
inline double newton_schulz_cost(double rows, double cols) {
  const double m = std::min(rows, cols), n = std::max(rows, cols);
  return m * m * n;
}

/// worker[j] in [0, workers) for each job j with cost costs[j] >= 0, by
/// longest processing time first. workers < 1 is treated as 1.
inline std::vector<int> assign_longest_first(const std::vector<double>& costs, int workers) {
  if (workers < 1) workers = 1;
  std::vector<std::size_t> order(costs.size());
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&costs](std::size_t a, std::size_t b) { return costs[a] > costs[b]; });
  std::vector<double> load(static_cast<std::size_t>(workers), 0.0);
  std::vector<int> worker(costs.size(), 0);
  for (std::size_t j : order) {
    const auto least = std::min_element(load.begin(), load.end());  // first of equal loads
    worker[j] = static_cast<int>(least - load.begin());
    *least += costs[j];
  }
  return worker;
}

}  // namespace optim
}  // namespace muon
