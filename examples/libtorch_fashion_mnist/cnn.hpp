// SPDX-License-Identifier: MIT
#pragma once
/// \file cnn.hpp
/// \brief The small CNN of the libtorch Fashion-MNIST example.
///
///   1x28x28 -> conv 3x3 (16) -> ReLU -> max-pool 2 -> 16x14x14
///           -> conv 3x3 (32) -> ReLU -> max-pool 2 -> 32x7x7 -> linear -> 10 logits
///
/// The module names decide the optimizer of each tensor under
/// muon::torch::make_hybrid's default routing: the 4-D conv filters
/// (conv1.weight, conv2.weight) go to Muon as (out, in*kh*kw) matrices; the
/// biases (1-D) and the head, registered as "classifier" (a name the routing
/// rules send to AdamW, as Muon's authors keep output layers on AdamW), go to
/// AdamW.

#include <torch/torch.h>

namespace libtorch_fashion_mnist {

class CnnImpl : public torch::nn::Module {
 public:
  CnnImpl()
      : conv1_(register_module("conv1",
                               torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 16, 3).padding(1)))),
        conv2_(register_module("conv2",
                               torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 3).padding(1)))),
        classifier_(register_module("classifier", torch::nn::Linear(32 * 7 * 7, 10))) {}

  /// Logits (batch x 10) of a batch of images (batch x 1 x 28 x 28).
  torch::Tensor forward(torch::Tensor x) {
    x = torch::max_pool2d(torch::relu(conv1_->forward(x)), 2);
    x = torch::max_pool2d(torch::relu(conv2_->forward(x)), 2);
    return classifier_->forward(x.flatten(1));
  }

 private:
  torch::nn::Conv2d conv1_, conv2_;
  torch::nn::Linear classifier_;
};
TORCH_MODULE(Cnn);

}  // namespace libtorch_fashion_mnist
