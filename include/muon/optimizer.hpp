// SPDX-License-Identifier: MIT
#pragma once
/// \file optimizer.hpp
/// \brief muon::Optimizer<T>: the hybrid Muon + AdamW optimizer over the
/// caller's own CPU memory. A thin facade: the options, registry, schedules,
/// step decision and checkpoints are the backend-neutral optim::Core, its
/// method set optim::Front (shared with the CUDA, distributed and libtorch
/// facades); the state and the loops are one eigen::Engine
/// (backend/eigen/engine.hpp), one job per parameter.
///
///     float W[64 * 32], dW[64 * 32], b[64], db[64];
///     muon::Optimizer<float> opt;                         // torch.optim.Muon defaults
///     opt.add_param("fc.weight", {W, {64, 32}}, {dW, {64, 32}});   // -> Muon
///     opt.add_param("fc.bias", {b, {64}}, {db, {64}});             // -> AdamW
///     ... fill dW, db ...
///     opt.step();
///
/// Parameters and gradients are non-owning ParamViews (param_view.hpp):
/// row-major raw pointers like PyTorch's tensors, or Eigen objects of any
/// storage order (ParamView::from, or add_param with the Eigen objects). A
/// 2-D view is the (out, in) matrix Muon orthogonalizes; a conv filter (out,
/// in, kh, kw) is the (out, in*kh*kw) matrix; a 3-D tensor (b, r, c) is a
/// batch of b matrices r x c; an optional `split` orthogonalizes row blocks
/// (e.g. fused QKV) separately.
///
/// Memory: the momentum (Muon) or the two AdamW moments per parameter, plus
/// one Newton–Schulz workspace per distinct block shape, sharing one thread
/// pool, one pair of packing buffers per thread and one matrix arena sized
/// for the largest shape (2 m n + 4 m^2 compute scalars for its m x n, m <=
/// n; docs/optimizer.md, "Memory"). Matrices large enough to gain from
/// threads (m^2 n >= 3.2e7) are orthogonalized by all of them, one after
/// another; smaller ones run one per thread, side by side; both give
/// bitwise the same result. All of it is made when a parameter is
/// registered: step() allocates nothing (metrics' scratch once).

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <functional>
#include <istream>
#include <new>
#include <ostream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "backend/eigen/engine.hpp"
#include "backend/eigen/metrics.hpp"
#include "checkpoint.hpp"
#include "detail/atomic_file.hpp"
#include "error.hpp"
#include "optim/core.hpp"
#include "optim/front.hpp"
#include "optim/qk_clip.hpp"
#include "param_view.hpp"
#include "scalar.hpp"

namespace muon {

/// The hybrid optimizer: Muon for matrices, AdamW for everything else.
///
/// T is the storage scalar of the parameters and gradients (float, double,
/// Eigen::bfloat16, Eigen::half); B the scalar of every optimizer buffer
/// (default compute_t<T>: fp32 for bf16/half parameters). The shared method
/// set (groups, options, set_option, schedules, current_*, routing, registry
/// queries, last_report) is optim::Front's.
///
/// Not thread-safe: one optimizer per thread, any number of optimizers.
template <class T, class B = compute_t<T>>
class Optimizer : public optim::Front<Optimizer<T, B>> {
  using Front = optim::Front<Optimizer<T, B>>;
  friend Front;

 public:
  using Index = Eigen::Index;
  using View = ParamView<T>;
  using Engine = eigen::Engine<T, B>;
  using Buffer = typename Engine::Buffer;

  /// Group 0 gets `muon` for Muon-routed and `adamw` for AdamW-routed parameters.
  explicit Optimizer(MuonGroupOptions muon = {}, AdamWOptions adamw = {})
      : core_(std::move(muon), std::move(adamw)) {}

  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;
  Optimizer(Optimizer&&) = default;
  Optimizer& operator=(Optimizer&&) = default;

  using Front::qk_clip;

  // ---- the CPU's settings -------------------------------------------------------

  /// Threads the Newton–Schulz workspaces and the elementwise work may use
  /// (0, the default: muon::default_threads()). Applies to workspaces made
  /// afterwards (at registration of a new shape); they share one pool.
  void set_ns_threads(int threads) {
    if (threads < 0) detail::fail("ns_threads", "must be >= 0");
    engine_.set_threads(threads);
  }
  /// The product engine of the workspaces made afterwards:
  /// eigen::Products::automatic (BLAS in MUON_USE_BLAS builds, else Eigen),
  /// eigen, blas, or bf16 (bf16 factors, fp32 accumulation: x86-64 CPUs with
  /// AVX512-BF16, float compute only). Throws muon::Error for an engine this
  /// build, CPU or scalar cannot use.
  void set_ns_products(eigen::Products products) {
    if (!eigen::products_available(products))
      detail::fail("ns_products",
                   "this engine is not available (build option off, or the CPU lacks "
                   "AVX512-BF16)");
    if (products == eigen::Products::bf16 && !std::is_same_v<compute_t<B>, float>)
      detail::fail("ns_products", "bf16 products need float compute (T float, half or bfloat16)");
    engine_.set_products(products);
  }
  eigen::Products ns_products() const { return engine_.products(); }

  // ---- parameters -------------------------------------------------------------------

  /// Registers a parameter. `grad` may be absent (ParamView::absent()) and
  /// set later with set_grad. Allocates its buffers (and a workspace for a
  /// new block shape) now. Throws muon::Error for a duplicate or empty name,
  /// a null or empty parameter, memory that overlaps a registered
  /// parameter's (naming both), a gradient of another shape or layout, a
  /// bad stride, group index or split, or buffers that cannot be allocated;
  /// the optimizer is then unchanged.
  void add_param(const std::string& name, View param, View grad,
                 const ParamOptions& options = ParamOptions()) {
    check_param(param, name);
    if (grad.present()) check_grad(param, grad, name);
    std::size_t i = 0;
    try {
      i = core_.add_param(name, param.tensor_shape(), options, param.footprint(name));
    } catch (const std::bad_alloc&) {
      out_of_memory(name, param);
    }
    try {
      views_.reserve(i + 1);
      flags_.reserve(i + 1);
      metrics_.params.reserve(i + 1);
      typename Engine::Part part;
      part.param = i;
      part.param_memory = param.memory();
      part.grad_memory = grad.memory();
      engine_.add_job(core_, part);  // job i: all or nothing
      views_.push_back(param);       // reserved: cannot throw
      flags_.push_back(0);
      metrics_.params.emplace_back();
    } catch (const std::bad_alloc&) {
      core_.remove_last_param();
      out_of_memory(name, param);
    } catch (...) {
      core_.remove_last_param();
      throw;
    }
  }
  void add_param(const std::string& name, View param, View grad, Route route,
                 std::size_t group = 0) {
    ParamOptions o;
    o.route = route;
    o.group = group;
    add_param(name, param, grad, o);
  }
  /// Registers Eigen objects (a Matrix, Map, Ref or Block, any storage
  /// order) as a 2-D parameter and its gradient. The optimizer keeps views
  /// of their memory, so a temporary that owns its memory does not compile.
  template <class DP, class DG,
            class = std::enable_if_t<detail::is_eigen_object<DP>::value &&
                                     detail::is_eigen_object<DG>::value>>
  void add_param(const std::string& name, DP&& param, DG&& grad,
                 const ParamOptions& options = ParamOptions()) {
    static_assert(!detail::owning_temporary<DP>::value,
                  "muon::Optimizer::add_param keeps a view of the parameter's memory: pass an "
                  "lvalue (a Matrix, Map, Ref or Block that outlives the optimizer), not a "
                  "temporary");
    static_assert(!detail::owning_temporary<DG>::value,
                  "muon::Optimizer::add_param keeps a view of the gradient's memory: pass an "
                  "lvalue (a Matrix, Map, Ref or Block that outlives the optimizer), not a "
                  "temporary");
    add_param(name, View::from(param), View::from(grad), options);
  }

  /// Points a parameter at this step's gradient (shape and layout must match).
  void set_grad(const std::string& name, View grad) {
    const std::size_t i = core_.index(name);
    if (grad.present()) check_grad(views_[i], grad, name);
    engine_.set_grad(i, grad.memory());
  }
  template <class DG, class = std::enable_if_t<detail::is_eigen_object<DG>::value>>
  void set_grad(const std::string& name, DG&& grad) {
    static_assert(!detail::owning_temporary<DG>::value,
                  "muon::Optimizer::set_grad keeps a view of the gradient's memory until the "
                  "step: pass an lvalue (a Matrix, Map, Ref or Block that outlives the step), "
                  "not a temporary");
    set_grad(name, View::from(grad));
  }
  /// Points a registered parameter at other memory holding a tensor of the
  /// same shape and layout (libtorch's set_data); its optimizer state stays.
  /// Throws muon::Error naming "param" for a null pointer, another shape or
  /// layout, memory that overlaps another parameter's; nothing changes then.
  void set_param(const std::string& name, View param) {
    const std::size_t i = core_.index(name);
    check_param(param, name);
    if (param.tensor_shape() != views_[i].tensor_shape())
      detail::fail("param", "'" + name + "' has shape " + param.shape_string() +
                                ", registered as " + views_[i].shape_string());
    core_.set_param_memory(i, param.footprint(name));  // refused if another parameter's
    views_[i] = param;
    engine_.set_param(i, param.memory());
  }
  template <class DP, class = std::enable_if_t<detail::is_eigen_object<DP>::value>>
  void set_param(const std::string& name, DP&& param) {
    static_assert(!detail::owning_temporary<DP>::value,
                  "muon::Optimizer::set_param keeps a view of the parameter's memory: pass an "
                  "lvalue (a Matrix, Map, Ref or Block that outlives the optimizer), not a "
                  "temporary");
    set_param(name, View::from(param));
  }
  /// Marks a parameter's gradient absent: step() skips it entirely.
  void clear_grad(const std::string& name) { engine_.set_grad(core_.index(name), View()); }
  void clear_grads() { engine_.clear_grads(); }

  // ---- the state -------------------------------------------------------------------

  /// The Muon momentum buffer, in the parameter's memory layout (a
  /// column-major matrix's buffer is its transpose). Throws for AdamW parameters.
  const Buffer& momentum_buffer(const std::string& name) const {
    return engine_.buffer(routed(name, true, "is not Muon-routed"), 0);
  }
  /// The second moment of a Muon parameter under NorMuon (max(rows, cols)
  /// numbers per block, blocks in order: docs/muon_family.md) or AdaMuon
  /// (the momentum's layout). Throws for AdamW parameters and plain Muon.
  const Buffer& second_moment(const std::string& name) const {
    const std::size_t i = core_.index(name);
    if (!core_.param(i).muon() || core_.variant(i) == MuonVariant::muon)
      detail::fail("name", "'" + name + "' keeps no Muon second moment (variant " +
                               (core_.param(i).muon() ? "muon" : "AdamW route") + ")");
    return engine_.buffer(i, 1);
  }
  /// AdamW's first and second moments. Throw for Muon parameters.
  const Buffer& exp_avg(const std::string& name) const {
    return engine_.buffer(routed(name, false, "is not AdamW-routed"), 0);
  }
  const Buffer& exp_avg_sq(const std::string& name) const {
    return engine_.buffer(routed(name, false, "is not AdamW-routed"), 1);
  }

  /// Distinct Newton–Schulz block shapes, each with its workspace.
  std::size_t workspace_count() const { return engine_.workspace_count(); }
  /// Threads that orthogonalize the small matrices side by side (1: one after another).
  int threads_used_for_small() const { return engine_.threads_used_for_small(); }
  /// Bytes the workspaces hold (arena, packing, each extra thread's arena,
  /// the bf16 engine's packed operands).
  std::size_t workspace_bytes() const { return engine_.workspace_bytes(); }
  /// Bytes of the optimizer state: every momentum and moment buffer.
  std::size_t state_bytes() const { return engine_.state_bytes(); }

  // ---- metrics ----------------------------------------------------------------------

  /// Computes post-step metrics every step (off by default; metrics.hpp).
  /// Per Muon parameter: one symmetric rank-k product per block (about a
  /// tenth of Newton–Schulz), two power iterations and a few norms; the
  /// scratch is allocated on the first step with metrics on.
  void enable_metrics(bool on = true) { metrics_on_ = on; }
  bool metrics_enabled() const { return metrics_on_; }
  /// Called after every step with the metrics (turns them on); an empty
  /// function removes the hook. When absent it costs nothing.
  void on_step(std::function<void(const StepMetrics&)> hook) {
    hook_ = std::move(hook);
    if (hook_) metrics_on_ = true;
  }
  /// The metrics of the last step (meaningful while metrics are on).
  const StepMetrics& metrics() const { return metrics_; }

  // ---- the step -----------------------------------------------------------------------

  /// One step over every parameter that has a gradient: all of them are
  /// updated, or none. First, reading only, every update is checked (the
  /// gradient finite, the new momentum or moments finite in B, the updated
  /// parameter within T's range); the core decides: under
  /// NonFinitePolicy::raise a failed check throws muon::Error naming the
  /// parameter (the first in registration order; for one parameter, the
  /// first problem in SkipReason order) and nothing is updated; under skip
  /// that parameter is left untouched and reported. Then every other
  /// parameter is written; nothing can fail any more. A parameter without a
  /// gradient is skipped entirely (no decay, no momentum, its step count
  /// unchanged). The report stays valid until the next step or check.
  const StepReport& step() {
    run_checks();
    engine_.write(core_, metrics_on_);
    const StepReport& report = core_.finish_step();
    if (metrics_on_) {
      metrics_.step = report.step;
      metrics_.lr_factor = core_.plan().lr_factor;
      for (std::size_t i = 0; i < views_.size(); ++i) engine_.metrics(core_, i, metrics_.params[i]);
      if (hook_) hook_(metrics_);
    }
    return report;
  }

  /// The checks of step() without its writes: the report the next step
  /// would give, or the muon::Error it would throw under raise. Changes
  /// nothing; allocates nothing.
  const StepReport& check() {
    run_checks();
    return core_.end_report(false);
  }

  // ---- QK-Clip --------------------------------------------------------------------------

  /// QK-Clip after a step (optim/qk_clip.hpp; Kimi K2's MuonClip): scales
  /// the query and key rows of every head whose largest attention logit,
  /// `max_logits[h]` as the caller measured it, is above options.tau. All
  /// is checked before anything is written (plan_qk_clip names the
  /// problem); only the weights change. Allocates the plan.
  QkClipReport qk_clip(const QkClipHeads& heads, const double* max_logits, std::size_t count,
                       const QkClipOptions& options = QkClipOptions()) {
    const optim::QkClipPlan plan = optim::plan_qk_clip(core_, heads, max_logits, count, options);
    for (const optim::RowScaling& r : plan.scalings)
      Engine::scale_rows(views_[r.param], core_.param(r.param).shape.column_major, r.row, r.rows,
                         r.factor);
    return plan.report;
  }

  // ---- checkpoints -----------------------------------------------------------------------

  /// Writes group options, step counts and every buffer (by parameter name,
  /// with shape and dtype) in the checkpoint format every backend writes
  /// and reads (docs/optimizer.md). Parameters themselves are not stored.
  void save(std::ostream& os) const {
    core_.save(os, checkpoint::dtype_of<B>(), checkpoint::dtype_of<T>(),
               [this](std::size_t i, checkpoint::Writer& w) {
                 const auto& names = core_.buffer_names(i);
                 for (std::size_t b = 0; b < names.size(); ++b) {
                   const Buffer& buf = engine_.buffer(i, b);
                   optim::state_io::write_buffer(w, names[b], checkpoint::dtype_of<B>(),
                                                 std::uint64_t(buf.size()), buf.data());
                 }
               });
  }
  /// Restores what save() (of any backend, any rank count) wrote into an
  /// optimizer with the same parameters (names, or mapped by
  /// options.rename; shapes, routes, groups, splits, buffer dtype). Group
  /// options become the checkpoint's (a user adjust_lr_fn stays this
  /// optimizer's). Throws muon::Error listing every mismatch; the optimizer
  /// is then exactly as before.
  void load(std::istream& is, const LoadOptions& options = LoadOptions()) {
    load_from(is, options, "stream");
  }
  /// save() to `path`, atomically (a temporary file in the same directory,
  /// flushed, renamed over `path`): a crash never leaves a half-written
  /// file. Throws muon::Error (the previous file intact) when anything fails.
  void save_file(const std::string& path) const {
    detail::write_file_atomically(path, [this](std::ostream& os) { save(os); });
  }
  void load_file(const std::string& path, const LoadOptions& options = LoadOptions()) {
    std::ifstream is(path, std::ios::binary);
    if (!is) detail::fail("path", "cannot open '" + path + "' for reading");
    load_from(is, options, "'" + path + "'");
  }

 private:
  // optim::Front's access to the core and its hook.
  optim::Core& front_core() { return core_; }
  const optim::Core& front_core() const { return core_; }
  void front_group_changed(std::size_t) { engine_.follow_variants(core_); }

  [[noreturn]] static void out_of_memory(const std::string& name, const View& param) {
    detail::fail("param", "'" + name + "' " + param.shape_string() +
                              ": its optimizer state cannot be allocated (out of memory)");
  }
  static void check_param(const View& param, const std::string& name) {
    param.check(name, "param");
    if (!param.present()) detail::fail("param", "'" + name + "' has a null data pointer");
  }
  static void check_grad(const View& param, const View& grad, const std::string& name) {
    grad.check(name, "grad");
    if (param.tensor_shape() != grad.tensor_shape())
      detail::fail("grad", "'" + name + "' has shape " + grad.shape_string() + ", the parameter " +
                               param.shape_string());
  }
  std::size_t routed(const std::string& name, bool muon, const char* otherwise) const {
    const std::size_t i = core_.index(name);
    if (core_.param(i).muon() != muon) detail::fail("name", "'" + name + "' " + otherwise);
    return i;
  }

  // The step's phase 1: the engine's checks, the core's decision.
  void run_checks() {
    core_.begin_step();
    std::fill(flags_.begin(), flags_.end(), 0);
    engine_.check(core_, flags_);
    core_.decide(flags_, optim::step::StorageTypes{scalar_traits<B>::name, scalar_traits<T>::name});
  }

  void load_from(std::istream& is, const LoadOptions& options, const std::string& origin) {
    optim::Core::Matched m = core_.match(is, checkpoint::dtype_of<B>(), options, origin);
    typename Engine::Decoded decoded = engine_.decode(core_, m);  // aside: may throw
    engine_.adopt(std::move(decoded));                            // nothing below throws
    core_.commit(m);
  }

  optim::Core core_;
  Engine engine_;            // job i is parameter i, whole
  std::vector<View> views_;  // as registered (set_param), for shapes and QK-Clip
  std::vector<int> flags_;   // the checks' findings, per parameter
  bool metrics_on_ = false;
  std::function<void(const StepMetrics&)> hook_;
  StepMetrics metrics_;
};

}  // namespace muon
