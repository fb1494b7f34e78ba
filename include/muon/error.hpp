// SPDX-License-Identifier: MIT
#pragma once
/// \file error.hpp
/// \brief The one exception type the library throws for bad input.

#include <stdexcept>
#include <string>

namespace muon {

/// Thrown for invalid arguments (shape mismatch, empty or non-finite input,
/// bad options, corrupt checkpoint). The message names the parameter and the
/// problem. When it is thrown, the caller's data is left as it was.
class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& what) : std::invalid_argument("muon: " + what) {}
};

namespace detail {

/// Throws muon::Error("<parameter>: <problem>") when `ok` is false.
inline void require(bool ok, const char* parameter, const std::string& problem) {
  if (!ok) throw Error(std::string(parameter) + ": " + problem);
}

}  // namespace detail
}  // namespace muon
