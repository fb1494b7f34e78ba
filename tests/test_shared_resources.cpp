// SPDX-License-Identifier: MIT
// Workspaces that share their threads, packing buffers and matrix memory
// (eigen::SharedResources) compute exactly what workspaces of their own do,
// whatever order they run in; and the optimizer's workspaces share, so their
// memory is that of the largest shape, not the sum over shapes.
#include <memory>
#include <vector>

#include <muon/muon.hpp>

#include "catch.hpp"
#include "test_support.hpp"

namespace {

using muon_test::bitwise_equal;
using muon_test::gaussian;

struct Shape {
  Eigen::Index rows, cols;
};

// Square, wide with the Gram form, tall (transposed), and one large enough
// for threads (m^2 n >= 3.2e7) so the pool and every packing slot are used.
const std::vector<Shape> kShapes = {{48, 48}, {40, 130}, {150, 36}, {256, 520}};

}  // namespace

TEMPLATE_TEST_CASE("shared workspaces compute bitwise what workspaces of their own do", "", float,
                   double) {
  using T = TestType;
  const int threads = GENERATE(1, 2);
  INFO("threads " << threads);
  auto shared = std::make_shared<typename muon::Workspace<T>::Resources>(threads);
  std::vector<std::unique_ptr<muon::Workspace<T>>> own, sharing;
  std::vector<muon::Matrix<T>> inputs;
  for (std::size_t k = 0; k < kShapes.size(); ++k) {
    const Shape s = kShapes[k];
    own.push_back(std::make_unique<muon::Workspace<T>>(s.rows, s.cols, threads));
    sharing.push_back(std::make_unique<muon::Workspace<T>>(s.rows, s.cols, shared));
    inputs.push_back(gaussian(s.rows, s.cols, 40 + k).cast<T>());
  }
  // The arena grew while later (larger) workspaces were added: every
  // workspace must find its matrices again when it runs.
  const muon::NewtonSchulzOptions options(muon::Schedule::polar_express(), 8);
  // Interleaved, twice, so each run follows another shape's run.
  for (int round = 0; round < 2; ++round)
    for (std::size_t k = 0; k < kShapes.size(); ++k) {
      INFO("shape " << kShapes[k].rows << "x" << kShapes[k].cols << ", round " << round);
      muon::Matrix<T> a(kShapes[k].rows, kShapes[k].cols), b = a;
      muon::orthogonalize_into(inputs[k], a, *own[k], options);
      muon::orthogonalize_into(inputs[k], b, *sharing[k], options);
      CHECK(a.allFinite());
      CHECK(bitwise_equal(a, b));
    }
  CHECK(sharing.back()->threads() == threads);
  CHECK(sharing.back()->resources() == shared);
}

TEST_CASE("the optimizer's workspaces share one arena sized for the largest shape") {
  // GPT-2-like block shapes at 1/12 scale: c_attn, c_proj, c_fc, mlp c_proj.
  const std::vector<Shape> shapes = {{64, 192}, {64, 64}, {64, 256}, {256, 64}};
  std::vector<std::vector<float>> w, g;
  muon::Optimizer<float> opt;
  opt.set_ns_threads(2);
  for (std::size_t k = 0; k < shapes.size(); ++k) {
    const Shape s = shapes[k];
    w.emplace_back(std::size_t(s.rows * s.cols), 0.01f);
    g.emplace_back(std::size_t(s.rows * s.cols), 0.02f);
    opt.add_param("w" + std::to_string(k), {w[k].data(), {s.rows, s.cols}},
                  {g[k].data(), {s.rows, s.cols}});
  }
  REQUIRE(opt.workspace_count() == 4);
  // The largest workspace alone (64 x 256, m = 64, n = 256) holds its matrices
  // X, Y (m x n) and A, B, Q, T (m x m), 64-byte aligned each, plus packing.
  const std::size_t arena = (2 * 64 * 256 + 4 * 64 * 64) * sizeof(float);
  muon::Workspace<float> largest(64, 256, 2);
  const std::size_t largest_bytes = largest.resources()->bytes();
  CHECK(largest_bytes >= arena);
  // Sharing: the four shapes together hold what the largest holds alone
  // (their packing slots are sized for the largest product each), where four
  // workspaces of their own would hold about three times as much.
  CHECK(opt.workspace_bytes() == largest_bytes);
  std::size_t separate = 0;
  for (const Shape& s : shapes)
    separate += muon::Workspace<float>(s.rows, s.cols, 2).resources()->bytes();
  CHECK(separate > 2 * opt.workspace_bytes());
  // The state: one momentum per Muon weight.
  std::size_t weights = 0;
  for (const auto& v : w) weights += v.size() * sizeof(float);
  CHECK(opt.state_bytes() == weights);
  opt.step();
  CHECK(w[0][0] != 0.01f);
}

namespace {

// A model large enough for the step's elementwise work to be split over
// threads (more than 4 chunks of 64 Ki elements): an AdamW-routed embedding,
// a Muon matrix, a bias.
struct SmallModel {
  std::vector<float> emb, gemb, w, gw, b, gb;
  SmallModel() : emb(600 * 512), gemb(emb.size()), w(256 * 300), gw(w.size()), b(1000), gb(1000) {
    unsigned k = 1;
    for (auto* v : {&emb, &gemb, &w, &gw, &b, &gb})
      for (float& x : *v) x = float((k++ * 2654435761u) % 1000) / 1000.0f - 0.5f;
  }
  void attach(muon::Optimizer<float>& opt) {
    opt.add_param("embed.weight", {emb.data(), {600, 512}}, {gemb.data(), {600, 512}});
    opt.add_param("w", {w.data(), {256, 300}}, {gw.data(), {256, 300}});
    opt.add_param("b", {b.data(), {1000}}, {gb.data(), {1000}});
  }
};

}  // namespace

TEST_CASE("the step's parallel elementwise work gives the same result at any thread count") {
  SmallModel one, two;
  muon::Optimizer<float> a, b;
  a.set_ns_threads(1);
  b.set_ns_threads(2);
  one.attach(a);
  two.attach(b);
  REQUIRE(a.route("embed.weight") == muon::Route::adamw);
  for (int k = 0; k < 3; ++k) {
    a.step();
    b.step();
  }
  CHECK(one.emb != SmallModel().emb);
  CHECK(one.emb == two.emb);
  CHECK(one.w == two.w);
  CHECK(one.b == two.b);
  CHECK(bitwise_equal(a.exp_avg_sq("embed.weight"), b.exp_avg_sq("embed.weight")));
  CHECK(bitwise_equal(a.momentum_buffer("w"), b.momentum_buffer("w")));
}

TEST_CASE("a parameter's first problem in row order decides, whichever thread found it") {
  const int threads = GENERATE(1, 2);
  INFO("threads " << threads);
  SmallModel m;
  // Row 10 of the embedding: a gradient whose square overflows the second
  // moment (non_finite_state); row 590, in a later chunk: a NaN gradient.
  m.gemb[10 * 512 + 3] = 1e30f;
  m.gemb[590 * 512 + 7] = NAN;
  const SmallModel before = m;
  muon::Optimizer<float> opt;
  opt.set_ns_threads(threads);
  m.attach(opt);
  // raise: the error names the parameter and the first problem; nothing moves.
  const std::string message = muon_test::error_message([&] { opt.step(); });
  CHECK(muon_test::contains(message, "'embed.weight'"));
  CHECK(muon_test::contains(message, "would overflow"));
  CHECK(m.emb == before.emb);
  CHECK(m.w == before.w);
  CHECK(m.b == before.b);
  // skip: that parameter alone is left out, with the first problem's reason.
  opt.set_non_finite_policy(muon::NonFinitePolicy::skip);
  const muon::StepReport& report = opt.step();
  REQUIRE(report.skipped.size() == 1);
  CHECK(report.skipped[0].name == "embed.weight");
  CHECK(report.skipped[0].reason == muon::SkipReason::non_finite_state);
  CHECK(m.emb == before.emb);
  CHECK(m.w != before.w);
  CHECK(m.b != before.b);
}
