// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/optional_products.hpp
/// \brief Optional CPU product engines behind build options, and the runtime
/// CPU-feature check that gates the bf16 one.
///
///  - MUON_USE_BLAS (CMake option MUON_USE_BLAS): CBLAS ?syrk / ?gemm, e.g.
///    OpenBLAS, for float and double. BLAS threads on its own (OpenBLAS
///    follows OPENBLAS_NUM_THREADS / OMP_NUM_THREADS).
///  - MUON_USE_BF16 (CMake option MUON_USE_BF16): oneDNN matmul with bf16
///    inputs and fp32 accumulation/output, used only when the CPU reports
///    AVX512-BF16 at run time. The iterate X and the products' outputs stay in
///    fp32; only the factors of each product are rounded to bf16 (as PyTorch's
///    bf16 Newton–Schulz does, which also stores X in bf16).
/// Every engine object is set up when the workspace is built; its run()
/// allocates nothing on the library's side (oneDNN's own internals may use
/// their scratch allocator; the scratchpad is owned by the engine object).

#include <cstdint>
#include <string>

#include "../../error.hpp"

#ifdef MUON_USE_BLAS
#include <cblas.h>
#endif
#ifdef MUON_USE_BF16
#include <immintrin.h>
#include <oneapi/dnnl/dnnl.h>

#include <memory>
#include <vector>
#endif

namespace muon {
namespace detail {

/// True when the CPU executing this reports AVX512-BF16 (vdpbf16ps).
inline bool cpu_has_avx512_bf16() {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0;
  }();
  return has;
#else
  return false;
#endif
}

#ifdef MUON_USE_BLAS
// lower(C) = alpha M M^T + beta lower(C); M (size x depth) column-major.
inline void blas_syrk_lower(int size, int depth, float alpha, const float* M, int ldm, float beta,
                            float* C, int ldc) {
  cblas_ssyrk(CblasColMajor, CblasLower, CblasNoTrans, size, depth, alpha, M, ldm, beta, C, ldc);
}
inline void blas_syrk_lower(int size, int depth, double alpha, const double* M, int ldm,
                            double beta, double* C, int ldc) {
  cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, size, depth, alpha, M, ldm, beta, C, ldc);
}
// C = alpha L R + beta C, all column-major, no transposes.
inline void blas_gemm(int rows, int cols, int depth, float alpha, const float* L, int ldl,
                      const float* R, int ldr, float beta, float* C, int ldc) {
  cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, rows, cols, depth, alpha, L, ldl, R, ldr,
              beta, C, ldc);
}
inline void blas_gemm(int rows, int cols, int depth, double alpha, const double* L, int ldl,
                      const double* R, int ldr, double beta, double* C, int ldc) {
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, rows, cols, depth, alpha, L, ldl, R, ldr,
              beta, C, ldc);
}
#endif

#ifdef MUON_USE_BF16
inline void dnnl_check(dnnl_status_t s, const char* what) {
  // Called around every matmul: the message is built only on failure.
  if (s == dnnl_success) return;
  fail("oneDNN",
       std::string(what) + " failed (status " + std::to_string(static_cast<int>(s)) + ")");
}

/// One oneDNN engine + stream, shared by a workspace's bf16 products.
class DnnlContext {
 public:
  DnnlContext() {
    dnnl_check(dnnl_engine_create(&engine_, dnnl_cpu, 0), "engine_create");
    dnnl_check(dnnl_stream_create(&stream_, engine_, dnnl_stream_default_flags), "stream_create");
  }
  DnnlContext(const DnnlContext&) = delete;
  DnnlContext& operator=(const DnnlContext&) = delete;
  ~DnnlContext() {
    dnnl_stream_destroy(stream_);
    dnnl_engine_destroy(engine_);
  }
  dnnl_engine_t engine() const { return engine_; }
  dnnl_stream_t stream() const { return stream_; }

 private:
  dnnl_engine_t engine_ = nullptr;
  dnnl_stream_t stream_ = nullptr;
};

/// A rows x cols oneDNN memory descriptor over a dense buffer: row-major
/// ("ab") or, `transposed`, stored column by column ("ba", element (i, j) at
/// i + j*rows). oneDNN's brgemm matmul takes both at full speed; a leading
/// dimension larger than the matrix (a sub-block of a bigger buffer) makes it
/// fall back to a much slower gemm, so every view here is dense.
inline dnnl_memory_desc_t dense_desc(int64_t rows, int64_t cols, dnnl_data_type_t type,
                                     bool transposed = false) {
  dnnl_memory_desc_t md;
  const dnnl_dims_t dims = {rows, cols};
  const dnnl_dims_t row_major = {cols, 1}, column_major = {1, rows};
  dnnl_check(
      dnnl_memory_desc_init_by_strides(&md, 2, dims, type, transposed ? column_major : row_major),
      "memory_desc");
  return md;
}

/// oneDNN's view, row-major throughout: D (M x N, fp32, dense row-major)
/// = S (M x K, bf16) * W (K x N, bf16), or D += S W with `accumulate`. S and W
/// are dense, each row-major or (`*_transposed`) column-major. The primitive
/// and its scratchpad are made once; run() only sets the data pointers.
class Bf16Matmul {
 public:
  Bf16Matmul(DnnlContext& ctx, int64_t M, int64_t N, int64_t K, bool src_transposed,
             bool weights_transposed, bool accumulate)
      : ctx_(ctx) {
    const dnnl_memory_desc_t a = dense_desc(M, K, dnnl_bf16, src_transposed);
    const dnnl_memory_desc_t b = dense_desc(K, N, dnnl_bf16, weights_transposed);
    const dnnl_memory_desc_t c = dense_desc(M, N, dnnl_f32);
    dnnl_matmul_desc_t desc;
    dnnl_check(dnnl_matmul_desc_init(&desc, &a, &b, nullptr, &c), "matmul_desc_init");
    dnnl_primitive_attr_t attr;
    dnnl_check(dnnl_primitive_attr_create(&attr), "attr_create");
    dnnl_check(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user),
               "scratchpad_mode");
    dnnl_post_ops_t ops = nullptr;
    if (accumulate) {
      dnnl_check(dnnl_post_ops_create(&ops), "post_ops_create");
      dnnl_check(dnnl_post_ops_append_sum(ops, 1.0f), "append_sum");
      dnnl_check(dnnl_primitive_attr_set_post_ops(attr, ops), "set_post_ops");
    }
    dnnl_primitive_desc_t pd;
    const dnnl_status_t s = dnnl_primitive_desc_create(&pd, &desc, attr, ctx.engine(), nullptr);
    if (ops) dnnl_post_ops_destroy(ops);
    dnnl_primitive_attr_destroy(attr);
    dnnl_check(s, "matmul primitive_desc_create");
    // Copy the scratchpad descriptor: the queried pointer dies with pd.
    const dnnl_memory_desc_t sp = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    dnnl_check(dnnl_primitive_create(&prim_, pd), "primitive_create");
    dnnl_primitive_desc_destroy(pd);
    dnnl_check(dnnl_memory_create(&a_, &a, ctx.engine(), DNNL_MEMORY_NONE), "memory_create");
    dnnl_check(dnnl_memory_create(&b_, &b, ctx.engine(), DNNL_MEMORY_NONE), "memory_create");
    dnnl_check(dnnl_memory_create(&c_, &c, ctx.engine(), DNNL_MEMORY_NONE), "memory_create");
    dnnl_check(dnnl_memory_create(&sp_, &sp, ctx.engine(), DNNL_MEMORY_ALLOCATE), "scratchpad");
  }
  Bf16Matmul(const Bf16Matmul&) = delete;
  Bf16Matmul& operator=(const Bf16Matmul&) = delete;
  ~Bf16Matmul() {
    dnnl_memory_destroy(sp_);
    dnnl_memory_destroy(c_);
    dnnl_memory_destroy(b_);
    dnnl_memory_destroy(a_);
    dnnl_primitive_destroy(prim_);
  }

  void run(const std::uint16_t* S, const std::uint16_t* W, float* D) {
    dnnl_memory_set_data_handle(a_, const_cast<std::uint16_t*>(S));
    dnnl_memory_set_data_handle(b_, const_cast<std::uint16_t*>(W));
    dnnl_memory_set_data_handle(c_, D);
    const dnnl_exec_arg_t args[] = {
        {DNNL_ARG_SRC, a_}, {DNNL_ARG_WEIGHTS, b_}, {DNNL_ARG_DST, c_}, {DNNL_ARG_SCRATCHPAD, sp_}};
    dnnl_check(dnnl_primitive_execute(prim_, ctx_.stream(), 4, args), "matmul execute");
    dnnl_check(dnnl_stream_wait(ctx_.stream()), "stream_wait");
  }

 private:
  DnnlContext& ctx_;
  dnnl_primitive_t prim_ = nullptr;
  dnnl_memory_t a_ = nullptr, b_ = nullptr, c_ = nullptr, sp_ = nullptr;
};

/// One float to bf16 bits, rounded to nearest even; NaN stays a (quiet) NaN.
inline std::uint16_t bf16_bits(float v) {
  std::uint32_t u;
  __builtin_memcpy(&u, &v, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0)
    return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

/// dst[i] = bf16(scale * src[i]) for i in [0, n), 16 at a time with
/// vcvtneps2bf16 (round to nearest even, like bf16_bits, except that the
/// instruction flushes float denormals, |x| < 1.2e-38, to zero: irrelevant for
/// a normalized Newton–Schulz iterate). Callers run it only where the CPU has
/// AVX512-BF16 (the bf16 engine checks at construction).
__attribute__((target("avx512f,avx512bf16"))) inline void to_bf16(const float* src,
                                                                  std::uint16_t* dst,
                                                                  std::int64_t n,
                                                                  float scale = 1.0f) {
  const __m512 s = _mm512_set1_ps(scale);
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_mul_ps(s, _mm512_loadu_ps(src + i)));
    __builtin_memcpy(dst + i, &v, sizeof v);
  }
  for (; i < n; ++i) dst[i] = bf16_bits(scale * src[i]);
}

/// Rows [r0, r1) of dst (bf16 bits, row-major rows x cols) = src (float,
/// column-major rows x cols): conversion and transpose in one pass, by 16 x 16
/// tiles (each column piece converted with one instruction into a small
/// buffer that is then written out row by row). Row ranges let threads split
/// the work.
__attribute__((target("avx512f,avx512bf16"))) inline void to_bf16_transposed(
    const float* src, std::uint16_t* dst, std::int64_t rows, std::int64_t cols, std::int64_t r0,
    std::int64_t r1) {
  constexpr std::int64_t kTile = 16;
  alignas(64) std::uint16_t tile[kTile][kTile];  // tile[k][i]: column k, row i of the tile
  for (std::int64_t i0 = r0; i0 < r1; i0 += kTile) {
    const std::int64_t ni = i0 + kTile <= r1 ? kTile : r1 - i0;
    for (std::int64_t k0 = 0; k0 < cols; k0 += kTile) {
      const std::int64_t nk = k0 + kTile <= cols ? kTile : cols - k0;
      for (std::int64_t k = 0; k < nk; ++k) {
        const float* column = src + i0 + (k0 + k) * rows;
        if (ni == kTile) {
          const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(column));
          __builtin_memcpy(tile[k], &v, sizeof v);
        } else {
          for (std::int64_t i = 0; i < ni; ++i) tile[k][i] = bf16_bits(column[i]);
        }
      }
      for (std::int64_t i = 0; i < ni; ++i) {
        std::uint16_t* out = dst + (i0 + i) * cols + k0;
        for (std::int64_t k = 0; k < nk; ++k) out[k] = tile[k][i];
      }
    }
  }
}

/// C = init_scale * init + alpha * M M^T, all of the size x size column-major
/// C written (exactly symmetric), from M given as dense row-major bf16
/// (size x depth; for a symmetric M, its own storage). The lower triangle is
/// cut into blocks of about kBlock rows and each block pair (I >= J) is one
/// matmul, so only (k + 1) / (2k) of the full product's flops are spent
/// (k blocks; 0.625 for k = 4): oneDNN has no bf16 syrk. Blocks stay dense
/// (see dense_desc): each result goes to a scratch tile and is scattered into
/// both triangles of C, with the scaling and the `init` term fused in.
class Bf16Syrk {
 public:
  static constexpr int64_t kBlock = 256;
  static constexpr int64_t kMaxBlocks = 4;

  Bf16Syrk(DnnlContext& ctx, int64_t size, int64_t depth) : size_(size), depth_(depth) {
    int64_t k = (size + kBlock / 2) / kBlock;
    k = k < 1 ? 1 : (k > kMaxBlocks ? kMaxBlocks : k);
    // Blocks of b rows (a multiple of 16 for the kernels), the last one r.
    block_ = k == 1 ? size : ((size + k - 1) / k + 15) / 16 * 16;
    blocks_ = (size + block_ - 1) / block_;
    last_ = size - (blocks_ - 1) * block_;
    // Shapes of the products: b x b, and with the last block r x b, r x r.
    full_ = std::make_unique<Bf16Matmul>(ctx, block_, block_, depth, false, true, false);
    if (blocks_ > 1) {
      edge_ = std::make_unique<Bf16Matmul>(ctx, last_, block_, depth, false, true, false);
      corner_ = std::make_unique<Bf16Matmul>(ctx, last_, last_, depth, false, true, false);
    }
    tile_.resize(static_cast<std::size_t>(block_ * block_));
  }

  /// Blocks the lower triangle is cut into (1: one full product).
  int64_t blocks() const { return blocks_; }

  void run(const std::uint16_t* M, float* C, float alpha, const float* init, float init_scale) {
    for (int64_t I = 0; I < blocks_; ++I) {
      const int64_t i0 = I * block_, bi = I + 1 < blocks_ ? block_ : last_;
      for (int64_t J = 0; J <= I; ++J) {
        const int64_t j0 = J * block_, bj = J + 1 < blocks_ ? block_ : last_;
        Bf16Matmul& mm = bi == block_ ? *full_ : (bj == block_ ? *edge_ : *corner_);
        // D = M[i0:i0+bi, :] * M[j0:j0+bj, :]^T; the second factor is the
        // row block read column-major (dense, transposed view).
        mm.run(M + i0 * depth_, M + j0 * depth_, tile_.data());
        scatter(C, alpha, init, init_scale, i0, bi, j0, bj, I == J);
      }
    }
  }

 private:
  // C(i0+i, j0+j) and C(j0+j, i0+i) <- init_scale * init(.) + alpha * D(i, j);
  // on a diagonal block only i >= j is read, so C is exactly symmetric.
  void scatter(float* C, float alpha, const float* init, float init_scale, int64_t i0, int64_t bi,
               int64_t j0, int64_t bj, bool diagonal) const {
    const float* D = tile_.data();
    const int64_t n = size_;
    auto value = [&](int64_t i, int64_t j) {
      const float v = alpha * D[i * bj + j];
      return init ? v + init_scale * init[(i0 + i) + (j0 + j) * n] : v;
    };
    // Upper block C(j0.., i0+i): column i0+i, rows j0..j0+bj, contiguous.
    for (int64_t i = 0; i < bi; ++i) {
      float* column = C + j0 + (i0 + i) * n;
      const int64_t jend = diagonal ? i + 1 : bj;
      for (int64_t j = 0; j < jend; ++j) column[j] = value(i, j);
    }
    // Lower block C(i0.., j0+j): column j0+j, rows i0..i0+bi.
    for (int64_t j = 0; j < bj; ++j) {
      float* column = C + i0 + (j0 + j) * n;
      for (int64_t i = diagonal ? j : 0; i < bi; ++i) column[i] = value(i, j);
    }
  }

  int64_t size_, depth_, block_ = 0, blocks_ = 0, last_ = 0;
  std::unique_ptr<Bf16Matmul> full_, edge_, corner_;
  std::vector<float> tile_;
};
#endif

}  // namespace detail
}  // namespace muon
