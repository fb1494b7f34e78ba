// SPDX-License-Identifier: MIT
/// \file bench_step.cpp
/// \brief One whole optimizer step over a model's parameter set, and what
/// the step's read-only checks cost within it.
///
/// Registrations are named "<what>/<model>":
///   step     muon::Optimizer<float>::step() (checks, momentum, Newton–Schulz,
///            updates, AdamW)
///   check    muon::Optimizer<float>::check(): the step's checks alone
/// Models: gpt2_layers:<L>: the first L layers of GPT-2 small (per layer
/// 768x2304, 768x768, 768x3072 and 3072x768 on Muon, biases and norms on
/// AdamW) plus the embeddings wte (50257x768) and wpe (1024x768) and the final
/// norm on AdamW. MUON_BENCH_LAYERS sets L (default 2); threads follow
/// muon::default_threads() (MUON_NUM_THREADS).
///
/// Counters: GFLOPs = 5 (4 m^2 n + 2 m^3) per Muon matrix (m <= n) per step,
/// divided by the step time (the general-product count, as bench_cpu).

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <muon/muon.hpp>

namespace {

struct Tensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float> value, grad;
};

std::vector<Tensor> gpt2_small(int layers) {
  std::vector<Tensor> t;
  auto add = [&t](std::string name, std::vector<std::int64_t> shape) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    t.push_back({std::move(name), std::move(shape), std::vector<float>(std::size_t(n)),
                 std::vector<float>(std::size_t(n))});
  };
  add("wte.weight", {50257, 768});
  add("wpe.weight", {1024, 768});
  for (int l = 0; l < layers; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    add(h + "ln_1.weight", {768});
    add(h + "ln_1.bias", {768});
    add(h + "attn.c_attn.weight", {768, 2304});
    add(h + "attn.c_attn.bias", {2304});
    add(h + "attn.c_proj.weight", {768, 768});
    add(h + "attn.c_proj.bias", {768});
    add(h + "ln_2.weight", {768});
    add(h + "ln_2.bias", {768});
    add(h + "mlp.c_fc.weight", {768, 3072});
    add(h + "mlp.c_fc.bias", {3072});
    add(h + "mlp.c_proj.weight", {3072, 768});
    add(h + "mlp.c_proj.bias", {768});
  }
  add("ln_f.weight", {768});
  add("ln_f.bias", {768});
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (auto& x : t) {
    for (float& v : x.value) v = normal(rng);
    for (float& v : x.grad) v = normal(rng);
  }
  return t;
}

double ns_flops(const std::vector<Tensor>& tensors) {
  double flops = 0;
  for (const auto& t : tensors) {
    if (t.shape.size() != 2 || t.name.find("wte") != std::string::npos ||
        t.name.find("wpe") != std::string::npos)
      continue;
    const double m = double(std::min(t.shape[0], t.shape[1]));
    const double n = double(std::max(t.shape[0], t.shape[1]));
    flops += 5 * (4 * m * m * n + 2 * m * m * m);
  }
  return flops;
}

int layers() {
  const char* env = std::getenv("MUON_BENCH_LAYERS");
  return env ? std::max(1, std::atoi(env)) : 2;
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

void bm_step(benchmark::State& state, bool check_only) {
  std::vector<Tensor> tensors = gpt2_small(layers());
  muon::Optimizer<float> opt(muon::MuonGroupOptions().with_lr(0.02));
  attach(opt, tensors);
  opt.step();  // first step: everything warm
  for (auto _ : state) {
    if (check_only)
      benchmark::DoNotOptimize(opt.check());
    else
      benchmark::DoNotOptimize(opt.step());
  }
  const double flops = ns_flops(tensors);
  state.counters["GFLOPs"] = benchmark::Counter(check_only ? 0.0 : flops * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = muon::default_threads();
  state.counters["workspaces"] = double(opt.workspace_count());
}

}  // namespace

int main(int argc, char** argv) {
  const std::string model = "gpt2_layers:" + std::to_string(layers());
  benchmark::RegisterBenchmark(("step/" + model).c_str(),
                               [](benchmark::State& s) { bm_step(s, false); })
      ->Unit(benchmark::kMillisecond)
      ->MinTime(2.0);
  benchmark::RegisterBenchmark(("check/" + model).c_str(),
                               [](benchmark::State& s) { bm_step(s, true); })
      ->Unit(benchmark::kMillisecond)
      ->MinTime(2.0);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
