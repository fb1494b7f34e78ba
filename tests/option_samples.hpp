// SPDX-License-Identifier: MIT
#pragma once
// Values for every row of the option table (optim/option_table.hpp), found
// from the row's own data (its type, range and names), not from a list kept
// by hand: a row added to the table is walked by the tests (set_option,
// checkpoints, the distributed check, muon::torch) without editing them.

#include <cmath>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <muon/error.hpp>
#include <muon/optim/options.hpp>

namespace muon_test {

/// A user lr rule, for the rows whose value is a function.
inline double halved_lr(double lr, std::ptrdiff_t, std::ptrdiff_t) { return lr / 2; }

/// `base` with the row `row` set to another valid value (its text differs,
/// the group passes validate()). Number rows try values near the current
/// one and inside the range; name rows each name; flags the other one; a
/// function row gets halved_lr. Throws std::logic_error when none fits (a
/// row whose range this cannot sample: widen the candidates).
inline muon::GroupOptions other_value(const muon::GroupOptions& base,
                                      const muon::optim::OptionRow& row) {
  using muon::optim::OptionType;
  const std::string before = row.text(base);
  std::optional<muon::GroupOptions> found;
  const auto attempt = [&](auto&& set) {
    if (found) return;
    muon::GroupOptions g = base;
    try {
      set(g);
    } catch (const muon::Error&) {
      return;
    }
    if (row.text(g) != before) found = g;
  };
  switch (row.type) {
    case OptionType::name:
      for (const std::string& name : row.names)
        attempt([&](muon::GroupOptions& g) { muon::optim::set_option(g, row.key, name); });
      break;
    case OptionType::flag:
      attempt([&](muon::GroupOptions& g) {
        muon::optim::set_option(g, row.key, before == "1" ? 0.0 : 1.0);
      });
      break;
    case OptionType::number:
    case OptionType::integer: {
      const double now = before == "unset" ? 1.0 : std::stod(before);
      const muon::detail::Range& r = row.range;
      std::vector<double> candidates = {now * 2, now / 2, now + 1, now - 1, 2.0, 0.5};
      if (std::isfinite(r.hi)) candidates.push_back((r.lo + r.hi) / 2);
      for (const double v : candidates)
        attempt([&](muon::GroupOptions& g) { muon::optim::set_option(g, row.key, v); });
      break;
    }
    case OptionType::function:
      muon::optim::for_each_option([&](auto r) {
        using Row = decltype(r);
        if constexpr (std::is_same<typename Row::type, muon::LrAdjustFn>::value)
          if (row.key == std::string(Row::key))
            attempt([&](muon::GroupOptions& g) {
              Row::of(g) = halved_lr;
              g.validate();
            });
      });
      break;
  }
  if (!found) throw std::logic_error(std::string("no other valid value for option ") + row.key);
  return *found;
}

/// Values set_option must refuse for the row, with the same key: out of
/// the range (below, at an open bound, at the top, NaN, infinity), not
/// whole, not 0 or 1, an unknown name; and a value of the other type
/// (is_name: whether the value is a name).
struct BadValue {
  bool is_name;
  double number;
  std::string name;
};
inline std::vector<BadValue> bad_values(const muon::optim::OptionRow& row) {
  using muon::optim::OptionType;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<BadValue> bad;
  const auto number = [&](double v) { bad.push_back({false, v, ""}); };
  switch (row.type) {
    case OptionType::name:
      bad.push_back({true, 0, "no_such_name"});
      bad.push_back({true, 0, ""});
      number(1.0);
      break;
    case OptionType::flag:
      number(0.5);
      number(2.0);
      number(nan);
      bad.push_back({true, 0, "1"});
      break;
    case OptionType::number:
    case OptionType::integer: {
      const muon::detail::Range& r = row.range;
      number(r.lo_open ? r.lo : r.lo - 1);
      if (std::isfinite(r.hi)) number(r.hi);
      number(nan);
      number(inf);
      number(-inf);
      if (r.integer) number(r.lo + 0.5);
      bad.push_back({true, 0, "0.5"});
      break;
    }
    case OptionType::function:
      break;
  }
  return bad;
}

}  // namespace muon_test
