// ProcessGrid: the dp x tp layout of the ranks of one communicator.
//
// Ranks are laid out tp-fastest: rank = dp_rank * tp + tp_rank, so the ranks of
// one tensor-parallel group are adjacent (on one node, where NVLink is).
// Construction is collective over `world` (it splits two sub-communicators).
// Owns the sub-communicators; holds `world` by reference, which must outlive it.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace ftune::parallel {

class ProcessGrid {
 public:
  // dp = -1 means world.size() / tp. Throws ConfigError naming parallel.dp,
  // parallel.tp and the world size when dp * tp != world.size().
  ProcessGrid(Communicator& world, int64_t dp, int64_t tp);

  int dp() const { return dp_; }
  int tp() const { return tp_; }
  int dp_rank() const { return dp_comm_->rank(); }
  int tp_rank() const { return tp_comm_->rank(); }
  Communicator& world() const { return world_; }
  // The ranks holding the same tensor-parallel slice (gradient reduction, ZeRO).
  Communicator& dp_comm() const { return *dp_comm_; }
  // The ranks of one model replica (tensor-parallel collectives).
  Communicator& tp_comm() const { return *tp_comm_; }

 private:
  Communicator& world_;
  int dp_;
  int tp_;
  std::unique_ptr<Communicator> dp_comm_;
  std::unique_ptr<Communicator> tp_comm_;
};

}  // namespace ftune::parallel
