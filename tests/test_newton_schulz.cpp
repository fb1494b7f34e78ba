// SPDX-License-Identifier: MIT
#include <muon/muon.hpp>

#include "catch.hpp"

TEST_CASE("smoke: Jordan x5 lands singular values in [0.68, 1.14]") {
  Eigen::MatrixXd G = Eigen::MatrixXd::Random(32, 80);
  const auto r = muon::reference::singular_value_range(muon::orthogonalize(G));
  REQUIRE(r.min > 0.68);
  REQUIRE(r.max < 1.14);
}
