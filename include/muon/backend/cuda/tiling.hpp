// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/cuda/tiling.hpp
/// \brief The lower-triangle tiling plan of the symmetric products (host
/// code, no CUDA headers, unit-tested without a device).
///
/// An m x m symmetric product C = L L^T (L = X for the Gram matrix, L = A for
/// A^2 = A A^T) is cut into nb x nb blocks of edge `tile` (the last block row
/// and column may be shorter). Only the nb (nb + 1) / 2 blocks on and below
/// the diagonal are computed, block (i, j) as L_i L_j^T from the row blocks
/// of L; a mirror pass fills the strict upper triangle. Blocks of equal size
/// form one batch, computed by one batched GEMM.

#include <cstdint>
#include <vector>

namespace muon {
namespace cuda {
namespace detail {

struct TilePlan {
  /// Blocks of one size: `rows` x `cols`, at (row offset, col offset) each.
  struct BlockBatch {
    std::int64_t rows = 0, cols = 0;
    std::vector<std::int64_t> row_offset, col_offset;
  };
  std::int64_t m = 0, tile = 0, nb = 1;
  std::vector<BlockBatch> batches;  ///< empty when untiled (nb == 1)

  bool tiled() const { return nb > 1; }
  /// Blocks on and below the diagonal.
  std::int64_t lower_blocks() const { return nb * (nb + 1) / 2; }
};

/// The plan for an m x m product. `tile_request` > 0 and < m forces that
/// edge; 0 tiles only when m >= threshold, with edges of about `target`
/// rounded up to a multiple of 64. Anything else: untiled (nb = 1).
inline TilePlan plan_lower_tiles(std::int64_t m, std::int64_t tile_request, std::int64_t threshold,
                                 std::int64_t target) {
  TilePlan p;
  p.m = m;
  p.tile = m;
  p.nb = 1;
  if (m <= 1) return p;
  if (tile_request > 0 && tile_request < m) {
    p.tile = tile_request;
  } else if (tile_request == 0 && m >= threshold && target > 0) {
    const std::int64_t want = (m + target - 1) / target;
    p.tile = ((m + want - 1) / want + 63) / 64 * 64;
  }
  p.nb = (m + p.tile - 1) / p.tile;
  if (p.nb <= 1) {
    p.tile = m;
    p.nb = 1;
    return p;
  }
  const std::int64_t last = m - (p.nb - 1) * p.tile;
  auto edge = [&](std::int64_t b) { return b == p.nb - 1 ? last : p.tile; };
  for (std::int64_t i = 0; i < p.nb; ++i)
    for (std::int64_t j = 0; j <= i; ++j) {
      const std::int64_t r = edge(i), c = edge(j);
      std::size_t g = 0;
      while (g < p.batches.size() && !(p.batches[g].rows == r && p.batches[g].cols == c)) ++g;
      if (g == p.batches.size()) {
        p.batches.emplace_back();
        p.batches.back().rows = r;
        p.batches.back().cols = c;
      }
      p.batches[g].row_offset.push_back(i * p.tile);
      p.batches[g].col_offset.push_back(j * p.tile);
    }
  return p;
}

}  // namespace detail
}  // namespace cuda
}  // namespace muon
