// SPDX-License-Identifier: MIT
#pragma once
/// \file mlp.hpp
/// \brief A small fully connected classifier (ReLU hidden layers, softmax
/// cross-entropy) with hand-written forward and backward passes in Eigen.
///
/// Layout: a batch is one sample per column (features x batch); weights are
/// out x in and row-major, PyTorch's nn.Linear layout, so an optimizer can
/// view them as (out, in) tensors without copies and Muon's shape-based lr
/// adjustment sees fan-out and fan-in the right way round. Every product stays
/// one GEMM (W X, dZ Xᵀ, Wᵀ dZ); Eigen handles the mixed layouts itself.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace fashion_mnist {

/// What an optimizer needs to know to route a parameter.
enum class ParameterRole {
  input_matrix,   ///< first weight matrix (fan-in = image pixels)
  hidden_matrix,  ///< square-ish weight between hidden layers
  output_matrix,  ///< last weight matrix (classifier head)
  bias            ///< a bias vector
};

/// A non-owning view of one parameter and its gradient: a row-major
/// rows x cols matrix (weights: out x in) or a vector (cols == 1).
template <class T>
struct ParameterView {
  std::string name;
  T* value;
  T* grad;
  Eigen::Index rows, cols;
  ParameterRole role;
};

/// Mean loss and accuracy over a data set.
struct Evaluation {
  double loss = 0;
  double accuracy = 0;
};

template <class T>
class Mlp {
 public:
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  using WeightMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

  /// sizes = {inputs, hidden..., classes}; at least one layer. He-normal
  /// weights (std sqrt(2 / fan_in), right for ReLU), zero biases, seeded.
  Mlp(const std::vector<int>& sizes, std::uint64_t seed) : sizes_(sizes) {
    if (sizes.size() < 2) throw std::invalid_argument("Mlp: needs at least input and output sizes");
    for (int s : sizes)
      if (s < 1) throw std::invalid_argument("Mlp: every layer size must be >= 1");
    std::mt19937_64 rng(seed);
    const std::size_t layers = sizes.size() - 1;
    W_.resize(layers);
    b_.resize(layers);
    dW_.resize(layers);
    db_.resize(layers);
    for (std::size_t l = 0; l < layers; ++l) {
      std::normal_distribution<double> normal(0.0, std::sqrt(2.0 / sizes[l]));
      W_[l].resize(sizes[l + 1], sizes[l]);
      for (Eigen::Index j = 0; j < W_[l].cols(); ++j)
        for (Eigen::Index i = 0; i < W_[l].rows(); ++i) W_[l](i, j) = static_cast<T>(normal(rng));
      b_[l] = Vector::Zero(sizes[l + 1]);
      dW_[l] = WeightMatrix::Zero(W_[l].rows(), W_[l].cols());
      db_[l] = Vector::Zero(sizes[l + 1]);
    }
    pre_.resize(layers);
    act_.resize(layers);
  }

  std::size_t layers() const { return W_.size(); }
  const std::vector<int>& sizes() const { return sizes_; }
  WeightMatrix& weight(std::size_t l) { return W_[l]; }
  Vector& bias(std::size_t l) { return b_[l]; }
  const WeightMatrix& weight_grad(std::size_t l) const { return dW_[l]; }
  const Vector& bias_grad(std::size_t l) const { return db_[l]; }

  /// Every parameter with its gradient, named "layerN.weight" / "layerN.bias".
  std::vector<ParameterView<T>> parameters() {
    std::vector<ParameterView<T>> out;
    const std::size_t last = layers() - 1;
    for (std::size_t l = 0; l < layers(); ++l) {
      const ParameterRole role = l == last ? ParameterRole::output_matrix
                                 : l == 0  ? ParameterRole::input_matrix
                                           : ParameterRole::hidden_matrix;
      out.push_back({"layer" + std::to_string(l) + ".weight", W_[l].data(), dW_[l].data(),
                     W_[l].rows(), W_[l].cols(), role});
      out.push_back({"layer" + std::to_string(l) + ".bias", b_[l].data(), db_[l].data(),
                     b_[l].rows(), 1, ParameterRole::bias});
    }
    return out;
  }

  /// Logits (classes x batch) for a batch of inputs (features x batch).
  template <class Derived>
  const Matrix& forward(const Eigen::MatrixBase<Derived>& X) {
    if (X.rows() != sizes_.front())
      throw std::invalid_argument("Mlp::forward: input has " + std::to_string(X.rows()) +
                                  " rows, the model expects " + std::to_string(sizes_.front()));
    for (std::size_t l = 0; l < layers(); ++l) {
      pre_[l].resize(W_[l].rows(), X.cols());
      if (l == 0)
        pre_[l].noalias() = W_[l] * X;
      else
        pre_[l].noalias() = W_[l] * act_[l - 1];
      pre_[l].colwise() += b_[l];
      if (l + 1 < layers()) act_[l] = pre_[l].cwiseMax(T(0));
    }
    return pre_.back();
  }

  /// Mean softmax cross-entropy of the batch; fills every gradient (mean
  /// over the batch). `labels` has X.cols() entries.
  template <class Derived>
  double loss_and_gradient(const Eigen::MatrixBase<Derived>& X, const int* labels) {
    const Matrix& logits = forward(X);
    const Eigen::Index batch = X.cols();
    // dL/dlogits = (softmax - onehot) / batch; the stable log-sum-exp
    // subtracts each column's max before exponentiating.
    delta_.resize(logits.rows(), batch);
    double loss = 0;
    for (Eigen::Index j = 0; j < batch; ++j) {
      const T peak = logits.col(j).maxCoeff();
      delta_.col(j) = (logits.col(j).array() - peak).exp();
      const T total = delta_.col(j).sum();
      loss +=
          std::log(static_cast<double>(total)) - static_cast<double>(logits(labels[j], j) - peak);
      delta_.col(j) /= total;
      delta_(labels[j], j) -= T(1);
    }
    delta_ /= static_cast<T>(batch);
    for (std::size_t l = layers(); l-- > 0;) {
      if (l == 0)
        dW_[l].noalias() = delta_ * X.transpose();
      else
        dW_[l].noalias() = delta_ * act_[l - 1].transpose();
      db_[l] = delta_.rowwise().sum();
      if (l > 0) {
        back_.resize(W_[l].cols(), batch);
        back_.noalias() = W_[l].transpose() * delta_;
        // ReLU passes the gradient where its input was positive.
        delta_ = (pre_[l - 1].array() > T(0)).select(back_, T(0));
      }
    }
    return loss / static_cast<double>(batch);
  }

  /// Mean loss and accuracy over all columns of `X`, in chunks (no gradients).
  Evaluation evaluate(const Matrix& X, const std::vector<int>& labels, Eigen::Index chunk = 2000) {
    Evaluation e;
    const Eigen::Index n = X.cols();
    for (Eigen::Index start = 0; start < n; start += chunk) {
      const Eigen::Index len = std::min(chunk, n - start);
      const Matrix& logits = forward(X.middleCols(start, len));
      for (Eigen::Index j = 0; j < len; ++j) {
        const int label = labels[static_cast<std::size_t>(start + j)];
        Eigen::Index best = 0;
        const T peak = logits.col(j).maxCoeff(&best);
        const double lse =
            std::log(static_cast<double>((logits.col(j).array() - peak).exp().sum()));
        e.loss += lse - static_cast<double>(logits(label, j) - peak);
        e.accuracy += best == label ? 1.0 : 0.0;
      }
    }
    e.loss /= static_cast<double>(n);
    e.accuracy /= static_cast<double>(n);
    return e;
  }

 private:
  std::vector<int> sizes_;
  std::vector<WeightMatrix> W_, dW_;
  std::vector<Vector> b_, db_;
  std::vector<Matrix> pre_, act_;  // per layer: W a + b, and its ReLU (hidden layers)
  Matrix delta_, back_;
};

}  // namespace fashion_mnist
