// SPDX-License-Identifier: MIT
#pragma once
/// \file update.hpp
/// \brief The Muon update policy for one parameter: learning-rate adjustment
/// by shape and decoupled (optionally cautious) weight decay.
///
/// Shapes are those of the 2-D matrix Newton–Schulz sees: out = rows
/// (fan-out, A), in = cols (fan-in, B). A conv filter (out, in, kh, kw) is
/// flattened to out x (in*kh*kw) and adjusted with THAT shape; scaling by kh
/// or kw separately is a known defect of some ports.
///
/// The named rules (LrAdjust, adjusted_lr for them, lr_adjust_from_name,
/// lr_adjust_name) live in policy.hpp, shared with the CUDA backend; this
/// header adds the user-function rule and the update itself.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "detail/elementwise.hpp"
#include "error.hpp"
#include "policy.hpp"

namespace muon {

/// A user-supplied adjustment rule: (lr, out_dim, in_dim) -> adjusted lr.
using LrAdjustFn = std::function<double(double lr, Eigen::Index out_dim, Eigen::Index in_dim)>;

/// The adjusted learning rate under a user rule; the rule's result must be
/// finite (muon::Error naming "adjust_lr_fn" otherwise, or when it is empty).
inline double adjusted_lr(double lr, Eigen::Index out_dim, Eigen::Index in_dim,
                          const LrAdjustFn& rule) {
  detail::check_arg(static_cast<bool>(rule), "adjust_lr_fn", "is empty");
  detail::check_adjust_args(lr, out_dim, in_dim);
  const double adjusted = rule(lr, out_dim, in_dim);
  detail::check_arg(std::isfinite(adjusted), "adjust_lr_fn", "returned a non-finite learning rate");
  return adjusted;
}

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
/// Allocates nothing. Throws muon::Error naming "lr", "lr_adjusted",
/// "weight_decay" or "update" before writing anything.
template <class DP, class DU>
void apply_muon_update(const Eigen::DenseBase<DP>& param, const Eigen::DenseBase<DU>& update,
                       double lr, double lr_adjusted, double weight_decay, bool cautious) {
  using PS = typename DP::Scalar;
  using US = typename DU::Scalar;
  static_assert(detail::supported_scalars<PS, US>(), "muon: unsupported scalar");
  using C = detail::elementwise_compute_t<PS, US>;

  detail::check_arg(std::isfinite(lr) && lr >= 0.0, "lr", "must be finite and >= 0");
  detail::check_arg(std::isfinite(lr_adjusted), "lr_adjusted", "must be finite");
  detail::check_arg(std::isfinite(weight_decay) && weight_decay >= 0.0, "weight_decay",
                    "must be finite and >= 0");
  detail::require_same_shape(param, "param", update, "update");

  auto& p_out = detail::writable(param);
  const C decay = static_cast<C>(1.0 - lr * weight_decay);
  const C step = static_cast<C>(lr_adjusted);
  for (Eigen::Index j = 0; j < param.cols(); ++j) {
    for (Eigen::Index i = 0; i < param.rows(); ++i) {
      C p = detail::read<C>(param, i, j);
      const C u = detail::read<C>(update, i, j);
      if (!cautious || u * p > C(0)) p *= decay;
      detail::write(p_out, i, j, p - step * u);
    }
  }
}

}  // namespace muon
