#include "models/safetensors.h"

#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune::models {
namespace {

using nlohmann::json;

constexpr int64_t kMaxHeaderBytes = int64_t(100) << 20;

struct DtypeName {
  const char* name;
  at::ScalarType type;
};
constexpr DtypeName kDtypes[] = {
    {"F32", at::kFloat}, {"BF16", at::kBFloat16}, {"F16", at::kHalf},  {"F64", at::kDouble},
    {"I64", at::kLong},  {"I32", at::kInt},       {"I16", at::kShort}, {"I8", at::kChar},
    {"U8", at::kByte},   {"BOOL", at::kBool},
};

// Parses one header entry; throws IoError naming file and tensor.
TensorInfo ParseEntry(const std::string& path, const std::string& name, const json& e,
                      int64_t data_size) {
  auto bad = [&](const std::string& why) {
    return IoError(fmt::format("{}: tensor '{}': {}", path, name, why));
  };
  if (!e.is_object()) throw bad("header entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!e.contains(key)) throw bad(fmt::format("header entry has no '{}'", key));
  }
  TensorInfo info;
  info.name = name;
  if (!e["dtype"].is_string()) throw bad("dtype is not a string");
  info.dtype =
      SafetensorsDtype(e["dtype"].get<std::string>(), fmt::format("{}: tensor '{}'", path, name));
  if (!e["shape"].is_array()) throw bad("shape is not an array");
  // `span`: the bytes of the shape with each 0 dimension counted as 1, so that a zero-size
  // tensor cannot hide dimensions whose strides (and slice offsets) overflow int64.
  uint64_t numel = 1, span = c10::elementSize(info.dtype);
  for (const auto& d : e["shape"]) {
    if (!d.is_number_unsigned()) throw bad("shape has a non-integer or negative dimension");
    const uint64_t v = d.get<uint64_t>();
    if (__builtin_mul_overflow(span, std::max<uint64_t>(v, 1), &span) ||
        span > uint64_t(INT64_MAX)) {
      throw bad("shape is too large");
    }
    numel *= v;  // <= span
    info.shape.push_back(static_cast<int64_t>(v));
  }
  const auto& off = e["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
      !off[1].is_number_unsigned()) {
    throw bad("data_offsets is not a pair of non-negative integers");
  }
  const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
  if (begin > end) throw bad(fmt::format("data_offsets [{}, {}] are reversed", begin, end));
  if (end > static_cast<uint64_t>(data_size)) {
    throw bad(fmt::format("data_offsets [{}, {}] lie outside the data section ({} bytes)", begin,
                          end, data_size));
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(c10::elementSize(info.dtype)), &nbytes) ||
      nbytes != end - begin) {
    throw bad(fmt::format("shape {} x {} needs {} bytes but data_offsets [{}, {}] hold {}",
                          ShapeString(info.shape), SafetensorsDtypeName(info.dtype), nbytes, begin,
                          end, end - begin));
  }
  info.begin = static_cast<int64_t>(begin);
  info.end = static_cast<int64_t>(end);
  return info;
}

void WriteAll(std::FILE* f, const void* p, size_t n, const std::string& path) {
  if (n != 0 && std::fwrite(p, 1, n, f) != n) {
    FT_THROW(IoError, "{}: write failed: {}", path, std::strerror(errno));
  }
}

// Writes via path.tmp + rename, so a reader never sees a half-written file.
template <class Fn>
void WriteAtomically(const std::string& path, Fn&& body) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) FT_THROW(IoError, "{}: cannot create: {}", tmp, std::strerror(errno));
  try {
    body(f, tmp);
    if (std::fflush(f) != 0) FT_THROW(IoError, "{}: flush failed: {}", tmp, std::strerror(errno));
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  if (std::fclose(f) != 0) FT_THROW(IoError, "{}: close failed: {}", tmp, std::strerror(errno));
  files::Rename(tmp, path);
}

}  // namespace

std::string ShapeString(const std::vector<int64_t>& shape) {
  return "[" + fmt::format("{}", fmt::join(shape, ", ")) + "]";
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

at::ScalarType SafetensorsDtype(const std::string& name, const std::string& what) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return d.type;
  }
  FT_THROW(IoError,
           "{}: unknown or unsupported dtype '{}' (supported: F32, BF16, F16, F64, I64, "
           "I32, I16, I8, U8, BOOL)",
           what, name);
}

std::string SafetensorsDtypeName(at::ScalarType t) {
  for (const auto& d : kDtypes) {
    if (t == d.type) return d.name;
  }
  FT_THROW(IoError, "dtype {} cannot be stored in safetensors by ftune", c10::toString(t));
}

// ---------------------------------------------------------------------------------------------
SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) FT_THROW(IoError, "{}: cannot open: {}", path, std::strerror(errno));
  try {
    struct stat st {};
    if (::fstat(fd_, &st) != 0)
      FT_THROW(IoError, "{}: cannot stat: {}", path, std::strerror(errno));
    const int64_t size = st.st_size;
    if (size < 8) {
      FT_THROW(IoError,
               "{}: not a safetensors file: {} bytes, shorter than the 8-byte header "
               "length (truncated?)",
               path, size);
    }
    map_size_ = static_cast<size_t>(size);
    void* m = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd_, 0);
    if (m == MAP_FAILED) FT_THROW(IoError, "{}: mmap failed: {}", path, std::strerror(errno));
    map_ = static_cast<const uint8_t*>(m);

    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | map_[i];  // little-endian u64
    if (n > static_cast<uint64_t>(size - 8)) {
      FT_THROW(IoError,
               "{}: header length {} is larger than the file's remaining {} bytes "
               "(truncated or not a safetensors file)",
               path, n, size - 8);
    }
    if (n > static_cast<uint64_t>(kMaxHeaderBytes)) {
      FT_THROW(IoError, "{}: header length {} exceeds the 100 MB limit", path, n);
    }
    const char* h = reinterpret_cast<const char*>(map_ + 8);
    json header = json::parse(h, h + n, nullptr, /*allow_exceptions=*/false);
    if (header.is_discarded()) FT_THROW(IoError, "{}: header is not valid JSON", path);
    if (!header.is_object()) FT_THROW(IoError, "{}: header is not a JSON object", path);
    data_ = map_ + 8 + n;
    const int64_t data_size = size - 8 - static_cast<int64_t>(n);

    for (const auto& [key, value] : header.items()) {
      if (key == "__metadata__") {
        if (!value.is_object()) FT_THROW(IoError, "{}: __metadata__ is not a JSON object", path);
        for (const auto& [mk, mv] : value.items()) {
          if (!mv.is_string()) {
            FT_THROW(IoError, "{}: __metadata__ value of '{}' is not a string", path, mk);
          }
          metadata_[mk] = mv.get<std::string>();
        }
        continue;
      }
      infos_[key] = ParseEntry(path, key, value, data_size);
    }
    // No two tensors may share bytes (zero-size tensors occupy none).
    std::vector<const TensorInfo*> by_offset;
    for (const auto& [k, info] : infos_) {
      if (info.end > info.begin) by_offset.push_back(&info);
    }
    std::sort(by_offset.begin(), by_offset.end(),
              [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
      if (by_offset[i]->begin < by_offset[i - 1]->end) {
        FT_THROW(IoError, "{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap", path,
                 by_offset[i - 1]->name, by_offset[i - 1]->begin, by_offset[i - 1]->end,
                 by_offset[i]->name, by_offset[i]->begin, by_offset[i]->end);
      }
    }
  } catch (...) {
    if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), map_size_);
    ::close(fd_);
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), map_size_);
  if (fd_ >= 0) ::close(fd_);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : infos_) out.push_back(k);
  return out;
}

const TensorInfo& SafetensorsFile::Info(const std::string& name) const {
  auto it = infos_.find(name);
  if (it == infos_.end()) FT_THROW(IoError, "{}: no tensor named '{}'", path_, name);
  return it->second;
}

torch::Tensor SafetensorsFile::Get(const std::string& name) const {
  const auto& info = Info(name);
  auto out = torch::empty(info.shape, torch::dtype(info.dtype));
  if (info.end > info.begin) {
    std::memcpy(out.data_ptr(), data_ + info.begin, static_cast<size_t>(info.end - info.begin));
  }
  return out;
}

torch::Tensor SafetensorsFile::GetSlice(const std::string& name, int64_t dim, int64_t begin,
                                        int64_t end) const {
  const auto& info = Info(name);
  const int64_t rank = static_cast<int64_t>(info.shape.size());
  if (dim < 0 || dim > 1 || dim >= rank) {
    FT_THROW(IoError, "{}: tensor '{}' of shape {}: cannot slice along dim {} (0 or 1 only)", path_,
             name, ShapeString(info.shape), dim);
  }
  if (begin < 0 || begin > end || end > info.shape[dim]) {
    FT_THROW(IoError, "{}: tensor '{}' of shape {}: slice [{}, {}) of dim {} is out of range",
             path_, name, ShapeString(info.shape), begin, end, dim);
  }
  std::vector<int64_t> shape = info.shape;
  shape[dim] = end - begin;
  auto out = torch::empty(shape, torch::dtype(info.dtype));
  const int64_t esize = static_cast<int64_t>(c10::elementSize(info.dtype));
  int64_t inner = esize;  // bytes of one index along `dim`
  for (int64_t d = dim + 1; d < rank; ++d) inner *= info.shape[d];
  const int64_t outer = dim == 0 ? 1 : info.shape[0];
  const int64_t row_bytes = inner * info.shape[dim];  // bytes of one index along dim-1 (or all)
  const int64_t chunk = inner * (end - begin);
  auto* dst = static_cast<uint8_t*>(out.data_ptr());
  for (int64_t o = 0; o < outer && chunk > 0; ++o) {
    std::memcpy(dst + o * chunk, data_ + info.begin + o * row_bytes + begin * inner,
                static_cast<size_t>(chunk));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
SafetensorsCheckpoint SafetensorsCheckpoint::Open(const std::string& dir_or_file) {
  SafetensorsCheckpoint ck;
  const std::string& p = dir_or_file;
  if (files::IsFile(p)) {
    ck.files_.push_back(std::make_shared<SafetensorsFile>(p));
  } else {
    const std::string index = files::Join(p, "model.safetensors.index.json");
    const std::string single = files::Join(p, "model.safetensors");
    if (files::IsFile(index)) {
      std::ifstream in(index);
      json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object()) {
        FT_THROW(IoError, "{}: not a valid JSON object", index);
      }
      if (!j.contains("weight_map") || !j["weight_map"].is_object()) {
        FT_THROW(IoError, "{}: has no 'weight_map' object", index);
      }
      std::map<std::string, size_t> file_index;
      for (const auto& [name, file] : j["weight_map"].items()) {
        if (!file.is_string()) {
          FT_THROW(IoError, "{}: weight_map entry '{}' is not a file name", index, name);
        }
        const std::string fname = file.get<std::string>();
        if (fname.find('/') != std::string::npos) {
          FT_THROW(IoError, "{}: weight_map entry '{}' names a path outside the directory: {}",
                   index, name, fname);
        }
        auto it = file_index.find(fname);
        if (it == file_index.end()) {
          ck.files_.push_back(std::make_shared<SafetensorsFile>(files::Join(p, fname)));
          it = file_index.emplace(fname, ck.files_.size() - 1).first;
        }
        if (!ck.files_[it->second]->Has(name)) {
          FT_THROW(IoError, "{}: weight_map puts '{}' in {}, but that file has no such tensor",
                   index, name, ck.files_[it->second]->path());
        }
        ck.where_[name] = it->second;
      }
      return ck;
    } else if (files::IsFile(single)) {
      ck.files_.push_back(std::make_shared<SafetensorsFile>(single));
    } else {
      FT_THROW(ModelError,
               "{}: no model.safetensors or model.safetensors.index.json (ftune reads "
               "safetensors checkpoints only; convert .bin/.pth weights first)",
               dir_or_file);
    }
  }
  for (const auto& n : ck.files_[0]->names()) ck.where_[n] = 0;
  return ck;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : where_) out.push_back(k);
  return out;
}

const SafetensorsFile& SafetensorsCheckpoint::FileFor(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) FT_THROW(ModelError, "checkpoint has no tensor named '{}'", name);
  return *files_[it->second];
}

const TensorInfo& SafetensorsCheckpoint::Info(const std::string& name) const {
  return FileFor(name).Info(name);
}
const std::string& SafetensorsCheckpoint::FileOf(const std::string& name) const {
  return FileFor(name).path();
}
torch::Tensor SafetensorsCheckpoint::Get(const std::string& name) const {
  return FileFor(name).Get(name);
}
torch::Tensor SafetensorsCheckpoint::GetSlice(const std::string& name, int64_t dim, int64_t begin,
                                              int64_t end) const {
  return FileFor(name).GetSlice(name, dim, begin, end);
}

// ---------------------------------------------------------------------------------------------
void WriteSafetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> cpu;
  int64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__" || header.contains(name)) {
      FT_THROW(IoError, "{}: duplicate or reserved tensor name '{}'", path, name);
    }
    auto c = t.detach().to(torch::kCPU).contiguous();
    const int64_t nbytes = c.numel() * static_cast<int64_t>(c.element_size());
    header[name] = {{"dtype", SafetensorsDtypeName(c.scalar_type())},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    cpu.push_back(std::move(c));
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
  WriteAtomically(path, [&](std::FILE* f, const std::string& tmp) {
    uint8_t len[8];
    uint64_t n = h.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    WriteAll(f, len, 8, tmp);
    WriteAll(f, h.data(), h.size(), tmp);
    for (const auto& c : cpu) {
      WriteAll(f, c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size(), tmp);
    }
  });
}

std::vector<std::string> WriteSafetensorsSharded(const std::string& dir,
                                                 const NamedTensors& tensors,
                                                 int64_t max_shard_bytes) {
  if (max_shard_bytes <= 0)
    FT_THROW(IoError, "max shard size must be positive, got {}", max_shard_bytes);
  std::vector<NamedTensors> shards(1);
  int64_t current = 0, total = 0;
  for (const auto& nt : tensors) {
    const int64_t nbytes = nt.second.numel() * static_cast<int64_t>(nt.second.element_size());
    if (!shards.back().empty() && current + nbytes > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(nt);
    current += nbytes;
    total += nbytes;
  }
  files::CreateDirectories(dir);
  std::vector<std::string> written;
  if (shards.size() == 1) {
    WriteSafetensors(files::Join(dir, "model.safetensors"), shards[0]);
    return {"model.safetensors"};
  }
  json weight_map = json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string name =
        fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
    WriteSafetensors(files::Join(dir, name), shards[i]);
    for (const auto& nt : shards[i]) weight_map[nt.first] = name;
    written.push_back(name);
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  const std::string index_name = "model.safetensors.index.json";
  const std::string text = index.dump(2) + "\n";
  WriteAtomically(files::Join(dir, index_name), [&](std::FILE* f, const std::string& tmp) {
    WriteAll(f, text.data(), text.size(), tmp);
  });
  written.push_back(index_name);
  return written;
}

}  // namespace ftune::models
