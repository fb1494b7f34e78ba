// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/cuda/step_launch.hpp
/// \brief The launches of one muon::cuda::Optimizer step, in stream order:
///
///   0. begin_step (flags: no gradient), adamw_prepare and, when a group
///      runs a variant, second_moment_prepare (coefficients from the
///      device's step counters);
///   1. the checks, reading only: muon_check / adamw_check per parameter
///      with a gradient;
///   2. decide: the update bounds and the verdict;
///   3. the writes, each kernel returning at once when the step is refused
///      or its parameter skipped: momentum_commit per Muon block (into its
///      batch's staging), Newton–Schulz per shape batch, then per
///      parameter adamw_commit, or per Muon block its variant's update
///      (muon_commit; NorMuon's sums, factors and commit; AdaMuon's moment,
///      ratio and commit);
///   4. finish_step: the counters of what was written.
///
/// Launches only: no allocation and no synchronization, so a step can be
/// captured as a CUDA graph. The kernels (kernels.cuh) index memory and
/// call the step rules (optim/step_rules.hpp).

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../../optim/core.hpp"
#include "../../optim/step_rules.hpp"
#include "common.hpp"
#include "device_state.hpp"
#include "kernels.cuh"

namespace muon {
namespace cuda {
namespace detail {

/// The update of block b of Muon parameter i from its Newton–Schulz output
/// O, by the parameter's variant. `offset`: the block's first entry in the
/// parameter (and in AdaMuon's V); `line`: its first line in NorMuon's V.
template <class P, class C>
void launch_block_update(const optim::Core& core, const DeviceState<C>& d, P* param, std::size_t i,
                         std::size_t b, std::int64_t offset, std::int64_t line,
                         cudaStream_t stream) {
  const optim::ParamRecord& p = core.param(i);
  const ParamBuffers& s = d.params[i];
  const ParamBuffers::Block& place = s.blocks[b];
  const ShapeBatch<C>& batch = d.batches[place.batch];
  const std::int64_t rows = batch.block_rows, cols = batch.cols, count = batch.count();
  const C* o = batch.result(place.slot);
  P* w = param + offset;
  const kernels::GroupStep* group = d.groups + p.group;
  const float* lr = d.block_lr + place.lr;
  const int* flag = d.flags + i;
  const unsigned blocks = kernels::elementwise_blocks(count);
  constexpr int reduce = kernels::kReduceThreads;
  switch (s.variant) {
    case MuonVariant::muon:
      kernels::muon_commit<P, C><<<blocks, 256, 0, stream>>>(w, o, count, group, lr, d.state, flag);
      check_launch("muon::cuda::kernels::muon_commit");
      return;
    case MuonVariant::normuon: {
      const optim::step::NormuonLines lines =
          optim::step::normuon_lines(rows, cols, p.shape.column_major);
      if (lines.by_row) {
        kernels::sumsq_per_row<C><<<static_cast<unsigned>(rows), reduce, 0, stream>>>(
            o, cols, d.variant_sums, d.state, flag);
        check_launch("muon::cuda::kernels::sumsq_per_row");
      } else {
        kernels::sumsq_per_column<C><<<kernels::column_sum_blocks(cols), reduce, 0, stream>>>(
            o, rows, cols, d.variant_sums, d.state, flag);
        check_launch("muon::cuda::kernels::sumsq_per_column");
      }
      kernels::normuon_factors<<<1, reduce, 0, stream>>>(
          s.second_moment + line, d.variant_sums, lines.count, lines.averaged, d.variant_coef + i,
          d.variant_ratio, d.state, flag);
      check_launch("muon::cuda::kernels::normuon_factors");
      kernels::normuon_commit<P, C><<<blocks, 256, 0, stream>>>(w, o, count, cols, lines.by_row,
                                                                d.variant_sums, d.variant_ratio,
                                                                group, lr, d.state, flag);
      check_launch("muon::cuda::kernels::normuon_commit");
      return;
    }
    case MuonVariant::adamuon: {
      float* v = s.second_moment + offset;
      // One partial sum per CUDA block of kReduceThreads (DeviceState::variant_sums).
      const unsigned reduce_blocks = kernels::elementwise_blocks(count, reduce);
      kernels::adamuon_moment<C><<<reduce_blocks, reduce, 0, stream>>>(
          o, v, count, d.variant_coef + i, d.variant_sums, d.state, flag);
      check_launch("muon::cuda::kernels::adamuon_moment");
      kernels::adamuon_ratio<<<1, reduce, 0, stream>>>(d.variant_sums,
                                                       static_cast<int>(reduce_blocks), rows, cols,
                                                       d.variant_ratio, d.state, flag);
      check_launch("muon::cuda::kernels::adamuon_ratio");
      kernels::adamuon_commit<P, C><<<blocks, 256, 0, stream>>>(
          w, o, v, count, d.variant_coef + i, d.variant_ratio, group, lr, d.state, flag);
      check_launch("muon::cuda::kernels::adamuon_commit");
      return;
    }
  }
}

/// Enqueues one whole step of the parameters at `params` with the
/// gradients `grads` (null: absent) on `stream`, with the values the last
/// StepScalars::upload left on the device.
template <class P, class C>
void launch_step(const optim::Core& core, DeviceState<C>& d, const std::vector<P*>& params,
                 const std::vector<const P*>& grads, cudaStream_t stream) {
  const int n = static_cast<int>(core.size());
  if (n == 0) return;
  const unsigned one_block = 256, per_param = static_cast<unsigned>((n + 255) / 256);
  kernels::begin_step<<<per_param, one_block, 0, stream>>>(n, d.param_steps, d.flags, d.max_abs);
  check_launch("muon::cuda::kernels::begin_step");
  kernels::adamw_prepare<<<per_param, one_block, 0, stream>>>(n, d.param_steps, d.groups, d.steps,
                                                              d.adamw_coef);
  check_launch("muon::cuda::kernels::adamw_prepare");
  if (d.any_variant()) {
    kernels::second_moment_prepare<<<per_param, one_block, 0, stream>>>(n, d.param_steps, d.groups,
                                                                        d.steps, d.variant_coef);
    check_launch("muon::cuda::kernels::second_moment_prepare");
  }
  // 1. checks (read only)
  for (std::size_t i = 0; i < core.size(); ++i) {
    const optim::ParamRecord& p = core.param(i);
    const P* g = grads[i];
    if (!g) continue;
    const ParamBuffers& s = d.params[i];
    const std::int64_t numel = p.numel();
    const unsigned blocks = kernels::elementwise_blocks(numel);
    if (p.muon()) {
      kernels::muon_check<P><<<blocks, 256, 0, stream>>>(
          g, s.first_moment, params[i], numel, d.groups + p.group, d.flags + i, d.max_abs + i);
      check_launch("muon::cuda::kernels::muon_check");
    } else {
      kernels::adamw_check<P><<<blocks, 256, 0, stream>>>(
          params[i], g, s.first_moment, s.second_moment, numel, d.adamw_coef + i, d.flags + i);
      check_launch("muon::cuda::kernels::adamw_check");
    }
  }
  // 2. the verdict
  kernels::decide<<<1, 256, 0, stream>>>(n, d.param_steps, d.flags, d.max_abs, d.state);
  check_launch("muon::cuda::kernels::decide");
  // 3. writes: momentum into the staging, Newton–Schulz per shape batch,
  //    the updates; AdamW.
  for (std::size_t i = 0; i < core.size(); ++i) {
    const optim::ParamRecord& p = core.param(i);
    const P* g = grads[i];
    if (!g || !p.muon()) continue;
    const ParamBuffers& s = d.params[i];
    std::int64_t offset = 0;
    for (const ParamBuffers::Block& place : s.blocks) {
      const ShapeBatch<C>& batch = d.batches[place.batch];
      const std::int64_t count = batch.count();
      kernels::momentum_commit<P><<<kernels::elementwise_blocks(count), 256, 0, stream>>>(
          g + offset, params[i] + offset, s.first_moment + offset, batch.input(place.slot), count,
          d.groups + p.group, d.state, d.flags + i);
      check_launch("muon::cuda::kernels::momentum_commit");
      offset += count;
    }
  }
  for (ShapeBatch<C>& b : d.batches) {
    const std::int64_t count = b.count(), members = static_cast<std::int64_t>(b.members);
    const BatchedMatrixView<const float> in(b.input(0), b.cols, b.block_rows, b.cols, count,
                                            members);
    const BatchedMatrixView<C> out(static_cast<C*>(b.output.data()), b.cols, b.block_rows, b.cols,
                                   count, members);
    b.ortho->run_from_float(in, out, core.group(b.group).muon.ns, stream);
  }
  for (std::size_t i = 0; i < core.size(); ++i) {
    const optim::ParamRecord& p = core.param(i);
    const P* g = grads[i];
    if (!g) continue;
    const ParamBuffers& s = d.params[i];
    if (!p.muon()) {
      const std::int64_t numel = p.numel();
      kernels::adamw_commit<P><<<kernels::elementwise_blocks(numel), 256, 0, stream>>>(
          params[i], g, s.first_moment, s.second_moment, numel, d.adamw_coef + i, d.state,
          d.flags + i);
      check_launch("muon::cuda::kernels::adamw_commit");
      continue;
    }
    std::int64_t offset = 0, line = 0;  // the block's first entry; (NorMuon) its first line
    for (std::size_t b = 0; b < p.blocks.size(); ++b) {
      launch_block_update(core, d, params[i], i, b, offset, line, stream);
      offset += p.blocks[b] * p.cols;
      line += std::max(p.blocks[b], p.cols);
    }
  }
  // 4. counters
  kernels::finish_step<<<1, 256, 0, stream>>>(n, d.flags, d.steps, d.state);
  check_launch("muon::cuda::kernels::finish_step");
}

}  // namespace detail
}  // namespace cuda
}  // namespace muon
