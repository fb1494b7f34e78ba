// SPDX-License-Identifier: MIT
#pragma once
/// \file torch/options.hpp
/// \brief muon::torch::MuonOptions: a libtorch parameter group's options.
/// Its accessors are the option table's rows (optim/option_table.hpp), one
/// setter and one getter per key, so every option of the library is one of
/// libtorch's options under the same name, with nothing to map by hand.
/// And muon::torch::HybridOptions: the optimizer's own (routing rules,
/// per-name splits and heads, threads, policy, where the table is printed).

#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <cstddef>
#include <cstdint>
#include <iostream>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../optim/options.hpp"
#include "../optim/registry.hpp"

namespace muon {
namespace torch {

/// The options of one libtorch parameter group, in libtorch's style
/// (chainable setters, as torch::optim::AdamWOptions): Muon's for the
/// group's Muon-routed parameters, the adamw_* options for its AdamW-routed
/// ones, and the route. Each option of the option table is a setter
/// `key(value)` returning *this and a getter `key()`:
///
///     MuonOptions(0.02).momentum(0.9).ns_steps(4).adamw_lr(3e-3)
///
/// (names, types and defaults: docs/optimizer.md's option table; the
/// schedule is `ns_coefficients(Schedule)`, a user lr rule
/// `adjust_lr_fn(fn)`; `adamw_betas({b1, b2})` sets adamw_beta1/2
/// together, as libtorch's AdamW). Defaults are torch.optim.Muon's and
/// torch.optim.AdamW's. Values are checked when the optimizer reads them
/// (construction and every step): muon::Error names the option.
class MuonOptions : public ::torch::optim::OptimizerCloneableOptions<MuonOptions> {
 public:
  using betas_t = std::tuple<double, double>;

  MuonOptions(double lr = 1e-3) { options_.muon.lr = lr; }  // NOLINT: implicit, as libtorch's

  // One setter and one getter per row of the option table. lr and adamw_lr
  // set by hand fix the ratio set_lr keeps (see set_lr).
#define MUON_TORCH_OPTION_ACCESSORS(KEY, PART, MEMBER, TYPE, ...)               \
  MuonOptions& KEY(const typename optim::Codec<TYPE>::Argument& value) {        \
    using Row = optim::option::KEY;                                             \
    optim::Codec<TYPE>::assign(Row::key, Row::of(options_), value, Row::check); \
    optim::after_set(Row{}, options_);                                          \
    set_by_hand(Row{});                                                         \
    return *this;                                                               \
  }                                                                             \
  const TYPE& KEY() const noexcept { return optim::option::KEY::of(options_); }
  MUON_GROUP_OPTIONS(MUON_TORCH_OPTION_ACCESSORS)
#undef MUON_TORCH_OPTION_ACCESSORS

  /// AdamW's (beta1, beta2), as torch::optim::AdamWOptions::betas.
  MuonOptions& adamw_betas(const betas_t& betas) {
    options_.adamw.beta1 = std::get<0>(betas);
    options_.adamw.beta2 = std::get<1>(betas);
    return *this;
  }
  betas_t adamw_betas() const { return {options_.adamw.beta1, options_.adamw.beta2}; }

  /// automatic: the routing rules (>= 2-D weights to Muon; vectors,
  /// embeddings and heads to AdamW); muon or adamw: every parameter of the
  /// group. Read when a parameter is registered. Not a group option of the
  /// library (a parameter's), so not in a checkpoint's group options.
  TORCH_ARG(Route, route) = Route::automatic;

 public:
  /// libtorch's LR schedulers scale the group's lr through these. set_lr
  /// moves adamw_lr with it at the ratio adamw_lr / lr of the pair last set
  /// by hand (the constructor, lr(), adamw_lr(); a load does not change
  /// it), so one scheduler drives both halves of the hybrid, through 0 and
  /// back (a warmup from 0, a decay to 0). A pair set by hand with lr 0 has
  /// no ratio: set_lr then leaves adamw_lr as it is (give the options the
  /// peak pair and let the scheduler start from 0: docs/torch.md).
  double get_lr() const override { return options_.muon.lr; }
  void set_lr(const double new_lr) override {
    fix_ratio();
    if (adamw_per_lr_) options_.adamw.lr = *adamw_per_lr_ * new_lr;
    options_.muon.lr = new_lr;
  }

  /// The library's group options these stand for (checked: muon::Error
  /// naming the option).
  GroupOptions group_options() const {
    options_.validate();
    if (!is_valid(route())) detail::fail("route", "is not a Route value");
    return options_;
  }

  /// Sets every option but the route from the library's group options (a
  /// checkpoint's, after load). Not a pair set by hand: set_lr keeps the
  /// ratio of the pair set before (the resumed run's constructor's, so a
  /// resumed run scales adamw_lr exactly as the saved one did).
  MuonOptions& set_group_options(const GroupOptions& g) {
    fix_ratio();
    options_ = g;
    return *this;
  }

 private:
  // An lr set by hand (not by set_lr or a load) fixes a new ratio at the
  // next set_lr.
  template <class Row>
  void set_by_hand(Row) {}
  void set_by_hand(optim::option::lr) { ratio_fixed_ = false; }
  void set_by_hand(optim::option::adamw_lr) { ratio_fixed_ = false; }

  // The ratio set_lr keeps, taken from the pair set by hand at the first
  // set_lr after it (nullopt: that pair's lr was 0).
  void fix_ratio() {
    if (ratio_fixed_) return;
    ratio_fixed_ = true;
    const double lr = options_.muon.lr;
    adamw_per_lr_ = lr > 0 ? std::optional<double>(options_.adamw.lr / lr) : std::nullopt;
  }

  GroupOptions options_;
  bool ratio_fixed_ = false;
  std::optional<double> adamw_per_lr_;
};

/// How the optimizer names, routes and runs its parameters (read once, at
/// construction).
struct HybridOptions {
  /// The name patterns that send >= 2-D tensors to AdamW (embeddings, heads).
  RoutingRules rules;
  /// Row blocks orthogonalized separately, by parameter name (a fused QKV
  /// weight of 3*d rows: {d, d, d}).
  std::map<std::string, std::vector<std::ptrdiff_t>> splits;
  /// Per-head orthogonalization, by parameter name: that many equal row
  /// blocks. The keys of splits and heads must name parameters given at
  /// construction (either name of a tied tensor, one entry per tensor): the
  /// constructor throws muon::Error naming a key that matches none and the
  /// closest names.
  std::map<std::string, std::int64_t> heads;
  /// Newton–Schulz and elementwise threads (0: libtorch's
  /// at::get_num_threads(), so torch::set_num_threads governs both).
  int threads = 0;
  NonFinitePolicy non_finite_policy = NonFinitePolicy::raise;
  /// Where make_hybrid (and the named constructor) print the routing table;
  /// nullptr: silent.
  std::ostream* log = &std::cout;

  /// The defaults with log nullptr.
  static HybridOptions quiet() {
    HybridOptions h;
    h.log = nullptr;
    return h;
  }
};

}  // namespace torch
}  // namespace muon
