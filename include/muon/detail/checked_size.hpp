// SPDX-License-Identifier: MIT
#pragma once
/// \file detail/checked_size.hpp
/// \brief Size arithmetic that cannot wrap: every product or sum of sizes,
/// element counts or byte counts the library forms from caller input goes
/// through these, so a huge shape is refused by name instead of wrapping to a
/// small number and sizing a buffer too short. Free of Eigen and CUDA.

#include <limits>
#include <optional>
#include <type_traits>

namespace muon {
namespace detail {

/// x < 0, written so that no compiler sees a comparison of an unsigned
/// value with zero (nvcc warns about one).
template <class I>
constexpr bool negative(I x) {
  if constexpr (std::is_signed<I>::value) {
    return x < I(0);
  } else {
    (void)x;
    return false;
  }
}

/// a * b when both are >= 0 and the product fits I; nullopt otherwise.
template <class I>
constexpr std::optional<I> checked_mul(I a, I b) {
  static_assert(std::is_integral<I>::value, "muon: sizes are integers");
  if (negative(a) || negative(b)) return std::nullopt;
  if (a != I(0) && b > std::numeric_limits<I>::max() / a) return std::nullopt;
  return static_cast<I>(a * b);
}

/// a + b when both are >= 0 and the sum fits I; nullopt otherwise.
template <class I>
constexpr std::optional<I> checked_add(I a, I b) {
  static_assert(std::is_integral<I>::value, "muon: sizes are integers");
  if (negative(a) || negative(b)) return std::nullopt;
  if (b > std::numeric_limits<I>::max() - a) return std::nullopt;
  return static_cast<I>(a + b);
}

/// The product of sizes of one type (each >= 0) when it fits; nullopt otherwise.
template <class I, class... More>
constexpr std::optional<I> checked_product(I first, More... more) {
  static_assert((std::is_same<I, More>::value && ...), "muon: sizes of one type");
  std::optional<I> p = negative(first) ? std::nullopt : std::optional<I>(first);
  ((p = p ? checked_mul<I>(*p, more) : std::nullopt), ...);
  return p;
}

}  // namespace detail
}  // namespace muon
