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
#include <random>
#include <sstream>
#include <string>
#include <vector>

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
}

TEST_CASE("cuda: optimizer argument errors (no device needed)", "[cuda][host]") {
  using muon_cuda_test::optimizer_error;
  CHECK(optimizer_error("ok").empty());
  CHECK(optimizer_error("duplicate").find("already added") != std::string::npos);
  CHECK(optimizer_error("null").find("grad") == std::string::npos);
  CHECK(optimizer_error("null").find("param") != std::string::npos);
  CHECK(optimizer_error("shape").find("shape") != std::string::npos);
  CHECK(optimizer_error("bad_magic").find("checkpoint") != std::string::npos);
  CHECK(optimizer_error("options").find("momentum") != std::string::npos);
}

namespace {

using muon_cuda_test::DeviceParamSpec;

DeviceParamSpec spec(const char* name, std::int64_t rows, std::int64_t cols,
                     muon::Route how = muon::Route::automatic, bool row_major = false) {
  DeviceParamSpec q;
  q.name = name;
  q.rows = rows;
  q.cols = cols;
  q.how = how;
  q.row_major = row_major;
  return q;
}

// The CPU optimizer's view of a device registration: (n, 1) and (1, n) are
// the 1-D tensor they stand for, (1, 1) a scalar, anything else (r, c).
std::vector<Eigen::Index> cpu_shape(const DeviceParamSpec& q) {
  if (q.how == muon::Route::adamw || q.rows == 1 || q.cols == 1) {
    if (q.rows * q.cols == 1) return {};
    return {q.rows * q.cols};
  }
  return {q.rows, q.cols};
}

muon::RoutingReport cpu_routing(const std::vector<DeviceParamSpec>& specs, muon::LrAdjust rule,
                                const muon::RoutingRules* rules = nullptr) {
  static std::vector<float> bank(1 << 20, 0.5f);
  muon::Optimizer<float> opt(muon::MuonGroupOptions().with_adjust_lr(rule));
  if (rules) opt.set_routing_rules(*rules);
  for (const auto& q : specs) {
    const std::vector<Eigen::Index> dims = cpu_shape(q);
    muon::ParamView<float> v;
    v.data = bank.data();
    v.ndim = static_cast<int>(dims.size());
    for (std::size_t d = 0; d < dims.size(); ++d) v.shape[d] = dims[d];
    opt.add_param(q.name, v, v, q.how);
  }
  return opt.routing();
}

}  // namespace

TEST_CASE("cuda: the device optimizer routes add() like the CPU optimizer (no device needed)",
          "[cuda][host]") {
  using muon::Route;
  const std::vector<DeviceParamSpec> specs = {
      spec("h.0.attn.c_attn.weight", 2304, 768, Route::automatic, true),
      spec("h.0.mlp.c_proj.weight", 768, 3072, Route::automatic, true),
      spec("h.0.ln_1.bias", 768, 1),
      spec("h.0.ln_1.weight", 1, 768),
      spec("temperature", 1, 1),
      spec("transformer.WTE.weight", 500, 64, Route::automatic, true),
      spec("wpe", 128, 64),
      spec("tok_embeddings", 500, 64),
      spec("Embed.table", 500, 64),
      spec("lm_head.weight", 500, 64),
      spec("output_head", 10, 64),
      spec("Classifier.w", 10, 64),
      spec("embed.forced", 32, 8, Route::muon),
      spec("fc.forced", 16, 8, Route::adamw),
      spec("norm.forced", 8, 1, Route::muon)};
  const std::vector<Route> want = {Route::muon,  Route::muon,  Route::adamw, Route::adamw,
                                   Route::adamw, Route::adamw, Route::adamw, Route::adamw,
                                   Route::adamw, Route::adamw, Route::adamw, Route::adamw,
                                   Route::muon,  Route::adamw, Route::muon};
  const auto dev = muon_cuda_test::device_routing(specs);
  const muon::RoutingReport cpu = cpu_routing(specs, muon::LrAdjust::original);
  REQUIRE(dev.size == specs.size());
  REQUIRE(dev.report.entries.size() == specs.size());
  for (std::size_t k = 0; k < specs.size(); ++k) {
    const auto& e = dev.report.entries[k];
    INFO(specs[k].name << ": " << e.reason);
    CHECK(e.name == specs[k].name);
    CHECK(dev.routes[k] == want[k]);
    CHECK(e.route == want[k]);
    // Same decision and the same sentence as the CPU optimizer gives.
    CHECK(cpu.at(e.name).route == e.route);
    CHECK(cpu.at(e.name).reason == e.reason);
    // As registered; add_adamw() takes a flat count.
    const bool flat = specs[k].how == Route::adamw;
    CHECK(e.rows == (flat ? specs[k].rows * specs[k].cols : specs[k].rows));
    CHECK(e.cols == (flat ? 1 : specs[k].cols));
    CHECK(e.group == 0);
  }
  CHECK(dev.report.at("lm_head.weight").reason.find("lm_head") != std::string::npos);
  CHECK(dev.report.at("h.0.ln_1.bias").reason == "1-D (gain/bias)");
  CHECK(dev.report.at("temperature").reason == "scalar");
  CHECK(dev.report.at("h.0.attn.c_attn.weight").reason == "2-D matrix");
  CHECK(dev.report.at("fc.forced").reason == "explicit choice");
  CHECK(dev.report.at("h.0.attn.c_attn.weight").shape == "(2304, 768)");
  const std::string table = dev.report.table();
  for (const auto& q : specs) CHECK(table.find(q.name) != std::string::npos);
}

TEST_CASE("cuda: the device optimizer's routing rules are configurable (no device needed)",
          "[cuda][host]") {
  muon::RoutingRules rules;
  rules.adamw_name_patterns = {"Router"};
  const std::vector<DeviceParamSpec> specs = {spec("moe.router.weight", 8, 16),
                                              spec("lm_head.weight", 8, 16)};
  const auto dev = muon_cuda_test::device_routing(specs, muon::LrAdjust::original, &rules);
  CHECK(dev.routes[0] == muon::Route::adamw);
  CHECK(dev.routes[1] == muon::Route::muon);  // no longer in the list
  const muon::RoutingReport cpu = cpu_routing(specs, muon::LrAdjust::original, &rules);
  CHECK(cpu.at("moe.router.weight").reason == dev.report.at("moe.router.weight").reason);
}

TEST_CASE("cuda: the device lr scale per shape is muon::adjusted_lr (no device needed)",
          "[cuda][host]") {
  const std::vector<DeviceParamSpec> specs = {spec("tall", 64, 4), spec("wide", 4, 64),
                                              spec("tall_rm", 96, 24, muon::Route::automatic, true),
                                              spec("square", 32, 32), spec("bias", 64, 1)};
  for (muon::LrAdjust rule : {muon::LrAdjust::original, muon::LrAdjust::match_rms_adamw,
                              muon::LrAdjust::spectral, muon::LrAdjust::none}) {
    INFO(muon::lr_adjust_name(rule));
    const auto dev = muon_cuda_test::device_routing(specs, rule);
    const muon::RoutingReport cpu = cpu_routing(specs, rule);
    for (const auto& q : specs) {
      INFO(q.name);
      const auto& e = dev.report.at(q.name);
      if (e.route != muon::Route::muon) {
        CHECK(e.lr_scale == 1.0);
        continue;
      }
      // The logical (out, in) shape counts, whatever the memory layout.
      CHECK(e.lr_scale == muon::adjusted_lr(1.0, q.rows, q.cols, rule));
      CHECK(std::abs(e.lr_scale - cpu.at(q.name).lr_scale) <= 1e-12 * e.lr_scale);
    }
  }
  CHECK(
      muon_cuda_test::device_routing(specs, muon::LrAdjust::original).report.at("tall").lr_scale ==
      4.0);
}

TEST_CASE("cuda: device optimizer registration errors name the field (no device needed)",
          "[cuda][host]") {
  using muon_cuda_test::device_routing;
  auto message = [](const std::vector<DeviceParamSpec>& specs,
                    const muon::RoutingRules* rules = nullptr) -> std::string {
    try {
      device_routing(specs, muon::LrAdjust::original, rules);
    } catch (const muon::Error& e) {
      return e.what();
    }
    return {};
  };
  CHECK(message({spec("w", 4, 4), spec("w", 4, 4)}).find("name: 'w' is already added") !=
        std::string::npos);
  CHECK(message({spec("w", 4, 4), spec("w", 4, 1, muon::Route::adamw)}).find("already added") !=
        std::string::npos);
  CHECK(message({spec("w", 4, 4), spec("w", 4, 4, muon::Route::muon)}).find("already added") !=
        std::string::npos);
  CHECK(message({spec("", 4, 4)}).find("name: must not be empty") != std::string::npos);
  CHECK(message({spec("w", 0, 4)}).find("shape: 'w'") != std::string::npos);
  CHECK(message({spec("w", 4, -2, muon::Route::muon)}).find("shape:") != std::string::npos);
  muon::RoutingRules rules;
  CHECK(message({spec("w", 4, 4)}, &rules).empty());
  // route() of a name that was never added.
  CHECK(device_routing({spec("w", 4, 4)}).missing_error ==
        "muon: name: no parameter named 'missing'");
}

TEST_CASE("cuda: device optimizer option errors name the field (no device needed)",
          "[cuda][host]") {
  using muon_cuda_test::device_options_error;
  CHECK(device_options_error("none").empty());
  for (const char* field :
       {"lr", "weight_decay", "momentum", "momentum_kind", "adjust_lr", "adam_lr", "adam_beta1",
        "adam_beta2", "adam_eps", "adam_weight_decay"}) {
    INFO(field);
    CHECK(device_options_error(field).rfind(std::string("muon: ") + field + ":", 0) == 0);
  }
  CHECK(device_options_error("ns_steps").find("steps") != std::string::npos);

  using muon_cuda_test::device_setter_error;
  CHECK(device_setter_error("lr", 0.5).empty());
  CHECK(device_setter_error("momentum", 0.9).empty());
  CHECK(device_setter_error("lr", -1.0).rfind("muon: lr:", 0) == 0);
  CHECK(device_setter_error("lr", std::nan("")).rfind("muon: lr:", 0) == 0);
  CHECK(device_setter_error("adam_lr", INFINITY).rfind("muon: adam_lr:", 0) == 0);
  CHECK(device_setter_error("weight_decay", -0.1).rfind("muon: weight_decay:", 0) == 0);
  CHECK(device_setter_error("momentum", 1.0).rfind("muon: momentum:", 0) == 0);
}

namespace {

// The device state payload as docs/cuda.md spells it out, written by hand
// (not by the optimizer) for the harness's "w" (Muon 4 x 3) and "b" (AdamW
// 4 x 1). `broken` names one field to break; the envelope-level breaks patch
// the finished bytes.
std::string device_state(const std::string& broken) {
  muon::checkpoint::Writer w;
  w.str(broken == "kind" ? "muon::cuda::Optimiser" : "muon::cuda::Optimizer");
  w.u8(1);  // parameter dtype float32
  w.u8(broken == "dtype" ? 2 : 1);
  w.i64(broken == "negative_step" ? -1 : 7);
  for (double d : {broken == "options" ? -0.5 : 0.05, 0.2, 0.9, 2e-3, 0.8, 0.99, 1e-9, 0.0})
    w.f64(d);
  w.u32(broken == "count" ? 3 : 2);
  w.str(broken == "name" ? "x" : "w");
  w.u8(broken == "route" ? 2 : 1);
  w.i64(broken == "shape" ? 5 : 4);
  w.i64(3);
  w.u32(1);
  w.str(broken == "buffer_name" ? "momentum" : "momentum_buffer");
  w.u8(1);
  w.u64(12);
  for (int i = 0; i < 12; ++i) w.scalar<float>(broken == "nan" && i == 5 ? NAN : 0.125f * i);
  w.str("b");
  w.u8(2);
  w.i64(4);
  w.i64(1);
  w.u32(2);
  w.str("exp_avg");
  w.u8(1);
  w.u64(4);
  for (int i = 0; i < 4; ++i) w.scalar<float>(-0.5f + i);
  w.str("exp_avg_sq");
  w.u8(1);
  w.u64(4);
  for (int i = 0; i < 4; ++i) w.scalar<float>(broken == "negative_v" && i == 2 ? -1.0f : 0.25f * i);
  if (broken == "trailing") w.u8(0);
  std::ostringstream os;
  muon::checkpoint::write_envelope(os, w.bytes());
  std::string bytes = os.str();
  if (broken == "magic") bytes[0] = 'X';
  if (broken == "version") bytes[8] = 2;
  if (broken == "crc") bytes[40] = static_cast<char>(bytes[40] ^ 1);
  if (broken == "truncated") bytes.resize(bytes.size() - 9);
  return bytes;
}

}  // namespace

TEST_CASE("cuda: device state load refuses bad data and changes nothing (no device needed)",
          "[cuda][host]") {
  const std::pair<const char*, const char*> cases[] = {
      {"magic", "bad magic"},
      {"version", "unsupported format version 2"},
      {"crc", "checksum mismatch"},
      {"truncated", "truncated"},
      {"kind", "not a muon::cuda::Optimizer state"},
      {"dtype", "buffer dtype differs"},
      {"negative_step", "negative step count"},
      {"options", "invalid options (muon: lr:"},
      {"count", "holds 3 parameters, the optimizer has 2"},
      {"name", "parameter 0 is 'x', expected 'w'"},
      {"route", "parameter 'w': route differs"},
      {"shape", "parameter 'w': shape 5x3 differs from 4x3"},
      {"buffer_name", "expected buffer 'momentum_buffer'"},
      {"nan", "buffer 'momentum_buffer' holds an invalid value"},
      {"negative_v", "buffer 'exp_avg_sq' holds an invalid value"},
      {"trailing", "trailing bytes"}};
  for (const auto& [broken, want] : cases) {
    INFO(broken);
    const auto r = muon_cuda_test::device_load(device_state(broken));
    CHECK(r.error.find("checkpoint") != std::string::npos);
    CHECK(r.error.find(want) != std::string::npos);
    CHECK(r.unchanged);
    CHECK(r.lr == 0.02);
  }

  // A CPU optimizer's checkpoint shares the envelope but not the payload.
  std::vector<float> w(12, 0.5f), b(4, 0.5f);
  muon::Optimizer<float> cpu;
  cpu.add_param("w", {w.data(), {4, 3}}, {w.data(), {4, 3}});
  cpu.add_param("b", {b.data(), {4}}, {b.data(), {4}});
  std::ostringstream os;
  cpu.save(os);
  const auto r = muon_cuda_test::device_load(os.str());
  CHECK(r.error.find("not a muon::cuda::Optimizer state") != std::string::npos);
  CHECK(r.unchanged);
}

TEST_CASE("cuda: a well-formed device state loads on a device, and fails cleanly without one",
          "[cuda][host]") {
  const std::string bytes = device_state("none");
  const auto r = muon_cuda_test::device_load(bytes);
  if (!muon_cuda_test::device_present()) {
    // Parsing succeeded; the first device allocation failed, and that too
    // leaves the optimizer as it was.
    INFO(r.error);
    CHECK(r.error.find("allocation") != std::string::npos);
    CHECK(r.unchanged);
    CHECK(r.lr == 0.02);
    return;
  }
  CHECK(r.error.empty());
  CHECK(r.lr == 0.05);
  CHECK(r.steps == 7);
  CHECK(r.resaved == bytes);  // save() writes exactly the documented layout
}

TEST_CASE("cuda: tiled kernels emulated on the host agree with plain loops (no device needed)",
          "[cuda][host]") {
  CHECK(muon_cuda_test::emulate_tiled_kernels() == "");
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

TEST_CASE("cuda: device optimizer matches a double reference (eager, graph, save/load)",
          "[cuda][device]") {
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
