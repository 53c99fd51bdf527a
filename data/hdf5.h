// The one HDF5 helper of ftune (data/shards.cpp, runtime/checkpoint*.cpp): the
// process-wide HDF5 lock, one error-checking macro, and RAII handles.
//
// Debian's HDF5 is built without thread safety, so every HDF5 call holds
// Hdf5Mutex() (data/shards.h): H5Lock takes it, re-entrantly on one thread (a
// handle closing under a held lock takes it again). HDF5's automatic error
// printing is off in ftune (QuietHdf5): failures come back as exceptions
// carrying HDF5's error stack.
#pragma once

#include <fmt/format.h>
#include <hdf5.h>

#include <string>

#include "parallel/error.h"

namespace ftune::data {

// Holds Hdf5Mutex() for its lifetime; re-entrant on one thread.
class H5Lock {
 public:
  H5Lock();
  ~H5Lock();
  H5Lock(const H5Lock&) = delete;
  H5Lock& operator=(const H5Lock&) = delete;
};

// Turns HDF5's automatic printing of errors to stderr off (idempotent; takes
// H5Lock).
void QuietHdf5();

// HDF5's error stack as one line ("function: message; ..."), then cleared.
std::string H5ErrorStack();

// The context pieces of H5_CHECK joined by spaces ("file", "dataset", ...).
inline std::string H5Context(const std::string& s) { return s; }
template <class... A>
std::string H5Context(const std::string& first, const A&... rest) {
  return first + " " + H5Context(std::string(rest)...);
}

// "<ctx>: <call> failed (<source file>:<line>): <HDF5's error stack>" (clears
// the stack).
std::string H5Failure(const char* call, const std::string& ctx, const char* file, int line);
template <class E>
[[noreturn]] void ThrowH5(const char* call, const std::string& ctx, const char* file, int line) {
  throw E(H5Failure(call, ctx, file, line));
}

// H5_CHECK(Type, call, context...): the value of `call`, or (when it is
// negative) an exception of ftune type `Type` (IoError, DataError,
// CorruptCheckpointError, ...) naming the context (the file, the dataset), the
// call, its source location and HDF5's error stack. The context is only
// formatted on failure.
#define H5_CHECK(Type, call, ...)                                                         \
  [&]() {                                                                                 \
    auto ft_h5_v_ = (call);                                                               \
    if (ft_h5_v_ < 0) {                                                                   \
      ::ftune::data::ThrowH5<::ftune::Type>(#call, ::ftune::data::H5Context(__VA_ARGS__), \
                                            __FILE__, __LINE__);                          \
    }                                                                                     \
    return ft_h5_v_;                                                                      \
  }()

// An HDF5 identifier closed by its H5*close function (under H5Lock) when it
// goes.
class H5Id {
 public:
  H5Id() = default;
  H5Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~H5Id() { Close(); }
  H5Id(H5Id&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  H5Id& operator=(H5Id&& o) noexcept {
    if (this != &o) {
      Close();
      id_ = o.id_, close_ = o.close_;
      o.id_ = -1;
    }
    return *this;
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }
  // Gives the identifier up without closing it.
  hid_t release() {
    const hid_t id = id_;
    id_ = -1;
    return id;
  }
  // Closes now; the result of the close call (< 0: failed, e.g. a flush hit a
  // full disk).
  herr_t Close();
  void reset() { Close(); }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

}  // namespace ftune::data
