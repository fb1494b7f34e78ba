// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/cuda/optimizer.hpp
/// \brief muon::cuda::Optimizer: the optimizer core (optim/core.hpp) over
/// device parameters. Same options, routing, groups, splits, schedules,
/// step semantics, method names and checkpoint format as the CPU
/// muon::Optimizer; this class owns device buffers and launches kernels.
///
///     muon::cuda::Optimizer<float> opt;                  // torch.optim.Muon defaults
///     opt.add_param("h.0.attn.c_attn.weight", w, gw, {2304, 768});   // row-major: Muon
///     opt.add_param("h.0.ln_1.bias", b, gb, {768});                  // 1-D: AdamW
///     opt.add_param("wte.weight", e, ge, {50257, 768});              // by name: AdamW
///     opt.step(stream);                         // eager: launches only
///     const auto& report = opt.report(stream);  // synchronizes; throws if refused
///     opt.capture(stream); ... opt.replay(stream);   // one graph launch per step
///
/// Tensors are dense device arrays, row-major (PyTorch's layout) unless
/// registered as column-major 2-D (TensorShape::column_major). Per Muon
/// parameter: momentum in fp32, the Newton–Schulz input staged in fp32 and
/// normalized as it is cast to C (default bf16), same-shape blocks of every
/// parameter orthogonalized as one batch, the update with the block's
/// adjusted lr. Per AdamW parameter: torch.optim.AdamW, fp32 moments.
/// The Muon variants (MuonGroupOptions::variant: NorMuon, AdaMuon) keep
/// their second moment in fp32 and work on each block's Newton–Schulz
/// output before the update, with their sums reduced in a fixed order (no
/// float atomics: a step gives the same bits on every run); the l2 form of
/// weight decay adds lambda p to the gradient the momentum sees.
///
/// A step applies to every parameter or to none: check kernels read
/// gradients, state and parameters first; under NonFinitePolicy::raise any
/// problem refuses the whole step on the device (nothing is written, the
/// step counters do not move) and report() throws muon::Error naming the
/// parameter; under skip the parameter is left alone and reported. All of
/// it is stream-ordered, so a captured graph keeps the guarantee.
///
/// Construction, add_param, the routing queries and the option setters make
/// no CUDA call; device memory is allocated at the first step(), capture(),
/// save() or load(), after which parameters can no longer be added. After
/// that, a change of variant (set_muon_options, set_option("variant", ...))
/// allocates the new variant's state, zeroed, on the stream of that first
/// call and waits for it, then drops the captured graph (capture() again);
/// step() never allocates.
/// Parameter and gradient pointers must stay valid (and, for graph replay,
/// at the same addresses); set_grad/clear_grad after capture() need a new
/// capture().
///
/// QK-Clip (qk_clip, after a step) scales rows of the registered weights:
/// planned and checked on the host from maxima in host memory, then
/// launched on a stream; it is never part of the step or its graph, and a
/// captured graph stays valid across it.

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <initializer_list>
#include <istream>
#include <limits>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../detail/atomic_file.hpp"
#include "../../error.hpp"
#include "../../newton_schulz.hpp"
#include "../../optim/core.hpp"
#include "../../optim/host_state.hpp"
#include "../../optim/qk_clip.hpp"
#include "common.hpp"
#include "kernels.cuh"
#include "workspace.hpp"

namespace muon {
namespace cuda {

/// Memory order of a 2-D parameter given as rows x cols (rows = outputs).
enum class Layout {
  row_major,  ///< element (i, j) at i*cols + j (PyTorch (out, in) weights; the default)
  col_major   ///< element (i, j) at i + j*rows (Eigen, cuBLAS)
};

/// The device optimizer. P: parameter and gradient scalar (float, __half,
/// __nv_bfloat16); C: the Newton–Schulz scalar (default __nv_bfloat16).
template <class P, class C = __nv_bfloat16>
class Optimizer {
 public:
  /// Group 0 gets `muon` for Muon-routed and `adamw` for AdamW-routed parameters.
  explicit Optimizer(MuonGroupOptions muon = {}, AdamWOptions adamw = {},
                     Allocator alloc = default_allocator())
      : core_(std::move(muon), std::move(adamw)), alloc_(alloc) {
    check_ns(core_.group(0).muon.ns);
  }
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;
  ~Optimizer() { release_graph(); }

  // ---- groups and options (as muon::Optimizer) ----------------------------------

  /// Adds a group (before the first step/capture/save/load, which size the
  /// device's per-group values).
  std::size_t add_group(MuonGroupOptions muon, AdamWOptions adamw = {}) {
    if (prepared_)
      ::muon::detail::fail("add_group",
                           "groups must be added before the first step/capture/save/load");
    check_ns(muon.ns);
    return core_.add_group(std::move(muon), std::move(adamw));
  }
  std::size_t group_count() const { return core_.group_count(); }
  const MuonGroupOptions& muon_options(std::size_t group = 0) const {
    return core_.group(group).muon;
  }
  const AdamWOptions& adamw_options(std::size_t group = 0) const {
    return core_.group(group).adamw;
  }
  /// Replaces a group's Muon options. A change of variant gives the group's
  /// Muon parameters the new variant's state, zeroed (see the file comment).
  void set_muon_options(const MuonGroupOptions& o, std::size_t group = 0) {
    check_ns(o.ns);
    (void)core_.group(group);  // a bad index throws before anything is allocated
    o.validate();
    change_muon_options(group, o.variant, [&] { core_.set_muon_options(o, group); });
  }
  void set_adamw_options(const AdamWOptions& o, std::size_t group = 0) {
    core_.set_adamw_options(o, group);
  }
  void set_option(std::string_view key, double value, std::size_t group = 0) {
    core_.set_option(key, value, group);
  }
  /// A named option ("variant" changes the state a Muon parameter keeps,
  /// as set_muon_options does).
  void set_option(std::string_view key, std::string_view value, std::size_t group = 0) {
    GroupOptions probe = core_.group(group);
    optim::set_option(probe, key, value);  // validates: throws before anything changes
    check_ns(probe.muon.ns);
    change_muon_options(group, probe.muon.variant, [&] { core_.set_option(key, value, group); });
  }
  void set_option(std::string_view key, const char* value, std::size_t group = 0) {
    set_option(key, std::string_view(value), group);
  }
  void set_non_finite_policy(NonFinitePolicy p) { core_.set_non_finite_policy(p); }
  NonFinitePolicy non_finite_policy() const { return core_.non_finite_policy(); }
  void set_routing_rules(RoutingRules rules) { core_.set_routing_rules(std::move(rules)); }
  const RoutingRules& routing_rules() const { return core_.routing_rules(); }
  void set_lr_schedule(const LrSchedule& s) { core_.set_lr_schedule(s); }
  void clear_lr_schedule() { core_.clear_lr_schedule(); }
  void set_momentum_warmup(const MomentumWarmup& w) { core_.set_momentum_warmup(w); }
  void clear_momentum_warmup() { core_.clear_momentum_warmup(); }
  double current_lr(std::size_t group = 0) const { return core_.current_lr(group); }
  double current_adamw_lr(std::size_t group = 0) const { return core_.current_adamw_lr(group); }
  double current_momentum(std::size_t group = 0) const { return core_.current_momentum(group); }

  // ---- parameters ---------------------------------------------------------------

  /// Registers a dense device tensor of up to 4 dimensions (row-major; a
  /// 2-D shape may set column_major) and its gradient (may be null: absent
  /// until set_grad). Routes like the CPU optimizer. Throws muon::Error for
  /// a duplicate or empty name, a null parameter, an empty shape, a bad
  /// group or split, or after the first step/capture/save/load; the
  /// optimizer is then unchanged.
  void add_param(const std::string& name, P* param, const P* grad, const optim::TensorShape& shape,
                 const ParamOptions& options = ParamOptions()) {
    if (prepared_)
      ::muon::detail::fail("add_param",
                           "parameters must be added before the first step/capture/save/load");
    if (param == nullptr) ::muon::detail::fail("param", "'" + name + "' has a null device pointer");
    core_.add_param(name, shape, options);
    param_ptrs_.push_back(param);
    grad_ptrs_.push_back(grad);
  }
  /// A contiguous row-major tensor: add_param(name, w, gw, {rows, cols}).
  void add_param(const std::string& name, P* param, const P* grad,
                 std::initializer_list<std::int64_t> dims,
                 const ParamOptions& options = ParamOptions()) {
    if (dims.size() > 4) ::muon::detail::fail("shape", "at most 4 dimensions are supported");
    optim::TensorShape s;
    for (std::int64_t d : dims) s.dims[static_cast<std::size_t>(s.ndim++)] = d;
    add_param(name, param, grad, s, options);
  }
  /// A rows x cols matrix in `layout` order.
  void add_param(const std::string& name, P* param, const P* grad, std::int64_t rows,
                 std::int64_t cols, Layout layout, const ParamOptions& options = ParamOptions()) {
    optim::TensorShape s;
    s.ndim = 2;
    s.dims[0] = rows;
    s.dims[1] = cols;
    s.column_major = layout == Layout::col_major;
    add_param(name, param, grad, s, options);
  }

  /// Points a parameter at a new gradient (null: absent). Takes effect at the
  /// next step(); a captured graph keeps the old pointers until capture().
  void set_grad(const std::string& name, const P* grad) { grad_ptrs_[core_.index(name)] = grad; }
  void clear_grad(const std::string& name) { set_grad(name, nullptr); }
  void clear_grads() { std::fill(grad_ptrs_.begin(), grad_ptrs_.end(), nullptr); }

  std::size_t param_count() const { return core_.size(); }
  bool has_param(const std::string& name) const { return core_.registry().find(name).has_value(); }
  std::vector<std::string> param_names() const { return core_.registry().names(); }
  Route route(const std::string& name) const { return core_.param(core_.index(name)).route; }
  /// Steps of a parameter and of the optimizer as of the last report(),
  /// save() or load() (the device advances them; those calls read them back).
  std::int64_t param_steps(const std::string& name) const {
    return core_.param(core_.index(name)).steps;
  }
  std::int64_t step_count() const { return core_.step_count(); }
  RoutingReport routing() const { return core_.routing(); }
  const optim::Core& core() const { return core_; }
  /// Same-shape batches of Muon blocks (one batched Newton–Schulz call each).
  std::size_t shape_batch_count() const { return batches_.size(); }

  // ---- the step -------------------------------------------------------------------

  /// One step on `stream`: uploads this step's scalars (learning rates from
  /// the schedule, momentum, each block's adjusted lr), then launches the
  /// check, decide, commit and finish kernels. No synchronization. The
  /// outcome is known on the device; report() reads it.
  void step(cudaStream_t stream) {
    prepare(stream);
    upload_step_values(stream);
    enqueue(stream);
    core_.finish_step();  // optimistic: report() corrects the counters from the device
  }

  /// Captures one whole step into a CUDA graph (stream must not be the
  /// legacy default stream). Nothing is executed by the capture itself.
  void capture(cudaStream_t stream) {
    if (stream == nullptr)
      ::muon::detail::fail("capture",
                           "needs a created stream (the legacy default stream cannot capture)");
    prepare(stream);
    MUON_CUDA_CHECK(cudaStreamSynchronize(stream));
    release_graph();
    for (auto& b : batches_) b.ortho->workspace().bind(stream);
    MUON_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue(stream);
    } catch (...) {
      cudaGraph_t g = nullptr;
      (void)cudaStreamEndCapture(stream, &g);
      if (g) (void)cudaGraphDestroy(g);
      throw;
    }
    MUON_CUDA_CHECK(cudaStreamEndCapture(stream, &graph_));
    MUON_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
    no_graph_ = "capture() was not called";
  }

  /// One step through the captured graph: uploads this step's scalars, then
  /// one graph launch. Throws muon::Error when capture() was not called.
  void replay(cudaStream_t stream) {
    if (exec_ == nullptr) ::muon::detail::fail("replay", no_graph_);
    upload_step_values(stream);
    MUON_CUDA_CHECK(cudaGraphLaunch(exec_, stream));
    core_.finish_step();
  }

  /// Synchronizes `stream` and returns what the last step did, with the step
  /// counters read back from the device. Throws muon::Error naming the first
  /// parameter at fault when the last step was refused (NonFinitePolicy::raise:
  /// nothing was written).
  const StepReport& report(cudaStream_t stream) {
    if (!prepared_) return core_.last_report();
    const std::vector<int> flags = detail::download_now(flags_, core_.size(), stream);
    sync_counters(stream);
    core_.begin_report();
    for (std::size_t i = 0; i < flags.size(); ++i)
      if (flags[i]) core_.skip(i, reason(flags[i]));
    const StepReport& r = core_.end_report(state_host_.verdict != 0);
    if (state_host_.verdict) {
      for (std::size_t i = 0; i < flags.size(); ++i)
        if (flags[i] & ~kernels::kNoGrad) refuse(i, flags[i]);
    }
    return r;
  }

  // ---- QK-Clip --------------------------------------------------------------------

  /// QK-Clip after a step (optim/qk_clip.hpp; Kimi K2's MuonClip), as
  /// muon::Optimizer::qk_clip: scales the query and key rows of every head
  /// whose largest attention logit, `max_logits[h]` (host memory: the
  /// maxima as the caller copied them back), is above options.tau; a head
  /// at tau is left alone. The request is planned and checked on the host
  /// first: a NaN or infinite maximum (muon::Error naming the head), an
  /// unknown or non-2-D parameter, rows out of range, a bad tau or alpha
  /// throw before anything is launched, so nothing is written. Then one
  /// scale_rows launch on `stream` per 32 scalings (two per clipped head),
  /// computing w * factor in float, rounded once to P; no allocation, no
  /// synchronization, and no CUDA call at all when no head is clipped.
  /// (Only a CUDA failure between two launches, past 16 clipped heads, can
  /// leave part of the rows scaled.)
  ///
  /// Only the weights change (not the optimizer state), in place and
  /// stream-ordered: a step queued before on `stream` is done first, one on
  /// another stream must be ordered by the caller. A captured step graph
  /// holds the weights' addresses, not their values, so it stays valid and
  /// its next replay reads the clipped weights. qk_clip itself is not
  /// capturable: its factors come from this call's maxima. It throws
  /// muon::Error, launching nothing, when `stream` is capturing a graph;
  /// call it eagerly, after the step (or its replay). Works before the
  /// first step too (it needs no optimizer state).
  QkClipReport qk_clip(const QkClipHeads& heads, const double* max_logits, std::size_t count,
                       cudaStream_t stream, const QkClipOptions& options = QkClipOptions()) {
    const optim::QkClipPlan plan = optim::plan_qk_clip(core_, heads, max_logits, count, options);
    if (plan.scalings.empty()) return plan.report;
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    MUON_CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
    if (capturing != cudaStreamCaptureStatusNone)
      ::muon::detail::fail("qk_clip",
                           "the stream is capturing a CUDA graph; QK-Clip's factors come from "
                           "each call's maxima, so call it eagerly, after the step (nothing was "
                           "launched)");
    constexpr std::size_t per_launch = kernels::kRowScalesPerLaunch;
    for (std::size_t first = 0; first < plan.scalings.size(); first += per_launch) {
      const std::size_t last = std::min(plan.scalings.size(), first + per_launch);
      kernels::RowScaleBatch<P> batch{};
      std::int64_t longest = 0;
      for (std::size_t j = first; j < last; ++j) {
        const optim::RowScaling& r = plan.scalings[j];
        const optim::TensorShape& shape = core_.param(r.param).shape;
        kernels::RowScale<P>& s = batch.s[batch.count++];
        s.p = param_ptrs_[r.param];
        s.out = shape.dims[0];
        s.in = shape.dims[1];
        s.row = r.row;
        s.rows = r.rows;
        s.factor = static_cast<float>(r.factor);
        s.column_major = shape.column_major ? 1 : 0;
        longest = std::max(longest, s.rows * s.in);
      }
      const dim3 grid(kernels::elementwise_blocks(longest), static_cast<unsigned>(batch.count));
      kernels::scale_rows<P><<<grid, 256, 0, stream>>>(batch);
      check_launch("muon::cuda::kernels::scale_rows");
    }
    return plan.report;
  }
  QkClipReport qk_clip(const QkClipHeads& heads, const std::vector<double>& max_logits,
                       cudaStream_t stream, const QkClipOptions& options = QkClipOptions()) {
    return qk_clip(heads, max_logits.data(), max_logits.size(), stream, options);
  }

  // ---- checkpoints ----------------------------------------------------------------

  /// Writes the state in the one checkpoint format every backend shares
  /// (fp32 buffers; loads into a CPU muon::Optimizer<float>). Synchronizes.
  void save(std::ostream& os, cudaStream_t stream) {
    prepare(stream);
    sync_counters(stream);
    optim::HostState host(core_);  // sized by route and variant (Core::buffer_names)
    for (std::size_t i = 0; i < core_.size(); ++i) {
      const Slot& s = slots_[i];
      host.buffer(i, 0) =
          detail::download_now(s.momentum, static_cast<std::size_t>(s.numel), stream);
      if (core_.buffer_names(i).size() > 1)
        host.buffer(i, 1) = detail::download_now(s.second_moment, host.buffer(i, 1).size(), stream);
    }
    host.save(os, core_, dtype_of_param());
  }
  /// save() to a file atomically (a temporary beside it, synced, renamed).
  void save_file(const std::string& path, cudaStream_t stream) {
    ::muon::detail::write_file_atomically(path, [&](std::ostream& os) { save(os, stream); });
  }

  /// Restores a state written by save() of any backend (fp32 buffers) into
  /// an optimizer with the same parameters (by name, or through
  /// options.rename). Throws muon::Error listing every mismatch; the whole
  /// stream is read and checked before anything changes. Synchronizes.
  void load(std::istream& is, cudaStream_t stream, const LoadOptions& options = LoadOptions()) {
    load_from(is, stream, options, "stream");
  }
  void load_file(const std::string& path, cudaStream_t stream,
                 const LoadOptions& options = LoadOptions()) {
    std::ifstream is(path, std::ios::binary);
    if (!is) ::muon::detail::fail("path", "cannot open '" + path + "' for reading");
    load_from(is, stream, options, "'" + path + "'");
  }

 private:
  struct Slot {
    std::int64_t numel = 0;
    float* momentum = nullptr;  // Muon: momentum; AdamW: exp_avg (first moment)
    // AdamW: exp_avg_sq (in state_). Muon: the variant's second moment (in
    // variant_state; null for plain Muon).
    float* second_moment = nullptr;
    // Muon: the variant variant_state was made for (the group's, kept in
    // step by the setters and load) and its buffer: NorMuon's V per line
    // (max(rows, cols) per block, blocks in order), AdaMuon's V per entry.
    MuonVariant variant = MuonVariant::muon;
    DeviceBuffer variant_state;
    std::vector<std::size_t> batch, slot;  // per block: its shape batch and place in it
    std::vector<std::size_t> block_value;  // per block: index into the block lr array
  };
  // Same-shape Muon blocks, orthogonalized together: the staging holds
  // `members` dense (cols x rows_b) column-major matrices (each a row-major
  // rows_b x cols block of a parameter).
  struct ShapeBatch {
    std::int64_t block_rows = 0, cols = 0;
    std::size_t group = 0;  // the group whose Newton–Schulz options it runs
    std::size_t members = 0;
    DeviceBuffer staging;  // float
    DeviceBuffer output;   // C
    std::unique_ptr<Orthogonalizer<C>> ortho;
  };

  static checkpoint::Dtype dtype_of_param() {
    if constexpr (std::is_same_v<P, float>)
      return checkpoint::Dtype::float32;
    else if constexpr (std::is_same_v<P, __half>)
      return checkpoint::Dtype::float16;
    else
      return checkpoint::Dtype::bfloat16;
  }

  static void check_ns(const NewtonSchulzOptions& ns) {
    if (ns.method == NsMethod::gram)
      ::muon::detail::fail("ns_method",
                           "NsMethod::gram is not implemented by the CUDA backend (use standard, "
                           "or automatic, which runs the standard form here)");
  }

  static SkipReason reason(int flags) {
    if (flags & kernels::kNoGrad) return SkipReason::no_grad;
    if (flags & kernels::kNonFiniteGrad) return SkipReason::non_finite_grad;
    if (flags & kernels::kNonFiniteState) return SkipReason::non_finite_state;
    return SkipReason::non_finite_update;
  }

  [[noreturn]] void refuse(std::size_t i, int flags) const {
    const optim::ParamRecord& p = core_.param(i);
    if (flags & kernels::kNonFiniteGrad)
      ::muon::detail::fail("grad", "'" + p.name + "' contains NaN or Inf (nothing was updated)");
    const std::string what =
        (flags & kernels::kNonFiniteState)
            ? std::string(p.muon() ? "its momentum" : "an AdamW moment") + " would overflow float"
            : std::string("the updated parameter could overflow ") + device_scalar<P>::name;
    ::muon::detail::fail("step", "'" + p.name + "': " + what + " (nothing was updated)");
  }

  // Allocates state and workspaces once (zeroed buffers). Everything is
  // built aside and moved in at the end, so a failed allocation leaves the
  // optimizer as it was.
  void prepare(cudaStream_t stream) {
    if (prepared_) return;
    const std::size_t n = core_.size();
    std::size_t floats = 0, blocks = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const optim::ParamRecord& p = core_.param(i);
      floats += static_cast<std::size_t>(p.numel()) * (p.muon() ? 1 : 2);
      blocks += p.muon() ? p.blocks.size() : 0;
    }
    DeviceBuffer state(sizeof(float) * std::max<std::size_t>(floats, 1), stream, alloc_,
                       "muon::cuda::Optimizer state");
    MUON_CUDA_CHECK(cudaMemsetAsync(state.data(), 0, state.bytes(), stream));
    std::vector<Slot> slots(n);
    std::vector<ShapeBatch> batches;
    std::map<std::array<std::int64_t, 3>, std::size_t> by_shape;  // (rows, cols, group)
    float* cursor = static_cast<float*>(state.data());
    std::size_t block_value = 0;
    std::int64_t scratch = 1;  // doubles of the variants' scratch (variant_sums_)
    for (std::size_t i = 0; i < n; ++i) {
      const optim::ParamRecord& p = core_.param(i);
      Slot& s = slots[i];
      s.numel = p.numel();
      s.momentum = cursor;
      cursor += s.numel;
      if (!p.muon()) {
        s.second_moment = cursor;
        cursor += s.numel;
        continue;
      }
      for (std::int64_t rows : p.blocks) {
        const std::array<std::int64_t, 3> key{rows, p.cols, static_cast<std::int64_t>(p.group)};
        auto it = by_shape.find(key);
        if (it == by_shape.end()) {
          it = by_shape.emplace(key, batches.size()).first;
          batches.emplace_back();
          batches.back().block_rows = rows;
          batches.back().cols = p.cols;
          batches.back().group = p.group;
        }
        s.batch.push_back(it->second);
        s.slot.push_back(batches[it->second].members++);
        s.block_value.push_back(block_value++);
        scratch = std::max(scratch, variant_scratch(rows, p.cols));
      }
      s.variant = core_.variant(i);
      s.variant_state = make_variant_state(p, s.variant, stream);
      s.second_moment = static_cast<float*>(s.variant_state.data());
    }
    for (auto& b : batches) {
      const std::size_t count = static_cast<std::size_t>(b.block_rows * b.cols) * b.members;
      b.staging =
          DeviceBuffer(sizeof(float) * count, stream, alloc_, "muon::cuda::Optimizer staging");
      MUON_CUDA_CHECK(cudaMemsetAsync(b.staging.data(), 0, b.staging.bytes(), stream));
      b.output = DeviceBuffer(sizeof(C) * count, stream, alloc_, "muon::cuda::Optimizer output");
      // A row-major rows_b x cols block is the column-major cols x rows_b matrix.
      b.ortho = std::make_unique<Orthogonalizer<C>>(
          b.cols, b.block_rows, static_cast<std::int64_t>(b.members), stream, alloc_);
    }
    // Per-step values: groups, params, block lrs (uploaded each step), and
    // the device-side machinery (flags, max |p|, AdamW coefficients,
    // counters, state).
    const std::size_t groups_bytes = sizeof(kernels::GroupStep) * core_.group_count();
    const std::size_t params_bytes = sizeof(kernels::ParamStep) * std::max<std::size_t>(n, 1);
    const std::size_t lr_bytes = sizeof(float) * std::max<std::size_t>(blocks, 1);
    DeviceBuffer values(align(groups_bytes) + align(params_bytes) + align(lr_bytes), stream, alloc_,
                        "muon::cuda::Optimizer step values");
    const std::size_t flags_bytes = sizeof(int) * std::max<std::size_t>(n, 1);
    const std::size_t maxabs_bytes = sizeof(unsigned) * std::max<std::size_t>(n, 1);
    const std::size_t coef_bytes =
        sizeof(optim::rules::AdamWCoefficients<float>) * std::max<std::size_t>(n, 1);
    const std::size_t steps_bytes = sizeof(long long) * std::max<std::size_t>(n, 1);
    const std::size_t variant_coef_bytes =
        sizeof(optim::rules::SecondMomentCoefficients<float>) * std::max<std::size_t>(n, 1);
    const std::size_t variant_sums_bytes = sizeof(double) * static_cast<std::size_t>(scratch);
    DeviceBuffer machinery(align(flags_bytes) + align(maxabs_bytes) + align(coef_bytes) +
                               align(steps_bytes) + align(sizeof(kernels::StepState)) +
                               align(variant_coef_bytes) + align(variant_sums_bytes) +
                               align(sizeof(float)),
                           stream, alloc_, "muon::cuda::Optimizer step machinery");
    MUON_CUDA_CHECK(cudaMemsetAsync(machinery.data(), 0, machinery.bytes(), stream));

    // Commit: nothing below throws but the uploads.
    state_ = std::move(state);
    slots_ = std::move(slots);
    batches_ = std::move(batches);
    values_ = std::move(values);
    machinery_ = std::move(machinery);
    char* v = static_cast<char*>(values_.data());
    groups_dev_ = reinterpret_cast<kernels::GroupStep*>(v);
    params_dev_ = reinterpret_cast<kernels::ParamStep*>(v + align(groups_bytes));
    block_lr_dev_ = reinterpret_cast<float*>(v + align(groups_bytes) + align(params_bytes));
    char* q = static_cast<char*>(machinery_.data());
    flags_ = reinterpret_cast<int*>(q);
    q += align(flags_bytes);
    max_abs_ = reinterpret_cast<unsigned*>(q);
    q += align(maxabs_bytes);
    coef_ = reinterpret_cast<optim::rules::AdamWCoefficients<float>*>(q);
    q += align(coef_bytes);
    steps_ = reinterpret_cast<long long*>(q);
    q += align(steps_bytes);
    state_dev_ = reinterpret_cast<kernels::StepState*>(q);
    q += align(sizeof(kernels::StepState));
    variant_coef_ = reinterpret_cast<optim::rules::SecondMomentCoefficients<float>*>(q);
    q += align(variant_coef_bytes);
    variant_sums_ = reinterpret_cast<double*>(q);
    q += align(variant_sums_bytes);
    variant_ratio_ = reinterpret_cast<float*>(q);
    home_ = stream;
    host_groups_.resize(core_.group_count());
    host_params_.resize(n);
    host_block_lr_.resize(blocks);
    prepared_ = true;
    upload_counters(stream);
  }

  static std::size_t align(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

  // ---- the variants' state ------------------------------------------------------

  // The doubles a rows x cols block needs in variant_sums_: NorMuon's sum
  // (then factor) per line, AdaMuon's partial sum per CUDA block.
  static std::int64_t variant_scratch(std::int64_t rows, std::int64_t cols) {
    return std::max<std::int64_t>(
        std::max(rows, cols), kernels::elementwise_blocks(rows * cols, kernels::kReduceThreads));
  }

  // The second moment Muon parameter p keeps under `variant`, zeroed on
  // `stream` (empty for plain Muon). Throws muon::Error when the allocation
  // fails.
  DeviceBuffer make_variant_state(const optim::ParamRecord& p, MuonVariant variant,
                                  cudaStream_t stream) const {
    if (variant == MuonVariant::muon) return DeviceBuffer();
    const auto count = static_cast<std::size_t>(optim::buffer_elements(p, variant, 1));
    DeviceBuffer b(sizeof(float) * count, stream, alloc_, "muon::cuda::Optimizer variant state");
    MUON_CUDA_CHECK(cudaMemsetAsync(b.data(), 0, b.bytes(), stream));
    return b;
  }

  // Makes `state` (made for `variant`) the second moment of Muon slot s; its
  // old buffer is released on its stream, after the work queued there.
  static void adopt_variant_state(Slot& s, MuonVariant variant, DeviceBuffer state) {
    s.variant_state = std::move(state);
    s.second_moment = static_cast<float*>(s.variant_state.data());
    s.variant = variant;
  }

  // Applies `change`, a change of group `group`'s Muon options already
  // validated (so it does not throw), whose variant is `next`. Once the
  // state exists, the group's Muon parameters made for another variant get
  // `next`'s state, zeroed: allocated first (a failed allocation changes
  // nothing) on the home stream, which is then waited for, so that a step
  // on any stream finds them ready; the captured graph, which holds the old
  // buffers and kernels, is dropped. Before the first step prepare() makes
  // the state from the options.
  template <class Change>
  void change_muon_options(std::size_t group, MuonVariant next, Change&& change) {
    std::vector<std::pair<std::size_t, DeviceBuffer>> made;
    if (prepared_) {
      for (std::size_t i = 0; i < core_.size(); ++i) {
        const optim::ParamRecord& p = core_.param(i);
        if (p.muon() && p.group == group && slots_[i].variant != next)
          made.emplace_back(i, make_variant_state(p, next, home_));
      }
      if (!made.empty()) MUON_CUDA_CHECK(cudaStreamSynchronize(home_));
    }
    change();
    for (auto& [i, state] : made) adopt_variant_state(slots_[i], next, std::move(state));
    if (!made.empty()) drop_graph("a change of variant since capture() needs a new capture()");
  }

  // NorMuon's V of a rows x cols block (row-major in memory) runs along the
  // longer side of its (out, in) matrix: per memory row, or per memory
  // column. A column-major parameter's out is the memory column; ties go as
  // on the CPU (by the out dimension's lines).
  static bool normuon_by_row(const optim::ParamRecord& p, std::int64_t rows) {
    const bool out_longer = p.shape.column_major ? p.cols >= rows : rows >= p.cols;
    return p.shape.column_major ? !out_longer : out_longer;
  }

  // This step's scalars, from the core's plan (host, in double), to the device.
  void upload_step_values(cudaStream_t stream) {
    const optim::StepPlan& plan = core_.begin_step();
    for (std::size_t g = 0; g < core_.group_count(); ++g) {
      const GroupOptions& o = core_.group(g);
      kernels::GroupStep& v = host_groups_[g];
      v.momentum = core_.momentum_coefficients<float>(g);
      v.decay = optim::rules::muon_update_coefficients<float>(
                    o.muon.decay_multiplier(plan.groups[g].muon_lr), 0.0, false)
                    .decay;
      v.cautious = o.muon.cautious_weight_decay ? 1 : 0;
      v.adamw_lr = plan.groups[g].adamw_lr;
      v.adamw_beta1 = o.adamw.beta1;
      v.adamw_beta2 = o.adamw.beta2;
      v.adamw_eps = o.adamw.eps;
      v.adamw_weight_decay = o.adamw.weight_decay;
      const bool adamuon = o.muon.variant == MuonVariant::adamuon;
      v.second_moment_beta2 = adamuon ? o.muon.adamuon_beta2 : o.muon.normuon_beta2;
      v.second_moment_eps = adamuon ? o.muon.adamuon_eps : o.muon.normuon_eps;
      v.second_moment_bias_correction = o.muon.second_moment_bias_corrected() ? 1 : 0;
    }
    for (std::size_t i = 0; i < core_.size(); ++i) {
      const optim::ParamRecord& p = core_.param(i);
      kernels::ParamStep& v = host_params_[i];
      v.group = static_cast<int>(p.group);
      v.present = grad_ptrs_[i] != nullptr ? 1 : 0;
      v.adamw = p.muon() ? 0 : 1;
      if (!p.muon()) continue;
      for (std::size_t b = 0; b < p.blocks.size(); ++b)
        host_block_lr_[slots_[i].block_value[b]] = static_cast<float>(plan.block_lr[i][b]);
      const double limit = core_.update_limit(i, storage_max<P>());
      v.update_limit = limit >= 0 ? static_cast<float>(std::min(limit, 3.0e38)) : -1.0f;
    }
    detail::upload(groups_dev_, host_groups_.data(), host_groups_.size(), stream);
    if (!host_params_.empty())
      detail::upload(params_dev_, host_params_.data(), host_params_.size(), stream);
    if (!host_block_lr_.empty())
      detail::upload(block_lr_dev_, host_block_lr_.data(), host_block_lr_.size(), stream);
    state_host_.raise = core_.non_finite_policy() == NonFinitePolicy::raise ? 1 : 0;
    detail::upload(reinterpret_cast<char*>(state_dev_) + offsetof(kernels::StepState, raise),
                   reinterpret_cast<const char*>(&state_host_.raise), sizeof(int), stream);
  }

  void enqueue(cudaStream_t stream) {
    const int n = static_cast<int>(core_.size());
    const unsigned one_block = 256, per_param = static_cast<unsigned>((n + 255) / 256);
    if (n == 0) return;
    kernels::begin_step<<<per_param, one_block, 0, stream>>>(n, params_dev_, flags_, max_abs_);
    check_launch("muon::cuda::kernels::begin_step");
    kernels::adamw_prepare<<<per_param, one_block, 0, stream>>>(n, params_dev_, groups_dev_, steps_,
                                                                coef_);
    check_launch("muon::cuda::kernels::adamw_prepare");
    if (any_variant()) {
      kernels::second_moment_prepare<<<per_param, one_block, 0, stream>>>(
          n, params_dev_, groups_dev_, steps_, variant_coef_);
      check_launch("muon::cuda::kernels::second_moment_prepare");
    }
    // 1. checks (read only)
    for (std::size_t i = 0; i < core_.size(); ++i) {
      const optim::ParamRecord& p = core_.param(i);
      const P* g = grad_ptrs_[i];
      if (!g) continue;
      const Slot& s = slots_[i];
      const unsigned blocks = kernels::elementwise_blocks(s.numel);
      if (p.muon()) {
        kernels::muon_check<P><<<blocks, 256, 0, stream>>>(g, s.momentum, param_ptrs_[i], s.numel,
                                                           groups_dev_ + p.group, flags_ + i,
                                                           max_abs_ + i);
        check_launch("muon::cuda::kernels::muon_check");
      } else {
        kernels::adamw_check<P><<<blocks, 256, 0, stream>>>(
            param_ptrs_[i], g, s.momentum, s.second_moment, s.numel, coef_ + i, flags_ + i);
        check_launch("muon::cuda::kernels::adamw_check");
      }
    }
    // 2. the verdict
    kernels::decide<<<1, 256, 0, stream>>>(n, params_dev_, flags_, max_abs_, state_dev_);
    check_launch("muon::cuda::kernels::decide");
    // 3. commits: momentum into the staging, Newton–Schulz per shape batch,
    //    updates; AdamW.
    for (std::size_t i = 0; i < core_.size(); ++i) {
      const optim::ParamRecord& p = core_.param(i);
      const P* g = grad_ptrs_[i];
      if (!g || !p.muon()) continue;
      const Slot& s = slots_[i];
      std::int64_t offset = 0;
      for (std::size_t b = 0; b < p.blocks.size(); ++b) {
        const ShapeBatch& batch = batches_[s.batch[b]];
        const std::int64_t count = batch.block_rows * batch.cols;
        float* staging = static_cast<float*>(batch.staging.data()) +
                         static_cast<std::int64_t>(s.slot[b]) * count;
        kernels::momentum_commit<P><<<kernels::elementwise_blocks(count), 256, 0, stream>>>(
            g + offset, param_ptrs_[i] + offset, s.momentum + offset, staging, count,
            groups_dev_ + p.group, state_dev_, flags_ + i);
        check_launch("muon::cuda::kernels::momentum_commit");
        offset += count;
      }
    }
    for (ShapeBatch& b : batches_) {
      const std::int64_t count = b.block_rows * b.cols,
                         members = static_cast<std::int64_t>(b.members);
      const BatchedMatrixView<const float> in(static_cast<const float*>(b.staging.data()), b.cols,
                                              b.block_rows, b.cols, count, members);
      const BatchedMatrixView<C> out(static_cast<C*>(b.output.data()), b.cols, b.block_rows, b.cols,
                                     count, members);
      b.ortho->run_from_float(in, out, core_.group(b.group).muon.ns, stream);
    }
    for (std::size_t i = 0; i < core_.size(); ++i) {
      const optim::ParamRecord& p = core_.param(i);
      const P* g = grad_ptrs_[i];
      if (!g) continue;
      const Slot& s = slots_[i];
      if (!p.muon()) {
        kernels::adamw_commit<P><<<kernels::elementwise_blocks(s.numel), 256, 0, stream>>>(
            param_ptrs_[i], g, s.momentum, s.second_moment, s.numel, coef_ + i, state_dev_,
            flags_ + i);
        check_launch("muon::cuda::kernels::adamw_commit");
        continue;
      }
      std::int64_t offset = 0, line = 0;  // the block's first entry; (NorMuon) its first line
      for (std::size_t b = 0; b < p.blocks.size(); ++b) {
        enqueue_block_update(i, b, offset, line, stream);
        offset += p.blocks[b] * p.cols;
        line += std::max(p.blocks[b], p.cols);
      }
    }
    // 4. counters
    kernels::finish_step<<<1, 256, 0, stream>>>(n, flags_, steps_, state_dev_);
    check_launch("muon::cuda::kernels::finish_step");
  }

  bool any_variant() const {
    return std::any_of(slots_.begin(), slots_.end(),
                       [](const Slot& s) { return s.variant != MuonVariant::muon; });
  }

  // The update of block b of Muon parameter i from its Newton–Schulz output
  // O, by the parameter's variant. `offset`: the block's first entry in the
  // parameter (and AdaMuon's V); `line`: its first line in NorMuon's V. The
  // variants' kernels share variant_sums_ and variant_ratio_, which the
  // stream order makes safe: one block is done before the next begins.
  void enqueue_block_update(std::size_t i, std::size_t b, std::int64_t offset, std::int64_t line,
                            cudaStream_t stream) {
    const optim::ParamRecord& p = core_.param(i);
    const Slot& s = slots_[i];
    const ShapeBatch& batch = batches_[s.batch[b]];
    const std::int64_t rows = batch.block_rows, cols = batch.cols, count = rows * cols;
    const C* o =
        static_cast<const C*>(batch.output.data()) + static_cast<std::int64_t>(s.slot[b]) * count;
    P* w = param_ptrs_[i] + offset;
    const kernels::GroupStep* group = groups_dev_ + p.group;
    const float* lr = block_lr_dev_ + s.block_value[b];
    const int* flag = flags_ + i;
    const unsigned blocks = kernels::elementwise_blocks(count);
    constexpr int reduce = kernels::kReduceThreads;
    const unsigned reduce_blocks = kernels::elementwise_blocks(count, reduce);
    switch (s.variant) {
      case MuonVariant::muon:
        kernels::muon_commit<P, C>
            <<<blocks, 256, 0, stream>>>(w, o, count, group, lr, state_dev_, flag);
        check_launch("muon::cuda::kernels::muon_commit");
        return;
      case MuonVariant::normuon: {
        const bool by_row = normuon_by_row(p, rows);
        if (by_row) {
          kernels::sumsq_per_row<C><<<static_cast<unsigned>(rows), reduce, 0, stream>>>(
              o, cols, variant_sums_, state_dev_, flag);
          check_launch("muon::cuda::kernels::sumsq_per_row");
        } else {
          kernels::sumsq_per_column<C><<<kernels::column_sum_blocks(cols), reduce, 0, stream>>>(
              o, rows, cols, variant_sums_, state_dev_, flag);
          check_launch("muon::cuda::kernels::sumsq_per_column");
        }
        // A row's mean is over its cols entries, a column's over its rows.
        kernels::normuon_factors<<<1, reduce, 0, stream>>>(
            s.second_moment + line, variant_sums_, by_row ? rows : cols,
            static_cast<double>(by_row ? cols : rows), variant_coef_ + i, variant_ratio_,
            state_dev_, flag);
        check_launch("muon::cuda::kernels::normuon_factors");
        kernels::normuon_commit<P, C><<<blocks, 256, 0, stream>>>(
            w, o, count, cols, by_row, variant_sums_, variant_ratio_, group, lr, state_dev_, flag);
        check_launch("muon::cuda::kernels::normuon_commit");
        return;
      }
      case MuonVariant::adamuon: {
        float* v = s.second_moment + offset;
        // One partial sum per CUDA block of kReduceThreads (variant_scratch).
        kernels::adamuon_moment<C><<<reduce_blocks, reduce, 0, stream>>>(
            o, v, count, variant_coef_ + i, variant_sums_, state_dev_, flag);
        check_launch("muon::cuda::kernels::adamuon_moment");
        kernels::adamuon_ratio<<<1, reduce, 0, stream>>>(
            variant_sums_, static_cast<int>(reduce_blocks),
            static_cast<double>(std::min(rows, cols)), variant_ratio_, state_dev_, flag);
        check_launch("muon::cuda::kernels::adamuon_ratio");
        kernels::adamuon_commit<P, C><<<blocks, 256, 0, stream>>>(
            w, o, v, count, variant_coef_ + i, variant_ratio_, group, lr, state_dev_, flag);
        check_launch("muon::cuda::kernels::adamuon_commit");
        return;
      }
    }
  }

  // Reads the device's step counters back into the core (synchronizes).
  void sync_counters(cudaStream_t stream) {
    if (!prepared_) return;
    const std::vector<long long> steps = detail::download_now(steps_, core_.size(), stream);
    state_host_ = detail::download_now(state_dev_, 1, stream).front();
    std::vector<std::int64_t> s(steps.begin(), steps.end());
    core_.set_counters(state_host_.step_count, s);
  }
  // Writes the core's counters to the device.
  void upload_counters(cudaStream_t stream) {
    host_steps_.assign(core_.size(), 0);
    for (std::size_t i = 0; i < core_.size(); ++i) host_steps_[i] = core_.param(i).steps;
    state_host_.step_count = core_.step_count();
    state_host_.verdict = 0;
    state_host_.raise = core_.non_finite_policy() == NonFinitePolicy::raise ? 1 : 0;
    if (!host_steps_.empty())
      detail::upload(steps_, host_steps_.data(), host_steps_.size(), stream);
    detail::upload(state_dev_, &state_host_, 1, stream);
    MUON_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  void load_from(std::istream& is, cudaStream_t stream, const LoadOptions& options,
                 const std::string& origin) {
    optim::Core::Matched m = core_.match(is, checkpoint::Dtype::float32, options, origin);
    // Every buffer decoded to float, aside; their number and sizes follow the
    // file's groups (their variants), which the core takes over.
    optim::HostState host(core_, m);
    // Commit. prepare() changes nothing when it throws, nor does a failed
    // allocation of the file's variants' state (made aside here, for the
    // Muon parameters whose variant the file changes); past them only a
    // CUDA runtime failure can stop the copies.
    prepare(stream);
    const std::size_t n = core_.size();
    std::vector<MuonVariant> variants(n, MuonVariant::muon);
    std::vector<DeviceBuffer> reshaped(n);
    bool changed = false;
    for (std::size_t i = 0; i < n; ++i) {
      const optim::ParamRecord& p = core_.param(i);
      if (!p.muon()) continue;
      variants[i] = m.groups[p.group].muon.variant;
      if (variants[i] == slots_[i].variant) continue;
      reshaped[i] = make_variant_state(p, variants[i], stream);
      changed = true;
    }
    for (std::size_t i = 0; i < n; ++i) {
      const Slot& s = slots_[i];
      detail::upload(s.momentum, host.buffer(i, 0).data(), host.buffer(i, 0).size(), stream);
      const bool muon = core_.param(i).muon();
      if (muon && variants[i] == MuonVariant::muon) continue;
      float* second = muon && variants[i] != s.variant ? static_cast<float*>(reshaped[i].data())
                                                       : s.second_moment;
      detail::upload(second, host.buffer(i, 1).data(), host.buffer(i, 1).size(), stream);
    }
    core_.commit(m);
    for (std::size_t i = 0; i < n; ++i)
      if (core_.param(i).muon() && variants[i] != slots_[i].variant)
        adopt_variant_state(slots_[i], variants[i], std::move(reshaped[i]));
    if (changed) drop_graph("a load that changed a variant since capture() needs a new capture()");
    upload_counters(stream);
  }

  void release_graph() {
    if (exec_) (void)cudaGraphExecDestroy(exec_);
    if (graph_) (void)cudaGraphDestroy(graph_);
    exec_ = nullptr;
    graph_ = nullptr;
  }
  // Releases a captured graph made stale by a change of state; replay()
  // then says why.
  void drop_graph(const char* why) {
    if (exec_ == nullptr) return;
    release_graph();
    no_graph_ = why;
  }

  optim::Core core_;
  Allocator alloc_;
  std::vector<P*> param_ptrs_;
  std::vector<const P*> grad_ptrs_;
  std::vector<Slot> slots_;
  std::vector<ShapeBatch> batches_;
  DeviceBuffer state_, values_, machinery_;
  kernels::GroupStep* groups_dev_ = nullptr;
  kernels::ParamStep* params_dev_ = nullptr;
  float* block_lr_dev_ = nullptr;
  int* flags_ = nullptr;
  unsigned* max_abs_ = nullptr;
  optim::rules::AdamWCoefficients<float>* coef_ = nullptr;
  long long* steps_ = nullptr;
  kernels::StepState* state_dev_ = nullptr;
  // The variants' per-step coefficients (per parameter) and scratch: sums
  // or partial sums in double, and the block's norm ratio.
  optim::rules::SecondMomentCoefficients<float>* variant_coef_ = nullptr;
  double* variant_sums_ = nullptr;
  float* variant_ratio_ = nullptr;
  cudaStream_t home_ = nullptr;  // the stream prepare() ran on: the state is allocated there
  // Host copies, members so the stream-ordered uploads' sources outlive them.
  std::vector<kernels::GroupStep> host_groups_;
  std::vector<kernels::ParamStep> host_params_;
  std::vector<float> host_block_lr_;
  std::vector<long long> host_steps_;
  kernels::StepState state_host_{};
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  const char* no_graph_ = "capture() was not called";  // replay()'s error without a graph
  bool prepared_ = false;
};

}  // namespace cuda
}  // namespace muon
