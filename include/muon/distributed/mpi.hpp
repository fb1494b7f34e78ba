// SPDX-License-Identifier: MIT
#pragma once
/// \file distributed/mpi.hpp
/// \brief dist::Communicator over the user's MPI communicator (host
/// buffers). Needs <mpi.h> and an MPI library (CMake: MUON_ENABLE_MPI, the
/// target muon::mpi). The user initializes and finalizes MPI; this class
/// neither owns nor frees the communicator.
///
///     MPI_Init(&argc, &argv);
///     muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
///     muon::dist::Optimizer<float> opt(comm, muon::dist::GradMode::mean);

#include <mpi.h>

#include <climits>
#include <cstddef>
#include <string>
#include <vector>

#include "../error.hpp"
#include "communicator.hpp"

namespace muon {
namespace dist {

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) detail::fail("comm", "MPI is not initialized (call MPI_Init first)");
    check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MPI_Comm comm() const { return comm_; }

  void all_reduce(const void* send, void* recv, std::size_t count, DType type,
                  ReduceOp op) override {
    check(MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, as_int(count, "count"),
                        mpi_type(type, true), mpi_op(op), comm_),
          "MPI_Allreduce");
  }
  void reduce_scatter(const void* send, void* recv, std::size_t count, DType type,
                      ReduceOp op) override {
    check(MPI_Reduce_scatter_block(send, recv, as_int(count, "count"), mpi_type(type, true),
                                   mpi_op(op), comm_),
          "MPI_Reduce_scatter_block");
  }
  void all_gather(const void* send, void* recv, std::size_t count, DType type) override {
    const int n = as_int(count, "count");
    check(MPI_Allgather(send, n, mpi_type(type, false), recv, n, mpi_type(type, false), comm_),
          "MPI_Allgather");
  }
  void all_gatherv(const void* send, std::size_t count, void* recv,
                   const std::vector<std::size_t>& counts, const std::vector<std::size_t>& displs,
                   DType type) override {
    to_int(counts, counts_);
    to_int(displs, displs_);
    check(MPI_Allgatherv(send, as_int(count, "count"), mpi_type(type, false), recv, counts_.data(),
                         displs_.data(), mpi_type(type, false), comm_),
          "MPI_Allgatherv");
  }
  void all_to_allv(const void* send, const std::vector<std::size_t>& send_counts,
                   const std::vector<std::size_t>& send_displs, void* recv,
                   const std::vector<std::size_t>& recv_counts,
                   const std::vector<std::size_t>& recv_displs, DType type) override {
    to_int(send_counts, counts_);
    to_int(send_displs, displs_);
    to_int(recv_counts, recv_counts_);
    to_int(recv_displs, recv_displs_);
    check(MPI_Alltoallv(send, counts_.data(), displs_.data(), mpi_type(type, false), recv,
                        recv_counts_.data(), recv_displs_.data(), mpi_type(type, false), comm_),
          "MPI_Alltoallv");
  }
  void broadcast(void* buffer, std::size_t count, DType type, int root) override {
    check(MPI_Bcast(buffer, as_int(count, "count"), mpi_type(type, false), root, comm_),
          "MPI_Bcast");
  }
  void barrier() override { check(MPI_Barrier(comm_), "MPI_Barrier"); }

 private:
  static void check(int code, const char* what) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(code, text, &length);
    detail::fail("comm", std::string(what) + " failed: " + std::string(text, std::size_t(length)));
  }
  // MPI counts are int: larger transfers are refused, not truncated.
  static int as_int(std::size_t n, const char* what) {
    if (n > std::size_t(INT_MAX))
      detail::fail(what, std::to_string(n) + " elements exceed MPI's int count");
    return int(n);
  }
  static void to_int(const std::vector<std::size_t>& in, std::vector<int>& out) {
    out.resize(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) out[i] = as_int(in[i], "counts");
  }
  static MPI_Datatype mpi_type(DType t, bool reduce) {
    switch (t) {
      case DType::f32:
        return MPI_FLOAT;
      case DType::f64:
        return MPI_DOUBLE;
      case DType::i64:
        return MPI_INT64_T;
      case DType::bf16:
      case DType::f16:
        if (reduce) detail::fail("type", "reductions of 16-bit floats are not supported");
        return MPI_UINT16_T;
      case DType::u8:
        return MPI_UINT8_T;
    }
    return MPI_BYTE;
  }
  static MPI_Op mpi_op(ReduceOp op) {
    switch (op) {
      case ReduceOp::sum:
        return MPI_SUM;
      case ReduceOp::max:
        return MPI_MAX;
      case ReduceOp::min:
        return MPI_MIN;
    }
    return MPI_SUM;
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  // Scratch for MPI's int arrays, kept to avoid allocating per call.
  std::vector<int> counts_, displs_, recv_counts_, recv_displs_;
};

}  // namespace dist
}  // namespace muon
