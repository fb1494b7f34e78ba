// SPDX-License-Identifier: MIT
// The one file of the program that compiles muon::torch::Muon and the
// engines under it; main.cpp includes <muon/torch_extern_templates.hpp> and
// skips them (docs/compile_time.md, "The libtorch adapter").
#define MUON_INSTANTIATE_TORCH
#define MUON_INSTANTIATE_OPTIMIZERS
#define MUON_INSTANTIATE_PRODUCTS
#include <muon/torch_extern_templates.hpp>
