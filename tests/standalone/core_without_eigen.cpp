// SPDX-License-Identifier: MIT
// Compiled with only include/ on the include path (no Eigen, no CUDA): the
// optimizer core, its rules, options, registry and checkpoint schema, the
// Newton–Schulz options and the loop must not need either.
#include <muon/coefficients.hpp>
#include <muon/error.hpp>
#include <muon/lr_schedule.hpp>
#include <muon/newton_schulz.hpp>
#include <muon/ns_options.hpp>
#include <muon/optim/checkpoint_format.hpp>
#include <muon/optim/core.hpp>
#include <muon/optim/host_state.hpp>
#include <muon/optim/options.hpp>
#include <muon/optim/registry.hpp>
#include <muon/optim/rules.hpp>
#include <muon/optim/state_io.hpp>

#if __has_include(<Eigen/Core>)
#error "Eigen is on the include path: this check must compile without it"
#endif
#if __has_include(<cuda_runtime.h>)
#error "CUDA is on the include path: this check must compile without it"
#endif

int main() {
  muon::optim::Core core;
  muon::optim::TensorShape shape;
  shape.ndim = 2;
  shape.dims = {{4, 3, 0, 0}};
  core.add_param("w", shape, muon::ParamOptions());
  core.begin_step();
  return core.finish_step().updated == 1 ? 0 : 1;
}
