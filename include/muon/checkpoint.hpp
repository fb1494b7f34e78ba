// SPDX-License-Identifier: MIT
#pragma once
/// \file checkpoint.hpp
/// \brief The checkpoint container (checkpoint_format.hpp: envelope, Writer,
/// Reader, CRC-32) plus the dtype code of each CPU scalar, Eigen's 16-bit
/// types included.

#include <Eigen/Core>
#include <type_traits>

#include "checkpoint_format.hpp"

namespace muon {
namespace checkpoint {

/// The Dtype code a buffer of scalar S is stored with.
template <class S>
constexpr Dtype dtype_of() {
  if constexpr (std::is_same_v<S, float>)
    return Dtype::float32;
  else if constexpr (std::is_same_v<S, double>)
    return Dtype::float64;
  else if constexpr (std::is_same_v<S, Eigen::bfloat16>)
    return Dtype::bfloat16;
  else {
    static_assert(std::is_same_v<S, Eigen::half>,
                  "muon: checkpoints store float, double, Eigen::bfloat16 or Eigen::half");
    return Dtype::float16;
  }
}

}  // namespace checkpoint
}  // namespace muon
