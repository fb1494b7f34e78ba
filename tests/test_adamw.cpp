// SPDX-License-Identifier: MIT
// adamw_step against a plain double loop of the torch.optim.AdamW formula.
#include <muon/muon.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

namespace {

using muon_test::error_message;
using muon_test::throws_naming;

Eigen::MatrixXd random_matrix(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  Eigen::MatrixXd m(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) m(i, j) = dist(gen);
  return m;
}

struct State {
  Eigen::MatrixXd p, m, v;
};

// The AdamW update written out element by element in double (Loshchilov &
// Hutter; bias-corrected moments, decoupled decay scaled by lr).
void reference_adamw(State& s, const Eigen::MatrixXd& g, long t, const muon::AdamWOptions& o) {
  for (Eigen::Index j = 0; j < g.cols(); ++j)
    for (Eigen::Index i = 0; i < g.rows(); ++i) {
      double& p = s.p(i, j);
      double& m = s.m(i, j);
      double& v = s.v(i, j);
      p = p * (1.0 - o.lr * o.weight_decay);
      m = o.beta1 * m + (1.0 - o.beta1) * g(i, j);
      v = o.beta2 * v + (1.0 - o.beta2) * g(i, j) * g(i, j);
      const double m_hat = m / (1.0 - std::pow(o.beta1, static_cast<double>(t)));
      const double v_hat = v / (1.0 - std::pow(o.beta2, static_cast<double>(t)));
      p = p - o.lr * m_hat / (std::sqrt(v_hat) + o.eps);
    }
}

template <class DA>
double max_rel_error(const Eigen::DenseBase<DA>& a, const Eigen::MatrixXd& b) {
  double worst = 0;
  for (Eigen::Index j = 0; j < b.cols(); ++j)
    for (Eigen::Index i = 0; i < b.rows(); ++i) {
      const double x = static_cast<double>(a.derived().coeff(i, j));
      worst = std::max(worst, std::abs(x - b(i, j)) / (1.0 + std::abs(b(i, j))));
    }
  return worst;
}

}  // namespace

TEMPLATE_TEST_CASE("adamw_step matches the double formula over several steps", "[adamw]", float,
                   double) {
  using T = TestType;
  const double tol = std::is_same<T, double>::value ? 1e-13 : 2e-6;
  muon::AdamWOptions opt;
  opt.lr = 0.05;  // large enough that the steps move p visibly
  opt.weight_decay = 0.1;
  muon::AdamWOptions jordan_aux = opt;  // reference Muon's auxiliary Adam
  jordan_aux.beta2 = 0.95;
  jordan_aux.eps = 1e-10;
  for (const auto& o : {opt, jordan_aux}) {
    CAPTURE(o.beta2, o.eps);
    const Eigen::Index rows = 4, cols = 3;
    muon::Matrix<T> p = random_matrix(rows, cols, 51).cast<T>();
    muon::Matrix<T> m = muon::Matrix<T>::Zero(rows, cols), v = m;
    State ref{p.template cast<double>(), Eigen::MatrixXd::Zero(rows, cols),
              Eigen::MatrixXd::Zero(rows, cols)};
    for (long t = 1; t <= 7; ++t) {
      CAPTURE(t);
      const muon::Matrix<T> g = random_matrix(rows, cols, 60 + static_cast<unsigned>(t)).cast<T>();
      const muon::Matrix<T> g_before = g;
      muon::adamw_step(p, g, m, v, t, o);
      reference_adamw(ref, g.template cast<double>(), t, o);
      REQUIRE(g == g_before);
      REQUIRE(max_rel_error(m, ref.m) < tol);
      REQUIRE(max_rel_error(v, ref.v) < tol);
      REQUIRE(max_rel_error(p, ref.p) < tol);
    }
  }
}

TEST_CASE("adamw_step: bias correction makes the first step lr * sign(g)", "[adamw]") {
  // From zero moments: m1 = (1-b1) g, v1 = (1-b2) g^2, so m_hat = g,
  // v_hat = g^2 and the step is lr g / (|g| + eps) = lr sign(g) (up to eps).
  muon::AdamWOptions opt;
  opt.lr = 0.1;
  opt.weight_decay = 0.0;
  Eigen::Vector3d p(1.0, 1.0, 1.0), m = Eigen::Vector3d::Zero(), v = m;
  const Eigen::Vector3d g(0.5, -2.0, 1e-3);
  muon::adamw_step(p, g, m, v, 1, opt);
  const double expected_p[] = {0.9, 1.1, 0.9};
  const double expected_m[] = {0.05, -0.2, 1e-4};
  const double expected_v[] = {0.00025, 0.004, 1e-9};
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    // eps/|g| is at most 1e-5 (g = 1e-3), so within lr * 1e-5 = 1e-6 of lr sign(g).
    REQUIRE(std::abs(p(i) - expected_p[i]) < 1.1e-6);
    REQUIRE(std::abs(m(i) - expected_m[i]) < 1e-15);
    REQUIRE(std::abs(v(i) - expected_v[i]) < 1e-15);
  }
  // Weight decay uses lr: p(1 - 0.1*0.5) before the step.
  opt.weight_decay = 0.5;
  Eigen::Vector3d q(1.0, 1.0, 1.0), mq = Eigen::Vector3d::Zero(), vq = mq;
  muon::adamw_step(q, g, mq, vq, 1, opt);
  REQUIRE(std::abs(q(0) - (0.95 - 0.1)) < 1e-6);
  REQUIRE(std::abs(q(1) - (0.95 + 0.1)) < 1e-6);
}

TEST_CASE("adamw_step: bf16 parameter with fp32 moments on a strided map", "[adamw]") {
  using bf16 = Eigen::bfloat16;
  const Eigen::Index rows = 3, cols = 4, ld = 4;
  Eigen::Matrix<bf16, Eigen::Dynamic, Eigen::Dynamic> storage =
      random_matrix(ld, cols, 71).cast<bf16>();
  const Eigen::Matrix<bf16, Eigen::Dynamic, Eigen::Dynamic> before = storage;
  Eigen::Map<Eigen::Matrix<bf16, Eigen::Dynamic, Eigen::Dynamic>, 0, Eigen::OuterStride<>> p(
      storage.data(), rows, cols, Eigen::OuterStride<>(ld));
  Eigen::MatrixXf m = Eigen::MatrixXf::Zero(rows, cols), v = m;
  const Eigen::MatrixXf g = random_matrix(rows, cols, 72).cast<float>();
  muon::AdamWOptions opt;
  muon::adamw_step(p, g, m, v, 1, opt);

  State ref{before.topRows(rows).cast<double>(), Eigen::MatrixXd::Zero(rows, cols),
            Eigen::MatrixXd::Zero(rows, cols)};
  reference_adamw(ref, g.cast<double>(), 1, opt);
  REQUIRE(max_rel_error(m, ref.m) < 1e-6);
  REQUIRE(max_rel_error(v, ref.v) < 1e-6);
  for (Eigen::Index j = 0; j < cols; ++j) {
    for (Eigen::Index i = 0; i < rows; ++i)  // one rounding to bf16
      REQUIRE(std::abs(static_cast<double>(p(i, j)) - ref.p(i, j)) <=
              std::ldexp(1.0, -8) * std::abs(ref.p(i, j)) + 1e-6);
    REQUIRE(storage(ld - 1, j) == before(ld - 1, j));  // padding row untouched
  }
}

TEST_CASE("adamw_step rejects bad options, steps and shapes, leaving all data untouched",
          "[adamw][errors]") {
  Eigen::MatrixXd p = random_matrix(2, 3, 81), m = random_matrix(2, 3, 82);
  Eigen::MatrixXd v = random_matrix(2, 3, 83).cwiseAbs();
  const Eigen::MatrixXd g = random_matrix(2, 3, 84);
  const Eigen::MatrixXd p0 = p, m0 = m, v0 = v;

  const auto with = [](auto change) {
    muon::AdamWOptions o;
    change(o);
    return o;
  };
  const std::pair<muon::AdamWOptions, const char*> bad_options[] = {
      {with([](muon::AdamWOptions& o) { o.lr = -1e-3; }), "adamw_lr"},
      {with([](muon::AdamWOptions& o) { o.lr = INFINITY; }), "adamw_lr"},
      {with([](muon::AdamWOptions& o) { o.beta1 = 1.0; }), "adamw_beta1"},
      {with([](muon::AdamWOptions& o) { o.beta1 = -0.1; }), "adamw_beta1"},
      {with([](muon::AdamWOptions& o) { o.beta2 = 1.0; }), "adamw_beta2"},
      {with([](muon::AdamWOptions& o) { o.beta2 = std::nan(""); }), "adamw_beta2"},
      {with([](muon::AdamWOptions& o) { o.eps = 0.0; }), "adamw_eps"},
      {with([](muon::AdamWOptions& o) { o.weight_decay = -0.01; }), "adamw_weight_decay"},
  };
  for (const auto& bad : bad_options) {
    const muon::AdamWOptions& o = bad.first;
    const char* field = bad.second;
    CAPTURE(field);
    REQUIRE(throws_naming([&] { o.validate(); }, field));
    REQUIRE(throws_naming([&] { muon::adamw_step(p, g, m, v, 1, o); }, field));
  }
  const muon::AdamWOptions ok;
  REQUIRE_NOTHROW(ok.validate());
  REQUIRE(throws_naming([&] { muon::adamw_step(p, g, m, v, 0, ok); }, "step"));
  const Eigen::MatrixXd g_wrong = Eigen::MatrixXd::Zero(3, 2);
  REQUIRE(throws_naming([&] { muon::adamw_step(p, g_wrong, m, v, 1, ok); }, "grad"));
  Eigen::MatrixXd m_wrong = Eigen::MatrixXd::Zero(2, 2);
  REQUIRE(throws_naming([&] { muon::adamw_step(p, g, m_wrong, v, 1, ok); }, "exp_avg"));
  Eigen::VectorXd v_wrong = Eigen::VectorXd::Zero(6);
  REQUIRE(throws_naming([&] { muon::adamw_step(p, g, m, v_wrong, 1, ok); }, "exp_avg_sq"));

  REQUIRE(p == p0);
  REQUIRE(m == m0);
  REQUIRE(v == v0);
  REQUIRE(m_wrong.isZero(0.0));
  REQUIRE(v_wrong.isZero(0.0));
}

TEST_CASE("adamw_step refuses a non-finite gradient or an overflow, writing nothing",
          "[adamw][errors]") {
  // Without the check, a NaN gradient turns the parameter and both moments
  // NaN at that element, and a huge one makes exp_avg_sq infinite.
  Eigen::MatrixXf p = random_matrix(3, 4, 91).cast<float>(),
                  m = random_matrix(3, 4, 92).cast<float>();
  Eigen::MatrixXf v = random_matrix(3, 4, 93).cwiseAbs().cast<float>();
  const Eigen::MatrixXf p0 = p, m0 = m, v0 = v;
  const muon::AdamWOptions o;
  const auto refused = [&](const Eigen::MatrixXf& g, const char* field, const std::string& part) {
    const std::string message = error_message([&] { muon::adamw_step(p, g, m, v, 3, o); });
    INFO(message);
    CHECK(message.rfind(std::string("muon: ") + field + ":", 0) == 0);
    CHECK(message.find(part) != std::string::npos);
    CHECK(p == p0);
    CHECK(m == m0);
    CHECK(v == v0);
  };
  Eigen::MatrixXf g = random_matrix(3, 4, 94).cast<float>();
  g(2, 3) = std::nanf("");
  refused(g, "grad", "holds NaN or Inf at (2, 3); nothing was written");
  g(2, 3) = INFINITY;
  refused(g, "grad", "at (2, 3)");
  g(2, 3) = 1e30f;  // (1 - beta2) g^2 = 1e57: beyond float
  refused(g, "exp_avg_sq", "would overflow at (2, 3)");
  g(2, 3) = 0.5f;
  v(1, 1) = std::nanf("");  // a corrupt moment is not stepped on either
  const Eigen::MatrixXf v_bad = v;
  const std::string message = error_message([&] { muon::adamw_step(p, g, m, v, 3, o); });
  CHECK(message.rfind("muon: exp_avg_sq:", 0) == 0);
  CHECK(p == p0);
  CHECK(m == m0);
  v = v0;
  // Finite input still steps.
  muon::adamw_step(p, g, m, v, 3, o);
  CHECK(p != p0);
  CHECK(p.allFinite());
}

// ---- the optimizer's AdamW step: one write pass after a check that computes
// no update (optim/step_rules.hpp, "AdamW's check without computing the update")

namespace {

// torch.optim.AdamW's step written out in float, one operation at a time in
// the formula's order (each rounded to float), with the step's scalars
// computed in double: what the optimizer's AdamW must reproduce bit for bit.
void float_adamw(std::vector<float>& p, std::vector<float>& m, std::vector<float>& v,
                 const std::vector<float>& g, long t, const muon::AdamWOptions& o) {
  const float decay = static_cast<float>(1.0 - o.lr * o.weight_decay);
  const float c1 = static_cast<float>(1.0 - o.beta1), b2 = static_cast<float>(o.beta2);
  const float c2 = static_cast<float>(1.0 - o.beta2);
  const float step = static_cast<float>(o.lr / (1.0 - std::pow(o.beta1, double(t))));
  const float sbc2 = static_cast<float>(std::sqrt(1.0 - std::pow(o.beta2, double(t))));
  const float eps = static_cast<float>(o.eps);
  for (std::size_t i = 0; i < p.size(); ++i) {
    const float a = m[i] + c1 * (g[i] - m[i]);
    const float b = b2 * v[i] + c2 * g[i] * g[i];
    m[i] = a;
    v[i] = b;
    const float denominator = std::sqrt(b) / sbc2 + eps;
    p[i] = p[i] * decay - step * a / denominator;
  }
}

template <class Buffer>
bool same_bits(const std::vector<float>& expected, const Buffer& actual) {
  return static_cast<std::size_t>(actual.size()) == expected.size() &&
         std::memcmp(expected.data(), actual.data(), expected.size() * sizeof(float)) == 0;
}

struct AdamWParam {
  std::string name;
  std::int64_t rows, cols;
  std::vector<float> p, g, m, v;
};

}  // namespace

TEST_CASE("the optimizer's AdamW step gives the bits of the float formula written out",
          "[adamw][optimizer]") {
  // Rows of 70 (a run shorter than the vector width's multiple), of 600 (runs
  // of 256 and a tail), a 1-D bias; gradients from 1e-30 (moments in float's
  // subnormal range) to 1e10; 1 and 2 threads; several steps.
  for (const int threads : {1, 2}) {
    muon::AdamWOptions o;
    o.lr = 3e-3;
    o.weight_decay = 0.05;
    muon::Optimizer<float> opt(muon::MuonGroupOptions(), o);
    opt.set_ns_threads(threads);
    std::vector<AdamWParam> params = {{"wte.weight", 300, 70, {}, {}, {}, {}},
                                      {"lm_head.weight", 129, 600, {}, {}, {}, {}},
                                      {"bias", 1000, 1, {}, {}, {}, {}}};
    std::mt19937 gen(unsigned(17 + threads));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (AdamWParam& x : params) {
      const std::size_t n = std::size_t(x.rows * x.cols);
      x.p.resize(n);
      x.g.resize(n);
      x.m.assign(n, 0.0f);
      x.v.assign(n, 0.0f);
      for (float& e : x.p) e = normal(gen);
      if (x.cols == 1)
        opt.add_param(x.name, {x.p.data(), {x.rows}}, {x.g.data(), {x.rows}});
      else
        opt.add_param(x.name, {x.p.data(), {x.rows, x.cols}}, {x.g.data(), {x.rows, x.cols}});
    }
    for (long t = 1; t <= 4; ++t) {
      for (AdamWParam& x : params) {
        for (std::size_t i = 0; i < x.g.size(); ++i) {
          const float scale = i % 7 == 0 ? 1e-30f : (i % 11 == 0 ? 1e10f : 0.02f);
          x.g[i] = scale * normal(gen);
        }
      }
      std::vector<AdamWParam> expected = params;
      for (AdamWParam& x : expected) float_adamw(x.p, x.m, x.v, x.g, t, o);
      REQUIRE(opt.step().status == muon::StepStatus::ok);
      for (std::size_t k = 0; k < params.size(); ++k) {
        INFO(params[k].name << " threads " << threads << " step " << t);
        REQUIRE(same_bits(expected[k].p, params[k].p));
        REQUIRE(same_bits(expected[k].m, opt.exp_avg(params[k].name)));
        REQUIRE(same_bits(expected[k].v, opt.exp_avg_sq(params[k].name)));
        params[k].m = expected[k].m;
        params[k].v = expected[k].v;
      }
    }
  }
}

TEST_CASE("near float's largest value the AdamW check falls back to the exact one",
          "[adamw][optimizer][transaction]") {
  // The bound cannot vouch for a parameter within 1.6 % of FLT_MAX; the
  // exact check then decides: a step that stays finite is taken (with the
  // formula's bits), one that overflows is refused with nothing written.
  muon::AdamWOptions o;
  o.weight_decay = 0;
  std::vector<float> p(40, 3.38e38f), g(40, 0.5f);
  for (std::size_t i = 0; i < p.size(); i += 2) p[i] = -3.38e38f;
  muon::Optimizer<float> opt(muon::MuonGroupOptions(), o);
  opt.add_param("bias", {p.data(), {40}}, {g.data(), {40}});
  std::vector<float> expected = p, m(40, 0.0f), v(40, 0.0f);
  float_adamw(expected, m, v, g, 1, o);
  REQUIRE(opt.step().status == muon::StepStatus::ok);
  REQUIRE(same_bits(expected, p));
  REQUIRE(same_bits(m, opt.exp_avg("bias")));

  // lr 1e36: the first step moves every element by about lr * sign(g); with
  // g < 0 the positive elements pass FLT_MAX.
  std::vector<float> q(40, 3.40e38f), h(40, -0.5f);
  q[3] = 1.0f;
  muon::AdamWOptions big = o;
  big.lr = 1e36;
  muon::Optimizer<float> refusing(muon::MuonGroupOptions(), big);
  refusing.add_param("bias", {q.data(), {40}}, {h.data(), {40}});
  const std::vector<float> q0 = q;
  const std::string message = error_message([&] { refusing.step(); });
  INFO(message);
  CHECK(message.find("'bias'") != std::string::npos);
  CHECK(message.find("overflow float") != std::string::npos);
  CHECK(same_bits(q0, q));
  CHECK(refusing.exp_avg("bias").isZero(0.0));
  CHECK(refusing.exp_avg_sq("bias").isZero(0.0));
}

TEST_CASE("an AdamW step of a half parameter that overflows from zero is refused",
          "[adamw][optimizer][transaction]") {
  // p = 0, beta1 0.5: the first step moves p by lr * sign(g) = 70000, beyond
  // half's 65504. Only the Adam term of the bound sees it (the decay term is
  // 0): a bound that leaves out (1 - beta1)^2 / (1 - beta2) under the root
  // says 0.82 lr and lets the overflow through.
  muon::AdamWOptions o;
  o.lr = 7e4;
  o.beta1 = 0.5;
  o.weight_decay = 0;
  std::vector<Eigen::half> p(24, Eigen::half(0.0f)), g(24, Eigen::half(-0.25f));
  const auto p0 = p;
  muon::Optimizer<Eigen::half> opt(muon::MuonGroupOptions(), o);
  opt.add_param("bias", {p.data(), {24}}, {g.data(), {24}});
  const std::string message = error_message([&] { opt.step(); });
  INFO(message);
  CHECK(message.find("overflow half") != std::string::npos);
  CHECK(std::memcmp(p.data(), p0.data(), p.size() * sizeof(Eigen::half)) == 0);
  // lr 6e4 stays within half: stepped, every element by -lr sign(g) = +6e4.
  opt.set_option("adamw_lr", 6e4);
  REQUIRE(opt.step().status == muon::StepStatus::ok);
  for (const Eigen::half x : p) CHECK(std::abs(static_cast<float>(x) - 6e4f) < 64.0f);
}

TEST_CASE("step::adamw_parameter_bound bounds every element's new parameter",
          "[adamw][step_rules]") {
  namespace step = muon::optim::step;
  // Hand-derived: beta1 = 0, first step, m = v = 0: a = g, b = (1-b2) g^2,
  // sqrt(b) / sqrt(1 - b2) = |g|, so |new p - p decay| = lr |g| / (|g| + eps)
  // <= lr, and the Adam term of the bound is exactly lr (q plays no part).
  {
    const auto k = muon::optim::rules::adamw_coefficients<float>(0.01, 0.0, 0.999, 1e-8, 0.0, 1);
    step::AdamWExtent e;
    e.grad = 3.0;
    e.param = 2.0;
    const double bound = step::adamw_parameter_bound(e, k);  // lr and eps as floats
    CHECK(bound >= (2.0 + 0.01) * (1 - 1e-7));
    CHECK(bound <= (2.0 + 0.01) * (1 + 1e-6));
  }
  // Soundness: runs of elements drawn at random (moments made by the rule
  // from zero, arbitrary moments, m^2 = q v at the edge, zero gradients,
  // gradients far larger than the moments), several betas (beta1^2 >= beta2
  // too), steps and eps: every element's new parameter, computed by the
  // element rule, lies within the bound of its run's extent, up to the
  // rounding the bound leaves to its caller (a few float ulps; the check
  // allows 2^-6).
  std::mt19937 gen(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const double betas[][2] = {{0.0, 0.999}, {0.5, 0.999}, {0.9, 0.999}, {0.9, 0.95}, {0.95, 0.9}};
  int checked = 0;
  for (const auto& beta : betas)
    for (const double eps : {1e-8, 1e-30})
      for (const long t : {1L, 2L, 10L})
        for (int kind = 0; kind < 5; ++kind) {
          const auto k =
              muon::optim::rules::adamw_coefficients<float>(1e-3, beta[0], beta[1], eps, 0.1, t);
          const float q = step::adamw_ratio_square(k);
          std::vector<float> p(64), g(64), m(64, 0.0f), v(64, 0.0f);
          for (std::size_t i = 0; i < 64; ++i) {
            p[i] = normal(gen);
            g[i] = (kind == 3 ? 0.0f : 1.0f) * normal(gen) * (kind == 4 ? 1e6f : 1.0f);
            if (kind == 0)  // made by the rule over t - 1 earlier steps
              for (long s = 1; s < t; ++s) {
                const float h = normal(gen);
                const auto x = step::adamw_moments<float>(h, m[i], v[i], k);
                m[i] = x.exp_avg;
                v[i] = x.exp_avg_sq;
              }
            if (kind == 1 || kind == 3 || kind == 4) {
              v[i] = std::abs(normal(gen));
              m[i] = normal(gen);
            }
            if (kind == 2) {  // m^2 = q v
              v[i] = std::abs(normal(gen));
              m[i] = (i % 2 ? -1.0f : 1.0f) * std::sqrt(q * v[i]);
            }
          }
          step::AdamWExtent e;
          for (std::size_t i = 0; i < 64; ++i) {
            e.grad = std::max(e.grad, double(std::abs(g[i])));
            e.exp_avg = std::max(e.exp_avg, double(std::abs(m[i])));
            e.exp_avg_sq = std::max(e.exp_avg_sq, double(std::abs(v[i])));
            e.param = std::max(e.param, double(std::abs(p[i])));
            e.ratio_excess = std::max(e.ratio_excess, double(m[i] * m[i] - q * v[i]));
          }
          const double bound = step::adamw_parameter_bound(e, k);
          for (std::size_t i = 0; i < 64; ++i) {
            const auto x = step::adamw_element<float>(p[i], g[i], m[i], v[i], k);
            INFO("beta " << beta[0] << "," << beta[1] << " eps " << eps << " t " << t << " kind "
                         << kind);
            REQUIRE(std::abs(double(x.param)) <= bound * (1 + 1e-6));
            ++checked;
          }
        }
  CHECK(checked == 5 * 2 * 3 * 5 * 64);
  // An extent that is not finite (a NaN, an Inf, a negative v counted as
  // NaN) never passes: those runs are checked element by element.
  const auto k = muon::optim::rules::adamw_coefficients<float>(1e-3, 0.9, 0.999, 1e-8, 0.1, 3);
  const step::AdamWLimits limits{3.4e38, 3.4e38, 3.4e38};
  step::AdamWExtent fine;
  fine.grad = fine.exp_avg = fine.exp_avg_sq = fine.param = 1.0;
  CHECK(step::adamw_run_is_finite(fine, k, limits));
  for (int which = 0; which < 4; ++which)
    for (const double bad : {double(NAN), double(INFINITY)}) {
      step::AdamWExtent e = fine;
      (which == 0 ? e.grad : which == 1 ? e.exp_avg : which == 2 ? e.exp_avg_sq : e.param) = bad;
      CHECK_FALSE(step::adamw_run_is_finite(e, k, limits));
    }
}

TEST_CASE("a negative AdamW second moment is checked element by element",
          "[adamw][optimizer][transaction]") {
  // v < 0 cannot come from the rule; a checkpoint could hold one. The new
  // v = b2 v + (1 - b2) g^2 is then negative, its square root NaN, and the
  // exact check refuses the step: the bound must not vouch for it.
  muon::AdamWOptions o;
  std::vector<float> p(8, 1.0f), g(8, 0.0f);
  muon::Optimizer<float> opt(muon::MuonGroupOptions(), o);
  opt.add_param("bias", {p.data(), {8}}, {g.data(), {8}});
  REQUIRE(opt.step().status == muon::StepStatus::ok);  // m = v = 0: only the decay
  // The corrupt state, written in place (as a bad checkpoint would leave it).
  const_cast<float*>(opt.exp_avg_sq("bias").data())[5] = -1.0f;
  const std::vector<float> p0 = p;
  const std::string message = error_message([&] { opt.step(); });
  INFO(message);
  CHECK(message.find("'bias'") != std::string::npos);
  CHECK(same_bits(p0, p));
}
