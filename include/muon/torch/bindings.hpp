// SPDX-License-Identifier: MIT
#pragma once
/// \file torch/bindings.hpp
/// \brief The libtorch tensors a muon::torch::Muon has registered, by the
/// places (group, index) they hold in its param_groups() and by every name
/// they go by: tied weights (one tensor under two names: GPT-2's
/// wte.weight is lm_head.weight) are one parameter with aliases, routed to
/// AdamW when either name's rule says so; the per-name options (splits,
/// heads) are looked up under any name, and a key that names no parameter
/// is refused naming the closest ones.

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../optim/option_table.hpp"
#include "../optim/registry.hpp"
#include "tensors.hpp"

namespace muon {
namespace torch {

/// Another place and name of a registered tensor in its group (tied weights).
struct Alias {
  std::size_t index = 0;
  std::string name;
};

/// A registered parameter: core parameter i is bindings[i].
struct Binding {
  std::size_t group = 0, index = 0;  ///< its first place in param_groups()
  const c10::TensorImpl* impl = nullptr;
  std::string name;            ///< the name the core knows (its first)
  std::vector<Alias> aliases;  ///< its other places in the group
  /// The other name whose rule routed a tied tensor, and the rule's reason
  /// (empty: its own name's rule decided).
  std::string decided_by, decided_reason;
  at::ScalarType dtype = at::kFloat;
  void* data = nullptr;  ///< the memory it was last bound to
  std::size_t job = 0;   ///< its job in its dtype's engine
};

/// A place of param_groups() not registered yet: a tensor to register
/// (Scan::added[fresh]) or a registered or added tensor again (tied_to).
struct Place {
  std::size_t group = 0, index = 0;
  std::string name;
  std::size_t fresh = 0;
  const c10::TensorImpl* tied_to = nullptr;
};

/// The registered parameters in registration order (the core's), found by
/// tensor or by any of their names.
class Bindings {
 public:
  std::vector<std::string> names;  ///< the named constructor's, by place in group 0

  /// What scan() found: new tensors (not registered yet) and every new place.
  struct Scan {
    std::vector<Binding> added;
    std::vector<Place> places;
  };

  /// The name of place i of group g: the named constructor's (`names`, by
  /// place in group 0), else "group<g>.param<i>".
  std::string name_at(std::size_t g, std::size_t i) const {
    if (g == 0 && i < names.size()) return names[i];
    return "group" + std::to_string(g) + ".param" + std::to_string(i);
  }

  /// The places of `groups` (libtorch's param groups) after the first
  /// `registered[g]` of each group g, named name_at(g, i): each tensor
  /// checked (tensors::check_param, a layout used in place); a tensor met
  /// again in its group is a Place tied to it (an alias of an added one),
  /// in another group refused naming both. Changes nothing.
  template <class Groups>
  Scan scan(const Groups& groups, const std::vector<std::size_t>& registered) const {
    Scan s;
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const auto& params = groups[g].params();
      for (std::size_t i = g < registered.size() ? registered[g] : 0; i < params.size(); ++i) {
        const at::Tensor& p = params[i];
        Place place{g, i, name_at(g, i), 0, nullptr};
        tensors::check_param(p, place.name);
        const c10::TensorImpl* impl = p.unsafeGetTensorImpl();
        const Binding* first = nullptr;
        for (const Binding& b : all_)
          if (b.impl == impl) first = &b;
        for (Binding& b : s.added)
          if (b.impl == impl) {
            first = &b;
            b.aliases.push_back(Alias{i, place.name});  // for its route and entries
          }
        if (first) {
          if (first->group != g)
            detail::fail("param_groups", "'" + place.name + "' (group " + std::to_string(g) +
                                             ") is the tensor '" + first->name + "' of group " +
                                             std::to_string(first->group) +
                                             " again: a tensor can be in one group only");
          place.tied_to = impl;
          s.places.push_back(std::move(place));
          continue;
        }
        tensors::usable_layout(p, place.name, "param");
        Binding b;
        b.group = g;
        b.index = i;
        b.impl = impl;
        b.name = place.name;
        b.dtype = p.scalar_type();
        b.data = p.data_ptr();
        place.fresh = s.added.size();
        s.added.push_back(std::move(b));
        s.places.push_back(std::move(place));
      }
    }
    return s;
  }
  /// Records a place tied to a registered tensor as its alias.
  void add_alias(const Place& place) {
    for (Binding& b : all_)
      if (b.impl == place.tied_to) {
        for (const Alias& a : b.aliases)
          if (a.index == place.index) return;
        b.aliases.push_back(Alias{place.index, place.name});
        return;
      }
  }
  /// Throws muon::Error when a place of binding b (its first, an alias's)
  /// in `groups` no longer holds its tensor (removed, or replaced).
  template <class Groups>
  static void check_places(const Groups& groups, const Binding& b) {
    const auto check = [&](std::size_t i, const std::string& name) {
      if (b.group >= groups.size() || i >= groups[b.group].params().size())
        detail::fail("param_groups", "parameter '" + name + "' was removed from group " +
                                         std::to_string(b.group) +
                                         " (an optimizer's parameters cannot be removed)");
      if (groups[b.group].params()[i].unsafeGetTensorImpl() != b.impl)
        detail::fail("param_groups", "parameter " + std::to_string(i) + " of group " +
                                         std::to_string(b.group) + " ('" + name +
                                         "') was replaced by another tensor");
    };
    check(b.index, b.name);
    for (const Alias& a : b.aliases) check(a.index, a.name);
  }

  std::vector<Binding>& all() { return all_; }
  const std::vector<Binding>& all() const { return all_; }
  std::size_t size() const { return all_.size(); }
  Binding& operator[](std::size_t i) { return all_[i]; }
  const Binding& operator[](std::size_t i) const { return all_[i]; }

  /// The parameter that is this tensor (muon::Error naming "param" if none).
  const Binding& of(const at::Tensor& param) const {
    for (const Binding& b : all_)
      if (b.impl == param.unsafeGetTensorImpl()) return b;
    detail::fail("param", "is not a parameter of this optimizer");
  }
  /// The parameter with this name (any name of a tied tensor), or null.
  const Binding* find(const std::string& name) const {
    for (const Binding& b : all_) {
      if (b.name == name) return &b;
      for (const Alias& a : b.aliases)
        if (a.name == name) return &b;
    }
    return nullptr;
  }
  /// The parameter with this name; muon::Error naming "name" and the closest names if none.
  const Binding& named(const std::string& name) const {
    if (const Binding* b = find(name)) return *b;
    detail::fail("name", "'" + name + "' is not a parameter of this optimizer" + closest(name));
  }
  /// Its core index.
  std::size_t index_of(const Binding& b) const { return std::size_t(&b - all_.data()); }

  /// " (closest: 'a', 'b', 'c')": the names nearest to `name` by edit
  /// distance, for a message about a name that matches none.
  std::string closest(const std::string& name) const {
    std::vector<std::pair<std::size_t, const std::string*>> near;
    for (const Binding& b : all_) {
      near.emplace_back(optim::keys::edit_distance(name, b.name), &b.name);
      for (const Alias& a : b.aliases)
        near.emplace_back(optim::keys::edit_distance(name, a.name), &a.name);
    }
    if (near.empty()) return " (this optimizer has no parameters)";
    const std::size_t shown = std::min<std::size_t>(3, near.size());
    std::partial_sort(near.begin(), near.begin() + std::ptrdiff_t(shown), near.end(),
                      [](const auto& x, const auto& y) {
                        return x.first != y.first ? x.first < y.first : *x.second < *y.second;
                      });
    std::string list;
    for (std::size_t i = 0; i < shown; ++i) list += (i ? ", '" : "'") + *near[i].second + "'";
    return " (closest: " + list + ")";
  }

  /// The core's routing table with each tied tensor's other names (and,
  /// when one of them decided its route, that name's rule).
  RoutingReport annotate(RoutingReport r) const {
    for (std::size_t i = 0; i < all_.size() && i < r.entries.size(); ++i) {
      const Binding& b = all_[i];
      if (b.aliases.empty()) continue;
      std::string others;
      for (const Alias& a : b.aliases) others += (others.empty() ? "'" : ", '") + a.name + "'";
      const std::string tied = "tied: one tensor with " + others + ", updated once";
      std::string& why = r.entries[i].reason;
      why = b.decided_by.empty() ? why + "; " + tied
                                 : tied + "; '" + b.decided_by + "': " + b.decided_reason;
    }
    return r;
  }

  /// Every key of `map` (splits or heads, named `field`) names a
  /// parameter: a typo would otherwise leave that weight orthogonalized
  /// whole, silently.
  template <class Map>
  void check_keys(const Map& map, const char* field) const {
    for (const auto& entry : map)
      if (!find(entry.first))
        detail::fail(field, "'" + entry.first + "' matches no parameter" + closest(entry.first));
  }

 private:
  std::vector<Binding> all_;
};

/// The entry of `map` (splits or heads, named `field`) for any of a
/// tensor's names; two entries for one tensor are refused.
template <class Map>
const typename Map::mapped_type* entry_for(const Map& map, const Binding& b, const char* field) {
  const typename Map::value_type* found = nullptr;
  const auto look = [&](const std::string& name) {
    const auto it = map.find(name);
    if (it == map.end()) return;
    if (found)
      detail::fail(field, "'" + found->first + "' and '" + name +
                              "' are one tensor (tied weights): give it one entry");
    found = &*it;
  };
  look(b.name);
  for (const Alias& a : b.aliases) look(a.name);
  return found ? &found->second : nullptr;
}

/// A tied tensor goes where either name's rule sends it: the rules send
/// only by name to AdamW (an embedding tied to an output head), so when
/// its names disagree, AdamW, for the name that says so (recorded in b).
inline void route_tied(Binding& b, const at::Tensor& p, const RoutingRules& rules,
                       ParamOptions& po) {
  if (b.aliases.empty()) return;
  std::array<std::ptrdiff_t, 4> shape{{0, 0, 0, 0}};
  for (int d = 0; d < int(p.dim()); ++d) shape[std::size_t(d)] = p.size(d);
  const int ndim = int(p.dim());
  const Route own = decide_route(b.name, ndim, shape, po.route, rules).route;
  for (const Alias& a : b.aliases) {
    const RouteDecision d = decide_route(a.name, ndim, shape, po.route, rules);
    if (d.route != own && d.route == Route::adamw) {
      po.route = Route::adamw;
      b.decided_by = a.name;
      b.decided_reason = d.reason;
      return;
    }
  }
}

}  // namespace torch
}  // namespace muon
