// SPDX-License-Identifier: MIT
#pragma once
/// \file distributed/agreement.hpp
/// \brief How ranks agree before anything moves: a rank that threw alone
/// would leave the others waiting in their next collective, and ranks that
/// differ in what they registered would exchange mismatched buffers (or
/// hang). Every function here is collective: every rank of the
/// communicator calls it, in the same order; each throws the same
/// muon::Error on every rank, or returns on every rank.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../optim/core.hpp"
#include "../optim/qk_clip.hpp"
#include "communicator.hpp"

namespace muon {
namespace dist {

/// FNV-1a over bytes: what ranks compare to agree that something is the
/// same everywhere.
struct Fingerprint {
  std::uint64_t h = 1469598103934665603ull;
  void bytes(const void* data, std::size_t n) {
    const unsigned char* b = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  }
  template <class V>
  void value(V v) {
    bytes(&v, sizeof v);
  }
  void text(const std::string& s) {
    value(std::uint64_t(s.size()));
    bytes(s.data(), s.size());
  }
  std::int64_t get() const { return std::int64_t(h & 0x7fffffffffffffffull); }
};

/// `text` as rank `root` has it, on every rank.
inline std::string broadcast_text(Communicator& comm, std::string text, int root) {
  std::int64_t n = std::int64_t(text.size());
  comm.broadcast(&n, 1, DType::i64, root);
  text.resize(std::size_t(n));
  if (n > 0) comm.broadcast(&text[0], std::size_t(n), DType::u8, root);
  return text;
}

/// The ranks (", "-separated) whose value differs from rank 0's:
/// value(r) for r in [1, size).
template <class ValueOf>
std::string ranks_differing(int size, ValueOf&& value) {
  std::string ranks;
  for (int r = 1; r < size; ++r)
    if (value(r) != value(0)) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
  return ranks;
}

/// Every rank passes its own `problem` ("field: message" of the error it
/// would raise; "" for none) and a fingerprint of what must be the same on
/// every rank. Throws on every rank the lowest failing rank's problem,
/// naming that rank; else, when a fingerprint differs from rank 0's,
/// `field`: "rank(s) ... <differs>".
inline void agree(Communicator& comm, const std::string& problem, std::int64_t fingerprint = 0,
                  const char* field = "", const char* differs = "") {
  const int P = comm.size();
  const std::int64_t mine[2] = {problem.empty() ? 0 : 1, fingerprint};
  std::vector<std::int64_t> all(2 * std::size_t(P));
  comm.all_gather(mine, all.data(), 2, DType::i64);
  for (int r = 0; r < P; ++r)
    if (all[2 * std::size_t(r)] != 0) {  // rank r's "field: message", with the rank
      const std::string text = broadcast_text(comm, problem, r);
      const std::size_t colon = std::min(text.find(": "), text.size());
      detail::fail(text.substr(0, colon), text.substr(std::min(colon + 2, text.size())) +
                                              " (on rank " + std::to_string(r) + ")");
    }
  const std::string ranks = ranks_differing(P, [&](int r) { return all[2 * std::size_t(r) + 1]; });
  if (!ranks.empty()) detail::fail(field, "rank(s) " + ranks + " " + differs);
}

/// What a collective QK-Clip call must pass alike on every rank.
inline std::int64_t fingerprint(const QkClipHeads& heads, std::size_t count,
                                const QkClipOptions& options) {
  Fingerprint f;
  f.text(heads.query);
  f.text(heads.key);
  for (std::int64_t v : {heads.heads, heads.head_dim, heads.query_row, heads.key_row}) f.value(v);
  f.value(std::uint64_t(count));
  f.value(options.tau);
  f.value(options.alpha);
  return f.get();
}

/// What ranks must have registered alike, one (what, value) line each.
using Lines = std::vector<std::pair<std::string, std::string>>;

/// A core's registration as lines, after `settings` (the facade's own, e.g.
/// the grad mode): the groups' options (every row of the option table, each
/// as its exact text: nothing a step reads is left out), then the
/// parameters (last, so that an extra or a missing one is named rather
/// than a count).
inline Lines registration(const optim::Core& core, Lines settings) {
  Lines lines = std::move(settings);
  lines.push_back({"groups", std::to_string(core.group_count())});
  for (std::size_t g = 0; g < core.group_count(); ++g) {
    const GroupOptions& o = core.group(g);
    const std::string group = "group " + std::to_string(g) + " option '";
    optim::for_each_option([&](auto row) {
      lines.push_back({group + decltype(row)::key + "'", optim::value_text(row, o)});
    });
  }
  for (std::size_t i = 0; i < core.size(); ++i) {
    const optim::ParamRecord& p = core.param(i);
    std::string v = "'" + p.name + "' (" + route_name(p.route) + ", group " +
                    std::to_string(p.group) + ", shape " + p.shape.str();
    if (p.blocks.size() > 1) {
      v += ", blocks";
      for (std::int64_t b : p.blocks) v += " " + std::to_string(b);
    }
    lines.push_back({"parameter " + std::to_string(i), v + ")"});
  }
  return lines;
}

/// Compares every rank's `mine` with rank 0's by a fingerprint (one
/// all-gather). Only when they differ do the lines move, to name the first
/// difference: muon::Error `caller` on every rank.
inline void refuse_differences(Communicator& comm, const Lines& mine, const char* caller) {
  Fingerprint f;
  for (const auto& [what, value] : mine) {
    f.text(what);
    f.text(value);
  }
  const int P = comm.size();
  std::vector<std::int64_t> all(static_cast<std::size_t>(P));
  const std::int64_t h = f.get();
  comm.all_gather(&h, all.data(), 1, DType::i64);
  const std::string differ = ranks_differing(P, [&](int r) { return all[std::size_t(r)]; });
  if (differ.empty()) return;
  const int first = std::stoi(differ);
  // Rank 0's lines to every rank (length-prefixed); the first differing
  // rank compares them with its own and tells the others what it found.
  std::string packed;
  if (comm.rank() == 0)
    for (const auto& [what, value] : mine)
      for (const std::string* t : {&what, &value}) packed += std::to_string(t->size()) + ":" + *t;
  packed = broadcast_text(comm, std::move(packed), 0);
  std::string found;
  if (comm.rank() == first) {
    Lines zero;
    for (std::size_t at = 0; at < packed.size();) {
      std::string t[2];
      for (std::string& x : t) {
        const std::size_t colon = packed.find(':', at);
        const std::size_t n = std::stoul(packed.substr(at, colon - at));
        x = packed.substr(colon + 1, n);
        at = colon + 1 + n;
      }
      zero.push_back({t[0], t[1]});
    }
    const std::string me = "rank " + std::to_string(first);
    for (std::size_t k = 0; k < std::max(zero.size(), mine.size()) && found.empty(); ++k) {
      const auto* a = k < zero.size() ? &zero[k] : nullptr;
      const auto* b = k < mine.size() ? &mine[k] : nullptr;
      if (a && b && *a == *b) continue;
      const bool other_what = a && b && a->first != b->first;
      found = (a ? a->first : b->first) + ": rank 0 has " + (a ? a->second : "none") + ", " + me +
              " has " + (b ? (other_what ? b->first + " " : "") + b->second : "none");
    }
  }
  found = broadcast_text(comm, std::move(found), first);
  detail::fail(caller, "rank(s) " + differ +
                           " registered other parameters or options than rank 0; the first "
                           "difference: " +
                           found +
                           " (names, shapes, order, routes, groups, splits, group options, "
                           "grad mode and window must be the same on every rank)");
}

/// What the ranks agree on at every step, in two all-gathers of a few
/// words each: before anything moves, the step's settings (non-finite
/// policy, lr schedule, momentum warmup) and which gradients each rank
/// holds; after the checks, their flags, ORed, so that the core decides the
/// same on every rank.
class StepAgreement {
 public:
  /// For `params` parameters on `ranks` ranks.
  void make(int ranks, std::size_t params) {
    n_ = params;
    header_.assign(kSettings + (params + 63) / 64, 0);
    headers_.assign(std::size_t(ranks) * header_.size(), 0);
    present_.assign(params, 0);
    packed_.assign((params + 15) / 16, 0);
    all_flags_.assign(std::size_t(ranks) * packed_.size(), 0);
  }

  /// Settings that differ, or (`reduced`: the gradients are the same
  /// everywhere) a gradient some ranks hold and others not, throw on every
  /// rank. has_grad(i): this rank holds parameter i's gradient.
  template <class HasGrad>
  void settings(Communicator& comm, const optim::Core& core, bool reduced, HasGrad&& has_grad) {
    const std::size_t K = header_.size();
    const std::optional<LrSchedule>& s = core.lr_schedule();
    const std::optional<MomentumWarmup>& w = core.momentum_warmup();
    Fingerprint schedule, warmup;
    schedule.value(s.has_value());
    if (s) {
      schedule.value(int(s->kind));
      for (std::int64_t v : {s->warmup_steps, s->total_steps}) schedule.value(v);
      schedule.value(s->min_ratio);
    }
    warmup.value(w.has_value());
    if (w) {
      for (double v : {w->start, w->end}) warmup.value(v);
      warmup.value(w->steps);
    }
    header_[0] = std::uint64_t(core.non_finite_policy());
    header_[1] = std::uint64_t(schedule.get());
    header_[2] = std::uint64_t(warmup.get());
    std::fill(header_.begin() + kSettings, header_.end(), 0);
    for (std::size_t i = 0; i < n_; ++i)
      if (has_grad(i)) header_[kSettings + i / 64] |= std::uint64_t(1) << (i % 64);
    comm.all_gather(header_.data(), headers_.data(), K, DType::i64);
    static const char* const names[kSettings] = {"non-finite policy", "lr schedule",
                                                 "momentum warmup"};
    for (std::size_t k = 0; k < kSettings; ++k) {
      const std::string ranks =
          ranks_differing(comm.size(), [&](int r) { return headers_[std::size_t(r) * K + k]; });
      if (!ranks.empty())
        detail::fail("step", std::string("the ") + names[k] + " of rank(s) " + ranks +
                                 " differs from rank 0's (set it alike on every rank; nothing " +
                                 "was updated)");
    }
    for (std::size_t word = 0; word + kSettings < K; ++word) {
      std::uint64_t any = 0, every = ~std::uint64_t(0);
      for (int r = 0; r < comm.size(); ++r) {
        any |= headers_[std::size_t(r) * K + kSettings + word];
        every &= headers_[std::size_t(r) * K + kSettings + word];
      }
      if (reduced && (any & ~every) != 0)
        for (std::size_t b = 0; b < 64; ++b)
          if (((any & ~every) >> b) & 1) refuse_partial_grad(comm, core, word * 64 + b);
      for (std::size_t b = 0; b < 64 && word * 64 + b < n_; ++b)
        present_[word * 64 + b] = char((any >> b) & 1);
    }
  }
  /// Parameter i is stepped this time: some rank holds its gradient (sum
  /// and mean count a missing one as zeros).
  bool present(std::size_t i) const { return present_[i] != 0; }

  /// Every rank's flags (4 bits per parameter, 16 to a word) to every
  /// rank, ORed into `flags`.
  void flags(Communicator& comm, std::vector<int>& flags) {
    static_assert(optim::step::kNonFiniteUpdate < 16, "the flags fit in 4 bits");
    std::fill(packed_.begin(), packed_.end(), 0);
    for (std::size_t i = 0; i < n_; ++i)
      packed_[i / 16] |= std::uint64_t(flags[i]) << (4 * (i % 16));
    comm.all_gather(packed_.data(), all_flags_.data(), packed_.size(), DType::i64);
    for (std::size_t i = 0; i < n_; ++i)
      for (int r = 0; r < comm.size(); ++r) flags[i] |= rank_flags(r, i);
  }
  /// The flags rank r found for parameter i at the last flags().
  int rank_flags(int r, std::size_t i) const {
    return int((all_flags_[std::size_t(r) * packed_.size() + i / 16] >> (4 * (i % 16))) & 15);
  }

 private:
  [[noreturn]] void refuse_partial_grad(Communicator& comm, const optim::Core& core,
                                        std::size_t i) const {
    const std::size_t K = header_.size();
    std::string with, without;
    for (int r = 0; r < comm.size(); ++r) {
      const bool has = ((headers_[std::size_t(r) * K + kSettings + i / 64] >> (i % 64)) & 1) != 0;
      std::string& list = has ? with : without;
      list += (list.empty() ? "" : ", ") + std::to_string(r);
    }
    detail::fail("step", "'" + core.param(i).name + "': rank(s) " + with +
                             " hold a gradient, rank(s) " + without +
                             " none; GradMode::reduced needs the same (all-reduced) gradients " +
                             "on every rank (nothing was updated)");
  }

  static constexpr std::size_t kSettings = 3;  // policy, schedule, warmup
  std::size_t n_ = 0;
  // This rank's header (settings, then one bit per parameter: its gradient
  // is here) and every rank's; the flags packed, this rank's and every rank's.
  std::vector<std::uint64_t> header_, headers_, packed_, all_flags_;
  std::vector<char> present_;
};

}  // namespace dist
}  // namespace muon
