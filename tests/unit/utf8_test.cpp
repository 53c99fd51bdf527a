// unit: data/utf8.h, the one UTF-8 validator and repairer of the JSONL reader and the tokenizer.
// Checked against Unicode's definition (table 3-7 of the standard: every scalar value's encoding
// is valid, surrogates, overlong forms and values past U+10FFFF are not) and its example of
// replacing maximal subparts (table 3-8), and across the 8-byte ASCII fast path's boundaries.
#include "data/utf8.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

namespace ftune::data {
namespace {

std::string Encode(uint32_t cp) {  // the UTF-8 bit pattern, surrogates included
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

TEST(Utf8, EveryScalarValueIsValidAndEverySurrogateIsNot) {
  int64_t wrong = 0;
  for (uint32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    const bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
    // Behind 9 ASCII bytes too, so that the fast path hands over mid-window.
    const std::string alone = Encode(cp), behind = "abcdefghi" + alone;
    if (IsValidUtf8(alone) == surrogate || IsValidUtf8(behind) == surrogate) {
      if (++wrong <= 5) ADD_FAILURE() << "U+" << std::hex << cp;
    }
  }
  EXPECT_EQ(wrong, 0);
}

TEST(Utf8, IllFormedSequencesAreInvalid) {
  for (const char* bad : {
           "\x80",              // a continuation byte alone
           "\xBF",              //
           "\xC0\x80",          // overlong NUL
           "\xC1\xBF",          // overlong U+007F
           "\xE0\x80\x80",      // overlong 3-byte
           "\xE0\x9F\xBF",      // overlong U+07FF
           "\xF0\x80\x80\x80",  // overlong 4-byte
           "\xF0\x8F\xBF\xBF",  // overlong U+FFFF
           "\xF4\x90\x80\x80",  // U+110000
           "\xF5\x80\x80\x80",  // lead byte past U+10FFFF
           "\xFE", "\xFF",      //
           "\xE2\x82",          // truncated (the euro sign without its last byte)
           "\xF0\x9F\x98",      // truncated 4-byte
           "\xE2\x28\xA1",      // a continuation byte missing
       }) {
    const std::string s(bad);
    EXPECT_FALSE(IsValidUtf8(s)) << "bytes of length " << s.size();
    EXPECT_FALSE(IsValidUtf8("ascii ascii " + s + " ascii")) << "bytes of length " << s.size();
  }
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("\xE2\x82\xAC \xF0\x9F\x98\x80 \xC3\xA9"));  // euro, emoji, e-acute
}

TEST(Utf8, AsciiFastPathBoundaries) {
  // An invalid byte at every offset of runs around the 8-byte window, and a valid sequence there.
  for (size_t before = 0; before <= 17; ++before) {
    for (size_t after = 0; after <= 9; ++after) {
      const std::string a(before, 'x'), b(after, 'y');
      EXPECT_FALSE(IsValidUtf8(a + "\x80" + b)) << before << " + " << after;
      EXPECT_FALSE(IsValidUtf8(a + "\xE2\x82" + b)) << before << " + " << after;
      EXPECT_TRUE(IsValidUtf8(a + "\xE2\x82\xAC" + b)) << before << " + " << after;
    }
  }
}

TEST(Utf8, MaximalSubpartsBecomeOneReplacementEach) {
  // The standard's example (table 3-8): 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64.
  const std::string in = "\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64";
  const std::string r(kReplacementChar);
  EXPECT_EQ(SanitizeUtf8(in), "a" + r + r + r + "b" + r + "c" + r + r + "d");
  EXPECT_EQ(ToValidUtf8(in), SanitizeUtf8(in));
  EXPECT_TRUE(IsValidUtf8(SanitizeUtf8(in)));
  const std::string good = "caf\xC3\xA9 \xE2\x82\xAC";
  EXPECT_EQ(SanitizeUtf8(good), good);
  EXPECT_EQ(ToValidUtf8(good), good);
}

}  // namespace
}  // namespace ftune::data
