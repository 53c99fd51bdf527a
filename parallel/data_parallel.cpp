#include "parallel/data_parallel.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <future>
#include <thread>

#include "parallel/compat.h"
#include "parallel/error.h"

namespace ftune::parallel {

struct DataParallel::Bucket {
  std::vector<int> params;       // parameter indices, in flat order
  std::vector<int64_t> offsets;  // each parameter's first element in the flat bucket
  int64_t numel = 0;
  bool late = false;
  std::vector<int64_t> counts;   // elements owned by each dp rank
  int64_t lo = 0, hi = 0;        // this rank's slice [lo, hi)
  at::ScalarType dtype = at::kFloat;  // compute dtype of the parameters

  at::Tensor flat;        // zero 0-2: the parameters' storage (compute dtype), all of it
  at::Tensor shard_param; // zero 3: the only persistent copy, this rank's slice
  at::Tensor full;        // zero 3: gathered parameters while the unit is in use; after
                          // ReleaseUnitUntilBackward a storage object without memory
  at::Tensor master;      // fp32 owned slice: a view of flat/shard_param when those are fp32
  at::Tensor exp_avg, exp_avg_sq;  // fp32 owned slice
  at::Tensor grad;        // flat gradient (compute dtype): persistent for zero 0/1, transient else
  at::Tensor grad_shard;  // zero 2/3: fp32 reduced gradient of the owned slice
  at::Tensor host_grad;   // offload: fp32 host copy of the owned gradient slice
  at::Tensor rs_out;      // reduce-scatter destination while in flight

  int pending = 0;        // parameters still to receive their gradient this micro-batch
  bool started = false;   // reduction started this micro-batch
  WorkPtr work;           // the outstanding reduction
  WorkPtr gather;         // zero 3: outstanding all-gather
  bool gathered = false;
};

namespace {

std::vector<int64_t> EvenCounts(int64_t numel, int n) {
  std::vector<int64_t> c(n, numel / n);
  for (int i = 0; i < numel % n; ++i) c[i] += 1;
  return c;
}

// ReleaseUnitUntilBackward's storage resize: the tensor's storage object stays, its memory goes
// (FreeStorage) and comes back fresh (AllocStorage), so views of it read whatever is written
// there next.
void FreeStorage(const at::Tensor& t) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  s->set_data_ptr_noswap(at::DataPtr(nullptr, t.device()));
  s->set_nbytes(0);
}

void AllocStorage(const at::Tensor& t, size_t nbytes) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  FT_CHECK(s->allocator() != nullptr, "a gathered buffer without an allocator");
  s->set_data_ptr_noswap(s->allocator()->allocate(nbytes));
  s->set_nbytes(nbytes);
}

}  // namespace

DataParallel::DataParallel(std::vector<ParamSpec> params, std::vector<std::vector<int>> units,
                           Communicator& dp, const DataParallelOptions& opt)
    : params_(std::move(params)), dp_(dp), opt_(opt) {
  if (opt_.zero < 0 || opt_.zero > 3) FT_THROW(ConfigError, "parallel.zero = {} is not 0-3", opt_.zero);
  const int n = dp_.size(), r = dp_.rank();
  bucket_of_param_.assign(params_.size(), -1);
  for (const auto& u : units) {
    for (int p : u) {
      FT_CHECK(p >= 0 && p < static_cast<int>(params_.size()), "unit names parameter {}", p);
      FT_CHECK(bucket_of_param_[p] == -1, "parameter {} is in two units", params_[p].name);
      bucket_of_param_[p] = -2;  // seen
    }
  }
  for (size_t p = 0; p < params_.size(); ++p) {
    shapes_.push_back(params_[p].param.sizes().vec());
    FT_CHECK(bucket_of_param_[p] == -2, "parameter {} is in no unit", params_[p].name);
    FT_CHECK(params_[p].param.is_contiguous(), "parameter {} is not contiguous", params_[p].name);
  }

  // Bucket layout: units as they are (zero 3), else units in reverse (backward)
  // order re-cut at about bucket_mb, late parameters in buckets of their own.
  std::vector<std::vector<int>> groups;
  if (opt_.zero == 3) {
    groups = units;
  } else {
    const int64_t cap = std::max<int64_t>(1, static_cast<int64_t>(opt_.bucket_mb * (1 << 20)));
    std::vector<int> cur, late;
    int64_t cur_bytes = 0;
    for (auto u = units.rbegin(); u != units.rend(); ++u) {
      for (auto p = u->rbegin(); p != u->rend(); ++p) {
        if (params_[*p].late) {
          late.push_back(*p);
          continue;
        }
        const int64_t bytes = params_[*p].param.numel() * params_[*p].param.element_size();
        if (!cur.empty() && cur_bytes + bytes > cap) {
          groups.push_back(cur);
          cur.clear();
          cur_bytes = 0;
        }
        cur.push_back(*p);
        cur_bytes += bytes;
      }
    }
    if (!cur.empty()) groups.push_back(cur);
    if (!late.empty()) groups.push_back(late);
  }

  // Hooks first: autograd records each parameter's shape, dtype and device in its accumulator
  // now, and ZeRO-3 is about to release the parameters to size 0. So the parameters get their
  // final device before, without being allocated there (one element expanded to the shape: a
  // 70B model under ZeRO-3 must never be whole on one GPU); their initial values stay readable
  // through `initial`.
  auto on_device = [this](const at::Tensor& t) { return t.options().device(opt_.device); };
  std::vector<at::Tensor> initial(params_.size());
  for (size_t p = 0; p < params_.size(); ++p) {
    at::Tensor& t = params_[p].param;
    initial[p] = t.detach();
    if (t.device() != opt_.device) {
      at::NoGradGuard ng;
      t.set_data(at::empty({1}, on_device(t).requires_grad(false)).expand(t.sizes()));
    }
  }
  for (size_t p = 0; p < params_.size() && !opt_.params_only; ++p) {
    hooks_.push_back(compat::AddPostAccumulateHook(
        params_[p].param, [this, p]() { OnGradAccumulated(static_cast<int>(p)); }));
  }
  for (const auto& g : groups) {
    if (g.empty()) continue;
    auto b = std::make_unique<Bucket>();
    b->params = g;
    b->dtype = params_[g[0]].param.scalar_type();
    for (int p : g) {
      const auto& t = params_[p].param;
      if (t.scalar_type() != b->dtype) {
        FT_THROW(InternalError, "bucket mixes dtypes ({} and {})", params_[g[0]].name,
                 params_[p].name);
      }
      b->offsets.push_back(b->numel);
      bucket_of_param_[p] = static_cast<int>(buckets_.size());
      b->numel += t.numel();
      b->late = b->late || params_[p].late;
    }
    b->counts = opt_.zero == 0 ? std::vector<int64_t>(n, b->numel) : EvenCounts(b->numel, n);
    if (opt_.zero == 0) {
      b->lo = 0, b->hi = b->numel;
    } else {
      b->lo = 0;
      for (int i = 0; i < r; ++i) b->lo += b->counts[i];
      b->hi = b->lo + b->counts[r];
    }
    // Initial values: elements [begin, begin + out.numel()) of parameter p, flattened.
    auto read = [this, &initial](int p, int64_t begin, at::Tensor out) {
      if (opt_.source) {
        opt_.source(params_[p], begin, out);
      } else {
        out.copy_(initial[p].reshape(-1).narrow(0, begin, out.numel()));
      }
    };
    const int64_t own = b->hi - b->lo;
    at::NoGradGuard ng;
    if (opt_.zero == 3) {
      // Only this rank's slice is ever materialised.
      b->shard_param = at::empty({own}, on_device(params_[g[0]].param).requires_grad(false));
      for (size_t i = 0; i < g.size(); ++i) {
        const int64_t first = std::max(b->lo, b->offsets[i]);
        const int64_t last = std::min(b->hi, b->offsets[i] + params_[g[i]].param.numel());
        if (first < last) {
          read(g[i], first - b->offsets[i], b->shard_param.narrow(0, first - b->lo, last - first));
        }
      }
      if (!opt_.params_only) {
        b->master = b->dtype == at::kFloat && !opt_.offload_optimizer
                        ? b->shard_param
                        : b->shard_param.to(at::kFloat);
      }
      for (int p : g) params_[p].param.set_data(at::empty({0}, on_device(params_[p].param)));
    } else {
      // The parameters become views of one flat buffer (identical on all ranks).
      b->flat = at::empty({b->numel}, on_device(params_[g[0]].param).requires_grad(false));
      for (size_t i = 0; i < g.size(); ++i) {
        auto& t = params_[g[i]].param;
        read(g[i], 0, b->flat.narrow(0, b->offsets[i], t.numel()));
        t.set_data(b->flat.narrow(0, b->offsets[i], t.numel()).view(t.sizes()));
      }
      auto mine = b->flat.narrow(0, b->lo, own);
      if (!opt_.params_only) {
        b->master = b->dtype == at::kFloat && !opt_.offload_optimizer ? mine : mine.to(at::kFloat);
      }
    }
    if (opt_.params_only) {
      buckets_.push_back(std::move(b));
      continue;
    }
    // Optimizer state lives where the parameters do (the GPU in GPU runs), in fp32; offloaded, in
    // host memory, pinned for asynchronous copies when the parameters are on a GPU.
    const auto fp32 = on_device(params_[g[0]].param).dtype(at::kFloat).requires_grad(false);
    const auto state = opt_.offload_optimizer
                           ? at::TensorOptions(at::kFloat).pinned_memory(!opt_.device.is_cpu())
                           : fp32;
    if (opt_.offload_optimizer) {
      b->master = b->master.to(state, /*non_blocking=*/false, /*copy=*/true);
      b->host_grad = at::zeros({own}, state);
    }
    b->exp_avg = at::zeros({own}, state);
    b->exp_avg_sq = at::zeros({own}, state);
    if (opt_.zero >= 2) b->grad_shard = at::zeros({own}, fp32);
    buckets_.push_back(std::move(b));
  }

  for (auto& b : buckets_) BindGradViews(*b);
  // Read only here: let go of what it holds (a memory-mapped checkpoint or file handle).
  opt_.source = nullptr;
}

DataParallel::~DataParallel() {
  for (auto& b : buckets_) {
    try {
      if (b->work) b->work->Wait();
      if (b->gather) b->gather->Wait();
    } catch (...) {
    }
  }
}

int64_t DataParallel::NumelOf(int param) const {
  int64_t n = 1;
  for (int64_t d : shapes_[param]) n *= d;
  return n;
}

int DataParallel::num_units() const { return static_cast<int>(buckets_.size()); }
int DataParallel::UnitOf(int param) const { return bucket_of_param_.at(param); }

void DataParallel::BindGradViews(Bucket& b) {
  // ZeRO-2/3: gradients land in fresh tensors, are flattened when the bucket is complete and
  // freed once reduce-scattered, so the full gradient never exists all at once.
  if (opt_.zero >= 2 || opt_.params_only) return;
  if (!b.grad.defined()) b.grad = at::zeros({b.numel}, b.flat.options());
  for (size_t i = 0; i < b.params.size(); ++i) {
    auto& t = params_[b.params[i]].param;
    t.mutable_grad() = b.grad.narrow(0, b.offsets[i], t.numel()).view(t.sizes());
  }
}

void DataParallel::StartMicroBatch(bool sync) {
  FT_CHECK(!opt_.params_only, "StartMicroBatch on a parameters-only DataParallel");
  sync_ = sync || opt_.zero == 3;  // ZeRO-3 keeps no full gradients between micro-batches
  for (auto& b : buckets_) {
    FT_CHECK(!b->work, "a reduction is still outstanding at the start of a micro-batch");
    b->pending = static_cast<int>(b->params.size());
    b->started = false;
    BindGradViews(*b);
  }
}

void DataParallel::OnGradAccumulated(int param) {
  if (!sync_) return;
  auto& b = *buckets_[bucket_of_param_[param]];
  if (--b.pending == 0 && !b.late) StartReduce(b);
}

void DataParallel::StartReduce(Bucket& b) {
  FT_CHECK(!b.started && !b.work, "one reduction outstanding per bucket");
  b.started = true;
  if (opt_.zero >= 2) {
    // Gradients arrived in fresh full-size tensors: flatten, then release them.
    b.grad = at::zeros({b.numel}, b.master.options().dtype(b.dtype));
    for (size_t i = 0; i < b.params.size(); ++i) {
      auto& t = params_[b.params[i]].param;
      if (t.grad().defined()) b.grad.narrow(0, b.offsets[i], t.grad().numel()).copy_(t.grad().reshape(-1));
      t.mutable_grad() = at::Tensor();
    }
  }
  if (opt_.zero <= 1) {
    b.work = dp_.AllReduce(b.grad, ReduceOp::kSum);
  } else {
    b.rs_out = at::empty({b.hi - b.lo}, b.grad.options());
    b.work = dp_.ReduceScatterV(b.grad, b.rs_out, b.counts, ReduceOp::kSum);
    // Bound the full-size gradient buffers alive during backward: finish the oldest reductions
    // (normally complete by now, overlapped with the layers computed since).
    in_flight_.push_back(&b);
    while (in_flight_.size() > kMaxInFlight) {
      FinishReduce(*in_flight_.front());
      in_flight_.pop_front();
    }
  }
}

void DataParallel::FinishReduce(Bucket& b) {
  if (!b.work) return;
  b.work->Wait();
  b.work.reset();
  if (opt_.zero >= 2) {
    b.grad_shard.add_(b.rs_out.to(at::kFloat));
    b.rs_out = at::Tensor();
    for (int p : b.params) params_[p].param.mutable_grad() = at::Tensor();
    b.grad = at::Tensor();  // the full gradient is not kept (ZeRO-2/3)
  }
}

void DataParallel::FinishGradSync() {
  FT_CHECK(!opt_.params_only, "FinishGradSync on a parameters-only DataParallel");
  FT_CHECK(sync_, "FinishGradSync on a non-synchronising micro-batch");
  for (auto& b : buckets_) {
    if (!b->started) StartReduce(*b);
  }
  for (auto& b : buckets_) FinishReduce(*b);
  in_flight_.clear();
}

at::Tensor DataParallel::ShardGradSquaredNorms() const {
  FT_CHECK(!opt_.params_only, "ShardGradSquaredNorms of a parameters-only DataParallel");
  // On the parameters' device: the caller reduces it there and reads it once per step.
  auto total = at::zeros({2}, buckets_.empty() ? at::TensorOptions(at::kDouble)
                                               : buckets_[0]->master.options().dtype(at::kDouble));
  for (const auto& b : buckets_) {
    at::Tensor g = opt_.zero >= 2 ? b->grad_shard : b->grad.narrow(0, b->lo, b->hi - b->lo);
    for (size_t i = 0; i < b->params.size(); ++i) {
      const int64_t p0 = std::max(b->offsets[i], b->lo);
      const int64_t p1 = std::min(b->offsets[i] + NumelOf(b->params[i]), b->hi);
      if (p1 <= p0) continue;
      const int k = params_[b->params[i]].model_parallel_shard ? 1 : 0;
      // One read pass (the norm), squared in fp64; a cast to fp64 first cost three passes over
      // twice the bytes.
      const auto part = g.narrow(0, p0 - b->lo, p1 - p0);
      total[k] += at::linalg_vector_norm(part, 2).to(at::kDouble).pow(2);
    }
  }
  return total;
}

void DataParallel::UpdateSlice(Bucket& b, at::Tensor g, const AdamWStep& s,
                               const at::Tensor& step_t) {
  const double bc1 = 1.0 - std::pow(s.beta1, static_cast<double>(s.step));
  const double bc2 = 1.0 - std::pow(s.beta2, static_cast<double>(s.step));
  if (s.grad_scale != 1.0) g = g * s.grad_scale;
  // Decoupled weight decay on the decayed parameters' elements of the slice.
  if (s.weight_decay != 0.0) {
    for (size_t i = 0; i < b.params.size(); ++i) {
      if (!params_[b.params[i]].decay) continue;
      const int64_t p0 = std::max(b.offsets[i], b.lo);
      const int64_t p1 = std::min(b.offsets[i] + NumelOf(b.params[i]), b.hi);
      if (p1 > p0) b.master.narrow(0, p0 - b.lo, p1 - p0).mul_(1.0 - s.lr * s.weight_decay);
    }
  }
  if (!s.fused || !compat::FusedAdamW(b.master, g, b.exp_avg, b.exp_avg_sq, step_t, s.lr, s.beta1,
                                      s.beta2, s.eps)) {
    b.exp_avg.mul_(s.beta1).add_(g, 1.0 - s.beta1);
    b.exp_avg_sq.mul_(s.beta2).addcmul_(g, g, 1.0 - s.beta2);
    auto denom = (b.exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(s.eps);
    b.master.addcdiv_(b.exp_avg, denom, -s.lr / bc1);
  }
}

void DataParallel::Step(const AdamWStep& s) {
  FT_CHECK(!opt_.params_only, "Step on a parameters-only DataParallel");
  at::NoGradGuard ng;
  if (opt_.offload_optimizer) {
    StepOffloaded(s);
  } else {
    // The step for the fused kernel, on the device: filled without waiting for it.
    at::Tensor step_t;
    if (s.fused && compat::kFusedAdamW) {
      step_t = at::scalar_tensor(static_cast<double>(s.step),
                                 at::TensorOptions(at::kFloat).device(opt_.device));
    }
    for (auto& bp : buckets_) {
      Bucket& b = *bp;
      const int64_t own = b.hi - b.lo;
      if (own == 0) continue;
      UpdateSlice(b, opt_.zero >= 2 ? b.grad_shard : b.grad.narrow(0, b.lo, own).to(at::kFloat),
                  s, step_t);
      PublishParams(b);
      if (opt_.zero >= 2) b.grad_shard.zero_();
      if (b.grad.defined()) b.grad.zero_();
    }
  }
  for (auto& b : buckets_) {
    if (b->work) {
      b->work->Wait();  // all-gathers of the updated parameters
      b->work.reset();
    }
  }
}

void DataParallel::StepOffloaded(const AdamWStep& s) {
  // Every owned gradient slice to its fp32 host copy (one wait for the device at the end of the
  // copies), then the buckets' updates on host threads, each published as soon as it is done,
  // in bucket order (the all-gathers are collective: the same order on every rank).
  for (auto& bp : buckets_) {
    Bucket& b = *bp;
    const int64_t own = b.hi - b.lo;
    if (own == 0) continue;
    b.host_grad.copy_(opt_.zero >= 2 ? b.grad_shard : b.grad.narrow(0, b.lo, own),
                      /*non_blocking=*/true);
    if (opt_.zero >= 2) b.grad_shard.zero_();
    if (b.grad.defined()) b.grad.zero_();
  }
  if (!opt_.device.is_cpu()) compat::SynchronizeDevice(opt_.device);
  at::Tensor step_t;
  if (s.fused && compat::kFusedAdamW) {
    step_t = at::scalar_tensor(static_cast<double>(s.step), at::TensorOptions(at::kFloat));
  }
  const size_t n = buckets_.size();
  std::vector<std::promise<void>> done(n);
  std::atomic<size_t> next{0};
  auto worker = [&]() {
    at::NoGradGuard ng;
    for (size_t i; (i = next++) < n;) {
      try {
        Bucket& b = *buckets_[i];
        if (b.hi > b.lo) UpdateSlice(b, b.host_grad, s, step_t);
        done[i].set_value();
      } catch (...) {
        done[i].set_exception(std::current_exception());
      }
    }
  };
  std::vector<std::thread> pool;
  const size_t threads = std::min<size_t>(n, std::max(1, opt_.offload_threads));
  for (size_t t = 0; t < threads; ++t) pool.emplace_back(worker);
  std::exception_ptr error;
  for (size_t i = 0; i < n; ++i) {
    try {
      done[i].get_future().get();
      if (!error && buckets_[i]->hi > buckets_[i]->lo) PublishParams(*buckets_[i]);
    } catch (...) {
      if (!error) error = std::current_exception();
    }
  }
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

void DataParallel::ZeroGrads() {
  for (auto& b : buckets_) {
    FT_CHECK(!b->work, "ZeroGrads with a reduction outstanding");
    if (b->grad_shard.defined()) b->grad_shard.zero_();
    if (b->grad.defined()) b->grad.zero_();
    if (opt_.zero >= 2) {
      for (int p : b->params) params_[p].param.mutable_grad() = at::Tensor();
    }
  }
}

// After the master slice changed: write it into the parameters everywhere.
void DataParallel::PublishParams(Bucket& b) {
  const int64_t own = b.hi - b.lo;
  if (opt_.zero == 3) {
    if (!b.master.is_same(b.shard_param)) b.shard_param.copy_(b.master, /*non_blocking=*/true);
    return;
  }
  auto mine = b.flat.narrow(0, b.lo, own);
  if (!b.master.is_same(mine)) mine.copy_(b.master, /*non_blocking=*/true);
  if (opt_.zero >= 1 && dp_.size() > 1) {
    // The send buffer must not alias the receive buffer.
    b.rs_out = mine.clone();
    b.work = dp_.AllGatherV(b.rs_out, b.flat, b.counts);
  }
}

void DataParallel::GatherUnit(int u) {
  FT_CHECK(opt_.zero == 3, "GatherUnit needs ZeRO-3");
  auto& b = *buckets_.at(u);
  if (b.gathered || b.gather) return;
  if (b.full.defined()) {  // released until backward: the same storage object, fresh memory
    AllocStorage(b.full, static_cast<size_t>(b.numel) * b.full.element_size());
  } else {
    b.full = at::empty({b.numel}, b.shard_param.options());
  }
  b.gather = dp_.AllGatherV(b.shard_param, b.full, b.counts);
}

void DataParallel::WaitUnit(int u) {
  auto& b = *buckets_.at(u);
  if (b.gathered) return;
  if (!b.gather) GatherUnit(u);
  b.gather->Wait();
  b.gather.reset();
  for (size_t i = 0; i < b.params.size(); ++i) {
    auto& t = params_[b.params[i]].param;
    t.set_data(b.full.narrow(0, b.offsets[i], NumelOf(b.params[i])).view(shapes_[b.params[i]]));
  }
  b.gathered = true;
}

void DataParallel::ReleaseUnit(int u) {
  auto& b = *buckets_.at(u);
  if (!b.gathered) return;
  for (int p : b.params) params_[p].param.set_data(at::empty({0}, b.shard_param.options()));
  b.full = at::Tensor();
  b.gathered = false;
}

void DataParallel::ReleaseUnitUntilBackward(int u) {
  auto& b = *buckets_.at(u);
  if (!b.gathered) return;
  for (int p : b.params) params_[p].param.set_data(at::empty({0}, b.shard_param.options()));
  FreeStorage(b.full);
  b.gathered = false;
}

int64_t DataParallel::GatheredBytes() const {
  int64_t bytes = 0;
  for (const auto& b : buckets_) {
    if (b->full.defined()) bytes += static_cast<int64_t>(b->full.storage().nbytes());
  }
  return bytes;
}

int64_t DataParallel::ModelStateBytes() const {
  int64_t bytes = 0;
  for (const auto& b : buckets_) {
    const int64_t own = b->hi - b->lo;
    const int64_t es = at::elementSize(b->dtype);
    bytes += opt_.zero == 3 ? own * es : b->numel * es;     // parameters
    if (opt_.params_only) continue;
    bytes += opt_.zero >= 2 ? own * 4 : b->numel * es;      // gradients
    if (opt_.offload_optimizer) continue;
    bytes += 2 * own * 4;                                   // Adam moments
    if (b->dtype != at::kFloat) bytes += own * 4;           // fp32 master weights
  }
  return bytes;
}

int64_t DataParallel::HostStateBytes() const {
  if (!opt_.offload_optimizer) return 0;
  int64_t bytes = 0;
  for (const auto& b : buckets_) bytes += 4 * 4 * (b->hi - b->lo);  // master, moments, gradient
  return bytes;
}

std::vector<DataParallel::ShardView> DataParallel::ShardViews() {
  FT_CHECK(!opt_.params_only, "ShardViews of a parameters-only DataParallel (no master weights)");
  std::vector<ShardView> views;
  for (auto& b : buckets_) {
    for (size_t i = 0; i < b->params.size(); ++i) {
      const int64_t numel = NumelOf(b->params[i]);
      const int64_t p0 = std::max(b->offsets[i], b->lo);
      const int64_t p1 = std::min(b->offsets[i] + numel, b->hi);
      if (p1 <= p0) continue;
      views.push_back({b->params[i], p0 - b->offsets[i], b->master.narrow(0, p0 - b->lo, p1 - p0),
                       b->exp_avg.narrow(0, p0 - b->lo, p1 - p0),
                       b->exp_avg_sq.narrow(0, p0 - b->lo, p1 - p0)});
    }
  }
  return views;
}

void DataParallel::LoadMasterIntoParams() {
  FT_CHECK(!opt_.params_only, "LoadMasterIntoParams on a parameters-only DataParallel");
  at::NoGradGuard ng;
  for (auto& b : buckets_) PublishParams(*b);
  for (auto& b : buckets_) {
    if (b->work) {
      b->work->Wait();
      b->work.reset();
    }
  }
}

}  // namespace ftune::parallel
