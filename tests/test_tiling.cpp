// SPDX-License-Identifier: MIT
// The CUDA backend's lower-triangle tiling plan (backend/cuda/tiling.hpp) is
// host code: checked here with plain C++, in every build, GPU or not.

#include <muon/backend/cuda/tiling.hpp>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

namespace {
Eigen::MatrixXd gaussian(Eigen::Index r, Eigen::Index c, std::uint64_t seed) {
  return muon_test::gaussian(r, c, seed);
}
}  // namespace

TEST_CASE("the lower-triangle tiling covers each lower entry once", "[tiling]") {
  using muon::cuda::detail::plan_lower_tiles;
  for (std::int64_t m : {1, 2, 5, 64, 96, 100, 130, 1535, 1536, 1600, 3000, 4096, 8192})
    for (std::int64_t req : {0, 1, 7, 16, 32, 40, 64, 1000}) {
      if (req > 0 && req < 64 && m > 200) continue;  // millions of blocks: slow, no new case
      const auto p = plan_lower_tiles(m, req, 1536, 1024);
      INFO("m " << m << " tile request " << req << ": tile " << p.tile << " nb " << p.nb);
      if (!p.tiled()) {
        CHECK(p.batches.empty());
        CHECK(p.tile == m);
        continue;
      }
      CHECK(p.tile * (p.nb - 1) < m);
      CHECK(p.tile * p.nb >= m);
      std::vector<int> hits(static_cast<std::size_t>(m * m), 0);
      std::int64_t blocks = 0;
      for (const auto& g : p.batches) {
        REQUIRE(g.row_offset.size() == g.col_offset.size());
        for (std::size_t k = 0; k < g.row_offset.size(); ++k, ++blocks) {
          const std::int64_t r0 = g.row_offset[k], c0 = g.col_offset[k];
          CHECK(r0 >= c0);
          CHECK(r0 + g.rows <= m);
          CHECK(c0 + g.cols <= m);
          for (std::int64_t j = c0; j < c0 + g.cols; ++j)
            for (std::int64_t i = r0; i < r0 + g.rows; ++i)
              ++hits[static_cast<std::size_t>(i + j * m)];
        }
      }
      CHECK(blocks == p.lower_blocks());
      bool ok = true;
      for (std::int64_t j = 0; j < m; ++j)
        for (std::int64_t i = j; i < m; ++i)
          ok = ok && hits[static_cast<std::size_t>(i + j * m)] == 1;
      CHECK(ok);
      if (m > 200) continue;
      // Simulate the products: lower blocks of X X^T, mirrored, equal the full product.
      const Eigen::MatrixXd X = gaussian(m, m + 17, static_cast<std::uint64_t>(m * 100 + req));
      Eigen::MatrixXd C = Eigen::MatrixXd::Constant(m, m, std::nan(""));
      for (const auto& g : p.batches)
        for (std::size_t k = 0; k < g.row_offset.size(); ++k)
          C.block(g.row_offset[k], g.col_offset[k], g.rows, g.cols) =
              X.middleRows(g.row_offset[k], g.rows) *
              X.middleRows(g.col_offset[k], g.cols).transpose();
      for (Eigen::Index j = 0; j < m; ++j)
        for (Eigen::Index i = 0; i < j; ++i) C(i, j) = C(j, i);
      CHECK((C - X * X.transpose()).norm() <= 1e-12 * (X * X.transpose()).norm());
    }
  CHECK(plan_lower_tiles(4096, 0, 1536, 1024).lower_blocks() == 10);
  CHECK(plan_lower_tiles(8192, 0, 1536, 1024).lower_blocks() == 36);
  CHECK_FALSE(plan_lower_tiles(1024, 0, 1536, 1024).tiled());
}
