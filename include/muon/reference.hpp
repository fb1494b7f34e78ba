// SPDX-License-Identifier: MIT
#pragma once
/// \file reference.hpp
/// \brief Exact polar factors and the metrics used to judge an orthogonalization.
///
/// The polar factor of G = U S V^T (thin SVD) is U V^T: the orthogonal matrix
/// nearest to G, which Newton–Schulz approximates. Two exact routes:
///  - polar_svd:  U V^T from Eigen's BDCSVD;
///  - polar_eigh: from the smaller Gram matrix's eigendecomposition,
///    G G^T = W L W^T  =>  U V^T = W L^{-1/2} W^T G  (wide; tall by transpose).
///    It squares the condition number; directions whose eigenvalue is below
///    a relative cutoff are dropped (the partial isometry on G's range).
/// Both compute in `Scalar` (default double) whatever G's scalar is.

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <limits>

#include "error.hpp"
#include "scalar.hpp"

namespace muon {
namespace reference {

/// Exact polar factor U V^T via BDCSVD, computed in Scalar.
template <class Scalar = double, class Derived>
Matrix<Scalar> polar_svd(const Eigen::MatrixBase<Derived>& G) {
  if (!(G.rows() > 0 && G.cols() > 0)) detail::fail("G", "is empty");
  const Matrix<Scalar> Gs = G.template cast<Scalar>();
  if (!Gs.allFinite()) detail::fail("G", "contains NaN or Inf");
  Eigen::BDCSVD<Matrix<Scalar>> svd(Gs, Eigen::ComputeThinU | Eigen::ComputeThinV);
  return svd.matrixU() * svd.matrixV().transpose();
}

/// Exact polar factor via the eigendecomposition of the smaller Gram matrix.
/// Eigenvalues below `relative_cutoff` times the largest are treated as zero
/// (default: size * machine epsilon of Scalar).
template <class Scalar = double, class Derived>
Matrix<Scalar> polar_eigh(const Eigen::MatrixBase<Derived>& G, double relative_cutoff = -1) {
  if (!(G.rows() > 0 && G.cols() > 0)) detail::fail("G", "is empty");
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
  const double cut = relative_cutoff >= 0
                         ? relative_cutoff
                         : double(m) * double(std::numeric_limits<Scalar>::epsilon());
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
/// zero exactly when O has orthonormal rows (or columns, when tall).
template <class Derived>
double orthogonality_error(const Eigen::MatrixBase<Derived>& O) {
  if (!(O.rows() > 0 && O.cols() > 0)) detail::fail("O", "is empty");
  const Eigen::MatrixXd Od = O.template cast<double>();
  const bool tall = Od.rows() > Od.cols();
  const Eigen::MatrixXd gram =
      tall ? Eigen::MatrixXd(Od.transpose() * Od) : Eigen::MatrixXd(Od * Od.transpose());
  return (gram - Eigen::MatrixXd::Identity(gram.rows(), gram.cols())).norm();
}

/// ||O - P||_F / ||P||_F in double (P the reference, e.g. polar_svd(G)).
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
