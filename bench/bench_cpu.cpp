// SPDX-License-Identifier: MIT
/// \file bench_cpu.cpp
/// \brief CPU Newton–Schulz (Jordan quintic, 5 steps, float): this library
/// against a plain Eigen NS5 written by hand, at equal thread counts, and
/// against the exact polar factor (BDCSVD and Gram eigendecomposition).
///
/// Registrations are named "<method>/t<threads>/<rows>x<cols>"; every method
/// of one thread count runs on exactly that many threads:
///   plain_eigen      the baseline a user writes by hand (Eigen expressions,
///                    general products), threaded by Eigen's OpenMP
///                    parallelization with Eigen::setNbThreads(t) (a build
///                    without OpenMP registers only t = 1)
///   muon_oneshot     muon::orthogonalize(G): the convenient call (its
///                    per-thread workspace, this build's automatic engine)
///   muon_reused      orthogonalize_into, reused workspace, automatic engine:
///                    what muon_oneshot is compared with
///   muon_default     orthogonalize_into, reused workspace, default options,
///                    Eigen products: the default (pure Eigen) build's path
///   muon_standard    reused workspace, forced standard iteration
///   muon_gram        reused workspace, forced Gram Newton–Schulz
///   muon_blas        products from BLAS, OpenBLAS on t threads (MUON_USE_BLAS
///                    builds only)
///   muon_bf16        bf16 products, fp32 accumulation: the library's
///                    AVX512-BF16 kernel on t threads of its pool (CPUs with
///                    AVX512-BF16 only); the standard iteration
///   muon_bf16_gram   bf16 products, forced Gram form (faster on wide shapes,
///                    less accurate: see Workspace::gram_aspect_threshold)
///   polar_svd        reference::polar_svd<float> (at the largest t only)
///   polar_eigh       reference::polar_eigh<float> (at the largest t only)
/// Thread counts: MUON_BENCH_THREADS (comma list, default "1,<cores>").
/// Shapes: MUON_BENCH_SHAPES (comma list of <rows>x<cols>, default below).
/// Counters: GFLOPs = effective rate using the general-product count
/// 5 (4 m^2 n + 2 m^3) for every method (so rates compare as inverse times);
/// orth_err = ||O O^T - I||_F on the smaller side; for the Newton–Schulz
/// methods also ns_rounding = ||O - O64||_F / ||O64||_F, the distance to the
/// same 5 quintic steps computed in double: the error rounding adds, which is
/// what differs between fp32 and bf16 paths (Jordan's quintic does not
/// converge, so orth_err mostly measures where the polynomial left the small
/// singular values, equal for every method). scripts/bench_cpu.sh runs this
/// with --benchmark_format=json and prints the ratios to plain_eigen of the
/// same thread count.
///
/// With MUON_BENCH_DUMP_INPUTS=<dir> set, each shape's input is also written
/// to <dir>/<rows>x<cols>.f32 (raw little-endian float32, row-major), so that
/// scripts/torch_cpu_ns.py --inputs <dir> runs PyTorch on the same matrices
/// and the error counters compare like with like.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <muon/muon.hpp>

#include "bench_common.hpp"

namespace {

using Index = Eigen::Index;
using MatrixF = Eigen::MatrixXf;
using bench::kSteps;
using bench::plain_eigen_ns5;

struct Shape {
  Index rows, cols;
  std::string name() const { return std::to_string(rows) + "x" + std::to_string(cols); }
};

std::vector<Shape> shapes() {
  std::vector<Shape> list;
  if (const char* env = std::getenv("MUON_BENCH_SHAPES")) {
    std::stringstream in(env);
    std::string item;
    while (std::getline(in, item, ',')) {
      const auto x = item.find('x');
      if (x == std::string::npos) throw std::runtime_error("MUON_BENCH_SHAPES: bad shape " + item);
      list.push_back({std::stol(item.substr(0, x)), std::stol(item.substr(x + 1))});
    }
  }
  if (list.empty())
    list = {{256, 256}, {512, 512}, {1024, 1024}, {768, 3072}, {1024, 4096}, {2048, 2048}};
  return list;
}

MatrixF input(Shape s) {
  std::mt19937 rng(static_cast<unsigned>(7919 * s.rows + s.cols));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  MatrixF G(s.rows, s.cols);
  for (Index j = 0; j < s.cols; ++j)
    for (Index i = 0; i < s.rows; ++i) G(i, j) = normal(rng);
  return G;
}

double effective_flops(Shape s) {
  const double m = double(std::min(s.rows, s.cols)), n = double(std::max(s.rows, s.cols));
  return kSteps * (4 * m * m * n + 2 * m * m * m);
}

/// NS5 of the shape's input in double, computed once per shape.
const Eigen::MatrixXd& double_ns5(Shape s) {
  static std::map<std::pair<Index, Index>, Eigen::MatrixXd> cache;
  auto it = cache.find({s.rows, s.cols});
  if (it == cache.end())
    it = cache
             .emplace(std::make_pair(s.rows, s.cols),
                      plain_eigen_ns5(Eigen::MatrixXd(input(s).cast<double>())))
             .first;
  return it->second;
}

enum class Kind { newton_schulz, exact_polar };

void finish(benchmark::State& state, Shape s, int threads, const MatrixF& out, Kind kind) {
  state.counters["GFLOPs"] = benchmark::Counter(
      effective_flops(s) * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["threads"] = threads;
  state.counters["orth_err"] = muon::reference::orthogonality_error(out);
  if (kind == Kind::newton_schulz) {
    const Eigen::MatrixXd& ref = double_ns5(s);
    state.counters["ns_rounding"] = (out.cast<double>() - ref).norm() / ref.norm();
  }
}

void bm_plain(benchmark::State& state, Shape s, int threads) {
  bench::use_threads(threads);
  const MatrixF G = input(s);
  MatrixF out;
  for (auto _ : state) {
    out = plain_eigen_ns5(G);
    benchmark::DoNotOptimize(out.data());
  }
  finish(state, s, threads, out, Kind::newton_schulz);
}

/// muon::orthogonalize(G): the convenient call.
void bm_oneshot(benchmark::State& state, Shape s, int threads) {
  bench::use_threads(threads);
  const MatrixF G = input(s);
  MatrixF out;
  for (auto _ : state) {
    out = muon::orthogonalize(G);
    benchmark::DoNotOptimize(out.data());
  }
  finish(state, s, threads, out, Kind::newton_schulz);
}

void bm_muon(benchmark::State& state, Shape s, int threads, muon::NsMethod method,
             muon::eigen::Products products) {
  bench::use_threads(threads);
  const MatrixF G = input(s);
  MatrixF out(s.rows, s.cols);
  muon::Workspace<float> ws(s.rows, s.cols, threads, products);
  muon::NewtonSchulzOptions opt;
  opt.with_method(method);
  for (auto _ : state) {
    muon::orthogonalize_into(G, out, ws, opt);
    benchmark::DoNotOptimize(out.data());
  }
  finish(state, s, threads, out, Kind::newton_schulz);
}

/// An exact polar factor (reference::polar_svd or polar_eigh) of the input.
using ExactPolar = MatrixF (*)(const MatrixF&);

void bm_exact(benchmark::State& state, Shape s, int threads, ExactPolar polar) {
  bench::use_threads(threads);
  const MatrixF G = input(s);
  MatrixF out;
  for (auto _ : state) {
    out = polar(G);
    benchmark::DoNotOptimize(out.data());
  }
  finish(state, s, threads, out, Kind::exact_polar);
}

void configure(benchmark::internal::Benchmark* b) {
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
}

/// Writes the input of `s` for scripts/torch_cpu_ns.py (see the file comment).
void dump_input(const std::string& dir, Shape s) {
  const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> G = input(s);
  std::ofstream out(dir + "/" + s.name() + ".f32", std::ios::binary);
  out.write(reinterpret_cast<const char*>(G.data()),
            static_cast<std::streamsize>(sizeof(float) * static_cast<std::size_t>(G.size())));
  if (!out) throw std::runtime_error("bench_cpu: cannot write the input to " + dir);
}

const int registered = [] {
  using muon::NsMethod;
  using muon::eigen::Products;
  const char* dump_dir = std::getenv("MUON_BENCH_DUMP_INPUTS");
  const std::vector<int> counts = bench::thread_counts();
  for (const Shape& s : shapes()) {
    if (dump_dir && *dump_dir) dump_input(dump_dir, s);
    for (const int t : counts) {
      const std::string n = "/t" + std::to_string(t) + "/" + s.name();
      auto add = [&n](const std::string& method, auto&&... args) {
        configure(benchmark::RegisterBenchmark((method + n).c_str(), args...));
      };
      add("plain_eigen", bm_plain, s, t);
      add("muon_oneshot", bm_oneshot, s, t);
      add("muon_reused", bm_muon, s, t, NsMethod::automatic, Products::automatic);
      add("muon_default", bm_muon, s, t, NsMethod::automatic, Products::eigen);
      add("muon_standard", bm_muon, s, t, NsMethod::standard, Products::eigen);
      if (s.rows != s.cols) add("muon_gram", bm_muon, s, t, NsMethod::gram, Products::eigen);
      if (muon::eigen::products_available(Products::blas))
        add("muon_blas", bm_muon, s, t, NsMethod::automatic, Products::blas);
      if (muon::eigen::products_available(Products::bf16)) {
        add("muon_bf16", bm_muon, s, t, NsMethod::automatic, Products::bf16);
        if (s.rows != s.cols) add("muon_bf16_gram", bm_muon, s, t, NsMethod::gram, Products::bf16);
      }
      if (t != counts.back()) continue;
      add(
          "polar_svd", bm_exact, s, t,
          +[](const MatrixF& G) -> MatrixF { return muon::reference::polar_svd<float>(G); });
      add(
          "polar_eigh", bm_exact, s, t,
          +[](const MatrixF& G) -> MatrixF { return muon::reference::polar_eigh<float>(G); });
    }
  }
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
