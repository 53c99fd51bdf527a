// MPI backend of Communicator: non-blocking MPI collectives on CPU tensors.
#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)
#include <unistd.h>

#include <atomic>
#include <chrono>

#include "parallel/communicator.h"
#include "parallel/flight_recorder.h"
#include "parallel/mpi_check.h"
#include "parallel/trace_range.h"
#include "parallel/watchdog.h"

namespace ftune::parallel {

void ThrowMpiError(int code, const char* call, const char* file, int line) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, msg, &len);
  int rank = -1;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  throw CommError(fmt::format("{} failed at {}:{} on rank {} ({}): {}", call, file, line, rank,
                              host, std::string(msg, len)));
}

namespace {

MPI_Datatype ToMpi(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kInt: return MPI_INT32_T;
    case at::kLong: return MPI_INT64_T;
    case at::kByte: return MPI_UINT8_T;
    default: break;
  }
  FT_THROW(CommError, "dtype {} has no MPI type", c10::toString(t));
}

MPI_Op ToMpi(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  return MPI_SUM;
}

void CheckTensor(const at::Tensor& t, const char* what) {
  if (!t.defined()) FT_THROW(CommError, "{}: tensor is undefined", what);
  if (!t.is_contiguous()) {
    FT_THROW(CommError, "{}: tensor of shape {} is not contiguous; call .contiguous() first", what,
             fmt::join(t.sizes(), "x"));
  }
  if (!IsSupportedDtype(t.scalar_type())) {
    FT_THROW(CommError, "{}: unsupported dtype {}", what, c10::toString(t.scalar_type()));
  }
}

void CheckAvg(ReduceOp op, const at::Tensor& t, const char* what) {
  if (op == ReduceOp::kAvg && !at::isFloatingType(t.scalar_type())) {
    FT_THROW(CommError, "{}: kAvg needs a floating dtype, got {}", what,
             c10::toString(t.scalar_type()));
  }
}

int CountOf(int64_t n, const char* what) {
  if (n > std::numeric_limits<int>::max()) {
    FT_THROW(CommError, "{}: {} elements exceed MPI's int count; split the tensor", what, n);
  }
  return static_cast<int>(n);
}

std::atomic<int64_t> comm_wait_ns{0};  // CommWaitSeconds(), summed by WaitRequest

// Adds the lifetime of this object to comm_wait_ns.
class WaitTimer {
 public:
  WaitTimer() : t0_(std::chrono::steady_clock::now()) {}
  ~WaitTimer() {
    comm_wait_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  std::chrono::steady_clock::time_point t0_;
};

// Waits for `req`, the collective `t`. Bounded by the watchdog (parallel/watchdog.h): past
// `timeout_s` it reports which ranks did not arrive and aborts the job. Waiting itself is a plain
// MPI_Wait, so MPI progresses at full speed.
void WaitRequest(MPI_Request* req, const FlightRecorder::Ticket& t, double timeout_s) {
  WaitTimer timer;
  auto& recorder = FlightRecorder::Get();
  int done = 0;
  int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);  // most small collectives end here
  if (rc == MPI_SUCCESS && !done) {
    recorder.Block(t, timeout_s, /*watched=*/true);
    rc = MPI_Wait(req, MPI_STATUS_IGNORE);
  }
  recorder.Complete(t);
  MPI_CHECK(rc);
}

class MpiWork : public Work {
 public:
  MpiWork(FlightRecorder::Ticket ticket, double timeout_s)
      : ticket_(ticket), timeout_s_(timeout_s) {}
  ~MpiWork() override {
    if (!done_) {
      try {
        Wait();
      } catch (...) {
        // Destructors must not throw; the failure surfaces on the next collective.
      }
    }
  }
  void Wait() override {
    if (done_) return;
    done_ = true;
    TraceRange range("ftune::communication");
    WaitRequest(&req_, ticket_, timeout_s_);
    if (finish_) finish_();
  }
  MPI_Request req_ = MPI_REQUEST_NULL;
  std::function<void()> finish_;  // runs after completion (copy back, divide)
  std::vector<at::Tensor> keep_;  // buffers that must outlive the request
  std::vector<int> counts_, displs_;

 private:
  FlightRecorder::Ticket ticket_;
  double timeout_s_;
  bool done_ = false;
};

// Buffer an MPI reduction reads/writes: fp32 for 16-bit floats (exact reduction), in host
// memory. A CPU tensor of a wire dtype is its own buffer; a device tensor is staged (the copy to
// the host waits for the device work that produced it; Work::Wait copies results back), which
// lets ranks that share one GPU, or a build without NCCL, train on the device over MPI.
at::Tensor WireBuffer(const at::Tensor& t) {
  const auto wire = IsHalf(t.scalar_type()) ? at::kFloat : t.scalar_type();
  if (t.is_cpu() && t.scalar_type() == wire) return t;
  return t.to(t.options().device(at::kCPU).dtype(wire), /*non_blocking=*/false, /*copy=*/true);
}
// Host buffer of a collective that moves raw elements (no arithmetic): `t` itself on the CPU,
// else a host copy (`copy_in`: of its values; else uninitialised, for outputs).
at::Tensor HostBuffer(const at::Tensor& t, bool copy_in) {
  if (t.is_cpu()) return t;
  return copy_in ? t.to(at::kCPU, /*non_blocking=*/false, /*copy=*/true)
                 : at::empty(t.sizes(), t.options().device(at::kCPU));
}

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, std::string name)
      : Communicator(RankOf(comm), SizeOf(comm), std::move(name)),
        comm_(comm),
        flight_(FlightRecorder::Get().AddCommunicator(name_, WorldRanksOf(comm))) {
    StartWatchdog();
  }
  ~MpiCommunicator() override {
    FlightRecorder::Get().RemoveCommunicator(flight_);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }

  WorkPtr AllReduce(at::Tensor& t, ReduceOp op) override {
    CheckTensor(t, "AllReduce");
    CheckAvg(op, t, "AllReduce");
    auto w = NewWork("AllReduce", t);
    at::Tensor buf = WireBuffer(t);
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf.data_ptr(), CountOf(buf.numel(), "AllReduce"),
                             ToMpi(buf.scalar_type()), ToMpi(op), comm_, &w->req_));
    w->keep_ = {t, buf};
    int n = size_;
    w->finish_ = [t, buf, op, n]() mutable {
      if (op == ReduceOp::kAvg) buf.div_(n);
      if (!buf.is_same(t)) t.copy_(buf);
    };
    return w;
  }

  WorkPtr ReduceScatter(const at::Tensor& input, at::Tensor& output, ReduceOp op) override {
    CheckTensor(input, "ReduceScatter");
    if (input.numel() % size_ != 0) {
      FT_THROW(CommError, "ReduceScatter: input numel {} is not divisible by {} ranks; use "
               "ReduceScatterV", input.numel(), size_);
    }
    return ReduceScatterV(input, output, std::vector<int64_t>(size_, input.numel() / size_), op);
  }

  WorkPtr ReduceScatterV(const at::Tensor& input, at::Tensor& output,
                         const std::vector<int64_t>& counts, ReduceOp op) override {
    CheckTensor(input, "ReduceScatter");
    CheckTensor(output, "ReduceScatter output");
    CheckAvg(op, input, "ReduceScatter");
    CheckSameDtype(input, output, "ReduceScatter");
    CheckCounts(counts, input.numel(), output.numel(), "ReduceScatter");
    auto w = NewWork("ReduceScatter", input);
    at::Tensor in = WireBuffer(input);
    at::Tensor out = WireBuffer(output);
    for (int64_t c : counts) w->counts_.push_back(CountOf(c, "ReduceScatter"));
    MPI_CHECK(MPI_Ireduce_scatter(in.data_ptr(), out.data_ptr(), w->counts_.data(),
                                  ToMpi(in.scalar_type()), ToMpi(op), comm_, &w->req_));
    w->keep_ = {input, output, in, out};
    int n = size_;
    at::Tensor dst = output;
    w->finish_ = [dst, out, op, n]() mutable {
      if (op == ReduceOp::kAvg) out.div_(n);
      if (!out.is_same(dst)) dst.copy_(out);
    };
    return w;
  }

  WorkPtr AllGather(const at::Tensor& input, at::Tensor& output) override {
    return AllGatherV(input, output, std::vector<int64_t>(size_, input.numel()));
  }

  WorkPtr AllGatherV(const at::Tensor& input, at::Tensor& output,
                     const std::vector<int64_t>& counts) override {
    CheckTensor(input, "AllGather");
    CheckTensor(output, "AllGather output");
    CheckSameDtype(input, output, "AllGather");
    CheckCounts(counts, output.numel(), input.numel(), "AllGather");
    auto w = NewWork("AllGather", input);
    int64_t off = 0;
    for (int64_t c : counts) {
      w->counts_.push_back(CountOf(c, "AllGather"));
      w->displs_.push_back(CountOf(off, "AllGather"));
      off += c;
    }
    // 16-bit floats travel as raw 2-byte words: no arithmetic, so no rounding.
    MPI_Datatype type =
        IsHalf(input.scalar_type()) ? MPI_UINT16_T : ToMpi(input.scalar_type());
    at::Tensor in = HostBuffer(input, /*copy_in=*/true);
    at::Tensor out = HostBuffer(output, /*copy_in=*/false);
    MPI_CHECK(MPI_Iallgatherv(in.data_ptr(), CountOf(input.numel(), "AllGather"), type,
                              out.data_ptr(), w->counts_.data(), w->displs_.data(), type,
                              comm_, &w->req_));
    w->keep_ = {input, output, in, out};
    if (!out.is_same(output)) {
      at::Tensor dst = output;
      w->finish_ = [dst, out]() mutable { dst.copy_(out); };
    }
    return w;
  }

  WorkPtr Broadcast(at::Tensor& t, int root) override {
    CheckTensor(t, "Broadcast");
    if (root < 0 || root >= size_) FT_THROW(CommError, "Broadcast: root {} out of range", root);
    auto w = NewWork("Broadcast", t);
    MPI_Datatype type = IsHalf(t.scalar_type()) ? MPI_UINT16_T : ToMpi(t.scalar_type());
    at::Tensor buf = HostBuffer(t, /*copy_in=*/true);
    MPI_CHECK(MPI_Ibcast(buf.data_ptr(), CountOf(t.numel(), "Broadcast"), type, root, comm_,
                         &w->req_));
    w->keep_ = {t, buf};
    if (!buf.is_same(t)) {
      at::Tensor dst = t;
      w->finish_ = [dst, buf]() mutable { dst.copy_(buf); };
    }
    return w;
  }

  WorkPtr Barrier() override {
    auto w = NewWork("Barrier", at::Tensor());
    MPI_CHECK(MPI_Ibarrier(comm_, &w->req_));
    return w;
  }

  MPI_Comm native() const { return comm_; }

  std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) override {
    MPI_Comm sub;
    MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
    auto c = std::make_unique<MpiCommunicator>(sub, name);
    c->set_timeout(timeout_s_);
    return c;
  }

 private:
  static int RankOf(MPI_Comm c) {
    int r = 0;
    MPI_CHECK(MPI_Comm_rank(c, &r));
    return r;
  }
  static int SizeOf(MPI_Comm c) {
    int s = 0;
    MPI_CHECK(MPI_Comm_size(c, &s));
    return s;
  }
  // Records the collective `op` (a string literal) on `t` and returns its Work.
  std::unique_ptr<MpiWork> NewWork(const char* op, const at::Tensor& t) {
    const auto ticket = t.defined()
                            ? FlightRecorder::Get().Start(flight_, op, t.numel(), t.scalar_type())
                            : FlightRecorder::Get().Start(flight_, op, 0, at::kByte);
    return std::make_unique<MpiWork>(ticket, timeout_s_);
  }
  static void CheckSameDtype(const at::Tensor& a, const at::Tensor& b, const char* what) {
    if (a.scalar_type() != b.scalar_type()) {
      FT_THROW(CommError, "{}: input dtype {} differs from output dtype {}", what,
               c10::toString(a.scalar_type()), c10::toString(b.scalar_type()));
    }
  }
  void CheckCounts(const std::vector<int64_t>& counts, int64_t total, int64_t mine,
                   const char* what) const {
    if (static_cast<int>(counts.size()) != size_) {
      FT_THROW(CommError, "{}: {} counts given for {} ranks", what, counts.size(), size_);
    }
    int64_t sum = 0;
    for (int64_t c : counts) sum += c;
    if (sum != total || counts[rank_] != mine) {
      FT_THROW(CommError, "{}: counts sum to {} (full tensor has {}), this rank's count is {} "
               "(its tensor has {})", what, sum, total, counts[rank_], mine);
    }
  }

  MPI_Comm comm_;
  int flight_;  // this communicator in FlightRecorder::Get()
};

}  // namespace

std::vector<int> WorldRanksOf(MPI_Comm comm) {
  MPI_Group group, world;
  MPI_CHECK(MPI_Comm_group(comm, &group));
  MPI_CHECK(MPI_Comm_group(MPI_COMM_WORLD, &world));
  int n = 0;
  MPI_CHECK(MPI_Group_size(group, &n));
  std::vector<int> ranks(n), out(n);
  for (int i = 0; i < n; ++i) ranks[i] = i;
  MPI_CHECK(MPI_Group_translate_ranks(group, n, ranks.data(), world, out.data()));
  MPI_Group_free(&group);
  MPI_Group_free(&world);
  return out;
}

MPI_Comm NativeMpiComm(Communicator& c) {
  auto* m = dynamic_cast<MpiCommunicator*>(&c);
  if (!m) {
    FT_THROW(CommError, "communicator '{}' is not an MPI communicator (MPI-IO needs one)", c.name());
  }
  return m->native();
}

bool IsSupportedDtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: case at::kDouble: case at::kBFloat16: case at::kHalf:
    case at::kInt: case at::kLong: case at::kByte:
      return true;
    default:
      return false;
  }
}

std::unique_ptr<Communicator> MakeMpiWorldCommunicator() {
  MPI_Comm dup;
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &dup));
  return std::make_unique<MpiCommunicator>(dup, "world");
}

std::string MpiLibraryVersion() {
  char v[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(v, &len);
  std::string s(v, len);
  auto nl = s.find_first_of("\n,");
  return nl == std::string::npos ? s : s.substr(0, nl);
}

double CommWaitSeconds() { return comm_wait_ns.load() * 1e-9; }

void AddCommWait(std::chrono::steady_clock::duration waited) {
  comm_wait_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(waited).count();
}

#ifndef FTUNE_WITH_NCCL
bool HasNccl() { return false; }
std::string NcclVersion() { return ""; }
std::unique_ptr<Communicator> MakeNcclCommunicator(Communicator&, bool) {
  FT_THROW(CommError, "this ftune was built without NCCL (libtorch has no CUDA); use "
           "parallel.backend: mpi or rebuild against a CUDA libtorch (-DTorch_DIR=...)");
}
#endif

}  // namespace ftune::parallel
