// SPDX-License-Identifier: MIT
#pragma once
/// \file scalar.hpp
/// \brief Scalar traits: which type a storage scalar is computed in.
///
/// Storage and compute scalars are separate: Eigen::half and Eigen::bfloat16
/// are storage formats whose Eigen products are not vectorized, so their
/// Newton–Schulz runs in float (fp32 accumulation); float runs in float and
/// double in double.

#include <Eigen/Core>
#include <type_traits>

namespace muon {

template <class T>
struct scalar_traits {
  static_assert(sizeof(T) == 0,
                "muon: unsupported scalar type; use double, float, Eigen::half or Eigen::bfloat16");
};

template <>
struct scalar_traits<double> {
  using compute = double;
  static constexpr const char* name = "double";
};
template <>
struct scalar_traits<float> {
  using compute = float;
  static constexpr const char* name = "float";
};
template <>
struct scalar_traits<Eigen::half> {
  using compute = float;
  static constexpr const char* name = "half";
};
template <>
struct scalar_traits<Eigen::bfloat16> {
  using compute = float;
  static constexpr const char* name = "bfloat16";
};

/// The scalar Newton–Schulz computes in for storage scalar T (at least fp32).
template <class T>
using compute_t = typename scalar_traits<T>::compute;

/// Column-major dynamic matrix over T, the owning convenience type.
template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

}  // namespace muon
