// Logging with a rank prefix: rank 0 writes to the console, every rank to its
// own file (run_dir/logs/rank_N.log) once OpenLogFile is called. Thread-safe.
#pragma once

#include <fmt/format.h>

#include <string>

#include "parallel/load_notes.h"

namespace ftune::runtime {

enum class LogLevel { kInfo, kWarn, kError };

// Sets the rank shown in each line; call once after MPI is up.
void InitLogging(int rank, int world_size);
// Also appends every line of this rank to `path` (directories created).
void OpenLogFile(const std::string& path);
// Writes `msg`: to the console on rank 0 (or on every rank when all_ranks), and to this
// rank's log file.
void LogLine(LogLevel level, const std::string& msg, bool all_ranks = false);
// Writes `msg` to this rank's log file only (for what was printed to the console otherwise).
void LogToFile(LogLevel level, const std::string& msg);

template <class... A>
void LogInfo(fmt::format_string<A...> f, A&&... a) {
  LogLine(LogLevel::kInfo, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void LogWarn(fmt::format_string<A...> f, A&&... a) {
  LogLine(LogLevel::kWarn, fmt::format(f, std::forward<A>(a)...));
}
// Errors go to the console from whichever rank hit them.
template <class... A>
void LogError(fmt::format_string<A...> f, A&&... a) {
  LogLine(LogLevel::kError, fmt::format(f, std::forward<A>(a)...), /*all_ranks=*/true);
}

// Logs each line of `notes` (info lines as info, warn lines as warnings) the first time this
// process sees it: a model or tokenizer loaded twice (base and finetuned, eval and generate)
// says what it assumed once. Without `info`, only the warnings (which go to stderr): for
// commands whose stdout is their result.
void LogNotesOnce(const LoadNotes& notes, bool info = true);

}  // namespace ftune::runtime
