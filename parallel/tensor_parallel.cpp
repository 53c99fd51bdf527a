#include "parallel/tensor_parallel.h"

#include "parallel/error.h"

namespace ftune::parallel {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The Communicator travels through autograd's saved_data as an int64 (IValue has no raw pointer).
int64_t Handle(Communicator* comm) { return reinterpret_cast<int64_t>(comm); }
Communicator& FromHandle(AutogradContext* ctx) {
  return *reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt());
}

// All-reduces a contiguous copy of `x` and returns it (x itself is left untouched).
torch::Tensor AllReducedCopy(const torch::Tensor& x, Communicator& comm,
                             ReduceOp op = ReduceOp::kSum) {
  auto y = x.clone(at::MemoryFormat::Contiguous);
  if (comm.size() > 1) comm.AllReduce(y, op)->Wait();
  return y;
}

// In place on a tensor this file allocated (always contiguous).
void AllReduceInPlace(torch::Tensor& t, Communicator& comm, ReduceOp op = ReduceOp::kSum) {
  FT_CHECK(t.is_contiguous(), "tensor-parallel all-reduce needs a contiguous tensor");
  if (comm.size() > 1) comm.AllReduce(t, op)->Wait();
}

class CopyToRegionFn : public torch::autograd::Function<CopyToRegionFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, Communicator* comm) {
    ctx->saved_data["comm"] = Handle(comm);
    return x;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    return {AllReducedCopy(grad[0], FromHandle(ctx)), torch::Tensor()};
  }
};

class ReduceFromRegionFn : public torch::autograd::Function<ReduceFromRegionFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, Communicator* comm) {
    return AllReducedCopy(x, *comm);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    return {grad[0], torch::Tensor()};
  }
};

class GatherLastDimFn : public torch::autograd::Function<GatherLastDimFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, Communicator* comm) {
    const int64_t n = comm->size();
    const int64_t local = x.size(-1);
    ctx->saved_data["comm"] = Handle(comm);
    ctx->saved_data["local"] = local;
    auto in = x.contiguous();
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.insert(shape.begin(), n);
    auto out = torch::empty(shape, x.options());  // (n, ..., local)
    comm->AllGather(in, out)->Wait();
    shape.erase(shape.begin());
    shape.back() = n * local;
    return out.movedim(0, -2).reshape(shape);  // (..., n, local) -> (..., n * local)
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const int64_t local = ctx->saved_data["local"].toInt();
    const int64_t r = FromHandle(ctx).rank();
    return {grad[0].slice(-1, r * local, (r + 1) * local), torch::Tensor()};
  }
};

class VocabParallelCrossEntropyFn : public torch::autograd::Function<VocabParallelCrossEntropyFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits_shard,
                               const torch::Tensor& targets, int64_t vocab_start,
                               Communicator* comm, int64_t ignore_index) {
    auto logits = logits_shard.to(torch::kFloat);  // (N, Vl)
    const int64_t vl = logits.size(1);
    auto tgt = targets.to(torch::kLong);
    auto valid = tgt.ne(ignore_index);                                         // (N)
    auto owned = valid & tgt.ge(vocab_start) & tgt.lt(vocab_start + vl);       // (N)
    auto local_tgt = (tgt - vocab_start).masked_fill(owned.logical_not(), 0);  // (N)

    // Global max per row (a constant shift: no gradient flows through it).
    auto max = std::get<0>(logits.max(-1)).contiguous();  // (N)
    AllReduceInPlace(max, *comm, ReduceOp::kMax);
    auto shifted = logits - max.unsqueeze(-1);
    auto exp = shifted.exp();
    auto sum_exp = exp.sum(-1).contiguous();  // (N)
    AllReduceInPlace(sum_exp, *comm);
    // Shifted target logit: only the owning rank contributes.
    auto target_logit = shifted.gather(1, local_tgt.unsqueeze(1))
                            .squeeze(1)
                            .masked_fill(owned.logical_not(), 0)
                            .contiguous();
    AllReduceInPlace(target_logit, *comm);

    auto loss = (sum_exp.log() - target_logit).masked_fill(valid.logical_not(), 0);
    auto softmax = exp.div_(sum_exp.unsqueeze(-1));
    ctx->save_for_backward({softmax, local_tgt, owned, valid});
    ctx->saved_data["dtype"] = static_cast<int64_t>(logits_shard.scalar_type());
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto saved = ctx->get_saved_variables();
    const auto& softmax = saved[0];
    const auto& local_tgt = saved[1];
    const auto& owned = saved[2];
    const auto& valid = saved[3];
    // d loss_i / d logit_ij = softmax_ij - [j == target_i], times the row's incoming gradient.
    auto g = softmax.scatter_add(1, local_tgt.unsqueeze(1),
                                 owned.to(softmax.scalar_type()).neg().unsqueeze(1));
    auto row = (grad[0].to(torch::kFloat) * valid.to(torch::kFloat)).unsqueeze(1);  // (N, 1)
    g.mul_(row);
    const auto dtype = static_cast<c10::ScalarType>(ctx->saved_data["dtype"].toInt());
    return {g.to(dtype), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor CopyToRegion(const torch::Tensor& x, Communicator& comm) {
  if (comm.size() == 1) return x;
  return CopyToRegionFn::apply(x, &comm);
}

torch::Tensor ReduceFromRegion(const torch::Tensor& x, Communicator& comm) {
  if (comm.size() == 1) return x;
  return ReduceFromRegionFn::apply(x, &comm);
}

torch::Tensor GatherFromRegionLastDim(const torch::Tensor& x, Communicator& comm) {
  if (comm.size() == 1) return x;
  return GatherLastDimFn::apply(x, &comm);
}

torch::Tensor VocabParallelEmbedding(const torch::Tensor& tokens, const torch::Tensor& weight_shard,
                                     int64_t vocab_start, Communicator& comm) {
  namespace F = torch::nn::functional;
  if (comm.size() == 1) return F::embedding(tokens, weight_shard);
  const int64_t vl = weight_shard.size(0);
  auto foreign = tokens.lt(vocab_start) | tokens.ge(vocab_start + vl);
  auto local = (tokens - vocab_start).masked_fill(foreign, 0);
  auto out = F::embedding(local, weight_shard).masked_fill(foreign.unsqueeze(-1), 0);  // (..., C)
  return ReduceFromRegion(out, comm);
}

torch::Tensor VocabParallelCrossEntropy(const torch::Tensor& logits_shard,
                                        const torch::Tensor& targets, int64_t vocab_start,
                                        Communicator& comm, int64_t ignore_index) {
  if (logits_shard.dim() != 2 || targets.dim() != 1 || targets.size(0) != logits_shard.size(0)) {
    FT_THROW(InternalError,
             "VocabParallelCrossEntropy: logits must be (N, V/tp) and targets (N), got {} and {}",
             c10::str(logits_shard.sizes()), c10::str(targets.sizes()));
  }
  return VocabParallelCrossEntropyFn::apply(logits_shard, targets, vocab_start, &comm,
                                            ignore_index);
}

namespace {
torch::Tensor ShardDim(const torch::Tensor& full, int64_t dim, int64_t rank, int64_t n) {
  FT_CHECK(n >= 1 && rank >= 0 && rank < n, "rank {} of {} shards", rank, n);
  FT_CHECK(full.dim() > dim, "cannot shard dim {} of a {}-d tensor", dim, full.dim());
  const int64_t size = full.size(dim);
  if (size % n != 0) {
    FT_THROW(ConfigError, "{} is not divisible by {} (dim {} of a {} tensor split over {} ranks)",
             size, n, dim, c10::str(full.sizes()), n);
  }
  const int64_t m = size / n;
  return full.slice(dim, rank * m, (rank + 1) * m).clone(at::MemoryFormat::Contiguous);
}
}  // namespace

torch::Tensor ShardRows(const torch::Tensor& full, int64_t rank, int64_t n) {
  return ShardDim(full, 0, rank, n);
}

torch::Tensor ShardCols(const torch::Tensor& full, int64_t rank, int64_t n) {
  return ShardDim(full, 1, rank, n);
}

}  // namespace ftune::parallel
