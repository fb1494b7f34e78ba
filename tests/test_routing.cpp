// SPDX-License-Identifier: MIT
// Routing: which parameters go to Muon and which to AdamW, why, and with which
// lr scale (checked against the rules' formulas written out here).

#include <muon/extern_templates.hpp>  // the heavy templates: compiled once
#include <muon/optim/registry.hpp>
#include <muon/optimizer.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "catch.hpp"

namespace {
// Parameters of their own memory (the optimizer refuses two parameters over
// the same elements); gradients may share.
struct Bank {
  static constexpr std::size_t kSlot = 1024, kSlots = 64;
  std::vector<float> data = std::vector<float>(kSlot * kSlots, 0.5f);
  std::vector<float> grad = std::vector<float>(4096, 0.25f);
  std::size_t used = 0;
  float* fresh() { return data.data() + kSlot * (used++ % kSlots); }
};
}  // namespace

TEST_CASE("automatic routing: matrices to Muon, vectors, embeddings and heads to AdamW",
          "[routing]") {
  Bank bank;
  float* g = bank.grad.data();
  muon::Optimizer<float> opt;
  opt.add_param("blocks.0.attn.weight", {bank.fresh(), {16, 8}}, {g, {16, 8}});
  opt.add_param("blocks.0.attn.bias", {bank.fresh(), {16}}, {g, {16}});
  opt.add_param("ln.gain", {bank.fresh(), {8}}, {g, {8}});
  opt.add_param("temperature", {bank.fresh(), {}}, {g, {}});
  opt.add_param("conv.weight", {bank.fresh(), {8, 3, 3, 3}}, {g, {8, 3, 3, 3}});
  opt.add_param("experts", {bank.fresh(), {4, 8, 16}}, {g, {4, 8, 16}});
  opt.add_param("transformer.WTE.weight", {bank.fresh(), {32, 8}}, {g, {32, 8}});
  opt.add_param("wpe", {bank.fresh(), {32, 8}}, {g, {32, 8}});
  opt.add_param("tok_embeddings", {bank.fresh(), {32, 8}}, {g, {32, 8}});
  opt.add_param("Embed.table", {bank.fresh(), {32, 8}}, {g, {32, 8}});
  opt.add_param("lm_head.weight", {bank.fresh(), {32, 8}}, {g, {32, 8}});
  opt.add_param("output_head", {bank.fresh(), {10, 8}}, {g, {10, 8}});
  opt.add_param("Classifier.w", {bank.fresh(), {10, 8}}, {g, {10, 8}});

  using muon::Route;
  const std::vector<std::pair<std::string, Route>> want = {{"blocks.0.attn.weight", Route::muon},
                                                           {"blocks.0.attn.bias", Route::adamw},
                                                           {"ln.gain", Route::adamw},
                                                           {"temperature", Route::adamw},
                                                           {"conv.weight", Route::muon},
                                                           {"experts", Route::muon},
                                                           {"transformer.WTE.weight", Route::adamw},
                                                           {"wpe", Route::adamw},
                                                           {"tok_embeddings", Route::adamw},
                                                           {"Embed.table", Route::adamw},
                                                           {"lm_head.weight", Route::adamw},
                                                           {"output_head", Route::adamw},
                                                           {"Classifier.w", Route::adamw}};
  for (const auto& [name, route] : want) {
    INFO(name);
    REQUIRE(opt.route(name) == route);
  }
  const muon::RoutingReport report = opt.routing();
  REQUIRE(report.entries.size() == want.size());
  REQUIRE(report.at("lm_head.weight").reason.find("lm_head") != std::string::npos);
  REQUIRE(report.at("ln.gain").reason.find("1-D") != std::string::npos);
  REQUIRE(report.at("conv.weight").rows == 8);
  REQUIRE(report.at("conv.weight").cols == 27);
  REQUIRE(report.at("experts").rows == 8);  // one matrix of the batch
  REQUIRE(report.at("experts").cols == 16);
  const std::string table = report.table();
  for (const auto& entry : want) REQUIRE(table.find(entry.first) != std::string::npos);
  REQUIRE(table.find("lr scale") != std::string::npos);
}

TEST_CASE("an explicit route always wins over the rules", "[routing]") {
  Bank bank;
  float* g = bank.grad.data();
  // The vector gets buffers of its own, with a gradient that is not constant.
  std::vector<float> v(8), gv(8);
  for (std::size_t i = 0; i < v.size(); ++i) {
    v[i] = 0.5f + 0.1f * float(i);
    gv[i] = float(i % 3) - 0.8f + 0.05f * float(i);
  }
  const std::vector<float> v0 = v;
  muon::Optimizer<float> opt(muon::MuonGroupOptions().with_lr(0.01).with_weight_decay(0.0));
  opt.add_param("embed.weight", {bank.fresh(), {32, 8}}, {g, {32, 8}}, muon::Route::muon);
  opt.add_param("fc.weight", {bank.fresh(), {16, 8}}, {g + 256, {16, 8}}, muon::Route::adamw);
  opt.add_param("norm.scale", {v.data(), {8}}, {gv.data(), {8}}, muon::Route::muon);
  REQUIRE(opt.route("embed.weight") == muon::Route::muon);
  REQUIRE(opt.route("fc.weight") == muon::Route::adamw);
  REQUIRE(opt.route("norm.scale") == muon::Route::muon);
  REQUIRE(opt.routing().at("fc.weight").reason.find("explicit") != std::string::npos);
  REQUIRE(opt.step().updated == 3);
  // A vector forced to Muon is a 1 x n matrix: its one singular value is
  // ||m||, so Newton–Schulz keeps the direction and the step (no decay here)
  // is -lr * p^5(~1) * g / ||g||: anti-parallel to g, of length lr * p^5(1)
  // (Jordan: p^5(1) = 0.7...; lr scale sqrt(max(1, 1/8)) = 1).
  double dot = 0, dd = 0, gg = 0;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double d = double(v[i]) - double(v0[i]);
    dot += d * gv[i];
    dd += d * d;
    gg += double(gv[i]) * gv[i];
  }
  double p5 = 1.0;  // Jordan's quintic five times on the normalized singular value 1
  for (int k = 0; k < 5; ++k) p5 = p5 * (3.4445 - 4.7750 * p5 * p5 + 2.0315 * p5 * p5 * p5 * p5);
  REQUIRE(dd > 0);
  REQUIRE(dot / std::sqrt(dd * gg) < -0.9999);
  REQUIRE(std::abs(std::sqrt(dd) - 0.01 * p5) < 1e-5);
}

TEST_CASE("the name patterns are configurable", "[routing]") {
  Bank bank;
  float* g = bank.grad.data();
  muon::Optimizer<float> opt;
  muon::RoutingRules rules;
  rules.adamw_name_patterns = {"Router"};
  opt.set_routing_rules(rules);
  opt.add_param("moe.router.weight", {bank.fresh(), {8, 16}}, {g, {8, 16}});
  opt.add_param("lm_head.weight", {bank.fresh(), {8, 16}}, {g, {8, 16}});
  REQUIRE(opt.route("moe.router.weight") == muon::Route::adamw);
  REQUIRE(opt.route("lm_head.weight") == muon::Route::muon);  // no longer in the list
}

TEST_CASE("lr scale of each rule, from the matrix Muon sees", "[routing]") {
  Bank bank;
  float* g = bank.grad.data();
  struct Case {
    const char* rule;
    double (*scale)(double, double);
  };
  const Case cases[] = {
      {"original", [](double a, double b) { return std::sqrt(std::max(1.0, a / b)); }},
      {"match_rms_adamw", [](double a, double b) { return 0.2 * std::sqrt(std::max(a, b)); }},
      {"spectral", [](double a, double b) { return std::sqrt(a / b); }},
      {"none", [](double, double) { return 1.0; }}};
  for (const Case& c : cases) {
    INFO(c.rule);
    muon::Optimizer<float> opt;
    opt.set_option("adjust_lr", c.rule);
    opt.add_param("tall", {bank.fresh(), {64, 4}}, {g, {64, 4}});
    opt.add_param("wide", {bank.fresh(), {4, 64}}, {g, {4, 64}});
    opt.add_param("conv", {bank.fresh(), {32, 2, 2, 2}}, {g, {32, 2, 2, 2}});  // 32 x 8
    const auto r = opt.routing();
    REQUIRE(std::abs(r.at("tall").lr_scale - c.scale(64, 4)) < 1e-12);
    REQUIRE(std::abs(r.at("wide").lr_scale - c.scale(4, 64)) < 1e-12);
    REQUIRE(std::abs(r.at("conv").lr_scale - c.scale(32, 8)) < 1e-12);
    REQUIRE(r.at("tall").lr_scale > 0);
  }
  // A user rule replaces the named one.
  muon::Optimizer<float> opt(muon::MuonGroupOptions().with_adjust_lr(muon::LrAdjustFn(
      [](double lr, Eigen::Index a, Eigen::Index b) { return lr * double(a + b); })));
  opt.add_param("m", {bank.fresh(), {3, 5}}, {g, {3, 5}});
  REQUIRE(std::abs(opt.routing().at("m").lr_scale - 8.0) < 1e-12);
}

TEST_CASE("groups carry their own options", "[routing]") {
  Bank bank;
  float* g = bank.grad.data();
  muon::Optimizer<float> opt;
  const std::size_t slow = opt.add_group(muon::MuonGroupOptions().with_lr(1e-4));
  opt.add_param("a", {bank.fresh(), {8, 8}}, {g, {8, 8}});
  opt.add_param("b", {bank.fresh(), {8, 8}}, {g, {8, 8}}, muon::Route::automatic, slow);
  REQUIRE(opt.routing().at("b").group == slow);
  REQUIRE(opt.muon_options(slow).lr == 1e-4);
  opt.set_option("lr", 0.5, slow);
  REQUIRE(opt.muon_options(slow).lr == 0.5);
  REQUIRE(opt.muon_options(0).lr == 1e-3);
}

TEST_CASE("decide_route is the rule the optimizer applies", "[routing]") {
  using muon::Route;
  const muon::RoutingRules rules;
  auto decide = [&](const char* name, int ndim, std::array<std::ptrdiff_t, 4> shape,
                    Route requested = Route::automatic) {
    return muon::decide_route(name, ndim, shape, requested, rules);
  };
  REQUIRE(decide("fc.weight", 2, {16, 8}).route == Route::muon);
  REQUIRE(decide("fc.weight", 2, {16, 8}).reason == "2-D matrix");
  REQUIRE(decide("experts", 3, {4, 8, 16}).reason == "3-D: batch of 4 matrices");
  REQUIRE(decide("conv.weight", 4, {8, 3, 3, 3}).reason == "4-D filter as (out, in*kh*kw)");
  REQUIRE(decide("fc.bias", 1, {16}).route == Route::adamw);
  REQUIRE(decide("fc.bias", 1, {16}).reason == "1-D (gain/bias)");
  REQUIRE(decide("t", 0, {}).reason == "scalar");
  REQUIRE(decide("Transformer.WTE", 2, {32, 8}).route == Route::adamw);
  REQUIRE(decide("Transformer.WTE", 2, {32, 8}).reason ==
          "name contains 'wte' (embedding/output head)");
  REQUIRE(decide("lm_head.bias", 1, {32}).reason == "1-D (gain/bias)");  // rank first
  REQUIRE(decide("embed", 2, {32, 8}, Route::muon).reason == "explicit choice");
  REQUIRE(decide("g", 1, {8}, Route::muon).reason ==
          "explicit choice (a vector is a 1 x n matrix)");
  REQUIRE(decide("w", 2, {8, 8}, Route::adamw).route == Route::adamw);
  REQUIRE_THROWS_AS(decide("w", 2, {8, 8}, static_cast<Route>(7)), muon::Error);
  REQUIRE_THROWS_AS(decide("w", 5, {8, 8}), muon::Error);

  // The optimizer's report carries exactly these decisions.
  Bank bank;
  muon::Optimizer<float> opt;
  opt.add_param("experts", {bank.fresh(), {4, 8, 16}}, {bank.grad.data(), {4, 8, 16}});
  opt.add_param("Transformer.WTE", {bank.fresh(), {32, 8}}, {bank.grad.data(), {32, 8}});
  REQUIRE(opt.routing().at("experts").reason == decide("experts", 3, {4, 8, 16}).reason);
  REQUIRE(opt.routing().at("Transformer.WTE").reason ==
          decide("Transformer.WTE", 2, {32, 8}).reason);
}

TEST_CASE("adjusted_lr takes any integer dimensions", "[routing]") {
  const double want = 0.01 * std::sqrt(64.0 / 4.0);
  const Eigen::Index ea = 64, eb = 4;
  const std::int64_t ia = 64, ib = 4;
  const std::ptrdiff_t pa = 64, pb = 4;
  REQUIRE(muon::adjusted_lr(0.01, ea, eb, muon::LrAdjust::original) == want);
  REQUIRE(muon::adjusted_lr(0.01, ia, ib, muon::LrAdjust::original) == want);
  REQUIRE(muon::adjusted_lr(0.01, pa, pb, muon::LrAdjust::original) == want);
  REQUIRE(muon::adjusted_lr(0.01, 64, 4, muon::LrAdjust::original) == want);
  // The user-function overload still takes a lambda.
  REQUIRE(muon::adjusted_lr(0.01, ia, ib, [](double lr, Eigen::Index a, Eigen::Index b) {
            return lr * static_cast<double>(a - b);
          }) == 0.01 * 60.0);
  for (muon::LrAdjust rule : {muon::LrAdjust::original, muon::LrAdjust::match_rms_adamw,
                              muon::LrAdjust::spectral, muon::LrAdjust::none}) {
    REQUIRE(muon::is_valid(rule));
    REQUIRE(muon::lr_adjust_from_name(muon::lr_adjust_name(rule)) == rule);
  }
  REQUIRE_FALSE(muon::is_valid(static_cast<muon::LrAdjust>(9)));
  REQUIRE_FALSE(muon::is_valid(static_cast<muon::MomentumKind>(9)));
  REQUIRE_FALSE(muon::is_valid(static_cast<muon::Route>(9)));
}
