// SPDX-License-Identifier: MIT
// Catch2 v2 needs the runner compiled into one translation unit; with v3 the
// build links Catch2::Catch2WithMain instead and this file is not compiled.
#define CATCH_CONFIG_MAIN
#include "catch.hpp"
