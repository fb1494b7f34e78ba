// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/options.hpp
/// \brief The options of a parameter group, shared by every backend: the
/// learning-rate rule by shape, the momentum recurrence, the weight-decay
/// forms, the Muon family, and the structs MuonGroupOptions, AdamWOptions
/// and GroupOptions. Each option's key, range, checkpoint rule and
/// documentation are a row of the option table (optim/option_table.hpp,
/// included at the end), which also gives validate(), set_option and
/// option_keys.
///
/// Free of Eigen and CUDA: muon::Optimizer (CPU) and muon::cuda::Optimizer
/// include this one definition.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../detail/option_values.hpp"
#include "../error.hpp"
#include "../ns_options.hpp"
#include "rules.hpp"

namespace muon {

// ---- learning rate by shape ---------------------------------------------------

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

/// The rules' names: torch.optim.Muon's `adjust_lr_fn` names, and
/// "spectral_unclamped" (torch's) as an alias of "spectral".
inline constexpr detail::Named<LrAdjust> lr_adjust_names[] = {
    {LrAdjust::original, "original"},
    {LrAdjust::match_rms_adamw, "match_rms_adamw"},
    {LrAdjust::spectral, "spectral"},
    {LrAdjust::spectral, "spectral_unclamped"},
    {LrAdjust::none, "none"}};
constexpr detail::Names<LrAdjust> name_list(LrAdjust) { return lr_adjust_names; }

/// True for the four named LrAdjust values.
constexpr bool is_valid(LrAdjust rule) { return detail::is_named(rule); }

namespace detail {
// The arguments every adjustment rule, named or user-supplied, must accept.
inline void check_adjust_args(double lr, std::ptrdiff_t out_dim, std::ptrdiff_t in_dim) {
  if (!std::isfinite(lr)) fail("lr", "must be finite");
  if (out_dim < 1) fail("out_dim", "must be >= 1, got " + std::to_string(out_dim));
  if (in_dim < 1) fail("in_dim", "must be >= 1, got " + std::to_string(in_dim));
}
}  // namespace detail

/// The adjusted learning rate of an out_dim x in_dim matrix under `rule`.
/// Throws muon::Error naming "lr", "out_dim" or "in_dim" for a non-finite lr
/// or a dimension < 1. (std::ptrdiff_t is Eigen::Index; std::int64_t and int
/// convert to it.)
inline double adjusted_lr(double lr, std::ptrdiff_t out_dim, std::ptrdiff_t in_dim, LrAdjust rule) {
  detail::check_adjust_args(lr, out_dim, in_dim);
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
  detail::fail("adjust_lr", "is not an LrAdjust value");
}

/// A user-supplied adjustment rule: (lr, out_dim, in_dim) -> adjusted lr.
using LrAdjustFn = std::function<double(double lr, std::ptrdiff_t out_dim, std::ptrdiff_t in_dim)>;

/// The adjusted learning rate under a user rule; the rule's result must be
/// finite (muon::Error naming "adjust_lr_fn" otherwise, or when it is empty).
inline double adjusted_lr(double lr, std::ptrdiff_t out_dim, std::ptrdiff_t in_dim,
                          const LrAdjustFn& rule) {
  if (!rule) detail::fail("adjust_lr_fn", "is empty");
  detail::check_adjust_args(lr, out_dim, in_dim);
  const double adjusted = rule(lr, out_dim, in_dim);
  if (!std::isfinite(adjusted)) detail::fail("adjust_lr_fn", "returned a non-finite learning rate");
  return adjusted;
}

/// The rule named `name`: torch.optim.Muon's `adjust_lr_fn` names
/// "original", "match_rms_adamw", "spectral" (alias "spectral_unclamped",
/// torch's name) and "none"; nullopt for anything else, as every
/// `*_from_name` (muon::parse_name<LrAdjust>(name, field) throws instead).
[[nodiscard]] inline std::optional<LrAdjust> lr_adjust_from_name(std::string_view name) {
  return detail::from_name<LrAdjust>(name);
}

/// The canonical name of a rule (round-trips through lr_adjust_from_name).
inline const char* lr_adjust_name(LrAdjust rule) { return detail::name_of(rule); }

// ---- momentum -------------------------------------------------------------------

/// Which momentum recurrence the buffer follows (see momentum.hpp for the
/// table of conventions and why the two agree up to scale under Newton–Schulz).
enum class MomentumKind {
  ema,  ///< m <- lerp(m, g, 1-mu) = mu m + (1-mu) g (torch.optim.Muon, K. Jordan)
  sum   ///< m <- mu m + g (Moonlight, Dion)
};

inline constexpr detail::Named<MomentumKind> momentum_kind_names[] = {{MomentumKind::ema, "ema"},
                                                                      {MomentumKind::sum, "sum"}};
constexpr detail::Names<MomentumKind> name_list(MomentumKind) { return momentum_kind_names; }

/// True for the two named MomentumKind values.
constexpr bool is_valid(MomentumKind kind) { return detail::is_named(kind); }

inline const char* momentum_kind_name(MomentumKind k) { return detail::name_of(k); }

/// The kind named `name` (momentum_kind_name's names); nullopt otherwise.
[[nodiscard]] inline std::optional<MomentumKind> momentum_kind_from_name(std::string_view name) {
  return detail::from_name<MomentumKind>(name);
}

// ---- weight decay -----------------------------------------------------------------

/// How weight decay enters a Muon step (lambda = weight_decay, eta = the
/// UNadjusted lr of this step: the group's lr times the lr schedule's
/// factor s_t). Each form multiplies W by one number before the update.
enum class WeightDecayForm {
  /// W <- W (1 - eta lambda): decoupled decay, torch.optim.Muon's and
  /// AdamW's form (Loshchilov & Hutter, arXiv 1711.05101). The default.
  decoupled,
  /// W <- W (1 - s_t lambda), s_t = eta / lr the lr schedule's factor: the
  /// decay follows the schedule but not the lr's value (Wortsman et al.,
  /// arXiv 2309.14322, "independent" decay; Loshchilov & Hutter's schedule
  /// multiplier). lambda is then a per-step rate at the schedule's peak:
  /// 1e-4-ish, not the 0.1 of the decoupled form. A group lr of 0 decays
  /// nothing. An lr changed by hand (set_lr, a libtorch scheduler) is the
  /// group's lr, not a schedule: s_t stays 1.
  independent,
  /// W <- W (1 - eta^2 lambda): PaLM's decay tied to the square of the lr
  /// (Chowdhery et al., arXiv 2204.02311, section 5).
  palm,
  /// G <- G + lambda W before the momentum: classic L2 regularization, which
  /// then goes through the momentum and Newton–Schulz (so it is not a decay
  /// of W by a known factor; W itself is not multiplied).
  l2
};

inline constexpr detail::Named<WeightDecayForm> weight_decay_form_names[] = {
    {WeightDecayForm::decoupled, "decoupled"},
    {WeightDecayForm::independent, "independent"},
    {WeightDecayForm::palm, "palm"},
    {WeightDecayForm::l2, "l2"}};
constexpr detail::Names<WeightDecayForm> name_list(WeightDecayForm) {
  return weight_decay_form_names;
}

/// True for the four named WeightDecayForm values.
constexpr bool is_valid(WeightDecayForm f) { return detail::is_named(f); }

inline const char* weight_decay_form_name(WeightDecayForm f) { return detail::name_of(f); }

/// The form named `name` (weight_decay_form_name's names); nullopt otherwise.
[[nodiscard]] inline std::optional<WeightDecayForm> weight_decay_form_from_name(
    std::string_view name) {
  return detail::from_name<WeightDecayForm>(name);
}

/// The number a Muon step multiplies W by under `form`, at the step's
/// (unadjusted) learning rate `lr` = base_lr * s_t (s_t the lr schedule's
/// factor), with decay `weight_decay`; computed in double. base_lr only
/// matters to the independent form, which needs s_t = lr / base_lr (0 when
/// base_lr is 0: nothing moves).
inline double weight_decay_multiplier(WeightDecayForm form, double lr, double weight_decay,
                                      double base_lr) {
  switch (form) {
    case WeightDecayForm::independent:
      return 1.0 - (base_lr > 0.0 ? lr / base_lr : 0.0) * weight_decay;
    case WeightDecayForm::palm:
      return 1.0 - lr * lr * weight_decay;
    case WeightDecayForm::l2:  // the decay enters through the gradient instead
      return 1.0;
    case WeightDecayForm::decoupled:
      break;
  }
  return 1.0 - lr * weight_decay;
}

// ---- the Muon family ---------------------------------------------------------------

/// What a Muon step does with the Newton–Schulz output O of a block (m x n)
/// before it updates W. Each adds one state buffer; docs/muon_family.md has
/// the equations, costs and sources.
enum class MuonVariant {
  /// W <- decay(W) - lr_adj O: Muon itself (K. Jordan). The default.
  muon,
  /// NorMuon (Li et al., arXiv 2510.05491): a second moment V of O's rows
  /// (m >= n; its columns otherwise), V <- beta2 V + (1-beta2) mean(O^2)
  /// along the other dimension; O / sqrt(max(V, eps)) rescaled to O's
  /// Frobenius norm. State: max(m, n) numbers per block.
  normuon,
  /// AdaMuon (Si et al., arXiv 2507.11005): O from Newton–Schulz of
  /// sign(X) (AdaMuonForm::sign, the default; X the momentum or its
  /// Nesterov look-ahead), an elementwise second moment
  /// V <- beta2 V + (1-beta2) O^2; O / (sqrt(V) + eps) rescaled to
  /// Frobenius norm sqrt(min(m, n)) (an orthogonal matrix's). The paper's
  /// lr scale is 0.2 sqrt(max(m, n)): LrAdjust::match_rms_adamw
  /// (MuonGroupOptions::adamuon() sets both). State: one number per entry.
  adamuon
};

inline constexpr detail::Named<MuonVariant> muon_variant_names[] = {
    {MuonVariant::muon, "muon"},
    {MuonVariant::normuon, "normuon"},
    {MuonVariant::adamuon, "adamuon"}};
constexpr detail::Names<MuonVariant> name_list(MuonVariant) { return muon_variant_names; }

/// True for the three named MuonVariant values.
constexpr bool is_valid(MuonVariant v) { return detail::is_named(v); }

inline const char* muon_variant_name(MuonVariant v) { return detail::name_of(v); }

/// The variant named `name` (muon_variant_name's names); nullopt otherwise.
[[nodiscard]] inline std::optional<MuonVariant> muon_variant_from_name(std::string_view name) {
  return detail::from_name<MuonVariant>(name);
}

/// Which of the AdaMuon authors' two algorithms MuonVariant::adamuon runs
/// (docs/family/adamuon.md). They differ in what Newton–Schulz sees and in
/// the bias correction of V; the rest (V, eps, the rescale) is shared.
enum class AdaMuonForm {
  /// O = NS(sign(X)), V without bias correction: O / (sqrt(V) + eps). The
  /// paper from its second version on ("sign-stabilized orthogonal
  /// update") and both code paths of the authors' repository
  /// (Chongjie-Si/AdaMuon: gpt2/models/optimizers/adamuon.py,
  /// megatron/core/optimizer/muon.py), whose decay of V is the momentum,
  /// 0.95. The default.
  sign,
  /// O = NS(X) as for Muon, V bias-corrected: O / (sqrt(V / (1 - beta2^t))
  /// + eps). The paper's first version and the authors' first code
  /// (adamuon.py, beta2 0.999); what this library's AdaMuon was before the
  /// sign form (checkpoints of that time load as plain, beta2 0.999).
  plain
};

inline constexpr detail::Named<AdaMuonForm> adamuon_form_names[] = {{AdaMuonForm::sign, "sign"},
                                                                    {AdaMuonForm::plain, "plain"}};
constexpr detail::Names<AdaMuonForm> name_list(AdaMuonForm) { return adamuon_form_names; }

/// True for the two named AdaMuonForm values.
constexpr bool is_valid(AdaMuonForm f) { return detail::is_named(f); }

inline const char* adamuon_form_name(AdaMuonForm f) { return detail::name_of(f); }

/// The form named `name` (adamuon_form_name's names); nullopt otherwise.
[[nodiscard]] inline std::optional<AdaMuonForm> adamuon_form_from_name(std::string_view name) {
  return detail::from_name<AdaMuonForm>(name);
}

// ---- group options ----------------------------------------------------------------

/// Options of the Muon parameters of one group. Defaults are torch.optim.Muon's.
/// Error messages name the fields by their set_option keys.
struct MuonGroupOptions {
  /// Learning rate (before the shape adjustment). Default 1e-3. Finite, >= 0.
  double lr = 1e-3;
  /// Weight decay lambda, applied in `weight_decay_form` (default decoupled:
  /// multiplied by the UNadjusted lr). Default 0.1. Finite, >= 0.
  double weight_decay = 0.1;
  /// How the decay enters the step (see WeightDecayForm). Default decoupled.
  WeightDecayForm weight_decay_form = WeightDecayForm::decoupled;
  /// Momentum mu. Default 0.95. In [0, 1).
  double momentum = 0.95;
  /// Nesterov look-ahead as the Newton–Schulz input. Default true.
  bool nesterov = true;
  /// Buffer recurrence (ema = torch's lerp; sum = Moonlight/Dion). Default ema.
  MomentumKind momentum_kind = MomentumKind::ema;
  /// Newton–Schulz options. Default: Jordan quintic, 5 steps, eps 1e-7 with
  /// torch's X / max(||X||_F, eps) (EpsMode::max).
  NewtonSchulzOptions ns = torch_newton_schulz();
  /// Shape rule for the lr. Default original: sqrt(max(1, out/in)).
  LrAdjust adjust_lr = LrAdjust::original;
  /// A user rule (lr, out, in) -> adjusted lr; when set it replaces adjust_lr.
  /// It cannot be stored in a checkpoint (see Optimizer::load).
  LrAdjustFn adjust_lr_fn;
  /// Decay only where update and parameter share a sign. Default false.
  bool cautious_weight_decay = false;
  /// An extra factor on the shape-adjusted lr of every block (the decay
  /// keeps the unadjusted lr). Default 1. Finite, > 0.
  double lr_scale = 1.0;
  /// What is done with the Newton–Schulz output (see MuonVariant). Default muon.
  MuonVariant variant = MuonVariant::muon;
  /// NorMuon's second-moment decay (paper: 0.95) and the floor of V under
  /// the square root (1e-10). beta2 in [0, 1); eps finite, > 0.
  double normuon_beta2 = 0.95;
  double normuon_eps = 1e-10;
  /// Which AdaMuon (see AdaMuonForm). Default sign, the authors' current one.
  AdaMuonForm adamuon_form = AdaMuonForm::sign;
  /// AdaMuon's second-moment decay and the eps added to sqrt(V) (sqrt(V_hat)
  /// in the plain form). Defaults 0.95 and 1e-8, the authors' code (which
  /// decays V by the momentum: set both when you change the momentum; the
  /// plain form's paper value was 0.999). beta2 in [0, 1); eps finite, > 0.
  double adamuon_beta2 = 0.95;
  double adamuon_eps = 1e-8;

  MuonGroupOptions& with_lr(double v) {
    lr = v;
    return *this;
  }
  MuonGroupOptions& with_weight_decay(double v) {
    weight_decay = v;
    return *this;
  }
  MuonGroupOptions& with_weight_decay_form(WeightDecayForm f) {
    weight_decay_form = f;
    return *this;
  }
  MuonGroupOptions& with_lr_scale(double v) {
    lr_scale = v;
    return *this;
  }
  MuonGroupOptions& with_momentum(double v) {
    momentum = v;
    return *this;
  }
  MuonGroupOptions& with_nesterov(bool v) {
    nesterov = v;
    return *this;
  }
  MuonGroupOptions& with_momentum_kind(MomentumKind k) {
    momentum_kind = k;
    return *this;
  }
  MuonGroupOptions& with_ns(NewtonSchulzOptions o) {
    ns = std::move(o);
    return *this;
  }
  MuonGroupOptions& with_ns_steps(int n) {
    ns.steps = n;
    return *this;
  }
  MuonGroupOptions& with_adjust_lr(LrAdjust r) {
    adjust_lr = r;
    adjust_lr_fn = nullptr;
    return *this;
  }
  MuonGroupOptions& with_adjust_lr(LrAdjustFn f) {
    adjust_lr_fn = std::move(f);
    return *this;
  }
  MuonGroupOptions& with_cautious_weight_decay(bool v) {
    cautious_weight_decay = v;
    return *this;
  }
  MuonGroupOptions& with_variant(MuonVariant v) {
    variant = v;
    return *this;
  }
  MuonGroupOptions& with_adamuon_form(AdaMuonForm f) {
    adamuon_form = f;
    return *this;
  }

  /// NorMuon with the paper's constants (beta2 0.95, eps 1e-10) and the
  /// other options at their defaults.
  static MuonGroupOptions normuon() {
    return MuonGroupOptions().with_variant(MuonVariant::normuon);
  }
  /// AdaMuon as its authors' code runs it: the sign form, beta2 0.95 (their
  /// momentum), eps 1e-8, and the lr scale 0.2 sqrt(max(m, n))
  /// (LrAdjust::match_rms_adamw). The other options at their defaults.
  static MuonGroupOptions adamuon() {
    return MuonGroupOptions()
        .with_variant(MuonVariant::adamuon)
        .with_adjust_lr(LrAdjust::match_rms_adamw);
  }

  /// The adjusted lr of an out x in block under this group's rule, times lr_scale.
  double adjusted(double rate, std::ptrdiff_t out, std::ptrdiff_t in) const {
    return lr_scale * (adjust_lr_fn ? adjusted_lr(rate, out, in, adjust_lr_fn)
                                    : adjusted_lr(rate, out, in, adjust_lr));
  }
  /// What a step at (unadjusted) lr `rate` = lr * the schedule's factor
  /// multiplies W by.
  double decay_multiplier(double rate) const {
    return weight_decay_multiplier(weight_decay_form, rate, weight_decay, lr);
  }
  /// The lambda added to the gradient as lambda W (WeightDecayForm::l2), else 0.
  double l2_coefficient() const {
    return weight_decay_form == WeightDecayForm::l2 ? weight_decay : 0.0;
  }
  /// Whether Newton–Schulz gets sign(X) instead of X (AdaMuon's sign form).
  bool sign_ns_input() const {
    return variant == MuonVariant::adamuon && adamuon_form == AdaMuonForm::sign;
  }
  /// Whether the second moment is bias-corrected by sqrt(1 - beta2^t)
  /// (AdaMuon's plain form only).
  bool second_moment_bias_corrected() const {
    return variant == MuonVariant::adamuon && adamuon_form == AdaMuonForm::plain;
  }

  /// Throws muon::Error naming the option by its set_option key when one is
  /// out of range (each row's check in optim/option_table.hpp), or when the
  /// Newton–Schulz schedule diverges under the divisor and step count
  /// (named ns_coefficients). Builds no message and allocates nothing
  /// unless a check fails.
  void validate() const;

  /// Jordan quintic, 5 steps, eps 1e-7 as max(norm, eps): torch.optim.Muon.
  static NewtonSchulzOptions torch_newton_schulz() {
    NewtonSchulzOptions o;
    o.eps_mode = EpsMode::max;
    return o;
  }
};

/// AdamW options. Defaults are torch.optim.AdamW's. (K. Jordan's reference
/// Muon pairs Muon with an auxiliary Adam of beta2 0.95 and eps 1e-10; set the
/// fields for that.) Error messages name the fields by their set_option keys
/// (adamw_lr, adamw_beta1, ...), never as the Muon fields.
struct AdamWOptions {
  /// Learning rate. Default 1e-3. Must be finite and >= 0.
  double lr = 1e-3;
  /// First-moment decay. Default 0.9. Must be in [0, 1).
  double beta1 = 0.9;
  /// Second-moment decay. Default 0.999. Must be in [0, 1).
  double beta2 = 0.999;
  /// Added to the bias-corrected RMS. Default 1e-8. Must be finite and > 0;
  /// where it underflows the compute type, that type's smallest normal
  /// number is used instead (never 0, which would divide 0 by 0).
  double eps = 1e-8;
  /// Decoupled weight decay, multiplied by lr. Default 0.01. Must be finite
  /// and >= 0.
  double weight_decay = 0.01;

  /// Throws muon::Error naming the field by its set_option key (adamw_lr,
  /// adamw_beta1, ...): the rows of optim/option_table.hpp.
  void validate() const;
};

namespace optim {

/// The AdamW scalars of step t (1 on the first) at learning rate `lr`, in
/// compute type C (see rules::adamw_coefficients).
template <class C>
rules::AdamWCoefficients<C> adamw_coefficients(const AdamWOptions& o, double lr, std::int64_t t) {
  return rules::adamw_coefficients<C>(lr, o.beta1, o.beta2, o.eps, o.weight_decay,
                                      static_cast<double>(t));
}

}  // namespace optim

/// What a step does with a parameter whose update would not be finite: a
/// NaN/Inf gradient, a momentum or AdamW moment that overflows, or a
/// parameter that would overflow its type.
enum class NonFinitePolicy {
  raise,  ///< throw muon::Error naming it; nothing at all is updated (default)
  skip    ///< leave that parameter (and its state) untouched, update the others
};

/// The options of one parameter group: Muon's for its Muon-routed
/// parameters, AdamW's for the others.
struct GroupOptions {
  MuonGroupOptions muon;
  AdamWOptions adamw;

  /// Throws muon::Error naming the first option out of range by its key.
  void validate() const {
    muon.validate();
    adamw.validate();
  }
};

}  // namespace muon

// The table of the options above: their keys, ranges, checkpoint rules and
// documentation; validate(), set_option and option_keys.
#include "option_table.hpp"
