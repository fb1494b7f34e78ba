// SPDX-License-Identifier: MIT
#pragma once
/// \file adamw.hpp
/// \brief AdamW for the parameters Muon must not touch (embeddings, output
/// head, biases, norms, any non-matrix parameter).

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <string>

#include "backend/eigen/elementwise.hpp"
#include "error.hpp"
#include "optim/options.hpp"
#include "optim/rules.hpp"

namespace muon {

/// One bias-corrected AdamW step; `step` counts the calls on this parameter
/// and is 1 on the first. With t = step:
///
///     p <- p (1 - lr wd)
///     m <- m + (1-b1)(g - m)             (= b1 m + (1-b1) g)
///     v <- b2 v + (1-b2) g^2
///     p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
///
/// This is the update of torch.optim.AdamW (PyTorch's `_single_tensor_adam`
/// with decoupled weight decay, torch/optim/adam.py), after Loshchilov &
/// Hutter, "Decoupled Weight Decay Regularization", arXiv 1711.05101. The four
/// arguments must share a shape; their scalars may differ (fp32 moments for
/// bf16 parameters). Arithmetic is in float, or double when any operand is
/// double. Allocates nothing.
///
/// Checked: a first, read-only pass computes every new value, so a NaN or
/// Inf gradient (or moment, or parameter), or a moment or parameter that
/// would overflow its type, throws muon::Error naming the argument and the
/// element, and nothing is written; so do a bad "step", option or shape.
/// The pass costs one more read of the four arguments. (muon::Optimizer
/// checks every parameter of a step this way, and can skip instead of
/// throwing: NonFinitePolicy.)
template <class DP, class DG, class DM, class DV>
void adamw_step(const Eigen::DenseBase<DP>& param, const Eigen::DenseBase<DG>& grad,
                const Eigen::DenseBase<DM>& exp_avg, const Eigen::DenseBase<DV>& exp_avg_sq,
                std::int64_t step, const AdamWOptions& opt) {
  using PS = typename DP::Scalar;
  using GS = typename DG::Scalar;
  using MS = typename DM::Scalar;
  using VS = typename DV::Scalar;
  static_assert(detail::supported_scalars<PS, GS, MS, VS>(), "muon: unsupported scalar");
  using C = detail::elementwise_compute_t<PS, GS, MS, VS>;

  opt.validate();
  if (step < 1)
    detail::fail("step", "must be >= 1 (1 on the first call), got " + std::to_string(step));
  detail::require_same_shape(param, "param", grad, "grad");
  detail::require_same_shape(param, "param", exp_avg, "exp_avg");
  detail::require_same_shape(param, "param", exp_avg_sq, "exp_avg_sq");

  auto& p_out = detail::writable(param);
  auto& m_out = detail::writable(exp_avg);
  auto& v_out = detail::writable(exp_avg_sq);
  const auto k = optim::adamw_coefficients<C>(opt, opt.lr, step);
  // Read only: every value the write pass will store must be finite.
  for (Eigen::Index j = 0; j < param.cols(); ++j) {
    for (Eigen::Index i = 0; i < param.rows(); ++i) {
      const C g = detail::read<C>(grad, i, j);
      const C m0 = detail::read<C>(exp_avg, i, j), v0 = detail::read<C>(exp_avg_sq, i, j);
      const C p0 = detail::read<C>(param, i, j);
      if (!std::isfinite(g)) detail::fail_at("grad", "holds NaN or Inf", i, j);
      if (!std::isfinite(m0)) detail::fail_at("exp_avg", "holds NaN or Inf", i, j);
      if (!(std::isfinite(v0) && v0 >= C(0)))
        detail::fail_at("exp_avg_sq", "holds NaN, Inf or a negative value", i, j);
      if (!std::isfinite(p0)) detail::fail_at("param", "holds NaN or Inf", i, j);
      const C m = optim::rules::adamw_exp_avg(m0, g, k);
      const C v = optim::rules::adamw_exp_avg_sq(v0, g, k);
      if (!detail::finite_in<MS>(m)) detail::fail_at("exp_avg", "would overflow", i, j);
      if (!detail::finite_in<VS>(v)) detail::fail_at("exp_avg_sq", "would overflow", i, j);
      const C p = optim::rules::adamw_parameter(p0, static_cast<C>(static_cast<MS>(m)),
                                                static_cast<C>(static_cast<VS>(v)), k);
      if (!detail::finite_in<PS>(p)) detail::fail_at("param", "would overflow", i, j);
    }
  }
  for (Eigen::Index j = 0; j < param.cols(); ++j) {
    for (Eigen::Index i = 0; i < param.rows(); ++i) {
      const C g = detail::read<C>(grad, i, j);
      detail::write(m_out, i, j, optim::rules::adamw_exp_avg(detail::read<C>(exp_avg, i, j), g, k));
      detail::write(v_out, i, j,
                    optim::rules::adamw_exp_avg_sq(detail::read<C>(exp_avg_sq, i, j), g, k));
      // Like torch, the parameter step uses the moments as stored.
      detail::write(p_out, i, j,
                    optim::rules::adamw_parameter(detail::read<C>(param, i, j),
                                                  detail::read<C>(exp_avg, i, j),
                                                  detail::read<C>(exp_avg_sq, i, j), k));
    }
  }
}

}  // namespace muon
