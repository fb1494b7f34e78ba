// SPDX-License-Identifier: MIT
/// \file svd_vs_newton_schulz.cpp
/// \brief Singular values before and after each Newton–Schulz schedule,
/// against the exact polar factor, written as CSV for plotting.
///
/// Builds a seeded gradient-like float matrix (a rank-r signal with singular
/// values about 1, 1/2, ..., 1/r plus dense noise; optionally with `dead`
/// zero rows, the dead ReLU units of a real gradient), orthogonalizes it with
/// Jordan's quintic, the classic cubic and quintic (5 steps each), Polar
/// Express (5 and 6 steps) and the exact SVD polar factor (U V^T, or the
/// partial isometry U_r V_r^T when rows are dead), then
///  - writes `<out>.csv`: one row per singular-value index i (1-based,
///    descending), one column per method, the input's sigma_i first;
///  - prints a table: orthogonality error ||O O^T - I||_F (which counts each
///    dead row as a unit error), the same measured on G's range
///    (reference::orthogonality_error_on_range: ||B B^T - I_r||_F with
///    B = U_r^T O V_r, and ||O - U_r B V_r^T||_F off the range), relative
///    distance ||O - P||_F / ||P||_F to the exact polar factor P, and the
///    median time of a few runs.
///
/// Usage: svd_vs_newton_schulz [out.csv] [rows] [cols] [rank] [seed] [dead]
/// (defaults: singular_values.csv 256 1024 16 7 0). scripts/svd_vs_ns.sh runs
/// it and plots the CSV with examples/plot_singular_values.gp.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <muon/muon.hpp>

#include <muon/extern_templates.hpp>  // the heavy templates: compiled once (CMake: INSTANCES)
#include "example_support.hpp"

namespace {

using Index = Eigen::Index;
using MatrixF = muon::Matrix<float>;
using muon_examples::median_ms;

struct Method {
  std::string name;
  Eigen::VectorXd sigma;  // singular values of the output, descending
  double orthogonality_error = 0, on_range = 0, off_range = 0, distance = 0, time_ms = 0;
};

long parse(int argc, char** argv, int i, long fallback) {
  return argc > i ? std::strtol(argv[i], nullptr, 10) : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "singular_values.csv";
  const Index rows = parse(argc, argv, 2, 256), cols = parse(argc, argv, 3, 1024);
  const Index rank = parse(argc, argv, 4, 16);
  const auto seed = static_cast<unsigned>(parse(argc, argv, 5, 7));
  const Index dead = parse(argc, argv, 6, 0);
  if (rows < 1 || cols < 1 || rank < 1 || rank > std::min(rows, cols) || dead < 0 || dead >= rows) {
    std::fprintf(stderr,
                 "need rows, cols >= 1, 1 <= rank <= min(rows, cols) and 0 <= dead < rows\n");
    return 2;
  }
  constexpr int kRuns = 5;

  MatrixF G = muon_examples::gradient_like(rows, cols, rank, seed);
  // Dead units: zero rows spread evenly, as a ReLU layer's gradient has.
  for (Index k = 0; k < dead; ++k) G.row(k * rows / dead).setZero();
  const Eigen::VectorXd input_sigma = muon::reference::singular_values(G);
  // The target: U V^T, or U_r V_r^T (zero on the dead rows) when G has rank r.
  const Eigen::MatrixXd polar = muon::reference::polar_svd<double>(G);

  std::printf(
      "muon %s: %ldx%ld float, rank-%ld signal + noise, %ld dead rows (rank %ld), seed %u\n",
      MUON_VERSION_STRING, long(rows), long(cols), long(rank), long(dead),
      long(muon::reference::numerical_rank(G)), seed);
  std::printf("input sigma: max %.3g, min %.3g; sigma/||G||_F: max %.3g, min %.3g\n\n",
              input_sigma.maxCoeff(), input_sigma.minCoeff(),
              input_sigma.maxCoeff() / double(G.norm()), input_sigma.minCoeff() / double(G.norm()));

  const auto measure = [&](Method& m, const MatrixF& O) {
    m.sigma = muon::reference::singular_values(O);
    m.orthogonality_error = muon::reference::orthogonality_error(O);
    const auto range = muon::reference::orthogonality_error_on_range(O, G);
    m.on_range = range.on_range;
    m.off_range = range.off_range;
    m.distance = muon::reference::relative_distance(O, polar);
  };

  std::vector<Method> methods;
  muon::Workspace<float> workspace(rows, cols, 1);  // one thread, like the SVD below
  MatrixF O(rows, cols);
  for (const auto& v : muon_examples::compared_schedules()) {
    const muon::NewtonSchulzOptions options(v.schedule, v.steps);
    Method m;
    // The CSV header, hence the plot's legend: jordan_5, ..., polar_express_6.
    m.name = v.schedule.name() + "_" + std::to_string(v.steps);
    m.time_ms = median_ms(kRuns, [&] { muon::orthogonalize_into(G, O, workspace, options); });
    measure(m, O);
    methods.push_back(m);
  }
  {
    Method m;
    m.name = "svd_polar";
    MatrixF P;
    m.time_ms = median_ms(kRuns, [&] { P = muon::reference::polar_svd<float>(G); });
    measure(m, P);
    methods.push_back(m);
  }

  std::printf("%-16s %12s %12s %12s %14s %10s\n", "method", "||OO^T-I||_F", "on range", "off range",
              "dist to polar", "time ms");
  for (const auto& m : methods)
    std::printf("%-16s %12.3e %12.3e %12.3e %14.3e %10.3f\n", m.name.c_str(), m.orthogonality_error,
                m.on_range, m.off_range, m.distance, m.time_ms);
  std::printf(
      "(median of %d runs, one thread; svd_polar is BDCSVD in float; ||OO^T-I||_F\n"
      " counts each dead row as a unit error, \"on range\" measures on G's range only)\n",
      kRuns);

  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    return 1;
  }
  std::fprintf(f, "index,input");
  for (const auto& m : methods) std::fprintf(f, ",%s", m.name.c_str());
  std::fprintf(f, "\n");
  for (Index i = 0; i < input_sigma.size(); ++i) {
    std::fprintf(f, "%ld,%.9g", long(i + 1), input_sigma(i));
    for (const auto& m : methods) std::fprintf(f, ",%.9g", m.sigma(i));
    std::fprintf(f, "\n");
  }
  std::fclose(f);
  std::printf("\nwrote %s (%ld rows: index, input sigma, then each method's sigma)\n", path.c_str(),
              long(input_sigma.size()));
}
