// SPDX-License-Identifier: MIT
#pragma once
/// \file extern_templates.hpp
/// \brief Optional: compile the library's heaviest templates once instead of
/// in every translation unit.
///
/// The library is header-only, so every .cpp that uses muon::Optimizer<float>
/// or a reference SVD compiles those templates again. Including this header
/// (after the muon headers you use) declares the common instantiations
/// `extern`, so your translation units skip them; exactly ONE translation
/// unit of your program defines them:
///
///     // muon_instances.cpp, compiled once
///     #define MUON_INSTANTIATE_TEMPLATES
///     #include <muon/extern_templates.hpp>
///
///     // everywhere else
///     #include <muon/muon.hpp>
///     #include <muon/extern_templates.hpp>
///
/// Covered: Eigen's BDCSVD and SelfAdjointEigenSolver on dynamic float and
/// double matrices (the exact references: the largest saving), the CPU
/// products, Workspace, the Newton–Schulz loop, and Optimizer with its CPU
/// engine and executor and its optim::Front (storage float, double,
/// Eigen::bfloat16, Eigen::half). Measured gains:
/// docs/compile_time.md. Everything else (orthogonalize_into over your Eigen
/// expression types, the elementwise functions) is still instantiated where
/// it is used.
///
/// The instantiating side can be split over several translation units (they
/// compile in parallel): MUON_INSTANTIATE_REFERENCES, MUON_INSTANTIATE_PRODUCTS
/// and MUON_INSTANTIATE_OPTIMIZERS each define one group; the
/// MUON_INSTANTIATE_TEMPLATES defines all three.
///
/// Every translation unit of the program must see the same Eigen
/// configuration (eigen_assert, EIGEN_* macros): a unit that redefines them
/// must not include this header.

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/SVD>

#include "backend/eigen/workspace.hpp"
#include "newton_schulz.hpp"
#include "optimizer.hpp"

#ifdef MUON_INSTANTIATE_TEMPLATES
#define MUON_INSTANTIATE_REFERENCES
#define MUON_INSTANTIATE_PRODUCTS
#define MUON_INSTANTIATE_OPTIMIZERS
#endif

// ---- the exact references ---------------------------------------------------------
#ifdef MUON_INSTANTIATE_REFERENCES
#define MUON_TEMPLATE_INSTANCE template
#else
#define MUON_TEMPLATE_INSTANCE extern template
#endif
MUON_TEMPLATE_INSTANCE class Eigen::BDCSVD<Eigen::MatrixXd>;
MUON_TEMPLATE_INSTANCE class Eigen::BDCSVD<Eigen::MatrixXf>;
MUON_TEMPLATE_INSTANCE class Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>;
MUON_TEMPLATE_INSTANCE class Eigen::SelfAdjointEigenSolver<Eigen::MatrixXf>;
#undef MUON_TEMPLATE_INSTANCE

// ---- products, workspaces, the loop ---------------------------------------------
#ifdef MUON_INSTANTIATE_PRODUCTS
#define MUON_TEMPLATE_INSTANCE template
#else
#define MUON_TEMPLATE_INSTANCE extern template
#endif
namespace muon {
namespace detail {
MUON_TEMPLATE_INSTANCE class Gemm<float>;
MUON_TEMPLATE_INSTANCE class Gemm<double>;
MUON_TEMPLATE_INSTANCE class Gemm<float, Eigen::RowMajor>;
MUON_TEMPLATE_INSTANCE class Gemm<double, Eigen::RowMajor>;
MUON_TEMPLATE_INSTANCE class Syrk<float>;
MUON_TEMPLATE_INSTANCE class Syrk<double>;
MUON_TEMPLATE_INSTANCE class ParallelSyrk<float>;
MUON_TEMPLATE_INSTANCE class ParallelSyrk<double>;
MUON_TEMPLATE_INSTANCE class ParallelGemm<float>;
MUON_TEMPLATE_INSTANCE class ParallelGemm<double>;
MUON_TEMPLATE_INSTANCE void newton_schulz_iterate<eigen::Workspace<float>>(
    eigen::Workspace<float>&, const NewtonSchulzOptions&);
MUON_TEMPLATE_INSTANCE void newton_schulz_iterate<eigen::Workspace<double>>(
    eigen::Workspace<double>&, const NewtonSchulzOptions&);
}  // namespace detail

namespace eigen {
MUON_TEMPLATE_INSTANCE class Workspace<float>;
MUON_TEMPLATE_INSTANCE class Workspace<double>;
MUON_TEMPLATE_INSTANCE class Workspace<Eigen::bfloat16>;
MUON_TEMPLATE_INSTANCE class Workspace<Eigen::half>;
}  // namespace eigen
}  // namespace muon
#undef MUON_TEMPLATE_INSTANCE

// ---- the optimizer -------------------------------------------------------------------
#ifdef MUON_INSTANTIATE_OPTIMIZERS
#define MUON_TEMPLATE_INSTANCE template
#else
#define MUON_TEMPLATE_INSTANCE extern template
#endif
namespace muon {
namespace eigen {
MUON_TEMPLATE_INSTANCE class Executor<float>;
MUON_TEMPLATE_INSTANCE class Executor<double>;
MUON_TEMPLATE_INSTANCE class Engine<float>;
MUON_TEMPLATE_INSTANCE class Engine<double>;
MUON_TEMPLATE_INSTANCE class Engine<Eigen::bfloat16>;
MUON_TEMPLATE_INSTANCE class Engine<Eigen::half>;
}  // namespace eigen
namespace optim {
MUON_TEMPLATE_INSTANCE class Front<Optimizer<float>>;
MUON_TEMPLATE_INSTANCE class Front<Optimizer<double>>;
MUON_TEMPLATE_INSTANCE class Front<Optimizer<Eigen::bfloat16>>;
MUON_TEMPLATE_INSTANCE class Front<Optimizer<Eigen::half>>;
}  // namespace optim
MUON_TEMPLATE_INSTANCE class Optimizer<float>;
MUON_TEMPLATE_INSTANCE class Optimizer<double>;
MUON_TEMPLATE_INSTANCE class Optimizer<Eigen::bfloat16>;
MUON_TEMPLATE_INSTANCE class Optimizer<Eigen::half>;
}  // namespace muon

#undef MUON_TEMPLATE_INSTANCE
