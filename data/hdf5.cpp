#include "data/hdf5.h"

#include "data/shards.h"
#include "parallel/files.h"

namespace ftune::data {
namespace {
thread_local int lock_depth = 0;
}  // namespace

H5Lock::H5Lock() {
  if (lock_depth++ == 0) Hdf5Mutex().lock();
}
H5Lock::~H5Lock() {
  if (--lock_depth == 0) Hdf5Mutex().unlock();
}

void QuietHdf5() {
  H5Lock lock;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

std::string H5ErrorStack() {
  std::string msg;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
        auto* s = static_cast<std::string*>(data);
        if (!s->empty()) *s += "; ";
        *s += fmt::format("{}: {}", e->func_name ? e->func_name : "?", e->desc ? e->desc : "?");
        return 0;
      },
      &msg);
  H5Eclear2(H5E_DEFAULT);
  return msg.empty() ? "(no HDF5 error message)" : msg;
}

std::string H5Failure(const char* call, const std::string& ctx, const char* file, int line) {
  return fmt::format("{}: {} failed ({}:{}): {}", ctx, call, files::BaseName(file), line,
                     H5ErrorStack());
}

herr_t H5Id::Close() {
  if (id_ < 0) return 0;
  H5Lock lock;
  const herr_t r = close_ ? close_(id_) : 0;
  id_ = -1;
  return r;
}

}  // namespace ftune::data
