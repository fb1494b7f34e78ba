// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/cuda/step_scalars.hpp
/// \brief The per-step values of muon::cuda::Optimizer: computed on the host
/// from the core's plan for the step (Core::begin_step, in double) and
/// uploaded before the step's launches or its graph's replay, so a captured
/// graph follows lr schedules, momentum warmup and set_option without a new
/// capture. AdamW's and AdaMuon's bias corrections are not among them: the
/// device computes those from its own step counters (kernels::adamw_prepare,
/// kernels::second_moment_prepare).

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <vector>

#include "../../optim/core.hpp"
#include "common.hpp"
#include "device_state.hpp"
#include "kernels.cuh"

namespace muon {
namespace cuda {
namespace detail {

class StepScalars {
 public:
  /// Plans the core's next step (Core::begin_step: throws muon::Error,
  /// nothing changed, for a schedule factor that is not finite) and uploads
  /// its values on `stream`: each group's momentum scalars, decay and AdamW
  /// and second-moment options; each parameter's group, route, whether it
  /// has a gradient (grads[i] != null) and (Muon) the largest |p| its
  /// update keeps finite in P (Core::update_limit); each Muon block's
  /// adjusted lr; the non-finite policy.
  template <class P, class C>
  void upload(optim::Core& core, const std::vector<const P*>& grads, const DeviceState<C>& device,
              cudaStream_t stream) {
    const optim::StepPlan& plan = core.begin_step();
    groups_.resize(core.group_count());
    params_.resize(core.size());
    block_lr_.resize(device.block_count);
    for (std::size_t g = 0; g < core.group_count(); ++g) {
      const GroupOptions& o = core.group(g);
      kernels::GroupStep& v = groups_[g];
      v.momentum = core.momentum_coefficients<float>(g);
      v.decay = optim::rules::muon_update_coefficients<float>(
                    o.muon.decay_multiplier(plan.groups[g].muon_lr), 0.0, false)
                    .decay;
      v.cautious = o.muon.cautious_weight_decay ? 1 : 0;
      v.adamw_lr = plan.groups[g].adamw_lr;
      v.adamw_beta1 = o.adamw.beta1;
      v.adamw_beta2 = o.adamw.beta2;
      v.adamw_eps = o.adamw.eps;
      v.adamw_weight_decay = o.adamw.weight_decay;
      const bool adamuon = o.muon.variant == MuonVariant::adamuon;
      v.second_moment_beta2 = adamuon ? o.muon.adamuon_beta2 : o.muon.normuon_beta2;
      v.second_moment_eps = adamuon ? o.muon.adamuon_eps : o.muon.normuon_eps;
      v.second_moment_bias_correction = o.muon.second_moment_bias_corrected() ? 1 : 0;
    }
    for (std::size_t i = 0; i < core.size(); ++i) {
      const optim::ParamRecord& p = core.param(i);
      kernels::ParamStep& v = params_[i];
      v.group = static_cast<int>(p.group);
      v.present = grads[i] != nullptr ? 1 : 0;
      v.adamw = p.muon() ? 0 : 1;
      if (!p.muon()) continue;
      const std::vector<ParamBuffers::Block>& blocks = device.params[i].blocks;
      for (std::size_t b = 0; b < blocks.size(); ++b)
        block_lr_[blocks[b].lr] = static_cast<float>(plan.block_lr[i][b]);
      const double limit = core.update_limit(i, device_scalar<P>::max);
      v.update_limit = limit >= 0 ? static_cast<float>(std::min(limit, 3.0e38)) : -1.0f;
    }
    cuda::detail::upload(device.groups, groups_.data(), groups_.size(), stream);
    if (!params_.empty())
      cuda::detail::upload(device.param_steps, params_.data(), params_.size(), stream);
    if (!block_lr_.empty())
      cuda::detail::upload(device.block_lr, block_lr_.data(), block_lr_.size(), stream);
    raise_ = core.non_finite_policy() == NonFinitePolicy::raise ? 1 : 0;
    int* raise = reinterpret_cast<int*>(reinterpret_cast<char*>(device.state) +
                                        offsetof(kernels::StepState, raise));
    cuda::detail::upload(raise, &raise_, 1, stream);
  }

 private:
  // Host copies: members, so the sources of the stream-ordered uploads
  // outlive them.
  std::vector<kernels::GroupStep> groups_;
  std::vector<kernels::ParamStep> params_;
  std::vector<float> block_lr_;
  int raise_ = 1;
};

}  // namespace detail
}  // namespace cuda
}  // namespace muon
