// SPDX-License-Identifier: MIT
#pragma once
// Shared helpers for the tests: seeded random matrices with known structure
// (built in double, so the test knows the exact singular vectors and values)
// and per-scalar-type tolerances.
//
// Every generator takes an explicit seed; tests report it with INFO so a
// failure names the matrix it saw. MUON_TEST_SEED (environment) shifts every
// seed, to rerun the suite on other matrices.

#include <Eigen/Core>
#include <Eigen/QR>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <muon/error.hpp>

#include "catch.hpp"

namespace muon_test {

/// Added to every seed; 0 unless MUON_TEST_SEED is set. Printed once.
inline std::uint64_t seed_offset() {
  static const std::uint64_t offset = [] {
    const char* env = std::getenv("MUON_TEST_SEED");
    const std::uint64_t v = env ? std::strtoull(env, nullptr, 10) : 0;
    std::cerr << "muon tests: seed offset " << v << " (set MUON_TEST_SEED to change)\n";
    return v;
  }();
  return offset;
}

/// Entries i.i.d. standard normal.
inline Eigen::MatrixXd gaussian(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
  std::mt19937_64 rng(seed + seed_offset());
  std::normal_distribution<double> normal(0.0, 1.0);
  Eigen::MatrixXd M(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) M(i, j) = normal(rng);
  return M;
}

/// rows x k with orthonormal columns (k <= rows): the Q factor of a Gaussian
/// matrix's QR, with column signs fixed by R's diagonal (Haar-distributed).
inline Eigen::MatrixXd orthonormal_columns(Eigen::Index rows, Eigen::Index k, std::uint64_t seed) {
  const Eigen::MatrixXd M = gaussian(rows, k, seed);
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(M);
  Eigen::MatrixXd Q = qr.householderQ() * Eigen::MatrixXd::Identity(rows, k);
  const Eigen::MatrixXd R = qr.matrixQR().topRows(k).triangularView<Eigen::Upper>();
  for (Eigen::Index j = 0; j < k; ++j)
    if (R(j, j) < 0) Q.col(j) = -Q.col(j);
  return Q;
}

/// G = U diag(s) V^T with U (rows x k) and V (cols x k) orthonormal, k = s.size().
struct KnownSvd {
  Eigen::MatrixXd U, V, G;
  Eigen::VectorXd s;
};

inline KnownSvd with_singular_values(Eigen::Index rows, Eigen::Index cols, const Eigen::VectorXd& s,
                                     std::uint64_t seed) {
  KnownSvd k;
  k.U = orthonormal_columns(rows, s.size(), seed);
  k.V = orthonormal_columns(cols, s.size(), seed + 7919);
  k.s = s;
  k.G = k.U * s.asDiagonal() * k.V.transpose();
  return k;
}

/// n values geometrically spaced from hi down to lo (n >= 2), descending.
inline Eigen::VectorXd geometric(Eigen::Index n, double hi, double lo) {
  Eigen::VectorXd v(n);
  for (Eigen::Index i = 0; i < n; ++i) v(i) = hi * std::pow(lo / hi, double(i) / double(n - 1));
  return v;
}

/// A rank-r matrix (singular values 1 .. 0.1) plus Gaussian noise of Frobenius
/// norm `noise` relative to it: the typical shape of a gradient.
inline Eigen::MatrixXd low_rank_plus_noise(Eigen::Index rows, Eigen::Index cols, Eigen::Index rank,
                                           double noise, std::uint64_t seed) {
  const Eigen::MatrixXd L = with_singular_values(rows, cols, geometric(rank, 1.0, 0.1), seed).G;
  const Eigen::MatrixXd N = gaussian(rows, cols, seed + 104729);
  return L + (noise * L.norm() / N.norm()) * N;
}

/// Bitwise equality (NaN-safe): the "caller's data untouched" check.
template <class A, class B>
bool bitwise_equal(const A& a, const B& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(typename A::Scalar) * std::size_t(a.size())) == 0;
}

/// Per-storage-type tolerances. `unit` is the type's unit roundoff; the
/// others are what the tests accept, derived from it with stated margins.
template <class T>
struct Tolerances;

// agree_with_double: relative Frobenius distance between NS run in T and NS
// run in double on the same (already rounded to T) input. It is dominated by
// rounding the output to T (unit roundoff per entry) for half and bfloat16,
// and by fp32 compute amplified by the polynomial for float.
template <>
struct Tolerances<double> {
  static constexpr double unit = 1.1102230246251565e-16;  // 2^-53
  static constexpr double agree_with_double = 1e-12;
  static constexpr double transpose = 1e-12;
};
template <>
struct Tolerances<float> {
  static constexpr double unit = 5.960464477539063e-08;  // 2^-24
  static constexpr double agree_with_double = 2e-5;
  static constexpr double transpose = 1e-5;
};
template <>
struct Tolerances<Eigen::half> {
  static constexpr double unit = 4.8828125e-04;  // 2^-11
  static constexpr double agree_with_double = 2 * unit;
  static constexpr double transpose = 2 * unit;
};
template <>
struct Tolerances<Eigen::bfloat16> {
  static constexpr double unit = 3.90625e-03;  // 2^-8
  static constexpr double agree_with_double = 2 * unit;
  static constexpr double transpose = 2 * unit;
};

}  // namespace muon_test

namespace muon_test {

/// what() of the muon::Error that f() throws ("muon: <field>: <problem>"),
/// for a test that checks what the message says. When f throws nothing, or
/// another exception, the test fails here and the result is a marker that no
/// check of a message matches; the test case goes on (FAIL_CHECK, not FAIL),
/// so its later checks still run, and under MPI every rank reaches the same
/// collectives.
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const muon::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL_CHECK("expected a muon::Error, but another exception was thrown: " << e.what());
    return "<another exception thrown>";
  }
  FAIL_CHECK("expected a muon::Error, but nothing was thrown");
  return "<no muon::Error thrown>";
}

/// True when f throws a muon::Error whose message names `field` first
/// ("muon: <field>: ..."). When it does not, the message is shown with the
/// next check (the one that asserts this).
template <class F>
bool throws_naming(F&& f, const std::string& field) {
  const std::string message = error_message(f);
  const bool named = message.rfind("muon: " + field + ":", 0) == 0;
  if (!named)
    UNSCOPED_INFO("expected a muon::Error naming '" << field << "' first, got: " << message);
  return named;
}

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace muon_test

namespace muon_test {

// ---- Newton–Schulz written out independently of the library ----------------
//
// The tests' expectations must not come from the code under test: the
// schedules below are typed in from their papers, and plain_newton_schulz is
// the textbook iteration in double on plain Eigen products.

/// One published schedule: per-step (a, b, c) of p(x) = a x + b x^3 + c x^5,
/// the row past the end repeating the last one, and the norm divisor its
/// authors normalize with.
struct PaperSchedule {
  std::vector<std::array<double, 3>> rows;
  double divisor = 1.0;

  const std::array<double, 3>& row(int k) const {
    return rows[std::min<std::size_t>(static_cast<std::size_t>(k), rows.size() - 1)];
  }
  /// p_{steps-1}(... p_0(x)), in double.
  double apply(double x, int steps) const {
    for (int k = 0; k < steps; ++k) {
      const auto& r = row(k);
      x = r[0] * x + r[1] * x * x * x + r[2] * x * x * x * x * x;
    }
    return x;
  }
};

/// K. Jordan, "Muon: An optimizer for hidden layers in neural networks" (2024).
inline PaperSchedule paper_jordan() { return {{{3.4445, -4.7750, 2.0315}}, 1.0}; }
/// The classic Newton–Schulz cubic (3x - x^3) / 2 and quintic (15x - 10x^3 + 3x^5) / 8.
inline PaperSchedule paper_cubic() { return {{{1.5, -0.5, 0.0}}, 1.0}; }
inline PaperSchedule paper_quintic() { return {{{15.0 / 8, -10.0 / 8, 3.0 / 8}}, 1.0}; }
/// Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv 2505.16932), degree
/// 5: the paper's raw coefficients, then its safety factor 1.01 (every row but
/// the last becomes (a / 1.01, b / 1.01^3, c / 1.01^5); inputs are normalized
/// by 1.01 ||X||_F).
inline PaperSchedule paper_polar_express() {
  PaperSchedule s{{{8.28721201814563, -23.595886519098837, 17.300387312530933},
                   {4.107059111542203, -2.9478499167379106, 0.5448431082926601},
                   {3.9486908534822946, -2.908902115962949, 0.5518191394370137},
                   {3.3184196573706015, -2.488488024314874, 0.51004894012372},
                   {2.300652019954817, -1.6689039845747493, 0.4188073119525673},
                   {1.891301407787398, -1.2679958271945868, 0.37680408948524835},
                   {1.8750014808534479, -1.2500016453999487, 0.3750001645474248},
                   {1.875, -1.25, 0.375}},
                  1.01};
  for (std::size_t i = 0; i + 1 < s.rows.size(); ++i) {
    s.rows[i][0] /= 1.01;
    s.rows[i][1] /= 1.01 * 1.01 * 1.01;
    s.rows[i][2] /= 1.01 * 1.01 * 1.01 * 1.01 * 1.01;
  }
  return s;
}

/// DeepSeek-V4's schedule: Jordan's quintic for 8 steps, then 2 steps of
/// (2, -1.5, 0.5).
inline PaperSchedule paper_deepseek_v4() {
  PaperSchedule s{std::vector<std::array<double, 3>>(8, {3.4445, -4.7750, 2.0315}), 1.0};
  s.rows.push_back({2.0, -1.5, 0.5});
  s.rows.push_back({2.0, -1.5, 0.5});
  return s;
}
/// The 5-step cubic schedule of arXiv 2606.00371 (c = 0 every step).
inline PaperSchedule paper_cubic5() {
  return {{{3.3656576, -3.3420992, 0.0},
           {2.5744352, -1.4957376, 0.0},
           {2.5368962, -1.4312570, 0.0},
           {2.4418906, -1.2764040, 0.0},
           {2.2230472, -0.9630650, 0.0}},
          1.0};
}

/// The published schedule of a built-in schedule's name.
inline PaperSchedule paper(const std::string& name) {
  if (name == "jordan") return paper_jordan();
  if (name == "cubic") return paper_cubic();
  if (name == "quintic") return paper_quintic();
  if (name == "polar_express") return paper_polar_express();
  if (name == "deepseek_v4") return paper_deepseek_v4();
  if (name == "cubic5") return paper_cubic5();
  throw std::logic_error("test_support: no published table for schedule '" + name + "'");
}

/// The textbook iteration in double: X = G (transposed when tall) divided by
/// d ||G||_F + eps (or max(d ||G||_F, eps)), then per step A = X X^T,
/// X = a X + (b A + c A A) X, transposed back. Plain Eigen products, no
/// symmetric shortcuts, no Gram form.
inline Eigen::MatrixXd plain_newton_schulz(const Eigen::MatrixXd& G, const PaperSchedule& s,
                                           int steps, double eps = 1e-7, bool eps_max = false,
                                           double divisor = -1.0) {
  const bool tall = G.rows() > G.cols();
  Eigen::MatrixXd X = tall ? Eigen::MatrixXd(G.transpose()) : G;
  const double d = divisor > 0 ? divisor : s.divisor;
  const double norm = X.norm();
  X /= eps_max ? std::max(d * norm, eps) : d * norm + eps;
  for (int k = 0; k < steps; ++k) {
    const auto& r = s.row(k);
    const Eigen::MatrixXd A = X * X.transpose();
    const Eigen::MatrixXd B = r[1] * A + r[2] * (A * A);
    X = (r[0] * X + B * X).eval();
  }
  return tall ? Eigen::MatrixXd(X.transpose()) : X;
}

/// A fresh folder of this test's own under the system's temporary directory,
/// removed with everything in it when the object goes: tests never write
/// into the working directory or a fixed shared path, so a file one test
/// leaves behind (or a crashed run's) cannot make another fail.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "test") {
    static std::uint64_t counter = 0;
    const std::filesystem::path base = std::filesystem::temp_directory_path();
    std::random_device entropy;
    for (int attempt = 0; attempt < 100; ++attempt) {
      const std::filesystem::path p = base / ("muon_" + tag + "_" + std::to_string(entropy()) +
                                              "_" + std::to_string(++counter));
      std::error_code ec;
      if (std::filesystem::create_directory(p, ec)) {
        path_ = p;
        return;
      }
    }
    throw std::runtime_error("muon_test::TempDir: cannot create a folder under " + base.string());
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  /// The path of `name` inside the folder.
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace muon_test
