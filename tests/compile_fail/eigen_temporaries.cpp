// SPDX-License-Identifier: MIT
// Must NOT compile for MUON_CASE 1 to 7: each passes the optimizer an Eigen
// temporary that owns its memory, which the optimizer would keep a view of
// after the temporary is gone (ASan: heap-use-after-free at the first step).
// tests/CMakeLists.txt compiles every case and expects the static_assert's
// message; MUON_CASE 0 (lvalues and temporary views of lasting memory) must
// compile, so a failure of the other cases is the temporary's, nothing else.
#include <muon/optimizer.hpp>

int main() {
  Eigen::MatrixXf W = Eigen::MatrixXf::Random(4, 6), dW = Eigen::MatrixXf::Zero(4, 6);
  muon::Optimizer<float> opt;
#if MUON_CASE == 0
  opt.add_param("w", W, dW);
  opt.add_param("block", W.block(0, 0, 2, 6), dW.block(0, 0, 2, 6));
  (void)muon::ParamView<float>::from(Eigen::Map<Eigen::MatrixXf>(W.data(), 4, 6));
  opt.set_grad("w", dW);
  opt.set_param("w", W);
#elif MUON_CASE == 1
  opt.add_param("w", (W * 2).eval(), dW);  // the parameter
#elif MUON_CASE == 2
  opt.add_param("w", W, Eigen::MatrixXf(dW));  // the gradient
#elif MUON_CASE == 3
  opt.add_param("w", W, dW);
  opt.set_grad("w", Eigen::MatrixXf::Zero(4, 6).eval());
#elif MUON_CASE == 4
  opt.add_param("w", W, dW);
  opt.set_param("w", Eigen::MatrixXf(W));
#elif MUON_CASE == 5
  (void)muon::ParamView<float>::from(Eigen::MatrixXf(W));
#elif MUON_CASE == 6
  Eigen::ArrayXXf A = W.array();
  opt.add_param("a", (A + 1.0f).eval(), dW.array());  // an Array; dW.array() views dW
#elif MUON_CASE == 7
  (void)muon::ParamView<float>::from((W * 2).eval());  // eval() returns a const Matrix
#endif
  return 0;
}
