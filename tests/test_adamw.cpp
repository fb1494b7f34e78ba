// SPDX-License-Identifier: MIT
// adamw_step against a plain double loop of the torch.optim.AdamW formula.
#include <muon/muon.hpp>

#include <cmath>
#include <random>
#include <string>

#include "catch.hpp"

namespace {

Eigen::MatrixXd random_matrix(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  Eigen::MatrixXd m(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) m(i, j) = dist(gen);
  return m;
}

template <class F>
bool throws_naming(F&& f, const std::string& parameter) {
  try {
    f();
  } catch (const muon::Error& e) {
    return std::string(e.what()).rfind("muon: " + parameter + ":", 0) == 0;
  }
  return false;
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
  Eigen::MatrixXf p = random_matrix(3, 4, 91).cast<float>(), m = random_matrix(3, 4, 92).cast<float>();
  Eigen::MatrixXf v = random_matrix(3, 4, 93).cwiseAbs().cast<float>();
  const Eigen::MatrixXf p0 = p, m0 = m, v0 = v;
  const muon::AdamWOptions o;
  const auto refused = [&](const Eigen::MatrixXf& g, const char* field, const std::string& part) {
    std::string message;
    try {
      muon::adamw_step(p, g, m, v, 3, o);
    } catch (const muon::Error& e) {
      message = e.what();
    }
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
  std::string message;
  try {
    muon::adamw_step(p, g, m, v, 3, o);
  } catch (const muon::Error& e) {
    message = e.what();
  }
  CHECK(message.rfind("muon: exp_avg_sq:", 0) == 0);
  CHECK(p == p0);
  CHECK(m == m0);
  v = v0;
  // Finite input still steps.
  muon::adamw_step(p, g, m, v, 3, o);
  CHECK(p != p0);
  CHECK(p.allFinite());
}
