// Harness of data/tokenizer: tokenizer.json (model, normalizer, pre-tokenizer incl. its regex,
// decoder, added tokens, post-processor) with tokenizer_config.json and generation_config.json
// beside it, as Tokenizer::FromPath reads a model directory. An accepted tokenizer encodes and
// decodes a fixed text and the input's own text, and names every id below vocab_size.
#include <algorithm>

#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_target.h"

namespace {

// Text touching each part of the pipeline: spaces, digits, contractions, non-ASCII letters,
// an emoji, Llama-2 and Llama-3 special tokens, byte-fallback candidates and invalid UTF-8.
constexpr char kText[] =
    "Hello, world! It's 2024: caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80  x\n\n"
    "<s>[INST] q [/INST] a </s><|begin_of_text|><|eot_id|> \xFF\xC3 end";

void Exercise(const ftune::data::Tokenizer& tok, std::string_view text) {
  for (bool special : {false, true}) {
    const std::vector<int32_t> ids = tok.Encode(text, special);
    for (int32_t id : ids) FTUNE_FUZZ_CHECK(id >= 0 && id < tok.vocab_size());
    tok.Decode(ids, false);
    tok.Decode(ids, true);
  }
}

}  // namespace

// Input: tokenizer.json, then optionally tokenizer_config.json, generation_config.json and a
// text to encode, separated by NUL bytes (a missing file is absent from the directory).
FTUNE_FUZZ_TARGET(tokenizer) {
  using namespace ftune::fuzz;
  const auto parts = SplitParts(data, size);
  const char* const kFiles[] = {"tok/tokenizer.json", "tok/tokenizer_config.json",
                                "tok/generation_config.json"};
  std::string dir;
  for (size_t i = 0; i < 3; ++i) {
    if (i < parts.size()) {
      const std::string path = WriteScratch(kFiles[i], parts[i]);
      if (i == 0) dir = path.substr(0, path.rfind('/'));
    } else {
      RemoveScratch(kFiles[i]);
    }
  }
  ExpectInputErrors([&] {
    const auto tok = ftune::data::Tokenizer::FromPath(dir);
    FTUNE_FUZZ_CHECK(tok.vocab_size() >= 0);
    Exercise(tok, kText);
    if (parts.size() > 3) Exercise(tok, parts[3]);
    const int32_t n = int32_t(std::min<int64_t>(tok.vocab_size(), 512));
    for (int32_t id = 0; id < n; ++id) {
      tok.IsSpecial(id);
      ExpectInputErrors([&] { tok.IdToPiece(id); });
      ExpectInputErrors([&] { tok.TokenBytes(id); });
    }
    for (int32_t id : tok.eos_ids()) FTUNE_FUZZ_CHECK(id >= 0);
  });
  return 0;
}
