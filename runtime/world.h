// World: the process's place in the job. Owns the MPI session (RAII:
// MPI_Init_thread in the constructor, MPI_Finalize in the destructor), the
// world communicator, and the choice of device and torch threads.
//
// One World per process, created first thing in main and passed down by
// reference; there is no global rank state.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace ftune::runtime {

class World {
 public:
  World(int* argc, char*** argv);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  // Rank among the ranks on this node (an MPI shared-memory split, not an
  // environment guess), and how many ranks share the node.
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  const std::string& host() const { return host_; }
  // cuda:local_rank when this build has CUDA and a GPU is visible, else cpu.
  const torch::Device& device() const { return device_; }
  // Whether other ranks of this node use the same GPU (more ranks than GPUs on the node).
  bool device_shared() const { return device_shared_; }
  // Torch intra-op threads: `requested` > 0 sets it, 0 = cores per node / ranks per node.
  void SetThreads(int64_t requested);
  int threads() const { return threads_; }
  parallel::Communicator& comm() const { return *comm_; }
  const std::string& mpi_thread_level() const { return thread_level_; }

  // Ends every rank of the job now (MPI_Abort). Used when an error on one rank
  // would otherwise leave the others waiting in a collective.
  [[noreturn]] void Abort(int code) const;

 private:
  int rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  int threads_ = 1;
  std::string host_;
  std::string thread_level_;
  torch::Device device_ = torch::kCPU;
  bool device_shared_ = false;
  std::unique_ptr<parallel::Communicator> comm_;
};

// Versions of the libraries this binary runs with.
std::string TorchVersion();
std::string HdfVersion();

}  // namespace ftune::runtime
