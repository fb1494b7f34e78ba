// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/host_state.hpp
/// \brief An optimizer's buffers as host float arrays: how a backend that
/// keeps its state elsewhere (the CUDA optimizer, in device memory) writes
/// and reads the one checkpoint format. Host code only, so a CPU test runs
/// exactly what the device optimizer runs around its copies.

#include <cstdint>
#include <ostream>
#include <vector>

#include "core.hpp"
#include "state_io.hpp"

namespace muon {
namespace optim {

class HostState {
 public:
  /// Zeroed float buffers for every parameter of `core` (buffer_names(route) each).
  explicit HostState(const Core& core) : buffers_(core.size()) {
    for (std::size_t i = 0; i < core.size(); ++i)
      buffers_[i].assign(buffer_names(core.param(i).route).size(),
                         std::vector<float>(static_cast<std::size_t>(core.param(i).numel())));
  }
  /// The buffers of a matched checkpoint (float32 buffers), decoded.
  HostState(const Core& core, const Core::Matched& m) : HostState(core) {
    for (std::size_t i = 0; i < core.size(); ++i)
      for (std::size_t b = 0; b < buffers_[i].size(); ++b) {
        const StoredBuffer& stored = m.params[i]->buffers[b];
        std::vector<float>& out = buffers_[i][b];
        for (std::size_t e = 0; e < out.size(); ++e) out[e] = static_cast<float>(stored.at(e));
      }
  }

  std::vector<float>& buffer(std::size_t param, std::size_t b) { return buffers_[param][b]; }
  const std::vector<float>& buffer(std::size_t param, std::size_t b) const {
    return buffers_[param][b];
  }

  /// Writes `core`'s state with these buffers (float32).
  void save(std::ostream& os, const Core& core, checkpoint::Dtype param_dtype) const {
    core.save(os, checkpoint::Dtype::float32, param_dtype,
              [this, &core](std::size_t i, checkpoint::Writer& w) {
                const auto& names = buffer_names(core.param(i).route);
                for (std::size_t b = 0; b < names.size(); ++b)
                  state_io::write_buffer(w, names[b], checkpoint::Dtype::float32,
                                         std::uint64_t(buffers_[i][b].size()),
                                         buffers_[i][b].data());
              });
  }

 private:
  std::vector<std::vector<std::vector<float>>> buffers_;
};

}  // namespace optim
}  // namespace muon
