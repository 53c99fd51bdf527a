// Flight recorder of collectives (after PyTorch's c10d flight recorder): what every collective
// of this process was, in what order, and whether it completed, so that when one times out the
// job can say which ranks did not arrive and what each rank was last doing.
//
// Every Communicator registers here when it is created (its name and the world ranks of its
// members) and records each collective it starts. Collectives get a sequence number per
// communicator (1, 2, ...); since the members of a communicator call its collectives in the same
// order, #57 on 'dp' is the same collective on every member, and a member whose last started
// sequence number is lower has not arrived at it. The last `capacity` collectives are kept in a
// ring buffer; per communicator the last started and completed numbers are kept for good.
//
// RankState is one rank's snapshot as the watchdog publishes it (parallel/watchdog.h) to
// <dir>/rank_N.json; DiagnoseTimeout and FormatTimeoutReport turn the snapshots of every rank
// into the report printed on a timeout. They are pure functions of their inputs (tests give them
// synthetic states).
//
// Thread safety: every FlightRecorder member may be called from any thread (one mutex; the hot
// path - Start, Block, Complete - takes it for a few stores, with no allocation once the wait
// list has grown to the number of threads that wait at once, and no system call).
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace ftune::parallel {

// One collective as published.
struct CollectiveRecord {
  std::string comm;       // communicator name
  int comm_gen = 0;       // CommRecord::gen of that communicator
  std::string op;         // "AllReduce", "Broadcast", ...
  int64_t seq = 0;        // 1-based, per communicator
  // "enqueued": handed to the backend (MPI's nonblocking call posted, NCCL's kernel queued on
  // the communicator's stream), no thread of this rank waits for it yet; "started": this rank
  // is in it, a thread waits for its completion; "completed".
  std::string state;
  int64_t bytes = 0;      // size of the (input) tensor
  std::string dtype;      // "Float", "BFloat16", ...
  double start_unix = 0;  // wall clock, seconds since the epoch, when it was started
  double wait_unix = 0;   // when a thread started blocking on it (0: none did)
  double end_unix = 0;    // when it completed (0: not yet)
  double timeout_s = 0;   // for a blocked wait: its limit (the deadline is wait_unix + timeout_s)
};

// One communicator as published.
struct CommRecord {
  std::string name;
  int gen = 0;               // communicators of this name and members this process made before
  std::vector<int> members;  // world ranks, in communicator-rank order
  int64_t started = 0;       // sequence number of the last collective started (0: none)
  int64_t completed = 0;     // highest sequence number completed
};

// One rank's snapshot: who it is, when it was taken (the heartbeat), its communicators, its last
// collectives (oldest first) and the ones its threads are blocked in now.
struct RankState {
  std::string run;  // token of the run that wrote it; files of an earlier run are ignored
  int rank = -1;
  int world_size = 0;
  std::string host;
  int64_t pid = 0;
  double heartbeat_unix = 0;
  double stalled_s = 0;        // longest time this process did not run (SIGSTOP, swapping)
  double stalled_at_unix = 0;  // when that stall ended
  std::vector<CommRecord> comms;
  std::vector<CollectiveRecord> recent;
  std::vector<CollectiveRecord> blocked;
};

std::string ToJson(const RankState& s);
// Throws IoError naming `where` on malformed input.
RankState RankStateFromJson(const std::string& text, const std::string& where);

class FlightRecorder {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr size_t kDefaultCapacity = 64;

  // Names one started collective for Block and Complete.
  struct Ticket {
    uint64_t id = 0;  // 1-based count of collectives this recorder started
    int comm = -1;
    int64_t seq = 0;
    const char* op = "";
  };
  // A thread blocked in a collective past its deadline (Overdue).
  struct OverdueWait {
    CollectiveRecord what;
    Ticket ticket;
    bool watched = false;
  };

  explicit FlightRecorder(size_t capacity = kDefaultCapacity);
  FlightRecorder(const FlightRecorder&) = delete;
  FlightRecorder& operator=(const FlightRecorder&) = delete;
  // The process-wide recorder every Communicator records into (never destroyed).
  static FlightRecorder& Get();

  // Returns the id Start takes. `world_ranks`: the members' world ranks in communicator order.
  int AddCommunicator(const std::string& name, std::vector<int> world_ranks);
  // The communicator is gone; its record stays while the ring buffer refers to it.
  void RemoveCommunicator(int comm);
  const std::vector<int>& members(int comm) const;

  // A collective `op` (a string literal: only the pointer is kept) on `numel` elements of
  // `dtype` starts on communicator `comm`; returns it with its sequence number.
  Ticket Start(int comm, const char* op, int64_t numel, at::ScalarType dtype);
  // The calling thread blocks on `t` until Complete(t), for at most `timeout_s` (the deadline
  // moves on by the time this process does not run: Postpone). `watched`: the watchdog thread
  // acts on the deadline (MPI); otherwise the waiting thread asks OverdueWaitOf itself (NCCL).
  void Block(const Ticket& t, double timeout_s, bool watched);
  // `t` completed (or is no longer waited for); ends the calling thread's Block on it.
  void Complete(const Ticket& t);
  // `t`'s wait if it is blocked past its deadline at `now`.
  std::optional<OverdueWait> OverdueWaitOf(const Ticket& t, Clock::time_point now) const;
  // The first watched wait whose deadline is before `now`.
  std::optional<OverdueWait> FirstOverdue(Clock::time_point now) const;
  // This process did not run for `gap` (noticed by the watchdog): every deadline moves on by it,
  // since a rank that was stopped must not blame the others for its own absence.
  void Postpone(Clock::duration gap);

  // Changes with every Start, Block and Complete (a publisher writes only when it moved).
  uint64_t version() const;
  // comms, recent, blocked and the stall fields; the identity fields are the caller's.
  RankState Snapshot() const;

 private:
  struct Entry {
    uint64_t id = 0;  // 0: empty slot
    int comm = -1;
    const char* op = "";
    int64_t seq = 0;
    int64_t bytes = 0;
    at::ScalarType dtype = at::kFloat;
    Clock::time_point start, wait, end;  // wait, end: default (epoch) until they happen
  };
  struct Comm {
    CommRecord record;
    bool live = true;
  };
  struct Wait {
    Ticket ticket;
    Entry entry;
    double timeout_s = 0;
    Clock::time_point deadline;
    bool watched = false;
  };

  // mu_ held by the callers of these.
  CollectiveRecord Describe(const Entry& e, Clock::time_point now_steady, double now_unix) const;
  CollectiveRecord DescribeWait(const Wait& w, Clock::time_point now_steady, double now_unix) const;
  OverdueWait Overdue(const Wait& w, Clock::time_point now) const;

  mutable std::mutex mu_;
  std::vector<Entry> ring_;
  uint64_t next_id_ = 1;
  uint64_t version_ = 0;
  std::vector<Comm> comms_;  // indexed by AddCommunicator's id
  std::vector<Wait> waits_;
  Clock::duration stalled_{0};
  Clock::time_point stalled_at_;
};

// --- the timeout report, from every rank's published state ---------------------------------

// What kept a blocked collective from completing.
struct TimeoutDiagnosis {
  struct Absent {
    int rank = -1;
    std::string why;  // "no heartbeat for 6.1 s (stopped, dead or exited); last started ..."
  };
  std::vector<Absent> absent;   // members that did not arrive or do not respond, by rank
  std::vector<Absent> held_up;  // members that did not arrive because they are blocked in
                                // another collective themselves (waiting, not the cause)
  std::vector<int> unknown;     // members with no state from this run to judge by
};

// `hung`: the collective this rank (`me`) timed out in. `ranks[r]`: rank r's published state, if
// any (the caller drops files of other runs). A member is absent when its heartbeat is older
// than `stale_s` (a stopped rank also holds up collectives it started), or when it responds but
// has not arrived (its last started sequence number on the hung communicator is lower) and is
// not blocked in any collective (it computes, reads, or is stuck outside communication). A member
// that has not arrived because it is itself blocked in a collective is held up, not absent: it
// waits for someone else (typically an earlier collective the absent rank holds up too).
TimeoutDiagnosis DiagnoseTimeout(const CollectiveRecord& hung, const RankState& me,
                                 const std::vector<std::optional<RankState>>& ranks,
                                 double now_unix, double stale_s);

// The full report: the hung collective, who did not arrive and why, and every rank's last
// collective (ranks in the same state grouped on one line). `source` says where the states
// came from. Empty `ranks`: only this rank's state is known (no directory to share them in).
std::string FormatTimeoutReport(const CollectiveRecord& hung, const RankState& me,
                                const std::vector<std::optional<RankState>>& ranks,
                                const TimeoutDiagnosis& d, double now_unix, double stale_s,
                                const std::string& source);

// "AllReduce #57 on communicator 'dp' (ranks 0-3, 2.1 MB Float)" for `c` as seen by `s`.
std::string DescribeCollective(const CollectiveRecord& c, const RankState& s);

// Which rank prints the full report when several time out at about the same time: the
// lowest-numbered rank for which this holds - its heartbeat is fresh and it is blocked in a
// collective whose deadline comes within `within_s` - so a timed-out rank reads the states of
// the ranks below it one by one, and defers to the first candidate (typically rank 0).
bool IsReporterCandidate(const RankState& s, double now_unix, double stale_s, double within_s);

// "0-3", "0,2,4-7" (at most `max_items` items, then "... (N ranks)").
std::string RankList(const std::vector<int>& ranks, size_t max_items = 16);

}  // namespace ftune::parallel
