// SPDX-License-Identifier: MIT
// The exact references (polar_svd, polar_eigh) and the metrics, checked
// against matrices built from known singular vectors and hand values.
#include <muon/extern_templates.hpp>  // the heavy templates: compiled once
#include <muon/reference.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "catch.hpp"
#include "test_support.hpp"

namespace {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using namespace muon::reference;
namespace mt = muon_test;

}  // namespace

TEST_CASE("polar_svd and polar_eigh equal the hand-built U V^T") {
  const Index shapes[][2] = {{20, 50}, {50, 20}, {30, 30}, {1, 12}, {12, 1}};
  std::uint64_t seed = 200;
  for (const auto& sh : shapes) {
    const Index k = std::min(sh[0], sh[1]);
    // Condition number 100: the Gram route squares it to 1e4, still far
    // from double's limits, so both routes must be accurate to ~1e-12.
    const mt::KnownSvd g = mt::with_singular_values(
        sh[0], sh[1], k > 1 ? mt::geometric(k, 3.0, 0.03) : VectorXd::Constant(1, 2.0), ++seed);
    INFO("seed " << seed << ", " << sh[0] << "x" << sh[1]);
    const MatrixXd UVt = g.U * g.V.transpose();
    const MatrixXd Ps = polar_svd(g.G);
    const MatrixXd Pe = polar_eigh(g.G);
    CHECK(relative_distance(Ps, UVt) < 1e-12);
    CHECK(relative_distance(Pe, UVt) < 1e-10);
    CHECK(relative_distance(Ps, Pe) < 1e-10);
    CHECK(orthogonality_error(Ps) < 1e-12);
    CHECK(orthogonality_error(Pe) < 1e-10);
  }
}

TEST_CASE("references accept float input and compute in the requested scalar") {
  const mt::KnownSvd g = mt::with_singular_values(16, 40, mt::geometric(16, 1.0, 0.1), 210);
  INFO("seed 210");
  const Eigen::MatrixXf Gf = g.G.cast<float>();
  const MatrixXd exact = polar_svd(MatrixXd(Gf.cast<double>()));
  // Computed in double from float input: only the input rounding separates them.
  CHECK(relative_distance(polar_svd(Gf), exact) < 1e-12);
  CHECK(relative_distance(polar_eigh(Gf), exact) < 1e-10);
  // Computed in float: float accuracy, amplified by the condition number (10,
  // squared by the Gram route).
  const Eigen::MatrixXf Pf = polar_svd<float>(Gf);
  CHECK(relative_distance(Pf, exact) < 1e-5);
  CHECK(relative_distance(polar_eigh<float>(Gf), exact) < 1e-4);
}

TEST_CASE("polar_eigh on rank-deficient input returns the partial isometry on G's range") {
  const Index m = 12, n = 30, r = 5;
  for (bool tall : {false, true}) {
    const Index rows = tall ? n : m, cols = tall ? m : n;
    const mt::KnownSvd g = mt::with_singular_values(rows, cols, mt::geometric(r, 2.0, 0.5), 220);
    INFO("seed 220" << (tall ? " tall" : " wide"));
    const MatrixXd P = polar_eigh(g.G);
    // U_r V_r^T: rank r, singular values r ones and zeros.
    CHECK(relative_distance(P, MatrixXd(g.U * g.V.transpose())) < 1e-10);
    const VectorXd s = singular_values(P);
    CHECK((s.head(r).array() - 1.0).abs().maxCoeff() < 1e-10);
    CHECK(s.tail(s.size() - r).maxCoeff() < 1e-10);
    CHECK((P * P.transpose() * P - P).norm() < 1e-10);  // partial isometry
    // The exact zero matrix: no direction survives, the answer is zero.
    const MatrixXd Z = polar_eigh(MatrixXd::Zero(rows, cols));
    CHECK(Z.allFinite());
    CHECK(Z.norm() == 0.0);
  }
}

TEST_CASE("polar_eigh's relative cutoff decides which directions count") {
  // Gram eigenvalues are s^2: 1, 1e-4, 1e-10.
  VectorXd s(3);
  s << 1.0, 1e-2, 1e-5;
  const mt::KnownSvd g = mt::with_singular_values(3, 9, s, 230);
  INFO("seed 230");
  const MatrixXd keep_all = polar_eigh(g.G, 1e-12);
  CHECK(relative_distance(keep_all, MatrixXd(g.U * g.V.transpose())) < 1e-6);
  const MatrixXd drop_last = polar_eigh(g.G, 1e-8);  // drops only s^2 = 1e-10
  const MatrixXd U2V2t = g.U.leftCols(2) * g.V.leftCols(2).transpose();
  CHECK(relative_distance(drop_last, U2V2t) < 1e-10);
}

TEST_CASE("orthogonality_error: ~0 for orthonormal rows or columns, 3 sqrt(k) for 2Q") {
  for (auto sh : {std::pair<Index, Index>{7, 19}, {19, 7}, {9, 9}}) {
    const Index k = std::min(sh.first, sh.second);
    const MatrixXd Q = mt::orthonormal_columns(std::max(sh.first, sh.second), k, 240);
    const MatrixXd O = sh.first > sh.second ? Q : MatrixXd(Q.transpose());
    INFO("seed 240, " << sh.first << "x" << sh.second);
    CHECK(orthogonality_error(O) < 1e-13);
    // (2Q)^T (2Q) - I = 3 I, whose Frobenius norm is 3 sqrt(k).
    CHECK(std::abs(orthogonality_error(2.0 * O) - 3.0 * std::sqrt(double(k))) < 1e-12);
    // A diagonal of singular values d: sum (d_i^2 - 1)^2 under the root.
    VectorXd d = mt::geometric(k, 1.5, 0.5);
    const MatrixXd D =
        sh.first > sh.second ? MatrixXd(O * d.asDiagonal()) : MatrixXd(d.asDiagonal() * O);
    const double hand = std::sqrt((d.array().square() - 1.0).square().sum());
    CHECK(std::abs(orthogonality_error(D) - hand) < 1e-12);
  }
}

TEST_CASE("relative_distance and singular_value_range against hand values") {
  MatrixXd P(2, 2), O(2, 2);
  P << 3, 0, 0, 4;  // ||P||_F = 5
  O << 3, 1, 0, 4;  // ||O - P||_F = 1
  CHECK(std::abs(relative_distance(O, P) - 0.2) < 1e-15);
  CHECK(relative_distance(P, P) == 0.0);
  CHECK(std::abs(relative_distance(O, MatrixXd::Zero(2, 2)) - std::sqrt(26.0)) < 1e-14);
  CHECK(muon_test::contains(
      muon_test::error_message([&] { (void)relative_distance(O, MatrixXd::Zero(2, 3)); }),
      "O: shape differs"));

  VectorXd s(4);
  s << 2.5, 1.0, 0.3, 0.05;
  const mt::KnownSvd g = mt::with_singular_values(6, 11, s, 250);
  INFO("seed 250");
  const SingularValueRange range = singular_value_range(g.G);
  CHECK(std::abs(range.max - 2.5) < 1e-13);
  CHECK(range.min < 1e-13);  // rank 4 in a 6 x 11 matrix: two zero singular values
  const VectorXd sv = singular_values(g.G);
  REQUIRE(sv.size() == 6);
  CHECK((sv.head(4) - s).cwiseAbs().maxCoeff() < 1e-13);
  const SingularValueRange full =
      singular_value_range(mt::with_singular_values(4, 11, s, 251).G);  // full rank
  CHECK(std::abs(full.min - 0.05) < 1e-13);
}

TEST_CASE("references reject empty and non-finite input with a named problem") {
  MatrixXd bad = mt::gaussian(4, 6, 260);
  bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
  CHECK(mt::contains(mt::error_message([&] { (void)polar_svd(bad); }), "G: contains NaN or Inf"));
  CHECK(mt::contains(mt::error_message([&] { (void)polar_eigh(bad); }), "G: contains NaN or Inf"));
  CHECK(mt::contains(mt::error_message([&] { (void)polar_svd(MatrixXd(0, 3)); }), "G: is empty"));
  CHECK(mt::contains(mt::error_message([&] { (void)polar_eigh(MatrixXd(3, 0)); }), "G: is empty"));
  CHECK(mt::contains(mt::error_message([&] { (void)orthogonality_error(MatrixXd(0, 0)); }),
                     "O: is empty"));
  CHECK(mt::contains(mt::error_message([&] { (void)singular_values(MatrixXd(0, 2)); }),
                     "O: is empty"));
}
