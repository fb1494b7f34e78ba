// SPDX-License-Identifier: MIT
#pragma once
// Host-only interface to the CUDA backend for the Catch2 tests: the Catch2
// TU is compiled by the host compiler, harness.cu by nvcc. No CUDA headers.

#include <cstdint>
#include <string>
#include <vector>

#include <muon/newton_schulz.hpp>
#include <muon/policy.hpp>

namespace muon_cuda_test {

/// True when a CUDA device is usable (cudaGetDeviceCount succeeds, > 0).
bool device_present();

enum class Dtype { bf16, f16, f32 };

/// How the device orthogonalization is invoked.
struct RunMode {
  bool graph = false;       ///< capture one run in a CUDA graph and replay it
  std::int64_t ld_pad = 0;  ///< extra rows of leading dimension on in/out
  std::int64_t tile = 0;    ///< forced tile edge (0: automatic)
  bool reuse = false;       ///< run twice with the same workspace
};

/// Orthogonalizes `batch` column-major rows x cols matrices (host, double,
/// dense, matrix k at k*rows*cols) on the device in `dtype`; returns the
/// result as doubles in the same layout. Throws muon::Error like the device API.
std::vector<double> orthogonalize(const std::vector<double>& in, std::int64_t rows,
                                  std::int64_t cols, std::int64_t batch, Dtype dtype,
                                  const muon::NewtonSchulzOptions& options, RunMode mode = {});

/// Runs the convenience muon::cuda::orthogonalize on one f32 matrix whose
/// output buffer starts as `out_init`; returns the output buffer afterwards
/// (also when it throws: `out_after` receives it before rethrowing).
void orthogonalize_checked(const std::vector<float>& in, std::int64_t rows, std::int64_t cols,
                           std::vector<float>& out_after, float out_init);

/// Workspace::check() on a problem with one field broken: "rows", "batch",
/// "in_null", "out_shape", "ld", "stride", "steps", "tile".
std::string workspace_check(const std::string& broken);

/// Runs the tiled kernels' phase functions (copy_transpose, symmetrize) on
/// the host, block by block, against plain loops. "" when all agree, else
/// the first disagreement. No device needed.
std::string emulate_tiled_kernels();

/// muon::cuda::check() on a failing CUDA / cuBLAS status: the message.
std::string cuda_error_message();
std::string cublas_error_message();

/// A device optimizer run: parameters (host, float), registered in order.
struct OptParam {
  std::string name;
  std::int64_t rows = 0, cols = 0;
  bool row_major = false;
  bool adamw = false;        ///< add_adamw instead of add_muon
  std::vector<float> value;  ///< rows*cols, in the memory order of `row_major`
};

struct OptRun {
  int steps = 3;
  bool graph = false;  ///< capture the step once, replay it
  bool ns_f32 = true;  ///< NS in float (else bf16)
  double lr = 0.02, weight_decay = 0.1, momentum = 0.95;
  bool nesterov = true;
  bool sum_momentum = false;
  double adam_lr = 1e-3;
  /// Gradient of parameter p at step s (1-based): grads[s-1][p].
  std::vector<std::vector<std::vector<float>>> grads;
  /// Save after `save_after` steps into a new optimizer (0: never) and go on
  /// with the loaded one.
  int save_after = 0;
};

/// Returns the parameters after the run.
std::vector<std::vector<float>> run_optimizer(std::vector<OptParam> params, const OptRun& run);

/// Optimizer error paths without a device: the message of the Error thrown
/// by "duplicate", "null", "shape", "bad_magic", "options".
std::string optimizer_error(const std::string& what);

// ---- host-side logic of the device optimizer (no device needed) -------------
//
// Constructing a muon::cuda::Optimizer, add*(), the routing queries and the
// option setters make no CUDA call (memory is allocated at the first
// step/capture/save/load), so these run and are checked everywhere.

/// One registration with the device optimizer.
struct DeviceParamSpec {
  std::string name;
  std::int64_t rows = 0, cols = 0;
  /// automatic: add(); muon: add_muon(); adamw: add_adamw(name, rows * cols).
  muon::Route how = muon::Route::automatic;
  bool row_major = false;
};

/// What muon::cuda::Optimizer<float> reports after registering the specs.
struct DeviceRouting {
  muon::RoutingReport report;       ///< routing()
  std::vector<muon::Route> routes;  ///< route(name) of each spec, in order
  std::size_t size = 0;             ///< size()
  std::string missing_error;        ///< the message of route("missing")
};

/// Registers `params` in order with OptimizerOptions::adjust_lr = `rule`
/// and, when given, set_routing_rules(*rules) first. Throws muon::Error as
/// the optimizer does.
DeviceRouting device_routing(const std::vector<DeviceParamSpec>& params,
                             muon::LrAdjust rule = muon::LrAdjust::original,
                             const muon::RoutingRules* rules = nullptr);

/// The message of the muon::Error the optimizer's constructor throws when
/// option `field` is out of range ("lr", "weight_decay", "momentum",
/// "momentum_kind", "adjust_lr", "ns_steps", "adam_lr", "adam_beta1",
/// "adam_beta2", "adam_eps", "adam_weight_decay"); "" when none is thrown.
std::string device_options_error(const std::string& field);

/// The message of the muon::Error set_<field>(value) throws ("lr",
/// "adam_lr", "weight_decay", "momentum"), "" when none. Throws
/// std::logic_error when a throwing setter changed options() anyway, or a
/// succeeding one did not store the value.
std::string device_setter_error(const std::string& field, double value);

/// Loads `bytes` into a muon::cuda::Optimizer<float> holding "w" (add(),
/// 4 x 3: Muon) and "b" (add(), 4 x 1: AdamW) with lr 0.02, on the legacy
/// stream.
struct DeviceLoad {
  std::string error;       ///< the muon::Error's message, "" when it loaded
  bool unchanged = false;  ///< after an error: options, size, routes and step count as before
  double lr = 0;           ///< options().lr afterwards
  long long steps = 0;     ///< step_count() afterwards
  std::string resaved;     ///< after a successful load: save() of the result
};
DeviceLoad device_load(const std::string& bytes);

}  // namespace muon_cuda_test
