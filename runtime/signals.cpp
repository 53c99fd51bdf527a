#include "runtime/signals.h"

#include <atomic>
#include <csignal>

namespace ftune::runtime {
namespace {

std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "signal flag must be lock-free");
bool g_installed = false;
struct sigaction g_old_term, g_old_usr1;

extern "C" void OnPreemptSignal(int sig) { g_signal.store(sig, std::memory_order_relaxed); }

}  // namespace

void InstallPreemptionHandlers() {
  if (g_installed) return;
  struct sigaction sa {};
  sa.sa_handler = OnPreemptSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // blocking reads and writes go on after the handler
  sigaction(SIGTERM, &sa, &g_old_term);
  sigaction(SIGUSR1, &sa, &g_old_usr1);
  g_installed = true;
}

void RestorePreemptionHandlers() {
  if (!g_installed) return;
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGUSR1, &g_old_usr1, nullptr);
  g_installed = false;
}

bool PreemptionRequested() { return g_signal.load(std::memory_order_relaxed) != 0; }
int PreemptionSignal() { return g_signal.load(std::memory_order_relaxed); }
void RequestPreemption(int signal) { g_signal.store(signal, std::memory_order_relaxed); }
void ClearPreemption() { g_signal.store(0, std::memory_order_relaxed); }

}  // namespace ftune::runtime
