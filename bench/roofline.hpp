// SPDX-License-Identifier: MIT
#pragma once
/// \file roofline.hpp
/// \brief This machine's limits, measured in the same run as the step they
/// judge (bench_step): the memory bandwidth a STREAM-like triad reaches and
/// the peak rate of the bf16 dot-product instruction, each at t threads.
/// (The fp32 product limit is bench_step's `sgemm`: Eigen's GEMM rate.)
///
/// triad:    a[i] = b[i] + s c[i] over three float arrays far larger than
///           the caches, each thread a contiguous third of the range (the
///           arrays are first touched by the same partition, so on a NUMA
///           machine each thread's pages are local). Counted as STREAM
///           counts it: 12 bytes per element (read b, c; write a), no
///           write-allocate traffic. A pass that moves N bytes per element
///           at the triad's rate is "at memory speed".
/// bf16 dot: vdpbf16ps (AVX512-BF16) on 16 independent accumulators held in
///           registers, operands in registers too: 32 multiply-adds per
///           instruction per thread, no memory traffic at all. The machine's
///           bf16 product peak; the library's bf16 kernel is judged
///           against it.

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cstddef>
#include <cstdint>
#include <vector>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#define MUON_BENCH_HAVE_BF16_DOT 1
#endif

namespace roofline {

/// Three arrays of n floats, first touched by the partition the triad uses.
struct TriadArrays {
  std::vector<float> a, b, c;
  TriadArrays(std::size_t n, int threads) : a(n), b(n), c(n) {
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (std::ptrdiff_t i = 0; i < static_cast<std::ptrdiff_t>(n); ++i) {
      a[std::size_t(i)] = 0.0f;
      b[std::size_t(i)] = 1.0f;
      c[std::size_t(i)] = 2.0f;
    }
  }
  /// Bytes one triad pass moves (STREAM's count).
  double bytes() const { return 12.0 * static_cast<double>(a.size()); }
};

/// One pass a = b + s c on `threads` threads (static partition).
inline void triad(TriadArrays& x, float s, int threads) {
  (void)threads;
  float* a = x.a.data();
  const float* b = x.b.data();
  const float* c = x.c.data();
  const std::ptrdiff_t n = static_cast<std::ptrdiff_t>(x.a.size());
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
  for (std::ptrdiff_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

/// True when this CPU runs vdpbf16ps.
inline bool has_bf16_dot() {
#ifdef MUON_BENCH_HAVE_BF16_DOT
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") != 0;
#else
  return false;
#endif
}

#ifdef MUON_BENCH_HAVE_BF16_DOT
/// `iterations` rounds of 16 independent vdpbf16ps on one thread; returns a
/// value that depends on every accumulator (so nothing is optimized away).
__attribute__((target("avx512f,avx512bf16"))) inline float bf16_dot_thread(std::int64_t iterations,
                                                                           float seed) {
  const __m512 one = _mm512_set1_ps(1.0f + seed * 1e-7f);
  const __m512bh x = _mm512_cvtne2ps_pbh(one, one);
  const __m512bh y = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
  // 16 independent chains, enough to cover the instruction's latency with
  // two issue ports; named registers, not an array (GCC 12 kept an array of
  // accumulators on the stack: a store and a load around every instruction,
  // which halved the rate).
  // Different starting values: chains the compiler cannot merge.
  __m512 a0 = _mm512_set1_ps(0.0f), a1 = _mm512_set1_ps(1.0f), a2 = _mm512_set1_ps(2.0f);
  __m512 a3 = _mm512_set1_ps(3.0f), a4 = _mm512_set1_ps(4.0f), a5 = _mm512_set1_ps(5.0f);
  __m512 a6 = _mm512_set1_ps(6.0f), a7 = _mm512_set1_ps(7.0f), a8 = _mm512_set1_ps(8.0f);
  __m512 a9 = _mm512_set1_ps(9.0f), a10 = _mm512_set1_ps(10.0f), a11 = _mm512_set1_ps(11.0f);
  __m512 a12 = _mm512_set1_ps(12.0f), a13 = _mm512_set1_ps(13.0f), a14 = _mm512_set1_ps(14.0f);
  __m512 a15 = _mm512_set1_ps(15.0f);
  for (std::int64_t it = 0; it < iterations; ++it) {
    a0 = _mm512_dpbf16_ps(a0, x, y);
    a1 = _mm512_dpbf16_ps(a1, x, y);
    a2 = _mm512_dpbf16_ps(a2, x, y);
    a3 = _mm512_dpbf16_ps(a3, x, y);
    a4 = _mm512_dpbf16_ps(a4, x, y);
    a5 = _mm512_dpbf16_ps(a5, x, y);
    a6 = _mm512_dpbf16_ps(a6, x, y);
    a7 = _mm512_dpbf16_ps(a7, x, y);
    a8 = _mm512_dpbf16_ps(a8, x, y);
    a9 = _mm512_dpbf16_ps(a9, x, y);
    a10 = _mm512_dpbf16_ps(a10, x, y);
    a11 = _mm512_dpbf16_ps(a11, x, y);
    a12 = _mm512_dpbf16_ps(a12, x, y);
    a13 = _mm512_dpbf16_ps(a13, x, y);
    a14 = _mm512_dpbf16_ps(a14, x, y);
    a15 = _mm512_dpbf16_ps(a15, x, y);
  }
  const __m512 acc[16] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15};
  __m512 sum = acc[0];
  for (int k = 1; k < 16; ++k) sum = _mm512_add_ps(sum, acc[k]);
  // Summed through memory: _mm512_reduce_add_ps trips GCC 12's
  // -Wuninitialized in its own headers (GCC bug 105593).
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sum);
  float total = 0.0f;
  for (float v : lanes) total += v;
  return total;
}
#endif

/// Flops of bf16_dot_thread: 16 instructions x 16 lanes x 2 products x 2
/// (multiply and add) per iteration.
constexpr double bf16_dot_flops(std::int64_t iterations) {
  return 16.0 * 16.0 * 2.0 * 2.0 * static_cast<double>(iterations);
}

/// bf16_dot_thread on each of `threads` threads at once; returns the sum of
/// their results.
inline float bf16_dot(std::int64_t iterations, int threads) {
  float total = 0.0f;
  (void)threads;
#ifdef MUON_BENCH_HAVE_BF16_DOT
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : total)
  total += bf16_dot_thread(iterations, static_cast<float>(omp_get_thread_num()));
#else
  total = bf16_dot_thread(iterations, 0.0f);  // one thread without OpenMP
#endif
#else
  (void)iterations;
#endif
  return total;
}

}  // namespace roofline
