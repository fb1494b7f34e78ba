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
///  - momentum_kernel: momentum (EMA or sum) + Nesterov + cast, one pass
///  - muon_update_kernel: p <- p (1 - lr wd) - lr adj O
///  - adamw_kernel: one AdamW step (decoupled weight decay, bias correction)
///
/// Every kernel reads its per-step values from device memory or from launch
/// arguments fixed for the shape, so a captured CUDA graph replays them.

#ifndef __CUDACC__
#error \
    "muon/backend/cuda/kernels.cuh holds CUDA kernels: include it (or muon/cuda.hpp) from a .cu file compiled by nvcc"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

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

/// dst(i, j) = src(j, i) if transpose else src(i, j), for a dst_rows x
/// dst_cols destination; matrix z = blockIdx.z of the batch. When `skip` is
/// non-null and skip[z] != 0, matrix z is not written. Returns false when the
/// block has nothing more to do (block-uniform).
template <class Src, class Dst>
__host__ __device__ inline bool copy_transpose_phase(int phase, const Src* src, std::int64_t src_ld,
                                                     std::int64_t src_stride, Dst* dst,
                                                     std::int64_t dst_ld, std::int64_t dst_stride,
                                                     std::int64_t dst_rows, std::int64_t dst_cols,
                                                     bool transpose, const int* skip, ThreadCoord c,
                                                     Tile& tile) {
  const std::int64_t z = c.bz;
  if (skip && skip[z]) return false;
  src += z * src_stride;
  dst += z * dst_stride;
  const std::int64_t i0 = c.bx * kTile, j0 = c.by * kTile;
  if (!transpose) {
    if (phase == 1) return false;
    const std::int64_t i = i0 + c.tx;
    if (i < dst_rows)
      for (int k = c.ty; k < kTile; k += kTileRows) {
        const std::int64_t j = j0 + k;
        if (j < dst_cols) dst[i + j * dst_ld] = from_float<Dst>(to_float(src[i + j * src_ld]));
      }
    return false;
  }
  if (phase == 0) {
    // dst tile (i0.., j0..) comes from the src tile (j0.., i0..): read it
    // coalesced along src's rows; tile[a][b] = dst(i0 + a, j0 + b).
    for (int k = c.ty; k < kTile; k += kTileRows) {
      const std::int64_t sr = j0 + c.tx, sc = i0 + k;  // src(sr, sc) = dst(sc, sr)
      if (sr < dst_cols && sc < dst_rows) tile[k][c.tx] = to_float(src[sr + sc * src_ld]);
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
                               std::int64_t dst_cols, bool transpose,
                               const int* __restrict__ skip) {
  __shared__ Tile tile;
  const ThreadCoord c{blockIdx.x, blockIdx.y, blockIdx.z, static_cast<int>(threadIdx.x),
                      static_cast<int>(threadIdx.y)};
  if (!copy_transpose_phase(0, src, src_ld, src_stride, dst, dst_ld, dst_stride, dst_rows, dst_cols,
                            transpose, skip, c, tile))
    return;
  __syncthreads();
  copy_transpose_phase(1, src, src_ld, src_stride, dst, dst_ld, dst_stride, dst_rows, dst_cols,
                       transpose, skip, c, tile);
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

/// One block per matrix z: norm = sqrt(sum of its P partials);
/// scale[z] = 1 / denominator(norm); nonfinite[z] = 1 when the norm is NaN/Inf
/// (then scale[z] = 0). Deterministic (fixed summation order).
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
    const double norm = sqrt(s[0]);
    const bool bad = !isfinite(norm);
    const double scaled = divisor * norm;
    const double den = eps_max ? (scaled > eps ? scaled : eps) : scaled + eps;
    scale[z] = bad ? 0.0f : static_cast<float>(1.0 / den);
    nonfinite[z] = bad ? 1 : 0;
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

// ---- optimizer elementwise kernels ----------------------------------------------------

/// Per-step values the optimizer kernels read from device memory, so that a
/// captured graph picks up learning-rate changes made between replays.
struct StepValues {
  float lr = 1e-3f;           ///< Muon lr (unadjusted)
  float weight_decay = 0.1f;  ///< Muon decoupled weight decay
  float momentum = 0.95f;     ///< Muon mu
  float adam_lr = 1e-3f;      ///< AdamW lr
  float adam_beta1 = 0.9f;
  float adam_beta2 = 0.999f;
  float adam_eps = 1e-8f;
  float adam_weight_decay = 0.01f;
  long long step = 0;  ///< completed steps (advance_step increments it first)
};

__global__ void advance_step(StepValues* v) {
  if (threadIdx.x == 0 && blockIdx.x == 0) v->step += 1;
}

/// Momentum + Nesterov + cast in one pass over n elements:
///   ema: m <- m + (1-mu)(g - m);  out = nesterov ? g + mu (m - g) : m
///   sum: m <- mu m + g;           out = nesterov ? g + mu m       : m
template <class G, class Out>
__global__ void momentum_kernel(const G* __restrict__ grad, float* __restrict__ buf,
                                Out* __restrict__ out, std::int64_t n,
                                const StepValues* __restrict__ v, bool ema, bool nesterov) {
  const float mu = v->momentum;
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_float(grad[k]);
    float m = buf[k];
    float o;
    if (ema) {
      m = m + (1.0f - mu) * (g - m);
      o = nesterov ? g + mu * (m - g) : m;
    } else {
      m = mu * m + g;
      o = nesterov ? g + mu * m : m;
    }
    buf[k] = m;
    out[k] = from_float<Out>(o);
  }
}

/// Muon update with decoupled weight decay (the unadjusted lr decays):
///   p <- p (1 - lr wd) - lr * lr_factor * o
/// Nothing is written when `skip` is non-null and *skip != 0 (the NS input
/// was not finite).
template <class P, class O>
__global__ void muon_update_kernel(P* __restrict__ p, const O* __restrict__ o, std::int64_t n,
                                   const StepValues* __restrict__ v, float lr_factor,
                                   const int* __restrict__ skip) {
  if (skip && *skip) return;
  const float lr = v->lr;
  const float decay = 1.0f - lr * v->weight_decay;
  const float step = lr * lr_factor;
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    p[k] = from_float<P>(to_float(p[k]) * decay - step * to_float(o[k]));
}

/// One AdamW step (torch.optim.AdamW semantics): p <- p (1 - lr wd), then
///   m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
///   p <- p - lr (m / bc1) / (sqrt(v / bc2) + eps),  bc_i = 1 - b_i^step
template <class P>
__global__ void adamw_kernel(P* __restrict__ p, const P* __restrict__ grad, float* __restrict__ m1,
                             float* __restrict__ m2, std::int64_t n,
                             const StepValues* __restrict__ v) {
  const float lr = v->adam_lr, b1 = v->adam_beta1, b2 = v->adam_beta2, eps = v->adam_eps;
  const float t = static_cast<float>(v->step > 0 ? v->step : 1);
  const float bc1 = 1.0f - powf(b1, t), bc2 = 1.0f - powf(b2, t);
  const float decay = 1.0f - lr * v->adam_weight_decay;
  const float rs_bc2 = rsqrtf(bc2);
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_float(grad[k]);
    const float a = b1 * m1[k] + (1.0f - b1) * g;
    const float b = b2 * m2[k] + (1.0f - b2) * g * g;
    m1[k] = a;
    m2[k] = b;
    const float denom = sqrtf(b) * rs_bc2 + eps;
    p[k] = from_float<P>(to_float(p[k]) * decay - (lr / bc1) * a / denom);
  }
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
