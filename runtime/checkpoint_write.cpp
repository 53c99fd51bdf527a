#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "parallel/files.h"
#include "parallel/hdf5_mpio.h"
#include "runtime/checkpoint_internal.h"
#include "runtime/direct_write.h"
#include "runtime/log.h"
#include "runtime/model_setup.h"

namespace ftune::runtime {
namespace checkpoint_detail {

void WriteAttr(hid_t obj, const char* name, hid_t mem_type, hid_t file_type, const void* value,
               const std::string& ctx) {
  H5Id space(H5_CHECK(IoError, H5Screate(H5S_SCALAR), ctx), H5Sclose);
  H5Id attr(
      H5_CHECK(IoError, H5Acreate2(obj, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
               fmt::format("{} attribute {}", ctx, name)),
      H5Aclose);
  H5_CHECK(IoError, H5Awrite(attr.get(), mem_type, value),
           fmt::format("{} attribute {}", ctx, name));
}
}  // namespace checkpoint_detail

namespace {

using namespace checkpoint_detail;

void WriteAttrInt(hid_t obj, const char* name, int64_t v, const std::string& ctx) {
  WriteAttr(obj, name, H5T_NATIVE_INT64, H5T_STD_I64LE, &v, ctx);
}
void WriteAttrDouble(hid_t obj, const char* name, double v, const std::string& ctx) {
  WriteAttr(obj, name, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, &v, ctx);
}
void WriteAttrString(hid_t obj, const char* name, const std::string& v, const std::string& ctx) {
  H5Id type(H5_CHECK(IoError, H5Tcopy(H5T_C_S1), ctx), H5Tclose);
  H5_CHECK(IoError, H5Tset_size(type.get(), std::max<size_t>(1, v.size())), ctx);
  std::string buf = v.empty() ? std::string(1, '\0') : v;
  WriteAttr(obj, name, type.get(), type.get(), buf.data(), ctx);
}

// An empty float tensor shaped like `like` whose element `first_elem` of the
// full tensor (the slice's first element) has the same address modulo a page as
// its offset in the file (datasets start on a page): then DirectWriter writes
// from it without a staging copy.
at::Tensor PageAlignedLike(const at::Tensor& like, int64_t first_elem) {
  constexpr int64_t kPage = DirectWriter::kAlign;
  const int64_t bytes = like.numel() * static_cast<int64_t>(sizeof(float));
  auto raw = torch::empty({bytes + kPage}, torch::kUInt8);
  const auto addr = reinterpret_cast<uintptr_t>(raw.data_ptr());
  const int64_t shift =
      ((first_elem * 4 - static_cast<int64_t>(addr % kPage)) % kPage + kPage) % kPage;
  return raw.narrow(0, shift, bytes).view(torch::kFloat).view(like.sizes());
}

void FsyncPath(const std::string& path, bool dir) {
  const int fd = open(path.c_str(), dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) FT_THROW(IoError, "cannot open {} to fsync it: {}", path, std::strerror(errno));
  const int rc = fsync(fd);
  const int err = errno;
  close(fd);
  if (rc != 0) FT_THROW(IoError, "fsync of {} failed: {}", path, std::strerror(err));
}

// One collective write of a checkpoint (CheckpointManager::RunJob): its steps
// in order, each agreed on by every rank (Phase), into job.tmp; Publish renames
// it into place.
class JobWriter {
 public:
  JobWriter(parallel::Communicator& comm, const CheckpointManager::Plan& plan,
            CheckpointManager::WriteJob& job, bool direct)
      : comm_(comm), plan_(plan), job_(job), tmp_(job.tmp), direct_(direct) {}

  // Rank 0: creates the directory and removes a temporary file left by a
  // crashed save.
  void Prepare(const std::string& dir) {
    Phase(comm_, "preparing " + dir, [&]() {
      if (comm_.rank() != 0) return;
      try {
        files::CreateDirectories(dir);
      } catch (const IoError& e) {
        FT_THROW(IoError, "cannot create the checkpoint directory {}: {}", dir,
                 files::Exists(dir) ? "a file of that name is in the way" : e.what());
      }
      files::RemoveQuietly(tmp_);  // left over from a crashed save of the same step
    });
  }

  // The crc32 of every tensor and of /state/rng (the last), combined across
  // ranks: first, from memory, so that they are written as the datasets'
  // attributes.
  void ComputeCrcs() {
    const auto t_crc = Clock::now();
    std::vector<int64_t> entries, bytes;
    for (size_t i = 0; i < plan_.tensors.size(); ++i) {
      const auto& t = plan_.tensors[i];
      for (int k = 0; k < 3; ++k) {
        const int64_t id = static_cast<int64_t>(3 * i + k);
        bytes.push_back(t.numel * 4);
        if (!t.owner) continue;
        const float* base = job_.data[i][k].data_ptr<float>();
        for (const auto& r : t.runs) {
          entries.insert(entries.end(),
                         {id, r.full_offset * 4, r.count * 4,
                          static_cast<int64_t>(Crc32(base + r.local_offset, r.count * 4))});
        }
      }
    }
    // And of /state/rng: one row per rank (the last id).
    const int64_t rng_id = static_cast<int64_t>(bytes.size()), rng_bytes = job_.rng.numel();
    bytes.push_back(rng_bytes * comm_.size());
    entries.insert(entries.end(), {rng_id, rng_bytes * comm_.rank(), rng_bytes,
                                   static_cast<int64_t>(Crc32(job_.rng.data_ptr(), rng_bytes))});
    crc_ = CombineCrcs(comm_, entries, bytes);
    job_.stats.crc_s = Since(t_crc);
  }

  void CreateFile() {
    Phase(comm_, "creating " + tmp_, [&]() {
      H5Lock lock;
      H5Id fapl(parallel::MakeMpioFileAccess(comm_), H5Pclose);
      // Large datasets start on a page: their slices' O_DIRECT writes then need
      // no unaligned head, and no page is shared with HDF5's metadata.
      H5_CHECK(IoError, H5Pset_alignment(fapl.get(), 64 * 1024, DirectWriter::kAlign), tmp_);
      file_ =
          H5Id(H5_CHECK(IoError, H5Fcreate(tmp_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                        "creating checkpoint " + tmp_),
               H5Fclose);
    });
    {
      H5Lock lock;
      lcpl_ = H5Id(H5_CHECK(IoError, H5Pcreate(H5P_LINK_CREATE), tmp_), H5Pclose);
      H5_CHECK(IoError, H5Pset_create_intermediate_group(lcpl_.get(), 1), tmp_);
      dcpl_ = H5Id(H5_CHECK(IoError, H5Pcreate(H5P_DATASET_CREATE), tmp_), H5Pclose);
      H5_CHECK(IoError, H5Pset_fill_time(dcpl_.get(), H5D_FILL_TIME_NEVER), tmp_);
      H5_CHECK(IoError, H5Pset_alloc_time(dcpl_.get(), H5D_ALLOC_TIME_EARLY), tmp_);
      dxpl_ = H5Id(parallel::MakeCollectiveTransfer(), H5Pclose);
    }
  }

  // Every dataset is created (collective metadata) and written (an independent
  // transfer of this rank's contiguous range, else a collective one) without a
  // status all-reduce per dataset: a failing rank keeps making the same
  // collective calls, and all agree once.
  void WriteTensors() {
    const auto t_data = Clock::now();
    // checkpoint.direct_io: the contiguous slices' bytes go straight into the
    // file at their datasets' offsets (contiguous layout, allocated at
    // creation, never filled by HDF5) once HDF5 has closed it; see
    // runtime/direct_write.h for why.
    Deferred writes;
    for (size_t i = 0; i < plan_.tensors.size(); ++i) {
      const auto& t = plan_.tensors[i];
      for (int k = 0; k < 3; ++k) {
        const std::string name = DatasetName(t.name, k);
        const std::string ctx = fmt::format("{} {}", tmp_, name);
        writes.Run([&]() {
          H5Lock lock;
          std::vector<hsize_t> dims(t.full_shape.begin(), t.full_shape.end());
          H5Id fspace(
              H5_CHECK(IoError,
                       H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), ctx),
              H5Sclose);
          H5Id ds(H5_CHECK(IoError,
                           H5Dcreate2(file_.get(), name.c_str(), H5T_IEEE_F32LE, fspace.get(),
                                      lcpl_.get(), dcpl_.get(), H5P_DEFAULT),
                           ctx),
                  H5Dclose);
          const uint32_t c = crc_[3 * i + k];
          WriteAttr(ds.get(), "crc32", H5T_NATIVE_UINT32, H5T_STD_U32LE, &c, ctx);
          if (t.contiguous) {
            if (t.owner && t.count > 0) {
              const float* src = job_.data[i][k].data_ptr<float>();
              const haddr_t at = direct_ ? H5Dget_offset(ds.get()) : HADDR_UNDEF;
              if (at != HADDR_UNDEF) {  // written after the close, around MPI-IO
                raw_.push_back(
                    {static_cast<int64_t>(at) + t.runs[0].full_offset * 4, src, t.count * 4});
              } else {
                WriteSliceOf(ds.get(), fspace.get(), t.blocks, t.count, src, H5P_DEFAULT, ctx);
              }
            }
          } else {
            WriteSliceOf(ds.get(), fspace.get(), t.blocks, t.count,
                         t.owner ? job_.data[i][k].data_ptr<float>() : nullptr, dxpl_.get(), ctx);
          }
          H5_CHECK(IoError, ds.Close(), ctx);
        });
      }
    }
    writes.Agree(comm_, "writing " + tmp_);
    job_.stats.data_s = Since(t_data);
  }

  // /state: the attributes, every rank's RNG state, the state checksum.
  void WriteState(const Config& cfg, int64_t dp, int64_t tp, int64_t zero,
                  const models::LlamaConfig& model_cfg) {
    Phase(comm_, "writing " + tmp_ + " /state", [&]() {
      H5Lock lock;
      const std::string ctx = tmp_ + " /state";
      H5Id g(
          H5_CHECK(IoError,
                   H5Gcreate2(file_.get(), "/state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), ctx),
          H5Gclose);
      const auto& s = job_.state;
      WriteAttrString(g.get(), "magic", kCheckpointMagic, ctx);
      WriteAttrInt(g.get(), "format_version", kCheckpointFormatVersion, ctx);
      WriteAttrInt(g.get(), "step", s.step, ctx);
      WriteAttrInt(g.get(), "total_steps", s.total_steps, ctx);
      WriteAttrInt(g.get(), "tokens_seen", s.tokens_seen, ctx);
      WriteAttrInt(g.get(), "skipped_steps", s.skipped_steps, ctx);
      WriteAttrDouble(g.get(), "lr", s.lr, ctx);
      WriteAttrInt(g.get(), "loader_epoch", s.loader.epoch, ctx);
      WriteAttrInt(g.get(), "loader_cursor", s.loader.cursor, ctx);
      WriteAttrInt(g.get(), "loader_seed", s.loader.seed, ctx);
      WriteAttrInt(g.get(), "dp", dp, ctx);
      WriteAttrInt(g.get(), "tp", tp, ctx);
      WriteAttrInt(g.get(), "zero", zero, ctx);
      WriteAttrInt(g.get(), "world_size", comm_.size(), ctx);
      WriteAttrInt(g.get(), "seed", cfg.run.seed, ctx);
      WriteAttrString(g.get(), "dtype", cfg.model.dtype, ctx);
      WriteAttrString(g.get(), "config_yaml", ConfigToYaml(cfg), ctx);
      WriteAttrString(g.get(), "model_config", model_cfg.ToJson().dump(2), ctx);
      std::string tok_dir;
      try {
        tok_dir = files::Absolute(TokenizerDir(cfg));
      } catch (const ConfigError&) {
      }
      WriteAttrString(g.get(), "tokenizer_dir", tok_dir, ctx);
      WriteAttrString(g.get(), "checksum", kChecksumScheme, ctx);
      WriteAttrString(g.get(), "created_by", "ftune train", ctx);
      // Per-rank RNG states, one row each.
      hsize_t dims[2] = {static_cast<hsize_t>(comm_.size()),
                         static_cast<hsize_t>(job_.rng.numel())};
      H5Id fspace(H5_CHECK(IoError, H5Screate_simple(2, dims, nullptr), ctx), H5Sclose);
      H5Id ds(H5_CHECK(IoError,
                       H5Dcreate2(g.get(), "rng", H5T_STD_U8LE, fspace.get(), H5P_DEFAULT,
                                  dcpl_.get(), H5P_DEFAULT),
                       ctx),
              H5Dclose);
      hsize_t start[2] = {static_cast<hsize_t>(comm_.rank()), 0}, count[2] = {1, dims[1]};
      H5_CHECK(IoError,
               H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr),
               ctx);
      H5Id mspace(H5_CHECK(IoError, H5Screate_simple(2, count, nullptr), ctx), H5Sclose);
      H5_CHECK(IoError,
               H5Dwrite(ds.get(), H5T_NATIVE_UINT8, mspace.get(), fspace.get(), dxpl_.get(),
                        job_.rng.data_ptr()),
               ctx);
      const uint32_t rng_crc = crc_.back();
      WriteAttr(ds.get(), "crc32", H5T_NATIVE_UINT32, H5T_STD_U32LE, &rng_crc, ctx);
      // Last: the checksum of everything above (read back, as a loader will
      // read it).
      const uint32_t state_crc = StateDigest(g.get(), ctx);
      WriteAttr(g.get(), "state_crc32", H5T_NATIVE_UINT32, H5T_STD_U32LE, &state_crc, ctx);
    });
  }

  void Close() {
    const auto t_close = Clock::now();
    Phase(comm_, "closing " + tmp_, [&]() {
      H5Lock lock;
      lcpl_.Close();
      dcpl_.Close();
      dxpl_.Close();
      H5_CHECK(IoError, file_.Close(), "closing (flushing) checkpoint " + tmp_);
    });
    job_.stats.close_s = Since(t_close);
  }

  // checkpoint.direct_io: the contiguous slices, written and fsynced after the
  // close.
  void WriteDirect() {
    if (!direct_) return;
    const auto t_raw = Clock::now();
    Phase(comm_, "writing the tensor data of " + tmp_, [&]() {
      if (raw_.empty()) return;
      DirectWriter w(tmp_, true);
      for (const auto& e : raw_) w.Write(e.offset, e.src, e.bytes);
      w.Sync();
      job_.stats.direct_bytes = w.direct_bytes();
      job_.stats.buffered_bytes = w.buffered_bytes();
    });
    job_.stats.raw_s = Since(t_raw);
  }

  // Rank 0: fsync, rename to job.path, replace `latest`. Returns the
  // checkpoints beyond `keep` (rank 0; empty elsewhere).
  std::vector<std::string> Publish(const std::string& dir, int64_t keep,
                                   const std::string& protect) {
    const auto t_publish = Clock::now();
    std::vector<std::string> old;
    Phase(comm_, "publishing " + job_.path, [&]() {
      if (comm_.rank() != 0) return;
      const auto t_fsync = Clock::now();
      FsyncPath(tmp_, false);
      job_.stats.fsync_s = Since(t_fsync);
      files::Rename(tmp_, job_.path);
      FsyncPath(dir, true);
      const std::string latest = files::Join(dir, "latest");
      {
        std::ofstream out(latest + ".tmp", std::ios::trunc);
        out << files::BaseName(job_.path) << "\n";
        out.flush();
        if (!out) FT_THROW(IoError, "cannot write {}.tmp", latest);
      }
      FsyncPath(latest + ".tmp", false);
      files::Rename(latest + ".tmp", latest);
      FsyncPath(dir, true);
      try {
        job_.stats.file_bytes = files::FileSize(job_.path);
      } catch (const IoError&) {
        job_.stats.file_bytes = -1;  // only reported
      }
      // The oldest beyond `keep`, to delete now that a newer complete
      // checkpoint is in place.
      const auto complete = CompleteFiles(dir);
      for (size_t i = static_cast<size_t>(keep); i < complete.size(); ++i) {
        if (complete[i].second != job_.path && complete[i].second != protect) {
          old.push_back(complete[i].second);
        }
      }
    });
    job_.stats.publish_s = Since(t_publish);
    return old;
  }

 private:
  parallel::Communicator& comm_;
  const CheckpointManager::Plan& plan_;
  CheckpointManager::WriteJob& job_;
  const std::string& tmp_;
  const bool direct_;
  std::vector<uint32_t> crc_;
  H5Id file_, lcpl_, dcpl_, dxpl_;
  struct Extent {
    int64_t offset;
    const float* src;
    int64_t bytes;
  };
  std::vector<Extent> raw_;  // checkpoint.direct_io: slices written after the close
};

}  // namespace

void CheckpointManager::Save(const TrainState& state) {
  const auto t0 = Clock::now();
  Wait();
  auto job = std::make_unique<WriteJob>();
  // Attributes are collective metadata: every rank writes rank 0's values.
  auto s = torch::tensor({state.step, state.total_steps, state.tokens_seen, state.skipped_steps,
                          int64_t{0}, state.loader.epoch, state.loader.cursor, state.loader.seed},
                         torch::kLong);
  std::memcpy(s.data_ptr<int64_t>() + 4, &state.lr, sizeof(double));
  comm_->Broadcast(s, 0)->Wait();
  const int64_t* v = s.data_ptr<int64_t>();
  job->state.step = v[0], job->state.total_steps = v[1], job->state.tokens_seen = v[2];
  job->state.skipped_steps = v[3];
  std::memcpy(&job->state.lr, v + 4, sizeof(double));
  job->state.loader = {v[5], v[6], v[7]};
  job->path = files::Join(dir_, CheckpointFileName(job->state.step));
  job->tmp = job->path + ".tmp";
  const bool async = cfg_.checkpoint.async;
  job->data.resize(plan_->tensors.size());
  async_copy_.resize(plan_->tensors.size());
  for (size_t i = 0; i < plan_->tensors.size(); ++i) {
    const auto& t = plan_->tensors[i];
    if (!t.owner) continue;
    const auto& w = plan_->views[t.view];
    const std::array<at::Tensor, 3> live{w.master, w.exp_avg, w.exp_avg_sq};
    if (!async && live[0].is_cpu()) {
      job->data[i] = live;
      continue;
    }
    // Async: a copy, so training can go on updating the live tensors; on a GPU: a host copy
    // (HDF5, the checksums and O_DIRECT write from host memory; one wait for the device here).
    // The previous save is done (Wait above), so its copy is reused: no fresh pages to fault in
    // at every save.
    for (int k = 0; k < 3; ++k) {
      auto& c = async_copy_[i][k];
      if (!c.defined()) c = PageAlignedLike(live[k], t.runs.empty() ? 0 : t.runs[0].full_offset);
      c.copy_(live[k]);
    }
    job->data[i] = async_copy_[i];
  }
  {
    // The CPU generator only: nothing in training draws from a CUDA generator (no dropout; weight
    // init and sampling use CPU generators of their own seeds), so there is no device RNG state
    // that a resume would need.
    auto gen = CpuGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    job->rng = gen.get_state().contiguous();
  }
  job->stats.step = job->state.step;
  job->stats.async = async;
  if (async) {
    pending_ = std::move(job);
    pending_->stats.blocking_s = Since(t0);
    job_done_ = false;
    thread_ = std::thread([this]() {
      try {
        RunJob(*pending_);
      } catch (...) {
        async_error_ = std::current_exception();
      }
      job_done_ = true;
    });
  } else {
    RunJob(*job);
    job->stats.blocking_s = Since(t0);
    saves_.push_back(job->stats);
  }
}

std::string CheckpointManager::BestCheckpointPath() const {
  const std::string best = RunPath(cfg_, "best.json");
  if (cfg_.eval.every <= 0 || !files::Exists(best)) return "";
  try {
    std::ifstream in(best);
    const auto j = nlohmann::json::parse(in);
    if (!j.contains("step") || !j["step"].is_number_integer()) return "";
    return files::Join(dir_, CheckpointFileName(j["step"].get<int64_t>()));
  } catch (const nlohmann::json::exception&) {
    return "";  // unreadable: nothing protected (pruning as before)
  }
}

void CheckpointManager::RunJob(WriteJob& job) {
  const auto t0 = Clock::now();
  const bool root = comm_->rank() == 0;
  JobWriter w(*comm_, *plan_, job, cfg_.checkpoint.direct_io);
  std::vector<std::string> old;
  try {
    w.Prepare(dir_);
    w.ComputeCrcs();
    w.CreateFile();
    w.WriteTensors();
    w.WriteState(cfg_, grid_.replicas(), grid_.tp(), dp_.zero(), model_cfg_);
    w.Close();
    w.WriteDirect();
    old = w.Publish(dir_, cfg_.checkpoint.keep, root ? BestCheckpointPath() : "");
  } catch (const Error& e) {
    if (root) files::RemoveQuietly(job.tmp);
    FT_THROW(IoError,
             "checkpoint of step {} could not be saved to {} (earlier "
             "checkpoints in {} "
             "are intact): {}",
             job.state.step, job.path, dir_, e.what());
  }
  // Only now, with a newer complete checkpoint in place: drop the oldest beyond
  // `keep`, on a thread (freeing a large file's blocks takes a while; Wait()
  // joins it).
  if (pruner_.joinable()) pruner_.join();
  if (!old.empty()) {
    pruner_ = std::thread([old]() {
      for (const auto& f : old) {
        try {
          files::Remove(f);
        } catch (const IoError& e) {
          LogWarn("could not delete old checkpoint {}: {}", f, e.what());
        }
      }
    });
  }
  job.stats.write_s = Since(t0);
  if (root) {
    const double gb = job.stats.file_bytes / 1e9;
    LogInfo(
        "checkpoint step {}: {} ({:.1f} MB) written in {:.3f} s ({:.2f} "
        "GB/s){}",
        job.state.step, job.path, gb * 1e3, job.stats.write_s, gb / job.stats.write_s,
        job.stats.async ? fmt::format(", training held {:.3f} s (async)", job.stats.blocking_s)
                        : "");
  }
}

}  // namespace ftune::runtime
