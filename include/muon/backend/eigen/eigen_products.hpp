// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/eigen_products.hpp
/// \brief Allocation-free level-3 products on column-major Eigen buffers.
///
/// Eigen's expression API (`C.noalias() = A * B`) allocates its packing
/// buffers on every call once they exceed EIGEN_STACK_ALLOCATION_LIMIT. These
/// wrappers call the same GEBP kernels Eigen uses, but with a blocking object
/// whose packing buffers are allocated once, when the workspace is built, so
/// a Newton–Schulz call performs no heap allocation. Only column-major,
/// unit-inner-stride buffers are handled; that is all the backend needs.
///
/// Relies on Eigen 3.4's internal product API (stable across the 3.4 series);
/// the static_assert below points the user here if a different Eigen is used.

#include <Eigen/Core>

static_assert(EIGEN_WORLD_VERSION == 3 && EIGEN_MAJOR_VERSION == 4,
              "muon: the Eigen backend's allocation-free products target Eigen 3.4.x");

namespace muon {
namespace detail {

/// C += alpha * L * op(R) for a column-major C (rows x cols) and a
/// column-major L (rows x depth). R is read as stored in `RhsOrder`: ColMajor
/// means R is depth x cols; RowMajor means the buffer holds a cols x depth
/// column-major matrix and the product uses its transpose (C += L R^T), which
/// is how the off-diagonal blocks of a symmetric product are formed.
template <class S, int RhsOrder = Eigen::ColMajor>
class Gemm {
 public:
  Gemm() = default;
  Gemm(Eigen::Index rows, Eigen::Index cols, Eigen::Index depth)
      : rows_(rows), cols_(cols), depth_(depth), blocking_(rows, cols, depth, 1, true) {
    blocking_.allocateAll();
  }
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  /// C (ldc) += alpha * L (ldl) * op(R) (ldr).
  void run(const S* L, Eigen::Index ldl, const S* R, Eigen::Index ldr, S* C, Eigen::Index ldc,
           S alpha) {
    Eigen::internal::general_matrix_matrix_product<Eigen::Index, S, Eigen::ColMajor, false, S,
                                                   RhsOrder, false, Eigen::ColMajor,
                                                   1>::run(rows_, cols_, depth_, L, ldl, R, ldr, C,
                                                           1, ldc, alpha, blocking_, nullptr);
  }

 private:
  Eigen::Index rows_ = 0, cols_ = 0, depth_ = 0;
  Eigen::internal::gemm_blocking_space<Eigen::ColMajor, S, S, Eigen::Dynamic, Eigen::Dynamic,
                                       Eigen::Dynamic, 1, false>
      blocking_{0, 0, 0, 1, true};
};

/// C (ldc) += alpha * L * R^T with L (rows x depth) and R (cols x depth)
/// column-major.
template <class S>
using GemmNT = Gemm<S, Eigen::RowMajor>;

/// Lower triangle of C += alpha * M * M^T for a column-major M (size x depth):
/// the symmetric rank-k update, half the flops of a general product.
template <class S>
class Syrk {
 public:
  Syrk() = default;
  Syrk(Eigen::Index size, Eigen::Index depth)
      : size_(size), depth_(depth), blocking_(size, size, depth, 1, false) {
    blocking_.allocateAll();
  }
  Syrk(const Syrk&) = delete;
  Syrk& operator=(const Syrk&) = delete;

  /// lower(C) (ldc) += alpha * M M^T, M (ldm) column-major size x depth.
  void run(const S* M, Eigen::Index ldm, S* C, Eigen::Index ldc, S alpha) {
    // The right factor M^T is M's storage read row-major.
    Eigen::internal::general_matrix_matrix_triangular_product<
        Eigen::Index, S, Eigen::ColMajor, false, S, Eigen::RowMajor, false, Eigen::ColMajor, 1,
        Eigen::Lower>::run(size_, depth_, M, ldm, M, ldm, C, 1, ldc, alpha, blocking_);
  }

 private:
  Eigen::Index size_ = 0, depth_ = 0;
  Eigen::internal::gemm_blocking_space<Eigen::ColMajor, S, S, Eigen::Dynamic, Eigen::Dynamic,
                                       Eigen::Dynamic, 1, false>
      blocking_{0, 0, 0, 1, false};
};

}  // namespace detail
}  // namespace muon
