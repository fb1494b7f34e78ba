// SPDX-License-Identifier: MIT
#pragma once
// The optimizer the checkpoint fuzzer loads into, and the seed tool saves:
// one of each kind of parameter (matrix, split rows, conv filter, 3-D batch,
// AdamW bias), so a valid seed exercises every branch of the loader.

#include <muon/optimizer.hpp>

#include <vector>

struct FuzzModel {
  std::vector<float> w = std::vector<float>(4 * 6, 0.5f), qkv = std::vector<float>(6 * 2, 0.25f),
                     conv = std::vector<float>(2 * 2 * 2 * 2, -0.5f),
                     batch = std::vector<float>(2 * 2 * 3, 1.0f),
                     bias = std::vector<float>(4, 0.1f);
  std::vector<float> gw = w, gqkv = qkv, gconv = conv, gbatch = batch, gbias = bias;

  void attach(muon::Optimizer<float>& opt) {
    opt.add_param("w", {w.data(), {4, 6}}, {gw.data(), {4, 6}});
    muon::ParamOptions split;
    split.split = {2, 2, 2};
    opt.add_param("qkv", {qkv.data(), {6, 2}}, {gqkv.data(), {6, 2}}, split);
    opt.add_param("conv", {conv.data(), {2, 2, 2, 2}}, {gconv.data(), {2, 2, 2, 2}});
    opt.add_param("batch", {batch.data(), {2, 2, 3}}, {gbatch.data(), {2, 2, 3}});
    opt.add_param("bias", {bias.data(), {4}}, {gbias.data(), {4}});
  }
};
