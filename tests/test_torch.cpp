// SPDX-License-Identifier: MIT
// muon::torch::Muon (include/muon/torch.hpp) against independent references:
// muon::Optimizer over copies of the same data (the adapter must add no
// arithmetic: bitwise), a float64 model of torch.optim.Muon's update written
// here, and libtorch's own torch::optim::AdamW for the AdamW half.

#include <torch/torch.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "catch.hpp"
#include "muon/optimizer.hpp"
#include "muon/torch.hpp"
#include "option_samples.hpp"
#include "test_support.hpp"

namespace {

using muon::torch::HybridOptions;
using muon::torch::Muon;
using muon::torch::MuonOptions;

HybridOptions silent() {
  HybridOptions h;
  h.log = nullptr;
  return h;
}

// A small model's parameters by name: two conv layers (4-D -> Muon), a
// classifier (-> AdamW by name), biases and a norm gain (-> AdamW), a 2-D
// hidden weight (-> Muon), an embedding (-> AdamW by name).
torch::OrderedDict<std::string, torch::Tensor> model_params(torch::Dtype dtype, int seed = 1) {
  torch::manual_seed(seed);
  const auto o = torch::TensorOptions().dtype(dtype);
  torch::OrderedDict<std::string, torch::Tensor> p;
  p.insert("conv1.weight", torch::randn({8, 1, 3, 3}, o).mul_(0.3).requires_grad_());
  p.insert("conv1.bias", torch::randn({8}, o).mul_(0.1).requires_grad_());
  p.insert("conv2.weight", torch::randn({16, 8, 3, 3}, o).mul_(0.1).requires_grad_());
  p.insert("hidden.weight", torch::randn({24, 40}, o).mul_(0.2).requires_grad_());
  p.insert("tall.weight", torch::randn({40, 12}, o).mul_(0.2).requires_grad_());
  p.insert("norm.weight", torch::ones({24}, o).requires_grad_());
  p.insert("tok_embedding.weight", torch::randn({30, 6}, o).requires_grad_());
  p.insert("classifier.weight", torch::randn({10, 24}, o).mul_(0.2).requires_grad_());
  return p;
}

// Fresh random gradients for every parameter (the same for the same seed).
std::vector<torch::Tensor> random_grads(const torch::OrderedDict<std::string, torch::Tensor>& p,
                                        int seed) {
  torch::manual_seed(1000 + seed);
  std::vector<torch::Tensor> g;
  for (const auto& item : p) g.push_back(torch::randn_like(item.value()));
  return g;
}
void set_grads(const torch::OrderedDict<std::string, torch::Tensor>& p,
               const std::vector<torch::Tensor>& g) {
  std::size_t i = 0;
  for (const auto& item : p) item.value().mutable_grad() = g[i++].clone();
}

torch::OrderedDict<std::string, torch::Tensor> clone_params(
    const torch::OrderedDict<std::string, torch::Tensor>& p) {
  torch::OrderedDict<std::string, torch::Tensor> c;
  for (const auto& item : p) c.insert(item.key(), item.value().detach().clone().requires_grad_());
  return c;
}

// The reference: muon::Optimizer<T> over its own copies of the tensors.
template <class T>
struct Reference {
  std::map<std::string, std::vector<T>> param, grad;
  muon::Optimizer<T> opt;
  std::vector<std::string> names;

  Reference(const torch::OrderedDict<std::string, torch::Tensor>& p, const muon::GroupOptions& o)
      : opt(o.muon, o.adamw) {
    for (const auto& item : p) {
      const torch::Tensor t = item.value().detach().contiguous();
      auto& w = param[item.key()];
      w.resize(std::size_t(t.numel()));
      std::memcpy(w.data(), t.data_ptr(), w.size() * sizeof(T));
      grad[item.key()].resize(w.size());
      muon::ParamView<T> v;
      v.data = w.data();
      v.ndim = int(t.dim());
      for (int i = 0; i < v.ndim; ++i) v.shape[std::size_t(i)] = t.size(i);
      muon::ParamView<T> gv = v;
      gv.data = grad[item.key()].data();
      opt.add_param(item.key(), v, gv);
      names.push_back(item.key());
    }
  }
  void step(const std::vector<torch::Tensor>& g) {
    for (std::size_t i = 0; i < names.size(); ++i)
      std::memcpy(grad[names[i]].data(), g[i].contiguous().data_ptr(),
                  grad[names[i]].size() * sizeof(T));
    opt.step();
  }
  bool same_bits(const std::string& name, const torch::Tensor& t) const {
    const torch::Tensor c = t.detach().contiguous();
    return std::memcmp(param.at(name).data(), c.data_ptr(), param.at(name).size() * sizeof(T)) == 0;
  }
};

template <class T>
void check_bitwise(torch::Dtype dtype, const MuonOptions& options =
                                           MuonOptions(0.02).weight_decay(0.05).adamw_lr(3e-3)) {
  auto params = model_params(dtype);
  Reference<T> ref(params, options.group_options());
  Muon opt = muon::torch::make_hybrid(params, options, silent());
  for (int s = 0; s < 3; ++s) {
    const auto g = random_grads(params, s);
    set_grads(params, g);
    opt.step();
    ref.step(g);
  }
  for (const auto& item : params) {
    INFO(item.key());
    CHECK(ref.same_bits(item.key(), item.value()));
  }
  CHECK(opt.step_count() == 3);
  CHECK(opt.report().updated == params.size());
}

// ---- a float64 model of torch.optim.Muon (torch/optim/_muon.py, 2.9+) ----------
//   buf.lerp_(grad, 1 - momentum)
//   update = grad.lerp(buf, momentum) if nesterov else buf
//   update = zeropower_via_newtonschulz(update): X = G / max(||G||_F, eps),
//            transposed when rows > cols, 5 steps X <- aX + (bA + cA^2)X, A = XX^T
//   param *= 1 - lr * weight_decay
//   param -= lr * sqrt(max(1, rows / cols)) * update        ("original")
Eigen::MatrixXd newton_schulz_model(Eigen::MatrixXd g, int steps, double eps) {
  const bool tall = g.rows() > g.cols();
  if (tall) g.transposeInPlace();
  Eigen::MatrixXd x = g / std::max(g.norm(), eps);
  const double a = 3.4445, b = -4.7750, c = 2.0315;
  for (int k = 0; k < steps; ++k) {
    const Eigen::MatrixXd A = x * x.transpose();
    const Eigen::MatrixXd B = b * A + c * A * A;
    x = (a * x + B * x).eval();
  }
  if (tall) x.transposeInPlace();
  return x;
}

// The message of the muon::Error a step throws.
std::string step_error(Muon& opt) {
  return muon_test::error_message([&] { opt.step(); });
}

Eigen::MatrixXd as_matrix(const torch::Tensor& t) {  // (out, in...) row-major -> out x rest
  const torch::Tensor c = t.detach().to(torch::kDouble).contiguous();
  const Eigen::Index rows = c.size(0), cols = c.numel() / c.size(0);
  return Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
      c.data_ptr<double>(), rows, cols);
}

}  // namespace

TEST_CASE("make_hybrid routes by the library's rules and prints the table", "[torch]") {
  auto params = model_params(torch::kFloat);
  std::ostringstream log;
  HybridOptions h;
  h.log = &log;
  Muon opt = muon::torch::make_hybrid(params, MuonOptions(0.02), h);
  const std::map<std::string, muon::Route> expected = {
      {"conv1.weight", muon::Route::muon},          {"conv1.bias", muon::Route::adamw},
      {"conv2.weight", muon::Route::muon},          {"hidden.weight", muon::Route::muon},
      {"tall.weight", muon::Route::muon},           {"norm.weight", muon::Route::adamw},
      {"tok_embedding.weight", muon::Route::adamw}, {"classifier.weight", muon::Route::adamw}};
  for (const auto& item : params) {
    INFO(item.key());
    CHECK(opt.name_of(item.value()) == item.key());
    CHECK(opt.route(item.value()) == expected.at(item.key()));
    CHECK(log.str().find(item.key()) != std::string::npos);
  }
  // Per-head blocks by name.
  {
    auto p2 = model_params(torch::kFloat);
    HybridOptions per_head = silent();
    per_head.heads["hidden.weight"] = 4;
    Muon heads = muon::torch::make_hybrid(p2, MuonOptions(0.02), per_head);
    CHECK(heads.core().param(3).blocks == std::vector<std::int64_t>(4, 6));
  }
  // The 4-D filter is the (out, in*kh*kw) matrix, and its lr scale comes from that shape.
  const muon::RoutingReport report = opt.routing();
  const muon::RoutingEntry& conv = report.at("conv2.weight");
  CHECK(conv.rows == 16);
  CHECK(conv.cols == 72);
  CHECK(std::abs(conv.lr_scale - 1.0) < 1e-12);
  CHECK(std::abs(opt.routing().at("tall.weight").lr_scale - std::sqrt(40.0 / 12.0)) < 1e-12);
  CHECK(log.str() == opt.routing().table());
}

TEST_CASE("the method set is muon::Optimizer's (optim::Front), over libtorch's groups", "[torch]") {
  auto params = model_params(torch::kFloat);
  Muon opt = muon::torch::make_hybrid(params, MuonOptions(0.02), silent());
  CHECK(opt.route("hidden.weight") == muon::Route::muon);  // by name, and by tensor
  CHECK(opt.route(params["classifier.weight"]) == muon::Route::adamw);
  CHECK(opt.param_count() == params.size());
  CHECK(opt.param_names().front() == "conv1.weight");
  // A change through the method set reaches libtorch's group options (which
  // every step reads) and the engine's state.
  opt.set_option("lr", 0.03);
  opt.set_option("variant", "normuon");
  const auto& o = static_cast<const MuonOptions&>(opt.param_groups()[0].options());
  CHECK(o.lr() == 0.03);
  CHECK(o.variant() == muon::MuonVariant::normuon);
  CHECK(opt.current_lr() == 0.03);
  CHECK(opt.buffer("hidden.weight", "second_momentum_buffer").numel() == 40);
  CHECK_THROWS_AS(opt.buffer("hidden.weight", "exp_avg"), muon::Error);
  CHECK_THROWS_AS(opt.add_group(muon::MuonGroupOptions()), muon::Error);  // add_param_group
  CHECK(opt.group_count() == 1);
  set_grads(params, random_grads(params, 0));
  opt.step();
  CHECK(opt.last_report().updated == params.size());
  CHECK(&opt.last_report() == &opt.report());
  CHECK(opt.muon_options().lr == 0.03);
  // The core has the groups' options from the start: the table's lr scales follow them.
  auto p2 = model_params(torch::kFloat);
  Muon rms = muon::torch::make_hybrid(
      p2, MuonOptions(0.02).adjust_lr(muon::LrAdjust::match_rms_adamw), silent());
  CHECK(std::abs(rms.routing().at("hidden.weight").lr_scale - 0.2 * std::sqrt(40.0)) < 1e-12);
}

TEST_CASE("muon::torch::Muon gives muon::Optimizer's bits on the same data", "[torch]") {
  SECTION("float") { check_bitwise<float>(torch::kFloat); }
  SECTION("double") { check_bitwise<double>(torch::kDouble); }
  SECTION("bfloat16") { check_bitwise<Eigen::bfloat16>(torch::kBFloat16); }
  SECTION("half") { check_bitwise<Eigen::half>(torch::kHalf); }
}

TEST_CASE("muon::torch::Muon follows a float64 model of torch.optim.Muon", "[torch]") {
  const bool nesterov = GENERATE(true, false);
  INFO("nesterov " << nesterov);
  torch::manual_seed(7);
  const auto o = torch::TensorOptions().dtype(torch::kDouble);
  // wide, tall, square and a conv filter: Muon(params) as torch.optim.Muon(params)
  std::vector<torch::Tensor> params = {torch::randn({6, 20}, o), torch::randn({20, 6}, o),
                                       torch::randn({9, 9}, o), torch::randn({4, 3, 2, 2}, o)};
  std::vector<Eigen::MatrixXd> model, buf;
  for (auto& p : params) {
    p.requires_grad_();
    model.push_back(as_matrix(p));
    buf.push_back(Eigen::MatrixXd::Zero(model.back().rows(), model.back().cols()));
  }
  const double lr = 0.03, wd = 0.1, mu = 0.9;
  Muon opt(params, MuonOptions(lr).weight_decay(wd).momentum(mu).nesterov(nesterov));
  for (int s = 0; s < 4; ++s) {
    for (std::size_t i = 0; i < params.size(); ++i) {
      params[i].mutable_grad() = torch::randn_like(params[i]);
      const Eigen::MatrixXd g = as_matrix(params[i].grad());
      buf[i] += (1 - mu) * (g - buf[i]);
      const Eigen::MatrixXd in = nesterov ? Eigen::MatrixXd(g + mu * (buf[i] - g)) : buf[i];
      const Eigen::MatrixXd update = newton_schulz_model(in, 5, 1e-7);
      const double rows = double(in.rows()), cols = double(in.cols());
      model[i] = model[i] * (1 - lr * wd) - lr * std::sqrt(std::max(1.0, rows / cols)) * update;
    }
    opt.step();
  }
  for (std::size_t i = 0; i < params.size(); ++i) {
    INFO("parameter " << i);
    const double err = (as_matrix(params[i]) - model[i]).cwiseAbs().maxCoeff();
    CHECK(err < 1e-12);
  }
}

TEST_CASE("the AdamW half matches libtorch's torch::optim::AdamW", "[torch]") {
  auto params = model_params(torch::kDouble);
  auto twin = clone_params(params);
  const double lr = 2e-3, wd = 0.02;
  Muon opt = muon::torch::make_hybrid(params,
                                      MuonOptions(0.02)
                                          .adamw_lr(lr)
                                          .adamw_betas({0.85, 0.98})
                                          .adamw_eps(1e-7)
                                          .adamw_weight_decay(wd),
                                      silent());
  std::vector<torch::Tensor> adamw_twins;
  for (const auto& item : twin)
    if (opt.route(params[item.key()]) == muon::Route::adamw) adamw_twins.push_back(item.value());
  REQUIRE(adamw_twins.size() == 4);
  torch::optim::AdamW reference(
      adamw_twins, torch::optim::AdamWOptions(lr).betas({0.85, 0.98}).eps(1e-7).weight_decay(wd));
  for (int s = 0; s < 5; ++s) {
    const auto g = random_grads(params, s);
    set_grads(params, g);
    set_grads(twin, g);
    opt.step();
    reference.step();
  }
  for (const auto& item : params) {
    if (opt.route(item.value()) != muon::Route::adamw) continue;
    INFO(item.key());
    const double err = (item.value() - twin[item.key()]).abs().max().item<double>();
    CHECK(err < 1e-14);
    CHECK(!torch::equal(item.value(), model_params(torch::kDouble)[item.key()]));  // it moved
  }
}

TEST_CASE("torch::save / torch::load continue a run bitwise", "[torch]") {
  auto params = model_params(torch::kFloat);
  Muon opt = muon::torch::make_hybrid(params, MuonOptions(0.02).adamw_lr(1e-3), silent());
  for (int s = 0; s < 2; ++s) {
    set_grads(params, random_grads(params, s));
    opt.step();
  }
  static_cast<MuonOptions&>(opt.param_groups()[0].options()).lr(0.015).adamw_lr(7e-4);
  const muon_test::TempDir dir("torch_save");
  const std::string path = dir.file("optimizer.pt");
  torch::save(opt, path);

  auto resumed_params = clone_params(params);
  Muon resumed = muon::torch::make_hybrid(resumed_params, MuonOptions(0.5).adamw_lr(0.5), silent());
  torch::load(resumed, path);
  const auto& restored = static_cast<const MuonOptions&>(resumed.param_groups()[0].options());
  CHECK(restored.lr() == 0.015);
  CHECK(restored.adamw_lr() == 7e-4);
  CHECK(resumed.step_count() == 2);
  {  // a scheduler keeps the constructor's ratio adamw_lr / lr (1 here), not the checkpoint's
    MuonOptions copy = restored;
    copy.set_lr(0.03);
    CHECK(copy.adamw_lr() == 0.03);
  }

  for (int s = 2; s < 4; ++s) {
    const auto g = random_grads(params, s);
    set_grads(params, g);
    set_grads(resumed_params, g);
    opt.step();
    resumed.step();
  }
  for (const auto& item : params) {
    INFO(item.key());
    CHECK(torch::equal(item.value(), resumed_params[item.key()]));
  }

  SECTION("the library's own checkpoint is the same state, readable by muon::Optimizer") {
    std::stringstream ss;
    opt.save_checkpoint(ss);
    Reference<float> ref(params, MuonOptions().group_options());
    ref.opt.load(ss);
    CHECK(ref.opt.step_count() == 4);
    CHECK(ref.opt.muon_options().lr == 0.015);
    const torch::Tensor m = torch::from_blob(
        const_cast<float*>(ref.opt.momentum_buffer("hidden.weight").data()), {24, 40});
    CHECK(torch::equal(m, opt.buffer("hidden.weight", "momentum_buffer")));
  }
  SECTION("an archive of other parameters is refused and changes nothing") {
    std::vector<torch::Tensor> other = {torch::randn({5, 5}).requires_grad_()};
    Muon stranger(other, MuonOptions(0.1));
    std::stringstream before, after;
    stranger.save_checkpoint(before);
    CHECK_THROWS_AS(torch::load(stranger, path), muon::Error);
    stranger.save_checkpoint(after);
    CHECK(before.str() == after.str());
    CHECK(static_cast<const MuonOptions&>(stranger.param_groups()[0].options()).lr() == 0.1);
  }
}

TEST_CASE("options edited between steps and libtorch's LR schedulers take effect", "[torch]") {
  auto params = model_params(torch::kFloat);
  Muon opt = muon::torch::make_hybrid(params, MuonOptions(0.02).adamw_lr(4e-3), silent());
  torch::optim::StepLR scheduler(opt, /*step_size=*/1, /*gamma=*/0.5);
  scheduler.step();  // libtorch 1.13 counts this first call as epoch 0: no change
  scheduler.step();
  auto& o = static_cast<MuonOptions&>(opt.param_groups()[0].options());
  CHECK(std::abs(o.lr() - 0.01) < 1e-15);
  CHECK(std::abs(o.adamw_lr() - 2e-3) < 1e-15);  // the ratio is kept
  // Through 0 and back (a warmup from 0, a decay to 0): the ratio survives.
  o.set_lr(0.0);
  CHECK(o.adamw_lr() == 0.0);
  o.set_lr(0.005);
  CHECK(std::abs(o.adamw_lr() - 1e-3) < 1e-15);
  o.lr(0.01).adamw_lr(2e-3);

  // lr 0 for both halves: decay 1 - 0 * wd = 1, step 0: nothing moves.
  o.lr(0).adamw_lr(0);
  const auto before = clone_params(params);
  set_grads(params, random_grads(params, 0));
  opt.step();
  for (const auto& item : params) CHECK(torch::equal(item.value(), before[item.key()]));

  // An invalid value is refused at the step, naming the field, and changes nothing.
  o.lr(0.02).momentum(1.5);
  CHECK(step_error(opt).find("momentum") != std::string::npos);
  for (const auto& item : params) CHECK(torch::equal(item.value(), before[item.key()]));
}

TEST_CASE("parameters are updated in place, strided ones too", "[torch]") {
  torch::manual_seed(3);
  // A 2-D slice of a larger tensor (row stride 20) and a transposed weight
  // (column-major): both used in place; the rest of the storage untouched.
  torch::Tensor storage = torch::randn({12, 20});
  torch::Tensor slice = storage.narrow(1, 2, 8);  // 12 x 8, stride (20, 1)
  torch::Tensor base = torch::randn({8, 12});
  torch::Tensor transposed = base.t();  // 12 x 8, stride (1, 12)
  slice.requires_grad_();
  transposed.requires_grad_();
  REQUIRE(!slice.is_contiguous());
  REQUIRE(!transposed.is_contiguous());
  const torch::Tensor slice0 = slice.detach().clone(), t0 = transposed.detach().clone();
  const torch::Tensor outside =
      torch::cat({storage.narrow(1, 0, 2), storage.narrow(1, 10, 10)}, 1).detach().clone();
  const void* slice_ptr = slice.data_ptr();
  const void* t_ptr = transposed.data_ptr();

  std::vector<torch::Tensor> contiguous = {slice0.clone().requires_grad_(),
                                           t0.clone().requires_grad_()};
  Muon strided_opt({slice, transposed}, MuonOptions(0.05));
  Muon dense_opt(contiguous, MuonOptions(0.05));
  for (int s = 0; s < 2; ++s) {
    const torch::Tensor g1 = torch::randn({12, 8}), g2 = torch::randn({12, 8});
    slice.mutable_grad() = g1.clone();
    transposed.mutable_grad() = g2.t().contiguous().t();  // the parameter's layout
    contiguous[0].mutable_grad() = g1.clone();
    contiguous[1].mutable_grad() = g2.clone();
    strided_opt.step();
    dense_opt.step();
  }
  CHECK(slice.data_ptr() == slice_ptr);
  CHECK(transposed.data_ptr() == t_ptr);
  CHECK(!torch::equal(slice, slice0));
  CHECK(torch::allclose(slice, contiguous[0], 1e-6, 1e-6));
  CHECK(torch::allclose(transposed, contiguous[1], 1e-6, 1e-6));
  const torch::Tensor outside_now =
      torch::cat({storage.narrow(1, 0, 2), storage.narrow(1, 10, 10)}, 1);
  CHECK(torch::equal(outside_now, outside));
}

TEST_CASE("a gradient in another layout is copied into the parameter's", "[torch]") {
  torch::manual_seed(4);
  torch::Tensor a = torch::randn({10, 6}).requires_grad_();
  torch::Tensor b = a.detach().clone().requires_grad_();
  Muon opt_a({a}, MuonOptions(0.05)), opt_b({b}, MuonOptions(0.05));
  const torch::Tensor g = torch::randn({10, 6});
  a.mutable_grad() = g.t().contiguous().t();  // column-major gradient of a row-major parameter
  b.mutable_grad() = g.clone();
  opt_a.step();
  opt_b.step();
  CHECK(torch::equal(a, b));
}

TEST_CASE("storage replaced by set_data: the state follows the parameter", "[torch]") {
  auto params = model_params(torch::kFloat);
  auto twin = clone_params(params);
  Muon opt = muon::torch::make_hybrid(params, MuonOptions(0.02), silent());
  Muon ref = muon::torch::make_hybrid(twin, MuonOptions(0.02), silent());
  for (int s = 0; s < 3; ++s) {
    if (s == 1)
      for (const auto& item : params) item.value().set_data(item.value().detach().clone());
    const auto g = random_grads(params, s);
    set_grads(params, g);
    set_grads(twin, g);
    opt.step();
    ref.step();
  }
  for (const auto& item : params) CHECK(torch::equal(item.value(), twin[item.key()]));
}

TEST_CASE("parameters of several dtypes step together, all or nothing", "[torch]") {
  torch::manual_seed(5);
  torch::Tensor w = torch::randn({16, 8}, torch::kBFloat16).requires_grad_();
  torch::Tensor gain = torch::ones({16}, torch::kFloat).requires_grad_();
  torch::Tensor bias = torch::zeros({16}, torch::kDouble).requires_grad_();
  Muon opt({w, gain, bias}, MuonOptions(0.02));
  CHECK(opt.routing().entries.size() == 3);
  CHECK(opt.routing().entries[0].name == "group0.param0");
  CHECK(opt.route(w) == muon::Route::muon);
  CHECK(opt.route(gain) == muon::Route::adamw);

  const torch::Tensor w0 = w.detach().clone(), gain0 = gain.detach().clone(),
                      bias0 = bias.detach().clone();
  w.mutable_grad() = torch::randn({16, 8}, torch::kBFloat16);
  gain.mutable_grad() = torch::randn({16});
  bias.mutable_grad() = torch::randn({16}, torch::kDouble);
  bias.mutable_grad()[3] = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(opt.step(), muon::Error);  // the double engine refuses: nothing moves
  CHECK(torch::equal(w, w0));
  CHECK(torch::equal(gain, gain0));
  CHECK(torch::equal(bias, bias0));
  CHECK(opt.step_count() == 0);

  bias.mutable_grad()[3] = 0.5;
  opt.step();
  CHECK(!torch::equal(w, w0));
  CHECK(!torch::equal(gain, gain0));
  CHECK(!torch::equal(bias, bias0));
  CHECK(opt.report().updated == 3);

  std::stringstream ss;
  CHECK_THROWS_AS(opt.save_checkpoint(ss), muon::Error);  // muon::Optimizer<T>'s format: one dtype
  CHECK(opt.engine<Eigen::bfloat16>().job_count() == 1);
}

TEST_CASE("torch::save / torch::load of several dtypes continue a run bitwise",
          "[torch][checkpoint]") {
  // bfloat16, float and double parameters: one checkpoint, the float
  // buffers stored as double (exactly) beside the double ones.
  torch::manual_seed(15);
  std::vector<torch::Tensor> run = {torch::randn({16, 8}, torch::kBFloat16), torch::randn({16}),
                                    torch::randn({6, 10}, torch::kDouble), torch::randn({12, 12}),
                                    torch::randn({5}, torch::kDouble)};
  for (auto& t : run) t.requires_grad_();
  const auto set_random_grads = [](const std::vector<torch::Tensor>& params, int seed) {
    torch::manual_seed(100 + seed);
    for (const auto& p : params) p.mutable_grad() = torch::randn_like(p);
  };
  Muon opt(run, MuonOptions(0.02).adamw_lr(3e-3));
  for (int s = 0; s < 2; ++s) {
    set_random_grads(run, s);
    opt.step();
  }
  const muon_test::TempDir dir("torch_dtypes");
  const std::string path = dir.file("optimizer.pt");
  torch::save(opt, path);

  std::vector<torch::Tensor> resumed_params;
  for (const auto& t : run) resumed_params.push_back(t.detach().clone().requires_grad_());
  Muon resumed(resumed_params, MuonOptions(0.5));
  torch::load(resumed, path);
  CHECK(resumed.step_count() == 2);
  for (int s = 2; s < 4; ++s) {
    set_random_grads(run, s);
    set_random_grads(resumed_params, s);
    opt.step();
    resumed.step();
  }
  for (std::size_t i = 0; i < run.size(); ++i) {
    INFO("parameter " << i);
    CHECK(torch::equal(run[i], resumed_params[i]));
  }
  // The same shapes in float only keep float buffers: refused, nothing changed.
  std::vector<torch::Tensor> floats;
  for (const auto& t : run) floats.push_back(t.detach().to(torch::kFloat).requires_grad_());
  Muon other(floats, MuonOptions(0.5));
  CHECK_THROWS_AS(torch::load(other, path), muon::Error);
  CHECK(static_cast<const MuonOptions&>(other.param_groups()[0].options()).lr() == 0.5);
}

TEST_CASE("parameters without a gradient are skipped; closures are called", "[torch]") {
  torch::manual_seed(6);
  torch::Tensor w = torch::randn({6, 4}).requires_grad_();
  torch::Tensor v = torch::randn({6, 4}).requires_grad_();
  const torch::Tensor v0 = v.detach().clone(), w0 = w.detach().clone();
  Muon opt({w, v}, MuonOptions(0.05));
  const torch::Tensor x = torch::randn({4});
  const torch::Tensor loss = opt.step([&] {
    opt.zero_grad();
    torch::Tensor l = torch::matmul(w, x).pow(2).sum();
    l.backward();
    return l;
  });
  CHECK(loss.defined());
  CHECK(loss.item<float>() == torch::matmul(w0, x).pow(2).sum().item<float>());
  CHECK(!torch::equal(w, w0));
  CHECK(torch::equal(v, v0));  // no gradient: skipped, as libtorch's optimizers do
  CHECK(opt.report().skipped.size() == 1);
}

TEST_CASE("groups added with add_param_group are registered at the next step", "[torch]") {
  torch::manual_seed(8);
  torch::Tensor a = torch::randn({8, 8}).requires_grad_();
  torch::Tensor b = torch::randn({8, 8}).requires_grad_();
  const torch::Tensor b0 = b.detach().clone();
  Muon opt({a}, MuonOptions(0.05));
  opt.add_param_group(torch::optim::OptimizerParamGroup(
      {b}, std::make_unique<MuonOptions>(MuonOptions(0.0).weight_decay(0))));
  a.mutable_grad() = torch::randn({8, 8});
  b.mutable_grad() = torch::randn({8, 8});
  opt.step();
  CHECK(opt.name_of(b) == "group1.param0");
  CHECK(torch::equal(b, b0));  // its group's lr 0 and no decay
  CHECK(opt.group_count() == 2);
}

TEST_CASE("bad tensors are refused with the parameter's name; nothing changes", "[torch]") {
  const auto refuses = [](std::vector<torch::Tensor> params, const std::string& field) {
    const std::string message =
        muon_test::error_message([&] { Muon opt(std::move(params), MuonOptions(0.02)); });
    INFO(message);
    CHECK(message.find(field) != std::string::npos);
    CHECK(message.find("group0.param1") != std::string::npos);
  };
  const torch::Tensor ok = torch::randn({4, 4});
  refuses({ok, torch::zeros({4, 4}, torch::kLong)}, "dtype");
  refuses({ok, torch::zeros({4, 4}, torch::kComplexFloat)}, "complex");
  refuses({ok, torch::zeros({2, 2, 2, 2, 2})}, "5 dimensions");
  refuses({ok, torch::zeros({4, 5, 6}).permute({2, 0, 1})}, "not contiguous");
  refuses({ok, torch::zeros({4, 4}).to_sparse()}, "sparse");

  SECTION("a bad gradient at step time") {
    torch::Tensor w = torch::randn({4, 6}).requires_grad_();
    torch::Tensor u = torch::randn({4, 6}).requires_grad_();
    const torch::Tensor w0 = w.detach().clone(), u0 = u.detach().clone();
    Muon opt({w, u}, MuonOptions(0.02));
    w.mutable_grad() = torch::randn({4, 6});
    u.mutable_grad() = torch::randn({4, 6}, torch::kDouble);
    CHECK(step_error(opt).find("'group0.param1' has dtype Double") != std::string::npos);
    u.mutable_grad() = torch::randn({4, 6}).to_sparse();
    CHECK(step_error(opt).find("'group0.param1' is sparse") != std::string::npos);
    u.mutable_grad() = torch::full({4, 6}, std::numeric_limits<float>::infinity());
    CHECK_THROWS_AS(opt.step(), muon::Error);
    CHECK(torch::equal(w, w0));
    CHECK(torch::equal(u, u0));
    // A parameter taken out of its group, or replaced by another tensor.
    u.mutable_grad() = torch::randn({4, 6});
    opt.param_groups()[0].params()[1] = torch::randn({4, 6});
    CHECK(step_error(opt).find("'group0.param1') was replaced") != std::string::npos);
    opt.param_groups()[0].params().pop_back();
    CHECK(step_error(opt).find("'group0.param1' was removed") != std::string::npos);
    CHECK(torch::equal(w, w0));
  }
}

TEST_CASE("the Muon family through libtorch: variants bitwise the library's, QK-Clip by name",
          "[torch][family]") {
  // NorMuon, and AdaMuon with the l2 form: the adapter adds no arithmetic.
  check_bitwise<float>(torch::kFloat, MuonOptions(0.02).variant(muon::MuonVariant::normuon));
  check_bitwise<double>(torch::kDouble, MuonOptions(0.02)
                                            .variant(muon::MuonVariant::adamuon)
                                            .weight_decay_form(muon::WeightDecayForm::l2)
                                            .adjust_lr(muon::LrAdjust::match_rms_adamw));
  // A variant switched between steps through param_groups() reaches the engine.
  auto params = model_params(torch::kFloat);
  Muon opt = muon::torch::make_hybrid(params, MuonOptions(0.02), silent());
  set_grads(params, random_grads(params, 0));
  opt.step();
  static_cast<MuonOptions&>(opt.param_groups()[0].options()).variant(muon::MuonVariant::normuon);
  opt.step();
  CHECK(opt.muon_options().variant == muon::MuonVariant::normuon);
  CHECK(opt.buffer("hidden.weight", "second_momentum_buffer").numel() == 40);

  // QK-Clip on named parameters: the engine's rows, scaled as the library does.
  auto clipped = model_params(torch::kFloat);
  Reference<float> ref(clipped, MuonOptions().group_options());
  Muon clip = muon::torch::make_hybrid(clipped, MuonOptions(), silent());
  muon::QkClipHeads h;
  h.query = "hidden.weight";  // 4 heads of 6 rows
  h.key = "tall.weight";      // its first 24 rows
  h.heads = 4;
  const std::vector<double> maxima = {90.0, 250.0, 100.0, 1e4};
  CHECK(clip.qk_clip(h, maxima).clipped == 2);
  ref.opt.qk_clip(h, maxima);
  for (const auto& item : clipped) {
    INFO(item.key());
    CHECK(ref.same_bits(item.key(), item.value()));
  }
  const std::vector<double> with_nan = {90.0, std::nan(""), 100.0, 1.0};
  CHECK_THROWS_AS(clip.qk_clip(h, with_nan), muon::Error);
  for (const auto& item : clipped) CHECK(ref.same_bits(item.key(), item.value()));
  muon::QkClipHeads mixed = h;
  mixed.key = "no.such.weight";
  CHECK_THROWS_AS(clip.qk_clip(mixed, maxima), muon::Error);
}

TEST_CASE("MuonOptions map onto the library's group options, field by field", "[torch]") {
  const MuonOptions o = MuonOptions(0.03)
                            .momentum(0.8)
                            .nesterov(false)
                            .weight_decay(0.2)
                            .weight_decay_form(muon::WeightDecayForm::palm)
                            .momentum_kind(muon::MomentumKind::sum)
                            .ns_steps(7)
                            .ns_coefficients(muon::Schedule::polar_express())
                            .ns_eps(1e-6)
                            .ns_eps_mode(muon::EpsMode::add)
                            .ns_norm_divisor(1.05)
                            .ns_method(muon::NsMethod::standard)
                            .ns_normalization(muon::NsNormalization::aol)
                            .adjust_lr(muon::LrAdjust::match_rms_adamw)
                            .cautious_weight_decay(true)
                            .lr_scale(0.5)
                            .variant(muon::MuonVariant::adamuon)
                            .normuon_beta2(0.9)
                            .normuon_eps(1e-9)
                            .adamuon_beta2(0.99)
                            .adamuon_eps(1e-7)
                            .adamw_lr(4e-4)
                            .adamw_betas({0.8, 0.95})
                            .adamw_eps(1e-10)
                            .adamw_weight_decay(0.03);
  const muon::GroupOptions g = o.group_options();
  CHECK(g.muon.lr == 0.03);
  CHECK(g.muon.momentum == 0.8);
  CHECK(!g.muon.nesterov);
  CHECK(g.muon.weight_decay == 0.2);
  CHECK(g.muon.weight_decay_form == muon::WeightDecayForm::palm);
  CHECK(g.muon.momentum_kind == muon::MomentumKind::sum);
  CHECK(g.muon.ns.steps == 7);
  CHECK(g.muon.ns.schedule.name() == "polar_express");
  CHECK(g.muon.ns.eps == 1e-6);
  CHECK(g.muon.ns.eps_mode == muon::EpsMode::add);
  CHECK(g.muon.ns.norm_divisor == 1.05);
  CHECK(g.muon.ns.method == muon::NsMethod::standard);
  CHECK(g.muon.ns.normalization == muon::NsNormalization::aol);
  CHECK(g.muon.adjust_lr == muon::LrAdjust::match_rms_adamw);
  CHECK(g.muon.cautious_weight_decay);
  CHECK(g.muon.lr_scale == 0.5);
  CHECK(g.muon.variant == muon::MuonVariant::adamuon);
  CHECK(g.muon.normuon_beta2 == 0.9);
  CHECK(g.muon.normuon_eps == 1e-9);
  CHECK(g.muon.adamuon_beta2 == 0.99);
  CHECK(g.muon.adamuon_eps == 1e-7);
  CHECK(g.adamw.lr == 4e-4);
  CHECK(g.adamw.beta1 == 0.8);
  CHECK(g.adamw.beta2 == 0.95);
  CHECK(g.adamw.eps == 1e-10);
  CHECK(g.adamw.weight_decay == 0.03);

  // Back from the library's options (what a load does): the same fields.
  MuonOptions back;
  back.set_group_options(g);
  const muon::GroupOptions again = back.group_options();
  CHECK(again.muon.weight_decay_form == muon::WeightDecayForm::palm);
  CHECK(again.muon.ns.schedule.name() == "polar_express");
  CHECK(again.muon.lr_scale == 0.5);
  CHECK(again.muon.variant == muon::MuonVariant::adamuon);
  CHECK(again.muon.adamuon_eps == 1e-7);
  CHECK(again.adamw.beta2 == 0.95);
  CHECK(back.momentum() == 0.8);
  CHECK(!back.nesterov());

  // Out of range: refused naming the field.
  CHECK_THROWS_AS(MuonOptions().ns_steps(100).group_options(), muon::Error);
  CHECK_THROWS_AS(MuonOptions().adamw_betas({1.0, 0.9}).group_options(), muon::Error);
}

// ---- per-name options, shared memory, tied weights ---------------------------------

namespace {

using muon_test::contains;
using muon_test::error_message;

// A language model's skeleton with GPT-2's tie: the output head's weight IS
// the token embedding (registered in both modules, as GPT-2 ports do).
struct TiedHead : torch::nn::Module {
  torch::Tensor weight;
  explicit TiedHead(torch::Tensor shared) { weight = register_parameter("weight", shared); }
};
struct TinyLm : torch::nn::Module {
  torch::nn::Embedding wte{nullptr};
  torch::nn::Linear attn{nullptr};
  std::shared_ptr<TiedHead> lm_head;
  TinyLm() {
    wte = register_module("wte", torch::nn::Embedding(30, 8));
    attn = register_module("attn", torch::nn::Linear(torch::nn::LinearOptions(8, 24).bias(false)));
    lm_head = register_module("lm_head", std::make_shared<TiedHead>(wte->weight));
  }
};

}  // namespace

TEST_CASE("splits and heads keys that match no parameter are refused, naming the closest",
          "[torch]") {
  auto params = model_params(torch::kFloat);
  SECTION("by name (make_hybrid)") {
    HybridOptions typo = silent();
    typo.heads["hiden.weight"] = 4;  // hidden.weight would then be orthogonalized whole
    const std::string m =
        error_message([&] { muon::torch::make_hybrid(params, MuonOptions(0.02), typo); });
    INFO(m);
    CHECK(m.rfind("muon: heads: 'hiden.weight' matches no parameter", 0) == 0);
    CHECK(contains(m, "(closest: 'hidden.weight', "));

    HybridOptions split_typo = silent();
    split_typo.splits["conv2.wieght"] = {8, 8};
    const std::string s =
        error_message([&] { muon::torch::make_hybrid(params, MuonOptions(0.02), split_typo); });
    INFO(s);
    CHECK(s.rfind("muon: splits: 'conv2.wieght' matches no parameter", 0) == 0);
    CHECK(contains(s, "(closest: 'conv2.weight', "));
  }
  SECTION("unnamed parameters: group<g>.param<i>") {
    const std::vector<torch::Tensor> two = {torch::randn({8, 6}), torch::randn({8, 6})};
    HybridOptions h;
    h.log = nullptr;
    h.heads["group0.param2"] = 2;  // there is no third parameter
    const std::string m = error_message([&] {
      Muon opt(
          std::vector<torch::optim::OptimizerParamGroup>{torch::optim::OptimizerParamGroup(two)},
          MuonOptions(0.02), h);
    });
    INFO(m);
    CHECK(m.rfind("muon: heads: 'group0.param2' matches no parameter", 0) == 0);
    CHECK(contains(m, "'group0.param0'"));
    CHECK(contains(m, "'group0.param1'"));
    h.heads = {{"group0.param1", 2}};  // a key that matches applies
    Muon opt(std::vector<torch::optim::OptimizerParamGroup>{torch::optim::OptimizerParamGroup(two)},
             MuonOptions(0.02), h);
    CHECK(opt.core().param(1).blocks == std::vector<std::int64_t>{4, 4});
    CHECK(opt.core().param(0).blocks == std::vector<std::int64_t>{8});
  }
}

TEST_CASE("one tensor in two groups, or two parameters sharing memory, are refused naming both",
          "[torch]") {
  using Group = torch::optim::OptimizerParamGroup;
  torch::manual_seed(11);
  torch::Tensor w = torch::randn({8, 8}).requires_grad_();
  torch::Tensor v = torch::randn({8, 8}).requires_grad_();
  SECTION("the same tensor in two groups") {
    const std::string m = error_message([&] {
      Muon opt(std::vector<Group>{Group({w}), Group({v, w})}, MuonOptions(0.02));
    });
    INFO(m);
    CHECK(contains(m, "'group1.param1' (group 1) is the tensor 'group0.param0' of group 0 again"));
  }
  SECTION("a group added later: refused at the next step, nothing written") {
    Muon opt({w}, MuonOptions(0.02));
    opt.add_param_group(Group({v, w}));
    const torch::Tensor w0 = w.detach().clone(), v0 = v.detach().clone();
    w.mutable_grad() = torch::randn({8, 8});
    v.mutable_grad() = torch::randn({8, 8});
    const std::string m = step_error(opt);
    INFO(m);
    CHECK(contains(m, "'group1.param1' (group 1) is the tensor 'group0.param0' of group 0 again"));
    CHECK(torch::equal(w, w0));
    CHECK(torch::equal(v, v0));
    CHECK(opt.step_count() == 0);
  }
  SECTION("views that share elements: overlapping slices, a transpose, two dtypes on one buffer") {
    torch::Tensor storage = torch::randn({12, 20});
    const std::string slices = error_message([&] {
      Muon opt({storage.narrow(1, 0, 8), storage.narrow(1, 6, 8)}, MuonOptions(0.02));
    });
    INFO(slices);
    CHECK(contains(slices, "param: 'group0.param1' shares memory with 'group0.param0'"));
    torch::Tensor base = torch::randn({8, 12});
    const std::string transposed = error_message([&] {
      Muon opt({base, base.t()}, MuonOptions(0.02));
    });
    CHECK(contains(transposed, "'group0.param1' shares memory with 'group0.param0'"));
    // By name: two names of two views (not one tensor: not tied).
    torch::OrderedDict<std::string, torch::Tensor> named;
    named.insert("a.weight", storage.narrow(0, 0, 6));
    named.insert("b.weight", storage.narrow(0, 4, 6));
    const std::string by_name =
        error_message([&] { muon::torch::make_hybrid(named, MuonOptions(0.02), silent()); });
    CHECK(contains(by_name, "'b.weight' shares memory with 'a.weight'"));
    // Two dtypes over one buffer: two engines, which cannot see each other.
    std::vector<float> buffer(64, 0.5f);
    const std::string dtypes = error_message([&] {
      Muon opt({torch::from_blob(buffer.data(), {8, 8}),
                torch::from_blob(buffer.data() + 32, {4, 16}, torch::kBFloat16)},
               MuonOptions(0.02));
    });
    CHECK(contains(dtypes, "'group0.param1' shares memory with 'group0.param0'"));
  }
  SECTION("slices that interleave without sharing an element are two parameters") {
    torch::Tensor storage = torch::randn({12, 20});
    torch::Tensor left = storage.narrow(1, 0, 8), right = storage.narrow(1, 8, 8);
    std::vector<torch::Tensor> dense = {left.clone(), right.clone()};
    Muon strided({left, right}, MuonOptions(0.05));
    Muon reference(dense, MuonOptions(0.05));
    const torch::Tensor g1 = torch::randn({12, 8}), g2 = torch::randn({12, 8});
    left.mutable_grad() = g1.clone();
    right.mutable_grad() = g2.clone();
    dense[0].mutable_grad() = g1.clone();
    dense[1].mutable_grad() = g2.clone();
    strided.step();
    reference.step();
    CHECK(torch::allclose(left, dense[0], 1e-6, 1e-6));
    CHECK(torch::allclose(right, dense[1], 1e-6, 1e-6));
  }
}

TEST_CASE("tied weights are registered once and routed by either name", "[torch]") {
  torch::manual_seed(12);
  auto model = std::make_shared<TinyLm>();
  const auto named = model->named_parameters();
  REQUIRE(named.size() == 3);  // libtorch lists the tied tensor under both names
  REQUIRE(named["wte.weight"].unsafeGetTensorImpl() ==
          named["lm_head.weight"].unsafeGetTensorImpl());

  SECTION("make_hybrid: one parameter, AdamW, the table says why; one update per step") {
    std::ostringstream log;
    HybridOptions h;
    h.log = &log;
    Muon opt = muon::torch::make_hybrid(named, MuonOptions(0.02).adamw_lr(3e-3), h);
    const muon::RoutingReport r = opt.routing();
    REQUIRE(r.entries.size() == 2);
    CHECK(opt.name_of(model->lm_head->weight) == "wte.weight");
    CHECK(opt.route(model->lm_head->weight) == muon::Route::adamw);
    CHECK(contains(r.at("wte.weight").reason, "tied: one tensor with 'lm_head.weight'"));
    CHECK(contains(log.str(), "'lm_head.weight'"));

    // The library's optimizer over the two distinct tensors is the reference.
    torch::OrderedDict<std::string, torch::Tensor> distinct;
    distinct.insert("wte.weight", model->wte->weight);
    distinct.insert("attn.weight", model->attn->weight);
    Reference<float> ref(distinct, MuonOptions(0.02).adamw_lr(3e-3).group_options());
    for (int s = 0; s < 2; ++s) {
      const auto g = random_grads(distinct, s);
      set_grads(distinct, g);
      opt.step();
      ref.step(g);
    }
    for (const auto& item : distinct) {
      INFO(item.key());
      CHECK(ref.same_bits(item.key(), item.value()));
    }
    CHECK(opt.report().updated == 2);
  }
  SECTION("names that disagree: AdamW, for the name that says so") {
    torch::Tensor shared = torch::randn({30, 8}).requires_grad_();
    torch::OrderedDict<std::string, torch::Tensor> n;
    n.insert("tok.weight", shared);  // a 2-D weight by its own name (Muon)
    n.insert("lm_head.weight", shared);
    Muon opt = muon::torch::make_hybrid(n, MuonOptions(0.02), silent());
    CHECK(opt.route(shared) == muon::Route::adamw);
    CHECK(opt.routing().at("tok.weight").reason ==
          "tied: one tensor with 'lm_head.weight', updated once; 'lm_head.weight': name contains "
          "'lm_head' (embedding/output head)");
  }
  SECTION("model->parameters(): the same tensor twice in one group is one parameter") {
    Muon opt(model->parameters(), MuonOptions(0.02));
    CHECK(opt.routing().entries.size() == 2);
    CHECK(opt.name_of(model->lm_head->weight) == "group0.param0");
    model->wte->weight.mutable_grad() = torch::randn({30, 8});
    model->attn->weight.mutable_grad() = torch::randn({24, 8});
    opt.step();
    CHECK(opt.report().updated == 2);
  }
  SECTION("heads by either name; two entries for one tensor are refused") {
    torch::Tensor shared = torch::randn({24, 8}).requires_grad_();
    torch::OrderedDict<std::string, torch::Tensor> n;
    n.insert("q.weight", shared);
    n.insert("q_alias.weight", shared);
    HybridOptions h = silent();
    h.heads["q_alias.weight"] = 4;
    Muon opt = muon::torch::make_hybrid(n, MuonOptions(0.02), h);
    CHECK(opt.core().param(0).blocks == std::vector<std::int64_t>(4, 6));
    h.heads["q.weight"] = 2;
    const std::string m = error_message([&] { muon::torch::make_hybrid(n, MuonOptions(0.02), h); });
    CHECK(contains(m, "heads: 'q.weight' and 'q_alias.weight' are one tensor (tied weights)"));
  }
}

// ---- schedulers, metrics ------------------------------------------------------------

TEST_CASE("set_lr keeps the ratio of the lr pair set by hand, also when that lr is 0", "[torch]") {
  // Built with lr 0: no ratio, so a scheduler leaves adamw_lr as given.
  MuonOptions from_zero = MuonOptions(0).adamw_lr(1e-3);
  from_zero.set_lr(0.01);
  CHECK(from_zero.adamw_lr() == 1e-3);
  from_zero.set_lr(0.02);
  CHECK(from_zero.adamw_lr() == 1e-3);
  CHECK(from_zero.lr() == 0.02);

  // Built with the peak pair: the ratio 1e-3 / 0.02 through 0 and back.
  MuonOptions peak = MuonOptions(0.02).adamw_lr(1e-3);
  peak.set_lr(0.0);
  CHECK(peak.adamw_lr() == 0.0);
  peak.set_lr(0.01);
  CHECK(std::abs(peak.adamw_lr() - 5e-4) < 1e-18);
  peak.set_lr(0.04);
  CHECK(std::abs(peak.adamw_lr() - 2e-3) < 1e-18);
  // A pair set by hand is the new ratio.
  peak.lr(0.01).adamw_lr(3e-3);
  peak.set_lr(0.02);
  CHECK(std::abs(peak.adamw_lr() - 6e-3) < 1e-18);
}

TEST_CASE("a run with an LR scheduler resumes bitwise when the scheduler is stepped before load",
          "[torch]") {
  // libtorch saves no scheduler and torch::load restores the lr: the
  // recipe (docs/torch.md) steps a new scheduler as often as the run did,
  // THEN loads.
  const int total = 7, saved_at = 3;
  const auto options = MuonOptions(0.02).adamw_lr(4e-3);
  auto params = model_params(torch::kFloat);
  Muon opt = muon::torch::make_hybrid(params, options, silent());
  torch::optim::StepLR scheduler(opt, /*step_size=*/2, /*gamma=*/0.5);
  const muon_test::TempDir dir("torch_resume");
  const std::string path = dir.file("optimizer.pt");
  torch::OrderedDict<std::string, torch::Tensor> at_save;
  std::vector<std::pair<double, double>> used;  // the lr pair of each step
  const auto pair_of = [](Muon& o) {
    const auto& g = static_cast<const MuonOptions&>(o.param_groups()[0].options());
    return std::make_pair(g.lr(), g.adamw_lr());
  };
  for (int s = 0; s < total; ++s) {
    if (s == saved_at) {
      torch::save(opt, path);
      at_save = clone_params(params);
    }
    used.push_back(pair_of(opt));
    set_grads(params, random_grads(params, s));
    opt.step();
    scheduler.step();
  }
  REQUIRE(used[saved_at].first == 0.01);  // the decay happened before the save

  auto resumed_params = clone_params(at_save);
  Muon resumed = muon::torch::make_hybrid(resumed_params, options, silent());
  torch::optim::StepLR resumed_scheduler(resumed, 2, 0.5);
  for (int s = 0; s < saved_at; ++s) resumed_scheduler.step();  // first the scheduler,
  torch::load(resumed, path);                                   // then the state
  for (int s = saved_at; s < total; ++s) {
    INFO("step " << s);
    CHECK(pair_of(resumed) == used[std::size_t(s)]);
    set_grads(resumed_params, random_grads(params, s));
    resumed.step();
    resumed_scheduler.step();
  }
  for (const auto& item : params) {
    INFO(item.key());
    CHECK(torch::equal(item.value(), resumed_params[item.key()]));
  }

  // The other order decays the restored lr a second time.
  auto wrong_params = clone_params(at_save);
  Muon wrong = muon::torch::make_hybrid(wrong_params, options, silent());
  torch::optim::StepLR wrong_scheduler(wrong, 2, 0.5);
  torch::load(wrong, path);
  for (int s = 0; s < saved_at; ++s) wrong_scheduler.step();
  CHECK(pair_of(wrong).first == 0.005);
}

TEST_CASE("metrics and on_step reach every parameter of every dtype", "[torch]") {
  torch::manual_seed(13);
  const auto f64 = torch::TensorOptions().dtype(torch::kDouble);
  torch::Tensor w = torch::randn({6, 20}, f64).requires_grad_();  // Muon, double
  torch::Tensor gain = torch::ones({6}).requires_grad_();         // AdamW, float
  torch::Tensor f = torch::randn({8, 8}).requires_grad_();        // Muon, float
  const double mu = 0.9, beta1 = 0.85;
  Muon opt({w, gain, f}, MuonOptions(0.02).momentum(mu).adamw_betas({beta1, 0.99}));
  int calls = 0;
  std::int64_t seen_step = 0;
  std::size_t seen_count = 0;
  opt.on_step([&](const muon::StepMetrics& m) {
    ++calls;
    seen_step = m.step;
    seen_count = m.params.size();
  });
  CHECK(opt.metrics_enabled());
  const torch::Tensor gw = torch::randn({6, 20}, f64), gg = torch::randn({6}),
                      gf = torch::randn({8, 8});
  w.mutable_grad() = gw.clone();
  gain.mutable_grad() = gg.clone();
  f.mutable_grad() = gf.clone();
  const Eigen::MatrixXd w0 = as_matrix(w);
  opt.step();
  CHECK(calls == 1);
  CHECK(seen_step == 1);
  CHECK(seen_count == 3);
  const muon::StepMetrics& m = opt.metrics();
  REQUIRE(m.params.size() == 3);
  CHECK(m.params[0].name == "group0.param0");  // registration order across the dtypes
  CHECK(m.params[1].name == "group0.param1");
  CHECK(m.params[2].name == "group0.param2");

  // The double Muon parameter against the float64 model: from a zero buffer
  // m = (1 - mu) g, the Nesterov input g + mu (m - g), Jordan's NS5.
  const Eigen::MatrixXd g = as_matrix(gw);
  const Eigen::MatrixXd buf = (1 - mu) * g;
  const Eigen::MatrixXd update = newton_schulz_model(g + mu * (buf - g), 5, 1e-7);
  const Eigen::MatrixXd gram = update * update.transpose();
  const muon::ParamMetrics& pw = m.params[0];
  CHECK(pw.route == muon::Route::muon);
  CHECK(pw.updated);
  CHECK(std::abs(pw.grad_norm - g.norm()) < 1e-12 * g.norm());
  CHECK(std::abs(pw.momentum_norm - buf.norm()) < 1e-12 * buf.norm());
  CHECK(std::abs(pw.update_rms - update.norm() / std::sqrt(double(update.size()))) < 1e-10);
  CHECK(std::abs(pw.orthogonality_error - (gram - Eigen::MatrixXd::Identity(6, 6)).norm()) < 1e-9);
  const double sigma_max = Eigen::JacobiSVD<Eigen::MatrixXd>(as_matrix(w)).singularValues()(0);
  CHECK(pw.spectral_norm > 0.5 * sigma_max);  // a power-iteration estimate: a lower bound
  CHECK(pw.spectral_norm <= sigma_max * (1 + 1e-9));
  CHECK(!(as_matrix(w) - w0).isZero());

  // The float AdamW gain: exp_avg = (1 - beta1) g after one step.
  const muon::ParamMetrics& pg = m.params[1];
  CHECK(pg.route == muon::Route::adamw);
  const double gg_norm = gg.norm().item<double>();
  CHECK(std::abs(pg.grad_norm - gg_norm) < 1e-6 * gg_norm);
  CHECK(std::abs(pg.momentum_norm - (1 - beta1) * gg_norm) < 1e-6 * gg_norm);
  CHECK(std::isnan(pg.update_rms));
  CHECK(std::abs(m.params[2].grad_norm - gf.norm().item<double>()) <
        1e-6 * gf.norm().item<double>());

  opt.step();  // the gradients are still there
  CHECK(calls == 2);
  CHECK(opt.metrics().step == 2);
  opt.on_step(nullptr);  // the hook removed, the metrics still on
  opt.step();
  CHECK(calls == 2);
  CHECK(opt.metrics().step == 3);
  opt.enable_metrics(false);
  opt.step();
  CHECK(opt.metrics().step == 3);
}

// ---- checkpoints restore every option ------------------------------------------------

namespace {

// The MuonOptions options in which a and b differ: every row of the option
// table, read through its getter, and the route, so an option a load
// forgets is named.
std::vector<std::string> fields_that_differ(const MuonOptions& a, const MuonOptions& b) {
  std::vector<std::string> d;
#define MUON_TEST_COMPARE(KEY, PART, MEMBER, TYPE, ...)                                   \
  if (muon::optim::Codec<TYPE>::text(a.KEY()) != muon::optim::Codec<TYPE>::text(b.KEY())) \
    d.push_back(#KEY);
  MUON_GROUP_OPTIONS(MUON_TEST_COMPARE)
#undef MUON_TEST_COMPARE
  if (a.route() != b.route()) d.push_back("route");
  return d;
}

// Sets the option `key` of `o` to its value in `g`, through its setter.
void set_through_accessor(MuonOptions& o, const std::string& key, const muon::GroupOptions& g) {
#define MUON_TEST_SET(KEY, ...) \
  if (key == #KEY) o.KEY(muon::optim::option::KEY::of(g));
  MUON_GROUP_OPTIONS(MUON_TEST_SET)
#undef MUON_TEST_SET
}

// Every option away from its default, through the setters (the route stays
// automatic: a load keeps the route the optimizer was built with, by
// design; and no adjust_lr_fn, which a checkpoint cannot hold): each row
// takes another valid value in turn, then the schedule becomes one of
// two custom rows that cycle.
MuonOptions every_option_changed() {
  muon::GroupOptions g;
  for (const muon::optim::OptionRow& row : muon::optim::option_table())
    if (row.type != muon::optim::OptionType::function) g = muon_test::other_value(g, row);
  g.muon.ns.schedule = muon::Schedule({{3.0, -3.2, 1.2}, {1.875, -1.25, 0.375}}, 1.02, "mine",
                                      muon::Schedule::PastEnd::cycle);
  MuonOptions o;
  for (const muon::optim::OptionRow& row : muon::optim::option_table())
    set_through_accessor(o, row.key, g);
  return o;
}

// A value of the row's type outside its range (nullopt: the type has none).
template <class Row>
std::optional<typename Row::type> out_of_range(Row) {
  using T = typename Row::type;
  if constexpr (std::is_same<T, double>::value || std::is_same<T, int>::value)
    return static_cast<T>(Row::check.lo - 1);
  else if constexpr (std::is_same<T, std::optional<double>>::value)
    return T(Row::check.lo / 2);
  else if constexpr (std::is_enum<T>::value)
    return static_cast<T>(97);
  else
    return std::nullopt;
}

}  // namespace

TEST_CASE("every option of the table is a MuonOptions setter and getter of its key",
          "[torch][options]") {
  // One row at a time through its own setter: the library's options get
  // that row and nothing else, the getter reads it back, and a load's way
  // back (set_group_options) gives the same MuonOptions.
  for (const muon::optim::OptionRow& row : muon::optim::option_table()) {
    INFO("option " << row.key);
    const muon::GroupOptions changed = muon_test::other_value(muon::GroupOptions(), row);
    MuonOptions o;
    set_through_accessor(o, row.key, changed);
    const muon::GroupOptions got = o.group_options();
    for (const muon::optim::OptionRow& r : muon::optim::option_table()) {
      INFO("reading " << r.key);
      CHECK(r.text(got) == r.text(changed));
    }
    CHECK(fields_that_differ(o, MuonOptions()) == std::vector<std::string>{row.key});
    MuonOptions back;
    back.set_group_options(changed);
    CHECK(fields_that_differ(back, o).empty());
  }
  // A value out of a row's range is refused when the optimizer reads the
  // options, naming the row's key.
  std::size_t refused = 0;
#define MUON_TEST_REFUSED(KEY, ...)                                                       \
  if (const auto bad = out_of_range(muon::optim::option::KEY{})) {                        \
    INFO("option " #KEY);                                                                 \
    ++refused;                                                                            \
    CHECK(muon_test::contains(                                                            \
        muon_test::error_message([&] { (void)MuonOptions().KEY(*bad).group_options(); }), \
        "muon: " #KEY ": "));                                                             \
  }
  MUON_GROUP_OPTIONS(MUON_TEST_REFUSED)
#undef MUON_TEST_REFUSED
  CHECK(refused >= 20);
  // A step count beyond int is refused by the setter (it cannot be held).
  CHECK(muon_test::contains(
      muon_test::error_message([] { (void)MuonOptions().ns_steps(std::int64_t(1) << 40); }),
      "muon: ns_steps: "));
  // adamw_betas is the pair of rows adamw_beta1 and adamw_beta2.
  const MuonOptions betas = MuonOptions().adamw_betas({0.8, 0.9});
  CHECK(betas.adamw_beta1() == 0.8);
  CHECK(betas.adamw_beta2() == 0.9);
  CHECK(MuonOptions().adamw_beta2(0.95).adamw_betas() == std::make_tuple(0.9, 0.95));
}

TEST_CASE("torch::load restores every libtorch-side option, checked field by field",
          "[torch][checkpoint]") {
  const MuonOptions every = every_option_changed();
  std::vector<std::string> all_but_route = fields_that_differ(every, MuonOptions());
  // Every option but the route and adjust_lr_fn moved.
  CHECK(all_but_route.size() == muon::optim::kOptionCount - 1);
  CHECK(fields_that_differ(MuonOptions(), MuonOptions().route(muon::Route::muon)) ==
        std::vector<std::string>{"route"});

  // Matrices and a gain, so routes do not depend on the options.
  torch::manual_seed(14);
  torch::OrderedDict<std::string, torch::Tensor> params;
  params.insert("hidden.weight", torch::randn({24, 40}).mul_(0.2).requires_grad_());
  params.insert("tall.weight", torch::randn({40, 12}).mul_(0.2).requires_grad_());
  params.insert("norm.weight", torch::ones({24}).requires_grad_());
  Muon saved = muon::torch::make_hybrid(params, every, silent());
  set_grads(params, random_grads(params, 0));
  saved.step();
  const muon_test::TempDir dir("torch_options");
  const std::string path = dir.file("optimizer.pt");
  torch::save(saved, path);

  auto twin = clone_params(params);
  Muon loaded = muon::torch::make_hybrid(twin, MuonOptions(), silent());
  torch::load(loaded, path);
  const auto options = [](const Muon& o) {
    return static_cast<const MuonOptions&>(o.param_groups()[0].options());
  };
  CHECK(fields_that_differ(options(loaded), options(saved)).empty());
  // The next step uses them: the same bits, and the options still equal,
  // on the libtorch side and in the engine.
  const auto g = random_grads(params, 1);
  set_grads(params, g);
  set_grads(twin, g);
  saved.step();
  loaded.step();
  CHECK(fields_that_differ(options(loaded), options(saved)).empty());
  muon::GroupOptions in_engine;
  in_engine.muon = loaded.muon_options();
  in_engine.adamw = loaded.adamw_options();
  MuonOptions engine_side;
  engine_side.set_group_options(in_engine);
  CHECK(fields_that_differ(engine_side, every).empty());
  for (const auto& item : params) {
    INFO(item.key());
    CHECK(torch::equal(item.value(), twin[item.key()]));
  }
}
