// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/workspace.hpp
/// \brief The CPU backend: Newton–Schulz primitives on Eigen buffers.
///
/// A Workspace is made once for an input shape (rows x cols) and storage
/// scalar T; it holds every buffer the iteration needs, in the compute scalar
/// (float for half/bfloat16/float, double for double), oriented wide
/// (m = min(rows, cols) <= n = max(rows, cols)). Tall inputs are transposed on
/// load and back on store, so the Gram matrix is always the smaller one.
/// After construction no member function allocates. Its threads, packing
/// buffers and matrices come from SharedResources: its own by default, or
/// shared with other workspaces that run one at a time.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SSE__) || defined(_M_X64)
#include <immintrin.h>  // _mm_prefetch; the AVX transposes
#endif

#include "../../detail/checked_size.hpp"
#include "../../error.hpp"
#include "../../newton_schulz.hpp"
#include "../../scalar.hpp"
#include "bf16_kernel.hpp"
#include "eigen_products.hpp"
#include "optional_products.hpp"
#include "parallel_products.hpp"
#include "shared_resources.hpp"
#include "thread_pool.hpp"

namespace muon {
namespace eigen {

/// Which engine computes the CPU products.
enum class Products {
  automatic,  ///< BLAS when built with MUON_USE_BLAS, else eigen (never bf16: it rounds)
  eigen,      ///< Eigen's kernels, threaded by this library (always available)
  blas,       ///< CBLAS ?syrk/?gemm (MUON_USE_BLAS builds)
  bf16        ///< bf16 factors, fp32 accumulation: the library's AVX512-BF16 kernel
              ///< (bf16_kernel.hpp; float compute only, x86-64 CPUs with AVX512-BF16)
};

/// True when `p` can be used in this build on this CPU (bf16: for float
/// compute only).
inline bool products_available(Products p) {
  switch (p) {
    case Products::automatic:
    case Products::eigen:
      return true;
    case Products::blas:
#ifdef MUON_USE_BLAS
      return true;
#else
      return false;
#endif
    case Products::bf16:
      return detail::cpu_has_avx512_bf16();
  }
  return false;
}

template <class T>
class Workspace {
 public:
  using storage_scalar = T;
  using compute_scalar = compute_t<T>;
  using Index = Eigen::Index;
  /// Threads, packing buffers and matrix memory this workspace may share
  /// with others that run one at a time (see SharedResources).
  using Resources = SharedResources<compute_t<T>>;

  /// Buffers for inputs of shape rows x cols. Throws muon::Error when a
  /// dimension is not positive. `threads` (0: muon::default_threads(), which
  /// follows muon::set_num_threads, MUON_NUM_THREADS, Eigen::nbThreads() under
  /// OpenMP, OMP_NUM_THREADS) sets how many threads the products use; the
  /// threads are started here, once, and only when the shape is large enough
  /// to gain from them. `products` picks the product engine (see Products);
  /// an engine this build or CPU lacks throws muon::Error.
  Workspace(Index rows, Index cols, int threads = 0, Products products = Products::automatic)
      : Workspace(rows, cols,
                  std::make_shared<Resources>(threads > 0 ? threads : default_threads()),
                  products) {}

  /// A workspace that takes its threads, packing buffers and matrix memory
  /// from `shared`, growing them to its needs. Workspaces sharing resources
  /// must never run at the same time (muon::Optimizer runs its workspaces,
  /// one per parameter shape, one after another).
  Workspace(Index rows, Index cols, std::shared_ptr<Resources> shared,
            Products products = Products::automatic)
      : rows_(rows), cols_(cols), shared_(std::move(shared)) {
    if (!(rows > 0 && cols > 0))
      detail::fail("workspace shape", "rows and cols must be positive, got " +
                                          std::to_string(rows) + "x" + std::to_string(cols));
    if (!shared_) detail::fail("shared", "is null");
    if (!products_available(products))
      detail::fail("products",
                   "this engine is not available (build option off, or the CPU lacks "
                   "AVX512-BF16)");
    if (products == Products::bf16 && !std::is_same_v<float, S>)
      detail::fail("products",
                   "bf16 products need float compute (storage float, half or bfloat16)");
#ifdef MUON_USE_BLAS
    products_ = products == Products::automatic ? Products::blas : products;
#else
    products_ = products == Products::automatic ? Products::eigen : products;
#endif
    m_ = rows < cols ? rows : cols;
    n_ = rows < cols ? cols : rows;
    // The arena: X, Y (m x n), A, B, Q, T (m x m), each starting on a 64-byte
    // boundary; 2 wide + 4 square elements, each size checked not to wrap.
    const std::optional<std::size_t> wide = arena_part(m_, n_), square = arena_part(m_, m_);
    const auto two_wide = wide ? detail::checked_mul<std::size_t>(2, *wide) : std::nullopt;
    const auto four_square = square ? detail::checked_mul<std::size_t>(4, *square) : std::nullopt;
    const auto total =
        two_wide && four_square ? detail::checked_add(*two_wide, *four_square) : std::nullopt;
    if (!total || !detail::checked_mul(*total, sizeof(S)))
      detail::fail("workspace shape", std::to_string(rows) + "x" + std::to_string(cols) +
                                          " needs more memory than the address space holds");
    offset_[0] = 0;
    offset_[1] = *wide;
    for (int k = 2; k < 6; ++k) offset_[k] = *two_wide + std::size_t(k - 2) * *square;
    shared_->reserve_matrices(*total);
    if (shared_->threads() > 1 && gains_from_threads(rows, cols)) pool_ = shared_->pool();
    detail::Packing<S>& packing = shared_->packing();
    gram_ = std::make_unique<detail::ParallelSyrk<S>>(m_, n_, pool_, packing);
    square_ = std::make_unique<detail::ParallelSyrk<S>>(m_, m_, pool_, packing);
    apply_ = std::make_unique<detail::ParallelGemm<S>>(m_, n_, m_, pool_, packing);
    small_ = std::make_unique<detail::ParallelGemm<S>>(m_, m_, m_, pool_, packing);
#ifdef MUON_HAVE_BF16_KERNEL
    if (products_ == Products::bf16) bf16_ = std::make_unique<detail::Bf16Products>(m_, n_, pool_);
#endif
    bind();
  }

  /// The product engine in use (never automatic).
  Products products() const { return products_; }

  /// True when Newton–Schulz on a rows x cols input gains from splitting
  /// its products across threads: once one product is worth a few
  /// wake-ups. Below m^2 n = 3.2e7 (about 320^3; measured on a shared
  /// 2-core machine) one thread is as fast, and a workspace of that shape
  /// runs on the calling thread only.
  static bool gains_from_threads(Index rows, Index cols) {
    const double m = double(std::min(rows, cols)), n = double(std::max(rows, cols));
    return m * m * n >= 3.2e7;
  }

  /// Bytes the product engine holds beyond the shared resources: the bf16
  /// engine's packed bf16 operands (2 m n + 2 m n + 2 m^2 bytes, rounded up to
  /// whole 32-row strips), else 0.
  std::size_t engine_bytes() const {
#ifdef MUON_HAVE_BF16_KERNEL
    if (bf16_) return bf16_->bytes();
#endif
    return 0;
  }

  /// Threads the products use (1 when the shape is too small to split).
  int threads() const { return pool_ ? pool_->size() : 1; }
  /// The resources this workspace draws on (shared with others or its own).
  const std::shared_ptr<Resources>& resources() const { return shared_; }
  /// Wide orientation: n / m >= 1 (cols / rows after transposing tall inputs).
  double aspect_ratio() const { return double(n_) / double(m_); }
  /// The aspect ratio from which NsMethod::automatic takes the Gram form:
  /// kGramAspectThreshold, or never with bf16 products. The Gram form applies
  /// its accumulated m x m factor Q to X at the restart and at the end; with
  /// bf16 factors that Q is rounded and, unlike the standard iteration's
  /// per-step rounding, nothing corrects it afterwards (tests/test_gram_ns.cpp:
  /// converged Polar Express leaves an orthogonality error 7-17x the standard
  /// bf16 iteration's, 1.8 against 0.13 at 600x616).
  double gram_aspect_threshold() const {
    return products_ == Products::bf16 ? std::numeric_limits<double>::infinity()
                                       : kGramAspectThreshold;
  }

  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  /// True when inputs are tall (rows > cols) and iterated as their transpose.
  bool transposed() const { return rows_ > cols_; }

  /// Throws muon::Error unless `r x c` is this workspace's shape.
  void check_shape(Index r, Index c, const char* parameter) const {
    if (r == rows_ && c == cols_) return;  // the message is built only on failure: no allocation
    detail::fail(parameter, "shape " + std::to_string(r) + "x" + std::to_string(c) +
                                " does not match the workspace's " + std::to_string(rows_) + "x" +
                                std::to_string(cols_));
  }

  /// X <- G (cast to the compute scalar, transposed if tall). Returns false,
  /// leaving nothing of the caller's changed, when G holds NaN or Inf.
  template <class Derived>
  bool load(const Eigen::MatrixBase<Derived>& G) {
    bind();
    xt_current_ = false;
    if (transposed())
      X() = G.transpose().template cast<S>();
    else
      X() = G.template cast<S>();
    return X().allFinite();
  }

  /// X <- an input computed on the fly, a row segment at a time (cast to
  /// the compute scalar, transposed if tall): fill(r, c, n, out) writes
  /// input(r, c + k) to out[k] for k < n (a contiguous loop over row-major
  /// memory, which the compiler can vectorize: the optimizer makes the
  /// momentum and the Newton–Schulz input in it, writing the momentum as it
  /// goes); each (r, c) is asked for once. The segments of a tile of
  /// kLoadRows x kLoadCols are gathered in a buffer on the stack, then
  /// placed into X (transposed if tall). No finiteness pass: the optimizer
  /// checked every input before its step (engine.hpp).
  template <class F>
  void load_rows(F&& fill) {
    bind();
    xt_current_ = false;
    alignas(64) S tile[kLoadRows * kLoadCols];
    const bool t = transposed();
    for (Index r0 = 0; r0 < rows_; r0 += kLoadRows)
      for (Index c0 = 0; c0 < cols_; c0 += kLoadCols) {
        const Index nr = std::min(kLoadRows, rows_ - r0), nc = std::min(kLoadCols, cols_ - c0);
        for (Index r = 0; r < nr; ++r) fill(r0 + r, c0, nc, tile + r * kLoadCols);
        if (t)  // X(c, r): the segments are X's columns
          for (Index r = 0; r < nr; ++r)
            std::copy(tile + r * kLoadCols, tile + r * kLoadCols + nc, x_ + c0 + (r0 + r) * m_);
        else if (!transpose_block(tile, kLoadCols, x_ + r0 + c0 * m_, m_, nc, nr))  // X(r, c)
          for (Index c = 0; c < nc; ++c)
            for (Index r = 0; r < nr; ++r) x_[r0 + r + (c0 + c) * m_] = tile[r * kLoadCols + c];
      }
  }

  /// use(r, c, n, o) for every row segment of the result in the input's
  /// orientation (rows() x cols()): o[k] = O(r, c + k) for k < n, contiguous,
  /// so that the caller's loop over its row-major memory is a contiguous
  /// loop too (the compiler vectorizes it) in either orientation. Each (r, c)
  /// once. A tall input's rows are X's columns, passed in place, in order. A
  /// wide input's are gathered kUpdateRows x kUpdateCols at a time into a
  /// tile on the stack (load_rows' transposes, 8 rows at a time, each 8 used
  /// before the next 8 are transposed), and ahead(r, c, n), called just
  /// before a row segment is used, names the same tile row's segment
  /// kUpdateAhead tiles later, for the caller to prefetch (prefetch()) the
  /// memory it will update there: a wide update visits its rows a short
  /// segment at a time, which the hardware prefetchers follow poorly, and
  /// without the hints the memory sat idle while a tile was transposed;
  /// update_rows itself prefetches X's part of that later tile (its columns
  /// are m apart). At 768x3072 here (bench_step's muon_update) the W hints
  /// and this tile shape took the wide update from 2.1-2.3x the tall one's
  /// time to 1.5-1.75x, X's hints to 1.26-1.36x; the update first visited
  /// 32 x 32 tiles of X and wrote W down its columns (3x).
  template <class F, class A>
  void update_rows(F&& use, A&& ahead) const {
    if (transposed()) {  // O(r, c) = X(c, r): O's row r is X's column r
      for (Index r = 0; r < rows_; ++r) use(r, Index(0), cols_, static_cast<const S*>(x_ + r * m_));
      return;
    }
    alignas(64) S tile[kUpdateRows * kUpdateCols];
    const Index tiles = (cols_ + kUpdateCols - 1) / kUpdateCols;  // per band of kUpdateRows rows
    for (Index r0 = 0; r0 < rows_; r0 += kUpdateRows)
      for (Index t = 0; t < tiles; ++t) {
        const Index c0 = t * kUpdateCols;
        const Index nr = std::min(kUpdateRows, rows_ - r0), nc = std::min(kUpdateCols, cols_ - c0);
        // The tile kUpdateAhead later in this order: (band ra, columns ca).
        const Index later = r0 / kUpdateRows * tiles + t + kUpdateAhead;
        const Index ra = later / tiles * kUpdateRows, ca = later % tiles * kUpdateCols;
        for (Index s0 = 0; s0 < nr; s0 += 8) {
          const Index ns = std::min(Index(8), nr - s0);
          S* sub = tile + s0 * kUpdateCols;
          if (!transpose_block(x_ + r0 + s0 + c0 * m_, m_, sub, kUpdateCols, ns, nc))
            for (Index r = 0; r < ns; ++r)
              for (Index c = 0; c < nc; ++c)
                sub[r * kUpdateCols + c] = x_[r0 + s0 + r + (c0 + c) * m_];
          for (Index r = s0; r < s0 + ns; ++r) {
            if (ra + r < rows_) ahead(ra + r, ca, std::min(kUpdateCols, cols_ - ca));
            // And X's part of that tile, a share per row: kUpdateRows entries
            // (one line in float) of each of its kUpdateCols columns, m apart,
            // a stride no hardware prefetcher follows.
            if (ra < rows_) {
              const Index per = kUpdateCols / kUpdateRows, j0 = ca + r * per;
              const std::size_t bytes = std::size_t(std::min(kUpdateRows, rows_ - ra)) * sizeof(S);
              for (Index j = j0; j < std::min(j0 + per, cols_); ++j)
                prefetch(x_ + ra + j * m_, bytes);
            }
            use(r0 + r, c0, nc, static_cast<const S*>(tile + r * kUpdateCols));
          }
        }
      }
  }

  /// update_rows without the prefetch hints.
  template <class F>
  void update_rows(F&& use) const {
    update_rows(std::forward<F>(use), [](Index, Index, Index) {});
  }

  /// A hint: the `bytes` from `p` on will be read (and written) soon; bring
  /// them toward the core (into L2 where the CPU has such a hint). Never
  /// reads them itself, so any address is allowed.
  static void prefetch(const void* p, std::size_t bytes) {
#if defined(__SSE__) || defined(_M_X64)
    const auto first = reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t(63);
    const auto last = reinterpret_cast<std::uintptr_t>(p) + bytes;
    for (std::uintptr_t a = first; a < last; a += 64)
      _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T1);
#elif defined(__GNUC__)
    const auto* c = static_cast<const char*>(p);
    for (std::size_t k = 0; k < bytes; k += 64) __builtin_prefetch(c + k, 0, 2);
#else
    (void)p, (void)bytes;
#endif
  }

  /// g(r, c, o) for every element o = O(r, c) of the result, in the input's
  /// orientation (rows() x cols()), visited in the same 32 x 32 tiles.
  template <class G>
  void visit_result(G&& g) const {
    const bool t = transposed();
    for_tiles([&](Index i, Index j) {
      const S o = x_[i + j * m_];
      if (t)
        g(j, i, o);
      else
        g(i, j, o);
    });
  }

  /// out <- X (cast to out's scalar, transposed back if tall).
  template <class Derived>
  void store(const Eigen::MatrixBase<Derived>& out_const) const {
    auto& out = const_cast<Eigen::MatrixBase<Derived>&>(out_const);
    using OutScalar = typename Derived::Scalar;
    if (transposed())
      out = iterate().transpose().template cast<OutScalar>();
    else
      out = iterate().template cast<OutScalar>();
  }

  // ---- backend primitives called by detail::newton_schulz_iterate ----------

  void normalize(double divisor, double eps, EpsMode mode) {
    xt_current_ = false;
    // Accumulate in double: no overflow for any finite float input.
    const double norm = std::sqrt(sum_of_squares(x_, std::size_t(m_) * std::size_t(n_)));
    const double denominator = detail::normalization_denominator(norm, divisor, eps, mode);
    // Divide in double: 1/denominator overflows a float compute scalar for a
    // tiny eps with a zero or denormal X, and 0 * inf would be NaN.
    X() = (X().template cast<double>() / denominator).template cast<S>();
  }

  // AOL (NsNormalization::aol): A = X X^T, s_i = (sum_j |A_ij|)^(-1/2) in
  // double (0 for a zero row), X <- diag(s) X and A <- diag(s) A diag(s),
  // which is X X^T of the new X: the first step skips its Gram product.
  // s is kept in B's storage (free until the first step writes B).
  void normalize_aol() {
    gram();
    auto A = Sq(a_);
    S* s = b_;
    for (Index i = 0; i < m_; ++i) {
      double row = 0;
      for (Index j = 0; j < m_; ++j) row += std::abs(static_cast<double>(A(i, j)));
      s[i] = row > 0 ? static_cast<S>(1.0 / std::sqrt(row)) : S(0);
    }
    for (Index j = 0; j < m_; ++j)
      for (Index i = 0; i < m_; ++i) A(i, j) *= s[i] * s[j];
    auto x = X();
    for (Index j = 0; j < x.cols(); ++j)
      for (Index i = 0; i < m_; ++i) x(i, j) *= s[i];
    xt_current_ = false;
  }

  void gram() {  // A = X X^T (symmetric)
    symmetric_into(*gram_, x_, n_, S(1), nullptr, S(0), a_);
  }

  void symmetric_polynomial(double b, double c) {  // B = b A + c A^2 (A^2 = A A^T)
    if (c == 0.0) {
      Sq(b_) = static_cast<S>(b) * Sq(a_);
      return;
    }
    symmetric_into(*square_, a_, m_, static_cast<S>(c), a_, static_cast<S>(b), b_);
  }

  void apply_polynomial(double a) {  // X = a X + B X
    multiply_into(*apply_, b_, static_cast<S>(a), x_, n_, y_);
    std::swap(x_, y_);  // the result becomes the iterate: no copy
    xt_current_ = false;
  }

  // ---- Gram Newton–Schulz primitives (detail::gram_newton_schulz_iterate) --
  // R lives in A, Z = b R + c R^2 in B (symmetric_polynomial), Q in Q.

  void gram_q_init(double a) {  // Q = a I + Z
    Sq(q_) = Sq(b_);
    Sq(q_).diagonal().array() += static_cast<S>(a);
  }

  void gram_q_update(double a) {  // Q <- a Q + Z Q (= a Q + Q Z: both are polynomials in R)
    multiply_into(*small_, b_, static_cast<S>(a), q_, m_, t_, /*fp32=*/true);
    std::swap(q_, t_);
  }

  void gram_r_update(double a) {                     // R <- (a I + Z)^2 R, kept symmetric
    Sq(b_).diagonal().array() += static_cast<S>(a);  // W = a I + Z (Z is not needed again)
    // bf16 products keep these in fp32: rounding R's factors each step
    // compounds through the Gram recurrence (the m x n products stay bf16).
    symmetric_into(*square_, b_, m_, S(1), nullptr, S(0), t_, /*fp32=*/true);  // T = W^2
    multiply_into(*small_, t_, S(0), a_, m_, b_, /*fp32=*/true);               // B = W^2 R
    symmetrize_into(b_, a_, m_);                                               // R = sym(B)
  }

  void gram_apply_q() {  // X <- Q X
    multiply_into(*apply_, q_, S(0), x_, n_, y_);
    std::swap(x_, y_);
    xt_current_ = false;
  }

  /// The sum of x[k]^2 over k < count, in double, in kSquareLanes partial
  /// sums (entry k into sum k mod kSquareLanes: a fixed order, which the
  /// compiler vectorizes): the normalization's ||X||_F^2 and the metrics'
  /// ||O||_F^2. Eigen's cast<double>().squaredNorm() ran as one dependent
  /// chain here: 1.25 ms at 768 x 3072 against 0.15, 1.5 % of a bf16
  /// Newton–Schulz call.
  static double sum_of_squares(const compute_t<T>* x, std::size_t count) {
    constexpr std::size_t kSquareLanes = 16;
    double lane[kSquareLanes] = {};
    std::size_t k = 0;
    for (; k + kSquareLanes <= count; k += kSquareLanes)
      for (std::size_t j = 0; j < kSquareLanes; ++j) {
        const double v = static_cast<double>(x[k + j]);
        lane[j] += v * v;
      }
    double sum = 0;
    for (; k < count; ++k) {
      const double v = static_cast<double>(x[k]);
      sum += v * v;
    }
    for (const double l : lane) sum += l;
    return sum;
  }

  /// The current iterate (wide orientation), e.g. for metrics; valid until
  /// this workspace, or one sharing its resources, loads again.
  Eigen::Map<const Matrix<compute_t<T>>> iterate() const {
    return Eigen::Map<const Matrix<S>>(x_, m_, n_);
  }

 private:
  using S = compute_t<T>;
  using MatrixMap = Eigen::Map<Matrix<S>>;

  // rows x cols elements rounded up to a multiple of 64 bytes, if that fits.
  static std::optional<std::size_t> arena_part(Index rows, Index cols) {
    const std::size_t per = 64 / sizeof(S);
    const auto elements = detail::checked_mul(std::size_t(rows), std::size_t(cols));
    const auto padded = elements ? detail::checked_add(*elements, per - 1) : std::nullopt;
    if (!padded) return std::nullopt;
    return *padded / per * per;
  }
  // Points the matrices into the shared arena (which may have moved since
  // the last call) at their fixed offsets.
  void bind() {
    S* base = shared_->matrices();
    S** slot[6] = {&x_, &y_, &a_, &b_, &q_, &t_};
    for (int k = 0; k < 6; ++k) *slot[k] = base + offset_[k];
  }
  MatrixMap X() { return MatrixMap(x_, m_, n_); }
  // f(i, j) for every (i, j) of the m x n iterate, column tiles of 32 x 32.
  template <class F>
  void for_tiles(F&& f) const {
    constexpr Index kTile = 32;
    for (Index j0 = 0; j0 < n_; j0 += kTile)
      for (Index i0 = 0; i0 < m_; i0 += kTile) {
        const Index j1 = std::min(n_, j0 + kTile), i1 = std::min(m_, i0 + kTile);
        for (Index j = j0; j < j1; ++j)
          for (Index i = i0; i < i1; ++i) f(i, j);
      }
  }
  MatrixMap Sq(S* p) { return MatrixMap(p, m_, m_); }  // one of the m x m matrices

  /// C = init_scale * init + alpha M M^T (init null: 0), all of C written;
  /// M is m x depth, C and init m x m (init symmetric, may not alias C).
  void symmetric_into(detail::ParallelSyrk<S>& product, const S* M, Index depth, S alpha,
                      const S* init, S init_scale, S* C, bool fp32 = false) {
    (void)fp32;   // only the bf16 engine reads it
    (void)depth;  // only BLAS reads it (the Eigen products know their shape)
    const Index m = m_;
#ifdef MUON_USE_BLAS
    if (products_ == Products::blas) {
      if (init) Sq(C) = init_scale * Eigen::Map<const Matrix<S>>(init, m, m);
      detail::blas_syrk_lower(int(m), int(depth), alpha, M, int(m), init ? S(1) : S(0), C, int(m));
      detail::ParallelSyrk<S>::mirror_rows(C, m, 0, m);
      return;
    }
#endif
#ifdef MUON_HAVE_BF16_KERNEL
    if constexpr (std::is_same<S, float>::value) {
      if (products_ == Products::bf16 && !fp32) {
        if (M == x_)  // the Gram X X^T (X's packed copy is kept for the apply step)
          bf16_->gram(fresh_bf16_x(), alpha, init, init_scale, C);
        else  // M symmetric m x m
          bf16_->square(M, alpha, init, init_scale, C);
        return;
      }
    }
#endif
    auto prologue = [init, C, m, init_scale](Index r0, Index r1) {
      for (Index j = 0; j < r1; ++j)
        for (Index i = std::max(j, r0); i < r1; ++i)
          C[i + j * m] = init ? init_scale * init[i + j * m] : S(0);
    };
    product.run(M, m, C, m, alpha, prologue);
  }

  /// out = alpha * R + L R (L m x m, R and out m x cols), threaded by columns
  /// of R (the product's own split).
  void multiply_into(detail::ParallelGemm<S>& product, const S* L, S alpha, const S* R, Index cols,
                     S* out, bool fp32 = false) {
    (void)fp32;  // only the bf16 engine reads it
    (void)cols;  // only BLAS and bf16 read it (the Eigen products know their shape)
    const Index rows = m_;
#ifdef MUON_USE_BLAS
    if (products_ == Products::blas) {
      if (alpha != S(0)) std::copy(R, R + rows * cols, out);
      detail::blas_gemm(int(rows), int(cols), int(rows), S(1), L, int(rows), R, int(rows), alpha,
                        out, int(rows));
      return;
    }
#endif
#ifdef MUON_HAVE_BF16_KERNEL
    if constexpr (std::is_same<S, float>::value) {
      if (products_ == Products::bf16 && !fp32) {
        // Every bf16 multiply_into has the m x n iterate as its right factor
        // (apply_polynomial, gram_apply_q); the m x m ones ask for fp32.
        if (R != x_) detail::fail("products", "bf16 product of an unexpected shape");
        bf16_->apply(L, fresh_bf16_x(), alpha, out);
        return;
      }
    }
#endif
    auto init = [R, out, rows, alpha](Index c0, Index c1) {
      const Index begin = c0 * rows, end = c1 * rows;
      if (alpha == S(0))
        for (Index k = begin; k < end; ++k) out[k] = S(0);
      else
        for (Index k = begin; k < end; ++k) out[k] = alpha * R[k];
    };
    product.run(L, rows, R, rows, out, rows, S(1), init);
  }

#ifdef MUON_HAVE_BF16_KERNEL
  /// X, after telling the bf16 engine whether its packed copies of X are
  /// still current (packed at most once per value of X: the Gram product and
  /// the apply step that follows share them).
  const float* fresh_bf16_x() {
    if constexpr (!std::is_same_v<S, float>) {
      return nullptr;  // bf16 products need float compute (refused at construction)
    } else {
      if (!xt_current_) bf16_->invalidate();
      xt_current_ = true;
      return x_;
    }
  }
#endif

  /// dst = (src + src^T) / 2 (both n x n).
  static void symmetrize_into(const S* src, S* dst, Index n) {
    for (Index j = 0; j < n; ++j) {
      dst[j + j * n] = src[j + j * n];
      for (Index i = j + 1; i < n; ++i) dst[i + j * n] = S(0.5) * (src[i + j * n] + src[j + i * n]);
    }
    detail::ParallelSyrk<S>::mirror_rows(dst, n, 0, n);
  }

  // dst[i * dst_ld + j] = src[i + j * src_ld] for i < n, j < m, both
  // multiples of 8, in 8 x 8 register transposes where the build has AVX
  // and S is float; returns false (nothing done) otherwise. A compiler
  // vectorizes the plain loop with gathers or scatters, slow on some CPUs
  // (Zen 4: the wide update took 3x the tall one's time).
  static bool transpose_block(const S* src, Index src_ld, S* dst, Index dst_ld, Index n, Index m) {
#if defined(__AVX__)
    if constexpr (std::is_same<S, float>::value) {
      if (n % 8 != 0 || m % 8 != 0) return false;
      for (Index i0 = 0; i0 < n; i0 += 8)
        for (Index j0 = 0; j0 < m; j0 += 8) {
          __m256 c[8];  // c[j]: src[i0.. i0+7 + (j0 + j) src_ld]
          for (int j = 0; j < 8; ++j) c[j] = _mm256_loadu_ps(src + i0 + (j0 + j) * src_ld);
          const __m256 t0 = _mm256_unpacklo_ps(c[0], c[1]), t1 = _mm256_unpackhi_ps(c[0], c[1]);
          const __m256 t2 = _mm256_unpacklo_ps(c[2], c[3]), t3 = _mm256_unpackhi_ps(c[2], c[3]);
          const __m256 t4 = _mm256_unpacklo_ps(c[4], c[5]), t5 = _mm256_unpackhi_ps(c[4], c[5]);
          const __m256 t6 = _mm256_unpacklo_ps(c[6], c[7]), t7 = _mm256_unpackhi_ps(c[6], c[7]);
          const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
          const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
          const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
          const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
          const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
          const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
          const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
          const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
          const __m256 r[8] = {
              _mm256_permute2f128_ps(s0, s4, 0x20), _mm256_permute2f128_ps(s1, s5, 0x20),
              _mm256_permute2f128_ps(s2, s6, 0x20), _mm256_permute2f128_ps(s3, s7, 0x20),
              _mm256_permute2f128_ps(s0, s4, 0x31), _mm256_permute2f128_ps(s1, s5, 0x31),
              _mm256_permute2f128_ps(s2, s6, 0x31), _mm256_permute2f128_ps(s3, s7, 0x31)};
          for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + (i0 + i) * dst_ld + j0, r[i]);
        }
      return true;
    }
#endif
    (void)src, (void)src_ld, (void)dst, (void)dst_ld, (void)n, (void)m;
    return false;
  }

  static constexpr Index kLoadRows = 16, kLoadCols = 64;  // load_rows' tile (4 KiB in float)
  // update_rows' tile (4 KiB in float) and how many tiles ahead it asks for
  // prefetching. Measured at 768x3072 here (bench_step's muon_update and a
  // copy of its loop): with hints into L2 (into L1 or for writing: no faster
  // than none), 16x64 two tiles ahead was the fastest of 8x64, 8x128,
  // 16x32, 16x48, 16x96, 16x128, 24x64, 32x32, 32x64, 32x128, 64x64,
  // 64x128 and 128x32 (one to four tiles ahead tried for some).
  static constexpr Index kUpdateRows = 16, kUpdateCols = 64, kUpdateAhead = 2;
  Index rows_, cols_, m_ = 0, n_ = 0;
  std::shared_ptr<Resources> shared_;  // before the products that point into it
  std::size_t offset_[6] = {};         // X, Y, A, B, Q, T in the shared arena
  S *x_ = nullptr, *y_ = nullptr, *a_ = nullptr, *b_ = nullptr, *q_ = nullptr, *t_ = nullptr;
  detail::ThreadPool* pool_ = nullptr;  // shared_'s pool, or null: one thread
  std::unique_ptr<detail::ParallelSyrk<S>> gram_, square_;
  std::unique_ptr<detail::ParallelGemm<S>> apply_, small_;
  Products products_ = Products::eigen;
  // The bf16 engine's packed copies hold bf16(X); every change of X clears
  // this (kept in every build so those writes need no #ifdef).
  bool xt_current_ = false;
#ifdef MUON_HAVE_BF16_KERNEL
  std::unique_ptr<detail::Bf16Products> bf16_;
#endif
};

}  // namespace eigen

/// The CPU workspace for storage scalar T (see eigen::Workspace).
template <class T>
using Workspace = eigen::Workspace<T>;

}  // namespace muon
