// SPDX-License-Identifier: MIT
#pragma once
/// \file param_view.hpp
/// \brief muon::ParamView<T>: a non-owning view of a tensor in caller memory,
/// the currency of the CPU optimizer's boundary (muon::Optimizer,
/// dist::Optimizer, muon::torch), and the guards that keep a view from
/// outliving an Eigen temporary.

#include <Eigen/Core>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "error.hpp"
#include "optim/registry.hpp"

namespace muon {

namespace detail {

template <class E, class = void>
struct owns_memory : std::false_type {};
template <class E>
struct owns_memory<E, std::void_t<typename E::PlainObject>>
    : std::is_base_of<Eigen::PlainObjectBase<typename E::PlainObject>, E> {};

/// True when an Eigen argument deduced as E (a forwarding reference's
/// parameter) is a temporary that owns its memory, a Matrix or Array
/// rvalue: a view of it dangles once the call returns. A temporary Map,
/// Block or Ref views memory that outlives it and is not one.
template <class E>
struct owning_temporary : std::integral_constant<bool, !std::is_lvalue_reference<E>::value &&
                                                           owns_memory<std::decay_t<E>>::value> {};

/// True for Eigen objects (what add_param/set_grad/set_param accept besides views).
template <class E>
struct is_eigen_object : std::is_base_of<Eigen::EigenBase<std::decay_t<E>>, std::decay_t<E>> {};

template <class>
inline constexpr bool dependent_false = false;

}  // namespace detail

/// A non-owning view of a tensor in caller memory: up to 4 dimensions.
///
/// Raw pointers are read ROW-MAJOR (the last index moves fastest, as in
/// PyTorch): `{ptr, {out, in}}`. Eigen's matrices are COLUMN-major by
/// default, so never pass `{M.data(), {M.rows(), M.cols()}}` for an
/// `Eigen::MatrixXf M`: use ParamView::from(M) (or add_param(name, M, dM)),
/// which records the storage order. A 2-D view may have a stride larger than
/// its rows' (or columns') length: a sub-matrix or padded storage. Other
/// ranks must be contiguous. A null `data` means "absent" (a gradient that
/// does not exist this step).
template <class T>
struct ParamView {
  using Index = Eigen::Index;
  using MatrixMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                               Eigen::Unaligned, Eigen::OuterStride<>>;

  T* data = nullptr;
  /// Number of dimensions, 0 (a scalar) to 4.
  int ndim = 0;
  /// Sizes of the first `ndim` dimensions (logical: (out, in) for a matrix).
  std::array<Index, 4> shape{{0, 0, 0, 0}};
  /// 2-D only: elements between the starts of consecutive rows (row-major)
  /// or columns (column-major); 0 means contiguous.
  Index stride = 0;
  /// 2-D only: element (i, j) at i + j * stride (Eigen's default,
  /// Layout::column_major) instead of i * stride + j.
  bool column_major = false;

  ParamView() = default;
  /// A contiguous row-major tensor of the given shape (at most 4 sizes).
  ParamView(T* ptr, std::initializer_list<Index> dims) : data(ptr) {
    if (dims.size() > 4) detail::fail("shape", "at most 4 dimensions are supported");
    for (Index d : dims) shape[static_cast<std::size_t>(ndim++)] = d;
  }
  /// A rows x cols matrix (rows = outputs) in `layout`: row-major, rows
  /// starting `stride` elements apart, or column-major, columns starting
  /// `stride` apart (0: contiguous).
  static ParamView matrix(T* ptr, Index rows, Index cols, Index stride = 0,
                          Layout layout = Layout::row_major) {
    ParamView v(ptr, {rows, cols});
    v.stride = stride;
    v.column_major = layout == Layout::column_major;
    return v;
  }
  /// The view of an Eigen matrix, map, block or Ref with scalar T and unit
  /// inner stride, in whichever storage order it has.
  template <class Derived>
  static ParamView from(const Eigen::DenseBase<Derived>& m) {
    static_assert(std::is_same<typename Derived::Scalar, T>::value,
                  "muon::ParamView<T>::from: the Eigen object's scalar must be T");
    static_assert((int(Eigen::internal::traits<Derived>::Flags) & Eigen::DirectAccessBit) != 0,
                  "muon::ParamView::from needs an Eigen object with direct memory access "
                  "(a Matrix, Map, Ref or Block of one), not an expression");
    static_assert((int(Eigen::internal::traits<Derived>::Flags) & Eigen::LvalueBit) != 0,
                  "muon::ParamView::from needs writable memory (not a Map of const)");
    auto& d = const_cast<Derived&>(m.derived());
    if (d.innerStride() != 1)
      detail::fail("view", "an Eigen object with an inner stride other than 1 is not supported");
    return matrix(d.data(), d.rows(), d.cols(), d.outerStride(),
                  Derived::IsRowMajor ? Layout::row_major : Layout::column_major);
  }
  /// A Matrix or Array temporary does not compile: the view would dangle.
  template <class Derived>
  static ParamView from(const Eigen::PlainObjectBase<Derived>&&) {
    static_assert(detail::dependent_false<Derived>,
                  "muon::ParamView::from keeps a view of the memory: pass an lvalue (a Matrix, "
                  "Map, Ref or Block that outlives the view), not a temporary");
    return ParamView();
  }
  /// A gradient that is absent (the parameter is skipped while it is).
  static ParamView absent() { return ParamView(); }

  bool present() const { return data != nullptr; }
  Layout layout() const { return column_major ? Layout::column_major : Layout::row_major; }

  /// Product of the sizes (1 for a scalar).
  Index numel() const {
    Index n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[static_cast<std::size_t>(i)];
    return n;
  }
  /// The core's description of this tensor.
  optim::TensorShape tensor_shape() const {
    optim::TensorShape s;
    s.ndim = ndim;
    for (int i = 0; i < ndim && i < 4; ++i)
      s.dims[static_cast<std::size_t>(i)] = shape[static_cast<std::size_t>(i)];
    s.column_major = column_major;
    return s;
  }
  /// The matrix the optimizer updates, as it lies in memory (row-major):
  /// out x in for 2-D (in x out for a column-major one), b*r x c for 3-D,
  /// out x in*kh*kw for 4-D, 1 x n for vectors and scalars.
  Index memory_rows() const {
    switch (ndim) {
      case 2:
        return column_major ? shape[1] : shape[0];
      case 3:
        return shape[0] * shape[1];
      case 4:
        return shape[0];
      default:
        return 1;
    }
  }
  Index memory_cols() const {
    switch (ndim) {
      case 0:
        return 1;
      case 1:
        return shape[0];
      case 2:
        return column_major ? shape[0] : shape[1];
      case 3:
        return shape[2];
      default:
        return shape[1] * shape[2] * shape[3];
    }
  }
  Index outer_stride() const { return stride > 0 ? stride : memory_cols(); }

  /// The memory matrix as a 2-D row-major view of its own (what the CPU
  /// engine steps: eigen::Engine's parts).
  ParamView memory() const {
    return present() ? matrix(data, memory_rows(), memory_cols(), outer_stride()) : ParamView();
  }

  /// Where the elements lie (the optimizer refuses parameters whose memory
  /// overlaps); throws muon::Error naming `name` for a shape the core
  /// refuses or a view that would run past the end of the address space.
  optim::MemoryFootprint footprint(const std::string& name) const {
    optim::Registry::check_shape(name, tensor_shape());  // the sizes below cannot wrap
    return optim::MemoryFootprint::strided(name, data, std::uint64_t(memory_rows()),
                                           std::uint64_t(memory_cols()),
                                           std::uint64_t(outer_stride()), sizeof(T));
  }

  /// The memory matrix (memory_rows x memory_cols, row-major) as an Eigen::Map.
  MatrixMap matrix() const {
    return MatrixMap(data, memory_rows(), memory_cols(), Eigen::OuterStride<>(outer_stride()));
  }

  /// "(64, 3, 3, 3)".
  std::string shape_string() const { return tensor_shape().str(); }

  /// Throws muon::Error naming `what` ("param", "grad") and parameter
  /// `name` unless this view can be registered: 0 to 4 dimensions, sizes
  /// >= 1, column-major only in 2-D, a stride only in 2-D and at least a
  /// row's (column's) length.
  void check(const std::string& name, const char* what) const {
    if (!(ndim >= 0 && ndim <= 4)) detail::fail(what, "'" + name + "' must have 0 to 4 dimensions");
    if (column_major && ndim != 2)
      detail::fail(what, "'" + name + "': only a 2-D view can be column-major");
    optim::Registry::check_shape(name, tensor_shape());
    if (stride != 0) {
      if (ndim != 2) detail::fail(what, "'" + name + "': a stride needs a 2-D view");
      if (stride < memory_cols())
        detail::fail(what, "'" + name + "': the stride " + std::to_string(stride) +
                               " is shorter than a " + (column_major ? "column" : "row") + " (" +
                               std::to_string(memory_cols()) + ")");
    }
  }
};

}  // namespace muon
