// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/rules.hpp
/// \brief The per-element maths of every update the optimizer makes, written
/// once: the CPU loops (backend/eigen/engine.hpp, momentum.hpp, update.hpp,
/// adamw.hpp) and the CUDA kernels (backend/cuda/kernels.cuh) call these
/// functions, composed by step_rules.hpp, and add their indexing. A CPU test
/// of a rule is a test of the kernel's maths.
///
/// C is the compute scalar (float, or double for double parameters). The
/// per-step scalars (mu, decays, step sizes) are computed once per step on
/// the host, in double, and passed in as C.
///
/// Notation: g gradient, m momentum buffer (Muon) or first moment (AdamW),
/// v second moment, p parameter, o the orthogonalized update, mu momentum.

#include <cmath>

#include "host_device.hpp"

namespace muon {
namespace optim {
namespace rules {

template <class C>
MUON_HOST_DEVICE C square_root(C x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);  // CUDA's device overloads for float and double
#else
  return std::sqrt(x);
#endif
}

MUON_HOST_DEVICE double power(double base, double exponent) {
#if defined(__CUDA_ARCH__)
  return ::pow(base, exponent);
#else
  return std::pow(base, exponent);
#endif
}

/// The smallest positive normal number of C (float or double).
template <class C>
MUON_HOST_DEVICE C smallest_normal() {
  return sizeof(C) == sizeof(float) ? C(1.17549435082228750797e-38)
                                    : C(2.22507385850720138309e-308);
}

/// True when x is neither NaN nor infinite (x - x is 0 exactly then).
template <class C>
MUON_HOST_DEVICE bool finite(C x) {
  return x - x == C(0);
}

// ---- Muon ---------------------------------------------------------------------

/// The scalars of one momentum step: mu, and 1 - mu computed in double.
template <class C>
struct MomentumCoefficients {
  C mu = C(0), one_minus_mu = C(1);
  bool ema = true;       ///< m <- m + (1-mu)(g - m); else the sum form m <- mu m + g
  bool nesterov = true;  ///< feed Newton–Schulz the look-ahead instead of m
  C l2 = C(0);           ///< lambda of WeightDecayForm::l2 (the gradient is g + lambda p)
  bool sign = false;     ///< feed Newton–Schulz sign(input) (AdaMuonForm::sign)
};

/// The momentum scalars from mu (1 - mu computed in double), the L2
/// coefficient (0 unless the group's weight decay is in the l2 form) and
/// whether Newton–Schulz gets the sign of its input (AdaMuon's sign form).
template <class C>
MUON_HOST_DEVICE MomentumCoefficients<C> momentum_coefficients(double mu, bool ema, bool nesterov,
                                                               double l2 = 0.0, bool sign = false) {
  MomentumCoefficients<C> k;
  k.mu = static_cast<C>(mu);
  k.one_minus_mu = static_cast<C>(1.0 - mu);
  k.ema = ema;
  k.nesterov = nesterov;
  k.l2 = static_cast<C>(l2);
  k.sign = sign;
  return k;
}

/// The gradient the momentum sees: g, or g + lambda p under the l2 form
/// (never reads p otherwise, so a parameter's value cannot leak into a
/// step that does not ask for it).
template <class C>
MUON_HOST_DEVICE C regularized_grad(C g, C p, const MomentumCoefficients<C>& k) {
  return k.l2 == C(0) ? g : g + k.l2 * p;
}

/// The new momentum buffer.
///   ema: m + (1-mu)(g - m)   (torch's lerp(m, g, 1-mu) for weight 1-mu < 0.5)
///   sum: mu m + g            (Moonlight, Dion)
template <class C>
MUON_HOST_DEVICE C momentum_buffer(C m, C g, const MomentumCoefficients<C>& k) {
  return k.ema ? m + k.one_minus_mu * (g - m) : k.mu * m + g;
}

/// sign(x): 1, -1, or x itself for a zero (and a NaN, which stays NaN and
/// so is still caught by the finiteness checks).
template <class C>
MUON_HOST_DEVICE C sign_of(C x) {
  return x > C(0) ? C(1) : (x < C(0) ? C(-1) : x);
}

/// The Newton–Schulz input from the NEW buffer m (as stored) and g.
///   nesterov, ema: m + (1-mu)(g - m) = lerp(g, m, mu)   (torch's branch for weight >= 0.5)
///   nesterov, sum: g + mu m
///   otherwise:     m
/// then, under AdaMuon's sign form, its sign entry by entry: the authors'
/// code takes the sign of exactly this tensor (the look-ahead when
/// Nesterov is on), never of the gradient or of the stored buffer alone.
template <class C>
MUON_HOST_DEVICE C ns_input(C m, C g, const MomentumCoefficients<C>& k) {
  const C x = !k.nesterov ? m : (k.ema ? m + k.one_minus_mu * (g - m) : g + k.mu * m);
  return k.sign ? sign_of(x) : x;
}

/// The scalars of one Muon parameter update.
template <class C>
struct MuonUpdateCoefficients {
  C decay = C(1);  ///< 1 - lr * weight_decay, with the UNadjusted lr
  C step = C(0);   ///< the shape-adjusted lr
  bool cautious = false;
};

/// The update scalars from the decay multiplier (computed on the host from
/// the UNadjusted lr, MuonGroupOptions::decay_multiplier: 1 - lr wd in
/// torch.optim.Muon's decoupled form; a decay by the adjusted lr is a known
/// defect of some ports) and the adjusted lr.
template <class C>
MUON_HOST_DEVICE MuonUpdateCoefficients<C> muon_update_coefficients(double decay,
                                                                    double lr_adjusted,
                                                                    bool cautious) {
  MuonUpdateCoefficients<C> k;
  k.decay = static_cast<C>(decay);
  k.step = static_cast<C>(lr_adjusted);
  k.cautious = cautious;
  return k;
}

/// Weight decay, then the step, in torch.optim.Muon's order:
///   p <- p decay        [decay = 1 - lr wd (decoupled); cautious: only where o p > 0]
///   p <- p - lr_adjusted o
/// Cautious weight decay: Chen et al. 2025, arXiv 2510.12402.
template <class C>
MUON_HOST_DEVICE C muon_parameter(C p, C o, const MuonUpdateCoefficients<C>& k) {
  if (!k.cautious || o * p > C(0)) p *= k.decay;
  return p - k.step * o;
}

// ---- the Muon family: what happens to the Newton–Schulz output O ------------------

/// The scalars of a variant's second moment (NorMuon, AdaMuon) for one step.
template <class C>
struct SecondMomentCoefficients {
  C beta2 = C(0), one_minus_beta2 = C(1);
  C eps = C(0);  ///< NorMuon: the floor of V; AdaMuon: added to sqrt(V_hat). Never 0.
  /// AdaMuon's plain form: sqrt(1 - beta2^t); its sign form and NorMuon: 1.
  C sqrt_bias_correction2 = C(1);
};

/// From beta2, eps and (AdaMuon's plain form) the step t, 1 on the first;
/// t = 0: no bias correction (NorMuon, AdaMuon's sign form). An eps that
/// underflows C becomes C's smallest normal number.
template <class C>
MUON_HOST_DEVICE SecondMomentCoefficients<C> second_moment_coefficients(double beta2, double eps,
                                                                        double t) {
  SecondMomentCoefficients<C> k;
  k.beta2 = static_cast<C>(beta2);
  k.one_minus_beta2 = static_cast<C>(1.0 - beta2);
  k.eps = static_cast<C>(eps);
  if (!(k.eps > C(0))) k.eps = smallest_normal<C>();
  if (t > 0) k.sqrt_bias_correction2 = static_cast<C>(square_root(1.0 - power(beta2, t)));
  return k;
}

/// V <- beta2 V + (1-beta2) x: NorMuon's x is the mean of O^2 over a row
/// (or column), AdaMuon's is o^2.
template <class C>
MUON_HOST_DEVICE C second_moment(C v, C x, const SecondMomentCoefficients<C>& k) {
  return k.beta2 * v + k.one_minus_beta2 * x;
}

/// NorMuon: the factor 1 / sqrt(max(V, eps)) of a row's (or column's) entries.
template <class C>
MUON_HOST_DEVICE C normuon_factor(C v, const SecondMomentCoefficients<C>& k) {
  return C(1) / square_root(v > k.eps ? v : k.eps);
}

/// AdaMuon: o / (sqrt(V) / sqrt(1 - beta2^t) + eps), from V as stored
/// (o / (sqrt(V) + eps) in the sign form, whose coefficients carry 1).
template <class C>
MUON_HOST_DEVICE C adamuon_direction(C o, C v, const SecondMomentCoefficients<C>& k) {
  return o / (square_root(v) / k.sqrt_bias_correction2 + k.eps);
}

// ---- AdamW --------------------------------------------------------------------

/// The scalars of one AdamW step at step t (per parameter), from the host:
/// the bias corrections 1 - beta^t are computed there in double.
template <class C>
struct AdamWCoefficients {
  C decay = C(1);            ///< 1 - lr * weight_decay
  C one_minus_beta1 = C(0);  ///< 1 - beta1
  C beta2 = C(0);
  C one_minus_beta2 = C(0);        ///< 1 - beta2
  C step_size = C(0);              ///< lr / (1 - beta1^t)
  C sqrt_bias_correction2 = C(1);  ///< sqrt(1 - beta2^t)
  C eps = C(0);  ///< never 0: an eps that underflows C becomes C's smallest normal
};

/// The scalars of AdamW step t (1 on the first) at learning rate lr:
/// bias corrections 1 - beta^t computed in double; an eps that underflows C
/// becomes C's smallest normal number (never 0: 0/0 would be NaN where a
/// moment is 0). Called by the host per parameter and step, and by the CUDA
/// backend on the device from its own step counters.
template <class C>
MUON_HOST_DEVICE AdamWCoefficients<C> adamw_coefficients(double lr, double beta1, double beta2,
                                                         double eps, double weight_decay,
                                                         double t) {
  const double bias_correction1 = 1.0 - power(beta1, t);
  const double bias_correction2 = 1.0 - power(beta2, t);
  AdamWCoefficients<C> k;
  k.decay = static_cast<C>(1.0 - lr * weight_decay);
  k.one_minus_beta1 = static_cast<C>(1.0 - beta1);
  k.beta2 = static_cast<C>(beta2);
  k.one_minus_beta2 = static_cast<C>(1.0 - beta2);
  k.step_size = static_cast<C>(lr / bias_correction1);
  k.sqrt_bias_correction2 = static_cast<C>(square_root(bias_correction2));
  k.eps = static_cast<C>(eps);
  if (!(k.eps > C(0))) k.eps = smallest_normal<C>();
  return k;
}

/// m <- m + (1-b1)(g - m)  (= b1 m + (1-b1) g)
template <class C>
MUON_HOST_DEVICE C adamw_exp_avg(C m, C g, const AdamWCoefficients<C>& k) {
  return m + k.one_minus_beta1 * (g - m);
}

/// v <- b2 v + (1-b2) g^2
template <class C>
MUON_HOST_DEVICE C adamw_exp_avg_sq(C v, C g, const AdamWCoefficients<C>& k) {
  return k.beta2 * v + k.one_minus_beta2 * g * g;
}

/// p <- p (1 - lr wd) - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps),
/// from the moments as stored (torch.optim.AdamW; Loshchilov & Hutter,
/// arXiv 1711.05101), given root_v = sqrt(v).
template <class C>
MUON_HOST_DEVICE C adamw_parameter_from_root(C p, C m, C root_v, const AdamWCoefficients<C>& k) {
  const C denominator = root_v / k.sqrt_bias_correction2 + k.eps;
  return p * k.decay - k.step_size * m / denominator;
}

/// adamw_parameter_from_root with root_v = sqrt(v) (a loop may take the
/// square roots of a run of elements at once instead: the same bits).
template <class C>
MUON_HOST_DEVICE C adamw_parameter(C p, C m, C v, const AdamWCoefficients<C>& k) {
  return adamw_parameter_from_root(p, m, square_root(v), k);
}

}  // namespace rules
}  // namespace optim
}  // namespace muon
