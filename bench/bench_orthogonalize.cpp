// SPDX-License-Identifier: MIT
/// \file bench_orthogonalize.cpp
/// \brief Newton–Schulz (four schedules, 5 steps, float) against the exact
/// polar factor (BDCSVD and Gram eigendecomposition, float), per shape.
///
/// One registration per (method, shape), named "<method>/<rows>x<cols>", so
/// `--benchmark_filter` keeps quick runs quick, e.g.
///     bench_orthogonalize --benchmark_filter='/(128|256)x'
///
/// Counters (computed once, after the timed loop, from the last result):
///   orth_err      ||O O^T - I||_F on the smaller side (reference::orthogonality_error)
///   dist_to_svd   ||O - U V^T||_F / ||U V^T||_F, U V^T from a double-precision SVD
///   eff_flop_rate Newton–Schulz only: "effective" FLOP/s using the general
///                 product count 4 m^2 n + 2 m^3 per step (m <= n), so rates
///                 compare with libraries that do not exploit symmetry. The
///                 backend computes only half of each symmetric product
///                 (3 m^2 n + m^3 per step), so its arithmetic rate is lower
///                 by that ratio (1.5x for square inputs).
///
/// Threads: Newton–Schulz runs on `--muon_threads=N` threads (default 1),
/// because the exact routes (Eigen's BDCSVD and SelfAdjointEigenSolver
/// without OpenMP) are single-threaded and the default comparison should be
/// like for like. With one thread, times are CPU time (Google Benchmark's
/// default): on a shared machine it leaves out the time spent waiting for a
/// core, which wall time counts. With N > 1 threads, times are wall time
/// (CPU time would add up the threads). The JSON holds both.
///
/// On wide-enough shapes (n/m >= muon::kGramAspectThreshold) the library's
/// automatic choice runs the Gram form of Newton–Schulz; the label says
/// which form ran. Its effective rate still uses the standard count.
///
/// Every method sees the same seeded gradient-like input per shape (a
/// decaying rank-16 signal plus dense noise): it has the spread of small
/// singular values that makes the schedules differ, unlike a Gaussian matrix.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <muon/extern_templates.hpp>  // the heavy templates: compiled once (CMake: INSTANCES)
#include <muon/muon.hpp>

namespace {

using Index = Eigen::Index;
using MatrixF = muon::Matrix<float>;

constexpr int kSteps = 5;

/// Threads Newton–Schulz uses (--muon_threads=N).
int g_threads = 1;

struct Shape {
  Index rows, cols;
  std::string name() const { return std::to_string(rows) + "x" + std::to_string(cols); }
  bool operator<(const Shape& o) const { return rows != o.rows ? rows < o.rows : cols < o.cols; }
};

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> all = {{128, 128},   {256, 256},  {512, 512},
                                         {1024, 1024}, {768, 3072}, {1024, 4096}};
  return all;
}

/// A decaying rank-16 signal (singular values about 1, 1/2, ..., 1/16) plus
/// i.i.d. noise whose singular values sit near 5e-3: the condition number of
/// a typical momentum-averaged gradient, seeded by shape.
MatrixF gradient_like(Shape s) {
  std::mt19937 rng(static_cast<unsigned>(1000003 * s.rows + s.cols));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto gaussian = [&](Index r, Index c) {
    MatrixF M(r, c);
    for (Index j = 0; j < c; ++j)
      for (Index i = 0; i < r; ++i) M(i, j) = normal(rng);
    return M;
  };
  constexpr Index rank = 16;
  const Index large = std::max(s.rows, s.cols);
  // Gaussian columns of length k have norm about sqrt(k): divide it out so
  // the signal's singular values are about the weights.
  MatrixF left = gaussian(s.rows, rank) / std::sqrt(float(s.rows));
  MatrixF right = gaussian(s.cols, rank) / std::sqrt(float(s.cols));
  for (Index k = 0; k < rank; ++k) left.col(k) /= float(k + 1);
  // A Gaussian matrix with entries of variance v^2 has singular values near
  // v (sqrt(large) +- sqrt(small)).
  const float noise = 5e-3f / std::sqrt(float(large));
  return left * right.transpose() + noise * gaussian(s.rows, s.cols);
}

/// Inputs and their double-precision polar factors, built once per shape and
/// shared by every method's registration.
struct ShapeData {
  MatrixF input;
  std::unique_ptr<Eigen::MatrixXd> polar;  // computed on first use: slow at large shapes
};

ShapeData& data_for(Shape s) {
  static std::map<Shape, ShapeData> cache;
  auto it = cache.find(s);
  if (it == cache.end()) it = cache.emplace(s, ShapeData{gradient_like(s), nullptr}).first;
  return it->second;
}

const Eigen::MatrixXd& polar_reference(Shape s) {
  ShapeData& d = data_for(s);
  if (!d.polar)
    d.polar = std::make_unique<Eigen::MatrixXd>(muon::reference::polar_svd<double>(d.input));
  return *d.polar;
}

/// General-product flop count of `steps` Newton–Schulz steps: 4 m^2 n + 2 m^3
/// per step for m x n (m <= n), docs/newton_schulz.md.
double effective_flops(Shape s, int steps) {
  const double m = double(std::min(s.rows, s.cols)), n = double(std::max(s.rows, s.cols));
  return steps * (4 * m * m * n + 2 * m * m * m);
}

void report_quality(benchmark::State& state, Shape s, const MatrixF& result) {
  state.counters["orth_err"] = muon::reference::orthogonality_error(result);
  state.counters["dist_to_svd"] = muon::reference::relative_distance(result, polar_reference(s));
}

void bench_newton_schulz(benchmark::State& state, Shape s, const muon::Schedule& schedule) {
  const MatrixF& G = data_for(s).input;
  muon::Workspace<float> workspace(s.rows, s.cols, g_threads);  // sized once: no allocation below
  MatrixF out(s.rows, s.cols);
  const muon::NewtonSchulzOptions options(schedule, kSteps);
  for (auto _ : state) {
    muon::orthogonalize_into(G, out, workspace, options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.counters["eff_flop_rate"] =
      benchmark::Counter(effective_flops(s, kSteps), benchmark::Counter::kIsIterationInvariantRate);
  report_quality(state, s, out);
  const bool gram = workspace.aspect_ratio() >= muon::kGramAspectThreshold;
  state.SetLabel(schedule.name() + " x" + std::to_string(kSteps) +
                 (gram ? ", gram" : ", standard") + ", " + std::to_string(workspace.threads()) +
                 " thr");
}

template <class PolarFactor>
void bench_exact(benchmark::State& state, Shape s, PolarFactor polar_factor) {
  const MatrixF& G = data_for(s).input;
  MatrixF out;
  for (auto _ : state) {
    out = polar_factor(G);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report_quality(state, s, out);
}

template <class Registration>
void configure(Registration* b) {
  b->Unit(benchmark::kMillisecond);
  if (g_threads > 1) b->UseRealTime();
}

void register_all() {
  // cubic5 twice: as published (c = 0: no A^2 product) and with c = 1e-300,
  // which rounds to 0 in float (the same result) but makes the backend
  // compute A^2: the pair measures what skipping the product saves.
  std::vector<muon::Coefficients> forced = muon::Schedule::cubic5().rows();
  for (auto& row : forced) row.c = 1e-300;
  const std::vector<muon::Schedule> schedules = {
      muon::Schedule::jordan(),  muon::Schedule::cubic(),
      muon::Schedule::quintic(), muon::Schedule::polar_express(),
      muon::Schedule::cubic5(),  muon::Schedule(forced, 1.0, "cubic5_with_square")};
  for (const Shape& s : shapes()) {
    for (const auto& schedule : schedules) {
      const std::string name = "NS_" + schedule.name() + "/" + s.name();
      configure(benchmark::RegisterBenchmark(name.c_str(), [s, schedule](benchmark::State& st) {
        bench_newton_schulz(st, s, schedule);
      }));
    }
    const std::string svd = "polar_svd/" + s.name();
    configure(benchmark::RegisterBenchmark(svd.c_str(), [s](benchmark::State& st) {
      bench_exact(st, s, [](const MatrixF& G) { return muon::reference::polar_svd<float>(G); });
    }));
    const std::string eigh = "polar_eigh/" + s.name();
    configure(benchmark::RegisterBenchmark(eigh.c_str(), [s](benchmark::State& st) {
      bench_exact(st, s, [](const MatrixF& G) { return muon::reference::polar_eigh<float>(G); });
    }));
  }
}

/// Takes --muon_threads=N out of argv (Google Benchmark rejects flags it
/// does not know).
void parse_own_flags(int& argc, char** argv) {
  const char* flag = "--muon_threads=";
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], flag, std::strlen(flag)) == 0) {
      g_threads = std::atoi(argv[i] + std::strlen(flag));
      if (g_threads < 1) {
        std::fprintf(stderr, "bench_orthogonalize: --muon_threads must be >= 1\n");
        std::exit(1);
      }
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
}

}  // namespace

int main(int argc, char** argv) {
  parse_own_flags(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::AddCustomContext("muon_version", MUON_VERSION_STRING);
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("muon_threads", std::to_string(g_threads));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
