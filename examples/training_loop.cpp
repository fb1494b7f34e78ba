// SPDX-License-Identifier: MIT
// A complete training loop over plain float arrays: a 2-layer MLP fitted to a
// synthetic regression target with the hybrid optimizer (Muon for the hidden
// matrix, AdamW for biases and the output head), a warmup + cosine lr
// schedule, a metrics callback, and a checkpoint saved mid-run and resumed.
//
//   model:  h = tanh(W1 x + b1),  y = w2 . h + b2      (x in R^8, h in R^32)
//   loss:   mean over the batch of (y - target)^2 / 2

#include <muon/optimizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr int kIn = 8, kHidden = 32, kBatch = 64, kSteps = 300;

struct Mlp {
  // Parameters and gradients live in the caller's own arrays; the optimizer
  // only holds views of them.
  std::vector<float> W1 = std::vector<float>(kHidden * kIn), b1 = std::vector<float>(kHidden),
                     w2 = std::vector<float>(kHidden), b2 = std::vector<float>(1);
  std::vector<float> dW1 = W1, db1 = b1, dw2 = w2, db2 = b2;

  explicit Mlp(unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& v : W1) v = normal(rng) / std::sqrt(float(kIn));
    for (float& v : w2) v = normal(rng) / std::sqrt(float(kHidden));
  }

  void register_with(muon::Optimizer<float>& opt) {
    opt.add_param("hidden.weight", {W1.data(), {kHidden, kIn}}, {dW1.data(), {kHidden, kIn}});
    opt.add_param("hidden.bias", {b1.data(), {kHidden}}, {db1.data(), {kHidden}});
    // A 1 x 32 matrix, but named as the output head: routed to AdamW.
    opt.add_param("output_head.weight", {w2.data(), {1, kHidden}}, {dw2.data(), {1, kHidden}});
    opt.add_param("output_head.bias", {b2.data(), {1}}, {db2.data(), {1}});
  }

  // Forward and backward on one batch; fills the gradients, returns the loss.
  float loss_and_grads(const std::vector<float>& x, const std::vector<float>& target) {
    std::fill(dW1.begin(), dW1.end(), 0.0f);
    std::fill(db1.begin(), db1.end(), 0.0f);
    std::fill(dw2.begin(), dw2.end(), 0.0f);
    db2[0] = 0.0f;
    float loss = 0.0f;
    std::vector<float> h(kHidden);
    for (int n = 0; n < kBatch; ++n) {
      const float* xn = &x[static_cast<std::size_t>(n * kIn)];
      float y = b2[0];
      for (int j = 0; j < kHidden; ++j) {
        float a = b1[static_cast<std::size_t>(j)];
        for (int i = 0; i < kIn; ++i) a += W1[static_cast<std::size_t>(j * kIn + i)] * xn[i];
        h[static_cast<std::size_t>(j)] = std::tanh(a);
        y += w2[static_cast<std::size_t>(j)] * h[static_cast<std::size_t>(j)];
      }
      const float err = y - target[static_cast<std::size_t>(n)];
      loss += 0.5f * err * err / kBatch;
      const float dy = err / kBatch;
      db2[0] += dy;
      for (int j = 0; j < kHidden; ++j) {
        const auto ju = static_cast<std::size_t>(j);
        dw2[ju] += dy * h[ju];
        const float da = dy * w2[ju] * (1.0f - h[ju] * h[ju]);
        db1[ju] += da;
        for (int i = 0; i < kIn; ++i) dW1[static_cast<std::size_t>(j * kIn + i)] += da * xn[i];
      }
    }
    return loss;
  }
};

// target = sin(x0) + x1 * x2 + noise: learnable by a small MLP.
void make_batch(std::mt19937& rng, std::vector<float>& x, std::vector<float>& target) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : x) v = normal(rng);
  for (int n = 0; n < kBatch; ++n) {
    const float* xn = &x[static_cast<std::size_t>(n * kIn)];
    target[static_cast<std::size_t>(n)] = std::sin(xn[0]) + xn[1] * xn[2] + 0.01f * normal(rng);
  }
}

void configure(muon::Optimizer<float>& opt) {
  opt.set_option("lr", 0.02);        // Muon's lr for the hidden matrix
  opt.set_option("adamw_lr", 3e-3);  // AdamW's for the rest
  opt.set_option("weight_decay", 0.01);
  opt.set_lr_schedule(muon::LrSchedule::warmup_cosine(20, kSteps, 0.05));
}

}  // namespace

int main() {
  Mlp model(1);
  muon::Optimizer<float> opt;  // torch.optim.Muon defaults, then:
  configure(opt);
  model.register_with(opt);
  std::printf("%s\n", opt.routing().table().c_str());

  opt.on_step([](const muon::StepMetrics& m) {
    if (m.step % 50 != 0) return;
    for (const muon::ParamMetrics& p : m.params)
      if (p.route == muon::Route::muon)
        std::printf(
            "  step %3lld  %-14.*s |g| %.3f  update rms %.3f  ||OO^T-I|| %.3f  ||W||_2 ~ %.3f\n",
            static_cast<long long>(m.step), static_cast<int>(p.name.size()), p.name.data(),
            p.grad_norm, p.update_rms, p.orthogonality_error, p.spectral_norm);
  });

  std::mt19937 data_rng(2);
  std::vector<float> x(kBatch * kIn), target(kBatch);
  std::string checkpoint;
  Mlp snapshot = model;
  for (int step = 0; step < kSteps; ++step) {
    if (step == kSteps / 2) {  // checkpoint: optimizer state + a copy of the parameters
      std::ostringstream os;
      opt.save(os);
      checkpoint = os.str();
      snapshot = model;
    }
    make_batch(data_rng, x, target);
    const float loss = model.loss_and_grads(x, target);
    opt.step();
    if (step % 50 == 0 || step == kSteps - 1) std::printf("step %3d  loss %.4f\n", step, loss);
  }

  // Resume from the checkpoint in a fresh optimizer and replay the second
  // half with the same data: the result is bitwise the same model.
  Mlp resumed = snapshot;
  muon::Optimizer<float> opt2;
  configure(opt2);
  resumed.register_with(opt2);
  std::istringstream is(checkpoint);
  opt2.load(is);
  std::mt19937 replay_rng(2);
  for (int step = 0; step < kSteps; ++step) {
    make_batch(replay_rng, x, target);  // advance the data stream identically
    if (step < kSteps / 2) continue;
    resumed.loss_and_grads(x, target);
    opt2.step();
  }
  const bool same = resumed.W1 == model.W1 && resumed.w2 == model.w2 && resumed.b1 == model.b1;
  std::printf("resumed from the step-%d checkpoint (%zu bytes): %s\n", kSteps / 2,
              checkpoint.size(), same ? "identical parameters" : "DIFFERENT parameters");
  return same ? 0 : 1;
}
