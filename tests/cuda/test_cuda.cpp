// SPDX-License-Identifier: MIT
// CUDA backend tests: device results against the CPU backend in double
// (muon::orthogonalize), error paths, graph capture vs eager, the device
// optimizer against a double-precision reference. The tests tagged [device]
// need a GPU: ctest runs them as test_cuda_device, reported as skipped when
// no device is present; the [host] ones run everywhere.
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
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <muon/extern_templates.hpp>  // the heavy templates: compiled once
#include <muon/muon.hpp>

#include "catch.hpp"
#include "harness.hpp"

namespace {

using muon_cuda_test::Dtype;

// Device tests are registered as the ctest entry test_cuda_device, run only
// when muon_cuda_probe finds a device (ctest reports "Skipped" otherwise); run
// directly without one, each skips itself.
#define MUON_REQUIRE_DEVICE()                                                     \
  do {                                                                            \
    if (!muon_cuda_test::device_present()) MUON_SKIP("no CUDA device: skipping"); \
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

TEST_CASE("cuda: errors are muon::Error naming the call and the code (no device needed)",
          "[cuda][host]") {
  const std::string c = muon_cuda_test::cuda_error_message();
  CHECK(c.find("cudaMemcpyAsync") != std::string::npos);
  CHECK(c.find("cudaErrorInvalidValue") != std::string::npos);
  const std::string b = muon_cuda_test::cublas_error_message();
  CHECK(b.find("cublasGemmEx") != std::string::npos);
  CHECK(b.find("CUBLAS_STATUS_INVALID_VALUE") != std::string::npos);
}

TEST_CASE("cuda: Workspace::check names the broken field (no device needed)", "[cuda][host]") {
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
  CHECK(workspace_check("gram").rfind("options.method: NsMethod::gram is not implemented", 0) == 0);
  CHECK(workspace_check("in_float_sparse").rfind("in_float: must be dense", 0) == 0);
  // AOL normalization (Turbo-Muon) runs on the device; its Gram form does not.
  CHECK(workspace_check("aol").empty());
  CHECK(workspace_check("aol_gram").rfind("options.method: NsMethod::gram is not implemented", 0) ==
        0);
}

TEST_CASE("cuda: optimizer argument errors (no device needed)", "[cuda][host]") {
  using muon_cuda_test::optimizer_error;
  CHECK(optimizer_error("ok").empty());
  CHECK(optimizer_error("duplicate").find("name: a parameter named 'w' is already registered") !=
        std::string::npos);
  CHECK(optimizer_error("null").find("param: 'v' has a null device pointer") != std::string::npos);
  CHECK(optimizer_error("shape").find("shape: 'v' is empty") != std::string::npos);
  CHECK(optimizer_error("dims").find("at most 4 dimensions") != std::string::npos);
  CHECK(optimizer_error("bad_magic").find("checkpoint stream: not a muon checkpoint") !=
        std::string::npos);
  CHECK(optimizer_error("options").find("momentum:") != std::string::npos);
  // The CUDA backend runs the standard iteration only: the Gram form is
  // refused when the options are set, before anything runs.
  CHECK(optimizer_error("gram").find("ns_method: NsMethod::gram is not implemented") !=
        std::string::npos);
  CHECK(optimizer_error("set_gram").find("NsMethod::gram is not implemented") != std::string::npos);
  // NsNormalization::aol passes the device optimizer's checks (its Newton-
  // Schulz runs the shared loop, which calls Workspace::normalize_aol).
  CHECK(optimizer_error("aol").empty());
  CHECK(optimizer_error("set_normalization").find("ns_normalization: unknown value 'spectral'") !=
        std::string::npos);
}

namespace {

using muon_cuda_test::OptParam;

OptParam param(const char* name, std::vector<std::int64_t> shape,
               muon::Route route = muon::Route::automatic, std::size_t group = 0,
               std::vector<std::ptrdiff_t> split = {}, bool col_major = false) {
  OptParam q;
  q.name = name;
  q.shape = std::move(shape);
  q.route = route;
  q.group = group;
  q.split = std::move(split);
  q.col_major = col_major;
  std::int64_t n = 1;
  for (std::int64_t d : q.shape) n *= d;
  q.value.assign(static_cast<std::size_t>(n), 0.5f);
  return q;
}

// The same registrations on the CPU optimizer.
muon::RoutingReport cpu_routing(const std::vector<OptParam>& params,
                                const muon::MuonGroupOptions& o,
                                const muon::RoutingRules* rules = nullptr) {
  static std::vector<float> bank(1 << 23, 0.5f);
  muon::Optimizer<float> opt(o);
  opt.add_group(o);
  if (rules) opt.set_routing_rules(*rules);
  std::size_t offset = 0;  // memory of its own for each (shared memory is refused)
  for (const auto& q : params) {
    muon::ParamView<float> v;
    v.data = bank.data() + offset;
    offset += q.value.size();
    v.ndim = static_cast<int>(q.shape.size());
    for (std::size_t d = 0; d < q.shape.size(); ++d) v.shape[d] = q.shape[d];
    v.column_major = q.col_major;
    muon::ParamOptions po;
    po.route = q.route;
    po.group = q.group;
    po.split = q.split;
    opt.add_param(q.name, v, v, po);
  }
  return opt.routing();
}

std::vector<OptParam> gpt_like() {
  using muon::Route;
  return {param("h.0.attn.c_attn.weight", {2304, 768}, Route::automatic, 0, {768, 768, 768}),
          param("h.0.mlp.c_proj.weight", {768, 3072}),
          param("h.0.ln_1.bias", {768}),
          param("temperature", {}),
          param("conv.weight", {64, 3, 3, 3}),
          param("experts", {4, 96, 32}, Route::automatic, 1),
          param("transformer.WTE.weight", {500, 64}),
          param("lm_head.weight", {500, 64}),
          param("eigen.weight", {96, 24}, Route::automatic, 0, {}, true),
          param("embed.forced", {32, 8}, Route::muon),
          param("fc.forced", {16, 8}, Route::adamw, 1),
          param("norm.forced", {8}, Route::muon)};
}

}  // namespace

TEST_CASE(
    "cuda: the device optimizer registers and routes like the CPU optimizer (no device needed)",
    "[cuda][host]") {
  const auto specs = gpt_like();
  for (muon::LrAdjust rule : {muon::LrAdjust::original, muon::LrAdjust::match_rms_adamw,
                              muon::LrAdjust::spectral, muon::LrAdjust::none}) {
    INFO(muon::lr_adjust_name(rule));
    const muon::MuonGroupOptions o = muon::MuonGroupOptions().with_adjust_lr(rule);
    const auto dev = muon_cuda_test::device_routing(specs, o);
    const muon::RoutingReport cpu = cpu_routing(specs, o);
    REQUIRE(dev.size == specs.size());
    REQUIRE(dev.report.entries.size() == cpu.entries.size());
    for (std::size_t k = 0; k < specs.size(); ++k) {
      const auto& d = dev.report.entries[k];
      const auto& c = cpu.entries[k];
      INFO(specs[k].name << ": " << d.reason);
      CHECK(d.name == c.name);
      CHECK(d.route == c.route);
      CHECK(dev.routes[k] == c.route);
      CHECK(d.reason == c.reason);
      CHECK(d.shape == c.shape);
      CHECK(d.rows == c.rows);
      CHECK(d.cols == c.cols);
      CHECK(d.group == c.group);
      CHECK(d.lr_scale == c.lr_scale);
    }
  }
  const auto dev = muon_cuda_test::device_routing(specs, muon::MuonGroupOptions());
  CHECK(dev.report.at("h.0.attn.c_attn.weight").reason.find("split into 3") != std::string::npos);
  CHECK(dev.report.at("eigen.weight").lr_scale == 2.0);  // logical (96, 24)
  CHECK(dev.missing_error.find("name: no parameter named 'missin'") != std::string::npos);
  muon::RoutingRules rules;
  rules.adamw_name_patterns = {"Router"};
  const std::vector<OptParam> moe = {param("moe.router.weight", {8, 16}),
                                     param("lm_head.weight", {8, 16})};
  const auto custom = muon_cuda_test::device_routing(moe, muon::MuonGroupOptions(), &rules);
  CHECK(custom.routes[0] == muon::Route::adamw);
  CHECK(custom.routes[1] == muon::Route::muon);
}

TEST_CASE(
    "cuda: the device optimizer loads the one checkpoint format, checks before it allocates "
    "(no device needed)",
    "[cuda][host]") {
  // A CPU optimizer's checkpoint, with the same registrations.
  const std::vector<OptParam> specs = {
      param("w", {4, 3}), param("qkv", {6, 3}, muon::Route::muon, 0, {2, 2, 2}), param("b", {4})};
  std::vector<float> w(12, 0.5f), gw(12, 0.1f), qkv(18, 0.25f), gq(18, 0.2f), b(4, 0.5f),
      gb(4, 1.0f);
  for (std::size_t i = 0; i < gw.size(); ++i) gw[i] = 0.1f * float(i % 5) - 0.2f;
  for (std::size_t i = 0; i < gq.size(); ++i) gq[i] = 0.05f * float(i % 7) - 0.1f;
  muon::Optimizer<float> cpu(muon::MuonGroupOptions().with_lr(0.05));
  cpu.add_param("w", {w.data(), {4, 3}}, {gw.data(), {4, 3}});
  muon::ParamOptions po;
  po.route = muon::Route::muon;
  po.split = {2, 2, 2};
  cpu.add_param("qkv", {qkv.data(), {6, 3}}, {gq.data(), {6, 3}}, po);
  cpu.add_param("b", {b.data(), {4}}, {gb.data(), {4}});
  cpu.step();
  cpu.step();
  std::ostringstream os;
  cpu.save(os);
  const auto r = muon_cuda_test::device_load(os.str(), specs);
  if (!muon_cuda_test::device_present()) {
    // Parsing and matching succeeded; the first device allocation failed,
    // and that too leaves the optimizer as it was.
    INFO(r.error);
    CHECK(r.error.find("allocation") != std::string::npos);
    CHECK(r.unchanged);
    CHECK(r.lr == 0.3);
  } else {
    CHECK(r.error.empty());
    CHECK(r.lr == 0.05);
    CHECK(r.steps == 2);
    CHECK(r.resaved == os.str());  // the device writes what the CPU wrote
  }
  // A mismatch is found before any allocation, and named.
  std::vector<OptParam> other = specs;
  other[1].split = {3, 3};
  const auto bad = muon_cuda_test::device_load(os.str(), other);
  CHECK(bad.error.find("parameter 'qkv': split differs") != std::string::npos);
  CHECK(bad.unchanged);
  // A double optimizer's checkpoint holds float64 buffers: named as such.
  std::vector<double> wd(12, 0.5), qd(18, 0.5), bd(4, 0.5);
  muon::Optimizer<double> cpu64;
  cpu64.add_param("w", {wd.data(), {4, 3}}, {wd.data(), {4, 3}});
  cpu64.add_param("qkv", {qd.data(), {6, 3}}, {qd.data(), {6, 3}}, po);
  cpu64.add_param("b", {bd.data(), {4}}, {bd.data(), {4}});
  std::ostringstream os64;
  cpu64.save(os64);
  const auto f64 = muon_cuda_test::device_load(os64.str(), specs);
  CHECK(f64.error.find("holds float64 buffers, this optimizer keeps float32 buffers") !=
        std::string::npos);
}

TEST_CASE("cuda: tiled kernels emulated on the host agree with plain loops (no device needed)",
          "[cuda][host]") {
  CHECK(muon_cuda_test::emulate_tiled_kernels() == "");
}

TEST_CASE(
    "cuda: the AOL kernels, emulated on the host, follow the definition (factors, scalings, "
    "zero rows, non-finite flags; no device needed)",
    "[cuda][host][aol]") {
  CHECK(muon_cuda_test::emulate_aol_kernels() == "");
}

TEST_CASE(
    "cuda: the NorMuon and AdaMuon kernels, emulated on the host, follow the CPU optimizer's "
    "formulas (no device needed)",
    "[cuda][host]") {
  CHECK(muon_cuda_test::emulate_variant_kernels() == "");
}

TEST_CASE(
    "cuda: the step's check and commit kernels, emulated on the host, follow the formulas to the "
    "bit (flags, update bound, verdict, normalization scale; no device needed)",
    "[cuda][host]") {
  CHECK(muon_cuda_test::emulate_step_kernels() == "");
}

TEST_CASE("cuda: variant options of the device optimizer (no device needed)", "[cuda][host]") {
  using muon_cuda_test::optimizer_error;
  // Before the first step a change of variant is options only: no CUDA call.
  CHECK(optimizer_error("variant").empty());
  CHECK(optimizer_error("variant_name").find("variant") != std::string::npos);
  CHECK(optimizer_error("variant_options").find("normuon_beta2") != std::string::npos);
}

TEST_CASE(
    "cuda: the device optimizer loads NorMuon and AdaMuon checkpoints, its buffers following the "
    "file's variant (no device needed)",
    "[cuda][host]") {
  const std::vector<OptParam> specs = {param("w", {4, 3}),
                                       param("qkv", {6, 3}, muon::Route::muon, 0, {2, 2, 2}),
                                       param("x", {3, 5}), param("b", {4})};
  for (muon::MuonVariant variant : {muon::MuonVariant::normuon, muon::MuonVariant::adamuon}) {
    INFO(muon::muon_variant_name(variant));
    std::vector<float> w(12, 0.5f), gw(12), qkv(18, 0.25f), gq(18), x(15, -0.5f), gx(15),
        b(4, 0.5f), gb(4, 1.0f);
    for (std::size_t i = 0; i < gw.size(); ++i) gw[i] = 0.1f * float(i % 5) - 0.2f;
    for (std::size_t i = 0; i < gq.size(); ++i) gq[i] = 0.05f * float(i % 7) - 0.1f;
    for (std::size_t i = 0; i < gx.size(); ++i) gx[i] = 0.03f * float(i % 4) - 0.05f;
    muon::Optimizer<float> cpu(muon::MuonGroupOptions().with_lr(0.05).with_variant(variant));
    cpu.add_param("w", {w.data(), {4, 3}}, {gw.data(), {4, 3}});
    muon::ParamOptions po;
    po.route = muon::Route::muon;
    po.split = {2, 2, 2};
    cpu.add_param("qkv", {qkv.data(), {6, 3}}, {gq.data(), {6, 3}}, po);
    cpu.add_param("x", {x.data(), {3, 5}}, {gx.data(), {3, 5}});
    cpu.add_param("b", {b.data(), {4}}, {gb.data(), {4}});
    cpu.step();
    cpu.step();
    std::ostringstream os;
    cpu.save(os);
    // The device optimizer is plain Muon: the file's group makes it the variant.
    const auto r = muon_cuda_test::device_load(os.str(), specs);
    if (!muon_cuda_test::device_present()) {
      INFO(r.error);
      CHECK(r.error.find("allocation") != std::string::npos);  // matched, then no device
      CHECK(r.unchanged);
    } else {
      CHECK(r.error.empty());
      CHECK(r.lr == 0.05);
      CHECK(r.steps == 2);
      CHECK(r.resaved == os.str());  // the device writes what the CPU wrote
    }
  }
}

TEST_CASE("cuda: device Newton-Schulz matches the CPU backend for every schedule and shape",
          "[cuda][device]") {
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

TEST_CASE("cuda: eps modes, norm divisor and step counts match the CPU backend", "[cuda][device]") {
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

TEST_CASE("cuda: padded leading dimensions, reuse and graph replay equal eager", "[cuda][device]") {
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

TEST_CASE("cuda: the automatic lower-triangle tiling (m >= 1536) equals the untiled products",
          "[cuda][device]") {
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

TEST_CASE("cuda: NaN/Inf input throws naming the input and leaves the output untouched",
          "[cuda][device]") {
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

// ---- AOL normalization (Turbo-Muon) on the device -------------------------------

TEST_CASE("cuda: AOL normalization (Turbo-Muon) matches the CPU backend for every shape class",
          "[cuda][device][aol]") {
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
  const Dtype types[] = {Dtype::f32, Dtype::f16, Dtype::bf16};
  const muon::NewtonSchulzOptions o = muon::NewtonSchulzOptions::turbo_muon();
  std::uint64_t seed = 5000;
  for (const auto& sc : shapes)
    for (Dtype t : types)
      for (bool from_float : {false, true}) {
        std::vector<Eigen::MatrixXd> in;
        for (Eigen::Index z = 0; z < sc.batch; ++z)
          in.push_back(spread(sc.rows, sc.cols, ++seed, 3.0));
        muon_cuda_test::RunMode mode;
        mode.tile = sc.tile;
        mode.from_float = from_float;
        const auto dev =
            muon_cuda_test::orthogonalize(flat(in), sc.rows, sc.cols, sc.batch, t, o, mode);
        const double err = worst_relative_error(dev, in, o);
        INFO(sc.label << " " << sc.rows << "x" << sc.cols << " batch " << sc.batch << ", "
                      << name(t) << (from_float ? ", float input" : "") << ", seed " << seed
                      << ": relative error " << err);
        CHECK(err <= tolerance(t));
      }
}

TEST_CASE("cuda: AOL normalization with 0, 1 and 6 steps, other schedules, explicit standard form",
          "[cuda][device][aol]") {
  MUON_REQUIRE_DEVICE();
  const std::vector<Eigen::MatrixXd> in{spread(24, 56, 91, 0.5), spread(24, 56, 92, 40.0)};
  for (int steps : {0, 1, 6})
    for (const char* sched : {"jordan", "quintic"}) {
      muon::NewtonSchulzOptions o(muon::Schedule::by_name(sched), steps);
      o.with_normalization(muon::NsNormalization::aol).with_method(muon::NsMethod::standard);
      const auto dev = muon_cuda_test::orthogonalize(flat(in), 24, 56, 2, Dtype::f32, o);
      const double err = worst_relative_error(dev, in, o);
      INFO(sched << ", steps " << steps << ": " << err);
      CHECK(err <= tolerance(Dtype::f32));
    }
}

TEST_CASE("cuda: AOL normalization above the tiling threshold (m >= 1536)", "[cuda][device][aol]") {
  MUON_REQUIRE_DEVICE();
  // 1700 x 1600 (tall: transposed, m = 1600, 2 x 2 tiles of 832): tiled
  // equals untiled in float; both types against the CPU backend in double.
  const std::vector<Eigen::MatrixXd> in{spread(1700, 1600, 4343, 2.0)};
  const muon::NewtonSchulzOptions o = muon::NewtonSchulzOptions::turbo_muon();
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
  const Eigen::MatrixXd ref = muon::orthogonalize(in[0], o);
  tiled.from_float = true;
  for (Dtype t : {Dtype::f32, Dtype::bf16}) {
    const auto dev = muon_cuda_test::orthogonalize(flat(in), 1700, 1600, 1, t, o, tiled);
    const Eigen::Map<const Eigen::MatrixXd> d(dev.data(), 1700, 1600);
    const double err = (d - ref).norm() / ref.norm();
    INFO(name(t) << ": relative error " << err);
    CHECK(err <= tolerance(t));
  }
}

TEST_CASE("cuda: AOL normalization of a zero matrix and of a zero row", "[cuda][device][aol]") {
  MUON_REQUIRE_DEVICE();
  const muon::NewtonSchulzOptions o = muon::NewtonSchulzOptions::turbo_muon();
  for (bool tall : {false, true})
    for (Dtype t : {Dtype::f32, Dtype::bf16})
      for (bool from_float : {false, true}) {
        // Matrix 0 is zero; matrix 1 has a zero row of the wide X (a zero row
        // of a wide input, a zero column of a tall one): s = 0 there, so that
        // row of the result is zero and the rest follows the CPU backend.
        const Eigen::Index rows = tall ? 90 : 30, cols = tall ? 30 : 90;
        std::vector<Eigen::MatrixXd> in{Eigen::MatrixXd::Zero(rows, cols),
                                        spread(rows, cols, 321, 1.5)};
        if (tall)
          in[1].col(7).setZero();
        else
          in[1].row(7).setZero();
        muon_cuda_test::RunMode mode;
        mode.from_float = from_float;
        const auto dev = muon_cuda_test::orthogonalize(flat(in), rows, cols, 2, t, o, mode);
        INFO((tall ? "tall" : "wide") << ", " << name(t) << (from_float ? ", float input" : ""));
        const std::size_t size = static_cast<std::size_t>(rows * cols);
        for (std::size_t k = 0; k < size; ++k) CHECK(dev[k] == 0.0);
        const Eigen::Map<const Eigen::MatrixXd> d(dev.data() + size, rows, cols);
        CHECK((tall ? d.col(7).norm() : d.row(7).norm()) == 0.0);
        const Eigen::MatrixXd ref = muon::orthogonalize(in[1], o);
        CHECK((d - ref).norm() / ref.norm() <= tolerance(t));
      }
}

TEST_CASE(
    "cuda: AOL normalization: NaN/Inf named, huge finite input scale-invariant, replays equal",
    "[cuda][device][aol]") {
  MUON_REQUIRE_DEVICE();
  const muon::NewtonSchulzOptions o = muon::NewtonSchulzOptions::turbo_muon();
  // NaN and Inf flag the matrix as under Frobenius normalization.
  std::vector<float> in(6 * 9, 0.5f);
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity()}) {
    in[13] = bad;
    std::vector<float> out;
    bool threw = false;
    try {
      muon_cuda_test::orthogonalize_checked(in, 6, 9, out, 7.0f, o);
    } catch (const muon::Error& e) {
      threw = true;
      CHECK(std::string(e.what()).find("in: matrix 0 contains NaN or Inf") != std::string::npos);
    }
    CHECK(threw);
    REQUIRE(out.size() == in.size());
    for (float v : out) CHECK(v == 7.0f);
  }
  // Entries near 1e30: X X^T would overflow float; X is divided by its norm
  // first (AOL is scale-invariant), so the result is the CPU's.
  const Eigen::MatrixXd x = spread(6, 9, 55, 1.0);
  for (std::size_t k = 0; k < in.size(); ++k) in[k] = static_cast<float>(1e30 * x.data()[k]);
  std::vector<float> out;
  REQUIRE_NOTHROW(muon_cuda_test::orthogonalize_checked(in, 6, 9, out, 7.0f, o));
  const Eigen::MatrixXd ref = muon::orthogonalize(x, o);
  const Eigen::Map<const Eigen::MatrixXf> d(out.data(), 6, 9);
  CHECK((d.cast<double>() - ref).norm() / ref.norm() <= tolerance(Dtype::f32));
  // Deterministic and capturable: reuse and graph replay equal eager.
  for (bool tiled : {false, true}) {
    const std::vector<Eigen::MatrixXd> batch{spread(70, 50, 15, 2.0), spread(70, 50, 16, 2.0)};
    muon_cuda_test::RunMode eager;
    eager.tile = tiled ? 16 : 0;
    muon_cuda_test::RunMode reused = eager;
    reused.reuse = true;
    muon_cuda_test::RunMode graph = eager;
    graph.graph = true;
    const auto a = muon_cuda_test::orthogonalize(flat(batch), 70, 50, 2, Dtype::bf16, o, eager);
    const auto b = muon_cuda_test::orthogonalize(flat(batch), 70, 50, 2, Dtype::bf16, o, reused);
    const auto c = muon_cuda_test::orthogonalize(flat(batch), 70, 50, 2, Dtype::bf16, o, graph);
    double db = 0, dc = 0;
    for (std::size_t k = 0; k < a.size(); ++k) {
      db = std::max(db, std::abs(a[k] - b[k]));
      dc = std::max(dc, std::abs(a[k] - c[k]));
    }
    INFO("tiled " << tiled << ": reused vs eager " << db << ", graph vs eager " << dc);
    CHECK(db == 0.0);
    CHECK(dc == 0.0);
    CHECK(worst_relative_error(a, batch, o) <= tolerance(Dtype::bf16));
  }
}

namespace {

// The run on the CPU optimizer, the reference for the device's: same
// registrations, options, gradients. The CPU optimizer is itself checked
// against double references written in tests/ (test_optimizer.cpp).
// A CPU optimizer with the run's options and the registrations of `ps`,
// over the host tensors p and g.
std::unique_ptr<muon::Optimizer<float>> cpu_optimizer(const std::vector<OptParam>& ps,
                                                      const muon_cuda_test::OptRun& run,
                                                      std::vector<std::vector<float>>& p,
                                                      std::vector<std::vector<float>>& g) {
  for (const auto& q : ps) {
    p.push_back(q.value);
    g.emplace_back(q.value.size());
  }
  auto opt = std::make_unique<muon::Optimizer<float>>(run.muon, run.adamw);
  for (std::size_t k = 1; k < run.groups; ++k) opt->add_group(run.muon, run.adamw);
  opt->set_non_finite_policy(run.policy);
  for (std::size_t k = 0; k < ps.size(); ++k) {
    muon::ParamView<float> pv, gv;
    pv.data = p[k].data();
    gv.data = g[k].data();
    pv.ndim = gv.ndim = static_cast<int>(ps[k].shape.size());
    for (std::size_t d = 0; d < ps[k].shape.size(); ++d) pv.shape[d] = gv.shape[d] = ps[k].shape[d];
    pv.column_major = gv.column_major = ps[k].col_major;
    muon::ParamOptions po;
    po.route = ps[k].route;
    po.group = ps[k].group;
    po.split = ps[k].split;
    opt->add_param(ps[k].name, pv, gv, po);
  }
  return opt;
}

muon_cuda_test::OptResult cpu_run(const std::vector<OptParam>& ps,
                                  const muon_cuda_test::OptRun& run) {
  std::vector<std::vector<float>> p, g;
  const auto owner = cpu_optimizer(ps, run, p, g);
  muon::Optimizer<float>& opt = *owner;
  if (!run.load.empty()) {
    std::istringstream in(run.load);
    opt.load(in);
  }
  muon_cuda_test::OptResult r;
  for (int s = 0; s < run.steps; ++s) {
    for (std::size_t k = 0; k < ps.size(); ++k) g[k] = run.grads[std::size_t(s)][k];
    muon_cuda_test::StepOutcome o;
    try {
      const auto& rep = opt.step();
      o.updated = rep.updated;
      for (const auto& sk : rep.skipped) o.skipped.emplace_back(std::string(sk.name), sk.reason);
    } catch (const muon::Error& e) {
      o.error = e.what();
    }
    r.steps.push_back(o);
    if (run.clip_after == s + 1)
      for (const auto& c : run.clips) opt.qk_clip(c.heads, c.maxima, c.options);
    if (run.switch_after == s + 1)  // what set_option("variant", ...) does too
      for (std::size_t k = 0; k < run.groups; ++k) opt.set_muon_options(run.switch_to, k);
  }
  r.params = p;
  r.step_count = opt.step_count();
  std::ostringstream os;
  opt.save(os);
  r.saved = os.str();
  return r;
}

std::vector<OptParam> mixed_params(std::uint64_t seed) {
  using muon::Route;
  std::vector<OptParam> ps = {param("a.weight", {48, 32}),
                              param("b.weight", {48, 32}, Route::automatic, 1),  // other group
                              param("c.weight", {48, 32}),                       // batched with a
                              param("qkv.weight", {60, 20}, Route::automatic, 0, {20, 20, 20}),
                              param("experts", {3, 16, 24}),
                              param("col.weight", {20, 64}, Route::automatic, 0, {}, true),
                              param("a.bias", {48}),
                              param("wte.weight", {50, 16})};
  for (auto& q : ps) {
    const Eigen::MatrixXd v = 0.1 * gaussian(Eigen::Index(q.value.size()), 1, ++seed);
    q.value.assign(v.data(), v.data() + v.size());
  }
  return ps;
}

muon_cuda_test::OptRun make_run(const std::vector<OptParam>& ps, int steps, std::uint64_t seed) {
  muon_cuda_test::OptRun run;
  run.steps = steps;
  run.groups = 2;
  run.muon.with_lr(0.02).with_weight_decay(0.1);
  run.adamw.lr = 1e-3;
  for (int s = 0; s < steps; ++s) {
    std::vector<std::vector<float>> gs;
    for (const auto& q : ps) {
      const Eigen::MatrixXd g =
          gaussian(Eigen::Index(q.value.size()), 1, seed + 100 * s + gs.size());
      gs.emplace_back(g.data(), g.data() + g.size());
    }
    run.grads.push_back(gs);
  }
  return run;
}

// max over parameters of ||dev - cpu|| / ||cpu - init||: the error relative
// to how far the parameters moved.
double worst_param_error(const std::vector<std::vector<float>>& dev,
                         const std::vector<std::vector<float>>& cpu,
                         const std::vector<OptParam>& init) {
  double worst = 0;
  for (std::size_t k = 0; k < dev.size(); ++k) {
    double diff = 0, moved = 0;
    for (std::size_t i = 0; i < dev[k].size(); ++i) {
      diff += double(dev[k][i] - cpu[k][i]) * double(dev[k][i] - cpu[k][i]);
      moved += double(cpu[k][i] - init[k].value[i]) * double(cpu[k][i] - init[k].value[i]);
    }
    worst = std::max(worst, std::sqrt(diff / moved));
  }
  return worst;
}

}  // namespace

TEST_CASE(
    "cuda: the device optimizer follows the CPU optimizer (eager, graph, save/load, groups, "
    "splits, batches, column-major)",
    "[cuda][device]") {
  MUON_REQUIRE_DEVICE();
  const auto ps = mixed_params(42);
  for (bool sum : {false, true})
    for (bool nesterov : {true, false})
      for (bool graph : {false, true}) {
        auto run = make_run(ps, 3, 900);
        run.graph = graph;
        run.muon.with_momentum_kind(sum ? muon::MomentumKind::sum : muon::MomentumKind::ema);
        run.muon.with_nesterov(nesterov);
        const auto cpu = cpu_run(ps, run);
        const auto dev = muon_cuda_test::run_optimizer(ps, run);
        const double err = worst_param_error(dev.params, cpu.params, ps);
        INFO("sum " << sum << " nesterov " << nesterov << " graph " << graph << ": " << err);
        CHECK(err <= 1e-3);
        CHECK(dev.step_count == 3);
        run.ns_f32 = false;
        const double err16 =
            worst_param_error(muon_cuda_test::run_optimizer(ps, run).params, cpu.params, ps);
        INFO("bf16 NS: " << err16);
        CHECK(err16 <= 5e-2);
      }
  auto run = make_run(ps, 4, 1700);
  run.save_after = 2;
  const auto cpu = cpu_run(ps, run);
  CHECK(worst_param_error(muon_cuda_test::run_optimizer(ps, run).params, cpu.params, ps) <= 1e-3);
  run.graph = true;
  CHECK(worst_param_error(muon_cuda_test::run_optimizer(ps, run).params, cpu.params, ps) <= 1e-3);
}

TEST_CASE("cuda: the device optimizer runs Turbo-Muon's AOL normalization like the CPU optimizer",
          "[cuda][device][aol]") {
  MUON_REQUIRE_DEVICE();
  const auto ps = mixed_params(64);
  for (bool graph : {false, true}) {
    auto run = make_run(ps, 3, 2500);
    run.graph = graph;
    run.muon.ns = muon::NewtonSchulzOptions::turbo_muon();
    const auto cpu = cpu_run(ps, run);
    const auto dev = muon_cuda_test::run_optimizer(ps, run);
    const double err = worst_param_error(dev.params, cpu.params, ps);
    INFO("graph " << graph << ": " << err);
    CHECK(err <= 1e-3);
    CHECK(dev.step_count == 3);
    run.ns_f32 = false;
    const double err16 =
        worst_param_error(muon_cuda_test::run_optimizer(ps, run).params, cpu.params, ps);
    INFO("bf16 NS: " << err16);
    CHECK(err16 <= 5e-2);
  }
}

TEST_CASE("cuda: checkpoints cross backends: CPU to device to CPU", "[cuda][device]") {
  MUON_REQUIRE_DEVICE();
  const auto ps = mixed_params(7);
  auto first = make_run(ps, 2, 300);
  const auto cpu_first = cpu_run(ps, first);
  // The device resumes from the CPU's checkpoint (and the CPU's parameters).
  auto second = make_run(ps, 2, 500);
  second.load = cpu_first.saved;
  std::vector<OptParam> resumed = ps;
  for (std::size_t k = 0; k < ps.size(); ++k) resumed[k].value = cpu_first.params[k];
  const auto dev = muon_cuda_test::run_optimizer(resumed, second);
  const auto cpu = cpu_run(resumed, second);
  CHECK(worst_param_error(dev.params, cpu.params, resumed) <= 1e-3);
  CHECK(dev.step_count == 4);
  // The device's checkpoint loads into the CPU optimizer.
  auto third = make_run(ps, 0, 0);
  third.load = dev.saved;
  CHECK_NOTHROW(cpu_run(resumed, third));
}

TEST_CASE("cuda: a device step applies to every parameter or to none", "[cuda][device]") {
  MUON_REQUIRE_DEVICE();
  const auto ps = mixed_params(11);
  auto run = make_run(ps, 3, 2100);
  // Step 2 overflows c.weight's momentum (+-FLT_MAX on successive steps).
  const float big = std::numeric_limits<float>::max();
  std::fill(run.grads[0][2].begin(), run.grads[0][2].end(), big);
  std::fill(run.grads[1][2].begin(), run.grads[1][2].end(), -big);
  const auto dev = muon_cuda_test::run_optimizer(ps, run);
  const auto cpu = cpu_run(ps, run);
  REQUIRE(dev.steps.size() == 3);
  INFO(dev.steps[1].error);
  CHECK(dev.steps[1].error.find("'c.weight': its momentum would overflow float") !=
        std::string::npos);
  CHECK(cpu.steps[1].error.find("'c.weight': its momentum would overflow float") !=
        std::string::npos);
  CHECK(dev.step_count == cpu.step_count);
  CHECK(worst_param_error(dev.params, cpu.params, ps) <= 1e-3);
  // Skip: only c.weight is left alone, on both backends.
  run.policy = muon::NonFinitePolicy::skip;
  const auto dev_skip = muon_cuda_test::run_optimizer(ps, run);
  const auto cpu_skip = cpu_run(ps, run);
  REQUIRE(dev_skip.steps[1].skipped.size() == 1);
  CHECK(dev_skip.steps[1].skipped[0].first == "c.weight");
  CHECK(dev_skip.steps[1].skipped[0].second == muon::SkipReason::non_finite_state);
  CHECK(dev_skip.steps[1].updated == ps.size() - 1);
  CHECK(worst_param_error(dev_skip.params, cpu_skip.params, ps) <= 1e-3);
}

// ---- the Muon variants and the l2 form on the device ---------------------------

namespace {

// mixed_params (tall, two groups, a batch of two, a split into square
// blocks, a 3-D batch of wide blocks, a column-major matrix, AdamW
// parameters) and a wide row-major matrix: NorMuon's V runs per row in some
// blocks and per column in others.
std::vector<OptParam> family_params(std::uint64_t seed) {
  std::vector<OptParam> ps = mixed_params(seed);
  OptParam wide = param("wide.weight", {24, 56});
  const Eigen::MatrixXd v = 0.1 * gaussian(Eigen::Index(wide.value.size()), 1, seed + 99);
  wide.value.assign(v.data(), v.data() + v.size());
  ps.push_back(wide);
  return ps;
}

// The options of a variant for the comparisons. AdaMuon's first step
// divides O by sqrt(O^2) + eps, a sign function where eps is negligible:
// an entry of O within rounding of 0 could take opposite signs on the two
// backends. eps = 1e-3 keeps the direction continuous at the scale of the
// two backends' differences (the paper's 1e-8 is tested on the host, with
// the kernels' functions).
muon::MuonGroupOptions variant_options(muon::MuonVariant v) {
  muon::MuonGroupOptions o = v == muon::MuonVariant::adamuon ? muon::MuonGroupOptions::adamuon()
                                                             : muon::MuonGroupOptions();
  o.with_variant(v).with_lr(0.02).with_weight_decay(0.1);
  o.adamuon_eps = 1e-3;
  return o;
}

muon_cuda_test::OptRun variant_run(const std::vector<OptParam>& ps, int steps, std::uint64_t seed,
                                   muon::MuonVariant v) {
  muon_cuda_test::OptRun run = make_run(ps, steps, seed);
  run.muon = variant_options(v);
  return run;
}

// The worst relative Frobenius difference between the buffers of two
// checkpoints of the registrations `ps` (momentum and the variant's second
// moment of every Muon parameter, both AdamW moments), each loaded into a
// CPU optimizer.
double state_error(const std::vector<OptParam>& ps, const muon_cuda_test::OptRun& run,
                   const std::string& a, const std::string& b) {
  std::vector<std::vector<float>> pa, ga, pb, gb;
  const auto oa = cpu_optimizer(ps, run, pa, ga), ob = cpu_optimizer(ps, run, pb, gb);
  std::istringstream ia(a), ib(b);
  oa->load(ia);
  ob->load(ib);
  double worst = 0;
  const auto compare = [&worst](const Eigen::MatrixXf& x, const Eigen::MatrixXf& y) {
    REQUIRE(x.size() == y.size());
    const double norm = y.cast<double>().norm();
    const double diff = (x - y).cast<double>().norm();
    worst = std::max(worst, norm > 0 ? diff / norm : diff);
  };
  for (const auto& q : ps) {
    INFO(q.name);
    if (oa->route(q.name) == muon::Route::muon) {
      compare(oa->momentum_buffer(q.name), ob->momentum_buffer(q.name));
      if (oa->muon_options(q.group).variant != muon::MuonVariant::muon)
        compare(oa->second_moment(q.name), ob->second_moment(q.name));
    } else {
      compare(oa->exp_avg(q.name), ob->exp_avg(q.name));
      compare(oa->exp_avg_sq(q.name), ob->exp_avg_sq(q.name));
    }
  }
  return worst;
}

}  // namespace

TEST_CASE(
    "cuda: NorMuon and AdaMuon on the device follow the CPU optimizer (eager, graph, save/load "
    "midway; wide, tall, split, 3-D batch, column-major)",
    "[cuda][device]") {
  MUON_REQUIRE_DEVICE();
  const auto ps = family_params(61);
  for (muon::MuonVariant v : {muon::MuonVariant::normuon, muon::MuonVariant::adamuon})
    for (bool graph : {false, true}) {
      auto run = variant_run(ps, 4, 6100, v);
      run.graph = graph;
      const auto cpu = cpu_run(ps, run);
      const auto dev = muon_cuda_test::run_optimizer(ps, run);
      const double err = worst_param_error(dev.params, cpu.params, ps);
      const double state = state_error(ps, run, dev.saved, cpu.saved);
      INFO(muon::muon_variant_name(v)
           << " graph " << graph << ": parameters " << err << ", state " << state);
      CHECK(err <= 1e-3);
      CHECK(state <= 1e-3);
      CHECK(dev.step_count == 4);
      if (v == muon::MuonVariant::normuon) {
        // bf16 Newton–Schulz: NorMuon's factors are smooth in O. (AdaMuon's
        // direction is nearly sign(O) on the first step: bf16's rounding
        // flips the signs of O's smallest entries, so it is compared in
        // float only.)
        run.ns_f32 = false;
        const double err16 =
            worst_param_error(muon_cuda_test::run_optimizer(ps, run).params, cpu.params, ps);
        INFO("bf16 NS: " << err16);
        CHECK(err16 <= 5e-2);
      }
    }
  for (muon::MuonVariant v : {muon::MuonVariant::normuon, muon::MuonVariant::adamuon}) {
    INFO(muon::muon_variant_name(v) << ": device save, load into a new device optimizer");
    auto run = variant_run(ps, 4, 6700, v);
    run.save_after = 2;
    const auto cpu = cpu_run(ps, run);
    CHECK(worst_param_error(muon_cuda_test::run_optimizer(ps, run).params, cpu.params, ps) <= 1e-3);
  }
}

TEST_CASE("cuda: the l2 form of weight decay on the device follows the CPU optimizer",
          "[cuda][device]") {
  MUON_REQUIRE_DEVICE();
  const auto ps = family_params(71);
  for (muon::MuonVariant v :
       {muon::MuonVariant::muon, muon::MuonVariant::normuon, muon::MuonVariant::adamuon})
    for (bool graph : {false, true}) {
      auto run = variant_run(ps, 3, 7100, v);
      // A decay large enough for lambda p to weigh against the gradient.
      run.muon.with_weight_decay(2.0).with_weight_decay_form(muon::WeightDecayForm::l2);
      run.graph = graph;
      const auto cpu = cpu_run(ps, run);
      const auto dev = muon_cuda_test::run_optimizer(ps, run);
      const double err = worst_param_error(dev.params, cpu.params, ps);
      const double state = state_error(ps, run, dev.saved, cpu.saved);
      INFO(muon::muon_variant_name(v)
           << " graph " << graph << ": parameters " << err << ", state " << state);
      CHECK(err <= 1e-3);
      CHECK(state <= 1e-3);
    }
}

TEST_CASE("cuda: a variant's checkpoint crosses backends: device to CPU and CPU to device",
          "[cuda][device]") {
  MUON_REQUIRE_DEVICE();
  const auto ps = family_params(81);
  for (muon::MuonVariant v : {muon::MuonVariant::normuon, muon::MuonVariant::adamuon}) {
    INFO(muon::muon_variant_name(v));
    const auto first = variant_run(ps, 2, 8100, v);
    const auto dev_first = muon_cuda_test::run_optimizer(ps, first);
    const auto cpu_first = cpu_run(ps, first);
    // The two backends' files hold the same state.
    CHECK(state_error(ps, first, dev_first.saved, cpu_first.saved) <= 1e-3);
    // Two more steps from the device's file, on both backends, by optimizers
    // made as plain Muon: the file's groups bring the variant and its buffers.
    auto second = make_run(ps, 2, 8300);
    second.load = dev_first.saved;
    std::vector<OptParam> resumed = ps;
    for (std::size_t k = 0; k < ps.size(); ++k) resumed[k].value = dev_first.params[k];
    const auto cpu = cpu_run(resumed, second);
    const auto dev = muon_cuda_test::run_optimizer(resumed, second);
    CHECK(worst_param_error(dev.params, cpu.params, resumed) <= 1e-3);
    CHECK(cpu.step_count == 4);
    CHECK(dev.step_count == 4);
    // And from the CPU's file on the device.
    second.load = cpu_first.saved;
    for (std::size_t k = 0; k < ps.size(); ++k) resumed[k].value = cpu_first.params[k];
    CHECK(worst_param_error(muon_cuda_test::run_optimizer(resumed, second).params,
                            cpu_run(resumed, second).params, resumed) <= 1e-3);
  }
}

TEST_CASE(
    "cuda: a change of variant gives the parameters the new variant's state, zeroed, and drops "
    "the captured graph",
    "[cuda][device]") {
  MUON_REQUIRE_DEVICE();
  const auto ps = family_params(91);
  struct Switch {
    muon::MuonVariant from, to;
    bool by_key;
  };
  const Switch switches[] = {{muon::MuonVariant::muon, muon::MuonVariant::normuon, true},
                             {muon::MuonVariant::normuon, muon::MuonVariant::adamuon, false},
                             {muon::MuonVariant::adamuon, muon::MuonVariant::muon, true},
                             {muon::MuonVariant::adamuon, muon::MuonVariant::normuon, true}};
  for (const Switch& sw : switches)
    for (bool graph : {false, true}) {
      auto run = variant_run(ps, 4, 9100, sw.from);
      run.graph = graph;
      run.switch_after = 2;
      run.switch_by_key = sw.by_key;
      // By key only the variant changes; by set_muon_options the whole options.
      run.switch_to = sw.by_key ? run.muon : variant_options(sw.to);
      run.switch_to.with_variant(sw.to);
      const auto cpu = cpu_run(ps, run);
      const auto dev = muon_cuda_test::run_optimizer(ps, run);
      const double err = worst_param_error(dev.params, cpu.params, ps);
      INFO(muon::muon_variant_name(sw.from)
           << " -> " << muon::muon_variant_name(sw.to) << (sw.by_key ? " by key" : " by options")
           << ", graph " << graph << ": " << err);
      CHECK(err <= 1e-3);
      CHECK(state_error(ps, run, dev.saved, cpu.saved) <= 1e-3);
    }
  const std::string replay = muon_cuda_test::replay_after_variant_change();
  INFO(replay);
  CHECK(replay.find("capture") != std::string::npos);
  CHECK(replay.rfind("recapture:", 0) == std::string::npos);
}

TEST_CASE("cuda: a refused device step leaves the variants' state as it was", "[cuda][device]") {
  MUON_REQUIRE_DEVICE();
  const auto ps = family_params(101);
  for (muon::MuonVariant v : {muon::MuonVariant::normuon, muon::MuonVariant::adamuon})
    for (auto policy : {muon::NonFinitePolicy::raise, muon::NonFinitePolicy::skip}) {
      auto run = variant_run(ps, 3, 10100, v);
      run.policy = policy;
      // Step 2 overflows c.weight's momentum (+-FLT_MAX on successive steps).
      const float big = std::numeric_limits<float>::max();
      std::fill(run.grads[0][2].begin(), run.grads[0][2].end(), big);
      std::fill(run.grads[1][2].begin(), run.grads[1][2].end(), -big);
      const auto cpu = cpu_run(ps, run);
      const auto dev = muon_cuda_test::run_optimizer(ps, run);
      INFO(muon::muon_variant_name(v)
           << (policy == muon::NonFinitePolicy::skip ? " skip" : " raise") << ": "
           << dev.steps[1].error);
      REQUIRE(dev.steps.size() == 3);
      CHECK(dev.steps[1].error.empty() == (policy == muon::NonFinitePolicy::skip));
      CHECK(dev.step_count == cpu.step_count);
      CHECK(worst_param_error(dev.params, cpu.params, ps) <= 1e-3);
      CHECK(state_error(ps, run, dev.saved, cpu.saved) <= 1e-3);
    }
}

// ---- QK-Clip on the device ------------------------------------------------------

namespace {

using muon_cuda_test::ClipCall;
using muon_cuda_test::ClipParam;

ClipParam clip_param(const char* name, std::int64_t out, std::int64_t in, bool col_major,
                     std::uint64_t seed) {
  ClipParam q;
  q.name = name;
  q.out = out;
  q.in = in;
  q.col_major = col_major;
  const Eigen::MatrixXd v = gaussian(out * in, 1, seed);
  q.value.assign(v.data(), v.data() + v.size());
  return q;
}

struct ClipCase {
  std::string label;
  std::vector<ClipParam> params;
  ClipCall call;
};

// Separate and fused projections in both layouts, a head exactly at tau,
// alpha != 0.5, heads not starting at row 0, and more scalings than one
// launch takes (kRowScalesPerLaunch = 32).
std::vector<ClipCase> clip_cases() {
  std::vector<ClipCase> cases;
  for (bool query_col : {false, true}) {
    // 4 heads of 3 rows, width 5: head 0 below tau, head 1 at tau (left
    // alone), heads 2 and 3 above; attn.v is never touched.
    ClipCase c;
    c.label = query_col ? "separate, query column-major" : "separate, key column-major";
    c.params = {clip_param("attn.q", 12, 5, query_col, 21),
                clip_param("attn.k", 12, 5, !query_col, 22),
                clip_param("attn.v", 12, 5, false, 23)};
    c.call.heads.query = "attn.q";
    c.call.heads.key = "attn.k";
    c.call.heads.heads = 4;
    c.call.maxima = {50.0, 100.0, 400.0, 150.0};
    c.call.options.alpha = 0.3;
    cases.push_back(c);
  }
  {
    // Fused QKV, row-major (Q rows 0-7, K 8-15, V 16-23): head 1 by 0.5 on
    // both sides (tau 100, alpha 0.5).
    ClipCase c;
    c.label = "fused QKV, row-major";
    c.params = {clip_param("attn.qkv", 24, 6, false, 31)};
    c.call.heads.query = c.call.heads.key = "attn.qkv";
    c.call.heads.heads = 2;
    c.call.heads.head_dim = 4;
    c.call.heads.key_row = 8;
    c.call.maxima = {100.0, 400.0};
    cases.push_back(c);
  }
  {
    // Fused, column-major, Q at rows 4-11 and K at 12-19 of 28: both heads
    // clipped (tau 30, alpha 0.75).
    ClipCase c;
    c.label = "fused, column-major, offset rows";
    c.params = {clip_param("fused", 28, 7, true, 41)};
    c.call.heads.query = c.call.heads.key = "fused";
    c.call.heads.heads = 2;
    c.call.heads.head_dim = 4;
    c.call.heads.query_row = 4;
    c.call.heads.key_row = 12;
    c.call.maxima = {31.0, 3000.0};
    c.call.options.tau = 30.0;
    c.call.options.alpha = 0.75;
    cases.push_back(c);
  }
  {
    // 20 heads of 2 rows, every one clipped by its own factor: 40 scalings,
    // two launches; the key column-major.
    ClipCase c;
    c.label = "20 heads, two launches";
    c.params = {clip_param("q", 40, 9, false, 51), clip_param("k", 40, 9, true, 52)};
    c.call.heads.query = "q";
    c.call.heads.key = "k";
    c.call.heads.heads = 20;
    for (int h = 0; h < 20; ++h) c.call.maxima.push_back(10.0 * (1.0 + 0.37 * (h + 1)));
    c.call.options.tau = 10.0;
    c.call.options.alpha = 0.7;
    cases.push_back(c);
  }
  return cases;
}

// muon::Optimizer<T>::qk_clip on the same tensors (values rounded to T as
// the device rounds them), its plan, and the parameters after it as float.
struct CpuClip {
  std::vector<std::vector<float>> params;
  muon::QkClipReport report;
  std::vector<muon::optim::RowScaling> plan;
  std::string error;
};

template <class T>
CpuClip cpu_qk_clip(const std::vector<ClipParam>& ps, const ClipCall& call) {
  std::vector<std::vector<T>> memory, grads;
  for (const ClipParam& q : ps) {
    memory.emplace_back();
    for (float v : q.value) memory.back().push_back(static_cast<T>(v));
    grads.emplace_back(q.value.size(), static_cast<T>(0.0f));
  }
  muon::Optimizer<T> opt;
  for (std::size_t k = 0; k < ps.size(); ++k) {
    muon::ParamView<T> pv, gv;
    pv.data = memory[k].data();
    gv.data = grads[k].data();
    pv.ndim = gv.ndim = 2;
    pv.shape[0] = gv.shape[0] = ps[k].out;
    pv.shape[1] = gv.shape[1] = ps[k].in;
    pv.column_major = gv.column_major = ps[k].col_major;
    opt.add_param(ps[k].name, pv, gv);
  }
  CpuClip r;
  try {
    r.plan = muon::optim::plan_qk_clip(opt.core(), call.heads, call.maxima.data(),
                                       call.maxima.size(), call.options)
                 .scalings;
    r.report = opt.qk_clip(call.heads, call.maxima, call.options);
  } catch (const muon::Error& e) {
    r.error = e.what();
  }
  for (const auto& m : memory) {
    r.params.emplace_back();
    for (T v : m) r.params.back().push_back(static_cast<float>(v));
  }
  return r;
}

CpuClip cpu_qk_clip(const std::vector<ClipParam>& ps, const ClipCall& call, Dtype t) {
  switch (t) {
    case Dtype::f32:
      return cpu_qk_clip<float>(ps, call);
    case Dtype::f16:
      return cpu_qk_clip<Eigen::half>(ps, call);
    case Dtype::bf16:
      break;
  }
  return cpu_qk_clip<Eigen::bfloat16>(ps, call);
}

// Both sides compute w * float(factor) in float and round once to the
// parameter scalar, to nearest even: the results agree bit for bit.
void check_same_params(const std::vector<std::vector<float>>& got,
                       const std::vector<std::vector<float>>& want,
                       const std::vector<ClipParam>& ps) {
  REQUIRE(got.size() == want.size());
  for (std::size_t k = 0; k < got.size(); ++k) {
    REQUIRE(got[k].size() == want[k].size());
    std::size_t wrong = 0, first = 0;
    for (std::size_t e = got[k].size(); e-- > 0;)
      if (!(got[k][e] == want[k][e])) {
        ++wrong;
        first = e;
      }
    INFO(ps[k].name << ": " << wrong << " entries differ, the first at " << first);
    CHECK(wrong == 0);
  }
}

}  // namespace

TEST_CASE(
    "cuda: QK-Clip's scale_rows kernel, emulated on the host, scales the rows the CPU optimizer "
    "scales (no device needed)",
    "[cuda][host][qk_clip]") {
  for (const ClipCase& c : clip_cases())
    for (Dtype t : {Dtype::f32, Dtype::f16, Dtype::bf16}) {
      INFO(c.label << ", " << name(t));
      const CpuClip cpu = cpu_qk_clip(c.params, c.call, t);
      REQUIRE(cpu.error.empty());
      REQUIRE(!cpu.plan.empty());
      check_same_params(muon_cuda_test::emulate_scale_rows(c.params, t, cpu.plan), cpu.params,
                        c.params);
    }
}

TEST_CASE("cuda: qk_clip checks its request on the host before any CUDA call (no device needed)",
          "[cuda][host][qk_clip]") {
  using muon_cuda_test::host_qk_clip;
  const ClipCase c = clip_cases().front();
  ClipCall call = c.call;
  // Every head at or below tau: nothing to launch, no CUDA call.
  call.maxima = {100.0, 12.0, 0.0, -3.0};
  auto r = host_qk_clip(c.params, call);
  CHECK(r.error.empty());
  CHECK(r.report.clipped == 0);
  CHECK(r.report.min_gamma == 1.0);
  // NaN and Inf maxima name the head.
  for (double bad : {std::nan(""), std::numeric_limits<double>::infinity(),
                     -std::numeric_limits<double>::infinity()}) {
    call.maxima = {500.0, 500.0, bad, 500.0};
    r = host_qk_clip(c.params, call);
    INFO(r.error);
    CHECK(r.error.find("max_logits[2]") != std::string::npos);
    CHECK(r.error.find("head 2") != std::string::npos);
  }
  call.maxima = {1.0, 2.0};
  CHECK(host_qk_clip(c.params, call).error.find("4 heads") != std::string::npos);
  call = c.call;
  call.heads.key = "attn.o";
  CHECK(host_qk_clip(c.params, call).error.find("'attn.o'") != std::string::npos);
  call = c.call;
  call.heads.heads = 5;  // 5 heads of 2 rows: rows 0 to 10 fit, the maxima do not
  CHECK(host_qk_clip(c.params, call).error.find("5 heads") != std::string::npos);
  call = c.call;
  call.heads.head_dim = 4;  // 4 heads of 4 rows do not fit 12
  CHECK(host_qk_clip(c.params, call).error.find("do not fit") != std::string::npos);
  call = c.call;
  call.options.tau = 0.0;
  CHECK(host_qk_clip(c.params, call).error.find("tau") != std::string::npos);
  call = c.call;
  call.options.alpha = 1.5;
  CHECK(host_qk_clip(c.params, call).error.find("alpha") != std::string::npos);
  const ClipCase fused = clip_cases()[2];
  call = fused.call;
  call.heads.key_row = 6;  // overlaps the query rows 0-7
  CHECK(host_qk_clip(fused.params, call).error.find("overlap") != std::string::npos);
}

TEST_CASE(
    "cuda: device qk_clip equals the CPU optimizer's (float, half, bfloat16; separate and fused, "
    "row- and column-major)",
    "[cuda][device][qk_clip]") {
  MUON_REQUIRE_DEVICE();
  for (const ClipCase& c : clip_cases())
    for (Dtype t : {Dtype::f32, Dtype::f16, Dtype::bf16}) {
      INFO(c.label << ", " << name(t));
      const CpuClip cpu = cpu_qk_clip(c.params, c.call, t);
      REQUIRE(cpu.error.empty());
      const auto dev = muon_cuda_test::device_qk_clip(c.params, t, c.call);
      INFO(dev.error);
      REQUIRE(dev.error.empty());
      CHECK(dev.report.clipped == cpu.report.clipped);
      CHECK(dev.report.min_gamma == cpu.report.min_gamma);
      check_same_params(dev.params, cpu.params, c.params);
    }
}

TEST_CASE(
    "cuda: device qk_clip with NaN/Inf maxima or on a capturing stream throws and leaves the "
    "weights untouched",
    "[cuda][device][qk_clip]") {
  MUON_REQUIRE_DEVICE();
  for (const ClipCase& c : clip_cases())
    for (double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
      ClipCall call = c.call;
      call.maxima.back() = bad;  // the other heads would clip
      const std::size_t head = call.maxima.size() - 1;
      for (Dtype t : {Dtype::f32, Dtype::bf16}) {
        INFO(c.label << ", " << name(t) << ", head " << head << " = " << bad);
        // The CPU optimizer refuses it too, its tensors as they were (the
        // values rounded to t, as on the device).
        const CpuClip cpu = cpu_qk_clip(c.params, call, t);
        const auto dev = muon_cuda_test::device_qk_clip(c.params, t, call);
        INFO(dev.error);
        CHECK(dev.error.find("max_logits[" + std::to_string(head) + "]") != std::string::npos);
        CHECK(dev.error.find("head " + std::to_string(head)) != std::string::npos);
        CHECK(dev.error == cpu.error);
        check_same_params(dev.params, cpu.params, c.params);
      }
    }
  bool untouched = false;
  const std::string capturing = muon_cuda_test::qk_clip_while_capturing(&untouched);
  INFO(capturing);
  CHECK(capturing.find("qk_clip: the stream is capturing a CUDA graph") != std::string::npos);
  CHECK(untouched);
}

TEST_CASE(
    "cuda: QK-Clip between device steps follows the CPU optimizer, eager and with the captured "
    "graph kept",
    "[cuda][device][qk_clip]") {
  MUON_REQUIRE_DEVICE();
  const auto ps = mixed_params(131);
  ClipCall fused;  // qkv.weight (60 x 20, split in three): 4 heads of 5 rows
  fused.heads.query = fused.heads.key = "qkv.weight";
  fused.heads.heads = 4;
  fused.heads.key_row = 20;
  fused.heads.head_dim = 5;
  fused.maxima = {120.0, 80.0, 300.0, 100.0};
  ClipCall separate;  // the column-major col.weight (20 x 64) and rows 8-27 of c.weight
  separate.heads.query = "col.weight";
  separate.heads.key = "c.weight";
  separate.heads.heads = 4;
  separate.heads.key_row = 8;
  separate.maxima = {1000.0, 99.0, 150.0, 200.0};
  separate.options.alpha = 0.25;
  for (bool graph : {false, true}) {
    auto run = make_run(ps, 3, 13100);
    run.graph = graph;
    run.clip_after = 1;
    run.clips = {fused, separate};
    const auto cpu = cpu_run(ps, run);
    const auto dev = muon_cuda_test::run_optimizer(ps, run);
    const double err = worst_param_error(dev.params, cpu.params, ps);
    INFO("graph " << graph << ": " << err);
    CHECK(err <= 1e-3);
    CHECK(dev.step_count == 3);
  }
}
