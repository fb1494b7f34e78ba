// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/optional_products.hpp
/// \brief The optional CPU product engine behind a build option:
/// MUON_USE_BLAS (CMake option MUON_USE_BLAS), CBLAS ?syrk / ?gemm, e.g.
/// OpenBLAS, for float and double. BLAS threads on its own (OpenBLAS
/// follows OPENBLAS_NUM_THREADS / OMP_NUM_THREADS). (The bf16 engine is the
/// library's own kernel, bf16_kernel.hpp, in every x86-64 build.)

#ifdef MUON_USE_BLAS
#include <cblas.h>
#endif
namespace muon {
namespace detail {

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

}  // namespace detail
}  // namespace muon
