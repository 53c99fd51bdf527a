#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)
#include <zlib.h>

#include <algorithm>
#include <mutex>

#include "parallel/files.h"
#include "parallel/hdf5_mpio.h"
#include "runtime/checkpoint_internal.h"
#include "runtime/log.h"

namespace ftune::runtime {
namespace checkpoint_detail {
namespace {

H5Id OpenAttr(hid_t obj, const char* name, const std::string& ctx) {
  if (H5Aexists(obj, name) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    FT_THROW(CorruptCheckpointError, "{}: attribute '{}' is missing", ctx, name);
  }
  return H5Id(H5_CHECK(CorruptCheckpointError, H5Aopen(obj, name, H5P_DEFAULT), ctx), H5Aclose);
}
// An H5Aiterate2 / H5Literate callback: appends each name to the vector<string>
// `out`.
template <class Info>
herr_t CollectName(hid_t, const char* name, const Info*, void* out) {
  static_cast<std::vector<std::string>*>(out)->push_back(name);
  return 0;
}

}  // namespace

int64_t ReadAttrInt(hid_t obj, const char* name, const std::string& ctx) {
  H5Id a = OpenAttr(obj, name, ctx);
  int64_t v = 0;
  H5_CHECK(CorruptCheckpointError, H5Aread(a.get(), H5T_NATIVE_INT64, &v), ctx);
  return v;
}
double ReadAttrDouble(hid_t obj, const char* name, const std::string& ctx) {
  H5Id a = OpenAttr(obj, name, ctx);
  double v = 0;
  H5_CHECK(CorruptCheckpointError, H5Aread(a.get(), H5T_NATIVE_DOUBLE, &v), ctx);
  return v;
}
uint32_t ReadAttrU32(hid_t obj, const char* name, const std::string& ctx) {
  H5Id a = OpenAttr(obj, name, ctx);
  uint32_t v = 0;
  H5_CHECK(CorruptCheckpointError, H5Aread(a.get(), H5T_NATIVE_UINT32, &v), ctx);
  return v;
}
std::string ReadAttrString(hid_t obj, const char* name, const std::string& ctx) {
  H5Id a = OpenAttr(obj, name, ctx);
  H5Id type(H5_CHECK(CorruptCheckpointError, H5Aget_type(a.get()), ctx), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0) {
    FT_THROW(CorruptCheckpointError, "{}: attribute '{}' is not a fixed-length string", ctx, name);
  }
  std::string buf(H5Tget_size(type.get()), '\0');
  H5_CHECK(CorruptCheckpointError, H5Aread(a.get(), type.get(), buf.data()), ctx);
  const auto end = buf.find('\0');
  return end == std::string::npos ? buf : buf.substr(0, end);
}

// The state checksum (format_version >= 2): crc32 over every attribute of
// /state but `state_crc32` itself, in name order: its name, its type as HDF5
// encodes it (byte order, size, sign), its element count and its raw stored
// bytes; then the names of the objects in /state. /state/rng has its own crc32
// attribute (its data is written by every rank, see RunJob). The writer
// computes it by reading back what it wrote, so writer and reader run the same
// code.
uint32_t StateDigest(hid_t group, const std::string& ctx) {
  struct Acc {
    uLong crc = crc32(0, Z_NULL, 0);
    void Add(const void* p, size_t n) { crc = crc32_z(crc, static_cast<const Bytef*>(p), n); }
    void AddStr(const std::string& s) { Add(s.c_str(), s.size() + 1); }
  } acc;
  std::vector<std::string> attrs, links;
  H5_CHECK(CorruptCheckpointError,
           H5Aiterate2(group, H5_INDEX_NAME, H5_ITER_INC, nullptr, CollectName<H5A_info_t>, &attrs),
           ctx);
  H5_CHECK(CorruptCheckpointError,
           H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, nullptr, CollectName<H5L_info_t>, &links),
           ctx);
  for (const auto& name : attrs) {
    if (name == "state_crc32") continue;
    const std::string actx = fmt::format("{} attribute {}", ctx, name);
    H5Id a(H5_CHECK(CorruptCheckpointError, H5Aopen(group, name.c_str(), H5P_DEFAULT), actx),
           H5Aclose);
    H5Id type(H5_CHECK(CorruptCheckpointError, H5Aget_type(a.get()), actx), H5Tclose);
    H5Id space(H5_CHECK(CorruptCheckpointError, H5Aget_space(a.get()), actx), H5Sclose);
    size_t encoded = 0;
    H5_CHECK(CorruptCheckpointError, H5Tencode(type.get(), nullptr, &encoded), actx);
    std::string enc(encoded, '\0');
    H5_CHECK(CorruptCheckpointError, H5Tencode(type.get(), enc.data(), &encoded), actx);
    const int64_t n =
        H5_CHECK(CorruptCheckpointError, H5Sget_simple_extent_npoints(space.get()), actx);
    if (H5Tis_variable_str(type.get()) > 0) {
      FT_THROW(CorruptCheckpointError, "{} is a variable-length string", actx);
    }
    std::string raw(static_cast<size_t>(n) * H5Tget_size(type.get()), '\0');
    H5_CHECK(CorruptCheckpointError, H5Aread(a.get(), type.get(), raw.data()), actx);
    acc.AddStr(name);
    acc.AddStr(enc);
    acc.Add(&n, sizeof n);
    acc.Add(raw.data(), raw.size());
  }
  for (const auto& name : links) acc.AddStr(name);
  return static_cast<uint32_t>(acc.crc);
}

namespace {

// Checks the /state checksum of a checkpoint of `version`; `ctx` names the
// file. A version-1 file (written before state checksums) has none: accepted
// with a warning, unverified.
void VerifyState(hid_t g, int64_t version, const std::string& ctx) {
  const bool has = H5Aexists(g, "state_crc32") > 0;
  H5Eclear2(H5E_DEFAULT);
  if (version == 1 && !has) {
    LogWarn(
        "{}: written by an ftune before state checksums (format_version 1): "
        "its training "
        "state (step, loader, RNG, config) cannot be verified; the tensors are",
        ctx);
    return;
  }
  if (!has) FT_THROW(CorruptCheckpointError, "{}: attribute 'state_crc32' is missing", ctx);
  const uint32_t stored = ReadAttrU32(g, "state_crc32", ctx);
  const uint32_t got = StateDigest(g, ctx);
  if (got != stored) {
    FT_THROW(CorruptCheckpointError,
             "{}: checksum mismatch in the training state (crc32 {:08x}, "
             "stored {:08x}): step, loader position, RNG, layout or config are "
             "damaged",
             ctx, got, stored);
  }
}

}  // namespace

CheckpointMeta ReadMetaFrom(hid_t file, const std::string& path) {
  CheckpointMeta m;
  m.path = path;
  if (H5Lexists(file, "/state", H5P_DEFAULT) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    FT_THROW(CorruptCheckpointError, "checkpoint {} has no /state group", path);
  }
  H5Id g(H5_CHECK(CorruptCheckpointError, H5Gopen2(file, "/state", H5P_DEFAULT), path), H5Gclose);
  const std::string ctx = path + " /state";
  const std::string magic = ReadAttrString(g.get(), "magic", ctx);
  if (magic != kCheckpointMagic) {
    FT_THROW(CorruptCheckpointError, "{} is not an ftune checkpoint (magic '{}', expected '{}')",
             path, magic, kCheckpointMagic);
  }
  m.format_version = ReadAttrInt(g.get(), "format_version", ctx);
  if (m.format_version == 1 || m.format_version == kCheckpointFormatVersion) {
    VerifyState(g.get(), m.format_version, ctx);
  } else if (m.format_version < 1 || H5Aexists(g.get(), "state_crc32") <= 0 ||
             StateDigest(g.get(), ctx) != ReadAttrU32(g.get(), "state_crc32", ctx)) {
    // An unknown version whose state does not verify is a damaged known one,
    // not a newer one.
    H5Eclear2(H5E_DEFAULT);
    FT_THROW(CorruptCheckpointError,
             "{}: format_version {} is not a known version and the state "
             "checksum does not match: the file is damaged",
             ctx, m.format_version);
  } else {
    FT_THROW(ModelError,
             "checkpoint {} has format_version {}; this ftune reads version {}: use "
             "the ftune that wrote it (or export it to an HF directory with that "
             "one)",
             path, m.format_version, kCheckpointFormatVersion);
  }
  auto& s = m.state;
  s.step = ReadAttrInt(g.get(), "step", ctx);
  s.total_steps = ReadAttrInt(g.get(), "total_steps", ctx);
  s.tokens_seen = ReadAttrInt(g.get(), "tokens_seen", ctx);
  s.skipped_steps = ReadAttrInt(g.get(), "skipped_steps", ctx);
  s.lr = ReadAttrDouble(g.get(), "lr", ctx);
  s.loader.epoch = ReadAttrInt(g.get(), "loader_epoch", ctx);
  s.loader.cursor = ReadAttrInt(g.get(), "loader_cursor", ctx);
  s.loader.seed = ReadAttrInt(g.get(), "loader_seed", ctx);
  m.dp = ReadAttrInt(g.get(), "dp", ctx);
  m.tp = ReadAttrInt(g.get(), "tp", ctx);
  m.zero = ReadAttrInt(g.get(), "zero", ctx);
  m.world_size = ReadAttrInt(g.get(), "world_size", ctx);
  m.seed = ReadAttrInt(g.get(), "seed", ctx);
  m.dtype = ReadAttrString(g.get(), "dtype", ctx);
  m.config_yaml = ReadAttrString(g.get(), "config_yaml", ctx);
  m.model_config_json = ReadAttrString(g.get(), "model_config", ctx);
  m.tokenizer_dir = ReadAttrString(g.get(), "tokenizer_dir", ctx);
  const int64_t named = StepOfFile(files::BaseName(path));
  if (named >= 0 && named != s.step) {
    FT_THROW(CorruptCheckpointError,
             "{}: the file name says step {} but the checkpoint holds step "
             "{} (renamed or damaged)",
             ctx, named, s.step);
  }
  return m;
}

H5Id OpenForCollectiveRead(parallel::Communicator& comm, const std::string& path,
                           CheckpointMeta& meta) {
  if (!files::IsFile(path)) {
    FT_THROW(CorruptCheckpointError, "checkpoint {} does not exist", path);
  }
  H5Id fapl(parallel::MakeMpioFileAccess(comm), H5Pclose);
  H5Id file(H5_CHECK(CorruptCheckpointError, H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()),
                     "opening checkpoint " + path),
            H5Fclose);
  meta = ReadMetaFrom(file.get(), path);
  return file;
}

}  // namespace checkpoint_detail

using namespace checkpoint_detail;

CheckpointMeta CheckpointManager::Load(const std::string& path) {
  Wait();
  auto& comm = *comm_;
  LoadStats stats;
  const auto t_read = Clock::now();
  CheckpointMeta meta;
  H5Id file, dxpl;
  Phase(comm, "opening " + path, [&]() {
    H5Lock lock;
    file = OpenForCollectiveRead(comm, path, meta);
    dxpl = H5Id(parallel::MakeCollectiveTransfer(), H5Pclose);
  });
  // One agreement for all datasets (see RunJob); each rank reads the elements
  // of its views, by an independent transfer where every rank's range is
  // contiguous.
  std::vector<int64_t> entries, bytes;
  std::vector<uint32_t> stored(3 * plan_->tensors.size(), 0);
  // Views on a GPU are read into host memory (HDF5 and the checksums need host pointers) and
  // copied to the device once the file verified.
  std::vector<std::pair<at::Tensor, at::Tensor>> staged;  // (device view, host copy)
  staged.reserve(3 * plan_->tensors.size());
  Deferred reads;
  for (size_t i = 0; i < plan_->tensors.size(); ++i) {
    const auto& t = plan_->tensors[i];
    for (int k = 0; k < 3; ++k) {
      const std::string name = DatasetName(t.name, k);
      const std::string ctx = fmt::format("checkpoint {} dataset {}", path, name);
      const int64_t id = static_cast<int64_t>(3 * i + k);
      bytes.push_back(t.numel * 4);
      float* buf = nullptr;
      if (t.view >= 0) {
        const auto& v = plan_->views[t.view];
        const at::Tensor& live = k == 0 ? v.master : k == 1 ? v.exp_avg : v.exp_avg_sq;
        if (live.is_cpu()) {
          buf = live.data_ptr<float>();
        } else {
          staged.emplace_back(live, torch::empty(live.sizes(), torch::kFloat));
          buf = staged.back().second.data_ptr<float>();
        }
      }
      reads.Run([&]() {
        H5Lock lock;
        if (H5Lexists(file.get(), name.c_str(), H5P_DEFAULT) <= 0) {
          H5Eclear2(H5E_DEFAULT);
          FT_THROW(CorruptCheckpointError, "{} is missing (a truncated or damaged file?)", ctx);
        }
        H5Id ds(
            H5_CHECK(CorruptCheckpointError, H5Dopen2(file.get(), name.c_str(), H5P_DEFAULT), ctx),
            H5Dclose);
        H5Id fspace(H5_CHECK(CorruptCheckpointError, H5Dget_space(ds.get()), ctx), H5Sclose);
        const int nd = H5Sget_simple_extent_ndims(fspace.get());
        std::vector<hsize_t> dims(std::max(nd, 0));
        if (nd > 0) H5Sget_simple_extent_dims(fspace.get(), dims.data(), nullptr);
        if (std::vector<int64_t>(dims.begin(), dims.end()) != t.full_shape) {
          FT_THROW(ModelError,
                   "{} has shape [{}] but the model's {} is [{}]: the "
                   "checkpoint was "
                   "written for another architecture (model.arch / model.path)",
                   ctx, fmt::join(dims, ", "), t.name, fmt::join(t.full_shape, ", "));
        }
        stored[id] = ReadAttrU32(ds.get(), "crc32", ctx);
        if (t.contiguous) {
          if (buf) ReadSliceOf(ds.get(), fspace.get(), t.blocks, t.count, buf, H5P_DEFAULT, ctx);
        } else {
          ReadSliceOf(ds.get(), fspace.get(), t.blocks, t.count, buf, dxpl.get(), ctx);
        }
        if (!t.owner) return;
        const auto t_crc = Clock::now();
        for (const auto& r : t.runs) {
          entries.insert(entries.end(),
                         {id, r.full_offset * 4, r.count * 4,
                          static_cast<int64_t>(Crc32(buf + r.local_offset, r.count * 4))});
        }
        stats.crc_s += Since(t_crc);
      });
    }
  }
  reads.Agree(comm, "reading " + path);
  stats.read_s = Since(t_read);
  const auto t_verify = Clock::now();
  const std::vector<uint32_t> crc = CombineCrcs(comm, entries, bytes);
  Phase(comm, "verifying " + path, [&]() {
    for (size_t id = 0; id < crc.size(); ++id) {
      if (crc[id] != stored[id]) {
        FT_THROW(CorruptCheckpointError,
                 "checkpoint {}: checksum mismatch in {} (crc32 {:08x}, "
                 "stored {:08x}): the file is damaged",
                 path, DatasetName(plan_->tensors[id / 3].name, static_cast<int>(id % 3)), crc[id],
                 stored[id]);
      }
    }
  });
  stats.verify_s = Since(t_verify);
  const auto t_params = Clock::now();
  at::Tensor rng;
  Phase(comm, "reading " + path + " /state/rng", [&]() {
    H5Lock lock;
    const std::string ctx = path + " /state/rng";
    H5Id ds(H5_CHECK(CorruptCheckpointError, H5Dopen2(file.get(), "/state/rng", H5P_DEFAULT), ctx),
            H5Dclose);
    H5Id fspace(H5_CHECK(CorruptCheckpointError, H5Dget_space(ds.get()), ctx), H5Sclose);
    hsize_t dims[2] = {0, 0};
    if (H5Sget_simple_extent_ndims(fspace.get()) != 2) {
      FT_THROW(CorruptCheckpointError, "{} is not 2-D", ctx);
    }
    H5Sget_simple_extent_dims(fspace.get(), dims, nullptr);
    // Every rank reads all rows (a few KB each) to verify them against their
    // crc32 (format 2).
    auto all =
        torch::empty({static_cast<int64_t>(dims[0]), static_cast<int64_t>(dims[1])}, torch::kUInt8);
    H5_CHECK(CorruptCheckpointError,
             H5Dread(ds.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, dxpl.get(), all.data_ptr()),
             ctx);
    if (meta.format_version >= 2) {
      const uint32_t stored = ReadAttrU32(ds.get(), "crc32", ctx);
      const uint32_t got = Crc32(all.data_ptr(), all.numel());
      if (got != stored) {
        FT_THROW(CorruptCheckpointError,
                 "{}: checksum mismatch in the RNG states (crc32 {:08x}, "
                 "stored {:08x}): the file is damaged",
                 ctx, got, stored);
      }
    }
    // Same world size: each rank its own state; else everyone takes rank 0's.
    const int64_t row = dims[0] == static_cast<hsize_t>(comm.size()) ? comm.rank() : 0;
    rng = all[row].clone();
  });
  Phase(comm, "closing " + path, [&]() {
    H5Lock lock;
    dxpl.Close();
    H5_CHECK(IoError, file.Close(), "closing " + path);
  });
  for (auto& [device_view, host] : staged) device_view.copy_(host);
  dp_.LoadMasterIntoParams();
  try {
    auto gen = CpuGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(rng);
  } catch (const std::exception& e) {
    LogWarn(
        "checkpoint {}: the saved RNG state does not fit this torch ({}); "
        "keeping the current "
        "one",
        path, e.what());
  }
  stats.params_s = Since(t_params);
  last_load_ = stats;
  return meta;
}

std::optional<CheckpointMeta> CheckpointManager::LoadLatest() {
  Wait();
  // Rank 0 lists the directory; everyone tries the same files in the same
  // order.
  std::vector<int64_t> steps;
  if (comm_->rank() == 0) {
    for (const auto& p : CheckpointCandidates(dir_)) {
      steps.push_back(StepOfFile(files::BaseName(p)));
    }
  }
  auto n = torch::tensor({static_cast<int64_t>(steps.size())}, torch::kLong);
  comm_->Broadcast(n, 0)->Wait();
  auto st = torch::zeros({n.item<int64_t>()}, torch::kLong);
  if (comm_->rank() == 0) {
    for (size_t i = 0; i < steps.size(); ++i) st[i] = steps[i];
  }
  if (st.numel() > 0) comm_->Broadcast(st, 0)->Wait();
  if (st.numel() == 0) return std::nullopt;
  std::vector<std::string> bad;
  for (int64_t i = 0; i < st.numel(); ++i) {
    const std::string path = files::Join(dir_, CheckpointFileName(st[i].item<int64_t>()));
    try {
      return Load(path);
    } catch (const CorruptCheckpointError& e) {
      LogWarn("checkpoint {} is unusable, falling back to the previous one: {}", path, e.what());
      bad.push_back(path);
    }
  }
  FT_THROW(IoError,
           "none of the {} checkpoint(s) in {} is usable ({}): refusing to "
           "start from "
           "scratch. Move them away, or start over with --no-resume "
           "(checkpoint.resume: false)",
           bad.size(), dir_, fmt::join(bad, ", "));
}

}  // namespace ftune::runtime
