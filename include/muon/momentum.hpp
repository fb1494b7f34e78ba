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
/// MomentumKind itself is in optim/options.hpp and the per-element maths in
/// optim/rules.hpp, shared with the optimizer and the CUDA backend.

#include <Eigen/Core>
#include <cmath>

#include "backend/eigen/elementwise.hpp"
#include "error.hpp"
#include "optim/options.hpp"
#include "optim/rules.hpp"

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
      detail::fail("momentum", "must be in [0, 1), got " + std::to_string(momentum));
    if (!is_valid(kind)) detail::fail("kind", "is not a MomentumKind value");
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
  const auto k = optim::rules::momentum_coefficients<C>(opt.momentum, opt.kind == MomentumKind::ema,
                                                        opt.nesterov);
  for (Eigen::Index j = 0; j < grad.cols(); ++j) {
    for (Eigen::Index i = 0; i < grad.rows(); ++i) {
      const C g = detail::read<C>(grad, i, j);
      detail::write(m_out, i, j, optim::rules::momentum_buffer(detail::read<C>(buf, i, j), g, k));
      // The Newton–Schulz input reads the buffer as stored (rounded), as torch does.
      detail::write(x_out, i, j, optim::rules::ns_input(detail::read<C>(buf, i, j), g, k));
    }
  }
}

}  // namespace muon
