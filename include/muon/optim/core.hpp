// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/core.hpp
/// \brief The backend-neutral optimizer core: parameter groups and their
/// options, the parameter registry, lr schedule and momentum warmup, each
/// step's scalars (by parameter and block), the step's decision and the
/// checkpoint of the whole state. Free of Eigen and CUDA. Every facade
/// (muon::Optimizer, muon::cuda::Optimizer, the distributed optimizer,
/// muon::torch) holds one Core (optim::Front gives them one method set);
/// what a backend adds is its buffers, its indexing and its executor (CPU
/// threads and lanes: backend/eigen/engine.hpp; CUDA kernels and launches),
/// calling the per-element maths of rules.hpp and step_rules.hpp.
///
/// A step is a transaction (see Optimizer::step):
///   1. begin_step(): the lr factor, every group's lr and momentum, every
///      block's adjusted lr. Nothing changes; a bad value throws.
///   2. the backend checks, reading only, that every update it is about to
///      make is finite (gradient, new momentum or moments, parameter): one
///      word of step::Flag bits per parameter; decide() refuses the step
///      (raise) or skip()s the parameters it must leave alone;
///   3. the backend writes every parameter not skipped: nothing can fail
///      any more;
///   4. finish_step(): counters advance, the report is filled.
/// begin_step, decide and finish_step allocate nothing.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <istream>
#include <limits>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../lr_schedule.hpp"
#include "checkpoint_format.hpp"
#include "options.hpp"
#include "registry.hpp"
#include "rules.hpp"
#include "state_io.hpp"
#include "step_report.hpp"

namespace muon {

/// Options of Optimizer::load.
struct LoadOptions {
  /// Maps a name stored in the checkpoint to this optimizer's name (frameworks
  /// rename modules); unset: names must match as they are. Return the name
  /// unchanged to keep it.
  std::function<std::string(const std::string&)> rename;

  /// A rename from a table; names not in it are kept.
  static LoadOptions with_renames(std::map<std::string, std::string> table) {
    LoadOptions o;
    o.rename = [table = std::move(table)](const std::string& n) {
      const auto it = table.find(n);
      return it == table.end() ? n : it->second;
    };
    return o;
  }
};

namespace optim {

/// The buffers every backend keeps for a parameter, by route and (Muon)
/// variant, in checkpoint order.
inline const std::vector<const char*>& buffer_names(Route r,
                                                    MuonVariant variant = MuonVariant::muon) {
  static const std::vector<const char*> muon = {"momentum_buffer"};
  static const std::vector<const char*> normuon = {"momentum_buffer", "second_momentum_buffer"};
  static const std::vector<const char*> adamuon = {"momentum_buffer", "exp_avg_sq"};
  static const std::vector<const char*> adamw = {"exp_avg", "exp_avg_sq"};
  if (r != Route::muon) return adamw;
  return variant == MuonVariant::normuon   ? normuon
         : variant == MuonVariant::adamuon ? adamuon
                                           : muon;
}

/// Elements of buffer `b` of parameter p: numel, except NorMuon's second
/// moment, which holds max(rows, cols) numbers per block (one per row of a
/// block with rows >= cols, one per column otherwise), blocks in order.
inline std::int64_t buffer_elements(const ParamRecord& p, MuonVariant variant, std::size_t b) {
  if (!(p.muon() && variant == MuonVariant::normuon && b == 1)) return p.numel();
  std::int64_t n = 0;
  for (std::int64_t rows : p.blocks) n += std::max(rows, p.cols);
  return n;
}

/// True for the buffers that hold second moments (>= 0 in a valid file).
inline bool is_second_moment(std::string_view buffer_name) {
  return buffer_name == "exp_avg_sq" || buffer_name == "second_momentum_buffer";
}

/// A step's decisions (see Core::begin_step).
struct StepPlan {
  std::int64_t k = 0;      ///< the step count before this step (schedules read it)
  double lr_factor = 1.0;  ///< the lr schedule's factor at k
  enum class Fate : std::uint8_t { update, skip };

  struct Group {
    double muon_lr = 0;   ///< lr * factor (unadjusted)
    double mu = 0;        ///< momentum (warmup or the group's)
    double adamw_lr = 0;  ///< adamw lr * factor
  };
  std::vector<Group> groups;
  std::vector<Fate> fate;                     ///< per parameter
  std::vector<std::vector<double>> block_lr;  ///< per parameter, per block: adjusted lr
};

class Core {
 public:
  /// Group 0 gets `muon` for Muon-routed and `adamw` for AdamW-routed parameters.
  explicit Core(MuonGroupOptions muon = {}, AdamWOptions adamw = {}) {
    add_group(std::move(muon), std::move(adamw));
  }

  // ---- groups and options ----------------------------------------------------

  std::size_t add_group(MuonGroupOptions muon, AdamWOptions adamw = {}) {
    GroupOptions g{std::move(muon), std::move(adamw)};
    g.validate();
    groups_.push_back(std::move(g));
    plan_.groups.resize(groups_.size());
    return groups_.size() - 1;
  }
  std::size_t group_count() const { return groups_.size(); }
  const GroupOptions& group(std::size_t g) const { return groups_[checked_group(g)]; }
  void set_muon_options(const MuonGroupOptions& o, std::size_t g) {
    checked_group(g);
    o.validate();
    groups_[g].muon = o;
  }
  /// Replaces group g's options (validated; nothing changes on error).
  void set_group_options(GroupOptions o, std::size_t g) {
    checked_group(g);
    o.validate();
    groups_[g] = std::move(o);
  }
  void set_adamw_options(const AdamWOptions& o, std::size_t g) {
    checked_group(g);
    o.validate();
    groups_[g].adamw = o;
  }
  void set_option(std::string_view key, double value, std::size_t g) {
    optim::set_option(groups_[checked_group(g)], key, value);
  }
  void set_option(std::string_view key, std::string_view value, std::size_t g) {
    optim::set_option(groups_[checked_group(g)], key, value);
  }

  void set_non_finite_policy(NonFinitePolicy p) {
    if (!(p == NonFinitePolicy::raise || p == NonFinitePolicy::skip))
      detail::fail("policy", "is not a NonFinitePolicy value");
    policy_ = p;
  }
  NonFinitePolicy non_finite_policy() const { return policy_; }

  void set_routing_rules(RoutingRules rules) {
    if (!registry_.empty())
      detail::fail("routing rules", "must be set before the first parameter is added");
    rules_ = std::move(rules);
  }
  const RoutingRules& routing_rules() const { return rules_; }

  void set_lr_schedule(const LrSchedule& s) {
    s.validate();
    schedule_ = s;
  }
  void clear_lr_schedule() { schedule_.reset(); }
  const std::optional<LrSchedule>& lr_schedule() const { return schedule_; }
  void set_momentum_warmup(const MomentumWarmup& w) {
    w.validate();
    warmup_ = w;
  }
  void clear_momentum_warmup() { warmup_.reset(); }
  const std::optional<MomentumWarmup>& momentum_warmup() const { return warmup_; }

  /// The lr schedule's factor the next step will use.
  double lr_factor() const { return schedule_ ? schedule_->factor(step_count_) : 1.0; }
  /// The Muon lr (before the shape adjustment) and the AdamW lr the next
  /// step of group `g` will use: the group's lr times the schedule's factor.
  double current_lr(std::size_t g = 0) const { return group(g).muon.lr * lr_factor(); }
  double current_adamw_lr(std::size_t g = 0) const { return group(g).adamw.lr * lr_factor(); }
  /// The momentum the next step of group `g` will use (the warmup's, if set).
  double current_momentum(std::size_t g = 0) const {
    return warmup_ ? warmup_->at(step_count_) : group(g).muon.momentum;
  }

  // ---- parameters -----------------------------------------------------------------

  /// Registers a parameter (see Registry::add); returns its index. A
  /// backend that can see the parameter's memory passes its footprint: a
  /// parameter whose memory overlaps a registered one's is refused, naming
  /// both.
  std::size_t add_param(const std::string& name, const TensorShape& shape,
                        const ParamOptions& options,
                        const MemoryFootprint& memory = MemoryFootprint()) {
    const std::size_t i = registry_.add(name, shape, options, groups_.size(), rules_, memory);
    try {  // out of memory: the registry as it was
      plan_.fate.reserve(registry_.size());
      plan_.block_lr.reserve(registry_.size());
      report_.skipped.reserve(registry_.size());
      std::vector<double> block_lr(registry_[i].blocks.size(), 0.0);
      plan_.block_lr.push_back(std::move(block_lr));  // cannot throw: reserved
      plan_.fate.push_back(StepPlan::Fate::update);
    } catch (...) {
      registry_.remove_last();
      throw;
    }
    return i;
  }
  /// Undoes the last add_param (for a backend whose allocation failed).
  void remove_last_param() {
    if (registry_.empty()) return;
    registry_.remove_last();
    plan_.fate.pop_back();
    plan_.block_lr.pop_back();
  }
  /// Records that parameter i now lives in `memory` (see
  /// Registry::set_memory: refused when it overlaps another parameter's).
  void set_param_memory(std::size_t i, const MemoryFootprint& memory) {
    registry_.set_memory(i, memory);
  }
  const Registry& registry() const { return registry_; }
  std::size_t size() const { return registry_.size(); }
  const ParamRecord& param(std::size_t i) const { return registry_[i]; }
  std::size_t index(std::string_view name) const { return registry_.at(name); }
  std::int64_t step_count() const { return step_count_; }

  /// Route, reason, shape and lr scale of every parameter.
  RoutingReport routing() const {
    RoutingReport r;
    for (const ParamRecord& p : registry_.all()) {
      RoutingEntry e;
      e.name = p.name;
      e.route = p.route;
      e.reason = p.reason;
      e.shape = p.shape.str();
      e.group = p.group;
      if (p.muon()) {
        e.rows = static_cast<std::ptrdiff_t>(p.block_out(0));
        e.cols = static_cast<std::ptrdiff_t>(p.block_in());
        const MuonGroupOptions& g = groups_[p.group].muon;
        const double base = g.lr > 0 ? g.lr : 1.0;
        e.lr_scale = g.adjusted(base, e.rows, e.cols) / base;
      } else {
        e.rows = static_cast<std::ptrdiff_t>(p.shape.column_major ? p.cols : p.rows);
        e.cols = static_cast<std::ptrdiff_t>(p.shape.column_major ? p.rows : p.cols);
      }
      r.entries.push_back(std::move(e));
    }
    return r;
  }

  // ---- the step -----------------------------------------------------------------

  /// Decides the scalars of the next step: lr factor, each group's lr and
  /// momentum, each Muon block's adjusted lr; marks every parameter for
  /// update. Throws muon::Error (nothing changed) for a schedule factor or
  /// user lr rule that is not finite. Allocates nothing.
  const StepPlan& begin_step() {
    plan_.k = step_count_;
    const double factor = schedule_ ? schedule_->factor(step_count_) : 1.0;
    if (!(std::isfinite(factor) && factor >= 0.0))
      detail::fail("lr_schedule", "factor must be finite and >= 0");
    plan_.lr_factor = factor;
    const double warm_mu = warmup_ ? warmup_->at(step_count_) : 0.0;
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      plan_.groups[g].muon_lr = groups_[g].muon.lr * factor;
      plan_.groups[g].mu = warmup_ ? warm_mu : groups_[g].muon.momentum;
      plan_.groups[g].adamw_lr = groups_[g].adamw.lr * factor;
    }
    for (std::size_t i = 0; i < registry_.size(); ++i) {
      plan_.fate[i] = StepPlan::Fate::update;
      const ParamRecord& p = registry_[i];
      if (!p.muon()) continue;
      const MuonGroupOptions& g = groups_[p.group].muon;
      for (std::size_t b = 0; b < p.blocks.size(); ++b)
        plan_.block_lr[i][b] =
            g.adjusted(plan_.groups[p.group].muon_lr, p.block_out(b), p.block_in());
    }
    report_.skipped.clear();
    return plan_;
  }
  const StepPlan& plan() const { return plan_; }

  /// Leaves parameter i alone this step (recorded in the report).
  void skip(std::size_t i, SkipReason why) {
    plan_.fate[i] = StepPlan::Fate::skip;
    report_.skipped.push_back({registry_[i].name, why});
  }
  bool updates(std::size_t i) const { return plan_.fate[i] == StepPlan::Fate::update; }

  /// The step's decision from its checks, the same on every backend:
  /// flags[i] holds the step::Flag bits found for parameter i (ORed over its
  /// elements, and over every engine and rank that holds a part of it).
  /// Under NonFinitePolicy::raise the first parameter (registration order)
  /// whose flags block its update refuses the whole step: step::refuse
  /// throws, naming it and its storage types (`types_of(i)`, a
  /// step::StorageTypes), and the backend writes nothing. Otherwise every
  /// such parameter is skipped, reason_of(its flags), as is one without a
  /// gradient. Call between begin_step and the writes. Allocates nothing.
  /// `where_of(i, flags)`, called only to refuse, gives step::refuse's
  /// `where` (a distributed step: which rank; every rank calls it alike).
  template <class TypesOf, class WhereOf>
  void decide(const std::vector<int>& flags, TypesOf&& types_of, WhereOf&& where_of) {
    for (std::size_t i = 0; i < registry_.size(); ++i) {
      const int f = flags[i];
      if (f == 0) continue;
      if (step::blocks_update(f) && policy_ == NonFinitePolicy::raise) {
        const step::StorageTypes t = types_of(i);
        step::refuse(registry_[i].name, f, registry_[i].muon(), t.buffer, t.param, where_of(i, f));
      }
      skip(i, step::reason_of(f));
    }
  }
  template <class TypesOf>
  void decide(const std::vector<int>& flags, TypesOf&& types_of) {
    decide(flags, types_of, [](std::size_t, int) { return std::string(); });
  }
  void decide(const std::vector<int>& flags, step::StorageTypes types) {
    decide(flags, [types](std::size_t) { return types; });
  }

  /// Advances the counters of the parameters updated and of the optimizer;
  /// returns the report. Allocates nothing.
  const StepReport& finish_step() {
    std::size_t updated = 0;
    for (std::size_t i = 0; i < registry_.size(); ++i)
      if (updates(i)) {
        ++registry_[i].steps;
        ++updated;
      }
    ++step_count_;
    report_.step = step_count_;
    report_.updated = updated;
    report_.status = step::status_of(updated, report_.skipped.size());
    return report_;
  }
  const StepReport& last_report() const { return report_; }

  /// For a backend that learns a step's outcome later (the device): clears
  /// the report, then skip() each parameter left alone, then end_report().
  void begin_report() {
    report_.skipped.clear();
    for (auto& f : plan_.fate) f = StepPlan::Fate::update;
  }
  /// Fills the report from the skips; `refused`: nothing was written.
  const StepReport& end_report(bool refused) {
    std::size_t updated = 0;
    if (!refused)
      for (std::size_t i = 0; i < registry_.size(); ++i) updated += updates(i) ? 1 : 0;
    report_.step = step_count_;
    report_.updated = updated;
    report_.status = step::status_of(updated, report_.skipped.size());
    return report_;
  }
  /// Replaces the counters by the ones a backend kept (the device's).
  void set_counters(std::int64_t step_count, const std::vector<std::int64_t>& steps) {
    step_count_ = step_count;
    for (std::size_t i = 0; i < registry_.size() && i < steps.size(); ++i)
      registry_[i].steps = steps[i];
  }

  /// The momentum step's scalars for group g in compute type C.
  template <class C>
  rules::MomentumCoefficients<C> momentum_coefficients(std::size_t g) const {
    const MuonGroupOptions& o = groups_[g].muon;
    return rules::momentum_coefficients<C>(plan_.groups[g].mu, o.momentum_kind == MomentumKind::ema,
                                           o.nesterov, o.l2_coefficient(), o.sign_ns_input());
  }

  /// The variant of Muon parameter i's group.
  MuonVariant variant(std::size_t i) const { return groups_[registry_[i].group].muon.variant; }
  /// The buffer names of parameter i (its route and its group's variant).
  const std::vector<const char*>& buffer_names(std::size_t i) const {
    return optim::buffer_names(registry_[i].route, variant(i));
  }

  /// The second-moment scalars of Muon parameter i's variant at its next
  /// step, in compute type C (the plain AdaMuon's bias correction from the
  /// parameter's own step count, like AdamW's).
  template <class C>
  rules::SecondMomentCoefficients<C> second_moment_coefficients(std::size_t i) const {
    const ParamRecord& p = registry_[i];
    const MuonGroupOptions& g = groups_[p.group].muon;
    if (g.variant == MuonVariant::adamuon)
      return rules::second_moment_coefficients<C>(
          g.adamuon_beta2, g.adamuon_eps,
          g.second_moment_bias_corrected() ? static_cast<double>(p.steps + 1) : 0.0);
    return rules::second_moment_coefficients<C>(g.normuon_beta2, g.normuon_eps, 0.0);
  }

  /// The update scalars of block b of Muon parameter i, in compute type C.
  template <class C>
  rules::MuonUpdateCoefficients<C> muon_update_coefficients(std::size_t i, std::size_t b) const {
    const ParamRecord& p = registry_[i];
    const MuonGroupOptions& g = groups_[p.group].muon;
    return rules::muon_update_coefficients<C>(g.decay_multiplier(plan_.groups[p.group].muon_lr),
                                              plan_.block_lr[i][b], g.cautious_weight_decay);
  }

  /// The largest |p| for which every update of Muon parameter i this step,
  /// p (1 - lr wd) - lr_adj U, is sure to stay within +-storage_max: the
  /// entries of U are bounded (update_entry_bound), so |p_new| <= |p|
  /// |decay| + |lr_adj| bound. Negative when no parameter value is safe.
  double update_limit(std::size_t i, double storage_max) const {
    const ParamRecord& p = registry_[i];
    double limit = std::numeric_limits<double>::infinity();
    for (std::size_t b = 0; b < p.blocks.size(); ++b) {
      const auto k = muon_update_coefficients<double>(i, b);
      const double bound = update_entry_bound(i, b);
      const double room = storage_max - std::abs(k.step) * bound;
      limit =
          std::min(limit, k.decay == 0.0 ? (room >= 0 ? limit : -1.0) : room / std::abs(k.decay));
    }
    return limit;
  }

  /// A bound on the entries of the update U of block b of Muon parameter i.
  /// Muon: U = O, whose singular values (so entries) stay below the
  /// Newton–Schulz output bound B. NorMuon: ||U||_F = ||O||_F <=
  /// sqrt(min(m, n)) B. AdaMuon: ||U||_F = sqrt(min(m, n)). An entry is at
  /// most the Frobenius norm.
  double update_entry_bound(std::size_t i, std::size_t b) const {
    const ParamRecord& p = registry_[i];
    const MuonGroupOptions& g = groups_[p.group].muon;
    const double short_side =
        std::sqrt(static_cast<double>(std::min<std::int64_t>(p.block_out(b), p.block_in())));
    switch (g.variant) {
      case MuonVariant::normuon:
        return short_side * g.ns.output_bound();
      case MuonVariant::adamuon:
        return short_side;
      case MuonVariant::muon:
        break;
    }
    return g.ns.output_bound();
  }

  /// The AdamW scalars of parameter i at its next step, in compute type C:
  /// bias corrections in double; an eps that underflows C becomes C's
  /// smallest normal number.
  template <class C>
  rules::AdamWCoefficients<C> adamw_coefficients(std::size_t i) const {
    const ParamRecord& p = registry_[i];
    return optim::adamw_coefficients<C>(groups_[p.group].adamw, plan_.groups[p.group].adamw_lr,
                                        p.steps + 1);
  }
  // ---- checkpoints -------------------------------------------------------------

  /// Writes the whole state (optim/state_io.hpp). `emit(i, writer)` writes
  /// parameter i's buffers (buffer_names(route) in order) with
  /// state_io::write_buffer; it is called twice per parameter (sizing, then
  /// writing) and must write the same bytes both times.
  template <class EmitBuffers>
  void save(std::ostream& os, checkpoint::Dtype buffer_dtype, checkpoint::Dtype param_dtype,
            EmitBuffers&& emit) const {
    checkpoint::write(os, [&](checkpoint::Writer& w) {
      w.str(kStateKind);
      w.u8(static_cast<std::uint8_t>(buffer_dtype));
      w.u8(static_cast<std::uint8_t>(param_dtype));
      state_io::write_head(w, step_count_, groups_.size());
      for (const GroupOptions& g : groups_) state_io::write_group(w, g);
      state_io::write_param_count(w, registry_.size());
      for (std::size_t i = 0; i < registry_.size(); ++i) {
        state_io::write_param(w, registry_[i], static_cast<std::uint32_t>(buffer_names(i).size()));
        emit(i, w);
      }
    });
  }

  /// A checkpoint matched against this optimizer: for every registered
  /// parameter, the stored record that holds its state.
  struct Matched {
    StoredState state;
    std::vector<const StoredParam*> params;  ///< by registry index
    std::vector<GroupOptions> groups;        ///< what the groups become
  };

  /// Reads a checkpoint and matches it against this optimizer: every name
  /// (after options.rename) present on both sides, routes, groups, shapes,
  /// splits, buffer names, dtypes (`buffer_dtype` expected) and sizes equal,
  /// buffer values finite (second moments >= 0). Collects every problem and
  /// throws one muon::Error listing them (names missing on each side, both
  /// dtypes, the file's origin). Changes nothing.
  Matched match(std::istream& is, checkpoint::Dtype buffer_dtype, const LoadOptions& options,
                const std::string& origin = "stream") const {
    Matched m;
    m.state = read_state(is, origin);
    const StoredState& s = m.state;
    const std::string head = "checkpoint " + origin;
    if (s.buffer_dtype != buffer_dtype)
      detail::fail(head, std::string("holds ") + checkpoint::dtype_name(s.buffer_dtype) +
                             " buffers, this optimizer keeps " +
                             checkpoint::dtype_name(buffer_dtype) + " buffers");
    if (s.groups.size() != groups_.size())
      detail::fail(head, "holds " + std::to_string(s.groups.size()) + " groups, this optimizer " +
                             std::to_string(groups_.size()));
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      GroupOptions next = s.groups[g];
      if (s.group_has_user_rule[g]) {
        if (!groups_[g].muon.adjust_lr_fn)
          detail::fail(head, "group " + std::to_string(g) +
                                 " was saved with a user adjust_lr_fn; set one on this "
                                 "optimizer's group before loading");
        next.muon.adjust_lr_fn = groups_[g].muon.adjust_lr_fn;
      }
      m.groups.push_back(std::move(next));
    }

    m.params.assign(registry_.size(), nullptr);
    std::vector<std::string> extra, problems;
    for (const StoredParam& p : s.params) {
      const std::string name = options.rename ? options.rename(p.name) : p.name;
      const auto i = registry_.find(name);
      if (!i) {
        extra.push_back(p.name == name ? p.name : p.name + " (as " + name + ")");
        continue;
      }
      if (m.params[*i]) {
        problems.push_back("parameter '" + name + "' appears twice");
        continue;
      }
      m.params[*i] = &p;
      const std::string problem =
          mismatch(registry_[*i], m.groups[registry_[*i].group].muon.variant, p, buffer_dtype);
      if (!problem.empty()) problems.push_back("parameter '" + name + "': " + problem);
    }
    std::vector<std::string> missing;
    for (std::size_t i = 0; i < registry_.size(); ++i)
      if (!m.params[i]) missing.push_back(registry_[i].name);
    if (!missing.empty() || !extra.empty()) {
      std::string message = "names differ";
      if (!missing.empty()) message += "; not in the file: " + join(missing);
      if (!extra.empty()) message += "; in the file only: " + join(extra);
      message += " (LoadOptions::rename maps file names to this optimizer's)";
      problems.insert(problems.begin(), message);
    }
    if (!problems.empty()) {
      std::string all = problems.front();
      for (std::size_t k = 1; k < problems.size(); ++k) all += "; " + problems[k];
      detail::fail(head, all);
    }
    return m;
  }

  /// Takes over a matched checkpoint's groups and counters (after the
  /// backend copied the buffers). Cannot fail.
  void commit(Matched& m) noexcept {
    groups_.swap(m.groups);
    step_count_ = m.state.step_count;
    for (std::size_t i = 0; i < registry_.size(); ++i) registry_[i].steps = m.params[i]->steps;
  }

 private:
  std::size_t checked_group(std::size_t g) const {
    if (g >= groups_.size())
      detail::fail("group", "index " + std::to_string(g) + " out of range (" +
                                std::to_string(groups_.size()) + " groups)");
    return g;
  }

  static std::string join(const std::vector<std::string>& names) {
    std::string s;
    for (const auto& n : names) s += (s.empty() ? "'" : ", '") + n + "'";
    return s;
  }

  // "" when the stored record fits `p`, else what differs.
  // The buffers expected follow the variant of the group as stored (the
  // file's options replace the optimizer's).
  static std::string mismatch(const ParamRecord& p, MuonVariant variant, const StoredParam& s,
                              checkpoint::Dtype buffer_dtype) {
    if (s.route != p.route)
      return std::string("route differs (file: ") +
             (is_valid(s.route) ? route_name(s.route) : "invalid") +
             ", optimizer: " + route_name(p.route) + ")";
    if (s.group != p.group)
      return "group differs (file: " + std::to_string(s.group) +
             ", optimizer: " + std::to_string(p.group) + ")";
    if (s.shape != p.shape)
      return "shape differs (file: " + s.shape.str() + ", optimizer: " + p.shape.str() + ")";
    if (s.blocks != p.blocks) return "split differs";
    const auto& names = optim::buffer_names(p.route, variant);
    if (s.buffers.size() != names.size())
      return "holds " + std::to_string(s.buffers.size()) + " buffers, its group (" +
             (p.muon() ? muon_variant_name(variant) : "AdamW") + ") keeps " +
             std::to_string(names.size());
    for (std::size_t b = 0; b < names.size(); ++b) {
      const StoredBuffer& buf = s.buffers[b];
      if (buf.name != names[b]) return std::string("expected buffer '") + names[b] + "'";
      if (buf.dtype != buffer_dtype)
        return "buffer '" + buf.name + "' is " + checkpoint::dtype_name(buf.dtype) + ", expected " +
               checkpoint::dtype_name(buffer_dtype);
      const auto expected = static_cast<std::uint64_t>(buffer_elements(p, variant, b));
      if (buf.count != expected)
        return "buffer '" + buf.name + "' holds " + std::to_string(buf.count) + " elements, " +
               std::to_string(expected) + " expected";
      // Values a step could not survive (NaN/Inf, a negative second moment)
      // mean a corrupt or foreign file; refuse them here rather than mid-step.
      const bool second_moment = is_second_moment(buf.name);
      for (std::uint64_t e = 0; e < buf.count; ++e) {
        const double v = buf.at(e);
        if (!(std::isfinite(v) && (!second_moment || v >= 0.0)))
          return "buffer '" + buf.name + "' holds an invalid value at element " + std::to_string(e);
      }
    }
    return "";
  }

  std::vector<GroupOptions> groups_;
  Registry registry_;
  RoutingRules rules_;
  NonFinitePolicy policy_ = NonFinitePolicy::raise;
  std::optional<LrSchedule> schedule_;
  std::optional<MomentumWarmup> warmup_;
  std::int64_t step_count_ = 0;
  StepPlan plan_;
  StepReport report_;
};

}  // namespace optim
}  // namespace muon
