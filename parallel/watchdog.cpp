#include "parallel/watchdog.h"

#include <errno.h>
#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune::parallel {
namespace {

using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;

constexpr auto kTick = std::chrono::milliseconds(200);
// A tick this late means the process did not run (stopped), not a slow scheduler.
constexpr auto kStall = std::chrono::seconds(2);
constexpr double kPublishMinS = 0.5;  // at most this often while collectives run
constexpr double kHeartbeatS = 1.0;   // at least this often
// Bounds on the file-system reads of a report (a hung file system must not hang the abort).
constexpr double kReadLimitS = 10.0;
// A deferring rank waits for the reporter's own deadline plus this before reporting itself.
constexpr double kGraceS = 3.0;

double UnixNow() { return Seconds(std::chrono::system_clock::now().time_since_epoch()).count(); }

// A heartbeat older than this marks a rank as not responding. Several heartbeat periods (a
// loaded machine, clock skew between hosts), and well below the timeout where it is long.
double StaleSeconds(double timeout_s) {
  return std::max(3 * kHeartbeatS, std::min(timeout_s / 2, 30.0));
}

struct Identity {
  int rank = -1;
  int world_size = 0;
  std::string host;
  int64_t pid = 0;
};

// This process in the job (asked once MPI is up: the first communicator starts the watchdog).
// Never destroyed: the threads that read it outlive main.
const Identity& Self() {
  static const Identity* id = []() {
    auto* i = new Identity();
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) {
      MPI_Comm_rank(MPI_COMM_WORLD, &i->rank);
      MPI_Comm_size(MPI_COMM_WORLD, &i->world_size);
    }
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    i->host = host;
    i->pid = getpid();
    return i;
  }();
  return *id;
}

std::string RankFile(const std::string& dir, int rank) {
  return fmt::format("{}/rank_{}.json", dir, rank);
}

// Whole-file write to a temporary name, then rename: readers see the old or the new file.
void WriteAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) FT_THROW(IoError, "cannot write '{}': {}", tmp, std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      close(fd);
      FT_THROW(IoError, "cannot write '{}': {}", tmp, std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  if (close(fd) != 0) FT_THROW(IoError, "cannot write '{}': {}", tmp, std::strerror(errno));
  files::Rename(tmp, path);
}

// Rank `rank`'s state in `dir` if it is there, from run `run` and well formed.
std::optional<RankState> ReadRankState(const std::string& dir, const std::string& run, int rank) {
  const std::string path = RankFile(dir, rank);
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string text;
  char buf[16384];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) text.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  try {
    RankState s = RankStateFromJson(text, path);
    if (s.run != run || s.rank != rank) return std::nullopt;
    return s;
  } catch (const Error&) {
    return std::nullopt;
  }
}

// Runs `fn` on a thread of its own and waits at most `seconds` for it; nullopt when it did not
// finish (the thread then finishes, or hangs, on its own).
template <class T>
std::optional<T> RunWithin(double seconds, std::function<T()> fn) {
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<T> result;
  };
  auto shared = std::make_shared<Shared>();
  std::thread([shared, fn = std::move(fn)]() {
    T r = fn();
    std::lock_guard<std::mutex> lock(shared->mu);
    shared->result = std::move(r);
    shared->cv.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait_for(lock, Seconds(seconds), [&]() { return shared->result.has_value(); });
  return shared->result;
}

// Writes this rank's state into the flight directory (see the header).
class Publisher {
 public:
  Publisher(std::string dir, std::string run, FlightLog log)
      : dir_(std::move(dir)), run_(std::move(run)), log_(std::move(log)) {}
  const std::string& dir() const { return dir_; }
  const std::string& run() const { return run_; }
  void Log(bool error, const std::string& text) const {
    if (log_) log_(error, text);
  }
  RankState State() const {
    RankState s = FlightRecorder::Get().Snapshot();
    const Identity& id = Self();
    s.run = run_;
    s.rank = id.rank;
    s.world_size = id.world_size;
    s.host = id.host;
    s.pid = id.pid;
    return s;
  }
  // False (and a warning in the log) when the directory cannot be made.
  bool Start() {
    try {
      files::CreateDirectories(dir_);
    } catch (const Error& e) {
      Log(false, fmt::format("no flight records (a timeout reports this rank only): {}", e.what()));
      return false;
    }
    Publish();
    std::thread([this]() { Run(); }).detach();
    return true;
  }

 private:
  void Publish() {
    try {
      WriteAtomically(RankFile(dir_, Self().rank), ToJson(State()));
    } catch (const Error& e) {
      if (!warned_) Log(false, fmt::format("flight record not published: {}", e.what()));
      warned_ = true;
    }
  }
  void Run() {
    uint64_t published = FlightRecorder::Get().version();
    auto last = Clock::now();
    while (true) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      const uint64_t v = FlightRecorder::Get().version();
      const double since = Seconds(Clock::now() - last).count();
      if ((v != published && since >= kPublishMinS) || since >= kHeartbeatS) {
        Publish();
        published = v;
        last = Clock::now();
      }
    }
  }

  const std::string dir_, run_;
  const FlightLog log_;
  bool warned_ = false;  // Run's thread only
};

std::mutex publisher_mu;
Publisher* publisher = nullptr;  // set once, never destroyed (its thread outlives main)

Publisher* GetPublisher() {
  std::lock_guard<std::mutex> lock(publisher_mu);
  return publisher;
}

// Every line prefixed, so that the report stays readable among other ranks' output.
void PrintToStderr(const std::string& text) {
  const std::string prefix = fmt::format("[rank {}] ", Self().rank);
  std::string out = prefix + "error: ";
  for (char c : text) {
    out += c;
    if (c == '\n') out += prefix;
  }
  out += '\n';
  std::fwrite(out.data(), 1, out.size(), stderr);
  std::fflush(stderr);
}

// This rank's last collectives, newest last, for its own log.
std::string RecentLines(const RankState& me, double now) {
  std::string out = "This rank's last collectives (oldest first):";
  const size_t first = me.recent.size() > 16 ? me.recent.size() - 16 : 0;
  for (size_t i = first; i < me.recent.size(); ++i) {
    const auto& c = me.recent[i];
    out += fmt::format("\n  {}: {}; enqueued {:.1f} s ago", DescribeCollective(c, me), c.state,
                       now - c.start_unix);
    if (c.wait_unix != 0) out += fmt::format(", waited for from {:.1f} s ago", now - c.wait_unix);
    if (c.end_unix != 0) out += fmt::format(", completed {:.1f} s ago", now - c.end_unix);
  }
  return out;
}

void Tick() {
  auto last = Clock::now();
  while (true) {
    std::this_thread::sleep_for(kTick);
    const auto now = Clock::now();
    const auto gap = now - last - kTick;
    last = now;
    if (gap > kStall) FlightRecorder::Get().Postpone(gap);
    auto overdue = FlightRecorder::Get().FirstOverdue(now);
    if (!overdue) continue;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    ReportTimeout(*overdue);
    MPI_Abort(MPI_COMM_WORLD, 3);
  }
}

}  // namespace

void StartWatchdog() {
  static std::once_flag once;
  std::call_once(once, []() { std::thread(Tick).detach(); });
}

void PublishFlightRecords(const std::string& dir, const std::string& run, FlightLog log) {
  std::lock_guard<std::mutex> lock(publisher_mu);
  if (publisher != nullptr) return;
  auto p = std::make_unique<Publisher>(dir, run, std::move(log));
  if (p->Start()) publisher = p.release();
}

void ReportTimeout(const FlightRecorder::OverdueWait& w) {
  static std::atomic<bool> reported{false};
  if (reported.exchange(true)) return;
  const CollectiveRecord& hung = w.what;
  const double stale_s = StaleSeconds(hung.timeout_s);
  const Publisher* pub = GetPublisher();
  if (pub == nullptr) {
    RankState me = FlightRecorder::Get().Snapshot();
    me.rank = Self().rank;
    me.world_size = Self().world_size;
    me.host = Self().host;
    me.pid = Self().pid;
    const double now = UnixNow();
    PrintToStderr(FormatTimeoutReport(hung, me, {}, TimeoutDiagnosis(), now, stale_s,
                                      "no run directory to share flight records in") +
                  "\n" + RecentLines(me, now) + "\nAborting the job.");
    return;
  }
  const RankState me = pub->State();
  const std::string dir = pub->dir(), run = pub->run();
  const double within_s = std::min(hung.timeout_s, 10.0);

  // The lowest-numbered rank that also waits reports; the ranks below this one are read one by
  // one until it is found (usually rank 0: one file).
  auto reporter = RunWithin<std::optional<RankState>>(kReadLimitS, [=]() {
    for (int r = 0; r < me.rank; ++r) {
      auto s = ReadRankState(dir, run, r);
      if (s && IsReporterCandidate(*s, UnixNow(), stale_s, within_s)) return s;
    }
    return std::optional<RankState>();
  });
  if (reporter && *reporter) {
    const RankState& rep = **reporter;
    double deadline = 1e300;  // its first deadline: it reports then
    for (const auto& b : rep.blocked) deadline = std::min(deadline, b.wait_unix + b.timeout_s);
    const std::string line = fmt::format(
        "{} did not complete within parallel.timeout_s = {} s on rank {} ({}); rank {}, which "
        "waits too, reports which ranks did not arrive",
        DescribeCollective(hung, me), hung.timeout_s, me.rank, me.host, rep.rank);
    PrintToStderr(line);
    pub->Log(true, line + "\n" + RecentLines(me, UnixNow()));
    const double wait_s = std::min(std::max(0.0, deadline - UnixNow()), within_s) + kGraceS;
    std::this_thread::sleep_for(Seconds(wait_s));
    PrintToStderr(fmt::format("rank {} did not end the job within {:.0f} s; reporting here",
                              rep.rank, wait_s));
  }

  const int n = me.world_size;
  auto states = RunWithin<std::vector<std::optional<RankState>>>(kReadLimitS, [=]() {
    std::vector<std::optional<RankState>> all(n);
    for (int r = 0; r < n; ++r) {
      if (r != me.rank) all[r] = ReadRankState(dir, run, r);
    }
    return all;
  });
  std::string source = fmt::format("flight records in {}", dir);
  if (!states) {
    states.emplace(n);
    source = fmt::format("this rank only: reading {} took over {:.0f} s", dir, kReadLimitS);
  }
  (*states)[me.rank] = me;
  const double now = UnixNow();
  const TimeoutDiagnosis d = DiagnoseTimeout(hung, me, *states, now, stale_s);
  const std::string report =
      FormatTimeoutReport(hung, me, *states, d, now, stale_s, source) + "\nAborting the job.";
  PrintToStderr(report);
  pub->Log(true, report + "\n" + RecentLines(me, now));
}

}  // namespace ftune::parallel
