// The `tokenizer` and `data` config sections.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "parallel/config_fields.h"

namespace ftune::data {

struct TokenizerConfig {
  std::string path;  // HF model dir or tokenizer.json; empty = model.path

  template <class V>
  void VisitFields(V& v) {
    v("path", path, "HF model directory or tokenizer.json file; empty = model.path");
  }
  void Validate() const {}
};

struct SplitConfig {
  double test_ratio = 0.1;   // fraction of records held out for test (used when test_count < 0)
  int64_t test_count = -1;   // exact number of test records; -1 = use test_ratio
  int64_t seed = 1234;       // the split is a deterministic function of this seed
  bool dedup = false;        // drop exact duplicate records before splitting

  template <class V>
  void VisitFields(V& v) {
    v("test_ratio", test_ratio, "fraction of records held out for the test split");
    v("test_count", test_count, "exact number of test records; -1 = use test_ratio");
    v("seed", seed, "seed of the deterministic train/test split");
    v("dedup", dedup, "drop exact duplicate records before splitting");
  }
  void Validate() const {
    CheckRange("test_ratio", test_ratio, 0.0, 1.0);
    if (test_count < -1) throw ConfigKeyError("test_count", "must be >= 0 or -1");
  }
};

struct DataConfig {
  std::vector<std::string> inputs;      // JSONL files or globs
  std::string format = "auto";          // auto | text | qa | alpaca | chat
  std::string template_name = "auto";   // auto | none | qa | alpaca | chat | inline text with {field}
  std::string chat_template;            // "" = the tokenizer's own; a .jinja file or a named template
  std::vector<std::string> chat_template_kwargs;  // extra template variables, "name=value"
  std::string dir = "data";             // prepared shards, relative to run.output_dir unless absolute
  int64_t max_seq_len = 512;            // tokens per example (prepare) and per row (training)
  std::string overlong = "truncate";    // truncate | drop examples longer than max_seq_len
  bool train_on_prompt = false;         // loss on prompt tokens too (default: response only)
  bool packing = false;                 // concatenate examples into full rows (else pad each)
  // Unpacked batches are cut to their longest row rounded up to this multiple: 8 keeps bf16
  // GEMM dims tensor-core aligned and the number of distinct shapes small, wasting < 8 columns.
  int64_t pad_to_multiple = 8;
  bool strict = false;                  // stop at the first bad record instead of skipping it
  int64_t shard_tokens = 1 << 22;       // tokens per HDF5 shard file
  int64_t compression = 0;              // gzip level of shard datasets (0 = uncompressed)
  int64_t shuffle_seed = 1234;          // per-epoch shuffling of training samples
  std::string task_field = "task";      // record field holding the example's task label
  SplitConfig split;

  template <class V>
  void VisitFields(V& v) {
    v("inputs", inputs, "JSONL files or glob patterns");
    v("format", format, "auto | text | qa | alpaca | chat");
    v("template", template_name, "auto | none | qa | alpaca | chat | inline '{field}' text");
    v("chat_template", chat_template,
      "chat records: '' = the tokenizer's own chat template; else a .jinja file or the name of "
      "one of the tokenizer's named templates");
    v("chat_template_kwargs", chat_template_kwargs,
      "extra chat template variables as name=value (value as JSON, else a string), e.g. "
      "enable_thinking=false");
    v("dir", dir, "directory of prepared shards (relative to run.output_dir unless absolute)");
    v("max_seq_len", max_seq_len, "maximum tokens per example and per training row");
    v("overlong", overlong, "truncate | drop examples longer than max_seq_len");
    v("train_on_prompt", train_on_prompt, "compute the loss on prompt tokens too");
    v("packing", packing, "pack several examples into each row");
    v("pad_to_multiple", pad_to_multiple,
      "unpacked: each micro-batch is cut to its longest row, rounded up to this multiple");
    v("strict", strict, "stop at the first bad record instead of skipping it");
    v("shard_tokens", shard_tokens, "tokens per HDF5 shard file");
    v("compression", compression, "gzip level 0-9 of shard datasets (0 = uncompressed)");
    v("shuffle_seed", shuffle_seed, "seed of the per-epoch shuffle of training samples");
    v("task_field", task_field,
      "record field with the example's task label, for per-task eval metrics ('' = none)");
    v("split", split, "train/test split");
  }
  void Validate() const {
    CheckOneOf("format", format, {"auto", "text", "qa", "alpaca", "chat"});
    CheckRange<int64_t>("max_seq_len", max_seq_len, 8, 1 << 20);
    CheckOneOf("overlong", overlong, {"truncate", "drop"});
    CheckRange<int64_t>("pad_to_multiple", pad_to_multiple, 1, max_seq_len);
    CheckRange<int64_t>("shard_tokens", shard_tokens, 1024, int64_t(1) << 40);
    CheckRange<int64_t>("compression", compression, 0, 9);
  }
};

}  // namespace ftune::data
