// DataParallel: gradient synchronisation and ZeRO sharding over the dp axis,
// plus the AdamW update of the shard this rank owns.
//
// Parameters are grouped into buckets (flat ranges). Every bucket is split
// evenly (up to one element) among the dp ranks; rank r owns slice r of every
// bucket: its optimizer state (ZeRO >= 1), its reduced gradient (ZeRO >= 2)
// and, under ZeRO-3, the only persistent copy of its parameters.
//
//   zero 0: full grads all-reduced;  every rank updates everything.
//   zero 1: full grads all-reduced;  rank updates its slices, then params all-gathered.
//   zero 2: grads reduce-scattered;  rank updates its slices, then params all-gathered.
//   zero 3: like 2, and parameters live only as slices: a bucket ("unit", e.g.
//           one decoder layer) is all-gathered just before use and released after.
//
// Gradients are reduced (summed) bucket by bucket as backward produces them: a
// post-accumulate hook per parameter counts arrivals and starts the bucket's
// collective when its last parameter is done, so communication overlaps the
// rest of backward. Parameters whose gradient arrives in several pieces per
// backward (a tied embedding, an lm_head behind a chunked loss) must be marked
// `late`: their buckets are reduced in FinishGradSync. At most one reduction
// is outstanding per bucket (asserted).
//
// Collective ordering: every dp rank runs the same model on the same schedule,
// so buckets become ready in the same order on every rank; the bucket layout
// itself is a pure function of the parameter list and the options.
// Not thread-safe; the autograd hooks run on the thread calling backward().
#pragma once

#include <ATen/ATen.h>

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace torch::autograd {
struct Node;
}

namespace ftune::parallel {

struct ParamSpec {
  std::string name;
  at::Tensor param;    // leaf tensor requiring grad (compute dtype)
  bool decay = true;   // AdamW weight decay applies
  bool late = false;   // gradient arrives in several pieces per backward
  bool model_parallel_shard = false;  // a tensor-parallel shard (else replicated over tp)
};

// Where the parameters' initial values come from when their own storage holds none (sharded
// loading: the model is unmaterialised and each rank reads only what it keeps). Writes elements
// [begin, begin + out.numel()) of the flattened parameter `spec` into `out` (1-D, the
// parameter's dtype). Called once per (parameter, kept range), on the constructing thread.
using ParamSource = std::function<void(const ParamSpec& spec, int64_t begin, at::Tensor out)>;

struct DataParallelOptions {
  int zero = 0;
  // Where parameters, gradients and optimizer state live (the parameters are moved there: their
  // initial values are copied from wherever they or `source` are).
  at::Device device = at::kCPU;
  double bucket_mb = 25.0;
  // Empty: the parameters' current values. Set: the parameters' storage is never read; under
  // ZeRO-3 only this rank's slices are requested, so no rank ever holds the whole model. Used
  // in the constructor only, and dropped at its end (with whatever it holds).
  ParamSource source;
  // Parameters only (evaluation, generation): no gradient hooks or buffers, no fp32 master
  // copies, no optimizer state. The gradient, step and checkpoint methods then throw; the ZeRO-3
  // gathers work as in training.
  bool params_only = false;
  // Optimizer state offload (parallel.offload: optimizer): the fp32 master weights and the AdamW
  // moments of the owned slices live in host memory (pinned when the device is a GPU), with an fp32
  // host copy of each owned gradient slice; Step copies the gradients to the host, updates every
  // bucket on `offload_threads` host threads and copies the new parameters back, bucket by bucket
  // in bucket order (then all-gathered as without offload). CPU ranks run the same code path.
  bool offload_optimizer = false;
  int offload_threads = 4;
};

struct AdamWStep {
  double lr = 1e-4;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  double grad_scale = 1.0;  // gradients are multiplied by this first (clipping)
  int64_t step = 1;         // 1-based, for bias correction
  // One fused kernel per bucket where libtorch has one (compat::FusedAdamW), else the plain ops
  // (the same arithmetic, rounded alike to within an ulp or two).
  bool fused = true;
};

class DataParallel {
 public:
  // `units`: groups of parameter indices that stay together in one bucket
  // (required under ZeRO-3, where a unit is gathered as a whole; under 0-2 the
  // units are concatenated in reverse order - backward order - and re-cut into
  // buckets of about bucket_mb). Every parameter appears in exactly one unit.
  DataParallel(std::vector<ParamSpec> params, std::vector<std::vector<int>> units,
               Communicator& dp, const DataParallelOptions& opt);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Before each micro-batch's backward. sync=false accumulates locally (no
  // communication) for all but the last micro-batch of a step.
  void StartMicroBatch(bool sync);
  // Waits for every bucket's reduction (starting those not yet started).
  // Afterwards ShardGrad() holds the summed gradient of this rank's slices.
  void FinishGradSync();
  // Sums of squares of this rank's owned gradient, fp64 (2): [replicated
  // parameters, tensor-parallel shards]. The global squared norm is the dp
  // all-reduce of both plus the tp all-reduce of the second (under ZeRO-0,
  // where every dp rank owns everything, divide the dp sum by dp).
  at::Tensor ShardGradSquaredNorms() const;
  // AdamW on the owned slices; then params are made whole again (zero 1, 2) by
  // all-gather. Grads are zeroed for the next step.
  void Step(const AdamWStep& s);
  // Drops this step's gradients without an update (a skipped, non-finite step).
  void ZeroGrads();

  // ZeRO-3: make unit `u`'s parameters whole (all-gather) / drop them again.
  // Gather may be started early (prefetch); the parameters are valid after WaitUnit. Release
  // drops this object's reference to the gathered parameters (tensors that others still hold
  // keep their values and their memory).
  void GatherUnit(int u);
  void WaitUnit(int u);
  void ReleaseUnit(int u);
  // Release for a unit whose backward will gather it again: returns the gathered memory itself
  // but keeps its storage object, so tensors autograd saved from the whole parameters in forward
  // (views of that storage: a matmul keeps its weight) are valid again after the unit's next
  // WaitUnit, and a layer needs no recompute to be released between its forward and its
  // backward (PyTorch FSDP's storage resize). Until then every view of the unit's parameters
  // reads freed memory: gather before backward reaches the unit, and hold no other references.
  void ReleaseUnitUntilBackward(int u);
  // ZeRO-3: bytes of gathered parameters this rank holds now (units gathered or in flight).
  int64_t GatheredBytes() const;
  // Which bucket (= unit under ZeRO-3) a parameter belongs to.
  int UnitOf(int param) const;
  // Full shape of a parameter (also while released under ZeRO-3).
  const std::vector<int64_t>& ShapeOf(int param) const { return shapes_.at(param); }

  int zero() const { return opt_.zero; }
  int num_units() const;
  const std::vector<ParamSpec>& params() const { return params_; }
  // Bytes of parameters + gradients + optimizer state held persistently by
  // this rank (the ZeRO paper's model-state accounting; transient gathered
  // units and in-flight buckets excluded), on the device: with offload_optimizer
  // the optimizer state is in HostStateBytes instead.
  int64_t ModelStateBytes() const;
  // offload_optimizer: host bytes of the fp32 master weights, the moments and the fp32 gradient
  // copies of the owned slices (16 per owned element); 0 without offload.
  int64_t HostStateBytes() const;

  // This rank's owned slices, one entry per (parameter, bucket slice): fp32
  // views of the master weights and Adam moments (writable: a checkpoint
  // loader fills them, then calls LoadMasterIntoParams). For checkpoints.
  struct ShardView {
    int param;              // index into params()
    int64_t param_offset;   // first element within the flattened parameter
    at::Tensor master, exp_avg, exp_avg_sq;  // 1-D fp32, same numel
  };
  std::vector<ShardView> ShardViews();
  // Makes the parameters equal the master weights again (all ranks, collective).
  void LoadMasterIntoParams();

 private:
  struct Bucket;
  void OnGradAccumulated(int param);
  void StartReduce(Bucket& b);
  void FinishReduce(Bucket& b);
  void BindGradViews(Bucket& b);
  void PublishParams(Bucket& b);
  // AdamW on bucket b's owned slice given its fp32 gradient `g` (master and moments updated).
  void UpdateSlice(Bucket& b, at::Tensor g, const AdamWStep& s, const at::Tensor& step_t);
  void StepOffloaded(const AdamWStep& s);
  int64_t NumelOf(int param) const;  // from the recorded shape (ZeRO-3 params may be released)

  std::vector<ParamSpec> params_;
  Communicator& dp_;
  DataParallelOptions opt_;
  std::vector<std::unique_ptr<Bucket>> buckets_;
  std::vector<int> bucket_of_param_;
  std::vector<std::vector<int64_t>> shapes_;  // full parameter shapes
  bool sync_ = true;
  std::vector<std::shared_ptr<torch::autograd::Node>> hooks_;
  // ZeRO-2/3: reduce-scatters started and not yet finished, oldest first (at most kMaxInFlight).
  static constexpr size_t kMaxInFlight = 2;
  std::deque<Bucket*> in_flight_;
};

}  // namespace ftune::parallel
