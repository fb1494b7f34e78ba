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
/// A thin facade, as muon::Optimizer (optimizer.hpp): ONE optim::Core holds
/// every parameter, group and option, its method set is optim::Front's, and
/// one eigen::Engine per dtype present (float, double, bfloat16, half) holds
/// the state of that dtype's parameters (a job per parameter). A step checks
/// every engine into one set of flags, the core decides once, then every
/// engine writes: all or nothing across the dtypes. What this file adds is
/// libtorch's side:
///  - parameter groups are libtorch's (param_groups(), per-group
///    MuonOptions); the options are read again at every step, so libtorch's
///    LR schedulers and hand edits take effect at the next step;
///  - CPU tensors are used in place (torch/tensors.hpp: dense, or a 2-D row
///    or column slice); a gradient whose layout differs from its
///    parameter's is copied into the parameter's layout for the step;
///    anything else is refused with muon::Error naming the parameter;
///  - one tensor listed twice in a group (tied weights) is registered once
///    (torch/bindings.hpp); a tensor in two groups, or two tensors sharing
///    memory (any dtypes), are refused naming both;
///  - state lives in the engines (state() of the libtorch base stays empty);
///    save()/load() (torch::save / torch::load) store the library's own
///    checkpoint bytes, which save_checkpoint() and muon::Optimizer share.
/// A parameter with no gradient (undefined grad()) is skipped, as in
/// libtorch. See docs/torch.md. To compile the adapter once per program
/// rather than in every file that uses it: muon/torch_extern_templates.hpp.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/optim/optimizer.h>
#include <torch/ordered_dict.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "optim/core.hpp"
#include "optim/front.hpp"
#include "optim/qk_clip.hpp"
#include "torch/bindings.hpp"  // the registered tensors, their names and ties
#include "torch/engines.hpp"   // one eigen::Engine per dtype
#include "torch/options.hpp"   // MuonOptions, HybridOptions
#include "torch/tensors.hpp"   // tensors as ParamViews; the dtype map

namespace muon {
namespace torch {

/// The hybrid optimizer over libtorch tensors, as a torch::optim::Optimizer,
/// with optim::Front's method set (route(name), routing(), current_lr(),
/// set_option, last_report(), ...). Use it as muon::torch::Muon: it is a
/// class template (Tag is always void) only so that a program can compile
/// it once (muon/torch_extern_templates.hpp).
template <class Tag = void>
class BasicMuon : public ::torch::optim::Optimizer, public optim::Front<BasicMuon<Tag>> {
  using Front = optim::Front<BasicMuon<Tag>>;
  friend Front;
  template <class T>
  using Engine = eigen::Engine<T>;

 public:
  using Tensor = at::Tensor;
  using ParamGroup = ::torch::optim::OptimizerParamGroup;
  using NamedTensors = ::torch::OrderedDict<std::string, Tensor>;

  /// One group of unnamed parameters, as torch.optim.Muon(params, ...): they
  /// are named "group0.param<i>" and routed by shape.
  explicit BasicMuon(std::vector<Tensor> params, MuonOptions defaults = MuonOptions())
      : BasicMuon(std::vector<ParamGroup>{ParamGroup(std::move(params))}, std::move(defaults)) {}

  /// Several groups, each with its own MuonOptions or the defaults. Every parameter is
  /// checked and registered now (muon::Error naming the first bad one; groups added later
  /// with add_param_group are registered at the next step()), named "group<g>.param<i>" and
  /// routed by shape. A tensor listed twice in a group (tied weights) is registered once,
  /// under its first name.
  explicit BasicMuon(std::vector<ParamGroup> groups, MuonOptions defaults = MuonOptions(),
                     HybridOptions hybrid = HybridOptions::quiet())
      : Optimizer(std::move(groups), std::make_unique<MuonOptions>(std::move(defaults))),
        hybrid_(std::move(hybrid)) {
    set_up();
  }

  /// The named parameters of a model in one group: routed by name and shape
  /// (the library's rules), the routing table printed to hybrid.log. A
  /// tensor under two names (tied weights) is registered once, under its
  /// first name, and routed to AdamW when either name's rule says so.
  BasicMuon(const NamedTensors& named, MuonOptions options, HybridOptions hybrid = HybridOptions())
      : Optimizer(std::vector<ParamGroup>{ParamGroup(named.values())},
                  std::make_unique<MuonOptions>(std::move(options))),
        hybrid_(std::move(hybrid)) {
    for (const auto& item : named) bindings_.names.push_back(item.key());
    set_up();
    if (hybrid_.log) *hybrid_.log << routing();
  }

  BasicMuon(BasicMuon&&) = default;

  using Front::qk_clip;
  using Front::route;

  /// One step over every parameter with a gradient, all or nothing across
  /// every dtype (see muon::Optimizer::step): every engine checks into one
  /// set of flags, the core decides (raise: muon::Error, nothing written;
  /// skip: those parameters left alone), then every engine writes.
  /// `closure`, if given, is called first with gradients enabled; its loss
  /// is returned (libtorch's signature); report() gives the StepReport.
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
    core_.begin_step();
    flags_.assign(core_.size(), 0);  // one word per parameter, for every engine
    engines_.each([this](auto& e) { e.check(core_, flags_); });
    core_.decide(flags_,
                 [this](std::size_t i) { return tensors::storage_types(bindings_[i].dtype); });
    engines_.each([this](auto& e) { e.write(core_, metrics_on_); });
    const StepReport& report = core_.finish_step();
    if (metrics_on_) {
      metrics_.step = report.step;
      metrics_.lr_factor = core_.plan().lr_factor;
      engines_.metrics(core_, metrics_.params);
      if (hook_) hook_(metrics_);
    }
    return loss;
  }
  const StepReport& report() const { return core_.last_report(); }  // Front's last_report()

  // ---- metrics -------------------------------------------------------------------

  /// Post-step metrics at every step (muon::Optimizer's: gradient and
  /// momentum norms, the update's RMS and orthogonality error, a
  /// spectral-norm estimate; off by default).
  void enable_metrics(bool on = true) { metrics_on_ = on; }
  bool metrics_enabled() const { return metrics_on_; }
  /// Called after every step with metrics() (turns them on). An empty
  /// function removes the hook.
  void on_step(std::function<void(const StepMetrics&)> hook) {
    hook_ = std::move(hook);
    if (hook_) metrics_on_ = true;
  }
  /// The last step's metrics: every parameter, all dtypes, in registration
  /// order (meaningful while metrics are on; valid until the next step).
  const StepMetrics& metrics() const { return metrics_; }

  /// QK-Clip after a step (muon::Optimizer::qk_clip; docs/muon_family.md):
  /// scales the query and key rows of the heads whose measured largest
  /// logit is above options.tau. `heads` names the parameters (any name of a
  /// tied tensor). Throws muon::Error (nothing written) for NaN/Inf maxima.
  QkClipReport qk_clip(const QkClipHeads& heads, const double* max_logits, std::size_t count,
                       const QkClipOptions& options = QkClipOptions()) {
    at::NoGradGuard no_grad;
    register_new_params();
    bind_tensors();                  // the views of the tensors' current storage
    QkClipHeads registered = heads;  // the names the core knows
    registered.query = bindings_.named(heads.query).name;
    registered.key = bindings_.named(heads.key).name;
    const optim::QkClipPlan plan =
        optim::plan_qk_clip(core_, registered, max_logits, count, options);
    for (const optim::RowScaling& r : plan.scalings) {
      const Binding& b = bindings_[r.param];
      Engines::scale_rows(param_groups_[b.group].params()[b.index], b.name,
                          core_.param(r.param).shape.column_major, r.row, r.rows, r.factor);
    }
    return plan.report;
  }

  /// The routing table (Front's, in registration order); a tied tensor's
  /// row names its other names (and, when one of them decided its route,
  /// that name's rule).
  RoutingReport routing() const { return bindings_.annotate(core_.routing()); }

  /// The name a parameter was registered under (muon::Error if it is not
  /// one); a tied tensor's first name.
  const std::string& name_of(const Tensor& param) const { return bindings_.of(param).name; }
  /// The route of a parameter, by tensor (route(name): by name).
  Route route(const Tensor& param) const {
    return core_.param(bindings_.index_of(bindings_.of(param))).route;
  }

  /// The engine of dtype T's parameters (float, double, bfloat16, half); muon::Error if none.
  template <class T>
  const Engine<T>& engine() const {
    return engines_.get<T>();
  }
  /// A copy of a parameter's optimizer buffer by its checkpoint name (core().buffer_names:
  /// momentum_buffer, second_momentum_buffer, exp_avg, exp_avg_sq), in the parameter's memory
  /// order, of the buffers' dtype (float; double for double parameters).
  Tensor buffer(const std::string& name, const std::string& buffer_name) const {
    const Binding& b = bindings_.named(name);
    const auto& names = core_.buffer_names(bindings_.index_of(b));
    std::string kept;
    for (std::size_t k = 0; k < names.size(); ++k) {
      if (buffer_name != names[k]) {
        kept += (kept.empty() ? "'" : ", '") + std::string(names[k]) + "'";
        continue;
      }
      return engines_.buffer(b.dtype, b.job, k);
    }
    detail::fail("buffer", "'" + name + "' keeps no '" + buffer_name + "' (it keeps " + kept + ")");
  }

  // ---- checkpoints -----------------------------------------------------------------

  /// torch::save(optimizer, ...): the library checkpoint of every
  /// parameter, as a byte tensor under "muon_checkpoint" (buffers in their
  /// dtype; float buffers widened, exactly, to double when double
  /// parameters share the optimizer).
  void save(::torch::serialize::OutputArchive& archive) const override {
    synchronize();
    std::ostringstream os(std::ios::binary);
    write_state(os, engines_.checkpoint_dtypes());
    archive.write("muon_format", c10::IValue(std::int64_t(2)));
    archive.write("muon_checkpoint", tensors::byte_tensor(os.str()));
  }

  /// torch::load(optimizer, ...): restores what save() wrote into an
  /// optimizer over the same parameters, with every group's options (the
  /// route excepted). Throws muon::Error listing the mismatches; the
  /// optimizer is then as before. libtorch saves no LR scheduler: step a
  /// new scheduler to where the run was BEFORE loading (docs/torch.md).
  void load(::torch::serialize::InputArchive& archive) override {
    c10::IValue format, value;
    if (!archive.try_read("muon_format", format))
      detail::fail("archive", "has no muon::torch::Muon state (saved by another optimizer?)");
    if (!(format.isInt() && format.toInt() == 2) || !archive.try_read("muon_checkpoint", value) ||
        !value.isTensor() || value.toTensor().scalar_type() != at::kByte)
      detail::fail("archive",
                   "has a muon::torch::Muon state of an unknown format (format 2 "
                   "holds a byte tensor 'muon_checkpoint')");
    std::istringstream is(tensors::bytes_of(value.toTensor()), std::ios::binary);
    register_new_params();
    read_state(is, LoadOptions(), "archive", engines_.checkpoint_dtypes().first);
  }

  /// The library's checkpoint format (muon::Optimizer<T>::load reads it):
  /// needs the parameters to share one dtype (torch::save holds any mix).
  void save_checkpoint(std::ostream& os) const {
    synchronize();
    write_state(os, single_dtype("save_checkpoint"));
  }
  void load_checkpoint(std::istream& is, const LoadOptions& options = LoadOptions()) {
    register_new_params();
    read_state(is, options, "stream", single_dtype("load_checkpoint").first);
  }

 private:
  // optim::Front's access to the core, and its hooks: the libtorch groups
  // are the core's (no add_group), and a change made through Front reaches
  // the group's MuonOptions and the engines' state.
  optim::Core& front_core() { return core_; }
  const optim::Core& front_core() const { return core_; }
  void front_check_mutable(const char* what) const {
    detail::fail(what, "muon::torch::Muon's groups are libtorch's: use add_param_group");
  }
  void front_group_changed(std::size_t g) {
    if (g < param_groups_.size()) options_of(g).set_group_options(core_.group(g));
    engines_.each([this](auto& e) { e.follow_variants(core_); });
  }

  void set_up() {  // the core made with group 0's options: the routing table's lr scales
    core_.set_routing_rules(hybrid_.rules);
    core_.set_non_finite_policy(hybrid_.non_finite_policy);
    if (!param_groups_.empty()) core_.set_group_options(options_of(0).group_options(), 0);
    register_new_params();
    bindings_.check_keys(hybrid_.splits, "splits");
    bindings_.check_keys(hybrid_.heads, "heads");
  }

  int threads() const { return hybrid_.threads > 0 ? hybrid_.threads : at::get_num_threads(); }

  MuonOptions& options_of(std::size_t g) {
    auto* o = dynamic_cast<MuonOptions*>(&param_groups_[g].options());
    if (!o)
      detail::fail("param_groups", "group " + std::to_string(g) +
                                       " has options that are not muon::torch::MuonOptions");
    return *o;
  }

  // Registers the places of param_groups_ not registered yet (add_param_group's
  // too): the options and tensors checked first, nothing changed (Bindings::scan);
  // then the core gets the new groups and parameters and their dtype's engine
  // a job each (Engines::add). A failure part-way leaves the earlier ones
  // registered (valid), naming the one that is not.
  void register_new_params() {
    for (std::size_t g = 0; g < param_groups_.size(); ++g) options_of(g).group_options();
    Bindings::Scan scan = bindings_.scan(param_groups_, registered_);
    for (const Binding& b : scan.added) {  // one splits and one heads entry per tensor at most
      entry_for(hybrid_.splits, b, "splits");
      entry_for(hybrid_.heads, b, "heads");
    }
    for (std::size_t g = core_.group_count(); g < param_groups_.size(); ++g) {
      const GroupOptions o = options_of(g).group_options();
      core_.add_group(o.muon, o.adamw);
    }
    registered_.resize(param_groups_.size(), 0);
    for (const Place& place : scan.places) {
      if (place.tied_to)
        bindings_.add_alias(place);
      else
        add_param(std::move(scan.added[place.fresh]));
      registered_[place.group] = place.index + 1;
    }
  }

  // One new parameter: the core's record, then a job of its dtype's engine
  // (all or nothing: the core's record is undone when the engine refuses).
  void add_param(Binding b) {
    const Tensor& p = param_groups_[b.group].params()[b.index];
    ParamOptions po;
    po.group = b.group;
    po.route = options_of(b.group).route();
    if (const auto* split = entry_for(hybrid_.splits, b, "splits")) po.split = *split;
    if (const auto* heads = entry_for(hybrid_.heads, b, "heads")) po.heads = *heads;
    route_tied(b, p, hybrid_.rules, po);
    bindings_.all().push_back(std::move(b));  // undone when the registration fails
    Binding& added = bindings_.all().back();
    try {
      added.job = engines_.add(core_, p, added.name, po, threads());
    } catch (...) {
      bindings_.all().pop_back();
      throw;
    }
  }

  // libtorch-side options -> the core's groups (every group checked before
  // any changes), the engines' state following a change of variant.
  void push_options() {
    std::vector<GroupOptions> next;
    for (std::size_t g = 0; g < param_groups_.size(); ++g)
      next.push_back(options_of(g).group_options());
    for (std::size_t g = 0; g < next.size(); ++g) core_.set_group_options(std::move(next[g]), g);
    engines_.each([this](auto& e) { e.follow_variants(core_); });
  }

  // Points every engine's jobs at this step's tensors: the parameter where
  // it is now (libtorch's set_data may have moved it: the core checks the
  // new memory), the gradient (in the parameter's layout) or none.
  void bind_tensors() {
    grad_copies_.clear();
    for (std::size_t i = 0; i < bindings_.size(); ++i) {
      Binding& b = bindings_[i];
      Bindings::check_places(param_groups_, b);
      const Tensor& p = param_groups_[b.group].params()[b.index];
      tensors::check_param(p, b.name);
      if (p.scalar_type() != b.dtype)
        detail::fail("param", "'" + b.name + "' changed dtype from " +
                                  tensors::dtype_name(b.dtype) + " to " +
                                  tensors::dtype_name(p.scalar_type()));
      Tensor grad = p.grad();
      if (grad.defined()) {
        tensors::check_grad(p, grad, b.name);
        grad = tensors::in_param_layout(p, grad);
        if (!grad.is_same(p.grad())) grad_copies_.push_back(grad);  // kept until the step ends
      }
      engines_.bind(core_, i, b.job, b.name, p, p.data_ptr() != b.data, grad);
      b.data = p.data_ptr();
    }
  }

  // ---- checkpoint helpers ------------------------------------------------------------

  // Before a save (const in libtorch): new parameters registered, the core
  // given the libtorch-side options as they are now (what a step would use).
  void synchronize() const {
    BasicMuon& self = const_cast<BasicMuon&>(*this);
    self.register_new_params();
    self.push_options();
  }

  Engines::Dtypes single_dtype(const char* what) const {
    const std::size_t n = engines_.count();
    if (n != 1)
      detail::fail(what, "needs parameters of one dtype (this optimizer has " + std::to_string(n) +
                             " dtypes: torch::save holds them all)");
    return engines_.checkpoint_dtypes();
  }

  // The core's checkpoint with every buffer in dtypes.first.
  void write_state(std::ostream& os, Engines::Dtypes dtypes) const {
    core_.save(os, dtypes.first, dtypes.second, [&](std::size_t i, checkpoint::Writer& w) {
      engines_.write_buffers(w, bindings_[i].dtype, bindings_[i].job, core_.buffer_names(i),
                             dtypes.first);
    });
  }

  // Restores a checkpoint: matched by the core, decoded by every engine
  // aside, then adopted by all (nothing changes when anything fails); the
  // libtorch side follows the checkpoint's options.
  void read_state(std::istream& is, const LoadOptions& options, const std::string& origin,
                  checkpoint::Dtype buffers) {
    optim::Core::Matched m = core_.match(is, buffers, options, origin);
    engines_.load(core_, m);  // every engine decodes aside, then all adopt
    core_.commit(m);
    for (std::size_t g = 0; g < param_groups_.size(); ++g)
      options_of(g).set_group_options(core_.group(g));
  }

  optim::Core core_;
  HybridOptions hybrid_;
  Engines engines_;                      // one per dtype present
  Bindings bindings_;                    // core parameter i is bindings_[i]
  std::vector<std::size_t> registered_;  // per group: places registered
  std::vector<Tensor> grad_copies_;      // this step's gradients, in their parameters' layout
  std::vector<int> flags_;               // the step's checks, per parameter
  bool metrics_on_ = false;
  std::function<void(const StepMetrics&)> hook_;
  StepMetrics metrics_;
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
