// SPDX-License-Identifier: MIT
#pragma once
/// \file detail/optional_products.hpp
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

#include "../error.hpp"

#ifdef MUON_USE_BLAS
#include <cblas.h>
#endif
#ifdef MUON_USE_BF16
#include <oneapi/dnnl/dnnl.h>
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
  require(s == dnnl_success, "oneDNN",
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

/// A dense row-major rows x cols matrix as a oneDNN memory descriptor ("ab":
/// the plain layout every matmul implementation takes).
inline dnnl_memory_desc_t rowmajor_desc(int64_t rows, int64_t cols, dnnl_data_type_t type) {
  dnnl_memory_desc_t md;
  const dnnl_dims_t dims = {rows, cols};
  const dnnl_dims_t strides = {cols, 1};
  dnnl_check(dnnl_memory_desc_init_by_strides(&md, 2, dims, type, strides), "memory_desc");
  return md;
}

/// A column-major matrix's storage is its transpose in row-major order, so a
/// column-major C = L R (C rows x cols, L rows x depth, R depth x cols) is the
/// row-major C^T = R^T L^T: oneDNN's src = R's storage (cols x depth),
/// weights = L's storage (depth x rows), dst = C's storage (cols x rows), all
/// plain. run(L, R, C) takes bf16 L and R and writes (or, `accumulate`, adds
/// to) fp32 C. For the Gram X X^T (rows = cols = m, depth = n) pass as R the
/// row-major copy of X (to_bf16_transposed) and as L the plain copy.
class Bf16Matmul {
 public:
  Bf16Matmul(DnnlContext& ctx, int64_t rows, int64_t cols, int64_t depth, bool accumulate)
      : ctx_(ctx) {
    const dnnl_memory_desc_t a = rowmajor_desc(cols, depth, dnnl_bf16);  // src  = R^T
    const dnnl_memory_desc_t b = rowmajor_desc(depth, rows, dnnl_bf16);  // weights = L^T
    const dnnl_memory_desc_t c = rowmajor_desc(cols, rows, dnnl_f32);    // dst  = C^T
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

  void run(const std::uint16_t* L, const std::uint16_t* R, float* C) {
    dnnl_memory_set_data_handle(a_, const_cast<std::uint16_t*>(R));
    dnnl_memory_set_data_handle(b_, const_cast<std::uint16_t*>(L));
    dnnl_memory_set_data_handle(c_, C);
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

/// dst (bf16 bits) = round-to-nearest-even(scale * src), n floats.
inline void to_bf16(const float* src, std::uint16_t* dst, std::int64_t n, float scale = 1.0f) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = scale * src[i];
    std::uint32_t u;
    __builtin_memcpy(&u, &v, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) {
      dst[i] = static_cast<std::uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      dst[i] = static_cast<std::uint16_t>(u >> 16);
    }
  }
}

/// dst (bf16 bits, row-major rows x cols) = src (float, column-major rows x
/// cols): the conversion and a transpose in one blocked pass.
inline void to_bf16_transposed(const float* src, std::uint16_t* dst, std::int64_t rows,
                               std::int64_t cols) {
  constexpr std::int64_t kTile = 32;
  for (std::int64_t i0 = 0; i0 < rows; i0 += kTile) {
    const std::int64_t i1 = i0 + kTile < rows ? i0 + kTile : rows;
    for (std::int64_t k0 = 0; k0 < cols; k0 += kTile) {
      const std::int64_t k1 = k0 + kTile < cols ? k0 + kTile : cols;
      for (std::int64_t i = i0; i < i1; ++i)
        for (std::int64_t k = k0; k < k1; ++k) to_bf16(src + i + k * rows, dst + i * cols + k, 1);
    }
  }
}
#endif

}  // namespace detail
}  // namespace muon
