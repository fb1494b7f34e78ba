// SPDX-License-Identifier: MIT
#pragma once
/// \file torch/tensors.hpp
/// \brief libtorch tensors as the library's ParamViews: the one map from
/// libtorch's dtypes to the library's scalars (visit_dtype), the layouts
/// used in place (dense, or a 2-D row or column slice), and the checks that
/// refuse any other tensor with muon::Error naming the parameter.

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>

#include "../error.hpp"
#include "../optim/step_report.hpp"
#include "../param_view.hpp"
#include "../scalar.hpp"

namespace muon {
namespace torch {
namespace tensors {

/// A scalar type as a value (the argument visit_dtype passes).
template <class T>
struct Scalar {
  using type = T;
};

/// f(Scalar<T>{}) for the library scalar T of dtype `t` (float, double,
/// Eigen::bfloat16, Eigen::half): the one map between the two. Any other
/// dtype throws muon::Error naming "dtype".
template <class F>
decltype(auto) visit_dtype(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat:
      return f(Scalar<float>{});
    case at::kDouble:
      return f(Scalar<double>{});
    case at::kBFloat16:
      return f(Scalar<Eigen::bfloat16>{});
    case at::kHalf:
      return f(Scalar<Eigen::half>{});
    default:
      break;
  }
  detail::fail("dtype", std::string(c10::toString(t)) +
                            " is not supported (supported: float, double, bfloat16, half)");
}

inline bool supported(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}
/// The library's name of a supported dtype (float, double, bfloat16, half).
inline std::string dtype_name(at::ScalarType t) {
  return visit_dtype(
      t, [](auto s) { return std::string(scalar_traits<typename decltype(s)::type>::name); });
}

/// The storage types a refused step names for a parameter of dtype t
/// (its buffers', its own: muon::Optimizer's).
inline optim::step::StorageTypes storage_types(at::ScalarType t) {
  return visit_dtype(t, [](auto s) {
    using T = typename decltype(s)::type;
    return optim::step::StorageTypes{scalar_traits<compute_t<T>>::name, scalar_traits<T>::name};
  });
}

/// Bytes as a 1-D byte tensor (an archive's value), and back.
inline at::Tensor byte_tensor(const std::string& bytes) {
  at::Tensor blob = at::empty({std::int64_t(bytes.size())}, at::kByte);
  if (!bytes.empty()) std::memcpy(blob.data_ptr<std::uint8_t>(), bytes.data(), bytes.size());
  return blob;
}
inline std::string bytes_of(const at::Tensor& blob) {
  const at::Tensor b = blob.contiguous();
  return std::string(reinterpret_cast<const char*>(b.data_ptr<std::uint8_t>()),
                     std::size_t(b.numel()));
}

inline std::string describe(const at::Tensor& t) {
  std::ostringstream os;
  os << "sizes " << t.sizes() << ", strides " << t.strides();
  return os.str();
}

/// How a usable tensor lies in memory: dense (contiguous, row-major), or a
/// 2-D matrix whose rows (row-major) or columns (column-major) start
/// `stride` elements apart.
struct Layout {
  enum Kind { dense, rows, columns } kind = dense;
  std::int64_t stride = 0;
};
inline std::optional<Layout> layout_of(const at::Tensor& t) {
  if (t.dim() > 4) return std::nullopt;
  if (t.is_contiguous()) return Layout{Layout::dense, 0};
  if (t.dim() == 2 && t.stride(1) == 1 && t.stride(0) >= t.size(1))
    return Layout{Layout::rows, t.stride(0)};
  if (t.dim() == 2 && t.stride(0) == 1 && t.stride(1) >= t.size(0))
    return Layout{Layout::columns, t.stride(1)};
  return std::nullopt;
}
/// The layout, or muon::Error naming `what` ("param" or "grad") and the parameter.
inline Layout usable_layout(const at::Tensor& t, const std::string& name, const char* what) {
  if (t.dim() > 4)
    detail::fail(what, "'" + name + "' has " + std::to_string(t.dim()) +
                           " dimensions; at most 4 are supported");
  if (const auto l = layout_of(t)) return *l;
  detail::fail(what, "'" + name + "' is not contiguous (" + describe(t) +
                         "): only dense tensors and 2-D row or column slices are used in place");
}

/// The tensor's memory as a ParamView<T> (T the library scalar of its
/// dtype), without a copy; fails naming `what` and the parameter when it
/// cannot be one.
template <class T>
ParamView<T> view_of(const at::Tensor& t, const std::string& name, const char* what) {
  const Layout l = usable_layout(t, name, what);
  T* data = static_cast<T*>(t.data_ptr());
  if (l.kind == Layout::rows) return ParamView<T>::matrix(data, t.size(0), t.size(1), l.stride);
  if (l.kind == Layout::columns)
    return ParamView<T>::matrix(data, t.size(0), t.size(1), l.stride, ::muon::Layout::column_major);
  ParamView<T> v;
  v.data = data;
  v.ndim = int(t.dim());
  for (int i = 0; i < v.ndim; ++i) v.shape[std::size_t(i)] = t.size(i);
  return v;
}

/// A parameter the optimizer can update in place: defined, dense, real, on
/// the CPU, of a supported dtype.
inline void check_param(const at::Tensor& p, const std::string& name) {
  if (!p.defined()) detail::fail("param", "'" + name + "' is an undefined tensor");
  if (!p.is_cpu())
    detail::fail("param", "'" + name + "' is on " + p.device().str() +
                              ": muon::torch::Muon updates CPU tensors (CUDA tensors: "
                              "muon::cuda::Optimizer, docs/torch.md)");
  if (p.is_sparse()) detail::fail("param", "'" + name + "' is sparse");
  if (p.is_complex())
    detail::fail("param", "'" + name + "' is complex (" + c10::toString(p.scalar_type()) +
                              "): Muon needs real tensors");
  if (!supported(p.scalar_type()))
    detail::fail("param", "'" + name + "' has dtype " + c10::toString(p.scalar_type()) +
                              " (supported: float, double, bfloat16, half)");
}

/// A gradient of parameter p: dense, on its device, of its dtype and sizes.
inline void check_grad(const at::Tensor& p, const at::Tensor& g, const std::string& name) {
  if (g.is_sparse()) detail::fail("grad", "'" + name + "' is sparse: Muon needs dense gradients");
  if (g.device() != p.device())
    detail::fail("grad", "'" + name + "' is on " + g.device().str() + ", the parameter on " +
                             p.device().str());
  if (g.scalar_type() != p.scalar_type())
    detail::fail("grad", "'" + name + "' has dtype " + c10::toString(g.scalar_type()) +
                             ", the parameter " + c10::toString(p.scalar_type()));
  if (g.sizes() != p.sizes()) {
    std::ostringstream os;
    os << "'" << name << "' has sizes " << g.sizes() << ", the parameter " << p.sizes();
    detail::fail("grad", os.str());
  }
}

/// A gradient with its parameter's layout: the gradient itself when its
/// layout is the parameter's, else a copy in the parameter's layout (the
/// caller keeps it until the end of the step).
inline at::Tensor in_param_layout(const at::Tensor& p, const at::Tensor& g) {
  if (g.strides() == p.strides() || (g.is_contiguous() && p.is_contiguous())) return g;
  at::Tensor copy = at::empty_strided(p.sizes(), p.strides(), g.options());
  copy.copy_(g);
  return copy;
}

}  // namespace tensors
}  // namespace torch
}  // namespace muon
