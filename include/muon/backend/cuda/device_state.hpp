// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/cuda/device_state.hpp
/// \brief What muon::cuda::Optimizer keeps on the device, made at once from
/// the core's registrations (the first step, capture, save or load): every
/// parameter's optimizer buffers, in checkpoint order; the same-shape
/// batches of Muon blocks with their Newton–Schulz staging, output and
/// workspace; and the step machinery (the per-step values the host uploads,
/// the check flags, the step counters, the variants' coefficients and
/// scratch). Buffer sizes come from optim::buffer_elements, as on every
/// backend and in the checkpoint.

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../../optim/core.hpp"
#include "common.hpp"
#include "kernels.cuh"
#include "workspace.hpp"

namespace muon {
namespace cuda {
namespace detail {

/// One parameter's optimizer buffers (fp32, zeroed when made), named for
/// what they hold; buffer(b) is checkpoint buffer b (Core::buffer_names).
struct ParamBuffers {
  float* first_moment = nullptr;   ///< Muon: momentum_buffer; AdamW: exp_avg
  float* second_moment = nullptr;  ///< AdamW: exp_avg_sq; a Muon variant: its V (else null)
  /// Muon: the variant `variant_state` was made for (the group's: kept in
  /// step by the option setters and load) and that buffer: NorMuon's V per
  /// line (max(rows, cols) per block, blocks in order), AdaMuon's V per entry.
  MuonVariant variant = MuonVariant::muon;
  DeviceBuffer variant_state;
  /// Muon, per block: its shape batch, its place in the batch, and its
  /// index in the per-step array of adjusted lrs.
  struct Block {
    std::size_t batch = 0, slot = 0, lr = 0;
  };
  std::vector<Block> blocks;

  float* buffer(std::size_t b) const { return b == 0 ? first_moment : second_moment; }
};

/// Same-shape Muon blocks of one group, orthogonalized together: the
/// staging holds `members` dense column-major cols x block_rows matrices
/// (each a row-major block_rows x cols block of a parameter).
template <class C>
struct ShapeBatch {
  std::int64_t block_rows = 0, cols = 0;
  std::size_t group = 0;  ///< the group whose Newton–Schulz options it runs
  std::size_t members = 0;
  DeviceBuffer staging;  ///< float: the Newton–Schulz input
  DeviceBuffer output;   ///< C: the Newton–Schulz output O
  std::unique_ptr<Orthogonalizer<C>> ortho;

  std::int64_t count() const { return block_rows * cols; }  ///< entries per member
  float* input(std::size_t slot) const {
    return static_cast<float*>(staging.data()) + static_cast<std::int64_t>(slot) * count();
  }
  const C* result(std::size_t slot) const {
    return static_cast<const C*>(output.data()) + static_cast<std::int64_t>(slot) * count();
  }
};

/// The device state of an optimizer whose Newton–Schulz scalar is C. Made
/// in one go by the constructor, zeroed on `stream` (its home stream); when
/// an allocation throws, whatever was made is released and nothing else
/// changed.
template <class C>
struct DeviceState {
  DeviceState(const optim::Core& core, const Allocator& allocator, cudaStream_t stream)
      : alloc(allocator), home(stream) {
    const std::size_t n = core.size();
    std::size_t floats = 0;  // the moments every parameter keeps whatever its variant
    for (std::size_t i = 0; i < n; ++i) {
      const optim::ParamRecord& p = core.param(i);
      floats += moment_elements(p, core.variant(i));
    }
    moments_ = zeroed(sizeof(float) * std::max<std::size_t>(floats, 1), "state", stream);
    params.resize(n);
    std::map<std::array<std::int64_t, 3>, std::size_t> by_shape;  // (rows, cols, group)
    float* cursor = static_cast<float*>(moments_.data());
    std::int64_t scratch = 1;  // doubles of variant_sums
    for (std::size_t i = 0; i < n; ++i) {
      const optim::ParamRecord& p = core.param(i);
      const MuonVariant variant = core.variant(i);
      ParamBuffers& s = params[i];
      s.first_moment = cursor;
      cursor += optim::buffer_elements(p, variant, 0);
      if (!p.muon()) {
        s.second_moment = cursor;
        cursor += optim::buffer_elements(p, variant, 1);
        continue;
      }
      for (std::int64_t rows : p.blocks) {
        const std::array<std::int64_t, 3> key{rows, p.cols, static_cast<std::int64_t>(p.group)};
        auto it = by_shape.find(key);
        if (it == by_shape.end()) {
          it = by_shape.emplace(key, batches.size()).first;
          batches.emplace_back();
          batches.back().block_rows = rows;
          batches.back().cols = p.cols;
          batches.back().group = p.group;
        }
        s.blocks.push_back({it->second, batches[it->second].members++, block_count++});
        scratch = std::max(scratch, variant_scratch(rows, p.cols));
      }
      adopt(s, variant, variant_state(p, variant, stream));
    }
    for (ShapeBatch<C>& b : batches) {
      const std::size_t count = static_cast<std::size_t>(b.count()) * b.members;
      b.staging = zeroed(sizeof(float) * count, "staging", stream);
      b.output = DeviceBuffer(sizeof(C) * count, stream, alloc, "muon::cuda::Optimizer output");
      // A row-major rows_b x cols block is the column-major cols x rows_b matrix.
      b.ortho = std::make_unique<Orthogonalizer<C>>(
          b.cols, b.block_rows, static_cast<std::int64_t>(b.members), stream, alloc);
    }
    // The per-step values (uploaded before every step) and the machinery.
    const std::size_t at_least_one = std::max<std::size_t>(n, 1);
    Carve values;
    values.add(groups, core.group_count());
    values.add(param_steps, at_least_one);
    values.add(block_lr, std::max<std::size_t>(block_count, 1));
    values_ = DeviceBuffer(values.bytes, stream, alloc, "muon::cuda::Optimizer step values");
    values.place(values_.data());
    Carve machinery;
    machinery.add(flags, at_least_one);
    machinery.add(max_abs, at_least_one);
    machinery.add(adamw_coef, at_least_one);
    machinery.add(steps, at_least_one);
    machinery.add(state, 1);
    machinery.add(variant_coef, at_least_one);
    machinery.add(variant_sums, static_cast<std::size_t>(scratch));
    machinery.add(variant_ratio, 1);
    machinery_ = zeroed(machinery.bytes, "step machinery", stream);
    machinery.place(machinery_.data());
  }
  DeviceState(const DeviceState&) = delete;
  DeviceState& operator=(const DeviceState&) = delete;

  /// The second moment Muon parameter p keeps under `variant`, zeroed on
  /// `stream` (empty for plain Muon). Throws muon::Error when the
  /// allocation fails.
  DeviceBuffer variant_state(const optim::ParamRecord& p, MuonVariant variant,
                             cudaStream_t stream) const {
    if (variant == MuonVariant::muon) return DeviceBuffer();
    return zeroed(sizeof(float) * static_cast<std::size_t>(optim::buffer_elements(p, variant, 1)),
                  "variant state", stream);
  }

  /// Makes `buffer` (made for `variant`) the second moment of Muon
  /// parameter s; its old buffer is released on its stream, after the work
  /// queued there.
  static void adopt(ParamBuffers& s, MuonVariant variant, DeviceBuffer buffer) {
    s.variant_state = std::move(buffer);
    s.second_moment = static_cast<float*>(s.variant_state.data());
    s.variant = variant;
  }

  bool any_variant() const {
    return std::any_of(params.begin(), params.end(),
                       [](const ParamBuffers& s) { return s.variant != MuonVariant::muon; });
  }

  /// Writes the core's counters to the device, with a cleared verdict and
  /// the core's policy; synchronizes `stream`.
  void upload_counters(const optim::Core& core, cudaStream_t stream) {
    std::vector<long long> counts(core.size());
    for (std::size_t i = 0; i < core.size(); ++i) counts[i] = core.param(i).steps;
    kernels::StepState s;
    s.step_count = core.step_count();
    s.verdict = 0;
    s.raise = core.non_finite_policy() == NonFinitePolicy::raise ? 1 : 0;
    if (!counts.empty()) upload(steps, counts.data(), counts.size(), stream);
    upload(state, &s, 1, stream);
    MUON_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  /// Reads the device's counters back into `core` (synchronizes `stream`);
  /// returns the step machinery's state (the last step's verdict).
  kernels::StepState download_counters(optim::Core& core, cudaStream_t stream) const {
    const std::vector<long long> counts = download_now(steps, core.size(), stream);
    const kernels::StepState s = download_now(state, 1, stream).front();
    core.set_counters(s.step_count, std::vector<std::int64_t>(counts.begin(), counts.end()));
    return s;
  }

  std::vector<ParamBuffers> params;    ///< per registered parameter
  std::vector<ShapeBatch<C>> batches;  ///< the Muon blocks, by (rows, cols, group)
  std::size_t block_count = 0;         ///< Muon blocks (entries of block_lr)
  // Uploaded before every step (StepScalars).
  kernels::GroupStep* groups = nullptr;       ///< per group
  kernels::ParamStep* param_steps = nullptr;  ///< per parameter
  float* block_lr = nullptr;                  ///< per Muon block: its adjusted lr
  // The step machinery, written by the kernels.
  int* flags = nullptr;         ///< per parameter: step::Flag bits
  unsigned* max_abs = nullptr;  ///< per parameter: max |p| (float bits)
  optim::rules::AdamWCoefficients<float>* adamw_coef = nullptr;  ///< per parameter
  long long* steps = nullptr;                                    ///< per parameter: steps taken
  kernels::StepState* state = nullptr;                           ///< step count, verdict, policy
  optim::rules::SecondMomentCoefficients<float>* variant_coef = nullptr;  ///< per parameter
  /// NorMuon's line sums (then factors), AdaMuon's partial sums: one
  /// block's at a time (the stream order makes sharing them safe).
  double* variant_sums = nullptr;
  float* variant_ratio = nullptr;  ///< the block's norm ratio
  Allocator alloc;
  cudaStream_t home = nullptr;  ///< the stream the state was made on

 private:
  // Sub-buffers carved from one allocation, each 256-byte aligned.
  struct Carve {
    std::size_t bytes = 0;
    std::vector<std::pair<void**, std::size_t>> at;  // where each pointer goes, its offset
    template <class T>
    void add(T*& pointer, std::size_t count) {
      at.emplace_back(reinterpret_cast<void**>(&pointer), bytes);
      bytes += (sizeof(T) * count + 255) / 256 * 256;
    }
    void place(void* base) const {
      for (const auto& [pointer, offset] : at) *pointer = static_cast<char*>(base) + offset;
    }
  };

  // The moments of p in the shared buffer: buffer 0, and AdamW's buffer 1
  // (a Muon variant's second moment has a buffer of its own).
  static std::size_t moment_elements(const optim::ParamRecord& p, MuonVariant variant) {
    std::int64_t e = optim::buffer_elements(p, variant, 0);
    if (!p.muon()) e += optim::buffer_elements(p, variant, 1);
    return static_cast<std::size_t>(e);
  }

  // The doubles a rows x cols block needs in variant_sums: NorMuon's sum
  // (then factor) per line, AdaMuon's partial sum per CUDA block.
  static std::int64_t variant_scratch(std::int64_t rows, std::int64_t cols) {
    return std::max<std::int64_t>(
        std::max(rows, cols), kernels::elementwise_blocks(rows * cols, kernels::kReduceThreads));
  }

  DeviceBuffer zeroed(std::size_t bytes, const char* what, cudaStream_t stream) const {
    const std::string name = std::string("muon::cuda::Optimizer ") + what;
    DeviceBuffer b(bytes, stream, alloc, name.c_str());
    MUON_CUDA_CHECK(cudaMemsetAsync(b.data(), 0, b.bytes(), stream));
    return b;
  }

  DeviceBuffer moments_, values_, machinery_;
};

}  // namespace detail
}  // namespace cuda
}  // namespace muon
