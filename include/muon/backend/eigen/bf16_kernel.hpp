// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/bf16_kernel.hpp
/// \brief The bf16 products of Newton–Schulz on the library's own thread
/// pool: factors rounded to bf16, products accumulated in fp32 by the
/// AVX512-BF16 instruction vdpbf16ps.
///
/// vdpbf16ps multiplies 16 pairs of bf16 values and adds each pair's two
/// products to one fp32 lane: acc[l] += a[2l] b[2l] + a[2l+1] b[2l+1]. So
/// every operand is packed as 32-bit words holding two consecutive values
/// along the summed (depth) dimension, a "pair", and in strips of 32 rows:
/// strip s holds, for each pair index p, the 32 words of rows 32s .. 32s+31
/// (zero past the last row, and a zero high half when the depth is odd).
///
/// The micro-kernel computes an 8 x 32 tile of R = A B^T for two packed
/// operands A (rows i) and B (rows j) over the whole depth (the apply step:
/// over depth blocks, block_32x32, with the same bits): 16 accumulator
/// registers (8 rows x two 16-lane halves), per pair two loads of B's strip
/// and eight broadcasts of A's words. Each of the three Newton–Schulz
/// products is one such R:
///   X X^T  (Gram)      A = B = X's rows, depth n;
///   A A^T  (A^2)       A = B = the symmetric m x m matrix, depth m;
///   L X    (apply)     computed as (L X)^T = X^T L^T: A = X's columns,
///                      B = L's rows, depth m; written to the column-major
///                      result as row-major (L X)^T, i.e. contiguously.
/// Symmetric results compute the tiles on and below the diagonal only and
/// mirror, in the same parallel region (rows are dealt to the threads by
/// equal triangle area). Packing converts fp32 to bf16 with vcvtneps2bf16
/// (round to nearest even; float denormals, irrelevant for a normalized
/// iterate, flush to zero).
///
/// Everything here is compiled for AVX512-BF16 through target attributes (no
/// -march flag needed) and must be called only where cpu_has_avx512_bf16().

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#define MUON_HAVE_BF16_KERNEL 1
#endif

#include "thread_pool.hpp"

namespace muon {
namespace detail {

/// True when the CPU executing this reports AVX512-BF16 (vdpbf16ps).
inline bool cpu_has_avx512_bf16() {
#ifdef MUON_HAVE_BF16_KERNEL
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0 && __builtin_cpu_supports("avx512bw") != 0 &&
           __builtin_cpu_supports("avx512vl") != 0;
  }();
  return has;
#else
  return false;
#endif
}

#ifdef MUON_HAVE_BF16_KERNEL

#define MUON_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace bf16 {

using Index = std::int64_t;

constexpr Index kStrip = 32;             // rows per packed strip, and columns of a tile
constexpr Index kRows = 8;               // rows of a tile
constexpr Index kApplyDepthBlock = 128;  // pairs per depth block of the apply step (block_32x32)

/// The bits of `from` as a `To` of the same size (vector types: no code).
template <class To, class From>
MUON_BF16_TARGET inline To bits_as(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To to;
  std::memcpy(&to, &from, sizeof to);
  return to;
}

inline Index pairs_of(Index depth) { return (depth + 1) / 2; }
inline Index strips_of(Index rows) { return (rows + kStrip - 1) / kStrip; }
/// Words a packed operand of `rows` x `depth` takes.
inline Index packed_words(Index rows, Index depth) {
  return strips_of(rows) * pairs_of(depth) * kStrip;
}

/// The first n of 16 lanes.
inline __mmask16 first_lanes(Index n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

/// Two fp32 vectors (16 values each: the even and the odd depth index of 16
/// rows) as 16 words of bf16 pairs, low half even.
MUON_BF16_TARGET inline __m512i pair_words(__m512 even, __m512 odd) {
  // (The zero-masking forms: GCC 12's plain ones read an "undefined"
  // register that -Wmaybe-uninitialized reports.)
  const __m512i lo =
      _mm512_maskz_cvtepu16_epi32(0xffff, bits_as<__m256i>(_mm512_cvtneps_pbh(even)));
  const __m512i hi = _mm512_maskz_cvtepu16_epi32(0xffff, bits_as<__m256i>(_mm512_cvtneps_pbh(odd)));
  return _mm512_or_si512(lo, _mm512_maskz_slli_epi32(0xffff, hi, 16));
}

/// Packs the rows [s0 * 32, s1 * 32) (strips s0..s1-1) of a rows x depth
/// column-major matrix M (leading dimension ld): word (i, p) = (M(i, 2p),
/// M(i, 2p+1)). Pair by pair, so that M is read column after column
/// (contiguous), each strip's 32 words of a pair written as two full lines.
MUON_BF16_TARGET inline void pack_rows(const float* M, Index ld, Index rows, Index depth,
                                       std::uint32_t* out, Index s0, Index s1) {
  const Index pairs = pairs_of(depth);
  for (Index p = 0; p < pairs; ++p) {
    const Index k = 2 * p;
    const float* even = M + k * ld;
    const float* odd = k + 1 < depth ? M + (k + 1) * ld : nullptr;
    for (Index s = s0; s < s1; ++s)
      for (Index half = 0; half < 2; ++half) {
        const Index i0 = s * kStrip + 16 * half;
        const __mmask16 mask = first_lanes(rows - i0);
        const __m512 e = _mm512_maskz_loadu_ps(mask, even + i0);
        const __m512 o = odd ? _mm512_maskz_loadu_ps(mask, odd + i0) : _mm512_setzero_ps();
        _mm512_storeu_si512(out + (s * pairs + p) * kStrip + 16 * half, pair_words(e, o));
      }
  }
}

/// Packs the columns [s0 * 32, s1 * 32) of a depth x cols column-major
/// matrix M (leading dimension ld) as the rows of M^T: word (j, p) =
/// (M(2p, j), M(2p+1, j)), a contiguous pair of column j. By blocks of 16
/// columns x 8 pairs: each column's 16 values become 8 words, and an 8 x 8
/// word transpose (twice) turns them into 16 words per pair.
MUON_BF16_TARGET inline void pack_columns(const float* M, Index ld, Index depth, Index cols,
                                          std::uint32_t* out, Index s0, Index s1) {
  const Index pairs = pairs_of(depth);
  alignas(64) std::uint32_t block[16][8];  // [column][pair]
  for (Index s = s0; s < s1; ++s) {
    std::uint32_t* strip = out + s * pairs * kStrip;
    for (Index half = 0; half < 2; ++half) {
      const Index j0 = s * kStrip + 16 * half;
      const Index nj = std::max<Index>(0, std::min<Index>(16, cols - j0));
      for (Index p0 = 0; p0 < pairs; p0 += 8) {
        const Index np = std::min<Index>(8, pairs - p0);
        const Index k0 = 2 * p0, nk = std::min<Index>(16, depth - k0);
        const __mmask16 kmask = static_cast<__mmask16>((1u << nk) - 1u);
        for (Index j = 0; j < 16; ++j) {
          if (j >= nj) {
            _mm256_store_si256(reinterpret_cast<__m256i*>(block[j]), _mm256_setzero_si256());
            continue;
          }
          const __m512 v = _mm512_maskz_loadu_ps(kmask, M + k0 + (j0 + j) * ld);
          // 16 bf16 values in depth order = 8 words (pairs) of this column.
          const __m256bh b = _mm512_cvtneps_pbh(v);
          std::memcpy(block[j], &b, sizeof b);
        }
        // Transpose [16 columns][8 pairs] into [8 pairs][16 columns].
        for (Index g = 0; g < 2; ++g) {
          __m256i r[8];
          for (int k = 0; k < 8; ++k)
            r[k] = _mm256_load_si256(reinterpret_cast<const __m256i*>(block[8 * g + k]));
          __m256i t[8];
          for (int k = 0; k < 8; k += 2) {
            t[k] = _mm256_unpacklo_epi32(r[k], r[k + 1]);
            t[k + 1] = _mm256_unpackhi_epi32(r[k], r[k + 1]);
          }
          __m256i u[8];
          for (int k = 0; k < 8; k += 4) {
            u[k] = _mm256_unpacklo_epi64(t[k], t[k + 2]);
            u[k + 1] = _mm256_unpackhi_epi64(t[k], t[k + 2]);
            u[k + 2] = _mm256_unpacklo_epi64(t[k + 1], t[k + 3]);
            u[k + 3] = _mm256_unpackhi_epi64(t[k + 1], t[k + 3]);
          }
          // u[q] (q < 4): pair q of columns 0-3 in its low 128-bit lane, pair
          // q + 4 in its high lane; u[q + 4] the same for columns 4-7.
          for (int q = 0; q < 4; ++q) {
            const __m256i lowp = _mm256_permute2x128_si256(u[q], u[q + 4], 0x20);   // pair q
            const __m256i highp = _mm256_permute2x128_si256(u[q], u[q + 4], 0x31);  // pair q + 4
            if (q < np)
              _mm256_storeu_si256(
                  reinterpret_cast<__m256i*>(strip + (p0 + q) * kStrip + 16 * half + 8 * g), lowp);
            if (q + 4 < np)
              _mm256_storeu_si256(
                  reinterpret_cast<__m256i*>(strip + (p0 + q + 4) * kStrip + 16 * half + 8 * g),
                  highp);
          }
        }
      }
    }
  }
}

/// tile (8 x 32, row-major, 64-byte aligned) = A_rows B_rows^T over `pairs`
/// pairs, or, when `accumulate`, tile += that, continuing a sum over earlier
/// pairs (an fp32 accumulator stored and loaded back is exact, so a sum cut
/// into depth blocks has the bits of one pass over the whole depth). `a`
/// points at the first of the tile's 8 rows inside A's strip (stride 32
/// words per pair), `b` at B's strip.
MUON_BF16_TARGET inline void tile_8x32(const std::uint32_t* a, const std::uint32_t* b, Index pairs,
                                       float* tile, bool accumulate = false) {
  __m512 c[kRows][2];
  for (int r = 0; r < kRows; ++r) {
    c[r][0] = accumulate ? _mm512_load_ps(tile + r * kStrip) : _mm512_setzero_ps();
    c[r][1] = accumulate ? _mm512_load_ps(tile + r * kStrip + 16) : _mm512_setzero_ps();
  }
  for (Index p = 0; p < pairs; ++p) {
    const __m512bh b0 = bits_as<__m512bh>(_mm512_loadu_si512(b + p * kStrip));
    const __m512bh b1 = bits_as<__m512bh>(_mm512_loadu_si512(b + p * kStrip + 16));
    const std::uint32_t* ap = a + p * kStrip;
    for (int r = 0; r < kRows; ++r) {
      const __m512bh w = bits_as<__m512bh>(_mm512_set1_epi32(int(ap[r])));
      c[r][0] = _mm512_dpbf16_ps(c[r][0], w, b0);
      c[r][1] = _mm512_dpbf16_ps(c[r][1], w, b1);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    _mm512_store_ps(tile + r * kStrip, c[r][0]);
    _mm512_store_ps(tile + r * kStrip + 16, c[r][1]);
  }
}

/// The first `rows` (<= 32, by 8-row tiles) rows of a 32 x 32 block
/// (row-major, 64-byte aligned) = A's strip times B's strip over `pairs`
/// pairs, in depth blocks of kApplyDepthBlock pairs: each depth block's
/// 16 KiB of B serves the block's four tiles from L1. The apply step's B
/// (L's strip, 48 KiB at m = 768) does not stay in L1 across four tiles
/// over the whole depth, and all of L (1.2 MiB) not in L2; at 768 x 3072
/// (one thread) the apply step ran at 380 GFLOP/s whole and 425 in depth
/// blocks of 128 pairs (64 and 256: no better). The Gram and square
/// products gained nothing from it (their tiles run 1536 and 384 pairs).
MUON_BF16_TARGET inline void block_32x32(const std::uint32_t* a, const std::uint32_t* b,
                                         Index pairs, Index rows, float* block) {
  for (Index p0 = 0; p0 < pairs; p0 += kApplyDepthBlock) {
    const Index np = std::min(kApplyDepthBlock, pairs - p0);
    for (Index g = 0; g < rows; g += kRows)
      tile_8x32(a + p0 * kStrip + g, b + p0 * kStrip, np, block + g * kStrip, p0 > 0);
  }
}

/// Apply step epilogue: rows r < rows (<= 32) of the block are rows j0 + r of
/// (L X)^T, i.e. columns of the column-major result: out[c] = alpha x[c] +
/// tile[r][c] for the first `cols` (<= 32) entries, x and out at column
/// j0 + r, row i0.
MUON_BF16_TARGET inline void store_apply(const float* tile, Index rows, Index cols, float alpha,
                                         const float* x, float* out, Index ld) {
  const __mmask16 k0 = first_lanes(cols), k1 = first_lanes(cols - 16);
  const __m512 a = _mm512_set1_ps(alpha);
  for (Index r = 0; r < rows; ++r) {
    const float* v = tile + r * kStrip;
    __m512 v0 = _mm512_load_ps(v), v1 = _mm512_load_ps(v + 16);
    if (alpha != 0.0f) {
      v0 = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(k0, x + r * ld), v0);
      v1 = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(k1, x + r * ld + 16), v1);
    }
    _mm512_mask_storeu_ps(out + r * ld, k0, v0);
    _mm512_mask_storeu_ps(out + r * ld + 16, k1, v1);
  }
}

/// Symmetric epilogue for a 32 x 32 block (block[r][c] = R(i0 + r, j0 + c),
/// j0 <= i0; on the diagonal block only c <= r counts): C(j, i) = alpha R(i,
/// j) + init_scale init(j, i) for j <= i, written both as C(j, i) (column i,
/// contiguous along j) and as C(i, j) for j < i (column j, contiguous along
/// i, read from the block by a gather). C and init are m x m column-major.
MUON_BF16_TARGET inline void store_symmetric(float* block, Index i0, Index j0, Index rows,
                                             Index cols, float alpha, const float* init,
                                             float init_scale, float* C, Index m) {
  const bool diagonal = i0 == j0;
  const __m512 a = _mm512_set1_ps(alpha), b = _mm512_set1_ps(init_scale);
  for (Index r = 0; r < rows; ++r) {
    const Index n = diagonal ? std::min<Index>(cols, r + 1) : cols;
    const __mmask16 k0 = first_lanes(n), k1 = first_lanes(n - 16);
    float* v = block + r * kStrip;
    __m512 v0 = _mm512_mul_ps(a, _mm512_load_ps(v)), v1 = _mm512_mul_ps(a, _mm512_load_ps(v + 16));
    if (init) {
      const float* in = init + (i0 + r) * m + j0;
      v0 = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(k0, in), v0);
      v1 = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(k1, in + 16), v1);
    }
    _mm512_store_ps(v, v0);
    _mm512_store_ps(v + 16, v1);
    float* o = C + (i0 + r) * m + j0;
    _mm512_mask_storeu_ps(o, k0, v0);
    _mm512_mask_storeu_ps(o + 16, k1, v1);
  }
  const __m512i down =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(int(kStrip)));
  for (Index c = 0; c < cols; ++c) {
    const Index r0 = diagonal ? c + 1 : 0;  // rows i > j only on the diagonal
    if (r0 >= rows) continue;
    for (Index h = 0; h < 2; ++h) {
      const Index lo = std::max<Index>(r0, 16 * h), hi = std::min<Index>(rows, 16 * h + 16);
      if (lo >= hi) continue;
      const __mmask16 k = __mmask16(first_lanes(hi - 16 * h) & ~first_lanes(lo - 16 * h));
      const __m512 v =
          _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, down, block + 16 * h * kStrip + c, 4);
      _mm512_mask_storeu_ps(C + (j0 + c) * m + i0 + 16 * h, k, v);
    }
  }
}

/// The strip boundary (in strips) of task t of `tasks` when rows [0, rows)
/// are dealt out by equal area of the lower triangle (symmetric) or evenly.
inline Index task_strip(int t, int tasks, Index rows, bool triangle) {
  const Index strips = strips_of(rows);
  if (t >= tasks) return strips;
  const double f = double(t) / double(tasks);
  return std::min<Index>(strips,
                         Index(std::llround(double(strips) * (triangle ? std::sqrt(f) : f))));
}

}  // namespace bf16

/// The three bf16 products of a Newton–Schulz workspace with m x n iterate
/// (m <= n), over a thread pool (null: the calling thread). Owns the packed
/// operands; allocates at construction only.
class Bf16Products {
 public:
  using Index = bf16::Index;

  Bf16Products(Index m, Index n, ThreadPool* pool)
      : m_(m),
        n_(n),
        pool_(pool),
        x_rows_(std::size_t(bf16::packed_words(m, n))),
        x_cols_(std::size_t(bf16::packed_words(n, m))),
        square_(std::size_t(bf16::packed_words(m, m))) {}

  /// Marks the packed copies of X out of date (X changed).
  void invalidate() { rows_current_ = cols_current_ = false; }

  /// C = alpha X X^T + init_scale init (init null: 0): m x m column-major,
  /// all of it written, exactly symmetric. X is m x n column-major.
  void gram(const float* X, float alpha, const float* init, float init_scale, float* C) {
    const bool pack = !rows_current_;
    symmetric(X, n_, x_rows_.data(), pack, alpha, init, init_scale, C);
    rows_current_ = true;
  }

  /// C = alpha S S^T + init_scale init for a symmetric m x m S (S S^T = S^2).
  void square(const float* S, float alpha, const float* init, float init_scale, float* C) {
    symmetric(S, m_, square_.data(), true, alpha, init, init_scale, C);
  }

  /// out = alpha X + L X (L m x m, X and out m x n, column-major; out must
  /// not alias X or L).
  void apply(const float* L, const float* X, float alpha, float* out) {
    const bool pack_x = !cols_current_;
    const Index m = m_, n = n_;
    std::uint32_t* xc = x_cols_.data();
    std::uint32_t* lr = square_.data();
    // Region 1: pack L's rows and (once per X) X's columns.
    run([&](int t, int tasks) {
      bf16::pack_rows(L, m, m, m, lr, bf16::task_strip(t, tasks, m, false),
                      bf16::task_strip(t + 1, tasks, m, false));
      if (pack_x)
        bf16::pack_columns(X, m, m, n, xc, bf16::task_strip(t, tasks, n, false),
                           bf16::task_strip(t + 1, tasks, n, false));
    });
    cols_current_ = true;
    // Region 2: (L X)^T = X^T L^T, rows j of it (columns of X) by strips.
    const Index pairs = bf16::pairs_of(m);
    run([&](int t, int tasks) {
      alignas(64) float block[bf16::kStrip * bf16::kStrip];
      const Index s0 = bf16::task_strip(t, tasks, n, false),
                  s1 = bf16::task_strip(t + 1, tasks, n, false);
      for (Index s = s0; s < s1; ++s) {
        const Index j0 = s * bf16::kStrip, rows = std::min<Index>(bf16::kStrip, n - j0);
        for (Index q = 0; q < bf16::strips_of(m); ++q) {
          bf16::block_32x32(xc + s * pairs * bf16::kStrip, lr + q * pairs * bf16::kStrip, pairs,
                            rows, block);
          const Index i0 = q * bf16::kStrip;
          bf16::store_apply(block, rows, std::min<Index>(bf16::kStrip, m - i0), alpha,
                            X + j0 * m + i0, out + j0 * m + i0, m);
        }
      }
    });
  }

  /// Bytes of the packed operands.
  std::size_t bytes() const {
    return (x_rows_.size() + x_cols_.size() + square_.size()) * sizeof(std::uint32_t);
  }

 private:
  // C = alpha M M^T + init_scale init, M m x depth column-major, packed into
  // `packed` first when `pack`.
  void symmetric(const float* M, Index depth, std::uint32_t* packed, bool pack, float alpha,
                 const float* init, float init_scale, float* C) {
    const Index m = m_;
    if (pack)
      run([&](int t, int tasks) {
        bf16::pack_rows(M, m, m, depth, packed, bf16::task_strip(t, tasks, m, false),
                        bf16::task_strip(t + 1, tasks, m, false));
      });
    const Index pairs = bf16::pairs_of(depth);
    run([&](int t, int tasks) {
      alignas(64) float block[bf16::kStrip * bf16::kStrip];
      const Index s0 = bf16::task_strip(t, tasks, m, true),
                  s1 = bf16::task_strip(t + 1, tasks, m, true);
      for (Index s = s0; s < s1; ++s) {
        const Index i0 = s * bf16::kStrip, rows = std::min<Index>(bf16::kStrip, m - i0);
        for (Index q = 0; q <= s; ++q) {
          // The block R(i0.., j0..) by 8-row tiles (on the diagonal, the
          // tiles' entries above it are computed and dropped).
          for (Index g = 0; g < rows; g += bf16::kRows)
            bf16::tile_8x32(packed + s * pairs * bf16::kStrip + g,
                            packed + q * pairs * bf16::kStrip, pairs, block + g * bf16::kStrip);
          const Index j0 = q * bf16::kStrip;
          // Its entries j <= i go to C(j, i) and C(i, j). No other task
          // writes either: theirs are the rows and columns of their own
          // strips' indices i.
          bf16::store_symmetric(block, i0, j0, rows, std::min<Index>(bf16::kStrip, m - j0), alpha,
                                init, init_scale, C, m);
        }
      }
    });
  }

  template <class F>
  void run(F&& f) {
    const int tasks = pool_ ? pool_->size() : 1;
    if (tasks == 1) {
      f(0, 1);
      return;
    }
    auto task = [&f, tasks](int t) { f(t, tasks); };
    pool_->parallel(tasks, task);
  }

  Index m_, n_;
  ThreadPool* pool_;
  std::vector<std::uint32_t> x_rows_, x_cols_, square_;
  bool rows_current_ = false, cols_current_ = false;
};

#undef MUON_BF16_TARGET

#endif  // MUON_HAVE_BF16_KERNEL

}  // namespace detail
}  // namespace muon
