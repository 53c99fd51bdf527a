// The streaming loader that `train` and `eval` read: micro-batches of a prepared split
// (data/shards.h) for one data-parallel rank.
//
// Samples. Padding mode (packing = false): sample i is document i, truncated to seq_len + 1
// tokens and padded to its batch's width + 1 (Width, below). Packing mode: the documents, in stored (input) order, are concatenated
// and cut into rows of seq_len + 1 tokens, so each row is one contiguous token range (cheap
// to read); the rows are what gets shuffled. The last row is padded. A document may continue into the next row. In a row, `segment_ids` number the
// document pieces 0, 1, ..., `positions` restart at 0 at each piece (RoPE per document), and
// the loss mask is 0 where the target crosses a piece boundary.
//
// Order. Each epoch is a permutation of the samples drawn from (seed, epoch) (identity
// without shuffle). Global micro-batch k of an epoch is permuted samples
// [k*B*dp, (k+1)*B*dp) and rank r takes its B consecutive ones at offset r*B, so over the
// ranks every sample is used exactly once per epoch. The last incomplete global batch of an
// epoch is dropped (drop_last, the default; samples_per_epoch() counts what is used) or, with
// drop_last = false (eval), filled with empty rows whose loss mask is all 0. The state is
// (epoch, global cursor, seed): restored under another dp_size or micro_batch, the loader
// continues from the same cursor in the same permutation, skipping and repeating nothing.
//
// Width. Packed rows are T = seq_len wide. An unpacked batch is cut to its longest row (the
// tokens of its longest document, at most seq_len) rounded up to a multiple of pad_to_multiple
// and of 2 * cp_size (capped at seq_len): the cut columns are padding in every row (loss mask
// 0), so a batch of short examples costs its own length, not seq_len. The width is a function
// of the batch's samples only: a restored loader (or another cp rank) makes the same batches.
//
// Batch tensors, with B = micro_batch and T = the batch's width (above; T / cp_size under
// context parallelism: this rank's chunks, positions global, num_targets its own):
//   tokens (B, T) int64 | targets (B, T) int64 = tokens shifted by one | loss_mask (B, T) f32
//   positions (B, T) int64 | segment_ids (B, T) int64 (packing only, undefined otherwise)
//   sample_ids (B) int64: the global sample index of each row (-1 for an empty filler row)
//
// Threads. All reading (HDF5 hyperslabs of the needed documents only, never whole files)
// happens in one background prefetch thread per Loader, holding Hdf5Mutex() around every
// HDF5 call; Next() takes ready batches from a queue of `prefetch` batches. A Loader itself
// is used from one thread. Errors of the prefetch thread are rethrown by Next().
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>

namespace ftune::data {

struct Batch {               // one micro-batch for this rank
  torch::Tensor tokens;      // (B, T) int64 inputs
  torch::Tensor targets;     // (B, T) int64, tokens shifted by one
  torch::Tensor loss_mask;   // (B, T) float32 1 where targets[b,t] is trained on
  torch::Tensor positions;   // (B, T) int64 RoPE positions (restart per document when packing)
  torch::Tensor segment_ids; // (B, T) int64 document index within the row (packing), undefined otherwise
  torch::Tensor sample_ids;  // (B) int64 global sample index of each row, -1 for filler rows
  int64_t num_targets = 0;   // loss_mask.sum()
};

struct LoaderOptions {
  std::string dir;                        // prepared dataset directory (data.dir resolved)
  std::string split = "train";            // train | test
  int64_t seq_len = 0;                    // the longest row: at most seq_len + 1 tokens
  int64_t micro_batch = 1;                // B: rows per rank per batch
  bool packing = false;
  int64_t pad_to_multiple = 8;            // unpacked: batch width rounded up to a multiple of this
  int64_t seed = 0;                       // shuffle seed
  int dp_rank = 0;
  int dp_size = 1;
  // Context parallelism: every batch's rows cut to this cp rank's two chunks (the cp ranks of a
  // dp rank read the same rows; parallel/context_parallel.h). T must be divisible by 2 * cp_size.
  int cp_rank = 0;
  int cp_size = 1;
  std::string expected_tokenizer_sha256;  // the model's tokenizer; empty = not checked
  bool shuffle = true;
  int64_t prefetch = 4;                   // batches prepared ahead
  bool drop_last = true;                  // false: fill the last global batch with empty rows
};

struct LoaderState {
  int64_t epoch = 0;
  int64_t cursor = 0;  // global sample cursor within the epoch
  int64_t seed = 0;
};

class Loader {
 public:
  // Validates the manifest and every shard of the split (sizes, datasets, attributes).
  // Throws DataError: no/incomplete dataset, tokenizer sha256 mismatch (naming both),
  // truncated or corrupt shard (naming the file), fewer samples than one global batch.
  explicit Loader(const LoaderOptions& opts);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  Batch Next();  // next micro-batch of this rank (advances across epochs)
  LoaderState state() const;  // the position after the last batch Next() returned
  void Restore(const LoaderState& s);
  int64_t samples_per_epoch() const;  // global samples (rows) used per epoch
  int64_t num_samples() const;        // all samples of the split (before drop_last)
  int64_t num_tokens() const;         // tokens of the split
  double wait_seconds() const;        // time Next() spent waiting for the prefetch thread

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ftune::data
