#include "runtime/world.h"

#include <dlfcn.h>

#include <hdf5.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdlib>

#include <thread>

#include "parallel/mpi_check.h"
#include "parallel/compat.h"

namespace ftune::runtime {

World::World(int* argc, char*** argv) {
  // Open MPI's non-blocking all-reduce (libnbc, which Communicator uses so that
  // gradient reduction overlaps backward) picks a binomial tree by default,
  // ~0.6x the bandwidth of blocking MPI_Allreduce at >= 1 MB here; the ring
  // algorithm matches or beats it (ftune bench comm). A user's setting wins.
  setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", /*overwrite=*/0);
  int provided = 0;
  MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  thread_level_ = provided == MPI_THREAD_MULTIPLE   ? "multiple"
                  : provided == MPI_THREAD_SERIALIZED ? "serialized"
                  : provided == MPI_THREAD_FUNNELED   ? "funneled"
                                                      : "single";
  // Errors come back as codes so MPI_CHECK can name the call and the rank.
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));
  MPI_Comm node;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  MPI_CHECK(MPI_Comm_rank(node, &local_rank_));
  MPI_CHECK(MPI_Comm_size(node, &local_size_));
  MPI_CHECK(MPI_Comm_free(&node));
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  host_ = host;
  comm_ = parallel::MakeMpiWorldCommunicator();
  if (compat::CudaAvailable()) {
    const int n = compat::CudaDeviceCount();
    device_ = torch::Device(torch::kCUDA, local_rank_ % n);
    device_shared_ = local_size_ > n;
    compat::SetCudaDevice(device_.index());
  }
  SetThreads(0);
}

World::~World() {
  comm_.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void World::SetThreads(int64_t requested) {
  int n = static_cast<int>(requested);
  if (n <= 0) {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    n = std::max(1, cores / std::max(1, local_size_));
  }
  torch::set_num_threads(n);
  // OpenBLAS built with pthreads (Debian's libopenblas0-pthread, which Debian's libtorch uses)
  // keeps its own pool of one thread per core and ignores torch's setting, so the GEMMs of
  // ranks sharing a node would oversubscribe its cores (measured: 2 ranks x 1 thread ran as
  // 2 x 2 BLAS threads on 2 cores, spinning in sched_yield). Looked up at run time: other BLAS
  // libraries (MKL, cuBLAS on GPUs) do not have it and are set through torch.
  using SetBlasThreads = void (*)(int);
  if (auto f = reinterpret_cast<SetBlasThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    f(n);
  }
  threads_ = n;
}

void World::Abort(int code) const { MPI_Abort(MPI_COMM_WORLD, code); std::abort(); }

std::string TorchVersion() { return compat::TorchVersion(); }

std::string HdfVersion() {
  unsigned maj = 0, min = 0, rel = 0;
  H5get_libversion(&maj, &min, &rel);
  return fmt::format("{}.{}.{}", maj, min, rel);
}

}  // namespace ftune::runtime
