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
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <string>

#include <muon/error.hpp>

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

/// what() of the muon::Error that f() throws, or a marker when it throws none
/// (any other exception propagates and fails the test).
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const muon::Error& e) {
    return e.what();
  }
  return "<no muon::Error thrown>";
}

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace muon_test
