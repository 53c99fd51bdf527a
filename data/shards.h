// HDF5 token shards and the dataset manifest (DESIGN.md "Data formats").
//
// A prepared dataset directory holds, per split, shard files `<split>-NNNNN.h5`:
//   /tokens       int32 [N]    all token ids, documents concatenated
//   /loss_mask    uint8 [N]    1 where the token is a training target
//   /doc_offsets  int64 [D+1]  start of each document in /tokens (last = N)
//   /doc_task     int32 [D]    optional (data.task_field): each document's task label, an index
//                              into the string attribute task_names (a JSON list); -1 = none
//   attrs: format_version, tokenizer_sha256, vocab_size, bos_id, eos_id, eos_ids, pad_id,
//          template, split, shard_index, num_docs, num_tokens, sources (JSON list of
//          {path, sha256, bytes}), created_by
// plus `prepare_summary.json` and `manifest.json`, written LAST: a directory without a
// manifest is an incomplete dataset and no reader accepts it. Each shard is written to
// `<name>.tmp` and renamed when complete. Files carry no timestamps (object time tracking
// is off), so the same inputs and settings give byte-identical files.
//
// Thread safety: Debian's HDF5 is built without its thread-safe option, so every HDF5 call
// in data/ is made while holding Hdf5Mutex(); any other code of the process that calls HDF5
// from a second thread must hold it too.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace ftune::data {

inline constexpr int64_t kShardFormatVersion = 1;

std::mutex& Hdf5Mutex();

// Attributes shared by all shards of one prepared dataset.
struct DatasetMeta {
  std::string tokenizer_sha256;
  int64_t vocab_size = 0;
  int64_t bos_id = -1;
  std::vector<int64_t> eos_ids;  // the first is the one appended after responses
  int64_t pad_id = -1;
  std::string template_name;
  std::string sources_json;  // [{"path": ..., "sha256": ..., "bytes": ...}, ...]
  std::string created_by = "ftune prepare";
  int compression = 0;  // gzip level of the datasets (0 = none)
};

// Per-document task labels of one shard (/doc_task and its task_names attribute).
struct DocTasks {
  std::vector<std::string> names;  // the labels the ids refer to
  std::vector<int32_t> ids;        // one per document (-1 = no label); empty = no /doc_task
};

// Writes one complete shard as `path`.tmp, then renames it to `path`. `doc_offsets` has
// D+1 entries starting at 0 and ending at tokens.size(); `tasks.ids` is empty or has D
// entries in [-1, names.size()). Throws IoError naming the file.
void WriteShard(const std::string& path, const DatasetMeta& meta, const std::string& split,
                int64_t shard_index, const std::vector<int32_t>& tokens,
                const std::vector<uint8_t>& mask, const std::vector<int64_t>& doc_offsets,
                const DocTasks& tasks = {});

// One open shard, validated at open time: datasets present with the right types and
// lengths, doc_offsets monotone from 0 to N, format_version known. Reads hyperslabs only.
// Every method takes Hdf5Mutex() itself. Throws DataError naming the file.
class ShardReader {
 public:
  explicit ShardReader(const std::string& path);
  ~ShardReader();
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  const std::string& path() const { return path_; }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_docs() const { return static_cast<int64_t>(doc_offsets_.size()) - 1; }
  const std::vector<int64_t>& doc_offsets() const { return doc_offsets_; }
  const std::string& tokenizer_sha256() const { return tokenizer_sha256_; }
  const std::string& split() const { return split_; }
  int64_t vocab_size() const { return vocab_size_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t eos_id() const { return eos_id_; }
  // Document `doc`'s task label; "" when it has none or the shard has no /doc_task.
  const std::string& doc_task(int64_t doc) const;

  // tokens[start, start+count) and their mask into the given buffers.
  void Read(int64_t start, int64_t count, int32_t* tokens, uint8_t* mask);
  // The whole /tokens and /loss_mask datasets in one H5Dread each (benchmark baseline).
  void ReadAll(std::vector<int32_t>* tokens, std::vector<uint8_t>* mask);

 private:
  std::string path_;
  int64_t file_ = -1, tokens_ = -1, mask_ = -1;  // hid_t
  int64_t num_tokens_ = 0;
  std::vector<int64_t> doc_offsets_;
  std::string tokenizer_sha256_, split_;
  int64_t vocab_size_ = 0, pad_id_ = -1, eos_id_ = -1;
  DocTasks tasks_;
};

struct ShardEntry {
  std::string file;  // name inside the dataset directory
  int64_t num_docs = 0;
  int64_t num_tokens = 0;
  int64_t bytes = 0;  // file size, checked before opening (truncation)
};

struct SplitEntry {
  int64_t num_docs = 0;
  int64_t num_tokens = 0;
  std::vector<ShardEntry> shards;
};

struct Manifest {
  int64_t format_version = kShardFormatVersion;
  std::string fingerprint;  // sha256 of everything that determines the dataset's contents
  DatasetMeta meta;
  int64_t max_seq_len = 0;
  bool train_on_prompt = false;
  SplitEntry train, test;

  const SplitEntry& split(const std::string& name) const;  // throws DataError for others
};

inline constexpr const char* kManifestName = "manifest.json";
inline constexpr const char* kSummaryName = "prepare_summary.json";

// Writes manifest.json (via a .tmp file and rename) as the last step of prepare.
void WriteManifest(const std::string& dir, const Manifest& m);
// Reads and checks dir/manifest.json. Throws DataError naming the directory when it is
// absent ("incomplete or not a dataset: run ftune prepare") or malformed.
Manifest ReadManifest(const std::string& dir);

// "train-00012.h5"
std::string ShardFileName(const std::string& split, int64_t index);

}  // namespace ftune::data
