#include "parallel/process_grid.h"

#include "parallel/error.h"

namespace ftune::parallel {
namespace {

GridOptions CpuGrid(int64_t dp, int64_t tp) {
  GridOptions o;
  o.dp = dp;
  o.tp = tp;
  o.backend = "mpi";
  return o;
}

// The data communicators' library for `opt` on this build.
std::string ResolveBackend(const GridOptions& opt) {
  const bool gpu = opt.device.is_cuda();
  if (opt.backend == "mpi") return "mpi";
  if (opt.backend == "auto") return gpu && HasNccl() && !opt.device_shared ? "nccl" : "mpi";
  if (opt.backend != "nccl") {
    FT_THROW(ConfigError, "parallel.backend '{}' is not one of auto, mpi, nccl", opt.backend);
  }
  if (!gpu) {
    FT_THROW(ConfigError, "parallel.backend: nccl needs a CUDA device, and this rank's device is "
             "{}; use parallel.backend: auto or mpi", opt.device.str());
  }
  if (!HasNccl()) {
    FT_THROW(ConfigError, "parallel.backend: nccl, but this ftune was built without NCCL (build "
             "against a CUDA libtorch with NCCL found); use parallel.backend: auto or mpi");
  }
  if (opt.device_shared) {
    FT_THROW(ConfigError, "parallel.backend: nccl, but several ranks of this node share {} and "
             "NCCL refuses two ranks on one GPU; launch one rank per GPU or use parallel.backend: "
             "mpi", opt.device.str());
  }
  return "nccl";
}

}  // namespace

ProcessGrid::ProcessGrid(Communicator& world, int64_t dp, int64_t tp)
    : ProcessGrid(world, CpuGrid(dp, tp)) {}

ProcessGrid::ProcessGrid(Communicator& world, const GridOptions& opt)
    : world_(world), device_(opt.device) {
  const int64_t n = world.size();
  int64_t dp = opt.dp, tp = opt.tp;
  if (tp < 1 || n % tp != 0) {
    FT_THROW(ConfigError, "parallel.tp = {} does not divide the world size {} (ranks launched)",
             tp, n);
  }
  if (dp == -1) dp = n / tp;
  if (dp != n / tp) {  // not dp * tp != n: the product of two user numbers can overflow
    FT_THROW(ConfigError,
             "parallel.dp * parallel.tp = {} * {} but the job has {} ranks; set parallel.dp to {} "
             "(or -1), or launch parallel.dp * parallel.tp ranks",
             dp, tp, n, n / tp);
  }
  backend_ = ResolveBackend(opt);
  dp_ = static_cast<int>(dp);
  tp_ = static_cast<int>(tp);
  const int r = world.rank();
  // Same tp_rank across replicas -> one dp group; same dp_rank -> one tp group.
  dp_ctrl_ = world.Split(r % tp_, r / tp_, "dp");
  tp_ctrl_ = world.Split(r / tp_, r % tp_, "tp");
  world.set_timeout(opt.timeout_s);
  dp_ctrl_->set_timeout(opt.timeout_s);
  tp_ctrl_->set_timeout(opt.timeout_s);
  if (backend_ == "nccl") {
    // Each NCCL communicator's unique id travels over its axis' MPI communicator.
    dp_data_ = MakeNcclCommunicator(*dp_ctrl_);
    tp_data_ = MakeNcclCommunicator(*tp_ctrl_);
    dp_data_->set_timeout(opt.timeout_s);
    tp_data_->set_timeout(opt.timeout_s);
  }
}

ProcessGrid::~ProcessGrid() = default;

}  // namespace ftune::parallel
