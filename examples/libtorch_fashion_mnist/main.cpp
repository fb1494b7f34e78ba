// SPDX-License-Identifier: MIT
// Fashion-MNIST with libtorch's C++ frontend: a small CNN (cnn.hpp) trained
// with the hybrid muon::torch optimizer (conv filters on Muon, biases and the
// classifier on AdamW), torch::optim::AdamW and torch::optim::SGD (Nesterov
// momentum). Each optimizer gets a short learning-rate sweep judged on a
// held-out validation split, then several seeds at its best lr; the program
// prints a table (mean and spread over the seeds, time per step relative to
// AdamW) and writes CSV logs and a PNG of the curves.
//
// Run with --help for the flags; scripts/libtorch_fashion_mnist.sh installs,
// builds and runs it.

#include <dlfcn.h>
#include <time.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <muon/torch.hpp>

#include "../fashion_mnist/idx.hpp"
#include "../fashion_mnist/progress.hpp"
#include "cnn.hpp"

namespace fm = fashion_mnist;
namespace lfm = libtorch_fashion_mnist;

namespace {

// ---------------------------------------------------------------- options

struct Config {
  int epochs = 6;
  int seeds = 3;  // seeds 1..N
  int batch_size = 128;
  int threads = 1;  // libtorch's and the Muon optimizer's; see --help
  bool sweep = true;
  long sweep_subset = 20000;  // training images per sweep run (one epoch)
  long val_size = 5000;       // held out of the training split
  long train_limit = 0;       // 0: every remaining training image
  long test_limit = 0;        // 0: all 10,000 test images
  std::vector<std::string> optimizers{"muon", "adamw", "sgd"};
  std::map<std::string, double> lr;  // fixed lr per optimizer (skips its sweep)
  std::string out_dir;
  std::string data_dir = fm::default_data_dir();
  bool plot = true;
  std::string plot_script;
};

const char* usage_text() {
  return R"(Usage: libtorch_fashion_mnist [flags]

Trains a small CNN (conv 3x3 16 - pool - conv 3x3 32 - pool - linear 10) on
Fashion-MNIST with libtorch, comparing the hybrid muon::torch optimizer (conv
filters on Muon; biases and the classifier on AdamW), torch::optim::AdamW and
torch::optim::SGD (Nesterov momentum 0.9). Each optimizer's lr comes from a
short sweep on a validation split held out of the training images; then every
optimizer trains with the same seeds. Prints a summary table and writes
<out>/runs.csv, <out>/epochs_<optimizer>.csv, <out>/sweep.csv,
<out>/summary.csv and <out>/curves.png.

  --quick               a small run for CI: 1 epoch on 12,800 training
                        images, 2,000 test images, 1 seed, no sweep (the
                        default lrs); other flags override these settings
  --epochs N            epochs per run (default 6)
  --seeds N             seeds 1..N per optimizer (default 3)
  --batch-size N        minibatch size (default 128)
  --optimizers LIST     any of muon,adamw,sgd (default muon,adamw,sgd)
  --sweep on|off        sweep the lr first (default on); off uses the default
                        lrs or --lr-NAME
  --sweep-subset N      training images in each one-epoch sweep run (default
                        20000)
  --lr-muon X, --lr-adamw X, --lr-sgd X
                        fixed lr for that optimizer (no sweep for it). muon's
                        lr is the Muon part's; its AdamW part runs at AdamW's
                        lr (swept, --lr-adamw, or its default 0.01)
  --val-size N          validation images held out of training (default 5000)
  --train-limit N       train on at most N images (default: all 55,000)
  --test-limit N        evaluate on the first N test images (default: all)
  --threads N           threads of libtorch (intra-op and, if it is OpenBLAS,
                        its BLAS) and of the Muon optimizer's Newton-Schulz
                        (default 1: on a machine whose cores are busy, more
                        threads spin-wait and run slower)
  --out DIR             output folder (default build/libtorch_fashion_mnist_out
                        if ./build exists, else ./libtorch_fashion_mnist_out)
  --data DIR            the gzipped IDX files (also --data-dir; default
                        $FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist)
  --plot on|off         run gnuplot on the CSVs (default on)
  --plot-script FILE    gnuplot script (default: plot.gp next to the sources)
  --help                this text
)";
}

[[noreturn]] void usage_error(const std::string& message) {
  throw std::invalid_argument(message + " (see --help)");
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ','))
    if (!item.empty()) items.push_back(item);
  return items;
}

long parse_long(const std::string& flag, const std::string& text, long min_value) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < min_value)
    usage_error(flag + ": expected an integer >= " + std::to_string(min_value) + ", got \"" + text +
                "\"");
  return v;
}

int parse_int(const std::string& flag, const std::string& text, int min_value) {
  const long v = parse_long(flag, text, min_value);
  if (v > 1000000) usage_error(flag + ": " + text + " is implausibly large");
  return static_cast<int>(v);
}

double parse_positive(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(v > 0) || !std::isfinite(v))
    usage_error(flag + ": expected a positive number, got \"" + text + "\"");
  return v;
}

bool parse_on_off(const std::string& flag, const std::string& text) {
  if (text == "on" || text == "true" || text == "1") return true;
  if (text == "off" || text == "false" || text == "0") return false;
  usage_error(flag + ": expected on or off, got \"" + text + "\"");
}

void apply_quick(Config& c) {
  c.epochs = 1;
  c.seeds = 1;
  c.sweep = false;
  c.train_limit = 12800;  // 100 steps of 128 per optimizer
  c.test_limit = 2000;
}

Config parse_args(int argc, char** argv) {
  Config c;
  // --quick sets defaults; every other flag overrides them, wherever it stands.
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--quick") apply_quick(c);
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(flag + ": missing value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::cout << usage_text();
      std::exit(0);
    } else if (flag == "--quick") {
      // handled above
    } else if (flag == "--epochs") {
      c.epochs = parse_int(flag, value(), 1);
    } else if (flag == "--seeds") {
      c.seeds = parse_int(flag, value(), 1);
    } else if (flag == "--batch-size") {
      c.batch_size = parse_int(flag, value(), 1);
    } else if (flag == "--optimizers") {
      c.optimizers = split_list(value());
      if (c.optimizers.empty()) usage_error("--optimizers: empty list");
      for (const auto& name : c.optimizers)
        if (name != "muon" && name != "adamw" && name != "sgd")
          usage_error("--optimizers: unknown optimizer \"" + name + "\" (muon, adamw, sgd)");
    } else if (flag == "--sweep") {
      c.sweep = parse_on_off(flag, value());
    } else if (flag == "--sweep-subset") {
      c.sweep_subset = parse_long(flag, value(), 1);
    } else if (flag == "--lr-muon" || flag == "--lr-adamw" || flag == "--lr-sgd") {
      c.lr[flag.substr(5)] = parse_positive(flag, value());
    } else if (flag == "--val-size") {
      c.val_size = parse_long(flag, value(), 1);
    } else if (flag == "--train-limit") {
      c.train_limit = parse_long(flag, value(), 1);
    } else if (flag == "--test-limit") {
      c.test_limit = parse_long(flag, value(), 1);
    } else if (flag == "--threads") {
      c.threads = parse_int(flag, value(), 1);
    } else if (flag == "--out") {
      c.out_dir = value();
    } else if (flag == "--data" || flag == "--data-dir") {
      c.data_dir = value();
    } else if (flag == "--plot") {
      c.plot = parse_on_off(flag, value());
    } else if (flag == "--plot-script") {
      c.plot_script = value();
    } else {
      usage_error("unknown flag \"" + flag + "\"");
    }
  }
  if (c.out_dir.empty())
    c.out_dir = std::filesystem::is_directory("build") ? "build/libtorch_fashion_mnist_out"
                                                       : "libtorch_fashion_mnist_out";
  return c;
}

// ---------------------------------------------------------------- data

/// One split: images (count x 1 x 28 x 28, float, standardized) and labels
/// (count, int64), as libtorch wants them.
struct Split {
  torch::Tensor x, y;
  std::int64_t size() const { return x.size(0); }
};

struct Data {
  Split train, val, test;
};

/// The data files are missing: says which, and how to get them.
class MissingData : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

Split load_split(const std::string& dir, const std::string& prefix) {
  const fm::IdxImages images = fm::read_idx_images(dir + "/" + prefix + "-images-idx3-ubyte.gz");
  const std::vector<int> labels = fm::read_idx_labels(dir + "/" + prefix + "-labels-idx1-ubyte.gz");
  if (static_cast<std::int64_t>(labels.size()) != images.count)
    throw fm::DataError(prefix + ": " + std::to_string(labels.size()) + " labels but " +
                        std::to_string(images.count) + " images");
  Split s;
  // from_blob borrows the bytes; the conversion to float makes the copy that
  // outlives them.
  s.x = torch::from_blob(const_cast<std::uint8_t*>(images.pixels.data()),
                         {images.count, 1, images.rows, images.cols}, torch::kUInt8)
            .to(torch::kFloat32)
            .div_(255.0);
  s.y = torch::tensor(std::vector<std::int64_t>(labels.begin(), labels.end()), torch::kInt64);
  return s;
}

Split take(const Split& s, const torch::Tensor& index) {
  return {s.x.index_select(0, index).contiguous(), s.y.index_select(0, index).contiguous()};
}

/// Loads train and test, holds out a fixed random validation set from the
/// training images (the same for every run, so sweeps are comparable), and
/// standardizes all splits with the training images' mean and std.
Data load_data(const Config& c) {
  namespace fs = std::filesystem;
  std::vector<std::string> missing;
  for (const char* name : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                           "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"})
    if (!fs::is_regular_file(fs::path(c.data_dir) / name)) missing.push_back(name);
  if (!missing.empty()) {
    std::string list;
    for (const auto& m : missing) list += " " + m;
    throw MissingData("Fashion-MNIST files missing in " + c.data_dir + ":" + list +
                      "\n  install them with: apt-get install dataset-fashion-mnist"
                      "\n  (or pass --data DIR / set FASHION_MNIST_DIR to a folder holding them)");
  }
  const Split full = load_split(c.data_dir, "train");
  Split test = load_split(c.data_dir, "t10k");
  if (c.val_size >= full.size())
    usage_error("--val-size: must be below the " + std::to_string(full.size()) +
                " training images");

  std::vector<std::int64_t> order(static_cast<std::size_t>(full.size()));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  std::mt19937_64 rng(0x5eed);  // fixed: the split does not change with --seeds
  std::shuffle(order.begin(), order.end(), rng);
  const auto all = torch::tensor(order, torch::kInt64);
  std::int64_t n_train = full.size() - c.val_size;
  if (c.train_limit > 0) n_train = std::min<std::int64_t>(n_train, c.train_limit);

  Data d;
  d.val = take(full, all.slice(0, 0, c.val_size));
  d.train = take(full, all.slice(0, c.val_size, c.val_size + n_train));
  if (c.test_limit > 0 && c.test_limit < test.size())
    test = take(test, torch::arange(c.test_limit, torch::kInt64));
  d.test = test;

  const double mean = d.train.x.mean().item<double>();
  const double stddev = d.train.x.std().item<double>();
  for (Split* s : {&d.train, &d.val, &d.test}) s->x.sub_(mean).div_(stddev);
  return d;
}

// ---------------------------------------------------------------- optimizers

/// CPU time of the whole process, in seconds: with one thread it is the
/// training loop's own time, unlike wall time unaffected by other jobs
/// competing for the cores.
double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

/// Keeps freed memory in the process. libtorch's CPU convolution allocates
/// and frees buffers of several MB (im2col, activations) at every call;
/// glibc's defaults hand such blocks back to the kernel and fault them in
/// again next time. Here that cost about 2x in wall time (a third of it
/// system time). Both thresholds have to be set: setting either one turns
/// off glibc's adaptive thresholds, and either alone ran 10x slower.
void tune_malloc() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum on 64-bit
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}

/// Sets the thread count of the BLAS libtorch calls, when it is OpenBLAS:
/// torch::set_num_threads does not reach it, and Debian's libtorch uses
/// OpenBLAS's pthread build, which runs one thread per core in every large
/// product (its idle thread spinning, so on a busy machine the "one-thread"
/// run took two cores and ran no faster). Looked up at run time, so nothing
/// changes for a libtorch built with another BLAS.
void set_blas_threads(int threads) {
  using SetThreads = void (*)(int);
  if (void* symbol = dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))
    reinterpret_cast<SetThreads>(symbol)(threads);
}

std::string format_double(double v, int precision = 4) {
  std::ostringstream s;
  s.precision(precision);
  s << v;
  return s.str();
}

struct RunSpec {
  std::string optimizer;  ///< muon, adamw or sgd
  double lr = 0;          ///< for muon: the Muon part's lr
  double adamw_lr = 0;    ///< muon only: the lr of its AdamW part
  std::uint64_t seed = 1;
  int epochs = 1;
  std::int64_t train_samples = 0;  ///< the first N training images
  bool print_routing = false;      ///< muon only: print make_hybrid's routing table
};

/// A fresh optimizer over `model`'s parameters, behind libtorch's common
/// interface, so one training loop serves all three.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const RunSpec& r, lfm::Cnn& model,
                                                        const Config& c) {
  if (r.optimizer == "sgd")
    return std::make_unique<torch::optim::SGD>(
        model->parameters(),
        torch::optim::SGDOptions(r.lr).momentum(0.9).nesterov(true).weight_decay(5e-4));
  if (r.optimizer == "adamw")  // libtorch's defaults: betas (0.9, 0.999), eps 1e-8, wd 0.01
    return std::make_unique<torch::optim::AdamW>(model->parameters(),
                                                 torch::optim::AdamWOptions(r.lr));
  // The hybrid: torch.optim.Muon's defaults (momentum 0.95 with Nesterov,
  // five Newton-Schulz steps, weight decay 0.1, lr adjusted by shape as in
  // the reference Muon) for the conv filters; AdamW with libtorch's defaults
  // apart from the lr for everything else.
  muon::torch::HybridOptions hybrid;
  hybrid.log = r.print_routing ? &std::cout : nullptr;
  hybrid.threads = c.threads;
  return std::make_unique<muon::torch::Muon>(muon::torch::make_hybrid(
      model->named_parameters(), muon::torch::MuonOptions(r.lr).adamw_lr(r.adamw_lr), hybrid));
}

/// The lr of every param group at the start of a run.
std::vector<double> base_lrs(torch::optim::Optimizer& opt) {
  std::vector<double> lrs;
  for (auto& group : opt.param_groups()) lrs.push_back(group.options().get_lr());
  return lrs;
}

/// Sets every group's lr to `factor` times its value at the start, through
/// libtorch's OptimizerOptions::set_lr, as libtorch's LR schedulers do. The
/// hybrid's MuonOptions::set_lr scales its AdamW part's lr by the same
/// factor, so this one call drives both halves (factor stays > 0 here: at
/// lr 0 the ratio would be lost).
void scale_lrs(torch::optim::Optimizer& opt, const std::vector<double>& base, double factor) {
  std::size_t i = 0;
  for (auto& group : opt.param_groups()) group.options().set_lr(base[i++] * factor);
}

// ---------------------------------------------------------------- training

struct Evaluation {
  double loss, accuracy;
};

Evaluation evaluate(lfm::Cnn& model, const Split& s) {
  torch::NoGradGuard no_grad;
  model->eval();
  double loss_sum = 0;
  std::int64_t correct = 0;
  // Batches of 250: libtorch's CPU convolution allocates its im2col buffers
  // per call, and at 1000 images they exceed glibc's mmap threshold, so
  // every batch pages fresh memory in (5x slower here).
  for (std::int64_t at = 0; at < s.size(); at += 250) {
    const auto end = std::min<std::int64_t>(at + 250, s.size());
    const auto logits = model->forward(s.x.slice(0, at, end));
    const auto y = s.y.slice(0, at, end);
    loss_sum +=
        torch::nn::functional::cross_entropy(
            logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
            .item<double>();
    correct += logits.argmax(1).eq(y).sum().item<std::int64_t>();
  }
  model->train();
  const auto n = static_cast<double>(s.size());
  return {loss_sum / n, static_cast<double>(correct) / n};
}

struct EpochLog {
  int epoch = 0;
  double train_loss = 0, val_loss = 0, val_accuracy = 0, test_loss = 0, test_accuracy = 0;
  double train_seconds = 0;          ///< cumulative wall time of the training steps
  double train_cpu_seconds = 0;      ///< their CPU time (all threads of the process)
  double optimizer_cpu_seconds = 0;  ///< the part of it spent in optimizer.step()
  std::int64_t steps = 0;            ///< cumulative
};

/// Trains a fresh model seeded with spec.seed (init and shuffling) with a
/// cosine decay of every lr to zero over the run; evaluates after each epoch
/// on the validation split and, when `with_test`, the test split. A run whose
/// loss stops being finite ends early with an infinite loss.
std::vector<EpochLog> train(const RunSpec& spec, const Config& c, const Data& d, bool with_test,
                            const std::string& label) {
  using clock = std::chrono::steady_clock;
  torch::manual_seed(spec.seed);
  lfm::Cnn model;
  auto opt = make_optimizer(spec, model, c);
  const std::vector<double> base = base_lrs(*opt);

  const std::int64_t n = std::min<std::int64_t>(spec.train_samples, d.train.size());
  const std::int64_t batch = std::min<std::int64_t>(c.batch_size, n);
  const std::int64_t steps_per_epoch = n / batch;  // the last partial batch is dropped
  const double total_steps = static_cast<double>(steps_per_epoch) * spec.epochs;
  const double pi = std::acos(-1.0);

  std::vector<EpochLog> logs;
  EpochLog log;
  for (int epoch = 1; epoch <= spec.epochs; ++epoch) {
    const auto order = torch::randperm(n, torch::kInt64);
    fm::ProgressBar bar(
        label + " epoch " + std::to_string(epoch) + "/" + std::to_string(spec.epochs),
        static_cast<long>(steps_per_epoch));
    double loss_sum = 0;
    for (std::int64_t s = 0; s < steps_per_epoch; ++s) {
      const auto index = order.slice(0, s * batch, (s + 1) * batch);
      const auto x = d.train.x.index_select(0, index);
      const auto y = d.train.y.index_select(0, index);
      const double progress = static_cast<double>(log.steps) / total_steps;
      scale_lrs(*opt, base, 0.5 * (1 + std::cos(pi * progress)));

      const auto start = clock::now();
      const double cpu_start = process_cpu_seconds();
      opt->zero_grad();
      const auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
      loss.backward();
      const double cpu_before_step = process_cpu_seconds();
      opt->step();
      const double cpu_end = process_cpu_seconds();
      log.train_seconds += std::chrono::duration<double>(clock::now() - start).count();
      log.train_cpu_seconds += cpu_end - cpu_start;
      log.optimizer_cpu_seconds += cpu_end - cpu_before_step;
      ++log.steps;

      const double value = loss.item<double>();
      if (!std::isfinite(value)) {
        loss_sum = std::numeric_limits<double>::infinity();
        break;  // diverged: a sweep marks this lr unusable
      }
      loss_sum += value;
      bar.update(static_cast<long>(s + 1), loss_sum / static_cast<double>(s + 1));
    }
    bar.finish();
    log.epoch = epoch;
    log.train_loss = loss_sum / static_cast<double>(steps_per_epoch);
    if (!std::isfinite(log.train_loss)) {
      log.val_loss = log.test_loss = std::numeric_limits<double>::infinity();
      log.val_accuracy = log.test_accuracy = 0;
      logs.push_back(log);
      break;
    }
    const Evaluation val = evaluate(model, d.val);
    log.val_loss = val.loss;
    log.val_accuracy = val.accuracy;
    if (with_test) {
      const Evaluation test = evaluate(model, d.test);
      log.test_loss = test.loss;
      log.test_accuracy = test.accuracy;
      std::cout << label << " epoch " << epoch << ": train loss " << format_double(log.train_loss)
                << ", test loss " << format_double(log.test_loss) << ", test accuracy "
                << format_double(100 * log.test_accuracy, 4) << "%, "
                << format_double(log.train_seconds, 3) << " s (CPU "
                << format_double(log.train_cpu_seconds, 3) << " s)\n"
                << std::flush;
    }
    logs.push_back(log);
  }
  return logs;
}

// ---------------------------------------------------------------- sweep

/// Four lrs a factor 3 apart, where the optimum of each optimizer usually is
/// for a small model like this one (muon: the Muon part's lr).
std::vector<double> sweep_grid(const std::string& optimizer) {
  if (optimizer == "adamw") return {1e-3, 3e-3, 1e-2, 3e-2};
  if (optimizer == "sgd") return {0.01, 0.03, 0.1, 0.3};
  return {0.01, 0.03, 0.1, 0.3};
}

/// The lr used without a sweep: what the default run's sweep chose (see
/// docs/fashion_mnist_libtorch.md).
double default_lr(const std::string& optimizer) {
  if (optimizer == "adamw") return 0.01;
  if (optimizer == "sgd") return 0.1;
  return 0.03;
}

/// Each optimizer's lr: fixed by a flag, swept, or the default. AdamW goes
/// first, so the hybrid's AdamW part runs at AdamW's own best lr and the
/// hybrid's sweep tunes its Muon lr alone.
std::map<std::string, double> choose_lrs(const Config& c, const Data& d) {
  std::ofstream csv(std::filesystem::path(c.out_dir) / "sweep.csv");
  csv << "optimizer,lr,adamw_part_lr,val_loss,val_accuracy\n";
  std::map<std::string, double> best;
  std::vector<std::string> order = c.optimizers;
  if (std::find(order.begin(), order.end(), "muon") != order.end() &&
      std::find(order.begin(), order.end(), "adamw") == order.end())
    order.push_back("adamw");  // the hybrid's AdamW part needs AdamW's lr
  std::stable_partition(order.begin(), order.end(),
                        [](const std::string& n) { return n == "adamw"; });
  for (const auto& name : order) {
    best[name] = c.lr.count(name) ? c.lr.at(name) : default_lr(name);
    const bool needed =
        std::find(c.optimizers.begin(), c.optimizers.end(), name) != c.optimizers.end() ||
        name == "adamw";
    if (!c.sweep || c.lr.count(name) || !needed) continue;
    const double adamw_lr = best.at("adamw");
    double best_loss = std::numeric_limits<double>::infinity();
    auto try_lr = [&](double lr) {
      RunSpec s;
      s.optimizer = name;
      s.lr = lr;
      s.adamw_lr = adamw_lr;
      s.seed = 1;
      s.epochs = 1;
      s.train_samples = c.sweep_subset;
      const EpochLog log =
          train(s, c, d, false, "sweep " + name + " lr " + format_double(lr)).back();
      std::cout << "  sweep " << name << " lr " << format_double(lr)
                << (name == "muon" ? " (AdamW part " + format_double(adamw_lr) + ")" : "")
                << ": val loss " << format_double(log.val_loss) << ", val accuracy "
                << format_double(100 * log.val_accuracy, 4) << "%\n"
                << std::flush;
      csv << name << ',' << lr << ',' << (name == "muon" ? adamw_lr : lr) << ',' << log.val_loss
          << ',' << log.val_accuracy << '\n';
      if (log.val_loss < best_loss) {
        best_loss = log.val_loss;
        best[name] = lr;
      }
    };
    const auto grid = sweep_grid(name);
    for (double lr : grid) try_lr(lr);
    // An optimum at the edge says only "at least this far out": go on that
    // way, a factor 3 a step, at most twice.
    double low = grid.front(), high = grid.back();
    for (int extra = 0; extra < 2; ++extra) {
      if (best[name] == high)
        try_lr(high *= 3);
      else if (best[name] == low)
        try_lr(low /= 3);
      else
        break;
    }
    if (best[name] == low || best[name] == high)
      std::cout << "  note: the best " << name << " lr is still at the edge of the swept range\n";
    std::cout << "  -> " << name << " lr " << format_double(best[name]) << "\n" << std::flush;
  }
  return best;
}

// ---------------------------------------------------------------- report

struct Stats {
  double mean = 0, stddev = 0, min = 0, max = 0;
};

Stats stats(const std::vector<double>& v) {
  Stats s;
  if (v.empty()) return s;
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  double ss = 0;
  for (double x : v) ss += (x - s.mean) * (x - s.mean);
  s.stddev = v.size() > 1 ? std::sqrt(ss / static_cast<double>(v.size() - 1)) : 0.0;
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  return s;
}

struct Result {
  std::string optimizer;
  double lr = 0, adamw_lr = 0;
  std::vector<std::vector<EpochLog>> seeds;  // [seed][epoch]
};

/// The last epoch's `field` over the seeds.
template <class Field>
std::vector<double> final_values(const Result& r, Field field) {
  std::vector<double> v;
  for (const auto& logs : r.seeds) v.push_back(field(logs.back()));
  return v;
}

void write_csvs(const Config& c, const std::vector<Result>& results) {
  namespace fs = std::filesystem;
  std::ofstream runs(fs::path(c.out_dir) / "runs.csv");
  runs << "optimizer,seed,lr,epoch,train_loss,val_loss,val_accuracy,test_loss,test_accuracy,"
          "train_seconds,train_cpu_seconds,optimizer_cpu_seconds,steps\n";
  for (const auto& r : results)
    for (std::size_t s = 0; s < r.seeds.size(); ++s)
      for (const auto& l : r.seeds[s])
        runs << r.optimizer << ',' << s + 1 << ',' << r.lr << ',' << l.epoch << ',' << l.train_loss
             << ',' << l.val_loss << ',' << l.val_accuracy << ',' << l.test_loss << ','
             << l.test_accuracy << ',' << l.train_seconds << ',' << l.train_cpu_seconds << ','
             << l.optimizer_cpu_seconds << ',' << l.steps << '\n';

  // Per optimizer and epoch, over the seeds (what plot.gp draws).
  for (const auto& r : results) {
    std::ofstream csv(fs::path(c.out_dir) / ("epochs_" + r.optimizer + ".csv"));
    csv << "epoch,train_loss_mean,test_loss_mean,test_loss_min,test_loss_max,"
           "test_accuracy_mean,test_accuracy_min,test_accuracy_max,train_seconds_mean\n";
    std::size_t epochs = r.seeds.front().size();
    for (const auto& logs : r.seeds) epochs = std::min(epochs, logs.size());
    for (std::size_t e = 0; e < epochs; ++e) {
      std::vector<double> train_loss, test_loss, test_acc, seconds;
      for (const auto& logs : r.seeds) {
        train_loss.push_back(logs[e].train_loss);
        test_loss.push_back(logs[e].test_loss);
        test_acc.push_back(logs[e].test_accuracy);
        seconds.push_back(logs[e].train_seconds);
      }
      const Stats tl = stats(test_loss), ta = stats(test_acc);
      csv << e + 1 << ',' << stats(train_loss).mean << ',' << tl.mean << ',' << tl.min << ','
          << tl.max << ',' << ta.mean << ',' << ta.min << ',' << ta.max << ','
          << stats(seconds).mean << '\n';
    }
  }
}

void print_summary(const Config& c, const std::vector<Result>& results) {
  // CPU time per step, whole step (forward, backward, optimizer) and the
  // optimizer's step() alone, relative to AdamW's.
  auto per_step = [](const EpochLog& l) {
    return l.train_cpu_seconds / static_cast<double>(l.steps);
  };
  auto opt_per_step = [](const EpochLog& l) {
    return l.optimizer_cpu_seconds / static_cast<double>(l.steps);
  };
  double adamw_step = 0, adamw_opt = 0;
  for (const auto& r : results)
    if (r.optimizer == "adamw") {
      adamw_step = stats(final_values(r, per_step)).mean;
      adamw_opt = stats(final_values(r, opt_per_step)).mean;
    }

  std::printf(
      "\n%d seed(s) x %d epoch(s); final test accuracy and loss: mean +- std [min..max];\n"
      "CPU time per training step and per optimizer step(), mean over the seeds\n",
      c.seeds, c.epochs);
  std::printf("%-6s %8s %30s %30s %9s %8s %9s %8s\n", "optim", "lr", "test accuracy (%)",
              "test loss", "ms/step", "vs AdamW", "step() us", "vs AdamW");
  std::ofstream summary(std::filesystem::path(c.out_dir) / "summary.csv");
  summary << "optimizer,lr,adamw_part_lr,seeds,epochs,test_accuracy_mean,test_accuracy_std,"
             "test_accuracy_min,test_accuracy_max,test_loss_mean,test_loss_std,test_loss_min,"
             "test_loss_max,cpu_ms_per_step,step_cost_vs_adamw,optimizer_step_cpu_us,"
             "optimizer_step_vs_adamw\n";
  for (const auto& r : results) {
    const Stats acc = stats(final_values(r, [](const EpochLog& l) { return l.test_accuracy; }));
    const Stats loss = stats(final_values(r, [](const EpochLog& l) { return l.test_loss; }));
    const double step = stats(final_values(r, per_step)).mean;
    const double opt = stats(final_values(r, opt_per_step)).mean;
    char acc_text[64], loss_text[64], step_ratio[16] = "-", opt_ratio[16] = "-";
    std::snprintf(acc_text, sizeof acc_text, "%.2f +- %.2f [%.2f..%.2f]", 100 * acc.mean,
                  100 * acc.stddev, 100 * acc.min, 100 * acc.max);
    std::snprintf(loss_text, sizeof loss_text, "%.4f +- %.4f [%.4f..%.4f]", loss.mean, loss.stddev,
                  loss.min, loss.max);
    if (adamw_step > 0) std::snprintf(step_ratio, sizeof step_ratio, "%.2fx", step / adamw_step);
    if (adamw_opt > 0) std::snprintf(opt_ratio, sizeof opt_ratio, "%.2fx", opt / adamw_opt);
    std::printf("%-6s %8.3g %30s %30s %9.2f %8s %9.0f %8s\n", r.optimizer.c_str(), r.lr, acc_text,
                loss_text, 1e3 * step, step_ratio, 1e6 * opt, opt_ratio);
    summary << r.optimizer << ',' << r.lr << ',' << r.adamw_lr << ',' << r.seeds.size() << ','
            << c.epochs << ',' << acc.mean << ',' << acc.stddev << ',' << acc.min << ',' << acc.max
            << ',' << loss.mean << ',' << loss.stddev << ',' << loss.min << ',' << loss.max << ','
            << 1e3 * step << ',' << (adamw_step > 0 ? step / adamw_step : 0) << ',' << 1e6 * opt
            << ',' << (adamw_opt > 0 ? opt / adamw_opt : 0) << '\n';
  }
  for (const auto& r : results)
    if (r.optimizer == "muon")
      std::printf("(muon: lr is the Muon part's; its AdamW part ran at %.3g)\n", r.adamw_lr);
}

std::string plot_script(const Config& c) {
  if (!c.plot_script.empty()) return c.plot_script;
#ifdef LIBTORCH_FASHION_MNIST_PLOT_SCRIPT
  return LIBTORCH_FASHION_MNIST_PLOT_SCRIPT;
#else
  return "";
#endif
}

/// `swept`: sweep.csv has rows.
void plot(const Config& c, bool swept) {
  const std::string script = plot_script(c);
  if (script.empty() || !std::filesystem::exists(script)) {
    std::cout << "plot: script " << (script.empty() ? "(none)" : script)
              << " not found; pass --plot-script examples/libtorch_fashion_mnist/plot.gp\n";
    return;
  }
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    std::cout << "plot: gnuplot not found, PNG skipped (Debian: apt-get install gnuplot-nox); "
                 "the CSVs are written\n";
    return;
  }
  std::string names;
  for (const auto& n : c.optimizers) names += (names.empty() ? "" : " ") + n;
  const std::string command = "gnuplot -e \"outdir='" + c.out_dir + "'; optimizers='" + names +
                              "'; seeds=" + std::to_string(c.seeds) +
                              "; epochs=" + std::to_string(c.epochs) +
                              "; swept=" + (swept ? "1" : "0") + "\" '" + script + "'";
  if (std::system(command.c_str()) == 0)
    std::cout << "plot: " << (std::filesystem::path(c.out_dir) / "curves.png").string() << "\n";
  else
    std::cout << "plot: gnuplot failed (command: " << command << ")\n";
}

int run(const Config& c) {
  tune_malloc();
  torch::set_num_threads(c.threads);
  set_blas_threads(c.threads);
  const auto start = std::chrono::steady_clock::now();
  const Data d = load_data(c);
  std::filesystem::create_directories(c.out_dir);
  std::cout << "Fashion-MNIST: " << d.train.size() << " train, " << d.val.size() << " validation, "
            << d.test.size() << " test images; libtorch " << TORCH_VERSION << ", "
            << torch::get_num_threads() << " thread(s)\n";

  // The routing table, once: which tensor goes to Muon and which to AdamW.
  if (std::find(c.optimizers.begin(), c.optimizers.end(), "muon") != c.optimizers.end()) {
    lfm::Cnn model;
    muon::torch::HybridOptions hybrid;
    hybrid.threads = c.threads;
    muon::torch::make_hybrid(model->named_parameters(), muon::torch::MuonOptions(), hybrid);
  }

  // A few untimed steps first: libtorch's first steps allocate and pick
  // kernels, which would otherwise be billed to whichever run came first.
  {
    RunSpec warmup;
    warmup.optimizer = "adamw";
    warmup.lr = 1e-3;
    warmup.train_samples = 20L * c.batch_size;
    train(warmup, c, d, false, "warm-up");
  }

  const auto lrs = choose_lrs(c, d);
  bool swept = false;
  for (const auto& name : c.optimizers) swept = swept || (c.sweep && !c.lr.count(name));
  std::vector<Result> results;
  for (const auto& name : c.optimizers)
    results.push_back({name, lrs.at(name), name == "muon" ? lrs.at("adamw") : 0.0, {}});
  // Seed by seed, each optimizer in turn: the machine's load, which drifts,
  // then falls on every optimizer alike.
  for (int seed = 1; seed <= c.seeds; ++seed)
    for (auto& r : results) {
      RunSpec spec;
      spec.optimizer = r.optimizer;
      spec.lr = r.lr;
      spec.adamw_lr = r.adamw_lr;
      spec.seed = static_cast<std::uint64_t>(seed);
      spec.epochs = c.epochs;
      spec.train_samples = d.train.size();
      r.seeds.push_back(train(spec, c, d, true, r.optimizer + " seed " + std::to_string(seed)));
    }
  write_csvs(c, results);
  print_summary(c, results);
  if (c.plot) plot(c, swept);
  std::cout << "outputs in " << c.out_dir << " (total "
            << format_double(
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
                   4)
            << " s)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const MissingData& e) {
    std::cerr << "libtorch_fashion_mnist: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "libtorch_fashion_mnist: error: " << e.what() << "\n";
    return 1;
  }
}
