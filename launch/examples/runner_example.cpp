// Loading a model and generating is three lines (runtime/runner.h):
//   runner_example MODEL_DIR [PROMPT ...]
// Prints each prompt's answer (qa template, greedy) on its own line.
#include <iostream>

#include "runtime/runner.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: runner_example MODEL_DIR [PROMPT ...]\n";
    return 2;
  }
  try {
    ftune::Runner runner(argv[1]);
    if (argc == 2) std::cout << runner("Tell me how to train my dog to sit") << "\n";
    for (int i = 2; i < argc; ++i) std::cout << runner(argv[i]) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
