// `ftune tokenize`: run a tokenizer.json from the command line.
//   --text "..."          one line per token: id, the raw vocab piece as a JSON string, and the
//                         bytes it stands for with escapes (\n, \t, \xNN), tab-separated
//   --jsonl FILE          one JSON string (or {"text": ...}) per line in, one JSON array of ids
//                         per line out, special tokens not added unless --add-special-tokens
//   --jsonl FILE --decode one JSON array of ids per line in, one JSON string per line out
//   --jsonl FILE --bench N  encode every line N times and print one JSON line of timings
//                         (encode time only: loading and I/O are not counted)
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "launch/commands.h"
#include "parallel/error.h"
#include "runtime/log.h"

namespace ftune::launch {
namespace {

using json = nlohmann::json;

struct TokenizeArgs {
  std::string tokenizer;
  std::string text;
  std::string jsonl;
  bool add_special_tokens = false;
  bool skip_special_tokens = false;
  bool decode = false;
  int bench = 0;
};

std::string Quote(const std::string& s) {
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

// Bytes as a quoted C-style string: UTF-8 characters and printable ASCII as they are, other
// bytes (controls, the pieces of a split character) as escapes.
std::string QuoteBytes(const std::string& s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80                ? 1
                 : c >= 0xC2 && c < 0xE0 ? 2
                 : c >= 0xE0 && c < 0xF0 ? 3
                 : c >= 0xF0 && c < 0xF5 ? 4
                                         : 0;
    bool utf8 = len > 1 && i + len <= s.size();
    for (size_t k = 1; utf8 && k < len; ++k)
      utf8 = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    if (utf8) {
      out.append(s, i, len);
      i += len - 1;
    } else if (c == '\\' || c == '"') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  return out + "\"";
}

// Reads one JSON value per non-blank line.
std::vector<json> ReadJsonLines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) FT_THROW(IoError, "cannot open {}", path);
  std::vector<json> out;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      out.push_back(json::parse(line));
    } catch (const json::exception& e) {
      FT_THROW(DataError, "{}:{}: invalid JSON: {}", path, line_no, e.what());
    }
  }
  if (in.bad()) FT_THROW(IoError, "cannot read {}", path);
  return out;
}

std::vector<std::string> ReadTexts(const std::string& path) {
  std::vector<std::string> texts;
  int64_t i = 0;
  for (auto& v : ReadJsonLines(path)) {
    ++i;
    if (v.is_string()) {
      texts.push_back(v.get<std::string>());
    } else if (v.is_object() && v.contains("text") && v["text"].is_string()) {
      texts.push_back(v["text"].get<std::string>());
    } else {
      FT_THROW(DataError, "{}: record {} is neither a JSON string nor {{\"text\": ...}}", path, i);
    }
  }
  return texts;
}

void Write(const std::string& s) {
  if (std::fwrite(s.data(), 1, s.size(), stdout) != s.size()) {
    FT_THROW(IoError, "cannot write to stdout");
  }
}

void RunTokenize(const TokenizeArgs& a) {
  if (a.text.empty() == a.jsonl.empty()) {
    FT_THROW(ConfigError, "tokenize: give exactly one of --text or --jsonl");
  }
  const auto tok = data::Tokenizer::FromPath(a.tokenizer);
  runtime::LogNotesOnce(tok.notes(), /*info=*/false);  // stdout is the ids
  std::string out;
  if (!a.text.empty()) {
    for (int32_t id : tok.Encode(a.text, a.add_special_tokens)) {
      out +=
          fmt::format("{}\t{}\t{}\n", id, Quote(tok.IdToPiece(id)), QuoteBytes(tok.TokenBytes(id)));
    }
    Write(out);
    return;
  }
  if (a.decode) {
    int64_t i = 0;
    for (const auto& v : ReadJsonLines(a.jsonl)) {
      ++i;
      if (!v.is_array())
        FT_THROW(DataError, "{}: record {} is not a JSON array of ids", a.jsonl, i);
      out += Quote(tok.Decode(v.get<std::vector<int32_t>>(), a.skip_special_tokens));
      out += '\n';
    }
    Write(out);
    return;
  }
  const std::vector<std::string> texts = ReadTexts(a.jsonl);
  if (a.bench > 0) {
    std::vector<int32_t> ids;
    int64_t tokens = 0, bytes = 0;
    for (const auto& t : texts) bytes += static_cast<int64_t>(t.size());
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < a.bench; ++r) {
      for (const auto& t : texts) {
        ids.clear();
        tok.EncodeInto(t, a.add_special_tokens, &ids);
        tokens += static_cast<int64_t>(ids.size());
      }
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Write(
        fmt::format("{{\"impl\": \"ftune\", \"texts\": {}, \"repeats\": {}, \"bytes\": {}, "
                    "\"tokens\": {}, \"seconds\": {:.6f}, \"tokens_per_s\": {:.1f}}}\n",
                    texts.size(), a.bench, bytes * a.bench, tokens, s, tokens / s));
    return;
  }
  std::vector<int32_t> ids;
  for (const auto& t : texts) {
    ids.clear();
    tok.EncodeInto(t, a.add_special_tokens, &ids);
    out += '[';
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i > 0) out += ',';
      out += std::to_string(ids[i]);
    }
    out += "]\n";
  }
  Write(out);
}

}  // namespace

void AddTokenizeCommand(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  auto* sub = app.add_subcommand("tokenize", "encode text with a HF tokenizer.json");
  sub->add_option("--tokenizer", args->tokenizer, "tokenizer.json or the directory holding it")
      ->required();
  sub->add_option("--text", args->text, "text to encode; prints id and piece per line");
  sub->add_option("--jsonl", args->jsonl,
                  "one JSON string per line; prints one JSON array of ids per line");
  sub->add_flag("--add-special-tokens", args->add_special_tokens,
                "add BOS/EOS as HF's encode(add_special_tokens=True) does");
  sub->add_flag("--decode", args->decode,
                "with --jsonl: read JSON arrays of ids and print decoded JSON strings");
  sub->add_flag("--skip-special-tokens", args->skip_special_tokens,
                "with --decode: drop special tokens");
  sub->add_option("--bench", args->bench,
                  "with --jsonl: encode the file N times and print tokens/s (encode time only)");
  sub->callback([args]() { RunTokenize(*args); });
}

}  // namespace ftune::launch
