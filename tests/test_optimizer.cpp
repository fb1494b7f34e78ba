// SPDX-License-Identifier: MIT
// The optimizer's step checked against the update rules written out again
// here, in double: momentum (EMA/sum, Nesterov), per-block Newton–Schulz (the
// textbook iteration of test_support.hpp with the published coefficients, or
// the exact SVD polar factor once NS converges), the lr rules from their
// formulas, decoupled weight decay in torch's order, AdamW with bias
// correction, schedules. Plus: skipping, determinism, threads, errors leaving
// everything untouched, the transactional step, Eigen views. (That a step
// allocates nothing is proved in test_no_alloc.cpp.)

#include <muon/optimizer.hpp>
#include <muon/orthogonalize.hpp>
#include <muon/reference.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <muon/extern_templates.hpp>

#include "catch.hpp"
#include "test_support.hpp"

namespace {

// Overwrites in place: the optimizer holds views of these buffers, so they
// must never be reallocated (no move-assignment of a new vector).
template <class T>
void refill(std::vector<T>& dst, const std::vector<T>& src) {
  std::copy(src.begin(), src.end(), dst.begin());
}

using Index = Eigen::Index;
using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

std::vector<double> gaussian(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = normal(rng);
  return v;
}

template <class T>
std::vector<T> cast_vec(const std::vector<double>& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<T>(v[i]);
  return out;
}

template <class T>
double as_double(T v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
double as_double<double>(double v) {
  return v;
}

template <class T>
RowMat to_rowmat(const std::vector<T>& v, Index rows, Index cols) {
  RowMat M(rows, cols);
  for (Index i = 0; i < rows * cols; ++i) M.data()[i] = as_double(v[static_cast<std::size_t>(i)]);
  return M;
}

template <class T>
double max_abs_diff(const std::vector<T>& got, const RowMat& want) {
  double d = 0;
  for (Index i = 0; i < want.size(); ++i)
    d = std::max(d, std::abs(as_double(got[static_cast<std::size_t>(i)]) - want.data()[i]));
  return d;
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <class T>
double tolerance() {
  return std::is_same<T, double>::value ? 1e-11 : 2e-5;
}

// The lr rules from their definitions (A = out rows, B = in columns).
double ref_scale(const std::string& rule, double A, double B) {
  if (rule == "original") return std::sqrt(std::max(1.0, A / B));
  if (rule == "match_rms_adamw") return 0.2 * std::sqrt(std::max(A, B));
  if (rule == "spectral") return std::sqrt(A / B);
  return 1.0;
}

// torch.optim.Muon's Newton–Schulz (Jordan x 5, X / max(||X||_F, 1e-7)),
// written in the test: plain Eigen products in double.
Eigen::MatrixXd torch_ns(const Eigen::MatrixXd& X) {
  return muon_test::plain_newton_schulz(X, muon_test::paper_jordan(), 5, 1e-7, /*eps_max=*/true);
}

// Muon on one parameter, in double, written from the definitions.
struct RefMuon {
  double lr = 1e-3, wd = 0.1, mu = 0.95;
  bool nesterov = true, ema = true;
  std::string rule = "original";
  RowMat m;

  void step(RowMat& W, const RowMat& G, const std::vector<Index>& blocks, double lr_t,
            double mu_t) {
    if (m.size() == 0) m = RowMat::Zero(G.rows(), G.cols());
    m = ema ? RowMat(mu_t * m + (1 - mu_t) * G) : RowMat(mu_t * m + G);
    RowMat X = m;
    if (nesterov) X = ema ? RowMat((1 - mu_t) * G + mu_t * m) : RowMat(G + mu_t * m);
    Index r0 = 0;
    for (Index rows : blocks) {
      const Eigen::MatrixXd Xb = X.middleRows(r0, rows);
      const Eigen::MatrixXd O = torch_ns(Xb);
      const double lr_adj = lr_t * ref_scale(rule, double(rows), double(G.cols()));
      W.middleRows(r0, rows) = W.middleRows(r0, rows) * (1 - lr_t * wd) - lr_adj * O;
      r0 += rows;
    }
  }
  void step(RowMat& W, const RowMat& G, const std::vector<Index>& blocks) {
    step(W, G, blocks, lr, mu);
  }
};

// torch.optim.AdamW's update, in double.
struct RefAdamW {
  double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
  RowMat m, v;
  int t = 0;
  void step(RowMat& W, const RowMat& G, double lr_t) {
    if (m.size() == 0) {
      m = RowMat::Zero(G.rows(), G.cols());
      v = m;
    }
    ++t;
    W *= (1 - lr_t * wd);
    m = b1 * m + (1 - b1) * G;
    v = b2 * v + (1 - b2) * G.cwiseProduct(G);
    const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
    W.array() -= (lr_t / bc1) * m.array() / (v.array().sqrt() / std::sqrt(bc2) + eps);
  }
};

using muon_test::contains;
using muon_test::error_message;

}  // namespace

TEMPLATE_TEST_CASE("2-D matrices and a bias: steps match the double reference", "[optimizer]",
                   float, double) {
  using T = TestType;
  // One wide and one tall matrix (the tall one has lr scale sqrt(12/5)) and a bias.
  const Index wr = 6, wc = 10, tr = 12, tc = 5, nb = 7;
  auto w = cast_vec<T>(gaussian(wr * wc, 1)), t = cast_vec<T>(gaussian(tr * tc, 2));
  auto b = cast_vec<T>(gaussian(nb, 3));
  std::vector<T> gw(w.size()), gt(t.size()), gb(b.size());
  RowMat Rw = to_rowmat(w, wr, wc), Rt = to_rowmat(t, tr, tc), Rb = to_rowmat(b, 1, nb);

  const auto rule = GENERATE(as<std::string>{}, "original", "match_rms_adamw", "spectral");
  const bool nesterov = GENERATE(true, false);
  const bool ema = GENERATE(true, false);
  INFO("rule " << rule << " nesterov " << nesterov << " ema " << ema);

  muon::MuonGroupOptions mo;
  mo.with_lr(0.02).with_weight_decay(0.5).with_momentum(0.9).with_nesterov(nesterov);
  mo.with_momentum_kind(ema ? muon::MomentumKind::ema : muon::MomentumKind::sum);
  mo.with_adjust_lr(*muon::lr_adjust_from_name(rule));
  muon::AdamWOptions ao;
  ao.lr = 0.01;
  ao.weight_decay = 0.2;
  muon::Optimizer<T> opt(mo, ao);
  opt.add_param("wide", {w.data(), {wr, wc}}, {gw.data(), {wr, wc}});
  opt.add_param("tall", {t.data(), {tr, tc}}, {gt.data(), {tr, tc}});
  opt.add_param("bias", {b.data(), {nb}}, {gb.data(), {nb}});

  RefMuon rw, rt;
  for (RefMuon* r : {&rw, &rt}) {
    r->lr = 0.02, r->wd = 0.5, r->mu = 0.9, r->nesterov = nesterov, r->ema = ema, r->rule = rule;
  }
  RefAdamW ra;
  ra.lr = 0.01, ra.wd = 0.2;

  for (int k = 0; k < 3; ++k) {
    refill(gw, cast_vec<T>(gaussian(gw.size(), 100 + k)));
    refill(gt, cast_vec<T>(gaussian(gt.size(), 200 + k)));
    refill(gb, cast_vec<T>(gaussian(gb.size(), 300 + k)));
    const auto& report = opt.step();
    REQUIRE(report.status == muon::StepStatus::ok);
    REQUIRE(report.updated == 3);
    rw.step(Rw, to_rowmat(gw, wr, wc), {wr});
    rt.step(Rt, to_rowmat(gt, tr, tc), {tr});
    ra.step(Rb, to_rowmat(gb, 1, nb), ra.lr);
    REQUIRE(max_abs_diff(w, Rw) < tolerance<T>());
    REQUIRE(max_abs_diff(t, Rt) < tolerance<T>());
    REQUIRE(max_abs_diff(b, Rb) < tolerance<T>());
  }
  REQUIRE(opt.param_steps("wide") == 3);
  REQUIRE(opt.step_count() == 3);
}

TEST_CASE("weight decay uses the unadjusted lr and precedes the update", "[optimizer]") {
  // With NS converged (quintic, 40 steps) the update is the exact polar factor
  // U V^T of the Nesterov input, independent of muon's Newton–Schulz. From
  // zero momentum that input is a positive multiple of g, and the polar
  // factor ignores positive scale, so O = polar(g).
  const Index r = 9, c = 4;  // tall: lr scale sqrt(9/4) = 1.5
  auto w = gaussian(r * c, 11), g = gaussian(r * c, 12);
  const RowMat W0 = to_rowmat(w, r, c), G = to_rowmat(g, r, c);
  muon::MuonGroupOptions mo;
  mo.with_lr(0.1).with_weight_decay(2.0).with_ns(
      muon::NewtonSchulzOptions(muon::Schedule::quintic(), 40));
  muon::Optimizer<double> opt(mo);
  opt.add_param("w", {w.data(), {r, c}}, {g.data(), {r, c}});
  opt.step();
  const Eigen::MatrixXd O = muon::reference::polar_svd(Eigen::MatrixXd(G));
  const RowMat want = W0 * (1 - 0.1 * 2.0) - 0.1 * 1.5 * O;
  REQUIRE(max_abs_diff(w, want) < 1e-9);
  // The two wrong variants differ by far more than that.
  const RowMat decay_after = (W0 - 0.1 * 1.5 * O) * (1 - 0.1 * 2.0);
  const RowMat decay_adjusted = W0 * (1 - 0.15 * 2.0) - 0.15 * O;
  REQUIRE((decay_after - want).cwiseAbs().maxCoeff() > 1e-3);
  REQUIRE((decay_adjusted - want).cwiseAbs().maxCoeff() > 1e-3);
}

TEST_CASE("each weight-decay form and the extra lr factor follow their equations",
          "[optimizer][decay_form]") {
  // lambda = 0.3, eta = 0.2, a 6 x 4 tall matrix (original scale sqrt(6/4)),
  // lr_scale 0.7: W1 = W0 * multiplier - eta * sqrt(1.5) * 0.7 * polar(G).
  const Index r = 6, c = 4;
  const double eta = 0.2, lambda = 0.3, factor = 0.7;
  const struct {
    muon::WeightDecayForm form;
    double multiplier;  // written from the definitions
  } cases[] = {{muon::WeightDecayForm::decoupled, 1 - eta * lambda},
               {muon::WeightDecayForm::independent, 1 - lambda},
               {muon::WeightDecayForm::palm, 1 - eta * eta * lambda}};
  for (const auto& k : cases) {
    INFO(muon::weight_decay_form_name(k.form));
    auto w = gaussian(r * c, 41), g = gaussian(r * c, 42);
    const RowMat W0 = to_rowmat(w, r, c), G = to_rowmat(g, r, c);
    muon::MuonGroupOptions mo;
    mo.with_lr(eta).with_weight_decay(lambda).with_weight_decay_form(k.form).with_lr_scale(factor);
    mo.with_momentum(0).with_nesterov(false);
    mo.with_ns(muon::NewtonSchulzOptions(muon::Schedule::quintic(), 40));
    muon::Optimizer<double> opt(mo);
    opt.add_param("w", {w.data(), {r, c}}, {g.data(), {r, c}});
    opt.step();
    const Eigen::MatrixXd O = muon::reference::polar_svd(Eigen::MatrixXd(G));
    const RowMat want = W0 * k.multiplier - eta * std::sqrt(1.5) * factor * O;
    REQUIRE(max_abs_diff(w, want) < 1e-9);
    REQUIRE(std::abs(opt.routing().at("w").lr_scale - std::sqrt(1.5) * factor) < 1e-12);

    // The form and the factor survive a checkpoint (and a default group
    // writes neither key, so older readers still read it).
    std::stringstream ss;
    opt.save(ss);
    muon::Optimizer<double> back;
    back.add_param("w", {w.data(), {r, c}}, {g.data(), {r, c}});
    back.load(ss);
    REQUIRE(back.muon_options().weight_decay_form == k.form);
    REQUIRE(back.muon_options().lr_scale == factor);
  }
  // A cycling schedule keeps cycling through a checkpoint.
  {
    auto w = gaussian(r * c, 43), g = gaussian(r * c, 44);
    muon::MuonGroupOptions mo;
    mo.with_ns(muon::NewtonSchulzOptions(
        muon::Schedule::cubic5().with_past_end(muon::Schedule::PastEnd::cycle), 7));
    muon::Optimizer<double> opt(mo);
    opt.add_param("w", {w.data(), {r, c}}, {g.data(), {r, c}});
    std::stringstream ss;
    opt.save(ss);
    muon::Optimizer<double> back;
    back.add_param("w", {w.data(), {r, c}}, {g.data(), {r, c}});
    back.load(ss);
    REQUIRE(back.muon_options().ns.schedule.past_end() == muon::Schedule::PastEnd::cycle);
    REQUIRE(back.muon_options().ns.schedule.name() == "cubic5");
    REQUIRE(back.muon_options().ns.schedule.at(5).a == 3.3656576);
  }
  REQUIRE_THROWS_AS(muon::MuonGroupOptions().with_lr_scale(0).validate(), muon::Error);
  REQUIRE_THROWS_AS(muon::MuonGroupOptions()
                        .with_weight_decay_form(static_cast<muon::WeightDecayForm>(7))
                        .validate(),
                    muon::Error);
}

TEST_CASE("cautious weight decay decays only where update and parameter agree in sign",
          "[optimizer]") {
  const Index r = 5, c = 8;
  auto w = gaussian(r * c, 21), g = gaussian(r * c, 22);
  const RowMat W0 = to_rowmat(w, r, c), G = to_rowmat(g, r, c);
  muon::MuonGroupOptions mo;
  mo.with_lr(0.05).with_weight_decay(1.0).with_cautious_weight_decay(true);
  mo.with_ns(muon::NewtonSchulzOptions(muon::Schedule::quintic(), 40));
  muon::Optimizer<double> opt(mo);
  opt.add_param("w", {w.data(), {r, c}}, {g.data(), {r, c}});
  opt.step();
  const Eigen::MatrixXd O = muon::reference::polar_svd(Eigen::MatrixXd(G));
  RowMat want = W0;
  int decayed = 0;
  for (Index i = 0; i < r; ++i)
    for (Index j = 0; j < c; ++j) {
      if (O(i, j) * W0(i, j) > 0) {
        want(i, j) *= 1 - 0.05;
        ++decayed;
      }
      want(i, j) -= 0.05 * O(i, j);  // scale sqrt(max(1, 5/8)) = 1
    }
  REQUIRE(decayed > 0);
  REQUIRE(decayed < r * c);
  REQUIRE(max_abs_diff(w, want) < 1e-9);
}

TEST_CASE("conv filter: lr scale from the flattened (out, in*kh*kw) shape", "[optimizer]") {
  // (16, 1, 2, 2) flattens to 16 x 4: original scale sqrt(16/4) = 2 (scaling
  // by in=1 alone, as some ports do, would give 4).
  const Index o = 16, i = 1, kh = 2, kw = 2;
  auto f = gaussian(o * i * kh * kw, 31);
  std::vector<double> g(f.size());
  RowMat R = to_rowmat(f, o, i * kh * kw);
  const auto rule = GENERATE(as<std::string>{}, "original", "match_rms_adamw");
  muon::MuonGroupOptions mo;
  mo.with_lr(0.01).with_adjust_lr(*muon::lr_adjust_from_name(rule));
  muon::Optimizer<double> opt(mo);
  opt.add_param("conv1.weight", {f.data(), {o, i, kh, kw}}, {g.data(), {o, i, kh, kw}});
  REQUIRE(std::abs(opt.routing().at("conv1.weight").lr_scale - ref_scale(rule, 16, 4)) < 1e-12);
  RefMuon ref;
  ref.lr = 0.01, ref.rule = rule;
  for (int k = 0; k < 2; ++k) {
    refill(g, gaussian(g.size(), 40 + k));
    opt.step();
    ref.step(R, to_rowmat(g, o, i * kh * kw), {o});
    REQUIRE(max_abs_diff(f, R) < 1e-11);
  }
}

TEMPLATE_TEST_CASE("3-D batch: each matrix orthogonalized and scaled on its own", "[optimizer]",
                   float, double) {
  using T = TestType;
  const Index b = 3, r = 6, c = 4;  // each 6 x 4: scale sqrt(1.5)
  auto p = cast_vec<T>(gaussian(b * r * c, 51));
  std::vector<T> g(p.size());
  RowMat R = to_rowmat(p, b * r, c);
  muon::Optimizer<T> opt(muon::MuonGroupOptions().with_lr(0.03));
  opt.add_param("experts.w", {p.data(), {b, r, c}}, {g.data(), {b, r, c}});
  REQUIRE(opt.route("experts.w") == muon::Route::muon);
  RefMuon ref;
  ref.lr = 0.03;
  for (int k = 0; k < 2; ++k) {
    refill(g, cast_vec<T>(gaussian(g.size(), 60 + k)));
    opt.step();
    ref.step(R, to_rowmat(g, b * r, c), {r, r, r});
    REQUIRE(max_abs_diff(p, R) < tolerance<T>());
  }
}

TEST_CASE("per-head orthogonalization: heads equal row blocks, each with its own lr scale",
          "[optimizer][heads]") {
  // A (4 heads * 3) x 8 projection: 4 blocks of 3 x 8 (scale 1 each), against
  // the reference Muon on those blocks; a 4-D filter per head too.
  const Index heads = 4, d_head = 3, d = 8;
  auto p = gaussian(heads * d_head * d, 91);
  std::vector<double> g(p.size());
  RowMat R = to_rowmat(p, heads * d_head, d);
  muon::Optimizer<double> opt(muon::MuonGroupOptions().with_lr(0.03));
  muon::ParamOptions po;
  po.heads = heads;
  opt.add_param("attn.q_proj.weight", {p.data(), {heads * d_head, d}},
                {g.data(), {heads * d_head, d}}, po);
  CHECK(contains(opt.routing().at("attn.q_proj.weight").reason, "per head: 4 blocks of 3 rows"));
  CHECK(opt.core().param(0).blocks == std::vector<std::int64_t>(4, 3));
  RefMuon ref;
  ref.lr = 0.03;
  for (int k = 0; k < 2; ++k) {
    refill(g, gaussian(g.size(), 95 + k));
    opt.step();
    ref.step(R, to_rowmat(g, heads * d_head, d), std::vector<Index>(heads, d_head));
    REQUIRE(max_abs_diff(p, R) < 1e-11);
  }
  std::vector<double> w(30), gw(30), f(2 * 6 * 3 * 3), gf(f.size());
  muon::ParamOptions bad = po;
  bad.heads = 4;  // 30 rows
  CHECK(contains(error_message([&] {
                   opt.add_param("x", {w.data(), {30, 1}}, {gw.data(), {30, 1}}, bad);
                 }),
                 "not a multiple of 4 heads"));
  bad.heads = 3;
  bad.split = {10, 20};
  CHECK(contains(error_message([&] {
                   opt.add_param("x", {w.data(), {30, 1}}, {gw.data(), {30, 1}}, bad);
                 }),
                 "split or heads"));
  bad.split.clear();
  bad.heads = -1;
  CHECK(contains(error_message([&] {
                   opt.add_param("x", {w.data(), {30, 1}}, {gw.data(), {30, 1}}, bad);
                 }),
                 "heads"));
  muon::ParamOptions conv;
  conv.heads = 2;
  opt.add_param("conv", {f.data(), {2, 6, 3, 3}}, {gf.data(), {2, 6, 3, 3}}, conv);
  CHECK(opt.core().param(1).blocks == std::vector<std::int64_t>(2, 1));
  CHECK(opt.param_count() == 2);
}

TEST_CASE("split rows (fused QKV): each block orthogonalized with its own lr scale",
          "[optimizer]") {
  const Index rows = 12, cols = 3;
  const std::vector<Index> split = {2, 4, 6};  // scales 1, sqrt(4/3), sqrt(2)
  auto p = gaussian(rows * cols, 71);
  std::vector<double> g(p.size());
  RowMat R = to_rowmat(p, rows, cols);
  muon::Optimizer<double> opt(muon::MuonGroupOptions().with_lr(0.02));
  muon::ParamOptions po;
  po.split = split;
  opt.add_param("attn.qkv", {p.data(), {rows, cols}}, {g.data(), {rows, cols}}, po);
  RefMuon ref;
  ref.lr = 0.02;
  for (int k = 0; k < 3; ++k) {
    refill(g, gaussian(g.size(), 80 + k));
    opt.step();
    ref.step(R, to_rowmat(g, rows, cols), split);
    REQUIRE(max_abs_diff(p, R) < 1e-11);
  }
  // Orthogonalizing the whole matrix instead gives a different result.
  RowMat whole = to_rowmat(gaussian(p.size(), 71), rows, cols);
  RefMuon ref_whole;
  ref_whole.lr = 0.02;
  for (int k = 0; k < 3; ++k)
    ref_whole.step(whole, to_rowmat(gaussian(g.size(), 80 + k), rows, cols), {rows});
  REQUIRE((whole - R).cwiseAbs().maxCoeff() > 1e-4);
}

TEST_CASE("a row-strided 2-D view updates only its window", "[optimizer]") {
  const Index r = 4, c = 6, ld = 9;
  auto buf = gaussian(r * ld, 91);
  std::vector<double> g(r * c);
  const auto before = buf;
  RowMat R(r, c);
  for (Index i = 0; i < r; ++i)
    for (Index j = 0; j < c; ++j) R(i, j) = buf[static_cast<std::size_t>(i * ld + j)];
  muon::Optimizer<double> opt;
  opt.add_param("w", muon::ParamView<double>::matrix(buf.data(), r, c, ld), {g.data(), {r, c}});
  refill(g, gaussian(g.size(), 92));
  opt.step();
  RefMuon ref;
  ref.step(R, to_rowmat(g, r, c), {r});
  for (Index i = 0; i < r; ++i)
    for (Index j = 0; j < ld; ++j) {
      const double got = buf[static_cast<std::size_t>(i * ld + j)];
      if (j < c)
        REQUIRE(std::abs(got - R(i, j)) < 1e-11);
      else
        REQUIRE(got == before[static_cast<std::size_t>(i * ld + j)]);
    }
}

TEST_CASE("lr schedule and momentum warmup are applied per step", "[optimizer]") {
  const Index r = 5, c = 7, nb = 5;
  auto w = gaussian(r * c, 101), b = gaussian(nb, 102);
  std::vector<double> gw(w.size()), gb(b.size());
  RowMat Rw = to_rowmat(w, r, c), Rb = to_rowmat(b, 1, nb);
  muon::Optimizer<double> opt(muon::MuonGroupOptions().with_lr(0.02));
  opt.add_param("w", {w.data(), {r, c}}, {gw.data(), {r, c}});
  opt.add_param("b", {b.data(), {nb}}, {gb.data(), {nb}});
  opt.set_lr_schedule(muon::LrSchedule::warmup_linear(2, 6, 0.1));
  muon::MomentumWarmup mw;
  mw.start = 0.5, mw.end = 0.9, mw.steps = 4;
  opt.set_momentum_warmup(mw);
  RefMuon rm;
  rm.lr = 0.02;
  RefAdamW ra;
  for (int k = 0; k < 7; ++k) {
    // Written from the definitions: warmup (k+1)/2, then linear to 0.1 at step 6.
    const double factor = k < 2 ? (k + 1) / 2.0 : (k >= 6 ? 0.1 : 0.1 + 0.9 * (1 - (k - 2) / 4.0));
    const double mu = k >= 4 ? 0.9 : 0.5 + 0.4 * k / 4.0;
    refill(gw, gaussian(gw.size(), 110 + k));
    refill(gb, gaussian(gb.size(), 120 + k));
    opt.step();
    rm.step(Rw, to_rowmat(gw, r, c), {r}, 0.02 * factor, mu);
    ra.step(Rb, to_rowmat(gb, 1, nb), 1e-3 * factor);
    REQUIRE(max_abs_diff(w, Rw) < 1e-11);
    REQUIRE(max_abs_diff(b, Rb) < 1e-11);
  }
}

TEMPLATE_TEST_CASE("bf16/half parameters keep fp32 buffers and follow the reference", "[optimizer]",
                   Eigen::bfloat16, Eigen::half) {
  using T = TestType;
  static_assert(std::is_same<typename muon::Optimizer<T>::Buffer::Scalar, float>::value,
                "fp32 buffers by default");
  // The reference rounds like the storage: the parameter to T and the
  // momentum to float after every step, everything else in double. The
  // library computes in float, so the two can differ only where a value
  // lands next to a rounding boundary of T: by one unit in the last place,
  // at a few elements.
  constexpr int digits = std::is_same<T, Eigen::bfloat16>::value ? 8 : 11;
  const auto ulp = [](double x) {
    int e = 0;
    std::frexp(x, &e);
    return std::ldexp(1.0, e - digits);
  };
  const auto round_to_t = [](RowMat& M) {
    for (Index i = 0; i < M.size(); ++i) M.data()[i] = as_double(T(float(M.data()[i])));
  };
  const Index r = 8, c = 16;
  auto w = cast_vec<T>(gaussian(r * c, 131));
  const auto w0 = w;
  std::vector<T> g(w.size());
  RowMat R = to_rowmat(w, r, c);
  muon::Optimizer<T> opt(muon::MuonGroupOptions().with_lr(0.1));
  opt.add_param("w", {w.data(), {r, c}}, {g.data(), {r, c}});
  RefMuon ref;
  ref.lr = 0.1;
  for (int k = 0; k < 3; ++k) {
    refill(g, cast_vec<T>(gaussian(g.size(), 140 + k)));
    opt.step();
    ref.step(R, to_rowmat(g, r, c), {r});
    round_to_t(R);
    ref.m = ref.m.cast<float>().template cast<double>();
    int inexact = 0;
    for (Index i = 0; i < R.size(); ++i) {
      const double got = as_double(w[std::size_t(i)]), want = R.data()[i];
      if (got == want) continue;
      ++inexact;
      INFO("step " << k << ", element " << i << ": " << got << " vs " << want);
      REQUIRE(std::abs(got - want) <= ulp(want));
    }
    INFO("step " << k << ": " << inexact << " of " << R.size() << " elements one ulp apart");
    REQUIRE(inexact <= R.size() / 10);
    const RowMat momentum = opt.momentum_buffer("w").template cast<double>();
    REQUIRE((momentum - ref.m).cwiseAbs().maxCoeff() <= 1e-6 * ref.m.cwiseAbs().maxCoeff());
  }
  // The parameters did move, by far more than a unit in the last place.
  REQUIRE(max_abs_diff(w, to_rowmat(w0, r, c)) > 0.05);
}

TEST_CASE("a parameter without a gradient is skipped entirely", "[optimizer]") {
  const Index r = 4, c = 5, nb = 4;
  auto w = gaussian(r * c, 151), b = gaussian(nb, 152), v = gaussian(r * c, 153);
  auto gw = gaussian(w.size(), 154), gb = gaussian(b.size(), 155), gv = gaussian(v.size(), 156);
  muon::Optimizer<double> opt(muon::MuonGroupOptions().with_weight_decay(0.5));
  opt.add_param("w", {w.data(), {r, c}}, {gw.data(), {r, c}});
  opt.add_param("b", {b.data(), {nb}}, muon::ParamView<double>::absent());
  opt.add_param("v", {v.data(), {r, c}}, {gv.data(), {r, c}});
  opt.clear_grad("v");
  const auto b0 = b, v0 = v, w0 = w;
  const auto& rep = opt.step();
  REQUIRE(rep.status == muon::StepStatus::partial);
  REQUIRE(rep.updated == 1);
  REQUIRE(rep.skipped.size() == 2);
  REQUIRE(std::string(rep.skipped[0].name) == "b");
  REQUIRE(rep.skipped[0].reason == muon::SkipReason::no_grad);
  REQUIRE(std::string(rep.skipped[1].name) == "v");
  REQUIRE(bitwise_equal(b, b0));  // no decay either
  REQUIRE(bitwise_equal(v, v0));
  REQUIRE(!bitwise_equal(w, w0));
  REQUIRE(opt.param_steps("b") == 0);
  REQUIRE(opt.param_steps("v") == 0);
  REQUIRE(opt.momentum_buffer("v").isZero(0.0));
  REQUIRE(opt.exp_avg("b").isZero(0.0));

  // Given a gradient later, AdamW's bias correction starts at t = 1.
  opt.set_grad("b", {gb.data(), {nb}});
  opt.clear_grad("w");
  RowMat Rb = to_rowmat(b, 1, nb);
  RefAdamW ra;
  opt.step();
  ra.step(Rb, to_rowmat(gb, 1, nb), ra.lr);
  REQUIRE(max_abs_diff(b, Rb) < 1e-12);
  REQUIRE(opt.param_steps("b") == 1);
  REQUIRE(opt.param_steps("w") == 1);

  opt.clear_grads();
  REQUIRE(opt.step().status == muon::StepStatus::nothing);
}

namespace {
struct Model {
  std::vector<float> w, b, f, gw, gb, gf;
  explicit Model(std::uint64_t seed)
      : w(cast_vec<float>(gaussian(6 * 10, seed))),
        b(cast_vec<float>(gaussian(6, seed + 1))),
        f(cast_vec<float>(gaussian(8 * 2 * 3 * 3, seed + 2))),
        gw(w.size()),
        gb(b.size()),
        gf(f.size()) {}
  void attach(muon::Optimizer<float>& opt) {
    opt.add_param("w", {w.data(), {6, 10}}, {gw.data(), {6, 10}});
    opt.add_param("b", {b.data(), {6}}, {gb.data(), {6}});
    opt.add_param("f", {f.data(), {8, 2, 3, 3}}, {gf.data(), {8, 2, 3, 3}});
  }
  void grads(int k) {
    refill(gw, cast_vec<float>(gaussian(gw.size(), 1000 + k)));
    refill(gb, cast_vec<float>(gaussian(gb.size(), 2000 + k)));
    refill(gf, cast_vec<float>(gaussian(gf.size(), 3000 + k)));
  }
};
void train(Model& m, int steps) {
  muon::Optimizer<float> opt(muon::MuonGroupOptions().with_lr(0.02));
  m.attach(opt);
  for (int k = 0; k < steps; ++k) {
    m.grads(k);
    opt.step();
  }
}
}  // namespace

TEST_CASE("determinism: same inputs give bitwise the same parameters", "[optimizer]") {
  Model a(7), b(7);
  train(a, 4);
  train(b, 4);
  REQUIRE(bitwise_equal(a.w, b.w));
  REQUIRE(bitwise_equal(a.b, b.b));
  REQUIRE(bitwise_equal(a.f, b.f));
}

TEST_CASE("two optimizers in two threads match running them one after the other", "[optimizer]") {
  Model seq1(1), seq2(2), par1(1), par2(2);
  train(seq1, 5);
  train(seq2, 5);
  std::thread t1([&] { train(par1, 5); });
  std::thread t2([&] { train(par2, 5); });
  t1.join();
  t2.join();
  REQUIRE(bitwise_equal(seq1.w, par1.w));
  REQUIRE(bitwise_equal(seq1.f, par1.f));
  REQUIRE(bitwise_equal(seq2.w, par2.w));
  REQUIRE(bitwise_equal(seq2.b, par2.b));
}

TEST_CASE("a non-finite gradient: raise updates nothing, skip updates the others", "[optimizer]") {
  Model m(3);
  muon::Optimizer<float> opt;
  m.attach(opt);
  m.grads(0);
  opt.step();
  m.grads(1);
  m.gf[5] = std::numeric_limits<float>::quiet_NaN();
  const auto w0 = m.w, b0 = m.b, f0 = m.f;
  const auto mom_w = opt.momentum_buffer("w");
  const auto ea_b = opt.exp_avg("b");
  const std::string msg = error_message([&] { opt.step(); });
  REQUIRE(contains(msg, "'f'"));
  REQUIRE(contains(msg, "NaN or Inf"));
  REQUIRE(bitwise_equal(m.w, w0));
  REQUIRE(bitwise_equal(m.b, b0));
  REQUIRE(bitwise_equal(m.f, f0));
  REQUIRE(opt.momentum_buffer("w") == mom_w);
  REQUIRE(opt.exp_avg("b") == ea_b);
  REQUIRE(opt.step_count() == 1);
  REQUIRE(opt.param_steps("w") == 1);

  opt.set_non_finite_policy(muon::NonFinitePolicy::skip);
  m.gw[0] = std::numeric_limits<float>::infinity();
  m.gf[5] = 1.0f;
  const auto& rep = opt.step();
  REQUIRE(rep.status == muon::StepStatus::partial);
  REQUIRE(rep.skipped.size() == 1);
  REQUIRE(std::string(rep.skipped[0].name) == "w");
  REQUIRE(rep.skipped[0].reason == muon::SkipReason::non_finite_grad);
  REQUIRE(bitwise_equal(m.w, w0));
  REQUIRE(!bitwise_equal(m.f, f0));
  REQUIRE(opt.param_steps("w") == 1);
  REQUIRE(opt.param_steps("f") == 2);
}

TEST_CASE("set_param moves a parameter to new memory and keeps its state",
          "[optimizer][set_param]") {
  // Two identical runs; in one the parameter is moved to a copy after the
  // first step (a framework replacing a tensor's storage). The moved run
  // must update the copy, leave the old memory alone and end bitwise equal.
  const Index r = 6, c = 9;
  auto a = gaussian(r * c, 171), g = gaussian(r * c, 172);
  auto b = a;
  muon::Optimizer<double> moved, still;
  moved.add_param("w", {a.data(), {r, c}}, {g.data(), {r, c}});
  still.add_param("w", {b.data(), {r, c}}, {g.data(), {r, c}});
  moved.step();
  still.step();
  std::vector<double> copy = a;
  const std::vector<double> old = a;
  moved.set_param("w", {copy.data(), {r, c}});
  for (int k = 0; k < 2; ++k) {
    refill(g, gaussian(g.size(), 173 + std::uint64_t(k)));
    moved.step();
    still.step();
  }
  REQUIRE(bitwise_equal(copy, b));
  REQUIRE(bitwise_equal(a, old));

  std::vector<double> small(10);
  REQUIRE(contains(error_message([&] {
                     moved.set_param("w", {small.data(), {2, 5}});
                   }),
                   "'w' has shape (2, 5), registered as (6, 9)"));
  REQUIRE(contains(error_message([&] { moved.set_param("w", {nullptr, {r, c}}); }), "null"));
  REQUIRE(contains(error_message([&] {
                     moved.set_param("w", muon::ParamView<double>::matrix(
                                              copy.data(), r, c, 0, muon::Layout::column_major));
                   }),
                   "registered as"));
  refill(g, gaussian(g.size(), 180));
  moved.step();
  still.step();
  REQUIRE(bitwise_equal(copy, b));  // the refused calls changed nothing
}

TEST_CASE("bad registrations and options throw, naming the problem, and change nothing",
          "[optimizer]") {
  std::vector<double> w(12), g(12), g_bad(10);
  muon::Optimizer<double> opt;
  opt.add_param("w", {w.data(), {3, 4}}, {g.data(), {3, 4}});
  const auto check = [&](auto&& f, const char* part) {
    const std::string msg = error_message(f);
    INFO(msg);
    REQUIRE(contains(msg, part));
    REQUIRE(opt.param_count() == 1);
  };
  check([&] { opt.add_param("w", {w.data(), {3, 4}}, {g.data(), {3, 4}}); }, "already registered");
  check([&] { opt.add_param("x", {w.data(), {3, 4}}, {g_bad.data(), {2, 5}}); }, "shape (2, 5)");
  check([&] { opt.add_param("x", {w.data(), {3, 0}}, {g.data(), {3, 0}}); }, "empty");
  check([&] { opt.add_param("x", {nullptr, {3, 4}}, {g.data(), {3, 4}}); }, "null");
  check([&] { opt.add_param("", {w.data(), {3, 4}}, {g.data(), {3, 4}}); }, "name");
  check(
      [&] {
        opt.add_param("x", {w.data(), {3, 4}}, {g.data(), {3, 4}}, muon::Route::muon, 5);
      },
      "group");
  check(
      [&] {
        opt.add_param("x", muon::ParamView<double>::matrix(w.data(), 3, 4, 2), {g.data(), {3, 4}});
      },
      "stride 2 is shorter than a row");
  muon::ParamOptions po;
  po.split = {1, 1};
  check([&] { opt.add_param("x", {w.data(), {3, 4}}, {g.data(), {3, 4}}, po); }, "sum to 2");
  po.route = muon::Route::adamw;
  po.split = {1, 2};
  check([&] { opt.add_param("x", {w.data(), {3, 4}}, {g.data(), {3, 4}}, po); }, "Muon-routed");
  check([&] { opt.set_grad("w", {g_bad.data(), {10}}); }, "shape (10)");
  check([&] { opt.set_grad("nope", {g.data(), {3, 4}}); }, "no parameter named 'nope'");
  check([&] { opt.set_routing_rules({}); }, "before the first parameter");
  check([&] { (void)muon::ParamView<double>(w.data(), {1, 1, 1, 1, 1}); }, "at most 4");

  const auto before = opt.muon_options();
  check([&] { opt.set_option("lr", -0.1); }, "lr");
  check([&] { opt.set_option("momentum", 1.5); }, "momentum");
  check([&] { opt.set_option("weight_decay", -1.0); }, "weight_decay");
  check([&] { opt.set_option("ns_steps", 2.5); }, "ns_steps");
  check([&] { opt.set_option("learning_rate", 0.1); }, "unknown key 'learning_rate'");
  check([&] { opt.set_option("learning_rate", 0.1); }, "did you mean 'lr'?");
  check([&] { opt.set_option("learning_rate", 0.1); }, "valid keys: lr, weight_decay, momentum");
  check([&] { opt.set_option("adamw_beta", 0.9); }, "did you mean 'adamw_beta1'?");
  check([&] { opt.set_option("lr", "0.02"); }, "lr: takes a number");
  check([&] { opt.set_option("adjust_lr", "bogus"); }, "bogus");
  check([&] { opt.set_option("colour", "red"); }, "unknown key 'colour'");
  check([&] { opt.set_option("adamw_beta2", 1.0); }, "beta2");
  check([&] { opt.set_muon_options(muon::MuonGroupOptions().with_ns_steps(100)); }, "steps");
  check([&] { (void)opt.add_group(muon::MuonGroupOptions().with_lr(NAN)); }, "lr");
  const auto& after = opt.muon_options();
  REQUIRE(after.lr == before.lr);
  REQUIRE(after.momentum == before.momentum);
  REQUIRE(after.weight_decay == before.weight_decay);
  REQUIRE(after.ns.steps == before.ns.steps);
  REQUIRE(opt.group_count() == 1);

  opt.set_option("lr", 0.5);
  opt.set_option("adjust_lr", "match_rms_adamw");
  opt.set_option("nesterov", 0.0);
  REQUIRE(opt.muon_options().lr == 0.5);
  REQUIRE(opt.muon_options().adjust_lr == muon::LrAdjust::match_rms_adamw);
  REQUIRE(!opt.muon_options().nesterov);
}

TEST_CASE("set_option: every key lands in its field; wrong types and ranges are refused",
          "[optimizer][options]") {
  using G = muon::MuonGroupOptions;
  using A = muon::AdamWOptions;
  struct Numeric {
    const char* key;
    double value;  // a valid value other than the default
    std::function<double(const G&, const A&)> field;
    double bad;  // out of range
  };
  const std::vector<Numeric> numeric = {
      {"lr", 0.25, [](const G& g, const A&) { return g.lr; }, -1.0},
      {"weight_decay", 0.5, [](const G& g, const A&) { return g.weight_decay; }, -0.5},
      {"momentum", 0.8, [](const G& g, const A&) { return g.momentum; }, 1.0},
      {"nesterov", 0.0, [](const G& g, const A&) { return g.nesterov ? 1.0 : 0.0; }, 0.5},
      {"ns_steps", 7.0, [](const G& g, const A&) { return double(g.ns.steps); }, 100.0},
      {"ns_eps", 1e-5, [](const G& g, const A&) { return g.ns.eps; }, 0.0},
      {"cautious_weight_decay", 1.0,
       [](const G& g, const A&) { return g.cautious_weight_decay ? 1.0 : 0.0; }, 2.0},
      {"lr_scale", 1.5, [](const G& g, const A&) { return g.lr_scale; }, 0.0},
      {"adamw_lr", 0.03, [](const G&, const A& a) { return a.lr; }, NAN},
      {"adamw_beta1", 0.8, [](const G&, const A& a) { return a.beta1; }, 1.0},
      {"adamw_beta2", 0.95, [](const G&, const A& a) { return a.beta2; }, -0.1},
      {"adamw_eps", 1e-10, [](const G&, const A& a) { return a.eps; }, 0.0},
      {"adamw_weight_decay", 0.2, [](const G&, const A& a) { return a.weight_decay; }, -1.0},
  };
  struct Named {
    const char* key;
    const char* value;
    std::function<bool(const G&)> landed;
    const char* bad;
  };
  const std::vector<Named> named = {
      {"adjust_lr", "match_rms_adamw",
       [](const G& g) { return g.adjust_lr == muon::LrAdjust::match_rms_adamw; }, "bogus"},
      {"adjust_lr", "spectral", [](const G& g) { return g.adjust_lr == muon::LrAdjust::spectral; },
       "Original"},
      {"adjust_lr", "spectral_unclamped",
       [](const G& g) { return g.adjust_lr == muon::LrAdjust::spectral; }, ""},
      {"adjust_lr", "none", [](const G& g) { return g.adjust_lr == muon::LrAdjust::none; },
       "identity"},
      {"ns_coefficients", "polar_express",
       [](const G& g) { return g.ns.schedule.name() == "polar_express"; }, "polar"},
      {"ns_coefficients", "cubic", [](const G& g) { return g.ns.schedule.name() == "cubic"; },
       "cube"},
      {"ns_coefficients", "quintic", [](const G& g) { return g.ns.schedule.name() == "quintic"; },
       "5"},
      {"ns_coefficients", "deepseek_v4",
       [](const G& g) { return g.ns.schedule.name() == "deepseek_v4"; }, "deepseek"},
      {"ns_coefficients", "cubic5", [](const G& g) { return g.ns.schedule.name() == "cubic5"; },
       "cubic_5"},
      {"momentum_kind", "sum",
       [](const G& g) { return g.momentum_kind == muon::MomentumKind::sum; }, "nesterov"},
      {"ns_eps_mode", "add", [](const G& g) { return g.ns.eps_mode == muon::EpsMode::add; }, "min"},
      {"weight_decay_form", "independent",
       [](const G& g) { return g.weight_decay_form == muon::WeightDecayForm::independent; },
       "coupled"},
      {"weight_decay_form", "palm",
       [](const G& g) { return g.weight_decay_form == muon::WeightDecayForm::palm; }, "PaLM"},
  };
  std::vector<double> w(12), g(12);
  for (const Numeric& n : numeric) {
    INFO("numeric option " << n.key);
    muon::Optimizer<double> opt;
    opt.add_group(muon::MuonGroupOptions(), muon::AdamWOptions());
    opt.add_param("w", {w.data(), {3, 4}}, {g.data(), {3, 4}});
    const double before = n.field(opt.muon_options(1), opt.adamw_options(1));
    REQUIRE(before != n.value);
    opt.set_option(n.key, n.value, 1);
    CHECK(n.field(opt.muon_options(1), opt.adamw_options(1)) == n.value);
    CHECK(n.field(opt.muon_options(0), opt.adamw_options(0)) == before);  // other group as was
    // Out of range, or a string where a number is expected: refused, unchanged.
    CHECK(contains(error_message([&] { opt.set_option(n.key, n.bad, 1); }), n.key));
    CHECK_THROWS_AS(opt.set_option(n.key, "0.5", 1), muon::Error);
    CHECK(n.field(opt.muon_options(1), opt.adamw_options(1)) == n.value);
  }
  for (const Named& n : named) {
    INFO("named option " << n.key << " = " << n.value);
    muon::Optimizer<double> opt;
    REQUIRE(!n.landed(opt.muon_options()));
    opt.set_option(n.key, n.value);
    CHECK(n.landed(opt.muon_options()));
    CHECK(contains(error_message([&] { opt.set_option(n.key, n.bad); }), n.key));
    CHECK_THROWS_AS(opt.set_option(n.key, 1.0), muon::Error);
    CHECK(n.landed(opt.muon_options()));
  }
  // Setting momentum_kind back and forth reaches both values.
  muon::Optimizer<double> opt;
  opt.set_option("momentum_kind", "sum");
  opt.set_option("momentum_kind", "ema");
  CHECK(opt.muon_options().momentum_kind == muon::MomentumKind::ema);
  opt.set_option("ns_eps_mode", "max");
  CHECK(opt.muon_options().ns.eps_mode == muon::EpsMode::max);
  opt.set_option("ns_coefficients", "jordan");
  CHECK(opt.muon_options().ns.schedule.name() == "jordan");
  CHECK_THROWS_AS(opt.set_option("lr", 0.1, 3), muon::Error);  // no group 3
}

TEST_CASE("defaults are torch.optim.Muon's", "[optimizer]") {
  const muon::MuonGroupOptions o;
  REQUIRE(o.lr == 1e-3);
  REQUIRE(o.weight_decay == 0.1);
  REQUIRE(o.momentum == 0.95);
  REQUIRE(o.nesterov);
  REQUIRE(o.ns.steps == 5);
  REQUIRE(o.ns.eps == 1e-7);
  REQUIRE(o.ns.eps_mode == muon::EpsMode::max);
  REQUIRE(o.ns.schedule.at(0).a == 3.4445);
  REQUIRE(o.adjust_lr == muon::LrAdjust::original);
  REQUIRE(!o.cautious_weight_decay);
}

TEST_CASE("metrics match their definitions and the hook sees every step", "[optimizer]") {
  // 6 x 9 runs the standard iteration, 4 x 12 (aspect 3) the Gram form.
  const auto shape =
      GENERATE(std::make_pair(Index(6), Index(9)), std::make_pair(Index(4), Index(12)));
  const Index r = shape.first, c = shape.second;
  INFO(r << " x " << c);
  auto w = gaussian(r * c, 161);
  std::vector<double> g(w.size());
  RowMat R = to_rowmat(w, r, c);
  muon::Optimizer<double> opt;
  opt.add_param("w", {w.data(), {r, c}}, {g.data(), {r, c}});
  int calls = 0;
  muon::ParamMetrics last;
  opt.on_step([&](const muon::StepMetrics& m) {
    ++calls;
    REQUIRE(m.params.size() == 1);
    last = m.params[0];
  });
  RefMuon ref;
  for (int k = 0; k < 30; ++k) {
    refill(g, gaussian(g.size(), 170 + k));
    opt.step();
    // The update O of this step, rebuilt in double.
    const RowMat G = to_rowmat(g, r, c);
    const RowMat m_new = 0.95 * (ref.m.size() ? ref.m : RowMat::Zero(r, c)) + 0.05 * G;
    const Eigen::MatrixXd O = torch_ns(Eigen::MatrixXd(0.05 * G + 0.95 * m_new));
    ref.step(R, G, {r});
    REQUIRE(std::abs(last.grad_norm - G.norm()) < 1e-10);
    REQUIRE(std::abs(last.momentum_norm - ref.m.norm()) < 1e-10);
    REQUIRE(std::abs(last.update_rms - O.norm() / std::sqrt(double(r * c))) < 1e-10);
    REQUIRE(std::abs(last.orthogonality_error - muon::reference::orthogonality_error(O)) < 1e-9);
  }
  REQUIRE(calls == 30);
  // Power iteration from below; after 60 iterations on a slowly moving W it is close.
  const double sigma = muon::reference::singular_values(R)(0);
  REQUIRE(last.spectral_norm <= sigma * (1 + 1e-12));
  REQUIRE(last.spectral_norm > 0.99 * sigma);
}

// ---- a step applies to every parameter or to none --------------------------------

namespace {
struct Pair {
  std::vector<float> w1 = cast_vec<float>(gaussian(6 * 8, 501)),
                     w2 = cast_vec<float>(gaussian(6 * 8, 502)),
                     b = cast_vec<float>(gaussian(6, 503));
  std::vector<float> g1 = cast_vec<float>(gaussian(6 * 8, 504)),
                     g2 = cast_vec<float>(gaussian(6 * 8, 505)),
                     gb = cast_vec<float>(gaussian(6, 506));
  void attach(muon::Optimizer<float>& opt) {
    opt.add_param("w1", {w1.data(), {6, 8}}, {g1.data(), {6, 8}});
    opt.add_param("w2", {w2.data(), {6, 8}}, {g2.data(), {6, 8}});
    opt.add_param("b", {b.data(), {6}}, {gb.data(), {6}});
  }
};
}  // namespace

TEST_CASE("a momentum that would overflow refuses the whole step (raise) or that parameter (skip)",
          "[optimizer][transaction]") {
  // Finite gradients of +-FLT_MAX on successive steps: the EMA buffer
  // m + (1-mu)(g - m) overflows on the second (g - m = -1.05 FLT_MAX).
  const float big = std::numeric_limits<float>::max();
  Pair p;
  muon::Optimizer<float> opt;
  p.attach(opt);
  std::fill(p.g2.begin(), p.g2.end(), big);
  opt.step();
  std::fill(p.g2.begin(), p.g2.end(), -big);
  const auto w1 = p.w1, w2 = p.w2, b = p.b;
  const auto m1 = opt.momentum_buffer("w1"), m2 = opt.momentum_buffer("w2");
  const auto ea = opt.exp_avg("b");
  std::ostringstream saved;
  opt.save(saved);

  const std::string msg = error_message([&] { opt.step(); });
  INFO(msg);
  REQUIRE(contains(msg, "'w2'"));
  REQUIRE(contains(msg, "momentum would overflow float"));
  REQUIRE(contains(msg, "nothing was updated"));
  // Nothing moved: not w1 (registered first), not its state, not the counters.
  REQUIRE(bitwise_equal(p.w1, w1));
  REQUIRE(bitwise_equal(p.w2, w2));
  REQUIRE(bitwise_equal(p.b, b));
  REQUIRE(opt.momentum_buffer("w1") == m1);
  REQUIRE(opt.momentum_buffer("w2") == m2);
  REQUIRE(opt.exp_avg("b") == ea);
  REQUIRE(opt.step_count() == 1);
  REQUIRE(opt.param_steps("w1") == 1);
  std::ostringstream after;
  opt.save(after);
  REQUIRE(after.str() == saved.str());

  // Skip: w2 and its state stay, the others step; the report says why.
  opt.set_non_finite_policy(muon::NonFinitePolicy::skip);
  const auto& report = opt.step();
  REQUIRE(report.status == muon::StepStatus::partial);
  REQUIRE(report.updated == 2);
  REQUIRE(report.skipped.size() == 1);
  REQUIRE(std::string(report.skipped[0].name) == "w2");
  REQUIRE(report.skipped[0].reason == muon::SkipReason::non_finite_state);
  REQUIRE(bitwise_equal(p.w2, w2));
  REQUIRE(opt.momentum_buffer("w2") == m2);
  REQUIRE(!bitwise_equal(p.w1, w1));
  REQUIRE(opt.param_steps("w2") == 1);
  REQUIRE(opt.param_steps("w1") == 2);
  REQUIRE(opt.momentum_buffer("w2").allFinite());

  // The state is still finite, so the optimizer's own checkpoint loads.
  std::ostringstream os;
  opt.save(os);
  Pair q;
  muon::Optimizer<float> other;
  q.attach(other);
  std::istringstream is(os.str());
  REQUIRE_NOTHROW(other.load(is));
  // And sane gradients step w2 again.
  refill(p.g2, cast_vec<float>(gaussian(p.g2.size(), 507)));
  REQUIRE(opt.step().status == muon::StepStatus::ok);
}

TEST_CASE("an AdamW gradient whose square overflows is refused, not silently stalled",
          "[optimizer][transaction]") {
  Pair p;
  muon::Optimizer<float> opt;
  p.attach(opt);
  p.gb[2] = 1e30f;  // finite; (1 - beta2) g^2 = 1e57 is not
  const auto w1 = p.w1, b = p.b;
  const std::string msg = error_message([&] { opt.step(); });
  INFO(msg);
  REQUIRE(contains(msg, "'b'"));
  REQUIRE(contains(msg, "AdamW moment would overflow float"));
  REQUIRE(bitwise_equal(p.w1, w1));
  REQUIRE(bitwise_equal(p.b, b));
  REQUIRE(opt.exp_avg_sq("b").isZero(0.0));
  opt.set_non_finite_policy(muon::NonFinitePolicy::skip);
  const auto& report = opt.step();
  REQUIRE(report.skipped.size() == 1);
  REQUIRE(report.skipped[0].reason == muon::SkipReason::non_finite_state);
  REQUIRE(bitwise_equal(p.b, b));
  REQUIRE(opt.exp_avg_sq("b").allFinite());
}

TEST_CASE("a parameter update that would overflow its type is refused",
          "[optimizer][transaction]") {
  // half holds up to 65504; 60000 plus an lr of 10000 times |O| (bounded by
  // ~1.2 for Jordan x 5) could pass it.
  std::vector<Eigen::half> w(4 * 6, Eigen::half(60000.0f)), g(4 * 6);
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = Eigen::half(float(i % 5) - 2.0f);
  const auto w0 = w;
  muon::Optimizer<Eigen::half> opt(muon::MuonGroupOptions().with_lr(10000).with_weight_decay(0));
  opt.add_param("w", {w.data(), {4, 6}}, {g.data(), {4, 6}});
  const std::string msg = error_message([&] { opt.step(); });
  INFO(msg);
  REQUIRE(contains(msg, "'w': the updated parameter could overflow half"));
  REQUIRE(std::memcmp(w.data(), w0.data(), w.size() * sizeof(Eigen::half)) == 0);
  // A sane lr steps.
  opt.set_option("lr", 0.01);
  REQUIRE(opt.step().status == muon::StepStatus::ok);
}

TEST_CASE("an AdamW eps that underflows float still gives finite updates", "[optimizer]") {
  std::vector<float> b(4, 1.0f), gb(4, 0.0f);  // zero gradient: m = v = 0, 0 / (0 + eps)
  muon::AdamWOptions ao;
  ao.eps = 1e-50;  // valid in double, 0 in float
  muon::Optimizer<float> opt(muon::MuonGroupOptions(), ao);
  opt.add_param("bias", {b.data(), {4}}, {gb.data(), {4}});
  opt.step();
  for (float v : b) REQUIRE(std::isfinite(v));
  REQUIRE(b[0] == 1.0f - 1e-3f * 0.01f * 1.0f);  // only the decay: 1 - lr wd
}

TEST_CASE("options under which Newton-Schulz would write NaN are refused up front",
          "[optimizer][options]") {
  // A sign typo in Jordan's b: p(s) = 3.4445 s + 4.775 s^3 + 2.0315 s^5 grows
  // without bound; all-NaN output before, an error naming the field now.
  const muon::Schedule typo({{3.4445, 4.7750, 2.0315}});
  muon::MuonGroupOptions bad;
  bad.ns.schedule = typo;
  CHECK(contains(error_message([&] { muon::Optimizer<float> opt(bad); }), "ns_coefficients"));
  CHECK(contains(error_message([&] { muon::Optimizer<float> opt(bad); }), "diverges"));
  muon::NewtonSchulzOptions ns(typo, 5);
  const Eigen::MatrixXf G = Eigen::MatrixXf::Random(4, 6);
  CHECK(contains(error_message([&] { (void)muon::orthogonalize(G, ns); }), "options.schedule"));
  // A norm divisor of 1e-6: singular values start at up to 1e6.
  muon::MuonGroupOptions tiny;
  tiny.ns.norm_divisor = 1e-6;
  CHECK(contains(error_message([&] { muon::Optimizer<float> opt(tiny); }), "ns_norm_divisor"));
  muon::MuonGroupOptions half_divisor;  // Jordan from singular values up to 2: diverges too
  half_divisor.ns.norm_divisor = 0.5;
  CHECK(contains(error_message([&] { muon::Optimizer<float> opt(half_divisor); }), "diverges"));
  muon::Optimizer<float> opt;
  CHECK(
      contains(error_message([&] { opt.set_option("ns_norm_divisor", 1e-6); }), "ns_norm_divisor"));
  // Enum values out of range.
  muon::NewtonSchulzOptions method;
  method.method = static_cast<muon::NsMethod>(7);
  CHECK(contains(error_message([&] { method.validate(); }), "options.method"));
  muon::NewtonSchulzOptions mode;
  mode.eps_mode = static_cast<muon::EpsMode>(5);
  CHECK(contains(error_message([&] { mode.validate(); }), "options.eps_mode"));
  muon::MuonGroupOptions kind;
  kind.momentum_kind = static_cast<muon::MomentumKind>(3);
  CHECK(contains(error_message([&] { kind.validate(); }), "momentum_kind"));
  // The shipped schedules and Polar Express with its 1.01 pass.
  for (const char* name : {"jordan", "cubic", "quintic", "polar_express"})
    CHECK_NOTHROW(muon::NewtonSchulzOptions(muon::Schedule::by_name(name), 10).validate());
  // A finite double input beyond float's range is named as such, not as NaN.
  const Eigen::MatrixXd huge = Eigen::MatrixXd::Constant(3, 4, 1e39);
  muon::Workspace<float> ws(3, 4);
  Eigen::MatrixXf out(3, 4);
  CHECK(contains(
      error_message([&] { muon::orthogonalize_into(huge, out, ws, muon::NewtonSchulzOptions()); }),
      "beyond the range of float"));
}

TEST_CASE("Eigen objects register in their own storage order: column-major equals row-major",
          "[optimizer][views]") {
  using RowMajorXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Index r = 12, c = 5;  // tall: lr scale sqrt(12/5) from the logical (out, in)
  Eigen::MatrixXf Wc = Eigen::MatrixXf::Random(r, c), Gc(r, c);
  RowMajorXf Wr = Wc, Gr(r, c);
  Eigen::MatrixXf Wraw = Wc, Graw(r, c);  // the trap: a column-major buffer read as row-major
  muon::Optimizer<float> col, row, raw;
  col.add_param("w", Wc, Gc);
  row.add_param("w", Wr, Gr);
  raw.add_param("w", {Wraw.data(), {r, c}}, {Graw.data(), {r, c}});
  const muon::RoutingEntry ec = col.routing().at("w");
  const muon::RoutingEntry er = row.routing().at("w");
  REQUIRE(ec.rows == r);
  REQUIRE(ec.cols == c);
  REQUIRE(ec.lr_scale == er.lr_scale);
  REQUIRE(std::abs(ec.lr_scale - std::sqrt(12.0 / 5.0)) < 1e-12);
  REQUIRE(ec.reason.find("column-major") != std::string::npos);
  for (int k = 0; k < 4; ++k) {
    const Eigen::MatrixXf G = Eigen::MatrixXf::Random(r, c);
    Gc = G;
    Gr = G;
    Graw = G;
    col.step();
    row.step();
    raw.step();
    INFO("step " << k);
    REQUIRE((Wc - Eigen::MatrixXf(Wr)).cwiseAbs().maxCoeff() == 0.0f);
  }
  // Read as row-major, the column-major buffer is another matrix: another trajectory.
  REQUIRE((Wc - Wraw).cwiseAbs().maxCoeff() > 1e-4f);
  // Blocks and maps of either order work the same way; a split needs row-major rows.
  Eigen::MatrixXf big = Eigen::MatrixXf::Random(20, 9), gbig(20, 9);
  muon::Optimizer<float> blocks;
  blocks.add_param("block", big.block(2, 1, r, c), gbig.block(2, 1, r, c));
  REQUIRE(blocks.routing().at("block").lr_scale == ec.lr_scale);
  muon::ParamOptions split;
  split.split = {6, 6};
  CHECK(contains(error_message([&] { blocks.add_param("qkv", Wc, Gc, split); }), "column-major"));
}

// ---- one tensor, one parameter --------------------------------------------------------

TEST_CASE("memory footprints: the overlap test agrees with the bytes themselves",
          "[optimizer][overlap]") {
  // Random strided footprints in a 4 KiB window, against the set of bytes
  // each covers: exact when the strides agree (or a footprint is one line),
  // never missing an overlap otherwise.
  using muon::optim::MemoryFootprint;
  std::mt19937_64 rng(2024);
  const auto pick = [&rng](std::uint64_t lo, std::uint64_t hi) {
    return std::uniform_int_distribution<std::uint64_t>(lo, hi)(rng);
  };
  const auto bytes_of = [](const MemoryFootprint& f) {
    std::vector<bool> b(8192, false);
    for (std::uint64_t l = 0; l < f.lines; ++l)
      for (std::uint64_t k = 0; k < f.line_bytes; ++k) b[f.base - 4096 + l * f.stride + k] = true;
    return b;
  };
  int exact_pairs = 0, disjoint_interleaved = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    const std::uint64_t stride = pick(2, 64);
    const bool same = trial % 3 != 0;
    MemoryFootprint f[2];
    for (MemoryFootprint& x : f) {
      const std::uint64_t s = same ? stride : pick(2, 64);
      x.lines = pick(1, 12);
      x.line_bytes = pick(1, s);
      x.stride = x.lines > 1 ? s : x.line_bytes;
      x.base = 4096 + pick(0, 1024);
    }
    const std::vector<bool> a = bytes_of(f[0]), b = bytes_of(f[1]);
    bool truth = false;
    for (std::size_t k = 0; k < a.size(); ++k) truth = truth || (a[k] && b[k]);
    const bool got = muon::optim::overlaps(f[0], f[1]);
    INFO("trial " << trial);
    REQUIRE(got == muon::optim::overlaps(f[1], f[0]));
    if (same || f[0].lines == 1 || f[1].lines == 1) {
      REQUIRE(got == truth);
      ++exact_pairs;
      const bool ranges_meet = f[0].base < f[1].end() && f[1].base < f[0].end();
      disjoint_interleaved += ranges_meet && !truth ? 1 : 0;
    } else {
      REQUIRE((got || !truth));
    }
  }
  CHECK(exact_pairs > 10000);
  CHECK(disjoint_interleaved > 500);  // the case an interval test alone would refuse
}

TEST_CASE("the same memory under two parameters is refused, naming both; disjoint slices pass",
          "[optimizer][overlap]") {
  std::vector<float> w(24 + 8), g(24 + 8);
  muon::Optimizer<float> opt;
  opt.add_param("a", {w.data(), {4, 6}}, {g.data(), {4, 6}});
  const auto refused = [&](auto&& f, const std::string& part) {
    const std::size_t before = opt.param_count();
    const std::string msg = error_message(f);
    INFO(msg);
    CHECK(contains(msg, part));
    CHECK(opt.param_count() == before);
  };
  refused(
      [&] {
        opt.add_param("b", {w.data(), {4, 6}}, {g.data(), {4, 6}});
      },
      "'b' shares memory with 'a'");
  refused(
      [&] {
        opt.add_param("rows", {w.data() + 6, {2, 6}}, {g.data(), {2, 6}});
      },
      "'rows' shares memory with 'a'");
  refused(
      [&] {
        opt.add_param("last", {w.data() + 23, {1}}, {g.data(), {1}});
      },
      "'last' shares memory with 'a'");
  refused(
      [&] {
        opt.add_param("col", muon::ParamView<float>::matrix(w.data() + 5, 4, 1, 6),
                      {g.data(), {4, 1}});
      },
      "'col' shares memory with 'a'");
  opt.add_param("tail", {w.data() + 24, {8}}, {g.data() + 24, {8}});  // right after 'a'
  CHECK(opt.param_count() == 2);

  // Column slices of one row-major matrix (how a framework's fused weight
  // is registered in place): their address ranges interleave, their
  // elements do not meet. An overlapping slice is refused.
  std::vector<float> m(8 * 10), gm(8 * 10);
  using V = muon::ParamView<float>;
  muon::Optimizer<float> cols;
  cols.add_param("left", V::matrix(m.data(), 8, 5, 10), V::matrix(gm.data(), 8, 5, 10));
  cols.add_param("right", V::matrix(m.data() + 5, 8, 5, 10), V::matrix(gm.data() + 5, 8, 5, 10));
  CHECK(contains(error_message([&] {
                   cols.add_param("mid", V::matrix(m.data() + 3, 8, 4, 10),
                                  V::matrix(gm.data() + 3, 8, 4, 10));
                 }),
                 "'mid' shares memory with 'left'"));
  // Row blocks and column blocks of a column-major Eigen matrix likewise.
  Eigen::MatrixXf E = Eigen::MatrixXf::Random(10, 8), gE(10, 8);
  muon::Optimizer<float> eig;
  eig.add_param("top", E.topRows(5), gE.topRows(5));
  eig.add_param("bottom", E.bottomRows(5), gE.bottomRows(5));
  CHECK(contains(
      error_message([&] { eig.add_param("six", E.middleRows(4, 2), gE.middleRows(4, 2)); }),
      "'six' shares memory with 'top'"));
  CHECK(eig.param_count() == 2);

  // Both slices step, each updating its own elements once.
  for (float& x : gm) x = 0.5f;
  const std::vector<float> m0 = m;
  cols.step();
  for (std::size_t e = 0; e < m.size(); ++e) CHECK(m[e] != m0[e]);
}

TEST_CASE("set_param into another parameter's memory is refused; the parameter stays where it was",
          "[optimizer][overlap][set_param]") {
  std::vector<double> a(12, 1.0), b(12, 1.0), c(24, 1.0), g(12, 0.5);
  muon::Optimizer<double> opt;
  opt.add_param("a", {a.data(), {3, 4}}, {g.data(), {3, 4}});
  opt.add_param("b", {b.data(), {3, 4}}, {g.data(), {3, 4}});
  CHECK(contains(error_message([&] {
                   opt.set_param("a", {b.data(), {3, 4}});
                 }),
                 "'a' shares memory with 'b'"));
  opt.step();  // 'a' still updates a, once; b once
  CHECK(a != std::vector<double>(12, 1.0));
  CHECK(a == b);
  opt.set_param("a", {a.data(), {3, 4}});  // its own memory again: fine
  opt.set_param("a", {c.data() + 12, {3, 4}});
  CHECK(contains(error_message([&] {
                   opt.set_param("b", {c.data() + 8, {3, 4}});
                 }),
                 "'b' shares memory with 'a'"));
  opt.set_param("b", {c.data(), {3, 4}});  // right before 'a': fine
}

// Temporaries that VIEW lasting memory register; temporaries that OWN
// memory do not compile (tests/compile_fail/eigen_temporaries.cpp).
TEST_CASE("Eigen Map, Block and Ref temporaries register: they view lasting memory",
          "[optimizer][views]") {
  Eigen::MatrixXf W = Eigen::MatrixXf::Random(6, 8), G = Eigen::MatrixXf::Random(6, 8);
  std::vector<float> raw(6 * 8, 0.25f), graw(6 * 8, 0.5f);
  muon::Optimizer<float> opt;
  opt.add_param("block", W.block(0, 0, 6, 4), G.block(0, 0, 6, 4));
  opt.add_param("map", Eigen::Map<Eigen::MatrixXf>(raw.data(), 6, 8),
                Eigen::Map<Eigen::MatrixXf>(graw.data(), 6, 8));
  opt.add_param("ref", Eigen::Ref<Eigen::MatrixXf>(W.rightCols(4)),
                Eigen::Ref<Eigen::MatrixXf>(G.rightCols(4)));
  opt.set_grad("map", Eigen::Map<Eigen::MatrixXf>(graw.data(), 6, 8));
  const Eigen::MatrixXf W0 = W;
  opt.step();
  CHECK((W - W0).cwiseAbs().minCoeff() > 0.0f);
  CHECK(raw[0] != 0.25f);
}

TEST_CASE("sizes that do not fit are refused by name, not wrapped or thrown as bad_alloc",
          "[optimizer][sizes]") {
  std::vector<float> w(64), g(64);
  const Index big = Index(1) << 31;
  // 2^62 floats: more bytes than the address space.
  muon::Optimizer<float> opt;
  CHECK(contains(error_message([&] {
                   opt.add_param("huge", {w.data(), {big, big}}, {});
                 }),
                 "'huge' spans more bytes than the address space"));
  // 2^61 floats fit the address space, but not their double buffers: out of
  // memory, a named error, the optimizer unchanged and usable.
  muon::Optimizer<float, double> wide;
  for (const muon::Route route : {muon::Route::adamw, muon::Route::muon}) {
    const std::string msg = error_message([&] {
      wide.add_param("huge", {w.data(), {big, big / 2}}, {}, route);
    });
    INFO(msg);
    CHECK(
        contains(msg, "'huge' (2147483648, 1073741824): its optimizer state cannot be allocated"));
    CHECK(wide.param_count() == 0);
    CHECK(wide.workspace_count() == 0);
  }
  wide.add_param("w", {w.data(), {8, 8}}, {g.data(), {8, 8}});
  CHECK(wide.step().status == muon::StepStatus::ok);
  // Split sizes whose sum wraps around to the row count.
  muon::ParamOptions po;
  const std::ptrdiff_t most = std::numeric_limits<std::ptrdiff_t>::max();
  po.split = {most, most, 66};
  CHECK(contains(error_message([&] {
                   opt.add_param("qkv", {w.data(), {64, 1}}, {g.data(), {64, 1}}, po);
                 }),
                 "block sizes sum to more than the 64 rows of 'qkv'"));
  CHECK(opt.param_count() == 0);
}
