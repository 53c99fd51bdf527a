// Strings over a communicator (control traffic: file lists, per-rank reports,
// JSON records). Collective over `comm`: every rank calls it, in the same order
// as its other collectives.
#pragma once

#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace ftune::parallel {

// Every rank's `mine`, in rank order, on every rank of `comm` (any bytes, any
// lengths).
std::vector<std::string> AllGatherStrings(Communicator& comm, const std::string& mine);

}  // namespace ftune::parallel
