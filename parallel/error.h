// Typed errors shared by every layer of ftune.
//
// They live in parallel/ because it is the bottom of the dependency order
// (launch -> runtime -> {models, data} -> parallel): every layer throws them,
// runtime's main loop catches them, prints the hint and aborts the job.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace ftune {

// Base of every error ftune throws on purpose. `what()` is the message a user
// reads; it should name the file, key or tensor and what to do about it.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Bad configuration: YAML syntax, unknown key, wrong type, inconsistent values.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A file could not be read or written, or its contents are malformed.
class IoError : public Error {
 public:
  using Error::Error;
};

// Input data (JSONL records, shards, tokenizer input) is invalid.
class DataError : public Error {
 public:
  using Error::Error;
};

// A model checkpoint or HF directory does not match what was expected.
class ModelError : public Error {
 public:
  using Error::Error;
};

// A collective or communication library call failed.
class CommError : public Error {
 public:
  using Error::Error;
};

// A violated internal invariant (a bug in ftune, not in the user's input).
class InternalError : public Error {
 public:
  using Error::Error;
};

}  // namespace ftune

// FT_CHECK(cond, "format {}", args...) throws InternalError naming the
// condition and the source location. For user-facing errors, throw a typed
// error with FT_THROW(ConfigError, "...") instead.
#define FT_CHECK(cond, ...)                                                            \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      throw ::ftune::InternalError(::fmt::format("check failed: {} ({}:{}): {}", #cond, \
                                                 __FILE__, __LINE__,                   \
                                                 ::fmt::format(__VA_ARGS__)));         \
    }                                                                                  \
  } while (0)

#define FT_THROW(Type, ...) throw ::ftune::Type(::fmt::format(__VA_ARGS__))
