// `ftune plan`: per-GPU memory and per-step communication of every layout a job could use,
// before any GPU is spent. Pure arithmetic over the model config; nothing is allocated.
//
// A layout is dp x cp x tp (cp from the config: parallel.cp), a ZeRO stage and an activation
// checkpointing policy (the same
// ActivationCheckpointing object the trainer runs, runtime/activation_checkpointing.h), so every
// row is a run the trainer can do, and the row of a config's own settings is the run it does.
//
// Model state (what ftune's DataParallel allocates, parallel/data_parallel.cpp), with
// P = parameters per tensor-parallel rank, N = dp x cp, e = bytes per element of model.dtype:
//   parameters  P*e                (zero 0-2)    P/N*e (zero 3)
//   gradients   P*e                (zero 0-1)    P/N*4 (zero 2-3: the reduced shard is fp32)
//   moments     8*P (zero 0)       8*P/N (zero >= 1)
//   fp32 master 4*P (zero 0)       4*P/N (zero >= 1)     only when e != 4 (bf16)
// i.e. 16 bytes per parameter before sharding in both fp32 and bf16 (mixed-precision AdamW), and
// ZeRO-1 4P + 12P/N, ZeRO-2 2P + 16P/N, ZeRO-3 18P/N in bf16 (the ZeRO paper's 4+12/N, 2+14/N,
// 16/N, plus 2 bytes/param where ftune keeps the reduced gradient shard in fp32); in fp32
// 8P + 8P/N, 4P + 12P/N, 16P/N. With parallel.offload: optimizer the moments and the master
// leave the GPU; the host keeps them with an fp32 copy of the owned gradients: 16 bytes per owned
// parameter (P, or P/N at ZeRO >= 1), and each update thread's fp32 temporaries.
//
// Activations are what autograd keeps of ftune's Llama (models/llama.cpp) between forward and
// backward, tensor by tensor, per decoder layer and micro-batch (s tokens x b sequences, hidden
// h, q = heads*head_dim, kv = kv_heads*head_dim, ffn I; q, kv and I divided by tp):
//   none       each RMSNorm its input in fp32, its normalized output (e) and, on libtorch 1.x,
//              the squared input (mean's backward there keeps its input); the norms' outputs the
//              projections read (2 s*b*h*e); the attention's (below); the SwiGLU's gate, up,
//              silu(gate) and product (4 s*b*I*e).
//   selective  the layer's input, the outputs of q, k, v, o, gate, up and down and the
//              attention's output: (3h + 2q + 2kv + 2I) s*b*e; attention's scores are recomputed.
//   full       the layer's input, s*b*h*e.
//   every_n    full for every n-th layer, none for the others.
// With context parallelism every per-token term counts s = seq_len / cp tokens (the rank's
// chunks); the attention keeps the gathered K/V of the whole row.
// Attention, block-wise (models/attention.h: cp > 1, or rows of 1024+ tokens where libtorch has no
// fused attention): q, the output and the o_proj input of the rank's tokens, K and V of the whole
// row, the fp32 log-sum-exp; its backward's working set (a key block's fp32 scores for a query
// chunk, the fp32 gradients of q and the row's K/V) counts in the layer's backward.
// Attention, fused (GPU, libtorch >= 2: flash / memory-efficient SDPA): q, k, v, its output and
// the o_proj input, (3q + 2kv) s*b*e, and the log-sum-exp. Materialized (ftune's attention on
// libtorch 1.x, what CPU ranks on Debian 12 run): contiguous copies of q, k and v (k and v
// repeated to q's width under GQA), the fp32 softmax probabilities b*heads*s^2 (and their
// model-dtype copy in bf16), the causal mask (s^2 bytes) and the o_proj input.
// Beyond the layers: the final norm, the hidden rows the loss reads (s*b*h*e), the fp32 logits
// (s*b*V/tp, none kept past 1 GiB, where the cross-entropy chunks and recomputes them) and RoPE's
// cos/sin.
//
// The peak is the largest of three moments, each with what exists then besides the model state:
//   loss       the loss's backward: the kept activations, the logits (and their bf16 copy), the
//              gradients of the hidden rows, of the hidden states and of the lm_head; under ZeRO-3
//              the embedding, the head and the last layer whole.
//   layer i    layer i's backward (the largest over i): the kept activations of layers <= i,
//              layer i back at its full size when it recomputes (full, selective), the gradients
//              flowing through its SwiGLU and its output; under ZeRO-3 the embedding, the head,
//              layer i and the prefetched layer i-1 whole; under ZeRO-2/3 the gradients not yet
//              reduced: the lm_head's (reduced last), those of the layers after i in the bucket
//              still filling, and at most two buckets being reduce-scattered (each flattened,
//              with the owned slice it reduces into and, with staged_reductions, their fp32
//              staging); under ZeRO-0/1 with staged_reductions, the staging of the buckets
//              already all-reducing.
//   update     the end of backward and the optimizer step: the gradient reductions still in
//              flight (their fp32 staging, staged_reductions), then AdamW on each owned bucket
//              slice: two fp32 temporaries of the slice with the plain ops (none with the fused
//              kernel, libtorch >= 2.4) and, in bf16 under ZeRO-0/1, the gradient slice in fp32;
//              under ZeRO-1/2 at dp > 1 the copies of the owned slices being all-gathered.
// Checked against allocations on CPU ranks per policy and ZeRO stage
// (tests/mpi/plan_model_state_test.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/llama_config.h"
#include "runtime/activation_checkpointing.h"
#include "runtime/config.h"

namespace ftune::runtime {

// none, selective, every_2 and full, and `config` when it is another (e.g. every_4).
std::vector<ActivationCheckpointing> PlanPolicies(const ActivationCheckpointing& config);

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
  // Reductions of 16-bit gradients staged in fp32 buffers while in flight: the MPI backend (CPU
  // ranks); NCCL reduces bf16 as it is.
  bool staged_reductions = false;
  int64_t offload_threads = 4;  // parallel.offload_threads: host threads of an offloaded update
  double overhead_bytes = 3.0 * (1 << 30);  // CUDA context, NCCL buffers, allocator slack
  int64_t cp = 1;  // parallel.cp: each rank holds seq_len / cp tokens of every row
  // The policies each layout is planned with (PlanPolicies: none, selective, every_2, full and the
  // config's own).
  std::vector<ActivationCheckpointing> policies = PlanPolicies({});
};


// The run of `cfg` (dtype, sequence length, batch, bucket size, its policy among the planned ones)
// for `model` (its config.json or model.arch) on nodes x gpus_per_node GPUs of gpu_mem_bytes.
PlanInput PlanInputFor(const Config& cfg, const models::LlamaConfig& model, int64_t nodes,
                       int64_t gpus_per_node, double gpu_mem_bytes);

struct ModelState {
  double params = 0, grads = 0, optimizer = 0;  // optimizer = Adam moments + fp32 master
  double host = 0;  // parallel.offload: optimizer: master, moments and a gradient copy, 16 B/owned
  double total() const { return params + grads + optimizer; }  // on the GPU
};

// Activation memory of one micro-batch (see the file comment).
struct ActivationPlan {
  double layers = 0;       // kept between forward and backward, all decoder layers
  double head = 0;         // kept besides: the final norm, the loss's hidden rows, cos/sin
  double logits_kept = 0;  // the fp32 logits kept for backward (0 where the loss chunks them)
  // Kept from the end of forward to the start of backward.
  double kept() const { return layers + head + logits_kept; }
};

// The most bytes alive at once during a step besides the model state, and when.
struct StepPeak {
  enum class When { kLoss, kLayer, kUpdate };
  double bytes = 0;
  When when = When::kLoss;
  int64_t layer = -1;          // kLayer: the layer whose backward it is
  double activations = 0;      // of `bytes`: activations, recompute and gradients flowing
  double gathered = 0;         // of `bytes`: ZeRO-3 parameters gathered
  double grads = 0;            // of `bytes`: ZeRO-2/3 full-size gradients not yet reduced
  const char* Name() const;    // "loss", "layer", "update"
};

struct LayoutPlan {
  int64_t dp = 1, cp = 1, tp = 1, zero = 0;  // ZeRO shards span dp x cp
  ActivationCheckpointing checkpointing;
  bool offload = false;        // parallel.offload: optimizer
  int64_t params_per_gpu = 0;  // P: parameters of this tp rank's shard
  ModelState state;
  ActivationPlan acts;         // per micro-batch
  StepPeak peak;               // above the model state
  double overhead = 0;
  double total = 0;            // state + peak + overhead (GPU memory)
  double host = 0;             // host memory per GPU: the offloaded state + its update's temporaries
  bool fits = false;           // total <= GPU memory
  bool headroom = false;       // total <= 90 % of it (fragmentation, estimate error)
  double recompute = 0;        // extra compute: the step's FLOPs spent recomputing, as a fraction
  double dp_comm_bytes = 0;    // sent per GPU per optimizer step, ring algorithms
  double tp_comm_bytes = 0;
  double cp_comm_bytes = 0;    // K/V all-gathers and their gradients' reduce-scatters
};

// Parameters of one tp rank's shard (tp = 1: the whole model).
int64_t ParamsPerTpRank(const models::LlamaConfig& cfg, int64_t tp);

// ftune's persistent model state per GPU for a layout (see the file comment).
ModelState PlanModelState(const models::LlamaConfig& cfg, int64_t elem_bytes, int64_t dp,
                          int64_t tp, int64_t zero);

// Activation memory of one micro-batch on one tp rank under `policy`.
ActivationPlan PlanActivations(const PlanInput& in, int64_t tp,
                               const ActivationCheckpointing& policy);

// One layout (every term of the file comment).
LayoutPlan PlanLayout(const PlanInput& in, int64_t dp, int64_t tp, int64_t zero,
                      const ActivationCheckpointing& policy, bool offload = false);

// Every layout of nodes x gpus_per_node GPUs: tp a divisor of gpus_per_node that the model
// allows (heads, kv heads, intermediate and vocab divisible), dp = GPUs / tp, zero 0-3, each of
// in.policies, without and with optimizer offload.
std::vector<LayoutPlan> PlanLayouts(const PlanInput& in);

// The layout `cfg` asks for (parallel.dp, parallel.tp, parallel.zero and its policy) on in's GPUs.
// Throws ConfigError naming the key when it does not fill them or the model cannot run it.
LayoutPlan PlanConfigLayout(const PlanInput& in, const Config& cfg);

// The longest data.max_seq_len (a multiple of 2 * cp * 64, at most 16M) that `cfg`'s layout
// (PlanConfigLayout) fits into the GPU memory with, or 0 when not even the shortest does.
int64_t PlanMaxSeqLen(PlanInput in, const Config& cfg);

// The layout to use among those that fit with 10 % headroom (else among those that fit at all),
// or -1: first one without optimizer offload (PCIe copies and a host AdamW every step), then one
// that recomputes no whole layer (none, selective: at most a few percent more
// compute; every_n and full cost up to a third), then the smallest tp (its all-reduces sit on the
// critical path of every layer), then the least recompute, then the fewest bytes sent over dp
// (ZeRO-2 sends less than ZeRO-1, ZeRO-3 re-gathers every micro-batch), then the lowest stage.
int RecommendLayout(const std::vector<LayoutPlan>& plans);

// The human-readable report `ftune plan` prints; `config` (may be null) is the layout the config
// asks for, reported on its own line.
std::string PlanReport(const PlanInput& in, const std::vector<LayoutPlan>& plans,
                       const LayoutPlan* config = nullptr);

}  // namespace ftune::runtime
