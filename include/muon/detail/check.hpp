// SPDX-License-Identifier: MIT
#pragma once
/// \file detail/check.hpp
/// \brief Argument checks for functions called on every optimizer step.
///
/// detail::require() takes its message as a std::string, which is built on
/// every call, including when the check passes, and a message longer than the
/// small-string buffer allocates. These variants build the message only when
/// the check fails, so a per-step function that validates its arguments still
/// allocates nothing.

#include <string>

#include "../error.hpp"

namespace muon {
namespace detail {

/// Throws muon::Error("<parameter>: <problem>") when `ok` is false.
inline void check_arg(bool ok, const char* parameter, const char* problem) {
  if (!ok) throw Error(std::string(parameter) + ": " + problem);
}

/// Throws muon::Error("<parameter>: <problem>"); for messages that carry a
/// value, behind an `if` so the string is only built on failure.
[[noreturn]] inline void fail_arg(const char* parameter, const std::string& problem) {
  throw Error(std::string(parameter) + ": " + problem);
}

}  // namespace detail
}  // namespace muon
