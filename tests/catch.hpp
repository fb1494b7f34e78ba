// SPDX-License-Identifier: MIT
#pragma once
// One include for whichever Catch2 is installed: v3 (catch_all.hpp, as on
// Ubuntu 24.04) or v2 (the single header Debian 12 ships).
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif

// MUON_SKIP(message): leave the running test case as skipped. Catch2 >= 3.3
// reports it as skipped; Catch2 v2 has no skip, so there it warns and returns.
// Tests that can be skipped are registered with ctest behind a probe that
// exits 77 (SKIP_RETURN_CODE), so ctest says "Skipped", never "Passed".
#if defined(CATCH_VERSION_MAJOR) && \
    (CATCH_VERSION_MAJOR > 3 || (CATCH_VERSION_MAJOR == 3 && CATCH_VERSION_MINOR >= 3))
#define MUON_SKIP(message) SKIP(message)
#else
#define MUON_SKIP(message) \
  do {                     \
    WARN(message);         \
    return;                \
  } while (false)
#endif
