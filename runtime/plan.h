// `ftune plan`: per-GPU memory and per-step communication of every layout a job could use,
// before any GPU is spent. Pure arithmetic over the model config; nothing is allocated.
//
// Model state (what ftune's DataParallel allocates, parallel/data_parallel.cpp), with
// P = parameters per tensor-parallel rank, N = dp, e = bytes per element of model.dtype:
//   parameters  P*e                (zero 0-2)    P/N*e (zero 3)
//   gradients   P*e                (zero 0-1)    P/N*4 (zero 2-3: the reduced shard is fp32)
//   moments     8*P (zero 0)       8*P/N (zero >= 1)
//   fp32 master 4*P (zero 0)       4*P/N (zero >= 1)     only when e != 4 (bf16)
// i.e. 16 bytes per parameter before sharding in both fp32 and bf16 (mixed-precision AdamW), and
// ZeRO-1 4P + 12P/N, ZeRO-2 2P + 16P/N, ZeRO-3 18P/N in bf16 (the ZeRO paper's 4+12/N, 2+14/N,
// 16/N, plus 2 bytes/param where ftune keeps the reduced gradient shard in fp32); in fp32
// 8P + 8P/N, 4P + 12P/N, 16P/N.
//
// Activations per decoder layer and micro-batch follow Korthikanti et al. 2022 ("Reducing
// Activation Recomputation in Large Transformer Models", section 4: what backward keeps), adapted
// to Llama: no dropout (no masks), RMSNorm inputs (2 x s*b*h), the attention's input s*b*h,
// q and k/v (GQA: s*b*kv_dim each) and the o_proj input, the SwiGLU MLP's input and four
// s*b*intermediate tensors (gate, up, silu(gate), product); everything after a column-parallel
// split divided by tp (no sequence parallelism). The a*s^2 softmax term applies only without
// flash attention (CPU: libtorch's attention keeps the probabilities). Activation checkpointing
// keeps each layer's input (s*b*h) plus one layer's activations while it is recomputed.
// Logits: fp32 (s*b*V/tp) and their gradient, capped by the cross-entropy's 1 GiB chunking.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/llama_config.h"

namespace ftune::runtime {

struct PlanInput {
  models::LlamaConfig model;
  int64_t elem_bytes = 2;     // model.dtype: 2 (bf16) or 4 (fp32)
  int64_t seq_len = 2048;     // data.max_seq_len
  int64_t micro_batch = 1;    // train.micro_batch
  int64_t grad_accum = 1;     // train.grad_accum
  int64_t nodes = 1;
  int64_t gpus_per_node = 8;
  double gpu_mem_bytes = 80e9;
  double bucket_bytes = 25.0 * (1 << 20);  // parallel.bucket_mb
  bool flash_attention = true;        // GPU with libtorch >= 2 (scaled_dot_product_attention)
  double overhead_bytes = 3.0 * (1 << 30);  // CUDA context, NCCL buffers, allocator slack
};

struct ModelState {
  double params = 0, grads = 0, optimizer = 0;  // optimizer = Adam moments + fp32 master
  double total() const { return params + grads + optimizer; }
};

struct LayoutPlan {
  int64_t dp = 1, tp = 1, zero = 0;
  bool activation_checkpointing = false;
  int64_t params_per_gpu = 0;  // P: parameters of this tp rank's shard
  ModelState state;
  double transient = 0;        // ZeRO-3 gathered units, ZeRO-2/3 full-size gradients in flight
  double activations = 0;      // per micro-batch, all layers
  double logits = 0;
  double overhead = 0;
  double total = 0;
  bool fits = false;           // total <= GPU memory
  bool headroom = false;       // total <= 90 % of it (fragmentation, estimate error)
  double dp_comm_bytes = 0;    // sent per GPU per optimizer step, ring algorithms
  double tp_comm_bytes = 0;
};

// Parameters of one tp rank's shard (tp = 1: the whole model).
int64_t ParamsPerTpRank(const models::LlamaConfig& cfg, int64_t tp);

// ftune's persistent model state per GPU for a layout (see the file comment).
ModelState PlanModelState(const models::LlamaConfig& cfg, int64_t elem_bytes, int64_t dp,
                          int64_t tp, int64_t zero);

// Every layout of nodes x gpus_per_node GPUs: tp a divisor of gpus_per_node that the model
// allows (heads, kv heads, intermediate and vocab divisible), dp = GPUs / tp, zero 0-3,
// activation checkpointing off and on.
std::vector<LayoutPlan> PlanLayouts(const PlanInput& in);

// The layout to use among those that fit with 10 % headroom (else among those that fit at all),
// or -1: without activation checkpointing if any qualifies (a third less compute), then the
// smallest tp (its all-reduces sit on the critical path of every layer), then the lowest ZeRO
// stage (ZeRO-3 moves 1.5x the bytes of ZeRO-2 and re-gathers per micro-batch).
int RecommendLayout(const std::vector<LayoutPlan>& plans);

// The human-readable report `ftune plan` prints.
std::string PlanReport(const PlanInput& in, const std::vector<LayoutPlan>& plans);

}  // namespace ftune::runtime
