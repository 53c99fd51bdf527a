#include "parallel/process_grid.h"

#include "parallel/error.h"

namespace ftune::parallel {

ProcessGrid::ProcessGrid(Communicator& world, int64_t dp, int64_t tp) : world_(world) {
  const int64_t n = world.size();
  if (tp < 1 || n % tp != 0) {
    FT_THROW(ConfigError, "parallel.tp = {} does not divide the world size {} (ranks launched)",
             tp, n);
  }
  if (dp == -1) dp = n / tp;
  if (dp * tp != n) {
    FT_THROW(ConfigError,
             "parallel.dp * parallel.tp = {} * {} = {} but the job has {} ranks; set parallel.dp "
             "to {} (or -1), or launch {} ranks",
             dp, tp, dp * tp, n, n / tp, dp * tp);
  }
  dp_ = static_cast<int>(dp);
  tp_ = static_cast<int>(tp);
  const int r = world.rank();
  // Same tp_rank across replicas -> one dp group; same dp_rank -> one tp group.
  dp_comm_ = world.Split(r % tp_, r / tp_, "dp");
  tp_comm_ = world.Split(r / tp_, r % tp_, "tp");
}

}  // namespace ftune::parallel
