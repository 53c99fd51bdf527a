// Bytes of CPU tensor memory in use, counted at libtorch's CPU allocator: while a
// TensorMemoryCounter is alive, every CPU tensor allocation goes through it (c10's allocator
// registry), so `in_use()` is exactly the tensor bytes allocated since it was installed and not
// yet freed, and `peak()` the most of them at any moment (BLAS and MPI buffers are not tensors and
// not counted). What `ftune plan` predicts is tensor memory, so this is what the tests compare it
// with. One at a time; tensors allocated while it is installed may outlive it.
#pragma once

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

namespace ftune::testing {

class TensorMemoryCounter final : public c10::Allocator {
 public:
  TensorMemoryCounter() : inner_(c10::GetCPUAllocator()), state_(std::make_shared<State>()) {
    c10::SetCPUAllocator(this, kPriority);
  }
  ~TensorMemoryCounter() { c10::SetCPUAllocator(inner_, kPriority); }
  TensorMemoryCounter(const TensorMemoryCounter&) = delete;
  TensorMemoryCounter& operator=(const TensorMemoryCounter&) = delete;

  int64_t in_use() const { return state_->in_use.load(); }
  int64_t peak() const { return state_->peak.load(); }
  void ResetPeak() { state_->peak.store(state_->in_use.load()); }

  // c10::Allocator, without `override`: libtorch 1.13 declares allocate const, 2.3 and later
  // non-const, and 2.x adds copy_data; each version overrides what it declares.
  c10::DataPtr allocate(size_t n) {
    return static_cast<const TensorMemoryCounter*>(this)->allocate(n);
  }
  c10::DataPtr allocate(size_t n) const {
    auto* record = new Record{inner_->allocate(n), static_cast<int64_t>(n), state_};
    const int64_t now = state_->in_use.fetch_add(record->bytes) + record->bytes;
    int64_t peak = state_->peak.load();
    while (now > peak && !state_->peak.compare_exchange_weak(peak, now)) {
    }
    void* data = record->inner.get();
    const c10::Device device = record->inner.device();
    return c10::DataPtr(data, record, &Free, device);
  }
  c10::DeleterFnPtr raw_deleter() const { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const {
    std::copy_n(static_cast<const char*>(src), count, static_cast<char*>(dest));
  }

 private:
  static constexpr uint8_t kPriority = 100;
  struct State {
    std::atomic<int64_t> in_use{0}, peak{0};
  };
  struct Record {
    c10::DataPtr inner;
    int64_t bytes;
    std::shared_ptr<State> state;  // outlives the counter while a tensor it counted is alive
  };
  static void Free(void* ctx) {
    auto* record = static_cast<Record*>(ctx);
    record->state->in_use.fetch_sub(record->bytes);
    delete record;
  }

  c10::Allocator* inner_;
  std::shared_ptr<State> state_;
};

}  // namespace ftune::testing
