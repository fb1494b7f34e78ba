// SPDX-License-Identifier: MIT
#pragma once
/// \file error.hpp
/// \brief The one exception type the library throws for bad input, and the
/// one helper that throws it.

#include <stdexcept>
#include <string>
#include <string_view>

namespace muon {

/// Thrown for invalid arguments (shape mismatch, empty or non-finite input,
/// bad options, corrupt checkpoint). The message is "muon: <field>: <problem>",
/// naming the parameter and the problem in one line. When it is thrown, the
/// caller's data is left as it was.
class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& what) : std::invalid_argument("muon: " + what) {}
  /// The message without the "muon: " prefix.
  std::string_view detail() const noexcept {
    std::string_view w(what());
    return w.substr(w.size() >= 6 ? 6 : 0);
  }
};

namespace detail {

/// Throws muon::Error("<field>: <problem>"). Callers test first and call this
/// only on failure, so a check that passes builds no message and allocates
/// nothing (the per-step paths rely on that):
///
///     if (!(lr >= 0)) detail::fail("lr", "must be finite and >= 0");
[[noreturn]] inline void fail(std::string_view field, std::string_view problem) {
  std::string message;
  message.reserve(field.size() + 2 + problem.size());
  message.append(field).append(": ").append(problem);
  throw Error(message);
}

}  // namespace detail
}  // namespace muon
