// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/cuda/optimizer.hpp
/// \brief muon::cuda::Optimizer: the optimizer core (optim/core.hpp) over
/// device parameters, with the method set every facade shares
/// (optim::Front: groups, options, set_option, policy, routing, schedules,
/// queries, last_report). Same options, routing, groups, splits, schedules,
/// step semantics and checkpoint format as the CPU muon::Optimizer; this
/// class registers device pointers, launches steps and moves state.
///
///     muon::cuda::Optimizer<float> opt;                  // torch.optim.Muon defaults
///     opt.add_param("h.0.attn.c_attn.weight", w, gw, {2304, 768});   // row-major: Muon
///     opt.add_param("h.0.ln_1.bias", b, gb, {768});                  // 1-D: AdamW
///     opt.add_param("wte.weight", e, ge, {50257, 768});              // by name: AdamW
///     opt.step(stream);                         // eager: launches only
///     const auto& report = opt.report(stream);  // synchronizes; throws if refused
///     opt.capture(stream); ... opt.replay(stream);   // one graph launch per step
///
/// Where it lives:
///   device_state.hpp   the device buffers (made at the first step, capture,
///                      save or load) and the step machinery
///   step_scalars.hpp   this step's values, uploaded before every step/replay
///   step_launch.hpp    the launches of one step
///   step_graph.hpp     the captured step
///   kernels.cuh        the kernels, over the step rules of optim/step_rules.hpp
///
/// Tensors are dense device arrays, row-major (PyTorch's layout) unless
/// registered as column-major 2-D (Layout::column_major). Per Muon
/// parameter: momentum in fp32, the Newton–Schulz input staged in fp32 and
/// normalized as it is cast to C (default bf16), same-shape blocks of every
/// parameter orthogonalized as one batch, the update with the block's
/// adjusted lr. Per AdamW parameter: torch.optim.AdamW, fp32 moments. The
/// Muon variants (NorMuon, AdaMuon) keep their second moment in fp32 and
/// work on each block's Newton–Schulz output, their sums reduced in a fixed
/// order (no float atomics: a step gives the same bits on every run).
///
/// A step applies to every parameter or to none: check kernels read
/// gradients, state and parameters first; under NonFinitePolicy::raise any
/// problem refuses the whole step on the device (nothing is written, the
/// step counters do not move); under skip the parameter is left alone. All
/// of it is stream-ordered, so a captured graph keeps the guarantee.
///
/// The one difference from the other facades' method set, forced by
/// streams: step(stream) only launches, so it cannot return the step's
/// report. report(stream) synchronizes, reads the outcome back and returns
/// it, and throws the refused step's muon::Error (naming the parameter)
/// there. last_report() is the last report as the host knows it: what
/// report(stream) read, or, after a step() or replay() it has not read yet,
/// that step as launched (every parameter with a gradient counted as
/// updated). param_steps() and step_count() likewise follow the device as
/// of the last report(stream), save or load.
///
/// Construction, add_param, the routing queries and the option setters make
/// no CUDA call; device memory is allocated at the first step(), capture(),
/// save() or load(), after which parameters and groups can no longer be
/// added. After that, a change of variant (set_muon_options,
/// set_option("variant", ...)) allocates the new variant's state, zeroed,
/// on the stream of that first call and waits for it, then drops the
/// captured graph (capture() again); step() never allocates. Parameter and
/// gradient pointers must stay valid (and, for graph replay, at the same
/// addresses); set_grad/clear_grad after capture() need a new capture().
///
/// QK-Clip (qk_clip, after a step) scales rows of the registered weights:
/// planned and checked on the host from maxima in host memory, then
/// launched on a stream; it is never part of the step or its graph, and a
/// captured graph stays valid across it.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <initializer_list>
#include <istream>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "../../detail/atomic_file.hpp"
#include "../../error.hpp"
#include "../../optim/core.hpp"
#include "../../optim/front.hpp"
#include "../../optim/host_state.hpp"
#include "../../optim/qk_clip.hpp"
#include "../../optim/step_report.hpp"
#include "common.hpp"
#include "device_state.hpp"
#include "kernels.cuh"
#include "step_graph.hpp"
#include "step_launch.hpp"
#include "step_scalars.hpp"

namespace muon {
namespace cuda {

/// The device optimizer. P: parameter and gradient scalar (float, __half,
/// __nv_bfloat16); C: the Newton–Schulz scalar (default __nv_bfloat16).
template <class P, class C = __nv_bfloat16>
class Optimizer : public optim::Front<Optimizer<P, C>> {
 public:
  /// Group 0 gets `muon` for Muon-routed and `adamw` for AdamW-routed parameters.
  explicit Optimizer(MuonGroupOptions muon = {}, AdamWOptions adamw = {},
                     Allocator alloc = default_allocator())
      : core_(std::move(muon), std::move(adamw)), alloc_(alloc) {
    check_ns(core_.group(0).muon.ns);
  }
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // ---- parameters ---------------------------------------------------------------

  /// Registers a dense device tensor of up to 4 dimensions (row-major; a
  /// 2-D shape may set column_major) and its gradient (may be null: absent
  /// until set_grad). Routes like the CPU optimizer. Throws muon::Error for
  /// a duplicate or empty name, a null parameter, an empty shape, a bad
  /// group or split, or after the first step/capture/save/load; the
  /// optimizer is then unchanged.
  void add_param(const std::string& name, P* param, const P* grad, const optim::TensorShape& shape,
                 const ParamOptions& options = ParamOptions()) {
    if (device_)
      ::muon::detail::fail("param", "'" + name +
                                        "': parameters must be added before the first "
                                        "step/capture/save/load");
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
  /// A rows x cols matrix (rows = outputs) in `layout` order.
  void add_param(const std::string& name, P* param, const P* grad, std::int64_t rows,
                 std::int64_t cols, Layout layout, const ParamOptions& options = ParamOptions()) {
    optim::TensorShape s;
    s.ndim = 2;
    s.dims[0] = rows;
    s.dims[1] = cols;
    s.column_major = layout == Layout::column_major;
    add_param(name, param, grad, s, options);
  }

  /// Points a parameter at a new gradient (null: absent). Takes effect at the
  /// next step(); a captured graph keeps the old pointers until capture().
  void set_grad(const std::string& name, const P* grad) { grad_ptrs_[core_.index(name)] = grad; }
  void clear_grad(const std::string& name) { set_grad(name, nullptr); }
  void clear_grads() { std::fill(grad_ptrs_.begin(), grad_ptrs_.end(), nullptr); }

  /// Same-shape batches of Muon blocks (one batched Newton–Schulz call
  /// each); 0 before the device state is made.
  std::size_t shape_batch_count() const { return device_ ? device_->batches.size() : 0; }

  // ---- the step -------------------------------------------------------------------

  /// One step on `stream`: uploads this step's scalars (learning rates from
  /// the schedule, momentum, each block's adjusted lr), then launches the
  /// check, decide, commit and finish kernels. No synchronization. The
  /// outcome is known on the device; report() reads it.
  void step(cudaStream_t stream) {
    prepare(stream);
    scalars_.upload(core_, grad_ptrs_, *device_, stream);
    detail::launch_step(core_, *device_, param_ptrs_, grad_ptrs_, stream);
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
    for (auto& b : device_->batches) b.ortho->workspace().bind(stream);
    graph_.capture(stream, [this](cudaStream_t s) {
      detail::launch_step(core_, *device_, param_ptrs_, grad_ptrs_, s);
    });
  }

  /// One step through the captured graph: uploads this step's scalars, then
  /// one graph launch. Throws muon::Error when capture() was not called (or
  /// a change since dropped the graph: the message says which).
  void replay(cudaStream_t stream) {
    graph_.require();
    scalars_.upload(core_, grad_ptrs_, *device_, stream);
    graph_.launch(stream);
    core_.finish_step();
  }

  /// Synchronizes `stream` and returns what the last step did, with the step
  /// counters read back from the device. Throws muon::Error naming the first
  /// parameter at fault when the last step was refused (NonFinitePolicy::raise:
  /// nothing was written); the report then says that nothing was updated.
  const StepReport& report(cudaStream_t stream) {
    if (!device_) return core_.last_report();
    const std::vector<int> flags = cuda::detail::download_now(device_->flags, core_.size(), stream);
    const bool refused = device_->download_counters(core_, stream).verdict != 0;
    core_.begin_report();
    for (std::size_t i = 0; i < flags.size(); ++i)
      if (flags[i]) core_.skip(i, optim::step::reason_of(flags[i]));
    const StepReport& r = core_.end_report(refused);
    if (refused)
      for (std::size_t i = 0; i < flags.size(); ++i)
        if (optim::step::blocks_update(flags[i]))
          optim::step::refuse(core_.param(i).name, flags[i], core_.param(i).muon(), "float",
                              device_scalar<P>::name);
    return r;
  }

  // ---- QK-Clip --------------------------------------------------------------------

  /// QK-Clip after a step (optim/qk_clip.hpp; Kimi K2's MuonClip), as
  /// muon::Optimizer::qk_clip, on `stream`: scales the query and key rows of
  /// every head whose largest attention logit, `max_logits[h]` (host
  /// memory: the maxima as the caller copied them back), is above
  /// options.tau; a head at tau is left alone. The request is planned and
  /// checked on the host first: a NaN or infinite maximum (muon::Error
  /// naming the head), an unknown or non-2-D parameter, rows out of range, a
  /// bad tau or alpha throw before anything is launched, so nothing is
  /// written. Then one scale_rows launch per 32 scalings (two per clipped
  /// head), computing w * factor in float, rounded once to P; no
  /// allocation, no synchronization, and no CUDA call at all when no head
  /// is clipped. (Only a CUDA failure between two launches, past 16 clipped
  /// heads, can leave part of the rows scaled.)
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
                       const QkClipOptions& options, cudaStream_t stream) {
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
                       const QkClipOptions& options, cudaStream_t stream) {
    return qk_clip(heads, max_logits.data(), max_logits.size(), options, stream);
  }

  // ---- checkpoints ----------------------------------------------------------------

  /// Writes the state in the one checkpoint format every backend shares
  /// (fp32 buffers; loads into a CPU muon::Optimizer<float>). Synchronizes.
  void save(std::ostream& os, cudaStream_t stream) {
    prepare(stream);
    device_->download_counters(core_, stream);
    optim::HostState host(core_);  // sized by route and variant (optim::buffer_elements)
    for (std::size_t i = 0; i < core_.size(); ++i)
      for (std::size_t b = 0; b < core_.buffer_names(i).size(); ++b)
        host.buffer(i, b) = cuda::detail::download_now(device_->params[i].buffer(b),
                                                       host.buffer(i, b).size(), stream);
    host.save(os, core_, device_scalar<P>::dtype);
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
  friend class optim::Front<Optimizer>;

  // ---- optim::Front's hooks ---------------------------------------------------------

  optim::Core& front_core() { return core_; }
  const optim::Core& front_core() const { return core_; }

  void front_check_mutable(const char* what) const {
    if (device_)
      ::muon::detail::fail(what, "groups must be added before the first step/capture/save/load");
  }

  // Group g's next options, before anything changes: the Gram form is
  // refused. Once the device state exists, the group's Muon parameters made
  // for another variant get `next`'s state, zeroed, made here, aside (a
  // failed allocation changes nothing), on the home stream, which is then
  // waited for, so that a step on any stream finds them ready;
  // front_group_changed adopts them once the options are committed.
  void front_check_group(const GroupOptions& next, std::size_t g) {
    check_ns(next.muon.ns);
    pending_.clear();
    if (!device_) return;  // the device state will be made from the options
    std::vector<std::pair<std::size_t, DeviceBuffer>> made;
    for (std::size_t i = 0; i < core_.size(); ++i) {
      const optim::ParamRecord& p = core_.param(i);
      if (p.muon() && p.group == g && device_->params[i].variant != next.muon.variant)
        made.emplace_back(i, device_->variant_state(p, next.muon.variant, device_->home));
    }
    if (!made.empty()) MUON_CUDA_CHECK(cudaStreamSynchronize(device_->home));
    pending_ = std::move(made);
  }
  // The captured graph holds the old buffers and kernels: dropped.
  void front_group_changed(std::size_t g) {
    if (pending_.empty()) return;
    const MuonVariant variant = core_.group(g).muon.variant;
    for (auto& [i, buffer] : pending_)
      detail::DeviceState<C>::adopt(device_->params[i], variant, std::move(buffer));
    pending_.clear();
    graph_.drop("a change of variant since capture() needs a new capture()");
  }

  static void check_ns(const NewtonSchulzOptions& ns) {
    if (ns.method == NsMethod::gram)
      ::muon::detail::fail("ns_method",
                           "NsMethod::gram is not implemented by the CUDA backend (use standard, "
                           "or automatic, which runs the standard form here)");
  }

  // ---- the device state ---------------------------------------------------------------

  // Makes the device state once, from the registrations, and writes the
  // core's counters to it; a failure keeps nothing.
  void prepare(cudaStream_t stream) {
    if (device_) return;
    auto made = std::make_unique<detail::DeviceState<C>>(core_, alloc_, stream);
    made->upload_counters(core_, stream);
    device_ = std::move(made);
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
      if (variants[i] == device_->params[i].variant) continue;
      reshaped[i] = device_->variant_state(p, variants[i], stream);
      changed = true;
    }
    for (std::size_t i = 0; i < n; ++i) {
      const detail::ParamBuffers& s = device_->params[i];
      const std::size_t buffers = optim::buffer_names(core_.param(i).route, variants[i]).size();
      for (std::size_t b = 0; b < buffers; ++b) {
        float* to =
            b == 1 && reshaped[i].data() ? static_cast<float*>(reshaped[i].data()) : s.buffer(b);
        cuda::detail::upload(to, host.buffer(i, b).data(), host.buffer(i, b).size(), stream);
      }
    }
    core_.commit(m);
    for (std::size_t i = 0; i < n; ++i)
      if (core_.param(i).muon() && variants[i] != device_->params[i].variant)
        detail::DeviceState<C>::adopt(device_->params[i], variants[i], std::move(reshaped[i]));
    if (changed) graph_.drop("a load that changed a variant since capture() needs a new capture()");
    device_->upload_counters(core_, stream);
  }

  optim::Core core_;
  Allocator alloc_;
  std::vector<P*> param_ptrs_;
  std::vector<const P*> grad_ptrs_;
  std::unique_ptr<detail::DeviceState<C>> device_;  // null until the first step/capture/save/load
  detail::StepScalars scalars_;
  detail::StepGraph graph_;
  // A change of variant's new state, made by front_check_group.
  std::vector<std::pair<std::size_t, DeviceBuffer>> pending_;
};

}  // namespace cuda
}  // namespace muon
