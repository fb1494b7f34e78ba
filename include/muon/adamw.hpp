// SPDX-License-Identifier: MIT
#pragma once
/// \file adamw.hpp
/// \brief AdamW for the parameters Muon must not touch (embeddings, output
/// head, biases, norms, any non-matrix parameter).

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <string>

#include "detail/elementwise.hpp"
#include "error.hpp"

namespace muon {

/// AdamW options. Defaults are torch.optim.AdamW's. (K. Jordan's reference
/// Muon pairs Muon with an auxiliary Adam of beta2 0.95 and eps 1e-10; set the
/// fields for that.)
struct AdamWOptions {
  /// Learning rate. Default 1e-3. Must be finite and >= 0.
  double lr = 1e-3;
  /// First-moment decay. Default 0.9. Must be in [0, 1).
  double beta1 = 0.9;
  /// Second-moment decay. Default 0.999. Must be in [0, 1).
  double beta2 = 0.999;
  /// Added to the bias-corrected RMS. Default 1e-8. Must be finite and > 0.
  double eps = 1e-8;
  /// Decoupled weight decay, multiplied by lr. Default 0.01. Must be finite
  /// and >= 0.
  double weight_decay = 0.01;

  /// Throws muon::Error naming the field when an option is out of range.
  void validate() const {
    detail::check_arg(std::isfinite(lr) && lr >= 0.0, "lr", "must be finite and >= 0");
    detail::check_arg(std::isfinite(beta1) && beta1 >= 0.0 && beta1 < 1.0, "beta1",
                      "must be in [0, 1)");
    detail::check_arg(std::isfinite(beta2) && beta2 >= 0.0 && beta2 < 1.0, "beta2",
                      "must be in [0, 1)");
    detail::check_arg(std::isfinite(eps) && eps > 0.0, "eps", "must be finite and > 0");
    detail::check_arg(std::isfinite(weight_decay) && weight_decay >= 0.0, "weight_decay",
                      "must be finite and >= 0");
  }
};

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
/// double. Allocates nothing. Throws muon::Error naming "step", an option, or
/// the mismatched argument before writing anything.
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
    detail::fail_arg("step", "must be >= 1 (1 on the first call), got " + std::to_string(step));
  detail::require_same_shape(param, "param", grad, "grad");
  detail::require_same_shape(param, "param", exp_avg, "exp_avg");
  detail::require_same_shape(param, "param", exp_avg_sq, "exp_avg_sq");

  auto& p_out = detail::writable(param);
  auto& m_out = detail::writable(exp_avg);
  auto& v_out = detail::writable(exp_avg_sq);

  const double t = static_cast<double>(step);
  const double bias_correction1 = 1.0 - std::pow(opt.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(opt.beta2, t);
  const C decay = static_cast<C>(1.0 - opt.lr * opt.weight_decay);
  const C one_minus_beta1 = static_cast<C>(1.0 - opt.beta1);
  const C beta2 = static_cast<C>(opt.beta2);
  const C one_minus_beta2 = static_cast<C>(1.0 - opt.beta2);
  const C step_size = static_cast<C>(opt.lr / bias_correction1);
  const C sqrt_bias_correction2 = static_cast<C>(std::sqrt(bias_correction2));
  const C eps = static_cast<C>(opt.eps);

  for (Eigen::Index j = 0; j < param.cols(); ++j) {
    for (Eigen::Index i = 0; i < param.rows(); ++i) {
      const C g = detail::read<C>(grad, i, j);
      C m = detail::read<C>(exp_avg, i, j);
      C v = detail::read<C>(exp_avg_sq, i, j);
      m += one_minus_beta1 * (g - m);
      v = beta2 * v + one_minus_beta2 * g * g;
      detail::write(m_out, i, j, m);
      detail::write(v_out, i, j, v);
      // Like torch, the parameter step uses the moments as stored.
      m = detail::read<C>(exp_avg, i, j);
      v = detail::read<C>(exp_avg_sq, i, j);
      const C p = detail::read<C>(param, i, j) * decay;
      const C denom = std::sqrt(v) / sqrt_bias_correction2 + eps;
      detail::write(p_out, i, j, p - step_size * m / denom);
    }
  }
}

}  // namespace muon
