// MPI_CHECK: wraps an MPI call, throwing CommError with the call, file:line,
// rank and MPI's own message. Only parallel/ and runtime/world* include mpi.h.
#pragma once

#include <mpi.h>

#include <chrono>
#include <vector>

#include "parallel/error.h"

namespace ftune::parallel {

[[noreturn]] void ThrowMpiError(int code, const char* call, const char* file, int line);

class Communicator;
// The MPI_Comm behind a communicator of the MPI backend (for MPI-IO: parallel/hdf5_mpio.h).
// Throws CommError for a communicator of another backend. The handle stays owned by `c`.
MPI_Comm NativeMpiComm(Communicator& c);
// The world ranks of `comm`'s members, in `comm`'s rank order.
std::vector<int> WorldRanksOf(MPI_Comm comm);

// Adds `waited` to CommWaitSeconds() (for the Work::Wait of every backend).
void AddCommWait(std::chrono::steady_clock::duration waited);

}  // namespace ftune::parallel

#define MPI_CHECK(call)                                                           \
  do {                                                                            \
    int ft_mpi_rc_ = (call);                                                      \
    if (ft_mpi_rc_ != MPI_SUCCESS) {                                              \
      ::ftune::parallel::ThrowMpiError(ft_mpi_rc_, #call, __FILE__, __LINE__);    \
    }                                                                             \
  } while (0)
