// SPDX-License-Identifier: MIT
#pragma once
/// \file orthogonalize.hpp
/// \brief The CPU entry points: orthogonalize Eigen matrices with Newton–Schulz.
///
///  - `orthogonalize(G[, options])`: returns O = NS(G), convenient, allocates
///    the result (and a per-thread workspace when the shape changes).
///  - `orthogonalize_into(G, out, workspace[, options])`: no heap allocation;
///    `out` may be G itself (in place).
///  - `orthogonalize_batch(...)`: a batch of same-shape matrices, one workspace.
///
/// Inputs are any Eigen expression (`Eigen::Map` over a framework's tensor
/// included; a row-major map is simply the transpose and is handled as such).
/// Every entry validates everything before writing anything: on a muon::Error
/// the caller's data is untouched.

#include <Eigen/Core>
#include <memory>
#include <string>
#include <vector>

#include "backend/eigen/workspace.hpp"
#include "error.hpp"
#include "newton_schulz.hpp"
#include "scalar.hpp"

namespace muon {
namespace detail {

/// Why input G could not be loaded into a workspace of storage scalar T:
/// NaN/Inf in G itself, or finite values beyond the compute type's range
/// (a double input above 3.4e38 for a float workspace).
template <class T, class Derived>
std::string non_finite_problem(const Eigen::MatrixBase<Derived>& G) {
  if (!G.allFinite()) return "contains NaN or Inf";
  return std::string("holds finite values beyond the range of ") +
         scalar_traits<compute_t<T>>::name + " (the workspace computes in it)";
}

}  // namespace detail

/// O = NS(G) written into `out` (same shape as G; may alias G), using the
/// caller's workspace (shape G.rows() x G.cols()). Performs no heap allocation.
/// Throws muon::Error for a wrong workspace or output shape, NaN/Inf in G, or
/// invalid options; `out` is then unchanged.
template <class T, class DerivedIn, class DerivedOut>
void orthogonalize_into(const Eigen::MatrixBase<DerivedIn>& G,
                        const Eigen::MatrixBase<DerivedOut>& out, Workspace<T>& workspace,
                        const NewtonSchulzOptions& options) {
  options.validate();
  workspace.check_shape(G.rows(), G.cols(), "G");
  workspace.check_shape(out.rows(), out.cols(), "out");
  // Messages are built only once a check fails: this path allocates nothing.
  if (!workspace.load(G)) detail::fail("G", detail::non_finite_problem<T>(G));
  detail::newton_schulz_iterate(workspace, options);
  workspace.store(out);
}

/// orthogonalize_into with default options (Jordan quintic, 5 steps).
template <class T, class DerivedIn, class DerivedOut>
void orthogonalize_into(const Eigen::MatrixBase<DerivedIn>& G,
                        const Eigen::MatrixBase<DerivedOut>& out, Workspace<T>& workspace) {
  static const NewtonSchulzOptions defaults;
  orthogonalize_into(G, out, workspace, defaults);
}

namespace detail {

/// The calling thread's workspace for one-shot calls: the one of the last
/// shape (and thread count) it orthogonalized, kept with its threads and
/// memory, so a loop of one-shot calls costs what orthogonalize_into with a
/// reused workspace costs.
template <class T>
Workspace<T>& one_shot_workspace(Eigen::Index rows, Eigen::Index cols) {
  thread_local std::unique_ptr<Workspace<T>> last;
  const int threads = default_threads();
  if (!last || last->rows() != rows || last->cols() != cols ||
      last->resources()->threads() != threads) {
    last.reset();  // free the old one first: at most one is held
    last = std::make_unique<Workspace<T>>(rows, cols, threads);
  }
  return *last;
}

}  // namespace detail

/// Returns NS(G) as a new matrix of G's scalar. Throws muon::Error for an
/// empty or non-finite G or invalid options. Keeps a workspace per thread
/// for the last shape it saw (its memory is held until the thread exits or
/// the shape changes); orthogonalize_into with your own workspace holds none.
template <class Derived>
Matrix<typename Derived::Scalar> orthogonalize(const Eigen::MatrixBase<Derived>& G,
                                               const NewtonSchulzOptions& options = {}) {
  using T = typename Derived::Scalar;
  if (!(G.rows() > 0 && G.cols() > 0)) detail::fail("G", "is empty");
  options.validate();
  Workspace<T>& ws = detail::one_shot_workspace<T>(G.rows(), G.cols());
  Matrix<T> out(G.rows(), G.cols());
  orthogonalize_into(G, out, ws, options);
  return out;
}

/// Orthogonalizes `batch` same-shape column-major matrices stored `stride`
/// elements apart (stride >= rows*cols; use rows*cols for a dense 3-D
/// tensor). `out` may equal `in`. Every input is checked for NaN/Inf before
/// any output is written. Performs no heap allocation.
template <class T>
void orthogonalize_batch(const T* in, T* out, Eigen::Index batch, Eigen::Index stride,
                         Workspace<T>& workspace, const NewtonSchulzOptions& options) {
  using ConstMap = Eigen::Map<const Matrix<T>>;
  using MutMap = Eigen::Map<Matrix<T>>;
  options.validate();
  const Eigen::Index r = workspace.rows(), c = workspace.cols();
  // Messages are built only once a check fails: this path allocates nothing.
  if (batch < 0) detail::fail("batch", "must be >= 0");
  if (stride < r * c) detail::fail("stride", "must be >= rows*cols of the workspace");
  if (batch > 0 && (in == nullptr || out == nullptr)) detail::fail("in/out", "null pointer");
  for (Eigen::Index i = 0; i < batch; ++i)
    if (!ConstMap(in + i * stride, r, c).allFinite())
      detail::fail("in", "matrix " + std::to_string(i) + " of the batch contains NaN or Inf");
  for (Eigen::Index i = 0; i < batch; ++i) {
    workspace.load(ConstMap(in + i * stride, r, c));
    detail::newton_schulz_iterate(workspace, options);
    workspace.store(MutMap(out + i * stride, r, c));
  }
}

/// A batch given as a list of same-shape matrices; returns their NS images.
template <class T>
std::vector<Matrix<T>> orthogonalize_batch(const std::vector<Matrix<T>>& Gs,
                                           const NewtonSchulzOptions& options = {}) {
  std::vector<Matrix<T>> out;
  if (Gs.empty()) return out;
  const Eigen::Index r = Gs.front().rows(), c = Gs.front().cols();
  if (!(r > 0 && c > 0)) detail::fail("Gs", "matrix 0 is empty");
  for (std::size_t i = 0; i < Gs.size(); ++i) {
    if (!(Gs[i].rows() == r && Gs[i].cols() == c))
      detail::fail("Gs", "matrix " + std::to_string(i) + " has a different shape than matrix 0");
    if (!(Gs[i].allFinite()))
      detail::fail("Gs", "matrix " + std::to_string(i) + " contains NaN or Inf");
  }
  options.validate();
  Workspace<T> ws(r, c);
  out.reserve(Gs.size());
  for (const auto& G : Gs) {
    out.emplace_back(r, c);
    orthogonalize_into(G, out.back(), ws, options);
  }
  return out;
}

}  // namespace muon
