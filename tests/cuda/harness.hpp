// SPDX-License-Identifier: MIT
#pragma once
// Host-only interface to the CUDA backend for the Catch2 tests: the Catch2
// TU is compiled by the host compiler, harness.cu by nvcc. No CUDA headers.

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <muon/newton_schulz.hpp>
#include <muon/optim/core.hpp>
#include <muon/optim/qk_clip.hpp>

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
  /// Pass the input as dense float through Orthogonalizer::run_from_float
  /// (the normalizing load the optimizer uses; ld_pad then applies to out only).
  bool from_float = false;
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
                           std::vector<float>& out_after, float out_init,
                           const muon::NewtonSchulzOptions& options = {});

/// Workspace::check() on a problem with one field broken: "rows", "batch",
/// "in_null", "out_shape", "ld", "stride", "steps", "tile", "gram",
/// "in_float_sparse", "aol_gram" (Turbo-Muon's options in the Gram form);
/// "aol" (Turbo-Muon's options, accepted) breaks nothing.
std::string workspace_check(const std::string& broken);

/// Runs the tiled kernels' phase functions (copy_transpose, symmetrize) on
/// the host, block by block, against plain loops. "" when all agree, else
/// the first disagreement. No device needed.
std::string emulate_tiled_kernels();

/// Runs the per-thread functions of the Muon variants' kernels (NorMuon's
/// row and column sums, factors and commit; AdaMuon's moment, ratio and
/// commit) on the host, thread by thread with the kernels' launch shapes and
/// reduction trees, on one block of O, against plain loops that follow the
/// CPU optimizer's formulas. "" when all agree, else the first disagreement.
/// No device needed.
std::string emulate_variant_kernels();

/// Runs the per-thread functions of the step's check and commit kernels
/// (muon_check, momentum_commit, muon_commit, adamw_check, adamw_commit),
/// decide's rule and finalize_scale's value on the host, thread by thread
/// with the kernels' launch shapes (and a grid-stride loop that comes
/// round), with float, half and bfloat16 parameters, against the formulas
/// written out in float (torch.optim.Muon's momentum forms, Nesterov, the
/// l2 form, AdaMuon's sign input, cautious decay; torch.optim.AdamW; the
/// normalization 1 / (d ||X|| + eps) or 1 / max(d ||X||, eps)): values to
/// the bit; the flags of a NaN/Inf gradient, an overflowing momentum or
/// moment, a parameter overflowing its type; the largest |p| without the
/// entries of a non-finite gradient; the update bound and the verdict.
/// "" when all agree, else the first disagreement. No device needed.
std::string emulate_step_kernels();

/// Runs the AOL kernels' per-thread functions (aol_row_factors' shares,
/// lane sums and factors, aol_scale's grid-stride entries) on the host with
/// the kernels' launch shapes, in float, half and bfloat16, on batches of
/// A = X X^T (m across the 32 row lanes and 8 column lanes; a zero row, a
/// zero matrix, a NaN and an Inf entry), against plain loops in double that
/// follow the definition: s_i = (sum_j |A_ij|)^(-1/2), 0 for a zero row,
/// X <- diag(s) X, A <- diag(s) A diag(s) (staying symmetric, bit for bit,
/// and equal to X X^T of the new X up to rounding); the non-finite flag set
/// for the matrices with a NaN/Inf row sum only. "" when all agree, else
/// the first disagreement. No device needed.
std::string emulate_aol_kernels();

/// muon::cuda::check() on a failing CUDA / cuBLAS status: the message.
std::string cuda_error_message();
std::string cublas_error_message();

/// One qk_clip request: heads, maxima (host), options.
struct ClipCall {
  muon::QkClipHeads heads;
  std::vector<double> maxima;
  muon::QkClipOptions options;
};

/// A device optimizer parameter (host, float), registered in order with
/// add_param(name, p, g, shape, {route, group, split}).
struct OptParam {
  std::string name;
  std::vector<std::int64_t> shape;  ///< up to 4 sizes, row-major
  bool col_major = false;           ///< 2-D column-major
  muon::Route route = muon::Route::automatic;
  std::size_t group = 0;
  std::vector<std::ptrdiff_t> split;
  std::vector<float> value;  ///< the tensor in memory order
};

struct OptRun {
  int steps = 3;
  bool graph = false;  ///< capture the step once, replay it
  bool ns_f32 = true;  ///< NS in float (else bf16)
  muon::MuonGroupOptions muon;
  muon::AdamWOptions adamw;
  std::size_t groups = 1;  ///< groups 1.. get the same options
  muon::NonFinitePolicy policy = muon::NonFinitePolicy::raise;
  /// Gradient of parameter p at step s (1-based): grads[s-1][p].
  std::vector<std::vector<std::vector<float>>> grads;
  /// Save after `save_after` steps into a new optimizer (0: never) and go on
  /// with the loaded one.
  int save_after = 0;
  /// A checkpoint (of any backend) to load before the first step.
  std::string load;
  /// After `switch_after` steps (0: never) every group's Muon options become
  /// `switch_to`, through set_muon_options, or, when `switch_by_key`,
  /// through set_option("variant", name of switch_to.variant) (switch_to
  /// must then differ from `muon` in the variant only). A graph run
  /// captures again.
  int switch_after = 0;
  muon::MuonGroupOptions switch_to;
  bool switch_by_key = false;
  /// After `clip_after` steps (0: never; after that step's report()) each
  /// of `clips` is made by qk_clip on the step's stream. A graph run keeps
  /// its graph: the next replay reads the clipped weights.
  int clip_after = 0;
  std::vector<ClipCall> clips;
};

/// What report() said after one step.
struct StepOutcome {
  std::size_t updated = 0;
  std::vector<std::pair<std::string, muon::SkipReason>> skipped;
  std::string error;  ///< report()'s muon::Error, "" when the step was not refused
};

struct OptResult {
  std::vector<std::vector<float>> params;  ///< after the run
  std::vector<StepOutcome> steps;
  std::int64_t step_count = 0;
  std::string saved;  ///< save() at the end
};

/// Runs the device optimizer (report() after every step). Needs a device.
OptResult run_optimizer(const std::vector<OptParam>& params, const OptRun& run);

/// The message of the muon::Error thrown by "duplicate", "null", "shape",
/// "dims", "options", "gram", "set_gram", "bad_magic", "variant_name" (an
/// unknown variant by key), "variant_options" (a bad normuon_beta2 through
/// set_muon_options), "set_normalization" (an unknown ns_normalization);
/// "" for none. "aol" (Turbo-Muon's options through the constructor,
/// set_option("ns_normalization", ...) and set_muon_options) throws nothing. "variant" (a change of
/// variant by key and by set_muon_options before the first step: no CUDA call) throws nothing.
std::string optimizer_error(const std::string& what);

/// Captures a step of a muon::cuda::Optimizer<float> (one Muon parameter),
/// replays it, changes the variant to NorMuon and replays again: the
/// error of that replay ("" if none). Then captures again and replays; a
/// failure there is returned prefixed with "recapture: ". Needs a device.
std::string replay_after_variant_change();

// ---- QK-Clip ------------------------------------------------------------------

/// A 2-D parameter of the QK-Clip tests: out x in, its values in memory
/// order (row-major, or column-major when col_major).
struct ClipParam {
  std::string name;
  std::int64_t out = 0, in = 0;
  bool col_major = false;
  std::vector<float> value;
};

/// What qk_clip did: the parameters afterwards (also after an error), read
/// back as float; the report; the muon::Error's message ("" when none).
struct ClipOutcome {
  std::vector<std::vector<float>> params;
  muon::QkClipReport report;
  std::string error;
};

/// Registers `params` (values rounded to `dtype`; no gradients) in a
/// muon::cuda::Optimizer of that parameter scalar and calls qk_clip with
/// the host maxima on a created stream. Needs a device.
ClipOutcome device_qk_clip(const std::vector<ClipParam>& params, Dtype dtype, const ClipCall& call);

/// The same on a muon::cuda::Optimizer<float> whose parameters sit at fake
/// device addresses, for requests that plan no scaling (every maximum at or
/// below tau) or fail the host checks: neither makes a CUDA call. A request
/// that would launch is not made (error "would launch"). `params` of the
/// outcome stay empty (there is no memory behind the addresses). No device
/// needed.
ClipOutcome host_qk_clip(const std::vector<ClipParam>& params, const ClipCall& call);

/// The scale_rows kernel's per-thread function run on the host over the
/// launches qk_clip makes for `scalings` (kRowScalesPerLaunch to a launch,
/// each launch's grid thread by thread), with the values of `params`
/// (rounded to `dtype`) as the memory; `scalings` index `params`. Returns
/// the parameters afterwards, as float. No device needed.
std::vector<std::vector<float>> emulate_scale_rows(
    const std::vector<ClipParam>& params, Dtype dtype,
    const std::vector<muon::optim::RowScaling>& scalings);

/// qk_clip of a clipping request on a stream that is capturing a graph:
/// its error ("" if none); `untouched`: the weights are as before
/// afterwards (and the capture ended cleanly). Needs a device.
std::string qk_clip_while_capturing(bool* untouched);

// ---- host-side logic of the device optimizer (no device needed) -------------
//
// Constructing a muon::cuda::Optimizer, add_param, the routing queries and
// the option setters make no CUDA call (memory is allocated at the first
// step/capture/save/load), so these run and are checked everywhere.

struct DeviceRouting {
  muon::RoutingReport report;       ///< routing()
  std::vector<muon::Route> routes;  ///< route(name) of each parameter, in order
  std::size_t size = 0;             ///< param_count()
  std::string missing_error;        ///< the message of route("missin")
};

/// Registers `params` in a muon::cuda::Optimizer<float> with two groups of
/// options `o` (and, when given, `rules`). Throws muon::Error as it does.
DeviceRouting device_routing(const std::vector<OptParam>& params, const muon::MuonGroupOptions& o,
                             const muon::RoutingRules* rules = nullptr);

/// Loads `bytes` into a muon::cuda::Optimizer<float> (Muon lr 0.3) holding
/// `params`, on the legacy stream.
struct DeviceLoad {
  std::string error;       ///< the muon::Error's message, "" when it loaded
  bool unchanged = false;  ///< after an error: lr and step count as before
  double lr = 0;           ///< muon_options().lr afterwards
  long long steps = 0;     ///< step_count() afterwards
  std::string resaved;     ///< after a successful load: save() of the result
};
DeviceLoad device_load(const std::string& bytes, const std::vector<OptParam>& params);

}  // namespace muon_cuda_test
