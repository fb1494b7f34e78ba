// SPDX-License-Identifier: MIT
#pragma once
/// \file optimizer.hpp
/// \brief The hybrid Muon + AdamW optimizer over the caller's own memory:
/// parameter registry, groups, routing, step, metrics and checkpoints.
///
///     float W[64 * 32], dW[64 * 32], b[64], db[64];
///     muon::Optimizer<float> opt;                         // torch.optim.Muon defaults
///     opt.add_param("fc.weight", {W, {64, 32}}, {dW, {64, 32}});   // -> Muon
///     opt.add_param("fc.bias", {b, {64}}, {db, {64}});             // -> AdamW
///     ... fill dW, db ...
///     opt.step();
///
/// Parameters and gradients are non-owning ParamViews (row-major like
/// PyTorch). Every 2-D view is the (out, in) matrix Muon orthogonalizes; a
/// conv filter (out, in, kh, kw) is the (out, in*kh*kw) matrix; a 3-D tensor
/// (b, r, c) is a batch of b matrices r x c orthogonalized one by one; an
/// optional `split` orthogonalizes row blocks (e.g. fused QKV) separately.
///
/// All buffers (momentum, AdamW moments, Newton–Schulz workspaces) are made
/// when a parameter is registered: step() performs no heap allocation
/// (metrics, when first switched on, allocate their scratch once).

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <istream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "adamw.hpp"
#include "backend/eigen.hpp"
#include "checkpoint.hpp"
#include "coefficients.hpp"
#include "detail/eigen_products.hpp"
#include "error.hpp"
#include "lr_schedule.hpp"
#include "momentum.hpp"
#include "newton_schulz.hpp"
#include "orthogonalize.hpp"
#include "policy.hpp"
#include "scalar.hpp"
#include "update.hpp"

namespace muon {

/// What step() does with a parameter whose gradient holds NaN or Inf.
enum class NonFinitePolicy {
  raise,  ///< throw muon::Error naming it; nothing at all is updated (default)
  skip    ///< leave that parameter (and its state) untouched, update the others
};

/// A non-owning view of a tensor in caller memory: up to 4 dimensions,
/// row-major (the last index moves fastest, as in PyTorch). A 2-D view may
/// have a row stride larger than its column count (a sub-matrix or padded
/// rows); other ranks must be contiguous. A null `data` means "absent"
/// (a gradient that does not exist this step).
template <class T>
struct ParamView {
  using Index = Eigen::Index;
  using MatrixMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                               Eigen::Unaligned, Eigen::OuterStride<>>;

  T* data = nullptr;
  /// Number of dimensions, 0 (a scalar) to 4.
  int ndim = 0;
  /// Sizes of the first `ndim` dimensions.
  std::array<Index, 4> shape{{0, 0, 0, 0}};
  /// 2-D only: elements between the starts of consecutive rows; 0 means
  /// contiguous (= shape[1]).
  Index row_stride = 0;

  ParamView() = default;
  /// A contiguous row-major tensor of the given shape (at most 4 sizes).
  ParamView(T* ptr, std::initializer_list<Index> dims) : data(ptr) {
    detail::require(dims.size() <= 4, "shape", "at most 4 dimensions are supported");
    for (Index d : dims) shape[static_cast<std::size_t>(ndim++)] = d;
  }
  /// A rows x cols row-major matrix whose rows start `stride` elements apart.
  static ParamView matrix(T* ptr, Index rows, Index cols, Index stride = 0) {
    ParamView v(ptr, {rows, cols});
    v.row_stride = stride;
    return v;
  }
  /// A gradient that is absent (the parameter is skipped while it is).
  static ParamView absent() { return ParamView(); }

  bool present() const { return data != nullptr; }

  /// Product of the sizes (1 for a scalar).
  Index numel() const {
    Index n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[static_cast<std::size_t>(i)];
    return n;
  }
  /// Rows of the matrix Muon sees: out for 2-D and 4-D, b*r for 3-D (the
  /// batch stacked), 1 for vectors and scalars.
  Index matrix_rows() const {
    switch (ndim) {
      case 2:
        return shape[0];
      case 3:
        return shape[0] * shape[1];
      case 4:
        return shape[0];
      default:
        return 1;
    }
  }
  /// Columns of that matrix: in for 2-D, c for 3-D, in*kh*kw for 4-D.
  Index matrix_cols() const {
    switch (ndim) {
      case 0:
        return 1;
      case 1:
        return shape[0];
      case 2:
        return shape[1];
      case 3:
        return shape[2];
      default:
        return shape[1] * shape[2] * shape[3];
    }
  }
  Index outer_stride() const { return row_stride > 0 ? row_stride : matrix_cols(); }

  /// The matrix view (matrix_rows x matrix_cols) as an Eigen::Map.
  MatrixMap matrix() const {
    return MatrixMap(data, matrix_rows(), matrix_cols(), Eigen::OuterStride<>(outer_stride()));
  }

  /// "(64, 3, 3, 3)".
  std::string shape_string() const {
    std::string s = "(";
    for (int i = 0; i < ndim; ++i) {
      if (i) s += ", ";
      s += std::to_string(shape[static_cast<std::size_t>(i)]);
    }
    return s + ")";
  }

  bool same_shape(const ParamView& o) const {
    if (ndim != o.ndim) return false;
    for (int i = 0; i < ndim; ++i)
      if (shape[static_cast<std::size_t>(i)] != o.shape[static_cast<std::size_t>(i)]) return false;
    return true;
  }
};

/// Options of one Muon parameter group. Defaults are torch.optim.Muon's.
struct MuonGroupOptions {
  /// Learning rate (before the shape adjustment). Default 1e-3. Finite, >= 0.
  double lr = 1e-3;
  /// Decoupled weight decay, multiplied by the UNadjusted lr. Default 0.1. Finite, >= 0.
  double weight_decay = 0.1;
  /// Momentum mu. Default 0.95. In [0, 1).
  double momentum = 0.95;
  /// Nesterov look-ahead as the Newton–Schulz input. Default true.
  bool nesterov = true;
  /// Buffer recurrence (ema = torch's lerp; sum = Moonlight/Dion). Default ema.
  MomentumKind momentum_kind = MomentumKind::ema;
  /// Newton–Schulz options. Default: Jordan quintic, 5 steps, eps 1e-7 with
  /// torch's X / max(||X||_F, eps) (EpsMode::max).
  NewtonSchulzOptions ns = torch_newton_schulz();
  /// Shape rule for the lr (see update.hpp). Default original: sqrt(max(1, out/in)).
  LrAdjust adjust_lr = LrAdjust::original;
  /// A user rule (lr, out, in) -> adjusted lr; when set it replaces adjust_lr.
  /// It cannot be stored in a checkpoint (see Optimizer::load).
  LrAdjustFn adjust_lr_fn;
  /// Decay only where update and parameter share a sign. Default false.
  bool cautious_weight_decay = false;

  MuonGroupOptions& with_lr(double v) {
    lr = v;
    return *this;
  }
  MuonGroupOptions& with_weight_decay(double v) {
    weight_decay = v;
    return *this;
  }
  MuonGroupOptions& with_momentum(double v) {
    momentum = v;
    return *this;
  }
  MuonGroupOptions& with_nesterov(bool v) {
    nesterov = v;
    return *this;
  }
  MuonGroupOptions& with_momentum_kind(MomentumKind k) {
    momentum_kind = k;
    return *this;
  }
  MuonGroupOptions& with_ns(NewtonSchulzOptions o) {
    ns = std::move(o);
    return *this;
  }
  MuonGroupOptions& with_ns_steps(int n) {
    ns.steps = n;
    return *this;
  }
  MuonGroupOptions& with_adjust_lr(LrAdjust r) {
    adjust_lr = r;
    adjust_lr_fn = nullptr;
    return *this;
  }
  MuonGroupOptions& with_adjust_lr(LrAdjustFn f) {
    adjust_lr_fn = std::move(f);
    return *this;
  }
  MuonGroupOptions& with_cautious_weight_decay(bool v) {
    cautious_weight_decay = v;
    return *this;
  }

  /// Throws muon::Error naming the field when an option is out of range.
  void validate() const {
    detail::require(std::isfinite(lr) && lr >= 0.0, "lr", "must be finite and >= 0");
    detail::require(std::isfinite(weight_decay) && weight_decay >= 0.0, "weight_decay",
                    "must be finite and >= 0");
    momentum_options(momentum).validate();
    ns.validate();
    detail::require(adjust_lr == LrAdjust::original || adjust_lr == LrAdjust::match_rms_adamw ||
                        adjust_lr == LrAdjust::spectral || adjust_lr == LrAdjust::none,
                    "adjust_lr", "is not an LrAdjust value");
  }

  MomentumOptions momentum_options(double mu) const {
    MomentumOptions m;
    m.momentum = mu;
    m.nesterov = nesterov;
    m.kind = momentum_kind;
    return m;
  }

  /// Jordan quintic, 5 steps, eps 1e-7 as max(norm, eps): torch.optim.Muon.
  static NewtonSchulzOptions torch_newton_schulz() {
    NewtonSchulzOptions o;
    o.eps_mode = EpsMode::max;
    return o;
  }
};

/// Per-parameter registration choices.
struct ParamOptions {
  /// Explicit route; automatic applies RoutingRules. An explicit choice always wins.
  Route route = Route::automatic;
  /// Parameter group index (0 = the group given to the constructor).
  std::size_t group = 0;
  /// Muon only, 2-D or 4-D: sizes of row blocks orthogonalized separately
  /// (e.g. {d, d, d} for fused QKV rows). Must sum to the out dimension.
  /// Each block's lr is adjusted by its own (block rows, in) shape.
  std::vector<Eigen::Index> split;
};

enum class StepStatus {
  ok,       ///< every parameter was updated
  partial,  ///< some were skipped (no gradient, or non-finite under NonFinitePolicy::skip)
  nothing   ///< none was updated
};

enum class SkipReason { no_grad, non_finite_grad };

struct SkippedParam {
  std::string_view name;  ///< valid while the optimizer lives
  SkipReason reason;
};

/// What step() did. Returned by reference to a member reused every step, so
/// producing it allocates nothing; valid until the next step().
struct StepReport {
  StepStatus status = StepStatus::nothing;
  std::int64_t step = 0;    ///< the optimizer's step count after this step
  std::size_t updated = 0;  ///< parameters updated
  std::vector<SkippedParam> skipped;
};

/// Post-step numbers for one parameter (NaN where not applicable).
struct ParamMetrics {
  std::string_view name;
  Route route = Route::automatic;
  bool updated = false;
  double grad_norm = NAN;      ///< ||g||_F
  double momentum_norm = NAN;  ///< ||m||_F (Muon) or ||exp_avg||_F (AdamW)
  double update_rms = NAN;     ///< RMS of the orthogonalized update O, before the lr (Muon)
  double orthogonality_error =
      NAN;                     ///< max over blocks of ||O O^T - I||_F on the smaller side (Muon)
  double spectral_norm = NAN;  ///< power-iteration estimate of ||W||_2 (Muon; stacked for batches)
};

struct StepMetrics {
  std::int64_t step = 0;
  double lr_factor = 1.0;  ///< the schedule's factor used this step
  std::vector<ParamMetrics> params;
};

/// The hybrid optimizer: Muon for matrices, AdamW for everything else.
///
/// T is the storage scalar of the parameters and gradients (float, double,
/// Eigen::bfloat16, Eigen::half); B the scalar of every optimizer buffer
/// (default compute_t<T>: fp32 for bf16/half parameters).
///
/// Not thread-safe: one optimizer per thread, any number of optimizers.
template <class T, class B = compute_t<T>>
class Optimizer {
 public:
  using Index = Eigen::Index;
  using View = ParamView<T>;
  using Buffer = Eigen::Matrix<B, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  /// Group 0 gets `muon` for Muon-routed and `adamw` for AdamW-routed parameters.
  explicit Optimizer(MuonGroupOptions muon = {}, AdamWOptions adamw = {}) {
    add_group(std::move(muon), adamw);
  }

  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;
  Optimizer(Optimizer&&) = default;
  Optimizer& operator=(Optimizer&&) = default;

  // ---- groups and options ---------------------------------------------------

  /// Adds a parameter group; returns its index. Throws muon::Error for invalid options.
  std::size_t add_group(MuonGroupOptions muon, AdamWOptions adamw = {}) {
    muon.validate();
    adamw.validate();
    groups_.push_back(Group{std::move(muon), adamw});
    return groups_.size() - 1;
  }
  std::size_t group_count() const { return groups_.size(); }
  const MuonGroupOptions& muon_options(std::size_t group = 0) const {
    return groups_.at(checked_group(group)).muon;
  }
  const AdamWOptions& adamw_options(std::size_t group = 0) const {
    return groups_.at(checked_group(group)).adamw;
  }
  void set_muon_options(const MuonGroupOptions& o, std::size_t group = 0) {
    checked_group(group);
    o.validate();
    groups_[group].muon = o;
  }
  void set_adamw_options(const AdamWOptions& o, std::size_t group = 0) {
    checked_group(group);
    o.validate();
    groups_[group].adamw = o;
  }

  /// Sets a numeric option of a group by name (as a Python config would):
  /// lr, weight_decay, momentum, nesterov (0/1), ns_steps, ns_eps,
  /// cautious_weight_decay (0/1), adamw_lr, adamw_beta1, adamw_beta2,
  /// adamw_eps, adamw_weight_decay. Unknown keys and invalid values throw
  /// muon::Error; the group is then unchanged.
  void set_option(const std::string& key, double value, std::size_t group = 0) {
    checked_group(group);
    Group g = groups_[group];
    auto flag = [&](const char* k) {
      detail::require(value == 0.0 || value == 1.0, k, "must be 0 or 1");
      return value == 1.0;
    };
    if (key == "lr")
      g.muon.lr = value;
    else if (key == "weight_decay")
      g.muon.weight_decay = value;
    else if (key == "momentum")
      g.muon.momentum = value;
    else if (key == "nesterov")
      g.muon.nesterov = flag("nesterov");
    else if (key == "ns_steps") {
      detail::require(
          std::isfinite(value) && value == std::floor(value) && value >= 0 && value < 100,
          "ns_steps", "must be an integer in [0, 100)");
      g.muon.ns.steps = static_cast<int>(value);
    } else if (key == "ns_eps")
      g.muon.ns.eps = value;
    else if (key == "cautious_weight_decay")
      g.muon.cautious_weight_decay = flag("cautious_weight_decay");
    else if (key == "adamw_lr")
      g.adamw.lr = value;
    else if (key == "adamw_beta1")
      g.adamw.beta1 = value;
    else if (key == "adamw_beta2")
      g.adamw.beta2 = value;
    else if (key == "adamw_eps")
      g.adamw.eps = value;
    else if (key == "adamw_weight_decay")
      g.adamw.weight_decay = value;
    else
      throw Error("option: unknown numeric option '" + key + "'");
    validate_option(key, g);
    groups_[group] = std::move(g);
  }
  /// Sets a named option of a group: adjust_lr (original, match_rms_adamw,
  /// spectral, spectral_unclamped, none), ns_coefficients (jordan, cubic,
  /// quintic, polar_express), momentum_kind (ema, sum), ns_eps_mode (add, max).
  void set_option(const std::string& key, const std::string& value, std::size_t group = 0) {
    checked_group(group);
    Group g = groups_[group];
    if (key == "adjust_lr") {
      g.muon.adjust_lr = lr_adjust_from_name(value);
      g.muon.adjust_lr_fn = nullptr;
    } else if (key == "ns_coefficients") {
      try {
        g.muon.ns.schedule = Schedule::by_name(value);
      } catch (const Error& e) {
        throw Error("ns_coefficients: " + std::string(e.what()).substr(6));
      }
    } else if (key == "momentum_kind") {
      detail::require(value == "ema" || value == "sum", "momentum_kind", "must be ema or sum");
      g.muon.momentum_kind = value == "ema" ? MomentumKind::ema : MomentumKind::sum;
    } else if (key == "ns_eps_mode") {
      detail::require(value == "add" || value == "max", "ns_eps_mode", "must be add or max");
      g.muon.ns.eps_mode = value == "add" ? EpsMode::add : EpsMode::max;
    } else {
      throw Error("option: unknown named option '" + key + "'");
    }
    validate_option(key, g);
    groups_[group] = std::move(g);
  }
  void set_option(const std::string& key, const char* value, std::size_t group = 0) {
    set_option(key, std::string(value), group);
  }

  void set_non_finite_policy(NonFinitePolicy p) { policy_ = p; }

  /// Threads each Newton–Schulz workspace may use (0, the default:
  /// muon::default_threads()). Applies to parameters added afterwards. A
  /// workspace starts its own threads, and only for large shapes; with many
  /// large matrices, 1 keeps the thread count down.
  void set_ns_threads(int threads) {
    detail::require(threads >= 0, "ns_threads", "must be >= 0");
    ns_threads_ = threads;
  }
  NonFinitePolicy non_finite_policy() const { return policy_; }

  /// Replaces the routing rules. Only before the first add_param (routes are
  /// decided at registration); throws muon::Error otherwise.
  void set_routing_rules(RoutingRules rules) {
    detail::require(params_.empty(), "routing rules",
                    "must be set before the first parameter is added");
    rules_ = std::move(rules);
  }
  const RoutingRules& routing_rules() const { return rules_; }

  /// Multiplies every group's lr (Muon and AdamW) by schedule.factor(k) at
  /// the k-th step (0-based: the step count before the step).
  void set_lr_schedule(const LrSchedule& s) {
    s.validate();
    schedule_ = s;
  }
  void clear_lr_schedule() { schedule_.reset(); }
  /// Replaces every Muon group's momentum by warmup.at(k) at the k-th step.
  void set_momentum_warmup(const MomentumWarmup& w) {
    w.validate();
    warmup_ = w;
  }
  void clear_momentum_warmup() { warmup_.reset(); }

  // ---- parameters -------------------------------------------------------------

  /// Registers a parameter. `grad` may be absent (ParamView::absent()) and
  /// set later with set_grad. Allocates all of the parameter's buffers and
  /// workspaces now. Throws muon::Error for a duplicate or empty name, a null
  /// or empty parameter, a gradient of another shape, a bad row stride, a bad
  /// group index or split; the optimizer is then unchanged.
  void add_param(const std::string& name, View param, View grad, const ParamOptions& options) {
    detail::require(!name.empty(), "name", "must not be empty");
    detail::require(index_.find(name) == index_.end(), "name",
                    "a parameter named '" + name + "' is already registered");
    check_view(param, name, "param");
    detail::require(param.data != nullptr, "param", "'" + name + "' has a null data pointer");
    if (grad.present()) check_grad(param, grad, name);
    checked_group(options.group);
    detail::require(options.route == Route::automatic || options.route == Route::muon ||
                        options.route == Route::adamw,
                    "route", "is not a Route value");

    auto p = std::make_unique<Param>();
    p->name = name;
    p->param = param;
    p->grad = grad;
    p->group = options.group;
    decide_route(*p, options.route);
    p->rows = param.matrix_rows();
    p->cols = param.matrix_cols();
    if (!options.split.empty()) {
      detail::require(p->route == Route::muon, "split", "applies to Muon-routed parameters only");
      detail::require(param.ndim == 2 || param.ndim == 4, "split",
                      "applies to 2-D matrices and 4-D filters only");
      Index total = 0;
      for (Index s : options.split) {
        detail::require(s > 0, "split", "block sizes must be positive");
        total += s;
      }
      detail::require(total == p->rows, "split",
                      "block sizes sum to " + std::to_string(total) + ", not the " +
                          std::to_string(p->rows) + " rows of '" + name + "'");
      p->block_rows = options.split;
      p->reason += ", split into " + std::to_string(options.split.size()) + " row blocks";
    } else if (p->route == Route::muon && param.ndim == 3) {
      p->block_rows.assign(static_cast<std::size_t>(param.shape[0]), param.shape[1]);
    } else {
      p->block_rows.assign(1, p->rows);
    }
    allocate(*p);

    index_.emplace(name, params_.size());
    params_.push_back(std::move(p));
    report_.skipped.reserve(params_.size());
    metrics_.params.resize(params_.size());
  }
  void add_param(const std::string& name, View param, View grad, Route route = Route::automatic,
                 std::size_t group = 0) {
    ParamOptions o;
    o.route = route;
    o.group = group;
    add_param(name, param, grad, o);
  }

  /// Points a parameter at this step's gradient (shape must match).
  void set_grad(const std::string& name, View grad) {
    Param& p = find(name);
    if (grad.present()) check_grad(p.param, grad, name);
    p.grad = grad;
  }
  /// Marks a parameter's gradient absent: step() skips it entirely.
  void clear_grad(const std::string& name) { find(name).grad = View(); }
  void clear_grads() {
    for (auto& p : params_) p->grad = View();
  }

  std::size_t param_count() const { return params_.size(); }
  bool has_param(const std::string& name) const { return index_.count(name) != 0; }
  /// Names in registration order.
  std::vector<std::string> param_names() const {
    std::vector<std::string> names;
    for (const auto& p : params_) names.push_back(p->name);
    return names;
  }
  Route route(const std::string& name) const { return find(name).route; }
  /// Steps this parameter has taken (AdamW's bias-correction t).
  std::int64_t param_steps(const std::string& name) const { return find(name).steps; }
  /// Steps the optimizer has taken (schedules read this, 0-based, before the step).
  std::int64_t step_count() const { return step_count_; }

  /// The Muon momentum buffer (matrix view shape). Throws for AdamW parameters.
  const Buffer& momentum_buffer(const std::string& name) const {
    const Param& p = find(name);
    detail::require(p.route == Route::muon, "name", "'" + name + "' is not Muon-routed");
    return p.first;
  }
  /// AdamW's first and second moments. Throw for Muon parameters.
  const Buffer& exp_avg(const std::string& name) const {
    const Param& p = find(name);
    detail::require(p.route == Route::adamw, "name", "'" + name + "' is not AdamW-routed");
    return p.first;
  }
  const Buffer& exp_avg_sq(const std::string& name) const {
    const Param& p = find(name);
    detail::require(p.route == Route::adamw, "name", "'" + name + "' is not AdamW-routed");
    return p.second;
  }

  /// Route, reason, shape and lr scale of every parameter.
  RoutingReport routing() const {
    RoutingReport r;
    for (const auto& pp : params_) {
      const Param& p = *pp;
      RoutingEntry e;
      e.name = p.name;
      e.route = p.route;
      e.reason = p.reason;
      e.shape = p.param.shape_string();
      e.rows = p.route == Route::muon ? p.block_rows.front() : p.rows;
      e.cols = p.cols;
      e.group = p.group;
      if (p.route == Route::muon) {
        const MuonGroupOptions& g = groups_[p.group].muon;
        const double base = g.lr > 0 ? g.lr : 1.0;
        e.lr_scale = adjust(g, base, e.rows, e.cols) / base;
      }
      r.entries.push_back(std::move(e));
    }
    return r;
  }

  // ---- metrics ------------------------------------------------------------------

  /// Computes post-step metrics every step (off by default). Costs per Muon
  /// parameter: one symmetric rank-k product per block for the orthogonality
  /// error (m^2 n / 2 multiply-adds, about a tenth of Newton–Schulz), two
  /// power iterations on the parameter (4 numel) and a few norms; the scratch
  /// is allocated on the first step with metrics on.
  void enable_metrics(bool on = true) { metrics_on_ = on; }
  bool metrics_enabled() const { return metrics_on_; }
  /// Called after every step with the metrics (turns them on). An empty
  /// function removes the hook; when absent it costs nothing.
  void on_step(std::function<void(const StepMetrics&)> hook) {
    hook_ = std::move(hook);
    if (hook_) metrics_on_ = true;
  }
  /// The metrics of the last step (meaningful while metrics are on).
  const StepMetrics& metrics() const { return metrics_; }

  // ---- the step -------------------------------------------------------------------

  /// One optimizer step over every parameter that has a gradient.
  ///
  /// Checks all gradients first: with NonFinitePolicy::raise, a NaN/Inf
  /// gradient throws muon::Error naming the parameter and nothing is updated.
  /// A parameter without a gradient is skipped entirely (no decay, no
  /// momentum, its step count unchanged). Allocates nothing (metrics' scratch
  /// excepted, once).
  const StepReport& step() {
    const std::int64_t k = step_count_;
    const double lr_factor = schedule_ ? schedule_->factor(k) : 1.0;
    // (No detail::require on the hot path: its message string would allocate.)
    if (!(std::isfinite(lr_factor) && lr_factor >= 0.0))
      throw Error("lr_schedule: factor must be finite and >= 0");
    const bool warm = warmup_.has_value();
    const double warm_mu = warm ? warmup_->at(k) : 0.0;

    // Phase 1: read only. Decide every parameter's fate and its adjusted lrs.
    for (auto& pp : params_) {
      Param& p = *pp;
      p.fate = Fate::update;
      if (!p.grad.present()) {
        p.fate = Fate::no_grad;
        continue;
      }
      if (!all_finite(p.grad.matrix())) {
        if (policy_ == NonFinitePolicy::raise)
          throw Error("grad: '" + p.name + "' contains NaN or Inf (nothing was updated)");
        p.fate = Fate::non_finite;
        continue;
      }
      if (p.route == Route::muon) {
        const MuonGroupOptions& g = groups_[p.group].muon;
        for (std::size_t w = 0; w < p.ws_rows.size(); ++w)
          p.ws_lr[w] = adjust(g, g.lr * lr_factor, p.ws_rows[w], p.cols);
      }
    }

    // Phase 2: write.
    report_.skipped.clear();
    report_.updated = 0;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      Param& p = *params_[i];
      if (p.fate != Fate::update) {
        report_.skipped.push_back(
            {p.name, p.fate == Fate::no_grad ? SkipReason::no_grad : SkipReason::non_finite_grad});
        continue;
      }
      const Group& g = groups_[p.group];
      if (p.route == Route::muon)
        muon_update(p, g.muon, g.muon.lr * lr_factor, warm ? warm_mu : g.muon.momentum);
      else
        adamw_update(p, g.adamw, lr_factor);
      ++p.steps;
      ++report_.updated;
    }
    ++step_count_;
    report_.step = step_count_;
    report_.status = report_.skipped.empty()
                         ? (report_.updated > 0 ? StepStatus::ok : StepStatus::nothing)
                         : (report_.updated > 0 ? StepStatus::partial : StepStatus::nothing);
    if (metrics_on_) {
      metrics_.step = step_count_;
      metrics_.lr_factor = lr_factor;
      for (std::size_t i = 0; i < params_.size(); ++i)
        fill_metrics(*params_[i], metrics_.params[i]);
      if (hook_) hook_(metrics_);
    }
    return report_;
  }

  // ---- checkpoints -------------------------------------------------------------------

  /// Writes group options, step counts and every buffer (by parameter name,
  /// with shape and dtype) in the checkpoint format (docs/optimizer.md).
  /// Parameters themselves are not stored (as in torch's optimizer state).
  void save(std::ostream& os) const {
    checkpoint::Writer w;
    w.u8(static_cast<std::uint8_t>(checkpoint::dtype_of<T>()));
    w.u8(static_cast<std::uint8_t>(checkpoint::dtype_of<B>()));
    w.i64(step_count_);
    w.u32(static_cast<std::uint32_t>(groups_.size()));
    for (const Group& g : groups_) write_group(w, g);
    w.u32(static_cast<std::uint32_t>(params_.size()));
    for (const auto& pp : params_) {
      const Param& p = *pp;
      w.str(p.name);
      w.u8(static_cast<std::uint8_t>(p.route));
      w.u32(static_cast<std::uint32_t>(p.group));
      w.u8(static_cast<std::uint8_t>(p.param.ndim));
      for (int d = 0; d < p.param.ndim; ++d) w.i64(p.param.shape[static_cast<std::size_t>(d)]);
      w.u32(static_cast<std::uint32_t>(p.block_rows.size()));
      for (Index r : p.block_rows) w.i64(r);
      w.i64(p.steps);
      const bool muon = p.route == Route::muon;
      w.u32(muon ? 1u : 2u);
      write_buffer(w, muon ? "momentum_buffer" : "exp_avg", p.first);
      if (!muon) write_buffer(w, "exp_avg_sq", p.second);
    }
    checkpoint::write_envelope(os, w.bytes());
  }

  /// Restores what save() wrote into an optimizer with the same parameters
  /// (names, shapes, routes, groups, splits, buffer dtype). Group options are
  /// replaced by the checkpoint's; a group saved with a user adjust_lr_fn
  /// keeps this optimizer's function (it must have one). Throws muon::Error
  /// for a truncated or corrupt stream, a wrong version, an unknown or
  /// missing parameter or a mismatched shape; the optimizer is then exactly
  /// as before (everything is parsed and checked before anything is replaced).
  void load(std::istream& is) {
    const std::vector<unsigned char> payload = checkpoint::read_envelope(is);
    checkpoint::Reader r(payload.data(), payload.size());
    r.u8();  // the storage dtype is informational: buffers do not depend on it
    const std::uint8_t buffer_dtype = r.u8();
    detail::require(buffer_dtype == static_cast<std::uint8_t>(checkpoint::dtype_of<B>()),
                    "checkpoint",
                    std::string("buffer dtype differs from this optimizer's ") +
                        checkpoint::dtype_name(checkpoint::dtype_of<B>()));
    const std::int64_t step_count = r.i64();
    detail::require(step_count >= 0, "checkpoint", "negative step count");
    const std::uint32_t group_count = r.u32();
    detail::require(group_count == groups_.size(), "checkpoint",
                    "holds " + std::to_string(group_count) + " groups, the optimizer " +
                        std::to_string(groups_.size()));
    std::vector<Group> groups;
    for (std::uint32_t i = 0; i < group_count; ++i) groups.push_back(read_group(r, groups_[i]));

    const std::uint32_t count = r.u32();
    detail::require(count == params_.size(), "checkpoint",
                    "holds " + std::to_string(count) + " parameters, the optimizer " +
                        std::to_string(params_.size()));
    struct Loaded {
      Param* target;
      std::int64_t steps;
      Buffer first, second;
    };
    std::vector<Loaded> loaded;
    std::vector<bool> seen(params_.size(), false);
    for (std::uint32_t i = 0; i < count; ++i) {
      const std::string name = r.str("parameter name");
      const auto it = index_.find(name);
      detail::require(it != index_.end(), "checkpoint", "unknown parameter '" + name + "'");
      detail::require(!seen[it->second], "checkpoint", "parameter '" + name + "' appears twice");
      seen[it->second] = true;
      Param& p = *params_[it->second];
      const std::string where = "parameter '" + name + "': ";
      detail::require(r.u8() == static_cast<std::uint8_t>(p.route), "checkpoint",
                      where + "route differs");
      detail::require(r.u32() == p.group, "checkpoint", where + "group differs");
      const std::uint8_t ndim = r.u8();
      bool same = ndim == p.param.ndim;
      for (std::uint8_t d = 0; d < ndim && d < 4; ++d) same = r.i64() == p.param.shape[d] && same;
      detail::require(same, "checkpoint", where + "shape differs from " + p.param.shape_string());
      const std::uint32_t blocks = r.u32();
      detail::require(blocks == p.block_rows.size(), "checkpoint", where + "split differs");
      for (std::uint32_t b = 0; b < blocks; ++b)
        detail::require(r.i64() == p.block_rows[b], "checkpoint", where + "split differs");
      Loaded l{&p, r.i64(), Buffer(), Buffer()};
      detail::require(l.steps >= 0, "checkpoint", where + "negative step count");
      const bool muon = p.route == Route::muon;
      detail::require(r.u32() == (muon ? 1u : 2u), "checkpoint", where + "wrong buffer count");
      read_buffer(r, muon ? "momentum_buffer" : "exp_avg", p, l.first, where);
      if (!muon) read_buffer(r, "exp_avg_sq", p, l.second, where);
      loaded.push_back(std::move(l));
    }
    detail::require(r.remaining() == 0, "checkpoint", "trailing bytes after the last parameter");

    // Commit: nothing below throws.
    groups_.swap(groups);
    step_count_ = step_count;
    for (Loaded& l : loaded) {
      l.target->steps = l.steps;
      l.target->first.swap(l.first);
      if (l.target->route == Route::adamw) l.target->second.swap(l.second);
    }
  }

  void save_file(const std::string& path) const {
    std::ofstream os(path, std::ios::binary | std::ios::trunc);
    detail::require(static_cast<bool>(os), "path", "cannot open '" + path + "' for writing");
    save(os);
    os.close();
    detail::require(static_cast<bool>(os), "path", "writing '" + path + "' failed");
  }
  void load_file(const std::string& path) {
    std::ifstream is(path, std::ios::binary);
    detail::require(static_cast<bool>(is), "path", "cannot open '" + path + "' for reading");
    load(is);
  }

 private:
  using C = compute_t<B>;  // what Newton–Schulz computes in

  struct Group {
    MuonGroupOptions muon;
    AdamWOptions adamw;
  };
  enum class Fate { update, no_grad, non_finite };

  struct Param {
    std::string name;
    View param, grad;
    Route route = Route::automatic;
    std::string reason;
    std::size_t group = 0;
    Index rows = 0, cols = 0;           // the matrix view
    std::vector<Index> block_rows;      // rows of each block orthogonalized separately
    std::vector<std::size_t> block_ws;  // block -> index into workspaces
    std::vector<Index> ws_rows;         // one entry per distinct block height
    std::vector<double> ws_lr;          // this step's adjusted lr per distinct height
    std::vector<std::unique_ptr<Workspace<B>>> workspaces;
    Buffer first, second;  // Muon: momentum, update. AdamW: exp_avg, exp_avg_sq.
    std::int64_t steps = 0;
    Fate fate = Fate::update;
    // Metrics scratch, made on first use.
    std::vector<std::unique_ptr<detail::Syrk<C>>> syrk;
    std::vector<Matrix<C>> gram;
    Eigen::VectorXd power_u, power_v;
    double orth_error = NAN;
  };

  // Validates a group changed through set_option; the message names the key
  // the caller used ("adamw_eps", "ns_eps"), then the field's own complaint.
  static void validate_option(const std::string& key, const Group& g) {
    try {
      g.muon.validate();
      g.adamw.validate();
    } catch (const Error& e) {
      const std::string inner = std::string(e.what()).substr(6);  // drop "muon: "
      if (inner.compare(0, key.size(), key) == 0) throw;
      throw Error(key + ": " + inner);
    }
  }

  std::size_t checked_group(std::size_t g) const {
    detail::require(g < groups_.size(), "group",
                    "index " + std::to_string(g) + " out of range (" +
                        std::to_string(groups_.size()) + " groups)");
    return g;
  }

  Param& find(const std::string& name) {
    const auto it = index_.find(name);
    detail::require(it != index_.end(), "name", "no parameter named '" + name + "'");
    return *params_[it->second];
  }
  const Param& find(const std::string& name) const {
    return const_cast<Optimizer*>(this)->find(name);
  }

  static void check_view(const View& v, const std::string& name, const char* what) {
    detail::require(v.ndim >= 0 && v.ndim <= 4, what, "'" + name + "' must have 0 to 4 dimensions");
    Index n = 1;
    for (int i = 0; i < v.ndim; ++i) {
      const Index d = v.shape[static_cast<std::size_t>(i)];
      detail::require(d > 0, what,
                      "'" + name + "' is empty or has a negative size: shape " + v.shape_string());
      detail::require(n <= std::numeric_limits<Index>::max() / d, what,
                      "'" + name + "' has too many elements");
      n *= d;
    }
    detail::require(v.row_stride == 0 || (v.ndim == 2 && v.row_stride >= v.shape[1]), what,
                    "'" + name + "': a row stride needs a 2-D view and must be >= its columns");
  }
  static void check_grad(const View& param, const View& grad, const std::string& name) {
    check_view(grad, name, "grad");
    detail::require(param.same_shape(grad), "grad",
                    "'" + name + "' has shape " + grad.shape_string() + ", the parameter " +
                        param.shape_string());
  }

  void decide_route(Param& p, Route explicit_route) {
    std::array<std::ptrdiff_t, 4> shape{};
    for (std::size_t i = 0; i < shape.size(); ++i)
      shape[i] = static_cast<std::ptrdiff_t>(p.param.shape[i]);
    RouteDecision decision =
        muon::decide_route(p.name, p.param.ndim, shape, explicit_route, rules_);
    p.route = decision.route;
    p.reason = std::move(decision.reason);
  }

  void allocate(Param& p) {
    p.first = Buffer::Zero(p.rows, p.cols);
    p.second = Buffer::Zero(p.rows, p.cols);
    if (p.route != Route::muon) return;
    for (Index r : p.block_rows) {
      std::size_t w = 0;
      while (w < p.ws_rows.size() && p.ws_rows[w] != r) ++w;
      if (w == p.ws_rows.size()) {
        p.ws_rows.push_back(r);
        p.workspaces.push_back(std::make_unique<Workspace<B>>(r, p.cols, ns_threads_));
      }
      p.block_ws.push_back(w);
    }
    p.ws_lr.assign(p.ws_rows.size(), 0.0);
  }

  static double adjust(const MuonGroupOptions& g, double lr, Index out, Index in) {
    return g.adjust_lr_fn ? adjusted_lr(lr, out, in, g.adjust_lr_fn)
                          : adjusted_lr(lr, out, in, g.adjust_lr);
  }

  // Any storage scalar widened exactly to double (half/bfloat16 via float).
  template <class S>
  static double as_double(S v) {
    if constexpr (std::is_floating_point_v<S>)
      return static_cast<double>(v);
    else
      return static_cast<double>(static_cast<float>(v));
  }

  template <class M>
  static bool all_finite(const M& m) {
    for (Index i = 0; i < m.rows(); ++i)
      for (Index j = 0; j < m.cols(); ++j)
        if (!std::isfinite(as_double(m(i, j)))) return false;
    return true;
  }

  void muon_update(Param& p, const MuonGroupOptions& g, double lr, double mu) {
    // first = momentum buffer; second receives the NS input, then (in place) O.
    momentum_step(p.grad.matrix(), p.first, p.second, g.momentum_options(mu));
    auto W = p.param.matrix();
    p.orth_error = 0.0;
    Index r0 = 0;
    for (std::size_t b = 0; b < p.block_rows.size(); ++b) {
      const Index rows = p.block_rows[b];
      const std::size_t w = p.block_ws[b];
      auto O = p.second.middleRows(r0, rows);
      // One workspace per distinct block height: a 3-D batch loops over its
      // matrices with one workspace, as orthogonalize_batch does.
      orthogonalize_into(O, O, *p.workspaces[w], g.ns);
      if (metrics_on_) p.orth_error = std::max(p.orth_error, orthogonality_error(p, w));
      apply_muon_update(W.middleRows(r0, rows), O, lr, p.ws_lr[w], g.weight_decay,
                        g.cautious_weight_decay);
      r0 += rows;
    }
  }

  void adamw_update(Param& p, const AdamWOptions& base, double lr_factor) {
    AdamWOptions o = base;
    o.lr = base.lr * lr_factor;
    adamw_step(p.param.matrix(), p.grad.matrix(), p.first, p.second, p.steps + 1, o);
  }

  // ||X X^T - I||_F of the workspace's final (wide) iterate, which is the
  // block's update O: a symmetric rank-k product into the lower triangle.
  double orthogonality_error(Param& p, std::size_t w) {
    if (p.syrk.size() != p.workspaces.size()) {
      p.syrk.clear();
      p.gram.clear();
      for (const auto& ws : p.workspaces) {
        const Index m = std::min(ws->rows(), ws->cols()), n = std::max(ws->rows(), ws->cols());
        p.syrk.push_back(std::make_unique<detail::Syrk<C>>(m, n));
        p.gram.emplace_back(m, m);
      }
    }
    const Matrix<C>& X = p.workspaces[w]->iterate();
    Matrix<C>& G = p.gram[w];
    const Index m = X.rows();
    G.setZero();
    p.syrk[w]->run(X.data(), m, G.data(), m, C(1));
    double sum = 0;
    for (Index j = 0; j < m; ++j) {
      const double d = static_cast<double>(G(j, j)) - 1.0;
      sum += d * d;
      for (Index i = j + 1; i < m; ++i)
        sum += 2.0 * static_cast<double>(G(i, j)) * static_cast<double>(G(i, j));
    }
    return std::sqrt(sum);
  }

  template <class M>
  static double frobenius(const M& m) {
    double s = 0;
    for (Index i = 0; i < m.rows(); ++i)
      for (Index j = 0; j < m.cols(); ++j) {
        const double v = as_double(m(i, j));
        s += v * v;
      }
    return std::sqrt(s);
  }

  // Two power iterations on W^T W per step, continuing from the last step's
  // vector: cheap (4 numel flops) and converging as training proceeds.
  double spectral_estimate(Param& p) {
    const auto W = p.param.matrix();
    if (p.power_v.size() != p.cols) {
      p.power_v = Eigen::VectorXd::Constant(p.cols, 1.0 / std::sqrt(static_cast<double>(p.cols)));
      p.power_u.resize(p.rows);
    }
    double sigma = 0;
    for (int it = 0; it < 2; ++it) {
      for (Index i = 0; i < p.rows; ++i) {
        double s = 0;
        for (Index j = 0; j < p.cols; ++j) s += as_double(W(i, j)) * p.power_v(j);
        p.power_u(i) = s;
      }
      const double un = p.power_u.norm();
      if (!(un > 0) || !std::isfinite(un)) return un;
      p.power_u /= un;
      p.power_v.setZero();
      for (Index i = 0; i < p.rows; ++i)
        for (Index j = 0; j < p.cols; ++j) p.power_v(j) += as_double(W(i, j)) * p.power_u(i);
      sigma = p.power_v.norm();
      if (!(sigma > 0) || !std::isfinite(sigma)) return sigma;
      p.power_v /= sigma;
    }
    return sigma;
  }

  void fill_metrics(Param& p, ParamMetrics& m) {
    m = ParamMetrics();
    m.name = p.name;
    m.route = p.route;
    m.updated = p.fate == Fate::update;
    if (p.grad.present() && p.fate != Fate::non_finite) m.grad_norm = frobenius(p.grad.matrix());
    m.momentum_norm = static_cast<double>(p.first.template cast<double>().norm());
    if (p.route != Route::muon) return;
    if (m.updated) {
      m.update_rms = frobenius(p.second) / std::sqrt(static_cast<double>(p.second.size()));
      m.orthogonality_error = p.orth_error;
    }
    m.spectral_norm = spectral_estimate(p);
  }

  static void write_buffer(checkpoint::Writer& w, const char* name, const Buffer& b) {
    w.str(name);
    w.u8(static_cast<std::uint8_t>(checkpoint::dtype_of<B>()));
    w.u64(static_cast<std::uint64_t>(b.size()));
    for (Index i = 0; i < b.size(); ++i) w.scalar<B>(b.data()[i]);
  }

  static void read_buffer(checkpoint::Reader& r, const char* name, const Param& p, Buffer& out,
                          const std::string& where) {
    detail::require(r.str("buffer name") == name, "checkpoint",
                    where + "expected buffer '" + name + "'");
    detail::require(r.u8() == static_cast<std::uint8_t>(checkpoint::dtype_of<B>()), "checkpoint",
                    where + "buffer dtype differs");
    const std::uint64_t n = r.u64();
    detail::require(n == static_cast<std::uint64_t>(p.rows) * static_cast<std::uint64_t>(p.cols),
                    "checkpoint", where + "buffer size differs from the parameter's");
    r.require_items(n, sizeof(B), "buffer element");
    out.resize(p.rows, p.cols);
    // Values a step could not survive (NaN/Inf, a negative second moment)
    // mean a corrupt or foreign file; refuse them here rather than mid-step.
    const bool second_moment = std::string(name) == "exp_avg_sq";
    for (Index i = 0; i < out.size(); ++i) {
      const B v = r.scalar<B>();
      const double d = as_double(v);
      detail::require(std::isfinite(d) && (!second_moment || d >= 0.0), "checkpoint",
                      where + "buffer '" + name + "' holds an invalid value");
      out.data()[i] = v;
    }
  }

  static void write_group(checkpoint::Writer& w, const Group& g) {
    const MuonGroupOptions& m = g.muon;
    w.f64(m.lr);
    w.f64(m.weight_decay);
    w.f64(m.momentum);
    w.boolean(m.nesterov);
    w.u8(m.momentum_kind == MomentumKind::ema ? 0 : 1);
    w.boolean(m.cautious_weight_decay);
    w.u8(static_cast<std::uint8_t>(m.adjust_lr));
    w.boolean(static_cast<bool>(m.adjust_lr_fn));
    w.u32(static_cast<std::uint32_t>(m.ns.steps));
    w.f64(m.ns.eps);
    w.u8(m.ns.eps_mode == EpsMode::add ? 0 : 1);
    w.u8(static_cast<std::uint8_t>(m.ns.method));
    w.boolean(m.ns.norm_divisor.has_value());
    w.f64(m.ns.norm_divisor.value_or(0.0));
    w.str(m.ns.schedule.name());
    w.f64(m.ns.schedule.norm_divisor());
    w.u32(static_cast<std::uint32_t>(m.ns.schedule.rows().size()));
    for (const Coefficients& c : m.ns.schedule.rows()) {
      w.f64(c.a);
      w.f64(c.b);
      w.f64(c.c);
    }
    w.f64(g.adamw.lr);
    w.f64(g.adamw.beta1);
    w.f64(g.adamw.beta2);
    w.f64(g.adamw.eps);
    w.f64(g.adamw.weight_decay);
  }

  static Group read_group(checkpoint::Reader& r, const Group& current) {
    Group g;
    MuonGroupOptions& m = g.muon;
    m.lr = r.f64();
    m.weight_decay = r.f64();
    m.momentum = r.f64();
    m.nesterov = r.boolean("nesterov");
    const std::uint8_t kind = r.u8();
    detail::require(kind <= 1, "checkpoint", "unknown momentum kind");
    m.momentum_kind = kind == 0 ? MomentumKind::ema : MomentumKind::sum;
    m.cautious_weight_decay = r.boolean("cautious_weight_decay");
    const std::uint8_t rule = r.u8();
    detail::require(rule <= static_cast<std::uint8_t>(LrAdjust::none), "checkpoint",
                    "unknown adjust_lr rule");
    m.adjust_lr = static_cast<LrAdjust>(rule);
    if (r.boolean("adjust_lr_fn")) {
      detail::require(static_cast<bool>(current.muon.adjust_lr_fn), "checkpoint",
                      "a group was saved with a user adjust_lr_fn; set one on this optimizer's "
                      "group before loading");
      m.adjust_lr_fn = current.muon.adjust_lr_fn;
    }
    const std::uint32_t steps = r.u32();
    detail::require(steps < 100, "checkpoint", "ns steps out of range");
    m.ns.steps = static_cast<int>(steps);
    m.ns.eps = r.f64();
    const std::uint8_t mode = r.u8();
    detail::require(mode <= 1, "checkpoint", "unknown eps mode");
    m.ns.eps_mode = mode == 0 ? EpsMode::add : EpsMode::max;
    const std::uint8_t method = r.u8();
    detail::require(method <= static_cast<std::uint8_t>(NsMethod::gram), "checkpoint",
                    "unknown Newton-Schulz method");
    m.ns.method = static_cast<NsMethod>(method);
    const bool has_divisor = r.boolean("has_norm_divisor");
    const double divisor = r.f64();
    if (has_divisor) m.ns.norm_divisor = divisor;
    std::string name = r.str("schedule name", 256);
    const double schedule_divisor = r.f64();
    const std::uint32_t rows = r.u32();
    r.require_items(rows, 24, "schedule row");
    std::vector<Coefficients> coefficients(rows);
    for (Coefficients& c : coefficients) {
      c.a = r.f64();
      c.b = r.f64();
      c.c = r.f64();
    }
    m.ns.schedule = Schedule(std::move(coefficients), schedule_divisor, std::move(name));
    g.adamw.lr = r.f64();
    g.adamw.beta1 = r.f64();
    g.adamw.beta2 = r.f64();
    g.adamw.eps = r.f64();
    g.adamw.weight_decay = r.f64();
    try {
      m.validate();
      g.adamw.validate();
    } catch (const Error& e) {
      throw Error(std::string("checkpoint: invalid group options (") + e.what() + ")");
    }
    return g;
  }

  std::vector<Group> groups_;
  std::vector<std::unique_ptr<Param>> params_;
  std::map<std::string, std::size_t, std::less<>> index_;
  RoutingRules rules_;
  NonFinitePolicy policy_ = NonFinitePolicy::raise;
  int ns_threads_ = 0;
  std::optional<LrSchedule> schedule_;
  std::optional<MomentumWarmup> warmup_;
  bool metrics_on_ = false;
  std::function<void(const StepMetrics&)> hook_;
  StepReport report_;
  StepMetrics metrics_;
  std::int64_t step_count_ = 0;
};

}  // namespace muon
