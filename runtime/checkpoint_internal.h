// Internals of the checkpoint module (runtime/checkpoint.h), shared by its
// files:
//   checkpoint.cpp          the manager's life cycle and the directory
//   (candidates, `latest`) checkpoint_layout.cpp   geometry: which elements of
//   which full tensor each rank holds checkpoint_agree.cpp    cross-rank
//   agreement: one outcome per phase, combined checksums checkpoint_write.cpp
//   Save and the collective write checkpoint_read.cpp     /state (reading,
//   verifying) and the collective Load checkpoint_readers.cpp  one-process
//   readers (export, generate) and the collective export read
// Not for use outside runtime/checkpoint*.cpp.
#pragma once

#include <hdf5.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "data/hdf5.h"
#include "runtime/checkpoint.h"

namespace ftune::runtime::checkpoint_detail {

using data::H5Id;
using data::H5Lock;

using Clock = std::chrono::steady_clock;
inline double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

inline constexpr const char* kChecksumScheme =
    "crc32 (zlib) of the tensor's fp32 little-endian bytes in C order of the "
    "full shape";

// Name of tensor k (0 = master weights, 1 = exp_avg, 2 = exp_avg_sq) of
// parameter `name`.
std::string DatasetName(const std::string& name, int k);
// zlib's crc32 (computed by libdeflate).
uint32_t Crc32(const void* p, int64_t bytes);
// "step_00000042.h5" -> 42; -1 for any other name.
int64_t StepOfFile(const std::string& name);
// The default (process-wide) torch CPU generator.
at::Generator CpuGenerator();
// The complete checkpoint files (step_*.h5) of `dir` as (step, path), newest
// first.
std::vector<std::pair<int64_t, std::string>> CompleteFiles(const std::string& dir);

// ---- layout geometry (checkpoint_layout.cpp)
// ----------------------------------------------

struct Block {  // a rectangle of the full tensor
  std::vector<hsize_t> start, count;
};
struct Run {  // elements contiguous in the full tensor's flat order
  int64_t full_offset, local_offset, count;
};

// The flat range [a, b) of a C-order tensor of `shape` (from dim `d` on, the
// outer indices fixed in `prefix`) as rectangles, in C order.
void Decompose(const std::vector<int64_t>& shape, size_t d, int64_t a, int64_t b,
               std::vector<hsize_t>& prefix, std::vector<Block>& out);
// The contiguous runs (full flat order) of `blocks`, whose elements lie back to
// back in memory.
std::vector<Run> RunsOf(const std::vector<Block>& blocks, const std::vector<int64_t>& full);
// Selects the union of `blocks` in the file dataspace `fspace`.
void SelectBlocks(hid_t fspace, const std::vector<Block>& blocks, const std::string& ctx);
// Writes (or reads) this rank's slice of dataset `ds`: the rectangles `blocks`
// of the file dataspace `fspace`, `count` elements back to back at `buf`. `buf`
// null: nothing (a rank that takes part in a collective transfer without
// elements).
void WriteSliceOf(hid_t ds, hid_t fspace, const std::vector<Block>& blocks, int64_t count,
                  const float* buf, hid_t dxpl, const std::string& ctx);
void ReadSliceOf(hid_t ds, hid_t fspace, const std::vector<Block>& blocks, int64_t count,
                 float* buf, hid_t dxpl, const std::string& ctx);

// ---- cross-rank agreement (checkpoint_agree.cpp)
// --------------------------------------------

enum Code : int { kOk = 0, kIo = 1, kCorrupt = 2, kMismatch = 3 };

// Every rank reports its outcome; when any failed, every rank throws (the
// failing ones their own message, the others one naming the failed ranks).
// Bounded by the communicator's timeout.
void Agree(parallel::Communicator& comm, int code, const std::string& msg, const std::string& what);

// For a run of collective HDF5 calls interleaved with rank-local I/O: Run(f)
// keeps the first failure of this rank instead of throwing, so that the rank
// goes on making the same collective calls as the others (collective metadata
// operations fail alike on every rank; independent transfers may fail on one);
// Agree then settles the outcome once, as Phase does.
class Deferred {
 public:
  template <class F>
  void Run(F&& f) {
    if (code_ != kOk) {  // already failed: keep the collective calls going,
                         // ignore more errors
      try {
        f();
      } catch (const std::exception&) {
      }
      return;
    }
    try {
      f();
    } catch (const ModelError& e) {
      code_ = kMismatch, msg_ = e.what();
    } catch (const CorruptCheckpointError& e) {
      code_ = kCorrupt, msg_ = e.what();
    } catch (const std::exception& e) {
      code_ = kIo, msg_ = e.what();
    }
  }
  bool failed() const { return code_ != kOk; }
  void Agree(parallel::Communicator& comm, const std::string& what) const {
    checkpoint_detail::Agree(comm, code_, msg_, what);
  }

 private:
  int code_ = kOk;
  std::string msg_;
};

// Runs `f` on every rank, then Agree on the outcome.
template <class F>
void Phase(parallel::Communicator& comm, const std::string& what, F&& f) {
  Deferred d;
  d.Run(std::forward<F>(f));
  d.Agree(comm, what);
}

// crc32 of every tensor from the runs of all ranks: entries (tensor id, byte
// offset, byte length, crc) all-gathered and combined in offset order. Checks
// the runs tile each tensor exactly.
std::vector<uint32_t> CombineCrcs(parallel::Communicator& comm, const std::vector<int64_t>& mine,
                                  const std::vector<int64_t>& tensor_bytes);

// ---- /state (checkpoint_read.cpp; the attribute writers in
// checkpoint_write.cpp) ---------------

// Attribute readers: CorruptCheckpointError when missing (a checkpoint must
// have them all).
int64_t ReadAttrInt(hid_t obj, const char* name, const std::string& ctx);
double ReadAttrDouble(hid_t obj, const char* name, const std::string& ctx);
uint32_t ReadAttrU32(hid_t obj, const char* name, const std::string& ctx);
std::string ReadAttrString(hid_t obj, const char* name, const std::string& ctx);
void WriteAttr(hid_t obj, const char* name, hid_t mem_type, hid_t file_type, const void* value,
               const std::string& ctx);

// The state checksum of group /state (see checkpoint.h, Checksums).
uint32_t StateDigest(hid_t group, const std::string& ctx);
// The /state of an open checkpoint file, verified (state checksum, the step of
// the file name).
CheckpointMeta ReadMetaFrom(hid_t file, const std::string& path);
// Opens checkpoint `path` read-only over MPI-IO (collective over `comm`; call
// inside a Phase, holding H5Lock) and reads its /state into `meta`. A missing
// file is CorruptCheckpointError.
H5Id OpenForCollectiveRead(parallel::Communicator& comm, const std::string& path,
                           CheckpointMeta& meta);

}  // namespace ftune::runtime::checkpoint_detail

namespace ftune::runtime {

// What this rank writes and reads (checkpoint_layout.cpp builds it).
struct CheckpointManager::Plan {
  struct Tensor {
    std::string name;
    std::vector<int64_t> full_shape;
    int64_t numel = 0;   // of the full tensor
    int view = -1;       // index into views; -1: this rank holds none of it
    bool owner = false;  // this rank writes (and verifies) its slice
    std::vector<checkpoint_detail::Block> blocks;  // the slice as rectangles of the full tensor
    std::vector<checkpoint_detail::Run> runs;  // the slice as contiguous runs of the full tensor
    int64_t count = 0;                         // elements of the slice
    // Every rank's slice is one contiguous range of the file (or empty):
    // transferred by independent MPI-IO, which needs no coordination; otherwise
    // (columns of a tensor sharded over tp along dim 1) by a collective
    // transfer.
    bool contiguous = true;
  };
  std::vector<parallel::DataParallel::ShardView> views;
  std::vector<Tensor> tensors;  // dp.params() order: the same on every rank
  int64_t total_bytes = 0;      // all tensors of the file

  // The plan of this rank's shard views of `dp` (collective over `comm`: which
  // tensors are contiguous on every rank is agreed).
  static std::unique_ptr<Plan> Make(parallel::DataParallel& dp, parallel::ProcessGrid& grid,
                                    const models::LlamaConfig& model_cfg,
                                    parallel::Communicator& comm);
};

struct CheckpointManager::WriteJob {
  TrainState state;
  std::string path, tmp;
  std::vector<std::array<at::Tensor, 3>> data;  // per plan tensor, when this rank owns a slice
  at::Tensor rng;                               // this rank's CPU generator state (uint8)
  SaveStats stats;
};

}  // namespace ftune::runtime
