#include "data/shards.h"

#include <hdf5.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/hdf5.h"
#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune::data {
using nlohmann::json;

std::mutex& Hdf5Mutex() {
  static std::mutex m;
  return m;
}

namespace {

using Hid = H5Id;

Hid Checked(hid_t id, herr_t (*close)(hid_t), const std::string& file, const char* what,
            bool data_error) {
  if (id < 0) {
    const std::string msg = fmt::format("{}: {} failed: {}", file, what, H5ErrorStack());
    if (data_error) throw DataError(msg);
    throw IoError(msg);
  }
  return Hid(id, close);
}

void WriteStringAttr(hid_t obj, const char* name, const std::string& value,
                     const std::string& file) {
  Hid type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5_CHECK(IoError, H5Tset_size(type.get(), std::max<size_t>(1, value.size())), file,
           "H5Tset_size");
  H5_CHECK(IoError, H5Tset_strpad(type.get(), H5T_STR_NULLPAD), file, "H5Tset_strpad");
  Hid space(H5Screate(H5S_SCALAR), H5Sclose);
  Hid attr = Checked(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                     H5Aclose, file, name, false);
  std::string buf = value.empty() ? std::string(1, '\0') : value;
  H5_CHECK(IoError, H5Awrite(attr.get(), type.get(), buf.data()), file, name);
}

void WriteIntAttr(hid_t obj, const char* name, const std::vector<int64_t>& values, bool scalar,
                  const std::string& file) {
  Hid space;
  if (scalar) {
    space = Hid(H5Screate(H5S_SCALAR), H5Sclose);
  } else {
    hsize_t n = values.size();
    space = Hid(H5Screate_simple(1, &n, nullptr), H5Sclose);
  }
  Hid attr = Checked(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                     H5Aclose, file, name, false);
  H5_CHECK(IoError, H5Awrite(attr.get(), H5T_NATIVE_INT64, values.data()), file, name);
}

std::string ReadStringAttr(hid_t obj, const char* name, const std::string& file) {
  if (H5Aexists(obj, name) <= 0) FT_THROW(DataError, "{}: attribute '{}' is missing", file, name);
  Hid attr = Checked(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose, file, name, true);
  Hid type = Checked(H5Aget_type(attr.get()), H5Tclose, file, name, true);
  Hid space = Checked(H5Aget_space(attr.get()), H5Sclose, file, name, true);
  // H5Aread writes every element: an array of strings would overrun the one-string buffer.
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0 ||
      H5Sget_simple_extent_npoints(space.get()) != 1) {
    FT_THROW(DataError,
             "{}: attribute '{}' is not one fixed-length string (a damaged shard, or not "
             "written by ftune prepare: re-run ftune prepare)",
             file, name);
  }
  std::string buf(H5Tget_size(type.get()), '\0');
  H5_CHECK(DataError, H5Aread(attr.get(), type.get(), buf.data()), file, name);
  buf.resize(std::strlen(buf.c_str()));
  return buf;
}

int64_t ReadIntAttr(hid_t obj, const char* name, const std::string& file) {
  if (H5Aexists(obj, name) <= 0) FT_THROW(DataError, "{}: attribute '{}' is missing", file, name);
  Hid attr = Checked(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose, file, name, true);
  Hid space = Checked(H5Aget_space(attr.get()), H5Sclose, file, name, true);
  if (H5Sget_simple_extent_npoints(space.get()) != 1) {
    FT_THROW(DataError, "{}: attribute '{}' is not a scalar", file, name);
  }
  int64_t v = 0;
  H5_CHECK(DataError, H5Aread(attr.get(), H5T_NATIVE_INT64, &v), file, name);
  return v;
}

template <class T>
void WriteDataset(hid_t file, const char* name, hid_t file_type, hid_t mem_type,
                  const std::vector<T>& data, int compression, const std::string& path) {
  const hsize_t n = data.size();
  Hid space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Hid dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  // No timestamps in object headers: equal inputs give byte-identical files.
  H5_CHECK(IoError, H5Pset_obj_track_times(dcpl.get(), false), path, "H5Pset_obj_track_times");
  // Small chunks when uncompressed: the loader reads documents at random and HDF5 reads
  // (and caches) whole chunks. Compressed chunks are larger to compress well.
  const hsize_t limit = compression > 0 ? hsize_t(1) << 16 : hsize_t(1) << 14;
  const hsize_t chunk = std::max<hsize_t>(1, std::min<hsize_t>(n, limit));
  H5_CHECK(IoError, H5Pset_chunk(dcpl.get(), 1, &chunk), path, "H5Pset_chunk");
  if (compression > 0) {
    H5_CHECK(IoError, H5Pset_shuffle(dcpl.get()), path, "H5Pset_shuffle");
    H5_CHECK(IoError, H5Pset_deflate(dcpl.get(), compression), path, "H5Pset_deflate");
  }
  Hid ds = Checked(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(),
                              H5P_DEFAULT),
                   H5Dclose, path, name, false);
  H5_CHECK(IoError, H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()),
           path, name);
}

// Opens a 1-D dataset of integers of `size` bytes, returning its length.
Hid OpenDataset(hid_t file, const char* name, size_t size, const std::string& path,
                int64_t* length) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) {
    FT_THROW(DataError, "{}: dataset {} is missing (not a ftune shard?)", path, name);
  }
  Hid ds = Checked(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose, path, name, true);
  Hid type = Checked(H5Dget_type(ds.get()), H5Tclose, path, name, true);
  Hid space = Checked(H5Dget_space(ds.get()), H5Sclose, path, name, true);
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_size(type.get()) != size ||
      H5Sget_simple_extent_ndims(space.get()) != 1) {
    FT_THROW(DataError, "{}: dataset {} is not a 1-D array of {}-byte integers", path, name,
             size);
  }
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space.get(), &n, nullptr);
  *length = static_cast<int64_t>(n);
  return ds;
}

void ReadSlab(hid_t ds, hid_t mem_type, int64_t start, int64_t count, void* out,
              const std::string& path, const char* name) {
  Hid fspace = Checked(H5Dget_space(ds), H5Sclose, path, name, true);
  const hsize_t off = start, cnt = count;
  H5_CHECK(DataError, H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, &off, nullptr, &cnt,
                                          nullptr),
           path, "H5Sselect_hyperslab");
  Hid mspace(H5Screate_simple(1, &cnt, nullptr), H5Sclose);
  H5_CHECK(DataError, H5Dread(ds, mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, out), path,
           fmt::format("reading {} [{}, {})", name, start, start + count));
}

}  // namespace

std::string ShardFileName(const std::string& split, int64_t index) {
  return fmt::format("{}-{:05d}.h5", split, index);
}

void WriteShard(const std::string& path, const DatasetMeta& meta, const std::string& split,
                int64_t shard_index, const std::vector<int32_t>& tokens,
                const std::vector<uint8_t>& mask, const std::vector<int64_t>& doc_offsets,
                const DocTasks& tasks) {
  FT_CHECK(tokens.size() == mask.size() && doc_offsets.size() >= 2 &&
               doc_offsets.back() == static_cast<int64_t>(tokens.size()) &&
               (tasks.ids.empty() || tasks.ids.size() + 1 == doc_offsets.size()),
           "malformed shard contents for {}", path);
  const std::string tmp = path + ".tmp";
  {
    H5Lock lock;
    QuietHdf5();
    Hid fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
    H5_CHECK(IoError, H5Pset_obj_track_times(fcpl.get(), false), tmp, "H5Pset_obj_track_times");
    Hid file = Checked(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT), H5Fclose,
                       tmp, "H5Fcreate", false);
    WriteDataset(file.get(), "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, tokens,
                 meta.compression, tmp);
    WriteDataset(file.get(), "loss_mask", H5T_STD_U8LE, H5T_NATIVE_UINT8, mask,
                 meta.compression, tmp);
    WriteDataset(file.get(), "doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, doc_offsets,
                 meta.compression, tmp);
    const hid_t root = file.get();
    if (!tasks.ids.empty()) {
      WriteDataset(root, "doc_task", H5T_STD_I32LE, H5T_NATIVE_INT32, tasks.ids,
                   meta.compression, tmp);
      WriteStringAttr(root, "task_names", json(tasks.names).dump(), tmp);
    }
    WriteIntAttr(root, "format_version", {kShardFormatVersion}, true, tmp);
    WriteStringAttr(root, "tokenizer_sha256", meta.tokenizer_sha256, tmp);
    WriteIntAttr(root, "vocab_size", {meta.vocab_size}, true, tmp);
    WriteIntAttr(root, "bos_id", {meta.bos_id}, true, tmp);
    WriteIntAttr(root, "eos_id", {meta.eos_ids.empty() ? -1 : meta.eos_ids[0]}, true, tmp);
    WriteIntAttr(root, "eos_ids", meta.eos_ids.empty() ? std::vector<int64_t>{-1} : meta.eos_ids,
                 false, tmp);
    WriteIntAttr(root, "pad_id", {meta.pad_id}, true, tmp);
    WriteStringAttr(root, "template", meta.template_name, tmp);
    WriteStringAttr(root, "split", split, tmp);
    WriteIntAttr(root, "shard_index", {shard_index}, true, tmp);
    WriteIntAttr(root, "num_docs", {static_cast<int64_t>(doc_offsets.size()) - 1}, true, tmp);
    WriteIntAttr(root, "num_tokens", {static_cast<int64_t>(tokens.size())}, true, tmp);
    WriteStringAttr(root, "sources", meta.sources_json, tmp);
    WriteStringAttr(root, "created_by", meta.created_by, tmp);
    H5_CHECK(IoError, H5Fflush(file.get(), H5F_SCOPE_GLOBAL), tmp, "H5Fflush");
    file.reset();
  }
  files::Rename(tmp, path);
}

ShardReader::ShardReader(const std::string& path) : path_(path) {
  H5Lock lock;
  QuietHdf5();
  if (!files::Exists(path)) FT_THROW(DataError, "shard {} does not exist", path);
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    FT_THROW(DataError, "shard {} is not a readable HDF5 file (truncated or corrupt)", path);
  }
  Hid file = Checked(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, path,
                     "H5Fopen (truncated or corrupt shard?)", true);
  int64_t n_tok = 0, n_mask = 0, n_off = 0;
  Hid tokens = OpenDataset(file.get(), "tokens", 4, path, &n_tok);
  Hid mask = OpenDataset(file.get(), "loss_mask", 1, path, &n_mask);
  Hid offsets = OpenDataset(file.get(), "doc_offsets", 8, path, &n_off);
  if (n_tok != n_mask) {
    FT_THROW(DataError, "{}: /tokens has {} entries but /loss_mask {}", path, n_tok, n_mask);
  }
  if (n_off < 2) FT_THROW(DataError, "{}: /doc_offsets has {} entries (< 2)", path, n_off);
  const int64_t version = ReadIntAttr(file.get(), "format_version", path);
  if (version != kShardFormatVersion) {
    FT_THROW(DataError, "{}: shard format_version {} is not {} (re-run ftune prepare)", path,
             version, kShardFormatVersion);
  }
  doc_offsets_.resize(n_off);
  ReadSlab(offsets.get(), H5T_NATIVE_INT64, 0, n_off, doc_offsets_.data(), path, "doc_offsets");
  if (doc_offsets_.front() != 0 || doc_offsets_.back() != n_tok) {
    FT_THROW(DataError, "{}: /doc_offsets runs from {} to {}, not 0 to {} (corrupt shard)", path,
             doc_offsets_.front(), doc_offsets_.back(), n_tok);
  }
  for (int64_t i = 1; i < n_off; ++i) {
    if (doc_offsets_[i] <= doc_offsets_[i - 1]) {
      FT_THROW(DataError, "{}: /doc_offsets is not increasing at {} (corrupt shard)", path, i);
    }
  }
  num_tokens_ = n_tok;
  tokenizer_sha256_ = ReadStringAttr(file.get(), "tokenizer_sha256", path);
  split_ = ReadStringAttr(file.get(), "split", path);
  vocab_size_ = ReadIntAttr(file.get(), "vocab_size", path);
  pad_id_ = ReadIntAttr(file.get(), "pad_id", path);
  eos_id_ = ReadIntAttr(file.get(), "eos_id", path);
  if (ReadIntAttr(file.get(), "num_tokens", path) != n_tok) {
    FT_THROW(DataError, "{}: attribute num_tokens disagrees with /tokens (corrupt shard)", path);
  }
  if (H5Lexists(file.get(), "doc_task", H5P_DEFAULT) > 0) {
    int64_t n_task = 0;
    Hid ds = OpenDataset(file.get(), "doc_task", 4, path, &n_task);
    if (n_task != n_off - 1) {
      FT_THROW(DataError, "{}: /doc_task has {} entries for {} documents (corrupt shard)", path,
               n_task, n_off - 1);
    }
    tasks_.ids.resize(n_task);
    ReadSlab(ds.get(), H5T_NATIVE_INT32, 0, n_task, tasks_.ids.data(), path, "doc_task");
    const json names = json::parse(ReadStringAttr(file.get(), "task_names", path), nullptr, false);
    if (!names.is_array() || !std::all_of(names.begin(), names.end(),
                                          [](const json& n) { return n.is_string(); })) {
      FT_THROW(DataError, "{}: attribute task_names is not a JSON list of strings", path);
    }
    tasks_.names = names.get<std::vector<std::string>>();
    for (int32_t id : tasks_.ids) {
      if (id < -1 || id >= static_cast<int64_t>(tasks_.names.size())) {
        FT_THROW(DataError, "{}: /doc_task holds {}, outside [-1, {}) (corrupt shard)", path, id,
                 tasks_.names.size());
      }
    }
  }
  tokens_ = tokens.release();
  mask_ = mask.release();
  file_ = file.release();
}

const std::string& ShardReader::doc_task(int64_t doc) const {
  static const std::string kNone;
  if (tasks_.ids.empty()) return kNone;
  const int32_t id = tasks_.ids.at(doc);
  return id < 0 ? kNone : tasks_.names[id];
}

ShardReader::~ShardReader() {
  H5Lock lock;
  if (tokens_ >= 0) H5Dclose(tokens_);
  if (mask_ >= 0) H5Dclose(mask_);
  if (file_ >= 0) H5Fclose(file_);
}

void ShardReader::Read(int64_t start, int64_t count, int32_t* tokens, uint8_t* mask) {
  if (start < 0 || count < 0 || start + count > num_tokens_) {
    FT_THROW(InternalError, "{}: read [{}, {}) outside [0, {})", path_, start, start + count,
             num_tokens_);
  }
  if (count == 0) return;
  H5Lock lock;
  ReadSlab(tokens_, H5T_NATIVE_INT32, start, count, tokens, path_, "tokens");
  ReadSlab(mask_, H5T_NATIVE_UINT8, start, count, mask, path_, "loss_mask");
}

void ShardReader::ReadAll(std::vector<int32_t>* tokens, std::vector<uint8_t>* mask) {
  tokens->resize(num_tokens_);
  mask->resize(num_tokens_);
  H5Lock lock;
  H5_CHECK(DataError,
           H5Dread(tokens_, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, tokens->data()),
           path_, "H5Dread tokens");
  H5_CHECK(DataError,
           H5Dread(mask_, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, mask->data()), path_,
           "H5Dread loss_mask");
}

// ---------------------------------------------------------------- manifest

namespace {

json SplitToJson(const SplitEntry& s) {
  json shards = json::array();
  for (const auto& e : s.shards) {
    shards.push_back({{"file", e.file},
                      {"num_docs", e.num_docs},
                      {"num_tokens", e.num_tokens},
                      {"bytes", e.bytes}});
  }
  return {{"num_docs", s.num_docs}, {"num_tokens", s.num_tokens}, {"shards", shards}};
}

// j[key] as an integer. (json's get<int64_t>() of a float truncates it, and is undefined
// behaviour when it is out of range.)
int64_t IntAt(const json& j, const char* key, const std::string& path) {
  const json& v = j.at(key);
  if (!v.is_number_integer()) {
    FT_THROW(DataError, "{}: malformed manifest: {} is {}, not an integer (re-run ftune prepare)",
             path, key, v.dump().substr(0, 80));
  }
  return v.get<int64_t>();
}

SplitEntry SplitFromJson(const json& j, const std::string& path) {
  SplitEntry s;
  s.num_docs = IntAt(j, "num_docs", path);
  s.num_tokens = IntAt(j, "num_tokens", path);
  for (const auto& e : j.at("shards")) {
    s.shards.push_back({e.at("file").get<std::string>(), IntAt(e, "num_docs", path),
                        IntAt(e, "num_tokens", path), IntAt(e, "bytes", path)});
  }
  return s;
}

}  // namespace

const SplitEntry& Manifest::split(const std::string& name) const {
  if (name == "train") return train;
  if (name == "test") return test;
  FT_THROW(DataError, "unknown split '{}' (train | test)", name);
}

void WriteManifest(const std::string& dir, const Manifest& m) {
  json j = {{"format_version", m.format_version},
            {"created_by", m.meta.created_by},
            {"fingerprint", m.fingerprint},
            {"tokenizer_sha256", m.meta.tokenizer_sha256},
            {"vocab_size", m.meta.vocab_size},
            {"bos_id", m.meta.bos_id},
            {"eos_ids", m.meta.eos_ids},
            {"pad_id", m.meta.pad_id},
            {"template", m.meta.template_name},
            {"compression", m.meta.compression},
            {"max_seq_len", m.max_seq_len},
            {"train_on_prompt", m.train_on_prompt},
            {"sources", json::parse(m.meta.sources_json)},
            {"splits", {{"train", SplitToJson(m.train)}, {"test", SplitToJson(m.test)}}}};
  const std::string path = files::Join(dir, kManifestName);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << j.dump(1) << "\n";
    out.flush();
    if (!out) FT_THROW(IoError, "cannot write {}", tmp);
  }
  files::Rename(tmp, path);
}

Manifest ReadManifest(const std::string& dir) {
  const std::string path = files::Join(dir, kManifestName);
  if (!files::Exists(path)) {
    FT_THROW(DataError,
             "{} has no {}: it is not a prepared dataset, or its `ftune prepare` did not "
             "finish; run ftune prepare",
             dir, kManifestName);
  }
  std::ifstream in(path, std::ios::binary);
  json j = json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) FT_THROW(DataError, "{}: invalid JSON", path);
  try {
    Manifest m;
    m.format_version = IntAt(j, "format_version", path);
    if (m.format_version != kShardFormatVersion) {
      FT_THROW(DataError, "{}: format_version {} is not {} (re-run ftune prepare)", path,
               m.format_version, kShardFormatVersion);
    }
    m.fingerprint = j.at("fingerprint").get<std::string>();
    m.meta.created_by = j.at("created_by").get<std::string>();
    m.meta.tokenizer_sha256 = j.at("tokenizer_sha256").get<std::string>();
    m.meta.vocab_size = IntAt(j, "vocab_size", path);
    m.meta.bos_id = IntAt(j, "bos_id", path);
    const json& eos = j.at("eos_ids");
    if (!eos.is_array()) {
      FT_THROW(DataError,
               "{}: malformed manifest: eos_ids is {}, not a list (re-run ftune prepare)", path,
               eos.dump().substr(0, 80));
    }
    for (const auto& id : eos) {
      if (!id.is_number_integer()) {
        FT_THROW(DataError,
                 "{}: malformed manifest: eos_ids holds {}, not an integer (re-run ftune prepare)",
                 path, id.dump().substr(0, 80));
      }
      m.meta.eos_ids.push_back(id.get<int64_t>());
    }
    m.meta.pad_id = IntAt(j, "pad_id", path);
    m.meta.template_name = j.at("template").get<std::string>();
    const int64_t compression = IntAt(j, "compression", path);
    if (compression < 0 || compression > 9) {
      FT_THROW(DataError, "{}: compression {} is not a gzip level 0-9 (re-run ftune prepare)", path,
               compression);
    }
    m.meta.compression = static_cast<int>(compression);
    m.meta.sources_json = j.at("sources").dump();
    m.max_seq_len = IntAt(j, "max_seq_len", path);
    m.train_on_prompt = j.at("train_on_prompt").get<bool>();
    m.train = SplitFromJson(j.at("splits").at("train"), path);
    m.test = SplitFromJson(j.at("splits").at("test"), path);
    return m;
  } catch (const json::exception& e) {
    FT_THROW(DataError, "{}: malformed manifest: {}", path, e.what());
  }
}

}  // namespace ftune::data
