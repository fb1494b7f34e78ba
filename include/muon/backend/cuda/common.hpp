// SPDX-License-Identifier: MIT
#pragma once
/// \file backend/cuda/common.hpp
/// \brief Device-side basics: error checking, matrix views, the allocator
/// hook and an owning DeviceMatrix. Host code only (no kernels): this header
/// compiles with any C++17 compiler that sees the CUDA runtime headers.
///
/// Layout. A MatrixView is column-major, like cuBLAS: element (i, j) lives at
/// ptr[i + j * ld], ld >= rows. A PyTorch tensor is row-major: a contiguous
/// (r, c) tensor W is, read column-major, the c x r matrix W^T with ld = c.
/// Pass it as `MatrixView<T>::row_major(ptr, r, c)` (= {ptr, c, r, c}).
/// Newton–Schulz commutes with transposition (NS(W^T) = NS(W)^T), so
/// orthogonalizing that view in place yields exactly NS(W) in torch's layout.

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../error.hpp"
#include "../../optim/checkpoint_format.hpp"

namespace muon {
namespace cuda {

// ---- errors -----------------------------------------------------------------

// A failed CUDA or cuBLAS call is a muon::Error like any other, thrown by
// ::muon::detail::fail with the call as its field.

/// Throws muon::Error("<call>: <code name>: <message>") unless `e` is cudaSuccess.
inline void check(cudaError_t e, const char* call) {
  if (e != cudaSuccess)
    ::muon::detail::fail(call, std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e));
}

/// Throws muon::Error("<call>: <status name>: <message>") unless `s` is
/// CUBLAS_STATUS_SUCCESS.
inline void check(cublasStatus_t s, const char* call) {
  if (s != CUBLAS_STATUS_SUCCESS)
    ::muon::detail::fail(call,
                         std::string(cublasGetStatusName(s)) + ": " + cublasGetStatusString(s));
}

/// Checks a CUDA runtime or cuBLAS call, naming it in the error message.
#define MUON_CUDA_CHECK(call) ::muon::cuda::check((call), #call)

/// Checks the launch of the kernel named `name` (cudaGetLastError).
inline void check_launch(const char* name) { check(cudaGetLastError(), name); }

/// True when a CUDA device is usable: cudaGetDeviceCount succeeds and reports
/// at least one device. Clears the error state when it does not.
inline bool device_available() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}

// ---- host <-> device copies ----------------------------------------------------

namespace detail {

/// Copies `count` elements from host to device memory, ordered on `stream`
/// (pageable host memory is staged before the call returns). Throws muon::Error.
template <class T>
void upload(T* device, const T* host, std::size_t count, cudaStream_t stream) {
  check(cudaMemcpyAsync(device, host, sizeof(T) * count, cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync (host to device)");
}

/// Copies `count` elements from device to host memory, ordered on `stream`;
/// the host data is valid once the stream is synchronized. Throws muon::Error.
template <class T>
void download(T* host, const T* device, std::size_t count, cudaStream_t stream) {
  check(cudaMemcpyAsync(host, device, sizeof(T) * count, cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync (device to host)");
}

/// download() into a new vector, then synchronizes `stream`, so the values
/// are ready (and everything queued before them has finished).
template <class T>
std::vector<T> download_now(const T* device, std::size_t count, cudaStream_t stream) {
  std::vector<T> host(count);
  download(host.data(), device, count, stream);
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return host;
}

}  // namespace detail

// ---- scalar types -----------------------------------------------------------

/// What the backend needs to know of a device scalar, in one place: its
/// cuBLAS type, its name in messages, its checkpoint dtype and its largest
/// finite value (as a double).
template <class T>
struct device_scalar {
  static_assert(sizeof(T) == 0,
                "muon::cuda: unsupported scalar type; use __nv_bfloat16, __half or float");
};
template <>
struct device_scalar<__nv_bfloat16> {
  static constexpr cudaDataType_t data_type = CUDA_R_16BF;
  static constexpr const char* name = "bfloat16";
  static constexpr checkpoint::Dtype dtype = checkpoint::Dtype::bfloat16;
  static constexpr double max = 3.3895313892515355e38;
};
template <>
struct device_scalar<__half> {
  static constexpr cudaDataType_t data_type = CUDA_R_16F;
  static constexpr const char* name = "half";
  static constexpr checkpoint::Dtype dtype = checkpoint::Dtype::float16;
  static constexpr double max = 65504.0;
};
template <>
struct device_scalar<float> {
  static constexpr cudaDataType_t data_type = CUDA_R_32F;
  static constexpr const char* name = "float";
  static constexpr checkpoint::Dtype dtype = checkpoint::Dtype::float32;
  static constexpr double max = 3.4028234663852886e38;
};

// ---- views ------------------------------------------------------------------

/// A non-owning column-major view of device memory: (i, j) at ptr[i + j*ld].
template <class T>
struct MatrixView {
  T* ptr = nullptr;
  std::int64_t rows = 0, cols = 0, ld = 0;

  /// A dense column-major rows x cols matrix (ld = rows).
  static MatrixView col_major(T* p, std::int64_t r, std::int64_t c) { return {p, r, c, r}; }
  /// A dense row-major r x c matrix (a contiguous PyTorch tensor of shape
  /// (r, c)), seen as the column-major c x r matrix it is in memory.
  static MatrixView row_major(T* p, std::int64_t r, std::int64_t c) { return {p, c, r, c}; }

  /// The same view with a const element type.
  template <class U = T, class = std::enable_if_t<!std::is_const<U>::value>>
  operator MatrixView<const U>() const {
    return {ptr, rows, cols, ld};
  }
};

/// `batch` same-shape column-major matrices, matrix k at ptr + k*stride.
template <class T>
struct BatchedMatrixView {
  T* ptr = nullptr;
  std::int64_t rows = 0, cols = 0, ld = 0;
  std::int64_t stride = 0;  ///< elements between consecutive matrices (>= ld*cols)
  std::int64_t batch = 1;

  BatchedMatrixView() = default;
  BatchedMatrixView(T* p, std::int64_t r, std::int64_t c, std::int64_t l, std::int64_t s,
                    std::int64_t b)
      : ptr(p), rows(r), cols(c), ld(l), stride(s), batch(b) {}
  /// One matrix as a batch of one.
  BatchedMatrixView(const MatrixView<T>& v)  // NOLINT: implicit on purpose
      : ptr(v.ptr), rows(v.rows), cols(v.cols), ld(v.ld), stride(v.ld * v.cols), batch(1) {}

  template <class U = T, class = std::enable_if_t<!std::is_const<U>::value>>
  operator BatchedMatrixView<const U>() const {
    return {ptr, rows, cols, ld, stride, batch};
  }
};

// ---- allocation ---------------------------------------------------------------

/// The allocator hook: two function pointers and an opaque context, so a
/// framework can hand in its caching allocator. Both are called with the
/// stream the memory is used on; `allocate` returns nullptr on failure.
struct Allocator {
  void* (*allocate)(std::size_t bytes, cudaStream_t stream, void* context) = nullptr;
  void (*deallocate)(void* ptr, std::size_t bytes, cudaStream_t stream, void* context) = nullptr;
  void* context = nullptr;
};

namespace detail {
inline void* malloc_async(std::size_t bytes, cudaStream_t stream, void*) {
  void* p = nullptr;
  return cudaMallocAsync(&p, bytes, stream) == cudaSuccess ? p : nullptr;
}
inline void free_async(void* p, std::size_t, cudaStream_t stream, void*) {
  (void)cudaFreeAsync(p, stream);
}
inline void* malloc_sync(std::size_t bytes, cudaStream_t, void*) {
  void* p = nullptr;
  return cudaMalloc(&p, bytes) == cudaSuccess ? p : nullptr;
}
inline void free_sync(void* p, std::size_t, cudaStream_t, void*) { (void)cudaFree(p); }
}  // namespace detail

/// Stream-ordered allocation: cudaMallocAsync / cudaFreeAsync (the default).
inline Allocator async_allocator() { return {detail::malloc_async, detail::free_async, nullptr}; }
/// Plain cudaMalloc / cudaFree.
inline Allocator sync_allocator() { return {detail::malloc_sync, detail::free_sync, nullptr}; }
/// The allocator used when none is given.
inline Allocator default_allocator() { return async_allocator(); }

/// Allocates through `a`; throws muon::Error naming `what` when it fails.
inline void* allocate_or_throw(const Allocator& a, std::size_t bytes, cudaStream_t stream,
                               const char* what) {
  if (bytes == 0) return nullptr;
  if (!(a.allocate != nullptr && a.deallocate != nullptr))
    ::muon::detail::fail(what, "the allocator has a null function pointer");
  void* p = a.allocate(bytes, stream, a.context);
  if (!p) {
    (void)cudaGetLastError();
    ::muon::detail::fail(what, "device allocation of " + std::to_string(bytes) + " bytes failed");
  }
  return p;
}

/// Owning device buffer of raw bytes, released through its allocator.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(std::size_t bytes, cudaStream_t stream, Allocator a = default_allocator(),
               const char* what = "DeviceBuffer")
      : alloc_(a), stream_(stream), bytes_(bytes) {
    ptr_ = allocate_or_throw(alloc_, bytes, stream, what);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept { swap(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    DeviceBuffer tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ && alloc_.deallocate) alloc_.deallocate(ptr_, bytes_, stream_, alloc_.context);
  }

  void* data() const { return ptr_; }
  std::size_t bytes() const { return bytes_; }
  cudaStream_t stream() const { return stream_; }

  void swap(DeviceBuffer& o) noexcept {
    std::swap(alloc_, o.alloc_);
    std::swap(stream_, o.stream_);
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
  }

 private:
  Allocator alloc_{};
  cudaStream_t stream_ = nullptr;
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

/// An owning dense column-major device matrix (ld = rows).
template <class T>
class DeviceMatrix {
 public:
  DeviceMatrix() = default;
  /// rows x cols elements, uninitialized. Throws muon::Error for a negative
  /// shape or a failed allocation.
  DeviceMatrix(std::int64_t rows, std::int64_t cols, cudaStream_t stream,
               Allocator a = default_allocator())
      : rows_(rows), cols_(cols) {
    if (!(rows >= 0 && cols >= 0))
      ::muon::detail::fail("DeviceMatrix", "shape must be non-negative, got " +
                                               std::to_string(rows) + "x" + std::to_string(cols));
    buf_ =
        DeviceBuffer(static_cast<std::size_t>(rows * cols) * sizeof(T), stream, a, "DeviceMatrix");
  }

  std::int64_t rows() const { return rows_; }
  std::int64_t cols() const { return cols_; }
  std::int64_t size() const { return rows_ * cols_; }
  T* data() const { return static_cast<T*>(buf_.data()); }
  MatrixView<T> view() const { return {data(), rows_, cols_, rows_ > 0 ? rows_ : 1}; }

  /// Copies size() column-major elements from host memory (stream-ordered).
  void upload(const T* host, cudaStream_t stream) {
    detail::upload(data(), host, static_cast<std::size_t>(size()), stream);
  }
  /// Copies size() column-major elements to host memory (stream-ordered; the
  /// host data is valid after the stream is synchronized).
  void download(T* host, cudaStream_t stream) const {
    detail::download(host, data(), static_cast<std::size_t>(size()), stream);
  }
  std::size_t bytes() const { return static_cast<std::size_t>(size()) * sizeof(T); }

 private:
  std::int64_t rows_ = 0, cols_ = 0;
  DeviceBuffer buf_;
};

/// RAII cuBLAS handle.
class BlasHandle {
 public:
  BlasHandle() { MUON_CUDA_CHECK(cublasCreate(&h_)); }
  ~BlasHandle() {
    if (h_) (void)cublasDestroy(h_);
  }
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;
  cublasHandle_t get() const { return h_; }

 private:
  cublasHandle_t h_ = nullptr;
};

}  // namespace cuda
}  // namespace muon
