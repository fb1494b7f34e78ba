// SPDX-License-Identifier: MIT
#pragma once
/// \file coefficients.hpp
/// \brief Newton–Schulz polynomial schedules as data.
///
/// Every step maps each singular value s (after normalization) to
/// p(s) = a s + b s^3 + c s^5. A schedule is a list of per-step (a, b, c);
/// steps past the end of the list repeat its last row. A schedule may also
/// recommend an input divisor (Polar Express normalizes by 1.01 ||X||_F).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "detail/option_values.hpp"
#include "error.hpp"

namespace muon {

/// The valid input divisors d (X / (d ||X||_F)): a schedule's own and
/// NewtonSchulzOptions::norm_divisor, checked against this one range.
inline constexpr detail::Range kNormDivisorRange = detail::Range::at_least(1e-3);

/// Coefficients of one odd quintic step p(s) = a s + b s^3 + c s^5.
struct Coefficients {
  double a = 0, b = 0, c = 0;
  /// p(s), evaluated in double (for references and tests).
  double operator()(double s) const { return s * (a + s * s * (b + c * s * s)); }
};

/// A named, immutable list of per-step coefficients. Copies share the data,
/// so copying a schedule (or options holding one) never allocates; the
/// built-in schedules are created once per process.
class Schedule {
 public:
  /// What the steps past the last row use: part of a schedule's definition.
  enum class PastEnd : std::uint8_t {
    repeat_last,  ///< the last row again (a polishing step; the default)
    cycle         ///< the rows again from the first
  };

  /// Jordan's quintic, the default of reference Muon and torch.optim.Muon.
  Schedule() : Schedule(jordan()) {}

  /// A user schedule. Throws muon::Error when `rows` is empty, a coefficient is
  /// not finite, `norm_divisor` is not a finite value >= 1e-3, or `past_end`
  /// is not a PastEnd value.
  explicit Schedule(std::vector<Coefficients> rows, double norm_divisor = 1.0,
                    std::string name = "custom", PastEnd past_end = PastEnd::repeat_last)
      : data_(std::make_shared<const Data>(
            Data{std::move(rows), norm_divisor, std::move(name), past_end})) {
    if (!(past_end == PastEnd::repeat_last || past_end == PastEnd::cycle))
      detail::fail("schedule.past_end", "is not a Schedule::PastEnd value");
    if (data_->rows.empty()) detail::fail("schedule", "needs at least one (a, b, c) row");
    for (const auto& r : data_->rows)
      if (!(finite(r.a) && finite(r.b) && finite(r.c)))
        detail::fail("schedule", "coefficients must be finite");
    kNormDivisorRange.check("schedule.norm_divisor", norm_divisor);
  }

  /// Keller Jordan's quintic (3.4445, -4.7750, 2.0315) every step. It does
  /// not converge to 1: 5 steps drive every s >= 0.006 into about [0.68, 1.13]
  /// (p peaks at 1.2024 near s = 0.5545, so smaller s can land up to 1.20).
  static Schedule jordan() {
    static const Schedule s({{3.4445, -4.7750, 2.0315}}, 1.0, "jordan");
    return s;
  }

  /// Classic Newton–Schulz cubic (1.5, -0.5, 0): converges to 1, slowly from small s.
  static Schedule cubic() {
    static const Schedule s({{1.5, -0.5, 0.0}}, 1.0, "cubic");
    return s;
  }

  /// Classic quintic (15/8, -10/8, 3/8): converges to 1, slowly from small s.
  static Schedule quintic() {
    static const Schedule s({{1.875, -1.25, 0.375}}, 1.0, "quintic");
    return s;
  }

  /// Polar Express, degree 5 (Amsel, Persson, Musco, Gower 2025, arXiv
  /// 2505.16932), with the paper's safety factor 1.01: every row but the last
  /// is scaled to (a/1.01, b/1.01^3, c/1.01^5) and the input is normalized by
  /// 1.01 ||X||_F. With that, s in [1e-3, 1] lands in about [0.84, 1.12] after
  /// 5 steps and within 1e-2 of 1 after 6.
  static Schedule polar_express() {
    static const Schedule s = make_polar_express();
    return s;
  }

  /// DeepSeek-V4's schedule: 8 steps of Jordan's quintic, then 2 of
  /// (2, -1.5, 0.5), a quintic with p(1) = 1 and p'(1) = 0 that pulls the
  /// singular values Jordan's steps leave in about [0.7, 1.2] to 1. Meant for
  /// 10 steps (ns_steps = 10); past them the last row repeats.
  static Schedule deepseek_v4() {
    static const Schedule s = make_deepseek_v4();
    return s;
  }

  /// A tuned 5-step cubic schedule, p(s) = a s + b s^3 (c = 0, so each step
  /// costs one product fewer: the A^2 product is skipped on every backend),
  /// from arXiv 2606.00371. Meant for 5 steps; past them the last row repeats.
  static Schedule cubic5() {
    static const Schedule s({{3.3656576, -3.3420992, 0.0},
                             {2.5744352, -1.4957376, 0.0},
                             {2.5368962, -1.4312570, 0.0},
                             {2.4418906, -1.2764040, 0.0},
                             {2.2230472, -0.9630650, 0.0}},
                            1.0, "cubic5");
    return s;
  }

  /// Turbo-Muon's rows (Boissin, Massena, Mamalet, Serrurier, arXiv
  /// 2512.04632; their code, turbo_muon_torch.py and newton_schulz_triton.py
  /// of the paper's repository): the last 4 of You Jiacheng's 5 per-step
  /// quintics (the rows of Dion's Newton–Schulz and of the modded-nanogpt
  /// records), which their code runs after the AOL normalization in place
  /// of Jordan's. Meant for 4 steps after NsNormalization::aol
  /// (NewtonSchulzOptions::turbo_muon()); past them the last row repeats.
  static Schedule turbo_muon() {
    static const Schedule s({{3.9505, -6.3029, 2.6377},
                             {3.7418, -5.5913, 2.3037},
                             {2.8769, -3.1427, 1.2046},
                             {2.8366, -3.0525, 1.2012}},
                            1.0, "turbo_muon");
    return s;
  }

  /// CANS's Chebyshev-optimal third-order iteration (Grishina, Smirnov and
  /// Rakhuba, arXiv 2506.10935, section 3): step k applies the odd cubic
  /// p(s) = a s + b s^3 (c = 0: one product fewer per step) closest to 1
  /// in the max norm on the interval [lo, hi] that holds the singular
  /// values at that step. By Chebyshev's alternance theorem 1 - p reaches
  /// its largest magnitude E at lo, at the critical point
  /// m = sqrt((lo^2 + lo hi + hi^2) / 3) and at hi, with alternating signs,
  /// which fixes a, b and E in closed form; the next interval is
  /// [1 - E, 1 + E]. It starts from [lower, 1]: after the normalization by
  /// ||X||_F every singular value is at most 1, and `lower` is the bound
  /// assumed for sigma_min / ||X||_F (smaller ones still grow, by a factor
  /// of about a per step). Unlike Jordan's rows it converges: from
  /// lower = 1e-3, E is 5e-2 after 8 steps and 2e-3 after 9. Throws
  /// muon::Error naming `cans.lower` outside (0, 1) or `cans.steps` outside
  /// [1, 100).
  static Schedule cans(double lower = 1e-3, int steps = 9) {
    detail::Range{0.0, true, 1.0, false}.check("cans.lower", lower);
    detail::Range::integers(1, 100).check("cans.steps", steps);
    std::vector<Coefficients> rows;
    double lo = lower, hi = 1.0;
    for (int k = 0; k < steps; ++k) {
      const double q = lo * lo + lo * hi + hi * hi;  // 3 m^2
      const double m = std::sqrt(q / 3.0);
      // p(lo) = p(hi) gives a = -b q; p(lo) + p(m) = 2 (1 - E and 1 + E) gives b.
      const double b = -2.0 / (lo * hi * (lo + hi) + 2.0 * q * m / 3.0);
      const double a = -b * q;
      rows.push_back({a, b, 0.0});
      const double error = a * m + b * m * m * m - 1.0;  // E = p(m) - 1
      lo = 1.0 - error;
      hi = 1.0 + error;
    }
    return Schedule(std::move(rows), 1.0, "cans");
  }

  /// A built-in schedule and its name.
  struct Builtin {
    const char* name;
    Schedule (*make)();
  };
  /// The built-in schedules, by name: "jordan", "cubic", "quintic",
  /// "polar_express", "deepseek_v4", "cubic5", "turbo_muon", "cans" (cans()
  /// with its defaults).
  static const std::vector<Builtin>& builtins() {
    static const std::vector<Builtin> all = {
        {"jordan", &jordan},           {"cubic", &cubic},
        {"quintic", &quintic},         {"polar_express", &polar_express},
        {"deepseek_v4", &deepseek_v4}, {"cubic5", &cubic5},
        {"turbo_muon", &turbo_muon},   {"cans", [] { return cans(); }}};
    return all;
  }
  /// The built-in names as "jordan, cubic, ... or cans".
  static std::string builtin_names_text() {
    const auto& all = builtins();
    return detail::or_list(all.size(), [&all](std::size_t i) { return all[i].name; });
  }
  /// The built-in schedule named `name` (see builtins()); nullopt for any
  /// other name. The contract of every `*_from_name`.
  static std::optional<Schedule> from_name(std::string_view name) {
    for (const Builtin& b : builtins())
      if (name == b.name) return b.make();
    return std::nullopt;
  }
  /// The built-in schedule named `name`; throws muon::Error for any other
  /// name, listing the built-in ones.
  static Schedule by_name(const std::string& name) {
    if (std::optional<Schedule> s = from_name(name)) return *s;
    detail::fail("schedule", "unknown name '" + name + "' (expected " + builtin_names_text() + ")");
  }

  /// The same rows, divisor and name, with other steps past the end.
  Schedule with_past_end(PastEnd p) const {
    return Schedule(data_->rows, data_->norm_divisor, data_->name, p);
  }
  PastEnd past_end() const { return data_->past_end; }

  /// Coefficients of step `k` (0-based); past the list: the last row again
  /// (PastEnd::repeat_last) or the rows from the first (PastEnd::cycle).
  const Coefficients& at(std::size_t k) const {
    const auto& r = data_->rows;
    if (data_->past_end == PastEnd::cycle) return r[k % r.size()];
    return r[k < r.size() ? k : r.size() - 1];
  }
  const std::vector<Coefficients>& rows() const { return data_->rows; }
  /// The divisor this schedule was designed for (1.01 for Polar Express, else 1).
  double norm_divisor() const { return data_->norm_divisor; }
  const std::string& name() const { return data_->name; }

  /// p_{k-1}(...p_0(s)): where `steps` steps send a normalized singular value s.
  double apply(double s, int steps) const {
    for (int k = 0; k < steps; ++k) s = at(static_cast<std::size_t>(k))(s);
    return s;
  }

  /// How far `steps` steps can move singular values that start in [0, start].
  struct Growth {
    double peak = 0;    ///< the largest bound B_k over k = 0 .. steps
    int peak_step = 0;  ///< a k where it occurs (0: the start)
    double last = 0;    ///< B_steps: bounds every singular value of the result
  };
  /// B_0 = start, B_{k+1} = max |p_k(s)| over s in [0, B_k]: every singular
  /// value after k steps is at most B_k. Exact for the odd quintic (the
  /// maximum is at B_k or where p_k' = a + 3 b s^2 + 5 c s^4 vanishes);
  /// infinity once a bound overflows.
  Growth growth_bound(int steps, double start) const {
    Growth g{start, 0, start};
    double B = start;
    for (int k = 0; k < steps && std::isfinite(B); ++k) {
      const Coefficients& p = at(static_cast<std::size_t>(k));
      double top = std::abs(p(B));
      // Critical points: u = s^2 solves 5c u^2 + 3b u + a = 0.
      const double qa = 5 * p.c, qb = 3 * p.b, qc = p.a;
      double roots[2] = {-1, -1};
      if (qa == 0) {
        if (qb != 0) roots[0] = -qc / qb;
      } else {
        const double disc = qb * qb - 4 * qa * qc;
        if (disc >= 0) {
          roots[0] = (-qb + std::sqrt(disc)) / (2 * qa);
          roots[1] = (-qb - std::sqrt(disc)) / (2 * qa);
        }
      }
      for (double u : roots)
        if (u > 0 && std::sqrt(u) < B) top = std::max(top, std::abs(p(std::sqrt(u))));
      B = std::isfinite(top) ? top : std::numeric_limits<double>::infinity();
      if (!(B <= g.peak)) {
        g.peak = B;
        g.peak_step = k + 1;
      }
    }
    if (!std::isfinite(B)) g.peak = B;
    g.last = B;
    return g;
  }

 private:
  struct Data {
    std::vector<Coefficients> rows;
    double norm_divisor;
    std::string name;
    PastEnd past_end;
  };

  static Schedule make_deepseek_v4() {
    std::vector<Coefficients> rows(8, Coefficients{3.4445, -4.7750, 2.0315});
    rows.push_back({2.0, -1.5, 0.5});
    rows.push_back({2.0, -1.5, 0.5});
    return Schedule(std::move(rows), 1.0, "deepseek_v4");
  }

  static Schedule make_polar_express() {
    std::vector<Coefficients> raw = {{8.28721201814563, -23.595886519098837, 17.300387312530933},
                                     {4.107059111542203, -2.9478499167379106, 0.5448431082926601},
                                     {3.9486908534822946, -2.908902115962949, 0.5518191394370137},
                                     {3.3184196573706015, -2.488488024314874, 0.51004894012372},
                                     {2.300652019954817, -1.6689039845747493, 0.4188073119525673},
                                     {1.891301407787398, -1.2679958271945868, 0.37680408948524835},
                                     {1.8750014808534479, -1.2500016453999487, 0.3750001645474248},
                                     {1.875, -1.25, 0.375}};
    const double f = 1.01;
    for (std::size_t i = 0; i + 1 < raw.size(); ++i) {
      raw[i].a /= f;
      raw[i].b /= f * f * f;
      raw[i].c /= f * f * f * f * f;
    }
    return Schedule(std::move(raw), f, "polar_express");
  }

  static bool finite(double v) { return std::isfinite(v); }
  std::shared_ptr<const Data> data_;
};

}  // namespace muon
