// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/cuda/optimizer.hpp
/// \brief Muon (+ AdamW for the parameters Muon must not touch) over device
/// parameters, with the whole step capturable as one CUDA graph.
///
///     muon::cuda::Optimizer<float> opt(options);          // P: param/grad scalar
///     opt.add("h.0.attn.c_attn.weight", w, gw, 2304, 768, Layout::row_major);
///     opt.add("h.0.ln_1.bias", b, gb, 768, 1);            // not a matrix: AdamW
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
/// Gradient and parameter pointers are recorded at add() time and must stay
/// valid (and, for graph replay, at the same addresses) for the optimizer's
/// life. Learning rates and other scalars live in device memory: set_lr()
/// and friends take effect at the next step()/replay() without recapture.
/// A parameter whose NS input is not finite is left unchanged for that step
/// (see nonfinite_parameters()).

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <istream>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "../../error.hpp"
#include "../../newton_schulz.hpp"
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

/// The momentum recurrence (see muon/momentum.hpp on the CPU side).
enum class Momentum {
  ema,  ///< m <- lerp(m, g, 1-mu) (torch.optim.Muon, K. Jordan)
  sum   ///< m <- mu m + g (Moonlight, Dion)
};

/// Learning-rate adjustment by shape, A = rows (out), B = cols (in).
enum class LrAdjust {
  original,            ///< sqrt(max(1, A/B))  (torch.optim.Muon default, K. Jordan)
  match_rms_adamw,     ///< 0.2 sqrt(max(A, B)) (Moonlight)
  spectral_unclamped,  ///< sqrt(A/B)
  none                 ///< 1
};

/// The factor LrAdjust `a` applies to lr for a rows x cols parameter.
inline double lr_factor(LrAdjust a, std::int64_t rows, std::int64_t cols) {
  const double A = static_cast<double>(rows), B = static_cast<double>(cols);
  switch (a) {
    case LrAdjust::original:
      return std::sqrt(A / B > 1.0 ? A / B : 1.0);
    case LrAdjust::match_rms_adamw:
      return 0.2 * std::sqrt(A > B ? A : B);
    case LrAdjust::spectral_unclamped:
      return std::sqrt(A / B);
    case LrAdjust::none:
      return 1.0;
  }
  throw Error("adjust_lr: not a LrAdjust value");
}

/// Options of the device optimizer. Plain data with torch.optim.Muon's and
/// torch.optim.AdamW's defaults; validate() throws muon::Error naming the field.
///
/// | field             | default                  | meaning                              |
/// |-------------------|--------------------------|--------------------------------------|
/// | lr                | 1e-3                     | Muon learning rate                   |
/// | weight_decay      | 0.1                      | Muon decoupled weight decay          |
/// | momentum          | 0.95                     | mu, in [0, 1)                        |
/// | nesterov          | true                     | NS input is the look-ahead           |
/// | momentum_kind     | ema                      | buffer recurrence                    |
/// | adjust_lr         | original                 | lr scaling by shape                  |
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
  Momentum momentum_kind = Momentum::ema;
  LrAdjust adjust_lr = LrAdjust::original;
  NewtonSchulzOptions ns = NewtonSchulzOptions().with_eps(1e-7, EpsMode::max);
  double adam_lr = 1e-3;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  double adam_weight_decay = 0.01;

  void validate() const {
    using ::muon::detail::require;
    require(std::isfinite(lr) && lr >= 0, "lr", "must be finite and >= 0");
    require(std::isfinite(weight_decay) && weight_decay >= 0, "weight_decay",
            "must be finite and >= 0");
    require(std::isfinite(momentum) && momentum >= 0 && momentum < 1, "momentum",
            "must be in [0, 1)");
    require(momentum_kind == Momentum::ema || momentum_kind == Momentum::sum, "momentum_kind",
            "not a Momentum value");
    require(adjust_lr == LrAdjust::original || adjust_lr == LrAdjust::match_rms_adamw ||
                adjust_lr == LrAdjust::spectral_unclamped || adjust_lr == LrAdjust::none,
            "adjust_lr", "not a LrAdjust value");
    ns.validate();
    require(std::isfinite(adam_lr) && adam_lr >= 0, "adam_lr", "must be finite and >= 0");
    require(adam_beta1 >= 0 && adam_beta1 < 1, "adam_beta1", "must be in [0, 1)");
    require(adam_beta2 >= 0 && adam_beta2 < 1, "adam_beta2", "must be in [0, 1)");
    require(std::isfinite(adam_eps) && adam_eps > 0, "adam_eps", "must be finite and > 0");
    require(std::isfinite(adam_weight_decay) && adam_weight_decay >= 0, "adam_weight_decay",
            "must be finite and >= 0");
  }
};

/// The device optimizer. P: parameter and gradient scalar (float, __half,
/// __nv_bfloat16); C: the Newton–Schulz scalar (default __nv_bfloat16).
template <class P, class C = __nv_bfloat16>
class Optimizer {
 public:
  /// Version of the save() layout.
  static constexpr std::uint32_t kStateVersion = 1;

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

  /// Registers a matrix updated by Muon. `param` and `grad` hold rows x cols
  /// elements densely in `layout` order. Throws muon::Error for a duplicate
  /// name, a null pointer, a non-positive shape, or after the first step.
  void add_muon(const std::string& name, P* param, const P* grad, std::int64_t rows,
                std::int64_t cols, Layout layout = Layout::col_major) {
    check_new(name, param, grad, rows, cols);
    Param p;
    p.name = name;
    p.muon = true;
    p.param = param;
    p.grad = grad;
    p.rows = rows;
    p.cols = cols;
    // Newton–Schulz runs on the memory as a column-major matrix: a row-major
    // rows x cols weight is the column-major cols x rows matrix W^T, and
    // NS(W^T) = NS(W)^T, so the update lands in the right order.
    p.mem_rows = layout == Layout::col_major ? rows : cols;
    p.mem_cols = layout == Layout::col_major ? cols : rows;
    p.factor = static_cast<float>(lr_factor(opt_.adjust_lr, rows, cols));
    params_.push_back(p);
  }

  /// Registers `numel` elements updated by AdamW (biases, norms, embeddings...).
  void add_adamw(const std::string& name, P* param, const P* grad, std::int64_t numel) {
    check_new(name, param, grad, numel, 1);
    Param p;
    p.name = name;
    p.muon = false;
    p.param = param;
    p.grad = grad;
    p.rows = numel;
    p.cols = 1;
    params_.push_back(p);
  }

  /// Routes like the usual recipes: a matrix with rows > 1 and cols > 1 goes
  /// to Muon, anything else (rows x 1, 1 x cols) to AdamW. Embeddings and
  /// output heads should be added with add_adamw explicitly.
  void add(const std::string& name, P* param, const P* grad, std::int64_t rows, std::int64_t cols,
           Layout layout = Layout::col_major) {
    if (rows > 1 && cols > 1)
      add_muon(name, param, grad, rows, cols, layout);
    else
      add_adamw(name, param, grad, rows * cols);
  }

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

  /// Learning rates etc.: take effect at the next step()/replay().
  void set_lr(double lr) {
    ::muon::detail::require(std::isfinite(lr) && lr >= 0, "lr", "must be finite and >= 0");
    opt_.lr = lr;
    dirty_ = true;
  }
  void set_adam_lr(double lr) {
    ::muon::detail::require(std::isfinite(lr) && lr >= 0, "adam_lr", "must be finite and >= 0");
    opt_.adam_lr = lr;
    dirty_ = true;
  }
  void set_weight_decay(double wd) {
    ::muon::detail::require(std::isfinite(wd) && wd >= 0, "weight_decay",
                            "must be finite and >= 0");
    opt_.weight_decay = wd;
    dirty_ = true;
  }
  void set_momentum(double mu) {
    ::muon::detail::require(std::isfinite(mu) && mu >= 0 && mu < 1, "momentum",
                            "must be in [0, 1)");
    opt_.momentum = mu;
    dirty_ = true;
  }
  const OptimizerOptions& options() const { return opt_; }

  /// Completed steps (synchronizes `stream`).
  long long step_count(cudaStream_t stream) const {
    if (!values_) return 0;
    kernels::StepValues v;
    MUON_CUDA_CHECK(cudaMemcpyAsync(&v, values_, sizeof v, cudaMemcpyDeviceToHost, stream));
    MUON_CUDA_CHECK(cudaStreamSynchronize(stream));
    return v.step;
  }

  /// Names of the Muon parameters whose NS input was not finite in the last
  /// step (they were left unchanged). Synchronizes `stream`.
  std::vector<std::string> nonfinite_parameters(cudaStream_t stream) const {
    std::vector<std::string> bad;
    for (const auto& g : groups_) {
      std::vector<int> flags(g.members.size());
      MUON_CUDA_CHECK(cudaMemcpyAsync(flags.data(), g.ortho->workspace().nonfinite_flags(),
                                      sizeof(int) * flags.size(), cudaMemcpyDeviceToHost, stream));
      MUON_CUDA_CHECK(cudaStreamSynchronize(stream));
      for (std::size_t k = 0; k < flags.size(); ++k)
        if (flags[k]) bad.push_back(params_[g.members[k]].name);
    }
    return bad;
  }

  std::size_t size() const { return params_.size(); }
  /// Number of same-shape Muon groups (one batched Newton–Schulz call each).
  std::size_t muon_groups() const { return groups_.size(); }

  // ---- state ------------------------------------------------------------------
  //
  // Binary layout (host byte order; all integers fixed-width):
  //   char[8] "MUONCUDA" | u32 version (=1) | u32 parameter count
  //   f64 lr, weight_decay, momentum, adam_lr, adam_beta1, adam_beta2,
  //       adam_eps, adam_weight_decay | i64 step
  //   per parameter, in registration order:
  //     u32 kind (0 Muon, 1 AdamW) | u32 name length | name bytes
  //     i64 rows | i64 cols | u32 buffers (1 Muon: momentum; 2 AdamW: m, v)
  //     buffers x rows*cols f32 (parameter memory order)

  /// Writes the state (synchronizes `stream`). Parameters themselves are not
  /// saved (the framework saves them).
  void save(std::ostream& os, cudaStream_t stream) {
    prepare(stream);
    kernels::StepValues v;
    MUON_CUDA_CHECK(cudaMemcpyAsync(&v, values_, sizeof v, cudaMemcpyDeviceToHost, stream));
    std::vector<std::vector<float>> host(params_.size());
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const Param& p = params_[k];
      const std::size_t n = static_cast<std::size_t>(p.rows * p.cols);
      host[k].resize(n * (p.muon ? 1 : 2));
      MUON_CUDA_CHECK(cudaMemcpyAsync(host[k].data(), p.state, sizeof(float) * host[k].size(),
                                      cudaMemcpyDeviceToHost, stream));
    }
    MUON_CUDA_CHECK(cudaStreamSynchronize(stream));
    os.write("MUONCUDA", 8);
    put<std::uint32_t>(os, kStateVersion);
    put<std::uint32_t>(os, static_cast<std::uint32_t>(params_.size()));
    for (double d : {opt_.lr, opt_.weight_decay, opt_.momentum, opt_.adam_lr, opt_.adam_beta1,
                     opt_.adam_beta2, opt_.adam_eps, opt_.adam_weight_decay})
      put<double>(os, d);
    put<std::int64_t>(os, v.step);
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const Param& p = params_[k];
      put<std::uint32_t>(os, p.muon ? 0u : 1u);
      put<std::uint32_t>(os, static_cast<std::uint32_t>(p.name.size()));
      os.write(p.name.data(), static_cast<std::streamsize>(p.name.size()));
      put<std::int64_t>(os, p.rows);
      put<std::int64_t>(os, p.cols);
      put<std::uint32_t>(os, p.muon ? 1u : 2u);
      os.write(reinterpret_cast<const char*>(host[k].data()),
               static_cast<std::streamsize>(sizeof(float) * host[k].size()));
    }
    ::muon::detail::require(static_cast<bool>(os), "save", "stream write failed");
  }

  /// Reads a state written by save() for the same registered parameters
  /// (names, kinds, shapes, order). Everything is read and checked before
  /// anything is changed: on muon::Error the optimizer is as it was.
  /// Restores learning rates and the other scalars too. Synchronizes `stream`.
  void load(std::istream& is, cudaStream_t stream) {
    using ::muon::detail::require;
    char magic[8] = {};
    is.read(magic, 8);
    require(static_cast<bool>(is) && std::memcmp(magic, "MUONCUDA", 8) == 0, "checkpoint",
            "not a muon CUDA optimizer state (bad magic)");
    const auto version = get<std::uint32_t>(is);
    require(version == kStateVersion, "checkpoint",
            "unsupported version " + std::to_string(version));
    const auto count = get<std::uint32_t>(is);
    require(count == params_.size(), "checkpoint",
            "holds " + std::to_string(count) + " parameters, the optimizer has " +
                std::to_string(params_.size()));
    OptimizerOptions o = opt_;
    o.lr = get<double>(is);
    o.weight_decay = get<double>(is);
    o.momentum = get<double>(is);
    o.adam_lr = get<double>(is);
    o.adam_beta1 = get<double>(is);
    o.adam_beta2 = get<double>(is);
    o.adam_eps = get<double>(is);
    o.adam_weight_decay = get<double>(is);
    const auto step = get<std::int64_t>(is);
    require(step >= 0, "checkpoint", "negative step count");
    try {
      o.validate();
    } catch (const Error& e) {
      throw Error(std::string("checkpoint: ") + e.what());
    }
    std::vector<std::vector<float>> host(params_.size());
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const Param& p = params_[k];
      const auto kind = get<std::uint32_t>(is);
      const auto len = get<std::uint32_t>(is);
      require(len < (1u << 20), "checkpoint", "implausible name length");
      std::string name(len, '\0');
      is.read(&name[0], len);
      const auto rows = get<std::int64_t>(is);
      const auto cols = get<std::int64_t>(is);
      const auto nbuf = get<std::uint32_t>(is);
      require(static_cast<bool>(is), "checkpoint", "truncated");
      require(name == p.name, "checkpoint",
              "parameter " + std::to_string(k) + " is '" + name + "', expected '" + p.name + "'");
      require(kind == (p.muon ? 0u : 1u) && nbuf == (p.muon ? 1u : 2u), "checkpoint",
              "parameter '" + name + "' has a different optimizer kind");
      require(rows == p.rows && cols == p.cols, "checkpoint",
              "parameter '" + name + "' has shape " + std::to_string(rows) + "x" +
                  std::to_string(cols) + ", expected " + std::to_string(p.rows) + "x" +
                  std::to_string(p.cols));
      host[k].resize(static_cast<std::size_t>(rows * cols) * nbuf);
      is.read(reinterpret_cast<char*>(host[k].data()),
              static_cast<std::streamsize>(sizeof(float) * host[k].size()));
      require(static_cast<bool>(is), "checkpoint", "truncated");
    }
    prepare(stream);
    for (std::size_t k = 0; k < params_.size(); ++k)
      MUON_CUDA_CHECK(cudaMemcpyAsync(params_[k].state, host[k].data(),
                                      sizeof(float) * host[k].size(), cudaMemcpyHostToDevice,
                                      stream));
    opt_ = o;
    dirty_ = true;
    upload_values(stream, step);
    MUON_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

 private:
  struct Param {
    std::string name;
    bool muon = true;
    P* param = nullptr;
    const P* grad = nullptr;
    std::int64_t rows = 0, cols = 0;          // logical shape (out, in)
    std::int64_t mem_rows = 0, mem_cols = 0;  // column-major shape NS sees
    float factor = 1.0f;                      // lr adjustment
    float* state = nullptr;                   // momentum (Muon) or m, v (AdamW), fp32
    std::size_t group = 0, slot = 0;
  };
  struct Group {
    std::int64_t rows = 0, cols = 0;
    std::vector<std::size_t> members;
    DeviceBuffer staging;  // members.size() x rows x cols of C
    std::unique_ptr<Orthogonalizer<C>> ortho;
  };

  void check_new(const std::string& name, const P* param, const P* grad, std::int64_t rows,
                 std::int64_t cols) {
    using ::muon::detail::require;
    require(!prepared_, "add", "parameters must be added before the first step/capture/load");
    require(!name.empty(), "name", "must not be empty");
    for (const auto& p : params_)
      require(p.name != name, "name", "'" + name + "' is already added");
    require(param != nullptr, "param", "'" + name + "': null device pointer");
    require(grad != nullptr, "grad", "'" + name + "': null device pointer");
    require(rows > 0 && cols > 0, "shape",
            "'" + name + "': must be positive, got " + std::to_string(rows) + "x" +
                std::to_string(cols));
  }

  // Allocates state and workspaces once (zeroed buffers).
  void prepare(cudaStream_t stream) {
    if (prepared_) return;
    std::size_t floats = 0;
    for (auto& p : params_) floats += static_cast<std::size_t>(p.rows * p.cols) * (p.muon ? 1 : 2);
    state_ = DeviceBuffer(sizeof(float) * (floats ? floats : 1), stream, alloc_,
                          "muon::cuda::Optimizer state");
    MUON_CUDA_CHECK(cudaMemsetAsync(state_.data(), 0, state_.bytes(), stream));
    float* cursor = static_cast<float*>(state_.data());
    std::map<std::pair<std::int64_t, std::int64_t>, std::size_t> by_shape;
    for (std::size_t k = 0; k < params_.size(); ++k) {
      Param& p = params_[k];
      p.state = cursor;
      cursor += static_cast<std::size_t>(p.rows * p.cols) * (p.muon ? 1 : 2);
      if (!p.muon) continue;
      const auto key = std::make_pair(p.mem_rows, p.mem_cols);
      auto it = by_shape.find(key);
      if (it == by_shape.end()) {
        it = by_shape.emplace(key, groups_.size()).first;
        groups_.emplace_back();
        groups_.back().rows = p.mem_rows;
        groups_.back().cols = p.mem_cols;
      }
      p.group = it->second;
      p.slot = groups_[it->second].members.size();
      groups_[it->second].members.push_back(k);
    }
    for (auto& g : groups_) {
      const std::int64_t n = g.rows * g.cols, b = static_cast<std::int64_t>(g.members.size());
      g.staging = DeviceBuffer(sizeof(C) * static_cast<std::size_t>(n * b), stream, alloc_,
                               "muon::cuda::Optimizer staging");
      g.ortho.reset(new Orthogonalizer<C>(g.rows, g.cols, b, stream, alloc_));
    }
    values_mem_ =
        DeviceBuffer(sizeof(kernels::StepValues), stream, alloc_, "muon::cuda::Optimizer values");
    values_ = static_cast<kernels::StepValues*>(values_mem_.data());
    dirty_ = true;
    prepared_ = true;
    upload_values(stream, 0);
  }

  // Copies the host scalars to the device when they changed (step = -1 keeps
  // the device's step counter).
  void upload_values(cudaStream_t stream, long long step = -1) {
    if (!dirty_ && step < 0) return;
    kernels::StepValues v;
    v.lr = static_cast<float>(opt_.lr);
    v.weight_decay = static_cast<float>(opt_.weight_decay);
    v.momentum = static_cast<float>(opt_.momentum);
    v.adam_lr = static_cast<float>(opt_.adam_lr);
    v.adam_beta1 = static_cast<float>(opt_.adam_beta1);
    v.adam_beta2 = static_cast<float>(opt_.adam_beta2);
    v.adam_eps = static_cast<float>(opt_.adam_eps);
    v.adam_weight_decay = static_cast<float>(opt_.adam_weight_decay);
    host_values_ = v;
    // Everything but the trailing step counter, unless a step is given.
    const std::size_t bytes = step >= 0 ? sizeof v : offsetof(kernels::StepValues, step);
    if (step >= 0) host_values_.step = step;
    MUON_CUDA_CHECK(cudaMemcpyAsync(values_, &host_values_, bytes, cudaMemcpyHostToDevice, stream));
    dirty_ = false;
  }

  void enqueue(cudaStream_t stream) {
    kernels::advance_step<<<1, 1, 0, stream>>>(values_);
    check_launch("muon::cuda::kernels::advance_step");
    const bool ema = opt_.momentum_kind == Momentum::ema;
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
            p.param, staging + static_cast<std::int64_t>(s) * n, n, values_, p.factor, flags + s);
        check_launch("muon::cuda::kernels::muon_update_kernel");
      }
    }
    for (const auto& p : params_) {
      if (p.muon) continue;
      const std::int64_t n = p.rows * p.cols;
      kernels::adamw_kernel<P><<<kernels::elementwise_blocks(n), 256, 0, stream>>>(
          p.param, p.grad, p.state, p.state + n, n, values_);
      check_launch("muon::cuda::kernels::adamw_kernel");
    }
  }

  template <class V>
  static void put(std::ostream& os, V v) {
    os.write(reinterpret_cast<const char*>(&v), sizeof v);
  }
  template <class V>
  static V get(std::istream& is) {
    V v{};
    is.read(reinterpret_cast<char*>(&v), sizeof v);
    ::muon::detail::require(static_cast<bool>(is), "checkpoint", "truncated");
    return v;
  }

  OptimizerOptions opt_;
  Allocator alloc_;
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
