// SPDX-License-Identifier: MIT
// Learning-rate schedules, momentum warmup and width transfer against
// hand-computed values.
#include <muon/muon.hpp>

#include <cmath>
#include <string>

#include "catch.hpp"
#include "test_support.hpp"

namespace {

using muon_test::throws_naming;

bool near(double a, double b, double tol = 1e-12) { return std::abs(a - b) <= tol; }

}  // namespace

TEST_CASE("LrSchedule: warmup endpoints, cosine midpoint and end, clamping", "[schedule]") {
  const double min_ratio = 0.1;
  const auto s = muon::LrSchedule::warmup_cosine(10, 110, min_ratio);
  // Warmup (step+1)/10: 0.1 at step 0, 1 at step 9.
  REQUIRE(near(s.factor(0), 0.1));
  REQUIRE(near(s.factor(4), 0.5));
  REQUIRE(near(s.factor(9), 1.0));
  // Decay over steps 10..110: 1 at its start, (1+min)/2 halfway, min at the end.
  REQUIRE(near(s.factor(10), 1.0));
  REQUIRE(near(s.factor(60), (1.0 + min_ratio) / 2));
  // A quarter of the way: min + (1-min)(1+cos(pi/4))/2.
  REQUIRE(near(s.factor(35), min_ratio + (1 - min_ratio) * (1 + std::sqrt(0.5)) / 2));
  REQUIRE(near(s.factor(110), min_ratio));
  REQUIRE(near(s.factor(100000), min_ratio));
  // Monotone decay after the warmup.
  for (std::int64_t t = 10; t < 120; ++t) REQUIRE(s.factor(t + 1) <= s.factor(t));
}

TEST_CASE("LrSchedule: linear decay and constant", "[schedule]") {
  const auto s = muon::LrSchedule::warmup_linear(4, 104, 0.0);
  REQUIRE(near(s.factor(0), 0.25));
  REQUIRE(near(s.factor(3), 1.0));
  REQUIRE(near(s.factor(4), 1.0));
  REQUIRE(near(s.factor(29), 0.75));  // a quarter of the 100 decay steps
  REQUIRE(near(s.factor(54), 0.5));
  REQUIRE(near(s.factor(104), 0.0));
  REQUIRE(near(s.factor(500), 0.0));

  const auto c = muon::LrSchedule::constant();
  for (const std::int64_t t : {0, 1, 1000000}) REQUIRE(c.factor(t) == 1.0);
  muon::LrSchedule warm = muon::LrSchedule::constant();
  warm.warmup_steps = 5;
  REQUIRE(near(warm.factor(0), 0.2));
  REQUIRE(near(warm.factor(4), 1.0));
  REQUIRE(warm.factor(77) == 1.0);
}

TEST_CASE("LrSchedule rejects invalid settings naming the field", "[schedule][errors]") {
  REQUIRE(throws_naming([] { muon::LrSchedule::warmup_cosine(10, 10); }, "total_steps"));
  REQUIRE(throws_naming([] { muon::LrSchedule::warmup_linear(10, 5); }, "total_steps"));
  REQUIRE(throws_naming([] { muon::LrSchedule::warmup_cosine(-1, 10); }, "warmup_steps"));
  REQUIRE(throws_naming([] { muon::LrSchedule::warmup_cosine(0, 10, 1.5); }, "min_ratio"));
  REQUIRE(throws_naming([] { muon::LrSchedule::warmup_cosine(0, 10, std::nan("")); }, "min_ratio"));
  const auto s = muon::LrSchedule::warmup_cosine(0, 10);
  REQUIRE(throws_naming([&] { s.factor(-1); }, "step"));
  REQUIRE(near(s.factor(0), 1.0));  // no warmup: the decay starts at 1
}

TEST_CASE("MomentumWarmup ramps linearly from start to end and stays", "[schedule]") {
  const muon::MomentumWarmup w;  // 0.85 -> 0.95 over 300 steps
  REQUIRE(near(w.at(0), 0.85));
  REQUIRE(near(w.at(150), 0.90));
  REQUIRE(near(w.at(75), 0.875));
  REQUIRE(near(w.at(300), 0.95));
  REQUIRE(near(w.at(5000), 0.95));
  muon::MomentumWarmup none;
  none.steps = 0;
  REQUIRE(none.at(0) == none.end);

  muon::MomentumWarmup bad;
  bad.start = 1.0;
  REQUIRE(throws_naming([&] { bad.validate(); }, "start"));
  bad = muon::MomentumWarmup{};
  bad.end = -0.1;
  REQUIRE(throws_naming([&] { bad.at(0); }, "end"));
  bad = muon::MomentumWarmup{};
  bad.steps = -1;
  REQUIRE(throws_naming([&] { bad.validate(); }, "steps"));
  REQUIRE(throws_naming([&] { w.at(-3); }, "step"));
}

TEST_CASE("scale_to_width: 0.02 at width 768 becomes ~0.00866 at 4096, warmup doubled",
          "[schedule][width]") {
  const muon::WidthTransferConfig base{0.02, 500, 0.95, 5, 768};
  const auto wide = muon::scale_to_width(base, 4096);
  REQUIRE(std::abs(wide.lr - 0.00866) < 1e-4);
  REQUIRE(near(wide.lr, 0.008660254037844387, 1e-15));  // 0.02 * sqrt(3/16)
  REQUIRE(wide.warmup_steps == 1000);
  REQUIRE(wide.momentum == 0.95);
  REQUIRE(wide.ns_steps == 5);
  REQUIRE(wide.width == 4096);

  // Narrower than the base: lr grows by sqrt(2), the warmup is kept.
  const auto narrow = muon::scale_to_width(base, 384);
  REQUIRE(near(narrow.lr, 0.02 * 1.4142135623730951, 1e-15));
  REQUIRE(narrow.warmup_steps == 500);
  // Same width: unchanged.
  const auto same = muon::scale_to_width(base, 768);
  REQUIRE(same.lr == 0.02);
  REQUIRE(same.warmup_steps == 500);

  REQUIRE(throws_naming([&] { muon::scale_to_width(base, 0); }, "width"));
  auto bad = base;
  bad.width = 0;
  REQUIRE(throws_naming([&] { muon::scale_to_width(bad, 1024); }, "base.width"));
  bad = base;
  bad.lr = -1;
  REQUIRE(throws_naming([&] { muon::scale_to_width(bad, 1024); }, "base.lr"));
  bad = base;
  bad.momentum = 1.0;
  REQUIRE(throws_naming([&] { muon::scale_to_width(bad, 1024); }, "base.momentum"));
  bad = base;
  bad.ns_steps = 100;
  REQUIRE(throws_naming([&] { muon::scale_to_width(bad, 1024); }, "base.ns_steps"));
  bad = base;
  bad.warmup_steps = -5;
  REQUIRE(throws_naming([&] { muon::scale_to_width(bad, 1024); }, "base.warmup_steps"));
}
