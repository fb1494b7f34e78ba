// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/cuda/workspace.hpp
/// \brief The device backend of detail::newton_schulz_iterate.
///
/// A Workspace<T> serves one (rows, cols, batch) shape. It follows CUTLASS's
/// rhythm:
///
///     Workspace<T>::Arguments args{rows, cols, batch, in, out, options};
///     if (!Workspace<T>::can_implement(args)) ...;          // or check(args)
///     size_t bytes = Workspace<T>::get_workspace_size(args);
///     ws.initialize(args, device_ptr, stream);              // once per shape
///     ws.run(stream);                                       // no sync, no allocation
///     ws.update(args2);                                     // new pointers / options
///
/// and `Orthogonalizer<T>` owns the memory for you. T is the storage and
/// product scalar (__nv_bfloat16, __half or float); products accumulate in
/// fp32 (CUBLAS_COMPUTE_32F), the norm in double.
///
/// Compute layout: inputs are oriented wide (m = min(rows, cols) <= n): X and
/// Y are m x n, A and B m x m, all column-major and dense, `batch` of each.
/// Tall inputs are transposed on load and back on store. The symmetric
/// products X X^T and A A^T compute only the lower-triangle tiles when m is
/// large (grouped batched GEMMs over the tiles on and below the diagonal),
/// then a mirror kernel fills the upper triangle. run() launches kernels and
/// cuBLAS calls on the stream only, so it can be captured in a CUDA graph.
///
/// Non-finite input: the norm of each matrix is checked on the device; a
/// matrix whose norm is NaN/Inf is not written to `out` (left as it was) and
/// its flag in nonfinite_flags() is set. The host wrappers read the flags and
/// throw muon::Error; run() never synchronizes.
///
/// NsNormalization::aol (normalize_aol()): X is divided by its Frobenius
/// norm (flags as above; AOL is scale-invariant, and X X^T then neither
/// overflows nor underflows in T), A = X X^T, then per matrix the AOL
/// factors from A's absolute row sums scale X's rows and A's rows and
/// columns, which leaves A = X X^T of the new X for the first step.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../../error.hpp"
#include "../../newton_schulz.hpp"
#include "common.hpp"
#include "kernels.cuh"
#include "tiling.hpp"

namespace muon {
namespace cuda {

template <class T>
class Workspace {
 public:
  using scalar = T;

  /// The problem: shape, batch, input and output views, options.
  struct Arguments {
    std::int64_t rows = 0, cols = 0, batch = 1;
    BatchedMatrixView<const T> in;  ///< rows x cols, `batch` matrices
    /// Alternatively, a dense float input (ld = rows, stride = rows*cols),
    /// normalized as it is cast to T: with T = __half an input above 65504
    /// must not be cast before it is divided by its norm. Used when non-null
    /// (then `in` is ignored).
    BatchedMatrixView<const float> in_float;
    BatchedMatrixView<T> out;  ///< rows x cols, `batch` matrices; may equal `in`
    NewtonSchulzOptions options;
    /// Tile edge of the lower-triangle tiling: 0 (default) picks it from the
    /// shape (tiles of about kTileTarget once m >= kTilingThreshold); a value
    /// in (0, m) forces that edge (tests use it to cover the tiled path).
    std::int64_t tile = 0;
  };

  /// Size of the cuBLAS workspace handed to cublasSetWorkspace (32 MiB, the
  /// size cuBLAS's documentation recommends for Hopper).
  static constexpr std::size_t kBlasWorkspaceBytes = std::size_t(32) << 20;
  /// Gram sizes m >= this use lower-triangle tiling.
  static constexpr std::int64_t kTilingThreshold = 1536;
  /// Target tile edge of the triangular tiling.
  static constexpr std::int64_t kTileTarget = 1024;
  /// Largest supported rows or cols (grid limits of the load/store kernels).
  static constexpr std::int64_t kMaxDim = std::int64_t(65535) * 32;
  /// Under NsNormalization::aol, X is first divided by max(||X||_F, this)
  /// (float's smallest normal: the factor 1/||X||_F stays a finite float).
  static constexpr double kAolNormFloor = 1.17549435082228750797e-38;

  /// "" when the shape alone is supported, else the problem (naming the field).
  static std::string check_shape(std::int64_t rows, std::int64_t cols, std::int64_t batch) {
    if (rows <= 0 || cols <= 0)
      return "shape: rows and cols must be positive, got " + std::to_string(rows) + "x" +
             std::to_string(cols);
    if (batch < 1 || batch > 65535)
      return "batch: must be in [1, 65535], got " + std::to_string(batch);
    if (rows > kMaxDim || cols > kMaxDim)
      return "shape: rows and cols must be <= " + std::to_string(kMaxDim);
    return {};
  }

  /// "" when `a` can run, else "<field>: <problem>".
  static std::string check(const Arguments& a) {
    std::string s = check_shape(a.rows, a.cols, a.batch);
    if (!s.empty()) return s;
    if (a.tile < 0) return "tile: must be >= 0";
    if (a.in_float.ptr) {
      if (auto e = check_view(a.in_float, a, "in_float"); !e.empty()) return e;
      if (a.in_float.ld != a.rows || (a.batch > 1 && a.in_float.stride != a.rows * a.cols))
        return "in_float: must be dense (ld = rows, stride = rows * cols)";
    } else if (auto e = check_view(a.in, a, "in"); !e.empty()) {
      return e;
    }
    if (auto e = check_view(a.out, a, "out"); !e.empty()) return e;
    try {
      a.options.validate();
    } catch (const Error& e) {
      return std::string(e.detail());
    }
    if (a.options.method == NsMethod::gram)
      return "options.method: NsMethod::gram is not implemented by the CUDA backend (use "
             "standard, or automatic, which runs the standard form here)";
    return {};
  }
  static bool can_implement(const Arguments& a) { return check(a).empty(); }

  /// Bytes of device memory initialize() needs for this shape (pointers and
  /// options do not matter).
  static std::size_t get_workspace_size(const Arguments& a) {
    return Plan(a.rows, a.cols, a.batch, a.tile).total;
  }

  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  /// Binds the workspace memory (get_workspace_size(args) bytes, 256-byte
  /// aligned, e.g. from cudaMalloc) and prepares the tiling tables (uploaded
  /// on `stream`). Creates the cuBLAS handle on first use. Throws muon::Error
  /// when check(args) fails or a CUDA/cuBLAS call fails.
  void initialize(const Arguments& a, void* workspace, cudaStream_t stream) {
    const std::string problem = check(a);
    if (!problem.empty()) throw Error(problem);
    if (!(workspace != nullptr)) ::muon::detail::fail("workspace", "null device pointer");
    if (!(reinterpret_cast<std::uintptr_t>(workspace) % 256 == 0))
      ::muon::detail::fail("workspace", "must be 256-byte aligned");
    args_ = a;
    plan_ = Plan(a.rows, a.cols, a.batch, a.tile);
    char* base = static_cast<char*>(workspace);
    buf_[0] = reinterpret_cast<T*>(base + plan_.x);
    buf_[1] = reinterpret_cast<T*>(base + plan_.y);
    A_ = reinterpret_cast<T*>(base + plan_.a);
    B_ = reinterpret_cast<T*>(base + plan_.b);
    partials_ = reinterpret_cast<double*>(base + plan_.partials);
    scale_ = reinterpret_cast<float*>(base + plan_.scale);
    aol_ = reinterpret_cast<float*>(base + plan_.aol);
    flags_ = reinterpret_cast<int*>(base + plan_.flags);
    ptrs_ = reinterpret_cast<const void**>(base + plan_.ptrs);
    blas_ws_ = base + plan_.blas;
    bound_ = false;  // (re)bind the handle to the stream and this workspace in run()
    if (!handle_) handle_.reset(new BlasHandle());
    upload_tile_tables(stream);
    MUON_CUDA_CHECK(
        cudaMemsetAsync(flags_, 0, sizeof(int) * static_cast<std::size_t>(a.batch), stream));
    initialized_ = true;
  }

  /// New views / options for the same shape (no device work). Throws
  /// muon::Error when they do not fit.
  void update(const Arguments& a) {
    if (!initialized_) ::muon::detail::fail("Workspace::update", "initialize() was not called");
    if (!(a.rows == args_.rows && a.cols == args_.cols && a.batch == args_.batch &&
          a.tile == args_.tile))
      ::muon::detail::fail("Workspace::update", "shape differs from the initialized one");
    const std::string problem = check(a);
    if (!problem.empty()) throw Error(problem);
    args_ = a;
  }

  /// in -> NS(in) -> out on `stream`: launches only, no synchronization, no
  /// allocation (capturable in a CUDA graph).
  void run(cudaStream_t stream) {
    if (!initialized_) ::muon::detail::fail("Workspace::run", "initialize() was not called");
    stream_ = stream;
    bind(stream);
    load();
    ::muon::detail::newton_schulz_iterate(*this, args_.options);
    store();
  }

  /// Binds the cuBLAS handle to `stream` and to this workspace's cuBLAS
  /// workspace (host-side only; run() does it when the stream changes). Call
  /// it before capturing run() into a graph to keep those calls out of the
  /// capture.
  void bind(cudaStream_t stream) {
    if (!initialized_) ::muon::detail::fail("Workspace::bind", "initialize() was not called");
    if (bound_ && bound_stream_ == stream) return;
    MUON_CUDA_CHECK(cublasSetStream(handle_->get(), stream));
    // cublasSetStream resets the workspace to cuBLAS's pool: set ours after it.
    MUON_CUDA_CHECK(cublasSetWorkspace(handle_->get(), blas_ws_, kBlasWorkspaceBytes));
    bound_stream_ = stream;
    bound_ = true;
  }

  // ---- backend primitives called by detail::newton_schulz_iterate ----------

  void normalize(double divisor, double eps, EpsMode mode) {
    if (prenormalized_) return;  // load() divided a float input by its norm already
    const std::int64_t count = plan_.m * plan_.n;
    const dim3 grid(static_cast<unsigned>(plan_.reduce_blocks), static_cast<unsigned>(args_.batch));
    kernels::sumsq_partial<T><<<grid, kernels::kReduceThreads, 0, stream_>>>(X(), count, partials_);
    check_launch("muon::cuda::kernels::sumsq_partial");
    kernels::
        finalize_scale<<<static_cast<unsigned>(args_.batch), kernels::kReduceThreads, 0, stream_>>>(
            partials_, static_cast<int>(plan_.reduce_blocks), scale_, flags_, divisor, eps,
            mode == EpsMode::max);
    check_launch("muon::cuda::kernels::finalize_scale");
    const unsigned blocks = kernels::elementwise_blocks(count);
    const dim3 g2(blocks > 1024u ? 1024u : blocks, static_cast<unsigned>(args_.batch));
    kernels::scale_by<T><<<g2, 256, 0, stream_>>>(X(), count, scale_);
    check_launch("muon::cuda::kernels::scale_by");
  }

  /// AOL rescaling (NsNormalization::aol, see ns_options.hpp), for every
  /// matrix of the batch: A = X X^T, s_i = (sum_j |A_ij|)^(-1/2) in double
  /// (0 for a zero row) kept as float, X <- diag(s) X, A <- diag(s) A diag(s):
  /// A is then X X^T of the new X, and the first step skips its gram().
  /// X is first divided by its Frobenius norm (AOL is scale-invariant), which
  /// sets the non-finite flags as normalize() does and keeps X X^T in T's
  /// range; a normalizing load (in_float) has done that already. A row sum
  /// that is NaN/Inf flags its matrix too. gram() leaves A full (both
  /// triangles, tiled or not), so the row sums read every entry as stored.
  /// Launches only: deterministic (fixed summation order, no atomics) and
  /// capturable.
  void normalize_aol() {
    normalize(1.0, kAolNormFloor, EpsMode::max);  // returns at once when prenormalized
    gram();
    const std::int64_t m = plan_.m, n = plan_.n;
    const unsigned batch = static_cast<unsigned>(args_.batch);
    kernels::aol_row_factors<T>
        <<<dim3(kernels::aol_row_blocks(m), batch), kernels::kReduceThreads, 0, stream_>>>(
            A_, m, aol_, flags_);
    check_launch("muon::cuda::kernels::aol_row_factors");
    launch_aol_scale(X(), n, false);  // X <- diag(s) X
    launch_aol_scale(A_, m, true);    // A <- diag(s) A diag(s)
  }

  void gram() {  // A = X X^T
    const int m = static_cast<int>(plan_.m), n = static_cast<int>(plan_.n);
    if (!plan_.tiled()) {
      const float one = 1.0f, zero = 0.0f;
      MUON_CUDA_CHECK(cublasGemmStridedBatchedEx(
          handle_->get(), CUBLAS_OP_N, CUBLAS_OP_T, m, m, n, &one, X(), dtype(), m,
          plan_.m * plan_.n, X(), dtype(), m, plan_.m * plan_.n, &zero, A_, dtype(), m,
          plan_.m * plan_.m, static_cast<int>(args_.batch), CUBLAS_COMPUTE_32F,
          CUBLAS_GEMM_DEFAULT));
      return;
    }
    tiled_products(cur_, n, 1.0f, 0.0f);  // lower tiles of A
    // Mirror A's lower triangle (B is written by symmetric_polynomial).
    launch_symmetrize(A_, nullptr, true, 1.0f, 0.0f);
  }

  void symmetric_polynomial(double b, double c) {  // B = b A + c A^2 (A^2 = A A^T)
    const bool square = c != 0.0;
    // B <- (square ? 1 : b) * A
    launch_symmetrize(A_, B_, false, square ? 1.0f : static_cast<float>(b), 0.0f);
    if (!square) return;
    const int m = static_cast<int>(plan_.m);
    const float alpha = static_cast<float>(c), beta = static_cast<float>(b);
    if (!plan_.tiled()) {
      MUON_CUDA_CHECK(cublasGemmStridedBatchedEx(
          handle_->get(), CUBLAS_OP_N, CUBLAS_OP_T, m, m, m, &alpha, A_, dtype(), m,
          plan_.m * plan_.m, A_, dtype(), m, plan_.m * plan_.m, &beta, B_, dtype(), m,
          plan_.m * plan_.m, static_cast<int>(args_.batch), CUBLAS_COMPUTE_32F,
          CUBLAS_GEMM_DEFAULT));
      b_lower_only_ = false;
    } else {
      tiled_products(2, m, alpha, beta);  // lower tiles of B
      b_lower_only_ = true;
    }
  }

  void apply_polynomial(double a) {  // X = a X + B X = (B + a I) X
    // Finish B: mirror its lower triangle if only that was computed, add a I.
    launch_symmetrize(B_, B_, b_lower_only_, 1.0f, static_cast<float>(a));
    b_lower_only_ = false;
    const int m = static_cast<int>(plan_.m), n = static_cast<int>(plan_.n);
    const float one = 1.0f, zero = 0.0f;
    MUON_CUDA_CHECK(cublasGemmStridedBatchedEx(
        handle_->get(), CUBLAS_OP_N, CUBLAS_OP_N, m, n, m, &one, B_, dtype(), m, plan_.m * plan_.m,
        X(), dtype(), m, plan_.m * plan_.n, &zero, buf_[1 - cur_], dtype(), m, plan_.m * plan_.n,
        static_cast<int>(args_.batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    cur_ = 1 - cur_;
  }

  // ---- introspection ---------------------------------------------------------

  const Arguments& arguments() const { return args_; }
  bool transposed() const { return args_.rows > args_.cols; }
  /// Per matrix of the batch: 1 when its norm was not finite in the last run
  /// (its output was not written), else 0. Device memory.
  const int* nonfinite_flags() const { return flags_; }
  /// nonfinite_flags() copied to the host after synchronizing `stream`.
  std::vector<int> nonfinite_flags_now(cudaStream_t stream) const {
    return detail::download_now<int>(flags_, static_cast<std::size_t>(args_.batch), stream);
  }
  /// Whether the lower-triangle tiling is used for this shape.
  bool tiled() const { return plan_.tiled(); }
  /// Number of tiles on and below the diagonal per matrix (1 when untiled).
  std::int64_t lower_tiles() const { return plan_.tiles; }
  /// The current iterate X (wide, m x n per matrix, dense), device memory.
  const T* iterate() const { return buf_[cur_]; }

 private:
  // Where each buffer lives in the workspace, and the tiling plan.
  struct Plan {
    std::int64_t m = 0, n = 0, batch = 0;
    std::int64_t tiles = 1;  // lower blocks of the tiling (1 when untiled)
    detail::TilePlan plan;
    std::int64_t reduce_blocks = 1;
    std::size_t x = 0, y = 0, a = 0, b = 0, partials = 0, scale = 0, aol = 0, flags = 0, ptrs = 0,
                blas = 0, total = 0;
    bool tiled() const { return plan.tiled(); }

    Plan() = default;
    Plan(std::int64_t rows, std::int64_t cols, std::int64_t bt, std::int64_t tile_request)
        : batch(bt) {
      m = rows < cols ? rows : cols;
      n = rows < cols ? cols : rows;
      plan = detail::plan_lower_tiles(m, tile_request, kTilingThreshold, kTileTarget);
      tiles = plan.tiled() ? plan.lower_blocks() : 1;
      const std::int64_t per = (m * n + 256 * 16 - 1) / (256 * 16);
      reduce_blocks = per < 1 ? 1 : (per > 256 ? 256 : per);
      std::size_t off = 0;
      auto take = [&off](std::size_t bytes) {
        const std::size_t at = off;
        off += (bytes + 255) / 256 * 256;
        return at;
      };
      const std::size_t mn = static_cast<std::size_t>(m * n * batch) * sizeof(T);
      const std::size_t mm = static_cast<std::size_t>(m * m * batch) * sizeof(T);
      x = take(mn);
      y = take(mn);
      a = take(mm);
      b = take(mm);
      partials = take(sizeof(double) * static_cast<std::size_t>(reduce_blocks * batch));
      scale = take(sizeof(float) * static_cast<std::size_t>(batch));
      aol = take(sizeof(float) * static_cast<std::size_t>(m * batch));  // AOL factors s
      flags = take(sizeof(int) * static_cast<std::size_t>(batch));
      // 3 product sets (gram on buffer 0, gram on buffer 1, A A^T) x 3 pointer
      // arrays (A, B, C operands) x tiles x batch.
      ptrs = take(plan.tiled() ? sizeof(void*) * static_cast<std::size_t>(9 * tiles * batch) : 0);
      blas = take(kBlasWorkspaceBytes);
      total = off;
    }
  };

  // A group of same-size tiles of one product set: `count` GEMMs of
  // rows x cols, operands at ptrs_[first + {0, 1, 2} * count].
  struct TileBatch {
    int rows = 0, cols = 0;
    std::int64_t count = 0;
    std::size_t first = 0;
  };

  static cudaDataType_t dtype() { return device_scalar<T>::data_type; }
  T* X() const { return buf_[cur_]; }

  template <class V>
  static std::string check_view(const BatchedMatrixView<V>& v, const Arguments& a,
                                const char* name) {
    const std::string n(name);
    if (v.ptr == nullptr) return n + ": null device pointer";
    if (v.rows != a.rows || v.cols != a.cols)
      return n + ": shape " + std::to_string(v.rows) + "x" + std::to_string(v.cols) +
             " does not match the problem's " + std::to_string(a.rows) + "x" +
             std::to_string(a.cols);
    if (v.ld < v.rows) return n + ": ld must be >= rows";
    if (v.batch != a.batch)
      return n + ": batch " + std::to_string(v.batch) + " does not match " +
             std::to_string(a.batch);
    if (a.batch > 1 && v.stride < v.ld * v.cols) return n + ": stride must be >= ld*cols";
    return {};
  }

  void load() {
    cur_ = 0;
    b_lower_only_ = false;
    prenormalized_ = false;
    const dim3 block(kernels::kTile, kernels::kTileRows);
    const dim3 grid(static_cast<unsigned>((plan_.m + kernels::kTile - 1) / kernels::kTile),
                    static_cast<unsigned>((plan_.n + kernels::kTile - 1) / kernels::kTile),
                    static_cast<unsigned>(args_.batch));
    if (args_.in_float.ptr) {
      // The norm of the float input, then the cast of input / denominator
      // (under AOL, which is scale-invariant and ignores divisor and eps, the
      // plain norm: as normalize_aol() divides a T input).
      const NewtonSchulzOptions& o = args_.options;
      const bool aol = o.normalization == NsNormalization::aol;
      const double divisor = aol ? 1.0 : o.divisor(), eps = aol ? kAolNormFloor : o.eps;
      const bool eps_max = aol || o.eps_mode == EpsMode::max;
      const std::int64_t count = plan_.m * plan_.n;
      const dim3 reduce(static_cast<unsigned>(plan_.reduce_blocks),
                        static_cast<unsigned>(args_.batch));
      kernels::sumsq_partial<float>
          <<<reduce, kernels::kReduceThreads, 0, stream_>>>(args_.in_float.ptr, count, partials_);
      check_launch("muon::cuda::kernels::sumsq_partial (load)");
      kernels::finalize_scale<<<static_cast<unsigned>(args_.batch), kernels::kReduceThreads, 0,
                                stream_>>>(partials_, static_cast<int>(plan_.reduce_blocks), scale_,
                                           flags_, divisor, eps, eps_max);
      check_launch("muon::cuda::kernels::finalize_scale (load)");
      const auto& in = args_.in_float;
      kernels::copy_transpose<float, T>
          <<<grid, block, 0, stream_>>>(in.ptr, in.ld, in.stride, X(), plan_.m, plan_.m * plan_.n,
                                        plan_.m, plan_.n, transposed(), nullptr, scale_);
      check_launch("muon::cuda::kernels::copy_transpose (normalizing load)");
      prenormalized_ = true;
      return;
    }
    const auto& in = args_.in;
    kernels::copy_transpose<T, T>
        <<<grid, block, 0, stream_>>>(in.ptr, in.ld, in.stride, X(), plan_.m, plan_.m * plan_.n,
                                      plan_.m, plan_.n, transposed(), nullptr, nullptr);
    check_launch("muon::cuda::kernels::copy_transpose (load)");
  }

  void store() {
    const auto& out = args_.out;
    const dim3 block(kernels::kTile, kernels::kTileRows);
    const dim3 grid(static_cast<unsigned>((args_.rows + kernels::kTile - 1) / kernels::kTile),
                    static_cast<unsigned>((args_.cols + kernels::kTile - 1) / kernels::kTile),
                    static_cast<unsigned>(args_.batch));
    kernels::copy_transpose<T, T>
        <<<grid, block, 0, stream_>>>(X(), plan_.m, plan_.m * plan_.n, out.ptr, out.ld, out.stride,
                                      args_.rows, args_.cols, transposed(), flags_, nullptr);
    check_launch("muon::cuda::kernels::copy_transpose (store)");
  }

  // x(i, j) *= s_i (or s_i s_j when both) for the m x cols matrices x[z].
  void launch_aol_scale(T* x, std::int64_t cols, bool both) {
    const unsigned blocks = kernels::elementwise_blocks(plan_.m * cols);
    const dim3 grid(blocks > 1024u ? 1024u : blocks, static_cast<unsigned>(args_.batch));
    kernels::aol_scale<T><<<grid, 256, 0, stream_>>>(x, plan_.m, cols, aol_, both);
    check_launch("muon::cuda::kernels::aol_scale");
  }

  void launch_symmetrize(T* src, T* out, bool mirror, float s, float diag) {
    const unsigned t = static_cast<unsigned>((plan_.m + kernels::kTile - 1) / kernels::kTile);
    const dim3 grid(t, t, static_cast<unsigned>(args_.batch));
    const dim3 block(kernels::kTile, kernels::kTileRows);
    kernels::symmetrize<T><<<grid, block, 0, stream_>>>(src, out, plan_.m, mirror, s, diag);
    check_launch("muon::cuda::kernels::symmetrize");
  }

  // The tile batches of one product set (0, 1: gram on buf_[0], buf_[1]; 2: A A^T).
  const std::vector<TileBatch>& batches(int set) const { return batches_[set]; }

  // C_ij = alpha * L_i L_j^T + beta * C_ij for the lower tiles (i >= j), where
  // L_i is row block i of the left operand (X for the gram sets, A for set 2)
  // and C is A (gram) or B (set 2). k is the inner dimension.
  void tiled_products(int set, int k, float alpha, float beta) {
    const int m = static_cast<int>(plan_.m);
    for (const TileBatch& g : batches(set)) {
      MUON_CUDA_CHECK(
          cublasGemmBatchedEx(handle_->get(), CUBLAS_OP_N, CUBLAS_OP_T, g.rows, g.cols, k, &alpha,
                              ptrs_ + g.first, dtype(), m, ptrs_ + g.first + g.count, dtype(), m,
                              &beta, const_cast<void**>(ptrs_ + g.first + 2 * g.count), dtype(), m,
                              static_cast<int>(g.count), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  }

  // Builds the operand pointer tables of the three product sets and uploads
  // them (stream-ordered; the host copy is staged before cudaMemcpyAsync
  // returns for pageable memory, and kept as a member anyway).
  void upload_tile_tables(cudaStream_t stream) {
    for (auto& b : batches_) b.clear();
    host_ptrs_.clear();
    if (!plan_.tiled()) return;
    const std::int64_t m = plan_.m, n = plan_.n;
    for (int set = 0; set < 3; ++set) {
      const T* left = set < 2 ? buf_[set] : A_;
      T* out = set < 2 ? A_ : B_;
      const std::int64_t lstride = set < 2 ? m * n : m * m;
      for (const auto& pg : plan_.plan.batches) {
        const std::size_t blocks = pg.row_offset.size();
        TileBatch tg;
        tg.rows = static_cast<int>(pg.rows);
        tg.cols = static_cast<int>(pg.cols);
        tg.count = static_cast<std::int64_t>(blocks) * args_.batch;
        tg.first = host_ptrs_.size();
        // [A operands | B operands | C operands], batch-major within each.
        for (int operand = 0; operand < 3; ++operand)
          for (std::int64_t z = 0; z < args_.batch; ++z)
            for (std::size_t k = 0; k < blocks; ++k) {
              const std::int64_t r = pg.row_offset[k], c = pg.col_offset[k];
              if (operand == 0) host_ptrs_.push_back(left + z * lstride + r);
              if (operand == 1) host_ptrs_.push_back(left + z * lstride + c);
              if (operand == 2) host_ptrs_.push_back(out + z * m * m + r + c * m);
            }
        batches_[set].push_back(tg);
      }
    }
    detail::upload(ptrs_, host_ptrs_.data(), host_ptrs_.size(), stream);
  }

  Arguments args_{};
  Plan plan_{};
  T* buf_[2] = {nullptr, nullptr};
  T *A_ = nullptr, *B_ = nullptr;
  double* partials_ = nullptr;
  float* scale_ = nullptr;
  float* aol_ = nullptr;  // AOL factors, m per matrix
  int* flags_ = nullptr;
  const void** ptrs_ = nullptr;
  void* blas_ws_ = nullptr;
  std::vector<TileBatch> batches_[3];
  std::vector<const void*> host_ptrs_;
  std::unique_ptr<BlasHandle> handle_;
  cudaStream_t stream_ = nullptr;
  cudaStream_t bound_stream_ = nullptr;
  bool bound_ = false;
  int cur_ = 0;
  bool b_lower_only_ = false;
  bool prenormalized_ = false;
  bool initialized_ = false;
};

/// A Workspace that owns its memory (through the allocator hook): made once
/// per (rows, cols, batch) shape, then called any number of times.
template <class T>
class Orthogonalizer {
 public:
  /// Throws muon::Error for an unsupported shape or a failed allocation.
  Orthogonalizer(std::int64_t rows, std::int64_t cols, std::int64_t batch, cudaStream_t stream,
                 Allocator alloc = default_allocator(), std::int64_t tile = 0)
      : rows_(rows), cols_(cols), batch_(batch), tile_(tile) {
    const std::string problem = Workspace<T>::check_shape(rows, cols, batch);
    if (!problem.empty()) throw Error(problem);
    typename Workspace<T>::Arguments a;
    a.rows = rows;
    a.cols = cols;
    a.batch = batch;
    a.tile = tile;
    if (!(tile >= 0)) ::muon::detail::fail("tile", "must be >= 0");
    mem_ = DeviceBuffer(Workspace<T>::get_workspace_size(a), stream, alloc,
                        "muon::cuda::Orthogonalizer workspace");
    // Bind with placeholder views over the workspace itself (never run).
    T* p = static_cast<T*>(mem_.data());
    a.in = BatchedMatrixView<const T>(p, rows, cols, rows, rows * cols, batch);
    a.out = BatchedMatrixView<T>(p, rows, cols, rows, rows * cols, batch);
    ws_.initialize(a, mem_.data(), stream);
  }

  /// out <- NS(in) on `stream`, no synchronization (capturable). `out` may
  /// equal `in`. Throws muon::Error (before launching anything) for views
  /// that do not match the shape, or invalid options.
  void operator()(BatchedMatrixView<const T> in, BatchedMatrixView<T> out,
                  const NewtonSchulzOptions& options, cudaStream_t stream) {
    typename Workspace<T>::Arguments a = arguments(options);
    a.in = in;
    a.out = out;
    ws_.update(a);
    ws_.run(stream);
  }
  /// The same from a dense float input, normalized before it is cast to T
  /// (a __half workspace never sees an un-normalized value above 65504).
  void run_from_float(BatchedMatrixView<const float> in, BatchedMatrixView<T> out,
                      const NewtonSchulzOptions& options, cudaStream_t stream) {
    typename Workspace<T>::Arguments a = arguments(options);
    a.in_float = in;
    a.out = out;
    ws_.update(a);
    ws_.run(stream);
  }

  std::int64_t rows() const { return rows_; }
  std::int64_t cols() const { return cols_; }
  std::int64_t batch() const { return batch_; }

  /// Synchronizes `stream` and throws muon::Error naming `parameter` when a
  /// matrix of the last call had a NaN/Inf norm (its output was not written).
  void throw_if_nonfinite(cudaStream_t stream, const char* parameter = "in") const {
    const std::vector<int> flags = ws_.nonfinite_flags_now(stream);
    for (std::size_t k = 0; k < flags.size(); ++k)
      if (flags[k])
        ::muon::detail::fail(parameter, "matrix " + std::to_string(k) +
                                            (batch_ > 1 ? " of the batch" : "") +
                                            " contains NaN or Inf");
  }

  Workspace<T>& workspace() { return ws_; }
  const Workspace<T>& workspace() const { return ws_; }

 private:
  typename Workspace<T>::Arguments arguments(const NewtonSchulzOptions& options) const {
    typename Workspace<T>::Arguments a;
    a.rows = rows_;
    a.cols = cols_;
    a.batch = batch_;
    a.tile = tile_;
    a.options = options;
    return a;
  }

  std::int64_t rows_, cols_, batch_, tile_;
  DeviceBuffer mem_;
  Workspace<T> ws_;
};

/// Convenience: out <- NS(in) for a batch (or one matrix), then
/// synchronizes `stream`. Throws muon::Error for bad views/options or when a
/// matrix holds NaN/Inf (that output untouched). The workspace (and its
/// cuBLAS handle) is kept per thread, per scalar type, for the last shape
/// and device used, so repeated calls with one shape allocate nothing and
/// create no handle; a new shape replaces it.
template <class T>
void orthogonalize(BatchedMatrixView<const T> in, BatchedMatrixView<T> out,
                   const NewtonSchulzOptions& options, cudaStream_t stream) {
  if (!(in.rows == out.rows && in.cols == out.cols && in.batch == out.batch))
    ::muon::detail::fail("out", "shape or batch differs from in");
  struct Cached {
    int device = -1;
    std::unique_ptr<Orthogonalizer<T>> o;
  };
  thread_local Cached cache;
  int device = 0;
  MUON_CUDA_CHECK(cudaGetDevice(&device));
  if (!cache.o || cache.device != device || cache.o->rows() != in.rows ||
      cache.o->cols() != in.cols || cache.o->batch() != in.batch) {
    cache.o.reset();  // free the old one first
    cache.o =
        std::make_unique<Orthogonalizer<T>>(in.rows, in.cols, in.batch, stream, sync_allocator());
    cache.device = device;
  }
  (*cache.o)(in, out, options, stream);
  cache.o->throw_if_nonfinite(stream, "in");
}

/// One-matrix convenience overload (views of T or const T).
template <class T>
void orthogonalize(MatrixView<const T> in, MatrixView<T> out, const NewtonSchulzOptions& options,
                   cudaStream_t stream) {
  orthogonalize<T>(BatchedMatrixView<const T>(in), BatchedMatrixView<T>(out), options, stream);
}

}  // namespace cuda
}  // namespace muon
