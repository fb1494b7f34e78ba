// SPDX-License-Identifier: MIT
// CUDA benchmarks (Google Benchmark, timed with CUDA events, manual time):
//
//   ns/<type>/<rows>x<cols>/batch:<b>/<eager|graph>   one Newton–Schulz call (Jordan x5)
//   step/<rows>x<cols>/<eager|graph>                  Optimizer<float> step, one parameter
//   step/gpt2-small/<eager|graph>                     Optimizer<float> step over GPT-2 small's
//                                                     48 matrices (12 x {2304x768, 768x768,
//                                                     3072x768, 768x3072}, torch layout)
//
// Counters: ms (mean per call) and TFLOP/s counting 5 (4 m^2 n + 2 m^3) per
// m x n matrix (m <= n), the full-product count, so that implementations that
// exploit symmetry report an *effective* rate comparable with PyTorch's.
// Without a device it prints "no CUDA device: skipping" and exits 0.

#include <benchmark/benchmark.h>

#include <muon/cuda.hpp>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {
namespace mc = muon::cuda;

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { MUON_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~Stream() { (void)cudaStreamDestroy(s); }
};

struct Events {
  cudaEvent_t a = nullptr, b = nullptr;
  Events() {
    MUON_CUDA_CHECK(cudaEventCreate(&a));
    MUON_CUDA_CHECK(cudaEventCreate(&b));
  }
  ~Events() {
    (void)cudaEventDestroy(a);
    (void)cudaEventDestroy(b);
  }
};

double ns_flops(std::int64_t rows, std::int64_t cols, int steps) {
  const double m = static_cast<double>(rows < cols ? rows : cols);
  const double n = static_cast<double>(rows < cols ? cols : rows);
  return steps * (4 * m * m * n + 2 * m * m * m);
}

__global__ void fill_random(float* x, std::int64_t n, unsigned seed) {
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(k) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    x[k] = (static_cast<float>(h & 0xffffff) / 16777216.0f - 0.5f) * 0.02f;
  }
}
template <class T>
__global__ void cast_from(const float* x, T* y, std::int64_t n) {
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    y[k] = mc::kernels::from_float<T>(x[k]);
}

// Times `body(stream)` per iteration with CUDA events.
template <class F>
void timed(benchmark::State& state, cudaStream_t s, F&& body, double flops) {
  Events ev;
  for (int w = 0; w < 3; ++w) body(s);
  MUON_CUDA_CHECK(cudaStreamSynchronize(s));
  double total_ms = 0;
  for (auto _ : state) {
    MUON_CUDA_CHECK(cudaEventRecord(ev.a, s));
    body(s);
    MUON_CUDA_CHECK(cudaEventRecord(ev.b, s));
    MUON_CUDA_CHECK(cudaEventSynchronize(ev.b));
    float ms = 0;
    MUON_CUDA_CHECK(cudaEventElapsedTime(&ms, ev.a, ev.b));
    total_ms += ms;
    state.SetIterationTime(ms * 1e-3);
  }
  const double mean_ms = total_ms / static_cast<double>(state.iterations());
  state.counters["ms"] = mean_ms;
  if (flops > 0) state.counters["TFLOP/s"] = flops / (mean_ms * 1e-3) / 1e12;
}

struct Graph {
  cudaGraph_t g = nullptr;
  cudaGraphExec_t e = nullptr;
  ~Graph() {
    if (e) (void)cudaGraphExecDestroy(e);
    if (g) (void)cudaGraphDestroy(g);
  }
};

template <class T>
void bench_ns(benchmark::State& state, std::int64_t rows, std::int64_t cols, std::int64_t batch,
              bool graph) {
  Stream st;
  const std::int64_t n = rows * cols * batch;
  mc::DeviceBuffer f(sizeof(float) * n, st.s);
  mc::DeviceBuffer x(sizeof(T) * n, st.s);
  fill_random<<<1024, 256, 0, st.s>>>(static_cast<float*>(f.data()), n, 7u);
  cast_from<T><<<1024, 256, 0, st.s>>>(static_cast<float*>(f.data()), static_cast<T*>(x.data()), n);
  mc::check_launch("bench init");
  mc::Orthogonalizer<T> ortho(rows, cols, batch, st.s);
  const mc::BatchedMatrixView<T> v(static_cast<T*>(x.data()), rows, cols, rows, rows * cols, batch);
  const muon::NewtonSchulzOptions opt;  // Jordan x5, like torch
  auto eager = [&](cudaStream_t s) { ortho(v, v, opt, s); };
  const double flops = ns_flops(rows, cols, opt.steps) * static_cast<double>(batch);
  if (!graph) {
    timed(state, st.s, eager, flops);
    return;
  }
  Graph gr;
  ortho.workspace().bind(st.s);
  MUON_CUDA_CHECK(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal));
  eager(st.s);
  MUON_CUDA_CHECK(cudaStreamEndCapture(st.s, &gr.g));
  MUON_CUDA_CHECK(cudaGraphInstantiate(&gr.e, gr.g, 0));
  timed(
      state, st.s, [&](cudaStream_t s) { MUON_CUDA_CHECK(cudaGraphLaunch(gr.e, s)); }, flops);
}

// Optimizer<float> (bf16 Newton–Schulz) over `shapes` (torch (out, in) layout).
void bench_step(benchmark::State& state,
                const std::vector<std::pair<std::int64_t, std::int64_t>>& shapes, bool graph) {
  Stream st;
  std::vector<mc::DeviceBuffer> bufs;
  mc::Optimizer<float> opt;
  double flops = 0;
  unsigned seed = 1;
  for (std::size_t k = 0; k < shapes.size(); ++k) {
    const std::int64_t r = shapes[k].first, c = shapes[k].second, n = r * c;
    bufs.emplace_back(sizeof(float) * n, st.s);
    float* p = static_cast<float*>(bufs.back().data());
    bufs.emplace_back(sizeof(float) * n, st.s);
    float* g = static_cast<float*>(bufs.back().data());
    fill_random<<<1024, 256, 0, st.s>>>(p, n, ++seed);
    fill_random<<<1024, 256, 0, st.s>>>(g, n, ++seed);
    muon::ParamOptions muon_route;
    muon_route.route = muon::Route::muon;
    opt.add_param("p" + std::to_string(k), p, g, {r, c}, muon_route);
    flops += ns_flops(r, c, 5);
  }
  mc::check_launch("bench init");
  if (graph) {
    opt.capture(st.s);
    timed(
        state, st.s, [&](cudaStream_t s) { opt.replay(s); }, flops);
  } else {
    timed(
        state, st.s, [&](cudaStream_t s) { opt.step(s); }, flops);
  }
  state.counters["shape_batches"] = static_cast<double>(opt.shape_batch_count());
}

std::string shape_name(std::int64_t r, std::int64_t c) {
  return std::to_string(r) + "x" + std::to_string(c);
}

}  // namespace

int main(int argc, char** argv) {
  if (!mc::device_available()) {
    std::puts("no CUDA device: skipping");
    return 0;
  }
  struct Shape {
    std::int64_t r, c, b;
  };
  const Shape shapes[] = {{768, 3072, 1},   {1024, 4096, 1}, {4096, 4096, 1},
                          {4096, 14336, 1}, {8192, 8192, 1}, {1024, 1024, 32}};
  for (const auto& s : shapes)
    for (bool graph : {false, true}) {
      const std::string suffix =
          shape_name(s.r, s.c) + "/batch:" + std::to_string(s.b) + (graph ? "/graph" : "/eager");
      benchmark::RegisterBenchmark(
          ("ns/bf16/" + suffix).c_str(),
          [=](benchmark::State& st) { bench_ns<__nv_bfloat16>(st, s.r, s.c, s.b, graph); })
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
      if (s.b == 1 && s.r <= 4096 && s.c <= 4096)
        benchmark::RegisterBenchmark(
            ("ns/float/" + suffix).c_str(),
            [=](benchmark::State& st) { bench_ns<float>(st, s.r, s.c, s.b, graph); })
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond);
      if (s.b == 1)
        benchmark::RegisterBenchmark(
            ("step/" + shape_name(s.r, s.c) + (graph ? "/graph" : "/eager")).c_str(),
            [=](benchmark::State& st) {
              bench_step(st, {{s.r, s.c}}, graph);
            })
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond);
    }
  std::vector<std::pair<std::int64_t, std::int64_t>> gpt2;
  for (int layer = 0; layer < 12; ++layer) {
    gpt2.push_back({2304, 768});
    gpt2.push_back({768, 768});
    gpt2.push_back({3072, 768});
    gpt2.push_back({768, 3072});
  }
  for (bool graph : {false, true})
    benchmark::RegisterBenchmark(graph ? "step/gpt2-small/graph" : "step/gpt2-small/eager",
                                 [=](benchmark::State& st) { bench_step(st, gpt2, graph); })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
