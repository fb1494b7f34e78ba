// SPDX-License-Identifier: MIT
#pragma once
/// \file cuda.hpp
/// \brief Umbrella header of the CUDA backend (target muon::cuda).
///
/// Include it from a .cu file compiled by nvcc: the kernels are templates in
/// .cuh headers instantiated in your translation unit (header-only library).
/// The CPU API (muon/muon.hpp) never includes this file.
///
///  - muon::cuda::MatrixView / BatchedMatrixView / DeviceMatrix / Allocator,
///    check() and MUON_CUDA_CHECK            (backend/cuda/common.hpp)
///  - muon::cuda::Workspace<T> (CUTLASS-style), Orthogonalizer<T>,
///    orthogonalize(in, out, options, stream) (backend/cuda/workspace.hpp)
///  - muon::cuda::Optimizer<P>: the optimizer core (optim/core.hpp: options,
///    routing, groups, schedules, checkpoints; the same as the CPU
///    muon::Optimizer's) over device parameters, one CUDA graph per step
///    (backend/cuda/optimizer.hpp; its device state, per-step values,
///    launches and graph in device_state.hpp, step_scalars.hpp,
///    step_launch.hpp and step_graph.hpp; its kernels, over the step rules
///    of optim/step_rules.hpp, in kernels.cuh)
///
/// See docs/cuda.md.

#ifndef __CUDACC__
#error "muon/cuda.hpp must be compiled by nvcc: include it from a .cu file and link muon::cuda"
#endif

#include "backend/cuda/common.hpp"
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/optimizer.hpp"
#include "backend/cuda/workspace.hpp"
#include "coefficients.hpp"
#include "newton_schulz.hpp"
#include "optim/core.hpp"
