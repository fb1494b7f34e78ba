// SPDX-License-Identifier: MIT
#pragma once
/// \file muon.hpp
/// \brief Umbrella header for the CPU API. Include this, not the internals.
/// Never pulls in CUDA headers (the device backend is muon/cuda.hpp).

#include "coefficients.hpp"
#include "error.hpp"
#include "newton_schulz.hpp"
#include "orthogonalize.hpp"
#include "reference.hpp"
#include "scalar.hpp"
#include "version.hpp"
