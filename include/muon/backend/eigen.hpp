// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen.hpp
/// \brief The CPU backend: Newton–Schulz primitives on Eigen buffers.
///
/// A Workspace is made once for an input shape (rows x cols) and storage
/// scalar T; it holds every buffer the iteration needs, in the compute scalar
/// (float for half/bfloat16/float, double for double), oriented wide
/// (m = min(rows, cols) <= n = max(rows, cols)). Tall inputs are transposed on
/// load and back on store, so the Gram matrix is always the smaller one.
/// After construction no member function allocates.

#include <Eigen/Core>
#include <cmath>
#include <memory>
#include <string>
#include <utility>

#include "../detail/eigen_products.hpp"
#include "../error.hpp"
#include "../newton_schulz.hpp"
#include "../scalar.hpp"

namespace muon {
namespace eigen {

template <class T>
class Workspace {
 public:
  using storage_scalar = T;
  using compute_scalar = compute_t<T>;
  using Index = Eigen::Index;

  /// Buffers for inputs of shape rows x cols. Throws muon::Error when a
  /// dimension is not positive.
  Workspace(Index rows, Index cols) : rows_(rows), cols_(cols) {
    detail::require(rows > 0 && cols > 0, "workspace shape",
                    "rows and cols must be positive, got " + std::to_string(rows) + "x" +
                        std::to_string(cols));
    m_ = rows < cols ? rows : cols;
    n_ = rows < cols ? cols : rows;
    X_.resize(m_, n_);
    Y_.resize(m_, n_);
    A_.resize(m_, m_);
    B_.resize(m_, m_);
    gram_ = std::make_unique<detail::Syrk<S>>(m_, n_);
    square_ = std::make_unique<detail::Syrk<S>>(m_, m_);
    apply_ = std::make_unique<detail::Gemm<S>>(m_, n_, m_);
  }

  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  /// True when inputs are tall (rows > cols) and iterated as their transpose.
  bool transposed() const { return rows_ > cols_; }

  /// Throws muon::Error unless `r x c` is this workspace's shape.
  void check_shape(Index r, Index c, const char* parameter) const {
    detail::require(r == rows_ && c == cols_, parameter,
                    "shape " + std::to_string(r) + "x" + std::to_string(c) +
                        " does not match the workspace's " + std::to_string(rows_) + "x" +
                        std::to_string(cols_));
  }

  /// X <- G (cast to the compute scalar, transposed if tall). Returns false,
  /// leaving nothing of the caller's changed, when G holds NaN or Inf.
  template <class Derived>
  bool load(const Eigen::MatrixBase<Derived>& G) {
    if (transposed())
      X_ = G.transpose().template cast<S>();
    else
      X_ = G.template cast<S>();
    return X_.allFinite();
  }

  /// out <- X (cast to out's scalar, transposed back if tall).
  template <class Derived>
  void store(const Eigen::MatrixBase<Derived>& out_const) const {
    auto& out = const_cast<Eigen::MatrixBase<Derived>&>(out_const);
    using OutScalar = typename Derived::Scalar;
    if (transposed())
      out = X_.transpose().template cast<OutScalar>();
    else
      out = X_.template cast<OutScalar>();
  }

  // ---- backend primitives called by detail::newton_schulz_iterate ----------

  void normalize(double divisor, double eps, EpsMode mode) {
    // Accumulate in double: no overflow for any finite float input.
    const double norm = std::sqrt(X_.template cast<double>().squaredNorm());
    const double denominator = detail::normalization_denominator(norm, divisor, eps, mode);
    // Divide in double: 1/denominator overflows a float compute scalar for a
    // tiny eps with a zero or denormal X, and 0 * inf would be NaN.
    X_ = (X_.template cast<double>() / denominator).template cast<S>();
  }

  void gram() {  // A = X X^T, lower triangle computed, then mirrored
    A_.template triangularView<Eigen::Lower>().setZero();
    gram_->run(X_.data(), m_, A_.data(), m_, S(1));
    mirror_lower(A_);
  }

  void symmetric_polynomial(double b, double c) {  // B = b A + c A^2 (A^2 = A A^T)
    B_ = static_cast<S>(b) * A_;
    if (c != 0.0) {
      square_->run(A_.data(), m_, B_.data(), m_, static_cast<S>(c));
      mirror_lower(B_);
    }
  }

  void apply_polynomial(double a) {  // X = a X + B X
    Y_ = static_cast<S>(a) * X_;
    apply_->run(B_.data(), m_, X_.data(), m_, Y_.data(), m_, S(1));
    X_.swap(Y_);  // swaps pointers, no copy, no allocation
  }

  /// The current iterate (wide orientation), e.g. for metrics.
  const Matrix<compute_t<T>>& iterate() const { return X_; }

 private:
  using S = compute_t<T>;

  static void mirror_lower(Matrix<S>& M) {  // upper triangle <- lower triangle
    const Index n = M.rows();
    for (Index j = 1; j < n; ++j)
      for (Index i = 0; i < j; ++i) M(i, j) = M(j, i);
  }

  Index rows_, cols_, m_ = 0, n_ = 0;
  Matrix<S> X_, Y_, A_, B_;
  std::unique_ptr<detail::Syrk<S>> gram_, square_;
  std::unique_ptr<detail::Gemm<S>> apply_;
};

}  // namespace eigen

/// The CPU workspace for storage scalar T (see eigen::Workspace).
template <class T>
using Workspace = eigen::Workspace<T>;

}  // namespace muon
