// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/executor.hpp
/// \brief Where the CPU step's work runs: the Newton–Schulz workspaces (one
/// per block shape, sharing one thread pool, packing buffers and matrix
/// arena), the lanes that run small matrices one per thread side by side,
/// and the chunks of rows the elementwise work is split into. It decides
/// only which thread does what; eigen::Engine (engine.hpp) says what is
/// done, with the step rules. Every way of running gives bitwise the same
/// result: a matrix is orthogonalized by one workspace of its shape, and an
/// element is touched by one thread.

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <map>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../error.hpp"
#include "../../optim/balance.hpp"
#include "thread_pool.hpp"
#include "workspace.hpp"

namespace muon {
namespace eigen {

/// Rows [row0, row1) of one job's part: a unit of the elementwise work.
struct Chunk {
  std::size_t job = 0;
  Eigen::Index row0 = 0, row1 = 0;
};

/// Elements of a chunk (about: whole rows).
inline constexpr Eigen::Index kChunkElements = Eigen::Index(1) << 16;

/// Appends the chunks of a rows x cols part of job `job`: runs of whole rows
/// of about kChunkElements elements each.
inline void append_chunks(std::vector<Chunk>& list, std::size_t job, Eigen::Index rows,
                          Eigen::Index cols) {
  const Eigen::Index per =
      std::max<Eigen::Index>(1, kChunkElements / std::max<Eigen::Index>(1, cols));
  for (Eigen::Index r = 0; r < rows; r += per) list.push_back({job, r, std::min(rows, r + per)});
}
/// How many chunks append_chunks makes (to reserve).
inline std::size_t chunk_count(Eigen::Index rows, Eigen::Index cols) {
  const Eigen::Index per =
      std::max<Eigen::Index>(1, kChunkElements / std::max<Eigen::Index>(1, cols));
  return std::size_t((rows + per - 1) / per);
}

/// The threads and workspaces of one CPU engine, for buffers of scalar B.
template <class B>
class Executor {
 public:
  using Index = Eigen::Index;
  using WS = Workspace<B>;
  using Resources = typename WS::Resources;

  /// A Muon job as the lanes see it: its index and the workspace of each of
  /// its blocks (workspace_for).
  struct Task {
    std::size_t job = 0;
    const std::vector<std::size_t>* workspaces = nullptr;
  };

  /// Which lane ("thread") orthogonalizes which small Muon job, and the
  /// workspaces of lanes 1.. (lane 0, the calling thread, uses the shared
  /// ones: the large matrices do not run at the same time). Made whole by
  /// plan(), then committed, so a failed registration changes nothing.
  struct LanePlan {
    std::vector<std::shared_ptr<Resources>> resources;  // lanes 1..
    std::vector<std::vector<std::shared_ptr<WS>>> ws;   // [lane - 1][shape]; null: not small
    std::vector<std::vector<std::size_t>> jobs;         // [lane]: small Muon jobs
    std::vector<std::size_t> large;                     // every other Muon job, in order
  };

  // ---- settings ---------------------------------------------------------------

  /// Threads for what is made afterwards (0: muon::default_threads()).
  void set_threads(int threads) { threads_ = threads; }
  /// Product engine of the workspaces made afterwards.
  void set_products(Products products) { products_ = products; }
  Products products() const { return products_; }

  /// The resources for what is made now: the current ones, or new ones when
  /// the thread count changed since they were made (earlier workspaces keep
  /// theirs). The pool starts here, never inside a step.
  const std::shared_ptr<Resources>& resources() {
    const int threads = threads_ > 0 ? threads_ : default_threads();
    if (!resources_ || resources_->threads() != threads) {
      resources_ = std::make_shared<Resources>(threads);
      resources_->pool();
    }
    return resources_;
  }

  // ---- workspaces ---------------------------------------------------------------

  /// The index of lane 0's workspace for rows x cols blocks, made if new.
  std::size_t workspace_for(Index rows, Index cols) {
    const auto key = std::make_pair(rows, cols);
    const auto it = index_.find(key);
    if (it != index_.end()) return it->second;
    workspaces_.push_back(std::make_unique<WS>(rows, cols, resources(), products_));
    try {
      index_.emplace(key, workspaces_.size() - 1);
    } catch (...) {
      workspaces_.pop_back();
      throw;
    }
    return workspaces_.size() - 1;
  }
  std::size_t workspace_count() const { return workspaces_.size(); }
  /// Drops the workspaces made after the first `count` (a registration that failed).
  void drop_workspaces(std::size_t count) noexcept {
    for (auto it = index_.begin(); it != index_.end();)
      it = it->second >= count ? index_.erase(it) : std::next(it);
    if (workspaces_.size() > count)
      workspaces_.erase(workspaces_.begin() + std::ptrdiff_t(count), workspaces_.end());
  }
  /// Workspace w as lane `lane` uses it.
  WS& workspace(std::size_t w, int lane) {
    return lane == 0 ? *workspaces_[w] : *lanes_.ws[std::size_t(lane - 1)][w];
  }

  // ---- lanes --------------------------------------------------------------------

  /// The lanes for these Muon jobs (every Muon job of the engine, in order).
  /// A job is small when each of its blocks runs on one thread anyway
  /// (Workspace::gains_from_threads) with the library's own products (BLAS
  /// brings threads of its own: its matrices run one at a time). Small jobs
  /// run side by side only when there is more than one matrix's worth of
  /// work to share (a wake-up costs microseconds, a 64 x 64 iteration about
  /// as much), dealt to the lanes by cost, longest first (optim/balance.hpp).
  /// Needs resources() made.
  LanePlan plan(const std::vector<Task>& tasks) const {
    LanePlan plan;
    std::vector<std::size_t> small;  // indices into tasks
    std::vector<double> cost;
    for (std::size_t t = 0; t < tasks.size(); ++t) {
      if (!is_small(*tasks[t].workspaces)) {
        plan.large.push_back(tasks[t].job);
        continue;
      }
      small.push_back(t);
      double c = 0;
      for (std::size_t w : *tasks[t].workspaces)
        c += optim::newton_schulz_cost(double(workspaces_[w]->rows()),
                                       double(workspaces_[w]->cols()));
      cost.push_back(c);
    }
    double total = 0;
    for (double c : cost) total += c;
    const int lanes = (small.size() > 1 && total >= 1e6)
                          ? std::min<int>(resources_->threads(), int(small.size()))
                          : 1;
    plan.jobs.resize(std::size_t(lanes));
    const std::vector<int> lane = optim::assign_longest_first(cost, lanes);
    for (std::size_t k = 0; k < small.size(); ++k)
      plan.jobs[std::size_t(lane[k])].push_back(tasks[small[k]].job);
    // Lanes 1.. keep the resources and workspaces they had where they can;
    // each has a workspace for every small shape.
    plan.resources.resize(std::size_t(lanes - 1));
    plan.ws.resize(std::size_t(lanes - 1));
    for (std::size_t k = 0; k + 1 < std::size_t(lanes); ++k) {
      const bool had = k < lanes_.resources.size();
      plan.resources[k] = had ? lanes_.resources[k] : std::make_shared<Resources>(1);
      plan.ws[k].resize(workspaces_.size());
      for (std::size_t t : small)
        for (std::size_t w : *tasks[t].workspaces) {
          if (plan.ws[k][w]) continue;
          if (had && w < lanes_.ws[k].size() && lanes_.ws[k][w])
            plan.ws[k][w] = lanes_.ws[k][w];
          else
            plan.ws[k][w] = std::make_shared<WS>(workspaces_[w]->rows(), workspaces_[w]->cols(),
                                                 plan.resources[k], workspaces_[w]->products());
        }
    }
    return plan;
  }
  void commit(LanePlan&& plan) noexcept { lanes_ = std::move(plan); }

  /// Lanes that run the small matrices side by side (1: one after another).
  int lanes() const { return int(lanes_.jobs.size()); }

  /// f(job, lane) for every Muon job: the small ones each lane's on its own
  /// thread, side by side; then the large ones one at a time, each on every
  /// thread (its workspace's products split over the pool).
  template <class F>
  void run_muon(F&& f) {
    const int lanes = int(lanes_.jobs.size());
    detail::ThreadPool* pool = lanes > 1 ? resources_->pool() : nullptr;
    if (!pool) {
      for (const auto& list : lanes_.jobs)
        for (std::size_t j : list) f(j, 0);
    } else {
      auto task = [this, &f](int lane) {
        for (std::size_t j : lanes_.jobs[std::size_t(lane)]) f(j, lane);
      };
      pool->parallel(lanes, task);
    }
    for (std::size_t j : lanes_.large) f(j, 0);
  }

  // ---- chunks -----------------------------------------------------------------------

  /// f(c) for c in [0, n): contiguous runs of chunk indices on the pool's
  /// threads when `elements` (their total) is worth splitting. Each chunk is
  /// touched by one thread, and the caller reduces what depends on order in
  /// chunk order, so the outcome is the same at any thread count.
  template <class F>
  void for_chunks(std::size_t n, Index elements, F&& f) {
    detail::ThreadPool* pool = resources_ ? resources_->pool() : nullptr;
    const int tasks = pool ? int(std::min<std::size_t>(n, std::size_t(pool->size()))) : 1;
    if (tasks <= 1 || elements < 4 * kChunkElements) {
      for (std::size_t c = 0; c < n; ++c) f(c);
      return;
    }
    auto task = [n, tasks, &f](int t) {
      const std::size_t begin = n * std::size_t(t) / std::size_t(tasks);
      const std::size_t end = n * std::size_t(t + 1) / std::size_t(tasks);
      for (std::size_t c = begin; c < end; ++c) f(c);
    };
    pool->parallel(tasks, task);
  }

  /// Bytes the workspaces hold: their shared matrix arena and packing
  /// buffers, each extra lane's arena, and the bf16 engine's packed operands.
  std::size_t workspace_bytes() const {
    std::size_t bytes = 0;
    const Resources* last = nullptr;
    for (const auto& ws : workspaces_) {  // consecutive workspaces share resources
      if (ws->resources().get() != last) {
        last = ws->resources().get();
        bytes += last->bytes();
      }
      bytes += ws->engine_bytes();
    }
    for (const auto& r : lanes_.resources) bytes += r->bytes();
    for (const auto& lane : lanes_.ws)
      for (const auto& ws : lane)
        if (ws) bytes += ws->engine_bytes();
    return bytes;
  }

 private:
  bool is_small(const std::vector<std::size_t>& workspaces) const {
    for (std::size_t w : workspaces) {
      const WS& ws = *workspaces_[w];
      if (WS::gains_from_threads(ws.rows(), ws.cols()) || ws.products() == Products::blas)
        return false;
    }
    return true;
  }

  int threads_ = 0;
  Products products_ = Products::automatic;
  // What the workspaces share (shared_resources.hpp); the workspaces hold it
  // too, so a change of thread count starts new resources for later ones only.
  std::shared_ptr<Resources> resources_;
  std::vector<std::unique_ptr<WS>> workspaces_;
  std::map<std::pair<Index, Index>, std::size_t> index_;
  LanePlan lanes_;
};

}  // namespace eigen
}  // namespace muon
