// SPDX-License-Identifier: MIT
#pragma once
/// \file policy.hpp
/// \brief The rules both optimizers follow, written once and free of Eigen so
/// that the CUDA backend shares them: learning-rate adjustment by shape, the
/// momentum recurrence, and which parameters Muon receives.
///
/// The CPU optimizer (optimizer.hpp, through update.hpp and momentum.hpp) and
/// the device optimizer (backend/cuda/optimizer.hpp) both include this file,
/// so a parameter gets the same route, the same reason and the same lr scale
/// on either.

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iomanip>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "detail/check.hpp"
#include "error.hpp"

namespace muon {

// ---- learning rate by shape ---------------------------------------------------

/// How the learning rate is scaled by the matrix shape (A = out, B = in).
enum class LrAdjust {
  /// lr * sqrt(max(1, A/B)): K. Jordan's reference Muon, torch.optim.Muon's
  /// "original" (its default).
  original,
  /// lr * 0.2 * sqrt(max(A, B)): matches the update RMS of AdamW (Moonlight,
  /// "Muon is Scalable for LLM Training", arXiv 2502.16982).
  match_rms_adamw,
  /// lr * sqrt(A/B), unclamped: the spectral-norm scaling (Dion; torch's
  /// "spectral_unclamped"). Shrinks the lr of wide matrices.
  spectral,
  /// lr unchanged.
  none
};

/// True for the four named LrAdjust values (false for a value cast from an
/// out-of-range integer).
constexpr bool is_valid(LrAdjust rule) {
  return rule == LrAdjust::original || rule == LrAdjust::match_rms_adamw ||
         rule == LrAdjust::spectral || rule == LrAdjust::none;
}

namespace detail {

// The arguments every adjustment rule, named or user-supplied, must accept.
inline void check_adjust_args(double lr, std::ptrdiff_t out_dim, std::ptrdiff_t in_dim) {
  check_arg(std::isfinite(lr), "lr", "must be finite");
  if (out_dim < 1) fail_arg("out_dim", "must be >= 1, got " + std::to_string(out_dim));
  if (in_dim < 1) fail_arg("in_dim", "must be >= 1, got " + std::to_string(in_dim));
}

}  // namespace detail

/// The adjusted learning rate of an out_dim x in_dim matrix under `rule`.
/// Throws muon::Error naming "lr", "out_dim" or "in_dim" for a non-finite lr
/// or a dimension < 1.
///
/// The dimensions are std::ptrdiff_t, which is what Eigen::Index is unless
/// EIGEN_DEFAULT_DENSE_INDEX_TYPE says otherwise; std::int64_t (the CUDA
/// backend's sizes) and int convert to it. There is one overload per rule
/// type (this one and the user-function one in update.hpp), never one per
/// integer type, so no call is ambiguous.
inline double adjusted_lr(double lr, std::ptrdiff_t out_dim, std::ptrdiff_t in_dim, LrAdjust rule) {
  detail::check_adjust_args(lr, out_dim, in_dim);
  const double a = static_cast<double>(out_dim);
  const double b = static_cast<double>(in_dim);
  switch (rule) {
    case LrAdjust::original:
      return lr * std::sqrt(std::max(1.0, a / b));
    case LrAdjust::match_rms_adamw:
      return lr * 0.2 * std::sqrt(std::max(a, b));
    case LrAdjust::spectral:
      return lr * std::sqrt(a / b);
    case LrAdjust::none:
      return lr;
  }
  throw Error("rule: is not an LrAdjust value");
}

/// Parses torch.optim.Muon's `adjust_lr_fn` names: "original",
/// "match_rms_adamw", "spectral" or "spectral_unclamped", and "none".
/// Anything else throws muon::Error naming "adjust_lr_fn".
inline LrAdjust lr_adjust_from_name(const std::string& name) {
  if (name == "original") return LrAdjust::original;
  if (name == "match_rms_adamw") return LrAdjust::match_rms_adamw;
  if (name == "spectral" || name == "spectral_unclamped") return LrAdjust::spectral;
  if (name == "none") return LrAdjust::none;
  throw Error("adjust_lr_fn: unknown rule \"" + name +
              "\" (expected original, match_rms_adamw, spectral, spectral_unclamped or none)");
}

/// The canonical name of a rule (round-trips through lr_adjust_from_name).
inline const char* lr_adjust_name(LrAdjust rule) {
  switch (rule) {
    case LrAdjust::original:
      return "original";
    case LrAdjust::match_rms_adamw:
      return "match_rms_adamw";
    case LrAdjust::spectral:
      return "spectral";
    case LrAdjust::none:
      return "none";
  }
  throw Error("rule: is not an LrAdjust value");
}

// ---- momentum -------------------------------------------------------------------

/// Which momentum recurrence the buffer follows (see momentum.hpp for the
/// table of conventions and why the two agree up to scale under Newton–Schulz).
enum class MomentumKind {
  ema,  ///< m <- lerp(m, g, 1-mu) = mu m + (1-mu) g (torch.optim.Muon, K. Jordan)
  sum   ///< m <- mu m + g (Moonlight, Dion)
};

/// True for the two named MomentumKind values.
constexpr bool is_valid(MomentumKind kind) {
  return kind == MomentumKind::ema || kind == MomentumKind::sum;
}

// ---- routing ----------------------------------------------------------------------

/// Which update a parameter receives.
enum class Route : std::uint8_t {
  automatic = 0,  ///< decided by the routing rules (see RoutingRules)
  muon = 1,       ///< momentum + Newton–Schulz + shape-adjusted lr
  adamw = 2       ///< AdamW with the group's AdamW options
};

/// True for the three named Route values.
constexpr bool is_valid(Route r) {
  return r == Route::automatic || r == Route::muon || r == Route::adamw;
}

inline const char* route_name(Route r) {
  switch (r) {
    case Route::automatic:
      return "automatic";
    case Route::muon:
      return "muon";
    case Route::adamw:
      return "adamw";
  }
  return "invalid";
}

/// How Route::automatic decides.
struct RoutingRules {
  /// Case-insensitive substrings of a parameter name that send a parameter
  /// with >= 2 dimensions to AdamW: embeddings and output heads, which Muon's
  /// authors exclude. Default: embed, wte, wpe, tok_emb, lm_head,
  /// output_head, classifier.
  std::vector<std::string> adamw_name_patterns = {"embed",   "wte",         "wpe",       "tok_emb",
                                                  "lm_head", "output_head", "classifier"};
};

/// A route and the sentence a routing report prints for it.
struct RouteDecision {
  Route route = Route::automatic;
  std::string reason;
};

namespace detail {

// Byte-wise case folding (ASCII letters under the default "C" locale):
// parameter names are identifiers, not text to be collated.
inline std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace detail

/// The route of a parameter named `name` with `ndim` dimensions of sizes
/// shape[0..ndim), and why.
///
/// `requested` other than Route::automatic always wins. Otherwise: fewer than
/// 2 dimensions go to AdamW; a name containing one of
/// rules.adamw_name_patterns (case-insensitively) goes to AdamW; every other
/// 2-D, 3-D or 4-D tensor goes to Muon (a 3-D tensor is a batch of shape[0]
/// matrices, a 4-D filter the (out, in*kh*kw) matrix). Throws muon::Error
/// naming "route" for a value that is not a Route, or "shape" for ndim
/// outside [0, 4].
inline RouteDecision decide_route(std::string_view name, int ndim,
                                  const std::array<std::ptrdiff_t, 4>& shape, Route requested,
                                  const RoutingRules& rules) {
  detail::require(is_valid(requested), "route", "is not a Route value");
  detail::require(ndim >= 0 && ndim <= 4, "shape", "must have 0 to 4 dimensions");
  if (requested != Route::automatic) {
    RouteDecision d{requested, "explicit choice"};
    if (requested == Route::muon && ndim < 2) d.reason += " (a vector is a 1 x n matrix)";
    return d;
  }
  if (ndim < 2) return {Route::adamw, ndim == 1 ? "1-D (gain/bias)" : "scalar"};
  const std::string lname = detail::ascii_lower(name);
  for (const std::string& pattern : rules.adamw_name_patterns) {
    if (!pattern.empty() && lname.find(detail::ascii_lower(pattern)) != std::string::npos)
      return {Route::adamw, "name contains '" + pattern + "' (embedding/output head)"};
  }
  if (ndim == 2) return {Route::muon, "2-D matrix"};
  if (ndim == 3) return {Route::muon, "3-D: batch of " + std::to_string(shape[0]) + " matrices"};
  // The lr scale uses the flattened (out, in*kh*kw) shape Muon actually
  // orthogonalizes; some ports scale by kh/kw instead, which is wrong.
  return {Route::muon, "4-D filter as (out, in*kh*kw)"};
}

/// One row of a routing report.
struct RoutingEntry {
  std::string name;
  Route route = Route::automatic;
  std::string reason;
  std::string shape;        ///< the tensor's shape, e.g. "(64, 3, 3, 3)"
  std::ptrdiff_t rows = 0;  ///< rows of the matrix Muon sees (per block for splits/batches)
  std::ptrdiff_t cols = 0;  ///< columns of that matrix
  double lr_scale = 1.0;    ///< adjusted lr / lr for the group's current lr (first block)
  std::size_t group = 0;
};

/// The routing decisions of an optimizer, printable as a table.
struct RoutingReport {
  std::vector<RoutingEntry> entries;

  const RoutingEntry& at(const std::string& name) const {
    for (const auto& e : entries)
      if (e.name == name) return e;
    throw Error("name: no parameter named '" + name + "'");
  }

  std::string table() const {
    std::size_t w = 4;
    for (const auto& e : entries) w = std::max(w, e.name.size());
    std::ostringstream os;
    os << std::left << std::setw(static_cast<int>(w)) << "name"
       << "  " << std::setw(6) << "route"
       << "  " << std::setw(18) << "shape"
       << "  " << std::setw(14) << "matrix"
       << "  " << std::setw(8) << "lr scale"
       << "  reason\n";
    for (const auto& e : entries) {
      std::ostringstream matrix, scale;
      matrix << e.rows << "x" << e.cols;
      scale << std::setprecision(4) << e.lr_scale;
      os << std::setw(static_cast<int>(w)) << e.name << "  " << std::setw(6) << route_name(e.route)
         << "  " << std::setw(18) << e.shape << "  " << std::setw(14) << matrix.str() << "  "
         << std::setw(8) << scale.str() << "  " << e.reason << "\n";
    }
    return os.str();
  }
};

inline std::ostream& operator<<(std::ostream& os, const RoutingReport& r) {
  return os << r.table();
}

}  // namespace muon
