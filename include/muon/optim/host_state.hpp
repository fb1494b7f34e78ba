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
  /// Zeroed float buffers for every parameter of `core` (its route's and
  /// variant's buffers, Core::buffer_names).
  explicit HostState(const Core& core) : buffers_(core.size()) {
    for (std::size_t i = 0; i < core.size(); ++i) shape(core.param(i), core.variant(i), i);
  }
  /// The buffers of a matched checkpoint (float32 buffers), decoded; their
  /// number and sizes follow the file's groups (which the core takes over).
  HostState(const Core& core, const Core::Matched& m) : buffers_(core.size()) {
    for (std::size_t i = 0; i < core.size(); ++i) {
      const ParamRecord& p = core.param(i);
      shape(p, m.groups[p.group].muon.variant, i);
    }
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
                const auto& names = core.buffer_names(i);
                for (std::size_t b = 0; b < names.size(); ++b)
                  state_io::write_buffer(w, names[b], checkpoint::Dtype::float32,
                                         std::uint64_t(buffers_[i][b].size()),
                                         buffers_[i][b].data());
              });
  }

 private:
  void shape(const ParamRecord& p, MuonVariant variant, std::size_t i) {
    const std::size_t n = optim::buffer_names(p.route, variant).size();
    buffers_[i].resize(n);
    for (std::size_t b = 0; b < n; ++b)
      buffers_[i][b].assign(static_cast<std::size_t>(buffer_elements(p, variant, b)), 0.0f);
  }

  std::vector<std::vector<std::vector<float>>> buffers_;
};

}  // namespace optim
}  // namespace muon
