// SPDX-License-Identifier: MIT
// Fashion-MNIST: an MLP trained with the hybrid of a Muon-family variant
// (Muon, NorMuon, AdaMuon) and AdamW, AdamW alone, and SGD with momentum,
// each at its own best learning rate from a short sweep on a held-out
// validation split, then over several seeds; per-epoch CSV logs, a summary
// table (mean and sample standard deviation over the seeds, with the CPU cost
// of an optimizer step) and a PNG of the curves. --width-transfer instead
// sweeps Muon's lr across widths and compares the optimum with
// muon::scale_to_width's prediction.
//
// Run with --help for the flags.

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <muon/muon.hpp>

#include "idx.hpp"
#include "mlp.hpp"
#include "optimizers.hpp"
#include "progress.hpp"

namespace fm = fashion_mnist;
using Scalar = float;
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

namespace {

// ---------------------------------------------------------------- options

/// Every optimizer the comparison knows, in the default order. muon, normuon
/// and adamuon are one hybrid (that variant on the hidden matrices, AdamW on
/// the rest) and carry the library's own names for muon::MuonVariant.
const std::vector<std::string>& known_optimizers() {
  static const std::vector<std::string> names{"muon", "normuon", "adamuon", "adamw", "sgd"};
  return names;
}

bool is_known_optimizer(const std::string& name) {
  const auto& names = known_optimizers();
  return std::find(names.begin(), names.end(), name) != names.end();
}

/// The Muon-family hybrids: a name that is a muon::MuonVariant.
bool is_hybrid(const std::string& name) { return muon::muon_variant_from_name(name).has_value(); }

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string text;
  for (const auto& item : items) text += (text.empty() ? "" : separator) + item;
  return text;
}

/// "seed 42" or "3 seeds: 42, 43, 44".
std::string seeds_text(const std::vector<std::uint64_t>& seeds) {
  std::vector<std::string> items;
  for (auto seed : seeds) items.push_back(std::to_string(seed));
  return seeds.size() == 1 ? "seed " + items.front()
                           : std::to_string(seeds.size()) + " seeds: " + join(items, ", ");
}

struct Config {
  int epochs = 3;
  int batch_size = 128;
  std::vector<int> widths{512, 512};
  std::uint64_t seed = 42;           ///< the first seed: data split, lr sweep, width transfer
  int seed_count = 3;                ///< seeds seed, seed+1, ... unless `seeds` is given
  std::vector<std::uint64_t> seeds;  ///< the full runs' seeds (resolved by parse_args)
  std::vector<std::string> optimizers = known_optimizers();
  bool lr_sweep = true;
  int sweep_points = 3;
  long sweep_subset = 10000;  // training samples per sweep run (1 epoch)
  long val_size = 5000;       // held out from the training set
  long train_limit = 0;       // 0 = the whole training split (for quick checks)
  int threads = 1;            // see --help: more threads only help on an idle machine
  bool width_transfer = false;
  std::vector<int> wt_widths{128, 256, 512, 1024};
  int wt_epochs = 1;
  long wt_subset = 6000;
  double wt_adam_lr = 1e-3;
  std::vector<double> wt_lrs;  // empty: a grid suited to muon_adjust
  bool muon_first_layer = false;
  std::string muon_adjust = "match_rms_adamw";
  std::map<std::string, double> lr;  // fixed lr per optimizer (skips its sweep)
  std::string out_dir;
  std::string data_dir = fm::default_data_dir();
  bool plot = true;
  std::string plot_script;
};

const char* usage_text() {
  return R"(Usage: fashion_mnist [flags]

Trains an MLP (784-<widths>-10, ReLU, softmax cross-entropy) on Fashion-MNIST
with each optimizer at its best swept learning rate (swept once, on the first
seed), then trains each once per seed and prints a table of the mean and the
sample standard deviation over the seeds. Writes <out>/<optimizer>_seed<S>.csv
(per seed), <out>/<optimizer>.csv (mean over the seeds), <out>/summary.csv,
<out>/lr_sweep.csv and <out>/curves.png.

Optimizers: muon, normuon, adamuon (hybrids: that muon::MuonVariant on the
hidden matrices, AdamW on the first and last layer and the biases), adamw
(every parameter to AdamW), sgd (Nesterov momentum).

  --epochs N            full-run epochs (default 3)
  --batch-size N        minibatch size (default 128)
  --widths A,B,...      hidden layer widths (default 512,512)
  --seed N              the first seed (default 42): it also fixes the
                        validation split and the lr sweep
  --seeds N | A,B,...   seeds of the full runs: a count N (without a comma:
                        --seed, --seed+1, ...; default 3) or a list (the
                        first one then replaces --seed; "7," is the single
                        seed 7). Each seed changes the initialization and
                        the batch order
  --optimizers LIST     any of muon,normuon,adamuon,adamw,sgd (default all five)
  --lr-sweep on|off     sweep the lr first (default on); off uses the defaults
                        or --lr-NAME
  --sweep-points N      lrs per sweep, a factor 3 apart (default 3); when the
                        best is at an edge the sweep goes on that way (<= 2 more)
  --sweep-subset N      training samples in each 1-epoch sweep run (default 10000)
  --val-size N          validation samples held out of training (default 5000)
  --train-limit N       use only N training samples (default all; for quick runs)
  --lr-NAME X           fixed lr for optimizer NAME (--lr-muon, --lr-normuon,
                        --lr-adamuon, --lr-adamw, --lr-sgd; no sweep for it).
                        A hybrid's AdamW part (first/last layer, biases) runs
                        at AdamW's best lr (--lr-adamw, the sweep's, or 1e-3);
                        the hybrid's own sweep and --lr-NAME set its Muon lr
  --muon-first-layer    route the first weight matrix to Muon too (every hybrid)
  --muon-adjust NAME    Muon lr adjustment by shape, for every hybrid:
                        match_rms_adamw (default, 0.2 sqrt(max(out, in)); also
                        AdaMuon's own), original, spectral, none
  --threads N           Eigen GEMM threads (default 1; needs OpenMP). On a
                        busy machine more threads spin-wait and run slower
  --width-transfer      instead of the comparison: sweep Muon's lr at several
                        widths and compare with muon::scale_to_width (first
                        seed only)
  --wt-widths A,B,...   widths for --width-transfer (default 128,256,512,1024)
  --wt-epochs N         epochs per width-transfer run (default 1)
  --wt-subset N         training samples per width-transfer run (default 6000)
  --wt-lrs A,B,...      Muon lr grid for --width-transfer (default
                        0.005,...,0.16 for match_rms_adamw, 0.02,...,0.64
                        for the other adjustments; factors of 2)
  --wt-adam-lr X        lr of the AdamW part in --width-transfer (default 1e-3)
  --out DIR             output folder (default build/fashion_mnist_out if
                        ./build exists, else ./fashion_mnist_out)
  --data-dir DIR        IDX files (default $FASHION_MNIST_DIR or
                        /usr/share/datasets/fashion-mnist)
  --plot on|off         run gnuplot on the CSVs (default on)
  --plot-script FILE    gnuplot script (default: the one next to the sources)
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
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < min_value)
    usage_error(flag + ": expected an integer >= " + std::to_string(min_value) + ", got \"" + text +
                "\"");
  return v;
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

std::vector<int> parse_int_list(const std::string& flag, const std::string& text) {
  std::vector<int> values;
  for (const auto& item : split_list(text))
    values.push_back(static_cast<int>(parse_long(flag, item, 1)));
  if (values.empty()) usage_error(flag + ": expected a comma-separated list of integers");
  return values;
}

Config parse_args(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(flag + ": missing value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::cout << usage_text();
      std::exit(0);
    } else if (flag == "--epochs") {
      c.epochs = static_cast<int>(parse_long(flag, value(), 1));
    } else if (flag == "--batch-size") {
      c.batch_size = static_cast<int>(parse_long(flag, value(), 1));
    } else if (flag == "--widths") {
      c.widths = parse_int_list(flag, value());
    } else if (flag == "--seed") {
      c.seed = static_cast<std::uint64_t>(parse_long(flag, value(), 0));
    } else if (flag == "--seeds") {
      const std::string text = value();
      c.seeds.clear();
      if (text.find(',') == std::string::npos) {
        c.seed_count = static_cast<int>(parse_long(flag, text, 1));
      } else {
        for (const auto& item : split_list(text)) {
          const auto seed = static_cast<std::uint64_t>(parse_long(flag, item, 0));
          if (std::find(c.seeds.begin(), c.seeds.end(), seed) != c.seeds.end())
            usage_error("--seeds: seed " + item + " is listed twice");
          c.seeds.push_back(seed);
        }
        if (c.seeds.empty()) usage_error("--seeds: empty list");
      }
    } else if (flag == "--optimizers") {
      c.optimizers.clear();
      for (const auto& name : split_list(value())) {
        if (!is_known_optimizer(name))
          usage_error("--optimizers: unknown optimizer \"" + name + "\" (" +
                      join(known_optimizers(), ", ") + ")");
        if (std::find(c.optimizers.begin(), c.optimizers.end(), name) != c.optimizers.end())
          usage_error("--optimizers: \"" + name + "\" is listed twice");
        c.optimizers.push_back(name);
      }
      if (c.optimizers.empty()) usage_error("--optimizers: empty list");
    } else if (flag == "--lr-sweep") {
      c.lr_sweep = parse_on_off(flag, value());
    } else if (flag == "--sweep-points") {
      c.sweep_points = static_cast<int>(parse_long(flag, value(), 1));
    } else if (flag == "--sweep-subset") {
      c.sweep_subset = parse_long(flag, value(), 1);
    } else if (flag == "--val-size") {
      c.val_size = parse_long(flag, value(), 1);
    } else if (flag == "--train-limit") {
      c.train_limit = parse_long(flag, value(), 1);
    } else if (flag.rfind("--lr-", 0) == 0 && is_known_optimizer(flag.substr(5))) {
      c.lr[flag.substr(5)] = parse_positive(flag, value());
    } else if (flag == "--muon-first-layer") {
      c.muon_first_layer = true;
    } else if (flag == "--muon-adjust") {
      c.muon_adjust = value();
      (void)muon::parse_name<muon::LrAdjust>(c.muon_adjust,
                                             "--muon-adjust");  // throws naming the choices
    } else if (flag == "--threads") {
      c.threads = static_cast<int>(parse_long(flag, value(), 1));
    } else if (flag == "--width-transfer") {
      c.width_transfer = true;
    } else if (flag == "--wt-widths") {
      c.wt_widths = parse_int_list(flag, value());
    } else if (flag == "--wt-epochs") {
      c.wt_epochs = static_cast<int>(parse_long(flag, value(), 1));
    } else if (flag == "--wt-subset") {
      c.wt_subset = parse_long(flag, value(), 1);
    } else if (flag == "--wt-lrs") {
      c.wt_lrs.clear();
      for (const auto& item : split_list(value())) c.wt_lrs.push_back(parse_positive(flag, item));
      if (c.wt_lrs.empty()) usage_error("--wt-lrs: expected a comma-separated list of lrs");
      std::sort(c.wt_lrs.begin(), c.wt_lrs.end());
    } else if (flag == "--wt-adam-lr") {
      c.wt_adam_lr = parse_positive(flag, value());
    } else if (flag == "--out") {
      c.out_dir = value();
    } else if (flag == "--data-dir") {
      c.data_dir = value();
    } else if (flag == "--plot") {
      c.plot = parse_on_off(flag, value());
    } else if (flag == "--plot-script") {
      c.plot_script = value();
    } else {
      usage_error("unknown flag \"" + flag + "\"");
    }
  }
  if (c.seeds.empty())
    for (int k = 0; k < c.seed_count; ++k)
      c.seeds.push_back(c.seed + static_cast<std::uint64_t>(k));
  c.seed = c.seeds.front();
  if (c.out_dir.empty())
    c.out_dir =
        std::filesystem::is_directory("build") ? "build/fashion_mnist_out" : "fashion_mnist_out";
  return c;
}

// ---------------------------------------------------------------- data

struct Splits {
  Matrix train_x, val_x, test_x;
  std::vector<int> train_y, val_y, test_y;
};

/// Holds out a seeded random validation set from the training images and
/// standardizes every split with the training split's pixel mean and std.
Splits prepare_data(const Config& c) {
  const fm::Dataset train = fm::load_split(c.data_dir, "train");
  const fm::Dataset test = fm::load_split(c.data_dir, "t10k");
  if (c.val_size >= train.size())
    usage_error("--val-size: must be below the " + std::to_string(train.size()) +
                " training images");
  std::vector<Eigen::Index> order(static_cast<std::size_t>(train.size()));
  std::iota(order.begin(), order.end(), Eigen::Index{0});
  std::mt19937_64 rng(c.seed ^ 0x5eedULL);
  std::shuffle(order.begin(), order.end(), rng);
  const Eigen::Index n_val = c.val_size;
  Eigen::Index n_train = train.size() - n_val;
  if (c.train_limit > 0) n_train = std::min<Eigen::Index>(n_train, c.train_limit);

  Splits s;
  const Eigen::Index features = train.images.rows();
  s.val_x.resize(features, n_val);
  s.train_x.resize(features, n_train);
  for (Eigen::Index j = 0; j < n_val; ++j) {
    s.val_x.col(j) = train.images.col(order[static_cast<std::size_t>(j)]);
    s.val_y.push_back(train.labels[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])]);
  }
  for (Eigen::Index j = 0; j < n_train; ++j) {
    const auto src = order[static_cast<std::size_t>(n_val + j)];
    s.train_x.col(j) = train.images.col(src);
    s.train_y.push_back(train.labels[static_cast<std::size_t>(src)]);
  }
  s.test_x = test.images;
  s.test_y = test.labels;

  const double mean = s.train_x.cast<double>().mean();
  const double var = (s.train_x.cast<double>().array() - mean).square().mean();
  const auto m = static_cast<Scalar>(mean);
  const auto inv_std = static_cast<Scalar>(1.0 / std::sqrt(var));
  for (Matrix* x : {&s.train_x, &s.val_x, &s.test_x}) x->array() = (x->array() - m) * inv_std;
  return s;
}

// ---------------------------------------------------------------- training

std::string format_double(double v, int precision = 4) {
  std::ostringstream s;
  s.precision(precision);
  s << v;
  return s.str();
}

struct RunSpec {
  std::string optimizer;
  double lr = 0;
  std::vector<int> widths;
  int epochs = 1;
  long train_samples = 0;   // first N of the (fixed) training order
  std::uint64_t seed = 42;  // initialization and batch order
  std::string adjust = "match_rms_adamw";
  double adam_lr = -1;  // AdamW part of the hybrid; <0 = the same lr
  bool muon_first_layer = false;
};

/// One epoch's evaluation; times and step counts are cumulative over the run.
struct EpochLog {
  int epoch;
  double train_loss, val_loss, val_accuracy, test_loss, test_accuracy, train_seconds;
  double train_cpu_seconds;  ///< CPU time of the training steps (robust on a shared machine)
  double step_cpu_seconds;   ///< the part of it spent inside the optimizer's step()
  long steps;                ///< optimizer steps taken
};

/// CPU time of this process in seconds; with one Eigen thread it is the
/// training loop's own time, unaffected by other jobs competing for cores.
double process_cpu_seconds() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

std::unique_ptr<fm::TrainOptimizer<Scalar>> make_optimizer(const RunSpec& r, fm::Mlp<Scalar>& model,
                                                           const muon::LrSchedule& schedule) {
  if (r.optimizer == "sgd") {
    typename fm::SgdMomentum<Scalar>::Options o;
    o.lr = r.lr;
    o.momentum = 0.9;
    o.nesterov = true;
    o.weight_decay = 5e-4;
    return std::make_unique<fm::SgdMomentum<Scalar>>(model.parameters(), o, schedule);
  }
  muon::AdamWOptions adam;  // torch defaults: betas (0.9, 0.999), eps 1e-8, wd 0.01
  adam.lr = r.lr;
  if (r.optimizer == "adamw")
    return std::make_unique<fm::LibraryOptimizer<Scalar>>(model.parameters(),
                                                          muon::MuonGroupOptions{}, adam,
                                                          std::set<fm::ParameterRole>{}, schedule);
  // The hybrids: torch.optim.Muon defaults (momentum 0.95 Nesterov, Jordan
  // NS5, wd 0.1) apart from the lr and its shape adjustment, in the variant
  // the name gives. The variants' own constants are the library's defaults
  // (NorMuon beta2 0.95, eps 1e-10; AdaMuon the authors' sign form, beta2
  // 0.95, eps 1e-8); AdaMuon's paper scales its lr as match_rms_adamw,
  // --muon-adjust's default.
  const auto variant = muon::muon_variant_from_name(r.optimizer);
  if (!variant) throw std::invalid_argument("unknown optimizer \"" + r.optimizer + "\"");
  muon::MuonGroupOptions muon_options = muon::MuonGroupOptions{}.with_variant(*variant);
  muon_options.lr = r.lr;
  muon_options.adjust_lr = muon::parse_name<muon::LrAdjust>(r.adjust, "--muon-adjust");
  if (r.adam_lr > 0) adam.lr = r.adam_lr;
  std::set<fm::ParameterRole> muon_roles{fm::ParameterRole::hidden_matrix};
  if (r.muon_first_layer) muon_roles.insert(fm::ParameterRole::input_matrix);
  return std::make_unique<fm::LibraryOptimizer<Scalar>>(model.parameters(), muon_options, adam,
                                                        muon_roles, schedule);
}

/// Trains a fresh, seeded model; evaluates after every epoch (validation and,
/// when `with_test`, test). Timing counts training steps only, and within
/// them the optimizer's step() separately. `show_routing` prints which
/// parameter goes to which update.
std::vector<EpochLog> train(const RunSpec& r, const Config& c, const Splits& d, bool with_test,
                            const std::string& label, bool show_routing) {
  std::vector<int> sizes{static_cast<int>(d.train_x.rows())};
  sizes.insert(sizes.end(), r.widths.begin(), r.widths.end());
  sizes.push_back(10);
  fm::Mlp<Scalar> model(sizes, r.seed);

  const Eigen::Index n = std::min<Eigen::Index>(r.train_samples, d.train_x.cols());
  const Eigen::Index batch = std::min<Eigen::Index>(c.batch_size, n);
  const long steps_per_epoch = static_cast<long>(n / batch);  // drop the ragged tail
  const long total_steps = steps_per_epoch * r.epochs;
  // Short linear warmup, cosine decay to zero: the same schedule for all.
  const auto schedule = muon::LrSchedule::warmup_cosine(std::max<long>(1, total_steps / 50),
                                                        std::max<long>(2, total_steps));
  auto optimizer = make_optimizer(r, model, schedule);
  if (show_routing)
    std::cout << "routing of " << r.optimizer << ":\n" << optimizer->routing_table();

  std::vector<Eigen::Index> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), Eigen::Index{0});
  std::mt19937_64 rng(r.seed + 1);
  Matrix xb(d.train_x.rows(), batch);
  std::vector<int> yb(static_cast<std::size_t>(batch));
  std::vector<EpochLog> logs;
  double seconds = 0, cpu_seconds = 0, step_cpu_seconds = 0;
  long steps = 0;
  for (int epoch = 1; epoch <= r.epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    fm::ProgressBar bar(label + " epoch " + std::to_string(epoch) + "/" + std::to_string(r.epochs),
                        steps_per_epoch);
    double loss_sum = 0;
    const auto start = std::chrono::steady_clock::now();
    const double cpu_start = process_cpu_seconds();
    for (long s = 0; s < steps_per_epoch; ++s) {
      for (Eigen::Index j = 0; j < batch; ++j) {
        const auto src = order[static_cast<std::size_t>(s * batch + j)];
        xb.col(j) = d.train_x.col(src);
        yb[static_cast<std::size_t>(j)] = d.train_y[static_cast<std::size_t>(src)];
      }
      const double loss = model.loss_and_gradient(xb, yb.data());
      if (!std::isfinite(loss)) {
        loss_sum = std::numeric_limits<double>::infinity();
        break;  // diverged: the sweep marks this lr as unusable
      }
      const double step_start = process_cpu_seconds();
      optimizer->step();
      step_cpu_seconds += process_cpu_seconds() - step_start;
      ++steps;
      loss_sum += loss;
      bar.update(s + 1, loss_sum / static_cast<double>(s + 1));
    }
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    cpu_seconds += process_cpu_seconds() - cpu_start;
    bar.finish();
    EpochLog log{};  // the evaluations follow
    log.epoch = epoch;
    log.train_loss = loss_sum / static_cast<double>(steps_per_epoch);
    log.train_seconds = seconds;
    log.train_cpu_seconds = cpu_seconds;
    log.step_cpu_seconds = step_cpu_seconds;
    log.steps = steps;
    if (!std::isfinite(log.train_loss)) {
      log.val_loss = log.test_loss = std::numeric_limits<double>::infinity();
      logs.push_back(log);
      break;
    }
    const auto val = model.evaluate(d.val_x, d.val_y);
    log.val_loss = val.loss;
    log.val_accuracy = val.accuracy;
    if (with_test) {
      const auto test = model.evaluate(d.test_x, d.test_y);
      log.test_loss = test.loss;
      log.test_accuracy = test.accuracy;
      std::cout << label << " epoch " << epoch << ": train loss " << format_double(log.train_loss)
                << ", val loss " << format_double(log.val_loss) << ", test accuracy "
                << format_double(100 * log.test_accuracy, 4) << "%, "
                << format_double(log.train_seconds, 3) << " s (CPU "
                << format_double(log.train_cpu_seconds, 3) << " s, of it optimizer step "
                << format_double(log.step_cpu_seconds, 3) << " s)\n"
                << std::flush;
    }
    logs.push_back(log);
  }
  return logs;
}

/// The sweep grid: `points` lrs a factor 3 apart, centred on a default that
/// suits the optimizer (chosen so the usual optimum is inside the grid). For
/// the hybrids the centre depends on the shape adjustment: match_rms_adamw
/// scales a 512 x 512 matrix's lr by 0.2 sqrt(512) = 4.5, original by 1. One
/// centre fits all three variants: NorMuon and AdaMuon rescale their update
/// to (about) the Frobenius norm of Muon's.
std::vector<double> sweep_grid(const std::string& optimizer, const std::string& adjust,
                               int points) {
  const double centre = optimizer == "sgd"            ? 0.03
                        : optimizer == "adamw"        ? 1e-3
                        : adjust == "match_rms_adamw" ? 0.03
                                                      : 0.1;
  std::vector<double> grid;
  for (int k = 0; k < points; ++k) grid.push_back(centre * std::pow(3.0, k - (points - 1) / 2.0));
  return grid;
}

// ---------------------------------------------------------------- modes

/// Mean, sample standard deviation (n - 1 in the denominator; 0 for a single
/// value), minimum and maximum of a set of values (one per seed).
struct Spread {
  std::size_t n = 0;
  double mean = 0, std = 0, min = 0, max = 0;
};

Spread spread_of(const std::vector<double>& values) {
  Spread s;
  s.n = values.size();
  if (values.empty()) return s;
  s.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(s.n);
  double squares = 0;
  for (double v : values) squares += (v - s.mean) * (v - s.mean);
  s.std = s.n > 1 ? std::sqrt(squares / static_cast<double>(s.n - 1)) : 0.0;
  const auto [low, high] = std::minmax_element(values.begin(), values.end());
  s.min = *low;
  s.max = *high;
  return s;
}

/// "mean +- std" with `decimals` digits after the point; the mean alone for one value.
std::string mean_pm(const Spread& s, int decimals) {
  char text[80];
  if (s.n > 1)
    std::snprintf(text, sizeof text, "%.*f +- %.*f", decimals, s.mean, decimals, s.std);
  else
    std::snprintf(text, sizeof text, "%.*f", decimals, s.mean);
  return text;
}

/// The per-epoch CSV columns after "epoch" (then "steps"), one table for the
/// per-seed files and the files of means.
struct EpochColumn {
  const char* name;
  double EpochLog::*field;
};
constexpr EpochColumn epoch_columns[] = {
    {"train_loss", &EpochLog::train_loss},         {"val_loss", &EpochLog::val_loss},
    {"val_accuracy", &EpochLog::val_accuracy},     {"test_loss", &EpochLog::test_loss},
    {"test_accuracy", &EpochLog::test_accuracy},   {"train_time_s", &EpochLog::train_seconds},
    {"train_cpu_s", &EpochLog::train_cpu_seconds}, {"step_cpu_s", &EpochLog::step_cpu_seconds}};

void write_epoch_csv(const std::filesystem::path& file, const std::vector<EpochLog>& logs) {
  std::ofstream csv(file);
  csv << "epoch";
  for (const auto& column : epoch_columns) csv << ',' << column.name;
  csv << ",steps\n";
  for (const auto& l : logs) {
    csv << l.epoch;
    for (const auto& column : epoch_columns) csv << ',' << l.*column.field;
    csv << ',' << l.steps << '\n';
  }
}

/// Per epoch: the mean over the seeds of every column, the number of seeds
/// that reached the epoch, then every column's sample standard deviation
/// (0 with one seed).
void write_mean_csv(const std::filesystem::path& file,
                    const std::vector<std::vector<EpochLog>>& per_seed) {
  std::ofstream csv(file);
  csv << "epoch";
  for (const auto& column : epoch_columns) csv << ',' << column.name;
  csv << ",steps,seeds";
  for (const auto& column : epoch_columns) csv << ',' << column.name << "_std";
  csv << '\n';
  std::size_t epochs = 0;
  for (const auto& logs : per_seed) epochs = std::max(epochs, logs.size());
  for (std::size_t e = 0; e < epochs; ++e) {
    std::vector<const EpochLog*> rows;
    for (const auto& logs : per_seed)
      if (e < logs.size()) rows.push_back(&logs[e]);
    std::vector<Spread> spreads;
    for (const auto& column : epoch_columns) {
      std::vector<double> values;
      for (const EpochLog* row : rows) values.push_back(row->*column.field);
      spreads.push_back(spread_of(values));
    }
    std::vector<double> steps;
    for (const EpochLog* row : rows) steps.push_back(static_cast<double>(row->steps));
    csv << e + 1;
    for (const auto& s : spreads) csv << ',' << s.mean;
    csv << ',' << spread_of(steps).mean << ',' << rows.size();
    for (const auto& s : spreads) csv << ',' << s.std;
    csv << '\n';
  }
}

/// Every hybrid's AdamW part runs at AdamW's lr: the sweep's best (or
/// --lr-adamw) when AdamW is compared, else --lr-adamw, else 1e-3.
double adamw_part_lr(const Config& c, const std::map<std::string, double>& best_lr) {
  if (best_lr.count("adamw")) return best_lr.at("adamw");
  return c.lr.count("adamw") ? c.lr.at("adamw") : 1e-3;
}

RunSpec comparison_spec(const Config& c, const std::string& name, double lr, double adam_lr) {
  RunSpec spec;
  spec.optimizer = name;
  spec.lr = lr;
  spec.widths = c.widths;
  spec.seed = c.seed;
  spec.adjust = c.muon_adjust;
  spec.adam_lr = is_hybrid(name) ? adam_lr : -1;
  spec.muon_first_layer = c.muon_first_layer;
  return spec;
}

/// Phase 1: the lr of each optimizer, on the first seed. AdamW goes first:
/// each hybrid's AdamW part (first and last layer, biases) then runs at
/// AdamW's own best lr, and the hybrid's sweep tunes its Muon lr alone.
/// Writes <out>/lr_sweep.csv.
std::map<std::string, double> sweep_learning_rates(const Config& c, const Splits& d) {
  std::ofstream sweep_csv;
  if (c.lr_sweep) {
    sweep_csv.open(std::filesystem::path(c.out_dir) / "lr_sweep.csv");
    sweep_csv << "optimizer,lr,adamw_part_lr,val_loss,val_accuracy\n";
  }
  std::map<std::string, double> best_lr;
  std::vector<std::string> order = c.optimizers;
  std::stable_partition(order.begin(), order.end(),
                        [](const std::string& n) { return n == "adamw"; });
  for (const auto& name : order) {
    const double adam_lr = adamw_part_lr(c, best_lr);
    const auto grid = sweep_grid(name, c.muon_adjust, c.sweep_points);
    best_lr[name] = c.lr.count(name) ? c.lr.at(name) : grid[grid.size() / 2];
    if (!c.lr_sweep || c.lr.count(name)) continue;
    double best_loss = std::numeric_limits<double>::infinity();
    auto try_lr = [&](double lr) {
      RunSpec s = comparison_spec(c, name, lr, adam_lr);
      s.epochs = 1;
      s.train_samples = c.sweep_subset;
      const auto log =
          train(s, c, d, false, "sweep " + name + " lr " + format_double(lr), false).back();
      std::cout << "  sweep " << name << " lr " << format_double(lr)
                << (is_hybrid(name) ? " (AdamW part " + format_double(adam_lr) + ")" : "")
                << ": val loss " << format_double(log.val_loss) << ", val accuracy "
                << format_double(100 * log.val_accuracy, 3) << "%\n"
                << std::flush;
      sweep_csv << name << ',' << lr << ',' << (is_hybrid(name) ? adam_lr : lr) << ','
                << log.val_loss << ',' << log.val_accuracy << '\n';
      if (log.val_loss < best_loss) {
        best_loss = log.val_loss;
        best_lr[name] = lr;
      }
    };
    for (double lr : grid) try_lr(lr);
    // An optimum on the edge of the grid says only "at least this far out":
    // extend the grid that way (a factor 3 per step, at most twice).
    double low = grid.front(), high = grid.back();
    for (int extra = 0; extra < 2 && grid.size() > 1; ++extra) {
      if (best_lr[name] == high)
        try_lr(high *= 3);
      else if (best_lr[name] == low)
        try_lr(low /= 3);
      else
        break;
    }
    if (grid.size() > 1 && (best_lr[name] == low || best_lr[name] == high))
      std::cout << "  note: best " << name << " lr is still at the edge of the swept range\n";
    std::cout << "  -> " << name << " best lr " << format_double(best_lr[name]) << "\n";
  }
  return best_lr;
}

/// One summary figure per seed of a run (its last epoch), with its CSV name
/// and how the table prints it.
struct Metric {
  const char* column;
  const char* title;
  int decimals;
  std::vector<double> values;  // one per seed; empty when not measured
};

int run_comparison(const Config& c, const Splits& d) {
  namespace fs = std::filesystem;
  const auto best_lr = sweep_learning_rates(c, d);
  const double adam_lr = adamw_part_lr(c, best_lr);

  // Phase 2: the full runs, seed by seed, each seed running every optimizer
  // in the order asked for: a change in the machine's load over the run then
  // falls on every optimizer alike.
  std::map<std::string, std::vector<std::vector<EpochLog>>> runs;  // per optimizer, per seed
  for (std::size_t k = 0; k < c.seeds.size(); ++k) {
    for (const auto& name : c.optimizers) {
      RunSpec spec = comparison_spec(c, name, best_lr.at(name), adam_lr);
      spec.seed = c.seeds[k];
      spec.epochs = c.epochs;
      spec.train_samples = d.train_x.cols();
      auto logs = train(spec, c, d, true, name + " seed " + std::to_string(spec.seed), k == 0);
      write_epoch_csv(fs::path(c.out_dir) / (name + "_seed" + std::to_string(spec.seed) + ".csv"),
                      logs);
      runs[name].push_back(std::move(logs));
    }
  }
  for (const auto& name : c.optimizers)
    write_mean_csv(fs::path(c.out_dir) / (name + ".csv"), runs[name]);

  // The summary: last epoch of every run, mean and spread over the seeds.
  // Costs come from CPU time (on a shared machine wall time also measures
  // the neighbours); the step cost is the optimizer's step() alone, per
  // step, over AdamW's at the same seed.
  auto measure = [&](const std::string& name) {
    std::vector<Metric> m{{"train_loss", "train loss", 4, {}},
                          {"val_loss", "val loss", 4, {}},
                          {"test_accuracy", "test acc (%)", 2, {}},
                          {"step_cpu_ms", "step CPU (ms)", 2, {}},
                          {"step_cost_vs_adamw", "step cost vs AdamW", 2, {}},
                          {"train_cpu_s", "train CPU (s)", 1, {}},
                          {"train_time_s", "wall (s)", 1, {}}};
    for (std::size_t k = 0; k < c.seeds.size(); ++k) {
      const EpochLog& last = runs.at(name)[k].back();
      const double step_ms = 1e3 * last.step_cpu_seconds / static_cast<double>(last.steps);
      m[0].values.push_back(last.train_loss);
      m[1].values.push_back(last.val_loss);
      m[2].values.push_back(100 * last.test_accuracy);
      m[3].values.push_back(step_ms);
      if (runs.count("adamw")) {
        const EpochLog& adamw = runs.at("adamw")[k].back();
        m[4].values.push_back(step_ms /
                              (1e3 * adamw.step_cpu_seconds / static_cast<double>(adamw.steps)));
      }
      m[5].values.push_back(last.train_cpu_seconds);
      m[6].values.push_back(last.train_seconds);
    }
    return m;
  };
  std::map<std::string, std::vector<Metric>> metrics;
  for (const auto& name : c.optimizers) metrics[name] = measure(name);
  const auto& columns = metrics.at(c.optimizers.front());

  // The table: cells first, then every column as wide as its widest cell.
  std::vector<std::vector<std::string>> table{{"optimizer", "best lr"}};
  for (const auto& metric : columns) table[0].push_back(metric.title);
  std::ofstream summary(fs::path(c.out_dir) / "summary.csv");
  summary << "optimizer,best_lr,adamw_part_lr,seeds";
  for (const auto& metric : columns)
    for (const char* stat : {"mean", "std", "min", "max"})
      summary << ',' << metric.column << '_' << stat;
  summary << '\n';
  for (const auto& name : c.optimizers) {
    table.push_back({name, format_double(best_lr.at(name), 3)});
    summary << name << ',' << best_lr.at(name) << ','
            << (is_hybrid(name) ? format_double(adam_lr, 6) : "") << ',' << c.seeds.size();
    for (const auto& metric : metrics.at(name)) {
      if (metric.values.empty()) {  // no AdamW run to compare with
        table.back().push_back("-");
        summary << ",,,,";
        continue;
      }
      const Spread s = spread_of(metric.values);
      table.back().push_back(mean_pm(s, metric.decimals));
      summary << ',' << s.mean << ',' << s.std << ',' << s.min << ',' << s.max;
    }
    summary << '\n';
  }
  std::vector<std::size_t> widths(table[0].size(), 0);
  for (const auto& row : table)
    for (std::size_t j = 0; j < row.size(); ++j) widths[j] = std::max(widths[j], row[j].size());
  std::printf("\n%s; mean +- sample standard deviation over the seeds\n",
              seeds_text(c.seeds).c_str());
  for (const auto& row : table) {
    for (std::size_t j = 0; j < row.size(); ++j)
      std::printf(j == 0 ? "%-*s" : "  %*s", static_cast<int>(widths[j]), row[j].c_str());
    std::printf("\n");
  }
  for (const auto& name : c.optimizers) {
    std::printf("%-9s test accuracy per seed (%%):", name.c_str());
    for (const auto& logs : runs.at(name)) std::printf(" %.2f", 100 * logs.back().test_accuracy);
    std::printf("\n");
  }
  std::vector<std::string> hybrids;
  std::copy_if(c.optimizers.begin(), c.optimizers.end(), std::back_inserter(hybrids), is_hybrid);
  if (!hybrids.empty())
    std::printf("(%s: the best lr is the Muon lr; the AdamW part ran at %.3g)\n",
                join(hybrids, ", ").c_str(), adam_lr);
  return 0;
}

int run_width_transfer(const Config& c, const Splits& d) {
  namespace fs = std::filesystem;
  // Muon lr grid, a factor 2 apart. The adjustment decides where the
  // optimum sits: "original" leaves square hidden matrices at the raw lr,
  // match_rms_adamw multiplies it by 0.2 sqrt(width).
  std::vector<double> grid = c.wt_lrs;
  if (grid.empty())
    grid = c.muon_adjust == "match_rms_adamw"
               ? std::vector<double>{0.005, 0.01, 0.02, 0.04, 0.08, 0.16}
               : std::vector<double>{0.02, 0.04, 0.08, 0.16, 0.32, 0.64};
  std::ofstream csv(fs::path(c.out_dir) / ("width_transfer_" + c.muon_adjust + ".csv"));
  csv << "width,lr,val_loss,val_accuracy,kind\n";
  auto run = [&](int width, double lr, const char* kind) {
    RunSpec s;
    s.optimizer = "muon";
    s.lr = lr;
    s.widths = std::vector<int>(c.widths.size(), width);
    s.epochs = c.wt_epochs;
    s.train_samples = c.wt_subset;
    s.adjust = c.muon_adjust;
    s.seed = c.seed;
    s.adam_lr = c.wt_adam_lr;
    s.muon_first_layer = c.muon_first_layer;
    const auto log =
        train(s, c, d, false, "width " + std::to_string(width) + " lr " + format_double(lr), false)
            .back();
    csv << width << ',' << lr << ',' << log.val_loss << ',' << log.val_accuracy << ',' << kind
        << '\n';
    std::cout << "  width " << width << " lr " << format_double(lr) << " (" << kind
              << "): val loss " << format_double(log.val_loss) << "\n"
              << std::flush;
    return log.val_loss;
  };

  struct Row {
    int width;
    double best_lr, best_loss;
  };
  std::vector<Row> rows;
  for (int width : c.wt_widths) {
    Row row{width, grid.front(), std::numeric_limits<double>::infinity()};
    for (double lr : grid) {
      const double loss = run(width, lr, "grid");
      if (loss < row.best_loss) {
        row.best_loss = loss;
        row.best_lr = lr;
      }
    }
    rows.push_back(row);
  }

  // Transfer from the first width: the library's rule scales lr by
  // sqrt(base_width / width). Check it against the measured optimum, and
  // against keeping the base lr unchanged.
  const muon::WidthTransferConfig base{rows.front().best_lr, 0, 0.95, 5, rows.front().width};
  std::vector<double> scaled_lr, loss_scaled, loss_unscaled;
  for (const auto& row : rows) {
    scaled_lr.push_back(muon::scale_to_width(base, row.width).lr);
    const bool is_base = row.width == rows.front().width;
    loss_scaled.push_back(is_base ? row.best_loss : run(row.width, scaled_lr.back(), "scaled"));
    loss_unscaled.push_back(is_base ? row.best_loss : run(row.width, base.lr, "base"));
  }
  std::printf(
      "\nwidth transfer of the Muon lr (hidden matrices, adjust_lr %s; AdamW part at lr "
      "%.3g; base width %d, its best lr %.4g; scaled = muon::scale_to_width)\n",
      c.muon_adjust.c_str(), c.wt_adam_lr, rows.front().width, base.lr);
  std::printf("%6s %9s %14s %10s %16s %17s\n", "width", "best lr", "val loss@best", "scaled lr",
              "val loss@scaled", "val loss@base lr");
  for (std::size_t i = 0; i < rows.size(); ++i)
    std::printf("%6d %9.4g %14.4f %10.4g %16.4f %17.4f\n", rows[i].width, rows[i].best_lr,
                rows[i].best_loss, scaled_lr[i], loss_scaled[i], loss_unscaled[i]);
  if (std::any_of(rows.begin(), rows.end(), [&](const Row& r) {
        return r.best_lr == grid.front() || r.best_lr == grid.back();
      }))
    std::printf("note: some optimum lies at the edge of the grid; widen it with --wt-lrs\n");
  return 0;
}

/// Runs gnuplot on `script` with `variables` (gnuplot -e assignments);
/// explains and returns false when gnuplot or the script is missing.
bool run_gnuplot(const std::string& script, const std::string& variables) {
  if (script.empty() || !std::filesystem::exists(script)) {
    std::cout << "plot: script " << (script.empty() ? "(none)" : script)
              << " not found; pass --plot-script examples/fashion_mnist/plot.gp\n";
    return false;
  }
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    std::cout << "plot: gnuplot not found (Debian: apt-get install gnuplot-nox); the CSVs are "
                 "written\n";
    return false;
  }
  const std::string command = "gnuplot -e \"" + variables + "\" '" + script + "'";
  if (std::system(command.c_str()) == 0) return true;
  std::cout << "plot: gnuplot failed (command: " << command << ")\n";
  return false;
}

std::string curves_script(const Config& c) {
  if (!c.plot_script.empty()) return c.plot_script;
#ifdef FASHION_MNIST_PLOT_SCRIPT
  return FASHION_MNIST_PLOT_SCRIPT;
#else
  return "";
#endif
}

void plot_curves(const Config& c) {
  if (run_gnuplot(curves_script(c), "outdir='" + c.out_dir + "'; optimizers='" +
                                        join(c.optimizers, " ") +
                                        "'; seeds=" + std::to_string(c.seeds.size())))
    std::cout << "plot: " << (std::filesystem::path(c.out_dir) / "curves.png").string() << "\n";
}

void plot_width_transfer(const Config& c) {
  // The width-transfer script lives next to the curves script.
  const std::string base = curves_script(c);
  if (base.empty()) return;
  const auto script = std::filesystem::path(base).parent_path() / "plot_width_transfer.gp";
  const auto dir = std::filesystem::path(c.out_dir);
  const std::string csv = (dir / ("width_transfer_" + c.muon_adjust + ".csv")).string();
  const std::string png = (dir / ("width_transfer_" + c.muon_adjust + ".png")).string();
  std::string widths;
  for (int w : c.wt_widths) widths += (widths.empty() ? "" : " ") + std::to_string(w);
  if (run_gnuplot(script.string(), "csv='" + csv + "'; png='" + png + "'; widths='" + widths + "'"))
    std::cout << "plot: " << png << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Config c = parse_args(argc, argv);
    Eigen::setNbThreads(c.threads);
    std::filesystem::create_directories(c.out_dir);
    const auto start = std::chrono::steady_clock::now();
    const Splits d = prepare_data(c);
    std::cout << "Fashion-MNIST: " << d.train_x.cols() << " train, " << d.val_x.cols()
              << " validation, " << d.test_x.cols() << " test images; Eigen threads "
              << Eigen::nbThreads() << "; "
              << (c.width_transfer ? "seed " + std::to_string(c.seed) : seeds_text(c.seeds))
              << "\n";
    const int rc = c.width_transfer ? run_width_transfer(c, d) : run_comparison(c, d);
    if (c.plot) c.width_transfer ? plot_width_transfer(c) : plot_curves(c);
    std::cout
        << "outputs in " << c.out_dir << " (total "
        << format_double(
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 3)
        << " s)\n";
    return rc;
  } catch (const std::exception& e) {
    std::cerr << "fashion_mnist: error: " << e.what() << "\n";
    return 1;
  }
}
