#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)

#include <algorithm>

#include "models/hf_io.h"
#include "parallel/gather_strings.h"
#include "runtime/checkpoint_internal.h"
#include "runtime/log.h"
#include "runtime/parallelize.h"

namespace ftune::runtime {
namespace {

using namespace checkpoint_detail;

// The /model tensors of `path`, read collectively: rank r reads elements
// [numel * r / size, numel * (r + 1) / size) of every tensor (one contiguous
// range of the file, by an independent MPI-IO transfer), the crc32s of the
// slices are combined and checked against the stored ones on every rank, and
// the tensors are gathered on rank 0 (empty list elsewhere). Without `gather` each slice is
// dropped once checksummed and nothing is gathered (verification only).
models::NamedTensors ReadModelCollective(parallel::Communicator& comm, const std::string& path,
                                         CheckpointMeta& meta, bool gather = true) {
  H5Id file;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  Phase(comm, "opening " + path, [&]() {
    data::QuietHdf5();
    H5Lock lock;
    file = OpenForCollectiveRead(comm, path, meta);
    shapes = models::HfTensorShapes(models::LlamaConfig::FromJson(
        nlohmann::json::parse(meta.model_config_json), path + " /state model_config"));
  });
  const int64_t rank = comm.rank(), size = comm.size();
  std::vector<at::Tensor> mine(shapes.size());
  std::vector<int64_t> entries, bytes, counts_of(shapes.size() * size);
  std::vector<uint32_t> stored(shapes.size(), 0);
  Deferred reads;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const auto& [name, shape] = shapes[i];
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    for (int64_t r = 0; r < size; ++r) {
      counts_of[i * size + r] = numel * (r + 1) / size - numel * r / size;
    }
    const int64_t a = numel * rank / size, b = numel * (rank + 1) / size;
    mine[i] = torch::empty({b - a}, torch::kFloat);
    bytes.push_back(numel * 4);
    const std::string ds_name = DatasetName(name, 0);
    const std::string ctx = fmt::format("checkpoint {} dataset {}", path, ds_name);
    reads.Run([&]() {
      H5Lock lock;
      if (H5Lexists(file.get(), ds_name.c_str(), H5P_DEFAULT) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        FT_THROW(CorruptCheckpointError, "{} is missing", ctx);
      }
      H5Id ds(
          H5_CHECK(CorruptCheckpointError, H5Dopen2(file.get(), ds_name.c_str(), H5P_DEFAULT), ctx),
          H5Dclose);
      H5Id fspace(H5_CHECK(CorruptCheckpointError, H5Dget_space(ds.get()), ctx), H5Sclose);
      std::vector<hsize_t> dims(std::max(0, H5Sget_simple_extent_ndims(fspace.get())));
      if (!dims.empty()) H5Sget_simple_extent_dims(fspace.get(), dims.data(), nullptr);
      if (std::vector<int64_t>(dims.begin(), dims.end()) != shape) {
        FT_THROW(CorruptCheckpointError, "{} has shape [{}], its config.json says [{}]", ctx,
                 fmt::join(dims, ", "), fmt::join(shape, ", "));
      }
      stored[i] = ReadAttrU32(ds.get(), "crc32", ctx);
      if (b == a) return;
      std::vector<Block> blocks;
      std::vector<hsize_t> prefix;
      Decompose(shape, 0, a, b, prefix, blocks);
      SelectBlocks(fspace.get(), blocks, ctx);
      hsize_t n = static_cast<hsize_t>(b - a);
      H5Id mspace(H5_CHECK(IoError, H5Screate_simple(1, &n, nullptr), ctx), H5Sclose);
      H5_CHECK(CorruptCheckpointError,
               H5Dread(ds.get(), H5T_NATIVE_FLOAT, mspace.get(), fspace.get(), H5P_DEFAULT,
                       mine[i].data_ptr<float>()),
               ctx);
      entries.insert(entries.end(),
                     {static_cast<int64_t>(i), a * 4, (b - a) * 4,
                      static_cast<int64_t>(Crc32(mine[i].data_ptr<float>(), (b - a) * 4))});
      if (!gather) mine[i] = at::Tensor();
    });
  }
  reads.Agree(comm, "reading " + path);
  const std::vector<uint32_t> crc = CombineCrcs(comm, entries, bytes);
  Phase(comm, "verifying " + path, [&]() {
    for (size_t i = 0; i < crc.size(); ++i) {
      if (crc[i] != stored[i]) {
        FT_THROW(CorruptCheckpointError,
                 "checkpoint {} dataset {}: checksum mismatch (crc32 "
                 "{:08x}, stored {:08x}): the file is damaged",
                 path, DatasetName(shapes[i].first, 0), crc[i], stored[i]);
      }
    }
  });
  Phase(comm, "closing " + path, [&]() { H5_CHECK(IoError, file.Close(), "closing " + path); });
  models::NamedTensors out;
  if (!gather) return out;
  for (size_t i = 0; i < shapes.size(); ++i) {
    auto full = torch::empty(shapes[i].second, torch::kFloat);
    auto flat = full.view({-1});
    comm.AllGatherV(
            mine[i], flat,
            std::vector<int64_t>(counts_of.begin() + i * size, counts_of.begin() + (i + 1) * size))
        ->Wait();
    mine[i] = at::Tensor();
    if (rank == 0) out.emplace_back(shapes[i].first, std::move(full));
  }
  return out;
}

}  // namespace

using namespace checkpoint_detail;

CheckpointModel ReadNewestCheckpointModel(const std::string& arg, const std::string& option) {
  const auto candidates = ResolveCheckpointArg(arg, option);
  for (const auto& path : candidates) {
    try {
      CheckpointModel out;
      out.meta = ReadCheckpointMeta(path);
      out.tensors = ReadCheckpointModel(path, out.meta);
      return out;
    } catch (const CorruptCheckpointError& e) {
      LogWarn("checkpoint {} is unusable, trying the previous one: {}", path, e.what());
    }
  }
  FT_THROW(IoError, "{} {}: none of its {} checkpoint(s) is usable (see the warnings above)",
           option, arg, candidates.size());
}

namespace {

// The candidate files of `arg` (ResolveCheckpointArg on rank 0), the same list on every rank.
std::vector<std::string> CandidatesOnEveryRank(parallel::Communicator& comm,
                                               const std::string& arg, const std::string& option) {
  std::string joined;
  Phase(comm, "finding the checkpoints of " + arg, [&]() {
    if (comm.rank() != 0) return;
    for (const auto& p : ResolveCheckpointArg(arg, option)) joined += p + '\n';
  });
  joined = parallel::AllGatherStrings(comm, comm.rank() == 0 ? joined : "")[0];
  std::vector<std::string> candidates;
  for (size_t a = 0, b; (b = joined.find('\n', a)) != std::string::npos; a = b + 1) {
    candidates.push_back(joined.substr(a, b - a));
  }
  return candidates;
}

}  // namespace

CheckpointModel ReadNewestCheckpointModel(parallel::Communicator& comm, const std::string& arg,
                                          const std::string& option) {
  const auto candidates = CandidatesOnEveryRank(comm, arg, option);
  for (const auto& path : candidates) {
    try {
      CheckpointModel out;
      out.tensors = ReadModelCollective(comm, path, out.meta);
      return out;
    } catch (const CorruptCheckpointError& e) {
      LogWarn("checkpoint {} is unusable, trying the previous one: {}", path, e.what());
    }
  }
  FT_THROW(IoError, "{} {}: none of its {} checkpoint(s) is usable (see the warnings above)",
           option, arg, candidates.size());
}

CheckpointMeta VerifyNewestCheckpointModel(parallel::Communicator& comm, const std::string& arg,
                                           const std::string& option) {
  const auto candidates = CandidatesOnEveryRank(comm, arg, option);
  for (const auto& path : candidates) {
    try {
      CheckpointMeta meta;
      ReadModelCollective(comm, path, meta, /*gather=*/false);
      return meta;
    } catch (const CorruptCheckpointError& e) {
      LogWarn("checkpoint {} is unusable, trying the previous one: {}", path, e.what());
    }
  }
  FT_THROW(IoError, "{} {}: none of its {} checkpoint(s) is usable (see the warnings above)",
           option, arg, candidates.size());
}

CheckpointModelReader::CheckpointModelReader(const std::string& path) : path_(path) {
  data::QuietHdf5();
  H5Lock lock;
  file_ = H5_CHECK(CorruptCheckpointError, H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT),
                   "opening checkpoint " + path);
}

CheckpointModelReader::~CheckpointModelReader() {
  H5Lock lock;
  if (file_ >= 0) H5Fclose(static_cast<hid_t>(file_));
}

void CheckpointModelReader::Read(const std::string& name, const ShardInfo& info, int64_t begin,
                                 at::Tensor out) {
  const auto local = info.local_shape();
  FT_CHECK(!local.empty(), "{}: a scalar parameter", name);
  int64_t cols = 1;  // elements per row of the local tensor
  for (size_t d = 1; d < local.size(); ++d) cols *= local[d];
  const int64_t n = out.numel();
  if (n == 0) return;
  const int64_t r0 = begin / cols, r1 = (begin + n + cols - 1) / cols;
  // The local rows [r0, r1) as one block of the full tensor.
  std::vector<hsize_t> start(local.size(), 0), count(local.begin(), local.end());
  start[0] = static_cast<hsize_t>(r0);
  count[0] = static_cast<hsize_t>(r1 - r0);
  if (info.sharded()) start[info.dim] += static_cast<hsize_t>(info.offset);
  auto rows = torch::empty(std::vector<int64_t>(count.begin(), count.end()), torch::kFloat);
  const std::string ds_name = DatasetName(name, 0);
  const std::string ctx = fmt::format("checkpoint {} dataset {}", path_, ds_name);
  {
    H5Lock lock;
    H5Id ds(H5_CHECK(CorruptCheckpointError,
                     H5Dopen2(static_cast<hid_t>(file_), ds_name.c_str(), H5P_DEFAULT), ctx),
            H5Dclose);
    H5Id fspace(H5_CHECK(CorruptCheckpointError, H5Dget_space(ds.get()), ctx), H5Sclose);
    std::vector<hsize_t> dims(std::max(0, H5Sget_simple_extent_ndims(fspace.get())));
    if (!dims.empty()) H5Sget_simple_extent_dims(fspace.get(), dims.data(), nullptr);
    if (std::vector<int64_t>(dims.begin(), dims.end()) != info.full_shape) {
      FT_THROW(ModelError, "{} has shape [{}], the model's is [{}]", ctx, fmt::join(dims, ", "),
               fmt::join(info.full_shape, ", "));
    }
    H5_CHECK(IoError,
             H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start.data(), nullptr,
                                 count.data(), nullptr),
             ctx);
    hsize_t total = static_cast<hsize_t>(rows.numel());
    H5Id mspace(H5_CHECK(IoError, H5Screate_simple(1, &total, nullptr), ctx), H5Sclose);
    H5_CHECK(CorruptCheckpointError,
             H5Dread(ds.get(), H5T_NATIVE_FLOAT, mspace.get(), fspace.get(), H5P_DEFAULT,
                     rows.data_ptr<float>()),
             ctx);
  }
  out.copy_(rows.view({-1}).narrow(0, begin - r0 * cols, n));
}

CheckpointMeta ReadCheckpointMeta(const std::string& path) {
  data::QuietHdf5();
  H5Lock lock;
  H5Id file(H5_CHECK(CorruptCheckpointError, H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT),
                     "opening checkpoint " + path),
            H5Fclose);
  return ReadMetaFrom(file.get(), path);
}

models::NamedTensors ReadCheckpointModel(const std::string& path, const CheckpointMeta& meta) {
  const auto cfg = models::LlamaConfig::FromJson(nlohmann::json::parse(meta.model_config_json),
                                                 path + " /state model_config");
  data::QuietHdf5();
  H5Lock lock;
  H5Id file(H5_CHECK(CorruptCheckpointError, H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT),
                     "opening checkpoint " + path),
            H5Fclose);
  models::NamedTensors out;
  for (const auto& [name, shape] : models::HfTensorShapes(cfg)) {
    const std::string ds_name = DatasetName(name, 0);
    const std::string ctx = fmt::format("checkpoint {} dataset {}", path, ds_name);
    if (H5Lexists(file.get(), ds_name.c_str(), H5P_DEFAULT) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      FT_THROW(CorruptCheckpointError, "{} is missing", ctx);
    }
    H5Id ds(
        H5_CHECK(CorruptCheckpointError, H5Dopen2(file.get(), ds_name.c_str(), H5P_DEFAULT), ctx),
        H5Dclose);
    H5Id space(H5_CHECK(IoError, H5Dget_space(ds.get()), ctx), H5Sclose);
    std::vector<hsize_t> dims(std::max(0, H5Sget_simple_extent_ndims(space.get())));
    if (!dims.empty()) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    if (std::vector<int64_t>(dims.begin(), dims.end()) != shape) {
      FT_THROW(CorruptCheckpointError, "{} has shape [{}], its config.json says [{}]", ctx,
               fmt::join(dims, ", "), fmt::join(shape, ", "));
    }
    auto t = torch::empty(shape, torch::kFloat);
    H5_CHECK(
        CorruptCheckpointError,
        H5Dread(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr<float>()),
        ctx);
    const uint32_t want = ReadAttrU32(ds.get(), "crc32", ctx);
    const uint32_t got = Crc32(t.data_ptr<float>(), t.numel() * 4);
    if (got != want) {
      FT_THROW(CorruptCheckpointError,
               "{}: checksum mismatch (crc32 {:08x}, stored {:08x}): the "
               "file is damaged",
               ctx, got, want);
    }
    out.emplace_back(name, t);
  }
  return out;
}

}  // namespace ftune::runtime
