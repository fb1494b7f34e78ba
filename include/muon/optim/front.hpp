// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/front.hpp
/// \brief optim::Front<Derived>: the method set every optimizer facade
/// shares — groups and their options, set_option, the non-finite policy,
/// routing rules, lr schedule and momentum warmup, the current_* values, and
/// the registry queries — written once over the facade's optim::Core, so
/// muon::Optimizer (CPU), muon::cuda::Optimizer, muon::dist::Optimizer
/// and muon::torch::Muon answer to the same names with the same types.
///
/// A facade derives from Front<Facade> (CRTP) and gives it its core:
///
///     optim::Core& front_core();              const optim::Core& front_core() const;
///
/// and may hide these hooks (the defaults do nothing):
///
///     void front_check_group(const GroupOptions& next, std::size_t g) const;
///         refuse (muon::Error) options this backend cannot run, BEFORE
///         anything changes (the CUDA backend refuses NsMethod::gram); may
///         be non-const to make, aside, what the change will need (the
///         CUDA backend allocates a new variant's state here, so a failed
///         allocation changes nothing);
///     void front_group_changed(std::size_t g);
///         after a group's options changed (a change of variant gives the
///         parameters the new variant's state);
///     void front_check_mutable(const char* what) const;
///         refuse a change the facade no longer accepts (the CUDA backend
///         adds no group after its first step).
///
/// Every setter is all-or-nothing: the new options are built and checked
/// aside, then committed.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core.hpp"
#include "qk_clip.hpp"

namespace muon {
namespace optim {

template <class Derived>
class Front {
 public:
  // ---- groups and options ---------------------------------------------------

  /// Adds a parameter group; returns its index. Throws muon::Error for
  /// invalid options (nothing changes).
  std::size_t add_group(MuonGroupOptions muon, AdamWOptions adamw = {}) {
    self().front_check_mutable("add_group");
    GroupOptions next{std::move(muon), std::move(adamw)};
    next.validate();
    self().front_check_group(next, core().group_count());
    const std::size_t g = mutable_core().add_group(std::move(next.muon), std::move(next.adamw));
    self().front_group_changed(g);
    return g;
  }
  std::size_t group_count() const { return core().group_count(); }
  const MuonGroupOptions& muon_options(std::size_t group = 0) const {
    return core().group(group).muon;
  }
  const AdamWOptions& adamw_options(std::size_t group = 0) const {
    return core().group(group).adamw;
  }
  /// Replaces a group's Muon options (a change of variant gives the group's
  /// parameters the new variant's state, zeroed).
  void set_muon_options(const MuonGroupOptions& o, std::size_t group = 0) {
    GroupOptions next = core().group(group);
    next.muon = o;
    commit_group(std::move(next), group);
  }
  void set_adamw_options(const AdamWOptions& o, std::size_t group = 0) {
    GroupOptions next = core().group(group);
    next.adamw = o;
    commit_group(std::move(next), group);
  }

  /// Sets an option of a group by its key, as a Python config would (keys,
  /// types and ranges: optim::option_keys(), docs/optimizer.md). An unknown
  /// key (the message suggests the nearest), a value of the wrong type or
  /// out of range throws muon::Error; the group is then unchanged.
  void set_option(std::string_view key, double value, std::size_t group = 0) {
    GroupOptions next = core().group(group);
    optim::set_option(next, key, value);
    commit_group(std::move(next), group);
  }
  void set_option(std::string_view key, std::string_view value, std::size_t group = 0) {
    GroupOptions next = core().group(group);
    optim::set_option(next, key, value);
    commit_group(std::move(next), group);
  }
  void set_option(std::string_view key, const char* value, std::size_t group = 0) {
    set_option(key, std::string_view(value), group);
  }
  void set_option(std::string_view key, const std::string& value, std::size_t group = 0) {
    set_option(key, std::string_view(value), group);
  }

  void set_non_finite_policy(NonFinitePolicy p) { mutable_core().set_non_finite_policy(p); }
  NonFinitePolicy non_finite_policy() const { return core().non_finite_policy(); }

  /// Replaces the routing rules. Only before the first parameter (routes are
  /// decided at registration); throws muon::Error otherwise.
  void set_routing_rules(RoutingRules rules) { mutable_core().set_routing_rules(std::move(rules)); }
  const RoutingRules& routing_rules() const { return core().routing_rules(); }

  /// Multiplies every group's lr (Muon and AdamW) by schedule.factor(k) at
  /// the k-th step (0-based: the step count before the step).
  void set_lr_schedule(const LrSchedule& s) { mutable_core().set_lr_schedule(s); }
  void clear_lr_schedule() { mutable_core().clear_lr_schedule(); }
  /// Replaces every Muon group's momentum by warmup.at(k) at the k-th step.
  void set_momentum_warmup(const MomentumWarmup& w) { mutable_core().set_momentum_warmup(w); }
  void clear_momentum_warmup() { mutable_core().clear_momentum_warmup(); }

  /// The Muon lr (before the shape adjustment) the next step of `group`
  /// uses: the group's lr times the schedule's factor; current_adamw_lr and
  /// current_momentum likewise.
  double current_lr(std::size_t group = 0) const { return core().current_lr(group); }
  double current_adamw_lr(std::size_t group = 0) const { return core().current_adamw_lr(group); }
  double current_momentum(std::size_t group = 0) const { return core().current_momentum(group); }

  // ---- the registry ----------------------------------------------------------

  std::size_t param_count() const { return core().size(); }
  bool has_param(std::string_view name) const { return core().registry().find(name).has_value(); }
  /// Names in registration order.
  std::vector<std::string> param_names() const { return core().registry().names(); }
  /// The route `name` was given at registration (muon::Error naming the
  /// nearest registered name when there is none).
  Route route(std::string_view name) const { return core().param(core().index(name)).route; }
  /// Route, reason, shape, group and lr scale of every parameter.
  RoutingReport routing() const { return core().routing(); }
  /// Steps this parameter has taken (AdamW's and AdaMuon's bias-correction t).
  std::int64_t param_steps(std::string_view name) const {
    return core().param(core().index(name)).steps;
  }
  /// Steps the optimizer has taken (schedules read this, 0-based, before the step).
  std::int64_t step_count() const { return core().step_count(); }

  /// The report of the last step (or check): valid until the next one.
  const StepReport& last_report() const { return core().last_report(); }

  // ---- QK-Clip ------------------------------------------------------------------

  /// QK-Clip with the maxima in a vector: the facade's
  /// qk_clip(heads, max_logits, count, options) (a facade brings this
  /// overload in with `using optim::Front<Facade>::qk_clip;`).
  QkClipReport qk_clip(const QkClipHeads& heads, const std::vector<double>& max_logits,
                       const QkClipOptions& options = QkClipOptions()) {
    return self().qk_clip(heads, max_logits.data(), max_logits.size(), options);
  }

  /// The backend-neutral core (options, registry, counters).
  const Core& core() const { return self().front_core(); }

 protected:
  Front() = default;
  ~Front() = default;
  Front(const Front&) = default;
  Front(Front&&) = default;
  Front& operator=(const Front&) = default;
  Front& operator=(Front&&) = default;

  // The hooks' defaults (a facade hides the ones it needs).
  void front_check_group(const GroupOptions&, std::size_t) const {}
  void front_group_changed(std::size_t) {}
  void front_check_mutable(const char*) const {}

  Core& mutable_core() { return self().front_core(); }

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
  const Derived& self() const { return static_cast<const Derived&>(*this); }

  // Validated options for group g: checked by the backend, then committed
  // (nothing changes when either throws), then the backend follows them.
  void commit_group(GroupOptions next, std::size_t g) {
    (void)core().group(g);  // a bad index throws here, naming "group"
    next.validate();
    self().front_check_group(next, g);
    mutable_core().set_group_options(std::move(next), g);
    self().front_group_changed(g);
  }
};

}  // namespace optim
}  // namespace muon
