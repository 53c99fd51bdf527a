#include "runtime/log.h"

#include <cstdio>
#include <ctime>
#include <fstream>
#include <mutex>
#include <set>

#include "parallel/files.h"

namespace ftune::runtime {
namespace {

struct LogState {
  std::mutex mu;
  int rank = 0;
  int world_size = 1;
  std::ofstream file;
  std::set<std::string> noted;  // LogNotesOnce's lines already logged
};

LogState& State() {
  static LogState s;
  return s;
}

}  // namespace

void InitLogging(int rank, int world_size) {
  auto& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  s.rank = rank;
  s.world_size = world_size;
}

void OpenLogFile(const std::string& path) {
  auto& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  files::CreateDirectories(files::Parent(path));
  s.file.open(path, std::ios::app);
}

namespace {

const char* Tag(LogLevel level) {
  return level == LogLevel::kInfo ? "" : level == LogLevel::kWarn ? "warning: " : "error: ";
}

// Appends one line to the log file, if open; `s.mu` held.
void WriteFileLine(LogState& s, LogLevel level, const std::string& msg) {
  if (!s.file.is_open()) return;
  std::time_t now = std::time(nullptr);
  char ts[32];
  std::strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", std::localtime(&now));
  s.file << ts << " [rank " << s.rank << "] " << Tag(level) << msg << '\n';
  s.file.flush();
}

}  // namespace

void LogLine(LogLevel level, const std::string& msg, bool all_ranks) {
  auto& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  std::string prefix = s.world_size > 1 ? fmt::format("[rank {}] ", s.rank) : "";
  if (s.rank == 0 || all_ranks) {
    std::FILE* out = level == LogLevel::kInfo ? stdout : stderr;
    fmt::print(out, "{}{}{}\n", prefix, Tag(level), msg);
    std::fflush(out);
  }
  WriteFileLine(s, level, msg);
}

void LogToFile(LogLevel level, const std::string& msg) {
  auto& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  WriteFileLine(s, level, msg);
}

void LogNotesOnce(const LoadNotes& notes, bool info) {
  auto& s = State();
  auto first = [&](const std::string& line) {
    std::lock_guard<std::mutex> lock(s.mu);
    return s.noted.insert(line).second;
  };
  for (const auto& line : notes.info) {
    if (info && first(line)) LogLine(LogLevel::kInfo, line);
  }
  for (const auto& line : notes.warn) {
    if (first(line)) LogLine(LogLevel::kWarn, line);
  }
}

}  // namespace ftune::runtime
