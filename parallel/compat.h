// Every difference between the libtorch versions ftune builds against (Debian's
// 1.13 CPU build, and 2.x builds with CUDA) lives in this one header. It sits in
// parallel/, the bottom layer, so that every layer (models too) can use it.
#pragma once

#include <cstdlib>

#include <torch/torch.h>
#include <torch/version.h>

#include <string>
#include <type_traits>
#include <vector>

#ifdef FTUNE_WITH_NCCL  // defined exactly when libtorch has CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#include <torch/cuda.h>
#define FTUNE_HAS_C10_CUDA 1
#if __has_include(<nvtx3/nvToolsExt.h>)  // the CUDA toolkit's header-only NVTX 3
#include <nvtx3/nvToolsExt.h>
#define FTUNE_HAS_NVTX 1
#endif
#endif

namespace ftune::compat {

// Runs `fn` after autograd has accumulated a gradient into leaf `param`.grad
// (a post-hook on its AccumulateGrad node; PyTorch DDP's readiness signal).
// The returned node must be kept alive as long as the hook is wanted.
inline std::shared_ptr<torch::autograd::Node> AddPostAccumulateHook(
    const torch::Tensor& param, std::function<void()> fn) {
  struct Hook : torch::autograd::FunctionPostHook {
    explicit Hook(std::function<void()> f) : fn(std::move(f)) {}
    torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                              const torch::autograd::variable_list&) override {
      fn();
      return outputs;
    }
    std::function<void()> fn;
  };
  auto acc = torch::autograd::impl::grad_accumulator(param);
  acc->add_post_hook(std::make_unique<Hook>(std::move(fn)));
  return acc;
}

inline std::string TorchVersion() { return TORCH_VERSION; }

inline constexpr bool kTorch2 = TORCH_VERSION_MAJOR >= 2;

inline bool CudaAvailable() { return torch::cuda::is_available(); }
inline int CudaDeviceCount() { return static_cast<int>(torch::cuda::device_count()); }
inline void SetCudaDevice(int index) {
#ifdef FTUNE_HAS_C10_CUDA
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(index));
#else
  (void)index;
#endif
}

// Waits for the device's queued work (no-op on the CPU): for timing.
inline void SynchronizeDevice(const torch::Device& device) {
#ifdef FTUNE_HAS_C10_CUDA
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
#else
  (void)device;
#endif
}

// The device's marketing name ("NVIDIA H100 80GB HBM3"; "cpu" for the CPU).
inline std::string DeviceName(const torch::Device& device) {
#ifdef FTUNE_HAS_C10_CUDA
  if (device.is_cuda()) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device.index()) == cudaSuccess) return prop.name;
  }
#endif
  return device.str();
}

// libtorch's deterministic algorithms on or off (run.deterministic). cuBLAS needs a fixed
// workspace for deterministic GEMMs: CUBLAS_WORKSPACE_CONFIG is set unless the user set it
// (before the first cuBLAS call; SetUpRun runs before any compute).
inline void SetDeterministic(bool on) {
  if (on) ::setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
  at::globalContext().setDeterministicAlgorithms(on, /*warn_only=*/false);
}

// Peak bytes the caching allocator has handed out on a CUDA device (0 on the CPU).
// The caching allocator's bytes on a CUDA device: allocated now, reserved now, peak allocated.
// All 0 on other devices.
struct DeviceMemory {
  int64_t allocated = 0, reserved = 0, peak = 0;
};
inline DeviceMemory DeviceMemoryStats(const torch::Device& device) {
  DeviceMemory m;
#ifdef FTUNE_HAS_C10_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    m.allocated = stats.allocated_bytes[0].current;  // [0]: StatType::AGGREGATE (as below)
    m.reserved = stats.reserved_bytes[0].current;
    m.peak = stats.allocated_bytes[0].peak;
  }
#else
  (void)device;
#endif
  return m;
}

inline int64_t PeakDeviceMemory(const torch::Device& device) {
#ifdef FTUNE_HAS_C10_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    // Entry 0 is StatType::AGGREGATE (all pools), first in every version; the enum itself moved
    // from c10::cuda::CUDACachingAllocator to c10::CachingDeviceAllocator in libtorch 2.x.
    return stats.allocated_bytes[0].peak;
  }
#else
  (void)device;
#endif
  return 0;
}

// Causal self-attention over (B, H, T, D) q and (B, Hkv, T, D) k, v with GQA:
// on libtorch >= 2.0 through at::scaled_dot_product_attention (flash / memory
// efficient kernels), on 1.13 through the explicit softmax(QK^T/sqrt(d))V path.
// `mask` (optional, bool (B|1, 1, T, S), true = attend) replaces the causal mask. With
// causal and S > T (cached keys) the queries are the last T positions (bottom-right alignment).
inline torch::Tensor Attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& mask,
                               bool causal) {
  const int64_t h = q.size(1), hkv = k.size(1);
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
  // SDPA's own grouped-query attention (libtorch >= 2.5): the flash kernel reads each K/V head
  // for its group of query heads, so the repeated K/V are never materialised. Only on the
  // maskless path, where flash runs; with a mask the memory-efficient kernel, which lacks GQA,
  // would give way to the math fallback.
  if (h != hkv && !mask.defined() && (!causal || q.size(2) == k.size(2))) {
    return at::scaled_dot_product_attention(q, k, v, {}, 0.0, causal, std::nullopt,
                                            /*enable_gqa=*/true);
  }
#endif
  torch::Tensor kk = k, vv = v;
  if (h != hkv) {
    // (B, Hkv, S, D) -> (B, H, S, D) as an expand+reshape (one copy, no repeat_interleave loop).
    const int64_t rep = h / hkv;
    kk = k.unsqueeze(2).expand({k.size(0), hkv, rep, k.size(2), k.size(3)})
             .reshape({k.size(0), h, k.size(2), k.size(3)});
    vv = v.unsqueeze(2).expand({v.size(0), hkv, rep, v.size(2), v.size(3)})
             .reshape({v.size(0), h, v.size(2), v.size(3)});
  }
#if TORCH_VERSION_MAJOR >= 2
  if (mask.defined()) {
    return at::scaled_dot_product_attention(q, kk, vv, mask, 0.0, false);
  }
  const int64_t t = q.size(2), s = kk.size(2);
  if (causal && t != s) {
    // SDPA's is_causal aligns the mask top-left; with cached keys (t < s) the queries are the
    // last t positions, so build the bottom-right aligned mask explicitly.
    auto keep = torch::ones({t, s}, torch::dtype(torch::kBool).device(q.device())).tril(s - t);
    return at::scaled_dot_product_attention(q, kk, vv, keep, 0.0, false);
  }
  return at::scaled_dot_product_attention(q, kk, vv, {}, 0.0, causal);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto att = torch::matmul(q, kk.transpose(-2, -1)) * scale;  // (B, H, T, S)
  if (mask.defined()) {
    att = att.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  } else if (causal) {
    const int64_t t = q.size(2), s = kk.size(2);
    auto keep = torch::ones({t, s}, torch::dtype(torch::kBool).device(q.device())).tril(s - t);
    att = att.masked_fill(keep.logical_not(), -std::numeric_limits<float>::infinity());
  }
  att = torch::softmax(att.to(c10::promoteTypes(att.scalar_type(), torch::kFloat)), -1)
            .to(q.scalar_type());
  return torch::matmul(att, vv);
#endif
}

// AdamW's update of one flat fp32 slice as one fused kernel (libtorch >= 2.4, CUDA and CPU):
// param -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps) after the moments'
// update, the plain ops' arithmetic in one pass instead of eight. Weight decay is the caller's
// (only some elements decay). `step` is a 0-dim fp32 tensor on the slice's device holding t,
// read there (no host synchronisation). Returns false where libtorch has no such kernel.
inline bool FusedAdamW(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                       const at::Tensor& exp_avg_sq, const at::Tensor& step, double lr,
                       double beta1, double beta2, double eps) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  at::_fused_adamw_({param}, {grad}, {exp_avg}, {exp_avg_sq}, {}, {step}, lr, beta1, beta2,
                    /*weight_decay=*/0.0, eps, /*amsgrad=*/false, /*maximize=*/false);
  return true;
#else
  (void)param, (void)grad, (void)exp_avg, (void)exp_avg_sq, (void)step;
  (void)lr, (void)beta1, (void)beta2, (void)eps;
  return false;
#endif
}
inline constexpr bool kFusedAdamW =
    TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4);

// Counts the device synchronisations libtorch reports while alive (CUDA's sync debug mode, set
// to warn, with a warning handler that records instead of printing): how a test sees what a
// training step waits for. Warnings raised in autograd's device threads reach it at the end of
// backward. kAvailable is false (and count() 0) where libtorch has no CUDA or is older than 2.0.
#if defined(FTUNE_HAS_C10_CUDA) && TORCH_VERSION_MAJOR >= 2
class SyncCounter : public c10::WarningHandler {
 public:
  static constexpr bool kAvailable = true;
  SyncCounter()
      : previous_(c10::WarningUtils::get_warning_handler()),
        mode_(c10::cuda::warning_state().get_sync_debug_mode()) {
    c10::WarningUtils::set_warning_handler(this);
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN);
  }
  ~SyncCounter() override {
    c10::cuda::warning_state().set_sync_debug_mode(mode_);
    c10::WarningUtils::set_warning_handler(previous_);
  }
  SyncCounter(const SyncCounter&) = delete;
  SyncCounter& operator=(const SyncCounter&) = delete;
  void process(const c10::Warning& w) override {
    if (w.msg().find("synchroniz") != std::string::npos) {
      messages_.push_back(w.msg());
    } else {
      previous_->process(w);
    }
  }
  int64_t count() const { return static_cast<int64_t>(messages_.size()); }
  const std::vector<std::string>& messages() const { return messages_; }

 private:
  c10::WarningHandler* previous_;
  c10::cuda::SyncDebugMode mode_;
  std::vector<std::string> messages_;
};
#else
class SyncCounter {
 public:
  static constexpr bool kAvailable = false;
  int64_t count() const { return 0; }
  const std::vector<std::string>& messages() const { return messages_; }

 private:
  std::vector<std::string> messages_;
};
#endif

// NVTX ranges, which nsys shows on its timeline: in CUDA builds where the toolkit has nvtx3;
// no-ops elsewhere (and cheap while no tool listens).
inline void NvtxPush(const char* name) {
#ifdef FTUNE_HAS_NVTX
  nvtxRangePushA(name);
#else
  (void)name;
#endif
}
inline void NvtxPop() {
#ifdef FTUNE_HAS_NVTX
  nvtxRangePop();
#endif
}

// A profiler event's (torch::autograd::profiler::KinetoEvent) start and duration in ns: libtorch
// 2.x has startNs() / durationNs(), 1.13 startUs() / durationUs().
template <class Event, class = void>
struct HasNsTimes : std::false_type {};
template <class Event>
struct HasNsTimes<Event, std::void_t<decltype(std::declval<const Event&>().durationNs())>>
    : std::true_type {};
template <class Event>
int64_t EventStartNs(const Event& e) {
  if constexpr (HasNsTimes<Event>::value) {
    return static_cast<int64_t>(e.startNs());
  } else {
    return static_cast<int64_t>(e.startUs()) * 1000;
  }
}
template <class Event>
int64_t EventDurationNs(const Event& e) {
  if constexpr (HasNsTimes<Event>::value) {
    return static_cast<int64_t>(e.durationNs());
  } else {
    return static_cast<int64_t>(e.durationUs()) * 1000;
  }
}

}  // namespace ftune::compat
