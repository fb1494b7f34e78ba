// SPDX-License-Identifier: MIT
#pragma once
/// \file update.hpp
/// \brief The Muon update policy for one parameter: decoupled (optionally
/// cautious) weight decay and the step with the shape-adjusted lr.
///
/// Shapes are those of the 2-D matrix Newton–Schulz sees: out = rows
/// (fan-out, A), in = cols (fan-in, B). A conv filter (out, in, kh, kw) is
/// flattened to out x (in*kh*kw) and adjusted with THAT shape; scaling by kh
/// or kw separately is a known defect of some ports.
///
/// The lr rules (LrAdjust, adjusted_lr, LrAdjustFn, lr_adjust_from_name)
/// live in optim/options.hpp and the per-element maths in optim/rules.hpp,
/// shared with the optimizer and the CUDA backend; this header adds the
/// update over Eigen arguments.

#include <Eigen/Core>
#include <cmath>

#include "backend/eigen/elementwise.hpp"
#include "error.hpp"
#include "optim/options.hpp"
#include "optim/rules.hpp"

namespace muon {

/// Decoupled weight decay, then the update, in torch.optim.Muon's order:
///
///     p <- p (1 - lr * weight_decay)      (UNadjusted lr)
///     p <- p - lr_adjusted * update
///
/// With `cautious`, the decay is applied only where update and parameter have
/// the same sign (update * p > 0), i.e. where the update already moves p
/// towards zero ("Cautious Weight Decay", Chen et al. 2025, arXiv 2510.12402).
/// `update` must have param's shape; its scalar may differ. Arithmetic is in
/// float, or double when either operand is double, and p is rounded once.
/// Allocates nothing.
///
/// Checked: a first, read-only pass computes every new p, so a NaN or Inf
/// update (or parameter), or a p that would overflow its type, throws
/// muon::Error naming the argument and the element, and nothing is written;
/// so do a bad "lr", "lr_adjusted", "weight_decay" or shape. The pass costs
/// one more read of both arguments. (muon::Optimizer checks every parameter
/// of a step this way, and can skip instead of throwing: NonFinitePolicy.)
template <class DP, class DU>
void apply_muon_update(const Eigen::DenseBase<DP>& param, const Eigen::DenseBase<DU>& update,
                       double lr, double lr_adjusted, double weight_decay, bool cautious) {
  using PS = typename DP::Scalar;
  using US = typename DU::Scalar;
  static_assert(detail::supported_scalars<PS, US>(), "muon: unsupported scalar");
  using C = detail::elementwise_compute_t<PS, US>;

  if (!(std::isfinite(lr) && lr >= 0.0)) detail::fail("lr", "must be finite and >= 0");
  if (!std::isfinite(lr_adjusted)) detail::fail("lr_adjusted", "must be finite");
  if (!(std::isfinite(weight_decay) && weight_decay >= 0.0))
    detail::fail("weight_decay", "must be finite and >= 0");
  detail::require_same_shape(param, "param", update, "update");

  auto& p_out = detail::writable(param);
  const auto k = optim::rules::muon_update_coefficients<C>(
      weight_decay_multiplier(WeightDecayForm::decoupled, lr, weight_decay, lr), lr_adjusted,
      cautious);
  // Read only: every new p must be finite.
  for (Eigen::Index j = 0; j < param.cols(); ++j)
    for (Eigen::Index i = 0; i < param.rows(); ++i) {
      const C p = detail::read<C>(param, i, j), u = detail::read<C>(update, i, j);
      if (!std::isfinite(u)) detail::fail_at("update", "holds NaN or Inf", i, j);
      if (!std::isfinite(p)) detail::fail_at("param", "holds NaN or Inf", i, j);
      if (!detail::finite_in<PS>(optim::rules::muon_parameter(p, u, k)))
        detail::fail_at("param", "would overflow", i, j);
    }
  for (Eigen::Index j = 0; j < param.cols(); ++j)
    for (Eigen::Index i = 0; i < param.rows(); ++i)
      detail::write(p_out, i, j,
                    optim::rules::muon_parameter(detail::read<C>(param, i, j),
                                                 detail::read<C>(update, i, j), k));
}

}  // namespace muon
