// SPDX-License-Identifier: MIT
#pragma once
/// \file distributed/share.hpp
/// \brief dist::Share<T>: who is home for what in a distributed step, and
/// the two exchanges that move data between the homes and every rank.
///
/// Each Muon matrix — each block of a split, each entry of a 3-D batch — is
/// one job with one home rank, dealt out by Newton–Schulz cost (longest
/// first, optim/balance.hpp); each AdamW parameter is cut into one
/// contiguous range per rank. A rank's share is its jobs in job order, one
/// virtual concatenation; the exchanges move it in windows of bounded size:
///   - reduce_grads (GradMode sum/mean): every rank's gradient to the homes,
///     added there in rank order (then divided by P for the mean:
///     deterministic, the same at any window);
///   - gather_params: each home's new weights to every rank.

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "../optim/balance.hpp"
#include "../optim/core.hpp"
#include "../scalar.hpp"
#include "communicator.hpp"

namespace muon {
namespace dist {

/// What the gradients handed to the optimizer are. A required constructor
/// argument: no default could be right for every program, and a wrong mode
/// trains without any visible error (reduced on per-rank gradients steps
/// each home on its own rank's gradient, and the ranks still agree).
enum class GradMode {
  reduced,  ///< already all-reduced by the user: identical on every rank
  sum,      ///< this rank's own; the step uses their sum over ranks, in rank order
  mean      ///< this rank's own; the step uses that sum divided by size()
};

inline const char* grad_mode_name(GradMode m) {
  switch (m) {
    case GradMode::reduced:
      return "reduced";
    case GradMode::sum:
      return "sum";
    case GradMode::mean:
      return "mean";
  }
  return "invalid";
}

/// The DType the collectives move V as.
template <class V>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<V, std::int64_t>)
    return DType::i64;
  else if constexpr (std::is_same_v<V, char>)
    return DType::u8;
  else if constexpr (std::is_same_v<V, float>)
    return DType::f32;
  else if constexpr (std::is_same_v<V, double>)
    return DType::f64;
  else if constexpr (std::is_same_v<V, Eigen::bfloat16>)
    return DType::bf16;
  else
    return DType::f16;
}

/// Collective: rank 0 receives every rank's `mine`, in rank order; the
/// others get nothing.
template <class V>
std::vector<V> gather_to_root(Communicator& comm, const std::vector<V>& mine) {
  const std::size_t P = std::size_t(comm.size());
  std::int64_t n = std::int64_t(mine.size());
  std::vector<std::int64_t> sizes(P);
  comm.all_gather(&n, sizes.data(), 1, DType::i64);
  std::vector<std::size_t> send_counts(P, 0), send_displs(P, 0), recv_counts(P, 0),
      recv_displs(P, 0);
  send_counts[0] = mine.size();
  std::size_t total = 0;
  if (comm.rank() == 0)
    for (std::size_t r = 0; r < P; ++r) {
      recv_counts[r] = std::size_t(sizes[r]);
      recv_displs[r] = total;
      total += recv_counts[r];
    }
  std::vector<V> all(total);
  comm.all_to_allv(mine.data(), send_counts, send_displs, all.data(), recv_counts, recv_displs,
                   dtype_of<V>());
  return all;
}

/// A sharded state on its way to rank 0 (a checkpoint): each rank adds its
/// parts of the buffers, gather() moves them, and rank 0 reassembles each
/// whole buffer.
template <class B>
class GatheredState {
 public:
  /// This rank's part of buffer b of parameter i: `count` values from element `offset`.
  void add(std::size_t i, std::size_t b, std::int64_t offset, const B* values, std::int64_t count) {
    parts_.insert(parts_.end(), {std::int64_t(i), std::int64_t(b), offset, count});
    values_.insert(values_.end(), values, values + count);
  }
  /// Every job's parts of `engine`'s buffers (eigen::Engine: job k's
  /// buffer b is its slice of its parameter's).
  template <class Engine>
  void add_jobs(const optim::Core& core, const Engine& engine) {
    for (std::size_t k = 0; k < engine.job_count(); ++k) {
      const std::size_t i = engine.param_of(k);
      for (std::size_t b = 0; b < core.buffer_names(i).size(); ++b) {
        const auto at = engine.slice(core, k, b, core.variant(i));
        assert(engine.buffer(k, b).size() == at.count);
        add(i, b, at.offset, engine.buffer(k, b).data(), at.count);
      }
    }
  }
  /// Collective: every rank's parts to rank 0.
  void gather(Communicator& comm, std::size_t params) {
    parts_ = gather_to_root(comm, parts_);
    values_ = gather_to_root(comm, values_);
    parts_of_.assign(params, {});
    value_at_.assign(parts_.size() / 4, 0);
    for (std::size_t q = 0, v = 0; q < value_at_.size(); v += std::size_t(parts_[4 * q + 3]), ++q) {
      parts_of_[std::size_t(parts_[4 * q])].push_back(q);
      value_at_[q] = v;
    }
  }
  /// On rank 0, after gather(): buffer b of parameter i (`elements` long)
  /// from its parts. Valid until the next call.
  const std::vector<B>& whole(std::size_t i, std::size_t b, std::int64_t elements) {
    whole_.assign(std::size_t(elements), B(0));
    for (std::size_t q : parts_of_[i])
      if (std::size_t(parts_[4 * q + 1]) == b)
        std::copy_n(values_.begin() + std::ptrdiff_t(value_at_[q]), parts_[4 * q + 3],
                    whole_.begin() + parts_[4 * q + 2]);
    return whole_;
  }

 private:
  std::vector<std::int64_t> parts_;  // parameter, buffer, offset, count: per part
  std::vector<B> values_, whole_;
  std::vector<std::vector<std::size_t>> parts_of_;  // by parameter: its parts
  std::vector<std::size_t> value_at_;               // by part: its first value
};

template <class T>
class Share {
 public:
  using C = compute_t<T>;

  /// A unit of work with one home: block `block` of a Muon parameter (rows
  /// x cols, contiguous) or a range of an AdamW one (1 x count);
  /// `offset`/`count` in elements of the parameter.
  struct Job {
    std::size_t param = 0, block = 0;
    bool muon = false;
    std::int64_t offset = 0, count = 0, rows = 0, cols = 0;
    int home = 0;
  };

  /// The plan for `core`'s parameters on `ranks` ranks, seen from `rank`:
  /// `window` elements per round and rank (0: 2^22 / ranks), staging for the
  /// summed gradients when `summed` (GradMode sum or mean).
  void make(const optim::Core& core, int ranks, int rank, std::size_t window, bool summed) {
    const std::size_t P = std::size_t(ranks);
    rank_ = rank;
    jobs_.clear();
    std::vector<std::size_t> muon_jobs;
    std::vector<double> cost;
    first_job_.assign(core.size(), 0);
    for (std::size_t i = 0; i < core.size(); ++i) {
      const optim::ParamRecord& p = core.param(i);
      first_job_[i] = jobs_.size();
      if (p.muon()) {
        std::int64_t offset = 0;
        for (std::size_t b = 0; b < p.blocks.size(); ++b) {
          const std::int64_t rows = p.blocks[b];
          muon_jobs.push_back(jobs_.size());
          cost.push_back(optim::newton_schulz_cost(double(rows), double(p.cols)));
          jobs_.push_back({i, b, true, offset, rows * p.cols, rows, p.cols, 0});
          offset += rows * p.cols;
        }
      } else {  // one contiguous range per rank
        const std::int64_t n = p.numel();
        for (int r = 0; r < ranks; ++r) {
          const std::int64_t b = n * r / ranks, e = n * (r + 1) / ranks;
          if (b != e) jobs_.push_back({i, 0, false, b, e - b, 1, e - b, r});
        }
      }
    }
    first_job_.push_back(jobs_.size());
    const std::vector<int> home = optim::assign_longest_first(cost, ranks);
    for (std::size_t k = 0; k < muon_jobs.size(); ++k) jobs_[muon_jobs[k]].home = home[k];
    rank_jobs_.assign(P, {});
    shares_.assign(P, 0);
    at_.assign(jobs_.size(), 0);
    for (std::size_t j = 0; j < jobs_.size(); ++j) {
      const std::size_t h = std::size_t(jobs_[j].home);
      rank_jobs_[h].push_back(j);
      at_[j] = shares_[h];
      shares_[h] += std::size_t(jobs_[j].count);
    }
    const std::size_t largest = *std::max_element(shares_.begin(), shares_.end());
    window_ = window == 0 ? std::max<std::size_t>(1, (std::size_t(1) << 22) / P) : window;
    window_ = std::min(window_, std::max<std::size_t>(1, largest));
    summed_.assign(summed ? shares_[std::size_t(rank)] : 0, T(0));
    send_.assign(P * window_, T(0));
    recv_.assign(P * window_, T(0));
    counts_.assign(P, 0);
    recv_counts_.assign(P, 0);
    displs_.assign(P, 0);
    for (std::size_t r = 0; r < P; ++r) displs_[r] = r * window_;
    seen_.assign(P, 0);
    bad_.reserve(2 * jobs_.size());
  }

  const std::vector<Job>& jobs() const { return jobs_; }
  /// Parameter i's jobs: [first_job(i), first_job(i) + job_count(i)).
  std::size_t first_job(std::size_t i) const { return first_job_[i]; }
  std::size_t job_count(std::size_t i) const { return first_job_[i + 1] - first_job_[i]; }
  /// Rank r's jobs, in job order.
  const std::vector<std::size_t>& jobs_of(int r) const { return rank_jobs_[std::size_t(r)]; }
  /// Job j's summed gradient (this rank's jobs, after reduce_grads).
  T* summed(std::size_t j) { return summed_.data() + at_[j]; }

  /// Every rank's gradient to the homes (grad_of(param): its data, nullptr
  /// for none: zeros), added there in rank order into summed(), then
  /// divided by P for the mean. Notes which ranks' own gradients were not
  /// finite where a sum is not (sources()).
  template <class GradOf>
  void reduce_grads(Communicator& comm, bool mean, GradOf&& grad_of) {
    const int P = comm.size(), me = comm.rank();
    bad_.clear();
    cursor_ = 0;
    bad_job_ = jobs_.size();
    for (std::size_t k = 0; k < rounds(); ++k) {
      for (int h = 0; h < P; ++h) {
        counts_[std::size_t(h)] = window_count(h, k);
        T* out = send_.data() + std::size_t(h) * window_;
        for_share(h, k, [&](const Job& job, std::size_t at, std::size_t n, std::size_t to) {
          const T* g = grad_of(job.param);
          if (g)
            std::copy(g + job.offset + std::int64_t(at), g + job.offset + std::int64_t(at + n),
                      out + to);
          else
            std::fill(out + to, out + to + n, T(0));
        });
      }
      const std::size_t n = window_count(me, k);
      std::fill(recv_counts_.begin(), recv_counts_.end(), n);
      comm.all_to_allv(send_.data(), counts_, displs_, recv_.data(), recv_counts_, displs_,
                       dtype_of<T>());
      T* out = summed_.data() + k * window_;
      for (std::size_t e = 0; e < n; ++e) {
        C sum = static_cast<C>(recv_[e]);
        for (int r = 1; r < P; ++r) sum += static_cast<C>(recv_[std::size_t(r) * window_ + e]);
        out[e] = static_cast<T>(mean ? sum / static_cast<C>(P) : sum);
        if (!std::isfinite(static_cast<C>(out[e]))) note_sources(P, k * window_ + e, e);
      }
    }
  }

  /// Collective: the ranks (in order, once each) whose own gradient was not
  /// finite where a home summed a non-finite element of parameter i (the
  /// last reduce_grads).
  std::vector<std::int64_t> sources(Communicator& comm, std::size_t i) const {
    std::vector<std::int64_t> mine;
    for (std::size_t k = 0; k < bad_.size(); k += 2)
      if (jobs_[std::size_t(bad_[k])].param == i) mine.push_back(bad_[k + 1]);
    const std::size_t P = std::size_t(comm.size());
    std::int64_t n = std::int64_t(mine.size());
    std::vector<std::int64_t> sizes(P);
    comm.all_gather(&n, sizes.data(), 1, DType::i64);
    std::vector<std::size_t> counts(P), displs(P);
    for (std::size_t r = 0; r < P; ++r) {
      counts[r] = std::size_t(sizes[r]);
      displs[r] = r == 0 ? 0 : displs[r - 1] + counts[r - 1];
    }
    std::vector<std::int64_t> all(displs[P - 1] + counts[P - 1]);
    comm.all_gatherv(mine.data(), mine.size(), all.data(), counts, displs, DType::i64);
    std::sort(all.begin(), all.end());
    all.erase(std::unique(all.begin(), all.end()), all.end());
    return all;
  }

  /// Each home's new weights to every rank (param_of(param): its data).
  template <class ParamOf>
  void gather_params(Communicator& comm, ParamOf&& param_of) {
    const int P = comm.size(), me = comm.rank();
    for (std::size_t k = 0; k < rounds(); ++k) {
      for (int r = 0; r < P; ++r) counts_[std::size_t(r)] = window_count(r, k);
      for_share(me, k, [&](const Job& job, std::size_t at, std::size_t c, std::size_t to) {
        const T* w = param_of(job.param) + job.offset + std::int64_t(at);
        std::copy(w, w + c, send_.data() + to);
      });
      comm.all_gatherv(send_.data(), counts_[std::size_t(me)], recv_.data(), counts_, displs_,
                       dtype_of<T>());
      for (int r = 0; r < P; ++r) {
        if (r == me) continue;
        const T* from = recv_.data() + std::size_t(r) * window_;
        for_share(r, k, [&](const Job& job, std::size_t at, std::size_t c, std::size_t to) {
          T* w = param_of(job.param) + job.offset + std::int64_t(at);
          std::copy(from + to, from + to + c, w);
        });
      }
    }
  }

 private:
  // f(job, element offset in the job, count, offset in the window) for the
  // elements of rank r's share in round k.
  template <class F>
  void for_share(int r, std::size_t k, F&& f) const {
    const std::size_t begin = k * window_, end = begin + window_count(r, k);
    for (std::size_t j : rank_jobs_[std::size_t(r)]) {
      const std::size_t b = at_[j], e = b + std::size_t(jobs_[j].count);
      if (e <= begin || b >= end) continue;
      const std::size_t lo = std::max(b, begin), hi = std::min(e, end);
      f(jobs_[j], lo - b, hi - lo, lo - begin);
    }
  }
  std::size_t window_count(int r, std::size_t round) const {
    const std::size_t share = shares_[std::size_t(r)], begin = round * window_;
    return begin >= share ? 0 : std::min(window_, share - begin);
  }
  std::size_t rounds() const {
    const std::size_t largest = *std::max_element(shares_.begin(), shares_.end());
    return (largest + window_ - 1) / window_;
  }

  // Element `at` of this rank's share summed to a NaN or Inf (from window
  // element e): records, once per job, the ranks whose own gradient was not
  // finite there (bad_: job, rank pairs). Elements come in share order, so
  // the job is found by walking forward.
  void note_sources(int P, std::size_t at, std::size_t e) {
    const std::vector<std::size_t>& mine = rank_jobs_[std::size_t(rank_)];
    while (at >= at_[mine[cursor_]] + std::size_t(jobs_[mine[cursor_]].count)) ++cursor_;
    const std::size_t j = mine[cursor_];
    if (j != bad_job_) {
      bad_job_ = j;
      std::fill(seen_.begin(), seen_.end(), char(0));
    }
    for (int r = 0; r < P; ++r)
      if (!seen_[std::size_t(r)] &&
          !std::isfinite(static_cast<C>(recv_[std::size_t(r) * window_ + e]))) {
        seen_[std::size_t(r)] = 1;
        bad_.push_back(std::int64_t(j));
        bad_.push_back(r);
      }
  }

  int rank_ = 0;
  std::vector<Job> jobs_;
  std::vector<std::size_t> first_job_;  // per parameter, and one past the last
  std::vector<std::vector<std::size_t>> rank_jobs_;
  std::vector<std::size_t> at_, shares_;  // a job's offset in its home's share; share sizes
  std::size_t window_ = 1;
  std::vector<T> summed_, send_, recv_;
  std::vector<std::size_t> counts_, recv_counts_, displs_;
  std::vector<std::int64_t> bad_;
  std::vector<char> seen_;
  std::size_t cursor_ = 0, bad_job_ = 0;
};

}  // namespace dist
}  // namespace muon
