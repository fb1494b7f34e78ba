// SPDX-License-Identifier: MIT
// Learning-rate adjustment by shape and apply_muon_update (decoupled and
// cautious weight decay) against hand-computed values and plain double loops.
#include <muon/extern_templates.hpp>  // the heavy templates: compiled once
#include <muon/muon.hpp>

#include <cmath>
#include <random>
#include <string>

// Counts every heap allocation of this test program, to show that the
// per-step functions allocate nothing (std::string messages included).
#define MUON_TEST_DEFINE_ALLOC_COUNTER
#include "alloc_counter.hpp"
#include "catch.hpp"
#include "test_support.hpp"

namespace {

using muon_test::throws_naming;

Eigen::MatrixXd random_matrix(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  Eigen::MatrixXd m(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) m(i, j) = dist(gen);
  return m;
}

bool near(double a, double b, double tol = 1e-15) {
  return std::abs(a - b) <= tol * (1 + std::abs(b));
}

}  // namespace

TEST_CASE("adjusted_lr: every rule on square, wide, tall and conv-flattened shapes",
          "[update][lr]") {
  using muon::LrAdjust;
  const double lr = 0.01;
  struct Case {
    Eigen::Index out, in;
    double original, match_rms_adamw, spectral;  // multipliers of lr, hand-computed
  };
  const Case cases[] = {
      {64, 64, 1.0, 1.6, 1.0},                                       // 0.2*sqrt(64) = 1.6
      {32, 128, 1.0, 2.2627416997969525, 0.5},                       // wide: max(1, 1/4) = 1
      {128, 32, 2.0, 2.2627416997969525, 2.0},                       // tall: sqrt(4) = 2
      {64, 32 * 3 * 3, 1.0, 3.394112549695428, 0.4714045207910317},  // conv 64x32x3x3
      {1, 1, 1.0, 0.2, 1.0},
  };
  for (const Case& c : cases) {
    CAPTURE(c.out, c.in);
    REQUIRE(near(muon::adjusted_lr(lr, c.out, c.in, LrAdjust::original), lr * c.original));
    REQUIRE(near(muon::adjusted_lr(lr, c.out, c.in, LrAdjust::match_rms_adamw),
                 lr * c.match_rms_adamw));
    REQUIRE(near(muon::adjusted_lr(lr, c.out, c.in, LrAdjust::spectral), lr * c.spectral));
    REQUIRE(muon::adjusted_lr(lr, c.out, c.in, LrAdjust::none) == lr);
  }
  // The conv filter is scaled by its flattened fan-in (32*3*3 = 288), not by
  // in=32 alone (the defect of some ports, which would give sqrt(64/32)).
  REQUIRE(!near(muon::adjusted_lr(lr, 64, 288, LrAdjust::original), lr * std::sqrt(2.0), 1e-3));
}

TEST_CASE("adjusted_lr: names, user rules and invalid arguments", "[update][lr]") {
  using muon::LrAdjust;
  REQUIRE(muon::lr_adjust_from_name("original") == LrAdjust::original);
  REQUIRE(muon::lr_adjust_from_name("match_rms_adamw") == LrAdjust::match_rms_adamw);
  REQUIRE(muon::lr_adjust_from_name("spectral") == LrAdjust::spectral);
  REQUIRE(muon::lr_adjust_from_name("spectral_unclamped") == LrAdjust::spectral);
  REQUIRE(muon::lr_adjust_from_name("none") == LrAdjust::none);
  for (const auto rule :
       {LrAdjust::original, LrAdjust::match_rms_adamw, LrAdjust::spectral, LrAdjust::none})
    REQUIRE(muon::lr_adjust_from_name(muon::lr_adjust_name(rule)) == rule);
  // Any other name: nullopt, as every *_from_name; parse_name throws naming the field.
  REQUIRE(!muon::lr_adjust_from_name("Original"));
  REQUIRE(!muon::lr_adjust_from_name(""));
  REQUIRE(throws_naming([] { (void)muon::parse_name<LrAdjust>("Original", "adjust_lr"); },
                        "adjust_lr"));

  REQUIRE(throws_naming([] { muon::adjusted_lr(0.1, 0, 4, LrAdjust::original); }, "out_dim"));
  REQUIRE(throws_naming([] { muon::adjusted_lr(0.1, 4, -1, LrAdjust::spectral); }, "in_dim"));
  REQUIRE(throws_naming([] { muon::adjusted_lr(std::nan(""), 4, 4, LrAdjust::none); }, "lr"));

  // A user rule: lr * out / in.
  const muon::LrAdjustFn ratio = [](double lr, Eigen::Index out, Eigen::Index in) {
    return lr * static_cast<double>(out) / static_cast<double>(in);
  };
  REQUIRE(near(muon::adjusted_lr(0.5, 6, 3, ratio), 1.0));
  REQUIRE(throws_naming([] { muon::adjusted_lr(0.1, 2, 2, muon::LrAdjustFn{}); }, "adjust_lr_fn"));
  const muon::LrAdjustFn broken = [](double, Eigen::Index, Eigen::Index) { return INFINITY; };
  REQUIRE(throws_naming([&] { muon::adjusted_lr(0.1, 2, 2, broken); }, "adjust_lr_fn"));
}

TEST_CASE("apply_muon_update: decay with the unadjusted lr, then the adjusted step",
          "[update][decay]") {
  // lr 0.1, wd 0.2 -> decay factor 1 - 0.02 = 0.98; lr_adjusted 0.3.
  Eigen::Vector4d p(1.0, -2.0, 0.5, 3.0);
  const Eigen::Vector4d u(0.5, 0.5, -1.0, 0.0);
  muon::apply_muon_update(p, u, 0.1, 0.3, 0.2, false);
  // p*0.98 - 0.3*u = (0.98-0.15, -1.96-0.15, 0.49+0.3, 2.94)
  const double expected[] = {0.83, -2.11, 0.79, 2.94};
  for (int i = 0; i < 4; ++i) REQUIRE(near(p(i), expected[i]));
  // Had the decay used the adjusted lr, p(3) would be 3*(1-0.06) = 2.82.
  REQUIRE(!near(p(3), 2.82, 1e-3));
}

TEST_CASE("apply_muon_update: cautious decay only where update and parameter share a sign",
          "[update][decay]") {
  Eigen::Vector4d p(1.0, -2.0, 0.5, 3.0);
  const Eigen::Vector4d u(0.5, 0.5, -1.0, 0.0);
  muon::apply_muon_update(p, u, 0.1, 0.3, 0.2, true);
  // Decayed: only entry 0 (0.5*1 > 0). Entry 1 (opposite signs), entry 2
  // (opposite signs) and entry 3 (zero update) keep their magnitude.
  const double expected[] = {0.83, -2.15, 0.8, 3.0};
  for (int i = 0; i < 4; ++i) REQUIRE(near(p(i), expected[i]));
}

TEMPLATE_TEST_CASE("apply_muon_update matches a double loop on strided maps", "[update]", float,
                   double) {
  using T = TestType;
  const Eigen::Index rows = 6, cols = 5, ld = 8;
  const double lr = 0.02, lr_adj = 0.05, wd = 0.1;
  for (const bool cautious : {false, true}) {
    CAPTURE(cautious);
    muon::Matrix<T> storage = random_matrix(ld, cols, 21).cast<T>();
    const muon::Matrix<T> before = storage;
    const Eigen::MatrixXf update = random_matrix(rows, cols, 22).cast<float>();
    Eigen::Map<muon::Matrix<T>, 0, Eigen::OuterStride<>> param(storage.data(), rows, cols,
                                                               Eigen::OuterStride<>(ld));
    muon::apply_muon_update(param, update, lr, lr_adj, wd, cautious);
    for (Eigen::Index j = 0; j < cols; ++j) {
      for (Eigen::Index i = 0; i < ld; ++i) {
        const double p0 = static_cast<double>(before(i, j));
        if (i >= rows) {  // padding outside the view
          REQUIRE(storage(i, j) == before(i, j));
          continue;
        }
        const double u = static_cast<double>(update(i, j));
        double expected = p0;
        if (!cautious || (u > 0 && p0 > 0) || (u < 0 && p0 < 0)) expected *= 1.0 - lr * wd;
        expected -= lr_adj * u;
        const double tol = std::is_same<T, double>::value ? 1e-15 : 3e-7;
        REQUIRE(near(static_cast<double>(storage(i, j)), expected, tol));
      }
    }
  }
}

TEST_CASE("apply_muon_update: bf16 parameter, fp32 update, rounded once", "[update]") {
  using bf16 = Eigen::bfloat16;
  Eigen::Matrix<bf16, Eigen::Dynamic, 1> p = random_matrix(16, 1, 31).cast<bf16>();
  const Eigen::Matrix<bf16, Eigen::Dynamic, 1> before = p;
  const Eigen::VectorXf u = random_matrix(16, 1, 32).cast<float>();
  muon::apply_muon_update(p, u, 0.1, 0.2, 0.5, false);
  for (Eigen::Index i = 0; i < p.size(); ++i) {
    const double expected = static_cast<double>(before(i)) * 0.95 - 0.2 * static_cast<double>(u(i));
    // One rounding to bf16: within 2^-8 relative (plus float slack).
    REQUIRE(std::abs(static_cast<double>(p(i)) - expected) <=
            std::ldexp(1.0, -8) * std::abs(expected) + 1e-6);
  }
}

TEST_CASE("apply_muon_update rejects bad arguments and leaves the parameter untouched",
          "[update][errors]") {
  Eigen::MatrixXd p = random_matrix(3, 4, 41);
  const Eigen::MatrixXd p0 = p;
  const Eigen::MatrixXd u = random_matrix(3, 4, 42);
  REQUIRE(throws_naming([&] { muon::apply_muon_update(p, u, -0.1, 0.1, 0.0, false); }, "lr"));
  REQUIRE(
      throws_naming([&] { muon::apply_muon_update(p, u, std::nan(""), 0.1, 0.0, false); }, "lr"));
  REQUIRE(throws_naming([&] { muon::apply_muon_update(p, u, 0.1, INFINITY, 0.0, false); },
                        "lr_adjusted"));
  REQUIRE(
      throws_naming([&] { muon::apply_muon_update(p, u, 0.1, 0.1, -1.0, false); }, "weight_decay"));
  const Eigen::MatrixXd transposed = u.transpose();
  REQUIRE(throws_naming([&] { muon::apply_muon_update(p, transposed, 0.1, 0.1, 0.1, true); },
                        "update"));
  REQUIRE(p == p0);
}

TEST_CASE("per-step functions perform no heap allocation", "[update][alloc]") {
  using bf16 = Eigen::bfloat16;
  const Eigen::Index rows = 8, cols = 12;
  Eigen::MatrixXf param = random_matrix(rows, cols, 91).cast<float>();
  Eigen::Matrix<bf16, Eigen::Dynamic, Eigen::Dynamic> grad =
      random_matrix(rows, cols, 92).cast<bf16>();
  Eigen::MatrixXf buf = Eigen::MatrixXf::Zero(rows, cols), ns_input(rows, cols);
  Eigen::MatrixXf exp_avg = Eigen::MatrixXf::Zero(rows, cols), exp_avg_sq = exp_avg;
  Eigen::Map<Eigen::MatrixXf, 0, Eigen::OuterStride<>> top(param.data(), rows / 2, cols,
                                                           Eigen::OuterStride<>(rows));
  const muon::MomentumOptions momentum;
  const muon::AdamWOptions adamw;
  const auto schedule = muon::LrSchedule::warmup_cosine(5, 50, 0.1);
  const muon::MomentumWarmup warmup;
  const muon::LrAdjustFn rule = [](double lr, Eigen::Index, Eigen::Index) { return 2 * lr; };

  const muon_test::AllocScope scope;
  double sink = 0;
  for (std::int64_t step = 0; step < 3; ++step) {
    const double lr = 0.02 * schedule.factor(step);
    sink += warmup.at(step);
    muon::momentum_step(grad, buf, ns_input, momentum);
    const double lr_adjusted = muon::adjusted_lr(lr, rows, cols, muon::LrAdjust::match_rms_adamw) +
                               muon::adjusted_lr(lr, rows, cols, rule);
    muon::apply_muon_update(param, ns_input, lr, lr_adjusted, 0.1, step % 2 == 1);
    muon::apply_muon_update(top, ns_input.topRows(rows / 2), lr, lr_adjusted, 0.1, false);
    muon::adamw_step(param, grad, exp_avg, exp_avg_sq, step + 1, adamw);
  }
  const long during = scope.news();
  REQUIRE(during == 0);
  REQUIRE(std::isfinite(sink));
  REQUIRE(param.allFinite());
  // The counter does see allocations (a failing check builds its message).
  REQUIRE_THROWS_AS(muon::adamw_step(param, grad, exp_avg, exp_avg_sq, 0, adamw), muon::Error);
  REQUIRE(scope.news() > during);
}

TEST_CASE("apply_muon_update refuses a non-finite update or an overflow, writing nothing",
          "[update][errors]") {
  Eigen::MatrixXf p = random_matrix(3, 4, 51).cast<float>();
  const Eigen::MatrixXf p0 = p;
  const auto message_of = [&](const Eigen::MatrixXf& u, double lr_adjusted) {
    try {
      muon::apply_muon_update(p, u, 0.1, lr_adjusted, 0.1, false);
    } catch (const muon::Error& e) {
      return std::string(e.what());
    }
    return std::string("<applied>");
  };
  Eigen::MatrixXf u = random_matrix(3, 4, 52).cast<float>();
  u(1, 2) = std::nanf("");
  CHECK(message_of(u, 0.1) == "muon: update: holds NaN or Inf at (1, 2); nothing was written");
  CHECK(p == p0);
  u(1, 2) = -INFINITY;
  CHECK(message_of(u, 0.1).rfind("muon: update:", 0) == 0);
  CHECK(p == p0);
  u(1, 2) = 10.0f;  // 1e38 * 10 is beyond float
  CHECK(message_of(u, 1e38) == "muon: param: would overflow at (1, 2); nothing was written");
  CHECK(p == p0);
  u(1, 2) = 0.5f;
  CHECK(message_of(u, 0.1) == "<applied>");
  CHECK(p != p0);
}
