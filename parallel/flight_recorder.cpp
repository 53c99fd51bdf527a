#include "parallel/flight_recorder.h"

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "parallel/error.h"

namespace ftune::parallel {
namespace {

using Json = nlohmann::json;

double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string HumanBytes(int64_t b) {
  if (b < 1024) return fmt::format("{} B", b);
  if (b < (1 << 20)) return fmt::format("{:.1f} KB", b / 1024.0);
  if (b < (int64_t{1} << 30)) return fmt::format("{:.1f} MB", b / 1048576.0);
  return fmt::format("{:.2f} GB", b / 1073741824.0);
}

const CommRecord* FindComm(const RankState& s, const std::string& name, int gen) {
  for (const auto& c : s.comms) {
    if (c.name == name && c.gen == gen) return &c;
  }
  return nullptr;
}

// The communicator `c` names on rank `s`, with the same members as `like` (names repeat: with
// tp = 2 there is a 'dp' of ranks 0,2 and one of ranks 1,3).
const CommRecord* FindComm(const RankState& s, const CommRecord& like) {
  for (const auto& c : s.comms) {
    if (c.name == like.name && c.gen == like.gen && c.members == like.members) return &c;
  }
  return nullptr;
}

std::string Short(const CollectiveRecord& c) {
  return fmt::format("{} #{} on '{}'", c.op, c.seq, c.comm);
}

// What a rank was last doing: "blocked in AllReduce #57 on 'dp' for " 5.1 " s". Ranks in the
// same state share `before` and `after` and differ in `seconds`.
struct Activity {
  std::string before;
  double seconds = -1;  // -1: no time
  std::string after;
};

Activity LastActivity(const RankState& s, double now) {
  if (!s.blocked.empty()) {
    const auto& b =
        *std::min_element(s.blocked.begin(), s.blocked.end(),
                          [](const auto& x, const auto& y) { return x.wait_unix < y.wait_unix; });
    return {fmt::format("blocked in {} for ", Short(b)), now - b.wait_unix, " s"};
  }
  if (s.recent.empty()) return {"no collective yet", -1, ""};
  const auto& c = s.recent.back();
  if (c.end_unix == 0) {
    return {fmt::format("{} enqueued ", Short(c)), now - c.start_unix,
            " s ago, not waited for yet (computing)"};
  }
  return {fmt::format("{} completed ", Short(c)), now - c.end_unix, " s ago (computing since)"};
}

// `a` with its seconds, or the range lo-hi of a group.
std::string Render(const Activity& a, double lo, double hi) {
  if (a.seconds < 0) return a.before;
  const std::string t =
      hi - lo < 0.05 ? fmt::format("{:.1f}", hi) : fmt::format("{:.1f}-{:.1f}", lo, hi);
  return a.before + t + a.after;
}
std::string Render(const Activity& a) { return Render(a, a.seconds, a.seconds); }

}  // namespace

// --- JSON -------------------------------------------------------------------------------------

// Keys are the member names. The format tag changes with any change of meaning.
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(CollectiveRecord, comm, comm_gen, op, seq, state, bytes,
                                   dtype, start_unix, wait_unix, end_unix, timeout_s)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(CommRecord, name, gen, members, started, completed)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RankState, run, rank, world_size, host, pid, heartbeat_unix,
                                   stalled_s, stalled_at_unix, comms, recent, blocked)

namespace {
constexpr const char* kFormat = "ftune-flight-2";
}  // namespace

std::string ToJson(const RankState& s) {
  Json j = s;
  j["format"] = kFormat;
  return j.dump() + "\n";
}

RankState RankStateFromJson(const std::string& text, const std::string& where) {
  try {
    const Json j = Json::parse(text);
    if (j.at("format") != kFormat) {
      FT_THROW(IoError, "{}: not an ftune flight record (format {}, want {})", where,
               j.at("format").dump(), kFormat);
    }
    return j.get<RankState>();
  } catch (const Json::exception& e) {
    FT_THROW(IoError, "{}: malformed flight record: {}", where, e.what());
  }
}

// --- FlightRecorder ---------------------------------------------------------------------------

FlightRecorder::FlightRecorder(size_t capacity) : ring_(std::max<size_t>(1, capacity)) {}

FlightRecorder& FlightRecorder::Get() {
  static FlightRecorder* r = new FlightRecorder();  // never destroyed: the watchdog outlives main
  return *r;
}

int FlightRecorder::AddCommunicator(const std::string& name, std::vector<int> world_ranks) {
  std::lock_guard<std::mutex> lock(mu_);
  int gen = 0;
  for (const auto& c : comms_) {
    if (c.record.name == name && c.record.members == world_ranks) gen = c.record.gen + 1;
  }
  comms_.push_back({CommRecord{name, gen, std::move(world_ranks), 0, 0}, true});
  ++version_;
  return static_cast<int>(comms_.size()) - 1;
}

void FlightRecorder::RemoveCommunicator(int comm) {
  std::lock_guard<std::mutex> lock(mu_);
  comms_.at(comm).live = false;
  ++version_;
}

const std::vector<int>& FlightRecorder::members(int comm) const {
  std::lock_guard<std::mutex> lock(mu_);
  return comms_.at(comm).record.members;  // never changes after AddCommunicator
}

FlightRecorder::Ticket FlightRecorder::Start(int comm, const char* op, int64_t numel,
                                             at::ScalarType dtype) {
  const auto now = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  auto& c = comms_[comm].record;
  Ticket t{next_id_++, comm, ++c.started, op};
  Entry& e = ring_[t.id % ring_.size()];
  e = Entry{t.id,  comm, op, t.seq, numel * static_cast<int64_t>(c10::elementSize(dtype)),
            dtype, now,  {}, {}};
  ++version_;
  return t;
}

void FlightRecorder::Block(const Ticket& t, double timeout_s, bool watched) {
  const auto now = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = ring_[t.id % ring_.size()];
  if (e.id == t.id) e.wait = now;
  Wait w;
  w.ticket = t;
  // (an entry overwritten since Start - many collectives started before this wait - is rebuilt)
  w.entry = e.id == t.id ? e : Entry{t.id, t.comm, t.op, t.seq, 0, at::kByte, now, now, {}};
  w.timeout_s = timeout_s;
  w.deadline =
      now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  w.watched = watched;
  waits_.push_back(w);
  ++version_;
}

void FlightRecorder::Complete(const Ticket& t) {
  const auto now = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = ring_[t.id % ring_.size()];
  if (e.id == t.id) e.end = now;
  auto& c = comms_[t.comm].record;
  c.completed = std::max(c.completed, t.seq);
  for (size_t i = 0; i < waits_.size(); ++i) {
    if (waits_[i].ticket.id == t.id) {
      waits_[i] = waits_.back();
      waits_.pop_back();
      break;
    }
  }
  ++version_;
}

CollectiveRecord FlightRecorder::DescribeWait(const Wait& w, Clock::time_point now_steady,
                                              double now_unix) const {
  CollectiveRecord r = Describe(w.entry, now_steady, now_unix);
  r.timeout_s = w.timeout_s;
  // A deadline moved on by Postpone shows as a later start of the wait.
  r.wait_unix =
      now_unix - std::chrono::duration<double>(now_steady - w.deadline).count() - w.timeout_s;
  return r;
}

FlightRecorder::OverdueWait FlightRecorder::Overdue(const Wait& w, Clock::time_point now) const {
  return OverdueWait{DescribeWait(w, now, UnixNow()), w.ticket, w.watched};
}

std::optional<FlightRecorder::OverdueWait> FlightRecorder::OverdueWaitOf(
    const Ticket& t, Clock::time_point now) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& w : waits_) {
    if (w.ticket.id == t.id && now > w.deadline) return Overdue(w, now);
  }
  return std::nullopt;
}

std::optional<FlightRecorder::OverdueWait> FlightRecorder::FirstOverdue(
    Clock::time_point now) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& w : waits_) {
    if (w.watched && now > w.deadline) return Overdue(w, now);
  }
  return std::nullopt;
}

void FlightRecorder::Postpone(Clock::duration gap) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& w : waits_) w.deadline += gap;
  stalled_ = gap;
  stalled_at_ = Clock::now();
  ++version_;
}

uint64_t FlightRecorder::version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return version_;
}

CollectiveRecord FlightRecorder::Describe(const Entry& e, Clock::time_point now_steady,
                                          double now_unix) const {
  auto to_unix = [&](Clock::time_point t) {
    if (t == Clock::time_point{}) return 0.0;
    return now_unix - std::chrono::duration<double>(now_steady - t).count();
  };
  const auto& c = comms_[e.comm].record;
  CollectiveRecord r;
  r.comm = c.name;
  r.comm_gen = c.gen;
  r.op = e.op;
  r.seq = e.seq;
  r.bytes = e.bytes;
  r.dtype = c10::toString(e.dtype);
  r.start_unix = to_unix(e.start);
  r.wait_unix = to_unix(e.wait);
  r.end_unix = to_unix(e.end);
  r.state = r.end_unix != 0 ? "completed" : r.wait_unix != 0 ? "started" : "enqueued";
  return r;
}

RankState FlightRecorder::Snapshot() const {
  const auto now = Clock::now();
  const double now_unix = UnixNow();
  std::lock_guard<std::mutex> lock(mu_);
  RankState s;
  s.heartbeat_unix = now_unix;
  if (stalled_ != Clock::duration{0}) {
    s.stalled_s = std::chrono::duration<double>(stalled_).count();
    s.stalled_at_unix = now_unix - std::chrono::duration<double>(now - stalled_at_).count();
  }
  std::vector<bool> referenced(comms_.size(), false);
  const uint64_t first = next_id_ > ring_.size() ? next_id_ - ring_.size() : 1;
  for (uint64_t id = first; id < next_id_; ++id) {
    const Entry& e = ring_[id % ring_.size()];
    s.recent.push_back(Describe(e, now, now_unix));
    referenced[e.comm] = true;
  }
  for (const auto& w : waits_) {
    s.blocked.push_back(DescribeWait(w, now, now_unix));
    referenced[w.entry.comm] = true;
  }
  for (size_t i = 0; i < comms_.size(); ++i) {
    if (comms_[i].live || referenced[i]) s.comms.push_back(comms_[i].record);
  }
  return s;
}

// --- the report -------------------------------------------------------------------------------

std::string RankList(const std::vector<int>& ranks, size_t max_items) {
  std::vector<std::string> items;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    if (j == i) {
      items.push_back(std::to_string(ranks[i]));
    } else if (j == i + 1) {
      items.push_back(std::to_string(ranks[i]));
      items.push_back(std::to_string(ranks[j]));
    } else {
      items.push_back(fmt::format("{}-{}", ranks[i], ranks[j]));
    }
    i = j + 1;
  }
  if (items.size() <= max_items) return fmt::format("{}", fmt::join(items, ","));
  items.resize(max_items);
  return fmt::format("{},... ({} ranks)", fmt::join(items, ","), ranks.size());
}

std::string DescribeCollective(const CollectiveRecord& c, const RankState& s) {
  const CommRecord* comm = FindComm(s, c.comm, c.comm_gen);
  std::string members = comm ? fmt::format("ranks {}", RankList(comm->members)) : "members unknown";
  if (c.op == "Barrier") {
    return fmt::format("{} #{} on communicator '{}' ({})", c.op, c.seq, c.comm, members);
  }
  return fmt::format("{} #{} on communicator '{}' ({}; {} {})", c.op, c.seq, c.comm, members,
                     HumanBytes(c.bytes), c.dtype);
}

TimeoutDiagnosis DiagnoseTimeout(const CollectiveRecord& hung, const RankState& me,
                                 const std::vector<std::optional<RankState>>& ranks,
                                 double now_unix, double stale_s) {
  TimeoutDiagnosis d;
  const CommRecord* comm = FindComm(me, hung.comm, hung.comm_gen);
  if (comm == nullptr) return d;
  for (int m : comm->members) {
    if (m == me.rank) continue;
    const RankState* s =
        m >= 0 && m < static_cast<int>(ranks.size()) && ranks[m] ? &*ranks[m] : nullptr;
    if (s == nullptr) {
      d.unknown.push_back(m);
      continue;
    }
    const CommRecord* theirs = FindComm(*s, *comm);
    const int64_t started = theirs ? theirs->started : 0;
    const double age = now_unix - s->heartbeat_unix;
    const bool stale = age > stale_s;
    const bool behind = started < hung.seq;
    if (!stale && !behind) continue;
    const bool waiting = !stale && !s->blocked.empty();
    std::string why = stale     ? fmt::format("no heartbeat for {:.1f} s (stopped, dead or exited)", age)
                      : waiting ? "has not arrived, held up itself"
                                : "has not arrived";
    if (theirs == nullptr) {
      why += fmt::format("; it has no communicator '{}' (not created yet?)", hung.comm);
    } else if (behind) {
      why += started == 0 ? fmt::format("; it started no collective on '{}'", hung.comm)
                          : fmt::format("; last started #{} on '{}'", started, hung.comm);
    } else {
      why += fmt::format("; it had started #{}", started);
    }
    const Activity a = LastActivity(*s, now_unix);
    why += fmt::format("; {}: {}", stale ? "at its last heartbeat" : "now", Render(a));
    (waiting ? d.held_up : d.absent).push_back({m, why});
  }
  return d;
}

std::string FormatTimeoutReport(const CollectiveRecord& hung, const RankState& me,
                                const std::vector<std::optional<RankState>>& ranks,
                                const TimeoutDiagnosis& d, double now_unix, double stale_s,
                                const std::string& source) {
  std::string out = fmt::format(
      "{} did not complete within parallel.timeout_s = {} s on rank {} ({}, pid {}): it waited "
      "{:.1f} s.",
      DescribeCollective(hung, me), hung.timeout_s, me.rank, me.host, me.pid,
      now_unix - hung.wait_unix);
  const bool others_known = !ranks.empty();
  auto state_of = [&](int r) -> const RankState* {
    if (r == me.rank) return &me;
    return r >= 0 && r < static_cast<int>(ranks.size()) && ranks[r] ? &*ranks[r] : nullptr;
  };
  if (!others_known) {
    out += "\nThe other ranks' states are unknown here.";
  } else if (!d.absent.empty()) {
    out += "\nNot arrived or not responding:";
    for (const auto& a : d.absent) {
      const RankState* s = state_of(a.rank);
      out += fmt::format("\n  rank {} ({}, pid {}): {}", a.rank, s->host, s->pid, a.why);
    }
  } else if (!d.held_up.empty()) {
    out += fmt::format(
        "\nEvery member of '{}' responds, and those that have not arrived at #{} are blocked in "
        "other collectives themselves (below): the ranks call collectives in different orders, "
        "or one of those collectives is stuck.",
        hung.comm, hung.seq);
  } else if (d.unknown.empty() && FindComm(me, hung.comm, hung.comm_gen) != nullptr) {
    out += fmt::format(
        "\nEvery member of '{}' started #{} and responds: the collective itself is stuck "
        "(network, MPI progress), or a member started it but does not wait for it (see below).",
        hung.comm, hung.seq);
  }
  if (others_known && !d.held_up.empty()) {
    out += "\nHeld up, waiting themselves (not the cause):";
    for (const auto& a : d.held_up) {
      const RankState* s = state_of(a.rank);
      out += fmt::format("\n  rank {} ({}, pid {}): {}", a.rank, s->host, s->pid, a.why);
    }
  }
  if (!d.unknown.empty()) {
    out += fmt::format(
        "\nNo flight record from this run for rank(s) {} (not written yet, or run.output_dir is "
        "not shared between hosts).",
        RankList(d.unknown));
  }
  if (me.stalled_s > 1 && now_unix - me.stalled_at_unix < 10 * hung.timeout_s) {
    out += fmt::format("\nNote: this rank itself did not run for {:.1f} s until {:.1f} s ago.",
                       me.stalled_s, now_unix - me.stalled_at_unix);
  }
  // Every rank's last collective, ranks in the same state on one line.
  struct Group {
    std::vector<int> ranks;
    double lo = 0, hi = 0;
    Activity activity;
  };
  std::vector<Group> groups;
  std::map<std::string, size_t> by_key;
  const int n = std::max<int>(me.world_size, static_cast<int>(ranks.size()));
  for (int r = others_known ? 0 : me.rank; r < (others_known ? n : me.rank + 1); ++r) {
    const RankState* s = state_of(r);
    Activity a{"no flight record from this run", -1, ""};
    std::string key;
    if (s != nullptr) {
      a = LastActivity(*s, now_unix);
      const double age = now_unix - s->heartbeat_unix;
      if (age > stale_s) {
        a = {fmt::format("no heartbeat for {:.1f} s; at the last one: {}", age, Render(a)), -1, ""};
        key = std::to_string(r);  // each on a line of its own
      }
    }
    key += "|" + a.before + "|" + a.after;
    auto [it, added] = by_key.emplace(key, groups.size());
    if (added) groups.push_back({{}, a.seconds, a.seconds, a});
    Group& g = groups[it->second];
    g.ranks.push_back(r);
    g.lo = std::min(g.lo, a.seconds);
    g.hi = std::max(g.hi, a.seconds);
  }
  out += fmt::format("\nLast collective of {} ({}):", others_known ? "every rank" : "this rank",
                     source);
  for (const auto& g : groups) {
    out += fmt::format("\n  {} {}: {}", g.ranks.size() == 1 ? "rank" : "ranks", RankList(g.ranks),
                       Render(g.activity, g.lo, g.hi));
  }
  return out;
}

bool IsReporterCandidate(const RankState& s, double now_unix, double stale_s, double within_s) {
  if (now_unix - s.heartbeat_unix > stale_s) return false;
  for (const auto& b : s.blocked) {
    if (b.wait_unix + b.timeout_s <= now_unix + within_s) return true;
  }
  return false;
}

}  // namespace ftune::parallel
