#include "parallel/context_parallel.h"

#include "parallel/error.h"

namespace ftune::parallel {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

int64_t ChunkLength(int64_t t, int64_t cp) {
  FT_CHECK(cp >= 1, "context parallelism over {} ranks", cp);
  if (t % (2 * cp) != 0) {
    FT_THROW(ConfigError, "a sequence of {} tokens cannot be cut into 2 * parallel.cp = {} equal "
             "chunks; make the length a multiple of {}", t, 2 * cp, 2 * cp);
  }
  return t / (2 * cp);
}

// Query-key pairs of the queries at positions [a, b) under causal attention.
int64_t CausalPairs(int64_t a, int64_t b) { return (b * (b + 1) - a * (a + 1)) / 2; }

class GatherSequenceFn : public torch::autograd::Function<GatherSequenceFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t comm_handle,
                               int64_t dim) {
    auto& comm = *reinterpret_cast<Communicator*>(comm_handle);
    const int64_t n = comm.size();
    ctx->saved_data["comm"] = comm_handle;
    ctx->saved_data["dim"] = dim;
    const int64_t c = x.size(dim) / 2;
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.insert(shape.begin(), n);
    auto all = torch::empty(shape, x.options());  // (n, ...): rank q's two chunks at [q]
    auto in = x.contiguous();
    comm.AllGather(in, all)->Wait();
    std::vector<torch::Tensor> chunks;
    for (int64_t g = 0; g < 2 * n; ++g) {
      const int64_t owner = g < n ? g : 2 * n - 1 - g;
      chunks.push_back(all[owner].narrow(dim, g < n ? 0 : c, c));
    }
    return torch::cat(chunks, dim);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto& comm = *reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt());
    const int64_t dim = ctx->saved_data["dim"].toInt();
    const int64_t n = comm.size();
    const auto& g = grad[0];
    const int64_t c = g.size(dim) / (2 * n);
    std::vector<torch::Tensor> per_rank;  // rank q's chunks of the gradient, in its local order
    for (int64_t q = 0; q < n; ++q) {
      const auto ch = ContextChunks(n, q);
      per_rank.push_back(torch::cat({g.narrow(dim, ch[0] * c, c), g.narrow(dim, ch[1] * c, c)},
                                    dim));
    }
    auto in = torch::stack(per_rank).contiguous();
    auto out = torch::empty(per_rank[0].sizes(), g.options());
    comm.ReduceScatter(in, out)->Wait();
    return {out, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

std::array<int64_t, 2> ContextChunks(int64_t cp, int64_t rank) {
  FT_CHECK(rank >= 0 && rank < cp, "cp rank {} of {}", rank, cp);
  return {rank, 2 * cp - 1 - rank};
}

torch::Tensor ShardSequence(const torch::Tensor& x, int64_t cp, int64_t rank, int64_t dim) {
  if (!x.defined() || cp == 1) return x;
  const int64_t c = ChunkLength(x.size(dim), cp);
  const auto ch = ContextChunks(cp, rank);
  return torch::cat({x.narrow(dim, ch[0] * c, c), x.narrow(dim, ch[1] * c, c)}, dim);
}

std::vector<int64_t> AttentionWork(int64_t t, int64_t cp, bool balanced) {
  const int64_t c = ChunkLength(t, cp);
  std::vector<int64_t> work;
  for (int64_t r = 0; r < cp; ++r) {
    if (balanced) {
      int64_t w = 0;
      for (int64_t g : ContextChunks(cp, r)) w += CausalPairs(g * c, (g + 1) * c);
      work.push_back(w);
    } else {
      work.push_back(CausalPairs(r * 2 * c, (r + 1) * 2 * c));
    }
  }
  return work;
}

torch::Tensor GatherSequence(const torch::Tensor& x, Communicator& comm, int64_t dim) {
  if (comm.size() == 1) return x;
  FT_CHECK(x.size(dim) % 2 == 0, "GatherSequence: a local sequence of {} holds two equal chunks",
           x.size(dim));
  return GatherSequenceFn::apply(x, reinterpret_cast<int64_t>(&comm), dim);
}

}  // namespace ftune::parallel
