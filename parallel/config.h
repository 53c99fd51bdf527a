// The `parallel` config section: how ranks are laid out and synchronised.
#pragma once

#include <cstdint>
#include <string>

#include "parallel/config_fields.h"

namespace ftune::parallel {

struct ParallelConfig {
  int64_t dp = -1;          // data-parallel ranks; -1 = world_size / (cp * tp)
  int64_t tp = 1;           // tensor-parallel ranks (Megatron style) per model replica
  // context-parallel ranks per replica: each holds 2 of 2*cp load-balanced chunks of every row
  // (long sequences: activations per rank fall as 1/cp); gradients and ZeRO span dp x cp
  int64_t cp = 1;
  int64_t zero = 0;         // ZeRO stage: 0 none, 1 optimizer state, 2 +gradients, 3 +parameters
  double bucket_mb = 25.0;  // gradient all-reduce bucket size; larger = fewer, bigger messages
  std::string backend = "auto";  // data communicators: auto (nccl on an unshared GPU), mpi, nccl
  double timeout_s = 300;   // a collective waiting longer than this aborts the job (lost rank)
  // none | optimizer: fp32 master weights and AdamW moments in host memory, updated there on
  // host threads (frees 12 bytes per owned parameter of GPU memory; costs PCIe copies and host
  // compute every step). Composes with every ZeRO stage and tp.
  std::string offload = "none";
  int64_t offload_threads = 4;  // host threads updating the buckets (offload: optimizer)

  template <class V>
  void VisitFields(V& v) {
    v("dp", dp, "data-parallel ranks; -1 = world_size / (cp * tp)");
    v("tp", tp, "tensor-parallel ranks per model replica");
    v("cp", cp, "context-parallel ranks: the sequence split over cp ranks (long context)");
    v("zero", zero, "ZeRO stage 0-3 (optimizer state, +grads, +params sharded over dp x cp)");
    v("bucket_mb", bucket_mb, "gradient all-reduce bucket size in MB");
    v("backend", backend, "auto | mpi | nccl");
    v("timeout_s", timeout_s, "seconds a collective may wait before the job aborts");
    v("offload", offload, "none | optimizer (master weights + AdamW moments in host memory)");
    v("offload_threads", offload_threads, "host threads of the offloaded optimizer step");
  }
  void Validate() const {
    if (dp != -1 && dp < 1) throw ConfigKeyError("dp", "must be >= 1 or -1 (auto)");
    CheckRange<int64_t>("tp", tp, 1, 1 << 16);
    CheckRange<int64_t>("cp", cp, 1, 1 << 16);
    CheckRange<int64_t>("zero", zero, 0, 3);
    CheckRange("bucket_mb", bucket_mb, 0.001, 1e6);
    CheckOneOf("backend", backend, {"auto", "mpi", "nccl"});
    CheckRange("timeout_s", timeout_s, 1.0, 1e7);
    CheckOneOf("offload", offload, {"none", "optimizer"});
    CheckRange<int64_t>("offload_threads", offload_threads, 1, 1024);
  }
};

}  // namespace ftune::parallel
