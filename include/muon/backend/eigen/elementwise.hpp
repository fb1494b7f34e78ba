// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/elementwise.hpp
/// \brief Shared plumbing of the elementwise per-step functions (momentum,
/// update, AdamW): compute-type selection, shape checks, writable views.
///
/// The public functions take `const Eigen::DenseBase<D>&` so that callers can
/// pass any dense expression: owning matrices and arrays, `Eigen::Map` over a
/// framework's tensor (flat 1-D or 2-D with an outer stride), blocks. Writable
/// arguments use the const_cast idiom from Eigen's "Writing functions taking
/// Eigen types as parameters" page: a temporary Map/Block binds to the const
/// reference and is written through.

#include <Eigen/Core>
#include <cmath>
#include <string>
#include <type_traits>

#include "../../error.hpp"
#include "../../scalar.hpp"

namespace muon {
namespace detail {

/// The scalar an elementwise kernel computes in: double when any operand is
/// double, otherwise float (half and bfloat16 are storage formats only).
template <class... Scalars>
using elementwise_compute_t =
    std::conditional_t<(std::is_same<Scalars, double>::value || ...), double, float>;

/// Rejects (at compile time) scalars the library does not support, with the
/// message from scalar_traits.
template <class... Scalars>
constexpr bool supported_scalars() {
  return ((sizeof(compute_t<Scalars>) > 0) && ...);
}

/// True when expression D can be written through (a Map, a Matrix, a block of
/// one), false for read-only expressions such as `a + b`.
template <class D>
constexpr bool is_writable() {
  return (int(Eigen::internal::traits<D>::Flags) & Eigen::LvalueBit) != 0;
}

/// The writable view of an argument taken as `const DenseBase<D>&`.
template <class D>
Eigen::DenseBase<D>& writable(const Eigen::DenseBase<D>& x) {
  static_assert(is_writable<D>(),
                "muon: this argument is written to; pass a Matrix, Array, Map or Block, "
                "not a read-only expression");
  return const_cast<Eigen::DenseBase<D>&>(x);
}

inline std::string shape_string(Eigen::Index rows, Eigen::Index cols) {
  return std::to_string(rows) + "x" + std::to_string(cols);
}

/// Throws muon::Error naming `name` when x's shape differs from the shape of
/// `reference` (named `reference_name`).
template <class DR, class DX>
void require_same_shape(const Eigen::DenseBase<DR>& reference, const char* reference_name,
                        const Eigen::DenseBase<DX>& x, const char* name) {
  if (x.rows() != reference.rows() || x.cols() != reference.cols())
    fail(name, "shape " + shape_string(x.rows(), x.cols()) + " does not match " + reference_name +
                   "'s shape " + shape_string(reference.rows(), reference.cols()));
}

/// Reads one element in compute type C (the cast each element gets on read).
template <class C, class D>
C read(const Eigen::DenseBase<D>& x, Eigen::Index i, Eigen::Index j) {
  return static_cast<C>(x.coeff(i, j));
}

/// True when `value`, rounded to storage scalar S as write() rounds it, is
/// neither NaN nor infinite.
template <class S, class C>
bool finite_in(C value) {
  return std::isfinite(static_cast<compute_t<S>>(static_cast<S>(value)));
}

/// Throws muon::Error("<name>: <problem> at (i, j); nothing was written").
[[noreturn]] inline void fail_at(const char* name, const char* problem, Eigen::Index i,
                                 Eigen::Index j) {
  fail(name, std::string(problem) + " at (" + std::to_string(i) + ", " + std::to_string(j) +
                 "); nothing was written");
}

/// Writes one element, rounding from compute type C to the storage scalar.
template <class D, class C>
void write(Eigen::DenseBase<D>& x, Eigen::Index i, Eigen::Index j, C value) {
  x.coeffRef(i, j) = static_cast<typename D::Scalar>(value);
}

}  // namespace detail
}  // namespace muon
