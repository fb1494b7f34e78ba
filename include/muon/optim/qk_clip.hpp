// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/qk_clip.hpp
/// \brief QK-Clip (MuonClip, Kimi K2: arXiv 2507.20534, section 2.1): after
/// a step, the query and key projections of every attention head whose
/// largest logit S_max,h exceeded tau are scaled down so that the head's
/// logits would be at most tau again:
///
///     gamma_h = tau / S_max,h;   W_q,h <- gamma_h^alpha W_q,h;
///                                W_k,h <- gamma_h^(1 - alpha) W_k,h
///
/// (a logit q.k is bilinear in W_q and W_k, so it scales by gamma_h). The
/// optimizer cannot see logits: the caller measures S_max,h in its forward
/// pass and hands the maxima to the backend's qk_clip(). This header checks
/// them and plans the row scalings; every backend applies the plan to its
/// own memory. Free of Eigen and CUDA.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "../detail/checked_size.hpp"
#include "../error.hpp"
#include "core.hpp"

namespace muon {

/// The clip threshold and how the factor is shared between W_q and W_k.
struct QkClipOptions {
  /// Heads whose largest logit is above tau are clipped. Default 100 (the
  /// Kimi K2 report). Finite, > 0.
  double tau = 100.0;
  /// The query gets gamma^alpha, the key gamma^(1 - alpha). Default 0.5.
  /// In [0, 1].
  double alpha = 0.5;
};

/// Where the heads' query and key rows are: rows of the (out, in) matrices
/// of two registered 2-D parameters (or one, for a fused QKV projection:
/// give the same name twice and the offsets of the Q and K parts).
struct QkClipHeads {
  std::string query;           ///< the parameter holding W_q
  std::string key;             ///< the parameter holding W_k
  std::int64_t heads = 0;      ///< number of heads (>= 1)
  std::int64_t head_dim = 0;   ///< rows per head; 0: the query's rows / heads,
                               ///< which must divide evenly (two parameters only:
                               ///< a fused one must give it)
  std::int64_t query_row = 0;  ///< first row of head 0 in `query`
  std::int64_t key_row = 0;    ///< first row of head 0 in `key`
};

/// What a qk_clip call did.
struct QkClipReport {
  std::size_t clipped = 0;  ///< heads scaled down
  double min_gamma = 1.0;   ///< the smallest tau / S_max (1 when none was clipped)
};

namespace optim {

/// One scaling: rows [row, row + rows) of the (out, in) matrix of
/// parameter `param` multiplied by `factor`.
struct RowScaling {
  std::size_t param;
  std::int64_t row, rows;
  double factor;
};

struct QkClipPlan {
  std::vector<RowScaling> scalings;
  QkClipReport report;
};

/// Checks a qk_clip request against the core's parameters and returns the
/// scalings it asks for. Throws muon::Error naming the problem (an unknown
/// or non-2-D parameter, a negative head_dim, heads that do not divide the
/// query's rows when head_dim is left to be derived, rows out of range or
/// beyond any index, a count that is not `heads`, a null `max_logits`, a
/// NaN or infinite maximum naming its head, tau or alpha out of range);
/// nothing is planned then.
inline QkClipPlan plan_qk_clip(const Core& core, const QkClipHeads& h, const double* max_logits,
                               std::size_t count, const QkClipOptions& o) {
  if (!(std::isfinite(o.tau) && o.tau > 0)) detail::fail("qk_clip tau", "must be finite and > 0");
  if (!(o.alpha >= 0 && o.alpha <= 1)) detail::fail("qk_clip alpha", "must be in [0, 1]");
  if (h.heads < 1) detail::fail("qk_clip heads", "must be >= 1");
  if (count != static_cast<std::size_t>(h.heads))
    detail::fail("max_logits", "holds " + std::to_string(count) + " values for " +
                                   std::to_string(h.heads) + " heads");
  if (max_logits == nullptr)
    detail::fail("max_logits", "is a null pointer for " + std::to_string(count) + " values");
  if (h.head_dim < 0)
    detail::fail("qk_clip head_dim", "must be >= 1, or 0 for the query's rows / heads; got " +
                                         std::to_string(h.head_dim));
  const auto matrix = [&core](const std::string& name, const char* what) {
    const auto i = core.registry().find(name);
    if (!i) detail::fail(what, "'" + name + "' is not a registered parameter");
    if (core.param(*i).shape.ndim != 2)
      detail::fail(what, "'" + name + "' is not a 2-D (out, in) matrix");
    return *i;
  };
  const std::size_t q = matrix(h.query, "qk_clip query"), k = matrix(h.key, "qk_clip key");
  const std::int64_t q_out = core.param(q).shape.dims[0], k_out = core.param(k).shape.dims[0];
  // A fused QKV's rows are not heads * head_dim: guessing would clip the wrong rows.
  if (q == k && h.head_dim <= 0)
    detail::fail("qk_clip head_dim",
                 "must be given when query and key are one parameter ('" + h.query + "')");
  if (h.head_dim == 0 && q_out % h.heads != 0)
    detail::fail("qk_clip head_dim", "the " + std::to_string(q_out) + " rows of '" + h.query +
                                         "' are not a multiple of " + std::to_string(h.heads) +
                                         " heads: give head_dim");
  const std::int64_t d = h.head_dim > 0 ? h.head_dim : q_out / h.heads;
  // Every row index below stays within [0, out], so none can overflow.
  const std::optional<std::int64_t> span = detail::checked_mul(h.heads, d);
  if (!span)
    detail::fail("qk_clip head_dim", std::to_string(h.heads) + " heads of " + std::to_string(d) +
                                         " rows are more rows than any matrix has");
  const auto in_range = [&h, d, span](std::int64_t first, std::int64_t out,
                                      const std::string& name, const char* what) {
    if (first < 0 || first > out - *span)
      detail::fail(what, "rows from " + std::to_string(first) + " (" + std::to_string(h.heads) +
                             " heads of " + std::to_string(d) + ") do not fit the " +
                             std::to_string(out) + " rows of '" + name + "'");
  };
  in_range(h.query_row, q_out, h.query, "qk_clip query");
  in_range(h.key_row, k_out, h.key, "qk_clip key");
  if (q == k && h.query_row < h.key_row + *span && h.key_row < h.query_row + *span)
    detail::fail("qk_clip key", "rows of '" + h.key + "' overlap its query rows");
  for (std::size_t j = 0; j < count; ++j)
    if (!std::isfinite(max_logits[j]))
      detail::fail("max_logits[" + std::to_string(j) + "]",
                   "is not finite (head " + std::to_string(j) + ")");

  QkClipPlan plan;
  for (std::size_t j = 0; j < count; ++j) {
    if (!(max_logits[j] > o.tau)) continue;  // at or below tau: left alone
    const double gamma = o.tau / max_logits[j];
    const auto head = static_cast<std::int64_t>(j);
    plan.scalings.push_back({q, h.query_row + head * d, d, std::pow(gamma, o.alpha)});
    plan.scalings.push_back({k, h.key_row + head * d, d, std::pow(gamma, 1.0 - o.alpha)});
    ++plan.report.clipped;
    plan.report.min_gamma = std::min(plan.report.min_gamma, gamma);
  }
  return plan;
}

}  // namespace optim
}  // namespace muon
