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
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <utility>

#include "../detail/eigen_products.hpp"
#include "../detail/parallel_products.hpp"
#include "../detail/thread_pool.hpp"
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
  /// dimension is not positive. `threads` (0: muon::default_threads(), which
  /// follows muon::set_num_threads, MUON_NUM_THREADS, Eigen::nbThreads() under
  /// OpenMP, OMP_NUM_THREADS) sets how many threads the products use; the
  /// threads are started here, once, and only when the shape is large enough
  /// to gain from them.
  Workspace(Index rows, Index cols, int threads = 0) : rows_(rows), cols_(cols) {
    detail::require(rows > 0 && cols > 0, "workspace shape",
                    "rows and cols must be positive, got " + std::to_string(rows) + "x" +
                        std::to_string(cols));
    m_ = rows < cols ? rows : cols;
    n_ = rows < cols ? cols : rows;
    X_.resize(m_, n_);
    Y_.resize(m_, n_);
    A_.resize(m_, m_);
    B_.resize(m_, m_);
    Q_.resize(m_, m_);
    T_.resize(m_, m_);
    threads_ = threads > 0 ? threads : default_threads();
    // Threads pay off once one product is worth a few wake-ups (~8 MFLOP each).
    if (threads_ > 1 && double(m_) * double(m_) * double(n_) >= 1.6e7)
      pool_ = std::make_unique<detail::ThreadPool>(threads_);
    gram_ = std::make_unique<detail::ParallelSyrk<S>>(m_, n_, pool_.get());
    square_ = std::make_unique<detail::ParallelSyrk<S>>(m_, m_, pool_.get());
    apply_ = std::make_unique<detail::ParallelGemm<S>>(m_, n_, m_, pool_.get());
    small_ = std::make_unique<detail::ParallelGemm<S>>(m_, m_, m_, pool_.get());
  }

  /// Threads the products use (1 when the shape is too small to split).
  int threads() const { return pool_ ? pool_->size() : 1; }
  /// Wide orientation: n / m >= 1 (cols / rows after transposing tall inputs).
  double aspect_ratio() const { return double(n_) / double(m_); }

  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  /// True when inputs are tall (rows > cols) and iterated as their transpose.
  bool transposed() const { return rows_ > cols_; }

  /// Throws muon::Error unless `r x c` is this workspace's shape.
  void check_shape(Index r, Index c, const char* parameter) const {
    if (r == rows_ && c == cols_) return;  // the message is built only on failure: no allocation
    detail::require(false, parameter,
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
    S* a = A_.data();
    const Index m = m_;
    auto zero = [a, m](Index r0, Index r1) {
      for (Index j = 0; j < r1; ++j)
        for (Index i = std::max(j, r0); i < r1; ++i) a[i + j * m] = S(0);
    };
    gram_->run(X_.data(), m_, A_.data(), m_, S(1), zero);
  }

  void symmetric_polynomial(double b, double c) {  // B = b A + c A^2 (A^2 = A A^T)
    if (c == 0.0) {
      B_ = static_cast<S>(b) * A_;
      return;
    }
    const S* a = A_.data();
    S* out = B_.data();
    const Index m = m_;
    const S bs = static_cast<S>(b);
    auto scaled_copy = [a, out, m, bs](Index r0, Index r1) {
      for (Index j = 0; j < r1; ++j)
        for (Index i = std::max(j, r0); i < r1; ++i) out[i + j * m] = bs * a[i + j * m];
    };
    square_->run(A_.data(), m_, B_.data(), m_, static_cast<S>(c), scaled_copy);
  }

  void apply_polynomial(double a) {  // X = a X + B X
    multiply_into(*apply_, B_, static_cast<S>(a), X_, Y_);
    X_.swap(Y_);  // swaps pointers, no copy, no allocation
  }

  // ---- Gram Newton–Schulz primitives (detail::gram_newton_schulz_iterate) --
  // R lives in A, Z = b R + c R^2 in B (symmetric_polynomial), Q in Q_.

  void gram_q_init(double a) {  // Q = a I + Z
    Q_ = B_;
    Q_.diagonal().array() += static_cast<S>(a);
  }

  void gram_q_update(double a) {  // Q <- a Q + Z Q (= a Q + Q Z: both are polynomials in R)
    multiply_into(*small_, B_, static_cast<S>(a), Q_, T_);
    Q_.swap(T_);
  }

  void gram_r_update(double a) {  // R <- (a I + Z)^2 R, kept symmetric
    B_.diagonal().array() += static_cast<S>(a);  // W = a I + Z (Z is not needed again)
    const S* w = B_.data();
    S* t = T_.data();
    const Index m = m_;
    auto zero = [t, m](Index r0, Index r1) {
      for (Index j = 0; j < r1; ++j)
        for (Index i = std::max(j, r0); i < r1; ++i) t[i + j * m] = S(0);
    };
    square_->run(w, m_, T_.data(), m_, S(1), zero);          // T = W^2 (symmetric)
    multiply_into(*small_, T_, S(0), A_, B_);                 // B = W^2 R
    symmetrize_into(B_, A_);                                  // R = sym(B)
  }

  void gram_apply_q() {  // X <- Q X
    multiply_into(*apply_, Q_, S(0), X_, Y_);
    X_.swap(Y_);
  }

  /// The current iterate (wide orientation), e.g. for metrics.
  const Matrix<compute_t<T>>& iterate() const { return X_; }

 private:
  using S = compute_t<T>;

  /// out = alpha * R + L R, threaded by columns of R (the product's own split).
  static void multiply_into(detail::ParallelGemm<S>& product, const Matrix<S>& L, S alpha,
                            const Matrix<S>& R, Matrix<S>& out) {
    const S* r = R.data();
    S* o = out.data();
    const Index rows = R.rows();
    auto init = [r, o, rows, alpha](Index c0, Index c1) {
      const Index begin = c0 * rows, end = c1 * rows;
      if (alpha == S(0))
        for (Index k = begin; k < end; ++k) o[k] = S(0);
      else
        for (Index k = begin; k < end; ++k) o[k] = alpha * r[k];
    };
    product.run(L.data(), L.rows(), R.data(), rows, out.data(), rows, S(1), init);
  }

  /// dst = (src + src^T) / 2 (src square, same size as dst).
  static void symmetrize_into(const Matrix<S>& src, Matrix<S>& dst) {
    const Index n = src.rows();
    for (Index j = 0; j < n; ++j) {
      dst(j, j) = src(j, j);
      for (Index i = j + 1; i < n; ++i) dst(i, j) = S(0.5) * (src(i, j) + src(j, i));
    }
    detail::ParallelSyrk<S>::mirror_rows(dst.data(), n, 0, n);
  }

  Index rows_, cols_, m_ = 0, n_ = 0;
  int threads_ = 1;
  Matrix<S> X_, Y_, A_, B_, Q_, T_;
  std::unique_ptr<detail::ThreadPool> pool_;  // before the products that point to it
  std::unique_ptr<detail::ParallelSyrk<S>> gram_, square_;
  std::unique_ptr<detail::ParallelGemm<S>> apply_, small_;
};

}  // namespace eigen

/// The CPU workspace for storage scalar T (see eigen::Workspace).
template <class T>
using Workspace = eigen::Workspace<T>;

}  // namespace muon
