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

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "detail/elementwise.hpp"
#include "error.hpp"

namespace muon {

/// How the learning rate is scaled by the matrix shape (A = out, B = in).
enum class LrAdjust {
  /// lr * sqrt(max(1, A/B)): K. Jordan's reference Muon, torch.optim.Muon's
  /// "original" (its default).
  original,
  /// lr * 0.2 * sqrt(max(A, B)): matches the update RMS of AdamW (Moonlight,
  /// "Muon is Scalable for LLM Training", arXiv 2502.16982).
  match_rms_adamw,
  /// lr * sqrt(A/B), unclamped: the spectral-norm scaling (Dion; torch's
  /// "spectral_unclamped"). Shrinks the lr of wide matrices.
  spectral,
  /// lr unchanged.
  none
};

/// A user-supplied adjustment rule: (lr, out_dim, in_dim) -> adjusted lr.
using LrAdjustFn = std::function<double(double lr, Eigen::Index out_dim, Eigen::Index in_dim)>;

/// The adjusted learning rate of an out_dim x in_dim matrix under `rule`.
/// Throws muon::Error naming "lr", "out_dim" or "in_dim" for a non-finite lr
/// or a dimension < 1.
inline double adjusted_lr(double lr, Eigen::Index out_dim, Eigen::Index in_dim, LrAdjust rule) {
  detail::check_arg(std::isfinite(lr), "lr", "must be finite");
  if (out_dim < 1) detail::fail_arg("out_dim", "must be >= 1, got " + std::to_string(out_dim));
  if (in_dim < 1) detail::fail_arg("in_dim", "must be >= 1, got " + std::to_string(in_dim));
  const double a = static_cast<double>(out_dim);
  const double b = static_cast<double>(in_dim);
  switch (rule) {
    case LrAdjust::original:
      return lr * std::sqrt(std::max(1.0, a / b));
    case LrAdjust::match_rms_adamw:
      return lr * 0.2 * std::sqrt(std::max(a, b));
    case LrAdjust::spectral:
      return lr * std::sqrt(a / b);
    case LrAdjust::none:
      return lr;
  }
  throw Error("rule: is not an LrAdjust value");
}

/// The adjusted learning rate under a user rule; the rule's result must be
/// finite (muon::Error naming "adjust_lr_fn" otherwise, or when it is empty).
inline double adjusted_lr(double lr, Eigen::Index out_dim, Eigen::Index in_dim,
                          const LrAdjustFn& rule) {
  detail::check_arg(static_cast<bool>(rule), "adjust_lr_fn", "is empty");
  detail::check_arg(std::isfinite(lr), "lr", "must be finite");
  if (out_dim < 1) detail::fail_arg("out_dim", "must be >= 1, got " + std::to_string(out_dim));
  if (in_dim < 1) detail::fail_arg("in_dim", "must be >= 1, got " + std::to_string(in_dim));
  const double adjusted = rule(lr, out_dim, in_dim);
  detail::check_arg(std::isfinite(adjusted), "adjust_lr_fn", "returned a non-finite learning rate");
  return adjusted;
}

/// Parses torch.optim.Muon's `adjust_lr_fn` names: "original",
/// "match_rms_adamw", "spectral" or "spectral_unclamped", and "none".
/// Anything else throws muon::Error naming "adjust_lr_fn".
inline LrAdjust lr_adjust_from_name(const std::string& name) {
  if (name == "original") return LrAdjust::original;
  if (name == "match_rms_adamw") return LrAdjust::match_rms_adamw;
  if (name == "spectral" || name == "spectral_unclamped") return LrAdjust::spectral;
  if (name == "none") return LrAdjust::none;
  throw Error("adjust_lr_fn: unknown rule \"" + name +
              "\" (expected original, match_rms_adamw, spectral, spectral_unclamped or none)");
}

/// The canonical name of a rule (round-trips through lr_adjust_from_name).
inline const char* lr_adjust_name(LrAdjust rule) {
  switch (rule) {
    case LrAdjust::original:
      return "original";
    case LrAdjust::match_rms_adamw:
      return "match_rms_adamw";
    case LrAdjust::spectral:
      return "spectral";
    case LrAdjust::none:
      return "none";
  }
  throw Error("rule: is not an LrAdjust value");
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
