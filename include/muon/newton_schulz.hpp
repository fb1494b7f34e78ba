// SPDX-License-Identifier: MIT
#pragma once
/// \file newton_schulz.hpp
/// \brief THE Newton–Schulz iteration, written once over a backend.
///
/// For a wide X (rows <= cols; callers transpose tall inputs so the Gram
/// matrix is the smaller one):
///
///     X <- X / (d ||X||_F + eps)        (or X / max(d ||X||_F, eps))
///     for k in 0 .. steps-1:
///         A = X X^T                    (symmetric)
///         B = b_k A + c_k A^2          (symmetric)
///         X = a_k X + B X
///
/// Each step maps every singular value s of X to a_k s + b_k s^3 + c_k s^5
/// and keeps the singular vectors. The backend supplies the products on its
/// own buffers; no backend carries a copy of this loop.
///
/// Backend concept (`be` below), all operating on buffers the backend owns:
///   be.normalize(divisor, eps, EpsMode)   X <- X / denominator(||X||_F)
///   be.normalize_aol()                    X <- diag(s) X (NsNormalization::aol),
///                                         leaving A = X X^T of the new X
///                                         (optional: backends without it
///                                         refuse the option)
///   be.gram()                             A <- X X^T
///   be.symmetric_polynomial(b, c)         B <- b A + c A^2
///   be.apply_polynomial(a)                X <- a X + B X

#include <type_traits>
#include <utility>

#include "error.hpp"
#include "ns_options.hpp"

namespace muon {

namespace detail {

template <class B, class = void>
struct has_aol_normalization : std::false_type {};
template <class B>
struct has_aol_normalization<B, std::void_t<decltype(std::declval<B&>().normalize_aol())>>
    : std::true_type {};

/// Normalizes the backend's X as options.normalization asks; true when the
/// backend's A then holds X X^T of the normalized X (AOL computes it anyway:
/// the first step reuses it).
template <class Backend>
bool normalize(Backend& be, const NewtonSchulzOptions& opt) {
  if (opt.normalization == NsNormalization::aol) {
    if constexpr (has_aol_normalization<Backend>::value) {
      be.normalize_aol();
      return true;
    } else {
      fail("options.normalization", "aol is not supported by this backend");
    }
  }
  be.normalize(opt.divisor(), opt.eps, opt.eps_mode);
  return false;
}

/// The standard iteration on the backend's current X (already loaded, wide).
template <class Backend>
void standard_newton_schulz_iterate(Backend& be, const NewtonSchulzOptions& opt) {
  const bool gram_ready = normalize(be, opt);
  for (int k = 0; k < opt.steps; ++k) {
    const Coefficients& p = opt.schedule.at(static_cast<std::size_t>(k));
    if (!(k == 0 && gram_ready)) be.gram();  // A = X X^T
    be.symmetric_polynomial(p.b, p.c);       // B = b A + c A^2
    be.apply_polynomial(p.a);                // X = a X + B X
  }
}

/// Gram Newton–Schulz (Zhang, Amsel, Chen, Dao 2026). With R = X X^T and
/// W_k = a_k I + b_k R + c_k R^2, step k is X <- W_k X, so
///     R <- W_k R W_k = W_k^2 R,   Q <- W_k Q,   and finally X <- Q X:
/// only m x m products inside the loop, two m x n products outside. After
/// step kGramRestartAfter the accumulated Q is applied to X and R recomputed
/// from it (a restart), which bounds the drift of R from X X^T.
/// Backend primitives, beyond the standard ones:
///   be.gram_q_init(a)    Q = a I + Z          (Z = b R + c R^2, from symmetric_polynomial)
///   be.gram_q_update(a)  Q <- a Q + Z Q
///   be.gram_r_update(a)  R <- (a I + Z)^2 R   (kept symmetric; may overwrite Z)
///   be.gram_apply_q()    X <- Q X
inline constexpr int kGramRestartAfter = 2;

template <class Backend>
void gram_newton_schulz_iterate(Backend& be, const NewtonSchulzOptions& opt) {
  const bool gram_ready = normalize(be, opt);
  if (opt.steps == 0) return;
  if (!gram_ready) be.gram();  // R = X X^T
  bool q_is_identity = true;
  for (int k = 0; k < opt.steps; ++k) {
    const Coefficients& p = opt.schedule.at(static_cast<std::size_t>(k));
    be.symmetric_polynomial(p.b, p.c);  // Z = b R + c R^2
    if (q_is_identity)
      be.gram_q_init(p.a);  // Q = a I + Z
    else
      be.gram_q_update(p.a);  // Q <- (a I + Z) Q
    q_is_identity = false;
    if (k + 1 == opt.steps) break;
    if (k + 1 == kGramRestartAfter) {
      be.gram_apply_q();  // X <- Q X
      be.gram();          // R = X X^T, fresh
      q_is_identity = true;
    } else {
      be.gram_r_update(p.a);  // R <- (a I + Z)^2 R
    }
  }
  be.gram_apply_q();
}

template <class B, class = void>
struct has_gram_primitives : std::false_type {};
template <class B>
struct has_gram_primitives<B, std::void_t<decltype(std::declval<B&>().gram_apply_q()),
                                          decltype(std::declval<const B&>().aspect_ratio())>>
    : std::true_type {};

/// A backend may move the aspect ratio from which NsMethod::automatic picks
/// the Gram form (gram_aspect_threshold(); infinity: never).
template <class B, class = void>
struct has_gram_threshold : std::false_type {};
template <class B>
struct has_gram_threshold<B,
                          std::void_t<decltype(std::declval<const B&>().gram_aspect_threshold())>>
    : std::true_type {};

/// Runs the iteration on the backend's current X (already loaded, wide),
/// in the form options.method asks for (automatic: by the backend's aspect
/// ratio against kGramAspectThreshold or the backend's own threshold).
template <class Backend>
void newton_schulz_iterate(Backend& be, const NewtonSchulzOptions& opt) {
  if constexpr (has_gram_primitives<Backend>::value) {
    double threshold = kGramAspectThreshold;
    if constexpr (has_gram_threshold<Backend>::value) threshold = be.gram_aspect_threshold();
    const bool gram = opt.method == NsMethod::gram ||
                      (opt.method == NsMethod::automatic && be.aspect_ratio() >= threshold);
    if (gram) return gram_newton_schulz_iterate(be, opt);
  } else {
    // Backends without the Gram primitives refuse NsMethod::gram when they
    // validate their arguments, before anything runs; this is the backstop.
    if (opt.method == NsMethod::gram)
      fail("options.method", "NsMethod::gram is not supported by this backend");
  }
  standard_newton_schulz_iterate(be, opt);
}

}  // namespace detail
}  // namespace muon
