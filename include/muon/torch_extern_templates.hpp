// SPDX-License-Identifier: MIT
#pragma once
/// \file torch_extern_templates.hpp
/// \brief Optional: compile the libtorch adapter (muon::torch::Muon) and the
/// engines under it once per program instead of in every translation unit
/// that includes muon/torch.hpp.
///
/// muon::torch::Muon is header-only like the rest of the library, so every
/// file that uses it compiles it again, with an eigen::Engine for each of
/// the four dtypes it may meet. Include this header instead of
/// <muon/torch.hpp> (or after it): it declares the adapter extern, and with
/// <muon/extern_templates.hpp> the core's heavy templates. ONE translation
/// unit of the program defines them:
///
///     // muon_torch_instances.cpp, compiled once
///     #define MUON_INSTANTIATE_TORCH        // the adapter
///     #define MUON_INSTANTIATE_OPTIMIZERS   // its engines
///     #define MUON_INSTANTIATE_PRODUCTS     // their products and workspaces
///     #include <muon/torch_extern_templates.hpp>
///
/// (MUON_INSTANTIATE_TEMPLATES defines all of these and the exact SVD/eigh
/// references, which a training program rarely needs.) Measured gains:
/// docs/compile_time.md. As for <muon/extern_templates.hpp>, every unit of
/// the program must see the same Eigen configuration and flags.

#include "extern_templates.hpp"
#include "torch.hpp"

#if defined(MUON_INSTANTIATE_TEMPLATES) || defined(MUON_INSTANTIATE_TORCH)
template class muon::torch::BasicMuon<void>;
#else
extern template class muon::torch::BasicMuon<void>;
#endif
