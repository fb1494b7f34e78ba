// SPDX-License-Identifier: MIT
#pragma once
/// \file checkpoint.hpp
/// \brief The checkpoint container (optim/checkpoint_format.hpp: envelope,
/// Writer, Reader, CRC-32) and schema (optim/state_io.hpp), plus the dtype
/// code of each CPU scalar, Eigen's 16-bit types included.

#include <Eigen/Core>
#include <fstream>
#include <istream>
#include <string>
#include <type_traits>
#include <vector>

#include "optim/checkpoint_format.hpp"
#include "optim/state_io.hpp"

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

namespace muon {

/// The names of the parameters a checkpoint file holds, in its order
/// (format version 1 or 2). Throws muon::Error naming the path when the file
/// cannot be read or is not a valid checkpoint.
inline std::vector<std::string> checkpoint_param_names(const std::string& path) {
  std::ifstream is(path, std::ios::binary);
  if (!is) detail::fail("path", "cannot open '" + path + "' for reading");
  return optim::checkpoint_param_names(is, "'" + path + "'");
}
/// The same for a stream.
inline std::vector<std::string> checkpoint_param_names(std::istream& is) {
  return optim::checkpoint_param_names(is, "stream");
}

}  // namespace muon
