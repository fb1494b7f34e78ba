// SPDX-License-Identifier: MIT
// The nvcc half of the CUDA tests: wraps muon/cuda.hpp behind harness.hpp.
#include "harness.hpp"

#include <muon/cuda.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <type_traits>

namespace muon_cuda_test {
namespace mc = muon::cuda;

namespace {

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { MUON_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~Stream() { (void)cudaStreamDestroy(s); }
};

template <class T>
T from_double(double v);
template <>
float from_double<float>(double v) {
  return static_cast<float>(v);
}
template <>
__half from_double<__half>(double v) {
  return __float2half_rn(static_cast<float>(v));
}
template <>
__nv_bfloat16 from_double<__nv_bfloat16>(double v) {
  return __float2bfloat16_rn(static_cast<float>(v));
}
inline double to_double(float v) { return v; }
inline double to_double(__half v) { return __half2float(v); }
inline double to_double(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
std::vector<double> run_typed(const std::vector<double>& in, std::int64_t rows, std::int64_t cols,
                              std::int64_t batch, const muon::NewtonSchulzOptions& options,
                              RunMode mode) {
  Stream st;
  const std::int64_t ld = rows + mode.ld_pad, stride = ld * cols;
  std::vector<T> host(static_cast<std::size_t>(stride * batch), from_double<T>(0.0));
  for (std::int64_t z = 0; z < batch; ++z)
    for (std::int64_t j = 0; j < cols; ++j)
      for (std::int64_t i = 0; i < rows; ++i)
        host[z * stride + j * ld + i] = from_double<T>(in[z * rows * cols + j * rows + i]);
  mc::DeviceMatrix<T> din(stride, batch, st.s), dout(stride, batch, st.s);
  din.upload(host.data(), st.s);
  MUON_CUDA_CHECK(cudaMemsetAsync(dout.data(), 0, dout.bytes(), st.s));
  // The dense float input of run_from_float (mode.from_float; ld_pad ignored).
  std::vector<float> host_f(mode.from_float ? in.size() : 0);
  for (std::size_t k = 0; k < host_f.size(); ++k) host_f[k] = static_cast<float>(in[k]);
  mc::DeviceMatrix<float> din_f(mode.from_float ? rows * cols : 0, batch, st.s);
  if (mode.from_float) din_f.upload(host_f.data(), st.s);
  mc::Orthogonalizer<T> ortho(rows, cols, batch, st.s, mc::default_allocator(), mode.tile);
  const mc::BatchedMatrixView<const T> vin(din.data(), rows, cols, ld, stride, batch);
  const mc::BatchedMatrixView<T> vout(dout.data(), rows, cols, ld, stride, batch);
  const mc::BatchedMatrixView<const float> vin_f(din_f.data(), rows, cols, rows, rows * cols,
                                                 batch);
  auto call = [&] {
    if (mode.from_float)
      ortho.run_from_float(vin_f, vout, options, st.s);
    else
      ortho(vin, vout, options, st.s);
  };
  if (mode.graph) {
    cudaGraph_t g = nullptr;
    cudaGraphExec_t e = nullptr;
    ortho.workspace().bind(st.s);
    MUON_CUDA_CHECK(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal));
    call();
    MUON_CUDA_CHECK(cudaStreamEndCapture(st.s, &g));
    MUON_CUDA_CHECK(cudaGraphInstantiate(&e, g, 0));
    MUON_CUDA_CHECK(cudaGraphLaunch(e, st.s));
    MUON_CUDA_CHECK(cudaGraphLaunch(e, st.s));  // replays are repeatable
    MUON_CUDA_CHECK(cudaStreamSynchronize(st.s));
    MUON_CUDA_CHECK(cudaGraphExecDestroy(e));
    MUON_CUDA_CHECK(cudaGraphDestroy(g));
  } else {
    call();
    if (mode.reuse) call();
  }
  ortho.throw_if_nonfinite(st.s, "in");
  std::vector<T> back(host.size());
  dout.download(back.data(), st.s);
  MUON_CUDA_CHECK(cudaStreamSynchronize(st.s));
  std::vector<double> out(static_cast<std::size_t>(rows * cols * batch));
  for (std::int64_t z = 0; z < batch; ++z)
    for (std::int64_t j = 0; j < cols; ++j)
      for (std::int64_t i = 0; i < rows; ++i)
        out[z * rows * cols + j * rows + i] = to_double(back[z * stride + j * ld + i]);
  return out;
}

}  // namespace

bool device_present() { return mc::device_available(); }

std::vector<double> orthogonalize(const std::vector<double>& in, std::int64_t rows,
                                  std::int64_t cols, std::int64_t batch, Dtype dtype,
                                  const muon::NewtonSchulzOptions& options, RunMode mode) {
  switch (dtype) {
    case Dtype::bf16:
      return run_typed<__nv_bfloat16>(in, rows, cols, batch, options, mode);
    case Dtype::f16:
      return run_typed<__half>(in, rows, cols, batch, options, mode);
    case Dtype::f32:
      return run_typed<float>(in, rows, cols, batch, options, mode);
  }
  throw std::logic_error("dtype");
}

void orthogonalize_checked(const std::vector<float>& in, std::int64_t rows, std::int64_t cols,
                           std::vector<float>& out_after, float out_init,
                           const muon::NewtonSchulzOptions& options) {
  Stream st;
  mc::DeviceMatrix<float> din(rows, cols, st.s), dout(rows, cols, st.s);
  din.upload(in.data(), st.s);
  std::vector<float> init(static_cast<std::size_t>(rows * cols), out_init);
  dout.upload(init.data(), st.s);
  auto fetch = [&] {
    out_after.resize(init.size());
    dout.download(out_after.data(), st.s);
    MUON_CUDA_CHECK(cudaStreamSynchronize(st.s));
  };
  try {
    mc::orthogonalize<float>(mc::MatrixView<const float>(din.view()), dout.view(), options, st.s);
  } catch (...) {
    fetch();
    throw;
  }
  fetch();
}

std::string workspace_check(const std::string& broken) {
  using W = mc::Workspace<float>;
  float* fake = reinterpret_cast<float*>(std::uintptr_t(4096));  // never dereferenced
  W::Arguments a;
  a.rows = 8;
  a.cols = 12;
  a.batch = 2;
  a.in = mc::BatchedMatrixView<const float>(fake, 8, 12, 8, 96, 2);
  a.out = mc::BatchedMatrixView<float>(fake, 8, 12, 8, 96, 2);
  if (broken == "rows") a.rows = 0;
  if (broken == "batch") a.batch = 0;
  if (broken == "in_null") a.in.ptr = nullptr;
  if (broken == "out_shape") a.out.cols = 13;
  if (broken == "ld") a.in.ld = 7;
  if (broken == "stride") a.out.stride = 50;
  if (broken == "steps") a.options.steps = 100;
  if (broken == "tile") a.tile = -1;
  if (broken == "gram") a.options.method = muon::NsMethod::gram;
  if (broken == "aol") a.options = muon::NewtonSchulzOptions::turbo_muon();  // accepted
  if (broken == "aol_gram")
    a.options = muon::NewtonSchulzOptions::turbo_muon().with_method(muon::NsMethod::gram);
  if (broken == "in_float_sparse") {
    a.in_float = mc::BatchedMatrixView<const float>(fake, 8, 12, 9, 108, 2);  // ld 9: padded
  }
  return W::check(a);
}

namespace {

namespace k = muon::cuda::kernels;

// Runs a two-phase block function over a grid, block by block, as the
// kernel would: phase 0 for every thread, then (if the block goes on) phase 1.
template <class F>
void emulate_grid(std::int64_t gx, std::int64_t gy, std::int64_t gz, F&& phase) {
  for (std::int64_t bz = 0; bz < gz; ++bz)
    for (std::int64_t by = 0; by < gy; ++by)
      for (std::int64_t bx = 0; bx < gx; ++bx) {
        k::Tile tile;
        for (auto& row : tile)
          for (auto& v : row) v = std::nanf("");  // unset shared memory shows up as NaN
        int go = -1;
        for (int ty = 0; ty < k::kTileRows; ++ty)
          for (int tx = 0; tx < k::kTile; ++tx) {
            const bool more = phase(0, k::ThreadCoord{bx, by, bz, tx, ty}, tile);
            if (go != -1 && go != static_cast<int>(more))
              throw std::logic_error("phase 0 result is not block-uniform");
            go = more;
          }
        if (!go) continue;
        for (int ty = 0; ty < k::kTileRows; ++ty)
          for (int tx = 0; tx < k::kTile; ++tx) phase(1, k::ThreadCoord{bx, by, bz, tx, ty}, tile);
      }
}

std::int64_t tiles(std::int64_t n) { return (n + k::kTile - 1) / k::kTile; }

std::string check_copy(std::int64_t rows, std::int64_t cols, bool transpose, bool scaled) {
  // dst is rows x cols (ld rows + 3), src is its transpose or same shape (ld + 2); batch 2,
  // matrix 1 skipped.
  const std::int64_t sr = transpose ? cols : rows, sc = transpose ? rows : cols;
  const std::int64_t sld = sr + 2, dld = rows + 3, batch = 2;
  std::vector<float> src(static_cast<std::size_t>(sld * sc * batch));
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i % 977) - 300.0f;
  std::vector<float> dst(static_cast<std::size_t>(dld * cols * batch), -1.0f);
  const int skip[2] = {0, 1};
  const float scale[2] = {0.5f, 4.0f};  // powers of two: exact
  emulate_grid(tiles(rows), tiles(cols), batch, [&](int ph, k::ThreadCoord c, k::Tile& t) {
    return k::copy_transpose_phase<float, float>(ph, src.data(), sld, sld * sc, dst.data(), dld,
                                                 dld * cols, rows, cols, transpose, skip,
                                                 scaled ? scale : nullptr, c, t);
  });
  for (std::int64_t z = 0; z < batch; ++z)
    for (std::int64_t j = 0; j < cols; ++j)
      for (std::int64_t i = 0; i < rows; ++i) {
        const float factor = scaled ? scale[z] : 1.0f;
        const float want =
            z == 1 ? -1.0f : factor * (transpose ? src[j + i * sld] : src[i + j * sld]);
        if (dst[z * dld * cols + i + j * dld] != want)
          return "copy_transpose " + std::to_string(rows) + "x" + std::to_string(cols) +
                 (transpose ? " transposed" : "") + ": wrong at (" + std::to_string(i) + ", " +
                 std::to_string(j) + ") of matrix " + std::to_string(z);
      }
  // Padding rows of dst are untouched.
  for (std::int64_t j = 0; j < cols; ++j)
    for (std::int64_t i = rows; i < dld; ++i)
      if (dst[i + j * dld] != -1.0f) return "copy_transpose wrote into the padding";
  return {};
}

// mode 0: gram-style mirror (out = null); 1: copy with scale (no mirror) into
// another buffer; 2: in-place mirror + diagonal; 3: in-place diagonal only.
std::string check_symmetrize(std::int64_t m, int mode) {
  const std::int64_t batch = 2;
  std::vector<float> a(static_cast<std::size_t>(m * m * batch)), b(a.size(), -7.0f);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>((i * 37) % 101) - 50.0f;
  const std::vector<float> a0 = a;
  const float s = mode == 1 ? 0.5f : 1.0f, diag = mode >= 2 ? 3.0f : 0.0f;
  const bool mirror = mode == 0 || mode == 2;
  float* out = mode == 0 ? nullptr : mode == 1 ? b.data() : a.data();
  emulate_grid(tiles(m), tiles(m), batch, [&](int ph, k::ThreadCoord c, k::Tile& t) {
    return k::symmetrize_phase<float>(ph, a.data(), out, m, mirror, s, diag, c, t);
  });
  for (std::int64_t z = 0; z < batch; ++z)
    for (std::int64_t j = 0; j < m; ++j)
      for (std::int64_t i = 0; i < m; ++i) {
        const std::size_t at = static_cast<std::size_t>(z * m * m + i + j * m);
        const std::size_t tr = static_cast<std::size_t>(z * m * m + j + i * m);
        const float lower = i >= j ? a0[at] : a0[tr];  // the mirrored value
        float want_a = a0[at], want_b = -7.0f;
        if (mode == 0) want_a = lower;
        if (mode == 1) want_b = s * a0[at];
        if (mode == 2) want_a = lower + (i == j ? diag : 0.0f);
        if (mode == 3) want_a = a0[at] + (i == j ? diag : 0.0f);
        if (a[at] != want_a || b[at] != want_b)
          return "symmetrize m=" + std::to_string(m) + " mode " + std::to_string(mode) +
                 ": wrong at (" + std::to_string(i) + ", " + std::to_string(j) + ")";
      }
  return {};
}

}  // namespace

std::string emulate_tiled_kernels() {
  for (std::int64_t r : {1, 5, 32, 33, 70})
    for (std::int64_t c : {1, 31, 32, 64, 65})
      for (bool t : {false, true})
        for (bool scaled : {false, true})
          if (auto e = check_copy(r, c, t, scaled); !e.empty()) return e;
  for (std::int64_t m : {1, 5, 31, 32, 33, 70, 96})
    for (int mode = 0; mode < 4; ++mode)
      if (auto e = check_symmetrize(m, mode); !e.empty()) return e;
  return {};
}

namespace {

// ---- the variants' kernels, thread by thread ---------------------------------

namespace r = muon::optim::rules;
using SecondMoment = r::SecondMomentCoefficients<float>;
constexpr int kThreads = k::kReduceThreads;

// block_sum on the host: the same tree, level by level (within a level no
// thread reads a share another writes, so the order of threads is free).
template <class S>
S tree_sum(std::vector<S>& shares) {
  for (int width = kThreads / 2; width > 0; width >>= 1)
    for (int t = 0; t < kThreads; ++t) k::add_tree_level(shares.data(), t, width);
  return shares[0];
}

std::vector<float> uniform(std::size_t n, float lo, float hi, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

bool near_relative(double a, double b, double relative) {
  return std::abs(a - b) <= relative * std::max({std::abs(a), std::abs(b), 1e-30});
}

constexpr float kGuard = -7.0f;  // past the end of V: must stay untouched

// NorMuon on one rows x cols block (by rows or by columns): the kernels'
// functions against the CPU optimizer's formulas written as plain loops.
std::string check_normuon(std::int64_t rows, std::int64_t cols, bool by_row, bool zero_o) {
  const std::string where = "normuon " + std::to_string(rows) + "x" + std::to_string(cols) +
                            (by_row ? " by row" : " by column") + (zero_o ? " O = 0" : "");
  const std::size_t n = static_cast<std::size_t>(rows * cols);
  const std::int64_t lines = by_row ? rows : cols;
  const double averaged = static_cast<double>(by_row ? cols : rows);
  std::vector<float> o = uniform(n, -1.0f, 1.0f, 11 + n), p0 = uniform(n, -0.5f, 0.5f, 12 + n);
  if (zero_o) std::fill(o.begin(), o.end(), 0.0f);
  std::vector<float> v0 = uniform(static_cast<std::size_t>(lines), 0.0f, 0.01f, 13 + n);
  // Line 0 fresh and all zero: V stays 0, the factor comes from the eps floor.
  v0[0] = 0.0f;
  for (std::int64_t e = 0; e < (by_row ? cols : rows); ++e)
    o[static_cast<std::size_t>(by_row ? e : e * cols)] = 0.0f;
  const SecondMoment km = r::second_moment_coefficients<float>(0.95, 1e-10, 0.0);
  r::MuonUpdateCoefficients<float> ku;
  ku.decay = 0.99f;
  ku.step = 0.05f;

  // The kernels, launch by launch.
  std::vector<float> v = v0, p = p0;
  v.push_back(kGuard);
  std::vector<double> sums(static_cast<std::size_t>(lines) + 1, -1.0);
  if (by_row) {
    for (std::int64_t row = 0; row < rows; ++row) {  // sumsq_per_row: a CUDA block per row
      std::vector<double> shares(kThreads);
      for (int t = 0; t < kThreads; ++t)
        shares[t] = k::row_sumsq_share(o.data(), cols, row, t, kThreads);
      sums[static_cast<std::size_t>(row)] = tree_sum(shares);
    }
  } else {
    for (unsigned b = 0; b < k::column_sum_blocks(cols); ++b) {  // sumsq_per_column
      double shares[k::kRowLanes][k::kColumnLanes];
      for (int t = 0; t < kThreads; ++t) {
        const int lane_c = t % k::kColumnLanes, lane_r = t / k::kColumnLanes;
        shares[lane_r][lane_c] = k::column_sumsq_share(
            o.data(), rows, cols, std::int64_t(b) * k::kColumnLanes + lane_c, lane_r);
      }
      for (int lane_c = 0; lane_c < k::kColumnLanes; ++lane_c) {
        const std::int64_t c = std::int64_t(b) * k::kColumnLanes + lane_c;
        if (c < cols) sums[static_cast<std::size_t>(c)] = k::column_total(shares, lane_c);
      }
    }
  }
  std::vector<k::NormuonNorms> norms(kThreads);  // normuon_factors: one CUDA block
  for (int t = 0; t < kThreads; ++t)
    norms[t] = k::normuon_line_share(v.data(), sums.data(), lines, averaged, km, t, kThreads);
  const k::NormuonNorms total = tree_sum(norms);
  const float ratio = muon::optim::step::normuon_ratio<float>(total.o_sq, total.scaled_sq);
  const std::int64_t commit_threads = std::int64_t(k::elementwise_blocks(rows * cols)) * 256;
  for (std::int64_t t = 0; t < commit_threads; ++t)  // normuon_commit
    k::normuon_commit_share(p.data(), o.data(), rows * cols, cols, by_row, sums.data(), ratio, ku,
                            t, commit_threads);

  // The CPU optimizer's normuon_update, as plain loops.
  std::vector<double> line_sq(static_cast<std::size_t>(lines), 0.0);
  double o_sq = 0;
  for (std::int64_t row = 0; row < rows; ++row)
    for (std::int64_t c = 0; c < cols; ++c) {
      const double x = o[static_cast<std::size_t>(row * cols + c)];
      line_sq[static_cast<std::size_t>(by_row ? row : c)] += x * x;
      o_sq += x * x;
    }
  std::vector<float> v_ref = v0;
  std::vector<double> f(static_cast<std::size_t>(lines));
  double scaled_sq = 0;
  for (std::size_t j = 0; j < f.size(); ++j) {
    v_ref[j] = r::second_moment(v_ref[j], static_cast<float>(line_sq[j] / averaged), km);
    f[j] = r::normuon_factor(v_ref[j], km);
    scaled_sq += line_sq[j] * f[j] * f[j];
  }
  const float ratio_ref = static_cast<float>(scaled_sq > 0 ? std::sqrt(o_sq / scaled_sq) : 0.0);
  if (!near_relative(ratio, ratio_ref, 1e-6) && !(ratio == 0.0f && ratio_ref == 0.0f))
    return where + ": ratio " + std::to_string(ratio) + ", expected " + std::to_string(ratio_ref);
  if (v[static_cast<std::size_t>(lines)] != kGuard) return where + ": wrote past the end of V";
  for (std::size_t j = 0; j < f.size(); ++j)
    if (!near_relative(v[j], v_ref[j], 1e-6))
      return where + ": V wrong at line " + std::to_string(j);
  for (std::size_t e = 0; e < n; ++e) {
    const std::int64_t line = by_row ? std::int64_t(e) / cols : std::int64_t(e) % cols;
    const float u = o[e] * static_cast<float>(f[static_cast<std::size_t>(line)]) * ratio_ref;
    const float want = r::muon_parameter(p0[e], u, ku);
    if (std::abs(p[e] - want) > 1e-6f) return where + ": p wrong at entry " + std::to_string(e);
  }
  return {};
}

// AdaMuon on one rows x cols block: the kernels' functions (partial sums
// per CUDA block, then one block) against plain loops.
std::string check_adamuon(std::int64_t rows, std::int64_t cols, bool zero_o) {
  const std::string where =
      "adamuon " + std::to_string(rows) + "x" + std::to_string(cols) + (zero_o ? " O = 0" : "");
  const std::int64_t n = rows * cols;
  const auto un = static_cast<std::size_t>(n);
  std::vector<float> o = uniform(un, -1.0f, 1.0f, 21 + un), p0 = uniform(un, -0.5f, 0.5f, 22 + un);
  if (zero_o) std::fill(o.begin(), o.end(), 0.0f);
  const std::vector<float> v0 = uniform(un, 0.0f, 0.01f, 23 + un);
  const SecondMoment km = r::second_moment_coefficients<float>(0.999, 1e-8, 3.0);  // step 3
  r::MuonUpdateCoefficients<float> ku;
  ku.decay = 0.99f;
  ku.step = 0.05f;
  const double target = static_cast<double>(std::min(rows, cols));

  std::vector<float> v = v0, p = p0;
  v.push_back(kGuard);
  const unsigned blocks = k::elementwise_blocks(n, kThreads);  // adamuon_moment's grid
  std::vector<double> partials(blocks);
  for (unsigned b = 0; b < blocks; ++b) {
    std::vector<double> shares(kThreads);
    for (int t = 0; t < kThreads; ++t)
      shares[t] = k::adamuon_moment_share(o.data(), v.data(), n, km, std::int64_t(b) * kThreads + t,
                                          std::int64_t(blocks) * kThreads);
    partials[b] = tree_sum(shares);
  }
  std::vector<double> shares(kThreads);  // adamuon_ratio: one CUDA block
  for (int t = 0; t < kThreads; ++t)
    shares[t] = k::partials_share(partials.data(), static_cast<int>(blocks), t, kThreads);
  const float ratio = muon::optim::step::adamuon_ratio<float>(rows, cols, tree_sum(shares));
  const std::int64_t commit_threads = std::int64_t(k::elementwise_blocks(n)) * 256;
  for (std::int64_t t = 0; t < commit_threads; ++t)  // adamuon_commit
    k::adamuon_commit_share(p.data(), o.data(), v.data(), n, km, ratio, ku, t, commit_threads);

  // The CPU optimizer's adamuon_update, as plain loops.
  std::vector<float> v_ref = v0;
  double d_sq = 0;
  for (std::size_t e = 0; e < un; ++e) {
    v_ref[e] = r::second_moment(v_ref[e], o[e] * o[e], km);
    const double d = r::adamuon_direction(o[e], v_ref[e], km);
    d_sq += d * d;
  }
  const float ratio_ref = static_cast<float>(d_sq > 0 ? std::sqrt(target / d_sq) : 0.0);
  if (!near_relative(ratio, ratio_ref, 1e-6) && !(ratio == 0.0f && ratio_ref == 0.0f))
    return where + ": ratio " + std::to_string(ratio) + ", expected " + std::to_string(ratio_ref);
  if (v[un] != kGuard) return where + ": wrote past the end of V";
  for (std::size_t e = 0; e < un; ++e) {
    if (v[e] != v_ref[e]) return where + ": V wrong at entry " + std::to_string(e);
    const float want =
        r::muon_parameter(p0[e], r::adamuon_direction(o[e], v_ref[e], km) * ratio_ref, ku);
    if (std::abs(p[e] - want) > 1e-6f) return where + ": p wrong at entry " + std::to_string(e);
  }
  return {};
}

}  // namespace

std::string emulate_variant_kernels() {
  // Rows and columns below, at and past one CUDA block's 256 threads and the
  // column kernel's 32 lanes; a single entry; O = 0.
  const std::int64_t shapes[][2] = {{1, 1},    {5, 7},    {7, 5},  {40, 300},
                                    {300, 40}, {33, 257}, {64, 64}};
  for (const auto& sh : shapes)
    for (bool by_row : {true, false})
      for (bool zero : {false, true})
        if (auto e = check_normuon(sh[0], sh[1], by_row, zero); !e.empty()) return e;
  for (const auto& sh : shapes)
    for (bool zero : {false, true})
      if (auto e = check_adamuon(sh[0], sh[1], zero); !e.empty()) return e;
  // More entries than the elementwise grid's 4096 x 256 threads: the
  // grid-stride loop comes round.
  return check_adamuon(1100, 1000, false);
}

namespace {

// ---- the step's check and commit kernels, thread by thread ----------------------
//
// The references are the formulas written out in float, in the order the
// CPU optimizer evaluates them (torch.optim.Muon's and torch.optim.AdamW's
// steps), so a kernel's values must agree to the bit.

constexpr float kHuge = std::numeric_limits<float>::max();

// Every thread of a grid-stride launch of `threads` threads, in order.
template <class F>
void each_thread(std::int64_t threads, F&& f) {
  for (std::int64_t t = 0; t < threads; ++t) f(t);
}

// The threads of an elementwise launch over n entries (256 per block).
std::int64_t launch_threads(std::int64_t n) { return std::int64_t(k::elementwise_blocks(n)) * 256; }

template <class P>
float as_stored(float x) {  // x rounded to P and back
  return k::to_float(k::from_float<P>(x));
}

template <class P>
std::vector<P> stored(const std::vector<float>& v) {
  std::vector<P> out(v.size());
  for (std::size_t e = 0; e < v.size(); ++e) out[e] = k::from_float<P>(v[e]);
  return out;
}

// Muon's momentum step on one entry, as the formulas say, with the float
// scalars the host uploads (mu, and 1 - mu computed in double): g (+ lambda
// p under the l2 form); ema: m + (1 - mu)(g - m), sum: mu m + g; the
// Newton–Schulz input from the new m: m, or with Nesterov m + (1 - mu)(g -
// m) (ema) / g + mu m (sum); its sign under AdaMuon's sign form.
struct MomentumFormula {
  double mu_d, lambda_d;
  bool ema, nesterov, sign;
  float mu() const { return static_cast<float>(mu_d); }
  float one_minus_mu() const { return static_cast<float>(1.0 - mu_d); }
  float lambda() const { return static_cast<float>(lambda_d); }
  float grad(float raw, float p) const { return lambda_d != 0 ? raw + lambda() * p : raw; }
  float momentum(float m, float g) const {
    return ema ? m + one_minus_mu() * (g - m) : mu() * m + g;
  }
  float input(float m, float g) const {
    const float x = !nesterov ? m : ema ? m + one_minus_mu() * (g - m) : g + mu() * m;
    if (!sign) return x;
    return x > 0.0f ? 1.0f : x < 0.0f ? -1.0f : x;
  }
};

// The largest finite value of P.
template <class P>
float top_of() {
  return std::is_same<P, float>::value    ? kHuge
         : std::is_same<P, __half>::value ? 65504.0f
                                          : 3.3895313892515355e38f;
}

template <class P>
std::string check_muon_step(const char* type, const MomentumFormula& f, std::int64_t threads_in) {
  const std::string where = std::string("muon step ") + type + (f.ema ? " ema" : " sum") +
                            (f.nesterov ? " nesterov" : "") + (f.lambda_d != 0 ? " l2" : "") +
                            (f.sign ? " sign" : "") +
                            (threads_in ? " (" + std::to_string(threads_in) + " threads)" : "");
  const std::int64_t n = 1000;
  const std::size_t un = static_cast<std::size_t>(n);
  const std::int64_t threads = threads_in ? threads_in : launch_threads(n);
  const r::MomentumCoefficients<float> km = r::momentum_coefficients<float>(
      f.mu_d, f.ema, f.nesterov, f.lambda_d, f.sign);  // what the host uploads
  // The entries as stored: p and g in P, m in float.
  std::vector<float> p = uniform(un, -2.0f, 2.0f, 31), g = uniform(un, -1.0f, 1.0f, 32),
                     m0 = uniform(un, -0.5f, 0.5f, 33);
  for (std::size_t e = 0; e < un; ++e) p[e] = as_stored<P>(p[e]), g[e] = as_stored<P>(g[e]);
  const std::vector<P> pp = stored<P>(p), gp = stored<P>(g);

  // 1. every entry fine: no flag, max |p| over all, then the commit.
  k::MuonCheck found{0, 0.0f};
  each_thread(threads, [&](std::int64_t t) {
    const k::MuonCheck s = k::muon_check_share(gp.data(), m0.data(), pp.data(), n, km, t, threads);
    found.flags |= s.flags;
    found.max_abs = std::max(found.max_abs, s.max_abs);
  });
  float max_abs = 0;
  for (float x : p) max_abs = std::max(max_abs, std::abs(x));
  if (found.flags != 0) return where + ": flags " + std::to_string(found.flags) + " on finite data";
  if (found.max_abs != max_abs) return where + ": max |p| " + std::to_string(found.max_abs);
  std::vector<float> m = m0, staging(un, std::nanf(""));
  each_thread(threads, [&](std::int64_t t) {
    k::momentum_commit_share(gp.data(), pp.data(), m.data(), staging.data(), n, km, t, threads);
  });
  for (std::size_t e = 0; e < un; ++e) {
    const float gr = f.grad(g[e], p[e]), mn = f.momentum(m0[e], gr);
    if (m[e] != mn) return where + ": momentum wrong at " + std::to_string(e);
    if (staging[e] != f.input(mn, gr)) return where + ": NS input wrong at " + std::to_string(e);
  }

  // 2. a NaN and an Inf gradient entry: flagged; their |p| (the largest) not counted.
  std::vector<float> gbad = g;
  std::vector<float> pbig = p;
  gbad[7] = std::nanf("");
  gbad[500] = std::numeric_limits<float>::infinity();
  pbig[7] = as_stored<P>(3.5f);
  pbig[500] = as_stored<P>(-3.25f);
  const std::vector<P> gbp = stored<P>(gbad), pbp = stored<P>(pbig);
  found = {0, 0.0f};
  each_thread(threads, [&](std::int64_t t) {
    const k::MuonCheck s =
        k::muon_check_share(gbp.data(), m0.data(), pbp.data(), n, km, t, threads);
    found.flags |= s.flags;
    found.max_abs = std::max(found.max_abs, s.max_abs);
  });
  if (found.flags != muon::optim::step::kNonFiniteGrad)
    return where + ": a NaN/Inf gradient gives flags " + std::to_string(found.flags);
  if (found.max_abs != max_abs) return where + ": max |p| counts a NaN gradient's entry";

  // 3. a momentum that overflows float, from a momentum and a gradient
  // finite on their own (P's largest gradient: none for half).
  std::vector<float> mbig = m0, gbig = g;
  mbig[300] = kHuge;
  gbig[300] = f.ema ? -top_of<P>() : top_of<P>();
  const std::vector<P> gbigp = stored<P>(gbig);
  found = {0, 0.0f};
  each_thread(threads, [&](std::int64_t t) {
    const k::MuonCheck s =
        k::muon_check_share(gbigp.data(), mbig.data(), pp.data(), n, km, t, threads);
    found.flags |= s.flags;
  });
  const float gr = f.grad(gbig[300], p[300]), mn = f.momentum(kHuge, gr);
  const bool overflows = !std::isfinite(mn) || !std::isfinite(f.input(mn, gr));
  if (!overflows && !std::is_same<P, __half>::value) return where + ": the case did not overflow";
  if (found.flags != (overflows ? muon::optim::step::kNonFiniteState : 0))
    return where + ": an overflowing momentum gives flags " + std::to_string(found.flags);

  // 4. the parameter commit (decay where cautious allows, then the step), rounded to P.
  const std::vector<float> o = uniform(un, -1.0f, 1.0f, 34);
  for (bool cautious : {false, true}) {
    const auto ku = r::muon_update_coefficients<float>(0.98, 0.0625, cautious);
    std::vector<P> w = pp;
    each_thread(threads, [&](std::int64_t t) {
      k::muon_commit_share(w.data(), o.data(), n, ku, t, threads);
    });
    for (std::size_t e = 0; e < un; ++e) {
      const float decayed = !cautious || o[e] * p[e] > 0.0f ? p[e] * 0.98f : p[e];
      if (k::to_float(w[e]) != as_stored<P>(decayed - 0.0625f * o[e]))
        return where + (cautious ? ": cautious" : "") + ": parameter wrong at " + std::to_string(e);
    }
  }
  return {};
}

template <class P>
std::string check_adamw_step(const char* type, std::int64_t threads_in) {
  const std::string where = std::string("adamw step ") + type +
                            (threads_in ? " (" + std::to_string(threads_in) + " threads)" : "");
  const std::int64_t n = 777;
  const std::size_t un = static_cast<std::size_t>(n);
  const std::int64_t threads = threads_in ? threads_in : launch_threads(n);
  const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1, t = 3;
  const r::AdamWCoefficients<float> kc = r::adamw_coefficients<float>(lr, b1, b2, eps, wd, t);
  std::vector<float> p = uniform(un, -2.0f, 2.0f, 41), g = uniform(un, -1.0f, 1.0f, 42),
                     m0 = uniform(un, -0.1f, 0.1f, 43), v0 = uniform(un, 0.0f, 0.01f, 44);
  for (std::size_t e = 0; e < un; ++e) p[e] = as_stored<P>(p[e]), g[e] = as_stored<P>(g[e]);
  // torch.optim.AdamW, from the moments as stored (float).
  const float decay = static_cast<float>(1.0 - lr * wd), one_minus_b1 = static_cast<float>(1 - b1),
              beta2 = static_cast<float>(b2), one_minus_b2 = static_cast<float>(1 - b2),
              step_size = static_cast<float>(lr / (1 - std::pow(b1, t))),
              sqrt_bc2 = static_cast<float>(std::sqrt(1 - std::pow(b2, t))),
              epsf = static_cast<float>(eps);
  auto exp_avg = [&](float m, float gr) { return m + one_minus_b1 * (gr - m); };
  auto exp_avg_sq = [&](float v, float gr) { return beta2 * v + one_minus_b2 * gr * gr; };
  auto param = [&](float w, float a, float b) {
    return w * decay - step_size * a / (std::sqrt(b) / sqrt_bc2 + epsf);
  };
  auto flags_of = [&](const std::vector<P>& pp, const std::vector<P>& gp,
                      const std::vector<float>& m, const std::vector<float>& v) {
    int flags = 0;
    each_thread(threads, [&](std::int64_t th) {
      flags |= k::adamw_check_share(pp.data(), gp.data(), m.data(), v.data(), n, kc, th, threads);
    });
    return flags;
  };
  const std::vector<P> pp = stored<P>(p), gp = stored<P>(g);
  if (const int f = flags_of(pp, gp, m0, v0); f != 0)
    return where + ": flags " + std::to_string(f) + " on finite data";
  std::vector<P> w = pp;
  std::vector<float> m = m0, v = v0;
  each_thread(threads, [&](std::int64_t th) {
    k::adamw_commit_share(w.data(), gp.data(), m.data(), v.data(), n, kc, th, threads);
  });
  for (std::size_t e = 0; e < un; ++e) {
    const float a = exp_avg(m0[e], g[e]), b = exp_avg_sq(v0[e], g[e]);
    if (m[e] != a || v[e] != b) return where + ": moments wrong at " + std::to_string(e);
    if (k::to_float(w[e]) != as_stored<P>(param(p[e], a, b)))
      return where + ": parameter wrong at " + std::to_string(e);
  }
  // A NaN gradient; a second moment that overflows float; a parameter that
  // overflows its type (P's largest value, pushed past it by the step).
  std::vector<float> gbad = g;
  gbad[5] = std::nanf("");
  if (const int f = flags_of(pp, stored<P>(gbad), m0, v0); f != muon::optim::step::kNonFiniteGrad)
    return where + ": a NaN gradient gives flags " + std::to_string(f);
  std::vector<float> ghuge = g;  // (1 - beta2) g^2 overflows float (P's largest: none for half)
  ghuge[600] = std::is_same<P, __half>::value ? 65504.0f : as_stored<P>(1e30f);
  const bool overflows = !std::isfinite(exp_avg_sq(v0[600], ghuge[600]));
  if (!overflows && !std::is_same<P, __half>::value) return where + ": the case did not overflow";
  if (const int f = flags_of(pp, stored<P>(ghuge), m0, v0);
      f != (overflows ? muon::optim::step::kNonFiniteState : 0))
    return where + ": an overflowing moment gives flags " + std::to_string(f);
  std::vector<float> pbig = p, gone = g, mbig = m0;
  pbig[70] = -top_of<P>();  // decays toward 0, but the step pushes it past -top
  gone[70] = 1.0f;
  mbig[70] = 1e38f;
  const float after = param(pbig[70], exp_avg(mbig[70], 1.0f), exp_avg_sq(v0[70], 1.0f));
  const int want = std::isfinite(as_stored<P>(after)) ? 0 : muon::optim::step::kNonFiniteUpdate;
  if (const int f = flags_of(stored<P>(pbig), stored<P>(gone), mbig, v0); f != want)
    return where + ": a parameter at its type's limit gives flags " + std::to_string(f) +
           ", expected " + std::to_string(want);
  if (want == 0) return where + ": the overflow case did not overflow";
  return {};
}

// decide's per-parameter rule and verdict, case by case.
std::string check_decide() {
  namespace s = muon::optim::step;
  k::ParamStep muon_param;
  muon_param.present = 1;
  muon_param.update_limit = 2.0f;
  k::ParamStep adamw = muon_param, absent = muon_param;
  adamw.adamw = 1;
  absent.present = 0;
  struct Case {
    k::ParamStep q;
    int flags;
    float max_abs;
    int want;
  };
  const Case cases[] = {
      {muon_param, 0, 1.5f, 0},
      {muon_param, 0, 2.0f, 0},  // at the limit: still fine
      {muon_param, 0, 2.5f, s::kNonFiniteUpdate},
      {muon_param, 0, std::nanf(""), s::kNonFiniteUpdate},
      {muon_param, s::kNonFiniteState, 2.5f, s::kNonFiniteState | s::kNonFiniteUpdate},
      {adamw, 0, 99.0f, 0},  // AdamW's bound is its own check's
      {adamw, s::kNonFiniteUpdate, 0.0f, s::kNonFiniteUpdate},
      {absent, s::kNoGrad, 99.0f, s::kNoGrad},
  };
  for (const Case& c : cases) {
    const int got = k::decided_flags(c.q, c.flags, c.max_abs);
    if (got != c.want)
      return "decide: flags " + std::to_string(got) + ", expected " + std::to_string(c.want) +
             " (max |p| " + std::to_string(c.max_abs) + ")";
    if (s::blocks_update(got) != ((got & ~s::kNoGrad) != 0))
      return "decide: the verdict of flags " + std::to_string(got);
  }
  if (s::blocks_update(s::kNoGrad)) return "decide: a missing gradient refuses the step";
  return {};
}

// finalize_scale's per-matrix value: 1 / (d ||X|| + eps) or 1 / max(d ||X||, eps).
std::string check_normalization_scale() {
  const double sums[] = {0.0, 1e-20, 0.25, 2.0, 1e6, 1e300};
  for (double sumsq : sums)
    for (double divisor : {1.0, 1.01})
      for (double eps : {1e-7, 1e-3})
        for (bool eps_max : {false, true}) {
          const k::NormalizationScale got = k::normalization_scale(sumsq, divisor, eps, eps_max);
          const double norm = divisor * std::sqrt(sumsq);
          const float want = static_cast<float>(1.0 / (eps_max ? std::max(norm, eps) : norm + eps));
          if (got.nonfinite != 0 || got.scale != want)
            return "normalization scale of sum " + std::to_string(sumsq) +
                   (eps_max ? " (max)" : "") + ": " + std::to_string(got.scale) + ", expected " +
                   std::to_string(want);
        }
  for (double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    const k::NormalizationScale got = k::normalization_scale(bad, 1.0, 1e-7, false);
    if (got.nonfinite != 1 || got.scale != 0.0f) return "normalization scale of a NaN/Inf norm";
  }
  return {};
}

template <class P>
std::string check_step_type(const char* type) {
  const MomentumFormula forms[] = {
      {0.95, 0.0, true, true, false},  {0.95, 0.0, true, false, false},
      {0.9, 0.0, false, true, false},  {0.9, 0.0, false, false, false},
      {0.95, 0.01, true, true, false}, {0.95, 0.0, true, true, true},
  };
  for (const MomentumFormula& f : forms)
    for (std::int64_t threads : {std::int64_t(0), std::int64_t(96)})
      if (auto e = check_muon_step<P>(type, f, threads); !e.empty()) return e;
  for (std::int64_t threads : {std::int64_t(0), std::int64_t(96)})
    if (auto e = check_adamw_step<P>(type, threads); !e.empty()) return e;
  return {};
}

}  // namespace

std::string emulate_step_kernels() {
  if (auto e = check_decide(); !e.empty()) return e;
  if (auto e = check_normalization_scale(); !e.empty()) return e;
  if (auto e = check_step_type<float>("float"); !e.empty()) return e;
  if (auto e = check_step_type<__half>("half"); !e.empty()) return e;
  return check_step_type<__nv_bfloat16>("bfloat16");
}

namespace {

// ---- the AOL kernels, thread by thread ---------------------------------------

// aol_row_factors over a batch: grid (aol_row_blocks(m), batch), kReduceThreads
// threads, the lane shares then the lane sums of the threads in column lane 0.
template <class T>
void run_aol_row_factors(const std::vector<T>& a, std::int64_t m, std::int64_t batch,
                         std::vector<float>& factors, std::vector<int>& flags) {
  for (std::int64_t z = 0; z < batch; ++z)
    for (unsigned b = 0; b < k::aol_row_blocks(m); ++b) {
      double shares[k::kAolColumnLanes][k::kAolRowLanes];
      for (int t = 0; t < kThreads; ++t) {
        const int row_lane = t % k::kAolRowLanes, column_lane = t / k::kAolRowLanes;
        shares[column_lane][row_lane] = k::aol_row_share(
            a.data() + z * m * m, m, std::int64_t(b) * k::kAolRowLanes + row_lane, column_lane);
      }
      for (int t = 0; t < k::kAolRowLanes; ++t) {  // column lane 0
        const std::int64_t i = std::int64_t(b) * k::kAolRowLanes + t;
        if (i >= m) continue;
        const double total = k::aol_row_total(shares, t);
        factors[static_cast<std::size_t>(z * m + i)] = k::aol_factor(total);
        if (!r::finite(total)) flags[static_cast<std::size_t>(z)] = 1;
      }
    }
}

// aol_scale over a batch of m x cols matrices with `threads` threads per
// matrix (blockIdx.y = z): every thread's share.
template <class T>
void run_aol_scale(std::vector<T>& x, std::int64_t m, std::int64_t cols, std::int64_t batch,
                   const std::vector<float>& factors, bool both, std::int64_t threads) {
  for (std::int64_t z = 0; z < batch; ++z)
    for (std::int64_t t = 0; t < threads; ++t)
      k::aol_scale_share(x.data() + z * m * cols, m, cols, factors.data() + z * m, both, t,
                         threads);
}

// The threads of aol_scale's launch over m x cols (Workspace::launch_aol_scale).
std::int64_t aol_scale_threads(std::int64_t m, std::int64_t cols) {
  const unsigned blocks = k::elementwise_blocks(m * cols);
  return std::int64_t(blocks > 1024u ? 1024u : blocks) * 256;
}

// One batch of m x n X (uniform in [-1, 1], rounded to T) and A = X X^T
// (double, rounded to T): matrix 0 with a zero row, 1 all zero, 2 with a NaN
// and 3 with an Inf entry in A, 4 plain (its flag set beforehand: the kernel
// never clears one). `threads` > 0 replaces aol_scale's launch (a
// grid-stride loop that comes round).
template <class T>
std::string check_aol(std::int64_t m, std::int64_t n, std::int64_t threads, const char* type) {
  const std::string where = std::string("aol ") + type + " " + std::to_string(m) + "x" +
                            std::to_string(n) +
                            (threads > 0 ? " (" + std::to_string(threads) + " threads)" : "");
  const std::int64_t batch = 5;
  const std::size_t mn = static_cast<std::size_t>(m * n), mm = static_cast<std::size_t>(m * m);
  const std::vector<float> u = uniform(mn * batch, -1.0f, 1.0f, 77 + mn);
  std::vector<T> x(mn * batch), a(mm * batch);
  for (std::size_t e = 0; e < x.size(); ++e) x[e] = k::from_float<T>(u[e]);
  const std::int64_t zero_row = m / 2;
  for (std::int64_t j = 0; j < n; ++j)
    x[static_cast<std::size_t>(zero_row + j * m)] = k::from_float<T>(0.0f);
  for (std::size_t e = mn; e < 2 * mn; ++e) x[e] = k::from_float<T>(0.0f);
  auto xd = [&](std::int64_t z, std::int64_t i, std::int64_t j) {
    return static_cast<double>(k::to_float(x[static_cast<std::size_t>(z * m * n + i + j * m)]));
  };
  for (std::int64_t z = 0; z < batch; ++z)
    for (std::int64_t j = 0; j < m; ++j)
      for (std::int64_t i = 0; i < m; ++i) {
        double v = 0;
        for (std::int64_t c = 0; c < n; ++c) v += xd(z, i, c) * xd(z, j, c);
        a[static_cast<std::size_t>(z * m * m + i + j * m)] =
            k::from_float<T>(static_cast<float>(v));
      }
  a[2 * mm + static_cast<std::size_t>(m - 1)] = k::from_float<T>(std::nanf(""));  // A(m-1, 0)
  a[3 * mm + static_cast<std::size_t>((m - 1) * m)] =
      k::from_float<T>(std::numeric_limits<float>::infinity());  // A(0, m-1)
  const std::vector<T> x0 = x, a0 = a;

  // The kernels: factors (one guard past the end), then X's rows, then A.
  std::vector<float> factors(static_cast<std::size_t>(m * batch) + 1, kGuard);
  std::vector<int> flags = {0, 0, 0, 0, 1};
  run_aol_row_factors(a, m, batch, factors, flags);
  run_aol_scale(x, m, n, batch, factors, false, threads > 0 ? threads : aol_scale_threads(m, n));
  run_aol_scale(a, m, m, batch, factors, true, threads > 0 ? threads : aol_scale_threads(m, m));

  if (factors.back() != kGuard) return where + ": a factor written past the end";
  const std::vector<int> want_flags = {0, 0, 1, 1, 1};
  for (std::int64_t z = 0; z < batch; ++z)
    if (flags[static_cast<std::size_t>(z)] != want_flags[static_cast<std::size_t>(z)])
      return where + ": nonfinite flag of matrix " + std::to_string(z) + " is " +
             std::to_string(flags[static_cast<std::size_t>(z)]);
  const double tol = std::is_same<T, float>::value    ? 1e-5
                     : std::is_same<T, __half>::value ? 4e-3
                                                      : 3e-2;
  for (std::int64_t z : {0, 1, 4}) {
    const std::string at = where + ", matrix " + std::to_string(z);
    // The definition, in double: s_i = (sum_j |A_ij|)^(-1/2), 0 for a zero row.
    std::vector<double> s(static_cast<std::size_t>(m));
    for (std::int64_t i = 0; i < m; ++i) {
      double row = 0;
      for (std::int64_t j = 0; j < m; ++j)
        row += std::abs(k::to_float(a0[static_cast<std::size_t>(z * m * m + i + j * m)]));
      s[static_cast<std::size_t>(i)] = row > 0 ? 1.0 / std::sqrt(row) : 0.0;
    }
    const float* f = factors.data() + z * m;
    for (std::int64_t i = 0; i < m; ++i) {
      const double want = s[static_cast<std::size_t>(i)];
      if ((want == 0.0) != (f[i] == 0.0f) || !near_relative(f[i], want, 1.2e-7))
        return at + ": factor " + std::to_string(i) + " is " + std::to_string(f[i]) + ", want " +
               std::to_string(want);
    }
    // X(i, j) s_i and A(i, j) (s_i s_j), rounded once to T.
    for (std::int64_t j = 0; j < n; ++j)
      for (std::int64_t i = 0; i < m; ++i) {
        const std::size_t e = static_cast<std::size_t>(z * m * n + i + j * m);
        const float want = k::to_float(k::from_float<T>(k::to_float(x0[e]) * f[i]));
        if (k::to_float(x[e]) != want)
          return at + ": X(" + std::to_string(i) + ", " + std::to_string(j) + ") wrong";
      }
    double worst = 0;
    for (std::int64_t j = 0; j < m; ++j)
      for (std::int64_t i = 0; i < m; ++i) {
        const std::size_t e = static_cast<std::size_t>(z * m * m + i + j * m);
        const std::size_t tr = static_cast<std::size_t>(z * m * m + j + i * m);
        const float want = k::to_float(k::from_float<T>(k::to_float(a0[e]) * (f[i] * f[j])));
        if (k::to_float(a[e]) != want)
          return at + ": A(" + std::to_string(i) + ", " + std::to_string(j) + ") wrong";
        if (k::to_float(a[e]) != k::to_float(a[tr])) return at + ": A is not symmetric";
        double g = 0;  // (X X^T)(i, j) of the new X
        for (std::int64_t c = 0; c < n; ++c) g += xd(z, i, c) * xd(z, j, c);
        worst = std::max(worst, std::abs(g - static_cast<double>(k::to_float(a[e]))));
      }
    if (!(worst <= tol))
      return at + ": A differs from X X^T of the new X by " + std::to_string(worst);
    if (z == 0)
      for (std::int64_t j = 0; j < n; ++j)
        if (xd(z, zero_row, j) != 0.0) return at + ": the zero row of X is not zero";
    if (z == 1)
      for (std::size_t e = mn; e < 2 * mn; ++e)
        if (k::to_float(x[e]) != 0.0f) return at + ": the zero matrix is not zero";
  }
  return {};
}

template <class T>
std::string check_aol_shapes(const char* type) {
  // m below, at and past the 32 rows of a CUDA block; the 8 column lanes
  // coming round; wide and square.
  for (std::int64_t m : {1, 5, 31, 32, 33, 70})
    for (std::int64_t n : {m, m + 37})
      if (auto e = check_aol<T>(m, n, 0, type); !e.empty()) return e;
  return check_aol<T>(45, 90, 96, type);  // 96 threads: the grid-stride loop comes round
}

}  // namespace

std::string emulate_aol_kernels() {
  if (auto e = check_aol_shapes<float>("float"); !e.empty()) return e;
  if (auto e = check_aol_shapes<__half>("half"); !e.empty()) return e;
  return check_aol_shapes<__nv_bfloat16>("bfloat16");
}

std::string cuda_error_message() {
  try {
    mc::check(cudaErrorInvalidValue, "cudaMemcpyAsync");
  } catch (const muon::Error& e) {
    return e.what();
  }
  return {};
}

std::string cublas_error_message() {
  try {
    mc::check(CUBLAS_STATUS_INVALID_VALUE, "cublasGemmEx");
  } catch (const muon::Error& e) {
    return e.what();
  }
  return {};
}

namespace {

muon::optim::TensorShape shape_of(const OptParam& q) {
  muon::optim::TensorShape s;
  for (std::int64_t d : q.shape) s.dims[static_cast<std::size_t>(s.ndim++)] = d;
  s.column_major = q.col_major;
  return s;
}

muon::ParamOptions options_of(const OptParam& q) {
  muon::ParamOptions o;
  o.route = q.route;
  o.group = q.group;
  o.split.assign(q.split.begin(), q.split.end());
  return o;
}

template <class C>
std::unique_ptr<mc::Optimizer<float, C>> make_optimizer(const std::vector<OptParam>& params,
                                                        const OptRun& run,
                                                        std::vector<mc::DeviceMatrix<float>>* p,
                                                        std::vector<mc::DeviceMatrix<float>>* g) {
  auto opt = std::make_unique<mc::Optimizer<float, C>>(run.muon, run.adamw);
  for (std::size_t k = 1; k < run.groups; ++k) opt->add_group(run.muon, run.adamw);
  opt->set_non_finite_policy(run.policy);
  for (std::size_t k = 0; k < params.size(); ++k)
    opt->add_param(params[k].name, (*p)[k].data(), (*g)[k].data(), shape_of(params[k]),
                   options_of(params[k]));
  return opt;
}

template <class C>
OptResult run_optimizer_typed(const std::vector<OptParam>& params, const OptRun& run) {
  Stream st;
  std::vector<mc::DeviceMatrix<float>> p, g;
  for (const auto& q : params) {
    const std::int64_t n = static_cast<std::int64_t>(q.value.size());
    p.emplace_back(n, 1, st.s);
    g.emplace_back(n, 1, st.s);
    p.back().upload(q.value.data(), st.s);
  }
  auto opt = make_optimizer<C>(params, run, &p, &g);
  if (!run.load.empty()) {
    std::stringstream in(run.load);
    opt->load(in, st.s);
  }
  OptResult result;
  bool captured = false;
  for (int s = 0; s < run.steps; ++s) {
    for (std::size_t k = 0; k < params.size(); ++k)
      g[k].upload(run.grads.at(static_cast<std::size_t>(s)).at(k).data(), st.s);
    if (run.graph) {
      if (!captured) {
        opt->capture(st.s);
        captured = true;
      }
      opt->replay(st.s);
    } else {
      opt->step(st.s);
    }
    StepOutcome outcome;
    try {
      const muon::StepReport& r = opt->report(st.s);
      outcome.updated = r.updated;
      for (const auto& skipped : r.skipped)
        outcome.skipped.emplace_back(std::string(skipped.name), skipped.reason);
    } catch (const muon::Error& e) {
      outcome.error = e.what();
    }
    result.steps.push_back(outcome);
    if (run.clip_after == s + 1)
      for (const ClipCall& c : run.clips) opt->qk_clip(c.heads, c.maxima, c.options, st.s);
    if (run.save_after == s + 1) {
      std::stringstream buf;
      opt->save(buf, st.s);
      opt = make_optimizer<C>(params, run, &p, &g);
      opt->load(buf, st.s);
      captured = false;
    }
    if (run.switch_after == s + 1) {
      for (std::size_t k = 0; k < run.groups; ++k) {
        if (run.switch_by_key)
          opt->set_option("variant", muon::muon_variant_name(run.switch_to.variant), k);
        else
          opt->set_muon_options(run.switch_to, k);
      }
      captured = false;  // the change of variant dropped the graph
    }
  }
  for (std::size_t k = 0; k < params.size(); ++k) {
    result.params.emplace_back(params[k].value.size());
    p[k].download(result.params.back().data(), st.s);
  }
  MUON_CUDA_CHECK(cudaStreamSynchronize(st.s));
  result.step_count = opt->step_count();
  std::stringstream out;
  opt->save(out, st.s);
  result.saved = out.str();
  return result;
}

}  // namespace

OptResult run_optimizer(const std::vector<OptParam>& params, const OptRun& run) {
  return run.ns_f32 ? run_optimizer_typed<float>(params, run)
                    : run_optimizer_typed<__nv_bfloat16>(params, run);
}

std::string optimizer_error(const std::string& what) {
  try {
    muon::MuonGroupOptions o;
    if (what == "options") o.momentum = 1.0;
    if (what == "gram") o.ns.method = muon::NsMethod::gram;
    if (what == "aol") o.ns = muon::NewtonSchulzOptions::turbo_muon();
    mc::Optimizer<float> opt(o);
    float* fake = reinterpret_cast<float*>(std::uintptr_t(4096));  // never dereferenced
    opt.add_param("w", fake, fake, {4, 4});
    if (what == "duplicate") opt.add_param("w", fake, fake, {4, 4});
    if (what == "null") opt.add_param("v", nullptr, fake, {4, 4});
    if (what == "shape") opt.add_param("v", fake, fake, {0, 4});
    if (what == "dims") opt.add_param("v", fake, fake, {1, 2, 3, 4, 5});
    if (what == "set_gram") opt.set_option("ns_method", "gram");
    if (what == "aol") {  // accepted by the constructor, set_option and set_muon_options
      opt.set_option("ns_normalization", "frobenius");
      opt.set_option("ns_normalization", "aol");
      if (opt.muon_options().ns.normalization != muon::NsNormalization::aol)
        return "ns_normalization did not follow set_option";
      muon::MuonGroupOptions turbo;
      turbo.ns = muon::NewtonSchulzOptions::turbo_muon();
      opt.set_muon_options(turbo);
    }
    if (what == "set_normalization") opt.set_option("ns_normalization", "spectral");
    if (what == "variant_name") opt.set_option("variant", "nomuon");
    if (what == "variant_options") {
      muon::MuonGroupOptions bad = muon::MuonGroupOptions::normuon();
      bad.normuon_beta2 = 1.0;
      opt.set_muon_options(bad);
    }
    if (what == "variant") {  // before the first step: options only, no device memory
      opt.set_option("variant", "normuon");
      opt.set_muon_options(muon::MuonGroupOptions::adamuon());
      opt.set_option("variant", std::string("muon"));
      if (opt.muon_options().variant != muon::MuonVariant::muon)
        return "the variant did not follow set_option";
    }
    if (what == "bad_magic") {
      std::stringstream s("NOTMUON!");
      opt.load(s, nullptr);
    }
  } catch (const muon::Error& e) {
    return e.what();
  }
  return {};
}

std::string replay_after_variant_change() {
  Stream st;
  std::vector<float> host(8 * 12, 0.25f);
  mc::DeviceMatrix<float> w(8, 12, st.s), gw(8, 12, st.s);
  w.upload(host.data(), st.s);
  for (std::size_t i = 0; i < host.size(); ++i) host[i] = 0.01f * float(i % 9) - 0.04f;
  gw.upload(host.data(), st.s);
  mc::Optimizer<float> opt;
  opt.add_param("w", w.data(), gw.data(), {8, 12});
  opt.capture(st.s);
  opt.replay(st.s);
  (void)opt.report(st.s);
  opt.set_option("variant", "normuon");
  std::string error;
  try {
    opt.replay(st.s);
  } catch (const muon::Error& e) {
    error = e.what();
  }
  try {
    opt.capture(st.s);
    opt.replay(st.s);
    if (opt.report(st.s).updated != 1) return "recapture: the parameter was not updated";
  } catch (const muon::Error& e) {
    return std::string("recapture: ") + e.what();
  }
  return error;
}

// ---- QK-Clip ------------------------------------------------------------------

namespace {

template <class P>
std::vector<P> rounded(const std::vector<float>& v) {
  std::vector<P> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = from_double<P>(v[i]);
  return out;
}

template <class P>
std::vector<float> widened(const std::vector<P>& v) {
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(to_double(v[i]));
  return out;
}

muon::Layout layout_of(const ClipParam& q) {
  return q.col_major ? muon::Layout::column_major : muon::Layout::row_major;
}

template <class P>
ClipOutcome device_qk_clip_typed(const std::vector<ClipParam>& params, const ClipCall& call) {
  Stream st;
  std::vector<mc::DeviceMatrix<P>> memory;
  memory.reserve(params.size());
  mc::Optimizer<P> opt;
  for (const ClipParam& q : params) {
    memory.emplace_back(q.out * q.in, 1, st.s);
    const std::vector<P> host = rounded<P>(q.value);
    memory.back().upload(host.data(), st.s);
    MUON_CUDA_CHECK(cudaStreamSynchronize(st.s));  // before `host` goes
    opt.add_param(q.name, memory.back().data(), nullptr, q.out, q.in, layout_of(q));
  }
  ClipOutcome r;
  try {
    r.report = opt.qk_clip(call.heads, call.maxima, call.options, st.s);
  } catch (const muon::Error& e) {
    r.error = e.what();
  }
  for (const auto& m : memory)
    r.params.push_back(
        widened(mc::detail::download_now(m.data(), static_cast<std::size_t>(m.size()), st.s)));
  return r;
}

}  // namespace

ClipOutcome device_qk_clip(const std::vector<ClipParam>& params, Dtype dtype,
                           const ClipCall& call) {
  switch (dtype) {
    case Dtype::f32:
      return device_qk_clip_typed<float>(params, call);
    case Dtype::f16:
      return device_qk_clip_typed<__half>(params, call);
    case Dtype::bf16:
      break;
  }
  return device_qk_clip_typed<__nv_bfloat16>(params, call);
}

ClipOutcome host_qk_clip(const std::vector<ClipParam>& params, const ClipCall& call) {
  mc::Optimizer<float> opt;
  float* fake = reinterpret_cast<float*>(std::uintptr_t(4096));  // never dereferenced
  for (const ClipParam& q : params) opt.add_param(q.name, fake, nullptr, q.out, q.in, layout_of(q));
  ClipOutcome r;
  try {
    // The fake addresses must never reach a kernel: plan first, as qk_clip does.
    if (!muon::optim::plan_qk_clip(opt.core(), call.heads, call.maxima.data(), call.maxima.size(),
                                   call.options)
             .scalings.empty())
      r.error = "would launch";
    else
      r.report = opt.qk_clip(call.heads, call.maxima, call.options, nullptr);
  } catch (const muon::Error& e) {
    r.error = e.what();
  }
  return r;
}

namespace {

template <class P>
std::vector<std::vector<float>> emulate_scale_rows_typed(
    const std::vector<ClipParam>& params, const std::vector<muon::optim::RowScaling>& scalings) {
  std::vector<std::vector<P>> memory;
  for (const ClipParam& q : params) memory.push_back(rounded<P>(q.value));
  // The optimizer's launches: kRowScalesPerLaunch scalings each, blockIdx.y
  // the scaling, gridDim.x the blocks of the largest.
  const std::size_t per_launch = k::kRowScalesPerLaunch;
  for (std::size_t first = 0; first < scalings.size(); first += per_launch) {
    const std::size_t last = std::min(scalings.size(), first + per_launch);
    k::RowScaleBatch<P> batch{};
    std::int64_t longest = 0;
    for (std::size_t j = first; j < last; ++j) {
      const muon::optim::RowScaling& r = scalings[j];
      const ClipParam& q = params.at(r.param);
      batch.s[batch.count++] = {
          memory[r.param].data(), q.out, q.in, r.row, r.rows, static_cast<float>(r.factor),
          q.col_major ? 1 : 0};
      longest = std::max(longest, r.rows * q.in);
    }
    const std::int64_t threads = std::int64_t(k::elementwise_blocks(longest)) * 256;
    for (int y = 0; y < batch.count; ++y)
      for (std::int64_t t = 0; t < threads; ++t) k::scale_rows_share(batch.s[y], t, threads);
  }
  std::vector<std::vector<float>> out;
  for (const auto& m : memory) out.push_back(widened(m));
  return out;
}

}  // namespace

std::vector<std::vector<float>> emulate_scale_rows(
    const std::vector<ClipParam>& params, Dtype dtype,
    const std::vector<muon::optim::RowScaling>& scalings) {
  switch (dtype) {
    case Dtype::f32:
      return emulate_scale_rows_typed<float>(params, scalings);
    case Dtype::f16:
      return emulate_scale_rows_typed<__half>(params, scalings);
    case Dtype::bf16:
      break;
  }
  return emulate_scale_rows_typed<__nv_bfloat16>(params, scalings);
}

std::string qk_clip_while_capturing(bool* untouched) {
  Stream st;
  std::vector<float> host(8 * 6);
  for (std::size_t i = 0; i < host.size(); ++i) host[i] = 0.125f * float(i % 11) - 0.5f;
  mc::DeviceMatrix<float> w(8, 6, st.s);
  w.upload(host.data(), st.s);
  mc::Optimizer<float> opt;
  opt.add_param("attn.qk", w.data(), nullptr, {8, 6});
  muon::QkClipHeads h;
  h.query = h.key = "attn.qk";
  h.heads = 2;
  h.head_dim = 2;
  h.key_row = 4;
  std::string error;
  MUON_CUDA_CHECK(cudaStreamSynchronize(st.s));
  MUON_CUDA_CHECK(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal));
  try {
    opt.qk_clip(h, {400.0, 50.0}, muon::QkClipOptions(), st.s);
  } catch (const muon::Error& e) {
    error = e.what();
  }
  cudaGraph_t g = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(st.s, &g);
  if (g) (void)cudaGraphDestroy(g);
  const std::vector<float> after = mc::detail::download_now(w.data(), host.size(), st.s);
  *untouched = ended == cudaSuccess && after == host;
  return error;
}

DeviceRouting device_routing(const std::vector<OptParam>& params, const muon::MuonGroupOptions& o,
                             const muon::RoutingRules* rules) {
  mc::Optimizer<float> opt(o);
  opt.add_group(o);
  if (rules) opt.set_routing_rules(*rules);
  float* fake = reinterpret_cast<float*>(std::uintptr_t(4096));  // never dereferenced
  for (const auto& q : params) opt.add_param(q.name, fake, fake, shape_of(q), options_of(q));
  DeviceRouting r;
  r.report = opt.routing();
  for (const auto& q : params) r.routes.push_back(opt.route(q.name));
  r.size = opt.param_count();
  try {
    opt.route("missin");
  } catch (const muon::Error& e) {
    r.missing_error = e.what();
  }
  return r;
}

DeviceLoad device_load(const std::string& bytes, const std::vector<OptParam>& params) {
  mc::Optimizer<float> opt(muon::MuonGroupOptions().with_lr(0.3));
  // Device pointers are not touched unless the load succeeds, which needs a
  // device; then they must be real allocations.
  const bool device = mc::device_available();
  std::vector<mc::DeviceMatrix<float>> mem;
  float* fake = reinterpret_cast<float*>(std::uintptr_t(4096));
  for (const auto& q : params) {
    float* ptr = fake;
    if (device) {
      mem.emplace_back(static_cast<std::int64_t>(q.value.size()), 2, nullptr);
      ptr = mem.back().data();
    }
    opt.add_param(q.name, ptr, ptr + (device ? q.value.size() : 0), shape_of(q), options_of(q));
  }
  DeviceLoad r;
  try {
    std::stringstream in(bytes);
    opt.load(in, nullptr);
  } catch (const muon::Error& e) {
    r.error = e.what();
    r.unchanged = opt.muon_options().lr == 0.3 && opt.step_count() == 0;
  }
  r.lr = opt.muon_options().lr;
  r.steps = opt.step_count();
  if (r.error.empty()) {
    std::stringstream out;
    opt.save(out, nullptr);
    r.resaved = out.str();
  }
  if (device) MUON_CUDA_CHECK(cudaDeviceSynchronize());
  return r;
}

}  // namespace muon_cuda_test
