#include "parallel/hdf5_mpio.h"

#include "parallel/error.h"
#include "parallel/mpi_check.h"

namespace ftune::parallel {

hid_t MakeMpioFileAccess(Communicator& comm) {
  MPI_Comm c = NativeMpiComm(comm);
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl < 0) FT_THROW(IoError, "H5Pcreate(H5P_FILE_ACCESS) failed");
  if (H5Pset_fapl_mpio(fapl, c, MPI_INFO_NULL) < 0 ||
      H5Pset_all_coll_metadata_ops(fapl, true) < 0 || H5Pset_coll_metadata_write(fapl, true) < 0) {
    H5Pclose(fapl);
    FT_THROW(IoError, "H5Pset_fapl_mpio on communicator '{}' failed: is this HDF5 built "
             "with MPI (libhdf5-openmpi-dev)?", comm.name());
  }
  return fapl;
}

hid_t MakeCollectiveTransfer() {
  hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
  if (dxpl < 0) FT_THROW(IoError, "H5Pcreate(H5P_DATASET_XFER) failed");
  if (H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE) < 0) {
    H5Pclose(dxpl);
    FT_THROW(IoError, "H5Pset_dxpl_mpio(H5FD_MPIO_COLLECTIVE) failed");
  }
  return dxpl;
}

}  // namespace ftune::parallel
