#include "models/attention.h"

#include <cmath>
#include <limits>
#include <vector>

#include "parallel/compat.h"
#include "parallel/context_parallel.h"
#include "parallel/error.h"

namespace ftune::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// fp32 for fp32 and narrower inputs (bf16, fp16), fp64 for fp64 (the tests' exact reference).
c10::ScalarType AccumulationType(const torch::Tensor& x) {
  return c10::promoteTypes(x.scalar_type(), torch::kFloat);
}

// The blocks of keys [a, e) a query block sees, and whether a block needs the causal mask.
struct KeyBlocks {
  int64_t q_start, t, last, block;
  KeyBlocks(int64_t q_start_, int64_t t_, int64_t s, int64_t block_)
      : q_start(q_start_), t(t_), last(std::min(s, q_start_ + t_)), block(block_) {}
  // keep (R, e - a): key a + j is visible to grouped query row i (position q_start + i % t).
  torch::Tensor Keep(int64_t a, int64_t e, int64_t rows, const torch::Device& dev) const {
    auto opt = torch::dtype(torch::kLong).device(dev);
    auto qpos = torch::arange(rows, opt).remainder(t) + q_start;
    return torch::arange(a, e, opt).unsqueeze(0) <= qpos.unsqueeze(1);
  }
  bool Partial(int64_t e) const { return e - 1 > q_start; }
};

// fp32 scores of the grouped queries against keys [a, e), masked where causality hides them.
torch::Tensor Scores(const KeyBlocks& kb, const torch::Tensor& qf, const torch::Tensor& kf,
                     int64_t a, int64_t e, double scale) {
  auto s = torch::matmul(qf, kf.narrow(2, a, e - a).transpose(-2, -1)).mul_(scale);
  if (kb.Partial(e)) s.masked_fill_(kb.Keep(a, e, qf.size(2), qf.device()).logical_not(), kNegInf);
  return s;
}

// One tile of grouped queries: rows [i0, i0 + n) of every query head, as (B, Hkv, rep * n, D).
torch::Tensor Tile(const torch::Tensor& x5, int64_t i0, int64_t n) {
  return x5.narrow(3, i0, n).reshape({x5.size(0), x5.size(1), -1, x5.size(4)});
}

// Query tiles of `block` queries, each against the key blocks up to its last query: the
// causal half of the score matrix, at block granularity.
class BlockCausalAttentionFn : public torch::autograd::Function<BlockCausalAttentionFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, int64_t q_start, int64_t block) {
    const int64_t b = q.size(0), t = q.size(2), d = q.size(3), hkv = k.size(1);
    const int64_t rep = q.size(1) / hkv;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const auto acc_t = AccumulationType(q);
    auto q5 = q.to(acc_t).reshape({b, hkv, rep, t, d});
    auto kf = k.to(acc_t), vf = v.to(acc_t);
    auto out = torch::empty_like(q5);
    auto lse = torch::empty({b, hkv, rep, t}, q5.options());
    for (int64_t i0 = 0; i0 < t; i0 += block) {
      const int64_t n = std::min(block, t - i0);
      const KeyBlocks kb(q_start + i0, n, k.size(2), block);
      auto qt = Tile(q5, i0, n);
      auto m = torch::full({b, hkv, qt.size(2)}, kNegInf, qt.options());
      auto l = torch::zeros_like(m);
      auto acc = torch::zeros_like(qt);
      // Block 0 holds key 0, which every query sees: m is finite from the first block on.
      for (int64_t a = 0; a < kb.last; a += block) {
        const int64_t e = std::min(a + block, kb.last);
        auto s = Scores(kb, qt, kf, a, e, scale);
        auto m_new = torch::maximum(m, std::get<0>(s.max(-1)));
        auto p = s.sub_(m_new.unsqueeze(-1)).exp_();
        auto corr = (m - m_new).exp_();
        l.mul_(corr).add_(p.sum(-1));
        acc.mul_(corr.unsqueeze(-1)).add_(torch::matmul(p, vf.narrow(2, a, e - a)));
        m = m_new;
      }
      out.narrow(3, i0, n).copy_(acc.div_(l.unsqueeze(-1)).view({b, hkv, rep, n, d}));
      lse.narrow(3, i0, n).copy_(m.add_(l.log_()).view({b, hkv, rep, n}));
    }
    auto y = out.view(q.sizes()).to(q.scalar_type());
    ctx->save_for_backward({q, k, v, y, lse});
    ctx->saved_data["q_start"] = q_start;
    ctx->saved_data["block"] = block;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &y = saved[3], &lse = saved[4];
    const int64_t q_start = ctx->saved_data["q_start"].toInt();
    const int64_t block = ctx->saved_data["block"].toInt();
    const int64_t b = q.size(0), t = q.size(2), d = q.size(3), hkv = k.size(1);
    const int64_t rep = q.size(1) / hkv;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const auto acc_t = AccumulationType(q);
    auto q5 = q.to(acc_t).reshape({b, hkv, rep, t, d});
    auto go5 = grad[0].to(acc_t).reshape({b, hkv, rep, t, d});
    auto delta5 = (go5 * y.to(acc_t).reshape({b, hkv, rep, t, d})).sum(-1, /*keepdim=*/true);
    auto kf = k.to(acc_t), vf = v.to(acc_t);
    auto dq5 = torch::empty_like(q5);
    auto dk = torch::zeros_like(kf), dv = torch::zeros_like(vf);
    for (int64_t i0 = 0; i0 < t; i0 += block) {
      const int64_t n = std::min(block, t - i0);
      const KeyBlocks kb(q_start + i0, n, k.size(2), block);
      auto qt = Tile(q5, i0, n), go = Tile(go5, i0, n), delta = Tile(delta5, i0, n);
      auto lse_t = lse.narrow(3, i0, n).reshape({b, hkv, -1, 1});
      auto dq = torch::zeros_like(qt);
      for (int64_t a = 0; a < kb.last; a += block) {
        const int64_t e = std::min(a + block, kb.last);
        auto p = Scores(kb, qt, kf, a, e, scale).sub_(lse_t).exp_();  // (B, Hkv, R, e - a)
        dv.narrow(2, a, e - a).add_(torch::matmul(p.transpose(-2, -1), go));
        auto ds = torch::matmul(go, vf.narrow(2, a, e - a).transpose(-2, -1)).sub_(delta).mul_(p)
                      .mul_(scale);
        dq.add_(torch::matmul(ds, kf.narrow(2, a, e - a)));
        dk.narrow(2, a, e - a).add_(torch::matmul(ds.transpose(-2, -1), qt));
      }
      dq5.narrow(3, i0, n).copy_(dq.view({b, hkv, rep, n, d}));
    }
    return {dq5.view(q.sizes()).to(q.scalar_type()), dk.to(k.scalar_type()),
            dv.to(v.scalar_type()), torch::Tensor(), torch::Tensor()};
  }
};

// Packed rows: attention document by document, each causal, no mask across documents.
torch::Tensor DocumentCausalAttention(const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& v, const torch::Tensor& segment_ids) {
  const auto seg = segment_ids.to(torch::kCPU, torch::kLong).contiguous();
  FT_CHECK(seg.dim() == 2 && seg.size(0) == q.size(0) && seg.size(1) == q.size(2),
           "segment_ids {} for queries {}", c10::str(seg.sizes()), c10::str(q.sizes()));
  const int64_t b = q.size(0), t = q.size(2);
  const int64_t* id = seg.data_ptr<int64_t>();
  std::vector<torch::Tensor> rows;
  for (int64_t r = 0; r < b; ++r) {
    std::vector<torch::Tensor> docs;
    auto qr = q.narrow(0, r, 1), kr = k.narrow(0, r, 1), vr = v.narrow(0, r, 1);
    for (int64_t a = 0; a < t;) {
      int64_t e = a + 1;
      while (e < t && id[r * t + e] == id[r * t + a]) ++e;
      docs.push_back(compat::Attention(qr.narrow(2, a, e - a), kr.narrow(2, a, e - a),
                                       vr.narrow(2, a, e - a), {}, /*causal=*/true));
      a = e;
    }
    rows.push_back(docs.size() == 1 ? docs[0] : torch::cat(docs, 2));
  }
  return rows.size() == 1 ? rows[0] : torch::cat(rows, 0);
}

// Context parallelism: this rank's chunks g0, g1 of every row attend to the gathered keys.
torch::Tensor ContextParallelAttention(const torch::Tensor& q, const torch::Tensor& k,
                                       const torch::Tensor& v, parallel::Communicator& cp) {
  const int64_t d = k.size(3), c = q.size(2) / 2;
  auto kv = parallel::GatherSequence(torch::cat({k, v}, -1), cp, /*dim=*/2);  // (B, Hkv, T, 2D)
  const auto ch = parallel::ContextChunks(cp.size(), cp.rank());
  std::vector<torch::Tensor> out;
  for (int64_t i = 0; i < 2; ++i) {
    const int64_t end = (ch[i] + 1) * c;  // the keys up to the end of this chunk
    out.push_back(BlockCausalAttention(q.narrow(2, i * c, c), kv.narrow(2, 0, end).narrow(3, 0, d),
                                       kv.narrow(2, 0, end).narrow(3, d, d), ch[i] * c));
  }
  return torch::cat(out, 2);
}

}  // namespace

torch::Tensor BlockCausalAttention(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, int64_t q_start, int64_t block) {
  FT_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && q.size(0) == k.size(0) &&
               q.size(3) == k.size(3) && q.size(1) % k.size(1) == 0,
           "BlockCausalAttention: q {} k {} v {}", c10::str(q.sizes()), c10::str(k.sizes()),
           c10::str(v.sizes()));
  FT_CHECK(q_start >= 0 && k.size(2) >= q_start + q.size(2) && block > 0,
           "BlockCausalAttention: {} queries from position {} over {} keys (block {})", q.size(2),
           q_start, k.size(2), block);
  return BlockCausalAttentionFn::apply(q, k, v, q_start, block);
}

torch::Tensor CausalAttention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const AttentionLayout& layout) {
  if (layout.cp != nullptr && layout.cp->size() > 1) {
    FT_CHECK(!layout.mask.defined() && !layout.segment_ids.defined(),
             "context-parallel attention takes neither a KV cache nor packed rows");
    return ContextParallelAttention(q, k, v, *layout.cp);
  }
  if (layout.segment_ids.defined()) {
    FT_CHECK(!layout.mask.defined(), "packed rows cannot be combined with a KV cache");
    if (q.size(2) >= kLongRowTokens) return DocumentCausalAttention(q, k, v, layout.segment_ids);
    // A short row: one call with its (same document & causal) mask, T^2 bools per row, beats
    // dozens of tiny per-document calls (demo rows of 192 tokens: 10 % faster per step on CPU).
    const auto seg = layout.segment_ids.to(q.device());
    const int64_t t = q.size(2);
    auto causal = torch::ones({t, t}, torch::dtype(torch::kBool).device(q.device())).tril();
    return compat::Attention(q, k, v, ((seg.unsqueeze(2) == seg.unsqueeze(1)) & causal).unsqueeze(1),
                             /*causal=*/true);
  }
  if ((!compat::kTorch2 || q.is_cpu()) && !layout.mask.defined() && q.size(2) >= kLongRowTokens) {
    return BlockCausalAttention(q, k, v, 0);
  }
  return compat::Attention(q, k, v, layout.mask, /*causal=*/true);
}

}  // namespace ftune::models
