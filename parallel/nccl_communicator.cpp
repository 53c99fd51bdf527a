// NCCL backend of Communicator: collectives on CUDA tensors, on a stream of their own.
// Compiled exactly when libtorch has CUDA (FTUNE_WITH_NCCL; CMakeLists.txt).
//
// Ordering with the computation: each call records an event on the caller's current stream and
// makes the communicator's stream wait for it, so the collective sees every kernel queued
// before the call; the collective then runs on the communicator's stream, overlapping what the
// caller queues next (backward of earlier layers). Work::Wait() polls the collective's completion
// event from the host, bounded by timeout() (a lost rank: the timeout report of
// parallel/watchdog.h is printed, the communicator is aborted and Wait throws CommError naming
// the collective), then makes the caller's stream wait on it and finishes (16-bit results copied
// back, kAvg done by NCCL itself). Every collective is recorded in the FlightRecorder.
//
// bf16/fp16 reductions run in fp32 (copies made on the caller's stream) and are rounded once
// when the Work is waited for, as the MPI backend does. The buffers a collective uses are
// recorded on its stream for the caching allocator, so freeing them before Wait() is safe.
//
// Uneven variants: ReduceScatterV is one ncclReduce per rank, AllGatherV one ncclBroadcast per
// rank, each set inside one ncclGroupStart/End. Split makes the new communicator over an MPI
// split of this one's bootstrap communicator (a fresh ncclUniqueId per communicator).
#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <nccl.h>
#include <torch/cuda.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <thread>

#include "parallel/communicator.h"
#include "parallel/flight_recorder.h"
#include "parallel/mpi_check.h"
#include "parallel/trace_range.h"
#include "parallel/watchdog.h"

namespace ftune::parallel {
namespace {

#define NCCL_CHECK(call, comm)                                                           \
  do {                                                                                   \
    ncclResult_t ft_nccl_rc_ = (call);                                                   \
    if (ft_nccl_rc_ != ncclSuccess) {                                                    \
      FT_THROW(CommError, "{} failed at {}:{}: {} ({})", #call, __FILE__, __LINE__,     \
               ncclGetErrorString(ft_nccl_rc_), ncclGetLastError(comm));                 \
    }                                                                                    \
  } while (0)

ncclDataType_t ToNccl(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    case at::kInt: return ncclInt32;
    case at::kLong: return ncclInt64;
    case at::kByte: return ncclUint8;
    default: break;
  }
  FT_THROW(CommError, "dtype {} has no NCCL type", c10::toString(t));
}

ncclRedOp_t ToNccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  return ncclSum;
}

class NcclCommunicator;

class NcclWork : public Work {
 public:
  NcclWork(NcclCommunicator* comm, FlightRecorder::Ticket ticket, at::cuda::CUDAEvent done,
           std::vector<at::Tensor> keep, std::function<void()> finish)
      : comm_(comm),
        ticket_(ticket),
        done_(std::move(done)),
        keep_(std::move(keep)),
        finish_(std::move(finish)) {}
  ~NcclWork() override {
    try {
      Wait();
    } catch (const std::exception&) {
    }
  }
  void Wait() override;

 private:
  NcclCommunicator* comm_;
  FlightRecorder::Ticket ticket_;
  at::cuda::CUDAEvent done_;
  std::vector<at::Tensor> keep_;  // alive until the collective is done
  std::function<void()> finish_;
  bool waited_ = false;
};

// A collective of a one-rank communicator: done when enqueued (see NcclCommunicator::Local).
class LocalWork : public Work {
 public:
  void Wait() override {}
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(std::unique_ptr<Communicator> bootstrap, std::string name,
                   bool local_when_alone)
      : Communicator(bootstrap->rank(), bootstrap->size(), std::move(name)),
        local_when_alone_(local_when_alone),
        local_(local_when_alone && size_ == 1),
        bootstrap_(std::move(bootstrap)),
        device_(c10::cuda::current_device()),
        stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device_)),
        flight_(FlightRecorder::Get().AddCommunicator(name_,
                                                      WorldRanksOf(NativeMpiComm(*bootstrap_)))) {
    StartWatchdog();
    set_timeout(bootstrap_->timeout());
    ncclUniqueId id;
    auto buf = at::zeros({static_cast<int64_t>(sizeof(id))}, at::kByte);
    if (rank_ == 0) {
      NCCL_CHECK(ncclGetUniqueId(&id), nullptr);
      std::memcpy(buf.data_ptr(), &id, sizeof(id));
    }
    bootstrap_->Broadcast(buf, 0)->Wait();
    std::memcpy(&id, buf.data_ptr(), sizeof(id));
    c10::cuda::CUDAGuard guard(device_);
    NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_), nullptr);
  }
  ~NcclCommunicator() override {
    FlightRecorder::Get().RemoveCommunicator(flight_);
    if (comm_ == nullptr) return;
    if (aborted_) return;
    ncclCommDestroy(comm_);
  }

  ncclComm_t nccl() const { return comm_; }
  c10::DeviceIndex device() const { return device_; }

  // Called by NcclWork::Wait while its collective `t` is not done: throws once its deadline
  // passed (the timeout report printed first; the deadline moves on while this process is
  // stopped) or NCCL reported an asynchronous error (the communicator is aborted first, so that
  // every kernel of it returns).
  // `overdue_since`: when this wait was first seen past its deadline (the deadline is acted on
  // half a second later, by when the watchdog has moved it on if this process was stopped).
  void CheckProgress(const FlightRecorder::Ticket& t, std::chrono::steady_clock::time_point start,
                     std::chrono::steady_clock::time_point& overdue_since) {
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    const auto now = std::chrono::steady_clock::now();
    const double waited = std::chrono::duration<double>(now - start).count();
    if (async == ncclSuccess && waited < timeout()) return;
    if (async == ncclSuccess) {
      auto overdue = FlightRecorder::Get().OverdueWaitOf(t, now);
      if (!overdue) return;
      if (overdue_since == std::chrono::steady_clock::time_point{}) overdue_since = now;
      if (now - overdue_since < std::chrono::milliseconds(500)) return;
      ReportTimeout(*overdue);
    }
    const std::string what = fmt::format("{} #{}", t.op, t.seq);
    const std::string why =
        async != ncclSuccess
            ? fmt::format("NCCL reported {} ({})", ncclGetErrorString(async),
                          ncclGetLastError(comm_))
            : fmt::format(
                  "no completion within parallel.timeout_s = {} s (the report above "
                  "names the ranks that did not arrive)",
                  timeout());
    if (!aborted_) {
      aborted_ = true;
      ncclCommAbort(comm_);
    }
    FT_THROW(CommError, "{} on communicator '{}' (rank {}/{}): {}", what, name(), rank_, size_,
             why);
  }

  WorkPtr AllReduce(at::Tensor& t, ReduceOp op) override {
    Check(t, "AllReduce");
    CheckAvg(op, t, "AllReduce");
    if (local_) return Local("AllReduce", t, nullptr);  // sum, avg, min, max of one
    at::Tensor buf = IsHalf(t.scalar_type()) ? t.to(at::kFloat) : t;
    return Launch("AllReduce", {t, buf}, [&](cudaStream_t s) {
      NCCL_CHECK(ncclAllReduce(buf.data_ptr(), buf.data_ptr(), buf.numel(),
                               ToNccl(buf.scalar_type()), ToNccl(op), comm_, s), comm_);
    }, CopyBack(t, buf));
  }

  WorkPtr ReduceScatter(const at::Tensor& input, at::Tensor& output, ReduceOp op) override {
    Check(input, "ReduceScatter");
    Check(output, "ReduceScatter");
    CheckAvg(op, input, "ReduceScatter");
    if (input.numel() != output.numel() * size_ || input.scalar_type() != output.scalar_type()) {
      FT_THROW(CommError, "ReduceScatter on '{}': input of {} {} for output of {} {} x {} ranks",
               name(), input.numel(), c10::toString(input.scalar_type()), output.numel(),
               c10::toString(output.scalar_type()), size_);
    }
    if (local_) return Local("ReduceScatter", input, [&]() { CopyFlat(output, input); });
    const bool half = IsHalf(input.scalar_type());
    at::Tensor in = half ? input.to(at::kFloat) : input;
    at::Tensor out = half ? at::empty({output.numel()}, in.options()) : output;
    return Launch("ReduceScatter", {input, output, in, out}, [&](cudaStream_t s) {
      NCCL_CHECK(ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(),
                                   ToNccl(in.scalar_type()), ToNccl(op), comm_, s), comm_);
    }, CopyBack(output, out));
  }

  WorkPtr ReduceScatterV(const at::Tensor& input, at::Tensor& output,
                         const std::vector<int64_t>& counts, ReduceOp op) override {
    Check(input, "ReduceScatterV");
    Check(output, "ReduceScatterV");
    CheckAvg(op, input, "ReduceScatterV");
    CheckCounts(counts, input.numel(), output.numel(), "ReduceScatterV");
    if (local_) return Local("ReduceScatterV", input, [&]() { CopyFlat(output, input); });
    const bool half = IsHalf(input.scalar_type());
    at::Tensor in = half ? input.to(at::kFloat) : input;
    at::Tensor out = half ? at::empty({output.numel()}, in.options()) : output;
    return Launch("ReduceScatterV", {input, output, in, out}, [&](cudaStream_t s) {
      const size_t elem = in.element_size();
      const auto* base = static_cast<const char*>(in.data_ptr());
      NCCL_CHECK(ncclGroupStart(), comm_);
      int64_t offset = 0;
      for (int r = 0; r < size_; ++r) {
        if (counts[r] > 0) {
          NCCL_CHECK(ncclReduce(base + offset * elem, r == rank_ ? out.data_ptr() : nullptr,
                                counts[r], ToNccl(in.scalar_type()), ToNccl(op), r, comm_, s),
                     comm_);
        }
        offset += counts[r];
      }
      NCCL_CHECK(ncclGroupEnd(), comm_);
    }, CopyBack(output, out));
  }

  WorkPtr AllGather(const at::Tensor& input, at::Tensor& output) override {
    Check(input, "AllGather");
    Check(output, "AllGather");
    if (output.numel() != input.numel() * size_ || input.scalar_type() != output.scalar_type()) {
      FT_THROW(CommError, "AllGather on '{}': output of {} {} for input of {} {} x {} ranks",
               name(), output.numel(), c10::toString(output.scalar_type()), input.numel(),
               c10::toString(input.scalar_type()), size_);
    }
    if (local_) return Local("AllGather", input, [&]() { CopyFlat(output, input); });
    return Launch("AllGather", {input, output}, [&](cudaStream_t s) {
      NCCL_CHECK(ncclAllGather(input.data_ptr(), output.data_ptr(), input.numel(),
                               ToNccl(input.scalar_type()), comm_, s), comm_);
    }, nullptr);
  }

  WorkPtr AllGatherV(const at::Tensor& input, at::Tensor& output,
                     const std::vector<int64_t>& counts) override {
    Check(input, "AllGatherV");
    Check(output, "AllGatherV");
    CheckCounts(counts, output.numel(), input.numel(), "AllGatherV");
    if (local_) return Local("AllGatherV", input, [&]() { CopyFlat(output, input); });
    return Launch("AllGatherV", {input, output}, [&](cudaStream_t s) {
      const size_t elem = output.element_size();
      auto* base = static_cast<char*>(output.data_ptr());
      NCCL_CHECK(ncclGroupStart(), comm_);
      int64_t offset = 0;
      for (int r = 0; r < size_; ++r) {
        if (counts[r] > 0) {
          NCCL_CHECK(ncclBroadcast(r == rank_ ? input.data_ptr() : nullptr,
                                   base + offset * elem, counts[r],
                                   ToNccl(output.scalar_type()), r, comm_, s),
                     comm_);
        }
        offset += counts[r];
      }
      NCCL_CHECK(ncclGroupEnd(), comm_);
    }, nullptr);
  }

  WorkPtr Broadcast(at::Tensor& t, int root) override {
    Check(t, "Broadcast");
    if (root < 0 || root >= size_) {
      FT_THROW(CommError, "Broadcast on '{}': root {} of {} ranks", name(), root, size_);
    }
    if (local_) return Local("Broadcast", t, nullptr);
    return Launch("Broadcast", {t}, [&](cudaStream_t s) {
      NCCL_CHECK(ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), ToNccl(t.scalar_type()),
                               root, comm_, s), comm_);
    }, nullptr);
  }

  WorkPtr Barrier() override {
    auto t = at::zeros({1}, at::TensorOptions().dtype(at::kInt).device(at::kCUDA, device_));
    return AllReduce(t, ReduceOp::kSum);
  }

  std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) override {
    auto sub = bootstrap_->Split(color, key, name + "/bootstrap");
    c10::cuda::CUDAGuard guard(device_);
    return std::make_unique<NcclCommunicator>(std::move(sub), name, local_when_alone_);
  }

 private:
  void Check(const at::Tensor& t, const char* what) const {
    if (!t.defined()) FT_THROW(CommError, "{}: tensor is undefined", what);
    if (!t.is_cuda() || t.device().index() != device_) {
      FT_THROW(CommError, "{} on '{}': the NCCL backend takes tensors on cuda:{}, got one on {}",
               what, name(), device_, t.device().str());
    }
    if (!t.is_contiguous()) {
      FT_THROW(CommError, "{}: tensor of shape {} is not contiguous; call .contiguous() first",
               what, fmt::join(t.sizes(), "x"));
    }
    if (!IsSupportedDtype(t.scalar_type())) {
      FT_THROW(CommError, "{}: unsupported dtype {}", what, c10::toString(t.scalar_type()));
    }
  }
  static void CheckAvg(ReduceOp op, const at::Tensor& t, const char* what) {
    if (op == ReduceOp::kAvg && !at::isFloatingType(t.scalar_type())) {
      FT_THROW(CommError, "{}: kAvg needs a floating dtype, got {}", what,
               c10::toString(t.scalar_type()));
    }
  }
  void CheckCounts(const std::vector<int64_t>& counts, int64_t total, int64_t mine,
                   const char* what) const {
    int64_t sum = 0;
    for (int64_t c : counts) sum += c;
    if (static_cast<int>(counts.size()) != size_ || sum != total || counts[rank_] != mine) {
      FT_THROW(CommError, "{} on '{}': counts [{}] do not match {} elements in all, {} here",
               what, name(), fmt::join(counts, ", "), total, mine);
    }
  }
  // 16-bit results come back from their fp32 buffer when the Work is waited for.
  static std::function<void()> CopyBack(at::Tensor dst, at::Tensor src) {
    if (dst.is_same(src)) return nullptr;
    return [dst, src]() mutable { dst.copy_(src); };
  }

  // One rank (a single-GPU run's dp communicator): a collective is the identity or a copy,
  // done on the caller's stream. No NCCL call, side stream or host wait: the step does not
  // wait for the device at each gradient bucket. Recorded like any collective.
  WorkPtr Local(const char* what, const at::Tensor& t, const std::function<void()>& op) {
    auto& recorder = FlightRecorder::Get();
    const auto ticket = recorder.Start(flight_, what, t.numel(), t.scalar_type());
    if (op) {
      c10::cuda::CUDAGuard guard(device_);
      op();
    }
    recorder.Complete(ticket);
    return std::make_unique<LocalWork>();
  }

  static void CopyFlat(const at::Tensor& dst, const at::Tensor& src) {
    dst.view({-1}).copy_(src.view({-1}));
  }

  template <class F>
  WorkPtr Launch(const char* what, std::vector<at::Tensor> tensors, F&& enqueue,
                 std::function<void()> finish) {
    c10::cuda::CUDAGuard guard(device_);
    at::cuda::CUDAEvent ready;
    ready.record(c10::cuda::getCurrentCUDAStream(device_));
    ready.block(stream_);
    const auto ticket =
        FlightRecorder::Get().Start(flight_, what, tensors[0].numel(), tensors[0].scalar_type());
    enqueue(stream_.stream());
    for (const auto& t : tensors) {
      c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), stream_);
    }
    at::cuda::CUDAEvent done;
    done.record(stream_);
    return std::make_unique<NcclWork>(this, ticket, std::move(done), std::move(tensors),
                                      std::move(finish));
  }

  const bool local_when_alone_;  // passed on to Split's communicators
  const bool local_;             // one rank and local_when_alone_: collectives by Local()
  std::unique_ptr<Communicator> bootstrap_;  // MPI: ids, Split
  c10::DeviceIndex device_;
  c10::cuda::CUDAStream stream_;
  int flight_;  // this communicator in FlightRecorder::Get()
  ncclComm_t comm_ = nullptr;
  bool aborted_ = false;
};

void NcclWork::Wait() {
  if (waited_) return;
  waited_ = true;
  TraceRange range("ftune::communication");
  const auto start = std::chrono::steady_clock::now();
  auto& recorder = FlightRecorder::Get();
  if (!done_.query()) {
    recorder.Block(ticket_, comm_->timeout(), /*watched=*/false);
    std::chrono::steady_clock::time_point overdue_since{};
    while (!done_.query()) {
      try {
        comm_->CheckProgress(ticket_, start, overdue_since);
      } catch (...) {
        recorder.Complete(ticket_);  // no longer waited for: the communicator is aborted
        throw;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
  recorder.Complete(ticket_);
  AddCommWait(std::chrono::steady_clock::now() - start);
  c10::cuda::CUDAGuard guard(comm_->device());
  done_.block(c10::cuda::getCurrentCUDAStream(comm_->device()));
  if (finish_) finish_();
  keep_.clear();
}

}  // namespace

bool HasNccl() { return true; }

std::string NcclVersion() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "unknown";
  return fmt::format("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100);
}

std::unique_ptr<Communicator> MakeNcclCommunicator(Communicator& bootstrap,
                                                   bool local_when_alone) {
  if (!torch::cuda::is_available()) {
    FT_THROW(CommError, "the NCCL backend needs a CUDA device, and none is visible here; use "
             "parallel.backend: mpi");
  }
  auto own = bootstrap.Split(0, bootstrap.rank(), bootstrap.name() + "/nccl-bootstrap");
  return std::make_unique<NcclCommunicator>(std::move(own), bootstrap.name() + "/nccl",
                                            local_when_alone);
}

}  // namespace ftune::parallel
