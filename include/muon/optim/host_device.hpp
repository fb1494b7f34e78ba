// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/host_device.hpp
/// \brief MUON_HOST_DEVICE: marks a function callable from CPU code and from
/// CUDA kernels (`__host__ __device__` under nvcc, nothing otherwise), so the
/// per-element rules of optim/rules.hpp are written once for both.

#if defined(__CUDACC__)
#define MUON_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MUON_HOST_DEVICE inline
#endif
