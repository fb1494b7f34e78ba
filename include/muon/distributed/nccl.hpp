// SPDX-License-Identifier: MIT
#pragma once
/// \file distributed/nccl.hpp
/// \brief dist::Communicator over the user's NCCL communicator, for device
/// buffers, enqueued on the user's stream (CMake: the target muon::nccl,
/// made when MUON_ENABLE_CUDA finds NCCL). The user creates and destroys the
/// ncclComm_t; this class never does.
///
/// Every call is enqueued on `stream` and returns without waiting (barrier()
/// excepted): results are ready when the stream has reached them. all_gatherv
/// and all_to_allv are grouped point-to-point or broadcast calls (one
/// ncclGroupStart/End each), so a CUDA graph can capture them where NCCL
/// allows capture.

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>
#include <string>
#include <vector>

#include "../error.hpp"
#include "communicator.hpp"

namespace muon {
namespace dist {

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, cudaStream_t stream) : comm_(comm), stream_(stream) {
    if (comm == nullptr) detail::fail("comm", "is null");
    check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
    check(ncclCommCount(comm_, &size_), "ncclCommCount");
    cuda(cudaMalloc(&flag_, sizeof(float)), "cudaMalloc");
  }
  ~NcclCommunicator() override { cudaFree(flag_); }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  cudaStream_t stream() const { return stream_; }

  void all_reduce(const void* send, void* recv, std::size_t count, DType type,
                  ReduceOp op) override {
    check(ncclAllReduce(send, recv, count, nccl_type(type, true), nccl_op(op), comm_, stream_),
          "ncclAllReduce");
  }
  void reduce_scatter(const void* send, void* recv, std::size_t count, DType type,
                      ReduceOp op) override {
    check(ncclReduceScatter(send, recv, count, nccl_type(type, true), nccl_op(op), comm_, stream_),
          "ncclReduceScatter");
  }
  void all_gather(const void* send, void* recv, std::size_t count, DType type) override {
    check(ncclAllGather(send, recv, count, nccl_type(type, false), comm_, stream_),
          "ncclAllGather");
  }
  void all_gatherv(const void* send, std::size_t count, void* recv,
                   const std::vector<std::size_t>& counts, const std::vector<std::size_t>& displs,
                   DType type) override {
    const std::size_t s = dtype_size(type);
    if (counts[std::size_t(rank_)] != count) detail::fail("count", "differs from counts[rank()]");
    check(ncclGroupStart(), "ncclGroupStart");
    for (int r = 0; r < size_; ++r) {
      if (counts[std::size_t(r)] == 0) continue;
      char* at = static_cast<char*>(recv) + displs[std::size_t(r)] * s;
      check(ncclBroadcast(r == rank_ ? send : at, at, counts[std::size_t(r)],
                          nccl_type(type, false), r, comm_, stream_),
            "ncclBroadcast");
    }
    check(ncclGroupEnd(), "ncclGroupEnd");
  }
  void all_to_allv(const void* send, const std::vector<std::size_t>& send_counts,
                   const std::vector<std::size_t>& send_displs, void* recv,
                   const std::vector<std::size_t>& recv_counts,
                   const std::vector<std::size_t>& recv_displs, DType type) override {
    const std::size_t s = dtype_size(type);
    check(ncclGroupStart(), "ncclGroupStart");
    for (int r = 0; r < size_; ++r) {
      const std::size_t k = std::size_t(r);
      if (send_counts[k])
        check(ncclSend(static_cast<const char*>(send) + send_displs[k] * s, send_counts[k],
                       nccl_type(type, false), r, comm_, stream_),
              "ncclSend");
      if (recv_counts[k])
        check(ncclRecv(static_cast<char*>(recv) + recv_displs[k] * s, recv_counts[k],
                       nccl_type(type, false), r, comm_, stream_),
              "ncclRecv");
    }
    check(ncclGroupEnd(), "ncclGroupEnd");
  }
  void broadcast(void* buffer, std::size_t count, DType type, int root) override {
    check(ncclBroadcast(buffer, buffer, count, nccl_type(type, false), root, comm_, stream_),
          "ncclBroadcast");
  }
  /// An all-reduce of one float, then waits for the stream.
  void barrier() override {
    check(ncclAllReduce(flag_, flag_, 1, ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce");
    cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

 private:
  static void check(ncclResult_t r, const char* what) {
    if (r == ncclSuccess) return;
    detail::fail("comm", std::string(what) + " failed: " + ncclGetErrorString(r));
  }
  static void cuda(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return;
    detail::fail("comm", std::string(what) + " failed: " + cudaGetErrorString(e));
  }
  static ncclDataType_t nccl_type(DType t, bool reduce) {
    switch (t) {
      case DType::f32:
        return ncclFloat32;
      case DType::f64:
        return ncclFloat64;
      case DType::bf16:
        if (reduce) detail::fail("type", "reductions of 16-bit floats are not supported");
        return ncclBfloat16;
      case DType::f16:
        if (reduce) detail::fail("type", "reductions of 16-bit floats are not supported");
        return ncclFloat16;
      case DType::i64:
        return ncclInt64;
      case DType::u8:
        return ncclUint8;
    }
    return ncclUint8;
  }
  static ncclRedOp_t nccl_op(ReduceOp op) {
    switch (op) {
      case ReduceOp::sum:
        return ncclSum;
      case ReduceOp::max:
        return ncclMax;
      case ReduceOp::min:
        return ncclMin;
    }
    return ncclSum;
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  int rank_ = 0, size_ = 1;
  float* flag_ = nullptr;
};

}  // namespace dist
}  // namespace muon
