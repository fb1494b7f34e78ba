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

/// torch.optim.AdamW's element: the moments, rounded to their storage S,
/// then the parameter from the moments as stored.
template <class S, class C>
MUON_HOST_DEVICE AdamWElement<C> adamw_element(C p, C g, C m, C v,
                                               const rules::AdamWCoefficients<C>& k) {
  const C a = static_cast<C>(static_cast<S>(rules::adamw_exp_avg(m, g, k)));
  const C b = static_cast<C>(static_cast<S>(rules::adamw_exp_avg_sq(v, g, k)));
  return {a, b, rules::adamw_parameter(p, a, b, k)};
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
  v = static_cast<S>(rules::second_moment(static_cast<C>(v), static_cast<C>(line_sumsq / averaged), k));
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
