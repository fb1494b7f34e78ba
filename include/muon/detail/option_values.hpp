// SPDX-License-Identifier: MIT
#pragma once
/// \file detail/option_values.hpp
/// \brief What an option's value may be, each written once: a number's
/// range (the test and the words that describe it come from the same data),
/// or one of an enum's names (its name list gives the parser, the printer,
/// the validity test and the "expected ..." text). Plain C++17: no Eigen,
/// no CUDA.

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "../error.hpp"

namespace muon {
namespace detail {

/// The shortest decimal text that reads back as exactly `v` ("0.001", not
/// "0.0010000000000000000"; "0.10000000000000001" only where 0.1 is not
/// `v`): messages, documentation and the distributed fingerprint's lines.
inline std::string number_text(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buffer[40];
  int digits = 1;
  for (; digits < 17; ++digits) {
    std::snprintf(buffer, sizeof buffer, "%.*g", digits, v);
    if (std::strtod(buffer, nullptr) == v) break;
  }
  // Whole numbers up to 1e16 in full (100, not 1e+02).
  const int exponent = v == 0 ? 0 : static_cast<int>(std::floor(std::log10(std::fabs(v))));
  if (exponent >= digits && exponent < 16) digits = exponent + 1;
  std::snprintf(buffer, sizeof buffer, "%.*g", digits, v);
  // The exponent without '+' and leading zeros: 1e-7, not 1e-07.
  std::string text(buffer);
  const std::size_t e = text.find('e');
  if (e != std::string::npos) {
    std::string mantissa = text.substr(0, e), sign = text[e + 1] == '-' ? "-" : "";
    std::size_t first = e + 2;
    while (first + 1 < text.size() && text[first] == '0') ++first;
    text = mantissa + "e" + sign + text.substr(first);
  }
  return text;
}

/// The valid values of a number: finite, at least (or above) `lo`, below
/// `hi` (+inf: no upper bound), and whole when `integer`. Ranges are
/// constants (constexpr), defined once per option and read by every check
/// of it.
struct Range {
  double lo = 0;
  bool lo_open = false;                                 ///< lo itself excluded
  double hi = std::numeric_limits<double>::infinity();  ///< excluded
  bool integer = false;

  /// [lo, +inf)
  static constexpr Range at_least(double lo) { return {lo, false, infinity(), false}; }
  /// (lo, +inf)
  static constexpr Range above(double lo) { return {lo, true, infinity(), false}; }
  /// [lo, hi)
  static constexpr Range from_until(double lo, double hi) { return {lo, false, hi, false}; }
  /// the whole numbers in [lo, hi)
  static constexpr Range integers(double lo, double hi) { return {lo, false, hi, true}; }

  bool contains(double v) const {
    return std::isfinite(v) && (lo_open ? v > lo : v >= lo) && v < hi &&
           (!integer || v == std::floor(v));
  }
  /// "finite and >= 0", "finite and > 0", "in [0, 1)" (an integer range
  /// says so in its type, not here: "in [0, 100)").
  std::string text() const {
    if (hi < infinity())
      return std::string("in ") + (lo_open ? "(" : "[") + number_text(lo) + ", " + number_text(hi) +
             ")";
    return std::string("finite and ") + (lo_open ? "> " : ">= ") + number_text(lo);
  }
  /// Throws muon::Error "<field>: must be <text>, got <v>" unless v is in
  /// range ("must be a whole number <text>" for a fraction in an integer
  /// range).
  void check(std::string_view field, double v) const {
    if (contains(v)) return;
    const bool fraction = integer && std::isfinite(v) && v != std::floor(v);
    fail(field, std::string("must be ") + (fraction ? "a whole number " : "") + text() + ", got " +
                    number_text(v));
  }

 private:
  static constexpr double infinity() { return std::numeric_limits<double>::infinity(); }
};

// ---- enum names ---------------------------------------------------------------------

/// One name of an enum value.
template <class E>
struct Named {
  E value;
  const char* name;
};

/// An enum's names, in the order messages and documentation list them. The
/// first entry of a value is its name; later entries of the same value are
/// aliases the parser also accepts. Each enum E gives its list through
/// `name_list(E)`, found by argument-dependent lookup:
///
///     inline constexpr detail::Named<Color> color_names[] = {{Color::red, "red"}, ...};
///     constexpr detail::Names<Color> name_list(Color) { return color_names; }
template <class E>
struct Names {
  template <std::size_t N>
  constexpr Names(const Named<E> (&list)[N]) : first(list), count(N) {}  // NOLINT: implicit
  constexpr const Named<E>* begin() const { return first; }
  constexpr const Named<E>* end() const { return first + count; }
  const Named<E>* first;
  std::size_t count;
};

/// Whether `value` is one of E's named values (false for a value cast from
/// an integer out of range).
template <class E>
constexpr bool is_named(E value) {
  for (const Named<E>& n : name_list(E{}))
    if (n.value == value) return true;
  return false;
}

/// The name of `value` ("invalid" for a value that has none).
template <class E>
const char* name_of(E value) {
  for (const Named<E>& n : name_list(E{}))
    if (n.value == value) return n.name;
  return "invalid";
}

/// The value named `name` (a name or an alias); nullopt for anything else.
template <class E>
std::optional<E> from_name(std::string_view name) {
  for (const Named<E>& n : name_list(E{}))
    if (name == n.name) return n.value;
  return std::nullopt;
}

/// "a, b or c": `count` names, name(i) the i-th, as a message lists them.
template <class NameAt>
std::string or_list(std::size_t count, NameAt name) {
  std::string text;
  for (std::size_t i = 0; i < count; ++i) {
    text += i == 0 ? "" : (i + 1 == count ? " or " : ", ");
    text += name(i);
  }
  return text;
}

/// E's names and aliases as "a, b or c".
template <class E>
std::string names_text() {
  const Names<E> names = name_list(E{});
  return or_list(names.count, [&names](std::size_t i) { return names.first[i].name; });
}

}  // namespace detail

/// The E value named `name` (its names as E's `*_from_name` accepts them);
/// otherwise throws muon::Error naming `field` and listing the names:
/// "<field>: unknown name 'x' (expected a, b or c)". For configuration
/// files and command lines; the `*_from_name` functions return nullopt
/// instead.
template <class E>
E parse_name(std::string_view name, std::string_view field) {
  if (const std::optional<E> value = detail::from_name<E>(name)) return *value;
  detail::fail(
      field, "unknown name '" + std::string(name) + "' (expected " + detail::names_text<E>() + ")");
}

}  // namespace muon
