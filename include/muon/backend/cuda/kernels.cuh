// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/cuda/kernels.cuh
/// \brief The device kernels of the CUDA backend (compiled by nvcc in the
/// user's .cu translation unit; the library stays header-only).
///
///  - copy_transpose: load (cast, transpose tall inputs) and store (skipping
///    matrices whose norm was not finite, so the caller's output is untouched)
///  - sumsq_partial / finalize_scale / scale_by: Frobenius normalization with
///    the norm reduced on the device into a device scalar per matrix
///  - symmetrize: mirror a lower triangle, copy/scale into a second buffer,
///    add a constant on the diagonal (the symmetric-product helpers)
///  - aol_row_factors / aol_scale: AOL rescaling (NsNormalization::aol), the
///    absolute row sums of A = X X^T and the scalings of X's rows and of A
///  - the optimizer's step: check kernels (read only), decide, commit
///    kernels (momentum, Muon update, AdamW) and finish_step
///  - the Muon variants (NorMuon, AdaMuon) between Newton–Schulz and the
///    parameter commit, with their sums reduced in a fixed order
///  - scale_rows: QK-Clip's row scalings, launched by the optimizer's
///    qk_clip() after a step (not part of the step or its graph)
///
/// The maths of the optimizer's kernels and of the normalization's scale
/// are the step rules of optim/step_rules.hpp (over optim/rules.hpp), which
/// the CPU optimizer calls too; a kernel adds launch geometry, indexing and
/// the fixed-order reductions. Per-thread work is written as __host__
/// __device__ functions that tests/cuda runs on the host.
///
/// Every step kernel reads its per-step values from device memory or from
/// launch arguments fixed for the shape, so a captured CUDA graph replays
/// them.

#ifndef __CUDACC__
#error \
    "muon/backend/cuda/kernels.cuh holds CUDA kernels: include it (or muon/cuda.hpp) from a .cu file compiled by nvcc"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../../optim/rules.hpp"
#include "../../optim/step_rules.hpp"

namespace muon {
namespace cuda {
namespace kernels {

// ---- conversions --------------------------------------------------------------

__host__ __device__ __forceinline__ float to_float(float v) { return v; }
__host__ __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__host__ __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
__host__ __device__ __forceinline__ T from_float(float v);
template <>
__host__ __device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__host__ __device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__host__ __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

constexpr int kTile = 32;
constexpr int kTileRows = 8;  // blockDim = (kTile, kTileRows)

// ---- tiled kernels as block phases ------------------------------------------------
//
// copy_transpose and symmetrize are written as phase functions of one thread
// (block and thread indices passed in, shared tile passed by pointer): the
// kernel runs phase 0, __syncthreads(), phase 1; the tests run the same
// functions on the host block by block (tests/cuda, no device needed).

/// Block and thread coordinates of one thread (blockDim = (kTile, kTileRows)).
struct ThreadCoord {
  std::int64_t bx, by, bz;
  int tx, ty;
};
using Tile = float[kTile][kTile + 1];

// ---- load / store ---------------------------------------------------------------

/// dst(i, j) = s * (src(j, i) if transpose else src(i, j)), for a dst_rows x
/// dst_cols destination; matrix z = blockIdx.z of the batch; s = scale[z]
/// when `scale` is non-null, else 1 (so a load can normalize as it casts).
/// When `skip` is non-null and skip[z] != 0, matrix z is not written.
/// Returns false when the block has nothing more to do (block-uniform).
template <class Src, class Dst>
__host__ __device__ inline bool copy_transpose_phase(
    int phase, const Src* src, std::int64_t src_ld, std::int64_t src_stride, Dst* dst,
    std::int64_t dst_ld, std::int64_t dst_stride, std::int64_t dst_rows, std::int64_t dst_cols,
    bool transpose, const int* skip, const float* scale, ThreadCoord c, Tile& tile) {
  const std::int64_t z = c.bz;
  if (skip && skip[z]) return false;
  const float s = scale ? scale[z] : 1.0f;
  src += z * src_stride;
  dst += z * dst_stride;
  const std::int64_t i0 = c.bx * kTile, j0 = c.by * kTile;
  if (!transpose) {
    if (phase == 1) return false;
    const std::int64_t i = i0 + c.tx;
    if (i < dst_rows)
      for (int k = c.ty; k < kTile; k += kTileRows) {
        const std::int64_t j = j0 + k;
        if (j < dst_cols) dst[i + j * dst_ld] = from_float<Dst>(s * to_float(src[i + j * src_ld]));
      }
    return false;
  }
  if (phase == 0) {
    // dst tile (i0.., j0..) comes from the src tile (j0.., i0..): read it
    // coalesced along src's rows; tile[a][b] = dst(i0 + a, j0 + b).
    for (int k = c.ty; k < kTile; k += kTileRows) {
      const std::int64_t sr = j0 + c.tx, sc = i0 + k;  // src(sr, sc) = dst(sc, sr)
      if (sr < dst_cols && sc < dst_rows) tile[k][c.tx] = s * to_float(src[sr + sc * src_ld]);
    }
    return true;
  }
  for (int k = c.ty; k < kTile; k += kTileRows) {  // write coalesced along dst's rows
    const std::int64_t i = i0 + c.tx, j = j0 + k;
    if (i < dst_rows && j < dst_cols) dst[i + j * dst_ld] = from_float<Dst>(tile[c.tx][k]);
  }
  return false;
}

template <class Src, class Dst>
__global__ void copy_transpose(const Src* __restrict__ src, std::int64_t src_ld,
                               std::int64_t src_stride, Dst* __restrict__ dst, std::int64_t dst_ld,
                               std::int64_t dst_stride, std::int64_t dst_rows,
                               std::int64_t dst_cols, bool transpose, const int* __restrict__ skip,
                               const float* __restrict__ scale) {
  __shared__ Tile tile;
  const ThreadCoord c{blockIdx.x, blockIdx.y, blockIdx.z, static_cast<int>(threadIdx.x),
                      static_cast<int>(threadIdx.y)};
  if (!copy_transpose_phase(0, src, src_ld, src_stride, dst, dst_ld, dst_stride, dst_rows, dst_cols,
                            transpose, skip, scale, c, tile))
    return;
  __syncthreads();
  copy_transpose_phase(1, src, src_ld, src_stride, dst, dst_ld, dst_stride, dst_rows, dst_cols,
                       transpose, skip, scale, c, tile);
}

// ---- normalization ----------------------------------------------------------------

constexpr int kReduceThreads = 256;

/// partials[z * P + blockIdx.x] = sum of squares of this block's share of
/// matrix z (count contiguous elements at x + z * count), in double.
template <class T>
__global__ void sumsq_partial(const T* __restrict__ x, std::int64_t count,
                              double* __restrict__ partials) {
  __shared__ double s[kReduceThreads];
  const std::int64_t z = blockIdx.y;
  x += z * count;
  double acc = 0;
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < count;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const double v = to_float(x[k]);
    acc += v * v;
  }
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int w = kReduceThreads / 2; w > 0; w >>= 1) {
    if (static_cast<int>(threadIdx.x) < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[z * gridDim.x + blockIdx.x] = s[0];
}

/// What normalizes a matrix of squared Frobenius norm `sumsq`: the factor
/// 1 / step::normalization_denominator(norm) (in double, rounded once to
/// float), or, when the norm is NaN/Inf, the factor 0 and the flag that
/// keeps the matrix from being stored.
struct NormalizationScale {
  float scale;
  int nonfinite;
};
__host__ __device__ inline NormalizationScale normalization_scale(double sumsq, double divisor,
                                                                  double eps, bool eps_max) {
  const double norm = optim::rules::square_root(sumsq);
  if (!optim::rules::finite(norm)) return {0.0f, 1};
  return {
      static_cast<float>(1.0 / optim::step::normalization_denominator(norm, divisor, eps, eps_max)),
      0};
}

/// One block per matrix z: the sum of its P partials (fixed order:
/// deterministic), then scale[z] and nonfinite[z] by normalization_scale.
__global__ void finalize_scale(const double* __restrict__ partials, int P,
                               float* __restrict__ scale, int* __restrict__ nonfinite,
                               double divisor, double eps, bool eps_max) {
  __shared__ double s[kReduceThreads];
  const int z = blockIdx.x;
  double acc = 0;
  for (int k = threadIdx.x; k < P; k += blockDim.x) acc += partials[z * P + k];
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int w = kReduceThreads / 2; w > 0; w >>= 1) {
    if (static_cast<int>(threadIdx.x) < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const NormalizationScale found = normalization_scale(s[0], divisor, eps, eps_max);
    scale[z] = found.scale;
    nonfinite[z] = found.nonfinite;
  }
}

/// x[z] *= scale[z] for each matrix z = blockIdx.y (count elements each).
template <class T>
__global__ void scale_by(T* __restrict__ x, std::int64_t count, const float* __restrict__ scale) {
  const std::int64_t z = blockIdx.y;
  x += z * count;
  const float s = scale[z];
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < count;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    x[k] = from_float<T>(to_float(x[k]) * s);
}

// ---- AOL rescaling ---------------------------------------------------------------
//
// NsNormalization::aol, per matrix z of the batch: with A = X X^T (m x m,
// dense, column-major, both triangles filled), s_i = (sum_j |A_ij|)^(-1/2)
// in double, 0 for a zero row, stored as float; then X(i, :) *= s_i and
// A(i, j) *= s_i s_j (so A holds X X^T of the new X). Two kernels:
//   aol_row_factors: CUDA block b of matrix z (kReduceThreads threads) owns
//     rows 32 b .. 32 b + 31; thread t adds |A(i, j)| for row i = 32 b + t % 32
//     over the columns j = t / 32, t / 32 + 8, ... (a warp reads 32
//     neighbouring entries of a column), and the 8 shares of a row are added
//     in lane order: no atomics, the same bits on every run;
//   aol_scale: grid-stride over the entries, x(i, j) * s_i (X) or
//     x(i, j) * (s_i s_j) (A: s_i s_j == s_j s_i, so A stays symmetric).
// The per-thread work is written as __host__ __device__ functions that the
// tests run on the host.

constexpr int kAolRowLanes = 32;                                ///< rows per CUDA block
constexpr int kAolColumnLanes = kReduceThreads / kAolRowLanes;  ///< threads sharing a row

/// Thread share of row i's absolute sum: |a(i, j)| for j = column_lane,
/// column_lane + kAolColumnLanes, ... (0 for a row past the end), in double.
template <class T>
__host__ __device__ inline double aol_row_share(const T* a, std::int64_t m, std::int64_t i,
                                                int column_lane) {
  double share = 0;
  if (i < m)
    for (std::int64_t j = column_lane; j < m; j += kAolColumnLanes) {
      const double v = to_float(a[i + j * m]);
      share += v < 0 ? -v : v;
    }
  return share;
}

/// A row's sum: its kAolColumnLanes shares added in lane order.
__host__ __device__ inline double aol_row_total(const double (*shares)[kAolRowLanes],
                                                int row_lane) {
  double total = 0;
  for (int lane = 0; lane < kAolColumnLanes; ++lane) total += shares[lane][row_lane];
  return total;
}

/// s = row_sum^(-1/2), computed in double and rounded once to float; 0 for
/// a zero row, and for a NaN/Inf sum (whose matrix is flagged, not stored).
__host__ __device__ inline float aol_factor(double row_sum) {
  if (!(row_sum > 0) || !optim::rules::finite(row_sum)) return 0.0f;
  return static_cast<float>(1.0 / optim::rules::square_root(row_sum));
}

/// CUDA blocks per matrix of aol_row_factors for an m x m A.
inline unsigned aol_row_blocks(std::int64_t m) {
  return static_cast<unsigned>((m + kAolRowLanes - 1) / kAolRowLanes);
}

/// factors[z * m + i] = aol_factor(row i's absolute sum of a[z]) for the m x m
/// matrices a[z] (stride m * m), z = blockIdx.y; nonfinite[z] = 1 when a
/// row's sum is NaN/Inf (never cleared here: normalization set the flags).
/// grid = (aol_row_blocks(m), batch), blockDim = kReduceThreads.
template <class T>
__global__ void aol_row_factors(const T* __restrict__ a, std::int64_t m,
                                float* __restrict__ factors, int* __restrict__ nonfinite) {
  __shared__ double shares[kAolColumnLanes][kAolRowLanes];
  const std::int64_t z = blockIdx.y;
  const int row_lane = static_cast<int>(threadIdx.x) % kAolRowLanes;
  const int column_lane = static_cast<int>(threadIdx.x) / kAolRowLanes;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kAolRowLanes + row_lane;
  shares[column_lane][row_lane] = aol_row_share(a + z * m * m, m, i, column_lane);
  __syncthreads();
  if (column_lane == 0 && i < m) {
    const double total = aol_row_total(shares, row_lane);
    factors[z * m + i] = aol_factor(total);
    if (!optim::rules::finite(total)) nonfinite[z] = 1;  // same value from every writer
  }
}

/// Thread t's entries k = t, t + threads, ... of the m x cols matrix x
/// (ld m; entry k is (k % m, k / m)): x(i, j) <- x(i, j) * f in float, f =
/// factors[i] * factors[j] when `both` (then cols == m), else factors[i];
/// rounded once to T.
template <class T>
__host__ __device__ inline void aol_scale_share(T* x, std::int64_t m, std::int64_t cols,
                                                const float* factors, bool both, std::int64_t t,
                                                std::int64_t threads) {
  const std::int64_t count = m * cols;
  for (std::int64_t k = t; k < count; k += threads) {
    const std::int64_t i = k % m;
    const float f = both ? factors[i] * factors[k / m] : factors[i];
    x[k] = from_float<T>(to_float(x[k]) * f);
  }
}

/// aol_scale_share over matrix z = blockIdx.y (x at z * m * cols, factors at
/// z * m), grid-stride over gridDim.x blocks.
template <class T>
__global__ void aol_scale(T* __restrict__ x, std::int64_t m, std::int64_t cols,
                          const float* __restrict__ factors, bool both) {
  const std::int64_t z = blockIdx.y;
  aol_scale_share(x + z * m * cols, m, cols, factors + z * m, both,
                  static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                  static_cast<std::int64_t>(gridDim.x) * blockDim.x);
}

// ---- symmetric helpers ---------------------------------------------------------------

/// For the m x m matrices src[z] (leading dimension m, stride m*m):
///   v(i, j) = src(i, j) if i >= j or !mirror, else src(j, i)
///   src(i, j) <- v      for i < j when mirror     (lower triangle -> upper)
///   out(i, j) <- s v + (i == j ? diag : 0)        when out is non-null
/// When out == src only the entries with i <= j are written (the strict lower
/// triangle keeps its values). blockDim = (kTile, kTileRows), grid =
/// (ceil(m/kTile), ceil(m/kTile), batch): block (bx, by) owns tile row bx,
/// tile column by. Returns false when the block is done (block-uniform).
template <class T>
__host__ __device__ inline bool symmetrize_phase(int phase, T* src, T* out, std::int64_t m,
                                                 bool mirror, float s, float diag, ThreadCoord c,
                                                 Tile& tile) {
  src += c.bz * m * m;
  if (out) out += c.bz * m * m;
  const std::int64_t ti = c.bx, tj = c.by;
  const bool in_place = out == src;
  if ((in_place || !out) && ti > tj) return false;  // nothing to write below the diagonal
  if (!mirror || ti > tj) {
    if (phase == 1) return false;
    for (int k = c.ty; k < kTile; k += kTileRows) {
      const std::int64_t i = ti * kTile + c.tx, j = tj * kTile + k;
      if (i >= m || j >= m) continue;
      if (out && (!in_place || i <= j)) {
        const float v = to_float(src[i + j * m]);
        out[i + j * m] = from_float<T>(s * v + (i == j ? diag : 0.0f));
      }
    }
    return false;
  }
  if (phase == 0) {
    // Upper or diagonal tile with mirroring: stage the source tile (tj, ti)
    // (for the diagonal, the tile itself), read coalesced:
    // tile[b][a] = src(tj*kTile + a, ti*kTile + b).
    for (int k = c.ty; k < kTile; k += kTileRows) {
      const std::int64_t r = tj * kTile + c.tx, col = ti * kTile + k;
      if (r < m && col < m) tile[k][c.tx] = to_float(src[r + col * m]);
    }
    return true;
  }
  for (int k = c.ty; k < kTile; k += kTileRows) {
    const std::int64_t i = ti * kTile + c.tx, j = tj * kTile + k;
    if (i >= m || j >= m) continue;
    float v;
    if (ti < tj)
      v = tile[c.tx][k];  // src(j, i): row j = tj*kTile + k, col i = ti*kTile + tx
    else  // diagonal tile: local (a, b) = src(ti*kTile + a, ti*kTile + b) = tile[b][a]
      v = i >= j ? tile[k][c.tx] : tile[c.tx][k];
    if (i < j) src[i + j * m] = from_float<T>(v);
    if (out && (!in_place || i <= j))
      out[i + j * m] = from_float<T>(s * v + (i == j ? diag : 0.0f));
  }
  return false;
}

template <class T>
__global__ void symmetrize(T* src, T* out, std::int64_t m, bool mirror, float s, float diag) {
  __shared__ Tile tile;
  const ThreadCoord c{blockIdx.x, blockIdx.y, blockIdx.z, static_cast<int>(threadIdx.x),
                      static_cast<int>(threadIdx.y)};
  if (!symmetrize_phase(0, src, out, m, mirror, s, diag, c, tile)) return;
  __syncthreads();
  symmetrize_phase(1, src, out, m, mirror, s, diag, c, tile);
}

// ---- optimizer kernels ------------------------------------------------------------
//
// A kernel here indexes memory and calls the step rules of
// optim/step_rules.hpp (which compose the per-element rules of
// optim/rules.hpp): the same functions the CPU optimizer's loops call, so
// the CPU tests run these kernels' maths. What a kernel adds: the per-step
// values read from device memory (so a captured graph replays with new
// learning rates), the launch geometry, the fixed-order reductions, and the
// all-or-nothing gating of a step:
//   1. check kernels read gradient, state and parameter and raise the flags
//      of optim::step::Flag;
//   2. decide turns the flags into the verdict (raise: any flag but "no
//      gradient" refuses the whole step) and per-parameter skips (skip);
//   3. commit kernels return at once when the step is refused or their
//      parameter skipped, else write;
//   4. finish advances the step counters of what was written.
// Each elementwise kernel's per-thread work is a __host__ __device__
// function of the thread's index t among `threads` (a grid-stride loop over
// elements e = t, t + threads, ...), so the tests run it on the host, thread
// by thread, with the kernel's launch shape.

namespace step = ::muon::optim::step;

/// The scalars of one parameter group for one step, from the host.
struct GroupStep {
  optim::rules::MomentumCoefficients<float> momentum;
  float decay = 1.0f;  ///< MuonGroupOptions::decay_multiplier (1 - lr * wd when decoupled)
  int cautious = 0;
  double adamw_lr = 0, adamw_beta1 = 0, adamw_beta2 = 0, adamw_eps = 0, adamw_weight_decay = 0;
  /// The variant's second moment (NorMuon's or AdaMuon's beta2 and eps;
  /// unused by plain Muon). AdaMuon bias-corrects V by the parameter's step.
  double second_moment_beta2 = 0, second_moment_eps = 0;
  int second_moment_bias_correction = 0;
};

/// The scalars of one parameter for one step, from the host.
struct ParamStep {
  int group = 0;
  int present = 0;  ///< has a gradient this step
  int adamw = 0;    ///< AdamW-routed
  float update_limit =
      0;  ///< Muon: the largest |p| for which p (1 - lr wd) - lr_adj O stays finite
};

/// Device state of the step machinery (one per optimizer).
struct StepState {
  long long step_count = 0;  ///< completed steps
  int verdict = 0;           ///< 1 when the last step was refused (raise policy)
  int raise = 1;             ///< the policy: 1 raise, 0 skip
};

/// This thread's index in the grid and the grid's number of threads (a
/// grid-stride loop's start and step).
__device__ __forceinline__ std::int64_t grid_thread() {
  return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ std::int64_t grid_threads() {
  return static_cast<std::int64_t>(gridDim.x) * blockDim.x;
}

/// flags[i] = step::kNoGrad for absent gradients, 0 otherwise; max_abs[i] = 0.
__global__ void begin_step(int n, const ParamStep* __restrict__ params, int* __restrict__ flags,
                           unsigned* __restrict__ max_abs) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    flags[i] = params[i].present ? 0 : step::kNoGrad;
    max_abs[i] = 0u;
  }
}

/// ORs `bits` into a parameter's flags (one atomic per thread at most).
__device__ __forceinline__ void raise_flags(int* flag, int bits) {
  if (bits != 0 && (*flag & bits) != bits) atomicOr(flag, bits);
}

/// What one thread of muon_check finds: the OR of its elements' flags
/// (step::muon_element_flags), and the largest |p| among the elements whose
/// gradient is finite (for the update bound).
struct MuonCheck {
  int flags;
  float max_abs;
};

/// Thread t's elements e = t, t + threads, ... of a Muon parameter, read
/// only: the gradient, the new momentum and the Newton–Schulz input finite.
template <class P>
__host__ __device__ inline MuonCheck muon_check_share(
    const P* grad, const float* m, const P* p, std::int64_t n,
    const optim::rules::MomentumCoefficients<float>& k, std::int64_t t, std::int64_t threads) {
  MuonCheck found{0, 0.0f};
  for (std::int64_t e = t; e < n; e += threads) {
    const float w = to_float(p[e]);
    const int flags = step::muon_element_flags<float>(m[e], to_float(grad[e]), w, k);
    found.flags |= flags;
    if (flags != step::kNonFiniteGrad) found.max_abs = fmaxf(found.max_abs, fabsf(w));
  }
  return found;
}

/// Muon, reading only: muon_check_share's flags, and max |p| (as float
/// bits: non-negative floats order like their bit patterns).
template <class P>
__global__ void muon_check(const P* __restrict__ grad, const float* __restrict__ m,
                           const P* __restrict__ p, std::int64_t n,
                           const GroupStep* __restrict__ group, int* __restrict__ flag,
                           unsigned* __restrict__ max_abs) {
  const auto k = group->momentum;
  const MuonCheck found = muon_check_share(grad, m, p, n, k, grid_thread(), grid_threads());
  raise_flags(flag, found.flags);
  if (found.max_abs > 0.0f) atomicMax(max_abs, __float_as_uint(found.max_abs));
}

/// AdamW coefficients of every AdamW parameter for this step, from the
/// device's own step counters (t = steps + 1), bias corrections in double.
__global__ void adamw_prepare(int n, const ParamStep* __restrict__ params,
                              const GroupStep* __restrict__ groups,
                              const long long* __restrict__ steps,
                              optim::rules::AdamWCoefficients<float>* __restrict__ out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n || !params[i].adamw) return;
  const GroupStep& g = groups[params[i].group];
  const optim::rules::AdamWCoefficients<float> k = optim::rules::adamw_coefficients<float>(
      g.adamw_lr, g.adamw_beta1, g.adamw_beta2, g.adamw_eps, g.adamw_weight_decay,
      static_cast<double>(steps[i] + 1));
  out[i] = k;
}

/// The second-moment coefficients of every Muon parameter for this step:
/// beta2 and eps of its group's variant, and for AdaMuon the bias
/// correction from the device's own step counter (t = steps + 1, in double,
/// like adamw_prepare), so a replayed graph stays right after a refused step.
__global__ void second_moment_prepare(
    int n, const ParamStep* __restrict__ params, const GroupStep* __restrict__ groups,
    const long long* __restrict__ steps,
    optim::rules::SecondMomentCoefficients<float>* __restrict__ out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n || params[i].adamw) return;
  const GroupStep& g = groups[params[i].group];
  const double t = g.second_moment_bias_correction ? static_cast<double>(steps[i] + 1) : 0.0;
  out[i] = optim::rules::second_moment_coefficients<float>(g.second_moment_beta2,
                                                           g.second_moment_eps, t);
}

/// x rounded to the parameter's type P and back: what the AdamW check
/// tests for overflow (step::adamw_element_flags' to_param).
template <class P>
struct RoundThrough {
  __host__ __device__ float operator()(float x) const { return to_float(from_float<P>(x)); }
};

/// Thread t's elements of an AdamW parameter, read only: the OR of their
/// flags (step::adamw_element_flags: gradient, new moments, new parameter).
template <class P>
__host__ __device__ inline int adamw_check_share(const P* p, const P* grad, const float* m1,
                                                 const float* m2, std::int64_t n,
                                                 const optim::rules::AdamWCoefficients<float>& k,
                                                 std::int64_t t, std::int64_t threads) {
  int flags = 0;
  for (std::int64_t e = t; e < n; e += threads)
    flags |= step::adamw_element_flags<float>(to_float(p[e]), to_float(grad[e]), m1[e], m2[e], k,
                                              RoundThrough<P>());
  return flags;
}

/// AdamW, reading only: adamw_check_share's flags.
template <class P>
__global__ void adamw_check(const P* __restrict__ p, const P* __restrict__ grad,
                            const float* __restrict__ m1, const float* __restrict__ m2,
                            std::int64_t n,
                            const optim::rules::AdamWCoefficients<float>* __restrict__ coef,
                            int* __restrict__ flag) {
  const auto k = *coef;
  raise_flags(flag, adamw_check_share(p, grad, m1, m2, n, k, grid_thread(), grid_threads()));
}

/// A parameter's flags once its checks are in: a Muon parameter with a
/// gradient whose largest |p| passes its update bound is flagged too.
__host__ __device__ inline int decided_flags(const ParamStep& q, int flags, float max_abs) {
  return !q.adamw && q.present ? step::with_update_bound(flags, max_abs, q.update_limit) : flags;
}

/// One block: the Muon update bounds, then the verdict. Under the raise
/// policy any flag that blocks an update (step::blocks_update) refuses the
/// whole step; under skip, a flagged parameter is left alone.
__global__ void decide(int n, const ParamStep* __restrict__ params, int* __restrict__ flags,
                       const unsigned* __restrict__ max_abs, StepState* __restrict__ state) {
  __shared__ int refuse;
  if (threadIdx.x == 0) refuse = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    flags[i] = decided_flags(params[i], flags[i], __uint_as_float(max_abs[i]));
    if (step::blocks_update(flags[i])) atomicOr(&refuse, 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) state->verdict = state->raise && refuse ? 1 : 0;
}

__device__ __forceinline__ bool leaves(const StepState* state, const int* flag) {
  return state->verdict != 0 || *flag != 0;
}

/// Thread t's elements: m <- the new momentum, staging <- the Newton–Schulz
/// input (step::momentum_element), in float. p is read (the l2 form's
/// g + lambda p) before the parameter commit writes it.
template <class P>
__host__ __device__ inline void momentum_commit_share(
    const P* grad, const P* p, float* m, float* staging, std::int64_t n,
    const optim::rules::MomentumCoefficients<float>& k, std::int64_t t, std::int64_t threads) {
  for (std::int64_t e = t; e < n; e += threads) {
    const step::MomentumElement<float> x =
        step::momentum_element<float>(m[e], to_float(grad[e]), to_float(p[e]), k);
    m[e] = x.momentum;
    staging[e] = x.input;
  }
}

/// Muon: momentum_commit_share over the grid. The staging stays float: the
/// workspace normalizes it before casting to its scalar, so a half
/// workspace never sees an un-normalized value above 65504.
template <class P>
__global__ void momentum_commit(const P* __restrict__ grad, const P* __restrict__ p,
                                float* __restrict__ m, float* __restrict__ staging, std::int64_t n,
                                const GroupStep* __restrict__ group,
                                const StepState* __restrict__ state, const int* __restrict__ flag) {
  if (leaves(state, flag)) return;
  const auto k = group->momentum;
  momentum_commit_share(grad, p, m, staging, n, k, grid_thread(), grid_threads());
}

/// The update scalars of a Muon block: the group's decay, the block's
/// adjusted lr (*block_lr).
__device__ __forceinline__ optim::rules::MuonUpdateCoefficients<float> block_update(
    const GroupStep* group, const float* block_lr) {
  optim::rules::MuonUpdateCoefficients<float> k;
  k.decay = group->decay;
  k.step = *block_lr;
  k.cautious = group->cautious != 0;
  return k;
}

/// Thread t's elements: p <- rules::muon_parameter(p, o), rounded to P.
template <class P, class O>
__host__ __device__ inline void muon_commit_share(
    P* p, const O* o, std::int64_t n, const optim::rules::MuonUpdateCoefficients<float>& k,
    std::int64_t t, std::int64_t threads) {
  for (std::int64_t e = t; e < n; e += threads)
    p[e] = from_float<P>(optim::rules::muon_parameter(to_float(p[e]), to_float(o[e]), k));
}

/// Muon: p <- rule(p, O) with the block's adjusted lr (*block_lr).
template <class P, class O>
__global__ void muon_commit(P* __restrict__ p, const O* __restrict__ o, std::int64_t n,
                            const GroupStep* __restrict__ group, const float* __restrict__ block_lr,
                            const StepState* __restrict__ state, const int* __restrict__ flag) {
  if (leaves(state, flag)) return;
  const auto k = block_update(group, block_lr);
  muon_commit_share(p, o, n, k, grid_thread(), grid_threads());
}

// ---- deterministic sums -------------------------------------------------------------
//
// The variants need sums over rows, columns and whole blocks of O. Float
// atomics would make them depend on the order in which threads finish;
// instead every thread adds a fixed set of elements into a share (in
// double), the shares of a CUDA block are added in a fixed tree, and a
// result per CUDA block goes to memory for a one-block kernel to add. The
// sums then depend on the data and the launch shape only: two runs, and a
// graph replay, agree bit for bit. The per-thread work is written as
// __host__ __device__ functions so that the tests can run it on the host.

/// One level of the tree: shares[t] += shares[t + width] for t < width.
template <class S>
__host__ __device__ inline void add_tree_level(S* shares, int t, int width) {
  if (t < width) shares[t] += shares[t + width];
}

/// The sum of the kReduceThreads threads' `mine`, added in the tree order
/// (width kReduceThreads/2, ..., 1); every thread gets it. blockDim.x must
/// be kReduceThreads, and every thread of the block must call it.
template <class S>
__device__ S block_sum(S mine, S* shared) {
  const int t = static_cast<int>(threadIdx.x);
  shared[t] = mine;
  __syncthreads();
  for (int width = kReduceThreads / 2; width > 0; width >>= 1) {
    add_tree_level(shared, t, width);
    __syncthreads();
  }
  return shared[0];
}

// ---- NorMuon ---------------------------------------------------------------------
//
// A block of O is row-major rows x cols in memory: o(r, c) at r * cols + c.
// NorMuon's second moment V holds one number per "line" of the block: per
// row (by_row) or per column, whichever runs along the longer side of the
// (out, in) matrix (step::normuon_lines, as on the CPU). Three kernels per
// block: the lines' sums of squares, the V update with the factors (the
// lines' step::normuon_line) and the ratio step::normuon_ratio, then the
// commit with U = O f ratio (step::normuon_entry), which has O's Frobenius
// norm.

constexpr int kColumnLanes = 32;                          ///< columns per CUDA block
constexpr int kRowLanes = kReduceThreads / kColumnLanes;  ///< threads sharing a column

/// Thread t's share of sum_c o(r, c)^2: columns t, t + threads, ...
template <class O>
__host__ __device__ inline double row_sumsq_share(const O* o, std::int64_t cols, std::int64_t r,
                                                  int t, int threads) {
  double share = 0;
  for (std::int64_t c = t; c < cols; c += threads) {
    const double v = to_float(o[r * cols + c]);
    share += v * v;
  }
  return share;
}

/// sums[r] = sum_c o(r, c)^2: CUDA block r (kReduceThreads threads) sums row r.
template <class O>
__global__ void sumsq_per_row(const O* __restrict__ o, std::int64_t cols, double* __restrict__ sums,
                              const StepState* __restrict__ state, const int* __restrict__ flag) {
  if (leaves(state, flag)) return;
  __shared__ double shared[kReduceThreads];
  const std::int64_t r = blockIdx.x;
  const double total =
      block_sum(row_sumsq_share(o, cols, r, static_cast<int>(threadIdx.x), kReduceThreads), shared);
  if (threadIdx.x == 0) sums[r] = total;
}

/// The share of sum_r o(r, c)^2 of the thread in row lane `row_lane`: rows
/// row_lane, row_lane + kRowLanes, ... (0 for a column past the end).
template <class O>
__host__ __device__ inline double column_sumsq_share(const O* o, std::int64_t rows,
                                                     std::int64_t cols, std::int64_t c,
                                                     int row_lane) {
  double share = 0;
  if (c < cols)
    for (std::int64_t r = row_lane; r < rows; r += kRowLanes) {
      const double v = to_float(o[r * cols + c]);
      share += v * v;
    }
  return share;
}

/// A column's sum: its kRowLanes shares added in lane order.
__host__ __device__ inline double column_total(const double (*shares)[kColumnLanes],
                                               int column_lane) {
  double total = 0;
  for (int lane = 0; lane < kRowLanes; ++lane) total += shares[lane][column_lane];
  return total;
}

/// sums[c] = sum_r o(r, c)^2: CUDA block b sums columns 32 b .. 32 b + 31,
/// thread t reading column t % 32 in row lane t / 32 (a warp reads 32
/// neighbouring entries of a row).
template <class O>
__global__ void sumsq_per_column(const O* __restrict__ o, std::int64_t rows, std::int64_t cols,
                                 double* __restrict__ sums, const StepState* __restrict__ state,
                                 const int* __restrict__ flag) {
  if (leaves(state, flag)) return;
  __shared__ double shares[kRowLanes][kColumnLanes];
  const int column_lane = static_cast<int>(threadIdx.x) % kColumnLanes;
  const int row_lane = static_cast<int>(threadIdx.x) / kColumnLanes;
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * kColumnLanes + column_lane;
  shares[row_lane][column_lane] = column_sumsq_share(o, rows, cols, c, row_lane);
  __syncthreads();
  if (row_lane == 0 && c < cols) sums[c] = column_total(shares, column_lane);
}

/// CUDA blocks of sumsq_per_column for `cols` columns.
inline unsigned column_sum_blocks(std::int64_t cols) {
  return static_cast<unsigned>((cols + kColumnLanes - 1) / kColumnLanes);
}

/// The two squared norms of a NorMuon block: ||O||_F^2 = sum_j s_j and
/// ||O f||_F^2 = sum_j s_j f_j^2 (s_j: line j's sum of squares).
struct NormuonNorms {
  double o_sq, scaled_sq;  // no initializers: lives in __shared__ memory
  __host__ __device__ NormuonNorms& operator+=(const NormuonNorms& x) {
    o_sq += x.o_sq;
    scaled_sq += x.scaled_sq;
    return *this;
  }
};

/// Thread t's lines j = t, t + threads, ... of a block with `lines` lines of
/// `averaged` entries: V_j and the factor f_j by step::normuon_line, and
/// line_sums[j] <- f_j (its sum is not needed past here). Returns its share
/// of the two norms.
__host__ __device__ inline NormuonNorms normuon_line_share(
    float* v, double* line_sums, std::int64_t lines, double averaged,
    const optim::rules::SecondMomentCoefficients<float>& k, int t, int threads) {
  NormuonNorms share{0.0, 0.0};
  for (std::int64_t j = t; j < lines; j += threads) {
    const double s = line_sums[j];
    const double f = step::normuon_line<float>(v[j], s, averaged, k);
    share.o_sq += s;
    share.scaled_sq += s * f * f;
    line_sums[j] = f;
  }
  return share;
}

/// One CUDA block: the V update and factors of the block's `lines` lines
/// (line_sums: their sums of squares in, their factors out), and *ratio =
/// step::normuon_ratio (||O||_F / ||O f||_F).
__global__ void normuon_factors(
    float* __restrict__ v, double* __restrict__ line_sums, std::int64_t lines, double averaged,
    const optim::rules::SecondMomentCoefficients<float>* __restrict__ coef,
    float* __restrict__ ratio, const StepState* __restrict__ state, const int* __restrict__ flag) {
  if (leaves(state, flag)) return;
  __shared__ NormuonNorms shared[kReduceThreads];
  const NormuonNorms total =
      block_sum(normuon_line_share(v, line_sums, lines, averaged, *coef,
                                   static_cast<int>(threadIdx.x), kReduceThreads),
                shared);
  if (threadIdx.x == 0) *ratio = step::normuon_ratio<float>(total.o_sq, total.scaled_sq);
}

/// Thread t's elements: p <- rule(p, step::normuon_entry(o, f, ratio)), f
/// the factor of the element's line (its row when by_row, else its column).
template <class P, class O>
__host__ __device__ inline void normuon_commit_share(
    P* p, const O* o, std::int64_t n, std::int64_t cols, bool by_row, const double* factors,
    float ratio, const optim::rules::MuonUpdateCoefficients<float>& k, std::int64_t t,
    std::int64_t threads) {
  for (std::int64_t e = t; e < n; e += threads) {
    const double f = factors[by_row ? e / cols : e % cols];
    p[e] = from_float<P>(optim::rules::muon_parameter(
        to_float(p[e]), step::normuon_entry(to_float(o[e]), f, ratio), k));
  }
}

/// NorMuon: normuon_commit_share over the grid.
template <class P, class O>
__global__ void normuon_commit(P* __restrict__ p, const O* __restrict__ o, std::int64_t n,
                               std::int64_t cols, bool by_row, const double* __restrict__ factors,
                               const float* __restrict__ ratio, const GroupStep* __restrict__ group,
                               const float* __restrict__ block_lr,
                               const StepState* __restrict__ state, const int* __restrict__ flag) {
  if (leaves(state, flag)) return;
  const auto k = block_update(group, block_lr);
  normuon_commit_share(p, o, n, cols, by_row, factors, *ratio, k, grid_thread(), grid_threads());
}

// ---- AdaMuon ---------------------------------------------------------------------
//
// V is elementwise, in the block's layout. Three kernels per block: the V
// update with the partial sums of ||D||_F^2 (D = O / (sqrt(V_hat) + eps))
// per CUDA block, the ratio step::adamuon_ratio (sqrt(min(m, n)) /
// ||D||_F) from them, then the commit with U = D ratio (an orthogonal
// matrix's Frobenius norm).

/// Thread t's elements e = t, t + threads, ... (t counts over the whole
/// grid): V_e and the direction D_e by step::adamuon_element. Returns its
/// share of ||D||_F^2.
template <class O>
__host__ __device__ inline double adamuon_moment_share(
    const O* o, float* v, std::int64_t n, const optim::rules::SecondMomentCoefficients<float>& k,
    std::int64_t t, std::int64_t threads) {
  double share = 0;
  for (std::int64_t e = t; e < n; e += threads) {
    const double d = step::adamuon_element<float>(v[e], to_float(o[e]), k);
    share += d * d;
  }
  return share;
}

/// The V update of a block's n entries; partials[b] = CUDA block b's share
/// of ||D||_F^2. blockDim.x = kReduceThreads.
template <class O>
__global__ void adamuon_moment(
    const O* __restrict__ o, float* __restrict__ v, std::int64_t n,
    const optim::rules::SecondMomentCoefficients<float>* __restrict__ coef,
    double* __restrict__ partials, const StepState* __restrict__ state,
    const int* __restrict__ flag) {
  if (leaves(state, flag)) return;
  __shared__ double shared[kReduceThreads];
  const std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * kReduceThreads + threadIdx.x;
  const std::int64_t threads = static_cast<std::int64_t>(gridDim.x) * kReduceThreads;
  const double total = block_sum(adamuon_moment_share(o, v, n, *coef, t, threads), shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

/// Thread t's share of the sum of `count` partial sums: entries t, t + threads, ...
__host__ __device__ inline double partials_share(const double* partials, int count, int t,
                                                 int threads) {
  double share = 0;
  for (int j = t; j < count; j += threads) share += partials[j];
  return share;
}

/// One CUDA block: *ratio = step::adamuon_ratio of a rows x cols block from
/// the sum of the partials (||D||_F^2).
__global__ void adamuon_ratio(const double* __restrict__ partials, int count, std::int64_t rows,
                              std::int64_t cols, float* __restrict__ ratio,
                              const StepState* __restrict__ state, const int* __restrict__ flag) {
  if (leaves(state, flag)) return;
  __shared__ double shared[kReduceThreads];
  const double total = block_sum(
      partials_share(partials, count, static_cast<int>(threadIdx.x), kReduceThreads), shared);
  if (threadIdx.x == 0) *ratio = step::adamuon_ratio<float>(rows, cols, total);
}

/// Thread t's elements: p <- rule(p, D ratio), D from V as updated by
/// adamuon_moment.
template <class P, class O>
__host__ __device__ inline void adamuon_commit_share(
    P* p, const O* o, const float* v, std::int64_t n,
    const optim::rules::SecondMomentCoefficients<float>& km, float ratio,
    const optim::rules::MuonUpdateCoefficients<float>& k, std::int64_t t, std::int64_t threads) {
  for (std::int64_t e = t; e < n; e += threads) {
    const float d = optim::rules::adamuon_direction(to_float(o[e]), v[e], km) * ratio;
    p[e] = from_float<P>(optim::rules::muon_parameter(to_float(p[e]), d, k));
  }
}

/// AdaMuon: adamuon_commit_share over the grid.
template <class P, class O>
__global__ void adamuon_commit(
    P* __restrict__ p, const O* __restrict__ o, const float* __restrict__ v, std::int64_t n,
    const optim::rules::SecondMomentCoefficients<float>* __restrict__ coef,
    const float* __restrict__ ratio, const GroupStep* __restrict__ group,
    const float* __restrict__ block_lr, const StepState* __restrict__ state,
    const int* __restrict__ flag) {
  if (leaves(state, flag)) return;
  const auto k = block_update(group, block_lr);
  const auto km = *coef;
  adamuon_commit_share(p, o, v, n, km, *ratio, k, grid_thread(), grid_threads());
}

/// Thread t's elements of an AdamW parameter: the moments and the
/// parameter by step::adamw_element (the parameter from the moments as
/// stored), the parameter rounded to P.
template <class P>
__host__ __device__ inline void adamw_commit_share(P* p, const P* grad, float* m1, float* m2,
                                                   std::int64_t n,
                                                   const optim::rules::AdamWCoefficients<float>& k,
                                                   std::int64_t t, std::int64_t threads) {
  for (std::int64_t e = t; e < n; e += threads) {
    const step::AdamWElement<float> x =
        step::adamw_element<float>(to_float(p[e]), to_float(grad[e]), m1[e], m2[e], k);
    m1[e] = x.exp_avg;
    m2[e] = x.exp_avg_sq;
    p[e] = from_float<P>(x.param);
  }
}

/// AdamW: adamw_commit_share over the grid.
template <class P>
__global__ void adamw_commit(P* __restrict__ p, const P* __restrict__ grad, float* __restrict__ m1,
                             float* __restrict__ m2, std::int64_t n,
                             const optim::rules::AdamWCoefficients<float>* __restrict__ coef,
                             const StepState* __restrict__ state, const int* __restrict__ flag) {
  if (leaves(state, flag)) return;
  const auto k = *coef;
  adamw_commit_share(p, grad, m1, m2, n, k, grid_thread(), grid_threads());
}

/// One block: unless the step was refused, advance the optimizer's count and
/// every written parameter's.
__global__ void finish_step(int n, const int* __restrict__ flags, long long* __restrict__ steps,
                            StepState* __restrict__ state) {
  if (state->verdict) return;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    if (flags[i] == 0) ++steps[i];
  if (threadIdx.x == 0) ++state->step_count;
}

// ---- QK-Clip ------------------------------------------------------------------
//
// QK-Clip (optim/qk_clip.hpp) multiplies rows of the (out, in) matrices of
// the query and key projections by factors the host plans from the maxima
// it was given. The scalings of a call travel as kernel arguments, by
// value, kRowScalesPerLaunch to a launch (no device memory, no upload),
// one scaling per blockIdx.y. Not a step kernel: the factors change with
// every call, so it is launched eagerly and never captured.

/// One scaling as the kernel sees it: rows [row, row + rows) of the out x in
/// matrix at p, stored row-major (entry (r, c) at r * in + c) or
/// column-major (at r + c * out), multiplied by `factor` in float.
template <class P>
struct RowScale {
  P* p;
  std::int64_t out, in, row, rows;
  float factor;
  int column_major;
};

/// Scalings per scale_rows launch: 48 bytes each, about 1.5 KiB of kernel
/// arguments, within the 4 KiB every architecture accepts.
constexpr int kRowScalesPerLaunch = 32;

/// The scalings of one launch: s[0 .. count). No two may touch the same
/// entry (the plan's rows of a head never overlap another's).
template <class P>
struct RowScaleBatch {
  RowScale<P> s[kRowScalesPerLaunch];
  int count;
};
static_assert(sizeof(RowScaleBatch<float>) <= 4096,
              "scale_rows' arguments must fit the 4 KiB every architecture accepts");

/// The memory offset of entry e (0 <= e < rows * in) of scaling s. Entries
/// are numbered in memory order, so that neighbouring threads touch
/// neighbouring memory: row-major, the rows are one contiguous run;
/// column-major, the rows' run in column 0, then in column 1, ...
template <class P>
__host__ __device__ inline std::int64_t row_scale_offset(const RowScale<P>& s, std::int64_t e) {
  if (!s.column_major) return s.row * s.in + e;
  return s.row + e % s.rows + (e / s.rows) * s.out;
}

/// Thread t's entries e = t, t + threads, ... of scaling s: w <- w factor,
/// in float, rounded once to P (as the CPU optimizer's qk_clip computes).
template <class P>
__host__ __device__ inline void scale_rows_share(const RowScale<P>& s, std::int64_t t,
                                                 std::int64_t threads) {
  const std::int64_t n = s.rows * s.in;
  for (std::int64_t e = t; e < n; e += threads) {
    P& w = s.p[row_scale_offset(s, e)];
    w = from_float<P>(to_float(w) * s.factor);
  }
}

/// Scaling blockIdx.y of the batch, grid-stride over its entries
/// (gridDim.x blocks for the batch's largest scaling).
template <class P>
__global__ void scale_rows(RowScaleBatch<P> batch) {
  scale_rows_share(batch.s[blockIdx.y],
                   static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                   static_cast<std::int64_t>(gridDim.x) * blockDim.x);
}

/// Blocks for a grid-stride elementwise launch over n elements.
inline unsigned elementwise_blocks(std::int64_t n, int threads = 256) {
  std::int64_t b = (n + threads - 1) / threads;
  if (b > 4096) b = 4096;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b);
}

}  // namespace kernels
}  // namespace cuda
}  // namespace muon
