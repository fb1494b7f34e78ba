// SPDX-License-Identifier: MIT
#pragma once
/// \file version.hpp
/// \brief Library version, kept in step with CMakeLists.txt's project(VERSION).

#define MUON_VERSION_MAJOR 0
#define MUON_VERSION_MINOR 1
#define MUON_VERSION_PATCH 0
#define MUON_VERSION_STRING "0.1.0"
/// Single comparable number: major * 10000 + minor * 100 + patch.
#define MUON_VERSION (MUON_VERSION_MAJOR * 10000 + MUON_VERSION_MINOR * 100 + MUON_VERSION_PATCH)
