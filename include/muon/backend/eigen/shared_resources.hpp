// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/shared_resources.hpp
/// \brief What CPU workspaces that never run at the same time can share.
///
/// A Newton–Schulz workspace needs threads, the products' packing buffers and
/// the iteration's matrices (the iterate, its ping-pong copy and four small
/// square ones). Between two calls none of them holds anything the next call
/// reads: `load` writes the iterate afresh. So workspaces that are used one
/// after another (the optimizer's, one per parameter shape) can share one
/// thread pool, one set of packing buffers per thread and one matrix arena,
/// each sized for the largest workspace attached, instead of each holding
/// its own. Sharing workspaces must not run concurrently; a workspace made
/// on its own gets resources of its own.

#include <Eigen/Core>
#include <cstddef>
#include <memory>
#include <vector>

#include "eigen_products.hpp"
#include "thread_pool.hpp"

namespace muon {
namespace eigen {

/// Threads, packing buffers and matrix memory for workspaces of compute
/// scalar S (float or double) that run one at a time.
template <class S>
class SharedResources {
 public:
  /// `threads` (>= 1) is the thread count every attached workspace may use;
  /// the pool is started when the first workspace large enough to gain from
  /// threads asks for it.
  explicit SharedResources(int threads) : threads_(threads < 1 ? 1 : threads) {}
  SharedResources(const SharedResources&) = delete;
  SharedResources& operator=(const SharedResources&) = delete;

  int threads() const { return threads_; }

  /// The pool of threads() threads (null when threads() == 1), made on first use.
  detail::ThreadPool* pool() {
    if (threads_ > 1 && !pool_) pool_ = std::make_unique<detail::ThreadPool>(threads_);
    return pool_.get();
  }

  detail::Packing<S>& packing() { return packing_; }

  /// The matrix arena holds at least `elements` from now on (its start may
  /// move: workspaces take the pointer when they run, not when they are made).
  void reserve_matrices(std::size_t elements) { matrices_.reserve(elements); }
  S* matrices() { return matrices_.data(); }

  /// Bytes held: the matrix arena and the packing buffers.
  std::size_t bytes() const { return matrices_.size() * sizeof(S) + packing_.bytes(); }

 private:
  int threads_;
  std::unique_ptr<detail::ThreadPool> pool_;
  detail::Packing<S> packing_;
  detail::ScratchBuffer<S> matrices_;
};

}  // namespace eigen
}  // namespace muon
