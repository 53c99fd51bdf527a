// `ftune prepare`: JSON Lines -> templated, tokenized, split HDF5 shards (data/shards.h).
//
// Pipeline, per rank: its byte range of the inputs (the files concatenated, cut into equal
// ranges at line starts) -> parse (data/records.h) -> render (data/templates.h) -> tokenize
// -> truncate/drop at data.max_seq_len -> a rank-local spool file of examples and rejects.
// Then rank 0 consumes every rank's spool in rank order (the other ranks' bytes arrive by
// Communicator::Broadcast in fixed-size pieces, so no shared file system is needed for the
// spool), and alone decides the split, de-duplicates and writes shards, the summary and,
// last, the manifest. The output is therefore a function of the inputs and settings only:
// byte-identical for any number of ranks. Memory per rank is bounded by the shard buffers
// (data.shard_tokens x 5 bytes per split) plus the I/O buffers, whatever the input size;
// split.dedup adds 16 bytes per distinct example on rank 0, split.test_count 8 bytes per
// test example.
//
// Split: each example gets a key = sha256(split.seed, sha256(tokens, mask)). By ratio, an
// example is test when key < test_ratio * 2^64 (the test fraction is test_ratio in
// expectation, not exactly); by count, the test split is the test_count distinct examples
// with the smallest keys. Either way identical examples have identical keys, so an example
// never lands in both splits, with or without split.dedup (which keeps only the first copy).
//
// Task labels: a record's string field named data.task_field (e.g. {"question": ..., "answer":
// ..., "task": "capitals"}) is stored per document (/doc_task, data/shards.h) so that `ftune
// eval` can report metrics per task; records without it have no label. The label does not
// enter the split key: labelling a dataset never moves an example between splits.
//
// Bad records are skipped and counted by reason with the first line numbers of each; with
// data.strict the first bad record (in input order) is an error. Zero kept examples is
// always an error. An output directory holding a different dataset (another manifest
// fingerprint) is refused unless `overwrite`; leftovers of an unfinished prepare (shards
// without a manifest) are removed. The old manifest is removed before anything else, and
// the new one written last, so an interrupted prepare never leaves a dataset that looks
// complete.
//
// Collective: every rank of `comm` calls Prepare with the same options.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/config.h"
#include "parallel/load_notes.h"

namespace ftune::parallel {
class Communicator;
}

namespace ftune::data {

struct PrepareOptions {
  DataConfig data;
  std::string tokenizer_path;  // tokenizer.path, else model.path
  std::string out_dir;         // data.dir resolved against run.output_dir
  bool overwrite = false;      // replace a different dataset in out_dir
  int64_t preview = 0;         // > 0: print this many rendered examples and write nothing
};

struct SplitStats {
  int64_t examples = 0;
  int64_t tokens = 0;
  int64_t masked_tokens = 0;  // loss_mask == 0
  int64_t max_len = 0;
  int64_t shards = 0;
};

struct RejectStats {
  int64_t count = 0;
  std::vector<std::string> first;  // "file:line" of the first few
  std::string first_detail;
};

struct PrepareSummary {
  LoadNotes tokenizer_notes;  // what the tokenizer's config files left to assumption
  std::vector<std::string> files;
  int64_t input_bytes = 0;
  int64_t records_read = 0;  // non-blank lines
  int64_t truncated = 0;     // kept, cut to max_seq_len
  int64_t duplicates_removed = 0;
  std::map<std::string, RejectStats> rejected;  // by reason
  SplitStats train, test;
  std::map<std::string, std::pair<int64_t, int64_t>> tasks;  // label -> kept (train, test)
  double seconds = 0;  // wall time (not in the JSON: the JSON is deterministic)

  int64_t rejected_total() const;
  std::string ToJson() const;  // written as prepare_summary.json
  std::string ToText() const;  // printed on stdout
};

// Runs prepare (see the header comment). `comm` == nullptr: this process alone.
// Returns the summary on every rank (complete on rank 0). Throws DataError / IoError /
// ConfigError, the same one on every rank for input errors.
PrepareSummary Prepare(const PrepareOptions& opts, parallel::Communicator* comm);

// Expands the input patterns (glob(3); a pattern matching nothing is a DataError naming it).
std::vector<std::string> ExpandInputs(const std::vector<std::string>& patterns);

}  // namespace ftune::data
