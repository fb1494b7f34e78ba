// SPDX-License-Identifier: MIT
/// \file bench_cpu.cpp
/// \brief CPU Newton–Schulz (Jordan quintic, 5 steps, float): this library
/// against a plain Eigen NS5 written by hand, and against the exact polar
/// factor (BDCSVD and Gram eigendecomposition), per shape.
///
/// Registrations are named "<method>/<rows>x<cols>":
///   plain_eigen      the baseline a user writes by hand (general products)
///   muon_default     orthogonalize_into with default options and threads
///   muon_standard    forced standard iteration (threaded products)
///   muon_gram        forced Gram Newton–Schulz
///   muon_1thread     default options on one thread
///   muon_blas        products from BLAS (MUON_USE_BLAS builds only)
///   muon_bf16        bf16 products, fp32 accumulation (MUON_USE_BF16 builds
///                    on CPUs with AVX512-BF16 only); automatic method, which
///                    is the standard iteration with bf16 products
///   muon_bf16_gram   bf16 products, forced Gram form (faster on wide shapes,
///                    less accurate: see Workspace::gram_aspect_threshold)
///   polar_svd        reference::polar_svd<float>
///   polar_eigh       reference::polar_eigh<float>
/// Counters: GFLOPs = effective rate using the general-product count
/// 5 (4 m^2 n + 2 m^3) for every method (so rates compare as inverse times);
/// orth_err = ||O O^T - I||_F on the smaller side; for the Newton–Schulz
/// methods also ns_rounding = ||O - O64||_F / ||O64||_F, the distance to the
/// same 5 quintic steps computed in double: the error rounding adds, which is
/// what differs between fp32 and bf16 paths (Jordan's quintic does not
/// converge, so orth_err mostly measures where the polynomial left the small
/// singular values, equal for every method). scripts/bench_cpu.sh runs this
/// with --benchmark_format=json and prints the ratios to plain_eigen.
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
#include <stdexcept>
#include <string>
#include <vector>

#include <muon/muon.hpp>
#include <muon/extern_templates.hpp>  // the heavy templates: compiled once (CMake: INSTANCES)

namespace {

using Index = Eigen::Index;
using MatrixF = Eigen::MatrixXf;
constexpr int kSteps = 5;
constexpr float kA = 3.4445f, kB = -4.7750f, kC = 2.0315f;

struct Shape {
  Index rows, cols;
  std::string name() const { return std::to_string(rows) + "x" + std::to_string(cols); }
};

const std::vector<Shape> kShapes = {{256, 256},  {512, 512},   {1024, 1024},
                                    {768, 3072}, {1024, 4096}, {2048, 2048}};

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

/// The hand-written baseline: what a user writes with Eigen expressions.
/// Templated only so that the rounding reference below is the same code in
/// double.
template <typename Matrix>
Matrix plain_eigen_ns5(const Matrix& G) {
  using S = typename Matrix::Scalar;
  const bool tall = G.rows() > G.cols();
  Matrix X = tall ? Matrix(G.transpose()) : G;
  X /= X.norm() + S(1e-7);
  for (int k = 0; k < kSteps; ++k) {
    Matrix A = X * X.transpose();
    Matrix B = S(kB) * A + S(kC) * A * A;
    X = S(kA) * X + B * X;
  }
  if (tall) X.transposeInPlace();
  return X;
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

void finish(benchmark::State& state, Shape s, const MatrixF& out, Kind kind) {
  state.counters["GFLOPs"] = benchmark::Counter(
      effective_flops(s) * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["orth_err"] = muon::reference::orthogonality_error(out);
  if (kind == Kind::newton_schulz) {
    const Eigen::MatrixXd& ref = double_ns5(s);
    state.counters["ns_rounding"] = (out.cast<double>() - ref).norm() / ref.norm();
  }
}

void bm_plain(benchmark::State& state, Shape s) {
  const MatrixF G = input(s);
  MatrixF out;
  for (auto _ : state) {
    out = plain_eigen_ns5(G);
    benchmark::DoNotOptimize(out.data());
  }
  finish(state, s, out, Kind::newton_schulz);
}

void bm_muon(benchmark::State& state, Shape s, muon::NsMethod method, int threads,
             muon::eigen::Products products) {
  const MatrixF G = input(s);
  MatrixF out(s.rows, s.cols);
  muon::Workspace<float> ws(s.rows, s.cols, threads, products);
  muon::NewtonSchulzOptions opt;
  opt.with_method(method);
  for (auto _ : state) {
    muon::orthogonalize_into(G, out, ws, opt);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["threads"] = ws.threads();
  finish(state, s, out, Kind::newton_schulz);
}

/// An exact polar factor (reference::polar_svd or polar_eigh) of the input.
using ExactPolar = MatrixF (*)(const MatrixF&);

void bm_exact(benchmark::State& state, Shape s, ExactPolar polar) {
  const MatrixF G = input(s);
  MatrixF out;
  for (auto _ : state) {
    out = polar(G);
    benchmark::DoNotOptimize(out.data());
  }
  finish(state, s, out, Kind::exact_polar);
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
  for (const Shape& s : kShapes) {
    const std::string n = s.name();
    if (dump_dir && *dump_dir) dump_input(dump_dir, s);
    configure(benchmark::RegisterBenchmark(("plain_eigen/" + n).c_str(), bm_plain, s));
    configure(benchmark::RegisterBenchmark(("muon_default/" + n).c_str(), bm_muon, s,
                                           NsMethod::automatic, 0, Products::eigen));
    configure(benchmark::RegisterBenchmark(("muon_standard/" + n).c_str(), bm_muon, s,
                                           NsMethod::standard, 0, Products::eigen));
    if (s.rows != s.cols)
      configure(benchmark::RegisterBenchmark(("muon_gram/" + n).c_str(), bm_muon, s, NsMethod::gram,
                                             0, Products::eigen));
    configure(benchmark::RegisterBenchmark(("muon_1thread/" + n).c_str(), bm_muon, s,
                                           NsMethod::automatic, 1, Products::eigen));
    if (muon::eigen::products_available(Products::blas))
      configure(benchmark::RegisterBenchmark(("muon_blas/" + n).c_str(), bm_muon, s,
                                             NsMethod::automatic, 0, Products::blas));
    if (muon::eigen::products_available(Products::bf16)) {
      configure(benchmark::RegisterBenchmark(("muon_bf16/" + n).c_str(), bm_muon, s,
                                             NsMethod::automatic, 0, Products::bf16));
      if (s.rows != s.cols)
        configure(benchmark::RegisterBenchmark(("muon_bf16_gram/" + n).c_str(), bm_muon, s,
                                               NsMethod::gram, 0, Products::bf16));
    }
    configure(benchmark::RegisterBenchmark(
        ("polar_svd/" + n).c_str(), bm_exact, s,
        +[](const MatrixF& G) -> MatrixF { return muon::reference::polar_svd<float>(G); }));
    configure(benchmark::RegisterBenchmark(
        ("polar_eigh/" + n).c_str(), bm_exact, s,
        +[](const MatrixF& G) -> MatrixF { return muon::reference::polar_eigh<float>(G); }));
  }
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
