// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/step_rules.hpp
/// \brief How a step composes the per-element rules of rules.hpp, written
/// once: the checks of an element and what they find, the momentum and the
/// Newton–Schulz input in one pass, AdamW's element, the normalization's
/// denominator, and the Muon variants' per-line and per-block scalars.
/// Every function is MUON_HOST_DEVICE: the CPU loops (backend/eigen/) and
/// the CUDA kernels (backend/cuda/kernels.cuh) only index memory and call
/// them, so a CPU test of a step rule runs the kernels' maths.
///
/// Template parameters: C the compute scalar (float, or double for double
/// parameters); S the storage scalar a value is rounded to before it is
/// used again (the momentum's buffer, the parameter's type): a rule that
/// feeds a stored value onwards rounds it first, as the stored value is
/// what the next reader sees.

#include <cstdint>

#include "host_device.hpp"
#include "rules.hpp"
#include "step_report.hpp"

namespace muon {
namespace optim {
namespace step {

// ---- Muon's elementwise half ---------------------------------------------------

/// One element's new momentum (as stored) and Newton–Schulz input.
template <class C>
struct MomentumElement {
  C momentum;  ///< the new buffer value, rounded to its storage type
  C input;     ///< what Newton–Schulz orthogonalizes (rules::ns_input of the stored value)
};

/// m <- the momentum rule of the (regularized) gradient, rounded to the
/// buffer's storage S; the Newton–Schulz input from that stored value. p is
/// read only under the l2 form of weight decay (g + lambda p).
template <class S, class C>
MUON_HOST_DEVICE MomentumElement<C> momentum_element(C m, C raw_grad, C p,
                                                     const rules::MomentumCoefficients<C>& k) {
  const C g = rules::regularized_grad(raw_grad, p, k);
  const C stored = static_cast<C>(static_cast<S>(rules::momentum_buffer(m, g, k)));
  return {stored, rules::ns_input(stored, g, k)};
}

/// The checks of one Muon element, reading only: the gradient finite, the
/// new momentum (stored as S) and the Newton–Schulz input finite. Returns
/// the flags it raises (0: fine).
template <class S, class C>
MUON_HOST_DEVICE int muon_element_flags(C m, C raw_grad, C p,
                                        const rules::MomentumCoefficients<C>& k) {
  if (!rules::finite(raw_grad)) return kNonFiniteGrad;
  const MomentumElement<C> e = momentum_element<S>(m, raw_grad, p, k);
  if (!rules::finite(e.momentum) || !rules::finite(e.input)) return kNonFiniteState;
  return 0;
}

// ---- AdamW --------------------------------------------------------------------

/// One AdamW element's new moments (as stored) and parameter (in C, before
/// its rounding to the parameter's type).
template <class C>
struct AdamWElement {
  C exp_avg, exp_avg_sq, param;
};

/// One AdamW element's new moments, rounded to their storage S.
template <class C>
struct AdamWMoments {
  C exp_avg, exp_avg_sq;
};

/// The first half of adamw_element: the new moments as stored. A loop that
/// takes the square roots of a run of elements at once (the CPU engine)
/// calls this, then rules::adamw_parameter_from_root.
template <class S, class C>
MUON_HOST_DEVICE AdamWMoments<C> adamw_moments(C g, C m, C v,
                                               const rules::AdamWCoefficients<C>& k) {
  return {static_cast<C>(static_cast<S>(rules::adamw_exp_avg(m, g, k))),
          static_cast<C>(static_cast<S>(rules::adamw_exp_avg_sq(v, g, k)))};
}

/// torch.optim.AdamW's element: the moments, rounded to their storage S,
/// then the parameter from the moments as stored.
template <class S, class C>
MUON_HOST_DEVICE AdamWElement<C> adamw_element(C p, C g, C m, C v,
                                               const rules::AdamWCoefficients<C>& k) {
  const AdamWMoments<C> x = adamw_moments<S>(g, m, v, k);
  return {x.exp_avg, x.exp_avg_sq, rules::adamw_parameter(p, x.exp_avg, x.exp_avg_sq, k)};
}

/// The checks of one AdamW element, reading only: the gradient finite, the
/// new moments (stored as S) finite, the new parameter finite once rounded
/// to its type (`to_param(x)`: x rounded to the parameter's type and back to
/// C; each backend knows its 16-bit types' conversions). Returns the flags
/// it raises (0: fine).
template <class S, class C, class ToParam>
MUON_HOST_DEVICE int adamw_element_flags(C p, C g, C m, C v, const rules::AdamWCoefficients<C>& k,
                                         ToParam to_param) {
  if (!rules::finite(g)) return kNonFiniteGrad;
  const AdamWElement<C> e = adamw_element<S>(p, g, m, v, k);
  if (!rules::finite(e.exp_avg) || !rules::finite(e.exp_avg_sq)) return kNonFiniteState;
  return rules::finite(to_param(e.param)) ? 0 : kNonFiniteUpdate;
}

// ---- AdamW's check without computing the update --------------------------------
//
// adamw_element_flags computes each element's whole update (a square root
// and a divide) only to learn whether it stays finite, and the write pass
// computes it again. The cheap check instead gathers, over a run of
// elements, the largest |g|, |m|, |v| and |p| and whether the old moments
// keep m^2 <= q v (q = adamw_ratio_square(k)), reading only and computing no
// update; adamw_run_is_finite then bounds every element's new moments and
// parameter from those few numbers. When the bound stays below the types'
// limits, no element of the run can overflow, and every check would pass;
// otherwise (a value that is not finite, values near a limit) the run is
// checked element by element with adamw_element_flags. The flags are the
// same either way.

/// What the cheap check gathers over a run of elements (in double; NaN or
/// infinite when some value of the run is not finite). exp_avg_sq is the
/// largest v, NaN when some v is negative: the bound relies on v >= 0, which
/// the rule keeps (a negative v can only come from a corrupt state).
struct AdamWExtent {
  double grad = 0, exp_avg = 0, exp_avg_sq = 0, param = 0;  ///< the largest magnitudes
  /// The largest m^2 - q v of the run in C (<= 0: every element keeps
  /// m^2 <= q v).
  double ratio_excess = 0;
};

/// The largest finite values the step may produce: the moments' storage S
/// (and C), the parameter's type T (and C), and C itself.
struct AdamWLimits {
  double state, param, compute;
};

/// q of m^2 <= q v: twice K^2 = (1-b1)^2 / ((1-b2)(1 - b1^2/b2)), which
/// bounds m_t^2 / v_t for moments made by this rule from zero with any
/// gradients when b1^2 < b2 (Cauchy–Schwarz over the sums that define them);
/// 0 otherwise (the bound then uses eps alone). The factor 2 leaves room for
/// rounding and for b1, b2 changed between steps.
template <class C>
MUON_HOST_DEVICE C adamw_ratio_square(const rules::AdamWCoefficients<C>& k) {
  const double c1 = static_cast<double>(k.one_minus_beta1), b1 = 1.0 - c1;
  const double b2 = static_cast<double>(k.beta2), c2 = static_cast<double>(k.one_minus_beta2);
  if (!(b2 > 0.0) || !(c2 > 0.0) || !(b1 * b1 < b2)) return C(0);
  return static_cast<C>(2.0 * c1 * c1 / (c2 * (1.0 - b1 * b1 / b2)));
}

/// The largest |new p| an element of a run can reach, from the run's extent
/// (mathematically; the caller leaves room for rounding): |p| decay plus
/// step_size times a bound of |a| / (sqrt(b) / sqrt(1 - b2^t) + eps), where a
/// and b are the new moments:
///   always        |a| / eps
///   m^2 <= q v    sqrt(1 - b2^t) sqrt(b1^2 q / b2 + (1-b1)^2 / (1-b2)), as
///                 |a| <= b1 |m| + (1-b1) |g| <= that root times sqrt(b)
///                 (Cauchy–Schwarz with b = b2 v + (1-b2) g^2), plus the
///                 slack of m^2 and q v rounded below C's normal range.
/// NaN or infinite when the extent is.
template <class C>
MUON_HOST_DEVICE double adamw_parameter_bound(const AdamWExtent& e,
                                              const rules::AdamWCoefficients<C>& k) {
  const double c1 = static_cast<double>(k.one_minus_beta1), b1 = 1.0 - c1;
  const double b2 = static_cast<double>(k.beta2), c2 = static_cast<double>(k.one_minus_beta2);
  const double eps = static_cast<double>(k.eps),
               sbc2 = static_cast<double>(k.sqrt_bias_correction2);
  const double a = (b1 < 0 ? -b1 : b1) * e.exp_avg + (c1 < 0 ? -c1 : c1) * e.grad;
  double ratio = a / eps;
  if (e.ratio_excess <= 0.0 && b2 > 0.0 && c2 > 0.0 && sbc2 > 0.0) {
    const double q = static_cast<double>(adamw_ratio_square(k));
    const double tiny = rules::square_root(4.0 * static_cast<double>(rules::smallest_normal<C>()));
    const double root = rules::square_root(b1 * b1 * q / b2 + c1 * c1 / c2);
    const double adam = sbc2 * root + ((b1 < 0 ? -b1 : b1) + root) * tiny / eps;
    ratio = adam < ratio ? adam : ratio;
  }
  const double decay = static_cast<double>(k.decay), step = static_cast<double>(k.step_size);
  return e.param * (decay < 0 ? -decay : decay) + (step < 0 ? -step : step) * ratio;
}

/// True when no element of a run with extent e can produce a value that is
/// not finite: the new moments within limits.state, every intermediate
/// within limits.compute, the new parameter within limits.param, each with
/// room for rounding (a factor 1 + 2^-6: moments stored in bf16 round by
/// 2^-9 at most). False for an extent that is not finite. When true, every
/// element's adamw_element_flags is 0.
template <class C>
MUON_HOST_DEVICE bool adamw_run_is_finite(const AdamWExtent& e,
                                          const rules::AdamWCoefficients<C>& k,
                                          const AdamWLimits& limits) {
  const double room = 1.0 + 1.0 / 64.0;
  const double c1 = static_cast<double>(k.one_minus_beta1), b1 = 1.0 - c1;
  const double b2 = static_cast<double>(k.beta2), c2 = static_cast<double>(k.one_minus_beta2);
  const double sbc2 = static_cast<double>(k.sqrt_bias_correction2);
  const double step = static_cast<double>(k.step_size);
  const double a1 = c1 < 0 ? -c1 : c1, step1 = step < 0 ? -step : step;
  // The new moments a = m + (1-b1)(g - m) and b = b2 v + ((1-b2) g) g
  // bound every intermediate of their own rules but g - m.
  const double diff = e.grad + e.exp_avg;
  const double a = (b1 < 0 ? -b1 : b1) * e.exp_avg + a1 * e.grad;
  const double b = (b2 < 0 ? -b2 : b2) * e.exp_avg_sq + (c2 < 0 ? -c2 : c2) * e.grad * e.grad;
  const double state = (a > b ? a : b) * room;
  if (!(state < limits.state) || !(diff * room < limits.compute)) return false;
  // The parameter's rule: sqrt(b) / sqrt(1 - b2^t), step_size a, then the
  // quotient and the difference, which the parameter's bound bounds.
  if (!(sbc2 > 0.0) || !(rules::square_root(b) / sbc2 * room < limits.compute)) return false;
  if (!(step1 * a * room < limits.compute)) return false;
  return adamw_parameter_bound(e, k) * room < limits.param;
}

// ---- Newton–Schulz's normalization ----------------------------------------------

/// The number X is divided by before the iteration: divisor * ||X|| plus eps
/// (eps_max false: K. Jordan's X / (||X|| + eps)) or at least eps (eps_max
/// true: torch.optim.Muon's X / max(||X||, eps)). In double on every backend.
MUON_HOST_DEVICE double normalization_denominator(double norm, double divisor, double eps,
                                                  bool eps_max) {
  const double scaled = divisor * norm;
  return eps_max ? (scaled > eps ? scaled : eps) : scaled + eps;
}

// ---- the variants' scalars --------------------------------------------------------

/// The factor that rescales an update of squared Frobenius norm actual_sq to
/// the squared norm target_sq: sqrt(target_sq / actual_sq), in double; 0
/// when actual_sq is 0 (a zero update stays zero).
template <class C>
MUON_HOST_DEVICE C norm_ratio(double target_sq, double actual_sq) {
  return actual_sq > 0.0 ? static_cast<C>(rules::square_root(target_sq / actual_sq)) : C(0);
}

/// Where NorMuon's second moment runs for a block stored row-major as
/// rows x cols in memory (a column-major parameter's block is its
/// transpose): one number per line, a line being a memory row (by_row) or
/// a memory column, along the longer side of the (out, in) matrix.
struct NormuonLines {
  bool by_row;         ///< lines are memory rows (else memory columns)
  std::int64_t count;  ///< lines: max(out, in)
  double averaged;     ///< entries per line, the mean's denominator
};

MUON_HOST_DEVICE NormuonLines normuon_lines(std::int64_t rows, std::int64_t cols,
                                            bool column_major) {
  // The (out, in) matrix's rows are memory rows, or memory columns of a
  // column-major view; V runs along the longer of out and in.
  const bool out_longer = column_major ? cols >= rows : rows >= cols;
  const bool by_row = column_major ? !out_longer : out_longer;
  return {by_row, by_row ? rows : cols, static_cast<double>(by_row ? cols : rows)};
}

/// NorMuon's line j: V_j <- beta2 V_j + (1 - beta2) s_j / averaged (s_j the
/// line's sum of O^2, in double), stored as S; returns the line's factor
/// f_j = 1 / sqrt(max(V_j, eps)) from the stored V_j.
template <class S, class C>
MUON_HOST_DEVICE double normuon_line(S& v, double line_sumsq, double averaged,
                                     const rules::SecondMomentCoefficients<C>& k) {
  v = static_cast<S>(
      rules::second_moment(static_cast<C>(v), static_cast<C>(line_sumsq / averaged), k));
  return static_cast<double>(rules::normuon_factor(static_cast<C>(v), k));
}

/// NorMuon's block scalar: ||O||_F / ||O f||_F, from the sums of O^2 and of
/// (O f)^2 (so the update keeps O's Frobenius norm).
template <class C>
MUON_HOST_DEVICE C normuon_ratio(double o_sumsq, double scaled_sumsq) {
  return norm_ratio<C>(o_sumsq, scaled_sumsq);
}

/// NorMuon's update entry: o f ratio (in this order on every backend).
template <class C>
MUON_HOST_DEVICE C normuon_entry(C o, double factor, C ratio) {
  return o * static_cast<C>(factor) * ratio;
}

/// AdaMuon's element: V <- beta2 V + (1 - beta2) o^2, stored as S; returns
/// the direction D = o / (sqrt(V_hat) + eps) from the stored V.
template <class S, class C>
MUON_HOST_DEVICE C adamuon_element(S& v, C o, const rules::SecondMomentCoefficients<C>& k) {
  v = static_cast<S>(rules::second_moment(static_cast<C>(v), o * o, k));
  return rules::adamuon_direction(o, static_cast<C>(v), k);
}

/// AdaMuon's block scalar: sqrt(min(m, n)) / ||D||_F (an orthogonal
/// matrix's Frobenius norm), from ||D||_F^2.
template <class C>
MUON_HOST_DEVICE C adamuon_ratio(std::int64_t rows, std::int64_t cols, double direction_sumsq) {
  return norm_ratio<C>(static_cast<double>(rows < cols ? rows : cols), direction_sumsq);
}

}  // namespace step
}  // namespace optim
}  // namespace muon
