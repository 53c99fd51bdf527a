#pragma once
// UTF-8 validation and repair, shared by the JSONL reader (records.cpp rejects a line that is not
// valid UTF-8) and the tokenizer (decoding byte tokens, normalising its input).

#include <cstddef>
#include <string>
#include <string_view>

namespace ftune::data {

// True when `text` is well-formed UTF-8 (Unicode's table 3-7: no overlong forms, no surrogates,
// nothing above U+10FFFF). Runs of ASCII are checked 8 bytes at a time.
bool IsValidUtf8(std::string_view text);

// `text` with each maximal invalid subpart replaced by U+FFFD (Unicode's "substitution of
// maximal subparts", as the WHATWG decoder and Python's errors="replace" do).
std::string SanitizeUtf8(std::string_view text);

// `text` itself when valid, else SanitizeUtf8(text).
std::string ToValidUtf8(std::string text);

// U+FFFD, the replacement character, in UTF-8.
inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

}  // namespace ftune::data
