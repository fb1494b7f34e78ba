// SPDX-License-Identifier: MIT
// The nvcc half of the CUDA tests: wraps muon/cuda.hpp behind harness.hpp.
#include "harness.hpp"

#include <muon/cuda.hpp>

#include <cmath>
#include <sstream>
#include <stdexcept>

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
  mc::Orthogonalizer<T> ortho(rows, cols, batch, st.s, mc::default_allocator(), mode.tile);
  const mc::BatchedMatrixView<const T> vin(din.data(), rows, cols, ld, stride, batch);
  const mc::BatchedMatrixView<T> vout(dout.data(), rows, cols, ld, stride, batch);
  if (mode.graph) {
    cudaGraph_t g = nullptr;
    cudaGraphExec_t e = nullptr;
    ortho.workspace().bind(st.s);
    MUON_CUDA_CHECK(cudaStreamBeginCapture(st.s, cudaStreamCaptureModeThreadLocal));
    ortho(vin, vout, options, st.s);
    MUON_CUDA_CHECK(cudaStreamEndCapture(st.s, &g));
    MUON_CUDA_CHECK(cudaGraphInstantiate(&e, g, 0));
    MUON_CUDA_CHECK(cudaGraphLaunch(e, st.s));
    MUON_CUDA_CHECK(cudaGraphLaunch(e, st.s));  // replays are repeatable
    MUON_CUDA_CHECK(cudaStreamSynchronize(st.s));
    MUON_CUDA_CHECK(cudaGraphExecDestroy(e));
    MUON_CUDA_CHECK(cudaGraphDestroy(g));
  } else {
    ortho(vin, vout, options, st.s);
    if (mode.reuse) ortho(vin, vout, options, st.s);
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
                           std::vector<float>& out_after, float out_init) {
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
    mc::orthogonalize<float>(mc::MatrixView<const float>(din.view()), dout.view(),
                             muon::NewtonSchulzOptions(), st.s);
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
    if (run.save_after == s + 1) {
      std::stringstream buf;
      opt->save(buf, st.s);
      opt = make_optimizer<C>(params, run, &p, &g);
      opt->load(buf, st.s);
      captured = false;
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
    mc::Optimizer<float> opt(o);
    float* fake = reinterpret_cast<float*>(std::uintptr_t(4096));  // never dereferenced
    opt.add_param("w", fake, fake, {4, 4});
    if (what == "duplicate") opt.add_param("w", fake, fake, {4, 4});
    if (what == "null") opt.add_param("v", nullptr, fake, {4, 4});
    if (what == "shape") opt.add_param("v", fake, fake, {0, 4});
    if (what == "dims") opt.add_param("v", fake, fake, {1, 2, 3, 4, 5});
    if (what == "set_gram") opt.set_option("ns_method", "gram");
    if (what == "bad_magic") {
      std::stringstream s("NOTMUON!");
      opt.load(s, nullptr);
    }
  } catch (const muon::Error& e) {
    return e.what();
  }
  return {};
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
