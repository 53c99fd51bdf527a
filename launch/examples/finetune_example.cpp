// Finetuning from code is about as short (launch/finetune.h): prepare + train in this process,
// then ask the finetuned model.
//   finetune_example CONFIG [--set key=value ...] [--prompt PROMPT ...]
#include <iostream>
#include <string>
#include <vector>

#include "launch/finetune.h"
#include "runtime/runner.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: finetune_example CONFIG [--set key=value ...] [--prompt PROMPT ...]\n";
    return 2;
  }
  std::vector<std::string> overrides, prompts;
  for (int i = 2; i + 1 < argc; i += 2) {
    (std::string(argv[i]) == "--set" ? overrides : prompts).push_back(argv[i + 1]);
  }
  try {
    const std::string model_dir = ftune::Finetune(argv[1], overrides);
    ftune::Runner runner(model_dir);
    for (const auto& p : prompts) std::cout << p << " -> " << runner(p) << "\n";
    std::cout << "finetuned model: " << model_dir << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
