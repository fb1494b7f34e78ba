// SPDX-License-Identifier: MIT
#pragma once
/// \file ns_options.hpp
/// \brief The options of one Newton–Schulz orthogonalization: plain data,
/// free of Eigen and CUDA, so every backend and the optimizer core include
/// the data without the loop (newton_schulz.hpp).

#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "coefficients.hpp"
#include "error.hpp"
#include "optim/step_rules.hpp"

namespace muon {

/// How eps enters the normalization denominator.
enum class EpsMode {
  add,  ///< X / (d ||X||_F + eps)  (reference Muon, Moonlight, Dion, Polar Express)
  max   ///< X / max(d ||X||_F, eps) (torch.optim.Muon)
};

/// Which form of the iteration runs (see newton_schulz.hpp).
enum class NsMethod {
  automatic,  ///< the Gram form when n/m >= the backend's threshold, else standard
  standard,   ///< X = a X + (b A + c A^2) X every step
  gram        ///< Gram Newton–Schulz: iterate on the m x m Gram matrix, apply once
};

/// How X is scaled before the first step.
enum class NsNormalization {
  /// X / (d ||X||_F + eps) or X / max(d ||X||_F, eps) (EpsMode): every
  /// singular value at most 1/d. The default; what every schedule is tuned for.
  frobenius,
  /// AOL rescaling (Prach and Lampert, "Almost-Orthogonal Layers", arXiv
  /// 2208.03160), Turbo-Muon's preconditioner (Boissin, Massena, Mamalet,
  /// Serrurier, arXiv 2512.04632): X <- diag(s) X with
  /// s_i = (sum_j |(X X^T)_ij|)^(-1/2) (0 for a zero row), which guarantees
  /// ||diag(s) X||_2 <= 1 and leaves the singular values closer to 1 than
  /// the Frobenius norm does, so fewer steps reach a given accuracy. It
  /// changes the matrix (a row scaling, not a multiple of X): the result
  /// approximates the polar factor of diag(s) X. X X^T, which it needs,
  /// is reused as the first step's Gram matrix. Scale-invariant; ignores
  /// eps and the divisor.
  aol
};

/// The names of the EpsMode, NsMethod and NsNormalization values (see
/// detail::Names): each enum's parser, printer, validity test and the
/// "expected ..." of its errors come from its one list.
inline constexpr detail::Named<EpsMode> eps_mode_names[] = {{EpsMode::add, "add"},
                                                            {EpsMode::max, "max"}};
inline constexpr detail::Named<NsMethod> ns_method_names[] = {
    {NsMethod::automatic, "automatic"}, {NsMethod::standard, "standard"}, {NsMethod::gram, "gram"}};
inline constexpr detail::Named<NsNormalization> ns_normalization_names[] = {
    {NsNormalization::frobenius, "frobenius"}, {NsNormalization::aol, "aol"}};
constexpr detail::Names<EpsMode> name_list(EpsMode) { return eps_mode_names; }
constexpr detail::Names<NsMethod> name_list(NsMethod) { return ns_method_names; }
constexpr detail::Names<NsNormalization> name_list(NsNormalization) {
  return ns_normalization_names;
}

/// True for the named values (false for a value cast from an out-of-range
/// integer).
constexpr bool is_valid(EpsMode m) { return detail::is_named(m); }
constexpr bool is_valid(NsMethod m) { return detail::is_named(m); }
constexpr bool is_valid(NsNormalization n) { return detail::is_named(n); }

/// The name of a value ("invalid" for none); the `*_from_name` functions
/// read it back, and return nullopt for any other name (the one contract
/// of every enum's `*_from_name`).
inline const char* eps_mode_name(EpsMode m) { return detail::name_of(m); }
inline const char* ns_method_name(NsMethod m) { return detail::name_of(m); }
inline const char* ns_normalization_name(NsNormalization n) { return detail::name_of(n); }
[[nodiscard]] inline std::optional<EpsMode> eps_mode_from_name(std::string_view name) {
  return detail::from_name<EpsMode>(name);
}
[[nodiscard]] inline std::optional<NsMethod> ns_method_from_name(std::string_view name) {
  return detail::from_name<NsMethod>(name);
}
[[nodiscard]] inline std::optional<NsNormalization> ns_normalization_from_name(
    std::string_view name) {
  return detail::from_name<NsNormalization>(name);
}

/// The valid step counts and eps values: NewtonSchulzOptions::validate and
/// the optimizer's ns_steps and ns_eps options check these same ranges.
inline constexpr detail::Range kNsStepsRange = detail::Range::integers(0, 100);
inline constexpr detail::Range kNsEpsRange = detail::Range::above(0);

/// The aspect ratio n/m (n >= m) from which NsMethod::automatic picks the Gram
/// form on the CPU backend. Measured at m = 768 (docs/performance_cpu.md):
/// the Gram form takes 1.05-1.07x the standard iteration's time at n/m = 1.5,
/// 0.96-0.99x at 1.75, 0.91-0.95x at 2 (break-even by flops: 5/3,
/// docs/newton_schulz.md).
inline constexpr double kGramAspectThreshold = 1.75;

/// The largest singular value, relative to the normalized input's, that a
/// valid configuration may reach at any step (see
/// NewtonSchulzOptions::validate). Real schedules stay below 1.3.
inline constexpr double kMaxScheduleGrowth = 100.0;

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
  /// Standard or Gram form. Default: automatic (by aspect ratio). Both
  /// compute the same polynomial of X; they differ by rounding only.
  NsMethod method = NsMethod::automatic;
  /// How X is scaled first (see NsNormalization). Default: frobenius.
  NsNormalization normalization = NsNormalization::frobenius;

  NewtonSchulzOptions() = default;
  explicit NewtonSchulzOptions(Schedule s, int n = 5) : schedule(std::move(s)), steps(n) {}

  /// Chainable setters.
  NewtonSchulzOptions& with_steps(int n) {
    steps = n;
    return *this;
  }
  NewtonSchulzOptions& with_eps(double e, EpsMode m) {
    eps = e;
    eps_mode = m;
    return *this;
  }
  NewtonSchulzOptions& with_norm_divisor(double d) {
    norm_divisor = d;
    return *this;
  }
  NewtonSchulzOptions& with_method(NsMethod m) {
    method = m;
    return *this;
  }
  NewtonSchulzOptions& with_normalization(NsNormalization n) {
    normalization = n;
    return *this;
  }

  /// Turbo-Muon (arXiv 2512.04632) as its authors' code runs it: AOL
  /// rescaling, then 4 steps of Schedule::turbo_muon()'s rows (not
  /// Jordan's), one step fewer than Muon's 5. Their AOL clamps each row sum
  /// at eps before the inverse square root; here s_i is exact (see
  /// NsNormalization::aol), which differs only for rows whose |X X^T| row
  /// sum is below that eps.
  static NewtonSchulzOptions turbo_muon() {
    return NewtonSchulzOptions(Schedule::turbo_muon(), 4).with_normalization(NsNormalization::aol);
  }

  /// The divisor actually used: norm_divisor if set, else the schedule's.
  double divisor() const { return norm_divisor ? *norm_divisor : schedule.norm_divisor(); }

  /// The largest singular value normalization can leave: 1/d (Frobenius),
  /// 1 (AOL).
  double initial_bound() const {
    return normalization == NsNormalization::aol ? 1.0 : 1.0 / divisor();
  }
  /// An upper bound of the output's singular values (and so of the
  /// magnitude of its entries): normalization leaves every singular value
  /// at most initial_bound(), and each step maps [0, B] into
  /// [0, max |p| on [0, B]].
  double output_bound() const { return schedule.growth_bound(steps, initial_bound()).last; }

  /// Throws muon::Error naming the field ("<prefix>steps", "<prefix>eps", ...)
  /// when an option is out of range, including a schedule and divisor under
  /// which the iteration diverges (a singular value could exceed
  /// kMaxScheduleGrowth: a sign typo in a coefficient, or a divisor far
  /// below 1). Such a configuration would write Inf/NaN; it is refused here
  /// instead. Builds a message only once a check has failed.
  void validate(std::string_view prefix = "options.") const {
    const auto field = [&prefix](const char* name) { return std::string(prefix) + name; };
    if (!kNsStepsRange.contains(steps)) kNsStepsRange.check(field("steps"), steps);
    if (!kNsEpsRange.contains(eps)) kNsEpsRange.check(field("eps"), eps);
    if (!is_valid(eps_mode)) detail::fail(field("eps_mode"), "is not an EpsMode value");
    if (!is_valid(method)) detail::fail(field("method"), "is not an NsMethod value");
    if (!is_valid(normalization))
      detail::fail(field("normalization"), "is not an NsNormalization value");
    const double d = divisor();
    if (!kNormDivisorRange.contains(d)) kNormDivisorRange.check(field("norm_divisor"), d);
    check_growth(prefix, "schedule");
  }

  /// Throws muon::Error naming `<prefix><name>` when the schedule and
  /// divisor diverge over `steps` (a singular value could exceed
  /// kMaxScheduleGrowth): the one check that reads several options
  /// together. Needs a divisor in kNormDivisorRange (validate checks that
  /// first).
  void check_growth(std::string_view prefix, std::string_view name) const {
    const Schedule::Growth g = schedule.growth_bound(steps, initial_bound());
    if (!(g.peak <= kMaxScheduleGrowth))
      detail::fail(std::string(prefix) + std::string(name),
                   "'" + schedule.name() + "' with norm divisor " + detail::number_text(divisor()) +
                       " diverges: a normalized singular value can grow to " +
                       std::to_string(g.peak) + " by step " + std::to_string(g.peak_step + 1) +
                       " (check the coefficients' signs and the norm divisor)");
  }
};

namespace detail {

/// The normalization denominator, shared by every backend's normalize().
inline double normalization_denominator(double norm, double divisor, double eps, EpsMode mode) {
  return optim::step::normalization_denominator(norm, divisor, eps, mode == EpsMode::max);
}

}  // namespace detail
}  // namespace muon
