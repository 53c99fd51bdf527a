// Parallel HDF5 over MPI-IO: the property lists a collective HDF5 file needs.
//
// Only parallel/ and runtime/world* include mpi.h; this is the one place that hands an MPI
// communicator to HDF5 (H5Pset_fapl_mpio). The returned property lists are plain hid_t owned by
// the caller (close with H5Pclose, or wrap them in an RAII handle).
//
// Collective rule: a file opened with MakeMpioFileAccess(comm) must be created/opened, have its
// objects created and its datasets read/written (with MakeCollectiveTransfer) by every rank of
// `comm` in the same order, as HDF5's parallel mode requires.
#pragma once

#include <hdf5.h>

#include "parallel/communicator.h"

namespace ftune::parallel {

// A file-access property list using the MPI-IO driver on `comm`'s MPI_Comm (HDF5 duplicates
// it), with collective metadata reads and writes. Throws CommError for a non-MPI communicator,
// IoError when HDF5 refuses.
hid_t MakeMpioFileAccess(Communicator& comm);

// A dataset-transfer property list selecting collective MPI-IO (H5FD_MPIO_COLLECTIVE).
hid_t MakeCollectiveTransfer();

}  // namespace ftune::parallel
