// Collective checkpoints (DESIGN.md "Checkpoint format"): one HDF5 file per checkpoint step,
// written by every rank together over MPI-IO, holding the whole training state at full logical
// shape so that it loads into any layout (dp, tp, ZeRO stage, world size).
//
// File `<checkpoint dir>/step_<8 digits>.h5`:
//   /model/<hf name>                 fp32, full shape: the master weights (= the parameters in fp32
//                                    runs; the fp32 masters of bf16 runs)
//   /optim/<hf name>/exp_avg         fp32, full shape: AdamW moments
//   /optim/<hf name>/exp_avg_sq
//     every tensor dataset has attribute `crc32` (uint32, see Checksums)
//   /state  attrs: magic "ftune-checkpoint", format_version, step, total_steps, tokens_seen,
//           skipped_steps, lr, loader_epoch, loader_cursor, loader_seed, dp, tp, zero,
//           world_size, seed, dtype, config_yaml (resolved config), model_config (HF
//           config.json), tokenizer_dir, checksum (the scheme, in words), created_by,
//           state_crc32 (uint32: the state checksum, see Checksums)
//   /state/rng  uint8 [world_size, n]: each rank's torch CPU generator state; attribute crc32
//           of the whole dataset
// Each rank writes the elements it owns as hyperslabs of the full tensor: ZeRO >= 1 ranks their
// flat slice of the TP-local tensor, mapped to full coordinates through the TensorParallelLayout;
// under ZeRO-0 dp rank 0 only, and tensors replicated over tp from tp rank 0 only. So every
// element is written exactly once. Where every rank's slice of a tensor is one contiguous range
// of the file (ZeRO slices, tp shards along dim 0, replicated tensors) it is written and read
// with an independent MPI-IO transfer (one large pwrite/pread, no coordination); tensors sharded
// along dim 1 over tp use a collective transfer.
//
// Checksums: crc32 (zlib's; computed with libdeflate) of the tensor's bytes (fp32 little endian,
// C order of the full shape). Nobody holds the full tensor, so each rank computes the crc32 of
// every contiguous run (in the full tensor's flat order) of what it writes; the (offset, length,
// crc) triples are all-gathered (a few bytes per run, no tensor data) and combined in offset
// order with crc32_combine, which also proves that the runs tile the tensor exactly once. Loading
// recomputes it the same way over the elements each rank reads (with the new layout's
// ownership); a collective export the same over its row slices; and a one-process reader
// (export, generate) simply takes crc32 of the whole tensor: the same number.
// Everything else that decides how training continues is covered too: state_crc32 is a crc32
// over every other /state attribute (name, encoded type, raw bytes, in name order) and the names
// of the objects in /state; /state/rng has the crc32 of its bytes (combined from the ranks'
// rows as above). Every reader verifies state_crc32 and that the step in the file name
// (step_N.h5) is the stored step; Load verifies the RNG states too. Any mismatch is a
// CorruptCheckpointError naming what is damaged, so loading falls back as for a damaged tensor.
//
// Atomicity: written as `step_N.h5.tmp`, closed (flushed), fsync'ed, renamed to `step_N.h5`, the
// directory fsync'ed; then `latest` (a text file naming step_N.h5) is replaced by write + rename.
// Older checkpoints beyond checkpoint.keep are deleted only after that (by a thread of rank 0,
// joined by Wait), so a crash at any point leaves the previous complete checkpoint and never a
// complete-looking partial one. With eval.every, the checkpoint of the best eval step (the step
// in <run>/best.json) is never deleted, whatever checkpoint.keep says.
//
// Collective ordering: Save, Wait, Load and LoadLatest are collective over the grid's world; all
// ranks call them at the same steps. The manager does its I/O and agreement collectives on its
// own duplicate of that communicator, so an async save (a background thread, one at a time)
// never interleaves with the training loop's collectives. Every HDF5 call holds
// data::Hdf5Mutex() (Debian's HDF5 is not thread-safe; the loader's prefetch thread shares it).
// Failures of one rank are agreed on (an all-reduce of status codes after each phase, bounded
// by parallel.timeout_s), so all ranks throw together instead of hanging. Writing or reading the
// tensor datasets is one phase: a rank whose transfer failed keeps making the same collective
// HDF5 calls as the others until the phase ends.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "data/loader.h"
#include "models/llama_config.h"
#include "models/safetensors.h"
#include "parallel/data_parallel.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"

namespace ftune {

// A checkpoint file that cannot be used: unreadable, truncated, a dataset or attribute missing,
// a checksum mismatch. Loading falls back to the previous checkpoint on this error. (In namespace
// ftune beside the other typed errors, so FT_THROW finds it.)
class CorruptCheckpointError : public IoError {
 public:
  using IoError::IoError;
};

}  // namespace ftune

namespace ftune::runtime {

using ftune::CorruptCheckpointError;

// Version 2 added the state checksum (/state attribute state_crc32, /state/rng attribute crc32).
// Version-1 checkpoints (written before it) still load, with a warning that their state cannot
// be verified: refusing them would strand every run in flight at the upgrade, and their tensors
// are still verified. A damaged version number does not open that door: a v2 file's version is
// covered by its state checksum, v1 and v2 differ in two bits, and a "v1" file that carries a
// state_crc32 is treated as damaged.
inline constexpr int64_t kCheckpointFormatVersion = 2;
inline constexpr const char* kCheckpointMagic = "ftune-checkpoint";

// The training loop's state besides the tensors.
struct TrainState {
  int64_t step = 0;           // optimizer steps done (the next one is step + 1)
  int64_t total_steps = 0;    // length of the run (the lr schedule's horizon)
  int64_t tokens_seen = 0;    // input tokens of all steps so far, whole job
  int64_t skipped_steps = 0;  // non-finite steps among them (no update made)
  double lr = 0;              // lr of the last step
  data::LoaderState loader;   // position after the last consumed batch (global cursor)
};

// The /state attributes of a checkpoint.
struct CheckpointMeta {
  std::string path;
  int64_t format_version = 0;
  TrainState state;
  int64_t dp = 0, tp = 0, zero = 0, world_size = 0, seed = 0;
  std::string dtype;              // model.dtype of the run that wrote it
  std::string config_yaml;        // the resolved config
  std::string model_config_json;  // HF config.json of the model
  std::string tokenizer_dir;      // where the run's tokenizer.json is
};

// One save as seen by this rank.
struct SaveStats {
  int64_t step = 0;
  bool async = false;
  double blocking_s = 0;  // time the training loop was held (incl. waiting for the previous save)
  double write_s = 0;     // time of the collective write, create to rename, made of:
  double crc_s = 0;       //   checksums of this rank's slices + their all-gather
  double data_s = 0;      //   creating and writing the tensor datasets (into the page cache)
  double close_s = 0;     //   closing the file (flushing HDF5 metadata); /state is not counted
  double raw_s = 0;       //   checkpoint.direct_io: this rank's contiguous slices, written and
                          //   fsynced after the close (then data_s covers the rest)
  int64_t direct_bytes = 0, buffered_bytes = 0;  // of raw_s: with O_DIRECT, via the page cache
  double publish_s = 0;   //   fsync (rank 0; the others wait), rename, `latest`:
  double fsync_s = 0;     //     the file's fsync (rank 0)
  int64_t file_bytes = 0; // size of the file (rank 0)
};

// The last Load as seen by this rank (seconds).
struct LoadStats {
  double read_s = 0;    // opening the file and reading this rank's slices of every dataset
  double crc_s = 0;     //   of which: crc32 of the slices read
  double verify_s = 0;  // combining the checksums across ranks and comparing them
  double params_s = 0;  // RNG state, closing, making the parameters equal the masters
};

class CheckpointManager {
 public:
  // `dir`: the checkpoint directory (RunPath(cfg, cfg.checkpoint.dir) in `ftune train`). `dp`
  // holds this rank's master weights and moments; `model_cfg` is the full model's config.
  // Collective over grid.world() (duplicates it).
  CheckpointManager(const Config& cfg, parallel::ProcessGrid& grid, parallel::DataParallel& dp,
                    const models::LlamaConfig& model_cfg, std::string dir);
  // Waits for an async save (an error of it is logged, not thrown).
  ~CheckpointManager();
  CheckpointManager(const CheckpointManager&) = delete;
  CheckpointManager& operator=(const CheckpointManager&) = delete;

  // Writes step_<state.step>.h5. With checkpoint.async the state is copied and written by a
  // background thread (this returns after the copy); an earlier async save is waited for first.
  // Throws IoError naming the path when the write fails (earlier checkpoints stay intact).
  void Save(const TrainState& state);
  // Waits for the outstanding async save (and the deletion of checkpoints beyond
  // checkpoint.keep); rethrows its error.
  void Wait();
  // Newest usable checkpoint of the directory: tries `latest`, then older ones, warning about
  // each unusable one (CorruptCheckpointError) by name. Loads it into the DataParallel (master
  // weights, moments, parameters) and this rank's RNG; returns its metadata. nullopt when the
  // directory holds no checkpoint; IoError when it holds some and none is usable.
  std::optional<CheckpointMeta> LoadLatest();
  // Loads one file (see LoadLatest). CorruptCheckpointError when unusable, ModelError when it is
  // a checkpoint of another architecture.
  CheckpointMeta Load(const std::string& path);

  // Starting over (checkpoint.resume false): moves the directory's checkpoints and `latest` into
  // <dir>/previous_<unix time>/ so that a later resume cannot pick them up. Collective.
  void MoveAside();

  const std::string& dir() const { return dir_; }
  // Stats of completed saves, in order (an async save is listed once it completed).
  const std::vector<SaveStats>& saves() const { return saves_; }
  const LoadStats& last_load() const { return last_load_; }

  struct Plan;
  struct WriteJob;

 private:
  void RunJob(WriteJob& job);
  // The checkpoint of the step <run>/best.json names ("" when none): kept by the pruning.
  std::string BestCheckpointPath() const;

  const Config& cfg_;
  parallel::ProcessGrid& grid_;
  parallel::DataParallel& dp_;
  models::LlamaConfig model_cfg_;
  std::string dir_;
  std::unique_ptr<parallel::Communicator> comm_;  // checkpoint I/O and agreement
  std::unique_ptr<Plan> plan_;
  std::thread thread_;
  std::thread pruner_;  // rank 0: deleting checkpoints beyond checkpoint.keep (joined by Wait)
  std::exception_ptr async_error_;
  std::atomic<bool> job_done_{true};
  std::unique_ptr<WriteJob> pending_;
  // checkpoint.async: this rank's slices (master, exp_avg, exp_avg_sq per tensor), copied here at
  // each save and written from here; allocated at the first save and kept, placed so that their
  // O_DIRECT writes need no staging copy.
  std::vector<std::array<at::Tensor, 3>> async_copy_;
  std::vector<SaveStats> saves_;
  LoadStats last_load_;
};

// "step_00000042.h5".
std::string CheckpointFileName(int64_t step);
// Checkpoint files of `dir`, newest first: the one `latest` names, then step_*.h5 by step
// (temporary files excluded). Empty when there are none. Rank-local.
std::vector<std::string> CheckpointCandidates(const std::string& dir);
// For `--checkpoint X`: X itself when it is a file; the candidates of X when it is a checkpoint
// directory, or of X/checkpoints when X is a run directory. IoError (naming `option` and X) when
// there is none.
std::vector<std::string> ResolveCheckpointArg(const std::string& arg,
                                              const std::string& option = "--checkpoint");

// One-process reading (export, tests): the /state attributes, and every /model tensor at full
// shape (fp32), in HF order, each verified against its crc32 (CorruptCheckpointError naming the
// file and tensor on mismatch).
CheckpointMeta ReadCheckpointMeta(const std::string& path);
models::NamedTensors ReadCheckpointModel(const std::string& path, const CheckpointMeta& meta);

struct CheckpointModel {
  CheckpointMeta meta;
  models::NamedTensors tensors;  // /model, full shapes, fp32, HF order
};
// One-process reading of the newest usable checkpoint that `arg` names (ResolveCheckpointArg;
// `option` names the argument in errors, e.g. "--model"): tries the candidates newest first as
// LoadLatest does, warning by name about each unusable one (CorruptCheckpointError). IoError
// naming `arg` when none is usable.
CheckpointModel ReadNewestCheckpointModel(const std::string& arg, const std::string& option);
// The same, collective over `comm` (every rank calls it; export under mpirun): every rank opens
// the candidate with MPI-IO and reads a 1/size slice of each /model tensor (one contiguous range
// of the file); the slices' crc32s are combined and verified on every rank, so all ranks agree
// on falling back; the tensors are then gathered on rank 0. Rank 0 gets the full tensors, the
// other ranks the metadata and an empty tensor list.
CheckpointModel ReadNewestCheckpointModel(parallel::Communicator& comm, const std::string& arg,
                                          const std::string& option);
// The same verification without the gather, for sharded loading (CheckpointModelReader next):
// every rank reads and checksums its 1/size slice of one /model tensor at a time and keeps none
// of it. Returns the metadata of the newest usable checkpoint on every rank.
CheckpointMeta VerifyNewestCheckpointModel(parallel::Communicator& comm, const std::string& arg,
                                           const std::string& option);

struct ShardInfo;  // runtime/parallelize.h

// Reads parts of a checkpoint's /model tensors (fp32, full shape) for sharded loading: a
// parallel::ParamSource calls Read for the elements its rank keeps. Verify the file first
// (VerifyNewestCheckpointModel); this reads without checksums. Holds the file open read-only
// (plain HDF5, this process alone); every call holds data::Hdf5Mutex().
class CheckpointModelReader {
 public:
  explicit CheckpointModelReader(const std::string& path);
  ~CheckpointModelReader();
  CheckpointModelReader(const CheckpointModelReader&) = delete;
  CheckpointModelReader& operator=(const CheckpointModelReader&) = delete;
  // Elements [begin, begin + out.numel()) of the flattened local tensor that `info` cuts out of
  // /model/<name>, converted to out's dtype; only the rows covering them are read.
  void Read(const std::string& name, const ShardInfo& info, int64_t begin, at::Tensor out);

 private:
  std::string path_;
  int64_t file_ = -1;  // hid_t
};

}  // namespace ftune::runtime
