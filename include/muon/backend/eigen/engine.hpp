// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/engine.hpp
/// \brief eigen::Engine<T, B>: the CPU backend of a step — the optimizer
/// state of the parameters (or parts of parameters) it holds, and the loops
/// that check and write them. The maths is the step rules'
/// (optim/step_rules.hpp, shared with the CUDA kernels); the options, the
/// coefficients and the decision are the optim::Core's; the engine indexes
/// memory, calls the rules, and runs Newton–Schulz on its workspaces
/// (executor.hpp decides which thread does what).
///
/// A facade holds ONE Core and registers JOBS with one or more engines: a
/// job is a part of one core parameter —
///   - Muon: a run of whole row blocks [first_block, first_block + count)
///     (all of them for muon::Optimizer; one block per job for a
///     distributed share);
///   - AdamW: a run of elements from first_element (the whole parameter,
///     or one rank's range) —
/// with views of that part's parameter and gradient memory (row-major
/// matrices, ParamView::memory() or a slice of it) and buffers of its own.
/// The coefficients of a job come from the core by (parameter, block).
///
/// A step, for every engine of the facade:
///   core.begin_step();  flags all 0 (one word per core parameter);
///   engine.check(core, flags);        reads only; ORs what each job finds
///   (all-reduce OR of flags across ranks, for a distributed share)
///   core.decide(flags, types);        raise: throws; skip: core.skip(...)
///   engine.write(core, metrics_on);   every job whose core.updates(param)
///   core.finish_step();
/// Nothing allocates after registration (metrics' scratch once).

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../error.hpp"
#include "../../newton_schulz.hpp"
#include "../../optim/core.hpp"
#include "../../optim/qk_clip.hpp"
#include "../../optim/step_rules.hpp"
#include "../../param_view.hpp"
#include "../../scalar.hpp"
#include "executor.hpp"
#include "metrics.hpp"
#include "square_roots.hpp"
#include "workspace.hpp"

namespace muon {
namespace eigen {

template <class T, class B = compute_t<T>>
class Engine {
 public:
  using Index = Eigen::Index;
  using View = ParamView<T>;
  using Buffer = Eigen::Matrix<B, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  /// What a facade registers: the part of core parameter `param` a job steps.
  struct Part {
    std::size_t param = 0;
    /// Muon: blocks [first_block, first_block + block_count) of the
    /// parameter (block_count 0: to its last block).
    std::size_t first_block = 0, block_count = 0;
    /// AdamW: the part's first element in the parameter's (row-major) memory
    /// order; its buffers are that slice of the parameter's.
    std::int64_t first_element = 0;
    /// The part's memory as a 2-D row-major view (ParamView::memory() of the
    /// whole parameter, or a slice): Muon, the blocks' rows x the
    /// parameter's cols; AdamW, any rows x cols holding consecutive elements.
    View param_memory;
    /// The gradient's, of the same shape, or absent (the job is skipped).
    View grad_memory;
  };

  /// Where buffer b of a job lies in its parameter's buffer b: `count`
  /// elements from `offset` (the checkpoint's layout, optim::buffer_elements).
  struct Slice {
    std::int64_t offset = 0, count = 0;
  };

  // ---- settings -----------------------------------------------------------------

  /// Threads of the workspaces and the elementwise work made afterwards
  /// (0: muon::default_threads()); they share one pool of that size.
  void set_threads(int threads) { exec_.set_threads(threads); }
  /// The product engine of the workspaces made afterwards.
  void set_products(Products products) { exec_.set_products(products); }
  Products products() const { return exec_.products(); }

  // ---- jobs ---------------------------------------------------------------------

  /// Registers a job: allocates its buffers (zeroed: the state of a fresh
  /// parameter, in its group's variant), the workspaces of new block shapes
  /// and the lanes' share. All or nothing: throws muon::Error for a part
  /// that does not fit its parameter, std::bad_alloc when memory runs out
  /// (the engine is then unchanged). Returns the job's index.
  std::size_t add_job(const optim::Core& core, const Part& part) {
    Job job = make_job(core, part);
    const optim::ParamRecord& p = core.param(part.param);
    const std::size_t workspaces_before = exec_.workspace_count();
    try {
      job.first = Buffer::Zero(job.rows, job.cols);
      if (!job.muon) job.second = Buffer::Zero(job.rows, job.cols);
      follow_variant(core, job);
      if (job.muon)
        for (std::size_t b = job.first_block; b < job.first_block + job.block_count; ++b)
          job.block_ws.push_back(exec_.workspace_for(Index(p.blocks[b]), Index(p.cols)));
      exec_.resources();
      const std::size_t index = jobs_.size();
      std::vector<typename Executor<B>::Task> tasks;
      for (std::size_t j = 0; j < jobs_.size(); ++j)
        if (jobs_[j].muon) tasks.push_back({j, &jobs_[j].block_ws});
      if (job.muon) tasks.push_back({index, &job.block_ws});
      auto plan = exec_.plan(tasks);
      const std::size_t chunks = chunk_count(job.rows, job.cols);
      grow(jobs_, 1);
      grow(checks_, chunks);
      check_flags_.reserve(checks_.capacity());
      check_max_.reserve(checks_.capacity());
      if (!job.muon) grow(adamw_chunks_, chunks);
      // Nothing below throws.
      jobs_.push_back(std::move(job));
      const Job& added = jobs_.back();
      append_chunks(checks_, index, added.rows, added.cols);
      check_flags_.resize(checks_.size());
      check_max_.resize(checks_.size());
      if (!added.muon) append_chunks(adamw_chunks_, index, added.rows, added.cols);
      (added.muon ? muon_elements_ : adamw_elements_) += added.rows * added.cols;
      exec_.commit(std::move(plan));
      for (Job& j : jobs_) j.metrics.unbind();  // bound to the old lanes' packing
      return index;
    } catch (...) {
      exec_.drop_workspaces(workspaces_before);
      throw;
    }
  }

  std::size_t job_count() const { return jobs_.size(); }
  /// The core parameter job j steps.
  std::size_t param_of(std::size_t j) const { return jobs_[j].param; }
  /// Job j's parameter and gradient memory.
  const View& param(std::size_t j) const { return jobs_[j].param_view; }
  const View& grad(std::size_t j) const { return jobs_[j].grad_view; }

  /// Points job j at this step's gradient (absent: skipped) or at other
  /// parameter memory of the same shape (the facade checks shapes and
  /// overlaps; this only records the views).
  void set_grad(std::size_t j, const View& grad) { jobs_[j].grad_view = grad; }
  void set_param(std::size_t j, const View& param) { jobs_[j].param_view = param; }
  void clear_grads() {
    for (Job& j : jobs_) j.grad_view = View();
  }

  /// Gives every Muon job the state its group's variant keeps (NorMuon: a
  /// column of max(rows, cols) per block; AdaMuon: like the momentum; Muon:
  /// none), zeroed, unless it has it already. After a group's options changed.
  void follow_variants(const optim::Core& core) {
    for (Job& j : jobs_) follow_variant(core, j);
  }

  // ---- the buffers ------------------------------------------------------------------

  /// Job j's buffer b (0: momentum or exp_avg; 1: the variant's second
  /// moment or exp_avg_sq, empty for plain Muon), in the part's memory
  /// layout (NorMuon's second moment: a column).
  const Buffer& buffer(std::size_t j, std::size_t b) const {
    return b == 0 ? jobs_[j].first : jobs_[j].second;
  }
  /// Where job j's buffer b lies in its parameter's buffer b, whose group
  /// keeps `variant`.
  Slice slice(const optim::Core& core, std::size_t j, std::size_t b, MuonVariant variant) const {
    const Job& job = jobs_[j];
    if (job.muon && b == 1 && variant == MuonVariant::normuon) {
      const optim::ParamRecord& p = core.param(job.param);
      return {job.first_line, lines(p, job.first_block, job.block_count)};
    }
    return {job.first_element, std::int64_t(job.rows) * std::int64_t(job.cols)};
  }
  /// Bytes of every buffer.
  std::size_t state_bytes() const {
    std::size_t bytes = 0;
    for (const Job& j : jobs_) bytes += std::size_t(j.first.size() + j.second.size()) * sizeof(B);
    return bytes;
  }

  /// Every job's buffers decoded from a matched checkpoint (optim::Core::match):
  /// its slices of the stored parameter's buffers, in the variant of the
  /// file's group (which the core takes over at commit). Held aside: apply
  /// with adopt() once every engine (and the core) has decoded.
  struct Decoded {
    struct State {
      Buffer first, second;
      std::vector<double> sums;
      MuonVariant variant = MuonVariant::muon;
    };
    std::vector<State> jobs;
  };
  Decoded decode(const optim::Core& core, const optim::Core::Matched& m) const {
    Decoded d;
    d.jobs.resize(jobs_.size());
    for (std::size_t j = 0; j < jobs_.size(); ++j) {
      const Job& job = jobs_[j];
      const optim::ParamRecord& p = core.param(job.param);
      const optim::StoredParam& stored = *m.params[job.param];
      typename Decoded::State& s = d.jobs[j];
      s.variant = m.groups[p.group].muon.variant;
      for (std::size_t b = 0; b < stored.buffers.size() && b < 2; ++b) {
        Buffer& out = b == 0 ? s.first : s.second;
        const Slice at = slice(core, j, b, s.variant);
        if (job.muon && b == 1 && s.variant == MuonVariant::normuon)
          out.resize(Index(at.count), 1);
        else
          out.resize(job.rows, job.cols);
        for (Index e = 0; e < out.size(); ++e)
          out.data()[e] = static_cast<B>(stored.buffers[b].at(std::uint64_t(at.offset + e)));
      }
      if (job.muon && s.variant == MuonVariant::normuon) s.sums.assign(longest_side(job, p), 0.0);
    }
    return d;
  }
  /// Takes over what decode() made. Cannot fail.
  void adopt(Decoded&& d) noexcept {
    for (std::size_t j = 0; j < jobs_.size() && j < d.jobs.size(); ++j) {
      jobs_[j].first.swap(d.jobs[j].first);
      jobs_[j].second.swap(d.jobs[j].second);
      jobs_[j].sums.swap(d.jobs[j].sums);
      jobs_[j].variant = d.jobs[j].variant;
    }
  }

  // ---- the step -----------------------------------------------------------------------

  /// Phase 1, reading only: ORs into flags[i] (flags.size() == core.size())
  /// what every job of parameter i finds (optim::step::Flag): kNoGrad for a
  /// job without gradient; for every element, the step rules' checks
  /// (muon_element_flags, adamw_element_flags: the gradient, the new state,
  /// AdamW's new parameter; AdamW's through step::adamw_run_is_finite's
  /// bound where it vouches for a chunk); for a Muon job, the update bound
  /// (with_update_bound: the largest |p| against core.update_limit). Chunks
  /// of rows run on the pool's threads. Allocates nothing.
  void check(const optim::Core& core, std::vector<int>& flags) {
    exec_.for_chunks(checks_.size(), muon_elements_ + adamw_elements_, [&](std::size_t c) {
      const Chunk& ch = checks_[c];
      const Job& job = jobs_[ch.job];
      check_flags_[c] = 0;
      check_max_[c] = 0;
      if (!job.grad_view.present()) return;
      if (job.muon)
        check_muon_rows(core, job, ch.row0, ch.row1, check_flags_[c], check_max_[c]);
      else
        check_adamw_rows(core, job, ch.row0, ch.row1, check_flags_[c]);
    });
    std::size_t c = 0;
    for (std::size_t j = 0; j < jobs_.size(); ++j) {
      Job& job = jobs_[j];
      int f = 0;
      double max_p = 0;
      for (; c < checks_.size() && checks_[c].job == j; ++c) {
        f |= check_flags_[c];
        max_p = std::max(max_p, check_max_[c]);
      }
      if (!job.grad_view.present())
        f = optim::step::kNoGrad;
      else if (job.muon)
        f = optim::step::with_update_bound(
            f, max_p, core.update_limit(job.param, as_double(std::numeric_limits<T>::max())));
      job.flags = f;
      flags[job.param] |= f;
    }
  }
  /// What check() found for job j alone (a distributed step names the rank).
  int job_flags(std::size_t j) const { return jobs_[j].flags; }

  /// Phase 2: writes every job whose parameter core.updates(): AdamW in
  /// chunks of rows over the threads; then each Muon block, the momentum
  /// and the Newton–Schulz input made in ONE pass (step::momentum_element:
  /// the momentum written, its input loaded into the workspace), Newton–
  /// Schulz, the update (the variant's through the step rules) — small
  /// matrices one per thread side by side, then the large ones one at a
  /// time on every thread. `metrics`: also keep the sums metrics() reports.
  void write(const optim::Core& core, bool metrics) {
    exec_.for_chunks(adamw_chunks_.size(), adamw_elements_, [&](std::size_t c) {
      const Chunk& ch = adamw_chunks_[c];
      if (core.updates(jobs_[ch.job].param)) adamw_rows(core, jobs_[ch.job], ch.row0, ch.row1);
    });
    exec_.run_muon([&](std::size_t j, int lane) {
      if (core.updates(jobs_[j].param)) muon_job(core, jobs_[j], lane, metrics);
    });
  }

  // ---- metrics, QK-Clip, sizes ----------------------------------------------------------

  /// Job j's metrics after a write(core, true) (a job of a whole parameter
  /// fills what the parameter's would be): name, route, updated, the
  /// gradient's norm (unless it was not finite), the momentum's (exp_avg's),
  /// and for Muon the update's RMS, the orthogonality error and the
  /// spectral estimate of the part's memory matrix.
  void metrics(const optim::Core& core, std::size_t j, ParamMetrics& m) {
    Job& job = jobs_[j];
    const optim::ParamRecord& p = core.param(job.param);
    m = ParamMetrics();
    m.name = p.name;
    m.route = p.route;
    m.updated = core.updates(job.param);
    using S = MetricScratch<C>;
    if (job.grad_view.present() && !(job.flags & optim::step::kNonFiniteGrad))
      m.grad_norm = S::frobenius(job.grad_view.matrix());
    m.momentum_norm = S::frobenius(job.first);
    if (!job.muon) return;
    if (m.updated) {
      m.update_rms =
          std::sqrt(job.metrics.update_sumsq / (static_cast<double>(job.rows) * double(job.cols)));
      m.orthogonality_error = job.metrics.orth_error;
    }
    m.spectral_norm = job.metrics.spectral_estimate(job.param_view.matrix());
  }

  /// Scales rows [row, row + rows) of the (out, in) matrix `memory` (a
  /// whole parameter's memory view; `columns`: a column-major parameter,
  /// whose (out, in) rows are memory columns) by `factor`, in C (QK-Clip).
  static void scale_rows(const View& memory, bool columns, std::int64_t row, std::int64_t rows,
                         double factor) {
    auto W = memory.matrix();
    const C f = static_cast<C>(factor);
    for (Index j = Index(row); j < Index(row + rows); ++j) {
      const Index n = columns ? W.rows() : W.cols();
      for (Index e = 0; e < n; ++e) {
        T& w = columns ? W(e, j) : W(j, e);
        w = static_cast<T>(static_cast<C>(w) * f);
      }
    }
  }

  std::size_t workspace_count() const { return exec_.workspace_count(); }
  std::size_t workspace_bytes() const { return exec_.workspace_bytes(); }
  int threads_used_for_small() const { return exec_.lanes(); }

 private:
  using C = compute_t<B>;  // what the rules and Newton–Schulz compute in
  using WS = Workspace<B>;

  struct Job {
    std::size_t param = 0;
    bool muon = false;
    std::size_t first_block = 0, block_count = 0;  // Muon
    std::int64_t first_element = 0;                // in the parameter's buffers (and memory order)
    std::int64_t first_line = 0;                   // NorMuon: in the parameter's second moment
    Index rows = 0, cols = 0;                      // the part's memory matrix
    View param_view, grad_view;
    // Muon: momentum, and the variant's second moment (NorMuon: a column of
    // max(rows, cols) per block; AdaMuon: like the momentum; muon: empty).
    // AdamW: exp_avg, exp_avg_sq.
    Buffer first, second;
    MuonVariant variant = MuonVariant::muon;  // what `second` was made for
    std::vector<double> sums;                 // NorMuon: per line sums of O^2
    std::vector<std::size_t> block_ws;        // block -> the executor's workspace
    int flags = 0;                            // the last check's
    MetricScratch<C> metrics;
  };

  static double as_double(T v) { return MetricScratch<C>::to_double(v); }

  // Room for `extra` more elements, growing geometrically (registrations
  // one at a time stay linear overall).
  template <class V>
  static void grow(V& v, std::size_t extra) {
    if (v.size() + extra > v.capacity()) v.reserve(std::max(v.size() + extra, 2 * v.capacity()));
  }

  // NorMuon's lines of blocks [b0, b0 + count): max(rows, cols) each.
  static std::int64_t lines(const optim::ParamRecord& p, std::size_t b0, std::size_t count) {
    std::int64_t n = 0;
    for (std::size_t b = b0; b < b0 + count; ++b) n += std::max(p.blocks[b], p.cols);
    return n;
  }
  // NorMuon's scratch: one sum per line of the job's largest block.
  static std::size_t longest_side(const Job& job, const optim::ParamRecord& p) {
    std::int64_t longest = 0;
    for (std::size_t b = job.first_block; b < job.first_block + job.block_count; ++b)
      longest = std::max({longest, p.blocks[b], p.cols});
    return std::size_t(longest);
  }

  // A job for `part` (no buffers yet); throws muon::Error when the part
  // does not fit its parameter.
  static Job make_job(const optim::Core& core, const Part& part) {
    if (part.param >= core.size()) detail::fail("job", "no such parameter in the core");
    const optim::ParamRecord& p = core.param(part.param);
    Job job;
    job.param = part.param;
    job.muon = p.muon();
    job.param_view = part.param_memory;
    job.grad_view = part.grad_memory;
    const View& v = part.param_memory;
    if (v.data == nullptr || v.ndim != 2 || v.column_major)
      detail::fail("job", "'" + p.name + "': a part is a 2-D row-major view of present memory");
    job.rows = v.shape[0];
    job.cols = v.shape[1];
    if (part.grad_memory.present() && part.grad_memory.tensor_shape() != v.tensor_shape())
      detail::fail("job", "'" + p.name + "': the gradient part has another shape");
    if (job.muon) {
      const std::size_t n = p.blocks.size();
      if (part.first_block >= n || part.block_count > n - part.first_block)
        detail::fail("job", "'" + p.name + "': blocks out of range");
      job.first_block = part.first_block;
      job.block_count = part.block_count == 0 ? n - part.first_block : part.block_count;
      std::int64_t row0 = 0, rows = 0;
      for (std::size_t b = 0; b < job.first_block; ++b) row0 += p.blocks[b];
      for (std::size_t b = job.first_block; b < job.first_block + job.block_count; ++b)
        rows += p.blocks[b];
      if (job.rows != rows || job.cols != p.cols)
        detail::fail("job", "'" + p.name + "': the part is not the blocks' rows x cols");
      job.first_element = row0 * p.cols;
      job.first_line = lines(p, 0, job.first_block);
    } else {
      const std::int64_t count = std::int64_t(job.rows) * std::int64_t(job.cols);
      if (part.first_element < 0 || part.first_element > p.numel() - count)
        detail::fail("job", "'" + p.name + "': elements out of range");
      job.first_element = part.first_element;
    }
    return job;
  }

  // Gives Muon job `job` the state its group's variant keeps, zeroed,
  // unless it has it already.
  static void follow_variant(const optim::Core& core, Job& job) {
    if (!job.muon) return;
    const optim::ParamRecord& p = core.param(job.param);
    const MuonVariant v = core.group(p.group).muon.variant;
    if (job.variant == v && (v == MuonVariant::muon || job.second.size() > 0)) return;
    Buffer second;
    std::vector<double> sums;
    if (v == MuonVariant::adamuon) second = Buffer::Zero(job.rows, job.cols);
    if (v == MuonVariant::normuon) {
      second = Buffer::Zero(Index(lines(p, job.first_block, job.block_count)), 1);
      sums.assign(longest_side(job, p), 0.0);
    }
    job.second.swap(second);
    job.sums.swap(sums);
    job.variant = v;
  }

  // ---- phase 1 ------------------------------------------------------------------

  void check_muon_rows(const optim::Core& core, const Job& job, Index r0, Index r1, int& flags,
                       double& max_p) const {
    const auto k = core.momentum_coefficients<C>(core.param(job.param).group);
    const auto G = job.grad_view.matrix();
    const auto W = job.param_view.matrix();
    int f = 0;
    C largest = 0;
    for (Index r = r0; r < r1; ++r) {
      const B* m = &job.first(r, 0);
      const T* g = &G(r, 0);
      const T* w = &W(r, 0);
      for (Index c = 0; c < job.cols; ++c) {
        f |= optim::step::muon_element_flags<B>(static_cast<C>(m[c]), static_cast<C>(g[c]),
                                                static_cast<C>(w[c]), k);
        const C a = std::abs(static_cast<C>(w[c]));  // exact in C; a NaN is passed over
        largest = a > largest ? a : largest;
      }
    }
    flags = f;
    max_p = static_cast<double>(largest);
  }

  // AdamW's check of rows [r0, r1), reading only, computing no update
  // (step_rules.hpp, "AdamW's check without computing the update"): the
  // rows' extent in one vectorized pass (AdamWLanes), then
  // step::adamw_run_is_finite;
  // only rows it cannot vouch for (a value that is not finite, values near
  // a type's limit) are checked element by element with
  // step::adamw_element_flags. The same flags either way.
  void check_adamw_rows(const optim::Core& core, const Job& job, Index r0, Index r1,
                        int& flags) const {
    const auto k = core.adamw_coefficients<C>(job.param);
    const auto G = job.grad_view.matrix();
    const auto W = job.param_view.matrix();
    flags = 0;
    if (job.cols == 0) return;
    const C q = optim::step::adamw_ratio_square(k);
    AdamWLanes lanes;
    for (Index r = r0; r < r1; ++r)
      lanes.add(&G(r, 0), &W(r, 0), &job.first(r, 0), &job.second(r, 0), job.cols, q);
    if (optim::step::adamw_run_is_finite(lanes.extent(), k, adamw_limits())) return;
    const auto to_param = [](C x) { return static_cast<C>(static_cast<T>(x)); };
    int f = 0;
    for (Index r = r0; r < r1; ++r) {
      const B* m = &job.first(r, 0);
      const B* v = &job.second(r, 0);
      const T* g = &G(r, 0);
      const T* w = &W(r, 0);
      for (Index c = 0; c < job.cols; ++c)
        f |= optim::step::adamw_element_flags<B>(static_cast<C>(w[c]), static_cast<C>(g[c]),
                                                 static_cast<C>(m[c]), static_cast<C>(v[c]), k,
                                                 to_param);
    }
    flags = f;
  }

  // step::AdamWExtent gathered in kLanes independent maxima per quantity,
  // in one pass over a row's g, p, m, v (a loop the compiler vectorizes);
  // a maximum keeps a NaN once it has seen one.
  struct AdamWLanes {
    static constexpr int kLanes = 16;
    C grad[kLanes] = {}, param[kLanes] = {}, exp_avg[kLanes] = {}, exp_avg_sq[kLanes] = {},
      excess[kLanes] = {};
    static void keep(C& a, C x) { a = (x > a || x != x) ? x : a; }
    void add_one(int l, T g, T p, B m, B v, C q) {
      keep(grad[l], std::abs(static_cast<C>(g)));
      keep(param[l], std::abs(static_cast<C>(p)));
      keep(exp_avg[l], std::abs(static_cast<C>(m)));
      // v >= 0 as the rule keeps it; a negative v (a corrupt state) is
      // counted as NaN, so that the chunk is checked element by element.
      const C vc = static_cast<C>(v);
      keep(exp_avg_sq[l], vc >= C(0) ? vc : std::numeric_limits<C>::quiet_NaN());
      keep(excess[l], static_cast<C>(m) * static_cast<C>(m) - q * static_cast<C>(v));
    }
    void add(const T* g, const T* p, const B* m, const B* v, Index n, C q) {
      Index c = 0;
      for (; c + kLanes <= n; c += kLanes)
        for (int l = 0; l < kLanes; ++l) add_one(l, g[c + l], p[c + l], m[c + l], v[c + l], q);
      for (int l = 0; c < n; ++c, ++l) add_one(l, g[c], p[c], m[c], v[c], q);
    }
    optim::step::AdamWExtent extent() const {
      optim::step::AdamWExtent e;
      for (int l = 0; l < kLanes; ++l) {
        widen(e.grad, static_cast<double>(grad[l]));
        widen(e.param, static_cast<double>(param[l]));
        widen(e.exp_avg, static_cast<double>(exp_avg[l]));
        widen(e.exp_avg_sq, static_cast<double>(exp_avg_sq[l]));
        widen(e.ratio_excess, static_cast<double>(excess[l]));
      }
      return e;
    }
  };
  // x <- max(x, y), keeping a NaN of either.
  static void widen(double& x, double y) {
    if (y > x || y != y) x = y;
  }
  template <class X>
  static double to_double(X x) {
    using Wide = std::conditional_t<std::is_same<X, double>::value, double, float>;
    return static_cast<double>(static_cast<Wide>(x));
  }
  // The largest finite values of AdamW's storage (the moments' B, the
  // parameter's T), each within C's.
  static optim::step::AdamWLimits adamw_limits() {
    const double compute = to_double(std::numeric_limits<C>::max());
    return {std::min(to_double(std::numeric_limits<B>::max()), compute),
            std::min(to_double(std::numeric_limits<T>::max()), compute), compute};
  }

  // ---- phase 2 ------------------------------------------------------------------

  // AdamW's write of rows [r0, r1), ONE pass (check() vouched for every
  // element): per run of up to kRootRun elements of a row, the moments
  // (step::adamw_moments) written and sqrt(v) kept; the run's square roots
  // at once (detail::square_roots: the vector instruction, the same bits as
  // std::sqrt); the parameter (rules::adamw_parameter_from_root). The same
  // bits as step::adamw_element element by element; loops the compiler
  // vectorizes.
  void adamw_rows(const optim::Core& core, Job& job, Index r0, Index r1) {
    const auto k = core.adamw_coefficients<C>(job.param);
    const auto G = job.grad_view.matrix();
    auto W = job.param_view.matrix();
    alignas(64) C root[kRootRun];
    for (Index r = r0; r < r1; ++r)
      for (Index c0 = 0; c0 < job.cols; c0 += kRootRun) {
        const Index n = std::min(kRootRun, job.cols - c0);
        B* m = &job.first(r, c0);
        B* v = &job.second(r, c0);
        const T* g = &G(r, c0);
        T* w = &W(r, c0);
        for (Index e = 0; e < n; ++e) {
          const auto x = optim::step::adamw_moments<B>(static_cast<C>(g[e]), static_cast<C>(m[e]),
                                                       static_cast<C>(v[e]), k);
          m[e] = static_cast<B>(x.exp_avg);
          v[e] = static_cast<B>(x.exp_avg_sq);
          root[e] = x.exp_avg_sq;
        }
        detail::square_roots(root, n);
        for (Index e = 0; e < n; ++e)
          w[e] = static_cast<T>(optim::rules::adamw_parameter_from_root(
              static_cast<C>(w[e]), static_cast<C>(m[e]), root[e], k));
      }
  }
  static constexpr Index kRootRun = 256;  // adamw_rows' run (1 KiB of float on the stack)

  // Each block of a Muon job on the workspaces of `lane`: momentum and
  // Newton–Schulz input in one pass, Newton–Schulz, the update.
  void muon_job(const optim::Core& core, Job& job, int lane, bool metrics) {
    const optim::ParamRecord& p = core.param(job.param);
    const auto k = core.momentum_coefficients<C>(p.group);
    const NewtonSchulzOptions& ns = core.group(p.group).muon.ns;
    const auto G = job.grad_view.matrix();
    auto W = job.param_view.matrix();
    Buffer& M = job.first;
    job.metrics.update_sumsq = 0;
    job.metrics.orth_error = 0;
    Index r0 = 0, v0 = 0;  // the block's first row; (NorMuon) its first line
    for (std::size_t local = 0; local < job.block_count; ++local) {
      const std::size_t b = job.first_block + local;
      const Index rows = Index(p.blocks[b]);
      WS& ws = exec_.workspace(job.block_ws[local], lane);
      // One pass: the momentum written, the input loaded. W is not written
      // yet (the l2 form reads it).
      ws.load_rows([&M, &G, &W, &k, r0](Index r, Index c, Index n, C* out) {
        B* m = &M(r0 + r, c);
        const T* g = &G(r0 + r, c);
        const T* w = &W(r0 + r, c);
        for (Index e = 0; e < n; ++e) {
          const auto x = optim::step::momentum_element<B>(
              static_cast<C>(m[e]), static_cast<C>(g[e]), static_cast<C>(w[e]), k);
          m[e] = static_cast<B>(x.momentum);
          out[e] = x.input;
        }
      });
      detail::newton_schulz_iterate(ws, ns);
      const auto u = core.muon_update_coefficients<C>(job.param, b);
      double update_sumsq = 0;
      switch (job.variant) {
        case MuonVariant::muon:  // by row segments: contiguous writes in either orientation
          ws.update_rows(
              [&W, &u, r0](Index r, Index c, Index n, const C* o) {
                T* w = &W(r0 + r, c);
                for (Index e = 0; e < n; ++e)
                  w[e] =
                      static_cast<T>(optim::rules::muon_parameter(static_cast<C>(w[e]), o[e], u));
              },
              [&W, r0](Index r, Index c, Index n) {  // a wide W's segment used soon
                WS::prefetch(&W(r0 + r, c), std::size_t(n) * sizeof(T));
              });
          break;
        case MuonVariant::normuon:
          update_sumsq = normuon_block(core, job, ws, r0, rows, v0, u);
          break;
        case MuonVariant::adamuon:
          update_sumsq = adamuon_block(core, job, ws, r0, rows, u);
          break;
      }
      if (metrics) {
        const auto X = ws.iterate();
        job.metrics.update_sumsq += job.variant == MuonVariant::muon
                                        ? WS::sum_of_squares(X.data(), std::size_t(X.size()))
                                        : update_sumsq;
        job.metrics.orth_error = std::max(
            job.metrics.orth_error,
            job.metrics.orthogonality_error(local, job.block_count, X, [&](std::size_t k2) -> WS& {
              return exec_.workspace(job.block_ws[k2], lane);
            }));
      }
      r0 += rows;
      v0 += std::max<Index>(rows, Index(p.cols));
    }
  }

  // NorMuon on one block (rows x cols from row r0; its lines of V from v0),
  // after Newton–Schulz left O in `ws`: step::normuon_lines, a line's sum of
  // O^2 (in double), step::normuon_line (V and the factor), normuon_ratio,
  // normuon_entry. Returns ||U||_F^2. Two passes over O.
  double normuon_block(const optim::Core& core, Job& job, WS& ws, Index r0, Index rows, Index v0,
                       const optim::rules::MuonUpdateCoefficients<C>& u) {
    const optim::ParamRecord& p = core.param(job.param);
    const optim::step::NormuonLines lines =
        optim::step::normuon_lines(rows, p.cols, p.shape.column_major);
    double* sums = job.sums.data();
    std::fill(sums, sums + lines.count, 0.0);
    double sumsq = 0;
    const bool by_row = lines.by_row;
    ws.visit_result([sums, by_row, &sumsq](Index r, Index c, C o) {
      const double o2 = static_cast<double>(o) * static_cast<double>(o);
      sums[by_row ? r : c] += o2;
      sumsq += o2;
    });
    const auto k = core.second_moment_coefficients<C>(job.param);
    double scaled_sumsq = 0;  // ||O f||_F^2, from the sums
    for (Index j = 0; j < Index(lines.count); ++j) {
      const double f =
          optim::step::normuon_line<B>(job.second(v0 + j, 0), sums[j], lines.averaged, k);
      scaled_sumsq += sums[j] * f * f;
      sums[j] = f;  // from here on: the factor of line j
    }
    const C ratio = optim::step::normuon_ratio<C>(sumsq, scaled_sumsq);
    auto W = job.param_view.matrix();
    double update_sumsq = 0;
    ws.visit_result([&](Index r, Index c, C o) {
      const C d = optim::step::normuon_entry(o, sums[by_row ? r : c], ratio);
      update_sumsq += static_cast<double>(d) * static_cast<double>(d);
      W(r0 + r, c) =
          static_cast<T>(optim::rules::muon_parameter(static_cast<C>(W(r0 + r, c)), d, u));
    });
    return update_sumsq;
  }

  // AdaMuon on one block after Newton–Schulz: step::adamuon_element (V <-
  // beta2 V + (1-beta2) O^2 in the momentum's layout, the direction D from V
  // as stored); U = D adamuon_ratio. Returns ||U||_F^2.
  double adamuon_block(const optim::Core& core, Job& job, WS& ws, Index r0, Index rows,
                       const optim::rules::MuonUpdateCoefficients<C>& u) {
    const optim::ParamRecord& p = core.param(job.param);
    const auto k = core.second_moment_coefficients<C>(job.param);
    Buffer& V = job.second;
    double direction_sumsq = 0;
    ws.visit_result([&](Index r, Index c, C o) {
      const C d = optim::step::adamuon_element<B>(V(r0 + r, c), o, k);
      direction_sumsq += static_cast<double>(d) * static_cast<double>(d);
    });
    const C ratio = optim::step::adamuon_ratio<C>(rows, p.cols, direction_sumsq);
    auto W = job.param_view.matrix();
    double update_sumsq = 0;
    ws.visit_result([&](Index r, Index c, C o) {
      const C d = optim::rules::adamuon_direction(o, static_cast<C>(V(r0 + r, c)), k) * ratio;
      update_sumsq += static_cast<double>(d) * static_cast<double>(d);
      W(r0 + r, c) =
          static_cast<T>(optim::rules::muon_parameter(static_cast<C>(W(r0 + r, c)), d, u));
    });
    return update_sumsq;
  }

  Executor<B> exec_;
  std::vector<Job> jobs_;
  std::vector<Chunk> checks_, adamw_chunks_;  // every job's rows; AdamW jobs' rows
  std::vector<int> check_flags_;              // per check chunk, written by check()
  std::vector<double> check_max_;
  Index muon_elements_ = 0, adamw_elements_ = 0;
};

}  // namespace eigen
}  // namespace muon
