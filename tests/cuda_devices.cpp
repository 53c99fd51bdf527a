// Prints how many CUDA devices this build's libtorch sees (0 with a CPU-only libtorch or no
// visible GPU); tests/gpu_gate.sh skips the gpu tests that need more devices than that.
#include <torch/cuda.h>

#include <cstdio>

int main() {
  std::printf("%zu\n", torch::cuda::device_count());
  return 0;
}
