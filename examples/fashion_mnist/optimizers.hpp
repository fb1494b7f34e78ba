// SPDX-License-Identifier: MIT
#pragma once
/// \file optimizers.hpp
/// \brief The optimizers the example compares, behind one small interface:
/// muon::Optimizer (a hybrid of a Muon-family variant and AdamW, or every
/// parameter routed to AdamW) and SGD with momentum, a baseline written here.
///
/// Every optimizer sees the model through ParameterView (pointers into the
/// model's own buffers), so nothing is copied per step. Each applies the same
/// muon::LrSchedule to its base learning rate.

#include <Eigen/Core>
#include <cstdint>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <muon/muon.hpp>
#include <muon/optimizer.hpp>

#include "mlp.hpp"

namespace fashion_mnist {

template <class T>
class TrainOptimizer {
 public:
  virtual ~TrainOptimizer() = default;
  /// One update of every parameter from its current gradient.
  virtual void step() = 0;
  /// A printable description of which parameter gets which update.
  virtual std::string routing_table() const = 0;
};

/// SGD with (Nesterov) momentum and coupled L2 weight decay, torch.optim.SGD's
/// form: g' = g + wd p; b = mu b + g'; p -= lr (nesterov ? g' + mu b : b).
template <class T>
class SgdMomentum final : public TrainOptimizer<T> {
 public:
  struct Options {
    double lr = 0.05;
    double momentum = 0.9;
    bool nesterov = true;
    double weight_decay = 0.0;
  };

  SgdMomentum(std::vector<ParameterView<T>> params, Options opt, muon::LrSchedule schedule)
      : params_(std::move(params)), opt_(opt), schedule_(schedule) {
    if (!(opt.lr >= 0) || !(opt.momentum >= 0 && opt.momentum < 1) || !(opt.weight_decay >= 0))
      throw std::invalid_argument(
          "SgdMomentum: need lr >= 0, momentum in [0, 1) and weight_decay >= 0");
    schedule_.validate();
    for (const auto& p : params_) buffers_.push_back(Buffer::Zero(p.rows * p.cols));
  }

  void step() override {
    const T lr = static_cast<T>(opt_.lr * schedule_.factor(steps_++));
    const T mu = static_cast<T>(opt_.momentum);
    const T wd = static_cast<T>(opt_.weight_decay);
    for (std::size_t i = 0; i < params_.size(); ++i) {
      // Elementwise only, so the flat view of the row-major storage suffices.
      const Eigen::Index n = params_[i].rows * params_[i].cols;
      Eigen::Map<Buffer> p(params_[i].value, n);
      const Eigen::Map<const Buffer> g(params_[i].grad, n);
      Buffer& b = buffers_[i];
      b = mu * b + g + wd * p;
      if (opt_.nesterov)
        p -= lr * (g + wd * p + mu * b);
      else
        p -= lr * b;
    }
  }

  std::string routing_table() const override {
    return "every parameter: SGD, momentum " + std::to_string(opt_.momentum) +
           (opt_.nesterov ? " (Nesterov)" : "") + ", L2 weight decay " +
           std::to_string(opt_.weight_decay) + "\n";
  }

 private:
  using Buffer = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  std::vector<ParameterView<T>> params_;
  Options opt_;
  muon::LrSchedule schedule_;
  std::vector<Buffer> buffers_;
  std::int64_t steps_ = 0;
};

/// muon::Optimizer over the model's buffers: weight matrices whose role is in
/// `muon_roles` go to Muon (in the variant `muon.variant` names: Muon,
/// NorMuon or AdaMuon), everything else (classifier head, biases, and the
/// first layer unless asked) to AdamW. An empty `muon_roles` gives plain
/// AdamW with the library's AdamW step.
template <class T>
class LibraryOptimizer final : public TrainOptimizer<T> {
 public:
  LibraryOptimizer(const std::vector<ParameterView<T>>& params, const muon::MuonGroupOptions& muon,
                   const muon::AdamWOptions& adamw, const std::set<ParameterRole>& muon_roles,
                   const muon::LrSchedule& schedule)
      : optimizer_(muon, adamw), variant_(muon.variant), any_muon_(false) {
    optimizer_.set_lr_schedule(schedule);
    for (const auto& p : params) {
      const bool to_muon = p.role != ParameterRole::bias && muon_roles.count(p.role) > 0;
      muon::ParamOptions options;
      // Explicit routes: the example decides, not the name-based rules.
      options.route = to_muon ? muon::Route::muon : muon::Route::adamw;
      any_muon_ = any_muon_ || to_muon;
      if (p.role == ParameterRole::bias)
        optimizer_.add_param(p.name, muon::ParamView<T>(p.value, {p.rows}),
                             muon::ParamView<T>(p.grad, {p.rows}), options);
      else
        optimizer_.add_param(p.name, muon::ParamView<T>::matrix(p.value, p.rows, p.cols),
                             muon::ParamView<T>::matrix(p.grad, p.rows, p.cols), options);
    }
  }

  void step() override { optimizer_.step(); }

  /// The library's routing report, and which Muon variant the Muon route runs.
  std::string routing_table() const override {
    std::string table = optimizer_.routing().table();
    if (any_muon_)
      table += std::string("muon route: variant ") + muon::muon_variant_name(variant_) + "\n";
    return table;
  }

 private:
  muon::Optimizer<T> optimizer_;
  muon::MuonVariant variant_;
  bool any_muon_;
};

}  // namespace fashion_mnist
