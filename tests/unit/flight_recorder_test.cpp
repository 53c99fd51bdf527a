// The flight recorder (parallel/flight_recorder.h): sequence numbers per communicator, the ring
// buffer, deadlines, the JSON round trip, and the timeout diagnosis and report from synthetic
// states of several ranks.
#include "parallel/flight_recorder.h"

#include <gtest/gtest.h>

#include "parallel/error.h"

namespace ftune::parallel {
namespace {

using Clock = FlightRecorder::Clock;

const CommRecord* Comm(const RankState& s, const std::string& name) {
  for (const auto& c : s.comms) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

TEST(FlightRecorder, NumbersCollectivesPerCommunicator) {
  FlightRecorder r;
  const int world = r.AddCommunicator("world", {0, 1, 2, 3});
  const int dp = r.AddCommunicator("dp", {0, 2});
  EXPECT_EQ(r.Start(world, "AllReduce", 10, at::kFloat).seq, 1);
  EXPECT_EQ(r.Start(dp, "AllGather", 10, at::kFloat).seq, 1);
  const auto t = r.Start(world, "Broadcast", 3, at::kLong);
  EXPECT_EQ(t.seq, 2);
  r.Complete(t);
  const RankState s = r.Snapshot();
  ASSERT_NE(Comm(s, "world"), nullptr);
  EXPECT_EQ(Comm(s, "world")->started, 2);
  EXPECT_EQ(Comm(s, "world")->completed, 2);
  EXPECT_EQ(Comm(s, "world")->members, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(Comm(s, "dp")->started, 1);
  EXPECT_EQ(Comm(s, "dp")->completed, 0);
  ASSERT_EQ(s.recent.size(), 3u);
  EXPECT_EQ(s.recent[2].op, "Broadcast");
  EXPECT_EQ(s.recent[2].comm, "world");
  EXPECT_EQ(s.recent[2].seq, 2);
  EXPECT_EQ(s.recent[2].bytes, 24);
  EXPECT_EQ(s.recent[2].dtype, "Long");
  EXPECT_GT(s.recent[2].end_unix, 0);
  EXPECT_EQ(s.recent[2].state, "completed");
  EXPECT_EQ(s.recent[1].end_unix, 0);  // not completed
  EXPECT_EQ(s.recent[1].state, "enqueued");  // nobody waits for it either
}

TEST(FlightRecorder, RingBufferKeepsTheLastCollectivesOldestFirst) {
  FlightRecorder r(4);
  const int c = r.AddCommunicator("dp", {0, 1});
  std::vector<FlightRecorder::Ticket> t;
  for (int i = 0; i < 10; ++i) t.push_back(r.Start(c, "AllReduce", 1, at::kFloat));
  r.Complete(t[1]);  // long evicted from the ring: still counts for the communicator
  const RankState s = r.Snapshot();
  ASSERT_EQ(s.recent.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(s.recent[i].seq, 7 + i);
  EXPECT_EQ(Comm(s, "dp")->started, 10);
  EXPECT_EQ(Comm(s, "dp")->completed, 2);
}

TEST(FlightRecorder, GenerationsTellRecreatedCommunicatorsApart) {
  FlightRecorder r;
  const int a = r.AddCommunicator("checkpoint", {0, 1});
  r.RemoveCommunicator(a);
  const int b = r.AddCommunicator("checkpoint", {0, 1});
  const int c = r.AddCommunicator("checkpoint", {2, 3});
  r.Start(b, "Barrier", 0, at::kByte);
  const RankState s = r.Snapshot();
  // The removed one is gone (nothing in the ring refers to it); the others keep their numbers.
  ASSERT_EQ(s.comms.size(), 2u);
  EXPECT_EQ(s.comms[0].gen, 1);
  EXPECT_EQ(s.comms[0].members, (std::vector<int>{0, 1}));
  EXPECT_EQ(s.comms[1].gen, 0);
  EXPECT_EQ(s.recent[0].comm_gen, 1);
  (void)c;
}

TEST(FlightRecorder, DeadlinesMoveOnWhileTheProcessWasStopped) {
  FlightRecorder r;
  const int c = r.AddCommunicator("dp", {0, 1});
  const auto t = r.Start(c, "AllReduce", 4, at::kFloat);
  const auto u = r.Start(c, "AllReduce", 4, at::kFloat);
  r.Block(t, 1.0, /*watched=*/true);
  r.Block(u, 1.0, /*watched=*/false);
  const auto later = Clock::now() + std::chrono::seconds(2);
  EXPECT_FALSE(r.FirstOverdue(Clock::now()));
  auto o = r.FirstOverdue(later);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->ticket.id, t.id);  // only the watched one
  EXPECT_EQ(o->what.op, "AllReduce");
  EXPECT_EQ(o->what.seq, 1);
  EXPECT_EQ(o->what.timeout_s, 1.0);
  EXPECT_TRUE(r.OverdueWaitOf(u, later));
  EXPECT_EQ(r.Snapshot().blocked.size(), 2u);
  EXPECT_EQ(r.Snapshot().recent[0].state, "started");  // a thread waits for it

  r.Postpone(std::chrono::seconds(10));  // stopped for 10 s: nobody else is to blame
  EXPECT_FALSE(r.FirstOverdue(later));
  EXPECT_FALSE(r.OverdueWaitOf(u, later));
  const RankState s = r.Snapshot();
  EXPECT_NEAR(s.stalled_s, 10.0, 1e-6);
  EXPECT_GT(s.blocked[0].wait_unix, s.recent[0].start_unix + 9);  // its wait counts from later

  r.Complete(t);
  r.Complete(u);
  EXPECT_FALSE(r.FirstOverdue(later + std::chrono::seconds(60)));
  EXPECT_TRUE(r.Snapshot().blocked.empty());
}

TEST(FlightRecorder, VersionMovesWithEveryChange) {
  FlightRecorder r;
  const int c = r.AddCommunicator("dp", {0, 1});
  const uint64_t v0 = r.version();
  const auto t = r.Start(c, "AllReduce", 4, at::kFloat);
  const uint64_t v1 = r.version();
  r.Complete(t);
  EXPECT_LT(v0, v1);
  EXPECT_LT(v1, r.version());
}

// --- synthetic ranks -------------------------------------------------------------------------

constexpr double kNow = 1.7e9;

CollectiveRecord Coll(const std::string& comm, const std::string& op, int64_t seq, double start,
                      double wait, double end) {
  CollectiveRecord c;
  c.comm = comm;
  c.op = op;
  c.seq = seq;
  c.bytes = 1 << 20;
  c.dtype = "Float";
  c.start_unix = start;
  c.wait_unix = wait;
  c.end_unix = end;
  c.state = end != 0 ? "completed" : wait != 0 ? "started" : "enqueued";
  return c;
}

// Rank `rank` of 4 (dp = all four, tp = self) that started `dp_started` collectives on 'dp'.
RankState Rank(int rank, double heartbeat_age, int64_t dp_started) {
  RankState s;
  s.run = "run1";
  s.rank = rank;
  s.world_size = 4;
  s.host = "node" + std::to_string(rank / 2);
  s.pid = 100 + rank;
  s.heartbeat_unix = kNow - heartbeat_age;
  s.comms = {{"world", 0, {0, 1, 2, 3}, 3, 3},
             {"dp", 0, {0, 1, 2, 3}, dp_started, dp_started - 1},
             {"tp", 0, {rank}, 0, 0}};
  return s;
}

// Blocked in 'dp' #57 since `waited` seconds, 5 s timeout.
void BlockIn57(RankState& s, double waited) {
  auto c = Coll("dp", "AllReduce", 57, kNow - waited - 0.1, kNow - waited, 0);
  c.timeout_s = 5;
  s.recent.push_back(c);
  s.blocked.push_back(c);
}

TEST(FlightReport, NamesTheStoppedAndTheLateRanks) {
  std::vector<std::optional<RankState>> ranks(4);
  ranks[0] = Rank(0, 0, 57);
  BlockIn57(*ranks[0], 5.1);
  ranks[1] = Rank(1, 0.3, 57);
  BlockIn57(*ranks[1], 5.0);
  ranks[2] = Rank(2, 6.2, 56);  // stopped 6.2 s ago, after #56 completed
  ranks[2]->recent.push_back(Coll("dp", "AllReduce", 56, kNow - 6.5, 0, kNow - 6.4));
  ranks[3] = Rank(3, 0.4, 56);  // alive, but still computing after #56
  ranks[3]->recent.push_back(Coll("dp", "AllReduce", 56, kNow - 6.5, 0, kNow - 6.3));

  const RankState& me = *ranks[0];
  const CollectiveRecord hung = me.blocked[0];
  const TimeoutDiagnosis d = DiagnoseTimeout(hung, me, ranks, kNow, 3.0);
  ASSERT_EQ(d.absent.size(), 2u);
  EXPECT_EQ(d.absent[0].rank, 2);
  EXPECT_NE(d.absent[0].why.find("no heartbeat for 6.2 s"), std::string::npos) << d.absent[0].why;
  EXPECT_NE(d.absent[0].why.find("last started #56 on 'dp'"), std::string::npos);
  EXPECT_EQ(d.absent[1].rank, 3);
  EXPECT_NE(d.absent[1].why.find("has not arrived"), std::string::npos) << d.absent[1].why;
  EXPECT_NE(d.absent[1].why.find("AllReduce #56 on 'dp' completed 6.3 s ago"), std::string::npos)
      << d.absent[1].why;
  EXPECT_TRUE(d.unknown.empty());

  const std::string report = FormatTimeoutReport(hung, me, ranks, d, kNow, 3.0, "files in /x");
  EXPECT_NE(report.find("AllReduce #57 on communicator 'dp' (ranks 0-3; 1.0 MB Float) did not "
                        "complete within parallel.timeout_s = 5 s on rank 0 (node0, pid 100)"),
            std::string::npos)
      << report;
  EXPECT_NE(report.find("rank 2 (node1, pid 102): no heartbeat for 6.2 s"), std::string::npos)
      << report;
  // Ranks in the same state share a line, with the range of their times.
  EXPECT_NE(report.find("ranks 0,1: blocked in AllReduce #57 on 'dp' for 5.0-5.1 s"),
            std::string::npos)
      << report;
  EXPECT_NE(report.find("rank 2: no heartbeat for 6.2 s; at the last one: AllReduce #56 on 'dp' "
                        "completed 6.4 s ago"),
            std::string::npos)
      << report;
  EXPECT_NE(report.find("(files in /x)"), std::string::npos);
}

// What hung_rank_test saw at 4 ranks: rank 0 waits in #57 while ranks 1 and 3 are still blocked
// in #56, which the stopped rank 2 holds up as well. Only rank 2 is the cause; 1 and 3 are
// listed apart, as held up.
TEST(FlightReport, RanksBlockedInAnEarlierCollectiveAreHeldUpNotAbsent) {
  std::vector<std::optional<RankState>> ranks(4);
  ranks[0] = Rank(0, 0, 57);
  BlockIn57(*ranks[0], 5.2);
  auto block_in_56 = [](RankState& s, double waited) {
    auto c = Coll("dp", "AllReduce", 56, kNow - waited - 0.1, kNow - waited, 0);
    c.timeout_s = 5;
    s.recent.push_back(c);
    s.blocked.push_back(c);
  };
  for (int r : {1, 3}) {
    ranks[r] = Rank(r, 0.2, 56);
    block_in_56(*ranks[r], 4.8);
  }
  ranks[2] = Rank(2, 6.0, 56);
  block_in_56(*ranks[2], 6.1);

  const RankState& me = *ranks[0];
  const TimeoutDiagnosis d = DiagnoseTimeout(me.blocked[0], me, ranks, kNow, 3.0);
  ASSERT_EQ(d.absent.size(), 1u);
  EXPECT_EQ(d.absent[0].rank, 2);
  ASSERT_EQ(d.held_up.size(), 2u);
  EXPECT_EQ(d.held_up[0].rank, 1);
  EXPECT_EQ(d.held_up[1].rank, 3);
  EXPECT_NE(d.held_up[0].why.find("held up itself"), std::string::npos) << d.held_up[0].why;
  EXPECT_NE(d.held_up[0].why.find("now: blocked in AllReduce #56 on 'dp' for 4.8 s"),
            std::string::npos)
      << d.held_up[0].why;

  const std::string report = FormatTimeoutReport(me.blocked[0], me, ranks, d, kNow, 3.0, "files");
  const size_t absent_at = report.find("Not arrived or not responding:\n  rank 2 (node1, pid 102)");
  const size_t held_at = report.find(
      "Held up, waiting themselves (not the cause):\n  rank 1 (node0, pid 101): has not arrived, "
      "held up itself; last started #56 on 'dp'");
  ASSERT_NE(absent_at, std::string::npos) << report;
  ASSERT_NE(held_at, std::string::npos) << report;
  EXPECT_LT(absent_at, held_at);
  EXPECT_NE(report.find("\n  rank 3 (node1, pid 103): has not arrived, held up itself"),
            std::string::npos)
      << report;

  // Nobody stopped, everyone responds, and the late ones wait elsewhere: an order mismatch or a
  // stuck collective, said as such, with no rank blamed.
  ranks[2] = Rank(2, 0.1, 56);
  block_in_56(*ranks[2], 4.9);
  const TimeoutDiagnosis d2 = DiagnoseTimeout(me.blocked[0], me, ranks, kNow, 3.0);
  EXPECT_TRUE(d2.absent.empty());
  EXPECT_EQ(d2.held_up.size(), 3u);
  const std::string report2 =
      FormatTimeoutReport(me.blocked[0], me, ranks, d2, kNow, 3.0, "files");
  EXPECT_EQ(report2.find("Not arrived or not responding:"), std::string::npos) << report2;
  EXPECT_NE(report2.find("the ranks call collectives in different orders"), std::string::npos)
      << report2;
}

TEST(FlightReport, AStoppedRankThatArrivedStillHoldsTheCollectiveUp) {
  std::vector<std::optional<RankState>> ranks(4);
  for (int r = 0; r < 4; ++r) {
    ranks[r] = Rank(r, r == 1 ? 20 : 0, 57);
    BlockIn57(*ranks[r], 5.5);
  }
  const RankState& me = *ranks[3];
  const auto d = DiagnoseTimeout(me.blocked[0], me, ranks, kNow, 3.0);
  ASSERT_EQ(d.absent.size(), 1u);
  EXPECT_EQ(d.absent[0].rank, 1);
  EXPECT_NE(d.absent[0].why.find("it had started #57"), std::string::npos) << d.absent[0].why;
}

TEST(FlightReport, EveryoneArrivedAndMissingRecords) {
  std::vector<std::optional<RankState>> ranks(4);
  for (int r : {0, 1}) {
    ranks[r] = Rank(r, 0, 57);
    BlockIn57(*ranks[r], 5.5);
  }
  const RankState& me = *ranks[0];
  auto d = DiagnoseTimeout(me.blocked[0], me, ranks, kNow, 3.0);
  EXPECT_TRUE(d.absent.empty());
  EXPECT_EQ(d.unknown, (std::vector<int>{2, 3}));
  std::string report = FormatTimeoutReport(me.blocked[0], me, ranks, d, kNow, 3.0, "files");
  EXPECT_NE(report.find("No flight record from this run for rank(s) 2,3"), std::string::npos)
      << report;
  EXPECT_NE(report.find("ranks 2,3: no flight record from this run"), std::string::npos);

  ranks[2] = Rank(2, 0, 57);
  ranks[3] = Rank(3, 0, 57);
  BlockIn57(*ranks[2], 5);
  BlockIn57(*ranks[3], 5);
  d = DiagnoseTimeout(me.blocked[0], me, ranks, kNow, 3.0);
  report = FormatTimeoutReport(me.blocked[0], me, ranks, d, kNow, 3.0, "files");
  EXPECT_NE(report.find("Every member of 'dp' started #57 and responds"), std::string::npos)
      << report;
}

TEST(FlightReport, TheLowestWaitingResponsiveRankReports) {
  RankState waiting = Rank(0, 0.5, 57);
  BlockIn57(waiting, 4);  // deadline in 1 s
  EXPECT_TRUE(IsReporterCandidate(waiting, kNow, 3.0, 5.0));
  EXPECT_FALSE(IsReporterCandidate(waiting, kNow, 3.0, 0.5));  // its deadline is too far
  RankState stopped = waiting;
  stopped.heartbeat_unix = kNow - 10;
  EXPECT_FALSE(IsReporterCandidate(stopped, kNow, 3.0, 5.0));
  EXPECT_FALSE(IsReporterCandidate(Rank(1, 0, 57), kNow, 3.0, 5.0));  // not waiting
}

TEST(FlightRecord, JsonRoundTrip) {
  RankState s = Rank(2, 1.5, 12);
  s.stalled_s = 7.25;
  s.stalled_at_unix = kNow - 1;
  s.recent.push_back(Coll("dp", "ReduceScatter", 11, kNow - 3, kNow - 2.5, kNow - 2));
  BlockIn57(s, 1);
  const RankState t = RankStateFromJson(ToJson(s), "rank_2.json");
  EXPECT_EQ(t.run, s.run);
  EXPECT_EQ(t.rank, 2);
  EXPECT_EQ(t.world_size, 4);
  EXPECT_EQ(t.host, "node1");
  EXPECT_EQ(t.pid, 102);
  EXPECT_DOUBLE_EQ(t.heartbeat_unix, s.heartbeat_unix);
  EXPECT_DOUBLE_EQ(t.stalled_s, 7.25);
  EXPECT_DOUBLE_EQ(t.stalled_at_unix, s.stalled_at_unix);
  ASSERT_EQ(t.comms.size(), 3u);
  EXPECT_EQ(t.comms[1].name, "dp");
  EXPECT_EQ(t.comms[1].members, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(t.comms[1].started, 12);
  EXPECT_EQ(t.comms[1].completed, 11);
  ASSERT_EQ(t.recent.size(), 2u);
  EXPECT_EQ(t.recent[0].op, "ReduceScatter");
  EXPECT_EQ(t.recent[0].seq, 11);
  EXPECT_EQ(t.recent[0].bytes, 1 << 20);
  EXPECT_EQ(t.recent[0].dtype, "Float");
  EXPECT_DOUBLE_EQ(t.recent[0].start_unix, kNow - 3);
  EXPECT_DOUBLE_EQ(t.recent[0].wait_unix, kNow - 2.5);
  EXPECT_DOUBLE_EQ(t.recent[0].end_unix, kNow - 2);
  EXPECT_EQ(t.recent[0].state, "completed");
  ASSERT_EQ(t.blocked.size(), 1u);
  EXPECT_EQ(t.blocked[0].seq, 57);
  EXPECT_DOUBLE_EQ(t.blocked[0].timeout_s, 5);
  EXPECT_EQ(ToJson(t), ToJson(s));
}

TEST(FlightRecord, MalformedFileNamesItself) {
  try {
    RankStateFromJson("{\"format\": \"ftune-flight-2\", \"run\": ", "/run/logs/flight/rank_3.json");
    FAIL() << "no error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("/run/logs/flight/rank_3.json"), std::string::npos);
  }
}

TEST(FlightRecord, RankList) {
  EXPECT_EQ(RankList({0, 1, 2, 3}), "0-3");
  EXPECT_EQ(RankList({0, 2}), "0,2");
  EXPECT_EQ(RankList({0, 1, 5, 7, 8, 9}), "0,1,5,7-9");
  std::vector<int> even;
  for (int r = 0; r < 100; r += 2) even.push_back(r);
  EXPECT_EQ(RankList(even, 3), "0,2,4,... (50 ranks)");
  EXPECT_EQ(RankList({}), "");
}

}  // namespace
}  // namespace ftune::parallel
