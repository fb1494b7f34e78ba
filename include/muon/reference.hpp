// SPDX-License-Identifier: MIT
#pragma once
/// \file reference.hpp
/// \brief Exact polar factors and the metrics used to judge an orthogonalization.
///
/// The polar factor of G = U S V^T (thin SVD) is U V^T: the orthogonal matrix
/// nearest to G, which Newton–Schulz approximates. When G has rank r below
/// min(m, n) (zero singular values: dead ReLU units give zero rows or columns
/// of a gradient), its polar factor is the partial isometry U_r V_r^T, the
/// singular vectors of the r nonzero singular values: an isometry from G's
/// row space onto its column space, zero on its null space. Newton–Schulz
/// converges to exactly that, since its odd polynomials map zero to zero.
/// Two exact routes, both returning the partial isometry:
///  - polar_svd:  U_r V_r^T from Eigen's BDCSVD, r counting the singular
///    values above a relative cutoff (default max(m, n) eps sigma_max);
///  - polar_eigh: from the smaller Gram matrix's eigendecomposition,
///    G G^T = W L W^T  =>  U V^T = W L^{-1/2} W^T G  (wide; tall by transpose).
///    It squares the condition number; directions whose eigenvalue is below
///    a relative cutoff (default min(m, n) eps lambda_max) are dropped.
/// Both compute in `Scalar` (default double) whatever G's scalar is.
///
/// Metrics: orthogonality_error(O) measures O against a full-rank
/// semi-orthogonal matrix (||O O^T - I||_F on the smaller side), so a correct
/// partial isometry of rank r scores sqrt(min(m, n) - r);
/// orthogonality_error_on_range(O, G) measures O on G's range only, and
/// separately what O puts outside it; relative_distance(O, polar_svd(G))
/// compares with the exact answer.

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <limits>

#include "error.hpp"
#include "scalar.hpp"

namespace muon {
namespace detail {

/// The relative cutoff in effect: the caller's when >= 0, else `fallback`.
inline double relative_cutoff_or(double relative_cutoff, double fallback) {
  if (std::isnan(relative_cutoff)) fail("relative_cutoff", "is NaN");
  return relative_cutoff >= 0 ? relative_cutoff : fallback;
}

/// How many of the descending singular values s exceed relative_cutoff * s(0):
/// the numerical rank (0 for a zero matrix).
template <class Vector>
Eigen::Index count_above_cutoff(const Vector& s, double relative_cutoff) {
  using S = typename Vector::Scalar;
  if (s.size() == 0) return 0;
  const S threshold = S(relative_cutoff) * s(0);
  Eigen::Index r = 0;
  while (r < s.size() && s(r) > threshold) ++r;
  return r;
}

}  // namespace detail

namespace reference {

/// The default relative cutoff on singular values of polar_svd,
/// numerical_rank and orthogonality_error_on_range: max(m, n) times the
/// machine epsilon of Scalar (the convention of LAPACK-based rank
/// estimates, e.g. numpy.linalg.matrix_rank). A singular value below
/// cutoff * sigma_max is indistinguishable from the rounding of an SVD
/// computed in Scalar, so it counts as zero. It accounts for the SVD's
/// rounding, not G's: a matrix that was rank-deficient before it was rounded
/// to float has singular values near 1e-7 sigma_max, which a double SVD
/// counts; for such input pass default_singular_value_cutoff<float>(m, n)
/// (exact zeros, as dead units give, need nothing).
template <class Scalar = double>
double default_singular_value_cutoff(Eigen::Index rows, Eigen::Index cols) {
  return double(std::max(rows, cols)) * double(std::numeric_limits<Scalar>::epsilon());
}

/// Exact polar factor via BDCSVD, computed in Scalar: U_r V_r^T with r the
/// number of singular values above `relative_cutoff` times the largest
/// (negative, the default argument: default_singular_value_cutoff<Scalar>).
/// For a full-rank G that is U V^T, bitwise as BDCSVD gives it; for a
/// rank-deficient G, the partial isometry on G's range (zero on its null
/// space); for G = 0, zero.
template <class Scalar = double, class Derived>
Matrix<Scalar> polar_svd(const Eigen::MatrixBase<Derived>& G, double relative_cutoff = -1) {
  if (!(G.rows() > 0 && G.cols() > 0)) detail::fail("G", "is empty");
  const double cut = detail::relative_cutoff_or(
      relative_cutoff, default_singular_value_cutoff<Scalar>(G.rows(), G.cols()));
  const Matrix<Scalar> Gs = G.template cast<Scalar>();
  if (!Gs.allFinite()) detail::fail("G", "contains NaN or Inf");
  Eigen::BDCSVD<Matrix<Scalar>> svd(Gs, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::Index k = svd.singularValues().size();
  const Eigen::Index r = detail::count_above_cutoff(svd.singularValues(), cut);
  if (r == k) return svd.matrixU() * svd.matrixV().transpose();  // full rank
  if (r == 0) return Matrix<Scalar>::Zero(G.rows(), G.cols());
  return svd.matrixU().leftCols(r) * svd.matrixV().leftCols(r).transpose();
}

/// G's numerical rank as polar_svd<Scalar>(G, relative_cutoff) sees it: the
/// number of singular values, computed in Scalar, above `relative_cutoff`
/// times the largest (default: default_singular_value_cutoff<Scalar>).
template <class Scalar = double, class Derived>
Eigen::Index numerical_rank(const Eigen::MatrixBase<Derived>& G, double relative_cutoff = -1) {
  if (!(G.rows() > 0 && G.cols() > 0)) detail::fail("G", "is empty");
  const double cut = detail::relative_cutoff_or(
      relative_cutoff, default_singular_value_cutoff<Scalar>(G.rows(), G.cols()));
  const Matrix<Scalar> Gs = G.template cast<Scalar>();
  if (!Gs.allFinite()) detail::fail("G", "contains NaN or Inf");
  return detail::count_above_cutoff(Eigen::BDCSVD<Matrix<Scalar>>(Gs).singularValues(), cut);
}

/// Exact polar factor via the eigendecomposition of the smaller Gram matrix.
/// Eigenvalues (squared singular values) below `relative_cutoff` times the
/// largest are treated as zero (default: min(m, n) times the machine epsilon
/// of Scalar), so it drops singular values below sqrt(relative_cutoff)
/// sigma_max: polar_eigh(G, c * c) matches polar_svd(G, c).
template <class Scalar = double, class Derived>
Matrix<Scalar> polar_eigh(const Eigen::MatrixBase<Derived>& G, double relative_cutoff = -1) {
  if (!(G.rows() > 0 && G.cols() > 0)) detail::fail("G", "is empty");
  const double cut = detail::relative_cutoff_or(
      relative_cutoff,
      double(std::min(G.rows(), G.cols())) * double(std::numeric_limits<Scalar>::epsilon()));
  const bool tall = G.rows() > G.cols();
  Matrix<Scalar> W = tall ? Matrix<Scalar>(G.transpose().template cast<Scalar>())
                          : Matrix<Scalar>(G.template cast<Scalar>());
  if (!W.allFinite()) detail::fail("G", "contains NaN or Inf");
  const Eigen::Index m = W.rows();
  Matrix<Scalar> C(m, m);
  C.setZero();
  C.template selfadjointView<Eigen::Lower>().rankUpdate(W);
  Eigen::SelfAdjointEigenSolver<Matrix<Scalar>> eig;
  eig.compute(C.template selfadjointView<Eigen::Lower>());
  const auto& lambda = eig.eigenvalues();
  const Scalar top = std::max(lambda.maxCoeff(), Scalar(0));
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> inv_sqrt(m);
  for (Eigen::Index i = 0; i < m; ++i)
    inv_sqrt(i) = lambda(i) > Scalar(cut) * top && lambda(i) > Scalar(0)
                      ? Scalar(1) / std::sqrt(lambda(i))
                      : Scalar(0);
  const Matrix<Scalar>& V = eig.eigenvectors();
  Matrix<Scalar> P = V * (inv_sqrt.asDiagonal() * (V.transpose() * W));
  if (tall) return P.transpose();
  return P;
}

/// Singular values of O, computed in double, descending.
template <class Derived>
Eigen::VectorXd singular_values(const Eigen::MatrixBase<Derived>& O) {
  if (!(O.rows() > 0 && O.cols() > 0)) detail::fail("O", "is empty");
  const Eigen::MatrixXd Od = O.template cast<double>();
  return Eigen::BDCSVD<Eigen::MatrixXd>(Od).singularValues();
}

/// Smallest and largest singular value.
struct SingularValueRange {
  double min = 0, max = 0;
};

template <class Derived>
SingularValueRange singular_value_range(const Eigen::MatrixBase<Derived>& O) {
  const Eigen::VectorXd s = singular_values(O);
  return {s.minCoeff(), s.maxCoeff()};
}

/// ||O O^T - I||_F on the smaller side (O^T O - I for tall O), in double:
/// zero exactly when O has orthonormal rows (or columns, when tall), i.e. it
/// measures O against a FULL-RANK semi-orthogonal matrix. With singular
/// values d_i it is sqrt(sum_i (d_i^2 - 1)^2) over all min(m, n) of them, so
/// the exact polar factor of a rank-r G (a partial isometry, min(m, n) - r
/// zero singular values) scores sqrt(min(m, n) - r). On rank-deficient
/// gradients use orthogonality_error_on_range.
template <class Derived>
double orthogonality_error(const Eigen::MatrixBase<Derived>& O) {
  if (!(O.rows() > 0 && O.cols() > 0)) detail::fail("O", "is empty");
  const Eigen::MatrixXd Od = O.template cast<double>();
  const bool tall = Od.rows() > Od.cols();
  const Eigen::MatrixXd gram =
      tall ? Eigen::MatrixXd(Od.transpose() * Od) : Eigen::MatrixXd(Od * Od.transpose());
  return (gram - Eigen::MatrixXd::Identity(gram.rows(), gram.cols())).norm();
}

/// O measured against G's range: see orthogonality_error_on_range.
struct RangeOrthogonalityError {
  Eigen::Index rank = 0;  ///< r: G's numerical rank (the cutoff as in polar_svd)
  double on_range = 0;    ///< ||B B^T - I_r||_F, B = U_r^T O V_r (r x r)
  double off_range = 0;   ///< ||O - U_r B V_r^T||_F: O outside G's column x row space
};

/// How far O is from an orthogonal map of G's range, in double. With
/// G = U_r S_r V_r^T (thin SVD in double; r singular values above
/// `relative_cutoff` times the largest, default
/// default_singular_value_cutoff<double>), B = U_r^T O V_r is O seen from
/// G's row space into its column space:
///  - on_range  = ||B B^T - I_r||_F: zero when O is orthogonal there; for
///    O = U_r diag(d) V_r^T (Newton–Schulz's output) sqrt(sum (d_i^2 - 1)^2)
///    over the r directions G has;
///  - off_range = ||O - U_r B V_r^T||_F: what O maps to or from G's null
///    spaces; zero for any O = U f(S) V^T with f(0) = 0 (polar_svd,
///    Newton–Schulz's odd polynomials), sqrt(min(m, n) - r) for a U V^T that
///    fills the null space with unit singular values.
/// For a full-rank G and off_range = 0, on_range equals orthogonality_error(O).
template <class DerivedO, class DerivedG>
RangeOrthogonalityError orthogonality_error_on_range(const Eigen::MatrixBase<DerivedO>& O,
                                                     const Eigen::MatrixBase<DerivedG>& G,
                                                     double relative_cutoff = -1) {
  if (!(G.rows() > 0 && G.cols() > 0)) detail::fail("G", "is empty");
  if (!(O.rows() == G.rows() && O.cols() == G.cols())) detail::fail("O", "shape differs from G's");
  const double cut = detail::relative_cutoff_or(
      relative_cutoff, default_singular_value_cutoff<double>(G.rows(), G.cols()));
  const Eigen::MatrixXd Gd = G.template cast<double>(), Od = O.template cast<double>();
  if (!Gd.allFinite()) detail::fail("G", "contains NaN or Inf");
  Eigen::BDCSVD<Eigen::MatrixXd> svd(Gd, Eigen::ComputeThinU | Eigen::ComputeThinV);
  RangeOrthogonalityError e;
  e.rank = detail::count_above_cutoff(svd.singularValues(), cut);
  const auto Ur = svd.matrixU().leftCols(e.rank);
  const auto Vr = svd.matrixV().leftCols(e.rank);
  const Eigen::MatrixXd B = Ur.transpose() * Od * Vr;
  e.on_range = (B * B.transpose() - Eigen::MatrixXd::Identity(e.rank, e.rank)).norm();
  e.off_range = (Od - Ur * B * Vr.transpose()).norm();
  return e;
}

/// ||O - P||_F / ||P||_F in double (P the reference, e.g. polar_svd(G)); the
/// absolute ||O||_F when P = 0 (the polar factor of G = 0). Against the
/// partial isometry polar_svd returns for a rank-r G, ||P||_F = sqrt(r).
template <class DerivedO, class DerivedP>
double relative_distance(const Eigen::MatrixBase<DerivedO>& O,
                         const Eigen::MatrixBase<DerivedP>& P) {
  if (!(O.rows() == P.rows() && O.cols() == P.cols()))
    detail::fail("O", "shape differs from the reference's");
  const Eigen::MatrixXd Pd = P.template cast<double>();
  const double den = Pd.norm();
  const double num = (O.template cast<double>() - Pd).norm();
  return den > 0 ? num / den : num;
}

}  // namespace reference
}  // namespace muon
