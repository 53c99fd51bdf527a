// ProcessGrid: where a job runs. The one placement object of a run: the dp x cp x tp layout of the
// ranks, the device of this rank, and the communicators of each axis, built once (from World and
// the `parallel` config section: runtime::MakeGrid) and passed by reference to training, eval,
// checkpoints, export and generation.
//
// Two kinds of communicators per axis (torchtitan's ParallelDims, c10d's process groups):
//   control  MPI, host tensors: counts, flags, agreements, strings, MPI-IO;
//   data     the device's backend: gradients, parameters, activations. NCCL when the backend is
//            nccl (auto: when the device is a CUDA GPU this rank does not share, since NCCL
//            refuses two ranks on one GPU), else the control communicator itself (MPI, which
//            stages device tensors through host memory).
// Ranks are laid out tp-fastest, then cp: rank = (dp_rank * cp + cp_rank) * tp + tp_rank, so the
// ranks of one tensor-parallel group are adjacent (on one node, where NVLink is), and those of one
// context-parallel group next (parallel/context_parallel.h). The cp ranks of a dp rank hold the
// same weights and read the same batch, each its own chunks of every row; so the replicas of a
// weight slice (gradient reduction, ZeRO sharding, checkpoint ownership) are the dp x cp ranks of
// one tp_rank: replicas().
// Construction is collective over `world` (it splits sub-communicators and, for NCCL, creates
// the NCCL communicators). Owns the sub-communicators; holds `world` by reference, which must
// outlive it. Every collective on a communicator follows its ordering rule (communicator.h).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace ftune::parallel {

struct GridOptions {
  int64_t dp = -1;                // data-parallel ranks; -1 = world size / tp
  int64_t cp = 1;                 // context-parallel ranks per data-parallel rank
  int64_t tp = 1;                 // tensor-parallel ranks per model replica
  at::Device device = at::kCPU;   // this rank's device
  std::string backend = "auto";   // auto | mpi | nccl: the data communicators' library
  bool device_shared = false;     // other ranks of this node use the same device
  double timeout_s = 300.0;       // every communicator's Wait() bound (parallel.timeout_s)
};

class ProcessGrid {
 public:
  // Throws ConfigError naming parallel.dp, parallel.cp, parallel.tp and the world size when
  // dp * cp * tp != world.size(), and parallel.backend when nccl is asked for but cannot be used.
  ProcessGrid(Communicator& world, const GridOptions& opt);
  // A CPU grid over MPI (tests, one-process tools).
  ProcessGrid(Communicator& world, int64_t dp, int64_t tp);
  ~ProcessGrid();

  // The data axis: dp ranks read different batches.
  int dp() const { return dp_; }
  int cp() const { return cp_; }
  int tp() const { return tp_; }
  int dp_rank() const { return dp_rank_; }
  int cp_rank() const { return cp_ctrl_->rank(); }
  int tp_rank() const { return tp_ctrl_->rank(); }
  // The ranks holding this rank's weight slice: dp x cp (dp_comm()'s size and this rank's place
  // in it, dp_rank * cp + cp_rank).
  int replicas() const { return dp_ctrl_->size(); }
  int replica_rank() const { return dp_ctrl_->rank(); }
  const at::Device& device() const { return device_; }
  // "mpi" or "nccl": what carries the data communicators.
  const std::string& backend() const { return backend_; }

  // Control (MPI, host tensors).
  Communicator& world() const { return world_; }
  // dp_control: the replicas (dp x cp ranks of one tp_rank); cp_control: the cp ranks of one dp
  // rank and tp_rank; tp_control: the tp ranks of one dp and cp rank.
  Communicator& dp_control() const { return *dp_ctrl_; }
  Communicator& cp_control() const { return *cp_ctrl_; }
  Communicator& tp_control() const { return *tp_ctrl_; }
  // Data (tensors on device()): the ranks holding the same tensor-parallel slice (gradient
  // reduction, ZeRO: dp x cp), the ranks sharing one sequence (context-parallel attention), and
  // the ranks of one model replica (tensor-parallel collectives).
  Communicator& dp_comm() const { return dp_data_ ? *dp_data_ : *dp_ctrl_; }
  Communicator& cp_comm() const { return cp_data_ ? *cp_data_ : *cp_ctrl_; }
  Communicator& tp_comm() const { return tp_data_ ? *tp_data_ : *tp_ctrl_; }

 private:
  Communicator& world_;
  int dp_ = 1;
  int cp_ = 1;
  int tp_ = 1;
  int dp_rank_ = 0;
  at::Device device_ = at::kCPU;
  std::string backend_ = "mpi";
  std::unique_ptr<Communicator> dp_ctrl_, cp_ctrl_, tp_ctrl_;
  std::unique_ptr<Communicator> dp_data_, cp_data_, tp_data_;  // null: the control communicator serves
};

}  // namespace ftune::parallel
