// SPDX-License-Identifier: MIT
#pragma once
/// \file lr_schedule.hpp
/// \brief Learning-rate schedules, momentum warmup and width transfer of Muon
/// hyperparameters.
///
/// The width-transfer recipe follows the muP-style transfer studied with Muon
/// in Essential AI's "Practical Efficiency of Muon for Pretraining"
/// (arXiv 2505.02222): tune at a small base width, then scale the learning
/// rate by sqrt(base_width / width) and lengthen the warmup for wider models.

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "error.hpp"
#include "ns_options.hpp"

namespace muon {

/// A multiplier of the base learning rate as a function of the 0-based step:
/// linear warmup from 1/warmup_steps to 1 ((step+1)/warmup_steps), then
/// (constant) 1, or a cosine / linear decay that reaches min_ratio at
/// total_steps and stays there after.
struct LrSchedule {
  enum class Kind { constant, warmup_cosine, warmup_linear };

  /// Shape after the warmup. Default constant.
  Kind kind = Kind::constant;
  /// Warmup length in steps; 0 disables it. Default 0. Must be >= 0.
  std::int64_t warmup_steps = 0;
  /// Step at which the decay reaches min_ratio (decaying kinds only; must be
  /// > warmup_steps there). Default 0.
  std::int64_t total_steps = 0;
  /// Final multiplier of the decaying kinds. Default 0. Must be in [0, 1].
  double min_ratio = 0.0;

  /// The multiplier at 0-based `step` (muon::Error naming "step" when < 0).
  double factor(std::int64_t step) const {
    validate();
    if (step < 0) detail::fail("step", "must be >= 0, got " + std::to_string(step));
    if (step < warmup_steps)
      return static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
    if (kind == Kind::constant) return 1.0;
    if (step >= total_steps) return min_ratio;
    const double progress =
        static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
    const double shape = kind == Kind::warmup_cosine
                             ? 0.5 * (1.0 + std::cos(3.14159265358979323846 * progress))
                             : 1.0 - progress;
    return min_ratio + (1.0 - min_ratio) * shape;
  }

  /// Throws muon::Error naming the field when an option is out of range.
  void validate() const {
    if (!(kind == Kind::constant || kind == Kind::warmup_cosine || kind == Kind::warmup_linear))
      detail::fail("kind", "is not an LrSchedule::Kind value");
    if (!(warmup_steps >= 0)) detail::fail("warmup_steps", "must be >= 0");
    if (kind != Kind::constant) {
      if (!(total_steps > warmup_steps)) detail::fail("total_steps", "must be > warmup_steps");
      if (!(std::isfinite(min_ratio) && min_ratio >= 0.0 && min_ratio <= 1.0))
        detail::fail("min_ratio", "must be in [0, 1]");
    }
  }

  /// 1 at every step.
  static LrSchedule constant() { return LrSchedule{}; }
  /// Linear warmup over `warmup` steps, cosine decay to min_ratio at `total`.
  static LrSchedule warmup_cosine(std::int64_t warmup, std::int64_t total, double min_ratio = 0.0) {
    LrSchedule s;
    s.kind = Kind::warmup_cosine;
    s.warmup_steps = warmup;
    s.total_steps = total;
    s.min_ratio = min_ratio;
    s.validate();
    return s;
  }
  /// Linear warmup over `warmup` steps, linear decay to min_ratio at `total`.
  static LrSchedule warmup_linear(std::int64_t warmup, std::int64_t total, double min_ratio = 0.0) {
    LrSchedule s = warmup_cosine(warmup, total, min_ratio);
    s.kind = Kind::warmup_linear;
    return s;
  }
};

/// Momentum warmup: mu rises linearly from `start` to `end` over `steps`
/// steps and stays at `end` after (the 0.85 -> 0.95 over 300 steps of the
/// modded-nanogpt speedruns; Moonlight/Kimi-style trainers warm it up
/// likewise). Note that a time-varying mu breaks the exact proportionality of
/// the ema and sum momentum buffers (see momentum.hpp).
struct MomentumWarmup {
  /// mu at step 0. Default 0.85. Must be in [0, 1).
  double start = 0.85;
  /// mu from step `steps` on. Default 0.95. Must be in [0, 1).
  double end = 0.95;
  /// Length of the ramp; 0 gives `end` from the start. Default 300. Must be >= 0.
  std::int64_t steps = 300;

  /// mu at 0-based `step` (muon::Error naming "step" when < 0).
  double at(std::int64_t step) const {
    validate();
    if (step < 0) detail::fail("step", "must be >= 0, got " + std::to_string(step));
    if (step >= steps) return end;
    const double fraction = static_cast<double>(step) / static_cast<double>(steps);
    return start + (end - start) * fraction;
  }

  /// Throws muon::Error naming the field when an option is out of range.
  void validate() const {
    if (!(std::isfinite(start) && start >= 0.0 && start < 1.0))
      detail::fail("start", "must be in [0, 1)");
    if (!(std::isfinite(end) && end >= 0.0 && end < 1.0)) detail::fail("end", "must be in [0, 1)");
    if (!(steps >= 0)) detail::fail("steps", "must be >= 0");
  }
};

/// The hyperparameters that width transfer touches or keeps.
struct WidthTransferConfig {
  double lr;                  ///< Muon learning rate
  std::int64_t warmup_steps;  ///< lr warmup length
  double momentum;            ///< mu
  int ns_steps;               ///< Newton–Schulz steps
  std::int64_t width;         ///< model width (d_model) these were tuned at
};

/// Transfers a configuration tuned at `base.width` to `width`:
/// lr * sqrt(base.width / width); warmup doubled when width > base.width
/// (kept otherwise); momentum and NS steps kept. Example: lr 0.02 tuned at
/// width 768 becomes 0.02 * sqrt(768/4096) = 0.00866 at width 4096.
/// Throws muon::Error naming the offending field ("width", "base.width",
/// "base.lr", "base.warmup_steps", "base.momentum", "base.ns_steps").
inline WidthTransferConfig scale_to_width(const WidthTransferConfig& base, std::int64_t width) {
  if (width < 1) detail::fail("width", "must be >= 1, got " + std::to_string(width));
  if (!(base.width >= 1)) detail::fail("base.width", "must be >= 1");
  if (!(std::isfinite(base.lr) && base.lr >= 0.0))
    detail::fail("base.lr", "must be finite and >= 0");
  if (!(base.warmup_steps >= 0 &&
        base.warmup_steps <= std::numeric_limits<std::int64_t>::max() / 2))
    detail::fail("base.warmup_steps", "must be >= 0 and small enough to double");
  if (!(std::isfinite(base.momentum) && base.momentum >= 0.0 && base.momentum < 1.0))
    detail::fail("base.momentum", "must be in [0, 1)");
  kNsStepsRange.check("base.ns_steps", base.ns_steps);
  WidthTransferConfig scaled = base;
  scaled.width = width;
  scaled.lr = base.lr * std::sqrt(static_cast<double>(base.width) / static_cast<double>(width));
  if (width > base.width) scaled.warmup_steps = 2 * base.warmup_steps;
  return scaled;
}

}  // namespace muon
