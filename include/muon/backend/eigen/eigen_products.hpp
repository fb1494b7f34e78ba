// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/eigen_products.hpp
/// \brief Allocation-free level-3 products on column-major Eigen buffers.
///
/// Eigen's expression API (`C.noalias() = A * B`) allocates its packing
/// buffers on every call once they exceed EIGEN_STACK_ALLOCATION_LIMIT. These
/// wrappers call the same GEBP kernels Eigen uses, with Eigen's blocking
/// sizes but packing buffers allocated once, when the workspace is built, and
/// shared by every product that cannot run at the same time (Packing), so a
/// Newton–Schulz call performs no heap allocation and the buffers do not
/// multiply with the number of products or workspaces. Only column-major,
/// unit-inner-stride buffers are handled; that is all the backend needs.
///
/// Relies on Eigen 3.4's internal product API (stable across the 3.4 series);
/// the static_assert below points the user here if a different Eigen is used.

#include <Eigen/Core>

static_assert(EIGEN_WORLD_VERSION == 3 && EIGEN_MAJOR_VERSION == 4,
              "muon: the Eigen backend's allocation-free products target Eigen 3.4.x");

#include <cstddef>
#include <memory>
#include <vector>

namespace muon {
namespace detail {

/// Scratch memory of S, aligned for the widest vector unit, left
/// uninitialized (it is written before it is read), growing on request only.
/// Growing discards the contents.
template <class S>
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { Eigen::internal::aligned_free(data_); }
  /// At least n elements from now on.
  void reserve(std::size_t n) {
    if (n <= size_) return;
    S* fresh =
        static_cast<S*>(Eigen::internal::aligned_malloc(n * sizeof(S)));  // throws on failure
    Eigen::internal::aligned_free(data_);
    data_ = fresh;
    size_ = n;
  }
  S* data() { return data_; }
  std::size_t size() const { return size_; }

 private:
  S* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Packing buffers for the products, one pair (A, B) per task slot. Products
/// that never run at the same time share a slot's pair: each product binds
/// its slot's buffers when it runs, so the pair is sized for the largest
/// product that uses it, not once per product. Grows only in reserve(), which
/// the products call when they are made, never while they run.
template <class S>
class Packing {
 public:
  /// Slot `slot` holds at least `a` and `b` elements from now on.
  void reserve(std::size_t slot, Eigen::Index a, Eigen::Index b) {
    while (slots_.size() <= slot) slots_.push_back(std::make_unique<Slot>());
    slots_[slot]->a.reserve(static_cast<std::size_t>(a));
    slots_[slot]->b.reserve(static_cast<std::size_t>(b));
  }
  S* a(std::size_t slot) { return slots_[slot]->a.data(); }
  S* b(std::size_t slot) { return slots_[slot]->b.data(); }
  /// Bytes held by every slot.
  std::size_t bytes() const {
    std::size_t n = 0;
    for (const auto& s : slots_) n += (s->a.size() + s->b.size()) * sizeof(S);
    return n;
  }

 private:
  struct Slot {
    ScratchBuffer<S> a, b;
  };
  std::vector<std::unique_ptr<Slot>> slots_;
};

/// Eigen's cache blocking of one column-major product (the sizes Eigen's own
/// gemm_blocking_space computes), with packing buffers bound from outside.
template <class S>
class Blocking : public Eigen::internal::level3_blocking<S, S> {
 public:
  Blocking() = default;
  /// A rows x cols result of inner dimension depth. `l3`: cut the columns
  /// into L3-sized blocks (general products); the triangular product packs
  /// all its columns at once.
  Blocking(Eigen::Index rows, Eigen::Index cols, Eigen::Index depth, bool l3) {
    this->m_mc = rows;
    this->m_nc = cols;
    this->m_kc = depth;
    Eigen::Index n = cols;
    Eigen::internal::computeProductBlockingSizes<S, S, 1, Eigen::Index>(
        this->m_kc, this->m_mc, l3 ? this->m_nc : n, Eigen::Index(1));
  }
  Eigen::Index size_a() const { return this->m_mc * this->m_kc; }
  Eigen::Index size_b() const { return this->m_kc * this->m_nc; }
  void bind(S* a, S* b) {
    this->m_blockA = a;
    this->m_blockB = b;
  }
};

/// C += alpha * L * op(R) for a column-major C (rows x cols) and a
/// column-major L (rows x depth). R is read as stored in `RhsOrder`: ColMajor
/// means R is depth x cols; RowMajor means the buffer holds a cols x depth
/// column-major matrix and the product uses its transpose (C += L R^T), which
/// is how the off-diagonal blocks of a symmetric product are formed. Packs
/// into slot `slot` of a Packing shared with other products.
template <class S, int RhsOrder = Eigen::ColMajor>
class Gemm {
 public:
  Gemm(Eigen::Index rows, Eigen::Index cols, Eigen::Index depth, Packing<S>& packing,
       std::size_t slot)
      : rows_(rows),
        cols_(cols),
        depth_(depth),
        blocking_(rows, cols, depth, true),
        packing_(&packing),
        slot_(slot) {
    packing.reserve(slot, blocking_.size_a(), blocking_.size_b());
  }
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  /// C (ldc) += alpha * L (ldl) * op(R) (ldr).
  void run(const S* L, Eigen::Index ldl, const S* R, Eigen::Index ldr, S* C, Eigen::Index ldc,
           S alpha) {
    blocking_.bind(packing_->a(slot_), packing_->b(slot_));
    Eigen::internal::general_matrix_matrix_product<Eigen::Index, S, Eigen::ColMajor, false, S,
                                                   RhsOrder, false, Eigen::ColMajor,
                                                   1>::run(rows_, cols_, depth_, L, ldl, R, ldr, C,
                                                           1, ldc, alpha, blocking_, nullptr);
  }

 private:
  Eigen::Index rows_, cols_, depth_;
  Blocking<S> blocking_;
  Packing<S>* packing_;
  std::size_t slot_;
};

/// C (ldc) += alpha * L * R^T with L (rows x depth) and R (cols x depth)
/// column-major.
template <class S>
using GemmNT = Gemm<S, Eigen::RowMajor>;

/// Lower triangle of C += alpha * M * M^T for a column-major M (size x depth):
/// the symmetric rank-k update, half the flops of a general product. Packs
/// into slot `slot` of a shared Packing.
template <class S>
class Syrk {
 public:
  Syrk(Eigen::Index size, Eigen::Index depth, Packing<S>& packing, std::size_t slot)
      : size_(size),
        depth_(depth),
        blocking_(size, size, depth, false),
        packing_(&packing),
        slot_(slot) {
    packing.reserve(slot, blocking_.size_a(), blocking_.size_b());
  }
  Syrk(const Syrk&) = delete;
  Syrk& operator=(const Syrk&) = delete;

  /// lower(C) (ldc) += alpha * M M^T, M (ldm) column-major size x depth.
  void run(const S* M, Eigen::Index ldm, S* C, Eigen::Index ldc, S alpha) {
    blocking_.bind(packing_->a(slot_), packing_->b(slot_));
    // The right factor M^T is M's storage read row-major.
    Eigen::internal::general_matrix_matrix_triangular_product<
        Eigen::Index, S, Eigen::ColMajor, false, S, Eigen::RowMajor, false, Eigen::ColMajor, 1,
        Eigen::Lower>::run(size_, depth_, M, ldm, M, ldm, C, 1, ldc, alpha, blocking_);
  }

 private:
  Eigen::Index size_, depth_;
  Blocking<S> blocking_;
  Packing<S>* packing_;
  std::size_t slot_;
};

}  // namespace detail
}  // namespace muon
