// Access to the process's World from tests run under tests/mpi_gtest_main.cpp.
#pragma once

#include "runtime/world.h"

namespace ftune::testing {
runtime::World& TestWorld();
}  // namespace ftune::testing
