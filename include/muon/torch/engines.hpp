// SPDX-License-Identifier: MIT
#pragma once
/// \file torch/engines.hpp
/// \brief The CPU engines of a muon::torch::Muon: one eigen::Engine per
/// dtype present (float, double, bfloat16, half), each made at the first
/// parameter of its dtype, every one over the facade's single optim::Core
/// (a job per parameter of that dtype); and what crosses all of them: the
/// checkpoint's buffer dtype, the buffers written and restored, the metrics.

#include <ATen/ATen.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../backend/eigen/engine.hpp"
#include "../backend/eigen/metrics.hpp"
#include "../checkpoint.hpp"
#include "../error.hpp"
#include "../optim/core.hpp"
#include "../param_view.hpp"
#include "../scalar.hpp"
#include "tensors.hpp"

namespace muon {
namespace torch {

/// The parameter scalar T of an eigen::Engine<T, B> (of a generic lambda's argument).
template <class E>
struct engine_scalar;
template <class T, class B>
struct engine_scalar<eigen::Engine<T, B>> {
  using type = T;
};
template <class E>
using engine_scalar_t = typename engine_scalar<std::decay_t<E>>::type;

class Engines {
 public:
  template <class T>
  using Engine = eigen::Engine<T>;
  /// A checkpoint's dtypes: of the buffers, of the parameters.
  using Dtypes = std::pair<checkpoint::Dtype, checkpoint::Dtype>;

  /// f(engine) for each engine made, in the order float, double, bfloat16,
  /// half (the engines change, not this set of them).
  template <class F>
  void each(F&& f) const {
    std::apply([&f](const auto&... e) { ((e ? f(*e) : void()), ...); }, engines_);
  }
  std::size_t count() const {
    std::size_t n = 0;
    each([&n](const auto&) { ++n; });
    return n;
  }

  /// The engine of dtype T, made (with `threads` threads) if there is none.
  template <class T>
  Engine<T>& make(int threads) {
    auto& e = std::get<std::unique_ptr<Engine<T>>>(engines_);
    if (!e) {
      auto made = std::make_unique<Engine<T>>();
      made->set_threads(threads);
      e = std::move(made);
    }
    return *e;
  }
  /// The engine of dtype T; muon::Error naming "engine" if there is none.
  template <class T>
  Engine<T>& get() const {
    const auto& e = std::get<std::unique_ptr<Engine<T>>>(engines_);
    if (!e)
      detail::fail("engine", std::string("there are no ") + scalar_traits<T>::name + " parameters");
    return *e;
  }

  /// Registers tensor p (a checked parameter named `name`): its record in
  /// the core (refused, changing nothing, for memory shared with another
  /// parameter of any dtype), then a job of its dtype's engine (made now,
  /// with `threads`, at the dtype's first parameter); the record is undone
  /// when the engine refuses. Returns the job's index in its engine.
  std::size_t add(optim::Core& core, const at::Tensor& p, const std::string& name,
                  const ParamOptions& options, int threads) {
    return tensors::visit_dtype(p.scalar_type(), [&](auto s) {
      using T = typename decltype(s)::type;
      const ParamView<T> pv = tensors::view_of<T>(p, name, "param");
      Engine<T>& e = make<T>(threads);
      typename Engine<T>::Part part;
      part.param = core.add_param(name, pv.tensor_shape(), options, pv.footprint(name));
      part.param_memory = pv.memory();
      try {
        return e.add_job(core, part);
      } catch (const std::bad_alloc&) {
        core.remove_last_param();
        detail::fail("param", "'" + name + "' " + pv.shape_string() +
                                  ": its optimizer state cannot be allocated (out of memory)");
      } catch (...) {
        core.remove_last_param();
        throw;
      }
    });
  }

  /// Points job `job` (core parameter i, named `name`) at tensor p, when it
  /// `moved` (libtorch's set_data: the same shape required, the core checks
  /// the new memory), and at `grad` (of p's layout; undefined: none).
  void bind(optim::Core& core, std::size_t i, std::size_t job, const std::string& name,
            const at::Tensor& p, bool moved, const at::Tensor& grad) const {
    tensors::visit_dtype(p.scalar_type(), [&](auto s) {
      using T = typename decltype(s)::type;
      Engine<T>& e = get<T>();
      if (moved) {
        const ParamView<T> pv = tensors::view_of<T>(p, name, "param");
        if (pv.tensor_shape() != core.param(i).shape)
          detail::fail("param", "'" + name + "' has shape " + pv.shape_string() +
                                    ", registered as " + core.param(i).shape.str());
        core.set_param_memory(i, pv.footprint(name));  // refused if another parameter's
        e.set_param(job, pv.memory());
      }
      e.set_grad(
          job, grad.defined() ? tensors::view_of<T>(grad, name, "grad").memory() : ParamView<T>());
    });
  }

  /// QK-Clip's scaling of rows [row, row + rows) of parameter p's (out,
  /// in) matrix (`columns`: p is column-major) by `factor`.
  static void scale_rows(const at::Tensor& p, const std::string& name, bool columns,
                         std::int64_t row, std::int64_t rows, double factor) {
    tensors::visit_dtype(p.scalar_type(), [&](auto s) {
      using T = typename decltype(s)::type;
      Engine<T>::scale_rows(tensors::view_of<T>(p, name, "param"), columns, row, rows, factor);
    });
  }

  /// The dtypes of a checkpoint of every engine: theirs when they share
  /// them; double buffers (every float value exact) when float and double
  /// buffers meet.
  Dtypes checkpoint_dtypes() const {
    std::vector<Dtypes> each_one;
    each([&each_one](const auto& e) {
      using T = engine_scalar_t<decltype(e)>;
      each_one.emplace_back(checkpoint::dtype_of<compute_t<T>>(), checkpoint::dtype_of<T>());
    });
    if (each_one.empty()) return {checkpoint::Dtype::float32, checkpoint::Dtype::float32};
    for (const Dtypes& d : each_one)
      if (d.first != each_one.front().first)
        return {checkpoint::Dtype::float64, each_one.front().second};
    return each_one.front();
  }

  /// Writes job `job` of the dtype-t engine's buffers, named `names`, as
  /// elements of `dtype` (its buffers' own, or double).
  void write_buffers(checkpoint::Writer& w, at::ScalarType t, std::size_t job,
                     const std::vector<const char*>& names, checkpoint::Dtype dtype) const {
    tensors::visit_dtype(t, [&](auto s) {
      using B = compute_t<typename decltype(s)::type>;
      std::vector<double> wide;
      for (std::size_t k = 0; k < names.size(); ++k) {
        const auto& buf = get<typename decltype(s)::type>().buffer(job, k);
        const void* data = buf.data();
        if (dtype != checkpoint::dtype_of<B>()) {  // float widened to double: exact
          wide.assign(buf.data(), buf.data() + buf.size());
          data = wide.data();
        }
        optim::state_io::write_buffer(w, names[k], dtype, std::uint64_t(buf.size()), data);
      }
    });
  }

  /// Restores every engine's buffers from a checkpoint the core matched:
  /// all decode aside, then all adopt (nothing changes when one fails).
  void load(const optim::Core& core, const optim::Core::Matched& m) const {
    std::tuple<typename Engine<float>::Decoded, typename Engine<double>::Decoded,
               typename Engine<Eigen::bfloat16>::Decoded, typename Engine<Eigen::half>::Decoded>
        aside;
    each([&](const auto& e) {
      std::get<typename Engine<engine_scalar_t<decltype(e)>>::Decoded>(aside) = e.decode(core, m);
    });
    each([&](auto& e) {
      e.adopt(std::move(std::get<typename Engine<engine_scalar_t<decltype(e)>>::Decoded>(aside)));
    });
  }

  /// A copy of buffer k of job `job` of the dtype-t engine, rows x cols in
  /// its memory order, of the buffers' dtype.
  at::Tensor buffer(at::ScalarType t, std::size_t job, std::size_t k) const {
    return tensors::visit_dtype(t, [&](auto s) {
      using B = compute_t<typename decltype(s)::type>;
      const auto& buf = get<typename decltype(s)::type>().buffer(job, k);
      at::Tensor out = at::empty({std::int64_t(buf.rows()), std::int64_t(buf.cols())},
                                 c10::CppTypeToScalarType<B>::value);
      std::memcpy(out.data_ptr(), buf.data(), std::size_t(buf.size()) * sizeof(B));
      return out;
    });
  }

  /// Every job's metrics after a write(core, true): params[i] for core parameter i.
  void metrics(const optim::Core& core, std::vector<ParamMetrics>& params) const {
    params.resize(core.size());
    each([&](auto& e) {
      for (std::size_t j = 0; j < e.job_count(); ++j) e.metrics(core, j, params[e.param_of(j)]);
    });
  }

 private:
  std::tuple<std::unique_ptr<Engine<float>>, std::unique_ptr<Engine<double>>,
             std::unique_ptr<Engine<Eigen::bfloat16>>, std::unique_ptr<Engine<Eigen::half>>>
      engines_;
};

}  // namespace torch
}  // namespace muon
