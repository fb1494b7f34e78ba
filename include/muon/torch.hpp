// SPDX-License-Identifier: MIT
#pragma once
/// \file torch.hpp
/// \brief muon::torch::Muon: the library's optimizer as a libtorch
/// torch::optim::Optimizer (CMake target muon::torch). One object steps the
/// Muon-routed and the AdamW-routed parameters of a model together.
///
///     auto opt = muon::torch::make_hybrid(model->named_parameters(),
///                                         muon::torch::MuonOptions(0.02).adamw_lr(3e-3));
///     for (auto& batch : *loader) {
///       opt.zero_grad();
///       auto loss = torch::nll_loss(model->forward(batch.data), batch.target);
///       loss.backward();
///       opt.step();
///     }
///     torch::save(opt, "opt.pt");   // torch::load(opt, "opt.pt") restores it
///
/// What it is: an adapter. The options, routing, Newton–Schulz, momentum,
/// AdamW, the all-or-nothing step and the checkpoint format are
/// muon::Optimizer's (optimizer.hpp); this file views libtorch's tensors as
/// that optimizer's ParamViews and maps libtorch's conventions onto it:
///  - parameter groups are libtorch's (param_groups(), per-group
///    MuonOptions); the options are read again at every step, so libtorch's
///    LR schedulers and hand edits take effect at the next step;
///  - contiguous CPU tensors of float, double, bfloat16 and half are used in
///    place (no copy); a 2-D parameter with a row or column stride (a slice
///    or a transpose) too; a gradient whose layout differs from its
///    parameter's is copied into the parameter's layout for the step;
///    anything else (more than 4 dimensions, other strides, integer or
///    complex dtypes, sparse gradients, CUDA or other devices, mixed dtypes
///    or devices between a parameter and its gradient) is refused with
///    muon::Error naming the parameter;
///  - one tensor listed twice in a group (tied weights: GPT-2's wte.weight
///    is lm_head.weight, and named_parameters() lists it under both names)
///    is registered once; a tensor in two groups, or two tensors sharing
///    memory, are refused naming both (each step would update the shared
///    elements twice);
///  - one muon::Optimizer per dtype present (a bf16 model with fp32 norms
///    has two), stepped all-or-nothing together: every parameter is checked
///    before any is written;
///  - state lives in those optimizers (state() of the libtorch base stays
///    empty); save()/load() (torch::save / torch::load) store the library's
///    own checkpoint bytes, so save_checkpoint() and muon::Optimizer read
///    the same format.
/// A parameter with no gradient (undefined grad()) is skipped, as in
/// libtorch. See docs/torch.md. To compile the adapter once per program
/// rather than in every file that uses it: muon/torch_extern_templates.hpp.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/arg.h>
#include <torch/optim/optimizer.h>
#include <torch/ordered_dict.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "optimizer.hpp"
#include "torch/options.hpp"

namespace muon {
namespace torch {

/// How the optimizer names, routes and runs its parameters (read once, at
/// construction).
struct HybridOptions {
  /// The name patterns that send >= 2-D tensors to AdamW (embeddings, heads).
  RoutingRules rules;
  /// Row blocks orthogonalized separately, by parameter name (a fused QKV
  /// weight of 3*d rows: {d, d, d}).
  std::map<std::string, std::vector<std::ptrdiff_t>> splits;
  /// Per-head orthogonalization, by parameter name: that many equal row
  /// blocks (an attention projection's heads; 3*heads for fused QKV).
  /// The keys of splits and heads must name parameters given at
  /// construction (either name of a tied tensor, one entry per tensor):
  /// the constructor throws muon::Error naming a key that matches none and
  /// the closest names (a typo would leave that weight orthogonalized
  /// whole, silently).
  std::map<std::string, std::int64_t> heads;
  /// Newton–Schulz and elementwise threads (0: libtorch's
  /// at::get_num_threads(), so torch::set_num_threads governs both).
  int threads = 0;
  NonFinitePolicy non_finite_policy = NonFinitePolicy::raise;
  /// Where make_hybrid (and the named constructor) print the routing table;
  /// nullptr: silent.
  std::ostream* log = &std::cout;
};

/// muon::Optimizer over libtorch tensors, as a torch::optim::Optimizer.
/// Use it as muon::torch::Muon: it is a class template (Tag is always
/// void) only so that a program can compile it once, in one file, and
/// declare it extern elsewhere (muon/torch_extern_templates.hpp).
template <class Tag = void>
class BasicMuon : public ::torch::optim::Optimizer {
 public:
  using Tensor = at::Tensor;
  using ParamGroup = ::torch::optim::OptimizerParamGroup;
  using NamedTensors = ::torch::OrderedDict<std::string, Tensor>;

  /// One group of unnamed parameters, as torch.optim.Muon(params, ...): they
  /// are named "group0.param<i>" and routed by shape.
  explicit BasicMuon(std::vector<Tensor> params, MuonOptions defaults = MuonOptions())
      : BasicMuon(std::vector<ParamGroup>{ParamGroup(std::move(params))}, std::move(defaults)) {}

  /// Several groups, each with its own MuonOptions or the defaults. Every
  /// parameter is checked and registered now (muon::Error naming the first
  /// bad one; parameters added later with add_param_group are registered at
  /// the next step()). The parameters have no names here: they are called
  /// "group<g>.param<i>" and routed by shape. A tensor listed twice in a
  /// group (model->parameters() of a model with tied weights) is registered
  /// once, under its first name.
  explicit BasicMuon(std::vector<ParamGroup> groups, MuonOptions defaults = MuonOptions(),
                     HybridOptions hybrid = quiet())
      : Optimizer(std::move(groups), std::make_unique<MuonOptions>(std::move(defaults))),
        hybrid_(std::move(hybrid)) {
    register_new_params();
    check_name_keys();
  }

  /// The named parameters of a model in one group: routed by name and shape
  /// (the library's rules), the routing table printed to hybrid.log. A
  /// tensor under two names (tied weights) is registered once, under its
  /// first name, and routed to AdamW when either name's rule says so.
  BasicMuon(const NamedTensors& named, MuonOptions options, HybridOptions hybrid = HybridOptions())
      : Optimizer(std::vector<ParamGroup>{ParamGroup(named.values())},
                  std::make_unique<MuonOptions>(std::move(options))),
        hybrid_(std::move(hybrid)) {
    for (const auto& item : named) names_.push_back(item.key());
    register_new_params();
    check_name_keys();
    if (hybrid_.log) *hybrid_.log << routing();
  }

  BasicMuon(BasicMuon&&) = default;

  /// One step over every parameter with a gradient, all-or-nothing (see
  /// muon::Optimizer::step). `closure`, if given, is called first with
  /// gradients enabled and its loss returned.
  Tensor step(LossClosure closure = nullptr) override {
    Tensor loss;
    if (closure) {
      at::AutoGradMode enable(true);
      loss = closure();
    }
    at::NoGradGuard no_grad;
    register_new_params();
    push_options();
    bind_tensors();
    report_ = StepReport();
    if (engine_count() > 1)  // every engine checks before any writes
      for_each_engine([](auto& e) { e.check(); });
    for_each_engine([this](auto& e) {
      e.enable_metrics(metrics_on_);
      merge(e.step());
    });
    if (metrics_on_) collect_metrics();
    return loss;
  }

  /// The last step's outcome, over every dtype.
  const StepReport& report() const { return report_; }

  // ---- metrics -------------------------------------------------------------------

  /// Computes post-step metrics at every step (muon::Optimizer's: gradient
  /// and momentum norms, the update's RMS and orthogonality error, a
  /// spectral-norm estimate; off by default, and they cost about a tenth of
  /// a Newton–Schulz per Muon parameter).
  void enable_metrics(bool on = true) { metrics_on_ = on; }
  bool metrics_enabled() const { return metrics_on_; }
  /// Called after every step with metrics() (turns them on). An empty
  /// function removes the hook.
  void on_step(std::function<void(const StepMetrics&)> hook) {
    hook_ = std::move(hook);
    if (hook_) metrics_on_ = true;
  }
  /// The last step's metrics: every parameter, all dtypes, in registration
  /// order (meaningful while metrics are on; the names stay valid until the
  /// next step).
  const StepMetrics& metrics() const { return metrics_; }

  /// QK-Clip after a step (muon::Optimizer::qk_clip; docs/muon_family.md):
  /// scales the query and key rows of the heads whose measured largest
  /// logit is above options.tau. `heads` names the parameters (any name of
  /// a tied tensor); both must have the same dtype. Throws muon::Error
  /// (nothing written) for NaN/Inf maxima, naming the head.
  QkClipReport qk_clip(const QkClipHeads& heads, const std::vector<double>& max_logits,
                       const QkClipOptions& options = QkClipOptions()) {
    at::NoGradGuard no_grad;
    register_new_params();
    bind_tensors();  // the engines see the tensors' current storage
    const Binding& q = binding(heads.query);
    const Binding& k = binding(heads.key);
    if (q.dtype != k.dtype)
      detail::fail("qk_clip key", "'" + heads.key + "' is " + dtype_name(k.dtype) + ", '" +
                                      heads.query + "' " + dtype_name(q.dtype) +
                                      " (both must have one dtype)");
    QkClipHeads registered = heads;  // the names the engine knows
    registered.query = q.name;
    registered.key = k.name;
    QkClipReport report;
    visit(q.dtype, [&](auto& e) { report = e.qk_clip(registered, max_logits, options); });
    return report;
  }

  /// The routing table of every parameter, in registration order. A tied
  /// tensor's row names its other names (and, when one of them decided its
  /// route, that name's rule).
  RoutingReport routing() const {
    RoutingReport all;
    std::map<at::ScalarType, RoutingReport> by_dtype;
    for_each_engine([&by_dtype](const auto& e, at::ScalarType t) { by_dtype[t] = e.routing(); });
    for (const Binding& b : bindings_) {
      RoutingEntry e = by_dtype[b.dtype].at(b.name);
      if (!b.aliases.empty()) {
        std::string others;
        for (const Alias& a : b.aliases) others += (others.empty() ? "'" : ", '") + a.name + "'";
        const std::string tied = "tied: one tensor with " + others + ", updated once";
        e.reason = b.decided_by.empty()
                       ? e.reason + "; " + tied
                       : tied + "; '" + b.decided_by + "': " + b.decided_reason;
      }
      all.entries.push_back(std::move(e));
    }
    return all;
  }

  /// The name a parameter was registered under (muon::Error if it is not
  /// one); a tied tensor's first name.
  const std::string& name_of(const Tensor& param) const { return binding(param).name; }
  Route route_of(const Tensor& param) const {
    const Binding& b = binding(param);
    Route r = Route::automatic;
    visit(b.dtype, [&](const auto& e) { r = e.route(b.name); });
    return r;
  }
  /// Steps the optimizer has taken (with or without updates).
  std::int64_t step_count() const {
    std::int64_t n = 0;
    for_each_engine([&n](const auto& e) { n = std::max(n, e.step_count()); });
    return n;
  }

  /// The engine over the parameters of dtype T (float, double,
  /// Eigen::bfloat16, Eigen::half): its buffers, metrics, checkpoint.
  /// muon::Error if there are none.
  template <class T>
  const ::muon::Optimizer<T>& engine() const {
    const auto& e = std::get<std::unique_ptr<::muon::Optimizer<T>>>(engines_);
    if (!e)
      detail::fail("engine", std::string("there are no ") + scalar_traits<T>::name + " parameters");
    return *e;
  }

  // ---- checkpoints -----------------------------------------------------------------

  /// torch::save(optimizer, ...): the library checkpoint of each dtype's
  /// engine, as a byte tensor under "muon_checkpoint_<dtype>".
  void save(::torch::serialize::OutputArchive& archive) const override {
    synchronize();
    archive.write("muon_format", c10::IValue(std::int64_t(1)));
    for_each_engine([&archive](const auto& e, at::ScalarType t) {
      std::ostringstream os(std::ios::binary);
      e.save(os);
      const std::string bytes = os.str();
      Tensor blob = at::empty({std::int64_t(bytes.size())}, at::kByte);
      if (!bytes.empty()) std::memcpy(blob.data_ptr<std::uint8_t>(), bytes.data(), bytes.size());
      archive.write(key_of(t), blob);
    });
  }

  /// torch::load(optimizer, ...): restores what save() wrote into an
  /// optimizer over the same parameters, with every group's options (the
  /// route excepted). Throws muon::Error listing the mismatches; the
  /// optimizer is then as before. libtorch saves no LR scheduler: step a
  /// new scheduler to where the run was BEFORE loading (docs/torch.md).
  void load(::torch::serialize::InputArchive& archive) override {
    c10::IValue format;
    if (!archive.try_read("muon_format", format))
      detail::fail("archive", "has no muon::torch::Muon state (saved by another optimizer?)");
    if (!(format.isInt() && format.toInt() == 1))
      detail::fail("archive", "has a muon::torch::Muon state of an unknown format");
    register_new_params();
    std::vector<std::pair<at::ScalarType, std::string>> streams;
    for (at::ScalarType t : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
      bool here = false;
      for_each_engine([&](const auto&, at::ScalarType u) { here = here || u == t; });
      c10::IValue value;
      const bool stored = archive.try_read(key_of(t), value) && value.isTensor();
      if (stored != here)
        detail::fail("archive", std::string(stored ? "holds" : "has no") + " state for " +
                                    dtype_name(t) + " parameters, and this optimizer " +
                                    (here ? "has" : "has none") +
                                    " (saved with other parameters or dtypes?)");
      if (!stored) continue;
      const Tensor blob = value.toTensor().contiguous();
      if (blob.scalar_type() != at::kByte)
        detail::fail("archive", "'" + key_of(t) + "' is not a byte tensor");
      streams.emplace_back(t,
                           std::string(reinterpret_cast<const char*>(blob.data_ptr<std::uint8_t>()),
                                       std::size_t(blob.numel())));
    }
    load_streams(streams, LoadOptions());
  }

  /// The library's checkpoint format (muon::Optimizer<T>::load reads it):
  /// needs the parameters to share one dtype (engine<T>().save otherwise).
  void save_checkpoint(std::ostream& os) const {
    synchronize();
    visit(single_dtype("save_checkpoint"), [&os](const auto& e) { e.save(os); });
  }
  void load_checkpoint(std::istream& is, const LoadOptions& options = LoadOptions()) {
    const at::ScalarType t = single_dtype("load_checkpoint");
    std::string bytes{std::istreambuf_iterator<char>(is), std::istreambuf_iterator<char>()};
    load_streams({{t, std::move(bytes)}}, options);
  }

 private:
  template <class T>
  using EnginePtr = std::unique_ptr<::muon::Optimizer<T>>;
  // The parameter scalar of an engine (the argument of a generic lambda).
  template <class E>
  struct scalar_of;
  template <class T, class B>
  struct scalar_of<::muon::Optimizer<T, B>> {
    using type = T;
  };
  template <class E>
  using scalar_t = typename scalar_of<std::decay_t<E>>::type;

  // Another place and name of a registered tensor in its group (tied weights).
  struct Alias {
    std::size_t index = 0;
    std::string name;
  };

  // A registered parameter: where it sits in param_groups_ and the memory
  // it was last bound to.
  struct Binding {
    std::size_t group = 0, index = 0;  // its first place
    const c10::TensorImpl* impl = nullptr;
    std::string name;            // the name the engine knows (the first)
    std::vector<Alias> aliases;  // its other places in the group
    // The other name whose rule routed a tied tensor, and the rule's reason
    // (empty: its own name's rule decided).
    std::string decided_by, decided_reason;
    at::ScalarType dtype = at::kFloat;
    void* data = nullptr;
  };

  // A new place in param_groups_ met by register_new_params: a tensor to
  // register (added[fresh]) or one registered already (the same impl).
  struct Place {
    std::size_t group = 0, index = 0;
    std::string name;
    std::size_t fresh = 0;
    const c10::TensorImpl* tied_to = nullptr;  // non-null: an alias
  };

  static HybridOptions quiet() {
    HybridOptions h;
    h.log = nullptr;
    return h;
  }

  static const char* dtype_name(at::ScalarType t) {
    switch (t) {
      case at::kFloat:
        return "float";
      case at::kDouble:
        return "double";
      case at::kBFloat16:
        return "bfloat16";
      case at::kHalf:
        return "half";
      default:
        return c10::toString(t);
    }
  }
  static std::string key_of(at::ScalarType t) {
    return std::string("muon_checkpoint_") + dtype_name(t);
  }

  // Calls f(engine) or f(engine, dtype) for each engine that exists, in a
  // fixed dtype order (float, double, bfloat16, half).
  template <class F>
  void for_each_engine(F&& f) {
    each_engine(*this, std::forward<F>(f));
  }
  template <class F>
  void for_each_engine(F&& f) const {
    each_engine(*this, std::forward<F>(f));
  }
  template <class Self, class F>
  static void each_engine(Self& self, F&& f) {
    call(std::get<EnginePtr<float>>(self.engines_), at::kFloat, f);
    call(std::get<EnginePtr<double>>(self.engines_), at::kDouble, f);
    call(std::get<EnginePtr<Eigen::bfloat16>>(self.engines_), at::kBFloat16, f);
    call(std::get<EnginePtr<Eigen::half>>(self.engines_), at::kHalf, f);
  }
  template <class E, class F>
  static void call(E& engine, at::ScalarType t, F& f) {
    if (!engine) return;
    if constexpr (std::is_invocable_v<F&, decltype(*engine), at::ScalarType>)
      f(*engine, t);
    else
      f(*engine);
  }
  std::size_t engine_count() const {
    std::size_t n = 0;
    for_each_engine([&n](const auto&) { ++n; });
    return n;
  }

  // f(engine of dtype t), creating it when `create`.
  template <class F>
  void visit(at::ScalarType t, F&& f, bool create = false) {
    switch (t) {
      case at::kFloat:
        return f(engine_of<float>(create));
      case at::kDouble:
        return f(engine_of<double>(create));
      case at::kBFloat16:
        return f(engine_of<Eigen::bfloat16>(create));
      case at::kHalf:
        return f(engine_of<Eigen::half>(create));
      default:
        detail::fail("dtype", std::string(c10::toString(t)) + " is not supported");
    }
  }
  template <class F>
  void visit(at::ScalarType t, F&& f) const {
    const_cast<BasicMuon*>(this)->visit(t, [&f](const auto& e) { f(e); });
  }
  template <class T>
  ::muon::Optimizer<T>& engine_of(bool create) {
    EnginePtr<T>& e = std::get<EnginePtr<T>>(engines_);
    if (!e) {
      if (!create)
        detail::fail("engine", std::string("no ") + scalar_traits<T>::name + " parameters");
      const GroupOptions first = options_of(0).group_options();
      auto made = std::make_unique<::muon::Optimizer<T>>(first.muon, first.adamw);
      made->set_ns_threads(hybrid_.threads > 0 ? hybrid_.threads : at::get_num_threads());
      made->set_routing_rules(hybrid_.rules);
      made->set_non_finite_policy(hybrid_.non_finite_policy);
      add_groups(*made);
      e = std::move(made);
    }
    return *e;
  }

  // Gives an engine the groups of param_groups_ it does not have yet.
  template <class E>
  void add_groups(E& e) {
    for (std::size_t g = e.group_count(); g < param_groups_.size(); ++g) {
      const GroupOptions o = options_of(g).group_options();
      e.add_group(o.muon, o.adamw);
    }
  }

  MuonOptions& options_of(std::size_t g) {
    auto* o = dynamic_cast<MuonOptions*>(&param_groups_[g].options());
    if (!o)
      detail::fail("param_groups", "group " + std::to_string(g) +
                                       " has options that are not muon::torch::MuonOptions");
    return *o;
  }

  const Binding& binding(const Tensor& param) const {
    for (const Binding& b : bindings_)
      if (b.impl == param.unsafeGetTensorImpl()) return b;
    detail::fail("param", "is not a parameter of this optimizer");
  }
  // The parameter with this name (any name of a tied tensor), or null.
  const Binding* find_binding(const std::string& name) const {
    for (const Binding& b : bindings_) {
      if (b.name == name) return &b;
      for (const Alias& a : b.aliases)
        if (a.name == name) return &b;
    }
    return nullptr;
  }
  const Binding& binding(const std::string& name) const {
    if (const Binding* b = find_binding(name)) return *b;
    detail::fail("name", "'" + name + "' is not a parameter of this optimizer" + closest_names(name));
  }

  // " (closest: 'a', 'b', 'c')": the registered names nearest to `name` by
  // edit distance, for a message about a name that matches none.
  std::string closest_names(const std::string& name) const {
    std::vector<std::pair<std::size_t, const std::string*>> near;
    for (const Binding& b : bindings_) {
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
    for (std::size_t i = 0; i < shown; ++i)
      list += (i ? ", '" : "'") + *near[i].second + "'";
    return " (closest: " + list + ")";
  }

  // Every key of hybrid_.splits and hybrid_.heads names a parameter: a
  // typo would otherwise leave that weight orthogonalized whole, silently.
  void check_name_keys() const {
    const auto check = [this](const char* field, const std::string& key) {
      if (!find_binding(key))
        detail::fail(field, "'" + key + "' matches no parameter" + closest_names(key));
    };
    for (const auto& entry : hybrid_.splits) check("splits", entry.first);
    for (const auto& entry : hybrid_.heads) check("heads", entry.first);
  }

  // The entry of `map` (splits or heads) for any of a tensor's names; two
  // entries for one tensor are refused.
  template <class Map>
  static const typename Map::mapped_type* entry_for(const Map& map, const Binding& b,
                                                    const char* field) {
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

  // The name of place i of group g: the named constructor's, else "group<g>.param<i>".
  std::string name_at(std::size_t g, std::size_t i) const {
    if (g == 0 && i < names_.size()) return names_[i];
    return "group" + std::to_string(g) + ".param" + std::to_string(i);
  }

  // ---- tensors as views --------------------------------------------------------------

  static std::string describe(const Tensor& t) {
    std::ostringstream os;
    os << "sizes " << t.sizes() << ", strides " << t.strides();
    return os.str();
  }

  // How a usable tensor lies in memory: dense (contiguous, row-major), or a
  // 2-D matrix whose rows (row-major) or columns (column-major) start
  // `stride` elements apart.
  struct Layout {
    enum Kind { dense, rows, columns } kind = dense;
    std::int64_t stride = 0;
  };
  static std::optional<Layout> layout_of(const Tensor& t) {
    if (t.dim() > 4) return std::nullopt;
    if (t.is_contiguous()) return Layout{Layout::dense, 0};
    if (t.dim() == 2 && t.stride(1) == 1 && t.stride(0) >= t.size(1))
      return Layout{Layout::rows, t.stride(0)};
    if (t.dim() == 2 && t.stride(0) == 1 && t.stride(1) >= t.size(0))
      return Layout{Layout::columns, t.stride(1)};
    return std::nullopt;
  }
  // The layout, or muon::Error naming `what` ("param" or "grad") and the parameter.
  static Layout usable_layout(const Tensor& t, const std::string& name, const char* what) {
    if (t.dim() > 4)
      detail::fail(what, "'" + name + "' has " + std::to_string(t.dim()) +
                             " dimensions; at most 4 are supported");
    if (const auto l = layout_of(t)) return *l;
    detail::fail(what, "'" + name + "' is not contiguous (" + describe(t) +
                           "): only dense tensors and 2-D row or column slices are used in place");
  }

  // The tensor's memory as a ParamView<T>, without a copy; fails naming
  // `what` and the parameter when it cannot be one.
  template <class T>
  static ParamView<T> view_of(const Tensor& t, const std::string& name, const char* what) {
    const Layout l = usable_layout(t, name, what);
    T* data = static_cast<T*>(t.data_ptr());
    if (l.kind == Layout::rows) return ParamView<T>::matrix(data, t.size(0), t.size(1), l.stride);
    if (l.kind == Layout::columns)
      return ParamView<T>::matrix(data, t.size(0), t.size(1), l.stride,
                                  ::muon::Layout::column_major);
    ParamView<T> v;
    v.data = data;
    v.ndim = int(t.dim());
    for (int i = 0; i < v.ndim; ++i) v.shape[std::size_t(i)] = t.size(i);
    return v;
  }

  // The bytes a tensor's elements occupy (for the overlap check: the
  // library's MemoryFootprint, over any dtype).
  static optim::MemoryFootprint footprint(const Tensor& t, const Layout& l,
                                          const std::string& name) {
    const std::uint64_t item = std::uint64_t(t.element_size());
    if (l.kind == Layout::dense) {
      const std::uint64_t n = std::uint64_t(t.numel());
      return optim::MemoryFootprint::strided(name, t.data_ptr(), 1, n, n, item);
    }
    const bool rows = l.kind == Layout::rows;  // lines: the rows, else the columns
    return optim::MemoryFootprint::strided(name, t.data_ptr(), std::uint64_t(t.size(rows ? 0 : 1)),
                                           std::uint64_t(t.size(rows ? 1 : 0)),
                                           std::uint64_t(l.stride), item);
  }

  static void check_param(const Tensor& p, const std::string& name) {
    if (!p.defined()) detail::fail("param", "'" + name + "' is an undefined tensor");
    if (!p.is_cpu())
      detail::fail("param", "'" + name + "' is on " + p.device().str() +
                                ": muon::torch::Muon updates CPU tensors (CUDA tensors: "
                                "muon::cuda::Optimizer, docs/torch.md)");
    if (p.is_sparse()) detail::fail("param", "'" + name + "' is sparse");
    if (p.is_complex())
      detail::fail("param", "'" + name + "' is complex (" + c10::toString(p.scalar_type()) +
                                "): Muon needs real tensors");
    const at::ScalarType t = p.scalar_type();
    if (!(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf))
      detail::fail("param", "'" + name + "' has dtype " + c10::toString(t) +
                                " (supported: float, double, bfloat16, half)");
  }

  // ---- registration ------------------------------------------------------------------

  // The tensor now at a binding's first place (null if it was removed or
  // replaced: bind_tensors reports that).
  const Tensor* current(const Binding& b) const {
    if (b.group >= param_groups_.size()) return nullptr;
    const auto& params = param_groups_[b.group].params();
    if (b.index >= params.size() || params[b.index].unsafeGetTensorImpl() != b.impl) return nullptr;
    return &params[b.index];
  }

  // Registers every place of param_groups_ not registered yet (new groups
  // from add_param_group included). Everything is checked first, with
  // nothing changed: each tensor, a tensor met again (a second name in its
  // group: tied, registered once; in another group: refused), memory that
  // overlaps another parameter's (refused, naming both).
  void register_new_params() {
    std::vector<Binding> added;
    std::vector<Place> places;
    // Every parameter's memory, gathered at the first new tensor (most
    // calls, one per step, have none).
    std::vector<std::pair<optim::MemoryFootprint, std::string>> memory;
    const auto gather_memory = [&] {
      for (const Binding& b : bindings_)
        if (const Tensor* t = current(b))
          if (const auto l = layout_of(*t)) memory.emplace_back(footprint(*t, *l, b.name), b.name);
    };
    for (std::size_t g = 0; g < param_groups_.size(); ++g) {
      options_of(g).group_options();  // checked before anything changes
      const auto& params = param_groups_[g].params();
      for (std::size_t i = g < registered_.size() ? registered_[g] : 0; i < params.size(); ++i) {
        const Tensor& p = params[i];
        Place place{g, i, name_at(g, i), 0, nullptr};
        check_param(p, place.name);
        const c10::TensorImpl* impl = p.unsafeGetTensorImpl();
        const Binding* first = nullptr;
        for (const Binding& b : bindings_)
          if (b.impl == impl) first = &b;
        for (Binding& b : added)
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
          places.push_back(std::move(place));
          continue;
        }
        const optim::MemoryFootprint bytes =
            footprint(p, usable_layout(p, place.name, "param"), place.name);
        if (added.empty()) gather_memory();
        for (const auto& other : memory)
          if (optim::overlaps(bytes, other.first))
            detail::fail("param", "'" + place.name + "' shares memory with '" + other.second +
                                      "' (views of one storage): the shared elements would be "
                                      "updated twice per step");
        memory.emplace_back(bytes, place.name);
        Binding b;
        b.group = g;
        b.index = i;
        b.impl = impl;
        b.name = place.name;
        b.dtype = p.scalar_type();
        b.data = p.data_ptr();
        place.fresh = added.size();
        added.push_back(std::move(b));
        places.push_back(std::move(place));
      }
    }
    for (const Binding& b : added) {  // one splits and one heads entry per tensor at most
      entry_for(hybrid_.splits, b, "splits");
      entry_for(hybrid_.heads, b, "heads");
    }
    if (places.empty() && registered_.size() == param_groups_.size()) return;
    // Groups first (every engine has every group), then the places in
    // order. A failure part-way (an engine refusing a split) leaves earlier
    // places registered: they are valid, and the error names the one that
    // is not.
    for_each_engine([&](auto& e) { add_groups(e); });
    registered_.resize(param_groups_.size(), 0);
    for (Place& place : places) {
      if (place.tied_to) {
        Binding& b = *std::find_if(bindings_.begin(), bindings_.end(),
                                   [&](const Binding& x) { return x.impl == place.tied_to; });
        const bool known = std::any_of(b.aliases.begin(), b.aliases.end(),
                                       [&](const Alias& a) { return a.index == place.index; });
        if (!known) b.aliases.push_back(Alias{place.index, place.name});
      } else {
        Binding& b = added[place.fresh];
        const Tensor& p = param_groups_[b.group].params()[b.index];
        ParamOptions po;
        po.group = b.group;
        po.route = options_of(b.group).route();
        if (const auto* split = entry_for(hybrid_.splits, b, "splits")) po.split = *split;
        if (const auto* heads = entry_for(hybrid_.heads, b, "heads")) po.heads = *heads;
        route_tied(b, p, po);
        visit(
            b.dtype,
            [&](auto& e) {
              using T = scalar_t<decltype(e)>;
              e.add_param(b.name, view_of<T>(p, b.name, "param"), ParamView<T>::absent(), po);
            },
            true);
        bindings_.push_back(std::move(b));
      }
      registered_[place.group] = place.index + 1;
    }
  }

  // A tied tensor goes where either name's rule sends it: the rules send
  // only by name to AdamW (an embedding tied to an output head), so when
  // its names disagree, AdamW, for the name that says so.
  void route_tied(Binding& b, const Tensor& p, ParamOptions& po) const {
    if (b.aliases.empty()) return;
    std::array<std::ptrdiff_t, 4> shape{{0, 0, 0, 0}};
    for (int d = 0; d < int(p.dim()); ++d) shape[std::size_t(d)] = p.size(d);
    const int ndim = int(p.dim());
    const Route own = decide_route(b.name, ndim, shape, po.route, hybrid_.rules).route;
    for (const Alias& a : b.aliases) {
      const RouteDecision d = decide_route(a.name, ndim, shape, po.route, hybrid_.rules);
      if (d.route != own && d.route == Route::adamw) {
        po.route = Route::adamw;
        b.decided_by = a.name;
        b.decided_reason = d.reason;
        return;
      }
    }
  }

  // libtorch-side options -> every engine's groups (cheap: validation and
  // copies of shared data; no allocation).
  void push_options() {
    for (std::size_t g = 0; g < param_groups_.size(); ++g) {
      const GroupOptions o = options_of(g).group_options();
      for_each_engine([&](auto& e) {
        e.set_muon_options(o.muon, g);
        e.set_adamw_options(o.adamw, g);
      });
    }
  }

  // Fails when the place of a registered tensor no longer holds it.
  void check_place(std::size_t g, std::size_t i, const c10::TensorImpl* impl,
                   const std::string& name) const {
    if (g >= param_groups_.size() || i >= param_groups_[g].params().size())
      detail::fail("param_groups", "parameter '" + name + "' was removed from group " +
                                       std::to_string(g) +
                                       " (an optimizer's parameters cannot be removed)");
    if (param_groups_[g].params()[i].unsafeGetTensorImpl() != impl)
      detail::fail("param_groups", "parameter " + std::to_string(i) + " of group " +
                                       std::to_string(g) + " ('" + name +
                                       "') was replaced by another tensor");
  }

  // Points every engine at this step's tensors: the parameter where it is
  // now (libtorch's set_data may have moved it), the gradient or none.
  void bind_tensors() {
    grad_copies_.clear();
    for (Binding& b : bindings_) {
      check_place(b.group, b.index, b.impl, b.name);
      for (const Alias& a : b.aliases) check_place(b.group, a.index, b.impl, a.name);
      const Tensor& p = param_groups_[b.group].params()[b.index];
      check_param(p, b.name);
      if (p.scalar_type() != b.dtype)
        detail::fail("param", "'" + b.name + "' changed dtype from " + dtype_name(b.dtype) +
                                  " to " + dtype_name(p.scalar_type()));
      const Tensor& grad = p.grad();
      visit(b.dtype, [&](auto& e) {
        using T = scalar_t<decltype(e)>;
        const ParamView<T> pv = view_of<T>(p, b.name, "param");
        if (p.data_ptr() != b.data) {
          e.set_param(b.name, pv);
          b.data = p.data_ptr();
        }
        if (!grad.defined()) {
          e.clear_grad(b.name);
          return;
        }
        check_grad(p, grad, b.name);
        e.set_grad(b.name, grad_view<T>(p, grad, b.name));
      });
    }
  }

  static void check_grad(const Tensor& p, const Tensor& g, const std::string& name) {
    if (g.is_sparse()) detail::fail("grad", "'" + name + "' is sparse: Muon needs dense gradients");
    if (g.device() != p.device())
      detail::fail("grad", "'" + name + "' is on " + g.device().str() + ", the parameter on " +
                               p.device().str());
    if (g.scalar_type() != p.scalar_type())
      detail::fail("grad", "'" + name + "' has dtype " + c10::toString(g.scalar_type()) +
                               ", the parameter " + c10::toString(p.scalar_type()));
    if (g.sizes() != p.sizes()) {
      std::ostringstream os;
      os << "'" << name << "' has sizes " << g.sizes() << ", the parameter " << p.sizes();
      detail::fail("grad", os.str());
    }
  }

  // The gradient in its own memory when its layout is the parameter's, else
  // a copy in the parameter's layout kept until the end of the step.
  template <class T>
  ParamView<T> grad_view(const Tensor& p, const Tensor& g, const std::string& name) {
    if (g.strides() == p.strides() || (g.is_contiguous() && p.is_contiguous()))
      return view_of<T>(g, name, "grad");  // same sizes, same layout
    Tensor copy = at::empty_strided(p.sizes(), p.strides(), g.options());
    copy.copy_(g);
    grad_copies_.push_back(copy);
    return view_of<T>(copy, name, "grad");
  }

  // The engines' metrics of this step as one StepMetrics, in registration
  // order; the hook, if any, called with it.
  void collect_metrics() {
    metrics_.step = report_.step;
    metrics_.params.resize(bindings_.size());
    metric_names_.resize(bindings_.size());
    for (std::size_t i = 0; i < bindings_.size(); ++i) {
      const Binding& b = bindings_[i];
      visit(b.dtype, [&](const auto& e) {
        metrics_.lr_factor = e.metrics().lr_factor;
        metrics_.params[i] = e.metrics().params[e.core().index(b.name)];
      });
      metric_names_[i] = b.name;  // names of its own: the engines' move when they grow
      metrics_.params[i].name = metric_names_[i];
    }
    if (hook_) hook_(metrics_);
  }

  // ---- checkpoint helpers ------------------------------------------------------------

  // Before a save: parameters added since the last step registered, the
  // engines given the libtorch-side options as they are now (a save must
  // hold what the next step would use). libtorch's save() is const; this
  // changes what the engines mirror, not what the optimizer is.
  void synchronize() const {
    BasicMuon& self = const_cast<BasicMuon&>(*this);
    self.register_new_params();
    self.push_options();
  }

  at::ScalarType single_dtype(const char* what) const {
    if (engine_count() != 1)
      detail::fail(what, "needs parameters of one dtype (this optimizer has " +
                             std::to_string(engine_count()) +
                             " dtypes: use engine<T>() for each, or torch::save)");
    at::ScalarType only = at::kFloat;
    for_each_engine([&only](const auto&, at::ScalarType t) { only = t; });
    return only;
  }
  // Loads each engine's stream; a failure restores the engines loaded
  // before it, so the whole optimizer is as before.
  void load_streams(const std::vector<std::pair<at::ScalarType, std::string>>& streams,
                    const LoadOptions& options) {
    register_new_params();
    if (streams.empty()) return;
    std::vector<std::pair<at::ScalarType, std::string>> backups;
    try {
      for (const auto& s : streams) {
        std::string backup;
        visit(s.first, [&](auto& e) {
          std::ostringstream os(std::ios::binary);
          e.save(os);
          backup = os.str();
          std::istringstream is(s.second, std::ios::binary);
          e.load(is, options);
        });
        backups.emplace_back(s.first, std::move(backup));
      }
    } catch (...) {
      for (const auto& b : backups)
        visit(b.first, [&](auto& e) {
          std::istringstream is(b.second, std::ios::binary);
          e.load(is);
        });
      throw;
    }
    // The libtorch side follows the checkpoint's options.
    for (std::size_t g = 0; g < param_groups_.size(); ++g)
      visit(streams.front().first, [&](const auto& e) {
        GroupOptions o;
        o.muon = e.muon_options(g);
        o.adamw = e.adamw_options(g);
        options_of(g).set_group_options(o);
      });
  }

  void merge(const StepReport& r) {
    report_.step = std::max(report_.step, r.step);
    report_.updated += r.updated;
    report_.skipped.insert(report_.skipped.end(), r.skipped.begin(), r.skipped.end());
    report_.status = report_.updated == 0
                         ? StepStatus::nothing
                         : (report_.skipped.empty() ? StepStatus::ok : StepStatus::partial);
  }

  HybridOptions hybrid_;
  std::vector<std::string> names_;  // the named constructor's, by place in group 0
  std::tuple<EnginePtr<float>, EnginePtr<double>, EnginePtr<Eigen::bfloat16>,
             EnginePtr<Eigen::half>>
      engines_;
  std::vector<Binding> bindings_;        // registration order
  std::vector<std::size_t> registered_;  // per group: places registered
  std::vector<Tensor> grad_copies_;      // this step's re-laid-out gradients
  StepReport report_;
  bool metrics_on_ = false;
  std::function<void(const StepMetrics&)> hook_;
  StepMetrics metrics_;
  std::vector<std::string> metric_names_;  // what metrics_.params[i].name views
};

/// The optimizer (BasicMuon's one instance).
using Muon = BasicMuon<>;

/// The hybrid in one line: the model's >= 2-D weights to Muon, embeddings,
/// heads, biases and norms to AdamW (the library's routing rules, by name
/// and shape), the routing table printed to hybrid.log, one optimizer for
/// the training loop to step.
inline Muon make_hybrid(const Muon::NamedTensors& named_parameters,
                        MuonOptions options = MuonOptions(),
                        HybridOptions hybrid = HybridOptions()) {
  return Muon(named_parameters, std::move(options), std::move(hybrid));
}

}  // namespace torch
}  // namespace muon
