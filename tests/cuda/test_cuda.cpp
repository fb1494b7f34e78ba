// SPDX-License-Identifier: MIT
// CUDA backend tests: device results against the CPU backend in double
// (muon::orthogonalize), error paths, graph capture vs eager, the device
// optimizer against a double-precision reference. Every test that needs a
// GPU prints "no CUDA device: skipping" and returns when none is present.
//
// Tolerances (relative Frobenius error against the double CPU result, inputs
// with singular values spread over [0.1, 1] x scale): float 1e-4, half 1.5e-2,
// bfloat16 5e-2. A host emulation of this pipeline (every stored buffer
// rounded to the type, fp32 products) on these shapes gave at most 3e-6
// (float), 9e-3 (half) and 3.8e-2 (bfloat16, Polar Express on 1 x n, whose
// large coefficients cancel: b A + c A^2 ~ -6.5 before + a I) -- the same
// rounding PyTorch's bf16 NS5 has.

#include <Eigen/Core>
#include <Eigen/QR>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <muon/backend/cuda/tiling.hpp>
#include <muon/muon.hpp>

#include "catch.hpp"
#include "harness.hpp"

namespace {

using muon_cuda_test::Dtype;

bool skip_without_device() {
  if (muon_cuda_test::device_present()) return false;
  std::cout << "no CUDA device: skipping\n";
  WARN("no CUDA device: skipping");
  return true;
}

#define MUON_REQUIRE_DEVICE()          \
  do {                                 \
    if (skip_without_device()) return; \
  } while (0)

Eigen::MatrixXd gaussian(Eigen::Index r, Eigen::Index c, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> d(0.0, 1.0);
  Eigen::MatrixXd m(r, c);
  for (Eigen::Index j = 0; j < c; ++j)
    for (Eigen::Index i = 0; i < r; ++i) m(i, j) = d(gen);
  return m;
}

// U diag(s) V^T with s spread geometrically over [0.1, 1] times `scale`.
Eigen::MatrixXd spread(Eigen::Index r, Eigen::Index c, std::uint64_t seed, double scale = 1.0) {
  const Eigen::Index k = std::min(r, c);
  const Eigen::MatrixXd U =
      Eigen::HouseholderQR<Eigen::MatrixXd>(gaussian(r, k, seed)).householderQ() *
      Eigen::MatrixXd::Identity(r, k);
  const Eigen::MatrixXd V =
      Eigen::HouseholderQR<Eigen::MatrixXd>(gaussian(c, k, seed + 1)).householderQ() *
      Eigen::MatrixXd::Identity(c, k);
  Eigen::VectorXd s(k);
  for (Eigen::Index i = 0; i < k; ++i)
    s(i) = scale * (k == 1 ? 1.0 : std::pow(0.1, static_cast<double>(i) / (k - 1)));
  return U * s.asDiagonal() * V.transpose();
}

std::vector<double> flat(const std::vector<Eigen::MatrixXd>& ms) {
  std::vector<double> v;
  for (const auto& m : ms) v.insert(v.end(), m.data(), m.data() + m.size());
  return v;
}

double tolerance(Dtype t) {
  switch (t) {
    case Dtype::f32:
      return 1e-4;
    case Dtype::f16:
      return 1.5e-2;
    case Dtype::bf16:
      return 5e-2;
  }
  return 0;
}
const char* name(Dtype t) {
  return t == Dtype::f32 ? "float" : t == Dtype::f16 ? "half" : "bfloat16";
}

// max over the batch of ||dev_k - cpu_k||_F / ||cpu_k||_F.
double worst_relative_error(const std::vector<double>& dev, const std::vector<Eigen::MatrixXd>& in,
                            const muon::NewtonSchulzOptions& o) {
  double worst = 0;
  std::size_t off = 0;
  for (const auto& m : in) {
    const Eigen::MatrixXd ref = muon::orthogonalize(m, o);
    const Eigen::Map<const Eigen::MatrixXd> d(dev.data() + off, m.rows(), m.cols());
    worst = std::max(worst, (d - ref).norm() / ref.norm());
    off += static_cast<std::size_t>(m.size());
  }
  return worst;
}

struct ShapeCase {
  const char* label;
  Eigen::Index rows, cols, batch;
  std::int64_t tile;  // forced tiling edge (0: automatic)
};

}  // namespace

TEST_CASE("cuda: errors are muon::Error naming the call and the code (no device needed)") {
  const std::string c = muon_cuda_test::cuda_error_message();
  CHECK(c.find("cudaMemcpyAsync") != std::string::npos);
  CHECK(c.find("cudaErrorInvalidValue") != std::string::npos);
  const std::string b = muon_cuda_test::cublas_error_message();
  CHECK(b.find("cublasGemmEx") != std::string::npos);
  CHECK(b.find("CUBLAS_STATUS_INVALID_VALUE") != std::string::npos);
}

TEST_CASE("cuda: Workspace::check names the broken field (no device needed)") {
  using muon_cuda_test::workspace_check;
  CHECK(workspace_check("none").empty());
  CHECK(workspace_check("rows").rfind("shape:", 0) == 0);
  CHECK(workspace_check("batch").rfind("batch:", 0) == 0);
  CHECK(workspace_check("in_null").rfind("in: null", 0) == 0);
  CHECK(workspace_check("out_shape").rfind("out: shape", 0) == 0);
  CHECK(workspace_check("ld").rfind("in: ld", 0) == 0);
  CHECK(workspace_check("stride").rfind("out: stride", 0) == 0);
  CHECK(workspace_check("steps").rfind("options.steps", 0) == 0);
  CHECK(workspace_check("tile").rfind("tile:", 0) == 0);
}

TEST_CASE("cuda: optimizer argument errors (no device needed)") {
  using muon_cuda_test::optimizer_error;
  CHECK(optimizer_error("ok").empty());
  CHECK(optimizer_error("duplicate").find("already added") != std::string::npos);
  CHECK(optimizer_error("null").find("grad") == std::string::npos);
  CHECK(optimizer_error("null").find("param") != std::string::npos);
  CHECK(optimizer_error("shape").find("shape") != std::string::npos);
  CHECK(optimizer_error("bad_magic").find("checkpoint") != std::string::npos);
  CHECK(optimizer_error("options").find("momentum") != std::string::npos);
}

TEST_CASE("cuda: tiled kernels emulated on the host agree with plain loops (no device needed)") {
  CHECK(muon_cuda_test::emulate_tiled_kernels() == "");
}

TEST_CASE("cuda: the lower-triangle tiling covers each lower entry once (no device needed)") {
  using muon::cuda::detail::plan_lower_tiles;
  for (std::int64_t m : {1, 2, 5, 64, 96, 100, 130, 1535, 1536, 1600, 3000, 4096, 8192})
    for (std::int64_t req : {0, 1, 7, 16, 32, 40, 64, 1000}) {
      if (req > 0 && req < 64 && m > 200) continue;  // millions of blocks: slow, no new case
      const auto p = plan_lower_tiles(m, req, 1536, 1024);
      INFO("m " << m << " tile request " << req << ": tile " << p.tile << " nb " << p.nb);
      if (!p.tiled()) {
        CHECK(p.groups.empty());
        CHECK(p.tile == m);
        continue;
      }
      CHECK(p.tile * (p.nb - 1) < m);
      CHECK(p.tile * p.nb >= m);
      std::vector<int> hits(static_cast<std::size_t>(m * m), 0);
      std::int64_t blocks = 0;
      for (const auto& g : p.groups) {
        REQUIRE(g.row_offset.size() == g.col_offset.size());
        for (std::size_t k = 0; k < g.row_offset.size(); ++k, ++blocks) {
          const std::int64_t r0 = g.row_offset[k], c0 = g.col_offset[k];
          CHECK(r0 >= c0);
          CHECK(r0 + g.rows <= m);
          CHECK(c0 + g.cols <= m);
          for (std::int64_t j = c0; j < c0 + g.cols; ++j)
            for (std::int64_t i = r0; i < r0 + g.rows; ++i)
              ++hits[static_cast<std::size_t>(i + j * m)];
        }
      }
      CHECK(blocks == p.lower_blocks());
      bool ok = true;
      for (std::int64_t j = 0; j < m; ++j)
        for (std::int64_t i = j; i < m; ++i)
          ok = ok && hits[static_cast<std::size_t>(i + j * m)] == 1;
      CHECK(ok);
      if (m > 200) continue;
      // Simulate the products: lower blocks of X X^T, mirrored, equal the full product.
      const Eigen::MatrixXd X = gaussian(m, m + 17, static_cast<std::uint64_t>(m * 100 + req));
      Eigen::MatrixXd C = Eigen::MatrixXd::Constant(m, m, std::nan(""));
      for (const auto& g : p.groups)
        for (std::size_t k = 0; k < g.row_offset.size(); ++k)
          C.block(g.row_offset[k], g.col_offset[k], g.rows, g.cols) =
              X.middleRows(g.row_offset[k], g.rows) *
              X.middleRows(g.col_offset[k], g.cols).transpose();
      for (Eigen::Index j = 0; j < m; ++j)
        for (Eigen::Index i = 0; i < j; ++i) C(i, j) = C(j, i);
      CHECK((C - X * X.transpose()).norm() <= 1e-12 * (X * X.transpose()).norm());
    }
  CHECK(plan_lower_tiles(4096, 0, 1536, 1024).lower_blocks() == 10);
  CHECK(plan_lower_tiles(8192, 0, 1536, 1024).lower_blocks() == 36);
  CHECK_FALSE(plan_lower_tiles(1024, 0, 1536, 1024).tiled());
}

TEST_CASE("cuda: device Newton-Schulz matches the CPU backend for every schedule and shape") {
  MUON_REQUIRE_DEVICE();
  const ShapeCase shapes[] = {{"square", 64, 64, 1, 0},
                              {"wide", 48, 160, 1, 0},
                              {"tall", 160, 48, 1, 0},
                              {"1xn", 1, 37, 1, 0},
                              {"nx1", 37, 1, 1, 0},
                              {"batch", 40, 72, 3, 0},
                              {"tiled square", 100, 100, 1, 32},
                              {"tiled tall batch", 130, 96, 2, 40},
                              {"tiled wide", 96, 200, 1, 48}};
  const char* schedules[] = {"jordan", "cubic", "quintic", "polar_express"};
  const Dtype types[] = {Dtype::f32, Dtype::f16, Dtype::bf16};
  std::uint64_t seed = 1000;
  for (const auto& sc : shapes)
    for (const char* sched : schedules)
      for (Dtype t : types) {
        muon::NewtonSchulzOptions o(muon::Schedule::by_name(sched), 5);
        std::vector<Eigen::MatrixXd> in;
        for (Eigen::Index z = 0; z < sc.batch; ++z)
          in.push_back(spread(sc.rows, sc.cols, ++seed, 3.0));
        muon_cuda_test::RunMode mode;
        mode.tile = sc.tile;
        const auto dev =
            muon_cuda_test::orthogonalize(flat(in), sc.rows, sc.cols, sc.batch, t, o, mode);
        const double err = worst_relative_error(dev, in, o);
        INFO(sc.label << " " << sc.rows << "x" << sc.cols << " batch " << sc.batch << ", " << sched
                      << ", " << name(t) << ", seed " << seed << ": relative error " << err);
        CHECK(err <= tolerance(t));
      }
}

TEST_CASE("cuda: eps modes, norm divisor and step counts match the CPU backend") {
  MUON_REQUIRE_DEVICE();
  for (int steps : {0, 1, 7}) {
    for (auto mode : {muon::EpsMode::add, muon::EpsMode::max}) {
      muon::NewtonSchulzOptions o(muon::Schedule::jordan(), steps);
      o.with_eps(1e-3, mode).with_norm_divisor(1.02);
      const std::vector<Eigen::MatrixXd> in{spread(24, 56, 77 + steps, 0.5)};
      const auto dev = muon_cuda_test::orthogonalize(flat(in), 24, 56, 1, Dtype::f32, o);
      const double err = worst_relative_error(dev, in, o);
      INFO("steps " << steps << " eps mode " << static_cast<int>(mode) << ": " << err);
      CHECK(err <= tolerance(Dtype::f32));
    }
  }
}

TEST_CASE("cuda: padded leading dimensions, reuse and graph replay equal eager") {
  MUON_REQUIRE_DEVICE();
  const muon::NewtonSchulzOptions o;
  for (bool tiled : {false, true}) {
    std::vector<Eigen::MatrixXd> in{spread(70, 50, 5, 2.0), spread(70, 50, 6, 2.0)};
    muon_cuda_test::RunMode eager;
    eager.tile = tiled ? 16 : 0;
    muon_cuda_test::RunMode padded = eager;
    padded.ld_pad = 5;
    padded.reuse = true;
    muon_cuda_test::RunMode graph = eager;
    graph.graph = true;
    const auto a = muon_cuda_test::orthogonalize(flat(in), 70, 50, 2, Dtype::bf16, o, eager);
    const auto b = muon_cuda_test::orthogonalize(flat(in), 70, 50, 2, Dtype::bf16, o, padded);
    const auto c = muon_cuda_test::orthogonalize(flat(in), 70, 50, 2, Dtype::bf16, o, graph);
    double db = 0, dc = 0;
    for (std::size_t k = 0; k < a.size(); ++k) {
      db = std::max(db, std::abs(a[k] - b[k]));
      dc = std::max(dc, std::abs(a[k] - c[k]));
    }
    INFO("tiled " << tiled << ": padded/reused vs eager " << db << ", graph vs eager " << dc);
    CHECK(db <= 1e-6);
    CHECK(dc <= 1e-6);
    CHECK(worst_relative_error(a, in, o) <= tolerance(Dtype::bf16));
  }
}

TEST_CASE("cuda: the automatic lower-triangle tiling (m >= 1536) equals the untiled products") {
  MUON_REQUIRE_DEVICE();
  // 1600 x 1700: m = 1600 tiles as 2 x 2 blocks of 832 (partial last); a tile
  // request of m forces the untiled path. float, so the two agree closely.
  const std::vector<Eigen::MatrixXd> in{spread(1700, 1600, 4242, 2.0)};  // tall: transposed
  const muon::NewtonSchulzOptions o(muon::Schedule::polar_express(), 5);
  muon_cuda_test::RunMode tiled, untiled;
  untiled.tile = 1600;
  const auto a = muon_cuda_test::orthogonalize(flat(in), 1700, 1600, 1, Dtype::f32, o, tiled);
  const auto b = muon_cuda_test::orthogonalize(flat(in), 1700, 1600, 1, Dtype::f32, o, untiled);
  double diff = 0, norm = 0;
  for (std::size_t k = 0; k < a.size(); ++k) {
    diff += (a[k] - b[k]) * (a[k] - b[k]);
    norm += b[k] * b[k];
  }
  INFO("relative difference tiled vs untiled: " << std::sqrt(diff / norm));
  CHECK(std::sqrt(diff / norm) <= 1e-4);
}

TEST_CASE("cuda: NaN/Inf input throws naming the input and leaves the output untouched") {
  MUON_REQUIRE_DEVICE();
  std::vector<float> in(6 * 9, 0.5f);
  in[13] = std::nanf("");
  std::vector<float> out;
  bool threw = false;
  try {
    muon_cuda_test::orthogonalize_checked(in, 6, 9, out, 7.0f);
  } catch (const muon::Error& e) {
    threw = true;
    CHECK(std::string(e.what()).find("in: matrix 0 contains NaN or Inf") != std::string::npos);
  }
  CHECK(threw);
  REQUIRE(out.size() == in.size());
  for (float v : out) CHECK(v == 7.0f);
  in[13] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(muon_cuda_test::orthogonalize_checked(in, 6, 9, out, 1.0f), muon::Error);
  in[13] = 0.25f;
  CHECK_NOTHROW(muon_cuda_test::orthogonalize_checked(in, 6, 9, out, 1.0f));
}

namespace {

// Double reference of the device optimizer (torch.optim.Muon / AdamW semantics).
std::vector<std::vector<double>> reference_optimizer(
    const std::vector<muon_cuda_test::OptParam>& ps, const muon_cuda_test::OptRun& run) {
  const muon::NewtonSchulzOptions ns =
      muon::NewtonSchulzOptions().with_eps(1e-7, muon::EpsMode::max);
  std::vector<std::vector<double>> p, m, v;
  for (const auto& q : ps) {
    p.emplace_back(q.value.begin(), q.value.end());
    m.emplace_back(q.value.size(), 0.0);
    v.emplace_back(q.value.size(), 0.0);
  }
  const double mu = run.momentum;
  for (int s = 1; s <= run.steps; ++s) {
    for (std::size_t k = 0; k < ps.size(); ++k) {
      const auto& q = ps[k];
      const auto& g = run.grads[static_cast<std::size_t>(s - 1)][k];
      const std::size_t n = g.size();
      if (q.adamw) {
        const double b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01, lr = run.adam_lr;
        const double bc1 = 1 - std::pow(b1, s), bc2 = 1 - std::pow(b2, s);
        for (std::size_t i = 0; i < n; ++i) {
          p[k][i] *= 1 - lr * wd;
          m[k][i] = b1 * m[k][i] + (1 - b1) * g[i];
          v[k][i] = b2 * v[k][i] + (1 - b2) * g[i] * g[i];
          p[k][i] -= lr / bc1 * m[k][i] / (std::sqrt(v[k][i] / bc2) + eps);
        }
        continue;
      }
      std::vector<double> u(n);
      for (std::size_t i = 0; i < n; ++i) {
        if (run.sum_momentum) {
          m[k][i] = mu * m[k][i] + g[i];
          u[i] = run.nesterov ? g[i] + mu * m[k][i] : m[k][i];
        } else {
          m[k][i] += (1 - mu) * (g[i] - m[k][i]);
          u[i] = run.nesterov ? g[i] + mu * (m[k][i] - g[i]) : m[k][i];
        }
      }
      // Memory as column-major: rows x cols, or cols x rows for row-major.
      const Eigen::Index mr = q.row_major ? q.cols : q.rows, mc = q.row_major ? q.rows : q.cols;
      const Eigen::MatrixXd O =
          muon::orthogonalize(Eigen::Map<const Eigen::MatrixXd>(u.data(), mr, mc), ns);
      const double adj = std::sqrt(std::max(1.0, static_cast<double>(q.rows) / q.cols));
      for (std::size_t i = 0; i < n; ++i)
        p[k][i] = p[k][i] * (1 - run.lr * run.weight_decay) - run.lr * adj * O.data()[i];
    }
  }
  return p;
}

std::vector<muon_cuda_test::OptParam> make_params(std::uint64_t seed) {
  std::vector<muon_cuda_test::OptParam> ps;
  auto add = [&](const char* name, std::int64_t r, std::int64_t c, bool row_major, bool adamw) {
    muon_cuda_test::OptParam q;
    q.name = name;
    q.rows = r;
    q.cols = c;
    q.row_major = row_major;
    q.adamw = adamw;
    const Eigen::MatrixXd v = 0.1 * gaussian(r, c, ++seed);
    q.value.assign(v.data(), v.data() + v.size());
    ps.push_back(q);
  };
  add("a.weight", 48, 32, false, false);
  add("b.weight", 48, 32, true, false);   // same memory shape class, other layout
  add("c.weight", 48, 32, false, false);  // batched with a.weight
  add("d.weight", 20, 64, true, false);
  add("a.bias", 48, 1, false, true);
  return ps;
}

muon_cuda_test::OptRun make_run(const std::vector<muon_cuda_test::OptParam>& ps, int steps,
                                std::uint64_t seed) {
  muon_cuda_test::OptRun run;
  run.steps = steps;
  for (int s = 0; s < steps; ++s) {
    std::vector<std::vector<float>> gs;
    for (const auto& q : ps) {
      const Eigen::MatrixXd g = gaussian(q.rows, q.cols, seed + 100 * s + gs.size());
      gs.emplace_back(g.data(), g.data() + g.size());
    }
    run.grads.push_back(gs);
  }
  return run;
}

double worst_param_error(const std::vector<std::vector<float>>& dev,
                         const std::vector<std::vector<double>>& ref,
                         const std::vector<muon_cuda_test::OptParam>& init) {
  double worst = 0;
  for (std::size_t k = 0; k < dev.size(); ++k) {
    double diff = 0, moved = 0;
    for (std::size_t i = 0; i < dev[k].size(); ++i) {
      diff += (dev[k][i] - ref[k][i]) * (dev[k][i] - ref[k][i]);
      moved += (ref[k][i] - init[k].value[i]) * (ref[k][i] - init[k].value[i]);
    }
    worst = std::max(worst, std::sqrt(diff / moved));
  }
  return worst;
}

}  // namespace

TEST_CASE("cuda: device optimizer matches a double reference (eager, graph, save/load)") {
  MUON_REQUIRE_DEVICE();
  const auto ps = make_params(42);
  for (bool sum : {false, true})
    for (bool nesterov : {true, false})
      for (bool graph : {false, true}) {
        auto run = make_run(ps, 3, 900);
        run.graph = graph;
        run.sum_momentum = sum;
        run.nesterov = nesterov;
        const auto ref = reference_optimizer(ps, run);
        const double err = worst_param_error(muon_cuda_test::run_optimizer(ps, run), ref, ps);
        INFO("sum " << sum << " nesterov " << nesterov << " graph " << graph << ": " << err);
        CHECK(err <= 1e-3);
        run.ns_f32 = false;
        const double err16 = worst_param_error(muon_cuda_test::run_optimizer(ps, run), ref, ps);
        INFO("bf16 NS: " << err16);
        CHECK(err16 <= 5e-2);
      }
  auto run = make_run(ps, 4, 1700);
  run.save_after = 2;
  const auto ref = reference_optimizer(ps, run);
  CHECK(worst_param_error(muon_cuda_test::run_optimizer(ps, run), ref, ps) <= 1e-3);
  run.graph = true;
  CHECK(worst_param_error(muon_cuda_test::run_optimizer(ps, run), ref, ps) <= 1e-3);
}
