// SPDX-License-Identifier: MIT
// Routing: which parameters go to Muon and which to AdamW, why, and with which
// lr scale (checked against the rules' formulas written out here).

#include <muon/optimizer.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "catch.hpp"

namespace {
struct Bank {
  std::vector<float> data = std::vector<float>(4096, 0.5f);
  std::vector<float> grad = std::vector<float>(4096, 0.25f);
};
}  // namespace

TEST_CASE("automatic routing: matrices to Muon, vectors, embeddings and heads to AdamW",
          "[routing]") {
  Bank bank;
  float* p = bank.data.data();
  float* g = bank.grad.data();
  muon::Optimizer<float> opt;
  opt.add_param("blocks.0.attn.weight", {p, {16, 8}}, {g, {16, 8}});
  opt.add_param("blocks.0.attn.bias", {p, {16}}, {g, {16}});
  opt.add_param("ln.gain", {p, {8}}, {g, {8}});
  opt.add_param("temperature", {p, {}}, {g, {}});
  opt.add_param("conv.weight", {p, {8, 3, 3, 3}}, {g, {8, 3, 3, 3}});
  opt.add_param("experts", {p, {4, 8, 16}}, {g, {4, 8, 16}});
  opt.add_param("transformer.WTE.weight", {p, {32, 8}}, {g, {32, 8}});
  opt.add_param("wpe", {p, {32, 8}}, {g, {32, 8}});
  opt.add_param("tok_embeddings", {p, {32, 8}}, {g, {32, 8}});
  opt.add_param("Embed.table", {p, {32, 8}}, {g, {32, 8}});
  opt.add_param("lm_head.weight", {p, {32, 8}}, {g, {32, 8}});
  opt.add_param("output_head", {p, {10, 8}}, {g, {10, 8}});
  opt.add_param("Classifier.w", {p, {10, 8}}, {g, {10, 8}});

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
  float* p = bank.data.data();
  float* g = bank.grad.data();
  muon::Optimizer<float> opt;
  opt.add_param("embed.weight", {p, {32, 8}}, {g, {32, 8}}, muon::Route::muon);
  opt.add_param("fc.weight", {p, {16, 8}}, {g, {16, 8}}, muon::Route::adamw);
  opt.add_param("norm.scale", {p, {8}}, {g, {8}}, muon::Route::muon);
  REQUIRE(opt.route("embed.weight") == muon::Route::muon);
  REQUIRE(opt.route("fc.weight") == muon::Route::adamw);
  REQUIRE(opt.route("norm.scale") == muon::Route::muon);
  REQUIRE(opt.routing().at("fc.weight").reason.find("explicit") != std::string::npos);
  // A vector forced to Muon is a 1 x n matrix: its update is g / ||g|| in
  // direction, so one step moves it (and nothing throws).
  REQUIRE(opt.step().updated == 3);
}

TEST_CASE("the name patterns are configurable", "[routing]") {
  Bank bank;
  float* p = bank.data.data();
  float* g = bank.grad.data();
  muon::Optimizer<float> opt;
  muon::RoutingRules rules;
  rules.adamw_name_patterns = {"Router"};
  opt.set_routing_rules(rules);
  opt.add_param("moe.router.weight", {p, {8, 16}}, {g, {8, 16}});
  opt.add_param("lm_head.weight", {p, {8, 16}}, {g, {8, 16}});
  REQUIRE(opt.route("moe.router.weight") == muon::Route::adamw);
  REQUIRE(opt.route("lm_head.weight") == muon::Route::muon);  // no longer in the list
}

TEST_CASE("lr scale of each rule, from the matrix Muon sees", "[routing]") {
  Bank bank;
  float* p = bank.data.data();
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
    opt.add_param("tall", {p, {64, 4}}, {g, {64, 4}});
    opt.add_param("wide", {p, {4, 64}}, {g, {4, 64}});
    opt.add_param("conv", {p, {32, 2, 2, 2}}, {g, {32, 2, 2, 2}});  // 32 x 8
    const auto r = opt.routing();
    REQUIRE(std::abs(r.at("tall").lr_scale - c.scale(64, 4)) < 1e-12);
    REQUIRE(std::abs(r.at("wide").lr_scale - c.scale(4, 64)) < 1e-12);
    REQUIRE(std::abs(r.at("conv").lr_scale - c.scale(32, 8)) < 1e-12);
    REQUIRE(r.at("tall").lr_scale > 0);
  }
  // A user rule replaces the named one.
  muon::Optimizer<float> opt(muon::MuonGroupOptions().with_adjust_lr(muon::LrAdjustFn(
      [](double lr, Eigen::Index a, Eigen::Index b) { return lr * double(a + b); })));
  opt.add_param("m", {p, {3, 5}}, {g, {3, 5}});
  REQUIRE(std::abs(opt.routing().at("m").lr_scale - 8.0) < 1e-12);
}

TEST_CASE("groups carry their own options", "[routing]") {
  Bank bank;
  float* p = bank.data.data();
  float* g = bank.grad.data();
  muon::Optimizer<float> opt;
  const std::size_t slow = opt.add_group(muon::MuonGroupOptions().with_lr(1e-4));
  opt.add_param("a", {p, {8, 8}}, {g, {8, 8}});
  opt.add_param("b", {p + 64, {8, 8}}, {g, {8, 8}}, muon::Route::automatic, slow);
  REQUIRE(opt.routing().at("b").group == slow);
  REQUIRE(opt.muon_options(slow).lr == 1e-4);
  opt.set_option("lr", 0.5, slow);
  REQUIRE(opt.muon_options(slow).lr == 0.5);
  REQUIRE(opt.muon_options(0).lr == 1e-3);
}
