// The protocol by which each config section lists its fields once.
//
// A section is a plain struct with defaults and a member
//   template <class V> void VisitFields(V& v) { v("name", name, "why"); ... }
// and optionally `void Validate() const` that throws ConfigKeyError naming the
// key (relative to the section) when a value is out of range or inconsistent.
// runtime/config.cpp is the only code that turns YAML into these structs; it
// walks VisitFields to load, override (--set), print and write them, so adding
// a field to a section needs no change anywhere else.
//
// Field types: bool, int, int64_t, double, std::string, std::vector<std::string>,
// std::vector<int64_t>, and nested sections (structs with VisitFields).
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "parallel/error.h"

namespace ftune {

// A value that is wrong for its key. `key` is the dotted path inside the
// section being validated; the loader prefixes the section and adds file:line.
class ConfigKeyError : public ConfigError {
 public:
  ConfigKeyError(std::string key, const std::string& msg)
      : ConfigError(msg), key_(std::move(key)) {}
  const std::string& key() const { return key_; }

 private:
  std::string key_;
};

// Throws ConfigKeyError unless `value` is one of `allowed`.
inline void CheckOneOf(const std::string& key, const std::string& value,
                       const std::vector<std::string>& allowed) {
  if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return;
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
  throw ConfigKeyError(key, fmt::format("'{}' is not one of: {}", value, list));
}

// Throws ConfigKeyError unless lo <= value <= hi.
template <class T>
void CheckRange(const std::string& key, T value, T lo, T hi) {
  if (value >= lo && value <= hi) return;
  throw ConfigKeyError(key, fmt::format("{} is out of range [{}, {}]", value, lo, hi));
}

// Returns a / b, throwing ConfigKeyError "a is not divisible by b" otherwise.
inline int64_t Divide(const std::string& key, int64_t a, int64_t b) {
  if (b == 0 || a % b != 0) {
    throw ConfigKeyError(key, fmt::format("{} is not divisible by {}", a, b));
  }
  return a / b;
}

}  // namespace ftune
