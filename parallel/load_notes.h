// What a loader of user files (config.json, tokenizer_config.json, ...) assumed or could not
// check. models/ and data/ fill it; the runtime logs it (runtime::LogNotesOnce).
#pragma once

#include <string>
#include <vector>

namespace ftune {

// Each line names the file. `info`: a default taken for an absent key; `warn`: something that
// may make results differ from what the file's authors expect.
struct LoadNotes {
  std::vector<std::string> info;
  std::vector<std::string> warn;
};

}  // namespace ftune
