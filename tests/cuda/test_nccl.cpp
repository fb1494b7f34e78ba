// SPDX-License-Identifier: MIT
// dist::NcclCommunicator on a one-rank NCCL communicator: every collective
// on device buffers against what it must leave there. Multi-rank runs need
// several GPUs (scripts/gpu_check.sh runs this one on one GPU).
#include <cuda_runtime.h>
#include <nccl.h>

#include <string>
#include <vector>

#include <muon/distributed/nccl.hpp>

#include "catch.hpp"

namespace {

std::vector<float> to_host(const float* d, std::size_t n) {
  std::vector<float> h(n);
  REQUIRE(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
  return h;
}

}  // namespace

TEST_CASE("nccl: a null communicator is refused, naming it (no device needed)", "[nccl][host]") {
  std::string message;
  try {
    muon::dist::NcclCommunicator c(nullptr, nullptr);
  } catch (const muon::Error& e) {
    message = e.what();
  }
  CHECK(message.find("comm") != std::string::npos);
}

TEST_CASE("nccl: one rank's collectives on device buffers", "[nccl][device]") {
  int device = 0;
  ncclComm_t comm = nullptr;
  REQUIRE(ncclCommInitAll(&comm, 1, &device) == ncclSuccess);
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  {
    using muon::dist::DType;
    muon::dist::NcclCommunicator c(comm, stream);
    CHECK(c.rank() == 0);
    CHECK(c.size() == 1);
    const std::vector<float> h = {1, 2, 3, 4, 5, 6, 7, 8};
    float *a = nullptr, *b = nullptr;
    REQUIRE(cudaMalloc(&a, 8 * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMalloc(&b, 8 * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMemcpy(a, h.data(), 8 * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
    auto reset = [&] { REQUIRE(cudaMemset(b, 0, 8 * sizeof(float)) == cudaSuccess); };
    auto done = [&] { REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess); };
    reset();
    c.all_reduce(a, b, 8, DType::f32, muon::dist::ReduceOp::max);
    done();
    CHECK(to_host(b, 8) == h);
    reset();
    c.reduce_scatter(a, b, 8, DType::f32, muon::dist::ReduceOp::sum);
    done();
    CHECK(to_host(b, 8) == h);
    reset();
    c.all_gather(a, b, 8, DType::f32);
    done();
    CHECK(to_host(b, 8) == h);
    reset();
    c.all_gatherv(a, 5, b + 1, {5}, {0}, DType::f32);
    done();
    CHECK(to_host(b, 8) == std::vector<float>{0, 1, 2, 3, 4, 5, 0, 0});
    reset();
    c.all_to_allv(a, {3}, {2}, b, {3}, {4}, DType::f32);
    done();
    CHECK(to_host(b, 8) == std::vector<float>{0, 0, 0, 0, 3, 4, 5, 0});
    c.broadcast(a, 8, DType::f32, 0);
    c.barrier();
    CHECK(to_host(a, 8) == h);
    cudaFree(a);
    cudaFree(b);
  }
  cudaStreamDestroy(stream);
  ncclCommDestroy(comm);
}
