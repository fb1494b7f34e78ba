// SPDX-License-Identifier: MIT
#pragma once
/// \file muon.hpp
/// \brief Umbrella header for the CPU API. Include this, not the internals.
/// Never pulls in CUDA headers (the device backend is muon/cuda.hpp).

#include "adamw.hpp"
#include "checkpoint.hpp"
#include "coefficients.hpp"
#include "error.hpp"
#include "lr_schedule.hpp"
#include "momentum.hpp"
#include "newton_schulz.hpp"
#include "ns_options.hpp"
#include "optim/core.hpp"
#include "optimizer.hpp"
#include "orthogonalize.hpp"
#include "param_view.hpp"
#include "reference.hpp"
#include "scalar.hpp"
#include "update.hpp"
#include "version.hpp"
