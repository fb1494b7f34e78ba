// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/eigen/thread_pool.hpp
/// \brief A small persistent thread pool for the CPU products, and the rule
/// that picks how many threads the library uses.
///
/// The pool's threads are started once, when a workspace is built; a
/// parallel region afterwards costs one wake-up and performs no heap
/// allocation (the task is a plain function pointer and a context pointer).
/// Workers spin briefly after each region, then sleep on a condition
/// variable, so an idle workspace holds no core.
///
/// Thread count (muon::default_threads()), first match wins:
///  1. muon::set_num_threads(n) with n > 0;
///  2. the environment variable MUON_NUM_THREADS;
///  3. with OpenMP enabled (EIGEN_HAS_OPENMP): Eigen::nbThreads(), which
///     reflects Eigen::setNbThreads and OMP_NUM_THREADS;
///  4. the environment variable OMP_NUM_THREADS (first entry of a list);
///  5. std::thread::hardware_concurrency().
/// Without OpenMP, Eigen::nbThreads() is always 1 and Eigen::setNbThreads is
/// ignored by Eigen itself; use (1), (2) or (4) then.

#include <Eigen/Core>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace muon {
namespace detail {

inline std::atomic<int>& num_threads_override() {
  static std::atomic<int> n{0};
  return n;
}

inline int parse_thread_count(const char* s) {
  if (s == nullptr) return 0;
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (end == s || v <= 0) return 0;
  return v > 1024 ? 1024 : static_cast<int>(v);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

/// Persistent workers; run(n, fn, ctx) calls fn(ctx, t) for t in [0, n) with
/// t = 0 on the calling thread. Not reentrant: one region at a time.
class ThreadPool {
 public:
  using Task = void (*)(void*, int);

  explicit ThreadPool(int threads) : size_(threads < 1 ? 1 : threads) {
    workers_.reserve(static_cast<std::size_t>(size_ - 1));
    for (int i = 1; i < size_; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true, std::memory_order_release);
      generation_.fetch_add(1, std::memory_order_acq_rel);
    }
    work_cv_.notify_all();
    for (auto& w : workers_) w.join();
  }

  int size() const { return size_; }

  void run(int n, Task fn, void* ctx) {
    if (n > size_) n = size_;
    if (n <= 1) {
      if (n == 1) fn(ctx, 0);
      return;
    }
    task_ = fn;
    ctx_ = ctx;
    active_ = n;
    pending_.store(size_ - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      generation_.fetch_add(1, std::memory_order_acq_rel);
    }
    work_cv_.notify_all();
    fn(ctx, 0);
    for (int s = 0; s < kSpin && pending_.load(std::memory_order_acquire) != 0; ++s) cpu_relax();
    if (pending_.load(std::memory_order_acquire) != 0) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_cv_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    }
  }

  /// run() over a callable f(t), passed by reference (no copy, no allocation).
  template <class F>
  void parallel(int n, F& f) {
    run(
        n, [](void* c, int t) { (*static_cast<F*>(c))(t); }, &f);
  }

 private:
  static constexpr int kSpin = 4000;

  void loop(int index) {
    unsigned seen = 0;
    for (;;) {
      unsigned g = generation_.load(std::memory_order_acquire);
      for (int s = 0; s < kSpin && g == seen; ++s) {
        cpu_relax();
        g = generation_.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        work_cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        g = generation_.load(std::memory_order_acquire);
      }
      seen = g;
      if (stop_.load(std::memory_order_acquire)) return;
      if (index < active_) task_(ctx_, index);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_cv_.notify_one();
      }
    }
  }

  int size_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable work_cv_, done_cv_;
  std::atomic<unsigned> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  Task task_ = nullptr;
  void* ctx_ = nullptr;
  int active_ = 0;
};

}  // namespace detail

/// Sets the number of threads workspaces built afterwards use (0 restores the
/// automatic choice; see detail/thread_pool.hpp for the rule).
inline void set_num_threads(int n) { detail::num_threads_override().store(n > 0 ? n : 0); }

/// The number of threads a workspace built now will use (>= 1).
inline int default_threads() {
  if (const int n = detail::num_threads_override().load()) return n;
  if (const int n = detail::parse_thread_count(std::getenv("MUON_NUM_THREADS"))) return n;
#ifdef EIGEN_HAS_OPENMP
  return Eigen::nbThreads() > 0 ? Eigen::nbThreads() : 1;
#else
  if (const int n = detail::parse_thread_count(std::getenv("OMP_NUM_THREADS"))) return n;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw > 1024 ? 1024 : hw);
#endif
}

}  // namespace muon
