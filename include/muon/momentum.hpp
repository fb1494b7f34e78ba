// SPDX-License-Identifier: MIT
#pragma once
/// \file momentum.hpp
/// \brief Momentum buffers for Muon: EMA (lerp) or sum form, with or without
/// Nesterov, producing the matrix Newton–Schulz orthogonalizes.
///
/// Two conventions exist in public implementations (notation: g gradient,
/// m buffer, mu momentum):
///
/// | kind | buffer update       | Nesterov NS input      | used by                       |
/// |------|---------------------|------------------------|-------------------------------|
/// | ema  | m <- m + (1-mu)(g-m) | lerp(g, m, mu)         | torch.optim.Muon, K. Jordan  |
/// | sum  | m <- mu m + g        | g + mu m               | Moonlight, Dion              |
///
/// Starting from zero buffers with a constant mu, the two are the same up to a
/// positive scale: m_ema = (1-mu) m_sum at every step (both recurrences are
/// linear and the ema one is fed (1-mu) g), hence the Nesterov inputs also
/// differ only by (1-mu), and Newton–Schulz, which normalizes its input, maps
/// them to the same matrix. The scale matters when mu changes over time
/// (momentum warmup) or when something other than NS reads the buffer.
///
/// MomentumKind itself is in policy.hpp, shared with the CUDA backend.

#include <Eigen/Core>
#include <cmath>

#include "detail/elementwise.hpp"
#include "error.hpp"
#include "policy.hpp"

namespace muon {

/// Options of the momentum step. Plain data; validate() checks them.
struct MomentumOptions {
  /// mu, the weight of the previous buffer. Default 0.95 (torch.optim.Muon).
  /// Must be in [0, 1).
  double momentum = 0.95;
  /// Feed Newton–Schulz the Nesterov look-ahead instead of the buffer.
  /// Default true (torch.optim.Muon).
  bool nesterov = true;
  /// Recurrence of the buffer. Default ema (torch.optim.Muon).
  MomentumKind kind = MomentumKind::ema;

  /// Throws muon::Error naming the field when an option is out of range.
  void validate() const {
    if (!(std::isfinite(momentum) && momentum >= 0.0 && momentum < 1.0))
      detail::fail_arg("momentum", "must be in [0, 1), got " + std::to_string(momentum));
    detail::check_arg(is_valid(kind), "kind", "is not a MomentumKind value");
  }
};

/// One momentum step for one parameter.
///
/// Updates `buf` in place from `grad` (never modified) and writes the
/// Newton–Schulz input into `ns_input`:
///
///     ema:  m <- m + (1-mu)(g - m);  ns_input = nesterov ? (1-mu) g + mu m : m
///     sum:  m <- mu m + g;           ns_input = nesterov ? g + mu m : m
///
/// where m on the right of ns_input is the new buffer as stored (rounded to
/// buf's scalar, as torch reads back its buffer). The three arguments must
/// have the same shape; their scalars may differ (an fp32 buffer for a bf16
/// gradient is the usual mixed-precision setup). Arithmetic is in float, or in
/// double when any operand is double. `ns_input` must not overlap `grad` or
/// `buf`. Allocates nothing. Throws muon::Error (naming "momentum", "buf" or
/// "ns_input") before writing anything.
template <class DG, class DB, class DO>
void momentum_step(const Eigen::DenseBase<DG>& grad, const Eigen::DenseBase<DB>& buf,
                   const Eigen::DenseBase<DO>& ns_input, const MomentumOptions& opt) {
  using GS = typename DG::Scalar;
  using BS = typename DB::Scalar;
  using OS = typename DO::Scalar;
  static_assert(detail::supported_scalars<GS, BS, OS>(), "muon: unsupported scalar");
  using C = detail::elementwise_compute_t<GS, BS, OS>;

  opt.validate();
  detail::require_same_shape(grad, "grad", buf, "buf");
  detail::require_same_shape(grad, "grad", ns_input, "ns_input");

  auto& m_out = detail::writable(buf);
  auto& x_out = detail::writable(ns_input);
  const C mu = static_cast<C>(opt.momentum);
  const C one_minus_mu = static_cast<C>(1.0 - opt.momentum);
  const bool ema = opt.kind == MomentumKind::ema;

  for (Eigen::Index j = 0; j < grad.cols(); ++j) {
    for (Eigen::Index i = 0; i < grad.rows(); ++i) {
      const C g = detail::read<C>(grad, i, j);
      const C m_old = detail::read<C>(buf, i, j);
      // The lerp form m + w (g - m) is what torch's lerp_ evaluates for a
      // weight w = 1-mu < 0.5.
      const C m_new = ema ? m_old + one_minus_mu * (g - m_old) : mu * m_old + g;
      detail::write(m_out, i, j, m_new);
      const C m = detail::read<C>(buf, i, j);  // the stored (rounded) buffer
      C x = m;
      if (opt.nesterov) {
        // lerp(g, m, mu) = m + (1-mu)(g - m): torch's branch for weight >= 0.5.
        x = ema ? m + one_minus_mu * (g - m) : g + mu * m;
      }
      detail::write(x_out, i, j, x);
    }
  }
}

}  // namespace muon
