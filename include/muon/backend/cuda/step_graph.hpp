// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/cuda/step_graph.hpp
/// \brief One optimizer step recorded as a CUDA graph and replayed with one
/// launch. The graph holds the addresses of the parameters, gradients and
/// device state, and reads its per-step values from device memory (uploaded
/// before each replay), so it stays valid until the state it points at
/// changes; then the owner drops it, saying why, and replay() says so.

#include <cuda_runtime.h>

#include "../../error.hpp"
#include "common.hpp"

namespace muon {
namespace cuda {
namespace detail {

class StepGraph {
 public:
  StepGraph() = default;
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;
  ~StepGraph() { release(); }

  /// Records what `enqueue(stream)` launches on `stream` (which must not
  /// be the legacy default stream) as the graph, replacing the one held.
  /// Nothing is executed. When enqueue or a CUDA call throws, the capture
  /// is ended and no graph is held.
  template <class Enqueue>
  void capture(cudaStream_t stream, Enqueue&& enqueue) {
    release();
    MUON_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue(stream);
    } catch (...) {
      cudaGraph_t g = nullptr;
      (void)cudaStreamEndCapture(stream, &g);
      if (g) (void)cudaGraphDestroy(g);
      throw;
    }
    MUON_CUDA_CHECK(cudaStreamEndCapture(stream, &graph_));
    MUON_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
    missing_ = "capture() was not called";
  }

  /// Throws muon::Error ("replay": why there is none) without a graph.
  void require() const {
    if (exec_ == nullptr) ::muon::detail::fail("replay", missing_);
  }

  /// One launch of the graph on `stream` (require() first).
  void launch(cudaStream_t stream) const {
    require();
    MUON_CUDA_CHECK(cudaGraphLaunch(exec_, stream));
  }

  /// Releases the graph made stale by a change of state; launch() then
  /// says `why`.
  void drop(const char* why) {
    if (exec_ == nullptr) return;
    release();
    missing_ = why;
  }

 private:
  void release() {
    if (exec_) (void)cudaGraphExecDestroy(exec_);
    if (graph_) (void)cudaGraphDestroy(graph_);
    exec_ = nullptr;
    graph_ = nullptr;
  }

  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  const char* missing_ = "capture() was not called";  // launch()'s error without a graph
};

}  // namespace detail
}  // namespace cuda
}  // namespace muon
