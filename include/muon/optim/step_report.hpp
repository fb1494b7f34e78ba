// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/step_report.hpp
/// \brief What a step did, and how every backend decides it: the flags a
/// check raises for a parameter, the reason and the status they mean, and
/// the error a refused step throws. One definition for the CPU loops, the
/// CUDA kernels (the flags are MUON_HOST_DEVICE), the distributed optimizer
/// and muon::torch. Free of Eigen and CUDA.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "../error.hpp"
#include "host_device.hpp"

namespace muon {

/// Overall outcome of a step.
enum class StepStatus {
  ok,       ///< every parameter was updated
  partial,  ///< some were skipped (no gradient, or non-finite under NonFinitePolicy::skip)
  nothing   ///< none was updated
};

/// Why a parameter was left alone by a step.
enum class SkipReason {
  no_grad,           ///< no gradient this step
  non_finite_grad,   ///< the gradient holds NaN or Inf
  non_finite_state,  ///< the new momentum or an AdamW moment would overflow
  non_finite_update  ///< the updated parameter would overflow its type
};

inline const char* skip_reason_name(SkipReason r) {
  switch (r) {
    case SkipReason::no_grad:
      return "no gradient";
    case SkipReason::non_finite_grad:
      return "gradient holds NaN or Inf";
    case SkipReason::non_finite_state:
      return "optimizer state would overflow";
    case SkipReason::non_finite_update:
      return "parameter would overflow";
  }
  return "unknown";
}

struct SkippedParam {
  std::string_view name;  ///< valid while the optimizer lives
  SkipReason reason;
};

/// What step() did. Returned by reference to a member reused every step, so
/// producing it allocates nothing; valid until the next step().
struct StepReport {
  StepStatus status = StepStatus::nothing;
  std::int64_t step = 0;    ///< the optimizer's step count after this step
  std::size_t updated = 0;  ///< parameters updated
  std::vector<SkippedParam> skipped;
};

namespace optim {
namespace step {

/// The checks' findings for one parameter in one step, as bits: a CPU loop
/// or a CUDA kernel ORs what each element shows into one word per
/// parameter (SkipReason order).
enum Flag : int {
  kNoGrad = 1,          ///< no gradient this step
  kNonFiniteGrad = 2,   ///< a gradient entry is NaN or Inf
  kNonFiniteState = 4,  ///< a new momentum / moment (or the Newton–Schulz input) overflows
  kNonFiniteUpdate = 8  ///< the updated parameter could overflow its type
};

/// True when the flags stop the parameter's update: anything but a missing
/// gradient refuses the whole step under NonFinitePolicy::raise, and skips
/// the parameter under skip.
MUON_HOST_DEVICE bool blocks_update(int flags) { return (flags & ~kNoGrad) != 0; }

/// The flags once the largest |p| of a Muon parameter is compared with the
/// largest |p| its update bound allows (Core::update_limit): the parameter
/// could overflow its type past it. A NaN limit or maximum flags too.
MUON_HOST_DEVICE int with_update_bound(int flags, double max_abs_p, double limit) {
  return (max_abs_p <= limit) ? flags : (flags | kNonFiniteUpdate);
}

/// The reason the flags report: the first in SkipReason order (a gradient
/// problem explains the state's and the update's).
inline SkipReason reason_of(int flags) {
  if (flags & kNoGrad) return SkipReason::no_grad;
  if (flags & kNonFiniteGrad) return SkipReason::non_finite_grad;
  if (flags & kNonFiniteState) return SkipReason::non_finite_state;
  return SkipReason::non_finite_update;
}

/// The status of a step that updated `updated` parameters and left out
/// `skipped` (a refused step updated none).
constexpr StepStatus status_of(std::size_t updated, std::size_t skipped) {
  return updated == 0 ? StepStatus::nothing : (skipped == 0 ? StepStatus::ok : StepStatus::partial);
}

/// The names of a parameter's storage types for the refusal message: its
/// optimizer buffers' ("float") and its own ("bfloat16").
struct StorageTypes {
  std::string_view buffer, param;
};

/// What a refused step throws (NonFinitePolicy::raise), for parameter
/// `name` whose checks raised `flags`: a muon::Error naming "grad" for a
/// non-finite gradient, else "step" with what would overflow. `muon` says
/// which state the parameter keeps; `buffer_type` and `param_type` name the
/// storage types ("float", "bfloat16", ...); `where` is added after the name
/// (a distributed step says which rank's gradient; empty otherwise).
[[noreturn]] inline void refuse(const std::string& name, int flags, bool muon,
                                std::string_view buffer_type, std::string_view param_type,
                                const std::string& where = std::string()) {
  const std::string who = "'" + name + "'" + where;
  if (flags & kNonFiniteGrad)
    detail::fail("grad", who + " contains NaN or Inf (nothing was updated)");
  const std::string what =
      (flags & kNonFiniteState)
          ? std::string(muon ? "its momentum" : "an AdamW moment") + " would overflow " +
                std::string(buffer_type)
          : "the updated parameter could overflow " + std::string(param_type) +
                (muon ? " (|p| + adjusted lr * the update's bound exceeds its range)" : "");
  detail::fail("step", who + ": " + what + " (nothing was updated)");
}

}  // namespace step
}  // namespace optim
}  // namespace muon
