// SPDX-License-Identifier: MIT
// The README's quickstart, compiled: orthogonalize one matrix, then take one
// step of the hybrid optimizer over a weight matrix and a bias.
#include <muon/muon.hpp>

#include <cstdio>
#include <vector>

int main() {
  // Newton–Schulz (Jordan's quintic, 5 steps) sends every singular value near 1.
  const Eigen::MatrixXf G = Eigen::MatrixXf::Random(256, 512);
  const Eigen::MatrixXf O = muon::orthogonalize(G);
  const auto range = muon::reference::singular_value_range(O);
  std::printf("singular values of NS(G): [%.3f, %.3f]\n", range.min, range.max);

  // The optimizer works on your own row-major buffers (PyTorch layout).
  std::vector<float> W(64 * 32, 0.5f), dW(64 * 32), b(64, 0.5f), db(64, 1.0f);
  for (std::size_t i = 0; i < dW.size(); ++i) dW[i] = float(i % 7) - 3.0f;
  muon::Optimizer<float> opt;  // torch.optim.Muon defaults: lr 1e-3, wd 0.1, mu 0.95
  opt.add_param("fc.weight", {W.data(), {64, 32}}, {dW.data(), {64, 32}});  // 2-D: Muon
  opt.add_param("fc.bias", {b.data(), {64}}, {db.data(), {64}});            // 1-D: AdamW
  std::printf("%s", opt.routing().table().c_str());
  opt.step();
  std::printf("after one step: W[0] = %.6f, b[0] = %.6f (both were 0.5)\n", W[0], b[0]);
}
