// SPDX-License-Identifier: MIT
#pragma once
/// \file optimizer.hpp
/// \brief muon::Optimizer<T>: the hybrid Muon + AdamW optimizer over the
/// caller's own CPU memory. The options, registry, step sequencing and
/// checkpoints are the backend-neutral core (optim/core.hpp); this class
/// owns the buffers and runs the loops and Newton–Schulz on the Eigen
/// backend.
///
///     float W[64 * 32], dW[64 * 32], b[64], db[64];
///     muon::Optimizer<float> opt;                         // torch.optim.Muon defaults
///     opt.add_param("fc.weight", {W, {64, 32}}, {dW, {64, 32}});   // -> Muon
///     opt.add_param("fc.bias", {b, {64}}, {db, {64}});             // -> AdamW
///     ... fill dW, db ...
///     opt.step();
///
/// Parameters and gradients are non-owning ParamViews: row-major raw
/// pointers like PyTorch's tensors, or Eigen objects of any storage order
/// (ParamView::from, or add_param with the Eigen objects themselves). Every
/// 2-D view is the (out, in) matrix Muon orthogonalizes; a conv filter (out,
/// in, kh, kw) is the (out, in*kh*kw) matrix; a 3-D tensor (b, r, c) is a
/// batch of b matrices r x c orthogonalized one by one; an optional `split`
/// orthogonalizes row blocks (e.g. fused QKV) separately.
///
/// Memory: the momentum (Muon) or the two AdamW moments per parameter, plus
/// one Newton–Schulz workspace per distinct block shape; the workspaces run
/// one after another and share one thread pool, one pair of packing buffers
/// per thread and one matrix arena, sized for the largest shape
/// (2 m n + 4 m^2 compute scalars for its m x n, m <= n; see
/// docs/optimizer.md, "Memory").
///
/// Threads: a matrix large enough to gain from threads is orthogonalized by
/// all of them, one matrix after another; smaller ones (below m^2 n = 3.2e7,
/// Workspace::gains_from_threads) run one per thread, side by side, each
/// thread with its own small arena and workspaces, the matrices dealt to the
/// threads by cost (optim/balance.hpp). Both give bitwise the same result.
/// All of it is made when a parameter is registered: step() performs no heap
/// allocation (metrics, when first switched on, allocate their scratch
/// once).

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <istream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "backend/eigen/eigen_products.hpp"
#include "backend/eigen/workspace.hpp"
#include "checkpoint.hpp"
#include "detail/atomic_file.hpp"
#include "error.hpp"
#include "lr_schedule.hpp"
#include "newton_schulz.hpp"
#include "optim/balance.hpp"
#include "optim/core.hpp"
#include "optim/qk_clip.hpp"
#include "optim/rules.hpp"
#include "scalar.hpp"

namespace muon {

namespace detail {

template <class E, class = void>
struct owns_memory : std::false_type {};
template <class E>
struct owns_memory<E, std::void_t<typename E::PlainObject>>
    : std::is_base_of<Eigen::PlainObjectBase<typename E::PlainObject>, E> {};

/// True when an Eigen argument deduced as E (a forwarding reference's
/// parameter) is a temporary that owns its memory, a Matrix or Array
/// rvalue: a view of it dangles once the call returns. A temporary Map,
/// Block or Ref views memory that outlives it and is not one.
template <class E>
struct owning_temporary
    : std::integral_constant<bool, !std::is_lvalue_reference<E>::value &&
                                       owns_memory<std::decay_t<E>>::value> {};

template <class>
inline constexpr bool dependent_false = false;

}  // namespace detail

/// A non-owning view of a tensor in caller memory: up to 4 dimensions.
///
/// Raw pointers are read ROW-MAJOR (the last index moves fastest, as in
/// PyTorch): `{ptr, {out, in}}`. Eigen's matrices are COLUMN-major by
/// default, so never pass `{M.data(), {M.rows(), M.cols()}}` for an
/// `Eigen::MatrixXf M`: use ParamView::from(M) (or add_param(name, M, dM)),
/// which records the storage order. A 2-D view may have a stride larger than
/// its rows' (or columns') length: a sub-matrix or padded storage. Other
/// ranks must be contiguous. A null `data` means "absent" (a gradient that
/// does not exist this step).
template <class T>
struct ParamView {
  using Index = Eigen::Index;
  using MatrixMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                               Eigen::Unaligned, Eigen::OuterStride<>>;

  T* data = nullptr;
  /// Number of dimensions, 0 (a scalar) to 4.
  int ndim = 0;
  /// Sizes of the first `ndim` dimensions (logical: (out, in) for a matrix).
  std::array<Index, 4> shape{{0, 0, 0, 0}};
  /// 2-D only: elements between the starts of consecutive rows (row-major)
  /// or columns (column-major); 0 means contiguous.
  Index stride = 0;
  /// 2-D only: element (i, j) at i + j * stride (Eigen's default) instead
  /// of i * stride + j.
  bool column_major = false;

  ParamView() = default;
  /// A contiguous row-major tensor of the given shape (at most 4 sizes).
  ParamView(T* ptr, std::initializer_list<Index> dims) : data(ptr) {
    if (dims.size() > 4) detail::fail("shape", "at most 4 dimensions are supported");
    for (Index d : dims) shape[static_cast<std::size_t>(ndim++)] = d;
  }
  /// A rows x cols row-major matrix whose rows start `stride` elements apart.
  static ParamView matrix(T* ptr, Index rows, Index cols, Index stride = 0) {
    ParamView v(ptr, {rows, cols});
    v.stride = stride;
    return v;
  }
  /// A rows x cols column-major matrix whose columns start `stride` elements
  /// apart (0: rows).
  static ParamView col_major(T* ptr, Index rows, Index cols, Index stride = 0) {
    ParamView v(ptr, {rows, cols});
    v.stride = stride;
    v.column_major = true;
    return v;
  }
  /// The view of an Eigen matrix, map, block or Ref with scalar T and unit
  /// inner stride, in whichever storage order it has.
  template <class Derived>
  static ParamView from(const Eigen::DenseBase<Derived>& m) {
    static_assert(std::is_same<typename Derived::Scalar, T>::value,
                  "muon::ParamView<T>::from: the Eigen object's scalar must be T");
    static_assert((int(Eigen::internal::traits<Derived>::Flags) & Eigen::DirectAccessBit) != 0,
                  "muon::ParamView::from needs an Eigen object with direct memory access "
                  "(a Matrix, Map, Ref or Block of one), not an expression");
    static_assert((int(Eigen::internal::traits<Derived>::Flags) & Eigen::LvalueBit) != 0,
                  "muon::ParamView::from needs writable memory (not a Map of const)");
    auto& d = const_cast<Derived&>(m.derived());
    if (d.innerStride() != 1)
      detail::fail("view", "an Eigen object with an inner stride other than 1 is not supported");
    ParamView v(d.data(), {d.rows(), d.cols()});
    v.column_major = !Derived::IsRowMajor;
    v.stride = d.outerStride();
    return v;
  }
  /// A Matrix or Array temporary does not compile: the view would dangle.
  template <class Derived>
  static ParamView from(const Eigen::PlainObjectBase<Derived>&&) {
    static_assert(detail::dependent_false<Derived>,
                  "muon::ParamView::from keeps a view of the memory: pass an lvalue (a Matrix, "
                  "Map, Ref or Block that outlives the view), not a temporary");
    return ParamView();
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
  /// The core's description of this tensor.
  optim::TensorShape tensor_shape() const {
    optim::TensorShape s;
    s.ndim = ndim;
    for (int i = 0; i < ndim && i < 4; ++i)
      s.dims[static_cast<std::size_t>(i)] = shape[static_cast<std::size_t>(i)];
    s.column_major = column_major;
    return s;
  }
  /// The matrix the optimizer updates, as it lies in memory (row-major):
  /// out x in for 2-D (in x out for a column-major one), b*r x c for 3-D,
  /// out x in*kh*kw for 4-D, 1 x n for vectors and scalars.
  Index memory_rows() const {
    switch (ndim) {
      case 2:
        return column_major ? shape[1] : shape[0];
      case 3:
        return shape[0] * shape[1];
      case 4:
        return shape[0];
      default:
        return 1;
    }
  }
  Index memory_cols() const {
    switch (ndim) {
      case 0:
        return 1;
      case 1:
        return shape[0];
      case 2:
        return column_major ? shape[0] : shape[1];
      case 3:
        return shape[2];
      default:
        return shape[1] * shape[2] * shape[3];
    }
  }
  Index outer_stride() const { return stride > 0 ? stride : memory_cols(); }

  /// Where the elements lie (the optimizer refuses parameters whose memory
  /// overlaps); throws muon::Error naming `name` for a shape the core
  /// refuses or a view that would run past the end of the address space.
  optim::MemoryFootprint footprint(const std::string& name) const {
    optim::Registry::check_shape(name, tensor_shape());  // the sizes below cannot wrap
    return optim::MemoryFootprint::strided(name, data, std::uint64_t(memory_rows()),
                                           std::uint64_t(memory_cols()),
                                           std::uint64_t(outer_stride()), sizeof(T));
  }

  /// The memory matrix (memory_rows x memory_cols, row-major) as an Eigen::Map.
  MatrixMap matrix() const {
    return MatrixMap(data, memory_rows(), memory_cols(), Eigen::OuterStride<>(outer_stride()));
  }

  /// "(64, 3, 3, 3)".
  std::string shape_string() const { return tensor_shape().str(); }
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
  explicit Optimizer(MuonGroupOptions muon = {}, AdamWOptions adamw = {})
      : core_(std::move(muon), std::move(adamw)) {}

  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;
  Optimizer(Optimizer&&) = default;
  Optimizer& operator=(Optimizer&&) = default;

  // ---- groups and options ---------------------------------------------------

  /// Adds a parameter group; returns its index. Throws muon::Error for invalid options.
  std::size_t add_group(MuonGroupOptions muon, AdamWOptions adamw = {}) {
    const std::size_t g = core_.add_group(std::move(muon), std::move(adamw));
    return g;
  }
  std::size_t group_count() const { return core_.group_count(); }
  const MuonGroupOptions& muon_options(std::size_t group = 0) const {
    return core_.group(group).muon;
  }
  const AdamWOptions& adamw_options(std::size_t group = 0) const {
    return core_.group(group).adamw;
  }
  /// Replaces a group's Muon options. A change of variant gives the
  /// group's parameters the new variant's state, zeroed (made here, so a
  /// step allocates nothing).
  void set_muon_options(const MuonGroupOptions& o, std::size_t group = 0) {
    core_.set_muon_options(o, group);
    shape_variant_state();
  }
  void set_adamw_options(const AdamWOptions& o, std::size_t group = 0) {
    core_.set_adamw_options(o, group);
  }

  /// Sets an option of a group by its key, as a Python config would (the
  /// keys, their types and ranges: optim::option_keys(), docs/optimizer.md).
  /// An unknown key (the message lists the valid ones and suggests the
  /// nearest), a value of the wrong type or out of range throws muon::Error;
  /// the group is then unchanged.
  void set_option(std::string_view key, double value, std::size_t group = 0) {
    core_.set_option(key, value, group);
  }
  void set_option(std::string_view key, std::string_view value, std::size_t group = 0) {
    core_.set_option(key, value, group);
    shape_variant_state();  // "variant" changes the state a parameter keeps
  }
  void set_option(std::string_view key, const char* value, std::size_t group = 0) {
    set_option(key, std::string_view(value), group);
  }
  void set_option(std::string_view key, const std::string& value, std::size_t group = 0) {
    set_option(key, std::string_view(value), group);
  }

  void set_non_finite_policy(NonFinitePolicy p) { core_.set_non_finite_policy(p); }
  NonFinitePolicy non_finite_policy() const { return core_.non_finite_policy(); }

  /// Threads the Newton–Schulz workspaces and the elementwise work may use
  /// (0, the default: muon::default_threads()). Applies to workspaces made
  /// afterwards (at registration of a new shape); they share one pool of
  /// that size.
  void set_ns_threads(int threads) {
    if (threads < 0) detail::fail("ns_threads", "must be >= 0");
    ns_threads_ = threads;
  }

  /// The product engine of the Newton–Schulz workspaces made afterwards (at
  /// registration of a new shape): eigen::Products::automatic (the default:
  /// BLAS in MUON_USE_BLAS builds, else Eigen), eigen, blas, or bf16 (bf16
  /// factors with fp32 accumulation, the library's kernel on x86-64 CPUs
  /// with AVX512-BF16, float compute only). Throws muon::Error for an engine
  /// this build, CPU or scalar cannot use.
  void set_ns_products(eigen::Products products) {
    if (!eigen::products_available(products))
      detail::fail("ns_products",
                   "this engine is not available (build option off, or the CPU lacks "
                   "AVX512-BF16)");
    if (products == eigen::Products::bf16 && !std::is_same_v<C, float>)
      detail::fail("ns_products", "bf16 products need float compute (T float, half or bfloat16)");
    ns_products_ = products;
  }
  eigen::Products ns_products() const { return ns_products_; }

  /// Replaces the routing rules. Only before the first add_param (routes are
  /// decided at registration); throws muon::Error otherwise.
  void set_routing_rules(RoutingRules rules) { core_.set_routing_rules(std::move(rules)); }
  const RoutingRules& routing_rules() const { return core_.routing_rules(); }

  /// Multiplies every group's lr (Muon and AdamW) by schedule.factor(k) at
  /// the k-th step (0-based: the step count before the step).
  void set_lr_schedule(const LrSchedule& s) { core_.set_lr_schedule(s); }
  void clear_lr_schedule() { core_.clear_lr_schedule(); }
  /// Replaces every Muon group's momentum by warmup.at(k) at the k-th step.
  void set_momentum_warmup(const MomentumWarmup& w) { core_.set_momentum_warmup(w); }
  void clear_momentum_warmup() { core_.clear_momentum_warmup(); }

  /// The Muon lr (before the shape adjustment) the next step of `group`
  /// uses: the group's lr times the schedule's factor. current_adamw_lr and
  /// current_momentum likewise.
  double current_lr(std::size_t group = 0) const { return core_.current_lr(group); }
  double current_adamw_lr(std::size_t group = 0) const { return core_.current_adamw_lr(group); }
  double current_momentum(std::size_t group = 0) const { return core_.current_momentum(group); }

  // ---- parameters -------------------------------------------------------------

  /// Registers a parameter. `grad` may be absent (ParamView::absent()) and
  /// set later with set_grad. Allocates the parameter's buffers (and a
  /// workspace for a new block shape) now. Throws muon::Error for a
  /// duplicate or empty name, a null or empty parameter, memory that
  /// overlaps a registered parameter's (naming both: its elements would be
  /// updated twice per step), a gradient of another shape or layout, a bad
  /// stride, a bad group index or split, or buffers that cannot be
  /// allocated; the optimizer is then unchanged.
  void add_param(const std::string& name, View param, View grad,
                 const ParamOptions& options = ParamOptions()) {
    check_view(param, name, "param");
    if (param.data == nullptr) detail::fail("param", "'" + name + "' has a null data pointer");
    if (grad.present()) check_grad(param, grad, name);
    std::size_t i = 0;
    try {
      i = core_.add_param(name, param.tensor_shape(), options, param.footprint(name));
    } catch (const std::bad_alloc&) {
      out_of_memory(name, param);
    }
    const std::size_t workspaces_before = workspaces_.size();
    try {
      const optim::ParamRecord& p = core_.param(i);
      Slot slot;
      slot.param = param;
      slot.grad = grad;
      slot.first = Buffer::Zero(p.rows, p.cols);
      if (!p.muon()) slot.second = Buffer::Zero(p.rows, p.cols);
      shape_variant_state(i, slot);
      if (p.muon())
        for (std::int64_t rows : p.blocks) slot.block_ws.push_back(workspace_for(rows, p.cols));
      resources();
      LanePlan plan = plan_lanes();
      chunks_.reserve(chunks_.size() + std::size_t(p.rows));
      chunk_checks_.reserve(chunks_.capacity());
      metrics_.params.resize(slots_.size() + 1);
      slots_.push_back(std::move(slot));
      add_chunks(i);  // cannot throw: reserved above
      commit(std::move(plan));
    } catch (const std::bad_alloc&) {
      undo_registration(workspaces_before);
      out_of_memory(name, param);
    } catch (...) {
      undo_registration(workspaces_before);
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
  /// order) as a 2-D parameter and its gradient: ParamView::from of each.
  /// The optimizer keeps views of their memory, so a temporary that owns
  /// its memory (`(W * 2).eval()`, a Matrix returned by value) does not
  /// compile; a temporary Map, Block or Ref of lasting memory does.
  template <class DP, class DG,
            class = std::enable_if_t<
                std::is_base_of<Eigen::EigenBase<std::decay_t<DP>>, std::decay_t<DP>>::value &&
                std::is_base_of<Eigen::EigenBase<std::decay_t<DG>>, std::decay_t<DG>>::value>>
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
    Slot& s = slots_[core_.index(name)];
    if (grad.present()) check_grad(s.param, grad, name);
    s.grad = grad;
  }
  template <class DG, class = std::enable_if_t<std::is_base_of<Eigen::EigenBase<std::decay_t<DG>>,
                                                               std::decay_t<DG>>::value>>
  void set_grad(const std::string& name, DG&& grad) {
    static_assert(!detail::owning_temporary<DG>::value,
                  "muon::Optimizer::set_grad keeps a view of the gradient's memory until the "
                  "step: pass an lvalue (a Matrix, Map, Ref or Block that outlives the step), "
                  "not a temporary");
    set_grad(name, View::from(grad));
  }
  /// Points a registered parameter at other memory holding a tensor of the
  /// same shape and layout (a model whose storage was replaced, as
  /// libtorch's set_data does); its optimizer state stays. Throws
  /// muon::Error naming "param" for a null pointer, a different shape or
  /// layout, memory that overlaps another parameter's (naming both); the
  /// optimizer is then unchanged.
  void set_param(const std::string& name, View param) {
    const std::size_t i = core_.index(name);
    Slot& s = slots_[i];
    check_view(param, name, "param");
    if (param.data == nullptr) detail::fail("param", "'" + name + "' has a null data pointer");
    if (param.tensor_shape() != s.param.tensor_shape())
      detail::fail("param", "'" + name + "' has shape " + param.shape_string() +
                                ", registered as " + s.param.shape_string());
    core_.set_param_memory(i, param.footprint(name));  // refused if another parameter's
    s.param = param;
  }
  template <class DP, class = std::enable_if_t<std::is_base_of<Eigen::EigenBase<std::decay_t<DP>>,
                                                               std::decay_t<DP>>::value>>
  void set_param(const std::string& name, DP&& param) {
    static_assert(!detail::owning_temporary<DP>::value,
                  "muon::Optimizer::set_param keeps a view of the parameter's memory: pass an "
                  "lvalue (a Matrix, Map, Ref or Block that outlives the optimizer), not a "
                  "temporary");
    set_param(name, View::from(param));
  }
  /// Marks a parameter's gradient absent: step() skips it entirely.
  void clear_grad(const std::string& name) { slots_[core_.index(name)].grad = View(); }
  void clear_grads() {
    for (auto& s : slots_) s.grad = View();
  }

  std::size_t param_count() const { return core_.size(); }
  bool has_param(const std::string& name) const { return core_.registry().find(name).has_value(); }
  /// Names in registration order.
  std::vector<std::string> param_names() const { return core_.registry().names(); }
  Route route(const std::string& name) const { return core_.param(core_.index(name)).route; }
  /// Steps this parameter has taken (AdamW's bias-correction t).
  std::int64_t param_steps(const std::string& name) const {
    return core_.param(core_.index(name)).steps;
  }
  /// Steps the optimizer has taken (schedules read this, 0-based, before the step).
  std::int64_t step_count() const { return core_.step_count(); }

  /// The Muon momentum buffer, in the parameter's memory layout (a
  /// column-major matrix's buffer is its transpose). Throws for AdamW parameters.
  const Buffer& momentum_buffer(const std::string& name) const {
    const std::size_t i = core_.index(name);
    if (!core_.param(i).muon()) detail::fail("name", "'" + name + "' is not Muon-routed");
    return slots_[i].first;
  }
  /// The second moment of a Muon parameter under NorMuon (max(rows, cols)
  /// numbers per block, blocks in order: docs/muon_family.md) or AdaMuon
  /// (the parameter's layout, like the momentum). Throws for AdamW
  /// parameters and for plain Muon (which keeps none).
  const Buffer& second_moment(const std::string& name) const {
    const std::size_t i = core_.index(name);
    if (!core_.param(i).muon() || core_.variant(i) == MuonVariant::muon)
      detail::fail("name", "'" + name + "' keeps no Muon second moment (variant " +
                               (core_.param(i).muon() ? "muon" : "AdamW route") + ")");
    return slots_[i].second;
  }
  /// AdamW's first and second moments. Throw for Muon parameters.
  const Buffer& exp_avg(const std::string& name) const {
    const std::size_t i = core_.index(name);
    if (core_.param(i).muon()) detail::fail("name", "'" + name + "' is not AdamW-routed");
    return slots_[i].first;
  }
  const Buffer& exp_avg_sq(const std::string& name) const {
    const std::size_t i = core_.index(name);
    if (core_.param(i).muon()) detail::fail("name", "'" + name + "' is not AdamW-routed");
    return slots_[i].second;
  }

  /// Route, reason, shape and lr scale of every parameter.
  RoutingReport routing() const { return core_.routing(); }

  /// The backend-neutral core (options, registry, counters).
  const optim::Core& core() const { return core_; }

  /// Distinct Newton–Schulz block shapes, each with its workspace (small
  /// shapes have one more per extra thread; see threads_used_for_small()).
  std::size_t workspace_count() const { return workspaces_.size(); }
  /// Threads that orthogonalize the small matrices side by side (1: they
  /// run one after another).
  int threads_used_for_small() const { return int(lanes_.params.size()); }
  /// Bytes the workspaces hold: their shared matrix arena and packing
  /// buffers, each extra thread's arena for the small shapes, and the bf16
  /// engine's packed operands (per workspace) when it is in use.
  std::size_t workspace_bytes() const {
    std::size_t bytes = 0;
    const typename WS::Resources* last = nullptr;
    for (const auto& ws : workspaces_) {  // resources are shared by consecutive workspaces
      if (ws->resources().get() != last) {
        last = ws->resources().get();
        bytes += last->bytes();
      }
      bytes += ws->engine_bytes();
    }
    for (const auto& r : lanes_.resources) bytes += r->bytes();
    for (const auto& lane : lanes_.ws)
      for (const auto& ws : lane)
        if (ws) bytes += ws->engine_bytes();
    return bytes;
  }
  /// Bytes of the optimizer state: every momentum and AdamW moment buffer.
  std::size_t state_bytes() const {
    std::size_t bytes = 0;
    for (const Slot& s : slots_) bytes += std::size_t(s.first.size() + s.second.size()) * sizeof(B);
    return bytes;
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

  /// One optimizer step over every parameter that has a gradient: all of
  /// them are updated, or none.
  ///
  /// First, reading only, every update is checked: the gradient finite, the
  /// new momentum (or AdamW moments) finite in the buffer type, the updated
  /// parameter finite in its type. Under NonFinitePolicy::raise a failed
  /// check throws muon::Error naming the parameter and nothing at all is
  /// updated; under NonFinitePolicy::skip that parameter is left untouched
  /// and reported in StepReport::skipped. Then every other parameter is
  /// written; Newton–Schulz cannot produce Inf/NaN from finite input under
  /// options that passed validate(), so nothing fails past the checks. A
  /// parameter without a gradient is skipped entirely (no decay, no
  /// momentum, its step count unchanged). Allocates nothing (metrics'
  /// scratch excepted, once).
  const StepReport& step() {
    core_.begin_step();
    run_checks();  // phase 1: read only
    // Phase 2: write. The elementwise rules (momentum, AdamW) in parallel
    // chunks; then Newton–Schulz and the update: the small Muon matrices one
    // per thread, side by side, then the large ones one at a time, each on
    // every thread.
    for_chunks([this](std::size_t c) {
      const Chunk& ch = chunks_[c];
      if (!core_.updates(ch.param)) return;
      if (core_.param(ch.param).muon())
        momentum_rows(ch.param, ch.row0, ch.row1);
      else
        adamw_rows(ch.param, ch.row0, ch.row1);
    });
    run_small_muon();
    for (std::size_t i : lanes_.large)
      if (core_.updates(i)) muon_update(i, 0);
    const StepReport& report = core_.finish_step();
    if (metrics_on_) {
      metrics_.step = report.step;
      metrics_.lr_factor = core_.plan().lr_factor;
      for (std::size_t i = 0; i < slots_.size(); ++i) fill_metrics(i, metrics_.params[i]);
      if (hook_) hook_(metrics_);
    }
    return report;
  }

  /// The checks of step() without its writes: the report the next step
  /// would give (which parameters it would skip, and why), or the
  /// muon::Error it would throw under NonFinitePolicy::raise. Changes
  /// nothing; allocates nothing. To probe a risky step, or to measure what
  /// the checks cost (bench/bench_step.cpp).
  const StepReport& check() {
    core_.begin_step();
    run_checks();
    return core_.end_report(false);
  }

  // ---- QK-Clip ----------------------------------------------------------------------

  /// QK-Clip after a step (optim/qk_clip.hpp; Kimi K2's MuonClip): scales
  /// the query and key rows of every head whose largest attention logit,
  /// `max_logits[h]` as the caller measured it, is above options.tau.
  /// Everything is checked before anything is written: a NaN or infinite
  /// maximum (muon::Error naming the head), an unknown or non-2-D
  /// parameter, rows out of range leave the weights untouched. Only the
  /// weights change (not the optimizer state). Allocates the plan (a few
  /// entries per clipped head).
  QkClipReport qk_clip(const QkClipHeads& heads, const double* max_logits, std::size_t count,
                       const QkClipOptions& options = QkClipOptions()) {
    const optim::QkClipPlan plan = optim::plan_qk_clip(core_, heads, max_logits, count, options);
    for (const optim::RowScaling& r : plan.scalings) scale_rows(r);
    return plan.report;
  }
  QkClipReport qk_clip(const QkClipHeads& heads, const std::vector<double>& max_logits,
                       const QkClipOptions& options = QkClipOptions()) {
    return qk_clip(heads, max_logits.data(), max_logits.size(), options);
  }

  // ---- checkpoints -------------------------------------------------------------------

  /// Writes group options, step counts and every buffer (by parameter name,
  /// with shape and dtype) in the checkpoint format (docs/optimizer.md), the
  /// same format every backend writes and reads. Parameters themselves are
  /// not stored (as in torch's optimizer state).
  void save(std::ostream& os) const {
    core_.save(os, checkpoint::dtype_of<B>(), checkpoint::dtype_of<T>(),
               [this](std::size_t i, checkpoint::Writer& w) {
                 const Slot& s = slots_[i];
                 const auto& names = core_.buffer_names(i);
                 optim::state_io::write_buffer(w, names[0], checkpoint::dtype_of<B>(),
                                               std::uint64_t(s.first.size()), s.first.data());
                 if (names.size() > 1)
                   optim::state_io::write_buffer(w, names[1], checkpoint::dtype_of<B>(),
                                                 std::uint64_t(s.second.size()), s.second.data());
               });
  }

  /// Restores what save() (of any backend) wrote into an optimizer with the
  /// same parameters (names, or names mapped by options.rename; shapes,
  /// routes, groups, splits, buffer dtype). Group options are replaced by the
  /// checkpoint's; a group saved with a user adjust_lr_fn keeps this
  /// optimizer's function (it must have one). Throws muon::Error listing every
  /// mismatch (names missing on either side, dtypes of both sides, the
  /// origin) for a truncated, corrupt or foreign stream; the optimizer is
  /// then exactly as before (everything is parsed and checked before
  /// anything is replaced). Reads format versions 1 and 2.
  void load(std::istream& is, const LoadOptions& options = LoadOptions()) {
    load_from(is, options, "stream");
  }

  /// save() to `path`, atomically: the state is written to a temporary file
  /// in the same directory, flushed to disk, then renamed over `path`, so a
  /// crash, a full disk or a killed job never leaves a half-written file
  /// where the previous checkpoint was. Throws muon::Error (the previous
  /// file intact) when anything fails.
  void save_file(const std::string& path) const {
    detail::write_file_atomically(path, [this](std::ostream& os) { save(os); });
  }
  void load_file(const std::string& path, const LoadOptions& options = LoadOptions()) {
    std::ifstream is(path, std::ios::binary);
    if (!is) detail::fail("path", "cannot open '" + path + "' for reading");
    load_from(is, options, "'" + path + "'");
  }

 private:
  using C = compute_t<B>;  // what the elementwise rules and Newton–Schulz compute in
  using WS = Workspace<B>;

  struct Slot {
    View param, grad;
    // Muon: momentum, and the variant's second moment (NorMuon: a column
    // of max(rows, cols) per block; AdaMuon: like the momentum; muon: empty).
    // AdamW: exp_avg, exp_avg_sq.
    Buffer first, second;
    MuonVariant variant = MuonVariant::muon;  // what `second` was made for
    std::vector<double> sums;                 // NorMuon: per row (or column) sums of O^2
    std::vector<std::size_t> block_ws;        // block -> index into workspaces_
    // Metrics scratch and results of the last step, made on first use.
    std::vector<std::unique_ptr<detail::Syrk<C>>> syrk;
    std::vector<Matrix<C>> gram;
    Eigen::VectorXd power_u, power_v;
    double update_sumsq = 0, orth_error = NAN;
  };

  // The checks of a run of rows: its first problem in row-major order, and
  // (Muon) the largest |p| seen, for the update bound.
  struct RowsCheck {
    std::optional<SkipReason> problem;
    double max_p = 0;
  };
  // Rows [row0, row1) of one parameter: a unit of the elementwise work. The
  // list follows parameter and row order; made at registration.
  struct Chunk {
    std::size_t param;
    Index row0, row1;
  };

  // ---- registration ------------------------------------------------------------

  [[noreturn]] static void out_of_memory(const std::string& name, const View& param) {
    detail::fail("param", "'" + name + "' " + param.shape_string() +
                              ": its optimizer state cannot be allocated (out of memory)");
  }

  // Undoes a registration that failed after the core took it: the
  // workspaces made for it and the core's record.
  void undo_registration(std::size_t workspaces_before) noexcept {
    for (auto it = ws_index_.begin(); it != ws_index_.end();)
      it = it->second >= workspaces_before ? ws_index_.erase(it) : std::next(it);
    workspaces_.erase(workspaces_.begin() + std::ptrdiff_t(workspaces_before), workspaces_.end());
    metrics_.params.resize(slots_.size());
    core_.remove_last_param();
  }

  static void check_view(const View& v, const std::string& name, const char* what) {
    if (!(v.ndim >= 0 && v.ndim <= 4))
      detail::fail(what, "'" + name + "' must have 0 to 4 dimensions");
    if (v.column_major && v.ndim != 2)
      detail::fail(what, "'" + name + "': only a 2-D view can be column-major");
    optim::Registry::check_shape(name, v.tensor_shape());
    if (v.stride != 0) {
      if (v.ndim != 2) detail::fail(what, "'" + name + "': a stride needs a 2-D view");
      if (v.stride < v.memory_cols())
        detail::fail(what, "'" + name + "': the stride " + std::to_string(v.stride) +
                               " is shorter than a " + (v.column_major ? "column" : "row") + " (" +
                               std::to_string(v.memory_cols()) + ")");
    }
  }
  static void check_grad(const View& param, const View& grad, const std::string& name) {
    check_view(grad, name, "grad");
    if (param.tensor_shape() != grad.tensor_shape())
      detail::fail("grad", "'" + name + "' has shape " + grad.shape_string() + ", the parameter " +
                               param.shape_string());
  }

  // The shared resources for what is made now: the current ones, or new ones
  // when the thread count changed since they were made.
  const std::shared_ptr<typename WS::Resources>& resources() {
    const int threads = ns_threads_ > 0 ? ns_threads_ : default_threads();
    if (!resources_ || resources_->threads() != threads) {
      resources_ = std::make_shared<typename WS::Resources>(threads);
      resources_->pool();  // started now, never inside a step
    }
    return resources_;
  }

  // Rows of the (out, in) matrix: memory rows, or memory columns of a
  // column-major view.
  void scale_rows(const optim::RowScaling& r) {
    auto W = slots_[r.param].param.matrix();
    const bool columns = core_.param(r.param).shape.column_major;
    const C f = static_cast<C>(r.factor);
    for (Index j = Index(r.row); j < Index(r.row + r.rows); ++j) {
      const Index n = columns ? W.rows() : W.cols();
      for (Index e = 0; e < n; ++e) {
        T& w = columns ? W(e, j) : W(j, e);
        w = static_cast<T>(static_cast<C>(w) * f);
      }
    }
  }

  // ---- the variants' state ------------------------------------------------------------

  // Gives Muon parameter i's slot the state its group's variant keeps,
  // zeroed, unless it has it already.
  void shape_variant_state(std::size_t i, Slot& s) {
    const optim::ParamRecord& p = core_.param(i);
    const MuonVariant v = core_.variant(i);
    if (!p.muon() || (s.variant == v && (v == MuonVariant::muon || s.second.size() > 0))) return;
    Buffer second;
    std::vector<double> sums;
    if (v == MuonVariant::adamuon) second = Buffer::Zero(p.rows, p.cols);
    if (v == MuonVariant::normuon) {
      second = Buffer::Zero(optim::buffer_elements(p, v, 1), 1);
      sums.assign(longest_side(p), 0.0);
    }
    s.second.swap(second);
    s.sums.swap(sums);
    s.variant = v;
  }
  // NorMuon's scratch: one sum per row or column of the largest block.
  static std::size_t longest_side(const optim::ParamRecord& p) {
    std::int64_t longest = 0;
    for (std::int64_t rows : p.blocks) longest = std::max({longest, rows, p.cols});
    return std::size_t(longest);
  }
  void shape_variant_state() {
    for (std::size_t i = 0; i < slots_.size(); ++i) shape_variant_state(i, slots_[i]);
  }

  // ---- small matrices side by side -------------------------------------------------

  // Which thread ("lane") orthogonalizes which small Muon parameter, and the
  // workspaces of lanes 1.. (lane 0, the calling thread, uses workspaces_:
  // the large matrices do not run at the same time). Built whole at
  // registration, then swapped in, so a failed registration changes nothing.
  struct LanePlan {
    std::vector<std::shared_ptr<typename WS::Resources>> resources;  // lanes 1..
    std::vector<std::vector<std::shared_ptr<WS>>> ws;  // [lane - 1][shape]; null: large shape
    std::vector<std::vector<std::size_t>> params;      // [lane]: small Muon parameters
    std::vector<std::size_t> large;                    // every other Muon parameter, in order
  };

  // Small: every block of the parameter runs on one thread anyway
  // (Workspace::gains_from_threads) with the library's own products (BLAS
  // brings threads of its own: its matrices run one at a time).
  bool runs_in_lane(const optim::ParamRecord& p) const {
    for (std::int64_t rows : p.blocks) {
      const WS& ws = *workspaces_[ws_index_.at({Index(rows), Index(p.cols)})];
      if (WS::gains_from_threads(ws.rows(), ws.cols()) || ws.products() == eigen::Products::blas)
        return false;
    }
    return true;
  }

  LanePlan plan_lanes() const {
    LanePlan plan;
    std::vector<std::size_t> small;
    std::vector<double> cost;
    for (std::size_t i = 0; i < core_.size(); ++i) {
      const optim::ParamRecord& p = core_.param(i);
      if (!p.muon()) continue;
      if (!runs_in_lane(p)) {
        plan.large.push_back(i);
        continue;
      }
      small.push_back(i);
      double c = 0;
      for (std::int64_t rows : p.blocks)
        c += optim::newton_schulz_cost(double(rows), double(p.cols));
      cost.push_back(c);
    }
    // Side by side only when there is more than one matrix's worth of work
    // to share: a wake-up costs microseconds, a 64 x 64 iteration about as much.
    const int threads = resources_->threads();
    double total = 0;
    for (double c : cost) total += c;
    const int lanes =
        (small.size() > 1 && total >= 1e6) ? std::min<int>(threads, int(small.size())) : 1;
    plan.params.resize(std::size_t(lanes));
    const std::vector<int> lane = optim::assign_longest_first(cost, lanes);
    for (std::size_t j = 0; j < small.size(); ++j)
      plan.params[std::size_t(lane[j])].push_back(small[j]);
    // Lanes 1.. keep the resources and workspaces they had where they can.
    plan.resources.resize(std::size_t(lanes - 1));
    plan.ws.resize(std::size_t(lanes - 1));
    for (std::size_t k = 0; k + 1 < std::size_t(lanes); ++k) {
      const bool had = k < lanes_.resources.size();
      plan.resources[k] = had ? lanes_.resources[k] : std::make_shared<typename WS::Resources>(1);
      plan.ws[k].resize(workspaces_.size());
      for (std::size_t i : small)
        for (std::int64_t rows : core_.param(i).blocks) {
          const std::size_t w = ws_index_.at({Index(rows), Index(core_.param(i).cols)});
          if (plan.ws[k][w]) continue;
          if (had && w < lanes_.ws[k].size() && lanes_.ws[k][w])
            plan.ws[k][w] = lanes_.ws[k][w];
          else
            plan.ws[k][w] = std::make_shared<WS>(workspaces_[w]->rows(), workspaces_[w]->cols(),
                                                 plan.resources[k], workspaces_[w]->products());
        }
    }
    return plan;
  }

  void commit(LanePlan&& plan) noexcept {
    lanes_ = std::move(plan);
    // The metrics' product objects were bound to a lane's packing buffers.
    for (Slot& s : slots_) {
      s.syrk.clear();
      s.gram.clear();
    }
  }

  // The small Muon parameters of this step, each lane's on its own thread.
  void run_small_muon() {
    const int lanes = int(lanes_.params.size());
    detail::ThreadPool* pool = lanes > 1 ? resources_->pool() : nullptr;
    if (!pool) {
      for (const auto& list : lanes_.params)
        for (std::size_t i : list)
          if (core_.updates(i)) muon_update(i, 0);
      return;
    }
    auto task = [this](int lane) {
      for (std::size_t i : lanes_.params[std::size_t(lane)])
        if (core_.updates(i)) muon_update(i, lane);
    };
    pool->parallel(lanes, task);
  }

  WS& lane_workspace(std::size_t w, int lane) {
    return lane == 0 ? *workspaces_[w] : *lanes_.ws[std::size_t(lane - 1)][w];
  }

  std::size_t workspace_for(std::int64_t rows, std::int64_t cols) {
    const auto key = std::make_pair(Index(rows), Index(cols));
    const auto it = ws_index_.find(key);
    if (it != ws_index_.end()) return it->second;
    workspaces_.push_back(
        std::make_unique<WS>(Index(rows), Index(cols), resources(), ns_products_));
    ws_index_.emplace(key, workspaces_.size() - 1);
    return workspaces_.size() - 1;
  }

  // ---- phase 1: checks (read only) -------------------------------------------------

  static double as_double(T v) {
    if constexpr (std::is_floating_point_v<T>)
      return static_cast<double>(v);
    else
      return static_cast<double>(static_cast<float>(v));
  }
  template <class S>
  static bool fits(C v) {  // finite after rounding to S
    const S s = static_cast<S>(v);
    if constexpr (std::is_floating_point_v<S>)
      return optim::rules::finite(s);
    else
      return optim::rules::finite(static_cast<float>(s));
  }

  // The checks of rows [r0, r1) of param i: the first problem in row-major
  // order, and (Muon) the largest |p| seen, for the update bound.
  RowsCheck check_muon_rows(std::size_t i, Index r0, Index r1) const {
    const Slot& s = slots_[i];
    const optim::ParamRecord& p = core_.param(i);
    const auto k = core_.momentum_coefficients<C>(p.group);
    const auto G = s.grad.matrix();
    const auto W = s.param.matrix();
    RowsCheck out;
    for (Index r = r0; r < r1; ++r) {
      for (Index c = 0; c < p.cols; ++c) {
        const C raw = static_cast<C>(G(r, c));
        if (!optim::rules::finite(raw)) return {SkipReason::non_finite_grad, out.max_p};
        const C g = optim::rules::regularized_grad(raw, static_cast<C>(W(r, c)), k);
        const B m =
            static_cast<B>(optim::rules::momentum_buffer(static_cast<C>(s.first(r, c)), g, k));
        if (!optim::rules::finite(m) ||
            !optim::rules::finite(optim::rules::ns_input(static_cast<C>(m), g, k)))
          return {SkipReason::non_finite_state, out.max_p};
        out.max_p = std::max(out.max_p, std::abs(as_double(W(r, c))));
      }
    }
    return out;
  }

  RowsCheck check_adamw_rows(std::size_t i, Index r0, Index r1) const {
    const Slot& s = slots_[i];
    const optim::ParamRecord& p = core_.param(i);
    const auto k = core_.adamw_coefficients<C>(i);
    const auto G = s.grad.matrix();
    const auto W = s.param.matrix();
    for (Index r = r0; r < r1; ++r) {
      for (Index c = 0; c < p.cols; ++c) {
        const C g = static_cast<C>(G(r, c));
        if (!optim::rules::finite(g)) return {SkipReason::non_finite_grad, 0};
        const B m =
            static_cast<B>(optim::rules::adamw_exp_avg(static_cast<C>(s.first(r, c)), g, k));
        const B v =
            static_cast<B>(optim::rules::adamw_exp_avg_sq(static_cast<C>(s.second(r, c)), g, k));
        if (!optim::rules::finite(m) || !optim::rules::finite(v))
          return {SkipReason::non_finite_state, 0};
        const C w = optim::rules::adamw_parameter(static_cast<C>(W(r, c)), static_cast<C>(m),
                                                  static_cast<C>(v), k);
        if (!fits<T>(w)) return {SkipReason::non_finite_update, 0};
      }
    }
    return {};
  }

  // ---- elementwise work in chunks, over the shared pool ------------------------------

  static constexpr Index kChunkElements = Index(1) << 16;

  // Appends param i's chunks: runs of whole rows of about kChunkElements
  // elements (capacity reserved by the caller).
  void add_chunks(std::size_t i) {
    const optim::ParamRecord& p = core_.param(i);
    const Index rows_per = std::max<Index>(1, kChunkElements / std::max<Index>(1, p.cols));
    for (Index r = 0; r < p.rows; r += rows_per)
      chunks_.push_back({i, r, std::min<Index>(p.rows, r + rows_per)});
    chunk_checks_.resize(chunks_.size());
    total_elements_ += p.rows * p.cols;
  }

  // f(chunk index) for every chunk: contiguous runs of chunks on the pool's
  // threads when there is enough work to split. Each chunk is touched by one
  // thread, and what depends on order is reduced by the caller in chunk
  // order, so the outcome is the same at any thread count.
  template <class F>
  void for_chunks(F&& f) {
    const std::size_t n = chunks_.size();
    detail::ThreadPool* pool = resources_ ? resources_->pool() : nullptr;
    const int tasks = pool ? int(std::min<std::size_t>(n, std::size_t(pool->size()))) : 1;
    if (tasks <= 1 || total_elements_ < 4 * kChunkElements) {
      for (std::size_t c = 0; c < n; ++c) f(c);
      return;
    }
    auto task = [&](int t) {
      const std::size_t begin = n * std::size_t(t) / std::size_t(tasks);
      const std::size_t end = n * std::size_t(t + 1) / std::size_t(tasks);
      for (std::size_t c = begin; c < end; ++c) f(c);
    };
    pool->parallel(tasks, task);
  }

  // Phase 1 of a step: every parameter with a gradient checked, reading only
  // (chunks in parallel); a parameter's first problem in row-major order
  // decides, as a sequential check would.
  void run_checks() {
    for_chunks([this](std::size_t c) {
      const Chunk& ch = chunks_[c];
      if (!slots_[ch.param].grad.present()) return;
      chunk_checks_[c] = core_.param(ch.param).muon()
                             ? check_muon_rows(ch.param, ch.row0, ch.row1)
                             : check_adamw_rows(ch.param, ch.row0, ch.row1);
    });
    std::size_t c = 0;
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      std::optional<SkipReason> problem;
      double max_p = 0;
      for (; c < chunks_.size() && chunks_[c].param == i; ++c) {
        if (!problem) problem = chunk_checks_[c].problem;
        max_p = std::max(max_p, chunk_checks_[c].max_p);
      }
      if (!slots_[i].grad.present()) {
        core_.skip(i, SkipReason::no_grad);
        continue;
      }
      if (!problem && core_.param(i).muon() &&
          !(max_p <= core_.update_limit(i, as_double(std::numeric_limits<T>::max()))))
        problem = SkipReason::non_finite_update;
      if (!problem) continue;
      if (core_.non_finite_policy() == NonFinitePolicy::raise) raise(i, *problem);
      core_.skip(i, *problem);
    }
  }

  [[noreturn]] void raise(std::size_t i, SkipReason why) const {
    const optim::ParamRecord& p = core_.param(i);
    if (why == SkipReason::non_finite_grad)
      detail::fail("grad", "'" + p.name + "' contains NaN or Inf (nothing was updated)");
    const std::string what =
        why == SkipReason::non_finite_state
            ? std::string(p.muon() ? "its momentum" : "an AdamW moment") + " would overflow " +
                  scalar_traits<B>::name
            : std::string("the updated parameter could overflow ") + scalar_traits<T>::name +
                  " (|p| + adjusted lr * the Newton-Schulz output bound exceeds its range)";
    detail::fail("step", "'" + p.name + "': " + what + " (nothing was updated)");
  }

  // ---- phase 2: writes -------------------------------------------------------------

  void momentum_rows(std::size_t i, Index r0, Index r1) {
    Slot& s = slots_[i];
    const auto k = core_.momentum_coefficients<C>(core_.param(i).group);
    const auto G = s.grad.matrix();
    const auto W = s.param.matrix();  // read only: updated after Newton–Schulz
    for (Index r = r0; r < r1; ++r)
      for (Index c = 0; c < s.first.cols(); ++c) {
        const C g =
            optim::rules::regularized_grad(static_cast<C>(G(r, c)), static_cast<C>(W(r, c)), k);
        s.first(r, c) =
            static_cast<B>(optim::rules::momentum_buffer(static_cast<C>(s.first(r, c)), g, k));
      }
  }

  // Newton–Schulz of the NS input made from the (already updated) momentum,
  // and the parameter update, on the workspaces of `lane`.
  void muon_update(std::size_t i, int lane) {
    Slot& s = slots_[i];
    const optim::ParamRecord& p = core_.param(i);
    const auto k = core_.momentum_coefficients<C>(p.group);
    const auto G = s.grad.matrix();
    auto W = s.param.matrix();
    const NewtonSchulzOptions& ns = core_.group(p.group).muon.ns;
    s.update_sumsq = 0;
    s.orth_error = 0;
    Index r0 = 0, v0 = 0;  // first row of the block; (NorMuon) its first entry of V
    for (std::size_t b = 0; b < p.blocks.size(); ++b) {
      const Index rows = p.blocks[b];
      WS& ws = lane_workspace(s.block_ws[b], lane);
      // The Newton–Schulz input, computed from the stored buffer as it is
      // loaded (W not yet written: the l2 form reads it).
      const auto& m = s.first;
      ws.load_generated([&m, &G, &W, &k, r0](Index r, Index c) {
        const C g = optim::rules::regularized_grad(static_cast<C>(G(r0 + r, c)),
                                                   static_cast<C>(W(r0 + r, c)), k);
        return optim::rules::ns_input(static_cast<C>(m(r0 + r, c)), g, k);
      });
      detail::newton_schulz_iterate(ws, ns);
      const auto u = core_.muon_update_coefficients<C>(i, b);
      double update_sumsq = 0;
      switch (s.variant) {
        case MuonVariant::muon:
          ws.visit_result([&W, &u, r0](Index r, Index c, C o) {
            W(r0 + r, c) =
                static_cast<T>(optim::rules::muon_parameter(static_cast<C>(W(r0 + r, c)), o, u));
          });
          break;
        case MuonVariant::normuon:
          update_sumsq = normuon_update(i, ws, r0, rows, v0, u);
          break;
        case MuonVariant::adamuon:
          update_sumsq = adamuon_update(i, ws, r0, rows, u);
          break;
      }
      const auto X = ws.iterate();  // for the metrics
      if (metrics_on_) {
        s.update_sumsq += s.variant == MuonVariant::muon
                              ? static_cast<double>(X.template cast<double>().squaredNorm())
                              : update_sumsq;
        s.orth_error = std::max(s.orth_error, orthogonality_error(s, b, X, lane));
      }
      r0 += rows;
      v0 += std::max<Index>(rows, p.cols);
    }
  }

  // NorMuon on one block (rows x cols in memory, from row r0; its V from
  // entry v0), after Newton–Schulz left O in `ws`: V <- beta2 V + (1-beta2)
  // mean(O^2) per row of the (out, in) matrix when out >= in, per column
  // otherwise; U = O / sqrt(max(V, eps)), times ||O||_F / ||U||_F. Returns
  // ||U||_F^2. Two passes over O; the sums in double.
  double normuon_update(std::size_t i, WS& ws, Index r0, Index rows, Index v0,
                        const optim::rules::MuonUpdateCoefficients<C>& u) {
    Slot& s = slots_[i];
    const optim::ParamRecord& p = core_.param(i);
    const Index cols = p.cols;
    // The (out, in) matrix's rows are memory rows, or memory columns for a
    // column-major view; V runs along the longer of out and in.
    const bool out_longer = p.shape.column_major ? cols >= rows : rows >= cols;
    const bool by_row = p.shape.column_major ? !out_longer : out_longer;
    const Index length = by_row ? rows : cols;
    const double averaged = static_cast<double>(by_row ? cols : rows);
    double* sums = s.sums.data();
    std::fill(sums, sums + length, 0.0);
    double sumsq = 0;
    ws.visit_result([sums, by_row, &sumsq](Index r, Index c, C o) {
      const double o2 = static_cast<double>(o) * static_cast<double>(o);
      sums[by_row ? r : c] += o2;
      sumsq += o2;
    });
    const auto k = core_.second_moment_coefficients<C>(i);
    double scaled_sumsq = 0;  // ||O / sqrt(V)||_F^2, from the sums
    for (Index j = 0; j < length; ++j) {
      B& v = s.second(v0 + j, 0);
      v = static_cast<B>(
          optim::rules::second_moment(static_cast<C>(v), static_cast<C>(sums[j] / averaged), k));
      const double f = static_cast<double>(optim::rules::normuon_factor(static_cast<C>(v), k));
      scaled_sumsq += sums[j] * f * f;
      sums[j] = f;  // from here on: the factor of row (column) j
    }
    const C ratio = static_cast<C>(scaled_sumsq > 0 ? std::sqrt(sumsq / scaled_sumsq) : 0.0);
    auto W = s.param.matrix();
    double update_sumsq = 0;
    ws.visit_result([&](Index r, Index c, C o) {
      const C d = o * static_cast<C>(sums[by_row ? r : c]) * ratio;
      update_sumsq += static_cast<double>(d) * static_cast<double>(d);
      W(r0 + r, c) =
          static_cast<T>(optim::rules::muon_parameter(static_cast<C>(W(r0 + r, c)), d, u));
    });
    return update_sumsq;
  }

  // AdaMuon on one block after Newton–Schulz: V <- beta2 V + (1-beta2) O^2
  // (elementwise, in the momentum's layout); U = O / (sqrt(V_hat) + eps)
  // from V as stored, times sqrt(min(m, n)) / ||U||_F. Returns ||U||_F^2.
  double adamuon_update(std::size_t i, WS& ws, Index r0, Index rows,
                        const optim::rules::MuonUpdateCoefficients<C>& u) {
    Slot& s = slots_[i];
    const optim::ParamRecord& p = core_.param(i);
    const auto k = core_.second_moment_coefficients<C>(i);
    Buffer& V = s.second;
    double scaled_sumsq = 0;
    ws.visit_result([&](Index r, Index c, C o) {
      B& v = V(r0 + r, c);
      v = static_cast<B>(optim::rules::second_moment(static_cast<C>(v), o * o, k));
      const C d = optim::rules::adamuon_direction(o, static_cast<C>(v), k);
      scaled_sumsq += static_cast<double>(d) * static_cast<double>(d);
    });
    const double target = static_cast<double>(std::min<Index>(rows, p.cols));
    const C ratio = static_cast<C>(scaled_sumsq > 0 ? std::sqrt(target / scaled_sumsq) : 0.0);
    auto W = s.param.matrix();
    double update_sumsq = 0;
    ws.visit_result([&](Index r, Index c, C o) {
      const C d = optim::rules::adamuon_direction(o, static_cast<C>(V(r0 + r, c)), k) * ratio;
      update_sumsq += static_cast<double>(d) * static_cast<double>(d);
      W(r0 + r, c) =
          static_cast<T>(optim::rules::muon_parameter(static_cast<C>(W(r0 + r, c)), d, u));
    });
    return update_sumsq;
  }

  void adamw_rows(std::size_t i, Index r0, Index r1) {
    Slot& s = slots_[i];
    const auto k = core_.adamw_coefficients<C>(i);
    const auto G = s.grad.matrix();
    auto W = s.param.matrix();
    for (Index r = r0; r < r1; ++r)
      for (Index c = 0; c < s.first.cols(); ++c) {
        const C g = static_cast<C>(G(r, c));
        s.first(r, c) =
            static_cast<B>(optim::rules::adamw_exp_avg(static_cast<C>(s.first(r, c)), g, k));
        s.second(r, c) =
            static_cast<B>(optim::rules::adamw_exp_avg_sq(static_cast<C>(s.second(r, c)), g, k));
        // Like torch, the parameter step uses the moments as stored.
        W(r, c) = static_cast<T>(optim::rules::adamw_parameter(static_cast<C>(W(r, c)),
                                                               static_cast<C>(s.first(r, c)),
                                                               static_cast<C>(s.second(r, c)), k));
      }
  }

  // ---- metrics ---------------------------------------------------------------------

  // ||X X^T - I||_F of a block's result (wide X): a symmetric rank-k product
  // into the lower triangle.
  double orthogonality_error(Slot& s, std::size_t b, const Eigen::Map<const Matrix<C>>& X,
                             int lane) {
    if (s.syrk.size() != s.block_ws.size()) {
      s.syrk.clear();
      s.gram.clear();
      for (std::size_t w : s.block_ws) {
        const WS& ws = lane_workspace(w, lane);
        const Index m = std::min(ws.rows(), ws.cols()), n = std::max(ws.rows(), ws.cols());
        s.syrk.push_back(std::make_unique<detail::Syrk<C>>(m, n, ws.resources()->packing(), 0));
        s.gram.emplace_back(m, m);
      }
    }
    Matrix<C>& G = s.gram[b];
    const Index m = X.rows();
    G.setZero();
    s.syrk[b]->run(X.data(), m, G.data(), m, C(1));
    double sum = 0;
    for (Index j = 0; j < m; ++j) {
      const double d = static_cast<double>(G(j, j)) - 1.0;
      sum += d * d;
      for (Index r = j + 1; r < m; ++r)
        sum += 2.0 * static_cast<double>(G(r, j)) * static_cast<double>(G(r, j));
    }
    return std::sqrt(sum);
  }

  template <class M>
  static double frobenius(const M& m) {
    double sum = 0;
    for (Index r = 0; r < m.rows(); ++r)
      for (Index c = 0; c < m.cols(); ++c) {
        const double v = static_cast<double>(static_cast<C>(m(r, c)));
        sum += v * v;
      }
    return std::sqrt(sum);
  }

  // Two power iterations on W^T W per step, continuing from the last step's
  // vector: cheap (4 numel flops) and converging as training proceeds.
  double spectral_estimate(Slot& s, const optim::ParamRecord& p) {
    const auto W = s.param.matrix();
    if (s.power_v.size() != p.cols) {
      s.power_v = Eigen::VectorXd::Constant(p.cols, 1.0 / std::sqrt(static_cast<double>(p.cols)));
      s.power_u.resize(p.rows);
    }
    double sigma = 0;
    for (int it = 0; it < 2; ++it) {
      for (Index r = 0; r < p.rows; ++r) {
        double acc = 0;
        for (Index c = 0; c < p.cols; ++c) acc += as_double(W(r, c)) * s.power_v(c);
        s.power_u(r) = acc;
      }
      const double un = s.power_u.norm();
      if (!(un > 0) || !std::isfinite(un)) return un;
      s.power_u /= un;
      s.power_v.setZero();
      for (Index r = 0; r < p.rows; ++r)
        for (Index c = 0; c < p.cols; ++c) s.power_v(c) += as_double(W(r, c)) * s.power_u(r);
      sigma = s.power_v.norm();
      if (!(sigma > 0) || !std::isfinite(sigma)) return sigma;
      s.power_v /= sigma;
    }
    return sigma;
  }

  void fill_metrics(std::size_t i, ParamMetrics& m) {
    Slot& s = slots_[i];
    const optim::ParamRecord& p = core_.param(i);
    m = ParamMetrics();
    m.name = p.name;
    m.route = p.route;
    m.updated = core_.updates(i);
    bool bad_grad = false;
    for (const SkippedParam& k : core_.last_report().skipped)
      if (k.name == p.name && k.reason == SkipReason::non_finite_grad) bad_grad = true;
    if (s.grad.present() && !bad_grad) m.grad_norm = frobenius(s.grad.matrix());
    m.momentum_norm = frobenius(s.first);
    if (!p.muon()) return;
    if (m.updated) {
      m.update_rms = std::sqrt(s.update_sumsq / static_cast<double>(p.numel()));
      m.orthogonality_error = s.orth_error;
    }
    m.spectral_norm = spectral_estimate(s, p);
  }

  // ---- checkpoints -------------------------------------------------------------------

  void load_from(std::istream& is, const LoadOptions& options, const std::string& origin) {
    optim::Core::Matched m = core_.match(is, checkpoint::dtype_of<B>(), options, origin);
    // Decode every buffer aside, then commit: nothing below the copies throws.
    // The buffers follow the file's groups (their variants), which the core
    // takes over: a NorMuon second moment is a column, the others the
    // parameter's layout; a Muon parameter without one keeps an empty one.
    struct Loaded {
      std::array<Buffer, 2> buffers;
      std::vector<double> sums;
      MuonVariant variant = MuonVariant::muon;
    };
    std::vector<Loaded> loaded(slots_.size());
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      const optim::ParamRecord& p = core_.param(i);
      const optim::StoredParam& sp = *m.params[i];
      Loaded& l = loaded[i];
      l.variant = m.groups[p.group].muon.variant;
      for (std::size_t b = 0; b < sp.buffers.size(); ++b) {
        Buffer& out = l.buffers[b];
        const bool column = p.muon() && l.variant == MuonVariant::normuon && b == 1;
        if (column)
          out.resize(optim::buffer_elements(p, l.variant, 1), 1);
        else
          out.resize(p.rows, p.cols);
        const optim::StoredBuffer& buf = sp.buffers[b];
        for (Index e = 0; e < out.size(); ++e)
          out.data()[e] = static_cast<B>(buf.at(std::uint64_t(e)));
      }
      if (p.muon() && l.variant == MuonVariant::normuon) l.sums.assign(longest_side(p), 0.0);
    }
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      s.first.swap(loaded[i].buffers[0]);
      s.second.swap(loaded[i].buffers[1]);
      s.sums.swap(loaded[i].sums);
      s.variant = loaded[i].variant;
    }
    core_.commit(m);
  }

  optim::Core core_;
  std::vector<Slot> slots_;
  // What the workspaces share (see backend/eigen/shared_resources.hpp); the
  // workspaces hold it too, so a change of thread count starts new resources
  // for later workspaces only.
  std::shared_ptr<typename WS::Resources> resources_;
  std::vector<std::unique_ptr<WS>> workspaces_;
  LanePlan lanes_;
  std::vector<Chunk> chunks_;
  std::vector<RowsCheck> chunk_checks_;  // per chunk, written by run_checks
  Index total_elements_ = 0;
  std::map<std::pair<Index, Index>, std::size_t> ws_index_;
  int ns_threads_ = 0;
  eigen::Products ns_products_ = eigen::Products::automatic;
  bool metrics_on_ = false;
  std::function<void(const StepMetrics&)> hook_;
  StepMetrics metrics_;
};

}  // namespace muon
