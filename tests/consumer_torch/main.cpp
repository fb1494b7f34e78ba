// SPDX-License-Identifier: MIT
// The README's libtorch snippet, as a user's project builds it: a model's
// optimizer replaced by muon::torch's hybrid in a few lines. The adapter is
// compiled once, in muon_instances.cpp: this file includes it extern.
#include <torch/torch.h>
#include <muon/torch_extern_templates.hpp>

#include <cstdio>

struct Net : torch::nn::Module {
  torch::nn::Linear hidden{nullptr}, classifier{nullptr};
  Net() {
    hidden = register_module("hidden", torch::nn::Linear(16, 32));
    classifier = register_module("classifier", torch::nn::Linear(32, 4));
  }
  torch::Tensor forward(torch::Tensor x) { return classifier(torch::relu(hidden(x))); }
};

int main() {
  torch::manual_seed(0);
  auto model = std::make_shared<Net>();
  // was: torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-3));
  auto opt = muon::torch::make_hybrid(model->named_parameters(),
                                      muon::torch::MuonOptions(0.02).adamw_lr(1e-3));
  const torch::Tensor x = torch::randn({64, 16});
  const torch::Tensor y = torch::randint(0, 4, {64});
  float first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    opt.zero_grad();
    torch::Tensor loss = torch::cross_entropy_loss(model->forward(x), y);
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<float>();
  }
  std::printf("loss %.4f -> %.4f\n", first, last);
  const bool hidden_on_muon = opt.route(model->hidden->weight) == muon::Route::muon;
  const bool head_on_adamw = opt.route(model->classifier->weight) == muon::Route::adamw;
  return (last < first && hidden_on_muon && head_on_adamw) ? 0 : 1;
}
