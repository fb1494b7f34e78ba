// SPDX-License-Identifier: MIT
// One group of the library's heavy templates, compiled once for every test
// program that includes <muon/extern_templates.hpp> (see that header).
#define MUON_INSTANTIATE_PRODUCTS
#include <muon/extern_templates.hpp>
