// SPDX-License-Identifier: MIT
// momentum_step against plain double recurrences written out below.
#include <muon/extern_templates.hpp>  // the heavy templates: compiled once
#include <muon/muon.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

namespace {

using muon_test::throws_naming;

// Uniform entries in [-1, 1) from a fixed seed.
Eigen::MatrixXd random_matrix(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  Eigen::MatrixXd m(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) m(i, j) = dist(gen);
  return m;
}

// |a - b| <= tol * (1 + |b|) elementwise; b is the double reference.
template <class DA>
bool close_to(const Eigen::DenseBase<DA>& a, const Eigen::MatrixXd& b, double tol) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Eigen::Index j = 0; j < b.cols(); ++j)
    for (Eigen::Index i = 0; i < b.rows(); ++i) {
      const double x = static_cast<double>(a.derived().coeff(i, j));
      if (!(std::abs(x - b(i, j)) <= tol * (1.0 + std::abs(b(i, j))))) return false;
    }
  return true;
}

template <class T>
double tolerance() {
  return std::is_same<T, double>::value ? 1e-13 : 2e-6;
}

struct Reference {
  Eigen::MatrixXd buffer;
  Eigen::MatrixXd input;
};

// One step of the documented recurrences, element by element, in double.
void reference_step(const Eigen::MatrixXd& g, Reference& r, double mu, bool nesterov, bool ema) {
  for (Eigen::Index j = 0; j < g.cols(); ++j)
    for (Eigen::Index i = 0; i < g.rows(); ++i) {
      double& m = r.buffer(i, j);
      if (ema)
        m = mu * m + (1.0 - mu) * g(i, j);
      else
        m = mu * m + g(i, j);
      if (!nesterov)
        r.input(i, j) = m;
      else if (ema)
        r.input(i, j) = (1.0 - mu) * g(i, j) + mu * m;
      else
        r.input(i, j) = g(i, j) + mu * m;
    }
}

}  // namespace

TEMPLATE_TEST_CASE("momentum_step follows the ema and sum recurrences over several steps",
                   "[momentum]", float, double) {
  using T = TestType;
  const Eigen::Index rows = 5, cols = 7;
  const double mu = 0.9;
  for (const bool ema : {true, false}) {
    for (const bool nesterov : {true, false}) {
      CAPTURE(ema, nesterov);
      muon::MomentumOptions opt;
      opt.momentum = mu;
      opt.nesterov = nesterov;
      opt.kind = ema ? muon::MomentumKind::ema : muon::MomentumKind::sum;

      muon::Matrix<T> buf = muon::Matrix<T>::Zero(rows, cols);
      muon::Matrix<T> input(rows, cols);
      Reference ref{Eigen::MatrixXd::Zero(rows, cols), Eigen::MatrixXd::Zero(rows, cols)};
      for (unsigned step = 0; step < 6; ++step) {
        const muon::Matrix<T> g = random_matrix(rows, cols, 100 + step).cast<T>();
        const muon::Matrix<T> g_before = g;
        muon::momentum_step(g, buf, input, opt);
        reference_step(g.template cast<double>(), ref, mu, nesterov, ema);
        CAPTURE(step);
        REQUIRE(g == g_before);
        REQUIRE(close_to(buf, ref.buffer, tolerance<T>()));
        REQUIRE(close_to(input, ref.input, tolerance<T>()));
      }
      if (!nesterov) REQUIRE(input == buf);  // the buffer itself is the NS input
    }
  }
}

TEST_CASE("momentum_step: first ema step from zero is (1-mu) g, Nesterov input (1-mu^2) g",
          "[momentum]") {
  // Hand-derived: m1 = (1-mu) g; input = (1-mu) g + mu (1-mu) g = (1-mu)(1+mu) g.
  Eigen::VectorXd g(3);
  g << 2.0, -1.0, 0.5;
  Eigen::VectorXd buf = Eigen::VectorXd::Zero(3), input(3);
  muon::MomentumOptions opt;  // ema, Nesterov, mu 0.95
  muon::momentum_step(g, buf, input, opt);
  const double expected_buf[] = {0.1, -0.05, 0.025};
  const double expected_input[] = {0.195, -0.0975, 0.04875};
  for (int i = 0; i < 3; ++i) {
    REQUIRE(std::abs(buf(i) - expected_buf[i]) < 1e-15);
    REQUIRE(std::abs(input(i) - expected_input[i]) < 1e-15);
  }
}

TEST_CASE("momentum_step: fp32 buffer for bf16 gradients leaves the gradient bit-identical",
          "[momentum]") {
  using bf16 = Eigen::bfloat16;
  const Eigen::Index rows = 4, cols = 6;
  const double mu = 0.95;
  muon::MomentumOptions opt;
  Eigen::MatrixXf buf = Eigen::MatrixXf::Zero(rows, cols);
  Eigen::Matrix<bf16, Eigen::Dynamic, Eigen::Dynamic> input(rows, cols);
  Reference ref{Eigen::MatrixXd::Zero(rows, cols), Eigen::MatrixXd::Zero(rows, cols)};
  for (unsigned step = 0; step < 4; ++step) {
    const Eigen::Matrix<bf16, Eigen::Dynamic, Eigen::Dynamic> g =
        random_matrix(rows, cols, 7 + step).cast<bf16>();
    std::vector<unsigned char> bits(sizeof(bf16) * static_cast<std::size_t>(g.size()));
    std::memcpy(bits.data(), g.data(), bits.size());

    muon::momentum_step(g, buf, input, opt);
    reference_step(g.cast<double>(), ref, mu, true, true);

    CAPTURE(step);
    REQUIRE(std::memcmp(bits.data(), g.data(), bits.size()) == 0);
    REQUIRE(close_to(buf, ref.buffer, 2e-6));
    // The bf16 NS input is the fp32 value rounded once: within half a bf16 ulp
    // (at most 2^-8 relative, 8 significand bits) of the reference.
    for (Eigen::Index j = 0; j < cols; ++j)
      for (Eigen::Index i = 0; i < rows; ++i)
        REQUIRE(std::abs(static_cast<double>(input(i, j)) - ref.input(i, j)) <=
                std::ldexp(1.0, -8) * std::abs(ref.input(i, j)) + 1e-6);
  }
}

TEST_CASE("momentum_step works on strided maps and flat vectors without touching padding",
          "[momentum]") {
  // A 3x4 view with outer stride 5 into a 5x4 column-major block: rows 3..4
  // are padding that must never change.
  const Eigen::Index rows = 3, cols = 4, ld = 5;
  Eigen::MatrixXd g_storage = random_matrix(ld, cols, 11);
  Eigen::MatrixXf buf_storage = Eigen::MatrixXf::Constant(ld, cols, 7.0f);
  Eigen::MatrixXf input_storage = Eigen::MatrixXf::Constant(ld, cols, -3.0f);
  buf_storage.topRows(rows).setZero();
  using Strided = Eigen::Map<Eigen::MatrixXf, 0, Eigen::OuterStride<>>;
  using ConstStrided = Eigen::Map<const Eigen::MatrixXd, 0, Eigen::OuterStride<>>;
  ConstStrided g(g_storage.data(), rows, cols, Eigen::OuterStride<>(ld));
  Strided buf(buf_storage.data(), rows, cols, Eigen::OuterStride<>(ld));
  Strided input(input_storage.data(), rows, cols, Eigen::OuterStride<>(ld));

  muon::MomentumOptions opt;
  opt.kind = muon::MomentumKind::sum;
  opt.momentum = 0.8;
  muon::momentum_step(g, buf, input, opt);
  muon::momentum_step(g, buf, input, opt);

  Reference ref{Eigen::MatrixXd::Zero(rows, cols), Eigen::MatrixXd::Zero(rows, cols)};
  const Eigen::MatrixXd g_view = g_storage.topRows(rows);
  reference_step(g_view, ref, 0.8, true, false);
  reference_step(g_view, ref, 0.8, true, false);
  REQUIRE(close_to(buf, ref.buffer, 2e-6));
  REQUIRE(close_to(input, ref.input, 2e-6));
  REQUIRE((buf_storage.bottomRows(ld - rows).array() == 7.0f).all());
  REQUIRE((input_storage.bottomRows(ld - rows).array() == -3.0f).all());

  // The same data as flat vectors (a bias-like 1-D parameter).
  Eigen::VectorXd g_flat = Eigen::Map<const Eigen::VectorXd>(g_view.data(), rows * cols);
  Eigen::VectorXf buf_flat = Eigen::VectorXf::Zero(rows * cols), input_flat(rows * cols);
  muon::momentum_step(g_flat, buf_flat, input_flat, opt);
  muon::momentum_step(g_flat, buf_flat, input_flat, opt);
  REQUIRE(
      close_to(buf_flat, Eigen::Map<const Eigen::VectorXd>(ref.buffer.data(), rows * cols), 2e-6));
}

TEST_CASE("ema and sum momentum differ by the scale (1-mu) and give the same NS output",
          "[momentum]") {
  // Both recurrences are linear and start at zero; the ema one is the sum one
  // fed (1-mu) g, so m_ema = (1-mu) m_sum at EVERY step for ANY gradients,
  // and the Nesterov inputs (1-mu) g + mu m_ema = (1-mu)(g + mu m_sum) too.
  // Newton–Schulz normalizes its input, so the orthogonalized updates agree.
  const Eigen::Index rows = 6, cols = 10;
  const double mu = 0.95;
  for (const bool nesterov : {true, false}) {
    CAPTURE(nesterov);
    muon::MomentumOptions ema_opt, sum_opt;
    ema_opt.momentum = sum_opt.momentum = mu;
    ema_opt.nesterov = sum_opt.nesterov = nesterov;
    ema_opt.kind = muon::MomentumKind::ema;
    sum_opt.kind = muon::MomentumKind::sum;
    Eigen::MatrixXd m_ema = Eigen::MatrixXd::Zero(rows, cols), m_sum = m_ema;
    Eigen::MatrixXd x_ema(rows, cols), x_sum(rows, cols);
    for (unsigned step = 0; step < 8; ++step) {
      CAPTURE(step);
      const Eigen::MatrixXd g = random_matrix(rows, cols, 300 + step);
      muon::momentum_step(g, m_ema, x_ema, ema_opt);
      muon::momentum_step(g, m_sum, x_sum, sum_opt);
      REQUIRE(close_to(m_ema, (1.0 - mu) * m_sum, 1e-14));
      REQUIRE(close_to(x_ema, (1.0 - mu) * x_sum, 1e-14));
      const Eigen::MatrixXd o_ema = muon::orthogonalize(x_ema);
      const Eigen::MatrixXd o_sum = muon::orthogonalize(x_sum);
      // Only the 1e-7 eps in the normalization sees the scale.
      REQUIRE((o_ema - o_sum).cwiseAbs().maxCoeff() < 1e-5);
      // And the output really is a (Jordan-quintic) orthogonalization.
      const auto range = muon::reference::singular_value_range(o_ema);
      REQUIRE(range.min > 0.6);
      REQUIRE(range.max < 1.2);
    }
  }
}

TEST_CASE("momentum_step rejects bad options and shapes and leaves the data untouched",
          "[momentum][errors]") {
  const Eigen::MatrixXd g = random_matrix(3, 4, 5);
  Eigen::MatrixXd buf = random_matrix(3, 4, 6), input = random_matrix(3, 4, 8);
  const Eigen::MatrixXd buf0 = buf, input0 = input;
  muon::MomentumOptions opt;

  for (const double bad : {1.0, -0.1, 1.5, std::nan("")}) {
    CAPTURE(bad);
    opt.momentum = bad;
    REQUIRE(throws_naming([&] { opt.validate(); }, "momentum"));
    REQUIRE(throws_naming([&] { muon::momentum_step(g, buf, input, opt); }, "momentum"));
  }
  opt.momentum = 0.0;  // the edge of the valid range: m = g
  REQUIRE_NOTHROW(opt.validate());
  opt.momentum = 0.95;

  Eigen::MatrixXd wrong_buf = Eigen::MatrixXd::Zero(4, 3);
  REQUIRE(throws_naming([&] { muon::momentum_step(g, wrong_buf, input, opt); }, "buf"));
  Eigen::MatrixXd wrong_input = Eigen::MatrixXd::Zero(3, 5);
  REQUIRE(throws_naming([&] { muon::momentum_step(g, buf, wrong_input, opt); }, "ns_input"));
  Eigen::VectorXd flat = Eigen::VectorXd::Zero(12);  // same size, different shape
  REQUIRE(throws_naming([&] { muon::momentum_step(g, flat, input, opt); }, "buf"));

  REQUIRE(buf == buf0);
  REQUIRE(input == input0);
  REQUIRE(wrong_buf.isZero(0.0));
  REQUIRE(wrong_input.isZero(0.0));
  REQUIRE(flat.isZero(0.0));
}

TEST_CASE("momentum 0 passes the gradient straight through", "[momentum]") {
  muon::MomentumOptions opt;
  opt.momentum = 0.0;
  const Eigen::MatrixXd g = random_matrix(2, 3, 9);
  for (const auto kind : {muon::MomentumKind::ema, muon::MomentumKind::sum}) {
    opt.kind = kind;
    Eigen::MatrixXd buf = random_matrix(2, 3, 10), input(2, 3);
    muon::momentum_step(g, buf, input, opt);
    // ema computes m + 1*(g - m): g up to one rounding of the subtraction.
    REQUIRE(close_to(buf, g, 1e-15));
    REQUIRE(close_to(input, g, 1e-15));
  }
}
