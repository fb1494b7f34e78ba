// SPDX-License-Identifier: MIT
// The step rules (optim/step_rules.hpp) and the step's decision bits
// (optim/step_report.hpp) against values derived by hand, written out in
// each test: what the CPU engine and the CUDA kernels both compute.
#include <muon/optim/step_rules.hpp>

#include <Eigen/Core>  // Eigen::half: a storage type a rule rounds to
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "catch.hpp"
#include "test_support.hpp"

namespace {

namespace rules = muon::optim::rules;
namespace step = muon::optim::step;

bool near(double a, double b, double tol) { return std::abs(a - b) <= tol * (1.0 + std::abs(b)); }

std::string refusal(const std::string& name, int flags, bool muon) {
  return muon_test::error_message([&] { step::refuse(name, flags, muon, "float", "bfloat16"); });
}

}  // namespace

TEST_CASE("momentum_element: the momentum as stored, and the Newton-Schulz input from it",
          "[step_rules]") {
  // EMA, Nesterov, mu = 0.9: m = 0.5 + 0.1 (1 - 0.5) = 0.55, stored in half
  // as 1126 * 2^-11 = 0.5498046875 (0.55 / 2^-11 = 1126.4); the input is
  // made from the stored value: 0.5498046875 + 0.1 (1 - 0.5498046875) =
  // 0.59482421875 (0.595 from the unrounded 0.55).
  const auto ema = rules::momentum_coefficients<float>(0.9, true, true);
  const auto h = step::momentum_element<Eigen::half>(0.5f, 1.0f, 123.0f, ema);
  CHECK(double(h.momentum) == 0.5498046875);
  CHECK(near(h.input, 0.59482421875, 1e-7));
  // Stored as float: no rounding beyond float's.
  const auto f = step::momentum_element<float>(0.5f, 1.0f, 123.0f, ema);
  CHECK(near(f.momentum, 0.55, 1e-7));
  CHECK(near(f.input, 0.595, 1e-7));
  // The sum form (Moonlight): m = 0.9 * 2 + 1 = 2.8; Nesterov input g + mu m = 1 + 2.52.
  const auto sum = rules::momentum_coefficients<double>(0.9, false, true);
  const auto s = step::momentum_element<double>(2.0, 1.0, 0.0, sum);
  CHECK(near(s.momentum, 2.8, 1e-15));
  CHECK(near(s.input, 3.52, 1e-15));
  // No Nesterov: the input is the momentum.
  const auto plain = rules::momentum_coefficients<double>(0.9, true, false);
  const auto n = step::momentum_element<double>(0.5, 1.0, 0.0, plain);
  CHECK(n.input == n.momentum);
  CHECK(near(n.momentum, 0.55, 1e-15));
  // The l2 form feeds g + lambda p to both: g = 1 + 0.5 * 2 = 2, m = 0 +
  // 0.1 * 2 = 0.2, input 0.2 + 0.1 (2 - 0.2) = 0.38.
  const auto l2 = rules::momentum_coefficients<double>(0.9, true, true, 0.5);
  const auto r = step::momentum_element<double>(0.0, 1.0, 2.0, l2);
  CHECK(near(r.momentum, 0.2, 1e-15));
  CHECK(near(r.input, 0.38, 1e-15));
  // Without it, p is never read into the result (a NaN p leaves it finite).
  const auto ema_d = rules::momentum_coefficients<double>(0.9, true, true);
  CHECK(near(step::momentum_element<double>(0.0, 1.0, double(NAN), ema_d).momentum, 0.1, 1e-15));
  // AdaMuon's sign form: the input's sign (0.38 > 0 -> 1; a negative one -> -1).
  const auto sign = rules::momentum_coefficients<double>(0.9, true, true, 0.5, true);
  CHECK(step::momentum_element<double>(0.0, 1.0, 2.0, sign).input == 1.0);
  CHECK(step::momentum_element<double>(0.0, -1.0, -2.0, sign).input == -1.0);
}

TEST_CASE("muon_element_flags: the gradient, then the stored momentum and the input",
          "[step_rules]") {
  const auto k = rules::momentum_coefficients<float>(0.95, true, true);
  const float big = std::numeric_limits<float>::max();
  CHECK(step::muon_element_flags<float>(0.0f, 1.0f, 0.0f, k) == 0);
  CHECK(step::muon_element_flags<float>(0.0f, NAN, 0.0f, k) == step::kNonFiniteGrad);
  CHECK(step::muon_element_flags<float>(0.0f, INFINITY, 0.0f, k) == step::kNonFiniteGrad);
  // g - m = -2 FLT_MAX overflows float: the new momentum is not finite.
  CHECK(step::muon_element_flags<float>(big, -big, 0.0f, k) == step::kNonFiniteState);
  // A momentum of 70000 fits a float but not a half (largest 65504).
  const auto sum = rules::momentum_coefficients<float>(0.0, false, false);
  CHECK(step::muon_element_flags<float>(0.0f, 70000.0f, 0.0f, sum) == 0);
  CHECK(step::muon_element_flags<Eigen::half>(0.0f, 70000.0f, 0.0f, sum) == step::kNonFiniteState);
}

TEST_CASE("adamw_element and its flags: torch.optim.AdamW's step, written out", "[step_rules]") {
  // t = 1, lr 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, p = 1,
  // g = 0.5, zero moments: m = 0.05, v = 0.001 * 0.25 = 2.5e-4; the step
  // size lr / (1 - 0.9) = 1, the denominator sqrt(2.5e-4) / sqrt(1e-3) +
  // 1e-8 = 0.5 + 1e-8; p = 1 (1 - 0.001) - 0.05 / (0.5 + 1e-8).
  const auto k = rules::adamw_coefficients<double>(0.1, 0.9, 0.999, 1e-8, 0.01, 1.0);
  const auto e = step::adamw_element<double>(1.0, 0.5, 0.0, 0.0, k);
  CHECK(near(e.exp_avg, 0.05, 1e-15));
  CHECK(near(e.exp_avg_sq, 2.5e-4, 1e-15));
  CHECK(near(e.param, 0.999 - 0.05 / (0.5 + 1e-8), 1e-14));
  // The moments are rounded to their storage before the parameter reads
  // them: exp_avg 0.05 as a half is 0.04998779296875 (0.05 / 2^-15 =
  // 1638.4 -> 1638), and the parameter follows the rounded value.
  const auto kf = rules::adamw_coefficients<float>(0.1, 0.9, 0.999, 1e-8, 0.01, 1.0);
  const auto h = step::adamw_element<Eigen::half>(1.0f, 0.5f, 0.0f, 0.0f, kf);
  CHECK(double(h.exp_avg) == 0.04998779296875);
  // exp_avg_sq 2.5e-4 -> 1049 * 2^-22 (2.5e-4 / 2^-22 = 1048.6); p =
  // 0.999 - 0.04998779296875 / (sqrt(1049 * 2^-22 / 1e-3) + 1e-8) =
  // 0.8990446229 (0.8990000020 from the unrounded moments).
  CHECK(double(h.exp_avg_sq) == 1049.0 / 4194304.0);
  CHECK(near(h.param, 0.899044622892814, 1e-6));

  const auto identity = [](float x) { return x; };
  const auto to_half = [](float x) { return static_cast<float>(static_cast<Eigen::half>(x)); };
  CHECK(step::adamw_element_flags<float>(1.0f, 0.5f, 0.0f, 0.0f, kf, identity) == 0);
  CHECK(step::adamw_element_flags<float>(1.0f, NAN, 0.0f, 0.0f, kf, identity) ==
        step::kNonFiniteGrad);
  // (1 - beta2) g^2 = 1e-3 * 1e60 overflows float.
  CHECK(step::adamw_element_flags<float>(1.0f, 1e30f, 0.0f, 0.0f, kf, identity) ==
        step::kNonFiniteState);
  // p = 65500 - lr-sized steps stays finite in float; with lr 1000 the new
  // parameter -> 65500 (1 - 10) - 1000 = -590500 lies beyond half's 65504.
  const auto big = rules::adamw_coefficients<float>(1000, 0.9, 0.999, 1e-8, 0.01, 1.0);
  CHECK(step::adamw_element_flags<float>(65500.0f, 0.5f, 0.0f, 0.0f, big, identity) == 0);
  CHECK(step::adamw_element_flags<float>(65500.0f, 0.5f, 0.0f, 0.0f, big, to_half) ==
        step::kNonFiniteUpdate);
}

TEST_CASE("normalization_denominator: Jordan's ||X|| + eps and torch's max(||X||, eps)",
          "[step_rules]") {
  CHECK(step::normalization_denominator(2.0, 1.01, 1e-7, false) == 1.01 * 2.0 + 1e-7);
  CHECK(step::normalization_denominator(2.0, 1.0, 1e-7, true) == 2.0);
  CHECK(step::normalization_denominator(0.0, 1.0, 1e-7, true) == 1e-7);
  CHECK(step::normalization_denominator(0.0, 1.0, 1e-7, false) == 1e-7);
}

TEST_CASE("NorMuon's lines run along the longer side of the (out, in) matrix", "[step_rules]") {
  // Row-major memory rows x cols is (out, in).
  const auto tall = step::normuon_lines(8, 3, false);  // out 8 >= in 3: a line per row
  CHECK(tall.by_row);
  CHECK(tall.count == 8);
  CHECK(tall.averaged == 3.0);
  const auto wide = step::normuon_lines(3, 8, false);  // in longer: a line per column
  CHECK(!wide.by_row);
  CHECK(wide.count == 8);
  CHECK(wide.averaged == 3.0);
  const auto square = step::normuon_lines(4, 4, false);  // out >= in: per (out) row
  CHECK(square.by_row);
  // Column-major: memory rows x cols is (in, out).
  const auto cm_wide = step::normuon_lines(8, 3, true);  // (out, in) = (3, 8): per in = memory row
  CHECK(cm_wide.by_row);
  CHECK(cm_wide.count == 8);
  CHECK(cm_wide.averaged == 3.0);
  const auto cm_tall = step::normuon_lines(3, 8, true);  // (8, 3): per out = memory column
  CHECK(!cm_tall.by_row);
  CHECK(cm_tall.count == 8);
  const auto cm_square = step::normuon_lines(4, 4, true);  // per out row = memory column
  CHECK(!cm_square.by_row);
}

TEST_CASE("NorMuon's line, ratio and entry; AdaMuon's ratio", "[step_rules]") {
  // V = 0.95 * 0 + 0.05 * (6 / 3) = 0.1; f = 1 / sqrt(0.1).
  const auto k = rules::second_moment_coefficients<double>(0.95, 1e-8, 0.0);
  double v = 0.0;
  const double f = step::normuon_line<double>(v, 6.0, 3.0, k);
  CHECK(near(v, 0.1, 1e-15));
  CHECK(near(f, 1.0 / std::sqrt(0.1), 1e-15));
  // Below eps, V is floored: f = 1 / sqrt(eps).
  double tiny = 0.0;
  CHECK(near(step::normuon_line<double>(tiny, 0.0, 3.0, k), 1e4, 1e-12));
  // Stored in half: V = 0.1 -> 0.0999755859375 (1638.4 -> 1638 * 2^-14), and
  // the factor comes from the stored value.
  const auto kf = rules::second_moment_coefficients<float>(0.95, 1e-8, 0.0);
  Eigen::half vh(0.0f);
  const double fh = step::normuon_line<Eigen::half>(vh, 6.0, 3.0, kf);
  CHECK(double(vh) == 0.0999755859375);
  CHECK(near(fh, 1.0 / std::sqrt(0.0999755859375), 1e-6));
  // ||O||_F^2 = 9, ||O f||_F^2 = 1: the ratio 3 restores O's norm; none for zeros.
  CHECK(step::normuon_ratio<double>(9.0, 1.0) == 3.0);
  CHECK(step::normuon_ratio<double>(9.0, 0.0) == 0.0);
  CHECK(step::normuon_entry(2.0, 0.5, 3.0) == 3.0);
  // AdaMuon: ||D||_F^2 = 12 for a 3 x 8 block -> sqrt(3 / 12) = 0.5, by the shorter side.
  CHECK(step::adamuon_ratio<double>(3, 8, 12.0) == 0.5);
  CHECK(step::adamuon_ratio<double>(8, 3, 12.0) == 0.5);
  CHECK(step::adamuon_ratio<double>(8, 3, 0.0) == 0.0);
}

TEST_CASE("the decision bits: update bound, blocking, reason order, status, refusal",
          "[step_rules]") {
  CHECK(step::with_update_bound(0, 1.0, 2.0) == 0);
  CHECK(step::with_update_bound(0, 2.0, 2.0) == 0);
  CHECK(step::with_update_bound(0, 3.0, 2.0) == step::kNonFiniteUpdate);
  CHECK(step::with_update_bound(step::kNonFiniteGrad, 3.0, -1.0) ==
        (step::kNonFiniteGrad | step::kNonFiniteUpdate));
  CHECK(step::with_update_bound(0, 1.0, NAN) == step::kNonFiniteUpdate);
  CHECK(step::with_update_bound(0, NAN, 2.0) == step::kNonFiniteUpdate);

  CHECK(!step::blocks_update(0));
  CHECK(!step::blocks_update(step::kNoGrad));
  CHECK(step::blocks_update(step::kNonFiniteGrad));
  CHECK(step::blocks_update(step::kNonFiniteState));
  CHECK(step::blocks_update(step::kNonFiniteUpdate));

  // The first reason in SkipReason order, whatever else is set.
  CHECK(step::reason_of(step::kNonFiniteUpdate | step::kNonFiniteState | step::kNonFiniteGrad) ==
        muon::SkipReason::non_finite_grad);
  CHECK(step::reason_of(step::kNonFiniteUpdate | step::kNonFiniteState) ==
        muon::SkipReason::non_finite_state);
  CHECK(step::reason_of(step::kNonFiniteUpdate) == muon::SkipReason::non_finite_update);
  CHECK(step::reason_of(step::kNoGrad | step::kNonFiniteGrad) == muon::SkipReason::no_grad);

  CHECK(step::status_of(0, 0) == muon::StepStatus::nothing);
  CHECK(step::status_of(2, 0) == muon::StepStatus::ok);
  CHECK(step::status_of(2, 1) == muon::StepStatus::partial);
  CHECK(step::status_of(0, 3) == muon::StepStatus::nothing);

  CHECK(refusal("w", step::kNonFiniteGrad | step::kNonFiniteState, true) ==
        "muon: grad: 'w' contains NaN or Inf (nothing was updated)");
  CHECK(refusal("w", step::kNonFiniteState, true) ==
        "muon: step: 'w': its momentum would overflow float (nothing was updated)");
  CHECK(refusal("b", step::kNonFiniteState, false) ==
        "muon: step: 'b': an AdamW moment would overflow float (nothing was updated)");
  CHECK(refusal("b", step::kNonFiniteUpdate, false) ==
        "muon: step: 'b': the updated parameter could overflow bfloat16 (nothing was updated)");
}
