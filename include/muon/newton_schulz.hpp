// SPDX-License-Identifier: MIT
#pragma once
/// \file newton_schulz.hpp
/// \brief THE Newton–Schulz iteration, written once over a backend.
///
/// For a wide X (rows <= cols; callers transpose tall inputs so the Gram
/// matrix is the smaller one):
///
///     X <- X / (d ||X||_F + eps)        (or X / max(d ||X||_F, eps))
///     for k in 0 .. steps-1:
///         A = X X^T                    (symmetric)
///         B = b_k A + c_k A^2          (symmetric)
///         X = a_k X + B X
///
/// Each step maps every singular value s of X to a_k s + b_k s^3 + c_k s^5
/// and keeps the singular vectors. The backend supplies the products on its
/// own buffers; no backend carries a copy of this loop.
///
/// Backend concept (`be` below), all operating on buffers the backend owns:
///   be.normalize(divisor, eps, EpsMode)   X <- X / denominator(||X||_F)
///   be.gram()                             A <- X X^T
///   be.symmetric_polynomial(b, c)         B <- b A + c A^2
///   be.apply_polynomial(a)                X <- a X + B X

#include <cmath>
#include <limits>
#include <optional>

#include "coefficients.hpp"
#include "error.hpp"

namespace muon {

/// How eps enters the normalization denominator.
enum class EpsMode {
  add,  ///< X / (d ||X||_F + eps)  (reference Muon, Moonlight, Dion, Polar Express)
  max   ///< X / max(d ||X||_F, eps) (torch.optim.Muon)
};

/// Options of one orthogonalization. Plain data; validate() checks them.
struct NewtonSchulzOptions {
  /// Per-step polynomial coefficients. Default: Jordan's quintic.
  Schedule schedule = Schedule::jordan();
  /// Number of steps; past the schedule's list the last row repeats. Default 5.
  int steps = 5;
  /// Guards the division by the norm. Default 1e-7. Must be > 0.
  double eps = 1e-7;
  /// Where eps enters (see EpsMode). Default: add.
  EpsMode eps_mode = EpsMode::add;
  /// Extra divisor d on the norm (1.01, 1.02, ...). Unset: the schedule's own
  /// recommendation (1.01 for Polar Express, 1 otherwise).
  std::optional<double> norm_divisor;

  NewtonSchulzOptions() = default;
  explicit NewtonSchulzOptions(Schedule s, int n = 5) : schedule(std::move(s)), steps(n) {}

  /// Chainable setters.
  NewtonSchulzOptions& with_steps(int n) { steps = n; return *this; }
  NewtonSchulzOptions& with_eps(double e, EpsMode m) { eps = e; eps_mode = m; return *this; }
  NewtonSchulzOptions& with_norm_divisor(double d) { norm_divisor = d; return *this; }

  /// The divisor actually used: norm_divisor if set, else the schedule's.
  double divisor() const { return norm_divisor ? *norm_divisor : schedule.norm_divisor(); }

  /// Throws muon::Error naming the field when an option is out of range.
  void validate() const {
    detail::require(steps >= 0 && steps < 100, "options.steps", "must be in [0, 100)");
    detail::require(std::isfinite(eps) && eps > 0, "options.eps", "must be finite and > 0");
    const double d = divisor();
    detail::require(std::isfinite(d) && d > 0, "options.norm_divisor", "must be finite and > 0");
  }
};

namespace detail {

/// Runs the iteration on the backend's current X (already loaded, wide).
template <class Backend>
void newton_schulz_iterate(Backend& be, const NewtonSchulzOptions& opt) {
  be.normalize(opt.divisor(), opt.eps, opt.eps_mode);
  for (int k = 0; k < opt.steps; ++k) {
    const Coefficients& p = opt.schedule.at(static_cast<std::size_t>(k));
    be.gram();                          // A = X X^T
    be.symmetric_polynomial(p.b, p.c);  // B = b A + c A^2
    be.apply_polynomial(p.a);           // X = a X + B X
  }
}

/// The normalization denominator, shared by every backend's normalize().
inline double normalization_denominator(double norm, double divisor, double eps, EpsMode mode) {
  const double scaled = divisor * norm;
  return mode == EpsMode::add ? scaled + eps : (scaled > eps ? scaled : eps);
}

}  // namespace detail
}  // namespace muon
