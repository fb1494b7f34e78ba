// SPDX-License-Identifier: MIT
// muon_products_probe <blas|bf16>: exit status 0 when that CPU product engine
// is in this build and usable on this CPU, 77 (ctest's skip code) otherwise,
// printing why.
#include <muon/muon.hpp>

#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  using muon::eigen::Products;
  if (argc != 2) {
    std::fprintf(stderr, "usage: muon_products_probe <blas|bf16>\n");
    return 2;
  }
  const bool blas = std::strcmp(argv[1], "blas") == 0;
  if (muon::eigen::products_available(blas ? Products::blas : Products::bf16)) return 0;
  std::printf("%s\n", blas ? "BLAS products not in this build (MUON_USE_BLAS=OFF): skipping"
                           : "the CPU lacks AVX512-BF16 (or this is not an x86-64 build): "
                             "skipping");
  return 77;
}
