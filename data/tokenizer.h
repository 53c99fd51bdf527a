// Llama tokenizers read from Hugging Face `tokenizer.json` files.
//
// Two families are supported, exactly as the `tokenizers` library runs them:
//  * "llama2-spm-bpe": SentencePiece-style BPE. Normalizer Prepend("▁") + Replace(" " -> "▁")
//    (alone or in a Sequence), or the newer Metaspace pre-tokenizer; `byte_fallback` to
//    `<0xNN>` tokens; decoder Replace/ByteFallback/Fuse/Strip (or Metaspace).
//  * "llama3-bytelevel-bpe": Split(regex, via PCRE2) + ByteLevel pre-tokenization, BPE over
//    the 256 byte-level characters (`ignore_merges`: a pre-token found whole in the vocabulary
//    is emitted as is), ByteLevel decoder.
// Any other model type (WordPiece, Unigram, ...) or pipeline component is rejected at load
// time with a DataError that names the file and the component.
//
// Added tokens (`added_tokens`, e.g. "<|eot_id|>", "<s>") found in the input text are split out
// before normalization (leftmost-longest match, honouring lstrip/rstrip/single_word/normalized)
// and map to their ids, as HF's encode() does by default.
//
// Invalid UTF-8: the tokenizers operate on Unicode text, so Encode() first replaces every
// maximal invalid byte subsequence of its input with U+FFFD (the Unicode "substitution of
// maximal subparts" practice, the same as Python's errors="replace" and the WHATWG decoder);
// it never throws on bad input. Decode() likewise returns valid UTF-8: byte-level bytes that
// do not form UTF-8 decode to U+FFFD (lossy, as HF does), and a run of `<0xNN>` tokens that is
// not valid UTF-8 yields one U+FFFD per token (HF's ByteFallback decoder).
//
// Unicode character properties (\p{L}, \p{N}, White_Space) come from the system PCRE2's tables
// (Unicode 14 for PCRE2 10.42 on Debian 12): code points assigned in later Unicode versions are
// unassigned there, so text using them may pre-tokenize differently from an implementation with
// newer tables (e.g. node's ICU).
//
// Differences from transformers' Python layer, on purpose: Decode() does not apply
// `clean_up_tokenization_spaces` (it is lossy: " ." -> "."), so Decode(Encode(s)) == s for the
// byte-level family.
//
// Thread safety: a Tokenizer is immutable after FromPath(); copies share the loaded tables and
// every const method may be called concurrently from any number of threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "parallel/load_notes.h"

namespace ftune::data {

class Tokenizer {
 public:
  // Loads tokenizer.json (path to the file, or a directory containing it; tokenizer_config.json
  // and generation_config.json beside it are read when present). Throws ftune::DataError /
  // ftune::IoError naming the file.
  static Tokenizer FromPath(const std::string& path);

  // Encodes text. Special-token text in `text` (e.g. "<|eot_id|>") maps to its id.
  // add_special_tokens adds BOS (and EOS if configured) as HF's encode() would: the
  // add_bos_token / add_eos_token flags of tokenizer_config.json where it states them, else the
  // TemplateProcessing post-processor of tokenizer.json (a ByteLevel post-processor, as in the
  // original Llama-3 release, adds nothing).
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens = false) const;
  // Appends the ids of `text` to *ids (no allocation of a fresh vector per call).
  void EncodeInto(std::string_view text, bool add_special_tokens, std::vector<int32_t>* ids) const;

  // Decodes ids with the tokenizer.json decoder. Throws DataError for an id outside
  // [0, vocab_size()); ids inside the range that name no token are skipped, as HF does.
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  std::string IdToPiece(int32_t id) const;  // raw vocab string of an id; DataError if none
  // The bytes token `id` stands for in decoded text: byte-level characters mapped back to bytes,
  // "<0xNN>" to its byte, "▁" to a space; an added token's own text. Concatenating TokenBytes
  // of a sequence gives its decoded bytes before the decoder's leading-space strip and UTF-8
  // repair (useful for streaming output, which must hold back incomplete UTF-8).
  std::string TokenBytes(int32_t id) const;
  int32_t TokenToId(std::string_view token) const;  // -1 if absent
  int64_t vocab_size() const;                       // max id + 1 over vocab and added tokens
  int32_t bos_id() const;                           // -1 if none
  // EOS candidates: tokenizer_config.json's eos_token first, then generation_config.json's
  // eos_token_id entries (deduplicated); without tokenizer_config.json, the post-processor's
  // trailing special token. May be empty.
  const std::vector<int32_t>& eos_ids() const;
  int32_t pad_id() const;             // -1 if none
  const std::string& sha256() const;  // hex sha256 of the tokenizer.json bytes
  const std::string& path() const;    // the tokenizer.json path
  std::string kind() const;           // "llama2-spm-bpe" | "llama3-bytelevel-bpe"

  // What Encode(text, true) puts around the text's ids (often just {bos} and {}).
  const std::vector<int32_t>& special_prefix_ids() const;
  const std::vector<int32_t>& special_suffix_ids() const;
  // True for added tokens marked "special" and for the special tokens tokenizer_config.json
  // lists (those Decode(..., true) drops).
  bool IsSpecial(int32_t id) const;
  // What FromPath assumed for absent keys of tokenizer_config.json / generation_config.json and
  // what in them it leaves to HF's runtime, for the caller to log.
  const LoadNotes& notes() const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace ftune::data
