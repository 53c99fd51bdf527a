#include "runtime/checkpoint.h"

#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)
#include <ATen/CPUGeneratorImpl.h>
#include <fcntl.h>
#include <hdf5.h>
#include <libdeflate.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <mutex>
#include <regex>

#include "data/shards.h"
#include "models/hf_io.h"
#include "parallel/files.h"
#include "parallel/hdf5_mpio.h"
#include "runtime/direct_write.h"
#include "runtime/log.h"
#include "runtime/model_setup.h"
#include "runtime/parallelize.h"

namespace ftune::runtime {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

constexpr const char* kKinds[3] = {"", "exp_avg", "exp_avg_sq"};
constexpr const char* kChecksumScheme =
    "crc32 (zlib) of the tensor's fp32 little-endian bytes in C order of the full shape";

// Name of tensor k (0 = master weights, 1 = exp_avg, 2 = exp_avg_sq) of parameter `name`.
std::string DatasetName(const std::string& name, int k) {
  return k == 0 ? "/model/" + name : fmt::format("/optim/{}/{}", name, kKinds[k]);
}

// ---- HDF5: locking, errors, handles ------------------------------------------------------

// Holds data::Hdf5Mutex(); re-entrant on one thread (handles close under it too).
class H5Lock {
 public:
  H5Lock() {
    if (depth_++ == 0) data::Hdf5Mutex().lock();
  }
  ~H5Lock() {
    if (--depth_ == 0) data::Hdf5Mutex().unlock();
  }
  H5Lock(const H5Lock&) = delete;
  H5Lock& operator=(const H5Lock&) = delete;

 private:
  static thread_local int depth_;
};
thread_local int H5Lock::depth_ = 0;

// HDF5's error stack as one line (then cleared).
std::string H5Stack() {
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

template <class E = IoError>
[[noreturn]] void ThrowH5(const char* call, const std::string& ctx, const char* file, int line) {
  throw E(
      fmt::format("{}: {} failed ({}:{}): {}", ctx, call, files::BaseName(file), line, H5Stack()));
}

// H5_CHECK(call, context): the call's result, or IoError naming the call, the context (file,
// dataset), the source location and HDF5's own messages. H5_CHECK_AS(Type, ...) picks the type.
#define H5_CHECK_IMPL(Type, call, text, ctx)                               \
  [&]() {                                                                  \
    auto ft_h5_v_ = (call);                                                \
    if (ft_h5_v_ < 0) ThrowH5<Type>(text, (ctx), __FILE__, __LINE__);      \
    return ft_h5_v_;                                                       \
  }()
#define H5_CHECK_AS(Type, call, ctx) H5_CHECK_IMPL(Type, call, #call, ctx)
#define H5_CHECK(call, ctx) H5_CHECK_IMPL(IoError, call, #call, ctx)

// An HDF5 identifier closed by its destructor (under H5Lock).
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
  // Closes now; the result of the close call (< 0: failed, e.g. a flush hit a full disk).
  herr_t Close() {
    if (id_ < 0) return 0;
    H5Lock lock;
    herr_t r = close_(id_);
    id_ = -1;
    return r;
  }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

void WriteAttr(hid_t obj, const char* name, hid_t mem_type, hid_t file_type, const void* value,
               const std::string& ctx) {
  H5Id space(H5_CHECK(H5Screate(H5S_SCALAR), ctx), H5Sclose);
  H5Id attr(H5_CHECK(H5Acreate2(obj, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                     fmt::format("{} attribute {}", ctx, name)),
            H5Aclose);
  H5_CHECK(H5Awrite(attr.get(), mem_type, value), fmt::format("{} attribute {}", ctx, name));
}
void WriteAttrInt(hid_t obj, const char* name, int64_t v, const std::string& ctx) {
  WriteAttr(obj, name, H5T_NATIVE_INT64, H5T_STD_I64LE, &v, ctx);
}
void WriteAttrDouble(hid_t obj, const char* name, double v, const std::string& ctx) {
  WriteAttr(obj, name, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, &v, ctx);
}
void WriteAttrString(hid_t obj, const char* name, const std::string& v, const std::string& ctx) {
  H5Id type(H5_CHECK(H5Tcopy(H5T_C_S1), ctx), H5Tclose);
  H5_CHECK(H5Tset_size(type.get(), std::max<size_t>(1, v.size())), ctx);
  std::string buf = v.empty() ? std::string(1, '\0') : v;
  WriteAttr(obj, name, type.get(), type.get(), buf.data(), ctx);
}

// Attribute readers: CorruptCheckpointError when missing (a checkpoint must have them all).
H5Id OpenAttr(hid_t obj, const char* name, const std::string& ctx) {
  if (H5Aexists(obj, name) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    FT_THROW(CorruptCheckpointError, "{}: attribute '{}' is missing", ctx, name);
  }
  return H5Id(H5_CHECK_AS(CorruptCheckpointError, H5Aopen(obj, name, H5P_DEFAULT), ctx), H5Aclose);
}
int64_t ReadAttrInt(hid_t obj, const char* name, const std::string& ctx) {
  H5Id a = OpenAttr(obj, name, ctx);
  int64_t v = 0;
  H5_CHECK_AS(CorruptCheckpointError, H5Aread(a.get(), H5T_NATIVE_INT64, &v), ctx);
  return v;
}
double ReadAttrDouble(hid_t obj, const char* name, const std::string& ctx) {
  H5Id a = OpenAttr(obj, name, ctx);
  double v = 0;
  H5_CHECK_AS(CorruptCheckpointError, H5Aread(a.get(), H5T_NATIVE_DOUBLE, &v), ctx);
  return v;
}
uint32_t ReadAttrU32(hid_t obj, const char* name, const std::string& ctx) {
  H5Id a = OpenAttr(obj, name, ctx);
  uint32_t v = 0;
  H5_CHECK_AS(CorruptCheckpointError, H5Aread(a.get(), H5T_NATIVE_UINT32, &v), ctx);
  return v;
}
std::string ReadAttrString(hid_t obj, const char* name, const std::string& ctx) {
  H5Id a = OpenAttr(obj, name, ctx);
  H5Id type(H5_CHECK_AS(CorruptCheckpointError, H5Aget_type(a.get()), ctx), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0) {
    FT_THROW(CorruptCheckpointError, "{}: attribute '{}' is not a fixed-length string", ctx, name);
  }
  std::string buf(H5Tget_size(type.get()), '\0');
  H5_CHECK_AS(CorruptCheckpointError, H5Aread(a.get(), type.get(), buf.data()), ctx);
  const auto end = buf.find('\0');
  return end == std::string::npos ? buf : buf.substr(0, end);
}

// "step_00000042.h5" -> 42; -1 for any other name.
int64_t StepOfFile(const std::string& name) {
  static const std::regex re(R"(^step_(\d+)\.h5$)");
  std::smatch m;
  if (!std::regex_match(name, m, re)) return -1;
  return std::stoll(m[1].str());
}

// The state checksum (format_version >= 2): crc32 over every attribute of /state but
// `state_crc32` itself, in name order: its name, its type as HDF5 encodes it (byte order, size,
// sign), its element count and its raw stored bytes; then the names of the objects in /state.
// /state/rng has its own crc32 attribute (its data is written by every rank, see RunJob). The
// writer computes it by reading back what it wrote, so writer and reader run the same code.
uint32_t StateDigest(hid_t group, const std::string& ctx) {
  struct Acc {
    uLong crc = crc32(0, Z_NULL, 0);
    void Add(const void* p, size_t n) { crc = crc32_z(crc, static_cast<const Bytef*>(p), n); }
    void AddStr(const std::string& s) { Add(s.c_str(), s.size() + 1); }
  } acc;
  std::vector<std::string> attrs, links;
  H5_CHECK_AS(CorruptCheckpointError,
              H5Aiterate2(
                  group, H5_INDEX_NAME, H5_ITER_INC, nullptr,
                  [](hid_t, const char* name, const H5A_info_t*, void* out) -> herr_t {
                    static_cast<std::vector<std::string>*>(out)->push_back(name);
                    return 0;
                  },
                  &attrs),
              ctx);
  H5_CHECK_AS(CorruptCheckpointError,
              H5Literate(
                  group, H5_INDEX_NAME, H5_ITER_INC, nullptr,
                  [](hid_t, const char* name, const H5L_info_t*, void* out) -> herr_t {
                    static_cast<std::vector<std::string>*>(out)->push_back(name);
                    return 0;
                  },
                  &links),
              ctx);
  for (const auto& name : attrs) {
    if (name == "state_crc32") continue;
    const std::string actx = fmt::format("{} attribute {}", ctx, name);
    H5Id a(H5_CHECK_AS(CorruptCheckpointError, H5Aopen(group, name.c_str(), H5P_DEFAULT), actx),
           H5Aclose);
    H5Id type(H5_CHECK_AS(CorruptCheckpointError, H5Aget_type(a.get()), actx), H5Tclose);
    H5Id space(H5_CHECK_AS(CorruptCheckpointError, H5Aget_space(a.get()), actx), H5Sclose);
    size_t encoded = 0;
    H5_CHECK_AS(CorruptCheckpointError, H5Tencode(type.get(), nullptr, &encoded), actx);
    std::string enc(encoded, '\0');
    H5_CHECK_AS(CorruptCheckpointError, H5Tencode(type.get(), enc.data(), &encoded), actx);
    const int64_t n =
        H5_CHECK_AS(CorruptCheckpointError, H5Sget_simple_extent_npoints(space.get()), actx);
    if (H5Tis_variable_str(type.get()) > 0) {
      FT_THROW(CorruptCheckpointError, "{} is a variable-length string", actx);
    }
    std::string raw(static_cast<size_t>(n) * H5Tget_size(type.get()), '\0');
    H5_CHECK_AS(CorruptCheckpointError, H5Aread(a.get(), type.get(), raw.data()), actx);
    acc.AddStr(name);
    acc.AddStr(enc);
    acc.Add(&n, sizeof n);
    acc.Add(raw.data(), raw.size());
  }
  for (const auto& name : links) acc.AddStr(name);
  return static_cast<uint32_t>(acc.crc);
}

// Checks the /state checksum of a checkpoint of `version`; `ctx` names the file. A version-1
// file (written before state checksums) has none: accepted with a warning, unverified.
void VerifyState(hid_t g, int64_t version, const std::string& ctx) {
  const bool has = H5Aexists(g, "state_crc32") > 0;
  H5Eclear2(H5E_DEFAULT);
  if (version == 1 && !has) {
    LogWarn(
        "{}: written by an ftune before state checksums (format_version 1): its training "
        "state (step, loader, RNG, config) cannot be verified; the tensors are",
        ctx);
    return;
  }
  if (!has) FT_THROW(CorruptCheckpointError, "{}: attribute 'state_crc32' is missing", ctx);
  const uint32_t stored = ReadAttrU32(g, "state_crc32", ctx);
  const uint32_t got = StateDigest(g, ctx);
  if (got != stored) {
    FT_THROW(CorruptCheckpointError,
             "{}: checksum mismatch in the training state (crc32 {:08x}, "
             "stored {:08x}): step, loader position, RNG, layout or config are damaged",
             ctx, got, stored);
  }
}

CheckpointMeta ReadMetaFrom(hid_t file, const std::string& path) {
  CheckpointMeta m;
  m.path = path;
  if (H5Lexists(file, "/state", H5P_DEFAULT) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    FT_THROW(CorruptCheckpointError, "checkpoint {} has no /state group", path);
  }
  H5Id g(H5_CHECK_AS(CorruptCheckpointError, H5Gopen2(file, "/state", H5P_DEFAULT), path),
         H5Gclose);
  const std::string ctx = path + " /state";
  const std::string magic = ReadAttrString(g.get(), "magic", ctx);
  if (magic != kCheckpointMagic) {
    FT_THROW(CorruptCheckpointError, "{} is not an ftune checkpoint (magic '{}', expected '{}')",
             path, magic, kCheckpointMagic);
  }
  m.format_version = ReadAttrInt(g.get(), "format_version", ctx);
  if (m.format_version == 1 || m.format_version == kCheckpointFormatVersion) {
    VerifyState(g.get(), m.format_version, ctx);
  } else if (m.format_version < 1 || H5Aexists(g.get(), "state_crc32") <= 0 ||
             StateDigest(g.get(), ctx) != ReadAttrU32(g.get(), "state_crc32", ctx)) {
    // An unknown version whose state does not verify is a damaged known one, not a newer one.
    H5Eclear2(H5E_DEFAULT);
    FT_THROW(CorruptCheckpointError,
             "{}: format_version {} is not a known version and the state "
             "checksum does not match: the file is damaged",
             ctx, m.format_version);
  } else {
    FT_THROW(ModelError,
             "checkpoint {} has format_version {}; this ftune reads version {}: use "
             "the ftune that wrote it (or export it to an HF directory with that one)",
             path, m.format_version, kCheckpointFormatVersion);
  }
  auto& s = m.state;
  s.step = ReadAttrInt(g.get(), "step", ctx);
  s.total_steps = ReadAttrInt(g.get(), "total_steps", ctx);
  s.tokens_seen = ReadAttrInt(g.get(), "tokens_seen", ctx);
  s.skipped_steps = ReadAttrInt(g.get(), "skipped_steps", ctx);
  s.lr = ReadAttrDouble(g.get(), "lr", ctx);
  s.loader.epoch = ReadAttrInt(g.get(), "loader_epoch", ctx);
  s.loader.cursor = ReadAttrInt(g.get(), "loader_cursor", ctx);
  s.loader.seed = ReadAttrInt(g.get(), "loader_seed", ctx);
  m.dp = ReadAttrInt(g.get(), "dp", ctx);
  m.tp = ReadAttrInt(g.get(), "tp", ctx);
  m.zero = ReadAttrInt(g.get(), "zero", ctx);
  m.world_size = ReadAttrInt(g.get(), "world_size", ctx);
  m.seed = ReadAttrInt(g.get(), "seed", ctx);
  m.dtype = ReadAttrString(g.get(), "dtype", ctx);
  m.config_yaml = ReadAttrString(g.get(), "config_yaml", ctx);
  m.model_config_json = ReadAttrString(g.get(), "model_config", ctx);
  m.tokenizer_dir = ReadAttrString(g.get(), "tokenizer_dir", ctx);
  const int64_t named = StepOfFile(files::BaseName(path));
  if (named >= 0 && named != s.step) {
    FT_THROW(CorruptCheckpointError,
             "{}: the file name says step {} but the checkpoint holds step "
             "{} (renamed or damaged)",
             ctx, named, s.step);
  }
  return m;
}

// ---- hyperslab geometry --------------------------------------------------------------------

struct Block {  // a rectangle of the full tensor
  std::vector<hsize_t> start, count;
};
struct Run {  // elements contiguous in the full tensor's flat order
  int64_t full_offset, local_offset, count;
};

// The flat range [a, b) of a C-order tensor of `shape` (from dim `d` on, the outer indices fixed
// in `prefix`) as rectangles, in C order.
void Decompose(const std::vector<int64_t>& shape, size_t d, int64_t a, int64_t b,
               std::vector<hsize_t>& prefix, std::vector<Block>& out) {
  if (a >= b) return;
  const size_t nd = shape.size();
  auto emit = [&](int64_t lo, int64_t n) {  // rows [lo, lo+n) of dim d, everything after it
    Block blk;
    blk.start = prefix;
    blk.count.assign(prefix.size(), 1);
    blk.start.push_back(lo);
    blk.count.push_back(n);
    for (size_t i = d + 1; i < nd; ++i) blk.start.push_back(0), blk.count.push_back(shape[i]);
    out.push_back(std::move(blk));
  };
  if (d + 1 == nd) {
    emit(a, b - a);
    return;
  }
  int64_t stride = 1;
  for (size_t i = d + 1; i < nd; ++i) stride *= shape[i];
  if (a % stride != 0) {  // head: part of row a / stride
    const int64_t r = a / stride;
    prefix.push_back(r);
    Decompose(shape, d + 1, a - r * stride, std::min(b - r * stride, stride), prefix, out);
    prefix.pop_back();
    a = (r + 1) * stride;
    if (a >= b) return;
  }
  if (b / stride > a / stride) emit(a / stride, b / stride - a / stride);  // whole rows
  if (b % stride != 0 && b / stride >= a / stride) {                       // tail
    const int64_t r = b / stride;
    prefix.push_back(r);
    Decompose(shape, d + 1, 0, b - r * stride, prefix, out);
    prefix.pop_back();
  }
}

// The contiguous runs (full flat order) of `blocks`, whose elements lie back to back in memory.
std::vector<Run> RunsOf(const std::vector<Block>& blocks, const std::vector<int64_t>& full) {
  std::vector<Run> runs;
  const size_t nd = full.size();
  std::vector<int64_t> stride(nd, 1);
  for (size_t i = nd - 1; i > 0; --i) stride[i - 1] = stride[i] * full[i];
  int64_t local = 0;
  for (const auto& b : blocks) {
    size_t j = nd - 1;  // dims after j span the whole tensor
    while (j > 0 && static_cast<int64_t>(b.count[j]) == full[j]) --j;
    int64_t len = 1;
    for (size_t i = j; i < nd; ++i) len *= b.count[i];
    std::vector<int64_t> idx(j, 0);  // odometer over dims [0, j)
    while (true) {
      int64_t off = 0;
      for (size_t i = 0; i < j; ++i) off += (b.start[i] + idx[i]) * stride[i];
      for (size_t i = j; i < nd; ++i) off += b.start[i] * stride[i];
      if (!runs.empty() && runs.back().full_offset + runs.back().count == off &&
          runs.back().local_offset + runs.back().count == local) {
        runs.back().count += len;
      } else {
        runs.push_back({off, local, len});
      }
      local += len;
      size_t i = j;
      while (i > 0) {
        if (++idx[i - 1] < static_cast<int64_t>(b.count[i - 1])) break;
        idx[i - 1] = 0;
        --i;
      }
      if (i == 0) break;
    }
  }
  return runs;
}

// Selects `blocks` (a rank's slice) in the file dataspace `fspace`.
void SelectBlocks(hid_t fspace, const std::vector<Block>& blocks, const std::string& ctx) {
  bool first = true;
  for (const auto& b : blocks) {
    H5_CHECK(H5Sselect_hyperslab(fspace, first ? H5S_SELECT_SET : H5S_SELECT_OR, b.start.data(),
                                 nullptr, b.count.data(), nullptr),
             ctx);
    first = false;
  }
}

// Writes (or reads) this rank's slice of dataset `ds`: the rectangles `blocks` of the file
// dataspace `fspace`, `count` elements back to back at `buf`. `buf` null: nothing (a rank that
// takes part in a collective transfer without elements).
void WriteSliceOf(hid_t ds, hid_t fspace, const std::vector<Block>& blocks, int64_t count,
                  const float* buf, hid_t dxpl, const std::string& ctx) {
  const bool any = buf != nullptr && count > 0;
  hsize_t n = any ? static_cast<hsize_t>(count) : 1;
  H5Id mspace(H5_CHECK(H5Screate_simple(1, &n, nullptr), ctx), H5Sclose);
  const float dummy = 0;
  if (any) {
    SelectBlocks(fspace, blocks, ctx);
  } else {
    H5_CHECK(H5Sselect_none(fspace), ctx);
    H5_CHECK(H5Sselect_none(mspace.get()), ctx);
  }
  H5_CHECK(H5Dwrite(ds, H5T_NATIVE_FLOAT, mspace.get(), fspace, dxpl, any ? buf : &dummy), ctx);
}
void ReadSliceOf(hid_t ds, hid_t fspace, const std::vector<Block>& blocks, int64_t count,
                 float* buf, hid_t dxpl, const std::string& ctx) {
  const bool any = buf != nullptr && count > 0;
  hsize_t n = any ? static_cast<hsize_t>(count) : 1;
  H5Id mspace(H5_CHECK(H5Screate_simple(1, &n, nullptr), ctx), H5Sclose);
  float dummy = 0;
  if (any) {
    SelectBlocks(fspace, blocks, ctx);
  } else {
    H5_CHECK(H5Sselect_none(fspace), ctx);
    H5_CHECK(H5Sselect_none(mspace.get()), ctx);
  }
  H5_CHECK_AS(CorruptCheckpointError,
              H5Dread(ds, H5T_NATIVE_FLOAT, mspace.get(), fspace, dxpl, any ? buf : &dummy), ctx);
}

// ---- agreement across ranks ----------------------------------------------------------------

enum Code : int { kOk = 0, kIo = 1, kCorrupt = 2, kMismatch = 3 };

// Every rank reports its outcome; when any failed, every rank throws (the failing ones their
// own message, the others one naming the failed ranks). Bounded by the communicator's timeout.
void Agree(parallel::Communicator& comm, int code, const std::string& msg,
           const std::string& what) {
  auto t = torch::zeros({comm.size()}, torch::kInt);
  t[comm.rank()] = code;
  comm.AllReduce(t, parallel::ReduceOp::kMax)->Wait();
  const int worst = t.max().item<int>();
  if (worst == kOk) return;
  std::vector<int> ranks;
  for (int r = 0; r < comm.size(); ++r) {
    if (t[r].item<int>() != kOk) ranks.push_back(r);
  }
  const std::string m =
      code != kOk ? msg
                  : fmt::format("{} failed on rank(s) {} (see their messages)", what,
                                fmt::join(ranks, ", "));
  if (worst == kMismatch) throw ModelError(m);
  if (worst == kCorrupt) throw CorruptCheckpointError(m);
  throw IoError(m);
}

// For a run of collective HDF5 calls interleaved with rank-local I/O: Run(f) keeps the first
// failure of this rank instead of throwing, so that the rank goes on making the same collective
// calls as the others (collective metadata operations fail alike on every rank; independent
// transfers may fail on one); Agree then settles the outcome once, as Phase does.
class Deferred {
 public:
  template <class F>
  void Run(F&& f) {
    if (code_ != kOk) {  // already failed: keep the collective calls going, ignore more errors
      try {
        f();
      } catch (const std::exception&) {
      }
      return;
    }
    try {
      f();
    } catch (const ModelError& e) {
      code_ = kMismatch, msg_ = e.what();
    } catch (const CorruptCheckpointError& e) {
      code_ = kCorrupt, msg_ = e.what();
    } catch (const std::exception& e) {
      code_ = kIo, msg_ = e.what();
    }
  }
  bool failed() const { return code_ != kOk; }
  void Agree(parallel::Communicator& comm, const std::string& what) const {
    ftune::runtime::Agree(comm, code_, msg_, what);
  }

 private:
  int code_ = kOk;
  std::string msg_;
};

// Runs `f` on every rank, then Agree on the outcome.
template <class F>
void Phase(parallel::Communicator& comm, const std::string& what, F&& f) {
  Deferred d;
  d.Run(std::forward<F>(f));
  d.Agree(comm, what);
}

// crc32 of every tensor from the runs of all ranks: entries (tensor id, byte offset, byte length,
// crc) all-gathered and combined in offset order. Checks the runs tile each tensor exactly.
std::vector<uint32_t> CombineCrcs(parallel::Communicator& comm, const std::vector<int64_t>& mine,
                                  const std::vector<int64_t>& tensor_bytes) {
  auto n = torch::tensor({static_cast<int64_t>(mine.size())}, torch::kLong);
  auto counts_t = torch::zeros({comm.size()}, torch::kLong);
  comm.AllGather(n, counts_t)->Wait();
  std::vector<int64_t> counts(counts_t.data_ptr<int64_t>(),
                              counts_t.data_ptr<int64_t>() + comm.size());
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  auto in = torch::empty({static_cast<int64_t>(mine.size())}, torch::kLong);
  if (!mine.empty()) std::memcpy(in.data_ptr<int64_t>(), mine.data(), mine.size() * 8);
  auto all = torch::empty({total}, torch::kLong);
  comm.AllGatherV(in, all, counts)->Wait();
  std::vector<std::array<int64_t, 4>> e(total / 4);
  std::memcpy(e.data(), all.data_ptr<int64_t>(), total * sizeof(int64_t));
  std::sort(e.begin(), e.end());
  std::vector<uint32_t> crc(tensor_bytes.size(), 0);
  std::vector<int64_t> done(tensor_bytes.size(), 0);
  for (const auto& [id, off, len, c] : e) {
    FT_CHECK(id >= 0 && id < static_cast<int64_t>(crc.size()), "crc entry of tensor {}", id);
    FT_CHECK(off == done[id], "tensor {}: crc run at byte {} but {} bytes are covered", id, off,
             done[id]);
    crc[id] = static_cast<uint32_t>(
        crc32_combine(crc[id], static_cast<uLong>(c), static_cast<z_off_t>(len)));
    done[id] += len;
  }
  for (size_t id = 0; id < crc.size(); ++id) {
    FT_CHECK(done[id] == tensor_bytes[id], "tensor {}: runs cover {} of {} bytes", id, done[id],
             tensor_bytes[id]);
  }
  return crc;
}

// zlib's crc32, by libdeflate (carry-less multiplication: ~3x zlib's table-driven crc32 here,
// which took a third of a cold checkpoint read).
uint32_t Crc32(const void* p, int64_t bytes) {
  return libdeflate_crc32(0, p, static_cast<size_t>(bytes));
}

// An empty float tensor shaped like `like` whose element `first_elem` of the full tensor (the
// slice's first element) has the same address modulo a page as its offset in the file (datasets
// start on a page): then DirectWriter writes from it without a staging copy.
at::Tensor PageAlignedLike(const at::Tensor& like, int64_t first_elem) {
  constexpr int64_t kPage = DirectWriter::kAlign;
  const int64_t bytes = like.numel() * static_cast<int64_t>(sizeof(float));
  auto raw = torch::empty({bytes + kPage}, torch::kUInt8);
  const auto addr = reinterpret_cast<uintptr_t>(raw.data_ptr());
  const int64_t shift =
      ((first_elem * 4 - static_cast<int64_t>(addr % kPage)) % kPage + kPage) % kPage;
  return raw.narrow(0, shift, bytes).view(torch::kFloat).view(like.sizes());
}

at::Generator CpuGenerator() { return at::detail::getDefaultCPUGenerator(); }

void FsyncPath(const std::string& path, bool dir) {
  const int fd = open(path.c_str(), dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) FT_THROW(IoError, "cannot open {} to fsync it: {}", path, std::strerror(errno));
  const int rc = fsync(fd);
  const int err = errno;
  close(fd);
  if (rc != 0) FT_THROW(IoError, "fsync of {} failed: {}", path, std::strerror(err));
}

std::vector<std::pair<int64_t, std::string>> CompleteFiles(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  if (!files::IsDirectory(dir)) return out;
  std::vector<std::string> names;
  try {
    names = files::ListDir(dir);
  } catch (const IoError&) {
    return out;  // unreadable: no checkpoints
  }
  for (const auto& name : names) {
    const std::string path = files::Join(dir, name);
    if (!files::IsFile(path)) continue;
    const int64_t s = StepOfFile(name);
    if (s >= 0) out.emplace_back(s, path);
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

}  // namespace

// ---- plan: what this rank writes and reads ----------------------------------------------------

struct CheckpointManager::Plan {
  struct Tensor {
    std::string name;
    std::vector<int64_t> full_shape;
    int64_t numel = 0;          // of the full tensor
    int view = -1;              // index into views; -1: this rank holds none of it
    bool owner = false;         // this rank writes (and verifies) its slice
    std::vector<Block> blocks;  // the slice as rectangles of the full tensor, C order
    std::vector<Run> runs;      // the slice as contiguous runs of the full tensor
    int64_t count = 0;          // elements of the slice
    // Every rank's slice is one contiguous range of the file (or empty): transferred by
    // independent MPI-IO, which needs no coordination; otherwise (columns of a tensor sharded
    // over tp along dim 1) by a collective transfer.
    bool contiguous = true;
  };
  std::vector<parallel::DataParallel::ShardView> views;
  std::vector<Tensor> tensors;  // dp.params() order: the same on every rank
  int64_t total_bytes = 0;      // all tensors of the file
};

struct CheckpointManager::WriteJob {
  TrainState state;
  std::string path, tmp;
  std::vector<std::array<at::Tensor, 3>> data;  // per plan tensor, when this rank owns a slice
  at::Tensor rng;                               // this rank's CPU generator state (uint8)
  SaveStats stats;
};

CheckpointManager::CheckpointManager(const Config& cfg, parallel::ProcessGrid& grid,
                                     parallel::DataParallel& dp,
                                     const models::LlamaConfig& model_cfg, std::string dir)
    : cfg_(cfg), grid_(grid), dp_(dp), model_cfg_(model_cfg), dir_(std::move(dir)) {
  comm_ = grid_.world().Split(0, grid_.world().rank(), "checkpoint");
  comm_->set_timeout(cfg_.parallel.timeout_s);
  {
    H5Lock lock;
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // errors come back as exceptions, not stderr
  }
  plan_ = std::make_unique<Plan>();
  plan_->views = dp_.ShardViews();
  const auto layout = TensorParallelLayout(model_cfg_, grid_.tp(), grid_.tp_rank());
  std::vector<int> view_of(dp_.params().size(), -1);
  for (size_t v = 0; v < plan_->views.size(); ++v) {
    FT_CHECK(view_of[plan_->views[v].param] == -1, "parameter {} has two shard views",
             dp_.params()[plan_->views[v].param].name);
    view_of[plan_->views[v].param] = static_cast<int>(v);
  }
  for (size_t p = 0; p < dp_.params().size(); ++p) {
    Plan::Tensor t;
    t.name = dp_.params()[p].name;
    auto it = layout.find(t.name);
    if (it == layout.end()) {
      FT_THROW(InternalError, "parameter {} is not in the tensor-parallel layout", t.name);
    }
    const ShardInfo& info = it->second;
    t.full_shape = info.full_shape;
    t.numel = 1;
    for (int64_t d : t.full_shape) t.numel *= d;
    const std::vector<int64_t> local = info.local_shape();
    FT_CHECK(local == dp_.ShapeOf(static_cast<int>(p)), "parameter {}: local shape {} but the "
             "layout says {}", t.name, fmt::join(dp_.ShapeOf(static_cast<int>(p)), "x"),
             fmt::join(local, "x"));
    t.view = view_of[p];
    t.owner = t.view >= 0 && (dp_.zero() > 0 || grid_.dp_rank() == 0) &&
              (info.sharded() || grid_.tp_rank() == 0);
    if (t.view >= 0) {
      const auto& v = plan_->views[t.view];
      std::vector<hsize_t> prefix;
      Decompose(local, 0, v.param_offset, v.param_offset + v.master.numel(), prefix, t.blocks);
      if (info.sharded()) {
        for (auto& b : t.blocks) b.start[info.dim] += info.offset;
      }
      t.runs = RunsOf(t.blocks, t.full_shape);
      t.count = v.master.numel();
      FT_CHECK(v.master.is_contiguous() && v.exp_avg.is_contiguous() &&
                   v.exp_avg_sq.is_contiguous(), "shard views of {} are not contiguous", t.name);
    }
    plan_->total_bytes += 3 * t.numel * static_cast<int64_t>(sizeof(float));
    plan_->tensors.push_back(std::move(t));
  }
  auto scattered = torch::zeros({static_cast<int64_t>(plan_->tensors.size())}, torch::kInt);
  for (size_t i = 0; i < plan_->tensors.size(); ++i) {
    scattered[i] = plan_->tensors[i].runs.size() > 1 ? 1 : 0;
  }
  comm_->AllReduce(scattered, parallel::ReduceOp::kMax)->Wait();
  for (size_t i = 0; i < plan_->tensors.size(); ++i) {
    plan_->tensors[i].contiguous = scattered[i].item<int>() == 0;
  }
}

CheckpointManager::~CheckpointManager() {
  if (thread_.joinable() && std::uncaught_exceptions() > 0) {
    // Unwinding (e.g. a collective timed out because a rank died): an async write may be stuck
    // in MPI-IO, which has no timeout. Wait a bounded time, then abandon it so that main can
    // report the error and abort the job.
    const auto deadline = Clock::now() + std::chrono::duration<double>(cfg_.parallel.timeout_s);
    while (!job_done_.load() && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!job_done_.load()) {
      LogError("an async checkpoint save is still running after parallel.timeout_s = {} s; "
               "abandoning it (its temporary file stays incomplete and is never used)",
               cfg_.parallel.timeout_s);
      thread_.detach();
      pending_.release();  // the detached thread still uses it
      if (pruner_.joinable()) pruner_.join();  // local deletions only: never blocks for long
      return;
    }
  }
  try {
    Wait();
  } catch (const std::exception& e) {
    LogError("the last checkpoint save failed: {}", e.what());
  }
}

void CheckpointManager::Wait() {
  if (thread_.joinable()) thread_.join();
  if (pruner_.joinable()) pruner_.join();
  if (pending_) {
    if (!async_error_) saves_.push_back(pending_->stats);
    pending_.reset();
  }
  if (async_error_) {
    auto e = async_error_;
    async_error_ = nullptr;
    std::rethrow_exception(e);
  }
}

void CheckpointManager::Save(const TrainState& state) {
  const auto t0 = Clock::now();
  Wait();
  auto job = std::make_unique<WriteJob>();
  // Attributes are collective metadata: every rank writes rank 0's values.
  auto s = torch::tensor({state.step, state.total_steps, state.tokens_seen, state.skipped_steps,
                          int64_t{0}, state.loader.epoch, state.loader.cursor, state.loader.seed},
                         torch::kLong);
  std::memcpy(s.data_ptr<int64_t>() + 4, &state.lr, sizeof(double));
  comm_->Broadcast(s, 0)->Wait();
  const int64_t* v = s.data_ptr<int64_t>();
  job->state.step = v[0], job->state.total_steps = v[1], job->state.tokens_seen = v[2];
  job->state.skipped_steps = v[3];
  std::memcpy(&job->state.lr, v + 4, sizeof(double));
  job->state.loader = {v[5], v[6], v[7]};
  job->path = files::Join(dir_, CheckpointFileName(job->state.step));
  job->tmp = job->path + ".tmp";
  const bool async = cfg_.checkpoint.async;
  job->data.resize(plan_->tensors.size());
  if (async) async_copy_.resize(plan_->tensors.size());
  for (size_t i = 0; i < plan_->tensors.size(); ++i) {
    const auto& t = plan_->tensors[i];
    if (!t.owner) continue;
    const auto& w = plan_->views[t.view];
    const std::array<at::Tensor, 3> live{w.master, w.exp_avg, w.exp_avg_sq};
    if (!async) {
      job->data[i] = live;
      continue;
    }
    // Async: a copy, so training can go on updating the live tensors. The previous save is
    // done (Wait above), so its copy is reused: no fresh pages to fault in at every save.
    for (int k = 0; k < 3; ++k) {
      auto& c = async_copy_[i][k];
      if (!c.defined()) c = PageAlignedLike(live[k], t.runs.empty() ? 0 : t.runs[0].full_offset);
      c.copy_(live[k]);
    }
    job->data[i] = async_copy_[i];
  }
  {
    auto gen = CpuGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    job->rng = gen.get_state().contiguous();
  }
  job->stats.step = job->state.step;
  job->stats.async = async;
  if (async) {
    pending_ = std::move(job);
    pending_->stats.blocking_s = Since(t0);
    job_done_ = false;
    thread_ = std::thread([this]() {
      try {
        RunJob(*pending_);
      } catch (...) {
        async_error_ = std::current_exception();
      }
      job_done_ = true;
    });
  } else {
    RunJob(*job);
    job->stats.blocking_s = Since(t0);
    saves_.push_back(job->stats);
  }
}

void CheckpointManager::RunJob(WriteJob& job) {
  const auto t0 = Clock::now();
  auto& comm = *comm_;
  const bool root = comm.rank() == 0;
  const std::string& tmp = job.tmp;
  try {
    Phase(comm, "preparing " + dir_, [&]() {
      if (!root) return;
      try {
        files::CreateDirectories(dir_);
      } catch (const IoError& e) {
        FT_THROW(IoError, "cannot create the checkpoint directory {}: {}", dir_,
                 files::Exists(dir_) ? "a file of that name is in the way" : e.what());
      }
      files::RemoveQuietly(tmp);  // left over from a crashed save of the same step
    });

    // Checksums first (from memory), so they are written as the datasets' attributes.
    const auto t_crc = Clock::now();
    std::vector<int64_t> entries, bytes;
    for (size_t i = 0; i < plan_->tensors.size(); ++i) {
      const auto& t = plan_->tensors[i];
      for (int k = 0; k < 3; ++k) {
        const int64_t id = static_cast<int64_t>(3 * i + k);
        bytes.push_back(t.numel * 4);
        if (!t.owner) continue;
        const float* base = job.data[i][k].data_ptr<float>();
        for (const auto& r : t.runs) {
          entries.insert(entries.end(), {id, r.full_offset * 4, r.count * 4,
                                         static_cast<int64_t>(Crc32(base + r.local_offset,
                                                                    r.count * 4))});
        }
      }
    }
    // And of /state/rng: one row per rank (the last id).
    const int64_t rng_id = static_cast<int64_t>(bytes.size()), rng_bytes = job.rng.numel();
    bytes.push_back(rng_bytes * comm.size());
    entries.insert(entries.end(), {rng_id, rng_bytes * comm.rank(), rng_bytes,
                                   static_cast<int64_t>(Crc32(job.rng.data_ptr(), rng_bytes))});
    const std::vector<uint32_t> crc = CombineCrcs(comm, entries, bytes);
    job.stats.crc_s = Since(t_crc);

    H5Id file;
    Phase(comm, "creating " + tmp, [&]() {
      H5Lock lock;
      H5Id fapl(parallel::MakeMpioFileAccess(comm), H5Pclose);
      // Large datasets start on a page: their slices' O_DIRECT writes then need no unaligned
      // head, and no page is shared with HDF5's metadata.
      H5_CHECK(H5Pset_alignment(fapl.get(), 64 * 1024, DirectWriter::kAlign), tmp);
      file = H5Id(H5_CHECK(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                           "creating checkpoint " + tmp),
                  H5Fclose);
    });
    H5Id lcpl, dcpl, dxpl;
    {
      H5Lock lock;
      lcpl = H5Id(H5_CHECK(H5Pcreate(H5P_LINK_CREATE), tmp), H5Pclose);
      H5_CHECK(H5Pset_create_intermediate_group(lcpl.get(), 1), tmp);
      dcpl = H5Id(H5_CHECK(H5Pcreate(H5P_DATASET_CREATE), tmp), H5Pclose);
      H5_CHECK(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), tmp);
      H5_CHECK(H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY), tmp);
      dxpl = H5Id(parallel::MakeCollectiveTransfer(), H5Pclose);
    }
    // Every dataset is created (collective metadata) and written (an independent transfer of
    // this rank's contiguous range, else a collective one) without a status all-reduce per
    // dataset: a failing rank keeps making the same collective calls, and all agree once.
    const auto t_data = Clock::now();
    // checkpoint.direct_io: the contiguous slices' bytes go straight into the file at their
    // datasets' offsets (contiguous layout, allocated at creation, never filled by HDF5) once
    // HDF5 has closed it; see runtime/direct_write.h for why.
    const bool direct = cfg_.checkpoint.direct_io;
    struct Extent {
      int64_t offset;
      const float* src;
      int64_t bytes;
    };
    std::vector<Extent> raw;
    Deferred writes;
    for (size_t i = 0; i < plan_->tensors.size(); ++i) {
      const auto& t = plan_->tensors[i];
      for (int k = 0; k < 3; ++k) {
        const std::string name = DatasetName(t.name, k);
        const std::string ctx = fmt::format("{} {}", tmp, name);
        writes.Run([&]() {
          H5Lock lock;
          std::vector<hsize_t> dims(t.full_shape.begin(), t.full_shape.end());
          H5Id fspace(H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(),
                                                nullptr), ctx),
                      H5Sclose);
          H5Id ds(H5_CHECK(H5Dcreate2(file.get(), name.c_str(), H5T_IEEE_F32LE, fspace.get(),
                                      lcpl.get(), dcpl.get(), H5P_DEFAULT), ctx),
                  H5Dclose);
          const uint32_t c = crc[3 * i + k];
          WriteAttr(ds.get(), "crc32", H5T_NATIVE_UINT32, H5T_STD_U32LE, &c, ctx);
          if (t.contiguous) {
            if (t.owner && t.count > 0) {
              const float* src = job.data[i][k].data_ptr<float>();
              const haddr_t at = direct ? H5Dget_offset(ds.get()) : HADDR_UNDEF;
              if (at != HADDR_UNDEF) {  // written after the close, around MPI-IO
                raw.push_back({static_cast<int64_t>(at) + t.runs[0].full_offset * 4, src,
                               t.count * 4});
              } else {
                WriteSliceOf(ds.get(), fspace.get(), t.blocks, t.count, src, H5P_DEFAULT, ctx);
              }
            }
          } else {
            WriteSliceOf(ds.get(), fspace.get(), t.blocks, t.count,
                         t.owner ? job.data[i][k].data_ptr<float>() : nullptr, dxpl.get(), ctx);
          }
          H5_CHECK(ds.Close(), ctx);
        });
      }
    }
    writes.Agree(comm, "writing " + tmp);
    job.stats.data_s = Since(t_data);

    Phase(comm, "writing " + tmp + " /state", [&]() {
      H5Lock lock;
      const std::string ctx = tmp + " /state";
      H5Id g(H5_CHECK(H5Gcreate2(file.get(), "/state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                      ctx),
             H5Gclose);
      const auto& s = job.state;
      WriteAttrString(g.get(), "magic", kCheckpointMagic, ctx);
      WriteAttrInt(g.get(), "format_version", kCheckpointFormatVersion, ctx);
      WriteAttrInt(g.get(), "step", s.step, ctx);
      WriteAttrInt(g.get(), "total_steps", s.total_steps, ctx);
      WriteAttrInt(g.get(), "tokens_seen", s.tokens_seen, ctx);
      WriteAttrInt(g.get(), "skipped_steps", s.skipped_steps, ctx);
      WriteAttrDouble(g.get(), "lr", s.lr, ctx);
      WriteAttrInt(g.get(), "loader_epoch", s.loader.epoch, ctx);
      WriteAttrInt(g.get(), "loader_cursor", s.loader.cursor, ctx);
      WriteAttrInt(g.get(), "loader_seed", s.loader.seed, ctx);
      WriteAttrInt(g.get(), "dp", grid_.dp(), ctx);
      WriteAttrInt(g.get(), "tp", grid_.tp(), ctx);
      WriteAttrInt(g.get(), "zero", dp_.zero(), ctx);
      WriteAttrInt(g.get(), "world_size", comm.size(), ctx);
      WriteAttrInt(g.get(), "seed", cfg_.run.seed, ctx);
      WriteAttrString(g.get(), "dtype", cfg_.model.dtype, ctx);
      WriteAttrString(g.get(), "config_yaml", ConfigToYaml(cfg_), ctx);
      WriteAttrString(g.get(), "model_config", model_cfg_.ToJson().dump(2), ctx);
      std::string tok_dir;
      try {
        tok_dir = files::Absolute(TokenizerDir(cfg_));
      } catch (const ConfigError&) {
      }
      WriteAttrString(g.get(), "tokenizer_dir", tok_dir, ctx);
      WriteAttrString(g.get(), "checksum", kChecksumScheme, ctx);
      WriteAttrString(g.get(), "created_by", "ftune train", ctx);
      // Per-rank RNG states, one row each.
      hsize_t dims[2] = {static_cast<hsize_t>(comm.size()),
                         static_cast<hsize_t>(job.rng.numel())};
      H5Id fspace(H5_CHECK(H5Screate_simple(2, dims, nullptr), ctx), H5Sclose);
      H5Id ds(H5_CHECK(H5Dcreate2(g.get(), "rng", H5T_STD_U8LE, fspace.get(), H5P_DEFAULT,
                                  dcpl.get(), H5P_DEFAULT), ctx),
              H5Dclose);
      hsize_t start[2] = {static_cast<hsize_t>(comm.rank()), 0}, count[2] = {1, dims[1]};
      H5_CHECK(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr),
               ctx);
      H5Id mspace(H5_CHECK(H5Screate_simple(2, count, nullptr), ctx), H5Sclose);
      H5_CHECK(H5Dwrite(ds.get(), H5T_NATIVE_UINT8, mspace.get(), fspace.get(), dxpl.get(),
                        job.rng.data_ptr()),
               ctx);
      const uint32_t rng_crc = crc[rng_id];
      WriteAttr(ds.get(), "crc32", H5T_NATIVE_UINT32, H5T_STD_U32LE, &rng_crc, ctx);
      // Last: the checksum of everything above (read back, as a loader will read it).
      const uint32_t state_crc = StateDigest(g.get(), ctx);
      WriteAttr(g.get(), "state_crc32", H5T_NATIVE_UINT32, H5T_STD_U32LE, &state_crc, ctx);
    });
    const auto t_close = Clock::now();
    Phase(comm, "closing " + tmp, [&]() {
      H5Lock lock;
      lcpl.Close();
      dcpl.Close();
      dxpl.Close();
      H5_CHECK(file.Close(), "closing (flushing) checkpoint " + tmp);
    });
    job.stats.close_s = Since(t_close);
    if (direct) {
      const auto t_raw = Clock::now();
      Phase(comm, "writing the tensor data of " + tmp, [&]() {
        if (raw.empty()) return;
        DirectWriter w(tmp, true);
        for (const auto& e : raw) w.Write(e.offset, e.src, e.bytes);
        w.Sync();
        job.stats.direct_bytes = w.direct_bytes();
        job.stats.buffered_bytes = w.buffered_bytes();
      });
      job.stats.raw_s = Since(t_raw);
    }
    const auto t_publish = Clock::now();
    Phase(comm, "publishing " + job.path, [&]() {
      if (!root) return;
      const auto t_fsync = Clock::now();
      FsyncPath(tmp, false);
      job.stats.fsync_s = Since(t_fsync);
      files::Rename(tmp, job.path);
      FsyncPath(dir_, true);
      const std::string latest = files::Join(dir_, "latest");
      {
        std::ofstream out(latest + ".tmp", std::ios::trunc);
        out << files::BaseName(job.path) << "\n";
        out.flush();
        if (!out) FT_THROW(IoError, "cannot write {}.tmp", latest);
      }
      FsyncPath(latest + ".tmp", false);
      files::Rename(latest + ".tmp", latest);
      FsyncPath(dir_, true);
      try {
        job.stats.file_bytes = files::FileSize(job.path);
      } catch (const IoError&) {
        job.stats.file_bytes = -1;  // only reported
      }
      // Only now, with a newer complete checkpoint in place: drop the oldest beyond `keep`, on a
      // thread (freeing a large file's blocks takes a while; Wait() joins it).
      const auto complete = CompleteFiles(dir_);
      std::vector<std::string> old;
      for (size_t i = static_cast<size_t>(cfg_.checkpoint.keep); i < complete.size(); ++i) {
        if (complete[i].second != job.path) old.push_back(complete[i].second);
      }
      if (pruner_.joinable()) pruner_.join();
      if (!old.empty()) {
        pruner_ = std::thread([old]() {
          for (const auto& f : old) {
            try {
              files::Remove(f);
            } catch (const IoError& e) {
              LogWarn("could not delete old checkpoint {}: {}", f, e.what());
            }
          }
        });
      }
    });
    job.stats.publish_s = Since(t_publish);
  } catch (const Error& e) {
    if (root) files::RemoveQuietly(tmp);
    FT_THROW(IoError, "checkpoint of step {} could not be saved to {} (earlier checkpoints in {} "
             "are intact): {}", job.state.step, job.path, dir_, e.what());
  }
  job.stats.write_s = Since(t0);
  if (root) {
    const double gb = job.stats.file_bytes / 1e9;
    LogInfo("checkpoint step {}: {} ({:.1f} MB) written in {:.3f} s ({:.2f} GB/s){}",
            job.state.step, job.path, gb * 1e3, job.stats.write_s, gb / job.stats.write_s,
            job.stats.async ? fmt::format(", training held {:.3f} s (async)", job.stats.blocking_s)
                            : "");
  }
}

namespace {

// Opens checkpoint `path` read-only over MPI-IO (collective over `comm`; call inside a Phase,
// holding H5Lock) and reads its /state into `meta`. A missing file is CorruptCheckpointError.
H5Id OpenForCollectiveRead(parallel::Communicator& comm, const std::string& path,
                           CheckpointMeta& meta) {
  if (!files::IsFile(path)) {
    FT_THROW(CorruptCheckpointError, "checkpoint {} does not exist", path);
  }
  H5Id fapl(parallel::MakeMpioFileAccess(comm), H5Pclose);
  H5Id file(H5_CHECK_AS(CorruptCheckpointError, H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()),
                        "opening checkpoint " + path),
            H5Fclose);
  meta = ReadMetaFrom(file.get(), path);
  return file;
}

}  // namespace

CheckpointMeta CheckpointManager::Load(const std::string& path) {
  Wait();
  auto& comm = *comm_;
  LoadStats stats;
  const auto t_read = Clock::now();
  CheckpointMeta meta;
  H5Id file, dxpl;
  Phase(comm, "opening " + path, [&]() {
    H5Lock lock;
    file = OpenForCollectiveRead(comm, path, meta);
    dxpl = H5Id(parallel::MakeCollectiveTransfer(), H5Pclose);
  });
  // One agreement for all datasets (see RunJob); each rank reads the elements of its views, by
  // an independent transfer where every rank's range is contiguous.
  std::vector<int64_t> entries, bytes;
  std::vector<uint32_t> stored(3 * plan_->tensors.size(), 0);
  Deferred reads;
  for (size_t i = 0; i < plan_->tensors.size(); ++i) {
    const auto& t = plan_->tensors[i];
    for (int k = 0; k < 3; ++k) {
      const std::string name = DatasetName(t.name, k);
      const std::string ctx = fmt::format("checkpoint {} dataset {}", path, name);
      const int64_t id = static_cast<int64_t>(3 * i + k);
      bytes.push_back(t.numel * 4);
      float* buf = nullptr;
      if (t.view >= 0) {
        const auto& v = plan_->views[t.view];
        buf = (k == 0 ? v.master : k == 1 ? v.exp_avg : v.exp_avg_sq).data_ptr<float>();
      }
      reads.Run([&]() {
        H5Lock lock;
        if (H5Lexists(file.get(), name.c_str(), H5P_DEFAULT) <= 0) {
          H5Eclear2(H5E_DEFAULT);
          FT_THROW(CorruptCheckpointError, "{} is missing (a truncated or damaged file?)", ctx);
        }
        H5Id ds(H5_CHECK_AS(CorruptCheckpointError, H5Dopen2(file.get(), name.c_str(),
                                                             H5P_DEFAULT), ctx),
                H5Dclose);
        H5Id fspace(H5_CHECK_AS(CorruptCheckpointError, H5Dget_space(ds.get()), ctx), H5Sclose);
        const int nd = H5Sget_simple_extent_ndims(fspace.get());
        std::vector<hsize_t> dims(std::max(nd, 0));
        if (nd > 0) H5Sget_simple_extent_dims(fspace.get(), dims.data(), nullptr);
        if (std::vector<int64_t>(dims.begin(), dims.end()) != t.full_shape) {
          FT_THROW(ModelError, "{} has shape [{}] but the model's {} is [{}]: the checkpoint was "
                   "written for another architecture (model.arch / model.path)", ctx,
                   fmt::join(dims, ", "), t.name, fmt::join(t.full_shape, ", "));
        }
        stored[id] = ReadAttrU32(ds.get(), "crc32", ctx);
        if (t.contiguous) {
          if (buf) ReadSliceOf(ds.get(), fspace.get(), t.blocks, t.count, buf, H5P_DEFAULT, ctx);
        } else {
          ReadSliceOf(ds.get(), fspace.get(), t.blocks, t.count, buf, dxpl.get(), ctx);
        }
        if (!t.owner) return;
        const auto t_crc = Clock::now();
        for (const auto& r : t.runs) {
          entries.insert(entries.end(), {id, r.full_offset * 4, r.count * 4,
                                         static_cast<int64_t>(Crc32(buf + r.local_offset,
                                                                    r.count * 4))});
        }
        stats.crc_s += Since(t_crc);
      });
    }
  }
  reads.Agree(comm, "reading " + path);
  stats.read_s = Since(t_read);
  const auto t_verify = Clock::now();
  const std::vector<uint32_t> crc = CombineCrcs(comm, entries, bytes);
  Phase(comm, "verifying " + path, [&]() {
    for (size_t id = 0; id < crc.size(); ++id) {
      if (crc[id] != stored[id]) {
        FT_THROW(CorruptCheckpointError, "checkpoint {}: checksum mismatch in {} (crc32 {:08x}, "
                 "stored {:08x}): the file is damaged", path,
                 DatasetName(plan_->tensors[id / 3].name, static_cast<int>(id % 3)), crc[id],
                 stored[id]);
      }
    }
  });
  stats.verify_s = Since(t_verify);
  const auto t_params = Clock::now();
  at::Tensor rng;
  Phase(comm, "reading " + path + " /state/rng", [&]() {
    H5Lock lock;
    const std::string ctx = path + " /state/rng";
    H5Id ds(H5_CHECK_AS(CorruptCheckpointError, H5Dopen2(file.get(), "/state/rng", H5P_DEFAULT),
                        ctx),
            H5Dclose);
    H5Id fspace(H5_CHECK_AS(CorruptCheckpointError, H5Dget_space(ds.get()), ctx), H5Sclose);
    hsize_t dims[2] = {0, 0};
    if (H5Sget_simple_extent_ndims(fspace.get()) != 2) {
      FT_THROW(CorruptCheckpointError, "{} is not 2-D", ctx);
    }
    H5Sget_simple_extent_dims(fspace.get(), dims, nullptr);
    // Every rank reads all rows (a few KB each) to verify them against their crc32 (format 2).
    auto all =
        torch::empty({static_cast<int64_t>(dims[0]), static_cast<int64_t>(dims[1])}, torch::kUInt8);
    H5_CHECK_AS(CorruptCheckpointError,
                H5Dread(ds.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, dxpl.get(), all.data_ptr()),
                ctx);
    if (meta.format_version >= 2) {
      const uint32_t stored = ReadAttrU32(ds.get(), "crc32", ctx);
      const uint32_t got = Crc32(all.data_ptr(), all.numel());
      if (got != stored) {
        FT_THROW(CorruptCheckpointError,
                 "{}: checksum mismatch in the RNG states (crc32 {:08x}, "
                 "stored {:08x}): the file is damaged",
                 ctx, got, stored);
      }
    }
    // Same world size: each rank its own state; else everyone takes rank 0's.
    const int64_t row = dims[0] == static_cast<hsize_t>(comm.size()) ? comm.rank() : 0;
    rng = all[row].clone();
  });
  Phase(comm, "closing " + path, [&]() {
    H5Lock lock;
    dxpl.Close();
    H5_CHECK(file.Close(), "closing " + path);
  });
  dp_.LoadMasterIntoParams();
  try {
    auto gen = CpuGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(rng);
  } catch (const std::exception& e) {
    LogWarn("checkpoint {}: the saved RNG state does not fit this torch ({}); keeping the current "
            "one", path, e.what());
  }
  stats.params_s = Since(t_params);
  last_load_ = stats;
  return meta;
}

std::optional<CheckpointMeta> CheckpointManager::LoadLatest() {
  Wait();
  // Rank 0 lists the directory; everyone tries the same files in the same order.
  std::vector<int64_t> steps;
  if (comm_->rank() == 0) {
    for (const auto& p : CheckpointCandidates(dir_)) {
      steps.push_back(StepOfFile(files::BaseName(p)));
    }
  }
  auto n = torch::tensor({static_cast<int64_t>(steps.size())}, torch::kLong);
  comm_->Broadcast(n, 0)->Wait();
  auto st = torch::zeros({n.item<int64_t>()}, torch::kLong);
  if (comm_->rank() == 0) {
    for (size_t i = 0; i < steps.size(); ++i) st[i] = steps[i];
  }
  if (st.numel() > 0) comm_->Broadcast(st, 0)->Wait();
  if (st.numel() == 0) return std::nullopt;
  std::vector<std::string> bad;
  for (int64_t i = 0; i < st.numel(); ++i) {
    const std::string path = files::Join(dir_, CheckpointFileName(st[i].item<int64_t>()));
    try {
      return Load(path);
    } catch (const CorruptCheckpointError& e) {
      LogWarn("checkpoint {} is unusable, falling back to the previous one: {}", path, e.what());
      bad.push_back(path);
    }
  }
  FT_THROW(IoError, "none of the {} checkpoint(s) in {} is usable ({}): refusing to start from "
           "scratch. Move them away, or start over with --no-resume (checkpoint.resume: false)",
           bad.size(), dir_, fmt::join(bad, ", "));
}

void CheckpointManager::MoveAside() {
  Wait();
  Phase(*comm_, "moving old checkpoints aside in " + dir_, [&]() {
    if (comm_->rank() != 0) return;
    const auto complete = CompleteFiles(dir_);
    if (complete.empty()) return;
    const std::string dest = files::Join(dir_, fmt::format("previous_{}", std::time(nullptr)));
    files::CreateDirectories(dest);
    for (const auto& f : complete) {
      files::Rename(f.second, files::Join(dest, files::BaseName(f.second)));
    }
    try {
      files::Rename(files::Join(dir_, "latest"), files::Join(dest, "latest"));
    } catch (const IoError&) {  // none, or stale: the checkpoints moved are what matters
    }
    LogWarn("starting over (checkpoint.resume is false): moved {} earlier checkpoint(s) to {}",
            complete.size(), dest);
  });
}

std::string CheckpointFileName(int64_t step) { return fmt::format("step_{:08d}.h5", step); }

std::vector<std::string> CheckpointCandidates(const std::string& dir) {
  std::vector<std::string> out;
  const auto complete = CompleteFiles(dir);
  const std::string latest_path = files::Join(dir, "latest");
  if (files::Exists(latest_path)) {
    // A `latest` that names no usable file is passed over, and said so: the newest complete
    // step_*.h5 is tried first instead.
    std::ifstream in(latest_path);
    std::string latest, reason;
    if (!in || !std::getline(in, latest) || latest.empty()) {
      reason = "is empty or unreadable";
    } else if (StepOfFile(latest) < 0) {
      std::string shown;  // printable, and short: the file may be binary garbage
      for (char c : latest.substr(0, 64)) {
        shown += std::isprint(static_cast<unsigned char>(c)) ? c : '?';
      }
      reason = fmt::format("names '{}'{}, which is not a checkpoint file name (step_N.h5)", shown,
                           latest.size() > 64 ? "..." : "");
    } else {
      for (const auto& f : complete) {
        if (files::BaseName(f.second) == latest) out.push_back(f.second);
      }
      if (out.empty()) reason = fmt::format("names {}, which does not exist", latest);
    }
    if (!reason.empty()) {
      LogWarn("checkpoint pointer {} {}: {}", latest_path, reason,
              complete.empty() ? std::string("and no checkpoint file (step_*.h5) is left there")
                               : "falling back to the newest checkpoint file, " +
                                     files::BaseName(complete.front().second));
    }
  }
  for (const auto& f : complete) {
    if (out.empty() || f.second != out.front()) out.push_back(f.second);
  }
  return out;
}

std::vector<std::string> ResolveCheckpointArg(const std::string& arg, const std::string& option) {
  if (files::IsFile(arg)) {
    H5Lock lock;
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    if (H5Fis_hdf5(arg.c_str()) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      FT_THROW(IoError, "{} {}: not an HDF5 file, so not an ftune checkpoint (step_N.h5); pass a "
               "checkpoint, a checkpoint or run directory, or an HF model directory", option, arg);
    }
    return {arg};
  }
  if (!files::IsDirectory(arg)) {
    FT_THROW(IoError, "{} {}: no such file or directory", option, arg);
  }
  auto c = CheckpointCandidates(arg);
  if (c.empty()) c = CheckpointCandidates(files::Join(arg, "checkpoints"));
  if (c.empty()) {
    FT_THROW(IoError, "{} {}: no checkpoint (step_*.h5) in it or in {}/checkpoints", option, arg,
             arg);
  }
  return c;
}

CheckpointModel ReadNewestCheckpointModel(const std::string& arg, const std::string& option) {
  const auto candidates = ResolveCheckpointArg(arg, option);
  for (const auto& path : candidates) {
    try {
      CheckpointModel out;
      out.meta = ReadCheckpointMeta(path);
      out.tensors = ReadCheckpointModel(path, out.meta);
      return out;
    } catch (const CorruptCheckpointError& e) {
      LogWarn("checkpoint {} is unusable, trying the previous one: {}", path, e.what());
    }
  }
  FT_THROW(IoError, "{} {}: none of its {} checkpoint(s) is usable (see the warnings above)",
           option, arg, candidates.size());
}

namespace {

// Rank 0's `s` on every rank.
std::string BroadcastString(parallel::Communicator& comm, const std::string& s) {
  auto n = torch::tensor({static_cast<int64_t>(s.size())}, torch::kLong);
  comm.Broadcast(n, 0)->Wait();
  auto b = torch::zeros({n.item<int64_t>()}, torch::kUInt8);
  if (comm.rank() == 0 && !s.empty()) std::memcpy(b.data_ptr(), s.data(), s.size());
  if (b.numel() > 0) comm.Broadcast(b, 0)->Wait();
  return std::string(static_cast<const char*>(b.data_ptr()), b.numel());
}

// The /model tensors of `path`, read collectively: rank r reads elements
// [numel * r / size, numel * (r + 1) / size) of every tensor (one contiguous range of the file,
// by an independent MPI-IO transfer), the crc32s of the slices are combined and checked against
// the stored ones on every rank, and the tensors are gathered on rank 0 (empty list elsewhere).
models::NamedTensors ReadModelCollective(parallel::Communicator& comm, const std::string& path,
                                         CheckpointMeta& meta) {
  H5Id file;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  Phase(comm, "opening " + path, [&]() {
    H5Lock lock;
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    file = OpenForCollectiveRead(comm, path, meta);
    shapes = models::HfTensorShapes(models::LlamaConfig::FromJson(
        nlohmann::json::parse(meta.model_config_json), path + " /state model_config"));
  });
  const int64_t rank = comm.rank(), size = comm.size();
  std::vector<at::Tensor> mine(shapes.size());
  std::vector<int64_t> entries, bytes, counts_of(shapes.size() * size);
  std::vector<uint32_t> stored(shapes.size(), 0);
  Deferred reads;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const auto& [name, shape] = shapes[i];
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    for (int64_t r = 0; r < size; ++r) {
      counts_of[i * size + r] = numel * (r + 1) / size - numel * r / size;
    }
    const int64_t a = numel * rank / size, b = numel * (rank + 1) / size;
    mine[i] = torch::empty({b - a}, torch::kFloat);
    bytes.push_back(numel * 4);
    const std::string ds_name = DatasetName(name, 0);
    const std::string ctx = fmt::format("checkpoint {} dataset {}", path, ds_name);
    reads.Run([&]() {
      H5Lock lock;
      if (H5Lexists(file.get(), ds_name.c_str(), H5P_DEFAULT) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        FT_THROW(CorruptCheckpointError, "{} is missing", ctx);
      }
      H5Id ds(H5_CHECK_AS(CorruptCheckpointError,
                          H5Dopen2(file.get(), ds_name.c_str(), H5P_DEFAULT), ctx),
              H5Dclose);
      H5Id fspace(H5_CHECK_AS(CorruptCheckpointError, H5Dget_space(ds.get()), ctx), H5Sclose);
      std::vector<hsize_t> dims(std::max(0, H5Sget_simple_extent_ndims(fspace.get())));
      if (!dims.empty()) H5Sget_simple_extent_dims(fspace.get(), dims.data(), nullptr);
      if (std::vector<int64_t>(dims.begin(), dims.end()) != shape) {
        FT_THROW(CorruptCheckpointError, "{} has shape [{}], its config.json says [{}]", ctx,
                 fmt::join(dims, ", "), fmt::join(shape, ", "));
      }
      stored[i] = ReadAttrU32(ds.get(), "crc32", ctx);
      if (b == a) return;
      std::vector<Block> blocks;
      std::vector<hsize_t> prefix;
      Decompose(shape, 0, a, b, prefix, blocks);
      SelectBlocks(fspace.get(), blocks, ctx);
      hsize_t n = static_cast<hsize_t>(b - a);
      H5Id mspace(H5_CHECK(H5Screate_simple(1, &n, nullptr), ctx), H5Sclose);
      H5_CHECK_AS(CorruptCheckpointError,
                  H5Dread(ds.get(), H5T_NATIVE_FLOAT, mspace.get(), fspace.get(), H5P_DEFAULT,
                          mine[i].data_ptr<float>()),
                  ctx);
      entries.insert(entries.end(), {static_cast<int64_t>(i), a * 4, (b - a) * 4,
                                     static_cast<int64_t>(Crc32(mine[i].data_ptr<float>(),
                                                                (b - a) * 4))});
    });
  }
  reads.Agree(comm, "reading " + path);
  const std::vector<uint32_t> crc = CombineCrcs(comm, entries, bytes);
  Phase(comm, "verifying " + path, [&]() {
    for (size_t i = 0; i < crc.size(); ++i) {
      if (crc[i] != stored[i]) {
        FT_THROW(CorruptCheckpointError, "checkpoint {} dataset {}: checksum mismatch (crc32 "
                 "{:08x}, stored {:08x}): the file is damaged", path,
                 DatasetName(shapes[i].first, 0), crc[i], stored[i]);
      }
    }
  });
  Phase(comm, "closing " + path, [&]() { H5_CHECK(file.Close(), "closing " + path); });
  models::NamedTensors out;
  for (size_t i = 0; i < shapes.size(); ++i) {
    auto full = torch::empty(shapes[i].second, torch::kFloat);
    auto flat = full.view({-1});
    comm.AllGatherV(mine[i], flat,
                    std::vector<int64_t>(counts_of.begin() + i * size,
                                         counts_of.begin() + (i + 1) * size))
        ->Wait();
    mine[i] = at::Tensor();
    if (rank == 0) out.emplace_back(shapes[i].first, std::move(full));
  }
  return out;
}

}  // namespace

CheckpointModel ReadNewestCheckpointModel(parallel::Communicator& comm, const std::string& arg,
                                          const std::string& option) {
  std::string joined;
  Phase(comm, "finding the checkpoints of " + arg, [&]() {
    if (comm.rank() != 0) return;
    for (const auto& p : ResolveCheckpointArg(arg, option)) joined += p + '\n';
  });
  joined = BroadcastString(comm, joined);
  std::vector<std::string> candidates;
  for (size_t a = 0, b; (b = joined.find('\n', a)) != std::string::npos; a = b + 1) {
    candidates.push_back(joined.substr(a, b - a));
  }
  for (const auto& path : candidates) {
    try {
      CheckpointModel out;
      out.tensors = ReadModelCollective(comm, path, out.meta);
      return out;
    } catch (const CorruptCheckpointError& e) {
      LogWarn("checkpoint {} is unusable, trying the previous one: {}", path, e.what());
    }
  }
  FT_THROW(IoError, "{} {}: none of its {} checkpoint(s) is usable (see the warnings above)",
           option, arg, candidates.size());
}

CheckpointMeta ReadCheckpointMeta(const std::string& path) {
  H5Lock lock;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  H5Id file(H5_CHECK_AS(CorruptCheckpointError, H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT),
                        "opening checkpoint " + path),
            H5Fclose);
  return ReadMetaFrom(file.get(), path);
}

models::NamedTensors ReadCheckpointModel(const std::string& path, const CheckpointMeta& meta) {
  const auto cfg = models::LlamaConfig::FromJson(nlohmann::json::parse(meta.model_config_json),
                                                 path + " /state model_config");
  H5Lock lock;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  H5Id file(H5_CHECK_AS(CorruptCheckpointError, H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT),
                        "opening checkpoint " + path),
            H5Fclose);
  models::NamedTensors out;
  for (const auto& [name, shape] : models::HfTensorShapes(cfg)) {
    const std::string ds_name = DatasetName(name, 0);
    const std::string ctx = fmt::format("checkpoint {} dataset {}", path, ds_name);
    if (H5Lexists(file.get(), ds_name.c_str(), H5P_DEFAULT) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      FT_THROW(CorruptCheckpointError, "{} is missing", ctx);
    }
    H5Id ds(H5_CHECK_AS(CorruptCheckpointError, H5Dopen2(file.get(), ds_name.c_str(), H5P_DEFAULT),
                        ctx),
            H5Dclose);
    H5Id space(H5_CHECK(H5Dget_space(ds.get()), ctx), H5Sclose);
    std::vector<hsize_t> dims(std::max(0, H5Sget_simple_extent_ndims(space.get())));
    if (!dims.empty()) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    if (std::vector<int64_t>(dims.begin(), dims.end()) != shape) {
      FT_THROW(CorruptCheckpointError, "{} has shape [{}], its config.json says [{}]", ctx,
               fmt::join(dims, ", "), fmt::join(shape, ", "));
    }
    auto t = torch::empty(shape, torch::kFloat);
    H5_CHECK_AS(CorruptCheckpointError, H5Dread(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL,
                                                H5P_DEFAULT, t.data_ptr<float>()),
                ctx);
    const uint32_t want = ReadAttrU32(ds.get(), "crc32", ctx);
    const uint32_t got = Crc32(t.data_ptr<float>(), t.numel() * 4);
    if (got != want) {
      FT_THROW(CorruptCheckpointError, "{}: checksum mismatch (crc32 {:08x}, stored {:08x}): the "
               "file is damaged", ctx, got, want);
    }
    out.emplace_back(name, t);
  }
  return out;
}

}  // namespace ftune::runtime
