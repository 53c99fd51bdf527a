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
  int64_t dp = opt.dp, cp = opt.cp, tp = opt.tp;
  if (cp < 1 || tp < 1 || cp > (int64_t(1) << 16) || tp > (int64_t(1) << 16) ||
      n % (cp * tp) != 0) {
    FT_THROW(ConfigError, "parallel.cp * parallel.tp = {} * {} does not divide the world size {} "
             "(ranks launched)", cp, tp, n);
  }
  if (dp == -1) dp = n / (cp * tp);
  if (dp != n / (cp * tp)) {  // not dp * cp * tp != n: a product of user numbers can overflow
    FT_THROW(ConfigError,
             "parallel.dp * parallel.cp * parallel.tp = {} * {} * {} but the job has {} ranks; set "
             "parallel.dp to {} (or -1), or launch dp * cp * tp ranks",
             dp, cp, tp, n, n / (cp * tp));
  }
  backend_ = ResolveBackend(opt);
  dp_ = static_cast<int>(dp);
  cp_ = static_cast<int>(cp);
  tp_ = static_cast<int>(tp);
  const int r = world.rank();
  dp_rank_ = r / (tp_ * cp_);
  // Same tp_rank -> one replica group (dp x cp, ordered by dp_rank * cp + cp_rank); same dp_rank
  // and tp_rank -> one cp group; same dp_rank and cp_rank -> one tp group.
  dp_ctrl_ = world.Split(r % tp_, r / tp_, "dp");
  cp_ctrl_ = world.Split(dp_rank_ * tp_ + r % tp_, (r / tp_) % cp_, "cp");
  tp_ctrl_ = world.Split(r / tp_, r % tp_, "tp");
  world.set_timeout(opt.timeout_s);
  for (auto* c : {dp_ctrl_.get(), cp_ctrl_.get(), tp_ctrl_.get()}) c->set_timeout(opt.timeout_s);
  if (backend_ == "nccl") {
    // Each NCCL communicator's unique id travels over its axis' MPI communicator.
    dp_data_ = MakeNcclCommunicator(*dp_ctrl_);
    if (cp_ > 1) cp_data_ = MakeNcclCommunicator(*cp_ctrl_);
    tp_data_ = MakeNcclCommunicator(*tp_ctrl_);
    dp_data_->set_timeout(opt.timeout_s);
    if (cp_data_) cp_data_->set_timeout(opt.timeout_s);
    tp_data_->set_timeout(opt.timeout_s);
  }
}

ProcessGrid::~ProcessGrid() = default;

}  // namespace ftune::parallel
