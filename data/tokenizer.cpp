// HF tokenizer.json loader and the encode/decode pipeline:
//   text -> (invalid UTF-8 -> U+FFFD) -> split out added tokens -> normalizer
//        -> pre-tokenizers -> BPE model (ids) [-> post-processor prefix/suffix]
//   ids  -> pieces -> decoders -> text
// Mirrors the Rust `tokenizers` crate component by component; see tokenizer.h for the contract.
#include "data/tokenizer.h"
#include "data/sha256.h"

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "data/utf8.h"
#include "parallel/error.h"

namespace ftune::data {
namespace {

using json = nlohmann::json;


// Length of the (valid) UTF-8 sequence starting with lead byte c.
inline size_t Utf8Len(unsigned char c) {
  if (c < 0x80) return 1;
  if (c < 0xE0) return 2;
  if (c < 0xF0) return 3;
  return 4;
}

// Decodes the (valid) UTF-8 character at p.
inline uint32_t DecodeCp(const char* p) {
  const auto* s = reinterpret_cast<const unsigned char*>(p);
  const unsigned char c = s[0];
  if (c < 0x80) return c;
  if (c < 0xE0) return ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
  if (c < 0xF0) return ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
  return ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
}

// Unicode White_Space (what Rust's char::is_whitespace and Oniguruma's \s accept).
inline bool IsWhiteSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

// Start of the character that ends just before byte offset `end` (valid UTF-8).
inline size_t PrevCharStart(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

// GPT-2's reversible byte <-> printable character map used by ByteLevel.
struct ByteLevelTables {
  std::array<uint32_t, 256> byte_to_cp{};
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
  ByteLevelTables() {
    std::array<bool, 256> direct{};
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) {
      byte_to_cp[b] = direct[b] ? static_cast<uint32_t>(b) : 256 + n++;
      cp_to_byte[byte_to_cp[b]] = static_cast<uint8_t>(b);
    }
  }
};

const ByteLevelTables& ByteLevel() {
  static const ByteLevelTables tables;
  return tables;
}

// Converts a byte-level token ("Ġhello") to raw bytes; false if a character is not byte-level.
bool ByteLevelToBytes(std::string_view token, std::string* out) {
  out->clear();
  const auto& map = ByteLevel().cp_to_byte;
  for (size_t i = 0; i < token.size();) {
    const size_t len = Utf8Len(static_cast<unsigned char>(token[i]));
    if (i + len > token.size()) return false;
    auto it = map.find(DecodeCp(token.data() + i));
    if (it == map.end()) return false;
    out->push_back(static_cast<char>(it->second));
    i += len;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Hash tables tuned for the encode hot path: open addressing, power-of-two sizes.

inline uint64_t HashBytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  uint64_t v = 0;
  std::memcpy(&v, p, n);
  h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
  h ^= h >> 31;
  h *= 0x94D049BB133111EBull;
  h ^= h >> 32;
  return h;
}

inline uint64_t NextPow2(uint64_t x) {
  uint64_t p = 16;
  while (p < x) p <<= 1;
  return p;
}

// Byte string -> id. Keys live in one arena.
class StringIdMap {
 public:
  void Build(const std::vector<std::pair<std::string, int32_t>>& items) {
    slots_.assign(NextPow2(items.size() * 2 + 1), Slot{});
    mask_ = slots_.size() - 1;
    arena_.clear();
    for (const auto& [key, id] : items) Insert(key, id);
  }
  int32_t Find(std::string_view key) const {
    if (slots_.empty()) return -1;
    const uint64_t h = HashBytes(key.data(), key.size());
    for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.id < 0) return -1;
      if (s.hash == h && s.len == key.size() &&
          std::memcmp(arena_.data() + s.off, key.data(), key.size()) == 0) {
        return s.id;
      }
    }
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t off = 0;
    uint32_t len = 0;
    int32_t id = -1;
  };
  void Insert(std::string_view key, int32_t id) {
    const uint64_t h = HashBytes(key.data(), key.size());
    for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.id < 0) {
        s = Slot{h, static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(key.size()), id};
        arena_.append(key);
        return;
      }
      if (s.hash == h && s.len == key.size() &&
          std::memcmp(arena_.data() + s.off, key.data(), key.size()) == 0) {
        s.id = id;  // a later duplicate wins, as in a JSON object read into a map
        return;
      }
    }
  }
  std::vector<Slot> slots_;
  std::string arena_;
  uint64_t mask_ = 0;
};

// (left id, right id) -> (rank, merged id).
class MergeMap {
 public:
  struct Value {
    int32_t rank;
    int32_t new_id;
  };
  void Reserve(size_t n) {
    slots_.assign(NextPow2(n * 2 + 1), Slot{});
    mask_ = slots_.size() - 1;
  }
  // A later duplicate pair overwrites an earlier one (HF collects merges into a map).
  void Insert(int32_t left, int32_t right, Value v) {
    const uint64_t key = Key(left, right);
    for (uint64_t i = Hash(key) & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.key == kEmpty || s.key == key) {
        s.key = key;
        s.value = v;
        return;
      }
    }
  }
  const Value* Find(int32_t left, int32_t right) const {
    const uint64_t key = Key(left, right);
    for (uint64_t i = Hash(key) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == key) return &s.value;
      if (s.key == kEmpty) return nullptr;
    }
  }
  bool empty() const { return slots_.empty(); }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key = kEmpty;
    Value value{0, 0};
  };
  static uint64_t Key(int32_t l, int32_t r) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
  }
  static uint64_t Hash(uint64_t k) {
    k *= 0x9E3779B97F4A7C15ull;
    return k ^ (k >> 29);
  }
  std::vector<Slot> slots_;
  uint64_t mask_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Regex (PCRE2, UTF + UCP, JIT when available)

// Rewrites the Oniguruma escapes whose meaning differs in PCRE2: \s/\S are Unicode White_Space
// in Oniguruma (PCRE2's \s lacks U+0085), \h is a hex digit (horizontal space in PCRE2), \w is
// Alphabetic|Mark|Nd|Pc.
std::string TranslateOnigurumaPattern(std::string_view p) {
  static constexpr std::string_view kWord = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}";
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[++i];
      switch (d) {
        case 's':
          out += "\\p{White_Space}";
          break;
        case 'S':
          out += "\\P{White_Space}";
          break;
        case 'h':
          out += in_class ? "0-9A-Fa-f" : "[0-9A-Fa-f]";
          break;
        case 'H':
          out += in_class ? "\\x{0}-\\x{2F}\\x{3A}-\\x{40}\\x{47}-\\x{60}\\x{67}-\\x{10FFFF}"
                          : "[^0-9A-Fa-f]";
          break;
        case 'w':
          out += in_class ? std::string(kWord) : fmt::format("[{}]", kWord);
          break;
        case 'W':
          if (in_class) {
            out += "\\W";
          } else {
            out += fmt::format("[^{}]", kWord);
          }
          break;
        default:
          out += c;
          out += d;
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

// Per-thread PCRE2 match state (match data with one pair, JIT stack up to 8 MiB).
struct MatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  MatchState() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    if (jit_stack != nullptr) pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~MatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  MatchState(const MatchState&) = delete;
  MatchState& operator=(const MatchState&) = delete;
};

MatchState& ThreadMatchState() {
  thread_local MatchState state;
  return state;
}

class Regex {
 public:
  Regex(const std::string& oniguruma_pattern, const std::string& where) {
    pattern_ = TranslateOnigurumaPattern(oniguruma_pattern);
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern_.data()), pattern_.size(),
                          PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(error, msg, sizeof(msg));
      FT_THROW(DataError, "{}: regex {} does not compile (PCRE2 at offset {}: {})", where,
               json(oniguruma_pattern).dump(), offset, reinterpret_cast<const char*>(msg));
    }
    uint32_t has_jit = 0;
    pcre2_config(PCRE2_CONFIG_JIT, &has_jit);
    jit_ = has_jit != 0 && pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls f(begin, end) for each non-empty match in `subject` (valid UTF-8), left to right.
  template <class F>
  void ForEachMatch(std::string_view subject, F&& f) const {
    MatchState& st = ThreadMatchState();
    const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
    const size_t n = subject.size();
    size_t pos = 0;
    while (pos < n) {
      int rc;
      if (jit_) {
        rc = pcre2_jit_match(code_, s, n, pos, PCRE2_NO_UTF_CHECK, st.data, st.context);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
          rc =
              pcre2_match(code_, s, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, st.data, st.context);
        }
      } else {
        rc = pcre2_match(code_, s, n, pos, PCRE2_NO_UTF_CHECK, st.data, st.context);
      }
      if (rc == PCRE2_ERROR_NOMATCH) return;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof(msg));
        FT_THROW(DataError, "tokenizer regex {} failed on a {}-byte text: {}", pattern_, n,
                 reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
      const size_t b = ov[0], e = ov[1];
      if (e > b) {
        f(b, e);
        pos = e;
      } else {
        pos = b + Utf8Len(static_cast<unsigned char>(subject[b]));  // skip an empty match
      }
    }
  }

 private:
  std::string pattern_;
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

// ---------------------------------------------------------------------------------------------
// Pipeline components

std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  if (from.empty()) return std::string(s);
  out.reserve(s.size() + 8);
  size_t i = 0;
  while (true) {
    const size_t j = s.find(from, i);
    if (j == std::string_view::npos) break;
    out.append(s.data() + i, j - i);
    out.append(to);
    i = j + from.size();
  }
  out.append(s.data() + i, s.size() - i);
  return out;
}

struct Normalizer {
  enum Kind { kPrepend, kReplace } kind;
  std::string a;  // prepend text | pattern
  std::string b;  // replacement content
};

void Normalize(const std::vector<Normalizer>& normalizers, std::string_view in, std::string* out) {
  out->assign(in);
  for (const auto& n : normalizers) {
    if (n.kind == Normalizer::kPrepend) {
      if (!out->empty()) out->insert(0, n.a);
    } else {
      if (out->find(n.a) != std::string::npos) *out = ReplaceAll(*out, n.a, n.b);
    }
  }
}

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
enum class PrependScheme { kAlways, kFirst, kNever };

struct Span {
  uint32_t b, e;
};

struct PreTokenizer {
  enum Kind { kSplit, kByteLevel, kMetaspace } kind;
  // kSplit (and kByteLevel with use_regex)
  std::unique_ptr<Regex> regex;  // null: split on `literal`
  std::string literal;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  // kByteLevel
  bool add_prefix_space = false;
  // kMetaspace
  std::string replacement;
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = false;
};

// Splits `text` into pieces as the tokenizers crate's Split pre-tokenizer does; appends
// non-empty spans (offset by `base`) to *out.
void SplitSpan(const PreTokenizer& pt, std::string_view text, uint32_t base,
               std::vector<Span>* out) {
  thread_local std::vector<std::pair<Span, bool>> pieces;
  pieces.clear();
  size_t prev = 0;
  auto on_match = [&](size_t b, size_t e) {
    if (b > prev) pieces.push_back({Span{uint32_t(prev), uint32_t(b)}, false});
    pieces.push_back({Span{uint32_t(b), uint32_t(e)}, true});
    prev = e;
  };
  if (pt.regex) {
    pt.regex->ForEachMatch(text, on_match);
  } else if (!pt.literal.empty()) {
    for (size_t j = text.find(pt.literal); j != std::string_view::npos;
         j = text.find(pt.literal, j + pt.literal.size())) {
      on_match(j, j + pt.literal.size());
    }
  }
  if (prev < text.size()) pieces.push_back({Span{uint32_t(prev), uint32_t(text.size())}, false});
  if (pt.invert) {
    for (auto& p : pieces) p.second = !p.second;
  }
  auto emit = [&](Span s) {
    if (s.e > s.b) out->push_back(Span{s.b + base, s.e + base});
  };
  switch (pt.behavior) {
    case SplitBehavior::kRemoved:
      for (const auto& [s, m] : pieces) {
        if (!m) emit(s);
      }
      break;
    case SplitBehavior::kIsolated:
      for (const auto& [s, m] : pieces) emit(s);
      break;
    case SplitBehavior::kMergedWithPrevious: {
      std::vector<Span> acc;
      bool previous_match = false;
      for (const auto& [s, m] : pieces) {
        if (m && !previous_match && !acc.empty()) {
          acc.back().e = s.e;
        } else {
          acc.push_back(s);
        }
        previous_match = m;
      }
      for (Span s : acc) emit(s);
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      std::vector<Span> acc;
      bool previous_match = false;
      for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) {
        const auto& [s, m] = *it;
        if (m && !previous_match && !acc.empty()) {
          acc.back().b = s.b;
        } else {
          acc.push_back(s);
        }
        previous_match = m;
      }
      for (auto it = acc.rbegin(); it != acc.rend(); ++it) emit(*it);
      break;
    }
    case SplitBehavior::kContiguous: {
      std::vector<Span> acc;
      bool previous_match = false;
      for (const auto& [s, m] : pieces) {
        if (m == previous_match && !acc.empty()) {
          acc.back().e = s.e;
        } else {
          acc.push_back(s);
        }
        previous_match = m;
      }
      for (Span s : acc) emit(s);
      break;
    }
  }
}

struct Decoder {
  enum Kind { kReplace, kByteFallback, kFuse, kStrip, kByteLevel, kMetaspace } kind;
  std::string pattern;  // kReplace
  std::string content;  // kReplace: replacement; kStrip: the character; kMetaspace: replacement
  int start = 0, stop = 0;
  bool prepend = true;  // kMetaspace: prepend_scheme != never
};

void ApplyDecoder(const Decoder& d, std::vector<std::string>* tokens) {
  switch (d.kind) {
    case Decoder::kReplace:
      for (auto& t : *tokens) {
        if (t.find(d.pattern) != std::string::npos) t = ReplaceAll(t, d.pattern, d.content);
      }
      break;
    case Decoder::kByteFallback: {
      std::vector<std::string> out;
      std::string bytes;
      size_t n_bytes = 0;
      auto flush = [&]() {
        if (n_bytes == 0) return;
        if (IsValidUtf8(bytes)) {
          out.push_back(bytes);
        } else {
          for (size_t i = 0; i < n_bytes; ++i) out.emplace_back(kReplacementChar);
        }
        bytes.clear();
        n_bytes = 0;
      };
      for (auto& t : *tokens) {
        unsigned v = 0;
        bool is_byte = t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>';
        if (is_byte) {
          for (int k = 3; k < 5; ++k) {
            const char c = t[k];
            unsigned x;
            if (c >= '0' && c <= '9') {
              x = c - '0';
            } else if (c >= 'A' && c <= 'F') {
              x = c - 'A' + 10;
            } else if (c >= 'a' && c <= 'f') {
              x = c - 'a' + 10;
            } else {
              is_byte = false;
              break;
            }
            v = v * 16 + x;
          }
        }
        if (is_byte) {
          bytes.push_back(static_cast<char>(v));
          ++n_bytes;
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      *tokens = std::move(out);
      break;
    }
    case Decoder::kFuse: {
      std::string all;
      for (const auto& t : *tokens) all += t;
      tokens->assign(1, std::move(all));
      break;
    }
    case Decoder::kStrip: {
      const uint32_t ch = d.content.empty() ? 0 : DecodeCp(d.content.data());
      for (auto& t : *tokens) {
        size_t b = 0, e = t.size();
        for (int i = 0; i < d.start && b < e; ++i) {
          if (DecodeCp(t.data() + b) != ch) break;
          b += Utf8Len(static_cast<unsigned char>(t[b]));
        }
        for (int i = 0; i < d.stop && e > b; ++i) {
          const size_t p = PrevCharStart(t, e);
          if (DecodeCp(t.data() + p) != ch) break;
          e = p;
        }
        t = t.substr(b, e - b);
      }
      break;
    }
    case Decoder::kByteLevel: {
      const auto& map = ByteLevel().cp_to_byte;
      std::string bytes;
      for (const auto& t : *tokens) {
        const size_t mark = bytes.size();
        bool ok = true;
        for (size_t i = 0; i < t.size();) {
          auto it = map.find(DecodeCp(t.data() + i));
          if (it == map.end()) {
            ok = false;
            break;
          }
          bytes.push_back(static_cast<char>(it->second));
          i += Utf8Len(static_cast<unsigned char>(t[i]));
        }
        if (!ok) {
          bytes.resize(mark);
          bytes += t;
        }
      }
      tokens->assign(1, ToValidUtf8(std::move(bytes)));
      break;
    }
    case Decoder::kMetaspace: {
      for (size_t i = 0; i < tokens->size(); ++i) {
        std::string& t = (*tokens)[i];
        std::string out;
        for (size_t k = 0; k < t.size();) {
          const size_t len = Utf8Len(static_cast<unsigned char>(t[k]));
          if (t.compare(k, len, d.content) == 0) {
            if (!(i == 0 && d.prepend)) out += ' ';
          } else {
            out.append(t, k, len);
          }
          k += len;
        }
        t = std::move(out);
      }
      break;
    }
  }
}

// Added tokens: leftmost-longest matching over a byte trie, like HF's aho-corasick matcher.
class AddedMatcher {
 public:
  struct Token {
    int32_t id;
    bool lstrip, rstrip, single_word;
  };
  void Add(const std::string& content, Token tok) {
    if (content.empty()) return;
    int32_t node = 0;
    if (nodes_.empty()) nodes_.push_back(-1);
    for (unsigned char c : content) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | c;
      auto it = edges_.find(key);
      if (it == edges_.end()) {
        nodes_.push_back(-1);
        it = edges_.emplace(key, static_cast<int32_t>(nodes_.size() - 1)).first;
      }
      node = it->second;
    }
    first_[static_cast<unsigned char>(content[0])] = true;
    if (nodes_[node] < 0) {
      nodes_[node] = static_cast<int32_t>(tokens_.size());
      tokens_.push_back(tok);
    } else {
      tokens_[nodes_[node]] = tok;
    }
  }
  bool empty() const { return tokens_.empty(); }

  // Calls f(begin, end, id) for each piece of `text` in order: id >= 0 for an added token,
  // -1 for the text between them. Empty pieces are not reported.
  template <class F>
  void Split(std::string_view text, F&& f) const {
    const size_t n = text.size();
    size_t start_offset = 0;
    size_t i = 0;
    while (i < n) {
      if (!first_[static_cast<unsigned char>(text[i])]) {
        ++i;
        continue;
      }
      int32_t node = 0, best = -1;
      size_t best_end = 0;
      for (size_t j = i; j < n; ++j) {
        auto it =
            edges_.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[j]));
        if (it == edges_.end()) break;
        node = it->second;
        if (nodes_[node] >= 0) {
          best = nodes_[node];
          best_end = j + 1;
        }
      }
      if (best < 0) {
        ++i;
        continue;
      }
      const Token& tok = tokens_[best];
      size_t start = i, stop = best_end;
      i = best_end;
      if (tok.single_word) {
        const bool start_ok = start == 0 || !IsWordChar(text, PrevCharStart(text, start));
        const bool stop_ok = stop == n || !IsWordChar(text, stop);
        if (!start_ok || !stop_ok) continue;
      }
      if (tok.lstrip) {
        while (start > start_offset) {
          const size_t p = PrevCharStart(text, start);
          if (!IsWhiteSpace(DecodeCp(text.data() + p))) break;
          start = p;
        }
      }
      if (tok.rstrip) {
        while (stop < n && IsWhiteSpace(DecodeCp(text.data() + stop))) {
          stop += Utf8Len(static_cast<unsigned char>(text[stop]));
        }
        i = std::max(i, stop);
      }
      if (start > start_offset) f(start_offset, start, -1);
      f(start, stop, tok.id);
      start_offset = stop;
    }
    if (start_offset < n) f(start_offset, n, -1);
  }

 private:
  // Rust's char::is_alphanumeric() || '_' for the character at text[pos].
  static bool IsWordChar(std::string_view text, size_t pos) {
    const uint32_t cp = DecodeCp(text.data() + pos);
    if (cp < 0x80) return std::isalnum(static_cast<int>(cp)) != 0 || cp == '_';
    static const Regex word("^[\\p{Alphabetic}\\p{N}]", "added-token single_word check");
    bool found = false;
    const size_t len = Utf8Len(static_cast<unsigned char>(text[pos]));
    word.ForEachMatch(text.substr(pos, len), [&](size_t, size_t) { found = true; });
    return found;
  }

  std::vector<int32_t> nodes_;                   // trie node -> index into tokens_, or -1
  std::unordered_map<uint64_t, int32_t> edges_;  // (node << 8 | byte) -> child node
  std::vector<Token> tokens_;
  std::array<bool, 256> first_{};
};

// BPE over one pre-token ("word"). Merges follow the rank of the merge list, ties broken by
// position (leftmost first), with a binary heap and a linked list of symbols: O(n log n).
class BpeModel {
 public:
  bool byte_level = false;     // symbols are raw bytes (ByteLevel pre-tokenizer)
  bool byte_fallback = false;  // unknown characters become <0xNN> tokens
  bool ignore_merges = false;  // a word found whole in the vocabulary is one token
  bool fuse_unk = false;
  int32_t unk_id = -1;
  StringIdMap pieces;                  // word bytes (raw bytes when byte_level) -> id
  std::array<int32_t, 256> byte_ids;   // byte_level: the byte's token; byte_fallback: <0xNN>
  std::array<int32_t, 128> ascii_ids;  // !byte_level: one-character ASCII tokens
  bool all_byte_ids = false;
  MergeMap merges;

  BpeModel() {
    byte_ids.fill(-1);
    ascii_ids.fill(-1);
  }

  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const {
    if (word.empty()) return;
    if (ignore_merges) {
      const int32_t id = pieces.Find(word);
      if (id >= 0) {
        out->push_back(id);
        return;
      }
    }
    thread_local Scratch sc;
    auto& syms = sc.syms;
    syms.clear();
    if (byte_level) {
      for (unsigned char c : word) {
        if (byte_ids[c] >= 0) PushSymbol(&syms, byte_ids[c]);
      }
    } else {
      bool prev_unk = false;
      for (size_t i = 0; i < word.size();) {
        const auto c = static_cast<unsigned char>(word[i]);
        const size_t len = Utf8Len(c);
        const int32_t id = c < 0x80 ? ascii_ids[c] : pieces.Find(word.substr(i, len));
        if (id >= 0) {
          PushSymbol(&syms, id);
          prev_unk = false;
        } else if (byte_fallback && all_byte_ids) {
          for (size_t k = 0; k < len; ++k) {
            PushSymbol(&syms, byte_ids[static_cast<unsigned char>(word[i + k])]);
          }
          prev_unk = false;
        } else if (unk_id >= 0) {
          if (!(fuse_unk && prev_unk)) PushSymbol(&syms, unk_id);
          prev_unk = true;
        }
        i += len;
      }
    }
    if (syms.empty()) return;
    if (syms.size() > 1 && !merges.empty()) Merge(&sc);
    for (int32_t i = 0; i >= 0; i = syms[i].next) out->push_back(syms[i].id);
  }

 private:
  struct Symbol {
    int32_t id;
    int32_t prev, next;
  };
  struct Candidate {
    int32_t rank, pos, left, right, new_id;
    bool operator<(const Candidate& o) const {  // a max-heap on this pops the best merge
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  struct Scratch {
    std::vector<Symbol> syms;
    std::vector<Candidate> heap;
  };

  static void PushSymbol(std::vector<Symbol>* syms, int32_t id) {
    const auto n = static_cast<int32_t>(syms->size());
    if (n > 0) (*syms)[n - 1].next = n;
    syms->push_back(Symbol{id, n - 1, -1});
  }

  void AddCandidate(Scratch* sc, int32_t pos) const {
    const Symbol& l = sc->syms[pos];
    const Symbol& r = sc->syms[l.next];
    if (const MergeMap::Value* v = merges.Find(l.id, r.id)) {
      sc->heap.push_back(Candidate{v->rank, pos, l.id, r.id, v->new_id});
      std::push_heap(sc->heap.begin(), sc->heap.end());
    }
  }

  void Merge(Scratch* sc) const {
    auto& syms = sc->syms;
    auto& heap = sc->heap;
    heap.clear();
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) {
      if (const MergeMap::Value* v = merges.Find(syms[i].id, syms[i + 1].id)) {
        heap.push_back(Candidate{v->rank, i, syms[i].id, syms[i + 1].id, v->new_id});
      }
    }
    std::make_heap(heap.begin(), heap.end());
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end());
      const Candidate c = heap.back();
      heap.pop_back();
      Symbol& l = syms[c.pos];
      // Stale entries: the left symbol was merged away or changed, or its right neighbour did.
      if (l.id != c.left || l.next < 0 || syms[l.next].id != c.right) continue;
      Symbol& r = syms[l.next];
      l.id = c.new_id;
      l.next = r.next;
      r.id = -1;
      if (l.next >= 0) syms[l.next].prev = c.pos;
      if (l.prev >= 0) AddCandidate(sc, l.prev);
      if (l.next >= 0) AddCandidate(sc, c.pos);
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Files

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) FT_THROW(IoError, "cannot open {}: {}", path, std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) FT_THROW(IoError, "cannot read {}", path);
  return ss.str();
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

json ParseJsonFile(const std::string& path, std::string* bytes_out = nullptr) {
  std::string bytes = ReadFile(path);
  json j;
  try {
    j = json::parse(bytes);
  } catch (const json::exception& e) {
    FT_THROW(IoError, "{}: invalid JSON: {}", path, e.what());
  }
  if (bytes_out != nullptr) *bytes_out = std::move(bytes);
  return j;
}

// j[key], or null when j is not an object or has no such key (no copy, unlike json::value).
const json& Field(const json& j, const char* key) {
  static const json kNull;
  if (!j.is_object()) return kNull;
  auto it = j.find(key);
  return it == j.end() ? kNull : *it;
}

std::string TypeOf(const json& j) {
  if (j.is_object() && j.contains("type") && j["type"].is_string()) return j["type"];
  return j.dump().substr(0, 80);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Tokenizer::Impl

struct Tokenizer::Impl {
  std::string path;
  std::string sha256;
  std::string kind;
  BpeModel model;
  std::vector<std::string> id_to_token;  // model vocab; empty string = no token
  std::vector<bool> has_token;
  StringIdMap vocab_ids;                                     // model vocab: token -> id
  std::vector<std::pair<std::string, int32_t>> vocab_items;  // (token, id), load time only
  std::unordered_map<std::string, int32_t> added_to_id;      // added tokens
  std::unordered_map<int32_t, std::string> added_by_id;
  std::unordered_set<int32_t> special_ids;
  AddedMatcher raw_added;         // matched before normalization
  AddedMatcher normalized_added;  // matched in normalized text
  std::vector<Normalizer> normalizers;
  std::vector<PreTokenizer> pre_tokenizers;
  std::vector<Decoder> decoders;
  bool has_decoder = false;
  std::vector<int32_t> prefix_ids, suffix_ids;
  int32_t bos_id = -1, pad_id = -1;
  std::vector<int32_t> eos_ids;
  int64_t vocab_size = 0;
  LoadNotes notes;  // what the config files beside tokenizer.json left to assumption

  int32_t Lookup(std::string_view token) const {
    const std::string key(token);
    if (auto it = added_to_id.find(key); it != added_to_id.end()) return it->second;
    return vocab_ids.Find(token);
  }

  [[noreturn]] void Fail(const std::string& what) const {
    FT_THROW(DataError, "{}: {}", path, what);
  }

  // A token id or count: an integer in [0, INT32_MAX]. (json's get<int32_t>() of a float
  // truncates it, and is undefined behaviour when it is out of range.)
  int32_t NonNegative(const json& v, const std::string& what) const {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
      Fail(fmt::format("{} is {}, not an integer in [0, {}]", what, v.dump().substr(0, 80),
                       INT32_MAX));
    }
    return v.get<int32_t>();
  }

  void LoadModel(const json& m);
  void LoadNormalizer(const json& n);
  void LoadPreTokenizer(const json& p);
  void LoadDecoder(const json& d);
  void LoadPostProcessor(const json& p, std::vector<int32_t>* prefix,
                         std::vector<int32_t>* suffix) const;
  void LoadAddedTokens(const json& tokens);
  // tokenizer_config.json and generation_config.json beside tokenizer.json (as transformers
  // 4.x and 5.x write them): special tokens, BOS/EOS/pad, add_bos/eos_token. A value ftune
  // cannot honour that changes tokenization is a DataError naming the file and key; what it
  // assumes or leaves to HF's runtime goes to `notes`.
  void LoadConfigs(const std::string& dir, const std::vector<int32_t>& template_prefix,
                   const std::vector<int32_t>& template_suffix);
  void LoadTokenizerConfig(const std::string& file);
  void LoadGenerationConfig(const std::string& file);
  // The id of a token given as text or {"content": text} at `key` of `file`; DataError if it is
  // neither or names no token.
  int32_t ConfigToken(const std::string& file, const json& cfg, const std::string& key,
                      const json& v) const;
  void AddEos(int32_t id) {
    if (id >= 0 && std::find(eos_ids.begin(), eos_ids.end(), id) == eos_ids.end()) {
      eos_ids.push_back(id);
    }
  }
  bool IsId(int64_t id) const {
    return id >= 0 && ((id < static_cast<int64_t>(has_token.size()) && has_token[id]) ||
                       added_by_id.count(static_cast<int32_t>(id)) != 0);
  }

  void Encode(std::string_view text, bool add_special, std::vector<int32_t>* out) const;
  void EncodeSection(std::string_view section, bool at_start, std::vector<int32_t>* out) const;
  void PreTokenizeAndEncode(std::string_view text, bool at_start, std::vector<int32_t>* out) const;
};

void Tokenizer::Impl::LoadModel(const json& m) {
  if (!m.is_object()) Fail("\"model\" is missing or not an object");
  const std::string type = m.value("type", std::string());
  const bool looks_bpe = type.empty() && m.contains("merges");
  if (type != "BPE" && !looks_bpe) {
    Fail(
        fmt::format("unsupported model type '{}' (ftune supports BPE only: Llama-2 "
                    "SentencePiece-BPE and Llama-3 byte-level BPE)",
                    type.empty() ? TypeOf(m) : type));
  }
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0.0) {
    Fail("unsupported BPE component: dropout (nondeterministic merges)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && m[key].is_string() && !m[key].get<std::string>().empty()) {
      Fail(fmt::format("unsupported BPE component: {}", key));
    }
  }
  model.byte_fallback = m.value("byte_fallback", false);
  model.ignore_merges = m.value("ignore_merges", false);
  model.fuse_unk = m.value("fuse_unk", false);
  const json& vocab = m.at("vocab");
  if (!vocab.is_object()) Fail("model.vocab is not an object (a BPE vocab maps token -> id)");
  int64_t max_id = -1;
  vocab_items.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int32_t id = NonNegative(it.value(), "the vocab id of " + json(it.key()).dump());
    vocab_items.emplace_back(it.key(), id);
    max_id = std::max<int64_t>(max_id, id);
  }
  // The tables below are indexed by id: one large id in a small vocab would allocate gigabytes.
  if (max_id >= 2 * int64_t(vocab_items.size()) + 1024) {
    Fail(
        fmt::format("model.vocab is sparse: {} tokens with ids up to {} (ftune indexes tokens "
                    "by id and accepts ids below twice the token count + 1024)",
                    vocab_items.size(), max_id));
  }
  vocab_ids.Build(vocab_items);
  id_to_token.assign(max_id + 1, std::string());
  has_token.assign(max_id + 1, false);
  for (const auto& [tok, id] : vocab_items) {
    id_to_token[id] = tok;
    has_token[id] = true;
  }
  vocab_size = max_id + 1;
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    model.unk_id = vocab_ids.Find(m["unk_token"].get_ref<const std::string&>());
  }
  // Merges: "a b" strings (legacy) or ["a", "b"] pairs.
  const json& merges = m.at("merges");
  if (!merges.is_array()) Fail("model.merges is not an array");
  model.merges.Reserve(merges.size());
  std::string merged;
  int32_t rank = 0;
  for (const auto& e : merges) {
    std::string_view a, b;
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        Fail(fmt::format("merge #{} {} is not two tokens separated by one space", rank,
                         json(s).dump()));
      }
      a = std::string_view(s).substr(0, sp);
      b = std::string_view(s).substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get_ref<const std::string&>();
      b = e[1].get_ref<const std::string&>();
    } else {
      Fail(fmt::format("merge #{} {} is neither \"a b\" nor [\"a\", \"b\"]", rank,
                       e.dump().substr(0, 80)));
    }
    merged.assign(a).append(b);
    const int32_t ia = vocab_ids.Find(a), ib = vocab_ids.Find(b), im = vocab_ids.Find(merged);
    if (ia < 0 || ib < 0 || im < 0) {
      Fail(fmt::format("merge #{} ({} + {}) uses a token missing from the vocab", rank,
                       json(std::string(a)).dump(), json(std::string(b)).dump()));
    }
    model.merges.Insert(ia, ib, MergeMap::Value{rank, im});
    ++rank;
  }
}

void Tokenizer::Impl::LoadNormalizer(const json& n) {
  if (n.is_null()) return;
  const std::string type = TypeOf(n);
  if (type == "Sequence") {
    for (const auto& sub : n.at("normalizers")) LoadNormalizer(sub);
  } else if (type == "Prepend") {
    normalizers.push_back(Normalizer{Normalizer::kPrepend, n.at("prepend"), ""});
  } else if (type == "Replace") {
    const json& pat = n.at("pattern");
    if (!pat.contains("String")) {
      Fail(fmt::format("unsupported normalizer: Replace with pattern {} (only String patterns)",
                       pat.dump()));
    }
    normalizers.push_back(Normalizer{Normalizer::kReplace, pat["String"], n.at("content")});
  } else {
    Fail(fmt::format("unsupported normalizer '{}' (ftune supports Prepend, Replace, Sequence)",
                     type));
  }
}

void Tokenizer::Impl::LoadPreTokenizer(const json& p) {
  if (p.is_null()) return;
  const std::string type = TypeOf(p);
  if (!pre_tokenizers.empty() && pre_tokenizers.back().kind == PreTokenizer::kByteLevel) {
    Fail(fmt::format("unsupported pre-tokenizer sequence: '{}' after ByteLevel", type));
  }
  if (type == "Sequence") {
    for (const auto& sub : p.at("pretokenizers")) LoadPreTokenizer(sub);
    return;
  }
  PreTokenizer pt;
  if (type == "Split") {
    pt.kind = PreTokenizer::kSplit;
    const json& pat = p.at("pattern");
    if (pat.contains("Regex")) {
      pt.regex =
          std::make_unique<Regex>(pat["Regex"].get<std::string>(), path + ": pre_tokenizer Split");
    } else if (pat.contains("String")) {
      pt.literal = pat["String"].get<std::string>();
    } else {
      Fail(fmt::format("unsupported Split pattern {}", pat.dump()));
    }
    const std::string behavior = p.value("behavior", std::string("Isolated"));
    if (behavior == "Removed") {
      pt.behavior = SplitBehavior::kRemoved;
    } else if (behavior == "Isolated") {
      pt.behavior = SplitBehavior::kIsolated;
    } else if (behavior == "MergedWithPrevious") {
      pt.behavior = SplitBehavior::kMergedWithPrevious;
    } else if (behavior == "MergedWithNext") {
      pt.behavior = SplitBehavior::kMergedWithNext;
    } else if (behavior == "Contiguous") {
      pt.behavior = SplitBehavior::kContiguous;
    } else {
      Fail(fmt::format("unsupported Split behavior '{}'", behavior));
    }
    pt.invert = p.value("invert", false);
  } else if (type == "ByteLevel") {
    pt.kind = PreTokenizer::kByteLevel;
    pt.add_prefix_space = p.value("add_prefix_space", true);
    if (p.value("use_regex", true)) {
      // GPT-2's pattern, as the tokenizers crate's ByteLevel uses it.
      pt.regex = std::make_unique<Regex>(
          R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)",
          path + ": pre_tokenizer ByteLevel");
    }
    pt.behavior = SplitBehavior::kIsolated;
  } else if (type == "Metaspace") {
    pt.kind = PreTokenizer::kMetaspace;
    pt.replacement = p.value("replacement", std::string("\xE2\x96\x81"));
    const std::string scheme = p.contains("prepend_scheme")
                                   ? p["prepend_scheme"].get<std::string>()
                                   : (p.value("add_prefix_space", true) ? "always" : "never");
    if (scheme == "always") {
      pt.prepend_scheme = PrependScheme::kAlways;
    } else if (scheme == "first") {
      pt.prepend_scheme = PrependScheme::kFirst;
    } else if (scheme == "never") {
      pt.prepend_scheme = PrependScheme::kNever;
    } else {
      Fail(fmt::format("unsupported Metaspace prepend_scheme '{}'", scheme));
    }
    pt.split = p.value("split", true);
    pt.literal = pt.replacement;
    pt.behavior = SplitBehavior::kMergedWithNext;
  } else {
    Fail(
        fmt::format("unsupported pre-tokenizer '{}' (ftune supports Split, ByteLevel, "
                    "Metaspace, Sequence)",
                    type));
  }
  pre_tokenizers.push_back(std::move(pt));
}

void Tokenizer::Impl::LoadDecoder(const json& d) {
  if (d.is_null()) return;
  has_decoder = true;
  const std::string type = TypeOf(d);
  Decoder dec;
  if (type == "Sequence") {
    for (const auto& sub : d.at("decoders")) LoadDecoder(sub);
    return;
  } else if (type == "Replace") {
    const json& pat = d.at("pattern");
    if (!pat.contains("String")) {
      Fail(fmt::format("unsupported decoder: Replace with pattern {}", pat.dump()));
    }
    dec.kind = Decoder::kReplace;
    dec.pattern = pat["String"];
    dec.content = d.at("content");
  } else if (type == "ByteFallback") {
    dec.kind = Decoder::kByteFallback;
  } else if (type == "Fuse") {
    dec.kind = Decoder::kFuse;
  } else if (type == "Strip") {
    dec.kind = Decoder::kStrip;
    dec.content = d.at("content");
    dec.start = d.contains("start") ? NonNegative(d["start"], "Strip decoder start") : 0;
    dec.stop = d.contains("stop") ? NonNegative(d["stop"], "Strip decoder stop") : 0;
  } else if (type == "ByteLevel") {
    dec.kind = Decoder::kByteLevel;
  } else if (type == "Metaspace") {
    dec.kind = Decoder::kMetaspace;
    dec.content = d.value("replacement", std::string("\xE2\x96\x81"));
    const std::string scheme = d.contains("prepend_scheme")
                                   ? d["prepend_scheme"].get<std::string>()
                                   : (d.value("add_prefix_space", true) ? "always" : "never");
    dec.prepend = scheme != "never";
  } else {
    Fail(
        fmt::format("unsupported decoder '{}' (ftune supports Replace, ByteFallback, Fuse, "
                    "Strip, ByteLevel, Metaspace, Sequence)",
                    type));
  }
  decoders.push_back(std::move(dec));
}

void Tokenizer::Impl::LoadPostProcessor(const json& p, std::vector<int32_t>* prefix,
                                        std::vector<int32_t>* suffix) const {
  if (p.is_null()) return;
  const std::string type = TypeOf(p);
  if (type == "Sequence") {
    for (const auto& sub : p.at("processors")) LoadPostProcessor(sub, prefix, suffix);
  } else if (type == "ByteLevel") {
    // Offsets only; adds no tokens.
  } else if (type == "TemplateProcessing") {
    prefix->clear();
    suffix->clear();
    const json& specials = Field(p, "special_tokens");
    bool seen_a = false;
    for (const auto& item : p.at("single")) {
      if (item.contains("Sequence")) {
        seen_a = true;
      } else if (item.contains("SpecialToken")) {
        const std::string name = item["SpecialToken"].at("id");
        std::vector<int32_t> ids;
        if (specials.is_object() && specials.contains(name)) {
          for (const auto& id : specials[name].at("ids")) {
            ids.push_back(NonNegative(id, "post_processor id of " + json(name).dump()));
          }
        } else if (const int32_t id = Lookup(name); id >= 0) {
          ids.push_back(id);
        } else {
          Fail(fmt::format("post_processor names special token {} missing from the vocab",
                           json(name).dump()));
        }
        auto* dst = seen_a ? suffix : prefix;
        dst->insert(dst->end(), ids.begin(), ids.end());
      }
    }
  } else {
    Fail(
        fmt::format("unsupported post-processor '{}' (ftune supports TemplateProcessing, "
                    "ByteLevel, Sequence)",
                    type));
  }
}

void Tokenizer::Impl::LoadAddedTokens(const json& tokens) {
  if (tokens.is_null()) return;
  for (const auto& t : tokens) {
    const std::string content = t.at("content");
    const int32_t id = NonNegative(t.at("id"), "the id of added token " + json(content).dump());
    const bool special = t.value("special", false);
    const bool normalized = t.value("normalized", !special);
    added_to_id[content] = id;
    added_by_id[id] = content;
    if (special) special_ids.insert(id);
    vocab_size = std::max<int64_t>(vocab_size, int64_t(id) + 1);
    const AddedMatcher::Token tok{id, t.value("lstrip", false), t.value("rstrip", false),
                                  t.value("single_word", false)};
    if (normalized && !normalizers.empty()) {
      std::string norm;
      Normalize(normalizers, content, &norm);
      normalized_added.Add(norm, tok);
    } else {
      raw_added.Add(content, tok);
    }
  }
}

namespace {

// Keys of tokenizer_config.json (transformers 4.x and 5.x) that do not change how text becomes
// ids or ids become text: accepted at any value.
const std::unordered_set<std::string> kTokenizerConfigMetadata = {
    "tokenizer_class", "model_max_length", "padding_side", "truncation_side", "name_or_path",
    "model_input_names", "processor_class", "special_tokens_map_file", "backend", "is_local",
    "model_specific_special_tokens", "auto_map", "sp_model_kwargs", "use_default_system_prompt",
    "mask_token", "sep_token", "cls_token", "unk_token", "errors", "clean_up_tokenization_spaces",
    "legacy", "spaces_between_special_tokens", "chat_template", "add_prefix_space",
    "split_special_tokens", "do_lower_case", "fast_tokenizer_class", "use_fast"};

// Keys of generation_config.json that describe the file or HF's runtime only.
const std::unordered_set<std::string> kGenerationMetadata = {
    "_from_model_config", "transformers_version", "use_cache", "output_attentions",
    "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
    "cache_implementation", "max_length", "max_new_tokens", "num_return_sequences",
    "return_legacy_cache", "compile_config", "trust_remote_code"};

// Sampling settings of generation_config.json: defaults of HF's generate() that ftune does not
// take (ftune's generation settings are its own: eval.temperature/top_k/top_p, --temperature).
const std::unordered_set<std::string> kGenerationSampling = {"do_sample", "temperature", "top_k",
                                                             "top_p"};

// Decoding features of HF's generate() that ftune does not implement, with the value at which
// they do nothing.
const std::vector<std::pair<const char*, json>>& GenerationNoOps() {
  static const std::vector<std::pair<const char*, json>> keys = {
      {"num_beams", 1},          {"num_beam_groups", 1},        {"repetition_penalty", 1.0},
      {"length_penalty", 1.0},   {"no_repeat_ngram_size", 0},   {"min_length", 0},
      {"min_new_tokens", 0},     {"typical_p", 1.0},            {"epsilon_cutoff", 0.0},
      {"eta_cutoff", 0.0},       {"min_p", nullptr},            {"diversity_penalty", 0.0},
      {"penalty_alpha", nullptr}, {"bad_words_ids", nullptr},    {"forced_bos_token_id", nullptr},
      {"forced_eos_token_id", nullptr}, {"suppress_tokens", nullptr},
      {"begin_suppress_tokens", nullptr}, {"sequence_bias", nullptr},
      {"guidance_scale", nullptr}, {"encoder_repetition_penalty", 1.0},
      {"encoder_no_repeat_ngram_size", 0}, {"exponential_decay_length_penalty", nullptr},
      {"renormalize_logits", false}, {"remove_invalid_values", false},
      {"watermarking_config", nullptr}, {"early_stopping", false}, {"stop_strings", nullptr},
      {"assistant_model", nullptr}, {"prompt_lookup_num_tokens", nullptr}};
  return keys;
}

bool IsNoOp(const json& v, const json& noop) {
  if (v.is_null()) return true;
  if (v.is_number() && noop.is_number()) return v.get<double>() == noop.get<double>();
  return v == noop;
}

}  // namespace

int32_t Tokenizer::Impl::ConfigToken(const std::string& file, const json& cfg,
                                     const std::string& key, const json& v) const {
  std::string text;
  if (v.is_string()) {
    text = v.get<std::string>();
  } else if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    text = v["content"].get<std::string>();
  } else {
    FT_THROW(DataError, "{}: {} is {}, neither a token string nor {{\"content\": ...}}", file, key,
             v.dump());
  }
  const int32_t id = Lookup(text);
  if (id < 0) {
    FT_THROW(DataError, "{}: {} {} is not a token of {}", file, key, json(text).dump(), path);
  }
  return id;
}

void Tokenizer::Impl::LoadTokenizerConfig(const std::string& file) {
  const json cfg = ParseJsonFile(file);
  if (!cfg.is_object()) FT_THROW(IoError, "{}: not a JSON object", file);
  auto token = [&](const char* key) {
    return cfg.contains(key) && !cfg[key].is_null() ? ConfigToken(file, cfg, key, cfg[key]) : -1;
  };
  auto flag = [&](const char* key) -> std::optional<bool> {
    if (!cfg.contains(key) || cfg[key].is_null()) return std::nullopt;
    if (!cfg[key].is_boolean()) {
      FT_THROW(DataError, "{}: {} is {}, not true/false", file, key, cfg[key].dump());
    }
    return cfg[key].get<bool>();
  };
  if (const int32_t id = token("bos_token"); id >= 0) bos_id = id;
  if (const int32_t id = token("eos_token"); id >= 0) AddEos(id);
  if (const int32_t id = token("pad_token"); id >= 0) pad_id = id;
  token("unk_token");  // must name a token when present; byte fallback makes it unused
  // transformers' LlamaTokenizerFast rebuilds the template from these flags.
  if (const auto add_bos = flag("add_bos_token")) {
    prefix_ids.clear();
    if (*add_bos) {
      if (bos_id < 0) FT_THROW(DataError, "{}: add_bos_token without bos_token", file);
      prefix_ids.push_back(bos_id);
    }
  } else {
    notes.info.push_back(fmt::format(
        "{}: 'add_bos_token' is absent: the post-processor of tokenizer.json decides", file));
  }
  if (const auto add_eos = flag("add_eos_token")) {
    suffix_ids.clear();
    if (*add_eos) {
      if (eos_ids.empty()) FT_THROW(DataError, "{}: add_eos_token without eos_token", file);
      suffix_ids.push_back(eos_ids.front());
    }
  }
  // Special tokens: transformers 5 writes `extra_special_tokens` (a list, or a dict of name ->
  // token), 4.x `additional_special_tokens`; both mark tokens that decoding may skip.
  for (const char* key : {"extra_special_tokens", "additional_special_tokens"}) {
    if (!cfg.contains(key) || cfg[key].is_null()) continue;
    const json& v = cfg[key];
    if (!v.is_array() && !v.is_object()) {
      FT_THROW(DataError, "{}: {} is {}, neither a list nor an object of tokens", file, key,
               v.dump());
    }
    for (const auto& [name, t] : v.items()) {
      const std::string where = v.is_array() ? fmt::format("{}[{}]", key, name)
                                             : fmt::format("{}.{}", key, name);
      if (t.is_array()) {
        for (const auto& x : t) special_ids.insert(ConfigToken(file, cfg, where, x));
      } else {
        special_ids.insert(ConfigToken(file, cfg, where, t));
      }
    }
  }
  // transformers 4.x mirrors tokenizer.json's added tokens here: they must agree.
  if (cfg.contains("added_tokens_decoder") && cfg["added_tokens_decoder"].is_object()) {
    for (const auto& [id_text, t] : cfg["added_tokens_decoder"].items()) {
      const std::string where = "added_tokens_decoder." + id_text;
      const int32_t id = ConfigToken(file, cfg, where, t);
      if (std::to_string(id) != id_text) {
        FT_THROW(DataError, "{}: {} names {} but {} gives that token id {}; the two files are "
                 "from different tokenizers", file, where, t.value("content", ""), path, id);
      }
      if (t.value("special", false)) special_ids.insert(id);
    }
  }
  if (flag("split_special_tokens").value_or(false)) {
    FT_THROW(DataError, "{}: split_special_tokens true is not supported: ftune always encodes "
             "special-token text as the special token", file);
  }
  if (flag("do_lower_case").value_or(false)) {
    FT_THROW(DataError, "{}: do_lower_case true is not supported: ftune encodes text as "
             "tokenizer.json's normalizer leaves it", file);
  }
  if (flag("clean_up_tokenization_spaces").value_or(false)) {
    notes.warn.push_back(fmt::format(
        "{}: clean_up_tokenization_spaces is true: transformers' decode() removes the space "
        "before punctuation (\" .\" -> \".\"), ftune's decoded text keeps tokenizer.json's "
        "decoder output",
        file));
  }
  if (cfg.contains("add_prefix_space") && !cfg["add_prefix_space"].is_null()) {
    notes.warn.push_back(fmt::format(
        "{}: add_prefix_space {} is not applied: ftune pre-tokenizes as tokenizer.json says",
        file, cfg["add_prefix_space"].dump()));
  }
  if (cfg.contains("chat_template")) {
    notes.info.push_back(fmt::format(
        "{}: chat_template is not used: ftune formats records with data.template", file));
  }
  static const std::unordered_set<std::string> kRead = {
      "bos_token", "eos_token", "pad_token", "add_bos_token", "add_eos_token",
      "extra_special_tokens", "additional_special_tokens", "added_tokens_decoder"};
  std::vector<std::string> unknown;
  for (const auto& [key, value] : cfg.items()) {
    if (!kRead.count(key) && !kTokenizerConfigMetadata.count(key)) unknown.push_back(key);
  }
  if (!unknown.empty()) {
    notes.warn.push_back(fmt::format("{}: ftune does not know the key(s) {}; it assumes they do "
                                     "not change tokenization",
                                     file, fmt::join(unknown, ", ")));
  }
}

void Tokenizer::Impl::LoadGenerationConfig(const std::string& file) {
  const json gen = ParseJsonFile(file);
  if (!gen.is_object()) FT_THROW(IoError, "{}: not a JSON object", file);
  auto id_of = [&](const char* key, const json& v) {
    if (!v.is_number_integer() || !IsId(v.get<int64_t>())) {
      FT_THROW(DataError, "{}: {} {} is not a token id of {}", file, key, v.dump(), path);
    }
    return v.get<int32_t>();
  };
  if (gen.contains("eos_token_id") && !gen["eos_token_id"].is_null()) {
    const json& e = gen["eos_token_id"];
    if (e.is_array()) {
      for (const auto& x : e) AddEos(id_of("eos_token_id", x));
    } else {
      AddEos(id_of("eos_token_id", e));
    }
  }
  if (gen.contains("bos_token_id") && !gen["bos_token_id"].is_null()) {
    const int32_t id = id_of("bos_token_id", gen["bos_token_id"]);
    if (bos_id < 0) bos_id = id;
  }
  if (gen.contains("pad_token_id") && !gen["pad_token_id"].is_null()) {
    const int32_t id = id_of("pad_token_id", gen["pad_token_id"]);
    if (pad_id < 0) pad_id = id;
  }
  std::vector<std::string> sampling, unsupported, unknown;
  for (const auto& [key, value] : gen.items()) {
    if (key == "eos_token_id" || key == "bos_token_id" || key == "pad_token_id" ||
        kGenerationMetadata.count(key)) {
      continue;
    }
    if (kGenerationSampling.count(key)) {
      sampling.push_back(fmt::format("{}={}", key, value.dump()));
      continue;
    }
    const auto& noops = GenerationNoOps();
    const auto it = std::find_if(noops.begin(), noops.end(),
                                 [&key = key](const auto& k) { return key == k.first; });
    if (it == noops.end()) {
      unknown.push_back(key);
    } else if (!IsNoOp(value, it->second)) {
      unsupported.push_back(fmt::format("{}={}", key, value.dump()));
    }
  }
  if (!sampling.empty()) {
    notes.info.push_back(fmt::format(
        "{}: {} are HF generate()'s defaults; ftune generates with its own settings (greedy "
        "unless eval.temperature / --temperature)",
        file, fmt::join(sampling, " ")));
  }
  if (!unsupported.empty()) {
    notes.warn.push_back(fmt::format(
        "{}: {}: HF generate() would apply these, ftune's generation does not (its answers "
        "can differ from transformers' with this file)",
        file, fmt::join(unsupported, " ")));
  }
  if (!unknown.empty()) {
    notes.warn.push_back(fmt::format("{}: ftune does not know the key(s) {}", file,
                                     fmt::join(unknown, ", ")));
  }
}

void Tokenizer::Impl::LoadConfigs(const std::string& dir, const std::vector<int32_t>& tpl_prefix,
                                  const std::vector<int32_t>& tpl_suffix) {
  prefix_ids = tpl_prefix;
  suffix_ids = tpl_suffix;
  const std::string config_path = dir + "/tokenizer_config.json";
  const std::string gen_path = dir + "/generation_config.json";
  if (IsFile(config_path)) {
    LoadTokenizerConfig(config_path);
  } else {
    notes.info.push_back(fmt::format(
        "{}: no tokenizer_config.json beside it: BOS/EOS from its post-processor", path));
    if (tpl_prefix.size() == 1) bos_id = tpl_prefix[0];
    if (tpl_suffix.size() == 1) AddEos(tpl_suffix[0]);
  }
  if (IsFile(gen_path)) LoadGenerationConfig(gen_path);
}

Tokenizer Tokenizer::FromPath(const std::string& path) {
  std::string file = path;
  if (IsDirectory(path)) file = path + "/tokenizer.json";
  if (!IsFile(file)) {
    FT_THROW(IoError,
             "tokenizer file {} does not exist (give a tokenizer.json or the directory "
             "holding it)",
             file);
  }
  auto impl = std::make_shared<Impl>();
  impl->path = file;
  std::string bytes;
  const json j = ParseJsonFile(file, &bytes);
  impl->sha256 = Sha256Hex(bytes);
  bytes.clear();
  bytes.shrink_to_fit();
  if (!j.is_object()) impl->Fail("not a JSON object");
  try {
    impl->LoadModel(Field(j, "model"));
    impl->LoadNormalizer(Field(j, "normalizer"));
    impl->LoadPreTokenizer(Field(j, "pre_tokenizer"));
    impl->LoadDecoder(Field(j, "decoder"));
    impl->LoadAddedTokens(Field(j, "added_tokens"));
    std::vector<int32_t> tpl_prefix, tpl_suffix;
    impl->LoadPostProcessor(Field(j, "post_processor"), &tpl_prefix, &tpl_suffix);
    if (j.contains("padding") && j["padding"].is_object() && j["padding"].contains("pad_id")) {
      impl->pad_id = impl->NonNegative(j["padding"]["pad_id"], "padding.pad_id");
    }
    const size_t slash = file.find_last_of('/');
    impl->LoadConfigs(slash == std::string::npos ? "." : file.substr(0, slash), tpl_prefix,
                      tpl_suffix);
  } catch (const json::exception& e) {
    impl->Fail(fmt::format("unexpected structure: {}", e.what()));
  }

  // Model-space lookup tables.
  BpeModel& model = impl->model;
  const bool byte_level =
      std::any_of(impl->pre_tokenizers.begin(), impl->pre_tokenizers.end(),
                  [](const PreTokenizer& p) { return p.kind == PreTokenizer::kByteLevel; });
  model.byte_level = byte_level;
  std::vector<std::pair<std::string, int32_t>> items;
  items.reserve(impl->vocab_items.size());
  std::string raw;
  for (const auto& [tok, id] : impl->vocab_items) {
    if (!byte_level) {
      items.emplace_back(tok, id);
    } else if (ByteLevelToBytes(tok, &raw)) {
      items.emplace_back(raw, id);
    }
  }
  model.pieces.Build(items);
  model.all_byte_ids = true;
  for (int b = 0; b < 256; ++b) {
    int32_t id;
    if (byte_level) {
      id = model.pieces.Find(std::string(1, static_cast<char>(b)));
    } else {
      id = impl->vocab_ids.Find(fmt::format("<0x{:02X}>", b));
    }
    model.byte_ids[b] = id;
    model.all_byte_ids = model.all_byte_ids && id >= 0;
    if (!byte_level && b < 128) model.ascii_ids[b] = model.pieces.Find(std::string(1, char(b)));
  }
  if (byte_level && !model.all_byte_ids) {
    impl->Fail("byte-level vocabulary lacks some of the 256 byte tokens");
  }
  const bool spm_like =
      model.byte_fallback ||
      std::any_of(impl->normalizers.begin(), impl->normalizers.end(),
                  [](const Normalizer& n) { return n.kind == Normalizer::kPrepend; }) ||
      std::any_of(impl->pre_tokenizers.begin(), impl->pre_tokenizers.end(),
                  [](const PreTokenizer& p) { return p.kind == PreTokenizer::kMetaspace; });
  impl->kind = byte_level ? "llama3-bytelevel-bpe" : spm_like ? "llama2-spm-bpe" : "bpe";
  impl->vocab_items.clear();
  impl->vocab_items.shrink_to_fit();
  return Tokenizer(std::move(impl));
}

// ---------------------------------------------------------------------------------------------
// Encode

void Tokenizer::Impl::PreTokenizeAndEncode(std::string_view text, bool at_start,
                                           std::vector<int32_t>* out) const {
  if (pre_tokenizers.empty()) {
    model.EncodeWord(text, out);
    return;
  }
  // Fast path: one splitting regex (+ ByteLevel without prefix space or regex), as in Llama-3.
  if (pre_tokenizers.size() <= 2 && pre_tokenizers[0].kind == PreTokenizer::kSplit &&
      pre_tokenizers[0].regex && !pre_tokenizers[0].invert &&
      pre_tokenizers[0].behavior == SplitBehavior::kIsolated &&
      (pre_tokenizers.size() == 1 ||
       (pre_tokenizers[1].kind == PreTokenizer::kByteLevel && !pre_tokenizers[1].regex &&
        !pre_tokenizers[1].add_prefix_space))) {
    size_t prev = 0;
    pre_tokenizers[0].regex->ForEachMatch(text, [&](size_t b, size_t e) {
      if (b > prev) model.EncodeWord(text.substr(prev, b - prev), out);
      model.EncodeWord(text.substr(b, e - b), out);
      prev = e;
    });
    if (prev < text.size()) model.EncodeWord(text.substr(prev), out);
    return;
  }
  // General path: a buffer and spans into it, rewritten by each pre-tokenizer.
  thread_local std::string buf, next_buf;
  thread_local std::vector<Span> spans, next_spans;
  buf.assign(text);
  spans.assign(1, Span{0, static_cast<uint32_t>(text.size())});
  for (const PreTokenizer& pt : pre_tokenizers) {
    next_spans.clear();
    if (pt.kind == PreTokenizer::kSplit) {
      for (Span s : spans)
        SplitSpan(pt, std::string_view(buf).substr(s.b, s.e - s.b), s.b, &next_spans);
      spans.swap(next_spans);
      continue;
    }
    // ByteLevel / Metaspace rewrite each span's text, then maybe split it.
    next_buf.clear();
    for (Span s : spans) {
      std::string piece = buf.substr(s.b, s.e - s.b);
      if (pt.kind == PreTokenizer::kByteLevel) {
        if (pt.add_prefix_space && (piece.empty() || piece[0] != ' ')) piece.insert(0, " ");
      } else {
        piece = ReplaceAll(piece, " ", pt.replacement);
        const bool starts = piece.compare(0, pt.replacement.size(), pt.replacement) == 0;
        const bool first = at_start && s.b == 0;
        if (!starts && (pt.prepend_scheme == PrependScheme::kAlways ||
                        (pt.prepend_scheme == PrependScheme::kFirst && first))) {
          piece.insert(0, pt.replacement);
        }
      }
      const auto base = static_cast<uint32_t>(next_buf.size());
      next_buf += piece;
      if ((pt.kind == PreTokenizer::kByteLevel && pt.regex) ||
          (pt.kind == PreTokenizer::kMetaspace && pt.split)) {
        SplitSpan(pt, piece, base, &next_spans);
      } else if (!piece.empty()) {
        next_spans.push_back(Span{base, static_cast<uint32_t>(next_buf.size())});
      }
    }
    buf.swap(next_buf);
    spans.swap(next_spans);
  }
  for (Span s : spans) model.EncodeWord(std::string_view(buf).substr(s.b, s.e - s.b), out);
}

void Tokenizer::Impl::EncodeSection(std::string_view section, bool at_start,
                                    std::vector<int32_t>* out) const {
  thread_local std::string norm;
  std::string_view text = section;
  if (!normalizers.empty()) {
    Normalize(normalizers, section, &norm);
    text = norm;
  }
  if (text.empty()) return;
  if (normalized_added.empty()) {
    PreTokenizeAndEncode(text, at_start, out);
    return;
  }
  normalized_added.Split(text, [&](size_t b, size_t e, int32_t id) {
    if (id >= 0) {
      out->push_back(id);
    } else {
      PreTokenizeAndEncode(text.substr(b, e - b), at_start && b == 0, out);
    }
  });
}

void Tokenizer::Impl::Encode(std::string_view text, bool add_special,
                             std::vector<int32_t>* out) const {
  std::string fixed;
  if (!IsValidUtf8(text)) {
    fixed = SanitizeUtf8(text);
    text = fixed;
  }
  if (add_special) out->insert(out->end(), prefix_ids.begin(), prefix_ids.end());
  if (raw_added.empty()) {
    if (!text.empty()) EncodeSection(text, true, out);
  } else {
    raw_added.Split(text, [&](size_t b, size_t e, int32_t id) {
      if (id >= 0) {
        out->push_back(id);
      } else {
        EncodeSection(text.substr(b, e - b), b == 0, out);
      }
    });
  }
  if (add_special) out->insert(out->end(), suffix_ids.begin(), suffix_ids.end());
}

// ---------------------------------------------------------------------------------------------
// Public API

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  impl_->Encode(text, add_special_tokens, &ids);
  return ids;
}

void Tokenizer::EncodeInto(std::string_view text, bool add_special_tokens,
                           std::vector<int32_t>* ids) const {
  impl_->Encode(text, add_special_tokens, ids);
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& im = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= im.vocab_size) {
      FT_THROW(DataError, "cannot decode id {}: outside the vocabulary [0, {}) of {}", id,
               im.vocab_size, im.path);
    }
    if (skip_special_tokens && im.special_ids.count(id) != 0) continue;
    if (auto it = im.added_by_id.find(id); it != im.added_by_id.end()) {
      tokens.push_back(it->second);
    } else if (id < static_cast<int64_t>(im.has_token.size()) && im.has_token[id]) {
      tokens.push_back(im.id_to_token[id]);
    }
  }
  if (!im.has_decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) out += ' ';
      out += tokens[i];
    }
    return ToValidUtf8(std::move(out));
  }
  for (const Decoder& d : im.decoders) ApplyDecoder(d, &tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return ToValidUtf8(std::move(out));
}

std::string Tokenizer::IdToPiece(int32_t id) const {
  const Impl& im = *impl_;
  if (auto it = im.added_by_id.find(id); it != im.added_by_id.end()) return it->second;
  if (id >= 0 && id < static_cast<int64_t>(im.has_token.size()) && im.has_token[id]) {
    return im.id_to_token[id];
  }
  FT_THROW(DataError, "id {} names no token of {} (vocab size {})", id, im.path, im.vocab_size);
}

std::string Tokenizer::TokenBytes(int32_t id) const {
  const Impl& im = *impl_;
  std::string piece = IdToPiece(id);
  if (im.added_by_id.count(id) != 0) return piece;
  if (im.model.byte_level) {
    std::string bytes;
    return ByteLevelToBytes(piece, &bytes) ? bytes : piece;
  }
  if (im.model.byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      if (im.model.byte_ids[b] == id) return std::string(1, static_cast<char>(b));
    }
  }
  for (const Decoder& d : im.decoders) {
    if (d.kind == Decoder::kReplace) piece = ReplaceAll(piece, d.pattern, d.content);
    if (d.kind == Decoder::kMetaspace) piece = ReplaceAll(piece, d.content, " ");
  }
  return piece;
}

int32_t Tokenizer::TokenToId(std::string_view token) const { return impl_->Lookup(token); }
int64_t Tokenizer::vocab_size() const { return impl_->vocab_size; }
int32_t Tokenizer::bos_id() const { return impl_->bos_id; }
const std::vector<int32_t>& Tokenizer::eos_ids() const { return impl_->eos_ids; }
int32_t Tokenizer::pad_id() const { return impl_->pad_id; }
const std::string& Tokenizer::sha256() const { return impl_->sha256; }
const std::string& Tokenizer::path() const { return impl_->path; }
std::string Tokenizer::kind() const { return impl_->kind; }
const std::vector<int32_t>& Tokenizer::special_prefix_ids() const { return impl_->prefix_ids; }
const std::vector<int32_t>& Tokenizer::special_suffix_ids() const { return impl_->suffix_ids; }
bool Tokenizer::IsSpecial(int32_t id) const { return impl_->special_ids.count(id) != 0; }
const LoadNotes& Tokenizer::notes() const { return impl_->notes; }

}  // namespace ftune::data
