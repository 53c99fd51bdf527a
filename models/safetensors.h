// safetensors files: a memory-mapped, validating reader and a sharding writer.
//
// Format (https://github.com/huggingface/safetensors): 8 bytes little-endian u64 N, N bytes of
// JSON header {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the data section; offsets are relative to the start of the data section. Tensors are
// stored row-major, little-endian (ftune assumes a little-endian host, as x86 and ARM Linux are).
//
// The reader validates the whole header when it opens a file (size, header length, JSON, dtypes,
// shape x element size == byte length, offsets inside the data section, no overlaps) and throws
// IoError naming the file (and the tensor) for every violation, so later reads never go out of
// bounds. Tensor bytes are only touched when a tensor (or a slice of one) is read: a slice along
// dim 0 or dim 1 copies just the bytes of that slice, which is what tensor-parallel loading needs.
//
// Thread safety: a SafetensorsFile / SafetensorsCheckpoint is immutable after opening; its const
// methods may be called from several threads.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ftune::models {

// One tensor's header entry. `begin`/`end` are byte offsets into the data section.
struct TensorInfo {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  int64_t begin = 0;
  int64_t end = 0;
  int64_t numel() const;
};

// "F32" -> at::kFloat, "BF16", "F16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL";
// throws IoError naming `what` for anything else. And the reverse.
at::ScalarType SafetensorsDtype(const std::string& name, const std::string& what);
std::string SafetensorsDtypeName(at::ScalarType t);
// "[2, 3]": a shape as error messages show it.
std::string ShapeString(const std::vector<int64_t>& shape);

// One memory-mapped .safetensors file. Owns the mapping (unmapped on destruction); not copyable.
class SafetensorsFile {
 public:
  // Maps and validates `path`; throws IoError naming the file (and tensor) on any problem.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool Has(const std::string& name) const { return infos_.count(name) != 0; }
  const TensorInfo& Info(const std::string& name) const;  // IoError if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // A copy of the whole tensor, in its stored dtype, on the CPU.
  torch::Tensor Get(const std::string& name) const;
  // A copy of indices [begin, end) along `dim` (0 or 1) of the tensor; only those bytes are read.
  torch::Tensor GetSlice(const std::string& name, int64_t dim, int64_t begin, int64_t end) const;

 private:
  std::string path_;
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
};

// A HF checkpoint's weights: `dir/model.safetensors`, or the shards listed in
// `dir/model.safetensors.index.json` (weight_map). A path to a single .safetensors file works too.
class SafetensorsCheckpoint {
 public:
  // Throws ModelError when the directory has neither file, IoError on a bad file or index
  // (a weight_map entry whose tensor is not in its shard is an error naming both).
  static SafetensorsCheckpoint Open(const std::string& dir_or_file);

  std::vector<std::string> names() const;  // sorted
  bool Has(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& Info(const std::string& name) const;
  const std::string& FileOf(const std::string& name) const;  // path of the shard holding it
  torch::Tensor Get(const std::string& name) const;
  torch::Tensor GetSlice(const std::string& name, int64_t dim, int64_t begin, int64_t end) const;

 private:
  const SafetensorsFile& FileFor(const std::string& name) const;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index in files_
};

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes one .safetensors file (via `path.tmp` + rename). Tensors are written in the given
// order (any device/dtype from the list above; non-contiguous ones are made contiguous).
// Throws IoError on duplicate names or write failure.
void WriteSafetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Writes `tensors` into `dir` as HF does: one `model.safetensors` when the total fits in
// `max_shard_bytes`, else `model-0000i-of-0000n.safetensors` shards (a new shard starts when the
// next tensor would overflow the current one; a tensor bigger than the limit gets its own shard)
// plus `model.safetensors.index.json` {"metadata": {"total_size"}, "weight_map"}. Each file is
// written to a temp name and renamed. Returns the file names written (index last).
std::vector<std::string> WriteSafetensorsSharded(const std::string& dir,
                                                 const NamedTensors& tensors,
                                                 int64_t max_shard_bytes);

}  // namespace ftune::models
