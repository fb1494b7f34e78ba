// SPDX-License-Identifier: MIT
// Exit status 0 when a CUDA device is usable, 77 (ctest SKIP) otherwise.
#include <cuda_runtime.h>

#include <cstdio>

int main() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::puts("no CUDA device: skipping");
    return 77;
  }
  return 0;
}
