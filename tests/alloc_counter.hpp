// SPDX-License-Identifier: MIT
#pragma once
// One heap-allocation counter for the tests that prove a hot path allocates
// nothing after its first call.
//
// Every global operator new / operator delete of the program is replaced by a
// counting one. A program may hold those replacements only once, so they are
// emitted solely by the source that defines MUON_TEST_DEFINE_ALLOC_COUNTER
// before including this header; any other includer gets the declarations. Both
// mistakes fail to link instead of passing quietly: no defining source leaves
// muon_test::alloc_counts undefined, two of them define operator new twice.
//
// Counted: calls of the replaced functions, from every thread (atomics), so a
// worker thread's allocation during a scope shows up in it. Not counted: what
// Eigen takes with malloc directly; a test that must see it also compiles with
// EIGEN_RUNTIME_NO_MALLOC and forbids Eigen's allocations while it measures.

#include <cstddef>
#include <new>

namespace muon_test {

/// Calls of the global allocation functions.
struct AllocCounts {
  long news = 0;     ///< operator new / new[], every overload
  long deletes = 0;  ///< operator delete / delete[], every overload, non-null pointers only
};

inline AllocCounts operator-(const AllocCounts& later, const AllocCounts& earlier) {
  return {later.news - earlier.news, later.deletes - earlier.deletes};
}

/// Totals since the program started.
AllocCounts alloc_counts() noexcept;

/// The heap activity of the whole program since this object was made.
class AllocScope {
 public:
  AllocScope() noexcept : start_(alloc_counts()) {}
  AllocCounts counts() const noexcept { return alloc_counts() - start_; }
  long news() const noexcept { return counts().news; }
  long deletes() const noexcept { return counts().deletes; }

 private:
  AllocCounts start_;
};

}  // namespace muon_test

#ifdef MUON_TEST_DEFINE_ALLOC_COUNTER

#include <atomic>
#include <cstdlib>

namespace muon_test {
namespace {

// Constant-initialized, so allocations made before main (static constructors
// of other translation units) are already counted correctly.
std::atomic<long> g_news{0};
std::atomic<long> g_deletes{0};

// Kept out of line: once the free() below is inlined into a replaced operator
// delete that sits next to a visible `new`, GCC 12 pairs them and wrongly
// reports -Wmismatched-new-delete.
[[gnu::noinline]] void* counted_malloc(std::size_t size) {
  g_news.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(size ? size : 1);
}
[[gnu::noinline]] void* counted_aligned_malloc(std::size_t size, std::align_val_t align) {
  g_news.fetch_add(1, std::memory_order_relaxed);
  const std::size_t a = static_cast<std::size_t>(align);
  // aligned_alloc wants a nonzero multiple of the alignment.
  return std::aligned_alloc(a, size ? (size + a - 1) / a * a : a);
}
[[gnu::noinline]] void counted_free(void* p) {
  if (p == nullptr) return;
  g_deletes.fetch_add(1, std::memory_order_relaxed);
  std::free(p);  // both families come from malloc/aligned_alloc, so one free serves all
}

void* counted_malloc_or_throw(std::size_t size) {
  if (void* p = counted_malloc(size)) return p;
  throw std::bad_alloc();
}
void* counted_aligned_malloc_or_throw(std::size_t size, std::align_val_t align) {
  if (void* p = counted_aligned_malloc(size, align)) return p;
  throw std::bad_alloc();
}

}  // namespace

AllocCounts alloc_counts() noexcept {
  return {g_news.load(std::memory_order_relaxed), g_deletes.load(std::memory_order_relaxed)};
}

}  // namespace muon_test

// Every overload is replaced, not only the plain ones: a block must be released
// by the family that made it, which the sanitizers check.
void* operator new(std::size_t n) { return muon_test::counted_malloc_or_throw(n); }
void* operator new[](std::size_t n) { return muon_test::counted_malloc_or_throw(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return muon_test::counted_malloc(n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return muon_test::counted_malloc(n);
}
void* operator new(std::size_t n, std::align_val_t a) {
  return muon_test::counted_aligned_malloc_or_throw(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return muon_test::counted_aligned_malloc_or_throw(n, a);
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return muon_test::counted_aligned_malloc(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return muon_test::counted_aligned_malloc(n, a);
}
void operator delete(void* p) noexcept { muon_test::counted_free(p); }
void operator delete[](void* p) noexcept { muon_test::counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { muon_test::counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { muon_test::counted_free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { muon_test::counted_free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { muon_test::counted_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { muon_test::counted_free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { muon_test::counted_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  muon_test::counted_free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  muon_test::counted_free(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  muon_test::counted_free(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  muon_test::counted_free(p);
}

#endif  // MUON_TEST_DEFINE_ALLOC_COUNTER
