// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/parallel_products.hpp
/// \brief Multi-threaded, allocation-free level-3 products for the CPU backend.
///
///  - ParallelSyrk: lower triangle of C = alpha M M^T (the Gram X X^T and the
///    square A^2 = A A^T of a symmetric A), upper triangle mirrored. The lower
///    triangle is split into row panels of equal area: panel [r0, r1) is a
///    triangular diagonal block (a rank-k update of rows r0..r1) plus the
///    rectangle C[r0:r1, 0:r0] = M[r0:r1, :] M[0:r0, :]^T (a general product).
///    Each panel also mirrors its own rows into the upper triangle, so one
///    parallel region does the whole symmetric product.
///  - ParallelGemm: C = L R (plus whatever a prologue writes into C first),
///    split by columns of R and C.
/// Every panel owns its kernel objects, created with the product; panel p
/// packs into slot p of a Packing shared with the other products (one task
/// per thread, one product at a time); run() allocates nothing. Each task first calls a
/// caller-supplied prologue on its own part of C (zeroing, scaling a copy),
/// so elementwise work is threaded too.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "eigen_products.hpp"
#include "thread_pool.hpp"

namespace muon {
namespace detail {

/// Number of tasks worth using for `flops` of work on `threads` threads:
/// each task gets at least ~8 MFLOP, so the wake-up cost stays negligible.
inline int useful_tasks(double flops, int threads) {
  const double per_task = 8e6;
  // Compared in double: flops / per_task can exceed any int.
  const double by_work = std::floor(flops / per_task);
  if (!(by_work >= 1.0)) return 1;
  return by_work >= double(threads) ? std::max(1, threads) : static_cast<int>(by_work);
}

/// Task boundaries 0 = b_0 < b_1 < ... < b_k = extent for `tasks` tasks: b_p
/// is extent * fraction(p / tasks), rounded to a multiple of 16 (the kernels'
/// row granularity). Boundaries that rounding makes coincide are dropped, so
/// there may be fewer tasks than asked for, never an empty one.
template <class Fraction>
std::vector<Eigen::Index> split_points(Eigen::Index extent, int tasks, Fraction fraction) {
  std::vector<Eigen::Index> bounds{0};
  for (int p = 1; p < tasks; ++p) {
    const double x = double(extent) * fraction(double(p) / double(tasks));
    const Eigen::Index b = static_cast<Eigen::Index>(std::lround(x / 16.0)) * 16;
    if (b > bounds.back() && b < extent) bounds.push_back(b);
  }
  bounds.push_back(extent);
  return bounds;
}

/// Symmetric C = alpha M M^T (prologue + accumulate), threaded by row panels.
template <class S>
class ParallelSyrk {
 public:
  /// C is size x size, M is size x depth. `pool` may be null (one thread).
  ParallelSyrk(Eigen::Index size, Eigen::Index depth, ThreadPool* pool, Packing<S>& packing)
      : size_(size), depth_(depth), pool_(pool) {
    const int threads = pool ? pool->size() : 1;
    const int tasks = useful_tasks(double(size) * double(size) * double(depth), threads);
    // Equal-area panels of the lower triangle: boundary p at size * sqrt(p / P).
    bounds_ = split_points(size, tasks, [](double f) { return std::sqrt(f); });
    for (std::size_t p = 0; p + 1 < bounds_.size(); ++p) {
      const Eigen::Index r0 = bounds_[p], rows = bounds_[p + 1] - r0;
      diag_.push_back(std::make_unique<Syrk<S>>(rows, depth, packing, p));
      rect_.push_back(r0 > 0 ? std::make_unique<GemmNT<S>>(rows, r0, depth, packing, p) : nullptr);
    }
  }

  int tasks() const { return static_cast<int>(diag_.size()); }

  /// For each panel [r0, r1): pre(r0, r1) (e.g. initialize C's rows r0..r1,
  /// columns 0..r1), then lower(C)[r0:r1, :] += alpha M M^T, then mirror those
  /// rows into the upper triangle. M (ldm) size x depth, C (ldc) size x size.
  template <class Pre>
  void run(const S* M, Eigen::Index ldm, S* C, Eigen::Index ldc, S alpha, Pre& pre) {
    auto task = [&](int p) {
      const Eigen::Index r0 = bounds_[static_cast<std::size_t>(p)];
      const Eigen::Index r1 = bounds_[static_cast<std::size_t>(p) + 1];
      pre(r0, r1);
      diag_[static_cast<std::size_t>(p)]->run(M + r0, ldm, C + r0 + r0 * ldc, ldc, alpha);
      if (r0 > 0) rect_[static_cast<std::size_t>(p)]->run(M + r0, ldm, M, ldm, C + r0, ldc, alpha);
      mirror_rows(C, ldc, r0, r1);
    };
    if (pool_ && tasks() > 1)
      pool_->parallel(tasks(), task);
    else
      for (int p = 0; p < tasks(); ++p) task(p);
  }

  /// Upper triangle entries (i, j), i < j, j in [r0, r1) <- C(j, i); blocked
  /// 32 x 32 so the strided reads stay in L1.
  static void mirror_rows(S* C, Eigen::Index ldc, Eigen::Index r0, Eigen::Index r1) {
    constexpr Eigen::Index kTile = 32;
    for (Eigen::Index jb = r0; jb < r1; jb += kTile) {
      const Eigen::Index je = std::min(r1, jb + kTile);
      for (Eigen::Index ib = 0; ib < je; ib += kTile) {
        const Eigen::Index ie = std::min(je, ib + kTile);
        for (Eigen::Index j = jb; j < je; ++j) {
          const Eigen::Index iend = std::min(ie, j);
          for (Eigen::Index i = ib; i < iend; ++i) C[i + j * ldc] = C[j + i * ldc];
        }
      }
    }
  }

 private:
  Eigen::Index size_, depth_;
  ThreadPool* pool_;
  std::vector<Eigen::Index> bounds_;
  std::vector<std::unique_ptr<Syrk<S>>> diag_;
  std::vector<std::unique_ptr<GemmNT<S>>> rect_;
};

/// C (rows x cols) += L (rows x depth) * R (depth x cols), all column-major,
/// threaded by column blocks of R and C.
template <class S>
class ParallelGemm {
 public:
  ParallelGemm(Eigen::Index rows, Eigen::Index cols, Eigen::Index depth, ThreadPool* pool,
               Packing<S>& packing)
      : rows_(rows), cols_(cols), depth_(depth), pool_(pool) {
    const int threads = pool ? pool->size() : 1;
    const int tasks = useful_tasks(2.0 * double(rows) * double(cols) * double(depth), threads);
    bounds_ = split_points(cols, tasks, [](double f) { return f; });
    for (std::size_t p = 0; p + 1 < bounds_.size(); ++p)
      parts_.push_back(
          std::make_unique<Gemm<S>>(rows, bounds_[p + 1] - bounds_[p], depth, packing, p));
  }

  int tasks() const { return static_cast<int>(parts_.size()); }

  /// For each column block [c0, c1): pre(c0, c1), then
  /// C[:, c0:c1] += alpha L R[:, c0:c1].
  template <class Pre>
  void run(const S* L, Eigen::Index ldl, const S* R, Eigen::Index ldr, S* C, Eigen::Index ldc,
           S alpha, Pre& pre) {
    auto task = [&](int p) {
      const Eigen::Index c0 = bounds_[static_cast<std::size_t>(p)];
      const Eigen::Index c1 = bounds_[static_cast<std::size_t>(p) + 1];
      pre(c0, c1);
      parts_[static_cast<std::size_t>(p)]->run(L, ldl, R + c0 * ldr, ldr, C + c0 * ldc, ldc, alpha);
    };
    if (pool_ && tasks() > 1)
      pool_->parallel(tasks(), task);
    else
      for (int p = 0; p < tasks(); ++p) task(p);
  }

 private:
  Eigen::Index rows_, cols_, depth_;
  ThreadPool* pool_;
  std::vector<Eigen::Index> bounds_;
  std::vector<std::unique_ptr<Gemm<S>>> parts_;
};

}  // namespace detail
}  // namespace muon
