// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/square_roots.hpp
/// \brief x[i] <- sqrt(x[i]) over a run of floats or doubles with the CPU's
/// vector square root.
///
/// Compilers do not vectorize a loop that calls std::sqrt under
/// -fmath-errno (their default: a negative argument must set errno), and
/// Eigen's packet square root is an approximation under EIGEN_FAST_MATH (its
/// default). The vector instructions used here (SSE2, AVX, AVX-512) are IEEE
/// 754's correctly rounded square root, as std::sqrt is: the same bits, so a
/// loop may take the square roots of a run of elements here and still
/// produce exactly what its per-element rule would.

#include <cmath>
#include <cstddef>

#if defined(__SSE2__) || defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace muon {
namespace detail {

inline void square_roots(float* x, std::ptrdiff_t n) {
  std::ptrdiff_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_sqrt_ps(_mm512_loadu_ps(x + i)));
#elif defined(__AVX__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_sqrt_ps(_mm256_loadu_ps(x + i)));
#elif defined(__SSE2__)
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(x + i, _mm_sqrt_ps(_mm_loadu_ps(x + i)));
#endif
  for (; i < n; ++i) x[i] = std::sqrt(x[i]);
}

inline void square_roots(double* x, std::ptrdiff_t n) {
  std::ptrdiff_t i = 0;
#if defined(__AVX512F__)
  for (; i + 8 <= n; i += 8) _mm512_storeu_pd(x + i, _mm512_sqrt_pd(_mm512_loadu_pd(x + i)));
#elif defined(__AVX__)
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(x + i, _mm256_sqrt_pd(_mm256_loadu_pd(x + i)));
#elif defined(__SSE2__)
  for (; i + 2 <= n; i += 2) _mm_storeu_pd(x + i, _mm_sqrt_pd(_mm_loadu_pd(x + i)));
#endif
  for (; i < n; ++i) x[i] = std::sqrt(x[i]);
}

}  // namespace detail
}  // namespace muon
