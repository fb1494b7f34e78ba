// SPDX-License-Identifier: MIT
// Data-parallel training of the Fashion-MNIST MLP over MPI with
// muon::dist::Optimizer: every rank holds the whole model, takes its share
// of every batch, and the optimizer adds the ranks' gradients at each
// matrix's home rank, runs Muon there and sends the new weights to every
// rank.
//
//   mpirun -np 2 build/examples/fashion_mnist/fashion_mnist_dist [--epochs 1] [--steps N]
//       [--batch 256] [--hidden 256] [--data DIR] [--check]
//
// --check also trains the same model in one process on rank 0 with
// muon::Optimizer, fed each step the gradient the ranks form (each share's
// mean gradient computed as the ranks do, added in rank order, divided by
// the rank count), and checks that both end with bitwise the same weights
// (exit 1 otherwise). A single process that computes the gradient of the
// whole batch at once rounds it differently; such runs drift apart over
// many steps as any two float training runs do. Prints the time per step
// (the slowest rank's mean) and the test accuracy.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <muon/distributed/mpi.hpp>
#include <muon/distributed/optimizer.hpp>
#include <muon/optimizer.hpp>

#include "idx.hpp"
#include "mlp.hpp"

namespace fm = fashion_mnist;

namespace {

struct Config {
  int epochs = 1;
  long steps = -1;  // -1: whole epochs
  int batch = 256;
  int hidden = 256;
  std::string data = fm::default_data_dir();
  bool check = false;
};

Config parse(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--epochs")
      c.epochs = std::stoi(next());
    else if (a == "--steps")
      c.steps = std::stol(next());
    else if (a == "--batch")
      c.batch = std::stoi(next());
    else if (a == "--hidden")
      c.hidden = std::stoi(next());
    else if (a == "--data")
      c.data = next();
    else if (a == "--check")
      c.check = true;
    else
      throw std::invalid_argument("unknown option " + a);
  }
  return c;
}

muon::MuonGroupOptions muon_options() {
  muon::MuonGroupOptions o;
  o.with_lr(0.02).with_weight_decay(0.01);
  return o;
}
muon::AdamWOptions adamw_options() {
  muon::AdamWOptions a;
  a.lr = 2e-3;
  a.weight_decay = 0.01;
  return a;
}

// Weights into Muon, except the classifier; biases into AdamW (the
// single-process example's default routing).
template <class Opt>
void attach(Opt& opt, fm::Mlp<float>& model) {
  for (const auto& p : model.parameters()) {
    muon::ParamOptions o;
    o.route =
        p.role == fm::ParameterRole::input_matrix || p.role == fm::ParameterRole::hidden_matrix
            ? muon::Route::muon
            : muon::Route::adamw;
    if (p.role == fm::ParameterRole::bias)
      opt.add_param(p.name, muon::ParamView<float>(p.value, {p.rows}),
                    muon::ParamView<float>(p.grad, {p.rows}), o);
    else
      opt.add_param(p.name, muon::ParamView<float>(p.value, {p.rows, p.cols}),
                    muon::ParamView<float>(p.grad, {p.rows, p.cols}), o);
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  int status = 0;
  try {
    const Config c = parse(argc, argv);
    if (c.batch % ranks != 0)
      throw std::invalid_argument("--batch must be a multiple of the rank count");
    const fm::Dataset train = fm::load_split(c.data, "train");
    const fm::Dataset test = fm::load_split(c.data, "t10k");
    const std::vector<int> sizes = {int(train.images.rows()), c.hidden, c.hidden, 10};
    fm::Mlp<float> model(sizes, 1);
    muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
    // Each rank's gradient is the mean over its equal share of the batch:
    // their mean over ranks is the batch mean.
    muon::dist::Optimizer<float> opt(comm, muon::dist::GradMode::mean, muon_options(),
                                     adamw_options());
    attach(opt, model);
    // The single-process run, on rank 0 only.
    fm::Mlp<float> single_model(sizes, 1);
    muon::Optimizer<float> single(muon_options(), adamw_options());
    std::vector<fm::ParameterView<float>> single_params = single_model.parameters();
    std::vector<std::vector<float>> sum(single_params.size());
    if (c.check && rank == 0) attach(single, single_model);

    const Eigen::Index n = train.images.cols(), share = c.batch / ranks;
    std::vector<Eigen::Index> order(static_cast<std::size_t>(n));
    std::mt19937_64 rng(7);  // the same shuffle on every rank
    Eigen::MatrixXf x(train.images.rows(), share), x_all(train.images.rows(), c.batch);
    std::vector<int> y(static_cast<std::size_t>(share)), y_all(static_cast<std::size_t>(c.batch));
    long step = 0;
    double seconds = 0;
    for (int epoch = 0; epoch < c.epochs && (c.steps < 0 || step < c.steps); ++epoch) {
      std::iota(order.begin(), order.end(), Eigen::Index(0));
      std::shuffle(order.begin(), order.end(), rng);
      for (Eigen::Index s = 0; s + c.batch <= n && (c.steps < 0 || step < c.steps); s += c.batch) {
        for (Eigen::Index j = 0; j < share; ++j) {
          const Eigen::Index k = order[std::size_t(s + rank * share + j)];
          x.col(j) = train.images.col(k);
          y[std::size_t(j)] = train.labels[std::size_t(k)];
        }
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = MPI_Wtime();
        model.loss_and_gradient(x, y.data());
        opt.step();
        seconds += MPI_Wtime() - t0;
        if (c.check && rank == 0) {
          for (int r = 0; r < ranks; ++r) {
            for (Eigen::Index j = 0; j < share; ++j) {
              const Eigen::Index k = order[std::size_t(s + r * share + j)];
              x_all.col(j) = train.images.col(k);
              y_all[std::size_t(j)] = train.labels[std::size_t(k)];
            }
            single_model.loss_and_gradient(x_all.leftCols(share), y_all.data());
            for (std::size_t q = 0; q < single_params.size(); ++q) {
              const auto& p = single_params[q];
              const std::size_t count = std::size_t(p.rows * p.cols);
              if (r == 0)
                sum[q].assign(p.grad, p.grad + count);
              else
                for (std::size_t e = 0; e < count; ++e) sum[q][e] += p.grad[e];
            }
          }
          for (std::size_t q = 0; q < single_params.size(); ++q)
            for (std::size_t e = 0; e < sum[q].size(); ++e)
              single_params[q].grad[e] = sum[q][e] / float(ranks);
          single.step();
        }
        ++step;
      }
    }
    double slowest = 0;
    const double mean = step > 0 ? seconds / double(step) : 0;
    MPI_Reduce(&mean, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) {
      const fm::Evaluation e = model.evaluate(test.images, test.labels);
      std::printf(
          "ranks %d, %ld steps of batch %d: %.2f ms/step (slowest rank), test accuracy "
          "%.4f, state %.2f MB on rank 0\n",
          ranks, step, c.batch, slowest * 1e3, e.accuracy, double(opt.state_bytes()) / 1e6);
      if (c.check) {
        double worst = 0;
        for (std::size_t l = 0; l < model.layers(); ++l) {
          const double scale = single_model.weight(l).cwiseAbs().maxCoeff();
          worst = std::max(
              worst,
              double((model.weight(l) - single_model.weight(l)).cwiseAbs().maxCoeff()) / scale);
          worst =
              std::max(worst, double((model.bias(l) - single_model.bias(l)).cwiseAbs().maxCoeff()));
        }
        std::printf(
            "single-process muon::Optimizer on the same gradients: largest difference "
            "%.3g (%s)\n",
            worst, worst == 0 ? "bitwise the same" : "DIFFERENT");
        if (worst != 0) status = 1;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    status = 2;
  }
  int worst = 0;
  MPI_Allreduce(&status, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
