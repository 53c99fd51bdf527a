// Collective communication on at::Tensor, with an MPI backend (host memory: CPU tensors, and
// device tensors staged through host buffers) and an NCCL backend (CUDA tensors, compiled only
// when libtorch has CUDA).
//
// Ordering rule: every rank of a communicator must call its collectives in the
// same order with matching sizes and dtypes; a mismatch hangs or corrupts, as
// with MPI and NCCL themselves. Calls return a Work handle immediately; the
// result is valid (and the input may be reused) only after Work::Wait(). A
// Communicator is used from one thread at a time.
//
// Tensors must be contiguous (a non-contiguous tensor is rejected with a
// CommError; call .contiguous() first). Supported dtypes: fp32, fp64, bf16,
// fp16, int32, int64, uint8. bf16/fp16 are reduced in fp32 and rounded once at
// the end, since MPI has no 16-bit float type and summing in 16 bits would
// lose precision at every hop.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace ftune::parallel {

enum class ReduceOp { kSum, kAvg, kMax, kMin };

// A pending collective. Wait() blocks until it completes, applies any
// post-processing (dtype round-trip, averaging) and rethrows its failure.
// A Work that is destroyed without Wait() waits in its destructor.
class Work {
 public:
  virtual ~Work() = default;
  virtual void Wait() = 0;
};
using WorkPtr = std::unique_ptr<Work>;

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& name() const { return name_; }
  // Seconds a Wait() may block: past it the job is declared broken (a lost
  // rank) and aborted with a report naming the collective (op, sequence number,
  // communicator), the ranks that did not arrive and every rank's last
  // collective (parallel/watchdog.h; MPI backend: the watchdog thread calls
  // MPI_Abort; the wait itself is a plain MPI_Wait). Every collective is
  // recorded in the process's FlightRecorder (parallel/flight_recorder.h).
  void set_timeout(double seconds) { timeout_s_ = seconds; }
  double timeout() const { return timeout_s_; }

  // In place on `t`. kAvg divides by size() (floating dtypes only).
  virtual WorkPtr AllReduce(at::Tensor& t, ReduceOp op = ReduceOp::kSum) = 0;
  // `input` holds size() equal chunks (numel divisible by size()); rank r
  // receives the reduction of chunk r into `output` (numel = input.numel()/size()).
  virtual WorkPtr ReduceScatter(const at::Tensor& input, at::Tensor& output,
                                ReduceOp op = ReduceOp::kSum) = 0;
  // Uneven variant: chunk r has counts[r] elements, laid out in rank order.
  virtual WorkPtr ReduceScatterV(const at::Tensor& input, at::Tensor& output,
                                 const std::vector<int64_t>& counts,
                                 ReduceOp op = ReduceOp::kSum) = 0;
  // `output` (numel = size() * input.numel()) receives every rank's input in rank order.
  virtual WorkPtr AllGather(const at::Tensor& input, at::Tensor& output) = 0;
  // Uneven variant: rank r contributes counts[r] elements.
  virtual WorkPtr AllGatherV(const at::Tensor& input, at::Tensor& output,
                             const std::vector<int64_t>& counts) = 0;
  // In place on `t`: every rank ends with root's values.
  virtual WorkPtr Broadcast(at::Tensor& t, int root) = 0;
  virtual WorkPtr Barrier() = 0;
  // A new communicator of the ranks passing the same `color`, ordered by `key`
  // (collective over this communicator).
  virtual std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) = 0;

 protected:
  Communicator(int rank, int size, std::string name)
      : rank_(rank), size_(size), name_(std::move(name)) {}

  int rank_;
  int size_;
  std::string name_;
  double timeout_s_ = 300.0;
};

// The world communicator over MPI_COMM_WORLD (MPI must be initialised; the
// runtime's World does that). Returns a duplicate of MPI_COMM_WORLD.
std::unique_ptr<Communicator> MakeMpiWorldCommunicator();

// A communicator for CUDA tensors over NCCL, created collectively over `bootstrap`
// (its ncclUniqueId is broadcast over it) on the current CUDA device. Throws
// CommError when ftune was built without NCCL. With one rank and `local_when_alone`, its
// collectives are local copies on the caller's stream (no NCCL kernel, no host wait); tests
// pass false to run NCCL's kernels on a one-GPU machine.
std::unique_ptr<Communicator> MakeNcclCommunicator(Communicator& bootstrap,
                                                   bool local_when_alone = true);

// Seconds this process has spent blocked in Work::Wait() (all communicators
// and threads together; exposed communication, not overlapped transfers).
// Only grows: step diagnostics take differences.
double CommWaitSeconds();

// Whether this build has the NCCL backend.
bool HasNccl();

// A string naming the MPI library and version ("Open MPI v4.1.4, ...").
std::string MpiLibraryVersion();
std::string NcclVersion();  // "" without NCCL

// Element size of a dtype, and whether Communicator supports it.
bool IsSupportedDtype(at::ScalarType t);

// bf16 and fp16, which both backends reduce in fp32.
inline bool IsHalf(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

}  // namespace ftune::parallel
