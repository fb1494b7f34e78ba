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
///  - muon::cuda::Optimizer<P>: Muon + AdamW over device parameters, one CUDA
///    graph per step, state save/load        (backend/cuda/optimizer.hpp)
///  - the rules it shares with the CPU optimizer, Eigen-free: muon::LrAdjust,
///    muon::adjusted_lr, muon::MomentumKind, muon::Route, muon::RoutingRules,
///    muon::decide_route, muon::RoutingReport (policy.hpp), and the
///    checkpoint envelope (checkpoint_format.hpp)
///
/// See docs/cuda.md.

#ifndef __CUDACC__
#error "muon/cuda.hpp must be compiled by nvcc: include it from a .cu file and link muon::cuda"
#endif

#include "backend/cuda/common.hpp"
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/optimizer.hpp"
#include "backend/cuda/workspace.hpp"
#include "checkpoint_format.hpp"
#include "coefficients.hpp"
#include "newton_schulz.hpp"
#include "policy.hpp"
