// Collectives under mpirun with closed-form expectations: input = f(rank) gives
// a known result for every op x dtype x size, on the world and on both axes of
// a dp x tp grid.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "parallel/communicator.h"
#include "parallel/error.h"
#include "parallel/flight_recorder.h"
#include "parallel/process_grid.h"
#include "parallel/watchdog.h"
#include "tests/mpi_test_env.h"

namespace ftune::parallel {
namespace {

using ftune::testing::TestWorld;

const std::vector<at::ScalarType> kDtypes = {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf,
                                             at::kInt, at::kLong};
// Element counts: 1 element up to 64 MB of fp32, plus odd sizes.
const std::vector<int64_t> kSizes = {1, 3, 1000, 65537, 16 << 20};

std::string Name(at::ScalarType t) { return c10::toString(t); }

// Values that are exact in every dtype: small integers.
at::Tensor RankValues(int64_t n, int rank, at::ScalarType t) {
  return (at::arange(n, at::kLong).remainder(7) + rank + 1).to(t);
}

TEST(Communicator, AllReduceSumAvgMaxMinEveryDtype) {
  auto& comm = TestWorld().comm();
  const int n = comm.size(), r = comm.rank();
  for (auto dt : kDtypes) {
    for (int64_t size : kSizes) {
      if (dt != at::kFloat && size > 65537) continue;  // 64 MB once, for fp32
      SCOPED_TRACE(Name(dt) + " x " + std::to_string(size));
      auto base = at::arange(size, at::kLong).remainder(7);
      // sum over ranks of (base + rank + 1) = n*base + n(n+1)/2
      auto want_sum = base * n + n * (n + 1) / 2;
      auto t = RankValues(size, r, dt);
      comm.AllReduce(t, ReduceOp::kSum)->Wait();
      EXPECT_TRUE(at::equal(t.to(at::kLong), want_sum));
      auto m = RankValues(size, r, dt);
      comm.AllReduce(m, ReduceOp::kMax)->Wait();
      EXPECT_TRUE(at::equal(m.to(at::kLong), base + n));
      auto mn = RankValues(size, r, dt);
      comm.AllReduce(mn, ReduceOp::kMin)->Wait();
      EXPECT_TRUE(at::equal(mn.to(at::kLong), base + 1));
      if (at::isFloatingType(dt)) {
        auto a = RankValues(size, r, dt);
        comm.AllReduce(a, ReduceOp::kAvg)->Wait();
        auto want = (base.to(at::kDouble) * n + n * (n + 1) / 2.0) / n;
        EXPECT_TRUE(at::allclose(a.to(at::kDouble), want, 1e-2, 0)) << Name(dt);
      }
    }
  }
}

TEST(Communicator, Bf16SumIsRoundedOnceNotPerHop) {
  // 1 + n * 2^-9: every partial sum of 2^-9 terms is exact in fp32, and the
  // final value rounds to the nearest bf16 (8 mantissa bits) only once.
  auto& comm = TestWorld().comm();
  const int n = comm.size();
  auto t = at::full({4}, comm.rank() == 0 ? 1.0 + 1.0 / 512 : 1.0 / 512, at::kBFloat16);
  comm.AllReduce(t)->Wait();
  const double exact = 1.0 + n / 512.0;
  auto want = at::full({4}, exact, at::kDouble).to(at::kBFloat16);
  EXPECT_TRUE(at::equal(t, want)) << t << " vs " << want;
}

TEST(Communicator, ReduceScatterEvenAndUneven) {
  auto& comm = TestWorld().comm();
  const int n = comm.size(), r = comm.rank();
  for (auto dt : {at::kFloat, at::kBFloat16, at::kLong}) {
    const int64_t chunk = 1001;
    auto in = RankValues(chunk * n, r, dt);
    auto out = at::empty({chunk}, dt);
    comm.ReduceScatter(in, out)->Wait();
    auto base = at::arange(chunk * n, at::kLong).remainder(7).slice(0, r * chunk, (r + 1) * chunk);
    EXPECT_TRUE(at::equal(out.to(at::kLong), base * n + n * (n + 1) / 2)) << Name(dt);
  }
  // Uneven: rank i owns i+1 elements.
  std::vector<int64_t> counts;
  int64_t total = 0, off = 0;
  for (int i = 0; i < n; ++i) counts.push_back(i + 1), total += i + 1;
  for (int i = 0; i < r; ++i) off += counts[i];
  auto in = RankValues(total, r, at::kFloat);
  auto out = at::empty({counts[r]}, at::kFloat);
  comm.ReduceScatterV(in, out, counts, ReduceOp::kAvg)->Wait();
  auto base = at::arange(total, at::kLong).remainder(7).slice(0, off, off + counts[r]);
  auto want = (base.to(at::kFloat) * n + n * (n + 1) / 2.0f) / n;
  EXPECT_TRUE(at::allclose(out, want));
}

TEST(Communicator, AllGatherEvenAndUneven) {
  auto& comm = TestWorld().comm();
  const int n = comm.size(), r = comm.rank();
  for (auto dt : kDtypes) {
    for (int64_t size : {int64_t(1), int64_t(4097), int64_t(1) << 20}) {
      auto in = at::full({size}, r * 10 + 1, at::kLong).to(dt);
      auto out = at::empty({size * n}, dt);
      comm.AllGather(in, out)->Wait();
      for (int i = 0; i < n; ++i) {
        EXPECT_TRUE(at::equal(out.slice(0, i * size, (i + 1) * size).to(at::kLong),
                              at::full({size}, i * 10 + 1, at::kLong)))
            << Name(dt) << " rank " << i;
      }
    }
  }
  std::vector<int64_t> counts;
  int64_t total = 0;
  for (int i = 0; i < n; ++i) counts.push_back(2 * i + 1), total += 2 * i + 1;
  auto in = at::full({counts[r]}, r, at::kInt);
  auto out = at::empty({total}, at::kInt);
  comm.AllGatherV(in, out, counts)->Wait();
  int64_t off = 0;
  for (int i = 0; i < n; ++i) {
    EXPECT_TRUE(at::equal(out.slice(0, off, off + counts[i]), at::full({counts[i]}, i, at::kInt)));
    off += counts[i];
  }
}

TEST(Communicator, BroadcastFromEveryRoot) {
  auto& comm = TestWorld().comm();
  for (int root = 0; root < comm.size(); ++root) {
    for (auto dt : kDtypes) {
      auto t = at::full({777}, comm.rank() == root ? 42 : -1, at::kLong).to(dt);
      comm.Broadcast(t, root)->Wait();
      EXPECT_TRUE(at::equal(t.to(at::kLong), at::full({777}, 42, at::kLong))) << Name(dt);
    }
  }
}

TEST(Communicator, AsyncOverlapsSeveralOutstanding) {
  auto& comm = TestWorld().comm();
  std::vector<at::Tensor> ts;
  std::vector<WorkPtr> works;
  for (int i = 0; i < 8; ++i) {
    ts.push_back(at::full({1000 + i}, float(i), at::kFloat));
    works.push_back(comm.AllReduce(ts.back()));
  }
  for (auto& w : works) w->Wait();
  for (int i = 0; i < 8; ++i) {
    EXPECT_TRUE(at::equal(ts[i], at::full({1000 + i}, float(i * comm.size()), at::kFloat)));
  }
  comm.Barrier()->Wait();
}

TEST(Communicator, CommWaitSecondsCountsTimeBlockedInWait) {
  // The last rank arrives 0.3 s late: every other rank is blocked in Wait() at least that long,
  // which the per-step comm_wait_s of metrics.jsonl is built on.
  auto& comm = TestWorld().comm();
  comm.Barrier()->Wait();
  const double before = CommWaitSeconds();
  if (comm.rank() == comm.size() - 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto t = at::ones({16});
  comm.AllReduce(t)->Wait();
  const double waited = CommWaitSeconds() - before;
  EXPECT_GE(waited, 0.0);
  if (comm.rank() != comm.size() - 1) EXPECT_GE(waited, 0.25) << "rank " << comm.rank();
  EXPECT_TRUE(at::equal(t, at::full({16}, float(comm.size()))));
}

TEST(Communicator, RejectsBadInputClearly) {
  auto& comm = TestWorld().comm();
  auto t = at::ones({4, 4}).t();  // non-contiguous
  try {
    comm.AllReduce(t);
    FAIL() << "non-contiguous tensor accepted";
  } catch (const ftune::CommError& e) {
    EXPECT_NE(std::string(e.what()).find("not contiguous"), std::string::npos) << e.what();
  }
  auto c = at::ones({2}, at::kComplexFloat);
  EXPECT_THROW(comm.AllReduce(c), ftune::CommError);
  auto i = at::ones({2}, at::kInt);
  EXPECT_THROW(comm.AllReduce(i, ReduceOp::kAvg), ftune::CommError);
  auto odd = at::ones({comm.size() * 3 + 1});
  auto out = at::empty({3});
  EXPECT_THROW(comm.ReduceScatter(odd, out), ftune::CommError);
}

// Every rank of a communicator numbers its collectives alike, and knows its members' world ranks.
TEST(FlightRecorder, SequenceNumbersAgreeAcrossRanks) {
  auto& world = TestWorld().comm();
  const int n = world.size(), r = world.rank();
  auto odd = world.Split(r % 2, r, "parity");
  for (int i = 0; i < 3 + r % 2; ++i) {  // the odd ranks' communicator gets one more
    auto t = at::ones({8});
    odd->AllReduce(t)->Wait();
  }
  odd->Barrier()->Wait();
  const RankState s = FlightRecorder::Get().Snapshot();
  const CommRecord* mine = nullptr;
  int64_t world_started = -1;
  for (const auto& c : s.comms) {
    if (c.name == "parity") mine = &c;
    if (c.name == "world") world_started = c.started;
  }
  ASSERT_NE(mine, nullptr);
  std::vector<int> members;
  for (int m = r % 2; m < n; m += 2) members.push_back(m);
  EXPECT_EQ(mine->members, members);
  EXPECT_EQ(mine->started, 4 + r % 2);  // 3 or 4 all-reduces and a barrier
  EXPECT_EQ(mine->completed, mine->started);
  EXPECT_EQ(s.recent.back().op, "Barrier");
  EXPECT_EQ(s.recent.back().comm, "parity");
  // The world communicator's count is the same on every rank (whatever the tests before did).
  auto counts = at::full({2}, world_started, at::kLong);
  counts[1] = -world_started;
  world.AllReduce(counts, ReduceOp::kMax)->Wait();
  EXPECT_EQ(counts[0].item<int64_t>(), -counts[1].item<int64_t>())
      << "world sequence numbers differ";
}

// The published records: every rank's file is there, from this run, and its heartbeat moves.
TEST(FlightRecorder, PublishedRecordsAreReadableByEveryRank) {
  auto& world = TestWorld().comm();
  const std::string dir = fmt::format("{}/flight_mpi_test_np{}", FTUNE_BINARY_DIR, world.size());
  const std::string run = fmt::format("test-{}", ::getppid());  // mpirun's pid: one per job
  PublishFlightRecords(dir, run, nullptr);
  auto read = [&](int rank) {
    std::ifstream in(fmt::format("{}/rank_{}.json", dir, rank));
    std::stringstream text;
    text << in.rdbuf();
    return RankStateFromJson(text.str(), fmt::format("rank_{}.json", rank));
  };
  world.Barrier()->Wait();  // every rank wrote its first record
  std::vector<double> first;
  for (int r = 0; r < world.size(); ++r) {
    const RankState s = read(r);
    EXPECT_EQ(s.run, run);
    EXPECT_EQ(s.rank, r);
    EXPECT_EQ(s.world_size, world.size());
    EXPECT_GT(s.pid, 0);
    first.push_back(s.heartbeat_unix);
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));  // > one heartbeat period
  world.Barrier()->Wait();
  for (int r = 0; r < world.size(); ++r) {
    const RankState s = read(r);
    EXPECT_GT(s.heartbeat_unix, first[r]) << "rank " << r << "'s heartbeat did not move";
    bool has_world = false;
    for (const auto& c : s.comms) has_world = has_world || c.name == "world";
    EXPECT_TRUE(has_world);
  }
}

// A rank stopped (SIGSTOP) while it waits, past the timeout, then continued: the time it was
// stopped is not time it waited for the others, so it must not abort the job (it used to, and
// blamed the others for its own absence). Rank 0 stops and continues rank 1.
TEST(Watchdog, TheTimeARankWasStoppedDoesNotCountAsWaiting) {
  auto& world = TestWorld().comm();
  auto pids = at::zeros({world.size()}, at::kLong);
  auto mine = at::full({1}, static_cast<int64_t>(::getpid()), at::kLong);
  world.AllGather(mine, pids)->Wait();
  auto pair = world.Split(world.rank() < 2 ? 0 : 1, world.rank(), "pair");
  pair->set_timeout(3);
  if (world.rank() == 1) {
    pair->Barrier()->Wait();  // stopped in here for 4 s
  } else if (world.rank() == 0) {
    const pid_t other = static_cast<pid_t>(pids[1].item<int64_t>());
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // rank 1 waits by now
    ASSERT_EQ(::kill(other, SIGSTOP), 0);
    std::this_thread::sleep_for(std::chrono::seconds(4));
    ASSERT_EQ(::kill(other, SIGCONT), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(700));  // rank 1's watchdog ticks
    pair->Barrier()->Wait();
  }
  world.Barrier()->Wait();
}

TEST(ProcessGrid, BothAxesOfTheGrid) {
  auto& world = TestWorld().comm();
  const int n = world.size();
  for (int tp : {1, 2}) {
    if (n % tp) continue;
    ProcessGrid grid(world, -1, tp);
    EXPECT_EQ(grid.dp() * grid.tp(), n);
    EXPECT_EQ(grid.tp_rank(), world.rank() % tp);
    EXPECT_EQ(grid.dp_rank(), world.rank() / tp);
    // Sum of world ranks over each axis, in closed form.
    auto t = at::full({5}, world.rank(), at::kLong);
    grid.tp_comm().AllReduce(t)->Wait();
    const int64_t first = grid.dp_rank() * tp;
    int64_t want = 0;
    for (int i = 0; i < tp; ++i) want += first + i;
    EXPECT_TRUE(at::equal(t, at::full({5}, want, at::kLong)));
    auto d = at::full({5}, world.rank(), at::kLong);
    grid.dp_comm().AllReduce(d)->Wait();
    int64_t want_dp = 0;
    for (int i = 0; i < grid.dp(); ++i) want_dp += i * tp + grid.tp_rank();
    EXPECT_TRUE(at::equal(d, at::full({5}, want_dp, at::kLong)));
  }
}

TEST(ProcessGrid, LayoutErrorNamesKeysAndWorldSize) {
  auto& world = TestWorld().comm();
  try {
    ProcessGrid grid(world, world.size() + 1, 1);
    FAIL() << "bad layout accepted";
  } catch (const ftune::ConfigError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("parallel.dp"), std::string::npos) << m;
    EXPECT_NE(m.find(std::to_string(world.size()) + " ranks"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace ftune::parallel
