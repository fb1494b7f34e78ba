// SPDX-License-Identifier: MIT
// How far apart AdaMuon's two forms step on real gradients
// (docs/family/adamuon.md, "The two forms, measured").
//
// One MLP (784-512-512-10, the Fashion-MNIST example's) is trained with the
// default AdaMuon (sign form, beta2 0.95); at every step the same gradients
// are also given to three more optimizers, each with its own copy of the
// start weights and its own state: the plain form with beta2 0.999 (the
// library's AdaMuon before the sign form), the plain form with beta2 0.95
// (only the sign differs), and plain Muon. Weight decay is 0, so a step
// moves a matrix by -lr_adj U and the update U depends on the gradients and
// the form only, not on the weights. For the two matrices on Muon (512x784,
// 512x512; the rest is on AdamW, alike in every optimizer) it prints, at
// steps t = 1, 10, 100 and the last, for each optimizer x against a
// reference r (the default AdaMuon; for the last row, Muon):
//
//   step  ||U_x - U_r|| / ||U_r||, U the update of step t
//   moved ||dW_x - dW_r|| / ||dW_r||, dW = W_t - W_0 (t steps)
//
// each U and dW scaled to the reference's Frobenius norm first (AdaMuon's U
// has norm sqrt(min(m, n)) in both forms; Muon's another), so that 1.41
// (sqrt 2) means orthogonal directions and 0 the same direction.
//
//   fashion_mnist_adamuon_forms [data_dir] [steps] [seed]
//
// Defaults: Debian's /usr/share/datasets/fashion-mnist, 100 steps, seed 1.
// Batches of 128 in data order; lr 1e-3 (the lr only scales dW here).

#include <muon/muon.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <string>
#include <vector>

#include "idx.hpp"
#include "mlp.hpp"

namespace fm = fashion_mnist;

namespace {

using WeightMatrix = fm::Mlp<float>::WeightMatrix;

struct Follower {
  const char* name;
  muon::MuonGroupOptions options;
  std::vector<WeightMatrix> weights;  // its own copy of every parameter (biases as n x 1)
  muon::Optimizer<float> optimizer;

  Follower(const char* label, const muon::MuonGroupOptions& o)
      : name(label), options(o), optimizer(o) {}
};

// The options shared by every optimizer: no weight decay, lr 1e-3 under
// AdaMuon's lr rule (0.2 sqrt(max(m, n))); the variant and form vary.
muon::MuonGroupOptions base() {
  return muon::MuonGroupOptions::adamuon().with_lr(1e-3).with_weight_decay(0.0);
}

double distance(const WeightMatrix& x, const WeightMatrix& reference) {
  return static_cast<double>((x - reference).norm() / reference.norm());
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string dir = argc > 1 ? argv[1] : fm::default_data_dir();
  const int steps = argc > 2 ? std::atoi(argv[2]) : 100;
  const std::uint64_t seed = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 1;
  const fm::Dataset train = fm::load_split(dir, "train");
  const int batch = 128;

  fm::Mlp<float> model({784, 512, 512, 10}, seed);
  std::vector<fm::ParameterView<float>> views = model.parameters();

  muon::MuonGroupOptions plain999 = base().with_adamuon_form(muon::AdaMuonForm::plain);
  plain999.adamuon_beta2 = 0.999;
  muon::MuonGroupOptions plain95 = base().with_adamuon_form(muon::AdaMuonForm::plain);
  std::deque<Follower> followers;  // stays in place: the optimizers hold views of the weights
  followers.emplace_back("AdaMuon sign, beta2 0.95 (default)", base());
  followers.emplace_back("AdaMuon plain, beta2 0.999 (before)", plain999);
  followers.emplace_back("AdaMuon plain, beta2 0.95", plain95);
  followers.emplace_back("Muon", base().with_variant(muon::MuonVariant::muon));
  for (Follower& f : followers) {
    f.weights.reserve(views.size());  // stays in place: the optimizer holds views of it
    for (const auto& v : views) {
      f.weights.emplace_back(Eigen::Map<WeightMatrix>(v.value, v.rows, v.cols));
      muon::ParamOptions po;
      po.route = v.role == fm::ParameterRole::hidden_matrix ||
                         v.role == fm::ParameterRole::input_matrix
                     ? muon::Route::muon
                     : muon::Route::adamw;
      // Each follower reads the model's gradients and writes its own weights.
      float* w = f.weights.back().data();
      if (v.role == fm::ParameterRole::bias)
        f.optimizer.add_param(v.name, muon::ParamView<float>(w, {v.rows}),
                              muon::ParamView<float>(v.grad, {v.rows}), po);
      else
        f.optimizer.add_param(v.name, muon::ParamView<float>::matrix(w, v.rows, v.cols),
                              muon::ParamView<float>::matrix(v.grad, v.rows, v.cols), po);
    }
  }
  const std::vector<std::size_t> matrices = {0, 2};  // layer0.weight, layer1.weight
  std::vector<std::vector<WeightMatrix>> start(followers.size()), before(followers.size());
  for (std::size_t f = 0; f < followers.size(); ++f) start[f] = followers[f].weights;

  // (x, r): each optimizer against the default AdaMuon; the plain form against Muon.
  const std::size_t pairs[][2] = {{1, 0}, {2, 0}, {3, 0}, {1, 3}};
  std::printf("%-38s %-8s %5s  %-14s %s\n", "x", "r", "t", "matrix", "step   moved");
  for (int t = 1; t <= steps; ++t) {
    const Eigen::Index first = static_cast<Eigen::Index>((t - 1) * batch) % (train.size() - batch);
    // The gradients at the default AdaMuon's weights (follower 0's).
    for (std::size_t p = 0; p < views.size(); ++p)
      Eigen::Map<WeightMatrix>(views[p].value, views[p].rows, views[p].cols) =
          followers[0].weights[p];
    model.loss_and_gradient(train.images.middleCols(first, batch), train.labels.data() + first);
    for (std::size_t f = 0; f < followers.size(); ++f) {
      before[f] = followers[f].weights;
      followers[f].optimizer.step();
    }
    if (!(t == 1 || t == 10 || t == 100 || t == steps)) continue;
    for (const auto& pair : pairs)
      for (std::size_t p : matrices) {
        const std::size_t f = pair[0], r = pair[1];
        const WeightMatrix reference = followers[r].weights[p] - before[r][p];
        WeightMatrix step = followers[f].weights[p] - before[f][p];
        step *= reference.norm() / step.norm();
        const WeightMatrix moved_reference = followers[r].weights[p] - start[r][p];
        WeightMatrix moved = followers[f].weights[p] - start[f][p];
        moved *= moved_reference.norm() / moved.norm();
        std::printf("%-38s %-8s %5d  %-14s %.3f  %.3f\n", followers[f].name,
                    r == 0 ? "default" : "Muon", t, views[p].name.c_str(),
                    distance(step, reference), distance(moved, moved_reference));
      }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "fashion_mnist_adamuon_forms: %s\n", e.what());
  return 1;
}
