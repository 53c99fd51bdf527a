#include "data/utf8.h"

#include <cstdint>
#include <cstring>

namespace ftune::data {
namespace {

// Decodes one UTF-8 sequence at s[i]. Returns true and its length in *len when it is valid;
// else false and the length of the maximal invalid subpart (>= 1) in *len.
bool Utf8Step(const unsigned char* s, size_t n, size_t i, size_t* len) {
  const unsigned char c = s[i];
  if (c < 0x80) {
    *len = 1;
    return true;
  }
  int need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c == 0xE0) {
    need = 2, lo = 0xA0;
  } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
    need = 2;
  } else if (c == 0xED) {
    need = 2, hi = 0x9F;
  } else if (c == 0xF0) {
    need = 3, lo = 0x90;
  } else if (c >= 0xF1 && c <= 0xF3) {
    need = 3;
  } else if (c == 0xF4) {
    need = 3, hi = 0x8F;
  } else {
    *len = 1;
    return false;
  }
  for (int k = 1; k <= need; ++k) {
    if (i + k >= n) {
      *len = k;
      return false;
    }
    const unsigned char b = s[i + k];
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *len = k;
      return false;
    }
  }
  *len = need + 1;
  return true;
}

}  // namespace

bool IsValidUtf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {
      uint64_t v;
      std::memcpy(&v, s + i, 8);
      if ((v & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    size_t len;
    if (!Utf8Step(s, n, i, &len)) return false;
    i += len;
  }
  return true;
}

// Replaces each maximal invalid subpart with U+FFFD.
std::string SanitizeUtf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  std::string out;
  out.reserve(n + 8);
  size_t i = 0;
  while (i < n) {
    size_t len;
    if (Utf8Step(s, n, i, &len)) {
      out.append(text.data() + i, len);
    } else {
      out.append(kReplacementChar);
    }
    i += len;
  }
  return out;
}

std::string ToValidUtf8(std::string text) {
  if (IsValidUtf8(text)) return text;
  return SanitizeUtf8(text);
}

}  // namespace ftune::data
