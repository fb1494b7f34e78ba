// SPDX-License-Identifier: MIT
#pragma once
// One include for whichever Catch2 is installed: v3 (catch_all.hpp, used on
// the GPU machine) or v2 (the single header Debian 12 ships).
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif
