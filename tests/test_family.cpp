// SPDX-License-Identifier: MIT
// The Muon family (docs/muon_family.md) against float64 models of the
// equations, written here from the papers and independent of the library:
// NorMuon (arXiv 2510.05491), AdaMuon (arXiv 2507.11005: the sign form of
// its authors' code and the plain form of its first version), the L2 and
// independent forms of weight decay, QK-Clip (arXiv 2507.20534), and the
// double-precision Frobenius norm of tiny gradients. The Newton–Schulz output O of the models
// is the textbook iteration of test_support.hpp (Jordan's published
// coefficients, torch's eps as max(norm, eps)), so each model differs from
// the optimizer by rounding only: several steps, wide, tall, square, 3-D
// batches, splits, per-head blocks and a column-major view.

#include <muon/optimizer.hpp>
#include <muon/reference.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <muon/extern_templates.hpp>

#include "catch.hpp"
#include "test_support.hpp"

namespace {

using muon::MuonVariant;
using muon_test::gaussian;
using Mat = Eigen::MatrixXd;
using Index = Eigen::Index;

// ---- the float64 model ------------------------------------------------------------

struct ModelOptions {
  MuonVariant variant = MuonVariant::muon;
  double lr = 0.02, mu = 0.95, lambda = 0.1;
  bool nesterov = true;          // Newton–Schulz sees the look-ahead, else M
  bool l2 = false;               // G <- G + lambda W instead of the decoupled decay
  bool match_rms_adamw = false;  // 0.2 sqrt(max(m, n)); else sqrt(max(1, m/n))
  double beta2 = 0.95, eps = 1e-10;
  bool adamuon_sign = false;  // AdaMuon: the authors' code (sign, no bias correction), else plain
};

// One parameter: the (out x in) blocks it is orthogonalized as, stacked.
struct ModelParam {
  std::vector<Index> block_rows;
  Mat W, M;
  std::vector<Mat> V;  // per block: NorMuon a column (max(m, n)), AdaMuon m x n
  int t = 0;

  ModelParam(const Mat& w, std::vector<Index> blocks) : block_rows(std::move(blocks)), W(w) {
    M = Mat::Zero(w.rows(), w.cols());
  }

  void step(const Mat& G_raw, const ModelOptions& o) {
    ++t;
    const Mat G = o.l2 ? Mat(G_raw + o.lambda * W) : G_raw;
    M = o.mu * M + (1 - o.mu) * G;                                // torch: buf.lerp_(grad, 1 - mu)
    Mat input = o.nesterov ? Mat((1 - o.mu) * G + o.mu * M) : M;  // torch: grad.lerp(buf, mu)
    const bool sign = o.variant == MuonVariant::adamuon && o.adamuon_sign;
    // AdaMuon's authors (gpt2/models/optimizers/adamuon.py and
    // megatron/core/optimizer/muon.py of Chongjie-Si/AdaMuon) call
    // torch.sign on the tensor they would otherwise orthogonalize.
    if (sign) input = input.unaryExpr([](double x) { return double((x > 0) - (x < 0)); });
    const double decay = o.l2 ? 1.0 : 1.0 - o.lr * o.lambda;
    if (V.empty()) V.resize(block_rows.size());
    Index r0 = 0;
    Mat next = W;
    for (std::size_t b = 0; b < block_rows.size(); ++b) {
      const Index m = block_rows[b], n = W.cols();
      const Mat O = muon_test::plain_newton_schulz(input.middleRows(r0, m),
                                                   muon_test::paper_jordan(), 5, 1e-7, true);
      Mat U = O;
      if (o.variant == MuonVariant::normuon) {
        // v: the mean of O^2 over each row (m >= n) or each column.
        const bool per_row = m >= n;
        const Mat sq = O.cwiseProduct(O);
        const Eigen::VectorXd v = per_row ? Eigen::VectorXd(sq.rowwise().mean())
                                          : Eigen::VectorXd(sq.colwise().mean().transpose());
        if (V[b].size() == 0) V[b] = Mat::Zero(v.size(), 1);
        V[b] = o.beta2 * V[b] + (1 - o.beta2) * v;
        for (Index i = 0; i < m; ++i)
          for (Index j = 0; j < n; ++j)
            U(i, j) = O(i, j) / std::sqrt(std::max(V[b](per_row ? i : j, 0), o.eps));
        if (U.norm() > 0) U *= O.norm() / U.norm();
      } else if (o.variant == MuonVariant::adamuon) {
        if (V[b].size() == 0) V[b] = Mat::Zero(m, n);
        V[b] = o.beta2 * V[b] + (1 - o.beta2) * O.cwiseProduct(O);
        // The authors' code of the sign form divides by sqrt(V) + eps, no
        // bias correction; the first version by sqrt(V / (1 - beta2^t)) + eps.
        const double correction = sign ? 1.0 : 1 - std::pow(o.beta2, t);
        for (Index i = 0; i < m; ++i)
          for (Index j = 0; j < n; ++j)
            U(i, j) = O(i, j) / (std::sqrt(V[b](i, j) / correction) + o.eps);
        // Rescaled to sqrt(min(m, n)) (the authors' code divides by
        // ||U||_F + eps: 1e-8 / ||U||_F relative, below this test's reach).
        if (U.norm() > 0) U *= std::sqrt(double(std::min(m, n))) / U.norm();
      }
      const double scale = o.match_rms_adamw ? 0.2 * std::sqrt(double(std::max(m, n)))
                                             : std::sqrt(std::max(1.0, double(m) / double(n)));
      next.middleRows(r0, m) = decay * W.middleRows(r0, m) - o.lr * scale * U;
      r0 += m;
    }
    W = next;
  }
};

muon::MuonGroupOptions library_options(const ModelOptions& o) {
  muon::MuonGroupOptions g;
  g.with_lr(o.lr).with_momentum(o.mu).with_weight_decay(o.lambda).with_variant(o.variant);
  g.with_nesterov(o.nesterov);
  if (o.l2) g.with_weight_decay_form(muon::WeightDecayForm::l2);
  if (o.match_rms_adamw) g.with_adjust_lr(muon::LrAdjust::match_rms_adamw);
  g.normuon_beta2 = g.adamuon_beta2 = o.beta2;
  g.normuon_eps = g.adamuon_eps = o.eps;
  g.with_adamuon_form(o.adamuon_sign ? muon::AdaMuonForm::sign : muon::AdaMuonForm::plain);
  return g;
}

// A shape as the optimizer sees it and as the model sees it.
struct Case {
  std::string name;
  std::vector<Index> dims;   // the tensor's shape
  std::vector<Index> split;  // ParamOptions::split (empty: none)
  Index heads = 1;
  bool column_major = false;
};

// Rows of the (out, in) matrix, and the blocks the model orthogonalizes.
Index out_rows(const Case& c) { return c.dims.size() == 3 ? c.dims[0] * c.dims[1] : c.dims[0]; }
Index in_cols(const Case& c) { return c.dims.back(); }
std::vector<Index> model_blocks(const Case& c) {
  if (!c.split.empty()) return c.split;
  if (c.dims.size() == 3) return std::vector<Index>(std::size_t(c.dims[0]), c.dims[1]);
  if (c.heads > 1) return std::vector<Index>(std::size_t(c.heads), c.dims[0] / c.heads);
  return {c.dims[0]};
}

const Case kCases[] = {
    {"wide 4x10", {4, 10}, {}, 1, false},
    {"tall 12x5", {12, 5}, {}, 1, false},
    {"square 6x6", {6, 6}, {}, 1, false},
    {"batch 2x6x4", {2, 6, 4}, {}, 1, false},
    {"split {3,5} of 8x6", {8, 6}, {3, 5}, 1, false},
    {"2 heads of 8x3", {8, 3}, {}, 2, false},
    {"column-major tall 7x3", {7, 3}, {}, 1, true},
    {"column-major wide 3x7", {3, 7}, {}, 1, true},
};

// Runs `steps` steps of the optimizer (storage T, options `library`, by
// default library_options(o)) and of the model on the same gradients;
// returns the largest |difference| of the weights.
template <class T>
double run_against_model(const Case& c, const ModelOptions& o, int steps,
                         const muon::MuonGroupOptions* library = nullptr) {
  const Index rows = out_rows(c), cols = in_cols(c);
  const Mat W0 = gaussian(rows, cols, 7) * 0.1;
  ModelParam model(W0, model_blocks(c));
  // The parameter in memory: row-major (out, in), or column-major.
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> Wr = W0.cast<T>(),
                                                                    Gr(rows, cols);
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> Wc = W0.cast<T>(), Gc(rows, cols);
  muon::Optimizer<T> opt(library ? *library : library_options(o));
  muon::ParamOptions po;
  po.route = muon::Route::muon;
  for (Index s : c.split) po.split.push_back(s);
  if (c.heads > 1) po.heads = c.heads;
  muon::ParamView<T> pv, gv;
  if (c.column_major) {
    pv = muon::ParamView<T>::from(Wc);
    gv = muon::ParamView<T>::from(Gc);
  } else {
    pv = c.dims.size() == 3 ? muon::ParamView<T>(Wr.data(), {c.dims[0], c.dims[1], c.dims[2]})
                            : muon::ParamView<T>(Wr.data(), {rows, cols});
    gv = c.dims.size() == 3 ? muon::ParamView<T>(Gr.data(), {c.dims[0], c.dims[1], c.dims[2]})
                            : muon::ParamView<T>(Gr.data(), {rows, cols});
  }
  opt.add_param("w", pv, gv, po);
  for (int k = 0; k < steps; ++k) {
    // Gradients of varying size, so the second moments see different scales.
    const Mat G = gaussian(rows, cols, 100 + std::uint64_t(k)) * std::pow(3.0, k % 3 - 1);
    Gr = G.cast<T>();
    Gc = G.cast<T>();
    // The model sees exactly the gradient the optimizer reads (rounded to T).
    model.step(Gr.template cast<double>(), o);
    opt.step();
  }
  const Mat got =
      c.column_major ? Mat(Wc.template cast<double>()) : Mat(Wr.template cast<double>());
  return (got - model.W).cwiseAbs().maxCoeff();
}

}  // namespace

TEST_CASE("NorMuon follows its equation over several steps and shapes", "[family][normuon]") {
  ModelOptions o;
  o.variant = MuonVariant::normuon;
  for (const Case& c : kCases) {
    INFO(c.name);
    CHECK(run_against_model<double>(c, o, 4) < 1e-10);
    CHECK(run_against_model<float>(c, o, 4) < 2e-5);
  }
  // beta2 and eps are read: another beta2 and a large floor change the result.
  ModelOptions other = o;
  other.beta2 = 0.5;
  other.eps = 0.3;
  CHECK(run_against_model<double>(kCases[1], other, 3) < 1e-10);
}

TEST_CASE(
    "AdaMuon's sign form (its authors' code) follows its equation over several steps and "
    "shapes",
    "[family][adamuon]") {
  // The authors' code (Chongjie-Si/AdaMuon, gpt2/models/optimizers/
  // adamuon.py; megatron/core/optimizer/muon.py): Newton–Schulz of the sign
  // of the Nesterov look-ahead, V decayed by the momentum 0.95, no bias
  // correction, eps 1e-8, sqrt(min(m, n)) and 0.2 sqrt(max(m, n)).
  ModelOptions o;
  o.variant = MuonVariant::adamuon;
  o.adamuon_sign = true;
  o.beta2 = 0.95;
  o.eps = 1e-8;
  o.match_rms_adamw = true;
  // The library's defaults: MuonGroupOptions::adamuon() with the model's lr,
  // momentum and decay, nothing else set.
  const muon::MuonGroupOptions preset =
      muon::MuonGroupOptions::adamuon().with_lr(o.lr).with_momentum(o.mu).with_weight_decay(
          o.lambda);
  for (const Case& c : kCases) {
    INFO(c.name);
    CHECK(run_against_model<double>(c, o, 4, &preset) < 1e-10);
    CHECK(run_against_model<float>(c, o, 4, &preset) < 2e-5);
  }
  CHECK(preset.adamuon_form == muon::AdaMuonForm::sign);
  CHECK(preset.adamuon_beta2 == 0.95);
  CHECK(preset.adamuon_eps == 1e-8);
  CHECK(preset.adjust_lr == muon::LrAdjust::match_rms_adamw);
  CHECK(muon::MuonGroupOptions().adamuon_form == muon::AdaMuonForm::sign);
  // beta2 and eps are read, and eps is added to sqrt(V) uncorrected: an eps
  // comparable to sqrt(V) makes a bias correction show.
  ModelOptions other = o;
  other.beta2 = 0.5;
  other.eps = 0.05;
  for (const Case& c : {kCases[0], kCases[1], kCases[4]}) {
    INFO(c.name);
    CHECK(run_against_model<double>(c, other, 3) < 1e-10);
  }
  // Without Nesterov it is the sign of the momentum buffer itself.
  ModelOptions plain_momentum = o;
  plain_momentum.nesterov = false;
  CHECK(run_against_model<double>(kCases[0], plain_momentum, 3) < 1e-10);
  // The sign changes the step: against the plain form (same beta2 and eps)
  // on the same gradients the weights differ.
  ModelOptions plain = o;
  plain.adamuon_sign = false;
  ModelParam a(gaussian(4, 10, 7) * 0.1, {4}), b = a;
  for (int k = 0; k < 2; ++k) {
    a.step(gaussian(4, 10, 100 + std::uint64_t(k)), o);
    b.step(gaussian(4, 10, 100 + std::uint64_t(k)), plain);
  }
  CHECK((a.W - b.W).cwiseAbs().maxCoeff() > 1e-4);
}

TEST_CASE("AdaMuon's plain form (the paper's first version) follows its equation",
          "[family][adamuon]") {
  ModelOptions o;
  o.variant = MuonVariant::adamuon;
  o.beta2 = 0.999;
  o.eps = 1e-8;
  o.match_rms_adamw = true;
  for (const Case& c : kCases) {
    INFO(c.name);
    CHECK(run_against_model<double>(c, o, 4) < 1e-10);
    CHECK(run_against_model<float>(c, o, 4) < 2e-5);
  }
  CHECK(library_options(o).adamuon_form == muon::AdaMuonForm::plain);
  CHECK(muon::MuonGroupOptions::normuon().normuon_beta2 == 0.95);
  CHECK(muon::MuonGroupOptions::normuon().normuon_eps == 1e-10);
}

TEST_CASE("the L2 form adds lambda W to the gradient before the momentum", "[family][l2]") {
  for (int variant = 0; variant < 4; ++variant) {
    // muon, normuon, the plain AdaMuon, the sign AdaMuon
    const MuonVariant v = variant == 0   ? MuonVariant::muon
                          : variant == 1 ? MuonVariant::normuon
                                         : MuonVariant::adamuon;
    INFO(muon::muon_variant_name(v) << (variant == 3 ? " (sign)" : ""));
    ModelOptions o;
    o.variant = v;
    o.adamuon_sign = variant == 3;
    o.l2 = true;
    o.lambda = 0.5;  // large, so that a decay applied the decoupled way would show
    for (const Case& c : kCases) {
      INFO(c.name);
      CHECK(run_against_model<double>(c, o, 3) < 1e-10);
    }
    // The same lambda in the decoupled form is a different optimizer.
    ModelOptions decoupled = o;
    decoupled.l2 = false;
    ModelParam a(gaussian(4, 10, 7) * 0.1, {4}), b = a;
    a.step(gaussian(4, 10, 100), o);
    b.step(gaussian(4, 10, 100), decoupled);
    CHECK((a.W - b.W).cwiseAbs().maxCoeff() > 1e-4);
  }
}

TEST_CASE("a zero gradient leaves only the decay, never NaN", "[family][edge]") {
  for (MuonVariant v : {MuonVariant::normuon, MuonVariant::adamuon}) {
    INFO(muon::muon_variant_name(v));
    std::vector<float> w(6 * 4), g(6 * 4, 0.0f);
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.1f * float(i) - 1.0f;
    const std::vector<float> w0 = w;
    muon::Optimizer<float> opt(
        muon::MuonGroupOptions().with_variant(v).with_lr(0.1).with_weight_decay(0.5));
    opt.add_param("w", {w.data(), {6, 4}}, {g.data(), {6, 4}});
    for (int k = 0; k < 2; ++k) REQUIRE(opt.step().status == muon::StepStatus::ok);
    const float decay = float(1 - 0.1 * 0.5);
    for (std::size_t i = 0; i < w.size(); ++i) {
      REQUIRE(std::isfinite(w[i]));
      CHECK(std::abs(w[i] - w0[i] * decay * decay) <= 1e-6f * (1 + std::abs(w0[i])));
    }
    const auto& V = opt.second_moment("w");
    for (Index e = 0; e < V.size(); ++e) CHECK(V.data()[e] == 0.0f);
  }
}

TEST_CASE("a variant's state: sizes, checkpoints, switching", "[family][state]") {
  // NorMuon keeps max(rows, cols) per block; AdaMuon one number per entry.
  std::vector<float> w(2 * 6 * 4, 0.5f), g(2 * 6 * 4);
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::sin(float(i) + 1.0f);
  {
    muon::Optimizer<float> opt(muon::MuonGroupOptions::normuon());
    opt.add_param("w", {w.data(), {2, 6, 4}}, {g.data(), {2, 6, 4}});
    CHECK(opt.second_moment("w").size() == 2 * 6);
    CHECK(opt.state_bytes() == (2 * 6 * 4 + 12) * sizeof(float));
    REQUIRE_THROWS_AS(opt.exp_avg_sq("w"), muon::Error);
  }
  {
    muon::Optimizer<float> opt;
    opt.add_param("w", {w.data(), {2, 6, 4}}, {g.data(), {2, 6, 4}});
    const std::string message = muon_test::error_message([&] { opt.second_moment("w"); });
    CHECK(muon_test::contains(message, "'w'"));
    // Switching the variant gives the parameter the new state, zeroed.
    opt.set_option("variant", "adamuon");
    CHECK(opt.second_moment("w").size() == 2 * 6 * 4);
    opt.step();
    CHECK(opt.second_moment("w").cwiseAbs().maxCoeff() > 0);
    opt.set_option("variant", "normuon");
    CHECK(opt.second_moment("w").size() == 12);
    CHECK(opt.second_moment("w").cwiseAbs().maxCoeff() == 0);
    REQUIRE_THROWS_AS(opt.set_option("variant", "adam"), muon::Error);
    CHECK(opt.muon_options().variant == MuonVariant::normuon);
  }
  // A checkpoint carries the variant, its options and its state: a fresh
  // optimizer with default options continues bitwise.
  for (MuonVariant v : {MuonVariant::normuon, MuonVariant::adamuon}) {
    INFO(muon::muon_variant_name(v));
    std::vector<float> wa(8 * 5), ga(8 * 5);
    for (std::size_t i = 0; i < wa.size(); ++i) wa[i] = std::cos(float(i));
    muon::MuonGroupOptions mo;
    mo.with_variant(v).with_weight_decay_form(muon::WeightDecayForm::l2);
    mo.normuon_beta2 = 0.9;
    mo.adamuon_eps = 1e-6;
    muon::ParamOptions split;
    split.split = {3, 5};
    muon::Optimizer<float> a(mo);
    a.add_param("w", {wa.data(), {8, 5}}, {ga.data(), {8, 5}}, split);
    const auto fill = [&](int k) {
      for (std::size_t i = 0; i < ga.size(); ++i) ga[i] = std::sin(float(i * (k + 2)));
    };
    for (int k = 0; k < 2; ++k) {
      fill(k);
      a.step();
    }
    std::stringstream ss;
    a.save(ss);
    std::vector<float> wb = wa, gb(ga.size());
    muon::Optimizer<float> b;
    b.add_param("w", {wb.data(), {8, 5}}, {gb.data(), {8, 5}}, split);
    b.load(ss);
    CHECK(b.muon_options().variant == v);
    CHECK(b.muon_options().weight_decay_form == muon::WeightDecayForm::l2);
    CHECK(b.muon_options().normuon_beta2 == 0.9);
    CHECK(b.muon_options().adamuon_eps == 1e-6);
    CHECK(muon_test::bitwise_equal(a.second_moment("w"), b.second_moment("w")));
    for (int k = 2; k < 4; ++k) {
      fill(k);
      gb = ga;
      a.step();
      b.step();
    }
    CHECK(wa == wb);
  }
  // A plain Muon checkpoint still loads into an optimizer set to a variant
  // (the file's options win, as for every option), and vice versa a variant's
  // file with a buffer missing is refused naming the parameter.
  {
    std::vector<float> wa(4 * 4, 0.1f), ga(4 * 4, 0.2f);
    muon::Optimizer<float> plain;
    plain.add_param("w", {wa.data(), {4, 4}}, {ga.data(), {4, 4}});
    plain.step();
    std::stringstream ss;
    plain.save(ss);
    muon::Optimizer<float> normuon(muon::MuonGroupOptions::normuon());
    normuon.add_param("w", {wa.data(), {4, 4}}, {ga.data(), {4, 4}});
    normuon.load(ss);
    CHECK(normuon.muon_options().variant == MuonVariant::muon);
    REQUIRE_THROWS_AS(normuon.second_moment("w"), muon::Error);
    normuon.step();
  }
}

TEST_CASE("the variants' options are validated by name", "[family][options]") {
  muon::Optimizer<float> opt;
  for (const char* key : {"normuon_beta2", "adamuon_beta2"}) {
    INFO(key);
    const std::string message = muon_test::error_message([&] { opt.set_option(key, 1.0); });
    CHECK(muon_test::contains(message, key));
    opt.set_option(key, 0.5);
  }
  for (const char* key : {"normuon_eps", "adamuon_eps"}) {
    INFO(key);
    const std::string message = muon_test::error_message([&] { opt.set_option(key, 0.0); });
    CHECK(muon_test::contains(message, key));
  }
  CHECK(opt.muon_options().normuon_beta2 == 0.5);
  CHECK(opt.muon_options().adamuon_beta2 == 0.5);
  opt.set_option("weight_decay_form", "l2");
  CHECK(opt.muon_options().weight_decay_form == muon::WeightDecayForm::l2);
  // Turbo-Muon's AOL normalization is an option too, kept by checkpoints.
  opt.set_option("ns_normalization", "aol");
  CHECK(opt.muon_options().ns.normalization == muon::NsNormalization::aol);
  CHECK_THROWS_AS(opt.set_option("ns_normalization", "spectral"), muon::Error);
  std::vector<float> w(6 * 8, 0.25f), g(6 * 8, 0.5f);
  opt.add_param("w", {w.data(), {6, 8}}, {g.data(), {6, 8}});
  opt.step();
  std::stringstream ss;
  opt.save(ss);
  muon::Optimizer<float> back;
  back.add_param("w", {w.data(), {6, 8}}, {g.data(), {6, 8}});
  back.load(ss);
  CHECK(back.muon_options().ns.normalization == muon::NsNormalization::aol);
  CHECK(back.muon_options().weight_decay_form == muon::WeightDecayForm::l2);
  CHECK(muon::weight_decay_multiplier(muon::WeightDecayForm::l2, 0.1, 0.5, 0.1) == 1.0);
}

TEST_CASE("adamuon_form is an option: set by name, validated, kept by checkpoints",
          "[family][adamuon][options]") {
  muon::Optimizer<float> opt(muon::MuonGroupOptions::adamuon());
  CHECK(opt.muon_options().adamuon_form == muon::AdaMuonForm::sign);
  opt.set_option("adamuon_form", "plain");
  CHECK(opt.muon_options().adamuon_form == muon::AdaMuonForm::plain);
  const std::string message =
      muon_test::error_message([&] { opt.set_option("adamuon_form", "signed"); });
  CHECK(muon_test::contains(message, "adamuon_form"));
  CHECK(muon_test::contains(message, "sign or plain"));
  CHECK(opt.muon_options().adamuon_form == muon::AdaMuonForm::plain);
  CHECK_THROWS_AS(opt.set_option("adamuon_form", 1.0), muon::Error);
  muon::MuonGroupOptions bad;
  bad.adamuon_form = static_cast<muon::AdaMuonForm>(7);
  CHECK(muon_test::contains(muon_test::error_message([&] { bad.validate(); }), "adamuon_form"));
  CHECK(muon::adamuon_form_from_name("sign") == muon::AdaMuonForm::sign);
  CHECK(!muon::adamuon_form_from_name("Sign"));

  // Every form and beta2 comes back from a checkpoint as saved, the
  // defaults (sign, 0.95) included.
  for (muon::AdaMuonForm form : {muon::AdaMuonForm::sign, muon::AdaMuonForm::plain})
    for (double beta2 : {0.95, 0.999, 0.9}) {
      INFO(muon::adamuon_form_name(form) << ", beta2 " << beta2);
      std::vector<float> w(6 * 8, 0.25f), g(6 * 8);
      for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::cos(float(i));
      muon::MuonGroupOptions mo = muon::MuonGroupOptions::adamuon().with_adamuon_form(form);
      mo.adamuon_beta2 = beta2;
      muon::Optimizer<float> a(mo);
      a.add_param("w", {w.data(), {6, 8}}, {g.data(), {6, 8}});
      a.step();
      std::stringstream ss;
      a.save(ss);
      muon::Optimizer<float> b;
      b.add_param("w", {w.data(), {6, 8}}, {g.data(), {6, 8}});
      b.load(ss);
      CHECK(b.muon_options().variant == MuonVariant::adamuon);
      CHECK(b.muon_options().adamuon_form == form);
      CHECK(b.muon_options().adamuon_beta2 == beta2);
    }
  // A group of another variant at AdaMuon's defaults writes none of its keys
  // (the file stays readable by older readers).
  {
    std::vector<float> w(4 * 4, 0.1f), g(4 * 4, 0.2f);
    muon::Optimizer<float> plain;
    plain.add_param("w", {w.data(), {4, 4}}, {g.data(), {4, 4}});
    std::stringstream ss;
    plain.save(ss);
    CHECK(ss.str().find("adamuon") == std::string::npos);
    // ... and one whose latent AdaMuon options are not the defaults keeps them.
    plain.set_option("adamuon_form", "plain");
    std::stringstream again;
    plain.save(again);
    muon::Optimizer<float> back;
    back.add_param("w", {w.data(), {4, 4}}, {g.data(), {4, 4}});
    back.load(again);
    CHECK(back.muon_options().variant == MuonVariant::muon);
    CHECK(back.muon_options().adamuon_form == muon::AdaMuonForm::plain);
  }
}

namespace {

// The recipe of tests/data/checkpoint_adamuon_plain_float.muonckpt, written
// by the library before AdaMuon's sign form (when AdaMuon was the plain form
// and its beta2 defaulted to 0.999, left out of the file): three groups
// (AdaMuon at the defaults of that time; AdaMuon with beta2 0.99 and eps
// 1e-6; plain Muon), four parameters, three steps of exactly representable
// gradients.
struct AdaMuonRecipe {
  std::vector<float> a, ga, b, gb, c, gc, d, gd;
  muon::Optimizer<float> opt;
  static void fill_w(std::vector<float>& w, int seed) {
    for (std::size_t i = 0; i < w.size(); ++i)
      w[i] = float(int((i * 31 + std::size_t(seed) * 7) % 17) - 8) / 32.0f;
  }
  static void fill_g(std::vector<float>& g, int k, int seed) {
    for (std::size_t i = 0; i < g.size(); ++i)
      g[i] = float(int((i * 7919 + std::size_t(k) * 104729 + std::size_t(seed) * 13) % 201) - 100) /
             64.0f;
  }
  AdaMuonRecipe(const muon::MuonGroupOptions& g0, const muon::MuonGroupOptions& g1,
                const muon::MuonGroupOptions& g2)
      : a(6 * 10),
        ga(6 * 10),
        b(2 * 6 * 4),
        gb(2 * 6 * 4),
        c(8 * 5),
        gc(8 * 5),
        d(5 * 7),
        gd(5 * 7),
        opt(g0) {
    opt.add_group(g1);
    opt.add_group(g2);
    fill_w(a, 1);
    fill_w(b, 2);
    fill_w(c, 3);
    fill_w(d, 4);
    opt.add_param("a", {a.data(), {6, 10}}, {ga.data(), {6, 10}});
    opt.add_param("b", {b.data(), {2, 6, 4}}, {gb.data(), {2, 6, 4}});
    muon::ParamOptions po;
    po.group = 1;
    po.split = {3, 5};
    opt.add_param("c", {c.data(), {8, 5}}, {gc.data(), {8, 5}}, po);
    po.group = 2;
    po.split.clear();
    opt.add_param("d", {d.data(), {5, 7}}, {gd.data(), {5, 7}}, po);
  }
  void grads(int k) {
    fill_g(ga, k, 1);
    fill_g(gb, k, 2);
    fill_g(gc, k, 3);
    fill_g(gd, k, 4);
  }
};

}  // namespace

TEST_CASE("an AdaMuon checkpoint from before the sign form loads as the plain form it was",
          "[family][adamuon][checkpoint]") {
  const std::string path =
      std::string(MUON_TEST_DATA_DIR) + "/checkpoint_adamuon_plain_float.muonckpt";
  // Loaded into groups set to today's AdaMuon defaults, the file's AdaMuon
  // groups become what they were: plain, beta2 0.999 where the file left it
  // out, its own beta2 where it gave one.
  AdaMuonRecipe now(muon::MuonGroupOptions::adamuon(), muon::MuonGroupOptions::adamuon(),
                    muon::MuonGroupOptions());
  now.opt.load_file(path);
  REQUIRE(now.opt.step_count() == 3);
  const muon::MuonGroupOptions g0 = now.opt.muon_options(0), g1 = now.opt.muon_options(1),
                               g2 = now.opt.muon_options(2);
  CHECK(g0.variant == MuonVariant::adamuon);
  CHECK(g0.adamuon_form == muon::AdaMuonForm::plain);
  CHECK(g0.adamuon_beta2 == 0.999);
  CHECK(g0.adamuon_eps == 1e-8);
  CHECK(g0.adjust_lr == muon::LrAdjust::match_rms_adamw);
  CHECK(g0.lr == 0.02);
  CHECK(g1.adamuon_form == muon::AdaMuonForm::plain);
  CHECK(g1.adamuon_beta2 == 0.99);
  CHECK(g1.adamuon_eps == 1e-6);
  // A group that was not AdaMuon has no AdaMuon of its time to keep: today's
  // defaults, should it be switched.
  CHECK(g2.variant == MuonVariant::muon);
  CHECK(g2.adamuon_form == muon::AdaMuonForm::sign);
  CHECK(g2.adamuon_beta2 == 0.95);

  // Its state is the one today's plain form gives for the same three steps
  // (the old form is unchanged), and both continue alike.
  muon::MuonGroupOptions old0 =
      muon::MuonGroupOptions::adamuon().with_lr(0.02).with_adamuon_form(muon::AdaMuonForm::plain);
  old0.adamuon_beta2 = 0.999;
  muon::MuonGroupOptions old1 =
      muon::MuonGroupOptions::adamuon().with_lr(0.05).with_adamuon_form(muon::AdaMuonForm::plain);
  old1.adamuon_beta2 = 0.99;
  old1.adamuon_eps = 1e-6;
  AdaMuonRecipe then(old0, old1, muon::MuonGroupOptions().with_lr(0.03));
  for (int k = 0; k < 3; ++k) {
    then.grads(k);
    then.opt.step();
  }
  // The file was written by a build without FMA; float Newton-Schulz over
  // three steps rounds differently where the compiler contracts to FMA
  // (-march=native: V differs by up to 8.5e-6 of its largest entry). A
  // wrong form or decay moves V by percents.
  const auto close = [](const auto& x, const auto& y) {
    return (x - y).cwiseAbs().maxCoeff() <= 3e-5f * y.cwiseAbs().maxCoeff();
  };
  for (const char* name : {"a", "b", "c"}) {
    INFO(name);
    CHECK(close(now.opt.second_moment(name), then.opt.second_moment(name)));
    CHECK(close(now.opt.momentum_buffer(name), then.opt.momentum_buffer(name)));
  }
  CHECK(close(now.opt.momentum_buffer("d"), then.opt.momentum_buffer("d")));
  now.a = then.a;
  now.b = then.b;
  now.c = then.c;
  now.d = then.d;
  then.grads(3);
  now.grads(3);
  then.opt.step();
  now.opt.step();
  for (std::size_t i = 0; i < now.a.size(); ++i) CHECK(std::abs(now.a[i] - then.a[i]) <= 1e-6f);
  // Saved again, the file names the form and beta2, and reads back the same.
  std::stringstream ss;
  now.opt.save(ss);
  const muon::MuonGroupOptions defaults;
  AdaMuonRecipe back(defaults, defaults, defaults);
  back.opt.load(ss);
  CHECK(back.opt.muon_options(0).adamuon_form == muon::AdaMuonForm::plain);
  CHECK(back.opt.muon_options(0).adamuon_beta2 == 0.999);
}

TEST_CASE("the independent weight decay follows the lr schedule, not the lr's value",
          "[family][decay]") {
  // Wortsman et al. (arXiv 2309.14322): W <- W (1 - lambda s_t), s_t the
  // lr schedule's factor (eta_t / eta_max). A zero gradient leaves only the
  // decay, so after k steps W = W0 prod_t (1 - lambda s_t), derived by hand
  // below from the schedule's definition: linear warmup over 2 steps
  // (s = 1/2, 1), then a linear decay to 0.1 at step 6 (s_t = 1 - 0.9 (t -
  // 2) / 4 for t = 2 .. 5), then 0.1.
  const double lambda = 0.01;
  const double s[] = {0.5, 1.0, 1.0, 0.775, 0.55, 0.325, 0.1, 0.1};
  for (double lr : {0.5, 0.02}) {
    INFO("lr " << lr);
    std::vector<double> w(5 * 7), g(5 * 7, 0.0);
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.1 * double(i) - 1.5;
    const std::vector<double> w0 = w;
    muon::Optimizer<double> opt(
        muon::MuonGroupOptions().with_lr(lr).with_weight_decay(lambda).with_weight_decay_form(
            muon::WeightDecayForm::independent));
    opt.set_lr_schedule(muon::LrSchedule::warmup_linear(2, 6, 0.1));
    opt.add_param("w", {w.data(), {5, 7}}, {g.data(), {5, 7}});
    double product = 1.0;
    for (int t = 0; t < 8; ++t) {
      opt.step();
      product *= 1.0 - lambda * s[t];
      for (std::size_t i = 0; i < w.size(); ++i)
        REQUIRE(std::abs(w[i] - w0[i] * product) <= 1e-14 * std::abs(w0[i]));
    }
  }
  // No schedule: 1 - lambda each step, as before; a group lr of 0 decays nothing.
  CHECK(muon::weight_decay_multiplier(muon::WeightDecayForm::independent, 0.3, 0.01, 0.3) ==
        1.0 - 0.01);
  CHECK(muon::weight_decay_multiplier(muon::WeightDecayForm::independent, 0.15, 0.01, 0.3) ==
        1.0 - 0.5 * 0.01);
  CHECK(muon::weight_decay_multiplier(muon::WeightDecayForm::independent, 0.0, 0.01, 0.0) == 1.0);
  // The other forms at the same step: decoupled 1 - eta lambda, palm
  // 1 - eta^2 lambda, with eta = lr s_t.
  CHECK(muon::weight_decay_multiplier(muon::WeightDecayForm::decoupled, 0.15, 0.01, 0.3) ==
        1.0 - 0.15 * 0.01);
  CHECK(muon::weight_decay_multiplier(muon::WeightDecayForm::palm, 0.15, 0.01, 0.3) ==
        1.0 - 0.15 * 0.15 * 0.01);
}

TEST_CASE("a gradient whose float sum of squares underflows is normalized in double",
          "[family][tiny]") {
  // Entries near 1e-24: their squares (1e-48) are below float's smallest
  // subnormal (1.4e-45), so a float Frobenius norm would be 0 and the
  // iteration would start from G / eps. Both backends sum the squares in
  // double (docs/newton_schulz.md); with a tiny eps the result is the
  // orthogonalization of G itself.
  const Index m = 5, n = 8;
  const Mat G = gaussian(m, n, 3) * 1e-24;
  std::vector<float> w(m * n, 0.0f), g(m * n);
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) g[std::size_t(i * n + j)] = float(G(i, j));
  muon::MuonGroupOptions mo;
  mo.with_lr(1.0).with_weight_decay(0).with_momentum(0).with_nesterov(false);
  mo.with_ns(
      muon::NewtonSchulzOptions(muon::Schedule::quintic(), 40).with_eps(1e-40, muon::EpsMode::add));
  muon::Optimizer<float> opt(mo);
  opt.add_param("w", {w.data(), {m, n}}, {g.data(), {m, n}});
  opt.step();
  const Mat polar = muon::reference::polar_svd(Mat(G * 1e24));
  double worst = 0;
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j)
      worst = std::max(worst, std::abs(double(w[std::size_t(i * n + j)]) + polar(i, j)));
  CHECK(worst < 1e-4);
}

TEST_CASE("QK-Clip scales the query and key rows of the heads above tau", "[family][qk_clip]") {
  // 4 heads of 3 rows, model width 5; W_q and W_k separate, W_k column-major
  // (Eigen's default), so both memory layouts are scaled by (out, in) rows.
  const Index heads = 4, d = 3, width = 5;
  const Mat Q0 = gaussian(heads * d, width, 21), K0 = gaussian(heads * d, width, 22);
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> Q = Q0,
                                                                         dQ(heads * d, width);
  Mat K = K0, dK(heads * d, width);
  muon::Optimizer<double> opt;
  opt.add_param("attn.q", Q, dQ);
  opt.add_param("attn.k", K, dK);
  muon::QkClipHeads h;
  h.query = "attn.q";
  h.key = "attn.k";
  h.heads = heads;
  muon::QkClipOptions o;
  o.tau = 100;
  o.alpha = 0.3;
  // Head 0 below tau, head 1 exactly at tau (left alone), heads 2 and 3 above.
  const std::vector<double> maxima = {50.0, 100.0, 400.0, 150.0};
  const muon::QkClipReport report = opt.qk_clip(h, maxima, o);
  CHECK(report.clipped == 2);
  CHECK(report.min_gamma == 0.25);
  for (Index head = 0; head < heads; ++head) {
    const double gamma = maxima[std::size_t(head)] > 100 ? 100 / maxima[std::size_t(head)] : 1.0;
    const double q_factor = std::pow(gamma, 0.3), k_factor = std::pow(gamma, 0.7);
    INFO("head " << head);
    CHECK((Mat(Q.middleRows(head * d, d)) - q_factor * Q0.middleRows(head * d, d))
              .cwiseAbs()
              .maxCoeff() < 1e-15);
    CHECK(
        (K.middleRows(head * d, d) - k_factor * K0.middleRows(head * d, d)).cwiseAbs().maxCoeff() <
        1e-15);
  }
  // A logit bilinear in W_q, W_k: the clipped head's largest logit is tau again.
  const Eigen::VectorXd x = gaussian(width, 1, 23).col(0);
  const double before = (Q0.middleRows(2 * d, d) * x).dot(K0.middleRows(2 * d, d) * x);
  const double after = (Mat(Q.middleRows(2 * d, d)) * x).dot(K.middleRows(2 * d, d) * x);
  CHECK(std::abs(after - before * 0.25) < 1e-12 * (1 + std::abs(before)));

  // NaN or Inf maxima: an error naming the head; nothing written.
  const Mat Qk = Q, Kk = K;
  for (double bad :
       {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    const std::vector<double> with_bad = {500.0, 500.0, bad, 500.0};
    const std::string message = muon_test::error_message([&] { opt.qk_clip(h, with_bad, o); });
    CHECK(muon_test::contains(message, "max_logits[2]"));
    CHECK(muon_test::contains(message, "head 2"));
    CHECK(Mat(Q) == Qk);
    CHECK(K == Kk);
  }
  // Bad requests name what is wrong.
  CHECK(muon_test::contains(muon_test::error_message([&] {
                              opt.qk_clip(h, {1.0, 2.0}, o);
                            }),
                            "4 heads"));
  muon::QkClipHeads unknown = h;
  unknown.key = "attn.v";
  CHECK(muon_test::contains(muon_test::error_message([&] { opt.qk_clip(unknown, maxima, o); }),
                            "'attn.v'"));
  muon::QkClipHeads too_many = h;
  too_many.head_dim = 4;
  CHECK(muon_test::contains(muon_test::error_message([&] { opt.qk_clip(too_many, maxima, o); }),
                            "do not fit"));
  muon::QkClipOptions bad_alpha;
  bad_alpha.alpha = 1.5;
  CHECK(muon_test::contains(muon_test::error_message([&] { opt.qk_clip(h, maxima, bad_alpha); }),
                            "alpha"));
  CHECK(Mat(Q) == Qk);
  CHECK(K == Kk);
}

TEST_CASE("QK-Clip on a fused QKV projection scales only the Q and K rows", "[family][qk_clip]") {
  const Index heads = 2, d = 4, width = 6;
  std::vector<float> w(std::size_t(3 * heads * d * width)), g(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = std::sin(float(i) + 0.5f);
  const std::vector<float> w0 = w;
  muon::Optimizer<float> opt;
  muon::ParamOptions qkv;
  qkv.split = {heads * d, heads * d, heads * d};
  opt.add_param("attn.qkv", {w.data(), {3 * heads * d, width}}, {g.data(), {3 * heads * d, width}},
                qkv);
  muon::QkClipHeads h;
  h.query = h.key = "attn.qkv";
  h.heads = heads;
  h.head_dim = d;
  h.key_row = heads * d;
  opt.qk_clip(h, {100.0, 400.0});  // tau 100, alpha 0.5: head 1 by 0.5 on both sides
  for (Index r = 0; r < 3 * heads * d; ++r) {
    const bool head1 = (r >= d && r < 2 * d) || (r >= heads * d + d && r < 2 * heads * d);
    for (Index c = 0; c < width; ++c) {
      const std::size_t e = std::size_t(r * width + c);
      CHECK(w[e] == (head1 ? w0[e] * 0.5f : w0[e]));
    }
  }
  muon::QkClipHeads guessed = h;
  guessed.head_dim = 0;  // 24 rows / 2 heads = 12 would be wrong here
  CHECK(muon_test::contains(muon_test::error_message([&] {
                              opt.qk_clip(guessed, {1.0, 1.0});
                            }),
                            "head_dim"));
  muon::QkClipHeads overlapping = h;
  overlapping.key_row = d;
  CHECK(muon_test::contains(muon_test::error_message([&] {
                              opt.qk_clip(overlapping, {1.0, 1.0});
                            }),
                            "overlap"));
}

TEST_CASE("QK-Clip refuses head layouts it cannot place, before writing anything",
          "[family][qk_clip]") {
  // 4 heads of 3 rows in 12-row W_q and W_k; every request below asks for
  // rows the matrices do not have (or gives no maxima), and must leave both
  // weights as they were.
  const Index rows = 12, width = 5;
  Mat Q = gaussian(rows, width, 31), K = gaussian(rows, width, 32), dQ(rows, width),
      dK(rows, width);
  const Mat Q0 = Q, K0 = K;
  muon::Optimizer<double> opt;
  opt.add_param("q", Q, dQ);
  opt.add_param("k", K, dK);
  muon::QkClipHeads h;
  h.query = "q";
  h.key = "k";
  h.heads = 4;
  const std::vector<double> high(4, 1e6);  // every head far above tau
  const auto refused = [&](const muon::QkClipHeads& bad, const std::vector<double>& maxima,
                           const std::string& part) {
    const std::string message = muon_test::error_message([&] { opt.qk_clip(bad, maxima); });
    INFO(message);
    CHECK(muon_test::contains(message, part));
    CHECK(Q == Q0);
    CHECK(K == K0);
  };
  muon::QkClipHeads negative = h;
  negative.head_dim = -3;  // not "derive it"
  refused(negative, high, "head_dim: must be >= 1, or 0 for the query's rows / heads; got -3");
  muon::QkClipHeads five = h;
  five.heads = 5;  // 12 rows / 5 heads would be heads of 2 rows, the last 2 rows unclipped
  refused(five, std::vector<double>(5, 1e6), "the 12 rows of 'q' are not a multiple of 5 heads");
  muon::QkClipHeads wide = h;
  wide.head_dim = std::int64_t(1) << 62;  // 4 heads of 2^62 rows: 2^64 wraps
  refused(wide, high, "more rows than any matrix has");
  muon::QkClipHeads far = h;
  far.head_dim = 3;
  far.query_row = std::numeric_limits<std::int64_t>::max() - 5;  // + 12 wraps negative
  refused(far, high, "do not fit the 12 rows of 'q'");
  muon::QkClipHeads key_far = far;
  key_far.query_row = 0;
  key_far.key_row = std::numeric_limits<std::int64_t>::max() - 5;
  refused(key_far, high, "do not fit the 12 rows of 'k'");
  const std::string null_message =
      muon_test::error_message([&] { opt.qk_clip(h, nullptr, 4, muon::QkClipOptions()); });
  CHECK(muon_test::contains(null_message, "max_logits: is a null pointer for 4 values"));
  CHECK(Q == Q0);
  // A layout that fits still clips.
  CHECK(opt.qk_clip(h, high).clipped == 4);
  CHECK(Q != Q0);
}
