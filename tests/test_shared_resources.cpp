// SPDX-License-Identifier: MIT
// Workspaces that share their threads, packing buffers and matrix memory
// (eigen::SharedResources) compute exactly what workspaces of their own do,
// whatever order they run in; and the optimizer's workspaces share, so their
// memory is that of the largest shape, not the sum over shapes.
#include <limits>
#include <memory>
#include <string>
#include <utility>
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
  // All are small (m^2 n < 3.2e7): at 2 threads they run one per thread.
  const std::vector<Shape> shapes = {{64, 192}, {64, 64}, {64, 256}, {256, 64}};
  const int threads = GENERATE(1, 2);
  INFO("threads " << threads);
  std::vector<std::vector<float>> w, g;
  muon::Optimizer<float> opt;
  opt.set_ns_threads(threads);
  for (std::size_t k = 0; k < shapes.size(); ++k) {
    const Shape s = shapes[k];
    w.emplace_back(std::size_t(s.rows * s.cols), 0.01f);
    g.emplace_back(std::size_t(s.rows * s.cols), 0.02f);
    opt.add_param("w" + std::to_string(k), {w[k].data(), {s.rows, s.cols}},
                  {g[k].data(), {s.rows, s.cols}});
  }
  REQUIRE(opt.workspace_count() == 4);
  REQUIRE(opt.threads_used_for_small() == threads);
  // The largest workspace alone (64 x 256, m = 64, n = 256) holds its matrices
  // X, Y (m x n) and A, B, Q, T (m x m), 64-byte aligned each, plus packing.
  const std::size_t arena = (2 * 64 * 256 + 4 * 64 * 64) * sizeof(float);
  muon::Workspace<float> largest(64, 256, 1);
  const std::size_t largest_bytes = largest.resources()->bytes();
  CHECK(largest_bytes >= arena);
  // Sharing: the four shapes together hold what the largest holds alone
  // (their packing slots are sized for the largest product each), where four
  // workspaces of their own would hold about three times as much. At 2
  // threads each thread holds that for the matrices it runs: by cost, the
  // two 64 x 256 / 256 x 64 matrices go to different threads.
  CHECK(opt.workspace_bytes() == std::size_t(threads) * largest_bytes);
  std::size_t separate = 0;
  for (const Shape& s : shapes)
    separate += muon::Workspace<float>(s.rows, s.cols, 1).resources()->bytes();
  CHECK(separate > 2 * largest_bytes);
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

TEST_CASE("a parameter's reason is the first in SkipReason order, whichever thread found it") {
  // Every chunk's findings count (they are ORed, in any order): a NaN
  // gradient explains the state's overflow, wherever each lies. Until issue
  // 25 the first problem in row order decided (the overflow, when first).
  const int threads = GENERATE(1, 2);
  const bool nan_first = GENERATE(false, true);
  INFO("threads " << threads << ", NaN gradient " << (nan_first ? "first" : "last"));
  SmallModel m;
  // Rows 10 and 590 of the embedding, in its first and last chunk (at 2
  // threads, on different threads): a gradient whose square overflows the
  // second moment (non_finite_state), and a NaN gradient.
  m.gemb[(nan_first ? 590 : 10) * 512 + 3] = 1e30f;
  m.gemb[(nan_first ? 10 : 590) * 512 + 7] = NAN;
  const SmallModel before = m;
  muon::Optimizer<float> opt;
  opt.set_ns_threads(threads);
  m.attach(opt);
  // raise: the error names the parameter and the gradient; nothing moves.
  const std::string message = muon_test::error_message([&] { opt.step(); });
  CHECK(muon_test::contains(message, "'embed.weight' contains NaN or Inf"));
  CHECK(m.emb == before.emb);
  CHECK(m.w == before.w);
  CHECK(m.b == before.b);
  // skip: that parameter alone is left out, for its gradient.
  opt.set_non_finite_policy(muon::NonFinitePolicy::skip);
  const muon::StepReport& report = opt.step();
  REQUIRE(report.skipped.size() == 1);
  CHECK(report.skipped[0].name == "embed.weight");
  CHECK(report.skipped[0].reason == muon::SkipReason::non_finite_grad);
  CHECK(m.emb == before.emb);
  CHECK(m.w != before.w);
  CHECK(m.b != before.b);
}

namespace {

// Small Muon matrices (each below the threads threshold, m^2 n < 3.2e7):
// wide, tall, square, a fused split and a 3-D batch, in three distinct
// shapes and enough work in all (>= 1e6) to be spread across threads.
struct SmallMatrices {
  struct P {
    std::string name;
    std::vector<std::ptrdiff_t> shape;
    std::vector<float> w, g, w0;
    muon::ParamOptions options;
  };
  std::vector<P> params;
  SmallMatrices() {
    auto add = [this](std::string name, std::vector<std::ptrdiff_t> shape,
                      std::vector<std::ptrdiff_t> split = {}) {
      P p;
      p.name = std::move(name);
      p.shape = std::move(shape);
      std::int64_t n = 1;
      for (auto d : p.shape) n *= d;
      const auto seed = std::uint64_t(params.size());
      const Eigen::MatrixXd w = gaussian(n, 1, 70 + seed), g = gaussian(n, 1, 90 + seed);
      for (std::int64_t e = 0; e < n; ++e) {
        p.w.push_back(float(w(e)));
        p.g.push_back(float(g(e)));
      }
      p.w0 = p.w;
      p.options.split = std::move(split);
      params.push_back(std::move(p));
    };
    add("fc1", {128, 200});
    add("fc2", {200, 128});
    add("fc3", {96, 96});
    add("fc4", {128, 200});
    add("qkv", {192, 96}, {96, 96});
    add("heads", {3, 96, 96});
  }
  void attach(muon::Optimizer<float>& opt) {
    auto view = [](float* data, const std::vector<std::ptrdiff_t>& d) {
      return d.size() == 2 ? muon::ParamView<float>(data, {d[0], d[1]})
                           : muon::ParamView<float>(data, {d[0], d[1], d[2]});
    };
    for (P& p : params)
      opt.add_param(p.name, view(p.w.data(), p.shape), view(p.g.data(), p.shape), p.options);
  }
};

}  // namespace

TEST_CASE("small matrices run one per thread and give bitwise what one thread gives") {
  muon::MuonGroupOptions mo;
  mo.with_lr(0.1).with_weight_decay(0.1);
  SmallMatrices one, side;
  muon::Optimizer<float> a(mo), b(mo);
  a.set_ns_threads(1);
  b.set_ns_threads(2);
  a.enable_metrics();
  b.enable_metrics();
  one.attach(a);
  side.attach(b);
  CHECK(a.threads_used_for_small() == 1);
  CHECK(b.threads_used_for_small() == 2);
  // Each extra thread holds its own arena: the 2-thread optimizer holds more.
  CHECK(b.workspace_bytes() > a.workspace_bytes());
  a.step();
  b.step();
  // First step from zero momentum (EMA, Nesterov): the Newton–Schulz input
  // is a multiple of the gradient, so W1 = W0 (1 - lr wd) - lr s NS(G) with
  // s = sqrt(max(1, rows/cols)) per block: the double reference.
  const double lr = 0.1, wd = 0.1;
  for (const auto& p : side.params) {
    INFO(p.name);
    const std::int64_t cols = p.shape.back(), rows = std::int64_t(p.w.size()) / cols;
    std::vector<std::ptrdiff_t> blocks = p.options.split;
    if (p.shape.size() == 3) blocks.assign(std::size_t(p.shape[0]), p.shape[1]);
    if (blocks.empty()) blocks = {rows};
    Eigen::Index r0 = 0;
    double worst = 0;
    for (std::ptrdiff_t br : blocks) {
      Eigen::MatrixXd G(br, cols), W0(br, cols), W1(br, cols);
      for (Eigen::Index r = 0; r < br; ++r)
        for (Eigen::Index c = 0; c < cols; ++c) {
          const std::size_t e = std::size_t((r0 + r) * cols + c);
          G(r, c) = p.g[e];
          W0(r, c) = p.w0[e];
          W1(r, c) = p.w[e];
        }
      const Eigen::MatrixXd O =
          muon_test::plain_newton_schulz(G, muon_test::paper_jordan(), 5, 1e-7, true);
      const double s = std::sqrt(std::max(1.0, double(br) / double(cols)));
      worst = std::max(worst, (W1 - (W0 * (1 - lr * wd) - lr * s * O)).cwiseAbs().maxCoeff());
      r0 += br;
    }
    CHECK(worst < 1e-4);  // O's entries are ~0.1; float Newton–Schulz agrees to ~1e-4 of them
  }
  for (int k = 0; k < 2; ++k) {
    a.step();
    b.step();
  }
  for (std::size_t j = 0; j < one.params.size(); ++j) {
    INFO(one.params[j].name);
    CHECK(one.params[j].w == side.params[j].w);
    CHECK(bitwise_equal(a.momentum_buffer(one.params[j].name),
                        b.momentum_buffer(one.params[j].name)));
    const auto& ma = a.metrics().params[j];
    const auto& mb = b.metrics().params[j];
    CHECK(ma.orthogonality_error == mb.orthogonality_error);
    CHECK(ma.update_rms == mb.update_rms);
  }
}

TEST_CASE("with bf16 products, small matrices one per thread give bitwise what one thread gives",
          "[bf16]") {
  // Each extra thread builds workspaces of its own for the small matrices:
  // they must use the engine the optimizer was given, or the matrices dealt
  // to that thread get fp32 products while the rest get bf16 ones. (The
  // ctest entry runs this where the CPU has AVX512-BF16: muon_products_probe.)
  REQUIRE(muon::eigen::products_available(muon::eigen::Products::bf16));
  muon::MuonGroupOptions mo;
  mo.with_lr(0.1).with_weight_decay(0.1);
  SmallMatrices one, side, fp32;
  muon::Optimizer<float> a(mo), b(mo), c(mo);
  a.set_ns_threads(1);
  b.set_ns_threads(2);
  c.set_ns_threads(2);
  a.set_ns_products(muon::eigen::Products::bf16);
  b.set_ns_products(muon::eigen::Products::bf16);
  one.attach(a);
  side.attach(b);
  fp32.attach(c);  // the default engine: what a lane's workspaces must not fall back to
  CHECK(a.threads_used_for_small() == 1);
  REQUIRE(b.threads_used_for_small() == 2);
  for (int k = 0; k < 3; ++k) {
    a.step();
    b.step();
    c.step();
  }
  for (std::size_t j = 0; j < one.params.size(); ++j) {
    INFO(one.params[j].name);
    CHECK(one.params[j].w == side.params[j].w);
    CHECK(bitwise_equal(a.momentum_buffer(one.params[j].name),
                        b.momentum_buffer(one.params[j].name)));
    CHECK(one.params[j].w != fp32.params[j].w);  // the engines differ on every matrix
  }
}

TEST_CASE("matrices are dealt to threads longest first, ties to the lowest") {
  // Hand-worked: in decreasing cost 5 (job 0) -> w0, 4 (job 2) -> w1,
  // 3 (job 4) -> w1 (load 4 < 5), 2 (job 3) -> w0 (5 < 7), 1 (job 1) -> w0
  // (7 = 7: the lowest worker).
  CHECK(muon::optim::assign_longest_first({5, 1, 4, 2, 3}, 2) == std::vector<int>{0, 0, 1, 0, 1});
  // Equal costs go in job order, round the workers.
  CHECK(muon::optim::assign_longest_first({2, 2, 2}, 2) == std::vector<int>{0, 1, 0});
  CHECK(muon::optim::assign_longest_first({1, 2}, 0) == std::vector<int>{0, 0});
  CHECK(muon::optim::newton_schulz_cost(768, 3072) == 768.0 * 768.0 * 3072.0);
  CHECK(muon::optim::newton_schulz_cost(3072, 768) == 768.0 * 768.0 * 3072.0);
}

TEST_CASE("a workspace whose arena size would wrap is refused by name", "[workspace][sizes]") {
  // 4 x 2^62: m n = 2^64 wraps to 0 in std::size_t; the arena would be
  // sized for the 4 x 4 squares only.
  const Eigen::Index huge = Eigen::Index(1) << 62;
  for (const auto& shape :
       {std::pair<Eigen::Index, Eigen::Index>{4, huge}, {huge, 4}, {huge, huge}}) {
    const std::string message =
        muon_test::error_message([&] { muon::Workspace<float> ws(shape.first, shape.second, 1); });
    INFO(message);
    CHECK(message.find("workspace shape:") != std::string::npos);
    CHECK(message.find("needs more memory than the address space holds") != std::string::npos);
  }
}

TEST_CASE("the products' task count never overflows an int", "[workspace][sizes]") {
  using muon::detail::useful_tasks;
  CHECK(useful_tasks(0.0, 4) == 1);
  CHECK(useful_tasks(8e6 - 1, 4) == 1);
  CHECK(useful_tasks(2 * 8e6, 4) == 2);
  CHECK(useful_tasks(1e12, 4) == 4);
  CHECK(useful_tasks(16.0 * 4.6e18, 4) == 4);  // 4 x 2^62 x 4: beyond any int
  CHECK(useful_tasks(1e300, 16) == 16);
  CHECK(useful_tasks(std::numeric_limits<double>::quiet_NaN(), 4) == 1);
}
