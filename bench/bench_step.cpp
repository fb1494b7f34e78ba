// SPDX-License-Identifier: MIT
/// \file bench_step.cpp
/// \brief One whole optimizer step over a model's parameter set, and what
/// the step's read-only checks cost within it.
///
/// Registrations are named "<what>/t<threads>/<model>":
///   memory       one registration and first step, measured by the heap
///                (glibc mallinfo2: bytes the optimizer allocated) and the
///                resident set; runs first, once
///   step         muon::Optimizer<float>::step() (checks, momentum, Newton–Schulz,
///                updates, AdamW), default options, Eigen products
///   step_bf16    the same with bf16 products (set_ns_products(bf16);
///                CPUs with AVX512-BF16 only)
///   step_normuon, step_adamuon
///                the same step with the Muon family's variants
///                (docs/muon_family.md): what their second moments add
///   plain_eigen  the same step as a user writes it with Eigen expressions:
///                per Muon matrix Nesterov momentum, the Newton–Schulz of
///                bench_common.hpp and the update; AdamW on the rest; Eigen's
///                products on t OpenMP threads
///   check        muon::Optimizer<float>::check(): the step's checks alone
///   sgemm        Eigen's 768x3072 by 3072x768 product on t threads: the
///                machine's matrix-multiply rate in this run (the peak the
///                others are compared with)
/// The roofline of this machine and the step's elementwise passes
/// (bench/roofline.hpp; scripts/bench_roofline.py prints the table):
///   triad        a = b + s c over three 64 MiB float arrays on t OpenMP
///                threads: the memory bandwidth (12 B per element, STREAM's count)
///   bf16_dot     vdpbf16ps on register operands on t threads: the bf16
///                product peak (CPUs with AVX512-BF16 only)
///   adamw        muon::Optimizer<float>::step() of GPT-2's token embedding
///                alone (50257x768 on AdamW, 38.6 M elements): the check pass
///                and the write pass. Counters: ns per element; GB/s counted at
///                the minimum 28 B per element (read p, g, m, v; write p, m, v)
///                and at what the two passes move (check: read 16 B; write:
///                read 16 B, write 12 B; 44 B, counted as the triad counts)
///   adamw_check  its check() alone (16 B per element)
///   muon_load/<shape>    the Muon step's first elementwise pass over 12
///                matrices (226 MB of W, G and M: no cache holds them) (engine.hpp's muon_job: the
///                momentum written, the Newton-Schulz input loaded into the workspace, the same
///                loop through Workspace::load_rows): reads m, g, writes m, X: 16 B
///   muon_update/<shape>  its last (the plain Muon update of W from the
///                result, Workspace::update_rows as the engine calls it): reads
///                O, W, writes W: 12 B
///                Both at 768x3072 (wide) and 3072x768 (tall); they run on one
///                thread in the step (one lane per matrix), so t = 1 only.
/// Models: gpt2_layers:<L>: the first L layers of GPT-2 small (per layer
/// 768x2304, 768x768, 768x3072 and 3072x768 on Muon, biases and norms on
/// AdamW) plus the embeddings wte (50257x768) and wpe (1024x768) and the final
/// norm on AdamW. MUON_BENCH_LAYERS sets L (default 12, the whole model).
/// MUON_BENCH_MODEL=mlp: mlp:784-512-512-10, examples/fashion_mnist's MLP
/// (fc1 512x784 and fc2 512x512 on Muon, the classifier and biases on AdamW),
/// where per-call overheads weigh most. MUON_BENCH_MODEL=small: gpt:d192x6, a
/// character-level GPT (d_model 192, 6 layers, vocabulary 65, context 256)
/// whose 24 Muon matrices are all below the threads threshold (m^2 n <
/// 3.2e7), so the optimizer runs them one per thread side by side; the plain
/// Eigen loop splits each product over threads. Thread counts follow bench_common.hpp
/// (MUON_BENCH_THREADS).
///
/// Counters: GFLOPs = the minimal Newton–Schulz flop count of the step,
/// 5 (3 m^2 n + m^3) per Muon matrix (m <= n: symmetric X X^T and A^2, general
/// B X), over the step time; the sgemm registration counts 2 m n k.
/// scripts/bench_step.sh runs this and PyTorch's step (scripts/torch_cpu_step.py)
/// and prints the ratios and the fraction of the sgemm rate.

#include <benchmark/benchmark.h>
#include <malloc.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <muon/muon.hpp>

#include "bench_common.hpp"
#include "roofline.hpp"

namespace {

struct Tensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float> value, grad;
  // Muon: the 2-D hidden weights; AdamW: embeddings, norms, biases (the
  // optimizer's default routing makes the same choice from the names).
  bool muon() const {
    return shape.size() == 2 && name.find("wte") == std::string::npos &&
           name.find("wpe") == std::string::npos && name.find("classifier") == std::string::npos;
  }
  std::int64_t rows() const { return shape[0]; }
  std::int64_t cols() const { return shape.size() == 2 ? shape[1] : 1; }
};

int layers() {
  const char* env = std::getenv("MUON_BENCH_LAYERS");
  return env ? std::max(1, std::atoi(env)) : 12;
}
std::string model_kind() {
  const char* env = std::getenv("MUON_BENCH_MODEL");
  return env ? std::string(env) : std::string("gpt2");
}
bool mlp_model() { return model_kind() == "mlp"; }
bool small_model() { return model_kind() == "small"; }
std::string model() {
  if (mlp_model()) return "mlp:784-512-512-10";
  if (small_model()) return "gpt:d192x6";
  return "gpt2_layers:" + std::to_string(layers());
}

/// A GPT-2-style model's parameters (the first `layers` blocks): width d,
/// vocabulary `vocab`, context `context`.
template <class Add>
void add_gpt(Add& add, int layers, std::int64_t d, std::int64_t vocab, std::int64_t context) {
  add("wte.weight", {vocab, d});
  add("wpe.weight", {context, d});
  for (int l = 0; l < layers; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    add(h + "ln_1.weight", {d});
    add(h + "ln_1.bias", {d});
    add(h + "attn.c_attn.weight", {d, 3 * d});
    add(h + "attn.c_attn.bias", {3 * d});
    add(h + "attn.c_proj.weight", {d, d});
    add(h + "attn.c_proj.bias", {d});
    add(h + "ln_2.weight", {d});
    add(h + "ln_2.bias", {d});
    add(h + "mlp.c_fc.weight", {d, 4 * d});
    add(h + "mlp.c_fc.bias", {4 * d});
    add(h + "mlp.c_proj.weight", {4 * d, d});
    add(h + "mlp.c_proj.bias", {d});
  }
  add("ln_f.weight", {d});
  add("ln_f.bias", {d});
}

/// The model's parameters, values and gradients drawn from N(0, 0.02^2).
std::vector<Tensor> make_model() {
  std::vector<Tensor> t;
  auto add = [&t](std::string name, std::vector<std::int64_t> shape) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    t.push_back({std::move(name), std::move(shape), std::vector<float>(std::size_t(n)),
                 std::vector<float>(std::size_t(n))});
  };
  if (mlp_model()) {  // examples/fashion_mnist's default MLP
    add("fc1.weight", {512, 784});
    add("fc1.bias", {512});
    add("fc2.weight", {512, 512});
    add("fc2.bias", {512});
    add("classifier.weight", {10, 512});
    add("classifier.bias", {10});
  } else if (small_model()) {
    add_gpt(add, 6, 192, 65, 256);
  } else {
    add_gpt(add, layers(), 768, 50257, 1024);  // GPT-2 small
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (auto& x : t) {
    for (float& v : x.value) v = normal(rng);
    for (float& v : x.grad) v = normal(rng);
  }
  return t;
}

/// The minimal Newton–Schulz flop count of one step (see the file comment).
double ns_flops(const std::vector<Tensor>& tensors) {
  double flops = 0;
  for (const auto& t : tensors) {
    if (!t.muon()) continue;
    const double m = double(std::min(t.rows(), t.cols()));
    const double n = double(std::max(t.rows(), t.cols()));
    flops += bench::kSteps * (3 * m * m * n + m * m * m);
  }
  return flops;
}

void attach(muon::Optimizer<float>& opt, std::vector<Tensor>& tensors) {
  for (auto& t : tensors) {
    muon::ParamView<float> p, g;
    p.data = t.value.data();
    g.data = t.grad.data();
    p.ndim = g.ndim = int(t.shape.size());
    for (std::size_t d = 0; d < t.shape.size(); ++d) p.shape[d] = g.shape[d] = t.shape[d];
    opt.add_param(t.name, p, g);
  }
}

// ---- memory -------------------------------------------------------------------

std::size_t heap_bytes() {
  const struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;  // in use: arena chunks + mmapped chunks
}
std::size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * std::size_t(sysconf(_SC_PAGESIZE));
}

void bm_memory(benchmark::State& state, int threads) {
  bench::use_threads(threads);
  std::vector<Tensor> tensors = make_model();
  double muon_bytes = 0, adamw_bytes = 0;
  for (const auto& t : tensors)
    (t.muon() ? muon_bytes : adamw_bytes) += 4.0 * double(t.value.size());
  for (auto _ : state) {
    malloc_trim(0);
    const std::size_t heap0 = heap_bytes(), rss0 = resident_bytes();
    {
      muon::Optimizer<float> opt(muon::MuonGroupOptions().with_lr(0.02));
      attach(opt, tensors);
      opt.step();
      const double heap = double(heap_bytes() - heap0), rss = double(resident_bytes() - rss0);
      // Beyond the momentum (1x the Muon weights) and the AdamW moments (2x
      // the AdamW parameters): workspaces, packing buffers, bookkeeping.
      const double extra = heap - muon_bytes - 2 * adamw_bytes;
      state.counters["muon_weight_MB"] = muon_bytes * 1e-6;
      state.counters["adamw_param_MB"] = adamw_bytes * 1e-6;
      state.counters["optimizer_MB"] = heap * 1e-6;
      state.counters["rss_growth_MB"] = rss * 1e-6;
      state.counters["beyond_state_MB"] = extra * 1e-6;
      // The target's measure: Muon-side memory (momentum + workspaces) over
      // the Muon weights' bytes.
      state.counters["muon_side_x_weights"] = (muon_bytes + extra) / muon_bytes;
      state.counters["workspaces"] = double(opt.workspace_count());
    }
  }
}

// ---- the step ----------------------------------------------------------------------

void bm_step(benchmark::State& state, int threads, bool check_only, muon::eigen::Products products,
             muon::MuonVariant variant) {
  bench::use_threads(threads);
  std::vector<Tensor> tensors = make_model();
  muon::Optimizer<float> opt(muon::MuonGroupOptions().with_lr(0.02).with_variant(variant));
  opt.set_ns_products(products);
  attach(opt, tensors);
  opt.step();  // first step: everything warm
  for (auto _ : state) {
    if (check_only)
      benchmark::DoNotOptimize(opt.check());
    else
      benchmark::DoNotOptimize(opt.step());
  }
  state.counters["GFLOPs"] = benchmark::Counter(check_only ? 0.0 : ns_flops(tensors) * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
  state.counters["workspaces"] = double(opt.workspace_count());
}

/// The step as a user writes it with Eigen expressions, default options of
/// both optimizers (torch.optim.Muon's and AdamW's): Nesterov EMA momentum
/// 0.95, NS5, lr scaled by sqrt(max(1, rows/cols)), decoupled weight decay.
struct PlainStep {
  using Map = Eigen::Map<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
  using Array = Eigen::Map<Eigen::ArrayXf>;
  std::vector<Eigen::ArrayXf> m1, m2;  // momentum / exp_avg, exp_avg_sq
  long step = 0;

  explicit PlainStep(const std::vector<Tensor>& tensors) {
    for (const auto& t : tensors) {
      m1.push_back(Eigen::ArrayXf::Zero(Eigen::Index(t.value.size())));
      m2.push_back(t.muon() ? Eigen::ArrayXf()
                            : Eigen::ArrayXf::Zero(Eigen::Index(t.value.size())));
    }
  }

  void run(std::vector<Tensor>& tensors) {
    ++step;
    const float lr = 0.02f, mu = 0.95f, wd = 0.1f;
    const float alr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, awd = 0.01f;
    const float c1 = 1 - std::pow(b1, float(step)), c2 = 1 - std::pow(b2, float(step));
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      Tensor& t = tensors[i];
      const Eigen::Index n = Eigen::Index(t.value.size());
      Array w(t.value.data(), n), g(t.grad.data(), n);
      if (t.muon()) {
        m1[i] = mu * m1[i] + (1 - mu) * g;
        const Eigen::ArrayXf u = (1 - mu) * g + mu * m1[i];
        const Eigen::MatrixXf U = Eigen::Map<const Eigen::MatrixXf>(u.data(), t.cols(), t.rows());
        const Eigen::MatrixXf O = bench::plain_eigen_ns5(U);  // the transpose: same polar factor
        const float scale = std::sqrt(std::max(1.0f, float(t.rows()) / float(t.cols())));
        w = w * (1 - lr * wd) - lr * scale * Eigen::Map<const Eigen::ArrayXf>(O.data(), n);
      } else {
        m1[i] = b1 * m1[i] + (1 - b1) * g;
        m2[i] = b2 * m2[i] + (1 - b2) * g.square();
        w = w * (1 - alr * awd) - (alr / c1) * m1[i] / ((m2[i] / c2).sqrt() + eps);
      }
    }
  }
};

void bm_plain(benchmark::State& state, int threads) {
  bench::use_threads(threads);
  std::vector<Tensor> tensors = make_model();
  PlainStep plain(tensors);
  plain.run(tensors);
  for (auto _ : state) {
    plain.run(tensors);
    benchmark::DoNotOptimize(tensors.front().value.data());
  }
  state.counters["GFLOPs"] =
      benchmark::Counter(ns_flops(tensors) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

void bm_sgemm(benchmark::State& state, int threads) {
  bench::use_threads(threads);
  const Eigen::Index m = 768, k = 3072;
  const Eigen::MatrixXf A = Eigen::MatrixXf::Random(m, k), B = Eigen::MatrixXf::Random(k, m);
  Eigen::MatrixXf C(m, m);
  for (auto _ : state) {
    C.noalias() = A * B;
    benchmark::DoNotOptimize(C.data());
  }
  state.counters["GFLOPs"] = benchmark::Counter(2.0 * double(m) * double(m) * double(k) * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

// ---- the roofline and the elementwise passes --------------------------------------

void bm_triad(benchmark::State& state, int threads) {
  roofline::TriadArrays x(std::size_t(1) << 24, threads);
  float s = 0.5f;
  for (auto _ : state) {
    roofline::triad(x, s, threads);
    benchmark::DoNotOptimize(x.a.data());
    benchmark::ClobberMemory();
    s = -s;
  }
  state.counters["GBps"] =
      benchmark::Counter(x.bytes(), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

void bm_bf16_dot(benchmark::State& state, int threads) {
  const std::int64_t iterations = std::int64_t(1) << 22;
  for (auto _ : state) benchmark::DoNotOptimize(roofline::bf16_dot(iterations, threads));
  state.counters["GFLOPs"] =
      benchmark::Counter(roofline::bf16_dot_flops(iterations) * double(threads) * 1e-9,
                         benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

/// GPT-2's token embedding alone, on AdamW (its name routes it there).
void bm_adamw(benchmark::State& state, int threads, bool check_only) {
  bench::use_threads(threads);
  const Eigen::Index rows = 50257, cols = 768;
  std::vector<float> w(std::size_t(rows * cols)), g(w.size());
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (float& x : w) x = normal(rng);
  for (float& x : g) x = normal(rng);
  muon::Optimizer<float> opt;
  muon::ParamView<float> p, gv;
  p.data = w.data();
  gv.data = g.data();
  p.ndim = gv.ndim = 2;
  p.shape[0] = gv.shape[0] = rows;
  p.shape[1] = gv.shape[1] = cols;
  opt.add_param("wte.weight", p, gv);
  opt.step();
  for (auto _ : state) {
    if (check_only)
      benchmark::DoNotOptimize(opt.check());
    else
      benchmark::DoNotOptimize(opt.step());
  }
  const double n = double(rows * cols);
  using C = benchmark::Counter;
  state.counters["elements"] = n;
  state.counters["ns_per_element"] = C(n * 1e-9, C::kIsIterationInvariantRate | C::kInvert);
  if (check_only) {
    state.counters["GBps"] = C(16.0 * n, C::kIsIterationInvariantRate);
  } else {
    state.counters["GBps_min28"] = C(28.0 * n, C::kIsIterationInvariantRate);
    state.counters["GBps"] = C(44.0 * n, C::kIsIterationInvariantRate);
  }
  state.counters["threads"] = threads;
}

/// The Muon step's elementwise passes over kPassMatrices matrices of rows x
/// cols (far more than the caches hold, as in the step), as engine.hpp's
/// muon_job runs them (Nesterov EMA momentum 0.95, decoupled weight decay),
/// through one workspace: the momentum + Newton-Schulz input pass, or the
/// update.
constexpr int kPassMatrices = 12;
void bm_muon_pass(benchmark::State& state, Eigen::Index rows, Eigen::Index cols, bool update) {
  bench::use_threads(1);
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  std::vector<Matrix> W, G, M;
  for (int i = 0; i < kPassMatrices; ++i) {
    W.push_back(Matrix::Random(rows, cols));
    G.push_back(Matrix::Random(rows, cols));
    M.push_back(Matrix::Zero(rows, cols));
  }
  muon::Workspace<float> ws(rows, cols, 1);
  const auto k = muon::optim::rules::momentum_coefficients<float>(0.95, true, true);
  const auto u = muon::optim::rules::muon_update_coefficients<float>(1.0 - 0.02 * 0.1, 0.02, false);
  const auto load = [&](int i) {
    ws.load_rows([&](Eigen::Index r, Eigen::Index c, Eigen::Index n, float* out) {
      float* m = &M[std::size_t(i)](r, c);
      const float* g = &G[std::size_t(i)](r, c);
      const float* w = &W[std::size_t(i)](r, c);
      for (Eigen::Index e = 0; e < n; ++e) {
        const auto x = muon::optim::step::momentum_element<float>(m[e], g[e], w[e], k);
        m[e] = x.momentum;
        out[e] = x.input;
      }
    });
  };
  load(0);
  for (auto _ : state) {
    for (int i = 0; i < kPassMatrices; ++i) {
      if (update) {
        Matrix& Wi = W[std::size_t(i)];
        ws.update_rows(
            [&](Eigen::Index r, Eigen::Index c, Eigen::Index n, const float* o) {
              float* w = &Wi(r, c);
              for (Eigen::Index e = 0; e < n; ++e)
                w[e] = muon::optim::rules::muon_parameter(w[e], o[e], u);
            },
            [&](Eigen::Index r, Eigen::Index c, Eigen::Index n) {
              muon::Workspace<float>::prefetch(&Wi(r, c), std::size_t(n) * sizeof(float));
            });
      } else {
        load(i);
      }
    }
    benchmark::ClobberMemory();
  }
  using C = benchmark::Counter;
  const double n = double(rows * cols) * kPassMatrices;
  state.counters["ns_per_element"] = C(n * 1e-9, C::kIsIterationInvariantRate | C::kInvert);
  state.counters["GBps"] = C((update ? 12.0 : 16.0) * n, C::kIsIterationInvariantRate);
  state.counters["threads"] = 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<int> counts = bench::thread_counts();
  const std::string name = model();
  for (const int t : counts) {
    const std::string suffix = "/t" + std::to_string(t) + "/" + name;
    benchmark::RegisterBenchmark(("memory" + suffix).c_str(), bm_memory, t)
        ->Unit(benchmark::kMillisecond)
        ->Iterations(1);
  }
  for (const int t : counts) {
    const std::string suffix = "/t" + std::to_string(t) + "/" + name;
    auto timed = [](benchmark::internal::Benchmark* b) {
      b->Unit(benchmark::kMillisecond)->UseRealTime();  // --benchmark_min_time sets the time
    };
    timed(benchmark::RegisterBenchmark(("sgemm" + suffix).c_str(), bm_sgemm, t));
    using muon::MuonVariant;
    using muon::eigen::Products;
    timed(benchmark::RegisterBenchmark(("step" + suffix).c_str(), bm_step, t, false,
                                       Products::eigen, MuonVariant::muon));
    if (muon::eigen::products_available(Products::bf16))
      timed(benchmark::RegisterBenchmark(("step_bf16" + suffix).c_str(), bm_step, t, false,
                                         Products::bf16, MuonVariant::muon));
    timed(benchmark::RegisterBenchmark(("step_normuon" + suffix).c_str(), bm_step, t, false,
                                       Products::eigen, MuonVariant::normuon));
    timed(benchmark::RegisterBenchmark(("step_adamuon" + suffix).c_str(), bm_step, t, false,
                                       Products::eigen, MuonVariant::adamuon));
    timed(benchmark::RegisterBenchmark(("plain_eigen" + suffix).c_str(), bm_plain, t));
    timed(benchmark::RegisterBenchmark(("check" + suffix).c_str(), bm_step, t, true,
                                       Products::eigen, MuonVariant::muon));
  }
  // The roofline and the elementwise passes (not per model).
  for (const int t : counts) {
    const std::string suffix = "/t" + std::to_string(t);
    auto timed = [](benchmark::internal::Benchmark* b) {
      b->Unit(benchmark::kMillisecond)->UseRealTime();
    };
    timed(benchmark::RegisterBenchmark(("triad" + suffix).c_str(), bm_triad, t));
    if (roofline::has_bf16_dot())
      timed(benchmark::RegisterBenchmark(("bf16_dot" + suffix).c_str(), bm_bf16_dot, t));
    timed(benchmark::RegisterBenchmark(("adamw" + suffix + "/wte").c_str(), bm_adamw, t, false));
    timed(
        benchmark::RegisterBenchmark(("adamw_check" + suffix + "/wte").c_str(), bm_adamw, t, true));
  }
  for (const bool update : {false, true})
    for (const auto& shape : {std::pair<Eigen::Index, Eigen::Index>{768, 3072}, {3072, 768}}) {
      const std::string name = std::string(update ? "muon_update" : "muon_load") + "/t1/" +
                               std::to_string(shape.first) + "x" + std::to_string(shape.second);
      benchmark::RegisterBenchmark(name.c_str(), bm_muon_pass, shape.first, shape.second, update)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
