// SPDX-License-Identifier: MIT
// A byte-level GPT (gpt.hpp) trained on Debian's fortunes (text.hpp) with
// libtorch's C++ frontend, to measure what Muon is for on the workload it was
// made for:
//  - the hybrid muon::torch optimizer (Muon on the attention and MLP
//    matrices, AdamW on embeddings, head, gains and biases), the same with
//    NorMuon, and torch::optim::AdamW, each at its best lr from a sweep,
//    over several seeds;
//  - the table of "Practical Efficiency of Muon for Pretraining" (arXiv
//    2505.02222): time per step (interleaved timing, median), steps to
//    AdamW's final validation loss, wall-clock to it, Muon/AdamW ratios;
//  - width transfer: the best lr at three widths, Muon's lr-by-shape rule on
//    and off, and AdamW's;
//  - QK-Clip: the attention's largest logit per layer at a high Muon lr,
//    with and without clipping, and per-head orthogonalization of the fused
//    QKV.
// Writes CSV files and gnuplot PNGs; scripts/transformer_lm.sh builds, runs
// and turns them into docs/transformer_lm.md. Run with --help for the flags.

#include <dlfcn.h>
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
#include <functional>
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

#include "../fashion_mnist/progress.hpp"
#include "gpt.hpp"
#include "text.hpp"

namespace tlm = transformer_lm;

namespace {

using clock_type = std::chrono::steady_clock;
constexpr double kInf = std::numeric_limits<double>::infinity();

// ---------------------------------------------------------------- options

struct Config {
  tlm::GptConfig model;
  int batch = 8;        // sequences per step
  int steps = 200;      // the step budget of every main run
  int warmup = -1;      // linear warmup steps (-1: a tenth of the run)
  int eval_every = 10;  // validation loss every N steps
  int val_seqs = 32;    // fixed validation sequences
  int seeds = 3;        // seeds 1..N per optimizer
  int threads = 1;      // libtorch's, OpenBLAS's and the hybrid's
  std::vector<std::string> optimizers{"muon", "normuon", "adamw"};
  std::map<std::string, double> lr;                 // fixed lr (no sweep)
  std::map<std::string, std::vector<double>> grid;  // sweep grids
  bool sweep = true;
  std::string qkv = "split";  // the hybrid's fused QKV: whole, split (Q, K, V) or heads
  int timing_reps = 40;
  bool width = true;
  std::vector<int> widths{32, 64, 128};
  int width_steps = 0;  // 0: --steps
  std::vector<std::string> width_rules{"original", "none"};
  bool qk = true;
  double qk_lr = 0;  // 0: qk_lr_factor x the hybrid's chosen lr
  double qk_lr_factor = 8;
  double qk_tau = 100;
  std::vector<std::string> qk_arms{"none", "clip", "heads", "heads-clip"};
  int sample_bytes = 400;
  std::string prompt = "The ";
  bool check = false;  // exit non-zero unless the loss fell and the clip arm clipped
  std::string out_dir;
  std::string text_dir = tlm::default_text_dir();
  bool plot = true;
  std::string plot_dir;

  int warmup_steps(int run_steps) const {
    return warmup >= 0 ? std::min(warmup, run_steps) : std::max(1, run_steps / 10);
  }
};

std::vector<double> default_grid(const std::string& optimizer) {
  if (optimizer == "adamw") return {1e-3, 2e-3, 4e-3, 8e-3};
  return {0.01, 0.02, 0.04, 0.08};  // muon, normuon: the Muon part's lr
}

/// Used when the sweep is off: what the default run's sweep chose
/// (docs/transformer_lm.md).
double default_lr(const std::string& optimizer) {
  if (optimizer == "adamw") return 2e-3;
  return 0.04;
}

const char* usage_text() {
  return R"(Usage: transformer_lm [flags]

Trains a byte-level GPT on Debian's fortunes with the hybrid muon::torch
optimizer (Muon on attention and MLP matrices, AdamW on the rest), the hybrid
with NorMuon, and torch::optim::AdamW, each at its best lr from a sweep on the
validation loss, over several seeds; times their steps interleaved; sweeps the
lr at several widths; runs QK-Clip arms at a high Muon lr. Writes CSVs, PNGs
(gnuplot) and a generated text sample to --out.

Model and data
  --d-model N          width (default 128)          --layers N   depth (default 4)
  --heads N            attention heads (default 4)  --context N  sequence length (default 128)
  --tied               tie the output head to the token embedding (default untied)
  --batch N            sequences per step (default 8)
  --text DIR           fortune files (default $FORTUNES_DIR or /usr/share/games/fortunes)
  --val-seqs N         fixed validation sequences (default 32)
Training
  --steps N            step budget of every main run (default 200)
  --warmup N           linear warmup steps (default: a tenth of each run), then
                       cosine decay to zero, the same for every optimizer
  --eval-every N       validation loss every N steps (default 10)
  --seeds N            seeds 1..N per optimizer (default 3)
  --optimizers LIST    any of muon,normuon,adamw (default all three)
  --sweep on|off       sweep each lr first (default on; off: defaults or --lr-*)
  --grid-muon L, --grid-normuon L, --grid-adamw L
                       sweep grids (comma-separated lrs; defaults
                       0.01,0.02,0.04,0.08 and 1e-3,2e-3,4e-3,8e-3); an optimum
                       at an edge extends the grid by a factor 2, twice at most
  --lr-muon X, --lr-normuon X, --lr-adamw X
                       fixed lr (no sweep for it); the hybrids' AdamW part runs
                       at AdamW's lr
  --qkv whole|split|heads
                       the hybrid's fused QKV weight: one matrix, Q/K/V
                       orthogonalized apart (default), or per head
  --threads N          threads of libtorch, its BLAS and the hybrid (default 1)
Phases
  --timing-reps N      interleaved timed steps per optimizer (default 40; 0: off)
  --width on|off       the width-transfer sweep (default on)
  --widths LIST        d_model values (default 32,64,128; same depth, heads)
  --width-steps N      steps of each width-transfer run (default --steps)
  --width-rules LIST   Muon lr-by-shape rules swept (default original,none; also
                       match_rms_adamw, spectral)
  --qk on|off          the QK-Clip phase (default on)
  --qk-lr X            its Muon lr (default --qk-lr-factor x the chosen one)
  --qk-lr-factor X     (default 8)
  --qk-tau X           QK-Clip threshold (default 100, Kimi K2's)
  --qk-arms LIST       none, clip, heads (per-head orthogonalization of the
                       fused QKV), heads-clip (default: all four)
  --sample-bytes N     generated text at the end (default 400; 0: none)
  --prompt TEXT        its start (default "The ")
Output
  --out DIR            output folder (default build/transformer_lm_out if
                       ./build exists, else ./transformer_lm_out)
  --plot on|off        run gnuplot on the CSVs (default on)
  --plot-dir DIR       the .gp scripts (default: next to the sources)
  --check              exit 3 unless every optimizer's validation loss fell
                       and every clipping arm clipped (and capped the logits)
  --quick              a CI run: a d_model 32, 2-layer, 2-head model on
                       context 32, 40 steps, 1 seed, no sweep, 5 timing
                       steps, no width phase, QK-Clip arms none,clip at
                       tau 5, --check; other flags override these
  --help               this text
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
  if (text.empty() || *end != '\0' || errno != 0 || v < min_value || v > 100000000)
    usage_error(flag + ": expected an integer >= " + std::to_string(min_value) + ", got \"" + text +
                "\"");
  return v;
}

int parse_int(const std::string& flag, const std::string& text, int min_value) {
  return static_cast<int>(parse_long(flag, text, min_value));
}

double parse_positive(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(v > 0) || !std::isfinite(v))
    usage_error(flag + ": expected a positive number, got \"" + text + "\"");
  return v;
}

std::vector<double> parse_positive_list(const std::string& flag, const std::string& text) {
  std::vector<double> values;
  for (const auto& item : split_list(text)) values.push_back(parse_positive(flag, item));
  if (values.empty()) usage_error(flag + ": empty list");
  std::sort(values.begin(), values.end());
  return values;
}

bool parse_on_off(const std::string& flag, const std::string& text) {
  if (text == "on" || text == "true" || text == "1") return true;
  if (text == "off" || text == "false" || text == "0") return false;
  usage_error(flag + ": expected on or off, got \"" + text + "\"");
}

bool is_hybrid(const std::string& optimizer) {
  return optimizer == "muon" || optimizer == "normuon";
}

void apply_quick(Config& c) {
  c.model.d_model = 32;
  c.model.layers = 2;
  c.model.heads = 2;
  c.model.context = 32;
  c.batch = 8;
  c.steps = 40;
  c.eval_every = 10;
  c.val_seqs = 16;
  c.seeds = 1;
  c.sweep = false;
  c.timing_reps = 5;
  c.width = false;
  c.qk_arms = {"none", "clip"};
  c.qk_tau = 5;  // a tiny model at lr 0.32 passes it within about 10 steps
  c.sample_bytes = 100;
  c.check = true;
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
    } else if (flag == "--d-model") {
      c.model.d_model = parse_int(flag, value(), 1);
    } else if (flag == "--layers") {
      c.model.layers = parse_int(flag, value(), 1);
    } else if (flag == "--heads") {
      c.model.heads = parse_int(flag, value(), 1);
    } else if (flag == "--context") {
      c.model.context = parse_int(flag, value(), 2);
    } else if (flag == "--tied") {
      c.model.tied = true;
    } else if (flag == "--batch") {
      c.batch = parse_int(flag, value(), 1);
    } else if (flag == "--text") {
      c.text_dir = value();
    } else if (flag == "--val-seqs") {
      c.val_seqs = parse_int(flag, value(), 1);
    } else if (flag == "--steps") {
      c.steps = parse_int(flag, value(), 1);
    } else if (flag == "--warmup") {
      c.warmup = parse_int(flag, value(), 0);
    } else if (flag == "--eval-every") {
      c.eval_every = parse_int(flag, value(), 1);
    } else if (flag == "--seeds") {
      c.seeds = parse_int(flag, value(), 1);
    } else if (flag == "--optimizers") {
      c.optimizers = split_list(value());
      if (c.optimizers.empty()) usage_error("--optimizers: empty list");
      for (const auto& name : c.optimizers)
        if (name != "muon" && name != "normuon" && name != "adamw")
          usage_error("--optimizers: unknown optimizer \"" + name + "\" (muon, normuon, adamw)");
    } else if (flag == "--sweep") {
      c.sweep = parse_on_off(flag, value());
    } else if (flag == "--grid-muon" || flag == "--grid-normuon" || flag == "--grid-adamw") {
      c.grid[flag.substr(7)] = parse_positive_list(flag, value());
    } else if (flag == "--lr-muon" || flag == "--lr-normuon" || flag == "--lr-adamw") {
      c.lr[flag.substr(5)] = parse_positive(flag, value());
    } else if (flag == "--qkv") {
      c.qkv = value();
      if (c.qkv != "whole" && c.qkv != "split" && c.qkv != "heads")
        usage_error("--qkv: expected whole, split or heads, got \"" + c.qkv + "\"");
    } else if (flag == "--threads") {
      c.threads = parse_int(flag, value(), 1);
    } else if (flag == "--timing-reps") {
      c.timing_reps = parse_int(flag, value(), 0);
    } else if (flag == "--width") {
      c.width = parse_on_off(flag, value());
    } else if (flag == "--widths") {
      c.widths.clear();
      for (const auto& item : split_list(value())) c.widths.push_back(parse_int(flag, item, 1));
      if (c.widths.empty()) usage_error("--widths: empty list");
    } else if (flag == "--width-steps") {
      c.width_steps = parse_int(flag, value(), 1);
    } else if (flag == "--width-rules") {
      c.width_rules = split_list(value());
      for (const auto& rule : c.width_rules)  // throws naming the choices
        (void)muon::parse_name<muon::LrAdjust>(rule, "--width-rules");
      if (c.width_rules.empty()) usage_error("--width-rules: empty list");
    } else if (flag == "--qk") {
      c.qk = parse_on_off(flag, value());
    } else if (flag == "--qk-lr") {
      c.qk_lr = parse_positive(flag, value());
    } else if (flag == "--qk-lr-factor") {
      c.qk_lr_factor = parse_positive(flag, value());
    } else if (flag == "--qk-tau") {
      c.qk_tau = parse_positive(flag, value());
    } else if (flag == "--qk-arms") {
      c.qk_arms = split_list(value());
      for (const auto& arm : c.qk_arms)
        if (arm != "none" && arm != "clip" && arm != "heads" && arm != "heads-clip")
          usage_error("--qk-arms: unknown arm \"" + arm + "\" (none, clip, heads, heads-clip)");
    } else if (flag == "--sample-bytes") {
      c.sample_bytes = parse_int(flag, value(), 0);
    } else if (flag == "--prompt") {
      c.prompt = value();
    } else if (flag == "--check") {
      c.check = true;
    } else if (flag == "--out") {
      c.out_dir = value();
    } else if (flag == "--plot") {
      c.plot = parse_on_off(flag, value());
    } else if (flag == "--plot-dir") {
      c.plot_dir = value();
    } else {
      usage_error("unknown flag \"" + flag + "\"");
    }
  }
  auto check_heads = [](std::int64_t d, std::int64_t heads, const std::string& what) {
    if (d % heads != 0)
      usage_error(what + " " + std::to_string(d) + " is not a multiple of --heads " +
                  std::to_string(heads));
  };
  check_heads(c.model.d_model, c.model.heads, "--d-model");
  if (c.width)
    for (int w : c.widths) check_heads(w, c.model.heads, "--widths:");
  for (const auto& name : {"muon", "normuon", "adamw"})
    if (!c.grid.count(name)) c.grid[name] = default_grid(name);
  if (c.out_dir.empty())
    c.out_dir =
        std::filesystem::is_directory("build") ? "build/transformer_lm_out" : "transformer_lm_out";
  return c;
}

// ---------------------------------------------------------------- machine

/// Keeps freed memory in the process: the attention's (B, h, T, T) buffers
/// are several MB, and glibc's defaults hand such blocks back to the kernel
/// after every use and fault them in again (as in the libtorch Fashion-MNIST
/// example, where it cost 2x). Both thresholds have to be set: either one
/// alone turns off glibc's adaptive thresholds.
void tune_malloc() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}

/// OpenBLAS (Debian's libtorch runs its products there) keeps its own thread
/// count, which torch::set_num_threads does not reach; looked up at run
/// time, so nothing happens with another BLAS.
void set_blas_threads(int threads) {
  using SetThreads = void (*)(int);
  if (void* symbol = dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))
    reinterpret_cast<SetThreads>(symbol)(threads);
}

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

std::string fmt(double v, int precision = 4) {
  std::ostringstream s;
  s.precision(precision);
  s << v;
  return s.str();
}

// ---------------------------------------------------------------- data

/// The corpus as int64 token tensors, and the fixed validation batch.
struct Data {
  torch::Tensor train, val;    // 1-D, int64 byte values
  torch::Tensor val_x, val_y;  // val_seqs x context
  tlm::Corpus corpus;
};

torch::Tensor bytes_tensor(const std::string& s) {
  std::vector<std::int64_t> v(s.begin(), s.end());
  for (auto& b : v) b &= 0xff;  // char may be signed
  return torch::tensor(v, torch::kInt64);
}

/// Validation: `count` sequences at evenly spaced offsets of the held-out
/// text, the same for every run.
void make_val(Data& d, std::int64_t count, std::int64_t context) {
  const std::int64_t span = d.val.size(0) - context - 1;
  if (span < count) usage_error("--val-seqs/--context: the validation text is too short");
  std::vector<std::int64_t> offsets;
  for (std::int64_t i = 0; i < count; ++i) offsets.push_back(i * span / count);
  const auto index = torch::tensor(offsets, torch::kInt64).unsqueeze(1) +
                     torch::arange(context, torch::kInt64).unsqueeze(0);
  d.val_x = d.val.index_select(0, index.flatten()).view({count, context});
  d.val_y = d.val.index_select(0, (index + 1).flatten()).view({count, context});
}

/// Random training windows: one generator per run, seeded by the run's
/// seed, so every optimizer of a seed sees the same batches.
class Sampler {
 public:
  Sampler(const torch::Tensor& text, std::int64_t batch, std::int64_t context, std::uint64_t seed)
      : text_(text),
        batch_(batch),
        context_(context),
        rng_(0x9e3779b97f4a7c15ULL * (seed + 1)),
        offset_(0, text.size(0) - context - 2) {}

  std::pair<torch::Tensor, torch::Tensor> next() {
    std::vector<std::int64_t> offsets(static_cast<std::size_t>(batch_));
    for (auto& o : offsets) o = offset_(rng_);
    const auto index = torch::tensor(offsets, torch::kInt64).unsqueeze(1) +
                       torch::arange(context_, torch::kInt64).unsqueeze(0);
    return {text_.index_select(0, index.flatten()).view({batch_, context_}),
            text_.index_select(0, (index + 1).flatten()).view({batch_, context_})};
  }

 private:
  torch::Tensor text_;
  std::int64_t batch_, context_;
  std::mt19937_64 rng_;
  std::uniform_int_distribution<std::int64_t> offset_;
};

torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(logits.view({-1, logits.size(-1)}),
                                              targets.reshape({-1}));
}

double evaluate(tlm::Gpt& model, const Data& d) {
  torch::NoGradGuard no_grad;
  model->eval();
  double sum = 0;
  const std::int64_t n = d.val_x.size(0), chunk = 32;
  for (std::int64_t at = 0; at < n; at += chunk) {
    const auto end = std::min(at + chunk, n);
    const auto logits = model->forward(d.val_x.slice(0, at, end));
    sum += lm_loss(logits, d.val_y.slice(0, at, end)).item<double>() * double(end - at);
  }
  model->train();
  return sum / double(n);
}

/// `bytes` bytes sampled at temperature 0.8 after `prompt`.
std::string generate(tlm::Gpt& model, const std::string& prompt, int bytes, std::uint64_t seed) {
  torch::NoGradGuard no_grad;
  model->eval();
  torch::manual_seed(seed);
  std::vector<std::int64_t> tokens;
  for (unsigned char ch : prompt) tokens.push_back(ch);
  if (tokens.empty()) tokens.push_back('\n');
  const auto context = static_cast<std::size_t>(model->config().context);
  for (int i = 0; i < bytes; ++i) {
    const std::size_t from = tokens.size() > context ? tokens.size() - context : 0;
    const std::vector<std::int64_t> window(tokens.begin() + std::ptrdiff_t(from), tokens.end());
    const auto x = torch::tensor(window, torch::kInt64).unsqueeze(0);
    const auto logits = model->forward(x).select(1, x.size(1) - 1).squeeze(0);
    const auto probs = torch::softmax(logits / 0.8, -1);
    tokens.push_back(torch::multinomial(probs, 1).item<std::int64_t>());
  }
  model->train();
  std::string out;
  for (auto t : tokens) out.push_back(static_cast<char>(t));
  return out;
}

// ---------------------------------------------------------------- runs

/// One training run, fully described (also the key of the run cache: a
/// phase that needs a run another phase already made reuses it).
struct RunSpec {
  std::string optimizer;  ///< muon, normuon or adamw
  double lr = 0;          ///< hybrids: the Muon part's lr
  double adamw_lr = 0;    ///< hybrids: the AdamW part's lr
  std::string lr_rule = "original";
  std::string qkv = "split";
  std::int64_t d_model = 128;
  int steps = 0;
  std::uint64_t seed = 1;
  bool clip = false;  ///< QK-Clip after every step
  double tau = 100;
  bool log_logits = false;  ///< keep every step's per-layer max logit
  /// Validation every N steps (and at the end). Not part of the key: a run
  /// evaluated more often serves a phase that needs only its final loss.
  int eval_every = 0;

  std::string key() const {
    std::ostringstream k;
    k.precision(10);
    k << optimizer << '|' << lr << '|' << (is_hybrid(optimizer) ? adamw_lr : 0) << '|'
      << (is_hybrid(optimizer) ? lr_rule + '|' + qkv : "-") << '|' << d_model << '|' << steps << '|'
      << seed << '|' << (clip ? fmt(tau) : "noclip") << '|' << log_logits;
    return k.str();
  }
  std::string label() const {
    std::string s = optimizer + " lr " + fmt(lr);
    if (d_model != 128) s += " d" + std::to_string(d_model);
    if (is_hybrid(optimizer) && lr_rule != "original") s += " rule " + lr_rule;
    return s + " seed " + std::to_string(seed);
  }
};

struct EvalPoint {
  int step = 0;
  double train_loss = kInf;  ///< mean over the steps since the last evaluation
  double val_loss = kInf;
  double max_logit = 0;  ///< the last step's largest attention logit (all layers)
  double seconds = 0;    ///< training wall time so far (evaluations excluded)
};

struct StepLogits {
  int step = 0;
  double train_loss = 0;
  std::vector<double> layer_max;   ///< per layer, over heads, before any clip
  std::vector<int> layer_clipped;  ///< heads clipped after this step, per layer
};

struct RunLog {
  RunSpec spec;
  std::vector<EvalPoint> evals;
  std::vector<StepLogits> logits;
  bool diverged = false;
  long clipped = 0;          ///< heads clipped, over all steps
  bool cap_checked = false;  ///< clip arms: the exact-cap check ran ...
  bool cap_ok = false;       ///< ... and every clipped head came out at tau
  tlm::Gpt model{nullptr};   ///< the trained model (for the text sample)
  double final_val() const { return evals.empty() ? kInf : evals.back().val_loss; }
};

struct Optimizer {
  std::unique_ptr<torch::optim::Optimizer> opt;
  muon::torch::Muon* hybrid = nullptr;  ///< the same object, when it is the hybrid
};

Optimizer make_optimizer(const RunSpec& r, tlm::Gpt& model, std::ostream* routing_log) {
  Optimizer o;
  // AdamW as commonly set for GPT-style pretraining (nanoGPT): betas (0.9,
  // 0.95), weight decay 0.1; the same for the hybrid's AdamW part.
  if (r.optimizer == "adamw") {
    o.opt = std::make_unique<torch::optim::AdamW>(
        model->parameters(),
        torch::optim::AdamWOptions(r.lr).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1));
    return o;
  }
  // The hybrid: torch.optim.Muon's defaults (momentum 0.95, Nesterov, five
  // Newton-Schulz steps with Jordan's coefficients, decoupled weight decay
  // 0.1) on the matrices, AdamW on embeddings, head, gains and biases.
  auto options = muon::torch::MuonOptions(r.lr)
                     .adamw_lr(r.adamw_lr)
                     .adamw_betas(std::make_tuple(0.9, 0.95))
                     .adamw_weight_decay(0.1)
                     .adjust_lr(muon::parse_name<muon::LrAdjust>(r.lr_rule, "lr rule"));
  if (r.optimizer == "normuon") options.variant(muon::MuonVariant::normuon);
  muon::torch::HybridOptions hybrid;
  hybrid.log = routing_log;
  hybrid.threads = 0;  // at::get_num_threads(): the run's --threads
  const auto& c = model->config();
  for (std::int64_t layer = 0; layer < c.layers; ++layer) {
    const std::string name = tlm::GptImpl::qkv_name(layer);
    if (r.qkv == "split")
      hybrid.splits[name] = {c.d_model, c.d_model, c.d_model};
    else if (r.qkv == "heads")
      hybrid.heads[name] = 3 * c.heads;
  }
  auto muon = std::make_unique<muon::torch::Muon>(
      muon::torch::make_hybrid(model->named_parameters(), options, hybrid));
  o.hybrid = muon.get();
  o.opt = std::move(muon);
  return o;
}

/// Warmup then cosine decay to zero: the factor on every base lr at `step`
/// (0-based) of `steps`.
double schedule(int step, int steps, int warmup) {
  if (step < warmup) return double(step + 1) / double(warmup);
  const double pi = std::acos(-1.0);
  const double progress = double(step - warmup) / double(std::max(1, steps - warmup));
  return 0.5 * (1 + std::cos(pi * progress));
}

void set_lrs(torch::optim::Optimizer& opt, const std::vector<double>& base, double factor) {
  std::size_t i = 0;
  for (auto& group : opt.param_groups()) group.options().set_lr(base[i++] * factor);
}

muon::QkClipHeads clip_heads(const tlm::GptConfig& c, std::int64_t layer) {
  muon::QkClipHeads h;
  h.query = h.key = tlm::GptImpl::qkv_name(layer);
  h.heads = c.heads;
  h.head_dim = c.head_dim();
  h.query_row = 0;
  h.key_row = c.d_model;  // W_qkv's rows: Q, then K, then V
  return h;
}

/// After training a clipping arm, layer by layer: a forward pass on a batch,
/// QK-Clip of that layer with its maxima, the same forward again. Every head
/// of the layer that was above tau must now peak at tau exactly (its logits
/// are bilinear in the scaled query and key rows, and the layer's input,
/// made by the layers before it, is unchanged), every other head must be
/// unchanged: checks that the clip scaled the rows of the right heads.
bool check_exact_cap(tlm::Gpt& model, muon::torch::Muon& opt, Sampler& sampler, double tau) {
  torch::NoGradGuard no_grad;
  const auto batch = sampler.next();
  const auto& c = model->config();
  muon::QkClipOptions options;
  options.tau = tau;
  bool ok = true;
  for (std::int64_t layer = 0; layer < c.layers; ++layer) {
    const auto l = static_cast<std::size_t>(layer);
    model->forward(batch.first);
    const auto before = model->max_logits()[l];
    opt.qk_clip(clip_heads(c, layer), before, options);
    model->forward(batch.first);
    const auto after = model->max_logits()[l];
    for (std::size_t h = 0; h < before.size(); ++h) {
      const double expected = std::min(before[h], tau);
      if (std::abs(after[h] - expected) > 1e-4 * std::max(1.0, std::abs(expected))) ok = false;
    }
  }
  return ok;
}

class Trainer {
 public:
  Trainer(const Config& c, const Data& d) : c_(c), d_(d) {}

  /// The run of `spec`, trained now or taken from the cache.
  const RunLog& run(const RunSpec& spec, const std::string& phase) {
    const auto found = cache_.find(spec.key());
    if (found != cache_.end()) return found->second;
    RunLog log = train(spec, phase);
    return cache_.emplace(spec.key(), std::move(log)).first->second;
  }

  /// Every run trained, in the order they were made.
  std::vector<const RunLog*> runs() const {
    std::vector<const RunLog*> all;
    for (const auto& key : order_) all.push_back(&cache_.at(key));
    return all;
  }

 private:
  tlm::GptConfig model_config(const RunSpec& spec) const {
    tlm::GptConfig m = c_.model;
    m.d_model = spec.d_model;
    return m;
  }

  RunLog train(const RunSpec& spec, const std::string& phase) {
    const auto start = clock_type::now();
    RunLog log;
    log.spec = spec;
    torch::manual_seed(spec.seed);
    tlm::Gpt model(model_config(spec));
    Optimizer o = make_optimizer(spec, model, nullptr);
    std::vector<double> base;
    for (auto& group : o.opt->param_groups()) base.push_back(group.options().get_lr());
    Sampler sampler(d_.train, c_.batch, c_.model.context, spec.seed);
    const int warmup = c_.warmup_steps(spec.steps);
    const double tokens_per_step = double(c_.batch) * double(c_.model.context);
    muon::QkClipOptions clip;
    clip.tau = spec.tau;

    EvalPoint point;
    point.step = 0;
    point.val_loss = evaluate(model, d_);
    log.evals.push_back(point);
    double train_seconds = 0, loss_sum = 0, loss_ema = 0;
    int loss_count = 0;
    fashion_mnist::ProgressBar bar(phase + " " + spec.label(), spec.steps);
    for (int step = 0; step < spec.steps; ++step) {
      const auto batch = sampler.next();
      set_lrs(*o.opt, base, schedule(step, spec.steps, warmup));
      const auto t0 = clock_type::now();
      o.opt->zero_grad();
      const auto loss = lm_loss(model->forward(batch.first), batch.second);
      const double value = loss.item<double>();
      if (!std::isfinite(value)) {
        log.diverged = true;
        break;
      }
      loss.backward();
      try {
        o.opt->step();
      } catch (const muon::Error& e) {  // a non-finite gradient: nothing was written
        std::cout << "  " << spec.label() << ": step " << step + 1 << " refused (" << e.what()
                  << "); counted as diverged\n";
        log.diverged = true;
        break;
      }
      const auto maxima = model->max_logits();
      StepLogits sl;
      sl.step = step + 1;
      sl.train_loss = value;
      for (std::size_t l = 0; l < maxima.size(); ++l) {
        sl.layer_max.push_back(*std::max_element(maxima[l].begin(), maxima[l].end()));
        int clipped = 0;
        if (spec.clip)
          clipped =
              int(o.hybrid->qk_clip(clip_heads(model->config(), std::int64_t(l)), maxima[l], clip)
                      .clipped);
        sl.layer_clipped.push_back(clipped);
        log.clipped += clipped;
      }
      train_seconds += seconds_since(t0);
      loss_sum += value;
      ++loss_count;
      const double step_max = *std::max_element(sl.layer_max.begin(), sl.layer_max.end());
      if (spec.log_logits) log.logits.push_back(std::move(sl));
      loss_ema = step == 0 ? value : 0.9 * loss_ema + 0.1 * value;
      bar.update(step + 1, loss_ema,
                 fmt(tokens_per_step * (step + 1) / std::max(train_seconds, 1e-9), 3) + " tok/s");
      if ((step + 1) % spec.eval_every == 0 || step + 1 == spec.steps) {
        point.step = step + 1;
        point.train_loss = loss_sum / loss_count;
        point.val_loss = evaluate(model, d_);
        point.max_logit = step_max;
        point.seconds = train_seconds;
        log.evals.push_back(point);
        loss_sum = 0;
        loss_count = 0;
        if (!std::isfinite(point.val_loss)) {
          log.diverged = true;
          break;
        }
      }
    }
    bar.finish();
    if (log.diverged) {
      point.step = log.evals.back().step + 1;
      point.train_loss = point.val_loss = kInf;
      log.evals.push_back(point);
    }
    if (spec.clip && !log.diverged) {
      log.cap_checked = true;
      log.cap_ok = check_exact_cap(model, *o.hybrid, sampler, spec.tau);
    }
    log.model = model;
    std::cout << "  " << phase << " " << spec.label() << ": val loss "
              << (log.diverged ? std::string("diverged") : fmt(log.final_val())) << ", "
              << fmt(train_seconds, 3) << " s training (" << fmt(seconds_since(start), 3)
              << " s in all)"
              << (spec.clip ? ", " + std::to_string(log.clipped) + " head clips" : "") << "\n"
              << std::flush;
    order_.push_back(spec.key());
    return log;
  }

  const Config& c_;
  const Data& d_;
  std::map<std::string, RunLog> cache_;
  std::vector<std::string> order_;
};

// ---------------------------------------------------------------- statistics

struct Stats {
  double mean = 0, stddev = 0, min = 0, max = 0;
  std::size_t n = 0;
};

Stats stats(const std::vector<double>& v) {
  Stats s;
  s.n = v.size();
  if (v.empty()) return s;
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
  double ss = 0;
  for (double x : v) ss += (x - s.mean) * (x - s.mean);
  s.stddev = v.size() > 1 ? std::sqrt(ss / double(v.size() - 1)) : 0.0;
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  return s;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double at = q * double(v.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(at));
  const auto hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (at - double(lo)) * (v[hi] - v[lo]);
}

/// The first step at which `evals` reach `target`, interpolated linearly
/// between the two evaluations around the crossing; infinity if never.
double steps_to(const std::vector<EvalPoint>& evals, double target) {
  for (std::size_t i = 1; i < evals.size(); ++i) {
    if (!(evals[i].val_loss <= target)) continue;
    const EvalPoint& a = evals[i - 1];
    const EvalPoint& b = evals[i];
    if (!(a.val_loss > b.val_loss)) return b.step;
    const double t = (a.val_loss - target) / (a.val_loss - b.val_loss);
    return a.step + t * (b.step - a.step);
  }
  return kInf;
}

/// The mean over seeds of validation curves evaluated at the same steps (a
/// curve that ended early, diverged, makes the mean infinite from there).
std::vector<EvalPoint> mean_curve(const std::vector<const RunLog*>& seeds) {
  std::vector<EvalPoint> mean;
  if (seeds.empty()) return mean;
  const auto& first = seeds.front()->evals;
  for (std::size_t i = 0; i < first.size(); ++i) {
    EvalPoint p = first[i];
    double val = 0, train = 0;
    for (const RunLog* r : seeds) {
      const bool here = i < r->evals.size() && r->evals[i].step == p.step;
      val += here ? r->evals[i].val_loss : kInf;
      train += here ? r->evals[i].train_loss : kInf;
    }
    p.val_loss = val / double(seeds.size());
    p.train_loss = train / double(seeds.size());
    mean.push_back(p);
  }
  return mean;
}

// ---------------------------------------------------------------- phases

/// The chosen lr of each optimizer, from the sweep (seed 1, the full step
/// budget; its best run is also seed 1 of the comparison) or fixed.
struct Chosen {
  std::map<std::string, double> lr;
  std::vector<std::string> edge_notes;
};

RunSpec base_spec(const Config& c, const std::string& optimizer, double lr, double adamw_lr) {
  RunSpec s;
  s.optimizer = optimizer;
  s.lr = lr;
  s.adamw_lr = adamw_lr;
  s.qkv = c.qkv;
  s.d_model = c.model.d_model;
  s.steps = c.steps;
  s.seed = 1;
  s.eval_every = c.eval_every;
  return s;
}

/// Sweeps `grid` with make(lr) -> spec; an optimum at an edge goes on that
/// way by a factor 2, twice at most. Returns the best lr (lowest final
/// validation loss) and appends each point to `rows`.
double sweep(Trainer& t, const std::vector<double>& grid,
             const std::function<RunSpec(double)>& make, const std::string& phase,
             std::vector<std::pair<double, double>>& points, std::string* edge_note) {
  double best_lr = grid.front(), best = kInf;
  auto try_lr = [&](double lr) {
    const double v = t.run(make(lr), phase).final_val();
    points.emplace_back(lr, v);
    if (v < best) {
      best = v;
      best_lr = lr;
    }
  };
  for (double lr : grid) try_lr(lr);
  double low = grid.front(), high = grid.back();
  for (int extra = 0; extra < 2; ++extra) {
    if (best_lr == high)
      try_lr(high *= 2);
    else if (best_lr == low)
      try_lr(low /= 2);
    else
      break;
  }
  if (edge_note && (best_lr == low || best_lr == high))
    *edge_note = "the best lr " + fmt(best_lr) + " is at the edge of the swept range";
  std::sort(points.begin(), points.end());
  return best_lr;
}

Chosen choose_lrs(const Config& c, Trainer& t) {
  Chosen chosen;
  std::ofstream csv(std::filesystem::path(c.out_dir) / "sweep.csv");
  csv << "optimizer,lr,adamw_part_lr,final_val_loss\n";
  // AdamW first: the hybrids' AdamW part runs at AdamW's chosen lr, so their
  // sweeps tune the Muon lr alone.
  std::vector<std::string> order{"adamw"};
  for (const auto& n : c.optimizers)
    if (n != "adamw") order.push_back(n);
  // The width and QK-Clip phases need Muon's lr even when it is not compared.
  if ((c.width || c.qk) && std::find(order.begin(), order.end(), "muon") == order.end())
    order.push_back("muon");
  for (const auto& name : order) {
    if (c.lr.count(name) || !c.sweep) {
      chosen.lr[name] = c.lr.count(name) ? c.lr.at(name) : default_lr(name);
      continue;
    }
    const double adamw_lr = name == "adamw" ? 0.0 : chosen.lr.at("adamw");
    std::vector<std::pair<double, double>> points;
    std::string note;
    chosen.lr[name] = sweep(
        t, c.grid.at(name), [&](double lr) { return base_spec(c, name, lr, adamw_lr); }, "sweep",
        points, &note);
    for (const auto& [lr, v] : points)
      csv << name << ',' << lr << ',' << (is_hybrid(name) ? adamw_lr : lr) << ',' << v << '\n';
    if (!note.empty()) chosen.edge_notes.push_back(name + ": " + note);
    std::cout << "-> " << name << " lr " << fmt(chosen.lr[name]) << "\n" << std::flush;
  }
  return chosen;
}

struct Timing {
  std::map<std::string, double> step_ms, opt_ms, step_q1, step_q3, opt_q1, opt_q3;
};

/// Time per step, interleaved: one model per optimizer (same seed, same
/// shape), stepped in turn on the same batch, the order rotating every
/// repetition, so the machine's changing load falls on each alike. The
/// whole step (zero_grad, forward, backward, step) and step() alone, median
/// over the repetitions after 3 untimed ones.
Timing time_steps(const Config& c, const Data& d, const Chosen& chosen) {
  Timing timing;
  if (c.timing_reps <= 0) return timing;
  std::vector<std::string> names = c.optimizers;
  struct Arm {
    std::string name;
    tlm::Gpt model{nullptr};
    Optimizer opt;
    std::vector<double> step_ms, opt_ms;
  };
  std::vector<Arm> arms;
  for (const auto& name : names) {
    torch::manual_seed(1);
    Arm a;
    a.name = name;
    a.model = tlm::Gpt(c.model);
    RunSpec spec = base_spec(c, name, chosen.lr.at(name), chosen.lr.at("adamw"));
    a.opt = make_optimizer(spec, a.model, nullptr);
    arms.push_back(std::move(a));
  }
  Sampler sampler(d.train, c.batch, c.model.context, 12345);
  std::ofstream csv(std::filesystem::path(c.out_dir) / "timing.csv");
  csv << "rep,optimizer,step_ms,optimizer_step_ms\n";
  const int untimed = 3;
  fashion_mnist::ProgressBar bar("timing (interleaved)", c.timing_reps + untimed);
  for (int rep = 0; rep < c.timing_reps + untimed; ++rep) {
    const auto batch = sampler.next();
    for (std::size_t k = 0; k < arms.size(); ++k) {
      Arm& a = arms[(k + std::size_t(rep)) % arms.size()];
      const auto t0 = clock_type::now();
      a.opt.opt->zero_grad();
      const auto loss = lm_loss(a.model->forward(batch.first), batch.second);
      loss.backward();
      const auto t1 = clock_type::now();
      a.opt.opt->step();
      const auto t2 = clock_type::now();
      if (rep < untimed) continue;
      const double step_ms = 1e3 * std::chrono::duration<double>(t2 - t0).count();
      const double opt_ms = 1e3 * std::chrono::duration<double>(t2 - t1).count();
      a.step_ms.push_back(step_ms);
      a.opt_ms.push_back(opt_ms);
      csv << rep - untimed + 1 << ',' << a.name << ',' << step_ms << ',' << opt_ms << '\n';
    }
    bar.update(rep + 1, 0.0, "(no loss: timing)");
  }
  bar.finish();
  for (const auto& a : arms) {
    timing.step_ms[a.name] = median(a.step_ms);
    timing.opt_ms[a.name] = median(a.opt_ms);
    timing.step_q1[a.name] = quantile(a.step_ms, 0.25);
    timing.step_q3[a.name] = quantile(a.step_ms, 0.75);
    timing.opt_q1[a.name] = quantile(a.opt_ms, 0.25);
    timing.opt_q3[a.name] = quantile(a.opt_ms, 0.75);
  }
  return timing;
}

struct Comparison {
  std::map<std::string, std::vector<const RunLog*>> seeds;  // per optimizer
  double target = kInf;                                     // AdamW's mean final val loss
};

Comparison compare(const Config& c, Trainer& t, const Chosen& chosen) {
  Comparison cmp;
  // Seed by seed, each optimizer in turn, so the machine's drifting load
  // falls on every optimizer alike. Seed 1 is the sweep's run at the chosen
  // lr (the cache returns it).
  for (int seed = 1; seed <= c.seeds; ++seed)
    for (const auto& name : c.optimizers) {
      RunSpec spec = base_spec(c, name, chosen.lr.at(name), chosen.lr.at("adamw"));
      spec.seed = static_cast<std::uint64_t>(seed);
      cmp.seeds[name].push_back(&t.run(spec, "compare"));
    }
  if (cmp.seeds.count("adamw")) {
    std::vector<double> finals;
    for (const RunLog* r : cmp.seeds.at("adamw")) finals.push_back(r->final_val());
    cmp.target = stats(finals).mean;
  }
  return cmp;
}

/// Text generated by the best (lowest final validation loss) model of the
/// comparison.
std::string best_sample(const Config& c, const Comparison& cmp, std::string* which) {
  const RunLog* best = nullptr;
  for (const auto& [name, runs] : cmp.seeds)
    for (const RunLog* r : runs)
      if (!r->diverged && (!best || r->final_val() < best->final_val())) best = r;
  if (!best || c.sample_bytes <= 0) return "";
  *which = best->spec.label();
  tlm::Gpt model = best->model;
  return generate(model, c.prompt, c.sample_bytes, best->spec.seed);
}

void write_summary(const Config& c, const Comparison& cmp, const Chosen& chosen,
                   const Timing& timing) {
  std::ofstream csv(std::filesystem::path(c.out_dir) / "summary.csv");
  csv << "optimizer,lr,adamw_part_lr,seeds,steps,final_val_mean,final_val_std,final_val_min,"
         "final_val_max,final_bpb_mean,target_val_loss,steps_to_target_mean_curve,"
         "steps_to_target_seed_mean,steps_to_target_seed_std,seeds_reaching_target,"
         "step_ms_median,step_ms_q1,step_ms_q3,optimizer_step_ms_median,optimizer_step_ms_q1,"
         "optimizer_step_ms_q3,optimizer_share,wall_to_target_s,step_time_vs_adamw,"
         "steps_to_target_vs_adamw,wall_to_target_vs_adamw\n";
  auto get = [](const std::map<std::string, double>& m, const std::string& k) {
    return m.count(k) ? m.at(k) : 0.0;
  };
  const double adamw_steps =
      cmp.seeds.count("adamw") ? steps_to(mean_curve(cmp.seeds.at("adamw")), cmp.target) : kInf;
  const double adamw_ms = get(timing.step_ms, "adamw");
  std::printf("\n%d seed(s) x %d steps; target: AdamW's mean final validation loss %.4f\n", c.seeds,
              c.steps, cmp.target);
  std::printf("%-8s %8s %22s %10s %14s %10s %9s %10s %8s %8s %8s\n", "optim", "lr",
              "final val loss", "ms/step", "step() ms", "share", "to target", "wall (s)", "x time",
              "x steps", "x wall");
  for (const auto& name : c.optimizers) {
    const auto& runs = cmp.seeds.at(name);
    std::vector<double> finals, reach;
    for (const RunLog* r : runs) {
      finals.push_back(r->final_val());
      const double s = steps_to(r->evals, cmp.target);
      if (std::isfinite(s)) reach.push_back(s);
    }
    const Stats f = stats(finals), s = stats(reach);
    const double curve_steps = steps_to(mean_curve(runs), cmp.target);
    const double ms = get(timing.step_ms, name), opt = get(timing.opt_ms, name);
    const double wall = curve_steps * ms / 1e3;
    const double x_time = adamw_ms > 0 ? ms / adamw_ms : 0;
    const double x_steps = curve_steps / adamw_steps;
    const double x_wall = x_time * x_steps;
    csv << name << ',' << chosen.lr.at(name) << ','
        << (is_hybrid(name) ? chosen.lr.at("adamw") : chosen.lr.at(name)) << ',' << runs.size()
        << ',' << c.steps << ',' << f.mean << ',' << f.stddev << ',' << f.min << ',' << f.max << ','
        << f.mean / std::log(2.0) << ',' << cmp.target << ',' << curve_steps << ',' << s.mean << ','
        << s.stddev << ',' << reach.size() << ',' << ms << ',' << get(timing.step_q1, name) << ','
        << get(timing.step_q3, name) << ',' << opt << ',' << get(timing.opt_q1, name) << ','
        << get(timing.opt_q3, name) << ',' << (ms > 0 ? opt / ms : 0) << ',' << wall << ','
        << x_time << ',' << x_steps << ',' << x_wall << '\n';
    char loss_text[64];
    std::snprintf(loss_text, sizeof loss_text, "%.4f +- %.4f", f.mean, f.stddev);
    std::printf("%-8s %8.3g %22s %10.1f %14.2f %9.1f%% %9.0f %10.1f %8.2f %8.2f %8.2f\n",
                name.c_str(), chosen.lr.at(name), loss_text, ms, opt, ms > 0 ? 100 * opt / ms : 0.0,
                curve_steps, wall, x_time, x_steps, x_wall);
  }
}

void write_evals(const Config& c, const Trainer& t) {
  std::ofstream runs(std::filesystem::path(c.out_dir) / "runs.csv");
  runs << "run,optimizer,lr,adamw_part_lr,lr_rule,qkv,d_model,steps,seed,qk_clip_tau,"
          "final_val_loss,diverged,head_clips,exact_cap_check,train_seconds\n";
  std::ofstream evals(std::filesystem::path(c.out_dir) / "evals.csv");
  evals << "run,step,train_loss,val_loss,max_logit,train_seconds\n";
  int id = 0;
  for (const RunLog* r : t.runs()) {
    ++id;
    const RunSpec& s = r->spec;
    runs << id << ',' << s.optimizer << ',' << s.lr << ','
         << (is_hybrid(s.optimizer) ? s.adamw_lr : s.lr) << ','
         << (is_hybrid(s.optimizer) ? s.lr_rule : "-") << ','
         << (is_hybrid(s.optimizer) ? s.qkv : "-") << ',' << s.d_model << ',' << s.steps << ','
         << s.seed << ',' << (s.clip ? s.tau : 0) << ',' << r->final_val() << ','
         << int(r->diverged) << ',' << r->clipped << ','
         << (r->cap_checked ? (r->cap_ok ? "passed" : "FAILED") : "-") << ','
         << (r->evals.empty() ? 0 : r->evals.back().seconds) << '\n';
    for (const auto& e : r->evals)
      evals << id << ',' << e.step << ',' << e.train_loss << ',' << e.val_loss << ',' << e.max_logit
            << ',' << e.seconds << '\n';
  }
}

/// Per optimizer, the mean validation curve over the seeds (what the
/// curves plot draws), and the per-seed spread.
void write_curves(const Config& c, const Comparison& cmp) {
  std::ofstream csv(std::filesystem::path(c.out_dir) / "curves.csv");
  csv << "optimizer,step,val_loss_mean,val_loss_min,val_loss_max,train_loss_mean\n";
  for (const auto& name : c.optimizers) {
    const auto& runs = cmp.seeds.at(name);
    const auto mean = mean_curve(runs);
    for (std::size_t i = 0; i < mean.size(); ++i) {
      double lo = kInf, hi = -kInf;
      for (const RunLog* r : runs)
        if (i < r->evals.size()) {
          lo = std::min(lo, r->evals[i].val_loss);
          hi = std::max(hi, r->evals[i].val_loss);
        }
      csv << name << ',' << mean[i].step << ',' << mean[i].val_loss << ',' << lo << ',' << hi << ','
          << mean[i].train_loss << '\n';
    }
  }
}

/// Width transfer: the final validation loss against the lr at each width,
/// for Muon under each lr-by-shape rule and for AdamW. The hybrids' AdamW
/// part stays at AdamW's lr chosen at the default width, so only the Muon
/// lr moves.
void width_transfer(const Config& c, Trainer& t, const Chosen& chosen) {
  std::ofstream csv(std::filesystem::path(c.out_dir) / "width.csv");
  csv << "arm,d_model,lr,final_val_loss,best\n";
  const int steps = c.width_steps > 0 ? c.width_steps : c.steps;
  std::vector<std::string> arms;
  for (const auto& rule : c.width_rules) arms.push_back("muon-" + rule);
  arms.push_back("adamw");
  for (const auto& arm : arms)
    for (int width : c.widths) {
      const bool adamw = arm == "adamw";
      const std::string optimizer = adamw ? "adamw" : "muon";
      std::vector<std::pair<double, double>> points;
      const double best = sweep(
          t, c.grid.at(optimizer),
          [&](double lr) {
            RunSpec s = base_spec(c, optimizer, lr, chosen.lr.at("adamw"));
            s.d_model = width;
            s.steps = steps;
            s.eval_every = steps;  // only the final loss is used (unless the run is the sweep's)
            if (!adamw) s.lr_rule = arm.substr(5);
            return s;
          },
          "width", points, nullptr);
      for (const auto& [lr, v] : points)
        csv << arm << ',' << width << ',' << lr << ',' << v << ',' << int(lr == best) << '\n';
      std::cout << "-> width " << width << ", " << arm << ": best lr " << fmt(best) << "\n"
                << std::flush;
    }
}

struct QkResult {
  std::string arm;
  const RunLog* run = nullptr;
};

std::vector<QkResult> qk_clip_phase(const Config& c, Trainer& t, const Chosen& chosen,
                                    double qk_lr) {
  std::vector<QkResult> results;
  std::ofstream csv(std::filesystem::path(c.out_dir) / "qkclip.csv");
  csv << "arm,step,layer,max_logit,train_loss,heads_clipped\n";
  std::ofstream evals(std::filesystem::path(c.out_dir) / "qkclip_evals.csv");
  evals << "arm,step,train_loss,val_loss\n";
  for (const auto& arm : c.qk_arms) {
    RunSpec spec = base_spec(c, "muon", qk_lr, chosen.lr.at("adamw"));
    spec.clip = arm == "clip" || arm == "heads-clip";
    spec.tau = c.qk_tau;
    if (arm == "heads" || arm == "heads-clip") spec.qkv = "heads";
    spec.log_logits = true;
    const RunLog& r = t.run(spec, "qk-clip " + arm);
    results.push_back({arm, &r});
    // Layer by layer, so that each (arm, layer) series is contiguous (gnuplot
    // breaks a line at the rows a filter leaves out).
    const std::size_t layers = r.logits.empty() ? 0 : r.logits.front().layer_max.size();
    for (std::size_t l = 0; l < layers; ++l)
      for (const auto& s : r.logits)
        csv << arm << ',' << s.step << ',' << l << ',' << s.layer_max[l] << ',' << s.train_loss
            << ',' << s.layer_clipped[l] << '\n';
    for (const auto& e : r.evals)
      evals << arm << ',' << e.step << ',' << e.train_loss << ',' << e.val_loss << '\n';
  }
  return results;
}

// ---------------------------------------------------------------- output

std::string plot_dir(const Config& c) {
  if (!c.plot_dir.empty()) return c.plot_dir;
#ifdef TRANSFORMER_LM_SOURCE_DIR
  return TRANSFORMER_LM_SOURCE_DIR;
#else
  return ".";
#endif
}

void plot(const Config& c, const std::string& script, const std::string& vars) {
  const std::string path = (std::filesystem::path(plot_dir(c)) / script).string();
  if (!std::filesystem::exists(path)) {
    std::cout << "plot: " << path << " not found (--plot-dir)\n";
    return;
  }
  const std::string command =
      "gnuplot -e \"outdir='" + c.out_dir + "'; " + vars + "\" '" + path + "'";
  if (std::system(command.c_str()) != 0) std::cout << "plot: failed: " << command << "\n";
}

void plots(const Config& c, double qk_lr, double target) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    std::cout << "plot: gnuplot not found, PNGs skipped (Debian: apt-get install gnuplot-nox)\n";
    return;
  }
  std::string names;
  for (const auto& n : c.optimizers) names += (names.empty() ? "" : " ") + n;
  plot(c, "curves.gp",
       "optimizers='" + names + "'; seeds=" + std::to_string(c.seeds) +
           "; swept=" + std::to_string(int(c.sweep)) +
           (std::isfinite(target) ? "; target=" + fmt(target, 8) : std::string()));
  if (c.width) {
    std::string widths, arms;
    for (int w : c.widths) widths += (widths.empty() ? "" : " ") + std::to_string(w);
    for (const auto& r : c.width_rules) arms += "muon-" + r + " ";
    arms += "adamw";
    plot(c, "width.gp", "widths='" + widths + "'; arms='" + arms + "'");
  }
  if (c.qk && !c.qk_arms.empty()) {
    std::string arms;
    for (const auto& a : c.qk_arms) arms += (arms.empty() ? "" : " ") + a;
    plot(c, "qkclip.gp",
         "arms='" + arms + "'; layers=" + std::to_string(c.model.layers) +
             "; tau=" + fmt(c.qk_tau) + "; lr=" + fmt(qk_lr));
  }
}

void write_info(const Config& c, const Data& d, const Chosen& chosen, double qk_lr,
                double total_seconds, const std::string& sample_of) {
  std::ofstream f(std::filesystem::path(c.out_dir) / "info.csv");
  f << "key,value\n";
  auto row = [&f](const std::string& k, const std::string& v) {
    std::string quoted = "\"";  // CSV: the value in quotes, its quotes doubled
    for (char ch : v) quoted += ch == '"' ? std::string("\"\"") : std::string(1, ch);
    f << k << ',' << quoted << "\"\n";
  };
  row("libtorch", TORCH_VERSION);
  row("threads", std::to_string(c.threads));
  row("d_model", std::to_string(c.model.d_model));
  row("layers", std::to_string(c.model.layers));
  row("heads", std::to_string(c.model.heads));
  row("context", std::to_string(c.model.context));
  row("tied", c.model.tied ? "yes" : "no");
  row("batch", std::to_string(c.batch));
  row("steps", std::to_string(c.steps));
  row("warmup", std::to_string(c.warmup_steps(c.steps)));
  row("eval_every", std::to_string(c.eval_every));
  row("val_seqs", std::to_string(c.val_seqs));
  row("seeds", std::to_string(c.seeds));
  row("qkv", c.qkv);
  row("train_bytes", std::to_string(d.corpus.train.size()));
  row("val_bytes", std::to_string(d.corpus.val.size()));
  row("train_fortunes", std::to_string(d.corpus.train_fortunes));
  row("val_fortunes", std::to_string(d.corpus.val_fortunes));
  row("files", std::to_string(d.corpus.files.size()));
  row("text_dir", c.text_dir);
  for (const auto& [name, lr] : chosen.lr) row("lr_" + name, fmt(lr, 6));
  for (const auto& name : {"muon", "normuon", "adamw"}) {
    std::string g;
    for (double v : c.grid.at(name)) g += (g.empty() ? "" : " ") + fmt(v);
    row("grid_" + std::string(name), g);
  }
  std::string notes;
  for (const auto& n : chosen.edge_notes) notes += (notes.empty() ? "" : "; ") + n;
  row("sweep_edge_notes", notes.empty() ? "-" : notes);
  row("sweep", c.sweep ? "on" : "off");
  row("timing_reps", std::to_string(c.timing_reps));
  std::string widths;
  for (int w : c.widths) widths += (widths.empty() ? "" : " ") + std::to_string(w);
  row("widths", c.width ? widths : "-");
  row("width_steps", std::to_string(c.width_steps > 0 ? c.width_steps : c.steps));
  std::string rules;
  for (const auto& r : c.width_rules) rules += (rules.empty() ? "" : " ") + r;
  row("width_rules", rules);
  row("qk_lr", fmt(qk_lr, 6));
  row("qk_tau", fmt(c.qk_tau));
  std::string arms;
  for (const auto& a : c.qk_arms) arms += (arms.empty() ? "" : " ") + a;
  row("qk_arms", c.qk ? arms : "-");
  row("sample_of", sample_of.empty() ? "-" : sample_of);
  row("prompt", c.prompt);
  {
    torch::manual_seed(1);
    tlm::Gpt model(c.model);
    std::int64_t params = 0;
    for (const auto& p : model->parameters()) params += p.numel();
    row("params", std::to_string(params));
  }
  row("total_seconds", fmt(total_seconds, 5));
}

void print_routing(const Config& c) {
  torch::manual_seed(1);
  tlm::Gpt model(c.model);
  std::cout << "Routing of the hybrid (make_hybrid; --qkv " << c.qkv << "):\n";
  std::ostringstream table;
  make_optimizer(base_spec(c, "muon", 0.02, 1e-3), model, &table);
  std::cout << table.str();
  std::ofstream(std::filesystem::path(c.out_dir) / "routing.txt") << table.str();
  std::int64_t total = 0;
  for (const auto& p : model->parameters()) total += p.numel();
  std::cout << "parameters: " << total << "\n";
}

int run(const Config& c) {
  tune_malloc();
  torch::set_num_threads(c.threads);
  set_blas_threads(c.threads);
  const auto start = clock_type::now();
  std::filesystem::create_directories(c.out_dir);
  // A phase turned off must not leave an earlier run's file to be read as this one's.
  for (const char* name :
       {"summary.csv", "sweep.csv", "runs.csv", "evals.csv", "curves.csv", "timing.csv",
        "width.csv", "qkclip.csv", "qkclip_evals.csv", "routing.txt", "sample.txt", "info.csv",
        "curves.png", "width_transfer.png", "qk_clip.png"})
    std::filesystem::remove(std::filesystem::path(c.out_dir) / name);

  Data d;
  d.corpus = tlm::load_fortunes(c.text_dir);
  d.train = bytes_tensor(d.corpus.train);
  d.val = bytes_tensor(d.corpus.val);
  make_val(d, c.val_seqs, c.model.context);
  std::cout << "text: " << d.corpus.files.size() << " fortune files in " << c.text_dir << ", "
            << d.corpus.train_fortunes << " fortunes (" << d.corpus.train.size()
            << " bytes) to train, " << d.corpus.val_fortunes << " (" << d.corpus.val.size()
            << " bytes) held out\n"
            << "model: d_model " << c.model.d_model << ", " << c.model.layers << " layers, "
            << c.model.heads << " heads, context " << c.model.context << ", "
            << (c.model.tied ? "tied" : "untied") << " head; batch " << c.batch << " x "
            << c.model.context << " bytes; libtorch " << TORCH_VERSION << ", "
            << torch::get_num_threads() << " thread(s)\n";
  print_routing(c);

  Trainer t(c, d);
  const Chosen chosen = choose_lrs(c, t);
  const Comparison cmp = compare(c, t, chosen);
  const Timing timing = time_steps(c, d, chosen);
  write_summary(c, cmp, chosen, timing);
  write_curves(c, cmp);

  if (c.width) width_transfer(c, t, chosen);
  const double qk_lr = c.qk_lr > 0 ? c.qk_lr : c.qk_lr_factor * chosen.lr.at("muon");
  std::vector<QkResult> qk;
  if (c.qk) qk = qk_clip_phase(c, t, chosen, qk_lr);

  std::string sample_of;
  const std::string sample = best_sample(c, cmp, &sample_of);
  if (!sample.empty()) {
    std::ofstream(std::filesystem::path(c.out_dir) / "sample.txt") << sample;
    std::cout << "\nSample from the best run (" << sample_of << "), " << c.sample_bytes
              << " bytes at temperature 0.8 after \"" << c.prompt << "\":\n"
              << sample << "\n";
  }
  write_evals(c, t);
  write_info(c, d, chosen, qk_lr, seconds_since(start), sample_of);
  if (c.plot) plots(c, qk_lr, cmp.target);

  // The checks are printed on every run; --check makes a failure the exit status.
  bool failed = false;
  for (const auto& [name, runs] : cmp.seeds)
    for (const RunLog* r : runs) {
      const double first = r->evals.front().val_loss, last = r->final_val();
      const bool fell = std::isfinite(last) && last < 0.9 * first;
      std::cout << "check: " << r->spec.label() << ": validation loss " << fmt(first) << " -> "
                << fmt(last) << (fell ? " (fell)" : " (DID NOT FALL by 10%)") << "\n";
      failed = failed || !fell;
    }
  for (const auto& q : qk) {
    if (!q.run->spec.clip) continue;
    const bool ok = q.run->clipped > 0 && q.run->cap_checked && q.run->cap_ok;
    std::cout << "check: qk-clip arm " << q.arm << ": " << q.run->clipped
              << " head clips; logits capped at tau exactly after a clip: "
              << (q.run->cap_checked ? (q.run->cap_ok ? "yes" : "NO") : "not checked (diverged)")
              << "\n";
    failed = failed || !ok;
  }
  std::cout << (failed ? "check FAILED" : "check passed")
            << (c.check ? "\n" : " (not enforced: no --check)\n");
  const int status = c.check && failed ? 3 : 0;
  std::cout << "outputs in " << c.out_dir << " (total " << fmt(seconds_since(start), 4) << " s)\n";
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const tlm::MissingText& e) {
    std::cerr << "transformer_lm: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "transformer_lm: error: " << e.what() << "\n";
    return 1;
  }
}
