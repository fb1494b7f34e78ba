// SPDX-License-Identifier: MIT
// The exact references (polar_svd, polar_eigh) and the metrics, checked
// against matrices built from known singular vectors and hand values, and on
// rank-deficient matrices (exact zero singular values, dead rows and columns)
// against a float64 partial isometry U_r V_r^T built from known structure.
#include <muon/extern_templates.hpp>  // the heavy templates: compiled once
#include <muon/orthogonalize.hpp>
#include <muon/reference.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

namespace {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using namespace muon::reference;
namespace mt = muon_test;

/// The polar factor of a full-rank M, independently of any SVD: through the
/// inverse square root of the smaller Gram matrix (well conditioned here).
MatrixXd full_rank_polar(const MatrixXd& M) {
  if (M.rows() <= M.cols()) {
    Eigen::SelfAdjointEigenSolver<MatrixXd> eig(M * M.transpose());
    return eig.operatorInverseSqrt() * M;
  }
  Eigen::SelfAdjointEigenSolver<MatrixXd> eig(M.transpose() * M);
  return M * eig.operatorInverseSqrt();
}

/// A Gaussian matrix with dead units (zeroed rows and columns, as a ReLU
/// layer's gradient has), its rank and its polar factor: the live block's,
/// zero on the dead rows and columns. Entries are float-representable, so a
/// float copy is the same matrix.
struct DeadUnits {
  MatrixXd G, polar;
  Index rank = 0;
};

DeadUnits with_dead_units(Index rows, Index cols, const std::vector<Index>& dead_rows,
                          const std::vector<Index>& dead_cols, std::uint64_t seed) {
  const auto live = [](Index n, const std::vector<Index>& dead) {
    std::vector<Index> keep;
    for (Index i = 0; i < n; ++i)
      if (std::find(dead.begin(), dead.end(), i) == dead.end()) keep.push_back(i);
    return keep;
  };
  const std::vector<Index> r = live(rows, dead_rows), c = live(cols, dead_cols);
  const MatrixXd L =
      mt::gaussian(Index(r.size()), Index(c.size()), seed).cast<float>().cast<double>();
  const MatrixXd PL = full_rank_polar(L);
  DeadUnits d;
  d.G = MatrixXd::Zero(rows, cols);
  d.polar = MatrixXd::Zero(rows, cols);
  for (std::size_t j = 0; j < c.size(); ++j)
    for (std::size_t i = 0; i < r.size(); ++i) {
      d.G(r[i], c[j]) = L(Index(i), Index(j));
      d.polar(r[i], c[j]) = PL(Index(i), Index(j));
    }
  d.rank = std::min(L.rows(), L.cols());
  return d;
}

/// Indices i < n with i % stride == 0, the first `count` of them.
std::vector<Index> every(Index n, Index stride, Index count) {
  std::vector<Index> v;
  for (Index i = 0; i < n && Index(v.size()) < count; i += stride) v.push_back(i);
  return v;
}

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

TEST_CASE("polar_svd of a matrix with exact zero singular values is U_r V_r^T") {
  // Regression: BDCSVD's U V^T fills G's null space with arbitrary unit
  // singular values; the polar factor of a rank-r matrix is zero there.
  struct Case {
    Index rows, cols, rank;
  };
  std::uint64_t seed = 270;
  for (const Case c : {Case{12, 30, 5}, Case{30, 12, 5}, Case{20, 20, 7}, Case{9, 40, 1}}) {
    const VectorXd s = c.rank > 1 ? mt::geometric(c.rank, 2.0, 0.5) : VectorXd::Constant(1, 3.0);
    const mt::KnownSvd g = mt::with_singular_values(c.rows, c.cols, s, ++seed);
    INFO("seed " << seed << ", " << c.rows << "x" << c.cols << " rank " << c.rank);
    const MatrixXd want = g.U * g.V.transpose();  // U_r V_r^T, float64
    const MatrixXd P = polar_svd(g.G);
    CHECK(relative_distance(P, want) < 1e-12);
    CHECK((P * P.transpose() * P - P).norm() < 1e-12);  // a partial isometry
    // Float input: rounding G to float adds singular values near 1e-7
    // sigma_max, nonzero in double; float's cutoff, or computing in float,
    // treats them as the zeros they were.
    const Eigen::MatrixXf Gf = g.G.cast<float>();
    const double float_cutoff = default_singular_value_cutoff<float>(c.rows, c.cols);
    CHECK(relative_distance(polar_svd(Gf, float_cutoff), want) < 1e-6);
    CHECK(relative_distance(polar_svd<float>(Gf), want) < 1e-5);
    CHECK(numerical_rank(Gf) == std::min(c.rows, c.cols));
    // A relative cutoff: the same answer at any scale of G.
    CHECK(relative_distance(polar_svd(MatrixXd(1e-20 * g.G)), want) < 1e-12);
    CHECK(relative_distance(polar_svd(MatrixXd(1e20 * g.G)), want) < 1e-12);
  }
}

TEST_CASE("polar_svd of a rank-1 matrix is u v^T / (|u| |v|)") {
  for (auto sh : {std::pair<Index, Index>{5, 9}, {9, 5}, {6, 6}}) {
    const VectorXd u = mt::gaussian(sh.first, 1, 280), v = mt::gaussian(sh.second, 1, 281);
    INFO("seeds 280, 281, " << sh.first << "x" << sh.second);
    const MatrixXd want = u * v.transpose() / (u.norm() * v.norm());
    CHECK(relative_distance(polar_svd(MatrixXd(3.0 * u * v.transpose())), want) < 1e-13);
    CHECK(relative_distance(polar_svd(MatrixXd(-0.25 * u * v.transpose())), MatrixXd(-want)) <
          1e-13);
  }
}

TEST_CASE("polar_svd of the zero matrix is zero") {
  for (auto sh : {std::pair<Index, Index>{4, 7}, {7, 4}, {5, 5}, {1, 3}, {1, 1}}) {
    INFO(sh.first << "x" << sh.second);
    const MatrixXd P = polar_svd(MatrixXd::Zero(sh.first, sh.second));
    CHECK(P.rows() == sh.first);
    CHECK(P.cols() == sh.second);
    CHECK(P.norm() == 0.0);
    CHECK(polar_svd<float>(Eigen::MatrixXf::Zero(sh.first, sh.second)).norm() == 0.0f);
  }
}

TEST_CASE(
    "polar_svd on dead rows and columns: zero there, the live block's polar factor elsewhere") {
  // A ReLU layer's gradient: 17 of 64 units dead (zero rows of a wide fc1
  // gradient); the tall and transposed cases; more dead columns than live
  // ones (rank below the short side); dead rows and columns together.
  struct Case {
    Index rows, cols;
    std::vector<Index> dead_rows, dead_cols;
  };
  const std::vector<Case> cases = {{64, 160, every(64, 3, 17), {}},
                                   {160, 64, {}, every(64, 3, 17)},
                                   {40, 100, {}, every(100, 1, 70)},
                                   {100, 40, every(100, 1, 70), {}},
                                   {30, 50, every(30, 6, 5), every(50, 10, 5)}};
  std::uint64_t seed = 290;
  for (const Case& c : cases) {
    const DeadUnits d = with_dead_units(c.rows, c.cols, c.dead_rows, c.dead_cols, ++seed);
    INFO("seed " << seed << ", " << c.rows << "x" << c.cols << ", rank " << d.rank);
    const MatrixXd P = polar_svd(d.G);
    CHECK(relative_distance(P, d.polar) < 1e-12);
    for (Index i : c.dead_rows) CHECK(P.row(i).norm() < 1e-14);
    for (Index j : c.dead_cols) CHECK(P.col(j).norm() < 1e-14);
    const VectorXd s = singular_values(P);  // r ones, then zeros
    CHECK((s.head(d.rank).array() - 1.0).abs().maxCoeff() < 1e-12);
    CHECK(s.tail(s.size() - d.rank).maxCoeff() < 1e-12);
    // Float input (the same matrix), computed in double and in float.
    const Eigen::MatrixXf Gf = d.G.cast<float>();
    CHECK(relative_distance(polar_svd(Gf), d.polar) < 1e-12);
    CHECK(relative_distance(polar_svd<float>(Gf), d.polar) < 1e-5);
  }
}

TEST_CASE("Newton-Schulz on dead rows is close to polar_svd and orthogonal on G's range") {
  // Its odd polynomials map zero rows to zero rows: the partial isometry is
  // what it converges to, and the full-side metric cannot see that.
  const DeadUnits d = with_dead_units(64, 160, every(64, 3, 17), {}, 300);
  INFO("seed 300");
  // Converged (the classic quintic, 40 steps): the exact partial isometry.
  const MatrixXd O =
      muon::orthogonalize(d.G, muon::NewtonSchulzOptions(muon::Schedule::quintic(), 40));
  CHECK(relative_distance(O, d.polar) < 1e-10);
  CHECK(relative_distance(O, polar_svd(d.G)) < 1e-10);
  const RangeOrthogonalityError e = orthogonality_error_on_range(O, d.G);
  CHECK(e.rank == 47);
  CHECK(e.on_range < 1e-10);
  CHECK(e.off_range < 1e-12);
  // ||O O^T - I||_F sees the 17 dead rows as 17 unit errors.
  CHECK(std::abs(orthogonality_error(O) - std::sqrt(17.0)) < 1e-10);
  // The default options in float (Jordan's quintic, 5 steps: singular
  // values left in about [0.7, 1.2]): the distance to the reference and the
  // error on the range are those of the live rows alone, as if the dead
  // units were not there; nothing is put off the range.
  const Eigen::MatrixXf Of = muon::orthogonalize(Eigen::MatrixXf(d.G.cast<float>()));
  std::vector<Index> live_rows;
  for (Index i = 0; i < d.G.rows(); ++i)
    if (d.G.row(i).norm() > 0) live_rows.push_back(i);
  MatrixXd Of_live(Index(live_rows.size()), d.G.cols()), P_live(Of_live.rows(), Of_live.cols());
  for (std::size_t i = 0; i < live_rows.size(); ++i) {
    Of_live.row(Index(i)) = Of.row(live_rows[i]).cast<double>();
    P_live.row(Index(i)) = d.polar.row(live_rows[i]);
  }
  for (Index i = 0; i < d.G.rows(); ++i)
    if (d.G.row(i).norm() == 0) CHECK(Of.row(i).norm() == 0.0f);
  const double distance = relative_distance(Of, polar_svd(d.G));
  const RangeOrthogonalityError ef = orthogonality_error_on_range(Of, d.G);
  INFO("float, default options: distance " << distance << ", on range " << ef.on_range
                                           << ", off range " << ef.off_range);
  CHECK(std::abs(distance - relative_distance(Of_live, P_live)) < 1e-6);
  CHECK(std::abs(ef.on_range - orthogonality_error(Of_live)) < 1e-4);
  CHECK(ef.off_range < 1e-5);
}

TEST_CASE("polar_svd's relative cutoff decides which directions count, as polar_eigh's squared") {
  VectorXd s(3);
  s << 1.0, 1e-2, 1e-5;
  const mt::KnownSvd g = mt::with_singular_values(3, 9, s, 310);
  INFO("seed 310");
  const MatrixXd all = g.U * g.V.transpose();
  const MatrixXd top2 = g.U.leftCols(2) * g.V.leftCols(2).transpose();
  CHECK(relative_distance(polar_svd(g.G), all) < 1e-10);  // default: 9 eps, keeps 1e-5
  CHECK(relative_distance(polar_svd(g.G, 1e-6), all) < 1e-10);
  CHECK(relative_distance(polar_svd(g.G, 1e-3), top2) < 1e-12);
  CHECK(relative_distance(polar_svd(g.G, 1e-3), polar_eigh(g.G, 1e-6)) < 1e-10);
  CHECK(polar_svd(g.G, 1.0).norm() == 0.0);  // nothing exceeds sigma_max itself
  CHECK(numerical_rank(g.G) == 3);
  CHECK(numerical_rank(g.G, 1e-3) == 2);
  CHECK(numerical_rank(g.G, 0.5) == 1);
  CHECK(numerical_rank(g.G, 1.0) == 0);
}

TEST_CASE("numerical_rank: default cutoff max(m, n) eps sigma_max of the computing scalar") {
  CHECK(default_singular_value_cutoff<double>(4, 9) == 9 * std::numeric_limits<double>::epsilon());
  CHECK(default_singular_value_cutoff<float>(30, 7) ==
        30 * double(std::numeric_limits<float>::epsilon()));
  // 9 eps = 2e-15 in double: 1e-13 counts, 1e-17 (below G's rounding) does not.
  VectorXd s(4);
  s << 1.0, 1e-3, 1e-13, 1e-17;
  const mt::KnownSvd g = mt::with_singular_values(4, 9, s, 320);
  INFO("seed 320");
  CHECK(numerical_rank(g.G) == 3);
  CHECK(numerical_rank(MatrixXd(1e-200 * g.G)) == 3);  // relative: any scale
  // Rank 3, not 2 or 4 (the third singular vectors are known only to about
  // eps / 1e-13, hence the loose tolerance).
  const MatrixXd top3 = g.U.leftCols(3) * g.V.leftCols(3).transpose();
  CHECK(relative_distance(polar_svd(g.G), top3) < 1e-2);
  // In float 9 eps = 1.1e-6: 1e-7 is rounding. Rounding G to float adds
  // singular values near 1e-8, which double counts (full rank 4): a float
  // matrix is rank-deficient only up to float's cutoff.
  VectorXd sf(3);
  sf << 1.0, 1e-3, 1e-7;
  const Eigen::MatrixXf Gf = mt::with_singular_values(4, 9, sf, 321).G.cast<float>();
  CHECK(numerical_rank<float>(Gf) == 2);
  CHECK(numerical_rank(Gf) == 4);
  CHECK(numerical_rank(Gf, default_singular_value_cutoff<float>(4, 9)) == 2);
  CHECK(numerical_rank(MatrixXd::Zero(3, 5)) == 0);
  const DeadUnits d = with_dead_units(64, 160, every(64, 3, 17), {}, 322);
  CHECK(numerical_rank(d.G) == 47);
  CHECK(numerical_rank<float>(d.G.cast<float>()) == 47);
}

TEST_CASE("orthogonality_error_on_range against hand values") {
  // G of rank r = 4 in 10 x 25 (k = 10); U, V completed to k columns.
  const Index m = 10, n = 25, k = 10, r = 4;
  const mt::KnownSvd full = mt::with_singular_values(m, n, mt::geometric(k, 2.0, 0.5), 330);
  INFO("seed 330");
  const MatrixXd Ur = full.U.leftCols(r), Vr = full.V.leftCols(r);
  const MatrixXd G = Ur * mt::geometric(r, 3.0, 0.1).asDiagonal() * Vr.transpose();
  const MatrixXd partial = Ur * Vr.transpose();
  for (bool tall : {false, true}) {
    const MatrixXd O = tall ? MatrixXd(partial.transpose()) : partial;
    const RangeOrthogonalityError e =
        orthogonality_error_on_range(O, tall ? MatrixXd(G.transpose()) : G);
    CHECK(e.rank == r);
    CHECK(e.on_range < 1e-13);
    CHECK(e.off_range < 1e-13);
    // The full-side metric: k - r zero singular values, one unit error each.
    CHECK(std::abs(orthogonality_error(O) - std::sqrt(double(k - r))) < 1e-13);
  }
  // Singular values d on the range: sqrt(sum (d^2 - 1)^2), nothing off it.
  const VectorXd d = mt::geometric(r, 1.3, 0.4);
  const RangeOrthogonalityError scaled =
      orthogonality_error_on_range(MatrixXd(Ur * d.asDiagonal() * Vr.transpose()), G);
  CHECK(std::abs(scaled.on_range - std::sqrt((d.array().square() - 1.0).square().sum())) < 1e-13);
  CHECK(scaled.off_range < 1e-13);
  // The full-rank U V^T (the null space filled with unit singular values):
  // exact on the range, sqrt(k - r) off it; orthogonality_error sees nothing.
  const MatrixXd filled = full.U * full.V.transpose();
  const RangeOrthogonalityError f = orthogonality_error_on_range(filled, G);
  CHECK(f.on_range < 1e-13);
  CHECK(std::abs(f.off_range - std::sqrt(double(k - r))) < 1e-13);
  CHECK(orthogonality_error(filled) < 1e-13);
  CHECK(relative_distance(filled, polar_svd(G)) > 1.0);
  // A rotation on the range is still orthogonal there (it is not the polar
  // factor: relative_distance says so).
  const MatrixXd Q = mt::orthonormal_columns(r, r, 331);
  const MatrixXd rotated = Ur * Q * Vr.transpose();
  const RangeOrthogonalityError rot = orthogonality_error_on_range(rotated, G);
  CHECK(rot.on_range < 1e-13);
  CHECK(rot.off_range < 1e-13);
  CHECK(relative_distance(rotated, partial) > 0.1);
  // G = 0: no range, everything in O is off it.
  const RangeOrthogonalityError z = orthogonality_error_on_range(partial, MatrixXd::Zero(m, n));
  CHECK(z.rank == 0);
  CHECK(z.on_range == 0.0);
  CHECK(std::abs(z.off_range - partial.norm()) < 1e-13);
  // A full-rank G and O = U diag(d) V^T: the same number as orthogonality_error.
  const VectorXd dk = mt::geometric(k, 1.2, 0.7);
  const MatrixXd Ok = full.U * dk.asDiagonal() * full.V.transpose();
  const RangeOrthogonalityError same = orthogonality_error_on_range(Ok, full.G);
  CHECK(same.rank == k);
  CHECK(std::abs(same.on_range - orthogonality_error(Ok)) < 1e-13);
  // Float O and G (computed in double): G's rounding to float is rank in
  // double, so the float cutoff is passed.
  const RangeOrthogonalityError ff = orthogonality_error_on_range(
      partial.cast<float>(), G.cast<float>(), default_singular_value_cutoff<float>(m, n));
  CHECK(ff.rank == r);
  CHECK(ff.on_range < 1e-6);
  CHECK(ff.off_range < 1e-6);
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
  const MatrixXd G = mt::gaussian(4, 6, 261);
  CHECK(mt::contains(mt::error_message([&] { (void)numerical_rank(bad); }),
                     "G: contains NaN or Inf"));
  CHECK(mt::contains(mt::error_message([&] { (void)numerical_rank(MatrixXd(2, 0)); }),
                     "G: is empty"));
  CHECK(mt::contains(mt::error_message([&] { (void)orthogonality_error_on_range(G, bad); }),
                     "G: contains NaN or Inf"));
  CHECK(mt::contains(
      mt::error_message([&] { (void)orthogonality_error_on_range(MatrixXd(G.transpose()), G); }),
      "O: shape differs from G's"));
  CHECK(mt::contains(mt::error_message([&] {
                       (void)orthogonality_error_on_range(MatrixXd(0, 0), MatrixXd(0, 0));
                     }),
                     "G: is empty"));
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK(
      mt::contains(mt::error_message([&] { (void)polar_svd(G, nan); }), "relative_cutoff: is NaN"));
  CHECK(mt::contains(mt::error_message([&] { (void)polar_eigh(G, nan); }),
                     "relative_cutoff: is NaN"));
  CHECK(mt::contains(mt::error_message([&] { (void)numerical_rank(G, nan); }),
                     "relative_cutoff: is NaN"));
  CHECK(mt::contains(mt::error_message([&] { (void)orthogonality_error_on_range(G, G, nan); }),
                     "relative_cutoff: is NaN"));
}
