// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/cuda/optimizer.hpp
/// \brief Muon (+ AdamW for the parameters Muon must not touch) over device
/// parameters, with the whole step capturable as one CUDA graph.
///
///     muon::cuda::Optimizer<float> opt(options);          // P: param/grad scalar
///     opt.add("h.0.attn.c_attn.weight", w, gw, 2304, 768, Layout::row_major);
///     opt.add("h.0.ln_1.bias", b, gb, 768, 1);            // not a matrix: AdamW
///     opt.add("wte.weight", e, ge, 50257, 768, Layout::row_major);  // by name: AdamW
///     opt.step(stream);                                    // eager
///     opt.capture(stream); ... opt.replay(stream);         // one graph launch per step
///
/// Per Muon parameter (torch.optim.Muon semantics, see DESIGN.md section 2):
///   m <- momentum(m, g)           fp32 buffer, EMA (default) or sum form
///   U <- nesterov ? look-ahead : m, cast to the NS scalar C (default bf16)
///   O <- NS(U)                    same-shape parameters share one batched workspace
///   p <- p (1 - lr wd) - lr * adjust(shape) * O
/// Per AdamW parameter: torch.optim.AdamW (decoupled weight decay).
///
/// The rules shared with the CPU optimizer come from muon/policy.hpp: the
/// routing of add() (RoutingRules, muon::decide_route), the lr adjustment
/// (muon::LrAdjust, muon::adjusted_lr) and the momentum kind
/// (muon::MomentumKind). save()/load() use the checkpoint envelope of
/// muon/checkpoint_format.hpp.
///
/// Gradient and parameter pointers are recorded at add() time and must stay
/// valid (and, for graph replay, at the same addresses) for the optimizer's
/// life. Learning rates and other scalars live in device memory: set_lr()
/// and friends take effect at the next step()/replay() without recapture.
/// A parameter whose NS input is not finite is left unchanged for that step
/// (see nonfinite_parameters()).
///
/// Construction, add*(), the routing queries and the option setters make no
/// CUDA call; device memory is allocated at the first step(), capture(),
/// save() or load().

#include <cuda_runtime.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <istream>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../checkpoint_format.hpp"
#include "../../error.hpp"
#include "../../newton_schulz.hpp"
#include "../../policy.hpp"
#include "common.hpp"
#include "kernels.cuh"
#include "workspace.hpp"

namespace muon {
namespace cuda {

/// Memory order of a parameter given as rows x cols (rows = outputs).
enum class Layout {
  col_major,  ///< element (i, j) at i + j*rows (Eigen, cuBLAS)
  row_major   ///< element (i, j) at i*cols + j (PyTorch (out, in) weights)
};

namespace detail {

inline void require_rate(double v, const char* field) {
  ::muon::detail::require(std::isfinite(v) && v >= 0, field, "must be finite and >= 0");
}
inline void require_unit_interval(double v, const char* field) {
  ::muon::detail::require(std::isfinite(v) && v >= 0 && v < 1, field, "must be in [0, 1)");
}

}  // namespace detail

/// Options of the device optimizer. Plain data with torch.optim.Muon's and
/// torch.optim.AdamW's defaults; validate() throws muon::Error naming the field.
///
/// | field             | default                  | meaning                              |
/// |-------------------|--------------------------|--------------------------------------|
/// | lr                | 1e-3                     | Muon learning rate                   |
/// | weight_decay      | 0.1                      | Muon decoupled weight decay          |
/// | momentum          | 0.95                     | mu, in [0, 1)                        |
/// | nesterov          | true                     | NS input is the look-ahead           |
/// | momentum_kind     | MomentumKind::ema        | buffer recurrence                    |
/// | adjust_lr         | LrAdjust::original       | lr scaling by shape                  |
/// | ns                | Jordan x5, eps 1e-7 max  | Newton–Schulz options                |
/// | adam_lr           | 1e-3                     | AdamW learning rate                  |
/// | adam_beta1/2      | 0.9 / 0.999              | AdamW betas                          |
/// | adam_eps          | 1e-8                     | AdamW eps                            |
/// | adam_weight_decay | 0.01                     | AdamW decoupled weight decay         |
struct OptimizerOptions {
  double lr = 1e-3;
  double weight_decay = 0.1;
  double momentum = 0.95;
  bool nesterov = true;
  MomentumKind momentum_kind = MomentumKind::ema;
  LrAdjust adjust_lr = LrAdjust::original;
  NewtonSchulzOptions ns = NewtonSchulzOptions().with_eps(1e-7, EpsMode::max);
  double adam_lr = 1e-3;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  double adam_weight_decay = 0.01;

  void validate() const {
    using ::muon::detail::require;
    detail::require_rate(lr, "lr");
    detail::require_rate(weight_decay, "weight_decay");
    detail::require_unit_interval(momentum, "momentum");
    require(is_valid(momentum_kind), "momentum_kind", "is not a MomentumKind value");
    require(is_valid(adjust_lr), "adjust_lr", "is not an LrAdjust value");
    ns.validate();
    detail::require_rate(adam_lr, "adam_lr");
    detail::require_unit_interval(adam_beta1, "adam_beta1");
    detail::require_unit_interval(adam_beta2, "adam_beta2");
    require(std::isfinite(adam_eps) && adam_eps > 0, "adam_eps", "must be finite and > 0");
    detail::require_rate(adam_weight_decay, "adam_weight_decay");
  }
};

/// The device optimizer. P: parameter and gradient scalar (float, __half,
/// __nv_bfloat16); C: the Newton–Schulz scalar (default __nv_bfloat16).
template <class P, class C = __nv_bfloat16>
class Optimizer {
 public:
  /// Names the payload of a save() inside the checkpoint envelope, so that a
  /// CPU muon::Optimizer checkpoint is told apart from a device state.
  static constexpr const char* kStateKind = "muon::cuda::Optimizer";

  explicit Optimizer(OptimizerOptions options = {}, Allocator alloc = default_allocator())
      : opt_(std::move(options)), alloc_(alloc) {
    opt_.validate();
  }
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;
  ~Optimizer() {
    if (exec_) (void)cudaGraphExecDestroy(exec_);
    if (graph_) (void)cudaGraphDestroy(graph_);
  }

  // ---- parameters -------------------------------------------------------------

  /// Registers a rows x cols tensor (dense, `layout` order) and routes it
  /// like the CPU optimizer (muon::decide_route with routing_rules()): a
  /// name matching one of the AdamW name patterns (embeddings, output heads)
  /// goes to AdamW, as does a vector; every other matrix goes to Muon. A
  /// registration with rows == 1 or cols == 1 counts as a vector (that is
  /// how biases and gains arrive) and 1 x 1 as a scalar; on the CPU, where
  /// tensors carry their rank, a 2-D (1, n) tensor is a matrix. Throws
  /// muon::Error for a duplicate or empty name, a null pointer, a
  /// non-positive shape, or after the first step/capture/save/load; the
  /// optimizer is then unchanged.
  void add(const std::string& name, P* param, const P* grad, std::int64_t rows, std::int64_t cols,
           Layout layout = Layout::col_major) {
    register_param(name, param, grad, rows, cols, layout, Route::automatic);
  }

  /// Registers a matrix updated by Muon whatever the routing rules say.
  /// `param` and `grad` hold rows x cols elements densely in `layout` order.
  /// Throws like add().
  void add_muon(const std::string& name, P* param, const P* grad, std::int64_t rows,
                std::int64_t cols, Layout layout = Layout::col_major) {
    register_param(name, param, grad, rows, cols, layout, Route::muon);
  }

  /// Registers `numel` elements updated by AdamW whatever the routing rules
  /// say. Throws like add().
  void add_adamw(const std::string& name, P* param, const P* grad, std::int64_t numel) {
    register_param(name, param, grad, numel, 1, Layout::col_major, Route::adamw);
  }

  /// Replaces the routing rules add() applies. Only before the first add*()
  /// (routes are decided at registration); throws muon::Error otherwise.
  void set_routing_rules(RoutingRules rules) {
    ::muon::detail::require(params_.empty(), "routing rules",
                            "must be set before the first parameter is added");
    rules_ = std::move(rules);
  }
  const RoutingRules& routing_rules() const { return rules_; }

  /// The route of a registered parameter; throws muon::Error naming "name"
  /// for an unknown one.
  Route route(const std::string& name) const { return find(name).route; }
  bool has_param(const std::string& name) const {
    for (const auto& p : params_)
      if (p.name == name) return true;
    return false;
  }

  /// Route, reason, shape and lr scale of every parameter, in registration
  /// order (the same report the CPU optimizer gives; `group` is always 0).
  /// `rows` x `cols` is the shape as registered (out, in), and lr_scale the
  /// factor muon::adjusted_lr applies to lr for it.
  RoutingReport routing() const {
    RoutingReport r;
    for (const auto& p : params_) {
      RoutingEntry e;
      e.name = p.name;
      e.route = p.route;
      e.reason = p.reason;
      e.shape = "(" + std::to_string(p.rows) + ", " + std::to_string(p.cols) + ")";
      e.rows = static_cast<std::ptrdiff_t>(p.rows);
      e.cols = static_cast<std::ptrdiff_t>(p.cols);
      e.lr_scale = p.lr_scale;
      r.entries.push_back(std::move(e));
    }
    return r;
  }

  // ---- the step -------------------------------------------------------------------

  /// One optimizer step on `stream` (launches only; no synchronization).
  void step(cudaStream_t stream) {
    prepare(stream);
    upload_values(stream);
    enqueue(stream);
  }

  /// Captures one whole step into a CUDA graph (stream must not be the
  /// legacy default stream). Nothing is executed by the capture itself.
  void capture(cudaStream_t stream) {
    ::muon::detail::require(stream != nullptr, "capture",
                            "needs a created stream (the legacy default stream cannot capture)");
    prepare(stream);
    upload_values(stream);
    MUON_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (exec_) {
      MUON_CUDA_CHECK(cudaGraphExecDestroy(exec_));
      exec_ = nullptr;
    }
    if (graph_) {
      MUON_CUDA_CHECK(cudaGraphDestroy(graph_));
      graph_ = nullptr;
    }
    for (auto& g : groups_) g.ortho->workspace().bind(stream);
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
  }

  /// Runs the captured step (one graph launch, after uploading changed
  /// learning rates). Throws muon::Error when capture() was not called.
  void replay(cudaStream_t stream) {
    ::muon::detail::require(exec_ != nullptr, "replay", "capture() was not called");
    upload_values(stream);
    MUON_CUDA_CHECK(cudaGraphLaunch(exec_, stream));
  }

  /// Learning rates etc.: take effect at the next step()/replay(). Throw
  /// muon::Error naming the field (as OptimizerOptions::validate does) for
  /// a value out of range; the optimizer is then unchanged.
  void set_lr(double lr) { set_scalar(opt_.lr, lr, detail::require_rate, "lr"); }
  void set_adam_lr(double lr) { set_scalar(opt_.adam_lr, lr, detail::require_rate, "adam_lr"); }
  void set_weight_decay(double wd) {
    set_scalar(opt_.weight_decay, wd, detail::require_rate, "weight_decay");
  }
  void set_momentum(double mu) {
    set_scalar(opt_.momentum, mu, detail::require_unit_interval, "momentum");
  }
  const OptimizerOptions& options() const { return opt_; }

  /// Completed steps (synchronizes `stream`).
  long long step_count(cudaStream_t stream) const {
    if (!values_) return 0;
    return detail::download_now<kernels::StepValues>(values_, 1, stream).front().step;
  }

  /// Names of the Muon parameters whose NS input was not finite in the last
  /// step (they were left unchanged). Synchronizes `stream`.
  std::vector<std::string> nonfinite_parameters(cudaStream_t stream) const {
    std::vector<std::string> bad;
    for (const auto& g : groups_) {
      const std::vector<int> flags = g.ortho->workspace().nonfinite_flags_now(stream);
      for (std::size_t k = 0; k < g.members.size(); ++k)
        if (flags[k]) bad.push_back(params_[g.members[k]].name);
    }
    return bad;
  }

  std::size_t size() const { return params_.size(); }
  /// Number of same-shape Muon groups (one batched Newton–Schulz call each).
  std::size_t muon_groups() const { return groups_.size(); }

  // ---- state ------------------------------------------------------------------
  //
  // A checkpoint envelope (checkpoint_format.hpp: "MUONCKPT", version,
  // size, payload, CRC-32; little-endian) around this payload:
  //   str kStateKind | u8 param dtype (informational) | u8 buffer dtype (float32)
  //   i64 step | f64 lr, weight_decay, momentum, adam_lr, adam_beta1,
  //              adam_beta2, adam_eps, adam_weight_decay
  //   u32 parameter count, then per parameter in registration order:
  //     str name | u8 route (1 Muon, 2 AdamW) | i64 rows | i64 cols
  //     u32 buffer count (1 Muon: momentum_buffer; 2 AdamW: exp_avg, exp_avg_sq)
  //     per buffer: str name | u8 dtype | u64 count | count x f32 (parameter memory order)

  /// Writes the state (synchronizes `stream`). Parameters themselves are not
  /// saved (the framework saves them).
  void save(std::ostream& os, cudaStream_t stream) {
    prepare(stream);
    kernels::StepValues v;
    detail::download(&v, values_, 1, stream);
    const std::vector<float> state =
        detail::download_now(static_cast<const float*>(state_.data()), state_floats(), stream);
    checkpoint::Writer w;
    w.str(kStateKind);
    w.u8(static_cast<std::uint8_t>(dtype_of_param()));
    w.u8(static_cast<std::uint8_t>(checkpoint::Dtype::float32));
    w.i64(v.step);
    for (double d : {opt_.lr, opt_.weight_decay, opt_.momentum, opt_.adam_lr, opt_.adam_beta1,
                     opt_.adam_beta2, opt_.adam_eps, opt_.adam_weight_decay})
      w.f64(d);
    w.u32(static_cast<std::uint32_t>(params_.size()));
    const float* cursor = state.data();
    for (const Param& p : params_) {
      w.str(p.name);
      w.u8(static_cast<std::uint8_t>(p.route));
      w.i64(p.rows);
      w.i64(p.cols);
      w.u32(p.muon() ? 1u : 2u);
      for (const char* buffer : buffer_names(p)) {
        checkpoint::write_buffer_header(w, buffer, checkpoint::Dtype::float32, p.numel());
        for (std::size_t i = 0; i < p.numel(); ++i) w.scalar<float>(*cursor++);
      }
    }
    checkpoint::write_envelope(os, w.bytes());
  }

  /// Reads a state written by save() for the same registered parameters
  /// (names, routes, shapes, order). Restores the step count, learning rates
  /// and the other scalars too; the structural options (nesterov,
  /// momentum_kind, adjust_lr, ns) stay this optimizer's. Throws muon::Error
  /// for a wrong magic, version or payload kind, a checksum mismatch, a
  /// truncated stream, other parameters, invalid options or a non-finite
  /// buffer value (or a negative exp_avg_sq); the whole stream is read and
  /// checked before anything changes, so the optimizer is then as it was.
  /// Synchronizes `stream`.
  void load(std::istream& is, cudaStream_t stream) {
    using ::muon::detail::require;
    const std::vector<unsigned char> payload = checkpoint::read_envelope(is);
    checkpoint::Reader r(payload.data(), payload.size());
    require_state_kind(r);
    r.u8();  // the parameter dtype is informational: buffers do not depend on it
    require(r.u8() == static_cast<std::uint8_t>(checkpoint::Dtype::float32), "checkpoint",
            "buffer dtype differs from float32");
    const std::int64_t step = r.i64();
    require(step >= 0, "checkpoint", "negative step count");
    OptimizerOptions o = opt_;
    for (double* d : {&o.lr, &o.weight_decay, &o.momentum, &o.adam_lr, &o.adam_beta1, &o.adam_beta2,
                      &o.adam_eps, &o.adam_weight_decay})
      *d = r.f64();
    try {
      o.validate();
    } catch (const Error& e) {
      throw Error(std::string("checkpoint: invalid options (") + e.what() + ")");
    }
    const std::uint32_t count = r.u32();
    require(count == params_.size(), "checkpoint",
            "holds " + std::to_string(count) + " parameters, the optimizer has " +
                std::to_string(params_.size()));
    std::vector<float> state;
    state.reserve(state_floats());
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const Param& p = params_[k];
      const std::string name = r.str("parameter name");
      require(name == p.name, "checkpoint",
              "parameter " + std::to_string(k) + " is '" + name + "', expected '" + p.name + "'");
      const std::string where = "parameter '" + name + "': ";
      require(r.u8() == static_cast<std::uint8_t>(p.route), "checkpoint", where + "route differs");
      const std::int64_t rows = r.i64(), cols = r.i64();
      require(rows == p.rows && cols == p.cols, "checkpoint",
              where + "shape " + std::to_string(rows) + "x" + std::to_string(cols) +
                  " differs from " + std::to_string(p.rows) + "x" + std::to_string(p.cols));
      require(r.u32() == (p.muon() ? 1u : 2u), "checkpoint", where + "wrong buffer count");
      for (const char* buffer : buffer_names(p)) {
        checkpoint::read_buffer_header(r, buffer, checkpoint::Dtype::float32, p.numel(),
                                       sizeof(float), where);
        // Values a step could not survive mean a corrupt or foreign file
        // (the CPU optimizer refuses the same ones).
        const bool second_moment = std::string(buffer) == "exp_avg_sq";
        for (std::size_t i = 0; i < p.numel(); ++i) {
          const float x = r.scalar<float>();
          require(std::isfinite(x) && (!second_moment || x >= 0.0f), "checkpoint",
                  where + "buffer '" + buffer + "' holds an invalid value");
          state.push_back(x);
        }
      }
    }
    require(r.remaining() == 0, "checkpoint", "trailing bytes after the last parameter");

    // Commit. prepare() changes nothing when it throws; past it only a CUDA
    // runtime failure can stop the copies.
    prepare(stream);
    detail::upload(static_cast<float*>(state_.data()), state.data(), state.size(), stream);
    opt_ = o;
    dirty_ = true;
    upload_values(stream, step);
    MUON_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

 private:
  struct Param {
    std::string name;
    Route route = Route::muon;
    std::string reason;
    P* param = nullptr;
    const P* grad = nullptr;
    std::int64_t rows = 0, cols = 0;          // logical shape (out, in)
    std::int64_t mem_rows = 0, mem_cols = 0;  // column-major shape NS sees
    double lr_scale = 1.0;                    // adjusted_lr(1, rows, cols, adjust_lr) for Muon
    float* state = nullptr;                   // momentum (Muon) or m, v (AdamW), fp32
    std::size_t group = 0, slot = 0;

    bool muon() const { return route == Route::muon; }
    std::size_t numel() const { return static_cast<std::size_t>(rows * cols); }
    std::size_t floats() const { return numel() * (muon() ? 1 : 2); }
  };
  struct Group {
    std::int64_t rows = 0, cols = 0;
    std::vector<std::size_t> members;
    DeviceBuffer staging;  // members.size() x rows x cols of C
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

  static std::vector<const char*> buffer_names(const Param& p) {
    if (p.muon()) return {"momentum_buffer"};
    return {"exp_avg", "exp_avg_sq"};
  }

  // The kind string is compared byte by byte rather than read with
  // Reader::str, so that another payload (a CPU checkpoint starts with two
  // dtype bytes) gets this message instead of a length complaint.
  static void require_state_kind(checkpoint::Reader& r) {
    const std::string kind = kStateKind;
    bool ours = r.remaining() >= 4 + kind.size() && r.u32() == kind.size();
    for (std::size_t i = 0; ours && i < kind.size(); ++i)
      ours = r.u8() == static_cast<unsigned char>(kind[i]);
    ::muon::detail::require(ours, "checkpoint",
                            std::string("not a ") + kStateKind +
                                " state (a CPU muon::Optimizer checkpoint is not loadable here)");
  }

  const Param& find(const std::string& name) const {
    for (const auto& p : params_)
      if (p.name == name) return p;
    throw Error("name: no parameter named '" + name + "'");
  }

  void check_new(const std::string& name, const P* param, const P* grad, std::int64_t rows,
                 std::int64_t cols) const {
    using ::muon::detail::require;
    require(!prepared_, "add", "parameters must be added before the first step/capture/save/load");
    require(!name.empty(), "name", "must not be empty");
    require(!has_param(name), "name", "'" + name + "' is already added");
    require(param != nullptr, "param", "'" + name + "': null device pointer");
    require(grad != nullptr, "grad", "'" + name + "': null device pointer");
    require(rows > 0 && cols > 0, "shape",
            "'" + name + "': must be positive, got " + std::to_string(rows) + "x" +
                std::to_string(cols));
  }

  void register_param(const std::string& name, P* param, const P* grad, std::int64_t rows,
                      std::int64_t cols, Layout layout, Route requested) {
    check_new(name, param, grad, rows, cols);
    // A rows x cols registration has no rank of its own: (n, 1) and (1, n)
    // are how vectors arrive and (1, 1) a scalar, so they are routed as the
    // 1-D / 0-D tensors they stand for.
    const int ndim = rows > 1 && cols > 1 ? 2 : (rows * cols > 1 ? 1 : 0);
    std::array<std::ptrdiff_t, 4> shape{};
    if (ndim == 2) {
      shape[0] = static_cast<std::ptrdiff_t>(rows);
      shape[1] = static_cast<std::ptrdiff_t>(cols);
    } else {
      shape[0] = static_cast<std::ptrdiff_t>(rows * cols);
    }
    RouteDecision decision = decide_route(name, ndim, shape, requested, rules_);
    Param p;
    p.name = name;
    p.route = decision.route;
    p.reason = std::move(decision.reason);
    p.param = param;
    p.grad = grad;
    p.rows = rows;
    p.cols = cols;
    // Newton–Schulz runs on the memory as a column-major matrix: a row-major
    // rows x cols weight is the column-major cols x rows matrix W^T, and
    // NS(W^T) = NS(W)^T, so the update lands in the right order.
    p.mem_rows = layout == Layout::col_major ? rows : cols;
    p.mem_cols = layout == Layout::col_major ? cols : rows;
    if (p.muon()) p.lr_scale = adjusted_lr(1.0, rows, cols, opt_.adjust_lr);
    params_.push_back(std::move(p));
  }

  template <class Check>
  void set_scalar(double& field, double value, Check check, const char* name) {
    check(value, name);
    field = value;
    dirty_ = true;
  }

  std::size_t state_floats() const {
    std::size_t n = 0;
    for (const auto& p : params_) n += p.floats();
    return n;
  }

  // Allocates state and workspaces once (zeroed buffers). Everything is
  // built aside and moved in at the end, so a failed allocation leaves the
  // optimizer as it was.
  void prepare(cudaStream_t stream) {
    if (prepared_) return;
    const std::size_t floats = state_floats();
    DeviceBuffer state(sizeof(float) * (floats ? floats : 1), stream, alloc_,
                       "muon::cuda::Optimizer state");
    MUON_CUDA_CHECK(cudaMemsetAsync(state.data(), 0, state.bytes(), stream));
    struct Place {
      float* state;
      std::size_t group, slot;
    };
    std::vector<Place> places;
    std::vector<Group> groups;
    float* cursor = static_cast<float*>(state.data());
    std::map<std::pair<std::int64_t, std::int64_t>, std::size_t> by_shape;
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const Param& p = params_[k];
      places.push_back({cursor, 0, 0});
      cursor += p.floats();
      if (!p.muon()) continue;
      const auto key = std::make_pair(p.mem_rows, p.mem_cols);
      auto it = by_shape.find(key);
      if (it == by_shape.end()) {
        it = by_shape.emplace(key, groups.size()).first;
        groups.emplace_back();
        groups.back().rows = p.mem_rows;
        groups.back().cols = p.mem_cols;
      }
      places.back().group = it->second;
      places.back().slot = groups[it->second].members.size();
      groups[it->second].members.push_back(k);
    }
    for (auto& g : groups) {
      const std::int64_t n = g.rows * g.cols, b = static_cast<std::int64_t>(g.members.size());
      g.staging = DeviceBuffer(sizeof(C) * static_cast<std::size_t>(n * b), stream, alloc_,
                               "muon::cuda::Optimizer staging");
      g.ortho.reset(new Orthogonalizer<C>(g.rows, g.cols, b, stream, alloc_));
    }
    DeviceBuffer values(sizeof(kernels::StepValues), stream, alloc_,
                        "muon::cuda::Optimizer values");
    host_values_ = scalar_values();
    host_values_.step = 0;
    detail::upload(static_cast<kernels::StepValues*>(values.data()), &host_values_, 1, stream);

    state_ = std::move(state);
    groups_ = std::move(groups);
    for (std::size_t k = 0; k < params_.size(); ++k) {
      params_[k].state = places[k].state;
      params_[k].group = places[k].group;
      params_[k].slot = places[k].slot;
    }
    values_mem_ = std::move(values);
    values_ = static_cast<kernels::StepValues*>(values_mem_.data());
    dirty_ = false;
    prepared_ = true;
  }

  kernels::StepValues scalar_values() const {
    kernels::StepValues v;
    v.lr = static_cast<float>(opt_.lr);
    v.weight_decay = static_cast<float>(opt_.weight_decay);
    v.momentum = static_cast<float>(opt_.momentum);
    v.adam_lr = static_cast<float>(opt_.adam_lr);
    v.adam_beta1 = static_cast<float>(opt_.adam_beta1);
    v.adam_beta2 = static_cast<float>(opt_.adam_beta2);
    v.adam_eps = static_cast<float>(opt_.adam_eps);
    v.adam_weight_decay = static_cast<float>(opt_.adam_weight_decay);
    return v;
  }

  // Copies the host scalars to the device when they changed (step = -1 keeps
  // the device's step counter). host_values_ is a member so the source
  // outlives the stream-ordered copy.
  void upload_values(cudaStream_t stream, long long step = -1) {
    if (!dirty_ && step < 0) return;
    host_values_ = scalar_values();
    if (step >= 0) {
      host_values_.step = step;
      detail::upload(values_, &host_values_, 1, stream);
    } else {
      // Everything but the trailing step counter, which the device advances.
      constexpr std::size_t bytes = offsetof(kernels::StepValues, step);
      detail::upload(reinterpret_cast<unsigned char*>(values_),
                     reinterpret_cast<const unsigned char*>(&host_values_), bytes, stream);
    }
    dirty_ = false;
  }

  void enqueue(cudaStream_t stream) {
    kernels::advance_step<<<1, 1, 0, stream>>>(values_);
    check_launch("muon::cuda::kernels::advance_step");
    const bool ema = opt_.momentum_kind == MomentumKind::ema;
    for (auto& g : groups_) {
      const std::int64_t n = g.rows * g.cols, b = static_cast<std::int64_t>(g.members.size());
      C* staging = static_cast<C*>(g.staging.data());
      for (std::size_t s = 0; s < g.members.size(); ++s) {
        const Param& p = params_[g.members[s]];
        kernels::momentum_kernel<P, C><<<kernels::elementwise_blocks(n), 256, 0, stream>>>(
            p.grad, p.state, staging + static_cast<std::int64_t>(s) * n, n, values_, ema,
            opt_.nesterov);
        check_launch("muon::cuda::kernels::momentum_kernel");
      }
      const BatchedMatrixView<C> view(staging, g.rows, g.cols, g.rows, n, b);
      (*g.ortho)(view, view, opt_.ns, stream);
      const int* flags = g.ortho->workspace().nonfinite_flags();
      for (std::size_t s = 0; s < g.members.size(); ++s) {
        const Param& p = params_[g.members[s]];
        kernels::muon_update_kernel<P, C><<<kernels::elementwise_blocks(n), 256, 0, stream>>>(
            p.param, staging + static_cast<std::int64_t>(s) * n, n, values_,
            static_cast<float>(p.lr_scale), flags + s);
        check_launch("muon::cuda::kernels::muon_update_kernel");
      }
    }
    for (const auto& p : params_) {
      if (p.muon()) continue;
      const std::int64_t n = p.rows * p.cols;
      kernels::adamw_kernel<P><<<kernels::elementwise_blocks(n), 256, 0, stream>>>(
          p.param, p.grad, p.state, p.state + n, n, values_);
      check_launch("muon::cuda::kernels::adamw_kernel");
    }
  }

  OptimizerOptions opt_;
  Allocator alloc_;
  RoutingRules rules_;
  std::vector<Param> params_;
  std::vector<Group> groups_;
  DeviceBuffer state_;
  DeviceBuffer values_mem_;
  kernels::StepValues* values_ = nullptr;
  kernels::StepValues host_values_{};
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  bool prepared_ = false;
  bool dirty_ = true;
};

}  // namespace cuda
}  // namespace muon
