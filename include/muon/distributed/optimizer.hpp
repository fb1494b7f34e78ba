// SPDX-License-Identifier: MIT
#pragma once
/// \file distributed/optimizer.hpp
/// \brief muon::dist::Optimizer<T>: the hybrid Muon + AdamW optimizer for
/// data-parallel training over a dist::Communicator (MPI:
/// distributed/mpi.hpp), with optimizer state sharded ZeRO-1 style and
/// every Newton–Schulz run once, on one rank.
///
///     muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
///     // On every rank; dW: this rank's own gradient, the step uses the mean.
///     muon::dist::Optimizer<float> opt(comm, muon::dist::GradMode::mean);
///     opt.add_param("fc.weight", {W, {64, 32}}, {dW, {64, 32}});  // same order everywhere
///     ... backward ...
///     opt.step();                                        // collective
///
/// Every rank registers the same parameters (names, shapes, options, in the
/// same order) over its own full copy of the weights, into ONE optim::Core,
/// the same on every rank (routing, options, schedules, step counts,
/// decisions, checkpoints: the single-process optimizer's). The state and
/// loops are one eigen::Engine whose jobs are this rank's share
/// (distributed/share.hpp): the Muon blocks it is home for, its range of
/// each AdamW parameter (about 1/P of the state). A step:
///   0. the ranks agree on its settings and on which gradients are present;
///   1. GradMode::reduced reads this rank's (already all-reduced) gradient;
///      sum/mean move every rank's gradient to the homes, added there in
///      rank order (Share::reduce_grads);
///   2. the engine checks its share, the flags are ORed over ranks, the core
///      decides, the same everywhere (raise: every rank throws, naming the
///      parameter and the rank; skip: the same parameters left out);
///   3. the engine writes its share; 4. each home's new weights go to every
///      rank (Share::gather_params).
/// With the same inputs the result is bitwise that of one muon::Optimizer
/// fed the gradient summed in rank order (divided by P for the mean;
/// docs/distributed.md), at any rank count. Checkpoints are written by rank
/// 0 in the single-process format and load on any number of ranks (and into
/// muon::Optimizer).
///
/// Only contiguous row-major parameters and gradients (PyTorch's layout).

#include <algorithm>
#include <cstdint>
#include <exception>
#include <fstream>
#include <istream>
#include <iterator>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "../backend/eigen/engine.hpp"
#include "../checkpoint.hpp"
#include "../detail/atomic_file.hpp"
#include "../error.hpp"
#include "../optim/core.hpp"
#include "../optim/front.hpp"
#include "../optim/qk_clip.hpp"
#include "../param_view.hpp"
#include "agreement.hpp"
#include "communicator.hpp"
#include "share.hpp"

namespace muon {
namespace dist {

template <class T, class B = compute_t<T>>
class Optimizer : public optim::Front<Optimizer<T, B>> {
  using Front = optim::Front<Optimizer<T, B>>;
  friend Front;

 public:
  using View = ParamView<T>;
  using Engine = eigen::Engine<T, B>;
  using Buffer = typename Engine::Buffer;

  /// `mode`: what the gradients handed to the optimizer are (the same on
  /// every rank). Group 0 gets `muon` for Muon-routed and `adamw` for
  /// AdamW-routed parameters. `comm` must outlive the optimizer.
  Optimizer(Communicator& comm, GradMode mode, MuonGroupOptions muon = {}, AdamWOptions adamw = {})
      : comm_(comm), core_(std::move(muon), std::move(adamw)), mode_(checked(mode)) {}

  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  using Front::qk_clip;

  // ---- settings (the same on every rank) ------------------------------------------
  // Options, the lr schedule, momentum warmup and non-finite policy are
  // optim::Front's; the registration is compared across ranks when the
  // plan is made, the step's settings at every step.

  /// Threads of this rank's Newton–Schulz and elementwise work (0: default).
  void set_ns_threads(int threads) {
    if (threads < 0) detail::fail("ns_threads", "must be >= 0");
    engine_.set_threads(threads);
  }
  /// Replaces the constructor's mode; only before the plan is made (the
  /// first step, save, load or home()): the staging buffers and what the
  /// homes read are made for the mode.
  void set_grad_mode(GradMode mode) {
    checked(mode);
    if (built_)
      detail::fail("grad_mode", "must be set before the first step, save, load or home()");
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
    params_.reserve(params_.size() + 1);
    core_.add_param(name, param.tensor_shape(), options, param.footprint(name));  // no overlaps
    params_.push_back({param, grad});
  }
  /// The gradient the next steps read for `name`. See step() for a
  /// gradient some ranks lack.
  void set_grad(const std::string& name, View grad) {
    const std::size_t i = core_.index(name);
    check_layout(grad, name, "grad");
    if (core_.param(i).shape != grad.tensor_shape())
      detail::fail("grad", "'" + name + "' has shape " + grad.shape_string());
    params_[i].grad = grad;
  }
  void clear_grad(const std::string& name) { params_[core_.index(name)].grad = View(); }

  /// The rank that runs block `block` of Muon parameter `name` (AdamW
  /// parameters are spread over every rank: -1). The first call makes the
  /// plan (see build(): collective).
  int home(const std::string& name, std::size_t block = 0) {
    build_for("home");
    const std::size_t i = core_.index(name);
    if (!core_.param(i).muon()) return -1;
    if (block >= share_.job_count(i))
      detail::fail("block", std::to_string(block) + " is out of range: '" + name + "' has " +
                                std::to_string(share_.job_count(i)) + " block(s)");
    return share_.jobs()[share_.first_job(i) + block].home;
  }
  /// The momentum of block `block` of Muon parameter `name`, held by its
  /// home (muon::Error on another rank); the plan must be made.
  const Buffer& momentum_buffer(const std::string& name, std::size_t block = 0) const {
    const std::size_t i = core_.index(name);
    if (built_ && core_.param(i).muon() && block < share_.job_count(i))
      for (std::size_t k = 0; k < jobs_.size(); ++k)
        if (jobs_[k] == share_.first_job(i) + block) return engine_.buffer(k, 0);
    detail::fail("name", "'" + name + "' block " + std::to_string(block) +
                             ": this rank holds no momentum for it (not its home, or no plan yet)");
  }
  /// Bytes of this rank's optimizer state (its momentum and moments).
  std::size_t state_bytes() const { return engine_.state_bytes(); }

  /// Makes the plan (homes, shares, this rank's engine jobs, staging
  /// buffers) after comparing every rank's registration (one small
  /// all-gather; on a difference, muon::Error on every rank naming the first
  /// differing parameter or option): a collective call, made by the first
  /// step, save, load or home() — every rank must reach it.
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
  /// are refused likewise. Allocates nothing after the first (but to refuse).
  const StepReport& step() {
    build_for("step");
    agreement_.settings(comm_, core_, mode_ == GradMode::reduced,
                        [this](std::size_t i) { return params_[i].grad.present(); });
    if (mode_ != GradMode::reduced)
      share_.reduce_grads(comm_, mode_ == GradMode::mean,
                          [this](std::size_t i) -> const T* { return params_[i].grad.data; });
    bind_grads();
    core_.begin_step();
    std::fill(flags_.begin(), flags_.end(), 0);
    engine_.check(core_, flags_);
    agreement_.flags(comm_, flags_);
    core_.decide(
        flags_,
        [](std::size_t) {
          return optim::step::StorageTypes{scalar_traits<B>::name, scalar_traits<T>::name};
        },
        [this](std::size_t i, int f) { return where(i, f); });
    engine_.write(core_, false);
    share_.gather_params(comm_, [this](std::size_t i) { return params_[i].param.data; });
    return core_.finish_step();
  }

  // ---- QK-Clip ----------------------------------------------------------------------

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
      optim::plan_qk_clip(core_, heads, max_logits, count, options);  // this rank's call alone
    } catch (const Error& e) {
      problem = std::string(e.detail());
    }
    agree(comm_, problem, fingerprint(heads, count, options), "qk_clip",
          "passed other heads, a maxima count or options than rank 0 (they must be the same on "
          "every rank; nothing was written)");
    std::vector<double> maxima(count);
    comm_.all_reduce(max_logits, maxima.data(), count, DType::f64, ReduceOp::max);
    const optim::QkClipPlan plan = optim::plan_qk_clip(core_, heads, maxima.data(), count, options);
    for (const optim::RowScaling& r : plan.scalings)
      Engine::scale_rows(params_[r.param].param, false, r.row, r.rows, r.factor);
    return plan.report;
  }

  // ---- checkpoints ------------------------------------------------------------------

  /// Collective. Rank 0 gathers the state and writes it to `os` in the
  /// single-process checkpoint format (muon::Optimizer loads it, and this
  /// class on any number of ranks); the other ranks' `os` is not touched.
  /// Rank 0 holds the whole state while writing.
  void save(std::ostream& os) {
    build_for("save");
    GatheredState<B> state;  // this rank's parts of every buffer, to rank 0
    state.add_jobs(core_, engine_);
    state.gather(comm_, core_.size());
    if (comm_.rank() != 0) return;
    core_.save(os, checkpoint::dtype_of<B>(), checkpoint::dtype_of<T>(),
               [&](std::size_t i, checkpoint::Writer& w) {
                 const auto& names = core_.buffer_names(i);
                 for (std::size_t b = 0; b < names.size(); ++b) {
                   const std::vector<B>& whole = state.whole(
                       i, b, optim::buffer_elements(core_.param(i), core_.variant(i), b));
                   optim::state_io::write_buffer(w, names[b], checkpoint::dtype_of<B>(),
                                                 std::uint64_t(whole.size()), whole.data());
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
          agree(comm_, "");
          save(os);
        });
      } catch (const Error& e) {
        problem = std::string(e.detail());
      } catch (const std::exception& e) {
        problem = "path: writing '" + path + "' failed: " + e.what();
      }
      if (!opened) agree(comm_, problem);  // throws on every rank
    } else {
      agree(comm_, "");
      std::ostringstream unused;
      save(unused);
    }
    agree(comm_, problem);
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
    agree(comm_, problem);
    load_bytes(std::move(bytes), options, "'" + path + "'", "load_file");
  }

 private:
  struct Param {
    View param, grad;
  };

  // optim::Front's access to the core and its hook.
  optim::Core& front_core() { return core_; }
  const optim::Core& front_core() const { return core_; }
  void front_group_changed(std::size_t) { engine_.follow_variants(core_); }

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
  static std::string read_all(std::istream& is) {
    return std::string(std::istreambuf_iterator<char>(is), std::istreambuf_iterator<char>());
  }
  // A job's part of a tensor as the engine steps it (rows x cols), from
  // `first`, the part's first element.
  static View part(const typename Share<T>::Job& job, T* first) {
    return View::matrix(first, job.rows, job.cols);
  }

  void build_for(const char* caller) {
    if (built_) return;
    refuse_differences(
        comm_,
        registration(core_, {{"grad mode", grad_mode_name(mode_)},
                             {"window", window_ == 0 ? "default" : std::to_string(window_)}}),
        caller);
    const int P = comm_.size(), me = comm_.rank();
    share_.make(core_, P, me, window_, mode_ != GradMode::reduced);
    // This rank's engine jobs: its share of each parameter, in job order.
    for (std::size_t j : share_.jobs_of(me)) {
      const typename Share<T>::Job& job = share_.jobs()[j];
      typename Engine::Part p;
      p.param = job.param;
      p.first_block = job.block;
      p.block_count = job.muon ? 1 : 0;
      p.first_element = job.offset;
      p.param_memory = part(job, params_[job.param].param.data + job.offset);
      engine_.add_job(core_, p);
      jobs_.push_back(j);
    }
    flags_.assign(core_.size(), 0);
    agreement_.make(P, core_.size());
    built_ = true;
  }

  // Points each engine job at this step's gradient (reduced: the user's,
  // the same on every rank; sum/mean: the share summed here), or absent.
  void bind_grads() {
    for (std::size_t k = 0; k < jobs_.size(); ++k) {
      const typename Share<T>::Job& job = share_.jobs()[jobs_[k]];
      View g;
      if (agreement_.present(job.param))
        g = part(job, mode_ == GradMode::reduced ? params_[job.param].grad.data + job.offset
                                                 : share_.summed(jobs_[k]));
      engine_.set_grad(k, g);
    }
  }

  // Where the problem that refuses parameter i (flags f) came from, for
  // step::refuse: the ranks whose own gradient was not finite (sum/mean), or
  // the first rank that found it. Every rank calls it alike (the flags and
  // the policy are agreed): under sum/mean it gathers the ranks.
  std::string where(std::size_t i, int f) {
    const SkipReason reason = optim::step::reason_of(f & ~optim::step::kNoGrad);
    const int bit = 1 << int(reason);
    int home = 0;
    while (home + 1 < comm_.size() && !(agreement_.rank_flags(home, i) & bit)) ++home;
    const bool summed = reason == SkipReason::non_finite_grad && mode_ != GradMode::reduced;
    const std::vector<std::int64_t> sources =
        summed ? share_.sources(comm_, i) : std::vector<std::int64_t>();
    const std::string at = std::to_string(home);
    std::string where;
    if (!sources.empty()) {
      where = sources.size() == 1 ? "in the gradient from rank " : "in the gradients from ranks ";
      for (std::size_t k = 0; k < sources.size(); ++k)
        where += (k ? ", " : "") + std::to_string(sources[k]);
    } else if (summed) {
      where = "their sum over ranks overflowed, found on rank " + at;
    } else if (reason == SkipReason::non_finite_grad) {
      where = "the reduced gradient, found on rank " + at;
    } else {
      where = "on rank " + at + ", its home";
    }
    return " (" + where + ")";
  }

  // Every rank gets rank 0's bytes, matches them against the core, and
  // takes its share's buffers from the matched checkpoint.
  void load_bytes(std::string bytes, const LoadOptions& options, const std::string& origin,
                  const char* caller) {
    build_for(caller);
    std::istringstream is(broadcast_text(comm_, std::move(bytes), 0));
    optim::Core::Matched m = core_.match(is, checkpoint::dtype_of<B>(), options, origin);
    typename Engine::Decoded decoded = engine_.decode(core_, m);  // aside: may throw
    engine_.adopt(std::move(decoded));                            // nothing below throws
    core_.commit(m);
  }

  Communicator& comm_;
  optim::Core core_;  // every parameter, the same on every rank
  Engine engine_;     // this rank's share: job k is share job jobs_[k]
  Share<T> share_;
  std::vector<Param> params_;  // as registered: every rank's full copies
  GradMode mode_;
  std::size_t window_ = 0;  // 0: the default
  bool built_ = false;
  std::vector<std::size_t> jobs_;
  std::vector<int> flags_;  // per parameter: this rank's checks, then ORed over ranks
  StepAgreement agreement_;
};

}  // namespace dist
}  // namespace muon
