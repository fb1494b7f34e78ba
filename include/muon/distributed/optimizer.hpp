// SPDX-License-Identifier: MIT
#pragma once
/// \file dist/optimizer.hpp
/// \brief muon::dist::Optimizer<T>: the hybrid Muon + AdamW optimizer for
/// data-parallel training over a dist::Communicator (MPI: dist/mpi.hpp),
/// with optimizer state sharded ZeRO-1 style and every Newton–Schulz run
/// once, on one rank.
///
///     muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
///     // On every rank; dW: this rank's own gradient, the step uses the mean.
///     muon::dist::Optimizer<float> opt(comm, muon::dist::GradMode::mean);
///     opt.add_param("fc.weight", {W, {64, 32}}, {dW, {64, 32}});  // same order everywhere
///     ... backward ...
///     opt.step();                                        // collective
///
/// Every rank registers the same parameters (names, shapes, options, in the
/// same order) over its own full copy of the weights. The routing is the
/// single-process optimizer's. Each Muon matrix — each block of a split, each
/// entry of a 3-D batch — gets one home rank, dealt out by Newton–Schulz cost
/// (longest first, optim/balance.hpp); each AdamW parameter is cut into one
/// contiguous range per rank. A rank holds the momentum and moments of what
/// it is home for only (about 1/P of the state), and runs that part of the
/// step with an ordinary muon::Optimizer over views of the weights. A step:
///   0. the ranks agree on the step's settings and on which gradients are
///      present (one small all-gather);
///   1. gradients: GradMode::reduced reads this rank's (already all-reduced)
///      gradient where it is home; sum/mean move every rank's gradient to the
///      homes and add them there in rank order (then divide by P for the
///      mean; deterministic, in windows);
///   2. checks on every home, agreed by all ranks: a step applies to every
///      parameter or none (raise), or leaves out the same parameters on
///      every rank (skip);
///   3. momentum, Newton–Schulz and updates on the homes;
///   4. the new weights go from each home to every rank (all-gather, in
///      windows of bounded size).
/// With the same inputs the result is bitwise that of one muon::Optimizer
/// fed the gradient summed in rank order (divided by P for the mean;
/// docs/distributed.md), at any rank count. Checkpoints are written by rank
/// 0 in the single-process format and load on any number of ranks (and into
/// muon::Optimizer).
///
/// Only contiguous row-major parameters and gradients (PyTorch's layout).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <fstream>
#include <istream>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "../detail/atomic_file.hpp"
#include "../error.hpp"
#include "../optim/balance.hpp"
#include "../optim/core.hpp"
#include "../optimizer.hpp"
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

template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>)
    return DType::f32;
  else if constexpr (std::is_same_v<T, double>)
    return DType::f64;
  else if constexpr (std::is_same_v<T, Eigen::bfloat16>)
    return DType::bf16;
  else
    return DType::f16;
}

template <class T, class B = compute_t<T>>
class Optimizer {
 public:
  using View = ParamView<T>;
  using Local = muon::Optimizer<T, B>;

  /// `mode`: what the gradients handed to the optimizer are (the same on
  /// every rank). Group 0 gets `muon` for Muon-routed and `adamw` for
  /// AdamW-routed parameters. `comm` must outlive the optimizer.
  Optimizer(Communicator& comm, GradMode mode, MuonGroupOptions muon = {}, AdamWOptions adamw = {})
      : comm_(comm), plan_(muon, adamw), local_(muon, adamw), mode_(checked(mode)) {}

  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // ---- options (the same on every rank) ---------------------------------------------

  std::size_t add_group(MuonGroupOptions muon, AdamWOptions adamw = {}) {
    plan_.add_group(muon, adamw);
    return local_.add_group(std::move(muon), std::move(adamw));
  }
  void set_muon_options(const MuonGroupOptions& o, std::size_t group = 0) {
    plan_.set_muon_options(o, group);
    local_.set_muon_options(o, group);
  }
  void set_adamw_options(const AdamWOptions& o, std::size_t group = 0) {
    plan_.set_adamw_options(o, group);
    local_.set_adamw_options(o, group);
  }
  void set_option(std::string_view key, double value, std::size_t group = 0) {
    plan_.set_option(key, value, group);
    local_.set_option(key, value, group);
  }
  void set_option(std::string_view key, std::string_view value, std::size_t group = 0) {
    plan_.set_option(key, value, group);
    local_.set_option(key, value, group);
  }
  // The lr schedule, momentum warmup and non-finite policy may change
  // between steps; every step checks that they are the same on every rank.
  void set_lr_schedule(const LrSchedule& s) {
    plan_.set_lr_schedule(s);  // validates; kept for that check
    local_.set_lr_schedule(s);
  }
  void set_momentum_warmup(const MomentumWarmup& w) {
    plan_.set_momentum_warmup(w);
    local_.set_momentum_warmup(w);
  }
  void set_non_finite_policy(NonFinitePolicy p) { plan_.set_non_finite_policy(p); }
  NonFinitePolicy non_finite_policy() const { return plan_.non_finite_policy(); }
  /// Before the first add_param.
  void set_routing_rules(RoutingRules rules) { plan_.set_routing_rules(std::move(rules)); }
  void set_ns_threads(int threads) { local_.set_ns_threads(threads); }
  /// Replaces the constructor's mode; only before the plan is made (the
  /// first step, save, load, home() or local()): the staging buffers and
  /// what the homes read are made for the mode.
  void set_grad_mode(GradMode mode) {
    checked(mode);
    if (built_)
      detail::fail("grad_mode", "must be set before the first step, save, load, home() or local()");
    mode_ = mode;
  }
  GradMode grad_mode() const { return mode_; }
  /// Elements each rank moves per round of the gradient and weight exchanges
  /// (default 2^22 / size()): the staging buffers hold 2 x size() x this
  /// many elements. Before the first step; the same on every rank.
  void set_window(std::size_t elements) {
    if (built_) detail::fail("window", "must be set before the first step");
    if (elements == 0) detail::fail("window", "must be positive");
    window_ = elements;
  }

  // ---- parameters -------------------------------------------------------------------

  /// Registers a parameter, on every rank in the same order. Throws
  /// muon::Error for what muon::Optimizer refuses, for a strided or
  /// column-major view, and after the first step (or save/load).
  void add_param(const std::string& name, View param, View grad,
                 const ParamOptions& options = ParamOptions()) {
    if (built_)
      detail::fail("add_param", "'" + name + "': every parameter must be added before the " +
                                    "first step, save or load");
    check_layout(param, name, "param");
    if (param.data == nullptr) detail::fail("param", "'" + name + "' has a null data pointer");
    if (grad.present()) {
      check_layout(grad, name, "grad");
      if (param.tensor_shape() != grad.tensor_shape())
        detail::fail("grad", "'" + name + "' has shape " + grad.shape_string() +
                                 ", the parameter " + param.shape_string());
    }
    plan_.add_param(name, param.tensor_shape(), options, param.footprint(name));  // no overlaps
    params_.push_back({param, grad});
  }
  /// The gradient the next steps read for `name` (the homes' views follow
  /// at the next step). See step() for a gradient some ranks lack.
  void set_grad(const std::string& name, View grad) {
    const std::size_t i = plan_.index(name);
    check_layout(grad, name, "grad");
    if (plan_.param(i).shape != grad.tensor_shape())
      detail::fail("grad", "'" + name + "' has shape " + grad.shape_string());
    params_[i].grad = grad;
  }
  void clear_grad(const std::string& name) { params_[plan_.index(name)].grad = View(); }

  std::size_t param_count() const { return plan_.size(); }
  Route route(const std::string& name) const { return plan_.param(plan_.index(name)).route; }
  /// The rank that runs block `block` of Muon parameter `name` (AdamW
  /// parameters are spread over every rank: -1). The first call makes the
  /// plan (see build(): collective).
  int home(const std::string& name, std::size_t block = 0) {
    build_for("home");
    const std::size_t i = plan_.index(name);
    if (!plan_.param(i).muon()) return -1;
    if (block >= job_count_[i])
      detail::fail("block", std::to_string(block) + " is out of range: '" + name + "' has " +
                                std::to_string(job_count_[i]) + " block(s)");
    return jobs_[first_job_[i] + block].home;
  }
  /// The single-process optimizer that runs this rank's share (the first
  /// call makes the plan: collective).
  const Local& local() {
    build_for("local");
    return local_;
  }
  /// Bytes of this rank's optimizer state (its momentum and moments).
  std::size_t state_bytes() const { return local_.state_bytes(); }

  /// Collective QK-Clip (optim/qk_clip.hpp) after a step: every rank passes
  /// the same `heads`, `count` and `options` and its own per-head maxima
  /// (each rank saw other sequences); they are combined with MAX, then every
  /// rank scales its copy of the weights by the same factors, so the copies
  /// stay equal. Each rank checks its own call first (the maxima finite, the
  /// heads and options valid) and the ranks agree before any maximum moves:
  /// a call refused on any rank, or heads, count or options that differ
  /// between ranks, make every rank throw muon::Error (naming the problem
  /// and the rank), and no rank writes anything.
  QkClipReport qk_clip(const QkClipHeads& heads, const double* max_logits, std::size_t count,
                       const QkClipOptions& options = QkClipOptions()) {
    std::string problem;
    try {
      optim::plan_qk_clip(plan_, heads, max_logits, count, options);  // this rank's call alone
    } catch (const Error& e) {
      problem = std::string(e.detail());
    }
    Fingerprint f;
    f.text(heads.query);
    f.text(heads.key);
    for (std::int64_t v : {heads.heads, heads.head_dim, heads.query_row, heads.key_row}) f.value(v);
    f.value(std::uint64_t(count));
    f.value(options.tau);
    f.value(options.alpha);
    agree(problem, f.get(), "qk_clip",
          "passed other heads, a maxima count or options than rank 0 (they must be the same on "
          "every rank; nothing was written)");
    std::vector<double> maxima(count);
    comm_.all_reduce(max_logits, maxima.data(), count, DType::f64, ReduceOp::max);
    const optim::QkClipPlan plan = optim::plan_qk_clip(plan_, heads, maxima.data(), count, options);
    for (const optim::RowScaling& r : plan.scalings) {
      auto W = params_[r.param].param.matrix();  // contiguous row-major (check_layout)
      for (Index j = Index(r.row); j < Index(r.row + r.rows); ++j)
        for (Index e = 0; e < W.cols(); ++e)
          W(j, e) = static_cast<T>(static_cast<C>(W(j, e)) * static_cast<C>(r.factor));
    }
    return plan.report;
  }
  QkClipReport qk_clip(const QkClipHeads& heads, const std::vector<double>& max_logits,
                       const QkClipOptions& options = QkClipOptions()) {
    return qk_clip(heads, max_logits.data(), max_logits.size(), options);
  }
  std::int64_t step_count() const { return local_.step_count(); }

  /// Makes the plan (homes, shards, the local optimizer, staging buffers)
  /// after comparing every rank's registration (one small all-gather; on a
  /// difference, muon::Error on every rank naming the first differing
  /// parameter or option): a collective call, made by the first step, save,
  /// load, home() or local() — every rank must reach it.
  void build() { build_for("build"); }

  // ---- the step ---------------------------------------------------------------------

  /// One step over every parameter with a gradient: collective. Updates
  /// every parameter on every rank, or none (NonFinitePolicy::raise: throws
  /// muon::Error naming the parameter and the rank(s) whose gradient was not
  /// finite, on every rank), or leaves out the same parameters on every rank
  /// (skip). A gradient some ranks hold and others not: under sum/mean the
  /// missing ones count as zeros (an expert no token reached on a rank), and
  /// the parameter is stepped everywhere; under reduced (the same gradient
  /// everywhere) it is refused on every rank, nothing updated. Settings that
  /// differ between ranks (non-finite policy, lr schedule, momentum warmup)
  /// are refused likewise. Allocates nothing after the first.
  const StepReport& step() {
    build_for("step");
    agree_on_step();
    if (mode_ != GradMode::reduced) reduce_grads();
    bind_grads();
    // Phase 1: every home checks its share; the ranks agree on the outcome.
    const StepReport& local = local_.check();
    agree_on_skips(local);
    if (!skipped_.empty() && plan_.non_finite_policy() == NonFinitePolicy::raise)
      detail::fail("step", first_skip_message());
    // A parameter left out on one home is left out on all of its homes (its
    // views are bound again at the next step).
    for (std::size_t k = 0; k < skipped_.size(); k += 3) {
      const std::size_t i = std::size_t(skipped_[k]);
      for (std::size_t j = first_job_[i]; j < first_job_[i] + job_count_[i]; ++j)
        if (jobs_[j].home == comm_.rank()) local_.clear_grad(jobs_[j].name);
      bound_[i] = nullptr;
    }
    // Phase 2: the share's writes, then the new weights to every rank.
    local_.step();
    gather_params();
    return make_report();
  }

  const StepReport& last_report() const { return report_; }

  // ---- checkpoints ------------------------------------------------------------------

  /// Collective. Rank 0 gathers the state and writes it to `os` in the
  /// single-process checkpoint format (muon::Optimizer loads it, and this
  /// class on any number of ranks); the other ranks' `os` is not touched.
  /// Rank 0 holds the whole state while writing.
  void save(std::ostream& os) {
    build_for("save");
    std::vector<B> mine;
    std::vector<std::int64_t> steps;
    for (std::size_t j : my_jobs_) {
      const Job& job = jobs_[j];
      steps.push_back(local_.param_steps(job.name));
      if (job.muon) {
        const auto& m = local_.momentum_buffer(job.name);
        mine.insert(mine.end(), m.data(), m.data() + m.size());
        if (job_buffer_sizes(job, plan_).size() > 1) {
          const auto& v = local_.second_moment(job.name);
          mine.insert(mine.end(), v.data(), v.data() + v.size());
        }
      } else {
        const auto& a = local_.exp_avg(job.name);
        const auto& v = local_.exp_avg_sq(job.name);
        mine.insert(mine.end(), a.data(), a.data() + a.size());
        mine.insert(mine.end(), v.data(), v.data() + v.size());
      }
    }
    std::vector<B> all = gather_to_root(mine);
    std::vector<std::int64_t> all_steps = gather_to_root(steps);
    if (comm_.rank() != 0) return;
    // Jobs in rank order, each rank's in job order: where each job's state is.
    std::vector<std::size_t> at(jobs_.size());
    std::vector<std::int64_t> param_steps(plan_.size(), 0);
    std::size_t offset = 0, s = 0;
    for (int r = 0; r < comm_.size(); ++r)
      for (std::size_t j : rank_jobs_[std::size_t(r)]) {
        at[j] = offset;
        for (std::int64_t n : job_buffer_sizes(jobs_[j], plan_)) offset += std::size_t(n);
        param_steps[jobs_[j].param] = all_steps[s++];
      }
    plan_.set_counters(local_.step_count(), param_steps);
    plan_.save(os, checkpoint::dtype_of<B>(), checkpoint::dtype_of<T>(),
               [&](std::size_t i, checkpoint::Writer& w) {
                 const optim::ParamRecord& p = plan_.param(i);
                 const auto& names = plan_.buffer_names(i);
                 for (std::size_t b = 0; b < names.size(); ++b) {
                   whole_.resize(std::size_t(optim::buffer_elements(p, plan_.variant(i), b)));
                   for (std::size_t j = first_job_[i]; j < first_job_[i] + job_count_[i]; ++j) {
                     const std::vector<std::int64_t> sizes = job_buffer_sizes(jobs_[j], plan_);
                     std::size_t from = at[j];
                     for (std::size_t k = 0; k < b; ++k) from += std::size_t(sizes[k]);
                     std::copy(all.data() + from, all.data() + from + sizes[b],
                               whole_.begin() + job_buffer_offset(j, b, plan_));
                   }
                   optim::state_io::write_buffer(w, names[b], checkpoint::dtype_of<B>(),
                                                 std::uint64_t(whole_.size()), whole_.data());
                 }
               });
  }

  /// Collective. Rank 0 reads `is` (the other ranks' is not touched) and
  /// sends the bytes to every rank; each rank takes its share. Accepts what
  /// save() or muon::Optimizer::save wrote, from any number of ranks. Throws
  /// muon::Error on every rank (nothing changed) for a checkpoint that does
  /// not match.
  void load(std::istream& is, const LoadOptions& options = LoadOptions()) {
    load_bytes(comm_.rank() == 0 ? read_all(is) : std::string(), options, "stream", "load");
  }
  /// save() to `path` on rank 0, atomically (muon::Optimizer::save_file).
  /// Collective: when rank 0 cannot open, write or rename the file, every
  /// rank throws its muon::Error (naming the path and rank 0), the previous
  /// file intact.
  void save_file(const std::string& path) {
    build_for("save_file");
    // Rank 0 reports twice: the file is open (before the state moves to
    // it), then written and renamed. A failure it kept to itself would
    // leave the other ranks waiting in the gather.
    std::string problem;
    bool opened = false;
    if (comm_.rank() == 0) {
      try {
        detail::write_file_atomically(path, [&](std::ostream& os) {
          opened = true;
          agree("");
          save(os);
        });
      } catch (const Error& e) {
        problem = std::string(e.detail());
      } catch (const std::exception& e) {
        problem = "path: writing '" + path + "' failed: " + e.what();
      }
      if (!opened) agree(problem);  // throws on every rank
    } else {
      agree("");
      std::ostringstream unused;
      save(unused);
    }
    agree(problem);
  }
  /// Collective: rank 0 reads `path`; a file it cannot open makes every
  /// rank throw muon::Error. Then as load().
  void load_file(const std::string& path, const LoadOptions& options = LoadOptions()) {
    std::string bytes, problem;
    if (comm_.rank() == 0) {
      std::ifstream f(path, std::ios::binary);
      if (f)
        bytes = read_all(f);
      else
        problem = "path: cannot open '" + path + "' for reading";
    }
    agree(problem);
    load_bytes(std::move(bytes), options, "'" + path + "'", "load_file");
  }

 private:
  using C = compute_t<T>;
  struct Param {
    View param, grad;
  };
  // A unit of work with one home: a Muon block (rows x cols, contiguous) or
  // an AdamW range; `offset`/`count` in elements of the parameter.
  struct Job {
    std::size_t param;
    bool muon;
    std::int64_t offset, count, rows, cols;
    int home;
    std::string name;  // in the local optimizer
  };

  // The sizes of a job's buffers (checkpoint order) under `core`'s options
  // for its parameter's group: the job's elements, except NorMuon's second
  // moment, max(rows, cols) for the job's block.
  std::vector<std::int64_t> job_buffer_sizes(const Job& job, const optim::Core& core) const {
    const MuonVariant v = core.group(plan_.param(job.param).group).muon.variant;
    const std::size_t n = optim::buffer_names(job.muon ? Route::muon : Route::adamw, v).size();
    std::vector<std::int64_t> sizes(n, job.count);
    if (job.muon && v == MuonVariant::normuon) sizes[1] = std::max(job.rows, job.cols);
    return sizes;
  }
  // Where job j's part of buffer b starts in its parameter's whole buffer:
  // its element offset, or (NorMuon's second moment) the sizes of the
  // parameter's earlier blocks.
  std::int64_t job_buffer_offset(std::size_t j, std::size_t b, const optim::Core& core) const {
    const Job& job = jobs_[j];
    const MuonVariant v = core.group(plan_.param(job.param).group).muon.variant;
    if (!(job.muon && v == MuonVariant::normuon && b == 1)) return job.offset;
    std::int64_t offset = 0;
    for (std::size_t k = first_job_[job.param]; k < j; ++k)
      offset += std::max(jobs_[k].rows, jobs_[k].cols);
    return offset;
  }

  static void check_layout(const View& v, const std::string& name, const char* what) {
    if (v.column_major || (v.stride != 0 && !(v.ndim == 2 && v.stride == v.shape[1])))
      detail::fail(what,
                   "'" + name + "': the distributed optimizer needs contiguous row-major tensors");
  }

  static GradMode checked(GradMode mode) {
    if (!(mode == GradMode::reduced || mode == GradMode::sum || mode == GradMode::mean))
      detail::fail("grad_mode", "is not a GradMode value (" + std::to_string(int(mode)) + ")");
    return mode;
  }

  // FNV-1a over bytes: the fingerprints ranks compare to agree that
  // something is the same everywhere.
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

  // Collective: `text` as rank `root` has it, on every rank.
  std::string broadcast_text(std::string text, int root) {
    std::int64_t n = std::int64_t(text.size());
    comm_.broadcast(&n, 1, DType::i64, root);
    text.resize(std::size_t(n));
    if (n > 0) comm_.broadcast(&text[0], std::size_t(n), DType::u8, root);
    return text;
  }

  // Collective: every rank passes its own `problem` ("field: message" of the
  // error it would raise; "" for none) and a fingerprint of what must be the
  // same on every rank. Throws on every rank the lowest failing rank's
  // problem, naming that rank; else, when a fingerprint differs from rank
  // 0's, `field`: "rank(s) ... <differs>". A rank that threw alone would
  // leave the others waiting in their next collective.
  void agree(const std::string& problem, std::int64_t fingerprint = 0, const char* field = "",
             const char* differs = "") {
    const int P = comm_.size();
    const std::int64_t mine[2] = {problem.empty() ? 0 : 1, fingerprint};
    std::vector<std::int64_t> all(2 * std::size_t(P));
    comm_.all_gather(mine, all.data(), 2, DType::i64);
    for (int r = 0; r < P; ++r)
      if (all[2 * std::size_t(r)] != 0)
        throw Error(broadcast_text(problem, r) + " (on rank " + std::to_string(r) + ")");
    std::string ranks;
    for (int r = 1; r < P; ++r)
      if (all[2 * std::size_t(r) + 1] != all[1])
        ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
    if (!ranks.empty()) detail::fail(field, "rank(s) " + ranks + " " + differs);
  }

  void build_for(const char* caller) {
    if (built_) return;
    check_same_everywhere(caller);
    make_plan();
    built_ = true;
  }

  // What every rank must have registered alike, one (what, value) line each
  // in a fixed order: the grad mode and window, the groups' options, then
  // the parameters (last, so that an extra or a missing parameter is named
  // rather than a count). Hashed to compare; read to say what differs.
  using Lines = std::vector<std::pair<std::string, std::string>>;
  Lines registration() const {
    Lines lines;
    lines.push_back({"grad mode", grad_mode_name(mode_)});
    lines.push_back({"window", window_ == 0 ? "default" : std::to_string(window_)});
    lines.push_back({"groups", std::to_string(plan_.group_count())});
    // Every row of the option table, each as its exact text (the schedule
    // with its every coefficient): nothing a step reads can be left out.
    for (std::size_t g = 0; g < plan_.group_count(); ++g) {
      const GroupOptions& o = plan_.group(g);
      const std::string group = "group " + std::to_string(g) + " option '";
      optim::for_each_option([&](auto row) {
        lines.push_back({group + decltype(row)::key + "'", optim::value_text(row, o)});
      });
    }
    for (std::size_t i = 0; i < plan_.size(); ++i) {
      const optim::ParamRecord& p = plan_.param(i);
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

  // Ranks that registered different parameters or options would exchange
  // mismatched buffers (or hang): a fingerprint of registration(), compared
  // across ranks once, refuses that on every rank. Only when they differ,
  // the lines themselves move, to name the first difference.
  void check_same_everywhere(const char* caller) {
    const Lines mine = registration();
    Fingerprint f;
    for (const auto& [what, value] : mine) {
      f.text(what);
      f.text(value);
    }
    const int P = comm_.size();
    std::vector<std::int64_t> all(static_cast<std::size_t>(P));
    const std::int64_t h = f.get();
    comm_.all_gather(&h, all.data(), 1, DType::i64);
    std::string differ;
    int first = -1;
    for (int r = 1; r < P; ++r)
      if (all[std::size_t(r)] != all[0]) {
        differ += (differ.empty() ? "" : ", ") + std::to_string(r);
        if (first < 0) first = r;
      }
    if (first < 0) return;
    // Rank 0's lines to every rank (length-prefixed); the first differing
    // rank compares them with its own and tells the others what it found.
    std::string packed;
    if (comm_.rank() == 0)
      for (const auto& [what, value] : mine)
        for (const std::string* t : {&what, &value}) packed += std::to_string(t->size()) + ":" + *t;
    packed = broadcast_text(std::move(packed), 0);
    std::string found;
    if (comm_.rank() == first) {
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
    found = broadcast_text(std::move(found), first);
    detail::fail(caller, "rank(s) " + differ +
                             " registered other parameters or options than rank 0; the first "
                             "difference: " +
                             found +
                             " (names, shapes, order, routes, groups, splits, group options, "
                             "grad mode and window must be the same on every rank)");
  }

  void make_plan() {
    const int P = comm_.size();
    std::vector<std::size_t> muon_jobs;
    std::vector<double> cost;
    first_job_.assign(plan_.size(), 0);
    job_count_.assign(plan_.size(), 0);
    for (std::size_t i = 0; i < plan_.size(); ++i) {
      const optim::ParamRecord& p = plan_.param(i);
      first_job_[i] = jobs_.size();
      if (p.muon()) {
        std::int64_t offset = 0;
        for (std::size_t b = 0; b < p.blocks.size(); ++b) {
          const std::int64_t rows = p.blocks[b];
          const std::string name = p.blocks.size() == 1 ? p.name : p.name + "#" + std::to_string(b);
          muon_jobs.push_back(jobs_.size());
          cost.push_back(optim::newton_schulz_cost(double(rows), double(p.cols)));
          jobs_.push_back({i, true, offset, rows * p.cols, rows, p.cols, 0, name});
          offset += rows * p.cols;
        }
      } else {  // one contiguous range per rank
        const std::int64_t n = p.numel();
        for (int r = 0; r < P; ++r) {
          const std::int64_t b = n * r / P, e = n * (r + 1) / P;
          if (b == e) continue;
          jobs_.push_back({i, false, b, e - b, 1, e - b, r, p.name + "@" + std::to_string(b)});
        }
      }
      job_count_[i] = jobs_.size() - first_job_[i];
    }
    const std::vector<int> home = optim::assign_longest_first(cost, P);
    for (std::size_t k = 0; k < muon_jobs.size(); ++k) jobs_[muon_jobs[k]].home = home[k];
    // Each rank's share: its jobs in job order, as one virtual concatenation.
    rank_jobs_.assign(std::size_t(P), {});
    shares_.assign(std::size_t(P), 0);
    for (std::size_t j = 0; j < jobs_.size(); ++j) {
      rank_jobs_[std::size_t(jobs_[j].home)].push_back(j);
      shares_[std::size_t(jobs_[j].home)] += std::size_t(jobs_[j].count);
    }
    my_jobs_ = rank_jobs_[std::size_t(comm_.rank())];
    reduced_.assign(mode_ == GradMode::reduced ? 0 : shares_[std::size_t(comm_.rank())], T(0));
    my_offset_.assign(jobs_.size(), 0);
    for (int r = 0; r < P; ++r) {
      std::size_t o = 0;
      for (std::size_t j : rank_jobs_[std::size_t(r)]) {
        my_offset_[j] = o;
        o += std::size_t(jobs_[j].count);
      }
    }
    // The local optimizer over views of this rank's share.
    local_.set_non_finite_policy(NonFinitePolicy::skip);
    for (std::size_t j : my_jobs_) {
      const Job& job = jobs_[j];
      ParamOptions o;
      o.route = job.muon ? Route::muon : Route::adamw;
      o.group = plan_.param(job.param).group;
      T* w = params_[job.param].param.data + job.offset;
      const View pv =
          job.muon ? View(w, {Index(job.rows), Index(job.cols)}) : View(w, {Index(job.count)});
      local_.add_param(job.name, pv, View(), o);
    }
    bound_.assign(plan_.size(), nullptr);  // every local gradient absent (bind_grads)
    present_.assign(plan_.size(), 0);
    if (window_ == 0) window_ = std::max<std::size_t>(1, (std::size_t(1) << 22) / std::size_t(P));
    std::size_t largest = 0;
    for (std::size_t s : shares_) largest = std::max(largest, s);
    window_ = std::min(window_, std::max<std::size_t>(1, largest));
    send_.assign(std::size_t(P) * window_, T(0));
    recv_.assign(std::size_t(P) * window_, T(0));
    counts_.assign(std::size_t(P), 0);
    displs_.assign(std::size_t(P), 0);
    recv_counts_.assign(std::size_t(P), 0);
    for (int r = 0; r < P; ++r) displs_[std::size_t(r)] = std::size_t(r) * window_;
    // What agreeing on a step needs: the settings and one bit per parameter
    // from every rank; on skips, four numbers per job (more only when
    // several ranks' gradients are not finite).
    header_.assign(kSettings + (plan_.size() + 63) / 64, 0);
    headers_.assign(std::size_t(P) * header_.size(), 0);
    seen_.assign(std::size_t(P), 0);
    bad_sources_.reserve(2 * jobs_.size());
    skipped_.reserve(3 * plan_.size());
    mine_.reserve(4 * jobs_.size());
    all_.reserve(4 * jobs_.size());
    sizes_.assign(std::size_t(P), 0);
    skip_counts_.assign(std::size_t(P), 0);
    skip_displs_.assign(std::size_t(P), 0);
    report_.skipped.reserve(plan_.size());
  }

  // Before anything moves, every rank learns the others' step settings
  // (non-finite policy, lr schedule, momentum warmup) and which gradients
  // they hold, in one all-gather of a few words. Settings that differ, or
  // (reduced) a gradient some ranks hold and others not, throw on every
  // rank. present_[i]: parameter i is stepped this time (sum/mean: some
  // rank holds its gradient, a missing one counts as zeros).
  void agree_on_step() {
    const int P = comm_.size();
    const std::size_t K = header_.size();
    const std::optional<LrSchedule>& s = plan_.lr_schedule();
    const std::optional<MomentumWarmup>& w = plan_.momentum_warmup();
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
    header_[0] = std::uint64_t(plan_.non_finite_policy());
    header_[1] = std::uint64_t(schedule.get());
    header_[2] = std::uint64_t(warmup.get());
    std::fill(header_.begin() + kSettings, header_.end(), 0);
    for (std::size_t i = 0; i < plan_.size(); ++i)
      if (params_[i].grad.present()) header_[kSettings + i / 64] |= std::uint64_t(1) << (i % 64);
    comm_.all_gather(header_.data(), headers_.data(), K, DType::i64);
    static const char* const settings[kSettings] = {"non-finite policy", "lr schedule",
                                                    "momentum warmup"};
    for (std::size_t k = 0; k < kSettings; ++k) {
      std::string ranks;
      for (int r = 1; r < P; ++r)
        if (headers_[std::size_t(r) * K + k] != headers_[k])
          ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
      if (!ranks.empty())
        detail::fail("step", std::string("the ") + settings[k] + " of rank(s) " + ranks +
                                 " differs from rank 0's (set it alike on every rank; nothing " +
                                 "was updated)");
    }
    for (std::size_t word = 0; word + kSettings < K; ++word) {
      std::uint64_t any = 0, every = ~std::uint64_t(0);
      for (int r = 0; r < P; ++r) {
        any |= headers_[std::size_t(r) * K + kSettings + word];
        every &= headers_[std::size_t(r) * K + kSettings + word];
      }
      if (mode_ == GradMode::reduced && (any & ~every) != 0)
        for (std::size_t b = 0; b < 64; ++b)
          if (((any & ~every) >> b) & 1) refuse_partial_grad(word * 64 + b);
      for (std::size_t b = 0; b < 64 && word * 64 + b < plan_.size(); ++b)
        present_[word * 64 + b] = char((any >> b) & 1);
    }
  }
  [[noreturn]] void refuse_partial_grad(std::size_t i) const {
    const std::size_t K = header_.size();
    std::string with, without;
    for (int r = 0; r < comm_.size(); ++r) {
      const bool has = ((headers_[std::size_t(r) * K + kSettings + i / 64] >> (i % 64)) & 1) != 0;
      std::string& list = has ? with : without;
      list += (list.empty() ? "" : ", ") + std::to_string(r);
    }
    detail::fail("step", "'" + plan_.param(i).name + "': rank(s) " + with +
                             " hold a gradient, rank(s) " + without +
                             " none; GradMode::reduced needs the same (all-reduced) gradients " +
                             "on every rank (nothing was updated)");
  }

  // Points each parameter's local jobs at this step's gradient (reduced: the
  // user's, the same on every rank; sum/mean: the share summed here), or
  // marks it absent; only where that changed since the last step.
  void bind_grads() {
    for (std::size_t i = 0; i < plan_.size(); ++i) {
      const void* want = !present_[i] ? nullptr
                         : mode_ == GradMode::reduced
                             ? static_cast<const void*>(params_[i].grad.data)
                             : static_cast<const void*>(&reduced_);
      if (want == bound_[i]) continue;
      bound_[i] = want;
      for (std::size_t j = first_job_[i]; j < first_job_[i] + job_count_[i]; ++j) {
        const Job& job = jobs_[j];
        if (job.home != comm_.rank()) continue;
        if (!want) {
          local_.clear_grad(job.name);
          continue;
        }
        T* data = mode_ == GradMode::reduced ? params_[i].grad.data + job.offset
                                             : reduced_.data() + my_offset_[j];
        local_.set_grad(job.name, job.muon ? View(data, {Index(job.rows), Index(job.cols)})
                                           : View(data, {Index(job.count)}));
      }
    }
  }

  // f(job, element offset in the job, count, offset in the window) for the
  // elements [begin, end) of rank r's share.
  template <class F>
  void for_share(int r, std::size_t begin, std::size_t end, F&& f) const {
    for (std::size_t j : rank_jobs_[std::size_t(r)]) {
      const std::size_t b = my_offset_[j], e = b + std::size_t(jobs_[j].count);
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
    std::size_t largest = 0;
    for (std::size_t s : shares_) largest = std::max(largest, s);
    return (largest + window_ - 1) / window_;
  }

  // Every rank's gradient to the homes, added there in rank order (a rank
  // without one sends zeros), then divided by P for the mean.
  void reduce_grads() {
    const int P = comm_.size(), me = comm_.rank();
    bad_sources_.clear();
    bad_cursor_ = 0;
    bad_job_ = jobs_.size();
    for (std::size_t k = 0; k < rounds(); ++k) {
      for (int h = 0; h < P; ++h) {
        counts_[std::size_t(h)] = window_count(h, k);
        T* out = send_.data() + std::size_t(h) * window_;
        for_share(h, k * window_, k * window_ + counts_[std::size_t(h)],
                  [&](const Job& job, std::size_t at, std::size_t n, std::size_t to) {
                    const T* g = params_[job.param].grad.data;
                    if (g)
                      std::copy(g + job.offset + std::int64_t(at),
                                g + job.offset + std::int64_t(at + n), out + to);
                    else
                      std::fill(out + to, out + to + n, T(0));
                  });
      }
      const std::size_t n = window_count(me, k);
      std::fill(recv_counts_.begin(), recv_counts_.end(), n);
      comm_.all_to_allv(send_.data(), counts_, displs_, recv_.data(), recv_counts_, displs_,
                        dtype_of<T>());
      T* out = reduced_.data() + k * window_;
      for (std::size_t e = 0; e < n; ++e) {
        C sum = static_cast<C>(recv_[e]);
        for (int r = 1; r < P; ++r) sum += static_cast<C>(recv_[std::size_t(r) * window_ + e]);
        out[e] = static_cast<T>(mode_ == GradMode::mean ? sum / static_cast<C>(P) : sum);
        if (!std::isfinite(static_cast<C>(out[e]))) note_sources(k * window_ + e, e);
      }
    }
  }

  // Element `at` of this rank's share summed to a NaN or Inf (from window
  // element e): records, once per job, the ranks whose own gradient was not
  // finite there (bad_sources_: job, rank pairs), for the step's error.
  // Elements come in share order, so the job is found by walking forward.
  void note_sources(std::size_t at, std::size_t e) {
    while (at >=
           my_offset_[my_jobs_[bad_cursor_]] + std::size_t(jobs_[my_jobs_[bad_cursor_]].count))
      ++bad_cursor_;
    const std::size_t j = my_jobs_[bad_cursor_];
    if (j != bad_job_) {
      bad_job_ = j;
      std::fill(seen_.begin(), seen_.end(), char(0));
    }
    for (int r = 0; r < comm_.size(); ++r)
      if (!seen_[std::size_t(r)] &&
          !std::isfinite(static_cast<C>(recv_[std::size_t(r) * window_ + e]))) {
        seen_[std::size_t(r)] = 1;
        bad_sources_.push_back(std::int64_t(j));
        bad_sources_.push_back(r);
      }
  }

  // Each home's new weights to every rank.
  void gather_params() {
    const int P = comm_.size(), me = comm_.rank();
    for (std::size_t k = 0; k < rounds(); ++k) {
      for (int r = 0; r < P; ++r) counts_[std::size_t(r)] = window_count(r, k);
      const std::size_t n = counts_[std::size_t(me)];
      for_share(me, k * window_, k * window_ + n,
                [&](const Job& job, std::size_t at, std::size_t c, std::size_t to) {
                  const T* w = params_[job.param].param.data + job.offset + std::int64_t(at);
                  std::copy(w, w + c, send_.data() + to);
                });
      comm_.all_gatherv(send_.data(), n, recv_.data(), counts_, displs_, dtype_of<T>());
      for (int r = 0; r < P; ++r) {
        if (r == me) continue;
        const T* from = recv_.data() + std::size_t(r) * window_;
        for_share(r, k * window_, k * window_ + counts_[std::size_t(r)],
                  [&](const Job& job, std::size_t at, std::size_t c, std::size_t to) {
                    T* w = params_[job.param].param.data + job.offset + std::int64_t(at);
                    std::copy(from + to, from + to + c, w);
                  });
      }
    }
  }

  // Every rank learns the parameters some home left out this step (skipped_:
  // param, reason, home triples, the first problem of each parameter, in
  // parameter order). all_ keeps what every home sent: param, reason, job,
  // and the rank whose gradient was not finite (-1: none known; a home's own
  // finding), one such tuple per rank for a sum with non-finite parts.
  void agree_on_skips(const StepReport& local) {
    mine_.clear();
    for (const SkippedParam& s : local.skipped) {
      if (s.reason == SkipReason::no_grad) continue;
      const std::size_t j = job_index(s.name);
      const std::size_t before = mine_.size();
      if (s.reason == SkipReason::non_finite_grad)
        for (std::size_t k = 0; k < bad_sources_.size(); k += 2)
          if (std::size_t(bad_sources_[k]) == j)
            mine_.insert(mine_.end(), {std::int64_t(jobs_[j].param), std::int64_t(s.reason),
                                       std::int64_t(j), bad_sources_[k + 1]});
      if (mine_.size() == before)
        mine_.insert(mine_.end(),
                     {std::int64_t(jobs_[j].param), std::int64_t(s.reason), std::int64_t(j), -1});
    }
    const int P = comm_.size();
    std::int64_t n = std::int64_t(mine_.size());
    comm_.all_gather(&n, sizes_.data(), 1, DType::i64);
    std::size_t total = 0;
    for (int r = 0; r < P; ++r) {
      skip_counts_[std::size_t(r)] = std::size_t(sizes_[std::size_t(r)]);
      skip_displs_[std::size_t(r)] = total;
      total += skip_counts_[std::size_t(r)];
    }
    all_.resize(
        total);  // within the capacity reserved at build, unless gradients fail on many ranks
    comm_.all_gatherv(mine_.data(), mine_.size(), all_.data(), skip_counts_, skip_displs_,
                      DType::i64);
    // The first problem of each parameter: its lowest job (block order).
    skipped_.clear();
    for (std::size_t i = 0; i < plan_.size(); ++i) {
      std::int64_t best_job = -1, reason = 0;
      for (std::size_t k = 0; k < all_.size(); k += 4)
        if (std::size_t(all_[k]) == i && (best_job < 0 || all_[k + 2] < best_job)) {
          best_job = all_[k + 2];
          reason = all_[k + 1];
        }
      if (best_job < 0) continue;
      skipped_.push_back(std::int64_t(i));
      skipped_.push_back(reason);
      skipped_.push_back(jobs_[std::size_t(best_job)].home);
    }
  }

  // The error of a refused step: the first parameter left out, why, and
  // where: the ranks whose own gradient was not finite (sum/mean), or the
  // home that found it.
  std::string first_skip_message() const {
    const std::size_t i = std::size_t(skipped_[0]);
    const SkipReason reason = SkipReason(skipped_[1]);
    const std::string home = std::to_string(skipped_[2]);
    std::vector<std::int64_t> sources;
    for (std::size_t k = 0; k < all_.size(); k += 4)
      if (std::size_t(all_[k]) == i && SkipReason(all_[k + 1]) == reason && all_[k + 3] >= 0)
        sources.push_back(all_[k + 3]);
    std::sort(sources.begin(), sources.end());
    sources.erase(std::unique(sources.begin(), sources.end()), sources.end());
    std::string where;
    if (!sources.empty()) {
      where = sources.size() == 1 ? "in the gradient from rank " : "in the gradients from ranks ";
      for (std::size_t k = 0; k < sources.size(); ++k)
        where += (k ? ", " : "") + std::to_string(sources[k]);
    } else if (reason == SkipReason::non_finite_grad && mode_ != GradMode::reduced) {
      where = "their sum over ranks overflowed, found on rank " + home;
    } else if (reason == SkipReason::non_finite_grad) {
      where = "the reduced gradient, found on rank " + home;
    } else {
      where = "on rank " + home + ", its home";
    }
    return "'" + plan_.param(i).name + "': " + skip_reason_name(reason) + " (" + where +
           "; nothing was updated)";
  }

  std::size_t job_index(std::string_view name) const {
    for (std::size_t j : my_jobs_)
      if (jobs_[j].name == name) return j;
    detail::fail("step", "internal: unknown job '" + std::string(name) + "'");
  }

  const StepReport& make_report() {
    report_.skipped.clear();
    report_.updated = 0;
    std::size_t k = 0;
    for (std::size_t i = 0; i < plan_.size(); ++i) {
      if (k < skipped_.size() && std::size_t(skipped_[k]) == i) {
        report_.skipped.push_back({plan_.param(i).name, SkipReason(skipped_[k + 1])});
        k += 3;
      } else if (!present_[i]) {
        report_.skipped.push_back({plan_.param(i).name, SkipReason::no_grad});
      } else {
        ++report_.updated;
      }
    }
    report_.step = local_.step_count();
    report_.status = report_.skipped.empty()
                         ? (report_.updated > 0 ? StepStatus::ok : StepStatus::nothing)
                         : (report_.updated > 0 ? StepStatus::partial : StepStatus::nothing);
    return report_;
  }

  // Rank 0 receives every rank's `mine` (in rank order); others get {}.
  template <class V>
  std::vector<V> gather_to_root(const std::vector<V>& mine) {
    const int P = comm_.size();
    std::int64_t n = std::int64_t(mine.size());
    std::vector<std::int64_t> sizes(static_cast<std::size_t>(P));
    comm_.all_gather(&n, sizes.data(), 1, DType::i64);
    std::vector<std::size_t> send_counts(std::size_t(P), 0), send_displs(std::size_t(P), 0),
        recv_counts(std::size_t(P), 0), recv_displs(std::size_t(P), 0);
    send_counts[0] = mine.size();
    std::size_t total = 0;
    if (comm_.rank() == 0)
      for (int r = 0; r < P; ++r) {
        recv_counts[std::size_t(r)] = std::size_t(sizes[std::size_t(r)]);
        recv_displs[std::size_t(r)] = total;
        total += std::size_t(sizes[std::size_t(r)]);
      }
    std::vector<V> all(total);
    comm_.all_to_allv(mine.data(), send_counts, send_displs, all.data(), recv_counts, recv_displs,
                      element_type<V>());
    return all;
  }
  template <class V>
  static constexpr DType element_type() {
    if constexpr (std::is_same_v<V, std::int64_t>)
      return DType::i64;
    else if constexpr (std::is_same_v<V, char>)
      return DType::u8;
    else
      return dtype_of<V>();
  }

  static std::string read_all(std::istream& is) {
    return std::string(std::istreambuf_iterator<char>(is), std::istreambuf_iterator<char>());
  }

  // Every rank gets rank 0's bytes, matches them against the plan, and loads
  // its share into the local optimizer through an in-memory checkpoint of
  // its jobs.
  void load_bytes(std::string bytes, const LoadOptions& options, const std::string& origin,
                  const char* caller) {
    build_for(caller);
    bytes = broadcast_text(std::move(bytes), 0);
    std::istringstream is(bytes);
    optim::Core::Matched m = plan_.match(is, checkpoint::dtype_of<B>(), options, origin);
    // The share as a checkpoint of the local optimizer's own parameters.
    optim::Core share(m.groups[0].muon, m.groups[0].adamw);
    for (std::size_t g = 1; g < m.groups.size(); ++g)
      share.add_group(m.groups[g].muon, m.groups[g].adamw);
    std::vector<std::int64_t> steps;
    for (std::size_t j : my_jobs_) {
      const Job& job = jobs_[j];
      ParamOptions o;
      o.route = job.muon ? Route::muon : Route::adamw;
      o.group = plan_.param(job.param).group;
      optim::TensorShape shape;
      if (job.muon) {
        shape.ndim = 2;
        shape.dims = {{job.rows, job.cols, 0, 0}};
      } else {
        shape.ndim = 1;
        shape.dims = {{job.count, 0, 0, 0}};
      }
      share.add_param(job.name, shape, o);
      steps.push_back(m.params[job.param]->steps);
    }
    share.set_counters(m.state.step_count, steps);
    std::stringstream ss;
    share.save(ss, checkpoint::dtype_of<B>(), checkpoint::dtype_of<T>(),
               [&](std::size_t k, checkpoint::Writer& w) {
                 const std::size_t j = my_jobs_[k];
                 const Job& job = jobs_[j];
                 const optim::StoredParam& sp = *m.params[job.param];
                 const auto& names = share.buffer_names(k);
                 const std::vector<std::int64_t> sizes = job_buffer_sizes(job, share);
                 for (std::size_t b = 0; b < names.size(); ++b) {
                   const std::int64_t first = job_buffer_offset(j, b, share);
                   whole_.resize(std::size_t(sizes[b]));
                   for (std::int64_t e = 0; e < sizes[b]; ++e)
                     whole_[std::size_t(e)] =
                         static_cast<B>(sp.buffers[b].at(std::uint64_t(first + e)));
                   optim::state_io::write_buffer(w, names[b], checkpoint::dtype_of<B>(),
                                                 std::uint64_t(sizes[b]), whole_.data());
                 }
               });
    local_.load(ss);
    plan_.commit(m);
  }

  using Index = typename View::Index;

  Communicator& comm_;
  optim::Core plan_;  // every parameter, as the single-process optimizer registers it
  Local local_;       // this rank's share
  std::vector<Param> params_;
  GradMode mode_;
  bool built_ = false;
  std::vector<Job> jobs_;
  std::vector<std::size_t> first_job_, job_count_, my_jobs_, my_offset_, shares_;
  std::vector<std::vector<std::size_t>> rank_jobs_;
  std::vector<T> reduced_, send_, recv_;
  std::vector<B> whole_;
  std::size_t window_ = 0;
  std::vector<std::size_t> counts_, displs_, recv_counts_, skip_counts_, skip_displs_;
  std::vector<std::int64_t> mine_, all_, sizes_, skipped_;
  // The step's agreement: this rank's header (settings, then one bit per
  // parameter: its gradient is here) and every rank's; what is stepped and
  // what each parameter's local jobs were last bound to.
  static constexpr std::size_t kSettings = 3;
  std::vector<std::uint64_t> header_, headers_;
  std::vector<char> present_;
  std::vector<const void*> bound_;
  // Non-finite sums: (job, rank) pairs, and the walk that finds them.
  std::vector<std::int64_t> bad_sources_;
  std::vector<char> seen_;
  std::size_t bad_cursor_ = 0, bad_job_ = 0;
  StepReport report_;
};

}  // namespace dist
}  // namespace muon
