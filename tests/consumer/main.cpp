// SPDX-License-Identifier: MIT
// Downstream smoke program: orthogonalizes a random matrix and checks that
// every singular value landed in Jordan's band. Exit code 0 on success.
// Built with MUON_EXPECTED_VERSION="x.y.z" (the version CMake or pkg-config
// reports for the package), it also checks that version.hpp agrees.
#include <muon/muon.hpp>

#include <cstdio>
#include <cstring>

int main() {
  const Eigen::MatrixXf G = Eigen::MatrixXf::Random(48, 96);
  const Eigen::MatrixXf O = muon::orthogonalize(G);
  const auto range = muon::reference::singular_value_range(O);
  std::printf("muon %s consumer: singular values of NS5(G) in [%.3f, %.3f]\n", MUON_VERSION_STRING,
              range.min, range.max);
#ifdef MUON_EXPECTED_VERSION
  if (std::strcmp(MUON_VERSION_STRING, MUON_EXPECTED_VERSION) != 0) {
    std::printf("version mismatch: header %s, package %s\n", MUON_VERSION_STRING,
                MUON_EXPECTED_VERSION);
    return 1;
  }
#endif
  return (range.min > 0.6 && range.max < 1.2) ? 0 : 1;
}
