// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/metrics.hpp
/// \brief The optimizer's post-step metrics (ParamMetrics, StepMetrics) and
/// how the CPU engine computes them: Frobenius norms, the orthogonality of
/// a block's Newton–Schulz output, a power-iteration estimate of the
/// parameter's spectral norm. Costs nothing while metrics are off.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../../optim/registry.hpp"
#include "../../scalar.hpp"
#include "eigen_products.hpp"

namespace muon {

/// Post-step numbers for one parameter (NaN where not applicable).
struct ParamMetrics {
  std::string_view name;
  Route route = Route::automatic;
  bool updated = false;
  double grad_norm = NAN;      ///< ||g||_F (NaN when the gradient was not finite)
  double momentum_norm = NAN;  ///< ||m||_F (Muon) or ||exp_avg||_F (AdamW)
  double update_rms = NAN;     ///< RMS of the update U (O, or the variant's), before the lr (Muon)
  /// Muon: the largest over the parameter's blocks of ||O O^T - I||_F on
  /// the smaller side, against a FULL-RANK semi-orthogonal matrix. Newton–
  /// Schulz maps a zero singular value to zero, so a rank-deficient
  /// gradient scores at least sqrt(its missing rank) however well the rest
  /// converged: a layer with d dead units (zero rows of the gradient) reads
  /// sqrt(d) or more. reference::orthogonality_error_on_range measures O on
  /// the gradient's range only (an offline check, it needs an SVD).
  double orthogonality_error = NAN;
  double spectral_norm = NAN;  ///< power-iteration estimate of ||W||_2 (Muon; stacked for batches)
};

struct StepMetrics {
  std::int64_t step = 0;
  double lr_factor = 1.0;  ///< the schedule's factor used this step
  std::vector<ParamMetrics> params;
};

namespace eigen {

/// One job's metric scratch (made on the first step with metrics on) and
/// the sums of its last step.
template <class C>
struct MetricScratch {
  std::vector<std::unique_ptr<detail::Syrk<C>>> syrk;  // per block: bound to its lane's packing
  std::vector<Matrix<C>> gram;
  Eigen::VectorXd power_u, power_v;
  double update_sumsq = 0;  ///< ||U||_F^2 over the job's blocks this step
  double orth_error = NAN;  ///< the largest block's ||O O^T - I||_F this step

  /// Forgets the products bound to a lane's packing buffers (the lanes changed).
  void unbind() {
    syrk.clear();
    gram.clear();
  }

  /// ||X X^T - I||_F of block b's result X (m x n, m <= n, column-major, as
  /// a workspace's iterate): a symmetric rank-k product into the lower
  /// triangle. `workspace_of(k)` is block k's workspace, for the scratch
  /// made on first use (one per block: m x m).
  template <class WorkspaceOf>
  double orthogonality_error(std::size_t b, std::size_t blocks,
                             const Eigen::Map<const Matrix<C>>& X, WorkspaceOf&& workspace_of) {
    if (syrk.size() != blocks) {
      unbind();
      for (std::size_t k = 0; k < blocks; ++k) {
        auto& ws = workspace_of(k);
        const Eigen::Index m = std::min(ws.rows(), ws.cols()), n = std::max(ws.rows(), ws.cols());
        syrk.push_back(std::make_unique<detail::Syrk<C>>(m, n, ws.resources()->packing(), 0));
        gram.emplace_back(m, m);
      }
    }
    Matrix<C>& G = gram[b];
    const Eigen::Index m = X.rows();
    G.setZero();
    syrk[b]->run(X.data(), m, G.data(), m, C(1));
    double sum = 0;
    for (Eigen::Index j = 0; j < m; ++j) {
      const double d = static_cast<double>(G(j, j)) - 1.0;
      sum += d * d;
      for (Eigen::Index r = j + 1; r < m; ++r)
        sum += 2.0 * static_cast<double>(G(r, j)) * static_cast<double>(G(r, j));
    }
    return std::sqrt(sum);
  }

  /// Two power iterations on W^T W per step, continuing from the last
  /// step's vector: cheap (4 numel flops) and converging as training
  /// proceeds. W: a map of the parameter's memory matrix.
  template <class Map>
  double spectral_estimate(const Map& W) {
    const Eigen::Index rows = W.rows(), cols = W.cols();
    if (power_v.size() != cols) {
      power_v = Eigen::VectorXd::Constant(cols, 1.0 / std::sqrt(static_cast<double>(cols)));
      power_u.resize(rows);
    }
    double sigma = 0;
    for (int it = 0; it < 2; ++it) {
      for (Eigen::Index r = 0; r < rows; ++r) {
        double acc = 0;
        for (Eigen::Index c = 0; c < cols; ++c) acc += to_double(W(r, c)) * power_v(c);
        power_u(r) = acc;
      }
      const double un = power_u.norm();
      if (!(un > 0) || !std::isfinite(un)) return un;
      power_u /= un;
      power_v.setZero();
      for (Eigen::Index r = 0; r < rows; ++r)
        for (Eigen::Index c = 0; c < cols; ++c) power_v(c) += to_double(W(r, c)) * power_u(r);
      sigma = power_v.norm();
      if (!(sigma > 0) || !std::isfinite(sigma)) return sigma;
      power_v /= sigma;
    }
    return sigma;
  }

  /// x as a double (16-bit types through float).
  template <class S>
  static double to_double(S x) {
    if constexpr (std::is_floating_point_v<S>)
      return static_cast<double>(x);
    else
      return static_cast<double>(static_cast<float>(x));
  }
  /// ||m||_F of any matrix, each entry taken in C first, summed in double.
  template <class M>
  static double frobenius(const M& m) {
    double sum = 0;
    for (Eigen::Index r = 0; r < m.rows(); ++r)
      for (Eigen::Index c = 0; c < m.cols(); ++c) {
        const double v = static_cast<double>(static_cast<C>(m(r, c)));
        sum += v * v;
      }
    return std::sqrt(sum);
  }
};

}  // namespace eigen
}  // namespace muon
