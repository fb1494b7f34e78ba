// SPDX-License-Identifier: MIT
#pragma once
/// \file distributed/communicator.hpp
/// \brief The collectives a distributed optimizer needs, over the
/// communication library the user already runs: MPI for CPU ranks
/// (distributed/mpi.hpp), NCCL for GPU ranks (distributed/nccl.hpp). The library never
/// initializes either: the user passes in their own communicator.
///
/// Buffers are raw pointers to `count` elements of a DType (host memory for
/// MPI, device memory for NCCL). Every call is collective: every rank of the
/// communicator makes it, in the same order, with matching counts.
/// Reductions are defined for f32 and f64 only; bf16/f16 move as 16-bit
/// words. A failure throws muon::Error naming the operation and the
/// library's message.

#include <cstddef>
#include <cstdint>
#include <vector>

namespace muon {
namespace dist {

/// Element types the collectives move.
enum class DType { f32, f64, bf16, f16, i64, u8 };

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
      return 4;
    case DType::f64:
    case DType::i64:
      return 8;
    case DType::bf16:
    case DType::f16:
      return 2;
    case DType::u8:
      return 1;
  }
  return 1;
}

enum class ReduceOp { sum, max, min };

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  /// recv = op over ranks of send (count elements each; send may equal recv).
  virtual void all_reduce(const void* send, void* recv, std::size_t count, DType type,
                          ReduceOp op) = 0;
  /// recv (count elements) = op over ranks of block `rank()` of send (size() x count).
  virtual void reduce_scatter(const void* send, void* recv, std::size_t count, DType type,
                              ReduceOp op) = 0;
  /// recv (size() x count) = every rank's send (count), in rank order.
  virtual void all_gather(const void* send, void* recv, std::size_t count, DType type) = 0;
  /// recv + displs[r] receives counts[r] elements from rank r; this rank
  /// sends `count` (= counts[rank()]).
  virtual void all_gatherv(const void* send, std::size_t count, void* recv,
                           const std::vector<std::size_t>& counts,
                           const std::vector<std::size_t>& displs, DType type) = 0;
  /// Sends send_counts[r] elements from send + send_displs[r] to rank r, and
  /// receives recv_counts[r] elements from rank r into recv + recv_displs[r].
  virtual void all_to_allv(const void* send, const std::vector<std::size_t>& send_counts,
                           const std::vector<std::size_t>& send_displs, void* recv,
                           const std::vector<std::size_t>& recv_counts,
                           const std::vector<std::size_t>& recv_displs, DType type) = 0;
  /// buffer (count) = root's buffer, on every rank.
  virtual void broadcast(void* buffer, std::size_t count, DType type, int root) = 0;
  virtual void barrier() = 0;
};

/// A communicator of one rank (no library needed): every collective is a
/// copy. For a single process, and for tests.
class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce(const void* send, void* recv, std::size_t count, DType type, ReduceOp) override {
    copy(send, recv, count, type);
  }
  void reduce_scatter(const void* send, void* recv, std::size_t count, DType type,
                      ReduceOp) override {
    copy(send, recv, count, type);
  }
  void all_gather(const void* send, void* recv, std::size_t count, DType type) override {
    copy(send, recv, count, type);
  }
  void all_gatherv(const void* send, std::size_t count, void* recv, const std::vector<std::size_t>&,
                   const std::vector<std::size_t>& displs, DType type) override {
    copy(send, static_cast<char*>(recv) + displs[0] * dtype_size(type), count, type);
  }
  void all_to_allv(const void* send, const std::vector<std::size_t>& send_counts,
                   const std::vector<std::size_t>& send_displs, void* recv,
                   const std::vector<std::size_t>&, const std::vector<std::size_t>& recv_displs,
                   DType type) override {
    const std::size_t s = dtype_size(type);
    copy(static_cast<const char*>(send) + send_displs[0] * s,
         static_cast<char*>(recv) + recv_displs[0] * s, send_counts[0], type);
  }
  void broadcast(void*, std::size_t, DType, int) override {}
  void barrier() override {}

 private:
  static void copy(const void* from, void* to, std::size_t count, DType type) {
    if (from == to || count == 0) return;
    const char* f = static_cast<const char*>(from);
    char* t = static_cast<char*>(to);
    for (std::size_t b = 0; b < count * dtype_size(type); ++b) t[b] = f[b];
  }
};

/// Wraps a communicator and counts the bytes each call moves between this
/// rank and the others, as direct exchanges (what has to cross between
/// ranks, not what a particular algorithm sends): floating-point payload
/// (f32, f64, bf16, f16) apart from metadata (i64, u8). For checking a cost
/// model against real traffic.
class CountingCommunicator final : public Communicator {
 public:
  struct Bytes {
    std::size_t sent = 0, received = 0;
  };

  explicit CountingCommunicator(Communicator& inner) : inner_(inner) {}

  Bytes payload() const { return payload_; }
  Bytes metadata() const { return metadata_; }
  void reset() { payload_ = metadata_ = Bytes(); }

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  void all_reduce(const void* send, void* recv, std::size_t count, DType type,
                  ReduceOp op) override {
    add(type, count * others(), count * others());
    inner_.all_reduce(send, recv, count, type, op);
  }
  void reduce_scatter(const void* send, void* recv, std::size_t count, DType type,
                      ReduceOp op) override {
    add(type, count * others(), count * others());
    inner_.reduce_scatter(send, recv, count, type, op);
  }
  void all_gather(const void* send, void* recv, std::size_t count, DType type) override {
    add(type, count * others(), count * others());
    inner_.all_gather(send, recv, count, type);
  }
  void all_gatherv(const void* send, std::size_t count, void* recv,
                   const std::vector<std::size_t>& counts, const std::vector<std::size_t>& displs,
                   DType type) override {
    std::size_t in = 0;
    for (int r = 0; r < size(); ++r)
      if (r != rank()) in += counts[std::size_t(r)];
    add(type, count * others(), in);
    inner_.all_gatherv(send, count, recv, counts, displs, type);
  }
  void all_to_allv(const void* send, const std::vector<std::size_t>& send_counts,
                   const std::vector<std::size_t>& send_displs, void* recv,
                   const std::vector<std::size_t>& recv_counts,
                   const std::vector<std::size_t>& recv_displs, DType type) override {
    std::size_t out = 0, in = 0;
    for (int r = 0; r < size(); ++r)
      if (r != rank()) {
        out += send_counts[std::size_t(r)];
        in += recv_counts[std::size_t(r)];
      }
    add(type, out, in);
    inner_.all_to_allv(send, send_counts, send_displs, recv, recv_counts, recv_displs, type);
  }
  void broadcast(void* buffer, std::size_t count, DType type, int root) override {
    add(type, rank() == root ? count * others() : 0, rank() == root ? 0 : count);
    inner_.broadcast(buffer, count, type, root);
  }
  void barrier() override { inner_.barrier(); }

 private:
  std::size_t others() const { return std::size_t(size() - 1); }
  void add(DType type, std::size_t out, std::size_t in) {
    const bool payload =
        type == DType::f32 || type == DType::f64 || type == DType::bf16 || type == DType::f16;
    Bytes& b = payload ? payload_ : metadata_;
    b.sent += out * dtype_size(type);
    b.received += in * dtype_size(type);
  }

  Communicator& inner_;
  Bytes payload_, metadata_;
};

}  // namespace dist
}  // namespace muon
